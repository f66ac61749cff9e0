"""Round 11 of the silent-failure hunt: torch errors that depend on VALUES, which Avalon's eager path
checked with numpy but a traced graph (av.compile, av.grad) skipped, so the compiled program computed
garbage where torch raises. Each is now a `check` op (ops.check_values) on the data path: eagerly at
once, compiled when the graph runs (ValueCheckError, a RuntimeError; LinAlgCheckError for torch's
LinAlgError), on every backend. torch 2.x (CPU) is the oracle.

Swept: (a) 42 eager-only value checks in avalon/ops, avalon/nn, avalon/vision (`values_fixed`,
`is_traced`, `.numpy()` before a raise; avalon/distributions excluded); (b) 127 calls with invalid values
(torch, Avalon eager, Avalon compiled with the numpy backend): linalg (factorizations with and without
check_errors, solvers, pivots, nan inputs, matrix_power/tensorinv/tensorsolve), stats (quantile, histc,
histogram, cdist, bincount, renorm), index ops (take/put/gather/scatter/index_*/getitem/index_put,
searchsorted's sorter, one_hot, embedding, embedding_bag, max_unpool: already checked by take's and
one_hot's runtime checks), losses (nll/cross_entropy/multi_margin/multilabel_margin targets, ctc_loss
lengths, poisson_nll, kl_div, cross_entropy with probabilities), integer division, masked_scatter,
unravel_index, repeat_interleave, special functions, the in-place random fills and draws with
Python-number parameters, istft's window envelope, AdaptiveLogSoftmaxWithLoss targets,
pack_padded_sequence lengths, clip_grad_norm_'s error_if_nonfinite.

Fixed, compiled computed in silence (eager raised): histc/histogram of data with nan/inf, quantile/
nanquantile q outside [0, 1] (a misleading take index error, or nan for a nan q), integer
div(rounding_mode)/floor_divide/remainder/fmod by a zero tensor element, masked_scatter with fewer
source elements than mask ones, lu_factor and lu_factor_ex(check_errors) of a singular matrix,
ldl_factor(_ex) with info > 0, cholesky_ex/inv_ex/solve_ex(check_errors=True), ctc_loss input_lengths
> T or target_lengths outside [0, S] (and concatenated targets whose lengths do not sum to their count:
eagerly fewer was accepted too), bincount of negative values (and, deliberately, values >= minlength,
where torch's result would grow past the static shape: refused instead of dropped), istft with a traced
window whose envelope is zero, AdaptiveLogSoftmaxWithLoss targets outside [0, n_classes),
pack_padded_sequence lengths out of 1..T or unsorted and pad_packed_sequence's total_length below a
length, unravel_index out of range (a deliberate refusal eagerly; compiled now agrees). Eager AND
compiled were silent: cholesky_inverse of a factor with a zero diagonal, renorm with maxnorm < 0, cdist
with p < 0, lu_unpack / torch.lu_solve / ldl_solve with pivots out of range, the SVD family (svd,
svdvals, pinv, lstsq, matrix_norm 2/nuc, cond, matrix_rank) of a matrix with a nan (torch: LinAlgError;
matrix_rank counted 0), Tensor.normal_/uniform_/exponential_/log_normal_/cauchy_ with an invalid
std/range/rate. Refusals removed: clip_grad_norm_(error_if_nonfinite=True) while tracing (now checked
when the step runs), repeat_interleave of traced repeats with output_size (computed, with torch's
checks), matrix_exp of a nan/inf matrix (numpy's ValueError eagerly; torch: nan).

Remaining (not fixed): ctc_loss with a label outside [0, C) computes (torch does not check either);
eigh/eigvalsh/qr/det of nan compute nan as torch; unravel_index out of range is refused where torch
wraps (deliberate); linalg.lu_solve with a pivot 0 raises a gather index error, not torch's message;
pinv(hermitian=True) of a matrix with a nan in the upper triangle (which torch's eigh never reads) is
all nan where torch's is finite; SyncBatchNorm's "more than 1 value per channel" is eager only; the
SVD's nan check cannot run on IREE (svd does not lower to IREE at all)."""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import same_as_torch, torch_raises

import avalon as av
import avalon.nn.functional as F
from avalon import nn
from avalon.ir.reference import ValueCheckError
from avalon.ops.linalg import LinAlgError

RNG = np.random.default_rng(11)
X4 = RNG.standard_normal(4).astype(np.float32)
SING = np.diag([1.0, 0.0, 1.0]).astype(np.float32)
SPD = (lambda m: (m @ m.T + 3 * np.eye(3)).astype(np.float32))(RNG.standard_normal((3, 3)))
NAN2 = np.array([[1.0, np.nan], [0.5, 2.0]], np.float32)


def _check(tfn, afn, good, bad, msg, err=ValueCheckError, grad=None, backend="numpy"):
    """torch raises on `bad` and Avalon eager raises (any error); the compiled function raises `err`
    matching `msg` naming this file, runs `good` as torch before and after; `grad` (an argument
    index) also checks av.grad."""
    torch_raises(lambda: tfn(*[torch.from_numpy(np.array(a)) for a in bad]))
    with pytest.raises(Exception):  # noqa: B017, PT011 - eager raises (its type is checked where it is torch's)
        afn(*[av.tensor(a) for a in bad])
    f = av.compile(afn, backend=backend)
    want = tfn(*[torch.from_numpy(np.array(a)) for a in good])
    same_as_torch(want, f(*[av.tensor(a) for a in good]))
    with pytest.raises(err, match=msg) as e:
        f(*[av.tensor(a) for a in bad])
    assert "test_silent_failures_11.py:" in str(e.value)
    same_as_torch(want, f(*[av.tensor(a) for a in good]))
    if grad is not None:
        def loss(*xs):
            out = afn(*xs)
            return av.sum(out[0] if isinstance(out, tuple) else out)
        g = av.grad(loss, argnums=grad)
        g(*[av.tensor(a) for a in good])
        with pytest.raises(err, match=msg):
            g(*[av.tensor(a) for a in bad])


# -- stats ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_histc_and_histogram_of_data_with_nan_or_inf(bad):
    x = np.array([1.0, 2.5, 4.0], np.float32)
    xb = x.copy()
    xb[1] = bad
    _check(lambda t: torch.histc(t, 4), lambda t: av.histc(t, 4), [x], [xb], "torch.histc: range of .* is not finite")
    _check(lambda t: torch.histogram(t, 3).hist, lambda t: av.histogram(t, 3).hist, [x], [xb],
           "torch.histogram: range .* is not finite")


def test_quantile_q_outside_0_1_and_its_gradient():
    x = np.array([3.0, 1.0, 2.0, 5.0], np.float32)
    for q in (1.5, -0.1, np.nan):
        _check(lambda t, qq: torch.quantile(t, qq), lambda t, qq: av.quantile(t, qq),
               [x, np.array([0.25, 0.9], np.float32)], [x, np.array([0.5, q], np.float32)],
               r"quantile: q values must be in the range \[0, 1\]", grad=0 if q == 1.5 else None)
    _check(lambda t, qq: torch.nanquantile(t, qq), lambda t, qq: av.nanquantile(t, qq),
           [x, np.array(0.5, np.float32)], [x, np.array(-1.0, np.float32)], "nanquantile: q values must be")


def test_renorm_negative_maxnorm_and_cdist_negative_p_raise_eagerly_and_compiled():
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    for call, msg in ((lambda m, t: m.renorm(t, 2, 0, -1.0), "maxnorm to be >= 0"),
                      (lambda m, t: m.cdist(t, t, p=-1.0), "non-negative p")):
        assert issubclass(torch_raises(lambda c=call: c(torch, torch.tensor(x))), RuntimeError)
        with pytest.raises(RuntimeError, match=msg):
            call(av, av.tensor(x))
        with pytest.raises(RuntimeError, match=msg):
            av.compile(lambda t, c=call: c(av, t))(av.tensor(x))
    same_as_torch(torch.renorm(torch.tensor(x), 2, 0, 0.5), av.compile(lambda t: av.renorm(t, 2, 0, 0.5))(av.tensor(x)))


def test_bincount_negative_values_and_values_past_minlength():
    good, neg, big = np.array([0, 2, 2], np.int64), np.array([1, -1], np.int64), np.array([0, 5], np.int64)
    _check(lambda t: torch.bincount(t, minlength=4), lambda t: av.bincount(t, minlength=4), [good], [neg],
           "bincount only supports 1-d non-negative integral inputs")
    # torch grows its result to 6 bins; a compiled function's shape is static: refused, no longer dropped
    assert torch.bincount(torch.tensor(big), minlength=4).shape == (6,)
    with pytest.raises(ValueCheckError, match="a value is >= 4"):
        av.compile(lambda t: av.bincount(t, minlength=4))(av.tensor(big))


# -- integer division, masked_scatter, unravel_index -------------------------------------------------

@pytest.mark.parametrize("name", ["floor_divide", "remainder", "fmod", "div_floor", "div_trunc"])
def test_integer_division_by_a_zero_tensor_element(name):
    a, b, z = np.array([7, -7, 9], np.int64), np.array([2, 3, -4], np.int64), np.array([2, 0, 1], np.int64)
    if name.startswith("div_"):
        mode = name[4:]
        tfn, afn = (lambda x, y: torch.div(x, y, rounding_mode=mode)), (lambda x, y: av.div(x, y, rounding_mode=mode))
    else:
        tfn, afn = getattr(torch, name), getattr(av, name)
    assert issubclass(torch_raises(lambda: tfn(torch.tensor(a), torch.tensor(z))), RuntimeError)
    _check(tfn, afn, [a, b], [a, z], "ZeroDivisionError")


def test_masked_scatter_with_a_short_source():
    x, m = np.zeros(4, np.float32), np.array([True, False, True, True])
    _check(lambda t, mm, s: t.masked_scatter(mm, s), lambda t, mm, s: t.masked_scatter(mm, s),
           [x, m, np.arange(3, dtype=np.float32)], [x, np.ones(4, bool), np.arange(3, dtype=np.float32)],
           "masked_scatter: Number of elements of source < number of ones in mask")


def test_unravel_index_out_of_range_is_refused_compiled_as_eagerly():
    """A deliberate refusal: torch wraps an index past the shape (7 in (2, 3) gives (0, 1))."""
    f = av.compile(lambda i: av.unravel_index(i, (2, 3)))
    same_as_torch(torch.unravel_index(torch.tensor([1, 5, -1]), (2, 3)), f(av.tensor(np.array([1, 5, -1]))))
    with pytest.raises(ValueError, match=r"must be in range \[-6, 5\]"):
        av.unravel_index(av.tensor(np.array([1, 7])), (2, 3))
    with pytest.raises(ValueCheckError, match=r"must be in range \[-6, 5\]"):
        f(av.tensor(np.array([1, 7])))


# -- linalg -----------------------------------------------------------------------------------------

def test_lu_factor_and_lu_factor_ex_of_a_singular_matrix():
    _check(lambda a: torch.linalg.lu_factor(a).LU, lambda a: av.linalg.lu_factor(a).LU, [SPD], [SING],
           "lu_factor: a U.* is zero", err=LinAlgError, grad=0)
    _check(lambda a: torch.linalg.lu_factor_ex(a, check_errors=True).LU,
           lambda a: av.linalg.lu_factor_ex(a, check_errors=True).LU, [SPD], [SING], "lu_factor_ex", err=LinAlgError)
    # without check_errors, info reports it (no error), as torch
    info = av.compile(lambda a: av.linalg.lu_factor_ex(a).info)(av.tensor(SING))
    same_as_torch(torch.linalg.lu_factor_ex(torch.tensor(SING)).info, info)


def test_ldl_factor_with_a_zero_pivot():
    z = np.zeros((2, 2), np.float32)
    _check(lambda a: torch.linalg.ldl_factor(a).LD, lambda a: av.linalg.ldl_factor(a).LD, [SPD], [z],
           "ldl_factor: a D")
    _check(lambda a: torch.linalg.ldl_factor_ex(a, check_errors=True).LD,
           lambda a: av.linalg.ldl_factor_ex(a, check_errors=True).LD, [SPD], [z], "ldl_factor_ex: a D")


@pytest.mark.parametrize("fn", ["cholesky_ex", "inv_ex"])
def test_ex_factorizations_with_check_errors(fn):
    bad = -np.eye(3, dtype=np.float32) if fn == "cholesky_ex" else SING
    _check(lambda a: getattr(torch.linalg, fn)(a, check_errors=True)[0],
           lambda a: getattr(av.linalg, fn)(a, check_errors=True)[0], [SPD], [bad],
           "cholesky_ex: the factorization failed|inverse: The input matrix is singular", err=LinAlgError)


def test_solve_ex_with_check_errors_raises_compiled():
    b = np.ones((3, 1), np.float32)
    f = av.compile(lambda a, y: av.linalg.solve_ex(a, y, check_errors=True))
    same_as_torch(torch.linalg.solve_ex(torch.tensor(SPD), torch.tensor(b)).result, f(av.tensor(SPD), av.tensor(b))[0])
    assert issubclass(torch_raises(lambda: torch.linalg.solve_ex(torch.tensor(SING), torch.tensor(b),
                                                                 check_errors=True)), RuntimeError)
    with pytest.raises(LinAlgError):
        f(av.tensor(SING), av.tensor(b))


def test_cholesky_inverse_of_a_factor_with_a_zero_diagonal():
    low = np.linalg.cholesky(SPD).astype(np.float32)
    assert issubclass(torch_raises(lambda: torch.cholesky_inverse(torch.tensor(SING))), RuntimeError)
    with pytest.raises(LinAlgError, match="cholesky_inverse"):  # eagerly too (it returned nans)
        av.cholesky_inverse(av.tensor(SING))
    _check(torch.cholesky_inverse, av.cholesky_inverse, [low], [SING], "cholesky_inverse: a diagonal element is zero",
           err=LinAlgError, grad=0)


def test_pivots_out_of_range_for_lu_unpack_lu_solve_and_ldl_solve():
    lu, piv = torch.linalg.lu_factor(torch.tensor(SPD))
    lu_np, good = lu.numpy(), piv.numpy()
    bad = np.array([1, 9, 3], np.int32)
    for unpack in (av.lu_unpack, av.linalg.lu_unpack):
        _check(lambda a, p: torch.lu_unpack(a, p)[0], lambda a, p, u=unpack: u(a, p)[0], [lu_np, good], [lu_np, bad],
               "pivots passed to lu_unpack must be between 1 and LU.size")
    b = np.ones((3, 1), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.lu_solve's deprecation
        for p, msg in ((bad, "smaller or equal to LU.size"), (np.array([0, 2, 3], np.int32), "greater or equal to 1")):
            _check(lambda a, q, y: torch.lu_solve(y, a, q), lambda a, q, y: av.lu_solve(y, a, q), [lu_np, good, b],
                   [lu_np, p, b], msg)
    ld, lpiv = torch.linalg.ldl_factor(torch.tensor(SPD))
    for p, msg in ((np.array([1, 9, 3], np.int32), r"\|pivot\| <= LD.size"), (np.array([0, 2, 3], np.int32),
                                                                              r"\|pivot\| >= 1")):
        _check(lambda a, q, y: torch.linalg.ldl_solve(a, q, y), lambda a, q, y: av.linalg.ldl_solve(a, q, y),
               [ld.numpy(), lpiv.numpy(), b], [ld.numpy(), p, b], msg)


@pytest.mark.parametrize("name", ["svdvals", "pinv", "lstsq", "matrix_norm2", "cond", "matrix_rank"])
def test_the_svd_family_refuses_nan_as_torch(name):
    calls = dict(svdvals=lambda m, a: m.linalg.svdvals(a), pinv=lambda m, a: m.linalg.pinv(a),
                 lstsq=lambda m, a: m.linalg.lstsq(a, a).solution, matrix_norm2=lambda m, a: m.linalg.matrix_norm(a, 2),
                 cond=lambda m, a: m.linalg.cond(a), matrix_rank=lambda m, a: m.linalg.matrix_rank(a))
    call = calls[name]
    _check(lambda a: call(torch, a), lambda a: call(av, a), [SPD], [NAN2],
           "linalg.svd: The algorithm failed to converge", err=LinAlgError,
           grad=0 if name in ("svdvals", "pinv") else None)
    # hermitian pinv goes through eigh: torch's mostly fails to converge on a nan (a LinAlgError), else computes
    # nan (this one) or zeros (a nan on the diagonal) in silence; Avalon's refuses a nan always
    low_nan = NAN2.T.copy()
    with pytest.raises(LinAlgError, match="linalg.eigh: The algorithm failed to converge"):
        av.linalg.pinv(av.tensor(low_nan), hermitian=True)


def test_matrix_exp_of_nan_computes_nan_as_torch():
    same_as_torch(torch.linalg.matrix_exp(torch.tensor(NAN2)), av.linalg.matrix_exp(av.tensor(NAN2)))


# -- losses and layers ------------------------------------------------------------------------------

def _ctc(m, lp, il, tl, targets=None):
    tg = (torch.tensor if m is torch else av.tensor)(np.array([[1, 2], [2, 2]]) if targets is None else targets)
    f = TF if m is torch else F
    return f.ctc_loss(lp, tg, il, tl)


@pytest.mark.filterwarnings("ignore:.*not among its arguments")  # (the padded targets, baked in)
def test_ctc_loss_lengths_out_of_range():
    lp = np.log(RNG.dirichlet(np.ones(3), (5, 2))).astype(np.float32)
    il, tl = np.array([5, 4]), np.array([2, 1])
    for bad_il, bad_tl, msg in ((np.array([6, 4]), tl, "input_lengths must be in"),
                                (il, np.array([3, 1]), "target_lengths must be in"),
                                (il, np.array([-1, 1]), "target_lengths must be in")):
        _check(lambda a, b, c: _ctc(torch, a, b, c), lambda a, b, c: _ctc(av, a, b, c), [lp, il, tl],
               [lp, bad_il, bad_tl], msg, grad=0 if msg.startswith("input") else None)


@pytest.mark.filterwarnings("ignore:.*not among its arguments")
def test_ctc_loss_concatenated_targets_whose_lengths_do_not_sum_to_their_count():
    lp = np.log(RNG.dirichlet(np.ones(3), (5, 2))).astype(np.float32)
    cat, il = np.array([1, 2, 1]), np.array([5, 5])
    for bad in (np.array([2, 2]), np.array([1, 1])):  # more, and fewer (eager accepted fewer in silence)
        _check(lambda a, c: _ctc(torch, a, torch.tensor(il), c, cat), lambda a, c: _ctc(av, a, av.tensor(il), c, cat),
               [lp, np.array([2, 1])], [lp, bad], "target_lengths must sum to the 3 concatenated targets")
        with pytest.raises(RuntimeError, match="sum to"):
            _ctc(av, av.tensor(lp), av.tensor(il), av.tensor(bad), cat)


def test_adaptive_log_softmax_target_out_of_range_compiled():
    torch.manual_seed(0)
    tm = torch.nn.AdaptiveLogSoftmaxWithLoss(4, 10, [3, 6])
    m = nn.AdaptiveLogSoftmaxWithLoss(4, 10, [3, 6])
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    good, bad = np.array([1, 5, 9]), np.array([1, 5, 10])
    assert issubclass(torch_raises(lambda: tm(torch.tensor(x), torch.tensor(bad))), RuntimeError)
    f = av.compile(lambda mm, a, t: mm(a, t).loss)
    assert float(f(m, av.tensor(x), av.tensor(good))) == pytest.approx(float(tm(torch.tensor(x), torch.tensor(good)).loss),
                                                                       rel=1e-5)
    with pytest.raises(ValueCheckError, match=r"Target values should be in \[0, 9\]"):
        f(m, av.tensor(x), av.tensor(bad))


def test_istft_with_a_traced_window_whose_envelope_is_zero():
    sig = RNG.standard_normal(32).astype(np.float32)
    win = (np.hanning(8) + 0.1).astype(np.float32)
    spec_t = torch.stft(torch.tensor(sig), 8, 4, window=torch.tensor(win), return_complex=True)
    spec = av.stft(av.tensor(sig), 8, 4, window=av.tensor(win), return_complex=True)
    assert issubclass(torch_raises(lambda: torch.istft(spec_t, 8, 4, window=torch.zeros(8))), RuntimeError)
    f = av.compile(lambda s, w: av.istft(s, 8, 4, window=w))
    same_as_torch(torch.istft(spec_t, 8, 4, window=torch.tensor(win)), f(spec, av.tensor(win)))
    with pytest.raises(ValueCheckError, match="window overlap add min"):
        f(spec, av.tensor(np.zeros(8, np.float32)))


def test_clip_grad_norm_error_if_nonfinite_in_a_compiled_training_step():
    """Was refused while tracing; now the step runs and raises when the gradient's norm is not finite."""
    tm, m = torch.nn.Linear(3, 1), nn.Linear(3, 1)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    opt, topt = av.optim.SGD(m.parameters(), lr=0.1), torch.optim.SGD(tm.parameters(), lr=0.1)

    def step(model, o, x):
        loss, grads = av.value_and_grad(lambda mm: (mm(x) ** 2).mean())(model)
        nn.utils.clip_grad_norm_(grads, 0.5, error_if_nonfinite=True)
        o.step(grads)
        return loss

    f = av.compile(step)
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    f(m, opt, av.tensor(x))
    topt.zero_grad()
    (tm(torch.tensor(x)) ** 2).mean().backward()
    torch.nn.utils.clip_grad_norm_(tm.parameters(), 0.5, error_if_nonfinite=True)
    topt.step()
    np.testing.assert_allclose(m.weight.numpy(), tm.weight.detach().numpy(), rtol=1e-5, atol=1e-6)
    xi = x.copy()
    xi[0, 0] = np.inf
    topt.zero_grad()
    (tm(torch.tensor(xi)) ** 2).mean().backward()
    assert issubclass(torch_raises(lambda: torch.nn.utils.clip_grad_norm_(tm.parameters(), 0.5,
                                                                          error_if_nonfinite=True)), RuntimeError)
    with pytest.raises(ValueCheckError, match="is non-finite, so it cannot be clipped"):
        f(m, opt, av.tensor(xi))
    assert math.isfinite(float(m.weight.numpy().sum()))


@pytest.mark.parametrize("call", ["normal_(0, -1.0)", "uniform_(2, 1)", "exponential_(-1.0)", "log_normal_(0, -1.0)",
                                  "cauchy_(0, -1.0)"])
def test_in_place_random_fills_refuse_invalid_parameters(call):
    """Python-number parameters: eagerly (and so while tracing) Avalon drew from them in silence."""
    assert issubclass(torch_raises(lambda: eval(f"t.{call}", {"t": torch.ones(3)})), RuntimeError)
    with pytest.raises(RuntimeError, match="expects"):
        eval(f"t.{call}", {"t": av.ones(3)})
    with pytest.raises(RuntimeError, match="expects"):
        av.compile(lambda t: eval(f"t.{call}", {"t": t}))(av.ones(3))
    eval(f"t.{call.replace('-1.0', '1.0').replace('(2, 1)', '(1, 2)')}", {"t": av.ones(3)})  # valid: draws


# -- other backends ---------------------------------------------------------------------------------

def test_the_checks_on_iree():
    pytest.importorskip("iree.runtime", reason="needs the mlir extra: pip install -e '.[mlir]'")
    pytest.importorskip("iree.compiler", reason="needs the mlir extra: pip install -e '.[mlir]'")
    a, z = np.array([7, -7], np.int64), np.array([2, 0], np.int64)
    _check(torch.floor_divide, av.floor_divide, [a, np.array([2, 3], np.int64)], [a, z], "ZeroDivisionError",
           backend="iree")
    _check(lambda t: torch.histc(t, 4), lambda t: av.histc(t, 4), [X4], [np.array([1, np.nan], np.float32)],
           "range of .* is not finite", backend="iree")


def test_the_checks_on_triton():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton interpreter is set by conftest.py on machines without a GPU")
    x = np.array([3.0, 1.0, 2.0], np.float32)
    _check(lambda t, q: torch.quantile(t, q), lambda t, q: av.quantile(t, q), [x, np.array([0.5], np.float32)],
           [x, np.array([1.5], np.float32)], "q values must be in the range", backend="triton")
    _check(lambda t, mm, s: t.masked_scatter(mm, s), lambda t, mm, s: t.masked_scatter(mm, s),
           [np.zeros(3, np.float32), np.array([True, False, True]), np.ones(2, np.float32)],
           [np.zeros(3, np.float32), np.ones(3, bool), np.ones(2, np.float32)], "masked_scatter", backend="triton")
    _check(lambda a: torch.linalg.svdvals(a), lambda a: av.linalg.svdvals(a), [SPD], [NAN2], "linalg.svd",
           err=LinAlgError, backend="triton")


def test_pack_padded_sequence_with_traced_lengths_out_of_range_or_unsorted():
    from avalon.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(0)
    tm, m = torch.nn.GRU(2, 3), nn.GRU(2, 3)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = RNG.standard_normal((4, 3, 2)).astype(np.float32)
    f = av.compile(lambda mm, a, n: mm(pack_padded_sequence(a, n))[1])
    good = np.array([4, 3, 1])
    same_as_torch(tm(torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x), torch.tensor(good)))[1].detach(),
                  f(m, av.tensor(x), av.tensor(good)))
    for bad, msg in (([4, 5, 1], "out of range"), ([4, 3, 0], "out of range"), ([3, 4, 1], "sorted in decreasing")):
        assert issubclass(torch_raises(lambda b=bad: torch.nn.utils.rnn.pack_padded_sequence(
            torch.tensor(x), torch.tensor(b))), RuntimeError)
        with pytest.raises(RuntimeError):
            pack_padded_sequence(av.tensor(x), av.tensor(np.array(bad)))
        with pytest.raises(ValueCheckError, match=msg):
            f(m, av.tensor(x), av.tensor(np.array(bad)))
    unpad = av.compile(lambda a, n: pad_packed_sequence(pack_padded_sequence(a, n), total_length=3)[0])
    with pytest.raises(ValueCheckError, match="total_length to be at least"):
        unpad(av.tensor(x), av.tensor(good))
    assert issubclass(torch_raises(lambda: torch.nn.utils.rnn.pad_packed_sequence(
        torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x), torch.tensor(good)), total_length=3)), ValueError)


def test_repeat_interleave_with_traced_repeats_and_output_size():
    """Was refused while tracing even with torch's output_size (which makes the shape static); now computed as
    torch, and torch's checks (no negative count, the counts summing to output_size) run with the graph."""
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    f = av.compile(lambda a, r: av.repeat_interleave(a, r, dim=0, output_size=4))
    for r in ([1, 2, 1], [0, 4, 0]):
        same_as_torch(torch.repeat_interleave(torch.tensor(x), torch.tensor(r), dim=0, output_size=4),
                      f(av.tensor(x), av.tensor(np.array(r))))
    for r, msg in (([1, 2, 0], "allocated size does not match"), ([2, -1, 3], "repeats can not be negative")):
        assert issubclass(torch_raises(lambda rr=r: torch.repeat_interleave(torch.tensor(x), torch.tensor(rr), dim=0,
                                                                            output_size=4)), RuntimeError)
        with pytest.raises(ValueCheckError, match=msg):
            f(av.tensor(x), av.tensor(np.array(r)))
    g = av.grad(lambda a, r: (av.repeat_interleave(a, r, dim=0, output_size=4) ** 2).sum())
    tx = torch.tensor(x, requires_grad=True)
    (torch.repeat_interleave(tx, torch.tensor([1, 2, 1]), dim=0, output_size=4) ** 2).sum().backward()
    same_as_torch(tx.grad, g(av.tensor(x), av.tensor(np.array([1, 2, 1]))))
    with pytest.raises(TypeError, match="pass output_size"):  # without it the shape is unknown: still refused
        av.compile(lambda a, r: av.repeat_interleave(a, r, dim=0))(av.tensor(x), av.tensor(np.array([1, 2, 1])))
