"""Complex values (avalon/complex.py), `avalon.fft` and `av.stft`/`av.istft` against torch in float64:
values on random shapes (hypothesis), gradients in torch's convention (dL/da + i dL/db) eagerly and
compiled, complex parameters trained with Adam from torch's weights (a Fourier neural operator's spectral
convolution), Meta's Llama rotary embedding by view_as_complex, an STFT spectral loss, and the errors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers import rel
from hypothesis import given, settings
from hypothesis import strategies as st

import avalon as av
from avalon import nn, optim

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def cnp(z) -> np.ndarray:
    """numpy values of an Avalon or torch (complex) tensor."""
    if isinstance(z, torch.Tensor):
        return z.detach().resolve_conj().numpy()
    return z.numpy()


def err(ours, theirs) -> float:
    a, b = cnp(ours), cnp(theirs)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def randc(rng, shape) -> np.ndarray:
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


# -- values ----------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=3), data=st.data(),
       norm=st.sampled_from([None, "backward", "ortho", "forward"]))
def test_one_dimensional_transforms_match_torch(shape, data, norm):
    rng = np.random.default_rng(len(shape) * 7 + shape[-1])
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    n = data.draw(st.one_of(st.none(), st.integers(1, 9)))
    x, z = rng.standard_normal(shape), randc(rng, shape)
    for name, arg in (("fft", z), ("ifft", z), ("rfft", x), ("ihfft", x), ("irfft", z), ("hfft", z)):
        if name in ("irfft", "hfft") and n is None and shape[dim] == 1:
            continue  # 2 (m - 1) = 0 points: an error in both
        ours = getattr(av.fft, name)(av.tensor(arg), n=n, dim=dim, norm=norm)
        theirs = getattr(torch.fft, name)(torch.tensor(arg), n=n, dim=dim, norm=norm)
        assert err(ours, theirs) < 1e-12, name


def test_multi_dimensional_transforms_frequencies_and_shifts_match_torch():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((2, 3, 6, 5))
    ty, ay = torch.tensor(y), av.tensor(y)
    for f in ("fft2", "ifft2", "fftn", "ifftn", "rfft2", "rfftn"):
        assert err(getattr(av.fft, f)(ay), getattr(torch.fft, f)(ty)) < 1e-12, f
    assert err(av.fft.rfftn(ay, s=(4, 7), dim=(1, 3)), torch.fft.rfftn(ty, s=(4, 7), dim=(1, 3))) < 1e-12
    assert err(av.fft.fftn(ay, s=(3, 3)), torch.fft.fftn(ty, s=(3, 3))) < 1e-12
    Z = torch.fft.rfft2(ty)
    assert err(av.fft.irfft2(av.tensor(Z)), torch.fft.irfft2(Z)) < 1e-12
    assert err(av.fft.irfft2(av.tensor(Z), s=(6, 5)), torch.fft.irfft2(Z, s=(6, 5))) < 1e-12
    assert err(av.fft.irfftn(av.tensor(Z), dim=(0, 2, 3)), torch.fft.irfftn(Z, dim=(0, 2, 3))) < 1e-12
    for n, d in ((7, 0.3), (8, 1.0)):
        assert err(av.fft.fftfreq(n, d, dtype=av.float64), torch.fft.fftfreq(n, d, dtype=torch.float64)) == 0
        assert err(av.fft.rfftfreq(n, d, dtype=av.float64), torch.fft.rfftfreq(n, d, dtype=torch.float64)) == 0
    assert err(av.fft.fftshift(ay), torch.fft.fftshift(ty)) == 0
    assert err(av.fft.ifftshift(ay, dim=(1, 2)), torch.fft.ifftshift(ty, dim=(1, 2))) == 0
    z = randc(rng, (3, 5))
    assert err(av.fft.fftshift(av.tensor(z), dim=1), torch.fft.fftshift(torch.tensor(z), dim=1)) == 0


def test_complex_arithmetic_and_functions_match_torch():
    rng = np.random.default_rng(1)
    z1, z2, x = randc(rng, (3, 4)), randc(rng, (3, 4)), rng.standard_normal((3, 4))
    a1, a2, ax = av.tensor(z1), av.tensor(z2), av.tensor(x)
    t1, t2, tx = torch.tensor(z1), torch.tensor(z2), torch.tensor(x)
    cases = {
        "mul": lambda a, b, r: a * b, "div": lambda a, b, r: a / b, "add": lambda a, b, r: a + b,
        "sub": lambda a, b, r: a - b, "real*z": lambda a, b, r: r * a, "z/real": lambda a, b, r: a / r,
        "real/z": lambda a, b, r: r / a, "real-z": lambda a, b, r: r - a, "scalar": lambda a, b, r: a * (2 - 1j) + (1 + 2j),
        "1j*real": lambda a, b, r: 1j * r, "pow2": lambda a, b, r: a ** 2, "pow-3": lambda a, b, r: a ** -3,
        "pow0.7": lambda a, b, r: a ** 0.7, "exp": lambda a, b, r: a.exp(), "log": lambda a, b, r: a.log(),
        "sqrt": lambda a, b, r: a.sqrt(), "abs": lambda a, b, r: a.abs(), "angle": lambda a, b, r: a.angle(),
        "conj": lambda a, b, r: a.conj(), "matmul": lambda a, b, r: a @ b.mT, "mH": lambda a, b, r: a.mH,
        "sum": lambda a, b, r: a.sum(1), "mean": lambda a, b, r: a.mean(), "index": lambda a, b, r: a[1:, ::2],
        "reshape": lambda a, b, r: a.reshape(4, 3).transpose(0, 1).flip(0), "real part": lambda a, b, r: a.real,
        "imag part": lambda a, b, r: a.imag, "reciprocal": lambda a, b, r: a.reciprocal(),
    }
    for name, f in cases.items():
        assert err(f(a1, a2, ax), f(t1, t2, tx)) < 1e-13, name
    mods = {"einsum": lambda m, a, b, r: m.einsum("ij,kj->ik", a, b),
            "einsum3": lambda m, a, b, r: m.einsum("ij,kj,k->i", a, b, r[:, 0].to(a.dtype)),
            "view_as_real": lambda m, a, b, r: m.view_as_real(a),
            "polar": lambda m, a, b, r: m.polar(r.abs(), r), "complex": lambda m, a, b, r: m.complex(r, r * 2),
            "exp": lambda m, a, b, r: m.exp(a), "cat": lambda m, a, b, r: m.cat([a, b], 1),
            "stack": lambda m, a, b, r: m.stack([a, b]), "where": lambda m, a, b, r: m.where(r > 0, a, b),
            "outer": lambda m, a, b, r: m.outer(a[0], b[1]), "angle real": lambda m, a, b, r: m.angle(r),
            "abs": lambda m, a, b, r: m.abs(a), "conj": lambda m, a, b, r: m.conj(a)}
    for name, f in mods.items():
        assert err(f(av, a1, a2, ax), f(torch, t1, t2, tx)) < 1e-13, name
    v = rng.standard_normal((2, 3, 2))
    assert err(av.view_as_complex(av.tensor(v)), torch.view_as_complex(torch.tensor(v))) == 0
    assert av.is_complex(a1) and not av.is_complex(ax) and a1.is_complex() and not ax.is_complex()
    assert ax.real is ax and av.real(a1) is a1.real and ax.conj() is ax
    assert bool(av.allclose(a1, av.tensor(z1))) and not bool(av.allclose(a1, a2))


def test_dtypes_creation_conversion_and_writes():
    assert av.zeros(2, 3, dtype=av.cfloat).dtype == av.complex64 == av.complex64
    assert av.ones(2, dtype=torch.complex128).dtype == av.complex128
    assert av.tensor([1 + 2j, 3]).dtype == av.complex64
    assert av.tensor(np.array([1j])).dtype == av.complex128
    assert av.tensor(np.ones(3), dtype=av.cfloat).dtype == av.complex64
    assert av.tensor(np.ones(3, np.float32)).to(torch.cfloat).dtype == av.complex64
    assert av.full((2,), 1 + 1j).dtype == av.complex64
    z = av.randn(4000, dtype=av.cdouble)
    assert abs(float((z.abs() ** 2).mean()) - 1) < 0.1  # torch's complex randn: E|z|^2 = 1
    with pytest.warns(UserWarning, match="discards the imaginary part"):
        assert z.to(av.float32).dtype == av.float32
    w = av.zeros(2, 3, dtype=av.cdouble)
    w[:, 1:] = av.tensor(np.array([[1 + 1j, 2], [3j, 4]]))
    w[0, 0] = 5.0
    expected = np.array([[5, 1 + 1j, 2], [0, 3j, 4]])
    assert np.array_equal(w.numpy(), expected)
    w.real.mul_(2)  # writing into the real part writes into w, as torch's views do
    assert np.array_equal(w.numpy().real, 2 * expected.real)
    t = torch.tensor(expected)
    assert err(av.tensor(t), t) == 0 and err(av.as_tensor(t), t) == 0


# -- gradients ---------------------------------------------------------------------------------------

def spectral_loss(m, x, w, w2):
    F = m.fft
    X = F.rfft(x)
    W = m.complex(w, w2)
    Y = X * W
    y = F.irfft(Y, n=8)
    Z = F.fft(m.view_as_complex(m.stack([x, x * 0.5 + 1], -1)), norm="ortho")
    a = F.ifft2(Z.reshape(2, 12)).abs()
    e = m.einsum("ij,kj->ik", Y, W.conj())
    return ((y ** 2).sum() + (a * a.flip(0)).sum() + e.abs().sum() + e.angle().sum() + F.hfft(Y).sum()
            + (Y.exp() / (W + 3)).real.sum() + F.rfft2(x.reshape(4, 6), norm="forward").abs().sum())


@pytest.mark.parametrize("mode", ["eager", "numpy", "cpu"])
def test_gradients_through_transforms_and_complex_ops_match_torch(mode):
    rng = np.random.default_rng(2)
    x, w, w2 = rng.standard_normal((3, 8)), rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    ts = [torch.tensor(v, requires_grad=True) for v in (x, w, w2)]
    loss = spectral_loss(torch, *ts)
    loss.backward()
    g = av.value_and_grad(lambda *a: spectral_loss(av, *a), argnums=(0, 1, 2))
    g = g if mode == "eager" else av.compile(g, backend=mode)
    value, grads = g(*(av.tensor(v) for v in (x, w, w2)))
    assert abs(float(value) - loss.item()) < 1e-12 * abs(loss.item())
    for ours, t in zip(grads, ts):
        assert rel(ours, t.grad) < 1e-12


def test_the_gradient_of_a_complex_argument_is_torch_s():
    rng = np.random.default_rng(3)
    z = randc(rng, (3, 6))
    r = rng.standard_normal((3, 10))
    tz = torch.tensor(z, requires_grad=True)
    ((torch.fft.fft(tz).abs() ** 2).sum() + (torch.fft.irfft(tz, n=10) * torch.tensor(r)).sum()).backward()

    def f(z, r):
        return (av.fft.fft(z).abs() ** 2).sum() + (av.fft.irfft(z, n=10) * r).sum()
    for g in (av.grad(f), av.compile(av.grad(f), backend="cpu")):
        gz = g(av.tensor(z), av.tensor(r))
        assert isinstance(gz, av.ComplexTensor) and err(gz, tz.grad) < 1e-12


# -- models ----------------------------------------------------------------------------------------

def fno(lib, F_, th):
    """The Fourier neural operator's 2-d spectral convolution as its authors wrote it (complex weights,
    rfft2, the kept modes written into a zero spectrum, irfft2), in a small FNO block."""
    class SpectralConv2d(lib.Module):
        def __init__(self, cin, cout, m1, m2):
            super().__init__()
            self.cout, self.m1, self.m2 = cout, m1, m2
            scale = 1 / (cin * cout)
            self.weights1 = lib.Parameter(scale * th.rand(cin, cout, m1, m2, dtype=th.cfloat))
            self.weights2 = lib.Parameter(scale * th.rand(cin, cout, m1, m2, dtype=th.cfloat))

        def compl_mul2d(self, input, weights):
            return th.einsum("bixy,ioxy->boxy", input, weights)

        def forward(self, x):
            x_ft = th.fft.rfft2(x)
            out_ft = th.zeros(x.shape[0], self.cout, x.size(-2), x.size(-1) // 2 + 1, dtype=th.cfloat, device=x.device)
            out_ft[:, :, :self.m1, :self.m2] = self.compl_mul2d(x_ft[:, :, :self.m1, :self.m2], self.weights1)
            out_ft[:, :, -self.m1:, :self.m2] = self.compl_mul2d(x_ft[:, :, -self.m1:, :self.m2], self.weights2)
            return th.fft.irfft2(out_ft, s=(x.size(-2), x.size(-1)))

    class FNO(lib.Module):
        def __init__(self):
            super().__init__()
            self.p, self.conv, self.w, self.q = lib.Linear(3, 4), SpectralConv2d(4, 4, 3, 3), lib.Conv2d(4, 4, 1), \
                lib.Linear(4, 1)

        def forward(self, x):
            x = self.p(x).permute(0, 3, 1, 2)
            x = F_.gelu(self.conv(x) + self.w(x))
            return self.q(x.permute(0, 2, 3, 1))
    return FNO()


@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_fno_complex_weights_trained_with_adam_from_torch_s_weights(mode):
    torch.manual_seed(0)
    theirs = fno(torch.nn, torch.nn.functional, torch)
    ours = fno(nn, nn.functional, av)
    nn.load_state_dict(ours, theirs.state_dict())  # torch's complex entries fill the (real, imag) pairs
    assert [n for n, _ in ours.named_parameters()][2:4] == ["conv.weights1.real", "conv.weights1.imag"]
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((2, 8, 8, 3)).astype(np.float32), rng.standard_normal((2, 8, 8, 1)).astype(np.float32)
    topt, oopt = torch.optim.Adam(theirs.parameters(), lr=1e-2), optim.Adam(ours.parameters(), lr=1e-2)

    def loss_fn(m, x, y):
        return ((m(x) - y) ** 2).mean()

    def step(m, opt, x, y):
        loss, grads = av.value_and_grad(loss_fn)(m, x, y)
        opt.step(grads)
        return loss
    step = step if mode == "eager" else av.compile(step, backend=mode)
    for _ in range(3):
        topt.zero_grad()
        lt = loss_fn(theirs, torch.tensor(x), torch.tensor(y))
        lt.backward()
        topt.step()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lo = step(ours, oopt, av.tensor(x), av.tensor(y))
        assert abs(float(lo) - lt.item()) < 1e-5 * lt.item()
    for name in ("weights1", "weights2"):
        assert err(getattr(ours.conv, name), getattr(theirs.conv, name)) < 1e-5


def llama_attention_rope(lib, th):
    """Meta's llama/model.py rotary embedding: freqs_cis by torch.polar, q and k as complex pairs by
    view_as_complex, rotated by a product and read back by view_as_real."""
    def precompute_freqs_cis(dim, end, theta=10000.0):
        freqs = 1.0 / (theta ** (th.arange(0, dim, 2)[: (dim // 2)].double() / dim))
        t = th.arange(end, device=freqs.device, dtype=th.float64)
        freqs = th.outer(t, freqs)
        return th.polar(th.ones_like(freqs), freqs)

    def reshape_for_broadcast(freqs_cis, x):
        ndim = x.ndim
        assert freqs_cis.shape == (x.shape[1], x.shape[-1])
        shape = [d if i == 1 or i == ndim - 1 else 1 for i, d in enumerate(x.shape)]
        return freqs_cis.view(*shape)

    def apply_rotary_emb(xq, xk, freqs_cis):
        xq_ = th.view_as_complex(xq.double().reshape(*xq.shape[:-1], -1, 2))
        xk_ = th.view_as_complex(xk.double().reshape(*xk.shape[:-1], -1, 2))
        freqs_cis = reshape_for_broadcast(freqs_cis, xq_)
        xq_out = th.view_as_real(xq_ * freqs_cis).flatten(3)
        xk_out = th.view_as_real(xk_ * freqs_cis).flatten(3)
        return xq_out.type_as(xq), xk_out.type_as(xk)

    class Attention(lib.Module):
        def __init__(self, dim=8, heads=2, max_seq=6):
            super().__init__()
            self.heads, self.hd = heads, dim // heads
            self.wq, self.wk = lib.Linear(dim, dim, bias=False), lib.Linear(dim, dim, bias=False)
            self.wv, self.wo = lib.Linear(dim, dim, bias=False), lib.Linear(dim, dim, bias=False)
            self.register_buffer("freqs_cis", precompute_freqs_cis(self.hd, max_seq), persistent=False)

        def forward(self, x, start_pos=0):
            b, s, _ = x.shape
            xq = self.wq(x).view(b, s, self.heads, self.hd)
            xk = self.wk(x).view(b, s, self.heads, self.hd)
            xv = self.wv(x).view(b, s, self.heads, self.hd)
            xq, xk = apply_rotary_emb(xq, xk, self.freqs_cis[start_pos:start_pos + s])
            scores = th.matmul(xq.transpose(1, 2), xk.transpose(1, 2).transpose(2, 3)) / self.hd ** 0.5
            out = th.matmul(th.softmax(scores, dim=-1), xv.transpose(1, 2))
            return self.wo(out.transpose(1, 2).contiguous().view(b, s, -1))
    return Attention()


@pytest.mark.parametrize("mode", ["eager", "cpu"])
def test_llama_rotary_embedding_by_view_as_complex_forward_and_gradients(mode):
    torch.manual_seed(1)
    theirs = llama_attention_rope(torch.nn, torch).double()
    ours = llama_attention_rope(nn, av).to(av.float64)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())  # the non-persistent complex buffer is not saved
    assert len(list(ours.parameters())) == 4  # ... and not trained
    nn.load_state_dict(ours, theirs.state_dict())
    x = np.random.default_rng(5).standard_normal((2, 5, 8))
    tx = torch.tensor(x)
    out = theirs(tx, 1)
    (out ** 2).sum().backward()
    g = av.value_and_grad(lambda m, x: (m(x, 1) ** 2).sum())
    g = g if mode == "eager" else av.compile(g, backend=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grads = g(ours, av.tensor(x))
    assert abs(float(value) - (out ** 2).sum().item()) < 1e-12 * float(value)
    for name, p in theirs.named_parameters():
        assert rel(grads[name], p.grad) < 1e-12, name


def test_stft_and_istft_match_torch_and_a_spectral_loss_trains_through_them():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 100))
    for kw in (dict(n_fft=16), dict(n_fft=16, hop_length=5, win_length=12, window=True),
               dict(n_fft=16, normalized=True, onesided=False, pad_mode="constant"),
               dict(n_fft=32, hop_length=8, window=True, pad_mode="replicate")):
        kw = dict(kw)
        win = kw.pop("window", False)
        wl = kw.get("win_length", kw["n_fft"])
        tw = torch.hann_window(wl, dtype=torch.float64) if win else torch.ones(wl, dtype=torch.float64)
        aw = av.hann_window(wl, dtype=av.float64) if win else None
        T = torch.stft(torch.tensor(x), window=tw, return_complex=True, **kw)
        A = av.stft(av.tensor(x), window=aw, return_complex=True, **kw)
        assert err(A, T) < 1e-13, kw
        kw.pop("pad_mode", None)
        assert err(av.istft(A, window=aw, length=100, **kw), torch.istft(T, window=tw, length=100, **kw)) < 1e-12
    one = av.stft(av.tensor(x[0]), 16, center=False, return_complex=True)
    assert err(one, torch.stft(torch.tensor(x[0]), 16, window=torch.ones(16, dtype=torch.float64), center=False,
                               return_complex=True)) < 1e-13

    def loss(m, x, w):  # a multi-resolution STFT loss's magnitude terms
        S = m.stft(x, 32, 8, window=w, return_complex=True)
        return m.log(S.abs() + 1e-3).mean() + (S.abs() ** 2).sum()
    tx = torch.tensor(x, requires_grad=True)
    loss(torch, tx, torch.hann_window(32, dtype=torch.float64)).backward()
    ours = av.grad(lambda x, w: loss(av, x, w))
    for g in (ours, av.compile(ours, backend="cpu")):
        assert rel(g(av.tensor(x), av.hann_window(32, dtype=av.float64)), tx.grad) < 1e-12


def test_bad_complex_input_is_named():
    z = av.tensor(np.array([1j, 2]))
    with pytest.raises(RuntimeError, match="last dimension of size 2"):
        av.view_as_complex(av.ones(3, 3))
    with pytest.raises(RuntimeError, match="non-complex"):
        av.ones(2).imag  # noqa: B018
    with pytest.raises(RuntimeError, match="real input"):
        av.fft.rfft(z)
    with pytest.raises(RuntimeError, match="return_complex"):
        av.stft(av.ones(64), 16)
    with pytest.raises(ValueError, match="normalization"):
        av.fft.fft(z, norm="both")
    with pytest.raises(RuntimeError, match="Invalid number of data points"):
        av.fft.fft(z, n=0)
    with pytest.raises(AttributeError, match="ComplexTensor has no 'sigmoid'"):
        z.sigmoid()
    with pytest.raises(TypeError, match="float32 or float64 parts"):
        av.ComplexTensor(av.ones(2, dtype=av.float16), av.ones(2, dtype=av.float16))


def test_models_with_ffts_import_from_torch_export():
    """ATen's _fft_r2c/_fft_c2r/_fft_c2c, view_as_real and complex arithmetic import (an FNet-style
    mixing layer as HF writes it, `fftn(x, dim=(1, 2)).real`, beside rfft/irfft with a complex scale)."""
    class Mixer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.ff = torch.nn.LayerNorm(8), torch.nn.Linear(8, 8)

        def forward(self, x):
            mixed = self.norm(x + torch.fft.fftn(x, dim=(1, 2)).real)
            b = torch.fft.irfft(torch.fft.rfft(x, norm="ortho") * 2j, n=8, norm="ortho")
            return self.ff(mixed) + b + torch.fft.ifft2(x).imag + torch.fft.fft(torch.fft.fft(x, dim=-1), dim=-2).real
    torch.manual_seed(2)
    m = Mixer().eval()
    x = torch.randn(2, 4, 8)
    ours = av.from_torch(m, x)
    expected = m(x).detach()
    assert rel(ours(av.tensor(x.numpy())), expected) < 1e-5
    assert rel(av.compile(lambda x: ours(x), backend="cpu")(av.tensor(x.numpy())), expected) < 1e-5


def test_transforms_and_their_gradients_compile_to_triton_kernels():
    """Nothing below the frontend is new: the DFT products, tables and gathers are ordinary kernels."""
    x = np.random.default_rng(7).standard_normal((2, 16)).astype(np.float32)
    t = torch.tensor(x, requires_grad=True)
    want = torch.fft.irfft(torch.fft.rfft(t) * torch.polar(torch.ones(9), torch.linspace(0, 1, 9)), n=16).sum() \
        + torch.stft(t, 8, 2, window=torch.ones(8), return_complex=True).abs().sum()
    want.backward()

    def f(x):
        return av.fft.irfft(av.fft.rfft(x) * av.polar(av.ones(9), av.linspace(0.0, 1.0, 9)), n=16).sum() \
            + av.stft(x, 8, 2, return_complex=True).abs().sum()
    value, grad = av.compile(av.value_and_grad(f), backend="triton")(av.tensor(x))
    assert abs(float(value) - want.item()) < 1e-5 * abs(want.item())
    assert rel(grad, t.grad) < 1e-5


def test_long_transforms_split_four_step_agree_with_torch_values_and_gradients(monkeypatch):
    """The four-step split (avalon/fft.py `_dft`), forced on short lengths: composite, prime, padded and
    cut signals, every transform, and a gradient through rfft and irfft, compiled."""
    import avalon.fft as avfft
    monkeypatch.setattr(avfft, "DIRECT_MAX", 4)
    rng = np.random.default_rng(8)
    for n, length in ((12, 12), (30, 27), (36, 40), (7, 7), (64, 64), (100, 97)):
        x, z = rng.standard_normal((2, length)), randc(rng, (2, length))
        for name, arg in (("fft", z), ("ifft", z), ("rfft", x), ("ihfft", x), ("irfft", z), ("hfft", z)):
            ours = getattr(av.fft, name)(av.tensor(arg), n=n)
            assert err(ours, getattr(torch.fft, name)(torch.tensor(arg), n=n)) < 1e-12, (name, n, length)
    x = rng.standard_normal((3, 48))
    t = torch.tensor(x, requires_grad=True)
    (torch.fft.irfft(torch.fft.rfft(t) ** 2, n=48) ** 2).sum().backward()
    g = av.compile(av.grad(lambda x: (av.fft.irfft(av.fft.rfft(x) ** 2, n=48) ** 2).sum()), backend="cpu")
    assert rel(g(av.tensor(x)), t.grad) < 1e-12


def test_norms_of_complex_tensors_are_norms_of_their_magnitudes_as_torch():
    z = randc(np.random.default_rng(9), (3, 4))
    a, t = av.tensor(z), torch.tensor(z)
    for name, kw in (("vector_norm", {}), ("vector_norm", {"ord": 1, "dim": 1}), ("norm", {}),
                     ("matrix_norm", {}), ("matrix_norm", {"ord": float("inf")})):
        assert rel(getattr(av.linalg, name)(a, **kw), getattr(torch.linalg, name)(t, **kw)) < 1e-13, (name, kw)
    assert rel(av.norm(a, p=3), torch.norm(t, p=3)) < 1e-13 and rel(a.norm(), t.norm()) < 1e-13
