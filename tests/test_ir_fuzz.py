"""Fuzzing the text IR in CI (issue 13): mutated printed IR of the zoo models gives a Graph or a
located ParseError / VerifyError, never another exception, and no input is slow. The long run is
`python benchmarks/fuzz_ir.py` (same engine, 100,000 inputs by default)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import fuzz_ir  # noqa: E402


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return fuzz_ir.seeds()


def test_mutation_fuzz(texts):
    res = fuzz_ir.run(2000, seed=13, slow=2.0, texts=texts, uses=2000)  # (linearity: test_ir_robust)
    assert res["crash"] == 0 and res["silent"] == 0, res["bad"][:3]
    assert res["slow"] == 0, [(round(t, 2), x[:200]) for t, x in res["slow_inputs"][:3]]
    assert res["ok"] + res["clean"] == res["tried"]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(which=st.integers(0, 6), at=st.floats(0, 1), junk=st.text(max_size=40), cut=st.booleans())
def test_hypothesis_splices(texts, which, at, junk, cut):
    """Arbitrary text spliced into (or cut from) a seed at any position."""
    base = texts[which % len(texts)]
    i = int(at * len(base))
    text = base[:i] + junk + ("" if cut else base[i:])
    t0 = time.process_time()  # (CPU time: a loaded machine's other processes do not count)
    out = fuzz_ir.check(text)
    assert out in ("ok", "clean"), out
    assert time.process_time() - t0 < 2.0
