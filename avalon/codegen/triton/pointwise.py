"""Pointwise kernels: one flat loop over the elements of the group's outputs.

`xindex` runs over the first output's elements in row-major order; every output (all have that
many elements) is stored at the same row-major position of its own shape, and every value is read
through the index algebra, so broadcasts, reshapes, transposes, slices, pads, gathers and pooling
windows inside the group cost index math, not copies.
"""
from __future__ import annotations

from collections.abc import Sequence

from .blocks import BlockPolicy, KernelConfig, cdiv
from .emitter import Emitter, Unsupported
from .group import Group
from .indexing import Affine, delinearize, numel, reshape_index
from .kernel import Kernel, assemble


def program_start(big: bool, block: str, axis: int = 0) -> str:
    pid = f"tl.program_id({axis})"
    return f"{pid}.to(tl.int64) * {block}" if big else f"{pid} * {block}"


def needs_int64(group: Group, limit: int = 2 ** 31 - 1) -> bool:
    return any(v.type.numel >= limit for v in [*group.inputs, *group.outputs])


def build_pointwise(group: Group, in_strides: Sequence[Sequence[int]], out_strides: Sequence[Sequence[int]],
                    policy: BlockPolicy, config: KernelConfig | None = None) -> Kernel:
    """`config` (the autotuner's candidate, for kernels big enough to be bandwidth-bound) overrides
    the policy's XBLOCK and warps."""
    outs = group.outputs
    n = outs[0].type.numel
    if any(o.type.numel != n for o in outs):
        raise Unsupported("pointwise outputs differ in element count: "
                          + ", ".join(str(o.type) for o in outs))
    shape = outs[0].shape
    em = Emitter(group.inputs, in_strides, dots_in_f32=policy.interpret)
    x = em.define_var("xindex", f"{program_start(needs_int64(group), 'XBLOCK')} + tl.arange(0, XBLOCK)", n, "xmask")
    em.line(f"xmask = xindex < {n}")
    idx = delinearize(Affine.of(x), shape)
    # every value (so every load) before the first store: the memory plan may give an output the
    # buffer of an input that dies here, which is safe only if each element is read before it is written
    oidxs = [reshape_index(idx, shape, o.shape) for o in outs]
    vals = [em.value(o, oidx) for o, oidx in zip(outs, oidxs)]
    for j, (o, oidx, val) in enumerate(zip(outs, oidxs, vals)):
        em.store(f"out{j}", out_strides[j], o.shape, oidx, val, o.dtype, ["xindex"])
    meta = config.blocks if config else policy.pointwise(n)
    src, params = assemble(group, "pointwise", em, ["XBLOCK"], [o.dtype for o in outs])
    moved = sum(v.type.numel * v.dtype.itemsize for v in [*group.inputs, *outs])
    return Kernel(group.name, "pointwise", src, params, meta, (cdiv(numel(shape), meta["XBLOCK"]),),
                  num_warps=config.num_warps if config else policy.warps(meta["XBLOCK"]),
                  num_stages=config.num_stages if config else 1, problem={"n": n, "bytes": moved})
