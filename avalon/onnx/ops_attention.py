"""ONNX's transformer ops (Attention, RotaryEmbedding, SwiGLU) as Avalon ops."""
from __future__ import annotations
