"""Export-friendly forwards for torch modules whose own forward torch.export cannot capture.

Hugging Face's mixture-of-experts blocks (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Jamba) loop over the experts
some token was routed to (`expert_mask.sum(...).nonzero()`, then `torch.where` per expert): a loop
whose length and slices depend on the values, which torch.export refuses (`GuardOnDataDependentSymNode`).
While `av.from_torch` exports, each such block runs `dense_moe_forward` instead: every expert on every
token, weighted by a (tokens, experts) routing matrix that is the top-k weights scattered into zeros.
The router (softmax in float32, top-k, optional renormalisation, the cast back) is the block's own,
the products are the same (expert(x) * weight), and the experts' outputs are added in expert order as
`index_add_` adds them, so results agree with torch within float noise and gradients are torch's
(an expert a token did not pick gets exactly zero from it). The price is compute: every expert runs
on every token (num_experts / top_k times the block's work), which a small or medium model affords;
the import says so on the `avalon.import` log channel. Only the instance's `forward` is swapped, and
only during the export; the torch module is unchanged afterwards.

Any other experts module of transformers' `use_experts_implementation` family (DeepSeek-V3, GPT-OSS: their
default "grouped_mm" runs a custom op torch.export cannot see into) exports with transformers' own
"batched_mm" experts forward: static shapes, only the picked experts computed.
"""
from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from typing import Any

from ..channels import get_logger

log = get_logger("import")


def dense_moe_forward(self: Any, hidden_states: Any) -> tuple[Any, Any]:
    """A sparse MoE block's forward with static shapes: (hidden states, router logits), as the block's."""
    import torch
    import torch.nn.functional as F
    b, s, h = hidden_states.shape
    if self.training and getattr(self, "jitter_noise", 0) > 0:  # Mixtral's router jitter, as its forward
        noise = torch.empty_like(hidden_states).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
        hidden_states = hidden_states * noise
    x = hidden_states.view(-1, h)
    logits = self.gate(x)
    weights = F.softmax(logits, dim=1, dtype=torch.float)
    weights, chosen = torch.topk(weights, self.top_k, dim=-1)
    if getattr(self, "norm_topk_prob", True):  # Mixtral always renormalises; the others say
        weights = weights / weights.sum(dim=-1, keepdim=True)
    weights = weights.to(x.dtype)
    routing = torch.zeros(x.shape[0], len(self.experts), dtype=x.dtype, device=x.device).scatter(1, chosen, weights)
    out = torch.zeros_like(x)
    for e, expert in enumerate(self.experts):
        out = out + expert(x) * routing[:, e, None]
    shared = getattr(self, "shared_expert", None)
    if shared is not None:  # Qwen2-MoE: a gated expert every token uses
        out = out + F.sigmoid(self.shared_expert_gate(x)) * shared(x)
    return out.reshape(b, s, h), logits


def dense_experts_forward(self: Any, hidden_states: Any, top_k_index: Any, top_k_weights: Any) -> Any:
    """transformers >= 5's experts module (every expert's weights in one (E, 2I, H) `gate_up_proj` and one
    (E, H, I) `down_proj`), whose forward loops over the experts hit as the blocks above did: every expert
    on every token, weighted by the top-k weights scattered into a (tokens, experts) matrix, added in
    expert order as its `index_add_` adds them."""
    import torch
    import torch.nn.functional as F
    routing = torch.zeros(hidden_states.shape[0], self.num_experts, dtype=top_k_weights.dtype,
                          device=hidden_states.device).scatter(1, top_k_index, top_k_weights)
    out = torch.zeros_like(hidden_states)
    for e in range(self.num_experts):
        gate, up = F.linear(hidden_states, self.gate_up_proj[e]).chunk(2, dim=-1)
        h = F.linear(self.act_fn(gate) * up, self.down_proj[e])
        out = out + (h * routing[:, e, None]).to(out.dtype)
    return out


def _expert_list(sub: Any) -> bool:
    """A block written before transformers 5 (experts in an nn.ModuleList, a router returning logits)."""
    import torch
    return isinstance(getattr(sub, "experts", None), torch.nn.ModuleList)


def _fused_experts(sub: Any) -> bool:
    return all(hasattr(sub, a) for a in ("gate_up_proj", "down_proj", "act_fn", "num_experts"))


REWRITES: dict[str, tuple[Callable[..., Any], Callable[[Any], bool]]] = {
    "MixtralSparseMoeBlock": (dense_moe_forward, _expert_list),
    "Qwen2MoeSparseMoeBlock": (dense_moe_forward, _expert_list),
    "Qwen3MoeSparseMoeBlock": (dense_moe_forward, _expert_list),
    "OlmoeSparseMoeBlock": (dense_moe_forward, _expert_list),
    "MixtralExperts": (dense_experts_forward, _fused_experts),
    "Qwen2MoeExperts": (dense_experts_forward, _fused_experts),
    "Qwen3MoeExperts": (dense_experts_forward, _fused_experts),
    "OlmoeExperts": (dense_experts_forward, _fused_experts),
    "JambaExperts": (dense_experts_forward, _fused_experts),
}
"""Module class name -> (the forward used while exporting, whether it fits this module: transformers 5 moved
the expert loop from the block into an experts module). One table: a new model is one entry."""


def _experts_interface_forward(sub: Any) -> Callable[..., Any] | None:
    """transformers' own static-shape experts forward ("batched_mm": each token's top-k experts' weights
    gathered, then batched matmuls) for any experts module of its `use_experts_implementation` family that
    the table above does not name. Their default ("grouped_mm") runs the `transformers::grouped_mm_fallback`
    custom op, opaque to torch.export and so to Avalon (DeepSeek-V3's and GPT-OSS's experts); the batched
    form is the same top-k sum (the module's own gate, layout, biases and activation), computed only for
    the experts each token picked."""
    import sys
    moe = sys.modules.get("transformers.integrations.moe")
    impl = getattr(getattr(sub, "config", None), "_experts_implementation", None)
    if moe is None or impl is None or impl == "batched_mm" or not all(
            hasattr(sub, a) for a in ("has_gate", "has_bias", "is_transposed", "down_proj")):
        return None
    return getattr(moe, "ALL_EXPERTS_FUNCTIONS", {}).get("batched_mm")


@contextlib.contextmanager
def export_friendly(module: Any) -> Iterator[list[str]]:
    """Swap in `REWRITES` forwards on `module`'s submodules for the duration; yields their names."""
    swapped: list[tuple[Any, bool, Any]] = []
    names: list[str] = []
    for name, sub in module.named_modules():
        fn, fits = REWRITES.get(type(sub).__name__, (None, None))
        if fn is None or not fits(sub):
            fn = _experts_interface_forward(sub)
            if fn is None:
                continue
        had = "forward" in vars(sub)
        swapped.append((sub, had, vars(sub).get("forward")))
        sub.forward = types.MethodType(fn, sub)
        names.append(name or type(sub).__name__)
    if names:
        kinds = sorted({type(sub).__name__ for sub, _, _ in swapped})
        how = ("densely (every expert on every token)" if any(sub.forward.__func__ in (dense_moe_forward,
               dense_experts_forward) for sub, _, _ in swapped) else "with transformers' batched_mm experts")
        log.info("av.from_torch: %d %s block(s) exported %s: %s", len(names), "/".join(kinds), how,
                 ", ".join(names[:4]) + (", ..." if len(names) > 4 else ""))
    try:
        yield names
    finally:
        for sub, had, old in swapped:
            if had:
                sub.forward = old
            else:
                del sub.forward
