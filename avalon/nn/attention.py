"""`F.scaled_dot_product_attention`, as a composite of primitives.

    softmax(Q Kᵀ · scale + mask) V

written with matmul, mul, a mask (`where` on a boolean mask or `add` of a float one; causal masks
from `iota`, so nothing is a captured array), the stable softmax (max, sub, exp, sum, div) and
dropout. Autodiff and the passes see through it like any composite; the fusion policy can
recognize this shape as one attention kernel. Semantics follow torch's function: `attn_mask`
boolean means "may attend" (True takes part), a float mask is added to the scores, `is_causal`
masks the upper triangle (query i attends keys j <= i, aligned top-left as torch does), `scale`
defaults to 1/sqrt(E), and `dropout_p` is applied as given (torch's functional form does not look
at a training flag either). A query row with every key masked gives zeros (and zero gradients), as
torch's kernels do (torch >= 2.5; the softmax alone would give nan): the row attends every key and its
output is zeroed, which only costs a reduction of the mask where the mask's values are not known.
"""
from __future__ import annotations

import math
from typing import Any

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def scaled_dot_product_attention(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> Tensor:
    """torch.nn.functional.scaled_dot_product_attention: query (..., L, E), key (..., S, E), value
    (..., S, Ev) -> (..., L, Ev)."""
    from .functional import dropout, softmax
    q, k, v = _t(query), _t(key), _t(value)
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"scaled_dot_product_attention: query, key and value need at least 2 dims, got "
                         f"{q.shape}, {k.shape}, {v.shape}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: query {q.shape}, key {k.shape} and value {v.shape} do "
                         "not fit ((..., L, E), (..., S, E), (..., S, Ev))")
    if enable_gqa and q.ndim >= 3 and (k.shape[-3] != q.shape[-3] or v.shape[-3] != q.shape[-3]):
        hq, hk, hv = q.shape[-3], k.shape[-3], v.shape[-3]  # torch's GQA: query head h reads key/value head
        if hq % hk or hq % hv:  # h // (Hq / Hkv), each key/value head repeated in place
            raise ValueError(f"scaled_dot_product_attention: the number of query heads ({hq}) must be a multiple "
                             f"of the number of key ({hk}) and value ({hv}) heads")
        k, v = ops.repeat_interleave(k, hq // hk, dim=-3), ops.repeat_interleave(v, hq // hv, dim=-3)
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: pass either attn_mask or is_causal=True, not both")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"scaled_dot_product_attention: dropout_p must be in [0, 1], got {dropout_p}")
    L, S = q.shape[-2], k.shape[-2]
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    scores = ops.mul(ops.matmul(q, ops.transpose(k, -2, -1)), s)
    if is_causal:
        keep = ops.le(ops.sub(ops.iota((L, S), 1), ops.iota((L, S), 0)), 0)  # key j <= query i
        scores = ops.masked_fill(scores, ops.logical_not(keep), float("-inf"))
    dead = None
    if attn_mask is not None and not is_causal:
        m = _t(attn_mask)
        if m.dtype not in (dt.bool_, dt.float32, q.dtype):  # torch's rule (an integer mask was added as a bias)
            raise ops.fail(RuntimeError(
                f"scaled_dot_product_attention: Expected attn_mask dtype to be bool or float or to match query "
                f"dtype, but got attn_mask.dtype: {m.dtype.name} and query.dtype: {q.dtype.name} instead."))
        # a query row that may attend no key: torch's kernels give zeros (and zero gradients) there, where
        # the softmax of a row of -inf is nan. Such rows attend every key instead and are zeroed after
        dead = ops.logical_not(ops.any(m if m.dtype is dt.bool_ else ops.ne(m, float("-inf")), -1, keepdim=True))
        if not dead.is_traced and not bool(dead.numpy().any()):
            dead = None  # (known to have none: no extra work)
        elif dead is not None:
            m = ops.logical_or(m, dead) if m.dtype is dt.bool_ else ops.masked_fill(m, dead, 0.0)
        if m.dtype is dt.bool_:
            scores = ops.masked_fill(scores, ops.logical_not(m), float("-inf"))
        else:
            scores = ops.add(scores, ops.cast(m, scores.dtype))
    attn = softmax(scores, -1)
    if dropout_p > 0.0:
        attn = dropout(attn, dropout_p)
    out = ops.matmul(attn, v)
    return out if dead is None else ops.masked_fill(out, dead, 0.0)
