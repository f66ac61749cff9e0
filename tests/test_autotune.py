"""The autotuner's machinery on the CPU, with a fake timer in place of the GPU: the choice, its
persistence (in the kernel cache, across processes), healing of bad entries, the interpreter's
fixed config, and that every candidate of each kernel kind still computes the right answer."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import avalon as av
from avalon.codegen.triton import KernelCache, compile_graph
from avalon.codegen.triton.autotune import Tuner, candidates, config_of
from avalon.ir import Builder, Graph, TensorType

DEVICE = "fake-gpu"


def linear_graph() -> Graph:
    g = Graph("f")
    b = Builder(g)
    x, w = g.add_input(TensorType((40, 50), "f32"), "x"), g.add_input(TensorType((50, 60), "f32"), "w")
    g.set_outputs([b("relu", b("matmul", x, w))])
    return g


def softmax_graph(n: int = 3000) -> Graph:
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((6, n), "f32"), "x")
    e = b("exp", b("sub", x, b("broadcast", b("max", x, axes=[1], keepdims=True), shape=[6, n])))
    g.set_outputs([b("div", e, b("broadcast", b("sum", e, axes=[1], keepdims=True), shape=[6, n]))])
    return g


class FakeTimer:
    """Times by a table (label -> ms), 1.0 for the rest; counts calls."""

    def __init__(self, fast: dict[str, float] | None = None):
        self.fast = fast or {}
        self.calls: list[str] = []

    def __call__(self, k, make_args) -> float:
        label = config_of(k).label
        self.calls.append(label)
        return self.fast.get(label, 1.0)


def never(k, make_args) -> float:
    raise AssertionError("timed although a winner was stored")


def only_kernel(cg, kind: str):
    ks = [ln.kernel for ln in cg.launches if ln.kernel.kind == kind]
    assert len(ks) == 1, [ln.kernel.kind for ln in cg.launches]
    return ks[0]


def default_kernel(graph: Graph, kind: str, cache: KernelCache):
    return only_kernel(compile_graph(graph, cache=cache), kind)


@pytest.mark.parametrize("make,kind,ref", [
    (linear_graph, "contraction", lambda x, w: np.maximum(x @ w, 0)),
    (softmax_graph, "reduction", lambda x: np.exp(x - x.max(1, keepdims=True)) / np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)),
])
def test_fastest_candidate_is_chosen_stored_and_computes_the_same(tmp_path, make, kind, ref):
    from avalon.codegen.triton.target import TRITON
    from avalon.passes import DEFAULT_PIPELINE, PassManager
    g = make()
    PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
    cache = KernelCache(tmp_path)
    k0 = default_kernel(g, kind, cache)
    cands = candidates(k0)
    assert len(cands) > 2 and cands[0] == config_of(k0)
    pick = cands[-1]  # not the policy's config: the tuner must act on the times
    timer = FakeTimer({pick.label: 0.25, cands[1].label: 0.5})
    cg = compile_graph(g, cache=cache, tuner=Tuner(timer, force=True, device=DEVICE))
    k = only_kernel(cg, kind)
    assert config_of(k) == pick and k.meta == pick.blocks
    rec = cg.tuning[k.name]
    assert rec["how"] == "timed" and rec["config"] == pick.label
    assert sorted(rec["times"]) == sorted(c.label for c in cands) and sorted(timer.calls) == sorted(rec["times"])
    assert rec["times"][cands[1].label] == 0.5
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(v.type.shape).astype(np.float32) for v in g.inputs]
    np.testing.assert_allclose(cg(*xs)[0].numpy(), ref(*xs), rtol=2e-4, atol=2e-5)
    # a second compile reads the stored winner: no timing at all
    again = Tuner(never, force=True, device=DEVICE)
    cg2 = compile_graph(g, cache=cache, tuner=again)
    assert config_of(only_kernel(cg2, kind)) == pick and again.timed == 0
    assert cg2.tuning[k.name]["how"] == "cached" and cg2.tuning[k.name]["times"] == rec["times"]
    # another device is another key: timed again
    other = FakeTimer()
    compile_graph(g, cache=cache, tuner=Tuner(other, force=True, device="another-gpu"))
    assert len(other.calls) == len(cands)


def test_reduction_candidates_include_a_looped_form():
    """Rows longer than a looped RBLOCK get looped candidates (a different source than the persistent one)."""
    from avalon.codegen.triton.autotune import reduction_candidates
    from avalon.codegen.triton.kernel import Kernel
    k = Kernel("k", "reduction", "", [], {"XBLOCK": 1, "RBLOCK": 4096}, (6,), problem={"x": 6, "r": 3000})
    rbs = {c.blocks["RBLOCK"] for c in reduction_candidates(k)}
    assert rbs == {4096, 1024}


@pytest.mark.parametrize("itemsize", [2, 4])
def test_contraction_candidates_fit_in_shared_memory(itemsize):
    """Every candidate's staged A and B tiles fit an H100's shared memory; the big 128x256 tile
    stays a candidate for float32 too, with fewer stages or half the K depth."""
    from avalon.codegen.triton.autotune import SMEM_BYTES, contraction_candidates
    from avalon.codegen.triton.kernel import Kernel
    meta = {"BM": 128, "BN": 128, "BK": 32, "GROUP_M": 8}
    k = Kernel("k", "contraction", "", [], meta, (1,), num_warps=8, num_stages=3,
               problem={"m": 4096, "n": 4096, "k": 4096, "groups": 1, "itemsize": itemsize, "tma": 1})
    cands = contraction_candidates(k)
    sizes = {c.label: c.num_stages * (c.blocks["BM"] + c.blocks["BN"]) * c.blocks["BK"] * itemsize for c in cands}
    assert max(sizes.values()) <= SMEM_BYTES, sizes
    assert all(c.num_stages >= 2 for c in cands)
    big = {(c.blocks["BK"], c.num_stages, c.blocks.get("TMA", 0)) for c in cands if c.blocks["BN"] == 256}
    want = {(64, 3)} if itemsize == 2 else {(64, 2), (32, 3)}
    assert {(bk, s) for bk, s, _ in big} == want and {t for *_, t in big} == {0, 1}, big


PERSIST = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from test_autotune import linear_graph, never, DEVICE, only_kernel
    from avalon.codegen.triton import KernelCache, compile_graph
    from avalon.codegen.triton.autotune import Tuner, config_of
    from avalon.passes import DEFAULT_PIPELINE, PassManager
    from avalon.codegen.triton.target import TRITON
    g = linear_graph()
    PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
    tuner = Tuner(never, force=True, device=DEVICE)
    cg = compile_graph(g, cache=KernelCache(sys.argv[2]), tuner=tuner)
    k = only_kernel(cg, "contraction")
    print(json.dumps({"config": config_of(k).label, "how": cg.tuning[k.name]["how"], "timed": tuner.timed}))
''')


def test_a_new_process_reuses_the_winner_without_timing(tmp_path):
    from avalon.codegen.triton.target import TRITON
    from avalon.passes import DEFAULT_PIPELINE, PassManager
    g = linear_graph()
    PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
    cache = KernelCache(tmp_path)
    pick = candidates(default_kernel(g, "contraction", cache))[2]
    compile_graph(g, cache=cache, tuner=Tuner(FakeTimer({pick.label: 0.1}), force=True, device=DEVICE))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", PERSIST, os.path.dirname(__file__), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"config": pick.label, "how": "cached", "timed": 0}


@pytest.mark.parametrize("damage", ["garbage", "json_list", "unknown_winner", "directory", "empty"])
def test_bad_tuning_entries_are_healed(tmp_path, damage):
    from avalon.codegen.triton.target import TRITON
    from avalon.passes import DEFAULT_PIPELINE, PassManager
    g = linear_graph()
    PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
    cache = KernelCache(tmp_path)
    pick = candidates(default_kernel(g, "contraction", cache))[1]
    compile_graph(g, cache=cache, tuner=Tuner(FakeTimer({pick.label: 0.1}), force=True, device=DEVICE))
    entries = list((tmp_path / "tuning").rglob("*.json"))
    assert len(entries) == 1
    path = entries[0]
    if damage == "garbage":
        path.write_text("{not json")
    elif damage == "json_list":
        path.write_text("[1, 2]")
    elif damage == "empty":
        path.write_text("")
    elif damage == "unknown_winner":
        rec = json.loads(path.read_text())
        rec["winner"]["meta"]["BM"] = 4096
        path.write_text(json.dumps(rec))
    else:
        path.unlink()
        path.mkdir()
        (path / "x").write_text("")
    timer = FakeTimer({pick.label: 0.1})
    cg = compile_graph(g, cache=cache, tuner=Tuner(timer, force=True, device=DEVICE))
    assert timer.calls, "a bad entry must be re-timed, not trusted"
    assert config_of(only_kernel(cg, "contraction")) == pick
    assert path.is_file() and KernelCache(tmp_path).load_tuning(path.stem)["winner"] == pick.to_json()


def test_interpreter_keeps_the_fixed_config_and_inspect_shows_it(tmp_path, monkeypatch):
    monkeypatch.setenv("AVALON_CACHE_DIR", str(tmp_path))
    g = linear_graph()
    timer = FakeTimer()
    tuner = Tuner(timer)  # not forced: the interpreter (this test process) times nothing
    cg = compile_graph(g, cache=KernelCache(tmp_path), tuner=tuner)
    k = only_kernel(cg, "contraction")
    assert not timer.calls and tuner.timed == 0 and not (tmp_path / "tuning").exists()
    assert cg.tuning[k.name] == {"config": config_of(k).label, "times": {}, "how": "fixed (interpreter)"}

    @av.compile(backend="triton")
    def f(x, w):
        return av.ops.relu(x @ w)

    x = np.ones((8, 16), np.float32)
    insp = f.inspect(x, np.ones((16, 24), np.float32))
    assert insp.tuning and all(r["how"] == "fixed (interpreter)" for r in insp.tuning.values())
    assert set(insp.tuning) <= set(insp.kernels)
    shown = insp.kernels[next(iter(insp.tuning))].splitlines()
    assert shown[0].startswith("# launch: grid (") and "num_warps=" in shown[0]
    assert shown[1] == f"# tuning: {next(iter(insp.tuning.values()))['config']}, fixed (interpreter)"


def test_inspect_kernels_show_the_chosen_config_and_every_candidates_time(tmp_path):
    """What `inspect(...).kernels` shows on a GPU, with the GPU's timer faked: each kernel's source
    headed by its launch and the tuner's choice, with the losers' times."""
    from avalon.codegen.triton.backend import shown_kernels
    g = linear_graph()
    k0 = default_kernel(g, "contraction", KernelCache(tmp_path))
    cands = candidates(k0)
    pick = cands[-1]
    cg = compile_graph(g, cache=KernelCache(tmp_path), tuner=Tuner(FakeTimer({pick.label: 0.25}), force=True,
                                                                      device=DEVICE))
    k = only_kernel(cg, "contraction")
    launch, tuning, *rest = shown_kernels(cg)[k.name].splitlines()
    assert launch.startswith(f"# launch: grid {k.grid}, ") and f"num_warps={pick.num_warps}" in launch
    assert tuning.startswith(f"# tuning: {pick.label}, timed; candidates {pick.label}: 0.2500 ms, ")
    assert all(c.label in tuning for c in cands) and "\n".join(rest) == k.source.rstrip("\n")


def test_small_kernels_keep_the_policy_config_on_a_gpu(tmp_path, monkeypatch):
    """A kernel a roofline puts under TUNE_MIN_US is not timed (on a GPU: interpreter and device
    faked here); big GEMMs and long reductions would be."""
    from avalon.codegen.triton import autotune
    from avalon.codegen.triton.kernel import Kernel
    g = linear_graph()  # 40x50x60: ~0 us
    cache = KernelCache(tmp_path)
    k = default_kernel(g, "contraction", cache)
    monkeypatch.setattr(autotune, "interpreting", lambda: False)
    monkeypatch.setattr(autotune, "gpu_present", lambda: True)
    timer = FakeTimer()
    got, rec = Tuner(timer, device=DEVICE).tune(k, lambda c: k, lambda: [], cache)
    assert got is k and rec.how.startswith("fixed (small") and not timer.calls
    big = Kernel("g", "contraction", "", [], {}, (1,), problem={"m": 4096, "n": 4096, "k": 4096, "groups": 1})
    assert autotune.estimated_us(big) > 500 > autotune.TUNE_MIN_US
    lenet_conv1_gw = Kernel("c", "contraction", "", [], {}, (1,), problem={"m": 20, "n": 25, "k": 36864, "groups": 1})
    assert autotune.estimated_us(lenet_conv1_gw) < autotune.TUNE_MIN_US
    long_rows = Kernel("r", "reduction", "", [], {}, (1,), problem={"x": 4096, "r": 8192})
    assert autotune.estimated_us(long_rows) > autotune.TUNE_MIN_US


def test_kernels_equal_but_for_their_name_are_timed_once(tmp_path):
    """A transformer's layers compile to the same kernel under different names: the second reuses
    the first's stored winner (GPT's 90 tunable kernels are 15 up to their names)."""
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((40, 50), "f32"), "x")
    w1, w2 = (g.add_input(TensorType((50, 60), "f32"), f"w{i}") for i in (1, 2))
    g.set_outputs([b("relu", b("matmul", x, w1)), b("relu", b("matmul", x, w2))])
    from avalon.codegen.triton.target import TRITON
    from avalon.passes import DEFAULT_PIPELINE, PassManager
    PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
    cache = KernelCache(tmp_path)
    timer = FakeTimer()
    cg = compile_graph(g, cache=cache, tuner=Tuner(timer, force=True, device=DEVICE))
    ks = [ln.kernel for ln in cg.launches if ln.kernel.kind == "contraction"]
    assert len(ks) == 2 and ks[0].name != ks[1].name
    assert sorted(r["how"] for r in cg.tuning.values()) == ["cached", "timed"]
    assert len(timer.calls) == len(candidates(ks[0]))  # one kernel's candidates, not two


def test_big_pointwise_kernels_are_tuned_by_block_and_warps(tmp_path):
    """A bandwidth-bound pointwise kernel's candidates trade bytes in flight a program against
    programs; the chosen one computes the same."""
    from avalon.codegen.triton import autotune
    g = Graph("f")
    b = Builder(g)
    x, bias = g.add_input(TensorType((64, 1024), "f32"), "x"), g.add_input(TensorType((1024,), "f32"), "b")
    g.set_outputs([b("relu", b("add", x, b("broadcast", bias, shape=[64, 1024])))])
    from avalon.codegen.triton.target import TRITON
    from avalon.passes import DEFAULT_PIPELINE, PassManager
    PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
    cache = KernelCache(tmp_path)
    k0 = default_kernel(g, "pointwise", cache)
    assert k0.problem == {"n": 65536, "bytes": (2 * 65536 + 1024) * 4}
    labels = [c.label for c in autotune.pointwise_candidates(k0)]
    assert "XBLOCK=4096 w=8 s=1" in labels and "XBLOCK=1024 w=8 s=1" in labels
    pick = next(c for c in candidates(k0) if c.blocks["XBLOCK"] == 4096)
    cg = compile_graph(g, cache=cache, tuner=Tuner(FakeTimer({pick.label: 0.1}), force=True, device=DEVICE))
    k = only_kernel(cg, "pointwise")
    assert config_of(k) == pick and k.grid == (16,)
    rng = np.random.default_rng(0)
    xs, bs = rng.standard_normal((64, 1024)).astype(np.float32), rng.standard_normal(1024).astype(np.float32)
    np.testing.assert_allclose(cg(xs, bs)[0].numpy(), np.maximum(xs + bs, 0), rtol=1e-6)
    from avalon.codegen.triton.kernel import Kernel
    big = Kernel("p", "pointwise", "", [], {}, (1,), problem={"n": 1 << 24, "bytes": 2 * 4 << 24})
    assert autotune.estimated_us(big) > autotune.TUNE_MIN_US > autotune.estimated_us(k0)


@pytest.mark.parametrize("itemsize,count", [(2, 7), (4, 6)])
def test_attention_backward_candidates_fit_in_shared_memory(itemsize, count):
    """float32 heads of 64 (GPT's): the 128x128 tile at 2 stages takes 256 KiB of an H100's 227, so
    it is no candidate; 16-bit heads keep all seven."""
    from avalon.codegen.triton.autotune import attention_bwd_candidates
    from avalon.codegen.triton.kernel import Kernel
    k = Kernel("k", "attention_bwd", "", [], {"BM": 128, "BN": 64, "BE": 64, "BV": 64}, (4, 192),
               problem={"l": 256, "s": 256, "e": 64, "ev": 64, "itemsize": itemsize})
    cands = attention_bwd_candidates(k)
    assert len(cands) == count
    assert (itemsize == 2) == any(c.blocks["BM"] == c.blocks["BN"] == 128 for c in cands)
