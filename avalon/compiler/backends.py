"""The backends `av.compile` can run a graph on, behind one small interface.

A backend is an object with `name`, `kernel_suffix` and `compile(graph) -> executable`; an
executable is a callable taking one value per graph input (Avalon tensors, numpy arrays, torch
tensors) and returning one array per graph output, with a `kernels` dict from kernel name to its
source. Each backend lives in its own codegen package; this registry names them and imports one
only when it is first used, so machines without Triton can still compile for numpy.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Executable(Protocol):
    kernels: dict[str, str]

    def __call__(self, *inputs: Any) -> Sequence[Any]: ...


class BackendUnavailable(RuntimeError):
    """The backend's module is missing or cannot be imported on this machine."""


class _Lazy:
    """A backend named in the registry, imported when it is first asked to compile (or for anything
    else it has), so that naming it costs nothing and a missing module is a clear error then."""

    def __init__(self, name: str, path: str, kernel_suffix: str):
        self.name, self.kernel_suffix, self._path = name, kernel_suffix, path
        self._backend: Any = None

    def load(self) -> Any:
        if self._backend is None:
            module, _, cls = self._path.partition(":")
            try:
                importlib.import_module(module.rpartition(".")[0])  # the backend's package must import as a whole
                self._backend = getattr(importlib.import_module(module), cls)()
            except ImportError as e:
                raise BackendUnavailable(f"backend={self.name!r} needs {module}, which cannot be imported here "
                                         f"({type(e).__name__}: {e}); use backend='numpy'") from e
        return self._backend

    def compile(self, graph: Any) -> Executable:
        return self.load().compile(graph)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.load(), attr)


BACKENDS: dict[str, Callable[[], Any]] = {
    "numpy": lambda: _Lazy("numpy", "avalon.codegen.numpy.backend:NumpyBackend", ".avalon"),
    "cpu": lambda: _Lazy("cpu", "avalon.codegen.numpy.backend:CpuBackend", ".avalon"),
    "triton": lambda: _Lazy("triton", "avalon.codegen.triton.backend:TritonBackend", ".py"),
    "iree": lambda: _Lazy("iree", "avalon.codegen.iree.backend:IreeBackend", ".mlir"),
}
"""Backends by name; register another as `BACKENDS["mine"] = MyBackend` (a class with `name`,
`kernel_suffix` and `compile(graph) -> Executable`)."""


def get_backend(backend: str | Any) -> Any:
    """A backend object from its name (or the object itself)."""
    if not isinstance(backend, str):
        return backend
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(sorted(BACKENDS))}") from None
    return factory()
