"""avalon.vision.ops against torch references written from torchvision's definitions (torchvision
itself is not importable beside this torch): box ops and losses (values by hypothesis, gradients in
float64), nms / batched_nms against a greedy loop (ties, IoU exactly at the threshold), roi_align
and roi_pool against transliterations of torchvision's CPU kernels (random, degenerate and
out-of-image boxes; gradients w.r.t. the features), compiled forms, the trace-time nms error, and
the modules' state-dict keys and forwards."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import rel
from hypothesis import given, settings
from hypothesis import strategies as st

import avalon as av
from avalon import nn
from avalon.vision import ops

# the gradient tests close over the boxes on purpose: concrete boxes are what roi_align's exact
# adaptive sample count reads (traced ones get the static bound, tested separately)
pytestmark = pytest.mark.filterwarnings("ignore:grad uses arrays that are not among its arguments:UserWarning")

# ----------------------------------------------------------------------------- torch references


def t_area(b):
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def t_inter_union(b1, b2):
    lt = torch.max(b1[:, None, :2], b2[:, :2])
    rb = torch.min(b1[:, None, 2:], b2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter, t_area(b1)[:, None] + t_area(b2) - inter


def t_box_iou(b1, b2):
    inter, union = t_inter_union(b1, b2)
    return inter / union


def t_giou(b1, b2):
    inter, union = t_inter_union(b1, b2)
    lti, rbi = torch.min(b1[:, None, :2], b2[:, :2]), torch.max(b1[:, None, 2:], b2[:, 2:])
    whi = (rbi - lti).clamp(min=0)
    areai = whi[:, :, 0] * whi[:, :, 1]
    return inter / union - (areai - union) / areai


def t_diou_iou(b1, b2, eps=1e-7):
    iou = t_box_iou(b1, b2)
    lti, rbi = torch.min(b1[:, None, :2], b2[:, :2]), torch.max(b1[:, None, 2:], b2[:, 2:])
    whi = (rbi - lti).clamp(min=0)
    diag = whi[:, :, 0] ** 2 + whi[:, :, 1] ** 2 + eps
    xp, yp = (b1[:, 0] + b1[:, 2]) / 2, (b1[:, 1] + b1[:, 3]) / 2
    xg, yg = (b2[:, 0] + b2[:, 2]) / 2, (b2[:, 1] + b2[:, 3]) / 2
    cd = (xp[:, None] - xg[None, :]) ** 2 + (yp[:, None] - yg[None, :]) ** 2
    return iou - cd / diag, iou


def t_ciou(b1, b2, eps=1e-7):
    diou, iou = t_diou_iou(b1, b2, eps)
    wp, hp = b1[:, None, 2] - b1[:, None, 0], b1[:, None, 3] - b1[:, None, 1]
    wg, hg = b2[:, 2] - b2[:, 0], b2[:, 3] - b2[:, 1]
    v = (4 / (torch.pi ** 2)) * torch.pow(torch.atan(wp / hp) - torch.atan(wg / hg), 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


def t_loss_inter_union(b1, b2):
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    xk1, yk1, xk2, yk2 = torch.max(x1, x1g), torch.max(y1, y1g), torch.min(x2, x2g), torch.min(y2, y2g)
    inter = torch.zeros_like(x1)
    mask = (yk2 > yk1) & (xk2 > xk1)
    inter[mask] = (xk2[mask] - xk1[mask]) * (yk2[mask] - yk1[mask])
    return inter, (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter


def t_giou_loss(b1, b2, eps=1e-7):
    inter, union = t_loss_inter_union(b1, b2)
    iou = inter / (union + eps)
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    area_c = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    return 1 - (iou - (area_c - union) / (area_c + eps))


def t_diou_loss(b1, b2, eps=1e-7):
    inter, union = t_loss_inter_union(b1, b2)
    iou = inter / (union + eps)
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    diag = (torch.max(x2, x2g) - torch.min(x1, x1g)) ** 2 + (torch.max(y2, y2g) - torch.min(y1, y1g)) ** 2 + eps
    cd = ((x2 + x1) / 2 - (x1g + x2g) / 2) ** 2 + ((y2 + y1) / 2 - (y1g + y2g) / 2) ** 2
    return 1 - iou + cd / diag, iou


def t_ciou_loss(b1, b2, eps=1e-7):
    loss, iou = t_diou_loss(b1, b2, eps)
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    v = (4 / (torch.pi ** 2)) * torch.pow(torch.atan((x2g - x1g) / (y2g - y1g)) - torch.atan((x2 - x1) / (y2 - y1)), 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return loss + alpha * v


def t_focal(x, t, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(x)
    ce = TF.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss


def t_nms(boxes, scores, thr):
    """The greedy loop, one pair at a time."""
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    suppressed, keep = set(), []
    for a, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        for j in order[a + 1:]:
            if j in suppressed:
                continue
            iou = t_box_iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0].item()
            if iou > thr:
                suppressed.add(j)
    return keep


def t_batched_nms(boxes, scores, idxs, thr):
    keep = []
    for c in torch.unique(idxs).tolist():
        at = torch.nonzero(idxs == c)[:, 0]
        keep += at[t_nms(boxes[at], scores[at], thr)].tolist()
    keep = torch.tensor(sorted(keep), dtype=torch.int64)  # kept indices ascending, then stably by score
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices].tolist()


def t_roi_align(inp, rois, ph, pw, scale, sr, aligned):
    """torchvision's CPU roi_align kernel, transliterated: the bilinear weights of every sample are
    computed in Python floats (the kernel's double arithmetic), the output is their contraction with
    the features (so torch's autograd gives the features' gradient)."""
    n, c, h, w = inp.shape
    k = rois.shape[0]
    wt = np.zeros((k, ph, pw, n, h, w))
    counts = np.ones(k)
    for r in range(k):
        b = int(rois[r, 0])
        off = 0.5 if aligned else 0.0
        sw, sh = rois[r, 1] * scale - off, rois[r, 2] * scale - off
        ew, eh = rois[r, 3] * scale - off, rois[r, 4] * scale - off
        rw, rh = ew - sw, eh - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = sr if sr > 0 else int(math.ceil(rh / ph))
        gw = sr if sr > 0 else int(math.ceil(rw / pw))
        counts[r] = max(gh * gw, 1)
        for p in range(ph):
            for q in range(pw):
                for iy in range(gh):
                    yy = sh + p * bh + (iy + .5) * bh / gh
                    for ix in range(gw):
                        xx = sw + q * bw + (ix + .5) * bw / gw
                        y, x = yy, xx
                        if y < -1.0 or y > h or x < -1.0 or x > w:
                            continue
                        y, x = max(y, 0.0), max(x, 0.0)
                        yl, xl = int(y), int(x)
                        if yl >= h - 1:
                            yh = yl = h - 1
                            y = float(yl)
                        else:
                            yh = yl + 1
                        if xl >= w - 1:
                            xh = xl = w - 1
                            x = float(xl)
                        else:
                            xh = xl + 1
                        ly, lx = y - yl, x - xl
                        hy, hx = 1.0 - ly, 1.0 - lx
                        wt[r, p, q, b, yl, xl] += hy * hx
                        wt[r, p, q, b, yl, xh] += hy * lx
                        wt[r, p, q, b, yh, xl] += ly * hx
                        wt[r, p, q, b, yh, xh] += ly * lx
    out = torch.einsum("kpqnhw,nchw->kcpq", torch.tensor(wt), inp)
    return out / torch.tensor(counts)[:, None, None, None]


def t_roi_pool(inp, rois, ph, pw, scale):
    """torchvision's CPU roi_pool kernel: rounded corners, floor/ceil bins, max per bin (0 if empty)."""
    n, c, h, w = inp.shape

    def rnd(v):
        return int(math.copysign(math.floor(abs(v) + 0.5), v))

    outs = []
    for r in range(rois.shape[0]):
        b = int(rois[r, 0])
        sw, sh, ew, eh = (rnd(rois[r, i] * scale) for i in (1, 2, 3, 4))
        rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bh, bw = rh / ph, rw / pw
        rows = []
        for p in range(ph):
            cols = []
            for q in range(pw):
                hs = min(max(int(math.floor(p * bh)) + sh, 0), h)
                he = min(max(int(math.ceil((p + 1) * bh)) + sh, 0), h)
                ws = min(max(int(math.floor(q * bw)) + sw, 0), w)
                we = min(max(int(math.ceil((q + 1) * bw)) + sw, 0), w)
                if he <= hs or we <= ws:
                    cols.append(inp.new_zeros(c))
                else:
                    cols.append(inp[b, :, hs:he, ws:we].reshape(c, -1).max(1).values)
            rows.append(torch.stack(cols, -1))
        outs.append(torch.stack(rows, -2))
    return torch.stack(outs)


# ----------------------------------------------------------------------------- box ops


def boxes_np(rng, n, lo=-5.0, hi=20.0, degenerate=False):
    xy = rng.uniform(lo, hi, (n, 2))
    wh = rng.uniform(0.5 if not degenerate else 0.0, 10.0, (n, 2))
    return np.concatenate([xy, xy + wh], 1)


coord = st.floats(-50, 50, allow_nan=False, width=64)
size = st.floats(0.25, 40, allow_nan=False, width=64)
box = st.tuples(coord, coord, size, size).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])
box_sets = st.lists(box, min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(box_sets, box_sets)
def test_pairwise_box_ious_match_torch(b1, b2):
    a1, a2 = np.array(b1), np.array(b2)
    t1, t2 = torch.tensor(a1), torch.tensor(a2)
    v1, v2 = av.tensor(a1), av.tensor(a2)
    assert rel(ops.box_area(v1), t_area(t1)) < 1e-12
    assert rel(ops.box_iou(v1, v2), t_box_iou(t1, t2)) < 1e-12
    assert rel(ops.generalized_box_iou(v1, v2), t_giou(t1, t2)) < 1e-12
    assert rel(ops.distance_box_iou(v1, v2), t_diou_iou(t1, t2)[0]) < 1e-12
    assert rel(ops.complete_box_iou(v1, v2), t_ciou(t1, t2)) < 1e-12
    n = min(len(b1), len(b2))
    for mine, ref in ((ops.generalized_box_iou_loss, t_giou_loss), (ops.distance_box_iou_loss,
                                                                    lambda a, b: t_diou_loss(a, b)[0]),
                      (ops.complete_box_iou_loss, t_ciou_loss)):
        assert rel(mine(v1[:n], v2[:n]), ref(t1[:n], t2[:n])) < 1e-12
        assert rel(mine(v1[:n], v2[:n], reduction="sum"), ref(t1[:n], t2[:n]).sum()) < 1e-12


@settings(max_examples=30, deadline=None)
@given(box_sets, st.sampled_from(["xyxy", "xywh", "cxcywh"]), st.sampled_from(["xyxy", "xywh", "cxcywh"]))
def test_box_convert_and_clip(b, fin, fout):
    a = np.array(b)
    x1, y1, x2, y2 = a.T
    forms = {"xyxy": a, "xywh": np.stack([x1, y1, x2 - x1, y2 - y1], 1),
             "cxcywh": np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], 1)}
    got = ops.box_convert(av.tensor(forms[fin]), fin, fout).numpy()
    np.testing.assert_allclose(got, forms[fout], rtol=1e-12, atol=1e-12)
    clipped = ops.clip_boxes_to_image(av.tensor(a), (17, 23)).numpy()
    want = np.stack([a[:, 0].clip(0, 23), a[:, 1].clip(0, 17), a[:, 2].clip(0, 23), a[:, 3].clip(0, 17)], 1)
    np.testing.assert_array_equal(clipped, want)


def test_rotated_box_convert_round_trips(rng):
    b = np.concatenate([rng.uniform(0, 10, (5, 2)), rng.uniform(1, 5, (5, 2)), rng.uniform(-90, 90, (5, 1))], 1)
    v = av.tensor(b)
    for fmt in ("xywhr", "xyxyxyxy"):
        back = ops.box_convert(ops.box_convert(v, "cxcywhr", fmt), fmt, "cxcywhr")
        assert rel(back, b) < 1e-12


def test_box_ious_and_losses_gradients_match_torch(rng):
    a1, a2 = boxes_np(rng, 5), boxes_np(rng, 4)
    g = rng.standard_normal((5, 4))
    for mine, ref in ((ops.box_iou, t_box_iou), (ops.generalized_box_iou, t_giou),
                      (ops.distance_box_iou, lambda a, b: t_diou_iou(a, b)[0]), (ops.complete_box_iou, t_ciou)):
        t1, t2 = torch.tensor(a1, requires_grad=True), torch.tensor(a2, requires_grad=True)
        (ref(t1, t2) * torch.tensor(g)).sum().backward()
        d1, d2 = av.grad(lambda x, y, f=mine: av.ops.sum(f(x, y) * av.tensor(g)), argnums=(0, 1))(
            av.tensor(a1), av.tensor(a2))
        assert rel(d1, t1.grad) < 1e-10 and rel(d2, t2.grad) < 1e-10, mine.__name__
    a2 = boxes_np(rng, 5)
    for mine, ref in ((ops.generalized_box_iou_loss, t_giou_loss),
                      (ops.distance_box_iou_loss, lambda a, b: t_diou_loss(a, b)[0]),
                      (ops.complete_box_iou_loss, t_ciou_loss)):
        t1, t2 = torch.tensor(a1, requires_grad=True), torch.tensor(a2, requires_grad=True)
        ref(t1, t2).mean().backward()
        d1, d2 = av.grad(lambda x, y, f=mine: f(x, y, reduction="mean"), argnums=(0, 1))(av.tensor(a1), av.tensor(a2))
        assert rel(d1, t1.grad) < 1e-10 and rel(d2, t2.grad) < 1e-10, mine.__name__


@pytest.mark.parametrize("alpha,gamma,reduction", [(0.25, 2, "none"), (-1, 1.5, "mean"), (0.5, 0, "sum")])
def test_sigmoid_focal_loss_matches_torch(alpha, gamma, reduction, rng):
    x, t = rng.standard_normal((4, 6)) * 3, (rng.uniform(size=(4, 6)) < 0.3).astype(np.float64)
    tx = torch.tensor(x, requires_grad=True)
    want = t_focal(tx, torch.tensor(t), alpha, gamma)
    want = {"none": want, "mean": want.mean(), "sum": want.sum()}[reduction]
    got = ops.sigmoid_focal_loss(av.tensor(x), av.tensor(t), alpha, gamma, reduction)
    assert rel(got, want) < 1e-12
    want.sum().backward()
    gx = av.grad(lambda x: av.ops.sum(ops.sigmoid_focal_loss(x, av.tensor(t), alpha, gamma, reduction)))(av.tensor(x))
    assert rel(gx, tx.grad) < 1e-10
    with pytest.raises(ValueError, match="reduction"):
        ops.sigmoid_focal_loss(av.tensor(x), av.tensor(t), reduction="avg")


def test_masks_to_boxes_and_remove_small_boxes(rng):
    masks = np.zeros((3, 7, 9), dtype=bool)
    masks[0, 2:5, 1:4] = True
    masks[1, 6, 8] = True
    masks[2, 0:7:3, 2:9:5] = True
    got = ops.masks_to_boxes(av.tensor(masks)).numpy()
    np.testing.assert_array_equal(got, [[1, 2, 3, 4], [8, 6, 8, 6], [2, 0, 7, 6]])
    b = np.array([[0, 0, 1, 5], [0, 0, 2, 2], [1, 1, 1.5, 9], [0, 0, 3, 1.99]])
    np.testing.assert_array_equal(ops.remove_small_boxes(av.tensor(b), 2.0).numpy(), [1])


# ----------------------------------------------------------------------------- nms


def test_nms_matches_greedy_reference_with_ties(rng):
    for trial in range(6):
        n = 40
        b = boxes_np(rng, n, 0, 12)
        # tied scores on purpose: quantized to a few levels
        s = np.round(rng.uniform(size=n) * (3 if trial % 2 else 50)) / 50
        for thr in (0.0, 0.3, 0.5, 0.7, 1.0):
            want = t_nms(torch.tensor(b), torch.tensor(s), thr)
            got = ops.nms(av.tensor(b), av.tensor(s), thr)
            assert got.dtype is av.int64
            assert got.numpy().tolist() == want, (trial, thr)


def test_nms_iou_exactly_at_threshold_keeps_both():
    # IoU of the first two is exactly 0.5 (intersection 2, union 4); suppression needs IoU > threshold
    b = np.array([[0, 0, 3, 1], [1, 0, 4, 1], [10, 10, 11, 11], [0, 0, 3, 1]], dtype=np.float32)
    s = np.array([0.9, 0.8, 0.8, 0.9], dtype=np.float32)
    assert ops.nms(av.tensor(b), av.tensor(s), 0.5).numpy().tolist() == [0, 1, 2]   # 3 = copy of 0: IoU 1
    assert ops.nms(av.tensor(b), av.tensor(s), 0.49).numpy().tolist() == [0, 2]
    # float32 boxes, a threshold that float32 rounds up: the kernel compares in double
    assert t_nms(torch.tensor(b), torch.tensor(s), 0.5) == [0, 1, 2]
    assert ops.nms(av.tensor(np.zeros((0, 4))), av.tensor(np.zeros(0)), 0.5).shape == (0,)


@pytest.mark.parametrize("n", [30, 1100])  # the coordinate trick (<= 4000 numbers) and the per-class loop
def test_batched_nms_matches_per_class_reference(n, rng):
    b = boxes_np(rng, n, 0, 30 if n < 100 else 200)
    s = np.round(rng.uniform(size=n) * 20) / 20
    c = rng.integers(0, 4, n)
    want = t_batched_nms(torch.tensor(b), torch.tensor(s), torch.tensor(c), 0.5) if n < 100 else None
    got = ops.batched_nms(av.tensor(b), av.tensor(s), av.tensor(c), 0.5).numpy().tolist()
    if want is None:  # large: per class through our nms, checked against the small-case reference above
        want = []
        for cls in range(4):
            at = np.flatnonzero(c == cls)
            want += at[ops.nms(av.tensor(b[at]), av.tensor(s[at]), 0.5).numpy()].tolist()
        want = np.sort(want)
        want = want[np.argsort(-s[want], kind="stable")].tolist()
    assert got == want


def test_nms_inside_a_trace_says_why():
    b, s = av.tensor(np.array([[0, 0, 1, 1.0]])), av.tensor(np.array([1.0]))
    with pytest.raises(TypeError, match="nms: the number of indices .* depends on"):
        av.compile(lambda b, s: ops.nms(b, s, 0.5))(b, s)
    with pytest.raises(TypeError, match="batched_nms"):
        av.compile(lambda b, s: ops.batched_nms(b, s, av.tensor(np.array([0])), 0.5))(b, s)


# ----------------------------------------------------------------------------- roi ops


def roi_case(rng, n=2, c=3, h=7, w=9, k=14, scale=1.0):
    x = rng.standard_normal((n, c, h, w))
    hi_x, hi_y = w / scale, h / scale
    x1 = rng.uniform(-3, hi_x + 1, k)
    y1 = rng.uniform(-3, hi_y + 1, k)
    bw = rng.uniform(-1, 1.3 * hi_x, k)
    bh = rng.uniform(-1, 1.3 * hi_y, k)
    bw[:2], bh[:2] = 0.0, 0.0          # degenerate: zero size
    bw[2] = -2.0                       # inverted
    rois = np.stack([rng.integers(0, n, k).astype(np.float64), x1, y1, x1 + bw, y1 + bh], 1)
    rois[3, 1:] = [hi_x + 2, 0, hi_x + 6, 3]   # entirely right of the map
    rois[4, 1:] = [0, 0, hi_x, hi_y]           # the whole map
    return x, rois


ALIGN_CASES = [(-1, False, 1.0), (2, False, 0.5), (0, True, 1.0), (3, True, 0.5), (-1, True, 2.0), (1, False, 1.0)]


@pytest.mark.parametrize("sr,aligned,scale", ALIGN_CASES)
def test_roi_align_matches_kernel_values_and_gradients(sr, aligned, scale, rng):
    x, rois = roi_case(rng, scale=scale)
    ph, pw = 3, 2
    tx = torch.tensor(x, requires_grad=True)
    want = t_roi_align(tx, rois, ph, pw, scale, sr, aligned)
    got = ops.roi_align(av.tensor(x), av.tensor(rois), (ph, pw), scale, sr, aligned)
    assert got.shape == tuple(want.shape) and got.dtype is av.float64
    assert rel(got, want) < 1e-12
    p = rng.standard_normal(want.shape)
    (want * torch.tensor(p)).sum().backward()
    rv = av.tensor(rois)
    gx = av.grad(lambda x: av.ops.sum(ops.roi_align(x, rv, (ph, pw), scale, sr, aligned) * av.tensor(p)))(
        av.tensor(x))
    assert rel(gx, tx.grad) < 1e-12


def test_roi_align_list_of_boxes_and_module(rng):
    x, rois = roi_case(rng)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    ordered = np.concatenate([rois[rois[:, 0] == i] for i in range(2)])
    want = t_roi_align(torch.tensor(x), ordered, 2, 2, 1.0, 2, True)
    got = ops.roi_align(av.tensor(x), [av.tensor(b) for b in per_image], 2, 1.0, 2, True)
    assert rel(got, want) < 1e-12
    assert rel(ops.RoIAlign(2, 1.0, 2, aligned=True)(av.tensor(x), av.tensor(ordered)), want) < 1e-12
    assert ops.roi_align(av.tensor(x), av.tensor(np.zeros((0, 5))), 3).shape == (0, 3, 3, 3)
    with pytest.raises(ValueError, match="Tensor\\[K, 5\\]"):
        ops.roi_align(av.tensor(x), av.tensor(np.zeros((2, 4))), 3)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_roi_pool_matches_kernel_values_and_gradients(scale, rng):
    x, rois = roi_case(rng, scale=scale)
    rois[5, 1:] = [1.5, 2.5, 4.5, 5.5]   # corners at .5: round half away from zero
    rois[6, 1:] = [-0.5, -1.5, 0.4, 0.5]
    tx = torch.tensor(x, requires_grad=True)
    want = t_roi_pool(tx, rois, 3, 2, scale)
    got = ops.roi_pool(av.tensor(x), av.tensor(rois), (3, 2), scale)
    assert got.shape == tuple(want.shape)
    assert rel(got, want) == 0.0
    p = rng.standard_normal(want.shape)
    (want * torch.tensor(p)).sum().backward()
    rv = av.tensor(rois)
    gx = av.grad(lambda x: av.ops.sum(ops.roi_pool(x, rv, (3, 2), scale) * av.tensor(p)))(av.tensor(x))
    assert rel(gx, tx.grad) < 1e-12
    assert rel(ops.RoIPool((3, 2), scale)(av.tensor(x), av.tensor(rois)), want) == 0.0


def test_roi_ops_compile_with_traced_boxes(rng):
    """Traced boxes: the adaptive sample count and the roi_pool window are bounded statically;
    exact for boxes inside the feature map."""
    x, rois = roi_case(rng, k=6)
    rois[:, 1:] = np.sort(rng.uniform(0, 7, (6, 2)), 1)[:, [0, 0, 1, 1]] * [1, 1, 1, 1]
    rois[:, 3] = np.minimum(rois[:, 3] + 1.5, 9)
    ta = t_roi_align(torch.tensor(x), rois, 3, 3, 1.0, -1, False)
    tp = t_roi_pool(torch.tensor(x), rois, 2, 3, 1.0)
    f = av.compile(lambda x, r: (ops.roi_align(x, r, 3), ops.roi_pool(x, r, (2, 3))))
    with pytest.warns(UserWarning, match="capped"):  # (said, since a larger box would be sampled more sparsely)
        ga, gp = f(av.tensor(x), av.tensor(rois))
    assert rel(ga, ta) < 1e-12 and rel(gp, tp) == 0.0
    p = rng.standard_normal((6, 3, 3, 3))
    tx = torch.tensor(x, requires_grad=True)
    (t_roi_align(tx, rois, 3, 3, 1.0, 2, True) * torch.tensor(p)).sum().backward()
    step = av.compile(av.grad(lambda x, r: av.ops.sum(ops.roi_align(x, r, 3, 1.0, 2, True) * av.tensor(p))))
    assert rel(step(av.tensor(x), av.tensor(rois)), tx.grad) < 1e-12


def test_multiscale_roi_align_assigns_levels(rng):
    feats = {"0": rng.standard_normal((1, 2, 16, 16)), "1": rng.standard_normal((1, 2, 8, 8)),
             "p": rng.standard_normal((1, 2, 4, 4))}
    boxes = np.array([[0, 0, 10, 10], [2, 2, 60, 60], [5, 5, 30, 40], [0, 0, 63, 63]], dtype=np.float64)
    m = ops.MultiScaleRoIAlign(["0", "1"], 2, 2, canonical_scale=32, canonical_level=3)
    got = m({k: av.tensor(v) for k, v in feats.items()}, [av.tensor(boxes)], [(64, 64)])
    assert m.scales == [0.25, 0.125]
    lv = np.clip(np.floor(3 + np.log2(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / 32)
                          + 1e-6), 2, 3).astype(int) - 2
    rois = np.concatenate([np.zeros((4, 1)), boxes], 1)
    want = [t_roi_align(torch.tensor(feats[str(lv[i])]), rois[i:i + 1], 2, 2, m.scales[lv[i]], 2, False)[0]
            for i in range(4)]
    assert set(lv.tolist()) == {0, 1}
    assert rel(got, torch.stack(want)) < 1e-12
    traced = av.compile(lambda a, b, bx: m({"0": a, "1": b}, [bx], [(64, 64)]))(
        av.tensor(feats["0"]), av.tensor(feats["1"]), av.tensor(boxes))
    assert rel(traced, torch.stack(want)) < 1e-12


# ----------------------------------------------------------------------------- modules


def test_frozen_batchnorm_buffers_keys_and_forward(rng):
    m = ops.FrozenBatchNorm2d(4)
    assert list(m.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert not list(m.parameters())
    bn = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.tensor(rng.standard_normal(4)))
        bn.running_var.copy_(torch.tensor(rng.uniform(0.5, 2, 4)))
    sd = bn.state_dict()
    assert "num_batches_tracked" in sd
    m.load_state_dict({k: v.numpy() for k, v in sd.items()})
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    assert rel(m(av.tensor(x)), bn.eval()(torch.tensor(x)).detach()) < 1e-6
    assert repr(m) == "FrozenBatchNorm2d(4, eps=1e-05)"


def test_conv_norm_activation_mlp_se_keys_load_torch(rng):
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(5),
                             torch.nn.ReLU(inplace=True))
    am = ops.Conv2dNormActivation(3, 5, stride=2)
    assert list(am.state_dict()) == list(tm.state_dict())
    with torch.no_grad():
        tm[1].running_mean.copy_(torch.randn(5))
    am.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert rel(am.eval()(av.tensor(x)), tm.eval()(torch.tensor(x)).detach()) < 1e-5
    plain = ops.Conv2dNormActivation(3, 5, 1, norm_layer=None, activation_layer=None)
    assert list(plain.state_dict()) == ["0.weight", "0.bias"]
    assert list(ops.Conv3dNormActivation(2, 3).state_dict())[:2] == ["0.weight", "1.weight"]

    mlp = ops.MLP(6, [8, 8, 3], norm_layer=nn.LayerNorm, dropout=0.1)
    assert list(mlp.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias", "5.weight",
                                      "5.bias", "8.weight", "8.bias"]

    se = ops.SqueezeExcitation(6, 2)
    assert list(se.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    xs = rng.standard_normal((2, 6, 4, 4))
    w1, b1, w2, b2 = (v.numpy().astype(np.float64) for v in se.state_dict().values())
    tx = torch.tensor(xs)
    s = TF.conv2d(torch.relu(TF.conv2d(tx.mean((2, 3), keepdim=True), torch.tensor(w1), torch.tensor(b1))),
                  torch.tensor(w2), torch.tensor(b2))
    assert rel(se(av.tensor(xs.astype(np.float32))), torch.sigmoid(s) * tx) < 1e-5


def test_feature_pyramid_network(rng):
    fpn = ops.FeaturePyramidNetwork([3, 4, 5], 6, extra_blocks=ops.LastLevelMaxPool())
    keys = list(fpn.state_dict())
    assert keys[:4] == ["inner_blocks.0.0.weight", "inner_blocks.0.0.bias", "inner_blocks.1.0.weight",
                        "inner_blocks.1.0.bias"]
    assert "layer_blocks.2.0.weight" in keys and len(keys) == 12
    sd = {k: v.numpy().astype(np.float64) for k, v in fpn.state_dict().items()}
    feats = {"a": rng.standard_normal((1, 3, 16, 12)), "b": rng.standard_normal((1, 4, 8, 6)),
             "c": rng.standard_normal((1, 5, 4, 3))}
    out = fpn({k: av.tensor(v.astype(np.float32)) for k, v in feats.items()})
    assert list(out) == ["a", "b", "c", "pool"]

    def conv(i, block, x, pad):
        return TF.conv2d(x, torch.tensor(sd[f"{block}.{i}.0.weight"]), torch.tensor(sd[f"{block}.{i}.0.bias"]),
                         padding=pad)

    xs = [torch.tensor(v) for v in feats.values()]
    last = conv(2, "inner_blocks", xs[2], 0)
    want = [conv(2, "layer_blocks", last, 1)]
    for i in (1, 0):
        lat = conv(i, "inner_blocks", xs[i], 0)
        last = lat + TF.interpolate(last, size=lat.shape[-2:], mode="nearest")
        want.insert(0, conv(i, "layer_blocks", last, 1))
    want.append(TF.max_pool2d(want[-1], 1, 2, 0))
    for got, ref in zip(out.values(), want):
        assert rel(got, ref) < 1e-5
    # torchvision's version-1 keys (inner_blocks.i.weight) load
    old = {k.replace(".0.weight", ".weight").replace(".0.bias", ".bias"): v for k, v in sd.items()}
    fpn.load_state_dict(old)
    p6p7 = ops.FeaturePyramidNetwork([3, 4, 5], 6, extra_blocks=ops.LastLevelP6P7(6, 6))
    assert list(p6p7({k: av.tensor(v.astype(np.float32)) for k, v in feats.items()})) == ["a", "b", "c", "p6", "p7"]


def test_stochastic_depth_and_drop_block(rng):
    x = av.tensor(rng.uniform(1, 2, (64, 3, 2)).astype(np.float32))
    assert ops.stochastic_depth(x, 0.5, "row", training=False) is x
    m = ops.StochasticDepth(0.25, "row")
    y = m(x).numpy()
    scaled = np.isclose(y, x.numpy() / 0.75, rtol=1e-6).all((1, 2))
    zero = (y == 0).all((1, 2))
    assert (scaled | zero).all() and 0 < zero.sum() < 64
    assert repr(m) == "StochasticDepth(p=0.25, mode=row)"
    yb = ops.stochastic_depth(x, 0.5, "batch").numpy()
    assert (yb == 0).all() or np.allclose(yb, x.numpy() * 2)
    m.eval()
    assert m(x) is x
    with pytest.raises(ValueError, match="mode"):
        ops.stochastic_depth(x, 0.5, "col")
    f = av.compile(lambda x: ops.stochastic_depth(x, 0.5, "row"))
    a, b = f(x).numpy(), f(x).numpy()
    assert not np.array_equal(a, b) or (a == 0).all() or (a != 0).all()

    img = av.tensor(np.ones((2, 3, 12, 12), dtype=np.float32))
    z = ops.drop_block2d(img, 0.2, 3).numpy()
    dropped = z == 0
    assert dropped.any() and not dropped.all()
    assert np.allclose(z[~dropped], z.size / (1e-6 + (~dropped).sum()), rtol=1e-5)
    assert ops.DropBlock2d(0.2, 3).eval()(img) is img
    assert ops.drop_block3d(av.tensor(np.ones((1, 2, 5, 5, 5))), 0.3, 3).shape == (1, 2, 5, 5, 5)
