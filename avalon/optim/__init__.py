"""Optimizers with `torch.optim`'s update rules and signatures: `SGD`, `Adam`, `AdamW`, `RMSprop`,
`Adagrad`, `Adadelta`, `Adamax`, `NAdam`, `RAdam`, `Rprop`, `ASGD`, `Adafactor`, `SparseAdam` (on dense
gradients: the rows they touch), `Muon`, and `LBFGS` (whose `step(closure)` takes a closure
returning `(loss, grads)`; see `avalon.optim.lbfgs`); learning-rate schedulers in `avalon.optim.lr_scheduler`;
weight averaging (SWA, EMA: `AveragedModel`, `SWALR`, `update_bn`) in `avalon.optim.swa_utils`.

What an optimizer is given (`params`, torch's first argument):
- a model (any object holding parameters) or a single Tensor: its parameters, named as `av.grad` names
  their gradients (`named_parameters(model)`);
- `model.parameters()` as returned (an unconsumed generator of `avalon.nn`): the same as the model,
  because the generator says which model it walks (`inspect.getgeneratorlocals`);
- `(name, Tensor)` pairs (`model.named_parameters()`, or a filtered list of them, as torch >= 2.6 takes);
- bare Tensors (a list, `list(model.parameters())`): known by position, "0", "1", ... as `av.grad`
  names the gradients of a list of tensors. A bare tensor carries no name, so gradients named after a
  model's attributes cannot be matched to it soundly, and `step` says what to pass instead;
- torch's parameter groups, `[{'params': ..., 'lr': ..., 'weight_decay': 0.0}, ...]`, each `params` any
  of the above, the other keys overriding the constructor's defaults for that group.

`opt.step(grads)` takes the `{dotted name: Tensor}` dict `av.grad` returns and updates the parameters
in place; parameters without a gradient are left alone, as torch skips a `.grad` of None. Gradients of
parameters the optimizer does not hold are an error when it was given a whole model (they belong to
another model), and are ignored when it was given an explicit subset (pairs or groups: fine-tuning a
head), as torch ignores the `.grad` of parameters it was not given.

Every update is written as array math with `avalon.ops` and stored with `avalon.trace.assign`, so the
same `step` runs eagerly and inside a traced or compiled training step: under a trace, `assign`
records a state update instead of writing. For that to work the optimizer's state (step count,
hyperparameters, momentum buffers, moments) lives in Tensors the optimizer holds (as `Buffer`s, so
they are never mistaken for trainable parameters); a traced step that takes the optimizer as an
argument gets them as graph inputs and writes them back through state updates. State is created when
the optimizer is built (or when a hyperparameter change first needs it: a scheduler turning momentum
on) rather than lazily on the first step, so the first and later steps share one traced signature;
torch's "first step initialises the buffer" rules are reproduced with arithmetic.

`opt.param_groups` is torch's list of group dicts, and `group['lr'] = x` works as in torch, in compiled
steps too, without retracing. Why the groups are mappings over tensors rather than plain dicts: a
compiled step reads tensors afresh on every call, but the plain Python values of the objects it is
given are part of its cache key (they shape the trace), so a learning rate kept as a float would
retrace at every scheduler step. So each group's float hyperparameters (lr, momentum, betas, eps,
weight_decay, ...) live in float64 scalar tensors (`opt.hyperparameters[i]`, graph inputs), read as
floats and written in place through the group; bool options (nesterov, amsgrad, maximize, ...) and
what a float decides about the update's ops (whether weight decay or momentum is zero, which of
lerp's formulas a beta takes) are plain values in the cache key, so only a change of the update's
structure retraces; any other key (a scheduler's 'initial_lr') is a plain value the step never
reads. Torch's implementation switches (`foreach`, `fused`, `capturable`, `differentiable`) are
accepted and kept in the group; they change nothing here.

Scalars that depend on the step (Adam's bias corrections) are computed from a step-count tensor
in float64 and cast to each parameter's dtype, which is what torch does with its Python floats.

Step counts are per parameter, as torch's `state[p]["step"]`, counted only in the steps that give
the parameter a gradient (a layer unfrozen later, a head the loss skips, a group added later with
`add_param_group`: their bias corrections start from step one), but stored once per "step class":
the parameters of a group whose counts are provably equal share one tensor, and the step's scalars
are computed once per class, as they were once per group. Every parameter starts in the default
class, counted by `step_count` (the calls of `step`: `opt.steps`, `state_dict()["step"]`), which
steps at every call, so the common case (every parameter has a gradient every step) is one count
as before. Which parameters have gradients is fixed for a trace (the gradient dict's keys), so a
step whose gradients leave some members of a class out moves those to a new class (`_split_steps`),
starting at the class's count; the optimizer then holds a new tensor, so a compiled step traces
once more and caches again. Classes only split, so the retraces are bounded by the parameters.

Optimizers written as torch's (lucidrains' Lion, davda54's SAM, a hand-written Adam): a subclass of
`Optimizer` that defines its own `step` (and no `_update`) is ported by renaming imports, with gradients
as values: `opt.step(grads)` (and any public method it defines: SAM's `opt.first_step(grads)`) runs the
method as written, with `p.grad` of each parameter it holds the gradient it was given (None without one)
while the method runs, `self.state[p]` that parameter's state dict (empty until the method fills it, as
torch's), and a wrapped optimizer's `base_optimizer.step()` inside taking the same gradients. Its groups'
options (betas, weight_decay, rho, ...) are plain values in a compiled step's cache key, and `group['lr']`
a float read from the lr tensor, so a compiled step traces again when any of them changes. State it
creates lazily (`if len(state) == 0: state['exp_avg'] = torch.zeros_like(p)`) must exist before a compiled
step: take the first step eagerly, as the state then is tensors the compiled step reads and writes.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..tensor import OPTIMIZER_GRADS, Buffer, Tensor
from ..trace import assign, current_trace
from ..tree import is_array_like, is_model, named_parameters

__all__ = ["ASGD", "LBFGS", "SGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "Muon", "NAdam",
           "Optimizer", "ParamGroup", "RAdam", "RMSprop", "Rprop", "SparseAdam", "lr_scheduler", "swa_utils"]


def _scalar_buffer(value: Any, dtype: dt.DType, device: Any) -> Buffer:
    return Buffer(np.asarray(value, dtype=dtype.np), dtype=dtype, device=device)


def _zeros_like(p: Tensor) -> Buffer:
    return Buffer(np.zeros(p.shape, dtype=p.dtype.np), dtype=p.dtype, device=p.device)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def _scalar(v: Any) -> float:
    return float(np.asarray(v.numpy() if isinstance(v, Tensor) else v))


def _float_value(key: str, v: Any) -> Any:
    """A hyperparameter as Python float(s) (torch takes 0-d tensors too)."""
    if key == "betas":
        b = tuple(v)
        _check(len(b) == 2, f"invalid betas {v}: two numbers")
        return (float(b[0]), float(b[1]))
    return float(v)


def _torch_entries(indices: list, names: list[str]) -> list[tuple[Any, str, str | None]] | None:
    """torch's parameter indices of one group paired with this group's names: a complex parameter is one
    index in torch and two parameters here, `w.real` and `w.imag` (avalon/complex.py), which take the
    real and imaginary parts of its state (torch's optimizers keep complex state, stepped as its
    view_as_real). (index, name, part) triples, or None when the counts do not fit."""
    extra, out, j = len(names) - len(indices), [], 0
    for index in indices:
        if j >= len(names):
            return None
        n = names[j]
        if extra > 0 and n.endswith(".real") and j + 1 < len(names) and names[j + 1] == n[:-5] + ".imag":
            out += [(index, n, "real"), (index, names[j + 1], "imag")]
            j, extra = j + 2, extra - 1
        else:
            out.append((index, n, None))
            j += 1
    return out if j == len(names) else None


def _complex_part(v: Any, part: str | None) -> Any:
    """The `part` ("real", "imag") of a complex state value (a torch tensor); other values as they are."""
    if part is None or not (hasattr(v, "is_complex") and not isinstance(v, Tensor) and v.is_complex()):
        return v
    arr = v.detach().cpu().numpy()
    return np.array(arr.real if part == "real" else arr.imag)


class _State(dict):
    """`opt.state`: each parameter's state by its name, or by the parameter itself (`self.state[p]`, as torch's
    optimizers key it); a dict by names, so that a compiled step finds the tensors in it."""

    def __init__(self, opt: Any):
        super().__init__()
        self._opt = opt

    def _name(self, key: Any) -> Any:
        if isinstance(key, Tensor):
            for n, p in self._opt.params.items():
                if p is key:
                    return n
            raise KeyError(f"{type(self._opt).__name__}.state: the tensor {tuple(key.shape)} is not one of its "
                           "parameters")
        return key

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self._name(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(self._name(key), value)

    def __contains__(self, key: Any) -> bool:
        try:
            return super().__contains__(self._name(key))
        except KeyError:
            return False

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default


def _gradients_given(opt: Any, args: tuple) -> bool:
    """Whether a method of an optimizer written as torch's was given the gradients first: av.grad's dict
    (a plain {name: Tensor} dict too), a bare Tensor's for a one-tensor optimizer, a list for bare tensors."""
    if not args or isinstance(args[0], ParamGroup):
        return False
    g = args[0]
    if isinstance(g, Mapping):
        return bool(g) and all(isinstance(k, str) and (v is None or isinstance(v, Tensor)) for k, v in g.items())
    if isinstance(g, Tensor):
        return len(opt.params) == 1
    return (opt._kind == "positional" and isinstance(g, (list, tuple)) and bool(g)
            and all(v is None or isinstance(v, Tensor) for v in g))


def _torch_style_method(fn: Any) -> Any:
    """A public method of an optimizer written as torch's (`step`, SAM's `first_step`): given the gradients as
    its first argument, it runs without them with each held parameter's `p.grad` its gradient (None without
    one); nested calls (SAM's `step` calling `first_step`, a wrapped optimizer's `step()`) see the same. Called
    without gradients it runs as written, inside an outer call's or with `p.grad` an error."""
    import functools

    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _gradients_given(self, args):
            return fn(self, *args, **kwargs)
        grads = self._check_grads(args[0])
        OPTIMIZER_GRADS.append({id(p): grads.get(n) for n, p in self.params.items()})
        try:
            return fn(self, *args[1:], **kwargs)
        finally:
            OPTIMIZER_GRADS.pop()
    return method


class _StepClass:
    """Parameters of one group (`names`) that have taken the same steps, so one count (`step`) and
    one copy of the step history's other scalars (`extra`: NAdam's mu_product) serve them all.
    A plain object, so a compiled step takes its tensors as inputs and its names into its key."""

    def __init__(self, group: int, names: tuple[str, ...], step: Buffer, extra: dict[str, Buffer]):
        self.group, self.names, self.step, self.extra = group, names, step, extra


def _fork(src: Buffer) -> Buffer:
    """A new buffer holding `src`'s value now. Under a trace that is still its storage (state is
    written back after every compiled call), copied directly: reading it as a value would make the
    compile guard on it. Where this trace already updated `src` (a second step in one traced
    function), the copy takes the traced value as a state update instead."""
    data = src._data
    new = Buffer._wrap(data.copy() if isinstance(data, np.ndarray) else data.clone(), src.dtype, src.device)
    tr = current_trace()
    if tr is not None and id(src) in tr.updated:
        tr.record_update(new, src)
    return new


# -- what `params` may be -------------------------------------------------------------------------

_TORCH = ("got torch tensors; an Avalon optimizer updates Avalon tensors. Import the model with "
          "av.from_torch, or load its weights with nn.load_state_dict")


def _parameters_owner(obj: Any) -> Any | None:
    """The model an unconsumed `nn.parameters(model)` / `Module.parameters()` generator walks, else None:
    that generator yields exactly `named_parameters(model)`'s tensors, so their names are known."""
    if not inspect.isgenerator(obj) or inspect.getgeneratorstate(obj) != inspect.GEN_CREATED:
        return None
    from ..nn import module as nn_module
    if obj.gi_code is nn_module.parameters.__code__:
        return inspect.getgeneratorlocals(obj).get("model")
    return None


def _is_pair(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], Tensor)


def _is_torch(x: Any) -> bool:
    return (is_array_like(x) and not isinstance(x, np.ndarray)) or (
        isinstance(x, tuple) and len(x) == 2 and is_array_like(x[1]) and not isinstance(x[1], np.ndarray))


def _tensors(params: Any, who: str, group: bool = False) -> tuple[list[tuple[str | None, Tensor]], str]:
    """One group's parameters as (name, or None for a bare tensor; Tensor), and how they were given:
    "model" (a whole model: names relative to it), "named" (pairs) or "positional" (bare tensors). A
    parameter-group dict's empty list is "empty" (torch keeps such a group: TSM's get_optim_policies lists
    `first_conv_bias` for a backbone whose convs have none); an optimizer given no parameters is refused."""
    owner = _parameters_owner(params)
    if owner is not None:
        params = owner
    if _is_torch(params):
        raise TypeError(f"{who}: {_TORCH}")
    if (isinstance(params, Tensor) or is_model(params) or (isinstance(params, Mapping) and "params" not in params)
            or isinstance(params, (str, bytes)) or not hasattr(params, "__iter__")):
        return list(named_parameters(params)), "model"  # (a non-model finds none: the "no parameters" error)
    items = list(params)
    if any(_is_torch(x) for x in items):
        raise TypeError(f"{who}: {_TORCH}")
    if not items and group:
        return [], "empty"
    if not items:
        raise ValueError(f"{who} got an empty parameter list (a generator such as model.parameters() is "
                         "used up by its first reader)")
    if all(isinstance(x, Tensor) for x in items):
        return [(None, t) for t in items], "positional"
    if all(_is_pair(x) for x in items):
        return list(items), "named"
    if any(isinstance(x, Tensor) or _is_pair(x) for x in items):
        raise TypeError(f"{who}: params mixes {', '.join(sorted({type(x).__name__ for x in items}))}; give "
                        "Tensors, (name, Tensor) pairs or parameter-group dicts, one kind")
    return list(named_parameters(items)), "model"  # a list of models, walked as one


def _parse(params: Any, who: str) -> tuple[list[dict[str, Any]], str]:
    """The parameter groups (`params` as (name, Tensor) pairs, names settled) and the optimizer's kind:
    "model" (given a whole model), "named" (a subset: pairs or groups) or "positional" (bare tensors)."""
    owner = _parameters_owner(params)
    if owner is not None:
        params = owner
    elif inspect.isgenerator(params):
        params = list(params)
    if isinstance(params, Mapping) and "params" in params:
        raw = [dict(params)]
    elif isinstance(params, (list, tuple)) and params and all(isinstance(g, Mapping) for g in params):
        raw = [dict(g) for g in params]
    else:
        named, kind = _tensors(params, who)
        return _settle([{"params": named}], [kind], who, set(), set()), kind
    kinds = []
    for g in raw:
        if "params" not in g:
            raise ValueError(f"{who}: a parameter group must have a 'params' key, got {sorted(g)}")
        g["params"], kind = _tensors(g["params"], who, group=True)
        kinds.append(kind)
    given = [k for k in kinds if k != "empty"]
    kinds = [given[0] if k == "empty" and given else "named" if k == "empty" else k for k in kinds]
    names = [n for g in raw for n, _ in g["params"]]
    if len(raw) > 1 and all(k == "model" for k in kinds) and len(set(names)) < len(names):
        # groups of different submodules' parameters() (`[dict(params=m.layer3.parameters(), lr=lr), dict(params=
        # m.layer4.parameters(), lr=lr)]`, as hszhao/semseg writes), whose names, relative to each submodule, collide
        # ('0.weight' in both): they are known by position, as bare tensors are and as torch knows them (gradients
        # from av.grad are matched by identity). A tensor listed twice is still refused by _settle.
        for g in raw:
            g["params"] = [(None, t) for _, t in g["params"]]
        kinds = ["positional"] * len(raw)
    return _settle(raw, kinds, who, set(), set()), ("positional" if "positional" in kinds else "named")


def _settle(groups: list[dict[str, Any]], kinds: list[str], who: str, names: set[str], seen: set[int],
            start: int = 0) -> list[dict[str, Any]]:
    """Name bare tensors by their position among all parameters; check that every parameter is a
    trainable tensor and that names and tensors are unique across groups (`names`, `seen`: those held)."""
    if "positional" in kinds and any(k != "positional" for k in kinds):
        raise ValueError(f"{who}: some parameter groups are bare tensors and some are named; name all "
                         "(model.named_parameters()) or none")
    n = start
    for g in groups:
        settled = []
        for name, t in g["params"]:
            name = str(n) if name is None else name
            n += 1
            if isinstance(t, Buffer) or not t.dtype.is_float:
                raise TypeError(f"{who} can only optimize floating-point tensors that are not Buffers; "
                                f"{name!r} is a {'Buffer' if isinstance(t, Buffer) else t.dtype.name + ' tensor'}")
            if id(t) in seen:
                if any(u is t for _, u in settled):
                    raise ValueError(
                        f"{who}: parameter {name!r} appears twice in one parameter group (a weight tied between "
                        "modules, listed by each one's parameters()?). torch warns that this will be an error and "
                        "steps such a parameter twice per step; list each parameter once, e.g. "
                        "list(dict.fromkeys(params))")
                raise ValueError(f"{who}: some parameters appear in more than one parameter group ({name!r})")
            if name in names:
                raise ValueError(f"{who}: two parameters are named {name!r}; names must be unique across groups "
                                 "(a submodule's names are relative to it: model.sub.named_parameters(prefix='sub') "
                                 "names them from the model)")
            names.add(name)
            seen.add(id(t))
            settled.append((name, t))
        g["params"] = settled
    return groups


# -- the group dicts --------------------------------------------------------------------------------

class ParamGroup(MutableMapping):
    """One of `opt.param_groups`: torch's group dict, whose float hyperparameters read and write the
    optimizer's tensors, so that `group['lr'] = x` reaches compiled steps without retracing (see the
    module docstring). 'params' and 'param_names' are read-only; other keys are plain values."""

    __slots__ = ("_opt", "_index", "_names", "_extra")  # no __dict__: the tracer does not walk a group

    def __init__(self, opt: Optimizer, index: int, names: list[str], extra: dict[str, Any]):
        self._opt, self._index, self._names, self._extra = opt, index, names, extra

    def __getitem__(self, key: str) -> Any:
        opt, i = self._opt, self._index
        if key == "params":
            return [opt.params[n] for n in self._names]
        if key == "param_names":
            return list(self._names)
        if key in opt._floats:
            return opt._get_hyper(i, key)
        if key in opt._opts[i]:
            return opt._opts[i][key]
        return self._extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        opt, i = self._opt, self._index
        if key in ("params", "param_names"):
            raise TypeError(f"param_groups[{i}][{key!r}] is fixed once the optimizer is built; add parameters "
                            "with opt.add_param_group({'params': ...})")
        if key in opt._floats:
            opt._set_hyper(i, key, value)
        elif key in opt._opts[i]:
            opt._set_option(i, key, value)
        else:
            self._extra[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self._extra:
            raise KeyError(f"{key!r} is one of the optimizer's own keys and cannot be removed" if key in self else key)
        del self._extra[key]

    def __iter__(self) -> Iterator[str]:
        yield "params"
        yield "param_names"
        yield from self._opt._floats
        yield from self._opt._opts[self._index]
        yield from self._extra

    def __len__(self) -> int:
        return 2 + len(self._opt._floats) + len(self._opt._opts[self._index]) + len(self._extra)

    def __repr__(self) -> str:
        return repr({k: (self._names if k == "params" else self[k]) for k in self if k != "param_names"})


# -- the base class ---------------------------------------------------------------------------------

class Optimizer:
    """Base class: holds the parameters, the step count, each parameter group's hyperparameters (as
    tensors) and options, and per-parameter state.

    Subclasses list their float hyperparameters in `_floats` ('betas' is a pair), their bool options
    in `_flags`, every per-parameter buffer they may create in `_slots`, say what a float decides of
    the update's structure in `_rules`, and implement `_step_scalars` and `_update`. Scalars of the
    step history other than the count (NAdam's mu_product) are in `_class_state` with their initial
    values: one per group in `hyperparameters` for the default step class, one per other class in
    its `extra`.
    """

    _floats: tuple[str, ...] = ("lr",)
    _flags: tuple[str, ...] = ()
    _slots: tuple[str, ...] = ()
    _class_state: Mapping[str, float] = {}
    _repr_keys: tuple[str, ...] = ()
    _torch_style = False  # written as torch's: its own `step` reads `p.grad` (module docstring)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each optimizer also takes its parameters as `model=` (DESIGN's spelling; torch's is `params`). A
        subclass written as torch's (its own `step`, no `_update`: see "Optimizers written as torch's" in the
        module docstring) has its public methods take the gradients first (`_torch_style_method`)."""
        super().__init_subclass__(**kwargs)
        if ("step" in cls.__dict__ and cls._update is Optimizer._update
                and all(not b.__module__.startswith("avalon.") for b in cls.__mro__[:cls.__mro__.index(Optimizer)])):
            cls._torch_style = True  # (Avalon's own, LBFGS, and their subclasses are not)
        if cls._torch_style:
            for k, fn in list(cls.__dict__.items()):
                if inspect.isfunction(fn) and (k == "step" or (not k.startswith("_") and not hasattr(Optimizer, k))):
                    setattr(cls, k, _torch_style_method(fn))
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        def __init__(self: Any, *args: Any, **kw: Any) -> None:
            if not args and "model" in kw and "params" not in kw:
                kw["params"] = kw.pop("model")
            init(self, *args, **kw)
        __init__.__doc__, __init__.__wrapped__ = init.__doc__, init  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[method-assign]

    def __init__(self, params: Any, defaults: Mapping[str, Any]):
        who = type(self).__name__
        self.defaults: dict[str, Any] = dict(defaults)
        self._check_values(self.defaults)
        groups, self._kind = _parse(params, who)
        if not any(g["params"] for g in groups):
            raise ValueError(f"{who}: the model has no parameters (no floating-point Tensors that are not "
                             "Buffers were found on it)")
        self.params: dict[str, Tensor] = {}
        device = next(t for g in groups for _, t in g["params"]).device
        self.step_count = _scalar_buffer(0, dt.int64, device)
        self.lr_t: Buffer = None  # type: ignore[assignment]  # group 0's lr (set below; first, for its name)
        self.state: dict[str, dict[str, Buffer]] = _State(self)
        self._step_classes: tuple[_StepClass, ...] = ()  # parameters not counted by step_count (module docstring)
        self.hyperparameters: list[dict[str, Buffer]] = []  # per group: float hyperparameter -> f64 tensor
        self._opts: list[dict[str, Any]] = []              # per group: bool options, in the trace key
        self._structure: list[dict[str, bool]] = []        # per group: what the floats decide, ditto
        self.param_groups: list[ParamGroup] = []
        for g in groups:
            self._add_group(g)

    # -- public ------------------------------------------------------------------------------

    @property
    def lr(self) -> float:
        """The first group's learning rate; setting it sets every group's (in compiled steps too)."""
        return float(self.lr_t)

    @lr.setter
    def lr(self, value: float) -> None:
        _check(value >= 0, f"invalid learning rate {value}")
        for i in range(len(self.param_groups)):
            self._set_hyper(i, "lr", value)

    @property
    def steps(self) -> int:
        """How many steps have been taken."""
        return int(self.step_count)

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """torch's `add_param_group`: one more group, its missing options taken from the defaults.
        Compiled steps that take this optimizer trace again (their inputs changed)."""
        who = type(self).__name__
        if current_trace() is not None:
            raise RuntimeError(f"{who}.add_param_group cannot run inside a traced function")
        group = dict(param_group)
        if "params" not in group:
            raise ValueError(f"{who}: a parameter group must have a 'params' key, got {sorted(group)}")
        group["params"], kind = _tensors(group["params"], who, group=True)
        kind = self._kind if kind == "empty" else kind
        if (kind == "positional") != (self._kind == "positional"):
            raise ValueError(f"{who}: some parameter groups are bare tensors and some are named; name all "
                             "(model.named_parameters()) or none")
        held = {id(t) for t in self.params.values()}
        self._add_group(_settle([group], [kind], who, set(self.params), held, start=len(self.params))[0])
        if self.steps:  # the new parameters start at step 0, as in torch
            i = len(self.param_groups) - 1
            zero = _scalar_buffer(0, dt.int64, self.step_count.device)
            extra = {k: _fork(self.hyperparameters[i][k]) for k in self._class_state}
            self._step_classes += (_StepClass(i, tuple(self.param_groups[i]._names), zero, extra),)
        if self._kind == "model":
            self._kind = "named"  # no longer one model's parameters

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to clear: Avalon's gradients are values that `av.grad` returns, not `.grad`
        attributes. Kept so that torch training loops run unchanged."""

    def step(self, grads: Any = None, closure: Any = None) -> None:
        """Update the parameters in place from `grads` ({dotted name: gradient}, as `av.grad` returns
        for a model; a bare Tensor when the optimizer was built on a single Tensor; a list in the
        parameters' order when it was built from bare tensors). Parameters without a gradient are left
        alone, as torch skips parameters whose `.grad` is None."""
        who = type(self).__name__
        if closure is not None or callable(grads):
            raise TypeError(f"{who}.step takes the gradients, not a closure: `loss, grads = "
                            "av.value_and_grad(objective)(model, x, y)`, then `opt.step(grads)`")
        if grads is None and OPTIMIZER_GRADS:  # inside an optimizer written as torch's: the gradients it was given
            held = OPTIMIZER_GRADS[-1]
            grads = {n: held[id(p)] for n, p in self.params.items() if held.get(id(p)) is not None}
        if grads is None:
            raise TypeError(f"{who}.step(grads): Avalon's gradients are values, not `.grad` attributes; compute "
                            "them with `loss, grads = av.value_and_grad(objective)(model, x, y)` and pass them")
        grads = self._check_grads(grads)
        self._check_trace()
        self._split_steps(grads)
        t = ops.add(self.step_count, 1)
        assign(self.step_count, t)
        tf = ops.cast(t, dt.float64)
        of: dict[str, _StepClass] = {}  # a parameter's step class, where not the default
        counts: dict[int, Tensor] = {}  # a stepping class's new count (float64)
        for c in self._step_classes:
            of.update(dict.fromkeys(c.names, c))
            if grads.get(c.names[0]) is not None:  # after the split, all of a class step or none
                tc = ops.add(c.step, 1)
                assign(c.step, tc)
                counts[id(c)] = ops.cast(tc, dt.float64)
        for i, group in enumerate(self.param_groups):
            todo = [(n, g) for n in group._names if (g := grads.get(n)) is not None]
            if not todo:
                continue
            st, opts = self._structure[i], self._opts[i]
            # per step class (0: the default), the float64 scalars and their casts to each dtype
            shared: dict[int, tuple[dict[str, Tensor], dict[dt.DType, dict[str, Tensor]]]] = {}
            for name, g in todo:
                c = of.get(name)
                key = 0 if c is None else id(c)
                if key not in shared:
                    h = self.hyperparameters[i] if c is None else {**self.hyperparameters[i], **c.extra}
                    shared[key] = (self._step_scalars(tf if c is None else counts[key], h, st, opts), {})
                f64, scalars = shared[key]
                p = self.params[name]
                g = ops.cast(g, p.dtype)
                if opts.get("maximize"):
                    g = -g
                if p.dtype not in scalars:  # cast the float64 scalars once per dtype
                    scalars[p.dtype] = {k: ops.cast(v, p.dtype) for k, v in f64.items()}
                self._update(p, g, self.state[name], scalars[p.dtype], st, opts)

    def _split_steps(self, grads: Mapping[str, Any]) -> None:
        """Move the parameters without a gradient in this step out of a step class whose others
        take the step (the default class takes every step), into a new class starting at its count:
        torch counts a parameter's steps only when it has a gradient. The set of gradients is fixed
        for a trace, and the new counts are new tensors the optimizer holds, so a compiled step
        traces once more with them as inputs; nothing is read from them here, so nothing is guarded."""
        new: list[_StepClass] = []
        held = {n for c in self._step_classes for n in c.names}
        for i, group in enumerate(self.param_groups):
            idle = tuple(n for n in group._names if n not in held and grads.get(n) is None)
            if idle:
                h = self.hyperparameters[i]
                new.append(_StepClass(i, idle, _fork(self.step_count), {k: _fork(h[k]) for k in self._class_state}))
        for c in self._step_classes:
            idle = tuple(n for n in c.names if grads.get(n) is None)
            if idle and len(idle) < len(c.names):
                c.names = tuple(n for n in c.names if grads.get(n) is not None)
                new.append(_StepClass(c.group, idle, _fork(c.step), {k: _fork(v) for k, v in c.extra.items()}))
        if new:
            self._step_classes += tuple(new)

    def state_dict(self) -> dict[str, Tensor]:
        """The optimizer's state as a flat dict of Tensors (saveable with `av.save`): "step", "lr"
        (the first group's), "param_groups.{i}.{hyperparameter}" and "state.{name}.{slot}", and for
        a parameter whose steps are not the optimizer's (see the module docstring) "state.{name}.step"
        (and NAdam's "state.{name}.mu_product")."""
        out: dict[str, Tensor] = {"step": self.step_count, "lr": self.lr_t}
        for i, h in enumerate(self.hyperparameters):
            for k, v in h.items():
                if (i, k) != (0, "lr"):
                    out[f"param_groups.{i}.{k}"] = v
        for name, slots in self.state.items():
            for s, buf in slots.items():
                out[f"state.{name}.{s}"] = buf
        for c in self._step_classes:
            for name in c.names:
                out[f"state.{name}.step"] = c.step
                for k, v in c.extra.items():
                    out[f"state.{name}.{k}"] = v
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned; checks every key and shape before writing anything.
        Hyperparameters missing from `state` (a checkpoint of an earlier Avalon) keep their values.
        torch's own optimizer state dict loads too (`opt.load_state_dict(torch_opt.state_dict())`,
        or a torch checkpoint's "optimizer"), so a run trained in torch goes on in Avalon."""
        if isinstance(state.get("param_groups"), list) and isinstance(state.get("state"), Mapping):
            state = self._from_torch(state)
        mine = self.state_dict()
        values = [{k: self._get_hyper(i, k) for k in self._floats} for i in range(len(self.param_groups))]
        hyper, new_slots, unexpected, classed = set(), {}, [], {}
        for k in state:
            if (counted := self._class_key(k)) is not None:  # a parameter's own step count (NAdam: mu_product)
                classed[k] = counted
            elif k.startswith("param_groups."):
                where = self._hyper_key(k)
                if where is None:
                    unexpected.append(k)
                    continue
                hyper.add(k)
                i, name = where
                v = _scalar(state[k])
                if name in ("beta1", "beta2"):
                    b = values[i]["betas"]
                    values[i]["betas"] = (v, b[1]) if name == "beta1" else (b[0], v)
                else:
                    values[i][name] = v
            elif k not in mine:
                slot = self._slot_key(k)
                if slot is None:
                    unexpected.append(k)
                else:
                    new_slots[k] = slot
        if "lr" in state:
            values[0]["lr"] = _scalar(state["lr"])
        after = [self._structure_of(v) for v in values]  # the buffers the loaded values need, say momentum's
        required = {"step", "lr"} | {f"state.{n}.{s}" for i, g in enumerate(self.param_groups) for n in g._names
                                     for s in self._active_slots(after[i], self._opts[i])}
        missing = sorted(required - set(state))
        if missing or unexpected:
            raise KeyError(f"optimizer state mismatch: missing {missing}, unexpected {sorted(unexpected)}")
        saved = {where[0] for k in hyper if (where := self._hyper_key(k)) is not None}
        held = {where[0] for k in mine if (where := self._hyper_key(k)) is not None}
        # fewer groups saved (more are unexpected keys) would leave the others' rates as they are; a checkpoint
        # with no group keys at all is an earlier Avalon's, unless the only hyperparameter is lr ("lr": group 0)
        if (saved or self._floats == ("lr",)) and saved | {0} != held | {0}:
            raise ValueError(f"loaded state dict has a different number of parameter groups: it has groups "
                             f"{sorted(saved)}, this {type(self).__name__} has {len(self.param_groups)}")
        for k, v in state.items():
            want = mine[k].shape if k in mine else self.params[new_slots[k][0]].shape if k in new_slots else ()
            if tuple(np.shape(v)) != tuple(want):
                raise ValueError(f"optimizer state {k!r}: shape {tuple(np.shape(v))} != {tuple(want)}")
        for i, vals in enumerate(values):
            for k, v in vals.items():
                self._set_hyper(i, k, v)
        for name, s in new_slots.values():
            if s not in self.state[name]:
                self.state[name][s] = _zeros_like(self.params[name])
        self._load_steps(state, classed, values)
        mine = self.state_dict()
        for k, v in state.items():
            if k != "lr" and k not in hyper and k not in classed:
                assign(mine[k], Tensor(v, dtype=mine[k].dtype))

    def _load_steps(self, state: Mapping[str, Any], classed: dict[str, tuple[str, str]],
                    values: list[dict[str, Any]]) -> None:
        """The step classes of loaded per-parameter counts ("state.{name}.step"; a parameter without
        one has the optimizer's "step"): in each group, the parameters with equal counts (and equal
        NAdam mu_products) share one; those equal to the optimizer's join its default class."""
        base = _scalar(state["step"])
        own: dict[str, dict[str, float]] = {}
        for k, (name, key) in classed.items():
            own.setdefault(name, {})[key] = _scalar(state[k])
        found: dict[tuple[int, tuple], list[str]] = {}
        for i, group in enumerate(self.param_groups):
            h = self.hyperparameters[i]
            default = {"step": base, **{k: values[i].get(k, float(h[k])) for k in self._class_state}}
            for n in group._names:
                count = {**default, **own.get(n, {})}
                if count != default:
                    found.setdefault((i, tuple(count.items())), []).append(n)
        device = self.step_count.device
        self._step_classes = tuple(
            _StepClass(i, tuple(names), _scalar_buffer(dict(count)["step"], dt.int64, device),
                       {k: _scalar_buffer(dict(count)[k], self.hyperparameters[i][k].dtype, device)
                        for k in self._class_state})
            for (i, count), names in found.items())

    def _from_torch(self, sd: Mapping[str, Any]) -> dict[str, Any]:
        """torch's `{"state": {index: {slot: tensor}}, "param_groups": [{..., "params": [index, ...]}]}`
        as `state_dict`'s flat keys. Parameters pair up by position, group by group, as torch's load
        pairs them; the saved groups' options (amsgrad, nesterov, ...) and other keys (a scheduler's
        initial_lr) are set on this optimizer's groups, as torch's load takes the saved groups."""
        groups = sd["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        out: dict[str, Any] = {}
        steps: dict[str, float | None] = {}  # per parameter (None: it stepped, SGD's count unknown)
        for i, (g, mine) in enumerate(zip(groups, self.param_groups)):
            entries = _torch_entries(g["params"], mine._names)
            if entries is None:
                raise ValueError("loaded state dict contains a parameter group that doesn't match the size of "
                                 "optimizer's group")
            for k, v in g.items():
                if k == "betas":
                    out[f"param_groups.{i}.beta1"], out[f"param_groups.{i}.beta2"] = v
                elif k in self._floats:
                    out["lr" if (i, k) == (0, "lr") else f"param_groups.{i}.{k}"] = v
                elif k not in ("params", "param_names") and v not in _TORCH_DEFAULTS.get(k, ()) and \
                        mine.get(k, _MISSING) != v:
                    mine[k] = v  # an option, or a plain key such as initial_lr
            for index, name, part in entries:
                slots = {k: _complex_part(v, part) for k, v in sd["state"].get(index, {}).items()}
                steps[name] = 0.0
                for k, v in self._class_state.items():  # (NAdam's mu_product: kept per step class)
                    out[f"state.{name}.{k}"] = slots.get(k, v)
                for slot, v in slots.items():
                    if slot == "step":
                        steps[name] = _scalar(v)
                    elif slot not in self._class_state:
                        out[f"state.{name}.{slot}"] = v
                if slots and "step" not in slots:  # SGD keeps none: a buffer there means it has stepped
                    steps[name] = None
                for slot, buf in self.state[name].items():  # no state yet (no gradient so far): zeros
                    out.setdefault(f"state.{name}.{slot}", np.zeros(buf.shape))
        # the optimizer's own count: the most steps a parameter took (load_state_dict puts the
        # parameters at that count in its default class, each group's mu_product from one of them)
        base = max([s for s in steps.values() if s is not None] + [1.0] * (None in steps.values()), default=0.0)
        for name, s in steps.items():
            out[f"state.{name}.step"] = base if s is None else s
        for i, mine in enumerate(self.param_groups):
            for k in self._class_state:
                at_base = [n for n in mine._names if out[f"state.{n}.step"] == base]
                if at_base:
                    out[f"param_groups.{i}.{k}"] = out[f"state.{at_base[0]}.{k}"]
        out["step"] = base
        return out

    def __repr__(self) -> str:
        def one(i: int) -> str:
            return ", ".join([f"lr={self._get_hyper(i, 'lr'):g}"]
                             + [f"{k}={self.param_groups[i][k]!r}" for k in self._repr_keys])
        if len(self.param_groups) == 1:
            return f"{type(self).__name__}({one(0)})"
        groups = "; ".join(f"group {i}: {one(i)}" for i in range(len(self.param_groups)))
        return f"{type(self).__name__}({groups})"

    # -- for subclasses ----------------------------------------------------------------------

    def _rules(self, key: str, value: Any) -> dict[str, bool]:
        """The structure flags that hyperparameter `key` decides at `value` (zero or not, ...)."""
        return {}

    def _check_group(self, values: Mapping[str, Any], opts: Mapping[str, Any]) -> None:
        """Checks across a group's options (SGD: Nesterov needs momentum)."""

    def _active_slots(self, structure: Mapping[str, bool], opts: Mapping[str, Any]) -> tuple[str, ...]:
        return self._slots

    def _step_scalars(self, t: Tensor, h: dict[str, Buffer], st: dict[str, bool],
                      opts: dict[str, Any]) -> dict[str, Tensor]:
        """float64 scalars shared by a group's parameters this step (`t`: the new step count)."""
        return {"lr": h["lr"]}

    def _update(self, p: Tensor, g: Tensor, state: dict[str, Buffer], s: dict[str, Tensor],
                st: dict[str, bool], opts: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- groups and hyperparameters ----------------------------------------------------------

    def _structure_of(self, values: Mapping[str, Any]) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for k, v in values.items():
            out.update(self._rules(k, v))
        return out

    def _add_group(self, group: dict[str, Any]) -> None:
        i = len(self.param_groups)
        opts = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        for k, v in self.defaults.items():
            opts.setdefault(k, v)
        values = {k: _float_value(k, opts.pop(k)) for k in self._floats}
        self._check_values(values)
        flags = {k: opts.pop(k) for k in (list(opts) if self._torch_style else self._flags)}
        self._check_group(values, flags)
        device = self.step_count.device
        h: dict[str, Buffer] = {}
        for k, v in values.items():
            if k == "betas":
                h["beta1"], h["beta2"] = (_scalar_buffer(b, dt.float64, device) for b in v)
            else:
                h[k] = _scalar_buffer(v, dt.float64, device)
        self.hyperparameters.append(h)
        if i == 0:
            self.lr_t = h["lr"]
        self._opts.append(flags)
        self._structure.append(self._structure_of(values))
        for n, t in group["params"]:
            self.params[n] = t
            self.state[n] = {}
        self.param_groups.append(ParamGroup(self, i, [n for n, _ in group["params"]], opts))
        self._ensure_slots(i)

    def _ensure_slots(self, i: int) -> None:
        """Create the buffers group i's structure needs: zeros, as torch's lazily created state."""
        for n in self.param_groups[i]._names:
            for s in self._active_slots(self._structure[i], self._opts[i]):
                if s not in self.state[n]:
                    self.state[n][s] = _zeros_like(self.params[n])

    def _get_hyper(self, i: int, key: str) -> Any:
        h = self.hyperparameters[i]
        if key == "betas":
            return (float(h["beta1"]), float(h["beta2"]))
        return float(h[key])

    def _set_hyper(self, i: int, key: str, value: Any) -> None:
        """Write a float hyperparameter into its tensor(s), and the structure it decides. Inside a trace
        only a change that keeps the structure can be made (the trace's cache key is already taken)."""
        parts = list(value) if key == "betas" else [value]
        if any(isinstance(v, Tensor) and v.is_traced for v in parts):
            if self._rules(key, self._get_hyper(i, key)):
                raise RuntimeError(f"param_groups[{i}][{key!r}] decides the update's structure, so it cannot be "
                                   "set from a traced value; set it outside the compiled function")
        else:
            value = _float_value(key, value)  # unchecked, as torch's group dicts (a schedule may overshoot)
            parts = list(value) if key == "betas" else [value]
            rules = self._rules(key, value)
            if any(self._structure[i].get(k) != v for k, v in rules.items()):
                if current_trace() is not None:
                    raise RuntimeError(f"setting param_groups[{i}][{key!r}] to {value!r} changes the update's "
                                       "structure; do it outside the compiled function (which then traces again)")
                self._structure[i] = {**self._structure[i], **rules}  # a new dict: the trace key sees it
                self._ensure_slots(i)
        for name, v in zip(["beta1", "beta2"] if key == "betas" else [key], parts):
            t = self.hyperparameters[i][name]
            assign(t, v if isinstance(v, Tensor) else Tensor(np.float64(v), dtype=dt.float64, device=t.device))

    def _set_option(self, i: int, key: str, value: Any) -> None:
        if self._torch_style:  # a plain value its own step reads: in the trace key (a new dict), as torch's
            self._opts[i] = {**self._opts[i], key: value}
            return
        if current_trace() is not None:
            raise RuntimeError(f"param_groups[{i}][{key!r}] shapes the update; set it outside the compiled function")
        if isinstance(value, Tensor):
            raise TypeError(f"param_groups[{i}][{key!r}] is a Python option, not a tensor")
        opts = {**self._opts[i], key: value}
        self._check_group({k: self._get_hyper(i, k) for k in self._floats}, opts)
        self._opts[i] = opts  # a new dict: the trace key sees it
        self._ensure_slots(i)

    def _check_values(self, values: Mapping[str, Any]) -> None:
        for k, v in values.items():
            if k == "betas":
                b = _float_value(k, v)
                _check(0 <= b[0] < 1 and 0 <= b[1] < 1, f"invalid betas {tuple(v)}")
            elif k == "lr":
                _check(float(v) >= 0, f"invalid learning rate {v}")
            elif k in self._floats and k != "dampening":
                _check(float(v) >= 0, f"invalid {k} {v}")

    def _hyper_key(self, key: str) -> tuple[int, str] | None:
        """'param_groups.{i}.{name}' -> (i, name) when this optimizer has that tensor."""
        parts = key.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        i, name = int(parts[1]), parts[2]
        if i >= len(self.hyperparameters) or name not in self.hyperparameters[i] or (i, name) == (0, "lr"):
            return None
        return i, name

    def _class_key(self, key: str) -> tuple[str, str] | None:
        """'state.{name}.step' (or NAdam's '.mu_product') -> (name, "step") for a parameter held."""
        for s in ("step", *self._class_state):
            if key.startswith("state.") and key.endswith("." + s) and key[6:-len(s) - 1] in self.params:
                return key[6:-len(s) - 1], s
        return None

    def _slot_key(self, key: str) -> tuple[str, str] | None:
        """'state.{name}.{slot}' -> (name, slot) for a buffer this optimizer could create."""
        if not key.startswith("state."):
            return None
        for s in self._slots:
            name = key[len("state."):-len(s) - 1]
            if key.endswith("." + s) and name in self.params:
                return name, s
        return None

    # -- checks ------------------------------------------------------------------------------

    def _check_grads(self, grads: Any) -> Mapping[str, Any]:
        who = type(self).__name__
        if isinstance(grads, Mapping):
            known = getattr(grads, "params", None)  # av.grad's Grads: the tensor of each name
            if isinstance(known, dict):
                by_id = {id(t): k for k, t in self.params.items()}
                if self._kind != "positional":
                    self._check_replaced(grads, known, by_id)
                if self._kind == "positional":
                    grads = {by_id[id(known[n])]: g for n, g in grads.items()
                             if n in known and id(known[n]) in by_id}
                elif any(n not in self.params for n in grads):  # renamed since (a parametrization moved
                    # `weight` to `parametrizations.weight.original`): the same tensor, matched by identity
                    if any(n in known and id(known[n]) in by_id for n in grads):
                        # the gradients of a larger model than this optimizer's (Adam(agent.actor.parameters())
                        # given av.grad of the agent, whose critic the actor's loss runs): torch's optimizer
                        # ignores the .grad of tensors it does not hold, so the ones known not held are dropped
                        grads = {n: g for n, g in grads.items() if n not in known or id(known[n]) in by_id}
                    grads = {by_id.get(id(known.get(n)), n) if n not in self.params else n: g
                             for n, g in grads.items()}
        elif self._kind == "positional" and isinstance(grads, (list, tuple)):
            if len(grads) != len(self.params):
                raise ValueError(f"{who}.step: {len(grads)} gradients for {len(self.params)} parameters")
            grads = dict(zip(self.params, grads))
        elif list(self.params) == [""] or (isinstance(grads, Tensor) and len(self.params) == 1):
            grads = {next(iter(self.params)): grads}  # one tensor's gradient: optim.LBFGS([input_img])
        else:
            raise TypeError(f"{who}.step expects a dict {{parameter name: gradient}} as av.grad returns for a "
                            f"model, got {type(grads).__name__}")
        unknown = [k for k in grads if k not in self.params]
        if unknown and (self._kind != "named" or len(unknown) == len(grads)):
            raise KeyError(self._unknown(unknown))
        for k, g in grads.items():
            if k not in self.params or g is None:
                continue
            shape = tuple(g.shape if isinstance(g, Tensor) else np.shape(g))
            if shape != self.params[k].shape:
                raise ValueError(f"gradient of {k!r} has shape {shape}, the parameter {self.params[k].shape}")
            kind = g.dtype.np.kind if isinstance(g, Tensor) else np.asarray(g).dtype.kind
            if kind in "biu" and self.params[k].dtype.is_float:  # (it was applied, cast, as if it were a gradient)
                raise TypeError(f"gradient of {k!r} is an integer or bool tensor ({g.dtype}), the parameter "
                                f"{self.params[k].dtype}: a gradient is floating point; pass av.grad's result")
        return grads

    def _check_replaced(self, grads: Mapping[str, Any], known: dict, by_id: dict[int, str]) -> None:
        """Refuse gradients whose name this optimizer holds but whose tensor it does not, beside others it
        does hold: a layer replaced after the optimizer was made (`model.fc = nn.Linear(...)` to fine-tune
        a new head). Matched by name, the old layer's tensors were stepped with the new one's gradients
        and the new layer never trained (torch's optimizer skips it: just as silently)."""
        stale = [n for n in grads if n in self.params and n in known and grads[n] is not None
                 and known[n] is not self.params[n] and id(known[n]) not in by_id]
        if stale and any(n in known and id(known[n]) in by_id for n in grads):
            raise RuntimeError(
                f"{type(self).__name__}.step: the gradients for {stale[:8]}{' ...' if len(stale) > 8 else ''} are of "
                "tensors this optimizer does not hold: the layer was replaced (or its parameters reassigned) after "
                "the optimizer was created, so stepping by name would update the old tensors and never train the "
                "new ones. Create the optimizer after changing the model (or add the new parameters with "
                "opt.add_param_group(...))")

    def _unknown(self, unknown: list[str]) -> str:
        """Why gradients' names do not match, and what to pass instead."""
        who = type(self).__name__
        held = list(self.params)
        msg = (f"gradients for unknown parameters {unknown[:8]}{' ...' if len(unknown) > 8 else ''}; the optimizer "
               f"holds {held[:8]}{' ...' if len(held) > 8 else ''}")
        if self._kind == "positional":
            return (msg + ". It was given bare tensors (a list, or a filtered model.parameters()), which it knows "
                    "only by position, so it cannot tell whose gradient a name is. Pass the model itself "
                    f"(optim.{who}(model, ...)), model.parameters() as it is, or (name, tensor) pairs: "
                    "model.named_parameters(), a filtered list of them, or parameter groups of them "
                    "([{'params': [(n, p) for n, p in model.named_parameters() if ...], 'weight_decay': 0.0}, ...])")
        if self._kind == "model":
            return (msg + ". Names are relative to what the optimizer was given: built from a submodule "
                    "(model.fc or model.fc.parameters()) it holds 'weight', not 'fc.weight'; pass the whole model, "
                    "or model.fc.named_parameters(prefix='fc') to train that part only")
        return msg

    def _check_trace(self) -> None:
        """Under a trace the state must be a graph input, or each run would read stale constants. A
        second step in one trace (a GAN's n_critic critic steps) reads what the first one wrote."""
        tr = current_trace()
        if tr is None:
            return
        v = tr.leaves.get(id(self.step_count))
        if (v is None or v not in tr.graph.inputs) and id(self.step_count) not in tr.updated:
            raise RuntimeError(
                f"{type(self).__name__}.step was called inside a traced function that did not receive the "
                "optimizer as an argument; pass it in (e.g. `def step(model, opt, x, y)`) so that its state "
                "(step count, moments) becomes graph inputs that every call reads afresh")


_MISSING = object()
_TORCH_DEFAULTS = {"foreach": (None, False), "capturable": (False,), "differentiable": (False,), "fused": (None, False)}
"""Keys of torch's groups that Avalon's optimizers do not have, with the values that ask for nothing
(torch's defaults): those are skipped when loading torch's state dict."""


def _option(key: str) -> property:
    """The first group's `key`, an attribute of earlier Avalon optimizers; setting it sets every group's."""
    def get(self: Optimizer) -> Any:
        return self.param_groups[0][key]

    def put(self: Optimizer, value: Any) -> None:
        for g in self.param_groups:
            g[key] = value
    return property(get, put, doc=f"`param_groups[0][{key!r}]`; setting it sets every group's.")


def _lerp(a: Tensor, b: Tensor, w: Tensor, one_minus_w: Tensor, low: bool) -> Tensor:
    """torch.lerp(a, b, w) with torch's two formulas (exact at both ends); `low`: w < 0.5."""
    if low:
        return a + w * (b - a)
    return b - (b - a) * one_minus_w


# -- the optimizers --------------------------------------------------------------------------------

class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov and L2 weight decay.

    With dampening, torch starts the momentum buffer at the first step's gradient; here that is the
    optimizer's first step, so momentum switched on later with a nonzero dampening starts from zero."""

    _floats = ("lr", "momentum", "dampening", "weight_decay")
    _flags = ("nesterov", "maximize")
    _slots = ("momentum_buffer",)
    _repr_keys = ("momentum", "dampening", "nesterov", "weight_decay")
    momentum = _option("momentum")
    dampening = _option("dampening")
    nesterov = _option("nesterov")
    weight_decay = _option("weight_decay")

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False, fused: bool | None = None):
        if isinstance(dampening, bool):  # `SGD(model, lr, momentum, True)`: nesterov in dampening's place
            raise TypeError("SGD: the 4th argument is dampening, a float, as in torch; pass nesterov=True by keyword")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize, foreach=foreach,
                                      differentiable=differentiable, fused=fused))

    def _rules(self, key: str, value: Any) -> dict[str, bool]:
        return {key: value != 0} if key in ("momentum", "dampening", "weight_decay") else {}

    def _check_group(self, values: Mapping[str, Any], opts: Mapping[str, Any]) -> None:
        _check(not opts.get("nesterov") or (values["momentum"] > 0 and values["dampening"] == 0),
               "Nesterov momentum requires a momentum and zero dampening")

    def _active_slots(self, structure: Mapping[str, bool], opts: Mapping[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if structure["momentum"] else ()

    def _step_scalars(self, t, h, st, opts):
        s = {"lr": h["lr"]}
        if st["weight_decay"]:
            s["weight_decay"] = h["weight_decay"]
        if st["momentum"]:
            s["momentum"] = h["momentum"]
            if st["dampening"]:
                s["keep"] = 1.0 - h["dampening"]
                s["first"] = ops.cast(ops.eq(t, 1.0), dt.float64)  # torch starts the buffer at the grad
        return s

    def _update(self, p, g, state, s, st, opts):
        if st["weight_decay"]:
            g = g + s["weight_decay"] * p
        if st["momentum"]:
            new = s["keep"] * g if st["dampening"] else g
            buf = state["momentum_buffer"] * s["momentum"] + new
            if "first" in s:
                buf = ops.where(s["first"], g, buf)
            assign(state["momentum_buffer"], buf)
            g = g + s["momentum"] * buf if opts["nesterov"] else buf
        assign(p, p - s["lr"] * g)


class Adam(Optimizer):
    """Adam (Kingma & Ba), with optional L2 or decoupled weight decay and AMSGrad, as torch.optim.Adam."""

    _floats = ("lr", "betas", "eps", "weight_decay")
    _flags = ("amsgrad", "maximize", "decoupled_weight_decay")
    _slots = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _repr_keys = ("betas", "eps", "weight_decay", "amsgrad")
    betas = _option("betas")
    eps = _option("eps")
    weight_decay = _option("weight_decay")
    amsgrad = _option("amsgrad")

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, foreach=foreach, capturable=capturable,
                                      differentiable=differentiable, fused=fused,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _rules(self, key: str, value: Any) -> dict[str, bool]:
        if key == "weight_decay":
            return {"weight_decay": value != 0}
        if key == "betas":
            return {"lerp_low": 1.0 - value[0] < 0.5}  # which of lerp's formulas the first moment takes
        return {}

    def _active_slots(self, structure: Mapping[str, bool], opts: Mapping[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if opts["amsgrad"] else ())

    def _step_scalars(self, t, h, st, opts):
        b1, b2 = h["beta1"], h["beta2"]
        w1 = 1.0 - b1
        s = {"step_size": h["lr"] / (1.0 - ops.pow(b1, t)), "bc2_sqrt": ops.sqrt(1.0 - ops.pow(b2, t)),
             "w1": w1, "w1c": 1.0 - w1, "b2": b2, "w2": 1.0 - b2, "eps": h["eps"]}
        if st["weight_decay"]:
            if opts["decoupled_weight_decay"]:
                s["decay"] = 1.0 - h["lr"] * h["weight_decay"]
            else:
                s["weight_decay"] = h["weight_decay"]
        return s

    def _update(self, p, g, state, s, st, opts):
        pv = p  # the value the update starts from (decoupled weight decay shrinks it first)
        if st["weight_decay"]:
            if opts["decoupled_weight_decay"]:
                pv = p * s["decay"]
            else:
                g = g + s["weight_decay"] * p
        m = _lerp(state["exp_avg"], g, s["w1"], s["w1c"], st["lerp_low"])
        v = state["exp_avg_sq"] * s["b2"] + s["w2"] * (g * g)
        assign(state["exp_avg"], m)
        assign(state["exp_avg_sq"], v)
        if opts["amsgrad"]:
            v = ops.maximum(state["max_exp_avg_sq"], v)
            assign(state["max_exp_avg_sq"], v)
        denom = ops.sqrt(v) / s["bc2_sqrt"] + s["eps"]
        assign(p, pv - s["step_size"] * (m / denom))


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW."""

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)


class RMSprop(Optimizer):
    """RMSprop (Hinton), optionally centered and with momentum, as torch.optim.RMSprop."""

    _floats = ("lr", "alpha", "eps", "weight_decay", "momentum")
    _flags = ("centered", "maximize")
    _slots = ("square_avg", "momentum_buffer", "grad_avg")
    _repr_keys = ("alpha", "eps", "weight_decay", "momentum", "centered")
    alpha = _option("alpha")
    eps = _option("eps")
    weight_decay = _option("weight_decay")
    momentum = _option("momentum")
    centered = _option("centered")

    def __init__(self, params: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False, differentiable: bool = False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, capturable=capturable, foreach=foreach, maximize=maximize,
                                      differentiable=differentiable))

    def _rules(self, key: str, value: Any) -> dict[str, bool]:
        if key == "momentum":
            return {"momentum": value > 0}
        if key == "weight_decay":
            return {"weight_decay": value != 0}
        if key == "alpha":
            return {"lerp_low": 1.0 - value < 0.5}  # which of lerp's formulas the centered average takes
        return {}

    def _active_slots(self, structure: Mapping[str, bool], opts: Mapping[str, Any]) -> tuple[str, ...]:
        return (("square_avg",) + (("momentum_buffer",) if structure["momentum"] else ())
                + (("grad_avg",) if opts["centered"] else ()))

    def _step_scalars(self, t, h, st, opts):
        w = 1.0 - h["alpha"]
        s = {"lr": h["lr"], "alpha": h["alpha"], "w": w, "eps": h["eps"]}
        if opts["centered"]:
            s["wc"] = 1.0 - w
        if st["weight_decay"]:
            s["weight_decay"] = h["weight_decay"]
        if st["momentum"]:
            s["momentum"] = h["momentum"]
        return s

    def _update(self, p, g, state, s, st, opts):
        if st["weight_decay"]:
            g = g + s["weight_decay"] * p
        sq = state["square_avg"] * s["alpha"] + s["w"] * (g * g)
        assign(state["square_avg"], sq)
        if opts["centered"]:
            ga = _lerp(state["grad_avg"], g, s["w"], s["wc"], st["lerp_low"])
            assign(state["grad_avg"], ga)
            avg = ops.sqrt(sq - ga * ga)
        else:
            avg = ops.sqrt(sq)
        avg = avg + s["eps"]
        if st["momentum"]:
            buf = state["momentum_buffer"] * s["momentum"] + g / avg
            assign(state["momentum_buffer"], buf)
            assign(p, p - s["lr"] * buf)
        else:
            assign(p, p - s["lr"] * (g / avg))


class Adagrad(Optimizer):
    """Adagrad (Duchi et al.) with torch's learning-rate decay lr / (1 + (t - 1) lr_decay), as
    torch.optim.Adagrad. The squared-gradient sum starts at `initial_accumulator_value`, read when a
    group is created (as torch reads it only when it builds the state)."""

    _floats = ("lr", "lr_decay", "eps", "weight_decay", "initial_accumulator_value")
    _flags = ("maximize",)
    _slots = ("sum",)
    _repr_keys = ("lr_decay", "eps", "weight_decay", "initial_accumulator_value")
    lr_decay = _option("lr_decay")
    eps = _option("eps")
    weight_decay = _option("weight_decay")

    def __init__(self, params: Any, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, fused: bool | None = None):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable, fused=fused))

    def _rules(self, key: str, value: Any) -> dict[str, bool]:
        return {key: value != 0} if key in ("lr_decay", "weight_decay") else {}

    def _ensure_slots(self, i: int) -> None:
        init = float(self.hyperparameters[i]["initial_accumulator_value"])
        for n in self.param_groups[i]._names:
            if "sum" not in self.state[n]:
                p = self.params[n]
                self.state[n]["sum"] = Buffer(np.full(p.shape, init, dtype=p.dtype.np), dtype=p.dtype,
                                              device=p.device)

    def _step_scalars(self, t, h, st, opts):
        clr = h["lr"] / (1.0 + (t - 1.0) * h["lr_decay"]) if st["lr_decay"] else h["lr"]
        s = {"clr": clr, "eps": h["eps"]}
        if st["weight_decay"]:
            s["weight_decay"] = h["weight_decay"]
        return s

    def _update(self, p, g, state, s, st, opts):
        if st["weight_decay"]:
            g = g + s["weight_decay"] * p
        acc = state["sum"] + g * g
        assign(state["sum"], acc)
        assign(p, p - s["clr"] * (g / (ops.sqrt(acc) + s["eps"])))


class Adamax(Optimizer):
    """Adamax, Adam under the infinity norm (Kingma & Ba, section 7), as torch.optim.Adamax."""

    _floats = ("lr", "betas", "eps", "weight_decay")
    _flags = ("maximize",)
    _slots = ("exp_avg", "exp_inf")
    _repr_keys = ("betas", "eps", "weight_decay")
    betas = _option("betas")
    eps = _option("eps")
    weight_decay = _option("weight_decay")

    def __init__(self, params: Any, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable, capturable=capturable))

    _rules = Adam._rules  # weight decay on or off; which of lerp's formulas the first moment takes

    def _step_scalars(self, t, h, st, opts):
        w1 = 1.0 - h["beta1"]
        s = {"clr": h["lr"] / (1.0 - ops.pow(h["beta1"], t)), "w1": w1, "w1c": 1.0 - w1, "b2": h["beta2"],
             "eps": h["eps"]}
        if st["weight_decay"]:
            s["weight_decay"] = h["weight_decay"]
        return s

    def _update(self, p, g, state, s, st, opts):
        if st["weight_decay"]:
            g = g + s["weight_decay"] * p
        m = _lerp(state["exp_avg"], g, s["w1"], s["w1c"], st["lerp_low"])
        u = ops.maximum(state["exp_inf"] * s["b2"], ops.abs(g) + s["eps"])
        assign(state["exp_avg"], m)
        assign(state["exp_inf"], u)
        assign(p, p - s["clr"] * (m / u))


class NAdam(Optimizer):
    """Adam with Nesterov momentum and Dozat's momentum schedule mu_t = beta1 (1 - 0.96^(t psi) / 2)
    (psi: `momentum_decay`), optionally with decoupled weight decay, as torch.optim.NAdam.

    The running product mu_1 ... mu_t is state; torch keeps it per parameter in a scalar of the
    default float dtype (float32, Avalon's fixed default), rounding it at every step, and so does
    this: one per group and step class (whose parameters took the same steps, so have the same
    product), for the default class next to the group's hyperparameters ("param_groups.{i}.mu_product"
    in `state_dict()`), for another in the class ("state.{name}.mu_product")."""

    _floats = ("lr", "betas", "eps", "weight_decay", "momentum_decay")
    _flags = ("decoupled_weight_decay", "maximize")
    _slots = ("exp_avg", "exp_avg_sq")
    _repr_keys = ("betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay")
    betas = _option("betas")
    eps = _option("eps")
    weight_decay = _option("weight_decay")
    momentum_decay = _option("momentum_decay")

    def __init__(self, params: Any, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                                      foreach=foreach, maximize=maximize, capturable=capturable,
                                      differentiable=differentiable))

    _rules = Adam._rules  # weight decay on or off; which of lerp's formulas the first moment takes
    _class_state = {"mu_product": 1.0}

    def _add_group(self, group: dict[str, Any]) -> None:
        super()._add_group(group)
        self.hyperparameters[-1]["mu_product"] = _scalar_buffer(1.0, dt.float32, self.step_count.device)

    def _step_scalars(self, t, h, st, opts):
        b1, b2, lr, md = h["beta1"], h["beta2"], h["lr"], h["momentum_decay"]
        mu = b1 * (1.0 - 0.5 * ops.pow(0.96, t * md))
        mu_next = b1 * (1.0 - 0.5 * ops.pow(0.96, (t + 1.0) * md))
        prod = h["mu_product"] * ops.cast(mu, h["mu_product"].dtype)  # in float32, as torch's `mu_product *= mu`
        assign(h["mu_product"], prod)
        prod = ops.cast(prod, dt.float64)
        w1 = 1.0 - b1
        s = {"c_grad": -lr * (1.0 - mu) / (1.0 - prod), "c_avg": (-lr * mu_next) / (1.0 - prod * mu_next),
             "bc2": 1.0 - ops.pow(b2, t), "w1": w1, "w1c": 1.0 - w1, "b2": b2, "w2": 1.0 - b2, "eps": h["eps"]}
        return _with_decay(s, st, opts, lr, h)

    def _update(self, p, g, state, s, st, opts):
        pv, g = _decayed(p, g, s, st, opts)
        m, v = _moments(state, g, s, st)
        denom = ops.sqrt(v / s["bc2"]) + s["eps"]
        pv = pv + s["c_grad"] * (g / denom)
        assign(p, pv + s["c_avg"] * (m / denom))


class RAdam(Optimizer):
    """Rectified Adam (Liu et al.), optionally with decoupled weight decay, as torch.optim.RAdam.

    torch branches on the step (the rectification applies once the SMA length rho_t exceeds 5; before,
    the step is plain momentum SGD); here that choice is a select on step-count scalars, so one
    traced step serves every step."""

    _floats = ("lr", "betas", "eps", "weight_decay")
    _flags = ("decoupled_weight_decay", "maximize")
    _slots = ("exp_avg", "exp_avg_sq")
    _repr_keys = ("betas", "eps", "weight_decay", "decoupled_weight_decay")
    betas = _option("betas")
    eps = _option("eps")
    weight_decay = _option("weight_decay")

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, foreach=foreach,
                                      maximize=maximize, capturable=capturable, differentiable=differentiable))

    _rules = Adam._rules  # weight decay on or off; which of lerp's formulas the first moment takes

    def _step_scalars(self, t, h, st, opts):
        b1, b2, lr = h["beta1"], h["beta2"], h["lr"]
        bc1, bc2 = 1.0 - ops.pow(b1, t), 1.0 - ops.pow(b2, t)
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho_t = rho_inf - 2.0 * t * ops.pow(b2, t) / bc2
        rect = ops.gt(rho_t, 5.0)
        safe = ops.where(rect, rho_t, 6.0)  # the rectifier's formula, kept finite where it is not used
        r = ops.sqrt((safe - 4.0) * (safe - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * safe))
        w1 = 1.0 - b1
        s = {"bc1": bc1, "lr": lr, "r": r, "rect": ops.cast(rect, dt.float64), "bc2_sqrt": ops.sqrt(bc2),
             "w1": w1, "w1c": 1.0 - w1, "b2": b2, "w2": 1.0 - b2, "eps": h["eps"]}
        return _with_decay(s, st, opts, lr, h)

    def _update(self, p, g, state, s, st, opts):
        pv, g = _decayed(p, g, s, st, opts)
        m, v = _moments(state, g, s, st)
        step = m / s["bc1"] * s["lr"]
        adaptive = s["bc2_sqrt"] / (ops.sqrt(v) + s["eps"])
        step = ops.where(ops.gt(s["rect"], 0.5), step * adaptive * s["r"], step)
        assign(p, pv - step)


from . import lr_scheduler  # noqa: E402  (it imports Optimizer from here)


def _with_decay(s: dict, st: dict, opts: dict, lr: Any, h: dict) -> dict:
    """NAdam's and RAdam's weight decay scalars: decoupled (p * (1 - lr wd)) or L2 (g + wd p)."""
    if st["weight_decay"]:
        if opts["decoupled_weight_decay"]:
            s["decay"] = 1.0 - lr * h["weight_decay"]
        else:
            s["weight_decay"] = h["weight_decay"]
    return s


def _decayed(p: Any, g: Any, s: dict, st: dict, opts: dict) -> tuple[Any, Any]:
    """(the parameter to update, the gradient) after weight decay, as `_with_decay` set it up."""
    if st["weight_decay"]:
        if opts["decoupled_weight_decay"]:
            return p * s["decay"], g
        return p, g + s["weight_decay"] * p
    return p, g


def _moments(state: dict, g: Any, s: dict, st: dict) -> tuple[Any, Any]:
    """Adam's first and second moments updated (and written back into the state)."""
    m = _lerp(state["exp_avg"], g, s["w1"], s["w1c"], st["lerp_low"])
    v = state["exp_avg_sq"] * s["b2"] + s["w2"] * (g * g)
    assign(state["exp_avg"], m)
    assign(state["exp_avg_sq"], v)
    return m, v


from . import swa_utils  # noqa: E402  (SWA/EMA weight averaging; it imports lr_scheduler)
from .adadelta import Adadelta  # noqa: E402  (they import Optimizer from here)
from .adafactor import Adafactor  # noqa: E402
from .asgd import ASGD  # noqa: E402
from .lbfgs import LBFGS  # noqa: E402
from .muon import Muon  # noqa: E402
from .rprop import Rprop  # noqa: E402
from .sparse_adam import SparseAdam  # noqa: E402
