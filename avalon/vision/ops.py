"""torchvision.ops for Avalon: `from avalon.vision import ops` where a program has
`from torchvision import ops`, with torchvision's signatures, defaults and semantics, written as
composites of Avalon's ops so they trace, compile and differentiate.

* Box operations (`box_area`, `box_iou`, `generalized_box_iou`, `distance_box_iou`,
  `complete_box_iou`, `box_convert`, `clip_boxes_to_image`, `masks_to_boxes`) and the losses
  (`sigmoid_focal_loss`, `generalized_box_iou_loss`, `distance_box_iou_loss`,
  `complete_box_iou_loss`) are torchvision's elementwise/broadcast formulas, op for op.
* `nms`, `batched_nms` and `remove_small_boxes` return as many indices as the values decide: they
  run eagerly (torchvision's CPU kernel: a stable descending sort of the scores, greedy suppression of
  every later box whose IoU with a kept one is > iou_threshold, the IoU computed in the boxes' dtype
  and compared in float64) and raise a TypeError naming the problem inside a trace.
* `roi_align` is torchvision's CPU kernel as one `take` of the 4 bilinear neighbours of every sample
  point (the image laid out as (N*H*W, C)) and a weighted sum, so its gradient w.r.t. the features
  is `take`'s scatter-add; the boxes get no gradient (torchvision's op gives none). `roi_pool` takes
  each bin's window the same way and its first maximum (torchvision's argmax), so the gradient goes
  to that one element. With concrete boxes the number of samples (adaptive `sampling_ratio <= 0`)
  and the largest `roi_pool` window are read from the values, exact for any boxes; with traced boxes
  (inside av.compile / av.grad with the boxes as an argument) they are bounded statically by what a
  box inside the feature map needs: ceil(H / PH) samples per bin axis (exact for RoIs at most H x W
  feature pixels; a larger RoI is averaged over that many samples per bin axis) and ceil((H+1)/PH)+1
  rows per `roi_pool` window (exact for boxes inside the feature map).
* Modules: FrozenBatchNorm2d, ConvNormActivation / Conv2dNormActivation / Conv3dNormActivation,
  SqueezeExcitation, MLP, Permute, StochasticDepth, DropBlock2d/3d, FeaturePyramidNetwork with
  LastLevelMaxPool / LastLevelP6P7, RoIAlign, RoIPool, MultiScaleRoIAlign, with torchvision's
  attribute (state-dict key) names.
* `deform_conv2d` / `DeformConv2d` (deformable convolution v1/v2) live in avalon/vision/deform.py.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import nn
from .. import ops as _o
from ..ir import dtypes as dt
from ..nn import functional as F
from ..random import next_seed
from ..tensor import Tensor
from .deform import DeformConv2d, deform_conv2d

# ----------------------------------------------------------------------------------- helpers


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else _o.core._tensor(x)


def _upcast(t: Tensor) -> Tensor:
    """torchvision's `_upcast`: floats narrower than f32 to f32, integers narrower than i32 to i32."""
    if t.dtype.is_float:
        return t if t.dtype in (dt.float32, dt.float64) else _o.cast(t, dt.float32)
    return t if t.dtype in (dt.int32, dt.int64) else _o.cast(t, dt.int32)


def _upcast_non_float(t: Tensor) -> Tensor:
    return t if t.dtype in (dt.float32, dt.float64) else _o.cast(t, dt.float32)


def _traced(*xs: Any) -> bool:
    return any(isinstance(x, Tensor) and x.is_traced for x in xs)


def _eager_only(fn: str, *xs: Any) -> None:
    if _traced(*xs):
        raise _o.fail(TypeError(
            f"{fn}: the number of indices it returns depends on its inputs' values, which a traced or "
            f"compiled function does not know (it records one graph for all inputs); call {fn} eagerly, outside "
            f"av.compile/av.grad (detection post-processing usually runs after the compiled model), or compute "
            f"a fixed-size result there (e.g. box_iou and a mask)"))


def _reduce(loss: Tensor, reduction: str, empty_mean_zero: bool = True) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        if loss.numel() == 0 and empty_mean_zero:
            return _o.mul(_o.sum(loss), 0.0)
        return _o.mean(loss)
    if reduction == "sum":
        return _o.sum(loss)
    raise ValueError(f"Invalid Value for arg 'reduction': '{reduction} \n Supported reduction modes: 'none', 'mean', "
                     f"'sum'")


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"output_size must be an int or a pair of ints, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


# ----------------------------------------------------------------------------------- boxes


def box_area(boxes: Any) -> Tensor:
    """Area of (x1, y1, x2, y2) boxes: Tensor[N, 4] -> Tensor[N]."""
    b = _upcast(_t(boxes))
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def box_area_center(boxes: Any) -> Tensor:
    """Area of (cx, cy, w, h) boxes."""
    b = _upcast(_t(boxes))
    return b[:, 2] * b[:, 3]


def _box_inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = _o.maximum(boxes1[:, None, :2], boxes2[:, :2])
    rb = _o.minimum(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = _o.clamp(_upcast(rb - lt), min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area1[:, None] + area2 - inter
    return inter, union


def box_iou(boxes1: Any, boxes2: Any) -> Tensor:
    """Pairwise intersection-over-union of (x1, y1, x2, y2) boxes: [N, 4], [M, 4] -> [N, M]."""
    inter, union = _box_inter_union(_t(boxes1), _t(boxes2))
    return inter / union


def box_iou_center(boxes1: Any, boxes2: Any) -> Tensor:
    """box_iou of (cx, cy, w, h) boxes."""
    b1, b2 = _t(boxes1), _t(boxes2)
    area1, area2 = box_area_center(b1), box_area_center(b2)
    lt = _o.maximum(b1[:, None, :2] - b1[:, None, 2:] / 2, b2[:, :2] - b2[:, 2:] / 2)
    rb = _o.minimum(b1[:, None, :2] + b1[:, None, 2:] / 2, b2[:, :2] + b2[:, 2:] / 2)
    wh = _o.clamp(_upcast(rb - lt), min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area1[:, None] + area2 - inter)


def generalized_box_iou(boxes1: Any, boxes2: Any) -> Tensor:
    """Pairwise generalized IoU: IoU - (enclosing area - union) / enclosing area."""
    b1, b2 = _t(boxes1), _t(boxes2)
    inter, union = _box_inter_union(b1, b2)
    iou = inter / union
    lti = _o.minimum(b1[:, None, :2], b2[:, :2])
    rbi = _o.maximum(b1[:, None, 2:], b2[:, 2:])
    whi = _o.clamp(_upcast(rbi - lti), min=0)
    areai = whi[:, :, 0] * whi[:, :, 1]
    return iou - (areai - union) / areai


def _box_diou_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    iou = box_iou(boxes1, boxes2)
    lti = _o.minimum(boxes1[:, None, :2], boxes2[:, :2])
    rbi = _o.maximum(boxes1[:, None, 2:], boxes2[:, 2:])
    whi = _o.clamp(_upcast(rbi - lti), min=0)
    diagonal_distance_squared = (whi[:, :, 0] ** 2) + (whi[:, :, 1] ** 2) + eps
    x_p = (boxes1[:, 0] + boxes1[:, 2]) / 2
    y_p = (boxes1[:, 1] + boxes1[:, 3]) / 2
    x_g = (boxes2[:, 0] + boxes2[:, 2]) / 2
    y_g = (boxes2[:, 1] + boxes2[:, 3]) / 2
    centers_distance_squared = (_upcast(x_p[:, None] - x_g[None, :]) ** 2) + (_upcast(y_p[:, None] - y_g[None, :]) ** 2)
    return iou - (centers_distance_squared / diagonal_distance_squared), iou


def distance_box_iou(boxes1: Any, boxes2: Any, eps: float = 1e-7) -> Tensor:
    """Pairwise distance IoU: IoU - (centre distance)^2 / (enclosing diagonal)^2."""
    diou, _ = _box_diou_iou(_upcast(_t(boxes1)), _upcast(_t(boxes2)), eps=eps)
    return diou


def complete_box_iou(boxes1: Any, boxes2: Any, eps: float = 1e-7) -> Tensor:
    """Pairwise complete IoU: distance IoU - alpha * v (aspect-ratio term; alpha without gradient)."""
    b1, b2 = _upcast(_t(boxes1)), _upcast(_t(boxes2))
    diou, iou = _box_diou_iou(b1, b2, eps)
    w_pred = b1[:, None, 2] - b1[:, None, 0]
    h_pred = b1[:, None, 3] - b1[:, None, 1]
    w_gt = b2[:, 2] - b2[:, 0]
    h_gt = b2[:, 3] - b2[:, 1]
    v = (4 / (math.pi ** 2)) * _o.pow(_o.atan(w_pred / h_pred) - _o.atan(w_gt / h_gt), 2)
    alpha = _o.stop_gradient(v / (1 - iou + v + eps))
    return diou - alpha * v


_FORMATS = ("xyxy", "xywh", "cxcywh", "xywhr", "cxcywhr", "xyxyxyxy")


def _unbind(b: Tensor) -> list[Tensor]:
    return [b[..., i] for i in range(b.shape[-1])]


def _cxcywh_to_xyxy(b: Tensor) -> Tensor:
    cx, cy, w, h = _unbind(b)
    return _o.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), -1)


def _xyxy_to_cxcywh(b: Tensor) -> Tensor:
    x1, y1, x2, y2 = _unbind(b)
    return _o.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), -1)


def _xywh_to_xyxy(b: Tensor) -> Tensor:
    x, y, w, h = _unbind(b)
    return _o.stack((x, y, x + w, y + h), -1)


def _xyxy_to_xywh(b: Tensor) -> Tensor:
    x1, y1, x2, y2 = _unbind(b)
    return _o.stack((x1, y1, x2 - x1, y2 - y1), -1)


def _cxcywhr_to_xywhr(b: Tensor) -> Tensor:
    cx, cy, w, h, r = _unbind(b)
    rad = r * math.pi / 180.0
    cos, sin = _o.cos(rad), _o.sin(rad)
    return _o.stack((cx - w / 2 * cos - h / 2 * sin, cy - h / 2 * cos + w / 2 * sin, w, h, r), -1)


def _xywhr_to_cxcywhr(b: Tensor) -> Tensor:
    x1, y1, w, h, r = _unbind(b)
    rad = r * math.pi / 180.0
    cos, sin = _o.cos(rad), _o.sin(rad)
    return _o.stack((x1 + w / 2 * cos + h / 2 * sin, y1 - w / 2 * sin + h / 2 * cos, w, h, r), -1)


def _xywhr_to_xyxyxyxy(b: Tensor) -> Tensor:
    x1, y1, w, h, r = _unbind(b)
    rad = r * math.pi / 180.0
    cos, sin = _o.cos(rad), _o.sin(rad)
    x3, y3 = x1 + w * cos, y1 - w * sin
    x2, y2 = x3 + h * sin, y3 + h * cos
    x4, y4 = x1 + h * sin, y1 + h * cos
    return _o.stack((x1, y1, x3, y3, x2, y2, x4, y4), -1)


def _xyxyxyxy_to_xywhr(b: Tensor) -> Tensor:
    x1, y1, x3, y3, x2, y2, _x4, _y4 = _unbind(b)
    r = _o.atan2(y1 - y3, x3 - x1) * 180 / math.pi
    w = _o.sqrt((x3 - x1) ** 2 + (y1 - y3) ** 2)
    h = _o.sqrt((x3 - x2) ** 2 + (y3 - y2) ** 2)
    return _o.stack((x1, y1, w, h, r), -1)


_CONVERSIONS: dict[tuple[str, str], tuple[Callable[[Tensor], Tensor], ...]] = {
    ("xywh", "xyxy"): (_xywh_to_xyxy,), ("cxcywh", "xyxy"): (_cxcywh_to_xyxy,),
    ("xyxy", "xywh"): (_xyxy_to_xywh,), ("xyxy", "cxcywh"): (_xyxy_to_cxcywh,),
    ("xywh", "cxcywh"): (_xywh_to_xyxy, _xyxy_to_cxcywh), ("cxcywh", "xywh"): (_cxcywh_to_xyxy, _xyxy_to_xywh),
    ("cxcywhr", "xywhr"): (_cxcywhr_to_xywhr,), ("xywhr", "cxcywhr"): (_xywhr_to_cxcywhr,),
    ("cxcywhr", "xyxyxyxy"): (_cxcywhr_to_xywhr, _xywhr_to_xyxyxyxy),
    ("xyxyxyxy", "cxcywhr"): (_xyxyxyxy_to_xywhr, _xywhr_to_cxcywhr),
    ("xywhr", "xyxyxyxy"): (_xywhr_to_xyxyxyxy,), ("xyxyxyxy", "xywhr"): (_xyxyxyxy_to_xywhr,),
}


def box_convert(boxes: Any, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes between 'xyxy', 'xywh', 'cxcywh' (and the rotated 'xywhr', 'cxcywhr',
    'xyxyxyxy'), as torchvision."""
    if in_fmt not in _FORMATS or out_fmt not in _FORMATS:
        raise ValueError(f"Unsupported Bounding Box Conversions for given in_fmt {in_fmt} and out_fmt {out_fmt}")
    b = _t(boxes)
    if in_fmt == out_fmt:
        return _o.clone(b)
    steps = _CONVERSIONS.get((in_fmt, out_fmt))
    if steps is None:
        raise NotImplementedError(f"Unsupported Bounding Box Conversions for given in_fmt {in_fmt} and out_fmt "
                                  f"{out_fmt}")
    for step in steps:
        b = step(b)
    return b


def clip_boxes_to_image(boxes: Any, size: tuple[int, int]) -> Tensor:
    """Clamp x coordinates to [0, width] and y coordinates to [0, height] (size = (height, width))."""
    b = _t(boxes)
    height, width = size
    bx = _o.clamp(b[..., 0::2], min=0, max=width)
    by = _o.clamp(b[..., 1::2], min=0, max=height)
    return _o.reshape(_o.stack((bx, by), b.ndim), b.shape)


def remove_small_boxes(boxes: Any, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both >= min_size. Eager only."""
    b = _t(boxes)
    _eager_only("remove_small_boxes", b)
    ws, hs = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    keep = np.logical_and(ws.numpy() >= min_size, hs.numpy() >= min_size)
    return Tensor(np.flatnonzero(keep).astype(np.int64))


def masks_to_boxes(masks: Any) -> Tensor:
    """The (x1, y1, x2, y2) float32 box around each mask's non-zero pixels: [N, H, W] -> [N, 4]
    (static shape, so it traces; an all-zero mask, where torchvision's min of nothing raises, gives
    (W, H, -1, -1) here)."""
    m = _t(masks)
    if m.numel() == 0:
        return _o.zeros((0, 4), dtype=dt.float32)
    n, h, w = m.shape
    on = _o.ne(m, 0)
    xs = _o.iota((n, h, w), 2, dt.int64)
    ys = _o.iota((n, h, w), 1, dt.int64)
    x1 = _o.amin(_o.where(on, xs, w), (1, 2))
    y1 = _o.amin(_o.where(on, ys, h), (1, 2))
    x2 = _o.amax(_o.where(on, xs, -1), (1, 2))
    y2 = _o.amax(_o.where(on, ys, -1), (1, 2))
    return _o.cast(_o.stack((x1, y1, x2, y2), 1), dt.float32)


# ----------------------------------------------------------------------------------- nms


def _nms_numpy(b: np.ndarray, s: np.ndarray, iou_threshold: float) -> np.ndarray:
    """torchvision's CPU kernel: stable descending sort (nan first, as torch.sort), then for each
    box not yet suppressed, in that order: keep it and suppress every later one whose IoU with it
    is > iou_threshold (computed in the boxes' dtype, compared in float64)."""
    if b.shape[0] == 0:
        return np.zeros((0,), dtype=np.int64)
    if b.dtype not in (np.float32, np.float64):
        b = b.astype(np.float32)
    order = np.argsort(-s, kind="stable")
    nan = np.isnan(s[order])
    if nan.any():
        order = np.concatenate([order[nan], order[~nan]])
    x1, y1, x2, y2 = (b[order, i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    n = order.shape[0]
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    zero = b.dtype.type(0)
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(order[i])
        rest = np.arange(i + 1, n)[~suppressed[i + 1:]]
        if rest.size == 0:
            continue
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[ovr.astype(np.float64) > float(iou_threshold)]] = True
    return np.asarray(keep, dtype=np.int64)


def nms(boxes: Any, scores: Any, iou_threshold: float) -> Tensor:
    """Non-maximum suppression: the int64 indices of the kept (x1, y1, x2, y2) boxes, in decreasing
    order of score; a box is dropped when its IoU with a higher-scoring kept box is > iou_threshold
    (ties in score keep their input order: a stable sort). Eager only: inside av.compile/av.grad it
    raises a TypeError (the result's length depends on the values)."""
    b, s = _t(boxes), _t(scores)
    _eager_only("nms", b, s)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"nms: boxes should be a 2d tensor of shape (N, 4), got {b.shape}")
    if s.ndim != 1 or s.shape[0] != b.shape[0]:
        raise ValueError(f"nms: scores should be a 1d tensor of shape ({b.shape[0]},), got {s.shape}")
    return Tensor(_nms_numpy(b.numpy(), s.numpy(), iou_threshold))


def batched_nms(boxes: Any, scores: Any, idxs: Any, iou_threshold: float) -> Tensor:
    """nms within each category of `idxs` (boxes of different categories never suppress each
    other); the kept indices in decreasing order of score. torchvision's two strategies, chosen as
    it does: up to 4000 box coordinates, one nms of boxes offset per category by (max coordinate +
    1); more, one nms per category. Eager only."""
    b, s, ix = _t(boxes), _t(scores), _t(idxs)
    _eager_only("batched_nms", b, s, ix)
    if b.numel() == 0:
        return Tensor(np.zeros((0,), dtype=np.int64))
    bn, sn, cn = b.numpy(), s.numpy(), ix.numpy()
    if b.numel() <= 4000:
        work = bn if bn.dtype in (np.float32, np.float64) else bn.astype(np.float32)
        offsets = cn.astype(work.dtype) * (work.max() + work.dtype.type(1))
        return Tensor(_nms_numpy(work + offsets[:, None], sn, iou_threshold))
    keep_mask = np.zeros(sn.shape[0], dtype=bool)
    for cls in np.unique(cn):
        cur = np.flatnonzero(cn == cls)
        keep_mask[cur[_nms_numpy(bn[cur], sn[cur], iou_threshold)]] = True
    kept = np.flatnonzero(keep_mask)
    return Tensor(kept[np.argsort(-sn[kept], kind="stable")].astype(np.int64))


# ----------------------------------------------------------------------------------- losses


def sigmoid_focal_loss(inputs: Any, targets: Any, alpha: float = 0.25, gamma: float = 2,
                       reduction: str = "none") -> Tensor:
    """RetinaNet's focal loss: BCE-with-logits * (1 - p_t)^gamma, weighted by alpha_t when alpha >= 0."""
    x, t = _t(inputs), _t(targets)
    p = _o.sigmoid(x)
    ce_loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * t + (1 - alpha) * (1 - t)
        loss = alpha_t * loss
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"Invalid Value for arg 'reduction': '{reduction} \n Supported reduction modes: 'none', "
                         f"'mean', 'sum'")
    return _reduce(loss, reduction, empty_mean_zero=False)


def _loss_inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    x1, y1, x2, y2 = _unbind(boxes1)
    x1g, y1g, x2g, y2g = _unbind(boxes2)
    xkis1, ykis1 = _o.maximum(x1, x1g), _o.maximum(y1, y1g)
    xkis2, ykis2 = _o.minimum(x2, x2g), _o.minimum(y2, y2g)
    mask = _o.logical_and(_o.gt(ykis2, ykis1), _o.gt(xkis2, xkis1))
    intsctk = _o.where(mask, (xkis2 - xkis1) * (ykis2 - ykis1), 0.0)
    unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
    return intsctk, unionk


def generalized_box_iou_loss(boxes1: Any, boxes2: Any, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """1 - GIoU of matching (x1, y1, x2, y2) boxes ([N, 4] or [4] each)."""
    b1, b2 = _upcast_non_float(_t(boxes1)), _upcast_non_float(_t(boxes2))
    intsctk, unionk = _loss_inter_union(b1, b2)
    iouk = intsctk / (unionk + eps)
    x1, y1, x2, y2 = _unbind(b1)
    x1g, y1g, x2g, y2g = _unbind(b2)
    area_c = (_o.maximum(x2, x2g) - _o.minimum(x1, x1g)) * (_o.maximum(y2, y2g) - _o.minimum(y1, y1g))
    miouk = iouk - ((area_c - unionk) / (area_c + eps))
    return _reduce(1 - miouk, reduction)


def _diou_iou_loss(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    intsct, union = _loss_inter_union(boxes1, boxes2)
    iou = intsct / (union + eps)
    x1, y1, x2, y2 = _unbind(boxes1)
    x1g, y1g, x2g, y2g = _unbind(boxes2)
    xc1, yc1 = _o.minimum(x1, x1g), _o.minimum(y1, y1g)
    xc2, yc2 = _o.maximum(x2, x2g), _o.maximum(y2, y2g)
    diagonal_distance_squared = ((xc2 - xc1) ** 2) + ((yc2 - yc1) ** 2) + eps
    x_p, y_p = (x2 + x1) / 2, (y2 + y1) / 2
    x_g, y_g = (x1g + x2g) / 2, (y1g + y2g) / 2
    centers_distance_squared = ((x_p - x_g) ** 2) + ((y_p - y_g) ** 2)
    loss = 1 - iou + (centers_distance_squared / diagonal_distance_squared)
    return loss, iou


def distance_box_iou_loss(boxes1: Any, boxes2: Any, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """1 - DIoU of matching boxes."""
    loss, _ = _diou_iou_loss(_upcast_non_float(_t(boxes1)), _upcast_non_float(_t(boxes2)), eps)
    return _reduce(loss, reduction)


def complete_box_iou_loss(boxes1: Any, boxes2: Any, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """1 - CIoU of matching boxes (alpha without gradient, as torchvision's no_grad)."""
    b1, b2 = _upcast_non_float(_t(boxes1)), _upcast_non_float(_t(boxes2))
    diou_loss, iou = _diou_iou_loss(b1, b2, eps)
    x1, y1, x2, y2 = _unbind(b1)
    x1g, y1g, x2g, y2g = _unbind(b2)
    w_pred, h_pred = x2 - x1, y2 - y1
    w_gt, h_gt = x2g - x1g, y2g - y1g
    v = (4 / (math.pi ** 2)) * _o.pow(_o.atan(w_gt / h_gt) - _o.atan(w_pred / h_pred), 2)
    alpha = _o.stop_gradient(v / (1 - iou + v + eps))
    return _reduce(diou_loss + alpha * v, reduction)


# ----------------------------------------------------------------------------------- RoI ops


def _rois(boxes: Any, where: str) -> Tensor:
    """Tensor[K, 5] (batch index, x1, y1, x2, y2) from itself or from a list of Tensor[L, 4]."""
    if isinstance(boxes, (list, tuple)):
        parts = []
        for i, b in enumerate(boxes):
            b = _t(b)
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"{where}: the shape of the tensor in the boxes list is not correct as "
                                 f"List[Tensor[L, 4]], got {b.shape}")
            parts.append(_o.concat([_o.full((b.shape[0], 1), i, b.dtype), b], 1))
        if not parts:
            return _o.zeros((0, 5))
        return parts[0] if len(parts) == 1 else _o.concat(parts, 0)
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{where}: boxes is expected to be a Tensor[L, 5] or a List[Tensor[K, 4]], got "
                        f"{type(boxes).__name__}")
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"{where}: the boxes tensor shape is not correct as Tensor[K, 5], got {boxes.shape}")
    return boxes


def _features(input: Any, where: str) -> Tensor:
    x = _t(input)
    if x.ndim != 4 or not x.dtype.is_float:
        raise ValueError(f"{where}: expected a floating (N, C, H, W) input, got {x.dtype.name} {x.shape}")
    return x


def _bound(name: str, t: Tensor, static: int) -> int:
    """The largest value of a concrete integer-valued tensor (at least 1), or `static` when traced (said
    once per call site: a larger box would be sampled more sparsely than torchvision samples it)."""
    if t.is_traced:
        import warnings
        warnings.warn(f"{name}: with boxes traced (their values unknown while compiling) the adaptive sample "
                      f"count is capped at {max(1, static)} per bin axis, exact for boxes inside the feature map; "
                      "a larger box is sampled more sparsely than torchvision's. Pass sampling_ratio > 0 "
                      "(torchvision's detection models use 2) for exact results everywhere", UserWarning, stacklevel=4)
        return max(1, static)
    a = t.numpy()
    if a.size == 0:
        return 1
    top = float(np.max(a))
    if not math.isfinite(top):
        raise ValueError(f"{name}: the boxes have non-finite coordinates")
    return max(1, int(top))


def _sample_axis(start: Tensor, bin_size: Tensor, roi_len: Tensor, pooled: int, sampling_ratio: int, size: int,
                 where: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Along one axis of roi_align: (low index, high index, low weight, high weight) per (roi, bin,
    sample), each (K, P, G), and the number of samples per bin (K,) as the feature dtype. The
    weights are the kernel's (1 - l, l) with a zero where the sample lies beyond [-1, size] or past
    the RoI's own sample count."""
    k, d = start.shape[0], start.dtype
    if sampling_ratio > 0:
        g = int(sampling_ratio)
        grid = _o.full((k,), float(g), d)
        valid = None
    else:
        grid = _o.ceil(roi_len / pooled)
        g = _bound(where, grid, math.ceil(size / pooled))
        if grid.is_traced:
            grid = _o.minimum(grid, float(g))
        valid = _o.lt(_o.iota((1, 1, g), 2, d), grid[:, None, None])
    p = _o.iota((1, pooled, 1), 1, d)
    i = _o.iota((1, 1, g), 2, d)
    safe = _o.maximum(grid, 1.0)[:, None, None]
    b = bin_size[:, None, None]
    coord = (start[:, None, None] + p * b) + ((i + 0.5) * b) / safe
    inside = _o.logical_and(_o.ge(coord, -1.0), _o.le(coord, float(size)))
    if valid is not None:
        inside = _o.logical_and(inside, valid)
    c = _o.clamp(_o.where(_o.le(coord, 0.0), 0.0, coord), max=float(size))
    c = _o.where(inside, c, 0.0)  # (nan/inf of a masked sample never reaches an index)
    low = _o.cast(_o.floor(c), dt.int64)
    edge = _o.ge(low, size - 1)
    low = _o.where(edge, size - 1, low)
    high = _o.where(edge, size - 1, low + 1)
    c = _o.where(edge, _o.cast(low, d), c)
    lw = c - _o.cast(low, d)
    hw = 1.0 - lw
    m = _o.cast(inside, d)
    return low, high, hw * m, lw * m, grid


def roi_align(input: Any, boxes: Any, output_size: Any, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> Tensor:
    """RoI Align (Mask R-CNN): input (N, C, H, W), boxes Tensor[K, 5] (batch index, x1, y1, x2, y2)
    or a list of Tensor[L, 4] (one per image) -> (K, C, PH, PW), each bin the average of a
    sampling_ratio^2 grid (adaptive: ceil(roi size / output size) per axis) of bilinear samples,
    torchvision's conventions (aligned's half-pixel shift, samples beyond -1 / H zero, clamping to
    the border). Differentiable w.r.t. the input; see the module docstring for traced boxes."""
    x = _features(input, "roi_align")
    rois = _o.stop_gradient(_rois(boxes, "roi_align"))
    ph, pw = _pair(output_size)
    if rois.shape[0] == 0:
        return _o.zeros((0, x.shape[1], ph, pw), dtype=x.dtype)
    vals, wts, gy, gx = roi_corner_samples(x, rois, ph, pw, spatial_scale, int(sampling_ratio), aligned, "roi_align")
    out = _o.sum(vals * _o.expand_dims(wts, -1), (0, 3, 5))           # (K, PH, PW, C)
    count = _o.maximum(gy * gx, 1.0)
    out = out / _o.reshape(count, (rois.shape[0], 1, 1, 1))
    return _o.movedim(out, 3, 1)


def roi_corner_samples(x: Tensor, rois: Tensor, ph: int, pw: int, spatial_scale: float, sampling_ratio: int,
                       aligned: bool, where: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """roi_align's sampling (torchvision's kernel, also ONNX RoiAlign's): the 4 bilinear corner values
    of every sample, (4, K, PH, GH, PW, GW, C), their weights (4, K, PH, GH, PW, GW) and each RoI's
    sample counts along y and x (K,). How a bin combines them is the caller's (average, or ONNX's max)."""
    if rois.dtype is not x.dtype:
        rois = _o.cast(rois, x.dtype)
    n, c, h, w = x.shape
    k = rois.shape[0]
    off = 0.5 if aligned else 0.0
    bidx = _o.cast(rois[:, 0], dt.int64)
    sw, sh = rois[:, 1] * spatial_scale - off, rois[:, 2] * spatial_scale - off
    ew, eh = rois[:, 3] * spatial_scale - off, rois[:, 4] * spatial_scale - off
    rw, rh = ew - sw, eh - sh
    if not aligned:
        rw, rh = _o.clamp(rw, min=1.0), _o.clamp(rh, min=1.0)
    yl, yh, wyl, wyh, gy = _sample_axis(sh, rh / ph, rh, ph, sampling_ratio, h, where)
    xl, xh, wxl, wxh, gx = _sample_axis(sw, rw / pw, rw, pw, sampling_ratio, w, where)
    gh, gw = yl.shape[2], xl.shape[2]

    def ys(t: Tensor) -> Tensor:
        return _o.reshape(t, (k, ph, gh, 1, 1))

    def xs(t: Tensor) -> Tensor:
        return _o.reshape(t, (k, 1, 1, pw, gw))

    base = _o.reshape(bidx * (h * w), (k, 1, 1, 1, 1))
    rows = [base + ys(yl) * w, base + ys(yh) * w]
    cols = [xs(xl), xs(xh)]
    wy, wx = [ys(wyl), ys(wyh)], [xs(wxl), xs(wxh)]
    corners = [(0, 0), (0, 1), (1, 0), (1, 1)]  # the kernel's w1..w4: (hy hx), (hy lx), (ly hx), (ly lx)
    idx = _o.stack([rows[a] + cols[b] for a, b in corners], 0)
    wts = _o.stack([_o.broadcast_to(wy[a] * wx[b], (k, ph, gh, pw, gw)) for a, b in corners], 0)
    pixels = _o.reshape(_o.movedim(x, 1, 3), (n * h * w, c))
    return _o.take(pixels, idx, 0), wts, gy, gx


def _round_half_away(v: Tensor) -> Tensor:
    return _o.sign(v) * _o.floor(_o.abs(v) + 0.5)


def roi_pool(input: Any, boxes: Any, output_size: Any, spatial_scale: float = 1.0) -> Tensor:
    """RoI max pooling (Fast R-CNN): box corners rounded (half away from zero) to feature pixels,
    the RoI (at least 1 x 1, inclusive ends) split into PH x PW bins of floor/ceil extents, each bin
    the maximum of its window (0 for an empty one); the gradient goes to the first maximum, as
    torchvision's argmax. Boxes as for roi_align."""
    x = _features(input, "roi_pool")
    rois = _o.stop_gradient(_rois(boxes, "roi_pool"))
    if rois.dtype is not x.dtype:
        rois = _o.cast(rois, x.dtype)
    ph, pw = _pair(output_size)
    n, c, h, w = x.shape
    k = rois.shape[0]
    if k == 0:
        return _o.zeros((0, c, ph, pw), dtype=x.dtype)
    d = x.dtype
    bidx = _o.cast(rois[:, 0], dt.int64)

    def axis(lo: Tensor, hi: Tensor, pooled: int, size: int) -> tuple[Tensor, Tensor, Tensor]:
        start = _o.cast(_round_half_away(lo * spatial_scale), dt.int64)
        end = _o.cast(_round_half_away(hi * spatial_scale), dt.int64)
        length = _o.maximum(end - start + 1, 1)
        bin_size = _o.cast(length, d) / pooled
        p = _o.iota((1, pooled), 1, d)
        s = _o.cast(_o.floor(p * bin_size[:, None]), dt.int64)
        e = _o.cast(_o.ceil((p + 1.0) * bin_size[:, None]), dt.int64)
        s = _o.clamp(s + start[:, None], 0, size)
        e = _o.clamp(e + start[:, None], 0, size)
        span = _bound("roi_pool", e - s, min(size, math.ceil((size + 1) / pooled) + 1))
        at = s[:, :, None] + _o.iota((1, 1, span), 2, dt.int64)                 # (K, P, span)
        ok = _o.lt(at, e[:, :, None])
        return _o.minimum(at, size - 1), ok, _o.le(e, s)

    ry, oky, ey = axis(rois[:, 2], rois[:, 4], ph, h)
    rx, okx, ex = axis(rois[:, 1], rois[:, 3], pw, w)
    bh, bw = ry.shape[2], rx.shape[2]
    idx = (_o.reshape(bidx * (h * w), (k, 1, 1, 1, 1)) + _o.reshape(ry * w, (k, ph, bh, 1, 1))
           + _o.reshape(rx, (k, 1, 1, pw, bw)))
    ok = _o.logical_and(_o.reshape(oky, (k, ph, bh, 1, 1)), _o.reshape(okx, (k, 1, 1, pw, bw)))
    pixels = _o.reshape(_o.movedim(x, 1, 3), (n * h * w, c))
    vals = _o.take(pixels, idx, 0)                                               # (K, PH, BH, PW, BW, C)
    vals = _o.where(_o.expand_dims(ok, -1), vals, -math.inf)
    vals = _o.reshape(_o.permute(vals, (0, 1, 3, 5, 2, 4)), (k, ph, pw, c, bh * bw))
    best = _o.take_along_dim(vals, _o.argmax(vals, -1, keepdims=True), -1)[..., 0]  # (K, PH, PW, C)
    empty = _o.logical_or(_o.reshape(ey, (k, ph, 1, 1)), _o.reshape(ex, (k, 1, pw, 1)))
    return _o.movedim(_o.where(empty, 0.0, best), 3, 1)


class RoIAlign(nn.Module):
    """See roi_align."""

    def __init__(self, output_size: Any, spatial_scale: float, sampling_ratio: int, aligned: bool = False) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Any, rois: Any) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})")


class RoIPool(nn.Module):
    """See roi_pool."""

    def __init__(self, output_size: Any, spatial_scale: float) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Any, rois: Any) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"


class LevelMapper:
    """FPN paper eq. 1: the pyramid level each box is pooled from, floor(canonical_level +
    log2(sqrt(area) / canonical_scale) + eps) clamped to [k_min, k_max], minus k_min."""

    def __init__(self, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4,
                 eps: float = 1e-6) -> None:
        self.k_min, self.k_max = k_min, k_max
        self.s0, self.lvl0, self.eps = canonical_scale, canonical_level, eps

    def __call__(self, boxlists: Sequence[Tensor]) -> Tensor:
        s = _o.sqrt(_o.concat([box_area(_t(b)) for b in boxlists], 0))
        lv = _o.floor(self.lvl0 + _o.log2(s / self.s0) + self.eps)
        lv = _o.clamp(lv, min=self.k_min, max=self.k_max)
        return _o.cast(lv, dt.int64) - self.k_min


def _infer_scale(feature: Tensor, original_size: Sequence[int]) -> float:
    scales = [2.0 ** round(math.log2(float(s1) / float(s2))) for s1, s2 in zip(feature.shape[-2:], original_size)]
    return scales[0]


class MultiScaleRoIAlign(nn.Module):
    """roi_align over an FPN's levels: each box pooled from the level LevelMapper assigns it (the
    levels and their scales inferred from the feature and image sizes on the first call, as
    torchvision). With concrete boxes each level pools only its own boxes; with traced ones every
    level pools every box and a `where` keeps the assigned level's (static shapes, L times the work)."""

    def __init__(self, featmap_names: list[str], output_size: Any, sampling_ratio: int, *,
                 canonical_scale: int = 224, canonical_level: int = 4) -> None:
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = featmap_names
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.scales: list[float] | None = None
        self.map_levels: LevelMapper | None = None
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def _setup(self, feats: list[Tensor], image_shapes: Sequence[Sequence[int]]) -> None:
        max_x = max((int(s[0]) for s in image_shapes), default=0)
        max_y = max((int(s[1]) for s in image_shapes), default=0)
        scales = [_infer_scale(f, (max_x, max_y)) for f in feats]
        lvl_min = -math.log2(scales[0])
        lvl_max = -math.log2(scales[-1])
        self.scales = scales
        self.map_levels = LevelMapper(int(lvl_min), int(lvl_max), self.canonical_scale, self.canonical_level)

    def forward(self, x: Mapping[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = [v for kk, v in x.items() if kk in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self._setup(feats, image_shapes)
        assert self.scales is not None and self.map_levels is not None
        rois = _rois(list(boxes), "MultiScaleRoIAlign")
        if len(feats) == 1:
            return roi_align(feats[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        k, c = rois.shape[0], feats[0].shape[1]
        if not _traced(levels):
            lv = levels.numpy()
            result = _o.zeros((k, c) + self.output_size, dtype=feats[0].dtype)
            for level, (f, scale) in enumerate(zip(feats, self.scales)):
                at = np.flatnonzero(lv == level)
                if at.size == 0:
                    continue
                pooled = roi_align(f, rois[at], self.output_size, scale, self.sampling_ratio)
                result = _o.index_put(result, (Tensor(at.astype(np.int64)),), _o.cast(pooled, result.dtype))
            return result
        result = None
        for level, (f, scale) in enumerate(zip(feats, self.scales)):
            pooled = roi_align(f, rois, self.output_size, scale, self.sampling_ratio)
            here = _o.reshape(_o.eq(levels, level), (k, 1, 1, 1))
            result = _o.where(here, pooled, 0.0) if result is None else _o.where(here, pooled, result)
        return result

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio})")


# ----------------------------------------------------------------------------------- regularizers


def stochastic_depth(input: Any, p: float, mode: str, training: bool = True) -> Tensor:
    """Zero the whole input ("batch") or whole rows ("row") with probability p in training, scaling
    the survivors by 1 / (1 - p); the identity when not training. Draws from Avalon's random stream
    (a fresh seed per call; a traced graph draws anew per run)."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ("batch", "row"):
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    x = _t(input)
    if not training or p == 0.0:
        return x
    survival_rate = 1.0 - p
    size = (x.shape[0],) + (1,) * (x.ndim - 1) if mode == "row" else (1,) * x.ndim
    noise = _o.cast(_o.lt(_o.random(next_seed(), size, "uniform"), survival_rate), x.dtype)
    if survival_rate > 0.0:
        noise = noise / survival_rate
    return x * noise


class StochasticDepth(nn.Module):
    """See stochastic_depth."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, input: Any) -> Tensor:
        return stochastic_depth(input, self.p, self.mode, self.training)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, mode={self.mode})"


def _drop_block(name: str, input: Any, p: float, block_size: int, inplace: bool, eps: float, training: bool,
                spatial: int) -> Tensor:
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    x = _t(input)
    if not training or p == 0.0:
        return x
    if x.ndim != spatial + 2:
        raise ValueError(f"{name}: expected a {spatial + 2}-d input, got {x.shape}")
    sizes = x.shape[2:]
    gamma = p * math.prod(sizes) / ((block_size ** spatial) * math.prod(s - block_size + 1 for s in sizes))
    shape = x.shape[:2] + tuple(s - block_size + 1 for s in sizes)
    noise = _o.cast(_o.lt(_o.random(next_seed(), shape, "uniform"), gamma), x.dtype)
    noise = F.pad(noise, [block_size // 2] * (2 * spatial), value=0)
    pool = F.max_pool2d if spatial == 2 else F.max_pool3d
    noise = pool(noise, stride=(1,) * spatial, kernel_size=(block_size,) * spatial, padding=block_size // 2)
    noise = 1 - noise
    normalize_scale = noise.numel() / (eps + _o.sum(noise))
    if inplace:
        return x.mul_(noise).mul_(normalize_scale)
    return x * noise * normalize_scale


def drop_block2d(input: Any, p: float, block_size: int, inplace: bool = False, eps: float = 1e-06,
                 training: bool = True) -> Tensor:
    """DropBlock on (N, C, H, W): zero block_size^2 squares seeded with probability gamma, rescale."""
    return _drop_block("drop_block2d", input, p, block_size, inplace, eps, training, 2)


def drop_block3d(input: Any, p: float, block_size: int, inplace: bool = False, eps: float = 1e-06,
                 training: bool = True) -> Tensor:
    """DropBlock on (N, C, D, H, W)."""
    return _drop_block("drop_block3d", input, p, block_size, inplace, eps, training, 3)


class DropBlock2d(nn.Module):
    """See drop_block2d."""

    def __init__(self, p: float, block_size: int, inplace: bool = False, eps: float = 1e-06) -> None:
        super().__init__()
        self.p, self.block_size, self.inplace, self.eps = p, block_size, inplace, eps

    def forward(self, input: Any) -> Tensor:
        return drop_block2d(input, self.p, self.block_size, self.inplace, self.eps, self.training)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, block_size={self.block_size}, inplace={self.inplace})"


class DropBlock3d(DropBlock2d):
    """See drop_block3d."""

    def forward(self, input: Any) -> Tensor:
        return drop_block3d(input, self.p, self.block_size, self.inplace, self.eps, self.training)


# ----------------------------------------------------------------------------------- layers


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all four buffers (weight, bias,
    running_mean, running_var; no parameters): x * w / sqrt(rv + eps) + (b - rm * scale). Loading a
    BatchNorm2d state dict into it directly drops its num_batches_tracked entry, as torchvision's."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", _o.ones((num_features,)))
        self.register_buffer("bias", _o.zeros((num_features,)))
        self.register_buffer("running_mean", _o.zeros((num_features,)))
        self.register_buffer("running_var", _o.ones((num_features,)))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
        return super().load_state_dict({k: v for k, v in state_dict.items() if k != "num_batches_tracked"}, strict)

    def forward(self, x: Any) -> Tensor:
        x = _t(x)
        w = _o.reshape(self.weight, (1, -1, 1, 1))
        b = _o.reshape(self.bias, (1, -1, 1, 1))
        rv = _o.reshape(self.running_var, (1, -1, 1, 1))
        rm = _o.reshape(self.running_mean, (1, -1, 1, 1))
        scale = w * _o.rsqrt(rv + self.eps)
        bias = b - rm * scale
        return x * scale + bias

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.weight.shape[0]}, eps={self.eps})"


class ConvNormActivation(nn.Sequential):
    """Conv, optional norm, optional activation, as a Sequential (keys "0.weight", "1.running_mean",
    ...); padding None means (kernel_size - 1) // 2 * dilation, bias None means no norm layer."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any = 3, stride: Any = 1,
                 padding: Any = None, groups: int = 1, norm_layer: Callable[..., Any] | None = nn.BatchNorm2d,
                 activation_layer: Callable[..., Any] | None = nn.ReLU, dilation: Any = 1,
                 inplace: bool | None = True, bias: bool | None = None,
                 conv_layer: Callable[..., Any] = nn.Conv2d) -> None:
        if padding is None:
            if isinstance(kernel_size, int) and isinstance(dilation, int):
                padding = (kernel_size - 1) // 2 * dilation
            else:
                n = len(kernel_size) if isinstance(kernel_size, Sequence) else len(dilation)
                ks = tuple(kernel_size) if isinstance(kernel_size, Sequence) else (kernel_size,) * n
                dl = tuple(dilation) if isinstance(dilation, Sequence) else (dilation,) * n
                padding = tuple((ks[i] - 1) // 2 * dl[i] for i in range(n))
        if bias is None:
            bias = norm_layer is None
        layers = [conv_layer(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation,
                             groups=groups, bias=bias)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            params = {} if inplace is None else {"inplace": inplace}
            layers.append(activation_layer(**params))
        super().__init__(*layers)
        self.out_channels = out_channels


class Conv2dNormActivation(ConvNormActivation):
    """Conv2d -> norm (BatchNorm2d) -> activation (ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any = 3, stride: Any = 1,
                 padding: Any = None, groups: int = 1, norm_layer: Callable[..., Any] | None = nn.BatchNorm2d,
                 activation_layer: Callable[..., Any] | None = nn.ReLU, dilation: Any = 1,
                 inplace: bool | None = True, bias: bool | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups, norm_layer,
                         activation_layer, dilation, inplace, bias, nn.Conv2d)


class Conv3dNormActivation(ConvNormActivation):
    """Conv3d -> norm (BatchNorm3d) -> activation (ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any = 3, stride: Any = 1,
                 padding: Any = None, groups: int = 1, norm_layer: Callable[..., Any] | None = nn.BatchNorm3d,
                 activation_layer: Callable[..., Any] | None = nn.ReLU, dilation: Any = 1,
                 inplace: bool | None = True, bias: bool | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups, norm_layer,
                         activation_layer, dilation, inplace, bias, nn.Conv3d)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation: input * scale_activation(fc2(activation(fc1(avgpool(input)))))."""

    def __init__(self, input_channels: int, squeeze_channels: int,
                 activation: Callable[..., Any] = nn.ReLU, scale_activation: Callable[..., Any] = nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, input: Tensor) -> Tensor:
        scale = self.avgpool(input)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, input: Any) -> Tensor:
        x = _t(input)
        return self._scale(x) * x


class VisionMLP(nn.Sequential):
    """torchvision.ops.MLP (exported here as `MLP`; the class has its own name beside
    avalon.zoo's MLP model): Linear (-> norm) -> activation -> Dropout per hidden layer, then
    Linear -> Dropout, as a Sequential with torchvision's indices."""

    def __init__(self, in_channels: int, hidden_channels: list[int], norm_layer: Callable[..., Any] | None = None,
                 activation_layer: Callable[..., Any] | None = nn.ReLU, inplace: bool | None = None,
                 bias: bool = True, dropout: float = 0.0) -> None:
        params = {} if inplace is None else {"inplace": inplace}
        layers: list[Any] = []
        in_dim = in_channels
        for hidden_dim in hidden_channels[:-1]:
            layers.append(nn.Linear(in_dim, hidden_dim, bias=bias))
            if norm_layer is not None:
                layers.append(norm_layer(hidden_dim))
            layers.append(activation_layer(**params))
            layers.append(nn.Dropout(dropout, **params))
            in_dim = hidden_dim
        layers.append(nn.Linear(in_dim, hidden_channels[-1], bias=bias))
        layers.append(nn.Dropout(dropout, **params))
        super().__init__(*layers)


class PermuteDims(nn.Module):
    """torchvision.ops.Permute (exported here as `Permute`; avalon.views has a Permute view
    record): torch.permute as a module."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Any) -> Tensor:
        return _o.permute(_t(x), self.dims)


MLP = VisionMLP
Permute = PermuteDims

# ----------------------------------------------------------------------------------- FPN


class ExtraFPNBlock(nn.Module):
    """Base of the FPN's extra blocks: forward(results, x, names) -> (results, names)."""

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        raise NotImplementedError


class LastLevelMaxPool(ExtraFPNBlock):
    """A "pool" level: max_pool2d(kernel 1, stride 2) of the last result."""

    def forward(self, x: list[Tensor], y: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        names.append("pool")
        x.append(F.max_pool2d(x[-1], kernel_size=1, stride=2, padding=0))
        return x, names


class LastLevelP6P7(ExtraFPNBlock):
    """RetinaNet's P6 and P7 levels (3x3 stride-2 convolutions)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            nn.init.kaiming_uniform_(module.weight, a=1)
            nn.init.constant_(module.bias, 0)
        self.use_P5 = in_channels == out_channels

    def forward(self, p: list[Tensor], c: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p5, c5 = p[-1], c[-1]
        x = p5 if self.use_P5 else c5
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6))
        p.extend([p6, p7])
        names.extend(["p6", "p7"])
        return p, names


class FeaturePyramidNetwork(nn.Module):
    """FPN over an ordered dict of feature maps (increasing depth): 1x1 lateral convolutions
    (inner_blocks.i.0), nearest top-down upsampling, 3x3 output convolutions (layer_blocks.i.0),
    then the optional extra block. A state dict of torchvision's version 1 (inner_blocks.i.weight)
    loads too when this is the model loaded."""

    def __init__(self, in_channels_list: list[int], out_channels: int, extra_blocks: ExtraFPNBlock | None = None,
                 norm_layer: Callable[..., Any] | None = None) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList()
        self.layer_blocks = nn.ModuleList()
        for in_channels in in_channels_list:
            if in_channels == 0:
                raise ValueError("in_channels=0 is currently not supported")
            self.inner_blocks.append(Conv2dNormActivation(in_channels, out_channels, kernel_size=1, padding=0,
                                                          norm_layer=norm_layer, activation_layer=None))
            self.layer_blocks.append(Conv2dNormActivation(out_channels, out_channels, kernel_size=3,
                                                          norm_layer=norm_layer, activation_layer=None))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        if extra_blocks is not None and not isinstance(extra_blocks, ExtraFPNBlock):
            raise TypeError(f"extra_blocks should be of type ExtraFPNBlock not {type(extra_blocks)}")
        self.extra_blocks = extra_blocks

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
        sd = dict(state_dict)
        for block in ("inner_blocks", "layer_blocks"):
            for i in range(len(self.inner_blocks)):
                for kind in ("weight", "bias"):
                    old, new = f"{block}.{i}.{kind}", f"{block}.{i}.0.{kind}"
                    if old in sd and new not in sd:
                        sd[new] = sd.pop(old)
        return super().load_state_dict(sd, strict)

    def get_result_from_inner_blocks(self, x: Tensor, idx: int) -> Tensor:
        return self.inner_blocks[idx](x)

    def get_result_from_layer_blocks(self, x: Tensor, idx: int) -> Tensor:
        return self.layer_blocks[idx](x)

    def forward(self, x: Mapping[str, Tensor]) -> dict[str, Tensor]:
        names = list(x.keys())
        feats = list(x.values())
        last_inner = self.get_result_from_inner_blocks(feats[-1], -1)
        results = [self.get_result_from_layer_blocks(last_inner, -1)]
        for idx in range(len(feats) - 2, -1, -1):
            inner_lateral = self.get_result_from_inner_blocks(feats[idx], idx)
            feat_shape = tuple(inner_lateral.shape[-2:])
            inner_top_down = F.interpolate(last_inner, size=feat_shape, mode="nearest")
            last_inner = inner_lateral + inner_top_down
            results.insert(0, self.get_result_from_layer_blocks(last_inner, idx))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        return OrderedDict(zip(names, results))


__all__ = [
    "Conv2dNormActivation", "Conv3dNormActivation", "ConvNormActivation", "DeformConv2d", "DropBlock2d",
    "DropBlock3d", "ExtraFPNBlock", "FeaturePyramidNetwork", "FrozenBatchNorm2d", "LastLevelMaxPool",
    "LastLevelP6P7", "MLP", "MultiScaleRoIAlign", "Permute", "PermuteDims", "RoIAlign", "RoIPool",
    "SqueezeExcitation", "StochasticDepth", "VisionMLP", "batched_nms", "box_area", "box_area_center",
    "box_convert", "box_iou", "box_iou_center", "clip_boxes_to_image", "complete_box_iou", "complete_box_iou_loss",
    "deform_conv2d", "distance_box_iou", "distance_box_iou_loss", "drop_block2d", "drop_block3d",
    "generalized_box_iou", "generalized_box_iou_loss", "masks_to_boxes", "nms", "remove_small_boxes", "roi_align",
    "roi_pool", "sigmoid_focal_loss", "stochastic_depth",
]
