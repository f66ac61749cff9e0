"""The debug directory: everything one compile did, as files, switched on by `AVALON_DEBUG_DIR`.

`AVALON_DEBUG_DIR=path` makes every `av.compile` of a new signature write a folder
`path/<function>-<hash>/` (the hash is of the traced IR, backend and pipeline with its passes'
options and versions, so the same program compiles into the same folder) holding:

    00-traced.avalon, 01-canonicalize.avalon, ... the IR after tracing and after each pass
    final.avalon                                the final IR with source locations
    fusion.log                                  what the fusion pass said (logger `avalon.fusion`)
    memory-plan.txt                             the buffer plan of the final graph
    graph.dot                                   the final graph for Graphviz, fused groups as clusters
    kernels/<name>.py                           generated kernels (`.avalon` regions on the numpy backend)
    generated.py                                the generated program (the numpy backend's function)
    summary.txt                                 what `compiled.inspect(...)` prints

Every file is written atomically (a temporary file in the same folder, then `os.replace`), so a
reader never sees half a file, and two processes compiling the same program do not corrupt it.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from avalon.compiler.core import Inspection

ENV = "AVALON_DEBUG_DIR"


def debug_root() -> str | None:
    """The debug directory named by the environment, or None when debugging output is off."""
    path = os.environ.get(ENV, "").strip()
    return path or None


def atomic_write(path: str, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the whole new one."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname.lower()}: {record.getMessage()}")


@contextlib.contextmanager
def capture_log(channel: str = "fusion") -> Iterator[list[str]]:
    """Collect the messages of logger `avalon.<channel>` (DEBUG and up) while the block runs.
    A channel the user did not switch on is raised to DEBUG only for the block and does not
    reach their stderr; one they switched on (`AVALON_LOG`) keeps printing as well."""
    logger = logging.getLogger(f"avalon.{channel}")
    handler = _ListHandler()
    was_on = logger.isEnabledFor(logging.DEBUG)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    if not was_on:
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "fn"


def folder_name(insp: Inspection) -> str:
    """`<function>-<hash of traced IR, backend and pipeline>`; the pipeline counts with its key
    (every option value and pass version), so a pass whose version changes writes a new folder."""
    h = hashlib.sha1()
    for part in (str(insp.traced_graph), insp.backend, insp.pipeline, insp.pipeline_key):
        h.update(part.encode())
        h.update(b"\0")
    return f"{_slug(insp.name)}-{h.hexdigest()[:10]}"


def dump(insp: Inspection, root: str, fusion_log: list[str] | None = None) -> str:
    """Write the debug folder of one compiled signature under `root`; returns the folder."""
    from avalon.ir import print_graph, to_dot

    folder = os.path.join(root, folder_name(insp))
    insp.debug_dir = folder
    atomic_write(os.path.join(folder, "00-traced.avalon"), str(insp.traced_graph))
    for i, rec in enumerate(insp.passes, start=1):
        if rec.ir_after is not None:
            atomic_write(os.path.join(folder, f"{i:02d}-{_slug(rec.name)}.avalon"), rec.ir_after)
    atomic_write(os.path.join(folder, "final.avalon"), print_graph(insp.graph, locations=True))
    atomic_write(os.path.join(folder, "fusion.log"), "".join(line + "\n" for line in fusion_log or ()))
    plan = insp.memory_plan
    atomic_write(os.path.join(folder, "memory-plan.txt"), plan.report() if plan is not None else "no plan\n")
    atomic_write(os.path.join(folder, "graph.dot"), to_dot(insp.graph))
    for name, src in insp.kernels.items():
        atomic_write(os.path.join(folder, "kernels", _slug(name) + insp.kernel_suffix), src)
    if insp.source:
        atomic_write(os.path.join(folder, "generated.py"), insp.source)
    atomic_write(os.path.join(folder, "summary.txt"), str(insp) + "\n")
    return folder
