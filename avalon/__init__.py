"""Avalon: a deep-learning compiler toolkit.

Models are plain Python objects; `av.trace` records one call as a typed SSA graph (`avalon.ir`),
`avalon.passes` rewrites it in the open, and backends run it: the numpy reference interpreter
(`av.interpret`) and generated Triton kernels. See README.md.
"""
from . import ir, jit, nn, ops, optim, passes, random
from .checkpoint import CheckpointError, load, save
from .compiler import compile, grad, value_and_grad  # noqa: A004  (av.compile, like torch.compile)
from .device import Device, best_available_device, device
from .grad_mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from .interop import from_torch
from .ir import Interpreter, interpret
from .ir.dtypes import bfloat16, bool_, float16, float32, float64, int32, int64
from .ops import (  # torch's tensor functions: `import avalon as av` ports `import torch` code
    abs,
    add,
    addcdiv,
    addcmul,
    addmm,
    all,
    amax,
    amin,
    any,
    arange,
    argmax,
    argmin,
    argsort,
    bmm,
    broadcast_to,
    cat,
    chunk,
    clamp,
    clip,
    concat,
    cos,
    cumprod,
    cumsum,
    diag,
    diagonal,
    div,
    divide,
    einsum,
    empty,
    empty_like,
    eq,
    erf,
    exp,
    expm1,
    eye,
    flatten,
    flip,
    fliplr,
    flipud,
    floor,
    floor_divide,
    fmod,
    full,
    full_like,
    gather,
    ge,
    ger,
    gt,
    index_select,
    is_tensor,
    isfinite,
    isinf,
    isnan,
    le,
    lerp,
    linalg,
    linspace,
    log,
    log1p,
    log_softmax,
    logical_and,
    logical_not,
    logical_or,
    logsumexp,
    lt,
    masked_fill,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    mm,
    moveaxis,
    movedim,
    msort,
    mul,
    multinomial,
    narrow,
    ne,
    neg,
    norm,
    numel,
    ones,
    ones_like,
    outer,
    permute,
    pow,
    prod,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    randperm,
    reciprocal,
    relu,
    remainder,
    repeat_interleave,
    reshape,
    roll,
    rsqrt,
    scatter,
    scatter_add,
    sigmoid,
    sign,
    sin,
    softmax,
    sort,
    split,
    sqrt,
    square,
    squeeze,
    stack,
    std,
    stop_gradient,
    sub,
    sum,
    t,
    take_along_dim,
    tanh,
    tile,
    topk,
    transpose,
    tril,
    triu,
    true_divide,
    trunc,
    unbind,
    unsqueeze,
    var,
    where,
    zeros,
    zeros_like,
)
from .precision import backends, get_float32_matmul_precision, set_float32_matmul_precision
from .random import manual_seed
from .tensor import Buffer, Tensor, TracerError, tensor
from .trace import trace
from .train import fit
from .tree import named_parameters, to_device
from .version import __version__


def _assert(condition: object, message: str) -> None:
    """torch._assert (torchvision's shape checks): a plain assert on a Python bool."""
    assert condition, message


float = float32  # noqa: A001  (torch-style aliases)
double = float64
long = int64
half = float16
bool = bool_  # noqa: A001
