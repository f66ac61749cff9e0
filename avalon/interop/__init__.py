"""Importers: models from elsewhere as Avalon models.

`from_torch` translates a `torch.export` program (core ATen ops) and `avalon.onnx.load` an ONNX graph
into an `ImportedModel`: a plain callable object whose tensors are Avalon tensors under the source's
names, running the graph node by node through `avalon.ops`, so it traces, compiles, differentiates
and trains like a model written against `avalon.nn`.
"""
from .model import ImportedModel, UnsupportedOp
from .torch_import import ATEN, from_torch

__all__ = ["ATEN", "ImportedModel", "UnsupportedOp", "from_torch"]
