"""Devices. A CPU tensor keeps its data in a numpy array; a CUDA tensor keeps it in torch storage
(torch is used for memory only: Avalon never runs torch compute on its execution path)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    type: str  # "cpu" or "cuda"
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self) -> str:
        return f"av.device('{self}')"

    @property
    def torch(self):
        import torch
        return torch.device(str(self))


CPU = Device("cpu")


def device(spec: str | Device | None = None) -> Device:
    """`av.device("cpu" | "cuda" | "cuda:N")`."""
    if spec is None:
        return CPU
    if isinstance(spec, Device):
        return spec
    s = str(spec)
    kind, _, idx = s.partition(":")
    if kind not in ("cpu", "cuda") or (idx and not idx.isdigit()):
        raise ValueError(f"unknown device {spec!r}; expected 'cpu', 'cuda' or 'cuda:N'")
    if kind == "cpu":
        return CPU
    return Device("cuda", int(idx) if idx else 0)


def cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing or broken driver
        return False


def best_available_device() -> Device:
    """CUDA when a GPU is present, else the CPU."""
    return Device("cuda", 0) if cuda_available() else CPU


def to_device(obj, dev):
    """`av.to_device(obj, device)`: move every tensor inside a model (in place) or a nested
    structure (a new structure) to `dev`."""
    from .tensor import Tensor, tensor
    from .tree import is_model, named_tensors
    dev = device(dev)
    if isinstance(obj, Tensor):
        return obj.to(dev)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(x, dev) for x in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, dev) for k, v in obj.items()}
    if is_model(obj):
        for _, t in named_tensors(obj):
            moved = t.to(dev)
            t._data, t._device = moved._data, moved._device
        return obj
    if hasattr(obj, "shape"):
        return tensor(obj, device=dev)
    return obj
