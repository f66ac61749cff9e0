"""Layering: the IR, passes, autodiff and tracing never import the compile driver or a backend,
so each can be used (and tested) without them and data flows one way (DESIGN.md section 2)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "avalon"
LOWER = ["ir", "passes", "autodiff", "tensor.py", "ops.py", "trace.py"]
FORBIDDEN = ("avalon.compiler", "avalon.codegen")


def _imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module) if p)
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("part", LOWER)
def test_lower_layers_do_not_import_the_driver_or_backends(part):
    target = ROOT / part
    files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
    bad = [f"{p.relative_to(ROOT.parent)} imports {n}" for p in files for n in sorted(_imports(p))
           if n.startswith(FORBIDDEN)]
    assert not bad, "\n".join(bad)
