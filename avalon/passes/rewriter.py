"""A small pattern rewriter (after MLIR's PatternRewriter / xDSL's pattern_rewriter) that keeps passes small.

Three pieces:
- `Rewriter`: the only way patterns edit IR (`replace_op`, `erase_op`, `build`, `constant`, insertion
  points). It tells the driver what changed, so the driver revisits exactly the affected ops.
- Patterns: subclass `RewritePattern` (match by op name in `ops` or by trait in `traits`), decorate a
  function `(op, rw) -> bool` with `@pattern("transpose")`, or write a declarative `Rule`:

      x = Var("x")
      Rule(P.mul(x, 1.0), x)            # x * 1 -> x   (commutative ops match both operand orders)
      Rule(P.neg(P.neg(x)), x)          # -(-x) -> x
      Rule(P.mul(x, P.sigmoid(x)), P.silu(x))

- `apply_patterns(graph, patterns)`: a greedy worklist driver that applies patterns (and erases dead
  pure ops) until nothing changes, with caps on sweeps and rewrites so a ping-pong rule set terminates.

Region ops (fusion groups) are walked like any other: their bodies are rewritten in place, and new ops
are inserted in the block of the op being rewritten.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from avalon.channels import get_logger
from avalon.ir import Block, Graph, Op, TensorType, Value, make_op
from avalon.ir.dtypes import DType
from avalon.ir.dtypes import dtype as to_dtype

log = get_logger("rewrite")

# ---------------------------------------------------------------------------------------------------
# constants


def constant_value(v: Value) -> np.ndarray | None:
    """The array a `constant` op defines (a read-only broadcast view for a splat), or None."""
    op = v.op
    if op is None or op.name != "constant":
        return None
    t = v.type
    arr = np.asarray(op.attrs["value"], dtype=t.dtype.np)
    if arr.size == 1:
        return np.broadcast_to(arr.reshape(()), t.shape)
    return arr.reshape(t.shape)


def splat_value(v: Value) -> int | float | bool | None:
    """The one element every position of a splat `constant` holds, or None (not a constant, or dense)."""
    op = v.op
    if op is None or op.name != "constant":
        return None
    arr = np.asarray(op.attrs["value"], dtype=v.type.dtype.np)
    if arr.size == 1:
        return arr.reshape(()).item()
    flat = np.ascontiguousarray(arr).reshape(-1)
    if flat.size and flat.tobytes() == flat[:1].tobytes() * flat.size:
        return flat[0].item()
    return None


def as_splat(arr: np.ndarray) -> int | float | bool | None:
    """`arr`'s single value when all its elements are bitwise equal (so -0.0 and 0.0 differ), else None."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    if flat.size == 0:
        return None
    if flat.size == 1 or flat.tobytes() == flat[:1].tobytes() * flat.size:
        return flat[0].item()
    return None


def producer(v: Value, *names: str) -> Op | None:
    """The op defining `v` if it is one of `names` (any op when none are given); None otherwise."""
    op = v.op
    if op is None or (names and op.name not in names):
        return None
    return op


def is_trivially_dead(op: Op) -> bool:
    """A pure op none of whose results is used: removing it cannot change what the graph computes."""
    return op.has_trait("pure") and all(not r.uses for r in op.results)


def walk_blocks(root: Graph | Block | Op) -> Iterator[Block]:
    """Every block under `root`: the graph body first, then each region body, outermost first."""
    blocks = [root.body] if isinstance(root, Graph) else [root] if isinstance(root, Block) else list(root.regions)
    for b in blocks:
        yield b
        for op in list(b.ops):
            for region in op.regions:
                yield from walk_blocks(region)


# ---------------------------------------------------------------------------------------------------
# the rewriter


class Listener:
    """Hooks a driver uses to keep its worklist right; the defaults do nothing."""

    def created(self, op: Op) -> None: ...
    def erased(self, op: Op) -> None: ...
    def touched(self, op: Op) -> None: ...


class Rewriter:
    """Edits the IR on behalf of patterns, at an insertion point, reporting each change to a listener.

    New ops are inserted before the insertion point (by default the op being rewritten) and inherit
    its source location, so rewritten code still points at the user's line.
    """

    def __init__(self, listener: Listener | None = None):
        self.listener = listener or Listener()
        self.block: Block | None = None
        self.before: Op | None = None
        self.loc = None
        self.changed = False
        self.recording: list[Op] | None = None  # ops inserted while a Rule builds its right side

    # -- insertion point
    def set_insertion_point(self, *, before: Op | None = None, after: Op | None = None,
                            end_of: Block | None = None) -> None:
        """Insert new ops before an op, right after one, or at the end of a block."""
        if before is not None:
            self.block, self.before, self.loc = before.parent, before, before.loc
        elif after is not None:
            self.block, self.before, self.loc = after.parent, after.next, after.loc
        elif end_of is not None:
            self.block, self.before = end_of, None
        else:
            raise ValueError("set_insertion_point needs before=, after= or end_of=")

    def insert(self, op: Op) -> Op:
        if self.block is None:
            raise ValueError("the rewriter has no insertion point")
        if self.before is not None:
            self.block.insert_before(self.before, op)
        else:
            self.block.append(op)
        if op.loc is None:
            op.loc = self.loc
        self.changed = True
        if self.recording is not None:
            self.recording.append(op)
        self.listener.created(op)
        return op

    def insert_before(self, anchor: Op, op: Op) -> Op:
        self.set_insertion_point(before=anchor)
        return self.insert(op)

    def insert_after(self, anchor: Op, op: Op) -> Op:
        self.set_insertion_point(after=anchor)
        return self.insert(op)

    def build_op(self, name: str, /, *operands: Value, result_types: list[TensorType] | None = None,
                 **attrs: Any) -> Op:
        """Make `name` (attributes normalized, types inferred) and insert it at the insertion point."""
        return self.insert(make_op(name, list(operands), attrs, result_types=result_types))

    def build(self, name: str, /, *operands: Value, **attrs: Any) -> Value:
        """`build_op` for a single-result op; returns its result."""
        return self.build_op(name, *operands, **attrs).result

    def constant(self, value: Any, type: TensorType) -> Value:
        """A `constant` of `type`: a splat when `value` is a scalar or all-equal array, else dense."""
        arr = np.asarray(value, dtype=type.dtype.np)
        s = as_splat(arr) if arr.size else None
        if arr.size != 1 and s is None and arr.size != math.prod(type.shape):
            raise ValueError(f"constant of {arr.size} values for {type}")
        v = s if s is not None else arr.reshape(-1)
        attrs = {"value": v, "shape": list(type.shape), "dtype": type.dtype}
        return self.build_op("constant", result_types=[type], **attrs).result

    # -- edits
    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Make every user of `old` use `new` instead (their shapes and dtypes must agree)."""
        if old is new:
            return
        _check_same(old, new)
        users = old.users
        old.replace_all_uses_with(new)
        self.changed = True
        for u in users:
            self.listener.touched(u)

    def replace_op(self, op: Op, new: Value | Op | Sequence[Value]) -> None:
        """Replace `op`'s results by `new` (values, or another op's results) everywhere, then erase `op`."""
        values = new.results if isinstance(new, Op) else [new] if isinstance(new, Value) else list(new)
        if len(values) != len(op.results):
            raise ValueError(f"replacing '{op.name}' ({len(op.results)} results) with {len(values)} value(s)")
        for r, v in zip(op.results, values):
            self.replace_all_uses(r, v)
        self.erase_op(op)

    def erase_op(self, op: Op) -> None:
        """Remove `op` (its results must be unused); the producers of its operands are revisited."""
        producers = [v.op for v in op.operands if v.op is not None]
        if op is self.before:  # keep the insertion point valid: new ops now go where `op` was
            self.before = op.next
        for nested in list(op.walk()):
            self.listener.erased(nested)
        op.erase()
        self.changed = True
        for p in producers:
            self.listener.touched(p)

    def set_operand(self, op: Op, i: int, v: Value) -> None:
        """Change one operand of `op` in place."""
        old = op.operands[i]
        op.set_operand(i, v)
        self.changed = True
        self.listener.touched(op)
        if old.op is not None:
            self.listener.touched(old.op)


def _check_same(old: Value, new: Value) -> None:
    if (old.type.shape, old.type.dtype) != (new.type.shape, new.type.dtype):
        raise ValueError(f"cannot replace a value of type {old.type} with one of type {new.type}")


# ---------------------------------------------------------------------------------------------------
# patterns


class RewritePattern:
    """Match one op and rewrite it through the rewriter. Return True when the IR changed.

    `ops` restricts the pattern to op names and `traits` to ops having all those traits (both empty:
    every op). Higher `benefit` patterns are tried first on an op.
    """

    ops: tuple[str, ...] = ()
    traits: tuple[str, ...] = ()
    benefit: int = 1

    @property
    def label(self) -> str:
        return type(self).__name__

    def applies_to(self, op: Op) -> bool:
        return (not self.ops or op.name in self.ops) and all(op.has_trait(t) for t in self.traits)

    def match_and_rewrite(self, op: Op, rw: Rewriter) -> bool:
        raise NotImplementedError


class FunctionPattern(RewritePattern):
    def __init__(self, fn: Callable[[Op, Rewriter], bool], ops: tuple[str, ...], traits: tuple[str, ...],
                 benefit: int):
        self.fn, self.ops, self.traits, self.benefit = fn, ops, traits, benefit

    @property
    def label(self) -> str:
        return self.fn.__name__

    def match_and_rewrite(self, op: Op, rw: Rewriter) -> bool:
        return bool(self.fn(op, rw))


def pattern(*ops: str, traits: Iterable[str] = (), benefit: int = 1):
    """Turn `fn(op, rw) -> bool` into a RewritePattern for ops named `ops` (and/or having `traits`)."""
    def deco(fn: Callable[[Op, Rewriter], bool]) -> FunctionPattern:
        return FunctionPattern(fn, tuple(ops), tuple(traits), benefit)
    return deco


# -- declarative rules

_ANY = object()


class Var:
    """A wildcard value; used twice in one pattern it must bind the same value both times."""

    def __init__(self, name: str, where: Callable[[Value], bool] | None = None):
        self.name, self.where = name, where

    def __repr__(self) -> str:
        return self.name


class Const:
    """A value defined by a `constant` op: `Const(1.0)` (every element equal to 1.0), `Const(name="c")`
    (any constant, bound to c), `Const(where=lambda a: (a > 0).all())` (a predicate on its array).
    On a rule's right side, `Const(0.0)` builds a splat of the rewritten op's result type."""

    def __init__(self, value: Any = _ANY, *, name: str | None = None,
                 where: Callable[[np.ndarray], bool] | None = None):
        self.value, self.name, self.where = value, name, where

    def matches(self, v: Value) -> bool:
        if self.value is not _ANY:
            s = splat_value(v)
            if s is None or s != self.value:
                return False
        if self.where is not None:
            arr = constant_value(v)
            return arr is not None and bool(self.where(arr))
        return v.op is not None and v.op.name == "constant"

    def __repr__(self) -> str:
        return self.name or ("const" if self.value is _ANY else repr(self.value))


class Pat:
    """An op pattern: `Pat("mul", x, 1.0)` or `P.mul(x, 1.0)`. Plain numbers become `Const`s;
    keyword arguments match attributes by value, or by predicate when callable."""

    def __init__(self, op: str, *args: Pat | Var | Const | int | float | bool, **attrs: Any):
        self.op = op
        self.args = tuple(a if isinstance(a, (Pat, Var, Const)) else Const(a) for a in args)
        self.attrs = attrs

    def __repr__(self) -> str:
        attrs = "".join(f", {k}={v!r}" for k, v in self.attrs.items())
        return f"{self.op}({', '.join(map(repr, self.args))}{attrs})"


class _OpNamespace:
    """`P.mul(x, 1)` is `Pat("mul", x, 1)`: rules read like the expressions they rewrite."""

    def __getattr__(self, name: str) -> Callable[..., Pat]:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **attrs: Pat(name, *args, **attrs)


P = _OpNamespace()


class Match(dict):
    """Bindings of a successful match: `m["x"]` is the value bound to `Var("x")`; `m.root` the matched op."""

    root: Op

    def const(self, name: str) -> np.ndarray | None:
        return constant_value(self[name])


def _attr_equal(actual: Any, expected: Any) -> bool:
    if callable(expected) and not isinstance(expected, DType):
        return bool(expected(actual))
    if isinstance(actual, DType):
        try:
            return actual == to_dtype(expected)
        except TypeError:
            return False
    if isinstance(actual, (list, tuple)) and isinstance(expected, (list, tuple)):
        return list(actual) == list(expected)
    return actual == expected


def _match_value(p: Pat | Var | Const, v: Value, env: dict) -> Iterator[dict]:
    if isinstance(p, Var):
        bound = env.get(p.name)
        if bound is not None:
            if bound is v:
                yield env
        elif p.where is None or p.where(v):
            yield {**env, p.name: v}
    elif isinstance(p, Const):
        if p.matches(v):
            yield {**env, p.name: v} if p.name else env
    elif v.op is not None:
        yield from _match_op(p, v.op, env)


def _match_op(p: Pat, op: Op, env: dict) -> Iterator[dict]:
    if op.name != p.op or len(op.operands) != len(p.args):
        return
    if not all(k in op.attrs and _attr_equal(op.attrs[k], e) for k, e in p.attrs.items()):
        return
    orders = [p.args]
    if len(p.args) == 2 and op.has_trait("commutative"):
        orders.append(p.args[::-1])
    for args in orders:
        yield from _match_seq(args, op.operands, env)


def _match_seq(pats: Sequence, values: Sequence[Value], env: dict) -> Iterator[dict]:
    if not pats:
        yield env
        return
    for e in _match_value(pats[0], values[0], env):
        yield from _match_seq(pats[1:], values[1:], e)


def match(p: Pat, op: Op) -> Match | None:
    """The first way `op` matches `p` (trying both operand orders of commutative ops), or None."""
    for env in _match_op(p, op, {}):
        m = Match(env)
        m.root = op
        return m
    return None


Replacement = Var | Const | Pat | Callable[[Match, Rewriter], Value | None]


class Rule(RewritePattern):
    """A declarative rewrite `lhs -> rhs`. `rhs` is a bound `Var`, a `Const` splat, a `Pat` to build
    (attribute values may be callables of the Match), or a function `(match, rw) -> Value | None`
    (None declines). `where(match)` adds a side condition. The rewrite applies only when the result
    type equals the matched op's, so a rule can never change a type."""

    def __init__(self, lhs: Pat, rhs: Replacement, *, where: Callable[[Match], bool] | None = None,
                 name: str | None = None, benefit: int = 1):
        self.lhs, self.rhs, self.where, self.benefit = lhs, rhs, where, benefit
        self.ops = (lhs.op,)
        self.name = name or f"{lhs!r} -> {rhs!r}"

    @property
    def label(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Rule({self.name})"

    def match_and_rewrite(self, op: Op, rw: Rewriter) -> bool:
        if len(op.results) != 1:
            return False
        for env in _match_op(self.lhs, op, {}):
            m = Match(env)
            m.root = op
            if self.where is not None and not self.where(m):
                continue
            if isinstance(self.rhs, Var) and m[self.rhs.name].type != op.result.type:
                continue
            rw.recording = created = []
            try:
                new = self._build(self.rhs, m, rw)
            finally:
                rw.recording = None
            if new is None or new.type != op.result.type:
                for c in reversed(created):  # undo: nothing but each other uses these yet
                    rw.erase_op(c)
                continue
            rw.replace_op(op, new)
            return True
        return False

    def _build(self, r: Replacement, m: Match, rw: Rewriter) -> Value | None:
        if isinstance(r, Var):
            return m[r.name]
        if isinstance(r, Const):
            if r.value is _ANY:
                return m[r.name] if r.name else None
            return rw.constant(r.value, m.root.result.type)
        if isinstance(r, Pat):
            operands = [self._build(a, m, rw) for a in r.args]
            if any(o is None for o in operands):
                return None
            attrs = {k: (v(m) if callable(v) and not isinstance(v, DType) else v) for k, v in r.attrs.items()}
            return rw.build(r.op, *operands, **attrs)
        return r(m, rw)


# ---------------------------------------------------------------------------------------------------
# the greedy driver


class _Worklist(Listener):
    def __init__(self) -> None:
        self.stack: list[Op] = []
        self.queued: set[Op] = set()
        self.dead: set[Op] = set()

    def push(self, op: Op) -> None:
        if op not in self.queued and op not in self.dead:
            self.stack.append(op)
            self.queued.add(op)

    def pop(self) -> Op:
        op = self.stack.pop()
        self.queued.discard(op)
        return op

    created = touched = push

    def erased(self, op: Op) -> None:
        self.dead.add(op)


def _ops_of(target: Graph | Block | Op) -> list[Op]:
    return list(target.walk())


def apply_patterns(target: Graph | Block | Op, patterns: Iterable[RewritePattern], *, max_iterations: int = 10,
                   max_rewrites: int | None = None, erase_dead: bool = True) -> bool:
    """Apply `patterns` greedily until no pattern applies; True when anything changed.

    Each sweep visits every op in program order (regions included); ops that a rewrite creates or
    touches are revisited right away. With `erase_dead`, pure ops with unused results are erased as
    they are met (like MLIR's canonicalizer). Stops after `max_iterations` sweeps or `max_rewrites`
    rewrites per sweep (default: 10 per op, at least 1000) and logs that it did not converge.
    """
    pats = sorted(patterns, key=lambda p: -p.benefit)
    by_name: dict[str, list[RewritePattern]] = {}
    wl = _Worklist()
    rw = Rewriter(wl)
    changed = False
    for _ in range(max_iterations):
        wl.dead.clear()
        ops = _ops_of(target)
        cap = max_rewrites if max_rewrites is not None else max(1000, 10 * len(ops))
        for op in reversed(ops):
            wl.push(op)
        rewrites = 0
        fired: dict[str, int] = {}  # per pattern, this sweep: names the loop when it never ends
        while wl.stack and rewrites < cap:
            op = wl.pop()
            if op in wl.dead or op.parent is None:
                continue
            if erase_dead and is_trivially_dead(op):
                rw.erase_op(op)
                rewrites += 1
                continue
            cands = by_name.get(op.name)
            if cands is None:
                cands = by_name[op.name] = [p for p in pats if p.applies_to(op)]
            for p in cands:
                rw.set_insertion_point(before=op)
                if p.match_and_rewrite(op, rw):
                    log.debug("applied %s to '%s'", p.label, op.name)
                    fired[p.label] = fired.get(p.label, 0) + 1
                    rewrites += 1
                    break
        if rewrites >= cap:
            log.warning("pattern rewriting stopped after %d rewrites in one sweep (patterns may loop: %s)",
                        rewrites, _fired(fired))
        wl.stack.clear()
        wl.queued.clear()
        changed |= rewrites > 0
        if not rewrites:
            return changed
    log.warning("pattern rewriting did not converge in %d sweeps; the last sweep applied %s (a pattern "
                "that returns True must change the IR, and no two may undo each other)",
                max_iterations, _fired(fired))
    return changed


def _fired(fired: dict[str, int]) -> str:
    top = sorted(fired.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{label} x{n}" for label, n in top) or "nothing"
