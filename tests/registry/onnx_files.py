"""ONNX files built in the tests with onnx's helper API: a tiny classifier, and files the registry must refuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def classifier(path: Path, *, features: int = 16, classes: int = 4, dynamic_batch: bool = True,
               hidden: int = 32) -> Path:
    """y = softmax(relu(x W1 + b1) W2 + b2): a real model with weights inside the file."""
    rng = np.random.default_rng(3)
    batch = "batch" if dynamic_batch else 1
    inits = [numpy_helper.from_array(rng.standard_normal((features, hidden)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(classes, np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["z0"]),
             helper.make_node("Add", ["z0", "b2"], ["z1"]), helper.make_node("Softmax", ["z1"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "classifier",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def custom_domain(path: Path) -> Path:
    node = helper.make_node("Backdoor", ["x"], ["y"], domain="com.example.custom")
    graph = helper.make_graph([node], "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example.custom", 1)], ir_version=8)
    onnx.save(model, str(path))
    return path


def external_data(path: Path, location: str = "../../../etc/passwd") -> Path:
    """A weight whose bytes the file says live at `location` (relative to the model's folder)."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "ext", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def nul_in_names(path: Path) -> Path:
    """A valid model whose input and output names hold a NUL character (PostgreSQL refuses NUL in text and JSON)."""
    node = helper.make_node("Relu", ["x\x00in"], ["y\x00out"])
    graph = helper.make_graph([node], "nul", [helper.make_tensor_value_info("x\x00in", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y\x00out", TensorProto.FLOAT, ["n", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path
