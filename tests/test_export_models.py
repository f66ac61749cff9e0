"""Export QA of whole models: traced by Avalon (its zoo) or imported from torch (`av.from_torch`),
written as MLIR (the avalon dialect, read back; the linalg lowering, compiled by IREE for llvm-cpu and
run against the numpy reference), and exported by torch's ONNX exporters then loaded by
`avalon.onnx.load`, against onnxruntime and torch.

The sweep behind this file (kept small here: IREE compiles take seconds, so the models share one
module) passed on: the zoo's MLP, ResNet (batch norm in training mode), GPT, LSTMClassifier (2 layers)
and VAE (same seed: same noise); torch models imported by `av.from_torch` — a conv net with depthwise,
grouped and dilated convolutions, batch norm, hardswish and gelu; an embedding + 2-layer bidirectional
LSTM; a GRU + Conv1d net; a small U-Net (GroupNorm, InstanceNorm, ConvTranspose2d, ceil-mode pooling,
nearest and bilinear resizes, LayerNorm) in f32 and f64; Hugging Face GPT-2, BERT, Llama, T5 and ViT
(tiny configs, random weights); and 22 single-feature torch modules (reflect/circular/replicate
padding, pixel shuffle, bicubic resize, grouped ConvTranspose2d with output_padding, Conv3d, depthwise
Conv1d, adaptive max/avg pooling, topk and sort, cumsum/cumprod, grid_sample, scatter_add, LayerNorm
and RMSNorm, PReLU/ELU/Mish/SELU, cdist, fold/unfold, max_unpool). For each: forward and
value_and_grad on IREE match the reference (the only differences are rounding noise on parameters
whose gradient is zero in exact arithmetic: attention key biases, a conv bias before a norm), the
avalon dialect reads back as written and the linalg module verifies upstream, a compiled SGD training
step on IREE matches the numpy backend's (BN running statistics included), and both ONNX exporters'
files load and match onnxruntime and torch (also compiled through IREE after loading). The same
torch models in f16 and bf16 run on IREE as on the reference.

Found and fixed (tested below):
- `copy.deepcopy` of an imported model failed (torch.export's graph holds fake tensors): the program
  is shared now, the tensors copied.
- ops of an imported model carried the *caller's* line (where the model was called), so an op that
  cannot be lowered (a QR decomposition) or the MLIR `loc` pointed away from the model: they carry
  the torch source line of their node now.
- `av.from_torch` of a bfloat16 model failed (torch cannot hand bf16 to numpy): imported as bf16.

Not Avalon's (recorded): onnxruntime has no f64 Conv kernel (the U-Net in f64 cannot be run there);
an f64 model's ONNX file holds float attributes in f32 (LeakyRelu's alpha, norms' epsilon: 1e-9
relative to torch, by the ONNX spec); torch's dynamo ONNX exporter fails on T5 ("Cannot view a
tensor"); the TorchScript one exports it.
The bitonic sort network makes a topk over 144 elements a 50 s IREE compile. Adam on a parameter whose
gradient is zero in exact arithmetic amplifies rounding noise into +-lr steps, so training on IREE
vs numpy is compared with SGD.
"""
from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("iree.runtime", reason="needs the mlir extra: pip install -e '.[mlir]'")
pytest.importorskip("iree.compiler", reason="needs the mlir extra: pip install -e '.[mlir]'")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torch.nn.functional as TF  # noqa: E402
from torch import nn as tnn  # noqa: E402

import avalon as av  # noqa: E402
import avalon.onnx  # noqa: E402
from avalon import optim, zoo  # noqa: E402
from avalon.ir import interpret  # noqa: E402
from avalon.mlir import LoweringError, from_mlir, lower_function, to_mlir  # noqa: E402
from avalon.tensor import as_array  # noqa: E402
from avalon.trace import signature  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_on_one_thread")


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


class ConvNet(tnn.Module):
    """Depthwise, pointwise, grouped + dilated convolutions, batch norm, a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = tnn.Conv2d(3, 8, 3, padding=1), tnn.BatchNorm2d(8)
        self.dw = tnn.Conv2d(8, 8, 3, padding=1, groups=8, stride=2)
        self.pw = tnn.Conv2d(8, 12, 1)
        self.g = tnn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=3, bias=False)
        self.fc = tnn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        x = TF.hardswish(self.pw(self.dw(x)))
        x = TF.gelu(self.g(x)) + x
        return self.fc(TF.adaptive_avg_pool2d(x, 1).flatten(1))


class LSTMNet(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = tnn.Embedding(20, 6)
        self.lstm = tnn.LSTM(6, 5, batch_first=True, bidirectional=True)
        self.fc = tnn.Linear(10, 3)

    def forward(self, ids):
        y, _ = self.lstm(self.emb(ids))
        return self.fc(y[:, -1])


def _perturbed(m: tnn.Module) -> tnn.Module:
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def torch_models():
    torch.manual_seed(0)
    return {"convnet": (_perturbed(ConvNet()), (torch.randn(2, 3, 8, 8),)),
            "lstm": (_perturbed(LSTMNet()), (torch.randint(0, 20, (2, 3)),))}


def _inputs(fn, *args) -> list[np.ndarray]:
    """The arrays a graph traced from fn(*args) takes, in its input order."""
    return [np.asarray(as_array(obj)) for _, obj in signature(fn, args)[1]]


def _weighted(m, w, *x):
    return (m(*x) * w).sum()


def test_models_forward_and_gradients_on_iree_match_the_reference(torch_models, rng):
    """value_and_grad of the zoo's MLP and LSTMClassifier and of the imported conv net, the forward
    pass of the zoo's GPT: each graph's avalon dialect reads back as written;
    fused for the IREE target, they lower into one module (one compile) that verifies upstream."""
    from iree.compiler import ir
    from iree.runtime import Config, SystemContext, VmModule

    from avalon.codegen.iree import IREE, compile_module
    from avalon.codegen.iree.backend import NO_AGGRESSIVE_FUSION
    from avalon.passes import DEFAULT_PIPELINE, PassManager

    def forward(m, *x):
        return m(*x)
    cases = {"mlp": (zoo.MLP(16, (12, 8), 5), av.value_and_grad(lambda m, x, y: zoo.cross_entropy(m(x), y)),
                     (rng.standard_normal((3, 16)).astype(np.float32), np.array([1, 0, 4]))),
             "gpt": (zoo.GPT(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8), forward,
                     (rng.integers(0, 11, (2, 6)),)),
             "lstm_classifier": (zoo.LSTMClassifier(3, 5, 4),
                                 av.value_and_grad(lambda m, x, y: zoo.cross_entropy(m(x), y)),
                                 (rng.standard_normal((2, 3, 3)).astype(np.float32), np.array([1, 3])))}
    module, args = torch_models["convnet"]
    model, xs = av.from_torch(module, *args), [av.tensor(a.numpy()) for a in args]
    w = rng.standard_normal(tuple(model(*xs).shape)).astype(np.float32)
    cases["convnet"] = (model, av.value_and_grad(_weighted), (w, *xs))
    graphs, ins = [], []
    for name, (model, f, args) in cases.items():
        g = av.trace(f, model, *args)
        g.name = name
        assert str(from_mlir(to_mlir(g, "avalon"))) == str(g), name
        PassManager.parse(DEFAULT_PIPELINE, target=IREE).run(g)
        assert str(from_mlir(to_mlir(g, "avalon"))) == str(g), name  # (fused regions too)
        graphs.append(g)
        ins.append(_inputs(f, model, *args))
    src = "module {\n" + "\n".join(lower_function(g) for g in graphs) + "\n}\n"
    assert ir.Module.parse(src, ir.Context()).operation.verify()
    ctx = SystemContext(config=Config("local-task"))
    # (the LSTM's gradient hits IREE's aggressive-fusion bug, which WORKAROUNDS retries: asked up front here,
    # to save the failing compile)
    ctx.add_vm_module(VmModule.copy_buffer(ctx.instance, compile_module(src, [NO_AGGRESSIVE_FUSION])))
    for g, x in zip(graphs, ins):
        want = interpret(g, *x)
        got = ctx.modules.module[g.name](*x)
        got = got if isinstance(got, (tuple, list)) else (got,)
        assert len(got) == len(want)
        top = max(np.abs(w).max() for w in want[1:] or want)
        for i, (o, w) in enumerate(zip(got, want)):
            o = np.asarray(o.to_host())
            if i and np.abs(w).max() < 1e-5 * top:  # zero in exact arithmetic: rounding noise only
                continue
            assert _rel(o, w) < 1e-4, (g.name, i)


def test_a_deep_copied_imported_model_trains_on_iree_as_on_numpy(torch_models, rng):
    """copy.deepcopy of an imported model failed (torch.export's fake tensors): the twin shares the
    program and owns its tensors. The compiled SGD step (batch norm in training mode: its running
    statistics update too) on IREE matches the numpy backend's."""
    module, args = torch_models["convnet"]
    module = copy.deepcopy(module).train()
    model = av.from_torch(module, *args)
    twin = copy.deepcopy(model)
    assert twin._program is model._program and twin.bn.running_mean is not model.bn.running_mean
    np.testing.assert_array_equal(twin.c1.weight.numpy(), model.c1.weight.numpy())
    x, y = av.tensor(args[0].numpy()), av.tensor(rng.standard_normal((2, 5)).astype(np.float32))

    def train_step(m, opt, x, y):
        loss, grads = av.value_and_grad(lambda m, x, y: av.nn.functional.mse_loss(m(x), y))(m, x, y)
        opt.step(grads)
        return loss
    runs = []
    for m, backend in ((model, "iree"), (twin, "numpy")):
        step, opt = av.compile(train_step, backend=backend), optim.SGD(m, lr=0.1, momentum=0.9)
        runs.append([float(step(m, opt, x, y).numpy()) for _ in range(2)])
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)
    assert runs[0][1] < runs[0][0]
    sa, sb = av.nn.state_dict(model), av.nn.state_dict(twin)
    assert not np.array_equal(sa["bn.running_mean"].numpy(), module.bn.running_mean.numpy())  # (it moved)
    for k in sb:
        assert _rel(sa[k].numpy(), sb[k].numpy()) < 1e-5, k


class QR(tnn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = tnn.Linear(4, 4)

    def forward(self, x):
        q, r = torch.linalg.qr(self.lin(x))  # (the line the error names)
        return q.sum() + r.sum()


def test_imported_ops_carry_the_torch_source_line():
    """An op of an imported model names the line of the torch module that made it (not the line that
    called the model): in a refused lowering and in the MLIR `loc`, which reads back."""
    import inspect
    line = inspect.getsourcelines(QR.forward)[1] + 1
    x = torch.randn(4, 4)
    model = av.from_torch(QR(), x)
    with pytest.raises(LoweringError, match=rf"op 'qr' \(from \S*test_export_models\.py:{line}\) is a LAPACK"):
        av.compile(model, backend="iree")(av.tensor(x.numpy()))
    module, args = ConvNet().eval(), (torch.randn(1, 3, 4, 4),)
    g = av.trace(av.from_torch(module, *args), av.tensor(args[0].numpy()))
    conv_line = inspect.getsourcelines(ConvNet.forward)[1] + 1
    assert any(op.loc and op.loc.line == conv_line and op.loc.file.endswith("test_export_models.py")
               for op in g.ops if op.name == "conv2d")
    text = to_mlir(g, "avalon")
    assert f'test_export_models.py":{conv_line}:0)' in text
    assert [str(op.loc) for op in from_mlir(text).ops] == [str(op.loc) for op in g.ops]


def test_a_bfloat16_torch_model_imports_and_runs_on_iree(torch_models):
    module, args = torch_models["convnet"]
    module = copy.deepcopy(module).to(torch.bfloat16)
    x = args[0].to(torch.bfloat16)
    model = av.from_torch(module, x)
    assert model.c1.weight.dtype == av.bfloat16 and model.bn.running_var.dtype == av.bfloat16
    xa = av.tensor(x.float().numpy(), dtype=av.bfloat16)
    got = av.compile(model, backend="iree")(xa)
    want = av.compile(model, backend="numpy")(xa)
    assert got.dtype == av.bfloat16
    np.testing.assert_array_equal(got.numpy(), want.numpy())  # (bf16 rounding is exact on both)
    with torch.no_grad():
        assert _rel(want.numpy(), module(x).float().numpy()) < 2e-2  # (bf16: 8 bits of mantissa)


@pytest.mark.parametrize("exporter", ["ts", "dynamo"])
def test_onnx_exports_of_the_torch_models_load_and_match_onnxruntime_and_torch(torch_models, exporter):
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    for name, (module, args) in torch_models.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "ts":
                f = io.BytesIO()
                torch.onnx.export(module, args, f, dynamo=False, opset_version=17)
                proto = onnx.load_from_string(f.getvalue())
            else:
                proto = torch.onnx.export(module, args, dynamo=True, verbose=False).model_proto
        model = avalon.onnx.load(proto)
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)}
        ref = sess.run(None, feeds)[0]
        with torch.no_grad():
            want = module(*args).numpy()
        out = model(*[av.tensor(a.numpy()) for a in args]).numpy()
        assert _rel(out, ref) < 1e-5 and _rel(out, want) < 1e-5, name
