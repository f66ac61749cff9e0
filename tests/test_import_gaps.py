"""Import gaps closed: torch.export's `map` higher-order op, clear errors for complex inputs to ops
without a complex rule, ONNX node-suite fixes, and bugs found in an export QA sweep. Each test
compares an imported model with torch (forward and gradients) or onnxruntime."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import avalon as av


def _grads_match(module: torch.nn.Module, imported, *args: torch.Tensor, atol: float = 1e-5) -> None:
    """Forward and parameter gradients of sum(output) agree with torch."""
    out = module(*args)
    outs = out if isinstance(out, tuple) else (out,)
    sum(o.sum() for o in outs).backward()
    a = tuple(x.numpy() for x in args)

    def loss(m, *xs):
        r = m(*xs)
        rs = r if isinstance(r, tuple) else (r,)
        total = rs[0].sum()
        for o in rs[1:]:
            total = total + o.sum()
        return total
    got_out = imported(*a)
    got_outs = got_out if isinstance(got_out, tuple) else (got_out,)
    for g, w in zip(got_outs, outs):
        np.testing.assert_allclose(np.asarray(g.numpy()), w.detach().numpy(), atol=atol, rtol=1e-5)
    grads = av.grad(loss)(imported, *a)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(grads[name].numpy(), p.grad.numpy(), atol=atol, rtol=1e-5, err_msg=name)


# -- gap 1: torch.export's map higher-order op ---------------------------------------------------

class _MapModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, xs: torch.Tensor, y: torch.Tensor):
        from torch._higher_order_ops.map import map as tmap

        def body(x, y):
            return torch.tanh(self.lin(x)) * y, (x * x).sum()
        return tmap(body, xs, y)


def test_map_higher_order_op_forward_and_grads():
    torch.manual_seed(0)
    m = _MapModel()
    xs, y = torch.randn(5, 2, 4), torch.randn(3)
    with warnings.catch_warnings():
        # torch's own MapAutogradOp is no user custom Function: no warning about it
        warnings.filterwarnings("error", message=".*custom torch.autograd.Functions")
        imported = av.from_torch(m, xs, y)
    _grads_match(m, imported, xs, y)


# -- gap 2: complex inputs to ops without a complex rule: a clear error naming the op ------------

@pytest.mark.parametrize("call, name", [
    (lambda z: av.sigmoid(z), "sigmoid"), (lambda z: av.nn.relu(z), "relu"), (lambda z: av.sin(z), "sin"),
    (lambda z: av.softmax(z, 0), "softmax"), (lambda z: av.atan2(z, z), "atan2"), (lambda z: av.argmax(z), "argmax"),
    (lambda z: av.ops.add(np.array([1 + 2j]), 1.0), "add"),
    (lambda z: av.sigmoid([1 + 2j, 3.0]), "sigmoid"),  # a list with a complex number: was cast to float silently
])
def test_eager_op_on_complex_names_the_op(call, name):
    z = av.tensor(np.array([1 + 2j, 3 - 1j], dtype=np.complex64))
    with pytest.raises(TypeError, match=rf"^{name} does not support complex inputs \(got complex"):
        call(z)


def test_complex_has_no_order():
    z = av.tensor(np.array([1 + 2j], dtype=np.complex64))
    with pytest.raises(TypeError, match="'<' does not support complex inputs"):
        _ = z < z


class _Fn(torch.nn.Module):
    def __init__(self, f) -> None:
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


def test_from_torch_complex_inputs_run_and_unsupported_ops_are_named():
    torch.manual_seed(0)
    x = torch.randn(4, 4, dtype=torch.complex64)
    # complex model inputs used to be refused ("argument 'x' is tensor(4, 4), but was a tensor of shape (4, 4)")
    f = _Fn(lambda x: torch.cat([torch.sqrt(x) @ x.T.reciprocal(), x.log().flip(0) ** 2]) * 2 - x.mean(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = av.from_torch(f, x)(x)
    np.testing.assert_allclose(np.asarray(got.numpy()), f(x).numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(av.interop.model.UnsupportedOp,
                       match=r"aten\.sigmoid\.default x1: does not support complex inputs"):
        av.from_torch(_Fn(torch.sigmoid), x)


# -- gap 3: ONNX recurrent layers' peepholes, input_forget, clip and parameterized activations ---

def _ort_vs_avalon(node, inputs: dict, outputs: list, opset: int = 14, atol: float = 1e-5) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    import avalon.onnx
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape)
                                        for k, v in inputs.items()],
                          [helper.make_empty_tensor_value_info(o) for o in outputs])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    got = avalon.onnx.load(m)(*inputs.values())
    got = got if isinstance(got, tuple) else (got,)
    for g_, w in zip(got, want):
        np.testing.assert_allclose(g_.numpy(), w, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("attrs, peepholes", [
    ({}, True),
    ({"input_forget": 1}, True),
    ({"clip": 0.4, "direction": "bidirectional"}, False),
    ({"activations": ["HardSigmoid", "ScaledTanh", "Affine"] * 2, "activation_alpha": [0.3, 0.7, 0.9] * 2,
      "activation_beta": [0.4, 1.1, 0.2] * 2, "direction": "bidirectional"}, True),
])
def test_onnx_lstm_options_match_onnxruntime(attrs, peepholes):
    from onnx import helper
    rng = np.random.default_rng(0)
    seq, batch, inp, hid = 4, 3, 5, 6
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    f = np.float32
    ins = {"X": rng.standard_normal((seq, batch, inp)).astype(f),
           "W": rng.standard_normal((dirs, 4 * hid, inp)).astype(f) * f(0.5),
           "R": rng.standard_normal((dirs, 4 * hid, hid)).astype(f) * f(0.5),
           "B": rng.standard_normal((dirs, 8 * hid)).astype(f) * f(0.5)}
    names = ["X", "W", "R", "B", "", "", ""]
    if peepholes:
        ins["P"] = rng.standard_normal((dirs, 3 * hid)).astype(f)
        names.append("P")
    node = helper.make_node("LSTM", names, ["Y", "Y_h", "Y_c"], hidden_size=hid, **attrs)
    _ort_vs_avalon(node, ins, ["Y", "Y_h", "Y_c"])


def test_onnx_gru_with_clip_and_leaky_relu_matches_onnxruntime():
    from onnx import helper
    rng = np.random.default_rng(1)
    f = np.float32
    ins = {"X": rng.standard_normal((3, 2, 4)).astype(f), "W": rng.standard_normal((1, 15, 4)).astype(f),
           "R": rng.standard_normal((1, 15, 5)).astype(f)}
    node = helper.make_node("GRU", ["X", "W", "R"], ["Y", "Y_h"], hidden_size=5, clip=0.8,
                            activations=["Sigmoid", "LeakyRelu"], activation_alpha=[0.2])
    _ort_vs_avalon(node, ins, ["Y", "Y_h"])


# -- gap 4: found by the export QA sweep ---------------------------------------------------------

class _OneHot(torch.nn.Module):
    def forward(self, i):
        return torch.nn.functional.one_hot(i, 4)


def test_one_hot_assert_async_is_imported_and_checked():
    """F.one_hot exports `aten._assert_async.msg` (class values in range): it had no rule."""
    m = av.from_torch(_OneHot(), torch.tensor([0, 3]))
    np.testing.assert_array_equal(m(np.array([1, 2])).numpy(), np.eye(4, dtype=np.int64)[[1, 2]])
    with pytest.raises(ValueError, match="smaller than num_classes"):
        m(np.array([1, 7]))


class _Pools3dGridSample(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = torch.nn.Conv3d(2, 3, 2)
        self.c2 = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x, grid, img):
        F = torch.nn.functional
        y = self.c(x)
        img = self.c2(img)
        outs = [F.avg_pool3d(y, 2, stride=1, padding=1, count_include_pad=False), F.max_pool3d(y, 2, ceil_mode=True),
                F.adaptive_avg_pool3d(y, (2, 1, 3)), F.local_response_norm(img, 3)]
        outs += [F.grid_sample(img, grid, mode=m, padding_mode=p, align_corners=a)
                 for m, p, a in (("bilinear", "zeros", False), ("bilinear", "reflection", True), ("nearest", "border", False))]
        return tuple(outs)


def test_pool3d_local_response_norm_and_grid_sampler_import():
    """aten.avg_pool3d (also F.local_response_norm's decomposition), max_pool3d_with_indices,
    _adaptive_avg_pool3d and grid_sampler_2d had no rule."""
    torch.manual_seed(0)
    m = _Pools3dGridSample()
    args = (torch.randn(1, 2, 5, 6, 7), torch.rand(2, 4, 5, 2) * 2.4 - 1.2, torch.randn(2, 3, 6, 7))
    _grads_match(m, av.from_torch(m, *args), *args, atol=1e-4)


class _AtenGaps(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 5))

    def forward(self, x, img):
        F = torch.nn.functional
        y = x @ self.w.T  # (4, 4)
        pooled, idx = F.max_pool2d(img * self.w[0, 0], 2, return_indices=True)
        return (F.elu(y, 0.7) + F.celu(y, 1.3) + F.selu(y) + F.rrelu(y, training=False),
                y.max() - y.min(), y.unfold(1, 2, 1), y.repeat_interleave(torch.tensor([1, 0, 2, 1]), 0),
                torch.addmv(y[0], y, y[1]), torch.addbmm(y, y.expand(2, 4, 4), y.expand(2, 4, 4)),
                F.adaptive_max_pool2d(img * self.w[0, 1], (2, 3)), F.max_unpool2d(pooled, idx, 2), idx,
                torch.nanmedian(y), torch.linalg.solve_triangular(y.triu() + 4 * torch.eye(4), y, upper=True),
                F.pdist(y), torch.special.erfcx(y) + torch.special.i1(y) + torch.special.i0e(y),
                torch.special.ndtri(torch.sigmoid(y)),
                torch.view_as_real(torch.polar(y.abs(), y) * torch.complex(y, y)),
                torch.randn(3, 2).shape[0] * y)


def test_aten_ops_without_rules_found_by_the_sweep():
    """Each of these had no rule (elu/celu/selu, max()/min() of a whole tensor, unfold, repeat_interleave
    by a tensor, addmv, addbmm, adaptive_max_pool2d, nanmedian, solve_triangular, pdist, special
    functions, polar/complex, rrelu in eval), and max_pool2d_with_indices gave None for its indices
    (max_unpool2d then failed as "cannot make a tensor of None")."""
    torch.manual_seed(0)
    m = _AtenGaps()
    args = (torch.randn(4, 5), torch.randn(1, 2, 6, 6))
    _grads_match(m, av.from_torch(m, *args), *args, atol=1e-4)


# -- gap 3: ONNX ops that were unsupported (node suite: Adagrad, Adam, Momentum, Binarizer,
#    ArrayFeatureExtractor, TreeEnsemble; checked against onnxruntime where it runs them) --------

def _ml_model(node, inputs: dict, elem, n_out: int = 1):
    from onnx import helper
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, elem[k], v.shape) for k, v in inputs.items()],
                          [helper.make_empty_tensor_value_info(o) for o in node.output[:n_out]])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)])


@pytest.mark.parametrize("agg, post, tracks", [(1, 0, True), (0, 0, False), (1, 2, False), (0, 2, False), (2, 0, True), (3, 1, False)])
def test_onnx_tree_ensemble_matches_onnxruntime(agg, post, tracks):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    import avalon.onnx
    # two trees: 0 -> (1 | leaf0), 1 -> (leaf1 | leaf2);  tree 2: 2 -> (leaf3 | leaf4) with a MEMBER test
    f = np.float32
    node = helper.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml", aggregate_function=agg, post_transform=post, n_targets=2,
        nodes_featureids=[0, 1, 2], nodes_truenodeids=[1, 1, 3], nodes_trueleafs=[0, 1, 1],
        nodes_falsenodeids=[0, 2, 4], nodes_falseleafs=[1, 1, 1],
        nodes_modes=helper.make_tensor("m", TensorProto.UINT8, [3], [0, 3, 6]),
        nodes_splits=helper.make_tensor("s", TensorProto.FLOAT, [3], [0.1, -0.3, float("nan")]),
        membership_values=helper.make_tensor("mv", TensorProto.FLOAT, [3], [1.0, 2.0, float("nan")]),
        nodes_missing_value_tracks_true=[1, 0, 1] if tracks else [0, 0, 0],
        leaf_targetids=[0, 1, 0, 1, 0], leaf_weights=helper.make_tensor("w", TensorProto.FLOAT, [5],
                                                                           [1.5, -2.0, 0.25, 3.0, -1.0]),
        tree_roots=[0, 2])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3)).astype(f)
    x[:, 2] = rng.integers(0, 4, 8)
    x[0, 0], x[1, 2] = np.nan, np.nan
    m = _ml_model(node, {"X": x}, {"X": TensorProto.FLOAT})
    got = avalon.onnx.load(m)(x).numpy()
    # onnxruntime reads post_transform 1 as LOGISTIC and 2 as SOFTMAX, against the spec (1 SOFTMAX,
    # 2 LOGISTIC): compare the raw scores with it, and the transform with the spec's formula
    m.graph.node[0].attribute[[a.name for a in m.graph.node[0].attribute].index("post_transform")].i = 0
    raw = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    want = raw if post == 0 else torch.softmax(torch.tensor(raw), -1).numpy() if post == 1 else 1 / (1 + np.exp(-raw))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_onnx_binarizer_and_array_feature_extractor_match_onnxruntime():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    import avalon.onnx
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    idx = np.array([4, 0, 4], np.int64)
    for node, inputs, elem in (
            (helper.make_node("Binarizer", ["X"], ["Y"], domain="ai.onnx.ml", threshold=0.2), {"X": x},
             {"X": TensorProto.FLOAT}),
            (helper.make_node("ArrayFeatureExtractor", ["X", "I"], ["Y"], domain="ai.onnx.ml"), {"X": x, "I": idx},
             {"X": TensorProto.FLOAT, "I": TensorProto.INT64})):
        m = _ml_model(node, inputs, elem)
        want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
        np.testing.assert_array_equal(avalon.onnx.load(m)(*inputs.values()).numpy(), want)


def test_onnx_preview_training_optimizers_match_onnx_reference():
    """Adagrad / Adam / Momentum (ai.onnx.preview.training; onnxruntime's CPU build lacks them), two
    tensors at once, against onnx's reference evaluator."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    import avalon.onnx
    rng = np.random.default_rng(0)
    f = np.float32
    arrays = {n: rng.standard_normal((2, 3)).astype(f) for n in ("X1", "X2", "G1", "G2", "V1", "V2", "H1", "H2")}
    cases = [("Adagrad", ["X1", "X2", "G1", "G2", "H1", "H2"], 4, dict(decay_factor=0.1, epsilon=1e-5,
                                                                     norm_coefficient=0.01)),
             ("Adam", ["X1", "X2", "G1", "G2", "V1", "V2", "H1", "H2"], 6,
              dict(alpha=0.8, beta=0.95, epsilon=1e-5, norm_coefficient=0.01, norm_coefficient_post=0.02)),
             ("Momentum", ["X1", "X2", "G1", "G2", "V1", "V2"], 4, dict(alpha=0.9, beta=0.5, mode="nesterov",
                                                                       norm_coefficient=0.01))]
    for op, names, n_out, attrs in cases:
        for step in (0, 3):
            feeds = {"R": np.array(0.1, f), "T": np.array(step, np.int64), **{k: np.abs(arrays[k]) if k[0] == "H"
                                                                           else arrays[k] for k in names}}
            node = helper.make_node(op, ["R", "T", *names], [f"o{i}" for i in range(n_out)],
                                    domain="ai.onnx.preview.training", **attrs)
            elem = {k: TensorProto.INT64 if k == "T" else TensorProto.FLOAT for k in feeds}
            from onnx import helper as h
            g = h.make_graph([node], "g", [h.make_tensor_value_info(k, elem[k], v.shape) for k, v in feeds.items()],
                             [h.make_empty_tensor_value_info(o) for o in node.output])
            m = h.make_model(g, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("ai.onnx.preview.training", 1)])
            want = ReferenceEvaluator(m).run(None, feeds)
            got = avalon.onnx.load(m)(*feeds.values())
            for g_, w in zip(got, want):
                np.testing.assert_allclose(g_.numpy(), w, rtol=1e-5, atol=1e-6, err_msg=f"{op} step {step}")


def _random_forest_attrs(rng, n_trees: int, depth: int, n_features: int, n_targets: int) -> dict:
    """skl2onnx's TreeEnsembleRegressor layout: full binary trees, node ids per tree, leaf weights
    in the target_* arrays."""
    a = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
                         "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
                         "target_treeids", "target_nodeids", "target_ids", "target_weights")}
    modes = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT"]
    for t in range(n_trees):
        for i in range(2 ** (depth + 1) - 1):
            leaf = i >= 2 ** depth - 1
            a["nodes_treeids"].append(t)
            a["nodes_nodeids"].append(i)
            a["nodes_featureids"].append(int(rng.integers(n_features)))
            a["nodes_modes"].append("LEAF" if leaf else modes[int(rng.integers(4))])
            a["nodes_values"].append(0.0 if leaf else float(rng.standard_normal()))
            a["nodes_truenodeids"].append(0 if leaf else 2 * i + 1)
            a["nodes_falsenodeids"].append(0 if leaf else 2 * i + 2)
            a["nodes_missing_value_tracks_true"].append(int(rng.integers(2)))
            if leaf:
                for tgt in range(n_targets):
                    a["target_treeids"].append(t)
                    a["target_nodeids"].append(i)
                    a["target_ids"].append(tgt)
                    a["target_weights"].append(float(rng.standard_normal()))
    return a


@pytest.mark.parametrize("agg, post", [("SUM", "NONE"), ("AVERAGE", "LOGISTIC"), ("MAX", "NONE"), ("MIN", "SOFTMAX")])
def test_onnx_ml_regressor_scaler_normalizer_linear_match_onnxruntime(agg, post):
    """skl2onnx's pipeline ops (ai.onnx.ml: Scaler, Normalizer, LinearRegressor, TreeEnsembleRegressor)
    had no rule; each against onnxruntime."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    import avalon.onnx
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    x[2, 1] = np.nan
    forest = _random_forest_attrs(rng, n_trees=3, depth=3, n_features=4, n_targets=2)
    nodes = [
        helper.make_node("TreeEnsembleRegressor", ["X"], ["T"], domain="ai.onnx.ml", n_targets=2, aggregate_function=agg,
                         post_transform=post, base_values=[0.5, -0.25], **forest),
        helper.make_node("Scaler", ["Xc"], ["S"], domain="ai.onnx.ml", offset=[0.1, 0.2, -0.3, 0.0],
                         scale=[2.0, 0.5, 1.0, 3.0]),
        helper.make_node("Normalizer", ["S"], ["N"], domain="ai.onnx.ml", norm={"SUM": "L1", "AVERAGE": "L2"}.get(agg, "MAX")),
        helper.make_node("LinearRegressor", ["N"], ["L"], domain="ai.onnx.ml", targets=2, post_transform=post,
                         coefficients=rng.standard_normal(8).tolist(), intercepts=[0.3, -0.1]),
    ]
    xc = np.nan_to_num(x)  # (a NaN row: onnxruntime's MAX norm skips NaNs, numpy's and Avalon's do not)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, x.shape) for k in ("X", "Xc")],
                          [helper.make_empty_tensor_value_info(o) for o in ("T", "S", "N", "L")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x, "Xc": xc})
    got = avalon.onnx.load(m)(x, xc)
    for name, g_, w in zip("TSNL", got, want):
        np.testing.assert_allclose(g_.numpy(), w, rtol=1e-5, atol=1e-5, err_msg=name)
