"""torch's 3-d family (video and medical-imaging models) against torch on small random float64 inputs:
F.max_pool3d (indices as torch's flat index into D*H*W), avg_pool3d, the adaptive pools, lp_pool3d,
max_unpool3d, conv_transpose3d and interpolate's 5-d modes (values, indices, gradients through
av.grad against torch.autograd), their layers (state-dict keys, torch weights loaded), the lazy
layers, the torch.* forms, torch's errors, compiled runs (numpy, cpu, triton), and a small 3-D
U-Net trained two Adam steps from torch's weights."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F

pytestmark = [pytest.mark.usefixtures("module_kernel_cache"),
              pytest.mark.filterwarnings("error:.*uses arrays that are not among its arguments:UserWarning")]

RNG = np.random.default_rng(3)


def r(*shape):
    return RNG.standard_normal(shape)


def against_torch(ours, theirs, *arrays, consts=(), grads: bool = True, tol: float = 1e-12):
    """ours(*tensors) and theirs(*torch tensors) agree (a tuple: its first entry, the rest exactly);
    so do the gradients of sum(first output * a random array) with respect to every array. `consts`
    follow the arrays as arguments that are not differentiated (indices)."""
    ts = [T(a).requires_grad_(grads) for a in arrays]
    want = theirs(*ts, *[T(c) for c in consts])
    got = ours(*[av.tensor(a) for a in (*arrays, *consts)])
    first_w, first_g = (want[0], got[0]) if isinstance(want, tuple) else (want, got)
    assert rel(first_g, first_w) < tol
    if isinstance(want, tuple):
        for g, w in zip(got[1:], want[1:]):
            assert g.dtype == av.int64 and np.array_equal(g.numpy(), w.numpy())
    if not grads:
        return
    weight = r(*first_w.shape)
    (first_w * T(weight)).sum().backward()

    def loss(*xs):
        out = ours(*xs[:-1])
        return ((out[0] if isinstance(out, tuple) else out) * xs[-1]).sum()

    gs = av.grad(loss, argnums=tuple(range(len(arrays))))(*[av.tensor(a) for a in (*arrays, *consts, weight)])
    for g, t in zip(gs, ts):
        assert rel(g, t.grad) < tol


@pytest.mark.parametrize("kw", [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(2, 3, 2), stride=(1, 2, 2), padding=(1, 1, 0), dilation=(2, 1, 2), ceil_mode=True),
    dict(kernel_size=(3, 1, 2), stride=2, ceil_mode=True),
])
def test_max_pool3d_values_indices_and_gradients(kw):
    x = r(2, 2, 5, 6, 5)
    against_torch(lambda x: F.max_pool3d(x, **kw, return_indices=True),
                  lambda x: TF.max_pool3d(x, **kw, return_indices=True), x)
    against_torch(lambda x: F.max_pool3d(x, **kw), lambda x: TF.max_pool3d(x, **kw), x)
    against_torch(lambda x: F.max_pool3d_with_indices(x, **kw), lambda x: TF.max_pool3d_with_indices(x, **kw),
                  x[0], grads=False)  # unbatched (C, D, H, W)


def test_max_pool3d_ties_send_the_gradient_to_the_first_maximum():
    x = np.zeros((1, 1, 4, 4, 4))
    x[0, 0, 1, 1, 1] = x[0, 0, 0, 1, 0] = 1.0  # two equal maxima in one window; relu-like zeros elsewhere
    against_torch(lambda x: F.max_pool3d(x, 2, return_indices=True),
                  lambda x: TF.max_pool3d(x, 2, return_indices=True), x)


@pytest.mark.parametrize("kw", [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    dict(kernel_size=(3, 2, 3), stride=(2, 1, 2), padding=(1, 1, 0), ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(2, 3, 3), stride=2, padding=(0, 1, 1), divisor_override=5),
])
def test_avg_pool3d_matches_torch(kw):
    against_torch(lambda x: F.avg_pool3d(x, **kw), lambda x: TF.avg_pool3d(x, **kw), r(2, 2, 5, 6, 7))


@pytest.mark.parametrize("size", [2, (3, None, 4), (5, 6, 7), 1, (2, 4, 3)])
def test_adaptive_pools_match_torch(size):
    x = r(2, 2, 5, 6, 7)
    against_torch(lambda x: F.adaptive_avg_pool3d(x, size), lambda x: TF.adaptive_avg_pool3d(x, size), x)
    against_torch(lambda x: F.adaptive_max_pool3d(x, size, return_indices=True),
                  lambda x: TF.adaptive_max_pool3d(x, size, return_indices=True), x)
    against_torch(lambda x: F.adaptive_max_pool3d(x, size), lambda x: TF.adaptive_max_pool3d(x, size), x[0],
                  grads=False)


def test_lp_pool3d_and_max_unpool3d_match_torch():
    x = np.abs(r(2, 2, 4, 6, 5)) + 0.1
    against_torch(lambda x: F.lp_pool3d(x, 2.0, 2), lambda x: TF.lp_pool3d(x, 2.0, 2), x)
    against_torch(lambda x: F.lp_pool3d(x, 3, (2, 3, 2), stride=(1, 2, 2), ceil_mode=True),
                  lambda x: TF.lp_pool3d(x, 3, (2, 3, 2), stride=(1, 2, 2), ceil_mode=True), x)
    v, i = TF.max_pool3d(T(r(2, 2, 4, 6, 6)), 2, return_indices=True)
    for size in (None, (5, 7, 7), (2, 2, 5, 6, 7)):
        against_torch(lambda v, i, size=size: F.max_unpool3d(v, i, 2, output_size=size),
                      lambda v, i, size=size: TF.max_unpool3d(v, i, 2, output_size=size), v.detach().numpy(),
                      consts=(i.numpy(),))
    with pytest.raises(RuntimeError, match=r"Found an invalid max index: \d+ \(output volumes are of size 4x6x6\)"):
        F.max_unpool3d(v.numpy(), i.numpy() + 200, 2)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(stride=2, bias=True),
    dict(stride=(2, 1, 2), padding=(1, 0, 1), output_padding=(1, 0, 1)),
    dict(stride=2, dilation=(3, 1, 2), output_padding=(2, 1, 1), padding=1, bias=True),
    dict(stride=(1, 2, 2), groups=2, bias=True),
])
def test_conv_transpose3d_values_and_gradients(kw):
    kw = dict(kw)
    bias, groups = kw.pop("bias", False), kw.get("groups", 1)
    x, w = r(2, 4, 3, 4, 3), r(4, 6 // groups, 2, 3, 2)
    arrays = (x, w, r(6)) if bias else (x, w)
    against_torch(lambda *a: F.conv_transpose3d(*a, **kw), lambda *a: TF.conv_transpose3d(*a, **kw), *arrays)
    against_torch(lambda *a: av.conv_transpose3d(*a, **kw), lambda *a: torch.conv_transpose3d(*a, **kw),
                  x[0], w, grads=False)  # unbatched, and the torch.* form


@pytest.mark.parametrize("kw", [dict(scale_factor=2, mode="nearest"), dict(size=(5, 3, 7), mode="nearest-exact"),
                                dict(scale_factor=(2, 1.5, 0.5), mode="trilinear"),
                                dict(size=(5, 3, 7), mode="trilinear", align_corners=True),
                                dict(size=(2, 3, 2), mode="area")])
def test_interpolate_on_volumes(kw):
    against_torch(lambda x: F.interpolate(x, **kw), lambda x: TF.interpolate(x, **kw), r(2, 2, 3, 4, 5))


def test_torch_forms():
    x = r(1, 2, 5, 5, 4)
    assert rel(av.max_pool3d(av.tensor(x), 3, 2, 1, 1, True), torch.max_pool3d(T(x), 3, 2, 1, 1, True)) == 0
    assert rel(av.max_pool3d(av.tensor(x), (2, 2, 1)), torch.max_pool3d(T(x), (2, 2, 1))) == 0


def test_errors_are_torchs():
    x = np.ones((1, 2, 4, 4, 4))
    cases = [
        (lambda: F.max_pool3d(x, 2, padding=2), "pad should be at most half of effective kernel size"),
        (lambda: F.max_pool3d(x, 5), r"Given input size: \(2x4x4x4\). Calculated output size: \(2x0x0x0\)"),
        (lambda: F.max_pool3d(np.ones((2, 4, 4)), 2), "non-empty 4D or 5D"),
        (lambda: F.max_pool3d(x, (2, 2)), "kernel_size must either be a single int, or a tuple of three ints"),
        (lambda: F.max_pool3d(x, 2, stride=0), "stride should not be zero"),
        (lambda: F.avg_pool3d(x, 2, divisor_override=0), "divisor must be not zero"),
        (lambda: F.adaptive_avg_pool3d(x, (2, 2)), "output_size must be 3"),
        (lambda: F.adaptive_max_pool3d(np.ones((2, 4, 4)), 2), r"Expected 4D or 5D tensor, but got: \[2, 4, 4\]"),
        (lambda: F.conv_transpose3d(x, np.ones((2, 3, 2, 2, 2)), stride=2, output_padding=2),
         "output padding must be smaller than either stride or dilation"),
        (lambda: F.conv_transpose3d(x, np.ones((3, 3, 2, 2, 2))), "expected input.* to have 3 channels, but got 2"),
        (lambda: F.conv_transpose3d(np.ones((2, 4, 4)), np.ones((2, 3, 2, 2, 2))), "Expected 4D .* or 5D"),
        (lambda: F.conv_transpose3d(x, np.ones((2, 3, 2, 2, 2)), padding=5), "Output size is too small"),
        (lambda: F.interpolate(x[0], scale_factor=2, mode="trilinear"), "trilinear"),
    ]
    for fn, match in cases:
        with pytest.raises((RuntimeError, ValueError), match=match):
            fn()


# -- layers ---------------------------------------------------------------------------------------

def test_layers_load_torch_state_and_match():
    torch.manual_seed(0)
    pairs = [(nn.ConvTranspose3d(4, 6, (2, 3, 2), stride=2, padding=(0, 1, 0), output_padding=(1, 0, 1), groups=2),
              torch.nn.ConvTranspose3d(4, 6, (2, 3, 2), stride=2, padding=(0, 1, 0), output_padding=(1, 0, 1),
                                       groups=2)),
             (nn.BatchNorm3d(4), torch.nn.BatchNorm3d(4)),
             (nn.MaxPool3d(2, stride=(1, 2, 2), padding=1), torch.nn.MaxPool3d(2, stride=(1, 2, 2), padding=1)),
             (nn.AvgPool3d(3, 2, 1, count_include_pad=False), torch.nn.AvgPool3d(3, 2, 1, count_include_pad=False)),
             (nn.AdaptiveAvgPool3d((2, None, 3)), torch.nn.AdaptiveAvgPool3d((2, None, 3))),
             (nn.AdaptiveMaxPool3d(2), torch.nn.AdaptiveMaxPool3d(2)),
             (nn.LPPool3d(2, 2), torch.nn.LPPool3d(2, 2))]
    x = np.abs(r(2, 4, 4, 5, 6)) + 0.1
    for ours, theirs in pairs:
        theirs.double()
        ours.double()
        assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in theirs.state_dict().items()}, type(ours)
        if not isinstance(ours, nn.BatchNorm3d):  # (torch 2.13's batch norms also print `bias=True`)
            assert repr(ours) == repr(theirs)
        nn.load_state_dict(ours, theirs.state_dict())
        assert rel(ours(av.tensor(x)), theirs(T(x))) < 1e-12, type(ours)
    bn, tbn = pairs[1]  # training mode updated the running statistics, as torch's
    for k, v in tbn.state_dict().items():
        assert rel(bn.state_dict()[k], v) < 1e-12, k
    ct, tct = pairs[0]
    assert rel(ct(av.tensor(x), output_size=(9, 9, 13)), tct(T(x), output_size=(9, 9, 13))) < 1e-12
    bn.eval()
    tbn.eval()
    assert rel(bn(av.tensor(x)), tbn(T(x))) < 1e-12
    pool, unpool = nn.MaxPool3d(2, return_indices=True), nn.MaxUnpool3d(2)
    tpool, tunpool = torch.nn.MaxPool3d(2, return_indices=True), torch.nn.MaxUnpool3d(2)
    got, want = unpool(*pool(av.tensor(x)), output_size=x.shape), tunpool(*tpool(T(x)), output_size=x.shape)
    assert rel(got, want) == 0
    v, i = nn.AdaptiveMaxPool3d((2, 3, 2), return_indices=True)(av.tensor(x))
    assert np.array_equal(i.numpy(), torch.nn.AdaptiveMaxPool3d((2, 3, 2), return_indices=True)(T(x))[1].numpy())
    with pytest.raises(ValueError, match="expected 5D input"):
        nn.BatchNorm3d(4)(av.tensor(x[0]))


def test_lazy_layers_become_torchs_and_load_its_weights():
    av.manual_seed(0)
    cases = [(nn.LazyConv3d(3, 2, padding=1), torch.nn.LazyConv3d(3, 2, padding=1), (2, 4, 3, 4, 3)),
             (nn.LazyConvTranspose1d(3, 3, stride=2), torch.nn.LazyConvTranspose1d(3, 3, stride=2), (2, 4, 5)),
             (nn.LazyConvTranspose2d(4, 2, groups=2), torch.nn.LazyConvTranspose2d(4, 2, groups=2), (4, 3, 5)),
             (nn.LazyConvTranspose3d(2, (2, 1, 2), output_padding=1, stride=2),
              torch.nn.LazyConvTranspose3d(2, (2, 1, 2), output_padding=1, stride=2), (1, 3, 2, 3, 2)),
             (nn.LazyBatchNorm3d(), torch.nn.LazyBatchNorm3d(), (2, 3, 2, 3, 2)),
             (nn.LazyInstanceNorm1d(), torch.nn.LazyInstanceNorm1d(), (2, 3, 5)),
             (nn.LazyInstanceNorm2d(affine=False), torch.nn.LazyInstanceNorm2d(affine=False), (2, 3, 4, 5)),
             (nn.LazyInstanceNorm3d(), torch.nn.LazyInstanceNorm3d(), (2, 3, 2, 3, 4))]
    for ours, theirs, shape in cases:
        x = r(*shape)
        want = theirs(T(x).float())  # both materialize on the first call, then become the regular layer
        out = ours(av.tensor(x.astype(np.float32)))
        assert type(ours).__name__ == type(theirs).__name__, type(ours)
        assert out.shape == tuple(want.shape)
        theirs.double()
        ours.double()
        nn.load_state_dict(ours, theirs.state_dict())
        assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
        with av.no_grad(), torch.no_grad():
            ours.eval()
            theirs.eval()
            assert rel(ours(av.tensor(x)), theirs(T(x))) < 1e-12, type(ours)


# -- compiled -------------------------------------------------------------------------------------

def volume_net(x, w, wt):
    """conv3d, max pool with indices, avg pool, adaptive pools, transposed conv, trilinear resize."""
    y = F.relu(F.conv3d(x, w, padding=1))
    p, i = F.max_pool3d(y, 2, return_indices=True)
    u = F.max_unpool3d(p, i, 2)
    z = F.conv_transpose3d(F.avg_pool3d(u, 2, ceil_mode=True), wt, stride=2)
    z = F.interpolate(z, size=(3, 5, 4), mode="trilinear")
    return (z ** 2).mean() + F.adaptive_max_pool3d(y, (1, 2, 3)).sum() + F.adaptive_avg_pool3d(u, 2).mean()


def torch_volume_net(x, w, wt):
    y = TF.relu(TF.conv3d(x, w, padding=1))
    p, i = TF.max_pool3d(y, 2, return_indices=True)
    u = TF.max_unpool3d(p, i, 2)
    z = TF.conv_transpose3d(TF.avg_pool3d(u, 2, ceil_mode=True), wt, stride=2)
    z = TF.interpolate(z, size=(3, 5, 4), mode="trilinear")
    return (z ** 2).mean() + TF.adaptive_max_pool3d(y, (1, 2, 3)).sum() + TF.adaptive_avg_pool3d(u, 2).mean()


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_compiled_gradients_match_torch(backend):
    arrays = (r(1, 2, 4, 4, 4), r(3, 2, 3, 3, 3), r(3, 2, 2, 2, 2))
    ts = [T(a).requires_grad_() for a in arrays]
    want = torch_volume_net(*ts)
    want.backward()
    step = av.compile(av.value_and_grad(volume_net, argnums=(0, 1, 2)), backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing captured while tracing
        value, grads = step(*[av.tensor(a) for a in arrays])
    assert rel(value, want) < 1e-12
    for g, t in zip(grads, ts):
        assert rel(g, t.grad) < 1e-12
    graph = str(step.inspect(*[av.tensor(a) for a in arrays]).graph)
    assert "pool3d" not in graph and "conv3d" not in graph  # composed from the existing primitives


def test_triton_interpreter_runs_a_3d_pool_and_transposed_conv():
    x, w = r(1, 2, 4, 4, 4).astype(np.float32), r(2, 2, 2, 2, 2).astype(np.float32)

    def f(x, w):
        return (F.conv_transpose3d(F.max_pool3d(x, 2), w, stride=2) * F.avg_pool3d(x, 1)).sum()

    tx, tw = T(x).requires_grad_(), T(w).requires_grad_()
    (TF.conv_transpose3d(TF.max_pool3d(tx, 2), tw, stride=2) * TF.avg_pool3d(tx, 1)).sum().backward()
    gx, gw = av.compile(av.grad(f, argnums=(0, 1)), backend="triton")(av.tensor(x), av.tensor(w))
    assert rel(gx, tx.grad) < 1e-5 and rel(gw, tw.grad) < 1e-5


# -- a 3-D U-Net trained from torch's weights -----------------------------------------------------

def unet3d(lib, F_, th):
    def block(i, o):
        return lib.Sequential(lib.Conv3d(i, o, 3, padding=1, bias=False), lib.BatchNorm3d(o), lib.ReLU(inplace=True))

    class UNet3D(lib.Module):
        def __init__(self, c=2):
            super().__init__()
            self.inc, self.down = block(1, c), block(c, 2 * c)
            self.pool = lib.MaxPool3d(2)
            self.up = lib.ConvTranspose3d(2 * c, c, kernel_size=2, stride=2)
            self.dec = block(2 * c, c)
            self.outc = lib.Conv3d(c, 1, kernel_size=1)

        def forward(self, x):
            x1 = self.inc(x)
            x2 = self.down(self.pool(x1))
            u = self.up(x2)
            return self.outc(self.dec(th.cat([x1, u], dim=1)))

    return UNet3D()


def test_unet3d_two_adam_steps_from_torchs_weights():
    torch.manual_seed(0)
    theirs = unet3d(torch.nn, TF, torch).double()
    ours = unet3d(nn, F, av).to(av.float64)
    nn.load_state_dict(ours, theirs.state_dict())
    x, y = r(2, 1, 4, 4, 4), (RNG.random((2, 1, 4, 4, 4)) > 0.5).astype(np.float64)
    opt, topt = optim.Adam(ours.parameters(), lr=1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2)

    def loss_fn(model, x, y):
        return F.binary_cross_entropy_with_logits(model(x), y)

    for _ in range(2):
        topt.zero_grad()
        tl = TF.binary_cross_entropy_with_logits(theirs(T(x)), T(y))
        tl.backward()
        topt.step()
        loss, grads = av.value_and_grad(loss_fn)(ours, av.tensor(x), av.tensor(y))
        opt.step(grads)
        assert rel(loss, tl) < 1e-10
        sd = theirs.state_dict()
        assert sorted(ours.state_dict()) == sorted(sd)
        for k, v in ours.state_dict().items():  # weights, running statistics, num_batches_tracked
            b = sd[k].detach().numpy().astype(np.float64)
            assert np.abs(v.numpy() - b).max(initial=0) / max(np.abs(b).max(initial=0), 1e-4) < 1e-8, k
