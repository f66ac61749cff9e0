"""Differential check: on random graphs full of foldable constants, identities, duplicates, shape-op
chains and dead code, every pass (and the default pipeline) leaves what the graph computes unchanged
under the numpy reference interpreter, keeps the IR valid, and is idempotent."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import avalon.ir as ir
from avalon.ir import Builder, Graph, TensorType, interpret
from avalon.passes import DEFAULT_PIPELINE, PassManager
from avalon.passes.testing import random_inputs

SHAPE = (2, 3)
UNARY = ["neg", "exp", "tanh", "sigmoid", "abs", "relu"]
BINARY = ["add", "sub", "mul", "div", "maximum", "minimum"]
CONSTS = [0.0, 1.0, -1.0, 2.0, 0.5]


@st.composite
def graphs(draw) -> Graph:
    g = Graph("f")
    b = Builder(g)
    vals = [g.add_input(TensorType(SHAPE, "f32"), "x"), g.add_input(TensorType(SHAPE, "f32"), "y")]

    def const():
        kind = draw(st.sampled_from(["splat", "scalar", "dense"]))
        if kind == "splat":
            return b.constant(draw(st.sampled_from(CONSTS)), SHAPE)
        if kind == "scalar":
            return b("broadcast", b.constant(draw(st.sampled_from(CONSTS))), shape=list(SHAPE))
        return b.constant(draw(st.lists(st.sampled_from(CONSTS), min_size=6, max_size=6)), SHAPE)

    for _ in range(draw(st.integers(3, 12))):
        kind = draw(st.sampled_from(["unary", "binary", "binary", "const", "transpose", "reshape", "dup"]))
        a = draw(st.sampled_from(vals))
        if kind == "unary":
            vals.append(b(draw(st.sampled_from(UNARY)), a))
        elif kind == "binary":
            other = const() if draw(st.booleans()) else draw(st.sampled_from(vals))
            lhs, rhs = (a, other) if draw(st.booleans()) else (other, a)
            vals.append(b(draw(st.sampled_from(BINARY)), lhs, rhs))
        elif kind == "const":
            vals.append(const())
        elif kind == "transpose":
            t = b("transpose", a, perm=[1, 0])
            vals.append(b("transpose", t, perm=[1, 0]) if draw(st.booleans()) else b("neg", b("neg", a)))
        elif kind == "reshape":
            shapes = st.sampled_from([[6], [3, 2], [1, 6], [6, 1], [2, 3]])
            r = b("reshape", a, shape=draw(shapes))
            r = b("reshape", r, shape=draw(shapes)) if draw(st.booleans()) else r
            vals.append(b("reshape", r, shape=list(SHAPE)))
        else:  # the same op twice: cse bait
            op = a.op
            if op is not None and op.name != "constant":
                vals.append(b(op.name, *op.operands, **op.attrs))
    outs = draw(st.lists(st.sampled_from(vals[2:] or vals), min_size=1, max_size=3))
    g.set_outputs(outs)
    return ir.verify(g)


def check(pipeline: str, g: Graph) -> None:
    before = g.clone()
    pm = PassManager.parse(pipeline, verify_each=True)
    pm.run(g)
    assert ir.parse(str(g)) is not None  # the result still prints and parses
    for seed in (0, 1):
        args = random_inputs(before, seed)
        for want, got in zip(interpret(before, *args), interpret(g, *args)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    if "," not in pipeline:
        assert pm.run(g) is False, f"{pipeline} is not idempotent"


@given(graphs())
def test_canonicalize_preserves_results(g):
    check("canonicalize", g)


@given(graphs())
def test_cse_preserves_results(g):
    check("cse", g)


@given(graphs())
def test_dce_preserves_results(g):
    check("dce", g)


@given(graphs())
def test_default_pipeline_preserves_results(g):
    check(DEFAULT_PIPELINE, g)
    assert all(op.name != "reshape" or op.operands[0].op is None or op.operands[0].op.name != "reshape"
               for op in g.walk())
