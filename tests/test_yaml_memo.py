"""YAML values remembered per text: an unchanged spec or target description is neither parsed again nor needs
PyYAML; a damaged memo, or a value JSON cannot give back, falls back to parsing."""

from __future__ import annotations

import json

import pytest
from test_noop_imports import built_demo, loaded_by

from bundle_pipeline import spec_yaml, yaml_memo
from bundle_pipeline.errors import ParamInvalid
from bundle_pipeline.spec import load_spec


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "bundle-pipeline" / "yaml"


def counting(calls: list):
    def parse(text: str):
        calls.append(text)
        return spec_yaml.parse(text, "t.yaml")
    return parse


def test_a_text_is_parsed_once_and_its_value_remembered(home):
    calls: list = []
    first = yaml_memo.remembered("spec", "a: [1, 2.5, true, null]\nb: {c: x}\n", counting(calls))
    again = yaml_memo.remembered("spec", "a: [1, 2.5, true, null]\nb: {c: x}\n", counting(calls))
    assert again == first and len(calls) == 1 and len(list(home.iterdir())) == 1
    yaml_memo.remembered("target", "a: [1, 2.5, true, null]\nb: {c: x}\n", counting(calls))  # another kind
    assert len(calls) == 2


def test_a_damaged_memo_is_parsed_again(home):
    calls: list = []
    yaml_memo.remembered("spec", "a: 1\n", counting(calls))
    memo = next(home.iterdir())
    payload = json.loads(memo.read_text())
    memo.write_text(json.dumps({**payload, "raw": {"a": 2, "__line__": 1}}))  # a value its checksum does not match
    assert yaml_memo.remembered("spec", "a: 1\n", counting(calls))["a"] == 1 and len(calls) == 2
    memo.write_text("{not json")
    assert yaml_memo.remembered("spec", "a: 1\n", counting(calls))["a"] == 1 and len(calls) == 3


@pytest.mark.parametrize("text", ["when: 2024-01-01\n", "x: .nan\n", "1: one\n", "s: !!set {a, b}\n"])
def test_values_json_cannot_give_back_are_not_remembered(home, text):
    calls: list = []
    yaml_memo.remembered("spec", text, counting(calls))
    yaml_memo.remembered("spec", text, counting(calls))
    assert len(calls) == 2 and not (home.exists() and list(home.iterdir()))


def test_a_remembered_spec_is_checked_like_a_parsed_one(home, tmp_path):
    bad = tmp_path / "bundle.yaml"
    bad.write_text("name: x\ngraphs: not-a-list\n")
    for _ in range(2):  # the second time from the memo: the same error
        with pytest.raises(ParamInvalid, match="'graphs' must be a non-empty list"):
            load_spec(bad)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [" + ", ".join(["x"] * 50) + "]\n" + "".join(
        f"b{i}: &b{i} [*{'a' if i == 0 else f'b{i - 1}'}, *{'a' if i == 0 else f'b{i - 1}'}]\n" for i in range(20)))
    for _ in range(2):  # refused, so never remembered
        with pytest.raises(ParamInvalid, match="expands to more than"):
            load_spec(bomb)


def test_a_noop_run_reads_its_spec_and_target_without_pyyaml(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    spec = built_demo(tmp_path)
    code, modules = loaded_by("run", spec)
    assert code in (None, 0) and "yaml" not in modules and "bundle_pipeline.pipeline.build" in modules
