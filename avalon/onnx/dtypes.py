"""ONNX element types <-> Avalon dtypes (Avalon has i1, ui8, i8, i16, i32, i64, f16, bf16, f32, f64)."""
from __future__ import annotations

from typing import Any

from ..interop.model import UnsupportedOp
from ..ir import dtypes as dt

# onnx.TensorProto: FLOAT=1, UINT8=2, INT8=3, INT16=5, INT32=6, INT64=7, BOOL=9, FLOAT16=10, DOUBLE=11,
# BFLOAT16=16 (onnx hands it over as an ml_dtypes array; Avalon holds bf16 as float32, exactly).
# UINT16/UINT32/UINT64 have no Avalon dtype.
TO_AVALON = {1: dt.float32, 2: dt.uint8, 3: dt.int8, 5: dt.int16, 6: dt.int32, 7: dt.int64, 9: dt.bool_,
             10: dt.float16, 11: dt.float64, 16: dt.bfloat16}
TO_ONNX = {d.name: k for k, d in TO_AVALON.items()}


def avalon_dtype(elem_type: int, where: Any = "") -> Any:
    if elem_type not in TO_AVALON:
        import onnx
        name = onnx.TensorProto.DataType.Name(elem_type) if elem_type in onnx.TensorProto.DataType.values() \
            else str(elem_type)
        msg = f"element type {name} has no Avalon dtype"
        if hasattr(where, "unsupported"):
            raise where.unsupported(msg)
        raise UnsupportedOp(f"{where}: {msg}" if where else msg)
    return TO_AVALON[elem_type]


def onnx_elem_type(d: Any) -> int:
    return TO_ONNX[d.name]
