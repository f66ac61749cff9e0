"""Import gaps closed, second round: embedding bags (Avalon's own and torch.export's `_embedding_bag`),
antialiased interpolation, bicubic grid_sample, and ai.onnx.ml's TreeEnsembleClassifier. Each test
compares with torch (forward and gradients, float64 where it can) or onnxruntime."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avalon as av
import avalon.nn.functional as F

# the tests' closures capture their cotangents and indices on purpose
pytestmark = pytest.mark.filterwarnings("ignore:.*uses arrays that are not among its arguments")


def _imported_matches(module: torch.nn.Module, *args: torch.Tensor, atol: float = 1e-10) -> None:
    """av.from_torch(module): forward and parameter gradients of sum(output) agree with torch."""
    imported = av.from_torch(module, *args)
    out = module(*args)
    out.sum().backward()
    a = tuple(x.numpy() for x in args)
    np.testing.assert_allclose(imported(*a).numpy(), out.detach().numpy(), atol=atol, rtol=1e-6)
    grads = av.grad(lambda m, *xs: m(*xs).sum())(imported, *a)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(grads[name].numpy(), p.grad.numpy(), atol=atol, rtol=1e-6, err_msg=name)


# -- gap 1: embedding bags ---------------------------------------------------------------------------

_IDX = np.array([1, 2, 4, 5, 4, 3, 2, 9, 0, 0])
_OFF = np.array([0, 3, 3, 7])  # an empty bag, a last bag of 3


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_eager_compiled_and_grads_match_torch(mode):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((10, 4))
    cot = rng.standard_normal((4, 4))
    for kw in ({}, {"padding_idx": 2}, {"include_last_offset": True}, {"per_sample_weights": rng.random(10)}):
        if "per_sample_weights" in kw and mode != "sum":
            continue
        off = np.append(_OFF, 10) if kw.get("include_last_offset") else _OFF
        tw = torch.tensor(w, requires_grad=True)
        tkw = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
        want = TF.embedding_bag(torch.tensor(_IDX), tw, torch.tensor(off), mode=mode, **tkw)
        (want * torch.tensor(cot)).sum().backward()

        def f(weight, idx, offsets, kw=kw):
            return F.embedding_bag(idx, weight, offsets, mode=mode, **kw)
        np.testing.assert_allclose(f(w, _IDX, off).numpy(), want.detach().numpy(), atol=1e-12, err_msg=str(kw))
        np.testing.assert_allclose(av.compile(f)(w, _IDX, off).numpy(), want.detach().numpy(), atol=1e-12)
        got = av.grad(lambda weight, off=off: (f(weight, _IDX, off) * cot).sum())(av.tensor(w))
        np.testing.assert_allclose(got.numpy(), tw.grad.numpy(), atol=1e-12, err_msg=str(kw))


def test_embedding_bag_scale_grad_by_freq():
    """Was silently ignored (by F.embedding and nn.Embedding too). Compared with F.embedding's
    scale_grad_by_freq summed per bag: torch 2.13's CPU embedding_bag divides by the wrong index's count
    (pytorch/pytorch#190063), its embedding path and CUDA are right."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((10, 3))
    cot = rng.standard_normal((4, 3))
    ends = list(_OFF[1:]) + [len(_IDX)]
    for mode in ("sum", "mean"):
        tw = torch.tensor(w, requires_grad=True)
        rows = TF.embedding(torch.tensor(_IDX), tw, scale_grad_by_freq=True)
        bags = [rows[a:b].sum(0) / (max(b - a, 1) if mode == "mean" else 1) for a, b in zip(_OFF, ends)]
        (torch.stack(bags) * torch.tensor(cot)).sum().backward()
        got = av.grad(lambda t, mode=mode: (F.embedding_bag(_IDX, t, _OFF, mode=mode, scale_grad_by_freq=True)
                                            * cot).sum())(av.tensor(w))
        np.testing.assert_allclose(got.numpy(), tw.grad.numpy(), atol=1e-12)
    tw = torch.tensor(w, requires_grad=True)
    idx2 = np.array([[1, 2, 2], [2, 7, 1]])
    (TF.embedding(torch.tensor(idx2), tw, scale_grad_by_freq=True) ** 2).sum().backward()
    layer = av.nn.Embedding.from_pretrained(w, freeze=False, scale_grad_by_freq=True)  # (frozen: no gradient)
    got = av.grad(lambda m: (m(idx2) ** 2).sum())(layer)
    np.testing.assert_allclose(got["weight"].numpy(), tw.grad.numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="max mode does not support scaling the gradient"):
        F.embedding_bag(_IDX, w, _OFF, mode="max", scale_grad_by_freq=True)


class _Bag(torch.nn.Module):
    def __init__(self, mode: str, **kw) -> None:
        super().__init__()
        self.bag = torch.nn.EmbeddingBag(10, 4, mode=mode, **kw)
        self.out = torch.nn.Linear(4, 2)

    def forward(self, idx, offsets, psw=None):
        return self.out(self.bag(idx, offsets, per_sample_weights=psw))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("training", [True, False])
def test_from_torch_embedding_bag(mode, training):
    """torch.export emits aten._embedding_bag (from embedding_bag.padding_idx) in both modes."""
    torch.manual_seed(0)
    for kw in ({"padding_idx": 2}, {"include_last_offset": True}):
        m = _Bag(mode, **kw).double().train(training)
        off = torch.tensor(np.append(_OFF, 10) if kw.get("include_last_offset") else _OFF)
        args = (torch.tensor(_IDX), off) + ((torch.rand(10, dtype=torch.float64),) if mode == "sum" else ())
        _imported_matches(m, *args)


# -- gap 2: antialiased interpolation ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_interpolate_antialias_matches_torch(mode):
    rng = np.random.default_rng(2)
    cases = [((17, 23), {"size": (5, 9)}), ((16, 16), {"size": (7, 32)}), ((9, 31), {"scale_factor": 0.37}),
             ((12, 10), {"scale_factor": (2.5, 0.5)}), ((40, 33), {"size": (3, 4)}), ((5, 6), {"size": (11, 13)})]
    for (h, w), kw in cases:
        for align in (False, True):
            x = rng.standard_normal((2, 3, h, w))
            tx = torch.tensor(x, requires_grad=True)
            want = TF.interpolate(tx, mode=mode, align_corners=align, antialias=True, **kw)
            cot = rng.standard_normal(want.shape)
            (want * torch.tensor(cot)).sum().backward()

            def f(t, align=align, kw=kw):
                return F.interpolate(t, mode=mode, align_corners=align, antialias=True, **kw)
            msg = f"{(h, w)} {kw} align_corners={align}"
            np.testing.assert_allclose(f(x).numpy(), want.detach().numpy(), atol=1e-12, err_msg=msg)
            got = av.grad(lambda t, f=f, cot=cot: (f(t) * cot).sum())(av.tensor(x))
            np.testing.assert_allclose(got.numpy(), tx.grad.numpy(), atol=1e-12, err_msg=msg)
    x32 = rng.standard_normal((1, 2, 30, 20)).astype(np.float32)
    want = TF.interpolate(torch.tensor(x32), size=(7, 9), mode=mode, antialias=True).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the weights are literal constants: no captured-array retrace warning
        c = av.compile(lambda t: F.interpolate(t, size=(7, 9), mode=mode, antialias=True))
        np.testing.assert_allclose(c(x32).numpy(), want, atol=1e-5)
    with pytest.raises(NotImplementedError, match="Anti-alias option is restricted to bilinear and bicubic"):
        F.interpolate(x32, size=(7, 9), mode="nearest", antialias=True)


class _Resize(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3)

    def forward(self, x):
        y = self.conv(x)
        a = TF.interpolate(y, size=(5, 7), mode="bicubic", antialias=True)
        b = TF.interpolate(y, scale_factor=0.4, mode="bilinear", antialias=True, align_corners=True)
        return a.sum((2, 3)) + b.sum((2, 3)) + TF.interpolate(x, size=(30, 20), mode="bilinear", antialias=True).mean()


def test_from_torch_upsample_aa():
    """aten._upsample_bilinear2d_aa / _upsample_bicubic2d_aa (with and without scales)."""
    torch.manual_seed(0)
    _imported_matches(_Resize().double(), torch.randn(2, 3, 19, 21, dtype=torch.float64))


# -- gap 3: bicubic grid_sample ----------------------------------------------------------------------

@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_grid_sample_bicubic_matches_torch(padding_mode):
    rng = np.random.default_rng(3)
    for align in (False, True):
        x, grid = rng.standard_normal((2, 3, 5, 7)), rng.uniform(-1.6, 1.6, (2, 4, 6, 2))
        tx, tg = torch.tensor(x, requires_grad=True), torch.tensor(grid, requires_grad=True)
        want = TF.grid_sample(tx, tg, mode="bicubic", padding_mode=padding_mode, align_corners=align)
        cot = rng.standard_normal(want.shape)
        (want * torch.tensor(cot)).sum().backward()

        def f(a, g, align=align):
            return F.grid_sample(a, g, mode="bicubic", padding_mode=padding_mode, align_corners=align)
        np.testing.assert_allclose(av.compile(f)(x, grid).numpy(), want.detach().numpy(), atol=1e-12)
        gx, gg = av.grad(lambda a, g, f=f, cot=cot: (f(a, g) * cot).sum(), argnums=(0, 1))(av.tensor(x), av.tensor(grid))
        np.testing.assert_allclose(gx.numpy(), tx.grad.numpy(), atol=1e-12)
        np.testing.assert_allclose(gg.numpy(), tg.grad.numpy(), atol=1e-11)


class _Warp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x, grid):
        g = grid + 0.1 * torch.tanh(self.offset(x)).permute(0, 2, 3, 1)
        return TF.grid_sample(x, g, mode="bicubic", padding_mode="reflection", align_corners=False)


def test_from_torch_grid_sampler_bicubic():
    torch.manual_seed(0)
    _imported_matches(_Warp().double(), torch.randn(2, 3, 6, 6, dtype=torch.float64),
                      torch.rand(2, 6, 6, 2, dtype=torch.float64) * 2.2 - 1.1)


# -- gap 4: ai.onnx.ml TreeEnsembleClassifier --------------------------------------------------------

def _forest(rng, class_ids, n_trees=3, depth=2, positive=False):
    """A scikit-learn-like ensemble (every leaf weighs the same classes), as TreeEnsembleClassifier attributes."""
    a: dict[str, list] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes", "nodes_truenodeids",
        "nodes_falsenodeids", "class_treeids", "class_nodeids", "class_ids", "class_weights")}
    for t in range(n_trees):
        count = [0]

        def build(d, t=t, count=count):
            me = count[0]
            count[0] += 1
            at = len(a["nodes_nodeids"])
            for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes",
                      "nodes_truenodeids", "nodes_falsenodeids"):
                a[k].append(0)
            a["nodes_treeids"][at], a["nodes_nodeids"][at] = t, me
            if d == depth:
                a["nodes_modes"][at] = "LEAF"
                for c in class_ids:
                    a["class_treeids"].append(t)
                    a["class_nodeids"].append(me)
                    a["class_ids"].append(c)
                    a["class_weights"].append(float(rng.random() if positive else rng.normal()))
                return me
            a["nodes_featureids"][at], a["nodes_values"][at] = int(rng.integers(4)), float(rng.normal())
            a["nodes_modes"][at] = str(rng.choice(["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GT", "BRANCH_GTE"]))
            a["nodes_truenodeids"][at] = build(d + 1)
            a["nodes_falsenodeids"][at] = build(d + 1)
            return me
        build(0)
    return a


def _classifier(attrs, labels, post, base=None, strings=False):
    import onnx
    from onnx import TensorProto, helper
    attrs = dict(attrs, post_transform=post)
    if base is not None:
        attrs["base_values"] = base
    attrs["classlabels_strings" if strings else "classlabels_int64s"] = [str(v) for v in labels] if strings else labels
    node = helper.make_node("TreeEnsembleClassifier", ["X"], ["Y", "Z"], domain="ai.onnx.ml", name="forest", **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.STRING if strings else TensorProto.INT64, [None]),
         helper.make_tensor_value_info("Z", TensorProto.FLOAT, [None, len(labels)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("class_ids, labels", [
    ([0, 1, 2], [0, 1, 2]), ([0, 1, 2, 3], [3, 7, 1, 9]),  # multiclass (random forests), any int labels
    ([0, 1], [0, 1]), ([0, 1], [4, 8]),                    # binary, both classes weighted (decision trees)
    ([0], [0, 1]), ([0], [5, 2]), ([1], [0, 1]),           # binary with one logit (gradient boosting)
])
def test_tree_ensemble_classifier_matches_onnxruntime(class_ids, labels):
    ort = pytest.importorskip("onnxruntime")
    import avalon.onnx as aonnx
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    for post in ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT"):
        for base_kind in (None, "one", "all"):
            for positive in (False, True):
                attrs = _forest(rng, class_ids, positive=positive)
                base = None if base_kind is None else (
                    [0.3] if base_kind == "one" else [float(v) for v in rng.normal(size=len(labels))])
                if base_kind == "one" and len(labels) > 2:
                    continue
                if post == "PROBIT":  # scores in (0, 1)
                    attrs["class_weights"] = [abs(v) / 10 for v in attrs["class_weights"]]
                    base = base and [abs(v) / 10 for v in base]
                model = _classifier(attrs, labels, post, base)
                want_y, want_z = ort.InferenceSession(model.SerializeToString(),
                                                      providers=["CPUExecutionProvider"]).run(None, {"X": x})
                got_y, got_z = aonnx.load(model)(x)
                msg = f"post={post} base={base} positive={positive}"
                np.testing.assert_array_equal(got_y.numpy(), want_y, err_msg=msg)
                got_z = got_z.numpy()
                if post == "PROBIT" and class_ids == [0]:  # onnxruntime leaves the second column unwritten
                    got_z, want_z = got_z[:, :1], want_z[:, :1]
                # PROBIT: onnxruntime's float ErfInv approximation cancels near 0.5
                np.testing.assert_allclose(got_z, want_z, atol=1e-3 if post == "PROBIT" else 1e-5,
                                           err_msg=msg)


def test_tree_ensemble_classifier_unsupported_is_clear():
    import avalon.onnx as aonnx
    from avalon.onnx import UnsupportedOp
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 4)).astype(np.float32)
    # string labels: unsupported by design (tensors hold numbers), refused at the graph's string output
    with pytest.raises(UnsupportedOp, match=r"ONNX output 'Y': element type STRING has no Avalon dtype"):
        aonnx.load(_classifier(_forest(rng, [0, 1]), ["a", "b"], "NONE", strings=True))(x)
    attrs = _forest(rng, [0, 1, 2])
    drop = [i for i, n in enumerate(attrs["class_nodeids"]) if n == attrs["class_nodeids"][0]
            and attrs["class_treeids"][i] == 0][:1]  # one leaf loses one class's weight
    for k in ("class_treeids", "class_nodeids", "class_ids", "class_weights"):
        attrs[k] = [v for i, v in enumerate(attrs[k]) if i not in drop]
    with pytest.raises(UnsupportedOp, match="leaves score different sets of classes"):
        aonnx.load(_classifier(attrs, [0, 1, 2], "NONE"))(x)
