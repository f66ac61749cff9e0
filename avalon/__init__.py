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
    amax,
    amin,
    arange,
    argmax,
    argmin,
    bmm,
    broadcast_to,
    cat,
    chunk,
    clamp,
    concat,
    cos,
    cumsum,
    div,
    empty,
    empty_like,
    eq,
    erf,
    exp,
    eye,
    flatten,
    floor,
    full,
    full_like,
    ge,
    gt,
    index_select,
    is_tensor,
    le,
    linspace,
    log,
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
    mul,
    narrow,
    ne,
    neg,
    numel,
    ones,
    ones_like,
    permute,
    pow,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    reciprocal,
    relu,
    reshape,
    rsqrt,
    sigmoid,
    sign,
    sin,
    split,
    sqrt,
    square,
    squeeze,
    stack,
    stop_gradient,
    sub,
    sum,
    t,
    tanh,
    transpose,
    tril,
    triu,
    unsqueeze,
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
