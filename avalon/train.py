"""`av.fit`: a small training loop whose step runs compiled, not op by op.

    history = av.fit(model, X, Y, loss_fn, epochs=10, batch_size=100)       # loss_fn(prediction, target)
    history = av.fit(model, X, None, loss_fn)                                # loss_fn(prediction)
    history = av.fit(model, X, Y, objective=f)                               # f(model, x, y), or f(model, x)

`loss_fn` is a criterion as in torch: `nn.CrossEntropyLoss()`, `F.cross_entropy`, `F.mse_loss`, or any
function of (prediction, target) where prediction is `model(x)` (whatever the model returns, a tuple
too). When the loss needs more than the prediction, say a VAE's ELBO that needs the input, pass a full
objective by keyword instead. A function of the wrong shape is a TypeError naming the expected one,
raised before anything is traced when its signature tells, at the first trace otherwise. The whole
training step, the forward pass, its gradient and the optimizer update, is one traced graph:

    def train_step(model, opt, x, y):
        loss, grads = av.value_and_grad(objective)(model, x, y)    # objective(m, x, y) = loss_fn(m(x), y)
        opt.step(grads)
        return loss

compiled with `av.compile(train_step, backend=...)` (`predict` compiles `model(x)` the same way), so
it goes through the one compile driver: traced once per input signature (the last, partial batch
has another shape and so is a second cached graph), optimized by the pipeline, run on the backend. The model and
the optimizer are arguments, so their tensors (parameters, moments, step count) are graph inputs
that each call reads afresh and the state updates write back.

Choices, and why:
- The default optimizer is `Adam(model, lr=1e-3)`: it trains most small models without tuning.
- The epoch loss is the mean over samples (each batch's loss weighted by its size), so a short last
  batch does not count as much as a full one.
- Floating-point data is converted to the dtype of the model's parameters: numpy arrays default to
  float64 while models default to float32, and mixing them would run the whole step in float64.
- Shuffling draws from `np.random.default_rng(seed)`; with `seed=None` the seed comes from Avalon's
  global generator, so `av.manual_seed` makes a whole run repeatable.
- Progress goes to stderr, so a script's stdout stays its own. On a terminal each epoch is a tqdm
  bar that redraws in place and stays as that epoch's one line; when stderr is not a terminal (piped,
  a log file, CI) fit writes one plain line per epoch and nothing else (no carriage returns);
  `progress=False` writes nothing. The epoch summaries also go to the `avalon.train` log channel
  (`AVALON_LOG=train`) for those who collect logs.
"""
from __future__ import annotations

import inspect
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .channels import get_logger
from .compiler import compile, value_and_grad  # noqa: A004
from .device import CPU, Device
from .device import device as as_device
from .distributed.fit import FitGroup, resume_progress, save_progress
from .ir import dtypes as dt
from .random import fresh_seed
from .tensor import Tensor, as_array
from .tree import named_parameters, to_device

__all__ = ["fit", "make_objective", "make_train_step", "predict"]

log = get_logger("train")


# -- loss_fn or objective ------------------------------------------------------------------------

def _forms(supervised: bool) -> tuple[str, str]:
    return (("loss_fn(prediction, target)", "objective(model, x, y)") if supervised
            else ("loss_fn(prediction)", "objective(model, x)"))


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _describe(fn: Any) -> str:
    """`name(a, b)` for an error message: what the user passed, as they wrote it."""
    name = _name(fn)
    try:
        return f"{name}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return name


def _takes(fn: Callable, n: int) -> bool | None:
    """Whether `fn` accepts n positional arguments; None when its signature cannot tell (none at
    all, or `*args` that may forward anywhere)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()):
        return None
    try:
        sig.bind(*range(n))
    except TypeError:
        return False
    return True


def _explained(fn: Callable, form: str) -> Callable:
    """`fn`, with a TypeError it raises (when first traced) re-raised naming the form fit calls it in:
    a signature can look right (`objective=F.mse_loss` takes three arguments) and still be the wrong
    function, and one with `*args` cannot be checked before the call."""
    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except TypeError as e:
            raise TypeError(f"fit: {form}; {_describe(fn)} raised TypeError: {e}") from e
    return call


def make_objective(loss_fn: Callable | None = None, supervised: bool = True, *,
                   objective: Callable | None = None) -> Callable:
    """The function of (model, x[, y]) that the training step differentiates: `objective` itself, or
    `loss_fn(model(x), y)` (`loss_fn(model(x))` unsupervised). Checks the signature first, so a loss
    of the wrong shape fails here, naming the form fit calls, rather than deep inside a trace."""
    loss_form, obj_form = _forms(supervised)
    if (loss_fn is None) == (objective is None):
        raise TypeError(f"fit: pass a loss, called as {loss_form}, or a full objective by keyword, "
                        f"called as {obj_form} (fit(model, X, Y, objective=f)); "
                        + ("got both" if loss_fn is not None else "got neither"))
    if objective is not None:
        if _takes(objective, 3 if supervised else 2) is False:
            raise TypeError(f"fit: objective is called as {obj_form}, but {_describe(objective)} does not take "
                            f"{3 if supervised else 2} arguments")
        return _explained(objective, f"objective is called as {obj_form}")
    if isinstance(loss_fn, type):
        raise TypeError(f"fit: loss_fn is the class {loss_fn.__name__}; pass an instance, {loss_fn.__name__}()")
    n = 2 if supervised else 1
    if _takes(loss_fn, n) is False:
        hint = ""
        if _takes(loss_fn, n + 1):
            hint = (f"; a function of ({'model, x, y' if supervised else 'model, x'}) is a full objective: "
                    f"pass it by keyword, fit(model, X, {'Y' if supervised else 'None'}, objective={_name(loss_fn)})")
        raise TypeError(f"fit: loss_fn is called as {loss_form} with prediction = model(x), but "
                        f"{_describe(loss_fn)} does not take {n} argument{'s' if n > 1 else ''}{hint}")
    call = _explained(loss_fn, f"loss_fn is called as {loss_form} with prediction = model(x)")

    if supervised:
        def loss_of_prediction(model, x, y):
            return call(model(x), y)
    else:
        def loss_of_prediction(model, x):
            return call(model(x))
    return loss_of_prediction


# -- the compiled step -------------------------------------------------------------------------

def make_train_step(loss_fn: Callable | None = None, supervised: bool = True, *,
                    objective: Callable | None = None, all_reduce: bool = False) -> Callable:
    """The training step as a plain function of (model, optimizer, x[, y]) -> loss, ready to trace;
    `loss_fn` and `objective` as in `fit`. With `all_reduce` the gradients are averaged over the
    process group between the gradient and the update (`all_reduce` ops in the step's IR)."""
    obj = make_objective(loss_fn, supervised, objective=objective)

    def average(grads: Any) -> Any:
        if not all_reduce:
            return grads
        from . import distributed
        return distributed.all_reduce(grads, op="mean")

    if supervised:
        def train_step(model, opt, x, y):
            loss, grads = value_and_grad(obj)(model, x, y)
            opt.step(average(grads))
            return loss
    else:
        def train_step(model, opt, x):
            loss, grads = value_and_grad(obj)(model, x)
            opt.step(average(grads))
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

def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


class _Progress:
    """What fit shows on stderr (see the module docstring): a tqdm bar per epoch on a terminal, left
    standing as that epoch's line; one plain line per epoch otherwise; nothing when disabled."""

    def __init__(self, enabled: bool, epochs: int, batches: int):
        self.stream = sys.stderr  # read now: tests and notebooks swap it
        self.mode = "off" if not enabled else "bar" if _is_terminal(self.stream) else "lines"
        self.epochs, self.batches = epochs, batches
        self.bar: Any = None

    def start(self, epoch: int) -> None:
        if self.mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=self.batches, desc=f"epoch {epoch}/{self.epochs}", unit="batch", file=self.stream,
                            leave=True, dynamic_ncols=True, mininterval=0.1)

    def update(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4g}", refresh=False)
            self.bar.update(1)

    def end(self, epoch: int, loss: float, seconds: float) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "lines":
            self.stream.write(f"epoch {epoch}/{self.epochs}: loss {loss:.4g} ({seconds:.1f}s)\n")
            self.stream.flush()


# -- fit -----------------------------------------------------------------------------------------

def fit(model: Any, X: Any, Y: Any, loss_fn: Callable | None = None, epochs: int = 10, batch_size: int = 100,
        optimizer: Any = None, device: Any = None, backend: str | None = None, shuffle: bool = True,
        progress: bool = True, seed: int | None = None, *, objective: Callable | None = None,
        checkpoint: str | None = None, resume: bool = False) -> list[float]:
    """Train `model` in place on (X, Y) in mini-batches; returns the mean loss of each epoch.

    `loss_fn(model(x), y)` is the batch loss (`loss_fn(model(x))` when Y is None); or pass
    `objective=f`, called as `f(model, x, y)` (`f(model, x)`). `backend` picks the compiler backend
    ("numpy" or "triton"); by default "triton" when the model lives on a GPU and "numpy" otherwise.
    `device` moves the model (and the optimizer's state) there first. With `checkpoint=path` the
    model, the optimizer and the data position are saved after every epoch (`avalon.distributed.save`);
    `resume=True` continues from that file when it exists, as if never interrupted. Under an
    initialized process group each rank trains on its shard (see `avalon.distributed.fit`). See the module
    docstring for the choices made.
    """
    from . import optim

    if batch_size < 1:
        raise ValueError(f"fit: batch_size must be at least 1, got {batch_size}")
    group = FitGroup.create()  # None on one process
    train_step = make_train_step(loss_fn, supervised=Y is not None, objective=objective,
                                 all_reduce=group is not None)  # a bad loss fails first
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
    _check_optimizer(optimizer, params)
    if backend is None:
        backend = "numpy" if dev == CPU else "triton"
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        done, seed, history = resume_progress(checkpoint, model, optimizer)
    else:
        done, history = 0, []
        seed = fresh_seed() if seed is None else seed
    if group is not None:
        group.broadcast_state(model)
        seed = group.shared_seed(seed)
    _set_mode(model, True)
    step = compile(train_step, backend=backend, pipeline=group.pipeline() if group is not None else None)

    pdtype = _param_dtype(model)
    rng = np.random.default_rng(seed)
    for _ in range(done if shuffle else 0):  # the permutations of the epochs already trained: the data position
        rng.permutation(n)
    local_n = group.shard_size(n) if group is not None else n
    batches = math.ceil(local_n / batch_size)
    shown = _Progress(progress and (group is None or group.rank == 0), epochs, batches)
    for epoch in range(done + 1, epochs + 1):
        order = rng.permutation(n) if shuffle else None
        if group is not None:
            order = group.shard(order if order is not None else np.arange(n))
        total, started, epoch_loss = 0.0, time.perf_counter(), None
        shown.start(epoch)
        try:
            for b in range(batches):
                lo, hi = b * batch_size, min(local_n, (b + 1) * batch_size)
                idx = order[lo:hi] if order is not None else slice(lo, hi)
                args = [_batch(Xa, idx, pdtype, dev)] + ([_batch(Ya, idx, pdtype, dev)] if Ya is not None else [])
                loss = float(step(model, optimizer, *args))
                if not math.isfinite(loss):
                    log.warning("epoch %d batch %d: loss is %s", epoch, b + 1, loss)
                total += loss * (hi - lo)
                shown.update(total / hi)
            epoch_loss = group.mean_loss(total, local_n) if group is not None else total / n  # all ranks' samples
        finally:
            seconds = time.perf_counter() - started
            shown.end(epoch, epoch_loss if epoch_loss is not None else total / local_n, seconds)
        history.append(float(epoch_loss))
        log.info("epoch %d/%d: loss %.6g (%.2fs)", epoch, epochs, history[-1], seconds)
        if checkpoint is not None:
            save_progress(checkpoint, model, optimizer, epoch, seed, history)
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


def _check_optimizer(optimizer: Any, params: list[tuple[str, Any]]) -> None:
    """An optimizer class instead of one, or one built on another model, would train nothing
    without a word (the loss stays flat): say so before the first step."""
    if isinstance(optimizer, type):
        raise TypeError(f"fit: optimizer is the class {optimizer.__name__}; pass an instance, "
                        f"{optimizer.__name__}(model, lr=...)")
    held = getattr(optimizer, "params", None)
    if not isinstance(held, dict):
        raise TypeError(f"fit: optimizer must be an avalon.optim optimizer, got {type(optimizer).__name__}")
    mine = {id(t) for _, t in params}
    if held and not any(id(t) in mine for t in held.values()):
        raise ValueError("fit: the optimizer holds none of this model's parameters (it was built on another "
                         "model, or on a copy); build it on the model you fit: Adam(model, lr=...)")
