"""bfloat16 / float8 / int4 weights end to end: import, cache tensors, pack, load, run; against onnx's reference."""

from __future__ import annotations

import json
import zipfile

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import bundle_pipeline as bp
from bundle_pipeline.backend import BundleBackend
from bundle_pipeline.cache import Cache, packs
from bundle_pipeline.runtime import load_bundle

OPSET = [helper.make_opsetid("", 21)]


def weights_model(n: int = 64) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """y = x * Cast(w_bf16) + DequantizeLinear(w_int4) + Cast(w_f8): one weight of each kind, n > 1024 / 16
    rows so every weight is large enough to be stored as a cache tensor, not inlined."""
    rng = np.random.default_rng(0)
    w_bf16 = rng.standard_normal((n, 32)).astype(ml_dtypes.bfloat16)
    w_int4 = rng.integers(-8, 8, size=(n, 32)).astype(ml_dtypes.int4)
    w_f8 = rng.standard_normal((n, 32)).astype(ml_dtypes.float8_e4m3fn)
    inits = [numpy_helper.from_array(w_bf16, "w_bf16"), numpy_helper.from_array(w_int4, "w_int4"),
             numpy_helper.from_array(w_f8, "w_f8"), numpy_helper.from_array(np.array(0.5, np.float32), "scale")]
    nodes = [helper.make_node("Cast", ["w_bf16"], ["a"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "a"], ["xa"]),
             helper.make_node("DequantizeLinear", ["w_int4", "scale"], ["b"]),
             helper.make_node("Cast", ["w_f8"], ["c"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["xa", "b"], ["xab"]),
             helper.make_node("Add", ["xab", "c"], ["y"]),
             helper.make_node("Cast", ["y"], ["y_bf16"], to=TensorProto.BFLOAT16)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, 32]),
                               helper.make_tensor_value_info("y_bf16", TensorProto.BFLOAT16, [n, 32])], inits)
    model = helper.make_model(graph, opset_imports=OPSET)
    return model, {"x": rng.standard_normal((n, 32)).astype(np.float32)}


def assert_matches_reference(model: onnx.ModelProto, feeds: dict, outputs: dict) -> None:
    want = ReferenceEvaluator(model).run(None, feeds)
    for name, w in zip([o.name for o in model.graph.output], want, strict=True):
        got = outputs[name]
        assert got.dtype == w.dtype and got.shape == w.shape, name
        np.testing.assert_allclose(got.astype(np.float32), w.astype(np.float32), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("target", ["cpu", "npu"])
def test_ml_dtype_weights_build_load_and_match_the_reference(tmp_path, target):
    model, feeds = weights_model()
    rep = BundleBackend.prepare(model, target=target, cache=tmp_path / "cache")
    outputs = dict(zip(rep.outputs, rep.run(feeds), strict=True))
    assert_matches_reference(model, feeds, outputs)
    dtypes = {c["dtype"] for c in rep.bundle.manifest["constants"].values()}
    assert {"bfloat16", "int4", "float8_e4m3fn"} <= dtypes


def pack_holding(cache_dir, h: str) -> str | None:
    """The cache's tensor pack that holds tensor ``h`` (small tensors are stored together), if any."""
    for path in (cache_dir / "objects").rglob("*"):
        if path.is_file() and path.read_bytes()[:8] == packs.MAGIC and h in packs.decode(path.read_bytes()):
            return path.name
    return None


@pytest.mark.parametrize("rows", [64, 16384], ids=["packed", "own-arrays"])
def test_cache_tensor_to_bundle_constant_round_trip(tmp_path, rows):
    """A bfloat16 / float8 / int4 weight is stored as its bits (uint16/uint8 + the logical dtype): small ones in
    a cache pack and the bundle's packed array, large ones as a cache tensor and a bundle array of their own
    (linked from the cache); they load back as the logical dtype, same bytes."""
    model, _ = weights_model(rows)
    cache_dir = tmp_path / "cache"
    buf = bp.bundle_build_model([bp.GraphWithOptions(model, role="infer", name="infer")], cache=cache_dir)
    bp.bundle_save_model(tmp_path / "b.bundle", buf)
    bundle = load_bundle(tmp_path / "b.bundle")
    cache = Cache(cache_dir)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    bound = bundle.manifest["graphs"][0]["bindings"]  # weight name -> constant id
    for name in ("w_bf16", "w_int4", "w_f8"):
        want, const = weights[name], bundle.manifest["constants"][bound[name]]
        assert const["dtype"] == want.dtype.name
        assert (const["array"] == "constants/packed") == (rows == 64)
        if const["array"] != "constants/packed":
            with zipfile.ZipFile(tmp_path / "b.bundle") as zf:  # the saved buffer is the stored-zip form
                stored = json.loads(zf.read(f"{const['array']}/zarr.json"))
            assert stored["data_type"] == f"uint{8 * want.dtype.itemsize}"  # zarr holds the bits
            assert stored["attributes"]["bundle_pipeline"]["dtype"] == want.dtype.name
        from_cache = cache.get_tensor(const["hash"], pack=pack_holding(cache_dir, const["hash"]))
        assert from_cache.dtype == want.dtype and from_cache.tobytes() == want.tobytes()
        loaded = bundle.executors["infer"].fixed[name]
        assert loaded.dtype == want.dtype and loaded.tobytes() == want.tobytes()


def test_plain_cache_tensors_keep_their_attributes(tmp_path):
    """float32 entries carry no dtype attribute (only ml_dtypes entries record their logical type)."""
    cache = Cache(tmp_path / "cache")
    h = cache.put_tensor(np.arange(6, dtype=np.float32))
    meta = json.loads((tmp_path / "cache" / "tensors" / h[:2] / h / "zarr.json").read_text())
    assert meta["data_type"] == "float32"
    assert set(meta["attributes"]["bundle_pipeline"]) == {"tensor_hash", "chunk_sha256", "checksum"}


def test_bfloat16_variable_written_by_init_and_refreshed_by_update(tmp_path):
    """A variable of an ml_dtypes type lives in the variable store, is set by init and refreshed by update."""
    shape = [4, 8]
    w0 = (np.arange(32, dtype=np.float32).reshape(shape) / 8).astype(ml_dtypes.bfloat16)
    bf16 = TensorProto.BFLOAT16
    init = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["w.init"], ["w"])], "init", [],
        [helper.make_tensor_value_info("w", bf16, shape)], [numpy_helper.from_array(w0, "w.init")]),
        opset_imports=OPSET)
    update = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["w.new"], ["w"])], "update",
        [helper.make_tensor_value_info("w.new", bf16, shape)], [helper.make_tensor_value_info("w", bf16, shape)]),
        opset_imports=OPSET)
    infer = helper.make_model(helper.make_graph(
        [helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["x", "wf"], ["y"])],
        "infer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
                  helper.make_tensor_value_info("w", bf16, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]), opset_imports=OPSET)
    buf = bp.bundle_build_model([bp.GraphWithOptions(init, role="init", name="init"),
                                 bp.GraphWithOptions(update, role="update", name="update"),
                                 bp.GraphWithOptions(infer, role="infer", name="infer")], cache=tmp_path / "cache")
    bp.bundle_save_model(tmp_path / "v.zip", buf)
    bundle = load_bundle(tmp_path / "v.zip")
    assert [v["dtype"] for v in bundle.manifest["variables"]] == ["bfloat16"]
    x = np.ones(shape, np.float32)
    np.testing.assert_array_equal(bundle.run("infer", {"x": x})["y"], w0.astype(np.float32))
    w1 = (-w0.astype(np.float32) * 2).astype(ml_dtypes.bfloat16)
    bundle.update({"w.new": w1})
    assert bundle.variable("w").dtype == w1.dtype
    np.testing.assert_array_equal(bundle.run("infer", {"x": x})["y"], w1.astype(np.float32))


def test_packed_int4_external_data_weight(tmp_path):
    """int4 initializers in an external-data file are packed two a byte; the detached weight unpacks them."""
    model, feeds = weights_model()
    copy = onnx.ModelProto.FromString(model.SerializeToString())  # saving moves the proto's data out
    onnx.save(copy, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.data", size_threshold=0)
    buf = bp.bundle_build_model([bp.GraphWithOptions(str(tmp_path / "m.onnx"), role="infer", name="infer")],
                                cache=tmp_path / "cache")
    bp.bundle_save_model(tmp_path / "m.bundle", buf)
    outputs = load_bundle(tmp_path / "m.bundle").run("infer", feeds)
    assert_matches_reference(model, feeds, outputs)
