"""torch.cond and torch.while_loop: control flow that a compiler can take.

`cond(pred, true_fn, false_fn, operands)`: a predicate known now (a Python bool, or a tensor that is
not being traced) runs one branch, as torch's eager `cond` does. A traced predicate (a value of the
function being compiled or differentiated) traces both branches and selects every output with
`where(pred, t, f)`: the graph stays straight-line code, as an imported ONNX `If` does, and gradients
reach the operands through the branch taken. torch.cond's rules hold and are checked: the predicate
is a boolean with one element, and both branches return the same structure of tensors with the same
shapes and dtypes. A branch's cost is paid whichever way the predicate goes (both run); a branch
that would fail on the other side's inputs (an index only valid when the predicate holds) must be
written to stay in range.

`while_loop(cond_fn, body_fn, carried_inputs)`: runs `body_fn` while `cond_fn(*carried)` holds and
returns the final carried values. A trace is straight-line code, so each test must be known while
tracing (a loop counter, shapes, a value no input decides); a test that depends on traced values is
an error naming it, never a silently fixed trip count. `body_fn` returns as many values as it takes,
each of the same shape and dtype (torch's rule).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import ops
from .ir import dtypes as dt
from .tensor import Tensor, TracerError
from .tree import flatten, unflatten

__all__ = ["cond", "while_loop"]


def _operands(operands: Any, who: str) -> tuple:
    if isinstance(operands, (list, tuple)):
        return tuple(operands)
    raise TypeError(f"{who}: operands must be a tuple or list of tensors, got {type(operands).__name__}")


def _predicate(pred: Any) -> Any:
    """A Python bool, or a one-element boolean tensor (torch.cond's rule)."""
    if isinstance(pred, bool):
        return pred
    if isinstance(pred, Tensor):
        if pred.numel() != 1:
            raise ValueError(f"cond: the predicate must have one element, got shape {tuple(pred.shape)}")
        if pred.dtype is not dt.bool_:
            raise TypeError(f"cond: the predicate must be a boolean, got {pred.dtype.name} (compare it first, "
                            "e.g. `x.sum() > 0`)")
        return pred
    if type(pred).__name__ == "bool_":  # numpy's
        return bool(pred)
    raise TypeError(f"cond: the predicate must be a bool or a boolean tensor, got {type(pred).__name__}")


def cond(pred: Any, true_fn: Callable, false_fn: Callable, operands: Sequence[Any] = ()) -> Any:
    """torch.cond (module docstring)."""
    args = _operands(operands, "cond")
    p = _predicate(pred)
    if isinstance(p, bool) or not p.is_traced:
        return (true_fn if bool(p) else false_fn)(*args)
    t, f = true_fn(*args), false_fn(*args)
    tl, ts = flatten(t, "true_fn")
    fl, fs = flatten(f, "false_fn")
    if ts != fs:
        raise TypeError(f"cond: true_fn and false_fn must return the same structure, got {ts} and {fs}")
    out = []
    for (name, a), (_, b) in zip(tl, fl):
        a, b = ops.as_tensor(a), ops.as_tensor(b)
        if tuple(a.shape) != tuple(b.shape) or a.dtype is not b.dtype:
            which = name[len("true_fn"):].lstrip(".") or 0
            raise TypeError(f"cond: output {which} is {a.dtype.name}{list(a.shape)} from true_fn but "
                            f"{b.dtype.name}{list(b.shape)} from false_fn; torch.cond needs them alike")
        out.append(ops.where(ops.reshape(p, ()), a, b))
    return unflatten(ts, out)


def while_loop(cond_fn: Callable, body_fn: Callable, carried_inputs: Sequence[Any]) -> tuple:
    """torch.while_loop (module docstring)."""
    carried = _operands(carried_inputs, "while_loop")
    step = 0
    while True:
        c = cond_fn(*carried)
        if isinstance(c, Tensor):
            if c.numel() != 1 or c.dtype is not dt.bool_:
                raise TypeError(f"while_loop: cond_fn must return a boolean with one element, got "
                                f"{c.dtype.name}{list(c.shape)}")
            try:  # a traced value that depends on no input (a counter built in the function) is known now
                c = bool(c.item())
            except TracerError:
                raise ValueError(f"while_loop: cond_fn's result at iteration {step} depends on traced values; a "
                                 "compiled or differentiated function is straight-line code, so the number of "
                                 "iterations must be known while tracing (a counter, a shape, a value no input "
                                 "decides). Run it eagerly, or loop a fixed number of times with `cond` inside"
                                 ) from None
        if not c:
            return carried
        new = body_fn(*carried)
        new = tuple(new) if isinstance(new, (list, tuple)) else (new,)
        if len(new) != len(carried):
            raise TypeError(f"while_loop: body_fn returned {len(new)} values for {len(carried)} carried inputs")
        for i, (a, b) in enumerate(zip(carried, new)):
            if isinstance(a, Tensor) and (not isinstance(b, Tensor) or tuple(a.shape) != tuple(b.shape)
                                          or a.dtype is not b.dtype):
                got = f"{b.dtype.name}{list(b.shape)}" if isinstance(b, Tensor) else type(b).__name__
                raise TypeError(f"while_loop: carried value {i} is {a.dtype.name}{list(a.shape)} but body_fn "
                                f"returned {got}; each must keep its shape and dtype")
        carried, step = new, step + 1
