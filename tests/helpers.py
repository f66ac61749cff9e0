"""What several test files share: comparing results against torch, and small IR graphs for the
Triton kernel tests. Import with `from helpers import ...` (pytest puts tests/ on sys.path)."""
import numpy as np
import torch

import avalon as av
from avalon.ir import Builder, Graph, TensorType


def as_numpy(x) -> np.ndarray:
    """An Avalon tensor, a torch tensor or anything array-like, as a numpy array."""
    if isinstance(x, av.Tensor):
        return x.numpy()
    if isinstance(x, torch.Tensor):
        return x.detach().numpy()
    return np.asarray(x)


def rel(a, b) -> float:
    """max |a - b| / max |b|: the relative error of a whole result (shapes must match)."""
    a, b = as_numpy(a).astype(np.float64), as_numpy(b).astype(np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def T(x) -> torch.Tensor:
    """A torch tensor of x's values, for torch as the oracle."""
    return torch.from_numpy(np.array(x))  # np.array keeps 0-d shapes


def graph(*types):
    """A graph `f` with one input per (shape, dtype), its builder and the inputs `x0, x1, ...`."""
    g = Graph("f")
    xs = [g.add_input(TensorType(s, d), f"x{i}") for i, (s, d) in enumerate(types)]
    return g, Builder(g), xs
