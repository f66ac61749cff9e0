"""torch.distributed.optim.ZeroRedundancyOptimizer: optimizer state sharded over the ranks (ZeRO stage 1).

    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=optim.AdamW, lr=1e-3)
    loss, grads = av.value_and_grad(objective)(model, x, y)
    opt.step(dist.all_reduce(grads))          # this rank's partition updated, then broadcast from each owner
    opt.consolidate_state_dict(to=0)          # every rank calls it
    if dist.get_rank() == 0:
        av.save(opt.state_dict(), "opt.safetensors")

Parameters are partitioned as torch partitions them: group by group, largest first, each to the rank
with the fewest elements so far (the first such). Each rank builds `optimizer_class` (`opt.optim`) over
its partition only, so it holds the state (Adam's moments) of those parameters only. `step(grads)`
gives the local optimizer the gradients (Avalon's are values: the averaged gradients, as torch's
`.grad` after DDP's backward) and then every parameter is broadcast from its owner (eagerly one
collective per owner and dtype; inside a traced step `broadcast` ops, i.e. all_gather ops).

`consolidate_state_dict(to)` gathers the shards on rank `to`, where `state_dict()` returns them in the
keys a plain `optimizer_class` over all the parameters uses (so the checkpoint loads into one);
`load_state_dict` takes such a dict on every rank and keeps its partition's part. `param_groups` are
torch's global groups (every parameter; a hyperparameter written there, by an LR scheduler, reaches the
local optimizer's group where this rank owns parameters of it); `lr` is the first group's.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import numpy as np

from avalon.optim import AdamW, _parse
from avalon.tensor import Tensor, as_array
from avalon.trace import assign, current_trace

from .collectives import _check_group, broadcast, gather_object
from .group import broadcast_arrays, rank, world_size

__all__ = ["ZeroRedundancyOptimizer"]


class ZeroRedundancyOptimizer:
    """torch.distributed.optim.ZeroRedundancyOptimizer over the default group (module docstring)."""

    def __init__(self, params: Any, optimizer_class: type = AdamW, process_group: Any = None,
                 parameters_as_bucket_view: bool = False, overlap_with_ddp: bool = False, **defaults: Any):
        who = "ZeroRedundancyOptimizer"
        _check_group(process_group, who)
        if overlap_with_ddp:
            raise NotImplementedError(f"{who}: overlap_with_ddp is not supported (Avalon's gradients are values, "
                                      "there is no DDP communication hook to overlap with)")
        groups, self._kind = _parse(params, who)
        self.world_size, self.rank = world_size(), rank()
        self.optimizer_class, self.defaults = optimizer_class, dict(defaults)
        self.params: dict[str, Tensor] = {n: t for g in groups for n, t in g["params"]}
        self.owner: dict[str, int] = {}
        sizes = [0] * self.world_size
        for g in groups:  # torch's _partition_parameters: largest first, to the first least-loaded rank
            for n, t in sorted(g["params"], key=lambda nt: nt[1].numel(), reverse=True):
                r = sizes.index(min(sizes))
                self.owner[n] = r
                sizes[r] += t.numel()
        self.partition: list[list[str]] = [[n for n in self.params if self.owner[n] == r]
                                           for r in range(self.world_size)]
        local, self._groups = [], []  # local group i is global group self._groups[i]
        for gi, g in enumerate(groups):
            mine = [(n, t) for n, t in g["params"] if self.owner[n] == self.rank]
            if mine:
                local.append({**{k: v for k, v in g.items() if k != "params"}, "params": mine})
                self._groups.append(gi)
        self.optim = optimizer_class(local, **defaults) if local else None
        self._consolidated: dict[str, Tensor] | None = None
        self._steps = 0
        # every global group's hyperparameters, for the groups this rank holds no parameter of
        probe = self.optim.param_groups[0] if self.optim is not None else {}
        self.param_groups = [_ZeroGroup(self, gi, [n for n, _ in g["params"]], {
            **{k: self.defaults.get(k, v) for k, v in probe.items() if k not in ("params", "param_names")},
            **{k: v for k, v in g.items() if k != "params"}}) for gi, g in enumerate(groups)]

    # -- torch's surface ---------------------------------------------------------------------------

    @property
    def state(self) -> Mapping:
        """The local optimizer's state: this rank's partition's parameters only."""
        return {} if self.optim is None else self.optim.state

    @property
    def lr(self) -> float:
        """The first group's learning rate; setting it sets every group's."""
        return float(self.param_groups[0]["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        for g in self.param_groups:
            g["lr"] = value

    @property
    def steps(self) -> int:
        """How many steps have been taken (a rank owning no parameter counts its own)."""
        return self.optim.steps if self.optim is not None else self._steps

    def _local_group(self, gi: int) -> Any:
        return self.optim.param_groups[self._groups.index(gi)] if gi in self._groups else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to clear (gradients are values)."""

    def _grads(self, grads: Any) -> Any:
        if isinstance(grads, Tensor) and len(self.params) == 1:
            return {next(iter(self.params)): grads}
        if isinstance(grads, (list, tuple)) and self._kind == "positional":
            return {str(i): g for i, g in enumerate(grads)}
        return grads

    def step(self, grads: Any = None, closure: Any = None) -> None:
        """Update this rank's partition from `grads` (av.grad's dict; gradients of other ranks'
        parameters are ignored), then give every rank every parameter from its owner."""
        if closure is not None or callable(grads):
            raise TypeError("ZeroRedundancyOptimizer.step takes the gradients, not a closure")
        if grads is None:
            raise TypeError("ZeroRedundancyOptimizer.step(grads): Avalon's gradients are values; pass av.grad's")
        if self.optim is not None:
            self.optim.step(self._grads(grads))
        else:
            self._steps += 1
        if self.world_size == 1:
            return
        if current_trace() is not None:
            for n, t in self.params.items():
                broadcast(t, self.owner[n])
            return
        for r, names in enumerate(self.partition):
            if not names:
                continue
            arrays = broadcast_arrays([np.asarray(as_array(self.params[n])) for n in names], src=r)
            if r != self.rank:
                for n, a in zip(names, arrays):
                    assign(self.params[n], Tensor(a, dtype=self.params[n].dtype))

    # -- checkpoints -----------------------------------------------------------------------------------

    def _global_key(self, k: str) -> str:
        if k == "lr":
            return "lr" if self._groups[0] == 0 else f"param_groups.{self._groups[0]}.lr"
        if k.startswith("param_groups."):
            _, i, rest = k.split(".", 2)
            return f"param_groups.{self._groups[int(i)]}.{rest}"
        return k

    def local_state_dict(self) -> dict[str, Tensor]:
        """This rank's shard, in the global keys (parameter groups numbered as given)."""
        if self.optim is None:
            return {}
        return {self._global_key(k): v for k, v in self.optim.state_dict().items()}

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather every rank's shard on rank `to` (every rank must call it)."""
        shard = {k: np.array(as_array(v)) for k, v in self.local_state_dict().items()}
        if self.world_size == 1:
            shards = [shard]
        else:
            shards = [None] * self.world_size if self.rank == to else None
            gather_object(shard, shards, dst=to)
        if self.rank == to:
            merged: dict[str, Tensor] = {}
            for s in shards:
                merged.update({k: Tensor(v) for k, v in s.items()})
            self._consolidated = merged
        else:
            self._consolidated = None

    def state_dict(self) -> dict[str, Tensor]:
        """The consolidated state (on the rank `consolidate_state_dict` gathered it to), in the keys of a
        plain `optimizer_class` over all the parameters."""
        if self._consolidated is None:
            raise RuntimeError(f"ZeroRedundancyOptimizer.state_dict: rank {self.rank} holds no consolidated state; "
                               "call consolidate_state_dict(to=<this rank>) on every rank first")
        return dict(self._consolidated)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a consolidated state (every rank calls it with the whole dict); each keeps its partition's."""
        if self.optim is None:
            return
        mine = set(self.partition[self.rank])
        local: dict[str, Any] = {}
        for k in self.optim.state_dict():
            g = self._global_key(k)
            if g not in state:
                raise KeyError(f"ZeroRedundancyOptimizer.load_state_dict: {g!r} missing")
            local[k] = state[g]
        for k, v in state.items():  # parameters' slots a loaded state adds (momentum turned on), and own counts
            if k.startswith("state.") and k.split(".", 1)[1].rsplit(".", 1)[0] in mine:
                local[k] = v
        self.optim.load_state_dict(local)
        self._consolidated = None

    def __repr__(self) -> str:
        return (f"ZeroRedundancyOptimizer(rank {self.rank} of {self.world_size}, {len(self.partition[self.rank])} of "
                f"{len(self.params)} parameters, {self.optimizer_class.__name__})")


class _ZeroGroup(MutableMapping):
    """One of `ZeroRedundancyOptimizer.param_groups`: torch's global group (every parameter, every rank
    sees every group), whose hyperparameters read and write the local optimizer's group where this
    rank owns parameters of it, so an LR scheduler sets each group's 'lr' by its global index."""

    # no __dict__: the tracer does not walk a group, so its Python floats are not part of a step's signature
    __slots__ = ("_zero", "_index", "_names", "_hypers")

    def __init__(self, zero: ZeroRedundancyOptimizer, index: int, names: list[str], hypers: dict[str, Any]):
        self._zero, self._index, self._names, self._hypers = zero, index, names, hypers

    def __getitem__(self, key: str) -> Any:
        if key == "params":
            return [self._zero.params[n] for n in self._names]
        if key == "param_names":
            return list(self._names)
        local = self._zero._local_group(self._index)
        return local[key] if local is not None and key in local else self._hypers[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in ("params", "param_names"):
            raise TypeError(f"param_groups[{self._index}][{key!r}] is fixed once the optimizer is built")
        local = self._zero._local_group(self._index)
        if local is not None:
            local[key] = value
        self._hypers[key] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"param_groups[{self._index}][{key!r}] cannot be removed")

    def __iter__(self) -> Iterator[str]:
        yield "params"
        yield "param_names"
        yield from (k for k in self._hypers if k not in ("params", "param_names"))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return repr({k: (self._names if k == "params" else self[k]) for k in self if k != "param_names"})
