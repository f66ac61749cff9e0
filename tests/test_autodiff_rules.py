"""Every VJP rule, checked two ways on random inputs: against central finite differences in float64
(the definition of a derivative) and against torch.autograd (the conventions at kinks and ties).

Each case builds a one-op graph, takes `loss = sum(op(...) * r)` for a random cotangent `r`, and
differentiates it with `grad_graph`; the gradient graph must also verify and round-trip as text.
Inputs keep away from kinks (relu/abs near 0, ties for maximum/max/max_pool2d); the tie
conventions are tested on their own at the end.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import avalon.ir as ir
from avalon.autodiff import INLINED, NON_DIFFERENTIABLE, VJP, grad_graph
from avalon.ir import Builder, Graph, TensorType, evaluate, interpret
from avalon.ir import dtypes as dt


@dataclass
class Case:
    operands: list[np.ndarray]
    attrs: dict = field(default_factory=dict)
    eps: float = 1e-6
    cotangent_mask: np.ndarray | None = None  # zero where the result has no derivative (a full SVD's extra columns)


CASES: dict[str, Callable] = {}


def case(*names: str):
    def deco(fn):
        for n in names:
            CASES[n] = fn
        return fn
    return deco


def _shape(data, min_dims=0, max_dims=3, max_side=4) -> tuple[int, ...]:
    return data.draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side))


def _rng(data) -> np.random.Generator:
    return np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))


def _away_from_zero(rng, shape, lo=0.1, hi=2.0) -> np.ndarray:
    return rng.uniform(lo, hi, shape) * rng.choice([-1.0, 1.0], shape)


def _distinct(rng, shape) -> np.ndarray:
    """Values at least ~0.1 apart, so no perturbation of 1e-6 changes which one is largest."""
    n = math.prod(shape)
    return (rng.permutation(n) * 0.1 + rng.uniform(-0.02, 0.02, n)).reshape(shape) - 0.05 * n


# -- cases ------------------------------------------------------------------------------------

@case("exp", "tanh", "sigmoid", "erf", "neg", "sin", "cos")
def _unary(name, data, rng):
    return Case([rng.normal(size=_shape(data))])


@case("log", "sqrt", "rsqrt")
def _positive(name, data, rng):
    return Case([rng.uniform(0.5, 2.0, _shape(data))])


@case("relu", "abs")
def _kinked(name, data, rng):
    return Case([_away_from_zero(rng, _shape(data))])


@case("add", "sub", "mul")
def _binary(name, data, rng):
    s = _shape(data)
    return Case([rng.normal(size=s), rng.normal(size=s)])


@case("div")
def _div(name, data, rng):
    s = _shape(data)
    return Case([rng.normal(size=s), _away_from_zero(rng, s, 0.5)])


@case("pow")
def _pow(name, data, rng):
    s = _shape(data)
    return Case([rng.uniform(0.5, 2.0, s), rng.uniform(-2.0, 2.0, s)])


@case("maximum", "minimum")
def _minmax(name, data, rng):
    s = _shape(data)
    x = rng.normal(size=s)
    return Case([x, x + _away_from_zero(rng, s, 0.1, 1.0)])


@case("where")
def _where(name, data, rng):
    s = _shape(data)
    return Case([rng.random(s) < 0.5, rng.normal(size=s), rng.normal(size=s)])


@case("check")
def _check(name, data, rng):
    s = _shape(data)
    return Case([rng.normal(size=s), np.ones(s, bool)], {"message": "never raised"})


@case("cast")
def _cast(name, data, rng):
    """Values that are exact in f32 and a step of 1/4, so finite differences are exact even in f32."""
    src, dst = data.draw(st.sampled_from([(np.float32, dt.float64), (np.float64, dt.float32),
                                          (np.float32, dt.float32)]))
    x = (rng.integers(-64, 64, _shape(data)) / 8).astype(src)
    return Case([x], {"dtype": dst}, eps=0.25)


@case("broadcast")
def _broadcast(name, data, rng):
    out = _shape(data, max_dims=4)
    drop = data.draw(st.integers(0, len(out)))
    src = [1 if data.draw(st.booleans()) else s for s in out[drop:]]
    return Case([rng.normal(size=src)], {"shape": list(out)})


@case("sum")
def _sum(name, data, rng):
    s = _shape(data)
    axes = data.draw(st.sets(st.integers(0, max(len(s) - 1, 0)), max_size=len(s))) if s else set()
    axes = [a - len(s) if data.draw(st.booleans()) else a for a in axes]  # negative axes too
    return Case([rng.normal(size=s)], {"axes": axes, "keepdims": data.draw(st.booleans())})


@case("cumsum")
def _cumsum(name, data, rng):
    s = _shape(data, min_dims=1)
    axis = data.draw(st.integers(-len(s), len(s) - 1))
    return Case([rng.normal(size=s)], {"axis": axis, "reverse": data.draw(st.booleans())})


@case("sort")
def _sort(name, data, rng):
    s = _shape(data, min_dims=1, max_side=6)
    axis = data.draw(st.integers(-len(s), len(s) - 1))
    return Case([_distinct(rng, s)], {"axis": axis, "descending": data.draw(st.booleans())})


def _orthogonal(rng, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def _spectrum(data, rng, k: int, lo: float = 0.5) -> np.ndarray:
    """k values at least 0.5 apart (first-order perturbation theory of the factors divides by gaps)."""
    return lo + 0.7 * rng.permutation(k) + rng.uniform(0, 0.1, k)


def _batch(data) -> tuple[int, ...]:
    return data.draw(st.sampled_from([(), (2,)]))


@case("svd")
def _svd(name, data, rng):
    batch, m, n = _batch(data), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    k = min(m, n)
    full = data.draw(st.booleans())
    mats = []
    for _ in range(math.prod(batch)):
        s = _spectrum(data, rng, k)
        mats.append(_orthogonal(rng, m)[:, :k] @ np.diag(s) @ _orthogonal(rng, n)[:, :k].T)
    mask = None
    if full and m != n:  # the extra columns of U and V are not unique: no gradient flows from them (torch's rule)
        w = max(m, n)
        mask = np.zeros(batch + (m + 1 + n, w))
        mask[..., :m, :k] = mask[..., m, :k] = mask[..., m + 1:, :k] = 1
    return Case([np.array(mats).reshape(batch + (m, n))], {"full_matrices": full}, cotangent_mask=mask)


def _symmetric_lower(rng, batch, n, spectrum, noise: float = 1.0) -> np.ndarray:
    """Symmetric matrices of a given spectrum with noise in the upper triangle (which eigh does not read)."""
    mats = []
    for _ in range(math.prod(batch)):
        q = _orthogonal(rng, n)
        mats.append(q @ np.diag(spectrum()) @ q.T + noise * np.triu(rng.normal(size=(n, n)), 1))
    return np.array(mats).reshape(batch + (n, n))


@case("eigh")
def _eigh(name, data, rng):
    n, batch, upper = data.draw(st.integers(1, 4)), _batch(data), data.draw(st.booleans())
    a = _symmetric_lower(rng, batch, n, lambda: _spectrum(data, rng, n, -1.2))
    return Case([np.swapaxes(a, -1, -2) if upper else a], {"upper": upper})


@case("eig")
def _eig(name, data, rng):
    """Non-symmetric matrices of a real, well-separated spectrum (P diag P^-1): real unit-norm
    eigenvectors, whose LAPACK sign finite differences can follow. The cotangent of Im V is zero: it
    would make the loss depend on the eigenvectors' phase, which torch (and the rule) refuse."""
    n, batch = data.draw(st.integers(1, 4)), _batch(data)
    mats = []
    for _ in range(math.prod(batch)):
        p = _orthogonal(rng, n) + 0.3 * rng.normal(size=(n, n))
        mats.append(p @ np.diag(_spectrum(data, rng, n, -1.2)) @ np.linalg.inv(p))
    mask = np.ones(batch + (2 * n + 2, n))
    mask[..., 2 + n:, :] = 0
    return Case([np.array(mats).reshape(batch + (n, n))], cotangent_mask=mask)


@case("qr")
def _qr(name, data, rng):
    batch, m, n = _batch(data), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    a = rng.normal(size=batch + (m, n)) * 0.3
    k = min(m, n)
    a[..., np.arange(k), np.arange(k)] += rng.choice([-1.5, 1.5], batch + (k,))  # R well conditioned
    return Case([a], {"complete": m <= n and data.draw(st.booleans())})


@case("pinv")
def _pinv(name, data, rng):
    batch, m, n = _batch(data), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    if data.draw(st.booleans()):
        # (symmetric: torch's pinv gradient, like its hermitian=True, assumes A is; eigh's reads only V and L)
        a = _symmetric_lower(rng, batch, m, lambda: _spectrum(data, rng, m) * rng.choice([-1.0, 1.0], m), 0.0)
        return Case([a], {"hermitian": True, "rtol": 1e-9})
    k = min(m, n)
    mats = [_orthogonal(rng, m)[:, :k] @ np.diag(_spectrum(data, rng, k)) @ _orthogonal(rng, n)[:, :k].T
            for _ in range(math.prod(batch))]
    return Case([np.array(mats).reshape(batch + (m, n))], {"rtol": 1e-9})


def read_triangle(g: np.ndarray, upper: bool) -> np.ndarray:
    """torch's gradient of a function of one triangle (eigh, a hermitian pinv) as finite differences see
    it: the derivative along each read element moves the symmetric pair, the other triangle none."""
    sym = g + np.swapaxes(g, -1, -2)
    d = np.einsum("...ii->...i", g)
    out = np.triu(sym, 1) if upper else np.tril(sym, -1)
    idx = np.arange(g.shape[-1])
    out[..., idx, idx] = d
    return out


FD_VIEW: dict[str, Callable] = {  # ops whose torch-convention gradient differs from the derivative of what they read
    "eigh": lambda c, g: read_triangle(g, c.attrs["upper"]),
    "pinv": lambda c, g: read_triangle(g, False) if c.attrs.get("hermitian") else g,
}


@case("all_reduce")
def _all_reduce(name, data, rng):
    return Case([rng.normal(size=_shape(data))], {"reduction": data.draw(st.sampled_from(["mean", "sum"]))})


@case("all_gather")
def _all_gather(name, data, rng):  # one process: the identity (two: tests/test_distributed_collectives.py)
    return Case([rng.normal(size=_shape(data, min_dims=1))], {})


@case("max")
def _max(name, data, rng):
    s = _shape(data, min_dims=1)
    axes = sorted(data.draw(st.sets(st.integers(0, len(s) - 1), min_size=1)))
    return Case([_distinct(rng, s)], {"axes": axes, "keepdims": data.draw(st.booleans())})


@case("reshape")
def _reshape(name, data, rng):
    s = _shape(data)
    n = math.prod(s)
    to = data.draw(st.sampled_from([[n], list(reversed(s)), [1, n], [n, 1, 1]]))
    return Case([rng.normal(size=s)], {"shape": to})


@case("transpose")
def _transpose(name, data, rng):
    s = _shape(data)
    return Case([rng.normal(size=s)], {"perm": data.draw(st.permutations(range(len(s))))})


@case("slice")
def _slice(name, data, rng):
    s = _shape(data, min_dims=1, max_side=7)
    start, limit, step = [], [], []
    for d in s:
        a = data.draw(st.integers(0, d - 1))
        start.append(a)
        limit.append(data.draw(st.integers(a + 1, d)))
        step.append(data.draw(st.integers(1, 3)))
    return Case([rng.normal(size=s)], {"start": start, "limit": limit, "step": step})


@case("concat")
def _concat(name, data, rng):
    s = list(_shape(data, min_dims=1))
    ax = data.draw(st.integers(0, len(s) - 1))
    xs = []
    for _ in range(data.draw(st.integers(1, 3))):
        s[ax] = data.draw(st.integers(1, 3))
        xs.append(rng.normal(size=s))
    return Case(xs, {"axis": ax})


@case("pad")
def _pad(name, data, rng):
    s = _shape(data, min_dims=1)  # the numpy reference cannot pad a 0-d array (np.pad rejects [] widths)
    lo = [data.draw(st.integers(0, 2)) for _ in s]
    hi = [data.draw(st.integers(0, 2)) for _ in s]
    return Case([rng.normal(size=s)], {"low": lo, "high": hi, "value": float(rng.normal())})


@case("matmul")
def _matmul(name, data, rng):
    batch = list(_shape(data, max_dims=2, max_side=3))
    m, k, n = (data.draw(st.integers(1, 4)) for _ in range(3))
    return Case([rng.normal(size=batch + [m, k]), rng.normal(size=batch + [k, n])])


def _conv_setup(data):
    """(x shape, w shape, dy shape, attrs) of a random small convolution."""
    g = data.draw(st.integers(1, 2))
    cg, og = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    attrs = {"stride": [data.draw(st.integers(1, 2)) for _ in "hw"],
             "padding": [data.draw(st.integers(0, 1)) for _ in "hw"],
             "dilation": [data.draw(st.integers(1, 2)) for _ in "hw"], "groups": g}
    n = data.draw(st.integers(1, 2))
    h = data.draw(st.integers(attrs["dilation"][0] * (kh - 1) + 1, 6))
    w = data.draw(st.integers(attrs["dilation"][1] * (kw - 1) + 1, 6))
    (sh, sw), (ph, pw), (dh, dw) = attrs["stride"], attrs["padding"], attrs["dilation"]
    oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return (n, g * cg, h, w), (g * og, cg, kh, kw), (n, g * og, oh, ow), attrs


@case("conv2d")
def _conv2d(name, data, rng):
    xs, ws, _, attrs = _conv_setup(data)
    return Case([rng.normal(size=xs), rng.normal(size=ws)], attrs)


@case("conv2d_grad_input")
def _conv2d_grad_input(name, data, rng):
    xs, ws, ys, attrs = _conv_setup(data)
    return Case([rng.normal(size=ys), rng.normal(size=ws)], {**attrs, "input_shape": list(xs)})


@case("conv2d_grad_weight")
def _conv2d_grad_weight(name, data, rng):
    xs, ws, ys, attrs = _conv_setup(data)
    return Case([rng.normal(size=xs), rng.normal(size=ys)], {**attrs, "weight_shape": list(ws)})


def _pool_setup(data):
    k = [data.draw(st.integers(1, 3)) for _ in "hw"]
    attrs = {"kernel": k, "stride": [data.draw(st.integers(1, 2)) for _ in "hw"],
             "padding": [data.draw(st.integers(0, kk // 2)) for kk in k]}
    shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)),
             data.draw(st.integers(k[0], 6)), data.draw(st.integers(k[1], 6)))
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    out = shape[:2] + ((shape[2] + 2 * ph - kh) // sh + 1, (shape[3] + 2 * pw - kw) // sw + 1)
    return shape, out, attrs


@case("max_pool2d")
def _max_pool2d(name, data, rng):
    shape, _, attrs = _pool_setup(data)
    return Case([_distinct(rng, shape)], attrs)


@case("max_pool2d_grad")
def _max_pool2d_grad(name, data, rng):
    shape, out, attrs = _pool_setup(data)
    return Case([_distinct(rng, shape), rng.normal(size=out)], attrs)


@case("avg_pool2d")
def _avg_pool2d(name, data, rng):
    shape, _, attrs = _pool_setup(data)
    return Case([rng.normal(size=shape)], {**attrs, "count_include_pad": data.draw(st.booleans())})


@case("avg_pool2d_grad")
def _avg_pool2d_grad(name, data, rng):
    shape, out, attrs = _pool_setup(data)
    return Case([rng.normal(size=out)], {**attrs, "input_shape": list(shape),
                                         "count_include_pad": data.draw(st.booleans())})


@case("take")
def _take(name, data, rng):
    s = _shape(data, min_dims=1)
    ax = data.draw(st.integers(0, len(s) - 1))
    idx = rng.integers(0, s[ax], _shape(data, max_dims=2))  # repeats: their gradients must add up
    return Case([rng.normal(size=s), idx.astype(data.draw(st.sampled_from([np.int64, np.int32])))], {"axis": ax})


@case("index_add")
def _index_add(name, data, rng):
    s = _shape(data, min_dims=1)
    size = data.draw(st.integers(1, 5))
    idx = rng.integers(0, size, s[0])  # repeats: their rows must add up
    return Case([rng.normal(size=s), idx.astype(data.draw(st.sampled_from([np.int64, np.int32])))], {"size": size})


@case("index_max")
def _index_max(name, data, rng):
    s = _shape(data, min_dims=1)
    size = data.draw(st.integers(1, 4))
    n = max(s[0], size)  # every row named (no -inf), several rows competing for some
    idx = rng.permutation(np.concatenate([np.arange(size), rng.integers(0, size, n - size)]))
    return Case([rng.normal(size=(n,) + s[1:]), idx.astype(data.draw(st.sampled_from([np.int64, np.int32])))],
                {"size": size})


# -- torch twins -------------------------------------------------------------------------------

def _t_conv_grad_input(a, dy, w):
    x0 = torch.zeros(a["input_shape"], dtype=dy.dtype, requires_grad=True)
    y = F.conv2d(x0, w, stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"])
    return torch.autograd.grad(y, x0, dy, create_graph=True)[0]


def _t_conv_grad_weight(a, x, dy):
    w0 = torch.zeros(a["weight_shape"], dtype=x.dtype, requires_grad=True)
    y = F.conv2d(x, w0, stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"])
    return torch.autograd.grad(y, w0, dy, create_graph=True)[0]


def _t_pool_grad(pool):
    def f(a, *xs):
        if len(xs) == 2:  # max_pool2d_grad(x, dy)
            x, dy = xs
        else:
            dy, x = xs[0], torch.zeros(a["input_shape"], dtype=xs[0].dtype, requires_grad=True)
        x = x if x.requires_grad else x.detach().requires_grad_()
        return torch.autograd.grad(pool(a, x), x, dy, create_graph=True)[0]
    return f


def _t_max_pool(a, x):
    return F.max_pool2d(x, a["kernel"], a["stride"], a["padding"])


def _t_avg_pool(a, x):
    return F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"], count_include_pad=a["count_include_pad"])


def _t_take(a, x, idx):
    ax = a["axis"]
    out = x.index_select(ax, idx.reshape(-1).long())
    return out.reshape(x.shape[:ax] + idx.shape + x.shape[ax + 1:])


def _flip_like(ref: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    """t's columns times +-1 so that they point as ref's (numpy's LAPACK may pick other signs than torch's):
    a constant flip, so the gradient is that of the same factorization Avalon computes."""
    s = np.sign(np.sum(ref * t.detach().numpy(), axis=-2, keepdims=True))
    return t * torch.tensor(np.where(s == 0, 1.0, s))


def _pack(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    return torch.cat([F.pad(r, (0, width - r.shape[-1])) for r in rows], -2)


def _t_svd(a, x):
    m, n, k = x.shape[-2], x.shape[-1], min(x.shape[-2:])
    full = a["full_matrices"]
    u, s, vh = torch.linalg.svd(x, full_matrices=full)
    nu, _, nvh = np.linalg.svd(x.detach().numpy(), full_matrices=full)
    u, v = _flip_like(nu, u), _flip_like(np.swapaxes(nvh, -1, -2), vh.mT)
    return _pack([u, s.unsqueeze(-2), v], max(m, n) if full else k)


def _t_eigh(a, x):
    lam, v = torch.linalg.eigh(x, UPLO="U" if a["upper"] else "L")
    v = _flip_like(np.linalg.eigh(x.detach().numpy(), UPLO="U" if a["upper"] else "L")[1], v)
    return torch.cat([lam.unsqueeze(-2), v], -2)


def _t_eig(a, x):
    """torch's eig, its eigenpairs put in numpy's order (LAPACK builds may order them differently) and its
    real eigenvectors' signs as numpy's: constants, so the gradient is that of Avalon's factorization."""
    w, v = torch.linalg.eig(x)
    nw, nv = np.linalg.eig(x.detach().numpy())
    order = np.abs(w.detach().numpy()[..., None, :] - nw[..., :, None]).argmin(-1)  # numpy's i -> torch's j
    w = torch.take_along_dim(w, torch.tensor(order), -1)
    v = torch.take_along_dim(v, torch.tensor(order)[..., None, :], -1)
    flip = np.sign(np.sum(np.real(nv.conj() * v.detach().numpy()), axis=-2, keepdims=True))
    v = v * torch.tensor(np.where(flip == 0, 1.0, flip))
    return torch.cat([w.real.unsqueeze(-2), w.imag.unsqueeze(-2), v.real, v.imag], -2)


def _t_qr(a, x):
    q, r = torch.linalg.qr(x, mode="complete" if a["complete"] else "reduced")
    nq = np.linalg.qr(x.detach().numpy(), mode="complete" if a["complete"] else "reduced")[0]
    fq = _flip_like(nq, q)
    flips = (fq.detach() * q.detach()).sum(-2)  # +-1 per column of Q: the same rows of R flip
    return _pack([fq, r * flips.unsqueeze(-1)], max(q.shape[-1], x.shape[-1]))


def _t_pad(a, x):
    flat = [p for lo, hi in reversed(list(zip(a["low"], a["high"]))) for p in (lo, hi)]
    return F.pad(x, flat, value=a["value"]) if flat else x


def _t_conv(a, x, w):
    return F.conv2d(x, w, stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"])


TORCH: dict[str, Callable] = {
    **{n: (lambda f: lambda a, x: f(x))(getattr(torch, n)) for n in ("exp", "log", "tanh", "sigmoid", "sqrt",
                                                                      "rsqrt", "erf", "neg", "abs", "relu",
                                                                      "sin", "cos")},
    **{n: (lambda f: lambda a, x, y: f(x, y))(getattr(torch, n)) for n in ("add", "sub", "mul", "div", "pow",
                                                                            "maximum", "minimum")},
    "where": lambda a, c, x, y: torch.where(c, x, y),
    "check": lambda a, x, ok: x.clone(),  # (torch's value checks are inside its ops: the identity where they pass)
    "cast": lambda a, x: x.to(getattr(torch, dt.PY_NAMES[a["dtype"].name])),
    "broadcast": lambda a, x: torch.broadcast_to(x, a["shape"]),
    "sum": lambda a, x: x.sum(dim=a["axes"], keepdim=a["keepdims"]) if a["axes"] else x,
    "all_reduce": lambda a, x: x.clone(),  # one process (no group installed): the identity
    "all_gather": lambda a, x: x.clone(),  # one process: the identity
    "svd": _t_svd,
    "eigh": _t_eigh,
    "eig": _t_eig,
    "qr": _t_qr,
    "pinv": lambda a, x: torch.linalg.pinv(x, atol=a["atol"], rtol=a["rtol"], hermitian=a["hermitian"]),
    "cumsum": lambda a, x: (x.flip(a["axis"]).cumsum(a["axis"]).flip(a["axis"]) if a["reverse"]
                            else x.cumsum(a["axis"])),
    "max": lambda a, x: torch.amax(x, dim=a["axes"], keepdim=a["keepdims"]),
    "sort": lambda a, x: torch.sort(x, dim=a["axis"], descending=a["descending"], stable=True).values,
    "reshape": lambda a, x: x.reshape(a["shape"]),
    "transpose": lambda a, x: x.permute(a["perm"]),
    "slice": lambda a, x: x[tuple(slice(s, e, st) for s, e, st in zip(a["start"], a["limit"], a["step"]))],
    "concat": lambda a, *xs: torch.cat(xs, a["axis"]),
    "pad": _t_pad,
    "matmul": lambda a, x, y: x @ y,
    "conv2d": _t_conv,
    "conv2d_grad_input": _t_conv_grad_input,
    "conv2d_grad_weight": _t_conv_grad_weight,
    "max_pool2d": _t_max_pool,
    "max_pool2d_grad": _t_pool_grad(_t_max_pool),
    "avg_pool2d": _t_avg_pool,
    "avg_pool2d_grad": _t_pool_grad(_t_avg_pool),
    "take": _t_take,
    "index_add": lambda a, v, idx: torch.zeros((a["size"],) + v.shape[1:], dtype=v.dtype).index_add(0, idx.long(), v),
    "index_max": lambda a, v, idx: torch.full((a["size"],) + v.shape[1:], -np.inf, dtype=v.dtype).index_reduce(
        0, idx.long(), v, "amax", include_self=False),
}


# -- machinery ---------------------------------------------------------------------------------

def _one_op_graph(name: str, c: Case) -> tuple[Graph, TensorType]:
    g = Graph(f"d_{name}")
    ins = [g.add_input(TensorType(a.shape, dt.dtype(a.dtype)), f"x{i}") for i, a in enumerate(c.operands)]
    b = Builder(g)
    y = b(name, *ins, **c.attrs)
    r = g.add_input(y.type, "r")
    g.set_outputs([b("sum", b("mul", y, r), axes=list(range(y.type.rank)))])
    return g, y.type


def _float_operands(c: Case) -> list[int]:
    return [i for i, a in enumerate(c.operands) if a.dtype.kind == "f"]


def _avalon_grads(name: str, c: Case, r: np.ndarray) -> list[np.ndarray]:
    g, _ = _one_op_graph(name, c)
    gg = grad_graph(g, _float_operands(c))
    ir.verify(gg)
    text = str(gg)
    assert str(ir.parse(text)) == text
    outs = interpret(gg, *c.operands, r)
    for i, gr in zip(_float_operands(c), outs[1:]):
        assert gr.shape == c.operands[i].shape and gr.dtype == c.operands[i].dtype
    return list(outs[1:])


def _draw(name: str, data) -> tuple[Case, np.ndarray]:
    rng = _rng(data)
    c = CASES[name](name, data, rng)
    c.operands = [np.asarray(a) for a in c.operands]  # 0-d draws come back as numpy scalars
    _, yt = _one_op_graph(name, c)
    r = np.asarray(rng.normal(size=yt.shape)).astype(yt.dtype.np)
    if c.cotangent_mask is not None:
        r = (r * c.cotangent_mask).astype(yt.dtype.np)
    return c, r


def _finite_differences(name: str, c: Case, r: np.ndarray) -> list[np.ndarray]:
    _, yt = _one_op_graph(name, c)

    def loss(arrays):
        return float(np.sum(evaluate(name, ir.lookup(name).normalize_attrs(c.attrs), arrays, yt).astype(np.float64)
                            * r.astype(np.float64)))

    out = []
    for i in _float_operands(c):
        x = c.operands[i]
        d = np.zeros(x.shape, np.float64)
        for j in np.ndindex(x.shape):
            hi, lo = [a.copy() for a in c.operands], [a.copy() for a in c.operands]
            hi[i][j] += c.eps
            lo[i][j] -= c.eps
            d[j] = (loss(hi) - loss(lo)) / (2 * c.eps)
        out.append(d)
    return out


DIFFERENTIABLE = sorted(VJP)


def test_every_op_has_a_rule_or_is_listed():
    missing = sorted(n for n in ir.OPS if n not in VJP and n not in NON_DIFFERENTIABLE and n not in INLINED)
    assert not missing, f"ops with no VJP rule that are not listed in NON_DIFFERENTIABLE: {', '.join(missing)}"
    assert not (set(VJP) & NON_DIFFERENTIABLE)
    stale = sorted(n for n in set(VJP) | NON_DIFFERENTIABLE if n not in ir.OPS)
    assert not stale, f"rules for ops the registry does not define: {stale}"


def test_every_rule_is_checked():
    assert set(CASES) == set(VJP) and set(TORCH) == set(VJP)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
@settings(max_examples=15)
@given(data=st.data())
def test_vjp_matches_finite_differences(name, data):
    c, r = _draw(name, data)
    view = FD_VIEW.get(name, lambda c, g: g)
    for got, want in zip(_avalon_grads(name, c, r), _finite_differences(name, c, r)):
        np.testing.assert_allclose(view(c, got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
@settings(max_examples=15)
@given(data=st.data())
def test_vjp_matches_torch(name, data):
    c, r = _draw(name, data)
    ts = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in c.operands]
    y = TORCH[name](ir.lookup(name).normalize_attrs(c.attrs), *ts)
    want = torch.autograd.grad((y * torch.tensor(r)).sum(), [ts[i] for i in _float_operands(c)], allow_unused=True)
    for i, got, w in zip(_float_operands(c), _avalon_grads(name, c, r), want):
        w = np.zeros_like(c.operands[i]) if w is None else w.detach().numpy()
        np.testing.assert_allclose(got, w, rtol=1e-9, atol=1e-10)


# -- kinks and ties: the conventions are torch's -----------------------------------------------

def _grads_both(name: str, operands: list[np.ndarray], attrs: dict | None = None):
    c = Case(operands, attrs or {})
    r = np.random.default_rng(1).normal(size=_one_op_graph(name, c)[1].shape)
    ts = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in operands]
    y = TORCH[name](ir.lookup(name).normalize_attrs(c.attrs), *ts)
    want = torch.autograd.grad((y * torch.tensor(r)).sum(), [ts[i] for i in _float_operands(c)])
    return _avalon_grads(name, c, r), [w.numpy() for w in want]


@pytest.mark.parametrize("name,operands,attrs", [
    ("maximum", [np.array([1.0, 2.0, 3.0, -1.0]), np.array([1.0, 5.0, 0.0, -1.0])], None),
    ("minimum", [np.array([1.0, 2.0, 3.0, -1.0]), np.array([1.0, 5.0, 0.0, -1.0])], None),
    ("max", [np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])], {"axes": [1]}),
    ("max", [np.array([[1.0, 3.0, 3.0], [2.0, 3.0, 2.0]])], {"axes": [0, 1]}),
    ("relu", [np.array([-1.0, 0.0, 2.0])], None),
    ("sort", [np.array([[2.0, 1.0, 2.0, 1.0, 0.0], [3.0, 3.0, 3.0, -1.0, 3.0]])], {"axis": 1, "descending": True}),
    ("sort", [np.array([[2.0, 1.0, 2.0], [1.0, 1.0, 0.0]])], {"axis": 0}),
    ("abs", [np.array([-1.0, 0.0, 2.0])], None),
    ("pow", [np.array([0.0, 0.0, 2.0, 3.0]), np.array([0.0, 2.0, 0.0, 1.5])], None),
    ("max_pool2d", [np.array([[[[1.0, 1.0, 0.0], [1.0, 1.0, 2.0], [0.0, 2.0, 2.0]]]])],
     {"kernel": [2, 2], "stride": [1, 1]}),
    ("index_max", [np.array([[2.0, 1.0], [2.0, 0.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]]), np.array([0, 0, 1, 0, 1])],
     {"size": 2}),  # three rows tie for row 0's first column, two for its second and for row 1's
])
def test_kinks_and_ties_follow_torch(name, operands, attrs):
    got, want = _grads_both(name, operands, attrs)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12)
