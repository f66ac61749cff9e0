"""Issue 16's whole GPU table in one process: training steps, kernels, first call, layout.

    python benchmarks/gpu_bench.py [--out results.json] [--only SECTION,...]   # on an H100/H200
    python benchmarks/gpu_bench.py --dry-run        # on the CPU, tiny shapes in the interpreter

Every row: Avalon's median ms, the baseline's median ms and baseline/avalon (above 1: Avalon is
faster), plus a rate where it means something. Sections, in the order they run: `steps` (LeNet
and VAE training steps vs torch eager and torch.compile default mode, and without the GPU policy's
fill/split rules), `gemm` (f16, bf16, tf32 vs cuBLAS), `conv` (3x3 vs cuDNN, NCHW and NHWC),
`attention` (fwd+bwd vs F.scaled_dot_product_attention), `pointwise` (fused bias+relu vs the card's
device-to-device copy bandwidth), `index` (index-check cost), `first_call` (cold and warm disk
cache, in subprocesses), `big_steps` (GPT and ResNet-18 steps, as `steps`: the longest, so near the
end), `layout` (channels-last vs NCHW ResNet step), `remat` (GPT's step with and without `fuse`'s
recomputation), `scatter` (an embedding gradient and a graph attention's edge softmax: the atomics),
`vmap` (per-example gradients of an MLP and a CNN vs torch.func.vmap(grad)).
`--out` is rewritten after every section.
`--dry-run` runs every section with tiny shapes and 1 rep so a typo never costs GPU time
(tests/test_gpu_bench.py runs it); its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import kernel_profile  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import avalon as av  # noqa: E402
from avalon import optim, zoo  # noqa: E402

# like for like: float32 matmuls on TF32 tensor cores on both sides (torch's default, "highest", would
# run torch's in full float32 while Avalon's ran TF32: a flattering comparison); convolutions are TF32
# on both sides by default (cuDNN's allow_tf32, `av.backends.cudnn.allow_tf32`)
torch.set_float32_matmul_precision("high")
av.set_float32_matmul_precision("high")

DRY = False
DEV = "cuda"
ROWS: list[dict] = []
PROFILES: dict[str, list[dict]] = {}  # step -> its kernels by GPU time (kernel_profile.rows)
GPU = ""
LAYOUT_PIPELINE = "canonicalize,cse,dce,layout,fuse,memory-plan"


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, reps: int) -> float:
    for _ in range(0 if DRY else 3):
        fn()
    sync()
    ts = []
    for _ in range(1 if DRY else reps):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def bench_ms(fn) -> float:
    if DRY:
        return median_ms(fn, 1)
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median"))


def row(section: str, case: str, avalon_ms: float, base: str, base_ms: float, rate: str = "") -> None:
    r = {"section": section, "case": case, "avalon_ms": avalon_ms, "baseline": base, "baseline_ms": base_ms,
         "ratio": base_ms / avalon_ms if avalon_ms else float("nan"), "rate": rate}
    ROWS.append(r)
    print(f"{section:<10} {case:<34} {avalon_ms:>9.3f} {base:<16} {base_ms:>9.3f} {r['ratio']:>7.2f}  {rate}",
          flush=True)


# --- training steps ----------------------------------------------------------------------------------
def torch_resnet(widths, blocks, classes):
    T = torch.nn

    class Block(T.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = T.Conv2d(cin, cout, 3, stride, 1, bias=False), T.BatchNorm2d(cout)
            self.c2, self.b2 = T.Conv2d(cout, cout, 3, 1, 1, bias=False), T.BatchNorm2d(cout)
            self.sc = (T.Sequential(T.Conv2d(cin, cout, 1, stride, bias=False), T.BatchNorm2d(cout))
                       if stride != 1 or cin != cout else T.Sequential())

        def forward(self, x):
            return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + self.sc(x))

    layers, cin = [T.Conv2d(3, widths[0], 3, 1, 1, bias=False), T.BatchNorm2d(widths[0]), T.ReLU()], widths[0]
    for i, w in enumerate(widths):
        for j in range(blocks):
            layers.append(Block(cin, w, 2 if i > 0 and j == 0 else 1))
            cin = w
    return T.Sequential(*layers, T.AdaptiveAvgPool2d(1), T.Flatten(), T.Linear(cin, classes))


class TorchGPT(torch.nn.Module):
    """GPT-2-shaped (pre-norm blocks, GELU, causal): the same sizes as zoo.GPT, torch's own layers."""

    def __init__(self, cfg):
        super().__init__()
        T = torch.nn
        self.tok, self.pos = T.Embedding(cfg.vocab_size, cfg.n_embd), T.Embedding(cfg.block_size, cfg.n_embd)
        layer = T.TransformerEncoderLayer(cfg.n_embd, cfg.n_head, 4 * cfg.n_embd, 0.0, "gelu", batch_first=True,
                                          norm_first=True)
        self.h = T.TransformerEncoder(layer, cfg.n_layer, enable_nested_tensor=False)
        self.ln, self.head = T.LayerNorm(cfg.n_embd), T.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def forward(self, idx, targets):
        t = idx.shape[1]
        mask = torch.nn.Transformer.generate_square_subsequent_mask(t, device=idx.device)
        x = self.h(self.tok(idx) + self.pos(torch.arange(t, device=idx.device)), mask=mask, is_causal=True)
        logits = self.head(self.ln(x))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def workloads():
    rng = np.random.default_rng(0)
    tiny = DRY
    b = 2 if tiny else None
    out = []
    x = rng.standard_normal((b or 64, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, b or 64)
    T = torch.nn
    tl = T.Sequential(T.Conv2d(1, 20, 5), T.ReLU(), T.MaxPool2d(2), T.Conv2d(20, 50, 5), T.ReLU(), T.MaxPool2d(2),
                      T.Flatten(), T.Linear(800, 500), T.ReLU(), T.Linear(500, 10), T.LogSoftmax(-1))
    out.append(("LeNet bs64", zoo.LeNet, lambda m, a, t: zoo.nll(m(a), t), [x, y], tl,
                lambda m, a, t: torch.nn.functional.nll_loss(m(a), t)))
    xv = rng.random((b or 128, 784)).astype(np.float32)

    def vae_loss(m, a):
        recon, mu, logvar = m(a)
        return zoo.vae_loss(recon, a, mu, logvar)

    def tvae_loss(m, a):  # the VAE's shape without its noise: a dense MLP 784-400-20-400-784
        return torch.nn.functional.binary_cross_entropy(torch.sigmoid(m(a)), a, reduction="sum")
    tv = T.Sequential(T.Linear(784, 400), T.ReLU(), T.Linear(400, 20), T.Linear(20, 400), T.ReLU(), T.Linear(400, 784))
    out.append(("VAE bs128", zoo.VAE, vae_loss, [xv], tv, tvae_loss))
    cfg = zoo.GPTConfig(block_size=16, n_layer=1, n_embd=32) if tiny else zoo.GPTConfig(
        block_size=256, vocab_size=96, n_layer=6, n_head=6, n_embd=384)
    idx = rng.integers(0, cfg.vocab_size, (b or 32, cfg.block_size))
    tgt = rng.integers(0, cfg.vocab_size, (b or 32, cfg.block_size))
    out.append((f"GPT {cfg.n_layer}L d{cfg.n_embd} T{cfg.block_size}", lambda: zoo.GPT(cfg), zoo.gpt_loss,
                [idx, tgt], TorchGPT(cfg), lambda m, a, t: m(a, t)))
    widths, blocks, hw = ((8, 16), 1, 8) if tiny else ((64, 128, 256, 512), 2, 32)
    xr = rng.standard_normal((b or 128, 3, hw, hw)).astype(np.float32)
    yr = rng.integers(0, 10, b or 128)
    out.append(("ResNet-18 bs128 32x32" if not tiny else "ResNet tiny", lambda: zoo.ResNet(widths, blocks),
                lambda m, a, t: zoo.cross_entropy(m(a), t), [xr, yr], torch_resnet(widths, blocks, 10),
                lambda m, a, t: torch.nn.functional.cross_entropy(m(a), t)))
    return out


def avalon_step_ms(make, loss_fn, batch, pipeline: str | None = None, profile_as: str = "") -> tuple[float, float]:
    """(median step ms, first call s) of the compiled value-and-grad + SGD step; with `profile_as`,
    its kernels' GPU times and fractions of peak are kept under that name (`kernel_profile`)."""
    av.manual_seed(0)
    model = make()
    av.to_device(model, DEV)
    opt = optim.SGD(model, lr=1e-5)

    def step(m, o, *xs):
        loss, grads = av.value_and_grad(loss_fn)(m, *xs)
        o.step(grads)
        return loss

    kw = {"pipeline": pipeline} if pipeline else {}
    compiled = av.compile(step, backend="triton", **kw)
    xs = [av.tensor(a, device=DEV) for a in batch]
    t0 = time.perf_counter()
    float(compiled(model, opt, *xs))
    first = time.perf_counter() - t0
    ms = median_ms(lambda: compiled(model, opt, *xs), 30)
    if profile_as:
        PROFILES[profile_as] = kernel_profile.profile(compiled, lambda: compiled(model, opt, *xs), GPU, 1 if DRY else 5)
        print(f"  {profile_as}: kernels by GPU time\n{kernel_profile.table(PROFILES[profile_as])}", flush=True)
    return ms, first


def torch_step_ms(model, loss, batch, mode: str) -> float:
    model = model.to(DEV)
    opt = torch.optim.SGD(model.parameters(), lr=1e-5)
    tb = [torch.from_numpy(np.asarray(a)).to(DEV) for a in batch]
    fn = loss if mode == "eager" else torch.compile(loss)

    def step():
        opt.zero_grad(set_to_none=True)
        fn(model, *tb).backward()
        opt.step()
    return median_ms(step, 30)


def section_steps(which: slice = slice(0, 2)) -> None:
    """LeNet and the VAE (`steps`); GPT and ResNet-18 are `big_steps`, run last: their tuning and
    torch.compile take the longest, and a session's time limit should cut them, not the rest."""
    for j, (name, make, loss, batch, tmodel, tloss) in list(enumerate(workloads()))[which]:
        ms, first = avalon_step_ms(make, loss, batch, profile_as=name)
        row("steps", name, ms, "torch eager", torch_step_ms(tmodel, tloss, batch, "eager"), f"first call {first:.2f} s")
        if not DRY:  # torch.compile on the CPU needs a C compiler and minutes; the GPU run has both
            row("steps", name, ms, "torch.compile", torch_step_ms(tmodel, tloss, batch, "compile"))
        if j < 2:  # LeNet and the VAE, whose kernels the policy alone sizes: does filling the card pay?
            with _policy(split_programs=0):
                plain, _ = avalon_step_ms(make, loss, batch)
            row("steps", f"  {name}: fill/split policy", ms, "without it", plain)


@contextlib.contextmanager
def _policy(**fields):
    """Compile with the GPU BlockPolicy's `fields` replaced (split_programs=0: no tile shrinking and
    no splits, the policy before it filled the card), for an A/B in one process."""
    from avalon.codegen.triton.blocks import BlockPolicy
    orig = BlockPolicy.__dict__["for_device"]
    BlockPolicy.for_device = staticmethod(lambda interpret: orig.__func__(interpret).replace(**fields))
    try:
        yield
    finally:
        BlockPolicy.for_device = orig


# --- kernels -----------------------------------------------------------------------------------------
def compiled_fn(fn, *args):
    c = av.compile(fn, backend="triton")
    ts = [av.tensor(a, device=DEV) for a in args]
    return lambda: c(*ts)


def section_gemm() -> None:
    n = 64 if DRY else 4096
    for name, dtype in (("f16", np.float16), ("bf16", "bf16"), ("tf32", np.float32)):
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
        ta, tb = (torch.from_numpy(x).to(DEV) for x in (a, b))
        if dtype == "bf16":
            ta, tb = ta.bfloat16(), tb.bfloat16()
            a, b = av.tensor(a).astype("bf16"), av.tensor(b).astype("bf16")
        elif dtype == np.float16:
            a, b, ta, tb = a.astype(np.float16), b.astype(np.float16), ta.half(), tb.half()
        ms = bench_ms(compiled_fn(lambda x, y: x @ y, a, b))
        base = bench_ms(lambda: ta @ tb)  # noqa: B023
        row("gemm", f"{n}^3 {name}", ms, "cuBLAS", base, f"{2 * n ** 3 / ms / 1e9:.0f} TFLOP/s")


def section_conv() -> None:
    nb, c, hw = (2, 8, 8) if DRY else (64, 64, 56)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((nb, c, hw, hw)).astype(np.float32), rng.standard_normal((c, c, 3, 3)).astype(np.float32)
    ms = bench_ms(compiled_fn(lambda a, k: av.ops.relu(av.nn.functional.conv2d(a, k, padding=1)), x, w))
    tx, tw = torch.from_numpy(x).to(DEV), torch.from_numpy(w).to(DEV)
    base = bench_ms(lambda: torch.relu(torch.nn.functional.conv2d(tx, tw, padding=1)))
    row("conv", f"3x3 {c}->{c} {hw}x{hw} bs{nb} +relu", ms, "cuDNN", base,
        f"{2 * nb * c * c * 9 * hw * hw / ms / 1e9:.1f} TFLOP/s")
    # the kernel the `layout` pass makes: image and result NHWC, taps channel-first (16-byte loads)
    nhwc = _nhwc_conv(nb, c, hw)
    cx, cw = tx.to(memory_format=torch.channels_last), tw.to(memory_format=torch.channels_last)
    ms = bench_ms(lambda: nhwc(cx, tw))
    base = bench_ms(lambda: torch.relu(torch.nn.functional.conv2d(cx, cw, padding=1)))
    row("conv", "  same, channels-last (NHWC)", ms, "cuDNN NHWC", base,
        f"{2 * nb * c * c * 9 * hw * hw / ms / 1e9:.1f} TFLOP/s")


def _nhwc_conv(nb: int, c: int, hw: int):
    """conv + relu as one kernel with NHWC image and result types, as the layout pass leaves them."""
    from avalon.codegen.triton import compile_graph
    from avalon.codegen.triton.testing import fuse
    from avalon.ir import Builder, Graph, TensorType
    g = Graph("conv_nhwc")
    b = Builder(g)
    x = g.add_input(TensorType((nb, c, hw, hw), "f32", layout=(0, 2, 3, 1)), "x")
    w = g.add_input(TensorType((c, c, 3, 3), "f32"), "w")
    y = b("conv2d", x, w, stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1)
    r = b("relu", y)
    for v in (y, r):
        v.type = v.type.with_layout([0, 2, 3, 1])
    g.set_outputs([r])
    cg = compile_graph(fuse(g, "fused_conv2d_relu_nhwc"), device=DEV)
    return lambda a, k: cg(a, k)


def section_attention() -> None:
    from avalon.nn.attention import scaled_dot_product_attention as sdpa
    b, h, n, e = (1, 2, 32, 16) if DRY else (8, 16, 1024, 64)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((b, h, n, e)).astype(np.float16 if not DRY else np.float32) for _ in range(3))

    def loss(q, k, v):
        return av.ops.sum(sdpa(q, k, v, is_causal=True))

    ms = bench_ms(compiled_fn(av.value_and_grad(loss, argnums=(0, 1, 2)), q, k, v))
    tq, tk, tv = (torch.from_numpy(a).to(DEV).requires_grad_() for a in (q, k, v))

    def ref():
        torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True).sum().backward()
    row("attention", f"causal fwd+bwd B{b} H{h} L{n} E{e}", ms, "torch SDPA", bench_ms(ref))


def section_pointwise() -> None:
    n = 1 << (10 if DRY else 24)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n // 1024, 1024)).astype(np.float32)
    bias = rng.standard_normal(1024).astype(np.float32)
    ms = bench_ms(compiled_fn(lambda a, c: av.ops.relu(a + c), x, bias))
    src = torch.empty(n, device=DEV)
    dst = torch.empty_like(src)
    copy = bench_ms(lambda: dst.copy_(src))
    gbs = 2 * n * 4 / ms / 1e6
    row("pointwise", f"bias+relu {n / 2 ** 20:g}M f32", ms, "d2d copy", copy,
        f"{gbs:.0f} GB/s = {gbs / (2 * n * 4 / copy / 1e6):.2f} of copy")


def section_index() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import index_check_cost as icc
    reps, batch = (1, 2) if DRY else (50, 64)
    on, off = icc._time_steps(True, reps, batch), icc._time_steps(False, reps, batch)
    row("index", f"LeNet step bs{batch} checks on/off", on * 1e3, "no checks", off * 1e3, "budget: ratio >= 0.98")


FIRST = ("import sys, time; sys.path.insert(0, sys.argv[1]); import gpu_bench as g; g.DRY = sys.argv[2] == '1';"
         "g.DEV = sys.argv[3]; n, make, loss, batch, *_ = g.workloads()[0];"
         "print(g.avalon_step_ms(make, loss, batch)[1])")


def section_first_call() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "AVALON_CACHE_DIR": os.path.join(tmp, "av"), "TRITON_CACHE_DIR": os.path.join(tmp, "tr"),
               "PYTHONPATH": ROOT}
        cmd = [sys.executable, "-c", FIRST, os.path.dirname(os.path.abspath(__file__)), "1" if DRY else "0", DEV]
        got = []
        for _ in range(1 if DRY else 2):  # cold, then warm (the same disk caches)
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                raise RuntimeError(p.stderr[-2000:])
            got.append(float(p.stdout.strip().splitlines()[-1]))
    row("first_call", "LeNet step, cold disk cache (s)", got[0] * 1e3, "target 3 s", 3000.0)
    if len(got) > 1:
        row("first_call", "LeNet step, warm disk cache (s)", got[1] * 1e3, "target 0.5 s", 500.0)
    if not DRY:  # the A/B of precompile.py: cold again, compiling in this one process
        with tempfile.TemporaryDirectory() as tmp:
            env.update(AVALON_CACHE_DIR=os.path.join(tmp, "av"), TRITON_CACHE_DIR=os.path.join(tmp, "tr"),
                       AVALON_COMPILE_WORKERS="1")
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            if p.returncode == 0:
                one = float(p.stdout.strip().splitlines()[-1])
                row("first_call", "LeNet step, cold, forked compiles vs one process (s)", got[0] * 1e3,
                    "AVALON_COMPILE_WORKERS=1", one * 1e3)


def section_layout() -> None:
    from avalon.codegen.triton.layout_policy import channels_last_decision
    _, make, loss, batch, *_ = workloads()[3]
    nchw, _ = avalon_step_ms(make, loss, batch)
    nhwc, _ = avalon_step_ms(make, loss, batch, pipeline=LAYOUT_PIPELINE)
    use, why = channels_last_decision("resnet")
    row("layout", "ResNet step channels-last vs NCHW", nhwc, "NCHW (default)", nchw, f"policy: {use} ({why})")


def section_big_steps() -> None:
    section_steps(slice(2, 4))


def section_remat() -> None:
    """GPT's step with `fuse` recomputing cheap intermediates in their readers (the default) vs
    storing them (`fuse{remat=false}`): the A/B of `passes/remat.py`."""
    _, make, loss, batch, *_ = workloads()[2]
    on, _ = avalon_step_ms(make, loss, batch)
    off, _ = avalon_step_ms(make, loss, batch, pipeline="canonicalize,cse,dce,fuse{remat=false},memory-plan")
    row("remat", "GPT step: recompute vs store", on, "store (remat off)", off, "keep remat: ratio > 1")


def section_scatter() -> None:
    """The scatter primitives' atomics (gpu_notes item 11): an embedding gradient of GPT-2's size
    (`take`'s gradient, one `index_add`) and a graph attention's edge softmax (scatter_reduce amax,
    `index_max`; then `index_add` sums), each against the same torch code."""
    vocab, dim, tokens = (50, 8, 64) if DRY else (50257, 768, 8192)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((vocab, dim)).astype(np.float32)
    idx = rng.integers(0, vocab, tokens)
    r = rng.standard_normal((tokens, dim)).astype(np.float32)
    ms = bench_ms(compiled_fn(av.grad(lambda w, i, r: av.ops.sum(av.nn.functional.embedding(i, w) * r)), w, idx, r))
    tw = torch.from_numpy(w).to(DEV).requires_grad_()
    ti, tr = torch.from_numpy(idx).to(DEV), torch.from_numpy(r).to(DEV)

    def ref():
        (torch.nn.functional.embedding(ti, tw) * tr).sum().backward()
    row("scatter", f"embedding grad V{vocab} D{dim} T{tokens}", ms, "torch", bench_ms(ref))
    nodes, edges, heads = (40, 200, 2) if DRY else (100_000, 1_000_000, 8)
    e = rng.standard_normal((edges, heads)).astype(np.float32)
    dst = rng.integers(0, nodes, edges)

    def edge_softmax(lib, e, dst):
        at = dst[:, None].expand(-1, e.shape[1])
        m = lib.zeros(nodes, e.shape[1], device=e.device).scatter_reduce(0, at, e, "amax", include_self=False)
        p = lib.exp(e - m[dst])
        return p / lib.zeros(nodes, e.shape[1], device=e.device).index_add(0, dst, p)[dst]
    ms = bench_ms(compiled_fn(lambda e, d: edge_softmax(av, e, d), e, dst))
    te, td = torch.from_numpy(e).to(DEV), torch.from_numpy(dst).to(DEV)
    base = bench_ms(lambda: edge_softmax(torch, te, td))
    row("scatter", f"edge softmax E{edges} N{nodes} H{heads}", ms, "torch", base)



def section_vmap() -> None:
    """Per-example gradients (gpu_notes item 13): `av.vmap(av.grad(loss))` of the DP-SGD tutorials'
    MLP (batch 64) and CNN (batch 32; each weight gradient one grouped `conv2d_grad_weight`) against
    `torch.func.vmap(grad(...))` of the same model and weights. The models are vmap_bench's."""
    import vmap_bench
    rng = np.random.default_rng(0)
    for name, (make, batch) in vmap_bench.MODELS.items():
        if DRY and name != "mlp":
            continue  # (the dry run checks the script: one model does, the CNN is seconds in the interpreter)
        _vmap_row(name, make, 2 if DRY else batch, rng)


def _vmap_row(name: str, make, batch: int, rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    theirs = make(torch.nn).to(DEV)
    ours = make(av.nn)
    av.nn.load_state_dict(ours, {k: v.cpu() for k, v in theirs.state_dict().items()})
    av.to_device(ours, DEV)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    params = {k: v.detach() for k, v in theirs.named_parameters()}

    def tloss(p, x, y):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(theirs, p, (x[None],)), y[None])

    def loss(m, x, y):
        return av.nn.functional.cross_entropy(m(x[None]), y[None])
    per = av.vmap(av.grad(loss), in_dims=(None, 0, 0))
    step = av.compile(lambda m, x, y: per(m, x, y), backend="triton")
    ax, ay = av.tensor(x, device=DEV), av.tensor(y, device=DEV)
    tper = torch.func.vmap(torch.func.grad(tloss), in_dims=(None, 0, 0))
    tx, ty = torch.from_numpy(x).to(DEV), torch.from_numpy(y).to(DEV)
    got, want = step(ours, ax, ay), tper(params, tx, ty)
    for k, w in want.items():  # TF32 on the card: 1e-2 of the largest entry
        w = w.cpu().numpy()
        err = np.abs(got[k].numpy() - w).max() / max(np.abs(w).max(), 1e-12)
        assert err < 1e-2, (name, k, err)
    row("vmap", f"per-example grads {name} bs{batch}", bench_ms(lambda: step(ours, ax, ay)),
        "torch.func", bench_ms(lambda: tper(params, tx, ty)))


SECTIONS = {"steps": section_steps, "gemm": section_gemm, "conv": section_conv, "attention": section_attention,
            "pointwise": section_pointwise, "index": section_index, "first_call": section_first_call,
            "big_steps": section_big_steps, "layout": section_layout, "remat": section_remat,
            "scatter": section_scatter, "vmap": section_vmap}


def _write(path: str, payload: dict) -> None:
    """Atomically, after every section: a run cut short by its time limit keeps what it measured."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def main() -> None:
    global DRY, DEV, GPU
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (Triton's interpreter)")
    ap.add_argument("--only", default=",".join(SECTIONS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    DRY = args.dry_run
    DEV = "cpu" if DRY else "cuda"
    name = GPU = torch.cuda.get_device_name() if torch.cuda.is_available() and not DRY else "cpu (dry run)"
    print(f"GPU: {name}; torch {torch.__version__}; ratio = baseline ms / avalon ms (above 1: Avalon faster)")
    print(f"{'section':<10} {'case':<34} {'avalon ms':>9} {'baseline':<16} {'base ms':>9} {'ratio':>7}  rate")
    failed = []
    for s in args.only.split(","):
        try:
            SECTIONS[s]()
        except Exception as e:  # one broken section must not lose the rest of a GPU session
            failed.append(s)
            print(f"{s:<10} FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
        if args.out:
            _write(args.out, {"gpu": name, "rows": ROWS, "profile": PROFILES, "failed": failed})
    if failed:
        sys.exit(f"sections failed: {failed}")


if __name__ == "__main__":
    main()
