"""The SSA data structures: Value, Op, Block, Graph.

Values keep their uses (an insertion-ordered dict of `(op, operand index)`, so dropping one is O(1)
however many there are) so a rewrite can `replace_all_uses_with`. A Block holds ops in order and
ends in a terminator op (`return` at the top level, `yield` inside regions) that is kept apart
from `block.ops` so passes iterate real work only. A Graph is a named top-level Block.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .types import TensorType


class LiteralArray(np.ndarray):
    """A dense constant's value that is literal data of the traced program (a tensor made from Python
    numbers, `torch.tensor([-1])`), not an array captured from outside it: `av.compile` keeps graphs
    holding these, where a captured array makes it trace again on every call. Otherwise an ndarray."""


@dataclass(frozen=True)
class Location:
    """Where an op came from in the user's source."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class Value:
    """An SSA value: a block argument or an op result. Hashes by identity."""

    __slots__ = ("type", "name", "owner", "index", "uses", "__weakref__")

    def __init__(self, type: TensorType, owner: Op | Block | None = None, index: int = 0,
                 name: str | None = None):
        self.type = type
        self.name = name  # a hint kept for block arguments (graph inputs); results print numbered
        self.owner = owner
        self.index = index
        self.uses: dict[tuple[Op, int], None] = {}  # iterates, tests `in` and counts like a list

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self):
        return self.type.dtype

    @property
    def op(self) -> Op | None:
        """The op defining this value, or None for a block argument."""
        return self.owner if isinstance(self.owner, Op) else None

    @property
    def users(self) -> list[Op]:
        seen: dict[int, Op] = {}
        for op, _ in self.uses:
            seen.setdefault(id(op), op)
        return list(seen.values())

    def replace_all_uses_with(self, new: Value) -> None:
        if new is self:
            return
        for op, i in list(self.uses):
            op.set_operand(i, new)

    def __repr__(self) -> str:
        who = self.name or (self.owner.name if isinstance(self.owner, Op) else "arg")
        return f"<Value {who}#{self.index}: {self.type}>"


class Op:
    """One operation: `name`, `operands`, `results`, `attrs`, `regions`, and where it came from."""

    def __init__(self, name: str, operands: list[Value], result_types: list[TensorType],
                 attrs: dict[str, Any] | None = None, regions: list[Block] | None = None,
                 loc: Location | None = None):
        self.name = name
        self.operands: list[Value] = []
        self.results = [Value(t, self, i) for i, t in enumerate(result_types)]
        self.attrs = dict(attrs or {})
        self.regions: list[Block] = []
        self.loc = loc
        self.parent: Block | None = None
        self._prev: Op | None = None  # neighbours in `parent`'s op list (Block keeps them)
        self._next: Op | None = None
        for v in operands:
            self._add_operand(v)
        for r in regions or []:
            self.add_region(r)

    def _add_operand(self, v: Value) -> None:
        if not isinstance(v, Value):
            raise TypeError(f"operand of '{self.name}' must be a Value, got {type(v).__name__}")
        v.uses[self, len(self.operands)] = None
        self.operands.append(v)

    def set_operand(self, i: int, v: Value) -> None:
        old = self.operands[i]
        del old.uses[self, i]
        self.operands[i] = v
        v.uses[self, i] = None

    def set_operands(self, values: list[Value]) -> None:
        self.drop_operands()
        for v in values:
            self._add_operand(v)

    def drop_operands(self) -> None:
        for i, v in enumerate(self.operands):
            del v.uses[self, i]
        self.operands = []

    def add_region(self, block: Block) -> None:
        block.parent_op = self
        self.regions.append(block)

    @property
    def prev(self) -> Op | None:
        """The op before this one in its block (None for the first)."""
        return self._prev

    @property
    def next(self) -> Op | None:
        """The op after this one in its block (None for the last)."""
        return self._next

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise ValueError(f"'{self.name}' has {len(self.results)} results, not one")
        return self.results[0]

    @property
    def opdef(self):
        from .registry import lookup
        return lookup(self.name)

    def has_trait(self, trait: str) -> bool:
        from .registry import OPS
        d = OPS.get(self.name)
        return d is not None and trait in d.traits

    def erase(self) -> None:
        """Remove this op from its block; its results must be unused."""
        for r in self.results:
            if r.uses:
                raise ValueError(f"cannot erase '{self.name}': result #{r.index} still has {len(r.uses)} use(s)")
        self.drop_operands()
        for region in self.regions:
            region.drop_all()
        if self.parent is not None:
            self.parent.remove(self)

    def walk(self) -> Iterator[Op]:
        """This op, then every op nested in its regions, in order."""
        yield self
        for region in self.regions:
            yield from region.walk()

    def __repr__(self) -> str:
        return f"<Op {self.name} -> {', '.join(str(r.type) for r in self.results)}>"


class OpList(list):
    """A snapshot of a block's ops that refuses edits: `block.ops` is rebuilt from the block's links,
    so a change to the list would silently not reach the block. Edit through Block's methods."""

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any):
        raise TypeError("block.ops is read-only: edit the block with append, insert_before, insert_after, "
                        "remove (op.erase) or reorder")

    append = extend = insert = remove = pop = clear = sort = reverse = _read_only
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only


class Block:
    """Arguments, ops in order, and a terminator whose operands are the block's results.

    The ops form a doubly linked list (`op.prev`, `op.next`), so inserting next to an op and removing
    one cost O(1) however long the block; `block.ops` is a read-only list built from the links on the
    first read after a change, for readers that iterate, index or slice.
    """

    def __init__(self, arg_types: list[TensorType] = (), arg_names: list[str | None] | None = None):
        names = list(arg_names) if arg_names is not None else [None] * len(arg_types)
        self.args = [Value(t, self, i, n) for i, (t, n) in enumerate(zip(arg_types, names))]
        self._first: Op | None = None
        self._last: Op | None = None
        self._ops: OpList | None = OpList()  # None after a change, until `ops` is read again
        self.terminator: Op | None = None
        self.parent_op: Op | None = None

    @property
    def ops(self) -> OpList:
        if self._ops is None:
            out, op = [], self._first
            while op is not None:
                out.append(op)
                op = op._next
            self._ops = OpList(out)
        return self._ops

    @property
    def first(self) -> Op | None:
        return self._first

    @property
    def last(self) -> Op | None:
        return self._last

    def add_arg(self, type: TensorType, name: str | None = None) -> Value:
        v = Value(type, self, len(self.args), name)
        self.args.append(v)
        return v

    def _link(self, op: Op, after: Op | None) -> Op:
        """Put `op` (in no block) right after `after` (None: at the front)."""
        if op.parent is not None:
            raise ValueError(f"'{op.name}' is already in a block; remove it first")
        nxt = self._first if after is None else after._next
        op._prev, op._next, op.parent = after, nxt, self
        if after is None:
            self._first = op
        else:
            after._next = op
        if nxt is None:
            self._last = op
        else:
            nxt._prev = op
        self._ops = None
        return op

    def _check_member(self, op: Op) -> None:
        if op.parent is not self:
            raise ValueError(f"'{op.name}' is not in this block")

    def append(self, op: Op) -> Op:
        return self._link(op, self._last)

    def insert(self, index: int, op: Op) -> Op:
        """Insert at a position (walks to it: prefer insert_before/insert_after next to an op)."""
        ops = self.ops
        index = max(0, min(len(ops), index + len(ops) if index < 0 else index))
        return self._link(op, ops[index - 1] if index else None)

    def insert_before(self, anchor: Op, op: Op) -> Op:
        self._check_member(anchor)
        return self._link(op, anchor._prev)

    def insert_after(self, anchor: Op, op: Op) -> Op:
        self._check_member(anchor)
        return self._link(op, anchor)

    def remove(self, op: Op) -> None:
        """Unlink `op` (its operands and uses are left alone: see `Op.erase`)."""
        self._check_member(op)
        if op._prev is None:
            self._first = op._next
        else:
            op._prev._next = op._next
        if op._next is None:
            self._last = op._prev
        else:
            op._next._prev = op._prev
        op._prev = op._next = op.parent = None
        self._ops = None

    def reorder(self, ops: list[Op]) -> None:
        """Make `ops` the block's ops, in this order, in O(n): for a pass that computes a whole new
        schedule (fusion's). Ops of the block left out are unlinked like `remove`; new ones join."""
        ops = list(ops)
        for op in ops:
            if op.parent is not None and op.parent is not self:
                raise ValueError(f"'{op.name}' is in another block; remove it first")
        if len(set(map(id, ops))) != len(ops):
            raise ValueError("reorder() got an op twice")
        op = self._first
        while op is not None:
            nxt = op._next
            op._prev = op._next = None
            if op.parent is self:
                op.parent = None
            op = nxt
        prev = None
        for op in ops:
            op._prev, op.parent = prev, self
            if prev is not None:
                prev._next = op
            prev = op
        self._first = ops[0] if ops else None
        self._last = prev
        self._ops = OpList(ops)

    def set_terminator(self, name: str, values: list[Value]) -> Op:
        if self.terminator is not None:
            self.terminator.drop_operands()
        t = Op(name, list(values), [])
        t.parent = self
        self.terminator = t
        return t

    @property
    def results(self) -> list[Value]:
        return list(self.terminator.operands) if self.terminator else []

    def drop_all(self) -> None:
        if self.terminator is not None:
            self.terminator.drop_operands()
        for op in reversed(self.ops):
            op.drop_operands()
            for r in op.regions:
                r.drop_all()

    def walk(self) -> Iterator[Op]:
        for op in list(self.ops):
            yield from op.walk()

    def holder(self, op: Op) -> Op | None:
        """The op of this block that is or contains `op` (the block's terminator included; None when
        `op` is outside this block): where a use inside a nested region happens, as this block sees it."""
        while op.parent is not self:
            parent = op.parent.parent_op if op.parent is not None else None
            if parent is None:
                return None
            op = parent
        return op


ANALYSES: dict[str, str] = {
    "memory_plan": "where each top-level intermediate lives (`avalon.passes.memory_plan.MemoryPlan`)",
}
"""Every analysis a graph may carry (`Graph.attach`), with what it holds: a side table that passes
and backends hand each other is declared here rather than set as an ad-hoc attribute."""


class Graph:
    """A function: named inputs, a body of ops, and outputs. `str(graph)` is its text IR."""

    def __init__(self, name: str = "forward", body: Block | None = None):
        self.name = name
        self.body = body if body is not None else Block()
        if self.body.terminator is None:
            self.body.set_terminator("return", [])
        self._analyses: dict[str, tuple[Any, tuple[int, ...]]] = {}

    def _fingerprint(self) -> tuple[int, ...]:
        return tuple(id(op) for op in self.body.ops)

    def attach(self, name: str, value: Any) -> None:
        """Keep analysis `name` (declared in `ANALYSES`) with the graph, valid while its top-level
        ops stay the same ones (any rewrite that replaces an op makes it stale)."""
        _declared(name)
        self._analyses[name] = (value, self._fingerprint())

    def analysis(self, name: str) -> Any | None:
        """Analysis `name` if one was attached and is still current, else None."""
        _declared(name)
        got = self.__dict__.get("_analyses", {}).get(name)
        return got[0] if got is not None and got[1] == self._fingerprint() else None

    @property
    def inputs(self) -> list[Value]:
        return self.body.args

    @property
    def outputs(self) -> list[Value]:
        return self.body.results

    @property
    def ops(self) -> list[Op]:
        return self.body.ops

    def add_input(self, type: TensorType, name: str | None = None) -> Value:
        return self.body.add_arg(type, name)

    def set_outputs(self, values: list[Value]) -> None:
        self.body.set_terminator("return", values)

    def walk(self) -> Iterator[Op]:
        """Every op, nested region ops included, in order."""
        return self.body.walk()

    def clone(self) -> Graph:
        from .clone import clone_graph
        return clone_graph(self)

    def __str__(self) -> str:
        from .printer import print_graph
        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.inputs)} inputs, {len(self.ops)} ops>"


def _declared(name: str) -> None:
    if name not in ANALYSES:
        raise KeyError(f"unknown graph analysis '{name}'; declare it in avalon.ir.core.ANALYSES "
                       f"(known: {', '.join(sorted(ANALYSES))})")
