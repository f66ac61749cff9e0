"""`optim.Adadelta`: torch.optim.Adadelta's update rule, as array math (it runs eagerly and inside
compiled steps like the optimizers in `avalon.optim`)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..trace import assign
from . import Optimizer, _check, _option


class Adadelta(Optimizer):
    """Adadelta (Zeiler, 2012) with optional L2 weight decay, as torch.optim.Adadelta:

        g += weight_decay * p;  v = rho v + (1 - rho) g^2
        delta = sqrt(u + eps) / sqrt(v + eps) * g;  u = rho u + (1 - rho) delta^2;  p -= lr delta

    (`v`: "square_avg", `u`: "acc_delta", both starting at zero). lr defaults to 1.0, as in torch."""

    _floats = ("lr", "rho", "eps", "weight_decay")
    _flags = ("maximize",)
    _slots = ("square_avg", "acc_delta")
    _repr_keys = ("rho", "eps", "weight_decay")
    rho = _option("rho")
    eps = _option("eps")
    weight_decay = _option("weight_decay")

    def __init__(self, params: Any, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0,
                 foreach: bool | None = None, *, capturable: bool = False, maximize: bool = False,
                 differentiable: bool = False):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, foreach=foreach,
                                      capturable=capturable, maximize=maximize, differentiable=differentiable))

    def _check_values(self, values: Mapping[str, Any]) -> None:
        super()._check_values(values)
        if "rho" in values:
            _check(0.0 <= float(values["rho"]) <= 1.0, f"Invalid rho value: {values['rho']}")

    def _rules(self, key: str, value: Any) -> dict[str, bool]:
        return {"weight_decay": value != 0} if key == "weight_decay" else {}

    def _step_scalars(self, t, h, st, opts):
        s = {"lr": h["lr"], "rho": h["rho"], "w": 1.0 - h["rho"], "eps": h["eps"]}
        if st["weight_decay"]:
            s["weight_decay"] = h["weight_decay"]
        return s

    def _update(self, p, g, state, s, st, opts):
        if st["weight_decay"]:
            g = g + s["weight_decay"] * p
        v = state["square_avg"] * s["rho"] + s["w"] * (g * g)
        assign(state["square_avg"], v)
        delta = (state["acc_delta"] + s["eps"]).sqrt() / (v + s["eps"]).sqrt() * g
        assign(state["acc_delta"], state["acc_delta"] * s["rho"] + s["w"] * (delta * delta))
        assign(p, p - s["lr"] * delta)
