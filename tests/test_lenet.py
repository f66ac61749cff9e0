"""The README's LeNet (DESIGN.md section 1, a plain class) against the same network in PyTorch."""
import numpy as np
import torch
import torch.nn.functional as TF

import avalon as av
from avalon import nn
from avalon.compiler.execute import feed
from avalon.nn import Conv2d, Linear, logsoftmax, maxpool2d, relu
from avalon.trace import trace_call


class Net:  # a plain class: no base class is needed
    def __init__(self):
        self.conv1 = Conv2d(1, 20, 5)
        self.conv2 = Conv2d(20, 50, 5)
        self.fc1 = Linear(4 * 4 * 50, 500)
        self.fc2 = Linear(500, 10)

    def __call__(self, x):
        x = maxpool2d(relu(self.conv1(x)), (2, 2))
        x = maxpool2d(relu(self.conv2(x)), (2, 2))
        x = x.reshape(x.shape[0], 4 * 4 * 50)
        x = relu(self.fc1(x))
        return logsoftmax(self.fc2(x))


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 20, 5)
        self.conv2 = torch.nn.Conv2d(20, 50, 5)
        self.fc1 = torch.nn.Linear(4 * 4 * 50, 500)
        self.fc2 = torch.nn.Linear(500, 10)

    def forward(self, x):
        x = TF.max_pool2d(TF.relu(self.conv1(x)), (2, 2))
        x = TF.max_pool2d(TF.relu(self.conv2(x)), (2, 2))
        x = x.reshape(x.shape[0], 4 * 4 * 50)
        x = TF.relu(self.fc1(x))
        return TF.log_softmax(self.fc2(x), dim=1)


def rel(a, b) -> float:
    a = a.numpy() if isinstance(a, av.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def setup():
    torch.manual_seed(0)
    theirs, ours = TorchNet(), Net()
    assert list(nn.state_dict(ours)) == list(theirs.state_dict())
    nn.load_state_dict(ours, theirs.state_dict())
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    return ours, theirs, x


def test_lenet_forward_matches_torch():
    ours, theirs, x = setup()
    y = ours(x)
    assert y.shape == (4, 10) and y.dtype == av.float32
    assert rel(y, theirs(torch.from_numpy(x))) < 1e-4


def test_lenet_traces_with_named_parameters():
    ours, _, x = setup()
    tr = trace_call(ours, (x,))
    names = [v.name for v in tr.graph.inputs]
    assert names == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias",
                     "fc2.weight", "fc2.bias", "x"]
    ops = [op.name for op in tr.graph.ops]
    assert ops.count("conv2d") == 2 and ops.count("max_pool2d") == 2 and ops.count("matmul") == 2
    assert rel(av.interpret(tr.graph, *feed(tr.leaves))[0], ours(x)) < 1e-6


def test_lenet_gradients_match_torch():
    ours, theirs, x = setup()
    y = np.random.default_rng(1).integers(0, 10, 4)

    def loss(model, x, y):
        return nn.functional.nll_loss(model(x), y)

    value, grads = av.value_and_grad(loss)(ours, x, y)
    tl = TF.nll_loss(theirs(torch.from_numpy(x)), torch.from_numpy(y))
    tl.backward()
    assert rel(value, tl) < 1e-5
    assert set(grads) == {n for n, _ in theirs.named_parameters()}
    for name, p in theirs.named_parameters():
        assert rel(grads[name], p.grad) < 1e-4, name
