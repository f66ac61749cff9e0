"""Array operations on Tensors, numpy arrays and Python scalars, under numpy's and torch's names.

`core` binds the primitives with broadcasting and dtype promotion made explicit; `creation`,
`shaping` and `indexing` add torch's creation, shape/mask and indexing functions over them;
`pointwise`, `reductions`, `contract` (einsum), `sorting` and `scattering` (index_add, scatter_reduce,
...) compose further torch functions from them, and `linalg` is `av.linalg`. Everything is importable
as `avalon.ops.X`, and the torch-named functions also as `avalon.X`."""
from . import contract, core, creation, indexing, linalg, pointwise, reductions, scattering, shaping, sorting
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
from .indexing import getitem, setitem
from .pointwise import *  # noqa: F403
from .pointwise import __all__ as _pointwise_all
from .reductions import *  # noqa: F403
from .reductions import __all__ as _reductions_all
from .scattering import *  # noqa: F403
from .scattering import __all__ as _scatter_all
from .shaping import *  # noqa: F403
from .shaping import __all__ as _shaping_all
from .sorting import *  # noqa: F403
from .sorting import SortResult
from .sorting import __all__ as _sorting_all

__all__ = sorted({*_core_all, *_creation_all, *_pointwise_all, *_reductions_all, *_scatter_all, *_shaping_all,
                  *_sorting_all, "einsum", "getitem", "linalg", "setitem", "SortResult"})
