"""`optim.Muon`: torch.optim.Muon's update rule, as array math (it runs eagerly and inside compiled
steps like the optimizers in `avalon.optim`)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .. import ops
from ..ir import dtypes as dt
from ..trace import assign
from . import Optimizer, _check, _lerp, _option


def _bf16(x: Any) -> Any:
    """x (float32) rounded to bfloat16, kept in float32: torch's bfloat16 ops compute in float32 and
    round once, which this reproduces step by step on every backend."""
    return ops.cast(ops.cast(x, dt.bfloat16), dt.float32)


def _newton_schulz(g: Any, coefficients: tuple[float, float, float], steps: int, eps: Any) -> Any:
    """torch's `_zeropower_via_newtonschulz`: the quintic Newton-Schulz iteration X <- a X + (b A + c A^2) X,
    A = X X^T, from X = G / |G|_F (G transposed to be wide), in bfloat16 as torch runs it (each
    matmul and addmm accumulated in float32 and rounded to bfloat16 once). A float32 result that
    holds bfloat16 values."""
    a, b, c = coefficients
    x = ops.cast(ops.cast(g, dt.bfloat16), dt.float32)
    tall = g.shape[0] > g.shape[1]
    if tall:
        x = ops.t(x)
    norm = _bf16(ops.sqrt(ops.sum(x * x)))
    x = _bf16(x / ops.maximum(norm, _bf16(ops.cast(eps, dt.float32))))
    for _ in range(steps):
        gram = _bf16(ops.mm(x, ops.t(x)))
        update = _bf16(gram * b + ops.mm(gram, gram) * c)
        x = _bf16(x * a + ops.mm(update, x))
    return ops.t(x) if tall else x


def _adjust_lr_ratio(adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    """torch's `_adjust_lr`: the factor of the lr for a parameter of this shape."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


class Muon(Optimizer):
    """Muon (Jordan et al.), as torch.optim.Muon: momentum SGD whose update, a matrix, is replaced by
    its orthogonalization (`ns_steps` Newton-Schulz iterations with `ns_coefficients`, in bfloat16),
    with decoupled weight decay and an lr scaled for the matrix's shape (`adjust_lr_fn`):

        buf = lerp(buf, g, 1 - momentum);  u = lerp(g, buf, momentum) if nesterov else buf
        p *= 1 - lr weight_decay;  p -= lr * ratio(shape) * NS(u)

    Only 2-d parameters, as torch (the others go to another optimizer, AdamW say); state
    "momentum_buffer". `ns_coefficients`, `ns_steps` and `adjust_lr_fn` are plain options (they shape
    the graph); lr, weight_decay, momentum and eps are tensors, as other optimizers' floats. torch's
    Muon takes no maximize, foreach, capturable or differentiable, and neither does this."""

    _floats = ("lr", "weight_decay", "momentum", "eps")
    _flags = ("nesterov", "ns_coefficients", "ns_steps", "adjust_lr_fn")
    _slots = ("momentum_buffer",)
    _repr_keys = ("weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn")
    weight_decay = _option("weight_decay")
    momentum = _option("momentum")
    nesterov = _option("nesterov")
    eps = _option("eps")

    def __init__(self, params: Any, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps,
                                      adjust_lr_fn=adjust_lr_fn))

    def _check_values(self, values: Mapping[str, Any]) -> None:
        if "lr" in values:
            _check(float(values["lr"]) >= 0, f"Learning rate should be >= 0 but is: {values['lr']}")
        if "momentum" in values:
            _check(float(values["momentum"]) >= 0, f"momentum should be >= 0 but is: {values['momentum']}")
        if "weight_decay" in values:
            _check(float(values["weight_decay"]) >= 0, f"weight decay should be >= 0 but is: {values['weight_decay']}")

    def _check_group(self, values: Mapping[str, Any], opts: Mapping[str, Any]) -> None:
        fn = opts["adjust_lr_fn"]
        _check(fn in (None, "original", "match_rms_adamw"), f"Adjust learning rate function {fn} is not supported")
        _check(len(tuple(opts["ns_coefficients"])) == 3, "Coefficients must be a tuple of exactly 3 values")
        _check(int(opts["ns_steps"]) < 100, "Number of steps must be less than 100 for computational efficiency")

    def _set_option(self, i: int, key: str, value: Any) -> None:
        super()._set_option(i, key, tuple(float(c) for c in value) if key == "ns_coefficients" else value)

    def _add_group(self, group: dict[str, Any]) -> None:
        for _, t in group["params"]:
            if t.ndim != 2:
                raise ValueError(f"Muon only supports 2D parameters whereas we found a parameter with size: "
                                 f"{tuple(t.shape)}")
        super()._add_group({k: tuple(float(c) for c in v) if k == "ns_coefficients" else v for k, v in group.items()})

    def _rules(self, key: str, value: Any) -> dict[str, bool]:
        if key == "weight_decay":
            return {"weight_decay": value != 0}
        if key == "momentum":  # which of lerp's formulas each lerp takes (weights 1 - momentum, momentum)
            return {"lerp_low": 1.0 - value < 0.5, "nesterov_low": value < 0.5}
        return {}

    def _step_scalars(self, t, h, st, opts):
        w = 1.0 - h["momentum"]
        s = {"lr": h["lr"], "w": w, "wc": 1.0 - w, "momentum": h["momentum"], "mc": 1.0 - h["momentum"],
             "eps": h["eps"]}
        if st["weight_decay"]:
            s["decay"] = 1.0 - h["lr"] * h["weight_decay"]
        return s

    def _update(self, p, g, state, s, st, opts):
        buf = _lerp(state["momentum_buffer"], g, s["w"], s["wc"], st["lerp_low"])
        assign(state["momentum_buffer"], buf)
        u = _lerp(g, buf, s["momentum"], s["mc"], st["nesterov_low"]) if opts["nesterov"] else buf
        o = ops.cast(_newton_schulz(u, tuple(opts["ns_coefficients"]), int(opts["ns_steps"]), s["eps"]), p.dtype)
        pv = p * s["decay"] if st["weight_decay"] else p
        assign(p, pv + (-(s["lr"] * _adjust_lr_ratio(opts["adjust_lr_fn"], p.shape))) * o)
