"""Zoo models: each traces, matches the same network in torch, and a few compiled training steps
lower its loss. Small batches and few steps keep the file fast."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import avalon as av
from avalon import optim, zoo
from avalon.train import make_train_step

rng = np.random.default_rng(0)


def _load_into_torch(model, tmodel):
    tmodel.load_state_dict({k: torch.tensor(v.numpy()) for k, v in av.nn.state_dict(model).items()})
    return tmodel.double() if next(tmodel.parameters()).dtype == torch.float64 else tmodel


def _steps(model, loss_fn, args, n=4, lr=1e-3, supervised=True, objective=None):
    opt = optim.Adam(model, lr=lr)
    step = av.compile(make_train_step(loss_fn, supervised, objective=objective), backend="numpy")
    return [float(step(model, opt, *args)) for _ in range(n)]


def test_lenet_matches_torch_and_trains():
    av.manual_seed(0)
    model = zoo.LeNet()
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    graph = av.trace(model, av.tensor(x))
    assert graph.inputs[0].name == "conv1.weight" and any(op.name == "conv2d" for op in graph.ops)

    class TorchLeNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = torch.nn.Conv2d(1, 20, 5), torch.nn.Conv2d(20, 50, 5)
            self.fc1, self.fc2 = torch.nn.Linear(800, 500), torch.nn.Linear(500, 10)

        def forward(self, x):
            x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
            return torch.log_softmax(self.fc2(torch.relu(self.fc1(x.reshape(-1, 800)))), 1)

    ref = _load_into_torch(model, TorchLeNet())(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(model(av.tensor(x)).numpy(), ref, rtol=1e-4, atol=1e-5)
    losses = _steps(model, zoo.nll, (av.tensor(x), av.tensor(y)))
    assert losses[-1] < losses[0]


def test_vae_loss_matches_torch_and_trains():
    av.manual_seed(1)
    model = zoo.VAE(features=64, hidden=32, latent=4)
    x = rng.random((6, 64)).astype(np.float32)
    graph = av.trace(model, av.tensor(x))
    assert any(op.name == "random" for op in graph.ops)  # the reparameterization noise is in the graph
    assert any(v.name == "rng_seed" for v in graph.inputs)

    model.eval()  # z = mu: deterministic, comparable with torch
    recon, mu, logvar = model(av.tensor(x))
    np.testing.assert_array_equal(recon.numpy(), model(av.tensor(x))[0].numpy())
    r, m, lv = (torch.tensor(t.numpy()) for t in (recon, mu, logvar))
    want = (torch.nn.functional.binary_cross_entropy(r, torch.tensor(x), reduction="sum")
            - 0.5 * torch.sum(1 + lv - m.pow(2) - lv.exp()))
    got = zoo.vae_loss(recon, av.tensor(x), mu, logvar)
    assert float(got) == pytest.approx(float(want), rel=1e-5)

    model.train()
    a, b = model(av.tensor(x))[0].numpy(), model(av.tensor(x))[0].numpy()
    assert not np.array_equal(a, b)  # training mode samples z afresh
    losses = _steps(model, None, (av.tensor(x),), n=5, lr=1e-2, supervised=False, objective=zoo.elbo)
    assert losses[-1] < losses[0]


def test_mlp_trains_with_dropout():
    av.manual_seed(2)
    model = zoo.MLP(in_features=64, hidden=(32,), dropout=0.1)
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    av.trace(model, av.tensor(x))
    losses = _steps(model, zoo.cross_entropy, (av.tensor(x), av.tensor(y)), n=6, lr=1e-2)
    assert losses[-1] < losses[0]


def test_lstm_classifier_matches_torch_and_trains():
    av.manual_seed(3)
    model = zoo.LSTMClassifier(input_size=8, hidden_size=16)
    x = rng.standard_normal((5, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 5)
    av.trace(model, av.tensor(x))

    class TorchLSTMClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = torch.nn.LSTM(8, 16, batch_first=True), torch.nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.lstm(x)[1][0][-1])

    ref = _load_into_torch(model, TorchLSTMClassifier())(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(model(av.tensor(x)).numpy(), ref, rtol=1e-4, atol=1e-5)
    losses = _steps(model, zoo.cross_entropy, (av.tensor(x), av.tensor(y)), n=4, lr=1e-2)
    assert losses[-1] < losses[0]


def test_digits_data():
    X, y, Xt, yt = zoo.datasets.digits(28, normalize="unit")
    assert X.shape[1:] == (1, 28, 28) and X.dtype == np.float32 and 0 <= X.min() and X.max() <= 1
    assert len(X) + len(Xt) == 1797 and set(np.unique(y)) == set(range(10))
    S, sy, _, _ = zoo.datasets.digit_sequences()
    assert S.shape[1:] == (8, 8)
    im = rng.random((2, 8, 8))
    ref = torch.nn.functional.interpolate(torch.tensor(im)[None], size=(28, 28), mode="bilinear",
                                          align_corners=False)[0].numpy()
    np.testing.assert_allclose(zoo.datasets.resize_bilinear(im, 28), ref, atol=1e-12)


def test_mlp_example_runs(capsys):
    """The examples are scripts; the cheapest one runs here end to end (the others share its shape)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).parent.parent / "examples" / "train_mlp.py"
    spec = importlib.util.spec_from_file_location("train_mlp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    accuracy = module.main(["--epochs", "2", "--batch-size", "128"])
    assert accuracy > 0.5
    assert "test accuracy" in capsys.readouterr().out
