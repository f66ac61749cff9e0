"""Avalon: a deep-learning compiler toolkit.

Models are plain Python objects; `av.trace` records one call as a typed SSA graph (`avalon.ir`),
`avalon.passes` rewrites it in the open, and backends run it: the numpy reference interpreter
(`av.interpret`) and generated Triton kernels. See README.md.
"""
from . import amp, cuda, distributions, ir, jit, nn, ops, optim, passes, random, utils
from .amp import autocast, get_autocast_dtype, is_autocast_enabled, set_autocast_dtype
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
    allclose,
    amax,
    amin,
    any,
    arange,
    argmax,
    argmin,
    argsort,
    as_tensor,
    bernoulli,
    bincount,
    bmm,
    broadcast_to,
    cat,
    channels_last,
    channels_last_3d,
    chunk,
    clamp,
    clip,
    concat,
    contiguous_format,
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
    equal,
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
    from_numpy,
    full,
    full_like,
    gather,
    ge,
    ger,
    get_default_dtype,
    gt,
    index_add,
    index_copy,
    index_fill,
    index_put,
    index_select,
    initial_seed,
    is_tensor,
    isclose,
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
    preserve_format,
    prod,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    reciprocal,
    relu,
    remainder,
    repeat_interleave,
    reshape,
    roll,
    rsqrt,
    scatter,
    scatter_add,
    scatter_reduce,
    seed,
    set_default_dtype,
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
from .random import Generator, default_generator, manual_seed, multinomial, randperm  # generator= as torch's
from .tensor import LEGACY_TYPES as _LEGACY_TYPES
from .tensor import Buffer, TracerError, tensor
from .tensor import TorchTensor as Tensor  # torch's legacy constructor; isinstance checks avalon.tensor.Tensor
from .trace import trace
from .train import fit
from .tree import named_parameters, to_device
from .utils.threads import get_num_threads, set_num_threads
from .version import __version__


def _assert(condition: object, message: str) -> None:
    """torch._assert (torchvision's shape checks): a plain assert on a Python bool."""
    assert condition, message


float = float32  # noqa: A001  (torch-style aliases)
double = float64
long = int64
half = float16
bool = bool_  # noqa: A001

FloatTensor, DoubleTensor, HalfTensor, BFloat16Tensor = (_LEGACY_TYPES[n] for n in (
    "FloatTensor", "DoubleTensor", "HalfTensor", "BFloat16Tensor"))
IntTensor, LongTensor, BoolTensor = (_LEGACY_TYPES[n] for n in ("IntTensor", "LongTensor", "BoolTensor"))

amp.install_policies()  # autocast's op lists wrap their functions once everything above is imported
