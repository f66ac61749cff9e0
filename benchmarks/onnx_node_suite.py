"""Run onnx's own node-test suite (`onnx.backend.test.BackendTest`) against `avalon.onnx.backend`.

Prints pass / unsupported (UnsupportedOp from prepare) / fail counts and, with `--write`, records
the passing cases in tests/data/onnx_node_expected_pass.txt, the list tests/test_onnx_node_suite.py
holds CI to. `--list-failures` prints each failing or unsupported case and its error.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
import unittest
import warnings
from pathlib import Path

EXPECTED = Path(__file__).resolve().parent.parent / "tests" / "data" / "onnx_node_expected_pass.txt"


def node_cases(pattern: str | None = None) -> list[tuple[str, unittest.TestCase]]:
    """(case name, unittest case) for every node case (CPU), optionally filtered by a regex."""
    import onnx.backend.test

    import avalon.onnx.backend as backend
    bt = onnx.backend.test.BackendTest(backend, __name__)
    bt.include(r"^test_.*_cpu$")
    suite = bt.test_cases["OnnxBackendNodeModelTest"]
    out = []
    for name in sorted(n for n in dir(suite) if n.startswith("test_") and n.endswith("_cpu")):
        if pattern is None or re.search(pattern, name):
            out.append((name, suite(name)))
    return out


def classify(case: unittest.TestCase) -> tuple[str, str]:
    """('pass' | 'unsupported' | 'fail', detail) for one case."""
    from avalon.onnx import UnsupportedOp
    result = unittest.TestResult()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        case.run(result)
    problems = result.errors + result.failures
    if not problems and not result.skipped:
        return "pass", ""
    if result.skipped:
        return "skipped", result.skipped[0][1]
    text = problems[0][1]
    last = text.strip().splitlines()[-1]
    if UnsupportedOp.__name__ in last or "NotImplementedError" in last:
        return "unsupported", last
    return "fail", last


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--write", action="store_true", help="write the expected-pass list")
    p.add_argument("--list-failures", action="store_true")
    p.add_argument("-k", default=None, help="only cases matching this regex")
    args = p.parse_args(argv)
    t0 = time.time()
    counts: dict[str, list[str]] = {"pass": [], "unsupported": [], "fail": [], "skipped": []}
    for name, case in node_cases(args.k):
        kind, detail = classify(case)
        counts[kind].append(name)
        if kind in ("fail", "unsupported") and args.list_failures:
            print(f"{kind.upper()} {name}: {detail[:200]}")
    total = sum(len(v) for v in counts.values())
    print(f"{total} node cases: {len(counts['pass'])} pass, {len(counts['unsupported'])} unsupported, "
          f"{len(counts['fail'])} fail, {len(counts['skipped'])} skipped ({time.time() - t0:.0f} s)")
    if args.write:
        EXPECTED.write_text("".join(f"{n}\n" for n in sorted(counts["pass"])))
        print(f"wrote {EXPECTED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
