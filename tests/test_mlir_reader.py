"""`avalon.mlir.from_mlir`: the avalon dialect read back into Avalon IR, as written and after upstream
MLIR and xDSL have printed it again; a training step's graph comes back and computes the same values."""
from __future__ import annotations

import numpy as np
import pytest
from mlir_samples import sample

import avalon as av
from avalon.cli import main
from avalon.ir import OPS
from avalon.mlir import MLIRReadError, from_mlir, to_mlir
from avalon.passes.testing import random_inputs

ir = pytest.importorskip("iree.compiler.ir", reason="needs the mlir extra: pip install -e '.[mlir]'")


def _upstream(text: str, **kw) -> str:
    ctx = ir.Context()
    ctx.allow_unregistered_dialects = True
    return ir.Module.parse(text, ctx).operation.get_asm(enable_debug_info=True, **kw)


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_reads_back_as_written_and_after_upstream_prints_it(name):
    g = sample(name)
    text = to_mlir(g, "avalon")
    assert str(from_mlir(text)) == str(g)
    # upstream's generic form and its custom form with #loc aliases and sorted attribute dictionaries
    assert str(from_mlir(_upstream(text, print_generic_op_form=True))) == str(g)
    assert str(from_mlir(_upstream(text))) == str(g)


def test_after_xdsl():
    pytest.importorskip("xdsl", reason="needs the mlir extra: pip install -e '.[mlir]'")
    from test_mlir import xdsl_roundtrip
    for name in ("conv2d", "fusion", "constant", "custom_vjp"):
        g = sample(name)
        assert str(from_mlir(xdsl_roundtrip(to_mlir(g, "avalon")))) == str(g)


def test_a_training_step_comes_back_and_computes_the_same():
    """LeNet's value-and-grad graph, channels-last and fused (regions, constants, layouts), read
    back from MLIR: the same text, the same numbers."""
    from avalon import zoo
    net = zoo.LeNet()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 4)
    g = av.trace(av.value_and_grad(lambda m, x, y: av.nn.functional.cross_entropy(m(x), y)), net, x, y)
    av.passes.PassManager.parse("canonicalize,cse,dce,layout,fuse,memory-plan").run(g)
    assert any(op.name == "fusion" for op in g.ops)
    assert any(r.type.layout is not None for op in g.walk() for r in op.results)  # channels-last kept
    back = from_mlir(to_mlir(g, "avalon"))
    assert str(back) == str(g)
    args = random_inputs(g, 1)
    for i, v in enumerate(g.inputs):  # labels in range
        if v.type.dtype.is_int:
            args[i] = y.astype(v.type.dtype.np)
    for a, b in zip(av.interpret(g, *args), av.interpret(back, *args)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_clear_errors():
    g = sample("add")
    with pytest.raises(MLIRReadError, match="linalg output cannot be read back"):
        from_mlir(to_mlir(g, "linalg"))
    text = to_mlir(g, "avalon")
    with pytest.raises(MLIRReadError, match=r"'avalon.frobnicate' at loc\(\"model.py\":7:0\): not an Avalon op"):
        from_mlir(text.replace('"avalon.add"', '"avalon.frobnicate"', 1))
    with pytest.raises(MLIRReadError, match="MLIR does not parse"):
        from_mlir(text.replace("func.return", "func.retrun", 1)[:-3])
    bad = to_mlir(sample("conv2d"), "avalon").replace("groups = 2 : i64", "groups = 3 : i64", 1)
    with pytest.raises(MLIRReadError, match=r"conv2d.*model.py:7"):
        from_mlir(bad)


def test_cli_import_reads_mlir(tmp_path, capsys):
    src, out = tmp_path / "g.avalon", tmp_path / "g.mlir"
    g = sample("max_pool2d")
    src.write_text(str(g))
    assert main(["export", str(src), "--to", "mlir", "-o", str(out)]) == 0
    assert main(["import", str(out)]) == 0
    assert capsys.readouterr().out == str(g)
    out.write_text(to_mlir(g, "linalg"))
    assert main(["import", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be read back" in err[0]


def test_locations_survive_a_name_and_the_parsers_own_are_dropped():
    text = to_mlir(sample("add"), "avalon").replace('loc("model.py":7:0)', 'loc("myop"("net.py":12:0))', 1)
    g = from_mlir(text)
    assert (g.ops[0].loc.file, g.ops[0].loc.line) == ("net.py", 12)
    assert all(op.loc is None for op in from_mlir(text.replace(' loc("model.py":7:0)', "")).ops[1:])
