"""The object an importer returns: state tensors under their source names, and a program that runs.

Tensors are attributes of nested plain objects (`layer1.0.conv1.weight` is
`model.layer1.<"0">.conv1.weight`), so `nn.named_parameters`, `nn.state_dict`, `av.trace` and the
optimizers find them by the ordinary attribute walk, named as the source names them. The program is
held in a `__slots__` object, which the walk does not descend into.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from ..ir import Location
from ..tensor import Tensor
from ..trace import _short


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

    def __deepcopy__(self, memo: dict) -> ImportedProgram:
        """Shared, not copied: the program holds no model state (it reads the tensors through the
        model it runs), and torch.export's graph holds fake tensors that `copy.deepcopy` cannot copy;
        so `copy.deepcopy(model)` (an EMA or target network, a twin to compare) copies the tensors only."""
        return self


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


def node_location(stack_trace: str | None) -> Location | None:
    """The user's innermost frame from a torch.fx node's `stack_trace` as an IR Location (None when
    the node has none): the line of the source model that the ops of an imported node carry. Frames
    in torch's own package (`nn.Conv2d.forward`, `F.linear`) are skipped, so a layer's ops name the
    model's line that called the layer, as Avalon's own tracer names the user's line."""
    frames = [(m.group(1), int(m.group(2))) for m in _FRAME.finditer(stack_trace or "")]
    if not frames:
        return None
    import torch
    lib = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
    file, line = next((f for f in reversed(frames) if not os.path.abspath(f[0]).startswith(lib)), frames[-1])
    return Location(_short(file), line)


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


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
