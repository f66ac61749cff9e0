"""`optim.Adafactor`: torch.optim.Adafactor's update rule, as array math (it runs eagerly and inside
compiled steps like the optimizers in `avalon.optim`)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Buffer
from ..trace import assign
from . import Optimizer, _check, _option


def _eps(key: str, v: Any) -> tuple[float | None, float]:
    e = tuple(v)
    _check(len(e) == 2, f"invalid {key} {v}: (eps1 or None, eps2)")
    return (None if e[0] is None else float(e[0]), float(e[1]))


def _finfo_eps(dtype: dt.DType) -> float:
    """torch.finfo(dtype).eps (bfloat16 is stored as float32, so numpy's finfo would be float32's)."""
    return 2.0 ** -7 if dtype is dt.bfloat16 else float(np.finfo(dtype.np).eps)


def _lerp_t(a: Any, b: Any, w: Any, low: Any) -> Any:
    """torch.lerp(a, b, w) for a weight known only at run time: its formula for |w| < 0.5 where `low`."""
    return ops.where(low, a + w * (b - a), b - (b - a) * (1.0 - w))


class Adafactor(Optimizer):
    """Adafactor (Shazeer & Stern), as torch.optim.Adafactor. The second moment of a parameter of two or
    more dimensions is factored over its last two: a row variance ("row_var", the last dimension
    reduced to 1) and a column variance ("col_var", the second to last reduced), whose outer product
    over the rows' mean estimates it; a vector keeps it whole ("variance"). At step t:

        beta = t^beta2_decay;  rho = min(lr, 1 / sqrt(t));  alpha = max(eps2, rms(p)) rho
        p *= 1 - lr weight_decay;  row_var, col_var (or variance) lerp towards mean(g^2) by beta
        u = g / sqrt(max(row_var col_var / max(mean(row_var), eps1), eps1^2))
        p -= alpha / max(1, rms(u) / d) * u

    eps1 None (the default) is the parameter dtype's machine epsilon. `eps` is a plain option (its
    first element may be None), so changing it makes a compiled step trace again; lr, beta2_decay, d
    and weight_decay are tensors, as other optimizers' floats."""

    _floats = ("lr", "beta2_decay", "d", "weight_decay")
    _flags = ("eps", "maximize")
    _slots = ("row_var", "col_var", "variance")
    _repr_keys = ("beta2_decay", "eps", "d", "weight_decay")
    beta2_decay = _option("beta2_decay")
    eps = _option("eps")
    d = _option("d")
    weight_decay = _option("weight_decay")

    def __init__(self, params: Any, lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: bool | None = None, maximize: bool = False):
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=_eps("eps", eps), d=d,
                                      weight_decay=weight_decay, foreach=foreach, maximize=maximize))

    def _check_values(self, values: Mapping[str, Any]) -> None:
        v = {k: float(values[k]) for k in self._floats if k in values}
        _check(v.get("lr", 0.0) >= 0, f"Learning rate should be >= 0 but is: {v.get('lr')}")
        _check(v.get("beta2_decay", 0.0) <= 0, f"beta2_decay should be <= 0 but is: {v.get('beta2_decay')}")
        _check(v.get("d", 1.0) >= 1, f"Clipping threshold d should be >= 1 but is: {v.get('d')}")
        _check(v.get("weight_decay", 0.0) >= 0, f"weight_decay should be >= 0 but is: {v.get('weight_decay')}")

    def _check_group(self, values: Mapping[str, Any], opts: Mapping[str, Any]) -> None:
        eps1, eps2 = _eps("eps", opts["eps"])
        _check(eps1 is None or eps1 >= 0, f"epsilon1 should be >= 0 but is: {eps1}")
        _check(eps2 >= 0, f"epsilon2 should be >= 0 but is: {eps2}")

    def _add_group(self, group: dict[str, Any]) -> None:
        super()._add_group({k: _eps(k, v) if k == "eps" else v for k, v in group.items()})

    def _set_option(self, i: int, key: str, value: Any) -> None:
        super()._set_option(i, key, _eps(key, value) if key == "eps" else value)

    def _rules(self, key: str, value: Any) -> dict[str, bool]:
        return {"weight_decay": value != 0} if key == "weight_decay" else {}

    def _active_slots(self, structure: Mapping[str, bool], opts: Mapping[str, Any]) -> tuple[str, ...]:
        return ()  # which slots depends on the parameter's shape: `_ensure_slots`, `load_state_dict`

    def _ensure_slots(self, i: int) -> None:
        for n in self.param_groups[i]._names:
            p, state = self.params[n], self.state[n]
            if p.ndim > 1:
                shapes = {"row_var": p.shape[:-1] + (1,), "col_var": p.shape[:-2] + (1, p.shape[-1])}
            else:
                shapes = {"variance": p.shape}
            for s, shape in shapes.items():
                if s not in state:
                    state[s] = Buffer(np.zeros(shape, dtype=p.dtype.np), dtype=p.dtype, device=p.device)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not (isinstance(state.get("param_groups"), list) and isinstance(state.get("state"), Mapping)):
            missing = sorted(k for n, slots in self.state.items() for s in slots
                             if (k := f"state.{n}.{s}") not in state)
            if missing:
                raise KeyError(f"optimizer state mismatch: missing {missing}, unexpected []")
        super().load_state_dict(state)

    def _step_scalars(self, t, h, st, opts):
        beta = ops.pow(t, h["beta2_decay"])
        s = {"beta": beta, "low": ops.cast(ops.lt(ops.abs(beta), 0.5), dt.float64),
             "rho": ops.minimum(h["lr"], 1.0 / ops.sqrt(t)), "d": h["d"]}
        if st["weight_decay"]:
            s["decay"] = 1.0 - h["lr"] * h["weight_decay"]
        return s

    def _update(self, p, g, state, s, st, opts):
        eps1, eps2 = opts["eps"]
        eps1 = _finfo_eps(p.dtype) if eps1 is None else eps1
        numel = float(np.prod(p.shape, dtype=np.float64))
        alpha = ops.maximum(ops.vector_norm(p) / numel ** 0.5, eps2) * s["rho"]
        pv = p * s["decay"] if st["weight_decay"] else p
        low = ops.gt(s["low"], 0.5)
        if p.ndim > 1:
            row = _lerp_t(state["row_var"], ops.square(ops.vector_norm(g, dim=-1, keepdim=True)) / g.shape[-1],
                          s["beta"], low)
            col = _lerp_t(state["col_var"], ops.square(ops.vector_norm(g, dim=-2, keepdim=True)) / g.shape[-2],
                          s["beta"], low)
            assign(state["row_var"], row)
            assign(state["col_var"], col)
            var = (row * col) / ops.clamp(ops.mean(row, dim=-2, keepdim=True), min=eps1)
        else:
            var = _lerp_t(state["variance"], g * g, s["beta"], low)
            assign(state["variance"], var)
        u = ops.rsqrt(ops.clamp(var, min=eps1 * eps1)) * g
        denom = ops.maximum(ops.vector_norm(u) / (numel ** 0.5 * s["d"]), 1.0)
        assign(p, pv + u * (-alpha / denom))
