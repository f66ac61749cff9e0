"""One small graph per registered op, for the MLIR tests (tests/test_mlir*.py).

`sample(name)` builds a graph exercising op `name` (elementwise ops are built from their traits;
the rest are listed in SPECIAL). An op with neither raises, so a new op must add a sample here
before the MLIR tests pass.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from avalon.ir import OPS, Builder, Graph, Location, TensorType, Value
from avalon.ir import dtypes as dt


def _graph(types: list[tuple[tuple[int, ...], object]], build: Callable[..., list[Value]], name: str) -> Graph:
    g = Graph(name)
    args = [g.add_input(TensorType(s, d), f"x{i}") for i, (s, d) in enumerate(types)]
    b = Builder(g)
    b.loc = Location("model.py", 7)
    g.set_outputs(build(b, *args))
    return g


F32 = dt.float32
CONV = {"stride": [2, 1], "padding": [1, 2], "dilation": [1, 2], "groups": 2}
POOL = {"kernel": [3, 2], "stride": [2, 2], "padding": [1, 1]}

SPECIAL: dict[str, Callable[[str], Graph]] = {
    "cast": lambda n: _graph([((2, 3), F32)], lambda b, x: [b("cast", x, dtype="i32"), b("cast", x, dtype="f16"),
                                                            b("cast", x, dtype="i1")], n),
    "where": lambda n: _graph([((2, 3), dt.bool_), ((2, 3), F32), ((2, 3), F32)],
                              lambda b, c, x, y: [b("where", c, x, y)], n),
    "check": lambda n: _graph([((2, 3), F32)], lambda b, x: [b("check", x, b("eq", x, x), message="x is nan")], n),
    "constant": lambda n: _graph([], lambda b: [b.constant(1.5, (2, 3)),
                                                b.constant(np.arange(6.0).reshape(2, 3), (2, 3)),
                                                b.constant(float("nan"), (2,)), b.constant(3, (2,), "i64")], n),
    "broadcast": lambda n: _graph([((3, 1), F32)], lambda b, x: [b("broadcast", x, shape=[2, 3, 4])], n),
    "sum": lambda n: _graph([((2, 3, 4), F32), ((2, 3), dt.bool_)],
                            lambda b, x, m: [b("sum", x, axes=[0, 2]), b("sum", x, axes=[1], keepdims=True),
                                             b("sum", m, axes=[1])], n),
    "max": lambda n: _graph([((2, 3, 4), F32)], lambda b, x: [b("max", x, axes=[2], keepdims=True)], n),
    "argmax": lambda n: _graph([((2, 5), F32)], lambda b, x: [b("argmax", x, axis=1)], n),
    "all_reduce": lambda n: _graph([((2, 3), F32)], lambda b, x: [b("all_reduce", x, reduction="sum")], n),
    "all_gather": lambda n: _graph([((2, 3), F32)], lambda b, x: [b("all_gather", x)], n),
    "iota": lambda n: _graph([], lambda b: [b("iota", shape=[2, 3], axis=1, dtype="f32"),
                                            b("iota", shape=[4, 2], axis=0, dtype="i64")], n),
    "cumsum": lambda n: _graph([((2, 5), F32)], lambda b, x: [b("cumsum", x, axis=1),
                                                              b("cumsum", x, axis=1, reverse=True)], n),
    "reshape": lambda n: _graph([((2, 3, 4), F32)], lambda b, x: [b("reshape", x, shape=[4, 6])], n),
    "transpose": lambda n: _graph([((2, 3, 4), F32)], lambda b, x: [b("transpose", x, perm=[2, 0, 1])], n),
    "slice": lambda n: _graph([((5, 6), F32)], lambda b, x: [b("slice", x, start=[1, 0], limit=[5, 6], step=[2, 3])],
                              n),
    "concat": lambda n: _graph([((2, 3), F32), ((2, 2), F32)], lambda b, x, y: [b("concat", x, y, axis=1)], n),
    "pad": lambda n: _graph([((2, 3), F32)], lambda b, x: [b("pad", x, low=[1, 0], high=[0, 2], value=-1.5)], n),
    "matmul": lambda n: _graph([((2, 3, 4), F32), ((2, 4, 5), F32), ((3, 4), F32), ((4, 2), F32)],
                               lambda b, x, y, p, q: [b("matmul", x, y), b("matmul", p, q)], n),
    "conv2d": lambda n: _graph([((2, 4, 7, 8), F32), ((6, 2, 3, 2), F32), ((2, 3, 6, 6), F32), ((4, 3, 3, 3), F32)],
                               lambda b, x, w, y, v: [b("conv2d", x, w, **CONV), b("conv2d", y, v)], n),
    "conv2d_grad_input": lambda n: _graph(
        [((2, 6, 4, 10), F32), ((6, 2, 3, 2), F32)],
        lambda b, dy, w: [b("conv2d_grad_input", dy, w, input_shape=[2, 4, 7, 8], **CONV)], n),
    "conv2d_grad_weight": lambda n: _graph(
        [((2, 4, 7, 8), F32), ((2, 6, 4, 10), F32), ((2, 3, 7, 6), F32), ((2, 4, 4, 4), F32)],
        lambda b, x, dy, y, dz: [b("conv2d_grad_weight", x, dy, weight_shape=[6, 2, 3, 2], **CONV),
                                 b("conv2d_grad_weight", y, dz, weight_shape=[4, 3, 3, 2], stride=[2, 1],
                                   padding=[1, 0], dilation=[1, 2])], n),
    "max_pool2d": lambda n: _graph([((2, 3, 7, 6), F32)], lambda b, x: [b("max_pool2d", x, **POOL)], n),
    "max_pool2d_grad": lambda n: _graph([((2, 3, 7, 6), F32), ((2, 3, 4, 4), F32)],
                                        lambda b, x, dy: [b("max_pool2d_grad", x, dy, **POOL)], n),
    "avg_pool2d": lambda n: _graph([((2, 3, 7, 6), F32)],
                                   lambda b, x: [b("avg_pool2d", x, **POOL),
                                                 b("avg_pool2d", x, count_include_pad=False, **POOL)], n),
    "avg_pool2d_grad": lambda n: _graph(
        [((2, 3, 4, 4), F32)], lambda b, dy: [b("avg_pool2d_grad", dy, input_shape=[2, 3, 7, 6], **POOL),
                                              b("avg_pool2d_grad", dy, input_shape=[2, 3, 7, 6],
                                                count_include_pad=False, **POOL)], n),
    "take": lambda n: _graph([((5, 3), F32), ((2, 4), dt.int64)], lambda b, x, i: [b("take", x, i, axis=0)], n),
    "index_add": lambda n: _graph([((6, 2, 3), F32), ((6,), dt.int64), ((4,), dt.float16), ((4,), dt.int32)],
                                  lambda b, v, i, w, j: [b("index_add", v, i, size=5), b("index_add", w, j, size=4)],
                                  n),
    "index_max": lambda n: _graph([((6, 2, 3), F32), ((6,), dt.int64), ((4,), dt.float16), ((4,), dt.int32)],
                                  lambda b, v, i, w, j: [b("index_max", v, i, size=5), b("index_max", w, j, size=4)],
                                  n),
    "one_hot": lambda n: _graph([((4,), dt.int64)], lambda b, i: [b("one_hot", i, num_classes=5)], n),
    "random": lambda n: _graph([((), dt.int64)], lambda b, s: [b("random", s, shape=[3, 4]),
                                                              b("random", s, shape=[5], distribution="normal"),
                                                              b("random", s, shape=[2, 2], dtype="f16")], n),
    "sort": lambda n: _graph([((2, 5), F32)], lambda b, x: [b("sort", x, axis=1), b("sort", x, axis=0, descending=True)],
                             n),
    "argsort": lambda n: _graph([((2, 5), F32), ((3, 2), dt.int32)],
                                lambda b, x, i: [b("argsort", x, axis=1, descending=True), b("argsort", i, axis=0)], n),
    "svd": lambda n: _graph([((2, 4, 3), F32), ((3, 3), F32), ((2, 5), F32)],
                            lambda b, x, y, z: [b("svd", x), b("svd", y, full_matrices=True), b("svd", z)], n),
    # (eigh reads one triangle: the sample symmetrizes, so forward and reverse mode see the same function)
    "eigh": lambda n: _graph([((2, 3, 3), F32)],
                             lambda b, x: [b("eigh", b("add", x, b("transpose", x, perm=[0, 2, 1])))], n),
    "bitcast": lambda n: _graph([((2, 4), F32), ((3, 2), dt.int32)],
                                lambda b, x, y: [b("bitcast", x, dtype="i32", source="f32"),
                                                 b("bitcast", y, dtype="f32", source="i32")], n),
    # (symmetrized: real eigenvectors, whose sign finite differences can follow; eig's phase has no derivative)
    "eig": lambda n: _graph([((2, 3, 3), F32)],
                            lambda b, x: [b("eig", b("add", x, b("transpose", x, perm=[0, 2, 1])))], n),
    # (ldl_factor: a symmetric input; ldl_solve: 1-based pivots, which LAPACK's sytrs needs valid)
    "ldl_factor": lambda n: _graph([((2, 3, 3), F32)],
                                   lambda b, x: [b("ldl_factor", b("add", x, b("transpose", x, perm=[0, 2, 1])))], n),
    "ldl_solve": lambda n: _graph([((2, 3, 3), F32), ((2, 3, 2), F32)], lambda b, x, y: [_ldl_solve(b, x, y)], n),
    "qr": lambda n: _graph([((2, 4, 3), F32), ((2, 4), F32)], lambda b, x, y: [b("qr", x), b("qr", y)], n),
    "pinv": lambda n: _graph([((2, 4, 3), F32), ((2, 3), F32)],
                             lambda b, x, y: [b("pinv", x, rtol=1e-6), b("pinv", y, rtol=1e-6)], n),
    "fusion": lambda n: _fusion(n),
    "custom_vjp": lambda n: _custom_vjp(n),
}


def _custom_vjp(name: str) -> Graph:
    """A torch.autograd.Function-style op as av.grad sees it before autodiff inlines it."""
    import avalon as av
    from avalon.trace import trace_call

    class Scale(av.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * 2.0

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x

    g = trace_call(lambda x: Scale.apply(x).sum(), (av.tensor(np.ones((2, 3), np.float32)),), keep_custom=True).graph
    g.name = name
    return g


def _fusion(name: str) -> Graph:
    from avalon.compiler.testing import outline

    def build(b: Builder, x: Value, bias: Value) -> list[Value]:
        y = b("add", x, b("broadcast", bias, shape=[2, 3]))
        return [b("relu", y), b("mul", y, b.constant(2.0, (2, 3)))]
    g = _graph([((2, 3), F32), ((3,), F32)], build, name)
    outline(g, list(g.ops), "fused_add_relu_0")  # the region holds broadcast, add, relu, constant, mul
    return g


FLOAT_ONLY = ("exp", "log", "tanh", "sigmoid", "sqrt", "rsqrt", "erf", "sin", "cos")


def _ldl_solve(b: Builder, ld: Value, y: Value) -> Value:
    piv = b("add", b("iota", shape=[2, 3], axis=1, dtype=dt.int32), b.constant(1, [2, 3], dt.int32))  # no swaps
    return b("ldl_solve", ld, piv, y)


def sample(name: str) -> Graph:
    """A small graph exercising op `name` (named `t_<name>`)."""
    fname = f"t_{name}"
    if name in SPECIAL:
        return SPECIAL[name](fname)
    d = OPS[name]
    if "elementwise" not in d.traits or not isinstance(d.operands, int):
        raise KeyError(f"no MLIR test sample for op '{name}': add one to tests/mlir_samples.py")
    logical = name.startswith("logical_")
    dtype = dt.bool_ if logical else F32
    out = []

    def build(b: Builder, *xs: Value) -> list[Value]:
        out.append(b(name, *xs))
        if "bool_as_int" in d.traits:  # i1 operands act as 0/1
            bs = [b("gt", x, b.constant(0.0, x.type.shape)) for x in xs]
            out.append(b(name, *bs))
        if not logical and name not in FLOAT_ONLY:
            ints = [b("cast", x, dtype="i32") for x in xs]
            out.append(b(name, *ints))
        return out
    return _graph([((2, 3), dtype)] * d.operands, build, fname)


def all_samples() -> dict[str, Graph]:
    return {name: sample(name) for name in OPS}


def merged_elementwise() -> Graph:
    """Every elementwise sample in one graph, fused into a few groups: each one `linalg.generic`
    whose body holds its ops' scalar code (a few IREE dispatches instead of ~30 to compile)."""
    from avalon.compiler.testing import outline
    from avalon.ir.clone import clone_op
    g = Graph("t_elementwise_groups")
    outs: list[Value] = []
    chunks: list[list] = [[]]
    for name, d in OPS.items():
        if "elementwise" not in d.traits or name in SPECIAL:
            continue
        s = sample(name)
        mapping = {a: g.add_input(a.type, f"{name}{i}") for i, a in enumerate(s.inputs)}
        if len(chunks[-1]) > 24:  # IREE's CPU dispatches take at most 64 operands + results
            chunks.append([])
        for op in s.ops:
            chunks[-1].append(g.body.append(clone_op(op, mapping)))
        outs += [mapping[v] for v in s.outputs]
    g.set_outputs(outs)
    for k, ops in enumerate(chunks):
        outline(g, ops, f"fused_elementwise_{k}")
    return g
