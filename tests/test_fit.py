"""av.fit: loss goes down, one history entry per epoch, seeded shuffling repeats, compiled steps
(two cached signatures with a partial last batch), torch-style losses `loss_fn(prediction, target)`
beside full objectives by keyword, clear errors for a loss of the wrong shape, and progress: a tqdm
bar per epoch on a terminal, one plain line per epoch when piped."""
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
    """A full objective, for `objective=`."""
    return F.mse_loss(model(x), y)


def _toy(n=50, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    Y = X @ np.array([[1.5], [-2.0], [0.5]]) + 0.3
    return X, Y


def test_loss_decreases_and_history_length():
    X, Y = _toy()
    model = Regressor()
    hist = fit(model, X, Y, F.mse_loss, epochs=6, batch_size=16, optimizer=optim.SGD(model, lr=0.1), progress=False,
               seed=0)
    assert len(hist) == 6
    assert all(np.isfinite(hist))
    assert hist[-1] < 0.2 * hist[0]
    assert model.w.dtype == av.float32  # float64 data was converted to the model's dtype


def test_default_optimizer_is_adam_and_trains():
    X, Y = _toy()
    model = Regressor()
    hist = fit(model, X, Y, nn.MSELoss(), epochs=3, batch_size=10, progress=False, seed=0)
    assert hist[-1] < hist[0]


def test_seeded_shuffle_is_deterministic():
    X, Y = _toy()
    runs = []
    for _ in range(2):
        model = Regressor()
        runs.append((fit(model, X, Y, F.mse_loss, epochs=3, batch_size=7, progress=False, seed=42), model.w.numpy().copy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    other = Regressor()
    assert fit(other, X, Y, F.mse_loss, epochs=3, batch_size=7, progress=False, seed=43) != runs[0][0]


def test_no_shuffle_matches_a_manual_loop():
    """Batches in order, last partial batch kept, mean loss weighted by batch size."""
    X, Y = _toy(n=23)
    a, b = Regressor(), Regressor()
    hist = fit(a, X, Y, objective=mse, epochs=1, batch_size=10, optimizer=optim.SGD(a, lr=0.05), shuffle=False, progress=False)
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
    step = av.compile(make_train_step(F.mse_loss))
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
    hist = fit(model, X, None, objective=lambda m, x: F.mse_loss(m(x), x), epochs=4, batch_size=8,
               optimizer=optim.Adam(model, lr=0.02), progress=False, seed=0)
    assert model.training  # fit puts Modules into training mode
    assert hist[-1] < hist[0]
    out = predict(model, X, batch_size=16)
    assert out.shape == (40, 4)


class Tty(io.StringIO):
    def isatty(self):
        return True


def _screen(text: str) -> list[str]:
    """What a terminal shows after `text`: each carriage return moves the cursor to the line's
    start and later characters overwrite earlier ones (so a redraw shorter than the last leaves its
    tail standing, the stale `7.1ss` of a hand-written bar)."""
    lines = []
    for raw in text.split("\n"):
        cells: list[str] = []
        for k, seg in enumerate(raw.split("\r")):
            seg = seg.replace("\x1b[A", "")  # tqdm's cursor-up after a close with leave=True
            cells[:len(seg)] = list(seg) if k else list(seg)
        lines.append("".join(cells).rstrip())
    return [ln for ln in lines if ln]


def test_progress_piped_is_one_line_per_epoch(monkeypatch):
    X, Y = _toy(n=20)
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    hist = fit(Regressor(), X, Y, F.mse_loss, epochs=3, batch_size=10, seed=0)
    lines = piped.getvalue().splitlines()
    assert "\r" not in piped.getvalue()
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all(f"loss {h:.4g}" in ln for h, ln in zip(hist, lines))
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    fit(Regressor(), X, Y, F.mse_loss, epochs=1, batch_size=10, progress=False, seed=0)
    assert quiet.getvalue() == ""


def test_progress_bar_on_a_terminal(monkeypatch):
    X, Y = _toy(n=20)
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    fit(Regressor(), X, Y, F.mse_loss, epochs=1, batch_size=10, progress=False, seed=0)
    assert tty.getvalue() == ""
    hist = fit(Regressor(), X, Y, F.mse_loss, epochs=2, batch_size=10, seed=0)
    text = tty.getvalue()
    assert "\r" in text  # redrawn in place
    screen = _screen(text)
    assert len(screen) == 2, screen  # one line per epoch stays, nothing else
    for epoch, (line, h) in enumerate(zip(screen, hist), 1):
        assert line.startswith(f"epoch {epoch}/2") and "2/2" in line and line.count("loss") == 1
        assert f"loss {h:.4g}" in line
        last_draw = text.split("\n")[epoch - 1].split("\r")[-1].rstrip()
        assert line == last_draw  # nothing stale from an earlier, longer redraw


def test_screen_shows_stale_characters():
    """The terminal model above is not vacuous: a shorter redraw leaves the old tail."""
    assert _screen("epoch 1 7.12s\repoch 1 7.1s") == ["epoch 1 7.1ss"]


def test_torch_style_losses():
    """Criterion objects and functional losses take (prediction, target), as in torch."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 4)).astype(np.float32)
    Y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    for loss in (nn.CrossEntropyLoss(), F.cross_entropy):
        av.manual_seed(0)
        model = nn.Linear(4, 3)
        hist = fit(model, X, Y, loss, epochs=5, batch_size=20, optimizer=optim.Adam(model, lr=0.05),
                   progress=False, seed=0)
        assert hist[-1] < 0.8 * hist[0]
    av.manual_seed(0)
    model = nn.Linear(4, 3)
    same = fit(model, X, Y, objective=lambda m, x, y: F.cross_entropy(m(x), y), epochs=5, batch_size=20,
               optimizer=optim.Adam(model, lr=0.05), progress=False, seed=0)
    assert same == pytest.approx(hist, rel=1e-6)


def test_unsupervised_loss_takes_the_prediction():
    X = np.random.default_rng(0).standard_normal((30, 3)).astype(np.float32)
    model = Regressor()
    hist = fit(model, X, None, lambda pred: (pred * pred).mean(), epochs=4, batch_size=10,
               optimizer=optim.SGD(model, lr=0.1), progress=False, seed=0)
    assert hist[-1] < 0.5 * hist[0]


def test_a_loss_of_the_wrong_shape_names_the_expected_one():
    X, Y = _toy(n=10)
    with pytest.raises(TypeError, match=r"loss_fn\(prediction, target\).*mse\(model, x, y\).*objective="):
        fit(Regressor(), X, Y, mse, progress=False)
    with pytest.raises(TypeError, match=r"loss_fn\(prediction\)"):
        fit(Regressor(), X, None, F.mse_loss, progress=False)
    with pytest.raises(TypeError, match=r"objective\(model, x, y\).*does not take 3"):
        fit(Regressor(), X, Y, objective=lambda pred, y: F.mse_loss(pred, y), progress=False)
    with pytest.raises(TypeError, match=r"called as objective\(model, x, y\); mse_loss\(.*raised TypeError"):
        fit(Regressor(), X, Y, objective=F.mse_loss, progress=False)  # three arguments, the wrong three
    with pytest.raises(TypeError, match=r"pass an instance, CrossEntropyLoss\(\)"):
        fit(Regressor(), X, Y, nn.CrossEntropyLoss, progress=False)
    with pytest.raises(TypeError, match="got neither"):
        fit(Regressor(), X, Y, progress=False)
    with pytest.raises(TypeError, match="got both"):
        fit(Regressor(), X, Y, F.mse_loss, objective=mse, progress=False)


def test_a_loss_whose_signature_cannot_tell_fails_at_the_first_trace():
    """`*args` hides the arity, so the TypeError of the call is caught and re-raised with the form."""
    X, Y = _toy(n=10)

    def forwards(*args):
        return mse(*args)

    with pytest.raises(TypeError, match=r"called as loss_fn\(prediction, target\).*forwards\(\*args\) raised"):
        fit(Regressor(), X, Y, forwards, progress=False)


def test_bad_arguments():
    X, Y = _toy(n=10)
    with pytest.raises(ValueError, match="samples"):
        fit(Regressor(), X, Y[:5], F.mse_loss, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fit(Regressor(), X, Y, F.mse_loss, batch_size=0, progress=False)


def test_an_optimizer_that_cannot_train_the_model_is_refused_before_the_first_step():
    """It trained nothing (the loss stayed flat) when built on another model; the class itself
    gave a confusing error from inside the step."""
    from avalon import optim
    from avalon.nn import functional as F
    x, y = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32), np.arange(8) % 2
    model, other = av.nn.Linear(3, 2), av.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="holds none of this model's parameters"):
        av.fit(model, x, y, F.cross_entropy, optimizer=optim.SGD(other, lr=0.1), progress=False)
    with pytest.raises(TypeError, match="the class Adam; pass an instance"):
        av.fit(model, x, y, F.cross_entropy, optimizer=optim.Adam, progress=False)
