"""F.grid_sample and F.affine_grid against torch: every mode x padding_mode x align_corners in
float64 with gradients w.r.t. input and grid (rel err < 1e-6), round-half-to-even in nearest mode,
and through av.compile on the "cpu" backend and in Triton's interpreter."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import rel

import avalon as av
from avalon.nn import functional as F

CASES = list(itertools.product(("bilinear", "nearest"), ("zeros", "border", "reflection"), (False, True)))


def _torch(x, g, p, mode, pm, align):
    tx, tg = torch.tensor(x, requires_grad=True), torch.tensor(g, requires_grad=True)
    y = TF.grid_sample(tx, tg, mode=mode, padding_mode=pm, align_corners=align)
    (y * torch.tensor(p)).sum().backward()
    return y.detach(), tx.grad, tg.grad


@pytest.mark.parametrize("mode,pm,align", CASES, ids=[f"{m}-{p}-{'ac' if a else 'noac'}" for m, p, a in CASES])
def test_grid_sample_and_gradients_match_torch(mode, pm, align, rng):
    # grid beyond [-1, 1] on purpose: zeros/border/reflection differ only out there; reflection
    # needs several flips, so up to +-3.5
    x = rng.standard_normal((2, 3, 4, 5))
    g = rng.uniform(-3.5, 3.5, (2, 3, 6, 2))
    p = rng.standard_normal((2, 3, 3, 6))
    want, gx, gg = _torch(x, g, p, mode, pm, align)

    def f(x, g, p):
        return av.ops.sum(F.grid_sample(x, g, mode=mode, padding_mode=pm, align_corners=align) * p)

    y = F.grid_sample(av.tensor(x), av.tensor(g), mode=mode, padding_mode=pm, align_corners=align)
    assert y.shape == tuple(want.shape) and y.dtype is av.float64
    assert rel(y, want) < 1e-6
    _, (ax, ag) = av.value_and_grad(f, argnums=(0, 1))(av.tensor(x), av.tensor(g), av.tensor(p))
    assert rel(ax, gx) < 1e-6
    if mode == "bilinear":
        assert rel(ag, gg) < 1e-6
    else:  # nearest: torch's grid gradient is zero, and so is ours
        assert not gg.abs().max() and not np.abs(ag.numpy()).max()


def test_nearest_rounds_half_to_even():
    """align_corners=True, W=5: x = -0.75, -0.25, 0.25 land on pixel 0.5, 1.5, 2.5 exactly."""
    x = np.arange(5.0).reshape(1, 1, 1, 5)
    g = np.zeros((1, 1, 3, 2))
    g[0, 0, :, 0] = [-0.75, -0.25, 0.25]
    want = TF.grid_sample(torch.tensor(x), torch.tensor(g), mode="nearest", align_corners=True)
    got = F.grid_sample(av.tensor(x), av.tensor(g), mode="nearest", align_corners=True)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    np.testing.assert_array_equal(got.numpy().ravel(), [0.0, 2.0, 2.0])


@pytest.mark.parametrize("align", [False, True])
def test_affine_grid_matches_torch_and_composes(align, rng):
    theta = rng.standard_normal((2, 2, 3))
    for size in [(2, 3, 4, 5), (2, 1, 1, 3), (2, 2, 3, 1)]:
        with warnings.catch_warnings():  # torch's note on unit-size grids with align_corners=True
            warnings.simplefilter("ignore", UserWarning)
            want = TF.affine_grid(torch.tensor(theta), size, align_corners=align)
        got = F.affine_grid(av.tensor(theta), size, align_corners=align)
        assert rel(got, want) < 1e-12, size
    # gradient w.r.t. theta through affine_grid + grid_sample (a spatial transformer)
    x = rng.standard_normal((2, 3, 4, 5))
    tt, tx = torch.tensor(theta, requires_grad=True), torch.tensor(x)
    TF.grid_sample(tx, TF.affine_grid(tt, (2, 3, 4, 5), align_corners=align), align_corners=align).square().sum() \
        .backward()

    def f(theta, x):
        return av.ops.sum(F.grid_sample(x, F.affine_grid(theta, (2, 3, 4, 5), align_corners=align),
                                        align_corners=align) ** 2)

    assert rel(av.grad(f)(av.tensor(theta), av.tensor(x)), tt.grad) < 1e-6


def test_errors_name_the_problem():
    x, g = av.tensor(np.ones((1, 1, 2, 2))), av.tensor(np.zeros((1, 2, 2, 2)))
    with pytest.raises(NotImplementedError, match="mode='area' is not supported"):  # (bicubic works now)
        F.grid_sample(x, g, mode="area")
    with pytest.raises(ValueError, match="padding_mode"):
        F.grid_sample(x, g, padding_mode="wrap")
    with pytest.raises(ValueError, match="one floating dtype"):
        F.grid_sample(x, g.float())
    with pytest.raises(ValueError, match=r"\(N, Ho, Wo, 2\)"):
        F.grid_sample(x, av.tensor(np.zeros((1, 2, 2, 3))))
    with pytest.raises(ValueError, match=r"\(N, 2, 3\)"):
        F.affine_grid(av.tensor(np.zeros((1, 3, 3))), (1, 1, 2, 2))


def _compiled_case(rng):
    x = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    g = rng.uniform(-1.6, 1.6, (1, 2, 3, 2)).astype(np.float32)
    p = rng.standard_normal((1, 2, 2, 3)).astype(np.float32)
    return x, g, p


def _loss(x, g, p):
    return av.ops.sum(F.grid_sample(x, g, padding_mode="reflection") * p)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_forward_compiles(backend, rng):
    x, g, p = _compiled_case(rng)
    want = TF.grid_sample(torch.tensor(x), torch.tensor(g), padding_mode="reflection", align_corners=False)
    y = av.compile(lambda x, g: F.grid_sample(x, g, padding_mode="reflection"), backend=backend)(av.tensor(x),
                                                                                                 av.tensor(g))
    assert rel(y, want) < 1e-5


def test_gradients_compile_on_cpu(rng):
    x, g, p = _compiled_case(rng)
    _, gx, gg = _torch(x, g, p, "bilinear", "reflection", False)
    loss, (ax, ag) = av.compile(av.value_and_grad(_loss, argnums=(0, 1)), backend="cpu")(
        av.tensor(x), av.tensor(g), av.tensor(p))
    assert rel(ax, gx) < 1e-5 and rel(ag, gg) < 1e-5


def test_gradients_in_triton_interpreter_one_grad(rng):
    x, g, p = _compiled_case(rng)
    _, gx, gg = _torch(x, g, p, "bilinear", "reflection", False)
    ag = av.compile(av.grad(_loss, argnums=1), backend="triton")(av.tensor(x), av.tensor(g), av.tensor(p))
    assert rel(ag, gg) < 1e-5


def test_gradients_in_triton_interpreter_both_grads(rng):
    x, g, p = _compiled_case(rng)
    _, gx, gg = _torch(x, g, p, "bilinear", "reflection", False)
    loss, (ax, ag) = av.compile(av.value_and_grad(_loss, argnums=(0, 1)), backend="triton")(
        av.tensor(x), av.tensor(g), av.tensor(p))
    assert rel(ax, gx) < 1e-5 and rel(ag, gg) < 1e-5
