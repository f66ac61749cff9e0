"""Gaps found porting pytorch/examples by renaming imports, each checked against torch: legacy tensor
constructors, compiled models as modules, strided from_numpy, structured initializers, torch.load's
keywords, generators, thread counts, parameter vectors, torch's parameter order, the .item() hint."""
from __future__ import annotations

import copy
import math
import sys
import warnings

import numpy as np
import pytest
import torch

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F
from avalon.nn import init

# -- 1. torch.Tensor(...) and the typed legacy constructors -------------------------------------------------


@pytest.mark.parametrize("args", [(8,), (5, 8), (2, 0, 3), (), ([1, 2],), ([[3]],), ((2, 3),),
                                  (np.arange(3),), (np.arange(6.0).reshape(2, 3)[:, ::2],), ([True, False],)])
def test_tensor_constructor_is_torchs_legacy_one(args):
    want = torch.Tensor(*args)
    got = av.Tensor(*args)
    assert got.shape == tuple(want.shape) and got.dtype == av.float32
    if want.numel() and args and not isinstance(args[0], int):  # sizes: torch's memory is uninitialized
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    if args and isinstance(args[0], int):
        assert not got.numpy().any()  # Avalon fills zeros


@pytest.mark.parametrize("name", ["FloatTensor", "DoubleTensor", "HalfTensor", "BFloat16Tensor", "IntTensor",
                                  "LongTensor", "BoolTensor"])
def test_typed_legacy_constructors_match_torch(name):
    data = [[1.7, -2.2, 0.0], [3.5, 0.25, -0.75]]
    want, got = getattr(torch, name)(data), getattr(av, name)(data)
    same = {torch.float32: av.float32, torch.float64: av.float64, torch.float16: av.float16,
            torch.bfloat16: av.bfloat16, torch.int32: av.int32, torch.int64: av.int64, torch.bool: av.bool_}
    assert got.dtype == same[want.dtype]
    np.testing.assert_array_equal(got.numpy().astype(np.float64), want.to(torch.float64).numpy())
    assert getattr(av, name)(3, 2).shape == (3, 2) and isinstance(got, getattr(av, name))
    assert isinstance(got, av.Tensor) and got.type() == f"torch.{name}"  # Tensor.type() names it as torch


def test_legacy_constructor_dtype_rules_and_isinstance():
    assert isinstance(av.zeros(2), av.Tensor) and not isinstance(np.ones(2), av.Tensor)
    assert isinstance(av.zeros(2), av.FloatTensor) and not isinstance(av.zeros(2), av.LongTensor)
    assert isinstance(av.arange(3), av.LongTensor) and issubclass(type(av.zeros(1)), av.Tensor)
    real = type(av.zeros(1))  # the class's methods, for ported `torch.Tensor.view(...)` code
    assert av.Tensor.view is real.view and av.Tensor.reshape is real.reshape
    x = av.zeros(3)
    assert av.Tensor(x) is x  # torch returns an alias of a tensor of its dtype
    with pytest.raises(TypeError, match="expected a f32 tensor, got i64"):
        av.Tensor(av.arange(3))
    with pytest.raises(TypeError, match="data must be a sequence"):
        av.Tensor(2.5)
    with pytest.raises(TypeError, match="no dtype"):
        av.Tensor([1, 2], dtype=av.float64)
    av.set_default_dtype(av.float64)
    try:
        assert av.Tensor(2).dtype == av.float64 and av.Tensor([1]).dtype == av.float64  # the default dtype
        assert av.FloatTensor(2).dtype == av.float32
    finally:
        av.set_default_dtype(av.float32)
    # Avalon's own constructor (its modules', the tracer's) keeps an array's dtype
    assert sys.modules["avalon.tensor"].Tensor(np.arange(3)).dtype == av.int64


def test_parameter_of_a_legacy_tensor_is_a_float_parameter():
    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(av.Tensor(4, 8))
            self.bias = nn.Parameter(av.Tensor(8))
            init.xavier_uniform_(self.weight)
            init.zeros_(self.bias)

        def forward(self, x):
            return x @ self.weight + self.bias
    layer = Layer()
    assert [(n, p.shape, p.dtype) for n, p in layer.named_parameters()] == [
        ("weight", (4, 8), av.float32), ("bias", (8,), av.float32)]
    _, grads = av.value_and_grad(lambda m, x: m(x).sum())(layer, av.ones(2, 4))
    np.testing.assert_allclose(grads["bias"].numpy(), np.full(8, 2.0))


# -- 2. av.compile(model) is a module (torch's OptimizedModule) ---------------------------------------------


def _mlp():
    av.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _objective(m, x, y):
    return F.cross_entropy(m(x), y)


def test_compiled_model_gradients_are_the_models():
    m = _mlp()
    x, y = av.randn(5, 4), av.tensor(np.array([0, 2, 1, 1, 0]))
    cm = av.compile(m)
    assert cm._orig_mod is m and cm.__self__ is m
    np.testing.assert_allclose(cm(x).numpy(), m(x).numpy(), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "captured arrays" warning: the parameters are inputs
        loss, grads = av.value_and_grad(_objective)(cm, x, y)
    loss0, grads0 = av.value_and_grad(_objective)(m, x, y)
    assert sorted(grads) == sorted(grads0) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    for k in grads0:
        np.testing.assert_allclose(grads[k].numpy(), grads0[k].numpy(), rtol=1e-6)
    tm = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    tm.load_state_dict({k: torch.tensor(v.numpy()) for k, v in m.state_dict().items()})
    torch.nn.functional.cross_entropy(tm(torch.tensor(x.numpy())), torch.tensor(y.numpy())).backward()
    for k, p in tm.named_parameters():  # torch is the oracle
        np.testing.assert_allclose(grads[k].numpy(), p.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_compiled_model_is_the_model_for_optimizers_state_and_modes(tmp_path):
    m, ref = _mlp(), _mlp()
    x, y = av.randn(5, 4), av.tensor(np.array([0, 2, 1, 1, 0]))
    cm = av.compile(m, mode="max-autotune", fullgraph=True, dynamic=False)
    assert [id(p) for p in cm.parameters()] == [id(p) for p in m.parameters()]
    assert list(cm.state_dict()) == list(m.state_dict()) and len(cm) == 3
    opt, opt_ref = optim.SGD(cm.parameters(), lr=0.1, momentum=0.9), optim.SGD(ref, lr=0.1, momentum=0.9)

    def step(model, o, x, y):
        loss, g = av.value_and_grad(_objective)(model, x, y)
        o.step(g)
        return loss
    compiled_step = av.compile(step)
    for _ in range(3):
        compiled_step(cm, opt, x, y)  # a compiled model inside a compiled step: one graph
        step(ref, opt_ref, x, y)
    for k, v in ref.state_dict().items():
        np.testing.assert_allclose(m.state_dict()[k].numpy(), v.numpy(), rtol=1e-5, atol=1e-6)
    assert cm.eval() is cm and m.training is False and cm.training is False
    assert cm.train() is cm and m[0].training is True
    cm.note = 3  # attributes are the original's, both ways
    assert m.note == 3 and cm.note == 3
    av.save(cm, tmp_path / "c.safetensors")
    fresh = av.compile(_mlp())
    fresh.load_state_dict(av.load(tmp_path / "c.safetensors"))
    np.testing.assert_array_equal(fresh(x).numpy(), cm(x).numpy())
    # a torch checkpoint of a compiled torch module (keys '_orig_mod.*') loads too
    tm = torch.compile(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)))
    sd = tm.state_dict()
    assert all(k.startswith("_orig_mod.") for k in sd)
    fresh.load_state_dict(sd)
    np.testing.assert_allclose(fresh(x).numpy(), tm._orig_mod(torch.tensor(x.numpy())).detach().numpy(), rtol=1e-5)
    twin = copy.deepcopy(cm)
    assert twin._orig_mod is not m and twin._orig_mod[0].weight is not m[0].weight
    np.testing.assert_array_equal(twin(x).numpy(), cm(x).numpy())
    assert [v.name for v in av.trace(cm, x).inputs][:2] == ["0.weight", "0.bias"]
    assert "OptimizedModule" in repr(cm) and cm.inspect(x).graph is not None


def test_compile_takes_torchs_keywords():
    m = _mlp()
    x = av.randn(2, 4)
    assert av.compile(m, disable=True) is m
    assert av.compile(disable=True)(m) is m
    for backend in ("inductor", "eager", "aot_eager", "cudagraphs"):
        np.testing.assert_allclose(av.compile(model=m, backend=backend)(x).numpy(), m(x).numpy(), rtol=1e-6)
    np.testing.assert_allclose(av.compile(m, options={"triton.cudagraphs": False})(x).numpy(), m(x).numpy(),
                               rtol=1e-6)
    with pytest.raises(RuntimeError, match="unrecognized mode"):
        av.compile(m, mode="fastest")
    with pytest.raises(RuntimeError, match="mode or options"):
        av.compile(m, mode="default", options={})
    dec = av.compile(fullgraph=True)(lambda a: a * 2)
    assert isinstance(dec, av.compiler.Compiled) and dec(x).shape == (2, 4)

    class Gate(nn.Module):
        def forward(self, x, scale=2.0):
            return x * scale
    cg = av.compile(Gate())
    np.testing.assert_allclose(cg(x, scale=3.0).numpy(), 3 * x.numpy())  # keywords bound to forward's


# -- 3. from_numpy of a strided array -----------------------------------------------------------------------


def test_from_numpy_of_a_strided_array_is_a_copy_and_says_so():
    d = np.arange(12.0).reshape(3, 4)
    with pytest.warns(UserWarning, match="copy"):
        t = av.from_numpy(d[1:, :-1])
    np.testing.assert_array_equal(t.numpy(), torch.from_numpy(d[1:, :-1]).numpy())
    t.add_(1.0)
    assert d[1, 0] == 4.0  # not shared (torch's would be 5.0)
    c = np.arange(4.0)
    s = av.from_numpy(c)  # contiguous: shared, as torch
    c[0] = 9.0
    assert s.numpy()[0] == 9.0


# -- 5. nn.init.orthogonal_, dirac_, eye_, sparse_ ----------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (4, 3, 2, 2), (5, 5)])
def test_orthogonal_gives_orthonormal_rows_or_columns(shape):
    av.manual_seed(0)
    w = init.orthogonal_(av.zeros(*shape), gain=1.5).numpy().reshape(shape[0], -1).astype(np.float64)
    small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    np.testing.assert_allclose(small, 2.25 * np.eye(small.shape[0]), atol=1e-5)
    ws = [init.orthogonal_(av.zeros(3, 3)).numpy() for _ in range(400)]  # Haar: each entry has mean 0, var 1/3
    assert abs(np.mean([a[0, 0] for a in ws])) < 0.08 and abs(np.var([a[0, 0] for a in ws]) - 1 / 3) < 0.06
    with pytest.raises(ValueError, match="2 or more dimensions"):
        init.orthogonal_(av.zeros(3))


@pytest.mark.parametrize("shape,groups", [((4, 4, 3), 1), ((6, 2, 3, 3), 2), ((3, 5, 2, 3, 4), 1), ((4, 2, 3), 2)])
def test_dirac_matches_torch(shape, groups):
    t = torch.nn.init.dirac_(torch.empty(shape), groups)
    np.testing.assert_array_equal(init.dirac_(av.ones(*shape), groups).numpy(), t.numpy())
    x = av.randn(2, shape[1] * groups if groups > 1 else shape[1], *([7] * (len(shape) - 2)))
    if len(shape) == 4 and groups == 1:
        y = F.conv2d(x, init.dirac_(av.zeros(*shape)), padding=1)
        np.testing.assert_allclose(y.numpy()[:, :min(shape[:2])], x.numpy()[:, :min(shape[:2])], rtol=1e-6)


def test_eye_and_errors_match_torch():
    for shape in [(3, 5), (4, 2), (3, 3)]:
        np.testing.assert_array_equal(init.eye_(av.ones(*shape)).numpy(), torch.nn.init.eye_(torch.empty(shape)).numpy())
    for fn, arg in [(init.eye_, (2, 2, 2)), (init.dirac_, (2, 2)), (init.sparse_, (2, 2, 2))]:
        with pytest.raises(ValueError) as mine:
            fn(av.zeros(*arg), *([0.5] if fn is init.sparse_ else []))
        with pytest.raises(ValueError) as theirs:
            getattr(torch.nn.init, fn.__name__)(torch.zeros(arg), *([0.5] if fn is init.sparse_ else []))
        assert str(mine.value) == str(theirs.value)


def test_sparse_zeroes_the_same_count_in_every_column():
    av.manual_seed(1)
    rows, cols, sparsity = 40, 300, 0.3
    w = init.sparse_(av.zeros(rows, cols), sparsity, std=0.5).numpy()
    assert ((w == 0).sum(0) == math.ceil(sparsity * rows)).all()
    nz = w[w != 0]
    assert abs(nz.std() - 0.5) < 0.02 and abs(nz.mean()) < 0.02
    hit = (w == 0).mean(1)  # the zeros fall on every row alike
    assert hit.min() > 0.2 and hit.max() < 0.4


# -- 6. av.load's keywords, generators, threads, parameter vectors -----------------------------------------


def test_load_takes_torchs_keywords(tmp_path):
    m = _mlp()
    av.save(m, tmp_path / "m.safetensors")
    ref = av.load(tmp_path / "m.safetensors")
    seen = []
    for kw in [dict(map_location="cpu", weights_only=True), dict(map_location=torch.device("cpu"), mmap=True),
               dict(map_location=av.device("cpu")), dict(map_location={"cuda:0": "cpu"}),
               dict(map_location=lambda storage, loc: seen.append(loc) or storage), dict(weights_only=False)]:
        sd = av.load(tmp_path / "m.safetensors", **kw)
        assert list(sd) == list(ref)
        for k in ref:
            np.testing.assert_array_equal(sd[k].numpy(), ref[k].numpy())
            assert sd[k].device == av.device("cpu")
    assert seen == ["cpu"] * len(ref)
    doubled = av.load(tmp_path / "m.safetensors", map_location=lambda t, loc: t * 2)
    np.testing.assert_array_equal(doubled["0.weight"].numpy(), 2 * ref["0.weight"].numpy())


def test_generator_repeats_its_stream_like_torchs():
    assert av.Generator().initial_seed() == torch.Generator().initial_seed()
    g = av.Generator().manual_seed(42)
    assert g.initial_seed() == 42 and av.manual_seed(5) is av.default_generator
    a = [av.rand(3, generator=g), av.randn(2, 2, generator=g), av.randint(0, 9, (4,), generator=g),
         av.randperm(6, generator=g)]
    av.rand(5)  # the default generator's draws do not disturb g's stream
    g.manual_seed(42)
    b = [av.rand(3, generator=g), av.randn(2, 2, generator=g), av.randint(0, 9, (4,), generator=g),
         av.randperm(6, generator=g)]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u.numpy(), v.numpy())
    assert sorted(b[3].numpy().tolist()) == list(range(6))
    state = g.get_state()
    u = av.randn(4, generator=g).numpy()
    assert not np.array_equal(u, av.randn(4, generator=g).numpy())
    g.set_state(state)
    np.testing.assert_array_equal(av.randn(4, generator=g).numpy(), u)
    h = av.Generator()
    assert h.seed() == h.initial_seed()
    w1, w2 = av.zeros(3, 4), av.zeros(3, 4)
    init.normal_(w1, generator=av.Generator().manual_seed(7))
    init.normal_(w2, generator=av.Generator().manual_seed(7))
    np.testing.assert_array_equal(w1.numpy(), w2.numpy())
    with pytest.raises(NotImplementedError, match="generator= cannot be used inside"):
        av.compile(lambda x: x + av.rand(2, generator=g))(av.zeros(2))


def test_data_utilities_take_a_generator():
    from avalon.utils.data import DataLoader, TensorDataset, random_split
    data = TensorDataset(av.arange(10))

    def order(seed):
        loader = DataLoader(data, batch_size=4, shuffle=True, generator=av.Generator().manual_seed(seed))
        return [b[0].numpy().tolist() for b in loader]
    assert order(3) == order(3) != order(4)
    parts = [random_split(range(10), [3, 7], generator=av.Generator().manual_seed(1)) for _ in range(2)]
    assert [list(p) for p in parts[0]] == [list(p) for p in parts[1]]
    assert sorted(list(parts[0][0]) + list(parts[0][1])) == list(range(10))
    with pytest.raises(TypeError, match="av.Generator"):
        DataLoader(data, shuffle=True, generator=torch.Generator())


def test_num_threads_round_trip():
    before = av.get_num_threads()
    assert before >= 1
    try:
        av.set_num_threads(1)
        assert av.get_num_threads() == 1
        assert (av.randn(64, 64) @ av.randn(64, 64)).shape == (64, 64)
    finally:
        av.set_num_threads(before)
    assert av.get_num_threads() == before
    with pytest.raises(ValueError):
        av.set_num_threads(0)


def test_parameters_to_vector_and_back_match_torch():
    m = _mlp()
    tm = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    tm.load_state_dict({k: torch.tensor(v.numpy()) for k, v in m.state_dict().items()})
    v = nn.utils.parameters_to_vector(m.parameters())
    tv = torch.nn.utils.parameters_to_vector(tm.parameters())
    np.testing.assert_array_equal(v.numpy(), tv.detach().numpy())
    new = np.random.default_rng(0).standard_normal(v.shape[0]).astype(np.float32)
    nn.utils.vector_to_parameters(av.tensor(new), m.parameters())
    torch.nn.utils.vector_to_parameters(torch.tensor(new), tm.parameters())
    for k, p in tm.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k].numpy(), p.numpy())
    _, grads = av.value_and_grad(lambda mm, x: mm(x).sum())(m, av.randn(2, 4))
    assert nn.utils.parameters_to_vector(grads.values()).shape == v.shape  # flattens gradients too
    with pytest.raises(TypeError, match="expected an Avalon Tensor"):
        nn.utils.vector_to_parameters(new, m.parameters())


# -- 7. torch's parameter and state_dict order: own tensors first ------------------------------------------


def test_own_parameters_and_buffers_come_before_childrens_as_in_torch():
    def build(lib):
        class Embed(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = lib.nn.Conv2d(3, 4, 2, stride=2)
                self.register_buffer("scale", lib.ones(1))

        class ViT(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.patch_embed = Embed()
                self.cls_token = lib.nn.Parameter(lib.zeros(1, 1, 4))
                self.blocks = lib.nn.ModuleList([lib.nn.LayerNorm(4), lib.nn.BatchNorm1d(4)])
                self.register_buffer("mask", lib.zeros(5))
                self.pos_embed = lib.nn.Parameter(lib.zeros(1, 5, 4))
                self.head = lib.nn.Linear(4, 2)
        return ViT()
    mine, theirs = build(av), build(torch)
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(mine.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in mine.named_parameters()][:2] == ["cls_token", "pos_embed"]
    names = [v.name for v in av.trace(lambda m, x: m.head(x).sum(), mine, av.zeros(1, 4)).inputs]
    assert names[:2] == ["cls_token", "pos_embed"]  # traces list parameters in the same order


# -- 8. .item() inside a traced loss --------------------------------------------------------------------------


def test_item_in_a_traced_loss_suggests_detach():
    m = nn.Linear(3, 1)

    def loss(model, x, r):
        value = model(x).sum()
        return (r - value.item()) * value
    with pytest.raises(av.TracerError, match=r"value\.detach\(\)"):
        av.value_and_grad(loss)(m, av.randn(2, 3), av.tensor(1.0))
    _, g = av.value_and_grad(lambda model, x, r: (r - model(x).sum().detach()) * model(x).sum())(
        m, av.randn(2, 3), av.tensor(1.0))
    assert g["weight"].shape == (1, 3)


def test_int32_sums_widen_to_int64_as_torch():
    """torch's sum/cumsum of i32 are i64 (found by the Triton fuzz hunt); `dtype=` keeps i32."""
    a = np.array([[2**30, 2**30], [3, -4]], np.int32)
    for f in (lambda t: t.sum(), lambda t: t.sum(0), lambda t: t.cumsum(1), lambda t: t.sum(1, dtype=torch.int32)):
        want, got = f(torch.tensor(a)), f(av.tensor(a))
        assert str(got.dtype) == {torch.int64: "i64", torch.int32: "i32"}[want.dtype]
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_conv_and_linear_batch_norm_fusion_matches_torch(rng):
    """torch.nn.utils.fusion: the folded layer computes bn(layer(x)) with eval statistics."""
    torch.manual_seed(0)
    cases = [(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), (2, 2, 5, 5),
              nn.utils.fuse_conv_bn_eval),
             (torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), nn.Linear(4, 3), nn.BatchNorm1d(3), (5, 4),
              nn.utils.fuse_linear_bn_eval)]
    for tl, tb, al, ab, shape, fuse in cases:
        tl, tb = tl.double().eval(), tb.double().eval()
        with torch.no_grad():
            tb.running_mean.uniform_(-1, 1), tb.running_var.uniform_(0.5, 2), tb.weight.uniform_(0.5, 2)
            tb.bias.uniform_(-1, 1)
        al, ab = al.to(av.float64).eval(), ab.to(av.float64).eval()
        av.nn.load_state_dict(al, tl.state_dict())
        av.nn.load_state_dict(ab, tb.state_dict())
        x = rng.standard_normal(shape)
        want = tb(tl(torch.tensor(x))).detach().numpy()
        assert np.abs(fuse(al, ab)(av.tensor(x)).numpy() - want).max() < 1e-12
        with pytest.raises(AssertionError, match="eval"):
            fuse(al.train(), ab)


def test_rnn_unpacking_stack_dataset_torchs_submodule_paths_and_deprecated_init_names():
    from avalon.nn.utils.rnn import invert_permutation, pack_sequence, pad_sequence, unpack_sequence, unpad_sequence
    from avalon.utils.data.dataloader import default_collate  # torch's submodule paths
    from avalon.utils.data.sampler import SubsetRandomSampler  # noqa: F401
    seqs = [np.arange(3.0), np.arange(5.0), np.arange(2.0)]
    for got in (unpack_sequence(pack_sequence([av.tensor(s) for s in seqs], enforce_sorted=False)),
                unpad_sequence(pad_sequence([av.tensor(s) for s in seqs]), [3, 5, 2])):
        assert [g.numpy().tolist() for g in got] == [s.tolist() for s in seqs]
    assert invert_permutation(av.tensor(np.array([2, 0, 1]))).numpy().tolist() == [1, 2, 0]
    d = av.utils.data.StackDataset(a=av.utils.data.TensorDataset(av.tensor(np.arange(4.0))), b=[5, 6, 7, 8])
    assert len(d) == 4 and d[1]["b"] == 6 and float(d[1]["a"][0]) == 1.0
    assert default_collate([d[0], d[1]])["b"].numpy().tolist() == [5, 6]
    with pytest.raises(ValueError, match="Size mismatch"):
        av.utils.data.StackDataset([1, 2], [1])
    with pytest.warns(FutureWarning, match=r"nn.init.normal` is now deprecated in favor of `nn.init.normal_"):
        nn.init.normal(av.zeros(3, 3))
