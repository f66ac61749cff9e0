"""Block sizes and launch shapes, chosen from problem sizes.

Two regimes. On a GPU, Inductor-like sizes: 1024-element pointwise blocks, persistent reductions up
to 1024-wide rows, 64-128 wide `tl.dot` tiles. In Triton's interpreter every program instance costs
~0.4 ms of Python whatever its size, so blocks are as large as memory allows and grids tiny.
Every field can be overridden (tests force looped reductions and multi-program grids with small
blocks): `compile_graph(g, blocks=BlockPolicy.for_device(interpret=True).replace(rblock=16))`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from avalon.precision import dot_precisions, hint_tf32


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pow2_divisor(n: int) -> int:
    """The largest power of two dividing `n` (> 0)."""
    return n & -n


@dataclass(frozen=True)
class BlockPolicy:
    xblock: int  # max elements per pointwise program
    persistent_r: int  # rows up to this long are reduced in one block (no loop)
    rblock: int  # chunk of a looped reduction
    reduction_elems: int  # max XBLOCK * RBLOCK
    mm_block: int  # max BM / BN
    mm_k: int  # max BK
    dot_precision: str = "tf32"  # fp32 matmul / attention tl.dot inputs on the GPU: "tf32" (fast) or "ieee" (exact)
    conv_precision: str = "tf32"  # the same for convolutions; `for_device` reads both from `avalon.precision`
    interpret: bool = False
    mm_stages: int = 3  # software pipelining depth of the K loop (GPU)
    mm_warps: int = 0  # 0: from the tile size
    split_programs: int = 0  # programs the GPU runs at once (its SMs), for `splits`; 0: never split
    split_overhead: int = 4  # a program's fixed cost, in loop steps (a split's epilogue launch: twice that)

    @staticmethod
    def for_device(interpret: bool) -> BlockPolicy:
        """The policy for the GPU or the interpreter, with the float32 product precisions set now
        (`av.set_float32_matmul_precision`, `av.backends.cudnn.allow_tf32`)."""
        matmul, conv = dot_precisions()
        return BlockPolicy._for_device(interpret).replace(dot_precision=matmul, conv_precision=conv)

    @staticmethod
    def _for_device(interpret: bool) -> BlockPolicy:
        if interpret:
            return BlockPolicy(xblock=1 << 17, persistent_r=1 << 14, rblock=1 << 13, reduction_elems=1 << 17,
                               mm_block=128, mm_k=128, interpret=True)
        # rows up to 8192 stay persistent: on an H100 a one-read softmax of 4096-8192 wide rows ran
        # 1.3-1.6x torch where the three-pass looped form ran 0.77x (benchmarks/triton_kernels.py)
        # a GEMM of few output tiles and a long K (LeNet's conv1 weight gradient: one 32x32 tile, 1152
        # K steps) splits K over the H100's / H200's 132 SMs (see `splits`)
        return BlockPolicy(xblock=1024, persistent_r=8192, rblock=1024, reduction_elems=4096, mm_block=128, mm_k=32,
                           split_programs=132)

    def replace(self, **kw) -> BlockPolicy:
        return dataclasses.replace(self, **kw)

    def precision(self, op_name: str) -> str:
        """Triton's `input_precision` for a float32 `tl.dot` of `op_name` (a convolution or not);
        a GPU kernel multiplying in full float32 by default says once how to use TF32."""
        if op_name.startswith("conv"):
            return self.conv_precision
        if self.dot_precision == "ieee" and not self.interpret:
            hint_tf32()
        return self.dot_precision

    # --- per kernel kind ------------------------------------------------------------------------
    def warps(self, elems: int) -> int:
        return 1 if self.interpret else max(1, min(8, elems // 256))

    def pointwise(self, n: int) -> dict[str, int]:
        return {"XBLOCK": min(next_pow2(max(n, 1)), self.xblock)}

    def is_persistent(self, r: int) -> bool:
        return r <= self.persistent_r

    def reduction(self, x: int, r: int) -> dict[str, int]:
        rb = next_pow2(r) if self.is_persistent(r) else min(self.rblock, next_pow2(r))
        xb = max(1, min(next_pow2(max(x, 1)), self.reduction_elems // rb))
        if self.split_programs and not self.is_persistent(r):
            # few long rows (BatchNorm's statistics: 64 channels of 131,072): fewer rows a program
            # and longer row chunks, so half the card has a program before any split is considered
            while xb > 1 and cdiv(x, xb) < self.split_programs // 2:
                xb //= 2
            rb = min(next_pow2(r), max(rb, self.reduction_elems // xb))
        return {"XBLOCK": xb, "RBLOCK": rb, **self.split_r(x, r, xb, rb)}

    def splits(self, programs: int, steps: int) -> int:
        """How many chunks to cut each program's loop of `steps` into: the count minimizing waves x
        (steps per chunk + overhead), plus two overheads for the combining launch and its loop, kept
        only when it saves a quarter. LeNet's conv1 weight gradient (1 program x 1152 K steps) -> 64;
        ResNet-18's first weight gradients (36 x 4096) -> 11 (3 full waves); 1024 x 18 -> 1."""
        if not self.split_programs or programs < 1 or steps < 2:
            return 1

        def cost(s: int) -> int:
            return cdiv(programs * s, self.split_programs) * (cdiv(steps, s) + self.split_overhead) + (
                2 * self.split_overhead if s > 1 else 0)
        best = min(range(1, min(64, steps) + 1), key=lambda s: (cost(s), s))
        return best if best > 1 and 4 * cost(best) <= 3 * cost(1) else 1

    def _chunks(self, programs: int, total: int, block: int) -> tuple[int, int] | None:
        """(chunks, chunk length: a multiple of `block`) cutting a loop over `total`, or None."""
        s = self.splits(programs, cdiv(total, block))
        chunk = cdiv(cdiv(total, block), s) * block
        return (cdiv(total, chunk), chunk) if s > 1 and cdiv(total, chunk) > 1 else None

    def split_r(self, x: int, r: int, xb: int, rb: int) -> dict[str, int]:
        """{"SPLIT_R": s, "RCHUNK": reduced elements per split} for a looped reduction of rows too
        few for the GPU (a loss over a whole tensor: one row): each split reduces a chunk of every
        row into a workspace, a second function combines them in order; else {}."""
        c = self._chunks(cdiv(x, xb), r, rb) if rb < r else None
        return {"SPLIT_R": c[0], "RCHUNK": c[1]} if c else {}

    def contraction_warps(self, bm: int, bn: int) -> int:
        """On a GPU at least 4 (one warpgroup: Hopper's wgmma wants one; a lone warp cannot keep a
        small tile's loads in flight)."""
        return self.mm_warps or (self.warps(bm * bn // 4) if self.interpret else max(4, self.warps(bm * bn // 4)))

    def contraction(self, m: int, n: int, k: int, groups: int = 1, kblock: int = 0) -> dict[str, int]:
        """Tiles of a GEMM; `kblock` (a convolution's channels per tap, `Gemm.kblock`): blocked taps
        ("TAPS": 1), with BK dividing it so that a K tile never straddles two taps."""
        def tile(s: int, cap: int) -> int:
            return max(16, min(next_pow2(s), cap))
        bm, bn = tile(m, self.mm_block), tile(n, self.mm_block)
        # a GPU with few output tiles to run: smaller tiles (down to 32) until about half a wave
        def programs() -> int:
            return cdiv(m, bm) * cdiv(n, bn) * groups
        while self.split_programs and max(bm, bn) > 32 and programs() < self.split_programs // 2:
            bm, bn = (bm // 2, bn) if bm >= bn else (bm, bn // 2)
        meta = {"BM": bm, "BN": bn, "BK": tile(k, self.mm_k), "GROUP_M": 8}
        if kblock:
            meta.update(BK=min(meta["BK"], pow2_divisor(kblock)), TAPS=1)
        return {**meta, **self.split_k(m, n, k, meta, groups)}

    def split_k(self, m: int, n: int, k: int, tiles: dict[str, int], groups: int = 1) -> dict[str, int]:
        """{"SPLIT_K": s, "KCHUNK": K per split} when a GEMM has too few output tiles to fill the
        GPU for the length of its K (`splits`); else {}. Each split sums its K chunk into a float32
        workspace, and a second function sums the splits in a fixed order (deterministic, unlike
        atomics) and runs the group's epilogue."""
        c = self._chunks(cdiv(m, tiles["BM"]) * cdiv(n, tiles["BN"]) * groups, k, tiles["BK"])
        return {"SPLIT_K": c[0], "KCHUNK": c[1]} if c else {}


SPLIT_KEYS = ("SPLIT_K", "KCHUNK", "SPLIT_R", "RCHUNK")


def unsplit(meta: dict[str, int]) -> dict[str, int]:
    """`meta` without its split (a kernel that cannot or should not split runs its loop whole)."""
    return {b: v for b, v in meta.items() if b not in SPLIT_KEYS}


@dataclass(frozen=True)
class KernelConfig:
    """One launch configuration of a tunable kernel: its block-size constexprs, warps and pipeline
    stages. Emitters take one (None: what the `BlockPolicy` picks) so the autotuner can build the
    same group with each candidate; `label` names it in tuning records and `inspect`."""

    meta: tuple[tuple[str, int], ...]
    num_warps: int
    num_stages: int

    @staticmethod
    def of(meta: dict[str, int], num_warps: int, num_stages: int) -> KernelConfig:
        return KernelConfig(tuple(sorted(meta.items())), num_warps, num_stages)

    @property
    def blocks(self) -> dict[str, int]:
        return dict(self.meta)

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.meta) + f" w={self.num_warps} s={self.num_stages}"

    def to_json(self) -> dict:
        return {"meta": dict(self.meta), "num_warps": self.num_warps, "num_stages": self.num_stages}

    @staticmethod
    def from_json(d: dict) -> KernelConfig:
        """Raises (KeyError, TypeError, ValueError) on anything but what `to_json` wrote."""
        meta = d["meta"]
        if not isinstance(meta, dict) or not all(isinstance(k, str) and type(v) is int for k, v in meta.items()):
            raise ValueError(f"bad meta {meta!r}")
        w, s = d["num_warps"], d["num_stages"]
        if type(w) is not int or type(s) is not int:
            raise ValueError("bad warps/stages")
        return KernelConfig.of(meta, w, s)
