"""`av.fit`: a small training loop whose step runs compiled, not op by op.

    history = av.fit(model, X, Y, loss_fn, epochs=10, batch_size=100)

`loss_fn(model, x, y)` returns a scalar loss for one batch (`loss_fn(model, x)` when `Y` is None,
for unsupervised models such as a VAE). The whole training step, the forward pass, its gradient and
the optimizer update, is one traced graph:

    def train_step(model, opt, x, y):
        loss, grads = av.value_and_grad(loss_fn)(model, x, y)
        opt.step(grads)
        return loss

compiled with `av.compile(train_step, backend=...)` (`predict` compiles `model(x)` the same way), so
it goes through the one compile driver: traced once per input signature (the last, partial batch
has another shape and so is a second cached graph), optimized by the pipeline, run on the backend. The model and
the optimizer are arguments, so their tensors (parameters, moments, step count) are graph inputs
that each call reads afresh and the state updates write back.

Choices, and why:
- The default optimizer is `Adam(model, lr=1e-3)`: it trains most small models without tuning, and
  it is what the original Avalon's CNN benchmark used.
- The epoch loss is the mean over samples (each batch's loss weighted by its size), so a short last
  batch does not count as much as a full one.
- Floating-point data is converted to the dtype of the model's parameters: numpy arrays default to
  float64 while models default to float32, and mixing them would run the whole step in float64.
- Shuffling draws from `np.random.default_rng(seed)`; with `seed=None` the seed comes from Avalon's
  global generator, so `av.manual_seed` makes a whole run repeatable.
- The progress bar goes to stderr and only when stderr is a terminal; the epoch summaries also go to
  the `avalon.train` log channel (`AVALON_LOG=train`).
"""
from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .channels import get_logger
from .compiler import compile, value_and_grad  # noqa: A004
from .device import CPU, Device
from .device import device as as_device
from .ir import dtypes as dt
from .tensor import Tensor, as_array
from .tree import named_parameters, to_device

__all__ = ["fit", "make_train_step", "predict"]

log = get_logger("train")


# -- the compiled step -------------------------------------------------------------------------

def make_train_step(loss_fn: Callable, supervised: bool = True) -> Callable:
    """The training step as a plain function of (model, optimizer, x[, y]) -> loss, ready to trace."""
    if supervised:
        def train_step(model, opt, x, y):
            loss, grads = value_and_grad(loss_fn)(model, x, y)
            opt.step(grads)
            return loss
    else:
        def train_step(model, opt, x):
            loss, grads = value_and_grad(loss_fn)(model, x)
            opt.step(grads)
            return loss
    return train_step


# -- data ----------------------------------------------------------------------------------------

def _host_array(data: Any, name: str) -> np.ndarray:
    if isinstance(data, Tensor) and data.is_traced:
        raise TypeError(f"fit: {name} is a traced tensor")
    arr = as_array(data)
    if arr.ndim == 0:
        raise ValueError(f"fit: {name} must have a leading sample dimension, got a scalar")
    return arr


def _param_dtype(model: Any) -> dt.DType | None:
    for _, p in named_parameters(model):
        return p.dtype
    return None


def _batch(arr: np.ndarray, idx: Any, dtype: dt.DType | None, dev: Device) -> Tensor:
    a = arr[idx]
    d = dtype if dtype is not None and a.dtype.kind == "f" else None
    return Tensor(np.ascontiguousarray(a), dtype=d, device=dev)


# -- progress ------------------------------------------------------------------------------------

class _Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, enabled: bool, epochs: int, batches: int):
        self.on = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.epochs, self.batches = epochs, batches
        self.last = 0.0

    def update(self, epoch: int, done: int, loss: float, started: float, final: bool = False) -> None:
        if not self.on:
            return
        now = time.perf_counter()
        if not final and now - self.last < 0.1:
            return
        self.last = now
        elapsed = now - started
        rate = done / elapsed if elapsed > 0 else 0.0
        head = f"epoch {epoch}/{self.epochs} "
        tail = f" {done}/{self.batches} loss {loss:.4g} {rate:.1f} it/s {elapsed:.1f}s"
        width = max(10, min(40, shutil.get_terminal_size((80, 20)).columns - len(head) - len(tail) - 3))
        filled = int(width * done / max(self.batches, 1))
        sys.stderr.write(f"\r{head}[{'#' * filled}{'.' * (width - filled)}]{tail}")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


# -- fit -----------------------------------------------------------------------------------------

def fit(model: Any, X: Any, Y: Any, loss_fn: Callable, epochs: int = 10, batch_size: int = 100,
        optimizer: Any = None, device: Any = None, backend: str | None = None, shuffle: bool = True,
        progress: bool = True, seed: int | None = None) -> list[float]:
    """Train `model` in place on (X, Y) in mini-batches; returns the mean loss of each epoch.

    `backend` picks the compiler backend ("numpy" or "triton"); by default "triton" when the model
    lives on a GPU and "numpy" otherwise. `device` moves the model (and the optimizer's state) there
    first. See the module docstring for the choices made.
    """
    from . import optim
    from .random import fresh_seed

    if batch_size < 1:
        raise ValueError(f"fit: batch_size must be at least 1, got {batch_size}")
    Xa = _host_array(X, "X")
    Ya = _host_array(Y, "Y") if Y is not None else None
    if Ya is not None and len(Ya) != len(Xa):
        raise ValueError(f"fit: X has {len(Xa)} samples but Y has {len(Ya)}")
    n = len(Xa)
    if n == 0:
        raise ValueError("fit: no training samples")
    if device is not None:
        to_device(model, device)
        if optimizer is not None:
            to_device(optimizer, device)
    params = list(named_parameters(model))
    if not params:
        raise ValueError("fit: the model has no parameters to train")
    dev = as_device(device) if device is not None else params[0][1].device
    if optimizer is None:
        optimizer = optim.Adam(model, lr=1e-3)
    if backend is None:
        backend = "numpy" if dev == CPU else "triton"
    _set_mode(model, True)
    step = compile(make_train_step(loss_fn, supervised=Ya is not None), backend=backend)

    pdtype = _param_dtype(model)
    rng = np.random.default_rng(fresh_seed() if seed is None else seed)
    batches = math.ceil(n / batch_size)
    bar = _Progress(progress, epochs, batches)
    history: list[float] = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n) if shuffle else None
        total, started = 0.0, time.perf_counter()
        for b in range(batches):
            lo, hi = b * batch_size, min(n, (b + 1) * batch_size)
            idx = order[lo:hi] if order is not None else slice(lo, hi)
            args = [_batch(Xa, idx, pdtype, dev)] + ([_batch(Ya, idx, pdtype, dev)] if Ya is not None else [])
            loss = float(step(model, optimizer, *args))
            if not math.isfinite(loss):
                log.warning("epoch %d batch %d: loss is %s", epoch, b + 1, loss)
            total += loss * (hi - lo)
            bar.update(epoch, b + 1, total / hi, started, final=b + 1 == batches)
        history.append(total / n)
        log.info("epoch %d/%d: loss %.6g (%.2fs)", epoch, epochs, history[-1], time.perf_counter() - started)
    return history


def _set_mode(model: Any, training: bool) -> None:
    """Training mode for fit (dropout on, batch norm updating its statistics), eval for predict.
    `nn.train` sets `training` on every object in the model that has one, Module or not."""
    try:
        from .nn import train
    except ImportError:
        return
    train(model, training)


def predict(model: Any, X: Any, batch_size: int = 256, backend: str | None = None) -> Any:
    """`model(x)` over X in batches in eval mode, compiled once per batch shape: a numpy array, or a
    tuple of arrays for a model returning several outputs. The model's training flag is restored."""
    params = list(named_parameters(model))
    dev = params[0][1].device if params else CPU
    forward = compile(lambda model, x: model(x), backend=backend or ("numpy" if dev == CPU else "triton"))
    pdtype = _param_dtype(model)
    Xa = _host_array(X, "X")
    was = getattr(model, "training", None)
    _set_mode(model, False)
    try:
        outs = [forward(model, _batch(Xa, slice(i, i + batch_size), pdtype, dev))
                for i in range(0, len(Xa), batch_size)]
    finally:
        if was is not None:
            _set_mode(model, bool(was))
    if isinstance(outs[0], (tuple, list)):  # several outputs (a VAE's recon, mu, logvar): one array each
        return tuple(np.concatenate([as_array(o[k]) for o in outs]) for k in range(len(outs[0])))
    return np.concatenate([as_array(o) for o in outs])
