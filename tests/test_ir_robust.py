"""The parser and verifier on hostile text (issue 13): only located ParseError / VerifyError come
out, nesting is depth-limited, numbers are limited, verification is linear, names round-trip."""
from __future__ import annotations

import time

import numpy as np
import pytest

import avalon as av
from avalon.ir import ParseError, VerifyError, parse, verify
from avalon.ir.registry import ShapeError

FUNC = "func @f(%x: tensor<{t}>) -> (tensor<{r}>) {{\n  %0 = {op} : tensor<{r}>\n  return %0\n}}\n"


def _fails(text: str, err=(ParseError, VerifyError), match: str | None = None):
    with pytest.raises(err, match=match) as ei:
        verify(parse(text))
    if isinstance(ei.value, ParseError):
        assert ei.value.line >= 1 and ei.value.col >= 1
    return ei.value


@pytest.mark.parametrize("t, op, r, match", [
    ("2x3xf32", "constant {value = 1.0, shape = [3, -1]}", "3x1xf32", "negative dimension"),
    ("1x1x4x4xf32", "max_pool2d %x {kernel = [2], stride = [2, 2]}", "1x1x2x2xf32", "kernel needs 2 entries"),
    ("1x1x4x4xf32", "max_pool2d %x {kernel = [2, 2], stride = [0, 0]}", "1x1x2x2xf32", "stride"),
    ("1x1x4x4xf32", "avg_pool2d %x {kernel = [0, 2], stride = [1, 1]}", "1x1x2x2xf32", "kernel"),
    ("f32", "concat %x, %x {axis = 0}", "2xf32", "rank >= 1"),
    ("f32", "max %x {axes = [0]}", "f32", None),  # a 0-d max reduces nothing: valid
    ("f32", "broadcast %x {shape = [-2]}", "2xf32", "negative"),
    ("2xf32", "constant {value = [[1], [2, 3]], shape = [2]}", "2xf32", "rectangular"),
    ("2xf32", 'constant {value = "x", shape = [2]}', "2xf32", "number"),
    ("2xf32", "random %x {shape = [-1]}", "2xf32", None),
])
def test_bad_attribute_values_are_located_errors(t, op, r, match):
    text = FUNC.format(t=t, op=op, r=r)
    if match is None:
        try:
            verify(parse(text))
        except (ParseError, VerifyError):
            pass
    else:
        _fails(text, match=match)


def test_conv_attributes_checked_in_ir_and_in_ops():
    x = np.ones((1, 1, 4, 4), np.float32)
    w = np.ones((1, 1, 2, 2), np.float32)
    for kw in ({"stride": 0}, {"dilation": 0}, {"padding": -1}, {"groups": 0}):
        with pytest.raises(ShapeError, match="conv2d"):
            av.trace(lambda x, w, kw=kw: av.ops.conv2d(x, w, **kw), x, w)
    text = ("func @f(%x: tensor<1x1x4x4xf32>, %w: tensor<1x1x2x2xf32>) -> (tensor<1x1x3x3xf32>) {\n"
            "  %0 = conv2d %x, %w {stride = [0, 0]} : tensor<1x1x3x3xf32>\n  return %0\n}\n")
    _fails(text, VerifyError, "stride")


@pytest.mark.parametrize("snippet, match", [
    ("dense<[[1],[2,3]]>", "rectangular"),
    ('dense<["a"]>', "rectangular"),
    ("7" * 5000, "64 bits"),
    ("9223372036854775808", "64 bits"),
    ("[" * 1000 + "1" + "]" * 1000, "nested more than"),
])
def test_attribute_literals(snippet, match):
    e = _fails(FUNC.format(t="2xf32", op=f"constant {{value = {snippet}, shape = [2]}}", r="2xf32"), ParseError, match)
    assert e.line == 2


@pytest.mark.parametrize("loc, match", [
    ('loc("a.py":1.5)', "line number"),
    ('loc("a\\q.py":3)', "bad string literal"),
    ('loc("a.py":99999999999999999999999)', "64 bits"),
    ('loc("a.py\n":3)', "unexpected character"),
])
def test_bad_locations(loc, match):
    text = FUNC.format(t="2xf32", op="neg %x", r="2xf32").replace(": tensor<2xf32>\n  return",
                                                                   f": tensor<2xf32> {loc}\n  return")
    _fails(text, ParseError, match)


def test_escaped_location_round_trips():
    text = FUNC.format(t="2xf32", op="neg %x", r="2xf32").replace(
        ": tensor<2xf32>\n  return", ': tensor<2xf32> loc("d\\u00e9j\\u00e0 \\"q\\".py":7)\n  return')
    g = parse(text)
    assert g.ops[0].loc.file == 'déjà "q".py' and g.ops[0].loc.line == 7
    from avalon.ir.printer import print_graph
    printed = print_graph(g, locations=True)
    assert print_graph(parse(printed), locations=True) == printed


@pytest.mark.parametrize("t, match", [
    ("2x3xf32, layout = 5", "layout is a list"),
    ("2x3xf32, layout = [1]", "permutation"),
    ("2x-3xf32", "bad shape"),
    ("99999999999999999999xf32", "bad shape"),
    ("2x3xq7", "unknown element type"),
])
def test_bad_tensor_types(t, match):
    _fails(f"func @f(%x: tensor<{t}>) -> () {{\n  return\n}}\n", ParseError, match)


def test_deep_region_nesting_is_a_located_error():
    import sys
    sys.path.insert(0, "benchmarks")
    from fuzz_ir import nested_regions
    verify(parse(nested_regions(20)))
    e = _fails(nested_regions(600), ParseError, "regions nested more than")
    assert e.line > 100


def test_position_after_a_string_is_right():
    """A string cannot run over a line end, so the error after a broken one is where it says."""
    text = 'func @f(%x: tensor<2xf32>) -> (tensor<2xf32>) {\n  %0 = neg %x : tensor<2xf32> loc("a\nb":1)\n  return %0\n}\n'
    e = _fails(text, ParseError)
    assert (e.line, e.col) == (2, 35)  # the opening quote of the broken string
    text2 = ('func @f(%x: tensor<2xf32>) -> (tensor<2xf32>) {\n  %0 = neg %x : tensor<2xf32> loc("a":1)\n'
             '  %1 = bogus %0 : tensor<2xf32>\n  return %1\n}\n')
    e = _fails(text2, ParseError, "unknown op")
    assert (e.line, e.col) == (3, 8)


def test_non_ascii_names_round_trip():
    def fünf(x):
        return x * 2.0

    g = av.trace(fünf, np.ones(3, np.float32))
    text = str(g)
    assert text.startswith('func @"fünf"(')
    assert parse(text).name == "fünf" and str(parse(text)) == text
    g.name = 'a "quoted" name\twith\\ odd chars'
    assert parse(str(g)).name == g.name and str(parse(str(g))) == str(g)


def test_verify_is_linear_in_uses():
    """Quadratic verification (a list scan per use) took 5.6 s for 16,000 uses of one value."""
    import sys
    sys.path.insert(0, "benchmarks")
    from fuzz_ir import many_uses

    def cost(n: int) -> float:
        g = parse(many_uses(n))
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            verify(g)
            best = min(best, time.perf_counter() - t0)
        return best

    small, big = cost(2000), cost(16000)
    assert big < 24 * small, (small, big)  # 8x the uses: linear is ~8x, quadratic ~64x
