"""`import avalon as av` in place of `import torch`: tensor functions, Tensor methods, indexing and
item assignment checked against torch on random values (hypothesis where shapes and values vary)."""
import warnings

import numpy as np
import pytest
import torch
from helpers import T, rel, same
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import avalon as av

arrays = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
                    elements=st.floats(-3, 3, width=32))


# -- creation ---------------------------------------------------------------------------------------

def test_creation_takes_size_as_arguments_or_a_tuple():
    for f in ("zeros", "ones", "empty"):
        for args in ((2, 3), ((2, 3),), ([4],), (4,)):
            ours, theirs = getattr(av, f)(*args), getattr(torch, f)(*args)
            assert ours.shape == tuple(theirs.shape) and ours.dtype == av.float32
    same(av.ones(2, 3, dtype=av.int64), torch.ones(2, 3, dtype=torch.int64))
    same(av.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    same(av.full((2, 2), 7), torch.full((2, 2), 7))          # i64 from an int fill, as torch
    same(av.full((2, 2), 1.5), torch.full((2, 2), 1.5))
    same(av.full((2,), True), torch.full((2,), True))
    x = av.tensor(np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32))
    for f in ("zeros_like", "ones_like", "empty_like"):
        y = getattr(av, f)(x)
        assert y.shape == x.shape and y.dtype == x.dtype
    same(av.full_like(x, 3.0), torch.full_like(T(x), 3.0))
    same(av.ones_like(x, dtype=av.int64), torch.ones_like(T(x), dtype=torch.int64))


@pytest.mark.parametrize("args,kw", [((5,), {}), ((2, 9), {}), ((1, 10, 3), {}), ((0.5, 2.0, 0.25), {}),
                                     ((10, 0, -3), {}), ((4,), {"dtype": av.float32}), ((0, 1, 0.1), {}),
                                     ((-3, 3), {"dtype": av.float64})])
def test_arange_matches_torch(args, kw):
    tkw = {"dtype": getattr(torch, kw["dtype"].name.replace("f", "float"))} if kw else {}
    same(av.arange(*args, **kw), torch.arange(*args, **tkw))


@pytest.mark.parametrize("start,end,steps", [(0, 1, 5), (-2.5, 3.0, 7), (1, 0, 4), (3, 3, 1), (0, 10, 0),
                                             (-1, 1, 100)])
def test_linspace_and_eye_match_torch(start, end, steps):
    same(av.linspace(start, end, steps), torch.linspace(start, end, steps))
    same(av.eye(3), torch.eye(3))
    same(av.eye(2, 4, dtype=av.int64), torch.eye(2, 4, dtype=torch.int64))


def test_random_creation_is_seeded_by_avalons_generator():
    av.manual_seed(3)
    a = (av.rand(4, 5), av.randn((4, 5)), av.randint(2, 9, (50,)), av.randint(3, (6,)))
    av.manual_seed(3)
    b = (av.rand(4, 5), av.randn((4, 5)), av.randint(2, 9, (50,)), av.randint(3, (6,)))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert a[0].dtype == av.float32 and 0 <= a[0].numpy().min() and a[0].numpy().max() < 1
    assert a[2].dtype == av.int64 and a[2].numpy().min() >= 2 and a[2].numpy().max() < 9
    assert len(set(a[2].tolist())) > 3
    big = av.randn(4000).numpy()
    assert abs(big.mean()) < 0.1 and abs(big.std() - 1) < 0.1
    assert av.randn_like(a[0]).shape == (4, 5) and av.rand_like(a[0]).dtype == av.float32


def test_unsupported_arguments_name_the_function_and_argument():
    with pytest.raises(TypeError, match="zeros: argument 'out'"):
        av.zeros(2, out=av.zeros(2))
    with pytest.raises(TypeError, match="ones: argument 'dtype'"):
        av.ones(2, dtype=torch.quint8)
    with pytest.raises(TypeError, match="randn: argument 'generator'"):
        av.randn(2, dtype=torch.complex64, generator=torch.Generator())
    with pytest.raises(TypeError, match="randn: argument 'generator'"):
        av.randn(2, generator=torch.Generator())
    with pytest.raises(TypeError, match="rand: argument 'dtype' must be a floating-point"):
        av.rand(2, dtype=av.int64)
    with pytest.raises(TypeError, match="cat: argument 'out'"):
        av.cat([av.ones(1)], out=av.ones(1))


# -- math and reductions ----------------------------------------------------------------------------

@given(arrays)
def test_math_functions_match_torch(a):
    x, t = av.tensor(a), T(a)
    for name in ("exp", "sin", "cos", "tanh", "sigmoid", "abs"):
        same(getattr(av, name)(x), getattr(torch, name)(t), 1e-5)
        same(getattr(x, name)(), getattr(t, name)(), 1e-5)
    pos, tpos = av.abs(x) + 0.5, torch.abs(t) + 0.5
    same(av.log(pos), torch.log(tpos), 1e-5)
    same(av.sqrt(pos), torch.sqrt(tpos), 1e-5)
    same(av.pow(pos, 1.7), torch.pow(tpos, 1.7), 1e-5)
    same(x.pow(3), t.pow(3), 1e-5)
    same(av.clamp(x, -1, 0.5), torch.clamp(t, -1, 0.5))
    same(x.clamp(min=0.2), t.clamp(min=0.2))
    same(av.where(x > 0, x, 0.0), torch.where(t > 0, t, 0.0))
    same(av.maximum(x, x * 0.5 + 0.1), torch.maximum(t, t * 0.5 + 0.1))
    same(av.minimum(x, x * 0.5 + 0.1), torch.minimum(t, t * 0.5 + 0.1))


@given(arrays, st.data())
def test_reductions_with_dim_and_keepdim_match_torch(a, data):
    x, t = av.tensor(a), T(a)
    d = data.draw(st.integers(-a.ndim, a.ndim - 1))
    k = data.draw(st.booleans())
    for name in ("sum", "mean", "logsumexp", "amax", "amin"):
        same(getattr(av, name)(x, dim=d, keepdim=k), getattr(torch, name)(t, dim=d, keepdim=k), 1e-5)
    same(x.sum(d, keepdim=k), t.sum(d, keepdim=k), 1e-5)
    same(x.mean(dim=d), t.mean(dim=d), 1e-5)
    same(av.argmax(x, dim=d, keepdim=k), torch.argmax(t, dim=d, keepdim=k))
    same(av.argmax(x), torch.argmax(t))
    for name in ("max", "min"):
        ours, theirs = getattr(av, name)(x, d, keepdim=k), getattr(torch, name)(t, d, keepdim=k)
        same(ours.values, theirs.values)
        v, i = getattr(x, name)(dim=d)
        same(i, getattr(t, name)(dim=d).indices)
        same(getattr(av, name)(x), getattr(torch, name)(t))
        same(getattr(av, name)(x, x * 0.5), getattr(torch, name)(t, t * 0.5))


def test_numpy_spelling_of_reductions_still_works():
    x = av.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(av.ops.max(x, axis=1).numpy(), [2, 5])
    np.testing.assert_array_equal(x.max(axis=0, keepdims=True).numpy(), [[3, 4, 5]])
    np.testing.assert_array_equal(av.ops.sum(x, 1, True).numpy(), [[3], [12]])
    np.testing.assert_array_equal(av.ops.concat([x, x], axis=1).numpy(), np.concatenate([x.numpy()] * 2, 1))


# -- shapes -----------------------------------------------------------------------------------------

@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=5),
                  elements=st.floats(-3, 3, width=32)), st.data())
def test_shape_functions_match_torch(a, data):
    x, t = av.tensor(a), T(a)
    d = data.draw(st.integers(-a.ndim, a.ndim - 1))
    same(av.cat([x, x * 2], dim=d), torch.cat([t, t * 2], dim=d))
    same(av.stack([x, x * 2], dim=d), torch.stack([t, t * 2], dim=d))
    size = data.draw(st.integers(1, 4))
    for ours, theirs in zip(av.split(x, size, d), torch.split(t, size, d), strict=True):
        same(ours, theirs)
    for ours, theirs in zip(x.chunk(size, d), t.chunk(size, d), strict=True):
        same(ours, theirs)
    n = a.shape[d]
    cut = data.draw(st.integers(0, n))
    for ours, theirs in zip(x.split([cut, n - cut], dim=d), t.split([cut, n - cut], dim=d), strict=True):
        same(ours, theirs)
    d2 = data.draw(st.integers(-a.ndim, a.ndim - 1))
    same(av.transpose(x, d, d2), torch.transpose(t, d, d2))
    same(x.transpose(d, d2), t.transpose(d, d2))
    perm = data.draw(st.permutations(range(a.ndim)))
    same(x.permute(*perm), t.permute(*perm))
    same(av.permute(x, perm), torch.permute(t, perm))
    same(av.flatten(x, 1), torch.flatten(t, 1))
    same(av.unsqueeze(x, d), torch.unsqueeze(t, d))
    same(av.squeeze(av.unsqueeze(x, d), d), t)
    same(x.view(-1, a.shape[-1]), t.view(-1, a.shape[-1]))
    diag = data.draw(st.integers(-3, 3))
    same(av.tril(x, diag), torch.tril(t, diag))
    same(x.triu(diagonal=diag), t.triu(diagonal=diag))
    mask = T(a) > 0.5
    same(av.masked_fill(x, av.tensor(mask.numpy()), -1e9), t.masked_fill(mask, -1e9))
    same(x.masked_fill(av.tensor(mask.numpy())[..., :1], 2.0), t.masked_fill(mask[..., :1], 2.0))


def test_transpose_of_two_dims_swaps_them_on_2d_tensors_too():
    x = av.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert x.transpose(0, 1).shape == (3, 2) and av.transpose(x, 1, 0).shape == (3, 2)
    assert x.transpose().shape == (3, 2) and x.transpose((0, 1)).shape == (2, 3)  # numpy's forms unchanged


def test_bmm_matmul_and_int_masked_fill_keep_torchs_dtypes(rng):
    a, b = rng.standard_normal((2, 3, 4)).astype(np.float32), rng.standard_normal((2, 4, 5)).astype(np.float32)
    same(av.bmm(av.tensor(a), av.tensor(b)), torch.bmm(T(a), T(b)), 1e-5)
    same(av.tensor(a).matmul(av.tensor(b)), T(a).matmul(T(b)), 1e-5)
    i = np.arange(6).reshape(2, 3)
    same(av.tensor(i).masked_fill(av.tensor(i > 2), 9), T(i).masked_fill(T(i > 2), 9))
    with pytest.raises(ValueError, match="bmm: expected 3-d"):
        av.bmm(av.tensor(a[0]), av.tensor(b))


# -- Tensor methods ---------------------------------------------------------------------------------

def test_tensor_methods_torch_code_calls(rng):
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    x, t = av.tensor(a), T(a)
    assert x.numel() == t.numel() == 24 and av.numel(x) == 24
    assert x.size() == tuple(t.size()) and x.size(1) == t.size(1) == 3 and x.size(-1) == 4
    assert x.dim() == x.ndim == 3 and x.is_cuda is False
    assert x.contiguous() is x
    same(x.float(), t.float())
    same(x.double(), t.double())
    same((x * 3).long(), (t * 3).long())
    same((x * 3).int(), (t * 3).int())
    same(x.bool(), t.bool())
    same(x.type_as(av.ones(1, dtype=av.float64)), t.type_as(torch.ones(1, dtype=torch.float64)))
    same(x.to(av.float64), t.to(torch.float64))
    same(x.to(torch.float64), t.to(torch.float64))
    assert x[0, 0, 0].item() == t[0, 0, 0].item() and x[0].tolist() == t[0].tolist()
    same(x.detach(), t.detach())
    for name, args in (("new_zeros", (2, 3)), ("new_ones", ((2,),)), ("new_full", ((2, 2), 1.5)),
                       ("new_tensor", ([1.0, 2.0],))):
        same(getattr(x, name)(*args), getattr(t, name)(*args))
    same(x.new_zeros(2, dtype=av.int64), t.new_zeros(2, dtype=torch.int64))
    same(x.expand(2, 2, 3, 4), t.expand(2, 2, 3, 4))
    same(x[:, :1].expand(-1, 3, -1), t[:, :1].expand(-1, 3, -1))
    same(x.where(x > 0, 0.5), t.where(t > 0, 0.5))
    c = x.clone()
    c[0] = 1.0
    assert x.numpy()[0, 0, 0] == a[0, 0, 0] and c.numpy()[0, 0, 0] == 1.0


def test_numel_is_a_method_everywhere_it_is_used():
    x = av.ones(3, 4)
    assert callable(x.numel) and x.numel() == 12
    assert av.nn.functional.batch_norm(av.randn(4, 3), None, None, training=True).shape == (4, 3)


# -- indexing ---------------------------------------------------------------------------------------

def _indices(shape):
    n0, n1 = shape[0], shape[1]
    return [
        (-1,), (slice(None), -1), (slice(None), [-1], slice(None)), (Ellipsis, None), (None, Ellipsis, 0),
        (slice(None, None, 2), Ellipsis, slice(1, None)), ([0, -1, 0],), (slice(None), [n1 - 1, 0]),
        (Ellipsis, -2), (0, None, slice(None), None), (slice(-2, None), Ellipsis), ([[0, n0 - 1]],),
    ]


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=3, max_dims=3, min_side=2, max_side=4),
                  elements=st.floats(-3, 3, width=32)))
def test_indexing_matches_torch(a):
    x, t = av.tensor(a), T(a)
    for idx in _indices(a.shape):
        same(x[idx], t[idx])
    mask = a > 0
    same(x[av.tensor(mask)], t[T(mask)])
    same(x[mask[:, :, 0]], t[T(mask[:, :, 0])])
    same(x[:, mask[0, :, 0]], t[:, T(mask[0, :, 0])])


def test_index_errors_are_torchs():
    x = av.ones(2, 3)
    with pytest.raises(IndexError, match="out of bounds"):
        x[:, [3]]
    with pytest.raises(IndexError, match="out of bounds"):
        x[-3]
    with pytest.raises(IndexError, match="traced boolean mask"):
        av.compile(lambda x: x[x > 0], backend="numpy")(x)


SETS = [
    ((slice(None), slice(0, None, 2)), "sin"), ((slice(None), slice(1, None, 2)), "cos"), ((0,), "row"),
    ((-1, slice(None, 2)), "scalar"), ((Ellipsis, slice(1, 4, 3)), "col"), ((slice(None), None, -1), "scalar"),
    ((slice(1, None, 2), slice(0, 5, 4)), "block"),
]


def _value(kind, region_shape, rng):
    if kind == "scalar":
        return 2.5
    return rng.standard_normal(region_shape).astype(np.float32) + 1.0


@pytest.mark.parametrize("idx,kind", SETS)
def test_item_assignment_matches_torch_eagerly_and_traced(idx, kind, rng):
    a = rng.standard_normal((4, 6)).astype(np.float32)
    region = T(a)[idx].shape
    v = _value(kind, tuple(region), rng)
    t = T(a).clone()
    t[idx] = T(v) if isinstance(v, np.ndarray) else v
    x = av.tensor(a)
    x[idx] = av.tensor(v) if isinstance(v, np.ndarray) else v
    same(x, t)

    def f(y, w):
        y = y * 1.0
        y[idx] = w if isinstance(v, np.ndarray) else v
        return y

    w = v if isinstance(v, np.ndarray) else np.float32(0)
    same(av.compile(f, backend="numpy")(a, w), t)


def test_positional_encoding_idiom_and_its_gradient_match_torch():
    """`pe[:, 0::2] = sin(...)`, `pe[:, 1::2] = cos(...)` inside a traced function: the update is an
    op of the graph, so the gradient flows into the assigned values as in torch."""
    n, d = 5, 6
    rng = np.random.default_rng(1)
    s = rng.standard_normal((n, 1)).astype(np.float64)

    def pe(lib, scale):
        pos = lib.arange(0, n).unsqueeze(1) * scale
        div = lib.exp(lib.arange(0, d, 2) * (-np.log(100.0) / d))
        out = lib.zeros(n, d, dtype=scale.dtype)
        out[:, 0::2] = lib.sin(pos * div)
        out[:, 1::2] = lib.cos(pos * div)
        return out

    w = rng.standard_normal((n, d))
    ts = T(s).requires_grad_()
    tl = (pe(torch, ts) * T(w)).sum()
    tl.backward()
    loss = lambda s, w: (pe(av, s) * w).sum()  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, g = av.value_and_grad(loss)(av.tensor(s), w)
    assert rel(value, tl) < 1e-12 and rel(g, ts.grad) < 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # arange and the masks are iota ops, not captured arrays
        got = av.compile(lambda s: pe(av, s), backend="numpy")(av.tensor(s))
    assert rel(got, pe(torch, T(s))) < 1e-12


def test_item_assignment_of_a_bool_mask_and_errors():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    x, t = av.tensor(a), T(a)
    x[x > 2] = -1.0
    t[t > 2] = -1.0
    same(x, t)
    x[:, [0, 1]] = 1.0
    t[:, [0, 1]] = 1.0
    same(x, t)
    with pytest.raises(IndexError, match="setitem: integer-array"):
        x[1:, [0, 1]] = 1.0
    with pytest.raises(ValueError, match="cannot assign a value of shape"):
        x[0] = av.ones(2)


def test_av_log_is_the_natural_logarithm():
    np.testing.assert_allclose(av.log(av.tensor([1.0, np.e])).numpy(), [0.0, 1.0], rtol=1e-6)


# -- in-place methods and augmented assignment --------------------------------------------------

INPLACE = [("add_", (0.5,), {}), ("add_", ("y",), {"alpha": 2.0}), ("sub_", ("y",), {}), ("mul_", ("y",), {}),
           ("div_", (3.0,), {}), ("pow_", (2,), {}), ("clamp_", (-0.5, 0.5), {}), ("clip_", (None, 0.2), {}),
           ("exp_", (), {}), ("neg_", (), {}), ("abs_", (), {}), ("relu_", (), {}), ("sigmoid_", (), {}),
           ("tanh_", (), {}), ("floor_", (), {}), ("fill_", (1.25,), {}), ("zero_", (), {}),
           ("copy_", ("y",), {}), ("masked_fill_", ("mask", -1.0), {})]


@pytest.mark.parametrize("name, args, kw", INPLACE)
def test_inplace_methods_match_torch_eagerly_traced_and_through_aliases(name, args, kw, rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y = rng.standard_normal((3, 4)).astype(np.float32)
    mask = rng.random((3, 4)) > 0.5

    def run(lib, x, y, mask):
        sub = {"y": y, "mask": mask}
        alias = x
        out = getattr(x, name)(*[sub.get(a, a) if isinstance(a, str) else a for a in args], **kw)
        assert out is x and alias is x
        return alias * 1.0

    want = run(torch, torch.tensor(x), torch.tensor(y), torch.tensor(mask))
    same(run(av, av.tensor(x), av.tensor(y), av.tensor(mask)), want)
    same(av.compile(lambda x, y, m: run(av, x, y, m))(x, y, mask), want)


def test_augmented_assignment_writes_through_aliases_and_state(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    for lib in (torch, av):
        a = lib.tensor(x)
        b = a
        b += 1.0
        b *= 2.0
        b -= a / 4
        b /= 3.0
        same(a, torch.tensor((((x + 1) * 2) * 0.75) / 3), 1e-6)
    w = av.tensor(x)
    m = type("M", (), {})()
    m.w = w

    @av.compile
    def bump(m):
        m.w += 1.0  # a state tensor: written back after the call, as an optimizer step is
        return m.w.sum()
    s = bump(m)
    np.testing.assert_allclose(w.numpy(), x + 1, rtol=1e-6)
    np.testing.assert_allclose(float(s), (x + 1).sum(), rtol=1e-5)
    gx = av.grad(lambda t: (lambda u: (u.mul_(u), u)[1])(t * 1.0).sum())(x)  # d(t^2)/dt through mul_
    np.testing.assert_allclose(gx.numpy(), 2 * x, rtol=1e-6)


def test_inplace_errors_are_torchs():
    i = av.tensor([1, 2, 3])
    with pytest.raises(TypeError, match="can't be cast to the i64 tensor"):
        i += 0.5
    with pytest.raises(ValueError, match="cannot broadcast the tensor it writes"):
        av.ones(3).add_(av.ones(2, 3))
    i.add_(2)
    assert i.tolist() == [3, 4, 5] and i.dtype == av.int64


def test_random_inplace_draws_are_seeded_and_shaped():
    av.manual_seed(0)
    a = av.empty(2000).uniform_(-2.0, 3.0).numpy()
    b = av.empty(2000).normal_(1.0, 0.5).numpy()
    c = av.empty(2000).bernoulli_(0.25).numpy()
    assert -2 <= a.min() and a.max() < 3 and abs(a.mean() - 0.5) < 0.15
    assert abs(b.mean() - 1.0) < 0.05 and abs(b.std() - 0.5) < 0.05
    assert set(np.unique(c)) <= {0.0, 1.0} and abs(c.mean() - 0.25) < 0.05
    av.manual_seed(0)
    assert np.array_equal(av.empty(2000).uniform_(-2.0, 3.0).numpy(), a)
    x = av.tensor(np.ones((2, 2), np.float32))
    assert x.data.tolist() == [[1, 1], [1, 1]]


# -- torch's gradient switches and torch.jit pieces model code calls ----------------------------

def test_no_grad_blocks_gradients_inside_differentiated_code_as_torch(rng):
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal((4,))

    def loss(lib, x, w):
        a = (x * w).sum()
        with lib.no_grad():
            b = (x * w * w).sum()  # a target computed without gradients
            with lib.enable_grad():
                c = (w * w).sum()
        return a * b + c

    tw = torch.tensor(w, requires_grad=True)
    loss(torch, torch.tensor(x), tw).backward()
    got = av.grad(lambda w, x: loss(av, x, w))(w, x)
    np.testing.assert_allclose(got.numpy(), tw.grad.numpy(), rtol=1e-10)

    @av.no_grad()
    def frozen(w):
        return (w * w).sum()
    g = av.grad(lambda w: frozen(w) + w.sum())(w)
    np.testing.assert_allclose(g.numpy(), np.ones_like(w))
    with av.inference_mode():
        assert not av.is_grad_enabled()
    av.set_grad_enabled(False)
    assert not av.is_grad_enabled()
    av.set_grad_enabled(True)
    assert av.is_grad_enabled()
    np.testing.assert_allclose(float(av.no_grad()(lambda: av.tensor(2.0) * 3)()), 6.0)


def test_torch_jit_calls_in_model_code_run():
    assert av.jit.is_scripting() is False and av.jit.is_tracing() is False

    @av.jit.unused
    def f(x):
        return x + 1
    assert f(1) == 2 and av.jit.annotate(list, [1]) == [1]
    with pytest.raises(NotImplementedError, match="av.compile"):
        av.jit.script(f)
    av._assert(True, "fine")
    with pytest.raises(AssertionError, match="shape"):
        av._assert(False, "wrong shape")


def test_requires_grad_false_freezes_like_torch_fine_tuning(rng):
    """`p.requires_grad = False`: no gradient entry, the optimizer leaves it, compiled steps retrace
    when the set of frozen tensors changes; a tensor asked for by argnums is still differentiated."""
    from avalon import nn, optim
    x = rng.standard_normal((5, 3)).astype(np.float32)
    tm = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    nn.load_state_dict(m, tm.state_dict())
    for p in tm[0].parameters():
        p.requires_grad = False
    for p in m[0].parameters():
        p.requires_grad = False
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["2.weight", "2.bias"]
    topt = torch.optim.SGD([p for p in tm.parameters() if p.requires_grad], lr=0.1)
    opt = optim.SGD(m.parameters(), lr=0.1)

    def step(m, opt, x):
        loss, g = av.value_and_grad(lambda m, x: (m(x) ** 2).sum())(m, x)
        opt.step(g)
        return loss, g
    run = av.compile(step)
    for _ in range(2):
        topt.zero_grad()
        (tm(torch.tensor(x)) ** 2).sum().backward()
        topt.step()
        _, g = run(m, opt, x)
    assert sorted(g) == ["2.bias", "2.weight"]
    for k, v in tm.state_dict().items():
        np.testing.assert_allclose(nn.state_dict(m)[k].numpy(), v.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    m[0].weight.requires_grad_(True)
    _, g = run(m, opt, x)
    # three traces: the first step moved the frozen layer to a step count of its own (the optimizer then
    # holds one more tensor, so the second call traced once more), and unfreezing changed the signature
    assert sorted(g) == ["0.weight", "2.bias", "2.weight"] and run.cache_info().entries == 3
    w = av.tensor(x).requires_grad_(False)
    assert av.grad(lambda w: (w * w).sum())(w).shape == w.shape
    with pytest.raises(RuntimeError, match="only floating-point"):
        av.tensor([1, 2]).requires_grad = True


def test_mistakes_from_torch_habits_say_what_to_do_instead(rng, tmp_path):
    for bad, err in ((None, TypeError), ([None, 1.0], TypeError), ([2 ** 70], TypeError), (["a"], TypeError),
                     ([[1, 2], [3]], ValueError)):
        with pytest.raises(err, match="cannot make a tensor"):
            av.tensor(bad)  # was tensor(nan) for None
    x = av.tensor(rng.standard_normal(3))
    with pytest.raises(RuntimeError, match="value_and_grad"):
        x.sum().backward()
    with pytest.raises(AttributeError, match="gradients are values"):
        x.grad  # noqa: B018
    def frozen_loss(x):
        with av.no_grad():
            return (x * 2).sum()
    with pytest.warns(UserWarning, match="depends on none of the tensors"):
        g = av.grad(frozen_loss)(x)
    assert not g.numpy().any()
    with pytest.raises(av.TracerError, match="av.exp"):
        av.compile(lambda x: np.exp(x))(x)
    with pytest.raises(FileNotFoundError, match="directory .*nodir does not exist"):
        av.save({"x": x}, tmp_path / "nodir" / "x.safetensors")


def test_more_spellings_ported_code_uses(rng):
    """ViT's `.normal_(std=0.02)`, torch's `uniform_(from=, to=)`, `model.to(torch.float16)`,
    `model.requires_grad_(False)`, `torch.utils.checkpoint`, allclose / isclose / equal / bernoulli."""
    from avalon import nn
    from avalon.utils.checkpoint import checkpoint, checkpoint_sequential
    av.manual_seed(0)
    w = av.empty(4000).normal_(std=0.02)
    assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002
    u = av.empty(4000).uniform_(**{"from": 2.0, "to": 3.0})
    assert 2.0 <= float(u.min()) and float(u.max()) < 3.0
    assert abs(float(av.empty(20000).exponential_(4.0).mean()) - 0.25) < 0.01
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    assert m.to(torch.float16)[0].weight.dtype == av.float16 and m.to(av.float32)[0].weight.dtype == av.float32
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())
    m.requires_grad_(True)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(checkpoint(m, av.tensor(x), use_reentrant=False).numpy(), m(av.tensor(x)).numpy())
    np.testing.assert_array_equal(checkpoint_sequential(m, 2, av.tensor(x)).numpy(), m(av.tensor(x)).numpy())
    a = rng.standard_normal(5)
    b = a + 1e-9
    b[0] = np.nan
    for eq_nan in (False, True):
        same(av.isclose(a, b, equal_nan=eq_nan), torch.isclose(T(a), T(b), equal_nan=eq_nan))
    assert av.allclose(a, a + 1e-9) and not av.allclose(a, b) and av.equal(a, a) and not av.equal(a, a[:4])
    p = av.bernoulli(av.full((20000,), 0.3))
    assert p.dtype == av.float32 and abs(float(p.mean()) - 0.3) < 0.02
