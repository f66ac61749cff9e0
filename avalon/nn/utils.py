"""`torch.nn.utils`' gradient clipping, for Avalon's functional gradients.

In torch, `clip_grad_norm_(model.parameters(), max_norm)` rescales each parameter's `.grad`. Avalon's
gradients are values (`loss, grads = av.value_and_grad(f)(model, x)` gives a dict from parameter name
to Tensor), so these functions take the gradients themselves, a dict, a list or a Tensor, and clip
them in place: the Tensors inside are updated (`Tensor.mul_`), so `opt.step(grads)` afterwards sees
the clipped values, eagerly and inside a compiled step alike.

    loss, grads = av.value_and_grad(objective)(model, x, y)
    nn.utils.clip_grad_norm_(grads, max_norm=1.0)
    opt.step(grads)

The clipping is arithmetic, no Python branch on a value: every gradient is multiplied by
`min(1, max_norm / (total_norm + 1e-6))`, as torch's implementation does, so the same code traces
into one graph. `error_if_nonfinite=True` needs the norm's value, which exists only eagerly.

Passing the parameters (`model.parameters()`, `model.named_parameters()`, the model) is an error that
says to pass the gradients: they hold no gradients, and clipping them in place would scale the
weights. A plain list of parameter tensors cannot be told from a list of gradients; do not pass one.
"""
from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor
from ..tree import is_model
from . import packing as rnn  # torch.nn.utils.rnn (`from avalon.nn.utils.rnn import ...`: see below)

__all__ = ["clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "get_total_norm", "parameters_to_vector",
           "vector_to_parameters"]

Grads = Tensor | Mapping[str, Any] | Iterable[Any]

_GIVE_GRADS = ("Avalon's gradients are values that av.grad returns, not `.grad` attributes of the parameters, "
               "so {fn} takes the gradients: `loss, grads = av.value_and_grad(objective)(model, x, y)`, "
               "`nn.utils.{fn}(grads, ...)`, then `opt.step(grads)`")


def _is_parameter_walk(obj: Any) -> bool:
    """`model.parameters()` / `model.named_parameters()` (Avalon's generators), or a model itself."""
    if inspect.isgenerator(obj):
        from . import module
        return obj.gi_code in (module.parameters.__code__, module.named_parameters.__code__)
    return is_model(obj) and not isinstance(obj, Tensor)


def _grads(grads: Grads, fn: str) -> list[Any]:
    """The gradient tensors (Nones dropped) of a dict, a Tensor or an iterable of them."""
    if isinstance(grads, Tensor):
        return [grads]
    if _is_parameter_walk(grads):
        raise TypeError(_GIVE_GRADS.format(fn=fn) + f"; got {type(grads).__name__} of the parameters")
    items = list(grads.values()) if isinstance(grads, Mapping) else list(grads)
    out = []
    for g in items:
        if g is None:
            continue
        if isinstance(g, tuple) and len(g) == 2 and isinstance(g[0], str):
            raise TypeError(_GIVE_GRADS.format(fn=fn) + "; got (name, tensor) pairs, as named_parameters() yields")
        if not isinstance(g, (Tensor, np.ndarray)):
            raise TypeError(f"{fn}: gradients must be Tensors, got {type(g).__name__}")
        out.append(g)
    return out


def _write(g: Any, new: Tensor) -> None:
    """`g` becomes `new`, in place (a numpy array's memory too, eagerly)."""
    if isinstance(g, Tensor):
        g.copy_(new)
    else:
        g[...] = new.numpy()


def _norm(x: Tensor, p: float) -> Tensor:
    """torch.linalg.vector_norm(x, p) over all elements (float16's powers summed in float32, as torch)."""
    return ops.vector_norm(x, p)


def get_total_norm(tensors: Grads, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                   foreach: bool | None = None) -> Tensor:
    """The `norm_type` norm of all the tensors' elements together (the norm of their norms), as
    torch's; a 0-d Tensor of their promoted dtype (float32 0 for no tensors)."""
    gs = [g if isinstance(g, Tensor) else Tensor(g) for g in _grads(tensors, "get_total_norm")]
    p = float(norm_type)
    if not gs:
        return Tensor(np.float32(0.0))
    norms = [_norm(g, p) for g in gs]
    dtype = norms[0].dtype
    for n in norms[1:]:
        dtype = dt.promote(dtype, n.dtype)  # torch.stack promotes mixed dtypes
    total = _norm(ops.stack([ops.cast(n, dtype) for n in norms]), p)
    if error_if_nonfinite:
        msg = (f"The total norm of order {p} for gradients from `parameters` is non-finite, so it cannot be "
               "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
               "`error_if_nonfinite=False`")
        if total.is_traced:  # checked when the graph runs (the returned norm, which clipping scales by)
            return ops.check_values(total, ops.isfinite(total), msg)
        if not math.isfinite(float(total)):
            raise RuntimeError(msg)
    return total


def clip_grads_with_norm_(grads: Grads, max_norm: float, total_norm: Tensor, foreach: bool | None = None) -> None:
    """Scale the gradients in place by `min(1, max_norm / (total_norm + 1e-6))` (torch's formula)."""
    coef = ops.clamp(ops.div(float(max_norm), total_norm + 1e-6), max=1.0)
    for g in _grads(grads, "clip_grads_with_norm_"):
        t = g if isinstance(g, Tensor) else Tensor(g)
        _write(g, t * ops.cast(coef, t.dtype))


def clip_grad_norm_(grads: Grads, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach: bool | None = None) -> Tensor:
    """Clip the gradients' total `norm_type` norm to `max_norm`, in place; returns the total norm
    (before clipping) as a 0-d Tensor. Traceable: no Python branch on the norm."""
    gs = _grads(grads, "clip_grad_norm_")
    total = get_total_norm(gs, norm_type, error_if_nonfinite)
    clip_grads_with_norm_(gs, max_norm, total)
    return total


def clip_grad_value_(grads: Grads, clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every gradient element into [-clip_value, clip_value], in place."""
    c = float(clip_value)
    for g in _grads(grads, "clip_grad_value_"):
        t = g if isinstance(g, Tensor) else Tensor(g)
        _write(g, ops.clamp(t, -c, c))


# -- flattening: torch.nn.utils.parameters_to_vector / vector_to_parameters ---------------------------

def _tensors_of(parameters: Any, fn: str) -> list[Tensor]:
    """The tensors of `model.parameters()`, a list of tensors (gradients too: `grads.values()`) or a model."""
    from ..tree import named_parameters
    if isinstance(parameters, Tensor):
        return [parameters]
    items = [t for _, t in named_parameters(parameters)] if is_model(parameters) else list(parameters)
    for t in items:
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: expected Avalon tensors, got {type(t).__name__}")
    return items


def parameters_to_vector(parameters: Iterable[Tensor]) -> Tensor:
    """torch.nn.utils.parameters_to_vector: the tensors flattened and concatenated, in order, into
    one 1-D tensor (a new tensor; traceable)."""
    items = _tensors_of(parameters, "parameters_to_vector")
    devices = {str(t.device) for t in items}
    if len(devices) > 1:
        raise TypeError(f"parameters_to_vector: found parameters on different devices ({', '.join(sorted(devices))})")
    if not items:
        raise ValueError("parameters_to_vector: no parameters (torch.cat of an empty list fails the same way)")
    return ops.cat([ops.reshape(t, (-1,)) for t in items], 0)


def vector_to_parameters(vec: Tensor, parameters: Iterable[Tensor]) -> None:
    """torch.nn.utils.vector_to_parameters: write consecutive slices of the 1-D `vec` into the
    parameters, in place (inside compiled functions too, as state updates). torch rebinds each
    parameter's `.data` to a view of `vec` (so later writes to `vec` show in the parameters);
    Avalon copies the values, so they do not."""
    from ..trace import assign
    if not isinstance(vec, Tensor):
        raise TypeError(f"vector_to_parameters: expected an Avalon Tensor, but got: {type(vec).__name__}")
    items = _tensors_of(parameters, "vector_to_parameters")
    if vec.ndim != 1:
        raise ValueError(f"vector_to_parameters: expected a 1-D vector, got shape {vec.shape}")
    total = sum(t.numel() for t in items)
    if vec.shape[0] < total:
        raise ValueError(f"vector_to_parameters: the vector has {vec.shape[0]} values, the parameters {total}")
    pointer = 0
    for t in items:
        n = t.numel()
        assign(t, ops.cast(ops.reshape(vec[pointer:pointer + n], t.shape), t.dtype))
        pointer += n


sys.modules[__name__ + ".rnn"] = rnn  # a module, not a package: this makes the dotted import find it

# torch.nn.utils.parametrize / .parametrizations and the older weight_norm / spectral_norm (after the code above:
# they import nn.layers)
from . import parametrizations, parametrize  # noqa: E402
from .legacy_norms import remove_spectral_norm, remove_weight_norm, spectral_norm, weight_norm  # noqa: E402

sys.modules[__name__ + ".parametrize"] = parametrize
sys.modules[__name__ + ".parametrizations"] = parametrizations
__all__ += ["parametrizations", "parametrize", "remove_spectral_norm", "remove_weight_norm", "spectral_norm",
            "weight_norm"]


def _stateless_functional_call(module: Any, parameter_and_buffer_dicts: Any, args: Any = None, kwargs: Any = None,
                               *, tie_weights: bool = True, strict: bool = False) -> Any:
    """torch.nn.utils.stateless.functional_call, torch's older name for `avalon.func.functional_call`
    (imported when called: avalon.func imports the compiler, which this module must not need to load)."""
    from ..func import functional_call
    return functional_call(module, parameter_and_buffer_dicts, args, kwargs, tie_weights=tie_weights, strict=strict)


stateless = sys.modules[__name__ + ".stateless"] = type(sys)(__name__ + ".stateless", "torch.nn.utils.stateless")
stateless.functional_call = _stateless_functional_call  # type: ignore[attr-defined]

# torch.nn.utils.prune (after parametrize, whose helpers it uses)
from . import prune  # noqa: E402

sys.modules[__name__ + ".prune"] = prune
__all__ += ["prune"]

# torch.nn.utils.fusion (conv/linear + eval batch norm folding), skip_init, and clip_grad_norm (torch's
# deprecated name of clip_grad_norm_)
from . import fusion  # noqa: E402
from .fusion import (  # noqa: E402
    fuse_conv_bn_eval,
    fuse_conv_bn_weights,
    fuse_linear_bn_eval,
    fuse_linear_bn_weights,
    skip_init,
)

sys.modules[__name__ + ".fusion"] = fusion


def clip_grad_norm(grads: Grads, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                   foreach: bool | None = None) -> Tensor:
    """torch's deprecated `clip_grad_norm`: `clip_grad_norm_`, with torch's warning."""
    import warnings
    warnings.warn("`torch.nn.utils.clip_grad_norm` is now deprecated in favor of `torch.nn.utils.clip_grad_norm_`.",
                  FutureWarning, stacklevel=2)
    return clip_grad_norm_(grads, max_norm, norm_type, error_if_nonfinite, foreach)


__all__ += ["clip_grad_norm", "fuse_conv_bn_eval", "fuse_conv_bn_weights", "fuse_linear_bn_eval",
            "fuse_linear_bn_weights", "fusion", "skip_init"]


def convert_conv2d_weight_memory_format(module: Any, memory_format: Any) -> Any:
    """torch.nn.utils.convert_conv2d_weight_memory_format: the module itself. Avalon's tensors have no memory
    format; the `layout` pass decides channels-last per graph (README, Layout)."""
    return module


convert_conv3d_weight_memory_format = convert_conv2d_weight_memory_format

__all__ += ["convert_conv2d_weight_memory_format", "convert_conv3d_weight_memory_format"]
