"""Optimizers with `torch.optim`'s update rules: `SGD`, `Adam`, `AdamW`, `RMSprop`.

`opt = Adam(model, lr=1e-3)` collects the model's parameters (`avalon.tree.named_parameters`);
`opt.step(grads)` takes the `{dotted name: Tensor}` dict that `av.grad` returns for that model and
updates the parameters in place.

Every update is written as array math with `avalon.ops` and stored with `avalon.trace.assign`, so the
same `step` runs eagerly and inside a traced or compiled training step: under a trace, `assign`
records a state update instead of writing. For that to work the optimizer's state (step count,
learning rate, momentum buffers, moments) lives in Tensors the optimizer holds (as `Buffer`s, so they
are never mistaken for trainable parameters); a traced step that takes the optimizer as an argument
gets them as graph inputs and writes them back through state updates. State is created when the
optimizer is built rather than lazily on the first step, so the first and later steps share one
traced signature; torch's "first step initialises the buffer" rules are reproduced with arithmetic.

Scalars that depend on the step (Adam's bias corrections) are computed from the step-count tensor
in float64 and cast to each parameter's dtype, which is what torch does with its Python floats.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import ops
from .ir import dtypes as dt
from .tensor import Buffer, Tensor
from .trace import assign, current_trace
from .tree import named_parameters

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "RMSprop"]


def _scalar_buffer(value: Any, dtype: dt.DType, device: Any) -> Buffer:
    return Buffer(np.asarray(value, dtype=dtype.np), dtype=dtype, device=device)


class Optimizer:
    """Base class: holds the parameters, the step count, the learning rate and per-parameter state.

    Subclasses name their per-parameter buffers in `_slots` and implement `_update`.
    """

    _slots: tuple[str, ...] = ()

    def __init__(self, model: Any, lr: float):
        _check(lr >= 0, f"invalid learning rate {lr}")
        self.params: dict[str, Tensor] = dict(named_parameters(model))
        if not self.params:
            raise ValueError(f"{type(self).__name__}: the model has no parameters (no floating-point Tensors "
                             "that are not Buffers were found on it)")
        device = next(iter(self.params.values())).device
        # step count and learning rate are tensors so that a compiled step reads their current values
        self.step_count = _scalar_buffer(0, dt.int64, device)
        self.lr_t = _scalar_buffer(lr, dt.float64, device)
        self.state: dict[str, dict[str, Buffer]] = {
            name: {s: Buffer(np.zeros(p.shape, dtype=p.dtype.np), dtype=p.dtype, device=p.device)
                   for s in self._active_slots()}
            for name, p in self.params.items()}

    # -- public ------------------------------------------------------------------------------

    @property
    def lr(self) -> float:
        """The learning rate; setting it (a scheduler) takes effect in compiled steps too."""
        return float(self.lr_t)

    @lr.setter
    def lr(self, value: float) -> None:
        _check(value >= 0, f"invalid learning rate {value}")
        assign(self.lr_t, Tensor(np.float64(value), dtype=dt.float64))

    @property
    def steps(self) -> int:
        """How many steps have been taken."""
        return int(self.step_count)

    def step(self, grads: Mapping[str, Any] | Any) -> None:
        """Update the parameters in place from `grads` ({dotted name: gradient}, as `av.grad` returns
        for a model; a bare Tensor when the optimizer was built on a single Tensor). Parameters
        without a gradient are left alone, as torch skips parameters whose `.grad` is None."""
        grads = self._check_grads(grads)
        self._check_trace()
        t = ops.add(self.step_count, 1)
        assign(self.step_count, t)
        scalars: dict[dt.DType, dict[str, Tensor]] = {}
        shared = self._step_scalars(ops.cast(t, dt.float64))
        for name, p in self.params.items():
            g = grads.get(name)
            if g is None:
                continue
            g = ops.cast(g, p.dtype)
            if p.dtype not in scalars:  # cast the float64 scalars once per dtype
                scalars[p.dtype] = {k: ops.cast(v, p.dtype) for k, v in shared.items()}
            self._update(p, g, self.state[name], scalars[p.dtype])

    def state_dict(self) -> dict[str, Tensor]:
        """The optimizer's state as a flat dict of Tensors (saveable with `av.save`)."""
        out: dict[str, Tensor] = {"step": self.step_count, "lr": self.lr_t}
        for name, slots in self.state.items():
            for s, buf in slots.items():
                out[f"state.{name}.{s}"] = buf
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned; checks every key and shape before writing anything."""
        mine = self.state_dict()
        missing, unexpected = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
        if missing or unexpected:
            raise KeyError(f"optimizer state mismatch: missing {missing}, unexpected {unexpected}")
        for k, v in state.items():
            if tuple(np.shape(v)) != mine[k].shape:
                raise ValueError(f"optimizer state {k!r}: shape {tuple(np.shape(v))} != {mine[k].shape}")
        for k, v in state.items():
            assign(mine[k], Tensor(v, dtype=mine[k].dtype))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self._options().items())
        return f"{type(self).__name__}(lr={self.lr:g}, {opts})" if opts else f"{type(self).__name__}(lr={self.lr:g})"

    # -- for subclasses ----------------------------------------------------------------------

    def _active_slots(self) -> tuple[str, ...]:
        return self._slots

    def _options(self) -> dict[str, Any]:
        return {}

    def _step_scalars(self, t: Tensor) -> dict[str, Tensor]:
        """float64 scalars shared by all parameters this step (`t`: the new step count)."""
        return {"lr": self.lr_t}

    def _update(self, p: Tensor, g: Tensor, state: dict[str, Buffer], s: dict[str, Tensor]) -> None:
        raise NotImplementedError

    # -- checks ------------------------------------------------------------------------------

    def _check_grads(self, grads: Any) -> Mapping[str, Any]:
        if not isinstance(grads, Mapping):
            if list(self.params) == [""]:
                return {"": grads}
            raise TypeError(f"{type(self).__name__}.step expects a dict {{parameter name: gradient}} as "
                            f"av.grad returns for a model, got {type(grads).__name__}")
        unknown = [k for k in grads if k not in self.params]
        if unknown:
            raise KeyError(f"gradients for unknown parameters {unknown}; the optimizer holds "
                           f"{list(self.params)[:8]}{' ...' if len(self.params) > 8 else ''}")
        for k, g in grads.items():
            if g is not None and tuple(np.shape(g) if not isinstance(g, Tensor) else g.shape) != self.params[k].shape:
                shape = g.shape if isinstance(g, Tensor) else np.shape(g)
                raise ValueError(f"gradient of {k!r} has shape {tuple(shape)}, the parameter {self.params[k].shape}")
        return grads

    def _check_trace(self) -> None:
        """Under a trace the state must be a graph input, or each run would read stale constants."""
        tr = current_trace()
        if tr is None:
            return
        v = tr.leaves.get(id(self.step_count))
        if v is None or v not in tr.graph.inputs:
            raise RuntimeError(
                f"{type(self).__name__}.step was called inside a traced function that did not receive the "
                "optimizer as an argument; pass it in (e.g. `def step(model, opt, x, y)`) so that its state "
                "(step count, moments) becomes graph inputs that every call reads afresh")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def _lerp(a: Tensor, b: Tensor, w: float) -> Tensor:
    """torch.lerp(a, b, w), with torch's two formulas (exact at both ends)."""
    if w < 0.5:
        return a + w * (b - a)
    return b - (b - a) * (1.0 - w)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov and L2 weight decay."""

    def __init__(self, model: Any, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        _check(momentum >= 0, f"invalid momentum {momentum}")
        _check(weight_decay >= 0, f"invalid weight_decay {weight_decay}")
        _check(not nesterov or (momentum > 0 and dampening == 0),
               "Nesterov momentum requires a momentum and zero dampening")
        self.momentum, self.dampening, self.nesterov, self.weight_decay = momentum, dampening, nesterov, weight_decay
        super().__init__(model, lr)

    def _active_slots(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum != 0 else ()

    def _options(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "dampening": self.dampening, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def _step_scalars(self, t: Tensor) -> dict[str, Tensor]:
        s = {"lr": self.lr_t}
        if self.momentum != 0 and self.dampening != 0:
            s["first"] = ops.cast(ops.eq(t, 1.0), dt.float64)  # torch starts the buffer at the grad
        return s

    def _update(self, p, g, state, s):
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        if self.momentum != 0:
            new = g if self.dampening == 0 else (1.0 - self.dampening) * g
            buf = state["momentum_buffer"] * self.momentum + new
            if "first" in s:
                buf = ops.where(s["first"], g, buf)
            assign(state["momentum_buffer"], buf)
            g = g + self.momentum * buf if self.nesterov else buf
        assign(p, p - s["lr"] * g)


class Adam(Optimizer):
    """Adam (Kingma & Ba), with optional L2 weight decay and AMSGrad, as torch.optim.Adam."""

    decoupled = False

    def __init__(self, model: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False):
        _check(eps >= 0, f"invalid eps {eps}")
        _check(0 <= betas[0] < 1 and 0 <= betas[1] < 1, f"invalid betas {betas}")
        _check(weight_decay >= 0, f"invalid weight_decay {weight_decay}")
        self.betas, self.eps, self.weight_decay, self.amsgrad = tuple(betas), eps, weight_decay, amsgrad
        super().__init__(model, lr)

    def _active_slots(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def _options(self) -> dict[str, Any]:
        return {"betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay, "amsgrad": self.amsgrad}

    def _step_scalars(self, t: Tensor) -> dict[str, Tensor]:
        b1, b2 = self.betas
        bc1 = 1.0 - ops.pow(b1, t)
        bc2 = 1.0 - ops.pow(b2, t)
        s = {"step_size": self.lr_t / bc1, "bc2_sqrt": ops.sqrt(bc2)}
        if self.decoupled and self.weight_decay != 0:
            s["decay"] = 1.0 - self.lr_t * self.weight_decay
        return s

    def _update(self, p, g, state, s):
        b1, b2 = self.betas
        pv = p  # the value the update starts from (AdamW decays it first)
        if self.weight_decay != 0:
            if self.decoupled:
                pv = p * s["decay"]
            else:
                g = g + self.weight_decay * p
        m = _lerp(state["exp_avg"], g, 1.0 - b1)
        v = state["exp_avg_sq"] * b2 + (1.0 - b2) * (g * g)
        assign(state["exp_avg"], m)
        assign(state["exp_avg_sq"], v)
        if self.amsgrad:
            v = ops.maximum(state["max_exp_avg_sq"], v)
            assign(state["max_exp_avg_sq"], v)
        denom = ops.sqrt(v) / s["bc2_sqrt"] + self.eps
        assign(p, pv - s["step_size"] * (m / denom))


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW."""

    decoupled = True

    def __init__(self, model: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(model, lr, betas, eps, weight_decay, amsgrad)


class RMSprop(Optimizer):
    """RMSprop (Hinton), optionally centered and with momentum, as torch.optim.RMSprop."""

    def __init__(self, model: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        _check(eps >= 0, f"invalid eps {eps}")
        _check(alpha >= 0, f"invalid alpha {alpha}")
        _check(momentum >= 0, f"invalid momentum {momentum}")
        _check(weight_decay >= 0, f"invalid weight_decay {weight_decay}")
        self.alpha, self.eps, self.weight_decay = alpha, eps, weight_decay
        self.momentum, self.centered = momentum, centered
        super().__init__(model, lr)

    def _active_slots(self) -> tuple[str, ...]:
        return (("square_avg",) + (("momentum_buffer",) if self.momentum > 0 else ())
                + (("grad_avg",) if self.centered else ()))

    def _options(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "eps": self.eps, "weight_decay": self.weight_decay,
                "momentum": self.momentum, "centered": self.centered}

    def _update(self, p, g, state, s):
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        sq = state["square_avg"] * self.alpha + (1.0 - self.alpha) * (g * g)
        assign(state["square_avg"], sq)
        if self.centered:
            ga = _lerp(state["grad_avg"], g, 1.0 - self.alpha)
            assign(state["grad_avg"], ga)
            avg = ops.sqrt(sq - ga * ga)
        else:
            avg = ops.sqrt(sq)
        avg = avg + self.eps
        if self.momentum > 0:
            buf = state["momentum_buffer"] * self.momentum + g / avg
            assign(state["momentum_buffer"], buf)
            assign(p, p - s["lr"] * buf)
        else:
            assign(p, p - s["lr"] * (g / avg))
