"""Check mode: run every fused group on the backend and against its unfused reference.

When a compiled model gives wrong numbers, the question is *which kernel*. Check mode answers it
the way Inductor's accuracy minifier does, built in: the whole final graph runs on the reference
interpreter, which records the operands each fused group receives; each group is then run alone
twice on those operands, once by the backend (the group compiled as a one-op graph, so the
backend emits the very kernel it uses) and once op by op through the reference rules (the region
as a plain function). The first group whose results differ beyond tolerance raises `CheckError`
naming the group, the output and the largest absolute and relative errors.

Tolerances are per dtype (`TOLERANCES`, editable): a result passes when
`max|got - want| <= atol + rtol * max|want|`, a norm-wise test that does not trip over the
cancellation every matmul and reduction has. Integer and boolean results must match exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from avalon.channels import get_logger
from avalon.ir import (
    Graph,
    Interpreter,
    Op,
    fusion_groups,
    group_graph,
    group_name,
    interpret,
    region_function,
    to_numpy,
)

log = get_logger("check")

TOLERANCES: dict[str, tuple[float, float]] = {
    "f64": (1e-9, 1e-12), "f32": (1e-4, 1e-5), "f16": (1e-2, 1e-3), "bf16": (2e-2, 1e-2)}
"""dtype name -> (rtol, atol), relative to the largest magnitude of the reference result."""


class CheckError(AssertionError):
    """A fused group's backend result differs from its unfused reference."""

    def __init__(self, msg: str, group: str, output: int, max_abs: float, max_rel: float):
        super().__init__(msg)
        self.group, self.output, self.max_abs, self.max_rel = group, output, max_abs, max_rel


@dataclass
class GroupResult:
    """How one group compared: the largest errors over its outputs."""

    group: str
    max_abs: float
    max_rel: float
    ok: bool


class _Recorder(Interpreter):
    """The reference interpreter, keeping a copy of each top-level group's operands."""

    def __init__(self, graph: Graph):
        super().__init__(graph)
        self.seen: dict[int, list[np.ndarray]] = {}

    def run_op(self, op: Op, args: list[np.ndarray]) -> list[np.ndarray]:
        if op.regions and op.parent is self.graph.body:
            self.seen[id(op)] = [np.array(a, copy=True) for a in args]
        return super().run_op(op, args)


def compare(got: Any, want: np.ndarray, dtype: str = "f32") -> tuple[float, float, bool]:
    """(max abs error, max error relative to max|want|, within `TOLERANCES[dtype]`) for one result."""
    g = np.asarray(to_numpy(got))
    w = np.asarray(want)
    if g.shape != w.shape:
        return float("inf"), float("inf"), False
    if w.dtype.kind in "biu":
        diff = np.abs(g.astype(np.int64) - w.astype(np.int64)) if w.size else np.zeros(0)
        err = float(diff.max()) if diff.size else 0.0
        return err, err / max(1.0, float(np.abs(w).max()) if w.size else 1.0), err == 0
    g64, w64 = g.astype(np.float64), w.astype(np.float64)
    if (np.isnan(g64) != np.isnan(w64)).any():
        return float("nan"), float("nan"), False
    inf = np.isinf(w64)
    if (g64[inf] != w64[inf]).any():  # an infinity must come out exactly
        return float("inf"), float("inf"), False
    fin = np.isfinite(w64)
    diff = np.abs(g64[fin] - w64[fin])
    scale = float(np.abs(w64[fin]).max(initial=0.0))
    max_abs = float(diff.max(initial=0.0))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    rtol, atol = TOLERANCES.get(dtype, TOLERANCES["f32"])
    return max_abs, max_rel, max_abs <= atol + rtol * scale


class GroupChecker:
    """Compares each fused group of `graph` on `backend` with its reference; built once per signature."""

    def __init__(self, graph: Graph, backend: Any):
        self.graph = graph
        self.backend = backend
        self.groups = fusion_groups(graph)
        self._exe: dict[int, Any] = {}  # group op id -> the backend's executable for that group
        self._ref: dict[int, Graph] = {}

    def run(self, inputs: list[Any]) -> list[GroupResult]:
        """Check every group on the operands it gets from `inputs`; raise CheckError at the first
        group that differs. Returns one result per group."""
        rec = _Recorder(self.graph)
        rec.run(*inputs)
        results = []
        for op in self.groups:
            args = rec.seen.get(id(op))
            if args is None:
                continue
            name = group_name(op)
            ref = self._ref.get(id(op))
            if ref is None:
                ref = self._ref[id(op)] = region_function(op)
            exe = self._exe.get(id(op))
            if exe is None:
                exe = self._exe[id(op)] = self.backend.compile(group_graph(op))
            want = interpret(ref, *args)
            got = exe(*args)
            worst = (0.0, 0.0)
            for i, (g, w) in enumerate(zip(got, want)):
                max_abs, max_rel, ok = compare(g, w, op.results[i].type.dtype.name)
                worst = (max(worst[0], max_abs), max(worst[1], max_rel))
                if not ok:
                    raise CheckError(
                        f"check: fused group @{name} (output #{i}, {op.results[i].type}) differs from its unfused "
                        f"reference: max abs error {max_abs:.3g}, max rel error {max_rel:.3g}"
                        f"{_where(op)}\n{ref}", name, i, max_abs, max_rel)
            log.debug("@%s ok: max abs %.3g, max rel %.3g", name, *worst)
            results.append(GroupResult(name, worst[0], worst[1], True))
        return results


def _where(op: Op) -> str:
    return f" (from {op.loc})" if op.loc else ""
