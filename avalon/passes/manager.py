"""The pass manager: parses pipeline strings, runs passes in order and instruments every run.

Instrumentation is what makes a compiler learnable, so it is built in rather than bolted on: each run
records per pass its time, whether it changed the graph and the IR after it (`pm.records`); it can
verify after each pass (naming the pass that broke the IR), print the IR after all / changed / named
passes, and print a timing report. `pm.key()` names the pipeline with options and pass versions for
compiled-kernel cache keys.
"""
from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from avalon.channels import get_logger
from avalon.ir import Graph, VerifyError, print_graph, verify

from .registry import PassInfo, PipelineError, format_value, get_pass, takes_target
from .target import Target

log = get_logger("passes")


class PassRecord:
    """What one pass did in one run: its name, milliseconds, whether it changed the graph, the IR after it.

    `ir_after` is printed on first read from a snapshot (a clone of the graph taken after the pass),
    because printing every intermediate IR eagerly costs more than the passes themselves on large
    graphs; it may also be given as text (or None when the IR was not recorded)."""

    __slots__ = ("name", "ms", "changed", "_ir")

    def __init__(self, name: str, ms: float, changed: bool, ir_after: str | Graph | None):
        self.name, self.ms, self.changed, self._ir = name, ms, changed, ir_after

    @property
    def ir_after(self) -> str | None:
        if isinstance(self._ir, Graph):
            self._ir = print_graph(self._ir)
        return self._ir

    def __repr__(self) -> str:
        return f"PassRecord(name={self.name!r}, ms={self.ms:.3f}, changed={self.changed})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PassRecord):
            return NotImplemented
        return (self.name, self.ms, self.changed, self.ir_after) == (other.name, other.ms, other.changed,
                                                                      other.ir_after)

    __hash__ = None  # type: ignore[assignment]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while compiling: building a graph allocates many
    long-lived objects, and each full collection walks all of them, which made compile time grow
    superlinearly with graph size (several times the passes' own work at 15k ops). Garbage made
    meanwhile is collected after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class PassVerifyError(VerifyError):
    """The IR stopped verifying after a pass; `pass_name` names the pass."""

    def __init__(self, msg: str, pass_name: str | None, op=None):
        self.pass_name = pass_name
        super().__init__(msg, op)


@dataclass
class Stage:
    """One pipeline entry: the registered pass (None for an ad-hoc one), its options, the runnable pass."""

    name: str
    info: PassInfo | None
    options: dict[str, Any]
    impl: Any

    def text(self, all_options: bool = False) -> str:
        """`name{opt=value,...}` with non-default options (or all of them, for cache keys)."""
        opts = dict(self.options)
        if self.info is not None:
            defaults = {n: o.default for n, o in self.info.options.items() if not o.required}
            if all_options:
                opts = {**defaults, **opts}
            else:
                opts = {k: v for k, v in opts.items() if k not in defaults or defaults[k] != v}
        if not opts:
            return self.name
        body = ",".join(f"{k.replace('_', '-')}={format_value(v)}" for k, v in sorted(opts.items()))
        return f"{self.name}{{{body}}}"

    @property
    def version(self) -> int | str:
        if self.info is not None:
            return self.info.version
        return getattr(self.impl, "version", 0)


def _split_top(text: str, sep: str = ",") -> list[tuple[str, int]]:
    """Split at `sep` outside braces/brackets; each part with its offset (for error messages)."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced '{c}' at column {i + 1} in pipeline {text!r}")
        elif c == sep and depth == 0:
            parts.append((text[start:i], start))
            start = i + 1
    if depth != 0:
        raise PipelineError(f"unclosed '{{' or '[' in pipeline {text!r}")
    parts.append((text[start:], start))
    return parts


def parse_pipeline(text: str) -> list[tuple[str, dict[str, str]]]:
    """`"cse,fuse{max-ops=16}"` -> `[("cse", {}), ("fuse", {"max-ops": "16"})]` (values still text)."""
    out: list[tuple[str, dict[str, str]]] = []
    if not text.strip():
        return out
    for part, col in _split_top(text):
        item = part.strip()
        if not item:
            raise PipelineError(f"empty pass name at column {col + 1} in pipeline {text!r}")
        opts: dict[str, str] = {}
        name = item
        if "{" in item:
            name, _, rest = item.partition("{")
            name = name.strip()
            if not rest.endswith("}"):
                raise PipelineError(f"text after the options of '{name}' in pipeline {text!r}")
            for kv, _ in _split_top(rest[:-1]):
                kv = kv.strip()
                if not kv:
                    continue
                key, eq, value = kv.partition("=")
                key = key.strip()
                if key in opts:
                    raise PipelineError(f"pass '{name}' option '{key}' is given twice in pipeline {text!r}")
                opts[key] = value.strip() if eq else "true"  # `name{flag}` sets a boolean flag
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise PipelineError(f"bad pass name {name!r} in pipeline {text!r}")
        out.append((name, opts))
    return out


class PassManager:
    """Runs a pipeline of passes over a graph, with optional verification, printing and timing.

    `PassManager.parse("canonicalize,cse,dce,fuse{max-ops=16}", verify_each=True)`, then `pm.run(graph)`.
    Passes may also be added as registered names, pass objects (with `run(graph)`) or plain functions.
    `target` (a backend's `avalon.passes.target.Target`; None: the default target) is handed to every
    pass whose `run` takes a `target` keyword (`fuse`, `layout`, `memory-plan`).
    """

    def __init__(self, passes: Iterable[str | Any] = (), *, verify_each: bool = False,
                 print_after_all: bool = False, print_after_changed: bool = False,
                 print_after: Iterable[str] = (), time_passes: bool = False, record_ir: bool = True,
                 stream: TextIO | None = None, target: Target | None = None):
        self.stages: list[Stage] = []
        self.target = target
        self.verify_each = verify_each
        self.print_after_all = print_after_all
        self.print_after_changed = print_after_changed
        self.print_after = tuple(print_after)
        self.time_passes = time_passes
        self.record_ir = record_ir
        self.stream = stream
        self.records: list[PassRecord] = []
        for p in passes:
            self.add(p)

    @classmethod
    def parse(cls, pipeline: str, **kwargs: Any) -> PassManager:
        """A manager for a pipeline string; keyword arguments are the instrumentation options."""
        return cls([pipeline], **kwargs)

    def add(self, p: str | Any, **options: Any) -> PassManager:
        """Append a pipeline string (`"cse,dce"`), a registered name with options, a pass object or a function."""
        if isinstance(p, str):
            parsed = parse_pipeline(p)
            if options and len(parsed) != 1:
                raise PipelineError("keyword options need exactly one pass name")
            for name, opts in parsed:
                info = get_pass(name)
                values = info.check_options({**opts, **options})
                self.stages.append(Stage(name, info, values, info.factory(**values)))
        elif isinstance(p, PassInfo):
            values = p.check_options(options)
            self.stages.append(Stage(p.name, p, values, p.factory(**values)))
        elif callable(getattr(p, "run", None)):
            name = getattr(p, "name", None) or type(p).__name__
            self.stages.append(Stage(name, None, {}, p))
        elif callable(p):
            name = getattr(p, "__name__", "pass").replace("_", "-")
            self.stages.append(Stage(name, None, {}, _Adhoc(name, p)))
        else:
            raise TypeError(f"cannot add {p!r} to a pipeline: expected a pipeline string, a pass or a function")
        return self

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def __str__(self) -> str:
        """The pipeline as a string that `PassManager.parse` reads back."""
        return ",".join(s.text() for s in self.stages)

    def __repr__(self) -> str:
        return f"PassManager({str(self)!r})"

    def key(self) -> str:
        """Every pass with all its option values and its version: `cse@1,fuse{max-ops=16}@2`.
        Anything that changes what the pipeline produces changes this string."""
        return ",".join(f"{s.text(all_options=True)}@{s.version}" for s in self.stages)

    # -- running
    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def _should_print(self, name: str, changed: bool) -> bool:
        return self.print_after_all or (self.print_after_changed and changed) or name in self.print_after

    def run(self, graph: Graph) -> bool:
        """Run every pass in order; True when any changed the graph. `self.records` says what each did."""
        with paused_gc():
            return self._run(graph)

    def blame(self, error: VerifyError) -> VerifyError:
        """`error` (the graph did not verify after the last run, which ran without `verify_each`) as a
        PassVerifyError naming the first pass whose recorded IR does not verify; `error` itself when the
        records cannot tell (no IR recorded, or every snapshot verifies). Costs nothing until it fails."""
        from avalon.ir import parse
        for r in self.records:
            snap = r._ir
            if snap is None:
                continue
            try:
                verify(snap) if isinstance(snap, Graph) else parse(snap)
            except VerifyError as e:
                return PassVerifyError(f"pass '{r.name}' left invalid IR: {e}", r.name, getattr(e, "op", None))
            except ValueError:  # the text of a broken graph that does not parse back: broken by this pass
                return PassVerifyError(f"pass '{r.name}' left invalid IR: {error}", r.name, error.op)
        return error

    def _run(self, graph: Graph) -> bool:
        unknown = [n for n in self.print_after if n not in self.names]
        if unknown:
            raise PipelineError(f"print_after names {', '.join(map(repr, unknown))}, not in this pipeline "
                                f"({', '.join(self.names) or 'empty'})")
        self.records = []
        if self.verify_each:
            try:
                verify(graph)
            except VerifyError as e:
                raise PassVerifyError(f"the input graph does not verify (before any pass): {e}", None, e.op) from e
        # text is printed eagerly only where something reads it now (printing options, a pass that does
        # not say whether it changed the graph, verify_each's check of that answer); otherwise each
        # changed pass leaves a snapshot that `PassRecord.ir_after` prints when read
        eager = self.print_after_all or self.print_after_changed or bool(self.print_after)
        need_text = eager or self.verify_each or any(_may_not_say(s.impl) for s in self.stages)
        text_before = print_graph(graph) if need_text else None
        snapshot: str | Graph | None = None
        any_changed = False
        for stage in self.stages:
            t0 = time.perf_counter()
            try:
                if self.target is not None and takes_target(stage.impl.run):
                    result = stage.impl.run(graph, target=self.target)
                else:
                    result = stage.impl.run(graph)
            except Exception as e:
                if hasattr(e, "add_note"):
                    e.add_note(f"while running pass '{stage.name}' (pipeline: {self})")
                raise
            ms = (time.perf_counter() - t0) * 1e3
            text_after = print_graph(graph) if need_text else None
            if result is None:  # the pass did not say; find out from the text
                changed = text_after != text_before
            elif not isinstance(result, (bool, np.bool_)):
                raise TypeError(f"pass '{stage.name}' returned {type(result).__name__} {result!r}; a pass "
                                "returns True (changed), False (unchanged) or None (not said)")
            else:
                changed = bool(result)
                if self.verify_each and not changed and text_after != text_before:
                    raise PassVerifyError(f"pass '{stage.name}' returned False but changed the IR "
                                          "(caches and --print-after-changed trust that answer)", stage.name)
            any_changed |= changed
            if self.record_ir:
                if text_after is not None:
                    snapshot = text_after
                elif changed or snapshot is None:
                    snapshot = _snapshot(graph, stage.name)
            self.records.append(PassRecord(stage.name, ms, changed, snapshot if self.record_ir else None))
            log.debug("%s: %.3f ms, %s", stage.name, ms, "changed" if changed else "no change")
            if self.verify_each:
                try:
                    verify(graph)
                except VerifyError as e:
                    raise PassVerifyError(f"pass '{stage.name}' left invalid IR: {e}", stage.name, e.op) from e
            if self._should_print(stage.name, changed):
                text = text_after if text_after is not None else print_graph(graph)
                note = "" if changed else " (no change)"
                self._out().write(f"// -----// IR Dump After {stage.name}{note} //----- //\n{text}\n")
            text_before = text_after
        if self.time_passes:
            self._out().write(self.timing_report())
        return any_changed

    def timing_report(self) -> str:
        """The last run's per-pass times, like mlir-opt's `--mlir-timing`."""
        total = sum(r.ms for r in self.records) or 1e-9
        lines = ["===" + "-" * 60 + "===", "  Pass execution timing report",
                 f"  total: {total:.3f} ms", "===" + "-" * 60 + "===",
                 f"  {'ms':>10}  {'%':>6}  {'changed':>7}  pass"]
        for r in self.records:
            lines.append(f"  {r.ms:10.3f}  {100 * r.ms / total:5.1f}%  {'yes' if r.changed else 'no':>7}  {r.name}")
        return "\n".join(lines) + "\n"


def _may_not_say(impl: Any) -> bool:
    """Whether a pass may return None instead of saying whether it changed the graph (then the manager
    compares the printed IR before and after it): any pass whose function is not annotated `-> bool`."""
    fn = getattr(impl, "_fn", None) or getattr(impl, "fn", None) or impl.run
    ret = getattr(fn, "__annotations__", {}).get("return")
    return ret not in ("bool", bool)


class _Adhoc:
    """A plain function used as an unregistered pass."""

    version = 0

    def __init__(self, name: str, fn: Callable[[Graph], bool | None]):
        self.name, self.fn = name, fn

    def run(self, graph: Graph) -> bool | None:
        return self.fn(graph)


def _snapshot(graph: Graph, stage: str) -> Graph:
    """A copy of the graph after `stage` (for PassRecord.ir_after). A graph that cannot be copied
    (a value used before it is defined) was broken by that pass: say which, with the verifier's
    words, rather than a KeyError from inside the copy."""
    try:
        return graph.clone()
    except KeyError:
        try:
            verify(graph)
        except VerifyError as e:
            raise PassVerifyError(f"pass '{stage}' left invalid IR: {e}", stage, e.op) from e
        raise
