"""Whether a graph's convolutions should run channels-last (the `layout` pass), and why.

The decision reads a table of measured wins (graph family -> channels-last / NCHW step time on a
GPU, from `benchmarks/gpu_bench.py --only layout`). The table is empty until a GPU session fills
it: no channels-last win has been measured yet, so every graph keeps NCHW and the default
pipeline is unchanged. A pipeline builder asks `channels_last_decision(family)` and inserts
`layout` before `fuse` when it says yes, logging the reason on channel `avalon.triton`.
"""
from __future__ import annotations

MEASURED: dict[str, tuple[float, float]] = {}  # family -> (channels-last ms, NCHW ms) on a GPU
MIN_GAIN = 1.05  # channels-last must be at least 5% faster to pay for the layout copies' risk


def channels_last_decision(family: str, table: dict[str, tuple[float, float]] | None = None) -> tuple[bool, str]:
    """(run `layout`?, why) for graphs of `family` (e.g. "resnet")."""
    t = MEASURED if table is None else table
    if family not in t:
        return False, f"no GPU measurement for {family!r}: NCHW (the default) kept"
    nhwc, nchw = t[family]
    if nchw >= MIN_GAIN * nhwc:
        return True, f"channels-last measured {nchw / nhwc:.2f}x faster than NCHW"
    return False, f"channels-last measured {nchw / nhwc:.2f}x NCHW: not worth it"
