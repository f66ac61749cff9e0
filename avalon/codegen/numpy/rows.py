"""Row-parallel runs: consecutive elementwise ops of a fused group split by rows across threads.

numpy runs each ufunc on one core, and most of a small model's step outside its matmuls is
elementwise passes over (batch, features) arrays. Elementwise ops are row-independent, so a run of
them can run as one nested function over rows [lo, hi) in each of `kernels.row_threads()` threads
(numpy releases the GIL inside its loops); results are bit for bit the sequential ones.

A run is the longest stretch of a group's ops that are elementwise with an emitter (splat and
broadcast operands emit nothing and join it) and share one result shape. It is split only when
the work is worth a thread hand-off (`MIN_WORK` element passes) and the rows are provably disjoint
memory: every array the run names is either sliced by rows (its leading dimension is the run's)
or only read whole, and names sharing memory (a scratch slot reused for another value, a planned
buffer lent as scratch, a view and its source) must all be sliced with the same row size in bytes,
so that no thread's rows overlap another's. Anything else leaves the run sequential.
"""
from __future__ import annotations

import keyword
import math
import re

from avalon.ir import Op

from .generator import Generator

MIN_WORK = 1 << 18
"""Element passes (elements x lines) below which a run stays sequential: a thread hand-off costs
~10-20 us, about one pass over 32k floats."""

_NAME = re.compile(r"(?<![\w.])([A-Za-z_]\w*)")
_STRING = re.compile(r"'[^']*'|\"[^\"]*\"")
_KNOWN = {"np", "K", "lo", "hi", "out", "where", "axis", "keepdims", "casting", "dtype"}


def rows_shape(gen: Generator, op: Op) -> tuple[int, ...] | None:
    """The result shape when `op` can be part of a row-parallel run, else None."""
    from .ops import EMITTERS
    if op.regions or len(op.results) != 1 or not op.has_trait("elementwise"):
        return None
    em = EMITTERS.get(op.name)
    shape = tuple(op.results[0].type.shape)
    if em is None or not em.accepts(op) or len(shape) < 1 or shape[0] < 2:
        return None
    return shape


def transparent(op: Op) -> bool:
    """Ops that emit no line inside a group (splats, broadcasts): they neither open nor close a run."""
    return op.name in ("constant", "broadcast") and not op.regions


class RowRuns:
    """Tracks the open run while a group is emitted; `close` rewrites its lines when it may split."""

    def __init__(self, gen: Generator):
        self.gen = gen
        self.shape: tuple[int, ...] | None = None

    def before(self, op: Op) -> None:
        if self.gen.threads < 2 or transparent(op):
            return
        shape = rows_shape(self.gen, op)
        if self.shape is not None and shape != self.shape:
            self.close()
        if shape is not None and self.shape is None:
            self.shape = shape
            self.gen.run_start = len(self.gen.lines)

    def close(self) -> None:
        gen, shape, start = self.gen, self.shape, self.gen.run_start
        self.shape, gen.run_start = None, None
        gen.run_freed.clear()
        if shape is None or start is None:
            return
        lines = gen.lines[start:]
        if len(lines) < 1 or math.prod(shape) * len(lines) < MIN_WORK:
            return
        sliced = _sliceable(gen, lines, shape)
        if sliced is None:
            return
        fn = gen.fresh_name("_rows")
        body = [f"    def {fn}(lo, hi):"]
        if sliced:
            names = sorted(sliced)
            body.append("        " + ", ".join(f"{n}_r" for n in names) + " = "
                        + ", ".join(f"{n}[lo:hi]" for n in names)
                        + ("," if len(names) == 1 else ""))
            pattern = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, names)) + r")(?!\w)")
            lines = [pattern.sub(r"\1_r", ln) for ln in lines]
        body += ["    " + ln for ln in lines]
        body.append(f"    K.rows({fn}, {shape[0]})")
        gen.lines[start:] = body


def _sliceable(gen: Generator, lines: list[str], shape: tuple[int, ...]) -> set[str] | None:
    """The names to slice by rows, or None when the run's rows may overlap (see the module docstring)."""
    groups: dict[tuple, list[tuple[str, bool, bool, int]]] = {}
    for ln in lines:
        for name in _NAME.findall(_STRING.sub("", ln)):
            if name in _KNOWN or keyword.iskeyword(name):
                continue
            st = gen.storage(name)
            if st is None:
                if name in gen.consts:  # scalars, attribute dicts
                    continue
                return None  # a name we cannot place: stay sequential
            by_rows = len(st.shape) == len(shape) and st.shape[0] == shape[0]  # else it broadcasts whole
            groups.setdefault(st.key, []).append((name, by_rows, st.rows, st.row_bytes))
    sliced: set[str] = set()
    for members in groups.values():
        names = {m[0] for m in members}
        if len(names) == 1:  # one name for this memory: its rows are disjoint elements, whatever its strides
            if members[0][1]:
                sliced |= names
        elif all(m[1] and m[2] for m in members) and len({m[3] for m in members}) == 1:
            sliced |= names  # shared memory, all sliced with one row size: the same bytes per row range
        elif any(m[1] for m in members):
            return None  # some rows of this memory would be written while another thread reads them
    return sliced
