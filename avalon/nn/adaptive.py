"""`nn.AdaptiveLogSoftmaxWithLoss` (Grave et al., efficient softmax approximation for GPUs), as torch's.

torch computes each tail cluster only for the targets that fall in it (a `nonzero` per cluster: shapes
that depend on values). Here every cluster's log-probabilities are computed for the whole batch and the
right one is selected per sample with `where`, so the graph has static shapes and traces, compiles and
differentiates like any layer: the values and gradients are torch's, the cost is the batch times every
cluster's (reduced) width instead of only the targets' share of it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor
from . import functional as F
from .layers import Linear, ModuleList, Sequential
from .module import Module


class ASMoutput(NamedTuple):
    """torch's `_ASMoutput`: the target's log-probability per sample, and the mean negative of it."""
    output: Tensor
    loss: Tensor


class AdaptiveLogSoftmaxWithLoss(Module):
    """torch.nn.AdaptiveLogSoftmaxWithLoss(in_features, n_classes, cutoffs, div_value=4.0, head_bias=False):
    parameters `head` and `tail.<i>.0` / `tail.<i>.1` as torch names them."""

    def __init__(self, in_features: int, n_classes: int, cutoffs: Sequence[int], div_value: float = 4.0,
                 head_bias: bool = False, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        cutoffs = list(cutoffs)
        if len(cutoffs) == 0:
            raise ValueError("cutoffs should be a sequence of length larger than 0")
        if (cutoffs != sorted(cutoffs) or min(cutoffs) <= 0 or max(cutoffs) > (n_classes - 1)
                or len(set(cutoffs)) != len(cutoffs) or any(int(c) != c for c in cutoffs)):
            raise ValueError("cutoffs should be a sequence of unique, positive integers sorted in an increasing "
                             "order, where each value is between 1 and n_classes-1")
        self.in_features, self.n_classes, self.div_value, self.head_bias = in_features, n_classes, div_value, head_bias
        self.cutoffs = cutoffs + [n_classes]
        self.shortlist_size = self.cutoffs[0]
        self.n_clusters = len(self.cutoffs) - 1
        self.head_size = self.shortlist_size + self.n_clusters
        self.head = Linear(in_features, self.head_size, bias=head_bias, device=device, dtype=dtype)
        tails = []
        for i in range(self.n_clusters):
            hsz = int(in_features // (div_value ** (i + 1)))
            osz = self.cutoffs[i + 1] - self.cutoffs[i]
            tails.append(Sequential(Linear(in_features, hsz, bias=False, device=device, dtype=dtype),
                                    Linear(hsz, osz, bias=False, device=device, dtype=dtype)))
        self.tail = ModuleList(tails)

    def reset_parameters(self) -> None:
        self.head.reset_parameters()
        for seq in self.tail:
            for lin in seq:
                lin.reset_parameters()

    def _batched(self, input: Any) -> tuple[Tensor, bool]:
        x = input if isinstance(input, Tensor) else ops.tensor(input)
        if x.ndim not in (1, 2) or x.shape[-1] != self.in_features:
            raise RuntimeError(f"AdaptiveLogSoftmaxWithLoss: input should be 1-d or 2-d with {self.in_features} "
                               f"features, got shape {x.shape}")
        return (x, True) if x.ndim == 2 else (ops.expand_dims(x, 0), False)

    def forward(self, input: Any, target: Any) -> ASMoutput:
        x, batched = self._batched(input)
        t = target if isinstance(target, Tensor) else ops.tensor(target)
        t = ops.reshape(t, (-1,)) if batched or t.ndim else ops.reshape(t, (1,))
        if t.shape[0] != x.shape[0]:
            raise RuntimeError("Input and target should have the same size in the batch dimension.")
        if not t.is_traced:
            tv = t.numpy()
            if tv.size and (tv.min() < 0 or tv.max() >= self.n_classes):
                raise RuntimeError(f"Target values should be in [0, {self.n_classes - 1}], but values in range "
                                   f"[{tv.min()}, {tv.max()}] were found. ")
        else:  # checked when the graph runs (an out-of-range target was clamped into a class in silence)
            t = ops.check_values(t, ops.logical_and(ops.ge(t, 0), ops.lt(t, self.n_classes)),
                                 f"AdaptiveLogSoftmaxWithLoss: Target values should be in [0, {self.n_classes - 1}]")
        t = ops.cast(t, dt.int64)
        head = F.log_softmax(self.head(x), dim=1)
        out = ops.squeeze(ops.take_along_dim(head, ops.expand_dims(ops.clamp(t, 0, self.shortlist_size - 1), 1), 1), 1)
        for i in range(self.n_clusters):
            lo, hi = self.cutoffs[i], self.cutoffs[i + 1]
            inside = ops.logical_and(ops.ge(t, lo), ops.lt(t, hi))
            cluster = F.log_softmax(self.tail[i](x), dim=1)
            local = ops.expand_dims(ops.clamp(ops.sub(t, lo), 0, hi - lo - 1), 1)
            value = ops.add(head[:, self.shortlist_size + i], ops.squeeze(ops.take_along_dim(cluster, local, 1), 1))
            out = ops.where(inside, value, out)
        loss = ops.mean(ops.neg(out))
        return ASMoutput(out if batched else ops.squeeze(out, 0), loss)

    def _full_log_prob(self, x: Tensor) -> Tensor:
        head = F.log_softmax(self.head(x), dim=1)
        parts = [head[:, :self.shortlist_size]]
        for i in range(self.n_clusters):
            cluster = F.log_softmax(self.tail[i](x), dim=1)
            parts.append(ops.add(cluster, head[:, self.shortlist_size + i:self.shortlist_size + i + 1]))
        return ops.concat(parts, 1)

    def log_prob(self, input: Any) -> Tensor:
        """The log-probability of every class, (N, n_classes) (or (n_classes,) for one sample)."""
        x, batched = self._batched(input)
        out = self._full_log_prob(x)
        return out if batched else ops.squeeze(out, 0)

    def predict(self, input: Any) -> Tensor:
        """The most likely class of each sample (argmax of log_prob)."""
        return ops.argmax(self.log_prob(input), -1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, n_classes={self.n_classes}, cutoffs={self.cutoffs[:-1]}, "
                f"div_value={self.div_value}, head_bias={self.head_bias}")
