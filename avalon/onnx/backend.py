"""`onnx.backend.base.Backend` over Avalon, so onnx's own `BackendTest` runs against it.

`prepare` loads the model (an op Avalon cannot take raises `UnsupportedOp` there, before anything
runs); `run` calls it eagerly, each primitive evaluated by the numpy reference, which lets
shape-like operands given as graph inputs (as the node tests do) be read as values.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from onnx.backend.base import Backend, BackendRep

from ..tensor import Tensor
from .loader import OnnxModel, load


class AvalonRep(BackendRep):
    def __init__(self, model: OnnxModel) -> None:
        self.model = model

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, dict):
            inputs = [inputs[name] for name, _, _ in self.model.input_specs]
        elif not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        out = self.model(*inputs)  # the model makes tensors, lists (sequences) and None (optionals) of them
        out = out if isinstance(out, tuple) else (out,)
        return tuple(_numpy(o) for o in out)


def _numpy(o: Any) -> Any:
    """An output as numpy; a sequence output (a list) as a list of arrays."""
    if isinstance(o, list):
        return [_numpy(e) for e in o]
    if isinstance(o, Tensor) and o.dtype.name == "bf16":  # held as float32; onnx compares ml_dtypes arrays
        import ml_dtypes
        return o.numpy().astype(ml_dtypes.bfloat16)
    return o.numpy() if isinstance(o, Tensor) else np.asarray(o)


class AvalonBackend(Backend):
    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> AvalonRep:
        super().prepare(model, device, **kwargs)
        return AvalonRep(load(model))

    @classmethod
    def run_model(cls, model: Any, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: Any, inputs: Any, device: str = "CPU", outputs_info: Any = None,
                 **kwargs: Any) -> tuple[np.ndarray, ...]:
        raise NotImplementedError("Avalon runs whole models; use run_model")

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"


prepare = AvalonBackend.prepare
run_model = AvalonBackend.run_model
run_node = AvalonBackend.run_node
supports_device = AvalonBackend.supports_device
