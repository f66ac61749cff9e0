"""`avalon`: an mlir-opt-like command line.

  avalon trace MODULE:OBJECT --input 2x1x28x28:f32 [--input ...] [-p PIPELINE] [--locations]
  avalon opt FILE|- -p PIPELINE [--print-after-all] [--print-after-changed] [--time-passes]
             [--verify-each] [--plugin FILE.py]
  avalon kernels FILE|- -o DIR [-p PIPELINE]
  avalon run FILE|- [-p PIPELINE] [--seed N]
  avalon ops [NAME ...] [--missing]
  avalon import MODEL.onnx|MODULE.mlir [--input NAME=SHAPE ...] [-p PIPELINE]   (prints Avalon IR)
  avalon export FILE|- --to mlir|linalg|onnx -o OUT
  avalon demo [--batch N]

Errors exit non-zero with one clear line on stderr, never a traceback (set AVALON_DEBUG=1 for one);
usage errors too (exit status 2), which name `--help` instead of printing the usage block.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any, NoReturn

import numpy as np


class CliError(Exception):
    """An error reported as one line, exit status 1."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other error of the command (argparse's own
    prints the usage block first); `--help` still shows the usage. Subcommands inherit the class."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _read(path: str) -> tuple[str, str]:
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None


def _parse_ir(path: str):
    from .ir import parse, verify
    text, name = _read(path)
    g = parse(text, source=name)
    verify(g)
    return g


def load_plugin(path: str) -> None:
    """Import a Python file that registers passes (and maybe ops) as a side effect."""
    if not os.path.exists(path):
        raise CliError(f"plugin {path} does not exist")
    name = "avalon_plugin_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot load plugin {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)


def parse_input_spec(spec: str) -> tuple[tuple[int, ...], Any]:
    """`2x1x28x28:f32` -> ((2, 1, 28, 28), f32); `scalar:f32` or `:f32` is 0-d; dtype defaults to f32."""
    from .ir.dtypes import dtype
    shape_s, _, dt_s = spec.partition(":")
    try:
        d = dtype(dt_s or "f32")
    except TypeError as e:
        raise CliError(f"--input {spec}: {e}") from None
    if shape_s in ("", "scalar"):
        return (), d
    try:
        shape = tuple(int(s) for s in shape_s.lower().split("x"))
    except ValueError:
        raise CliError(f"--input {spec}: expected a shape like 2x1x28x28[:f32]") from None
    return shape, d


def random_input(shape: tuple[int, ...], d: Any, rng: np.random.Generator) -> np.ndarray:
    if d.is_float:
        return rng.standard_normal(shape).astype(d.np)
    if d.name == "i1":
        return rng.random(shape) < 0.5
    return rng.integers(0, 4, size=shape).astype(d.np)


def _load_object(target: str) -> Any:
    mod_name, _, attr = target.partition(":")
    if not attr:
        raise CliError(f"expected MODULE:OBJECT, got {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        if mod_name.endswith(".py") or os.sep in mod_name:
            if not os.path.exists(mod_name):
                raise CliError(f"no such file: {mod_name}")
            spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(mod_name))[0], mod_name)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise CliError(f"cannot import module {mod_name!r}: {e}") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CliError(f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, type):
        obj = obj()  # a model class: instantiate with its defaults
    return obj


def _target(args) -> Any:
    """The `--backend` NAME's target (its fusion kinds, views, memory plan), else None: the default
    (Triton's kinds). `--backend cpu` shows the loop-nest groups `backend="cpu"` compiles."""
    name = getattr(args, "backend", None)
    if not name:
        return None
    from .compiler.backends import BackendUnavailable, get_backend
    try:
        return get_backend(name).target
    except (ValueError, BackendUnavailable) as e:
        raise CliError(str(e)) from None


BACKEND_HELP = "fuse for this backend's target (numpy, cpu, triton, iree); default: Triton's kernel kinds"


def _pipeline(args, **kw):
    from .passes import PassManager
    return PassManager.parse(args.pipeline, target=_target(args), **kw) if args.pipeline else None


def _check_arity(obj: Any, n: int, target: str) -> None:
    """One --input per argument: say so before tracing, instead of Python's bare `TypeError: f()
    missing 1 required positional argument` from inside the trace."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    params = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p.name for p in params if p.default is p.empty]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())
    if n < len(required) or (n > len(params) and not varargs):
        want = f"{len(required)}" if len(required) == len(params) or varargs else f"{len(required)} to {len(params)}"
        names = ", ".join(p.name for p in params)
        given = "no --input was" if n == 0 else f"{n} --input {'was' if n == 1 else 'were'}"
        raise CliError(f"{target} takes {want} input{'s' if len(params) != 1 else ''} ({names}) but "
                       f"{given} given; pass one --input SHAPE[:DTYPE] per "
                       f"argument, in order, e.g. " + " ".join(["--input 2x3:f32"] * max(len(required), 1)))


def cmd_trace(args) -> None:
    from . import ir
    from .trace import trace
    specs = [parse_input_spec(s) for s in args.input]  # bad specs fail before any import
    obj = _load_object(args.target)
    _check_arity(obj, len(specs), args.target)
    rng = np.random.default_rng(args.seed)
    inputs = [random_input(*spec, rng) for spec in specs]
    g = trace(obj, *inputs)
    pm = _pipeline(args)
    if pm is not None:
        pm.run(g)
    sys.stdout.write(ir.print_graph(g, locations=args.locations))


def cmd_opt(args) -> None:
    from . import ir
    from .passes import PassManager
    for p in args.plugin or []:
        load_plugin(p)
    g = _parse_ir(args.file)
    pm = PassManager.parse(args.pipeline or "", verify_each=args.verify_each,
                           print_after_all=args.print_after_all, print_after_changed=args.print_after_changed,
                           time_passes=args.time_passes, stream=sys.stderr, target=_target(args))
    pm.run(g)
    ir.verify(g)
    sys.stdout.write(ir.print_graph(g, locations=args.locations))


def _optimized(args):
    for p in getattr(args, "plugin", None) or []:  # first: a plugin may define ops the IR uses
        load_plugin(p)
    g = _parse_ir(args.file)
    from .passes import DEFAULT_PIPELINE, PassManager
    PassManager.parse(args.pipeline or DEFAULT_PIPELINE).run(g)
    return g


def cmd_kernels(args) -> None:
    from .codegen.triton import write_kernels
    g = _optimized(args)
    paths = write_kernels(g, args.output)
    for p in paths:
        print(p)


def cmd_run(args) -> None:
    from .codegen.triton import compile_graph
    from .ir import interpret
    g = _optimized(args)
    rng = np.random.default_rng(args.seed)
    inputs = [random_input(v.type.shape, v.type.dtype, rng) for v in g.inputs]
    ref = interpret(g, *inputs)
    got = compile_graph(g)(*inputs)
    worst = 0.0
    for i, (a, b) in enumerate(zip(ref, got)):
        b = b.detach().cpu().numpy() if hasattr(b, "detach") else np.asarray(b)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        diff = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
        scale = float(np.max(np.abs(a64))) if a.size else 0.0
        rel = diff / max(scale, 1e-30)
        worst = max(worst, rel)
        # the relative figure first: large logits make a harmless absolute difference look alarming
        print(f"output {i}: {g.outputs[i].type}  relative difference {rel:.2e}  "
              f"(max |numpy - triton| = {diff:.2e}, largest |numpy| = {scale:.2e})")
    if worst > args.rtol:
        raise CliError(f"outputs differ: largest relative difference {worst:.3e} > --rtol {args.rtol}")


def describe_ops(names: list[str] | None = None) -> str:
    """The op registry as text: operands, attributes with defaults, traits, and which registered
    rule tables (reference, vjp, batch, Triton lowering, fold, ...) cover each op."""
    from .autodiff.rules import NON_DIFFERENTIABLE
    from .ir import OPS
    from .ir.printer import format_attr
    from .ir.registry import REQUIRED, load_tables
    tables = load_tables()
    label = {"lowering": "triton"}  # how the table is called in this listing (the backend's name)
    lines = []
    for name in sorted(names or OPS):
        if name not in OPS:
            raise CliError(f"unknown op '{name}'")
        d = OPS[name]
        n = d.operands if isinstance(d.operands, int) else f"{d.operands[0]}+"
        attrs = ", ".join(k if a.default is REQUIRED else f"{k} = {format_attr(a.default)}"
                          for k, a in d.attrs.items())
        rules = [label.get(t, t) for t, table in tables.items() if name in table.table]
        if name in NON_DIFFERENTIABLE:
            rules.append("no gradient")
        if "region" in d.traits:
            rules = ["reference and vjp through its region", *rules]
        lines.append(f"{name}  ({n} operand{'s' if n != 1 else ''})  [{', '.join(sorted(d.traits))}]")
        if attrs:
            lines.append(f"    attributes: {attrs}")
        lines.append(f"    rules: {', '.join(rules)}")
        if d.doc:
            lines.append(f"    {d.doc}")
    return "\n".join(lines) + "\n"


def describe_missing() -> tuple[str, bool]:
    """Every op lacking a rule in a required table, as `op -> table, table` lines ("none" when
    every op is covered); and whether all are covered."""
    from .ir.registry import missing_rules
    missing = missing_rules()
    if not missing:
        return "none\n", True
    return "".join(f"{op} -> {', '.join(tables)}\n" for op, tables in missing.items()), False


def cmd_ops(args) -> None:
    importlib.import_module("avalon.onnx.export_rules")  # list the ONNX export table with the others
    for p in getattr(args, "plugin", None) or []:
        load_plugin(p)
    if args.missing:
        text, complete = describe_missing()
        sys.stdout.write(text)
        from .onnx.export_rules import missing_exports
        no_onnx = missing_exports()
        if no_onnx and complete:  # optional: noted after the required tables' report, never an error
            sys.stdout.write(f"no ONNX export mapping (optional): {', '.join(no_onnx)}\n")
        if not complete:
            raise CliError(f"{text.count(chr(10))} op(s) lack a required rule")
        return
    sys.stdout.write(describe_ops(args.names))


def cmd_import(args) -> None:
    """`avalon import model.onnx`: the ONNX model traced into Avalon IR (weights become arguments);
    `avalon import graph.mlir`: the avalon dialect read back (`avalon.mlir.from_mlir`)."""
    if args.file.endswith(".mlir"):
        from .mlir import MLIRReadError, from_mlir
        text, _ = _read(args.file)
        try:
            g = from_mlir(text)
        except MLIRReadError as e:
            raise CliError(f"{args.file}: {e}") from None
    else:
        g = _import_onnx(args)
    if args.pipeline:
        from .passes import PassManager
        PassManager.parse(args.pipeline).run(g)
    sys.stdout.write(str(g))  # the text ends in a newline already


def _import_onnx(args):
    from .onnx import load
    from .trace import trace
    shapes = {}
    for spec in args.input or []:
        name, _, shape = spec.partition("=")
        if not shape:
            raise CliError(f"--input {spec}: expected NAME=SHAPE, e.g. x=1x3x224x224")
        shapes[name] = parse_input_spec(shape)[0]
    if not os.path.exists(args.file):
        raise CliError(f"cannot read {args.file}: No such file or directory")
    model = load(args.file)
    from .onnx.loader import name_graph_inputs
    from .tensor import Tensor
    g = trace(model, *[Tensor(a) for a in model.example_inputs(shapes=shapes)])
    name_graph_inputs(g, model)  # arguments read like the model: its inputs' and initializers' names
    return g


def _write_text(text: str, output: str) -> None:
    if output == "-":
        sys.stdout.write(text)
        return
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise CliError(f"cannot write {output}: {e.strerror}") from None


def _export_mlir(args, dialect: str) -> None:
    from .mlir import to_mlir
    _write_text(to_mlir(_parse_ir(args.file), dialect), args.output)


def _export_onnx(args) -> None:
    """IR text as ONNX; every function argument a graph input (IR text holds no weights). `-o -`
    writes the binary model to stdout, as `-` means for other tools (not a file named `-`)."""
    from .onnx import export
    g = _parse_ir(args.file)
    if args.output != "-":
        try:
            export(g, args.output)
        except OSError as e:
            raise CliError(f"cannot write {args.output}: {e.strerror}") from None
        return
    data = export(g, None).SerializeToString()
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


EXPORTERS = {
    "mlir": lambda args: _export_mlir(args, "avalon"),  # MLIR generic form, Avalon's ops as the avalon dialect
    "linalg": lambda args: _export_mlir(args, "linalg"),  # upstream dialects only: mlir-opt / iree-compile read it
    "onnx": _export_onnx,  # onnx.checker accepts it, onnxruntime runs it
}
"""`avalon export --to NAME` -> writer of args.file to args.output."""


def cmd_export(args) -> None:
    EXPORTERS[args.to](args)


def cmd_demo(args) -> None:
    from .demo import main as demo_main
    demo_main(batch=args.batch)


def build_parser() -> argparse.ArgumentParser:
    p = _ArgumentParser(prog="avalon", description="Avalon: trace, optimize and compile models.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("trace", help="trace a model or function and print its IR")
    t.add_argument("target", help="MODULE:OBJECT or FILE.py:OBJECT (a class is instantiated without arguments)")
    t.add_argument("--input", action="append", default=[], metavar="SHAPE[:DTYPE]", help="e.g. 2x1x28x28:f32")
    t.add_argument("-p", "--pipeline", default=None, help="run this pipeline on the traced graph")
    t.add_argument("--locations", action="store_true", help="print source locations")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--backend", default=None, help=BACKEND_HELP)
    t.set_defaults(fn=cmd_trace)

    o = sub.add_parser("opt", help="run a pass pipeline over text IR")
    o.add_argument("file", help="IR file, or - for stdin")
    o.add_argument("-p", "--pipeline", default="", help='e.g. "canonicalize,cse,dce,fuse{max-ops=16}"')
    o.add_argument("--print-after-all", action="store_true")
    o.add_argument("--print-after-changed", action="store_true")
    o.add_argument("--time-passes", action="store_true")
    o.add_argument("--verify-each", action="store_true")
    o.add_argument("--plugin", action="append", metavar="FILE.py", help="a Python file that registers passes")
    o.add_argument("--locations", action="store_true")
    o.add_argument("--backend", default=None, help=BACKEND_HELP)
    o.set_defaults(fn=cmd_opt)

    k = sub.add_parser("kernels", help="write a graph's generated Triton kernels as standalone files")
    k.add_argument("file")
    k.add_argument("-o", "--output", required=True, help="output folder")
    k.add_argument("-p", "--pipeline", default=None, help="default: the standard pipeline")
    k.add_argument("--plugin", action="append", metavar="FILE.py")
    k.set_defaults(fn=cmd_kernels)

    r = sub.add_parser("run", help="run a graph on both backends with random inputs and compare")
    r.add_argument("file")
    r.add_argument("-p", "--pipeline", default=None)
    r.add_argument("--plugin", action="append", metavar="FILE.py")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--rtol", type=float, default=1e-3, help="fail above this relative difference")
    r.set_defaults(fn=cmd_run)

    ops_p = sub.add_parser("ops", help="list the registered ops: operands, attributes, traits, rule tables")
    ops_p.add_argument("names", nargs="*", help="only these ops")
    ops_p.add_argument("--missing", action="store_true",
                       help="list every op lacking a rule in a required table (exit 1 unless none)")
    ops_p.add_argument("--plugin", action="append", metavar="FILE.py", help="a Python file that defines ops")
    ops_p.set_defaults(fn=cmd_ops)

    im = sub.add_parser("import", help="print an ONNX model, or an avalon-dialect MLIR module, as Avalon IR")
    im.add_argument("file", help="MODEL.onnx")
    im.add_argument("--input", action="append", metavar="NAME=SHAPE", help="example shape of a dynamic input")
    im.add_argument("-p", "--pipeline", default=None)
    im.set_defaults(fn=cmd_import)

    x = sub.add_parser("export", help="write a graph as MLIR (the avalon dialect), upstream linalg MLIR, or ONNX")
    x.add_argument("file", help="IR file, or - for stdin")
    x.add_argument("--to", required=True, choices=sorted(EXPORTERS),
                   help="mlir: avalon dialect; linalg: upstream dialects; onnx: an ONNX model")
    x.add_argument("-o", "--output", required=True,
                   help="output file, or - for stdout (MLIR as text, ONNX as the binary model)")
    x.set_defaults(fn=cmd_export)

    d = sub.add_parser("demo", help="trace the README's LeNet, optimize it, run it on the reference, "
                                    "then show and run its Triton kernels")
    d.add_argument("--batch", type=int, default=2)
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("kernels", "run"):
        os.environ.setdefault("TRITON_INTERPRET", "0" if _has_gpu() else "1")
    try:
        args.fn(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # one clear line, no traceback
        if os.environ.get("AVALON_DEBUG"):
            raise
        kind = "" if isinstance(e, CliError) else f"{type(e).__name__}: "
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.stderr.write(f"avalon {args.command}: error: {kind}{msg}\n")
        return 1
    return 0


def _has_gpu() -> bool:
    from .device import cuda_available
    return cuda_available()


if __name__ == "__main__":
    raise SystemExit(main())
