"""The object an importer returns: state tensors under their source names, and a program that runs.

Tensors are attributes of nested plain objects (`layer1.0.conv1.weight` is
`model.layer1.<"0">.conv1.weight`), so `nn.named_parameters`, `nn.state_dict`, `av.trace` and the
optimizers find them by the ordinary attribute walk, named as the source names them. The program is
held in a `__slots__` object, which the walk does not descend into.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..tensor import Tensor


class UnsupportedOp(NotImplementedError):
    """An operation the importer cannot translate; raised before anything runs, naming the op."""


class _Scope:
    """One level of a dotted name (a submodule in the source)."""

    def __repr__(self) -> str:
        return f"<{', '.join(vars(self))}>"


class ImportedProgram:
    """What runs: `run(model, args, kwargs)` reads the state through `model` (so replaced or moved
    tensors are seen) and returns the outputs."""

    __slots__ = ("run", "describe")

    def __init__(self, run: Callable[[Any, tuple, dict], Any], describe: str) -> None:
        self.run, self.describe = run, describe


def set_dotted(root: Any, name: str, value: Tensor) -> None:
    *scopes, leaf = name.split(".")
    obj = root
    for s in scopes:
        child = vars(obj).get(s)
        if child is None:
            child = _Scope()
            setattr(obj, s, child)
        elif not isinstance(child, _Scope):
            raise ValueError(f"state name {name!r} nests under the tensor {s!r}")
        obj = child
    if isinstance(vars(obj).get(leaf), _Scope):
        raise ValueError(f"state name {name!r} is also a prefix of other names")
    setattr(obj, leaf, value)


def get_dotted(root: Any, name: str) -> Tensor:
    obj = root
    for s in name.split("."):
        obj = vars(obj)[s]
    return obj


class ImportedModel:
    """A model imported from torch.export or ONNX: call it like the source module."""

    def __init__(self, state: Sequence[tuple[str, Tensor]], program: ImportedProgram, training: bool = False) -> None:
        for name, t in state:
            set_dotted(self, name, t)
        self._program = program
        self.training = training

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._program.run(self, args, kwargs)

    def __repr__(self) -> str:
        return f"ImportedModel({self._program.describe})"


def source_line(stack_trace: str | None) -> str:
    """The user's innermost frame from a torch.fx node's `stack_trace`: 'file:line: code'."""
    if not stack_trace:
        return "<unknown source line>"
    lines = [ln.strip() for ln in stack_trace.strip().splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("File "):
            code = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("File ") else ""
            return f"{lines[i]}: {code}".rstrip(": ")
    return lines[-1]
