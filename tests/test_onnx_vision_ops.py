"""ONNX import of the image ops (Resize, GridSample, 3-d convolution and pooling, Pad modes, Col2Im)
checked against onnxruntime and torch on random inputs; gradients flow through and tracing works on
an imported Resize; a torch.onnx.export'ed model with F.interpolate and Conv3d matches torch."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402
from test_onnx_math_ops import FLOAT, INT64, _ort, _rand, _vi  # noqa: E402
from test_onnx_math_ops import _model as _model_at  # noqa: E402

import avalon as av  # noqa: E402
import avalon.onnx  # noqa: E402
from avalon.tensor import Tensor  # noqa: E402
from avalon.trace import trace  # noqa: E402


def _model(nodes, inputs, outputs, inits=(), opset=20):
    return _model_at(nodes, inputs, outputs, inits, opset)


def _resize_model(x_shape, scales=None, sizes=None, roi=None, opset=19, **attrs):
    inits = [numpy_helper.from_array(np.array(roi or [], np.float32), "roi")]
    names = ["x", "roi"]
    if scales is not None:
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        names.append("scales")
    else:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        names += ["", "sizes"]
    node = helper.make_node("Resize", names, ["y"], **attrs)
    return _model([node], [_vi("x", list(x_shape))], [_vi("y", None)], inits, opset)


RESIZES = [
    dict(scales=[1, 1, 2, 3], mode="nearest"),
    dict(scales=[1, 1, 0.6, 1.7], mode="nearest", nearest_mode="round_prefer_ceil", coordinate_transformation_mode="asymmetric"),
    dict(sizes=[2, 3, 7, 4], mode="nearest", nearest_mode="floor", coordinate_transformation_mode="align_corners"),
    dict(scales=[1, 1, 1.5, 2.5], mode="linear"),
    dict(sizes=[2, 3, 9, 3], mode="linear", coordinate_transformation_mode="align_corners"),
    dict(sizes=[2, 3, 1, 7], mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    dict(scales=[1, 1, 0.5, 0.4], mode="linear", antialias=1),
    dict(scales=[1, 1, 1.7, 0.8], mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1),
    dict(scales=[1, 1, 2, 2], mode="cubic", coordinate_transformation_mode="asymmetric"),
    dict(sizes=[6, 4], axes=[3, 2], mode="linear", keep_aspect_ratio_policy="not_larger"),
    dict(sizes=[2, 3, 4, 4], roi=[0, 0, 0.2, -0.1, 1, 1, 0.9, 1.3], mode="linear",
         coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=2.5),
]


@pytest.mark.parametrize("cfg", RESIZES, ids=lambda c: "-".join(f"{v}" for k, v in c.items() if isinstance(v, str)))
def test_resize_matches_onnxruntime(cfg):
    cfg = dict(cfg)
    m = _resize_model((2, 3, 5, 6), cfg.pop("scales", None), cfg.pop("sizes", None), cfg.pop("roi", None), **cfg)
    x = _rand(np.random.default_rng(0), 2, 3, 5, 6)
    want = _ort(m, {"x": x})[0]
    got = avalon.onnx.load(m)(Tensor(x)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_resize_gradient_matches_torch_and_traces():
    """Bilinear upsampling (half_pixel = torch's align_corners=False): avalon's gradient of the imported
    Resize equals torch's of F.interpolate, and the model traces to ordinary ops."""
    m = _resize_model((1, 2, 4, 5), scales=[1, 1, 2, 2], mode="linear")
    x = _rand(np.random.default_rng(1), 1, 2, 4, 5)
    w = _rand(np.random.default_rng(2), 1, 2, 8, 10)
    model = avalon.onnx.load(m)
    g = av.grad(lambda x, w: (model(x) * w).sum())(Tensor(x), Tensor(w))
    tx = torch.tensor(x, requires_grad=True)
    (torch.nn.functional.interpolate(tx, scale_factor=2, mode="bilinear") * torch.from_numpy(w)).sum().backward()
    assert np.abs(g.numpy()).max() > 0
    np.testing.assert_allclose(g.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    text = str(trace(model, Tensor(x)))
    assert "take" in text or "gather" in text


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_2d_matches_onnxruntime(mode, padding, align):
    rng = np.random.default_rng(3)
    x, grid = _rand(rng, 2, 3, 5, 6), rng.uniform(-1.3, 1.3, (2, 4, 7, 2)).astype(np.float32)
    node = helper.make_node("GridSample", ["x", "g"], ["y"], mode=mode, padding_mode=padding, align_corners=align)
    m = _model([node], [_vi("x", [2, 3, 5, 6]), _vi("g", [2, 4, 7, 2])], [_vi("y", None)])
    got = avalon.onnx.load(m)(Tensor(x), Tensor(grid)).numpy()
    np.testing.assert_allclose(got, _ort(m, {"x": x, "g": grid})[0], rtol=1e-4, atol=1e-5)


def test_grid_sample_3d_and_affine_grid_match_the_reference():
    rng = np.random.default_rng(4)
    theta = (np.eye(3, 4) + 0.3 * rng.standard_normal((2, 3, 4))).astype(np.float32)
    size = numpy_helper.from_array(np.array([2, 3, 3, 4, 5], np.int64), "size")
    nodes = [helper.make_node("AffineGrid", ["t", "size"], ["g"], align_corners=0),
             helper.make_node("GridSample", ["x", "g"], ["y"], mode="linear", padding_mode="border")]
    m = _model(nodes, [_vi("x", [2, 3, 4, 5, 6]), _vi("t", [2, 3, 4])], [_vi("y", None)], [size])
    x = _rand(rng, 2, 3, 4, 5, 6)
    got = avalon.onnx.load(m)(Tensor(x), Tensor(theta)).numpy()
    np.testing.assert_allclose(got, ReferenceEvaluator(m).run(None, {"x": x, "t": theta})[0], rtol=1e-4, atol=1e-5)


X5 = [2, 4, 6, 5, 7]


@pytest.mark.parametrize("node, x_shape, w_shape", [
    (helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 0, 2, 0, 1, 1], strides=[1, 2, 1], group=2), X5,
     (4, 2, 3, 2, 3)),
    (helper.make_node("Conv", ["x", "w", "b"], ["y"], auto_pad="SAME_LOWER", strides=[2, 1, 2]), X5, (4, 4, 2, 3, 3)),
    (helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 1, 2], pads=[1, 0, 0, 0, 1, 1],
                      output_padding=[1, 0, 0]), X5, (4, 3, 3, 2, 3)),
    (helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 3, 2], strides=[2, 1, 2], pads=[1, 1, 0, 0, 1, 1],
                      ceil_mode=1), X5, None),
    (helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2, 3], dilations=[1, 2, 1], pads=[1, 0, 1, 1, 0, 1],
                      count_include_pad=1), X5, None),
    (helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[3, 2], dilations=[2, 1], storage_order=1),
     [2, 4, 6, 5], None),
    (helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2, 3, 2], p=3, strides=[1, 2, 1]), X5, None),
], ids=lambda v: getattr(v, "op_type", None))
def test_3d_conv_and_pooling_match_onnxruntime(node, x_shape, w_shape):
    rng = np.random.default_rng(5)
    feeds = {"x": _rand(rng, *x_shape)}
    inputs = [_vi("x", x_shape)]
    if w_shape:
        out_channels = w_shape[1] if node.op_type == "ConvTranspose" else w_shape[0]
        feeds["w"], feeds["b"] = _rand(rng, *w_shape), _rand(rng, out_channels)
        inputs += [_vi("w", list(w_shape)), _vi("b", [out_channels])]
    outs = [_vi(o, None, INT64 if o == "i" else FLOAT) for o in node.output]
    m = _model([node], inputs, outs, opset=19)
    got = avalon.onnx.load(m)(*(Tensor(v) for v in feeds.values()))
    got = got if isinstance(got, (tuple, list)) else (got,)
    for g, w in zip(got, _ort(m, feeds)):
        assert g.numpy().shape == w.shape
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["edge", "reflect", "wrap"])
def test_pad_modes_match_onnxruntime(mode):
    pads = numpy_helper.from_array(np.array([0, 2, 1, 0, 1, 3], np.int64), "p")
    m = _model([helper.make_node("Pad", ["x", "p"], ["y"], mode=mode)], [_vi("x", [2, 4, 5])], [_vi("y", None)], [pads])
    x = _rand(np.random.default_rng(6), 2, 4, 5)
    np.testing.assert_allclose(avalon.onnx.load(m)(Tensor(x)).numpy(), _ort(m, {"x": x})[0], rtol=1e-6)


def test_col2im_matches_torch_fold():
    x = _rand(np.random.default_rng(7), 2, 3 * 2 * 3, 20)
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("img", [5, 7]), ("blk", [2, 3]))]
    node = helper.make_node("Col2Im", ["x", "img", "blk"], ["y"], strides=[1, 2], pads=[1, 1, 1, 1], dilations=[2, 1])
    m = _model([node], [_vi("x", [2, 18, 20])], [_vi("y", None)], inits)
    want = torch.nn.functional.fold(torch.from_numpy(x), (5, 7), (2, 3), dilation=(2, 1), padding=1, stride=(1, 2))
    np.testing.assert_allclose(avalon.onnx.load(m)(Tensor(x)).numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_torch_exported_interpolate_and_conv3d_match_torch_and_trace():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(2, 3, 3, padding=1)

        def forward(self, img, vol):
            f = torch.nn.functional.interpolate
            a = f(img, scale_factor=2, mode="nearest")
            b = f(img, size=(7, 9), mode="bilinear", align_corners=True)
            c = f(img, scale_factor=1.5, mode="bilinear", align_corners=False)
            return a, b, c, self.conv(vol)

    torch.manual_seed(0)
    net = M().eval()
    args = (torch.randn(1, 2, 4, 6), torch.randn(1, 2, 4, 5, 6))
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, f, dynamo=False, opset_version=17)
    m = onnx.load_from_string(f.getvalue())
    assert {"Resize", "Conv"} <= {n.op_type for n in m.graph.node}
    model = avalon.onnx.load(m)
    ins = [Tensor(a.numpy()) for a in args]
    with torch.no_grad():
        want = net(*args)
    for g, w in zip(model(*ins), want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-5)
    assert "conv" in str(trace(model, *ins))


@pytest.mark.parametrize("center", [0, 1])
def test_non_max_suppression_matches_onnxruntime_and_is_named_when_traced(center):
    """Clustered random boxes (so IoU suppression happens), two classes, a score threshold; then
    the detector's usual Gather of the kept boxes. Tracing names the data-dependent node."""
    rng = np.random.default_rng(20 + center)
    centres = rng.uniform(0, 10, (2, 12, 2)).round(0)
    size = rng.uniform(1, 3, (2, 12, 2))
    boxes = (np.concatenate([centres, size], -1) if center else
             np.concatenate([centres - size / 2, centres + size / 2], -1)[..., [1, 0, 3, 2]]).astype(np.float32)
    scores = rng.random((2, 2, 12)).astype(np.float32)
    consts = [numpy_helper.from_array(np.array([4], np.int64), "k"),
              numpy_helper.from_array(np.array([0.3], np.float32), "iou"),
              numpy_helper.from_array(np.array([0.2], np.float32), "smin")]
    nodes = [helper.make_node("NonMaxSuppression", ["boxes", "scores", "k", "iou", "smin"], ["sel"], name="nms",
                              center_point_box=center)]
    m = _model(nodes, [_vi("boxes", [2, 12, 4]), _vi("scores", [2, 2, 12])], [_vi("sel", [None, 3], TensorProto.INT64)],
               consts)
    feeds = {"boxes": boxes, "scores": scores}
    want = _ort(m, feeds)[0]
    loaded = avalon.onnx.load(m)
    got = loaded(boxes, scores).numpy()
    assert got.dtype == np.int64 and 4 < len(want) < (scores > 0.2).sum()
    np.testing.assert_array_equal(got, want)
    with pytest.raises(avalon.onnx.UnsupportedOp, match="'nms'.*NonMaxSuppression.*the boxes"):
        trace(loaded, Tensor(boxes), Tensor(scores))
