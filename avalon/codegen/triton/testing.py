"""Helpers for tests and experiments: build fused graphs by hand while no fusion pass decides them.

`fuse(graph, name)` returns a copy of `graph` whose ops (or the ops at `start:stop`) are moved into
one `fusion` op, exactly the shape the fusion pass produces, so each emitter can be driven from
an ordinary graph built with `Builder` and checked against the reference run of the original.
"""
from __future__ import annotations

import numpy as np

from avalon.ir import dtypes as dt
from avalon.ir.core import Graph
from avalon.ir.fusion import outline


def fuse(graph: Graph, name: str = "fused_0", start: int = 0, stop: int | None = None) -> Graph:
    """A copy of `graph` with ops[start:stop] in one fusion op named `name` (values they read from
    outside become its operands; values used later or returned become its results)."""
    out = graph.clone()
    ops = list(out.ops[start:stop])
    if ops:  # a graph that computes nothing (it returns its inputs) has nothing to fuse
        outline(ops, name)
    return out


def random_inputs(graph: Graph, rng: np.random.Generator, low: float = -2.0, high: float = 2.0,
                  int_high: int = 5) -> list[np.ndarray]:
    """Random values for every graph input: floats in [low, high), ints in [0, int_high), bools."""
    out = []
    for v in graph.inputs:
        d = v.dtype
        if d.is_float:
            a = rng.uniform(low, high, v.shape)
        elif d == dt.bool_:
            a = rng.random(v.shape) < 0.5
        else:
            a = rng.integers(0, int_high, v.shape)
        out.append(np.asarray(a).astype(d.np))
    return out


def tolerance(kind: str = "pointwise") -> tuple[float, float]:
    """(rtol, atol) for comparing with the reference: dots on a GPU use tf32 (about 1e-3 relative)."""
    from .cache import interpreting
    if kind == "contraction" and not interpreting():
        return 2e-2, 2e-2
    return 1e-5, 1e-5


def check(graph: Graph, inputs: list[np.ndarray] | None = None, *, fused: str | None = "fused_0",
          blocks=None, rtol: float | None = None, atol: float | None = None, kind: str = "pointwise",
          rng: np.random.Generator | None = None):
    """Compile `graph` (first wrapped in one fusion op named `fused` unless that is None), run it,
    assert it matches the numpy reference, and return the CompiledGraph."""
    from avalon.ir import interpret, to_numpy, verify

    from .build import compile_graph
    verify(graph)
    if inputs is None:
        inputs = random_inputs(graph, rng or np.random.default_rng(0))
    want = interpret(graph, *inputs)
    g = fuse(graph, fused) if fused else graph
    verify(g)
    cg = compile_graph(g, blocks=blocks)
    got = cg(*inputs)
    r, a = tolerance(kind)
    r, a = rtol if rtol is not None else r, atol if atol is not None else a
    assert len(got) == len(want)
    for k, (x, y) in enumerate(zip(got, want)):
        x = to_numpy(x)
        assert x.shape == y.shape and x.dtype == y.dtype, f"output {k}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        if y.dtype.kind in "biu":
            np.testing.assert_array_equal(x, y, err_msg=f"output {k}")
        else:
            np.testing.assert_allclose(x.astype(np.float64), y.astype(np.float64), rtol=r, atol=a, equal_nan=True,
                                       err_msg=f"output {k}\n" + "\n".join(cg.kernels.values()))
    return cg
