"""Attention and transformer layers with torch's constructor signatures, parameter names and math:
`MultiheadAttention`, `TransformerEncoderLayer`, `TransformerEncoder`, `TransformerDecoderLayer`,
`TransformerDecoder` and `Transformer`.

They are composites of `F.linear`, `F.layer_norm`, dropout and `F.scaled_dot_product_attention`, so
a transformer traces into ordinary IR ops, and the attention core keeps the one IR shape that the
fusion policy recognizes as an attention kernel. Masks follow torch's conventions, which differ from
scaled_dot_product_attention's: here a boolean `attn_mask` or `key_padding_mask` is True where a
position may NOT be attended; float masks are added to the scores.

Where torch has a fast path (eval mode, no gradients) these layers compute the same math without
it; the one visible difference is that torch's nested-tensor encoder returns zeros at padded
positions of `src_key_padding_mask`, where these layers return the ordinary result.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor
from . import functional as F
from . import init
from .layers import Dropout, LayerNorm, Linear, ModuleList, _layer_dtype, _place, empty
from .module import Module

__all__ = ["MultiheadAttention", "Transformer", "TransformerDecoder", "TransformerDecoderLayer",
           "TransformerEncoder", "TransformerEncoderLayer"]


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _mask(layer: str, name: str, mask: Any) -> Tensor | None:
    m = None if mask is None else _t(mask)
    if m is not None and m.dtype is not dt.bool_ and not m.dtype.is_float:
        raise TypeError(f"{layer}: only bool and floating types of {name} are supported, got {m.dtype}")
    return m


def _additive(m: Tensor, dtype: dt.DType) -> Tensor:
    """torch's canonical form of a mask: boolean True (masked out) becomes -inf, floats are kept."""
    if m.dtype is dt.bool_:
        return ops.where(m, float("-inf"), ops.zeros(m.shape, dtype=dtype))
    return ops.cast(m, dtype)


def _pad_column(m: Tensor | None) -> Tensor | None:
    """A mask with one more last-dim column that masks nothing (False, or 0 when additive)."""
    if m is None:
        return None
    return ops.concat([m, ops.zeros((*m.shape[:-1], 1), dtype=m.dtype)], m.ndim - 1)


class MultiheadAttention(Module):
    """torch.nn.MultiheadAttention: attention over `num_heads` heads of embed_dim/num_heads features.

    Parameters as torch names them: `in_proj_weight` (3E, E) when key and value have embed_dim
    features, else `q_proj_weight`, `k_proj_weight` (E, kdim), `v_proj_weight` (E, vdim); `in_proj_bias`
    (3E) and `out_proj.weight/bias` when `bias`; `bias_k`, `bias_v` (1, 1, E) with `add_bias_kv`. Init as
    torch: xavier-uniform projections, zero biases, xavier-normal bias_k/bias_v.

    `add_bias_kv` appends bias_k / bias_v (learned, not projected) to the projected keys / values as one
    more source position; `add_zero_attn` then appends a position of zeros to every head's keys and
    values. Each adds a column to attn_mask and key_padding_mask that every query may attend (False /
    0), and to the attention weights, as torch's.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"MultiheadAttention: embed_dim and num_heads must be greater than 0, got "
                             f"embed_dim={embed_dim} and num_heads={num_heads}")
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible by num_heads "
                             f"({num_heads})")
        d = _layer_dtype("MultiheadAttention", dtype)
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = embed_dim, num_heads, dropout, batch_first
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.head_dim = embed_dim // num_heads
        if self._qkv_same_embed_dim:
            self.in_proj_weight = empty((3 * embed_dim, embed_dim), d)
        else:
            self.q_proj_weight = empty((embed_dim, embed_dim), d)
            self.k_proj_weight = empty((embed_dim, self.kdim), d)
            self.v_proj_weight = empty((embed_dim, self.vdim), d)
        self.in_proj_bias = empty((3 * embed_dim,), d) if bias else None
        if add_bias_kv:  # (before out_proj: torch's parameter order)
            self.bias_k, self.bias_v = empty((1, 1, embed_dim), d), empty((1, 1, embed_dim), d)
        else:
            self.bias_k = self.bias_v = None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=d)
        self.add_zero_attn = bool(add_zero_attn)
        self._reset_parameters()
        _place(self, device)

    def _reset_parameters(self) -> None:
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)
        if self.bias_k is not None:
            init.xavier_normal_(self.bias_k)
        if self.bias_v is not None:
            init.xavier_normal_(self.bias_v)

    def _project(self, query: Tensor, key: Tensor, value: Tensor, packed: str) -> tuple[Tensor, Tensor, Tensor]:
        """The q/k/v in-projections. Self-attention takes one matmul with the packed weight, as torch."""
        E = self.embed_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:E], b[E:2 * E], b[2 * E:])
        if not self._qkv_same_embed_dim:
            return (F.linear(query, self.q_proj_weight, bq), F.linear(key, self.k_proj_weight, bk),
                    F.linear(value, self.v_proj_weight, bv))
        w = self.in_proj_weight
        if packed == "qkv":
            q, k, v = F.linear(query, w, b).chunk(3, dim=-1)
            return q, k, v
        if packed == "kv":
            k, v = F.linear(key, w[E:], None if b is None else b[E:]).chunk(2, dim=-1)
            return F.linear(query, w[:E], bq), k, v
        return F.linear(query, w[:E], bq), F.linear(key, w[E:2 * E], bk), F.linear(value, w[2 * E:], bv)

    def _heads(self, x: Tensor) -> Tensor:
        n, length, _ = x.shape
        return ops.transpose(ops.reshape(x, (n, length, self.num_heads, self.head_dim)), 1, 2)

    def forward(self, query: Any, key: Any, value: Any, key_padding_mask: Any = None, need_weights: bool = True,
                attn_mask: Any = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """(attn_output, attn_weights): weights (N, L, S) averaged over heads, (N, H, L, S) per head when
        average_attn_weights=False, None unless need_weights (torch's default is True)."""
        name = "MultiheadAttention"
        packed = "qkv" if query is key and key is value else "kv" if key is value else ""
        q_in, k_in, v_in = _t(query), _t(key), _t(value)
        kpm, am = _mask(name, "key_padding_mask", key_padding_mask), _mask(name, "attn_mask", attn_mask)
        batched = q_in.ndim == 3
        if not batched:
            if q_in.ndim != 2 or k_in.ndim != 2 or v_in.ndim != 2:
                raise ValueError(f"{name}: query, key and value must all be 3-d (batched) or 2-d (unbatched), got "
                                 f"{q_in.shape}, {k_in.shape}, {v_in.shape}")
            q_in, k_in, v_in = (ops.expand_dims(t, 0) for t in (q_in, k_in, v_in))
            if kpm is not None:
                kpm = ops.expand_dims(kpm, 0)
            if am is not None and am.ndim == 3:
                am = ops.expand_dims(am, 0)
        elif not self.batch_first:
            q_in, k_in, v_in = (ops.transpose(t, 0, 1) for t in (q_in, k_in, v_in))
        if k_in.ndim != 3 or v_in.ndim != 3:
            raise ValueError(f"{name}: key {k_in.shape} and value {v_in.shape} must have query's rank")
        n, tgt, e = q_in.shape
        src = k_in.shape[1]
        if e != self.embed_dim:
            raise ValueError(f"{name}: expected query with embed_dim {self.embed_dim} features, got {e}")
        if k_in.shape[:2] != (n, src) or v_in.shape[:2] != (n, src):
            raise ValueError(f"{name}: key {k_in.shape} and value {v_in.shape} must share batch and sequence dims "
                             f"(batch {n})")
        if (k_in.shape[2], v_in.shape[2]) != (self.kdim, self.vdim):
            raise ValueError(f"{name}: key and value need kdim={self.kdim} and vdim={self.vdim} features, got "
                             f"{k_in.shape[2]} and {v_in.shape[2]}")
        if is_causal and am is None:
            raise ValueError(f"{name}: argument 'is_causal' is a hint and needs attn_mask as well (torch's rule); "
                             "use Transformer.generate_square_subsequent_mask")
        static_k, static_v = getattr(self, "static_k", None), getattr(self, "static_v", None)  # (functional form's)
        kv_src = src if static_k is None else static_k.shape[1]  # (the keys' length, which the padding mask follows)
        if kpm is not None and tuple(kpm.shape) != (n, kv_src):
            raise ValueError(f"{name}: key_padding_mask must have shape {(n, kv_src) if batched else (kv_src,)}, got "
                             f"{kpm.shape if batched else kpm.shape[1:]}")
        if am is not None:
            if am.ndim == 2 and tuple(am.shape) != (tgt, src):
                raise ValueError(f"{name}: the shape of the 2-d attn_mask is {am.shape}, but should be {(tgt, src)}")
            if am.ndim == 3 and tuple(am.shape) != (n * self.num_heads, tgt, src):
                raise ValueError(f"{name}: the shape of the 3-d attn_mask is {am.shape}, but should be "
                                 f"{(n * self.num_heads, tgt, src)}")
            if am.ndim == 4 and tuple(am.shape) != (n, self.num_heads, tgt, src):  # unbatched 3-d, given (H, L, S)
                raise ValueError(f"{name}: the shape of the unbatched 3-d attn_mask is {am.shape[1:]}, but should "
                                 f"be {(self.num_heads, tgt, src)}")
            if am.ndim not in (2, 3, 4):
                raise ValueError(f"{name}: attn_mask's dimension {am.ndim} is not supported")
            if am.ndim == 3:
                am = ops.reshape(am, (n, self.num_heads, tgt, src))

        q, k, v = self._project(q_in, k_in, v_in, packed)
        if self.bias_k is not None:  # one more key/value position, the same for every sample
            k = ops.concat([k, ops.broadcast_to(ops.reshape(self.bias_k, (1, 1, e)), (n, 1, e))], 1)
            v = ops.concat([v, ops.broadcast_to(ops.reshape(self.bias_v, (1, 1, e)), (n, 1, e))], 1)
            am, kpm, src = _pad_column(am), _pad_column(kpm), src + 1
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if static_k is not None:  # (N*H, S, head_dim), sample-major as torch's, in place of the projected keys
            k = ops.reshape(static_k, (n, self.num_heads, static_k.shape[1], self.head_dim))
        if static_v is not None:
            v = ops.reshape(static_v, (n, self.num_heads, static_v.shape[1], self.head_dim))
        src = k.shape[2]
        if self.add_zero_attn:  # and one of zeros, in every head
            z = ops.zeros((n, self.num_heads, 1, self.head_dim), dtype=k.dtype)
            k, v = ops.concat([k, z], 2), ops.concat([v, z], 2)
            am, kpm, src = _pad_column(am), _pad_column(kpm), src + 1
        p = self.dropout if self.training else 0.0
        use_causal = is_causal and kpm is None and not need_weights  # torch then drops attn_mask for the flag
        mask = None if use_causal else self._merge(am, kpm, n, src, q.dtype)
        weights = None
        if need_weights:
            scores = ops.matmul(ops.mul(q, 1.0 / math.sqrt(self.head_dim)), ops.transpose(k, -2, -1))
            if mask is not None:
                scores = (ops.masked_fill(scores, ops.logical_not(mask), float("-inf")) if mask.dtype is dt.bool_
                          else ops.add(scores, mask))
            weights = F.softmax(scores, dim=-1)
            if p > 0.0:
                weights = F.dropout(weights, p)
            y = ops.matmul(weights, v)
            if average_attn_weights:
                weights = ops.mean(weights, 1)
            if not batched:
                weights = ops.squeeze(weights, 0)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=use_causal)
        y = self.out_proj(ops.reshape(ops.transpose(y, 1, 2), (n, tgt, self.embed_dim)))
        if not batched:
            y = ops.squeeze(y, 0)
        elif not self.batch_first:
            y = ops.transpose(y, 0, 1)
        return y, weights

    @staticmethod
    def _merge(am: Tensor | None, kpm: Tensor | None, n: int, src: int, dtype: dt.DType) -> Tensor | None:
        """One mask for scaled_dot_product_attention's convention: boolean "may attend" when both given
        masks are boolean (the form the attention kernel reads), else the sum of their additive forms."""
        if kpm is not None:
            kpm = ops.reshape(kpm, (n, 1, 1, src))
        given = [m for m in (am, kpm) if m is not None]
        if not given:
            return None
        if all(m.dtype is dt.bool_ for m in given):
            keep = ops.logical_not(given[0])
            return keep if len(given) == 1 else ops.logical_and(keep, ops.logical_not(given[1]))
        out = _additive(given[0], dtype)
        return out if len(given) == 1 else ops.add(out, _additive(given[1], dtype))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


class _FunctionalAttention:
    """The state `MultiheadAttention.forward` reads, given as arguments (F.multi_head_attention_forward)."""

    _project, _heads, forward = MultiheadAttention._project, MultiheadAttention._heads, MultiheadAttention.forward
    _merge = staticmethod(MultiheadAttention._merge)


def multi_head_attention_forward(query: Any, key: Any, value: Any, embed_dim_to_check: int, num_heads: int,
                                 in_proj_weight: Any, in_proj_bias: Any, bias_k: Any, bias_v: Any,
                                 add_zero_attn: bool, dropout_p: float, out_proj_weight: Any, out_proj_bias: Any,
                                 training: bool = True, key_padding_mask: Any = None, need_weights: bool = True,
                                 attn_mask: Any = None, use_separate_proj_weight: bool = False,
                                 q_proj_weight: Any = None, k_proj_weight: Any = None, v_proj_weight: Any = None,
                                 static_k: Any = None, static_v: Any = None, average_attn_weights: bool = True,
                                 is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
    """torch's F.multi_head_attention_forward (OpenAI CLIP's AttentionPool2d calls it): MultiheadAttention's
    forward on (L, N, E) inputs with the weights given, bias_k/bias_v (1, 1, E) and add_zero_attn as in
    the module. static_k / static_v (N*num_heads, S, head_dim), as torch, replace the projected keys / values
    (head h of sample b at row b*num_heads + h); bias_k/bias_v cannot be added to them."""
    if (bias_k is None) != (bias_v is None):
        raise AssertionError("bias_k and bias_v must be given together (or both be None)")
    e = _t(query).shape[-1]
    if e != embed_dim_to_check:
        raise AssertionError(f"was expecting embedding dimension of {embed_dim_to_check}, but got {e}")
    if e % num_heads:
        raise AssertionError(f"embed_dim {e} not divisible by num_heads {num_heads}")
    q_shape = _t(query).shape
    bsz = q_shape[1] if len(q_shape) == 3 else 1
    statics = {}
    for arg, v in (("static_k", static_k), ("static_v", static_v)):
        if v is None:
            continue
        if bias_k is not None:
            raise AssertionError(f"bias cannot be added to static {'key' if arg == 'static_k' else 'value'}.")
        v = statics[arg] = _t(v)
        if v.ndim != 3:
            raise RuntimeError(f"{arg}: expected a 3-d tensor (bsz * num_heads, S, head_dim), got shape {v.shape}")
        if v.shape[0] != bsz * num_heads:
            raise AssertionError(f"expecting {arg}.size(0) of {bsz * num_heads}, but got {v.shape[0]}")
        if v.shape[2] != e // num_heads:
            raise AssertionError(f"expecting {arg}.size(2) of {e // num_heads}, but got {v.shape[2]}")
    m = _FunctionalAttention()
    m.static_k, m.static_v = statics.get("static_k"), statics.get("static_v")
    m.embed_dim, m.num_heads, m.head_dim, m.dropout, m.training = e, num_heads, e // num_heads, dropout_p, training
    m.batch_first, m.add_zero_attn = False, bool(add_zero_attn)
    m.bias_k = None if bias_k is None else _t(bias_k)
    m.bias_v = None if bias_v is None else _t(bias_v)
    m.in_proj_bias = None if in_proj_bias is None else _t(in_proj_bias)
    if use_separate_proj_weight:
        if q_proj_weight is None or k_proj_weight is None or v_proj_weight is None:
            raise AssertionError("use_separate_proj_weight is True but q_proj_weight, k_proj_weight or v_proj_weight "
                                 "is None")
        m._qkv_same_embed_dim = False
        m.q_proj_weight, m.k_proj_weight, m.v_proj_weight = _t(q_proj_weight), _t(k_proj_weight), _t(v_proj_weight)
        m.kdim, m.vdim = m.k_proj_weight.shape[1], m.v_proj_weight.shape[1]
    else:
        if in_proj_weight is None:
            raise AssertionError("use_separate_proj_weight is False but in_proj_weight is None")
        m._qkv_same_embed_dim, m.in_proj_weight, m.kdim, m.vdim = True, _t(in_proj_weight), e, e
    m.out_proj = lambda x: F.linear(x, out_proj_weight, out_proj_bias)
    return m.forward(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal)


def _activation(layer: str, activation: str | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu
    if isinstance(activation, str) or not callable(activation):
        raise ValueError(f"{layer}: argument 'activation' should be 'relu', 'gelu' or a callable, not {activation!r}")
    return activation


class TransformerEncoderLayer(Module):
    """Self-attention then a feed-forward block, each with dropout, a residual and a layer norm:
    post-norm (torch's default) `x = norm(x + block(x))`, or pre-norm `x = x + block(norm(x))`."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str | Callable[[Tensor], Tensor] = "relu", layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        d = _layer_dtype("TransformerEncoderLayer", dtype)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            dtype=d)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=d)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=d)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=d)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=d)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _activation("TransformerEncoderLayer", activation)
        _place(self, device)

    def _sa_block(self, x: Tensor, attn_mask: Any, key_padding_mask: Any, is_causal: bool) -> Tensor:
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src: Any, src_mask: Any = None, src_key_padding_mask: Any = None,
                is_causal: bool = False) -> Tensor:
        x = _t(src)
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff_block(x))


class TransformerDecoderLayer(Module):
    """Self-attention over the target, cross-attention to the encoder's memory, then feed-forward;
    residuals, dropout and layer norms placed as in torch (post-norm unless norm_first)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str | Callable[[Tensor], Tensor] = "relu", layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        d = _layer_dtype("TransformerDecoderLayer", dtype)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=batch_first, bias=bias,
                                            dtype=d)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=batch_first,
                                                 bias=bias, dtype=d)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=d)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=d)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=d)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=d)
        self.norm3 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=d)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.activation = _activation("TransformerDecoderLayer", activation)
        _place(self, device)

    def _sa_block(self, x: Tensor, attn_mask: Any, key_padding_mask: Any, is_causal: bool) -> Tensor:
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal,
                           need_weights=False)[0]
        return self.dropout1(x)

    def _mha_block(self, x: Tensor, mem: Tensor, attn_mask: Any, key_padding_mask: Any, is_causal: bool) -> Tensor:
        x = self.multihead_attn(x, mem, mem, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                is_causal=is_causal, need_weights=False)[0]
        return self.dropout2(x)

    def _ff_block(self, x: Tensor) -> Tensor:
        return self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, tgt: Any, memory: Any, tgt_mask: Any = None, memory_mask: Any = None,
                tgt_key_padding_mask: Any = None, memory_key_padding_mask: Any = None, tgt_is_causal: bool = False,
                memory_is_causal: bool = False) -> Tensor:
        x, mem = _t(tgt), _t(memory)
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._mha_block(self.norm2(x), mem, memory_mask, memory_key_padding_mask, memory_is_causal)
            return x + self._ff_block(self.norm3(x))
        x = self.norm1(x + self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
        x = self.norm2(x + self._mha_block(x, mem, memory_mask, memory_key_padding_mask, memory_is_causal))
        return self.norm3(x + self._ff_block(x))


def _clones(layer: Module, n: int) -> ModuleList:
    """n deep copies, as torch's encoder/decoder do: every layer starts from the same weights. The
    devices are shared, not copied: code elsewhere compares a tensor's device by identity."""
    devices = {id(t.device): t.device for t in (*layer.parameters(), *layer.buffers())}
    return ModuleList([copy.deepcopy(layer, dict(devices)) for _ in range(n)])


class TransformerEncoder(Module):
    """`num_layers` copies of an encoder layer, then an optional final norm. `is_causal` is a hint
    that `mask` is causal (torch detects it by comparing values; here it is taken as given, which
    computes the same result, since a causal hint only replaces an equal mask)."""

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: Module | None = None,
                 enable_nested_tensor: bool = True, mask_check: bool = True) -> None:
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm
        self.enable_nested_tensor, self.mask_check = enable_nested_tensor, mask_check  # torch's fast path only

    def forward(self, src: Any, mask: Any = None, src_key_padding_mask: Any = None,
                is_causal: bool | None = None) -> Tensor:
        x = _t(src)
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        return self.norm(x) if self.norm is not None else x


class TransformerDecoder(Module):
    """`num_layers` copies of a decoder layer over the same memory, then an optional final norm."""

    def __init__(self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm: Module | None = None) -> None:
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt: Any, memory: Any, tgt_mask: Any = None, memory_mask: Any = None,
                tgt_key_padding_mask: Any = None, memory_key_padding_mask: Any = None,
                tgt_is_causal: bool | None = None, memory_is_causal: bool = False) -> Tensor:
        x = _t(tgt)
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                      tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                      tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal)
        return self.norm(x) if self.norm is not None else x


class Transformer(Module):
    """torch.nn.Transformer: an encoder and a decoder stack, each with a final LayerNorm; every
    parameter with more than one dim is re-initialized xavier-uniform, as torch does."""

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str | Callable[[Tensor], Tensor] = "relu", custom_encoder: Any = None,
                 custom_decoder: Any = None, layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        d = _layer_dtype("Transformer", dtype)
        kw = dict(dim_feedforward=dim_feedforward, dropout=dropout, activation=activation,
                  layer_norm_eps=layer_norm_eps, batch_first=batch_first, norm_first=norm_first, bias=bias, dtype=d)
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            self.encoder = TransformerEncoder(TransformerEncoderLayer(d_model, nhead, **kw), num_encoder_layers,
                                              LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=d))
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            self.decoder = TransformerDecoder(TransformerDecoderLayer(d_model, nhead, **kw), num_decoder_layers,
                                              LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=d))
        self.d_model, self.nhead, self.batch_first = d_model, nhead, batch_first
        for p in self.parameters():
            if p.ndim > 1:
                init.xavier_uniform_(p)
        _place(self, device)

    def forward(self, src: Any, tgt: Any, src_mask: Any = None, tgt_mask: Any = None, memory_mask: Any = None,
                src_key_padding_mask: Any = None, tgt_key_padding_mask: Any = None,
                memory_key_padding_mask: Any = None, src_is_causal: bool | None = None,
                tgt_is_causal: bool | None = None, memory_is_causal: bool = False) -> Tensor:
        src, tgt = _t(src), _t(tgt)
        if src.ndim == 3 and src.shape[0 if self.batch_first else 1] != tgt.shape[0 if self.batch_first else 1]:
            raise ValueError(f"Transformer: the batch number of src {src.shape} and tgt {tgt.shape} must be equal")
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise ValueError(f"Transformer: the feature number of src {src.shape} and tgt {tgt.shape} must be equal "
                             f"to d_model ({self.d_model})")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                            memory_is_causal=memory_is_causal)

    @staticmethod
    def generate_square_subsequent_mask(sz: int, device: Any = None, dtype: Any = None) -> Tensor:
        """(sz, sz) float mask: -inf above the diagonal (future positions), 0 elsewhere."""
        d = dt.float32 if dtype is None else dt.dtype(dtype)
        mask = ops.triu(ops.full((sz, sz), float("-inf"), dtype=d), diagonal=1)
        return mask if device is None else mask.to(device)
