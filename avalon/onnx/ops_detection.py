"""ONNX NonMaxSuppression (the last step of exported detectors: SSD, YOLO, torchvision's) and NonZero.

How many boxes survive depends on the values, so the result's shape is data-dependent: the rule
runs when the boxes and scores are known (eager calls), on numpy, and tracing raises `NeedsConstant`
naming the node; the detector's network before it traces and compiles as usual.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .table import Node, onnx_op, static


def _corners(boxes: np.ndarray, center: bool) -> np.ndarray:
    """(..., 4) boxes as (y1, x1, y2, x2) with y1 <= y2, x1 <= x2."""
    if center:
        xc, yc, w, h = np.moveaxis(boxes, -1, 0)
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], -1)
    y1, x1, y2, x2 = np.moveaxis(boxes, -1, 0)
    return np.stack([np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)], -1)


def _iou(one: np.ndarray, many: np.ndarray) -> np.ndarray:
    """IoU of one corner box with each of `many`; 0 where a box has no area or they do not overlap."""
    h = np.minimum(one[2], many[:, 2]) - np.maximum(one[0], many[:, 0])
    w = np.minimum(one[3], many[:, 3]) - np.maximum(one[1], many[:, 1])
    inter = np.where((h > 0) & (w > 0), h * w, 0.0)
    a1 = (one[2] - one[0]) * (one[3] - one[1])
    a2 = (many[:, 2] - many[:, 0]) * (many[:, 3] - many[:, 1])
    union = a1 + a2 - inter
    ok = (inter > 0) & (a1 > 0) & (a2 > 0) & (union > 0)
    return np.where(ok, inter / np.where(ok, union, 1.0), 0.0)


@onnx_op("NonMaxSuppression")
def non_max_suppression(node: Node, boxes: Any, scores: Any, max_out: Any = None, iou: Any = None,
                        score_min: Any = None) -> np.ndarray:
    """Per batch and class, greedily the highest-scoring box (ties: the lower index) above
    score_threshold, dropping the rest that overlap it by IoU > iou_threshold, up to
    max_output_boxes_per_class (0 when absent); rows (batch, class, box), int64."""
    b = np.asarray(static(boxes, "the boxes (NonMaxSuppression's output size depends on them)"), np.float64)
    s = np.asarray(static(scores, "the scores (NonMaxSuppression's output size depends on them)"), np.float64)
    limit = int(np.asarray(static(max_out, "max_output_boxes_per_class")).reshape(-1)[0]) if max_out is not None else 0
    t_iou = float(np.asarray(static(iou, "iou_threshold")).reshape(-1)[0]) if iou is not None else 0.0
    t_score = float(np.asarray(static(score_min, "score_threshold")).reshape(-1)[0]) if score_min is not None else None
    corners = _corners(b, bool(node.attr("center_point_box", 0)))
    rows = []
    for n in range(s.shape[0]):
        for c in range(s.shape[1]):
            sc = s[n, c]
            cand = np.flatnonzero(sc > t_score) if t_score is not None else np.arange(sc.size)
            cand = cand[np.lexsort((cand, -sc[cand]))]  # by score, then by index
            kept: list[int] = []
            while cand.size and len(kept) < max(limit, 0):
                top = int(cand[0])
                kept.append(top)
                rest = cand[1:]
                cand = rest[_iou(corners[n, top], corners[n, rest]) <= t_iou]
            rows += [(n, c, k) for k in kept]
    return np.asarray(rows, np.int64).reshape(-1, 3)


@onnx_op("NonZero")
def non_zero(node: Node, x: Any) -> np.ndarray:
    """(rank, count) int64 indices of the nonzero elements in row-major order; data-dependent."""
    return np.stack(np.nonzero(np.asarray(static(x, "the input (NonZero's output size depends on it)"))), 0) \
        .astype(np.int64).reshape(np.ndim(static(x)), -1)
