"""Array operations on Tensors, numpy arrays and Python scalars, under numpy's and torch's names.

`core` binds the primitives with broadcasting and dtype promotion made explicit; `creation`,
`shaping` and `indexing` add torch's creation, shape/mask and indexing functions over them.
Everything is importable as `avalon.ops.X`, and the torch-named functions also as `avalon.X`."""
from . import core, creation, indexing, shaping
from .core import *  # noqa: F403
from .core import __all__ as _core_all
from .core import bind, dtype_arg, result_dtype, size_args, unsupported
from .creation import *  # noqa: F403
from .creation import __all__ as _creation_all
from .indexing import getitem, setitem
from .shaping import *  # noqa: F403
from .shaping import __all__ as _shaping_all

__all__ = sorted({*_core_all, *_creation_all, *_shaping_all, "getitem", "setitem"})
