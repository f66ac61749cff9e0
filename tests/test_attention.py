"""F.scaled_dot_product_attention against torch's, forward and gradients, eager and compiled."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import avalon as av
from avalon.nn import functional as F


def _qkv(rng, b, h, L, S, E, Ev):
    return (rng.standard_normal((b, h, L, E)).astype(np.float64), rng.standard_normal((b, h, S, E)),
            rng.standard_normal((b, h, S, Ev)))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(1, 5),
       st.integers(1, 4), st.sampled_from(["none", "causal", "bool", "float"]), st.integers(0, 2**31))
def test_forward_matches_torch(b, h, L, S, E, Ev, mask, seed):
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, b, h, L, S, E, Ev)
    kw: dict = {}
    if mask == "causal":
        kw["is_causal"] = True
    elif mask == "bool":
        m = rng.random((L, S)) < 0.7
        m[:, 0] = True  # every query may attend something (an all-masked row is zeros in both: tested apart)
        kw["attn_mask"] = m
    elif mask == "float":
        kw["attn_mask"] = rng.standard_normal((L, S))
    want = torch.nn.functional.scaled_dot_product_attention(
        *(torch.tensor(a) for a in (q, k, v)), **{n: torch.tensor(a) if isinstance(a, np.ndarray) else a
                                                  for n, a in kw.items()}, scale=0.7)
    got = F.scaled_dot_product_attention(av.tensor(q), av.tensor(k), av.tensor(v), scale=0.7, **kw)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_gradients_match_torch_compiled(backend, rng):
    q, k, v = (a.astype(np.float32) for a in _qkv(rng, 2, 2, 5, 7, 4, 3))
    w = rng.standard_normal((2, 2, 5, 3)).astype(np.float32)

    def loss(q, k, v, w):
        return (F.scaled_dot_product_attention(q, k, v, is_causal=True) * w).sum()

    step = av.compile(av.value_and_grad(loss, argnums=(0, 1, 2)), backend=backend)
    value, grads = step(q, k, v, w)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    tl = (torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True) * torch.tensor(w)).sum()
    tl.backward()
    np.testing.assert_allclose(float(value), tl.item(), rtol=1e-5, atol=1e-5)
    for g, t in zip(grads, (tq, tk, tv)):
        np.testing.assert_allclose(g.numpy(), t.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_bad_arguments_are_clear_errors():
    x = av.tensor(np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="either attn_mask or is_causal"):
        F.scaled_dot_product_attention(x, x, x, attn_mask=np.ones((3, 3), bool), is_causal=True)
    with pytest.raises(ValueError, match="multiple of"):  # enable_gqa: key/value heads dividing the query's
        F.scaled_dot_product_attention(av.tensor(np.ones((3, 3, 4), np.float32)), x, x, enable_gqa=True)
    with pytest.raises(ValueError, match="do not fit"):
        F.scaled_dot_product_attention(x, av.tensor(np.ones((2, 3, 5), np.float32)), x)
