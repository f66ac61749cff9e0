"""Split kernels, for GPUs that few programs would leave idle. Split-K contractions: a GEMM with few
output tiles and a long K (LeNet's conv1 weight gradient is one 32x32 tile over 36,864 K steps)
runs its K in chunks on grid axis 2, partial tiles in a float32 workspace, and an epilogue function
sums them in a fixed order and runs the group's other ops. Split reductions: few long rows (conv1's
bias gradient, 20 rows of 36,864) the same way. Checked against the numpy reference in the
interpreter with the splits forced by the policy."""
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import graph
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st
from test_triton_contraction import conv_out, convs

from avalon.codegen.triton import BlockPolicy, KernelCache, compile_graph
from avalon.codegen.triton.autotune import Tuner, candidates, config_of
from avalon.codegen.triton.cache import interpreting
from avalon.codegen.triton.standalone import standalone_source
from avalon.codegen.triton.testing import check, fuse, tolerance

# small tiles and a split whenever there are at least two K steps: several splits, a ragged last one
SPLIT = BlockPolicy.for_device(interpreting()).replace(mm_block=16, mm_k=16, split_programs=64, split_overhead=0)
GPU = BlockPolicy.for_device(False)

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def split_kernel(cg):
    ks = [ln.kernel for ln in cg.launches if ln.kernel.kind == "contraction"]
    assert len(ks) == 1
    k = ks[0]
    assert k.then is not None and k.then.kind == "contraction_epilogue", "the policy was meant to split K"
    return k


def test_gpu_policy_splits_lenets_conv1_weight_gradient_over_one_wave():
    """conv1's weight gradient (20 x 25 outputs, K = 64*24*24): one tile, 1152 K steps -> 64 splits of 18."""
    meta = GPU.contraction(20, 25, 36864)
    assert (meta["BM"], meta["BN"], meta["BK"]) == (32, 32, 32)
    assert meta["SPLIT_K"] == 64 and meta["KCHUNK"] == 576 and meta["SPLIT_K"] * meta["KCHUNK"] >= 36864
    # conv2's (50 x 500, K = 64*8*8): 64x128 tiles would be 4 programs; 32x32 tiles make 32, and
    # 4 splits of 32 K steps a wave
    conv2 = GPU.contraction(50, 500, 4096)
    assert (conv2["BM"], conv2["BN"], conv2["SPLIT_K"], conv2["KCHUNK"]) == (32, 32, 4, 1024)
    # ResNet-18's first weight gradients (64 x 576, K = 128*32*32): 36 tiles x 4096 K steps -> 11
    # splits, three full waves of the 132 SMs
    assert GPU.splits(36, 4096) == 11 and GPU.contraction(64, 576, 131072)["SPLIT_K"] == 11
    assert GPU.splits(1024, 18) == 1 and GPU.splits(52, 25) == 1  # a full card; a split saving too little


@pytest.mark.parametrize("m,n,k", [(4096, 4096, 4096), (64, 500, 64), (1, 1, 1), (128, 128, 200)])
def test_gpu_policy_keeps_k_whole_where_tiles_fill_the_gpu_or_k_is_short(m, n, k):
    assert "SPLIT_K" not in GPU.contraction(m, n, k)


def test_interpreter_policy_never_splits():
    assert "SPLIT_K" not in BlockPolicy.for_device(True).contraction(20, 25, 36864)


@pytest.mark.parametrize("m,k,n", [(20, 300, 24), (5, 97, 3), (33, 64, 17)])
def test_matmul_bias_relu_epilogue_runs_after_the_split_sum(m, k, n):
    g, b, (x, w, bias) = graph(((m, k), "f32"), ((n, k), "f32"), ((n,), "f32"))
    y = b("matmul", x, b("transpose", w, perm=[1, 0]))
    g.set_outputs([b("relu", b("add", y, b("broadcast", bias, shape=[m, n])))])
    cg = check(g, blocks=SPLIT, kind="contraction")
    k_ = split_kernel(cg)
    assert len(k_.grid) == 3 and k_.grid[2] == k_.meta["SPLIT_K"] > 1
    src = cg.kernels["fused_0"]
    assert src.count("@triton.jit") == 2 and "def fused_0_epilogue(" in src
    assert src.count("tl.dot(") == 1 and src.count("tl.store(out0") == 1  # the epilogue stores the output once


def test_batched_matmul_splits_each_group():
    g, b, (x, y) = graph(((3, 6, 80), "f32"), ((3, 80, 5), "f32"))
    z = b("matmul", x, y)
    g.set_outputs([b("tanh", z), z])
    cg = check(g, blocks=SPLIT, kind="contraction")
    k_ = split_kernel(cg)
    assert k_.grid[1] == 3 and k_.workspace == k_.meta["SPLIT_K"] * 3 * 6 * 5


@pytest.mark.parametrize("dtype,tol", [("f16", 2e-3), ("f64", 1e-12)])
def test_split_sums_in_the_accumulator_dtype(dtype, tol, rng):
    g, b, (x, y) = graph(((9, 70), dtype), ((70, 11), dtype))
    g.set_outputs([b("matmul", x, y)])
    cg = check(g, blocks=SPLIT, rtol=tol, atol=tol, rng=rng, kind="contraction")
    k_ = split_kernel(cg)
    assert dict(k_.params)["ws"].name == ("f64" if dtype == "f64" else "f32")


def test_integer_contractions_keep_k_whole(rng):
    g, b, (x, y) = graph(((9, 70), "i32"), ((70, 11), "i32"))
    g.set_outputs([b("matmul", x, y)])
    cg = check(g, blocks=SPLIT, rtol=0, atol=0, rng=rng)
    assert all(ln.kernel.then is None and "SPLIT_K" not in ln.kernel.meta for ln in cg.launches)


@settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(convs(), st.integers(0, 2**16))
# two wide groups (a tl.dot per group, grid axis 1) over 7 K steps, strided and padded
@example(case=((2, 4, 9, 9), (4, 2, 3, 3), dict(stride=[1, 2], padding=[1, 0], dilation=[1, 1], groups=2)), seed=3)
def test_conv2d_weight_gradient_and_sgd_update(case, seed):
    """The training-step shape of the group: w - lr * conv2d_grad_weight(x, dy), split over K = (n, oh, ow)."""
    xs, ws, attrs = case
    g, b, (x, dy, w) = graph((xs, "f32"), (conv_out(xs, ws, attrs), "f32"), (ws, "f32"))
    gw = b("conv2d_grad_weight", x, dy, weight_shape=list(ws), **attrs)
    lr = b("broadcast", b("constant", value=0.1, shape=[], dtype="f32"), shape=list(ws))
    g.set_outputs([b("sub", w, b("mul", lr, gw))])
    cg = check(g, blocks=SPLIT, kind="contraction", rng=np.random.default_rng(seed))
    k_ = next(ln.kernel for ln in cg.launches if ln.kernel.kind == "contraction")
    if "m" in k_.problem and -(-k_.problem["k"] // 16) >= 2:  # a tl.dot GEMM (not folded) of 2+ K steps
        assert k_.then is not None and k_.grid[2] > 1


def test_standalone_file_runs_both_functions(tmp_path):
    g, b, (x, y) = graph(((8, 96), "f32"), ((96, 8), "f32"))
    g.set_outputs([b("matmul", x, y)])
    cg = compile_graph(fuse(g), blocks=SPLIT)
    ln = next(ln for ln in cg.launches if ln.kernel.kind == "contraction")
    assert ln.kernel.then is not None
    path = tmp_path / "k.py"
    path.write_text(standalone_source(ln))
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    # the file's inputs, as it draws them (seed 0, in parameter order; its ws starts random too, so
    # a sum that read stale partials would miss the product's statistics)
    import torch
    torch.manual_seed(0)
    a, w = torch.randn(8, 96), torch.randn(96, 8)
    want = (a.double() @ w.double())
    (line,) = [ln for ln in run.stdout.splitlines() if ln.startswith("out0:")]
    mean, biggest = float(line.split("mean ")[1].split()[0]), float(line.split("max |x| ")[1])
    assert abs(mean - float(want.mean())) < 1e-4 * float(want.abs().max())
    assert abs(biggest - float(want.abs().max())) < 1e-4 * biggest


class PickTimer:
    """The tuner's timer, faked: `want(config)` says which candidate is fastest."""

    def __init__(self, want):
        self.want = want
        self.labels: list[str] = []

    def __call__(self, k, make_args) -> float:
        make_args()  # the argument maker sizes the workspace parameter too
        self.labels.append(config_of(k).label)
        return 0.1 if self.want(config_of(k)) else 1.0


def test_tuner_offers_split_candidates_and_the_chosen_split_computes_the_product(tmp_path, rng):
    """A tall-K GEMM: the candidates carry the GPU policy's split for their tiles; a split winner is
    built with its epilogue and gives the reference's result."""
    g, b, (x, y) = graph(((16, 4096), "f32"), ((4096, 16), "f32"))
    g.set_outputs([b("matmul", x, y)])
    g = fuse(g)
    cache = KernelCache(tmp_path)
    k0 = next(ln.kernel for ln in compile_graph(g, cache=cache).launches)
    splits = [c for c in candidates(k0) if "SPLIT_K" in c.blocks]
    assert splits, [c.label for c in candidates(k0)]
    pick = splits[0]
    timer = PickTimer(lambda c: c == pick)
    cg = compile_graph(g, cache=cache, tuner=Tuner(timer, force=True, device="test-gpu"))
    k = next(ln.kernel for ln in cg.launches)
    assert config_of(k) == pick and k.then is not None
    assert cg.tuning[k.name]["config"] == pick.label
    xs = [rng.standard_normal(v.shape).astype(np.float32) for v in g.inputs]
    got = cg(*xs)[0].numpy()
    want = xs[0].astype(np.float64) @ xs[1].astype(np.float64)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < (1e-5 if interpreting() else 1e-2)  # GPU: tf32


def test_a_split_policy_config_is_timed_against_its_tiles_unsplit():
    """When the policy itself splits, the same tiles without the split are a candidate: a split is
    kept only where it measures faster."""
    from avalon.codegen.triton.autotune import contraction_candidates
    from avalon.codegen.triton.kernel import Kernel
    meta = GPU.contraction(20, 25, 36864)
    k = Kernel("k", "contraction", "", [], meta, (1, 1, meta["SPLIT_K"]), 4, 3,
               problem={"m": 20, "n": 25, "k": 36864, "groups": 1})
    cands = contraction_candidates(k)
    assert cands[0].blocks == {b: v for b, v in meta.items() if b not in ("SPLIT_K", "KCHUNK")}
    assert sum("SPLIT_K" in c.blocks for c in cands) >= 4


def test_lenet_training_step_with_split_weight_gradients_matches_the_reference():
    """LeNet's whole step (forward, backward, SGD) as the Triton backend lowers it, with the split
    that the conv weight gradients get on a GPU forced at interpreter-sized tiles."""
    import avalon as av
    from avalon import optim, zoo
    model = zoo.LeNet()
    opt = optim.SGD(model, lr=0.1)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    y = np.arange(4) % 10

    def step(model, opt, x, y):
        loss, grads = av.value_and_grad(lambda m, x, y: zoo.cross_entropy(m(x), y))(model, x, y)
        opt.step(grads)
        return loss

    g = av.compile(step, backend="triton").inspect(model, opt, x, y).graph
    blocks = SPLIT.replace(mm_block=32, mm_k=32, split_programs=64, split_overhead=1, persistent_r=256,
                           rblock=256, reduction_elems=256)
    # random weights in [-2, 2) make weight gradients of ~1e3 summed over 2,304 terms: float32
    # rounding (split or not) moves the updated weights by ~1e-3
    rtol, atol = (1e-4, 2e-3) if interpreting() else tolerance("contraction")  # a GPU's dots are tf32
    cg = check(g, fused=None, blocks=blocks, rtol=rtol, atol=atol, rng=np.random.default_rng(1))
    split = [ln.kernel.name for ln in cg.launches if ln.kernel.then is not None]
    assert any("conv2d_grad_weight" in n for n in split), split
    assert any(ln.kernel.kind == "reduction" and ln.kernel.then is not None for ln in cg.launches), split


# --- split reductions -------------------------------------------------------------------------------
SPLIT_R = BlockPolicy.for_device(interpreting()).replace(rblock=16, persistent_r=16, reduction_elems=64,
                                                         split_programs=64, split_overhead=0)


def test_gpu_policy_gives_few_long_rows_programs_then_splits():
    """Few long rows first get a program each (LeNet's conv1 bias gradient: 20 rows of 36,864 were
    5 programs x 36 steps, now 20 x 9 of 4096, which a split would not beat); one long row (a
    loss over 1M elements) splits 64 ways."""
    meta = GPU.reduction(20, 36864)
    assert (meta["XBLOCK"], meta["RBLOCK"]) == (1, 4096) and "SPLIT_R" not in meta
    total = GPU.reduction(1, 1 << 20)
    assert total["SPLIT_R"] == 64 and total["RCHUNK"] * 64 == 1 << 20
    for x, r in [(64, 10), (4096, 8192), (20, 4096), (1000, 36864)]:  # persistent rows, or rows enough
        assert "SPLIT_R" not in GPU.reduction(x, r), (x, r)


def test_bias_gradient_group_splits_and_keeps_its_per_element_output(rng):
    """sum and max over (n, h, w), the masked gradient stored per element on the way, and an SGD
    update after the sum: one pass of partials, then the update from their ordered sum."""
    g, b, (dy, mask, bias) = graph(((4, 3, 7, 9), "f32"), ((4, 3, 7, 9), "f32"), ((3,), "f32"))
    d = b("mul", dy, mask)
    g.set_outputs([d, b("sub", bias, b("sum", d, axes=[0, 2, 3], keepdims=False)),
                   b("max", dy, axes=[0, 2, 3], keepdims=True)])
    cg = check(g, blocks=SPLIT_R, kind="reduction", rng=rng)
    k = next(ln.kernel for ln in cg.launches)
    assert k.then is not None and k.grid[1] == k.meta["SPLIT_R"] > 1
    assert k.workspace == (k.meta["SPLIT_R"] + 1) * 2 * 3  # partials, then the combined values


def test_split_max_propagates_nan_from_any_chunk(rng):
    g, b, (x,) = graph(((3, 300), "f32"))
    g.set_outputs([b("max", x, axes=[1], keepdims=False)])
    xs = rng.standard_normal((3, 300)).astype(np.float32)
    xs[1, 250] = np.nan  # in the last chunks, not the first
    cg = check(g, [xs], blocks=SPLIT_R, kind="reduction")
    assert next(ln.kernel for ln in cg.launches).then is not None
    got = cg(xs)[0].numpy()
    assert np.isnan(got[1]) and not np.isnan(got[[0, 2]]).any()


def test_batchnorm_statistics_split_pass_by_pass(rng):
    """BatchNorm's forward over (n, h, w): the mean, then the variance reading it, then the
    normalized output reading both: a partial and a combining function per pass, then one pass
    over the chunks for the per-element output, each reading the combined values back."""
    g, b, (x,) = graph(((4, 3, 7, 9), "f32"))
    shape = [4, 3, 7, 9]

    def per_channel(v):
        return b("broadcast", b("reshape", v, shape=[1, 3, 1, 1]), shape=shape)
    mean = b("div", b("sum", x, axes=[0, 2, 3], keepdims=False), b("constant", value=252.0, shape=[3], dtype="f32"))
    d = b("sub", x, per_channel(mean))
    var = b("div", b("sum", b("mul", d, d), axes=[0, 2, 3], keepdims=False),
            b("constant", value=252.0, shape=[3], dtype="f32"))
    rstd = b("rsqrt", b("add", var, b("constant", value=1e-5, shape=[3], dtype="f32")))
    g.set_outputs([b("mul", d, per_channel(rstd)), mean, rstd])
    cg = check(g, blocks=SPLIT_R, kind="reduction", rng=rng)
    chain = next(ln.kernel for ln in cg.launches).chain()
    assert [p.name for p in chain] == ["fused_0", "fused_0_combine0", "fused_0_pass1", "fused_0_combine1",
                                       "fused_0_full"]
    assert [len(p.grid) for p in chain] == [2, 1, 2, 1, 2]  # chunks, rows, chunks, rows, chunks


def test_softmax_splits_into_its_three_passes(rng):
    g, b, (x,) = graph(((3, 300), "f32"))
    e = b("exp", b("sub", x, b("broadcast", b("max", x, axes=[1], keepdims=True), shape=[3, 300])))
    g.set_outputs([b("div", e, b("broadcast", b("sum", e, axes=[1], keepdims=True), shape=[3, 300]))])
    cg = check(g, blocks=SPLIT_R, kind="reduction", rng=rng)
    assert len(next(ln.kernel for ln in cg.launches).chain()) == 5


@pytest.mark.parametrize("case", ["argmax", "int_sum"])
def test_groups_a_split_cannot_do_stay_whole(case, rng):
    """argmax tracks indices; integer sums are left alone."""
    if case == "argmax":
        g, b, (x,) = graph(((3, 300), "f32"))
        g.set_outputs([b("argmax", x, axis=1)])
    else:
        g, b, (x,) = graph(((3, 300), "i32"))
        g.set_outputs([b("sum", x, axes=[1], keepdims=False)])
    cg = check(g, blocks=SPLIT_R, kind="reduction", rng=rng, rtol=1e-5, atol=1e-5)
    assert all(ln.kernel.then is None and "SPLIT_R" not in ln.kernel.meta for ln in cg.launches)


@pytest.mark.parametrize("pipeline", [None, "canonicalize,cse,dce,layout,fuse,memory-plan"],
                         ids=["nchw", "channels_last"])
def test_resnet_training_step_with_every_split_form_matches_the_reference(pipeline):
    """A small ResNet's whole step (convs, BatchNorm, downsampling, SGD) with the splits a GPU gets
    forced at interpreter-sized blocks: split-K weight gradients, BatchNorm's statistics split pass
    by pass, and stride-phase input gradients, all against the reference; also with the `layout`
    pass's NHWC activations (taps channel-first), as gpu_bench's layout row compiles it."""
    import avalon as av
    from avalon import optim, zoo
    model = zoo.ResNet((8, 16), 1)
    opt = optim.SGD(model, lr=0.1)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)

    def step(model, opt, x, y):
        loss, grads = av.value_and_grad(lambda m, x, y: zoo.cross_entropy(m(x), y))(model, x, y)
        opt.step(grads)
        return loss

    kw = {"pipeline": pipeline} if pipeline else {}
    g = av.compile(step, backend="triton", **kw).inspect(model, opt, x, np.arange(2)).graph
    assert any(r.type.layout == (0, 2, 3, 1) for op in g.ops for r in op.results) == bool(pipeline)
    blocks = SPLIT.replace(mm_block=32, mm_k=32, persistent_r=32, rblock=32, reduction_elems=64)
    rtol, atol = (1e-4, 1e-4) if interpreting() else tolerance("contraction")
    cg = check(g, fused=None, blocks=blocks, rtol=rtol, atol=atol, rng=np.random.default_rng(1))
    kinds = {p.kind for ln in cg.launches for p in ln.kernel.chain()}
    assert {"contraction_epilogue", "reduction_epilogue", "reduction_pass", "contraction_phase"} <= kinds, kinds


def test_gpt_training_step_with_split_weight_gradients_matches_the_reference():
    """A one-layer GPT's step (attention kernels, LayerNorm, the vocabulary loss) with every weight
    gradient's K (the tokens) split, against the reference."""
    import avalon as av
    from avalon import optim, zoo
    from avalon.codegen.triton.testing import random_inputs
    cfg = zoo.GPTConfig(block_size=16, vocab_size=32, n_layer=1, n_head=2, n_embd=32)
    model = zoo.GPT(cfg)
    opt = optim.SGD(model, lr=0.1)
    idx = np.random.default_rng(0).integers(0, 32, (2, 16))

    def step(model, opt, i, t):
        loss, grads = av.value_and_grad(zoo.gpt_loss)(model, i, t)
        opt.step(grads)
        return loss

    g = av.compile(step, backend="triton").inspect(model, opt, idx, idx).graph
    blocks = SPLIT.replace(persistent_r=16, rblock=16, reduction_elems=64)
    rtol, atol = (1e-4, 1e-4) if interpreting() else tolerance("contraction")
    cg = check(g, random_inputs(g, np.random.default_rng(1), int_high=16), fused=None, blocks=blocks, rtol=rtol,
               atol=atol)
    kinds = [p.kind for ln in cg.launches for p in ln.kernel.chain()]
    assert "attention" in kinds and "attention_bwd" in kinds and kinds.count("contraction_epilogue") >= 8
