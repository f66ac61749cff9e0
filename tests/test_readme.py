"""The README's and docs/*.md's code runs as written, so the docs cannot drift from the code.

What runs:
- ```python blocks. The README's run in this process, the training block with the numpy backend and
  small data (the replacements below). Each docs/*.md file's run in order, in one namespace, in a
  fresh interpreter, so a doc that registers a pass or a fold cannot leak into other tests.
- ```bash / ```sh / ```shell / ```console blocks: every `avalon ...` command (a line, or a part of a
  line after `&&`) runs, in order, in one subprocess through the `avalon` entry point, in a scratch
  folder that links examples/, with `> FILE` honoured and comments dropped. Other commands (pip, pytest, python scripts) are not run here.
- `print(x)  # 73` in a python block is a claim about the output: it runs as an assert, so a number
  the docs state cannot drift from what the code prints.
- Blocks without a language are output listings and never run.
- `<!-- illustrative -->` on the line before a block exempts that block (an excerpt of a source file,
  a sketch with placeholders); `<!-- illustrative file -->` at the start of a line exempts all of the
  file's blocks. Use them only for code that cannot run as written.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^( *)```(\w*)[^\n]*\n(.*?)^\1```", re.S | re.M)
SHELL = {"bash", "sh", "shell", "console"}


def blocks(path: Path, langs: set[str]) -> list[tuple[int, str]]:
    """(line, code) of each fenced block in `langs` that is not marked illustrative."""
    text = path.read_text(encoding="utf-8")
    if re.search(r"^<!-- illustrative file -->", text, re.M):  # at a line's start: not a mention in prose
        return []
    out = []
    for m in FENCE.finditer(text):
        if m.group(2) not in langs:
            continue
        before = text[:m.start()].rstrip("\n ").rsplit("\n", 1)[-1].strip()
        if before == "<!-- illustrative -->":
            continue
        indent = len(m.group(1))
        code = "\n".join(_claim(line[indent:]) for line in m.group(3).splitlines())
        out.append((text[:m.start()].count("\n") + 2, code))
    return out


_CLAIM = re.compile(r"^(\s*)print\((.*)\)\s*#\s*(-?\d+(?:\.\d+)?)\s*$")


def _claim(line: str) -> str:
    """`print(len(g.ops))  # 73` -> print it and assert it prints 73."""
    m = _CLAIM.match(line)
    if not m:
        return line
    pad, expr, want = m.groups()
    return (f"{pad}_v = {expr}; print(_v); assert str(_v) == {want!r}, "
            f"f'the doc says {want}, the code prints {{_v}}: {expr}'")


def avalon_commands(path: Path) -> list[list[str]]:
    """Every `avalon ...` command of the file's shell blocks, as argv lists."""
    cmds = []
    for _, code in blocks(path, SHELL):
        for line in code.replace("\\\n", " ").splitlines():  # a trailing backslash continues the line
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0] == "avalon":
                    cmds.append(words)
    return cmds


_BATCH = """
import contextlib, io, json, sys
from avalon.cli import main
results = []
for words, out in json.loads(sys.argv[1]):
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        try:
            rc = main(words[1:])
        except SystemExit as e:  # usage errors
            rc = e.code
    if out is not None and rc == 0:
        with open(out, "w") as f:
            f.write(so.getvalue())
    results.append([rc, se.getvalue()])
print(json.dumps(results))
"""


def run_avalon(cmds: list[list[str]], cwd: Path) -> list[tuple[list[str], int, str]]:
    """Run the commands in order in one subprocess through `avalon`'s entry point (`avalon.cli.main`,
    what the installed `avalon` script calls): one interpreter start instead of one per command keeps
    this test fast. `> FILE` gets the command's stdout. Returns (command, exit status, stderr)."""
    jobs = []
    for words in cmds:
        if ">" in words:  # `avalon trace ... > lenet.avalon`
            k = words.index(">")
            jobs.append((words[:k], str(cwd / words[k + 1])))
        else:
            jobs.append((words, None))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", _BATCH, json.dumps(jobs)], capture_output=True, text=True, cwd=cwd,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return [(words, rc, err) for words, (rc, err) in zip(cmds, json.loads(r.stdout.splitlines()[-1]))]


def _scratch(tmp_path: Path) -> Path:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


def test_readme_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = "\n".join(code for _, code in blocks(README, {"python"}))
    assert code.count("\n") > 50
    code = code.replace("np.random.randn(8, 1, 28, 28)", "np.random.randn(2, 1, 28, 28)")
    code = code.replace('backend="triton"', 'backend="numpy"')
    prelude = ("import numpy as np\nlabels = np.array([3, 7])\n"
               "X = np.random.randn(4, 1, 28, 28).astype(np.float32)\nY = np.array([0, 1, 2, 3])\n")
    fit_call = "history = av.fit(net, X, Y, F.nll_loss, epochs=10, batch_size=100)"
    assert fit_call in code
    code = code.replace(fit_call, "history = av.fit(net, X, Y, F.nll_loss, epochs=1, batch_size=2, progress=False)")
    ns: dict = {}
    exec(compile(prelude + code, str(README), "exec"), ns)
    assert ns["history"] and ns["info"].graph is not None
    assert os.path.exists(tmp_path / "lenet.safetensors")


def test_readme_commands_run(tmp_path):
    """The README's `avalon` commands in order (the first, `avalon demo`, and the command-line block)."""
    cmds = avalon_commands(README)
    assert [c[1] for c in cmds] == ["demo", "trace", "opt", "opt", "opt", "kernels", "run", "ops", "export",
                                     "export", "import"], cmds
    cwd = _scratch(tmp_path)
    for words, rc, err in run_avalon(cmds, cwd):
        assert rc == 0, f"{shlex.join(words)}: {err}"
    assert (cwd / "lenet.avalon").read_text().startswith("func @forward(")
    assert list((cwd / "kernels").iterdir())


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_doc_snippets_run(doc, tmp_path):
    """Each doc's python blocks, in order, in a fresh interpreter; then its `avalon` commands."""
    cwd = _scratch(tmp_path)
    py = blocks(doc, {"python"})
    cmds = avalon_commands(doc)
    if not py and not cmds:
        pytest.skip(f"{doc.name} has no runnable block (all output listings or marked illustrative)")
    if py:
        script = "\n".join(f"# --- {doc.name}:{line}\n{code}" for line, code in py)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, env=env,
                           timeout=600)
        assert r.returncode == 0, f"{doc.name}: {r.stderr[-3000:]}"
    for words, rc, err in run_avalon(cmds, cwd) if cmds else []:
        assert rc == 0, f"{doc.name}: {shlex.join(words)}: {err}"


def test_illustrative_markers_are_honoured(tmp_path):
    """The markers exempt exactly what they say, so a marked block is the only kind that may not run."""
    doc = tmp_path / "d.md"
    doc.write_text("```python\nrun = 1\n```\n\n<!-- illustrative -->\n```python\nsketch(...)\n```\n"
                   "```\noutput listing\n```\n```bash\navalon ops add  # comment\npip install x && avalon demo\n```\n")
    assert [code for _, code in blocks(doc, {"python"})] == ["run = 1"]
    assert avalon_commands(doc) == [["avalon", "ops", "add"], ["avalon", "demo"]]
    doc.write_text("<!-- illustrative file -->\n```python\nrun = 1\n```\n")
    assert blocks(doc, {"python"}) == []
    doc.write_text("Mark a file with `<!-- illustrative file -->`.\n```python\nrun = 1\n```\n")
    assert len(blocks(doc, {"python"})) == 1  # a mention in prose is not the marker
