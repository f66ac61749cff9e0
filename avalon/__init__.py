"""Avalon: a deep-learning compiler toolkit.

Models are plain Python objects; `av.trace` records one call as a typed SSA graph (`avalon.ir`),
`avalon.passes` rewrites it in the open, and backends run it: the numpy reference interpreter
(`av.interpret`) and generated Triton kernels. See README.md.
"""
from . import ir, ops
from .codegen.numpy import Interpreter, interpret
from .device import Device, best_available_device, device
from .ir.dtypes import bfloat16, bool_, float16, float32, float64, int32, int64
from .tensor import Buffer, Tensor, TracerError, tensor
from .trace import trace
from .tree import named_parameters

__version__ = "0.1.0"

float = float32  # noqa: A001  (torch-style aliases)
double = float64
long = int64
half = float16
bool = bool_  # noqa: A001


def to_device(obj, device):
    """Move every tensor inside a model or a nested structure to `device` (in place for models)."""
    from .tree import is_model, named_tensors
    dev = globals()["device"](device) if not isinstance(device, Device) else device
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


__all__ = [
    "Buffer", "Device", "Interpreter", "Tensor", "TracerError", "best_available_device", "bfloat16", "bool_",
    "device", "float16", "float32", "float64", "int32", "int64", "interpret", "ir", "named_parameters", "ops",
    "tensor", "to_device", "trace",
]
