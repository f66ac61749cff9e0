"""The numpy interpreter: graphs built with the Builder, fusion regions, input checking, subclass hooks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import avalon.ir as ir
from avalon.ir import Interpreter, interpret, round_bf16
from avalon.ir import TensorType as T


def mlp_graph(n=4, k=5, m=3):
    """relu(x @ w + b) with an explicit broadcast of the bias."""
    g = ir.Graph("mlp")
    x = g.add_input(T((n, k), "f32"), "x")
    w = g.add_input(T((k, m), "f32"), "fc.weight")
    b = g.add_input(T((m,), "f32"), "fc.bias")
    bld = ir.Builder(g)
    y = bld("relu", bld("add", bld("matmul", x, w), bld("broadcast", b, shape=[n, m])))
    g.set_outputs([y])
    return ir.verify(g)


def mlp_inputs(rng, n=4, k=5, m=3):
    return (rng.standard_normal((n, k)).astype(np.float32), rng.standard_normal((k, m)).astype(np.float32),
            rng.standard_normal(m).astype(np.float32))


def test_runs_a_graph(rng):
    x, w, b = mlp_inputs(rng)
    (y,) = interpret(mlp_graph(), x, w, b)
    assert y.dtype == np.float32 and y.shape == (4, 3)
    np.testing.assert_allclose(y, np.maximum(x @ w + b, 0), rtol=1e-6)


def test_same_result_after_print_and_parse(rng):
    g = mlp_graph()
    args = mlp_inputs(rng)
    assert np.array_equal(interpret(ir.parse(str(g)), *args)[0], interpret(g, *args)[0])


def test_multiple_outputs_and_constants(rng):
    g = ir.Graph()
    x = g.add_input(T((2, 3), "f64"), "x")
    bld = ir.Builder(g)
    c = bld.constant(np.arange(6.0).reshape(2, 3) + 1, shape=(2, 3), dtype="f64")
    s = bld("sum", bld("mul", x, c), axes=[1])
    am = bld("argmax", x, axis=1)
    g.set_outputs([s, am, x])
    xv = rng.standard_normal((2, 3))
    s_, am_, x_ = interpret(ir.verify(g), xv)
    np.testing.assert_allclose(s_, (xv * (np.arange(6.0).reshape(2, 3) + 1)).sum(1))
    assert am_.dtype == np.int64 and am_.tolist() == xv.argmax(1).tolist()
    assert np.array_equal(x_, xv) and not np.shares_memory(x_, xv)  # a returned input is a copy


def fused_graph(nested=False):
    """x*y -> fusion(add, tanh) -> mul: the region computes tanh(a + b) (nested: inside a second fusion)."""
    g = ir.Graph()
    x, y = g.add_input(T((3, 4), "f32"), "x"), g.add_input(T((3, 4), "f32"), "y")
    bld = ir.Builder(g)
    xy = bld("mul", x, y)
    region = ir.Block([T((3, 4), "f32")] * 2, ["a", "b"])
    rb = ir.Builder(region)
    if nested:
        inner = ir.Block([T((3, 4), "f32")] * 2, ["p", "q"])
        ib = ir.Builder(inner)
        inner.set_terminator("yield", [ib("add", *inner.args)])
        s = rb.fusion("fused_add_1", list(region.args), inner).result
    else:
        s = rb("add", *region.args)
    region.set_terminator("yield", [rb("tanh", s), s])
    f = bld.fusion("fused_add_tanh_0", [xy, x], region)
    g.set_outputs([bld("mul", f.results[0], f.results[1])])
    return ir.verify(g)


@pytest.mark.parametrize("nested", [False, True])
def test_fusion_regions_compute_what_the_ops_would(nested, rng):
    x, y = rng.standard_normal((2, 3, 4)).astype(np.float32)
    s = x * y + x
    (got,) = interpret(fused_graph(nested), x, y)
    np.testing.assert_allclose(got, np.tanh(s) * s, rtol=1e-6)
    (again,) = interpret(ir.parse(str(fused_graph(nested))), x, y)
    assert np.array_equal(got, again)


def test_lenet_forward_batch_64(rng):
    """conv, pool, reshape, matmul, log-softmax pieces together, checked against torch."""
    g = ir.Graph("lenet")
    x = g.add_input(T((64, 1, 28, 28), "f32"), "x")
    w1 = g.add_input(T((20, 1, 5, 5), "f32"), "conv1.weight")
    w2 = g.add_input(T((50, 20, 5, 5), "f32"), "conv2.weight")
    fc = g.add_input(T((800, 10), "f32"), "fc.weight")
    b = ir.Builder(g)
    h = b("max_pool2d", b("relu", b("conv2d", x, w1)), kernel=[2, 2], stride=[2, 2])
    h = b("max_pool2d", b("relu", b("conv2d", h, w2)), kernel=[2, 2], stride=[2, 2])
    z = b("matmul", b("reshape", h, shape=[64, 800]), fc)
    m = b("broadcast", b("max", z, axes=[1], keepdims=True), shape=[64, 10])
    e = b("sub", z, m)
    lse = b("log", b("sum", b("exp", e), axes=[1], keepdims=True))
    g.set_outputs([b("sub", e, b("broadcast", lse, shape=[64, 10]))])
    args = [rng.standard_normal(v.shape).astype(np.float32) * 0.1 for v in g.inputs]
    (got,) = interpret(ir.verify(g), *args)
    xt, w1t, w2t, fct = map(torch.tensor, args)
    h = F.max_pool2d(F.relu(F.conv2d(xt, w1t)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, w2t)), 2)
    want = F.log_softmax(h.reshape(64, 800) @ fct, dim=1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# inputs


def test_wrong_number_of_inputs(rng):
    with pytest.raises(TypeError, match=r"takes 3 input\(s\) \(x, fc.weight, fc.bias\), got 2"):
        interpret(mlp_graph(), *mlp_inputs(rng)[:2])


def test_wrong_dtype_names_the_input_and_both_types(rng):
    x, w, b = mlp_inputs(rng)
    with pytest.raises(TypeError, match=r"input 1 \('fc.weight'\): expected tensor<5x3xf32>, got tensor<5x3xf64>"):
        interpret(mlp_graph(), x, w.astype(np.float64), b)
    with pytest.raises(TypeError, match=r"input 2 \('fc.bias'\): expected tensor<3xf32>, got tensor<3xui8>"):
        interpret(mlp_graph(), x, w, b.astype(np.uint8))
    with pytest.raises(TypeError, match=r"input 2 \('fc.bias'\): expected tensor<3xf32>, got uint16 array"):
        interpret(mlp_graph(), x, w, b.astype(np.uint16))  # (no Avalon dtype)


def test_wrong_shape_names_the_input_and_both_types(rng):
    x, w, b = mlp_inputs(rng)
    with pytest.raises(ValueError, match=r"input 0 \('x'\): expected tensor<4x5xf32>, got tensor<4x6xf32>"):
        interpret(mlp_graph(), np.ones((4, 6), np.float32), w, b)


class HasArray:
    def __init__(self, a):
        self.a = a

    def __array__(self, dtype=None, copy=None):
        return self.a


class HasNumpy:
    def __init__(self, a):
        self.a = a

    def numpy(self):
        return self.a


def test_accepts_torch_tensors_and_array_likes(rng):
    x, w, b = mlp_inputs(rng)
    (want,) = interpret(mlp_graph(), x, w, b)
    (got,) = interpret(mlp_graph(), torch.tensor(x), HasArray(w), HasNumpy(b))
    assert np.array_equal(got, want)
    (got,) = interpret(mlp_graph(), torch.tensor(x, requires_grad=True), w, b)
    assert np.array_equal(got, want)
    with pytest.raises(TypeError, match="cannot use a dict as a tensor"):
        interpret(mlp_graph(), {}, w, b)


def test_python_scalars_take_the_input_dtype():
    g = ir.Graph()
    a, n = g.add_input(T((), "f32"), "a"), g.add_input(T((), "i32"), "n")
    b = ir.Builder(g)
    g.set_outputs([b("mul", a, a), b("add", n, n)])
    sq, twice = interpret(g, 1.5, 4)
    assert sq.dtype == np.float32 and sq == 2.25
    assert twice.dtype == np.int32 and twice == 8
    with pytest.raises(TypeError, match=r"input 1 \('n'\): expected tensor<i32>, got a Python float"):
        interpret(g, 1.5, 4.0)


def test_bf16_inputs_are_rounded_and_results_are_bf16(rng):
    g = ir.Graph()
    x = g.add_input(T((50,), "bf16"), "x")
    b = ir.Builder(g)
    g.set_outputs([b("mul", x, x)])
    xv = rng.standard_normal(50).astype(np.float32)
    (got,) = interpret(g, xv)
    xb = torch.tensor(xv).bfloat16()
    assert got.dtype == np.float32
    assert np.array_equal(got, (xb * xb).float().numpy())
    assert np.array_equal(interpret(g, xb)[0], got)  # a torch bf16 tensor is accepted too
    assert np.array_equal(round_bf16(got), got)


# --------------------------------------------------------------------------------------------
# hooks, memory, errors


class CountingInterpreter(Interpreter):
    """Counts ops by name and records each result's shape, the way a user-written tracer would."""

    def __init__(self, graph):
        super().__init__(graph)
        self.counts: dict[str, int] = {}
        self.shapes: list[tuple] = []

    def run_op(self, op, args):
        self.counts[op.name] = self.counts.get(op.name, 0) + 1
        out = super().run_op(op, args)
        self.shapes += [o.shape for o in out]
        return out


def test_subclass_sees_every_op_including_region_ops(rng):
    it = CountingInterpreter(fused_graph())
    it.run(*rng.standard_normal((2, 3, 4)).astype(np.float32))
    assert it.counts == {"mul": 2, "fusion": 1, "add": 1, "tanh": 1}
    assert set(it.shapes) == {(3, 4)}


def test_subclass_can_replace_an_op(rng):
    class LeakyInterpreter(Interpreter):
        def run_op(self, op, args):
            if op.name == "relu":
                return [np.where(args[0] > 0, args[0], np.float32(0.1) * args[0])]
            return super().run_op(op, args)

    x, w, b = mlp_inputs(rng)
    (got,) = LeakyInterpreter(mlp_graph()).run(x, w, b)
    z = x @ w + b
    np.testing.assert_allclose(got, np.where(z > 0, z, 0.1 * z), rtol=1e-6)


def test_intermediates_are_freed_after_their_last_use(rng):
    g = ir.Graph()
    x = g.add_input(T((8, 8), "f32"), "x")
    b = ir.Builder(g)
    v = x
    for _ in range(50):
        v = b("tanh", b("add", v, x))
    g.set_outputs([v])

    class Peak(Interpreter):
        peak = 0

        def run_op(self, op, args):
            self.peak = max(self.peak, len(self.env))
            return super().run_op(op, args)

    it = Peak(g)
    (got,) = it.run(xv := rng.standard_normal((8, 8)).astype(np.float32))
    assert it.peak <= 3  # x, the live chain value, and at most one more
    assert it.env == {}
    want = xv
    for _ in range(50):
        want = np.tanh(want + xv)
    np.testing.assert_allclose(got, want, rtol=1e-5)

    keep = Peak(g)
    keep.free_intermediates = False
    keep.run(xv)
    assert len(keep.env) == 1 + 100


def test_interpreter_is_reusable(rng):
    it = Interpreter(mlp_graph())
    a, b = mlp_inputs(rng), mlp_inputs(rng)
    assert np.array_equal(it.run(*a)[0], interpret(mlp_graph(), *a)[0])
    assert np.array_equal(it.run(*b)[0], interpret(mlp_graph(), *b)[0])


def test_op_without_a_rule_raises_not_implemented():
    ir.define_op("my_custom_op", 1, lambda ts, a: [ts[0]])
    try:
        g = ir.Graph()
        x = g.add_input(T((2,), "f32"), "x")
        g.set_outputs([ir.Builder(g)("my_custom_op", x)])
        with pytest.raises(NotImplementedError, match="no rule for op 'my_custom_op'"):
            interpret(g, np.ones(2, np.float32))
    finally:
        del ir.OPS["my_custom_op"]


def test_errors_inside_a_rule_name_the_op():
    g = ir.Graph()
    table = g.add_input(T((5, 2), "f32"), "table")
    idx = g.add_input(T((3,), "i64"), "idx")
    b = ir.Builder(g)
    b.loc = ir.Location("model.py", 12)
    g.set_outputs([b("take", table, idx)])
    with pytest.raises(IndexError, match="index 9 is out of range") as e:
        interpret(g, np.ones((5, 2), np.float32), np.array([0, 9, 1]))
    assert "'take'" in "".join(e.value.__notes__) and "model.py:12" in "".join(e.value.__notes__)


def test_random_op_in_a_graph_is_reproducible():
    g = ir.Graph()
    seed = g.add_input(T((), "i64"), "seed")
    b = ir.Builder(g)
    g.set_outputs([b("random", seed, shape=[4, 4], distribution="normal")])
    a1, a2, a3 = interpret(g, 3)[0], interpret(g, np.int64(3))[0], interpret(g, 4)[0]
    assert np.array_equal(a1, a2) and not np.array_equal(a1, a3)
