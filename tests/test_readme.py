"""The README's Python examples run as written (the training block with the numpy backend and small data)."""
import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _blocks():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_readme_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks()
    assert len(blocks) >= 5
    code = "\n".join(blocks)
    code = code.replace("np.random.randn(8, 1, 28, 28)", "np.random.randn(2, 1, 28, 28)")
    code = code.replace('backend="triton"', 'backend="numpy"')
    prelude = ("import numpy as np\nlabels = np.array([3, 7])\n"
               "X = np.random.randn(4, 1, 28, 28).astype(np.float32)\nY = np.array([0, 1, 2, 3])\n")
    code = code.replace("history = av.fit(net, X, Y, loss_fn, epochs=10, batch_size=100)",
                        "history = av.fit(net, X, Y, loss_fn, epochs=1, batch_size=2, progress=False)")
    ns: dict = {}
    exec(compile(prelude + code, README, "exec"), ns)
    assert ns["history"] and ns["info"].graph is not None
    assert os.path.exists(tmp_path / "lenet.safetensors")
