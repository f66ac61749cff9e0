"""`avalon.nn`: layers, functional ops, initializers, losses, and parameter/state-dict utilities,
with PyTorch's names, constructor signatures, parameter names, default initialization and math.

Models are plain objects (a base class is optional): `named_parameters(model)`, `state_dict(model)`
and `load_state_dict(model, mapping)` find tensors by walking attributes, with torch's dotted names.
Functional ops are composites of IR primitives, so tracing, autodiff and fusion see through them.

The short names `relu, sigmoid, tanh, softmax, logsoftmax, maxpool2d, conv2d` keep the original
Avalon's spelling: `softmax`/`logsoftmax` act on the last axis by default, and `maxpool2d(x, (2, 2))`
takes the kernel as a tuple with the stride equal to it.
"""
from __future__ import annotations

from typing import Any

from . import functional, init
from .cells import GRUCell, LSTMCell, RNNCell
from .containers import ModuleDict, ParameterDict, ParameterList
from .conv_transpose import ConvTranspose2d
from .functional import conv2d, relu, sigmoid, tanh
from .layers import (
    ELU,
    GELU,
    SELU,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    BCELoss,
    BCEWithLogitsLoss,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Embedding,
    Flatten,
    GroupNorm,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    HuberLoss,
    Identity,
    KLDivLoss,
    L1Loss,
    LayerNorm,
    LeakyReLU,
    Linear,
    LogSigmoid,
    LogSoftmax,
    MaxPool2d,
    Mish,
    ModuleList,
    MSELoss,
    NLLLoss,
    ReLU,
    ReLU6,
    Sequential,
    Sigmoid,
    SiLU,
    SmoothL1Loss,
    Softmax,
    Softmin,
    Softplus,
    Softsign,
    Tanh,
    Unflatten,
)
from .module import (
    IncompatibleKeys,
    Module,
    Parameter,
    StateDictError,
    buffers,
    eval,
    load_state_dict,
    named_buffers,
    named_modules,
    named_parameters,
    parameters,
    state_dict,
    train,
)
from .rnn import GRU, LSTM, RNN, RNNBase
from .spatial import AdaptiveAvgPool2d, AdaptiveMaxPool2d, Conv1d, Upsample
from .transformer import (
    MultiheadAttention,
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)


def softmax(x: Any, dim: int = -1) -> Any:
    """Softmax along `dim` (the last axis by default, one row per sample)."""
    return functional.softmax(x, dim)


def logsoftmax(x: Any, dim: int = -1) -> Any:
    """Log-softmax along `dim` (the last axis by default), in the stable log-sum-exp form."""
    return functional.log_softmax(x, dim)


def maxpool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Any:
    """Max pooling with the kernel as an int or tuple; the stride defaults to the kernel."""
    return functional.max_pool2d(x, kernel_size, stride, padding)


__all__ = [
    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Conv1d", "GRUCell", "LSTMCell", "ModuleDict", "ParameterDict",
    "ParameterList", "RNNCell", "Upsample",
    "ConvTranspose2d", "MultiheadAttention", "Transformer", "TransformerDecoder", "TransformerDecoderLayer",
    "TransformerEncoder", "TransformerEncoderLayer",
    "AvgPool2d", "BCELoss", "BCEWithLogitsLoss", "BatchNorm1d", "BatchNorm2d", "Conv2d", "CrossEntropyLoss",
    "Dropout", "ELU", "Embedding", "Flatten", "GELU", "GRU", "GroupNorm", "Hardsigmoid", "Hardswish", "Hardtanh",
    "HuberLoss", "Identity", "IncompatibleKeys", "KLDivLoss", "L1Loss", "LSTM", "LayerNorm", "LeakyReLU", "Linear",
    "LogSigmoid", "LogSoftmax", "MSELoss", "MaxPool2d", "Mish", "Module", "ModuleList", "NLLLoss", "Parameter",
    "RNN", "RNNBase", "ReLU", "ReLU6", "SELU", "Sequential", "SiLU", "Sigmoid", "SmoothL1Loss", "Softmax",
    "Softmin", "Softplus", "Softsign", "StateDictError", "Tanh", "Unflatten", "buffers", "conv2d", "eval",
    "functional", "init", "load_state_dict", "logsoftmax", "maxpool2d", "named_buffers", "named_modules",
    "named_parameters", "parameters", "relu", "sigmoid", "softmax", "state_dict", "tanh", "train",
]
