"""Training checkpoints for data-parallel runs, in the ordinary `av.save` format.

One file holds the model's state dict under its own names, the optimizer's state under
`@optimizer/` and any extra state (fit's epoch, seed, history, the random generator) under
`@extra/`; `av.save` takes any string keys, so the checkpoint format itself is not extended and any
safetensors reader opens the file. `save` writes on rank 0 only (atomically, through `av.save`)
while the others wait at a bounded barrier, so once it returns every rank may read the file.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from avalon.checkpoint import load as load_file
from avalon.checkpoint import save as save_file
from avalon.tensor import Tensor, as_array

from .group import barrier, rank

OPTIMIZER, EXTRA = "@optimizer/", "@extra/"


def _model_state(model: Any) -> dict[str, Any]:
    if isinstance(model, Mapping):
        return dict(model)
    from avalon.nn import state_dict
    return dict(state_dict(model))


def save(model: Any, path: str | os.PathLike, optimizer: Any = None,
         extra: Mapping[str, Any] | None = None) -> None:
    """Write `model` (and `optimizer`'s state, and `extra`: arrays, or plain state such as a
    scheduler's `state_dict()`) to `path` on rank 0; every rank returns once the file is complete."""
    if rank() == 0:
        state = _model_state(model)
        if optimizer is not None:
            state.update({OPTIMIZER + k: v for k, v in optimizer.state_dict().items()})
        for k, v in (extra or {}).items():  # arrays, or plain state (a scheduler's state_dict)
            state[EXTRA + k] = v if isinstance(v, (Tensor, Mapping, list, tuple, str)) else np.asarray(v)
        save_file(state, path)
    barrier()


def load(path: str | os.PathLike, model: Any = None, optimizer: Any = None) -> dict[str, np.ndarray]:
    """Restore what `save` wrote into `model` and `optimizer` (each optional); returns the extra state."""
    state = load_file(path)
    model_part = {k: v for k, v in state.items() if not k.startswith((OPTIMIZER, EXTRA))}
    opt_part = {k[len(OPTIMIZER):]: v for k, v in state.items() if k.startswith(OPTIMIZER)}
    if model is not None:
        from avalon.nn import load_state_dict
        load_state_dict(model, model_part)
    if optimizer is not None:
        if not opt_part:
            raise KeyError(f"{os.fspath(path)}: holds no optimizer state (saved without optimizer=)")
        optimizer.load_state_dict(opt_part)
    return {k[len(EXTRA):]: np.asarray(as_array(v)) if isinstance(v, Tensor) else v
            for k, v in state.items() if k.startswith(EXTRA)}
