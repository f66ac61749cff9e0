"""`avalon export FILE --to mlir|linalg -o OUT`: text IR in, MLIR that upstream tools read out."""
from __future__ import annotations

import pytest
from mlir_samples import sample

from avalon.cli import main

ir = pytest.importorskip("iree.compiler.ir", reason="needs the mlir extra: pip install -e '.[mlir]'")


def _parse(text: str, unregistered: bool):
    ctx = ir.Context()
    ctx.allow_unregistered_dialects = unregistered
    m = ir.Module.parse(text, ctx)
    assert m.operation.verify()
    return m


@pytest.mark.parametrize("to,unregistered", [("mlir", True), ("linalg", False)])
def test_export_writes_mlir_that_upstream_parses(tmp_path, to, unregistered):
    src = tmp_path / "g.avalon"
    src.write_text(str(sample("conv2d")))
    out = tmp_path / f"out.{to}.mlir"
    assert main(["export", str(src), "--to", to, "-o", str(out)]) == 0
    text = out.read_text()
    _parse(text, unregistered)
    assert ('"avalon.conv2d"' in text) == (to == "mlir")
    assert ("linalg.conv_2d_ngchw_gfchw" in text) == (to == "linalg")


def test_export_to_stdout_and_clear_errors(tmp_path, capsys):
    src = tmp_path / "g.avalon"
    src.write_text(str(sample("add")))
    assert main(["export", str(src), "--to", "linalg", "-o", "-"]) == 0
    assert "func.func @t_add" in capsys.readouterr().out
    assert main(["export", str(src), "--to", "mlir", "-o", str(tmp_path / "no" / "such" / "dir.mlir")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("avalon export: error: cannot write")
    with pytest.raises(SystemExit):
        main(["export", str(src), "--to", "tosa", "-o", "-"])
