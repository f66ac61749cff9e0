"""ONNX import rules checked against onnx's reference implementation on random inputs, and the
handling of shape operands (folded when static; a data-dependent one named when traced)."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import avalon.onnx  # noqa: E402
from avalon.onnx import UnsupportedOp  # noqa: E402
from avalon.tensor import Tensor  # noqa: E402
from avalon.trace import trace  # noqa: E402


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_range_bounds_from_a_gathered_shape_fold_and_trace():
    """Gather of a 0-d index into a shape gives a numpy scalar; it must stay a constant, so the Range
    folds (flexattention's expanded cases) and the model traces without run-time bounds."""
    idx = helper.make_tensor("i", TensorProto.INT64, [], [1])
    zero = helper.make_tensor("z", TensorProto.INT64, [], [0])
    one = helper.make_tensor("o", TensorProto.INT64, [], [1])
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i"], ["n"]),
             helper.make_node("Range", ["z", "n", "o"], ["r"]), helper.make_node("Cast", ["r"], ["rf"], to=1),
             helper.make_node("Add", ["x", "rf"], ["y"])]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], [idx, zero, one])
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    model = avalon.onnx.load(m)
    np.testing.assert_allclose(model(Tensor(x)).numpy(), ReferenceEvaluator(m).run(None, {"x": x})[0], rtol=1e-6)
    assert "add" in str(trace(model, Tensor(x)))


def test_data_dependent_range_runs_eagerly_and_names_the_node_when_traced():
    nodes = [helper.make_node("Range", ["a", "b", "c"], ["y"], name="my_range")]
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, []) for n in "abc"]
    m = _model(nodes, ins, [helper.make_tensor_value_info("y", TensorProto.INT64, [None])])
    model = avalon.onnx.load(m)  # eager calls read the bounds
    np.testing.assert_array_equal(model(*(Tensor(np.array(v)) for v in (1, 7, 2))).numpy(), [1, 3, 5])
    with pytest.raises(UnsupportedOp, match="my_range.*Range.*data-dependent shape"):
        trace(model, *(Tensor(np.array(v)) for v in (1, 7, 2)))


@pytest.mark.parametrize("node, inputs", [
    (helper.make_node("GatherElements", ["x", "i"], ["y"], axis=1),
     {"x": np.arange(12, dtype=np.float32).reshape(3, 4) * 1.5, "i": np.array([[3, -1], [0, 2], [1, -4]])}),
    (helper.make_node("Mod", ["x", "i"], ["y"]), {"x": np.array([-7, 7, -8, 9]), "i": np.array([3, -3, 4, 4])}),
    (helper.make_node("Mod", ["x", "i"], ["y"], fmod=1),
     {"x": np.array([-7.5, 7.25, 3.0], np.float32), "i": np.array([2.0, -3.0, 0.75], np.float32)}),
    (helper.make_node("Hardmax", ["x"], ["y"], axis=1), {"x": np.array([[1, 3, 3], [0, -1, 2]], np.float32)}),
    (helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD"),
     {"x": np.arange(32, dtype=np.float32).reshape(1, 8, 2, 2)}),
    (helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2), {"x": np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)}),
    (helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=-1),
     {"x": np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32),
      "s": np.random.default_rng(2).standard_normal(4).astype(np.float32)}),
    (helper.make_node("IsInf", ["x"], ["y"], detect_negative=0), {"x": np.array([np.inf, -np.inf, 1.0], np.float32)}),
])
def test_rule_matches_onnx_reference(node, inputs):
    dtypes = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}
    ins = [helper.make_tensor_value_info(k, dtypes[v.dtype], v.shape) for k, v in inputs.items()]
    m = _model([node], ins, [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)])
    want = ReferenceEvaluator(m).run(None, inputs)[0]
    got = avalon.onnx.load(m)(*(Tensor(v) for v in inputs.values())).numpy()
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("batch_dims, x, i", [
    (0, np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.array([[[0, 1]], [[1, -1]], [[-2, 0]]])),
    (0, np.arange(6, dtype=np.float32).reshape(2, 3), np.array([[1], [0], [-1]])),
    (1, np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.array([[[2, 1], [0, -1]], [[1, 3], [-3, 0]]])),
])
def test_gather_nd_matches_onnx_reference(batch_dims, x, i):
    node = helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=batch_dims)
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape),
           helper.make_tensor_value_info("i", TensorProto.INT64, i.shape)]
    m = _model([node], ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    want = ReferenceEvaluator(m).run(None, {"x": x, "i": i % np.array(x.shape[batch_dims:batch_dims + i.shape[-1]])})[0]
    got = avalon.onnx.load(m)(Tensor(x), Tensor(i)).numpy()  # negative indices count from the end
    np.testing.assert_array_equal(got, want)


def test_sequence_ops_match_onnx_reference_and_trace():
    """torch's dynamo exporter (optimize=False) writes torch.split as SplitToSequence + SequenceAt."""
    k = helper.make_tensor("k", TensorProto.INT64, [], [-1])
    two = helper.make_tensor("two", TensorProto.INT64, [], [2])
    nodes = [helper.make_node("SplitToSequence", ["x", "two"], ["seq"], axis=1),
             helper.make_node("SequenceAt", ["seq", "k"], ["last"]),
             helper.make_node("SequenceInsert", ["seq", "last"], ["seq2"]),
             helper.make_node("SequenceErase", ["seq2", "two"], ["seq3"]),
             helper.make_node("SequenceLength", ["seq3"], ["n"]),
             helper.make_node("ConcatFromSequence", ["seq3"], ["cat"], axis=1),
             helper.make_node("SplitToSequence", ["x"], ["ones"], axis=1, keepdims=0),
             helper.make_node("SequenceAt", ["ones", "two"], ["col"]),
             helper.make_node("ConcatFromSequence", ["ones"], ["stacked"], axis=-1, new_axis=1)]
    outs = ("last", "n", "cat", "col", "stacked")
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
               [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in outs],
               [k, two])
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    model = avalon.onnx.load(m)
    for got, want in zip(model(Tensor(x)), ReferenceEvaluator(m).run(None, {"x": x})):
        np.testing.assert_array_equal(got.numpy(), want)
    assert "slice" in str(trace(model, Tensor(x)))


def test_inputs_by_name_and_every_unsupported_op_in_one_error():
    nodes = [helper.make_node("Sub", ["a", "b"], ["y"])]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "ab"]
    model = avalon.onnx.load(_model(nodes, ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]))
    a, b = Tensor(np.array([5.0, 1.0], np.float32)), Tensor(np.array([1.0, 2.0], np.float32))
    np.testing.assert_array_equal(model(b=b, a=a).numpy(), [4.0, -1.0])
    np.testing.assert_array_equal(model(a, b=b).numpy(), [4.0, -1.0])
    with pytest.raises(TypeError, match="has no input 'c'"):
        model(a, c=b)
    with pytest.raises(TypeError, match="missing 'b'"):
        model(a)
    nodes = [helper.make_node("StringSplit", ["a"], ["d"], name="ss1"), helper.make_node("StringSplit", ["d"], ["e"]),
             helper.make_node("Einsum2", ["e"], ["y"], name="e2")]
    with pytest.raises(UnsupportedOp, match=r"(?s)2 ONNX ops.*'ss1': op StringSplit is not supported \(2 nodes\).*'e2'"):
        avalon.onnx.load(_model(nodes, ins[:1], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]))
