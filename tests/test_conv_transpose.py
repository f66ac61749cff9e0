"""F.conv_transpose2d and ConvTranspose2d against torch: forward and every gradient over random
geometries (hypothesis), the layer's parameters, init and output_size, compiled on both backends,
and clear errors for what is not supported."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from hypothesis import given
from hypothesis import strategies as st

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


@st.composite
def geometries(draw):
    groups = draw(st.sampled_from([1, 2]))
    s, d = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    p = draw(st.integers(0, (min(kh, kw) - 1) * d))
    op = draw(st.integers(0, max(s, d) - 1))
    return dict(n=draw(st.integers(1, 2)), cin=2 * groups, cout=draw(st.integers(1, 2)) * groups,
                h=draw(st.integers(1, 4)), w=draw(st.integers(1, 4)), k=(kh, kw), stride=s, padding=p,
                output_padding=op, dilation=d, groups=groups, bias=draw(st.booleans()), seed=draw(st.integers(0, 99)))


@given(geometries())
def test_functional_forward_and_gradients_match_torch(g):
    rng = np.random.default_rng(g["seed"])
    x = rng.standard_normal((g["n"], g["cin"], g["h"], g["w"]))
    w = rng.standard_normal((g["cin"], g["cout"] // g["groups"], *g["k"]))
    b = rng.standard_normal(g["cout"]) if g["bias"] else None
    kw = {k: g[k] for k in ("stride", "padding", "output_padding", "groups", "dilation")}
    tx, tw = T(x).requires_grad_(), T(w).requires_grad_()
    tb = T(b).requires_grad_() if b is not None else None
    try:
        want = TF.conv_transpose2d(tx, tw, tb, **kw)
    except RuntimeError:  # a geometry with no output: ours must refuse it too
        with pytest.raises(ValueError, match="conv_transpose2d"):
            F.conv_transpose2d(x, w, b, **kw)
        return
    got = F.conv_transpose2d(x, w, b, **kw)
    assert got.shape == tuple(want.shape)
    assert rel(got, want) < 1e-12
    r = rng.standard_normal(tuple(want.shape))
    (want * T(r)).sum().backward()
    argnums = (0, 1, 2) if b is not None else (0, 1)
    grads = av.grad(lambda *a: (F.conv_transpose2d(*a, **kw) * r).sum(), argnums=argnums)(x, w, *([b] * (b is not None)))
    for ours, theirs in zip(grads, (tx, tw, tb)):
        assert rel(ours, theirs.grad) < 1e-12


def test_layer_parameters_init_and_output_size_match_torch():
    torch.manual_seed(0)
    theirs = torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=2, padding=1, groups=2, dilation=(1, 2)).double()
    ours = nn.ConvTranspose2d(4, 6, (3, 2), stride=2, padding=1, groups=2, dilation=(1, 2)).double()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    bound = 1 / np.sqrt(3 * 3 * 2)  # torch's fan-in: weight.shape[1] * kh * kw
    assert np.abs(ours.weight.numpy()).max() <= bound and np.abs(ours.weight.numpy()).max() > 0.5 * bound
    assert np.abs(ours.bias.numpy()).max() <= bound
    ours.load_state_dict(theirs.state_dict())
    x = np.random.default_rng(1).standard_normal((2, 4, 3, 5))
    for size in (None, (5, 9), (6, 10)):
        assert rel(ours(x, output_size=size), theirs(T(x), output_size=size)) < 1e-12
    assert rel(ours(x[0]), theirs(T(x[0]))) < 1e-12  # unbatched
    with pytest.raises(ValueError, match="output_size"):
        ours(x, output_size=(9, 9))


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_compiled_gradients_match_torch(backend):
    """A decoder-style stack: transposed conv, relu, transposed conv with output_padding."""
    torch.manual_seed(1)
    theirs = torch.nn.Sequential(torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1),
                                 torch.nn.ReLU(), torch.nn.ConvTranspose2d(4, 2, 2, stride=2, output_padding=1))
    ours = nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.ConvTranspose2d(4, 2, 2, stride=2, output_padding=1))
    ours.load_state_dict(theirs.state_dict())
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    r = rng.standard_normal((2, 2, 11, 11)).astype(np.float32)
    tl = (theirs(T(x)) * T(r)).sum()
    tl.backward()
    step = av.compile(av.value_and_grad(lambda m, x, r: (m(x) * r).sum()), backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, g = step(ours, x, r)
    assert rel(value, tl) < 1e-5
    for k, p in theirs.named_parameters():
        assert rel(g[k], p.grad) < 1e-5, k
    assert "conv2d_grad_input" in str(step.inspect(ours, x, r).graph)  # the existing primitive, no new op


def test_bad_arguments_are_clear_errors():
    x, w = np.ones((1, 2, 3, 3)), np.ones((2, 1, 2, 2))
    with pytest.raises(ValueError, match="conv_transpose2d: argument 'padding'"):
        F.conv_transpose2d(x, w, padding="same")
    with pytest.raises(ValueError, match="output_padding"):
        F.conv_transpose2d(x, w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="conv_transpose2d: input .* channels"):
        F.conv_transpose2d(x, np.ones((3, 1, 2, 2)))
    with pytest.raises(ValueError, match="ConvTranspose2d: argument 'padding_mode'"):
        nn.ConvTranspose2d(2, 2, 3, padding_mode="reflect")
    with pytest.raises(TypeError, match="ConvTranspose2d: argument 'dtype'"):
        nn.ConvTranspose2d(2, 2, 3, dtype=av.int64)
