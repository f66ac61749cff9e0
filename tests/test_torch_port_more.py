"""More of torch's tensor functions ported under `import avalon as av`: einsum, flips and rolls,
repeats, diagonals, norms, products, sorting, gather/scatter, sampling, integer `%` and `//`, ...
Each is checked against torch on random values (hypothesis where shapes and values vary): values and
dtypes eagerly and inside `av.compile` (numpy backend), and gradients against torch.autograd in float64."""
import math
import warnings

import numpy as np
import pytest
import torch
from helpers import T, as_numpy, check_like_torch
from helpers import same as _same
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import avalon as av


def same(a, b, tol=1e-6):
    _same(a, b, tol)


def check(f, *arrays, tol=1e-6, **kw):
    check_like_torch(f, *arrays, tol=tol, **kw)


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


floats = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
                    elements=st.floats(-3, 3))
FAST = settings(max_examples=20, deadline=None)


# -- einsum -------------------------------------------------------------------------------------------

EINSUM = [("ij,jk->ik", [(3, 4), (4, 5)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]), ("ij,ij->", [(3, 4), (3, 4)]),
          ("i,j->ij", [(3,), (4,)]), ("ii->i", [(4, 4)]), ("ii", [(4, 4)]), ("ij->ji", [(3, 4)]),
          ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]), ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
          ("i,i", [(5,), (5,)]), ("ijk,kj->i", [(2, 3, 4), (4, 3)]), ("iij->j", [(3, 3, 4)]), ("iji->j", [(3, 4, 3)]),
          ("a...,a->...", [(3, 4, 5), (3,)]), ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]),
          ("ab,cd->abcd", [(2, 3), (4, 5)]), ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),
          ("i...->...", [(3, 4, 5)]), ("...ii->...i", [(2, 3, 3)]), ("ba,ca", [(2, 3), (4, 3)]),
          ("ij,kj->ikj", [(2, 3), (1, 3)]), ("...ij->ij", [(4, 2, 3)])]


@pytest.mark.parametrize("eq,shapes", EINSUM, ids=[e for e, _ in EINSUM])
def test_einsum_matches_torch_with_gradients(eq, shapes):
    arrays = [randn(*s, seed=k) for k, s in enumerate(shapes)]
    check(lambda lib, *xs: lib.einsum(eq, *xs), *arrays, tol=1e-9, compiled=eq in ("bij,bjk->bik", "ii", "bn,anm,bm->ba"))


@FAST
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3))
def test_einsum_contraction_is_a_matmul_for_any_sizes(m, k, n, b):
    x, y = randn(b, m, k), randn(k, n, b, seed=1)
    same(av.einsum("bmk,knb->bnm", x, y), torch.einsum("bmk,knb->bnm", T(x), T(y)), 1e-9)
    same(av.einsum(x, [0, 1, 2], y, [2, 3, 0], [0, 3, 1]), torch.einsum(T(x), [0, 1, 2], T(y), [2, 3, 0], [0, 3, 1]),
         1e-9)
    names = [op.name for op in av.trace(lambda x, y: av.einsum("bmk,knb->bnm", x, y), x, y).ops]
    assert "matmul" in names and "mul" not in names


def test_einsum_errors_name_the_problem():
    with pytest.raises(ValueError, match="einsum"):
        av.einsum("ij,jk->ik", av.ones(2, 3), av.ones(4, 5))
    with pytest.raises(ValueError, match="subscripts"):
        av.einsum("ij,jk", av.ones(2, 3))
    with pytest.raises(ValueError, match="output subscript 'z'"):
        av.einsum("ij->z", av.ones(2, 3))


# -- shapes: flip, roll, repeat, diagonals --------------------------------------------------------------

@FAST
@given(floats, st.data())
def test_flip_roll_repeat_match_torch(a, data):
    d = data.draw(st.integers(-a.ndim, a.ndim - 1))
    x, t = av.tensor(a), T(a)
    same(av.flip(x, d), torch.flip(t, (d,)))
    same(x.flip(list(range(a.ndim))), t.flip(list(range(a.ndim))))
    s = data.draw(st.integers(-7, 7))
    same(av.roll(x, s, d), torch.roll(t, s, d))
    same(x.roll(s), t.roll(s))
    reps = data.draw(st.lists(st.integers(1, 3), min_size=a.ndim, max_size=a.ndim + 1))
    same(x.repeat(*reps), t.repeat(*reps))
    same(av.tile(x, reps[:1]), torch.tile(t, reps[:1]))
    r = data.draw(st.integers(0, 3))
    same(av.repeat_interleave(x, r, d), torch.repeat_interleave(t, r, d))
    counts = data.draw(st.lists(st.integers(0, 3), min_size=a.shape[d], max_size=a.shape[d]))
    same(x.repeat_interleave(av.tensor(counts), dim=d), t.repeat_interleave(torch.tensor(counts), dim=d))
    for ours, theirs in zip(x.unbind(d), t.unbind(d), strict=True):
        same(ours, theirs)
    if a.ndim >= 2:
        same(x.fliplr(), t.fliplr())
    same(av.flipud(x), torch.flipud(t))


@pytest.mark.parametrize("n", [2, 5, 16, 17, 37, 64])
def test_flip_and_roll_of_long_axes_and_their_gradients(n):
    """A flip is one gather at iota-computed indices, so its graph holds no captured index array."""
    check(lambda lib, x: lib.flip(x, (1,)), randn(3, n, 2))
    check(lambda lib, x: lib.roll(x, (n // 3, -1), (1, 2)) * 2, randn(3, n, 2), compiled=n == 37)
    ops = av.trace(lambda x: av.flip(x, (0, 1)), randn(3, n, 2)).ops
    assert [op.name for op in ops].count("take") == 2
    assert not any(op.name == "constant" and isinstance(op.attrs["value"], np.ndarray) for op in ops)


def test_repeat_family_gradients_match_torch():
    a = randn(2, 3)
    check(lambda lib, x: x.repeat(2, 1, 3), a)
    check(lambda lib, x: lib.repeat_interleave(x, 2, dim=1), a)
    check(lambda lib, x: x.repeat_interleave(torch.tensor([2, 0, 1]) if lib is torch else [2, 0, 1], dim=1), a)
    check(lambda lib, x: lib.stack(x.unbind(1), 0), a)
    check(lambda lib, x: lib.movedim(x, (0, 1), (2, 0)), randn(2, 3, 4))
    same(av.repeat_interleave(av.tensor([2, 0, 3])), torch.repeat_interleave(torch.tensor([2, 0, 3])))


@pytest.mark.parametrize("offset", [-3, -1, 0, 2, 5])
def test_diag_diagonal_trace_match_torch(offset):
    check(lambda lib, x: lib.diagonal(x, offset, 0, 2), randn(4, 2, 5))
    check(lambda lib, x: x.diagonal(offset, -1, 1), randn(2, 3, 4), compiled=False)
    check(lambda lib, x: lib.diag(x, offset), randn(4), compiled=offset == 2)
    check(lambda lib, x: x.diag(offset), randn(3, 5), compiled=False)
    check(lambda lib, x: x.trace() * (av.ops if lib is av else torch).trace(x), randn(3, 4), compiled=offset == 0)
    i = np.arange(12, dtype=np.int32).reshape(3, 4)
    same(av.tensor(i).trace(), T(i).trace())
    same(av.diag(av.tensor(i[0]), offset), torch.diag(T(i[0]), offset))


# -- reductions: var/std, norms, prod, all/any, cumsum/cumprod -------------------------------------------

@FAST
@given(floats, st.data())
def test_var_std_take_torchs_arguments(a, data):
    x, t = av.tensor(a), T(a)
    d = data.draw(st.integers(-a.ndim, a.ndim - 1))
    k = data.draw(st.booleans())
    c = data.draw(st.sampled_from([0, 1, 2]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns when n <= correction (inf or nan, ours too)
        same(x.var(dim=d), t.var(dim=d))
        same(av.var(x, d, keepdim=k, correction=c), torch.var(t, d, keepdim=k, correction=c))
        same(x.std(d, unbiased=False, keepdim=k), t.std(d, unbiased=False, keepdim=k))
        same(av.std(x), torch.std(t))
        if a.ndim > 1:
            same(av.std(x, (0, -1), correction=0), torch.std(t, (0, -1), correction=0))
        with pytest.raises(TypeError, match="only one of 'unbiased' and 'correction'"):
            av.var(x, 0, True, correction=0)  # torch refuses the pair too (it was once numpy's keepdims slot)
        with pytest.raises(TypeError, match="only one of"):
            av.std(x, unbiased=True, correction=1)


def test_var_std_gradients_match_torch():
    check(lambda lib, x: x.var(dim=1), randn(3, 4))
    check(lambda lib, x: lib.std(x, 0, keepdim=True), randn(3, 4), compiled=False)


@FAST
@given(floats, st.data())
def test_norms_match_torch(a, data):
    x, t = av.tensor(a), T(a)
    d = data.draw(st.integers(-a.ndim, a.ndim - 1))
    k = data.draw(st.booleans())
    for p in (2, 1, math.inf, -math.inf, 0, 3, 0.5):
        same(av.linalg.vector_norm(x, p, d, k), torch.linalg.vector_norm(t, p, d, k))
        same(x.norm(p), t.norm(p))
    same(av.norm(x, dim=d, keepdim=k), torch.norm(t, dim=d, keepdim=k))
    same(av.linalg.norm(x), torch.linalg.norm(t))
    same(av.linalg.norm(x, dim=d), torch.linalg.norm(t, dim=d))
    if a.ndim >= 2:
        for o in ("fro", 1, -1, math.inf, -math.inf):
            same(av.linalg.matrix_norm(x, o, keepdim=k), torch.linalg.matrix_norm(t, o, keepdim=k))
            same(av.linalg.norm(x, o, dim=(0, -1)), torch.linalg.norm(t, o, dim=(0, -1)))
    if a.ndim == 2:
        same(av.linalg.norm(x, math.inf), torch.linalg.norm(t, math.inf))


def test_norm_gradients_match_torch_including_a_zero_vector():
    a = randn(3, 4)
    a[1] = 0.0
    for p in (2, 1, math.inf, 3):
        check(lambda lib, x, p=p: lib.linalg.vector_norm(x, p, dim=1), a, compiled=p == 2)
    check(lambda lib, x: x.norm(), randn(3, 4), compiled=False)
    check(lambda lib, x: lib.linalg.matrix_norm(x, 1), randn(2, 3, 4), compiled=False)
    for ord in (2, -2, "nuc"):  # from the singular values (test_linalg_factorizations.py has more)
        check(lambda lib, x, o=ord: lib.linalg.matrix_norm(x, o), randn(2, 3, 4), compiled=False)


def test_prod_and_cumprod_match_torch_with_zeros_in_values_and_gradients():
    a = randn(3, 5, 4)
    a[0, 1, 2] = 0.0
    a[1, 2, :] = 0.0
    a[2, 0, 1] = a[2, 3, 1] = 0.0  # two zeros in one product: zero gradient there, as in torch
    check(lambda lib, x: lib.prod(x, 1), a)
    check(lambda lib, x: x.prod(2, keepdim=True), a, compiled=False)
    check(lambda lib, x: x.prod(), a[:, :2, :2], compiled=False)
    check(lambda lib, x: lib.cumprod(x, 1), a)
    check(lambda lib, x: x.cumprod(dim=-1), a, compiled=False)
    i = np.random.default_rng(1).integers(-3, 4, (3, 7)).astype(np.int32)
    check(lambda lib, x: lib.prod(x, 1), i, grad=False)
    check(lambda lib, x: lib.cumprod(x, 1), i, grad=False)
    same(av.prod(av.tensor(i)), torch.prod(T(i)))
    same(av.prod(av.tensor(i > 0), 0), torch.prod(T(i > 0), 0))


@FAST
@given(hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), elements=st.integers(-2, 2)),
       st.data())
def test_all_any_cumsum_with_dim_match_torch(a, data):
    x, t = av.tensor(a), T(a)
    d = data.draw(st.integers(-a.ndim, a.ndim - 1))
    k = data.draw(st.booleans())
    same(av.all(x), torch.all(t))
    same(x.any(), t.any())
    same(av.all(x, dim=d, keepdim=k), torch.all(t, dim=d, keepdim=k))
    same(x.any(d, keepdim=k), t.any(d, keepdim=k))
    same(av.any(x > 0, d), torch.any(t > 0, d))
    same(av.cumsum(x, dim=d), torch.cumsum(t, dim=d))
    same(x.cumsum(dim=d), t.cumsum(dim=d))
    same(av.cumsum(x > 0, d), torch.cumsum(t > 0, d))  # booleans count as i64
    same(av.cumsum(x, d, dtype=av.float64), torch.cumsum(t, d, dtype=torch.float64))


# -- pointwise ------------------------------------------------------------------------------------------

SPECIAL = np.array([0.0, -0.0, 1e-30, -1e-10, 1e-7, 3e-4, 0.3, -0.49, 0.5, -0.7, 1.0, -1.0, 5.0, -30.0, 100.0,
                    1000.0, np.inf, -np.inf, np.nan])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log1p_expm1_keep_full_precision_near_zero(dtype):
    for name in ("log1p", "expm1"):
        ours, theirs = getattr(av, name)(SPECIAL.astype(dtype)), getattr(torch, name)(T(SPECIAL.astype(dtype)))
        o, t = as_numpy(ours).astype(np.float64), as_numpy(theirs).astype(np.float64)
        assert ours.dtype == av.float32 if dtype == np.float32 else ours.dtype == av.float64
        with np.errstate(invalid="ignore"):  # inf - inf where both are inf
            ok = (o == t) | (np.isnan(o) & np.isnan(t)) | (np.abs(o - t) <= 4 * np.finfo(dtype).eps * np.abs(t))
        assert ok.all(), (name, SPECIAL[~ok], o[~ok], t[~ok])
        same(getattr(av.tensor(SPECIAL), name)(), getattr(T(SPECIAL), name)(), 1e-15)


def test_log1p_expm1_gradients_and_compile():
    a = np.array([1e-9, -3e-5, 0.2, -0.45, 0.6, 2.0, -3.0])
    check(lambda lib, x: lib.log1p(x), a, tol=1e-12)
    check(lambda lib, x: x.expm1(), a, tol=1e-12)


@FAST
@given(hnp.arrays(np.float64, st.integers(1, 8), elements=st.floats(allow_nan=True, allow_infinity=True, width=32)))
def test_isnan_isinf_isfinite_match_torch(a):
    for name in ("isnan", "isinf", "isfinite"):
        same(getattr(av, name)(a), getattr(torch, name)(T(a)))
        same(getattr(av.tensor(a.astype(np.float32)), name)(), getattr(T(a.astype(np.float32)), name)())
    same(av.isnan(av.tensor([1, 2])), torch.isnan(torch.tensor([1, 2])))


def test_outer_lerp_addmm_addcmul_addcdiv_match_torch_with_gradients():
    a, b, c = randn(3, 4), randn(3, 4, seed=1), randn(3, 4, seed=2)
    check(lambda lib, x, y: lib.outer(x, y), randn(3), randn(4, seed=1))
    check(lambda lib, x, y: x.ger(y), randn(3), randn(2, seed=1), compiled=False)
    check(lambda lib, x, y, w: lib.lerp(x, y, w), a, b, np.linspace(-0.5, 1.5, 12).reshape(3, 4))
    check(lambda lib, x, y: x.lerp(y, 0.75), a, b, compiled=False)
    check(lambda lib, i, x, y: lib.addmm(i, x, y, beta=0.5, alpha=2.0), randn(3), a, b.T)
    check(lambda lib, i, x, y: i.addmm(x, y), randn(3, 3), a, b.T, compiled=False)
    check(lambda lib, i, x, y: lib.addcmul(i, x, y, value=-0.5), a, b, c)
    check(lambda lib, i, x, y: i.addcdiv(x, y + 4.0, value=2), a, b, c)
    nan = np.full((3, 3), np.nan)
    same(av.addmm(nan, a, b.T, beta=0), torch.addmm(T(nan), T(a), T(b.T), beta=0))


def test_softmax_and_log_softmax_at_av_level_and_as_methods():
    a = randn(2, 3, 4)
    check(lambda lib, x: lib.softmax(x, 1), a)
    check(lambda lib, x: x.log_softmax(-1), a)
    check(lambda lib, x: x.softmax(dim=0), a, compiled=False)
    check(lambda lib, x: lib.log_softmax(x, 2, dtype=lib.float32), a, grad=False, compiled=False)


def test_clamp_with_tensor_bounds_and_torchs_gradient_at_ties():
    a = np.array([[-2.0, -0.5, 0.0, 0.25, 0.5, 1.0, 3.0]] * 2)
    lo, hi = np.full((7,), -0.5), np.linspace(0.0, 1.0, 7)
    check(lambda lib, x, lo, hi: lib.clamp(x, lo, hi), a, lo, hi)
    check(lambda lib, x, lo: x.clamp(min=lo), a, lo)
    check(lambda lib, x: lib.clamp(x, -0.5, 0.5), a)  # x == bound: the whole gradient to x, as in torch
    check(lambda lib, x: x.clip(max=0.25), a, compiled=False)
    same(av.clamp(av.tensor([1, 5, 9]), 2, 6), torch.clamp(torch.tensor([1, 5, 9]), 2, 6))


def test_tensor_type_names_and_conversions():
    x = av.tensor(randn(2, 2))
    assert x.type() == "torch.DoubleTensor" and x.float().type() == torch.ones(1).type() == "torch.FloatTensor"
    assert av.tensor([1]).type() == "torch.LongTensor" and av.tensor([True]).type() == "torch.BoolTensor"
    assert x.type(torch.float32).dtype == av.float32 and x.type(av.int32).dtype == av.int32
    assert x.type("torch.LongTensor").dtype == av.int64 and x.type(torch.HalfTensor).dtype == av.float16
    same(x.type(torch.IntTensor), T(x.numpy()).type(torch.IntTensor))


# -- integer and float % // fmod --------------------------------------------------------------------------

ints = hnp.arrays(np.int64, st.integers(1, 12), elements=st.integers(-50, 50))


@FAST
@given(ints, st.data())
def test_remainder_floor_divide_fmod_follow_torchs_sign_rules(a, data):
    b = data.draw(hnp.arrays(np.int64, a.shape, elements=st.integers(-9, 9).filter(bool)))
    for dtype in (np.int64, np.int32):
        x, y, t, u = av.tensor(a.astype(dtype)), av.tensor(b.astype(dtype)), T(a.astype(dtype)), T(b.astype(dtype))
        same(x % y, t % u)
        same(x // y, t // u)
        same(av.fmod(x, y), torch.fmod(t, u))
        same(av.remainder(x, 4), torch.remainder(t, 4))
        same(7 % y, 7 % u)
        same(-7 // y, -7 // u)
        same(av.div(x, y, rounding_mode="trunc"), torch.div(t, u, rounding_mode="trunc"))
        same(x.div(y, rounding_mode="floor"), t.div(u, rounding_mode="floor"))
        same(av.floor_divide(x, 3), torch.floor_divide(t, 3))
    fa, fb = a * 0.37, b * 0.71
    x, y, t, u = av.tensor(fa), av.tensor(fb), T(fa), T(fb)
    for ours, theirs in ((x % y, t % u), (x // y, t // u), (av.fmod(x, y), torch.fmod(t, u)),
                         (x.remainder(-1.5), t.remainder(-1.5)), (2.5 % y, 2.5 % u), (x.fmod(2), t.fmod(2)),
                         (av.div(x, y, rounding_mode="trunc"), torch.div(t, u, rounding_mode="trunc"))):
        same(ours, theirs, 1e-9)


def test_float_modulus_special_values_and_gradients():
    s = np.array([1.0, -1.0, 0.0, -0.0, 2.5, -3.75, np.inf, -np.inf, np.nan])
    a, b = np.repeat(s, s.size), np.tile(s, s.size)
    for name in ("fmod", "remainder", "floor_divide"):
        same(getattr(av, name)(a, b), getattr(torch, name)(T(a), T(b)))
    a, b = np.array([-4.0, 4.0, -4.0, 6.0, -0.0]), np.array([2.0, -2.0, -2.0, 3.0, 5.0])
    for name in ("fmod", "remainder"):  # a zero result keeps the dividend's sign, as C's fmod
        np.testing.assert_array_equal(np.signbit(getattr(av, name)(a, b).numpy()),
                                      np.signbit(getattr(torch, name)(T(a), T(b)).numpy()))
    check(lambda lib, x, y: lib.fmod(x, y) + lib.remainder(x, y), randn(10) * 5, randn(10, seed=1) + 3.0)
    check(lambda lib, x: x % 1.5, randn(10) * 5, grad=True, compiled=False)
    # derivatives where the result is an exact zero or the quotient is huge: 1 in the dividend (a signed-zero
    # `where` and trunc's pass-through above 2**52 cut it to 0), -trunc(a / b) in the divisor; and f32 is exact
    a, b = np.array([0.0, -4.0, 4.0, -0.0, 1e30, 6.0], np.float32), np.array([1.0, 2.0, -2.0, 3.0, 1.0, 1.5], np.float32)
    for ours, theirs in ((av.fmod, torch.fmod), (av.remainder, torch.remainder)):
        ta, tb = T(a).requires_grad_(), T(b).requires_grad_()
        want = torch.autograd.grad(theirs(ta, tb).sum(), (ta, tb))
        got = av.grad(lambda x, y, f=ours: f(x, y).sum(), argnums=(0, 1))(a, b)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.numpy(), w.numpy())
    one, tenth = np.float32(1.0), np.float32(0.1)
    assert av.fmod(av.tensor(one), av.tensor(tenth)).numpy() == np.fmod(one, tenth) > 0.0999  # was 0
    assert av.fmod(a.astype(np.float16), b.astype(np.float16)).dtype == av.float16  # f64 inside, f16 out
    y = av.tensor([7, -7])
    y %= 3
    assert y.tolist() == [1, 2]
    y //= 2
    assert y.tolist() == [0, 1]


# -- sorting ------------------------------------------------------------------------------------------------

ties = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9),
                  elements=st.sampled_from([0.0, 1.0, -2.0, 3.5, np.nan, np.inf, -np.inf]))


@FAST
@given(ties, st.data())
def test_sort_argsort_are_stable_and_place_nan_like_torch(a, data):
    d = data.draw(st.integers(-a.ndim, a.ndim - 1))
    desc = data.draw(st.booleans())
    x, t = av.tensor(a), T(a)
    ours, theirs = av.sort(x, d, descending=desc, stable=True), torch.sort(t, dim=d, descending=desc, stable=True)
    same(ours.values, theirs.values)
    same(ours.indices, theirs.indices)
    v, i = x.sort(dim=d, descending=desc)
    same(i, theirs.indices)
    same(av.argsort(x, d, descending=desc, stable=True), torch.argsort(t, dim=d, descending=desc, stable=True))
    n = a.shape[d]
    k = data.draw(st.integers(0, n))
    largest = data.draw(st.booleans())
    same(x.topk(k, d, largest=largest).values, t.topk(k, d, largest=largest).values)
    ints = np.nan_to_num(a, posinf=9, neginf=-9).astype(np.int32)
    same(av.sort(ints, d, descending=desc).indices, torch.sort(T(ints), dim=d, descending=desc, stable=True).indices)
    same(av.sort(ints > 0, d).values, torch.sort(T(ints > 0), dim=d).values)


def test_sort_topk_values_and_gradients_scatter_back_to_the_input_positions():
    a = randn(3, 11)
    check(lambda lib, x: lib.sort(x, 1).values, a)
    check(lambda lib, x: x.sort(0, descending=True)[0], a, compiled=False)
    check(lambda lib, x: lib.topk(x, 4).values, a)
    check(lambda lib, x: x.topk(2, 0, largest=False).values, a, compiled=False)
    check(lambda lib, x: lib.topk(x, 3).indices, a, grad=False)
    check(lambda lib, x: lib.msort(x), a, compiled=False)


# -- gather and scatter ----------------------------------------------------------------------------------------

@FAST
@given(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4), st.data())
def test_gather_scatter_scatter_add_take_along_dim_match_torch(shape, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 100)))
    a = rng.standard_normal(shape)
    d = data.draw(st.integers(-len(shape), len(shape) - 1))
    ishape = tuple(data.draw(st.integers(1, 5)) if k == d % len(shape) else data.draw(st.integers(1, s))
                   for k, s in enumerate(shape))
    idx = rng.integers(0, shape[d], ishape)
    x, t, i, ti = av.tensor(a), T(a), av.tensor(idx), T(idx)
    same(av.gather(x, d, i), torch.gather(t, d, ti))
    same(x.gather(d, i.int()), t.gather(d, ti))
    src = rng.standard_normal(ishape)
    same(av.scatter_add(x, d, i, src), torch.scatter_add(t, d, ti, T(src)), 1e-12)
    bidx = idx[tuple(slice(0, 1) if k != d % len(shape) and s != shape[k] else slice(None)
                     for k, s in enumerate(ishape))]  # broadcasts against x outside dim d
    same(x.take_along_dim(av.tensor(bidx), d), t.take_along_dim(T(bidx), d))
    same(av.take_along_dim(x, i), torch.take_along_dim(t, ti))
    ai = (a * 3).astype(np.int64)
    same(av.gather(ai, d, i), torch.gather(T(ai), d, ti))
    same(av.scatter_add(ai, d, i, ai[tuple(slice(0, s) for s in ishape)] if all(
        s <= m for s, m in zip(ishape, shape)) else np.ones(ishape, np.int64)), torch.scatter_add(
        T(ai), d, ti, T(ai[tuple(slice(0, s) for s in ishape)] if all(s <= m for s, m in zip(ishape, shape))
                         else np.ones(ishape, np.int64))))
    uniq = np.stack([rng.permutation(shape[d])[:min(ishape[d], shape[d])] for _ in range(math.prod(ishape) // ishape[d])])
    uidx = np.moveaxis(uniq.reshape(tuple(s for k, s in enumerate(ishape) if k != d % len(shape)) + (-1,)), -1, d)
    same(av.scatter(x, d, av.tensor(uidx), src), torch.scatter(t, d, T(uidx), T(src)))
    same(x.scatter(d, av.tensor(uidx), 2.5), t.scatter(d, T(uidx), 2.5))


def test_gather_and_scatter_gradients_and_compiled_paths_match_torch():
    a, idx = randn(3, 5), np.array([[0, 4, 4, 1], [2, 2, 0, 3], [1, 0, 3, 3]])
    src = randn(3, 4, seed=1)
    check(lambda lib, x, i: lib.gather(x, 1, i), a, idx)
    check(lambda lib, x, i: x.take_along_dim(i, 1), a, idx, compiled=False)
    check(lambda lib, x, i, s: lib.scatter_add(x, 1, i, s), a, idx, src)
    uidx = np.array([[0, 4, 2, 1], [2, 3, 0, 4], [1, 0, 3, 2]])
    check(lambda lib, x, i, s: x.scatter(1, i, s), a, uidx, src)
    check(lambda lib, x, i: lib.gather(x, 0, i), randn(4, 2), np.array([[3, 0], [1, 1], [0, 2]]) % 4)
    with pytest.raises(IndexError, match="out of bounds"):
        av.gather(av.tensor(a), 1, av.tensor([[5]]))
    onehot = av.zeros(4, 5).scatter_(1, av.tensor([[1], [0], [4], [2]]), 1.0)
    same(onehot, torch.zeros(4, 5).scatter_(1, torch.tensor([[1], [0], [4], [2]]), 1.0))


def test_gather_keeps_nan_and_inf_where_they_are_not_selected():
    a = np.array([[1.0, np.inf, -np.inf, np.nan, 2.0]])
    f = av.compile(lambda x, i: av.gather(x, 1, i), backend="numpy")
    same(f(a, np.array([[0, 4, 1]])), torch.gather(T(a), 1, torch.tensor([[0, 4, 1]])))
    g = av.grad(lambda x, i: av.gather(x, 1, i).sum())(a, np.array([[0, 4]]))
    np.testing.assert_array_equal(g.numpy(), [[1, 0, 0, 0, 1]])


# -- random -------------------------------------------------------------------------------------------------------

def test_multinomial_and_randperm_draw_from_avalons_seeded_generator():
    av.manual_seed(5)
    p = np.array([[0.1, 0.0, 0.5, 0.4], [1.0, 1.0, 0.0, 2.0]])
    draws = av.multinomial(p, 4000, replacement=True)
    assert draws.shape == (2, 4000) and draws.dtype == av.int64
    for row, w in zip(draws.numpy(), p):
        freq = np.bincount(row, minlength=4) / row.size
        np.testing.assert_allclose(freq, w / w.sum(), atol=0.03)
    picks = av.multinomial(np.repeat(p[:1], 400, 0), 2).numpy()  # 400 draws of 2, one per row
    assert (picks[:, 0] != picks[:, 1]).all() and not (picks == 1).any()
    first = np.bincount(picks[:, 0], minlength=4) / len(picks)
    np.testing.assert_allclose(first, p[0], atol=0.08)
    av.manual_seed(7)
    a = av.randperm(50)
    av.manual_seed(7)
    assert av.randperm(50).tolist() == a.tolist() and sorted(a.tolist()) == list(range(50))
    assert a.dtype == av.int64 and av.randperm(5, dtype=av.int32).dtype == av.int32
    assert sorted(av.tensor(p[1]).multinomial(3).tolist()) == [0, 1, 3]
    f = av.compile(lambda w: av.multinomial(w, 2), backend="numpy")
    assert f(p).shape == (2, 2)
    with pytest.raises(ValueError, match="replacement=False"):
        av.multinomial(p[0], 4)


# -- compiled all together, and the in-place forms -----------------------------------------------------------------

def test_a_ported_function_using_many_of_them_compiles_and_differentiates():
    def f(lib, x, w):
        y = lib.einsum("bi,ij->bj", x, w).softmax(-1)
        top = y.topk(2, dim=1).values
        z = lib.flip(lib.roll(x, 1, 1), (0,)).repeat(1, 2)[:, :4]
        return lib.cat([top, lib.log1p(z.abs()), x.norm(dim=1, keepdim=True), x.prod(1, keepdim=True),
                        lib.cumprod(x, 1)[:, -1:]], 1)
    check(f, randn(3, 4), randn(4, 5, seed=1))


INPLACE_MORE = [("scatter_", (1, "i", "y"), {}), ("scatter_add_", (1, "i", "y"), {}), ("lerp_", ("y", 0.3), {}),
                ("addcmul_", ("y", "y"), {"value": 2.0}), ("addcdiv_", ("y", "x"), {}), ("remainder_", (0.7,), {}),
                ("fmod_", (0.7,), {}), ("log1p_", (), {}), ("expm1_", (), {}), ("trunc_", (), {})]


@pytest.mark.parametrize("name, args, kw", INPLACE_MORE)
def test_more_inplace_methods_match_torch(name, args, kw):
    x = np.abs(randn(3, 4))
    y = randn(3, 4, seed=1)
    i = np.array([[0], [3], [1]])

    def run(lib, x, y, i):
        sub = {"y": y, "i": i, "x": x * 1.0 + 2.0}
        out = getattr(x, name)(*[sub.get(a, a) if isinstance(a, str) else a for a in args], **kw)
        assert out is x
        return x * 1.0

    same(run(av, av.tensor(x), av.tensor(y), av.tensor(i)), run(torch, T(x), T(y), T(i)), 1e-12)
