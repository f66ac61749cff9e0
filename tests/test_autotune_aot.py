"""Every autotuning candidate of each tunable kernel kind (contraction with split-K, TMA and
blocked-tap forms, reduction with persistent and looped forms, attention forward and backward,
pointwise) compiles to PTX for an H100 (sm_90) on this GPU-less machine: a GPU session must not
lose its minutes to a candidate the real compiler refuses. The tuner runs with a "timer" that compiles instead of timing
(subprocess: TRITON_INTERPRET is read at `@triton.jit`)."""
import json
import os
import subprocess
import sys
import textwrap

from avalon.codegen.triton.autotune import SMEM_BYTES

SCRIPT = textwrap.dedent('''
    import json, os
    assert os.environ["TRITON_INTERPRET"] == "0"
    import numpy as np
    import avalon as av
    from avalon.ir import Builder, Graph, TensorType
    from avalon.nn.attention import scaled_dot_product_attention as sdpa
    from avalon.passes import DEFAULT_PIPELINE, PassManager
    from avalon.codegen.triton import compile_graph
    from avalon.codegen.triton.aot import compile_each
    from avalon.codegen.triton.autotune import Tuner, config_of
    from avalon.codegen.triton.target import TRITON

    av.set_float32_matmul_precision("high")  # float32 dots on TF32 wgmma, as gpu_bench runs them
    tried = []

    def ptx_timer(k, make_args):  # every candidate kept, then all compiled at once in processes
        tried.append(k)
        return 1.0

    graphs = []
    g = Graph("f")
    b = Builder(g)
    x, w = g.add_input(TensorType((256, 200), "f16"), "x"), g.add_input(TensorType((300, 200), "f16"), "w")
    g.set_outputs([b("relu", b("matmul", x, b("transpose", w, perm=[1, 0])))])
    graphs.append(g)
    g = Graph("f")  # float32 operands, few tiles and a long K: big tiles refitted, TMA over chunks of K
    b = Builder(g)
    g.set_outputs([b("matmul", g.add_input(TensorType((256, 4096), "f32"), "a"), g.add_input(TensorType((4096, 256), "f32"), "b"))])
    graphs.append(g)
    g = Graph("f")
    b = Builder(g)
    x = g.add_input(TensorType((16, 3000), "f32"), "x")
    e = b("exp", b("sub", x, b("broadcast", b("max", x, axes=[1], keepdims=True), shape=[16, 3000])))
    g.set_outputs([b("div", e, b("broadcast", b("sum", e, axes=[1], keepdims=True), shape=[16, 3000]))])
    graphs.append(g)
    g = Graph("f")  # LeNet conv1's weight gradient: its candidates split K
    b = Builder(g)
    x, dy = g.add_input(TensorType((64, 1, 28, 28), "f32"), "x"), g.add_input(TensorType((64, 20, 24, 24), "f32"), "dy")
    g.set_outputs([b("conv2d_grad_weight", x, dy, weight_shape=[20, 1, 5, 5])])
    graphs.append(g)
    g = Graph("f")  # a ResNet 3x3 conv: blocked taps (TAPS=1) and the per-element form
    b = Builder(g)
    x, w = g.add_input(TensorType((8, 64, 16, 16), "f32"), "x"), g.add_input(TensorType((64, 64, 3, 3), "f32"), "w")
    g.set_outputs([b("relu", b("conv2d", x, w, stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1))])
    graphs.append(g)
    g = Graph("f")  # a big bias + relu: the pointwise candidates
    b = Builder(g)
    x, bias = g.add_input(TensorType((4096, 1024), "f32"), "x"), g.add_input(TensorType((1024,), "f32"), "b")
    g.set_outputs([b("relu", b("add", x, b("broadcast", bias, shape=[4096, 1024])))])
    graphs.append(g)
    q = np.zeros((2, 4, 256, 64), np.float16)
    graphs.append(av.trace(lambda q, k, v: sdpa(q, k, v, is_causal=True), q, q, q))
    graphs.append(av.trace(av.value_and_grad(lambda q, k, v: av.ops.sum(sdpa(q, k, v, is_causal=True)),
                                             argnums=(0, 1, 2)), q, q, q))  # and the backward kernel
    for g in graphs:
        PassManager.parse(DEFAULT_PIPELINE, target=TRITON).run(g)
        compile_graph(g, tuner=Tuner(ptx_timer, force=True, device="sm_90 (aot)"))
    results = [dict(kernel=k.name, kind=k.kind, config=config_of(k).label, ok=".target sm_90" in b.asm.get("ptx", ""),
                    error=b.error, shared=b.shared) for k, b in zip(tried, compile_each(tried))]
    print(json.dumps(results))
''')


def test_every_candidate_config_compiles_for_sm90(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0", "AVALON_COMPILE_WORKERS": "1"}
    env.update(AVALON_CACHE_DIR=str(tmp_path / "avalon"), TRITON_CACHE_DIR=str(tmp_path / "triton"),
               PYTHONPATH=os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    kinds = {r["kind"] for r in results}
    assert kinds >= {"contraction", "reduction", "attention", "attention_bwd", "pointwise"}, kinds
    configs = [r["config"] for r in results if r["kind"] == "contraction"]
    assert any("TMA=1" in c for c in configs) and any("SPLIT_K=" in c for c in configs), configs
    assert any("TMA=1" in c and "SPLIT_K=" in c for c in configs), configs  # descriptors over a chunk of K
    assert any("TAPS=1" in c for c in configs), configs
    assert {r["config"].split(" w=")[0] for r in results if r["kind"] == "reduction"} >= {
        "RBLOCK=4096 XBLOCK=1", "RBLOCK=1024 XBLOCK=1"}  # the persistent and the looped form
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed
    too_big = [r for r in results if r["shared"] > SMEM_BYTES]  # the launch would fail on an H100
    assert not too_big, too_big
    assert any("BN=256" in c and "BK=64" in c and c.endswith("s=2") for c in configs), configs  # float32, refitted
