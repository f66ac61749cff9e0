"""The kernel cache: generated sources as content-hashed files, imported with importlib.

Why files: Triton's `@jit` reads a kernel's source back with `inspect` (the interpreter rewrites
its AST; the GPU compiler hashes it), so the source must live in a real file — `exec` of a string
silently skips the interpreter's rewrite. Content-hashing the file makes it stable across runs, so
Triton's own binary cache (~/.triton/cache) hits too.

Key: sha256 of the source plus the codegen, Avalon and Triton versions and the device kind. Files
are `<AVALON_CACHE_DIR or ~/.cache/avalon>/triton/<key[:2]>/<key>.py`, written atomically
(temp file + os.replace) so a crash or a concurrent writer never leaves half a file; an entry whose
text differs from what it should hold, or that fails to import, is rebuilt. Hits and misses are
logged on channel `avalon.cache` with their key.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import triton

from avalon import version as avalon_version
from avalon.channels import get_logger

log = get_logger("cache")

CODEGEN_VERSION = "1"  # bump when generated code changes meaning for the same text (helpers, launch)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


_announced = False


def announce_interpreter() -> None:
    """Say once per process, when the first graph is compiled, that kernels will run in Triton's
    interpreter because the package switched it on for lack of a GPU (not when the user asked)."""
    global _announced
    if _announced or os.environ.get("AVALON_AUTO_INTERPRET") != "1" or not interpreting():
        return
    _announced = True
    get_logger("triton").warning(
        "no CUDA GPU: Triton kernels run in Triton's interpreter on the CPU (correct, but roughly 50-100x slower "
        "than backend='numpy'; TRITON_INTERPRET=0 turns this off)")


def device_kind() -> str:
    if interpreting():
        return "interpreter"
    try:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"cuda-sm{major}{minor}"
    except Exception:  # pragma: no cover - a broken CUDA install must not stop codegen
        pass
    return "cuda"


def default_root() -> Path:
    return Path(os.environ.get("AVALON_CACHE_DIR") or Path.home() / ".cache" / "avalon") / "triton"


class KernelCache:
    """Loads kernel functions from sources, going through the on-disk cache."""

    _loaded: dict[str, Any] = {}  # kernel file -> its module, shared by every cache in the process

    def __init__(self, root: str | os.PathLike | None = None):
        self._root = Path(root) if root is not None else None
        self.hits = 0
        self.misses = 0

    @property
    def root(self) -> Path:
        return self._root if self._root is not None else default_root()

    def key(self, source: str) -> str:
        h = hashlib.sha256()
        for part in (CODEGEN_VERSION, avalon_version.__version__, triton.__version__, device_kind(), source):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.py"

    def load(self, name: str, source: str) -> Any:
        """The `@triton.jit` function `name` defined by `source`."""
        key = self.key(source)
        where = str(self.path(key))
        mod = self._loaded.get(where)
        if mod is None:
            mod = self._load_module(key, source)
            self._loaded[where] = mod
        return getattr(mod, name)

    def _load_module(self, key: str, source: str):
        path = self.path(key)
        state = self._check(path, source)
        if state == "hit":
            self.hits += 1
            log.debug("hit %s", key)
        else:
            self.misses += 1
            log.debug("%s %s -> %s", "miss" if state == "missing" else f"rebuild ({state})", key, path)
            self._write(path, source)
        try:
            return self._import(key, path)
        except Exception as e:
            if state != "hit":
                raise
            log.debug("rebuild %s: cached entry failed to import (%s)", key, e)
            self._write(path, source)
            return self._import(key, path)

    @staticmethod
    def _check(path: Path, source: str) -> str:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return "missing"
        except (OSError, UnicodeDecodeError) as e:
            return f"unreadable: {e}"
        return "hit" if text == source else "corrupted"

    @staticmethod
    def _write(path: Path, source: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(source)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def _import(key: str, path: Path):
        name = f"avalon_kernel_{key[:24]}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:  # pragma: no cover
            raise ImportError(f"cannot import kernel file {path}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return mod
