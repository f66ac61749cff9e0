"""Parameter initializers with `torch.nn.init`'s names, formulas and fan rules.

They fill a Tensor's data in place from `avalon.random.generator()` (so `av.manual_seed` makes
them repeatable) and return it. They are host-side: they run eagerly, never inside a trace.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from .. import random as av_random
from ..tensor import LITERALS, Tensor
from ..trace import assign

__all__ = [
    "calculate_gain", "constant_", "kaiming_normal_", "kaiming_uniform_", "normal_", "ones_", "trunc_normal_",
    "uniform_", "xavier_normal_", "xavier_uniform_", "zeros_",
]


def _gen(generator: np.random.Generator | None) -> np.random.Generator:
    return generator if generator is not None else av_random.generator()


def _random(tensor: Any, who: str) -> None:
    """Random initializers fill floating-point tensors only (torch's uniform_/normal_ kernels refuse
    integer and bool tensors; cast random floats would be mostly zeros, silently)."""
    if isinstance(tensor, Tensor) and tensor.numel() and not (tensor.is_floating_point() or tensor.is_complex()):
        raise NotImplementedError(f"{who}: random initialization needs a floating-point tensor, got {tensor.dtype}")


def _fill(tensor: Tensor, values: Any, literal: bool = False) -> Tensor:
    """Write `values` into `tensor` in place (on any device), keeping its dtype. Random values (not `literal`)
    make a tensor built while tracing (a layer's parameter, `layers.empty`) a draw of this call rather than literal
    data of the program, so a compiled function that builds the layer draws anew on each call, as torch does."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"initializers fill an avalon Tensor in place, got {type(tensor).__name__}")
    if tensor.is_traced:
        raise RuntimeError("initializers run eagerly on concrete tensors, not inside a trace")
    arr = np.broadcast_to(np.asarray(values), tensor.shape)
    assign(tensor, Tensor(np.array(arr), dtype=tensor.dtype))  # np.array keeps 0-d shapes
    if not literal:
        LITERALS.pop(id(tensor), None)
    return tensor


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (torch.nn.init.calculate_gain)."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
    if nonlinearity in linear or nonlinearity == "sigmoid":
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = float(param)
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(tensor: Any) -> tuple[int, int]:
    """torch's rule: dim 1 is fan-in, dim 0 fan-out, times the receptive field (dims 2+)."""
    shape = tuple(tensor.shape)
    if len(shape) < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _calculate_correct_fan(tensor: Any, mode: str) -> int:
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0, generator: np.random.Generator | None = None) -> Tensor:
    _random(tensor, "uniform_")
    return _fill(tensor, _gen(generator).uniform(a, b, tensor.shape))


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0,
            generator: np.random.Generator | None = None) -> Tensor:
    _random(tensor, "normal_")
    return _fill(tensor, _gen(generator).normal(mean, std, tensor.shape))


def trunc_normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0,
                  generator: np.random.Generator | None = None) -> Tensor:
    """Normal(mean, std) restricted to [a, b], sampled as torch samples it: by resampling values
    outside [a, b] when [a, b] holds more than 0.3 of the mass; else, where that could take forever (b
    < a, or [a, b] far in a tail), by uniform proposals in [a, b] accepted in proportion to the density
    (an empty [a, b] refused, as torch's uniform_ refuses it)."""
    _random(tensor, "trunc_normal_")
    if mean < a - 2 * std or mean > b + 2 * std:
        warnings.warn("mean is more than 2 std from [a, b] in nn.init.trunc_normal_. The distribution of values "
                      "may be incorrect.", stacklevel=2)
    g = _gen(generator)
    if (math.erf((b - mean) / std / math.sqrt(2.0)) - math.erf((a - mean) / std / math.sqrt(2.0))) / 2 > 0.3:
        out = g.normal(mean, std, tensor.shape)
        bad = (out < a) | (out > b)
        while bad.any():
            out[bad] = g.normal(mean, std, int(bad.sum()))
            bad = (out < a) | (out > b)
        return _fill(tensor, out)
    if a > b:
        raise RuntimeError(f"trunc_normal_: the interval [a, b] = [{a}, {b}] is empty (a > b)")
    log_peak = -0.5 * ((max(a, min(mean, b)) - mean) / std) ** 2  # at the mode of the truncated density
    out = np.empty(tensor.shape)
    pending = np.ones(tensor.shape, bool)
    while pending.any():
        x = g.uniform(a, b, int(pending.sum()))
        keep = np.log(g.uniform(0.0, 1.0, x.shape)) <= -0.5 * ((x - mean) / std) ** 2 - log_peak
        idx = np.flatnonzero(pending)[keep]
        out.flat[idx] = x[keep]
        pending.flat[idx] = False
    return _fill(tensor, out)


def constant_(tensor: Tensor, val: float) -> Tensor:
    return _fill(tensor, val, literal=True)


def zeros_(tensor: Tensor) -> Tensor:
    return _fill(tensor, 0, literal=True)


def ones_(tensor: Tensor) -> Tensor:
    return _fill(tensor, 1, literal=True)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0, generator: np.random.Generator | None = None) -> Tensor:
    """U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    a = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    return uniform_(tensor, -a, a, generator)


def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator: np.random.Generator | None = None) -> Tensor:
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std, generator)


def kaiming_uniform_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                     generator: np.random.Generator | None = None) -> Tensor:
    """U(-bound, bound) with bound = gain * sqrt(3 / fan) (He et al., 2015). With torch's layer
    default a=sqrt(5) this is U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    if 0 in tuple(tensor.shape):
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    bound = math.sqrt(3.0) * calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor: Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    generator: np.random.Generator | None = None) -> Tensor:
    """N(0, std^2) with std = gain / sqrt(fan)."""
    if 0 in tuple(tensor.shape):
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return normal_(tensor, 0.0, std, generator)


def conv_default_(weight: Any, bias: Any = None) -> None:
    """torch's default init of a convolution (Conv1d/2d, ConvTranspose2d `reset_parameters`):
    kaiming_uniform_(a=sqrt(5)) on the weight, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) on the bias, the
    bias left as it is when fan_in is 0 (as torch does)."""
    kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = _calculate_fan_in_and_fan_out(weight)
        if fan_in != 0:
            bound = 1 / math.sqrt(fan_in)
            uniform_(bias, -bound, bound)


# -- torch's structured initializers: orthogonal_, dirac_, eye_, sparse_ -----------------------------------

__all__ += ["dirac_", "eye_", "orthogonal_", "sparse_"]


def orthogonal_(tensor: Tensor, gain: float = 1.0, generator: np.random.Generator | None = None) -> Tensor:
    """A (semi-)orthogonal matrix (Saxe et al., 2013), as torch: the Q of a QR decomposition of a
    standard normal (rows, numel/rows) matrix (transposed when it is wide), its columns' signs fixed by
    R's diagonal so that Q is uniformly (Haar) distributed, times `gain`. So W W^T = gain^2 I for a
    wide W, W^T W = gain^2 I for a tall one, with W the tensor viewed as (rows, numel/rows)."""
    if tensor.ndim < 2:
        raise ValueError("Only tensors with 2 or more dimensions are supported")
    _random(tensor, "orthogonal_")
    if tensor.numel() == 0:
        return tensor
    rows = tensor.shape[0]
    cols = tensor.numel() // rows
    flat = _gen(generator).normal(0.0, 1.0, (rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _fill(tensor, gain * q.reshape(tensor.shape))


def dirac_(tensor: Tensor, groups: int = 1) -> Tensor:
    """The Dirac delta, as torch: a 3-, 4- or 5-d convolution weight that passes its input through
    (per group, output channel d of a group takes input channel d at the kernel's centre; the rest 0)."""
    dims = tensor.ndim
    if dims not in (3, 4, 5):
        raise ValueError("Only tensors with 3, 4, or 5 dimensions are supported")
    sizes = tensor.shape
    if sizes[0] % groups != 0:
        raise ValueError("dim 0 must be divisible by groups")
    per_group = sizes[0] // groups
    out = np.zeros(sizes)
    centre = tuple(s // 2 for s in sizes[2:])
    for g in range(groups):
        for d in range(min(per_group, sizes[1])):
            out[(g * per_group + d, d) + centre] = 1
    return _fill(tensor, out, literal=True)


def eye_(tensor: Tensor) -> Tensor:
    """The identity matrix (ones on the diagonal of a 2-d tensor, rectangular too), as torch."""
    if tensor.ndim != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    return _fill(tensor, np.eye(*tensor.shape), literal=True)


def sparse_(tensor: Tensor, sparsity: float, std: float = 0.01,
            generator: np.random.Generator | None = None) -> Tensor:
    """A sparse matrix (Martens, 2010), as torch: N(0, std^2) values, then in every column
    ceil(sparsity * rows) randomly chosen rows set to zero."""
    if tensor.ndim != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    _random(tensor, "sparse_")
    rows, cols = tensor.shape
    num_zeros = int(math.ceil(sparsity * rows))
    g = _gen(generator)
    out = g.normal(0.0, std, (rows, cols))
    for c in range(cols):
        out[g.permutation(rows)[:num_zeros], c] = 0
    return _fill(tensor, out)


def _deprecated(new: Any) -> Any:
    """torch's old names without the underscore (`init.normal`): the function, with torch's warning."""
    old = new.__name__[:-1]

    def fn(*args: Any, **kwargs: Any) -> Any:
        import warnings
        warnings.warn(f"`nn.init.{old}` is now deprecated in favor of `nn.init.{new.__name__}`.", FutureWarning,
                      stacklevel=2)
        return new(*args, **kwargs)
    fn.__name__, fn.__doc__ = old, f"Deprecated: `{new.__name__}`."
    return fn


uniform, normal, constant = _deprecated(uniform_), _deprecated(normal_), _deprecated(constant_)
eye, dirac, orthogonal, sparse = _deprecated(eye_), _deprecated(dirac_), _deprecated(orthogonal_), _deprecated(sparse_)
xavier_uniform, xavier_normal = _deprecated(xavier_uniform_), _deprecated(xavier_normal_)
kaiming_uniform, kaiming_normal = _deprecated(kaiming_uniform_), _deprecated(kaiming_normal_)
__all__ += ["constant", "dirac", "eye", "kaiming_normal", "kaiming_uniform", "normal", "orthogonal", "sparse",
            "uniform", "xavier_normal", "xavier_uniform"]
