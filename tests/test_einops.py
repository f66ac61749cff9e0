"""einops on Avalon tensors (avalon/nn/einops_layers.py): the functions and the layers against the
same einops calls on torch tensors, values and gradients, eagerly and compiled, and a ViT-style patch
embedding (lucidrains' `Rearrange` + `Linear`) trained against torch's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import rel

import avalon as av
from avalon import nn, optim

einops = pytest.importorskip("einops")
from einops import pack, rearrange, reduce, repeat  # noqa: E402
from einops.layers import torch as tlayers  # noqa: E402

CASES = {
    "patches": lambda v: rearrange(v, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=2, p2=2),
    "max": lambda v: reduce(v, "b c h w -> b c", "max"),
    "mean_pool": lambda v: reduce(v, "b c (h 2) (w 2) -> b c h w", "mean"),
    "prod": lambda v: reduce(v, "b c h w -> b h", "prod"),
    "repeat": lambda v: repeat(v, "b c h w -> b c h w k", k=3) * 1.5,
    "einsum": lambda v: einops.einsum(v, v, "b c h w, b d h w -> b c d"),
    "pack": lambda v: pack([v, v[:, :1] * 2], "b * h w")[0],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_functions_match_torch_in_value_and_gradient(rng, name):
    x = rng.standard_normal((2, 3, 4, 4))
    f = CASES[name]
    want = f(torch.tensor(x))
    assert rel(f(av.tensor(x)).numpy(), want.numpy()) < 1e-12
    assert rel(av.compile(f)(x).numpy(), want.numpy()) < 1e-12
    tx = torch.tensor(x, requires_grad=True)
    (f(tx) ** 2).sum().backward()
    assert rel(av.grad(lambda v: (f(v) ** 2).sum())(av.tensor(x)).numpy(), tx.grad.numpy()) < 1e-12


def test_einmix_has_torchs_parameters_and_values(rng):
    args = ("b n d -> b n e",)
    kw = dict(weight_shape="d e", bias_shape="e", d=4, e=6)
    theirs, ours = tlayers.EinMix(*args, **kw).double(), nn.EinMix(*args, **kw).double()
    av.nn.load_state_dict(ours, theirs.state_dict())
    x = rng.standard_normal((2, 3, 4))
    assert rel(ours(av.tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy()) < 1e-12
    assert repr(ours) == repr(theirs)


def test_a_vit_patch_embedding_trains_as_torchs():
    def make(lib, layers):
        return lib.Sequential(layers.Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=2, p2=2),
                              lib.Linear(12, 8), lib.GELU(), layers.Reduce("b n d -> b d", "mean"), lib.Linear(8, 3))
    torch.manual_seed(0)
    theirs = make(torch.nn, tlayers).double()
    ours = make(nn, nn).to(av.float64)
    av.nn.load_state_dict(ours, theirs.state_dict())
    topt, opt = torch.optim.Adam(theirs.parameters(), lr=1e-2), optim.Adam(ours, lr=1e-2)
    rng = np.random.default_rng(3)

    def step(m, o, x, y):
        loss, grads = av.value_and_grad(lambda m, x, y: nn.functional.cross_entropy(m(x), y))(m, x, y)
        o.step(grads)
        return loss
    compiled = av.compile(step)
    for _ in range(2):
        x, y = rng.standard_normal((4, 3, 4, 4)), rng.integers(0, 3, 4)
        topt.zero_grad()
        want = torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y))
        want.backward()
        topt.step()
        assert abs(float(compiled(ours, opt, x, y)) - want.item()) < 1e-10
    for k, v in theirs.state_dict().items():
        assert rel(ours.state_dict()[k].numpy(), v.numpy()) < 1e-9, k
    assert compiled.cache_info().misses == 1
