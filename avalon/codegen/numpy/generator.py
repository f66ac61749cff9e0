"""Generate one straight-line numpy function per compiled graph.

The interpreter (`avalon.ir.interpret`) dispatches every op, fused groups' inner ops included, and
allocates a fresh array for each; on small models that overhead is most of a training step. The
generator walks the final graph once and writes Python source in which:

* every planned intermediate (`graph.analysis("memory_plan")`) lives in a view of a buffer the
  executable allocated once, and ops write into it through `out=`;
* a fused group's ops are inlined; values that stay inside the group use scratch slots (also
  allocated once, shared by all groups) and an elementwise op overwrites an operand that dies there,
  so a chain like conv -> add -> relu needs no temporary beyond its outputs;
* splat constants are numpy scalars and broadcasts stay un-materialized while only elementwise ops
  (numpy broadcasting is the IR's right-aligned broadcast) read them;
* ops with a fast formulation (`avalon.codegen.numpy.ops.EMITTERS`) get it; any other op calls its
  reference rule through `avalon.ir.evaluate`, so every op in the registry works.

The generated function is not reentrant (its buffers are shared between calls); outputs are fresh
arrays (or copies) that the next call never touches, except donated ones (`donate`), written into
the input arrays the caller gave for them.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avalon.ir import Graph, Value, evaluate
from avalon.ir.types import TensorType
from avalon.passes.memory_plan import BufferOccupancy, MemoryPlan
from avalon.passes.target import Target

from . import kernels


@dataclass
class Ref:
    """How generated code reaches one IR value: `expr` names an array of the value's type, or (kind
    "scalar") a numpy scalar of its dtype, or (kind "bcast") an array that numpy broadcasting
    stretches to the value's shape. `slot`: the scratch slot holding its storage (overwritable once
    the value dies); `fresh`: a new array nothing else holds (an output can be returned as is)."""

    expr: str
    type: TensorType
    kind: str = "array"
    slot: int | None = None
    fresh: bool = False
    source: TensorType | None = None  # kind "bcast": the type of the array `expr` names

    @property
    def lazy(self) -> bool:
        return self.kind != "array"


@dataclass
class View:
    """A global of the generated module: a typed view of buffer or scratch slot `index`."""

    pool: str  # "buffer" | "slot"
    index: int
    type: TensorType


@dataclass
class Emission:
    """What the generator made: the source, its globals (arrays are created by `link`)."""

    name: str
    source: str
    consts: dict[str, Any]
    views: dict[str, View]
    buffers: list[int]
    slots: list[int]
    stats: dict[str, int] = field(default_factory=dict)
    donated: list[int] = field(default_factory=list)  # outputs written into their donated inputs
    native: list[tuple[str, int | str]] = field(default_factory=list)  # C functions (`native.bind`'s arities)
    op_of: dict[str, Any] = field(default_factory=dict)  # generated variable -> the IR op it holds the result of

    def op_at(self, lineno: int) -> Any:
        """The IR op a line of the generated function computes (for errors raised while it runs):
        the first generated variable on the line whose op is known."""
        lines = self.source.splitlines()
        if not 0 < lineno <= len(lines):
            return None
        for name in re.findall(r"\b[A-Za-z_]\w*\b", lines[lineno - 1]):
            if name in self.op_of:
                return self.op_of[name]
        return None

    def link(self) -> Callable[..., tuple[Any, ...]]:
        """Allocate the buffers and slots once and compile the source into its function."""
        pools = {"buffer": [np.empty(max(n, 1), np.uint8) for n in self.buffers],
                 "slot": [np.empty(max(n, 1), np.uint8) for n in self.slots]}
        ns: dict[str, Any] = {"np": np, "K": kernels, "_ev": evaluate, **self.consts}
        if self.native:
            from . import native
            native.bind(native.build([src for src, _ in self.native]), [n for _, n in self.native], ns)
            ns["N"] = native
        for name, v in self.views.items():
            raw = pools[v.pool][v.index]
            ns[name] = raw[: host_bytes(v.type)].view(v.type.dtype.np).reshape(v.type.shape)
            ns[name + "_p"] = raw.ctypes.data  # for compiled calls (`native.address`)
        code = compile(self.source, f"<avalon numpy @{self.name}>", "exec")
        exec(code, ns)
        return ns[self.name]

    @property
    def resident_bytes(self) -> int:
        """Bytes the executable holds between calls (planned buffers and scratch slots)."""
        return sum(self.buffers) + sum(self.slots)


BORROW_MIN_BYTES = 1 << 16
"""Scratch of at least this size looks for an idle planned buffer first (smaller scratch is not worth
the search)."""


def _ident(name: str) -> str:
    s = "".join(c if c.isalnum() else "_" for c in name)
    return s if s and not s[0].isdigit() else "f_" + s


class Generator:
    """Walks a graph and writes its function; op emitters call back into `out`, `scratch`,
    `const`, `array` and `line` (see `avalon.codegen.numpy.ops`)."""

    def __init__(self, graph: Graph, plan: MemoryPlan | None, target: Target, donated: dict[int, int] | None = None,
                 native: bool = False):
        self.graph, self.plan, self.target = graph, plan, target
        self.native_runs = native  # compile elementwise runs of groups to C (`native`)
        self.native: list[tuple[str, int | str]] = []  # their C functions (source, arity: see `native.bind`)
        self.native_named: dict[str, str] = {}  # a helper's source (its name a placeholder) -> its function
        self.run_start: int | None = None  # first line of the open native run (allocations go before it)
        self.run_freed: list[int] = []  # slots freed while a run is open: reused only once it is closed
        self.donated = dict(donated or {})
        self.donation: dict[Value, int] = {}  # output value -> the input whose array it is written into
        self.input_names: set[str] = set()  # the function's parameters (a0, a1, ...)
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.views: dict[str, View] = {}
        self.strided: set[str] = set()  # numpy views that may not be row-major (transposes, their reshapes)
        self.slots: list[int] = []
        self.free_slots: list[int] = []
        self.refs: dict[int, int] = {}  # slot -> live values holding it
        self.env: dict[Value, Ref] = {}
        self.count = 0
        self.stats = {"fast": 0, "fallback": 0}
        self.op_scratch: list[int] = []  # slots to release after the current op
        self.buffers = list(plan.buffers) if plan is not None else []  # bf16 values need 4 bytes each here
        self.top = -1  # index of the top-level op being emitted (the plan's op index)
        self.borrowed: set[int] = set()  # planned buffers lent to scratch during the current top-level op
        self._occupancy: BufferOccupancy | None = None

    # -- names, lines, globals ----------------------------------------------------------------
    def fresh_name(self, prefix: str = "v") -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def line(self, text: str) -> None:
        self.lines.append("    " + text)

    def const(self, value: Any, prefix: str = "c") -> str:
        """A global holding `value` (attrs, types, constant arrays)."""
        name = self.fresh_name(prefix)
        self.consts[name] = value
        return name

    # -- storage ----------------------------------------------------------------------------
    def _slot(self, nbytes: int) -> int:
        best = None
        for s in self.free_slots:
            if self.slots[s] >= nbytes and (best is None or self.slots[s] < self.slots[best]):
                best = s
        if best is None and self.free_slots:  # grow the largest free slot rather than add one
            best = max(self.free_slots, key=lambda s: self.slots[s])
            self.slots[best] = nbytes
        if best is None:
            self.slots.append(nbytes)
            return len(self.slots) - 1
        self.free_slots.remove(best)
        return best

    def _idle_buffer(self, nbytes: int) -> int | None:
        """The smallest planned buffer of at least `nbytes` that holds no value while the current
        top-level op runs (its values' lifetimes all end before or start after it), not yet lent."""
        plan = self.plan
        if plan is None or self.top < 0 or nbytes < BORROW_MIN_BYTES:
            return None
        if self._occupancy is None:
            self._occupancy = occ = BufferOccupancy(len(plan.ops) + 1)
            for v, (s0, e0) in plan.lifetimes.items():
                occ.add(s0, e0, 1 << plan.assignment[v])
        busy = self._occupancy.busy(self.top, self.top)
        best = None
        for b, size in enumerate(self.buffers):
            if size >= nbytes and not busy >> b & 1 and b not in self.borrowed and (
                    best is None or size < self.buffers[best]):
                best = b
        return best

    def scratch(self, shape: tuple[int, ...], dtype: Any, op_scoped: bool = True) -> tuple[str, int]:
        """A view of a scratch slot for `shape`/`dtype`. Op-scoped ones are released after the
        current op (workspaces); others when the value holding them dies (`hold`/`drop`). A large
        one goes into a planned buffer idle during the current top-level op when there is one (slot
        number -1 - buffer, lent until that op ends), so scratch adds no memory beyond the plan."""
        from avalon.ir import dtypes as dt
        d = dtype if isinstance(dtype, dt.DType) else dt.dtype(np.dtype(dtype))
        t = TensorType(tuple(shape), d)
        b = self._idle_buffer(host_bytes(t))
        if b is not None:
            self.borrowed.add(b)
            slot = -1 - b
            name = f"b{b}_{self.fresh_name('')}"
            self.views[name] = View("buffer", b, t)
        else:
            slot = self._slot(max(host_bytes(t), 1))
            name = f"s{slot}_{self.fresh_name('')}"
            self.views[name] = View("slot", slot, t)
        if op_scoped:
            self.op_scratch.append(slot)
        else:
            self.refs[slot] = 0
        return name, slot

    def hold(self, ref: Ref) -> None:
        if ref.slot is not None:
            self.refs[ref.slot] = self.refs.get(ref.slot, 0) + 1

    def drop(self, ref: Ref) -> None:
        s = ref.slot
        if s is None:
            return
        self.refs[s] -= 1
        if self.refs[s] == 0:
            del self.refs[s]
            if s >= 0:  # a lent buffer stays lent until its top-level op ends
                self._free(s)

    def end_op(self) -> None:
        for s in self.op_scratch:
            if s >= 0:
                self._free(s)
        self.op_scratch = []

    def _free(self, s: int) -> None:
        """Make slot `s` reusable; while a native run is open, only once it closes: its ops become one
        loop, which reads and writes all of their storage in each iteration."""
        (self.free_slots if self.run_start is None else self.run_freed).append(s)

    def close_run(self) -> None:
        self.run_start = None
        self.free_slots += self.run_freed
        self.run_freed = []

    def is_planned(self, v: Value) -> bool:
        plan = self.plan
        return plan is not None and v in plan.assignment and v.type.layout is None

    def planned(self, v: Value) -> str | None:
        """The buffer view of a top-level value the memory plan placed, else None."""
        plan = self.plan
        if plan is None or v not in plan.assignment or v.type.layout is not None:
            return None
        b = plan.assignment[v]
        name = f"b{b}_{self.fresh_name('')}"
        self.views[name] = View("buffer", b, v.type)
        self.buffers[b] = max(self.buffers[b], host_bytes(v.type))
        return name

    def donated_store(self, v: Value) -> Ref | None:
        """The donated input array a top-level output is written into (see `donate`), else None."""
        j = self.donation.get(v)
        return None if j is None else Ref(f"a{j}", v.type, fresh=True)

    def new_array(self, t: TensorType) -> str:
        """A fresh array of type `t`, allocated where this line runs (before an open native run,
        whose lines may become one call)."""
        name = self.fresh_name()
        text = f"    {name} = np.empty({tuple(t.shape)!r}, np.{t.dtype.np.name})"
        if self.run_start is None:
            self.lines.append(text)
        else:
            self.lines.insert(self.run_start, text)
            self.run_start += 1
        return name

    def array(self, ref: Ref) -> str:
        """An expression for `ref` as a real array of its full shape (lazy values materialized into
        an op-scoped scratch slot)."""
        if not ref.lazy:
            return ref.expr
        name, _ = self.scratch(ref.type.shape, ref.type.dtype.np)
        self.line(f"np.copyto({name}, {ref.expr})")
        return name

    def owned_array(self, ref: Ref) -> str:
        """`ref` as an array no scratch reuse can change (for the reference rules, which may return
        views of their operands)."""
        if not ref.lazy:
            return ref.expr
        return f"np.array(np.broadcast_to({ref.expr}, {tuple(ref.type.shape)!r}))"

    # -- the walk -----------------------------------------------------------------------------
    def generate(self) -> Emission:
        from .ops import emit_op
        from .region import emit_region
        g = self.graph
        fname = _ident(g.name)
        args = []
        for i, v in enumerate(g.inputs):
            args.append(f"a{i}")
            self.env[v] = Ref(f"a{i}", v.type)
        self.input_names = set(args)
        current = self.plan is not None and self.plan.is_current(g)
        if self.donated:
            from .donate import donations
            self.donation = donations(g, self.donated)
            self.stats["donated"] = len(self.donation)
        for k, op in enumerate(g.ops):
            self.top = k if current else -1
            if op.regions:
                emit_region(self, op)
            else:
                emit_op(self, op, top=True)
            self.end_op()
            self.borrowed.clear()
        self.top = -1
        outs: list[str] = []
        seen: set[str] = set()
        for v in g.outputs:
            ref = self.env[v]
            if ref.lazy:
                name = self.new_array(v.type)
                self.line(f"np.copyto({name}, {ref.expr})")
            elif not ref.fresh or ref.expr in seen:
                name = self.fresh_name()
                self.line(f"{name} = {ref.expr}.copy()")
            else:
                name = ref.expr
            seen.add(name)
            outs.append(name)
        self.line("return (" + "".join(o + ", " for o in outs) + ")")
        head = f"def {fname}({', '.join(args)}):"
        src = "\n".join([head, *self.lines]) + "\n"
        donated = [o for o, v in enumerate(g.outputs) if v in self.donation]
        self.stats["native"] = len(self.native)
        if self.native:  # the C functions, shown after the function that calls them
            src += "\n# compiled runs (avalon.codegen.numpy.native):\n" + "".join(
                "# " + line + "\n" for c, _ in self.native for line in c.splitlines())
        op_of = {ref.expr: v.op for v, ref in self.env.items()
                 if v.op is not None and v.op.name != "fusion" and ref.expr.isidentifier()}
        return Emission(fname, src, self.consts, self.views, self.buffers, list(self.slots), dict(self.stats), donated,
                        list(self.native), op_of)


def generate(graph: Graph, plan: MemoryPlan | None, target: Target, donated: dict[int, int] | None = None,
             native: bool = False) -> Emission:
    """The straight-line numpy function of `graph` (see the module docstring); `donated` maps output
    indices to inputs whose arrays the outputs may be written into (`avalon.codegen.numpy.donate`);
    `native` compiles groups' elementwise runs to C (`avalon.codegen.numpy.native`)."""
    return Generator(graph, plan, target, donated, native).generate()


def host_bytes(t: TensorType) -> int:
    """Bytes of `t` as a numpy array (bf16 is stored as float32 here, unlike `TensorType.nbytes`)."""
    return math.prod(t.shape) * t.dtype.np.itemsize
