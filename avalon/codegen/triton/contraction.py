"""Contraction kernels: a tiled `tl.dot` GEMM with the group's other ops fused around it.

Every contraction is one (batched) GEMM once `gemms.py`'s index maps say where A, B and C's
elements live in the op's real operands (matmul, conv2d and both its gradients as implicit GEMMs).

Groups (the batch of a matmul, a grouped convolution's groups) run in the same launch: on grid axis
1 of the `tl.dot` kernel, or, for narrow conv groups (depthwise), folded into the rows of a
broadcast-product kernel (`folds_groups`), so a depthwise layer is a handful of programs.

A GEMM with few output tiles and a long K (a weight gradient: K runs over batch and pixels) splits
K over grid axis 2 (`BlockPolicy.split_k`; the autotuner times split and unsplit): each split
stores its partial tile to a float32 workspace and the kernel's second function, `<name>_epilogue`
(`Kernel.then`, launched right after with the same arguments), sums the splits in a fixed order
(deterministic, unlike atomic adds) and runs the epilogue below. LeNet's conv1 weight gradient is
one 32x32 tile over 1152 K steps unsplit: one program; split, 64 programs of 18 steps.

A strided conv2d_grad_input is one GEMM per stride phase: the input pixels of a phase are reached
by a fixed subset of the taps, so no K step multiplies the zeros the whole-image GEMM would (3/4 of
them at stride 2); the phases are functions of one kernel file too, launched in a chain.

Operands are read with `Emitter.value` inside the K loop, so a `transpose` (or cast, or any
pointwise prologue) producing an operand inside the group is a strided read. After the loop the
accumulator is the contraction's value at the output tile; the group's outputs are computed from
it there (bias, activation, residual) and stored once: the GEMM result never round-trips memory.
"""
from __future__ import annotations

from collections.abc import Sequence

from avalon.ir import dtypes as dt
from avalon.ir.core import Op, Value

from . import types as ty
from .blocks import BlockPolicy, KernelConfig, cdiv, next_pow2, unsplit
from .emitter import Emitter, Unsupported, Val
from .gemms import GEMMS, Gemm, Operand, Vars, _conv2d_grad_input_phase, grad_input_phases
from .group import Group
from .indexing import Affine, index_key, reshape_index
from .kernel import Kernel, assemble
from .lowering import LOWERING


def _operand(em: Emitter, x: Value, prefix: str, read: Operand, v: Vars, live: tuple[str, ...]) -> str:
    """An operand tile ([BM, BK] or [BK, BN]) whose lanes outside the problem are exactly 0."""
    idx, guard = read(em, v)
    val = em.value(x, idx, guard)
    expr = val.expr
    direct = val.loaded and set(live) <= val.deps  # a masked load: already 0 off the problem and guard
    if not direct:
        live_mask = " & ".join(em.masks[n] for n in live) + (f" & {guard.expr}" if guard is not None else "")
        expr = f"tl.where({live_mask}, {expr}, 0)"
    if x.dtype in (dt.float16, dt.bfloat16) and not (x.dtype == dt.bfloat16 and em.dots_in_f32):
        expr = f"({expr}).to({ty.tl_type(x.dtype)})"  # tensor cores take the 16-bit values
    elif x.dtype == dt.bool_:
        expr = f"({expr}).to(tl.int32)"
    name = em.fresh(prefix)
    em.line(f"{name} = {expr}")
    return name


def build_contraction(group: Group, in_strides: Sequence[Sequence[int]], out_strides: Sequence[Sequence[int]],
                      policy: BlockPolicy, config: KernelConfig | None = None) -> Kernel:
    """`config` (the autotuner's candidate) overrides the policy's tiles, warps and stages. With
    SPLIT_K in its blocks, K is split over grid axis 2 (see `_build_split`)."""
    cons = [op for op in group.ops if LOWERING[op.name].kind == "contraction"]
    if len(cons) != 1:
        raise Unsupported(f"a contraction group needs exactly one contraction, has {len(cons)}")
    op = cons[0]
    blocked, plain = GEMMS[op.name](op, True), GEMMS[op.name](op)  # blocked taps where it has them (`gemms._kblock`)
    gemm = blocked if blocked.kblock else plain
    res = op.result
    total = res.type.numel
    if any(o.type.numel != total for o in group.outputs):
        raise Unsupported("a contraction group's outputs must each have one element per element of its result")
    if folds_groups(op, gemm):
        return _build_folded(group, op, gemm, in_strides, out_strides, policy, config)
    meta = config.blocks if config else policy.contraction(gemm.m, gemm.n, gemm.k, gemm.groups, blocked.kblock)
    if not meta.get("TAPS"):
        gemm = plain
    elif not blocked.kblock or blocked.kblock % meta["BK"]:
        raise Unsupported(f"TAPS=1 needs channels per tap that BK={meta['BK']} divides ({op.name})")
    warps = config.num_warps if config else policy.contraction_warps(meta["BM"], meta["BN"])
    stages = config.num_stages if config else 1 if policy.interpret else policy.mm_stages
    itemsize = max(op.operands[i].dtype.itemsize for i in gemm.operands)  # shared memory per staged element
    problem = {"m": gemm.m, "n": gemm.n, "k": gemm.k, "groups": gemm.groups, "itemsize": itemsize,
               "bytes": sum(v.type.nbytes for v in (*group.inputs, *group.outputs))}  # each read or written once
    if blocked.kblock:
        problem["kblock"] = blocked.kblock  # the autotuner tries blocked and per-element taps
    tma = _tma_operands(group, op, gemm, in_strides)
    if tma:
        problem["tma"] = 1  # the autotuner may try the TMA form
    if meta.get("TMA") and not tma:
        raise Unsupported("this contraction's operands cannot be read by TMA descriptors")
    phases = grad_input_phases(op)
    if meta.get("PERSIST") and (gemm.groups != 1 or meta.get("SPLIT_K", 1) > 1 or phases):
        raise Unsupported("a persistent contraction is one unsplit 2-D GEMM")
    if phases:
        meta = unsplit(meta)
        k = _build_phases(group, op, phases, in_strides, out_strides, policy, meta, warps, stages, blocked.kblock)
        if k is not None:
            return k
    if meta.get("SPLIT_K", 1) > 1:
        k = _build_split(group, op, gemm, in_strides, out_strides, policy, meta, warps, stages, problem,
                         tma if meta.get("TMA") else None)
        if k is not None:
            return k
        meta = unsplit(meta)
    em = _plain_gemm(group, op, gemm, in_strides, out_strides, policy, tma if meta.get("TMA") else None,
                     persist=bool(meta.get("PERSIST")), meta=meta)
    src, params = assemble(group, "contraction", em, _meta_names(meta), [o.dtype for o in group.outputs])
    return Kernel(group.name, "contraction", src, params, meta, _grid(gemm, meta), num_warps=warps,
                  num_stages=stages, problem=problem)


def _meta_names(meta: dict[str, int]) -> list[str]:
    """The kernel's constexpr parameters: every key of its config (the launcher passes them all)."""
    return ["BM", "BN", "BK", "GROUP_M"] + [x for x in ("TMA", "TAPS", "SPLIT_K", "KCHUNK", "PERSIST") if x in meta]


def _plain_gemm(group: Group, op: Op, gemm: Gemm, in_strides: Sequence[Sequence[int]],
                out_strides: Sequence[Sequence[int]], policy: BlockPolicy,
                tma: list[tuple[int, tuple[int, ...]]] | None = None, persist: bool = False,
                meta: dict[str, int] | None = None) -> Emitter:
    """One output tile a program; with `persist`, PERSIST programs (one per SM) walk the tiles, the
    loop flattened so a tile's epilogue overlaps the next tile's first loads (Triton's persistent
    matmul), which also spares the last wave's idle SMs a launch."""
    em = Emitter(group.inputs, in_strides, dots_in_f32=policy.interpret)
    if persist:
        em.line(f"num_tiles = tl.cdiv({gemm.m}, BM) * tl.cdiv({gemm.n}, BN)")
        em.open("for tile in tl.range(tl.program_id(0), num_tiles, PERSIST, flatten=True):")
    v = _tiles(em, gemm, "tile" if persist else "tl.program_id(0)", meta)
    _dot_loop(em, op, gemm, policy, v, split=False, tma=tma, bk=(meta or {}).get("BK"))
    _epilogue(em, group, op, gemm, v, out_strides)
    if persist:
        em.close()
    return em


def _tma_operands(group: Group, op: Op, gemm: Gemm,
                  in_strides: Sequence[Sequence[int]]) -> list[tuple[int, tuple[int, ...]]] | None:
    """(input index, strides) of A and B when Hopper's tensor-memory accelerator can load them: a
    2-D matmul of two kernel inputs (or of their transposes, or of [B, T, C] inputs seen as
    [B*T, C] matrices: a Linear on a sequence), each with one unit stride and the other a multiple
    of 16 bytes (TMA's rule). None otherwise."""
    if op.name != "matmul" or gemm.groups != 1:
        return None
    index = {id(v): i for i, v in enumerate(group.inputs)}
    out = []
    for x in op.operands:
        src, swap = x, False
        if id(x) not in index and x.op is not None and x.op.name == "transpose" and list(x.op.attrs["perm"]) == [1, 0]:
            src, swap = x.op.operands[0], True  # x @ w.T inside the group: w's tiles, transposed
        st = _as_matrix(src, index, in_strides)
        if st is None or x.type.rank != 2 or x.dtype not in (dt.float16, dt.bfloat16, dt.float32):
            return None
        i, st = st[0], (st[1][::-1] if swap else st[1])
        if sorted(st)[0] != 1 or (max(st) * x.dtype.itemsize) % 16:
            return None
        out.append((i, st))
    return out


def _as_matrix(x: Value, index: dict[int, int], in_strides: Sequence[Sequence[int]]) -> tuple[int, tuple] | None:
    """(input index, 2-D strides) of `x` when it is a kernel input, or a reshape of one that merges
    its leading dimensions (contiguous among themselves) into rows and keeps its last."""
    if id(x) in index:
        return index[id(x)], tuple(in_strides[index[id(x)]])
    if x.op is None or x.op.name != "reshape" or x.type.rank != 2 or id(x.op.operands[0]) not in index:
        return None
    src = x.op.operands[0]
    i = index[id(src)]
    shape, st = src.shape, tuple(in_strides[i])
    if src.type.rank < 2 or shape[-1] != x.shape[1]:
        return None
    if any(st[j] != st[j + 1] * shape[j + 1] for j in range(len(shape) - 2)):
        return None  # the leading dimensions do not merge into one stride
    return i, (st[-2], st[-1])


def _build_phases(group: Group, op: Op, phases: list[tuple[int, int]], in_strides: Sequence[Sequence[int]],
                  out_strides: Sequence[Sequence[int]], policy: BlockPolicy, meta: dict[str, int], warps: int,
                  stages: int, kblock: int = 0) -> Kernel | None:
    """A strided conv2d_grad_input as one GEMM per stride phase (`_conv2d_grad_input_phase`), each
    a function of one kernel file writing its own pixels, launched in a chain (`Kernel.then`) with
    the same arguments and config. None when a phase needs index checks (one err layout a kernel)."""
    gemms = [_conv2d_grad_input_phase(op, a, b, bool(meta.get("TAPS"))) for a, b in phases]
    names = [group.name] + [f"{group.name}_p{a}{b}" for a, b in phases[1:]]
    ems = [_plain_gemm(group, op, g, in_strides, out_strides, policy, meta=meta) for g in gemms]
    if any(e.index_checks for e in ems):
        return None
    src, params = assemble(group, "contraction", ems[0], _meta_names(meta),
                           [o.dtype for o in group.outputs], also=list(zip(names[1:], ems[1:])))
    k = None
    for name, g in reversed(list(zip(names, gemms))):
        k = Kernel(name, "contraction" if name == group.name else "contraction_phase", src, params, meta,
                   _grid(g, meta), num_warps=warps, num_stages=stages,
                   problem={"m": g.m, "n": g.n, "k": g.k, "groups": g.groups, **({"kblock": kblock} if kblock else {})},
                   then=k)
    return k


def _grid(gemm: Gemm, meta: dict[str, int], splits: int = 1) -> tuple[int, ...]:
    tiles = cdiv(gemm.m, meta["BM"]) * cdiv(gemm.n, meta["BN"]) if gemm.m and gemm.n else 0
    if meta.get("PERSIST"):
        tiles = min(tiles, meta["PERSIST"])
    return (tiles, gemm.groups) if splits == 1 else (tiles, gemm.groups, splits)


def _tiles(em: Emitter, gemm: Gemm, pid: str = "tl.program_id(0)", meta: dict[str, int] | None = None) -> Vars:
    """Program (or a persistent program's `pid`) -> output tile (grouped ordering: tiles sharing A
    rows run together); the group on grid axis 1. With the config's `meta`, a dimension its tiles
    divide gets no bounds test (`Emitter.bound`)."""
    meta = meta or {}
    em.line(f"pid = {pid}")
    em.line(f"num_pid_m = tl.cdiv({gemm.m}, BM)")
    em.line(f"num_pid_n = tl.cdiv({gemm.n}, BN)")
    em.line("group_size = GROUP_M * num_pid_n")
    em.line("first_m = (pid // group_size) * GROUP_M")
    em.line("rows_here = tl.minimum(num_pid_m - first_m, GROUP_M)")
    em.line("pid_m = first_m + (pid % group_size) % rows_here")
    em.line("pid_n = (pid % group_size) // rows_here")
    v: Vars = {}
    # gz as a [1, 1] block, not a scalar: a guard on it alone (a batch-dim concat or pad of an
    # operand) is then an i1 block, which Triton's interpreter accepts as a load mask (a 0-d
    # scalar mask fails there with "mask has unsupported dtype"); on a GPU it broadcasts the same
    v["g"] = (Affine.of(em.define_var("gz", "tl.program_id(1) + tl.zeros([1, 1], tl.int32)", gemm.groups))
              if gemm.groups > 1 else Affine())
    em.scalars.add("gz")
    v["m"] = Affine.of(em.define_var("rm", "pid_m * BM + tl.arange(0, BM)[:, None]", gemm.m, "mask_m"))
    em.bound("mask_m", "rm", gemm.m, meta.get("BM"), "[BM, 1]")
    v["n"] = Affine.of(em.define_var("rn", "pid_n * BN + tl.arange(0, BN)[None, :]", gemm.n, "mask_n"))
    em.bound("mask_n", "rn", gemm.n, meta.get("BN"), "[1, BN]")
    return v


def _dot_loop(em: Emitter, op: Op, gemm: Gemm, policy: BlockPolicy, v: Vars, split: bool,
              tma: list[tuple[int, tuple[int, ...]]] | None = None, bk: int | None = None) -> None:
    """`acc` = the tile's sum over K (with `split`: over this program's KCHUNK of K, axis 2; with
    `tma`, (input, strides) of A and B: loaded by tensor descriptors, out-of-bounds zero-filled)."""
    acc_d = _acc_dtype(op.result.dtype)
    em.line(f"acc = tl.zeros([BM, BN], {ty.tl_type(acc_d)})")
    if tma is not None:
        _tma_dot(em, op, gemm, policy, tma, split)
        return
    if gemm.kblock:  # the tile's channel offsets, loop-invariant (see below)
        kr = Affine.of(em.define_var("kr", "tl.arange(0, BK)[None, :]", 1 << 30))
        krb = Affine.of(em.define_var("krb", "tl.arange(0, BK)[:, None]", 1 << 30))
    if split:  # constant loop bounds: the chunk's offset is added inside
        em.line("k_lo = tl.program_id(2) * KCHUNK")
        em.open("for k0 in range(0, KCHUNK, BK):")
        start = "k_lo + k0"
    else:
        em.open(f"for k0 in range(0, {gemm.k}, BK):")
        start = "k0"
    if gemm.kblock:
        # blocked taps: this K tile lies in one tap, `kq` (a scalar), at channels kc = c0 + kr (c0
        # a scalar): an operand's address is a tile of pointers made before the loop plus scalars
        # (channels padded to the block are masked off; BK divides K, but a split's last chunk may
        # run past it: its taps are masked off by a scalar test)
        c, padded = gemm.kblock, gemm.kvalid < gemm.kblock
        kq = Affine.of(em.define_var("kq", f"({start}) // {c}", gemm.k // c, "mask_kq" if split else None)).scale(c)
        if split:
            em.line(f"mask_kq = kq + tl.zeros([1, 1], tl.int32) < {gemm.k // c}")  # a block: see `_tiles`
        c0 = Affine.of(em.define_var("c0", f"({start}) % {c}", c))
        em.scalars |= {"kq", "c0"}
        v["ka"] = kq + Affine.of(em.define_var("kc", "c0 + kr", c, "mask_kc" if padded else None))
        v["kb"] = kq + Affine.of(em.define_var("kcb", "c0 + krb", c, "mask_kcb" if padded else None))
        em.expand.update(kc=c0 + kr, kcb=c0 + krb)
        if padded:
            em.line(f"mask_kc = kc < {gemm.kvalid}")
            em.line(f"mask_kcb = kcb < {gemm.kvalid}")
        live_a = ("rm",) + (("kc",) if padded else ()) + (("kq",) if split else ())
        live_b = ("rn",) + (("kcb",) if padded else ()) + (("kq",) if split else ())
    else:
        v["ka"] = Affine.of(em.define_var("ka", f"{start} + tl.arange(0, BK)[None, :]", gemm.k, "mask_ka"))
        exact = None if split else bk  # a split's last chunk may run past K
        em.bound("mask_ka", "ka", gemm.k, exact, "[1, BK]")
        v["kb"] = Affine.of(em.define_var("kb", f"{start} + tl.arange(0, BK)[:, None]", gemm.k, "mask_kb"))
        em.bound("mask_kb", "kb", gemm.k, exact, "[BK, 1]")
        live_a, live_b = ("rm", "ka"), ("kb", "rn")
    a = _operand(em, op.operands[gemm.operands[0]], "a", gemm.a, v, live_a)
    b = _operand(em, op.operands[gemm.operands[1]], "b", gemm.b, v, live_b)
    if acc_d.is_float:
        prec = f', input_precision="{policy.precision(op.name)}"' if acc_d == dt.float32 else ""
        em.line(f"acc += tl.dot({a}, {b}{prec})")
    else:
        em.line(f"acc += tl.sum({a}[:, :, None].to({ty.tl_type(acc_d)}) * {b}[None, :, :].to({ty.tl_type(acc_d)}), 1)")
    em.close()


def _tma_dot(em: Emitter, op: Op, gemm: Gemm, policy: BlockPolicy, tma: list[tuple[int, tuple[int, ...]]],
             split: bool = False) -> None:
    """The K loop with A [M, K] and B [K, N] read through tensor descriptors (device-side: the
    runtime gives Triton an allocator for them); a column-major operand is described transposed
    and its tile transposed back. With `split`, this program's KCHUNK of K: a chunk running past
    K reads zeros there (the descriptor's bounds), so it needs no mask."""
    (ia, sa), (ib, sb) = tma
    k = "k_lo + k0" if split else "k0"
    a = _tma_tile(em, "a_desc", ia, sa, (gemm.m, gemm.k), ("BM", "BK"), ("pid_m * BM", k))
    b = _tma_tile(em, "b_desc", ib, sb, (gemm.k, gemm.n), ("BK", "BN"), (k, "pid_n * BN"))
    if em.dots_in_f32 and op.operands[0].dtype == dt.bfloat16:  # the interpreter's bf16 dot is wrong
        a, b = f"{a}.to(tl.float32)", f"{b}.to(tl.float32)"
    prec = f', input_precision="{policy.precision(op.name)}"' if op.operands[0].dtype == dt.float32 else ""
    if split:
        em.line("k_lo = tl.program_id(2) * KCHUNK")
    em.open(f"for k0 in range(0, {'KCHUNK' if split else gemm.k}, BK):")
    em.line(f"acc += tl.dot({a}, {b}{prec})")
    em.close()


def _tma_tile(em: Emitter, name: str, i: int, strides: tuple[int, ...], shape: tuple[int, int],
              block: tuple[str, str], at: tuple[str, str]) -> str:
    """A `block` tile at `at` of input i seen as a `shape` matrix: described as it is when its rows
    are contiguous, else described transposed and the tile transposed back."""
    (rows, cols), (br, bc), (r0, c0) = shape, block, at
    if strides[1] == 1:  # descriptors are made once, before any loop (a persistent one's too)
        em.line(f"{name} = tl.make_tensor_descriptor(in{i}, shape=[{rows}, {cols}], strides=[{strides[0]}, 1], "
                f"block_shape=[{br}, {bc}])", em.root)
        return f"{name}.load([{r0}, {c0}])"
    em.line(f"{name} = tl.make_tensor_descriptor(in{i}, shape=[{cols}, {rows}], strides=[{strides[1]}, 1], "
            f"block_shape=[{bc}, {br}])", em.root)
    return f"{name}.load([{c0}, {r0}]).T"


def _epilogue(em: Emitter, group: Group, op: Op, gemm: Gemm, v: Vars, out_strides: Sequence[Sequence[int]]) -> None:
    """The group's outputs from `acc` (the contraction's value at the tile), stored once."""
    res = op.result
    out_idx = gemm.out(v)
    deps = frozenset({"rm", "rn"} | ({"gz"} if gemm.groups > 1 else set()))
    acc = Val("acc", res.dtype if res.dtype != dt.bool_ else dt.int32, em.scope, deps)
    if res.dtype == dt.bool_:
        acc = em.emit("acc != 0", dt.bool_, vals=(acc,))
    em.overrides[(id(res), index_key(out_idx))] = acc
    for j, o in enumerate(group.outputs):
        oidx = reshape_index(out_idx, res.shape, o.shape)
        em.store(f"out{j}", out_strides[j], o.shape, oidx, em.value(o, oidx), o.dtype, ["rm", "rn"])


def _build_split(group: Group, op: Op, gemm: Gemm, in_strides: Sequence[Sequence[int]],
                 out_strides: Sequence[Sequence[int]], policy: BlockPolicy, meta: dict[str, int], warps: int,
                 stages: int, problem: dict[str, int],
                 tma: list[tuple[int, tuple[int, ...]]] | None = None) -> Kernel | None:
    """Split-K: grid axis 2 runs SPLIT_K chunks of K, each storing its partial tile into the
    workspace `ws` [SPLIT_K, groups, m, n]; the epilogue function (`<name>_epilogue`, launched
    right after, `Kernel.then`) sums the splits in order and runs the group's other ops. None when
    the group cannot split (integer sums, a workspace past int32 offsets, index checks)."""
    acc_d = _acc_dtype(op.result.dtype)
    splits = meta["SPLIT_K"]
    tile = gemm.groups * gemm.m * gemm.n
    if not acc_d.is_float or splits * tile >= 2 ** 31 or meta["KCHUNK"] % meta["BK"]:
        return None
    gz = "gz" if gemm.groups > 1 else "0"
    em = Emitter(group.inputs, in_strides, dots_in_f32=policy.interpret)
    v = _tiles(em, gemm, meta=meta)
    _dot_loop(em, op, gemm, policy, v, split=True, tma=tma)
    em.line(f"tl.store(ws + (tl.program_id(2) * {tile} + ({gz} * {gemm.m} + rm) * {gemm.n} + rn), acc, "
            "mask=mask_m & mask_n)")
    epi = Emitter(group.inputs, in_strides, dots_in_f32=policy.interpret)
    v2 = _tiles(epi, gemm, meta=meta)
    epi.line(f"acc = tl.zeros([BM, BN], {ty.tl_type(acc_d)})")
    epi.line(f"part = ws + ({gz} * {gemm.m} + rm) * {gemm.n} + rn")
    unroll = max(1, min(4, 8192 // (meta["BM"] * meta["BN"])))  # loads in flight, within registers
    epi.open(f"for s0 in range(0, SPLIT_K, {unroll}):")
    for j in range(unroll):
        live = "mask_m & mask_n" + (f" & (s0 + {j} < SPLIT_K)" if j else "")
        epi.line(f"acc += tl.load(part + (s0 + {j}) * {tile}, mask={live}, other=0)")
    epi.close()
    _epilogue(epi, group, op, gemm, v2, out_strides)
    if em.index_checks or epi.index_checks:
        return None  # one err layout per kernel; a gather around a split GEMM is not worth a second
    src, params = assemble(group, "contraction", em, _meta_names(meta), [o.dtype for o in group.outputs],
                           workspace=acc_d, also=[(f"{group.name}_epilogue", epi)])
    then = Kernel(f"{group.name}_epilogue", "contraction_epilogue", src, params, meta, _grid(gemm, meta),
                  num_warps=warps, num_stages=1, problem=problem, workspace=splits * tile)
    return Kernel(group.name, "contraction", src, params, meta, _grid(gemm, meta, splits), num_warps=warps,
                  num_stages=stages, problem=problem, workspace=splits * tile, then=then)


def _acc_dtype(d: dt.DType) -> dt.DType:
    if d == dt.float64:
        return dt.float64
    if d.is_float:
        return dt.float32
    return dt.int64 if d == dt.int64 else dt.int32



def folds_groups(op: Op, gemm: Gemm) -> bool:
    """Grouped convolutions whose groups are narrow (depthwise: one output channel each) fold the
    group into the row axis: a `tl.dot` tile would be mostly padding (it wants >= 16 columns), and
    one program per group is what made MobileNetV2 crawl in the interpreter (the cost is per
    program instance). Wide groups keep the dot, the group on grid axis 1 of the same launch."""
    return op.name != "matmul" and gemm.groups > 1 and gemm.n < 16


def folded_blocks(policy: BlockPolicy, rows: int, n: int, k: int) -> dict[str, int]:
    """BM x BK x BN products live at once: bounded like a reduction block."""
    bn = next_pow2(max(n, 1))
    bk = max(1, min(next_pow2(max(k, 1)), policy.mm_k))
    bm = max(1, min(next_pow2(max(rows, 1)), policy.reduction_elems // (bk * bn)))
    return {"BM": bm, "BN": bn, "BK": bk}


def _build_folded(group: Group, op: Op, gemm: Gemm, in_strides: Sequence[Sequence[int]],
                  out_strides: Sequence[Sequence[int]], policy: BlockPolicy, config: KernelConfig | None) -> Kernel:
    """All groups in one grid: rows are (group, m) pairs, C[g, m, n] = sum_k A[g, m, k] B[g, k, n]
    as a broadcast product summed over a [BM, BK, BN] block (the operands' group comes from the row)."""
    res = op.result
    rows = gemm.groups * gemm.m
    em = Emitter(group.inputs, in_strides, dots_in_f32=policy.interpret)
    em.line("pid = tl.program_id(0)")
    em.line(f"pid_m = pid // tl.cdiv({gemm.n}, BN)")
    em.line(f"pid_n = pid % tl.cdiv({gemm.n}, BN)")

    def split(r: Affine) -> tuple[Affine, Affine]:
        return r.floordiv_mod(gemm.m, None), r.floordiv_mod(1, gemm.m)

    rm3 = Affine.of(em.define_var("rm3", "pid_m * BM + tl.arange(0, BM)[:, None, None]", rows, "mask_m3"))
    em.line(f"mask_m3 = rm3 < {rows}")
    rn3 = Affine.of(em.define_var("rn3", "pid_n * BN + tl.arange(0, BN)[None, None, :]", gemm.n, "mask_n3"))
    em.line(f"mask_n3 = rn3 < {gemm.n}")
    rm = Affine.of(em.define_var("rm", "pid_m * BM + tl.arange(0, BM)[:, None]", rows, "mask_m"))
    em.line(f"mask_m = rm < {rows}")
    rn = Affine.of(em.define_var("rn", "pid_n * BN + tl.arange(0, BN)[None, :]", gemm.n, "mask_n"))
    em.line(f"mask_n = rn < {gemm.n}")
    acc_d = _acc_dtype(res.dtype)
    at = ty.tl_type(acc_d)
    em.line(f"acc = tl.zeros([BM, BN], {at})")
    em.open(f"for k0 in range(0, {gemm.k}, BK):")
    k3 = Affine.of(em.define_var("k3", "k0 + tl.arange(0, BK)[None, :, None]", gemm.k, "mask_k3"))
    em.line(f"mask_k3 = k3 < {gemm.k}")
    g3, m3 = split(rm3)
    v3: Vars = {"g": g3, "m": m3, "n": rn3, "ka": k3, "kb": k3}
    a = _operand(em, op.operands[gemm.operands[0]], "a", gemm.a, v3, ("rm3", "k3"))
    b = _operand(em, op.operands[gemm.operands[1]], "b", gemm.b, v3, ("rm3", "k3", "rn3"))
    em.line(f"acc += tl.sum({a}.to({at}) * {b}.to({at}), 1)")
    em.close()
    g2, m2 = split(rm)
    out_idx = gemm.out({"g": g2, "m": m2, "n": rn})
    acc = Val("acc", res.dtype if res.dtype != dt.bool_ else dt.int32, em.scope, frozenset({"rm", "rn"}))
    if res.dtype == dt.bool_:
        acc = em.emit("acc != 0", dt.bool_, vals=(acc,))
    em.overrides[(id(res), index_key(out_idx))] = acc
    for j, o in enumerate(group.outputs):
        oidx = reshape_index(out_idx, res.shape, o.shape)
        em.store(f"out{j}", out_strides[j], o.shape, oidx, em.value(o, oidx), o.dtype, ["rm", "rn"])
    meta = config.blocks if config else folded_blocks(policy, rows, gemm.n, gemm.k)
    src, params = assemble(group, "contraction", em, ["BM", "BN", "BK"], [o.dtype for o in group.outputs])
    grid = (cdiv(rows, meta["BM"]) * cdiv(gemm.n, meta["BN"]) if rows and gemm.n else 0,)
    return Kernel(group.name, "contraction", src, params, meta, grid,
                  num_warps=config.num_warps if config else policy.warps(meta["BM"] * meta["BN"] * meta["BK"] // 4),
                  num_stages=config.num_stages if config else 1,
                  problem={"rows": rows, "n": gemm.n, "k": gemm.k, "folded": 1})
