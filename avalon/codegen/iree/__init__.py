"""`backend="iree"`: graphs lowered to upstream MLIR (`avalon.mlir`, linalg on tensors), compiled by
IREE for its `llvm-cpu` target and run through `iree.runtime`. Needs the optional packages
`iree-base-compiler` and `iree-base-runtime` (`pip install -e ".[mlir]"`)."""
from .backend import IREE, WORKAROUNDS, IreeBackend, IreeCompileError, IreeExecutable, compile_module

__all__ = ["IREE", "WORKAROUNDS", "IreeBackend", "IreeCompileError", "IreeExecutable", "compile_module"]
