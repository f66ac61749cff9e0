"""Round 10c of port QA: programs written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random float32 data and compared with torch after every step (losses,
outputs, gradients, parameters and buffers), the first step eagerly and the rest compiled.

Programs: DETR's HungarianMatcher and SetCriterion (facebookresearch/detr models/matcher.py, detr.py, util/box_ops.py:
the class cost `-out_prob[:, tgt_ids]`, the L1 cost by `torch.cdist(out_bbox, tgt_bbox, p=1)`, the generalized box IoU
cost, `C.view(bs, num_queries, -1).cpu()` split per image into scipy's `linear_sum_assignment`, eagerly under
`@torch.no_grad()`; `_get_src_permutation_idx` by `torch.cat([torch.full_like(src, i) ...])`, loss_labels' `torch.full`
target classes written by `target_classes[idx] = ...` and cross-entropy weighted by the `empty_weight` buffer
(eos_coef), misc.py's `accuracy` (`mul_` under no_grad), loss_boxes, loss_cardinality, `num_boxes` by
`torch.clamp(...).item()`) on a tiny query head trained by AdamW, the matching run eagerly and the loss step compiled
with the indices passed in; bayesiains/nflows' rational-quadratic splines (`unconstrained_rational_quadratic_spline`
with tails="linear", its `F.pad` of the derivatives written in place, `rational_quadratic_spline`'s softmax widths,
`F.pad`ded cumsums, the `searchsorted` helper `torch.sum(inputs[..., None] >= bin_locations, dim=-1) - 1` with its
in-place `+= eps`, `gather`s of the bin parameters, the inverse's quadratic root) in
PiecewiseRationalQuadraticCouplingTransform layers (index buffers by `masked_select`, `torch.empty_like` written by
index, `unnormalized_widths /= np.sqrt(hidden)`) trained by maximum likelihood with Adam, the inverse compiled and
checked as a round trip and against torch; pmixer/SASRec.pytorch (item embeddings `*= embedding_dim ** 0.5` with
padding_idx 0, positional embeddings, the timeline mask `torch.BoolTensor(log_seqs == 0)` applied by `seqs *=
~timeline_mask.unsqueeze(-1)`, the causal `~torch.tril(torch.ones (..., dtype=torch.bool))` mask to
nn.MultiheadAttention over `transpose(0, 1)`ed sequences, PointWiseFeedForward's Conv1d pair with `outputs += inputs`,
`(log_feats * pos_embs).sum(dim=-1)` logits, main.py's BCEWithLogitsLoss at `np.where(pos != 0)` and `l2_emb *
torch.norm(param)` over the item embeddings, Adam with betas (0.9, 0.98)), predict checked; ncsnv2's denoising score
matching (get_sigmas by
`torch.exp(torch.linspace(log(s1), log(sL), L))` as a buffer, `used_sigmas = sigmas[labels].view(...)`,
anneal_dsm_score_estimation's `1 / 2. * ((scores - target) ** 2).sum(dim=-1) * used_sigmas.squeeze() ** anneal_power`, a
score net conditioned on the noise level and divided by its sigma) by Adam, models/ema.py's EMAHelper (`.data` clones,
`shadow[name].data = ...` after each step, `ema_copy` by deepcopy) and anneal_Langevin_dynamics under `torch.no_grad()`
from the EMA weights (eagerly, and compiled as one graph); DiffPool (RexYing/diffpool encoders.py's GraphConv on
`torch.matmul(adj, x)` with `nn.Parameter(torch.FloatTensor(...))` initialized through `.data`, construct_mask's
`out_tensor[i, :batch_num_nodes[i]] = mask`, gcn_forward's concatenated layers masked for padded nodes, max readouts;
torch_geometric's dense_diff_pool: `s = softmax`, masked `x, s`, `s.T @ x`, `s.T @ adj @ s`, the link loss
`torch.norm(adj - s @ s.T, p=2) / adj.numel()` and the entropy `(-s * torch.log(s + EPS)).sum(dim=-1).mean()`) by Adam
with clip_grad_norm_.

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`). DETR's criterion takes the
matching as an argument (`indices=None` matches as written): the matching is Python and scipy on the cost's values,
eager, as DETR runs it under no_grad. generalized_box_iou's `assert (boxes1[:, 2:] >= boxes1[:, :2]).all()` asks a
traced value in Python: refused in the traced loss, clearly, naming av.where (tested; eagerly it runs and agrees); the
port keeps torch's check as a value check, `av.ops.check_values(boxes, ok, ...)`, which raises when the compiled step
meets a degenerate box, where torch's assert raises (tested). nflows as written (`outputs[outside_interval_mask] = ...`,
`if torch.any(inside_interval_mask):`, the boolean-mask selections of the spline's inputs, `if torch.min(inputs) < left
...: raise InputOutsideDomain()`, `assert (discriminant >= 0).all()`) runs eagerly and agrees with torch; under a
gradient the masks and the `if` are refused naming av.where (tested). The port runs every element through the spline
with its inputs clamped into the interval and selects by `torch.where`, the same values and gradients, and keeps the
domain check as a value check (a RuntimeError naming InputOutsideDomain in the compiled graph; tested). SASRec's
positions `np.tile(np.array(range(...)))` are numpy data baked into the graph, which a compiled step traces again on
every call (warned, tested); the port writes the repository's TODO, `torch.arange(...).repeat(...)`. Its `np.where(pos
!= 0)` is taken on the numpy batch when the batch is made, as main.py does, and passed in. ncsnv2's `torch.randn_like`
draws are handed to both sides (a namespace whose randn_like gives the step's draws, arguments of the step), and the
labels drawn by numpy. Dropouts are off; DiffPool's `.cuda()` calls are gone, and its bn=False (apply_bn builds a new
BatchNorm1d on every call).

Bug found and fixed: an in-place write inside a traced function (av.compile, av.grad) into an eager tensor the function
neither takes nor made, one it captured (ncsnv2's EMAHelper updating its shadow weights, `shadow[name].data = (1 - mu) *
param.data + mu * shadow[name].data`, in a compiled step after `optimizer.step`; a closure's or a global dict's tensor
written by `copy_`, `add_`, `.data =` or an item assignment) was silently dropped: the trace rebound the tensor to the
new value for its own later reads, but nothing wrote it back after the call, so the EMA never moved. tensor.py
`_replace` now records such a write as a state update of the trace, written back after the call as a model buffer's is,
telling captured tensors from the eager temporaries the function makes while traced (`torch.tensor([...])` written by
index), which trace.py's `Trace.made` notes (tensor.py `_made_while_tracing`, from `Tensor.__init__`, `Tensor._wrap` and
`Tensor.__deepcopy__`). The object written is the one the scope held when traced, so compiler/core.py does not cache
such a trace (`_captured_state`, as for the captured arrays a trace reads) and says so in that warning: each call writes
the tensor the scope holds then, as the eager call does. The regressions below (with timm's ModelEmaV2, whose deepcopied
module was never updated in a compiled step).

Not Avalon: sizes are small and learning rates chosen for a few steps. SASRec runs in float64 (its attention keys'
biases have zero gradients in exact arithmetic, float32 roundoff there that Adam turns into lr-sized steps that differ
between the sides), and its labels take the logits' dtype: torch's BCEWithLogitsLoss of float64 logits against main.py's
float32 labels returns float32 (its in-place `(1 - target).mul_(input)` keeps the target's dtype); Avalon's promotes to
float64. DiffPool's losses are PyG's dense_diff_pool rather than RexYing's masked link loss; the matching's reference is
torch's own matcher (the same scipy call on torch's costs), the indices compared exactly.
"""
from __future__ import annotations

import copy
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import rel
from scipy.optimize import linear_sum_assignment
from test_port_programs_30 import randn, same_grads
from test_port_programs_36 import steps_like_torch
from test_port_programs_more import pair, same_weights, strict

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache", "torch_on_one_thread")

F32 = torch.float32


def ns_of(x):
    """(th, F_, lib) of the side an input tensor belongs to"""
    return (torch, TF, torch.nn) if isinstance(x, torch.Tensor) else (av, F, nn)


def compiled_step(fn):
    return av.compile(fn, backend="numpy")


# -- 1. DETR's HungarianMatcher and SetCriterion (facebookresearch/detr models/matcher.py, models/detr.py,
#       util/box_ops.py, util/misc.py's accuracy) ---------------------------------------------------------------------

def detr_parts(lib, F_, th, num_classes=3, eos_coef=0.1, check_boxes="assert"):
    torch, nn, F = th, lib, F_

    def checked(boxes):
        """the port of `assert (boxes[:, 2:] >= boxes[:, :2]).all()` (check_boxes="values"): Avalon keeps it in
        the graph as a value check (av.ops.check_values), raising when the compiled step runs"""
        ok = (boxes[:, 2:] >= boxes[:, :2]).all()
        if torch is av:
            return av.ops.check_values(boxes, ok, "degenerate boxes: x1 < x0 or y1 < y0")
        assert ok
        return boxes

    def box_cxcywh_to_xyxy(x):
        x_c, y_c, w, h = x.unbind(-1)
        b = [(x_c - 0.5 * w), (y_c - 0.5 * h),
             (x_c + 0.5 * w), (y_c + 0.5 * h)]
        return torch.stack(b, dim=-1)

    def box_area(boxes):  # torchvision.ops.boxes.box_area
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def box_iou(boxes1, boxes2):
        area1 = box_area(boxes1)
        area2 = box_area(boxes2)

        lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])  # [N,M,2]
        rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])  # [N,M,2]

        wh = (rb - lt).clamp(min=0)  # [N,M,2]
        inter = wh[:, :, 0] * wh[:, :, 1]  # [N,M]

        union = area1[:, None] + area2 - inter

        iou = inter / union
        return iou, union

    def generalized_box_iou(boxes1, boxes2):
        # degenerate boxes gives inf / nan results
        # so do an early check
        if check_boxes == "assert":  # as written
            assert (boxes1[:, 2:] >= boxes1[:, :2]).all()
            assert (boxes2[:, 2:] >= boxes2[:, :2]).all()
        else:  # the port
            boxes1, boxes2 = checked(boxes1), checked(boxes2)
        iou, union = box_iou(boxes1, boxes2)

        lt = torch.min(boxes1[:, None, :2], boxes2[:, :2])
        rb = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])

        wh = (rb - lt).clamp(min=0)  # [N,M,2]
        area = wh[:, :, 0] * wh[:, :, 1]

        return iou - (area - union) / area

    @torch.no_grad()
    def accuracy(output, target, topk=(1,)):
        """Computes the precision@k for the specified values of k"""
        if target.numel() == 0:
            return [torch.zeros([], device=output.device)]
        maxk = max(topk)
        batch_size = target.size(0)

        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))

        res = []
        for k in topk:
            correct_k = correct[:k].view(-1).float().sum(0)
            res.append(correct_k.mul_(100.0 / batch_size))
        return res

    class HungarianMatcher(nn.Module):
        def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1):
            super().__init__()
            self.cost_class = cost_class
            self.cost_bbox = cost_bbox
            self.cost_giou = cost_giou
            assert cost_class != 0 or cost_bbox != 0 or cost_giou != 0, "all costs cant be 0"

        @torch.no_grad()
        def forward(self, outputs, targets):
            bs, num_queries = outputs["pred_logits"].shape[:2]

            # We flatten to compute the cost matrices in a batch
            out_prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)  # [batch_size * num_queries, num_classes]
            out_bbox = outputs["pred_boxes"].flatten(0, 1)  # [batch_size * num_queries, 4]

            # Also concat the target labels and boxes
            tgt_ids = torch.cat([v["labels"] for v in targets])
            tgt_bbox = torch.cat([v["boxes"] for v in targets])

            # Compute the classification cost. Contrary to the loss, we don't use the NLL,
            # but approximate it in 1 - proba[target class].
            # The 1 is a constant that doesn't change the matching, it can be ommitted.
            cost_class = -out_prob[:, tgt_ids]

            # Compute the L1 cost between boxes
            cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)

            # Compute the giou cost betwen boxes
            cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))

            # Final cost matrix
            C = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou  # noqa: N806
            C = C.view(bs, num_queries, -1).cpu()  # noqa: N806

            sizes = [len(v["boxes"]) for v in targets]
            indices = [linear_sum_assignment(c[i]) for i, c in enumerate(C.split(sizes, -1))]
            return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64))
                    for i, j in indices]

    class SetCriterion(nn.Module):
        def __init__(self, num_classes, matcher, weight_dict, eos_coef, losses):
            super().__init__()
            self.num_classes = num_classes
            self.matcher = matcher
            self.weight_dict = weight_dict
            self.eos_coef = eos_coef
            self.losses = losses
            empty_weight = torch.ones(self.num_classes + 1)
            empty_weight[-1] = self.eos_coef
            self.register_buffer('empty_weight', empty_weight)

        def loss_labels(self, outputs, targets, indices, num_boxes, log=True):
            assert 'pred_logits' in outputs
            src_logits = outputs['pred_logits']

            idx = self._get_src_permutation_idx(indices)
            target_classes_o = torch.cat([t["labels"][J] for t, (_, J) in zip(targets, indices)])
            target_classes = torch.full(src_logits.shape[:2], self.num_classes,
                                        dtype=torch.int64, device=src_logits.device)
            target_classes[idx] = target_classes_o

            loss_ce = F.cross_entropy(src_logits.transpose(1, 2), target_classes, self.empty_weight)
            losses = {'loss_ce': loss_ce}

            if log:
                # TODO this should probably be a separate loss, not hacked in this one here
                losses['class_error'] = 100 - accuracy(src_logits[idx], target_classes_o)[0]
            return losses

        @torch.no_grad()
        def loss_cardinality(self, outputs, targets, indices, num_boxes):
            pred_logits = outputs['pred_logits']
            device = pred_logits.device
            tgt_lengths = torch.as_tensor([len(v["labels"]) for v in targets], device=device)
            # Count the number of predictions that are NOT "no-object" (which is the last class)
            card_pred = (pred_logits.argmax(-1) != pred_logits.shape[-1] - 1).sum(1)
            card_err = F.l1_loss(card_pred.float(), tgt_lengths.float())
            losses = {'cardinality_error': card_err}
            return losses

        def loss_boxes(self, outputs, targets, indices, num_boxes):
            assert 'pred_boxes' in outputs
            idx = self._get_src_permutation_idx(indices)
            src_boxes = outputs['pred_boxes'][idx]
            target_boxes = torch.cat([t['boxes'][i] for t, (_, i) in zip(targets, indices)], dim=0)

            loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction='none')

            losses = {}
            losses['loss_bbox'] = loss_bbox.sum() / num_boxes

            loss_giou = 1 - torch.diag(generalized_box_iou(
                box_cxcywh_to_xyxy(src_boxes),
                box_cxcywh_to_xyxy(target_boxes)))
            losses['loss_giou'] = loss_giou.sum() / num_boxes
            return losses

        def _get_src_permutation_idx(self, indices):
            # permute predictions following indices
            batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
            src_idx = torch.cat([src for (src, _) in indices])
            return batch_idx, src_idx

        def get_loss(self, loss, outputs, targets, indices, num_boxes, **kwargs):
            loss_map = {
                'labels': self.loss_labels,
                'cardinality': self.loss_cardinality,
                'boxes': self.loss_boxes,
            }
            assert loss in loss_map, f'do you really want to compute {loss} loss?'
            return loss_map[loss](outputs, targets, indices, num_boxes, **kwargs)

        def forward(self, outputs, targets, indices=None):
            outputs_without_aux = {k: v for k, v in outputs.items() if k != 'aux_outputs'}

            # Retrieve the matching between the outputs of the last layer and the targets
            if indices is None:  # the port: matched eagerly outside the compiled step, passed in
                indices = self.matcher(outputs_without_aux, targets)

            # Compute the average number of target boxes accross all nodes, for normalization purposes
            num_boxes = sum(len(t["labels"]) for t in targets)
            num_boxes = torch.as_tensor([num_boxes], dtype=torch.float, device=next(iter(outputs.values())).device)
            num_boxes = torch.clamp(num_boxes / 1, min=1).item()  # get_world_size() == 1

            # Compute all the requested losses
            losses = {}
            for loss in self.losses:
                losses.update(self.get_loss(loss, outputs, targets, indices, num_boxes))
            return losses

    class MLP(nn.Module):
        """ Very simple multi-layer perceptron (also called FFN)"""

        def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
            super().__init__()
            self.num_layers = num_layers
            h = [hidden_dim] * (num_layers - 1)
            self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))

        def forward(self, x):
            for i, layer in enumerate(self.layers):
                x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
            return x

    class QueryHead(nn.Module):
        """DETR's heads over a stand-in decoder: per-image features plus learned query embeddings"""

        def __init__(self, d_in=5, hidden_dim=8, num_queries=4):
            super().__init__()
            self.input_proj = nn.Linear(d_in, hidden_dim)
            self.query_embed = nn.Embedding(num_queries, hidden_dim)
            self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
            self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)

        def forward(self, feats):
            hs = torch.tanh(self.input_proj(feats)[:, None] + self.query_embed.weight[None])
            outputs_class = self.class_embed(hs)
            outputs_coord = self.bbox_embed(hs).sigmoid()
            return {'pred_logits': outputs_class, 'pred_boxes': outputs_coord}

    matcher = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
    weight_dict = {'loss_ce': 1, 'loss_bbox': 5, 'loss_giou': 2}
    criterion = SetCriterion(num_classes, matcher=matcher, weight_dict=weight_dict, eos_coef=eos_coef,
                             losses=['labels', 'boxes', 'cardinality'])
    model = QueryHead()
    model.criterion = criterion
    return model


def detr_targets(rng, sizes, num_classes=3):
    targets = []
    for n in sizes:
        cxcy = rng.uniform(0.25, 0.75, (n, 2))
        wh = rng.uniform(0.1, 0.4, (n, 2))
        targets.append({"labels": rng.integers(0, num_classes, n),
                        "boxes": np.concatenate([cxcy, wh], 1).astype(np.float32)})
    return targets


def detr_loss(model, feats, targets, indices):
    criterion = model.criterion
    outputs = model(feats)
    loss_dict = criterion(outputs, targets, indices)
    weight_dict = criterion.weight_dict
    losses = sum(loss_dict[k] * weight_dict[k] for k in loss_dict.keys() if k in weight_dict)
    return losses, loss_dict


def test_detr_hungarian_matching_eagerly_and_set_criterion_compiled_with_adamw():
    model, tmodel = pair(lambda lib, F_, th: detr_parts(lib, F_, th, check_boxes="values"), dtype=F32)
    lr = 1e-2
    optimizer = av.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    toptimizer = torch.optim.AdamW(tmodel.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(0)

    def train_step(model, optimizer, feats, targets, indices):
        (loss, loss_dict), grads = av.value_and_grad(detr_loss, has_aux=True)(model, feats, targets, indices)
        optimizer.step(grads)
        return loss, loss_dict, grads
    run = compiled_step(train_step)
    for it in range(4):
        feats, targets = randn(rng, 2, 5), detr_targets(rng, [2, 3])
        ttargets = [{k: torch.tensor(v) for k, v in t.items()} for t in targets]
        atargets = [{k: av.tensor(v) for k, v in t.items()} for t in targets]
        toutputs = tmodel(torch.tensor(feats))
        tindices = tmodel.criterion.matcher(toutputs, ttargets)
        tloss, tloss_dict = detr_loss(tmodel, torch.tensor(feats), ttargets, tindices)
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        with strict():
            indices = model.criterion.matcher(model(av.tensor(feats)), atargets)  # eagerly, under no_grad
            assert [[a.numpy().tolist() for a in ij] for ij in indices] == \
                   [[a.numpy().tolist() for a in ij] for ij in tindices], it
            loss, loss_dict, grads = (run if it else train_step)(model, optimizer, av.tensor(feats), atargets, indices)
        assert rel(loss, tloss) < 1e-5, it
        assert sorted(loss_dict) == sorted(tloss_dict)
        for k in tloss_dict:
            assert rel(loss_dict[k], tloss_dict[k]) < 1e-5, (it, k)
        same_grads(grads, tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)
    assert run.cache_info().misses == 1
    # degenerate target boxes: torch's assert, Avalon's value check in the compiled step
    targets = detr_targets(rng, [2, 3])
    targets[1]["boxes"][0, 2] = -0.1  # a negative width
    with pytest.raises(AssertionError):
        detr_loss(tmodel, torch.tensor(feats), [{k: torch.tensor(v) for k, v in t.items()} for t in targets], tindices)
    atargets = [{k: av.tensor(v) for k, v in t.items()} for t in targets]
    with pytest.raises(RuntimeError, match="degenerate boxes"):
        run(model, optimizer, av.tensor(feats), atargets, indices)


def test_detr_generalized_box_iou_assert_on_a_traced_value_is_refused_and_runs_eagerly():
    model, tmodel = pair(detr_parts, dtype=F32)  # the asserts as written
    rng = np.random.default_rng(1)
    feats, targets = randn(rng, 2, 5), detr_targets(rng, [2, 3])
    atargets = [{k: av.tensor(v) for k, v in t.items()} for t in targets]
    ttargets = [{k: torch.tensor(v) for k, v in t.items()} for t in targets]
    indices = model.criterion.matcher(model(av.tensor(feats)), atargets)  # eagerly the asserts run
    tindices = tmodel.criterion.matcher(tmodel(torch.tensor(feats)), ttargets)
    assert rel(detr_loss(model, av.tensor(feats), atargets, indices)[0],
               detr_loss(tmodel, torch.tensor(feats), ttargets, tindices)[0]) < 1e-5
    with pytest.raises(av.TracerError, match=r"Python `if`.*on a tensor needs a concrete value.*av.where"):
        av.value_and_grad(lambda m, x: detr_loss(m, x, atargets, indices)[0])(model, av.tensor(feats))


# -- 2. Neural spline flows (bayesiains/nflows nflows/transforms/splines/rational_quadratic.py,
#       transforms/coupling.py's PiecewiseRationalQuadraticCouplingTransform) ----------------------------------------

class InputOutsideDomain(Exception):
    """nflows.transforms.base.InputOutsideDomain"""


def nsf_ops(th, F_, as_written=True):
    """nflows' spline functions; as_written=False is the port (see the module docstring)"""
    torch, F = th, F_
    DEFAULT_MIN_BIN_WIDTH = 1e-3  # noqa: N806
    DEFAULT_MIN_BIN_HEIGHT = 1e-3  # noqa: N806
    DEFAULT_MIN_DERIVATIVE = 1e-3  # noqa: N806

    def searchsorted(bin_locations, inputs, eps=1e-6):
        bin_locations[..., -1] += eps
        return torch.sum(inputs[..., None] >= bin_locations, dim=-1) - 1

    def check_domain(inputs, left, right):
        if as_written or torch is not av:
            if torch.min(inputs) < left or torch.max(inputs) > right:
                raise InputOutsideDomain()
            return inputs
        # the port: torch's check kept in Avalon's graph as a value check (a RuntimeError where nflows raises)
        return av.ops.check_values(inputs, (inputs >= left) & (inputs <= right), "InputOutsideDomain")

    def unconstrained_rational_quadratic_spline(inputs, unnormalized_widths, unnormalized_heights,
                                                unnormalized_derivatives, inverse=False, tails="linear",
                                                tail_bound=1.0, min_bin_width=DEFAULT_MIN_BIN_WIDTH,
                                                min_bin_height=DEFAULT_MIN_BIN_HEIGHT,
                                                min_derivative=DEFAULT_MIN_DERIVATIVE):
        inside_interval_mask = (inputs >= -tail_bound) & (inputs <= tail_bound)
        outside_interval_mask = ~inside_interval_mask

        outputs = torch.zeros_like(inputs)
        logabsdet = torch.zeros_like(inputs)

        if tails == "linear":
            unnormalized_derivatives = F.pad(unnormalized_derivatives, pad=(1, 1))
            constant = np.log(np.exp(1 - min_derivative) - 1)
            unnormalized_derivatives[..., 0] = constant
            unnormalized_derivatives[..., -1] = constant

            if as_written:
                outputs[outside_interval_mask] = inputs[outside_interval_mask]
                logabsdet[outside_interval_mask] = 0
        else:
            raise RuntimeError("{} tails are not implemented.".format(tails))  # noqa: UP032

        if as_written:
            if torch.any(inside_interval_mask):
                (
                    outputs[inside_interval_mask],
                    logabsdet[inside_interval_mask],
                ) = rational_quadratic_spline(
                    inputs=inputs[inside_interval_mask],
                    unnormalized_widths=unnormalized_widths[inside_interval_mask, :],
                    unnormalized_heights=unnormalized_heights[inside_interval_mask, :],
                    unnormalized_derivatives=unnormalized_derivatives[inside_interval_mask, :],
                    inverse=inverse,
                    left=-tail_bound, right=tail_bound, bottom=-tail_bound, top=tail_bound,
                    min_bin_width=min_bin_width, min_bin_height=min_bin_height, min_derivative=min_derivative,
                )
        else:  # the port: every element through the spline (clamped into the interval), selected by where
            spline_outputs, spline_logabsdet = rational_quadratic_spline(
                inputs=torch.clamp(inputs, -tail_bound, tail_bound),
                unnormalized_widths=unnormalized_widths,
                unnormalized_heights=unnormalized_heights,
                unnormalized_derivatives=unnormalized_derivatives,
                inverse=inverse,
                left=-tail_bound, right=tail_bound, bottom=-tail_bound, top=tail_bound,
                min_bin_width=min_bin_width, min_bin_height=min_bin_height, min_derivative=min_derivative,
            )
            outputs = torch.where(inside_interval_mask, spline_outputs, inputs)
            logabsdet = torch.where(inside_interval_mask, spline_logabsdet, logabsdet)

        return outputs, logabsdet

    def rational_quadratic_spline(inputs, unnormalized_widths, unnormalized_heights, unnormalized_derivatives,
                                  inverse=False, left=0.0, right=1.0, bottom=0.0, top=1.0,
                                  min_bin_width=DEFAULT_MIN_BIN_WIDTH, min_bin_height=DEFAULT_MIN_BIN_HEIGHT,
                                  min_derivative=DEFAULT_MIN_DERIVATIVE):
        inputs = check_domain(inputs, left, right)

        num_bins = unnormalized_widths.shape[-1]

        if min_bin_width * num_bins > 1.0:
            raise ValueError("Minimal bin width too large for the number of bins")
        if min_bin_height * num_bins > 1.0:
            raise ValueError("Minimal bin height too large for the number of bins")

        widths = F.softmax(unnormalized_widths, dim=-1)
        widths = min_bin_width + (1 - min_bin_width * num_bins) * widths
        cumwidths = torch.cumsum(widths, dim=-1)
        cumwidths = F.pad(cumwidths, pad=(1, 0), mode="constant", value=0.0)
        cumwidths = (right - left) * cumwidths + left
        cumwidths[..., 0] = left
        cumwidths[..., -1] = right
        widths = cumwidths[..., 1:] - cumwidths[..., :-1]

        derivatives = min_derivative + F.softplus(unnormalized_derivatives)

        heights = F.softmax(unnormalized_heights, dim=-1)
        heights = min_bin_height + (1 - min_bin_height * num_bins) * heights
        cumheights = torch.cumsum(heights, dim=-1)
        cumheights = F.pad(cumheights, pad=(1, 0), mode="constant", value=0.0)
        cumheights = (top - bottom) * cumheights + bottom
        cumheights[..., 0] = bottom
        cumheights[..., -1] = top
        heights = cumheights[..., 1:] - cumheights[..., :-1]

        if inverse:
            bin_idx = searchsorted(cumheights, inputs)[..., None]
        else:
            bin_idx = searchsorted(cumwidths, inputs)[..., None]

        input_cumwidths = cumwidths.gather(-1, bin_idx)[..., 0]
        input_bin_widths = widths.gather(-1, bin_idx)[..., 0]

        input_cumheights = cumheights.gather(-1, bin_idx)[..., 0]
        delta = heights / widths
        input_delta = delta.gather(-1, bin_idx)[..., 0]

        input_derivatives = derivatives.gather(-1, bin_idx)[..., 0]
        input_derivatives_plus_one = derivatives[..., 1:].gather(-1, bin_idx)[..., 0]

        input_heights = heights.gather(-1, bin_idx)[..., 0]

        if inverse:
            a = (inputs - input_cumheights) * (
                input_derivatives + input_derivatives_plus_one - 2 * input_delta
            ) + input_heights * (input_delta - input_derivatives)
            b = input_heights * input_derivatives - (inputs - input_cumheights) * (
                input_derivatives + input_derivatives_plus_one - 2 * input_delta
            )
            c = -input_delta * (inputs - input_cumheights)

            discriminant = b.pow(2) - 4 * a * c
            if as_written:
                assert (discriminant >= 0).all()

            root = (2 * c) / (-b - torch.sqrt(discriminant))
            outputs = root * input_bin_widths + input_cumwidths

            theta_one_minus_theta = root * (1 - root)
            denominator = input_delta + (
                (input_derivatives + input_derivatives_plus_one - 2 * input_delta) * theta_one_minus_theta
            )
            derivative_numerator = input_delta.pow(2) * (
                input_derivatives_plus_one * root.pow(2)
                + 2 * input_delta * theta_one_minus_theta
                + input_derivatives * (1 - root).pow(2)
            )
            logabsdet = torch.log(derivative_numerator) - 2 * torch.log(denominator)

            return outputs, -logabsdet
        else:
            theta = (inputs - input_cumwidths) / input_bin_widths
            theta_one_minus_theta = theta * (1 - theta)

            numerator = input_heights * (input_delta * theta.pow(2) + input_derivatives * theta_one_minus_theta)
            denominator = input_delta + (
                (input_derivatives + input_derivatives_plus_one - 2 * input_delta) * theta_one_minus_theta
            )
            outputs = input_cumheights + numerator / denominator

            derivative_numerator = input_delta.pow(2) * (
                input_derivatives_plus_one * theta.pow(2)
                + 2 * input_delta * theta_one_minus_theta
                + input_derivatives * (1 - theta).pow(2)
            )
            logabsdet = torch.log(derivative_numerator) - 2 * torch.log(denominator)

            return outputs, logabsdet
    return types.SimpleNamespace(spline=unconstrained_rational_quadratic_spline, rqs=rational_quadratic_spline)


def spline_flow(lib, F_, th, features=2, hidden=8, num_bins=4, tail_bound=2.0, num_layers=2, as_written=False):
    torch, nn = th, lib
    ops = nsf_ops(th, F_, as_written)

    class PiecewiseRationalQuadraticCouplingTransform(nn.Module):
        """nflows' coupling transform (a ResidualNet there, a two-layer MLP here)"""

        def __init__(self, mask):
            super().__init__()
            mask = torch.as_tensor(mask)
            features_vector = torch.arange(features)
            self.register_buffer("identity_features", features_vector.masked_select(mask <= 0))
            self.register_buffer("transform_features", features_vector.masked_select(mask > 0))
            self.num_identity_features = len(self.identity_features)
            self.num_transform_features = len(self.transform_features)
            self.hidden_features = hidden
            self.transform_net = nn.Sequential(
                nn.Linear(self.num_identity_features, hidden), nn.ReLU(),
                nn.Linear(hidden, self.num_transform_features * self._transform_dim_multiplier()))

        def _transform_dim_multiplier(self):
            return num_bins * 3 - 1  # tails == "linear"

        def forward(self, inputs, inverse=False):
            identity_split = inputs[:, self.identity_features, ...]
            transform_split = inputs[:, self.transform_features, ...]
            transform_params = self.transform_net(identity_split)
            transform_split, logabsdet = self._coupling_transform(transform_split, transform_params, inverse)
            outputs = torch.empty_like(inputs)
            outputs[:, self.identity_features, ...] = identity_split
            outputs[:, self.transform_features, ...] = transform_split
            return outputs, logabsdet

        def _coupling_transform(self, inputs, transform_params, inverse=False):
            b, d = inputs.shape
            transform_params = transform_params.reshape(b, d, -1)  # PiecewiseCouplingTransform
            unnormalized_widths = transform_params[..., :num_bins]
            unnormalized_heights = transform_params[..., num_bins:2 * num_bins]
            unnormalized_derivatives = transform_params[..., 2 * num_bins:]
            unnormalized_widths /= np.sqrt(self.hidden_features)
            unnormalized_heights /= np.sqrt(self.hidden_features)
            outputs, logabsdet = ops.spline(inputs=inputs, unnormalized_widths=unnormalized_widths,
                                            unnormalized_heights=unnormalized_heights,
                                            unnormalized_derivatives=unnormalized_derivatives,
                                            inverse=inverse, tails="linear", tail_bound=tail_bound)
            return outputs, torch.sum(logabsdet.reshape(b, -1), dim=1)  # torchutils.sum_except_batch

    class Flow(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(PiecewiseRationalQuadraticCouplingTransform(
                [1, 0] if i % 2 == 0 else [0, 1]) for i in range(num_layers))

        def forward(self, x):
            total = torch.zeros(x.shape[0])
            for layer in self.layers:
                x, logabsdet = layer(x)
                total = total + logabsdet
            return x, total

        def inverse(self, z):
            total = torch.zeros(z.shape[0])
            for layer in reversed(self.layers):
                z, logabsdet = layer(z, inverse=True)
                total = total + logabsdet
            return z, total

        def log_prob(self, x):  # a StandardNormal base
            z, logabsdet = self(x)
            log_z = -0.5 * torch.sum(z ** 2, dim=1) - 0.5 * features * np.log(2 * np.pi)
            return log_z + logabsdet
    return Flow()


def two_moons(rng, n):
    t = rng.uniform(0, np.pi, n)
    side = rng.integers(0, 2, n)
    x = np.stack([np.cos(t) + side * 1.0 - 0.5, np.sin(t) * (1 - 2 * side) + side * 0.3], 1)
    return (x + 0.1 * rng.standard_normal((n, 2))).astype(np.float32) * 1.6  # some points in the linear tails


def test_neural_spline_coupling_flow_by_maximum_likelihood_with_adam_and_the_inverse():
    model, tmodel = pair(spline_flow, dtype=F32)
    optimizer = av.optim.Adam(model.parameters(), lr=1e-2)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    rng = np.random.default_rng(3)
    batches = [(two_moons(rng, 16),) for _ in range(4)]
    assert any((np.abs(b[0]) > 2.0).any() for b in batches)  # the linear tails are used

    def loss_fn(model, x):
        log_prob = model.log_prob(x)
        return -log_prob.mean(), log_prob
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, tol=1e-3, loss_tol=1e-4)
    # the inverse (the quadratic root): a round trip, compiled, against torch's inverse
    x = batches[0][0]
    z, _ = model(av.tensor(x))
    inv = av.compile(lambda m, z: m.inverse(z), backend="numpy")
    xr, ld_inv = inv(model, z)
    txr, tld_inv = tmodel.inverse(tmodel(torch.tensor(x))[0])
    assert rel(xr, x) < 1e-4 and rel(xr, txr) < 1e-4 and rel(ld_inv, tld_inv) < 1e-3
    assert rel(ld_inv, -model(av.tensor(x))[1]) < 1e-3


def test_neural_spline_as_written_runs_eagerly_and_its_masks_and_domain_check_are_refused_under_a_gradient():
    rng = np.random.default_rng(4)
    x = two_moons(rng, 8)
    written, _ = pair(lambda lib, F_, th: spline_flow(lib, F_, th, as_written=True), dtype=F32)
    port, tport = pair(spline_flow, dtype=F32)
    # eagerly the boolean-mask writes, `if torch.any(...)` and the domain check run, and agree with the port
    assert rel(written.log_prob(av.tensor(x)), tport.log_prob(torch.tensor(x))) < 1e-5
    assert rel(written.log_prob(av.tensor(x)), port.log_prob(av.tensor(x))) < 1e-5
    # `outputs[outside_interval_mask] = inputs[outside_interval_mask]` traces (the same mask read and written:
    # a where, test_port_programs_44); `if torch.any(inside_interval_mask):` is refused, naming av.where
    with pytest.raises(av.TracerError, match=r"Python `if`.*concrete value.*av.where"):
        av.value_and_grad(lambda m, x: -m.log_prob(x).mean())(written, av.tensor(x))
    # the domain check: nflows raises InputOutsideDomain; the port's value check raises in the compiled graph
    ops, tops = nsf_ops(av, F, as_written=False), nsf_ops(torch, TF)
    w, h, d = randn(rng, 3, 4), randn(rng, 3, 4), randn(rng, 3, 5)  # num_bins + 1 derivatives
    inside = np.array([-0.5, 0.2, 0.9], np.float32)
    rqs = av.compile(lambda x, w, h, d: ops.rqs(x, w, h, d, left=-1.0, right=1.0, bottom=-1.0, top=1.0),
                     backend="numpy")
    y, ld = rqs(*map(av.tensor, (inside, w, h, d)))
    ty, tld = tops.rqs(*map(torch.tensor, (inside, w, h, d)), left=-1.0, right=1.0, bottom=-1.0, top=1.0)
    assert rel(y, ty) < 1e-5 and rel(ld, tld) < 1e-5
    outside = np.array([-0.5, 1.5, 0.9], np.float32)
    with pytest.raises(InputOutsideDomain):
        tops.rqs(*map(torch.tensor, (outside, w, h, d)), left=-1.0, right=1.0, bottom=-1.0, top=1.0)
    with pytest.raises(RuntimeError, match="InputOutsideDomain"):
        rqs(*map(av.tensor, (outside, w, h, d)))
    # as written, `if torch.min(inputs) < left or ...: raise InputOutsideDomain()` asks a traced value in Python
    written_ops = nsf_ops(av, F)
    with pytest.raises(av.TracerError, match=r"Python `if`.*concrete value.*av.where"):
        av.compile(lambda x, w, h, d: written_ops.rqs(x, w, h, d, left=-1.0, right=1.0, bottom=-1.0, top=1.0),
                   backend="numpy")(*map(av.tensor, (inside, w, h, d)))
    with pytest.raises(InputOutsideDomain):  # eagerly it raises as nflows does
        written_ops.rqs(*map(av.tensor, (outside, w, h, d)), left=-1.0, right=1.0, bottom=-1.0, top=1.0)


# -- 3. SASRec (pmixer/SASRec.pytorch model.py, main.py's training step) -------------------------------------------

def sasrec(lib, F_, th, item_num=12, maxlen=6, hidden_units=8, num_blocks=2, num_heads=2, dropout_rate=0.0,
           as_written=False):
    torch, nn = th, lib

    class PointWiseFeedForward(nn.Module):
        def __init__(self, hidden_units, dropout_rate):
            super(PointWiseFeedForward, self).__init__()  # noqa: UP008
            self.conv1 = nn.Conv1d(hidden_units, hidden_units, kernel_size=1)
            self.dropout1 = nn.Dropout(p=dropout_rate)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv1d(hidden_units, hidden_units, kernel_size=1)
            self.dropout2 = nn.Dropout(p=dropout_rate)

        def forward(self, inputs):
            outputs = self.dropout2(self.conv2(self.relu(self.dropout1(self.conv1(inputs.transpose(-1, -2))))))
            outputs = outputs.transpose(-1, -2)  # as Conv1D requires (N, C, Length)
            outputs += inputs
            return outputs

    class SASRec(nn.Module):
        def __init__(self, user_num, item_num):
            super(SASRec, self).__init__()  # noqa: UP008
            self.user_num = user_num
            self.item_num = item_num
            self.dev = "cpu"

            self.item_emb = nn.Embedding(self.item_num + 1, hidden_units, padding_idx=0)
            self.pos_emb = nn.Embedding(maxlen, hidden_units)  # TO IMPROVE
            self.emb_dropout = nn.Dropout(p=dropout_rate)

            self.attention_layernorms = nn.ModuleList()  # to be Q for self-attention
            self.attention_layers = nn.ModuleList()
            self.forward_layernorms = nn.ModuleList()
            self.forward_layers = nn.ModuleList()

            self.last_layernorm = nn.LayerNorm(hidden_units, eps=1e-8)

            for _ in range(num_blocks):
                new_attn_layernorm = nn.LayerNorm(hidden_units, eps=1e-8)
                self.attention_layernorms.append(new_attn_layernorm)

                new_attn_layer = nn.MultiheadAttention(hidden_units, num_heads, dropout_rate)
                self.attention_layers.append(new_attn_layer)

                new_fwd_layernorm = nn.LayerNorm(hidden_units, eps=1e-8)
                self.forward_layernorms.append(new_fwd_layernorm)

                new_fwd_layer = PointWiseFeedForward(hidden_units, dropout_rate)
                self.forward_layers.append(new_fwd_layer)

        def log2feats(self, log_seqs):
            seqs = self.item_emb(torch.LongTensor(log_seqs).to(self.dev))
            seqs *= self.item_emb.embedding_dim ** 0.5
            if as_written:
                positions = np.tile(np.array(range(log_seqs.shape[1])), [log_seqs.shape[0], 1])
            else:  # the port (the TODO there): numpy positions are data baked into the graph, see the test
                positions = torch.arange(log_seqs.shape[1]).repeat(log_seqs.shape[0], 1)
            seqs += self.pos_emb(torch.LongTensor(positions).to(self.dev))
            seqs = self.emb_dropout(seqs)

            timeline_mask = torch.BoolTensor(log_seqs == 0).to(self.dev)
            seqs *= ~timeline_mask.unsqueeze(-1)  # broadcast in last dim

            tl = seqs.shape[1]  # time dim len for enforce causality
            attention_mask = ~torch.tril(torch.ones((tl, tl), dtype=torch.bool, device=self.dev))

            for i in range(len(self.attention_layers)):
                seqs = torch.transpose(seqs, 0, 1)
                Q = self.attention_layernorms[i](seqs)  # noqa: N806
                mha_outputs, _ = self.attention_layers[i](Q, seqs, seqs, attn_mask=attention_mask)
                seqs = Q + mha_outputs
                seqs = torch.transpose(seqs, 0, 1)

                seqs = self.forward_layernorms[i](seqs)
                seqs = self.forward_layers[i](seqs)
                seqs *= ~timeline_mask.unsqueeze(-1)

            log_feats = self.last_layernorm(seqs)  # (U, T, C) -> (U, -1, C)
            return log_feats

        def forward(self, user_ids, log_seqs, pos_seqs, neg_seqs):  # for training
            log_feats = self.log2feats(log_seqs)  # user_ids hasn't been used yet

            pos_embs = self.item_emb(torch.LongTensor(pos_seqs).to(self.dev))
            neg_embs = self.item_emb(torch.LongTensor(neg_seqs).to(self.dev))

            pos_logits = (log_feats * pos_embs).sum(dim=-1)
            neg_logits = (log_feats * neg_embs).sum(dim=-1)
            return pos_logits, neg_logits  # pos_pred, neg_pred

        def predict(self, user_ids, log_seqs, item_indices):  # for inference
            log_feats = self.log2feats(log_seqs)
            final_feat = log_feats[:, -1, :]  # only use last QKV classifier, a waste
            item_embs = self.item_emb(torch.LongTensor(item_indices).to(self.dev))  # (U, I, C)
            logits = item_embs.matmul(final_feat.unsqueeze(-1)).squeeze(-1)
            return logits  # preds # (U, I)
    return SASRec(5, item_num)


def sasrec_batch(rng, lengths, item_num=12, maxlen=6):
    """WarpSampler's batch: left-padded histories, the next items, one sampled negative per position"""
    seq, pos, neg = (np.zeros((len(lengths), maxlen), np.int64) for _ in range(3))
    for u, n in enumerate(lengths):
        items = rng.integers(1, item_num + 1, n + 1)
        seq[u, maxlen - n:], pos[u, maxlen - n:] = items[:-1], items[1:]
        neg[u, maxlen - n:] = rng.integers(1, item_num + 1, n)
    indices = np.where(pos != 0)
    return seq, pos, neg, indices[0], indices[1]


def test_sasrec_timeline_and_causal_masks_bce_on_np_where_positions_and_l2_on_item_embeddings_with_adam():
    # float64: the attention keys' biases have zero gradients in exact arithmetic (a shift of a query's scores that
    # the softmax removes); float32's roundoff there is what Adam makes lr-sized steps of, different on the two sides
    model, tmodel = pair(sasrec)
    optimizer = av.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.98))
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-2, betas=(0.9, 0.98))
    rng = np.random.default_rng(5)
    batches = [sasrec_batch(rng, rng.permutation([6, 4, 3, 5])) for _ in range(4)]
    l2_emb = 1e-3

    def loss_fn(model, seq, pos, neg, rows, cols):
        th, _, lib = ns_of(seq)
        bce_criterion = lib.BCEWithLogitsLoss()
        pos_logits, neg_logits = model(np.arange(seq.shape[0]), seq, pos, neg)
        # dtype=: the test runs in float64 (below), main.py's float32 labels would mix dtypes
        pos_labels, neg_labels = th.ones(pos_logits.shape, dtype=pos_logits.dtype), th.zeros(neg_logits.shape,
                                                                                             dtype=neg_logits.dtype)
        indices = (rows, cols)  # main.py's `np.where(pos != 0)` of the numpy batch, made with the batch
        loss = bce_criterion(pos_logits[indices], pos_labels[indices])
        loss += bce_criterion(neg_logits[indices], neg_labels[indices])
        for param in model.item_emb.parameters():
            loss += l2_emb * th.norm(param)
        return loss, (pos_logits, neg_logits)
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, tol=1e-8, loss_tol=1e-10)
    seq = batches[0][0]
    items = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]])
    assert rel(model.predict(None, av.tensor(seq), av.tensor(items)),
               tmodel.predict(None, torch.tensor(seq), torch.tensor(items))) < 1e-8
    # padded positions: masked out of every block, their item embedding (padding_idx=0) never trained
    assert np.abs(model.item_emb.weight.numpy()[0]).max() == 0


def test_sasrec_numpy_positions_as_written_are_baked_into_the_compiled_step_and_warned():
    written, _ = pair(lambda lib, F_, th: sasrec(lib, F_, th, as_written=True))
    port, _ = pair(sasrec)
    seq, pos, neg, _, _ = sasrec_batch(np.random.default_rng(6), [6, 4, 3, 5])
    assert rel(written(None, seq, pos, neg)[0], port(None, av.tensor(seq), av.tensor(pos), av.tensor(neg))[0]) < 1e-12
    run = av.compile(lambda m, s, p, n: m(None, s, p, n)[0].sum(), backend="numpy")
    with pytest.warns(UserWarning, match="uses arrays that are not among its arguments.*traced again"):
        run(written, av.tensor(seq), av.tensor(pos), av.tensor(neg))


# -- 5. Denoising score matching with annealed Langevin sampling (ermongroup/ncsnv2 losses/dsm.py,
#       models/__init__.py's get_sigmas and anneal_Langevin_dynamics, models/ema.py's EMAHelper) ---------------------

def with_draws(th, draws):
    """`th` whose randn_like hands out the given draws in order: the same noise on both sides"""
    it = iter(draws)
    return types.SimpleNamespace(**{k: getattr(th, k) for k in ("ones", "norm", "sqrt", "no_grad")},
                                 randn_like=lambda x: next(it))


def ncsn(lib, F_, th, dim=2, hidden=16, num_classes=5, sigma_begin=1.0, sigma_end=0.05):
    torch, nn, F = th, lib, F_

    def get_sigmas():
        return torch.exp(torch.linspace(math.log(sigma_begin), math.log(sigma_end), num_classes))

    class ScoreNet(nn.Module):
        """a toy NCSNv2: an MLP conditioned by a noise-level embedding, its output divided by the level's sigma"""

        def __init__(self):
            super().__init__()
            self.register_buffer('sigmas', get_sigmas())
            self.embed = nn.Embedding(num_classes, hidden)
            self.fc1 = nn.Linear(dim, hidden)
            self.fc2 = nn.Linear(hidden, hidden)
            self.out = nn.Linear(hidden, dim)

        def forward(self, x, y):
            h = F.softplus(self.fc1(x) + self.embed(y))
            h = F.softplus(self.fc2(h))
            output = self.out(h)
            used_sigmas = self.sigmas[y].view(x.shape[0], *([1] * len(x.shape[1:])))
            output = output / used_sigmas
            return output
    return ScoreNet()


def anneal_dsm_score_estimation(torch, scorenet, samples, sigmas, labels=None, anneal_power=2., hook=None):
    if labels is None:
        labels = torch.randint(0, len(sigmas), (samples.shape[0],), device=samples.device)
    used_sigmas = sigmas[labels].view(samples.shape[0], *([1] * len(samples.shape[1:])))
    noise = torch.randn_like(samples) * used_sigmas
    perturbed_samples = samples + noise
    target = - 1 / (used_sigmas ** 2) * noise
    scores = scorenet(perturbed_samples, labels)
    target = target.view(target.shape[0], -1)
    scores = scores.view(scores.shape[0], -1)
    loss = 1 / 2. * ((scores - target) ** 2).sum(dim=-1) * used_sigmas.squeeze() ** anneal_power

    if hook is not None:
        hook(loss, labels)

    return loss.mean(dim=0)


def anneal_Langevin_dynamics(torch, x_mod, scorenet, sigmas, n_steps_each=200, step_lr=0.000008,  # noqa: N802
                             final_only=False, verbose=False, denoise=True):
    images = []

    with torch.no_grad():
        for c, sigma in enumerate(sigmas):
            labels = torch.ones(x_mod.shape[0], device=x_mod.device) * c
            labels = labels.long()
            step_size = step_lr * (sigma / sigmas[-1]) ** 2
            for s in range(n_steps_each):  # noqa: B007
                grad = scorenet(x_mod, labels)

                noise = torch.randn_like(x_mod)
                grad_norm = torch.norm(grad.view(grad.shape[0], -1), dim=-1).mean()
                noise_norm = torch.norm(noise.view(noise.shape[0], -1), dim=-1).mean()
                x_mod = x_mod + step_size * grad + noise * torch.sqrt(step_size * 2)

                image_norm = torch.norm(x_mod.view(x_mod.shape[0], -1), dim=-1).mean()
                snr = torch.sqrt(step_size / 2.) * grad_norm / noise_norm
                grad_mean_norm = torch.norm(grad.mean(dim=0).view(-1)) ** 2 * sigma ** 2

                if not final_only:
                    images.append(x_mod.to('cpu'))
                if verbose:
                    print("level: {}, step_size: {}, grad_norm: {}, image_norm: {}, snr: {}, grad_mean_norm: {}".format(  # noqa: UP032
                        c, step_size, grad_norm.item(), image_norm.item(), snr.item(), grad_mean_norm.item()))

        if denoise:
            last_noise = (len(sigmas) - 1) * torch.ones(x_mod.shape[0], device=x_mod.device)
            last_noise = last_noise.long()
            x_mod = x_mod + sigmas[-1] ** 2 * scorenet(x_mod, last_noise)
            images.append(x_mod.to('cpu'))

        if final_only:
            return [x_mod.to('cpu')]
        else:
            return images


class EMAHelper(object):  # noqa: UP004
    def __init__(self, lib, mu=0.999):
        self.nn = lib
        self.mu = mu
        self.shadow = {}

    def register(self, module):
        if isinstance(module, getattr(self.nn, "DataParallel", ())):
            module = module.module
        for name, param in module.named_parameters():
            if param.requires_grad:
                self.shadow[name] = param.data.clone()

    def update(self, module):
        if isinstance(module, getattr(self.nn, "DataParallel", ())):
            module = module.module
        for name, param in module.named_parameters():
            if param.requires_grad:
                self.shadow[name].data = (1. - self.mu) * param.data + self.mu * self.shadow[name].data

    def ema(self, module):
        if isinstance(module, getattr(self.nn, "DataParallel", ())):
            module = module.module
        for name, param in module.named_parameters():
            if param.requires_grad:
                param.data.copy_(self.shadow[name].data)

    def ema_copy(self, module):
        module_copy = copy.deepcopy(module)
        self.ema(module_copy)
        return module_copy


def test_ncsn_annealed_dsm_loss_with_adam_ema_of_weights_and_annealed_langevin_sampling():
    model, tmodel = pair(ncsn, dtype=F32)
    optimizer = av.optim.Adam(model.parameters(), lr=1e-2)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    ema, tema = EMAHelper(nn, mu=0.9), EMAHelper(torch.nn, mu=0.9)
    ema.register(model)
    tema.register(tmodel)
    rng = np.random.default_rng(8)
    n = 16
    batches = [(two_moons(rng, n), rng.integers(0, 5, n), randn(rng, n, 2)) for _ in range(4)]

    def loss_fn(scorenet, samples, labels, z):
        th, _, _ = ns_of(samples)
        loss = anneal_dsm_score_estimation(with_draws(th, [z]), scorenet, samples, scorenet.sigmas, labels)
        return loss, loss

    def after(it):  # runner: `if config.model.ema: ema_helper.update(score)` after each optimizer step
        ema.update(model)
        tema.update(tmodel)
        for k in tema.shadow:
            assert rel(ema.shadow[k], tema.shadow[k]) < 1e-4, (it, k)
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, tol=1e-4, after=after)
    # sampling from the EMA weights (runner.sample: `test_score = ema_helper.ema_copy(score)`), the same noise
    test_score, ttest_score = ema.ema_copy(model), tema.ema_copy(tmodel)
    assert rel(test_score.fc1.weight, ttest_score.fc1.weight) < 1e-4 and rel(model.fc1.weight, tmodel.fc1.weight) < 1e-4
    assert rel(test_score.fc1.weight, model.fc1.weight) > 1e-3  # the average, not the weights
    init, draws = randn(rng, 6, 2), [randn(rng, 6, 2) for _ in range(5 * 3)]
    images = anneal_Langevin_dynamics(with_draws(av, map(av.tensor, draws)), av.tensor(init), test_score,
                                      test_score.sigmas, n_steps_each=3, step_lr=0.01)
    timages = anneal_Langevin_dynamics(with_draws(torch, map(torch.tensor, draws)), torch.tensor(init), ttest_score,
                                       ttest_score.sigmas, n_steps_each=3, step_lr=0.01)
    assert len(images) == len(timages) == 5 * 3 + 1
    for a, b in zip(images, timages):
        assert rel(a, b) < 1e-4
    # compiled, the draws as arguments: one graph of the whole chain, under no_grad
    sample = av.compile(lambda m, x, draws: anneal_Langevin_dynamics(with_draws(av, draws), x, m, m.sigmas,
                                                                     n_steps_each=3, step_lr=0.01, final_only=True),
                        backend="numpy")
    with strict():
        final = sample(test_score, av.tensor(init), [av.tensor(d) for d in draws])
    assert len(final) == 1 and rel(final[0], timages[-1]) < 1e-4


# -- 6. DiffPool (RexYing/diffpool encoders.py's GraphConv, construct_mask and gcn_forward; the pooling and its
#       auxiliary losses as torch_geometric's dense_diff_pool writes them) -------------------------------------------

EPS = 1e-15


def diffpool(lib, F_, th, input_dim=3, hidden_dim=8, embedding_dim=8, label_dim=2, num_layers=2,
             assign_hidden_dim=8, assign_dim=3):
    torch, nn, F = th, lib, F_

    class GraphConv(nn.Module):
        def __init__(self, input_dim, output_dim, add_self=False, normalize_embedding=False, dropout=0.0, bias=True):
            super(GraphConv, self).__init__()  # noqa: UP008
            self.add_self = add_self
            self.dropout = dropout
            self.normalize_embedding = normalize_embedding
            self.input_dim = input_dim
            self.output_dim = output_dim
            self.weight = nn.Parameter(torch.FloatTensor(input_dim, output_dim))  # .cuda() there
            if bias:
                self.bias = nn.Parameter(torch.FloatTensor(output_dim))
            else:
                self.bias = None

        def forward(self, x, adj):
            y = torch.matmul(adj, x)
            if self.add_self:
                y += x
            y = torch.matmul(y, self.weight)
            if self.bias is not None:
                y = y + self.bias
            if self.normalize_embedding:
                y = F.normalize(y, p=2, dim=2)
            return y

    def dense_diff_pool(x, adj, s, mask=None, normalize=True):
        x = x.unsqueeze(0) if x.dim() == 2 else x
        adj = adj.unsqueeze(0) if adj.dim() == 2 else adj
        s = s.unsqueeze(0) if s.dim() == 2 else s

        batch_size, num_nodes, _ = x.size()

        s = torch.softmax(s, dim=-1)

        if mask is not None:
            mask = mask.view(batch_size, num_nodes, 1).to(x.dtype)
            x, s = x * mask, s * mask

        out = torch.matmul(s.transpose(1, 2), x)
        out_adj = torch.matmul(torch.matmul(s.transpose(1, 2), adj), s)

        link_loss = adj - torch.matmul(s, s.transpose(1, 2))
        link_loss = torch.norm(link_loss, p=2)
        if normalize is True:
            link_loss = link_loss / adj.numel()

        ent_loss = (-s * torch.log(s + EPS)).sum(dim=-1).mean()

        return out, out_adj, link_loss, ent_loss

    class SoftPoolingGcnEncoder(nn.Module):
        """encoders.py's GcnEncoderGraph and SoftPoolingGcnEncoder, one pooling, bn=False (its apply_bn builds a new
        BatchNorm1d on every call), concat of the max-pooled embeddings before and after the pooling"""

        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()
            self.conv_first, self.conv_block, self.conv_last = self.build_conv_layers(input_dim, hidden_dim,
                                                                                       embedding_dim, num_layers)
            self.assign_conv_first, self.assign_conv_block, self.assign_conv_last = self.build_conv_layers(
                input_dim, assign_hidden_dim, assign_dim, num_layers)
            assign_pred_input_dim = assign_hidden_dim * (num_layers - 1) + assign_dim
            self.assign_pred = nn.Linear(assign_pred_input_dim, assign_dim)
            pred_input_dim = hidden_dim * (num_layers - 1) + embedding_dim
            self.conv_first_after_pool, self.conv_block_after_pool, self.conv_last_after_pool = \
                self.build_conv_layers(pred_input_dim, hidden_dim, embedding_dim, num_layers)
            self.pred_model = nn.Linear(pred_input_dim * 2, label_dim)

            for m in self.modules():
                if isinstance(m, GraphConv):
                    m.weight.data = nn.init.xavier_uniform_(m.weight.data, gain=nn.init.calculate_gain('relu'))
                    if m.bias is not None:
                        m.bias.data = nn.init.constant_(m.bias.data, 0.0)

        def build_conv_layers(self, input_dim, hidden_dim, embedding_dim, num_layers):
            conv_first = GraphConv(input_dim=input_dim, output_dim=hidden_dim)
            conv_block = nn.ModuleList([GraphConv(input_dim=hidden_dim, output_dim=hidden_dim)
                                        for i in range(num_layers - 2)])
            conv_last = GraphConv(input_dim=hidden_dim, output_dim=embedding_dim)
            return conv_first, conv_block, conv_last

        def construct_mask(self, max_nodes, batch_num_nodes):
            # masks
            packed_masks = [torch.ones(int(num)) for num in batch_num_nodes]
            batch_size = len(batch_num_nodes)
            out_tensor = torch.zeros(batch_size, max_nodes)
            for i, mask in enumerate(packed_masks):
                out_tensor[i, :batch_num_nodes[i]] = mask
            return out_tensor.unsqueeze(2)  # .cuda() there

        def gcn_forward(self, x, adj, conv_first, conv_block, conv_last, embedding_mask=None):
            x = conv_first(x, adj)
            x = self.act(x)
            x_all = [x]
            for i in range(len(conv_block)):
                x = conv_block[i](x, adj)
                x = self.act(x)
                x_all.append(x)
            x = conv_last(x, adj)
            x_all.append(x)
            # x_tensor: [batch_size x num_nodes x embedding]
            x_tensor = torch.cat(x_all, dim=2)
            if embedding_mask is not None:
                x_tensor = x_tensor * embedding_mask
            return x_tensor

        def forward(self, x, adj, batch_num_nodes):
            max_num_nodes = adj.size()[1]
            embedding_mask = self.construct_mask(max_num_nodes, batch_num_nodes)
            out_all = []
            embedding_tensor = self.gcn_forward(x, adj, self.conv_first, self.conv_block, self.conv_last,
                                                embedding_mask)
            out, _ = torch.max(embedding_tensor, dim=1)
            out_all.append(out)

            assign_tensor = self.gcn_forward(x, adj, self.assign_conv_first, self.assign_conv_block,
                                             self.assign_conv_last, embedding_mask)
            s = self.assign_pred(assign_tensor)
            x, adj, link_loss, ent_loss = dense_diff_pool(embedding_tensor, adj, s, embedding_mask)
            self.assign_tensor = torch.softmax(s, dim=-1) * embedding_mask

            embedding_tensor = self.gcn_forward(x, adj, self.conv_first_after_pool, self.conv_block_after_pool,
                                                self.conv_last_after_pool)
            out, _ = torch.max(embedding_tensor, dim=1)
            out_all.append(out)
            output = torch.cat(out_all, dim=1)
            ypred = self.pred_model(output)
            return ypred, link_loss, ent_loss
    return SoftPoolingGcnEncoder()


def padded_graphs(rng, batch_num_nodes, max_nodes=6):
    adj = np.zeros((len(batch_num_nodes), max_nodes, max_nodes), np.float32)
    x = np.zeros((len(batch_num_nodes), max_nodes, 3), np.float32)
    for g, n in enumerate(batch_num_nodes):
        a = np.triu(rng.random((n, n)) < 0.5, 1)
        adj[g, :n, :n] = a + a.T
        x[g, :n] = rng.standard_normal((n, 3))
    return x, adj


def test_diffpool_masked_dense_gcn_soft_assignment_link_and_entropy_losses_with_adam_and_clipping():
    batch_num_nodes = [6, 4, 5]  # the padded graphs' sizes: Python ints, as the data loader's numpy array
    model, tmodel = pair(diffpool, dtype=F32)
    optimizer = av.optim.Adam(model.parameters(), lr=1e-2)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    rng = np.random.default_rng(9)
    batches = [(*padded_graphs(rng, batch_num_nodes), rng.integers(0, 2, 3)) for _ in range(4)]

    def loss_fn(model, x, adj, label):
        _, F_, _ = ns_of(x)
        ypred, link_loss, ent_loss = model(x, adj, batch_num_nodes)
        loss = F_.cross_entropy(ypred, label, reduction='mean') + link_loss + ent_loss
        return loss, (ypred, link_loss, ent_loss)
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, tol=1e-3, loss_tol=1e-5, clip=2.0)
    # padded nodes are assigned to no cluster
    x, adj, _ = batches[0]
    model(av.tensor(x), av.tensor(adj), batch_num_nodes)
    assign = model.assign_tensor.numpy()
    assert np.abs(assign[1, 4:]).max() == 0 and np.abs(assign[2, 5:]).max() == 0


# -- regressions -------------------------------------------------------------------------------------------------

def test_ema_update_inside_a_compiled_step_writes_the_shadow_weights_it_captured():
    # ncsnv2's runner calls `ema_helper.update(score)` right after `optimizer.step()`: in a compiled step the
    # helper's shadow tensors are neither arguments nor made by the step; their writes were silently dropped
    model, tmodel = pair(ncsn, dtype=F32)
    optimizer, toptimizer = av.optim.Adam(model.parameters(), lr=1e-2), torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    ema, tema = EMAHelper(nn, mu=0.5), EMAHelper(torch.nn, mu=0.5)
    ema.register(model)
    tema.register(tmodel)
    rng = np.random.default_rng(11)

    def train_step(score, optimizer, samples, labels, z):
        loss, grads = av.value_and_grad(lambda m: anneal_dsm_score_estimation(
            with_draws(av, [z]), m, samples, m.sigmas, labels))(score)
        optimizer.step(grads)
        ema.update(score)
        return loss
    run = compiled_step(train_step)
    for it in range(3):
        x, labels, z = two_moons(rng, 8), rng.integers(0, 5, 8), randn(rng, 8, 2)
        tloss = anneal_dsm_score_estimation(with_draws(torch, [torch.tensor(z)]), tmodel, torch.tensor(x),
                                            tmodel.sigmas, torch.tensor(labels))
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        tema.update(tmodel)
        with pytest.warns(UserWarning, match="not among its arguments"):  # the shadow's old values: read, baked
            loss = run(model, optimizer, av.tensor(x), av.tensor(labels), av.tensor(z))
        assert rel(loss, tloss) < 1e-5
        same_weights(model, tmodel, 1e-4)
        for k in tema.shadow:
            assert rel(ema.shadow[k], tema.shadow[k]) < 1e-4, (it, k)


@pytest.mark.parametrize("write", ["data=", "data.copy_", "copy_", "add_", "setitem"])
def test_a_write_into_a_tensor_captured_by_a_traced_function_reaches_it(write):
    kept = {"w": av.ones(2)}

    def f(x):
        made = av.tensor([0.0, 0.0])  # made here (an eager literal): a temporary, written, nothing to write back
        made[0] = x.sum()
        s = kept["w"]
        if write == "data=":
            s.data = x * 3
        elif write == "data.copy_":
            s.data.copy_(x * 3)
        elif write == "copy_":
            s.copy_(x * 3)
        elif write == "add_":
            s.add_(x * 3)
        else:
            s[:] = x * 3
        return (x * made[0]).sum()
    x = av.tensor(np.array([1.0, 2.0], np.float32))
    adds = write == "add_"
    run = av.compile(f, backend="numpy")
    for k in (1, 2):
        kept["w"] = av.ones(2)  # a new object each call: the one the scope holds is written, as eagerly
        with pytest.warns(UserWarning, match="not among its arguments.*writes tensors it captured"):
            assert float(run(x * k)) == 9.0 * k * k
        assert kept["w"].numpy().tolist() == [3.0 * k + adds, 6.0 * k + adds], k
    assert run.cache_info().misses == 2  # traced on each call, as for the captured arrays it reads
    with pytest.warns(UserWarning, match="not among its arguments"):
        assert len(run.inspect(x).traced_graph.outputs) == 2  # the result and the captured tensor's new value
    # differentiated (eagerly) too
    kept["w"].copy_(av.ones(2))
    with pytest.warns(UserWarning, match="not among its arguments"):
        assert av.grad(f)(x).numpy().tolist() == [6.0, 6.0]
    assert kept["w"].numpy().tolist() == [3.0 + adds, 6.0 + adds]
    # a gradient inside a compiled step: written back once, after the step
    kept["w"].copy_(av.ones(2))
    with pytest.warns(UserWarning, match="not among its arguments"):
        g = av.compile(lambda x: av.grad(f)(x) * 1, backend="numpy")(x)
    assert g.numpy().tolist() == [6.0, 6.0]
    assert kept["w"].numpy().tolist() == [3.0 + adds, 6.0 + adds]


def test_a_copy_made_inside_a_traced_function_is_a_temporary_not_captured_state():
    kept = {"w": av.ones(2)}

    def f(x):
        c = copy.deepcopy(kept["w"])  # EMAHelper.ema_copy's deepcopy, made in the function
        c.copy_(x * 5)
        return (c * 2).sum()
    run = av.compile(f, backend="numpy")
    with strict():  # nothing captured: cached, and the original untouched
        assert float(run(av.ones(2))) == 20.0 and float(run(av.ones(2))) == 20.0
    assert run.cache_info().misses == 1 and kept["w"].numpy().tolist() == [1.0, 1.0]


def test_timm_model_ema_v2_of_a_deepcopied_module_updated_inside_a_compiled_step():
    # timm/utils/model_ema.py's ModelEmaV2: a deepcopy of the model, neither an argument of the step nor made by it,
    # its state written by `ema_v.copy_(...)` under no_grad (running statistics and num_batches_tracked included)
    class ModelEmaV2:
        def __init__(self, th, model, decay=0.9):
            self.th = th
            self.module = copy.deepcopy(model)
            self.module.eval()
            self.decay = decay

        def _update(self, model, update_fn):
            with self.th.no_grad():
                for ema_v, model_v in zip(self.module.state_dict().values(), model.state_dict().values()):
                    ema_v.copy_(update_fn(ema_v, model_v))

        def update(self, model):
            self._update(model, update_fn=lambda e, m: self.decay * e + (1. - self.decay) * m)

    model, tmodel = pair(lambda lib, F_, th: lib.Sequential(lib.Linear(3, 4), lib.BatchNorm1d(4), lib.Linear(4, 1)),
                         dtype=F32)
    ema, tema = ModelEmaV2(av, model), ModelEmaV2(torch, tmodel)
    optimizer, toptimizer = av.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(tmodel.parameters(), lr=0.1)

    def train_step(model, optimizer, x, y):
        loss, grads = av.value_and_grad(lambda m: ((m(x) - y) ** 2).mean())(model)
        optimizer.step(grads)
        ema.update(model)
        return loss
    run = compiled_step(train_step)
    rng = np.random.default_rng(12)
    for it in range(3):
        x, y = randn(rng, 8, 3), randn(rng, 8, 1)
        tloss = ((tmodel(torch.tensor(x)) - torch.tensor(y)) ** 2).mean()
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        tema.update(tmodel)
        with pytest.warns(UserWarning, match="not among its arguments"):
            loss = (run if it else train_step)(model, optimizer, av.tensor(x), av.tensor(y))
        assert rel(loss, tloss) < 1e-5
        same_weights(model, tmodel, 1e-4)
        same_weights(ema.module, tema.module, 1e-4)
