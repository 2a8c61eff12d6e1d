"""Fixtures shared by the cache tests."""

import uuid

import fsspec
import pytest


@pytest.fixture
def memory_root():
    """A fresh fsspec memory:// root, removed afterwards."""
    name = f"bp-cache-test-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)
