"""Row-parallel runs in the numpy backend: split or not, results are the sequential ones bit for bit,
and a run is never split when its threads' rows could overlap."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from test_numpy_codegen import _inputs, chains, check

from avalon.codegen.numpy import GeneratedExecutable, kernels, rows
from avalon.codegen.numpy.backend import NUMPY
from avalon.ir import Builder, Graph, TensorType, interpret
from avalon.ir.fusion import outline
from avalon.passes import DEFAULT_PIPELINE, PassManager


@pytest.fixture
def split_everything(monkeypatch):
    """Two threads and no minimum work, so every eligible run of these small graphs is split."""
    monkeypatch.setenv("AVALON_NUMPY_THREADS", "2")
    monkeypatch.setattr(rows, "MIN_WORK", 0)


@settings(max_examples=60, deadline=None)
@given(chains())
def test_split_runs_match_the_interpreter(g):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AVALON_NUMPY_THREADS", "2")
        mp.setattr(rows, "MIN_WORK", 0)
        PassManager.parse(DEFAULT_PIPELINE, target=NUMPY).run(g)
        check(g, seeds=(0,))


def _group(shape=(6, 5)) -> Graph:
    g = Graph("f")
    b = Builder(g)
    x, y = g.add_input(TensorType(shape, "f32"), "x"), g.add_input(TensorType(shape, "f32"), "y")
    row = b("broadcast", g.add_input(TensorType(shape[1:], "f32"), "row"), shape=list(shape))
    t = b("exp", b("mul", x, row))
    u = b("where", b("gt", t, y), b("sub", t, y), b("tanh", y))
    g.set_outputs([b("add", u, b("sigmoid", x)), b("cast", b("lt", u, x), dtype="f32")])
    outline([op for op in g.ops if op.name != "constant"], "fused")
    return g


def test_a_group_is_split_and_exact(split_everything):
    g = _group()
    exe = GeneratedExecutable(g)
    assert "K.rows(" in exe.source and "[lo:hi]" in exe.source
    args = _inputs(g, 0)
    for got, want in zip(exe(*args), interpret(g, *args)):
        np.testing.assert_array_equal(got, want)


def test_one_thread_or_little_work_stays_sequential(monkeypatch):
    monkeypatch.setenv("AVALON_NUMPY_THREADS", "1")
    monkeypatch.setattr(rows, "MIN_WORK", 0)
    assert "K.rows(" not in GeneratedExecutable(_group()).source
    monkeypatch.setenv("AVALON_NUMPY_THREADS", "2")
    monkeypatch.setattr(rows, "MIN_WORK", 1 << 30)
    assert "K.rows(" not in GeneratedExecutable(_group()).source


def test_a_transposed_view_of_a_written_array_keeps_the_run_sequential(split_everything):
    """A square update whose transpose is read in the same run: row halves would overlap."""
    g = Graph("f")
    b = Builder(g)
    w = g.add_input(TensorType((4, 4), "f32"), "w")
    wt = b("transpose", w, perm=[1, 0])
    g.set_outputs([b("add", b("exp", w), wt)])
    outline([g.ops[-2], g.ops[-1]], "fused")
    exe = GeneratedExecutable(g)
    exe.donated = {}
    src = exe.source
    a = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    np.testing.assert_array_equal(exe(a)[0], interpret(g, a)[0])
    assert "K.rows(" not in src or "transpose" not in src.split("K.rows(")[0].split("def _rows")[-1]


def test_reused_slots_of_other_row_sizes_keep_the_run_sequential(split_everything):
    """f32 and bool values sharing one scratch slot have different row sizes in bytes: split, a
    thread's bool rows would land on the other thread's float rows."""
    from avalon.codegen.numpy.generator import Generator, Memory
    gen = Generator(Graph("f"), None, NUMPY)
    gen.arrays.update({"p": Memory(("slot", 0), (8, 5), 4), "q": Memory(("slot", 0), (8, 5), 1)})
    assert rows._sliceable(gen, ["    np.greater(p, 0, out=q)"], (8, 5)) is None
    gen.arrays["q"] = Memory(("slot", 0), (8, 5), 4)
    assert rows._sliceable(gen, ["    np.negative(p, out=q)"], (8, 5)) == {"p", "q"}
    gen.arrays["v"] = Memory(("slot", 0), (8, 5), 4, rows=False)
    assert rows._sliceable(gen, ["    np.add(p, v, out=q)"], (8, 5)) is None
    assert rows._sliceable(gen, ["    np.add(p, mystery, out=q)"], (8, 5)) is None


def test_a_failing_part_raises_after_every_part_is_done(monkeypatch):
    monkeypatch.setenv("AVALON_NUMPY_THREADS", "3")
    done = []

    def part(lo, hi):
        if lo:
            raise ValueError(f"rows {lo}:{hi}")
        done.append((lo, hi))
    with pytest.raises(ValueError, match="rows"):
        kernels.rows(part, 9)
    assert done == [(0, 3)]


def test_bad_thread_counts_are_named(monkeypatch):
    monkeypatch.setenv("AVALON_NUMPY_THREADS", "many")
    with pytest.raises(ValueError, match="AVALON_NUMPY_THREADS"):
        kernels.row_threads()
    monkeypatch.setenv("AVALON_NUMPY_THREADS", "0")
    with pytest.raises(ValueError, match="at least 1"):
        kernels.row_threads()
