"""Round 9k of port QA: segmentation and detection heads as popular repositories write them, written once over
`lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon), trained a few steps from torch's weights on random
float64 data and compared with torch after every step (losses, parameters, buffers), the first step eagerly and
the rest compiled (numpy and cpu backends), with warnings as errors while tracing.

Programs: DeepLabV3 as torchvision writes it (models/segmentation/deeplabv3.py's ASPP: a 1x1 branch, ASPPConv's
dilated 3x3 convolutions at several rates, ASPPPooling, an nn.Sequential whose forward iterates over itself, with
adaptive_avg_pool2d to 1 and bilinear interpolate(align_corners=False) back, the concatenation and the 1x1
projection with BatchNorm2d and dropout; DeepLabHead, FCNHead as the aux classifier, _SimpleSegmentationModel's
OrderedDict of outputs upsampled to the input), trained as references/segmentation/train.py does (criterion's
cross entropy with ignore_index=255 over the outputs, the aux one weighted 0.5; SGD with momentum and weight
decay, the poly LambdaLR stepped per iteration); PSPNet's pyramid pooling module as hszhao/semseg writes it
(PPM's adaptive_avg_pool2d to 1, 2, 3 and 6 bins, 1x1 conv, BatchNorm2d and ReLU(inplace=True), bilinear
interpolate(align_corners=True) back and concatenated with the input; the cls and aux heads with Dropout2d,
main_loss + 0.4 * aux_loss, and train.py's poly_learning_rate written into the param groups by hand, the head's
group at 10x the backbone's); and an FCOS head as torchvision writes it (FCOSClassificationHead and
FCOSRegressionHead's GroupNorm towers, the prior-probability bias, relu of the box regression, the
permute/reshape to (N, HWA, K), FCOSBoxCoder's encode and decode normalised by the anchors' size, and
compute_loss's sigmoid_focal_loss over the one-hot classes, generalized_box_iou_loss over the foreground and the
centerness target by the sqrt of the min/max ratios with binary_cross_entropy_with_logits, each divided by the
number of foreground anchors), trained with SGD.

The matching of anchors to boxes (FCOS's centre sampling) is data preparation: its result, the per-anchor
classes and boxes and the foreground mask, is given as input. On torch's side the losses that torchvision.ops
provides are written out as torchvision writes them (torchvision is not a dependency of the tests); on Avalon's
they are `avalon.vision.ops`. Dropout is 0. What the ports change: gradients are values (`av.value_and_grad`,
`opt.step(grads)`); compute_loss's `pred_boxes[foregroud_mask]` reads a masked selection whose shape depends
on the mask's values, which the README says is an error inside a traced function, so the port selects the
foreground by the mask's indices, computed with numpy beside the mask and given as inputs (and
`num_foreground`, `foregroud_mask.sum().item()` there, a Python int beside them).

The regression at the end is what the programs found: parameter groups of different submodules'
`parameters()` (`[dict(params=model.layer3.parameters(), lr=lr), dict(params=model.layer4.parameters(), ...)]`,
PSPNet's train.py) were refused because the names relative to each submodule collide ('0.weight' in both).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict

import avalon as av
from avalon import optim
from avalon.nn import functional as F
from avalon.vision import ops

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


# -- 1. DeepLabV3 (torchvision: models/segmentation/deeplabv3.py, fcn.py's FCNHead, _utils.py's
#       _SimpleSegmentationModel; references/segmentation/train.py's criterion and poly LR) -------------------------

def deeplabv3(lib, F_, th, num_classes=4, in_channels=6, out_channels=8, atrous_rates=(1, 2, 3), dropout=0.0):
    nn_ = lib

    class ASPPConv(nn_.Sequential):
        def __init__(self, in_channels, out_channels, dilation):
            modules = [
                nn_.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
                nn_.BatchNorm2d(out_channels),
                nn_.ReLU(),
            ]
            super().__init__(*modules)

    class ASPPPooling(nn_.Sequential):
        def __init__(self, in_channels, out_channels):
            super().__init__(
                nn_.AdaptiveAvgPool2d(1),
                nn_.Conv2d(in_channels, out_channels, 1, bias=False),
                nn_.BatchNorm2d(out_channels),
                nn_.ReLU(),
            )

        def forward(self, x):
            size = x.shape[-2:]
            for mod in self:
                x = mod(x)
            return F_.interpolate(x, size=size, mode="bilinear", align_corners=False)

    class ASPP(nn_.Module):
        def __init__(self, in_channels, atrous_rates, out_channels=256):
            super().__init__()
            modules = []
            modules.append(
                nn_.Sequential(nn_.Conv2d(in_channels, out_channels, 1, bias=False), nn_.BatchNorm2d(out_channels),
                               nn_.ReLU())
            )
            rates = tuple(atrous_rates)
            for rate in rates:
                modules.append(ASPPConv(in_channels, out_channels, rate))
            modules.append(ASPPPooling(in_channels, out_channels))
            self.convs = nn_.ModuleList(modules)
            self.project = nn_.Sequential(
                nn_.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
                nn_.BatchNorm2d(out_channels),
                nn_.ReLU(),
                nn_.Dropout(dropout),  # 0.5 there
            )

        def forward(self, x):
            _res = []
            for conv in self.convs:
                _res.append(conv(x))
            res = th.cat(_res, dim=1)
            return self.project(res)

    class DeepLabHead(nn_.Sequential):
        def __init__(self, in_channels, num_classes, atrous_rates=(12, 24, 36)):
            super().__init__(
                ASPP(in_channels, atrous_rates, out_channels),
                nn_.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                nn_.BatchNorm2d(out_channels),
                nn_.ReLU(),
                nn_.Conv2d(out_channels, num_classes, 1),
            )

    class FCNHead(nn_.Sequential):
        def __init__(self, in_channels, channels):
            inter_channels = in_channels // 4
            layers = [
                nn_.Conv2d(in_channels, inter_channels, 3, padding=1, bias=False),
                nn_.BatchNorm2d(inter_channels),
                nn_.ReLU(),
                nn_.Dropout(dropout),  # 0.1 there
                nn_.Conv2d(inter_channels, channels, 1),
            ]
            super().__init__(*layers)

    class Backbone(nn_.Module):
        """IntermediateLayerGetter's {"out": layer4, "aux": layer3}, stood in for by two strided stages."""
        def __init__(self):
            super().__init__()
            self.layer3 = nn_.Sequential(nn_.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn_.BatchNorm2d(8),
                                         nn_.ReLU(inplace=True))
            self.layer4 = nn_.Sequential(nn_.Conv2d(8, in_channels, 3, padding=2, dilation=2, bias=False),
                                         nn_.BatchNorm2d(in_channels), nn_.ReLU(inplace=True))

        def forward(self, x):
            out = OrderedDict()
            x = self.layer3(x)
            out["aux"] = x
            out["out"] = self.layer4(x)
            return out

    class DeepLabV3(nn_.Module):
        def __init__(self, backbone, classifier, aux_classifier=None):
            super().__init__()
            self.backbone = backbone
            self.classifier = classifier
            self.aux_classifier = aux_classifier

        def forward(self, x):
            input_shape = x.shape[-2:]
            # contract: features is a dict of tensors
            features = self.backbone(x)

            result = OrderedDict()
            x = features["out"]
            x = self.classifier(x)
            x = F_.interpolate(x, size=input_shape, mode="bilinear", align_corners=False)
            result["out"] = x

            if self.aux_classifier is not None:
                x = features["aux"]
                x = self.aux_classifier(x)
                x = F_.interpolate(x, size=input_shape, mode="bilinear", align_corners=False)
                result["aux"] = x

            return result

    return DeepLabV3(Backbone(), DeepLabHead(in_channels, num_classes, atrous_rates), FCNHead(8, num_classes))


def seg_criterion(F_):
    def criterion(inputs, target):
        losses = {}
        for name, x in inputs.items():
            losses[name] = F_.cross_entropy(x, target, ignore_index=255)

        if len(losses) == 1:
            return losses["out"]

        return losses["out"] + 0.5 * losses["aux"]

    def loss(model, image, target):
        return criterion(model(image), target)
    return loss


def seg_batch(rng, n=2, size=(13, 11), classes=4):
    image = rng.standard_normal((n, 3, *size))
    target = rng.integers(0, classes, (n, *size))
    target[rng.random(target.shape) < 0.2] = 255  # the void label
    return image, target


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_deeplabv3_aspp_image_pooling_aux_head_ignore_index_and_poly_lr(mode):
    ours, theirs = pair(deeplabv3)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-4)
    params = lambda m: [  # noqa: E731  (train.py's params_to_optimize)
        {"params": [p for p in m.backbone.parameters() if p.requires_grad]},
        {"params": [p for p in m.classifier.parameters() if p.requires_grad]},
        {"params": [p for p in m.aux_classifier.parameters() if p.requires_grad], "lr": kw["lr"] * 10},
    ]
    opt, topt = optim.SGD(params(ours), **kw), torch.optim.SGD(params(theirs), **kw)
    iters = 8
    poly = lambda x: (1 - x / iters) ** 0.9  # noqa: E731
    sched, tsched = optim.lr_scheduler.LambdaLR(opt, poly), torch.optim.lr_scheduler.LambdaLR(topt, poly)
    loss_fn, tloss_fn = seg_criterion(F), seg_criterion(TF)

    def step(model, opt, image, target):
        loss, grads = av.value_and_grad(loss_fn)(model, image, target)
        opt.step(grads)
        return loss
    run = compiled(step, mode)
    rng = np.random.default_rng(0)
    for it in range(4):
        image, target = seg_batch(rng)
        topt.zero_grad()
        tl = tloss_fn(theirs, T(image), T(target))
        tl.backward()
        topt.step()
        tsched.step()
        with strict():
            loss = (run if it else step)(ours, opt, av.tensor(image), av.tensor(target))
        sched.step()
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1
    ours.eval(), theirs.eval()
    image, _ = seg_batch(rng)
    out, tout = ours(av.tensor(image)), theirs(T(image))
    assert list(out) == list(tout) == ["out", "aux"]
    assert rel(out["out"], tout["out"]) < 1e-12 and rel(out["aux"], tout["aux"]) < 1e-12


# -- 2. PSPNet (hszhao/semseg: model/pspnet.py's PPM and PSPNet, tool/train.py's poly_learning_rate) -------------

def pspnet(lib, F_, th, bins=(1, 2, 3, 6), dropout=0.0, classes=4, zoom_factor=2, fea_dim=8):
    nn = lib

    class PPM(nn.Module):
        def __init__(self, in_dim, reduction_dim, bins):
            super(PPM, self).__init__()  # noqa: UP008
            self.features = []
            for bin in bins:
                self.features.append(nn.Sequential(
                    nn.AdaptiveAvgPool2d(bin),
                    nn.Conv2d(in_dim, reduction_dim, kernel_size=1, bias=False),
                    nn.BatchNorm2d(reduction_dim),
                    nn.ReLU(inplace=True)
                ))
            self.features = nn.ModuleList(self.features)

        def forward(self, x):
            x_size = x.size()
            out = [x]
            for f in self.features:
                out.append(F_.interpolate(f(x), x_size[2:], mode='bilinear', align_corners=True))
            return th.cat(out, 1)

    class PSPNet(nn.Module):
        def __init__(self):
            super(PSPNet, self).__init__()  # noqa: UP008
            self.zoom_factor = zoom_factor
            self.criterion = nn.CrossEntropyLoss(ignore_index=255)
            # resnet's layer0..layer4, stood in for by two stages (the last one dilated, as there)
            self.layer3 = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6),
                                        nn.ReLU(inplace=True))
            self.layer4 = nn.Sequential(nn.Conv2d(6, fea_dim, 3, padding=2, dilation=2, bias=False),
                                        nn.BatchNorm2d(fea_dim), nn.ReLU(inplace=True))
            self.ppm = PPM(fea_dim, int(fea_dim / len(bins)), bins)
            fea = fea_dim + int(fea_dim / len(bins)) * len(bins)
            self.cls = nn.Sequential(
                nn.Conv2d(fea, 8, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(8),
                nn.ReLU(inplace=True),
                nn.Dropout2d(p=dropout),
                nn.Conv2d(8, classes, kernel_size=1)
            )
            self.aux = nn.Sequential(
                nn.Conv2d(6, 4, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(4),
                nn.ReLU(inplace=True),
                nn.Dropout2d(p=dropout),
                nn.Conv2d(4, classes, kernel_size=1)
            )

        def forward(self, x, y=None):
            x_size = x.size()
            assert (x_size[2]-1) % 2 == 0 and (x_size[3]-1) % 2 == 0  # % 8 there
            h = int((x_size[2] - 1) / 2 * self.zoom_factor + 1)
            w = int((x_size[3] - 1) / 2 * self.zoom_factor + 1)

            x_tmp = self.layer3(x)
            x = self.layer4(x_tmp)
            x = self.ppm(x)
            x = self.cls(x)
            if self.zoom_factor != 1:
                x = F_.interpolate(x, size=(h, w), mode='bilinear', align_corners=True)

            if self.training:
                aux = self.aux(x_tmp)
                if self.zoom_factor != 1:
                    aux = F_.interpolate(aux, size=(h, w), mode='bilinear', align_corners=True)
                main_loss = self.criterion(x, y)
                aux_loss = self.criterion(aux, y)
                return x.max(1)[1], main_loss, aux_loss
            else:
                return x
    return PSPNet()


def poly_learning_rate(base_lr, curr_iter, max_iter, power=0.9):
    """poly learning rate policy"""
    lr = base_lr * (1 - float(curr_iter) / max_iter) ** power
    return lr


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_pspnet_pyramid_pooling_bins_align_corners_aux_loss_and_hand_written_poly_lr(mode):
    ours, theirs = pair(pspnet)
    base_lr, aux_weight, max_iter, index_split = 0.02, 0.4, 8, 2
    modules_ori = lambda m: [m.layer3, m.layer4]  # noqa: E731
    modules_new = lambda m: [m.ppm, m.cls, m.aux]  # noqa: E731

    def groups(model):
        params_list = []
        for module in modules_ori(model):
            params_list.append(dict(params=module.parameters(), lr=base_lr))
        for module in modules_new(model):
            params_list.append(dict(params=module.parameters(), lr=base_lr * 10))
        return params_list
    kw = dict(lr=base_lr, momentum=0.9, weight_decay=1e-4)
    opt, topt = optim.SGD(groups(ours), **kw), torch.optim.SGD(groups(theirs), **kw)

    def loss_fn(model, input, target):
        output, main_loss, aux_loss = model(input, target)
        return main_loss + aux_weight * aux_loss, output

    def step(model, opt, input, target):
        (loss, output), grads = av.value_and_grad(loss_fn, has_aux=True)(model, input, target)
        opt.step(grads)
        return loss, output
    run = compiled(step, mode)
    rng = np.random.default_rng(1)
    for it in range(4):
        image, target = seg_batch(rng, size=(9, 7))
        topt.zero_grad()
        tl, tout = loss_fn(theirs, T(image), T(target))
        tl.backward()
        topt.step()
        with strict():
            loss, output = (run if it else step)(ours, opt, av.tensor(image), av.tensor(target))
        assert rel(loss, tl) < 1e-12, it
        assert np.array_equal(output.numpy(), tout.numpy()), it
        same_weights(ours, theirs, 1e-10)
        current_iter = it + 1
        current_lr = poly_learning_rate(base_lr, current_iter, max_iter)
        for o in (opt, topt):
            for index in range(0, index_split):
                o.param_groups[index]['lr'] = current_lr
            for index in range(index_split, len(o.param_groups)):
                o.param_groups[index]['lr'] = current_lr * 10
    assert run.cache_info().misses == 1
    ours.eval(), theirs.eval()
    image, _ = seg_batch(rng, size=(9, 7))
    assert rel(ours(av.tensor(image)), theirs(T(image))) < 1e-12


# -- 3. FCOS head (torchvision: models/detection/fcos.py's FCOSClassificationHead, FCOSRegressionHead,
#       FCOSHead.compute_loss; _utils.py's BoxCoder for FCOS; ops/focal_loss.py, ops/giou_loss.py) --------------

def sigmoid_focal_loss_torch(inputs, targets, alpha: float = 0.25, gamma: float = 2, reduction: str = "none"):
    """torchvision.ops.sigmoid_focal_loss as torchvision writes it."""
    p = torch.sigmoid(inputs)
    ce_loss = TF.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


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
    intsctk[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
    unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
    return intsctk, unionk


def generalized_box_iou_loss_torch(boxes1, boxes2, reduction: str = "none", eps: float = 1e-7):
    """torchvision.ops.generalized_box_iou_loss as torchvision writes it."""
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
    if reduction == "mean":
        loss = loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


torch_ops = SimpleNamespace(sigmoid_focal_loss=sigmoid_focal_loss_torch,
                            generalized_box_iou_loss=generalized_box_iou_loss_torch)


def fcos(lib, F_, th, in_channels=8, num_anchors=1, num_classes=3, num_convs=2, prior_probability=0.01):
    nn = lib
    norm_layer = lambda c: nn.GroupNorm(4, c)  # noqa: E731  (partial(nn.GroupNorm, 32) there)

    class FCOSClassificationHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_classes = num_classes
            self.num_anchors = num_anchors
            conv = []
            for _ in range(num_convs):
                conv.append(nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1))
                conv.append(norm_layer(in_channels))
                conv.append(nn.ReLU())
            self.conv = nn.Sequential(*conv)
            for layer in self.conv.children():
                if isinstance(layer, nn.Conv2d):
                    th.nn.init.normal_(layer.weight, std=0.01)
                    th.nn.init.constant_(layer.bias, 0)
            self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, kernel_size=3, stride=1, padding=1)
            th.nn.init.normal_(self.cls_logits.weight, std=0.01)
            th.nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))

        def forward(self, x):
            all_cls_logits = []
            for features in x:
                cls_logits = self.conv(features)
                cls_logits = self.cls_logits(cls_logits)
                # Permute classification output from (N, A * K, H, W) to (N, HWA, K).
                N, _, H, W = cls_logits.shape
                cls_logits = cls_logits.view(N, -1, self.num_classes, H, W)
                cls_logits = cls_logits.permute(0, 3, 4, 1, 2)
                cls_logits = cls_logits.reshape(N, -1, self.num_classes)  # Size=(N, HWA, 4)
                all_cls_logits.append(cls_logits)
            return th.cat(all_cls_logits, dim=1)

    class FCOSRegressionHead(nn.Module):
        def __init__(self):
            super().__init__()
            conv = []
            for _ in range(num_convs):
                conv.append(nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1))
                conv.append(norm_layer(in_channels))
                conv.append(nn.ReLU())
            self.conv = nn.Sequential(*conv)
            self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=3, stride=1, padding=1)
            self.bbox_ctrness = nn.Conv2d(in_channels, num_anchors * 1, kernel_size=3, stride=1, padding=1)
            for layer in [self.bbox_reg, self.bbox_ctrness]:
                th.nn.init.normal_(layer.weight, std=0.01)
                th.nn.init.zeros_(layer.bias)
            for layer in self.conv.children():
                if isinstance(layer, nn.Conv2d):
                    th.nn.init.normal_(layer.weight, std=0.01)
                    th.nn.init.zeros_(layer.bias)

        def forward(self, x):
            all_bbox_regression = []
            all_bbox_ctrness = []
            for features in x:
                bbox_feature = self.conv(features)
                bbox_regression = nn.functional.relu(self.bbox_reg(bbox_feature))
                bbox_ctrness = self.bbox_ctrness(bbox_feature)
                # permute bbox regression output from (N, 4 * A, H, W) to (N, HWA, 4).
                N, _, H, W = bbox_regression.shape
                bbox_regression = bbox_regression.view(N, -1, 4, H, W)
                bbox_regression = bbox_regression.permute(0, 3, 4, 1, 2)
                bbox_regression = bbox_regression.reshape(N, -1, 4)  # Size=(N, HWA, 4)
                all_bbox_regression.append(bbox_regression)
                # permute bbox ctrness output from (N, 1 * A, H, W) to (N, HWA, 1).
                bbox_ctrness = bbox_ctrness.view(N, -1, 1, H, W)
                bbox_ctrness = bbox_ctrness.permute(0, 3, 4, 1, 2)
                bbox_ctrness = bbox_ctrness.reshape(N, -1, 1)
                all_bbox_ctrness.append(bbox_ctrness)
            return th.cat(all_bbox_regression, dim=1), th.cat(all_bbox_ctrness, dim=1)

    class FCOSHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.classification_head = FCOSClassificationHead()
            self.regression_head = FCOSRegressionHead()

        def forward(self, x):
            cls_logits = self.classification_head(x)
            bbox_regression, bbox_ctrness = self.regression_head(x)
            return {"cls_logits": cls_logits, "bbox_regression": bbox_regression, "bbox_ctrness": bbox_ctrness}
    return FCOSHead()


def box_coder(th):
    """BoxCoder(normalize_by_size=True) of torchvision's FCOS."""
    def encode(reference_boxes, proposals):
        reference_boxes_ctr_x = 0.5 * (reference_boxes[..., 0] + reference_boxes[..., 2])
        reference_boxes_ctr_y = 0.5 * (reference_boxes[..., 1] + reference_boxes[..., 3])
        target_l = reference_boxes_ctr_x - proposals[..., 0]
        target_t = reference_boxes_ctr_y - proposals[..., 1]
        target_r = proposals[..., 2] - reference_boxes_ctr_x
        target_b = proposals[..., 3] - reference_boxes_ctr_y
        targets = th.stack((target_l, target_t, target_r, target_b), dim=-1)
        reference_boxes_w = reference_boxes[..., 2] - reference_boxes[..., 0]
        reference_boxes_h = reference_boxes[..., 3] - reference_boxes[..., 1]
        reference_boxes_size = th.stack(
            (reference_boxes_w, reference_boxes_h, reference_boxes_w, reference_boxes_h), dim=-1)
        return targets / reference_boxes_size

    def decode(rel_codes, boxes):
        boxes = boxes.to(dtype=rel_codes.dtype)
        ctr_x = 0.5 * (boxes[..., 0] + boxes[..., 2])
        ctr_y = 0.5 * (boxes[..., 1] + boxes[..., 3])
        boxes_w = boxes[..., 2] - boxes[..., 0]
        boxes_h = boxes[..., 3] - boxes[..., 1]
        list_box_size = th.stack((boxes_w, boxes_h, boxes_w, boxes_h), dim=-1)
        rel_codes = rel_codes * list_box_size
        x1 = ctr_x - rel_codes[..., 0]
        y1 = ctr_y - rel_codes[..., 1]
        x2 = ctr_x + rel_codes[..., 2]
        y2 = ctr_y + rel_codes[..., 3]
        return th.stack([x1, y1, x2, y2], dim=-1)
    return SimpleNamespace(encode=encode, decode=decode)


def fcos_loss(F_, th, ops_):
    coder = box_coder(th)

    def compute_loss(targets, head_outputs, anchors, matched_idxs, fg, num_foreground):
        """`fg`, the foreground mask's indices, and `num_foreground` (`foregroud_mask.sum().item()` there) are
        given."""
        cls_logits = head_outputs["cls_logits"]  # [N, HWA, C]
        bbox_regression = head_outputs["bbox_regression"]  # [N, HWA, 4]
        bbox_ctrness = head_outputs["bbox_ctrness"]  # [N, HWA, 1]

        all_gt_classes_targets = []
        all_gt_boxes_targets = []
        for targets_per_image, matched_idxs_per_image in zip(targets, matched_idxs):
            gt_classes_targets = targets_per_image["labels"][matched_idxs_per_image.clip(min=0)]
            gt_boxes_targets = targets_per_image["boxes"][matched_idxs_per_image.clip(min=0)]
            gt_classes_targets[matched_idxs_per_image < 0] = -1  # background
            all_gt_classes_targets.append(gt_classes_targets)
            all_gt_boxes_targets.append(gt_boxes_targets)

        # List[Tensor] to Tensor conversion of  `all_gt_boxes_target`, `all_gt_classes_targets` and `anchors`
        all_gt_boxes_targets, all_gt_classes_targets, anchors = (
            th.stack(all_gt_boxes_targets),
            th.stack(all_gt_classes_targets),
            th.stack(anchors),
        )

        # classification loss
        gt_classes_targets = th.zeros_like(cls_logits)
        gt_classes_targets[fg + (all_gt_classes_targets[fg],)] = 1.0
        loss_cls = ops_.sigmoid_focal_loss(cls_logits, gt_classes_targets, reduction="sum")

        # amp issue: pred_boxes need to convert float
        pred_boxes = coder.decode(bbox_regression, anchors)

        # regression loss: GIoU loss
        loss_bbox_reg = ops_.generalized_box_iou_loss(
            pred_boxes[fg],
            all_gt_boxes_targets[fg],
            reduction="sum",
        )

        # ctrness loss
        bbox_reg_targets = coder.encode(anchors, all_gt_boxes_targets)
        left_right = bbox_reg_targets[:, :, [0, 2]]
        top_bottom = bbox_reg_targets[:, :, [1, 3]]
        gt_ctrness_targets = th.sqrt(
            (left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0])
            * (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0])
        )
        pred_centerness = bbox_ctrness.squeeze(dim=2)
        loss_bbox_ctrness = F_.binary_cross_entropy_with_logits(
            pred_centerness[fg], gt_ctrness_targets[fg], reduction="sum"
        )

        return {
            "classification": loss_cls / max(1, num_foreground),
            "bbox_regression": loss_bbox_reg / max(1, num_foreground),
            "bbox_ctrness": loss_bbox_ctrness / max(1, num_foreground),
        }

    def loss(model, features, targets, anchors, matched_idxs, fg, num_foreground):
        losses = compute_loss(targets, model(features), anchors, matched_idxs, fg, num_foreground)
        return sum(losses.values()), losses
    return loss


def fcos_batch(rng, n=2, sizes=((4, 4), (2, 2)), strides=(8, 16), channels=8, classes=3):
    """FPN features (stand-ins), each image's boxes and labels, its anchors (one per location, 8 strides wide, as
    FCOS's AnchorGenerator) and the matching: box 0 covers the image, so that every anchor's encoded box is
    inside it; an anchor whose centre is in box 1 is matched to it, the rest to box 0 or, at random, background."""
    features = [rng.standard_normal((n, channels, h, w)) for h, w in sizes]
    anchors = []
    for (h, w), s in zip(sizes, strides):
        cy, cx = np.meshgrid((np.arange(h) + 0.5) * s, (np.arange(w) + 0.5) * s, indexing="ij")
        c = np.stack([cx.ravel(), cy.ravel()], -1)
        anchors.append(np.concatenate([c - 4 * s, c + 4 * s], -1))
    anchors = np.concatenate(anchors)
    targets, matched = [], []
    for _ in range(n):
        lo = rng.uniform(4, 10, 2)
        boxes = np.array([[-1.0, -1.0, 33.0, 33.0], [*lo, *(lo + rng.uniform(10, 20, 2))]])
        labels = rng.integers(0, classes, 2)
        cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
        inside = (cx > boxes[1, 0]) & (cx < boxes[1, 2]) & (cy > boxes[1, 1]) & (cy < boxes[1, 3])
        m = np.where(inside, 1, np.where(rng.random(len(anchors)) < 0.5, 0, -1))
        targets.append(dict(boxes=boxes, labels=labels))
        matched.append(m)
    fg = np.nonzero(np.stack(matched) >= 0)
    return features, targets, [anchors] * n, matched, fg


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_fcos_head_focal_giou_centerness_losses_with_given_matching(mode):
    ours, theirs = pair(fcos)
    kw = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)
    opt, topt = optim.SGD(ours.parameters(), **kw), torch.optim.SGD(theirs.parameters(), **kw)
    loss_fn, tloss_fn = fcos_loss(F, av, ops), fcos_loss(TF, torch, torch_ops)

    def step(model, opt, *batch):
        (loss, parts), grads = av.value_and_grad(loss_fn, has_aux=True)(model, *batch)
        opt.step(grads)
        return loss, parts
    run = compiled(step, mode)
    rng = np.random.default_rng(3)
    _, targets, anchors, matched, fg = fcos_batch(rng)  # one image batch's matching, new features every step
    num_foreground = len(fg[0])
    for it in range(4):
        features = fcos_batch(rng)[0]
        topt.zero_grad()
        tl, tparts = tloss_fn(theirs, [T(f) for f in features],
                              [{k: T(v) for k, v in t.items()} for t in targets], [T(a) for a in anchors],
                              [T(m) for m in matched], tuple(T(i) for i in fg), num_foreground)
        tl.backward()
        topt.step()
        with strict():
            loss, parts = (run if it else step)(
                ours, opt, [av.tensor(f) for f in features], [{k: av.tensor(v) for k, v in t.items()} for t in targets],
                [av.tensor(a) for a in anchors], [av.tensor(m) for m in matched], tuple(av.tensor(i) for i in fg),
                num_foreground)
        assert rel(loss, tl) < 1e-12, it
        for k in tparts:
            assert rel(parts[k], tparts[k]) < 1e-12, (it, k)
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1


# -- regressions: what the programs above found -------------------------------------------------------------------

def test_parameter_groups_of_submodules_whose_relative_names_collide():
    """PSPNet's groups, one per submodule's `parameters()`, were refused: the names relative to each submodule
    ('0.weight' in both Sequentials) collided. They are now known by position, as bare tensors and torch's are,
    and av.grad's gradients of the whole model find them by identity; a tensor listed twice is still refused."""
    def make(lib, F_, th):
        return lib.Sequential(lib.Sequential(lib.Linear(3, 4), lib.Tanh()), lib.Sequential(lib.Linear(4, 2)))
    ours, theirs = pair(make)

    def groups(m):
        return [dict(params=m[0].parameters(), lr=0.1), dict(params=m[1].parameters(), lr=1.0)]
    opt, topt = optim.SGD(groups(ours), lr=0.1, momentum=0.9), torch.optim.SGD(groups(theirs), lr=0.1, momentum=0.9)
    x = np.random.default_rng(4).standard_normal((5, 3))
    for _ in range(2):
        topt.zero_grad()
        (theirs(T(x)) ** 2).sum().backward()
        topt.step()
        _, grads = av.value_and_grad(lambda m, x: (m(x) ** 2).sum())(ours, av.tensor(x))
        opt.step(grads)
        same_weights(ours, theirs, 1e-14)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([dict(params=ours[0].parameters()), dict(params=ours.parameters())], lr=0.1)
