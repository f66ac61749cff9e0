"""Element types. One small closed set, each knowing its numpy twin and its MLIR spelling."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str  # MLIR spelling: f32, i64, i1
    np_name: str  # numpy spelling; bf16 has no numpy type and is stored as float32 on the CPU
    is_float: bool
    rank: int  # promotion order

    @property
    def np(self) -> np.dtype:
        return np.dtype(self.np_name)

    @property
    def is_int(self) -> bool:
        return not self.is_float and self.name != "i1"

    @property
    def itemsize(self) -> int:
        return {"f16": 2, "bf16": 2, "f32": 4, "f64": 8, "i32": 4, "i64": 8, "i1": 1}[self.name]

    def __repr__(self) -> str:
        return f"av.{PY_NAMES[self.name]}"

    def __str__(self) -> str:
        return self.name


bool_ = DType("i1", "bool", False, 0)
int32 = DType("i32", "int32", False, 1)
int64 = DType("i64", "int64", False, 2)
float16 = DType("f16", "float16", True, 3)
bfloat16 = DType("bf16", "float32", True, 4)
float32 = DType("f32", "float32", True, 5)
float64 = DType("f64", "float64", True, 6)

ALL = (bool_, int32, int64, float16, bfloat16, float32, float64)
BY_NAME = {d.name: d for d in ALL}
PY_NAMES = {"i1": "bool", "i32": "int32", "i64": "int64", "f16": "float16", "bf16": "bfloat16",
            "f32": "float32", "f64": "float64"}
_ALIASES = {"bool": bool_, "int32": int32, "int64": int64, "float16": float16, "half": float16,
            "bfloat16": bfloat16, "float32": float32, "float": float32, "float64": float64,
            "double": float64}


def dtype(x) -> DType:
    """Coerce a DType, its name ('f32', 'float32'), a numpy dtype or a torch dtype to a DType."""
    if isinstance(x, DType):
        return x
    if isinstance(x, str):
        if x in BY_NAME:
            return BY_NAME[x]
        if x in _ALIASES:
            return _ALIASES[x]
        raise TypeError(f"unknown dtype {x!r}; known: {', '.join(BY_NAME)}")
    if x is bool:
        return bool_
    if x is int:
        return int64
    if x is float:
        return float32
    s = str(x)
    if s.startswith("torch."):
        return dtype(s[len("torch."):])
    try:
        npd = np.dtype(x)
    except TypeError:
        raise TypeError(f"cannot interpret {x!r} as an Avalon dtype") from None
    for d in ALL:
        if d.np == npd and d is not bfloat16:
            return d
    raise TypeError(f"numpy dtype {npd} has no Avalon equivalent; use one of {', '.join(BY_NAME)}")


def promote(a: DType, b: DType) -> DType:
    """The wider of two dtypes (bool < i32 < i64 < f16 < bf16 < f32 < f64); f16 with bf16 is f32,
    as in torch (neither holds the other)."""
    if {a.name, b.name} == {"f16", "bf16"}:
        return float32
    return a if a.rank >= b.rank else b
