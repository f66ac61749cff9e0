"""`optim.ASGD`: torch.optim.ASGD's update rule, as array math (it runs eagerly and inside compiled
steps like the optimizers in `avalon.optim`)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import ops
from ..ir import dtypes as dt
from ..trace import assign
from . import Optimizer, _check, _option, _scalar_buffer


class ASGD(Optimizer):
    """Averaged stochastic gradient descent (Polyak & Juditsky), as torch.optim.ASGD:

        g += weight_decay * p;  p = p * (1 - lambd * eta) - eta * g
        ax = p if mu == 1 else ax + (p - ax) * mu
        eta = lr / (1 + lambd * lr * t)^alpha;  mu = 1 / max(1, t - t0)

    `ax` (state "ax") is the running average of the iterates. eta and mu depend only on the step and
    the lr, so, as NAdam's mu_product, they are kept once per group and step class (whose parameters
    took the same steps) rather than per parameter, in float32 scalars as torch keeps them (the
    default dtype: they round every step as torch's do); eta starts at the lr of the parameter's
    first step. In `state_dict()`: "param_groups.{i}.eta"/"mu" for the default class,
    "state.{name}.eta"/"mu" for another."""

    _floats = ("lr", "lambd", "alpha", "t0", "weight_decay")
    _flags = ("maximize",)
    _slots = ("ax",)
    _repr_keys = ("lambd", "alpha", "t0", "weight_decay")
    _class_state = {"eta": 0.0, "mu": 1.0}
    lambd = _option("lambd")
    alpha = _option("alpha")
    t0 = _option("t0")
    weight_decay = _option("weight_decay")

    def __init__(self, params: Any, lr: float = 1e-2, lambd: float = 1e-4, alpha: float = 0.75, t0: float = 1e6,
                 weight_decay: float = 0, foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False):
        super().__init__(params, dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay,
                                      foreach=foreach, maximize=maximize, differentiable=differentiable,
                                      capturable=capturable))

    def _check_values(self, values: Mapping[str, Any]) -> None:  # torch checks only these two
        if "lr" in values:
            _check(float(values["lr"]) >= 0, f"Invalid learning rate: {values['lr']}")
        if "weight_decay" in values:
            _check(float(values["weight_decay"]) >= 0, f"Invalid weight_decay value: {values['weight_decay']}")

    def _rules(self, key: str, value: Any) -> dict[str, bool]:
        return {"weight_decay": value != 0} if key == "weight_decay" else {}

    def _add_group(self, group: dict[str, Any]) -> None:
        super()._add_group(group)
        h, device = self.hyperparameters[-1], self.step_count.device
        h["eta"] = _scalar_buffer(float(h["lr"]), dt.float32, device)
        h["mu"] = _scalar_buffer(1.0, dt.float32, device)

    def _step_scalars(self, t, h, st, opts):
        first = ops.eq(t, 1.0)  # torch creates eta = lr and mu = 1 at the parameter's first step
        eta = ops.cast(ops.where(first, ops.cast(h["lr"], dt.float32), h["eta"]), dt.float64)
        mu = ops.cast(ops.where(first, 1.0, h["mu"]), dt.float64)
        lr, lambd = h["lr"], h["lambd"]
        assign(h["eta"], ops.cast(lr / ops.pow(1.0 + lambd * lr * t, h["alpha"]), dt.float32))
        assign(h["mu"], ops.cast(1.0 / ops.maximum(t - h["t0"], 1.0), dt.float32))
        s = {"decay": 1.0 - lambd * eta, "eta": eta, "mu": mu, "average": ops.cast(ops.ne(mu, 1.0), dt.float64)}
        if st["weight_decay"]:
            s["weight_decay"] = h["weight_decay"]
        return s

    def _update(self, p, g, state, s, st, opts):
        if st["weight_decay"]:
            g = g + s["weight_decay"] * p
        pv = p * s["decay"] - s["eta"] * g
        ax = state["ax"]
        assign(state["ax"], ops.where(ops.gt(s["average"], 0.5), ax + (pv - ax) * s["mu"], pv))
        assign(p, pv)
