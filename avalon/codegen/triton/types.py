"""How IR element types appear in kernels and in torch storage.

Kernels compute f16 and bf16 in f32 (loads widen, stores round): Triton's interpreter cannot do bf16
arithmetic at all, and the reference rounds once per op from f32 too, so this is also the
numerically closer choice.
"""
from __future__ import annotations

import math

import torch

from avalon.ir import dtypes as dt
from avalon.ir.dtypes import DType

TL = {"i1": "tl.int1", "ui8": "tl.uint8", "i8": "tl.int8", "i16": "tl.int16", "i32": "tl.int32", "i64": "tl.int64",
      "f16": "tl.float16", "bf16": "tl.bfloat16", "f32": "tl.float32", "f64": "tl.float64"}
TORCH = {"i1": torch.bool, "ui8": torch.uint8, "i8": torch.int8, "i16": torch.int16, "i32": torch.int32,
         "i64": torch.int64, "f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32, "f64": torch.float64}
# triton.compile signature spelling of a pointer to each dtype
POINTER = {"i1": "*i1", "ui8": "*u8", "i8": "*i8", "i16": "*i16", "i32": "*i32", "i64": "*i64", "f16": "*fp16",
           "bf16": "*bf16", "f32": "*fp32", "f64": "*fp64"}


def tl_type(d: DType) -> str:
    return TL[d.name]


def compute(d: DType) -> DType:
    """The dtype a kernel holds values of IR dtype `d` in."""
    return dt.float32 if d in (dt.float16, dt.bfloat16) else d


def tl_compute(d: DType) -> str:
    return TL[compute(d).name]


def from_torch(t: torch.dtype) -> DType:
    for k, v in TORCH.items():
        if v == t:
            return dt.BY_NAME[k]
    raise TypeError(f"torch dtype {t} has no Avalon equivalent")


def literal(value, d: DType) -> str:
    """A Python literal for `value` converted to dtype `d` (nan/inf spelled so Triton accepts them)."""
    if d == dt.bool_:
        return "1" if bool(value) else "0"
    if not d.is_float:
        return str(int(value))
    v = float(value)
    if math.isnan(v):
        return 'float("nan")'
    if math.isinf(v):
        return 'float("inf")' if v > 0 else 'float("-inf")'
    return repr(v)


def lowest(d: DType) -> str:
    """The identity of max over dtype `d`, as a literal."""
    if d.is_float:
        return 'float("-inf")'
    if d == dt.bool_:
        return "0"
    return str(dt.int_range(d)[0])
