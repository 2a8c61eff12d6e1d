"""Cache commands act only on caches: a cache root carries a marker from its creation; `cache info|verify|gc` on
anything else is one PARAM_INVALID line and touches nothing. A cache made before markers existed is recognised
by its layout and a checksummed task record, and adopted; files in a cache that are not cache entries are
never deleted."""

from __future__ import annotations

import json
from pathlib import Path

import models
import pytest
from hostile import snapshot
from typer.testing import CliRunner

from bundle_pipeline.cache import Cache
from bundle_pipeline.cache.store import MARKER, NotACache
from bundle_pipeline.cli import app
from bundle_pipeline.errors import ParamInvalid
from bundle_pipeline.pipeline import build
from bundle_pipeline.spec import load_spec

COMMANDS = (["info"], ["verify"], ["gc"], ["gc", "--max-bytes", "0"])


def cache_cli(*args: str):
    return CliRunner().invoke(app, ["cache", *args])


def user_dir_with_cache_like_folders(root: Path) -> Path:
    """What a user may have: objects/, tensors/, actions/ folders with their own files (even hash-like names)."""
    for rel, data in {"objects/ab/photo.jpg": b"jpeg", "objects/cd/" + "c" * 64: b"not a cache object",
                      "tensors/ef/notes.txt": b"notes", "actions/zz/todo": b"todo", "readme.md": b"mine"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_cache_commands_refuse_a_directory_that_is_not_a_cache(tmp_path, command):
    user = user_dir_with_cache_like_folders(tmp_path / "user")
    before = snapshot(tmp_path)
    result = cache_cli(command[0], str(user), *command[1:])
    assert result.exit_code == 1 and result.stderr.startswith("error: PARAM_INVALID: ") and "not a bundle-pipeline" \
        " cache" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.output
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_cache_commands_on_a_missing_path_or_a_file(tmp_path, command):
    (tmp_path / "file").write_text("mine")
    for path, why in ((tmp_path / "nothing", "there is no cache here"), (tmp_path / "file", "a file, not a cache")):
        result = cache_cli(command[0], str(path), *command[1:])
        assert result.exit_code == 1 and why in result.stderr, result.output
    assert not (tmp_path / "nothing").exists() and (tmp_path / "file").read_text() == "mine"


def test_a_new_cache_root_gets_the_marker(tmp_path):
    Cache(tmp_path / "api").put_object(b"x")  # created by a write
    assert (tmp_path / "api" / MARKER).is_file()
    build(load_spec(models.mlp(tmp_path / "mlp").spec, cache=str(tmp_path / "built")))  # created by a build
    assert (tmp_path / "built" / MARKER).is_file()
    (tmp_path / "empty").mkdir()  # an empty directory is claimed by the build that uses it
    build(load_spec(models.mlp(tmp_path / "mlp2").spec, cache=str(tmp_path / "empty")))
    assert (tmp_path / "empty" / MARKER).is_file()
    for root in ("api", "built", "empty"):
        assert json.loads(cache_cli("verify", str(tmp_path / root)).stdout)["corrupt"] == []


def test_a_cache_made_before_markers_is_adopted(tmp_path):
    cache = tmp_path / "old"
    built = models.mlp(tmp_path / "mlp")
    build(load_spec(built.spec, cache=str(cache)))
    (cache / MARKER).unlink()  # as a cache written by an earlier version looks
    result = cache_cli("info", str(cache))
    assert result.exit_code == 0, result.output
    assert (cache / MARKER).is_file() and json.loads(result.stdout)["actions"]["count"] > 0
    (cache / MARKER).unlink()
    assert not {t.status for t in build(load_spec(built.spec, cache=str(cache))).tasks} - {"cached"}
    assert (cache / MARKER).is_file()  # a build adopts it too


def test_a_cache_layout_without_an_intact_record_is_not_adopted(tmp_path):
    cache = tmp_path / "old"
    build(load_spec(models.mlp(tmp_path / "mlp").spec, cache=str(cache)))
    (cache / MARKER).unlink()
    for record in (cache / "actions").rglob("*"):
        if record.is_file():
            record.write_bytes(b'{"checksum": "forged", "record": {}, "v": 1}')
    before = snapshot(tmp_path)
    assert cache_cli("gc", str(cache)).exit_code == 1
    assert snapshot(tmp_path) == before
    with pytest.raises(NotACache):
        Cache(cache).require()


def test_verify_and_gc_never_delete_files_that_are_not_cache_entries(tmp_path):
    cache = tmp_path / "cache"
    build(load_spec(models.mlp(tmp_path / "mlp").spec, cache=str(cache)))
    foreign = user_dir_with_cache_like_folders(cache)  # the user's files, inside a real cache
    theirs = {p: p.read_bytes() for p in foreign.rglob("*") if p.is_file() and not _is_entry(p, cache)}
    out = json.loads(cache_cli("verify", str(cache)).stdout)
    assert out["corrupt"] == [] and sorted(out["foreign"]) == sorted(
        str(p) for p in theirs if p.relative_to(cache).parts[0] in ("objects", "tensors", "actions"))
    assert cache_cli("gc", str(cache), "--max-bytes", "0").exit_code == 0
    assert {p: p.read_bytes() for p in theirs} == theirs


def _is_entry(path: Path, cache: Path) -> bool:
    rel = path.relative_to(cache).parts
    return rel[0] in ("state",) or path.name == MARKER or (len(rel) >= 3 and len(rel[2]) == 64 and rel[2][:2] == rel[1])


def test_a_build_refuses_a_cache_root_that_holds_other_things(tmp_path):
    built = models.mlp(tmp_path / "mlp")
    user = user_dir_with_cache_like_folders(tmp_path / "user")
    before = snapshot(tmp_path)
    with pytest.raises(ParamInvalid, match="not a bundle-pipeline cache"):
        build(load_spec(built.spec, cache=str(user)))
    with pytest.raises(ParamInvalid, match="not a bundle-pipeline cache"):
        build(load_spec(built.spec, cache=str(built.directory)))  # the project itself
    assert snapshot(tmp_path) == before


def test_an_unknown_cache_protocol_is_one_line(tmp_path):
    built = models.mlp(tmp_path / "mlp")
    for args in (["run", str(built.spec), "--cache", "nosuch://bucket/x"], ["cache", "info", "nosuch://bucket/x"],
                 ["status", str(built.spec), "--cache", "nosuch://bucket/x"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and "PARAM_INVALID" in result.stderr and "'nosuch'" in result.stderr, \
            result.output
    spec = built.spec
    spec.write_text(spec.read_text() + "cache: nosuch://bucket/x\n")
    result = CliRunner().invoke(app, ["run", str(spec)])
    assert result.exit_code == 1 and "fsspec knows no protocol 'nosuch'" in result.stderr, result.output


def test_gc_on_a_remote_cache_needs_its_marker(memory_root):
    c = Cache(memory_root)
    c.put_object(b"written by the API: a remote root is marked by the build that uses it, or adopted")
    with pytest.raises(NotACache):
        c.require()
    c.claim()  # what a build does first: only cache areas at the top, so it is taken as a cache and marked
    assert c.require() == "marked"
