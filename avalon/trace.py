"""Tracing: running plain Python code on traced Tensors to record one typed SSA graph.

`av.trace(fn, *args)` makes the graph of one call. Inputs are the tensor leaves of the arguments
in order; a model contributes its parameters (then its buffers) in `named_parameters` order, and
when `fn` is itself a model (or a bound method of one) its tensors come first. Tensors that are
not inputs but are used (a closure's array) become `constant` ops.

This module only records: `trace_call` makes a `Traced` (graph, the objects feeding its inputs,
how to rebuild its outputs, which state tensors its extra outputs update), `signature` is the
cache key of a call, `inline` copies a graph into the active trace and `assign` updates state.
Running a graph and writing its results back is the compile driver's job (`avalon.compiler.execute`).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import types
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import grad_mode, tree, views
from .device import CPU, Device
from .ir import Builder, Graph, LiteralArray, Location, ShapeError, TensorType, Value
from .ir import dtypes as dt
from .ir.builder import make_op
from .ir.clone import clone_block, inline_regions
from .tensor import FROZEN, LITERALS, READS, TRACING, Tensor, TracerError, _replace, _to_torch, as_array  # noqa: F401 (TracerError: re-exported)

_STACK: list[Trace] = TRACING  # one list: Tensor._concrete asks it whether a trace is being recorded
_PKG = os.path.dirname(os.path.abspath(__file__))
_USER_SUBDIRS = tuple(os.path.join(_PKG, d) + os.sep for d in ("zoo",))
_USER_FILES = (os.path.join(_PKG, "demo.py"),)  # the demo's model is an example, not Avalon's machinery


def current_trace() -> Trace | None:
    return _STACK[-1] if _STACK else None


@contextlib.contextmanager
def reads_collected() -> Iterator[list[Tensor]]:
    """The eager tensors whose values Python reads while the body traces (`Tensor.item()`, a mask or
    index a model holds), for the compile to guard its cache entry on (`avalon.tensor.READS`)."""
    reads: list[Tensor] = []
    READS.append(reads)
    try:
        yield reads
    finally:
        READS.pop()


_SOURCE: list[Location | None] = []  # an importer's source line for the ops it makes (innermost last)


@contextlib.contextmanager
def source_location(loc: Location | None) -> Iterator[None]:
    """Ops made (and errors located) inside carry `loc` rather than the caller's frame: an importer
    running an imported model's node says which line of the *source* model made it (a torch.fx
    node's stack trace), so an MLIR `loc`, a lowering error or a shape error points there. None: the
    frame walk, as outside."""
    _SOURCE.append(loc)
    try:
        yield
    finally:
        _SOURCE.pop()


def user_location() -> Location | None:
    """The innermost frame outside Avalon's own code: the user's line that made this op (inside
    `source_location(loc)`: that loc)."""
    if _SOURCE and _SOURCE[-1] is not None:
        return _SOURCE[-1]
    f = sys._getframe(1)
    while f is not None:
        fn = f.f_code.co_filename
        if _is_user_file(fn):
            return Location(_short(fn), f.f_lineno)
        f = f.f_back
    return None


NUMBER_WRITES: list[tuple[str, str]] = []
"""(attribute name, `file:line` of the user's line) for each rebinding of a model attribute holding a
Python number while a trace ran (`self.step += 1` in a traced forward). The number is part of the
compiled signature, so such a counter makes every call a new signature; `av.compile` reads (and
drops) the entries its trace added, for its retrace warning to name the line (`avalon.compiler.core`)."""


def note_number_write(name: str) -> None:
    """A traced call rebinds the number attribute `name` of a model (see `NUMBER_WRITES`)."""
    loc = user_location()
    if loc is not None:
        if len(NUMBER_WRITES) > 1024:  # traces outside av.compile (av.grad) leave theirs: never unbounded
            del NUMBER_WRITES[:512]
        NUMBER_WRITES.append((name, str(loc)))


@functools.lru_cache(maxsize=4096)
def _is_user_file(fn: str) -> bool:
    """Not Avalon's own code (zoo models and the demo's count as user code, so a shape error in them
    names their line, not the `avalon` launcher that called them); paths normalized, so an Avalon
    imported through `benchmarks/../avalon` is still recognized."""
    if fn.startswith("<frozen"):
        return False
    norm = os.path.normpath(os.path.abspath(fn)) if not fn.startswith("<") else fn
    return not norm.startswith(_PKG + os.sep) or norm.startswith(_USER_SUBDIRS) or norm in _USER_FILES


def _short(path: str) -> str:
    try:
        rel = os.path.relpath(path)
        return rel if not rel.startswith("..") else path
    except ValueError:
        return path


class Trace:
    """One graph under construction."""

    def __init__(self, name: str = "forward", device: Device = CPU):
        self.graph = Graph(name)
        self.builder = Builder(self.graph)
        self.device = device
        self.leaves: dict[int, Value] = {}
        self._keep: list[Any] = []  # keep leaf objects alive so their ids stay unique
        self.updates: list[tuple[Tensor, Value]] = []
        self.stands_for: dict[int, Tensor] = {}  # traced argument -> the caller's Tensor
        self.updated: set[int] = set()  # ids of the targets in `updates`
        self.seed_input: Value | None = None
        self._seeds = 0
        self.captured: dict[int, Any] = {}  # input Value id -> what an enclosing trace feeds it (see `_lift`)
        self.custom = False  # a `custom_vjp` op was recorded (avalon/autograd.py)
        self.differentiated = False  # traced to be differentiated next (av.grad, jvp): see tensor._keeps_gradient
        self.state_inputs: dict[int, Tensor] = {}  # input Value id -> the eager tensor a model holds (state_value)
        self.made: set[int] = set()  # ids of the eager tensors made while this trace is recorded (tensor.py)

    def seed(self) -> Tensor:
        """A distinct traced seed per random op, derived from the graph's `rng_seed` input."""
        from .ir import dtypes
        if self.seed_input is None:
            self.seed_input = self.graph.add_input(TensorType((), dtypes.int64), "rng_seed")
        self._seeds += 1
        k = self.builder("constant", value=self._seeds * 0x9E3779B1, shape=[], dtype=dtypes.int64)
        return Tensor._traced(self.builder("add", self.seed_input, k), self)

    def add_input(self, obj: Any, name: str | None) -> Tensor:
        t = obj if isinstance(obj, Tensor) else Tensor(obj)
        v = self.graph.add_input(TensorType(t.shape, t.dtype), name)
        self.leaves[id(obj)] = v
        self.leaves[id(t)] = v
        self._keep += [obj, t]
        traced = Tensor._traced(v, self)
        if obj is t:  # an argument Tensor: an in-place update of `traced` is written back into it
            self.stands_for[id(traced)] = t
            self._keep.append(traced)
        return traced

    def value_of(self, x: Any) -> Value:
        v = self.leaves.get(id(x))
        if v is not None:
            return v
        if isinstance(x, Tensor) and x._trace is self:
            return x._value
        outer = self._enclosing(x)
        if outer is not None:
            return self._lift(x, outer)
        if isinstance(x, Tensor) and x._trace is not None and constant_value(x._trace, x) is None:
            # a value of a trace that has ended (none on the stack made it), kept by something outside it: a
            # constant of that graph (cached labels) reads as one below; anything else says what happened
            from .tensor import escaped_message
            loc = x._value.op.loc if x._value is not None and x._value.op is not None else None
            raise TracerError(escaped_message(x, "using it in another traced function",
                                              f" (value made at {loc})" if loc else ""))
        arr = as_array(x)
        dtype = x.dtype if isinstance(x, Tensor) else None
        from .ir import dtypes
        d = dtype or dtypes.dtype(arr.dtype)
        value = arr.item() if arr.ndim == 0 else np.array(arr)
        if isinstance(x, Tensor) and (id(x) in LITERALS or x._trace is not None) and isinstance(value, np.ndarray):
            value = value.view(LiteralArray)  # a literal's, or a constant of an ended trace: no captured data
        v = self.builder("constant", value=value, shape=list(arr.shape), dtype=d, loc=user_location())
        if isinstance(x, Tensor):
            self.leaves[id(x)] = v
            self._keep.append(x)
        return v

    def _enclosing(self, x: Any) -> Value | None:
        """`x`'s value in an enclosing trace, if it has one: an input that trace takes (a parameter of
        a model a nested `av.grad` closes over, `av.grad(lambda z: D(z).sum())(x)`) or a tensor it
        computed."""
        for tr in reversed(_STACK):
            if tr is not self:
                if id(x) in tr.leaves:
                    return tr.leaves[id(x)]
                if isinstance(x, Tensor) and x._trace is tr:
                    return x._value
        return None

    def _lift(self, x: Any, outer: Value) -> Value:
        """An enclosing trace's value used here becomes an input of this graph, fed by that trace when
        this graph is inlined there, so its derivatives flow through (torch's `create_graph=True`)
        instead of a constant copy baking in its value and cutting them off."""
        v = self.graph.add_input(outer.type, "captured")
        self.leaves[id(x)] = v
        self._keep.append(x)
        self.captured[id(v)] = x
        return v

    def emit(self, opname: str, operands: list[Any], attrs: dict[str, Any]) -> list[Tensor]:
        loc = user_location()
        values = [self.value_of(o) for o in operands]
        try:
            op = make_op(opname, values, attrs, loc)
        except (ShapeError, TypeError) as e:
            raise located(e, loc) from None
        self.builder.insert(op)
        results = op.results
        if not grad_mode.enabled() and opname != "stop_gradient":  # under av.no_grad()
            results = [self.builder.insert(make_op("stop_gradient", [r], {}, loc)).results[0]
                       if r.type.dtype.is_float else r for r in results]
        return [Tensor._traced(r, self) for r in results]

    def record_update(self, target: Tensor, new: Tensor) -> None:
        """Write `new` into the state tensor `target` after the graph runs (batch norm statistics,
        optimizer steps). Later reads of `target` in this trace see `new`, as they would eagerly
        (a model evaluated after `opt.step`, batch norm called twice), and only the last update
        of a target is written back."""
        v = self.value_of(new)
        if id(target) in self.updated:
            self.updates = [(tg, u) for tg, u in self.updates if tg is not target]
        self.updates.append((target, v))
        self.updated.add(id(target))
        self.leaves[id(target)] = v
        self._keep.append(target)
        views.refresh(target)  # views of the target taken in this trace read the new value


def located(e: Exception, loc: Location | None) -> Exception:
    """The same error with the user's file and line in front."""
    where = f"{loc}: " if loc else ""
    new = type(e)(f"{where}{e}")
    new.location = loc  # type: ignore[attr-defined]
    return new


@dataclass
class Traced:
    """A traced call: the graph, the objects feeding its inputs, and how to rebuild its outputs."""

    graph: Graph
    leaves: list[Any]
    out_tree: Any
    n_outputs: int
    update_targets: list[Tensor] = field(default_factory=list)


def _arg_names(fn: Any, args: tuple) -> list[str]:
    """The parameter name of each positional argument (`x`), or `arg{i}` where there is none."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [positional[i] if i < len(positional) else f"arg{i}" for i in range(len(args))]


def owner_model(fn: Any) -> Any | None:
    """The model whose tensors come first: `fn` itself, or the object of a bound method."""
    if tree.is_model(fn) and callable(fn):
        return fn
    self = getattr(fn, "__self__", None)
    if self is not None and tree.is_model(self):
        return self
    return None


def signature(fn: Any, args: tuple, cache: tree.StateCache | None = None) -> tuple[Any, list[tuple[str, Any]]]:
    """A hashable key for caching traces of `fn` on `args`, and the leaves it found. A `cache`
    (one per compiled function) spares re-walking models that did not change since its last call."""
    leaves: list[tuple[str, Any]] = []
    seen: set[int] = set()
    owner = owner_model(fn)
    head = tree._flatten(owner, "", leaves, seen, cache) if owner is not None else None
    names = _memo_arg_names(fn, len(args)) or _arg_names(fn, args)
    trees = tuple(tree._flatten(a, n, leaves, seen, cache) for a, n in zip(args, names))
    specs = tuple(_spec(x) for _, x in leaves)
    return (head, trees, specs, _free_scalars(fn)), leaves


_SCALARS = (bool, int, float, complex, str)
_FREE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _free_scalars(fn: Any) -> tuple:
    """The Python numbers `fn` reads from its closure and module globals (`lambda x: x * scale`),
    and the settings of the layers it closes over (a Dropout's train/eval mode): a trace bakes them
    in, so they belong in its cache key (as torch.compile guards on them); changing one retraces
    instead of silently reusing the old value. `fn`'s own code only: what the functions it calls
    read is not seen."""
    func = getattr(fn, "__func__", fn)
    if not isinstance(func, types.FunctionType):
        return ()
    names = _FREE.get(func)
    g = func.__globals__
    if names is None:
        names = _FREE[func] = tuple(n for n in func.__code__.co_names if _keyed(g.get(n)))
    free = [_cell(c) for c in func.__closure__ or ()] + [g.get(n) for n in names]
    return tuple(_key_of(v) for v in free if _keyed(v))


def _cell(c: Any) -> Any:
    try:
        return c.cell_contents
    except ValueError:  # an empty cell (a name assigned later in the enclosing function)
        return None


def _module_like(v: Any) -> bool:
    """A layer (anything with a bool `training` flag that is called): its mode and settings shape
    the trace (a closed-over Dropout after `.eval()`)."""
    return callable(v) and isinstance(getattr(v, "training", None), bool) and tree.is_model(v)


def _keyed(v: Any) -> bool:
    return isinstance(v, _SCALARS) or _module_like(v)


def _key_of(v: Any) -> Any:
    return v if isinstance(v, _SCALARS) else (id(v), tree.model_state(v)[1])


def _spec(x: Any) -> tuple:
    """Shape, dtype and device of a leaf, read afresh every call (`av.to_device` moves tensors in place)."""
    if id(x) in FROZEN:  # requires_grad = False changes what av.grad computes
        return (tuple(x.shape), _dtype_name(x), str(getattr(x, "device", "cpu")), "frozen")
    if isinstance(x, Tensor) and x._device is CPU and x._value is None:  # the common case, without lookups
        return (x._data.shape, x._dtype.name, "cpu")
    return (tuple(x.shape), _dtype_name(x), str(getattr(x, "device", "cpu")))


def _dtype_name(x: Any) -> str:
    """One spelling for numpy, torch and Avalon dtypes, so the same data hits the same cache entry."""
    return x.dtype.name if isinstance(x, Tensor) else dt.dtype(x.dtype).name


_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _memo_arg_names(fn: Any, n: int) -> list[str] | None:
    """`_arg_names` for plain functions and bound methods, remembered per function (reading a
    signature with `inspect` costs more than the rest of a cached call's key)."""
    bound = isinstance(fn, types.MethodType)
    func = fn.__func__ if bound else fn
    if not isinstance(func, types.FunctionType):
        return None
    per_fn = _NAMES.setdefault(func, {})
    names = per_fn.get((bound, n))
    if names is None:
        names = per_fn[(bound, n)] = _arg_names(fn, (None,) * n)
    return names


def trace_call(fn: Any, args: tuple, name: str | None = None, keep_custom: bool = False) -> Traced:
    """Trace `fn(*args)` into a graph (the machinery under `av.trace`, `av.grad` and `av.compile`).
    User-defined gradients (`custom_vjp` ops, avalon/autograd.py) are inlined to their forward
    unless `keep_custom` (av.grad, which differentiates them next)."""
    # a model's graph is its forward function; a function's graph takes the function's name
    gname = name or (None if owner_model(fn) is fn else getattr(fn, "__name__", None)) or "forward"
    if not gname.isidentifier():
        gname = "forward"
    devices = {getattr(x, "device", CPU) for a in args for _, x in tree.flatten(a, "")[0] if isinstance(x, Tensor)}
    t = Trace(gname if gname != "__call__" else "forward", next(iter(devices)) if len(devices) == 1 else CPU)
    t.differentiated = keep_custom
    (head, trees, *_), leaves = signature(fn, args)
    traced_leaves = [t.add_input(obj, n) for n, obj in leaves]
    # rebuild the arguments with traced tensors in place of their leaves
    owner_n = len(head[2]) if head is not None else 0
    held = [True] * owner_n + [b for tr in trees for b in _held_by_models(tr)]
    for (_, obj), traced, h in zip(leaves, traced_leaves, held):
        if h and isinstance(obj, Tensor):  # a model's tensor: the call reads it eagerly, as the model holds it
            t.state_inputs[id(traced._value)] = obj
    it = iter(traced_leaves[owner_n:])
    new_args = []
    for a, tr in zip(args, trees):
        n = _count_leaves(tr)
        new_args.append(tree.unflatten(tr, [next(it) for _ in range(n)], a))
    roots = _roots(owner_model(fn), args)
    saved = _snapshot(roots)
    slots = _state_slots(roots)
    inputs_of = {id(obj): traced._value for (_, obj), traced in zip(leaves, traced_leaves)}
    _STACK.append(t)
    try:
        try:
            out = fn(*new_args)
        finally:
            _STACK.pop()
        _settle_state(t, slots, roots, saved, inputs_of)
    except BaseException:
        _restore(saved)  # a failed trace leaves the model as it was: no tracer, no attribute lost or added
        raise
    out_leaves: list[tuple[str, Any]] = []
    out_tree = tree._flatten(out, "out", out_leaves)
    outs = []
    for _, o in out_leaves:
        outs.append(t.value_of(o))
    if not out_leaves and out is not None and not isinstance(out, (tuple, list, dict)):
        raise TypeError(f"traced function returned {type(out).__name__}, not tensors")
    t.graph.set_outputs(outs + [v for _, v in t.updates])
    if t.custom and not keep_custom:
        inline_regions(t.graph.body, "custom_vjp")
    objs = [obj for _, obj in leaves] + [t.captured.get(id(v), SEED) for v in t.graph.inputs[len(leaves):]]
    return Traced(t.graph, objs, out_tree, len(outs), [tg for tg, _ in t.updates])


def _boxes(roots: list[Any]) -> Iterator[tuple[Any, str, Any]]:
    """Every container of the models `roots` (a model's attribute dict, a list, a dict), each once,
    with its dotted name and the object it is."""
    seen: set[int] = set()
    stack = [(r, "") for r in roots]
    while stack:
        obj, prefix = stack.pop()
        walked = tree.is_model(obj) or isinstance(obj, (list, dict))
        if id(obj) in seen or isinstance(obj, (Tensor, tuple)) or not walked:
            continue
        seen.add(id(obj))
        box = obj if isinstance(obj, (list, dict)) else obj.__dict__
        yield box, prefix, obj
        items = enumerate(obj) if isinstance(obj, list) else (obj.items() if isinstance(obj, dict) else
                                                               ((k, v) for k, v in vars(obj).items()
                                                                if not k.startswith("__")))
        for k, v in list(items):
            if not isinstance(v, Tensor):
                stack.append((v, f"{prefix}.{k}" if prefix else str(k)))


def _containers(roots: list[Any]) -> Iterator[tuple[Any, Any, str]]:
    """Every (container, key, dotted name) slot of the models `roots` that holds a tensor."""
    for box, prefix, obj in _boxes(roots):
        items = enumerate(obj) if isinstance(obj, list) else (obj.items() if isinstance(obj, dict) else
                                                               ((k, v) for k, v in vars(obj).items()
                                                                if not k.startswith("__")))
        for k, v in list(items):
            if isinstance(v, Tensor):
                yield box, k, f"{prefix}.{k}" if prefix else str(k)


def _state_slots(roots: list[Any]) -> list[tuple[Any, Any, str, Tensor]]:
    return [(box, k, name, box[k]) for box, k, name in _containers(roots)]


def _snapshot(roots: list[Any]) -> list[tuple[Any, Any]]:
    """A shallow copy of every container of the models (sets inside them copied too: a module's
    buffer-name sets), for `_restore` after a failed trace."""
    out, seen = [], set()
    for box, _, _ in _boxes(roots):
        if id(box) in seen:  # a compiled module shows its original's attribute dict
            continue
        seen.add(id(box))
        if isinstance(box, list):
            out.append((box, list(box)))
        else:
            out.append((box, {k: set(v) if isinstance(v, set) else v for k, v in box.items()}))
    return out


def _restore(saved: list[tuple[Any, Any]]) -> None:
    for box, copy in saved:
        if isinstance(box, list):
            box[:] = copy
            continue
        for k in [k for k in box if k not in copy]:
            del box[k]
        for k, v in copy.items():
            if isinstance(v, set) and isinstance(box.get(k), set):
                box[k].clear()
                box[k].update(v)  # the same set object, its old members
            elif box.get(k, _MISSING) is not v:
                box[k] = v


_MISSING = object()


def _roots(owner: Any, args: tuple) -> list[Any]:
    """The models a traced call reaches, whose attributes it may rebind: `fn`'s own, then those among
    its arguments (in lists, tuples and dicts too), each once."""
    out: list[Any] = []
    seen: set[int] = set()

    def add(x: Any) -> None:
        if isinstance(x, (list, tuple)):
            for v in x:
                add(v)
        elif isinstance(x, dict):
            for v in x.values():
                add(v)
        elif x is not None and tree.is_model(x) and not _is_pair(x) and id(x) not in seen:
            seen.add(id(x))
            out.append(x)
    add(owner)
    add(list(args))
    return out


def _items(box: Any) -> list[tuple[Any, Any]]:
    if isinstance(box, list):
        return list(enumerate(box))
    return [(k, v) for k, v in box.items() if not (isinstance(k, str) and k.startswith("__"))]


def _settle_state(t: Trace, slots: list[tuple[Any, Any, str, Tensor]], roots: list[Any],
                  saved: list[tuple[Any, Any]] | None = None, inputs_of: dict[int, Value] | None = None) -> None:
    """After the traced call, what it left in the models' attributes (avalon/trace_state.py).

    A model tensor rebound to a traced tensor of its shape and dtype (`self.count = self.count + 1`)
    becomes a state update of the tensor it held, which goes back in place (a parameter or buffer keeps
    its identity). A traced tensor that depends on none of the call's inputs (a causal mask built from
    a length and cached on the model) is computed now and kept as the attribute's concrete value, as
    Python keeps an attribute. Anything else that depends on the call, a tensor or a tuple, list or
    dict of them, stored in a new attribute, one of another shape, one that held such state before, or
    one that held something else (pytorch-ntm's `self.previous_state = (reads, (h, c), heads)`), is
    an `AttrWrite`: its tensors become extra graph outputs, written into the attribute after every run;
    until then the attribute holds what it held before the call (no tracer escapes into the model)."""
    from .trace_state import _MISSING as MISSING
    from .trace_state import AttrWrite, is_plain_state, template, unset
    prior: dict[tuple[int, Any], Any] = {}
    for box, copy in saved or ():
        for k, v in _items(copy):
            prior[(id(box), k)] = v
    inputs_of = inputs_of or {}
    rebound: set[int] = set()
    for box, k, _, orig in slots:
        now = _get(box, k)
        if now is orig or not isinstance(now, Tensor) or now._trace is not t:
            continue
        if now.shape == orig.shape and now.dtype is orig.dtype and not is_plain_state(orig):
            box[k] = orig
            t.record_update(orig, now)
            rebound.add(id(orig))

    def hole(x: Tensor) -> Value | None:
        """The value a tensor left in a rebound attribute is written back from, or None to keep it."""
        if x._trace is t:
            return x._value
        if x._trace is None and id(x) in inputs_of and (id(x) in rebound or is_plain_state(x)):
            return inputs_of[id(x)]  # state whose object is replaced: the value it had when the call began
        return None

    writes: list[tuple[Any, Any, Any, str, Any]] = []
    for box, prefix, owner in list(_boxes(roots)):
        if _is_pair(owner):
            continue  # a complex pair: written back whole, as its holder's value
        for k, v in _items(box):
            before = prior.get((id(box), k), MISSING)
            if v is before or not isinstance(v, (Tensor, tuple)) and not _is_pair(v):
                continue  # unchanged; a list, dict or object is walked as a box of its own
            name = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Tensor) and v._trace is t:
                const = _constant(t, v)
                if const is not None:  # a cache computed from shapes or constants: a plain attribute
                    box[k] = const
                    continue
            tmpl, holes = template(v, hole, name)
            if holes:
                writes.append((box, k, owner, name, (tmpl, holes, before)))
    for box, k, owner, name, (tmpl, holes, before) in writes:
        w = AttrWrite(box, k, owner, name, tmpl, len(holes))
        for slot, src in zip(w.slots(), holes):
            t.updates.append((slot, src))
        unset(box, k, before)


def _is_pair(x: Any) -> bool:
    return getattr(type(x), "_complex_pair", False)


def _get(box: Any, k: Any) -> Any:
    try:
        return box[k]
    except (KeyError, IndexError):
        return _MISSING


def _cone(t: Trace, x: Tensor, leaf: Any) -> tuple[list[Any], dict[int, Any]] | None:
    """The ops `x` is computed by, in graph order, and what `leaf(v)` gives for each graph input `v` they
    read; None when one gives None (an argument, the random seed) or an op ran otherwise (a region)."""
    cone, held, stack, seen = [], {}, [x._value], set()
    while stack:
        v = stack.pop()
        op = v.op
        if op is None:
            e = leaf(v)
            if e is None:
                return None
            held[id(v)] = e
            continue
        if op.regions or len(op.results) != 1:
            return None
        if id(op) in seen:
            continue
        seen.add(id(op))
        cone.append(op)
        stack.extend(op.operands)
    order = {id(op): i for i, op in enumerate(t.graph.ops)}
    if any(id(op) not in order for op in cone):
        return None
    return sorted(cone, key=lambda o: order[id(o)]), held


def _evaluate_cone(cone: list[Any], env: dict[int, np.ndarray], x: Tensor) -> np.ndarray:
    from .ir.reference import evaluate
    for op in cone:
        env[id(op.results[0])] = evaluate(op.name, op.attrs, [env[id(a)] for a in op.operands], op.results[0].type)
    return np.ascontiguousarray(env[id(x._value)]).reshape(x.shape).copy()


def _constant(t: Trace, x: Tensor) -> Tensor | None:
    """`x`'s value now, as a concrete tensor of x's class (a Buffer stays one), when it depends on
    none of the graph's inputs (nor its random seed); else None. Computed with the reference rules."""
    found = _cone(t, x, lambda v: None)
    if found is None:
        return None
    arr = _evaluate_cone(found[0], {}, x)
    return type(x)._wrap(arr if x.device == CPU else _to_torch(arr, x.dtype, x.device), x.dtype, x.device)


def constant_value(t: Trace, x: Tensor) -> np.ndarray | None:
    """`_constant`'s array for a traced tensor that depends on none of the graph's inputs (read-only,
    computed once per value of the trace), or None."""
    cache = t.__dict__.setdefault("_constant_values", {})
    key = id(x._value)
    if key not in cache:
        const = _constant(t, x)
        arr = None if const is None else np.array(const._data if const.device == CPU else const._data.cpu().numpy())
        if arr is not None:
            arr.flags.writeable = False
        cache[key] = (x._value, arr)  # the Value kept alive, so its id is not reused
    return cache[key][1]


class _Seed:
    """Stands in Traced.leaves for the `rng_seed` input: each run feeds a fresh seed."""

    def __repr__(self) -> str:
        return "SEED"


SEED = _Seed()


def _held_by_models(tr: Any) -> list[bool]:
    """Per leaf of `tr`, as `_count_leaves` counts them: whether a model holds it (a model is passed to
    the traced function as is, so its tensors stay eager there)."""
    kind = tr[0]
    if kind == "model":
        return [True] * len(tr[2])
    if kind in ("list", "tuple", "complex", "sparse"):
        return [b for k in tr[1] for b in _held_by_models(k)]
    if kind == "dict":
        return [b for k in tr[2] for b in _held_by_models(k)]
    return [False] * _count_leaves(tr)


def state_value(t: Trace, x: Tensor, what: str) -> np.ndarray | None:
    """x's value when it depends on nothing but constants and tensors that models hold (an element of a
    mask buffer: pytorch-tabnet's `for i, is_continuous in enumerate(self.continuous_idx): if is_continuous:`),
    read as `self.mask.tolist()` reads them: their values are baked into the graph and the compile guards on
    them (tensor.READS), tracing again when they change. None when it depends on anything else (an argument,
    the random seed, an op run otherwise)."""
    from .tensor import _read_while_tracing
    cache = t.__dict__.setdefault("_state_values", {})
    if id(x._value) in cache:
        return cache[id(x._value)][1]
    found = _cone(t, x, lambda v: t.state_inputs.get(id(v)))
    if found is None or not found[1]:
        return None
    env: dict[int, np.ndarray] = {}
    for k, e in found[1].items():
        _read_while_tracing(e, what)  # refuses a tensor the function updated; else a guard of the compile
        env[k] = e.numpy()
    arr = _evaluate_cone(found[0], env, x)
    arr.flags.writeable = False
    cache[id(x._value)] = (x._value, arr)  # the Value kept alive, so its id is not reused
    return arr


def _count_leaves(tr: Any) -> int:
    kind = tr[0]
    if kind == "leaf":
        return 1
    if kind in ("list", "tuple", "complex", "sparse"):
        return sum(_count_leaves(k) for k in tr[1])
    if kind == "dict":
        return sum(_count_leaves(k) for k in tr[2])
    if kind == "model":
        return len(tr[2])
    return 0


def trace(fn: Any, *args: Any) -> Graph | Tensor:
    """`av.trace(fn, *example_args)`: the typed SSA graph of one call of `fn`. Given one tensor,
    `av.trace(matrix)` is torch.trace, the sum of its diagonal (the name torch code calls it by)."""
    if isinstance(fn, Tensor) and not args:
        from .ops.shaping import trace as matrix_trace
        return matrix_trace(fn)
    return trace_call(fn, args).graph


def inline(t: Trace, graph: Graph, inputs: list[Value]) -> list[Value]:
    """Copy `graph`'s ops into trace `t`, reading `inputs`; returns the values of its outputs."""
    mapping = dict(zip(graph.inputs, inputs))
    body = clone_block(graph.body, mapping)
    for a, v in zip(body.args, inputs):
        a.replace_all_uses_with(v)
    results = body.results
    body.terminator.drop_operands()
    for op in list(body.ops):
        body.remove(op)
        t.builder.insert(op)
    return results


def assign(target: Tensor, new: Tensor) -> None:
    """Update a state tensor in place (eagerly), or record the update in the active trace. A model
    attribute a traced call rebound (`avalon.trace_state.AttrSlot`) gets `new` as its value."""
    if not isinstance(target, Tensor) and hasattr(target, "set"):
        target.set(new)
        return
    if target._view is not None:  # a view held as state: the write goes to its base
        views.write(target, new)
        return
    tr = current_trace()
    if tr is not None and target._trace is tr and id(target) not in tr.leaves:
        # a value of this trace, not state: an enclosing function's argument that a nested av.grad's loss
        # wrote in place (`prev_action *= 1 - is_first`). The write is this trace's in-place write, which
        # goes back to the caller's tensor the argument stands for, as eagerly
        _replace(target, new)
        return
    if tr is not None and (new.is_traced or id(target) in tr.leaves):
        tr.record_update(target, new)
        return
    if new.shape != target.shape:
        raise ValueError(f"cannot assign shape {new.shape} to a state tensor of shape {target.shape}")
    if target._device == CPU:  # == : an equal Device need not be this object
        src = new._data if new._device is CPU and new._dtype is target._dtype and new._value is None else None
        target._data[...] = src if src is not None else as_array(new, target.dtype)
    else:
        target._data.copy_(new.to(target.device)._data)  # a storage copy, not compute
    views.refresh(target)
