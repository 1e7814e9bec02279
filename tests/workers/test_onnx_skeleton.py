"""The upload check reads an ONNX file as a skeleton (the graph, its tensors' data counted and skipped) and
reaches onnx.checker's verdict on the whole file: the same files pass, the same files are refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.registry.onnx_files import classifier
from workers import onnx_models
from workers.onnx_skeleton import STRIPPED_LOCATION, skeleton


def _model(nodes, initializers, *, x=("b", 4), y=("b", 3)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y))], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _matmul(w):
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [w])


def _weights(**kwargs):
    return TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3], **kwargs)


def _branch(value):
    const = helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(np.full(3, value, np.float32)))
    return helper.make_graph([const], "branch", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3])])


def _cases():
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    typed = _weights()
    typed.float_data.extend([1.0] * 12)
    short_typed = _weights()
    short_typed.float_data.extend([1.0] * 11)
    both = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    both.float_data.extend([1.0] * 12)
    shape = helper.make_tensor("s", TensorProto.INT64, [2], [-1, 4])
    constant = helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(np.ones((4, 3), np.float32)))
    branch = helper.make_node("If", ["c"], ["z"], then_branch=_branch(1.0), else_branch=_branch(0.0))
    return {
        "raw weights": (_matmul(w), True),
        "typed weights": (_matmul(typed), True),
        "int64 initializer": (_model([helper.make_node("Reshape", ["x", "s"], ["r"]),
                                      helper.make_node("MatMul", ["r", "w"], ["y"])], [shape, w]), True),
        "constant node": (_model([constant, helper.make_node("MatMul", ["x", "w"], ["y"])], []), True),
        "subgraph constants": (_model([helper.make_node("MatMul", ["x", "w"], ["y0"]), branch,
                                       helper.make_node("Add", ["y0", "z"], ["y"])],
                                      [w, numpy_helper.from_array(np.array(True), "c")]), True),
        "raw data too short": (_matmul(_weights(raw_data=b"\0" * 40)), False),
        "typed data too short": (_matmul(short_typed), False),
        "two value fields": (_matmul(both), False),
        "strings in raw_data": (_matmul(TensorProto(name="w", data_type=TensorProto.STRING, dims=[2],
                                                    raw_data=b"ab")), False),
        "unknown operator": (_model([helper.make_node("NoSuchOp", ["x"], ["y"])], []), False),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_the_skeleton_check_agrees_with_onnx_checker_on_the_whole_file(case, tmp_path):
    model, valid = _cases()[case]
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    try:
        onnx.checker.check_model(str(path))
        checker_valid = True
    except onnx.checker.ValidationError:
        checker_valid = False
    assert checker_valid is valid  # the case is what it says
    if valid:
        sig = onnx_models.inspect_file(path)
        assert sig.inputs == [{"name": "x", "shape": ["b", 4], "dtype": "float32"}] and sig.dynamic_batch
    else:
        with pytest.raises(onnx_models.OnnxModelError):
            onnx_models.inspect_file(path)


def test_the_skeleton_keeps_the_graph_and_drops_only_the_weights(tmp_path):
    path = classifier(tmp_path / "clf.onnx", features=256, hidden=512)
    whole = onnx.load(str(path))
    skel = onnx.ModelProto.FromString(skeleton(path))
    assert len(skeleton(path)) < path.stat().st_size / 50
    assert [n.op_type for n in skel.graph.node] == [n.op_type for n in whole.graph.node]
    assert skel.graph.input == whole.graph.input and skel.graph.output == whole.graph.output
    for kept, full in zip(skel.graph.initializer, whole.graph.initializer, strict=True):
        assert (kept.name, list(kept.dims), kept.data_type) == (full.name, list(full.dims), full.data_type)
        assert not kept.raw_data and kept.data_location == TensorProto.EXTERNAL
        assert {e.key: e.value for e in kept.external_data} == {"location": STRIPPED_LOCATION}


@pytest.mark.parametrize("content", [b"not an onnx model at all", b"\x3a\xff\xff\xff\x0f", bytes(range(256)) * 8])
def test_a_file_that_is_not_a_protobuf_is_refused_as_not_onnx(content, tmp_path):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(onnx_models.OnnxModelError, match="not an ONNX model"):
        onnx_models.inspect_file(path)
