"""gcpolicy: no automatic collection while a build runs; the caller's collector as it was afterwards."""

from __future__ import annotations

import gc

import pytest

from bundle_pipeline.pipeline.gcpolicy import no_collections


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_off_inside_and_as_it_was_after(enabled):
    gc.enable() if enabled else gc.disable()
    try:
        with no_collections():
            assert not gc.isenabled() and gc.get_freeze_count() > 0
        assert gc.isenabled() == enabled and gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_the_collector_is_restored_when_the_build_fails():
    with pytest.raises(RuntimeError), no_collections():
        raise RuntimeError("a failed build")
    assert gc.isenabled() and gc.get_freeze_count() == 0
