"""`optim.SparseAdam`: torch.optim.SparseAdam's masked Adam on Avalon's dense gradients, as array math
(it runs eagerly and inside compiled steps like the optimizers in `avalon.optim`)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import ops
from ..trace import assign
from . import Optimizer, _check, _option


class SparseAdam(Optimizer):
    """Adam that updates only what the gradient touches, as torch.optim.SparseAdam on the sparse
    gradients of `nn.Embedding(..., sparse=True)`: the moments and the parameter change only in the
    rows (the first dimension's entries; a vector's elements) where the gradient is nonzero, every
    other row keeps its moments and value; the bias corrections use the parameter's step count.

    torch requires sparse gradients and refuses dense ones. Avalon's gradients are dense (a
    `sparse=True` embedding's gradient too), so a touched row is one whose gradient is not all zero:
    the rows of the looked-up indices, as torch's sparse gradient lists them, except a looked-up row
    whose gradient happens to be exactly zero, which torch updates (its moments decay) and this
    leaves alone."""

    _floats = ("lr", "betas", "eps")
    _flags = ("maximize",)
    _slots = ("exp_avg", "exp_avg_sq")
    _repr_keys = ("betas", "eps")
    betas = _option("betas")
    eps = _option("eps")

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 maximize: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, maximize=maximize))

    def _check_values(self, values: Mapping[str, Any]) -> None:
        if "lr" in values:
            _check(float(values["lr"]) > 0, f"Invalid learning rate: {values['lr']}")
        if "eps" in values:
            _check(float(values["eps"]) > 0, f"Invalid epsilon value: {values['eps']}")
        if "betas" in values:
            for i, b in enumerate(tuple(values["betas"])):
                _check(0.0 <= float(b) < 1.0, f"Invalid beta parameter at index {i}: {b}")

    def _step_scalars(self, t, h, st, opts):
        b1, b2 = h["beta1"], h["beta2"]
        step = h["lr"] * ops.sqrt(1.0 - ops.pow(b2, t)) / (1.0 - ops.pow(b1, t))
        return {"neg_step": -step, "w1": 1.0 - b1, "w2": 1.0 - b2, "eps": h["eps"]}

    def _update(self, p, g, state, s, st, opts):
        nz = ops.ne(g, 0)
        touched = ops.any(nz, dim=tuple(range(1, g.ndim)), keepdim=True) if g.ndim > 1 else nz
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m_new = (g - m) * s["w1"] + m  # torch: old + (new - old) (1 - beta), on the touched rows
        v_new = (g * g - v) * s["w2"] + v
        assign(state["exp_avg"], ops.where(touched, m_new, m))
        assign(state["exp_avg_sq"], ops.where(touched, v_new, v))
        assign(p, ops.where(touched, p + s["neg_step"] * (m_new / (ops.sqrt(v_new) + s["eps"])), p))
