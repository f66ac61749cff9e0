"""Numbers for the README: torchvision's ResNet-18 and MobileNetV3-Small and a transformer encoder
imported with `av.from_torch` (eval mode): agreement with torch (forward; gradients of a random
projection of the output, max over parameters of max|diff| / max|torch|) and the op count after
DEFAULT_PIPELINE (fusion groups, and all top-level ops = kernels launched).

torchvision 0.28.0 pairs with torch 2.13 (`pip install --no-deps torchvision==0.28.0 pillow`); its
CPU import needs two operator schemas declared first (done here)."""
from __future__ import annotations

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


def measure(name: str, module: torch.nn.Module, x: torch.Tensor) -> None:
    module.eval()
    model = av.from_torch(module, x)
    xa = av.tensor(x.numpy())
    ref = module(x)
    fwd = np.abs(model(xa).numpy() - ref.detach().numpy()).max() / np.abs(ref.detach().numpy()).max()
    w = np.random.default_rng(0).standard_normal(ref.shape).astype(np.float32)
    (ref * torch.from_numpy(w)).sum().backward()
    _, grads = av.value_and_grad(lambda m, x, w: (m(x) * w).sum())(model, xa, av.tensor(w))
    grad = max(np.abs(grads[n].numpy() - p.grad.numpy()).max() / max(np.abs(p.grad.numpy()).max(), 1e-12)
               for n, p in module.named_parameters())
    g = av.trace(model, xa)
    before = len(g.ops)
    av.passes.PassManager.parse(av.passes.DEFAULT_PIPELINE).run(g)
    fusions = sum(op.name == "fusion" for op in g.ops)
    print(f"| {name} | {fwd:.1e} | {grad:.1e} | {before} | {fusions} | {len(g.ops)} |")


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


if __name__ == "__main__":
    main()
