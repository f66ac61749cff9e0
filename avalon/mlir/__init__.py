"""Avalon IR as real MLIR: `to_mlir(graph, dialect="avalon" | "linalg") -> str`.

* `"avalon"`: MLIR generic form, Avalon's ops as the `avalon` dialect (`dialect.py`); upstream MLIR
  (unregistered dialects allowed) and xDSL parse it.
* `from_mlir(text)` reads the avalon dialect back into a Graph (`reader.py`), after any MLIR tool.
* `"linalg"`: upstream dialects only (func, arith, math, tensor, linalg; `cf.assert` for checks) via
  the `LINALG` rule table (`linalg.py`); the upstream parser verifies it and IREE compiles it (`backend="iree"`).

Nothing here needs the MLIR packages: it prints text. Parsing and compiling it does
(`pip install -e ".[mlir]"`). See docs/mlir.md.
"""
from __future__ import annotations

from avalon.ir import Graph

from .dialect import to_avalon_mlir
from .linalg import LINALG, LoweringError, elementwise, lower_function, to_linalg_mlir
from .reader import MLIRReadError, from_mlir
from .scalar import SCALAR

DIALECTS = ("avalon", "linalg")


def to_mlir(graph: Graph, dialect: str = "avalon") -> str:
    """The module text of `graph` in `dialect` ("avalon": generic form of the avalon dialect;
    "linalg": upstream dialects only, one public `func.func` named after the graph)."""
    if dialect == "avalon":
        return to_avalon_mlir(graph)
    if dialect == "linalg":
        return to_linalg_mlir(graph)
    raise ValueError(f"unknown dialect {dialect!r}; choose one of {', '.join(DIALECTS)}")


__all__ = ["DIALECTS", "LINALG", "SCALAR", "LoweringError", "MLIRReadError", "elementwise", "from_mlir",
           "lower_function", "to_mlir"]
