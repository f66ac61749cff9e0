"""Cold kernels compile in forked processes and the JIT's warm-up then loads them from the disk cache.

No GPU here: the script runs real (not interpreted) kernels under a stand-in Triton driver that
names an H100 target and has no device, which is all the JIT's warm-up path asks of a driver before
compiling. What it checks is the point of `precompile.py`: the children compile exactly what the
JIT would (every warm-up after them is a disk-cache hit, none compiles again), and a second warm-up
with everything cached forks nothing.
"""
import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json, os
    assert os.environ["TRITON_INTERPRET"] == "0"
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from avalon.ir import Builder, Graph, TensorType
    from avalon.codegen.triton import autotune, compile_graph, precompile
    from avalon.codegen.triton.testing import fuse

    class NoDevice:  # what JITFunction.run asks of the driver before it compiles
        def get_current_device(self): return 0
        def get_current_stream(self, device=None): return 0
        def get_current_target(self): return GPUTarget("cuda", 90, 32)
    driver.set_active(NoDevice())

    g = Graph("f")
    b = Builder(g)
    x, w = g.add_input(TensorType((64, 32), "f32"), "x"), g.add_input(TensorType((32, 48), "f32"), "w")
    g.set_outputs([b("relu", b("matmul", x, w)), b("sum", b("exp", x), axes=[1], keepdims=False)])
    kernels = [ln.kernel for ln in compile_graph(fuse(g, "k")).launches]
    autotune.gpu_present = lambda: True
    forked = []
    real = precompile.precompile
    precompile.precompile = lambda *a: forked.append(real(*a)) or forked[-1]
    hits = []
    knobs.compilation.listener = lambda **kw: hits.append(kw["cache_hit"])
    out = {"kernels": len(kernels), "warmed": autotune.warm_up(kernels, workers=2), "forked": list(forked),
           "hits": list(hits)}
    for k in kernels:
        k.fn.device_caches.clear()  # a new process: the JIT's memory is empty, the disk cache is not
    hits.clear()
    out["warmed_again"] = autotune.warm_up(kernels, workers=2)
    out.update(forked_again=forked[1:], hits_again=list(hits))
    print(json.dumps(out))
''')


def test_cold_kernels_compile_in_processes_and_the_jit_loads_them(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0", "AVALON_CACHE_DIR": str(tmp_path / "avalon"),
           "TRITON_CACHE_DIR": str(tmp_path / "triton"),
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    n = r["kernels"]
    assert n >= 2 and r["warmed"] == n, r
    assert r["forked"] == [n], r  # every kernel compiled in a child
    assert r["hits"] == [True] * n, r  # the JIT then only loaded them
    assert r["warmed_again"] == n and r["forked_again"] == [0] and r["hits_again"] == [True] * n, r
