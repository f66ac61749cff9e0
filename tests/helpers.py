"""What several test files share: comparing results against torch, and small IR graphs for the
Triton kernel tests. Import with `from helpers import ...` (pytest puts tests/ on sys.path)."""
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import avalon as av
from avalon import nn, optim, zoo
from avalon.ir import Builder, Graph, TensorType


def as_numpy(x) -> np.ndarray:
    """An Avalon tensor, a torch tensor or anything array-like, as a numpy array."""
    if isinstance(x, av.Tensor):
        return x.numpy()
    if isinstance(x, torch.Tensor):
        return x.detach().numpy()
    return np.asarray(x)


def rel(a, b) -> float:
    """max |a - b| / max |b|: the relative error of a whole result (shapes must match)."""
    a, b = as_numpy(a).astype(np.float64), as_numpy(b).astype(np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def T(x) -> torch.Tensor:
    """A torch tensor of x's values, for torch as the oracle."""
    return torch.from_numpy(np.array(x))  # np.array keeps 0-d shapes


def graph(*types):
    """A graph `f` with one input per (shape, dtype), its builder and the inputs `x0, x1, ...`."""
    g = Graph("f")
    xs = [g.add_input(TensorType(s, d), f"x{i}") for i, (s, d) in enumerate(types)]
    return g, Builder(g), xs


def conv_graph(kind: str, xs, ws, attrs: dict, layout=None):
    """A graph of one `kind` (conv2d, conv2d_grad_input, conv2d_grad_weight) of input shape `xs`
    and weight shape `ws`, its image operands stored in `layout` (None: row-major)."""
    ys = conv_out(xs, ws, attrs)
    if kind == "conv2d":
        g, b, (x, w) = graph((xs, "f32"), (ws, "f32"))
        x.type = TensorType(xs, "f32", layout=layout)
        g.set_outputs([b("conv2d", x, w, **attrs)])
    elif kind == "conv2d_grad_input":
        g, b, (dy, w) = graph((ys, "f32"), (ws, "f32"))
        dy.type = TensorType(ys, "f32", layout=layout)
        g.set_outputs([b("conv2d_grad_input", dy, w, input_shape=list(xs), **attrs)])
    else:
        g, b, (x, dy) = graph((xs, "f32"), (ys, "f32"))
        x.type, dy.type = TensorType(xs, "f32", layout=layout), TensorType(ys, "f32", layout=layout)
        g.set_outputs([b("conv2d_grad_weight", x, dy, weight_shape=list(ws), **attrs)])
    return g


def conv_out(xs, ws, attrs: dict):
    """The shape of conv2d(x, w, **attrs) for input shape `xs` and weight shape `ws`."""
    g, b, (x, w) = graph((xs, "f32"), (ws, "f32"))
    return b("conv2d", x, w, **attrs).shape


def vae_loss(m, x):
    """zoo.VAE's training loss (reconstruction + KL) on a batch `x`."""
    r, mu, lv = m(x)
    return zoo.vae_loss(r, x, mu, lv)


def train(make, loss_fn, batch, backend, steps: int, lr: float, momentum: float = 0.0):
    """`steps` compiled SGD steps of a fresh `make()` (seed 0) on `backend`: (the compiled step, the
    losses, the parameters as numpy arrays), for comparing backends from the same weights and seeds."""
    av.manual_seed(0)
    model = make()
    opt = optim.SGD(model, lr=lr, momentum=momentum)

    def step(m, o, *xs):
        loss, grads = av.value_and_grad(loss_fn)(m, *xs)
        o.step(grads)
        return loss
    c = av.compile(step, backend=backend)
    losses = [float(c(model, opt, *batch)) for _ in range(steps)]
    return c, losses, {k: v.numpy().copy() for k, v in nn.named_parameters(model)}


def assert_same_training(a, b, rtol: float = 1e-5, prtol: float = 1e-4) -> None:
    """Two `train` results agree: losses within `rtol`, parameters within `prtol`."""
    (_, l1, p1), (_, l2, p2) = a, b
    np.testing.assert_allclose(l1, l2, rtol=rtol)
    for k in p1:
        np.testing.assert_allclose(p1[k], p2[k], rtol=prtol, atol=1e-6, err_msg=k)


def same(a, b, tol: float = 1e-6) -> None:
    """Same shape, same dtype, values within `tol` (relative and absolute), compared in float64."""
    a, b = as_numpy(a), as_numpy(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=tol, atol=tol)


def check_like_torch(f, *arrays, grad: bool = True, compiled: bool = True, tol: float = 1e-6, seed: int = 0) -> None:
    """`f(lib, *tensors)` with lib = av and lib = torch: values and dtypes eagerly and compiled
    (numpy backend), and the gradient of sum(f(x) * w) for a random w with respect to every
    floating-point array."""
    want = f(torch, *[T(a) for a in arrays])
    same(f(av, *[av.tensor(a) for a in arrays]), want, tol)
    if compiled:
        same(av.compile(lambda *xs: f(av, *xs), backend="numpy")(*arrays), want, tol)
    if not grad:
        return
    w = np.random.default_rng(seed).standard_normal(tuple(want.shape))
    ts = [T(a).requires_grad_() if a.dtype.kind == "f" else T(a) for a in arrays]
    (f(torch, *ts) * T(w)).sum().backward()
    wrt = tuple(i + 1 for i, a in enumerate(arrays) if a.dtype.kind == "f")
    gs = av.grad(lambda w, *xs: (f(av, *xs) * w).sum(), argnums=wrt)(w, *arrays)
    for g, i in zip(gs, wrt):
        same(g, ts[i - 1].grad, tol)


def twin_mlps(seed: int = 7):
    """An Avalon MLP and torch's with the same float64 weights, and a batch (x, y) for both."""
    av.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    tmodel = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    tmodel.load_state_dict({k: torch.tensor(v.numpy()) for k, v in nn.state_dict(model).items()})
    rng = np.random.default_rng(seed)
    return model, tmodel, rng.standard_normal((6, 5)), rng.integers(0, 3, 6)



def lm_steps(model, tmodel, optimizer, toptimizer, vocab: int, shape, seed: int, steps: int = 3, clip=None,
             tol: float = 1e-4):
    """The port-QA language-model loop: `steps` steps of next-token cross entropy on random tokens of `shape`
    (numpy's generator, `seed`), torch's `zero_grad(); loss.backward(); [clip_grad_norm_]; step()` beside the port's
    `av.value_and_grad` step (the first eager, the rest compiled on numpy, one trace), compared after each step:
    loss and logits within 1e-5, gradients and parameters (and buffers) relative to their largest element or 1e-4
    within `tol`. Warnings while tracing (a tensor captured or baked in) are errors. Returns the last tokens."""
    import warnings

    import torch.nn.functional as TF  # noqa: N812

    from avalon.nn import functional as F

    def loss_fn(model, tokens):
        logits = model(tokens[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)), logits

    def train_step(model, optimizer, tokens):
        (loss, logits), grads = av.value_and_grad(loss_fn, has_aux=True)(model, tokens)
        if clip is not None:
            nn.utils.clip_grad_norm_(grads, clip)
        optimizer.step(grads)
        return loss, logits, grads
    run = av.compile(train_step, backend="numpy")

    def close(a, b, what):
        a, b = as_numpy(a).astype(np.float64), as_numpy(b).astype(np.float64)
        assert np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1e-4) < tol, what

    rng = np.random.default_rng(seed)
    for it in range(steps):
        tokens = rng.integers(0, vocab, shape)
        tlogits = tmodel(torch.tensor(tokens[:, :-1]))
        tloss = TF.cross_entropy(tlogits.reshape(-1, tlogits.shape[-1]), torch.tensor(tokens[:, 1:]).reshape(-1))
        toptimizer.zero_grad()
        tloss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(tmodel.parameters(), clip)
        toptimizer.step()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss, logits, grads = (run if it else train_step)(model, optimizer, av.tensor(tokens))
        assert rel(loss, tloss) < 1e-5 and rel(logits, tlogits) < 1e-5, it
        want = {k: p.grad for k, p in tmodel.named_parameters() if p.grad is not None}
        assert sorted(grads) == sorted(want), it
        for k, g in want.items():
            close(grads[k], g, (it, k))
        sd = tmodel.state_dict()
        assert sorted(model.state_dict()) == sorted(sd)
        for k, v in model.state_dict().items():
            close(v, sd[k], (it, k))
    assert run.cache_info().misses == 1
    return tokens


ROOT = Path(__file__).resolve().parent.parent


def launch_ranks(argv: list[str], timeout: float = 120, world: int = 2, **env: str) -> list[subprocess.CompletedProcess]:
    """Run `python *argv` as `world` torchrun-style ranks on this host (gloo on the CPU, as CI has
    it) to completion, killed at `timeout`; their results in rank order. `env` adds variables."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(world):
        e = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
             "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
             "AVALON_DIST_TIMEOUT": "30", "CUDA_VISIBLE_DEVICES": "",
             "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env}
        procs.append(subprocess.Popen([sys.executable, *argv], env=e, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    done, deadline = [], time.monotonic() + timeout
    try:
        for p in procs:
            o, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            done.append(subprocess.CompletedProcess(p.args, p.returncode, o, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    return done


def same_as_torch(t: Any, a: Any) -> None:
    """Avalon's result `a` has torch's `t`'s dtype and values (nested tuples and lists alike): exactly for
    integers and bools, within 1e-5 (1e-2 in f16/bf16) for floats, NaN where torch has NaN."""
    if isinstance(t, (tuple, list)):
        for p, q in zip(t, a, strict=True):
            same_as_torch(p, q)
        return
    assert str(t.dtype).replace("torch.", "") == repr(a.dtype).replace("av.", "")
    want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
    got = a.float().numpy() if t.dtype == torch.bfloat16 else a.numpy()
    if want.dtype.kind == "f":
        tol = 1e-2 if t.dtype in (torch.float16, torch.bfloat16) else 1e-5
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)


def torch_raises(fn: Callable[[], Any]) -> type[BaseException]:
    """The type of the exception `fn` (a torch call) raises: the oracle for 'Avalon raises as torch'."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - any exception type is the answer
        return type(e)
    raise AssertionError("torch raises no error here")
