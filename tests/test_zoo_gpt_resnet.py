"""The zoo's GPT and ResNet against torch models written here with the same parameter names: one
compiled training step (loss, every gradient, the parameters and batch-norm statistics after the
optimizer's update), and the examples that train them, run for a few steps."""
import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as TF
from helpers import T, rel

import avalon as av
from avalon import optim, zoo

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


# -- torch equivalents ------------------------------------------------------------------------------

class TorchAttention(tnn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.c_attn, self.c_proj, self.heads = tnn.Linear(d, 3 * d), tnn.Linear(d, d), heads

    def forward(self, x):
        B, L, C = x.shape
        q, k, v = (t.view(B, L, self.heads, C // self.heads).transpose(1, 2) for t in self.c_attn(x).split(C, 2))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.heads)
        att = att.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        return self.c_proj((att @ v).transpose(1, 2).reshape(B, L, C))


class TorchBlock(tnn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = tnn.LayerNorm(d), TorchAttention(d, heads), tnn.LayerNorm(d)
        self.mlp = tnn.ModuleDict(dict(c_fc=tnn.Linear(d, 4 * d), c_proj=tnn.Linear(4 * d, d)))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(TF.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT(tnn.Module):
    def __init__(self, vocab, block, layers, heads, d):
        super().__init__()
        self.transformer = tnn.ModuleDict(dict(wte=tnn.Embedding(vocab, d), wpe=tnn.Embedding(block, d),
                                               h=tnn.ModuleList([TorchBlock(d, heads) for _ in range(layers)]),
                                               ln_f=tnn.LayerNorm(d)))
        self.lm_head = tnn.Linear(d, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx, targets):
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))
        for block in t.h:
            x = block(x)
        logits = self.lm_head(t.ln_f(x))
        return TF.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def _randomize(model):
    """Random biases and norm parameters too (the zoo's init zeroes them), so nothing compares on zeros."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.rand(p.shape, generator=g, dtype=p.dtype) * 0.2 - 0.1)


def _compare_step(ours, theirs, step_ours, opt_t, loss_t, tol):
    opt_t.zero_grad()
    tl = loss_t()
    tl.backward()
    grads = {k: p.grad.clone() for k, p in theirs.named_parameters()}
    opt_t.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # positions, masks: ops of the graph, no captured arrays
        value, g = step_ours()
    assert rel(value, tl) < tol
    assert set(g) == set(grads)
    for k, want in grads.items():
        assert rel(g[k], want) < tol, k
    theirs_state = theirs.state_dict()
    for k, t in ours.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        assert rel(t, theirs_state[k]) < tol, k


def _train_step(objective):
    def step(model, opt, *args):
        loss, grads = av.value_and_grad(objective)(model, *args)
        opt.step(grads)
        return loss, grads
    return step


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_gpt_training_step_matches_torch(backend):
    cfg = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
    torch.manual_seed(0)
    theirs = TorchGPT(11, 8, 2, 2, 8)
    ours = zoo.GPT(**cfg)
    if backend == "numpy":
        theirs, ours = theirs.double(), ours.double()
    _randomize(theirs)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    assert ours.lm_head.weight is ours.transformer.wte.weight  # still tied after loading
    rng = np.random.default_rng(0)
    idx, tgt = rng.integers(0, 11, (2, 6)), rng.integers(0, 11, (2, 6))
    if backend == "numpy":
        opt_o, opt_t = optim.AdamW(ours, lr=1e-2), torch.optim.AdamW(theirs.parameters(), lr=1e-2)
    else:  # Adam's first step is lr * sign(g): in f32 the key bias's exactly-zero gradient is sign noise
        opt_o, opt_t = optim.SGD(ours, lr=0.1, momentum=0.9), torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    step = av.compile(_train_step(zoo.gpt_loss), backend=backend)
    _compare_step(ours, theirs, lambda: step(ours, opt_o, idx, tgt), opt_t, lambda: theirs(T(idx), T(tgt)),
                  1e-9 if backend == "numpy" else 1e-4)


class TorchBasicBlock(tnn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False), tnn.BatchNorm2d(cout)
        self.conv2, self.bn2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False), tnn.BatchNorm2d(cout)
        self.shortcut = tnn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

    def forward(self, x):
        out = TF.relu(self.bn1(self.conv1(x)))
        return TF.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TorchResNet(tnn.Module):
    def __init__(self, widths, cin, classes):
        super().__init__()
        self.conv1, self.bn1 = tnn.Conv2d(cin, widths[0], 3, 1, 1, bias=False), tnn.BatchNorm2d(widths[0])
        planes, stages = widths[0], []
        for i, w in enumerate(widths):
            stages.append(tnn.Sequential(TorchBasicBlock(planes, w, 2 if i else 1)))
            planes = w
        self.layers = tnn.ModuleList(stages)
        self.fc = tnn.Linear(planes, classes)

    def forward(self, x):
        out = TF.relu(self.bn1(self.conv1(x)))
        for stage in self.layers:
            out = stage(out)
        return self.fc(TF.adaptive_avg_pool2d(out, 1).flatten(1))


def test_resnet_training_step_matches_torch():
    torch.manual_seed(0)
    theirs = TorchResNet((4, 8), 1, 5).double()
    _randomize(theirs)
    ours = zoo.ResNet(widths=(4, 8), blocks=1, in_channels=1, num_classes=5).double()
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4, 1, 8, 8)), rng.integers(0, 5, 4)
    opt_o, opt_t = optim.SGD(ours, lr=0.1, momentum=0.9), torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    step = av.compile(_train_step(lambda m, x, y: av.nn.functional.cross_entropy(m(x), y)), backend="numpy")
    _compare_step(ours, theirs, lambda: step(ours, opt_o, x, y), opt_t,
                  lambda: TF.cross_entropy(theirs(T(x)), T(y)), 1e-9)
    ours.eval()
    theirs.eval()
    assert rel(ours(x), theirs(T(x))) < 1e-9  # running statistics updated as torch's


def test_zoo_init():
    """GPT-2's init (tied head, N(0, 0.02), scaled residual projections) and the ResNet's."""
    gpt = zoo.GPT(n_layer=4, n_embd=64, vocab_size=50)
    w = gpt.transformer.h[0].attn.c_attn.weight.numpy()
    assert abs(w.std() - 0.02) < 0.002
    assert abs(gpt.transformer.h[0].mlp.c_proj.weight.numpy().std() - 0.02 / math.sqrt(8)) < 0.001
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    net = zoo.ResNet(widths=(8, 16), in_channels=3)
    fan_out = 8 * 9
    w = net.conv1.weight.numpy()  # 216 draws: the sample std is within 4 standard errors (1 / sqrt(2n) relative)
    assert abs(w.std() - math.sqrt(2 / fan_out)) < 4 / math.sqrt(2 * w.size) * math.sqrt(2 / fan_out)


def _example(name):
    path = Path(__file__).parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_run(capsys):
    """Both scripts end to end on a few steps (their defaults train for about a minute)."""
    val_loss = _example("train_gpt").main(["--steps", "20", "--chars", "20000", "--samples", "2"])
    out = capsys.readouterr().out
    assert "final training loss" in out and "samples:" in out
    assert 0 < val_loss < math.log(90)  # better than guessing among the characters
    acc = _example("train_resnet").main(["--epochs", "1", "--batch-size", "128", "--width", "4", "--size", "8"])
    assert "test accuracy" in capsys.readouterr().out
    assert 0.0 <= acc <= 1.0
