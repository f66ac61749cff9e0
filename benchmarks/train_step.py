"""Training-step time of the seed's benchmarks, Avalon against PyTorch eager in the same process.

    python benchmarks/train_step.py [--device cpu|cuda] [--reps 30] [--out results.json]

LeNet (batch 64, NLL) and the MLP VAE (batch 128, BCE + KL), one step = forward + backward + SGD
update. Avalon compiles the whole step once (`av.compile`, backend numpy on the CPU, triton on a
GPU); PyTorch runs eagerly with the same weights, data and optimizer. Each cell is the median of
`--reps` timed steps after warm-up; the ratio is torch / avalon (above 1 means Avalon is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import avalon as av  # noqa: E402
from avalon import nn, optim, zoo  # noqa: E402


def torch_lenet():
    T = torch.nn
    return T.Sequential(T.Conv2d(1, 20, 5), T.ReLU(), T.MaxPool2d(2), T.Conv2d(20, 50, 5), T.ReLU(), T.MaxPool2d(2),
                        T.Flatten(), T.Linear(800, 500), T.ReLU(), T.Linear(500, 10), T.LogSoftmax(-1))


class TorchVAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        L = torch.nn.Linear
        self.fc1, self.fc21, self.fc22 = L(784, 400), L(400, 20), L(400, 20)
        self.fc3, self.fc4 = L(20, 400), L(400, 784)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(torch.relu(self.fc3(z)))), mu, logvar


def torch_vae_loss(model, x):
    recon, mu, logvar = model(x)
    bce = torch.nn.functional.binary_cross_entropy(recon, x, reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu * mu - logvar.exp())


def timed(fn, reps: int, sync) -> float:
    for _ in range(5):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def bench(name, model, loss_fn, tmodel, tloss, batch, dev, reps, backend, lr=0.01):
    opt = optim.SGD(model, lr=lr)
    topt = torch.optim.SGD(tmodel.parameters(), lr=lr)

    def step(model, opt, *xs):
        loss, grads = av.value_and_grad(loss_fn)(model, *xs)
        opt.step(grads)
        return loss

    compiled = av.compile(step, backend=backend)
    t0 = time.perf_counter()
    compiled(model, opt, *batch)
    first = time.perf_counter() - t0
    tbatch = [torch.from_numpy(b).to(dev) for b in batch]

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss = tloss(tmodel, *tbatch)
        loss.backward()
        topt.step()

    abatch = [av.tensor(b, device=dev) for b in batch]
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    t_av = timed(lambda: compiled(model, opt, *abatch), reps, sync)
    t_torch = timed(torch_step, reps, sync)
    info = compiled.inspect(model, opt, *abatch)
    return {"model": name, "device": dev, "backend": backend, "avalon_ms": t_av, "torch_ms": t_torch,
            "torch/avalon": t_torch / t_av, "first_call_s": first, "kernels": len(info.kernels),
            "ops_after_passes": len(info.graph.ops)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="lenet or vae")
    args = ap.parse_args()
    dev = args.device
    backend = "triton" if dev == "cuda" else "numpy"
    rng = np.random.default_rng(0)
    av.manual_seed(0)
    torch.manual_seed(0)
    rows = []
    if args.only in (None, "lenet"):
        tm = torch_lenet().to(dev)
        m = zoo.LeNet()
        sd = tm.state_dict()
        names = [n for n, _ in nn.named_parameters(m)]
        nn.load_state_dict(m, dict(zip(names, [v.detach().cpu() for v in sd.values()])))
        av.to_device(m, dev)
        x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, 64).astype(np.int64)
        rows.append(bench("LeNet bs64", m, zoo.nll, tm, lambda mdl, a, b: torch.nn.functional.nll_loss(mdl(a), b),
                          [x, y], dev, args.reps, backend))
    if args.only in (None, "vae"):
        tm = TorchVAE().to(dev)
        m = zoo.VAE()
        nn.load_state_dict(m, {k: v.detach().cpu() for k, v in tm.state_dict().items()})
        av.to_device(m, dev)
        x = rng.random((128, 784)).astype(np.float32)
        def vae_loss(mdl, a):
            recon, mu, logvar = mdl(a)
            return zoo.vae_loss(recon, a, mu, logvar)

        rows.append(bench("VAE bs128", m, vae_loss, tm, torch_vae_loss, [x], dev,
                          args.reps, backend, lr=1e-5))  # the summed loss is large: a small step stays finite
    hdr = (f"{'workload':<12} {'device':<6} {'avalon ms':>10} {'torch ms':>9} {'torch/avalon':>13} "
           f"{'1st call s':>10} {'kernels':>8}")
    print(hdr)
    for r in rows:
        print(f"{r['model']:<12} {r['device']:<6} {r['avalon_ms']:>10.2f} {r['torch_ms']:>9.2f} "
              f"{r['torch/avalon']:>13.2f} {r['first_call_s']:>10.2f} {r['kernels']:>8}")
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
