"""Mixed precision with torch's names: `autocast` and `GradScaler` (`av.amp`, also `av.autocast`).

    with av.autocast("cuda"):                    # or "cpu" (bfloat16 by default there)
        loss = F.cross_entropy(model(x).float(), y)

**autocast.** Avalon applies torch's CUDA autocast op lists (torch's autocast op reference) on
every device type, "cpu" included, so code behaves alike on both (torch's own CPU lists are
narrower: there softmax, exp, sum, layer_norm keep the low-precision dtype). Inside the context:

- *Lower precision* (the autocast dtype out; float16 on CUDA, bfloat16 on the CPU by default):
  matmul/`@`, mm, bmm, einsum, `F.linear`, conv1d/2d/3d, `F.conv_transpose2d`, the matmuls of
  `F.scaled_dot_product_attention` (every call reaching `ops.matmul`/`ops.conv2d` casts there, bias
  included), `addmm` (its added input too), addmv, addr, baddbmm, addbmm, mv, chain_matmul (also
  `linalg.multi_dot`), `F.prelu`, `nn.RNNCell/LSTMCell/GRUCell` and `nn.RNN/LSTM/GRU` (input and
  hidden state; their linear maps cast the weights, so every output is low precision).
- *float32*: exp, expm1, log, log1p, log2, log10, reciprocal, rsqrt, pow, `x ** y`, `n ** x`, `n / x`,
  acos, asin, cosh, sinh, tan, erfinv, dist, cdist, `F.pdist`, renorm, logsumexp,
  norm, `linalg.norm/vector_norm/matrix_norm`, `F.softplus`, `F.layer_norm`, `F.group_norm`,
  `F.normalize`, `F.cosine_similarity`, `F.softmin`, `F.interpolate`/`F.upsample` (not mode="area"),
  and the losses: cross_entropy, nll_loss, mse_loss, l1_loss, smooth_l1_loss, huber_loss, kl_div,
  poisson_nll_loss, binary_cross_entropy_with_logits, cosine_embedding_loss, hinge_embedding_loss,
  margin_ranking_loss, multilabel_margin_loss, soft_margin_loss, triplet_margin_loss,
  multi_margin_loss. Also sum, prod, cumsum, cumprod, softmax, log_softmax (`av.` and `F.`), unless
  the call passes `dtype=`, which then wins (torch's fp32_set_opt_dtype).
- *Widest input type* (float32 if any floating input is float32, else the autocast dtype):
  addcmul, addcdiv, atan2, cross, dot, tensordot, index_put, scatter_add, `F.bilinear`, `F.grid_sample`.
  cat, stack, where and the
  binary operators promote natively, as in torch.
- `F.binary_cross_entropy` (`nn.BCELoss`): refused on CUDA tensors with torch's message (use the
  `_with_logits` form); on CPU tensors it runs in float32, as torch's CPU autocast does.

Every other op follows normal promotion: a bfloat16 activation plus a float32 tensor is float32.
float64 and non-floating tensors are never cast; a tensor is affected only by the autocast of its
own device type.

How: one table per policy below (`_LOWER`, `_FP32`, `_FP32_OPT_DTYPE`, `_PROMOTE`, `_UNSAFE`,
`_TENSOR_FP32`), keyed by the public function; `install_policies()` (run when `avalon` is imported)
replaces each listed function, where it is defined and wherever Avalon re-exports it, by a wrapper
that casts its tensor arguments and runs it with autocast off inside, as torch's wrappers do. Like
torch's dispatcher, which composite internals do not pass through again, a wrapper applies only to
the user's call (or a layer's `forward`): `F.elu` computing exp, or `mean` computing a sum, keep
bfloat16. Outside autocast a wrapper costs one dict lookup.

The casts are ordinary `cast` ops, so a traced graph records them and `av.grad` sends each gradient
back through its cast: a float32 parameter (the master weight) gets a float32 gradient.
`cache_enabled` is accepted and changes nothing: a weight cast twice in one graph is merged by CSE.
The setting is read when a function is traced, so enter autocast inside the compiled (or
differentiated) function; `cache_key()` is what `av.compile`'s signature cache needs to key on for
one function called both inside and outside an autocast.

**GradScaler.** Avalon's gradients are values, so the scaler works on them rather than on `.grad`
attributes (see its docstring). It keeps its scale, growth tracker and found-inf flag in tensors,
so a compiled training step that takes it as an argument reads and updates them without retracing,
and skips the optimizer step on an inf/nan gradient with a traced select instead of a Python branch.
"""
from __future__ import annotations

import functools
import importlib
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from . import ops, tree
from .device import cuda_available
from .device import device as as_device
from .ir import dtypes as dt
from .tensor import Buffer, Tensor
from .trace import assign, current_trace

__all__ = ["GradScaler", "autocast", "cache_key", "custom_bwd", "custom_fwd", "get_autocast_dtype",
           "is_autocast_available", "is_autocast_enabled",
           "set_autocast_dtype"]

_DEFAULT = {"cpu": dt.bfloat16, "cuda": dt.float16}     # per device type: the dtype autocast casts to
_SUPPORTED = {"cpu": (dt.bfloat16, dt.float16), "cuda": (dt.float16, dt.bfloat16)}
_ACTIVE: dict[str, dt.DType | None] = {"cpu": None, "cuda": None}  # the dtype while enabled, else None


def is_autocast_available(device_type: str) -> bool:
    """Whether autocast supports `device_type` ("cpu" and "cuda")."""
    return device_type in _DEFAULT


def is_autocast_enabled(device_type: str | None = None) -> bool:
    """Whether autocast is on for `device_type` (torch's default: "cuda")."""
    return _ACTIVE[_check_device_type(device_type or "cuda")] is not None


def get_autocast_dtype(device_type: str) -> dt.DType:
    """The dtype `autocast(device_type)` casts to when given none; inside an autocast region, that
    region's dtype (as torch's)."""
    return _DEFAULT[_check_device_type(device_type)]


def set_autocast_dtype(device_type: str, dtype: Any) -> None:
    """Change `get_autocast_dtype(device_type)`, as torch.set_autocast_dtype."""
    _DEFAULT[_check_device_type(device_type)] = dt.dtype(dtype)


def _check_device_type(device_type: str) -> str:
    if not isinstance(device_type, str):
        raise ValueError(f"Expected `device_type` of type `str`, got: `{type(device_type)}`")
    kind = device_type.split(":")[0]
    if kind not in _DEFAULT:
        raise RuntimeError(f"User specified an unsupported autocast device_type '{device_type}'; Avalon supports "
                           "'cpu' and 'cuda'")
    return kind


def cache_key() -> tuple[str | None, str | None]:
    """The autocast state a trace depends on (the dtype per device type, None when off), for a
    compiled function's signature key: a function traced under autocast must not be reused outside."""
    return tuple(d.name if d is not None else None for d in (_ACTIVE["cpu"], _ACTIVE["cuda"]))  # type: ignore[return-value]


def lower_precision(*xs: Tensor) -> tuple[Tensor, ...]:
    """The operands of a lower-precision op (matmul, conv) as autocast gives them to it: each
    floating tensor that is not float64 cast to the dtype of the autocast active on its device type
    (unchanged when none is). Read by `avalon.ops.matmul` and `avalon.ops.conv2d`."""
    if _ACTIVE["cpu"] is None and _ACTIVE["cuda"] is None:
        return xs
    out = []
    for x in xs:
        d = _ACTIVE.get(x.device.type)
        if d is not None and x.dtype.is_float and x.dtype is not dt.float64 and x.dtype is not d:
            x = ops.cast(x, d)
        out.append(x)
    return tuple(out)


def autocast_bias(bias: Any) -> Any:
    """A linear or convolution bias under autocast: cast with the op's inputs (torch casts all three),
    so the sum keeps the autocast dtype; anything but a Tensor is left as it is."""
    return lower_precision(bias)[0] if isinstance(bias, Tensor) else bias


# -- the op lists: one table, keyed by the public function ------------------------------------------

_LOWER = ("avalon.ops.pointwise:addmm", "avalon.ops.contract:einsum", "avalon.nn.functional:prelu",
          "avalon.ops.matrices:mv",
          "avalon.ops.products_more:addmv", "avalon.ops.products_more:addr", "avalon.ops.products_more:baddbmm",
          "avalon.ops.products_more:addbmm", "avalon.ops.matrices:chain_matmul")
"""Lower-precision ops beyond those that reach `ops.matmul`/`ops.conv2d` (which cast there)."""
_LOWER_CELLS = ("avalon.nn.cells:RNNCell", "avalon.nn.cells:LSTMCell", "avalon.nn.cells:GRUCell")
"""Layers on the lower-precision list: their `forward` casts the input and hidden state."""
_FP32 = (
    "avalon.ops.mathfn:acos", "avalon.ops.mathfn:asin", "avalon.ops.mathfn:cosh", "avalon.ops.mathfn:sinh",
    "avalon.ops.mathfn:tan", "avalon.ops.mathfn:erfinv", "avalon.ops.mathfn:log2", "avalon.ops.mathfn:log10",
    "avalon.ops.stats:dist", "avalon.ops.stats:cdist", "avalon.ops.stats:renorm", "avalon.nn.functional_more:pdist",
    "avalon.ops.core:exp", "avalon.ops.pointwise:expm1", "avalon.ops.core:log", "avalon.ops.pointwise:log1p",
    "avalon.ops.shaping:reciprocal", "avalon.ops.core:rsqrt", "avalon.ops.core:pow", "avalon.ops.core:logsumexp",
    "avalon.ops.reductions:norm", "avalon.ops.linalg:norm", "avalon.ops.linalg:vector_norm",
    "avalon.ops.linalg:matrix_norm",
    "avalon.nn.functional:softplus", "avalon.nn.functional:layer_norm", "avalon.nn.functional:group_norm",
    "avalon.nn.functional:normalize", "avalon.nn.functional:cosine_similarity", "avalon.nn.functional:softmin",
    "avalon.nn.functional:cross_entropy", "avalon.nn.functional:nll_loss", "avalon.nn.functional:mse_loss",
    "avalon.nn.functional:l1_loss", "avalon.nn.functional:smooth_l1_loss", "avalon.nn.functional:huber_loss",
    "avalon.nn.functional:kl_div", "avalon.nn.functional:poisson_nll_loss",
    "avalon.nn.functional:binary_cross_entropy_with_logits", "avalon.nn.functional:cosine_embedding_loss",
    "avalon.nn.functional:hinge_embedding_loss", "avalon.nn.functional:margin_ranking_loss",
    "avalon.nn.functional:multilabel_margin_loss", "avalon.nn.functional:soft_margin_loss",
    "avalon.nn.functional:triplet_margin_loss", "avalon.nn.functional:multi_margin_loss",
    "avalon.nn.functional:interpolate", "avalon.nn.functional:upsample",
)
"""torch's "autocast to float32" list, as far as Avalon has the functions."""
_FP32_OPT_DTYPE = (
    "avalon.ops.core:sum", "avalon.ops.reductions:prod", "avalon.ops.core:cumsum", "avalon.ops.reductions:cumprod",
    "avalon.ops.reductions:softmax", "avalon.ops.reductions:log_softmax", "avalon.nn.functional:softmax",
    "avalon.nn.functional:log_softmax",
)
"""float32 unless the call passes `dtype=` (torch's fp32_set_opt_dtype ops)."""
_PROMOTE = ("avalon.ops.pointwise:addcmul", "avalon.ops.pointwise:addcdiv", "avalon.ops.scattering:index_put",
            "avalon.ops.sorting:scatter_add", "avalon.nn.functional:bilinear", "avalon.nn.functional:grid_sample",
            "avalon.ops.mathfn:atan2", "avalon.ops.matrices:cross", "avalon.ops.matrices:dot",
            "avalon.ops.matrices:tensordot")
"""torch's "promote to the widest input type" list."""
_UNSAFE = ("avalon.nn.functional:binary_cross_entropy",)
"""torch's CUDA autocast refuses it; on the CPU it runs in float32, as torch's CPU autocast does."""
_TENSOR_FP32 = ("__pow__", "__rpow__", "__rtruediv__")
"""Tensor operators on the float32 list (`x / y` is not: only a number divided by a tensor is)."""

_USER_LEVEL = ("avalon.nn", "avalon.nn.layers", "avalon.nn.layers_extra", "avalon.nn.transformer", "avalon.nn.rnn",
               "avalon.nn.cells", "avalon.nn.spatial", "avalon.nn.module", "avalon.nn.containers",
               "avalon.nn.conv_transpose", "avalon.distributions")
_USER_PACKAGES = ("avalon.zoo.", "avalon.interop.", "avalon.onnx.")
"""Avalon modules (and packages) whose calls count as the user's (layers calling `F.layer_norm`,
as torch's do); a call from anywhere else inside Avalon is a composite's implementation detail and
is not cast."""
_PASS_THROUGH = ("avalon.tensor", "avalon.complex", "avalon.sparse")
"""Tensor methods and the complex-aware wrappers of `av.exp` & co. (avalon/complex.py): the call is
their caller's."""


def _user_call(depth: int = 2) -> bool:
    """Whether the listed function was called by user code (or a layer) rather than by another
    Avalon composite: torch autocasts at its dispatcher, which composite internals don't pass, so
    `F.elu` computing `exp` inside must not turn its result float32."""
    f = sys._getframe(depth)
    while f is not None and f.f_globals.get("__name__") in _PASS_THROUGH:
        f = f.f_back
    name = f.f_globals.get("__name__", "") if f is not None else ""
    if not name.startswith("avalon."):
        return True
    return name in _USER_LEVEL or name.startswith(_USER_PACKAGES)


def _cast_tree(x: Any, to: Callable[[Tensor], dt.DType | None]) -> Any:
    """`x` with every autocast-eligible tensor inside (floating, not float64, on a device whose
    autocast is on; lists and tuples walked) cast to `to(tensor)` (None: left alone)."""
    if isinstance(x, Tensor):
        if x.dtype.is_float and x.dtype is not dt.float64 and _ACTIVE.get(x.device.type) is not None:
            d = to(x)
            if d is not None and d is not x.dtype:
                return ops.cast(x, d)
        return x
    if isinstance(x, (list, tuple)) and any(isinstance(v, (Tensor, list, tuple)) for v in x):
        return type(x)(_cast_tree(v, to) for v in x)
    return x


def _leaves(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _leaves(v)]
    return []


def _widest(args: tuple, kwargs: dict) -> dt.DType | None:
    """torch's promote rule: float32 if any eligible input is float32, else the autocast dtype."""
    ts = [t for t in _leaves((args, tuple(kwargs.values()))) if t.dtype.is_float and t.dtype is not dt.float64
          and _ACTIVE.get(t.device.type) is not None]
    if not ts:
        return None
    return dt.float32 if any(t.dtype is dt.float32 for t in ts) else _ACTIVE[ts[0].device.type]


def _excluded(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """Run a listed op with autocast off inside it, as torch's wrappers do: its own internals
    (the matmul inside cdist, the exp inside softmax) keep the dtype the policy chose."""
    saved = dict(_ACTIVE)
    _ACTIVE["cpu"] = _ACTIVE["cuda"] = None
    try:
        return fn(*args, **kwargs)
    finally:
        _ACTIVE.update(saved)


def _policy_wrapper(fn: Callable, policy: str) -> Callable:
    """`fn` applying autocast policy `policy` ("lower", "fp32", "fp32_opt_dtype", "promote",
    "unsafe") to its tensor arguments when autocast is on and the call is the user's."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if (_ACTIVE["cpu"] is None and _ACTIVE["cuda"] is None) or not _user_call():
            return fn(*args, **kwargs)
        if policy == "fp32_opt_dtype" and kwargs.get("dtype") is not None:
            return _excluded(fn, args, kwargs)
        if policy in ("fp32", "fp32_opt_dtype") and fn.__name__ in ("interpolate", "upsample"):
            mode = kwargs.get("mode", args[3] if len(args) > 3 else "nearest")
            if mode == "area":  # adaptive average pooling: not on the list
                return fn(*args, **kwargs)
        if policy == "unsafe" and any(t.device.type == "cuda" and t.dtype.is_float
                                      for t in _leaves((args, tuple(kwargs.values())))):
            raise RuntimeError(
                "F.binary_cross_entropy and nn.BCELoss are unsafe to autocast (as in torch). Many models use a "
                "sigmoid layer right before the binary cross entropy layer; in that case combine the two with "
                "F.binary_cross_entropy_with_logits or nn.BCEWithLogitsLoss, which are safe to autocast.")
        if policy == "lower":
            def to(t: Tensor) -> dt.DType | None:
                return _ACTIVE.get(t.device.type)
        elif policy == "promote":
            wide = _widest(args, kwargs)

            def to(t: Tensor) -> dt.DType | None:
                return wide
        else:
            def to(t: Tensor) -> dt.DType | None:
                return dt.float32
        return _excluded(fn, _cast_tree(args, to), {k: _cast_tree(v, to) for k, v in kwargs.items()})

    wrapped._autocast_policy = policy  # type: ignore[attr-defined]
    return wrapped


def _cell_forward(forward: Callable) -> Callable:
    """An RNN cell's forward on the lower-precision list: input and hidden state in the autocast
    dtype; autocast stays on inside, so its linear maps cast the float32 weights too."""

    @functools.wraps(forward)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _ACTIVE["cpu"] is None and _ACTIVE["cuda"] is None:
            return forward(self, *args, **kwargs)

        def to(t: Tensor) -> dt.DType | None:
            return _ACTIVE.get(t.device.type)
        return forward(self, *_cast_tree(args, to), **{k: _cast_tree(v, to) for k, v in kwargs.items()})

    wrapped._autocast_policy = "lower"  # type: ignore[attr-defined]
    return wrapped


_WRAPPERS: dict[int, Callable] = {}   # id(original function) -> its policy wrapper
_MISSING: list[str] = []              # table entries that name no function (a test keeps this empty)


def _resolve(entry: str) -> Any:
    mod, _, name = entry.partition(":")
    return getattr(importlib.import_module(mod), name, None)


def install_policies() -> None:
    """Put the op lists into effect: each listed function is replaced by its policy wrapper in the
    module that defines it and wherever Avalon re-exports it (`av`, `av.ops`, `av.linalg`, `av.nn`,
    `F`, the layer modules), and Tensor's listed operators likewise. Called once when `avalon` is
    imported; idempotent. Outside autocast a wrapper costs one dict lookup."""
    originals: dict[int, Callable] = {}
    for policy, entries in (("lower", _LOWER), ("fp32", _FP32), ("fp32_opt_dtype", _FP32_OPT_DTYPE),
                            ("promote", _PROMOTE), ("unsafe", _UNSAFE)):
        for entry in entries:
            fn = _resolve(entry)
            if fn is None:
                if entry not in _MISSING:
                    _MISSING.append(entry)
                continue
            if getattr(fn, "_autocast_policy", None) is not None:
                continue
            if id(fn) not in _WRAPPERS:
                _WRAPPERS[id(fn)] = _policy_wrapper(fn, policy)
            originals[id(fn)] = fn
    names = ["avalon", "avalon.ops", "avalon.ops.linalg", "avalon.nn", "avalon.nn.functional",
             "avalon.nn.functional_spatial", "avalon.nn.losses", *_USER_LEVEL]
    names += [f.__module__ for f in originals.values()]
    for name in dict.fromkeys(names):
        mod = sys.modules.get(name)
        if mod is None:
            continue
        for k, v in list(vars(mod).items()):
            if id(v) in originals and v is originals[id(v)]:
                setattr(mod, k, _WRAPPERS[id(v)])
    for entry in _LOWER_CELLS:
        cls = _resolve(entry)
        if cls is None:
            _MISSING.append(entry)
        elif getattr(cls.forward, "_autocast_policy", None) is None:
            cls.forward = _cell_forward(cls.forward)
    for op in _TENSOR_FP32:
        meth = getattr(Tensor, op)
        if getattr(meth, "_autocast_policy", None) is None:
            setattr(Tensor, op, _policy_wrapper(meth, "fp32"))


class autocast:  # noqa: N801  (torch's name)
    """`with av.autocast(device_type, dtype=None, enabled=True, cache_enabled=None):` — matmuls and
    convolutions on `device_type`'s tensors run in `dtype` (default float16 on "cuda", bfloat16 on
    "cpu"), softmax, norms, losses, exp/log/pow and reductions in float32 (torch's CUDA lists; the
    module docstring lists them). Nests, and `enabled=False` switches
    it off inside an enclosing one; also a decorator (`@av.autocast("cpu")`), as torch's."""

    def __init__(self, device_type: str, dtype: Any = None, enabled: bool = True, cache_enabled: bool | None = None):
        self.device = _check_device_type(device_type)
        self.fast_dtype = dt.dtype(dtype) if dtype is not None else get_autocast_dtype(self.device)
        self._enabled = bool(enabled)
        self._cache_enabled = cache_enabled
        if self._enabled and self.fast_dtype not in _SUPPORTED[self.device]:
            names = ", ".join(f"torch.{dt.PY_NAMES[d.name]}" for d in _SUPPORTED[self.device])
            warnings.warn(f"In {self.device.upper()} autocast, but the target dtype is not supported. Disabling "
                          f"autocast.\n{self.device.upper()} Autocast only supports dtypes of {names} currently.",
                          UserWarning, stacklevel=2)
            self._enabled = False
        if self._enabled and self.device == "cuda" and not cuda_available():
            warnings.warn("User provided device_type of 'cuda', but CUDA is not available. Disabling",
                          UserWarning, stacklevel=2)
            self._enabled = False
        self._prev: list[tuple[dt.DType | None, dt.DType]] = []

    def __enter__(self) -> None:
        # torch sets the device type's autocast dtype for the region (enabled or not), so
        # `get_autocast_dtype` inside reads this context's dtype, and a nested `autocast(dev)` inherits it
        self._prev.append((_ACTIVE[self.device], _DEFAULT[self.device]))
        _ACTIVE[self.device] = self.fast_dtype if self._enabled else None
        _DEFAULT[self.device] = self.fast_dtype

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE[self.device], _DEFAULT[self.device] = self._prev.pop()

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with autocast(self.device, self.fast_dtype, self._enabled, self._cache_enabled):
                return fn(*args, **kwargs)
        return wrapped


def _cast_inputs(x: Any, kind: str, to: dt.DType) -> Any:
    """torch's `_cast` for custom_fwd: floating tensors (not float64) on `kind` cast to `to`, walking
    lists, tuples and dicts."""
    if isinstance(x, Tensor):
        return ops.cast(x, to) if x.device.type == kind and x.dtype.is_float and x.dtype is not dt.float64 else x
    if isinstance(x, Mapping):
        return {k: _cast_inputs(v, kind, to) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_cast_inputs(v, kind, to) for v in x)
    return x


def custom_fwd(fwd: Callable | None = None, *, device_type: str, cast_inputs: Any = None) -> Callable:
    """torch.amp.custom_fwd: decorate a custom `Function.forward(ctx, ...)`. Without `cast_inputs`
    the forward runs under the caller's autocast state, which `custom_bwd` restores for backward;
    with it, inside an enabled autocast region the floating (non-float64) tensor arguments are cast
    to `cast_inputs` and the forward runs with autocast off (and so does backward)."""
    if not isinstance(device_type, str):
        raise ValueError(f"Expected `device_type` of type `str`, got: `{type(device_type)}`")
    if fwd is None:
        return functools.partial(custom_fwd, device_type=device_type, cast_inputs=cast_inputs)
    kind = _check_device_type(device_type)
    to = dt.dtype(cast_inputs) if cast_inputs is not None else None

    @functools.wraps(fwd)
    def decorate_fwd(*args: Any, **kwargs: Any) -> Any:
        ctx = args[0]
        ctx._dtype = _DEFAULT[kind]
        if to is None:
            ctx._fwd_used_autocast = _ACTIVE[kind] is not None
            return fwd(*args, **kwargs)
        ctx._fwd_used_autocast = False
        if _ACTIVE[kind] is None:
            return fwd(*args, **kwargs)
        with autocast(kind, enabled=False):
            return fwd(*_cast_inputs(args, kind, to), **_cast_inputs(kwargs, kind, to))
    return decorate_fwd


def custom_bwd(bwd: Callable | None = None, *, device_type: str) -> Callable:
    """torch.amp.custom_bwd: decorate the matching `Function.backward(ctx, ...)`; it runs under the
    autocast state its `custom_fwd` forward ran under (on, with that dtype, or off)."""
    if not isinstance(device_type, str):
        raise ValueError(f"Expected `device_type` of type `str`, got: `{type(device_type)}`")
    if bwd is None:
        return functools.partial(custom_bwd, device_type=device_type)
    kind = _check_device_type(device_type)

    @functools.wraps(bwd)
    def decorate_bwd(*args: Any, **kwargs: Any) -> Any:
        ctx = args[0]
        if not hasattr(ctx, "_fwd_used_autocast"):
            raise RuntimeError("custom_bwd: the backward's forward was not decorated with custom_fwd (torch reads "
                               "the autocast state custom_fwd recorded on ctx)")
        with autocast(kind, dtype=ctx._dtype, enabled=ctx._fwd_used_autocast):
            return bwd(*args, **kwargs)
    return decorate_bwd


# -- the gradient scaler ---------------------------------------------------------------------------

class _Iteration:
    """What the scaler did since its last update: which gradient dicts it unscaled (with their
    found-inf flags) and which optimizers stepped. Slots, no __dict__: the tracer does not walk it,
    so it is not part of a compiled function's signature."""

    __slots__ = ("found", "stepped", "traced")

    def __init__(self) -> None:
        self.found: dict[int, Tensor] = {}
        self.stepped: set[int] = set()
        self.traced = False  # ever used in a trace: a cached compiled call runs no Python, so the checks are off

    def clear(self) -> None:
        self.found.clear()
        self.stepped.clear()


class GradScaler:
    """Loss scaling for float16 training (torch.amp.GradScaler), with gradients as values:

        scaler = av.amp.GradScaler("cuda")

        def objective(model, x, y, scaler):
            with av.autocast("cuda"):
                out = model(x)
            return scaler.scale(F.cross_entropy(out.float(), y))       # loss * scale

        def train_step(model, opt, scaler, x, y):
            loss, grads = av.value_and_grad(objective)(model, x, y, scaler)
            scaler.unscale_(grads)                     # optional: grads /= scale, in place (to clip them)
            nn.utils.clip_grad_norm_(grads, 1.0)
            scaler.step(opt, grads)                    # opt.step(grads), skipped if any grad is inf/nan
            scaler.update()                            # back off after an overflow, grow after growth_interval
            return loss

        step = av.compile(train_step)                  # or run it eagerly

    torch's `scaler.scale(loss).backward(); scaler.step(opt)` becomes `scale` inside the differentiated
    function and `step(opt, grads)`; `unscale_(grads)` takes the gradient dict where torch takes the
    optimizer. Pass the scaler as an argument of a traced function (like the optimizer): its scale,
    growth tracker and found-inf flag are tensors that become graph inputs and are written back, so
    one trace serves every step. Eagerly, `step` skips the optimizer in Python, as torch; traced, the
    optimizer's update is computed and a select keeps the old parameters and state where a gradient
    was not finite. The update rule is torch's: on inf/nan scale *= backoff_factor and the tracker
    resets; otherwise after `growth_interval` finite steps in a row scale *= growth_factor (if that
    stays finite). `device="cuda"` without a GPU disables the scaler with torch's warning; use
    `device="cpu"` there.
    """

    def __init__(self, device: str = "cuda", init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, enabled: bool = True) -> None:
        kind = _check_device_type(str(device))
        if enabled and kind == "cuda" and not cuda_available():
            warnings.warn("torch.cuda.amp.GradScaler is enabled, but CUDA is not available.  Disabling.",
                          UserWarning, stacklevel=2)
            enabled = False
        if growth_factor <= 1.0:
            raise ValueError("The growth factor must be > 1.0.")
        if backoff_factor >= 1.0:
            raise ValueError("The backoff factor must be < 1.0.")
        self._device = kind
        self._enabled = bool(enabled)
        self._growth_factor, self._backoff_factor = float(growth_factor), float(backoff_factor)
        self._growth_interval = int(growth_interval)
        where = as_device(kind) if (kind == "cpu" or cuda_available()) else as_device("cpu")
        self._scale = Buffer(np.asarray(init_scale, np.float32), dtype=dt.float32, device=where)
        self._growth_tracker = Buffer(np.asarray(0, np.int32), dtype=dt.int32, device=where)
        self._found_inf = Buffer(np.asarray(0.0, np.float32), dtype=dt.float32, device=where)
        self._iteration = _Iteration()

    # -- torch's accessors ------------------------------------------------------------------

    def is_enabled(self) -> bool:
        return self._enabled

    def get_scale(self) -> float:
        """The current scale (1.0 when disabled)."""
        return float(self._scale) if self._enabled else 1.0

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        self._growth_factor = float(new_factor)

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        self._backoff_factor = float(new_factor)

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        self._growth_interval = int(new_interval)

    def _get_growth_tracker(self) -> int:
        return int(self._growth_tracker) if self._enabled else 0

    # -- scaling -----------------------------------------------------------------------------

    def scale(self, outputs: Any) -> Any:
        """`outputs` (a tensor, or a list/tuple of them) times the scale. The product's dtype is
        torch's: a 0-d output promotes with the float32 scale, a larger one keeps its dtype."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        if not isinstance(outputs, Tensor):
            raise ValueError(f"outputs must be a Tensor or an iterable of Tensors, got {type(outputs).__name__}")
        x = outputs
        self._check_trace("scale")
        d = dt.promote(x.dtype, dt.float32) if x.ndim == 0 else x.dtype
        return ops.mul(ops.cast(x, d), ops.cast(self._scale, d))

    def unscale_(self, grads: Any) -> None:
        """Divide the gradients (a dict as `av.grad` returns, or a list) by the scale, in place, and
        record whether any is inf or nan (for `step` and `update`). Call it before clipping."""
        if not self._enabled:
            return
        key = id(grads)
        if key in self._iteration.found:
            raise RuntimeError("unscale_() has already been called on these gradients since the last update().")
        self._check_trace("unscale_")
        inv = ops.cast(ops.div(1.0, ops.cast(self._scale, dt.float64)), dt.float32)
        found = ops.full((), 0.0, dt.float32)
        for g in _grad_list(grads):
            t = g if isinstance(g, Tensor) else Tensor(g)
            if t.dtype is dt.float16:
                raise ValueError("Attempting to unscale FP16 gradients.")
            bad = ops.cast(ops.logical_not(ops.all(ops.isfinite(t))), dt.float32)
            found = ops.maximum(found, bad)
            work = dt.promote(t.dtype, dt.float32)
            new = ops.cast(ops.mul(ops.cast(t, work), ops.cast(inv, work)), t.dtype)
            if isinstance(g, Tensor):
                g.copy_(new)
            else:
                g[...] = new.numpy()
        self._iteration.found[key] = found
        assign(self._found_inf, ops.maximum(self._found_inf, found))

    def step(self, optimizer: Any, grads: Any) -> None:
        """`optimizer.step(grads)` with the gradients unscaled (unless `unscale_` did it), skipped
        when any of them is inf or nan."""
        if not self._enabled:
            optimizer.step(grads)
            return
        it = self._iteration
        if id(optimizer) in it.stepped:
            raise RuntimeError("step() has already been called since the last update().")
        if id(grads) not in it.found:
            self.unscale_(grads)
        found = it.found[id(grads)]
        it.stepped.add(id(optimizer))
        tr = current_trace()
        if tr is None:
            if found.is_traced:  # unscaled inside an earlier trace: its flag was written back since
                found = self._found_inf
            if float(found) == 0.0:
                optimizer.step(grads)
            return
        it.traced = True
        if found.is_traced and found._trace is not tr:
            found = self._found_inf
        tensors = [t for _, t in tree.named_tensors(optimizer)]
        before = {id(t): tr.value_of(t) for t in tensors}
        optimizer.step(grads)
        skip = ops.gt(found, 0.0)
        for t in tensors:
            now = tr.leaves.get(id(t))
            if now is not None and now is not before[id(t)]:  # written by the step: keep the old value on inf
                assign(t, ops.where(skip, Tensor._traced(before[id(t)], tr), t))

    def update(self, new_scale: float | Tensor | None = None) -> None:
        """torch's scale update from the inf checks since the last update (or set `new_scale`)."""
        if not self._enabled:
            return
        it = self._iteration
        if new_scale is not None:
            v = new_scale if isinstance(new_scale, Tensor) else ops.full((), float(new_scale), dt.float32)
            assign(self._scale, ops.cast(ops.reshape(v, ()), dt.float32))
        else:
            if not it.found and not it.traced and current_trace() is None:
                raise AssertionError("No inf checks were recorded prior to update.")
            self._check_trace("update")
            found = ops.gt(self._found_inf, 0.0)
            scale = ops.cast(self._scale, dt.float64)
            successful = ops.add(self._growth_tracker, 1)
            grow = ops.eq(successful, self._growth_interval)
            grown = ops.cast(ops.mul(scale, self._growth_factor), dt.float32)
            grown = ops.where(ops.isfinite(grown), grown, self._scale)
            backed = ops.cast(ops.mul(scale, self._backoff_factor), dt.float32)
            assign(self._scale, ops.where(found, backed, ops.where(grow, grown, self._scale)))
            zero = ops.full((), 0, dt.int32)
            assign(self._growth_tracker, ops.where(ops.logical_or(found, grow), zero, successful))
        assign(self._found_inf, ops.full((), 0.0, dt.float32))
        it.clear()

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch's plain dict: scale, growth_factor, backoff_factor, growth_interval, _growth_tracker
        (empty when disabled)."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._get_growth_tracker()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved from a disabled "
                               "instance of GradScaler.")
        assign(self._scale, ops.full((), float(state_dict["scale"]), dt.float32))
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        assign(self._growth_tracker, ops.full((), int(state_dict["_growth_tracker"]), dt.int32))

    def __repr__(self) -> str:
        return (f"GradScaler(device={self._device!r}, scale={self.get_scale():g}, growth_factor={self._growth_factor},"
                f" backoff_factor={self._backoff_factor}, growth_interval={self._growth_interval}, "
                f"enabled={self._enabled})")

    def _check_trace(self, what: str) -> None:
        """Under a trace the scale must be a graph input, or each run would read a stale constant."""
        tr = current_trace()
        if tr is None:
            return
        self._iteration.traced = True
        v = tr.leaves.get(id(self._scale))
        if (v is None or v not in tr.graph.inputs) and id(self._scale) not in tr.updated:
            raise RuntimeError(f"GradScaler.{what} was called inside a traced function that did not receive the "
                               "scaler as an argument; pass it in (e.g. `def step(model, opt, scaler, x, y)`) so that "
                               "its scale and counters become graph inputs that every call reads afresh")


def _grad_list(grads: Any) -> list[Any]:
    """The gradient tensors of a dict (as `av.grad` returns), a list/tuple, or one tensor; Nones skipped."""
    if isinstance(grads, Mapping):
        items = list(grads.values())
    elif isinstance(grads, (list, tuple)):
        items = list(grads)
    else:
        items = [grads]
    return [g for g in items if g is not None]


# -- torch.cuda.amp's deprecated spellings (av.cuda.amp) --------------------------------------------

class _CudaAutocast(autocast):
    """`torch.cuda.amp.autocast(enabled=True, dtype=torch.float16, cache_enabled=True)`."""

    def __init__(self, enabled: bool = True, dtype: Any = dt.float16, cache_enabled: bool = True):
        super().__init__("cuda", dtype, enabled, cache_enabled)


class _CudaGradScaler(GradScaler):
    """`torch.cuda.amp.GradScaler(init_scale, growth_factor, backoff_factor, growth_interval, enabled)`."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True) -> None:
        super().__init__("cuda", init_scale, growth_factor, backoff_factor, growth_interval, enabled)


class cuda_amp:  # noqa: N801  (a namespace: `from .amp import cuda_amp as amp` in avalon/cuda.py)
    """`av.cuda.amp`: torch.cuda.amp's autocast, GradScaler, custom_fwd and custom_bwd, fixed to the
    "cuda" device type."""

    autocast = _CudaAutocast
    GradScaler = _CudaGradScaler
    custom_fwd = staticmethod(functools.partial(custom_fwd, device_type="cuda"))
    custom_bwd = staticmethod(functools.partial(custom_bwd, device_type="cuda"))
