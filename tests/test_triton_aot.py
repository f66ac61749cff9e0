"""Every kind of generated kernel compiles for an H100 (sm_90) on this GPU-less machine.

The interpreter accepts things the GPU compiler does not (and the reverse), so the kernels the
differential tests run are also pushed through `triton.compile(..., target=GPUTarget("cuda", 90,
32))` down to PTX, with the GPU's block sizes. It runs in a subprocess because TRITON_INTERPRET is
read when `@triton.jit` decorates a function, and this test process interprets.
"""
import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    assert os.environ["TRITON_INTERPRET"] == "0"  # real kernels, though no GPU is here
    from avalon.ir import Builder, Graph, TensorType
    from avalon.codegen.triton import compile_graph
    from avalon.codegen.triton.aot import compile_for_target
    from avalon.codegen.triton.testing import fuse

    def graph(*types):
        g = Graph("f")
        return g, Builder(g), [g.add_input(TensorType(s, d), f"x{i}") for i, (s, d) in enumerate(types)]

    cases = {}
    g, b, (x, y, s) = graph(((64, 33), "f32"), ((33,), "bf16"), ((), "i64"))
    r = b("random", s, shape=[64, 33], distribution="normal")
    t = b("tanh", b("pow", x, b("add", r, b("broadcast", b("cast", y, dtype="f32"), shape=[64, 33]))))
    g.set_outputs([b("cast", t, dtype="bf16")])
    cases["pointwise"] = fuse(g, "fused_random_tanh_0")

    for name, n in (("persistent_reduction", 1000), ("looped_reduction", 3000)):
        g, b, (x,) = graph(((16, n), "f32"))
        m = b("max", x, axes=[1], keepdims=True)
        e = b("exp", b("sub", x, b("broadcast", m, shape=[16, n])))
        sm = b("div", e, b("broadcast", b("sum", e, axes=[1], keepdims=True), shape=[16, n]))
        g.set_outputs([sm, b("argmax", x, axis=1)])
        cases[name] = fuse(g, f"fused_softmax_{name}")

    g, b, (x, w, bias) = graph(((1024, 200), "f16"), ((768, 200), "f16"), ((768,), "f16"))
    y = b("matmul", x, b("transpose", w, perm=[1, 0]))  # 64x128 tiles: enough of them, wgmma-sized
    g.set_outputs([b("relu", b("add", y, b("broadcast", bias, shape=[1024, 768])))])
    cases["matmul"] = fuse(g, "fused_linear_relu_0")

    g, b, (x, w, dy, dyp) = graph(((8, 16, 20, 20), "f32"), ((32, 16, 3, 3), "f32"), ((8, 32, 10, 10), "f32"),
                                  ((8, 16, 10, 10), "f32"))
    attrs = dict(stride=[2, 2], padding=[1, 1])
    g.set_outputs([b("relu", b("conv2d", x, w, **attrs)),
                   b("conv2d_grad_input", dy, w, input_shape=[8, 16, 20, 20], **attrs),
                   b("conv2d_grad_weight", x, dy, weight_shape=[32, 16, 3, 3], **attrs),
                   b("max_pool2d_grad", x, dyp, kernel=[2, 2], stride=[2, 2]),
                   b("avg_pool2d", x, kernel=[3, 3], stride=[2, 2], padding=[1, 1])])
    cases["conv_and_pool"] = g

    g, b, (x, dy, w) = graph(((64, 1, 28, 28), "f32"), ((64, 20, 24, 24), "f32"), ((20, 1, 5, 5), "f32"))
    gw = b("conv2d_grad_weight", x, dy, weight_shape=[20, 1, 5, 5])
    g.set_outputs([b("sub", w, b("mul", gw, b("broadcast", b("constant", value=0.01, shape=[], dtype="f32"),
                                               shape=[20, 1, 5, 5])))])
    cases["split_k"] = fuse(g, "fused_conv2d_grad_weight_mul_sub_0")  # LeNet conv1's: 1 tile, 1152 K steps

    g, b, (x, y) = graph(((1024, 1024), "f32"), ((1024, 1024), "f32"))
    d = b("sub", x, y)
    g.set_outputs([d, b("sum", b("mul", d, d), axes=[0, 1], keepdims=False)])
    cases["split_r"] = fuse(g, "fused_sub_mul_sum_0")  # a squared-error loss over 1M elements: one row, 64 splits

    g, b, (x,) = graph(((4, 262144), "f32"))  # a softmax over 4 long rows: max, sum and output passes, split
    e = b("exp", b("sub", x, b("broadcast", b("max", x, axes=[1], keepdims=True), shape=[4, 262144])))
    g.set_outputs([b("div", e, b("broadcast", b("sum", e, axes=[1], keepdims=True), shape=[4, 262144]))])
    cases["split_r_passes"] = fuse(g, "fused_softmax_split_0")

    g, b, (x,) = graph(((64, 33), "f32"))  # a value check (binary_cross_entropy's): flags stored from the lanes
    zero = b("broadcast", b("constant", value=0.0, shape=[], dtype="f32"), shape=[64, 33])
    ok = b("logical_and", b("ge", x, zero), b("le", x, b("exp", zero)))
    g.set_outputs([b("log", b("check", x, ok, message="x should be between 0 and 1"))])
    cases["check"] = fuse(g, "fused_check_log_0")

    out = []
    for case, g in cases.items():
        for k in [p for ln in compile_graph(g).launches for p in ln.kernel.chain()]:
            t0 = time.perf_counter()
            try:
                ptx = compile_for_target(k).asm["ptx"]
                ok, err = ".target sm_90" in ptx, ""
            except Exception as e:
                ptx, ok, err = "", False, f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"
            out.append(dict(case=case, kernel=k.name, kind=k.kind, ok=ok, error=err,
                            seconds=round(time.perf_counter() - t0, 2),
                            wgmma="wgmma.mma_async" in ptx, cp_async="cp.async" in ptx))
    print(json.dumps(out))
''')


def test_generated_kernels_compile_to_ptx_for_h100(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # compile real kernels: the package would interpret without a GPU
    env.update(AVALON_CACHE_DIR=str(tmp_path / "avalon"), TRITON_CACHE_DIR=str(tmp_path / "triton"),
               PYTHONPATH=os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed
    kinds = {r["kind"] for r in results}
    # LeNet conv1's weight gradient and a 1M-element loss split (both functions of each kernel compile)
    # and the stride-2 conv2d_grad_input runs one GEMM per stride phase
    assert {"pointwise", "reduction", "contraction", "contraction_epilogue", "reduction_epilogue",
            "contraction_phase", "reduction_pass"} <= kinds
    assert len(results) >= 9
    # Hopper's instructions: the f16 GEMM runs on wgmma with its tiles pipelined through cp.async
    # (the aligned pointers the JIT sees at launch are given to the AOT compile too)
    mm = next(r for r in results if r["case"] == "matmul")
    assert mm["wgmma"] and mm["cp_async"], mm


def test_ptx_report_reads_the_k_loop_of_a_gemm(tmp_path):
    """`benchmarks/ptx_report.py` (instructions per K step, from the sm_90 PTX) finds the f16 GEMM's
    loop and its tensor-core and 16-byte copy instructions."""
    env = {**os.environ, "AVALON_CACHE_DIR": str(tmp_path / "avalon"), "TRITON_CACHE_DIR": str(tmp_path / "triton")}
    proc = subprocess.run([sys.executable, "benchmarks/ptx_report.py", "--only", "gemm"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("matmul 4096^3 f16"))
    loop, mma, cp16, cp4, sass = map(int, row.split()[-5:])
    assert loop > 0 and mma > 0 and cp16 > 0 and cp4 == 0 and sass > 0, row  # sass: the loop's machine code
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("matmul 4096^3 f32"))
    assert int(row.split()[-4]) > 0, row  # precision "high", as gpu_bench: TF32 on the tensor cores
    # --candidates: every config the tuner would time, compiled; none that could not launch
    proc = subprocess.run([sys.executable, "benchmarks/ptx_report.py", "--candidates", "--only", "gemm"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("matmul 4096^3")]
    assert len(rows) >= 20 and any("TMA=1" in r for r in rows) and any("BN=256" in r for r in rows), rows
    assert not [r for r in rows if "NO LAUNCH" in r], rows
