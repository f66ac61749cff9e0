"""Torch holds memory for Triton kernels and nothing else: no torch compute op may run on
Avalon's execution path. Every torch function called during compiled Triton calls (first call
with its compile included) is recorded and must be a storage operation."""
import numpy as np
from torch.overrides import TorchFunctionMode

import avalon as av
from avalon import nn, optim, zoo

# allocation, views, metadata, host transfer and memory copies: storage, not compute
STORAGE = {
    "empty", "empty_like", "empty_strided", "new_empty", "untyped_storage", "storage_offset", "size", "stride",
    "__get__", "data_ptr", "as_strided", "view", "numpy", "from_numpy", "to", "cpu", "copy_", "_foreach_copy_",
    "element_size", "dim", "numel", "is_contiguous", "contiguous", "__len__", "device", "dtype", "is_cuda",
    "get_device", "detach", "shape",
    "__getitem__",  # basic slices of arenas: views (the runtime never indexes with tensors)
}


class Recorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


class TinyCNN:
    def __init__(self):
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 2 * 2, 3)

    def __call__(self, x):
        h = nn.maxpool2d(nn.relu(self.conv(x)), (2, 2))
        return nn.logsoftmax(self.fc(h.reshape(x.shape[0], -1)))


def _step(loss_fn):
    def objective(model, x, y):
        return loss_fn(model(x), y)  # zoo's losses are criteria: loss_fn(prediction, target)

    def step(model, opt, x, y):
        loss, grads = av.value_and_grad(objective)(model, x, y)
        opt.step(grads)
        return loss
    return step


def test_compiled_training_steps_use_torch_only_for_storage():
    av.manual_seed(0)
    rng = np.random.default_rng(0)
    cases = [
        (zoo.MLP(16, (8,), 4), zoo.cross_entropy, rng.standard_normal((8, 16)).astype(np.float32)),
        (TinyCNN(), zoo.nll, rng.standard_normal((2, 1, 6, 6)).astype(np.float32)),
    ]
    rec = Recorder()
    for model, loss_fn, x in cases:
        y = np.arange(x.shape[0]) % 3
        opt = optim.Adam(model, lr=1e-2)
        step = av.compile(_step(loss_fn), backend="triton")
        with rec:
            losses = [float(step(model, opt, x, y)) for _ in range(3)]
        assert losses[-1] < losses[0]
    assert rec.calls, "the recorder saw nothing: is the Triton path using torch at all?"
    compute = {k: v for k, v in rec.calls.items() if k not in STORAGE}
    assert not compute, f"torch compute on Avalon's execution path: {compute}"
