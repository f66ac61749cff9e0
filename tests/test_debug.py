"""AVALON_DEBUG_DIR: one folder per compiled signature with IR per pass, fusion log, plan, kernels."""
import logging
import os

import numpy as np
import pytest

import avalon as av
from avalon import debug
from avalon.compiler.testing import group_chains
from avalon.passes import PassManager


def f(x, y):
    return av.ops.relu(x + y) * av.ops.exp(x)


def _args(rng):
    return rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)


def test_each_compile_writes_a_folder_with_every_stage(tmp_path, monkeypatch, rng):
    monkeypatch.setenv("AVALON_DEBUG_DIR", str(tmp_path))
    pm = PassManager(["canonicalize", "cse", group_chains, "memory-plan"])
    c = av.compile(f, pipeline=pm)
    x, y = _args(rng)
    c(x, y)
    c(x, y)  # cached: nothing written again
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("f-")
    insp = c.inspect(x, y)
    assert insp.debug_dir == str(folder) and str(folder) in str(insp)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    assert files == ["00-traced.avalon", "01-canonicalize.avalon", "02-cse.avalon", "03-group-chains.avalon",
                     "04-memory-plan.avalon", "final.avalon", "fusion.log", "generated.py", "graph.dot", "kernels",
                     "kernels/fused_add_relu_0.avalon", "kernels/fused_exp_1.avalon", "memory-plan.txt", "summary.txt"]
    read = {name: (folder / name).read_text() for name in files if name != "kernels"}
    assert read["00-traced.avalon"] == str(insp.traced_graph)
    assert read["03-group-chains.avalon"] == insp.passes[2].ir_after
    for name in files:
        if name.endswith(".avalon"):
            av.ir.parse(read[name])  # every IR file reads back (final.avalon carries locations)
    assert "loc(" in read["final.avalon"]
    assert read["fusion.log"].splitlines() == ["debug: group @fused_add_relu_0: add -> relu",
                                               "debug: group @fused_exp_1: exp"]
    assert read["memory-plan.txt"].startswith("memory plan for @f:")
    assert "subgraph cluster_fused_add_relu_0" in read["graph.dot"]
    assert read["kernels/fused_exp_1.avalon"] == insp.kernels["fused_exp_1"]
    assert read["summary.txt"] == str(insp) + "\n"
    assert read["generated.py"] == insp.source and insp.source.startswith("def f(")
    assert not [p for p in folder.rglob(".tmp-*")]

    c(rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32))
    assert len(list(tmp_path.iterdir())) == 2  # a new signature, a new folder


def test_same_program_compiles_into_the_same_folder(tmp_path, monkeypatch, rng):
    monkeypatch.setenv("AVALON_DEBUG_DIR", str(tmp_path))
    x, y = _args(rng)
    av.compile(f)(x, y)
    av.compile(f)(x, y)
    assert len(list(tmp_path.iterdir())) == 1
    av.compile(f, pipeline="cse")(x, y)
    assert len(list(tmp_path.iterdir())) == 2


def test_nothing_is_written_without_the_variable(tmp_path, monkeypatch, rng):
    monkeypatch.delenv("AVALON_DEBUG_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    c = av.compile(f)
    c(*_args(rng))
    assert c.inspect(*_args(rng)).debug_dir is None and list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "a" / "x.avalon"
    debug.atomic_write(str(path), "old")
    assert path.read_text() == "old"

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        debug.atomic_write(str(path), "new")
    assert path.read_text() == "old" and os.listdir(path.parent) == ["x.avalon"]


def test_capture_log_collects_quietly_and_restores_the_logger(caplog):
    logger = logging.getLogger("avalon.fusion")
    level, propagate = logger.level, logger.propagate
    with caplog.at_level(logging.WARNING, logger="avalon"):
        with debug.capture_log("fusion") as lines:
            logger.debug("fused %s", "a")
            logger.info("kept b")
        logger.debug("after")
    assert lines == ["debug: fused a", "info: kept b"]
    assert (logger.level, logger.propagate) == (level, propagate)
    assert "fused a" not in caplog.text  # a channel the user did not switch on stays off their output


def test_a_pass_version_bump_writes_a_new_folder(tmp_path, monkeypatch, rng):
    """The folder hash includes PassManager.key(), so a changed pass does not reuse old files."""
    from avalon import passes

    monkeypatch.setenv("AVALON_DEBUG_DIR", str(tmp_path))
    monkeypatch.setattr(passes.registry, "PASSES", dict(passes.registry.PASSES))
    x, y = _args(rng)

    @passes.register("tweak", version=1)
    def tweak(graph):
        return False
    insp = av.compile(f, pipeline="cse,tweak").inspect(x, y)
    assert insp.pipeline_key == "cse@1,tweak@1"

    @passes.register("tweak", version=2, replace=True)
    def tweak2(graph):
        return False
    av.compile(f, pipeline="cse,tweak")(x, y)
    assert len(list(tmp_path.iterdir())) == 2
