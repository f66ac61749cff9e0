"""CPU training-step benchmark: Avalon's generated numpy code vs torch eager (and torch.compile /
jax.jit when installed), in one process, rounds interleaved, 2 threads, medians.

    OPENBLAS_CORETYPE= OPENBLAS_L2_SIZE= python benchmarks/cpu_step.py [--rounds 10] [--steps 5] [--threads 2]
                                                                      [--torch-compile] [--no-jax] [--check] [--native]
                                                                      [--models lenet,vae,gpt,resnet]

(unset both OpenBLAS variables for this command only: they pin an older kernel on some CPUs.)
Each round times `--steps` steps of every contender in turn (after one untimed step, which absorbs the
previous contender's still-spinning worker threads), so machine noise hits all alike; the
table reports the median step time (wall clock, and CPU time of the process, which a loaded machine
disturbs less) and its ratio to torch eager. `--threads` sets torch's threads and, through
threadpoolctl when installed, numpy's BLAS threads. It also reports the time to the first Avalon step
(trace + grad + passes + codegen + one run; the BLAS library already initialized by one small matmul)
and, with tracemalloc, the peak memory a steady Avalon LeNet step holds against the memory plan's
live-set bound plus the parameters.

Besides LeNet and the MLP VAE (SGD), two real-model steps: a small GPT (`zoo.GPT`: 2 layers, d=128,
4 heads, sequence 64, vocabulary 512, batch 8, AdamW) and a narrow ResNet-18 (`zoo.ResNet` with widths
16-32-64-128, two BasicBlocks per stage, 32x32 inputs, batch 16, batch norm in training mode, SGD with
momentum 0.9). Their torch twins (`TorchGPT`, `TorchResNet`: torch's own layers, `F.scaled_dot_product_attention`,
the tanh GELU, tied embeddings) take the same parameter names, so they start from the Avalon model's
initial weights, and the script checks both first-step losses agree (rtol 1e-4) before timing.

The jax.jit column appears when jax is importable (`pip install -e ".[bench]"`, CPU jaxlib is
enough). It runs the same models written in jax (NCHW/OIHW `lax.conv_general_dilated`, max pool
by `lax.reduce_window`, torch's BCE log clamp at -100), starting from the torch model's initial
weights, as one jitted step `(params, batch) -> (new params, loss)` doing value_and_grad + SGD at
the same learning rate, the parameters donated (`donate_argnums`, so XLA updates them in place),
every timed step waiting for its outputs (`block_until_ready`). The VAE's noise comes from a
jax.random key split inside the step (which takes the key and returns the next one). XLA has
no flag for its CPU thread count: its intra-op (Eigen) pool is sized by the environment variable
PJRT_NPROC, which the script sets to `--threads` before importing jax
(`intra_op_parallelism_threads` is a TensorFlow option, not an XLA flag: in XLA_FLAGS,
`--intra_op_parallelism_threads=N` aborts as unknown). "first jax step" is the cold first call
(trace + compile + one run; the backend already started). Before timing, the script checks the
jax step against torch on the same weights and batch: the first step's LeNet loss (rtol 1e-4)
and the VAE loss (its noise differs, so within a few percent); `--check` also compares losses and
gradients of both models with the VAE's noise set to zero (an extra jax compile).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
import tracemalloc
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from train_step import TorchVAE, torch_lenet, torch_vae_loss  # noqa: E402

import avalon as av  # noqa: E402
from avalon import nn, optim, zoo  # noqa: E402


def _avalon(make, loss_fn, batch, lr, backend="numpy", opt_fn=None, model=None):
    model = make() if model is None else model
    opt = optim.SGD(model, lr=lr) if opt_fn is None else opt_fn(model)

    def step(m, o, *xs):
        loss, grads = av.value_and_grad(loss_fn)(m, *xs)
        o.step(grads)
        return loss
    compiled = av.compile(step, backend=backend)
    t0 = time.perf_counter()
    loss = compiled(model, opt, *batch)
    first = time.perf_counter() - t0
    return (lambda: compiled(model, opt, *batch)), first, (compiled, model, opt, float(np.asarray(loss.numpy())))


def _torch(tm, tloss, batch, lr, compile_=False, opt_fn=None):
    topt = torch.optim.SGD(tm.parameters(), lr=lr) if opt_fn is None else opt_fn(tm)
    tb = [torch.from_numpy(b) for b in batch]
    fwd = torch.compile(lambda *a: tloss(tm, *a)) if compile_ else (lambda *a: tloss(tm, *a))

    def step():
        topt.zero_grad(set_to_none=True)
        fwd(*tb).backward()
        topt.step()
    return step


def _load_jax(threads: int):
    """jax on the CPU with XLA's thread pool sized to `threads`, or None when jax is not installed.

    Both environment variables are read when jax starts its backend, so they are set before the
    import: PJRT_NPROC sizes the TFRT CPU client's intra-op (Eigen) pool (default: the schedulable
    CPUs); --xla_cpu_multi_thread_eigen=true is XLA's default, spelled out."""
    if importlib.util.find_spec("jax") is None:
        return None
    os.environ["PJRT_NPROC"] = str(threads)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=true".strip()
    import jax
    jax.config.update("jax_platforms", "cpu")
    return jax


def _jax_models(jax):
    """LeNet's and the VAE's losses in jax, over parameter dicts holding the torch models' weights
    in torch's layouts (Linear weight (out, in), Conv2d weight OIHW)."""
    jnp, lax = jax.numpy, jax.lax

    def linear(p, name, h):
        return h @ p[name + ".weight"].T + p[name + ".bias"]

    def conv(p, name, h):
        out = lax.conv_general_dilated(h, p[name + ".weight"], (1, 1), "VALID",
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return out + p[name + ".bias"][None, :, None, None]

    def pool(h):
        return lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def lenet(p, x, y):  # torch_lenet's Sequential: indices 0, 3, 7, 9 hold parameters
        h = pool(jax.nn.relu(conv(p, "0", x)))
        h = pool(jax.nn.relu(conv(p, "3", h)))
        h = jax.nn.relu(linear(p, "7", h.reshape(h.shape[0], -1)))
        logp = jax.nn.log_softmax(linear(p, "9", h), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def vae(p, x, eps):  # eps: the N(0, 1) noise, shaped like mu
        h = jax.nn.relu(linear(p, "fc1", x))
        mu, logvar = linear(p, "fc21", h), linear(p, "fc22", h)
        z = mu + eps * jnp.exp(0.5 * logvar)
        recon = jax.nn.sigmoid(linear(p, "fc4", jax.nn.relu(linear(p, "fc3", z))))
        # torch's binary_cross_entropy: logs clamped at -100, log(1 - r) as log1p(-r)
        bce = -jnp.sum(x * jnp.maximum(jnp.log(recon), -100.0) + (1 - x) * jnp.maximum(jnp.log1p(-recon), -100.0))
        return bce - 0.5 * jnp.sum(1 + logvar - mu * mu - jnp.exp(logvar))

    return lenet, vae


def _jax(jax, kind, tm, batch, lr):
    """The jitted SGD step of `kind` ("lenet" or "vae") from `tm`'s current weights: a timed-step
    closure, the cold first step's seconds and its loss."""
    jnp = jax.numpy
    lenet, vae = _jax_models(jax)
    params = {k: jnp.array(v.detach().numpy(), dtype=jnp.float32) for k, v in tm.state_dict().items()}

    def sgd(loss_fn, p, *xs):
        loss, grads = jax.value_and_grad(loss_fn)(p, *xs)
        return jax.tree_util.tree_map(lambda w, g: w - lr * g, p, grads), loss

    if kind == "lenet":
        args = [jnp.asarray(batch[0]), jnp.asarray(batch[1], dtype=jnp.int32)]
        step = jax.jit(lambda p, x, y: sgd(lenet, p, x, y), donate_argnums=0)
    else:
        def vae_step(p, x, key):
            key, sub = jax.random.split(key)
            new, loss = sgd(lambda q, a: vae(q, a, jax.random.normal(sub, (a.shape[0], 20), a.dtype)), p, x)
            return new, loss, key
        args = [jnp.asarray(batch[0]), jax.random.PRNGKey(0)]
        step = jax.jit(vae_step, donate_argnums=0)
    jax.block_until_ready((params, args))  # the backend started and the inputs on it: not part of the cold step
    state = {"params": params, "args": args}

    def run():
        out = step(state["params"], *state["args"])
        jax.block_until_ready(out)
        state["params"] = out[0]
        if kind == "vae":
            state["args"][1] = out[2]
        return out[1]

    t0 = time.perf_counter()
    loss = run()
    first = time.perf_counter() - t0
    return run, first, float(loss)


def _check_jax(jax, kind, tm, tloss, batch, first_loss, full):
    """Compare the jax step with torch on `tm`'s (not yet updated) weights and `batch`; a printable line.

    Always: the first jax step's loss against torch's (LeNet: rtol 1e-4; VAE: the noise differs, so
    the relative difference only says the magnitudes agree). With `full`: loss and gradients of both
    with the VAE's noise set to zero."""
    jnp = jax.numpy
    tb = [torch.from_numpy(b) for b in batch]
    if kind == "lenet":
        tb[1] = tb[1].long()
    with torch.no_grad():
        t_first = float(tloss(tm, *tb))
    rel = abs(first_loss - t_first) / abs(t_first)
    ok = rel <= 1e-4 if kind == "lenet" else rel <= 0.05
    line = (f"first-step loss jax {first_loss:.6g} vs torch {t_first:.6g}: rel {rel:.1e} "
            f"({'ok' if ok else 'MISMATCH'}, {'rtol 1e-4' if kind == 'lenet' else 'noise differs, within 5%'})")
    if not full:
        return line
    lenet, vae = _jax_models(jax)
    params = {k: jnp.array(v.detach().numpy(), dtype=jnp.float32) for k, v in tm.state_dict().items()}
    if kind == "lenet":
        loss, grads = jax.jit(jax.value_and_grad(lenet))(params, jnp.asarray(batch[0]), jnp.asarray(batch[1]))
        tm.zero_grad(set_to_none=True)
        t_loss = tloss(tm, *tb)
    else:
        x = jnp.asarray(batch[0])
        loss, grads = jax.jit(jax.value_and_grad(vae))(params, x, jnp.zeros((x.shape[0], 20), x.dtype))
        tm.zero_grad(set_to_none=True)
        with mock.patch.object(torch, "randn_like", torch.zeros_like):  # TorchVAE's noise set to zero
            t_loss = tloss(tm, *tb)
    t_loss.backward()
    t_grads = {k: v.grad.numpy() for k, v in tm.named_parameters()}
    tm.zero_grad(set_to_none=True)
    lrel = abs(float(loss) - t_loss.item()) / abs(t_loss.item())
    grel = max(float(np.max(np.abs(np.asarray(grads[k]) - g))) / max(float(np.max(np.abs(g))), 1e-30)
               for k, g in t_grads.items())
    ok2 = lrel <= 1e-4 and grel <= 1e-3
    return (f"{line}; {'noise 0: ' if kind == 'vae' else ''}loss rel {lrel:.1e}, grads max |d|/max |g| "
            f"{grel:.1e} ({'ok' if ok2 else 'MISMATCH'}, rtol 1e-4 / 1e-3)")


class TorchGPT(torch.nn.Module):
    """zoo.GPT in torch's layers, with zoo.GPT's parameter names (so its state dict loads here)."""

    def __init__(self, cfg: zoo.GPTConfig):
        super().__init__()
        T = torch.nn

        class Attn(T.Module):
            def __init__(s):
                super().__init__()
                s.c_attn, s.c_proj = T.Linear(cfg.n_embd, 3 * cfg.n_embd), T.Linear(cfg.n_embd, cfg.n_embd)

            def forward(s, x):
                B, L, C = x.shape
                q, k, v = (t.view(B, L, cfg.n_head, C // cfg.n_head).transpose(1, 2)
                           for t in s.c_attn(x).split(cfg.n_embd, dim=2))
                y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                return s.c_proj(y.transpose(1, 2).contiguous().view(B, L, C))

        class MLP(T.Module):
            def __init__(s):
                super().__init__()
                s.c_fc, s.c_proj = T.Linear(cfg.n_embd, 4 * cfg.n_embd), T.Linear(4 * cfg.n_embd, cfg.n_embd)

            def forward(s, x):
                return s.c_proj(torch.nn.functional.gelu(s.c_fc(x), approximate="tanh"))

        class Block(T.Module):
            def __init__(s):
                super().__init__()
                s.ln_1, s.attn, s.ln_2, s.mlp = T.LayerNorm(cfg.n_embd), Attn(), T.LayerNorm(cfg.n_embd), MLP()

            def forward(s, x):
                x = x + s.attn(s.ln_1(x))
                return x + s.mlp(s.ln_2(x))

        self.transformer = T.ModuleDict(dict(wte=T.Embedding(cfg.vocab_size, cfg.n_embd),
                                             wpe=T.Embedding(cfg.block_size, cfg.n_embd),
                                             h=T.ModuleList([Block() for _ in range(cfg.n_layer)]),
                                             ln_f=T.LayerNorm(cfg.n_embd)))
        self.lm_head = T.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as zoo.GPT

    def forward(self, idx):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


class TorchResNet(torch.nn.Module):
    """zoo.ResNet in torch's layers, with zoo.ResNet's parameter and buffer names."""

    def __init__(self, widths, blocks: int, classes: int = 10):
        super().__init__()
        T = torch.nn

        class Basic(T.Module):
            def __init__(s, cin, cout, stride):
                super().__init__()
                s.conv1, s.bn1 = T.Conv2d(cin, cout, 3, stride, 1, bias=False), T.BatchNorm2d(cout)
                s.conv2, s.bn2 = T.Conv2d(cout, cout, 3, 1, 1, bias=False), T.BatchNorm2d(cout)
                s.shortcut = (T.Sequential(T.Conv2d(cin, cout, 1, stride, bias=False), T.BatchNorm2d(cout))
                              if stride != 1 or cin != cout else T.Sequential())

            def forward(s, x):
                return torch.relu(s.bn2(s.conv2(torch.relu(s.bn1(s.conv1(x))))) + s.shortcut(x))

        self.conv1, self.bn1 = T.Conv2d(3, widths[0], 3, 1, 1, bias=False), T.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers = []
            for j in range(blocks):
                layers.append(Basic(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
            stages.append(T.Sequential(*layers))
        self.layers = T.ModuleList(stages)
        self.fc = T.Linear(cin, classes)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        for stage in self.layers:
            out = stage(out)
        return self.fc(out.mean((2, 3)))


def _from_avalon(tm: torch.nn.Module, model) -> torch.nn.Module:
    """`tm` holding `model`'s current parameters and buffers (the same names)."""
    tm.load_state_dict({k: torch.from_numpy(np.array(v.numpy() if hasattr(v, "numpy") else v))
                        for k, v in model.state_dict().items()})
    return tm


def _gpt_loss(m, idx, y):
    logits = m(idx)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _lenet_loss(m, x, y):
    return zoo.nll(m(x), y)


def _vae_loss(m, x):
    recon, mu, logvar = m(x)
    return zoo.vae_loss(recon, x, mu, logvar)


def memory(make, loss_fn, batch, lr) -> dict:
    """Peak bytes traced during one steady step of the compiled LeNet step (its buffers, scratch and
    fresh outputs are all allocated inside the traced window), against plan bound + parameters."""
    tracemalloc.start()
    run, _, (compiled, model, opt, _) = _avalon(make, loss_fn, batch, lr)
    run()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    insp = compiled.inspect(model, opt, *batch)
    exe = next(iter(compiled._cache.values())).executable
    params = sum(p.numpy().nbytes for _, p in nn.named_parameters(model))
    plan = insp.memory_plan
    return {"peak_step_bytes": peak - base + exe.emission.resident_bytes, "resident": exe.emission.resident_bytes,
            "live_bound": plan.live_peak_bytes, "params": params,
            "bound": 1.5 * (plan.live_peak_bytes + params)}


def _timed(cont: dict, args, firsts: dict) -> tuple[dict, dict, dict]:
    """Median wall and CPU ms per step of each contender, rounds interleaved."""
    times: dict[str, list[float]] = {k: [] for k in cont}
    cpu: dict[str, list[float]] = {k: [] for k in cont}
    for f in cont.values():
        f()  # warm
    for _ in range(args.rounds):
        for k, f in cont.items():
            f()  # untimed: the previous contender's worker threads (OpenMP, XLA's pool) may still spin
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                f()
            times[k].append((time.perf_counter() - t0) / args.steps * 1e3)
            cpu[k].append((time.process_time() - c0) / args.steps * 1e3)
    return ({k: statistics.median(v) for k, v in times.items()},
            {k: statistics.median(v) for k, v in cpu.items()}, firsts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile (slow cold compile)")
    ap.add_argument("--no-jax", action="store_true", help="leave out jax.jit even when jax is installed")
    ap.add_argument("--native", action="store_true",
                    help="also time backend='cpu' (elementwise runs compiled to C; its first step includes cc "
                         "unless the library is cached)")
    ap.add_argument("--check", action="store_true",
                    help="also compare jax's losses and gradients with torch's (VAE noise set to zero)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="lenet,vae,gpt,resnet",
                    help="comma-separated subset of lenet, vae, gpt (2-layer d128 GPT, AdamW), resnet (narrow "
                         "ResNet-18, SGD momentum)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    jax = None if args.no_jax else _load_jax(args.threads)
    a = np.ones((64, 64), np.float32)
    a @ a  # initialize the BLAS library (its thread pool) before timing a first step
    rng = np.random.default_rng(0)
    work = {
        "LeNet bs64": (zoo.LeNet, _lenet_loss, [rng.standard_normal((64, 1, 28, 28)).astype(np.float32),
                                            rng.integers(0, 10, 64)], torch_lenet,
                       lambda m, a, b: torch.nn.functional.nll_loss(m(a), b), 0.01, "lenet"),
        "VAE bs128": (zoo.VAE, _vae_loss, [rng.random((128, 784)).astype(np.float32)], TorchVAE, torch_vae_loss,
                      1e-5, "vae"),
    }
    gpt_cfg = zoo.GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=4, n_embd=128)
    widths = (16, 32, 64, 128)
    big = {  # name: (make, loss, batch, torch model from the Avalon model, torch loss, Avalon opt, torch opt)
        "GPT 2L d128 T64 bs8": (lambda: zoo.GPT(gpt_cfg), zoo.gpt_loss,
                                [rng.integers(0, 512, (8, 64)), rng.integers(0, 512, (8, 64))],
                                lambda m: _from_avalon(TorchGPT(gpt_cfg), m), _gpt_loss,
                                lambda m: optim.AdamW(m, lr=1e-4),
                                lambda m: torch.optim.AdamW(m.parameters(), lr=1e-4)),
        "ResNet-18 w16 32x32 bs16": (lambda: zoo.ResNet(widths, 2), lambda m, x, y: zoo.cross_entropy(m(x), y),
                                     [rng.standard_normal((16, 3, 32, 32)).astype(np.float32),
                                      rng.integers(0, 10, 16)],
                                     lambda m: _from_avalon(TorchResNet(widths, 2), m),
                                     lambda m, x, y: torch.nn.functional.cross_entropy(m(x), y),
                                     lambda m: optim.SGD(m, lr=1e-3, momentum=0.9),
                                     lambda m: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)),
    }
    keys = {"lenet": "LeNet bs64", "vae": "VAE bs128", "gpt": "GPT 2L d128 T64 bs8",
            "resnet": "ResNet-18 w16 32x32 bs16"}
    wanted = [keys[k.strip()] for k in args.models.split(",") if k.strip()]
    rows, checks = {}, {}
    for name, (make, loss_fn, batch, tmake, tloss, lr, kind) in work.items():
        if name not in wanted:
            continue
        run, first, _ = _avalon(make, loss_fn, batch, lr)
        cpu_run, cpu_first, _ = _avalon(make, loss_fn, batch, lr, "cpu") if args.native else (None, None, None)
        firsts = {"Avalon": first}
        tm = tmake()
        jrun = None
        if jax is not None:  # from tm's initial weights, checked against torch before torch steps
            jrun, firsts["jax"], jloss = _jax(jax, kind, tm, batch, lr)
            checks[name] = _check_jax(jax, kind, tm, tloss, batch, jloss, args.check)
        cont = {"avalon": run, "torch eager": _torch(tm, tloss, batch, lr)}
        if cpu_run is not None:
            cont["avalon cpu"] = cpu_run
            firsts["Avalon cpu"] = cpu_first
        if jrun is not None:
            cont["jax.jit"] = jrun
        if args.torch_compile:
            cont["torch.compile"] = _torch(tmake(), tloss, batch, lr, compile_=True)
        rows[name] = _timed(cont, args, firsts)
    for name, (make, loss_fn, batch, tfrom, tloss, aopt, topt) in big.items():
        if name not in wanted:
            continue
        av.manual_seed(0)
        model = make()
        tm = tfrom(model)  # the same initial weights, before Avalon's first step updates them
        tb = [torch.from_numpy(b) for b in batch]
        with torch.no_grad():
            t_first = float(tloss(tm, *tb))
        run, first, (*_, a_first) = _avalon(make, loss_fn, batch, 0.0, "numpy", aopt, model)
        rel = abs(a_first - t_first) / abs(t_first)
        checks[name] = (f"first-step loss Avalon {a_first:.6g} vs torch {t_first:.6g}: rel {rel:.1e} "
                        f"({'ok' if rel <= 1e-4 else 'MISMATCH'}, rtol 1e-4)")
        cont = {"avalon": run, "torch eager": _torch(tm, tloss, batch, 0.0, opt_fn=topt)}
        firsts = {"Avalon": first}
        if args.native:
            cont["avalon cpu"], firsts["Avalon cpu"], _ = _avalon(make, loss_fn, batch, 0.0, "cpu", aopt)
        if args.torch_compile:
            cont["torch.compile"] = _torch(tfrom(make()), tloss, batch, 0.0, compile_=True, opt_fn=topt)
        rows[name] = _timed(cont, args, firsts)
    versions = f", jax {jax.__version__} (PJRT_NPROC={os.environ['PJRT_NPROC']})" if jax is not None else ""
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load "
          f"{os.getloadavg()[0]:.1f}; python {platform.python_version()}, numpy {np.__version__}, torch "
          f"{torch.__version__}{versions}, {args.threads} threads")
    for name, check in checks.items():
        print(f"{'jax ' if name in work else ''}check {name}: {check}")
    for name, (med, cmed, firsts) in rows.items():
        base, cbase = med["torch eager"], cmed["torch eager"]
        cells = ", ".join(f"{k} {v:.2f} ms ({v / base:.2f}x; cpu {cmed[k]:.2f} ms, {cmed[k] / cbase:.2f}x)"
                          for k, v in med.items())
        first = ", ".join(f"{k} {v:.3f} s" for k, v in firsts.items())
        print(f"{name}: {cells}; first step: {first}")
    if "LeNet bs64" not in wanted:
        return
    m = memory(*work["LeNet bs64"][:3], 0.01)
    mib = 2**20
    print(f"LeNet memory: step peak {m['peak_step_bytes'] / mib:.2f} MiB (resident buffers+scratch "
          f"{m['resident'] / mib:.2f} MiB); plan live-set bound {m['live_bound'] / mib:.2f} MiB + params "
          f"{m['params'] / mib:.2f} MiB; 1.5x that = {m['bound'] / mib:.2f} MiB")


if __name__ == "__main__":
    main()
