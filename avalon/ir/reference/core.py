"""The core of the numpy reference: the rule table, `evaluate`, and the dtype plumbing every rule shares.

`REFERENCE[name](attrs, *arrays) -> np.ndarray` computes one op. Rules aim to be obviously correct
first and reasonably fast second. A rule returns *a* numpy array of the right shape; `evaluate`
turns it into the op's exact result type. Call `evaluate` (not the raw rule) whenever the result
must match what the interpreter or a backend produces — the constant folder, for instance.

Conventions shared by every rule (`evaluate` applies them, so rules stay simple):

* Low-precision floats compute in f32 and round once: f16 operands are widened to f32 (exact) before
  the rule runs, and the result is rounded to the result type afterwards. bf16 has no numpy type; it
  is stored as float32 holding bf16-representable values, and results are rounded to bf16 with
  round-to-nearest-even (`round_bf16`). This is what torch and Triton do (compute in f32, round on store).
* Booleans in arithmetic (ops with the `bool_as_int` trait: neg, abs, relu, sign, add, sub, ...) act
  as the integers 0/1 and the result is cast back to i1 (non-zero is true), so `add` is "or",
  `mul` is "and", `sub` is "xor".
* Floating-point errors are IEEE: x/0 = ±inf, log(-1) = nan, overflow = inf; nothing warns.
* Layouts (`TensorType.layout`) do not change values; arrays here are always the logical shape.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from avalon.ir import dtypes as dt
from avalon.ir.registry import OPS, register_table
from avalon.ir.types import TensorType

ReferenceFn = Callable[..., np.ndarray]
"""A reference rule: `fn(attrs, *arrays) -> np.ndarray`."""

REFERENCE: dict[str, ReferenceFn] = register_table("reference", {}, exempt_traits=("region",))
"""op name -> its reference rule; a region op (fusion) runs its body instead, so it needs none."""


def rule(*names: str) -> Callable[[ReferenceFn], ReferenceFn]:
    """Register `fn` as the reference rule of each op in `names`."""
    def deco(fn: ReferenceFn) -> ReferenceFn:
        for n in names:
            REFERENCE[n] = fn
        return fn
    return deco


# ---------------------------------------------------------------------------------------------
# dtype plumbing


def round_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even), returned as float32.

    bf16 is the top 16 bits of an f32, so rounding is integer arithmetic on the bit pattern: add
    0x7FFF plus the lowest kept bit, then clear the low 16 bits. Overflow correctly carries into
    inf. NaNs are kept as quiet NaNs of the same sign (the carry could otherwise turn them into inf).
    """
    x = np.array(x, dtype=np.float32, copy=None, order="C", ndmin=0)
    bits = x.reshape(-1).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    nan = (bits | np.uint32(0x00400000)) & np.uint32(0xFFFF0000)
    return np.where(np.isnan(x.reshape(-1)), nan, rounded).view(np.float32).reshape(x.shape)


def to_result(value: Any, type: TensorType, name: str = "") -> np.ndarray:
    """`value` as an array of exactly `type`'s numpy dtype and shape (bf16 rounded).

    Casts follow numpy's `astype`: float -> int truncates toward zero (like torch; nan/inf or
    out-of-range values give an unspecified integer, as in C), anything -> bool is "non-zero".
    Floats go to the 8- and 16-bit integers through i64, as torch's CPU kernels do, so a value
    past their range but within i64's wraps around as in torch (-1.0 -> uint8 255, 300.0 -> 44).
    """
    a = np.asarray(value)
    want = type.dtype.np
    if a.dtype != want:
        with np.errstate(all="ignore"):
            if a.dtype.kind == "f" and type.dtype in dt.SMALL_INTS:
                a = a.astype(np.int64)
            a = a.astype(want)
    if type.dtype is dt.bfloat16:
        a = round_bf16(a)
    if a.shape != type.shape:
        op = f" of '{name}'" if name else ""
        raise RuntimeError(f"the reference rule{op} produced shape {a.shape}, but the op's type is {type} "
                           "(a pass that set a wrong result type, or a rule that disagrees with its op's "
                           "shape inference)")
    return a



def _widen(name: str, a: np.ndarray) -> np.ndarray:
    if a.dtype == np.float16:
        return a.astype(np.float32)
    if a.dtype == np.bool_ and _bool_as_int(name):
        return a.astype(np.int64)
    return a


def _bool_as_int(name: str) -> bool:
    """Ops declaring the `bool_as_int` trait compute on booleans as the integers 0/1."""
    d = OPS.get(name)
    return d is not None and "bool_as_int" in d.traits


def evaluate(name: str, attrs: dict[str, Any], arrays: Sequence[np.ndarray], result_type: TensorType) -> np.ndarray:
    """Run op `name`'s rule and return a result of exactly `result_type` (see the module docstring)."""
    fn = REFERENCE.get(name)
    if fn is None:
        raise NotImplementedError(f"the numpy reference has no rule for op '{name}'")
    args = [_widen(name, np.asarray(a)) for a in arrays]
    with np.errstate(all="ignore"):
        out = fn(attrs, *args)
    return to_result(out, result_type, name)

