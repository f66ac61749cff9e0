"""`torch.nn.utils.prune`: zero chosen entries of a module's tensor with a mask, keeping the rest trained.

Pruning `weight` moves the tensor to the parameter `weight_orig`, adds the buffer `weight_mask`
(torch's state-dict layout) and gives the module a generated subclass (`PrunedLinear`) whose
`weight` is a class-level property computing `weight_orig * weight_mask` on every access. torch
sets a plain `module.weight` attribute from a forward pre-hook; in Avalon a float attribute IS a
parameter, so the property keeps the computed tensor out of the attribute walk: parameters,
gradients, optimizers and traces see `weight_orig` only, and gradients reach it masked.

Masks are computed eagerly (numpy, outside traced code) with torch's rules; random masks come from
Avalon's generator (`av.manual_seed`), so they have torch's counts and structure, not its draws.
"""
from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..grad_mode import no_grad
from ..tensor import Tensor
from .parametrize import _forget_buffer, _set, deepcopy_with_own_class

__all__ = ["BasePruningMethod", "CustomFromMask", "Identity", "L1Unstructured", "LnStructured", "PruningContainer",
           "RandomStructured", "RandomUnstructured", "custom_from_mask", "global_unstructured", "identity",
           "is_pruned", "l1_unstructured", "ln_structured", "random_structured", "random_unstructured", "remove"]

_METHODS = "__pruning_methods__"
"""The key, in a module's `__dict__`, of its {tensor name: pruning method} (torch keeps them among its
forward pre-hooks). A dunder name: the attribute walk skips it, so a method's tensors (CustomFromMask's
mask) are neither parameters nor state."""


def _np(t: Any) -> np.ndarray:
    """An eager tensor's values (masks are computed outside traced code, as torch's are)."""
    if isinstance(t, Tensor):
        if t.is_traced:
            raise RuntimeError("prune: masks are computed eagerly; prune the module outside compiled/traced code")
        return t.detach().numpy()
    return np.asarray(t)


def _like(a: np.ndarray, like: Tensor) -> Tensor:
    """`a` as a tensor of `like`'s dtype and device."""
    return Tensor(np.asarray(a), dtype=like.dtype, device=like.device)


# -- amounts (torch's checks and messages) --------------------------------------------------------

def _validate_pruning_amount_init(amount: Any) -> None:
    if not isinstance(amount, numbers.Real):
        raise TypeError(f"Invalid type for amount: {amount}. Must be int or float.")
    if (isinstance(amount, numbers.Integral) and amount < 0) or (
            not isinstance(amount, numbers.Integral) and (float(amount) > 1.0 or float(amount) < 0.0)):
        raise ValueError(f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer")


def _validate_pruning_amount(amount: Any, tensor_size: int) -> None:
    if isinstance(amount, numbers.Integral) and amount > tensor_size:
        raise ValueError(f"amount={amount} should be smaller than the number of parameters to prune={tensor_size}")


def _validate_structured_pruning(t: Any) -> None:
    shape = tuple(t.shape)
    if len(shape) <= 1:
        raise ValueError("Structured pruning can only be applied to multidimensional tensors. "
                         f"Found tensor of shape {shape} with {len(shape)} dims")


def _validate_pruning_dim(t: Any, dim: int) -> None:
    if dim >= len(t.shape):
        raise IndexError(f"Invalid index {dim} for tensor of size {tuple(t.shape)}")


def _compute_nparams_toprune(amount: Any, tensor_size: int) -> int:
    """An int is a count; a float a fraction, rounded with Python's `round` as torch does."""
    if isinstance(amount, numbers.Integral):
        return int(amount)
    return round(amount * tensor_size)


def _compute_norm(t: np.ndarray, n: Any, dim: int) -> np.ndarray:
    """The n-norm of each slice of `t` along `dim` (torch.norm over the other dims)."""
    axes = tuple(d for d in range(t.ndim) if d != dim % t.ndim)
    a = np.abs(t)
    if n == "fro" or n == 2:
        return np.sqrt((a * a).sum(axis=axes))
    if n == np.inf:
        return a.max(axis=axes)
    if n == -np.inf:
        return a.min(axis=axes)
    if n == 0:
        return (a != 0).sum(axis=axes).astype(t.dtype)
    if isinstance(n, str):
        raise ValueError(f"ln_structured: unsupported norm n={n!r} (a number, inf, -inf or 'fro')")
    return (a ** n).sum(axis=axes) ** (1.0 / n)


def _rand(n: int) -> np.ndarray:
    """n uniform draws from Avalon's generator (`av.manual_seed`)."""
    from ..ops.creation import rand
    return rand(n, dtype="float64").numpy()


# -- methods --------------------------------------------------------------------------------------

class BasePruningMethod(ABC):
    """torch's base class: `compute_mask(t, default_mask)` says which entries to keep; `apply`
    prunes a module's tensor with it (combining with an earlier pruning through PruningContainer)."""

    _tensor_name: str | None = None
    PRUNING_TYPE: str = "unstructured"

    def __call__(self, module: Any, inputs: Any = None) -> None:
        """torch's forward pre-hook: nothing to do here, the property computes the tensor on access."""
        return None

    @abstractmethod
    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        """The new mask (same shape as `t`): `default_mask` with more entries zeroed."""

    def apply_mask(self, module: Any) -> Tensor:
        """`name_orig * name_mask`, what `module.name` reads (traceable: gradients reach `_orig`)."""
        if self._tensor_name is None:
            raise AssertionError(f"Module {module} has to be pruned")
        mask = getattr(module, self._tensor_name + "_mask")
        orig = getattr(module, self._tensor_name + "_orig")
        return mask.to(orig.dtype) * orig

    @classmethod
    def apply(cls, module: Any, name: str, *args: Any, importance_scores: Any = None, **kwargs: Any) -> Any:
        """Prune `module.<name>` with `cls(*args, **kwargs)`, after any earlier pruning of that name
        (a PruningContainer then holds both); the mask is ranked by `importance_scores` when given."""
        orig = getattr(module, name)
        methods = module.__dict__.setdefault(_METHODS, {})
        old = methods.pop(name, None)
        method = cls(*args, **kwargs)
        method._tensor_name = name
        if isinstance(old, PruningContainer):
            old.add_pruning_method(method)
            method = old
        elif old is not None:
            container = PruningContainer(old)
            container.add_pruning_method(method)
            method = container
        if importance_scores is not None:
            if tuple(importance_scores.shape) != tuple(orig.shape):
                raise AssertionError(f"importance_scores should have the same shape as parameter {name} of {module}")
        else:
            importance_scores = orig
        first = old is None
        if first:
            if not isinstance(module.__dict__.get(name), Tensor):
                if not methods:
                    del module.__dict__[_METHODS]
                raise AttributeError(f"Module '{type(module).__name__}' has no parameter named '{name}' to prune")
            with no_grad():
                default_mask = Tensor(np.ones(tuple(orig.shape)), dtype=orig.dtype, device=orig.device)
        else:
            default_mask = _like(_np(getattr(module, name + "_mask")).copy(), orig)
        try:
            with no_grad():
                mask = method.compute_mask(importance_scores, default_mask=default_mask)
            mask = _like(_np(mask), orig)
        except Exception:
            if old is not None:
                methods[name] = old
            elif not methods:
                del module.__dict__[_METHODS]
            raise
        if first:
            del module.__dict__[name]
            _inject_property(module, name)
            setattr(module, name + "_orig", orig)
        module.register_buffer(name + "_mask", mask)
        methods[name] = method
        return method

    def prune(self, t: Tensor, default_mask: Tensor | None = None, importance_scores: Tensor | None = None) -> Tensor:
        """`t` times its mask (a new tensor; the module is not touched)."""
        if importance_scores is not None:
            if tuple(importance_scores.shape) != tuple(t.shape):
                raise AssertionError("importance_scores should have the same shape as tensor t")
        else:
            importance_scores = t
        if default_mask is None:
            default_mask = _like(np.ones(tuple(t.shape)), t)
        with no_grad():
            mask = self.compute_mask(importance_scores, default_mask=default_mask)
        return t * _like(_np(mask), t)

    def remove(self, module: Any) -> None:
        """Make `module.<name>` a plain parameter holding the pruned values: the `_orig` tensor
        object itself (so optimizers holding it keep working), `_orig` and `_mask` deleted."""
        name = self._tensor_name
        if name is None:
            raise AssertionError(f"Module {module} has to be pruned before pruning can be removed")
        with no_grad():
            weight = self.apply_mask(module)
        orig = module.__dict__[name + "_orig"]
        _set(orig, weight)
        del module.__dict__[name + "_orig"]
        del module.__dict__[name + "_mask"]
        _forget_buffer(module, name + "_mask")
        cls = _pruned_class(module)
        if cls is not None and name in cls.__dict__:
            delattr(cls, name)
        module.__dict__.get(_METHODS, {}).pop(name, None)
        setattr(module, name, orig)
        if not module.__dict__.get(_METHODS):
            module.__dict__.pop(_METHODS, None)
            if cls is not None and type(module) is cls:
                module.__class__ = cls._pruned_from


class PruningContainer(BasePruningMethod):
    """The pruning methods applied, in order, to one tensor: each new one prunes only the entries
    (unstructured) or the slices (structured) the earlier ones left."""

    def __init__(self, *args: Any) -> None:
        self._pruning_methods: tuple[BasePruningMethod, ...] = ()
        if len(args) == 1:
            self._tensor_name = args[0]._tensor_name
            self.add_pruning_method(args[0])
        else:
            for method in args:
                self.add_pruning_method(method)

    def add_pruning_method(self, method: BasePruningMethod | None) -> None:
        if not isinstance(method, BasePruningMethod) and method is not None:
            raise TypeError(f"{type(method)} is not a BasePruningMethod subclass")
        if method is not None and self._tensor_name != method._tensor_name:
            raise ValueError(f"Can only add pruning methods acting on the parameter named '{self._tensor_name}' "
                             f"to PruningContainer {self}. Found '{method._tensor_name}'")
        self._pruning_methods += (method,)  # type: ignore[operator]

    def __len__(self) -> int:
        return len(self._pruning_methods)

    def __iter__(self) -> Iterator[BasePruningMethod]:
        return iter(self._pruning_methods)

    def __getitem__(self, idx: int) -> BasePruningMethod:
        return self._pruning_methods[idx]

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        """The last method's mask computed on what the mask so far keeps, merged into it (torch's
        `_combine_masks`)."""
        method = self._pruning_methods[-1]
        tn, mask = _np(t), _np(default_mask)
        new_mask = mask.astype(tn.dtype).copy()
        if method.PRUNING_TYPE == "unstructured":
            slc: Any = mask == 1
        elif method.PRUNING_TYPE == "structured":
            if not hasattr(method, "dim"):
                raise AttributeError("Pruning methods of PRUNING_TYPE 'structured' need to have the attribute `dim` "
                                     "defined.")
            n_dims = tn.ndim
            dim = method.dim
            if dim < 0:
                dim = n_dims + dim
            if dim < 0:
                raise IndexError(f"Index is out of bounds for tensor of size {tn.shape}")
            keep_channel = mask.sum(axis=tuple(d for d in range(n_dims) if d != dim)) != 0
            slc = [slice(None)] * n_dims
            slc[dim] = keep_channel
            slc = tuple(slc)
        elif method.PRUNING_TYPE == "global":
            slc = (slice(None),) * tn.ndim
        else:
            raise ValueError(f"Unrecognized PRUNING_TYPE {method.PRUNING_TYPE}")
        like = t if isinstance(t, Tensor) else default_mask
        partial = method.compute_mask(_like(tn[slc], like), default_mask=_like(mask[slc], like))
        new_mask[slc] = _np(partial).astype(new_mask.dtype)
        return _like(new_mask, like)


class NoPruning(BasePruningMethod):
    """Prunes nothing: a mask of ones (to give a module torch's pruned layout). torch's
    `prune.Identity`, under that name below (a class of its own name would read as `nn.Identity`)."""

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        return default_mask

    @classmethod
    def apply(cls, module: Any, name: str) -> Any:  # type: ignore[override]
        return super().apply(module, name)


Identity = NoPruning


class RandomUnstructured(BasePruningMethod):
    """Zero `amount` entries (a count, or a fraction) chosen at random."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount: int | float) -> None:
        _validate_pruning_amount_init(amount)
        self.amount = amount

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        size = int(np.prod(tuple(t.shape), dtype=np.int64))
        k = _compute_nparams_toprune(self.amount, size)
        _validate_pruning_amount(k, size)
        mask = _np(default_mask).copy()
        if k != 0:
            prob = _rand(size)
            mask.reshape(-1)[np.argsort(-prob, kind="stable")[:k]] = 0
        return _like(mask, default_mask)

    @classmethod
    def apply(cls, module: Any, name: str, amount: int | float) -> Any:  # type: ignore[override]
        return super().apply(module, name, amount=amount)


class L1Unstructured(BasePruningMethod):
    """Zero the `amount` entries of smallest absolute value."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount: int | float) -> None:
        _validate_pruning_amount_init(amount)
        self.amount = amount

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        tn = _np(t)
        k = _compute_nparams_toprune(self.amount, tn.size)
        _validate_pruning_amount(k, tn.size)
        mask = _np(default_mask).copy()
        if k != 0:
            mask.reshape(-1)[np.argsort(np.abs(tn).reshape(-1), kind="stable")[:k]] = 0
        return _like(mask, default_mask)

    @classmethod
    def apply(cls, module: Any, name: str, amount: int | float,  # type: ignore[override]
              importance_scores: Any = None) -> Any:
        return super().apply(module, name, amount=amount, importance_scores=importance_scores)


class RandomStructured(BasePruningMethod):
    """Zero `amount` whole slices along `dim` (channels), chosen at random."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount: int | float, dim: int = -1) -> None:
        _validate_pruning_amount_init(amount)
        self.amount = amount
        self.dim = dim

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        nch, k = _structured_count(t, self.amount, self.dim)
        if k == 0:
            return default_mask
        prob = _rand(nch)
        keep = np.zeros(nch, dtype=bool)
        keep[np.argsort(prob, kind="stable")[k:]] = True
        return _like(_slice_mask(tuple(t.shape), self.dim, keep) * _np(default_mask), default_mask)

    @classmethod
    def apply(cls, module: Any, name: str, amount: int | float, dim: int = -1) -> Any:  # type: ignore[override]
        return super().apply(module, name, amount=amount, dim=dim)


def _structured_count(t: Tensor, amount: int | float, dim: int) -> tuple[int, int]:
    """(slices along `dim`, how many of them to prune), checked as torch checks them."""
    _validate_structured_pruning(t)
    _validate_pruning_dim(t, dim)
    nch = int(t.shape[dim])
    k = _compute_nparams_toprune(amount, nch)
    _validate_pruning_amount(k, nch)
    return nch, k


def _slice_mask(shape: tuple[int, ...], dim: int, keep: np.ndarray) -> np.ndarray:
    """Ones in the slices along `dim` that `keep` (an index array or boolean vector) selects."""
    mask = np.zeros(shape)
    slc: list[Any] = [slice(None)] * len(shape)
    slc[dim] = keep
    mask[tuple(slc)] = 1
    return mask


class LnStructured(BasePruningMethod):
    """Zero the `amount` slices along `dim` of smallest n-norm (`n`: a number, inf, -inf or 'fro')."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount: int | float, n: Any, dim: int = -1) -> None:
        _validate_pruning_amount_init(amount)
        self.amount = amount
        self.n = n
        self.dim = dim

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        nch, k = _structured_count(t, self.amount, self.dim)
        if k == 0:
            return default_mask
        norm = _compute_norm(_np(t), self.n, self.dim)
        keep = np.argsort(-norm, kind="stable")[:nch - k]
        return _like(_slice_mask(tuple(t.shape), self.dim, keep) * _np(default_mask), default_mask)

    @classmethod
    def apply(cls, module: Any, name: str, amount: int | float, n: Any, dim: int,  # type: ignore[override]
              importance_scores: Any = None) -> Any:
        return super().apply(module, name, amount=amount, n=n, dim=dim, importance_scores=importance_scores)


class CustomFromMask(BasePruningMethod):
    """Prune with a given mask (0 = pruned), combined with any earlier mask."""

    PRUNING_TYPE = "global"

    def __init__(self, mask: Any) -> None:
        self.mask = mask

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        if tuple(default_mask.shape) != tuple(np.shape(_np(self.mask))):
            raise AssertionError(f"mask of shape {tuple(np.shape(_np(self.mask)))} does not match the tensor's "
                                 f"shape {tuple(default_mask.shape)}")
        return _like(_np(default_mask) * _np(self.mask), default_mask)

    @classmethod
    def apply(cls, module: Any, name: str, mask: Any) -> Any:  # type: ignore[override]
        return super().apply(module, name, mask=mask)


# -- the generated class --------------------------------------------------------------------------

def _pruned_class(module: Any) -> type | None:
    for cls in type(module).__mro__:
        if "_pruned_from" in cls.__dict__:
            return cls
    return None


_deepcopy = deepcopy_with_own_class("_pruned_from")


def _inject_property(module: Any, name: str) -> None:
    """`module.<name>` becomes its pruning method's `apply_mask` (orig * mask), computed on access."""
    cls = _pruned_class(module)
    if cls is None:
        base = module.__class__
        dct: dict[str, Any] = {"_pruned_from": base, "__module__": base.__module__}
        if not hasattr(base, "__deepcopy__"):
            dct["__deepcopy__"] = _deepcopy
        cls = module.__class__ = type(f"Pruned{base.__name__}", (base,), dct)

    def get_pruned(self: Any) -> Tensor:
        return self.__dict__[_METHODS][name].apply_mask(self)

    setattr(cls, name, property(get_pruned, doc=f"{name}_orig * {name}_mask (torch.nn.utils.prune)"))


# -- functions ------------------------------------------------------------------------------------

def identity(module: Any, name: str) -> Any:
    """torch's layout (`name_orig`, `name_mask` of ones) without pruning anything."""
    Identity.apply(module, name)
    return module


def random_unstructured(module: Any, name: str, amount: int | float) -> Any:
    """Prune `amount` random entries of `module.<name>`."""
    RandomUnstructured.apply(module, name, amount)
    return module


def l1_unstructured(module: Any, name: str, amount: int | float, importance_scores: Any = None) -> Any:
    """Prune the `amount` entries of `module.<name>` (or `importance_scores`) of smallest |value|."""
    L1Unstructured.apply(module, name, amount=amount, importance_scores=importance_scores)
    return module


def random_structured(module: Any, name: str, amount: int | float, dim: int) -> Any:
    """Prune `amount` random slices of `module.<name>` along `dim`."""
    RandomStructured.apply(module, name, amount, dim)
    return module


def ln_structured(module: Any, name: str, amount: int | float, n: Any, dim: int, importance_scores: Any = None) -> Any:
    """Prune the `amount` slices of `module.<name>` along `dim` of smallest n-norm."""
    LnStructured.apply(module, name, amount, n, dim, importance_scores=importance_scores)
    return module


def custom_from_mask(module: Any, name: str, mask: Any) -> Any:
    """Prune `module.<name>` with `mask` (0 = pruned)."""
    CustomFromMask.apply(module, name, mask)
    return module


def global_unstructured(parameters: Iterable[tuple[Any, str]], pruning_method: type, importance_scores: Any = None,
                        **kwargs: Any) -> None:
    """Prune the (module, name) tensors together: an unstructured method ranks all their entries
    as one vector (so `amount` counts across them), each then pruned with its slice of the mask."""
    if not isinstance(parameters, Iterable):
        raise TypeError("global_unstructured(): parameters is not an Iterable")
    parameters = list(parameters)
    importance_scores = importance_scores if importance_scores is not None else {}
    if not isinstance(importance_scores, dict):
        raise TypeError("global_unstructured(): importance_scores must be of type dict")
    scores = np.concatenate([_np(importance_scores.get((m, n), getattr(m, n))).reshape(-1) for m, n in parameters])
    masks = [_np(getattr(m, n + "_mask")) if hasattr(m, n + "_mask") else np.ones(tuple(getattr(m, n).shape))
             for m, n in parameters]
    default_mask = np.concatenate([x.reshape(-1) for x in masks])
    method = pruning_method(**kwargs)
    method._tensor_name = "temp"
    if method.PRUNING_TYPE != "unstructured":
        raise TypeError('Only "unstructured" PRUNING_TYPE supported for the `pruning_method`. '
                        f"Found method {pruning_method} of type {method.PRUNING_TYPE}")
    container = PruningContainer(method)
    like = getattr(*parameters[0]) if parameters else Tensor(scores)
    final = _np(container.compute_mask(_like(scores, like), _like(default_mask, like)))
    pointer = 0
    for module, name in parameters:
        param = getattr(module, name)
        num = int(np.prod(tuple(param.shape), dtype=np.int64))
        custom_from_mask(module, name, mask=final[pointer:pointer + num].reshape(tuple(param.shape)))
        pointer += num


def remove(module: Any, name: str) -> Any:
    """Make the pruning of `module.<name>` permanent: a plain parameter holding the pruned values."""
    method = getattr(module, "__dict__", {}).get(_METHODS, {}).get(name)
    if method is None:
        raise ValueError(f"Parameter '{name}' of module {module} has to be pruned before pruning can be removed")
    method.remove(module)
    return module


def is_pruned(module: Any) -> bool:
    """Whether `module` or any of its submodules has a pruned tensor."""
    from .module import named_modules
    return any(getattr(m, "__dict__", {}).get(_METHODS) for _, m in named_modules(module))
