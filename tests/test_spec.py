"""bundle.yaml validation: errors name the file, the key and the line."""

from __future__ import annotations

import pytest

from bundle_pipeline import BundleError
from bundle_pipeline.spec import load_spec

GOOD = """\
name: demo
graphs:
  - {name: init, role: init, model: init.onnx}
  - {name: infer, role: infer, model: sub/infer.onnx, options: {exec_disable_reused_memory: 1}}
"""


def write(tmp_path, text):
    path = tmp_path / "bundle.yaml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.target == "cpu" and spec.name == "demo"
    assert spec.output == str(tmp_path / "build" / "demo.bundle") and not spec.zipped
    assert spec.cache == str(tmp_path / ".bundle-cache")
    assert spec.graphs[1].model == str(tmp_path / "sub" / "infer.onnx")
    assert spec.graphs[1].options == {"exec_disable_reused_memory": 1}


def test_json_is_yaml(tmp_path):
    text = ('{"name": "j", "output": "out.zip", "graphs": [{"name": "g", "role": "infer", "model": "m.onnx"}],'
            ' "variables": ["w"]}')
    spec = load_spec(write(tmp_path, text))
    assert spec.zipped and spec.variables == ("w",)


@pytest.mark.parametrize(("text", "status", "fragments"), [
    (GOOD.replace("name: demo", "name: demo\nspeed: 11"), "PARAM_INVALID", ["'speed'", "bundle.yaml:1"]),
    (GOOD.replace("role: init, model", "role: init, modle"), "PARAM_INVALID", ["'modle'", "bundle.yaml:3"]),
    (GOOD.replace("role: init,", "role: setup,"), "PARAM_INVALID", ["'setup'"]),
    ("name: x\ngraphs: []\n", "PARAM_INVALID", ["'graphs'"]),
    ("name: [unclosed\n", "PARAM_INVALID", ["not valid YAML", "bundle.yaml:"]),
    (GOOD.replace("exec_disable_reused_memory: 1", "exec_disable_reused_memory: 2"), "OPTION_INVALID",
     ["exec_disable_reused_memory", "bundle.yaml:4", "0, 1"]),
    (GOOD + "target: tpu\n", "PARAM_INVALID", ["'tpu'", "cpu"]),
    (GOOD.replace("variables", "x") + "variables: w\n", "PARAM_INVALID", ["'variables'"]),
])
def test_errors_name_key_and_line(tmp_path, text, status, fragments):
    with pytest.raises(BundleError) as err:
        load_spec(write(tmp_path, text))
    assert err.value.status == status
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_missing_spec_is_io_error(tmp_path):
    with pytest.raises(BundleError) as err:
        load_spec(tmp_path / "nope.yaml")
    assert err.value.status == "IO_ERROR"
