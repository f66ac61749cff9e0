"""ONNX image ops (resizing, sampling grids, 3-d convolution and pooling, ROI ops) as Avalon ops."""
from __future__ import annotations
