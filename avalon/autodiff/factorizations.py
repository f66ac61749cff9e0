"""Derivatives of the factorizations (`svd`, `eigh`, `qr`, `pinv`): one VJP and one JVP rule each,
torch's formulas (torch/csrc/autograd/FunctionsManual.cpp: svd_backward, linalg_eig_backward,
linalg_qr_backward, pinv_backward and their jvps), written over a small batched matrix algebra on the
Builder (`Alg`) since the rules see primitives with explicit broadcasts.

The factors are packed into one result (`avalon/ir/primitives.py`), so a rule slices the packed
cotangent into the factors' cotangents; a factor the loss does not read has a zero cotangent, and
where torch skips a term for an undefined cotangent the rules here divide `0 / 0` as 0 instead
(`Alg.quotient`). That keeps `svdvals` of a matrix with repeated singular values (an orthogonal
weight's spectral norm) finite, as torch's own svdvals path does. Where a gradient genuinely does
not exist (a complete QR of a tall matrix) the rules raise as torch does; a full SVD's extra columns
of U or V get zero cotangents and tangents, as torch's.
"""
from __future__ import annotations

from collections.abc import Sequence

from avalon.ir import Builder, Op, Value
from avalon.ir import dtypes as dt
from avalon.ir.primitives import qr_layout, svd_layout

from .forward_rules import jvp
from .rules import vjp


class Alg:
    """Batched matrix algebra over a Builder: values are (..., r, c) matrices or (..., k) vectors with
    the same batch dims; broadcasting is made explicit here, as the primitives want it."""

    def __init__(self, b: Builder, like: Value):
        self.b, self.dtype, self.batch = b, like.dtype, list(like.shape[:-2])

    def const(self, value: float, like: Value) -> Value:
        return self.b.constant(value, like.shape, like.dtype)

    def mm(self, *xs: Value) -> Value:
        out = xs[0]
        for x in xs[1:]:
            out = self.b("matmul", out, x)
        return out

    def t(self, x: Value) -> Value:
        perm = list(range(x.type.rank))
        perm[-2], perm[-1] = perm[-1], perm[-2]
        return self.b("transpose", x, perm=perm)

    def add(self, x: Value, y: Value) -> Value:
        return self.b("add", x, y)

    def sub(self, x: Value, y: Value) -> Value:
        return self.b("sub", x, y)

    def scale(self, x: Value, c: float) -> Value:
        return self.b("mul", x, self.const(c, x))

    def _along(self, v: Value, like: Value, axis: int) -> Value:
        """A vector (..., k) broadcast over `like` (..., r, c) along its columns (axis -1: v[..., None, :])
        or rows (axis -2: v[..., :, None])."""
        shape = [*v.shape[:-1], 1, v.shape[-1]] if axis == -1 else [*v.shape, 1]
        r = self.b("reshape", v, shape=shape)
        return r if tuple(r.shape) == tuple(like.shape) else self.b("broadcast", r, shape=list(like.shape))

    def cols(self, x: Value, v: Value, op: str = "mul") -> Value:
        """x[..., i, j] op v[..., j]."""
        return self.b(op, x, self._along(v, x, -1))

    def rows(self, x: Value, v: Value, op: str = "mul") -> Value:
        """x[..., i, j] op v[..., i]."""
        return self.b(op, x, self._along(v, x, -2))

    def outer_diff(self, v: Value) -> Value:
        """E[..., i, j] = v[j] - v[i] with ones on the diagonal (torch's E of eigen- and singular values)."""
        k = v.shape[-1]
        sq = self.b("broadcast", self.b("reshape", v, shape=[*v.shape, 1]), shape=[*v.shape, k])
        e = self.sub(self.t(sq), sq)
        return self.b("where", self.eye_mask(k, e), self.const(1.0, e), e)

    def eye_mask(self, k: int, like: Value) -> Value:
        r = self.b("iota", shape=[k, k], axis=0, dtype=dt.int64)
        c = self.b("iota", shape=[k, k], axis=1, dtype=dt.int64)
        return self.b("broadcast", self.b("eq", r, c), shape=list(like.shape))

    def tril_mask(self, like: Value, diagonal: int = 0) -> Value:
        """True where column - row <= diagonal (torch.tril's kept elements)."""
        r, c = like.shape[-2:]
        ri = self.b("iota", shape=[r, c], axis=0, dtype=dt.int64)
        ci = self.b("iota", shape=[r, c], axis=1, dtype=dt.int64)
        keep = self.b("le", self.b("sub", ci, ri), self.b.constant(diagonal, [r, c], dt.int64))
        return self.b("broadcast", keep, shape=list(like.shape))

    def tril(self, x: Value, diagonal: int = 0) -> Value:
        return self.b("where", self.tril_mask(x, diagonal), x, self.const(0.0, x))

    def eye(self, k: int) -> Value:
        shape = [*self.batch, k, k]
        m = self.eye_mask(k, self.b.constant(0.0, shape, self.dtype))
        return self.b("cast", m, dtype=self.dtype)

    def diag(self, x: Value) -> Value:
        """The diagonal (..., k) of square (..., k, k) matrices."""
        m = self.eye_mask(x.shape[-1], x)
        return self.b("sum", self.b("where", m, x, self.const(0.0, x)), axes=[x.type.rank - 1])

    def diag_embed(self, v: Value) -> Value:
        k = v.shape[-1]
        full = self._along(v, self.b.constant(0.0, [*v.shape[:-1], k, k], v.dtype), -1)
        return self.b("where", self.eye_mask(k, full), full, self.const(0.0, full))

    def quotient(self, num: Value, den: Value) -> Value:
        """num / den, with 0 where num is 0 (a term torch leaves out when its cotangent is undefined)."""
        zero = self.const(0.0, num)
        return self.b("where", self.b("eq", num, zero), zero, self.b("div", num, den))

    def block(self, x: Value, rows: tuple[int, int], cols: tuple[int, int]) -> Value:
        """x[..., r0:r1, c0:c1]."""
        if (rows, cols) == ((0, x.shape[-2]), (0, x.shape[-1])):
            return x
        lead = [0] * (x.type.rank - 2)
        return self.b("slice", x, start=[*lead, rows[0], cols[0]], limit=[*x.shape[:-2], rows[1], cols[1]])

    def row(self, x: Value, i: int, cols: tuple[int, int]) -> Value:
        """x[..., i, c0:c1] as a vector."""
        r = self.block(x, (i, i + 1), cols)
        return self.b("reshape", r, shape=[*r.shape[:-2], r.shape[-1]])

    def stack_rows(self, parts: Sequence[Value], width: int) -> Value:
        """Matrices and vectors (one row each) stacked by rows, zero-padded on the right to `width`."""
        mats = []
        for p in parts:
            if p.type.rank == len(self.batch) + 1:
                p = self.b("reshape", p, shape=[*p.shape[:-1], 1, p.shape[-1]])
            if p.shape[-1] < width:
                rank = p.type.rank
                p = self.b("pad", p, low=[0] * rank, high=[0] * (rank - 1) + [width - p.shape[-1]])
            mats.append(p)
        return mats[0] if len(mats) == 1 else self.b("concat", *mats, axis=len(self.batch))

    def skew(self, x: Value) -> Value:
        return self.sub(x, self.t(x))

    def solve_upper_right(self, y: Value, r: Value, transposed: bool) -> Value:
        """X with X R^T = Y (`transposed`) or X R = Y, for upper-triangular (..., k, k) R, column by
        column (k steps: the small matrices QR is used on)."""
        k = r.shape[-1]
        xs: dict[int, Value] = {}
        order = range(k - 1, -1, -1) if transposed else range(k)
        for j in order:
            col = self.block(y, (0, y.shape[-2]), (j, j + 1))
            done = sorted(xs)
            if done:
                # X R^T: column j of Y is sum over l >= j of X[:, l] R[j, l]; X R: sum over l <= j of X[:, l] R[l, j]
                coef = [self.block(r, (j, j + 1), (i, i + 1)) if transposed else self.block(r, (i, i + 1), (j, j + 1))
                        for i in done]
                known = xs[done[0]] if len(done) == 1 else self.b("concat", *[xs[i] for i in done],
                                                                   axis=len(self.batch) + 1)
                c = coef[0] if len(coef) == 1 else self.b("concat", *coef, axis=len(self.batch))
                col = self.sub(col, self.mm(known, c))
            piv = self.block(r, (j, j + 1), (j, j + 1))
            xs[j] = self.b("div", col, self.b("broadcast", piv, shape=list(col.shape)))
        out = [xs[j] for j in range(k)]
        return out[0] if k == 1 else self.b("concat", *out, axis=len(self.batch) + 1)


# -- svd ------------------------------------------------------------------------------------------

def _svd_parts(a: Alg, packed: Value, m: int, n: int) -> tuple[Value, Value, Value]:
    """(U, S, V) of a packed svd result or cotangent, U and V narrowed to k = min(m, n) columns."""
    k = min(m, n)
    return a.block(packed, (0, m), (0, k)), a.row(packed, m, (0, k)), a.block(packed, (m + 1, m + 1 + n), (0, k))


@vjp("svd")
def _svd_vjp(b, op, g):
    """torch's svd_backward, the full factors narrowed to their first k columns as torch does."""
    x = op.operands[0]
    m, n = x.shape[-2:]
    a = Alg(b, x)
    u, s, v = _svd_parts(a, op.result, m, n)
    gu, gs, gv = _svd_parts(a, g, m, n)
    s2 = b("mul", s, s)
    e = a.outer_diff(s2)  # E[i, j] = s_j^2 - s_i^2
    num = a.add(a.cols(a.skew(a.mm(a.t(u), gu)), s), a.rows(a.skew(a.mm(a.t(v), gv)), s))
    core = a.add(a.quotient(num, e), a.diag_embed(gs))
    if m > n:
        ga = a.mm(u, core)
        gus = a.quotient(gu, a.b("broadcast", a.b("reshape", s, shape=[*s.shape[:-1], 1, n]), shape=list(gu.shape)))
        ga = a.add(ga, a.sub(gus, a.mm(u, a.t(u), gus)))
        return [a.mm(ga, a.t(v))]
    if m < n:
        gvh = a.t(gv)
        sg = a.quotient(gvh, a.b("broadcast", a.b("reshape", s, shape=[*s.shape, 1]), shape=list(gvh.shape)))
        ga = a.add(a.mm(core, a.t(v)), a.sub(sg, a.mm(sg, v, a.t(v))))
        return [a.mm(u, ga)]
    return [a.mm(u, core, a.t(v))]


@jvp("svd")
def _svd_jvp(b, op, ts):
    """dS = diag(U^T dA V); dU = U (F o (dP S + S dP^T)) + (I - U U^T) dA V S^-1 and dV likewise, with
    F[i, j] = 1 / (s_j^2 - s_i^2) off the diagonal (Townsend's formulas, torch's svd_jvp). With
    full_matrices, the extra columns of U or V (not unique) get a zero tangent, as torch's linalg_svd_jvp
    pads them: the packing's zero padding."""
    x = op.operands[0]
    m, n = x.shape[-2:]
    full = op.attrs["full_matrices"]
    da = ts[0]
    a = Alg(b, x)
    u, s, v = _svd_parts(a, op.result, m, n)
    dp = a.mm(a.t(u), da, v)
    ds = a.diag(dp)
    f = a.outer_diff(b("mul", s, s))
    off = b("logical_not", a.eye_mask(dp.shape[-1], dp))
    def spin(y):  # F o y off the diagonal, 0 on it
        return b("where", off, a.quotient(y, f), a.const(0.0, y))
    du = a.mm(u, spin(a.add(a.cols(dp, s), a.rows(a.t(dp), s))))
    dv = a.mm(v, spin(a.add(a.rows(dp, s), a.cols(a.t(dp), s))))
    if m > n:
        rest = a.sub(a.mm(da, v), a.mm(u, a.mm(a.t(u), da, v)))
        du = a.add(du, a.cols(rest, s, "div"))
    if n > m:
        rest = a.sub(a.mm(a.t(da), u), a.mm(v, a.mm(a.t(v), a.t(da), u)))
        dv = a.add(dv, a.cols(rest, s, "div"))
    _, _, w = svd_layout(m, n, full)
    return [a.stack_rows([du, ds, dv], w)]


# -- eigh -----------------------------------------------------------------------------------------

def _eigh_parts(a: Alg, packed: Value, n: int) -> tuple[Value, Value]:
    return a.row(packed, 0, (0, n)), a.block(packed, (1, n + 1), (0, n))


@vjp("eigh")
def _eigh_vjp(b, op, g):
    """gA = V ((skew(V^T gV) / 2) / E + diag(gL)) V^T, E[i, j] = l_j - l_i (torch's linalg_eig_backward,
    hermitian): not symmetrized, as torch's."""
    x = op.operands[0]
    n = x.shape[-1]
    a = Alg(b, x)
    lam, v = _eigh_parts(a, op.result, n)
    gl, gv = _eigh_parts(a, g, n)
    inner = a.quotient(a.scale(a.skew(a.mm(a.t(v), gv)), 0.5), a.outer_diff(lam))
    return [a.mm(v, a.add(inner, a.diag_embed(gl)), a.t(v))]


@jvp("eigh")
def _eigh_jvp(b, op, ts):
    """X = V^T dA V; dL = diag(X); dV = V (X / E off the diagonal)."""
    x = op.operands[0]
    n = x.shape[-1]
    a = Alg(b, x)
    lam, v = _eigh_parts(a, op.result, n)
    xm = a.mm(a.t(v), ts[0], v)
    off = b("logical_not", a.eye_mask(n, xm))
    dv = a.mm(v, b("where", off, a.quotient(xm, a.outer_diff(lam)), a.const(0.0, xm)))
    return [a.stack_rows([a.diag(xm), dv], n)]


# -- qr -------------------------------------------------------------------------------------------

def _qr_parts(a: Alg, packed: Value, m: int, n: int, c: int) -> tuple[Value, Value]:
    return a.block(packed, (0, m), (0, c)), a.block(packed, (m, m + c), (0, n))


def _qr_check(op: Op, what: str) -> tuple[int, int, int]:
    m, n = op.operands[0].shape[-2:]
    c, _ = qr_layout(m, n, op.attrs["complete"])
    if op.attrs["complete"] and m > n:
        raise NotImplementedError(f"qr: the QR decomposition has no {what} with mode='complete' of a matrix with "
                                  f"more rows than columns ({m} x {n}: the extra columns of Q are not unique); "
                                  f"use mode='reduced'{_at(op)}")
    return m, n, c


def _copyltu(a: Alg, x: Value) -> Value:
    """The symmetric matrix whose lower triangle is x's."""
    low = a.tril(x, -1)
    return a.add(a.tril(x), a.t(low))


@vjp("qr")
def _qr_vjp(b, op, g):
    """Square or tall (m >= n): M = R gR^T - gQ^T Q, gA = (gQ + Q copyltu(M)) R^-T. Wide (m < n): A =
    [X | Y] with X = Q R_X square, Y = Q R_Y: gA = [square(gQ + Y gR_Y^T, gR_X) | Q gR_Y]."""
    m, n, c = _qr_check(op, "derivative")
    x = op.operands[0]
    a = Alg(b, x)
    q, r = _qr_parts(a, op.result, m, n, c)
    gq, gr = _qr_parts(a, g, m, n, c)

    def square(gq: Value, rx: Value, grx: Value) -> Value:
        mm = a.sub(a.mm(rx, a.t(grx)), a.mm(a.t(gq), q))
        return a.solve_upper_right(a.add(gq, a.mm(q, _copyltu(a, mm))), rx, transposed=True)

    if m >= n:
        return [square(gq, r, gr)]
    rx = a.block(r, (0, m), (0, m))
    grx, gry = a.block(gr, (0, m), (0, m)), a.block(gr, (0, m), (m, n))
    y = a.block(x, (0, m), (m, n))
    gx = square(a.add(gq, a.mm(y, a.t(gry))), rx, grx)
    return [b("concat", gx, a.mm(q, gry), axis=x.type.rank - 1)]


@jvp("qr")
def _qr_jvp(b, op, ts):
    """Square or tall: C = Q^T dA R^-1, Omega = tril(C, -1) - tril(C, -1)^T, dR = (C - Omega) R,
    dQ = Q Omega + dA R^-1 - Q C. Wide: the square part's, then dR_Y = Q^T (dA_Y - dQ R_Y)."""
    m, n, c = _qr_check(op, "forward-mode derivative")
    x = op.operands[0]
    a = Alg(b, x)
    q, r = _qr_parts(a, op.result, m, n, c)
    da = ts[0]

    def square(dax: Value, rx: Value) -> tuple[Value, Value]:
        xr = a.solve_upper_right(dax, rx, transposed=False)  # dA R^-1
        cm = a.mm(a.t(q), xr)
        low = a.tril(cm, -1)
        omega = a.sub(low, a.t(low))
        dr = a.mm(a.sub(cm, omega), rx)
        dq = a.add(a.mm(q, omega), a.sub(xr, a.mm(q, cm)))
        return dq, dr

    _, w = qr_layout(m, n, op.attrs["complete"])
    if m >= n:
        dq, dr = square(da, r)
        return [a.stack_rows([dq, dr], w)]
    dq, drx = square(a.block(da, (0, m), (0, m)), a.block(r, (0, m), (0, m)))
    dry = a.mm(a.t(q), a.sub(a.block(da, (0, m), (m, n)), a.mm(dq, a.block(r, (0, m), (m, n)))))
    return [a.stack_rows([dq, b("concat", drx, dry, axis=x.type.rank - 1)], w)]


# -- pinv -----------------------------------------------------------------------------------------

@vjp("pinv")
def _pinv_vjp(b, op, g):
    """torch's pinv_backward: matmuls of A, A+ and the cotangent only (no division by gaps between
    singular values, so repeated ones are fine), grouped so the products are the smaller dimension's."""
    x = op.operands[0]
    m, n = x.shape[-2:]
    a = Alg(b, x)
    p, ph, gh = op.result, a.t(op.result), a.t(g)
    if m <= n:
        k = a.mm(gh, p)
        kph = a.mm(k, ph)
        out = a.sub(kph, a.t(a.mm(p, k)))
        out = a.sub(out, a.mm(x, p, kph))
        return [a.add(out, a.mm(ph, p, a.sub(gh, a.mm(k, x))))]
    k = a.mm(p, gh)
    phk = a.mm(ph, k)
    out = a.sub(a.mm(a.sub(gh, a.mm(x, k)), p, ph), a.t(a.mm(k, p)))
    return [a.add(out, a.sub(phk, a.mm(phk, p, x)))]


@jvp("pinv")
def _pinv_jvp(b, op, ts):
    """dA+ = -A+ dA A+ + A+ A+^T dA^T (I - A A+) + (I - A+ A) dA^T A+^T A+ (Golub and Pereyra)."""
    x, da = op.operands[0], ts[0]
    a = Alg(b, x)
    p = op.result
    dat = a.t(da)
    first = a.mm(p, da, p)
    second = a.mm(p, a.t(p), a.sub(dat, a.mm(dat, x, p)))
    third = a.mm(a.sub(dat, a.mm(p, x, dat)), a.t(p), p)
    return [a.add(a.sub(second, first), third)]


def _at(op: Op) -> str:
    return f" (at {op.loc})" if op.loc else ""


# -- eig (general real matrices, complex results) -------------------------------------------------

Cx = tuple[Value, Value]  # a complex matrix or vector as its (real, imaginary) parts


def _eig_parts(a: Alg, packed: Value, n: int) -> tuple[Cx, Cx]:
    """(L, V) of a packed eig result or cotangent: rows [Re L; Im L; Re V; Im V]."""
    return ((a.row(packed, 0, (0, n)), a.row(packed, 1, (0, n))),
            (a.block(packed, (2, 2 + n), (0, n)), a.block(packed, (2 + n, 2 + 2 * n), (0, n))))


def _cmm(a: Alg, x: Cx, y: Cx) -> Cx:
    return (a.sub(a.mm(x[0], y[0]), a.mm(x[1], y[1])), a.add(a.mm(x[0], y[1]), a.mm(x[1], y[0])))


def _ch(a: Alg, x: Cx) -> Cx:
    """The conjugate transpose."""
    return a.t(x[0]), a.b("neg", a.t(x[1]))


def _cinv(a: Alg, m: Cx) -> Cx:
    """The inverse of complex (..., n, n) M through its real form [[Re M, -Im M], [Im M, Re M]], whose
    inverse is that of M^-1 (pinv: an SVD, the exact inverse of an invertible M)."""
    n, axis = m[0].shape[-1], m[0].type.rank - 1
    top = a.b("concat", m[0], a.b("neg", m[1]), axis=axis)
    bottom = a.b("concat", m[1], m[0], axis=axis)
    inv = a.b("pinv", a.b("concat", top, bottom, axis=axis - 1))
    return a.block(inv, (0, n), (0, n)), a.block(inv, (n, 2 * n), (0, n))


def _eig_gaps(a: Alg, lam: Cx, conj: bool) -> Cx:
    """E[i, j] = L_j - L_i (conj(L_j) - conj(L_i) with `conj`), 1 on the diagonal (torch's E / Econj)."""
    er = a.outer_diff(lam[0])
    ei = a.outer_diff(lam[1])
    ei = a.b("where", a.eye_mask(ei.shape[-1], ei), a.const(0.0, ei), ei)
    return er, (a.b("neg", ei) if conj else ei)


def _cquotient(a: Alg, p: Cx, e: Cx) -> Cx:
    """p / e elementwise, 0 where p is 0 (as `Alg.quotient`)."""
    b = a.b
    den = a.add(b("mul", e[0], e[0]), b("mul", e[1], e[1]))
    qr = b("div", a.add(b("mul", p[0], e[0]), b("mul", p[1], e[1])), den)
    qi = b("div", a.sub(b("mul", p[1], e[0]), b("mul", p[0], e[1])), den)
    zero = a.const(0.0, p[0])
    null = b("logical_and", b("eq", p[0], zero), b("eq", p[1], zero))
    return b("where", null, zero, qr), b("where", null, zero, qi)


@vjp("eig")
def _eig_vjp(b, op, g):
    """torch's linalg_eig_backward for real A: with V^H gV projected onto the skew-Hermitian matrices
    (minus V^H V Re(diag(V^H gV))), gA = Re(V^-H (that / conj(E) off the diagonal, gL on it) V^H).
    The eigenvectors are defined up to a phase e^{i phi} each, so a loss that depends on it (Im of
    diag(V^H gV) beyond torch's allclose tolerance, 1e-2) has no gradient: torch raises there; a graph
    cannot, so the whole gradient is nan. It is the exact transpose of the JVP rule below."""
    x = op.operands[0]
    n = x.shape[-1]
    a = Alg(b, x)
    lam, v = _eig_parts(a, op.result, n)
    gl, gv = _eig_parts(a, g, n)
    vh = _ch(a, v)
    p = _cmm(a, vh, gv)
    ill = b("gt", b("abs", a.diag(p[1])), b.constant(1e-2, a.diag(p[1]).shape, x.dtype))
    ill = b("max", b("cast", ill, dtype=x.dtype), axes=list(range(ill.type.rank)))  # (any, over the batch too)
    vv = _cmm(a, vh, v)
    re_diag = a.diag(p[0])
    p = (a.sub(p[0], a.cols(vv[0], re_diag)), a.sub(p[1], a.cols(vv[1], re_diag)))
    q = _cquotient(a, p, _eig_gaps(a, lam, conj=True))
    eye = a.eye_mask(n, q[0])
    q = (b("where", eye, a.diag_embed(gl[0]), q[0]), b("where", eye, a.diag_embed(gl[1]), q[1]))
    y = _cmm(a, q, vh)
    inv = _ch(a, _cinv(a, v))  # V^-H
    ga = a.sub(a.mm(inv[0], y[0]), a.mm(inv[1], y[1]))  # Re(V^-H Y)
    nan = a.const(float("nan"), ga)
    return [b("where", b("broadcast", b("gt", ill, b.constant(0.0, [], x.dtype)), shape=list(ga.shape)), nan, ga)]


@jvp("eig")
def _eig_jvp(b, op, ts):
    """torch's linalg_eig_jvp: dP = V^-1 dA V, dL = diag(dP), dV = V X - V Re(diag(V^H V X)) with
    X = dP / E off the diagonal (0 on it), E[i, j] = L_j - L_i: unit-norm columns stay unit-norm."""
    x = op.operands[0]
    n = x.shape[-1]
    a = Alg(b, x)
    lam, v = _eig_parts(a, op.result, n)
    dav = (a.mm(ts[0], v[0]), a.mm(ts[0], v[1]))
    dp = _cmm(a, _cinv(a, v), dav)
    xq = _cquotient(a, dp, _eig_gaps(a, lam, conj=False))
    off = b("logical_not", a.eye_mask(n, xq[0]))
    xq = (b("where", off, xq[0], a.const(0.0, xq[0])), b("where", off, xq[1], a.const(0.0, xq[1])))
    dv = _cmm(a, v, xq)
    re_diag = a.diag(_cmm(a, _ch(a, v), dv)[0])
    dv = (a.sub(dv[0], a.cols(v[0], re_diag)), a.sub(dv[1], a.cols(v[1], re_diag)))
    return [a.stack_rows([a.diag(dp[0]), a.diag(dp[1]), dv[0], dv[1]], n)]
