"""MLIR spellings shared by both dialects: tensor types, scalar literals, dense data, locations.

Avalon types print as upstream `tensor<...>` types; a layout (a memory order, not a value
change) has no upstream tensor spelling, so it is dropped here and kept as an attribute by the
`avalon` dialect printer.
"""
from __future__ import annotations

import math
import re

import numpy as np

from avalon.ir import DType, Location, TensorType
from avalon.ir import dtypes as dt

_ID = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$.-]*$")


def type_name(d: DType, signless: bool = False) -> str:
    """The MLIR element type: the dtype's name, but `ui8` as the signless `i8` for `signless`
    (upstream arith takes signless integers only; the linalg lowering picks unsigned ops instead)."""
    return "i8" if signless and d == dt.uint8 else d.name


def tensor_type(t: TensorType, signless: bool = False) -> str:
    """`tensor<8x3xf32>`, layout dropped (see the module docstring)."""
    return "tensor<" + "".join(f"{s}x" for s in t.shape) + type_name(t.dtype, signless) + ">"


def ident(name: str | None, default: str) -> str:
    """`name` when MLIR accepts it as an SSA/symbol suffix id, else `default`."""
    return name if name and _ID.match(name) else default


def string(s: str) -> str:
    """`s` as an MLIR string literal. MLIR knows the escapes \\" \\\\ \\n \\t and \\XX (a byte in hex), not
    JSON's \\uXXXX (json.dumps of a path like /home/josé/model.py made a module MLIR does not parse):
    whatever is not printable ASCII goes as its UTF-8 bytes."""
    out = []
    for b in s.encode("utf-8"):
        c = chr(b)
        out.append("\\" + c if c in '"\\' else c if 32 <= b < 127 else f"\\{b:02X}")
    return '"' + "".join(out) + '"'


def loc(location: Location | None) -> str:
    """` loc("file.py":12:0)`, or nothing for an op with no source location."""
    return f" loc({string(location.file)}:{location.line}:0)" if location is not None else ""


_FLOAT_BITS = {"f16": (np.float16, np.uint16), "f32": (np.float32, np.uint32), "f64": (np.float64, np.uint64)}


def float_bits(x: float, d: DType) -> int:
    """The bit pattern of `x` rounded to float type `d` (bf16: the top half of its f32 pattern)."""
    if d == dt.bfloat16:
        from avalon.ir import round_bf16
        return int(round_bf16(np.float32(x)).view(np.uint32)) >> 16
    f, u = _FLOAT_BITS[d.name]
    return int(np.asarray(x, f).view(u))


def scalar(value: float | int | bool, d: DType, signless: bool = False) -> str:
    """A literal of type `d` for `arith.constant` (non-finite floats as hex bit patterns); a uint8
    in 0..255 as `ui8`, in two's complement as the `i8` of a `signless` lowering."""
    if d == dt.bool_:
        return "true" if value else "false"
    if not d.is_float:
        bits = d.bits
        v = int(value) & ((1 << bits) - 1)
        if d.is_unsigned and not signless:
            return str(v)
        return str(v - (1 << bits) if v >> (bits - 1) else v)  # two's complement, as MLIR reads it
    x = float(value)
    if not math.isfinite(x) or d in (dt.float16, dt.bfloat16):
        return f"0x{float_bits(x, d):0{d.itemsize * 2}X}"
    text = repr(float(np.asarray(x, d.np)))
    # MLIR lexes a float only with a decimal point: Python writes 1e-05 (f64 eps), MLIR needs 1.0e-05
    return text if "." in text else text.replace("e", ".0e", 1)


def dense(array: np.ndarray, t: TensorType, signless: bool = False) -> str:
    """`dense<...> : tensor<...>` holding `array` (already of `t`'s values): a splat when all
    elements are equal, else raw little-endian hex (exact for every float, nan included)."""
    a = np.asarray(array).reshape(t.shape)
    ty = tensor_type(t, signless)
    flat = a.reshape(-1)
    if flat.size == 0:  # upstream reads `dense<>` for any zero-element shape; `[[]]` only for 1x0
        return f"dense<> : {ty}"
    if t.dtype == dt.bool_:
        if np.all(flat == flat[0]):
            return f"dense<{scalar(bool(flat[0]), t.dtype)}> : {ty}"
        return f"dense<{_nested(a, lambda v: 'true' if v else 'false')}> : {ty}"
    if np.all(flat.view(np.uint8).reshape(flat.size, -1) == flat[:1].view(np.uint8)):
        return f"dense<{scalar(flat[0].item(), t.dtype, signless)}> : {ty}"
    if t.dtype == dt.bfloat16:
        raw = np.array([float_bits(v, t.dtype) for v in flat.tolist()], np.uint16).tobytes()
    else:
        raw = np.ascontiguousarray(flat.astype(t.dtype.np)).astype(t.dtype.np.newbyteorder("<")).tobytes()
    return f'dense<"0x{raw.hex().upper()}"> : {ty}'


def _nested(a: np.ndarray, fmt) -> str:
    if a.ndim == 0:
        return fmt(a.item())
    return "[" + ", ".join(_nested(x, fmt) for x in a) + "]"
