"""av.from_torch: torch modules through torch.export, checked against torch itself (forward,
gradients, batch-norm running statistics), with torch's names, and compiled."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn as tnn

import avalon as av
from avalon.interop import UnsupportedOp


class Block(tnn.Module):
    """ResNet's BasicBlock with a projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.down = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


class TinyResNet(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(8)
        self.pool = tnn.MaxPool2d(3, 2, 1)
        self.layer1 = tnn.Sequential(Block(8, 16, 2))
        self.fc = tnn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = tnn.functional.adaptive_avg_pool2d(self.layer1(x), 1)
        return self.fc(torch.flatten(x, 1))


class MobileBlock(tnn.Module):
    """MobileNetV3's inverted residual: depthwise conv, hardswish, squeeze-excite with hardsigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = tnn.Sequential(tnn.Conv2d(3, 12, 1, bias=False), tnn.BatchNorm2d(12), tnn.Hardswish())
        self.dw = tnn.Sequential(tnn.Conv2d(12, 12, 3, 2, 1, groups=12, bias=False), tnn.BatchNorm2d(12),
                                 tnn.Hardswish())
        self.se1, self.se2 = tnn.Conv2d(12, 4, 1), tnn.Conv2d(4, 12, 1)
        self.head = tnn.Sequential(tnn.Linear(12, 6), tnn.Hardswish(), tnn.Dropout(0.2), tnn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(self.expand(x))
        s = tnn.functional.adaptive_avg_pool2d(x, 1)
        x = x * tnn.functional.hardsigmoid(self.se2(torch.relu(self.se1(s))))
        return self.head(x.mean((2, 3)))


def _encoder() -> tnn.Module:
    layer = tnn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True)
    return tnn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


MODELS = {"resnet": (TinyResNet, (2, 3, 32, 32)), "mobilenet": (MobileBlock, (2, 3, 16, 16)),
          "encoder": (_encoder, (2, 5, 16))}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_forward_and_gradients_match_torch(name):
    torch.manual_seed(0)
    ctor, shape = MODELS[name]
    module = ctor().eval()
    x = torch.randn(*shape)
    model = av.from_torch(module, x)
    assert [n for n, _ in av.nn.named_parameters(model)] == [n for n, _ in module.named_parameters()]
    assert {n for n, _ in av.nn.state_dict(model).items()} == set(module.state_dict())
    xa = av.tensor(x.numpy())
    ref = module(x)
    assert _rel(model(xa).numpy(), ref.detach().numpy()) < 1e-5
    w = np.random.default_rng(1).standard_normal(ref.shape).astype(np.float32)
    (ref * torch.from_numpy(w)).sum().backward()
    _, grads = av.value_and_grad(lambda m, x, w: (m(x) * w).sum())(model, xa, av.tensor(w))
    for n, p in module.named_parameters():
        assert _rel(grads[n].numpy(), p.grad.numpy()) < 1e-3, n
    compiled = av.compile(model)
    assert _rel(compiled(xa).numpy(), ref.detach().numpy()) < 1e-5


def test_trace_names_are_state_dict_names():
    module = TinyResNet().eval()
    model = av.from_torch(module, torch.randn(1, 3, 32, 32))
    g = av.trace(model, av.tensor(np.zeros((1, 3, 32, 32), np.float32)))
    names = [v.name for v in g.inputs]
    assert names[0] == "conv1.weight" and "layer1.0.down.1.weight" in names and "bn1.running_mean" in names


def test_training_updates_batch_norm_statistics_like_torch():
    torch.manual_seed(0)
    module = TinyResNet().train()
    x = torch.randn(4, 3, 32, 32)
    model = av.from_torch(module, x)  # export leaves the module's statistics untouched
    before = module.bn1.running_mean.clone()
    ref = module(x)
    out = model(av.tensor(x.numpy()))
    assert _rel(out.numpy(), ref.detach().numpy()) < 1e-4
    assert not np.allclose(before.numpy(), module.bn1.running_mean.numpy())
    for key in ("bn1.running_mean", "bn1.running_var", "layer1.0.bn2.running_var", "bn1.num_batches_tracked"):
        got = av.nn.state_dict(model)[key].numpy()
        assert np.allclose(got, module.state_dict()[key].numpy(), rtol=1e-4, atol=1e-6), key
    step = av.compile(model)  # under compile too
    step(av.tensor(x.numpy()))
    module(x)
    assert np.allclose(av.nn.state_dict(model)["bn1.running_var"].numpy(), module.bn1.running_var.numpy(), rtol=1e-4)


def test_trains_with_an_optimizer():
    torch.manual_seed(0)
    model = av.from_torch(TinyResNet().train(), torch.randn(8, 3, 32, 32))
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 5, 8)
    opt = av.optim.Adam(model, lr=1e-2)
    loss_fn = av.compile(av.value_and_grad(lambda m, x, y: av.nn.functional.cross_entropy(m(x), y)))
    losses = []
    for _ in range(15):
        loss, grads = loss_fn(model, av.tensor(x), av.tensor(y))
        opt.step(grads)
        losses.append(float(loss))
    assert losses[-1] < losses[0] * 0.3


def test_unsupported_aten_op_names_op_and_source_line(monkeypatch):
    from avalon.interop.aten import ATEN
    monkeypatch.delitem(ATEN, "aten.linalg_lu_factor_ex.default")  # an op without a rule, whichever ops have one

    class Odd(tnn.Module):
        def forward(self, x):
            return torch.linalg.lu_factor(torch.diag(x))[0]

    with pytest.raises(UnsupportedOp) as e:
        av.from_torch(Odd(), torch.rand(3) + 1)
    assert "aten.linalg_lu_factor_ex" in str(e.value) and "test_from_torch.py" in str(e.value) \
        and "lu_factor(torch.diag(x))" in str(e.value)


def test_module_torch_export_cannot_capture_gives_its_reason():
    class Branchy(tnn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return x + 1
            return x - 1

    with pytest.raises(RuntimeError, match="torch.export could not capture Branchy"):
        av.from_torch(Branchy(), torch.randn(3))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        av.from_torch(lambda x: x, torch.randn(3))


def test_transposed_and_1d_convolutions_and_pools():
    class M(tnn.Module):
        def __init__(self):
            super().__init__()
            self.up = tnn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
            self.c1 = tnn.Conv1d(3, 2, 3, padding=2, dilation=2)

        def forward(self, x):
            y = self.up(x)
            y = tnn.functional.avg_pool2d(y, 3, 2, 1, ceil_mode=True, count_include_pad=False)
            y = tnn.functional.max_pool2d(y, 2, ceil_mode=True)
            return self.c1(y.flatten(2)).softmax(-1)

    torch.manual_seed(0)
    m = M().eval()
    x = torch.randn(2, 4, 5, 5)
    assert _rel(av.from_torch(m, x)(av.tensor(x.numpy())).numpy(), m(x).detach().numpy()) < 1e-5


def _torchvision():
    """torchvision's models with the CPU torch: declare the C++ operator schemas it registers at
    import (the classification models use none of them); see the research notes."""
    try:
        lib = torch.library.Library("torchvision", "DEF")
        for schema in ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                       "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"):
            try:
                lib.define(schema)
            except RuntimeError:
                pass
        _torchvision.lib = lib
        import torchvision.models as models
        return models
    except Exception as e:  # not installed, or not importable with this torch
        pytest.skip(f"torchvision unavailable: {e}")


def test_torchvision_resnet18_eval_matches_torch():
    models = _torchvision()
    torch.manual_seed(0)
    module = models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    model = av.from_torch(module, x)
    assert _rel(model(av.tensor(x.numpy())).numpy(), module(x).detach().numpy()) < 1e-4


def test_dynamic_shapes_keep_batch_and_sequence_symbolic():
    """torch.export's dynamic_shapes passed through: one import serves every size in the Dims' ranges
    (eager and compiled, with gradients), and a size outside a range is refused naming the dim."""
    torch.manual_seed(0)

    class Tagger(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = tnn.Embedding(50, 16)
            self.enc = tnn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
            self.head = tnn.Linear(16, 3)

        def forward(self, ids):
            return self.head(self.enc(self.emb(ids)))

    m = Tagger().eval()
    b, t = torch.export.Dim("b", min=1, max=8), torch.export.Dim("t", min=2, max=16)
    model = av.from_torch(m, torch.randint(0, 50, (2, 7)), dynamic_shapes={"ids": {0: b, 1: t}})
    step = av.compile(lambda mm, x: mm(x))
    for shape in [(2, 7), (3, 5), (1, 12)]:
        ids = torch.randint(0, 50, shape)
        want = m(ids).detach().numpy()
        assert _rel(model(ids.numpy()).numpy(), want) < 1e-5
        assert _rel(step(model, ids.numpy()).numpy(), want) < 1e-5
    ids = torch.randint(0, 50, (3, 5))
    _, grads = av.value_and_grad(lambda mm, x: mm(x).sum())(model, ids.numpy())
    m(ids).sum().backward()
    assert _rel(grads["head.weight"].numpy(), m.head.weight.grad.numpy()) < 1e-5
    with pytest.raises(TypeError, match="dimension 1 is 20, outside its dynamic range \\[2, 16\\]"):
        model(torch.randint(0, 50, (2, 20)).numpy())
    fixed = av.from_torch(m, torch.randint(0, 50, (2, 7)))
    with pytest.raises(TypeError, match="or with dynamic_shapes"):
        fixed(torch.randint(0, 50, (3, 5)).numpy())


def test_inputs_sharing_or_deriving_a_dim_must_agree():
    """Two inputs with one Dim must have one size (a mask of batch 1 broadcast silently against a batch
    of 4), and a derived Dim (`2 * h`) must be that function of its root (9 fits no h; 8 with h = 5
    disagrees): each is refused naming the input, the dimension and what torch.export traced."""
    from torch.export import Dim

    class Mul(tnn.Module):
        def forward(self, x, m):
            return x * m

    b = Dim("b", min=1, max=64)
    model = av.from_torch(Mul(), torch.randn(4, 3), torch.randn(4, 3), dynamic_shapes=({0: b}, {0: b}))
    x, m = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x, m).numpy(), x * m, rtol=1e-6)
    with pytest.raises(TypeError, match="input 'm' dimension 0 is 1, but torch.export traced it as s"):
        model(x, m[:1])

    class Halves(tnn.Module):
        def forward(self, x, y):
            return x + y.reshape(-1, 2).sum(1)

    h = Dim("h", min=2, max=32)
    model = av.from_torch(Halves(), torch.randn(4), torch.randn(8), dynamic_shapes=({0: h}, {0: 2 * h}))
    x, y = np.random.default_rng(1).standard_normal(18).astype(np.float32)[:6], np.arange(12, dtype=np.float32)
    np.testing.assert_allclose(model(x, y).numpy(), x + y.reshape(-1, 2).sum(1), rtol=1e-6)
    with pytest.raises(TypeError, match="input 'y' dimension 0 is 9, but torch.export traced it as 2\\*s"):
        model(np.ones(4, np.float32), np.ones(9, np.float32))
    with pytest.raises(TypeError, match="input 'y' dimension 0 is 8, .*which is 10 here"):
        model(np.ones(5, np.float32), np.ones(8, np.float32))
    with pytest.raises(TypeError, match="dimension 0 is 1, outside its dynamic range \\[2, 32\\]"):
        model(np.ones(1, np.float32), np.ones(2, np.float32))


def test_detach_and_no_grad_regions_stop_gradients_as_in_torch():
    """torch.export turns `.detach()` into `aten.alias` and inlines `with torch.no_grad():` regions, and the
    import let gradients through both: a VQ-VAE's straight-through `z + (zq - z).detach()` and a statistic
    computed under no_grad trained on wrong gradients. A custom autograd.Function, whose backward
    torch.export drops, is named in a warning."""
    torch.manual_seed(0)

    class Quantized(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = tnn.Linear(4, 4)

        def forward(self, x):
            with torch.no_grad():
                s = self.lin(x).abs().mean()
            z = self.lin(x)
            st = z + (z.round() - z).detach()
            return z * s + st * z.detach()

    m = Quantized()
    model = av.from_torch(m, torch.randn(2, 4))
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(model(x).numpy(), m(torch.tensor(x)).detach().numpy(), rtol=1e-6)
    m(torch.tensor(x)).sum().backward()
    for grads in (av.grad(lambda mm, x: mm(x).sum())(model, x),
                  av.compile(av.grad(lambda mm, x: mm(x).sum()))(model, x)):
        for name, p in m.named_parameters():
            assert _rel(grads[name].numpy(), p.grad.numpy()) < 1e-6, name

    class Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.round()

        @staticmethod
        def backward(ctx, g):
            return g * 2

    class Custom(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = tnn.Linear(4, 4)

        def forward(self, x):
            return Twice.apply(self.lin(x))

    with pytest.warns(UserWarning, match=r"custom torch.autograd.Functions \(Twice\); torch.export keeps their forward"):
        av.from_torch(Custom(), torch.randn(2, 4))
