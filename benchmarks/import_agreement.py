"""Numbers for the README: torchvision's ResNet-18 and MobileNetV3-Small, a transformer encoder and,
when `transformers` is importable, Hugging Face GPT-2, BERT, Llama and ViT (tiny configs, random
weights, the default SDPA attention) imported with `av.from_torch` (eval mode): agreement with torch
(forward; gradients of a random projection of the output, max over parameters of
max|diff| / max|torch|) and the op count after DEFAULT_PIPELINE (fusion groups, and all top-level ops
= kernels launched).

Attention key biases (BERT's and ViT's `*.key.bias`, `*.k_proj.bias` since transformers 5) are left out
of the gradient column: their gradient is zero in exact arithmetic (softmax ignores a shift per query), so
both sides hold rounding noise and the ratio means nothing.

torchvision 0.28.0 pairs with torch 2.13 (`pip install --no-deps torchvision==0.28.0 pillow`); its
CPU import needs two operator schemas declared first (done here)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

import avalon as av


def _torchvision():
    lib = torch.library.Library("torchvision", "DEF")
    for s in ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
              "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"):
        lib.define(s)
    _torchvision.lib = lib
    import torchvision.models as models
    return models


def measure(name: str, module: torch.nn.Module, *xs: torch.Tensor) -> None:
    module.eval()
    model = av.from_torch(module, *xs)
    xa = [av.tensor(x.numpy()) for x in xs]
    ref = module(*xs)
    fwd = np.abs(model(*xa).numpy() - ref.detach().numpy()).max() / np.abs(ref.detach().numpy()).max()
    w = np.random.default_rng(0).standard_normal(ref.shape).astype(np.float32)
    (ref * torch.from_numpy(w)).sum().backward()
    _, grads = av.value_and_grad(lambda m, w, *x: (m(*x) * w).sum())(model, av.tensor(w), *xa)
    tg = {n: p.grad.numpy() for n, p in module.named_parameters()
          if not n.endswith((".key.bias", ".k_proj.bias"))}
    grad = max(np.abs(grads[n].numpy() - g).max() / np.abs(g).max() for n, g in tg.items())
    g = av.trace(model, *xa)
    before = len(g.ops)
    av.passes.PassManager.parse(av.passes.DEFAULT_PIPELINE).run(g)
    fusions = sum(op.name == "fusion" for op in g.ops)
    print(f"| {name} | {fwd:.1e} | {grad:.1e} | {before} | {fusions} | {len(g.ops)} |")


class _Logits(torch.nn.Module):
    """A Hugging Face model's first output (the logits) as one tensor."""

    def __init__(self, m: torch.nn.Module, **kw: Any) -> None:
        super().__init__()
        self.m, self.kw = m, kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x, return_dict=False, **self.kw)[0]


def _hf_models() -> list[tuple[str, torch.nn.Module, torch.Tensor]]:
    import transformers as T
    torch.manual_seed(0)
    ids = torch.randint(0, 128, (2, 12))
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    gpt2 = T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64))
    bert = T.BertForMaskedLM(T.BertConfig(vocab_size=128, max_position_embeddings=64, **small))
    llama = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=128, num_key_value_heads=2, max_position_embeddings=64,
                                             **small))
    vit = T.ViTForImageClassification(T.ViTConfig(image_size=32, patch_size=8, num_labels=10, **small))
    tag = f"HF {T.__version__}, 2 layers, d=64"
    return [(f"GPT-2 ({tag}, 2x12 tokens)", _Logits(gpt2, use_cache=False), ids),
            (f"BERT masked LM ({tag}, 2x12 tokens)", _Logits(bert), ids),
            (f"Llama (GQA 4/2 heads, {tag}, 2x12 tokens)", _Logits(llama, use_cache=False), ids),
            (f"ViT ({tag}, 2x3x32x32)", _Logits(vit), torch.randn(2, 3, 32, 32))]


def main() -> None:
    torch.manual_seed(0)
    print("| model | forward rel. err | grad max rel. err | ops traced | fusion groups "
          "| top-level ops after pipeline |")
    print("|---|---|---|---|---|---|")
    try:
        models = _torchvision()
        measure("ResNet-18 (1x3x64x64)", models.resnet18(), torch.randn(1, 3, 64, 64))
        measure("MobileNetV3-Small (1x3x64x64)", models.mobilenet_v3_small(), torch.randn(1, 3, 64, 64))
    except ImportError as e:
        print(f"(torchvision unavailable: {e})")
    enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), 2,
                                      enable_nested_tensor=False)
    measure("TransformerEncoder (2 layers, d=64, 2x16x64)", enc, torch.randn(2, 16, 64))
    try:
        hf = _hf_models()
    except ImportError as e:
        print(f"(transformers unavailable, Hugging Face rows skipped: {e})")
        return
    for name, module, x in hf:
        measure(name, module, x)


if __name__ == "__main__":
    main()
