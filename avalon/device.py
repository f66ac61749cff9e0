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

    def __copy__(self) -> Device:
        return self  # frozen, so sharing is safe; identity fast paths (`is CPU`) keep working

    def __deepcopy__(self, memo: dict) -> Device:
        return self

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

