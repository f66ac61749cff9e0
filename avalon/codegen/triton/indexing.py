"""Index algebra for kernel emission: where an element of a value lives, as integer expressions.

A kernel iterates over a few integer *variables* (`xindex` over output elements, `rindex` over a
reduction, `rm`/`rn`/`ka` over matmul tiles, `kh` over a pooling window). The element of a value a
kernel needs is given by an `Index`: one `Affine` expression per dimension of the value's shape.
Shape ops (broadcast, reshape, transpose, slice, pad) do not move data inside a kernel; they only
rewrite the index through which their operand is read, ending in a load address with the
buffer's strides. That is how a `transpose` before a matmul, or a `broadcast` of a bias, becomes
a strided read (stride 0 for broadcast dims) instead of a copy.

An `Affine` is `sum(mul * ((var // div) % mod)) + const`, the form Inductor calls ModularIndexing.
Reshape maps an index through linearize/delinearize; the simplifier merges
`(x // a % b) * s + (x // (a*b) % c) * (s*b)` back into `(x // a % (b*c)) * s`, so a chain of
reshapes of a contiguous tensor reads with the plain flat index. Simplifications rely on variable
bounds (`0 <= var < bound` on live lanes), which is also what lets the reduction emitter recognise
that an index names "this row". Anything the algebra cannot simplify stays correct as an opaque
sub-expression.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class IndexVar:
    """An integer tensor in kernel source. `bound`: live lanes hold values in [0, bound) (None if
    unknown, e.g. a loaded index or an opaque expression). `deps`: the loop/iteration variables
    it is computed from (they decide its scope and the mask of loads that use it)."""

    name: str
    bound: int | None
    deps: frozenset[str]

    @staticmethod
    def base(name: str, bound: int) -> IndexVar:
        return IndexVar(name, bound, frozenset({name}))


@dataclass(frozen=True)
class Term:
    """`((var // div) % mod) * mul`; `mod` None means no modulo."""

    var: IndexVar
    div: int = 1
    mod: int | None = None
    mul: int = 1

    def bounds(self) -> tuple[int | None, int | None]:
        """Range of the term on live lanes; (None, None) when the variable's range is unknown."""
        b = self.var.bound
        if b is None:
            return None, None
        hi = (b - 1) // self.div
        if self.mod is not None:
            hi = min(hi, self.mod - 1)
        hi *= self.mul
        return min(0, hi), max(0, hi)

    def inner_str(self) -> str:
        s = self.var.name if self.var.name.isidentifier() else f"({self.var.name})"
        if self.div != 1:
            s += f" // {self.div}"
        if self.mod is not None:
            s += f" % {self.mod}"
        return s

    def __str__(self) -> str:
        s = self.inner_str()
        return s if self.mul == 1 else f"{s} * {self.mul}"


def _sort_key(t: Term):
    return (t.var.name, t.div, t.mod if t.mod is not None else 1 << 62)


@dataclass(frozen=True)
class Affine:
    terms: tuple[Term, ...] = ()
    const: int = 0

    # --- construction ------------------------------------------------------------------------
    @staticmethod
    def of(var: IndexVar) -> Affine:
        return Affine((Term(var),)).simplify()

    @staticmethod
    def constant(c: int) -> Affine:
        return Affine((), int(c))

    def __add__(self, other: Affine | int) -> Affine:
        if isinstance(other, int):
            return Affine(self.terms, self.const + other)
        return Affine(self.terms + other.terms, self.const + other.const).simplify()

    def __sub__(self, other: Affine | int) -> Affine:
        return self + (-other if isinstance(other, int) else other.scale(-1))

    def scale(self, k: int) -> Affine:
        if k == 0:
            return Affine()
        return Affine(tuple(Term(t.var, t.div, t.mod, t.mul * k) for t in self.terms), self.const * k)

    # --- queries -------------------------------------------------------------------------------
    @property
    def is_const(self) -> bool:
        return not self.terms

    @property
    def deps(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for t in self.terms:
            out |= t.var.deps
        return out

    def bounds(self) -> tuple[int | None, int | None]:
        lo = hi = self.const
        for t in self.terms:
            a, b = t.bounds()
            if a is None or b is None:
                return None, None
            lo, hi = lo + a, hi + b
        return lo, hi

    def key(self) -> tuple:
        return (tuple((t.var.name, t.div, t.mod, t.mul) for t in self.terms), self.const)

    def __str__(self) -> str:
        if not self.terms:
            return str(self.const)
        s = ""
        for t in self.terms:
            if t.mul < 0:
                s += (" - " if s else "-") + str(Term(t.var, t.div, t.mod, -t.mul))
            else:
                s += (" + " if s else "") + str(t)
        if self.const:
            s += f" + {self.const}" if self.const > 0 else f" - {-self.const}"
        return s

    # --- simplification --------------------------------------------------------------------------
    def simplify(self) -> Affine:
        terms: dict[tuple, int] = {}
        for t in self.terms:
            t = _normalize(t)
            if t is None:
                continue
            k = (t.var, t.div, t.mod)
            terms[k] = terms.get(k, 0) + t.mul
        ts = [Term(v, d, m, mul) for (v, d, m), mul in terms.items() if mul != 0]
        ts = _merge(ts)
        return Affine(tuple(sorted(ts, key=_sort_key)), self.const)

    def floordiv_mod(self, d: int, m: int | None) -> Affine:
        """`(self // d) % m` (m None: no modulo), simplified where bounds allow."""
        return _floordiv_mod(self, d, m)


def _normalize(t: Term) -> Term | None:
    b = t.var.bound
    if t.mul == 0 or (t.mod == 1):
        return None
    if b is not None:
        if b <= t.div:
            return None  # var // div == 0 on live lanes
        if t.mod is not None and t.div * t.mod >= b:
            t = Term(t.var, t.div, None, t.mul)
    return t


def _merge(ts: list[Term]) -> list[Term]:
    """Fuse `(v//a % b)*s + (v//(a*b) % c)*(s*b)` into `(v//a % (b*c))*s` until nothing changes."""
    changed = True
    while changed:
        changed = False
        for i, lo in enumerate(ts):
            if lo.mod is None:
                continue
            for j, hi in enumerate(ts):
                if i == j or hi.var != lo.var:
                    continue
                if hi.div == lo.div * lo.mod and hi.mul == lo.mul * lo.mod:
                    mod = None if hi.mod is None else lo.mod * hi.mod
                    new = _normalize(Term(lo.var, lo.div, mod, lo.mul))
                    ts = [t for k, t in enumerate(ts) if k not in (i, j)] + ([new] if new else [])
                    changed = True
                    break
            if changed:
                break
    return ts


def _combine_mod(m_inner: int | None, m: int) -> int | None:
    """`(y % m_inner) % m` as a single modulo, or None when it does not collapse."""
    if m_inner is None or m_inner % m == 0:
        return m
    if m % m_inner == 0:
        return m_inner
    return None


def _opaque(a: Affine, d: int, m: int | None) -> Affine:
    expr = f"({a})" if a.terms or a.const < 0 else str(a)
    if d != 1:
        expr = f"{expr} // {d}"
    if m is not None:
        expr = f"{expr} % {m}"
    lo, hi = a.bounds()
    bound = None
    if lo is not None and lo >= 0:
        bound = hi // d + 1
        if m is not None:
            bound = min(bound, m)
    elif m is not None:
        bound = None  # C-style % of a negative value is negative: no bound
    return Affine((Term(IndexVar(expr, bound, a.deps)),))


def _nonneg_below(a: Affine, m: int) -> bool:
    lo, hi = a.bounds()
    return lo is not None and lo >= 0 and hi < m


def _apply_mod(h: Affine, m: int | None, orig: Affine, d: int) -> Affine:
    """`h % m` where `h == orig // d`; values are non-negative on live lanes, where C-style and
    floor-style `%` agree, so whole multiples of m may be dropped."""
    if m is None:
        return h
    lo, _ = h.bounds()
    if lo is None or lo < 0:
        return _opaque(orig, d, m)
    if _nonneg_below(h, m):
        return h
    kept = tuple(t for t in h.terms if t.mul % m or t.mul < 0)
    h2 = Affine(kept, h.const % m if h.const >= 0 else h.const)
    if _nonneg_below(h2, m):
        return h2
    if len(kept) == 1 and h2.const == 0:
        t = kept[0]
        if t.mul > 0 and m % t.mul == 0:
            mod = _combine_mod(t.mod, m // t.mul)
            if mod is not None:
                nt = _normalize(Term(t.var, t.div, mod, t.mul))
                return Affine((nt,)) if nt else Affine()
    return _opaque(orig, d, m)


def _floordiv_mod(a: Affine, d: int, m: int | None) -> Affine:
    if d == 1:
        return _apply_mod(a, m, a, 1)
    lo, hi = a.bounds()
    if lo is not None and lo >= 0 and hi < d:
        return Affine()
    # a = g*q + r with r in [0, g) and g | d: a // d = q // (d/g) (q >= 0). g = d first, then the
    # terms' own multipliers: a convolution's contraction index over taps of C channels,
    # `kq * C + kc`, gives its tap `kq // kw` and `kq % kw` (scalars) whatever d the shape asks
    for g in [d] + sorted({t.mul for t in a.terms if 1 < t.mul < d and d % t.mul == 0}, reverse=True):
        high = [t for t in a.terms if t.mul % g == 0]
        low = Affine(tuple(t for t in a.terms if t.mul % g), a.const % g)
        llo, lhi = low.bounds()
        if llo is None or llo < 0 or lhi >= g:
            continue
        q = Affine(tuple(Term(t.var, t.div, t.mod, t.mul // g) for t in high), a.const // g).simplify()
        if g == d:
            return _apply_mod(q, m, a, d)
        qlo, _ = q.bounds()
        if qlo is not None and qlo >= 0:
            return _floordiv_mod(q, d // g, m)
    if len(a.terms) == 1 and a.const == 0:
        t = a.terms[0]
        if t.mul > 0 and d % t.mul == 0:
            e = d // t.mul
            if t.mod is None:
                h = Affine((Term(t.var, t.div * e),)).simplify()
                return _apply_mod(h, m, a, d)
            if t.mod % e == 0:
                h = Affine((Term(t.var, t.div * e, t.mod // e),)).simplify()
                return _apply_mod(h, m, a, d)
    return _opaque(a, d, m)


# --- indices: one Affine per dimension ------------------------------------------------------------

Index = tuple[Affine, ...]


def row_major(shape: Sequence[int]) -> tuple[int, ...]:
    st, acc = [0] * len(shape), 1
    for i in range(len(shape) - 1, -1, -1):
        st[i] = acc
        acc *= shape[i]
    return tuple(st)


def linearize(idx: Index, strides: Sequence[int], shape: Sequence[int] | None = None) -> Affine:
    """The element offset `sum(idx[d] * strides[d])`; size-1 dims contribute nothing."""
    out = Affine()
    for d, (a, s) in enumerate(zip(idx, strides)):
        if shape is not None and shape[d] == 1:
            continue
        out = out + a.scale(s)
    return out


def delinearize(flat: Affine, shape: Sequence[int]) -> Index:
    """The row-major multi-index of flat offset `flat` in `shape`."""
    if 0 in shape:  # no element to index (its row-major strides would divide by 0): an empty value
        return tuple(Affine() for _ in shape)  # is only read under a mask that is all false (a pad's)
    st = row_major(shape)
    return tuple(Affine() if s == 1 else flat.floordiv_mod(st[d], None if d == 0 else s)
                 for d, s in enumerate(shape))


def reshape_index(idx: Index, out_shape: Sequence[int], in_shape: Sequence[int]) -> Index:
    """Index into the operand of a reshape whose result is read at `idx`."""
    if tuple(out_shape) == tuple(in_shape):
        return idx
    return delinearize(linearize(idx, row_major(out_shape), out_shape), in_shape)


def broadcast_index(idx: Index, in_shape: Sequence[int], out_shape: Sequence[int]) -> Index:
    """Index into the operand of a broadcast: dims right-aligned, stretched size-1 dims read 0."""
    off = len(out_shape) - len(in_shape)
    return tuple(Affine() if s == 1 else idx[d + off] for d, s in enumerate(in_shape))


def transpose_index(idx: Index, perm: Sequence[int]) -> Index:
    out: list[Affine] = [Affine()] * len(perm)
    for i, p in enumerate(perm):
        out[p] = idx[i]
    return tuple(out)


def index_key(idx: Index) -> tuple:
    return tuple(a.key() for a in idx)


def index_deps(idx: Index) -> frozenset[str]:
    out: frozenset[str] = frozenset()
    for a in idx:
        out |= a.deps
    return out


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)
