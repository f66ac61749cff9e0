"""torch.finfo and torch.iinfo: the numerical limits of a dtype, as model code reads them
(`torch.finfo(x.dtype).min` for an additive attention mask, `.eps` for a clamp), with torch's fields."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import dtypes as dt
from .creation import get_default_dtype

_BF16 = {"bits": 16, "eps": 2.0 ** -7, "max": float.fromhex("0x1.fep127"), "smallest_normal": 2.0 ** -126,
         "resolution": 0.01}


class finfo:  # noqa: N801 - torch's name
    """torch.finfo(dtype): bits, eps, max, min, tiny (= smallest_normal), resolution and dtype (its name) of a
    floating-point dtype; of the default dtype without one."""

    __slots__ = ("bits", "eps", "max", "min", "tiny", "smallest_normal", "resolution", "dtype")

    def __init__(self, type: Any = None):  # noqa: A002 - torch's argument name
        d = get_default_dtype() if type is None else dt.dtype(type)
        if not d.is_float:
            raise TypeError("torch.finfo() requires a floating point input type. Use torch.iinfo to handle "
                            f"'{dt.PY_NAMES[d.name]}'")
        if d is dt.bfloat16:
            v = _BF16
        else:
            f = np.finfo(d.np)
            v = {"bits": f.bits, "eps": float(f.eps), "max": float(f.max), "smallest_normal": float(f.smallest_normal),
                 "resolution": 10.0 ** -f.precision}
        self.bits, self.eps, self.max, self.min = int(v["bits"]), v["eps"], v["max"], -v["max"]
        self.tiny = self.smallest_normal = v["smallest_normal"]
        self.resolution, self.dtype = v["resolution"], dt.PY_NAMES[d.name]

    def __repr__(self) -> str:
        return (f"finfo(resolution={self.resolution:g}, min={self.min:g}, max={self.max:g}, eps={self.eps:g}, "
                f"smallest_normal={self.smallest_normal:g}, tiny={self.tiny:g}, dtype={self.dtype})")


class iinfo:  # noqa: N801 - torch's name
    """torch.iinfo(dtype): bits, min, max and dtype (its name) of an integer dtype."""

    __slots__ = ("bits", "min", "max", "dtype")

    def __init__(self, type: Any):  # noqa: A002 - torch's argument name
        d = dt.dtype(type)
        if d is dt.bool_:
            raise TypeError("torch.bool is not supported by torch.iinfo")
        if not d.is_int:
            raise TypeError("torch.iinfo() requires an integer input type. Use torch.finfo to handle "
                            f"'{dt.PY_NAMES[d.name]}'")
        i = np.iinfo(d.np)
        self.bits, self.min, self.max, self.dtype = int(i.bits), int(i.min), int(i.max), dt.PY_NAMES[d.name]

    def __repr__(self) -> str:
        return f"iinfo(min={self.min:g}, max={self.max:g}, dtype={self.dtype})"
