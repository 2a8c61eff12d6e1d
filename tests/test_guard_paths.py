"""guard's protected paths: resolved once a directory, the same answers as ``os.path.realpath``."""

from __future__ import annotations

import os

import pytest

from bundle_pipeline.guard import _RealPaths


@pytest.fixture
def tree(tmp_path):
    """a/b/f.onnx and a/x, reached through symlinks of a directory, a file and a relative link."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.onnx").write_bytes(b"")
    (tmp_path / "a" / "x").write_bytes(b"")
    os.symlink(tmp_path / "a", tmp_path / "link")
    os.symlink(tmp_path / "a" / "b", tmp_path / "deep")
    os.symlink("b/f.onnx", tmp_path / "a" / "rel.onnx")
    return tmp_path


def test_each_path_resolves_as_realpath_does(tree, monkeypatch):
    monkeypatch.chdir(tree)
    real = _RealPaths()
    paths = [tree / "link" / "b" / "f.onnx", tree / "link" / "rel.onnx", tree / "deep" / "f.onnx", tree / "link",
             f"{tree}/deep/../x",  # ".." after a symlink: the target's parent, not the link's
             f"{tree}//a/./b/f.onnx", "link/b/f.onnx", "missing/x", "/", "."]
    for path in paths + paths:  # the second round answers from the resolved directories
        assert real(path) == os.path.realpath(path), path
