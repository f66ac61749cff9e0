"""torch names ported code calls that Avalon lacked: nn.Buffer, nn.DataParallel and
nn.parallel.DistributedDataParallel (the two-process run is in test_ddp.py), use_deterministic_algorithms,
the interop thread count, torch.as_strided (a view: reads, writes and gradients), torch.gradient, and
adaptive max pooling's indices, each against torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avalon as av
from avalon import nn
from avalon.nn import functional as F
from avalon.nn.parallel import DistributedDataParallel

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def test_nn_buffer_registers_itself_when_assigned_with_its_persistence():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.mask = nn.Buffer(av.ones(2))
            self.scratch = nn.Buffer(av.zeros(3), persistent=False)

    class TM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.mask = torch.nn.Buffer(torch.ones(2))
            self.scratch = torch.nn.Buffer(torch.zeros(3), persistent=False)

    m, tm = M(), TM()
    assert list(m.state_dict()) == list(tm.state_dict())
    assert [n for n, _ in m.named_buffers()] == [n for n, _ in tm.named_buffers()]
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in tm.named_parameters()]
    m.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})


def test_data_parallel_is_the_module_under_torchs_module_prefix():
    torch.manual_seed(0)
    tnet = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    tdp = torch.nn.DataParallel(tnet)
    dp = nn.DataParallel(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    assert list(dp.state_dict()) == list(tdp.state_dict())
    dp.load_state_dict(tdp.state_dict())
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(dp(av.tensor(x)).numpy(), tdp(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    ddp = DistributedDataParallel(nn.Linear(3, 2))
    assert list(ddp.state_dict()) == ["module.weight", "module.bias"]


class _Fake:
    """A second rank holding 2x + 1 where this one holds x (as tests/test_distributed.py's)."""

    def world_size(self, group):
        return 2

    def _reduce(self, a, reduction):
        total = a + (2 * a + 1)
        return total / 2 if reduction == "mean" else total

    def all_reduce_array(self, x, reduction, group):
        return self._reduce(np.asarray(x, np.float64), reduction).astype(x.dtype)

    def all_reduce_tensor_(self, x, reduction, group):
        a = x.numpy()
        a[...] = self._reduce(a.astype(np.float64), reduction)


@pytest.mark.parametrize("compiled", [False, True])
def test_distributed_data_parallel_averages_each_parameters_gradient_over_the_group(compiled):
    from avalon.ir.reference.collective import set_collective
    av.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = av.tensor(np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32))

    def loss(m, x):
        return (m(x) ** 2).sum()

    g = av.value_and_grad(loss)
    _, plain = (av.compile(g) if compiled else g)(net, x)
    old = set_collective(_Fake())
    try:
        ddp = DistributedDataParallel(net, broadcast_buffers=False)
        _, synced = (av.compile(g) if compiled else g)(ddp, x)
    finally:
        set_collective(old)
    assert sorted(synced) == sorted(f"module.{k}" for k in plain)
    for k, v in plain.items():  # the fake group's mean of (g, 2g + 1)
        np.testing.assert_allclose(synced[f"module.{k}"].numpy(), 1.5 * v.numpy() + 0.5, rtol=1e-5, atol=1e-6)


def test_distributed_data_parallel_alone_is_the_module_and_no_sync_says_what_to_do():
    net = nn.Linear(3, 2)
    ddp = DistributedDataParallel(net, device_ids=[0])
    x = av.ones(2, 3)
    np.testing.assert_array_equal(ddp(x).numpy(), net(x).numpy())
    with ddp.no_sync():  # a context manager, as torch's (tests/test_distributed_ports.py: what it does)
        assert not ddp.require_backward_grad_sync
        np.testing.assert_array_equal(ddp(x).numpy(), net(x).numpy())
    assert ddp.require_backward_grad_sync


def test_deterministic_mode_refuses_triton_atomics_and_leaves_the_cpu_backends_alone():
    emb = nn.Embedding(10, 4)
    idx = av.tensor(np.array([1, 2, 1, 3]))

    def loss(m, i):
        return (m(i) ** 2).sum()

    try:
        av.use_deterministic_algorithms(True)
        assert av.are_deterministic_algorithms_enabled() and av.get_deterministic_debug_mode() == 2
        av.compile(av.value_and_grad(loss), backend="numpy")(emb, idx)
        with pytest.raises(RuntimeError, match="index_add on Triton.*deterministic"):
            av.compile(av.value_and_grad(loss), backend="triton")(emb, idx)
        av.use_deterministic_algorithms(True, warn_only=True)
        assert av.is_deterministic_algorithms_warn_only_enabled()
        with pytest.warns(UserWarning, match="does not have a deterministic implementation"):
            av.compile(av.value_and_grad(loss), backend="triton")(emb, idx)
    finally:
        av.use_deterministic_algorithms(False)
    assert not av.are_deterministic_algorithms_enabled()


def test_interop_threads_are_recorded():
    av.set_num_interop_threads(3)
    assert av.get_num_interop_threads() == 3
    with pytest.raises(ValueError):
        av.set_num_interop_threads(0)


@pytest.mark.parametrize("size,stride,offset", [((3, 2), (1, 1), 0), ((2, 2), (4, 1), 1), ((3, 3), (1, 2), None),
                                                ((2, 3, 2), (6, 2, 1), 0)])
def test_as_strided_reads_like_torch_and_differentiates(size, stride, offset):
    x = np.random.default_rng(2).normal(size=(3, 4))
    got = av.tensor(x).as_strided(size, stride, offset)
    want = torch.tensor(x).as_strided(size, stride, offset)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert got.stride() == want.stride() and got.storage_offset() == want.storage_offset()
    g = av.grad(lambda z: (av.as_strided(z, size, stride, offset) ** 2).sum())(av.tensor(x))
    tz = torch.tensor(x, requires_grad=True)
    (torch.as_strided(tz, size, stride, offset) ** 2).sum().backward()
    np.testing.assert_allclose(g.numpy(), tz.grad.numpy(), rtol=1e-12)
    compiled = av.compile(lambda z: av.as_strided(z, size, stride, offset).sum(0))(av.tensor(x))
    np.testing.assert_allclose(compiled.numpy(), want.sum(0).numpy(), rtol=1e-12)


def test_as_strided_of_a_view_reads_its_base_and_writes_reach_the_base():
    x = np.arange(12.0).reshape(3, 4)
    a, t = av.tensor(x.copy()), torch.tensor(x.copy())
    np.testing.assert_array_equal(a.t().as_strided((2, 2), (1, 4)).numpy(), t.t().as_strided((2, 2), (1, 4)).numpy())
    a[1:].as_strided((2, 2), (4, 2)).mul_(10)  # the offset is the view's own (4)
    t[1:].as_strided((2, 2), (4, 2)).mul_(10)
    np.testing.assert_array_equal(a.numpy(), t.numpy())
    with pytest.raises(RuntimeError, match="more than one element"):
        a.as_strided((2, 2), (1, 1)).add_(1)
    with pytest.raises(RuntimeError, match="storage"):
        a.as_strided((4, 4), (4, 1))


def test_as_strided_reads_and_writes_compile_once():
    """The positions an as_strided view reads and writes come from Python ints: literal data, so a
    compiled function keeps its graph (it warned and traced again on every call)."""
    def f(x):
        y = x.clone()
        y.as_strided((2, 2), (1, 2), 1).mul_(3.0)
        return y.sum() + x.as_strided((3,), (2,)).sum()

    x = np.arange(8, dtype=np.float32)
    tx = torch.tensor(x, requires_grad=True)
    want = f(tx)
    want.backward()
    step = av.compile(f)
    for _ in range(3):
        assert float(step(x)) == want.item()
    assert step.cache_info() == (2, 1, 1)
    np.testing.assert_array_equal(av.compile(av.grad(f))(x).numpy(), tx.grad.numpy())


@pytest.mark.parametrize("kw", [{}, {"dim": 1}, {"spacing": 2.0}, {"spacing": [2.0, 0.5]}, {"edge_order": 2},
                                {"dim": 0, "spacing": "coords"}])
def test_gradient_is_torchs(kw):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 6))
    if kw.get("spacing") == "coords":
        c = np.cumsum(rng.uniform(0.1, 1.0, 5))
        tkw, akw = {**kw, "spacing": (torch.tensor(c),)}, {**kw, "spacing": (av.tensor(c),)}
    else:
        tkw = akw = kw
    want = torch.gradient(torch.tensor(x), **tkw)
    got = av.gradient(av.tensor(x), **akw)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [(3, 4), 2, (None, 5)])
def test_adaptive_max_pool_returns_torchs_indices_and_gradient(size):
    x = np.random.default_rng(4).normal(size=(2, 3, 7, 9))
    v, i = F.adaptive_max_pool2d(av.tensor(x), size, return_indices=True)
    tv, ti = TF.adaptive_max_pool2d(torch.tensor(x), size, return_indices=True)
    np.testing.assert_array_equal(v.numpy(), tv.numpy())
    np.testing.assert_array_equal(i.numpy(), ti.numpy())
    v1, i1 = nn.AdaptiveMaxPool1d(4, return_indices=True)(av.tensor(x[:, :, 0]))
    tv1, ti1 = torch.nn.AdaptiveMaxPool1d(4, return_indices=True)(torch.tensor(x[:, :, 0]))
    np.testing.assert_array_equal(i1.numpy(), ti1.numpy())
    np.testing.assert_array_equal(F.max_pool1d_with_indices(av.tensor(x[:, :, 0]), 2)[1].numpy(),
                                  TF.max_pool1d_with_indices(torch.tensor(x[:, :, 0]), 2)[1].numpy())
    np.testing.assert_allclose(F.upsample_bilinear(av.tensor(x), scale_factor=2).numpy(),
                               TF.interpolate(torch.tensor(x), scale_factor=2, mode="bilinear", align_corners=True).numpy(),
                               rtol=1e-12)


def test_clip_attention_pool_2d_through_the_functional_multi_head_attention():
    """OpenAI CLIP's ModifiedResNet head (clip/model.py, AttentionPool2d), written once over torch and avalon."""
    def make(lib, th, F_):
        class AttentionPool2d(lib.Module):
            def __init__(self, spacial_dim, embed_dim, num_heads, output_dim=None):
                super().__init__()
                self.positional_embedding = lib.Parameter(th.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
                self.k_proj = lib.Linear(embed_dim, embed_dim)
                self.q_proj = lib.Linear(embed_dim, embed_dim)
                self.v_proj = lib.Linear(embed_dim, embed_dim)
                self.c_proj = lib.Linear(embed_dim, output_dim or embed_dim)
                self.num_heads = num_heads

            def forward(self, x):
                x = x.flatten(start_dim=2).permute(2, 0, 1)  # NCHW -> (HW)NC
                x = th.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (HW+1)NC
                x = x + self.positional_embedding[:, None, :].to(x.dtype)  # (HW+1)NC
                x, _ = F_.multi_head_attention_forward(
                    query=x[:1], key=x, value=x,
                    embed_dim_to_check=x.shape[-1],
                    num_heads=self.num_heads,
                    q_proj_weight=self.q_proj.weight,
                    k_proj_weight=self.k_proj.weight,
                    v_proj_weight=self.v_proj.weight,
                    in_proj_weight=None,
                    in_proj_bias=th.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
                    bias_k=None,
                    bias_v=None,
                    add_zero_attn=False,
                    dropout_p=0,
                    out_proj_weight=self.c_proj.weight,
                    out_proj_bias=self.c_proj.bias,
                    use_separate_proj_weight=True,
                    training=self.training,
                    need_weights=False
                )
                return x.squeeze(0)
        return AttentionPool2d(3, 8, 2, 6)

    torch.manual_seed(0)
    tm = make(torch.nn, torch, TF).double()
    am = make(nn, av, F).double()
    am.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = np.random.default_rng(5).normal(size=(2, 8, 3, 3))
    tx = torch.tensor(x)
    ty = tm(tx)
    (ty ** 2).sum().backward()
    y = am(av.tensor(x))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    _, grads = av.compile(av.value_and_grad(lambda m, x: (m(x) ** 2).sum()))(am, av.tensor(x))
    for name, p in tm.named_parameters():
        np.testing.assert_allclose(grads[name].numpy(), p.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("head_bias", [False, True])
def test_adaptive_log_softmax_with_loss_is_torchs_eagerly_and_compiled(head_bias):
    torch.manual_seed(1)
    tm = torch.nn.AdaptiveLogSoftmaxWithLoss(8, 20, [4, 10], div_value=2.0, head_bias=head_bias).double()
    am = nn.AdaptiveLogSoftmaxWithLoss(8, 20, [4, 10], div_value=2.0, head_bias=head_bias).double()
    assert list(am.state_dict()) == list(tm.state_dict())
    am.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    rng = np.random.default_rng(6)
    x, t = rng.normal(size=(7, 8)), np.array([0, 3, 5, 9, 12, 19, 10])
    tout = tm(torch.tensor(x), torch.tensor(t))
    tout.loss.backward()
    out = am(av.tensor(x), av.tensor(t))
    np.testing.assert_allclose(out.output.numpy(), tout.output.detach().numpy(), rtol=1e-12)
    loss, grads = av.compile(av.value_and_grad(lambda m, x, t: m(x, t).loss))(am, av.tensor(x), av.tensor(t))
    np.testing.assert_allclose(loss.numpy(), tout.loss.detach().numpy(), rtol=1e-12)
    for name, p in tm.named_parameters():
        np.testing.assert_allclose(grads[name].numpy(), p.grad.numpy(), rtol=1e-9, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(am.log_prob(av.tensor(x)).numpy(), tm.log_prob(torch.tensor(x)).detach().numpy(),
                               rtol=1e-12)
    np.testing.assert_array_equal(am.predict(av.tensor(x)).numpy(), tm.predict(torch.tensor(x)).numpy())
    with pytest.raises(RuntimeError, match="Target values should be in"):
        am(av.tensor(x), av.tensor(np.array([0, 1, 2, 3, 4, 5, 20])))
    with pytest.raises(ValueError, match="cutoffs"):
        nn.AdaptiveLogSoftmaxWithLoss(8, 20, [10, 4])


@pytest.mark.parametrize("seed", range(4))
def test_histogram_is_torchs(seed):
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=60), rng.random(60)
    edges = np.array([-2.0, -0.5, 0.0, 0.3, 2.5])
    for targs, aargs in [((7,), (7,)), ((5,), (5,)), ((torch.tensor(edges),), (av.tensor(edges),))]:
        for kw in [{}, {"range": (-1.0, 1.0)}, {"weight": True, "density": True}]:
            if "range" in kw and not isinstance(targs[0], int):
                continue
            tk, ak = dict(kw), dict(kw)
            if kw.get("weight"):
                tk["weight"], ak["weight"] = torch.tensor(w), av.tensor(w)
            t = torch.histogram(torch.tensor(x), *targs, **tk)
            a = av.histogram(av.tensor(x), *aargs, **ak)
            np.testing.assert_allclose(a.hist.numpy(), t.hist.numpy(), rtol=1e-12)
            np.testing.assert_allclose(a.bin_edges.numpy(), t.bin_edges.numpy(), rtol=1e-14)
    compiled = av.compile(lambda v: av.histogram(v, 5).hist)(av.tensor(x))
    np.testing.assert_array_equal(compiled.numpy(), torch.histogram(torch.tensor(x), 5).hist.numpy())


def test_inplace_shape_methods_eagerly_and_on_a_traced_functions_own_tensor():
    x = np.arange(6.0).reshape(2, 3)
    for name, args in [("unsqueeze_", (1,)), ("squeeze_", ()), ("t_", ()), ("transpose_", (0, 1)),
                       ("swapaxes_", (0, 1)), ("swapdims_", (1, 0))]:
        a, t = av.tensor(x[None] if name == "squeeze_" else x), torch.tensor(x[None] if name == "squeeze_" else x)
        assert getattr(a, name)(*args) is a
        getattr(t, name)(*args)
        np.testing.assert_array_equal(a.numpy(), t.numpy())

    @av.compile
    def f(v):
        b = v * 2
        b.unsqueeze_(0)
        b.t_()
        return b

    np.testing.assert_array_equal(f(av.tensor(x[0])).numpy(), (2 * x[0])[None].T)

    @av.compile
    def g(v):
        v.unsqueeze_(0)
        return v

    with pytest.raises(RuntimeError, match="cannot change its shape in place"):
        g(av.tensor(x))
    v = av.tensor(x)
    _ = v[0]
    with pytest.raises(RuntimeError, match="view"):
        v.unsqueeze_(0)


def test_small_tensor_methods_ported_code_calls():
    x = np.random.default_rng(7).normal(size=(3, 64))
    a, t = av.tensor(x), torch.tensor(x)
    np.testing.assert_allclose(av.view_as_real(a.stft(16, return_complex=True)).numpy(),
                               torch.view_as_real(t.stft(16, return_complex=True)).numpy(), atol=1e-12)
    z = av.tensor([1.0, 2.0, 3.0])
    z.apply_(lambda v: v * 10).map_(av.tensor([1.0, 1.0, 2.0]), lambda p, q: p + q)
    np.testing.assert_array_equal(z.numpy(), [11.0, 21.0, 32.0])
    np.testing.assert_array_equal(a.narrow_copy(1, 2, 5).numpy(), t.narrow_copy(1, 2, 5).numpy())
    assert [c.shape for c in a.unsafe_chunk(2, 1)] == [tuple(c.shape) for c in t.unsafe_chunk(2, 1)]
    np.testing.assert_array_equal(a.histogram(5).hist.numpy(), t.histogram(5).hist.numpy())
    assert not a.is_inference() and not a.is_neg() and not a.is_shared() and a.share_memory_() is a
    assert a.new_empty_strided((2, 2), (2, 1)).shape == (2, 2)
    d = av.tensor(x[:, :3])
    d.detach_()
    np.testing.assert_array_equal(d.numpy(), x[:, :3])


def test_convert_conv_weight_memory_format_returns_the_module():
    m = nn.Sequential(nn.Conv2d(2, 3, 3))
    assert nn.utils.convert_conv2d_weight_memory_format(m, av.channels_last) is m
    assert nn.utils.convert_conv3d_weight_memory_format(m, av.channels_last_3d) is m
