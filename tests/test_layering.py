"""The package's layers import one way (docs/CONTRIBUTING.md), checked by reading the imports.

    ir  <-  frontend (tensor, ops, trace, tree, device, random), autodiff, passes
        <-  codegen backends  <-  compiler driver  <-  nn, optim, train, checkpoint, zoo, cli

A module may import its own layer and the layers below it, never above: the reference semantics
of the ops live in `avalon.ir`, so nothing below the backends needs a backend; the backends never
reach up into the driver, the layers or the top-level package. Imports inside functions count too
(a lazy import is still a dependency).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "avalon"

# the most specific prefix wins; utilities with no avalon dependencies sit at the bottom
LAYERS = {
    "avalon.channels": 0, "avalon.version": 0, "avalon.precision": 0, "avalon.ir": 0,
    "avalon.grad_mode": 0, "avalon.jit": 0,
    "avalon.tensor": 1, "avalon.ops": 1, "avalon.trace": 1, "avalon.trace_state": 1, "avalon.tree": 1, "avalon.device": 1,
    "avalon.random": 1, "avalon.views": 1, "avalon.cuda": 1, "avalon.autodiff": 1, "avalon.batching": 1, "avalon.passes": 1,
    "avalon.amp": 1, "avalon.complex": 1, "avalon.control_flow": 1, "avalon.sparse": 1, "avalon.fft": 1,
    "avalon.codegen": 2, "avalon.mlir": 2,
    "avalon.compiler": 3, "avalon.debug": 3,
    "avalon.nn": 4, "avalon.optim": 4, "avalon.train": 4, "avalon.checkpoint": 4, "avalon.zoo": 4,
    "avalon.interop": 4, "avalon.onnx": 4, "avalon.cli": 4, "avalon.demo": 4, "avalon.distributed": 4, "avalon": 4,
    "avalon.utils": 4, "avalon.distributions": 4, "avalon.vision": 4,
}
NAMES = {0: "ir", 1: "frontend/autodiff/passes", 2: "codegen", 3: "compiler driver", 4: "nn/optim/train/cli"}


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    raise KeyError(f"{module} is in no layer: add it to LAYERS in tests/test_layering.py")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported avalon module, line) for every import in the file, relative ones resolved;
    `from pkg import name` depends on `pkg.name` when that is a submodule, else on `pkg`."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "avalon"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "avalon":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                path = ROOT.parent / sub.replace(".", "/")
                is_module = path.with_suffix(".py").exists() or (path / "__init__.py").exists()
                out.append((sub if is_module else target, node.lineno))
    return out


FILES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT.parent)) for p in FILES])
def test_imports_run_one_way(path):
    mine = layer(module_name(path))
    bad = []
    for target, line in imports(path):
        if target == "avalon" and mine < 4:
            bad.append(f"line {line}: imports the top-level package `avalon`")
        elif layer(target) > mine:
            bad.append(f"line {line}: imports {target} ({NAMES[layer(target)]}) from the {NAMES[mine]} layer")
    assert not bad, f"{path.relative_to(ROOT.parent)}:\n  " + "\n  ".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The reader itself: a relative import inside a function resolves to its absolute module."""
    pkg = ROOT / "passes"
    fake = pkg / "__layering_probe__.py"
    fake.write_text("def f():\n    from ..codegen import triton\n")
    try:
        found = imports(fake)
    finally:
        fake.unlink()
    assert found == [("avalon.codegen.triton", 2)]


def test_one_meaning_per_class_name():
    """Two classes with one name in two modules read as one concept and are not: each name once."""
    where: dict[str, list[str]] = {}
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(str(path.relative_to(ROOT.parent)))
    twice = {k: v for k, v in where.items() if len(v) > 1}
    assert not twice, twice
