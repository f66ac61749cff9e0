"""torch's common tensor API in Avalon (avalon/ops: mathfn, stats, matrices, shapes, dynamic,
tensor_extras): values and dtypes against torch on random inputs with ties, negatives, zeros,
infinities and nan where they matter, gradients against torch's autograd (through `av.grad`, so the
compositions also trace and compile), value-dependent shapes refused inside a trace, `view`'s
error, and a list of every name the port scan found missing, so a regression is visible."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import avalon as av

RNG = np.random.default_rng(20240611)
SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, -2.5, 3.0, 1e-30, 1e6, np.inf, -np.inf, np.nan])


def _data(kind: str, dtype=np.float64) -> np.ndarray:
    if kind == "real":
        x = np.concatenate([RNG.standard_normal(200) * 3, SPECIAL])
    elif kind == "unit":  # (-1, 1) and its edges
        x = np.concatenate([RNG.uniform(-1, 1, 200), [0.0, -0.0, 0.999, -0.999, 1.0, -1.0, 1.5, np.nan]])
    elif kind == "pos":
        x = np.concatenate([RNG.uniform(0, 10, 200), [0.0, 1.0, 2.0, 8.0, 1e-30, 1024.0, 1000.0, np.inf, np.nan]])
    elif kind == "prob":
        x = RNG.uniform(0.01, 0.99, 200)
    else:
        raise AssertionError(kind)
    return x.astype(dtype)


def close(ours, theirs, tol: float) -> None:
    """Same dtype, shape and values (nan where torch has nan; relative error vs float64 torch)."""
    t = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    o = ours.numpy() if isinstance(ours, av.tensor(0).__class__) else np.asarray(ours)
    if isinstance(theirs, torch.Tensor):
        assert str(ours.dtype) == {torch.float32: "f32", torch.float64: "f64", torch.int64: "i64",
                                   torch.int32: "i32", torch.bool: "i1"}[theirs.dtype], (ours.dtype, theirs.dtype)
    assert o.shape == t.shape, (o.shape, t.shape)
    if o.dtype == bool or o.dtype.kind in "iu":
        np.testing.assert_array_equal(o, t)
        return
    np.testing.assert_allclose(o, t, rtol=tol, atol=tol, equal_nan=True)


UNARY = [  # name, input kind, f64 tolerance, f32 tolerance
    ("absolute", "real", 0, 0), ("negative", "real", 0, 0), ("ceil", "real", 0, 0), ("round", "real", 0, 0),
    ("frac", "real", 0, 0), ("tan", "real", 1e-12, 2e-6), ("sinh", "real", 1e-13, 2e-6),
    ("cosh", "real", 1e-13, 2e-6), ("atan", "real", 1e-15, 1e-6), ("asin", "unit", 1e-14, 1e-6),
    ("acos", "unit", 1e-14, 1e-6), ("log2", "pos", 1e-15, 1e-6), ("log10", "pos", 1e-15, 1e-6),
    ("lgamma", "real", 1e-11, 2e-6), ("digamma", "real", 1e-11, 5e-6), ("erfinv", "unit", 1e-12, 3e-6),
    ("logit", "prob", 1e-14, 1e-6), ("signbit", "real", 0, 0), ("deg2rad", "real", 1e-15, 1e-7),
    ("rad2deg", "real", 1e-15, 1e-7), ("nan_to_num", "real", 0, 0), ("sgn", "real", 0, 0),
]


@pytest.mark.parametrize("name,kind,tol64,tol32", UNARY, ids=[u[0] for u in UNARY])
def test_unary_functions_and_methods_match_torch(name, kind, tol64, tol32):
    for dtype, tol in ((np.float64, tol64), (np.float32, tol32)):
        x = _data(kind, dtype)
        want = getattr(torch, name)(torch.tensor(x))
        close(getattr(av, name)(av.tensor(x)), want, tol)
        close(getattr(av.tensor(x), name)(), want, tol)


def test_exact_logs_rounding_and_signed_zeros():
    x = av.tensor([8.0, 1024.0, 0.125, 1000.0, 1e-3], dtype=av.float64)
    assert av.log2(x).tolist()[:3] == [3.0, 10.0, -3.0] and av.log10(x).tolist()[3:] == [3.0, -3.0]
    y = np.array([2.5, 3.5, -2.5, 0.5, 1.2345, -0.0051, 125.0])
    for d in (0, 2, -1):
        close(av.round(av.tensor(y), decimals=d), torch.round(torch.tensor(y), decimals=d), 1e-15)
    assert av.signbit(av.tensor([-0.0, 0.0, -1.0])).tolist() == [True, False, True]
    ys, xs = np.array([0.0, -0.0, 0.0, -0.0, np.inf, -np.inf, 1.0]), np.array([0.0, 0.0, -0.0, -0.0, np.inf, -1.0, -0.0])
    close(av.atan2(av.tensor(ys), av.tensor(xs)), torch.atan2(torch.tensor(ys), torch.tensor(xs)), 1e-15)


BINARY = [  # name, kinds, f64 tolerance
    ("atan2", ("real", "real"), 1e-15), ("hypot", ("real", "real"), 1e-15), ("logaddexp", ("real", "real"), 1e-14),
    ("xlogy", ("real", "pos"), 1e-14), ("float_power", ("pos", "real"), 1e-14), ("heaviside", ("real", "real"), 0),
    ("clamp_min", ("real", "real"), 0), ("clamp_max", ("real", "real"), 0), ("logical_xor", ("real", "real"), 0),
]


@pytest.mark.parametrize("name,kinds,tol", BINARY, ids=[b[0] for b in BINARY])
def test_binary_functions_match_torch(name, kinds, tol):
    a, b = _data(kinds[0]), _data(kinds[1])
    n = min(a.size, b.size)
    a, b = a[:n], RNG.permutation(b[:n])
    want = getattr(torch, name)(torch.tensor(a), torch.tensor(b))
    close(getattr(av, name)(av.tensor(a), av.tensor(b)), want, tol)
    close(getattr(av.tensor(a), name)(av.tensor(b)), want, tol)


def test_xlogy_and_heaviside_edges():
    x, y = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 2.0]), np.array([0.0, -1.0, np.nan, 2.0, np.inf, np.nan])
    close(av.xlogy(av.tensor(x), av.tensor(y)), torch.xlogy(torch.tensor(x), torch.tensor(y)), 0)
    close(av.heaviside(av.tensor([1, 0, -1]), av.tensor([5])), torch.heaviside(torch.tensor([1, 0, -1]),
                                                                               torch.tensor([5])), 0)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_bitwise_ops_match_torch(dtype):
    if dtype is np.bool_:
        a, b = RNG.random(50) < 0.5, RNG.random(50) < 0.5
    else:
        info = np.iinfo(dtype)
        a = RNG.integers(info.min, info.max, 50, dtype=dtype, endpoint=True)
        b = RNG.integers(info.min, info.max, 50, dtype=dtype, endpoint=True)
        a[:3] = [info.min, info.max, 0]
    ta, tb, xa, xb = torch.tensor(a), torch.tensor(b), av.tensor(a), av.tensor(b)
    for name, op in (("bitwise_and", "__and__"), ("bitwise_or", "__or__"), ("bitwise_xor", "__xor__")):
        close(getattr(av, name)(xa, xb), getattr(torch, name)(ta, tb), 0)
        close(getattr(xa, op)(xb), getattr(ta, op)(tb), 0)
    close(av.bitwise_not(xa), torch.bitwise_not(ta), 0)
    close(~xa, ~ta, 0)
    with pytest.raises(TypeError, match="bitwise_and: not implemented for floating"):
        av.tensor([1.0]) & av.tensor([2.0])


def _ties(shape, dtype=np.float64):
    """Random values with ties and negatives."""
    return RNG.integers(-3, 4, shape).astype(dtype)


REDUCE = [  # id, function of (lib, x), input, tolerance
    ("cummax", lambda L, x: L.cummax(x, 1), "ties", 0), ("cummin", lambda L, x: L.cummin(x, 0), "ties", 0),
    ("cummax_nan", lambda L, x: L.cummax(x, 1), "nan", 0),
    ("logcumsumexp", lambda L, x: L.logcumsumexp(x, 1), "wide", 1e-13),
    ("kthvalue", lambda L, x: L.kthvalue(x, 2, 1, keepdim=True), "distinct", 0),
    ("median_all", lambda L, x: L.median(x), "ties", 0), ("median_dim", lambda L, x: L.median(x, 1).values, "ties", 0),
    ("median_dim_idx", lambda L, x: L.median(x, 0), "distinct", 0),
    ("median_nan", lambda L, x: L.median(x, 1), "nan", 0), ("nanmedian", lambda L, x: L.nanmedian(x, 1).values, "nan", 0),
    ("mode", lambda L, x: L.mode(x, 1), "ties", 0), ("mode_ints", lambda L, x: L.mode(x.long(), 0), "ties", 0),
    ("quantile", lambda L, x: L.quantile(x, 0.3, dim=1, keepdim=True), "real", 1e-14),
    ("quantile_vec", lambda L, x: L.quantile(x, L.tensor([0.0, 0.25, 0.5, 1.0], dtype=x.dtype)), "real", 1e-14),
    ("quantile_nearest", lambda L, x: L.quantile(x, 0.4, 0, interpolation="nearest"), "real", 0),
    ("quantile_midpoint", lambda L, x: L.quantile(x, 0.4, 1, interpolation="midpoint"), "real", 1e-14),
    ("quantile_lower", lambda L, x: L.quantile(x, 0.7, 1, interpolation="lower"), "real", 0),
    ("quantile_higher", lambda L, x: L.quantile(x, 0.7, 1, interpolation="higher"), "real", 0),
    ("quantile_nan", lambda L, x: L.quantile(x, 0.5, 1), "nan", 0),
    ("nanquantile", lambda L, x: L.nanquantile(x, 0.5, 1), "nan", 1e-14),
    ("nanmean", lambda L, x: L.nanmean(x, 1), "nan", 1e-14), ("nansum", lambda L, x: L.nansum(x, 0), "nan", 1e-14),
    ("count_nonzero", lambda L, x: L.count_nonzero(x, 1), "ties", 0),
    ("std_mean", lambda L, x: L.std_mean(x, 1), "real", 1e-14),
    ("var_mean", lambda L, x: L.var_mean(x, 0, correction=0), "real", 1e-14),
    ("diff", lambda L, x: L.diff(x, 2, 1), "real", 1e-14),
    ("diff_pre", lambda L, x: L.diff(x, 1, 0, prepend=x[:1], append=x[-1:]), "real", 1e-14),
    ("histc", lambda L, x: L.histc(x, 7, -2.0, 2.0), "real", 0), ("histc_auto", lambda L, x: L.histc(x, 5), "real", 0),
    ("renorm", lambda L, x: L.renorm(x, 2, 0, 1.5), "real", 1e-14),
    ("renorm_p1", lambda L, x: x.renorm(1, 1, 2.0), "real", 1e-14),
    ("sum_to_size", lambda L, x: x.sum_to_size(1, 6), "real", 1e-14),
    ("cov", lambda L, x: L.cov(x), "real", 1e-13), ("corrcoef", lambda L, x: L.corrcoef(x), "real", 1e-13),
    ("cov_w", lambda L, x: L.cov(x, correction=0, fweights=L.tensor([1, 2, 1, 3, 1, 1]),
                                aweights=L.tensor([0.5, 1, 2, 1, 1, 0.25], dtype=x.dtype)), "real", 1e-13),
    ("cdist", lambda L, x: L.cdist(x, x[:2] * 2), "real", 1e-13), ("dist", lambda L, x: L.dist(x, x * 0.5, 3), "real", 1e-13),
    ("nan_to_num", lambda L, x: L.nan_to_num(x, 1.0, 5.0, -5.0), "nan", 0),
]


def _input(kind: str) -> np.ndarray:
    if kind == "ties":
        return _ties((4, 6))
    if kind == "distinct":
        return RNG.permutation(24).reshape(4, 6).astype(np.float64) - 11
    if kind == "nan":
        x = _ties((4, 6))
        x[0, 2] = x[1, 0] = x[1, 4] = np.nan
        x[3] = np.nan
        x[2, 5] = np.inf
        return x
    if kind == "wide":
        return RNG.standard_normal((4, 6)) * 40
    return RNG.standard_normal((4, 6))


def _both(ours, theirs, tol):
    if isinstance(theirs, tuple):
        assert len(ours) == len(theirs)
        for o, t in zip(ours, theirs):
            _both(o, t, tol)
    else:
        close(ours, theirs, tol)


@pytest.mark.parametrize("fn,kind,tol", [r[1:] for r in REDUCE], ids=[r[0] for r in REDUCE])
def test_statistics_and_scans_match_torch(fn, kind, tol):
    x = _input(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _both(fn(av, av.tensor(x)), fn(torch, torch.tensor(x)), tol)


def test_tied_order_statistics_point_at_their_value():
    """Where torch's index among equal values is its kernel's choice, ours must still hold the value."""
    x = av.tensor(_ties((5, 7)))
    for v, i in (av.kthvalue(x, 3, 1), av.median(x, 1), av.mode(x, 1)):
        np.testing.assert_array_equal(np.take_along_axis(x.numpy(), i.numpy()[:, None], 1)[:, 0], v.numpy())


MATRIX = [  # id, function of (lib, a, b) with a (4, 4), b (4, 3); tolerance
    ("dot", lambda L, a, b: L.dot(a[0], b[:, 0]), 1e-14), ("vdot", lambda L, a, b: a[1].vdot(a[2]), 1e-14),
    ("inner", lambda L, a, b: L.inner(a, b.T), 1e-14), ("mv", lambda L, a, b: a.mv(b[:, 1]), 1e-14),
    ("cross", lambda L, a, b: L.cross(b.T, b.T.flip(1), dim=0), 1e-14),
    ("cross_default", lambda L, a, b: L.cross(b, b * 2 + 1), 1e-14),
    ("kron", lambda L, a, b: L.kron(a[:2, :3], b[:3, :2]), 1e-14),
    ("tensordot", lambda L, a, b: L.tensordot(a.reshape(2, 2, 4), b, dims=([2], [0])), 1e-14),
    ("tensordot_int", lambda L, a, b: L.tensordot(a, b, 1), 1e-14),
    ("chain_matmul", lambda L, a, b: L.chain_matmul(a, a, b), 1e-13),
    ("matrix_power", lambda L, a, b: L.matrix_power(a, 5), 1e-12),
    ("matrix_power_neg", lambda L, a, b: a.matrix_power(-2), 1e-10),
    ("matrix_power_0", lambda L, a, b: L.matrix_power(a, 0), 0),
    ("matrix_exp", lambda L, a, b: L.matrix_exp(a), 1e-12), ("matrix_exp_big", lambda L, a, b: (a * 9).matrix_exp(), 1e-10),
    ("inverse", lambda L, a, b: L.inverse(a), 1e-11), ("det", lambda L, a, b: L.det(a), 1e-12),
    ("logdet", lambda L, a, b: L.logdet(a @ a.T), 1e-12), ("slogdet", lambda L, a, b: L.slogdet(a), 1e-12),
    ("triangular_solve", lambda L, a, b: L.triangular_solve(b, a + 4 * L.eye(4, dtype=a.dtype)), 1e-12),
    ("triangular_solve_lower_t", lambda L, a, b: b.triangular_solve(a + 4 * L.eye(4, dtype=a.dtype), upper=False,
                                                                    transpose=True), 1e-12),
    ("triangular_solve_unit", lambda L, a, b: L.triangular_solve(b, a, unitriangular=True), 1e-12),
    ("linalg_solve", lambda L, a, b: L.linalg.solve(a, b), 1e-11),
    ("linalg_inv_batch", lambda L, a, b: L.linalg.inv(L.stack([a, a.T, a + 3 * L.eye(4, dtype=a.dtype)])), 1e-11),
    ("linalg_det_batch", lambda L, a, b: L.linalg.det(L.stack([a, a[[1, 0, 2, 3]], a * 0])), 1e-12),
    ("block_diag", lambda L, a, b: L.block_diag(a[:2, :3], b[0], a[0, 0], b[:1]), 0),
    ("diag_embed", lambda L, a, b: L.diag_embed(b, 1), 0), ("diag_embed_neg", lambda L, a, b: b.diag_embed(-2, 0, 2), 0),
    ("diagflat", lambda L, a, b: L.diagflat(b[:2], -1), 0), ("vander", lambda L, a, b: L.vander(a[0], 3), 1e-14),
    ("vander_inc", lambda L, a, b: L.vander(a[0], increasing=True), 1e-14),
    ("vander_int", lambda L, a, b: L.vander(L.tensor([2, -3, 5])), 0),
    ("combinations", lambda L, a, b: L.combinations(a[0], 3), 0),
    ("combinations_rep", lambda L, a, b: L.combinations(a[0, :3], with_replacement=True), 0),
    ("cartesian_prod", lambda L, a, b: L.cartesian_prod(a[0, :2], b[0], a[1, :3]), 0),
]


@pytest.mark.parametrize("fn,tol", [m[1:] for m in MATRIX], ids=[m[0] for m in MATRIX])
def test_vector_and_matrix_functions_match_torch(fn, tol):
    a, b = RNG.standard_normal((4, 4)), RNG.standard_normal((4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _both(fn(av, av.tensor(a), av.tensor(b)), fn(torch, torch.tensor(a), torch.tensor(b)), tol)


def test_singular_matrices():
    s = np.array([[1.0, 2.0], [2.0, 4.0]])
    assert av.det(av.tensor(s)).item() == 0.0
    assert av.slogdet(av.tensor(s)).logabsdet.item() == -math.inf and av.logdet(av.tensor(s)).item() == -math.inf
    with pytest.raises(RuntimeError, match="singular"):
        av.inverse(av.tensor(s))
    assert math.isnan(av.logdet(av.tensor([[0.0, 1.0], [1.0, 0.0]])).item())


SHAPES = [  # id, function of (lib, x) with x (3, 4); tolerance 0
    ("atleast", lambda L, x: L.atleast_3d(x[0], x, x[0, 0])), ("atleast_1d", lambda L, x: L.atleast_1d(x[0, 0])),
    ("atleast_2d", lambda L, x: L.atleast_2d([x[0], x])),
    ("hstack", lambda L, x: L.hstack([x, x[:, :1]])), ("hstack_1d", lambda L, x: L.hstack([x[0], x[1]])),
    ("vstack", lambda L, x: L.vstack([x, x[0]])), ("dstack", lambda L, x: L.dstack([x, x])),
    ("column_stack", lambda L, x: L.column_stack([x[0], x.T])), ("row_stack", lambda L, x: L.row_stack([x[0], x])),
    ("meshgrid_ij", lambda L, x: L.meshgrid(x[0], x[1, :3], indexing="ij")),
    ("meshgrid_xy", lambda L, x: L.meshgrid(x[0], x[1, :3], x[2, :2], indexing="xy")),
    ("broadcast_tensors", lambda L, x: L.broadcast_tensors(x[:1], x[:, :1])),
    ("ravel", lambda L, x: L.ravel(x.T)), ("swapaxes", lambda L, x: x.swapaxes(0, 1)),
    ("unflatten", lambda L, x: x.unflatten(1, (2, -1))),
    ("tensor_split_n", lambda L, x: L.tensor_split(x, 3, 1)), ("tensor_split_idx", lambda L, x: x.tensor_split([1, 5], 1)),
    ("tensor_split_t", lambda L, x: x.tensor_split(L.tensor(2))),
    ("unfold", lambda L, x: x.unfold(1, 2, 1)), ("unfold_step", lambda L, x: x.unfold(0, 2, 2)),
    ("rot90", lambda L, x: L.rot90(x)), ("rot90_k", lambda L, x: x.rot90(3, [1, 0])), ("rot90_2", lambda L, x: x.rot90(2)),
    ("select", lambda L, x: x.select(1, -1)), ("take", lambda L, x: L.take(x, L.tensor([[0, -1], [5, 3]]))),
    ("take_method", lambda L, x: x.take(L.tensor([11, 2]))),
    ("put", lambda L, x: x.put(L.tensor([1, 5, 1]), L.tensor([9.0, 8.0, 7.0], dtype=x.dtype), accumulate=True)),
    ("masked_scatter", lambda L, x: x.masked_scatter(x > 0, x * 10)),
    ("unravel_index", lambda L, x: L.unravel_index(L.tensor([0, 7, 11, -1]), (3, 4))),
    ("isin", lambda L, x: L.isin(x.round(), L.tensor([0.0, 1.0], dtype=x.dtype))),
    ("isin_invert", lambda L, x: L.isin(x.round(), x[0].round(), invert=True)),
    ("bucketize", lambda L, x: L.bucketize(x, L.tensor([-1.0, 0.0, 0.5], dtype=x.dtype))),
    ("bucketize_right", lambda L, x: L.bucketize(x.round(), L.tensor([-1.0, 0.0, 1.0], dtype=x.dtype), right=True)),
    ("searchsorted", lambda L, x: L.searchsorted(x.sort(1).values, x.round())),
    ("searchsorted_right", lambda L, x: L.searchsorted(L.tensor([-1.0, 0.0, 0.0, 1.0], dtype=x.dtype), x.round(),
                                                       side="right", out_int32=True)),
    ("trapezoid", lambda L, x: L.trapezoid(x)), ("trapz_x", lambda L, x: L.trapz(x, x[0].cumsum(0), dim=1)),
    ("trapezoid_dx", lambda L, x: L.trapezoid(x, dx=0.5, dim=0)),
    ("cumulative_trapezoid", lambda L, x: L.cumulative_trapezoid(x, dim=1)),
    ("tril_indices", lambda L, x: L.tril_indices(4, 3, -1)), ("triu_indices", lambda L, x: L.triu_indices(3, 5, 1)),
    ("logspace", lambda L, x: L.logspace(-2, 3, 6)), ("logspace_base", lambda L, x: L.logspace(0, 4, 5, base=2.0)),
    ("fill_diagonal", lambda L, x: x.clone().fill_diagonal_(7.0)),
    ("fill_diagonal_wrap", lambda L, x: L.zeros(7, 3).fill_diagonal_(2.0, wrap=True)),
    ("clamp_min_", lambda L, x: x.clone().clamp_min_(0.1)), ("bfloat16", lambda L, x: x.bfloat16().float()),
    ("byte", lambda L, x: (x * 100).byte().long()), ("char", lambda L, x: (x * 100).char().long()),
    ("short", lambda L, x: (x * 1e5).short().long()),
    ("stride_t", lambda L, x: L.tensor(x.t().stride())), ("stride_slice", lambda L, x: L.tensor(x[:, 1::2].stride())),
]


@pytest.mark.parametrize("fn", [s[1] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_shape_and_lookup_functions_match_torch(fn):
    x = RNG.standard_normal((3, 4))
    _both(fn(av, av.tensor(x)), fn(torch, torch.tensor(x)), 1e-15)


def test_dtype_queries_and_storage_facts():
    assert av.result_type(av.tensor([1]), 1.0) is av.float32 and av.result_type(av.tensor([1.0]), 2) is av.float32
    assert av.promote_types(av.int32, av.float16) is av.float16 and av.promote_types(av.int64, av.bool) is av.int64
    for a in (av.float64, av.float32, av.int64, av.int32, av.bool):
        for b in (av.float64, av.float32, av.int64, av.int32, av.bool):
            ta, tb = (getattr(torch, {"f64": "float64", "f32": "float32", "i64": "int64", "i32": "int32", "i1": "bool"}[
                str(d)]) for d in (a, b))
            assert av.can_cast(a, b) == torch.can_cast(ta, tb), (a, b)
    assert av.broadcast_shapes((3, 1), (1, 4), 4) == (3, 4)
    x = av.zeros(3, 4)
    assert av.is_floating_point(x) and not av.arange(3).is_floating_point()
    assert (x.element_size(), av.arange(2).element_size(), x.nelement(), x.ndimension()) == (4, 8, 12, 2)
    assert x.stride() == (4, 1) and x.t().stride() == (1, 4) and x[1:, 2:].storage_offset() == 6
    assert x[1].data_ptr() == x.data_ptr() + 16 and x.is_leaf and x.pin_memory() is x and x.get_device() == -1
    y = av.arange(6)
    assert y.resize_(2, 3) is y and y.shape == (2, 3) and y.tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(RuntimeError, match="cannot grow or shrink"):
        y.resize_(7)
    with pytest.raises(RuntimeError, match="gradients are values"):
        av.zeros(2).register_hook(lambda g: g)


def test_view_of_a_non_contiguous_tensor_raises_torchs_error():
    x = av.arange(12).reshape(3, 4)
    for bad in (lambda t: t.t().view(-1), lambda t: t[:, :2].view(6), lambda t: t.t().view(2, 6)):
        with pytest.raises(RuntimeError, match=r"view size is not compatible .* Use \.reshape\(\.\.\.\) instead"):
            bad(x)
        with pytest.raises(RuntimeError, match="view size is not compatible"):
            bad(torch.arange(12).reshape(3, 4))
    v = x.view(2, 6)  # still a view where torch's is one
    v[0, 0] = 99
    assert x[0, 0].item() == 99 and x.t().reshape(-1).shape == (12,) and x.t().contiguous().view(-1).shape == (12,)
    assert x[:, :2].view(3, 2, 1).shape == (3, 2, 1) and x[:, ::2].view(6).shape == (6,) and x.view(av.int64) is x
    assert x.unsqueeze(0).expand(2, 3, 4)[0].view(12).shape == (12,)

    def traced(t):
        return t.t().view(-1)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        av.compile(traced, backend="numpy")(np.ones((2, 3), np.float32))


DYNAMIC = [
    ("nonzero", lambda L, x: L.nonzero(x)), ("nonzero_tuple", lambda L, x: x.nonzero(as_tuple=True)),
    ("argwhere", lambda L, x: L.argwhere(x)), ("masked_select", lambda L, x: L.masked_select(x, x > 0)),
    ("masked_select_bcast", lambda L, x: x.masked_select(L.tensor([True, False, True, True]))),
    ("unique", lambda L, x: L.unique(x, return_inverse=True, return_counts=True)),
    ("unique_dim", lambda L, x: L.unique(x, dim=1, return_inverse=True)),
    ("unique_consecutive", lambda L, x: x.unique_consecutive(return_inverse=True, return_counts=True)),
    ("unique_consecutive_dim", lambda L, x: L.unique_consecutive(x, dim=0, return_counts=True)),
]


@pytest.mark.parametrize("fn", [d[1] for d in DYNAMIC], ids=[d[0] for d in DYNAMIC])
def test_value_dependent_shapes_eagerly(fn):
    x = np.array([[1.0, 0.0, 1.0, 2.0], [1.0, 0.0, 1.0, 2.0], [-1.0, 3.0, 3.0, 0.0]])
    _both(fn(av, av.tensor(x)), fn(torch, torch.tensor(x)), 0)


@pytest.mark.parametrize("name,call,hint", [
    ("nonzero", lambda x: av.nonzero(x), "boolean mask"), ("argwhere", lambda x: x.argwhere(), "boolean mask"),
    ("unique", lambda x: x.unique(), "bincount"), ("unique_consecutive", lambda x: av.unique_consecutive(x), "mask"),
    ("masked_select", lambda x: av.masked_select(x, x > 0), "av.where"),
])
def test_value_dependent_shapes_refused_in_a_trace(name, call, hint):
    with pytest.raises(TypeError, match=rf"{name}: the result's shape depends on the tensor's values.*{hint}"):
        av.compile(call, backend="numpy")(np.ones(3, np.float32))


def test_masked_select_with_a_known_mask_is_differentiable():
    m = np.array([True, False, True, True])
    g = av.grad(lambda x: (av.masked_select(x, av.tensor(m)) ** 2).sum())(av.tensor([1.0, 2.0, 3.0, 4.0]))
    assert g.tolist() == [2.0, 0.0, 6.0, 8.0]


GRADS = [  # id, function of (lib, x) reduced to a scalar by a weighted sum; input kind
    ("atan", lambda L, x: L.atan(x), "real"), ("asin", lambda L, x: L.asin(x * 0.9), "unit"),
    ("acos", lambda L, x: x.mul(0.9).acos(), "unit"), ("atan2", lambda L, x: L.atan2(x, x.flip(0)), "real"),
    ("tan", lambda L, x: L.tan(x * 0.4), "real"), ("sinh_cosh", lambda L, x: L.sinh(x) + L.cosh(x * 0.5), "real"),
    ("lgamma", lambda L, x: L.lgamma(x), "real"), ("digamma", lambda L, x: L.digamma(x), "real"),
    ("erfinv", lambda L, x: L.erfinv(x * 0.95), "unit"), ("logit", lambda L, x: L.logit(x), "prob"),
    ("xlogy", lambda L, x: L.xlogy(x, x.abs() + 0.5), "real"), ("hypot", lambda L, x: L.hypot(x, x.flip(0)), "real"),
    ("logaddexp", lambda L, x: L.logaddexp(x, x.flip(0) * 2), "real"), ("log2", lambda L, x: L.log2(x), "prob"),
    ("cummax", lambda L, x: L.cummax(x, 0).values, "real"), ("logcumsumexp", lambda L, x: L.logcumsumexp(x, 0), "real"),
    ("median", lambda L, x: L.median(x.reshape(4, 5), 1).values, "real"),
    ("quantile", lambda L, x: L.quantile(x.reshape(4, 5), L.tensor([0.2, 0.9], dtype=x.dtype), 1), "real"),
    ("kthvalue", lambda L, x: L.kthvalue(x, 3).values, "real"), ("mode", lambda L, x: L.mode(x.round()).values, "real"),
    ("nanmean", lambda L, x: L.nanmean(x.reshape(4, 5), 0), "real"),
    ("renorm", lambda L, x: L.renorm(x.reshape(4, 5), 2, 0, 1.0), "real"),
    ("cdist", lambda L, x: L.cdist(x.reshape(4, 5), x.reshape(4, 5)[:2] + 1), "real"),
    ("cov", lambda L, x: L.cov(x.reshape(4, 5)), "real"),
    ("inverse", lambda L, x: L.inverse(x[:16].reshape(4, 4) + 3 * L.eye(4, dtype=x.dtype)), "real"),
    ("det", lambda L, x: L.det(x[:16].reshape(4, 4)), "real"),
    ("slogdet", lambda L, x: L.slogdet(x[:16].reshape(4, 4)).logabsdet, "real"),
    ("matrix_exp", lambda L, x: L.matrix_exp(x[:9].reshape(3, 3) * 2), "real"),
    ("triangular_solve", lambda L, x: L.triangular_solve(x[:6].reshape(3, 2), x[:9].reshape(3, 3) + 3 * L.eye(
        3, dtype=x.dtype)).solution, "real"),
    ("cross_kron", lambda L, x: L.cross(x[:3], x[3:6], dim=0).sum() + L.kron(x[:4], x[4:6]), "real"),
    ("unfold", lambda L, x: x.unfold(0, 3, 2), "real"), ("diff", lambda L, x: L.diff(x, 2), "real"),
    ("masked_scatter", lambda L, x: x.masked_scatter(L.tensor([True, False] * 10), x * 3), "real"),
    ("take", lambda L, x: L.take(x, L.tensor([3, -1, 3])), "real"),
]


@pytest.mark.parametrize("fn,kind", [g[1:] for g in GRADS], ids=[g[0] for g in GRADS])
def test_gradients_match_torch(fn, kind):
    x = {"real": RNG.standard_normal(20) * 1.5, "unit": RNG.uniform(-1, 1, 20), "prob": RNG.uniform(0.05, 0.95, 20)}[kind]
    if fn is GRADS[6][1]:  # lgamma/digamma: away from the poles
        x = np.where(np.abs(x - np.round(x)) < 0.1, x + 0.3, x)

    def loss(L, t):
        y = fn(L, t)
        w = L.tensor(np.linspace(-1.0, 2.0, int(np.prod(y.shape))).reshape(y.shape), dtype=y.dtype)
        return (y * w).sum()

    tx = torch.tensor(x, requires_grad=True)
    loss(torch, tx).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        g = av.grad(lambda t: loss(av, t))(av.tensor(x))
    np.testing.assert_allclose(g.numpy(), tx.grad.numpy(), rtol=1e-9, atol=1e-9)


def test_compiled_matches_eager():
    """The compositions as one compiled graph (numpy backend) give the eager values."""
    def f(x):
        return (av.atan2(x, x + 1), av.lgamma(x.abs() + 0.1), av.cummax(x, 1).values, av.logcumsumexp(x, 0),
                av.quantile(x, 0.25, 1), av.erfinv(av.tanh(x)), x.bitwise_not() if x.dtype is av.int64 else x.frac(),
                av.median(x, 0).values, av.det(x[:, :3] @ x[:, :3].T))
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    eager = f(av.tensor(x))
    compiled = av.compile(f, backend="numpy")(x)
    for e, c in zip(eager, compiled):
        np.testing.assert_allclose(c.numpy(), e.numpy(), rtol=2e-6, atol=2e-6)


def test_random_fills_have_their_distributions():
    av.manual_seed(0)
    r = av.zeros(20000).random_(3, 8)
    assert set(np.unique(r.numpy())) == {3.0, 4.0, 5.0, 6.0, 7.0}
    i = av.zeros(1000, dtype=av.int64).random_(10)
    assert i.dtype is av.int64 and i.numpy().min() == 0 and i.numpy().max() == 9
    g = av.zeros(20000).geometric_(0.25).numpy()
    assert g.min() == 1.0 and abs(g.mean() - 4.0) < 0.15
    ln = av.zeros(20000, dtype=av.float64).log_normal_(0.5, 0.25).numpy()
    assert abs(np.log(ln).mean() - 0.5) < 0.01 and abs(np.log(ln).std() - 0.25) < 0.01
    b = av.full((20000,), 0.3).bernoulli().numpy()
    assert set(np.unique(b)) == {0.0, 1.0} and abs(b.mean() - 0.3) < 0.02


def test_set_printoptions_changes_the_repr():
    x = av.tensor([1.123456789])
    try:
        av.set_printoptions(precision=2)
        assert "1.12]" in repr(x) and "1.123" not in repr(x)
    finally:
        av.set_printoptions(profile="default")
    assert "1.1235" in repr(x)


TENSOR_METHODS = """absolute acos asin atan atan2 cosh sinh tan ceil round frac log10 log2 lgamma digamma erfinv logit xlogy
    hypot logaddexp heaviside signbit negative float_power deg2rad rad2deg bitwise_and bitwise_or bitwise_xor bitwise_not
    logical_and logical_or logical_xor allclose isclose equal clamp_min clamp_max count_nonzero cross dot vdot inner mv
    diff diag_embed cummax cummin logcumsumexp kthvalue median nanmedian mode quantile nanmean nansum nan_to_num
    masked_select masked_scatter nonzero argwhere unique unique_consecutive take put_ select tensor_split swapaxes
    unflatten unfold rot90 renorm sum_to_size matrix_power matrix_exp inverse logdet slogdet triangular_solve histc
    fill_diagonal_ bernoulli random_ geometric_ log_normal_ bfloat16 byte char short element_size stride data_ptr
    ndimension nelement is_floating_point is_leaf get_device pin_memory register_hook resize_""".split()
FUNCTIONS = """atleast_1d atleast_2d atleast_3d bucketize searchsorted cartesian_prod combinations cdist chain_matmul
    corrcoef cov cross cummax diag_embed diagflat diff dist histc hstack vstack dstack column_stack isin kron logspace
    masked_select meshgrid nan_to_num nonzero randint_like ravel result_type promote_types can_cast rot90 std_mean
    var_mean take tensordot trapz trapezoid tril_indices triu_indices unique vander block_diag broadcast_tensors
    broadcast_shapes unravel_index is_floating_point set_printoptions count_nonzero renorm""".split()


def test_every_name_the_port_scan_found_missing_exists():
    x = av.zeros(2)
    missing = [m for m in TENSOR_METHODS if not hasattr(type(x), m)] + [f"av.{f}" for f in FUNCTIONS if not hasattr(av, f)]
    assert not missing, missing
    assert all(callable(getattr(av, f)) for f in FUNCTIONS)


def test_randint_like_and_round_trip_of_errors():
    r = av.randint_like(av.zeros(3, 4, dtype=av.int32), 5, 9)
    assert r.shape == (3, 4) and r.dtype is av.int32 and r.numpy().min() >= 5 and r.numpy().max() <= 8
    with pytest.raises(IndexError, match="kthvalue: k \\(7\\) is out of range"):
        av.kthvalue(av.zeros(6), 7)
    with pytest.raises(ValueError, match="q values must be in the range"):
        av.quantile(av.zeros(3), 1.5)
    with pytest.raises(IndexError, match="take: out of range"):
        av.take(av.zeros(2, 2), av.tensor([4]))
