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

from . import functional, init, parallel, utils
from .cells import GRUCell, LSTMCell, RNNCell, RNNCellBase
from .containers import ModuleDict, ParameterDict, ParameterList
from .conv_transpose import ConvTranspose2d
from .functional import conv2d, relu, sigmoid, tanh
from .layers import (
    CELU,
    ELU,
    GELU,
    GLU,
    SELU,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    BCELoss,
    BCEWithLogitsLoss,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    Embedding,
    Flatten,
    GroupNorm,
    Hardshrink,
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
    PReLU,
    ReLU,
    ReLU6,
    Sequential,
    Sigmoid,
    SiLU,
    SmoothL1Loss,
    Softmax,
    Softmax2d,
    Softmin,
    Softplus,
    Softshrink,
    Softsign,
    Tanh,
    Tanhshrink,
    Threshold,
    Unflatten,
)
from .layers_3d import (
    AdaptiveAvgPool3d,
    AdaptiveMaxPool3d,
    AvgPool3d,
    BatchNorm3d,
    ConvTranspose3d,
    LPPool3d,
    MaxPool3d,
    MaxUnpool3d,
)
from .layers_extra import (
    Bilinear,
    ChannelShuffle,
    CosineEmbeddingLoss,
    CosineSimilarity,
    CTCLoss,
    EmbeddingBag,
    Fold,
    GaussianNLLLoss,
    HingeEmbeddingLoss,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    MarginRankingLoss,
    MultiLabelMarginLoss,
    MultiLabelSoftMarginLoss,
    MultiMarginLoss,
    PairwiseDistance,
    PoissonNLLLoss,
    SoftMarginLoss,
    TripletMarginLoss,
    TripletMarginWithDistanceLoss,
    Unfold,
)
from .layers_more import (
    AlphaDropout,
    ConvTranspose1d,
    FeatureAlphaDropout,
    LocalResponseNorm,
    LPPool1d,
    LPPool2d,
    MaxUnpool1d,
    MaxUnpool2d,
    RMSNorm,
    RReLU,
)
from .lazy import (
    LazyBatchNorm1d,
    LazyBatchNorm2d,
    LazyBatchNorm3d,
    LazyConv1d,
    LazyConv2d,
    LazyConv3d,
    LazyConvTranspose1d,
    LazyConvTranspose2d,
    LazyConvTranspose3d,
    LazyInstanceNorm1d,
    LazyInstanceNorm2d,
    LazyInstanceNorm3d,
    LazyLinear,
)
from .module import (
    IncompatibleKeys,
    Module,
    NnBuffer,
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
from .spatial import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool1d,
    AdaptiveMaxPool2d,
    AvgPool1d,
    CircularPad1d,
    CircularPad2d,
    CircularPad3d,
    ConstantPad1d,
    ConstantPad2d,
    ConstantPad3d,
    Conv1d,
    Conv3d,
    MaxPool1d,
    PixelShuffle,
    PixelUnshuffle,
    ReflectionPad1d,
    ReflectionPad2d,
    ReflectionPad3d,
    ReplicationPad1d,
    ReplicationPad2d,
    ReplicationPad3d,
    Upsample,
    UpsamplingBilinear2d,
    UpsamplingNearest2d,
    ZeroPad1d,
    ZeroPad2d,
    ZeroPad3d,
)
from .sync_batchnorm import SyncBatchNorm
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


Buffer = NnBuffer  # torch.nn.Buffer: a tensor that registers itself as a buffer when assigned to a module
from . import modules, parameter  # noqa: E402  (torch.nn.modules.loss's _Loss; torch.nn.parameter.Parameter)
from . import torch_surface as _surface  # noqa: E402
from .adaptive import AdaptiveLogSoftmaxWithLoss  # noqa: E402
from .parallel import DataParallel  # noqa: E402  (torch.nn.DataParallel; DistributedDataParallel is in nn.parallel)
from .torch_surface import (  # noqa: E402  (LinearCrossEntropyLoss subclasses modules.loss's _WeightedLoss)
    Container,
    CrossMapLRN2d,
    FractionalMaxPool2d,
    FractionalMaxPool3d,
    LinearCrossEntropyLoss,
    LinearCrossEntropyOptions,
    NLLLoss2d,
    UninitializedBuffer,
    UninitializedParameter,
)


def _add_functional() -> None:
    """F.linear_cross_entropy, fractional_max_pool2d/3d, conv_tbc, ... (avalon/nn/torch_surface.py, which
    builds on layers that import functional, so it joins functional's namespace once both exist)."""
    for name in _surface.FUNCTIONAL:
        setattr(functional, name, getattr(_surface, name))
        if name not in functional.__all__:
            functional.__all__.append(name)


_add_functional()

__all__ = [
    "AdaptiveLogSoftmaxWithLoss", "Buffer", "DataParallel", "modules", "parallel", "parameter",
    "Container", "CrossMapLRN2d", "FractionalMaxPool2d", "FractionalMaxPool3d", "LinearCrossEntropyLoss",
    "LinearCrossEntropyOptions", "NLLLoss2d", "RNNCellBase", "UninitializedBuffer", "UninitializedParameter",
    "AdaptiveAvgPool1d", "AdaptiveMaxPool1d", "AvgPool1d", "Bilinear", "CELU", "CircularPad1d", "CircularPad2d",
    "CircularPad3d", "ConstantPad1d", "ConstantPad2d", "ConstantPad3d", "Conv3d", "CosineSimilarity", "Dropout1d",
    "Dropout2d", "Dropout3d", "EmbeddingBag", "GLU", "Hardshrink", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
    "MaxPool1d", "PReLU", "PairwiseDistance", "PixelShuffle", "PixelUnshuffle", "ReflectionPad1d", "ReflectionPad2d",
    "ReflectionPad3d", "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d", "Softmax2d", "Softshrink",
    "Tanhshrink", "Threshold", "UpsamplingBilinear2d", "UpsamplingNearest2d", "ZeroPad1d", "ZeroPad2d", "ZeroPad3d",
    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Conv1d", "GRUCell", "LSTMCell", "ModuleDict", "ParameterDict",
    "ParameterList", "RNNCell", "Upsample",
    "AlphaDropout", "ConvTranspose1d", "FeatureAlphaDropout", "LPPool1d", "LPPool2d", "LazyBatchNorm1d",
    "LazyBatchNorm2d", "LazyConv1d", "LazyConv2d", "LazyLinear", "LocalResponseNorm", "MaxUnpool1d", "MaxUnpool2d",
    "RMSNorm", "RReLU",
    "AdaptiveAvgPool3d", "AdaptiveMaxPool3d", "AvgPool3d", "BatchNorm3d", "ConvTranspose3d", "LPPool3d", "MaxPool3d",
    "MaxUnpool3d", "LazyBatchNorm3d", "LazyConv3d", "LazyConvTranspose1d", "LazyConvTranspose2d",
    "LazyConvTranspose3d", "LazyInstanceNorm1d", "LazyInstanceNorm2d", "LazyInstanceNorm3d",
    "ConvTranspose2d", "MultiheadAttention", "Transformer", "TransformerDecoder", "TransformerDecoderLayer",
    "TransformerEncoder", "TransformerEncoderLayer",
    "CTCLoss", "ChannelShuffle", "CosineEmbeddingLoss", "Fold", "GaussianNLLLoss", "HingeEmbeddingLoss",
    "MarginRankingLoss", "MultiLabelMarginLoss", "MultiLabelSoftMarginLoss", "MultiMarginLoss", "PoissonNLLLoss",
    "SoftMarginLoss", "TripletMarginLoss", "TripletMarginWithDistanceLoss", "Unfold",
    "AvgPool2d", "BCELoss", "BCEWithLogitsLoss", "BatchNorm1d", "BatchNorm2d", "Conv2d", "CrossEntropyLoss",
    "Dropout", "ELU", "Embedding", "Flatten", "GELU", "GRU", "GroupNorm", "Hardsigmoid", "Hardswish", "Hardtanh",
    "HuberLoss", "Identity", "IncompatibleKeys", "KLDivLoss", "L1Loss", "LSTM", "LayerNorm", "LeakyReLU", "Linear",
    "LogSigmoid", "LogSoftmax", "MSELoss", "MaxPool2d", "Mish", "Module", "ModuleList", "NLLLoss", "Parameter",
    "RNN", "RNNBase", "ReLU", "ReLU6", "SELU", "Sequential", "SiLU", "Sigmoid", "SmoothL1Loss", "Softmax",
    "Softmin", "Softplus", "Softsign", "StateDictError", "SyncBatchNorm", "Tanh", "Unflatten", "buffers", "conv2d",
    "eval", "functional", "init", "load_state_dict", "logsoftmax", "maxpool2d", "named_buffers", "named_modules",
    "named_parameters", "parameters", "relu", "sigmoid", "softmax", "state_dict", "tanh", "train",
]


_EINOPS = ("EinMix", "Rearrange", "Reduce")


def __getattr__(name: str) -> object:
    """einops' layers (`from avalon.nn import Rearrange`), when einops is installed."""
    if name in _EINOPS:
        try:
            from . import einops_layers
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(f"avalon.nn.{name} is einops' layer: pip install einops") from e
        return getattr(einops_layers, name)
    raise AttributeError(f"module 'avalon.nn' has no attribute {name!r}")
