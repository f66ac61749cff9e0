"""Differential check of `fuse`: on random graphs of elementwise chains, broadcasts, row and column
reductions, matmuls (with transposed weights) and several outputs, fusing leaves what the graph
computes unchanged under the numpy interpreter, keeps the IR valid, makes only groups the Triton
backend compiles as one kernel, and is idempotent."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import avalon.ir as ir
from avalon.ir import Builder, Graph, TensorType, interpret
from avalon.passes import DEFAULT_PIPELINE, PassManager, get_pass
from avalon.passes import fuse as fuse_mod
from avalon.passes.fusion_policy import FusionGroup, FusionPolicy
from avalon.passes.testing import random_inputs

R, C = 3, 4
UNARY = ["neg", "exp", "tanh", "sigmoid", "abs", "relu"]
BINARY = ["add", "sub", "mul", "maximum"]


@st.composite
def graphs(draw) -> Graph:
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((R, C), "f32"), "x")
    y = g.add_input(TensorType((R, C), "f32"), "y")
    row = g.add_input(TensorType((C,), "f32"), "row")
    w = g.add_input(TensorType((C, C), "f32"), "w")
    vals = [x, y]  # (R, C) values
    extra = []  # reduced values: possible outputs

    def operand():
        kind = draw(st.sampled_from(["val", "val", "row", "scalar"]))
        if kind == "row":
            return b("broadcast", row, shape=[R, C])
        if kind == "scalar":
            return b.constant(draw(st.sampled_from([0.5, 2.0, -1.0])), (R, C))
        return draw(st.sampled_from(vals))

    for _ in range(draw(st.integers(2, 10))):
        kind = draw(st.sampled_from(["unary", "binary", "binary", "reduce", "matmul"]))
        a = draw(st.sampled_from(vals))
        if kind == "unary":
            vals.append(b(draw(st.sampled_from(UNARY)), a))
        elif kind == "binary":
            lhs, rhs = (a, operand()) if draw(st.booleans()) else (operand(), a)
            vals.append(b(draw(st.sampled_from(BINARY)), lhs, rhs))
        elif kind == "reduce":
            op = draw(st.sampled_from(["sum", "max"]))
            axes = draw(st.sampled_from([[0], [1], [0, 1]]))
            keep = draw(st.booleans())
            red = b(op, a, axes=axes, keepdims=keep)
            extra.append(red)
            kept = [1 if d in axes else s for d, s in enumerate((R, C))]
            back = red if keep else b("reshape", red, shape=kept)
            vals.append(b(draw(st.sampled_from(BINARY)), a, b("broadcast", back, shape=[R, C])))
        else:
            rhs = b("transpose", w, perm=[1, 0]) if draw(st.booleans()) else w
            vals.append(b("matmul", a, rhs))
    outs = draw(st.lists(st.sampled_from(vals[2:] + extra or vals), min_size=1, max_size=3))
    g.set_outputs(outs)
    return ir.verify(g)


def kernel_problems(g: Graph) -> list[str]:
    """Groups the default policy would not accept as one kernel (should be none)."""
    policy = FusionPolicy()
    out = []
    for op in g.ops:
        if op.name == "fusion":
            region = op.regions[0]
            view = FusionGroup(region.ops, {o: i for i, o in enumerate(region.ops)}, policy.inlinable, fused=True)
            view.__dict__["outputs"] = list(region.results)
            why = policy.kernel_problem(view)
            if why:
                out.append(f"{op.attrs['name']}: {why}")
    return out


def check(pipeline: str, g: Graph, again: str = "fuse") -> Graph:
    before = g.clone()
    PassManager.parse(pipeline, verify_each=True).run(g)
    ir.parse(str(g))  # the result still prints and parses
    for seed in (0, 1):
        args = random_inputs(before, seed)
        for want, got in zip(interpret(before, *args), interpret(g, *args)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert kernel_problems(g) == []
    text = str(g)
    assert PassManager.parse(again).run(g) is False and get_pass("dce")(g) is False and str(g) == text
    return g


@given(graphs())
def test_fuse_pipeline_preserves_results(g):
    fuse_mod._Fuser.verify_order = True
    try:
        check("canonicalize,cse,dce,fuse,dce", g)
    finally:
        fuse_mod._Fuser.verify_order = False


@given(graphs())
def test_default_pipeline_preserves_results(g):
    check(DEFAULT_PIPELINE, g)


@given(graphs(), st.integers(1, 6), st.booleans(), st.booleans(), st.integers(-1, 4))
def test_fuse_options_preserve_results(g, max_ops, epilogue, reductions, fuel):
    opts = f"max-ops={max_ops},epilogue={str(epilogue).lower()},reductions={str(reductions).lower()},fuel={fuel}"
    pipeline = f"fuse{{{opts}}}"
    g = check(f"dce,{pipeline}", g, again=pipeline) if fuel == -1 else _run_once(pipeline, g)
    for op in g.ops:
        if op.name == "fusion":
            assert len(op.regions[0].ops) <= max_ops
            names = {o.name for o in op.regions[0].ops}
            assert epilogue or "matmul" not in names
            assert reductions or not names & {"sum", "max"}


def _run_once(pipeline: str, g: Graph) -> Graph:
    """With limited fuel the pass may find more to do on a second run, so only results are checked."""
    before = g.clone()
    PassManager.parse(pipeline, verify_each=True).run(g)
    args = random_inputs(before, 0)
    for want, got in zip(interpret(before, *args), interpret(g, *args)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert kernel_problems(g) == []
    return g
