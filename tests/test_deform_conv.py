"""avalon.vision.ops.deform_conv2d / DeformConv2d (torchvision's deformable convolution, v1 and the
modulated v2) against a loop transliteration of torchvision's CPU kernel (float64, exact) and onnx's
ReferenceEvaluator running a DeformConv node (offsets that sample outside the image, offset groups,
weight groups, mask, stride / dilation / padding); gradients w.r.t. input, offset, weight, mask and
bias against central finite differences in float64; zero offsets == F.conv2d; the module; compiled
forms; and the ONNX importer's DeformConv and RoiAlign mode='max' (onnx's node cases, reference and
onnxruntime)."""
from __future__ import annotations

import numpy as np
import pytest

import avalon as av
from avalon.nn import functional as F
from avalon.vision import ops

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

# ----------------------------------------------------------------------------- references


def out_size(h, w, kh, kw, stride, pad, dil):
    return ((h + 2 * pad[0] - (dil[0] * (kh - 1) + 1)) // stride[0] + 1,
            (w + 2 * pad[1] - (dil[1] * (kw - 1) + 1)) // stride[1] + 1)


def tv_deform_conv2d(x, off, w, b, stride, pad, dil, mask):
    """torchvision's deformable_im2col (bilinear_interpolate) + grouped GEMM, one sample at a time."""
    n, c, h, wd = x.shape
    o, cw, kh, kw = w.shape
    oh, ow = off.shape[2:]
    k = kh * kw
    og, wg = off.shape[1] // (2 * k), c // cw

    def bilinear(im, y, xx):
        if y <= -1 or h <= y or xx <= -1 or wd <= xx:
            return 0.0
        yl, xl = int(np.floor(y)), int(np.floor(xx))
        ly, lx = y - yl, xx - xl

        def v(a, bb):
            return im[a, bb] if 0 <= a < h and 0 <= bb < wd else 0.0
        return ((1 - ly) * (1 - lx) * v(yl, xl) + (1 - ly) * lx * v(yl, xl + 1) + ly * (1 - lx) * v(yl + 1, xl)
                + ly * lx * v(yl + 1, xl + 1))

    cols = np.zeros((n, c, kh, kw, oh, ow))
    for bi in range(n):
        for ci in range(c):
            g = ci // (c // og)
            for i in range(kh):
                for j in range(kw):
                    t = i * kw + j
                    for oy in range(oh):
                        for ox in range(ow):
                            y = oy * stride[0] - pad[0] + i * dil[0] + off[bi, g * 2 * k + 2 * t, oy, ox]
                            xx = ox * stride[1] - pad[1] + j * dil[1] + off[bi, g * 2 * k + 2 * t + 1, oy, ox]
                            m = 1.0 if mask is None else mask[bi, g * k + t, oy, ox]
                            cols[bi, ci, i, j, oy, ox] = m * bilinear(x[bi, ci], y, xx)
    out = np.zeros((n, o, oh, ow))
    for bi in range(n):
        for oc in range(o):
            g = oc // (o // wg)
            out[bi, oc] = np.einsum("cij,cijyx->yx", w[oc], cols[bi, g * cw:(g + 1) * cw])
            if b is not None:
                out[bi, oc] += b[oc]
    return out


def onnx_deform_conv(x, w, off, b, mask, stride, pad, dil, group, og):
    kh, kw = w.shape[2:]
    node = helper.make_node("DeformConv", ["X", "W", "offset", "B", "mask"], ["Y"], dilations=list(dil),
                            group=group, kernel_shape=[kh, kw], offset_group=og,
                            pads=[pad[0], pad[1], pad[0], pad[1]], strides=list(stride))
    return ReferenceEvaluator(node).run(None, {"X": x, "W": w, "offset": off, "B": b, "mask": mask})[0]


def case(rng, n=2, c=4, h=6, wd=7, o=6, k=(3, 2), stride=(2, 1), pad=(1, 2), dil=(1, 2), group=2, og=2, spread=4.0):
    oh, ow = out_size(h, wd, *k, stride, pad, dil)
    x = rng.standard_normal((n, c, h, wd))
    w = rng.standard_normal((o, c // group, *k))
    b = rng.standard_normal(o)
    off = rng.uniform(-spread, spread, (n, 2 * og * k[0] * k[1], oh, ow))
    mask = rng.uniform(0, 1, (n, og * k[0] * k[1], oh, ow))
    return x, w, b, off, mask


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture
def rng():
    return np.random.default_rng(0)

# ----------------------------------------------------------------------------- values


def test_matches_torchvision_kernel_and_onnx_reference(rng):
    stride, pad, dil = (2, 1), (1, 2), (1, 2)
    x, w, b, off, mask = case(rng)
    # offsets this large put many taps (and some whole samples) outside the image
    oh, ow = off.shape[2:]
    ys = np.arange(oh)[:, None] * stride[0] - pad[0] + off[:, 0::2]
    assert (ys < -1).any() and (ys > x.shape[2]).any()
    y = ops.deform_conv2d(av.tensor(x), av.tensor(off), av.tensor(w), av.tensor(b), stride, pad, dil,
                          av.tensor(mask)).numpy()
    assert y.shape == (2, 6, oh, ow) and y.dtype == np.float64
    assert rel(y, tv_deform_conv2d(x, off, w, b, stride, pad, dil, mask)) < 1e-13
    # onnx's reference samples through GridSample with float32 coordinates: agreement to ~1e-7
    assert rel(y, onnx_deform_conv(x, w, off, b, mask, stride, pad, dil, 2, 2)) < 1e-5


@pytest.mark.parametrize("stride,pad,dil,group,og", [((1, 1), (0, 0), (1, 1), 1, 1), ((1, 2), (2, 1), (2, 1), 4, 4),
                                                      ((3, 2), (1, 1), (1, 1), 1, 2)])
def test_v1_without_mask_and_bias(stride, pad, dil, group, og, rng):
    x, w, _, off, _ = case(rng, n=1, c=4, h=7, wd=6, o=4, k=(2, 3), stride=stride, pad=pad, dil=dil, group=group, og=og)
    y = ops.deform_conv2d(av.tensor(x), av.tensor(off), av.tensor(w), stride=stride, padding=pad, dilation=dil)
    assert rel(y.numpy(), tv_deform_conv2d(x, off, w, None, stride, pad, dil, None)) < 1e-13


def test_float32_and_integer_offsets(rng):
    x, w, b, off, mask = case(rng, spread=3)
    off = np.round(off)  # integer offsets: the samples land on pixels (and on the image's edges)
    x32, w32, b32, o32, m32 = (a.astype(np.float32) for a in (x, w, b, off, mask))
    y = ops.deform_conv2d(av.tensor(x32), av.tensor(o32), av.tensor(w32), av.tensor(b32), (2, 1), (1, 2), (1, 2),
                          av.tensor(m32))
    assert y.dtype == av.float32
    assert rel(y.numpy(), tv_deform_conv2d(x32, o32, w32, b32, (2, 1), (1, 2), (1, 2), m32)) < 1e-5


@pytest.mark.parametrize("stride,pad,dil,groups", [(1, 0, 1, 1), ((2, 1), (1, 2), (2, 1), 2), (2, 1, 1, 4)])
def test_zero_offsets_are_conv2d(stride, pad, dil, groups, rng):
    x = rng.standard_normal((2, 4, 7, 8))
    w = rng.standard_normal((8, 4 // groups, 3, 3))
    b = rng.standard_normal(8)
    oh, ow = out_size(7, 8, 3, 3, *(F._pair(v) for v in (stride, pad, dil)))
    off = np.zeros((2, 2 * 9, oh, ow))
    want = F.conv2d(av.tensor(x), av.tensor(w), av.tensor(b), stride, pad, dil, groups).numpy()
    got = ops.deform_conv2d(av.tensor(x), av.tensor(off), av.tensor(w), av.tensor(b), stride, pad, dil)
    assert rel(got.numpy(), want) < 1e-13
    ones = av.tensor(np.ones((2, 9, oh, ow)))
    got = ops.deform_conv2d(av.tensor(x), av.tensor(off), av.tensor(w), av.tensor(b), stride, pad, dil, mask=ones)
    assert rel(got.numpy(), want) < 1e-13


def test_shape_errors(rng):
    x, w = av.tensor(rng.standard_normal((1, 4, 5, 5))), av.tensor(rng.standard_normal((2, 4, 3, 3)))
    with pytest.raises(RuntimeError, match="multiple of 2"):
        ops.deform_conv2d(x, av.tensor(np.zeros((1, 17, 3, 3))), w)
    with pytest.raises(RuntimeError, match="output size"):
        ops.deform_conv2d(x, av.tensor(np.zeros((1, 18, 4, 3))), w)
    with pytest.raises(RuntimeError, match="mask"):
        ops.deform_conv2d(x, av.tensor(np.zeros((1, 18, 3, 3))), w, mask=av.tensor(np.ones((1, 18, 3, 3))))
    with pytest.raises(RuntimeError, match="offset groups"):
        ops.deform_conv2d(x, av.tensor(np.zeros((1, 54, 3, 3))), w)

# ----------------------------------------------------------------------------- gradients


def test_gradients_match_central_differences(rng):
    x = rng.standard_normal((1, 4, 4, 5))
    w = rng.standard_normal((2, 2, 2, 2))
    b = rng.standard_normal(2)
    oh, ow = 5, 4  # padding (1, 0), kernel 2 x 2
    # fractional parts kept away from the bilinear kinks at integers; many taps fall outside the image
    off = rng.integers(-3, 3, (1, 16, oh, ow)) + rng.uniform(0.2, 0.8, (1, 16, oh, ow))
    mask = rng.uniform(0.2, 1.0, (1, 8, oh, ow))
    g = rng.standard_normal((1, 2, oh, ow))

    def loss(x, off, w, mask, b, g):
        return av.ops.sum(ops.deform_conv2d(x, off, w, b, 1, (1, 0), 1, mask) * g)

    args = [x, off, w, mask, b]
    grads = av.grad(loss, argnums=(0, 1, 2, 3, 4))(*map(av.tensor, args + [g]))
    f = av.compile(loss)
    eps = 1e-6
    for i, a in enumerate(args):
        num = np.zeros(a.size)
        for j in range(a.size):
            d = np.zeros(a.size)
            d[j] = eps
            hi = [*args[:i], a + d.reshape(a.shape), *args[i + 1:], g]
            lo = [*args[:i], a - d.reshape(a.shape), *args[i + 1:], g]
            num[j] = (float(f(*map(av.tensor, hi)).numpy()) - float(f(*map(av.tensor, lo)).numpy())) / (2 * eps)
        got = grads[i].numpy().reshape(-1)
        assert np.abs(got - num).max() < 1e-7 * max(1.0, np.abs(num).max()), i
        assert np.abs(num).max() > 0.1


# ----------------------------------------------------------------------------- module, tracing


def test_module_keys_forward_and_repr(rng):
    m = ops.DeformConv2d(4, 6, 3, stride=2, padding=1, groups=2)
    assert set(m.state_dict()) == {"weight", "bias"}
    assert m.weight.shape == (6, 2, 3, 3) and m.bias.shape == (6,)
    bound = 1 / np.sqrt(2 * 9)  # kaiming_uniform(a=sqrt(5)) and the bias share this bound
    assert np.abs(m.weight.numpy()).max() <= bound and np.abs(m.bias.numpy()).max() <= bound
    assert repr(m) == "DeformConv2d(4, 6, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), groups=2)"
    assert repr(ops.DeformConv2d(2, 2, (1, 2), dilation=2, bias=False)) == \
        "DeformConv2d(2, 2, kernel_size=(1, 2), stride=(1, 1), dilation=(2, 2), bias=False)"
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    off = rng.uniform(-2, 2, (2, 18 * 2, 5, 5)).astype(np.float32)  # 2 offset groups
    mask = rng.uniform(0, 1, (2, 18, 5, 5)).astype(np.float32)
    y = m(av.tensor(x), av.tensor(off), av.tensor(mask))
    want = tv_deform_conv2d(x, off, m.weight.numpy(), m.bias.numpy(), (2, 2), (1, 1), (1, 1), mask)
    assert y.shape == (2, 6, 5, 5) and rel(y.numpy(), want) < 1e-5
    with pytest.raises(ValueError, match="divisible"):
        ops.DeformConv2d(3, 4, 3, groups=2)


def test_compiles_and_differentiates_when_traced(rng):
    x, w, b, off, mask = case(rng, n=1)
    args = tuple(map(av.tensor, (x, off, w, b, mask)))

    def fn(x, off, w, b, mask):
        return ops.deform_conv2d(x, off, w, b, (2, 1), (1, 2), (1, 2), mask)

    eager = fn(*args).numpy()
    assert rel(av.compile(fn)(*args).numpy(), eager) < 1e-13
    g = rng.standard_normal(eager.shape)

    def loss(x, off, w, b, mask, g):
        return av.ops.sum(fn(x, off, w, b, mask) * g)

    want = av.grad(loss, argnums=(0, 1, 2, 3, 4))(*args, av.tensor(g))
    got = av.compile(av.grad(loss, argnums=(0, 1, 2, 3, 4)))(*args, av.tensor(g))
    for a, e in zip(got, want):
        assert rel(a.numpy(), e.numpy()) < 1e-12

# ----------------------------------------------------------------------------- ONNX import


def _run_onnx(node, feeds, opset, out_shape):
    from avalon.onnx import backend
    f = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "int64": TensorProto.INT64}
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, f[str(v.dtype)], v.shape)
                                        for k, v in feeds.items()],
                          [helper.make_tensor_value_info("Y", f[str(next(iter(feeds.values())).dtype)], out_shape)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model, backend.prepare(model).run(list(feeds.values()))[0]


def test_onnx_deform_conv_asymmetric_pads_and_optional_inputs(rng):
    x = rng.standard_normal((1, 4, 6, 5)).astype(np.float32)
    w = rng.standard_normal((4, 2, 2, 3)).astype(np.float32)
    pads = [1, 0, 0, 2]  # top, left, bottom, right: only the top/left shift the taps
    oh, ow = (6 + 1 - 2) // 1 + 1, (5 + 2 - 3) // 2 + 1
    off = rng.uniform(-3, 3, (1, 2 * 2 * 6, oh, ow)).astype(np.float32)
    node = helper.make_node("DeformConv", ["X", "W", "offset"], ["Y"], group=2, offset_group=2, pads=pads,
                            strides=[1, 2])
    feeds = {"X": x, "W": w, "offset": off}
    _, got = _run_onnx(node, feeds, 19, [1, 4, oh, ow])
    want = ReferenceEvaluator(node).run(None, feeds)[0]
    assert got.shape == want.shape == (1, 4, oh, ow) and rel(got, want) < 1e-5


@pytest.mark.parametrize("ratio,coord", [(0, "half_pixel"), (2, "output_half_pixel"), (0, "output_half_pixel")])
def test_onnx_roi_align_max_matches_reference_and_onnxruntime(ratio, coord, rng):
    x = (rng.standard_normal((2, 3, 9, 8)) - 1.0).astype(np.float32)  # mostly negative: the 0s count
    rois = np.array([[0, 0, 3, 4], [1.5, -2, 9.5, 12], [2, 2, 2.3, 2.2], [-3, -3, 1, 1], [4, 1, 8, 8]], np.float32)
    bi = np.array([0, 1, 1, 0, 1], np.int64)
    node = helper.make_node("RoiAlign", ["X", "rois", "bi"], ["Y"], mode="max", output_height=3, output_width=2,
                            sampling_ratio=ratio, spatial_scale=0.75, coordinate_transformation_mode=coord)
    feeds = {"X": x, "rois": rois, "bi": bi}
    model, got = _run_onnx(node, feeds, 16, [5, 3, 3, 2])
    assert np.array_equal(got, ReferenceEvaluator(node).run(None, feeds)[0])
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.abs(got - sess.run(None, feeds)[0]).max() < 1e-6
