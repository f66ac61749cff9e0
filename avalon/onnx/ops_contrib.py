"""onnxruntime's `com.microsoft` fusions that its transformer optimizer writes (BERT, GPT-2, ViT, T5
graphs after `onnxruntime.transformers.optimizer.optimize_model`) as Avalon ops.

Each rule follows onnxruntime's CPU kernel, the tests' oracle: its masks add `mask_filter_value`
(-10000 by default) rather than -inf, so a row that sees no key averages the values as there.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..nn import functional as F
from ..tensor import Tensor
from .ops_attention import rotary_embedding
from .table import Node, T, axis, onnx_op, static

MS = "com.microsoft"


def _c(x: Tensor, v: float) -> Tensor:
    return ops.full((), v, x.dtype)


def _norm(x: Tensor, axes: list[int], gamma: Any, beta: Any, eps: float, rms: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, 1 / std) of layer norm (or RMS norm: no centring, the mean output 0) over `axes`."""
    mean = ops.mean(x, axes, keepdims=True) if not rms else ops.full((), 0.0, x.dtype)
    c = ops.sub(x, mean) if not rms else x
    inv = ops.rsqrt(ops.add(ops.mean(ops.mul(c, c), axes, keepdims=True), _c(x, eps)))
    y = ops.mul(ops.mul(c, inv), T(gamma))
    if beta is not None:
        y = ops.add(y, T(beta))
    return y, mean, inv


def _skip_norm(node: Node, x: Any, skip: Any, gamma: Any, beta: Any, bias: Any, rms: bool) -> Any:
    s = ops.add(T(x), T(skip))
    if bias is not None:
        s = ops.add(s, T(bias))
    y, mean, inv = _norm(s, [s.ndim - 1], gamma, beta, float(node.attr("epsilon", 1e-12)), rms)
    return (y, mean, inv, s)[:max(node.n_outputs, 1)]


@onnx_op("SkipLayerNormalization", domain=MS)
def skip_layer_norm(node: Node, x: Any, skip: Any, gamma: Any, beta: Any = None, bias: Any = None) -> Any:
    """LayerNorm(x + skip + bias); outputs y, mean, 1 / std and the sum."""
    return _skip_norm(node, x, skip, gamma, beta, bias, rms=False)


@onnx_op("SkipSimplifiedLayerNormalization", domain=MS)
def skip_rms_norm(node: Node, x: Any, skip: Any, gamma: Any, bias: Any = None) -> Any:
    return _skip_norm(node, x, skip, gamma, None, bias, rms=True)


@onnx_op("SimplifiedLayerNormalization")
def rms_norm(node: Node, x: Any, gamma: Any) -> Any:
    """onnxruntime's RMS norm (registered in the default domain) over the axes from `axis` on."""
    x = T(x)
    y, _, inv = _norm(x, list(range(axis(node.attr("axis", -1), x.ndim), x.ndim)), gamma, None,
                      float(node.attr("epsilon", 1e-5)), rms=True)
    return (y, inv)[:max(node.n_outputs, 1)]


@onnx_op("LayerNormalization", domain=MS)
def ms_layer_norm(node: Node, x: Any, gamma: Any, beta: Any = None) -> Any:
    x = T(x)
    y, mean, inv = _norm(x, list(range(axis(node.attr("axis", -1), x.ndim), x.ndim)), gamma, beta,
                         float(node.attr("epsilon", 1e-5)), rms=False)
    return (y, mean, inv)[:max(node.n_outputs, 1)]


def _biased(x: Any, bias: Any) -> Tensor:
    return T(x) if bias is None else ops.add(T(x), T(bias))


onnx_op("Gelu", domain=MS)(lambda node, x: F.gelu(T(x)))
onnx_op("BiasGelu", domain=MS)(lambda node, a, b: F.gelu(_biased(a, b)))
onnx_op("FastGelu", domain=MS)(lambda node, x, bias=None: F.gelu(_biased(x, bias), approximate="tanh"))
onnx_op("BiasAdd", domain=MS)(lambda node, x, bias, skip: ops.add(_biased(x, bias), T(skip)))


@onnx_op("QuickGelu", domain=MS)
def quick_gelu(node: Node, x: Any) -> Tensor:
    x = T(x)
    return ops.mul(x, ops.sigmoid(ops.mul(x, _c(x, float(node.attr("alpha", 1.702))))))


@onnx_op("FusedMatMul", "TransposeMatMul", domain=MS)
def fused_matmul(node: Node, a: Any, b: Any) -> Tensor:
    """alpha * op(A) @ op(B), op transposing the last two axes (transA / transB)."""
    a, b = T(a), T(b)
    if node.attr("transBatchA", 0) or node.attr("transBatchB", 0):
        raise node.unsupported("transBatchA / transBatchB are not supported")
    if node.attr("transA", 0):
        a = ops.transpose(a, -1, -2)
    if node.attr("transB", 0):
        b = ops.transpose(b, -1, -2)
    y = ops.matmul(a, b)
    alpha = float(node.attr("alpha", 1.0))
    return y if alpha == 1.0 else ops.mul(y, _c(y, alpha))


@onnx_op("EmbedLayerNormalization", domain=MS)
def embed_layer_norm(node: Node, ids: Any, segments: Any, word: Any, pos: Any, seg: Any = None, gamma: Any = None,
                     beta: Any = None, mask: Any = None, position_ids: Any = None) -> Any:
    """LayerNorm(word[ids] + pos[position] + seg[segments]); mask_index = each row's count of
    nonzero mask entries (int32, zeros without a mask); the sum before the norm."""
    ids = ops.cast(T(ids), dt.int64)
    b, s = ids.shape
    where = ops.iota((b, s), 1, dt.int64) if position_ids is None else \
        ops.broadcast_to(ops.cast(T(position_ids), dt.int64), (b, s))
    e = ops.add(ops.take(T(word), ids, 0), ops.take(T(pos), where, 0))
    if segments is not None and seg is not None:
        e = ops.add(e, ops.take(T(seg), ops.cast(T(segments), dt.int64), 0))
    y, _, _ = _norm(e, [2], gamma, beta, float(node.attr("epsilon", 1e-12)), rms=False)
    count = ops.full((b,), 0, dt.int32) if mask is None else \
        ops.cast(ops.sum(ops.cast(ops.ne(T(mask), 0), dt.int32), 1), dt.int32)
    return (y, count, e)[:max(node.n_outputs, 1)]


def _heads(x: Tensor, n: int) -> Tensor:
    b, s, hidden = x.shape
    return ops.permute(ops.reshape(x, (b, s, n, hidden // n)), (0, 2, 1, 3))


def _key_mask(node: Node, mask: Any, b: int, sq: int, past: int, total: int) -> Tensor | None:
    """A (batch, 1, sq | 1, total) 0/1 mask (1 = attend) from onnxruntime's mask_index forms: raw
    (batch, total) or (batch, sq, total), (batch, 1, max, max), right-padding lengths (batch,),
    or left padding (2 * batch,): exclusive ends then inclusive starts."""
    if mask is None:
        return None
    m = T(mask)
    j = ops.iota((1, total), 1, dt.int64)
    if m.ndim == 1 and m.shape[0] in (b, 2 * b):
        n = ops.cast(m, dt.int64)
        keep = ops.lt(j, ops.reshape(ops.narrow(n, 0, 0, b), (b, 1)))
        if m.shape[0] == 2 * b:
            keep = ops.logical_and(keep, ops.ge(j, ops.reshape(ops.narrow(n, 0, b, b), (b, 1))))
        return ops.reshape(keep, (b, 1, 1, total))
    if m.ndim == 2:
        return ops.reshape(ops.ne(m, 0), (b, 1, 1, total))
    if m.ndim == 3:
        return ops.reshape(ops.ne(m, 0), (b, 1, sq, total))
    if m.ndim == 4:
        return ops.ne(ops.slice_(m, [0, 0, past, 0], [b, 1, past + sq, total]), 0)
    raise node.unsupported(f"a mask_index of shape {m.shape} is not supported")


def _attend(node: Node, q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, bias: Any, past: int) -> Tensor:
    """softmax(q k^T * scale + attention_bias + mask terms) v, masks adding mask_filter_value per
    condition as onnxruntime does; (batch, heads, sq, size) in, (batch, sq, heads * size) out."""
    b, h, sq, d = q.shape
    total = k.shape[2]
    scale = node.attr("scale") or 1 / math.sqrt(d)
    s = ops.mul(ops.matmul(q, ops.transpose(k, -1, -2)), _c(q, float(scale)))
    if bias is not None:
        s = ops.add(s, T(bias))
    fill = _c(q, float(node.attr("mask_filter_value", -10000.0)))
    zero = _c(q, 0.0)
    if keep is not None:
        s = ops.add(s, ops.where(keep, zero, fill))
    if node.attr("unidirectional", 0):
        future = ops.gt(ops.iota((sq, total), 1, dt.int64), ops.add(ops.iota((sq, total), 0, dt.int64), past))
        s = ops.add(s, ops.where(future, fill, zero))
    y = ops.matmul(F.softmax(s, -1), v)
    return ops.reshape(ops.permute(y, (0, 2, 1, 3)), (b, sq, h * v.shape[-1]))


@onnx_op("Attention", domain=MS)
def ms_attention(node: Node, x: Any, w: Any, bias: Any = None, mask: Any = None, past: Any = None,
                 attention_bias: Any = None, past_len: Any = None) -> Any:
    """Self-attention with the Q/K/V projections merged into one weight (BERT, GPT-2 after the
    optimizer); `past` (2, batch, heads, past, size) gives `present` with the new keys appended."""
    if node.attr("do_rotary", 0) or node.attr("past_present_share_buffer", 0):
        raise node.unsupported("do_rotary and past_present_share_buffer are not supported")
    n = int(node.attr("num_heads"))
    x = T(x)
    proj = ops.matmul(x, T(w))
    if bias is not None:
        proj = ops.add(proj, T(bias))
    sizes = node.attr("qkv_hidden_sizes") or [proj.shape[-1] // 3] * 3
    q, k, v = (_heads(t, n) for t in ops.split(proj, list(sizes), -1))
    p = 0
    if past is not None:
        past = T(past)
        p = past.shape[3]
        k, v = ops.concat([ops.select(past, 0, 0), k], 2), ops.concat([ops.select(past, 0, 1), v], 2)
    keep = _key_mask(node, mask, x.shape[0], x.shape[1], p, k.shape[2])
    y = _attend(node, q, k, v, keep, attention_bias, p)
    return (y, ops.stack([k, v], 0))[:max(node.n_outputs, 1)]


@onnx_op("MultiHeadAttention", domain=MS)
def multi_head_attention(node: Node, q: Any, k: Any = None, v: Any = None, bias: Any = None, mask: Any = None,
                         attention_bias: Any = None, past_k: Any = None, past_v: Any = None, *rest: Any) -> Any:
    """Self or cross attention with separate (batch, seq, hidden) Q, K, V (K and V may come as
    (batch, heads, seq, size), already projected), a packed (batch, seq, heads, 3, size) QKV or a
    packed (batch, seq, heads, 2, size) KV; the projection bias added here."""
    if node.n_outputs > 3:
        raise node.unsupported("the qk output is not supported")
    if any(r is not None for r in rest):
        raise node.unsupported("past_sequence_length and cache_indirection are not supported")
    n = int(node.attr("num_heads"))
    q = T(q)
    if q.ndim == 5:  # packed QKV
        q, k, v = (ops.permute(ops.select(q, 3, i), (0, 2, 1, 3)) for i in range(3))
    else:
        k = T(k)
        if k.ndim == 5:  # packed KV
            k, v = (ops.permute(ops.select(k, 3, i), (0, 2, 1, 3)) for i in range(2))
        v = T(v)
        if bias is not None:
            hq, hk = q.shape[-1], k.shape[-1] if k.ndim == 3 else k.shape[1] * k.shape[3]
            bq, bk, bv = ops.split(T(bias), [hq, hk, T(bias).shape[0] - hq - hk], 0)
            q = ops.add(q, bq)
            if k.ndim == 3:
                k, v = ops.add(k, bk), ops.add(v, bv)
        q = _heads(q, n)
        if k.ndim == 3:
            k, v = _heads(k, n), _heads(v, n)
    p = 0
    if past_k is not None and k.shape[2] != q.shape[2] and T(past_k).shape[2] == k.shape[2]:
        past_k = past_v = None  # cross attention: key and value are the past itself
    if past_k is not None:
        p = T(past_k).shape[2]
        k, v = ops.concat([T(past_k), k], 2), ops.concat([T(past_v), v], 2)
    keep = _key_mask(node, mask, q.shape[0], q.shape[2], p, k.shape[2])
    y = _attend(node, q, k, v, keep, attention_bias, p)
    return (y, k, v)[:max(node.n_outputs, 1)]


@onnx_op("RotaryEmbedding", domain=MS)
def ms_rotary(node: Node, x: Any, position_ids: Any, cos: Any, sin: Any) -> Tensor:
    """onnxruntime's RoPE: position_ids (batch, seq), or one start offset for every row; then the
    ONNX RotaryEmbedding rule (same attributes) on the gathered caches."""
    if node.attr("is_packed_batching", 0):
        raise node.unsupported("is_packed_batching is not supported")
    x = T(x)
    b, s = x.shape[0], x.shape[1] if x.ndim == 3 else x.shape[2]
    pos = ops.cast(T(position_ids), dt.int64)
    if pos.numel() == 1 and (b, s) != (1, 1):
        pos = ops.add(ops.iota((b, s), 1, dt.int64), ops.reshape(pos, ()))
    cos_g, sin_g = ops.take(T(cos), pos, 0), ops.take(T(sin), pos, 0)
    return rotary_embedding(node, x, cos_g, sin_g)


def _rope(node: Node, x: Tensor, heads: int, cos: Tensor, sin: Tensor, pos: Tensor) -> Tensor:
    """RoPE on (batch, seq, heads * size) at per-token positions `pos` (batch, seq)."""
    rope = Node("RotaryEmbedding", node.name, {"interleaved": node.attr("rotary_interleaved", 0), "num_heads": heads,
                                              "rotary_embedding_dim": 2 * cos.shape[-1]})
    return rotary_embedding(rope, x, ops.take(cos, pos, 0), ops.take(sin, pos, 0))


def _head_rms(x: Tensor, heads: int, w: Any, eps: float) -> Tensor:
    """RMS norm of each head's features of (batch, seq, heads * size), weight (size,)."""
    b, s, hidden = x.shape
    y, _, _ = _norm(ops.reshape(x, (b, s, heads, hidden // heads)), [3], w, None, eps, rms=True)
    return ops.reshape(y, (b, s, hidden))


@onnx_op("GroupQueryAttention", domain=MS)
def group_query_attention(node: Node, q: Any, k: Any, v: Any, past_k: Any, past_v: Any, seqlens_k: Any,
                          total: Any, cos: Any = None, sin: Any = None, position_ids: Any = None,
                          attention_bias: Any = None, head_sink: Any = None, k_scale: Any = None, v_scale: Any = None,
                          q_norm: Any = None, k_norm: Any = None, *rest: Any) -> Any:
    """onnxruntime-genai's decoder attention (Llama, Phi-3, Mistral, Qwen exports), its CPU kernel's
    semantics: batch row b holds seqlens_k[b] + 1 tokens after this step, its first
    p_b = seqlens_k[b] + 1 - seq of them from the past (0 for a first prompt); present is
    (batch, kv_heads, total_sequence_length, size) with the new keys written at p_b and zeros after;
    queries at positions p_b + s attend causally (optionally within local_window_size) to their
    row's keys; rotary (do_rotary) at those positions or position_ids; GQA repeats kv heads."""
    if k_scale is not None or v_scale is not None or any(r is not None for r in rest) or node.n_outputs > 3:
        raise node.unsupported("quantized kv caches, query_seqlens and the qk output are not supported")
    if not node.attr("causal", 1):
        raise node.unsupported("causal=0 is not supported")
    hq, hkv = int(node.attr("num_heads")), int(node.attr("kv_num_heads"))
    q = T(q)
    b, s = q.shape[0], q.shape[1]
    if k is None:  # packed QKV
        size = q.shape[2] // (hq + 2 * hkv)
        q, k, v = ops.split(q, [hq * size, hkv * size, hkv * size], -1)
    k, v = T(k), T(v)
    size = q.shape[2] // hq
    pk, pv = T(past_k), T(past_v)
    p = pk.shape[2]
    known = not (isinstance(total, Tensor) and total.is_traced)
    t = int(np.asarray(static(total, "total_sequence_length")).reshape(())) if known else p + s
    n_tok = ops.add(ops.cast(T(seqlens_k), dt.int64), 1)  # (batch,)
    start = ops.maximum(ops.sub(n_tok, s), ops.full((), 0, dt.int64)) if p else ops.full((b,), 0, dt.int64)
    if q_norm is not None:
        eps = float(node.attr("qk_norm_epsilon", 1e-6))
        q = _head_rms(q, hq, q_norm, float(node.attr("q_norm_epsilon", eps)))
        k = _head_rms(k, hkv, k_norm, float(node.attr("k_norm_epsilon", eps)))
    pos = ops.add(ops.iota((b, s), 1, dt.int64), ops.reshape(start, (b, 1)))
    if node.attr("do_rotary", 0):
        rp = pos if position_ids is None else ops.cast(T(position_ids), dt.int64)
        q, k = _rope(node, q, hq, T(cos), T(sin), rp), _rope(node, k, hkv, T(cos), T(sin), rp)
    q, k, v = _heads(q, hq), _heads(k, hkv), _heads(v, hkv)
    # present[b, :, j]: past j (j < start_b), new j - start_b (< seq), else zero: one gather
    j = ops.iota((b, t), 1, dt.int64)
    off = ops.sub(j, ops.reshape(start, (b, 1)))
    src = ops.where(ops.lt(off, 0), j, ops.where(ops.lt(off, s), ops.add(off, p), p + s))
    src = ops.broadcast_to(ops.reshape(src, (b, 1, t, 1)), (b, hkv, t, size))

    def present(past: Tensor, new: Tensor) -> Tensor:
        pool = ops.concat([past, new, ops.full((b, hkv, 1, size), 0.0, new.dtype)], 2)
        return ops.take_along_dim(pool, src, 2)
    kp, vp = present(pk, k), present(pv, v)
    kr, vr = (ops.repeat_interleave(x, hq // hkv, dim=1) for x in (kp, vp))
    scale = node.attr("scale") or 1 / math.sqrt(size)
    sc = ops.mul(ops.matmul(q, ops.transpose(kr, -1, -2)), _c(q, float(scale)))
    cap = float(node.attr("softcap", 0.0))
    if cap > 0:
        sc = ops.mul(ops.tanh(ops.div(sc, _c(sc, cap))), _c(sc, cap))
    if attention_bias is not None:
        sc = ops.add(sc, T(attention_bias))
    key = ops.iota((b, 1, s, t), 3, dt.int64)
    qpos = ops.reshape(pos, (b, 1, s, 1))
    ok = ops.logical_and(ops.le(key, qpos), ops.lt(key, ops.reshape(n_tok, (b, 1, 1, 1))))
    window = int(node.attr("local_window_size", -1))
    if window >= 0:
        ok = ops.logical_and(ok, ops.gt(key, ops.sub(qpos, window)))
    sc = ops.where(ok, sc, _c(sc, -math.inf))
    if head_sink is not None or node.attr("smooth_softmax", 0):
        sink = ops.full((b, hq, s, 1), 0.0, sc.dtype) if head_sink is None else \
            ops.broadcast_to(ops.reshape(T(head_sink), (1, hq, 1, 1)), (b, hq, s, 1))
        w = ops.narrow(F.softmax(ops.concat([sc, sink], -1), -1), -1, 0, t)
    else:
        w = F.softmax(sc, -1)
    y = ops.matmul(w, vr)
    y = ops.reshape(ops.permute(y, (0, 2, 1, 3)), (b, s, hq * size))
    return (y, kp, vp)[:max(node.n_outputs, 1)]
