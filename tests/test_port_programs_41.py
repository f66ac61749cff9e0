"""Round 10a of port QA: programs written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random float32 data and compared with torch after every step (losses,
outputs, gradients, parameters and buffers), the first step eagerly and the rest compiled.

Programs: torchvision.ops' box losses as torchvision writes them in Python (boxes.py's `_upcast`, `box_area`,
`_box_inter_union`'s broadcast `torch.max(boxes1[:, None, :2], boxes2[:, :2])` and `box_iou`; _utils.py's
`_loss_inter_union` with its boolean-mask write `intsctk[mask] = ...`, `unbind(dim=-1)`; giou_loss.py, diou_loss.py's
`_diou_iou_loss`, ciou_loss.py's `torch.atan` aspect term with `alpha` under `torch.no_grad()`, focal_loss.py's
`sigmoid_focal_loss`, each with its reductions), training a tiny box head, and the coordinate trick of
`_batched_nms_coordinate_trick` over a Python greedy nms by `argsort(descending=True)` and boolean indexing, run
eagerly; the PyTorch tutorial "NLP From Scratch: Translation with a Sequence to Sequence Network and Attention"
(EncoderRNN's one-token GRU steps, AttnDecoderRNN's attention over `max_length` by `torch.bmm` of unsqueezed weights,
`encoder_outputs[ei] = encoder_output[0, 0]` into `torch.zeros`, `random.random() < teacher_forcing_ratio` with
Python's random seeded alike on both sides, greedy decoding by `topk(1)` and `topi.squeeze().detach()`, a summed
NLLLoss divided by the target length, one SGD optimizer per network); lukemelas/EfficientNet-PyTorch's MBConvBlock
(Conv2dStaticSamePadding, `MemoryEfficientSwish` as a `torch.autograd.Function` with its hand-written backward,
squeeze-and-excitation by `F.adaptive_avg_pool2d` and `torch.sigmoid(x_squeezed) * x`, BatchNorm with momentum
`1 - 0.99` and eps 1e-3, `drop_connect`'s `random_tensor += torch.rand(...)` and `torch.floor`, the skip when the
stride is 1 and the filters match, `drop_connect_rate *= float(idx) / len(self._blocks)`), trained by RMSprop with
`torch.nn.utils.clip_grad_value_`; d-li14/involution's naive involution (`nn.Unfold(kernel_size, 1, (kernel_size -
1) // 2, stride)`, the generated kernel `view(...).unsqueeze(2)`, `(weight * out).sum(dim=3)`, mmcv's ConvModule as
conv-BN-ReLU, the AvgPool2d reduction for stride 2) in a small classifier trained by SGD with momentum.

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`). The tutorial's greedy branch
`if decoder_input.item() == EOS_token: break` asks a traced value in Python (refused, tested): the port multiplies
each step's loss by a still-running mask, the same sum. `drop_connect`'s `torch.rand` draw is given to both sides (a
namespace whose `rand` hands out the step's draws, arguments of the step). The decoder's Dropout is off.

torchvision's `intsctk[mask] = (xkis2[mask] - xkis1[mask]) * ...` reads a traced boolean mask, whose result's shape
depends on the data: it runs eagerly and agrees with torch, and under a gradient is refused naming av.where (tested);
the trained port writes `torch.where(mask, ..., intsctk)`, the same values and gradients.

Bug found and fixed: a compiled step (and a reused `av.value_and_grad(f)`, which caches as av.compile does) that drew
from Python's `random` module or numpy's global random state while tracing baked that draw into the cached graph:
every later call reused the first call's coin (the tutorial's teacher forcing, LayerDrop's `random.uniform(0, 1)`,
mixup's `np.random.beta`) and left the stream where it was, silently training a different model from eager torch.
compiler/core.py now compares both streams around each trace; a trace that drew is never cached (traced again on
every call, drawing as an eager call does) and warns, as a trace that captured arrays does. The regressions below.

Not Avalon: sizes are small and learning rates chosen for a few steps; torchvision is not installed here, so nms's
reference is the greedy loop itself, checked against a brute-force numpy nms. The EfficientNet's weights are compared
with a 1e-2 floor: BN biases ahead of the next block's BN have zero gradients in exact arithmetic, roundoff that
RMSprop moves by ~1e-7 on both sides.
"""
from __future__ import annotations

import random
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import rel
from test_port_programs_30 import randn, same_grads
from test_port_programs_36 import steps_like_torch
from test_port_programs_more import pair, same_weights, strict

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache", "torch_on_one_thread")

F32 = torch.float32


# -- 1. torchvision.ops box losses (boxes.py, _utils.py, giou_loss.py, diou_loss.py, ciou_loss.py, focal_loss.py) ----

def box_ops(th, F_, as_written=True):
    torch, F = th, F_

    def _upcast(t):
        # Protects from numerical overflows in multiplications by upcasting to the equivalent higher type
        if t.is_floating_point():
            return t if t.dtype in (torch.float32, torch.float64) else t.float()
        else:
            return t if t.dtype in (torch.int32, torch.int64) else t.int()

    def _upcast_non_float(t):
        # Protects from numerical overflows in multiplications by upcasting to the equivalent higher type
        if t.dtype not in (torch.float32, torch.float64):
            return t.float()
        return t

    def box_area(boxes):
        boxes = _upcast(boxes)
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def _box_inter_union(boxes1, boxes2):
        area1 = box_area(boxes1)
        area2 = box_area(boxes2)

        lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])  # [N,M,2]
        rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])  # [N,M,2]

        wh = _upcast(rb - lt).clamp(min=0)  # [N,M,2]
        inter = wh[:, :, 0] * wh[:, :, 1]  # [N,M]

        union = area1[:, None] + area2 - inter

        return inter, union

    def box_iou(boxes1, boxes2):
        inter, union = _box_inter_union(boxes1, boxes2)
        iou = inter / union
        return iou

    def _loss_inter_union(boxes1, boxes2):
        x1, y1, x2, y2 = boxes1.unbind(dim=-1)
        x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)

        # Intersection keypoints
        xkis1 = torch.max(x1, x1g)
        ykis1 = torch.max(y1, y1g)
        xkis2 = torch.min(x2, x2g)
        ykis2 = torch.min(y2, y2g)

        intsctk = torch.zeros_like(x1)
        mask = (ykis2 > ykis1) & (xkis2 > xkis1)
        if as_written:
            intsctk[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
        else:  # the port under a trace: the same values (and gradients) by torch.where
            intsctk = torch.where(mask, (xkis2 - xkis1) * (ykis2 - ykis1), intsctk)
        unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk

        return intsctk, unionk

    def _reduce(loss, reduction):
        # Check reduction option and return loss accordingly
        if reduction == "none":
            pass
        elif reduction == "mean":
            loss = loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
        elif reduction == "sum":
            loss = loss.sum()
        else:
            raise ValueError(
                f"Invalid Value for arg 'reduction': '{reduction} \n Supported reduction modes: 'none', 'mean', 'sum'"
            )
        return loss

    def generalized_box_iou_loss(boxes1, boxes2, reduction="none", eps=1e-7):
        boxes1 = _upcast_non_float(boxes1)
        boxes2 = _upcast_non_float(boxes2)
        intsctk, unionk = _loss_inter_union(boxes1, boxes2)
        iouk = intsctk / (unionk + eps)

        x1, y1, x2, y2 = boxes1.unbind(dim=-1)
        x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)

        # smallest enclosing box
        xc1 = torch.min(x1, x1g)
        yc1 = torch.min(y1, y1g)
        xc2 = torch.max(x2, x2g)
        yc2 = torch.max(y2, y2g)

        area_c = (xc2 - xc1) * (yc2 - yc1)
        miouk = iouk - ((area_c - unionk) / (area_c + eps))

        loss = 1 - miouk
        return _reduce(loss, reduction)

    def _diou_iou_loss(boxes1, boxes2, eps=1e-7):
        intsct, union = _loss_inter_union(boxes1, boxes2)
        iou = intsct / (union + eps)
        # smallest enclosing box
        x1, y1, x2, y2 = boxes1.unbind(dim=-1)
        x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
        xc1 = torch.min(x1, x1g)
        yc1 = torch.min(y1, y1g)
        xc2 = torch.max(x2, x2g)
        yc2 = torch.max(y2, y2g)
        # The diagonal distance of the smallest enclosing box squared
        diagonal_distance_squared = ((xc2 - xc1) ** 2) + ((yc2 - yc1) ** 2) + eps
        # centers of boxes
        x_p = (x2 + x1) / 2
        y_p = (y2 + y1) / 2
        x_g = (x1g + x2g) / 2
        y_g = (y1g + y2g) / 2
        # The distance between boxes' centers squared.
        centers_distance_squared = ((x_p - x_g) ** 2) + ((y_p - y_g) ** 2)
        # The distance IoU is the IoU penalized by a normalized
        # distance between boxes' centers squared.
        loss = 1 - iou + (centers_distance_squared / diagonal_distance_squared)
        return loss, iou

    def distance_box_iou_loss(boxes1, boxes2, reduction="none", eps=1e-7):
        boxes1 = _upcast_non_float(boxes1)
        boxes2 = _upcast_non_float(boxes2)

        loss, _ = _diou_iou_loss(boxes1, boxes2, eps)
        return _reduce(loss, reduction)

    def complete_box_iou_loss(boxes1, boxes2, reduction="none", eps=1e-7):
        boxes1 = _upcast_non_float(boxes1)
        boxes2 = _upcast_non_float(boxes2)

        diou_loss, iou = _diou_iou_loss(boxes1, boxes2)

        x1, y1, x2, y2 = boxes1.unbind(dim=-1)
        x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)

        # width and height of boxes
        w_pred = x2 - x1
        h_pred = y2 - y1
        w_gt = x2g - x1g
        h_gt = y2g - y1g
        v = (4 / (torch.pi**2)) * torch.pow((torch.atan(w_gt / h_gt) - torch.atan(w_pred / h_pred)), 2)
        with torch.no_grad():
            alpha = v / (1 - iou + v + eps)

        loss = diou_loss + alpha * v
        return _reduce(loss, reduction)

    def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
        p = torch.sigmoid(inputs)
        ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = ce_loss * ((1 - p_t) ** gamma)

        if alpha >= 0:
            alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
            loss = alpha_t * loss
        return _reduce(loss, reduction)

    def nms(boxes, scores, iou_threshold):
        # the greedy loop torchvision's C++ kernel runs, in Python
        order = scores.argsort(descending=True)
        keep = []
        while order.numel() > 0:
            i = order[0]
            keep.append(i)
            if order.numel() == 1:
                break
            ious = box_iou(boxes[i].unsqueeze(0), boxes[order[1:]]).squeeze(0)
            order = order[1:][ious <= iou_threshold]
        return torch.stack(keep) if keep else torch.empty((0,), dtype=torch.int64)

    def _batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold):
        # strategy: in order to perform NMS independently per class,
        # we add an offset to all the boxes. The offset is dependent
        # only on the class idx, and is large enough so that boxes
        # from different classes do not overlap
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64, device=boxes.device)
        max_coordinate = boxes.max()
        offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
        boxes_for_nms = boxes + offsets[:, None]
        keep = nms(boxes_for_nms, scores, iou_threshold)
        return keep

    return types.SimpleNamespace(box_iou=box_iou, giou=generalized_box_iou_loss, diou=distance_box_iou_loss,
                                 ciou=complete_box_iou_loss, focal=sigmoid_focal_loss,
                                 batched_nms=_batched_nms_coordinate_trick, box_area=box_area)


def box_head(lib, F_, th, in_features=6, num_classes=3):
    torch, nn = th, lib

    class BoxHead(nn.Module):
        """anchors plus predicted (dx, dy, log dw, log dh) as torchvision's BoxCoder decodes them, and class logits"""

        def __init__(self):
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(in_features, 16), nn.ReLU())
            self.bbox_pred = nn.Linear(16, 4)
            self.cls_logits = nn.Linear(16, num_classes)

        def forward(self, feats, anchors):
            h = self.trunk(feats)
            d = self.bbox_pred(h)
            widths = anchors[:, 2] - anchors[:, 0]
            heights = anchors[:, 3] - anchors[:, 1]
            ctr_x = anchors[:, 0] + 0.5 * widths
            ctr_y = anchors[:, 1] + 0.5 * heights
            dx, dy, dw, dh = d[:, 0::4], d[:, 1::4], d[:, 2::4], d[:, 3::4]
            pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
            pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
            pred_w = torch.exp(dw) * widths[:, None]
            pred_h = torch.exp(dh) * heights[:, None]
            boxes = torch.stack((pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                                 pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h), dim=2).flatten(1)
            return boxes, self.cls_logits(h)
    return BoxHead()


def random_boxes(rng, n, lo=0.0, hi=10.0):
    xy = rng.uniform(lo, hi, (n, 2))
    wh = rng.uniform(1.0, 4.0, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def test_torchvision_box_losses_giou_diou_ciou_and_focal_on_a_box_head():
    model, tmodel = pair(box_head, dtype=F32)
    optimizer = av.optim.Adam(model.parameters(), lr=1e-2)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):
        anchors = random_boxes(rng, 8)
        # targets near the anchors: some overlap, some do not (both sides of `intsctk[mask] = ...`)
        gt = anchors + rng.uniform(-2.0, 2.0, (8, 4)).astype(np.float32)
        gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 0.5)
        labels = (rng.random((8, 3)) < 0.3).astype(np.float32)
        batches.append((randn(rng, 8, 6), anchors, gt, labels))

    def loss_fn(model, feats, anchors, gt, labels):
        th = torch if isinstance(feats, torch.Tensor) else av
        ops = box_ops(th, TF if th is torch else F, as_written=th is torch)
        boxes, logits = model(feats, anchors)
        loss_cls = ops.focal(logits, labels, reduction="sum") / max(1, labels.shape[0])
        loss_giou = ops.giou(boxes, gt, reduction="mean")
        loss_diou = ops.diou(boxes, gt, reduction="sum")
        loss_ciou = ops.ciou(boxes, gt, reduction="none")
        iou = ops.box_iou(boxes, gt)
        loss = loss_cls + loss_giou + 0.1 * loss_diou + loss_ciou.mean()
        return loss, (loss_cls, loss_giou, loss_diou, loss_ciou, iou)
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, tol=1e-4)

    # torchvision's `intsctk[mask] = (xkis2[mask] - ...)` as written: eagerly it agrees with torch; under a gradient
    # its read `xkis2[mask]` has a shape that depends on the data, refused naming av.where
    feats, anchors, gt, labels = batches[0]
    boxes, _ = model(av.tensor(feats), av.tensor(anchors))
    tboxes, _ = tmodel(torch.tensor(feats), torch.tensor(anchors))
    ops, tops = box_ops(av, F), box_ops(torch, TF)
    for name in ("giou", "diou", "ciou"):
        got = getattr(ops, name)(boxes, av.tensor(gt))
        assert rel(got, getattr(tops, name)(tboxes, torch.tensor(gt))) < 1e-5, name
    with pytest.raises(IndexError, match="traced boolean mask.*av.where"):
        av.grad(lambda b: ops.giou(b, av.tensor(gt), reduction="sum"))(boxes)


def test_torchvision_style_batched_nms_by_the_coordinate_trick_eagerly():
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 24, hi=6.0)
    scores = rng.random(24).astype(np.float32)
    idxs = rng.integers(0, 3, 24)
    tkeep = box_ops(torch, TF).batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.tensor(idxs), 0.3)
    keep = box_ops(av, F).batched_nms(av.tensor(boxes), av.tensor(scores), av.tensor(idxs), 0.3)
    assert keep.dtype == av.int64 and keep.numpy().tolist() == tkeep.numpy().tolist()

    # brute force: per class, highest score first, drop what overlaps a kept box by more than the threshold
    def iou(a, b):
        lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
        inter = np.prod(np.clip(rb - lt, 0, None))
        return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)
    want = []
    for i in np.argsort(-scores, kind="stable"):
        if all(idxs[j] != idxs[i] or iou(boxes[i], boxes[j]) <= 0.3 for j in want):
            want.append(int(i))
    assert keep.numpy().tolist() == want
    ious = box_ops(av, F).box_iou(av.tensor(boxes), av.tensor(boxes))
    assert rel(ious, box_ops(torch, TF).box_iou(torch.tensor(boxes), torch.tensor(boxes))) < 1e-6


# -- 2. The PyTorch tutorial "Translation with a Sequence to Sequence Network and Attention" (seq2seq_translation_
#       tutorial.py, the AttnDecoderRNN version with `random.random() < teacher_forcing_ratio`) -------------------------

SOS_token, EOS_token = 0, 1
MAX_LENGTH = 6


def seq2seq_tutorial(lib, F_, th, input_size=9, hidden_size=8, output_size=7):
    torch, nn, F = th, lib, F_
    device = torch.device("cpu")

    class EncoderRNN(nn.Module):
        def __init__(self, input_size, hidden_size):
            super(EncoderRNN, self).__init__()  # noqa: UP008
            self.hidden_size = hidden_size

            self.embedding = nn.Embedding(input_size, hidden_size)
            self.gru = nn.GRU(hidden_size, hidden_size)

        def forward(self, input, hidden):  # noqa: A002
            embedded = self.embedding(input).view(1, 1, -1)
            output = embedded
            output, hidden = self.gru(output, hidden)
            return output, hidden

        def initHidden(self):  # noqa: N802
            return torch.zeros(1, 1, self.hidden_size, device=device)

    class AttnDecoderRNN(nn.Module):
        def __init__(self, hidden_size, output_size, dropout_p=0.1, max_length=MAX_LENGTH):
            super(AttnDecoderRNN, self).__init__()  # noqa: UP008
            self.hidden_size = hidden_size
            self.output_size = output_size
            self.dropout_p = dropout_p
            self.max_length = max_length

            self.embedding = nn.Embedding(self.output_size, self.hidden_size)
            self.attn = nn.Linear(self.hidden_size * 2, self.max_length)
            self.attn_combine = nn.Linear(self.hidden_size * 2, self.hidden_size)
            self.dropout = nn.Dropout(self.dropout_p)
            self.gru = nn.GRU(self.hidden_size, self.hidden_size)
            self.out = nn.Linear(self.hidden_size, self.output_size)

        def forward(self, input, hidden, encoder_outputs):  # noqa: A002
            embedded = self.embedding(input).view(1, 1, -1)
            embedded = self.dropout(embedded)

            attn_weights = F.softmax(
                self.attn(torch.cat((embedded[0], hidden[0]), 1)), dim=1)
            attn_applied = torch.bmm(attn_weights.unsqueeze(0),
                                     encoder_outputs.unsqueeze(0))

            output = torch.cat((embedded[0], attn_applied[0]), 1)
            output = self.attn_combine(output).unsqueeze(0)

            output = F.relu(output)
            output, hidden = self.gru(output, hidden)

            output = F.log_softmax(self.out(output[0]), dim=1)
            return output, hidden, attn_weights

    class Translator(nn.Module):  # the two networks, each with its own optimizer
        def __init__(self):
            super().__init__()
            self.encoder = EncoderRNN(input_size, hidden_size)
            self.decoder = AttnDecoderRNN(hidden_size, output_size, dropout_p=0.0)  # 0.1 there
    return Translator()


teacher_forcing_ratio = 0.5


def seq2seq_train_loss(th, nn, encoder, decoder, input_tensor, target_tensor, criterion, max_length=MAX_LENGTH,
                       running_mask=False):
    """train()'s forward and loss; the greedy branch's `.item()` break is a running mask in the port."""
    torch = th
    device = torch.device("cpu")
    encoder_hidden = encoder.initHidden()

    input_length = input_tensor.size(0)
    target_length = target_tensor.size(0)

    encoder_outputs = torch.zeros(max_length, encoder.hidden_size, device=device)

    loss = 0

    for ei in range(input_length):
        encoder_output, encoder_hidden = encoder(
            input_tensor[ei], encoder_hidden)
        encoder_outputs[ei] = encoder_output[0, 0]

    decoder_input = torch.tensor([[SOS_token]], device=device)

    decoder_hidden = encoder_hidden

    use_teacher_forcing = True if random.random() < teacher_forcing_ratio else False

    if use_teacher_forcing:
        # Teacher forcing: Feed the target as the next input
        for di in range(target_length):
            decoder_output, decoder_hidden, decoder_attention = decoder(
                decoder_input, decoder_hidden, encoder_outputs)
            loss += criterion(decoder_output, target_tensor[di])
            decoder_input = target_tensor[di]  # Teacher forcing

    elif not running_mask:
        # Without teacher forcing: use its own predictions as the next input
        for di in range(target_length):
            decoder_output, decoder_hidden, decoder_attention = decoder(
                decoder_input, decoder_hidden, encoder_outputs)
            topv, topi = decoder_output.topk(1)
            decoder_input = topi.squeeze().detach()  # detach from history as input

            loss += criterion(decoder_output, target_tensor[di])
            if decoder_input.item() == EOS_token:
                break
    else:
        running = 1.0  # the port: still decoding, 1.0 until the first EOS has been fed back
        for di in range(target_length):
            decoder_output, decoder_hidden, decoder_attention = decoder(
                decoder_input, decoder_hidden, encoder_outputs)
            topv, topi = decoder_output.topk(1)
            decoder_input = topi.squeeze().detach()  # detach from history as input

            loss += running * criterion(decoder_output, target_tensor[di])
            running = running * (decoder_input != EOS_token).float()

    return loss, use_teacher_forcing


def test_seq2seq_tutorial_attn_decoder_with_random_teacher_forcing_and_greedy_topk():
    model, tmodel = pair(seq2seq_tutorial, dtype=F32)
    learning_rate = 0.05  # 0.01 there
    enc_opt = av.optim.SGD(model.encoder.parameters(), lr=learning_rate)
    dec_opt = av.optim.SGD(model.decoder.parameters(), lr=learning_rate)
    tenc_opt = torch.optim.SGD(tmodel.encoder.parameters(), lr=learning_rate)
    tdec_opt = torch.optim.SGD(tmodel.decoder.parameters(), lr=learning_rate)
    criterion, tcriterion = nn.NLLLoss(), torch.nn.NLLLoss()
    rng = np.random.default_rng(2)

    def loss_fn(encoder, decoder, inp, tgt):
        return seq2seq_train_loss(av, nn, encoder, decoder, inp, tgt, criterion, running_mask=True)

    def train_step(encoder, decoder, enc_opt, dec_opt, inp, tgt):
        (loss, forced), (genc, gdec) = av.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            encoder, decoder, inp, tgt)
        enc_opt.step(genc)
        dec_opt.step(gdec)
        return loss, forced, genc, gdec

    run = av.compile(train_step, backend="numpy")
    seen = set()
    random.seed(0)  # draws 0.84, 0.76 (greedy), 0.42, 0.26 (forced), 0.51 (greedy)
    for it in range(5):
        n_in, n_out = 4 + it % 2, 3 + it % 3
        inp = np.concatenate([rng.integers(2, 9, n_in - 1), [EOS_token]]).reshape(-1, 1)
        tgt = np.concatenate([rng.integers(1, 7, n_out - 1), [EOS_token]]).reshape(-1, 1)
        state = random.getstate()  # each side draws the step's coin from the same place in the stream
        # train(): zero_grad, the loop, loss.backward(), both steps, loss.item() / target_length
        tloss, tforced = seq2seq_train_loss(torch, torch.nn, tmodel.encoder, tmodel.decoder, torch.tensor(inp),
                                            torch.tensor(tgt), tcriterion)
        tenc_opt.zero_grad()
        tdec_opt.zero_grad()
        tloss.backward()
        tenc_opt.step()
        tdec_opt.step()
        after, _ = random.getstate(), random.setstate(state)
        # the coin is a Python value the trace reads: every call traces again (and says so), drawing as torch does
        with pytest.warns(UserWarning, match="draws from Python's `random` module"):
            loss, forced, genc, gdec = (run if it else train_step)(model.encoder, model.decoder, enc_opt, dec_opt,
                                                                   av.tensor(inp), av.tensor(tgt))
        assert random.getstate() == after
        seen.add(forced)
        assert forced == tforced and rel(loss, tloss) < 1e-5, it
        assert abs(loss.item() / len(tgt) - tloss.item() / len(tgt)) < 1e-5
        same_grads({**{"encoder." + k: v for k, v in genc.items()}, **{"decoder." + k: v for k, v in gdec.items()}},
                   tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)
    assert run.cache_info().misses == 4 and run.cache_info().entries == 0
    assert seen == {True, False}

    # the tutorial's own greedy branch asks the traced prediction in Python
    random.seed(0)
    with pytest.raises(av.TracerError, match=r"Tensor.item\(\) needs a concrete value"):
        av.value_and_grad(lambda e, d, i, t: seq2seq_train_loss(av, nn, e, d, i, t, criterion)[0], argnums=(0, 1))(
            model.encoder, model.decoder, av.tensor(inp), av.tensor(tgt))
    # eagerly, outside a trace, the tutorial's loop runs as written and agrees with the port's mask
    random.seed(0)
    eager, _ = seq2seq_train_loss(av, nn, model.encoder, model.decoder, av.tensor(inp), av.tensor(tgt), criterion)
    random.seed(0)
    masked, _ = seq2seq_train_loss(av, nn, model.encoder, model.decoder, av.tensor(inp), av.tensor(tgt), criterion,
                                   running_mask=True)
    assert rel(eager, masked) < 1e-6


# -- 3. EfficientNet's MBConvBlock (lukemelas/EfficientNet-PyTorch efficientnet_pytorch/utils.py, model.py) ---------

def efficientnet_tiny(lib, F_, th, drop_connect_rate=0.5):
    torch, nn, F = th, lib, F_
    import collections
    import math
    from functools import partial

    BlockArgs = collections.namedtuple('BlockArgs', [  # noqa: PYI024
        'num_repeat', 'kernel_size', 'stride', 'expand_ratio',
        'input_filters', 'output_filters', 'se_ratio', 'id_skip'])

    class SwishImplementation(torch.autograd.Function):
        @staticmethod
        def forward(ctx, i):
            result = i * torch.sigmoid(i)
            ctx.save_for_backward(i)
            return result

        @staticmethod
        def backward(ctx, grad_output):
            i = ctx.saved_tensors[0]
            sigmoid_i = torch.sigmoid(i)
            return grad_output * (sigmoid_i * (1 + i * (1 - sigmoid_i)))

    class MemoryEfficientSwish(nn.Module):
        def forward(self, x):
            return SwishImplementation.apply(x)

    def drop_connect(inputs, p, training):
        assert 0 <= p <= 1, 'p must be in range of [0,1]'

        if not training:
            return inputs

        batch_size = inputs.shape[0]
        keep_prob = 1 - p

        # generate binary_tensor mask according to probability (p for 0, 1-p for 1)
        random_tensor = keep_prob
        random_tensor += torch.rand([batch_size, 1, 1, 1], dtype=inputs.dtype, device=inputs.device)
        binary_tensor = torch.floor(random_tensor)

        output = inputs / keep_prob * binary_tensor
        return output

    class Conv2dStaticSamePadding(nn.Conv2d):
        """2D Convolutions like TensorFlow's 'SAME' mode, with the given input image size."""

        def __init__(self, in_channels, out_channels, kernel_size, stride=1, image_size=None, **kwargs):
            super().__init__(in_channels, out_channels, kernel_size, stride, **kwargs)
            self.stride = self.stride if len(self.stride) == 2 else [self.stride[0]] * 2

            # Calculate padding based on image size and save it
            assert image_size is not None
            ih, iw = (image_size, image_size) if isinstance(image_size, int) else image_size
            kh, kw = self.weight.size()[-2:]
            sh, sw = self.stride
            oh, ow = math.ceil(ih / sh), math.ceil(iw / sw)
            pad_h = max((oh - 1) * self.stride[0] + (kh - 1) * self.dilation[0] + 1 - ih, 0)
            pad_w = max((ow - 1) * self.stride[1] + (kw - 1) * self.dilation[1] + 1 - iw, 0)
            if pad_h > 0 or pad_w > 0:
                self.static_padding = nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2,
                                                    pad_h // 2, pad_h - pad_h // 2))
            else:
                self.static_padding = nn.Identity()

        def forward(self, x):
            x = self.static_padding(x)
            x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            return x

    def get_same_padding_conv2d(image_size=None):
        return partial(Conv2dStaticSamePadding, image_size=image_size)

    def get_width_and_height_from_size(x):
        if isinstance(x, int):
            return x, x
        if isinstance(x, list) or isinstance(x, tuple):  # noqa: SIM101
            return x
        else:
            raise TypeError()

    def calculate_output_image_size(input_image_size, stride):
        if input_image_size is None:
            return None
        image_height, image_width = get_width_and_height_from_size(input_image_size)
        stride = stride if isinstance(stride, int) else stride[0]
        image_height = int(math.ceil(image_height / stride))
        image_width = int(math.ceil(image_width / stride))
        return [image_height, image_width]

    class MBConvBlock(nn.Module):
        def __init__(self, block_args, global_params, image_size=None):
            super().__init__()
            self._block_args = block_args
            self._bn_mom = 1 - global_params.batch_norm_momentum  # pytorch's difference from tensorflow
            self._bn_eps = global_params.batch_norm_epsilon
            self.has_se = (self._block_args.se_ratio is not None) and (0 < self._block_args.se_ratio <= 1)
            self.id_skip = block_args.id_skip  # whether to use skip connection and drop connect

            # Expansion phase (Inverted Bottleneck)
            inp = self._block_args.input_filters  # number of input channels
            oup = self._block_args.input_filters * self._block_args.expand_ratio  # number of output channels
            if self._block_args.expand_ratio != 1:
                Conv2d = get_same_padding_conv2d(image_size=image_size)  # noqa: N806
                self._expand_conv = Conv2d(in_channels=inp, out_channels=oup, kernel_size=1, bias=False)
                self._bn0 = nn.BatchNorm2d(num_features=oup, momentum=self._bn_mom, eps=self._bn_eps)

            # Depthwise convolution phase
            k = self._block_args.kernel_size
            s = self._block_args.stride
            Conv2d = get_same_padding_conv2d(image_size=image_size)  # noqa: N806
            self._depthwise_conv = Conv2d(
                in_channels=oup, out_channels=oup, groups=oup,  # groups makes it depthwise
                kernel_size=k, stride=s, bias=False)
            self._bn1 = nn.BatchNorm2d(num_features=oup, momentum=self._bn_mom, eps=self._bn_eps)
            image_size = calculate_output_image_size(image_size, s)

            # Squeeze and Excitation layer, if desired
            if self.has_se:
                Conv2d = get_same_padding_conv2d(image_size=(1, 1))  # noqa: N806
                num_squeezed_channels = max(1, int(self._block_args.input_filters * self._block_args.se_ratio))
                self._se_reduce = Conv2d(in_channels=oup, out_channels=num_squeezed_channels, kernel_size=1)
                self._se_expand = Conv2d(in_channels=num_squeezed_channels, out_channels=oup, kernel_size=1)

            # Pointwise convolution phase
            final_oup = self._block_args.output_filters
            Conv2d = get_same_padding_conv2d(image_size=image_size)  # noqa: N806
            self._project_conv = Conv2d(in_channels=oup, out_channels=final_oup, kernel_size=1, bias=False)
            self._bn2 = nn.BatchNorm2d(num_features=final_oup, momentum=self._bn_mom, eps=self._bn_eps)
            self._swish = MemoryEfficientSwish()

        def forward(self, inputs, drop_connect_rate=None):
            # Expansion and Depthwise Convolution
            x = inputs
            if self._block_args.expand_ratio != 1:
                x = self._expand_conv(inputs)
                x = self._bn0(x)
                x = self._swish(x)

            x = self._depthwise_conv(x)
            x = self._bn1(x)
            x = self._swish(x)

            # Squeeze and Excitation
            if self.has_se:
                x_squeezed = F.adaptive_avg_pool2d(x, 1)
                x_squeezed = self._se_reduce(x_squeezed)
                x_squeezed = self._swish(x_squeezed)
                x_squeezed = self._se_expand(x_squeezed)
                x = torch.sigmoid(x_squeezed) * x

            # Pointwise Convolution
            x = self._project_conv(x)
            x = self._bn2(x)

            # Skip connection and drop connect
            input_filters, output_filters = self._block_args.input_filters, self._block_args.output_filters
            if self.id_skip and self._block_args.stride == 1 and input_filters == output_filters:
                # The combination of skip connection and drop connect brings about stochastic depth.
                if drop_connect_rate:
                    x = drop_connect(x, p=drop_connect_rate, training=self.training)
                x = x + inputs  # skip connection
            return x

    GlobalParams = collections.namedtuple('GlobalParams', [  # noqa: PYI024
        'batch_norm_momentum', 'batch_norm_epsilon', 'drop_connect_rate', 'num_classes', 'image_size'])

    class EfficientNet(nn.Module):
        def __init__(self, blocks_args, global_params):
            super().__init__()
            self._global_params = global_params
            self._blocks_args = blocks_args
            bn_mom = 1 - self._global_params.batch_norm_momentum
            bn_eps = self._global_params.batch_norm_epsilon
            image_size = global_params.image_size
            Conv2d = get_same_padding_conv2d(image_size=image_size)  # noqa: N806

            # Stem
            in_channels = 3  # rgb
            out_channels = 4  # round_filters(32, ...) there
            self._conv_stem = Conv2d(in_channels, out_channels, kernel_size=3, stride=2, bias=False)
            self._bn0 = nn.BatchNorm2d(num_features=out_channels, momentum=bn_mom, eps=bn_eps)
            image_size = calculate_output_image_size(image_size, 2)

            # Build blocks
            self._blocks = nn.ModuleList([])
            for block_args in self._blocks_args:
                self._blocks.append(MBConvBlock(block_args, self._global_params, image_size=image_size))
                image_size = calculate_output_image_size(image_size, block_args.stride)
                if block_args.num_repeat > 1:  # modify block_args to keep same output size
                    block_args = block_args._replace(input_filters=block_args.output_filters, stride=1)
                for _ in range(block_args.num_repeat - 1):
                    self._blocks.append(MBConvBlock(block_args, self._global_params, image_size=image_size))

            # Head
            in_channels = block_args.output_filters  # output of final block
            out_channels = 8  # round_filters(1280, ...) there
            Conv2d = get_same_padding_conv2d(image_size=image_size)  # noqa: N806
            self._conv_head = Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
            self._bn1 = nn.BatchNorm2d(num_features=out_channels, momentum=bn_mom, eps=bn_eps)

            # Final linear layer
            self._avg_pooling = nn.AdaptiveAvgPool2d(1)
            self._dropout = nn.Dropout(0.0)  # dropout_rate 0.2 there
            self._fc = nn.Linear(out_channels, self._global_params.num_classes)
            self._swish = MemoryEfficientSwish()

        def extract_features(self, inputs):
            # Stem
            x = self._swish(self._bn0(self._conv_stem(inputs)))

            # Blocks
            for idx, block in enumerate(self._blocks):
                drop_connect_rate = self._global_params.drop_connect_rate
                if drop_connect_rate:
                    drop_connect_rate *= float(idx) / len(self._blocks)  # scale drop connect_rate
                x = block(x, drop_connect_rate=drop_connect_rate)

            # Head
            x = self._swish(self._bn1(self._conv_head(x)))
            return x

        def forward(self, inputs):
            # Convolution layers
            x = self.extract_features(inputs)
            # Pooling and final linear layer
            x = self._avg_pooling(x)
            x = x.flatten(start_dim=1)
            x = self._dropout(x)
            x = self._fc(x)
            return x

    blocks_args = [BlockArgs(1, 3, 1, 1, 4, 4, 0.25, True), BlockArgs(2, 3, 2, 4, 4, 6, 0.25, True),
                   BlockArgs(2, 5, 1, 4, 6, 6, 0.25, True)]
    global_params = GlobalParams(0.99, 1e-3, drop_connect_rate, 5, 12)
    return EfficientNet(blocks_args, global_params)


def given_rand(th, draws):
    """`th` whose `rand(shape, dtype=..., device=...)` hands out `draws` in order (the random draw, given)."""
    def rand(shape, dtype=None, device=None):
        u = draws.pop(0)
        assert tuple(u.shape) == tuple(shape)
        return u.to(dtype)
    ns = types.SimpleNamespace(**{k: getattr(th, k) for k in ("autograd", "sigmoid", "floor")})
    ns.rand = rand
    return ns


def test_efficientnet_mbconv_swish_function_se_drop_connect_and_clip_grad_value():
    torch.manual_seed(0)
    tdraws, draws = [], []
    # drop_connect's `torch.rand`: each side's `torch` hands out the draws given to the step
    tmodel = efficientnet_tiny(torch.nn, TF, given_rand(torch, tdraws)).float()
    model = efficientnet_tiny(nn, F, given_rand(av, draws))
    nn.load_state_dict(model, tmodel.state_dict())
    optimizer = av.optim.RMSprop(model.parameters(), lr=1e-2, alpha=0.9, eps=1e-3, momentum=0.9)
    toptimizer = torch.optim.RMSprop(tmodel.parameters(), lr=1e-2, alpha=0.9, eps=1e-3, momentum=0.9)
    clip = 0.05
    rng = np.random.default_rng(4)
    n_drop = 3  # blocks 2, 3 and 4 have a skip (block 0 too, at rate 0: it draws nothing)

    def loss_fn(model, x, y, *us):
        draws.extend(us)
        out = model(x)
        assert not draws
        return F.cross_entropy(out, y), out

    def train_step(model, optimizer, x, y, *us):
        (loss, out), grads = av.value_and_grad(loss_fn, has_aux=True)(model, x, y, *us)
        nn.utils.clip_grad_value_(grads.values(), clip)
        optimizer.step(grads)
        return loss, out, grads

    run = av.compile(train_step, backend="numpy")
    for it in range(3):
        x, y = randn(rng, 4, 3, 12, 12), rng.integers(0, 5, 4)
        us = [rng.random((4, 1, 1, 1)).astype(np.float32) for _ in range(n_drop)]
        tdraws.extend(map(torch.tensor, us))
        tout = tmodel(torch.tensor(x))
        assert not tdraws
        tloss = TF.cross_entropy(tout, torch.tensor(y))
        toptimizer.zero_grad()
        tloss.backward()
        torch.nn.utils.clip_grad_value_(tmodel.parameters(), clip)
        toptimizer.step()
        with strict():
            loss, out, grads = (run if it else train_step)(model, optimizer, av.tensor(x), av.tensor(y),
                                                          *map(av.tensor, us))
        assert rel(loss, tloss) < 1e-5 and rel(out, tout) < 1e-4, it
        assert max(float(np.abs(g.numpy()).max()) for g in grads.values()) <= np.float32(clip)
        same_grads(grads, tmodel, 1e-4, 1e-3)
        # the BN biases ahead of the next block's BN (through a bias-free 1x1 conv) have zero gradients in exact
        # arithmetic: roundoff, ~1e-9, that RMSprop moves them by ~1e-7 on both sides (compared with a 1e-2 floor)
        sd = tmodel.state_dict()
        assert sorted(model.state_dict()) == sorted(sd)
        for k, v in model.state_dict().items():
            a, b = v.numpy().astype(np.float64), sd[k].detach().numpy().astype(np.float64)
            assert np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1e-2) < 1e-4, k
    assert run.cache_info().misses == 1
    model.eval()
    tmodel.eval()
    x = randn(rng, 2, 3, 12, 12)
    assert rel(model(av.tensor(x)), tmodel(torch.tensor(x))) < 1e-4  # eval: no draws, running statistics


# -- 4. Involution (d-li14/involution cls/mmcls/models/utils/involution_naive.py) -----------------------------------

def involution_net(lib, F_, th, channels=32, num_classes=4):
    torch, nn = th, lib  # noqa: F841

    def ConvModule(in_channels, out_channels, kernel_size, stride=1, conv_cfg=None, norm_cfg=None,  # noqa: N802
                   act_cfg=None):
        """mmcv's ConvModule as the involution configures it: conv (no bias before a norm), BN, ReLU"""
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, bias=norm_cfg is None)]
        if norm_cfg is not None:
            layers.append(nn.BatchNorm2d(out_channels))
        if act_cfg is not None:
            layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers)

    class involution(nn.Module):  # noqa: N801

        def __init__(self,
                     channels,
                     kernel_size,
                     stride):
            super(involution, self).__init__()  # noqa: UP008
            self.kernel_size = kernel_size
            self.stride = stride
            self.channels = channels
            reduction_ratio = 4
            self.group_channels = 16
            self.groups = self.channels // self.group_channels
            self.conv1 = ConvModule(
                in_channels=channels,
                out_channels=channels // reduction_ratio,
                kernel_size=1,
                conv_cfg=None,
                norm_cfg=dict(type='BN'),
                act_cfg=dict(type='ReLU'))
            self.conv2 = ConvModule(
                in_channels=channels // reduction_ratio,
                out_channels=kernel_size**2 * self.groups,
                kernel_size=1,
                stride=1,
                conv_cfg=None,
                norm_cfg=None,
                act_cfg=None)
            if stride > 1:
                self.avgpool = nn.AvgPool2d(stride, stride)
            self.unfold = nn.Unfold(kernel_size, 1, (kernel_size - 1) // 2, stride)

        def forward(self, x):
            weight = self.conv2(self.conv1(x if self.stride == 1 else self.avgpool(x)))
            b, c, h, w = weight.shape
            weight = weight.view(b, self.groups, self.kernel_size**2, h, w).unsqueeze(2)
            out = self.unfold(x).view(b, self.groups, self.group_channels, self.kernel_size**2, h, w)
            out = (weight * out).sum(dim=3).view(b, self.channels, h, w)
            return out

    class RedNetTiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = ConvModule(3, channels, 3, norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU'))
            self.inv1 = involution(channels, 3, 1)
            self.bn1 = nn.BatchNorm2d(channels)
            self.inv2 = involution(channels, 5, 2)
            self.bn2 = nn.BatchNorm2d(channels)
            self.relu = nn.ReLU(inplace=True)
            self.fc = nn.Linear(channels, num_classes)

        def forward(self, x):
            x = self.stem(x)
            x = self.relu(self.bn1(self.inv1(x)) + x)
            x = self.relu(self.bn2(self.inv2(x)))
            return self.fc(x.mean((2, 3)))
    return RedNetTiny()


def test_involution_by_unfold_with_generated_kernels_and_stride_two():
    model, tmodel = pair(involution_net, dtype=F32)
    optimizer = av.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    toptimizer = torch.optim.SGD(tmodel.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(5)
    batches = [(randn(rng, 2, 3, 8, 8), rng.integers(0, 4, 2)) for _ in range(3)]

    def loss_fn(model, x, y):
        out = model(x)
        return (TF if isinstance(x, torch.Tensor) else F).cross_entropy(out, y), out
    # the conv biases before the stem's batch norm: none (ConvModule's bias='auto')
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, tol=2e-4, floor=1e-3)


# -- regressions: Python-side draws inside a compiled step --------------------------------------------------------------

def layerdrop_encoder(lib, F_, th, d=6, n_layers=4, layerdrop=0.5):
    nn = lib

    class Encoder(nn.Module):
        """transformers' BartEncoder loop (before `torch.rand([])`): LayerDrop by `random.uniform(0, 1)`"""

        def __init__(self):
            super().__init__()
            self.layerdrop = layerdrop
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(d, d), nn.Tanh()) for _ in range(n_layers)])
            self.head = nn.Linear(d, 1)

        def forward(self, hidden_states):
            for idx, encoder_layer in enumerate(self.layers):  # noqa: B007
                # add LayerDrop (see https://arxiv.org/abs/1909.11556 for description)
                dropout_probability = random.uniform(0, 1)
                if self.training and (dropout_probability < self.layerdrop):  # skip the layer
                    layer_outputs = (None, None)  # noqa: F841
                else:
                    hidden_states = hidden_states + encoder_layer(hidden_states)
            return self.head(hidden_states).squeeze(-1)
    return Encoder()


def test_layerdrop_by_python_random_uniform_draws_again_on_every_compiled_call():
    model, tmodel = pair(layerdrop_encoder, dtype=F32)
    optimizer, toptimizer = av.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(tmodel.parameters(), lr=0.1)
    rng = np.random.default_rng(6)

    def step(model, optimizer, x, y):
        loss, grads = av.value_and_grad(lambda m: F.mse_loss(m(x), y))(model)
        optimizer.step(grads)
        return loss
    run = av.compile(step, backend="numpy")
    random.seed(1)
    for it in range(4):
        x, y = randn(rng, 3, 6), randn(rng, 3)
        state = random.getstate()
        tloss = TF.mse_loss(tmodel(torch.tensor(x)), torch.tensor(y))
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        after, _ = random.getstate(), random.setstate(state)
        with pytest.warns(UserWarning, match="draws from Python's `random` module"):
            loss = run(model, optimizer, av.tensor(x), av.tensor(y))
        assert random.getstate() == after  # the stream advanced by the layers' draws, as eagerly
        assert rel(loss, tloss) < 1e-5, it
        same_weights(model, tmodel, 1e-4)
    assert run.cache_info().misses == 4
    # in eval mode the loop still draws (and reads nothing): traced each call all the same; a step drawing nothing
    # is cached
    model.eval()
    plain = av.compile(lambda m, x: m(x), backend="numpy")
    with pytest.warns(UserWarning, match="draws from Python's `random` module"):
        plain(model, av.tensor(x))
    state = random.getstate()
    head = av.compile(lambda m, x: m.head(x), backend="numpy")
    with strict():
        head(model, av.tensor(x))
        head(model, av.tensor(x))
    assert head.cache_info().misses == 1 and random.getstate() == state


def test_mixup_lambda_by_numpy_global_beta_inside_a_compiled_step():
    # facebookresearch/mixup-cifar10 train.py: `lam = np.random.beta(alpha, alpha)` inside the training step
    # (the permutation, torch.randperm there, is given: the streams differ)
    model, tmodel = pair(lambda lib, F_, th: lib.Linear(5, 3), dtype=F32)
    optimizer, toptimizer = av.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(tmodel.parameters(), lr=0.1)
    rng = np.random.default_rng(7)

    def mixup_data(th, x, y, index, alpha=1.0):
        if alpha > 0:
            lam = np.random.beta(alpha, alpha)
        else:
            lam = 1
        mixed_x = lam * x + (1 - lam) * x[index, :]
        y_a, y_b = y, y[index]
        return mixed_x, y_a, y_b, lam

    def mixup_criterion(criterion, pred, y_a, y_b, lam):
        return lam * criterion(pred, y_a) + (1 - lam) * criterion(pred, y_b)

    def step(model, optimizer, x, y, index):
        def loss_fn(model):
            inputs, targets_a, targets_b, lam = mixup_data(av, x, y, index)
            return mixup_criterion(F.cross_entropy, model(inputs), targets_a, targets_b, lam)
        loss, grads = av.value_and_grad(loss_fn)(model)
        optimizer.step(grads)
        return loss
    run = av.compile(step, backend="numpy")
    np.random.seed(0)
    lams = set()
    for it in range(3):
        x, y, index = randn(rng, 4, 5), rng.integers(0, 3, 4), rng.permutation(4)
        state = np.random.get_state()
        inputs, ya, yb, lam = mixup_data(torch, torch.tensor(x), torch.tensor(y), torch.tensor(index))
        lams.add(lam)
        tloss = mixup_criterion(TF.cross_entropy, tmodel(inputs), ya, yb, lam)
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        np.random.set_state(state)
        with pytest.warns(UserWarning, match="numpy's global random state"):
            loss = run(model, optimizer, av.tensor(x), av.tensor(y), av.tensor(index))
        assert rel(loss, tloss) < 1e-5, it
        same_weights(model, tmodel, 1e-4)
    assert len(lams) == 3 and run.cache_info().misses == 3
