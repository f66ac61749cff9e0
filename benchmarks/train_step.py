"""Training-step time of LeNet and the MLP VAE (`avalon.zoo`), Avalon against PyTorch eager in one process.

    python benchmarks/train_step.py [--device cpu|cuda] [--reps 30] [--out results.json]
                                    [--cuda-graphs 0|1|both]

LeNet (batch 64, NLL) and the MLP VAE (batch 128, BCE + KL), one step = forward + backward + SGD
update. Avalon compiles the whole step once (`av.compile`, backend numpy on the CPU, triton on a
GPU); PyTorch runs eagerly with the same weights, data and optimizer. Each cell is the median of
`--reps` timed steps after warm-up; the ratio is torch / avalon (above 1 means Avalon is faster).

On CUDA, `--cuda-graphs both` (the default) times Avalon twice in the same process, with kernels
launched one by one (`AVALON_CUDA_GRAPHS=0`) and replayed from a CUDA graph, each from the same
initial weights. The `graphs` column says whether the capture held ("captured"; anything else
means the graphs column timed plain launches), and `max |d|` is the largest difference between
the two runs' losses and parameters after their first four steps (0 when replay is exact).
"""
from __future__ import annotations

import argparse
import contextlib
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


def bench(name, make_model, loss_fn, tmodel, tloss, batch, dev, reps, backend, graphs, lr=0.01):
    """Avalon per CUDA-graph mode in `graphs` (None: not applicable), then torch, on one workload."""

    def step(model, opt, *xs):
        loss, grads = av.value_and_grad(loss_fn)(model, *xs)
        opt.step(grads)
        return loss

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    abatch = [av.tensor(b, device=dev) for b in batch]
    row = {"model": name, "device": dev, "backend": backend}
    checks = {}
    for mode in graphs:
        av.manual_seed(0)  # the same random numbers (the VAE's noise) in each mode
        model = make_model()
        opt = optim.SGD(model, lr=lr)
        compiled = av.compile(step, backend=backend)
        with cuda_graphs(mode):  # read when the compiled graph first runs on the device
            t0 = time.perf_counter()
            compiled(model, opt, *batch)
            sync()
            first = time.perf_counter() - t0
            losses = [float(compiled(model, opt, *abatch)) for _ in range(3)]  # warm-up and capture
        checks[mode] = np.array(losses + [v for _, p in nn.named_parameters(model) for v in p.numpy().ravel()])
        t_av = timed(lambda: compiled(model, opt, *abatch), reps, sync)  # noqa: B023 - timed at once
        state = graph_state(compiled)
        key = "avalon_graphs_ms" if mode else "avalon_ms"
        row.update({key: t_av, "graphs": state} if mode else {key: t_av})
        row.setdefault("first_call_s", first)
        info = compiled.inspect(model, opt, *abatch)
        row.update({"kernels": len(info.kernels), "ops_after_passes": len(info.graph.ops)})
    if len(checks) == 2:
        row["graphs_max_abs_diff"] = float(np.max(np.abs(checks[True] - checks[False])))

    topt = torch.optim.SGD(tmodel.parameters(), lr=lr)
    tbatch = [torch.from_numpy(b).to(dev) for b in batch]

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss = tloss(tmodel, *tbatch)
        loss.backward()
        topt.step()

    row["torch_ms"] = t_torch = timed(torch_step, reps, sync)
    for key in ("avalon_ms", "avalon_graphs_ms"):
        if key in row:
            row["torch/" + key[:-3]] = t_torch / row[key]
    return row


@contextlib.contextmanager
def cuda_graphs(mode):
    """`AVALON_CUDA_GRAPHS` set for `mode` (True/False; None leaves it as it is)."""
    old = os.environ.get("AVALON_CUDA_GRAPHS")
    if mode is not None:
        os.environ["AVALON_CUDA_GRAPHS"] = "1" if mode else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("AVALON_CUDA_GRAPHS", None)
        else:
            os.environ["AVALON_CUDA_GRAPHS"] = old


def graph_state(compiled) -> str:
    """What the Triton runtime did with CUDA graphs for the compiled step ("captured", "off: why", ...)."""
    states = set()
    for entry in compiled._cache.values():
        runtime = getattr(entry.executable, "compiled", None)
        states.update(getattr(runtime, "cuda_graphs", {}).values())
    return ", ".join(sorted(states)) or "-"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="lenet or vae")
    ap.add_argument("--cuda-graphs", choices=["0", "1", "both"], default="both",
                    help="time Avalon with kernels launched one by one (0), replayed from CUDA graphs (1), or both")
    args = ap.parse_args()
    dev = args.device
    backend = "triton" if dev == "cuda" else "numpy"
    graphs = [None] if dev != "cuda" else {"0": [False], "1": [True], "both": [False, True]}[args.cuda_graphs]
    rng = np.random.default_rng(0)
    av.manual_seed(0)
    torch.manual_seed(0)
    rows = []
    if args.only in (None, "lenet"):
        tm = torch_lenet().to(dev)
        names = [n for n, _ in nn.named_parameters(zoo.LeNet())]
        weights = dict(zip(names, [v.detach().cpu() for v in tm.state_dict().values()]))
        x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, 64).astype(np.int64)
        rows.append(bench("LeNet bs64", loaded(zoo.LeNet, weights, dev),
                          lambda mdl, a, b: zoo.nll(mdl(a), b), tm,
                          lambda mdl, a, b: torch.nn.functional.nll_loss(mdl(a), b), [x, y], dev, args.reps,
                          backend, graphs))
    if args.only in (None, "vae"):
        tm = TorchVAE().to(dev)
        weights = {k: v.detach().cpu() for k, v in tm.state_dict().items()}
        x = rng.random((128, 784)).astype(np.float32)

        def vae_loss(mdl, a):
            recon, mu, logvar = mdl(a)
            return zoo.vae_loss(recon, a, mu, logvar)

        rows.append(bench("VAE bs128", loaded(zoo.VAE, weights, dev), vae_loss, tm, torch_vae_loss, [x], dev,
                          args.reps, backend, graphs, lr=1e-5))  # the summed loss is large: a small step stays finite
    hdr = (f"{'workload':<12} {'device':<6} {'avalon ms':>10} {'+graphs ms':>10} {'torch ms':>9} "
           f"{'torch/avalon':>13} {'1st call s':>10} {'kernels':>8}  graphs (max |d|)")
    print(hdr)
    for r in rows:
        best = max(r.get("torch/avalon", 0), r.get("torch/avalon_graphs", 0))
        plain = f"{r['avalon_ms']:>10.2f}" if "avalon_ms" in r else f"{'-':>10}"
        graphed = f"{r['avalon_graphs_ms']:>10.2f}" if "avalon_graphs_ms" in r else f"{'-':>10}"
        diff = f" ({r['graphs_max_abs_diff']:.2g})" if "graphs_max_abs_diff" in r else ""
        print(f"{r['model']:<12} {r['device']:<6} {plain} {graphed} {r['torch_ms']:>9.2f} {best:>13.2f} "
              f"{r['first_call_s']:>10.2f} {r['kernels']:>8}  {r.get('graphs', '-')}{diff}")
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'}; "
          "torch/avalon uses the faster Avalon column")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


def loaded(make, weights, dev):
    """A factory of fresh models holding `weights` on `dev` (each timed run starts from the same state)."""
    def build():
        m = make()
        nn.load_state_dict(m, weights)
        av.to_device(m, dev)
        return m
    return build


if __name__ == "__main__":
    main()
