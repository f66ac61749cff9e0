"""Element types. One small closed set, each knowing its numpy twin and its MLIR spelling.

The integers are torch's: bool (i1), uint8 (ui8), int8 (i8), int16 (i16), int32 (i32), int64 (i64).
Arithmetic on them wraps around modulo 2^bits, as in torch. MLIR's builtin types spell the unsigned
byte `ui8`; the avalon dialect keeps that name, the linalg lowering (whose arith ops need signless
types) stores it as i8 and picks the unsigned op variants (see docs/mlir.md)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str  # MLIR spelling: f32, i64, i1
    np_name: str  # numpy spelling; bf16 has no numpy type and is stored as float32 on the CPU
    is_float: bool
    rank: int  # promotion order

    @cached_property
    def np(self) -> np.dtype:  # cached: every eager op asks (cached_property writes __dict__, frozen or not)
        return np.dtype(self.np_name)

    @property
    def is_floating_point(self) -> bool:
        """torch.dtype's spelling of is_float (ported code reads `x.dtype.is_floating_point`)."""
        return self.is_float

    @property
    def is_complex(self) -> bool:
        """False: a complex dtype is avalon.complex's ComplexDType (its parts have one of these)."""
        return False

    @property
    def is_int(self) -> bool:
        return not self.is_float and self.name != "i1"

    @property
    def is_unsigned(self) -> bool:
        """uint8 (and bool, whose 0/1 are unsigned too)."""
        return self.name in ("ui8", "i1")

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self.name]

    @property
    def bits(self) -> int:
        """Bits per element (1 for bool)."""
        return 1 if self.name == "i1" else 8 * _ITEMSIZE[self.name]

    def __repr__(self) -> str:
        return f"av.{PY_NAMES[self.name]}"

    # One object per dtype, as torch's: code compares dtypes with `is`, and a deepcopied (EMA, target
    # network) or unpickled model must hold the same objects, not equal copies.
    def __copy__(self) -> DType:
        return self

    def __deepcopy__(self, memo: dict) -> DType:
        return self

    def __reduce__(self) -> tuple:
        return dtype, (self.name,)

    def __str__(self) -> str:
        return self.name


_ITEMSIZE = {"f16": 2, "bf16": 2, "f32": 4, "f64": 8, "ui8": 1, "i8": 1, "i16": 2, "i32": 4, "i64": 8, "i1": 1}

bool_ = DType("i1", "bool", False, 0)
uint8 = DType("ui8", "uint8", False, 1)
int8 = DType("i8", "int8", False, 2)
int16 = DType("i16", "int16", False, 3)
int32 = DType("i32", "int32", False, 4)
int64 = DType("i64", "int64", False, 5)
float16 = DType("f16", "float16", True, 6)
bfloat16 = DType("bf16", "float32", True, 7)
float32 = DType("f32", "float32", True, 8)
float64 = DType("f64", "float64", True, 9)

ALL = (bool_, uint8, int8, int16, int32, int64, float16, bfloat16, float32, float64)
INTS = (uint8, int8, int16, int32, int64)
"""The integer dtypes (not bool), narrowest first."""
SMALL_INTS = (uint8, int8, int16)
"""The integers narrower than 32 bits: C, Triton and numpy's sums widen them (torch sums them in int64)."""
BY_NAME = {d.name: d for d in ALL}
PY_NAMES = {"i1": "bool", "ui8": "uint8", "i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64",
            "f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64"}
_ALIASES = {"bool": bool_, "uint8": uint8, "int8": int8, "int16": int16, "short": int16, "int32": int32,
            "int64": int64, "float16": float16, "half": float16,
            "bfloat16": bfloat16, "float32": float32, "float": float32, "float64": float64, "double": float64}


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
    if npd.name == "bfloat16":  # ml_dtypes.bfloat16 (jax, onnx)
        return bfloat16
    for d in ALL:
        if d.np == npd and d is not bfloat16:
            return d
    raise TypeError(f"numpy dtype {npd} has no Avalon equivalent; use one of {', '.join(BY_NAME)}")


def promote(a: DType, b: DType) -> DType:
    """torch.promote_types: the wider of two dtypes (bool < ui8 < i8 < i16 < i32 < i64 < f16 < bf16
    < f32 < f64), except where neither holds the other: f16 with bf16 is f32, ui8 with i8 is i16."""
    if a is b:
        return a
    pair = {a.name, b.name}
    if pair == {"f16", "bf16"}:
        return float32
    if pair == {"ui8", "i8"}:
        return int16
    return a if a.rank >= b.rank else b


def int_range(d: DType) -> tuple[int, int]:
    """The lowest and highest value of an integer dtype (bool: 0, 1)."""
    if d is bool_:
        return 0, 1
    if d.is_unsigned:
        return 0, (1 << d.bits) - 1
    return -(1 << (d.bits - 1)), (1 << (d.bits - 1)) - 1


def wrap(v: int, d: DType) -> int:
    """A Python int wrapped into integer dtype `d`'s range modulo 2^bits, as torch stores an
    out-of-range number into a tensor (`uint8_tensor + 300` adds 44)."""
    lo, _ = int_range(d)
    m = 1 << d.bits
    return (int(v) - lo) % m + lo
