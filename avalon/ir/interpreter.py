"""Run a graph op by op with the numpy reference rules.

Modelled on `torch.fx.Interpreter`: `Interpreter(graph).run(*inputs)` walks the ops in order, keeps
an environment from `Value` to array, and calls the overridable `run_op(op, args)` for each op, so a
subclass can trace values, count ops or swap in another implementation of some op. Fusion ops run
their region through the same machinery (nested `run_block`), so a fused graph computes exactly
what the unfused one did.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from avalon.channels import get_logger
from avalon.ir import dtypes as dt
from avalon.ir.core import Block, Graph, Op, Value
from avalon.ir.types import TensorType

from .reference import evaluate, round_bf16

log = get_logger("interpreter")


def _describe(a: np.ndarray) -> str:
    """An array's type in IR spelling where it has one (`tensor<2x3xf64>`), else numpy's words."""
    try:
        d = dt.dtype(a.dtype)
    except TypeError:
        return f"{a.dtype} array of shape {a.shape}"
    return str(TensorType(a.shape, d))


def to_numpy(x: Any) -> np.ndarray:
    """Whatever a user hands in as a tensor, as a numpy array: numpy arrays and scalars, Python
    scalars, torch tensors (any device; bf16 widens to float32), objects with `.numpy()` (Avalon
    tensors) or `__array__`."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (bool, int, float, np.generic)):
        return np.asarray(x)
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    if hasattr(x, "numpy") and callable(x.numpy):
        return np.asarray(x.numpy())
    if hasattr(x, "__array__"):
        return np.asarray(x)
    raise TypeError(f"cannot use a {type(x).__name__} as a tensor (expected a numpy array, a scalar, "
                    "a torch tensor or an Avalon tensor)")


class Interpreter:
    """Executes a `Graph` with numpy. Subclass and override `run_op` to observe or change execution.

    `self.env` maps each live `Value` to its array while `run` is in progress; an intermediate is
    dropped right after its last use (counted over nested regions too), so peak memory follows the
    live set rather than the whole graph. Set `free_intermediates = False` to keep every value
    (handy when inspecting `env` after a run).
    """

    free_intermediates: bool = True

    def __init__(self, graph: Graph):
        self.graph = graph
        self.env: dict[Value, np.ndarray] = {}
        self._last_use: dict[int, dict[int, list[Value]]] = {}  # id(block) -> op index -> values to drop

    # --- public entry points ------------------------------------------------------------------

    def run(self, *inputs: Any) -> tuple[np.ndarray, ...]:
        """Run the graph on `inputs` (one per graph input, in order); one array per graph output."""
        args = self.check_inputs(inputs)
        self.env = {}
        self._last_use = {}  # the graph may have been rewritten since the last run
        outs = self.run_block(self.graph.body, args)
        # an output that shares memory with an input or another output (a returned input, a
        # reshape view) is copied, so writing to one result never changes another array
        done: list[np.ndarray] = []
        for o in outs:
            if any(np.may_share_memory(o, a) for a in [*args, *done]):
                o = o.copy()
            done.append(o)
        return tuple(done)

    def run_op(self, op: Op, args: list[np.ndarray]) -> list[np.ndarray]:
        """Compute one op's results from its operand arrays. The hook subclasses override."""
        if op.regions:
            return self.run_block(op.regions[0], args)
        if len(op.results) != 1:
            raise NotImplementedError(f"op '{op.name}' has {len(op.results)} results; reference rules give one")
        return [evaluate(op.name, op.attrs, args, op.results[0].type)]

    # --- machinery ----------------------------------------------------------------------------

    def check_inputs(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        """Convert inputs to arrays of exactly the graph's input types, or say clearly which is wrong."""
        want = self.graph.inputs
        if len(inputs) != len(want):
            names = ", ".join(self._input_name(i) for i in range(len(want)))
            raise TypeError(f"graph @{self.graph.name} takes {len(want)} input(s) ({names}), got {len(inputs)}")
        return [self._coerce(i, v.type, x) for i, (v, x) in enumerate(zip(want, inputs))]

    def _input_name(self, i: int) -> str:
        return self.graph.inputs[i].name or f"#{i}"

    def _coerce(self, i: int, t: TensorType, x: Any) -> np.ndarray:
        where = f"input {i} ('{self._input_name(i)}')"
        if isinstance(x, (bool, int, float)) and t.shape == ():
            # a Python scalar is weakly typed: it takes the input's dtype if its kind fits
            if isinstance(x, float) and not t.dtype.is_float:
                raise TypeError(f"{where}: expected {t}, got a Python float")
            return self._finish(np.asarray(x, dtype=t.dtype.np), t)
        a = to_numpy(x)
        if a.dtype != t.dtype.np:
            raise TypeError(f"{where}: expected {t}, got {_describe(a)}")
        if a.shape != t.shape:
            raise ValueError(f"{where}: expected {t}, got {_describe(a)}")
        return self._finish(a, t)

    @staticmethod
    def _finish(a: np.ndarray, t: TensorType) -> np.ndarray:
        # bf16 inputs arrive as float32; round them so every op sees bf16 values, like a GPU would
        return round_bf16(a) if t.dtype == dt.bfloat16 else a

    def run_block(self, block: Block, args: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Bind `block`'s arguments to `args`, run its ops, and return what its terminator returns."""
        env = self.env
        env.update(zip(block.args, args))
        drops = self._drops(block) if self.free_intermediates else {}
        for k, op in enumerate(block.ops):
            operands = [self._lookup(v, op) for v in op.operands]
            try:
                results = self.run_op(op, operands)
            except Exception as e:
                if hasattr(e, "add_note"):
                    loc = f" (from {op.loc})" if op.loc else ""
                    e.add_note(f"while interpreting op #{k} '{op.name}' in @{self.graph.name}{loc}")
                raise
            if len(results) != len(op.results):
                raise RuntimeError(f"run_op for '{op.name}' returned {len(results)} array(s) "
                                   f"for {len(op.results)} result(s)")
            for i, (r, v) in enumerate(zip(results, op.results)):  # a subclass's run_op, checked
                if np.shape(r) != v.type.shape:
                    raise RuntimeError(f"run_op for op #{k} '{op.name}' returned shape {np.shape(r)} for "
                                       f"result #{i}, whose type is {v.type}")
            env.update(zip(op.results, results))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s -> %s", op.name, ", ".join(_describe(np.asarray(r)) for r in results))
            for v in drops.get(k, ()):
                env.pop(v, None)
        outs = [self._lookup(v, block.terminator) for v in block.results]
        if self.free_intermediates:
            for v in block.args:
                env.pop(v, None)
            for v in block.results:
                env.pop(v, None)
        return outs

    def _lookup(self, v: Value, user: Op | None) -> np.ndarray:
        try:
            return self.env[v]
        except KeyError:
            who = f"'{user.name}'" if user is not None else "an op"
            raise RuntimeError(f"{who} reads a value that was never computed: {v!r}") from None

    def _drops(self, block: Block) -> dict[int, list[Value]]:
        """For each op index, the values whose last use (in this block, nested regions counted as
        uses by the region op) is that op; block results are kept for the terminator."""
        key = id(block)
        if key not in self._last_use:
            last: dict[Value, int] = {}
            for k, op in enumerate(block.ops):
                for inner in op.walk():
                    for v in inner.operands:
                        last[v] = k
            kept = set(block.results)
            drops: dict[int, list[Value]] = {}
            for v, k in last.items():
                if v not in kept:
                    drops.setdefault(k, []).append(v)
            self._last_use[key] = drops
        return self._last_use[key]


def interpret(graph: Graph, *inputs: Any) -> tuple[np.ndarray, ...]:
    """Run `graph` on `inputs` with the numpy reference; one array per graph output."""
    return Interpreter(graph).run(*inputs)
