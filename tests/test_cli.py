"""The command line: real subprocesses, one clear error line, non-zero exit."""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from avalon import ir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def avalon(*args, stdin=None, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "avalon", *args], input=stdin, capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=300)


IR = """\
func @f(%x: tensor<4xf32>) -> (tensor<4xf32>) {
  %0 = neg %x : tensor<4xf32>
  %1 = neg %0 : tensor<4xf32>
  %2 = exp %1 : tensor<4xf32>
  %3 = exp %1 : tensor<4xf32>
  %4 = add %2, %3 : tensor<4xf32>
  return %4
}
"""


def test_opt_runs_a_pipeline_from_stdin():
    r = avalon("opt", "-", "-p", "canonicalize,cse,dce", stdin=IR)
    assert r.returncode == 0, r.stderr
    g = ir.parse(r.stdout)
    assert [op.name for op in g.ops] == ["exp", "add"]


LOSS = """\
func @f(%h: tensor<4x3xf32>, %w: tensor<3x5xf32>, %x: tensor<4x5xf32>) -> (tensor<f32>, tensor<5xf32>) {
  %0 = matmul %h, %w : tensor<4x5xf32>
  %1 = sigmoid %0 : tensor<4x5xf32>
  %2 = sub %1, %x : tensor<4x5xf32>
  %3 = mul %2, %2 : tensor<4x5xf32>
  %4 = sum %3 {axes = [0, 1]} : tensor<f32>
  %5 = sum %2 {axes = [0]} : tensor<5xf32>
  return %4, %5
}
"""


def test_opt_fuses_for_the_backend_it_is_told():
    """--backend cpu: the loop nest backend='cpu' compiles (one group); the default, Triton's kinds,
    keeps the contraction and the two reductions apart."""
    cpu = avalon("opt", "-", "-p", "fuse", "--backend", "cpu", stdin=LOSS)
    triton = avalon("opt", "-", "-p", "fuse", stdin=LOSS)
    assert cpu.returncode == 0 and triton.returncode == 0, cpu.stderr + triton.stderr
    assert cpu.stdout.count("= fusion @") == 1 and triton.stdout.count("= fusion @") > 1
    bad = avalon("opt", "-", "-p", "fuse", "--backend", "nope", stdin=LOSS)
    assert bad.returncode != 0 and "unknown backend 'nope'" in bad.stderr


def test_opt_instrumentation(tmp_path):
    f = tmp_path / "f.avalon"
    f.write_text(IR)
    r = avalon("opt", str(f), "-p", "cse,dce", "--print-after-all", "--time-passes", "--verify-each")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("func @f") == 2  # IR after each of the two passes
    assert "cse" in r.stderr and "dce" in r.stderr and "ms" in r.stderr


@pytest.mark.parametrize("args, stdin, message", [
    (("opt", "missing.avalon", "-p", "cse"), None, "cannot read missing.avalon"),
    (("opt", "-", "-p", "cse"), IR.replace("neg %x", "neg %y"), "2:"),
    (("opt", "-", "-p", "no-such-pass"), IR, "no-such-pass"),
    (("trace", "nomodule:Net", "--input", "2x3"), None, "cannot import module"),
    (("trace", "avalon.demo:Net", "--input", "2xqx3"), None, "expected a shape"),
    (("trace", "avalon.demo:Net"), None, "avalon.demo:Net takes 1 input (x) but no --input was given; pass one --input"),
    (("trace", "avalon.demo:Net", "--input", "2x1x20x20"), None, "avalon/demo.py:"),  # the model's line, not the launcher
    (("trace",), None, "the following arguments are required: target (see avalon trace --help)"),
    (("frobnicate",), None, "invalid choice: 'frobnicate'"),
    (("opt", "-", "--no-such-flag"), IR, "unrecognized arguments: --no-such-flag"),
])
def test_errors_are_one_line(args, stdin, message):
    r = avalon(*args, stdin=stdin)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert message in lines[0]


def test_trace_says_how_many_inputs_a_function_takes(tmp_path):
    (tmp_path / "model.py").write_text("def f(x, y):\n    return x + y\n")
    r = avalon("trace", "model.py:f", "--input", "2x3", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "avalon trace: error: model.py:f takes 2 inputs (x, y) but 1 --input was given; pass one --input "
        "SHAPE[:DTYPE] per argument, in order, e.g. --input 2x3:f32 --input 2x3:f32"]


def test_trace_a_function_in_a_file(tmp_path):
    (tmp_path / "model.py").write_text(textwrap.dedent("""
        def f(x, y):
            return (x @ y).relu()
    """))
    r = avalon("trace", "model.py:f", "--input", "2x3:f32", "--input", "3x4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    g = ir.parse(r.stdout)
    assert [v.name for v in g.inputs] == ["x", "y"]
    assert [op.name for op in g.ops] == ["matmul", "relu"]


def test_plugin_registers_a_pass(tmp_path):
    plugin = tmp_path / "plug.py"
    plugin.write_text(textwrap.dedent("""
        import avalon as av

        @av.passes.register("drop-double-neg")
        def drop_double_neg(graph):
            changed = False
            for op in list(graph.ops):
                src = op.operands[0].op if op.operands else None
                if op.name == "neg" and src is not None and src.name == "neg":
                    op.result.replace_all_uses_with(src.operands[0])
                    changed = True
            return changed
    """))
    r = avalon("opt", "-", "-p", "drop-double-neg,dce", "--plugin", str(plugin), stdin=IR)
    assert r.returncode == 0, r.stderr
    assert "neg" not in r.stdout


SMALL = """\
func @f(%x: tensor<4x8xf32>, %b: tensor<8xf32>) -> (tensor<4x8xf32>, tensor<4xf32>) {
  %0 = broadcast %b {shape = [4, 8]} : tensor<4x8xf32>
  %1 = add %x, %0 : tensor<4x8xf32>
  %2 = relu %1 : tensor<4x8xf32>
  %3 = sum %2 {axes = [1]} : tensor<4xf32>
  return %2, %3
}
"""


def test_kernels_are_written_as_standalone_files_that_run(tmp_path):
    src = tmp_path / "f.avalon"
    src.write_text(SMALL)
    r = avalon("kernels", str(src), "-o", str(tmp_path / "k"))
    assert r.returncode == 0, r.stderr
    files = r.stdout.split()
    assert files and all(os.path.exists(f) for f in files)
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, files[-1]], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "out0:" in run.stdout


def test_run_compares_both_backends(tmp_path):
    src = tmp_path / "f.avalon"
    src.write_text(SMALL)
    r = avalon("run", str(src))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("max |numpy - triton|") == 2
    for line in r.stdout.splitlines():  # the relative figure leads; the absolute one follows
        assert line.index("relative difference") < line.index("max |numpy - triton|")


def test_demo_shows_and_runs_its_triton_kernels():
    r = avalon("demo")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert re.search(r"\d+ kernels, one per fused group", out) and "one kernel: fused_conv2d" in out
    assert re.search(r"fused_conv2d\w*\s+contraction\n", out), out  # each kernel listed with its kind
    assert "# launch: grid (" in out and "# tuning: " in out  # the shown kernel's launch and tuner choice
    assert "@triton.jit" in out
    assert "ms per call" in out and "where next" in out and "examples/train_lenet.py" in out
    rel = float(out.split("largest relative difference from the reference interpreter: ")[1].split()[0])
    assert rel < 1e-4


def test_ops_lists_the_registry_with_its_rule_tables():
    r = avalon("ops")
    assert r.returncode == 0, r.stderr
    assert "conv2d  (2 operands)" in r.stdout and "stride = [1, 1]" in r.stdout
    assert r.stdout.count("rules: ") == len(ir.OPS)
    assert "reference, vjp, triton" in r.stdout
    bad = avalon("ops", "nope")
    assert bad.returncode == 1 and "unknown op 'nope'" in bad.stderr


def test_run_reads_ops_that_a_plugin_defines(tmp_path):
    src = tmp_path / "silu.avalon"
    src.write_text("func @f(%x: tensor<4x8xf32>) -> (tensor<4x8xf32>) {\n"
                   "  %0 = silu %x : tensor<4x8xf32>\n  return %0\n}\n")
    plugin = os.path.join(ROOT, "examples", "passes", "fuse_silu.py")
    r = avalon("run", str(src), "--plugin", plugin)
    assert r.returncode == 0, r.stderr
    assert "max |numpy - triton|" in r.stdout


def test_export_onnx_to_stdout_writes_the_binary_model_there(tmp_path):
    """`-o -` is stdout, as for MLIR (it wrote a file named `-` and said nothing)."""
    onnx = pytest.importorskip("onnx")
    (tmp_path / "g.avalon").write_text("func @f(%x: tensor<4xf32>) -> (tensor<4xf32>) {\n"
                                       "  %0 = exp %x : tensor<4xf32>\n  return %0\n}\n")
    r = subprocess.run([sys.executable, "-m", "avalon", "export", "g.avalon", "--to", "onnx", "-o", "-"],
                       capture_output=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert not (tmp_path / "-").exists()
    model = onnx.load_from_string(r.stdout)
    onnx.checker.check_model(model)
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(0).standard_normal(4).astype(np.float32)
    sess = ort.InferenceSession(r.stdout, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, ir.interpret(ir.parse((tmp_path / "g.avalon").read_text()), x)[0], rtol=1e-6)
