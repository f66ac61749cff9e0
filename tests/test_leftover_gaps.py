"""Leftover gaps closed, each against torch (the oracle) on seeded random inputs:

- aten.grid_sampler_3d (5-d F.grid_sample) imports through torch.export: forward and the gradients of
  the input and the grid, every mode / padding / align_corners Avalon's 5-d grid_sample takes;
- RNN / GRU / LSTM with a wrongly shaped or wrongly ranked h_0 / c_0 raise torch's RuntimeError with its
  words (batched and unbatched), and RNN / GRU refuse the proj_size keyword, 0 included, as torch;
- F.multi_head_attention_forward with static_k / static_v (values, gradients, errors), eager and compiled;
- linalg.eig / eigvals gradients (torch's linalg_eig_backward) and JVP, eager, compiled and imported; a
  phase-dependent loss, which torch refuses, gets a nan gradient;
- linalg.ldl_factor / ldl_factor_ex / ldl_solve: LAPACK's packed LD and pivots (2x2 blocks included), no
  derivative as in torch, torch's errors, imported through torch.export.
"""
# ruff: noqa: B023  (the lambdas given to _raised are called at once, inside their loop iteration)
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as TF
from helpers import rel

import avalon as av
from avalon import nn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- 3. aten.grid_sampler_3d --------------------------------------------------------------------------

_COMBOS = [(m, p, a) for m in ("bilinear", "nearest") for p in ("zeros", "border", "reflection") for a in (False, True)]


class _Sample3d(tnn.Module):
    """Every mode / padding / align_corners of a 5-d grid_sample in one export, the input and grid
    passing through parameters (their gradients are the input's and the grid's)."""

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__()
        self.scale = tnn.Parameter(torch.tensor(rng.uniform(0.5, 1.5, (2, 3, 3, 4, 5))))
        self.shift = tnn.Parameter(torch.tensor(rng.uniform(-0.1, 0.1, (2, 2, 3, 4, 3))))
        self.shift_nearest = tnn.Parameter(torch.tensor(rng.uniform(-0.1, 0.1, (2, 2, 3, 4, 3))))

    def forward(self, x, grid):
        x = x * self.scale
        return torch.stack([TF.grid_sample(x, grid + (self.shift_nearest if m == "nearest" else self.shift), mode=m,
                                           padding_mode=p, align_corners=a) for m, p, a in _COMBOS])


def test_grid_sampler_3d_imports():
    rng = _rng(3)
    x = rng.standard_normal((2, 3, 3, 4, 5))
    grid = rng.uniform(-1.2, 1.2, (2, 2, 3, 4, 3))  # (some points outside, for the padding modes)
    module = _Sample3d(rng)
    imported = av.from_torch(module, torch.tensor(x), torch.tensor(grid))
    out = module(torch.tensor(x), torch.tensor(grid))
    for run in (imported, av.compile(imported)):
        got = run(x, grid)
        for i in range(len(_COMBOS)):
            assert rel(got[i], out[i]) < 1e-12, _COMBOS[i]
    w = rng.standard_normal(out.shape)
    (out * torch.tensor(w)).sum().backward()
    grads = av.grad(lambda m, a, g: (m(a, g) * w).sum())(imported, x, grid)
    assert rel(grads["scale"], module.scale.grad) < 1e-10
    assert rel(grads["shift"], module.shift.grad) < 1e-10
    # nearest: torch's grid gradient is zero; Avalon's has no path (as for 4-d input), so no entry or zeros
    assert module.shift_nearest.grad.abs().max() == 0
    assert "shift_nearest" not in grads or np.abs(grads["shift_nearest"].numpy()).max() == 0


# -- 5. recurrent layers: hidden-state errors and proj_size ----------------------------------------------

def _raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the exception is the answer
        return type(e), re.sub(r"^\S+:\d+: ", "", str(e))  # (Avalon puts the user's file:line in front)
    return None


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_recurrent_hidden_state_errors_as_torch(name):
    rng = _rng(5)
    cases = [((5, 2, 3), (2, 3, 4)), ((5, 2, 3), (1, 2, 4)), ((5, 2, 3), (2, 2, 5)), ((5, 2, 3), (2, 4)),
             ((5, 3), (2, 2, 4)), ((5, 3), (2, 5)), ((5, 3), (1, 4)), ((5, 2, 3), (4, 2, 4))]
    checked = 0
    for batch_first in (False, True):
        tm = getattr(tnn, name)(3, 4, num_layers=2, batch_first=batch_first).double()
        am = getattr(nn, name)(3, 4, num_layers=2, batch_first=batch_first).double()
        for xs, hs in cases:
            x, h = rng.standard_normal(xs), rng.standard_normal(hs)
            n = () if len(xs) == 2 else (xs[0] if batch_first else xs[1],)
            good = rng.standard_normal((2, *n, 4))
            for hx in ([(h, good), (good, h)] if name == "LSTM" else [h]):
                if name == "LSTM":
                    want = _raised(lambda: tm(torch.tensor(x), tuple(torch.tensor(v) for v in hx)))
                    got = _raised(lambda: am(av.tensor(x), tuple(av.tensor(v) for v in hx)))
                else:
                    want = _raised(lambda: tm(torch.tensor(x), torch.tensor(hx)))
                    got = _raised(lambda: am(av.tensor(x), av.tensor(hx)))
                assert want is not None and want[0] is RuntimeError
                assert got == want
                checked += 1
    assert checked == 2 * len(cases) * (2 if name == "LSTM" else 1)
    # the right shapes still run, unbatched too
    tm = getattr(tnn, name)(3, 4, num_layers=2).double()
    am = getattr(nn, name)(3, 4, num_layers=2).double()
    x = rng.standard_normal((5, 3))
    h = rng.standard_normal((2, 4))
    out = am(av.tensor(x), (av.tensor(h), av.tensor(h)) if name == "LSTM" else av.tensor(h))[0]
    assert out.shape == (5, 4)
    assert tm(torch.tensor(x), (torch.tensor(h),) * 2 if name == "LSTM" else torch.tensor(h))[0].shape == (5, 4)


@pytest.mark.parametrize("name", ["RNN", "GRU"])
@pytest.mark.parametrize("proj_size", [0, 2])
def test_rnn_gru_refuse_proj_size(name, proj_size):
    want = _raised(lambda: getattr(tnn, name)(3, 4, proj_size=proj_size))
    assert want == (ValueError, "proj_size argument is only supported for LSTM, not RNN or GRU")
    assert _raised(lambda: getattr(nn, name)(3, 4, proj_size=proj_size)) == want
    assert getattr(nn, name)(3, 4, 2, bias=False).num_layers == 2  # (the other arguments as before)


# -- 4. F.multi_head_attention_forward with static_k / static_v ------------------------------------------

def _mha(lib, q, k, v, w_in, b_in, w_out, b_out, sk, sv, kpm, zero_attn, need_weights):
    F_ = TF if lib is torch else nn.functional
    out, weights = F_.multi_head_attention_forward(
        q, k, v, 8, 2, w_in, b_in, None, None, zero_attn, 0.0, w_out, b_out, training=False,
        key_padding_mask=kpm, need_weights=need_weights, static_k=sk, static_v=sv)
    return out, weights


@pytest.mark.parametrize("batched", [True, False])
def test_multi_head_attention_forward_static_kv(batched):
    rng = _rng(7)
    L, S, N, E, H, S_static = 3, 4, 2, 8, 2, 5
    n = N if batched else 1
    lead = (N,) if batched else ()
    q = rng.standard_normal((L, *lead, E))
    kv = rng.standard_normal((S, *lead, E))
    params = [rng.standard_normal((3 * E, E)) * 0.3, rng.standard_normal(3 * E) * 0.1,
              rng.standard_normal((E, E)) * 0.3, rng.standard_normal(E) * 0.1]
    sk, sv = rng.standard_normal((n * H, S_static, E // H)), rng.standard_normal((n * H, S_static, E // H))
    kpm = rng.random((*lead, S_static)) < 0.3
    kpm[..., 0] = False  # (every query keeps one key)
    for statics, mask, zero_attn, need_weights in [((sk, sv), None, False, True), ((sk, sv), kpm, True, False),
                                                   ((sk[:, :S], None), None, False, True), ((None, sv[:, :S]), None, True,
                                                                                     True)]:
        arrays = [q, kv, *params, *[s for s in statics if s is not None]]
        which = [s is not None for s in statics]

        def f(lib, *xs, mask=mask, zero_attn=zero_attn, need_weights=need_weights, which=which):
            q_, kv_, w_in, b_in, w_out, b_out, *st = xs
            st = iter(st)
            sk_, sv_ = (next(st) if w else None for w in which)
            m = None if mask is None else (torch.tensor(mask) if lib is torch else av.tensor(mask))
            out, weights = _mha(lib, q_, kv_, kv_, w_in, b_in, w_out, b_out, sk_, sv_, m, zero_attn, need_weights)
            return out if weights is None else (out, weights)

        tx = [torch.tensor(a, requires_grad=True) for a in arrays]
        want = f(torch, *tx)
        want = want if isinstance(want, tuple) else (want,)
        ws = [rng.standard_normal(t.shape) for t in want]
        sum((t * torch.tensor(w)).sum() for t, w in zip(want, ws)).backward()

        def loss(*xs):
            got = f(av, *xs)
            got = got if isinstance(got, tuple) else (got,)
            return sum((g * w).sum() for g, w in zip(got, ws))

        for run in (lambda *xs: f(av, *xs), av.compile(lambda *xs: f(av, *xs))):
            got = run(*arrays)
            got = got if isinstance(got, tuple) else (got,)
            assert len(got) == len(want)
            for g, t in zip(got, want):
                assert rel(g, t.detach()) < 1e-12
        grads = av.grad(loss, argnums=tuple(range(len(arrays))))(*arrays)
        for g, t in zip(grads, tx):  # (key/value unused when both statics are given: torch's grad is None)
            assert rel(g, t.grad) < 1e-10 if t.grad is not None else np.abs(g.numpy()).max() == 0


def test_multi_head_attention_forward_static_kv_errors():
    rng = _rng(8)
    q, kv = rng.standard_normal((3, 2, 8)), rng.standard_normal((4, 2, 8))
    w_in, w_out = rng.standard_normal((24, 8)), rng.standard_normal((8, 8))
    bias = rng.standard_normal((1, 1, 8))
    for sk, bk in [(rng.standard_normal((3, 5, 4)), None), (rng.standard_normal((4, 5, 3)), None),
                   (rng.standard_normal((4, 5, 4)), bias)]:
        args = lambda lib, sk=sk, bk=bk: (  # noqa: E731
            q, kv, kv, 8, 2, w_in, None, bk, bk, False, 0.0, w_out, None)
        want = _raised(lambda: TF.multi_head_attention_forward(
            *[torch.tensor(a) if isinstance(a, np.ndarray) else a for a in args(torch)], static_k=torch.tensor(sk)))
        got = _raised(lambda: nn.functional.multi_head_attention_forward(
            *[av.tensor(a) if isinstance(a, np.ndarray) else a for a in args(av)], static_k=av.tensor(sk)))
        assert want is not None and got == want


# -- 1. linalg.eig / eigvals gradients --------------------------------------------------------------

_EIG_LOSSES = {
    "eigvals: Re sum + Im^2": lambda lib, a: (lambda w: w.real.sum() + (w.imag ** 2).sum())(lib.linalg.eigvals(a)),
    "eigvals: |w|": lambda lib, a: lib.linalg.eigvals(a).abs().sum(),
    "eig: |V|": lambda lib, a: lib.linalg.eig(a)[1].abs().sum(),
    "eig: |V|^2 Re w + |Im w|": lambda lib, a: (lambda r: (r[1].abs() ** 2 * r[0].real[..., None, :]).sum()
                                                  + r[0].imag.abs().sum())(lib.linalg.eig(a)),
}


@pytest.mark.parametrize("loss", sorted(_EIG_LOSSES))
def test_eig_gradients_match_torch(loss):
    f = _EIG_LOSSES[loss]
    a = _rng(11).standard_normal((3, 4, 4))  # (complex pairs and real eigenvalues both occur)
    assert (np.abs(np.linalg.eigvals(a).imag) > 1e-3).any()
    t = torch.tensor(a, requires_grad=True)
    f(torch, t).backward()
    grad = av.grad(lambda x: f(av, x))
    assert rel(grad(a), t.grad) < 1e-10
    assert rel(av.compile(lambda x: grad(x))(a), t.grad) < 1e-10


def test_eig_phase_dependent_loss_is_refused_and_jvp_is_torchs():
    a = _rng(12).standard_normal((4, 4))
    t = torch.tensor(a, requires_grad=True)
    with pytest.raises(RuntimeError, match="e\\^\\{i phi\\}"):
        torch.linalg.eig(t)[1].real.sum().backward()
    # a graph cannot raise on values: the whole gradient is nan instead of a phase-dependent number
    assert np.isnan(av.grad(lambda x: av.linalg.eig(x)[1].real.sum())(a).numpy()).all()
    # forward mode: the tangent of gauge-invariant outputs, against torch.func.jvp
    da = _rng(13).standard_normal((4, 4))

    def fn(lib):
        return lambda x: (lambda r: lib.cat([r[0].real, r[0].imag, r[1].abs().reshape(-1)]))(lib.linalg.eig(x))

    _, want = torch.func.jvp(fn(torch), (torch.tensor(a),), (torch.tensor(da),))
    _, got = av.func.jvp(fn(av), (av.tensor(a),), (av.tensor(da),))
    assert rel(got, want) < 1e-10


def test_eig_imported_gradient():
    a = torch.tensor(_rng(14).standard_normal((2, 4, 4)))
    module = _EigModel(torch.tensor(_rng(15).uniform(0.5, 1.5, (4, 4))))
    imported = av.from_torch(module, a)
    out = module(a)
    assert rel(imported(a.numpy()), out.detach()) < 1e-12
    out.backward()
    assert rel(av.grad(lambda m, x: m(x))(imported, a.numpy())["p"], module.p.grad) < 1e-10


class _EigModel(tnn.Module):
    def __init__(self, p: torch.Tensor) -> None:
        super().__init__()
        self.p = tnn.Parameter(p)

    def forward(self, x):
        w, v = torch.linalg.eig(x * self.p)
        return w.abs().sum() + v.abs().sum() + torch.linalg.eigvals(x + self.p).real.sum()


# -- 2. linalg.ldl_factor / ldl_factor_ex / ldl_solve --------------------------------------------------

def _symmetric(rng, shape, dominant: bool) -> np.ndarray:
    a = rng.standard_normal(shape)
    a = a + np.swapaxes(a, -1, -2)
    return a + 4 * shape[-1] * np.eye(shape[-1]) if dominant else a


@pytest.mark.parametrize("dominant", [False, True])
def test_ldl_factor_and_solve_match_torch(dominant):
    rng = _rng(21 + dominant)
    a, b = _symmetric(rng, (3, 5, 5), dominant), rng.standard_normal((3, 5, 2))
    t = torch.linalg.ldl_factor_ex(torch.tensor(a))
    if not dominant:
        assert (t.pivots < 0).any()  # (2x2 blocks occur: their pivots are negative)
    want_x = torch.linalg.ldl_solve(t.LD, t.pivots, torch.tensor(b))

    def run(a, b):
        ld, piv, info = av.linalg.ldl_factor_ex(a)
        ld2, piv2 = av.linalg.ldl_factor(a, hermitian=True)  # (the same for real matrices, as torch's)
        return ld, piv, info, ld2, piv2, av.linalg.ldl_solve(ld, piv, b)

    for f in (run, av.compile(run)):
        ld, piv, info, ld2, piv2, x = f(a, b)
        assert piv.dtype == av.int32 and info.dtype == av.int32
        np.testing.assert_array_equal(piv.numpy(), t.pivots.numpy())
        np.testing.assert_array_equal(piv2.numpy(), t.pivots.numpy())
        np.testing.assert_array_equal(info.numpy(), t.info.numpy())
        assert rel(ld, t.LD) < 1e-14 and rel(ld2, t.LD) < 1e-14
        assert rel(x, want_x) < 1e-12
    # ldl_solve broadcasts batch dims (torch 2.13's CPU kernel crashes when it has to: compared on expanded ones)
    bb = rng.standard_normal((2, 1, 5, 3))
    want = torch.linalg.ldl_solve(t.LD.expand(2, 3, 5, 5).contiguous(), t.pivots.expand(2, 3, 5).contiguous(),
                                  torch.tensor(bb).expand(2, 3, 5, 3).contiguous())
    assert rel(av.linalg.ldl_solve(t.LD.numpy(), t.pivots.numpy(), bb), want) < 1e-12


def test_ldl_errors_and_no_derivative_as_torch():
    rng = _rng(23)
    a = _symmetric(rng, (4, 4), False)
    ld, piv = torch.linalg.ldl_factor(torch.tensor(a))
    t = torch.tensor(a, requires_grad=True)
    with pytest.raises(RuntimeError, match="derivative for aten::linalg_ldl_factor_ex is not implemented"):
        torch.linalg.ldl_factor(t)[0].sum().backward()
    with pytest.raises(av.autodiff.GradError, match="derivative for aten::linalg_ldl_factor_ex is not implemented"):
        av.grad(lambda x: av.linalg.ldl_factor(x)[0].sum())(a)
    with pytest.raises(av.autodiff.GradError, match="derivative for aten::linalg_ldl_solve is not implemented"):
        av.grad(lambda y: av.linalg.ldl_solve(ld.numpy(), piv.numpy(), y).sum())(rng.standard_normal((4, 2)))
    singular = np.zeros((3, 3))
    singular[0, 0] = 1.0
    assert _raised(lambda: av.linalg.ldl_factor(singular)) == _raised(
        lambda: torch.linalg.ldl_factor(torch.tensor(singular)))[:1] + ("torch.linalg.ldl_factor: Unknown error code: 2.",)
    assert int(av.linalg.ldl_factor_ex(singular).info.numpy()) == 2
    for bad in (rng.standard_normal((5, 2)), rng.standard_normal((4, 2)).astype(np.float32)):
        assert _raised(lambda: av.linalg.ldl_solve(ld.numpy(), piv.numpy(), bad)) == _raised(
            lambda: torch.linalg.ldl_solve(ld, piv, torch.tensor(bad)))
    assert _raised(lambda: av.linalg.ldl_factor_ex(rng.standard_normal((2, 3))))[0] is RuntimeError


class _LDLModel(tnn.Module):
    def __init__(self, p: torch.Tensor) -> None:
        super().__init__()
        self.p = tnn.Parameter(p)

    def forward(self, a, b):
        ld, piv = torch.linalg.ldl_factor(a)
        r = torch.linalg.ldl_factor_ex(a + 1.0)
        return torch.linalg.ldl_solve(ld, piv, b) * self.p + r.LD.sum() + r.pivots.sum() + r.info.sum()


def test_ldl_imports():
    rng = _rng(24)
    a, b = _symmetric(rng, (2, 4, 4), False), rng.standard_normal((2, 4, 3))
    module = _LDLModel(torch.tensor(rng.uniform(0.5, 1.5, (4, 3))))
    imported = av.from_torch(module, torch.tensor(a), torch.tensor(b))
    out = module(torch.tensor(a), torch.tensor(b))
    for run in (imported, av.compile(imported)):
        assert rel(run(a, b), out.detach()) < 1e-12
    out.sum().backward()  # (the gradient of p only: no path through the factorization)
    assert rel(av.grad(lambda m, x, y: m(x, y).sum())(imported, a, b)["p"], module.p.grad) < 1e-12
