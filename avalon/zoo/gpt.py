"""A small GPT: a decoder-only transformer language model in the idioms of GPT-2 style code.

Token and learned position embeddings, pre-norm blocks of causal self-attention (manual q/k/v heads
over `F.scaled_dot_product_attention(is_causal=True)`, the IR shape the attention kernel matches) and
a GELU MLP, a final layer norm, and an output head tied to the token embedding. Initialization is
GPT-2's: N(0, 0.02) weights, zero biases, and residual projections scaled by 1/sqrt(2 * n_layer) so
the residual stream's variance does not grow with depth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import nn, ops
from ..nn import functional as F
from ..tensor import Tensor


@dataclass
class GPTConfig:
    block_size: int = 64     # the longest context the position embedding covers
    vocab_size: int = 96
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 32
    dropout: float = 0.0
    bias: bool = True        # biases in the Linears and LayerNorms


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"CausalSelfAttention: n_embd ({config.n_embd}) must be divisible by n_head "
                             f"({config.n_head})")
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class GPTMLP(nn.Module):
    """Position-wise feed-forward: 4x widening, GELU, projection back."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class GPTBlock(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = GPTMLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """`model(idx)` -> logits (B, T, vocab); `model(idx, targets)` -> (logits, mean cross-entropy)."""

    def __init__(self, config: GPTConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = config or GPTConfig(**overrides)
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([GPTBlock(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying: one tensor, two names
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: Any) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: Any, targets: Any = None) -> Any:
        idx = idx if isinstance(idx, Tensor) else Tensor(idx)
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"GPT: cannot forward a sequence of length {t}, block size is only "
                             f"{self.config.block_size}")
        pos = ops.arange(0, t)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def generate(self, idx: Any, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 backend: str | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
        """Sample `max_new_tokens` tokens after each row of `idx` (B, T), in eval mode.

        The forward pass always sees a full block (the context padded on the right, which causal
        attention never reads), so `av.compile` traces it once and every step reuses that kernel set.
        """
        from ..compiler import compile as av_compile

        rng = rng or np.random.default_rng()
        out = np.array(idx.numpy() if isinstance(idx, Tensor) else idx, dtype=np.int64)
        bs = self.config.block_size
        forward = av_compile(lambda m, i: m(i), backend=backend or "numpy")
        was = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                ctx = out[:, -bs:]
                n = ctx.shape[1]
                window = np.zeros((len(out), bs), np.int64)
                window[:, :n] = ctx
                logits = np.asarray(forward(self, window).numpy(), np.float64)[:, n - 1] / max(temperature, 1e-8)
                if top_k is not None:
                    kth = np.sort(logits, axis=-1)[:, -min(top_k, logits.shape[-1])][:, None]
                    logits = np.where(logits < kth, -np.inf, logits)
                p = np.exp(logits - logits.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                nxt = np.array([rng.choice(len(row), p=row) for row in p])
                out = np.concatenate([out, nxt[:, None]], axis=1)
        finally:
            self.train(was)
        return out


def gpt_loss(model: GPT, idx: Any, targets: Any) -> Tensor:
    """Mean next-token cross-entropy: the objective to differentiate in a training step."""
    return model(idx, targets)[1]
