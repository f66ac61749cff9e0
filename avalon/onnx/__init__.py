"""ONNX in and out: `load` an ONNX model as an Avalon model, `export` an Avalon model or function
(or IR) as ONNX, and `backend`, an `onnx.backend.base.Backend` so onnx's node tests run against Avalon.

`onnx` (and `onnxruntime`, for tests) are optional: `pip install -e ".[onnx]"`.
"""
from ..interop.model import UnsupportedOp
from .loader import OnnxModel, load
from .table import ONNX_OPS

__all__ = ["ONNX_OPS", "OnnxModel", "UnsupportedOp", "backend", "export", "load"]


def __getattr__(name: str):  # backend and export import onnx; load them on first use
    if name == "backend":  # (`from . import backend` would look the name up here again, forever)
        import importlib
        return importlib.import_module(f"{__name__}.backend")
    if name == "export":
        from .exporter import export
        return export
    raise AttributeError(name)
