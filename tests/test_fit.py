"""av.fit: loss goes down, one history entry per epoch, seeded shuffling repeats, compiled steps
(two cached signatures with a partial last batch), a quiet progress bar off a terminal."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F
from avalon.train import fit, make_train_step, predict


class Regressor:
    """A plain class (no base class): y = x @ w + b."""

    def __init__(self, n_in: int = 3):
        rng = np.random.default_rng(0)
        self.w = av.tensor(rng.standard_normal((n_in, 1)) * 0.1, dtype=av.float32)
        self.b = av.tensor(np.zeros(1), dtype=av.float32)

    def __call__(self, x):
        return x @ self.w + self.b


def mse(model, x, y):
    return F.mse_loss(model(x), y)


def _toy(n=50, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    Y = X @ np.array([[1.5], [-2.0], [0.5]]) + 0.3
    return X, Y


def test_loss_decreases_and_history_length():
    X, Y = _toy()
    model = Regressor()
    hist = fit(model, X, Y, mse, epochs=6, batch_size=16, optimizer=optim.SGD(model, lr=0.1), progress=False,
               seed=0)
    assert len(hist) == 6
    assert all(np.isfinite(hist))
    assert hist[-1] < 0.2 * hist[0]
    assert model.w.dtype == av.float32  # float64 data was converted to the model's dtype


def test_default_optimizer_is_adam_and_trains():
    X, Y = _toy()
    model = Regressor()
    hist = fit(model, X, Y, mse, epochs=3, batch_size=10, progress=False, seed=0)
    assert hist[-1] < hist[0]


def test_seeded_shuffle_is_deterministic():
    X, Y = _toy()
    runs = []
    for _ in range(2):
        model = Regressor()
        runs.append((fit(model, X, Y, mse, epochs=3, batch_size=7, progress=False, seed=42), model.w.numpy().copy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    other = Regressor()
    assert fit(other, X, Y, mse, epochs=3, batch_size=7, progress=False, seed=43) != runs[0][0]


def test_no_shuffle_matches_a_manual_loop():
    """Batches in order, last partial batch kept, mean loss weighted by batch size."""
    X, Y = _toy(n=23)
    a, b = Regressor(), Regressor()
    hist = fit(a, X, Y, mse, epochs=1, batch_size=10, optimizer=optim.SGD(a, lr=0.05), shuffle=False, progress=False)
    opt = optim.SGD(b, lr=0.05)
    total = 0.0
    for lo in range(0, 23, 10):
        x = av.tensor(X[lo:lo + 10], dtype=av.float32)
        y = av.tensor(Y[lo:lo + 10], dtype=av.float32)
        loss, g = av.value_and_grad(mse)(b, x, y)
        opt.step(g)
        total += float(loss) * len(x)
    assert hist[0] == pytest.approx(total / 23, rel=1e-5)
    np.testing.assert_allclose(a.w.numpy(), b.w.numpy(), rtol=1e-5)


def test_step_is_traced_once_per_signature():
    X, Y = _toy(n=23)
    model = Regressor()
    opt = optim.Adam(model, lr=0.01)
    step = av.compile(make_train_step(mse))
    for lo in range(0, 23, 10):
        step(model, opt, av.tensor(X[lo:lo + 10], dtype=av.float32), av.tensor(Y[lo:lo + 10], dtype=av.float32))
    step(model, opt, av.tensor(X[:10], dtype=av.float32), av.tensor(Y[:10], dtype=av.float32))
    assert len(step.cache) == 2  # full batches and the partial last one
    assert opt.steps == 4
    graph = next(iter(step.cache.values())).inspection.traced_graph
    assert any(v.name == "step_count" for v in graph.inputs)


def test_unsupervised_and_module_model():
    class AE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = nn.Linear(4, 2), nn.Linear(2, 4)

        def forward(self, x):
            return self.dec(F.relu(self.enc(x)))

    X = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    model = AE()
    model.eval()
    hist = fit(model, X, None, lambda m, x: F.mse_loss(m(x), x), epochs=4, batch_size=8,
               optimizer=optim.Adam(model, lr=0.02), progress=False, seed=0)
    assert model.training  # fit puts Modules into training mode
    assert hist[-1] < hist[0]
    out = predict(model, X, batch_size=16)
    assert out.shape == (40, 4)


def test_progress_bar_only_on_a_terminal(monkeypatch):
    X, Y = _toy(n=20)

    class Tty(io.StringIO):
        def isatty(self):
            return True

    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    fit(Regressor(), X, Y, mse, epochs=1, batch_size=10, seed=0)
    assert quiet.getvalue() == ""
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    fit(Regressor(), X, Y, mse, epochs=1, batch_size=10, progress=False, seed=0)
    assert tty.getvalue() == ""
    fit(Regressor(), X, Y, mse, epochs=2, batch_size=10, seed=0)
    text = tty.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text and "2/2" in text and "loss" in text


def test_bad_arguments():
    X, Y = _toy(n=10)
    with pytest.raises(ValueError, match="samples"):
        fit(Regressor(), X, Y[:5], mse, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fit(Regressor(), X, Y, mse, batch_size=0, progress=False)
