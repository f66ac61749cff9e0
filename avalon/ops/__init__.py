"""Array operations on Tensors, numpy arrays and Python scalars, under numpy's and torch's names.

`core` binds the primitives with broadcasting and dtype promotion made explicit; `creation`,
`shaping` and `indexing` add torch's creation, shape/mask and indexing functions over them;
`pointwise`, `reductions`, `contract` (einsum), `sorting` and `scattering` (index_add, scatter_reduce,
...) compose further torch functions from them, as do `mathfn` (trig, special functions, bitwise),
`stats` (order statistics, scans, nan-reductions), `matrices` (products, factorizations, structured
matrices), `math_more` (inverse hyperbolics, erfc, i0, gcd, frexp, torch's alias names),
`products_more` (addmv, addr, baddbmm, addbmm, aminmax), `specfun` (torch.special's Bessel
functions, zeta, polygamma, erfcx, ndtri, orthogonal polynomials, ...: `avalon.special` names them),
`shapes` (stacking, windows, lookups, dtype queries), `dynamic` (value-dependent shapes: nonzero,
unique, masked_select; eager only),
`tensor_extras` (what Tensor-only methods compute) and `torch_aliases` (torch.clone, normal, range,
the windows, hsplit, the scatters, the torch.X_ in-place functions, ...), `torch_surface` (nonzero_static,
the *_copy view functions, frombuffer, histogramdd, ...); `linalg` is `av.linalg`.
Everything is importable as `avalon.ops.X`, and the torch-named functions also as `avalon.X`."""
import functools
import inspect

from . import (
    contract,
    core,
    creation,
    dynamic,
    indexing,
    linalg,
    math_more,
    mathfn,
    matrices,
    pointwise,
    products_more,
    reductions,
    scattering,
    shapes,
    shaping,
    sorting,
    specfun,
    stats,
    tensor_extras,
    torch_aliases,
    torch_surface,
)
from .contract import einsum
from .core import *  # noqa: F403
from .core import (
    ArgumentError,
    IntegerDivisionError,
    bind,
    check_dim,
    check_dims,
    dtype_arg,
    fail,
    result_dtype,
    size_args,
    unsupported,
)
from .core import __all__ as _core_all
from .creation import *  # noqa: F403
from .creation import __all__ as _creation_all
from .dynamic import *  # noqa: F403
from .dynamic import __all__ as _dynamic_all
from .indexing import getitem, setitem
from .math_more import *  # noqa: F403
from .math_more import __all__ as _math_more_all
from .mathfn import *  # noqa: F403
from .mathfn import __all__ as _mathfn_all
from .matrices import *  # noqa: F403
from .matrices import __all__ as _matrices_all
from .pointwise import *  # noqa: F403
from .pointwise import __all__ as _pointwise_all
from .products_more import *  # noqa: F403
from .products_more import __all__ as _products_more_all
from .reductions import *  # noqa: F403
from .reductions import __all__ as _reductions_all
from .scattering import *  # noqa: F403
from .scattering import __all__ as _scatter_all
from .shapes import *  # noqa: F403
from .shapes import __all__ as _shapes_all
from .shaping import *  # noqa: F403
from .shaping import __all__ as _shaping_all
from .sorting import *  # noqa: F403
from .sorting import SortResult
from .sorting import __all__ as _sorting_all
from .specfun import polygamma
from .stats import *  # noqa: F403
from .stats import __all__ as _stats_all
from .tensor_extras import *  # noqa: F403
from .tensor_extras import __all__ as _tensor_extras_all
from .torch_aliases import *  # noqa: F403
from .torch_aliases import __all__ as _torch_aliases_all
from .torch_surface import *  # noqa: F403
from .torch_surface import __all__ as _torch_surface_all

__all__ = sorted({*_core_all, *_creation_all, *_pointwise_all, *_reductions_all, *_scatter_all, *_shaping_all,
                  *_sorting_all, *_mathfn_all, *_stats_all, *_matrices_all, *_shapes_all, *_dynamic_all,
                  *_tensor_extras_all, *_math_more_all, *_products_more_all, "einsum", "getitem", "linalg",
                  "setitem", "SortResult", "polygamma", *_torch_aliases_all, *_torch_surface_all})


def _numpy_names(fn):
    """`fn` taking numpy's `axis` for its `dim` and `keepdims` for its `keepdim`, as torch's argument parser does for
    every function and Tensor method (`x.repeat_interleave(2, axis=1)`, ConvNeXt-V2's upsample_mask;
    `torch.sort(x, axis=1)`, `x.prod(axis=0, keepdims=True)`); `fn` itself where it names no such parameter or already
    takes both names."""
    import functools
    if getattr(fn, "_numpy_names", False):
        return fn
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn
    names = {old: new for old, new in (("axis", "dim"), ("keepdims", "keepdim")) if new in params and old not in params}
    if not names:
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for old, new in names.items():
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{fn.__name__}() got both '{new}' and its alias '{old}'")
                kwargs[new] = kwargs.pop(old)
        return fn(*args, **kwargs)
    wrapper._numpy_names = True
    return wrapper


def _numpy_names_in(namespace: dict) -> None:
    """Every function in `namespace` (a module's globals) with `_numpy_names`, replaced in its defining module too,
    so that one object stands for each function wherever it is exported (autocast's op lists find it by identity)."""
    import sys
    for name, fn in list(namespace.items()):
        if not inspect.isfunction(fn) or name.startswith("__"):
            continue
        wrapped = _numpy_names(fn)
        if wrapped is fn:
            continue
        namespace[name] = wrapped
        home = sys.modules.get(fn.__module__)
        if home is not None and getattr(home, fn.__name__, None) is fn:
            setattr(home, fn.__name__, wrapped)


_numpy_names_in(globals())


def _requires_grad_checked(fn):
    """`fn` (a creation function taking torch's `requires_grad=`), refusing `requires_grad=True` for a result
    that is not floating point, as torch does (`torch.zeros(2, dtype=torch.int64, requires_grad=True)`):
    Avalon accepted the argument and dropped it, so the port ran on where torch stops."""
    from ..tensor import Tensor

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        if kwargs.get("requires_grad") and isinstance(out, Tensor) and not out.dtype.is_float:
            raise fail(RuntimeError(f"{fn.__name__}(requires_grad=True): Only Tensors of floating point and complex "
                                    f"dtype can require gradients, this one is {out.dtype.name}"))
        return out
    return wrapper


def _requires_grad_in(namespace: dict) -> None:
    """Every public function of `namespace` with a `requires_grad` parameter wrapped by `_requires_grad_checked`,
    in its defining module too (one object per function, as `_numpy_names_in`)."""
    import sys
    for name, fn in list(namespace.items()):
        if not inspect.isfunction(fn) or name.startswith("_"):
            continue
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            continue
        if "requires_grad" not in params:
            continue
        wrapped = _requires_grad_checked(fn)
        namespace[name] = wrapped
        home = sys.modules.get(fn.__module__)
        if home is not None and getattr(home, fn.__name__, None) is fn:
            setattr(home, fn.__name__, wrapped)


_requires_grad_in(globals())
