"""Round 7 of port QA, part B (after test_port_programs.py, _more and _3 to _11): programs as popular repositories
write them, written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon), trained a few steps
from torch's weights on random data in float64 and compared with torch after every step (losses, logs,
parameters, buffers), eagerly and compiled (numpy and cpu), with warnings as errors while tracing:
taming-transformers' VQGAN (VQLPIPSWithDiscriminator with a tiny frozen stand-in for LPIPS's VGG, the adaptive
weight from the gradients of the reconstruction and GAN losses with respect to the decoder's last conv weight,
adopt_weight by global step, the hinge loss, a PatchGAN NLayerDiscriminator with batch norm, Adam for the
autoencoder with its codebook and for the discriminator in alternating steps), YOLOv5's ComputeLoss on two
detection layers (build_targets' anchor matching and neighbour-cell offsets, CIoU with its no_grad alpha,
objectness with the detached iou as target, label-smoothed class BCE, balance weights, smart_optimizer's three
groups under nesterov SGD with the warmup's lr and momentum interpolation, gradient clipping) and
EfficientNet/MobileNetV3 blocks as timm writes them (a TF-'same' stem, depthwise-separable and inverted-residual
blocks with SiLU or Hardswish, squeeze-excite gated by a sigmoid or a hard sigmoid, BatchNormAct2d with TF's
momentum and eps, drop path, RMSprop with TF's alpha, eps and momentum under an exponential LambdaLR warmup).

Drop path's random draws are drawn beforehand and given as inputs. The ports change what the README says
differs: gradients are values, so taming's `torch.autograd.grad(loss, last_layer, retain_graph=True)` is a
nested `av.value_and_grad` with respect to that weight whose value is the loss itself (the discriminator's
forward, and its batch norm's update, runs once, as in torch); YOLOv5's build_targets, whose shapes depend on the
targets' values (`t[j]` by masks), runs eagerly and its indices go into the compiled loss; `m.stride` is a
non-persistent buffer (a plain tensor attribute is state here); and ComputeLoss, whose criteria hold pos_weight
tensors, is an argument of the compiled step. (A (1,)-shaped loss, YOLOv5's, comes back from value_and_grad with
shape ().) The regressions at the end are what the programs found: hardsigmoid's gradient divided by 6 where
torch's kernel multiplies by 1/6 rounded to float32 (3e-8 relative in float64), `named_parameters(recurse=False)`
missing, Python list and range indices (`t[range(n), tcls[i]] = self.cp`) recorded as captured arrays (a compiled
function traced again on every call) and `x[range(n)]` refused, and `model.to(float64)` leaving a parameter made
from a view (`nn.Parameter(b.view(-1))`) a view of its float32 base, so every update was rounded to float32."""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict, train_step

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def arr(x) -> av.Tensor:
    """An Avalon tensor of numpy data, float64 kept."""
    return av.tensor(np.asarray(x))


# -- 1. EfficientNet / MobileNetV3 blocks as timm writes them ---------------------------------------------------

def make_divisible(v, divisor=8, min_value=None, round_limit=.9):
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    # Make sure that round down does not go down by more than 10%.
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def get_same_padding(x: int, k: int, s: int, d: int):
    return max((math.ceil(x / s) - 1) * s + (k - 1) * d + 1 - x, 0)


def timm_net(lib, F_, th, num_classes=5):
    BN_ARGS = dict(momentum=1. - 0.99, eps=1e-3)  # timm's BN_MOMENTUM_TF_DEFAULT, BN_EPS_TF_DEFAULT

    def pad_same(x, k, s, d=(1, 1), value=0):
        ih, iw = x.size()[-2:]
        pad_h, pad_w = get_same_padding(ih, k[0], s[0], d[0]), get_same_padding(iw, k[1], s[1], d[1])
        if pad_h > 0 or pad_w > 0:
            x = F_.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], value=value)
        return x

    class Conv2dSame(lib.Conv2d):
        """ Tensorflow like 'SAME' convolution wrapper for 2D convolutions"""
        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     bias=True):
            super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)

        def forward(self, x):
            x = pad_same(x, self.weight.shape[-2:], self.stride, self.dilation)
            return F_.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)

    def create_conv2d(in_chs, out_chs, kernel_size, stride=1, dilation=1, groups=1, padding='', bias=False):
        if padding == 'same':
            return Conv2dSame(in_chs, out_chs, kernel_size, stride=stride, dilation=dilation, groups=groups,
                              bias=bias)
        return lib.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2,
                          dilation=dilation, groups=groups, bias=bias)

    class BatchNormAct2d(lib.BatchNorm2d):
        """timm's BatchNorm + activation, the batch norm written out as its forward does."""
        def __init__(self, num_features, apply_act=True, act_layer=lib.ReLU, inplace=True, **kwargs):
            super().__init__(num_features, **BN_ARGS, **kwargs)
            self.act = act_layer(inplace=inplace) if apply_act else lib.Identity()

        def forward(self, x):
            # cut & paste of torch.nn.BatchNorm2d.forward impl to avoid issues with torchscript and tracing
            if self.momentum is None:
                exponential_average_factor = 0.0
            else:
                exponential_average_factor = self.momentum
            if self.training and self.track_running_stats:
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                    if self.momentum is None:  # use cumulative moving average
                        exponential_average_factor = 1.0 / float(self.num_batches_tracked)
                    else:  # use exponential moving average
                        exponential_average_factor = self.momentum
            if self.training:
                bn_training = True
            else:
                bn_training = (self.running_mean is None) and (self.running_var is None)
            x = F_.batch_norm(x, self.running_mean if not self.training or self.track_running_stats else None,
                              self.running_var if not self.training or self.track_running_stats else None,
                              self.weight, self.bias, bn_training, exponential_average_factor, self.eps)
            return self.act(x)

    class SqueezeExcite(lib.Module):
        def __init__(self, in_chs, rd_ratio=0.25, rd_channels=None, act_layer=lib.ReLU, gate_layer=lib.Sigmoid,
                     force_act_layer=None, rd_round_fn=None):
            super().__init__()
            if rd_channels is None:
                rd_round_fn = rd_round_fn or round
                rd_channels = rd_round_fn(in_chs * rd_ratio)
            act_layer = force_act_layer or act_layer
            self.conv_reduce = lib.Conv2d(in_chs, rd_channels, 1, bias=True)
            self.act1 = act_layer(inplace=True)
            self.conv_expand = lib.Conv2d(rd_channels, in_chs, 1, bias=True)
            self.gate = gate_layer()

        def forward(self, x):
            x_se = x.mean((2, 3), keepdim=True)
            x_se = self.conv_reduce(x_se)
            x_se = self.act1(x_se)
            x_se = self.conv_expand(x_se)
            return x * self.gate(x_se)

    def drop_path(x, drop_prob: float = 0., training: bool = False, scale_by_keep: bool = True, noise=None):
        """`noise`: the uniform draws behind `x.new_empty(shape).bernoulli_(keep_prob)`, given."""
        if drop_prob == 0. or not training:
            return x
        keep_prob = 1 - drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # work with diff dim tensors, not just 2D ConvNets
        random_tensor = (noise.view(shape) < keep_prob).to(x.dtype)
        if keep_prob > 0.0 and scale_by_keep:
            random_tensor.div_(keep_prob)
        return x * random_tensor

    class DropPath(lib.Module):
        def __init__(self, drop_prob: float = 0., scale_by_keep: bool = True):
            super().__init__()
            self.drop_prob = drop_prob
            self.scale_by_keep = scale_by_keep

        def forward(self, x, noise=None):
            return drop_path(x, self.drop_prob, self.training, self.scale_by_keep, noise)

    class DepthwiseSeparableConv(lib.Module):
        def __init__(self, in_chs, out_chs, dw_kernel_size=3, stride=1, pad_type='', noskip=False,
                     act_layer=lib.ReLU, se_layer=None, drop_path_rate=0.):
            super().__init__()
            self.has_skip = (stride == 1 and in_chs == out_chs) and not noskip
            self.conv_dw = create_conv2d(in_chs, in_chs, dw_kernel_size, stride=stride, groups=in_chs,
                                         padding=pad_type)
            self.bn1 = BatchNormAct2d(in_chs, act_layer=act_layer)
            self.se = se_layer(in_chs, act_layer=act_layer) if se_layer else lib.Identity()
            self.conv_pw = create_conv2d(in_chs, out_chs, 1, padding=pad_type)
            self.bn2 = BatchNormAct2d(out_chs, apply_act=False)
            self.drop_path = DropPath(drop_path_rate) if drop_path_rate else None

        def forward(self, x, noise=None):
            shortcut = x
            x = self.conv_dw(x)
            x = self.bn1(x)
            x = self.se(x)
            x = self.conv_pw(x)
            x = self.bn2(x)
            if self.has_skip:
                x = (self.drop_path(x, noise) if self.drop_path is not None else x) + shortcut
            return x

    class InvertedResidual(lib.Module):
        def __init__(self, in_chs, out_chs, dw_kernel_size=3, stride=1, pad_type='', noskip=False, exp_ratio=1.0,
                     act_layer=lib.ReLU, se_layer=None, drop_path_rate=0.):
            super().__init__()
            mid_chs = make_divisible(in_chs * exp_ratio)
            self.has_skip = (in_chs == out_chs and stride == 1) and not noskip
            # Point-wise expansion
            self.conv_pw = create_conv2d(in_chs, mid_chs, 1, padding=pad_type)
            self.bn1 = BatchNormAct2d(mid_chs, act_layer=act_layer)
            # Depth-wise convolution
            self.conv_dw = create_conv2d(mid_chs, mid_chs, dw_kernel_size, stride=stride, groups=mid_chs,
                                         padding=pad_type)
            self.bn2 = BatchNormAct2d(mid_chs, act_layer=act_layer)
            # Squeeze-and-excitation
            self.se = se_layer(mid_chs, act_layer=act_layer) if se_layer else lib.Identity()
            # Point-wise linear projection
            self.conv_pwl = create_conv2d(mid_chs, out_chs, 1, padding=pad_type)
            self.bn3 = BatchNormAct2d(out_chs, apply_act=False)
            self.drop_path = DropPath(drop_path_rate) if drop_path_rate else None

        def forward(self, x, noise=None):
            shortcut = x
            x = self.conv_pw(x)
            x = self.bn1(x)
            x = self.conv_dw(x)
            x = self.bn2(x)
            x = self.se(x)
            x = self.conv_pwl(x)
            x = self.bn3(x)
            if self.has_skip:
                x = (self.drop_path(x, noise) if self.drop_path is not None else x) + shortcut
            return x

    class EfficientNet(lib.Module):
        """A tiny EfficientNet-B0 / MobileNetV3 mix: a TF-'same' stem, SiLU blocks with sigmoid-gated SE (se
        channels from the block's input), Hardswish blocks with hard-sigmoid-gated ReLU SE, stride 2 depthwise
        convs, drop path on the residual blocks."""
        def __init__(self, drop_path_rate=0.2):
            super().__init__()
            se_eff = partial(SqueezeExcite, rd_ratio=0.25)
            se_mbv3 = partial(SqueezeExcite, gate_layer=lib.Hardsigmoid, force_act_layer=lib.ReLU,
                              rd_round_fn=make_divisible)
            self.conv_stem = create_conv2d(3, 8, 3, stride=2, padding='same')
            self.bn1 = BatchNormAct2d(8, act_layer=lib.SiLU)
            dpr = [drop_path_rate * i / 3 for i in range(4)]
            self.blocks = lib.Sequential(
                DepthwiseSeparableConv(8, 8, 3, act_layer=lib.SiLU, se_layer=se_eff, drop_path_rate=dpr[1]),
                InvertedResidual(8, 12, 3, stride=2, exp_ratio=4.0, act_layer=lib.SiLU, se_layer=se_eff),
                InvertedResidual(12, 12, 3, exp_ratio=2.0, act_layer=lib.Hardswish, se_layer=se_mbv3,
                                 drop_path_rate=dpr[3]),
                InvertedResidual(12, 16, 5, stride=2, exp_ratio=2.0, act_layer=lib.Hardswish),
            )
            self.conv_head = create_conv2d(16, 24, 1)
            self.bn2 = BatchNormAct2d(24, act_layer=lib.Hardswish)
            self.global_pool = lib.AdaptiveAvgPool2d(1)
            self.flatten = lib.Flatten(1)
            self.classifier = lib.Linear(24, num_classes)

        def forward_features(self, x, noise):
            x = self.conv_stem(x)
            x = self.bn1(x)
            for i, block in enumerate(self.blocks):
                x = block(x, noise[i])
            x = self.conv_head(x)
            x = self.bn2(x)
            return x

        def forward(self, x, noise):
            x = self.forward_features(x, noise)
            x = self.flatten(self.global_pool(x))
            return self.classifier(x)

    return EfficientNet()


def timm_loss(F_):
    def loss(model, x, y, noise):
        return F_.cross_entropy(model(x, list(noise)), y, label_smoothing=0.1)
    return loss


def test_timm_efficientnet_mobilenetv3_blocks_drop_path_and_tf_rmsprop_with_exponential_warmup():
    ours, theirs = pair(timm_net)
    bns = [m for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 13 and all(m.momentum == 1 - 0.99 and m.eps == 1e-3 for m in bns)
    kw = dict(lr=0.016, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=1e-5)
    opt, topt = optim.RMSprop(ours.parameters(), **kw), torch.optim.RMSprop(theirs.parameters(), **kw)
    warmup = 3

    def lr_lambda(step):  # an exponential warmup, then TF's exponential decay
        return 0.01 ** (1 - step / warmup) if step < warmup else 0.97 ** ((step - warmup) / 2.4)

    sched = optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lr_lambda)
    loss_fn = timm_loss(F)

    def step(model, opt, x, y, noise):
        loss, grads = av.value_and_grad(loss_fn)(model, x, y, noise)
        opt.step(grads)
        return loss

    rng = np.random.default_rng(0)
    for it, mode in enumerate(("eager", "numpy", "cpu")):
        x, y = rng.standard_normal((4, 3, 11, 11)), rng.integers(0, 5, 4)
        noise = rng.random((4, 4))
        topt.zero_grad()
        tl = timm_loss(TF)(theirs, T(x), T(y), T(noise))
        tl.backward()
        topt.step()
        tsched.step()
        with strict():
            loss = compiled(step, mode)(ours, opt, arr(x), arr(y), arr(noise))
        sched.step()
        assert rel(loss, tl) < 1e-12, (it, mode)
        assert opt.param_groups[0]["lr"] == topt.param_groups[0]["lr"]
        same_weights(ours, theirs, 1e-9)


# -- 2. YOLOv5's ComputeLoss (ultralytics/yolov5 utils/loss.py) on two detection layers --------------------------

YOLO_HYP = {'box': 0.05, 'obj': 1.0, 'cls': 0.5, 'cls_pw': 1.0, 'obj_pw': 1.0, 'anchor_t': 4.0, 'fl_gamma': 0.0,
            'label_smoothing': 0.1, 'momentum': 0.937, 'weight_decay': 0.0005, 'warmup_momentum': 0.8,
            'warmup_bias_lr': 0.1}
YOLO_NC = 3
YOLO_ANCHORS = ([4, 5, 8, 10, 12, 7], [14, 18, 24, 16, 20, 30])  # P2/4, P3/8 (pixels)


def yolo(lib, F_, th):
    class Conv(lib.Module):
        # Standard convolution with args(ch_in, ch_out, kernel, stride, padding, groups, dilation, activation)
        default_act = lib.SiLU()  # default activation

        def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True):
            super().__init__()
            self.conv = lib.Conv2d(c1, c2, k, s, k // 2 if p is None else p, groups=g, dilation=d, bias=False)
            self.bn = lib.BatchNorm2d(c2)
            self.act = self.default_act if act is True else act if isinstance(act, lib.Module) else lib.Identity()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Detect(lib.Module):
        def __init__(self, nc=80, anchors=(), ch=(), inplace=True):  # detection layer
            super().__init__()
            self.nc = nc  # number of classes
            self.no = nc + 5  # number of outputs per anchor
            self.nl = len(anchors)  # number of detection layers
            self.na = len(anchors[0]) // 2  # number of anchors
            self.register_buffer('anchors', th.tensor(anchors).float().view(self.nl, -1, 2))  # shape(nl,na,2)
            self.m = lib.ModuleList(lib.Conv2d(x, self.no * self.na, 1) for x in ch)  # output conv
            self.inplace = inplace  # use inplace ops (e.g. slice assignment)

        def forward(self, x):
            for i in range(self.nl):
                x[i] = self.m[i](x[i])  # conv
                bs, _, ny, nx = x[i].shape  # x(bs,255,20,20) to x(bs,3,20,20,85)
                x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            return x

    class Model(lib.Module):
        def __init__(self):
            super().__init__()
            self.model = lib.Sequential(Conv(3, 4, 3, 2), Conv(4, 6, 3, 2), Conv(6, 8, 3, 2),
                                        Detect(YOLO_NC, YOLO_ANCHORS, (6, 8)))
            self.hyp = YOLO_HYP
            m = self.model[-1]
            # `m.stride = torch.tensor(...)` as a buffer: a plain tensor attribute is state in Avalon (the README),
            # and torch's register_buffer refuses the name while Detect keeps its class attribute `stride = None`
            m.register_buffer('stride', th.tensor([4., 8.]), persistent=False)
            m.anchors /= m.stride.view(-1, 1, 1)
            self._initialize_biases()
            for m in self.modules():  # initialize_weights
                t = type(m)
                if t is lib.BatchNorm2d:
                    m.eps = 1e-3
                    m.momentum = 0.03
                elif t in [lib.Hardswish, lib.LeakyReLU, lib.ReLU, lib.ReLU6, lib.SiLU]:
                    m.inplace = True

        def _initialize_biases(self, cf=None):
            m = self.model[-1]  # Detect() module
            for mi, s in zip(m.m, m.stride):  # from
                b = mi.bias.view(m.na, -1)  # conv.bias(255) to (3,85)
                b.data[:, 4] += math.log(8 / (640 / s) ** 2)  # obj (8 objects per 640 image)
                b.data[:, 5:5 + m.nc] += math.log(0.6 / (m.nc - 0.99999)) if cf is None else th.log(cf / cf.sum())
                mi.bias = lib.Parameter(b.view(-1), requires_grad=True)

        def forward(self, x):
            x = self.model[0](x)
            p2 = self.model[1](x)
            p3 = self.model[2](p2)
            return self.model[3]([p2, p3])

    return Model()


def yolo_loss(lib, th):
    def smooth_BCE(eps=0.1):
        # return positive, negative label smoothing BCE targets
        return 1.0 - 0.5 * eps, 0.5 * eps

    def bbox_iou(box1, box2, xywh=True, GIoU=False, DIoU=False, CIoU=False, eps=1e-7):
        # Get the coordinates of bounding boxes
        if xywh:  # transform from xywh to xyxy
            (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
            w1_, h1_, w2_, h2_ = w1 / 2, h1 / 2, w2 / 2, h2 / 2
            b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1_, x1 + w1_, y1 - h1_, y1 + h1_
            b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2_, x2 + w2_, y2 - h2_, y2 + h2_
        else:  # x1, y1, x2, y2 = box1
            b1_x1, b1_y1, b1_x2, b1_y2 = box1.chunk(4, -1)
            b2_x1, b2_y1, b2_x2, b2_y2 = box2.chunk(4, -1)
            w1, h1 = b1_x2 - b1_x1, (b1_y2 - b1_y1).clamp(eps)
            w2, h2 = b2_x2 - b2_x1, (b2_y2 - b2_y1).clamp(eps)

        # Intersection area
        inter = (b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp(0) * \
                (b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)).clamp(0)

        # Union Area
        union = w1 * h1 + w2 * h2 - inter + eps

        # IoU
        iou = inter / union
        if CIoU or DIoU or GIoU:
            cw = b1_x2.maximum(b2_x2) - b1_x1.minimum(b2_x1)  # convex (smallest enclosing box) width
            ch = b1_y2.maximum(b2_y2) - b1_y1.minimum(b2_y1)  # convex height
            if CIoU or DIoU:  # Distance or Complete IoU https://arxiv.org/abs/1911.08287v1
                c2 = ch ** 2 + cw ** 2 + eps  # convex diagonal squared
                rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4  # center dist**2
                if CIoU:  # https://github.com/Zzh-tju/DIoU-SSD-pytorch/blob/master/utils/box/box_utils.py#L47
                    v = (4 / math.pi ** 2) * th.pow(th.atan(w2 / h2) - th.atan(w1 / h1), 2)
                    with th.no_grad():
                        alpha = v / (v - iou + (1 + eps))
                    return iou - (rho2 / c2 + v * alpha)  # CIoU
                return iou - rho2 / c2  # DIoU
            c_area = cw * ch + eps  # convex area
            return iou - (c_area - union) / c_area  # GIoU https://arxiv.org/pdf/1902.09630.pdf
        return iou  # IoU

    class ComputeLoss:
        sort_obj_iou = False

        # Compute losses
        def __init__(self, model, autobalance=False):
            device = next(model.parameters()).device  # get model device
            h = model.hyp  # hyperparameters

            # Define criteria
            BCEcls = lib.BCEWithLogitsLoss(pos_weight=th.tensor([h['cls_pw']], device=device))
            BCEobj = lib.BCEWithLogitsLoss(pos_weight=th.tensor([h['obj_pw']], device=device))

            # Class label smoothing https://arxiv.org/pdf/1902.04103.pdf eqn 3
            self.cp, self.cn = smooth_BCE(eps=h.get('label_smoothing', 0.0))  # positive, negative BCE targets

            m = model.model[-1]  # Detect() module
            self.balance = {3: [4.0, 1.0, 0.4]}.get(m.nl, [4.0, 1.0, 0.25, 0.06, 0.02])  # P3-P7
            self.ssi = list(m.stride).index(16) if autobalance else 0  # stride 16 index
            self.BCEcls, self.BCEobj, self.gr, self.hyp, self.autobalance = BCEcls, BCEobj, 1.0, h, autobalance
            self.na = m.na  # number of anchors
            self.nc = m.nc  # number of classes
            self.nl = m.nl  # number of layers
            self.anchors = m.anchors
            self.device = device

        def __call__(self, p, targets, built=None):  # predictions, targets
            """`built`: build_targets' result, computed beforehand (its indexing depends on the data)."""
            lcls = th.zeros(1, device=self.device)  # class loss
            lbox = th.zeros(1, device=self.device)  # box loss
            lobj = th.zeros(1, device=self.device)  # object loss
            tcls, tbox, indices, anchors = self.build_targets(p, targets) if built is None else built  # targets

            # Losses
            for i, pi in enumerate(p):  # layer index, layer predictions
                b, a, gj, gi = indices[i]  # image, anchor, gridy, gridx
                tobj = th.zeros(pi.shape[:4], dtype=pi.dtype, device=self.device)  # target obj

                n = b.shape[0]  # number of targets
                if n:
                    pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)  # target-subset of predictions

                    # Regression
                    pxy = pxy.sigmoid() * 2 - 0.5
                    pwh = (pwh.sigmoid() * 2) ** 2 * anchors[i]
                    pbox = th.cat((pxy, pwh), 1)  # predicted box
                    iou = bbox_iou(pbox, tbox[i], CIoU=True).squeeze()  # iou(prediction, target)
                    lbox += (1.0 - iou).mean()  # iou loss

                    # Objectness
                    iou = iou.detach().clamp(0).type(tobj.dtype)
                    if self.sort_obj_iou:
                        j = iou.argsort()
                        b, a, gj, gi, iou = b[j], a[j], gj[j], gi[j], iou[j]
                    if self.gr < 1:
                        iou = (1.0 - self.gr) + self.gr * iou
                    tobj[b, a, gj, gi] = iou  # iou ratio

                    # Classification
                    if self.nc > 1:  # cls loss (only if multiple classes)
                        t = th.full_like(pcls, self.cn, device=self.device)  # targets
                        t[range(n), tcls[i]] = self.cp
                        lcls += self.BCEcls(pcls, t)  # BCE

                obji = self.BCEobj(pi[..., 4], tobj)
                lobj += obji * self.balance[i]  # obj loss
                if self.autobalance:
                    self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obji.detach().item()

            if self.autobalance:
                self.balance = [x / self.balance[self.ssi] for x in self.balance]
            lbox *= self.hyp['box']
            lobj *= self.hyp['obj']
            lcls *= self.hyp['cls']
            bs = tobj.shape[0]  # batch size

            return (lbox + lobj + lcls) * bs, th.cat((lbox, lobj, lcls)).detach()

        def build_targets(self, p, targets):
            # Build targets for compute_loss(), input targets(image,class,x,y,w,h)
            na, nt = self.na, targets.shape[0]  # number of anchors, targets
            tcls, tbox, indices, anch = [], [], [], []
            gain = th.ones(7, device=self.device)  # normalized to gridspace gain
            ai = th.arange(na, device=self.device).float().view(na, 1).repeat(1, nt)  # same as .repeat_interleave(nt)
            targets = th.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # append anchor indices

            g = 0.5  # bias
            off = th.tensor(
                [
                    [0, 0],
                    [1, 0],
                    [0, 1],
                    [-1, 0],
                    [0, -1],  # j,k,l,m
                    # [1, 1], [1, -1], [-1, 1], [-1, -1],  # jk,jm,lk,lm
                ],
                device=self.device).float() * g  # offsets

            for i in range(self.nl):
                anchors, shape = self.anchors[i], p[i].shape
                gain[2:6] = th.tensor(shape)[[3, 2, 3, 2]]  # xyxy gain

                # Match targets to anchors
                t = targets * gain  # shape(3,n,7)
                if nt:
                    # Matches
                    r = t[..., 4:6] / anchors[:, None]  # wh ratio
                    j = th.max(r, 1 / r).max(2)[0] < self.hyp['anchor_t']  # compare
                    t = t[j]  # filter

                    # Offsets
                    gxy = t[:, 2:4]  # grid xy
                    gxi = gain[[2, 3]] - gxy  # inverse
                    j, k = ((gxy % 1 < g) & (gxy > 1)).T
                    l, m = ((gxi % 1 < g) & (gxi > 1)).T  # noqa: E741
                    j = th.stack((th.ones_like(j), j, k, l, m))
                    t = t.repeat((5, 1, 1))[j]
                    offsets = (th.zeros_like(gxy)[None] + off[:, None])[j]
                else:
                    t = targets[0]
                    offsets = 0

                # Define
                bc, gxy, gwh, a = t.chunk(4, 1)  # (image, class), grid xy, grid wh, anchors
                a, (b, c) = a.long().view(-1), bc.long().T  # anchors, image, class
                gij = (gxy - offsets).long()
                gi, gj = gij.T  # grid indices

                # Append
                indices.append((b, a, gj.clamp_(0, shape[2] - 1), gi.clamp_(0, shape[3] - 1)))  # image, anchor, grid
                tbox.append(th.cat((gxy - gij, gwh), 1))  # box
                anch.append(anchors[a])  # anchors
                tcls.append(c)  # class

            return tcls, tbox, indices, anch

    return ComputeLoss


def smart_optimizer(lib, th, model, name='Adam', lr=0.001, momentum=0.9, decay=1e-5):
    # YOLOv5 3-param group optimizer: 0) weights with decay, 1) weights no decay, 2) biases no decay
    g = [], [], []  # optimizer parameter groups
    bn = tuple(v for k, v in lib.__dict__.items() if 'Norm' in k)  # normalization layers, i.e. BatchNorm2d()
    for v in model.modules():
        for p_name, p in v.named_parameters(recurse=0):
            if p_name == 'bias':  # bias (no decay)
                g[2].append(p)
            elif p_name == 'weight' and isinstance(v, bn):  # weight (no decay)
                g[1].append(p)
            else:
                g[0].append(p)  # weight (with decay)

    if name == 'Adam':
        optimizer = th.optim.Adam(g[2], lr=lr, betas=(momentum, 0.999))  # adjust beta1 to momentum
    elif name == 'SGD':
        optimizer = th.optim.SGD(g[2], lr=lr, momentum=momentum, nesterov=True)
    else:
        raise NotImplementedError(f'Optimizer {name} not implemented.')

    optimizer.add_param_group({'params': g[0], 'weight_decay': decay})  # add g0 with weight_decay
    optimizer.add_param_group({'params': g[1], 'weight_decay': 0.0})  # add g1 (BatchNorm2d weights)
    return optimizer


def yolo_targets(rng, nt=6, bs=2):
    """(image, class, x, y, w, h), normalized: boxes of 2 to 14 pixels in a 16x16 image."""
    xy = rng.uniform(0.1, 0.9, (nt, 2))
    wh = rng.uniform(2, 14, (nt, 2)) / 16
    return np.concatenate([rng.integers(0, bs, (nt, 1)), rng.integers(0, YOLO_NC, (nt, 1)), xy, wh], 1)


def test_yolov5_compute_loss_build_targets_ciou_smooth_bce_and_nesterov_sgd_over_three_param_groups():
    ours, theirs = pair(yolo)
    assert ours.model[-1].anchors.dtype == av.float64
    assert rel(ours.model[-1].anchors, theirs.model[-1].anchors) == 0
    compute_loss, tcompute_loss = yolo_loss(nn, av)(ours), yolo_loss(torch.nn, torch)(theirs)
    hyp = YOLO_HYP
    opt = smart_optimizer(nn, av, ours, 'SGD', lr=0.01, momentum=hyp['momentum'], decay=hyp['weight_decay'])
    topt = smart_optimizer(torch.nn, torch, theirs, 'SGD', lr=0.01, momentum=hyp['momentum'],
                           decay=hyp['weight_decay'])
    assert [len(g['params']) for g in opt.param_groups] == [len(g['params']) for g in topt.param_groups] == [5, 5, 3]
    nw = 4  # warmup iterations
    for o in (opt, topt):
        for x in o.param_groups:
            x['initial_lr'] = x['lr']

    def loss_fn(model, compute_loss, imgs, built):  # compute_loss given: its criteria hold pos_weight tensors
        pred = model(imgs)
        return compute_loss(pred, None, built)

    def step(model, opt, compute_loss, imgs, built):
        (loss, loss_items), grads = av.value_and_grad(loss_fn, has_aux=True)(model, compute_loss, imgs, built)
        norm = nn.utils.clip_grad_norm_(grads, max_norm=10.0)  # clip gradients
        opt.step(grads)
        return loss, loss_items, norm

    rng = np.random.default_rng(0)
    for ni, mode in enumerate(("eager", "numpy", "cpu")):
        # Warmup: the biases' lr falls from warmup_bias_lr, the others' rises from 0, momentum rises
        xi = [0, nw]  # x interp
        for o in (opt, topt):
            for j, x in enumerate(o.param_groups):
                x['lr'] = np.interp(ni, xi, [hyp['warmup_bias_lr'] if j == 0 else 0.0, x['initial_lr']])
                x['momentum'] = np.interp(ni, xi, [hyp['warmup_momentum'], hyp['momentum']])
        imgs, targets = rng.random((2, 3, 16, 16)), yolo_targets(rng)
        topt.zero_grad()
        tl, titems = tcompute_loss(theirs(T(imgs)), T(targets))
        tl.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm=10.0)
        topt.step()
        # build_targets indexes by the data (t[j], repeat, the offsets' masks): run eagerly, its result given
        shapes = [av.zeros(2, 3, 4, 4, YOLO_NC + 5), av.zeros(2, 3, 2, 2, YOLO_NC + 5)]
        built = compute_loss.build_targets(shapes, arr(targets))
        tbuilt = tcompute_loss.build_targets([torch.zeros(s.shape) for s in shapes], T(targets))
        for a, b in zip(built, tbuilt):
            for x, y in zip(a, b):
                for u, v in (zip(x, y) if isinstance(x, tuple) else [(x, y)]):
                    assert u.dtype == getattr(av, str(v.dtype).split(".")[1]) and rel(u, v) == 0
        with strict():
            loss, items, norm = compiled(step, mode)(ours, opt, compute_loss, arr(imgs), built)
        # (value_and_grad gives the (1,)-shaped loss YOLOv5 returns shape (), as its scalar)
        assert rel(loss.reshape(1), tl) < 1e-12 and rel(items, titems) < 1e-12, (ni, mode)
        assert rel(norm, tnorm) < 1e-12
        same_weights(ours, theirs, 1e-10)


# -- 3. taming-transformers' VQGAN: VQLPIPSWithDiscriminator, adaptive weight, hinge loss, two optimizers ------

def vqgan(lib, F_, th, n_e=6, e_dim=3, ch=4, disc_start=1):
    def Normalize(in_channels):
        return lib.GroupNorm(num_groups=2, num_channels=in_channels, eps=1e-6, affine=True)

    def nonlinearity(x):
        # swish
        return x * th.sigmoid(x)

    class ResnetBlock(lib.Module):
        def __init__(self, *, in_channels, out_channels=None, dropout=0.0):
            super().__init__()
            self.in_channels = in_channels
            out_channels = in_channels if out_channels is None else out_channels
            self.out_channels = out_channels
            self.norm1 = Normalize(in_channels)
            self.conv1 = lib.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
            self.norm2 = Normalize(out_channels)
            self.dropout = lib.Dropout(dropout)
            self.conv2 = lib.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)

        def forward(self, x):
            h = x
            h = self.norm1(h)
            h = nonlinearity(h)
            h = self.conv1(h)
            h = self.norm2(h)
            h = nonlinearity(h)
            h = self.dropout(h)
            h = self.conv2(h)
            return x + h

    class Downsample(lib.Module):
        def __init__(self, in_channels):
            super().__init__()
            # no asymmetric padding in torch conv, must do it ourselves
            self.conv = lib.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

        def forward(self, x):
            pad = (0, 1, 0, 1)
            x = F_.pad(x, pad, mode="constant", value=0)
            return self.conv(x)

    class Upsample(lib.Module):
        def __init__(self, in_channels):
            super().__init__()
            self.conv = lib.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

        def forward(self, x):
            x = F_.interpolate(x, scale_factor=2.0, mode="nearest")
            return self.conv(x)

    class Encoder(lib.Module):  # (one resolution level; the ResnetBlock in the decoder only)
        def __init__(self, z_channels):
            super().__init__()
            self.conv_in = lib.Conv2d(3, ch, kernel_size=3, stride=1, padding=1)
            self.downsample = Downsample(ch)
            self.norm_out = Normalize(ch)
            self.conv_out = lib.Conv2d(ch, z_channels, kernel_size=3, stride=1, padding=1)

        def forward(self, x):
            h = self.downsample(self.conv_in(x))
            h = nonlinearity(self.norm_out(h))
            return self.conv_out(h)

    class Decoder(lib.Module):
        def __init__(self, z_channels):
            super().__init__()
            self.conv_in = lib.Conv2d(z_channels, ch, kernel_size=3, stride=1, padding=1)
            self.block = ResnetBlock(in_channels=ch)
            self.upsample = Upsample(ch)
            self.norm_out = Normalize(ch)
            self.conv_out = lib.Conv2d(ch, 3, kernel_size=3, stride=1, padding=1)

        def forward(self, z):
            h = self.upsample(self.block(self.conv_in(z)))
            h = nonlinearity(self.norm_out(h))
            return self.conv_out(h)

    class VectorQuantizer(lib.Module):
        def __init__(self, n_e, e_dim, beta):
            super().__init__()
            self.n_e = n_e
            self.e_dim = e_dim
            self.beta = beta
            self.embedding = lib.Embedding(self.n_e, self.e_dim)
            self.embedding.weight.data.uniform_(-1.0 / self.n_e, 1.0 / self.n_e)

        def forward(self, z):
            # reshape z -> (batch, height, width, channel) and flatten
            z = z.permute(0, 2, 3, 1).contiguous()
            z_flattened = z.view(-1, self.e_dim)
            # distances from z to embeddings e_j (z - e)^2 = z^2 + e^2 - 2 e * z
            d = th.sum(z_flattened ** 2, dim=1, keepdim=True) + \
                th.sum(self.embedding.weight**2, dim=1) - 2 * \
                th.matmul(z_flattened, self.embedding.weight.t())
            # find closest encodings
            min_encoding_indices = th.argmin(d, dim=1).unsqueeze(1)
            min_encodings = th.zeros(min_encoding_indices.shape[0], self.n_e).to(z)
            min_encodings.scatter_(1, min_encoding_indices, 1)
            # get quantized latent vectors
            z_q = th.matmul(min_encodings, self.embedding.weight).view(z.shape)
            # compute loss for embedding
            loss = th.mean((z_q.detach() - z)**2) + self.beta * th.mean((z_q - z.detach()) ** 2)
            # preserve gradients
            z_q = z + (z_q - z).detach()
            # perplexity
            e_mean = th.mean(min_encodings, dim=0)
            perplexity = th.exp(-th.sum(e_mean * th.log(e_mean + 1e-10)))
            # reshape back to match original input shape
            z_q = z_q.permute(0, 3, 1, 2).contiguous()
            return z_q, loss, (perplexity, min_encodings, min_encoding_indices)

    class ScalingLayer(lib.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer('shift', th.Tensor([-.030, -.088, -.188])[None, :, None, None])
            self.register_buffer('scale', th.Tensor([.458, .448, .450])[None, :, None, None])

        def forward(self, inp):
            return (inp - self.shift) / self.scale

    class NetLinLayer(lib.Module):
        """ A single linear layer which does a 1x1 conv """
        def __init__(self, chn_in, chn_out=1, use_dropout=False):
            super().__init__()
            layers = [lib.Dropout(), ] if (use_dropout) else []
            layers += [lib.Conv2d(chn_in, chn_out, 1, stride=1, padding=0, bias=False), ]
            self.model = lib.Sequential(*layers)

    class TinyFeatures(lib.Module):  # the stand-in for LPIPS's vgg16 slices
        def __init__(self):
            super().__init__()
            self.slice1 = lib.Sequential(lib.Conv2d(3, 4, 3, padding=1), lib.ReLU(inplace=True))
            self.slice2 = lib.Sequential(lib.MaxPool2d(2), lib.Conv2d(4, 4, 3, padding=1), lib.ReLU(inplace=True))

        def forward(self, x):
            h1 = self.slice1(x)
            h2 = self.slice2(h1)
            return [h1, h2]

    def normalize_tensor(x, eps=1e-10):
        norm_factor = th.sqrt(th.sum(x**2, dim=1, keepdim=True))
        return x / (norm_factor + eps)

    def spatial_average(x, keepdim=True):
        return x.mean([2, 3], keepdim=keepdim)

    class LPIPS(lib.Module):
        # Learned perceptual metric
        def __init__(self, use_dropout=False):
            super().__init__()
            self.scaling_layer = ScalingLayer()
            self.chns = [4, 4]
            self.net = TinyFeatures()
            self.lin0 = NetLinLayer(self.chns[0], use_dropout=use_dropout)
            self.lin1 = NetLinLayer(self.chns[1], use_dropout=use_dropout)
            for param in self.parameters():
                param.requires_grad = False

        def forward(self, input, target):
            in0_input, in1_input = (self.scaling_layer(input), self.scaling_layer(target))
            outs0, outs1 = self.net(in0_input), self.net(in1_input)
            feats0, feats1, diffs = {}, {}, {}
            lins = [self.lin0, self.lin1]
            for kk in range(len(self.chns)):
                feats0[kk], feats1[kk] = normalize_tensor(outs0[kk]), normalize_tensor(outs1[kk])
                diffs[kk] = (feats0[kk] - feats1[kk]) ** 2
            res = [spatial_average(lins[kk].model(diffs[kk]), keepdim=True) for kk in range(len(self.chns))]
            val = res[0]
            for l in range(1, len(self.chns)):  # noqa: E741
                val += res[l]
            return val

    class NLayerDiscriminator(lib.Module):
        """Defines a PatchGAN discriminator as in Pix2Pix"""
        def __init__(self, input_nc=3, ndf=64, n_layers=3):
            super().__init__()
            norm_layer = lib.BatchNorm2d
            use_bias = norm_layer != lib.BatchNorm2d
            kw = 4
            padw = 1
            sequence = [lib.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw), lib.LeakyReLU(0.2, True)]
            nf_mult = 1
            nf_mult_prev = 1
            for n in range(1, n_layers):  # gradually increase the number of filters
                nf_mult_prev = nf_mult
                nf_mult = min(2 ** n, 8)
                sequence += [
                    lib.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=2, padding=padw,
                               bias=use_bias),
                    norm_layer(ndf * nf_mult),
                    lib.LeakyReLU(0.2, True)
                ]
            nf_mult_prev = nf_mult
            nf_mult = min(2 ** n_layers, 8)
            sequence += [
                lib.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw, bias=use_bias),
                norm_layer(ndf * nf_mult),
                lib.LeakyReLU(0.2, True)
            ]
            sequence += [
                lib.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw)]  # output 1 channel prediction map
            self.main = lib.Sequential(*sequence)

        def forward(self, input):
            """Standard forward."""
            return self.main(input)

    def weights_init(m):
        classname = m.__class__.__name__
        if classname.find('Conv') != -1:
            lib.init.normal_(m.weight.data, 0.0, 0.02)
        elif classname.find('BatchNorm') != -1:
            lib.init.normal_(m.weight.data, 1.0, 0.02)
            lib.init.constant_(m.bias.data, 0)

    def adopt_weight(weight, global_step, threshold=0, value=0.):
        if global_step < threshold:
            weight = value
        return weight

    def hinge_d_loss(logits_real, logits_fake):
        loss_real = th.mean(F_.relu(1. - logits_real))
        loss_fake = th.mean(F_.relu(1. + logits_fake))
        d_loss = 0.5 * (loss_real + loss_fake)
        return d_loss

    class VQLPIPSWithDiscriminator(lib.Module):
        def __init__(self, disc_start, codebook_weight=1.0, pixelloss_weight=1.0, disc_num_layers=3,
                     disc_in_channels=3, disc_factor=1.0, disc_weight=1.0, perceptual_weight=1.0, disc_ndf=64):
            super().__init__()
            self.codebook_weight = codebook_weight
            self.pixel_weight = pixelloss_weight
            self.perceptual_loss = LPIPS().eval()
            self.perceptual_weight = perceptual_weight
            self.discriminator = NLayerDiscriminator(input_nc=disc_in_channels, n_layers=disc_num_layers,
                                                     ndf=disc_ndf).apply(weights_init)
            self.discriminator_iter_start = disc_start
            self.disc_loss = hinge_d_loss
            self.disc_factor = disc_factor
            self.discriminator_weight = disc_weight

        def calculate_adaptive_weight(self, nll_grads, g_grads):
            # (the gradients w.r.t. last_layer come in: taken beside the losses by `loss_and_grad`)
            d_weight = th.norm(nll_grads) / (th.norm(g_grads) + 1e-4)
            d_weight = th.clamp(d_weight, 0.0, 1e4).detach()
            d_weight = d_weight * self.discriminator_weight
            return d_weight

        def forward(self, codebook_loss, inputs, reconstructions, optimizer_idx, global_step, last_layer=None,
                    split="train", decode=None):
            """`decode()`: the reconstructions again, a function of last_layer (see `loss_and_grad`)."""
            def nll(reconstructions):
                rec_loss = th.abs(inputs.contiguous() - reconstructions.contiguous())
                p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
                rec_loss = rec_loss + self.perceptual_weight * p_loss
                nll_loss = rec_loss
                nll_loss = th.mean(nll_loss)
                return nll_loss, (rec_loss, p_loss)

            def gan(reconstructions):
                logits_fake = self.discriminator(reconstructions.contiguous())
                g_loss = -th.mean(logits_fake)
                return g_loss, logits_fake

            # now the GAN part
            if optimizer_idx == 0:
                # generator update
                (nll_loss, (rec_loss, p_loss)), nll_grads = loss_and_grad(th, lambda: nll(decode()), last_layer)
                (g_loss, logits_fake), g_grads = loss_and_grad(th, lambda: gan(decode()), last_layer)
                d_weight = self.calculate_adaptive_weight(nll_grads, g_grads)
                disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
                loss = nll_loss + d_weight * disc_factor * g_loss + self.codebook_weight * codebook_loss.mean()
                log = {f"{split}/total_loss": loss.clone().detach().mean(),
                       f"{split}/quant_loss": codebook_loss.detach().mean(),
                       f"{split}/nll_loss": nll_loss.detach().mean(),
                       f"{split}/rec_loss": rec_loss.detach().mean(),
                       f"{split}/p_loss": p_loss.detach().mean(),
                       f"{split}/d_weight": d_weight.detach(),
                       f"{split}/disc_factor": th.tensor(disc_factor),
                       f"{split}/g_loss": g_loss.detach().mean(),
                       }
                return loss, log

            if optimizer_idx == 1:
                # second pass for discriminator update
                logits_real = self.discriminator(inputs.contiguous().detach())
                logits_fake = self.discriminator(reconstructions.contiguous().detach())
                disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
                d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
                log = {f"{split}/disc_loss": d_loss.clone().detach().mean(),
                       f"{split}/logits_real": logits_real.detach().mean(),
                       f"{split}/logits_fake": logits_fake.detach().mean()
                       }
                return d_loss, log

    class VQModel(lib.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder(e_dim)
            self.decoder = Decoder(e_dim)
            self.loss = VQLPIPSWithDiscriminator(disc_start, disc_num_layers=2, disc_weight=0.8, disc_ndf=4)
            self.quantize = VectorQuantizer(n_e, e_dim, beta=0.25)
            self.quant_conv = lib.Conv2d(e_dim, e_dim, 1)
            self.post_quant_conv = lib.Conv2d(e_dim, e_dim, 1)

        def encode(self, x):
            h = self.encoder(x)
            h = self.quant_conv(h)
            quant, emb_loss, info = self.quantize(h)
            return quant, emb_loss, info

        def decode(self, quant):
            quant = self.post_quant_conv(quant)
            dec = self.decoder(quant)
            return dec

        def forward(self, input):
            quant, diff, _ = self.encode(input)
            dec = self.decode(quant)
            return dec, diff

        def training_step(self, x, optimizer_idx, global_step):
            if optimizer_idx == 0:  # (the reconstructions computed by decode(quant), again where needed)
                quant, qloss, _ = self.encode(x)
                xrec = self.decode(quant)
                aeloss, log_dict_ae = self.loss(qloss, x, xrec, optimizer_idx, global_step,
                                                last_layer=self.get_last_layer(), split="train",
                                                decode=lambda: self.decode(quant))
                return aeloss, log_dict_ae
            if optimizer_idx == 1:
                xrec, qloss = self(x)
                discloss, log_dict_disc = self.loss(qloss, x, xrec, optimizer_idx, global_step,
                                                    last_layer=self.get_last_layer(), split="train")
                return discloss, log_dict_disc

        def configure_optimizers(self, lr):
            opt_ae = th.optim.Adam(list(self.encoder.parameters()) +
                                   list(self.decoder.parameters()) +
                                   list(self.quantize.parameters()) +
                                   list(self.quant_conv.parameters()) +
                                   list(self.post_quant_conv.parameters()),
                                   lr=lr, betas=(0.5, 0.9))
            opt_disc = th.optim.Adam(self.loss.discriminator.parameters(), lr=lr, betas=(0.5, 0.9))
            return [opt_ae, opt_disc], []

        def get_last_layer(self):
            return self.decoder.conv_out.weight

    return VQModel()


def loss_and_grad(th, fn, last_layer):
    """The one place the port changes: `fn()` is (loss, aux), and taming's `torch.autograd.grad(loss,
    last_layer, retain_graph=True)[0]` of the loss it computed from the decoder's last layer is Avalon's nested
    `av.value_and_grad` of `fn` with respect to that weight (fn's forward reads the layer's weight, the tensor
    the nested gradient is taken with respect to). The loss and its aux come from that same call, so the
    discriminator's forward, whose batch norm updates its running statistics, runs once, as in torch."""
    if th is torch:
        out = fn()
        return out, torch.autograd.grad(out[0], last_layer, retain_graph=True)[0]
    return av.value_and_grad(lambda w: fn(), has_aux=True)(last_layer)


def test_taming_vqgan_adaptive_weight_by_nested_grad_wrt_last_layer_hinge_patchgan_and_two_optimizers():
    ours, theirs = pair(vqgan)
    assert not any(k.startswith("loss.perceptual_loss") for k, _ in ours.named_parameters() if k in
                   {n for n, p in ours.named_parameters() if p.requires_grad})
    (opt_ae, opt_disc), _ = ours.configure_optimizers(1e-3)
    (topt_ae, topt_disc), _ = theirs.configure_optimizers(1e-3)

    def gen_step(model, opt, x, global_step):
        (aeloss, log), grads = av.value_and_grad(lambda m, x: m.training_step(x, 0, global_step),
                                                 has_aux=True)(model, x)
        opt.step(grads)
        return aeloss, log

    def disc_step(model, opt, x, global_step):
        (discloss, log), grads = av.value_and_grad(lambda m, x: m.training_step(x, 1, global_step),
                                                   has_aux=True)(model, x)
        opt.step(grads)
        return discloss, log

    rng = np.random.default_rng(0)
    for global_step, mode in enumerate(("eager", "numpy", "cpu")):
        x = rng.uniform(-1, 1, (2, 3, 16, 16))
        for idx, (o, to, step) in enumerate(((opt_ae, topt_ae, gen_step), (opt_disc, topt_disc, disc_step))):
            to.zero_grad()
            tl, tlog = theirs.training_step(T(x), idx, global_step)
            tl.backward()
            to.step()
            with strict():  # (the discriminator's step compiled by numpy only: the file's time)
                loss, log = compiled(step, "numpy" if idx and mode == "cpu" else mode)(ours, o, arr(x), global_step)
            assert rel(loss, tl) < 1e-12, (global_step, mode, idx)
            assert sorted(log) == sorted(tlog), (mode, idx)
            for k, v in tlog.items():  # (a mean of logits near 0 holds the roundoff of its terms: 1e-14 absolute)
                assert abs(float(log[k]) - float(v)) <= 1e-12 * max(abs(float(v)), 1e-2), (mode, idx, k)
            same_weights(ours, theirs, 1e-10)
    assert float(log["train/logits_real"]) != 0.0


# -- regressions: what the programs above found -----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eager", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hardsigmoid_gradient_is_torchs_float32_one_sixth(mode, dtype):
    """MobileNetV3's hard-sigmoid gate: torch's CPU kernel multiplies the gradient by `1.0f / 6.0f` in every
    dtype, which differs from dividing by 6 by up to 3e-8 relative in float64 (an ulp in float32); Avalon's
    gradient was the division's. The value stays relu6(x + 3) / 6 exactly."""
    rng = np.random.default_rng(50)
    x, g = rng.uniform(-4, 4, 64), rng.standard_normal(64)
    x[:3] = (-3.0, 3.0, 0.0)
    tx = T(x).to(dtype).requires_grad_()
    ty = TF.hardsigmoid(tx)
    ty.backward(T(g).to(dtype))
    adt = av.float64 if dtype is torch.float64 else av.float32
    f = compiled(av.value_and_grad(lambda x, g: (F.hardsigmoid(x) * g).sum()), mode)
    with strict():
        _, got = f(arr(x).to(adt), arr(g).to(adt))
    assert got.dtype == adt and rel(got, tx.grad) == 0
    assert rel(nn.Hardsigmoid()(arr(x).to(adt)), ty) == 0


def test_named_parameters_and_buffers_recurse_false_as_torch():
    """YOLOv5's smart_optimizer groups `v.named_parameters(recurse=0)` of every module: Avalon's Module methods
    took no `recurse`."""
    def make(lib, F_, th):
        m = lib.Sequential(lib.Conv2d(2, 3, 1), lib.BatchNorm2d(3))
        m.register_buffer("scale", th.ones(3))
        m.extra = lib.Parameter(th.zeros(2))
        return m

    ours, theirs = pair(make)
    for a, b in ((ours, theirs), (ours[1], theirs[1])):
        for name in ("named_parameters", "named_buffers"):
            for recurse in (True, False, 0):
                assert [k for k, _ in getattr(a, name)(recurse=recurse)] == \
                       [k for k, _ in getattr(b, name)(recurse=recurse)], (name, recurse)
        assert len(list(a.parameters(recurse=False))) == len(list(b.parameters(recurse=False)))
        assert len(list(a.buffers(False))) == len(list(b.buffers(False)))
    assert [k for k, _ in ours.named_parameters("p", recurse=False)] == ["p.extra"]


@pytest.mark.parametrize("mode", ["numpy"])
def test_python_list_and_range_indices_are_literal_data_of_a_compiled_function(mode):
    """YOLOv5's `t[range(n), tcls[i]] = self.cp`: an index of Python numbers (a range, lists) is the program's
    own data, as `torch.tensor([-1])` is, but Avalon recorded it as an array captured from outside, so a
    compiled function traced again on every call (and warned); and `x[range(2)]` was an unsupported index."""
    def f(th, x, cls):
        t = th.full_like(x, 0.05)
        t[range(x.shape[0]), cls] = 0.9
        t[[0, 2], [1, 0]] = 0.5
        u = x.clone()
        u[range(2)] = 0.0
        return t * x, u, x[range(2)], x[range(3), [1, 0, 1]], x[[2, 0], [0, 1]]

    x, cls = np.random.default_rng(51).standard_normal((3, 2)), np.array([1, 0, 1])
    want = f(torch, T(x), T(cls))
    g = av.compile(lambda x, cls: f(av, x, cls), backend=mode)
    with strict():
        for _ in range(2):
            got = g(arr(x), arr(cls))
            assert all(rel(a, b) == 0 for a, b in zip(got, want))
    assert g.cache_info().misses == 1


def test_model_to_float64_gives_a_parameter_made_from_a_view_its_own_storage():
    """YOLOv5's `_initialize_biases` writes `mi.bias = nn.Parameter(b.view(-1))`, a view of the old float32 bias;
    `model.to(float64)` converted the parameter but left it a view of that base, so every write to it (the
    optimizer's) went through the float32 base and read back rounded: 3e-8 relative after one step."""
    def make(lib, F_, th):
        m = lib.Conv2d(2, 6, 1)
        b = m.bias.view(3, -1)
        b.data[:, 1] += math.log(0.6 / (2 - 0.99999))
        m.bias = lib.Parameter(b.view(-1), requires_grad=True)
        return m

    ours, theirs = pair(make)
    opt, topt = optim.SGD(ours.parameters(), lr=0.1), torch.optim.SGD(theirs.parameters(), lr=0.1)
    x = np.random.default_rng(52).standard_normal((2, 2, 3, 3))
    step = train_step(lambda m, x: (m(x) ** 2).mean())
    for mode in ("eager", "numpy"):
        topt.zero_grad()
        (theirs(T(x)) ** 2).mean().backward()
        topt.step()
        with strict():
            compiled(step, mode)(ours, opt, arr(x))
        assert ours.bias.dtype == av.float64 and rel(ours.bias, theirs.bias) < 1e-15, mode
    with av.no_grad():
        ours.bias.add_(1e-12)  # below float32's resolution: kept
    assert rel(ours.bias, theirs.bias.detach() + 1e-12) < 1e-15
