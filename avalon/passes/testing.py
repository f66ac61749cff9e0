"""Helpers for testing passes the way compiler tests read best: IR before, IR after.

    assert_rewrites("cse", before='''func @f(...) ...''', after='''func @f(...) ...''')

parses `before`, runs the pipeline with verification after each pass, and compares the printed
result with `after` (normalized by parsing and printing it, so spacing does not matter). It also
runs both graphs on random inputs through the numpy reference interpreter and checks that the pass
did not change what the graph computes.
"""
from __future__ import annotations

import difflib
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from avalon.ir import Graph, parse, print_graph

from .manager import PassManager


def _graph(g: Graph | str) -> Graph:
    return parse(textwrap.dedent(g)) if isinstance(g, str) else g


def _manager(pipeline: str | Any) -> PassManager:
    if isinstance(pipeline, PassManager):
        return pipeline
    return PassManager([pipeline], verify_each=True)


def random_inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    """Random arrays for the graph's inputs: normal floats, small non-negative ints, random booleans."""
    rng = np.random.default_rng(seed)
    out = []
    for v in graph.inputs:
        t = v.type
        if t.dtype.is_float:
            out.append(rng.standard_normal(t.shape).astype(t.dtype.np))
        elif t.dtype.is_int:
            out.append(rng.integers(0, 4, size=t.shape).astype(t.dtype.np))
        else:
            out.append(rng.random(t.shape) < 0.5)
    return out


def assert_same_results(before: Graph | str, after: Graph | str, *, inputs: Sequence[np.ndarray] | None = None,
                        seeds: Sequence[int] = (0, 1), rtol: float = 1e-6, atol: float = 1e-6) -> None:
    """Both graphs give the same outputs on the same inputs (random ones unless `inputs` is given)."""
    from avalon.ir import interpret
    g0, g1 = _graph(before), _graph(after)
    trials = [list(inputs)] if inputs is not None else [random_inputs(g0, s) for s in seeds]
    for args in trials:
        want, got = interpret(g0, *args), interpret(g1, *args)
        assert len(want) == len(got), f"{len(want)} outputs before, {len(got)} after"
        for i, (w, g) in enumerate(zip(want, got)):
            assert w.dtype == g.dtype and w.shape == g.shape, f"output {i}: {w.dtype}{w.shape} vs {g.dtype}{g.shape}"
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"output {i}")


def assert_rewrites(pipeline: str | Any, before: str, after: str, *, changed: bool | None = None,
                    check_results: bool = True, **result_options: Any) -> Graph:
    """Run `pipeline` (a string, a registered pass or a PassManager) on `before` and check the printed
    result equals `after`; also that it computes the same as `before` unless `check_results=False`.
    `changed` checks what the pipeline reported. Returns the rewritten graph."""
    graph = _graph(before)
    original = graph.clone()
    pm = _manager(pipeline)
    did = pm.run(graph)
    want = print_graph(_graph(after))
    got = print_graph(graph)
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "expected", "got"))
        raise AssertionError(f"pipeline {pm} gave different IR:\n{diff}")
    if changed is not None:
        assert did == changed, f"pipeline {pm} reported changed={did}, expected {changed}"
    if check_results:
        assert_same_results(original, graph, **result_options)
    return graph
