"""ONNX's transformer ops (Attention, RotaryEmbedding, SwiGLU, LinearAttention, CausalConvWithState)
as Avalon ops."""
from __future__ import annotations

import math
from typing import Any

from .. import ops
from ..ir import dtypes as dt
from ..nn import functional as F
from ..tensor import Tensor
from .table import Node, T, onnx_op

_SOFTMAX_TYPES = {1: dt.float32, 10: dt.float16, 11: dt.float64, 16: dt.bfloat16}


def _heads(x: Tensor, n: int) -> Tensor:
    """(batch, seq, heads * size) -> (batch, heads, seq, size)."""
    b, s, hidden = x.shape
    return ops.permute(ops.reshape(x, (b, s, n, hidden // n)), (0, 2, 1, 3))


def _frontier(q: int, kv: int, offset: Any, left: int, right: int, causal: bool, like: Tensor) -> Tensor | None:
    """The additive (0 / -inf) bias of the causal and sliding-window bounds: query i sits at
    absolute position i + offset (offset: an int, or a (batch,) tensor giving a (batch, 1, q, kv)
    bias) and attends key j iff j <= pos (causal), pos - left <= j, j <= pos + right (each bound
    that is >= 0)."""
    if not causal and left < 0 and right < 0:
        return None
    i, j = ops.iota((q, kv), 0, dt.int64), ops.iota((q, kv), 1, dt.int64)
    if isinstance(offset, Tensor):
        i = ops.add(i, ops.reshape(ops.cast(offset, dt.int64), (-1, 1, 1, 1)))
    else:
        i = ops.add(i, offset)
    diff = ops.sub(i, j)  # how far key j lies behind the query
    ok = ops.full((), True, dt.bool_)
    for on, cond in ((causal, lambda: ops.ge(diff, 0)), (left >= 0, lambda: ops.le(diff, left)),
                     (right >= 0, lambda: ops.ge(diff, -right))):
        if on:
            ok = ops.logical_and(ok, cond())
    return ops.where(ok, ops.full((), 0.0, like.dtype), ops.full((), -math.inf, like.dtype))


@onnx_op("Attention")
def attention(node: Node, q: Any, k: Any, v: Any, mask: Any = None, past_k: Any = None, past_v: Any = None,
              nonpad: Any = None) -> Any:
    """Scaled dot-product attention as the spec (opsets 23-25) builds it: Q and K each scaled by
    sqrt(scale); softcap before the bias; the bias = bool or float mask (the mask's last axis padded
    to the total kv length) + causal / window frontier (offset by the past length, or per batch by
    nonpad_kv_seqlen - q_len) + padding of keys past nonpad_kv_seqlen; GQA repeats each kv head;
    a query row whose bias is all -inf gives zeros (Y and mode-3 output alike)."""
    q, k, v = T(q), T(k), T(v)
    three_d = q.ndim == 3
    if three_d:
        hq, hkv = node.attr("q_num_heads"), node.attr("kv_num_heads")
        if hq is None or hkv is None:
            raise node.unsupported("3-d inputs need the q_num_heads and kv_num_heads attributes")
        q, k, v = _heads(q, hq), _heads(k, hkv), _heads(v, hkv)
    if (past_k is None) != (past_v is None):
        raise node.unsupported("past_key and past_value must be given together")
    if nonpad is not None and past_k is not None:
        raise node.unsupported("nonpad_kv_seqlen cannot be combined with past_key / past_value")
    if past_k is not None:
        k, v = ops.concat([T(past_k), k], 2), ops.concat([T(past_v), v], 2)
    present_k, present_v = k, v
    b, hq, sq, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    if hq != hkv:
        if hq % hkv:
            raise node.unsupported(f"{hq} query heads are not a multiple of {hkv} kv heads")
        k, v = ops.repeat_interleave(k, hq // hkv, dim=1), ops.repeat_interleave(v, hq // hkv, dim=1)

    zero, ninf = ops.full((), 0.0, q.dtype), ops.full((), -math.inf, q.dtype)
    bias = ops.full((sq, skv), 0.0, q.dtype)
    if mask is not None:
        m = T(mask)
        if m.shape[-1] < skv:
            fill = False if m.dtype is dt.bool_ else -math.inf
            m = ops.concat([m, ops.full(m.shape[:-1] + (skv - m.shape[-1],), fill, m.dtype)], -1)
        bias = ops.add(bias, ops.where(m, zero, ninf) if m.dtype is dt.bool_ else ops.cast(m, q.dtype))
    offset: Any = past_k.shape[2] if past_k is not None else 0
    if nonpad is not None:
        n = ops.cast(T(nonpad), dt.int64)
        offset = ops.sub(n, sq)
        keys = ops.lt(ops.iota((1, skv), 1, dt.int64), ops.reshape(n, (-1, 1)))
        bias = ops.add(bias, ops.reshape(ops.where(keys, zero, ninf), (b, 1, 1, skv)))
    frontier = _frontier(sq, skv, offset, int(node.attr("left_window_size", -1)),
                         int(node.attr("right_window_size", -1)), bool(node.attr("is_causal", 0)), q)
    if frontier is not None:
        bias = ops.add(bias, frontier)

    scale = node.attr("scale")
    s = ops.full((), math.sqrt(1 / math.sqrt(d) if scale is None else scale), q.dtype)
    qk = ops.matmul(ops.mul(q, s), ops.transpose(ops.mul(k, s), -1, -2))
    raw = qk
    cap = float(node.attr("softcap", 0.0))
    if cap > 0:
        c = ops.full((), cap, q.dtype)
        qk = ops.mul(ops.tanh(ops.div(qk, c)), c)
    scores = ops.add(qk, bias)
    dead = ops.eq(ops.amax(bias, -1, True), ninf)  # rows with no attendable key
    prec = node.attr("softmax_precision")
    if prec is not None and prec not in _SOFTMAX_TYPES:
        raise node.unsupported(f"softmax_precision {prec} is not supported (1, 10, 11 or 16)")
    sm_dtype = _SOFTMAX_TYPES[prec] if prec is not None else q.dtype
    safe = ops.where(dead, zero, scores)  # keeps NaN out of the softmax (and its gradient)
    p = F.softmax(ops.cast(safe, sm_dtype), -1)
    p = ops.cast(ops.where(dead, ops.full((), 0.0, sm_dtype), p), q.dtype)
    y = ops.matmul(p, v)
    if three_d:
        y = ops.reshape(ops.permute(y, (0, 2, 1, 3)), (b, sq, -1))
    mode = int(node.attr("qk_matmul_output_mode", 0))
    if mode not in (0, 1, 2, 3):
        raise node.unsupported(f"qk_matmul_output_mode {mode} is not supported (0-3)")
    qk_out = (raw, qk, scores, p)[mode]
    return (y, present_k, present_v, qk_out)[:max(node.n_outputs, 1)]


@onnx_op("RotaryEmbedding")
def rotary_embedding(node: Node, x: Any, cos: Any, sin: Any, position_ids: Any = None) -> Tensor:
    """RoPE on (batch, heads, seq, size) or (batch, seq, heads * size) input: the first
    rotary_embedding_dim features (all when 0) rotate as halves or, interleaved, as even / odd
    pairs; the caches are (batch, seq, dim / 2), or indexed by position_ids when given."""
    x, cos, sin = T(x), T(cos), T(sin)
    shape = x.shape
    if x.ndim == 4:
        x = ops.permute(x, (0, 2, 1, 3))  # (batch, seq, heads, size)
    else:
        n = node.attr("num_heads")
        if not n:
            raise node.unsupported("3-d input needs the num_heads attribute")
        x = ops.reshape(x, (shape[0], shape[1], n, shape[2] // n))
    size = x.shape[-1]
    rd = int(node.attr("rotary_embedding_dim", 0)) or size
    if position_ids is not None:
        ids = ops.cast(T(position_ids), dt.int64)
        cos, sin = ops.take(cos, ids, 0), ops.take(sin, ids, 0)
    if cos.shape[-1] != rd // 2 or sin.shape[-1] != rd // 2:
        raise node.unsupported(f"cos / sin caches {cos.shape} / {sin.shape} do not end in rotary_embedding_dim / 2 "
                               f"= {rd // 2}")
    cos, sin = ops.unsqueeze(cos, 2), ops.unsqueeze(sin, 2)
    rot, rest = ops.narrow(x, -1, 0, rd), ops.narrow(x, -1, rd, size - rd)
    if node.attr("interleaved", 0):
        pairs = ops.reshape(rot, rot.shape[:-1] + (rd // 2, 2))
        x1, x2 = (ops.squeeze(p, -1) for p in ops.split(pairs, 1, -1))
    else:
        x1, x2 = ops.split(rot, rd // 2, -1)
    real = ops.sub(ops.mul(cos, x1), ops.mul(sin, x2))
    imag = ops.add(ops.mul(sin, x1), ops.mul(cos, x2))
    if node.attr("interleaved", 0):
        rot = ops.reshape(ops.stack([real, imag], -1), rot.shape)
    else:
        rot = ops.concat([real, imag], -1)
    y = ops.concat([rot, rest], -1) if rd < size else rot
    return ops.reshape(y, shape) if len(shape) == 3 else ops.permute(y, (0, 2, 1, 3))


@onnx_op("SwiGLU")
def swiglu(node: Node, a: Any, b: Any) -> Tensor:
    """Swish_alpha(A) * B (opset 28)."""
    a, b = T(a), T(b)
    alpha = ops.full((), float(node.attr("alpha", 1.0)), a.dtype)
    return ops.mul(ops.mul(a, ops.sigmoid(ops.mul(a, alpha))), b)


@onnx_op("LinearAttention")
def linear_attention(node: Node, q: Any, k: Any, v: Any, state: Any = None, decay: Any = None,
                     beta: Any = None) -> Any:
    """The recurrences of opset 27 (linear, gated, delta, gated_delta: Gated DeltaNet, GLA, RWKV-6
    style) unrolled over the sequence, one state update per token; GQA shares each kv head's state
    among q_num_heads / kv_num_heads query heads."""
    out_dtype = T(q).dtype
    acc = dt.float32 if out_dtype in (dt.float16, dt.bfloat16) else out_dtype  # the state sums in float32

    def up(x: Any) -> Tensor | None:
        return None if x is None else ops.cast(T(x), acc)
    q, k, v, state, decay, beta = up(q), up(k), up(v), up(state), up(decay), up(beta)
    hq, hkv = int(node.attr("q_num_heads")), int(node.attr("kv_num_heads"))
    rule = node.attr("update_rule", "gated_delta")
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise node.unsupported(f"update_rule {rule!r} is not one of linear, gated, delta, gated_delta")
    if rule in ("gated", "gated_delta") and decay is None or rule in ("delta", "gated_delta") and beta is None:
        raise node.unsupported(f"update_rule {rule!r} needs its decay / beta inputs")
    b, t, _ = q.shape
    dk, dv = q.shape[2] // hq, v.shape[2] // hkv
    qs = ops.reshape(q, (b, t, hkv, hq // hkv, dk))  # query heads grouped by the kv head they share
    ks, vs = ops.reshape(k, (b, t, hkv, dk)), ops.reshape(v, (b, t, hkv, dv))
    gs = None if decay is None else ops.reshape(T(decay), (b, t, hkv, -1, 1))  # per head or per key dim
    bs = None if beta is None else ops.broadcast_to(ops.reshape(T(beta), (b, t, -1, 1)), (b, t, hkv, 1))
    s = ops.full((b, hkv, dk, dv), 0.0, q.dtype) if state is None else T(state)
    scale = float(node.attr("scale", 0.0)) or 1 / math.sqrt(dk)
    outs = []
    for i in range(t):
        kt, vt = ops.select(ks, 1, i), ops.select(vs, 1, i)  # (b, hkv, dk), (b, hkv, dv)
        if rule in ("gated", "gated_delta"):
            s = ops.mul(ops.exp(ops.select(gs, 1, i)), s)
        if rule in ("delta", "gated_delta"):
            recalled = ops.squeeze(ops.matmul(ops.unsqueeze(kt, 2), s), 2)  # S^T k: (b, hkv, dv)
            vt = ops.mul(ops.select(bs, 1, i), ops.sub(vt, recalled))
        s = ops.add(s, ops.mul(ops.unsqueeze(kt, 3), ops.unsqueeze(vt, 2)))
        o = ops.matmul(ops.select(qs, 1, i), s)  # (b, hkv, group, dv)
        outs.append(ops.mul(ops.reshape(o, (b, hq * dv)), ops.full((), scale, q.dtype)))
    return (ops.cast(ops.stack(outs, 1), out_dtype), ops.cast(s, out_dtype))[:max(node.n_outputs, 1)]


@onnx_op("CausalConvWithState")
def causal_conv_with_state(node: Node, x: Any, w: Any, bias: Any = None, state: Any = None) -> Any:
    """Depthwise causal conv1d over [past_state (zeros), x], optional SiLU; the new state is the last
    k - 1 positions of that concatenation."""
    x, w = T(x), T(w)
    b, c, n = x.shape
    k = w.shape[-1]
    past = ops.full((b, c, k - 1), 0.0, x.dtype) if state is None else T(state)
    full = ops.concat([past, x], 2)
    y = F.conv1d(full, w, None if bias is None else T(bias), groups=c)
    act = node.attr("activation", "none")
    if act in ("silu", "swish"):
        y = F.silu(y)
    elif act != "none":
        raise node.unsupported(f"activation {act!r} is not one of silu, swish, none")
    return (y, ops.narrow(full, 2, n, k - 1))[:max(node.n_outputs, 1)]


@onnx_op("FlexAttention", domain="ai.onnx.preview")
def flex_attention(node: Node, q: Any, k: Any, v: Any) -> Tensor:
    """softmax(score_mod(Q K^T * scale)) -> prob_mod -> @ V, the modifiers being subgraphs (torch's
    flex_attention exported); the softmax in softmax_precision (float32, or float64 for doubles);
    GQA: query head h reads kv head h // (q_heads / kv_heads)."""
    q, k, v = T(q), T(k), T(v)
    hq, hkv = q.shape[1], k.shape[1]
    if hq % hkv:
        raise node.unsupported(f"{hq} query heads are not a multiple of {hkv} kv heads")
    if hq != hkv:
        k, v = ops.repeat_interleave(k, hq // hkv, dim=1), ops.repeat_interleave(v, hq // hkv, dim=1)
    prec = node.attr("softmax_precision")
    sm = _SOFTMAX_TYPES.get(prec) if prec is not None else (dt.float64 if q.dtype is dt.float64 else dt.float32)
    if sm is None:
        raise node.unsupported(f"softmax_precision {prec} is not supported")
    scale = node.attr("scale") or 1 / math.sqrt(q.shape[-1])
    s = ops.cast(ops.mul(ops.matmul(q, ops.transpose(k, -1, -2)), ops.full((), float(scale), q.dtype)), sm)
    if node.attr("score_mod") is not None:
        s = T(node.attr("score_mod")(s)[0])
    p = F.softmax(s, -1)
    if node.attr("prob_mod") is not None:
        p = T(node.attr("prob_mod")(p)[0])
    return ops.matmul(ops.cast(p, v.dtype), v)
