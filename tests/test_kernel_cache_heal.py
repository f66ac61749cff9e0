"""The kernel cache heals damage it can see and never runs bytecode it did not make (issue 13)."""
from __future__ import annotations

import importlib.util
import marshal
import os
import shutil
import sys

import numpy as np
import pytest

from avalon.codegen.triton.build import compile_graph
from avalon.codegen.triton.cache import KernelCache
from avalon.ir import to_numpy
from tests.helpers import graph


def _exp_graph():
    g, b, (x,) = graph(((5,), "f32"))
    g.set_outputs([b("exp", x)])
    return g


def _compile_fresh(root):
    KernelCache._loaded.clear()  # as if in a new process
    cache = KernelCache(root)
    return cache, compile_graph(_exp_graph(), cache=cache)


def _works(cg, rng):
    x0 = rng.standard_normal(5).astype(np.float32)
    np.testing.assert_allclose(to_numpy(cg(x0)[0]), np.exp(x0), rtol=1e-6)


@pytest.mark.parametrize("damage", ["entry_is_dir", "shard_is_file", "entry_is_symlink", "truncated", "empty"])
def test_damage_is_healed(tmp_path, rng, damage):
    root = tmp_path / "kc"
    _compile_fresh(root)
    (path,) = root.rglob("*.py")
    good = path.read_text()
    if damage == "entry_is_dir":
        path.unlink()
        (path / "sub").mkdir(parents=True)
    elif damage == "shard_is_file":
        shutil.rmtree(path.parent)
        path.parent.write_text("not a directory")
    elif damage == "entry_is_symlink":
        other = tmp_path / "elsewhere.py"
        other.write_text(good)
        path.unlink()
        path.symlink_to(other)
    elif damage == "truncated":
        path.write_text(good[: len(good) // 3])
    else:
        path.write_text("")
    cache, cg = _compile_fresh(root)
    assert cache.misses == 1 and cache.hits == 0
    assert path.is_file() and not path.is_symlink() and path.read_text() == good
    _works(cg, rng)
    cache, cg = _compile_fresh(root)
    assert cache.hits == 1


def test_forged_bytecode_is_never_run(tmp_path, rng):
    """A .pyc with the right header (source size and mtime) would be trusted by Python's import
    machinery; the cache compiles the verified source itself."""
    root = tmp_path / "kc"
    _compile_fresh(root)
    (path,) = root.rglob("*.py")
    st = os.stat(path)
    evil = compile("import builtins\nbuiltins.AVALON_FORGED_PYC_RAN = True\n", str(path), "exec")
    data = bytearray(importlib.util.MAGIC_NUMBER)
    data += (0).to_bytes(4, "little") + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
    data += (st.st_size & 0xFFFFFFFF).to_bytes(4, "little") + marshal.dumps(evil)
    pyc = importlib.util.cache_from_source(str(path))
    os.makedirs(os.path.dirname(pyc), exist_ok=True)
    with open(pyc, "wb") as f:
        f.write(bytes(data))
    import builtins
    try:
        cache, cg = _compile_fresh(root)
        assert cache.hits == 1
        assert not hasattr(builtins, "AVALON_FORGED_PYC_RAN")
        _works(cg, rng)
        assert not [p for p in root.rglob("*.pyc") if p != __import__("pathlib").Path(pyc)]  # none written by us
    finally:
        if hasattr(builtins, "AVALON_FORGED_PYC_RAN"):
            del builtins.AVALON_FORGED_PYC_RAN


def test_loaded_kernels_know_their_file(tmp_path):
    root = tmp_path / "kc"
    cache, cg = _compile_fresh(root)
    (path,) = root.rglob("*.py")
    mods = [m for m in sys.modules.values() if getattr(m, "__file__", None) == str(path)]
    assert mods and not (path.parent / "__pycache__").exists()
