"""Mutation fuzzing of the text IR: parse + verify must give a Graph or a located Avalon error.

    python benchmarks/fuzz_ir.py [--inputs 100000] [--seed 0] [--slow 2.0] [--show 5]

Seeds are the printed IR of the zoo models (forward graphs, and value-and-grad graphs after the
default pipeline, so fusion regions appear); each input is one seed with 1-3 mutations: token
deletions, duplications and swaps, numbers swapped for edge values (0, -1, 2^63, 5,000 digits,
1.5), hostile snippets spliced in (deep `[[[...]]]` and region nesting, ragged `dense`, bad `loc`
and string escapes, `layout = 5`, non-ASCII names, strings across a newline) and attribute edits.
Each outcome is one of: `ok` (parsed and verified, and print -> parse -> print is the identity),
`clean` (ParseError or VerifyError), `crash` (any other exception), `silent` (parsed and verified
but the round trip changed the text: a silent wrong result) and, orthogonally, `slow` (over
`--slow` seconds of this process's CPU time: other processes on a loaded machine do not count, a
quadratic parser does). The report gives the counts and the first few crashing, silent or slow inputs.
`tests/test_ir_fuzz.py` runs a few thousand inputs of this in CI.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

import avalon as av  # noqa: E402
from avalon.ir import ParseError, VerifyError, parse, verify  # noqa: E402

_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"|%[\w.$-]+|@[\w.$-]+|\^\w+|->|-?\d+\.?\d*(?:[eE][-+]?\d+)?|\w+|\S')

EDGE_NUMBERS = ["0", "-1", "1", "-7", "1.5", "9223372036854775808", "-9223372036854775809",
                "18446744073709551617", "9" * 40, "7" * 5000, "1e999", "-inf", "nan", "2147483648", "1e-320"]

SNIPPETS = [
    "[" * 1200 + "1" + "]" * 1200, "[" * 70 + "]" * 70, "dense<[[1],[2,3]]>", "dense<[\"a\"]>", "dense<[]>",
    "dense<[[1,2],[3,4]]>", 'loc("a.py":1.5)', 'loc("a\\q.py":3)', 'loc("a.py":99999999999999999999999)',
    '"\\ud800"', '"a\nb"', '"\\u12"', "tensor<2x3xf32, layout = 5>", "tensor<2x3xf32, layout = [1]>",
    "tensor<2x-3xf32>", "tensor<99999999999999999999xf32>", "tensor<f32>", "tensor<0xf32>",
    "{stride = [0, 0]}", "{kernel = [2]}", "{shape = [3, -1]}", "{axes = [0]}", "{axis = 0}", "{axis = 5}",
    "{perm = [0, 0]}", "{num_classes = 0}", "{groups = 0}", "{dtype = [f32]}", "{value = [[1],[2,3]]}",
    "{value = \"x\"}", "{padding = [-1, 0]}", "{dilation = [0, 1]}", "{start = [5], limit = [1]}",
    "@\"f\u00fcnf\"", "@f\u00fcnf", "%f\u00fcnf", "\u00e9", "\x00", "\t", "//c\n", "{", "}", "(", ")", "<", ">",
    "fusion @g(%x) : tensor<f32> {\n^bb0(%a: tensor<f32>):\n yield %a\n}", "yield", "return", "func",
]


def seeds() -> list[str]:
    """Printed IR of the zoo models: forward graphs and optimized value-and-grad graphs."""
    from avalon import zoo
    av.manual_seed(0)
    rng = np.random.default_rng(0)
    out = []
    lenet = zoo.LeNet()
    x = av.tensor(rng.standard_normal((2, 1, 28, 28)).astype(np.float32))
    y = av.tensor(rng.integers(0, 10, 2))
    mlp = zoo.MLP(in_features=16, hidden=(8,), dropout=0.1)
    xm = av.tensor(rng.standard_normal((3, 16)).astype(np.float32))
    ym = av.tensor(rng.integers(0, 10, 3))
    vae = zoo.VAE(features=16, hidden=8, latent=2)
    xv = av.tensor(rng.random((3, 16)).astype(np.float32))
    lstm = zoo.LSTMClassifier(input_size=4, hidden_size=4)
    xs = av.tensor(rng.standard_normal((2, 3, 4)).astype(np.float32))
    for model, args in ((lenet, (x,)), (mlp, (xm,)), (vae, (xv,)), (lstm, (xs,))):
        out.append(str(av.trace(model, *args)))
    def supervised(criterion):  # nll and cross_entropy are criteria: loss(prediction, target)
        return lambda m, x, y: criterion(m(x), y)

    for model, objective, args in ((lenet, supervised(zoo.nll), (x, y)), (mlp, supervised(zoo.cross_entropy), (xm, ym)),
                                   (vae, zoo.elbo, (xv,))):
        out.append(str(av.compile(av.value_and_grad(objective), backend="numpy").inspect(model, *args).graph))
    return out


def mutate(text: str, r: random.Random) -> str:
    toks = _TOKENS.findall(text)
    seps = re.split(r'"(?:[^"\\\n]|\\.)*"|%[\w.$-]+|@[\w.$-]+|\^\w+|->|-?\d+\.?\d*(?:[eE][-+]?\d+)?|\w+|\S', text)
    for _ in range(r.randint(1, 3)):
        if not toks:
            break
        i = r.randrange(len(toks))
        kind = r.random()
        if kind < 0.15:
            toks[i] = ""
        elif kind < 0.25:
            toks[i] = toks[i] + " " + toks[i]
        elif kind < 0.35:
            j = r.randrange(len(toks))
            toks[i], toks[j] = toks[j], toks[i]
        elif kind < 0.55:
            nums = [k for k, t in enumerate(toks) if t[:1].isdigit() or t[:1] == "-"]
            if nums:
                toks[r.choice(nums)] = r.choice(EDGE_NUMBERS)
        elif kind < 0.8:
            toks[i] = toks[i] + " " + r.choice(SNIPPETS)
        elif kind < 0.9:
            ids = [k for k, t in enumerate(toks) if t[:1].isalpha()]
            others = sorted(set(t for t in toks if t[:1].isalpha()))
            if ids and others:
                toks[r.choice(ids)] = r.choice(others)
        else:
            toks[i] = toks[i][: r.randrange(len(toks[i]) + 1)] + chr(r.randrange(32, 0x250))
    out = [seps[0]]
    for t, s in zip(toks, seps[1:]):
        out += [t, s]
    return "".join(out)


def nested_regions(depth: int) -> str:
    """A function whose body nests `depth` fusion regions (deeper than any real graph)."""
    head = "func @f(%x: tensor<f32>) -> (tensor<f32>) {\n"
    body = "".join(f"%r{i} = fusion @g{i}(%{'x' if i == 0 else 'a'}) : tensor<f32> {{\n"
                   f"^bb0(%a: tensor<f32>):\n" for i in range(depth))
    tail = "".join("yield %a\n}\n" for _ in range(depth))
    return head + body + tail + "return %r0\n}\n"


def many_uses(n: int) -> str:
    """One value used `n` times (verify must stay linear)."""
    lines = "".join(f"  %{i + 1} = add %x, %x : tensor<2xf32>\n" for i in range(n))
    return f"func @f(%x: tensor<2xf32>) -> (tensor<2xf32>) {{\n{lines}  return %{n}\n}}\n"


def check(text: str) -> str:
    """'ok', 'clean', 'silent' (round trip changed the text) or 'crash: <exception>'."""
    try:
        g = verify(parse(text))
    except (ParseError, VerifyError) as e:
        return "clean" if _located(e) else f"crash: unlocated {type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - what the fuzzer is looking for
        return f"crash: {type(e).__name__}: {str(e)[:200]}"
    try:
        once = str(g)
        again = str(verify(parse(once)))
    except Exception as e:  # noqa: BLE001
        return f"crash: printed text does not read back: {type(e).__name__}: {str(e)[:200]}"
    return "ok" if again == once else "silent"


def _located(e: Exception) -> bool:
    if isinstance(e, ParseError):
        return e.line >= 1 and e.col >= 1
    return isinstance(e, VerifyError)


def inputs(n: int, seed: int, texts: list[str], uses: int = 16000) -> Iterator[str]:
    r = random.Random(seed)
    yield nested_regions(600)
    yield nested_regions(40)
    yield many_uses(uses)
    for _ in range(n - 3):
        yield mutate(r.choice(texts), r)


def run(n: int, seed: int = 0, slow: float = 2.0, texts: list[str] | None = None, uses: int = 16000) -> dict:
    """Fuzz `n` inputs; returns counts and examples of what went wrong. `uses`: how many uses of
    one value the big input has (16,000 took 5.6 s to verify when verification was quadratic)."""
    texts = texts or seeds()
    counts: Counter = Counter()
    bad: list[tuple[str, str]] = []
    slow_inputs: list[tuple[float, str]] = []
    for text in inputs(n, seed, texts, uses):
        t0 = time.process_time()
        out = check(text)
        dt = time.process_time() - t0
        kind = out.split(":", 1)[0]
        counts[kind] += 1
        if kind in ("crash", "silent"):
            bad.append((out, text))
        if dt > slow:
            slow_inputs.append((dt, text))
    return {"tried": n, "ok": counts["ok"], "clean": counts["clean"], "crash": counts["crash"],
            "silent": counts["silent"], "slow": len(slow_inputs), "bad": bad, "slow_inputs": slow_inputs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slow", type=float, default=2.0)
    ap.add_argument("--show", type=int, default=5)
    a = ap.parse_args()
    t0 = time.perf_counter()
    res = run(a.inputs, a.seed, a.slow)
    print(f"inputs tried {res['tried']}, parsed+verified+round-tripped {res['ok']}, clean errors {res['clean']}, "
          f"crashes {res['crash']}, silent wrong results {res['silent']}, slow (> {a.slow}s) {res['slow']} "
          f"in {time.perf_counter() - t0:.1f}s")
    for out, text in res["bad"][: a.show]:
        print(f"--- {out}\n{text[:600]}")
    for dt, text in res["slow_inputs"][: a.show]:
        print(f"--- slow {dt:.2f}s\n{text[:300]}")
    sys.exit(1 if res["crash"] or res["silent"] else 0)


if __name__ == "__main__":
    main()
