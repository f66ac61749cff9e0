"""`av.cuda`: torch.cuda's queries that ported code makes (`if av.cuda.is_available(): ...`).

A GPU counts when torch sees one (`avalon.device.cuda_available`): torch holds Avalon's device
memory, so a GPU torch cannot use is one Avalon cannot use either. Avalon has one random generator
for every device, so the seeding calls seed it.
"""
from __future__ import annotations

from .amp import cuda_amp as amp  # noqa: F401  (av.cuda.amp.autocast / GradScaler: torch.cuda.amp's spellings)
from .device import cuda_available
from .random import manual_seed as _manual_seed


def is_available() -> bool:
    """Whether a CUDA GPU is visible to torch (False on a CPU-only build or machine)."""
    return cuda_available()


def device_count() -> int:
    """The number of CUDA GPUs torch sees (0 without one)."""
    if not cuda_available():
        return 0
    import torch
    return int(torch.cuda.device_count())


def current_device() -> int:
    """The index of the current CUDA device (torch's, which Avalon's 'cuda' means)."""
    if not cuda_available():
        raise RuntimeError("av.cuda.current_device(): no CUDA GPU is available")
    import torch
    return int(torch.cuda.current_device())


def get_device_name(device: int | None = None) -> str:
    """The GPU's name, as torch reports it."""
    if not cuda_available():
        raise RuntimeError("av.cuda.get_device_name(): no CUDA GPU is available")
    import torch
    return str(torch.cuda.get_device_name(device))


def synchronize(device: int | None = None) -> None:
    """Wait for the GPU's queued work (kernels, copies), for timing; nothing to do without a GPU."""
    if cuda_available():
        import torch
        torch.cuda.synchronize(device)


def manual_seed(seed: int) -> None:
    """torch.cuda.manual_seed: Avalon's one generator serves every device, so this is av.manual_seed."""
    _manual_seed(seed)


manual_seed_all = manual_seed
