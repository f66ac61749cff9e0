"""`optim.Rprop`: torch.optim.Rprop's update rule, as array math (it runs eagerly and inside compiled
steps like the optimizers in `avalon.optim`)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import ops
from ..ir import dtypes as dt
from ..trace import assign
from . import Optimizer, _check, _option


def _pair(key: str, v: Any) -> tuple[float, float]:
    b = tuple(float(x) for x in v)
    _check(len(b) == 2, f"invalid {key} {v}: two numbers")
    return b


class Rprop(Optimizer):
    """Resilient backpropagation (Riedmiller & Braun), as torch.optim.Rprop: per element, the step
    size grows by etaplus while the gradient keeps its sign and shrinks by etaminus when it flips
    (clamped to `step_sizes`), and the parameter moves by the step size against the gradient's sign;
    after a flip the gradient counts as zero (no move, and the next step does not see a flip):

        s = sign(g * prev);  step_size = clamp(step_size * (etaplus | etaminus | 1), *step_sizes)
        g[s < 0] = 0;  p -= sign(g) * step_size;  prev = g

    State: "prev" and "step_size", which starts at the lr of the parameter's first step (torch creates
    it then; after that the lr is not read). `etas` and `step_sizes` are plain options (they are
    pairs, not tensors), so changing one makes a compiled step trace again."""

    _floats = ("lr",)
    _flags = ("etas", "step_sizes", "maximize")
    _slots = ("prev", "step_size")
    _repr_keys = ("etas", "step_sizes")
    etas = _option("etas")
    step_sizes = _option("step_sizes")

    def __init__(self, params: Any, lr: float = 1e-2, etas: tuple[float, float] = (0.5, 1.2),
                 step_sizes: tuple[float, float] = (1e-6, 50), *, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False, differentiable: bool = False):
        super().__init__(params, dict(lr=lr, etas=_pair("etas", etas), step_sizes=_pair("step_sizes", step_sizes),
                                      foreach=foreach, maximize=maximize, differentiable=differentiable,
                                      capturable=capturable))

    def _check_group(self, values: Mapping[str, Any], opts: Mapping[str, Any]) -> None:
        etaminus, etaplus = _pair("etas", opts["etas"])
        _pair("step_sizes", opts["step_sizes"])
        _check(0.0 < etaminus < 1.0 < etaplus, f"Invalid eta values: {etaminus}, {etaplus}")

    def _add_group(self, group: dict[str, Any]) -> None:
        super()._add_group({k: _pair(k, v) if k in ("etas", "step_sizes") else v for k, v in group.items()})

    def _set_option(self, i: int, key: str, value: Any) -> None:
        super()._set_option(i, key, _pair(key, value) if key in ("etas", "step_sizes") else value)

    def _step_scalars(self, t, h, st, opts):
        return {"lr": h["lr"], "first": ops.cast(ops.eq(t, 1.0), dt.float64)}

    def _update(self, p, g, state, s, st, opts):
        etaminus, etaplus = opts["etas"]
        lo, hi = opts["step_sizes"]
        sign = ops.sign(g * state["prev"])
        factor = ops.where(ops.gt(sign, 0), etaplus, ops.where(ops.lt(sign, 0), etaminus, ops.ones_like(g)))
        size = ops.where(ops.gt(s["first"], 0.5), s["lr"], state["step_size"])  # torch: full_like(grad, lr)
        size = ops.clamp(size * factor, lo, hi)
        g = ops.where(ops.lt(sign, 0), 0.0, g)
        assign(state["step_size"], size)
        assign(state["prev"], g)
        assign(p, p - ops.sign(g) * size)
