"""`avalon kernels`: each generated kernel as a file that runs on its own.

A file holds the kernel's source (headed by the IR of its group) and a `__main__` that allocates
its buffers with the recorded shapes and dtypes, fills the inputs with random values, launches the
kernel with the recorded grid and block sizes and prints what it wrote — so one kernel can be read,
run, profiled or edited without Avalon. Without a GPU it runs in Triton's interpreter.
"""
from __future__ import annotations

import os
import tempfile

from avalon.ir.core import Graph

from .build import compile_graph
from .runtime import Launch

_PRELUDE = '''\
# Standalone Avalon kernel: `python {file}` runs it once on random inputs with the recorded shapes.
import os

import torch

# Triton reads this when kernels are defined: without a GPU, use its interpreter.
os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")

'''

_MAIN = '''

# -- recorded launch ---------------------------------------------------------------------------
ARGS = {args!r}  # (name, shape, torch dtype, is_output) per pointer parameter
GRID = {grid!r}
META = {meta!r}
NUM_WARPS, NUM_STAGES = {num_warps}, {num_stages}
THEN = {then}  # (function, grid) launched next with the same tensors (a split's epilogue, stride phases)


def _random(shape, dtype, device):
    if dtype.is_floating_point:
        return torch.randn(shape, device=device).to(dtype)
    if dtype == torch.bool:
        return torch.rand(shape, device=device) < 0.5
    return torch.randint(0, 2, shape, device=device, dtype=dtype)  # small: valid as indices


if __name__ == "__main__":
    device = "cpu" if os.environ["TRITON_INTERPRET"] == "1" else "cuda"
    torch.manual_seed(0)
    tensors = [torch.empty(shape, dtype=getattr(torch, dt), device=device) if out
               else _random(shape, getattr(torch, dt), device) for _, shape, dt, out in ARGS]
    extra = {{}} if device == "cpu" else {{"num_warps": NUM_WARPS, "num_stages": NUM_STAGES}}
    if all(GRID):
        {name}[GRID](*tensors, **META, **extra)
    for fn, grid in THEN:
        if all(grid):
            fn[grid](*tensors, **META, **extra)
    for (pname, shape, dt, out), t in zip(ARGS, tensors):
        if out:
            f = t.float()
            stats = f"mean {{f.mean().item():.6g}}  max |x| {{f.abs().max().item():.6g}}"
            print(f"{{pname}}: {{tuple(shape)}} {{dt}}  {{stats}}")
'''


def standalone_source(ln: Launch) -> str:
    """The runnable file for one launch."""
    from .types import TORCH
    k = ln.kernel
    args = [(pname, list(v.type.shape), str(TORCH[d.name]).removeprefix("torch."), pname.startswith("out"))
            for (pname, d), v in zip(k.params, ln.args)]
    if k.checks:  # the index-check flags (see lowering.check_index): not an output worth printing
        args.append(("err", [2 * len(k.checks)], "int64", False))
    then = "[" + ", ".join(f"({p.name}, {tuple(p.grid)!r})" for p in k.chain()[1:]) + "]"
    return (_PRELUDE.format(file=f"{k.name}.py") + k.source
            + _MAIN.format(args=args, grid=tuple(k.grid), meta=dict(k.meta), num_warps=k.num_warps,
                           num_stages=k.num_stages, name=k.name, then=then))


def write_kernels(graph: Graph, folder: str) -> list[str]:
    """Compile `graph` and write each distinct kernel to `folder/<name>.py` (atomically); returns the paths."""
    cg = compile_graph(graph)
    os.makedirs(folder, exist_ok=True)
    paths, done = [], set()
    for ln in cg.launches:
        if ln.kernel.name in done or all(p.empty for p in ln.kernel.chain()) or ln.kernel.kind == "host":
            continue
        done.add(ln.kernel.name)
        path = os.path.join(folder, f"{ln.kernel.name}.py")
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(standalone_source(ln))
        os.replace(tmp, path)
        paths.append(path)
    return paths
