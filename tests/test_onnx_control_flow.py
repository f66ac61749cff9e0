"""ONNX control flow (If, Loop, Scan, SequenceMap, optionals) unrolled into straight-line Avalon code,
against torch (a scripted RNN loop exported by torch.onnx) and onnx's reference implementation on
random inputs; gradients through an unrolled loop against torch.autograd."""
from __future__ import annotations

import io

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import avalon as av  # noqa: E402
import avalon.onnx  # noqa: E402
from avalon.onnx import UnsupportedOp  # noqa: E402
from avalon.tensor import Tensor  # noqa: E402
from avalon.trace import trace  # noqa: E402

F = TensorProto.FLOAT


def _vi(name, ty, shape):
    return helper.make_tensor_value_info(name, ty, shape)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                             opset_imports=[helper.make_opsetid("", opset)])


class _Rnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], 4)
        for t in range(x.shape[1]):
            h = torch.tanh(self.cell(x[:, t]) + h)
        if h.sum() > 0:
            h = h * 2
        else:
            h = h - 1
        return h


def test_scripted_rnn_loop_and_branch_match_torch_and_differentiate():
    """torch.jit.script + torch.onnx.export write a Loop over the sequence (its length a dynamic
    axis) and an If on a data-dependent condition."""
    torch.manual_seed(0)
    m = torch.jit.script(_Rnn())
    x = torch.randn(2, 5, 4)
    f = io.BytesIO()
    torch.onnx.export(m, (x,), f, opset_version=17, dynamo=False, input_names=["x"], dynamic_axes={"x": {1: "T"}})
    proto = onnx.load_from_string(f.getvalue())
    assert {"Loop", "If"} <= {n.op_type for n in proto.graph.node}
    loaded = avalon.onnx.load(proto)
    for steps in (5, 3):
        xs = torch.randn(2, steps, 4)
        np.testing.assert_allclose(loaded(Tensor(xs.numpy())).numpy(), m(xs).detach().numpy(), rtol=1e-5, atol=1e-6)
    text = str(trace(loaded, Tensor(x.numpy())))
    assert text.count("tanh") == 5 and "where" in text  # unrolled; the branch selected at run time
    _, grads = av.value_and_grad(lambda mm, x: mm(x).sum())(loaded, av.tensor(x.numpy()))
    m(x).sum().backward()
    for name, p in m.named_parameters():
        np.testing.assert_allclose(grads[name].numpy(), p.grad.numpy(), rtol=1e-5, atol=1e-6)


def _body(name, nodes, inputs, outputs):
    return helper.make_graph(nodes, name, inputs, outputs)


def test_loop_with_trip_count_condition_and_scan_outputs():
    """Carried y -> y * a + i (a from the outer scope), stopping when the loop's own condition
    (y's sum below a bound) turns false; the per-iteration values stacked."""
    body = _body("body", [
        helper.make_node("Cast", ["i"], ["fi"], to=F),
        helper.make_node("Mul", ["y_in", "a"], ["ya"]),
        helper.make_node("Add", ["ya", "fi"], ["y_out"]),
        helper.make_node("ReduceSum", ["y_out"], ["s"], keepdims=0),
        helper.make_node("Less", ["s", "bound"], ["c_out"]),
        helper.make_node("Identity", ["y_out"], ["scan"])],
        [_vi("i", TensorProto.INT64, []), _vi("c_in", TensorProto.BOOL, []), _vi("y_in", F, [3])],
        [_vi("c_out", TensorProto.BOOL, []), _vi("y_out", F, [3]), _vi("scan", F, [3])])
    loop = helper.make_node("Loop", ["n", "c", "y0"], ["y", "ys"], body=body, name="my_loop")
    m = _model([loop], [_vi("y0", F, [3]), _vi("a", F, [3])], [_vi("y", F, [3]), _vi("ys", F, [None, 3])],
               [helper.make_tensor("bound", F, [], [40.0]), helper.make_tensor("n", TensorProto.INT64, [], [6]),
                helper.make_tensor("c", TensorProto.BOOL, [], [True])])
    rng = np.random.default_rng(1)
    feeds = {"y0": rng.uniform(0.5, 1.0, 3).astype(np.float32), "a": rng.uniform(1.2, 1.6, 3).astype(np.float32)}
    want = ReferenceEvaluator(m).run(None, feeds)
    got = avalon.onnx.load(m)(*(Tensor(v) for v in feeds.values()))
    assert 1 < len(want[1]) < 6  # the condition, not the count, ended it
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-6)
    # traced, the count folds but the condition is computed from data: named
    with pytest.raises(UnsupportedOp, match="my_loop.*Loop.*loop condition is computed at run time"):
        trace(avalon.onnx.load(m), *(Tensor(v) for v in feeds.values()))


def test_scan_reverse_cumulative_sum_on_axis_1():
    body = _body("body", [helper.make_node("Add", ["s_in", "x"], ["s_out"]),
                          helper.make_node("Identity", ["s_out"], ["y"])],
                 [_vi("s_in", F, [2]), _vi("x", F, [2])], [_vi("s_out", F, [2]), _vi("y", F, [2])])
    scan = helper.make_node("Scan", ["s0", "xs"], ["s", "ys"], body=body, num_scan_inputs=1,
                            scan_input_axes=[1], scan_input_directions=[1], scan_output_axes=[1])
    m = _model([scan], [_vi("s0", F, [2]), _vi("xs", F, [2, 4])], [_vi("s", F, [2]), _vi("ys", F, [2, 4])])
    rng = np.random.default_rng(2)
    feeds = {"s0": rng.standard_normal(2).astype(np.float32), "xs": rng.standard_normal((2, 4)).astype(np.float32)}
    got = avalon.onnx.load(m)(*(Tensor(v) for v in feeds.values()))
    ort = pytest.importorskip("onnxruntime")  # onnx's reference Scan only scans forwards
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-6)
    np.testing.assert_allclose(got[1].numpy(), feeds["s0"][:, None] + np.cumsum(feeds["xs"][:, ::-1], 1), rtol=1e-5)


def test_if_on_a_shape_folds_and_a_data_dependent_if_with_different_shapes_is_named():
    then = _body("then", [helper.make_node("Relu", ["x"], ["t"])], [], [_vi("t", F, None)])
    other = _body("else", [helper.make_node("ReduceSum", ["x"], ["e"], keepdims=1)], [], [_vi("e", F, None)])
    nodes = [helper.make_node("Shape", ["x"], ["sh"]),
             helper.make_node("ReduceProd", ["sh"], ["numel"], keepdims=0),
             helper.make_node("Greater", ["numel", "four"], ["big"]),
             helper.make_node("If", ["big"], ["y"], then_branch=then, else_branch=other)]
    four = helper.make_tensor("four", TensorProto.INT64, [], [4])
    x = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    m = _model(nodes, [_vi("x", F, [2, 3])], [_vi("y", F, None)], [four])
    loaded = avalon.onnx.load(m)
    np.testing.assert_allclose(loaded(Tensor(x)).numpy(), np.maximum(x, 0))
    assert "relu" in str(trace(loaded, Tensor(x))) or "max" in str(trace(loaded, Tensor(x)))
    nodes[2] = helper.make_node("Greater", ["s", "zero"], ["big"])
    nodes.insert(2, helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0))
    m = _model(nodes, [_vi("x", F, [2, 3])], [_vi("y", F, None)], [helper.make_tensor("zero", F, [], [0.0])],)
    m.graph.node[-1].name = "pick"
    loaded = avalon.onnx.load(m)
    want = np.maximum(x, 0) if x.sum() > 0 else x.sum(keepdims=True)
    np.testing.assert_allclose(loaded(Tensor(x)).numpy(), want, rtol=1e-6)  # eager: the condition is read
    with pytest.raises(UnsupportedOp, match="'pick'.*If.*different shapes"):
        trace(loaded, Tensor(x))


def test_sequence_map_over_a_sequence_input():
    body = _body("body", [helper.make_node("Add", ["e", "b"], ["o"])], [_vi("e", F, None), _vi("b", F, [3])],
                 [_vi("o", F, None)])
    seq = helper.make_tensor_sequence_value_info("xs", F, None)
    m = _model([helper.make_node("SequenceMap", ["xs", "b"], ["ys"], body=body)],
               [seq, _vi("b", F, [3])], [helper.make_tensor_sequence_value_info("ys", F, None)])
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((k, 3)).astype(np.float32) for k in (1, 4)]
    b = rng.standard_normal(3).astype(np.float32)
    got = avalon.onnx.load(m)(xs, b)
    assert [g.shape for g in got] == [(1, 3), (4, 3)]
    for g, x in zip(got, xs):
        np.testing.assert_allclose(g.numpy(), x + b, rtol=1e-6)


def test_opset_8_scan_is_refused_not_misread():
    body = _body("body", [helper.make_node("Identity", ["a"], ["b"])], [_vi("a", F, [2])], [_vi("b", F, [2])])
    scan = helper.make_node("Scan", ["", "x"], ["y"], body=body, num_scan_inputs=1)
    m = _model([scan], [_vi("x", F, [1, 3, 2])], [_vi("y", F, [1, 3, 2])], opset=8)
    with pytest.raises(UnsupportedOp, match="Scan before opset 9"):
        avalon.onnx.load(m)
