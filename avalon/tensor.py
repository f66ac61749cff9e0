"""`av.Tensor`: a value that is either concrete (numpy data on the CPU, torch storage on CUDA) or
traced (an IR Value inside an active trace). Every operation goes through `ops.bind`, which runs
the op on the reference interpreter's rule when eager and records it in the graph when tracing."""
from __future__ import annotations

import copy
import weakref
from typing import Any

import numpy as np

from . import grad_mode as _grad_mode
from .device import CPU, Device
from .device import device as to_device
from .ir import dtypes as dt
from .ir.dtypes import DType

FROZEN: dict[int, weakref.ref] = {}
"""Tensors with `requires_grad = False`, by id (Tensor defines `==` elementwise, so it cannot be a
set member); an entry goes when its tensor does."""


class TracerError(RuntimeError):
    """A traced value was used where Python needs a concrete one."""


class ScalarConversionError(RuntimeError, ValueError):
    """`.item()`, `float()`, `int()` or `bool()` of a tensor that does not hold exactly one element:
    torch's RuntimeError (item, bool) or ValueError (float, int), so either `except` catches it."""


def _one_element(t: Any, what: str) -> None:
    """Refuse a scalar conversion of a tensor of another size, naming it and the user's line (numpy's
    own words, "can only convert an array of size 1", named neither the tensor nor its shape)."""
    n = t.numel()
    if n != 1:
        from .trace import located, user_location
        raise located(ScalarConversionError(
            f"{what}: a Tensor with {n} elements cannot be converted to Scalar (shape {tuple(t.shape)}); "
            "reduce it first (.sum(), .mean()) or index one element"), user_location())


TRACING: list[Any] = []
"""The traces being recorded, innermost last (trace.py's `_STACK` is this list)."""

READS: list[list[Tensor]] = []
"""One list per compile being built (`avalon.trace.reads_collected`): the eager tensors whose values
Python read while tracing. A model's tensor is a graph input that keeps its eager data, so what is
read from it (`self.initialized.item()`, a mask or index buffer) is baked into the graph; the compile
keeps those values as guards and traces again when they change, instead of reusing stale ones."""


def values_fixed(t: Tensor) -> bool:
    """Whether `t`'s values are what every run of the code being traced sees: not a traced value, and
    not a tensor that a trace being recorded takes as an input (a model's parameter). Checks that only
    validate values (torch's argument checks) skip the others, rather than guard a compile on them."""
    return t._value is None and not any(id(t) in tr.leaves for tr in TRACING)


def escaped_message(t: Tensor, what: str, where: str) -> str:
    """What to say of a traced value used after its trace ended (JAX's leaked tracer): something
    outside the function kept it while it was traced, which runs the Python code once."""
    name = getattr(getattr(t._trace, "graph", None), "name", "")
    return (f"{what}: this tensor is a value of the graph traced for @{name}{where}, kept after that trace "
            "ended by something outside the function (a forward hook storing an activation, a closure, a "
            "list or dict). A compiled or differentiated function runs its Python code once, while tracing; "
            "its values exist only while the graph runs. Return the tensor from the function instead "
            "(`return loss, acts['x']`), or call the model eagerly where a hook must act on every call.")


def _read_while_tracing(t: Tensor, what: str) -> None:
    """Note `t`'s values being read inside a trace (see READS); refuse a model tensor that the traced
    function already updated (its eager data is the old value, its value in the graph a new one)."""
    for tr in TRACING:
        v = tr.leaves.get(id(t))
        if v is not None and v.op is not None and v.op.name != "constant":
            raise TracerError(f"{what} needs a concrete value, but this tensor was updated earlier in the traced "
                              "function (an optimizer step, an in-place write): its new value is only known when "
                              "the graph runs. Read it outside the traced function, or use av.where(cond, a, b).")
    for reads in READS:
        reads.append(t)


def as_array(data: Any, dtype: DType | None = None) -> np.ndarray:
    """numpy view or copy of any tensor-like, optionally converted to `dtype`."""
    if isinstance(data, Tensor):
        arr = data.numpy()
    elif hasattr(data, "detach") and hasattr(data, "cpu"):  # a torch tensor
        t = data.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        arr = t.numpy()
    else:
        try:
            arr = np.asarray(data)
        except ValueError as e:  # a ragged nested list
            raise ValueError(f"cannot make a tensor of {type(data).__name__} {_short(data)}: {e}") from None
        if arr.dtype.name == "bfloat16":  # ml_dtypes' (jax's, onnx's): bf16 is held as float32, exactly
            arr = arr.astype(np.float32)
        if arr.dtype.kind not in "biufc":  # None, strings, objects, ints past 64 bits: numpy's 'object'
            raise TypeError(f"cannot make a tensor of {_short(data)}: tensors hold numbers (64 bits at most) "
                            f"and bools; numpy reads it as {arr.dtype}")
    if dtype is not None:
        arr = arr.astype(dtype.np, copy=False)
        if dtype is dt.bfloat16:
            from .ir.reference import round_bf16
            arr = round_bf16(arr)
    return arr


_GRADS_ARE_VALUES = ("{}: Avalon's gradients are values, not .grad attributes filled by backward(); write "
                     "`loss, grads = av.value_and_grad(loss_fn)(model, x, y)` and then `opt.step(grads)`")

OPTIMIZER_GRADS: list[dict[int, Any]] = []
"""The gradients an optimizer written as torch's (a subclass of `avalon.optim.Optimizer` with its own `step`)
was given, while one of its methods runs: {id(parameter): gradient or None}, innermost last. Inside, a held
parameter's `p.grad` is its gradient (None without one), as torch's optimizers read it (avalon/optim)."""


def _short(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 60 else text[:57] + "..."


_DEFAULT_FLOAT: list[DType] = [dt.float32]
"""The default floating dtype (`av.set_default_dtype`): of Python floats, float creation functions
and layer parameters. One slot, read when a value is made, so a trace records the dtype in force."""


def default_float_dtype() -> DType:
    """`av.get_default_dtype()`: float32 unless `av.set_default_dtype` changed it."""
    return _DEFAULT_FLOAT[0]


def _is_complex_data(data: Any) -> bool:
    """A ComplexTensor (avalon/complex.py), a complex torch tensor, numpy array or Python complex."""
    if isinstance(data, (np.ndarray, np.generic)):
        return data.dtype.kind == "c"
    if isinstance(data, complex):
        return True
    test = getattr(data, "is_complex", None)  # ComplexTensor's and torch's
    return callable(test) and bool(test())


def _caller_op() -> str:
    """The Avalon function the user's code called, by the stack: the outermost frame inside the avalon
    package before user code (`sigmoid` for `av.sigmoid(z)`, `relu` for `F.relu(z)`). Only for errors."""
    import os
    import sys
    root = os.path.dirname(os.path.abspath(__file__))
    drivers = tuple(os.path.join(root, d) for d in ("interop", "onnx"))  # they call ops for a model's nodes
    frame, name = sys._getframe(1), "this op"
    while frame is not None and (path := os.path.abspath(frame.f_code.co_filename)).startswith(root) and \
            not path.startswith(drivers):
        name = frame.f_code.co_name
        if name in ("f", "fn", "op", "wrapper", "wrapped", "inner"):  # a factory's or decorator's function
            local = frame.f_locals
            own = local.get("name", getattr(local.get("fn", local.get("func")), "__name__", None))
            name = own if isinstance(own, str) else name
        frame = frame.f_back
    return name.removeprefix("__").removesuffix("__") if name.startswith("__") else name


def complex_error(data: Any) -> TypeError:
    """The error of a complex value given to an op without complex support: names the op, early,
    instead of numpy's dtype complaint deep inside."""
    kind = getattr(getattr(data, "dtype", None), "name", None) or "complex"
    return TypeError(f"{_caller_op()} does not support complex inputs (got {kind}): Avalon's complex values "
                     "(av.ComplexTensor, avalon/complex.py) support arithmetic, matmul/einsum, exp/log/sqrt/pow, "
                     "abs/angle/conj, sums, shape ops, indexing and avalon.fft; take .real/.imag or .abs() first")


_PLAIN_NUMBERS = frozenset((int, float, bool))


def leaf_types(data: list | tuple) -> set[type]:
    """The types of the leaves of a nested list or tuple, at C speed per row (`set(map(type, row))`):
    `av.tensor` of a million Python floats asks whether any is complex or carries a dtype, and a
    Python-level walk of every element took seconds where numpy's conversion takes 60 ms."""
    seen: set[type] = set()
    stack = [data]
    while stack:
        row = stack.pop()
        ts = set(map(type, row))
        if list in ts or tuple in ts or not ts <= _PLAIN_NUMBERS:
            for x in row:
                if isinstance(x, (list, tuple)):
                    stack.append(x)
                else:
                    seen.add(type(x))
        else:
            seen |= ts
    return seen


def _typed_leaves_dtype(data: list | tuple) -> DType | None:
    """torch.tensor's dtype for a nested list holding numpy scalars or tensors among its numbers: each
    leaf's own dtype (a Python bool, int, float: bool, i64, the default float) promoted with the others'
    (`[np.float64(1), 2.0]` is f64, `[np.int8(1), np.int8(2)]` i8), where numpy's array would make
    f64 of any float and the Python-number rule would make f32 of it. None when no leaf carries a dtype."""
    if leaf_types(data) <= _PLAIN_NUMBERS:
        return None
    found, out, stack = False, None, [data]
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(v)
            continue
        if isinstance(v, (np.generic, Tensor)) and not (isinstance(v, np.generic) and v.dtype.kind in "cOUSV"):
            found, d = True, dt.dtype(v.dtype)
        elif isinstance(v, (bool, np.bool_)):
            d = dt.bool_
        elif isinstance(v, int):
            d = dt.int64
        elif isinstance(v, float):
            d = _DEFAULT_FLOAT[0]
        else:
            return None  # anything else (complex, strings, arrays): the general path decides
        out = d if out is None else dt.promote(out, d)
    return out if found else None


def _default_dtype(data: Any) -> DType:
    if isinstance(data, Tensor):
        return data.dtype
    if _is_complex_data(data):
        raise complex_error(data)
    if hasattr(data, "dtype") and not isinstance(data, np.ndarray) and hasattr(data, "detach"):
        return dt.dtype(data.dtype)  # torch tensor
    if isinstance(data, (np.ndarray, np.generic)):
        return dt.dtype(data.dtype)
    if isinstance(data, (list, tuple)) and (typed := _typed_leaves_dtype(data)) is not None:
        return typed
    arr = as_array(data)
    if arr.dtype == np.bool_:
        return dt.bool_
    if arr.dtype.kind in "iu":
        return dt.int64
    if arr.dtype.kind == "c":  # a list holding complex numbers (else cast to float, dropping the imaginary parts)
        raise complex_error(arr)
    return _DEFAULT_FLOAT[0]  # Python floats: the default dtype (f32 unless set), as in torch


def _method(name: str) -> Any:
    """A Tensor method that calls `avalon.ops.<name>(self, ...)` (looked up when called)."""
    def method(self: Tensor, *args: Any, **kwargs: Any) -> Any:
        return getattr(_ops, name)(self, *args, **kwargs)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"`avalon.ops.{name}(self, ...)`."
    return method


def _cast(d: DType) -> Any:
    def method(self: Tensor, memory_format: Any = None) -> Tensor:
        return _ops.cast(self, d)
    method.__doc__ = f"This tensor converted to {d.name}."
    return method


def _is_dtype(x: Any) -> bool:
    try:
        dt.dtype(x)
    except (TypeError, ValueError, KeyError):
        return False
    return True


LITERALS: dict[int, weakref.ref] = {}
"""Tensors made while tracing from Python numbers (`torch.tensor([-1])`, `torch.Tensor([1e10])`,
`as_tensor([0.485, 0.456, 0.406])`), by id: literal data of the program, which `avalon.trace` records
as `LiteralArray` constants that a compiled graph may keep, as it keeps the Python numbers it read."""


def _python_numbers(x: Any) -> bool:
    """A (nested) list or tuple of Python numbers."""
    if isinstance(x, (list, tuple)):
        return all(isinstance(v, (bool, int, float)) or _python_numbers(v) for v in x)
    return False


MODEL_ARRAYS: dict[int, weakref.ref] = {}
"""Numpy arrays that models hold, by id (`avalon.tree` notes them when it walks a model): part of a compiled
function's signature by value, so a tensor made from one while tracing is literal data, as one made from
Python numbers is."""


def mark_model_array(arr: np.ndarray) -> None:
    key = id(arr)
    ref = MODEL_ARRAYS.get(key)
    if ref is None or ref() is not arr:
        MODEL_ARRAYS[key] = weakref.ref(arr, lambda _: MODEL_ARRAYS.pop(key, None))


def _model_array(x: Any) -> bool:
    ref = MODEL_ARRAYS.get(id(x)) if isinstance(x, np.ndarray) else None
    return ref is not None and ref() is x


CAPTURED_STATE: dict[int, weakref.ref] = {}
"""Eager tensors that a traced function wrote in place without taking them as arguments or making them (see
`_replace`), by id: state the graph writes back into the object the enclosing scope held when it was traced, so a
compiled function does not cache such a trace (as it does not cache one that read captured arrays)."""


def captured_state(t: Any) -> bool:
    ref = CAPTURED_STATE.get(id(t))
    return ref is not None and ref() is t


def _made_while_tracing(t: Tensor) -> None:
    """Note an eager tensor made while traces are recorded (all of them: one made in a nested trace is
    made in its enclosing ones too): a temporary of the traced function, not state from outside it
    whose in-place writes must be written back (see `_replace`)."""
    for tr in TRACING:
        tr.made.add(id(t))


def _mark_literal(t: Tensor) -> None:
    key = id(t)
    LITERALS[key] = weakref.ref(t, lambda _: LITERALS.pop(key, None))


def _complex_dtype(x: Any) -> bool:
    """A complex dtype (torch.cfloat, av.complex128, 'complex64', Python's complex): converting to one
    makes an `avalon.complex.ComplexTensor`."""
    if isinstance(x, str):
        return x.removeprefix("torch.") in ("complex64", "complex128", "cfloat", "cdouble")
    return x is complex or getattr(x, "is_complex", None) is True  # av.complex64, torch.cfloat


_COMPLEX: tuple[type, ...] = (complex, np.complexfloating)
"""Operands the arithmetic operators hand to the complex rules (avalon/complex.py adds ComplexTensor)."""


def _complex_aware(name: str) -> None:
    """`x * 1j` and `x * z` for a complex z go to the complex rules, as Python would send them if
    ComplexTensor were a subclass; Avalon's real operators would try to read z as a real array."""
    real = getattr(Tensor, name)

    def method(self: Tensor, other: Any) -> Any:
        if isinstance(other, _COMPLEX):
            from .complex import _lift
            return getattr(_lift(self), name)(other)
        return real(self, other)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = real.__doc__
    setattr(Tensor, name, method)


def _replace(t: Tensor, new: Tensor) -> None:
    """Make `t` hold `new`'s value (an in-place op, an item assignment): in place eagerly; inside a
    trace the object now stands for the new traced value, and an argument's or a model's state
    tensor is written back after the call. A view writes through to its base (`views.write`), and
    the live views of `t` read its new value afterwards (`views.refresh`), as torch's shared storage."""
    if t._view is not None:
        _views.write(t, new)
        return
    tr = new._trace
    if tr is not None and not _grad_mode.enabled():
        new = _keeps_gradient(t, new)
    if tr is None:
        if t._data is None:  # an ended trace's constant (cached labels: `Tensor._concrete`) written eagerly
            t._data, t._value, t._trace = new.to(t._device)._data, None, None
            if t._device == CPU:
                t._data = np.array(t._data, dtype=t._dtype.np)  # its own, writable, of t's dtype
        elif t._device == CPU and t._data.flags.writeable:
            t._data[...] = new.numpy()
        elif t._device != CPU and tuple(t._data.shape) == new.shape:
            t._data.copy_(new.to(t._device)._data)  # in place, so aliases (`.data`) see it; a storage copy
        else:
            t._data = new.to(t._device)._data
        _views.refresh(t)
        return
    if t._trace is tr:
        t._value = new._value
        orig = tr.stands_for.get(id(t))
        if orig is not None:  # `x.add_(1)` on an argument: the caller's tensor changes, as eagerly
            tr.record_update(orig, new)
        _views.refresh(t)
        return
    from .trace import current_trace
    if current_trace() is not tr:
        raise TracerError("assigning a traced value into a tensor outside the trace that made it")
    was_state = id(t) in tr.updated or tr.leaves.get(id(t)) in tr.graph.inputs  # (a 2nd write: updated)
    if not was_state and t._trace is None and t._data is not None and id(t) not in tr.made:
        # an eager tensor from outside the traced function, which it neither takes nor made (a closure's, a
        # dict's: an EMA's shadow weights `shadow[name].data = ...` in a compiled step): written back after the
        # call, as torch's write reaches it (the write was dropped, silently)
        was_state = True
        key = id(t)
        CAPTURED_STATE[key] = weakref.ref(t, lambda _: CAPTURED_STATE.pop(key, None))
    tr.leaves[id(t)] = new._value
    tr._keep.append(t)
    if was_state:
        tr.record_update(t, new)  # (which refreshes t's views)
    else:
        _views.refresh(t)


def _keeps_gradient(old: Tensor, new: Tensor) -> Tensor:
    """`new`'s value for a write into `old` that autodiff does not see (under `no_grad`, or through
    `.data`): as in torch, the tensor's elements change but not its place in autograd, so later reads
    still send their gradient to `old` (an entity table renormalized in place in TransE's forward
    gets the gradient of its lookups). `new - where(d == 0, d, 0)` with d = sg(old) - old: exactly
    `new` (d is +0 for a finite element; a non-finite one passes no gradient), gradient identity
    into `old`. A state tensor autodiff never differentiates (a buffer, an integer one, a value
    already without gradient) takes `new` as it is, and so does every write in a trace that is not
    differentiated (a compiled step's weight clipping after `opt.step`)."""
    from .trace import current_trace
    tr = new._trace
    if (tr is None or not tr.differentiated or isinstance(old, Buffer) or not old.dtype.is_float
            or current_trace() is not tr or not (old._trace is tr or id(old) in tr.leaves)):
        return new
    v = tr.value_of(old)
    if v.op is not None and v.op.name in ("stop_gradient", "constant"):
        return new
    with _grad_mode.set_grad_enabled(True):
        d = _ops.sub(_ops.stop_gradient(old), old)
        return _ops.sub(_ops.stop_gradient(new), _ops.where(_ops.eq(d, 0.0), d, 0.0))


def _detached(x: Tensor) -> Tensor:
    """`x`'s value without gradient: eagerly the same storage array, in a trace `stop_gradient`."""
    from .trace import current_trace
    tr = current_trace()
    if x._value is None and (tr is None or id(x) not in tr.leaves):
        return Tensor._wrap(x._data, x._dtype, x._device)
    return _ops.stop_gradient(x)  # traced (a traced tensor, or a model's tensor the trace reads)


def _set_data(t: Tensor, val: Tensor) -> None:
    """Eagerly give `t` the value of `val` (same shape and dtype): into its storage where it can,
    so whatever shares that storage (`.data`, an array from `.numpy()`) sees it."""
    src = (val if val._device == t._device else val.to(t._device))._data
    if src is t._data:
        return
    if t._device == CPU and t._data.flags.writeable and t._data.shape == src.shape:
        t._data[...] = src
    elif t._device != CPU and tuple(t._data.shape) == tuple(src.shape):
        t._data.copy_(src)
    else:
        t._data = src


def _kind(d: Any) -> int:
    """torch's casting categories for in-place results: bool < integer < float < complex."""
    return 3 if getattr(d, "is_complex", False) else 2 if d.is_float else 1 if getattr(d, "is_int", False) else 0


def _update(t: Tensor, new: Any, what: str) -> Tensor:
    """torch's in-place rule (`x.add_(y)`, `x += y`): the result keeps `t`'s shape and dtype and is
    written into `t` itself, so every reference to the object sees it (eagerly and in a trace)."""
    new = new if isinstance(new, Tensor) else Tensor(as_array(new, t.dtype), t.dtype)
    from .trace import current_trace
    tr = current_trace()
    if tr is not None and new._trace is None and (t._trace is tr or id(t) in tr.leaves):
        new = Tensor._traced(tr.value_of(new), tr)  # a traced tensor's new value is traced too
    if new.shape != t.shape:
        raise ValueError(f"{what}: the result has shape {new.shape}, but the tensor written in place has "
                         f"shape {t.shape} (an in-place op cannot broadcast the tensor it writes)")
    if new.dtype is not t.dtype:
        if _kind(new.dtype) > _kind(t.dtype):  # float into an integer or bool tensor, an integer into bool
            raise TypeError(f"{what}: result type {new.dtype.name} can't be cast to the {t.dtype.name} "
                            "tensor written in place (as in torch); use the out-of-place form")
        new = _ops.cast(new, t.dtype)
    _replace(t, new)
    return t


def _inplace(fn: Any, name: str) -> Any:
    """The in-place method `name` (`add_`): `fn(self, ...)` written into self, which it returns."""
    def method(self: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        _views.check_partial_overlap(self, (*args, *kwargs.values()), f"Tensor.{name}")
        if name in _FILLS and self._view is not None and _views.self_overlapping(self):
            value, mask = _FILLS[name](self, *args, **kwargs)
            if not isinstance(value, Tensor):  # (torch's fill_ of a tensor value refuses, as below)
                return _views.fill_through(self, value, mask)  # an expanded tensor's, as torch's
        return _update(self, fn(self, *args, **kwargs), f"Tensor.{name}")
    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"In place, as torch's `{name}`: this tensor becomes the result; returns it."
    return method


_FILLS = {  # the in-place fills torch allows on a tensor whose elements share memory: name -> (value, mask)
    "fill_": lambda self, value: (value, None), "zero_": lambda self: (0, None),
    "masked_fill_": lambda self, mask, value: (value, mask),
    "index_fill_": lambda self, dim, index, value: (value, _ops.index_fill(
        _ops.zeros(self.shape, dtype=dt.bool_), dim, index, True)),
}


def _op(name: str) -> Any:
    return lambda self, *a, **k: getattr(_ops, name)(self, *a, **k)


def _random_like(self: Tensor, distribution: str, generator: Any) -> Tensor:
    """Draws of this tensor's shape from Avalon's generator (a `random` op, fresh per compiled call)."""
    from .random import next_seed
    if generator is not None:
        raise NotImplementedError("a torch.Generator is not supported; seed with av.manual_seed")
    return _ops.random(next_seed(), self.shape, distribution, self.dtype if self.dtype.is_float else dt.float32)


def _normal(self: Tensor, mean: float = 0.0, std: float = 1.0, *, generator: Any = None) -> Tensor:
    if not isinstance(std, Tensor) and not float(std) >= 0:  # torch's checks (a flipped or nan draw otherwise)
        raise RuntimeError(f"normal expects std >= 0.0, but found std {std}")
    return _random_like(self, "normal", generator) * std + mean


def _uniform(self: Tensor, *args: float, generator: Any = None, **kw: float) -> Tensor:
    """torch's `uniform_(from=0, to=1)`: `from` is a Python keyword, so it arrives in `kw`."""
    lo, hi = (list(args) + [kw.pop("from", 0.0), kw.pop("to", 1.0)][len(args):])[:2]
    if kw or len(args) > 2:
        raise TypeError(f"uniform_() takes from and to, got {len(args)} positional and {sorted(kw)}")
    if not isinstance(lo, Tensor) and not isinstance(hi, Tensor) and not float(lo) <= float(hi):
        raise RuntimeError(f"uniform_ expects to return a [from, to) range, but found from={lo} > to={hi}")
    return _random_like(self, "uniform", generator) * (hi - lo) + lo


def _exponential(self: Tensor, lambd: float = 1.0, *, generator: Any = None) -> Tensor:
    """-log(1 - u) / lambd, u uniform on [0, 1)."""
    if not isinstance(lambd, Tensor) and not float(lambd) > 0:
        raise RuntimeError(f"exponential_ expects lambda > 0.0, but found lambda={lambd}")
    return _ops.div(_ops.neg(_ops.log(_ops.sub(1.0, _random_like(self, "uniform", generator)))), lambd)


def _bernoulli(self: Tensor, p: Any = 0.5, *, generator: Any = None) -> Tensor:
    from .random import next_seed
    if generator is not None:
        raise NotImplementedError("a torch.Generator is not supported; seed with av.manual_seed")
    if isinstance(p, Tensor):  # torch's check of the probabilities (compiled: when the graph runs)
        p = _ops.check_values(p, _ops.logical_and(_ops.ge(p, 0), _ops.le(p, 1)),
                              "bernoulli_: Expected p_in >= 0 && p_in <= 1 to be true, but got false")
    elif not 0 <= float(p) <= 1:
        raise RuntimeError(f"bernoulli_ expects p to be in [0, 1], but got p={p}")
    return _ops.lt(_ops.random(next_seed(), self.shape, "uniform"), p)


def _copy(self: Tensor, src: Any = None, non_blocking: bool = False, *, other: Any = None) -> Tensor:
    src = other if src is None else src  # torch's copy_ also takes `other=`
    src = src if isinstance(src, Tensor) else Tensor(as_array(src))
    if src.dtype is not self.dtype:  # copy_ converts any dtype, as torch's (a float into an int64 buffer truncates)
        src = _ops.cast(src, self.dtype)
    return _ops.broadcast_to(src, self.shape) if src.shape != self.shape else src


# in-place methods: name -> the out-of-place computation (ops as data, one table)
_INPLACE = {
    "add_": _op("add"), "sub_": _op("sub"), "mul_": _op("mul"), "div_": _op("div"), "pow_": _op("pow"),
    "clamp_": _op("clamp"), "clip_": _op("clamp"), "masked_fill_": _op("masked_fill"),
    "exp_": _op("exp"), "log_": _op("log"), "sqrt_": _op("sqrt"), "neg_": _op("neg"), "abs_": _op("abs"),
    "relu_": _op("relu"), "sigmoid_": _op("sigmoid"), "tanh_": _op("tanh"), "floor_": _op("floor"),
    "fill_": lambda self, value: (_ops.broadcast_to(_ops.cast(value, self.dtype), self.shape)
                                  if isinstance(value, Tensor) else _ops.full(self.shape, value, self.dtype,
                                                                              device=self.device)),
    "zero_": lambda self: _ops.zeros(self.shape, dtype=self.dtype, device=self.device),
    "copy_": _copy, "uniform_": _uniform, "normal_": _normal, "exponential_": _exponential,
    "bernoulli_": _bernoulli,
}


class Tensor:
    """An n-d array with a static shape and dtype. Build one with `av.tensor(...)`."""

    __slots__ = ("_data", "_dtype", "_value", "_trace", "_device", "_view", "_views", "__weakref__", "__dict__")
    # _view: a `views.ViewOf` when this tensor is a view of another (its base and how it derives from
    # it), else None; _views: weak references to the live views whose base this tensor is (or None);
    # __dict__: attributes ported code sets on a parameter, as on torch's (S4's `p._optim`, Mamba's
    # `p._no_weight_decay`); Python makes it only when one is set
    __array_priority__ = 100  # numpy defers to our operators: `ndarray + Tensor` gives a Tensor

    def __init__(self, data: Any, dtype: Any = None, device: Any = None):
        d = dt.dtype(dtype) if dtype is not None else _default_dtype(data)
        self._dtype = d
        self._value = None
        self._trace = None
        self._device = to_device(device) if device is not None else CPU
        self._view = self._views = None
        arr = as_array(data, d)
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.require(arr, requirements="C").copy()  # (ascontiguousarray makes 0-d 1-d)
        self._data = arr if self._device == CPU else _to_torch(arr, d, self._device)
        if TRACING:
            _made_while_tracing(self)
            if arr.ndim and (_python_numbers(data) or _model_array(data)):
                _mark_literal(self)

    @classmethod
    def _wrap(cls, data: Any, dtype: DType, device: Device = CPU) -> Tensor:
        t = object.__new__(cls)
        t._data, t._dtype, t._value, t._trace, t._device = data, dtype, None, None, device
        t._view = t._views = None
        if TRACING:
            _made_while_tracing(t)
        return t

    @classmethod
    def _traced(cls, value, trace) -> Tensor:
        t = object.__new__(cls)
        t._data, t._dtype, t._value, t._trace, t._device = None, value.type.dtype, value, trace, trace.device
        t._view = t._views = None
        return t

    # -- basic facts
    @property
    def is_traced(self) -> bool:
        return self._value is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._value.type.shape) if self._value is not None else tuple(self._data.shape)

    @property
    def dtype(self) -> DType:
        return self._dtype

    @property
    def device(self) -> Device:
        return self._device

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return self.ndim

    def size(self, dim: int | None = None):
        """torch's size(): the shape, or one dim's length (negative dims count from the end)."""
        if dim is None:
            return self.shape
        if self.ndim == 0:
            raise _ops.fail(IndexError(f"size: Dimension specified as {dim} but tensor has no dimensions"))
        return self.shape[_ops.check_dim("size", dim, self.ndim)]

    def numel(self) -> int:
        """The number of elements (a method, as in torch)."""
        return int(np.prod(self.shape, dtype=np.int64))

    nelement = numel
    ndimension = dim

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    # -- leaving Avalon
    def _concrete(self, what: str) -> np.ndarray | None:
        """Check that Python may read this tensor's value; for a traced tensor that depends on no input of
        its graph (a mask built from shapes, `triu(x.new_ones(q, k))`, or from literal data), that value,
        computed with the reference rules: the same on every call of the graph, so Python may branch on it."""
        if self._value is not None:
            if any(self._trace is tr for tr in TRACING):
                from .trace import constant_value
                const = constant_value(self._trace, self)
                if const is None:  # computed from a model's tensors alone (an element of a mask buffer)
                    from .trace import state_value
                    const = state_value(self._trace, self, what)
                if const is not None:
                    return const
            loc = self._value.op.loc if self._value.op is not None and self._value.op.loc else None
            where = f" (value made at {loc})" if loc else ""
            if "item" in what or what in ("float()", "int()"):  # a metric: float(loss), acc.item()
                fix = ("To use a value without its gradient (torch's `R - value.item()` in a loss), write "
                       "`value.detach()`: the same value, still a tensor, with no gradient flowing back. To log "
                       "a value, return the tensor from the traced function and call .item() on the result; for "
                       "data-dependent selection use av.where(cond, a, b).")
            elif "numpy" in what or "tolist" in what:  # np.exp(x), x.numpy() inside the function
                fix = ("Inside a traced function use Avalon's functions and Tensor methods (av.exp(x), "
                       "x.sum()) rather than numpy's, or return the value and convert it outside.")
            else:
                fix = ("Python control flow cannot depend on tensor values: use av.where(cond, a, b) for "
                       "data-dependent selection, or move the decision out of the traced function.")
            if not any(self._trace is tr for tr in TRACING):
                # kept after its trace ended (open_clip's ClipLoss caching `torch.arange(n)` labels in a dict):
                # a value that depends on none of that graph's inputs is the same on every run, so it is known
                from .trace import constant_value
                const = constant_value(self._trace, self)
                if const is not None:
                    return const
                raise TracerError(escaped_message(self, what, where))
            raise TracerError(f"{what} needs a concrete value, but this tensor is being traced{where}. Avalon "
                              f"records one graph for all inputs. {fix}")
        if TRACING:  # an eager tensor read while tracing: a model's, whose value the graph bakes in
            _read_while_tracing(self, what)

    def numpy(self) -> np.ndarray:
        """The data as a numpy array (a view on the CPU; a copy from a GPU)."""
        const = self._concrete("Tensor.numpy()")
        if const is not None:
            return const
        if self._device == CPU:
            return self._data
        t = self._data.detach().cpu()
        return (t.float() if str(t.dtype) == "torch.bfloat16" else t).numpy()

    def __array__(self, dtype=None, copy=None):
        self._concrete("converting to a numpy array")
        a = self.numpy()
        return a.astype(dtype) if dtype is not None else a

    def item(self):
        self._concrete("Tensor.item()")
        _one_element(self, "Tensor.item()")
        return self.numpy().item()

    def tolist(self):
        self._concrete("Tensor.tolist()")
        return self.numpy().tolist()

    def __bool__(self) -> bool:
        self._concrete("a Python `if`/`while`/`and`/`or`/bool() on a tensor")
        if self.numel() != 1:
            from .trace import located, user_location
            raise located(ScalarConversionError(
                f"the truth value of a tensor with {self.numel()} elements is ambiguous (Boolean value of Tensor "
                "with more than one value is ambiguous); use .any() or .all()"), user_location())
        return bool(self.item())

    def __float__(self) -> float:
        self._concrete("float()")
        _one_element(self, "float()")
        return float(self.item())

    def __int__(self) -> int:
        self._concrete("int()")
        _one_element(self, "int()")
        return int(self.item())

    def __index__(self) -> int:
        self._concrete("using a tensor as an index")
        if self.dtype.is_float:
            raise TypeError("only integer tensors can be used as an index")
        return int(self.item())

    def to(self, device: Any = None, dtype: Any = None, non_blocking: bool = False, copy: bool = False,
           memory_format: Any = None, *, tensor: Any = None) -> Tensor:
        """Copy to another device and/or convert the dtype (no copy when nothing changes). As in
        torch, `x.to(dtype)` and `x.to(other_tensor)` (or `tensor=other_tensor`) work too. `memory_format` is
        accepted and has no effect: Avalon tensors have no strides; the layout pass picks kernels' layouts."""
        device = tensor if tensor is not None else device
        if isinstance(dtype, bool) and (isinstance(device, Tensor) or _is_dtype(device)):
            dtype = None  # torch's x.to(dtype_or_tensor, non_blocking): its second positional argument
        if isinstance(device, Tensor):
            device, dtype = device.device, device.dtype if dtype is None else dtype
        elif device is not None and not isinstance(device, (str, Device)) and _is_dtype(device):
            if dtype is not None:  # (x.to(float64, int64) kept the first and dropped the second)
                raise TypeError(f"to(): got two dtypes, {device} and {dtype}; give one")
            device, dtype = None, device
        elif _complex_dtype(device) or _complex_dtype(dtype):  # x.to(torch.cfloat): a ComplexTensor
            from .complex import _lift
            return _lift(self).to(*(a for a in (device, dtype) if a is not None))
        out = self
        if dtype is not None and dt.dtype(dtype) != self.dtype:
            out = out.astype(dtype)
        if device is not None:
            dev = to_device(device)
            if dev != out._device:
                out._concrete("Tensor.to(device)")
                if dev == CPU:
                    out = Tensor._wrap(out.numpy().copy(), out.dtype, CPU)
                else:
                    out = Tensor._wrap(_to_torch(out.numpy(), out.dtype, dev), out.dtype, dev)
        return out

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def cuda(self) -> Tensor:
        return self.to("cuda")

    def __repr__(self) -> str:
        if self._value is not None:
            return f"Tensor(traced, shape={self.shape}, dtype={self.dtype.name})"
        # torch's threshold: every element up to 1000, so an 8x4 batch shows all its rows
        o = PRINT_OPTIONS  # (av.set_printoptions)
        body = np.array2string(self.numpy(), separator=", ", precision=o["precision"], threshold=o["threshold"],
                               edgeitems=o["edgeitems"], max_line_width=o["linewidth"], suppress_small=o["suppress"],
                               prefix="tensor(")
        dev = f", device='{self._device}'" if self._device != CPU else ""
        return f"tensor({body}, dtype={self.dtype.name}{dev})"

    def __hash__(self) -> int:  # by identity: `==` builds an elementwise tensor, so it cannot define equality
        return id(self)

    def __getstate__(self) -> tuple[None, dict[str, Any]]:
        """Copies and pickles keep the data (and, for a view, its base) and a frozen tensor's
        `requires_grad=False` (as torch's deepcopy does: an EMA copy of a fine-tuned model), but not
        the weak list of this tensor's own views: a copy's views are the copies of them."""
        state = {k: getattr(self, k) for k in ("_data", "_dtype", "_value", "_trace", "_device", "_view")}
        if id(self) in FROZEN:
            state["frozen"] = True
        if self.__dict__:  # attributes set on it (`p._optim`), as torch's copies keep a Parameter's
            state["__dict__"] = dict(self.__dict__)
        return None, state

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        for k, v in state[1].items():
            if k == "frozen":
                self.requires_grad = False
                continue
            object.__setattr__(self, k, v)
        self._views = None
        if self._view is not None:
            _views._register(self._view.base, self)

    def __deepcopy__(self, memo: dict) -> Tensor:
        """copy.deepcopy: what `__getstate__` keeps, copied. Inside a trace, the copy of a traced tensor or
        of one of the trace's inputs (a model's weight: Reptile's `deepcopy(model.state_dict())` taken
        before its inner steps) is that tensor's traced value, as `clone` gives: copying the trace itself
        made a tensor of no trace, and copying an input's data baked its old values into the graph."""
        from .trace import current_trace
        tr = current_trace()
        if self._value is not None:
            value, trace = self._value, self._trace
        elif tr is not None and (id(self) in tr.leaves or tr._enclosing(self) is not None):
            value, trace = tr.value_of(self), tr
        else:
            new = object.__new__(type(self))
            memo[id(self)] = new
            new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
            if TRACING:
                _made_while_tracing(new)  # a copy made in the traced function (`ema_copy`): not captured state
            return new
        new = type(self)._traced(value, trace)
        memo[id(self)] = new
        if id(self) in FROZEN:
            new.requires_grad = False
        if self.__dict__:
            new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    # -- operators (numpy broadcasting and promotion; each one is the array function in avalon/ops.py)
    def __add__(self, other: Any) -> Tensor:
        return _ops.add(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return _ops.add(other, self)

    def __sub__(self, other: Any) -> Tensor:
        return _ops.sub(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return _ops.sub(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return _ops.mul(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return _ops.mul(other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return _ops.div(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return _ops.div(other, self)

    def __floordiv__(self, other: Any) -> Tensor:
        return _ops.floor_divide(self, other)

    def __pow__(self, other: Any) -> Tensor:
        return _ops.pow(self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return _ops.pow(other, self)

    def __matmul__(self, other: Any) -> Tensor:
        return _ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return _ops.matmul(other, self)

    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return _ops.eq(self, other)

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return _ops.ne(self, other)

    def __lt__(self, other: Any) -> Tensor:
        return _ops.lt(self, other)

    def __le__(self, other: Any) -> Tensor:
        return _ops.le(self, other)

    def __gt__(self, other: Any) -> Tensor:
        return _ops.gt(self, other)

    def __ge__(self, other: Any) -> Tensor:
        return _ops.ge(self, other)

    # `&`, `|`, `^`, `~`: bitwise on integers, logical on bools (the same ops as before for masks)
    def __and__(self, other: Any) -> Tensor:
        return _ops.bitwise_and(self, other)

    def __rand__(self, other: Any) -> Tensor:
        return _ops.bitwise_and(other, self)

    def __or__(self, other: Any) -> Tensor:
        return _ops.bitwise_or(self, other)

    def __ror__(self, other: Any) -> Tensor:
        return _ops.bitwise_or(other, self)

    def __xor__(self, other: Any) -> Tensor:
        return _ops.bitwise_xor(self, other)

    def __rxor__(self, other: Any) -> Tensor:
        return _ops.bitwise_xor(other, self)

    def __invert__(self) -> Tensor:
        return _ops.bitwise_not(self)

    def __lshift__(self, other: Any) -> Tensor:
        return _ops.bitwise_left_shift(self, other)

    def __rlshift__(self, other: Any) -> Tensor:
        return _ops.bitwise_left_shift(other, self)

    def __rshift__(self, other: Any) -> Tensor:
        return _ops.bitwise_right_shift(self, other)

    def __rrshift__(self, other: Any) -> Tensor:
        return _ops.bitwise_right_shift(other, self)

    def __neg__(self) -> Tensor:
        return _ops.neg(self)

    def __pos__(self) -> Tensor:
        return self

    def __abs__(self) -> Tensor:
        return _ops.abs(self)

    def __getitem__(self, index: Any) -> Tensor:
        return _ops.getitem(self, index)

    # `x += y` writes into x, as torch does: `z = y; z += 1` changes y too
    def __iadd__(self, other: Any) -> Tensor:
        _views.check_partial_overlap(self, (other,), "+=")
        return _update(self, _ops.add(self, other), "+=")

    def __isub__(self, other: Any) -> Tensor:
        _views.check_partial_overlap(self, (other,), "-=")
        return _update(self, _ops.sub(self, other), "-=")

    def __imul__(self, other: Any) -> Tensor:
        _views.check_partial_overlap(self, (other,), "*=")
        return _update(self, _ops.mul(self, other), "*=")

    def __itruediv__(self, other: Any) -> Tensor:
        _views.check_partial_overlap(self, (other,), "/=")
        return _update(self, _ops.div(self, other), "/=")

    # `%` and `//` follow Python's (and torch's) signs: remainder has the divisor's, // floors
    def __mod__(self, other: Any) -> Tensor:
        return _ops.remainder(self, other)

    def __rmod__(self, other: Any) -> Tensor:
        return _ops.remainder(other, self)

    def __rfloordiv__(self, other: Any) -> Tensor:
        return _ops.floor_divide(other, self)

    def __imod__(self, other: Any) -> Tensor:
        return _update(self, _ops.remainder(self, other), "%=")

    def __ifloordiv__(self, other: Any) -> Tensor:
        return _update(self, _ops.floor_divide(self, other), "//=")

    def __setitem__(self, index: Any, value: Any) -> None:
        """`x[index] = value` with torch's result, computed functionally (`ops.setitem`): this Tensor
        object then holds the updated value, eagerly and inside a trace (autodiff sees the update)."""
        if isinstance(value, Tensor) and value._view is not None and value._view.base is (
                self._view.base if self._view is not None else self):  # torch's copy_ into the indexed part
            part = self[index]
            if part._view is not None:
                _views.check_partial_overlap(part, (value,), "x[index] = value")
        if isinstance(index, Tensor) and index.dtype is dt.bool_ and not isinstance(value, Tensor) \
                and self._view is not None and _views.self_overlapping(self):
            _views.fill_through(self, value, index)  # `x[mask] = 0.5` of an expanded x: torch's masked_fill_
            return
        if self._view is not None and _views.overlaps(self):
            # an expanded tensor: torch writes the memory the indexed view reaches, refused where that overlaps
            part = self[index]
            if part._view is not None and part._view.base is self._view.base:
                _replace(part, _ops.setitem(part, Ellipsis, value))
                return
        _replace(self, _ops.setitem(self, index, value))

    # -- elementwise methods (each is the function of the same name in avalon/ops)
    exp = _method("exp")
    log = _method("log")
    sin = _method("sin")
    cos = _method("cos")
    tanh = _method("tanh")
    sigmoid = _method("sigmoid")
    relu = _method("relu")
    sqrt = _method("sqrt")
    rsqrt = _method("rsqrt")
    abs = _method("abs")
    neg = _method("neg")
    sign = _method("sign")
    erf = _method("erf")
    floor = _method("floor")
    reciprocal = _method("reciprocal")
    square = _method("square")
    logical_not = _method("logical_not")
    add = _method("add")
    sub = _method("sub")
    mul = _method("mul")
    div = _method("div")
    pow = _method("pow")
    maximum = _method("maximum")
    minimum = _method("minimum")
    eq = _method("eq")
    ne = _method("ne")
    lt = _method("lt")
    le = _method("le")
    gt = _method("gt")
    ge = _method("ge")
    clamp = clip = _method("clamp")
    matmul = _method("matmul")
    bmm = _method("bmm")
    mm = _method("mm")
    masked_fill = _method("masked_fill")

    def where(self, condition: Any, other: Any) -> Tensor:
        """torch's `x.where(cond, y)`: x where cond, else y."""
        return _ops.where(condition, self, other)

    # -- reductions: torch's dim/keepdim or numpy's axis/keepdims; max/min(dim) give (values, indices)
    sum = _method("sum")
    mean = _method("mean")
    var = _method("var")
    max = _method("max")
    min = _method("min")
    amax = _method("amax")
    amin = _method("amin")
    argmax = _method("argmax")
    argmin = _method("argmin")
    logsumexp = _method("logsumexp")
    cumsum = _method("cumsum")

    # -- shapes
    reshape = _method("reshape")  # a view where torch's is one (avalon/views.py), else a copy
    view = _method("view")  # torch's view: never a copy; RuntimeError where reshape would copy
    transpose = _method("transpose")
    permute = _method("permute")
    flatten = _method("flatten")
    squeeze = _method("squeeze")
    expand_dims = _method("expand_dims")
    unsqueeze = _method("unsqueeze")  # torch's `dim=` keyword (performer-pytorch's `unsqueeze(dim=-1)`)
    broadcast_to = _method("broadcast_to")
    split = _method("split")
    chunk = _method("chunk")
    narrow = _method("narrow")
    tril = _method("tril")
    triu = _method("triu")
    t = _method("t")
    index_select = _method("index_select")
    roll = _method("roll")

    def flip(self, *dims: Any, **kwargs: Any) -> Tensor:
        """torch's Tensor.flip: the dims as one sequence (`x.flip((0, 2))`, `dims=`) or spread (`x.flip(0, 2)`)."""
        return _ops.flip(self, *((dims,) if len(dims) > 1 else dims), **kwargs)

    fliplr = _method("fliplr")
    flipud = _method("flipud")
    repeat = _method("repeat")
    tile = _method("tile")
    repeat_interleave = _method("repeat_interleave")
    movedim = _method("movedim")
    moveaxis = _method("moveaxis")
    diag = _method("diag")
    diagonal = _method("diagonal")
    trace = _method("trace")
    unbind = _method("unbind")

    # -- more math (avalon/ops: pointwise, reductions, sorting)
    log1p = _method("log1p")
    expm1 = _method("expm1")
    isnan = _method("isnan")
    isinf = _method("isinf")
    isfinite = _method("isfinite")
    trunc = fix = _method("trunc")
    remainder = _method("remainder")
    fmod = _method("fmod")
    floor_divide = _method("floor_divide")
    true_divide = divide = _method("div")
    lerp = _method("lerp")
    addmm = _method("addmm")
    addcmul = _method("addcmul")
    addcdiv = _method("addcdiv")
    outer = ger = _method("outer")
    std = _method("std")
    prod = _method("prod")
    cumprod = _method("cumprod")
    norm = _method("norm")
    all = _method("all")
    any = _method("any")
    softmax = _method("softmax")
    log_softmax = _method("log_softmax")
    sort = _method("sort")
    argsort = _method("argsort")
    msort = _method("msort")
    topk = _method("topk")
    gather = _method("gather")
    scatter = _method("scatter")
    scatter_add = _method("scatter_add")
    take_along_dim = _method("take_along_dim")
    multinomial = _method("multinomial")
    index_add = _method("index_add")
    index_copy = _method("index_copy")
    index_reduce = _method("index_reduce")
    index_fill = _method("index_fill")
    index_put = _method("index_put")
    scatter_reduce = _method("scatter_reduce")
    bincount = _method("bincount")

    # -- torch's remaining math and shape methods (avalon/ops: mathfn, stats, matrices, shapes, dynamic)
    absolute = _method("absolute")
    acos = arccos = _method("acos")
    asin = arcsin = _method("asin")
    atan = arctan = _method("atan")
    atan2 = arctan2 = _method("atan2")
    cosh = _method("cosh")
    sinh = _method("sinh")
    tan = _method("tan")
    ceil = _method("ceil")
    round = _method("round")
    frac = _method("frac")
    log10 = _method("log10")
    log2 = _method("log2")
    lgamma = _method("lgamma")
    digamma = _method("digamma")
    def polygamma(self, n: int) -> Tensor:
        """torch's `x.polygamma(n)`: polygamma(n, x) (the order comes first in the function)."""
        return _ops.polygamma(n, self)

    erfinv = _method("erfinv")
    logit = _method("logit")
    xlogy = _method("xlogy")
    hypot = _method("hypot")
    logaddexp = _method("logaddexp")
    heaviside = _method("heaviside")
    signbit = _method("signbit")
    sgn = _method("sgn")
    negative = _method("negative")
    float_power = _method("float_power")
    deg2rad = _method("deg2rad")
    rad2deg = _method("rad2deg")
    isposinf = _method("isposinf")
    isneginf = _method("isneginf")
    nan_to_num = _method("nan_to_num")
    bitwise_and = _method("bitwise_and")
    bitwise_or = _method("bitwise_or")
    bitwise_xor = _method("bitwise_xor")
    bitwise_not = _method("bitwise_not")
    bitwise_left_shift = _method("bitwise_left_shift")
    bitwise_right_shift = _method("bitwise_right_shift")
    logical_and = _method("logical_and")
    logical_or = _method("logical_or")
    logical_xor = _method("logical_xor")
    allclose = _method("allclose")
    isclose = _method("isclose")
    equal = _method("equal")
    clamp_min = _method("clamp_min")
    clamp_max = _method("clamp_max")
    count_nonzero = _method("count_nonzero")
    cross = _method("cross")
    dot = _method("dot")
    vdot = _method("vdot")
    inner = _method("inner")
    mv = _method("mv")
    diff = _method("diff")
    diag_embed = _method("diag_embed")
    cummax = _method("cummax")
    cummin = _method("cummin")
    logcumsumexp = _method("logcumsumexp")
    # avalon/ops/math_more.py and products_more.py
    asinh = arcsinh = _method("asinh")
    acosh = arccosh = _method("acosh")
    atanh = arctanh = _method("atanh")
    erfc = _method("erfc")
    exp2 = _method("exp2")
    sinc = _method("sinc")
    i0 = _method("i0")
    mvlgamma = _method("mvlgamma")
    frexp = _method("frexp")
    ldexp = _method("ldexp")
    logaddexp2 = _method("logaddexp2")
    copysign = _method("copysign")
    nextafter = _method("nextafter")
    fmax = _method("fmax")
    fmin = _method("fmin")
    gcd = _method("gcd")
    lcm = _method("lcm")
    greater = _method("greater")
    greater_equal = _method("greater_equal")
    less = _method("less")
    less_equal = _method("less_equal")
    not_equal = _method("not_equal")
    multiply = _method("multiply")
    subtract = _method("subtract")
    positive = _method("positive")
    addmv = _method("addmv")
    addr = _method("addr")
    addbmm = _method("addbmm")
    baddbmm = _method("baddbmm")
    aminmax = _method("aminmax")
    kthvalue = _method("kthvalue")
    median = _method("median")
    nanmedian = _method("nanmedian")
    mode = _method("mode")
    quantile = _method("quantile")
    nanquantile = _method("nanquantile")
    nanmean = _method("nanmean")
    nansum = _method("nansum")
    histc = _method("histc")
    renorm = _method("renorm")
    sum_to_size = _method("sum_to_size")
    masked_select = _method("masked_select")
    masked_scatter = _method("masked_scatter")
    nonzero = _method("nonzero")
    nonzero_static = _method("nonzero_static")
    adjoint = _method("adjoint")
    lu = _method("lu")
    lu_solve = _method("lu_solve")
    argwhere = _method("argwhere")
    unique = _method("unique")
    unique_consecutive = _method("unique_consecutive")
    take = _method("torch_take")  # torch's: over the flattened tensor
    put = _method("put")
    select = _method("select")
    tensor_split = _method("tensor_split")
    swapaxes = _method("swapaxes")
    swapdims = _method("swapdims")  # torch's dim0/dim1 (swapaxes: axis0/axis1)
    unflatten = _method("unflatten")
    unfold = _method("unfold")  # Tensor.unfold(dimension, size, step): sliding windows (a view)
    ravel = _method("ravel")
    rot90 = _method("rot90")
    isin = _method("isin")
    matrix_power = _method("matrix_power")
    matrix_exp = _method("matrix_exp")
    inverse = _method("inverse")
    det = _method("det")
    logdet = _method("logdet")
    slogdet = _method("slogdet")
    svd = _method("svd")
    as_strided = _method("as_strided")
    qr = _method("qr")
    pinverse = _method("pinverse")
    triangular_solve = _method("triangular_solve")
    bernoulli = _method("bernoulli")
    is_floating_point = _method("is_floating_point")
    element_size = _method("element_size")
    stride = _method("stride")
    storage_offset = _method("storage_offset")
    data_ptr = _method("data_ptr")
    get_device = _method("get_device")
    register_hook = _method("register_hook")  # refused, saying how gradients are transformed here
    retain_grad = _method("retain_grad")  # refused likewise
    register_post_accumulate_grad_hook = _method("register_post_accumulate_grad_hook")
    resize_ = _method("resize")  # same number of elements only

    # in-place shape changes (`x.unsqueeze_(0)`): eagerly, or on a tensor the traced function made itself
    def _reshaped(self, fn: Any, what: str) -> Tensor:
        return _ops.tensor_extras.reshape_inplace(self, fn, what)

    def unsqueeze_(self, dim: int) -> Tensor:
        return self._reshaped(lambda x: _ops.unsqueeze(x, dim), "Tensor.unsqueeze_")

    def squeeze_(self, dim: Any = None) -> Tensor:
        return self._reshaped(lambda x: _ops.squeeze(x, dim) if dim is not None else _ops.squeeze(x),
                              "Tensor.squeeze_")

    def t_(self) -> Tensor:
        return self._reshaped(lambda x: x.t(), "Tensor.t_")

    def transpose_(self, dim0: int, dim1: int) -> Tensor:
        return self._reshaped(lambda x: x.transpose(dim0, dim1), "Tensor.transpose_")

    swapaxes_ = swapdims_ = transpose_

    def detach_(self) -> Tensor:
        """torch's: this tensor, from now on without a gradient to what it was computed from. As torch, a view
        (of anything but a detached tensor) is refused: the write would cut the base's gradient there too."""
        if self._view is not None and not all(isinstance(st, _views.Detach) for st in self._view.steps):
            from .trace import located, user_location
            raise located(RuntimeError("Can't detach views in-place. Use detach() instead (Tensor.detach_ of a view "
                                       "of another tensor)"), user_location())
        return _update(self, _detached(self), "Tensor.detach_")

    def narrow_copy(self, dim: int, start: int, length: int) -> Tensor:
        return self.narrow(dim, start, length).clone()

    def unsafe_chunk(self, chunks: int, dim: int = 0) -> Any:
        return self.chunk(chunks, dim)

    def unsafe_split(self, split_size: Any, dim: int = 0) -> Any:
        return self.split(split_size, dim)

    unsafe_split_with_sizes = unsafe_split

    def apply_(self, callable: Any) -> Tensor:  # noqa: A002 (torch's name)
        """torch's: `callable` applied to every element in place, eagerly (a Python function on the CPU)."""
        self._concrete("Tensor.apply_()")
        out = np.vectorize(callable, otypes=[self.dtype.np])(self.numpy()) if self.numel() else self.numpy()
        return _update(self, Tensor(np.asarray(out, self.dtype.np), self.dtype, self.device), "Tensor.apply_")

    def map_(self, tensor: Any, callable: Any) -> Tensor:  # noqa: A002
        """torch's: `callable(a, b)` over this tensor and `tensor` (broadcast to it) in place, eagerly."""
        self._concrete("Tensor.map_()")
        other = np.broadcast_to(as_array(tensor), self.shape)
        out = np.vectorize(callable, otypes=[self.dtype.np])(self.numpy(), other) if self.numel() else self.numpy()
        return _update(self, Tensor(np.asarray(out, self.dtype.np), self.dtype, self.device), "Tensor.map_")

    cholesky = _method("cholesky")
    cholesky_solve = _method("cholesky_solve")
    cholesky_inverse = _method("cholesky_inverse")
    lu = _method("lu")
    lu_solve = _method("lu_solve")
    histogram = _method("histogram")
    isreal = _method("isreal")

    def is_inference(self) -> bool:
        return False

    def is_neg(self) -> bool:
        return False

    def is_shared(self) -> bool:
        return False

    def share_memory_(self) -> Tensor:
        """torch's (for multiprocessing data loaders): the tensor itself; Avalon's loaders do not share storage."""
        return self

    def is_pinned(self, device: Any = None) -> bool:
        return False

    def new_empty_strided(self, size: Any, stride: Any, *, dtype: Any = None, device: Any = None,
                          requires_grad: bool = False, layout: Any = None, pin_memory: bool = False) -> Tensor:
        """torch's: a new uninitialized tensor (zeros here) of `size`; Avalon's tensors are contiguous, so
        `stride` is not kept."""
        return self.new_empty(tuple(size), dtype=dtype, device=device)
    pin_memory = _method("pin_memory")  # no pinned memory: the tensor itself
    is_leaf = property(_method("is_leaf"), doc="True: Avalon records no autograd graph on tensors.")
    byte = _cast(dt.uint8)
    char = _cast(dt.int8)
    short = _cast(dt.int16)
    # avalon/ops/torch_aliases.py, and torch methods over functions av.* already had
    cov = _method("cov")
    corrcoef = _method("corrcoef")
    diagflat = _method("diagflat")
    dist = _method("dist")
    kron = _method("kron")
    hsplit = _method("hsplit")
    vsplit = _method("vsplit")
    dsplit = _method("dsplit")
    split_with_sizes = _method("split_with_sizes")
    select_scatter = _method("select_scatter")
    slice_scatter = _method("slice_scatter")
    diagonal_scatter = _method("diagonal_scatter")
    hardshrink = _method("hardshrink")
    prelu = _method("prelu")
    is_complex = _method("is_complex")
    is_signed = _method("is_signed")
    is_nonzero = _method("is_nonzero")
    is_same_size = _method("is_same_size")
    is_cpu = property(lambda self: self._device.type == "cpu", doc="Whether the tensor is on the CPU.")
    itemsize = property(lambda self: self._dtype.itemsize, doc="Bytes per element (as element_size()).")
    nbytes = property(lambda self: self.numel() * self._dtype.itemsize, doc="numel() * itemsize.")

    def new(self, *args: Any, device: Any = None, **kwargs: Any) -> Tensor:
        """torch's legacy `x.new(...)`: `x.new()` empty, `x.new(2, 3)` zeros of that shape, `x.new(data)` a
        copy of a list or array, all of x's dtype and device (torch's rules for av.Tensor(...)). A tuple
        of ints is a shape, as a torch.Size is (`x.new(x.size())`, Avalon's sizes being tuples)."""
        if len(args) == 1 and isinstance(args[0], tuple) and all(isinstance(a, (int, np.integer)) for a in args[0]):
            args = args[0]
        return _legacy_new("new", self._dtype, args, device if device is not None else self._device, kwargs)

    def type(self, dtype: Any = None, non_blocking: bool = False, **kwargs: Any) -> Any:
        """torch's `x.type()`: the tensor type's name ('torch.FloatTensor', 'torch.cuda.LongTensor');
        `x.type(dtype)` converts to a dtype or to a type given by name or class."""
        if dtype is None:
            return f"torch.{'cuda.' if self.is_cuda else ''}{_TYPE_NAMES[self.dtype.name]}"
        if isinstance(dtype, type):  # torch.FloatTensor, torch.cuda.LongTensor
            dtype = f"{dtype.__module__}.{dtype.__name__}"
        if isinstance(dtype, str) and dtype.endswith("Tensor"):
            name = dtype.rsplit(".", 1)[-1]
            by_name = {v: k for k, v in _TYPE_NAMES.items()}
            if name not in by_name:
                raise TypeError(f"Tensor.type: unknown tensor type {dtype!r}")
            out = _ops.cast(self, by_name[name])
            return out.to("cuda") if ".cuda." in dtype and not self.is_cuda else out
        return _ops.cast(self, dtype)

    @property
    def T(self) -> Tensor:
        return _ops.transpose(self)

    @property
    def mT(self) -> Tensor:  # noqa: N802 (torch's name)
        """torch's batched matrix transpose: the last two dims swapped, a view as `transpose(-2, -1)`."""
        if self.ndim < 2:
            raise RuntimeError(f"tensor.mT is only supported on matrices or batches of matrices. Got {self.ndim}-D "
                               "tensor.")
        return self.transpose(-2, -1)

    mH = mT  # the conjugate transpose: the same for a real tensor

    @property
    def real(self) -> Tensor:
        """torch's `x.real` of a real tensor: x itself (a ComplexTensor's is its real part)."""
        return self

    @property
    def imag(self) -> Tensor:
        raise RuntimeError("imag is not implemented for tensors with non-complex dtypes.")

    def conj(self) -> Tensor:
        """The complex conjugate: a real tensor is its own."""
        return self

    conj_physical = resolve_conj = resolve_neg = conj

    def is_conj(self) -> bool:
        return False

    def angle(self) -> Tensor:
        from .complex import angle
        return angle(self)

    def expand(self, *shape: Any, size: Any = None) -> Tensor:
        """torch's broadcast: `x.expand(2, 3)`, `x.expand((2, 3))` or `x.expand(size=(2, 3))`; -1 keeps a dim."""
        shape = _ops.core._shape_kw("expand", shape, "size", size)
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        lead = len(shape) - self.ndim
        for i, s in enumerate(shape[:max(lead, 0)]):
            if s == -1:  # no size to keep: shape[i - lead] would wrap to a trailing dim
                raise _ops.core.fail(_ops.core.ArgumentError(
                    f"expand: the expanded size of the tensor (-1) isn't allowed in a leading, non-existing "
                    f"dimension {i} (expanding shape {self.shape} to {tuple(shape)})"))
        out = _ops.broadcast_to(self, [self.shape[i - lead] if s == -1 else s for i, s in enumerate(shape)])
        return _views.link(self, out, _views.Expand(out.shape))  # a read-only view, as in torch

    def expand_as(self, other: Tensor) -> Tensor:
        return self.expand(other.shape)

    def view_as(self, other: Tensor) -> Tensor:
        return _ops.reshape(self, other.shape)

    reshape_as = view_as

    def contiguous(self, memory_format: Any = None) -> Tensor:
        """This tensor, or, for a view whose elements torch would not hold contiguously (a transposed
        or strided view), a copy, as torch's: writes to it leave the view's base alone."""
        return self.clone() if not self.is_contiguous() else self

    def is_contiguous(self, memory_format: Any = None) -> bool:
        """torch's answer: False for views whose strides in their base are not row-major (`x.t()`,
        `x[:, ::2]`, `x.expand(...)`); tensors that are no view are contiguous."""
        return self._view is None or _views.is_contiguous(*self._view.layout[:2])

    # -- dtypes and copies
    def astype(self, dtype: Any) -> Tensor:
        return _ops.cast(self, dtype)

    def type_as(self, other: Tensor) -> Tensor:
        return _ops.cast(self, other.dtype)

    float = _cast(dt.float32)
    double = _cast(dt.float64)
    half = _cast(dt.float16)
    long = _cast(dt.int64)
    int = _cast(dt.int32)
    bool = _cast(dt.bool_)
    bfloat16 = _cast(dt.bfloat16)

    def backward(self, *args: Any, **kwargs: Any) -> None:
        """torch's `loss.backward()` has no meaning here: gradients are values, returned."""
        raise RuntimeError(_GRADS_ARE_VALUES.format("loss.backward()"))

    @property
    def grad(self) -> Any:
        """Inside the step of an optimizer written as torch's (avalon/optim), the gradient it was given for this
        parameter (None without one); anywhere else an error: gradients are values that av.grad returns."""
        if OPTIMIZER_GRADS and id(self) in OPTIMIZER_GRADS[-1]:
            return OPTIMIZER_GRADS[-1][id(self)]
        raise AttributeError(_GRADS_ARE_VALUES.format("Tensor.grad") + (
            "; an optimizer written as torch's reads `p.grad` of its parameters when its method is given "
            "the gradients: `opt.step(grads)`, `opt.first_step(grads)`" if OPTIMIZER_GRADS else ""))

    @grad.setter
    def grad(self, value: Any) -> None:  # (not an attribute of its own: tensors take attributes, as torch's)
        raise AttributeError(_GRADS_ARE_VALUES.format("setting Tensor.grad"))

    def detach(self) -> Tensor:
        """The same values with no gradient flowing back (torch's detach, jax's stop_gradient),
        sharing this tensor's storage as in torch: `p.data.mul_(0)`, `x.detach().add_(1)` and a
        soft update `tp.data.copy_(...)` change the tensor itself, eagerly and in a trace."""
        return _views.link(self, _detached(self), _views.Detach())  # a view: writes reach the base

    def _assign_data(self, value: Any) -> None:
        """torch's `p.data = t` (dlrm's `LL.weight.data = torch.tensor(W)`): `p` takes `t`'s values, written
        into its storage (in a trace, recorded as a write); eagerly a new shape or dtype too, as in torch."""
        v = value if isinstance(value, Tensor) else tensor(value)
        from .trace import current_trace
        if (v.shape == self.shape and v.dtype is self.dtype) or current_trace() is not None or self._view is not None:
            self.detach().copy_(v)
            return
        self._data, self._dtype = v.to(self._device).detach()._data, v.dtype
        _views.refresh(self)

    data = property(detach, _assign_data, doc="torch's `.data`: the values without gradient, the same storage "
                    "(assigning to it gives the tensor new values, as torch's `p.data = t`).")

    def clone(self, memory_format: Any = None) -> Tensor:
        """An independent copy (no view of anything): later writes to either leave the other alone.
        Inside a trace, a copy of one of its inputs (a model's weight) is that input's traced value,
        so gradients flow through it and later calls read the current weights."""
        if self._value is not None:
            return Tensor._traced(self._value, self._trace)
        from .trace import current_trace
        tr = current_trace()
        if tr is not None and (id(self) in tr.leaves or tr._enclosing(self) is not None):
            return Tensor._traced(tr.value_of(self), tr)
        data = self._data.copy() if self._device == CPU else self._data.clone()
        return Tensor._wrap(data, self._dtype, self._device)

    @property
    def requires_grad(self) -> bool:
        """Whether `av.grad` of a model differentiates this tensor: floating-point tensors do unless
        frozen with `requires_grad = False` (torch's fine-tuning idiom; the gradient dict then has no
        entry for it, and optimizers leave it alone)."""
        return self._dtype.is_float and id(self) not in FROZEN

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if value and not self._dtype.is_float:
            raise RuntimeError(f"only floating-point tensors can require gradients, this one is {self._dtype.name}")
        if value:
            FROZEN.pop(id(self), None)
        else:
            key = id(self)
            FROZEN[key] = weakref.ref(self, lambda _: FROZEN.pop(key, None))

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """torch's in-place switch (`p.requires_grad_(False)` freezes p); returns the tensor."""
        if not isinstance(requires_grad, bool):  # torch's TypeError (bool("no") switched it on)
            raise TypeError("requires_grad_(): argument 'requires_grad' must be bool, not "
                            f"{type(requires_grad).__name__}")
        self.requires_grad = requires_grad
        return self

    @property
    def is_cuda(self) -> bool:
        return self._device.type == "cuda"

    # -- new tensors like this one (dtype and device default to this tensor's)
    def new_zeros(self, *sizes: Any, size: Any = None, dtype: Any = None, device: Any = None,
                  requires_grad: bool = False) -> Tensor:
        return _ops.zeros(*sizes, size=size, dtype=dtype or self.dtype, device=device or self.device,
                          requires_grad=requires_grad)

    def new_ones(self, *sizes: Any, size: Any = None, dtype: Any = None, device: Any = None,
                 requires_grad: bool = False) -> Tensor:
        return _ops.ones(*sizes, size=size, dtype=dtype or self.dtype, device=device or self.device,
                         requires_grad=requires_grad)

    def new_empty(self, *sizes: Any, size: Any = None, dtype: Any = None, device: Any = None,
                  requires_grad: bool = False) -> Tensor:
        return _ops.empty(*sizes, size=size, dtype=dtype or self.dtype, device=device or self.device,
                          requires_grad=requires_grad)

    def new_full(self, size: Any, fill_value: Any, *, dtype: Any = None, device: Any = None,
                 requires_grad: bool = False) -> Tensor:
        return _ops.full(size, fill_value, dtype or self.dtype, device=device or self.device,
                         requires_grad=requires_grad)

    def new_tensor(self, data: Any, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
        return tensor(data, dtype=dtype or self.dtype, device=device or self.device, requires_grad=requires_grad)


def _to_torch(arr: np.ndarray, dtype: DType, dev: Device):
    import torch
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise RuntimeError(f"device '{dev}' is not available: {why}; use device='cpu' "
                           "(av.best_available_device() picks the GPU when there is one)")
    t = torch.from_numpy(np.require(arr, requirements="C"))  # keeps 0-d arrays 0-d
    if dtype is dt.bfloat16:
        t = t.to(torch.bfloat16)
    return t.to(dev.torch)


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
              "__matmul__", "__rmatmul__", "__pow__", "__rpow__", "__eq__", "__ne__"):
    _complex_aware(_name)


class Buffer(Tensor):
    """A tensor of a model's state that is not trained (batch norm's running statistics).
    `nn.named_parameters` skips it; `nn.state_dict` and the tracer include it."""

    __slots__ = ()


def _check_int_range(data: Any, d: DType) -> None:
    """torch's overflow check of Python numbers made into an integer tensor, where numpy wraps in
    silence (`av.tensor([2**63])` held -2**63, `av.tensor([300], dtype=av.uint8)` 44). As torch, uint8
    takes negative numbers (two's complement: -1 is 255)."""
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        return
    if arr.size == 0 or arr.dtype.kind not in "iuf":
        return
    info = np.iinfo(d.np)
    lo = info.min if info.min < 0 else np.iinfo(np.int64).min
    hi_v, lo_v = arr.max(), arr.min()
    if hi_v > info.max or lo_v < lo:
        from .trace import located, user_location
        if arr.dtype.kind == "u" and d is dt.int64:
            raise located(ValueError(f"Overflow when unpacking long long: {int(hi_v)} does not fit in int64"),
                          user_location())
        raise located(RuntimeError(f"value cannot be converted to type {d.name} without overflow (got "
                                   f"{hi_v if hi_v > info.max else lo_v})"), user_location())


def tensor(data: Any, dtype: Any = None, device: Any = None, *, requires_grad: bool = False,
           pin_memory: bool = False) -> Tensor:
    """`av.tensor(data, dtype=None, device=None)`: a new Tensor holding a copy of `data`
    (`requires_grad` is accepted as the creation functions accept it: av.grad chooses what it differentiates)."""
    if isinstance(data, Tensor) and data.is_traced:
        raise TracerError("av.tensor() of a traced tensor; use it directly")
    t = Tensor(as_array(data).copy() if not isinstance(data, (list, tuple, int, float, bool)) else data,
               dtype if dtype is not None else _default_dtype(data), device)
    if isinstance(data, (list, tuple, int, float)) and t.dtype.is_int and t.dtype is not dt.bool_:
        _check_int_range(data, t.dtype)
    if TRACING and t.ndim and _model_array(data):  # pytorch-fm's `x.new_tensor(self.offsets)`: literal data
        _mark_literal(t)
    if requires_grad and not t.dtype.is_float:  # torch's refusal (it was accepted and dropped)
        from .trace import located, user_location
        raise located(RuntimeError(f"tensor(requires_grad=True): Only Tensors of floating point and complex dtype can "
                                   f"require gradients, this one is {t.dtype.name}"), user_location())
    return t


PRINT_OPTIONS: dict[str, Any] = {"precision": 4, "threshold": 1000, "edgeitems": 3, "linewidth": 80,
                                 "suppress": False}
"""Tensor repr's numpy print options: torch's defaults, changed by `av.set_printoptions`."""

_TYPE_NAMES = {"f32": "FloatTensor", "f64": "DoubleTensor", "f16": "HalfTensor", "bf16": "BFloat16Tensor",
               "i32": "IntTensor", "i64": "LongTensor", "i1": "BoolTensor", "ui8": "ByteTensor", "i8": "CharTensor",
               "i16": "ShortTensor"}
"""torch's legacy tensor-type names, for `Tensor.type()`."""

_INPLACE_MORE = {
    "index_add_": _op("index_add"), "index_copy_": _op("index_copy"), "index_fill_": _op("index_fill"),
    "index_reduce_": _op("index_reduce"),
    "index_put_": _op("index_put"), "scatter_reduce_": _op("scatter_reduce"),
    "scatter_": _op("scatter"), "scatter_add_": _op("scatter_add"), "lerp_": _op("lerp"),
    "addcmul_": _op("addcmul"), "addcdiv_": _op("addcdiv"), "remainder_": _op("remainder"), "fmod_": _op("fmod"),
    "floor_divide_": _op("floor_divide"), "log1p_": _op("log1p"), "expm1_": _op("expm1"), "trunc_": _op("trunc"),
    "fill_diagonal_": _op("fill_diagonal"), "random_": _op("random_fill"), "geometric_": _op("geometric_fill"),
    "log_normal_": _op("log_normal_fill"), "cauchy_": _op("cauchy_fill"), "put_": _op("put"),
    "masked_scatter_": _op("masked_scatter"), "clamp_min_": _op("clamp_min"), "clamp_max_": _op("clamp_max"),
    "ceil_": _op("ceil"), "round_": _op("round"), "frac_": _op("frac"), "tan_": _op("tan"), "sin_": _op("sin"),
    "cos_": _op("cos"), "atan_": _op("atan"), "asin_": _op("asin"), "acos_": _op("acos"), "sinh_": _op("sinh"),
    "cosh_": _op("cosh"), "atan2_": _op("atan2"), "log2_": _op("log2"), "log10_": _op("log10"),
    "lgamma_": _op("lgamma"), "digamma_": _op("digamma"), "erfinv_": _op("erfinv"), "logit_": _op("logit"),
    "xlogy_": _op("xlogy"), "hypot_": _op("hypot"), "nan_to_num_": _op("nan_to_num"), "renorm_": _op("renorm"),
    "deg2rad_": _op("deg2rad"), "rad2deg_": _op("rad2deg"), "sign_": _op("sign"), "negative_": _op("negative"),
    "bitwise_and_": _op("bitwise_and"), "bitwise_or_": _op("bitwise_or"), "bitwise_xor_": _op("bitwise_xor"),
    "bitwise_not_": _op("bitwise_not"), "bitwise_left_shift_": _op("bitwise_left_shift"),
    "bitwise_right_shift_": _op("bitwise_right_shift"), "logical_and_": _op("logical_and"),
    "logical_or_": _op("logical_or"),
    "logical_xor_": _op("logical_xor"), "logical_not_": _op("logical_not"), "heaviside_": _op("heaviside"),
    "float_power_": _op("float_power"), "square_": _op("square"), "reciprocal_": _op("reciprocal"),
    "rsqrt_": _op("rsqrt"), "erf_": _op("erf"),
    "asinh_": _op("asinh"), "arcsinh_": _op("asinh"), "acosh_": _op("acosh"), "arccosh_": _op("acosh"),
    "atanh_": _op("atanh"), "arctanh_": _op("atanh"), "erfc_": _op("erfc"), "exp2_": _op("exp2"),
    "sinc_": _op("sinc"), "i0_": _op("i0"), "mvlgamma_": _op("mvlgamma"), "ldexp_": _op("ldexp"),
    "copysign_": _op("copysign"), "nextafter_": _op("nextafter"), "gcd_": _op("gcd"), "lcm_": _op("lcm"),
    "greater_": _op("greater"), "greater_equal_": _op("greater_equal"), "less_": _op("less"),
    "less_equal_": _op("less_equal"), "not_equal_": _op("not_equal"), "multiply_": _op("multiply"),
    "subtract_": _op("subtract"), "addmv_": _op("addmv"), "addr_": _op("addr"), "addbmm_": _op("addbmm"),
    "baddbmm_": _op("baddbmm"), "tril_": _op("tril"), "triu_": _op("triu"),
    "absolute_": _op("abs"), "arccos_": _op("acos"), "arcsin_": _op("asin"), "arctan_": _op("atan"),
    "arctan2_": _op("atan2"), "fix_": _op("trunc"), "divide_": _op("div"), "true_divide_": _op("div"),
    "sgn_": _op("sgn"), "cumsum_": _op("cumsum"), "cumprod_": _op("cumprod"), "eq_": _op("eq"), "ne_": _op("ne"),
    "lt_": _op("lt"), "le_": _op("le"), "gt_": _op("gt"), "ge_": _op("ge"), "addmm_": _op("addmm"),
}
"""More in-place methods (torch code fills one-hot targets with `scatter_`), by the same rule as _INPLACE."""

for _name, _fn in {**_INPLACE, **_INPLACE_MORE}.items():
    setattr(Tensor, _name, _inplace(_fn, _name))
del _name, _fn

# -- torch's legacy constructors: `av.Tensor(...)`, `av.FloatTensor(...)`, ... ---------------------------
# `av.Tensor` (the name ported torch code calls and checks against) is not this module's `Tensor` but a
# subclass standing for it: `isinstance(x, av.Tensor)` is `isinstance(x, Tensor)`, and calling it is
# torch's legacy constructor. Avalon's own modules (and `avalon.tensor.Tensor`) keep the constructor
# `Tensor(data, dtype=None, device=None)`, which keeps an array's dtype: the tracer turns numpy
# arguments into tensors with it, so it cannot take torch's "every array becomes float32" rule.

class _LegacyConstructor(type):
    """Metaclass of `av.Tensor` and the typed names: torch's `torch.Tensor(*args)` when called, the
    isinstance/issubclass checks of the tensors they stand for."""

    _legacy_dtype: DType | None

    def __call__(cls, *args: Any, device: Any = None, **kwargs: Any) -> Tensor:
        return _legacy_new(cls.__name__, cls._legacy_dtype or default_float_dtype(), args, device, kwargs)

    def __instancecheck__(cls, obj: Any) -> bool:
        d = cls._legacy_dtype
        return isinstance(obj, Tensor) and (d is None or (obj.dtype is d and not obj.is_cuda))

    def __subclasscheck__(cls, sub: Any) -> bool:
        return issubclass(sub, Tensor) if cls._legacy_dtype is None else type.__subclasscheck__(cls, sub)

    # `type(x) == torch.Tensor` holds for a plain torch tensor (hopfield-layers' `assert type(input) == Tensor`):
    # `av.Tensor` equals the class it stands for (hashing alike); `type(x) is av.Tensor` stays an identity test
    def __eq__(cls, other: Any) -> bool:
        return True if cls._legacy_dtype is None and other is Tensor else type.__eq__(cls, other)

    def __hash__(cls) -> int:
        return hash(Tensor) if cls._legacy_dtype is None else type.__hash__(cls)


def _legacy_new(who: str, d: DType, args: tuple, device: Any, kwargs: dict) -> Tensor:
    """torch's legacy `torch.Tensor(...)` rules: `()` an empty (0,) tensor; ints a tensor of that
    shape (torch leaves its memory uninitialized, Avalon fills it with zeros); one sequence, array or
    torch tensor a copy converted to the constructor's dtype (`av.Tensor`: the default float dtype,
    `av.get_default_dtype()`); one Avalon tensor of that dtype itself (torch returns an alias)."""
    if kwargs:
        hint = " (torch's legacy constructors take no dtype: use av.tensor(data, dtype=...) or av.empty(size, " \
               "dtype=...))" if "dtype" in kwargs else ""
        raise TypeError(f"{who}() got unexpected keyword argument(s) {', '.join(map(repr, kwargs))}{hint}")
    if not args:
        return Tensor(np.zeros((0,), dtype=d.np), d, device)
    if all(isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_)) for a in args):
        if any(a < 0 for a in args):
            raise ValueError(f"{who}(): negative dimension in size {tuple(int(a) for a in args)}")
        return Tensor(np.zeros(tuple(int(a) for a in args), dtype=d.np), d, device)
    if len(args) != 1:
        raise TypeError(f"{who}(): expected sizes (ints) or one sequence of numbers, got "
                        f"({', '.join(type(a).__name__ for a in args)})")
    data = args[0]
    if isinstance(data, Tensor):
        if data.dtype is not d:
            raise TypeError(f"{who}(): expected a {d.name} tensor, got {data.dtype.name} (torch refuses it "
                            f"too); convert it with .to({d.name}) or av.tensor(x, dtype=...)")
        return data if device is None else data.to(device)
    if isinstance(data, (float, complex, bool, np.generic)) or data is None:
        raise TypeError(f"{who}(): data must be a sequence, got {type(data).__name__} (as torch says); "
                        f"av.tensor({data!r}) makes a 0-d tensor")
    t = Tensor(np.array(as_array(data), dtype=d.np), d, device)
    if TRACING and (_python_numbers(data) or _model_array(data)):  # nerf-pytorch's `torch.Tensor([1e10])`
        _mark_literal(t)
    return t


def _legacy_type(name: str, d: DType | None) -> type:
    doc = (f"torch.{name}: `{name}(*sizes)` (zeros), `{name}(data)` (a {d.name if d else 'default-dtype'} copy); "
           f"`isinstance(x, {name})` holds for {'every Avalon tensor' if d is None else f'CPU {d.name} tensors'}.")
    cls = _LegacyConstructor(name, (Tensor,), {"__slots__": (), "__doc__": doc, "_legacy_dtype": d,
                                               "__module__": __name__ if d is None else "avalon"})
    return cls


TorchTensor = _legacy_type("Tensor", None)
"""`av.Tensor`: see `_legacy_new`. Named and placed (`avalon.tensor.Tensor`) as the class it stands for,
so `inspect.getsource(av.Tensor)` and pickled references find the real class."""

LEGACY_TYPES: dict[str, type] = {name: _legacy_type(name, dt.dtype(code)) for code, name in _TYPE_NAMES.items()}
"""`av.FloatTensor`, `av.DoubleTensor`, `av.HalfTensor`, `av.BFloat16Tensor`, `av.IntTensor`,
`av.LongTensor`, `av.BoolTensor`, `av.ByteTensor`, `av.CharTensor`, `av.ShortTensor` (torch's typed constructors)."""


class Size(tuple):
    """`av.Size`: torch.Size, a tuple of ints (FiLM's `x.expand(torch.Size((n, *coords.size())))`). Avalon's
    `.shape` / `.size()` are plain tuples, which compare equal to it and go wherever a Size does."""

    def __new__(cls, sizes: Any = ()) -> Size:
        sizes = tuple(sizes)
        for s in sizes:
            if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
                raise TypeError(f"torch.Size() takes an iterable of 'int' (item {len(sizes) and sizes.index(s)} "
                                f"is '{type(s).__name__}')")
        return super().__new__(cls, (int(s) for s in sizes))

    def numel(self) -> int:
        """The number of elements a tensor of this shape holds."""
        return int(np.prod(self, dtype=np.int64))

    def __getitem__(self, key: Any) -> Any:
        out = super().__getitem__(key)
        return Size(out) if isinstance(key, slice) else out

    def __add__(self, other: Any) -> Size:
        if not isinstance(other, tuple):
            return NotImplemented
        return Size(tuple(self) + tuple(other))

    def __repr__(self) -> str:
        return f"torch.Size({list(self)})"


# Last, because avalon.ops imports this module: Tensor's methods look the functions up when called.
from . import ops as _ops  # noqa: E402
from . import views as _views  # noqa: E402
