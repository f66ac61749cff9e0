"""The value emitter: writes the Triton code that computes an IR value at an index.

Kernel builders (pointwise, reduction, contraction) set up iteration variables and ask for the
group's outputs at the index they store to; `Emitter.value` recurses through the group's ops (each
op's rule lives in `LOWERING`), ending in loads of the kernel's inputs. Everything computed is
memoized per (value, index, guard), so a value used twice at the same index is computed once, and
each line is placed in the outermost scope (kernel body, reduction loop, window loop) that has
everything it reads — loop-invariant loads and index math are hoisted out of loops for free.

A *guard* is an i1 value that says which lanes really need the element (padding, convolution
borders, concat pieces): loads under a guard are masked by it, so out-of-range addresses are never
touched; the rule that introduced the guard decides what masked lanes hold.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from avalon.ir import dtypes as dt
from avalon.ir.core import Value
from avalon.ir.dtypes import DType

from . import types as ty
from .indexing import Affine, Index, IndexVar, Term, index_key, linearize


class Unsupported(Exception):
    """This group cannot become one kernel of the kind being built; the caller falls back."""


@dataclass(eq=False)
class Scope:
    """A block of kernel source: the kernel body or a loop inside it."""

    parent: Scope | None
    header: str | None = None
    lines: list[str] = field(default_factory=list)
    memo: dict = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1


@dataclass(eq=False)
class Val:
    """A value in kernel source: `expr` names it; it holds IR dtype `dtype` in its compute type."""

    expr: str
    dtype: DType
    scope: Scope
    deps: frozenset[str] = frozenset()
    loaded: bool = False  # a masked load (0 on dead lanes and under its guard)


class Emitter:
    def __init__(self, inputs: Sequence[Value], in_strides: Sequence[Sequence[int]], dots_in_f32: bool = False):
        self.inputs = list(inputs)
        self.input_index = {id(v): i for i, v in enumerate(inputs)}
        self.in_strides = [tuple(s) for s in in_strides]
        self.root = Scope(None)
        self.scope = self.root
        self.masks: dict[str, str] = {}  # iteration variable -> the mask of its live lanes
        self.var_scope: dict[str, Scope] = {}
        self.overrides: dict[tuple, Val] = {}  # (id(value), index key) -> already computed (reductions, dots)
        self.helpers: set[str] = set()
        self.scalars: set[str] = set()  # iteration variables that are scalars (program ids, unrolled loop indices)
        # a variable that is a sum of others (a blocked conv's channel `kc` = the tile's scalar start
        # + a loop-invariant arange): addresses use the parts, so the invariant one is hoisted
        self.expand: dict[str, Affine] = {}
        self.dots_in_f32 = dots_in_f32
        self.index_checks: list[tuple[str, str, int]] = []  # (op, user's line, bound) per error slot (lowering.py)
        self._count = 0

    # --- source and scopes ----------------------------------------------------------------------
    def fresh(self, prefix: str = "t") -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def line(self, text: str, scope: Scope | None = None) -> None:
        (scope or self.scope).lines.append(text)

    def open(self, header: str) -> Scope:
        self.scope = Scope(self.scope, header)
        return self.scope

    def close(self) -> None:
        s = self.scope
        assert s.parent is not None
        self.scope = s.parent
        self.scope.lines.append(s.header)
        self.scope.lines.extend("    " + ln for ln in (s.lines or ["pass"]))

    def bound(self, mask: str, var: str, extent: int, block: int | None, shape: str) -> None:
        """`mask = var < extent`; where blocks of `block` lanes tile the extent exactly (the caller
        knows its walk stays inside), a constant true `shape` block instead, which Triton folds
        away: the bounds test leaves every load, store and select it guarded (4 of a 4096^3 GEMM's
        68 PTX instructions a K step)."""
        if block and extent % block == 0:
            self.line(f"{mask} = tl.full({shape}, True, tl.int1)")
        else:
            self.line(f"{mask} = {var} < {extent}")

    def define_var(self, name: str, expr: str, bound: int, mask: str | None = None) -> IndexVar:
        """An iteration variable defined in the current scope (`mask` names its live lanes)."""
        self.line(f"{name} = {expr}")
        self.var_scope[name] = self.scope
        if mask is not None:
            self.masks[name] = mask
        return IndexVar.base(name, bound)

    def _chain(self) -> list[Scope]:
        out, s = [], self.scope
        while s is not None:
            out.append(s)
            s = s.parent
        return out

    def place(self, deps: Iterable[str] = (), vals: Iterable[Val] = ()) -> Scope:
        """The outermost scope of the current chain where all of `deps` and `vals` are visible.
        Variables of loops already closed are ignored: a value read after a loop (an accumulator)
        no longer depends on them."""
        chain = self._chain()
        best = self.root
        for s in [self.var_scope.get(d, self.root) for d in deps] + [v.scope for v in vals]:
            if s.depth > best.depth and any(s is c for c in chain):
                best = s
        return best

    def emit(self, expr: str, dtype: DType, deps: Iterable[str] = (), vals: Sequence[Val] = (),
             prefix: str = "t", scope: Scope | None = None) -> Val:
        """Assign `expr` to a fresh name in the right scope and return it as a Val."""
        deps = frozenset(deps)
        for v in vals:
            deps |= v.deps
        where = scope or self.place(deps, vals)
        name = self.fresh(prefix)
        self.line(f"{name} = {expr}", where)
        return Val(name, dtype, where, deps)

    def lookup(self, key) -> Val | None:
        for s in self._chain():
            if key in s.memo:
                return s.memo[key]
        return None

    def remember(self, key, val: Val) -> Val:
        val.scope.memo[key] = val
        return val

    # --- index expressions ----------------------------------------------------------------------
    def term(self, t: Term) -> str:
        """A name for `(var // div) % mod` (computed once per scope), times `mul`."""
        if t.div == 1 and t.mod is None:
            s = t.var.name if t.var.name.isidentifier() else f"({t.var.name})"
        else:
            inner = t.inner_str()
            key = ("term", inner)
            v = self.lookup(key)
            if v is None:
                v = self.remember(key, self.emit(inner, dt.int32, t.var.deps, prefix="i"))
            s = v.expr
        return s if t.mul == 1 else f"{s} * {t.mul}"

    def affine(self, a: Affine) -> str:
        if not a.terms:
            return str(a.const)
        s = ""
        for t in a.terms:
            if t.mul < 0:
                s += (" - " if s else "-") + self.term(Term(t.var, t.div, t.mod, -t.mul))
            else:
                s += (" + " if s else "") + self.term(t)
        if a.const:
            s += f" + {a.const}" if a.const > 0 else f" - {-a.const}"
        return s

    def cond(self, expr: str, deps: Iterable[str] = (), vals: Sequence[Val] = ()) -> Val:
        """An i1 value (memoized by its text)."""
        key = ("cond", expr)
        v = self.lookup(key)
        return v if v is not None else self.remember(key, self.emit(expr, dt.bool_, deps, vals, prefix="c"))

    def both(self, a: Val | None, b: Val | None) -> Val | None:
        if a is None or b is None:
            return a or b
        return self.cond(f"{a.expr} & {b.expr}", vals=(a, b))

    def in_range(self, a: Affine, size: int) -> Val | None:
        """`0 <= a < size` as a guard, or None when the bounds already prove it."""
        lo, hi = a.bounds()
        parts = []
        if lo is None or lo < 0:
            parts.append(f"({self.affine(a)} >= 0)")
        if hi is None or hi >= size:
            parts.append(f"({self.affine(a)} < {size})")
        return self.cond(" & ".join(parts), a.deps) if parts else None

    def mask(self, deps: Iterable[str], guard: Val | None = None) -> str | None:
        names = sorted({self.masks[d] for d in deps if d in self.masks})
        if guard is not None:
            names.append(guard.expr)
        if not names:
            return None
        if len(names) == 1:
            return names[0]
        return self.cond(" & ".join(names), deps, (guard,) if guard else ()).expr

    # --- values ---------------------------------------------------------------------------------
    def value(self, v: Value, idx: Index, guard: Val | None = None) -> Val:
        """Kernel code for element `idx` of `v` (lanes outside `guard` may hold anything)."""
        ik = index_key(idx)
        hit = self.overrides.get((id(v), ik))
        if hit is not None:
            return hit
        key = ("value", id(v), ik, guard.expr if guard is not None else None)
        val = self.lookup(key)
        if val is not None:
            return val
        if id(v) in self.input_index:
            val = self.load(self.input_index[id(v)], idx, guard)
        else:
            op = v.op
            if op is None:
                raise Unsupported(f"value {v!r} is neither a kernel input nor computed in the group")
            from .lowering import LOWERING
            rule = LOWERING.get(op.name)
            if rule is None:
                raise NotImplementedError(f"no Triton lowering for op '{op.name}'")
            val = rule.emit(self, op, idx, guard)
        return self.remember(key, val)

    def pointer(self, base: str, addr: Affine) -> str:
        """`base + addr` with its loop-invariant part hoisted: the terms are grouped by the scope
        they can live in, and each outer group is added to the pointer once, in its own scope (a
        GEMM tile's row part before the K loop); inside a scope, scalars are summed before they
        meet a block. A conv tile's address in the K loop is then one add per element instead
        of one per term (and LLVM need not untangle the sum to hoist it)."""
        if not addr.terms:
            return base if addr.const == 0 else f"{base} + {addr.const}"
        parts = Affine((), addr.const)
        for t in addr.terms:
            e = self.expand.get(t.var.name) if t.div == 1 and t.mod is None else None
            parts = parts + (e.scale(t.mul) if e is not None else Affine((t,)))
        addr = parts
        groups: dict[int, tuple[Scope, list[Term]]] = {}
        for t in addr.terms:
            s = self.place(t.var.deps)
            groups.setdefault(id(s), (s, []))[1].append(t)
        ptr, const = base, addr.const
        for s, terms in sorted(groups.values(), key=lambda g: g[0].depth):
            terms.sort(key=lambda t: not t.var.deps <= self.scalars)  # scalars first
            part = Affine(tuple(terms), const)
            const = 0
            text = self.affine(part)
            if len(part.terms) + bool(part.const) > 1:  # (one sum, then one pointer add per element)
                text = f"({text})"
            if s is self.scope:  # the innermost group: added where the pointer is used
                return f"{ptr} + {text}"
            key = ("ptr", ptr, part.key())
            hit = self.lookup(key)
            if hit is None:
                # (a pointer; a Val's dtype is never read for one)
                hit = self.remember(key, self.emit(f"{ptr} + {text}", dt.int64, part.deps, prefix="p", scope=s))
            ptr = hit.expr
        return ptr

    def load(self, i: int, idx: Index, guard: Val | None) -> Val:
        v = self.inputs[i]
        addr = linearize(idx, self.in_strides[i], v.shape)
        ptr = self.pointer(f"in{i}", addr)
        if addr.deps <= self.scalars:  # a scalar address is still read as a block ([1]), like any other value
            ptr += " + tl.zeros([1], tl.int32)"
        m = self.mask(addr.deps, guard)
        expr = f"tl.load({ptr}, mask={m}, other=0)" if m else f"tl.load({ptr})"
        if ty.compute(v.dtype) != v.dtype:
            expr += f".to({ty.tl_compute(v.dtype)})"
        val = self.emit(expr, v.dtype, addr.deps, (guard,) if guard else (), prefix="ld")
        val.loaded = True
        return val

    def store(self, ptr: str, strides: Sequence[int], shape: Sequence[int], idx: Index, val: Val,
              dtype: DType, anchors: Sequence[str]) -> None:
        """Store `val` at `idx`. `anchors` are the iteration variables the stored block spans: a
        pointer not depending on one of them (a one-element output) is widened so that pointer,
        value and mask have one shape, and their masks keep dead lanes from storing."""
        addr = linearize(idx, strides, shape)
        text = self.affine(addr)
        m = self.mask(addr.deps | frozenset(anchors))
        p = ptr if text == "0" else f"{ptr} + {text}"
        p += "".join(f" + {a} * 0" for a in anchors if a not in addr.deps)
        x = val.expr
        if dtype == dt.bfloat16:
            self.helpers.add("_avalon_round_bf16")
            x = f"_avalon_round_bf16({x})"
        if ty.compute(dtype) != dtype or val.dtype != dtype:
            x = f"{x}.to({ty.tl_type(dtype)})"
        self.line(f"tl.store({p}, {x}, mask={m})" if m else f"tl.store({p}, {x})")

    def convert(self, val: Val, to: DType) -> Val:
        """`val` as IR dtype `to` (rounding through f16/bf16 like a store would)."""
        if val.dtype == to:
            return val
        if to == dt.bool_:
            return self.emit(f"{val.expr} != 0", to, vals=(val,), prefix="cv")
        if to == dt.bfloat16:
            self.helpers.add("_avalon_round_bf16")
            expr = f"_avalon_round_bf16({val.expr}.to(tl.float32))"
        elif ty.compute(to) != to:
            expr = f"{val.expr}.to({ty.tl_type(to)}).to(tl.float32)"
        elif val.dtype.is_float and to in dt.SMALL_INTS:  # through i64, wrapping as the reference and torch
            expr = f"{val.expr}.to(tl.int64).to({ty.tl_type(to)})"
        else:
            expr = f"{val.expr}.to({ty.tl_type(to)})"
        return self.emit(expr, to, vals=(val,), prefix="cv")

    def constant(self, value, d: DType) -> Val:
        key = ("const", ty.literal(value, d), d.name)
        v = self.lookup(key)
        if v is None:
            v = self.emit(f"tl.full([1], {ty.literal(value, d)}, {ty.tl_compute(d)})", d, prefix="k",
                          scope=self.root)
            self.remember(key, v)
        return v

    def opaque_var(self, val: Val, bound: int | None) -> IndexVar:
        """Use a computed integer value (a gathered index) inside index expressions."""
        self.var_scope[val.expr] = val.scope
        return IndexVar(val.expr, bound, val.deps | frozenset({val.expr}))
