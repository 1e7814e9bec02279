"""ONNX Runtime as a model runtime: zoo exports compute what torch computes, an instance process creates a session
in its cold start, and inputs follow the signature deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.registry.onnx_files import classifier
from workers import onnx_models, zoo
from workers.instance import ModelRaised, ProcessRunner, ThreadRunner
from workers.spec import FunctionSpec


@pytest.mark.parametrize("key", ["mlp-small", "cnn-small", "transformer-small"])
def test_a_zoo_model_exported_to_onnx_computes_what_torch_computes(key, tmp_path):
    path = onnx_models.export_zoo_model(key, model_dir=tmp_path)
    assert path == zoo.weights_path(key, model_dir=tmp_path).with_suffix(".onnx")
    loaded = zoo.load_model(key, model_dir=tmp_path)
    session = onnx_models.load_session(path)
    x = zoo.make_batch(loaded, 5)
    with torch.inference_mode():
        expected = loaded.module(x).numpy()
    got = session.session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_the_export_is_made_once_and_then_reused(tmp_path):
    first = onnx_models.export_zoo_model("mlp-small", model_dir=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert onnx_models.export_zoo_model("mlp-small", model_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_an_instance_process_under_onnxruntime_times_its_session_creation_and_serves_batches(tmp_path):
    path = classifier(tmp_path / "clf.onnx")
    spec = FunctionSpec(name="f", model="clf", model_runtime="onnxruntime", model_file=str(path))
    runner = ProcessRunner(spec, "cpu", tmp_path)
    try:
        info = runner.start()
        timings = info["timings_ms"]
        assert {"process_start", "import", "device_context", "load", "session", "warmup", "total"} <= set(timings)
        assert "build" not in timings and "to_device" not in timings
        assert timings["session"] > 0 and timings["load"] > 0
        assert info["weights_bytes"] == path.stat().st_size
        for k in (1, 7, 32):
            runner.run(k)
    finally:
        runner.close()


def test_a_model_without_a_dynamic_batch_runs_at_batch_1_only(tmp_path):
    path = classifier(tmp_path / "fixed.onnx", dynamic_batch=False)
    runner = ThreadRunner(FunctionSpec(name="f", model="fixed", model_runtime="onnxruntime", model_file=str(path)),
                          "cpu", tmp_path)
    runner.start()
    runner.run(1)
    with pytest.raises(ModelRaised, match="runs at batch 1"):
        runner.run(2)


def test_inputs_follow_the_signature_and_are_the_same_every_time(tmp_path):
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceSum", ["f"], ["s"], keepdims=0),
         helper.make_node("Add", ["s", "bias"], ["y"])], "mixed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])])
    path = tmp_path / "mixed.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    sig = onnx_models.inspect_file(path)
    assert sig.dynamic_batch and [i["dtype"] for i in sig.inputs] == ["int64", "float32"]
    a = onnx_models.make_feeds(onnx_models.load_session(path), 4)
    b = onnx_models.make_feeds(onnx_models.load_session(path), 4)
    assert a["ids"].shape == (4, 1) and a["ids"].dtype == np.int64 and 0 <= a["ids"].min() <= a["ids"].max() < 8
    assert a["bias"].shape == (4,) and a["bias"].dtype == np.float32
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
