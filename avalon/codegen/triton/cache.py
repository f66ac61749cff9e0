"""The kernel cache: generated sources as content-hashed files, imported with importlib.

Why files: Triton's `@jit` reads a kernel's source back with `inspect` (the interpreter rewrites
its AST; the GPU compiler hashes it), so the source must live in a real file — `exec` of a string
silently skips the interpreter's rewrite. Content-hashing the file makes it stable across runs, so
Triton's own binary cache (~/.triton/cache) hits too.

Key: sha256 of the source plus the codegen, Avalon and Triton versions and the device kind. Files
are `<AVALON_CACHE_DIR or ~/.cache/avalon>/triton/<key[:2]>/<key>.py`, written atomically
(temp file + os.replace) so a crash or a concurrent writer never leaves half a file. The cache heals
what it can see: an entry whose text differs from what it should hold (truncated, edited), that is
not a regular file (a directory, a symlink), whose shard directory became a file, or that fails to
import is removed and rebuilt. Hits, misses and rebuilds are logged on channel `avalon.cache`.

Loading never runs bytecode: Python's import machinery would read (and trust) any
`__pycache__/<name>.pyc` whose header matches the source's size and mtime, so a forged .pyc would
run instead of the verified source. We compile the verified source text ourselves and exec the
code object in a fresh module whose `__file__` is the real file (Triton reads the source back from
it), so nothing is read from or written to `__pycache__`.

Tuning entries (`autotune.py`): `<root>/tuning/<key[:2]>/<key>.json`, the winning launch config of
one kernel on one device with every candidate's time, written atomically the same way; one that is
unreadable, not JSON, not a JSON object or not a regular file is removed and re-timed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import types
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
            return self._import(key, path, source)
        except Exception as e:
            if state != "hit":
                raise
            log.debug("rebuild %s: cached entry failed to import (%s)", key, e)
            self._write(path, source)
            return self._import(key, path, source)

    @staticmethod
    def _check(path: Path, source: str) -> str:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "missing"
        except NotADirectoryError:
            return "shard is not a directory"
        except OSError as e:
            return f"unreadable: {e}"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            return f"unreadable: {e}"
        return "hit" if text == source else "corrupted"

    @staticmethod
    def _clear(p: Path, want_dir: bool) -> None:
        """Remove what sits at `p` unless it is what belongs there: a real directory (`want_dir`)
        or a regular file (which `os.replace` then swaps atomically, so readers never miss it)."""
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode):
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    @classmethod
    def _write(cls, path: Path, source: str) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # the shard directory was replaced by a file
            cls._clear(path.parent, want_dir=True)
            path.parent.mkdir(parents=True, exist_ok=True)
        cls._clear(path, want_dir=False)  # a directory or symlink where the entry should be
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(source)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def _import(key: str, path: Path, source: str):
        """Run `source` (the verified text, which `path` holds) as module code: no bytecode is read
        or written, and Triton finds the source through `__file__` / the code's file name."""
        name = f"avalon_kernel_{key[:24]}"
        code = compile(source, str(path), "exec", dont_inherit=True)
        mod = types.ModuleType(name)
        mod.__file__ = str(path)
        sys.modules[name] = mod
        try:
            exec(code, mod.__dict__)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return mod

    # --- tuning entries ---------------------------------------------------------------------------
    def tuning_key(self, source: str, device: str, version: str, candidates: list[str]) -> str:
        """(kernel source: every shape and dtype, device name, candidate set) -> key."""
        return self.key("\0".join(["tuning", device, version, *candidates, source]))

    def tuning_path(self, key: str) -> Path:
        return self.root / "tuning" / key[:2] / f"{key}.json"

    def load_tuning(self, key: str) -> dict | None:
        """The stored record, or None (missing; a bad entry is removed so it is timed again)."""
        path = self.tuning_path(key)
        state = self._check(path, "")
        if state == "missing":
            return None
        if state in ("hit", "corrupted"):  # a regular, readable file: is it a record?
            try:
                rec = json.loads(path.read_text())
                if isinstance(rec, dict):
                    log.debug("tuning hit %s", key)
                    return rec
                state = "not a JSON object"
            except (OSError, UnicodeDecodeError, ValueError) as e:
                state = f"unreadable: {e}"
        log.debug("tuning rebuild (%s) %s", state, key)
        self.drop_tuning(key)
        return None

    def save_tuning(self, key: str, record: dict) -> None:
        self._write(self.tuning_path(key), json.dumps(record, sort_keys=True))

    def drop_tuning(self, key: str) -> None:
        path = self.tuning_path(key)
        try:
            self._clear(path, want_dir=False)  # a directory or symlink where the entry belongs
            path.unlink(missing_ok=True)
        except OSError:  # the shard is a file: `_write` replaces it
            pass
