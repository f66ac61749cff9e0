"""Round 9m of port QA: programs from popular repositories, written once over `lib` (torch.nn or avalon.nn), `F_`
and `th` (torch or avalon), trained a few steps from torch's weights on random float32 data and compared with torch
after every step (losses, gradients, parameters, buffers), the first step eagerly and the rest compiled.

Programs: facebookresearch/barlowtwins (a cut-down ResNet backbone with `fc = nn.Identity()`, the projector, a
BatchNorm1d(affine=False) on both views, the cross-correlation written in place, `c.div_`, the on-diagonal term
through `torch.diagonal(c).add_(-1).pow_(2)` on a view of c, off_diagonal's `flatten()[:-1].view(n - 1, n + 1)`;
its LARS, a torch-style optimizer with nested `torch.where` trust ratios and lazily created momentum, over a
weights group and a biases group whose lrs adjust_learning_rate writes each step; a GradScaler on the CPU);
ronghuaiyang/arcface-pytorch's ArcMarginProduct (normalize, sqrt of a clamp, both margin branches, the one-hot by
`scatter_`, `output *= self.s`) and FocalLoss, over KaiyangZhou/pytorch-center-loss's ConvNet with PReLUs and its
CenterLoss (`addmm_(beta=1, alpha=-2)`, an expanded `eq` mask), trained by SGD groups over two modules with
StepLR and a second SGD over the centers whose gradients are rescaled by 1/weight_cent first;
rosinality/stylegan2-pytorch on its CPU path (equalized-lr linear and conv layers, modulated convs demodulated and
grouped by batch, the upsampling one a grouped conv_transpose2d, upfirdn2d_native's 6-d pads, negative crops,
strided slices and flipped-kernel conv, noise buffers, minibatch stddev with `mean(..., keepdims=True)`, a
ConvLayer that sets an attribute before nn.Sequential's __init__), trained as train.py does: D's logistic loss and
lazy R1 penalty, G's non-saturating loss and lazy path-length penalty with its running mean, Adam with the lazy
regularization's lr and betas, requires_grad toggled per phase and g_ema by accumulate; and karpathy/pytorch-made's
MADE (MaskedLinear's mask buffer rewritten by `mask.data.copy_(from_numpy(...))` between compiled steps, two
orderings cycled by an int seed, the test-time ensemble over orderings).

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`, LARS's `step()` called as
`opt.step(grads)`, `scaler.scale` inside the loss and `scaler.step(opt, grads)`); center loss's
`param.grad.data *= 1 / weight_cent` writes the gradient dict's entry; StyleGAN2's `autograd.grad(...,
create_graph=True)` penalties are `av.grad` inside the loss, the path-length one w.r.t. the argument of a function
running the synthesis from the latents (`input_is_latent=True`) where torch takes it w.r.t. `return_latents`'s
intermediate. Hyperparameters were raised (LARS's) or lowered (ArcFace's lr) where the originals would not move
float32 weights visibly or diverge at these sizes.

Deliberate differences met: LARS reads `g['lr']` as a Python float (`alpha=-g['lr']`), so with the lr changed every
step each compiled step traces again (as test_port_programs_23's Lion); MADE's int seed is part of the signature
(one trace per ordering); from_numpy of a transposed array is a copy, with a warning.

Bug found (regression at the end): the gradients of a tuple, list or dict of models (`(model, metric_fc,
criterion_cent)`, differentiated at once as torch's one backward fills all three) were a plain dict, which an
optimizer over the parts' `parameters()` refused (KeyError: names relative to the tuple), and held zeros for a
parameter the loss does not use (the ConvNet's fc2), which torch leaves None and SGD's weight decay and momentum
leave alone. They are `Grads` (matched by identity) without unused entries now, as a single model's are
(avalon/compiler/gradients.py).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

F32 = torch.float32


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def same_grads(grads, model, tol, prefix=""):
    """Avalon's gradient dict against torch's `.grad` of each parameter that has one."""
    want = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    got = {k[len(prefix):]: g for k, g in grads.items() if k.startswith(prefix)}
    assert sorted(got) == sorted(want)
    for k, g in want.items():
        assert rel(got[k], g) < tol, k


# -- 1. Barlow Twins (facebookresearch/barlowtwins main.py): LARS, two lr groups, GradScaler ----------------------

class BTArgs:
    batch_size = 8
    projector = "16-16"     # 8192-8192-8192 there
    lambd = 0.0051
    weight_decay = 1.5e-6
    learning_rate_weights = 20.0  # 0.2 there: LARS steps of eta * |w| would not move float32 weights visibly
    learning_rate_biases = 0.5    # 0.0048 there
    epochs = 2
    warmup_epochs = 1             # 10 there


def barlow_twins(lib, F_, th):
    nn_ = lib
    args = BTArgs

    class TinyResNet(nn_.Module):  # torchvision.models.resnet50(zero_init_residual=True), cut down
        def __init__(self):
            super().__init__()
            self.conv1 = nn_.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = nn_.BatchNorm2d(8)
            self.relu = nn_.ReLU(inplace=True)
            self.conv2 = nn_.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
            self.bn2 = nn_.BatchNorm2d(16)
            self.avgpool = nn_.AdaptiveAvgPool2d((1, 1))
            self.fc = nn_.Linear(16, 10)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.relu(self.bn2(self.conv2(x)))
            x = th.flatten(self.avgpool(x), 1)
            return self.fc(x)

    class BarlowTwins(nn_.Module):
        def __init__(self, args):
            super().__init__()
            self.args = args
            self.backbone = TinyResNet()
            self.backbone.fc = nn_.Identity()

            # projector
            sizes = [16] + list(map(int, args.projector.split('-')))
            layers = []
            for i in range(len(sizes) - 2):
                layers.append(nn_.Linear(sizes[i], sizes[i + 1], bias=False))
                layers.append(nn_.BatchNorm1d(sizes[i + 1]))
                layers.append(nn_.ReLU(inplace=True))
            layers.append(nn_.Linear(sizes[-2], sizes[-1], bias=False))
            self.projector = nn_.Sequential(*layers)

            # normalization layer for the representations z1 and z2
            self.bn = nn_.BatchNorm1d(sizes[-1], affine=False)

        def forward(self, y1, y2):
            z1 = self.projector(self.backbone(y1))
            z2 = self.projector(self.backbone(y2))

            # empirical cross-correlation matrix
            c = self.bn(z1).T @ self.bn(z2)

            # sum the cross-correlation matrix between all gpus
            c.div_(self.args.batch_size)
            # torch.distributed.all_reduce(c)  (one process)

            on_diag = th.diagonal(c).add_(-1).pow_(2).sum()
            off_diag = off_diagonal(c).pow_(2).sum()
            loss = on_diag + self.args.lambd * off_diag
            return loss

    def off_diagonal(x):
        # return a flattened view of the off-diagonal elements of a square matrix
        n, m = x.shape
        assert n == m
        return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()

    return BarlowTwins(args)


def lars_class(th):
    class LARS(th.optim.Optimizer):
        def __init__(self, params, lr, weight_decay=0, momentum=0.9, eta=0.001,
                     weight_decay_filter=False, lars_adaptation_filter=False):
            defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                            eta=eta, weight_decay_filter=weight_decay_filter,
                            lars_adaptation_filter=lars_adaptation_filter)
            super().__init__(params, defaults)

        def exclude_bias_and_norm(self, p):
            return p.ndim == 1

        @th.no_grad()
        def step(self):
            for g in self.param_groups:
                for p in g['params']:
                    dp = p.grad

                    if dp is None:
                        continue

                    if not g['weight_decay_filter'] or not self.exclude_bias_and_norm(p):
                        dp = dp.add(p, alpha=g['weight_decay'])

                    if not g['lars_adaptation_filter'] or not self.exclude_bias_and_norm(p):
                        param_norm = th.norm(p)
                        update_norm = th.norm(dp)
                        one = th.ones_like(param_norm)
                        q = th.where(param_norm > 0.,
                                     th.where(update_norm > 0,
                                              (g['eta'] * param_norm / update_norm), one), one)
                        dp = dp.mul(q)

                    param_state = self.state[p]
                    if 'mu' not in param_state:
                        param_state['mu'] = th.zeros_like(p)
                    mu = param_state['mu']
                    mu.mul_(g['momentum']).add_(dp)

                    p.add_(mu, alpha=-g['lr'])
    return LARS


def adjust_learning_rate(args, optimizer, loader_len, step):
    max_steps = args.epochs * loader_len
    warmup_steps = args.warmup_epochs * loader_len
    base_lr = args.batch_size / 256
    if step < warmup_steps:
        lr = base_lr * step / warmup_steps
    else:
        step -= warmup_steps
        max_steps -= warmup_steps
        q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
        end_lr = base_lr * 0.001
        lr = base_lr * q + end_lr * (1 - q)
    optimizer.param_groups[0]['lr'] = lr * args.learning_rate_weights
    optimizer.param_groups[1]['lr'] = lr * args.learning_rate_biases
    return lr


def bt_optimizer(th, model):
    param_weights = []
    param_biases = []
    for param in model.parameters():
        if param.ndim == 1:
            param_biases.append(param)
        else:
            param_weights.append(param)
    parameters = [{'params': param_weights}, {'params': param_biases}]
    return lars_class(th)(parameters, lr=0, weight_decay=BTArgs.weight_decay, eta=0.02,
                          weight_decay_filter=True, lars_adaptation_filter=True)


@pytest.mark.parametrize("mode", ["numpy"])
def test_barlow_twins_off_diagonal_views_lars_two_lr_groups_and_a_grad_scaler(mode):
    ours, theirs = pair(barlow_twins, dtype=F32)
    args = BTArgs
    optimizer, toptimizer = bt_optimizer(av, ours), bt_optimizer(torch, theirs)
    scaler = av.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
    tscaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)

    def objective(model, y1, y2, scaler):
        return scaler.scale(model.forward(y1, y2))

    def train_step(model, optimizer, scaler, y1, y2):
        loss, grads = av.value_and_grad(objective)(model, y1, y2, scaler)
        scaler.step(optimizer, grads)
        scaler.update()
        return loss, grads
    run = compiled(train_step, mode)

    rng = np.random.default_rng(0)
    loader_len = 2
    for epoch in range(args.epochs):
        for step in range(epoch * loader_len, (epoch + 1) * loader_len):
            y1, y2 = randn(rng, 8, 3, 8, 8), randn(rng, 8, 3, 8, 8)
            lr = adjust_learning_rate(args, toptimizer, loader_len, step)
            assert adjust_learning_rate(args, optimizer, loader_len, step) == lr
            toptimizer.zero_grad()
            tloss = theirs.forward(T(y1), T(y2))
            scale = tscaler.get_scale()
            tscaler.scale(tloss).backward()
            tscaler.step(toptimizer)
            tscaler.update()
            with strict():
                loss, grads = (run if step else train_step)(ours, optimizer, scaler, av.tensor(y1), av.tensor(y2))
            assert float(scaler.get_scale()) == tscaler.get_scale()
            assert rel(loss / scale, tloss) < 1e-5, step
            same_grads(grads, theirs, 1e-4)
            same_weights(ours, theirs, 1e-4)
            for p, tp in zip(ours.parameters(), theirs.parameters()):
                assert rel(optimizer.state[p]['mu'], toptimizer.state[tp]['mu']) < 1e-4
    assert float(scaler.get_scale()) == 2.0 ** 12  # grew every second step: no overflow in four
    # LARS reads each group's lr as a Python float (`alpha=-g['lr']`), and adjust_learning_rate changes it every
    # step: each compiled step traces again (as test_port_programs_23's Lion after a changed lr)
    assert run.cache_info().misses == 3


# -- 2. ArcFace head (ronghuaiyang/arcface-pytorch) with its FocalLoss, plus KaiyangZhou/pytorch-center-loss ---------

FEAT, N_CLASSES, WEIGHT_CENT = 4, 5, 0.5


def convnet(lib, F_, th):  # pytorch-center-loss models.py's ConvNet, fewer channels
    nn_ = lib

    class ConvNet(nn_.Module):
        def __init__(self, num_classes):
            super(ConvNet, self).__init__()  # noqa: UP008
            self.conv1_1 = nn_.Conv2d(1, 4, 5, stride=1, padding=2)
            self.prelu1_1 = nn_.PReLU()
            self.conv1_2 = nn_.Conv2d(4, 4, 5, stride=1, padding=2)
            self.prelu1_2 = nn_.PReLU()
            self.conv2_1 = nn_.Conv2d(4, 8, 5, stride=1, padding=2)
            self.prelu2_1 = nn_.PReLU()
            self.conv2_2 = nn_.Conv2d(8, 8, 5, stride=1, padding=2)
            self.prelu2_2 = nn_.PReLU()
            self.fc1 = nn_.Linear(8 * 3 * 3, FEAT)
            self.prelu_fc1 = nn_.PReLU()
            self.fc2 = nn_.Linear(FEAT, num_classes)

        def forward(self, x):
            x = self.prelu1_1(self.conv1_1(x))
            x = self.prelu1_2(self.conv1_2(x))
            x = F_.max_pool2d(x, 2)
            x = self.prelu2_1(self.conv2_1(x))
            x = self.prelu2_2(self.conv2_2(x))
            x = F_.max_pool2d(x, 2)
            x = x.view(-1, 8 * 3 * 3)
            x = self.prelu_fc1(self.fc1(x))
            y = self.fc2(x)
            return x, y
    return ConvNet(N_CLASSES)


def arcface_parts(lib, F_, th, easy_margin):
    nn_ = lib
    Parameter = lib.Parameter  # noqa: N806  (from torch.nn import Parameter)

    class ArcMarginProduct(nn_.Module):
        r"""Implement of large margin arc distance: :
            Args:
                in_features: size of each input sample
                out_features: size of each output sample
                s: norm of input feature
                m: margin
                cos(theta + m)
            """
        def __init__(self, in_features, out_features, s=30.0, m=0.50, easy_margin=False):
            super(ArcMarginProduct, self).__init__()  # noqa: UP008
            self.in_features = in_features
            self.out_features = out_features
            self.s = s
            self.m = m
            self.weight = Parameter(th.FloatTensor(out_features, in_features))
            nn_.init.xavier_uniform_(self.weight)

            self.easy_margin = easy_margin
            self.cos_m = math.cos(m)
            self.sin_m = math.sin(m)
            self.th = math.cos(math.pi - m)
            self.mm = math.sin(math.pi - m) * m

        def forward(self, input, label):
            # --------------------------- cos(theta) & phi(theta) ---------------------------
            cosine = F_.linear(F_.normalize(input), F_.normalize(self.weight))
            sine = th.sqrt((1.0 - th.pow(cosine, 2)).clamp(0, 1))
            phi = cosine * self.cos_m - sine * self.sin_m
            if self.easy_margin:
                phi = th.where(cosine > 0, phi, cosine)
            else:
                phi = th.where(cosine > self.th, phi, cosine - self.mm)
            # --------------------------- convert label to one-hot ---------------------------
            # one_hot = torch.zeros(cosine.size(), requires_grad=True, device='cuda')
            one_hot = th.zeros(cosine.size(), device='cpu')
            one_hot.scatter_(1, label.view(-1, 1).long(), 1)
            # -------------torch.where(out_i = {x_i if condition_i else y_i) -------------
            output = (one_hot * phi) + ((1.0 - one_hot) * cosine)  # you can use torch.where if your torch.__version__ is 0.4
            output *= self.s
            # print(output)

            return output

    class FocalLoss(nn_.Module):

        def __init__(self, gamma=0, eps=1e-7):
            super(FocalLoss, self).__init__()  # noqa: UP008
            self.gamma = gamma
            self.eps = eps
            self.ce = th.nn.CrossEntropyLoss()

        def forward(self, input, target):
            logp = self.ce(input, target)
            p = th.exp(-logp)
            loss = (1 - p) ** self.gamma * logp
            return loss.mean()

    class CenterLoss(nn_.Module):
        """Center loss.

        Reference:
        Wen et al. A Discriminative Feature Learning Approach for Deep Face Recognition. ECCV 2016.

        Args:
            num_classes (int): number of classes.
            feat_dim (int): feature dimension.
        """
        def __init__(self, num_classes=10, feat_dim=2, use_gpu=True):
            super(CenterLoss, self).__init__()  # noqa: UP008
            self.num_classes = num_classes
            self.feat_dim = feat_dim
            self.use_gpu = use_gpu

            if self.use_gpu:
                self.centers = nn_.Parameter(th.randn(self.num_classes, self.feat_dim).cuda())
            else:
                self.centers = nn_.Parameter(th.randn(self.num_classes, self.feat_dim))

        def forward(self, x, labels):
            """
            Args:
                x: feature matrix with shape (batch_size, feat_dim).
                labels: ground truth labels with shape (batch_size).
            """
            batch_size = x.size(0)
            distmat = th.pow(x, 2).sum(dim=1, keepdim=True).expand(batch_size, self.num_classes) + \
                      th.pow(self.centers, 2).sum(dim=1, keepdim=True).expand(self.num_classes, batch_size).t()
            distmat.addmm_(x, self.centers.t(), beta=1, alpha=-2)

            classes = th.arange(self.num_classes).long()
            if self.use_gpu:
                classes = classes.cuda()
            labels = labels.unsqueeze(1).expand(batch_size, self.num_classes)
            mask = labels.eq(classes.expand(batch_size, self.num_classes))

            dist = distmat * mask.float()
            loss = dist.clamp(min=1e-12, max=1e+12).sum() / batch_size

            return loss

    metric_fc = ArcMarginProduct(FEAT, N_CLASSES, s=30, m=0.5, easy_margin=easy_margin)
    criterion = FocalLoss(gamma=2)
    criterion_cent = CenterLoss(num_classes=N_CLASSES, feat_dim=FEAT, use_gpu=False)
    return metric_fc, criterion, criterion_cent


def arcface_optimizers(th, model, metric_fc, criterion_cent):
    optimizer = th.optim.SGD([{'params': model.parameters()}, {'params': metric_fc.parameters()}],
                             lr=1e-3, weight_decay=5e-4, momentum=0.9)  # 1e-1 there: diverges here
    scheduler = th.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
    optimizer_centloss = th.optim.SGD(criterion_cent.parameters(), lr=0.5)
    return optimizer, scheduler, optimizer_centloss


@pytest.mark.parametrize("easy_margin", [False, True])
def test_arcface_margin_focal_loss_and_center_loss_with_its_own_rescaled_optimizer(easy_margin):
    model, tmodel = pair(convnet, dtype=F32)
    torch.manual_seed(1)
    tmetric_fc, tcriterion, tcriterion_cent = arcface_parts(torch.nn, TF, torch, easy_margin)
    metric_fc, criterion, criterion_cent = arcface_parts(nn, F, av, easy_margin)
    av.nn.load_state_dict(metric_fc, tmetric_fc.state_dict())
    av.nn.load_state_dict(criterion_cent, tcriterion_cent.state_dict())
    optimizer, scheduler, optimizer_centloss = arcface_optimizers(av, model, metric_fc, criterion_cent)
    toptimizer, tscheduler, toptimizer_centloss = arcface_optimizers(torch, tmodel, tmetric_fc, tcriterion_cent)

    def loss_fn(nets, data, labels):
        model, metric_fc, criterion_cent = nets
        feature, _ = model(data)
        output = metric_fc(feature, labels)
        loss_xent = criterion(output, labels)
        loss_cent = criterion_cent(feature, labels)
        loss_cent *= WEIGHT_CENT
        return loss_xent + loss_cent, (output, loss_cent)

    def train_step(nets, optimizer, optimizer_centloss, data, labels):
        (loss, (output, loss_cent)), grads = av.value_and_grad(loss_fn, has_aux=True)(nets, data, labels)
        optimizer.step(grads)
        # by doing so, weight_cent would not impact on the learning of centers
        for name, _ in nets[2].named_parameters():
            grads["2." + name].data *= (1. / WEIGHT_CENT)
        optimizer_centloss.step(grads)
        return loss, output, grads
    run = compiled(train_step, "numpy")

    rng = np.random.default_rng(2)
    nets = (model, metric_fc, criterion_cent)
    for epoch in range(2):
        for it in range(2):
            data, labels = randn(rng, 6, 1, 12, 12), rng.integers(0, N_CLASSES, 6)
            tfeatures, _ = tmodel(T(data))
            toutput = tmetric_fc(tfeatures, T(labels))
            tloss_xent = tcriterion(toutput, T(labels))
            tloss_cent = tcriterion_cent(tfeatures, T(labels))
            tloss_cent *= WEIGHT_CENT
            tloss = tloss_xent + tloss_cent
            toptimizer.zero_grad()
            toptimizer_centloss.zero_grad()
            tloss.backward()
            toptimizer.step()
            for param in tcriterion_cent.parameters():
                param.grad.data *= (1. / WEIGHT_CENT)
            toptimizer_centloss.step()
            first = epoch == 0 and it == 0
            with strict():
                loss, output, grads = (train_step if first else run)(nets, optimizer, optimizer_centloss,
                                                                      av.tensor(data), av.tensor(labels))
            assert rel(loss, tloss) < 1e-5 and rel(output, toutput) < 1e-5
            same_grads(grads, tmodel, 1e-4, prefix="0.")
            same_grads(grads, tmetric_fc, 1e-4, prefix="1.")
            same_grads(grads, tcriterion_cent, 1e-4, prefix="2.")
            same_weights(model, tmodel, 1e-4)
            same_weights(metric_fc, tmetric_fc, 1e-4)
            same_weights(criterion_cent, tcriterion_cent, 1e-4)
        scheduler.step()
        tscheduler.step()
    assert "fc2.weight" not in grads and tmodel.fc2.weight.grad is None  # the unused softmax head: no gradient
    assert run.cache_info().misses == 1


# -- 3. StyleGAN2 (rosinality/stylegan2-pytorch model.py and train.py, the upfirdn2d_native CPU path) -------------

CHANNELS = {4: 8, 8: 8}  # 512 there
STYLE_DIM, N_MLP, SIZE, BATCH = 8, 2, 8, 4


def stylegan2(lib, F_, th):
    nn_ = lib

    def upfirdn2d(input, kernel, up=1, down=1, pad=(0, 0)):
        out = upfirdn2d_native(input, kernel, up, up, down, down, pad[0], pad[1], pad[0], pad[1])
        return out

    def upfirdn2d_native(input, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1):
        _, channel, in_h, in_w = input.shape
        input = input.reshape(-1, in_h, in_w, 1)

        _, in_h, in_w, minor = input.shape
        kernel_h, kernel_w = kernel.shape

        out = input.view(-1, in_h, 1, in_w, 1, minor)
        out = F_.pad(out, [0, 0, 0, up_x - 1, 0, 0, 0, up_y - 1])
        out = out.view(-1, in_h * up_y, in_w * up_x, minor)

        out = F_.pad(out, [0, 0, max(pad_x0, 0), max(pad_x1, 0), max(pad_y0, 0), max(pad_y1, 0)])
        out = out[
            :,
            max(-pad_y0, 0): out.shape[1] - max(-pad_y1, 0),
            max(-pad_x0, 0): out.shape[2] - max(-pad_x1, 0),
            :,
        ]

        out = out.permute(0, 3, 1, 2)
        out = out.reshape([-1, 1, in_h * up_y + pad_y0 + pad_y1, in_w * up_x + pad_x0 + pad_x1])
        w = th.flip(kernel, [0, 1]).view(1, 1, kernel_h, kernel_w)
        out = F_.conv2d(out, w)
        out = out.reshape(
            -1,
            minor,
            in_h * up_y + pad_y0 + pad_y1 - kernel_h + 1,
            in_w * up_x + pad_x0 + pad_x1 - kernel_w + 1,
        )
        out = out.permute(0, 2, 3, 1)
        out = out[:, ::down_y, ::down_x, :]

        out_h = (in_h * up_y + pad_y0 + pad_y1 - kernel_h + down_y) // down_y
        out_w = (in_w * up_x + pad_x0 + pad_x1 - kernel_w + down_x) // down_x

        return out.view(-1, channel, out_h, out_w)

    def fused_leaky_relu(input, bias=None, negative_slope=0.2, scale=2 ** 0.5):  # op/fused_act.py on the CPU
        if bias is not None:
            rest_dim = [1] * (input.ndim - bias.ndim - 1)
            return (
                F_.leaky_relu(
                    input + bias.view(1, bias.shape[0], *rest_dim), negative_slope=0.2
                )
                * scale
            )
        else:
            return F_.leaky_relu(input, negative_slope=0.2) * scale

    class FusedLeakyReLU(nn_.Module):
        def __init__(self, channel, bias=True, negative_slope=0.2, scale=2 ** 0.5):
            super().__init__()
            if bias:
                self.bias = nn_.Parameter(th.zeros(channel))
            else:
                self.bias = None
            self.negative_slope = negative_slope
            self.scale = scale

        def forward(self, input):
            return fused_leaky_relu(input, self.bias, self.negative_slope, self.scale)

    class PixelNorm(nn_.Module):
        def __init__(self):
            super().__init__()

        def forward(self, input):
            return input * th.rsqrt(th.mean(input ** 2, dim=1, keepdim=True) + 1e-8)

    def make_kernel(k):
        k = th.tensor(k, dtype=th.float32)
        if k.ndim == 1:
            k = k[None, :] * k[:, None]
        k /= k.sum()
        return k

    class Upsample(nn_.Module):
        def __init__(self, kernel, factor=2):
            super().__init__()
            self.factor = factor
            kernel = make_kernel(kernel) * (factor ** 2)
            self.register_buffer("kernel", kernel)
            p = kernel.shape[0] - factor
            pad0 = (p + 1) // 2 + factor - 1
            pad1 = p // 2
            self.pad = (pad0, pad1)

        def forward(self, input):
            out = upfirdn2d(input, self.kernel, up=self.factor, down=1, pad=self.pad)
            return out

    class Blur(nn_.Module):
        def __init__(self, kernel, pad, upsample_factor=1):
            super().__init__()
            kernel = make_kernel(kernel)
            if upsample_factor > 1:
                kernel = kernel * (upsample_factor ** 2)
            self.register_buffer("kernel", kernel)
            self.pad = pad

        def forward(self, input):
            out = upfirdn2d(input, self.kernel, pad=self.pad)
            return out

    class EqualConv2d(nn_.Module):
        def __init__(self, in_channel, out_channel, kernel_size, stride=1, padding=0, bias=True):
            super().__init__()
            self.weight = nn_.Parameter(th.randn(out_channel, in_channel, kernel_size, kernel_size))
            self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
            self.stride = stride
            self.padding = padding
            if bias:
                self.bias = nn_.Parameter(th.zeros(out_channel))
            else:
                self.bias = None

        def forward(self, input):
            out = F_.conv2d(input, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)
            return out

    class EqualLinear(nn_.Module):
        def __init__(self, in_dim, out_dim, bias=True, bias_init=0, lr_mul=1, activation=None):
            super().__init__()
            self.weight = nn_.Parameter(th.randn(out_dim, in_dim).div_(lr_mul))
            if bias:
                self.bias = nn_.Parameter(th.zeros(out_dim).fill_(bias_init))
            else:
                self.bias = None
            self.activation = activation
            self.scale = (1 / math.sqrt(in_dim)) * lr_mul
            self.lr_mul = lr_mul

        def forward(self, input):
            if self.activation:
                out = F_.linear(input, self.weight * self.scale)
                out = fused_leaky_relu(out, self.bias * self.lr_mul)
            else:
                out = F_.linear(input, self.weight * self.scale, bias=self.bias * self.lr_mul)
            return out

    class ModulatedConv2d(nn_.Module):
        def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True, upsample=False,
                     downsample=False, blur_kernel=[1, 3, 3, 1]):  # noqa: B006
            super().__init__()
            self.eps = 1e-8
            self.kernel_size = kernel_size
            self.in_channel = in_channel
            self.out_channel = out_channel
            self.upsample = upsample
            self.downsample = downsample
            if upsample:
                factor = 2
                p = (len(blur_kernel) - factor) - (kernel_size - 1)
                pad0 = (p + 1) // 2 + factor - 1
                pad1 = p // 2 + 1
                self.blur = Blur(blur_kernel, pad=(pad0, pad1), upsample_factor=factor)
            fan_in = in_channel * kernel_size ** 2
            self.scale = 1 / math.sqrt(fan_in)
            self.padding = kernel_size // 2
            self.weight = nn_.Parameter(th.randn(1, out_channel, in_channel, kernel_size, kernel_size))
            self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
            self.demodulate = demodulate

        def forward(self, input, style):
            batch, in_channel, height, width = input.shape
            style = self.modulation(style).view(batch, 1, in_channel, 1, 1)
            weight = self.scale * self.weight * style
            if self.demodulate:
                demod = th.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
                weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
            weight = weight.view(batch * self.out_channel, in_channel, self.kernel_size, self.kernel_size)
            if self.upsample:
                input = input.view(1, batch * in_channel, height, width)
                weight = weight.view(batch, self.out_channel, in_channel, self.kernel_size, self.kernel_size)
                weight = weight.transpose(1, 2).reshape(
                    batch * in_channel, self.out_channel, self.kernel_size, self.kernel_size)
                out = F_.conv_transpose2d(input, weight, padding=0, stride=2, groups=batch)
                _, _, height, width = out.shape
                out = out.view(batch, self.out_channel, height, width)
                out = self.blur(out)
            else:
                input = input.view(1, batch * in_channel, height, width)
                out = F_.conv2d(input, weight, padding=self.padding, groups=batch)
                _, _, height, width = out.shape
                out = out.view(batch, self.out_channel, height, width)
            return out

    class NoiseInjection(nn_.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn_.Parameter(th.zeros(1))

        def forward(self, image, noise=None):
            if noise is None:
                batch, _, height, width = image.shape
                noise = image.new_empty(batch, 1, height, width).normal_()
            return image + self.weight * noise

    class ConstantInput(nn_.Module):
        def __init__(self, channel, size=4):
            super().__init__()
            self.input = nn_.Parameter(th.randn(1, channel, size, size))

        def forward(self, input):
            batch = input.shape[0]
            out = self.input.repeat(batch, 1, 1, 1)
            return out

    class StyledConv(nn_.Module):
        def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False,
                     blur_kernel=[1, 3, 3, 1], demodulate=True):  # noqa: B006
            super().__init__()
            self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample,
                                        blur_kernel=blur_kernel, demodulate=demodulate)
            self.noise = NoiseInjection()
            self.activate = FusedLeakyReLU(out_channel)

        def forward(self, input, style, noise=None):
            out = self.conv(input, style)
            out = self.noise(out, noise=noise)
            out = self.activate(out)
            return out

    class ToRGB(nn_.Module):
        def __init__(self, in_channel, style_dim, upsample=True, blur_kernel=[1, 3, 3, 1]):  # noqa: B006
            super().__init__()
            if upsample:
                self.upsample = Upsample(blur_kernel)
            self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
            self.bias = nn_.Parameter(th.zeros(1, 3, 1, 1))

        def forward(self, input, style, skip=None):
            out = self.conv(input, style)
            out = out + self.bias
            if skip is not None:
                skip = self.upsample(skip)
                out = out + skip
            return out

    class Generator(nn_.Module):
        def __init__(self, size, style_dim, n_mlp, channel_multiplier=2, blur_kernel=[1, 3, 3, 1],  # noqa: B006
                     lr_mlp=0.01):
            super().__init__()
            self.size = size
            self.style_dim = style_dim
            layers = [PixelNorm()]
            for i in range(n_mlp):  # noqa: B007
                layers.append(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu"))
            self.style = nn_.Sequential(*layers)
            self.channels = CHANNELS
            self.input = ConstantInput(self.channels[4])
            self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_kernel=blur_kernel)
            self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)
            self.log_size = int(math.log(size, 2))
            self.num_layers = (self.log_size - 2) * 2 + 1
            self.convs = nn_.ModuleList()
            self.upsamples = nn_.ModuleList()
            self.to_rgbs = nn_.ModuleList()
            self.noises = nn_.Module()
            in_channel = self.channels[4]
            for layer_idx in range(self.num_layers):
                res = (layer_idx + 5) // 2
                shape = [1, 1, 2 ** res, 2 ** res]
                self.noises.register_buffer(f"noise_{layer_idx}", th.randn(*shape))
            for i in range(3, self.log_size + 1):
                out_channel = self.channels[2 ** i]
                self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True,
                                             blur_kernel=blur_kernel))
                self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel))
                self.to_rgbs.append(ToRGB(out_channel, style_dim))
                in_channel = out_channel
            self.n_latent = self.log_size * 2 - 2

        def forward(self, styles, return_latents=False, inject_index=None, truncation=1, truncation_latent=None,
                    input_is_latent=False, noise=None, randomize_noise=True):
            if not input_is_latent:
                styles = [self.style(s) for s in styles]
            if noise is None:
                if randomize_noise:
                    noise = [None] * self.num_layers
                else:
                    noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
            if len(styles) < 2:
                inject_index = self.n_latent
                if styles[0].ndim < 3:
                    latent = styles[0].unsqueeze(1).repeat(1, inject_index, 1)
                else:
                    latent = styles[0]
            else:
                latent = styles[0].unsqueeze(1).repeat(1, inject_index, 1)
                latent2 = styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)
                latent = th.cat([latent, latent2], 1)
            out = self.input(latent)
            out = self.conv1(out, latent[:, 0], noise=noise[0])
            skip = self.to_rgb1(out, latent[:, 1])
            i = 1
            for conv1, conv2, noise1, noise2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2],
                                                            noise[2::2], self.to_rgbs):
                out = conv1(out, latent[:, i], noise=noise1)
                out = conv2(out, latent[:, i + 1], noise=noise2)
                skip = to_rgb(out, latent[:, i + 2], skip)
                i += 2
            image = skip
            if return_latents:
                return image, latent
            else:
                return image, None

    class ConvLayer(nn_.Sequential):
        def __init__(self, in_channel, out_channel, kernel_size, downsample=False, blur_kernel=[1, 3, 3, 1],  # noqa: B006
                     bias=True, activate=True):
            layers = []
            if downsample:
                factor = 2
                p = (len(blur_kernel) - factor) + (kernel_size - 1)
                pad0 = (p + 1) // 2
                pad1 = p // 2
                layers.append(Blur(blur_kernel, pad=(pad0, pad1)))
                stride = 2
                self.padding = 0
            else:
                stride = 1
                self.padding = kernel_size // 2
            layers.append(EqualConv2d(in_channel, out_channel, kernel_size, padding=self.padding, stride=stride,
                                      bias=bias and not activate))
            if activate:
                layers.append(FusedLeakyReLU(out_channel, bias=bias))
            super().__init__(*layers)

    class ResBlock(nn_.Module):
        def __init__(self, in_channel, out_channel, blur_kernel=[1, 3, 3, 1]):  # noqa: B006
            super().__init__()
            self.conv1 = ConvLayer(in_channel, in_channel, 3)
            self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True)
            self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False, bias=False)

        def forward(self, input):
            out = self.conv1(input)
            out = self.conv2(out)
            skip = self.skip(input)
            out = (out + skip) / math.sqrt(2)
            return out

    class Discriminator(nn_.Module):
        def __init__(self, size, channel_multiplier=2, blur_kernel=[1, 3, 3, 1]):  # noqa: B006
            super().__init__()
            channels = CHANNELS
            convs = [ConvLayer(3, channels[size], 1)]
            log_size = int(math.log(size, 2))
            in_channel = channels[size]
            for i in range(log_size, 2, -1):
                out_channel = channels[2 ** (i - 1)]
                convs.append(ResBlock(in_channel, out_channel, blur_kernel))
                in_channel = out_channel
            self.convs = nn_.Sequential(*convs)
            self.stddev_group = 4
            self.stddev_feat = 1
            self.final_conv = ConvLayer(in_channel + 1, channels[4], 3)
            self.final_linear = nn_.Sequential(
                EqualLinear(channels[4] * 4 * 4, channels[4], activation="fused_lrelu"),
                EqualLinear(channels[4], 1),
            )

        def forward(self, input):
            out = self.convs(input)
            batch, channel, height, width = out.shape
            group = min(batch, self.stddev_group)
            stddev = out.view(group, -1, self.stddev_feat, channel // self.stddev_feat, height, width)
            stddev = th.sqrt(stddev.var(0, unbiased=False) + 1e-8)
            stddev = stddev.mean([2, 3, 4], keepdims=True).squeeze(2)
            stddev = stddev.repeat(group, 1, height, width)
            out = th.cat([out, stddev], 1)
            out = self.final_conv(out)
            out = out.view(batch, -1)
            out = self.final_linear(out)
            return out

    generator = Generator(SIZE, STYLE_DIM, N_MLP)
    discriminator = Discriminator(SIZE)
    with th.no_grad():  # NoiseInjection's weights start at zero: give the noise a gradient path both ways
        for m in generator.modules():
            if isinstance(m, NoiseInjection):
                m.weight.fill_(0.1)
    return nn_.ModuleDict({"g": generator, "d": discriminator})


class GANArgs:
    lr = 0.002
    r1 = 10
    path_regularize = 2
    path_batch_shrink = 2
    d_reg_every = 2
    g_reg_every = 2


def requires_grad(model, flag=True):
    for p in model.parameters():
        p.requires_grad = flag


def d_logistic_loss(F_, real_pred, fake_pred):
    real_loss = F_.softplus(-real_pred)
    fake_loss = F_.softplus(fake_pred)
    return real_loss.mean() + fake_loss.mean()


def g_nonsaturating_loss(F_, fake_pred):
    loss = F_.softplus(-fake_pred).mean()
    return loss


def accumulate(model1, model2, decay=0.999):
    par1 = dict(model1.named_parameters())
    par2 = dict(model2.named_parameters())
    for k in par1.keys():
        par1[k].data.mul_(decay).add_(par2[k].data, alpha=1 - decay)


def stylegan_optimizers(th, generator, discriminator, args):
    g_reg_ratio = args.g_reg_every / (args.g_reg_every + 1)
    d_reg_ratio = args.d_reg_every / (args.d_reg_every + 1)
    g_optim = th.optim.Adam(generator.parameters(), lr=args.lr * g_reg_ratio,
                            betas=(0 ** g_reg_ratio, 0.99 ** g_reg_ratio))
    d_optim = th.optim.Adam(discriminator.parameters(), lr=args.lr * d_reg_ratio,
                            betas=(0 ** d_reg_ratio, 0.99 ** d_reg_ratio))
    return g_optim, d_optim


def torch_stylegan_iteration(i, generator, discriminator, g_ema, g_optim, d_optim, real_img, noises, path_noise,
                             mean_path_length, args):
    """train.py's loop body (mixing 0: one latent per image; augment off; the noises given)."""
    out = {}
    requires_grad(generator, False)
    requires_grad(discriminator, True)
    fake_img, _ = generator([noises[0]], randomize_noise=False)
    fake_pred = discriminator(fake_img)
    real_pred = discriminator(real_img)
    d_loss = d_logistic_loss(TF, real_pred, fake_pred)
    discriminator.zero_grad()
    d_loss.backward()
    d_optim.step()
    out["d_loss"] = d_loss
    if i % args.d_reg_every == 0:
        real_img.requires_grad = True
        real_pred = discriminator(real_img)
        grad_real, = torch.autograd.grad(outputs=real_pred.sum(), inputs=real_img, create_graph=True)
        r1_loss = grad_real.pow(2).reshape(grad_real.shape[0], -1).sum(1).mean()
        discriminator.zero_grad()
        (args.r1 / 2 * r1_loss * args.d_reg_every + 0 * real_pred[0]).backward()
        d_optim.step()
        out["r1_loss"] = r1_loss
    requires_grad(generator, True)
    requires_grad(discriminator, False)
    fake_img, _ = generator([noises[1]], randomize_noise=False)
    fake_pred = discriminator(fake_img)
    g_loss = g_nonsaturating_loss(TF, fake_pred)
    generator.zero_grad()
    g_loss.backward()
    g_optim.step()
    out["g_loss"] = g_loss
    if i % args.g_reg_every == 0:
        fake_img, latents = generator([noises[2]], return_latents=True, randomize_noise=False)
        # g_path_regularize, with its randn_like noise given
        noise = path_noise / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
        grad, = torch.autograd.grad(outputs=(fake_img * noise).sum(), inputs=latents, create_graph=True)
        path_lengths = torch.sqrt(grad.pow(2).sum(2).mean(1))
        path_mean = mean_path_length + 0.01 * (path_lengths.mean() - mean_path_length)
        path_loss = (path_lengths - path_mean).pow(2).mean()
        mean_path_length = path_mean.detach()
        generator.zero_grad()
        weighted_path_loss = args.path_regularize * args.g_reg_every * path_loss
        if args.path_batch_shrink:
            weighted_path_loss += 0 * fake_img[0, 0, 0, 0]
        weighted_path_loss.backward()
        g_optim.step()
        out["path_loss"] = path_loss
    accumulate(g_ema, generator, 0.5 ** (BATCH / (10 * 1000)))
    return out, mean_path_length


def test_stylegan2_modulated_grouped_convs_upfirdn_blur_r1_and_path_length_regularization_lazily():
    """The generator's grouped conv_transpose2d (groups=batch) and the native upfirdn2d's 6-d pads, strided slices
    and flipped-kernel conv; the discriminator's minibatch stddev; D's logistic loss, its lazy R1 penalty by a
    gradient w.r.t. the real images, G's non-saturating loss and its lazy path-length penalty by a gradient
    w.r.t. the latents, Adam with the lazy-regularization ratio, requires_grad toggles and g_ema by accumulate.

    What the port changes: the two `autograd.grad(..., create_graph=True)` are `av.grad` of a function inside
    the loss (README), and a gradient w.r.t. the latents, which torch takes from `generator(...,
    return_latents=True)`, is one w.r.t. the argument of a function that runs the synthesis from them
    (`input_is_latent=True`, as train.py's generator supports)."""
    import copy

    ours, theirs = pair(stylegan2, dtype=F32)
    generator, discriminator = ours["g"], ours["d"]
    tgenerator, tdiscriminator = theirs["g"], theirs["d"]
    g_ema, tg_ema = copy.deepcopy(generator), copy.deepcopy(tgenerator)
    g_ema.eval()
    tg_ema.eval()
    args = GANArgs
    g_optim, d_optim = stylegan_optimizers(av, generator, discriminator, args)
    tg_optim, td_optim = stylegan_optimizers(torch, tgenerator, tdiscriminator, args)

    def d_loss_fn(discriminator, generator, noise, real_img):
        fake_img, _ = generator([noise], randomize_noise=False)
        fake_pred = discriminator(fake_img)
        real_pred = discriminator(real_img)
        return d_logistic_loss(F, real_pred, fake_pred)

    def d_r1_fn(discriminator, real_img):
        real_pred = discriminator(real_img)
        grad_real = av.grad(lambda real_img: discriminator(real_img).sum())(real_img)
        r1_loss = grad_real.pow(2).reshape(grad_real.shape[0], -1).sum(1).mean()
        return args.r1 / 2 * r1_loss * args.d_reg_every + 0 * real_pred[0], r1_loss

    def g_loss_fn(generator, discriminator, noise):
        fake_img, _ = generator([noise], randomize_noise=False)
        fake_pred = discriminator(fake_img)
        return g_nonsaturating_loss(F, fake_pred)

    def g_path_fn(generator, z, path_noise, mean_path_length):
        latents = generator.style(z).unsqueeze(1).repeat(1, generator.n_latent, 1)  # what return_latents gives

        def synthesis(latents):
            return generator([latents], input_is_latent=True, randomize_noise=False)[0]
        fake_img = synthesis(latents)
        noise = path_noise / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
        grad = av.grad(lambda latents: (synthesis(latents) * noise).sum())(latents)
        path_lengths = av.sqrt(grad.pow(2).sum(2).mean(1))
        path_mean = mean_path_length + 0.01 * (path_lengths.mean() - mean_path_length)
        path_loss = (path_lengths - path_mean).pow(2).mean()
        weighted_path_loss = args.path_regularize * args.g_reg_every * path_loss
        if args.path_batch_shrink:
            weighted_path_loss += 0 * fake_img[0, 0, 0, 0]
        return weighted_path_loss, (path_loss, path_mean.detach())

    def d_step(discriminator, generator, d_optim, noise, real_img):
        loss, grads = av.value_and_grad(d_loss_fn)(discriminator, generator, noise, real_img)
        d_optim.step(grads)
        return loss

    def d_reg_step(discriminator, d_optim, real_img):
        (_, r1_loss), grads = av.value_and_grad(d_r1_fn, has_aux=True)(discriminator, real_img)
        d_optim.step(grads)
        return r1_loss

    def g_step(generator, discriminator, g_optim, noise):
        loss, grads = av.value_and_grad(g_loss_fn)(generator, discriminator, noise)
        g_optim.step(grads)
        return loss

    def g_reg_step(generator, g_optim, z, path_noise, mean_path_length):
        (_, (path_loss, mean_path_length)), grads = av.value_and_grad(g_path_fn, has_aux=True)(
            generator, z, path_noise, mean_path_length)
        g_optim.step(grads)
        return path_loss, mean_path_length

    steps = {f.__name__: f for f in (d_step, d_reg_step, g_step, g_reg_step)}
    runs = {k: compiled(f, "numpy") for k, f in steps.items()}
    rng = np.random.default_rng(3)
    mean_path_length, tmean_path_length = av.tensor(0.0), 0
    for i in range(3):
        real_img = randn(rng, BATCH, 3, SIZE, SIZE)
        noises = [randn(rng, BATCH, STYLE_DIM) for _ in range(2)] + [randn(rng, BATCH // 2, STYLE_DIM)]
        path_noise = randn(rng, BATCH // 2, 3, SIZE, SIZE)
        tout, tmean_path_length = torch_stylegan_iteration(
            i, tgenerator, tdiscriminator, tg_ema, tg_optim, td_optim, T(real_img), [T(z) for z in noises],
            T(path_noise), tmean_path_length, args)
        run = runs if i else steps
        with strict():
            requires_grad(generator, False)
            requires_grad(discriminator, True)
            assert rel(run["d_step"](discriminator, generator, d_optim, av.tensor(noises[0]), av.tensor(real_img)),
                       tout["d_loss"]) < 1e-5
            if i % args.d_reg_every == 0:
                assert rel(run["d_reg_step"](discriminator, d_optim, av.tensor(real_img)), tout["r1_loss"]) < 1e-4
            requires_grad(generator, True)
            requires_grad(discriminator, False)
            assert rel(run["g_step"](generator, discriminator, g_optim, av.tensor(noises[1])), tout["g_loss"]) < 1e-5
            if i % args.g_reg_every == 0:
                path_loss, mean_path_length = run["g_reg_step"](generator, g_optim, av.tensor(noises[2]),
                                                                av.tensor(path_noise), mean_path_length)
                assert rel(path_loss, tout["path_loss"]) < 1e-4
                assert rel(mean_path_length, tmean_path_length) < 1e-5
        accumulate(g_ema, generator, 0.5 ** (BATCH / (10 * 1000)))
        same_weights(ours, theirs, 1e-4)
        same_weights(g_ema, tg_ema, 1e-4)
    with av.no_grad(), torch.no_grad():  # g_ema samples with train.py's sample_z
        z = randn(rng, BATCH, STYLE_DIM)
        sample, _ = g_ema([av.tensor(z)], randomize_noise=False)
        tsample, _ = tg_ema([T(z)], randomize_noise=False)
        assert rel(sample, tsample) < 1e-4
    assert all(r.cache_info().misses == 1 for r in runs.values())


# -- 4. MADE (karpathy/pytorch-made): mask buffers rewritten between steps, connectivity-agnostic order ----------

def made(lib, F_, th):
    nn_ = lib

    class MaskedLinear(nn_.Linear):
        """ same as Linear except has a configurable mask on the weights """

        def __init__(self, in_features, out_features, bias=True):
            super().__init__(in_features, out_features, bias)
            self.register_buffer('mask', th.ones(out_features, in_features))

        def set_mask(self, mask):
            self.mask.data.copy_(th.from_numpy(mask.astype(np.uint8).T))

        def forward(self, input):
            return F_.linear(input, self.mask * self.weight, self.bias)

    class MADE(nn_.Module):
        def __init__(self, nin, hidden_sizes, nout, num_masks=1, natural_ordering=False):
            super().__init__()
            self.nin = nin
            self.nout = nout
            self.hidden_sizes = hidden_sizes
            assert self.nout % self.nin == 0, "nout must be integer multiple of nin"

            # define a simple MLP neural net
            self.net = []
            hs = [nin] + hidden_sizes + [nout]
            for h0, h1 in zip(hs, hs[1:]):
                self.net.extend([
                    MaskedLinear(h0, h1),
                    nn_.ReLU(),
                ])
            self.net.pop()  # pop the last ReLU for the output layer
            self.net = nn_.Sequential(*self.net)

            # seeds for orders/connectivities of the model ensemble
            self.natural_ordering = natural_ordering
            self.num_masks = num_masks
            self.seed = 0  # for cycling through num_masks orderings

            self.m = {}
            self.update_masks()  # builds the initial self.m connectivity
            # note, we could also precompute the masks and cache them, but this
            # could get memory expensive for large number of masks.

        def update_masks(self):
            if self.m and self.num_masks == 1:
                return  # only a single seed, skip for efficiency
            L = len(self.hidden_sizes)  # noqa: N806

            # fetch the next seed and construct a random stream
            rng = np.random.RandomState(self.seed)
            self.seed = (self.seed + 1) % self.num_masks

            # sample the order of the inputs and the connectivity of all neurons
            self.m[-1] = np.arange(self.nin) if self.natural_ordering else rng.permutation(self.nin)
            for l in range(L):  # noqa: E741
                self.m[l] = rng.randint(self.m[l - 1].min(), self.nin - 1, size=self.hidden_sizes[l])

            # construct the mask matrices
            masks = [self.m[l - 1][:, None] <= self.m[l][None, :] for l in range(L)]
            masks.append(self.m[L - 1][:, None] < self.m[-1][None, :])

            # handle the case where nout = nin * k, for integer k > 1
            if self.nout > self.nin:
                k = int(self.nout / self.nin)
                # replicate the mask across the other outputs
                masks[-1] = np.concatenate([masks[-1]] * k, axis=1)

            # set the masks in all MaskedLinear layers
            layers = [l for l in self.net.modules() if isinstance(l, MaskedLinear)]  # noqa: E741
            for l, m in zip(layers, masks):  # noqa: E741
                l.set_mask(m)

        def forward(self, x):
            return self.net(x)

    return MADE(6, [12, 12], 6, num_masks=2)


# set_mask's `from_numpy(mask.T)` is of a transposed array: Avalon's, without strides, is a copy and says so
# (tests/test_port_gaps.py); the copy is copied into the mask at once, so nothing depends on sharing
@pytest.mark.filterwarnings("ignore:from_numpy. the array is not C-contiguous:UserWarning")
@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_made_masks_resampled_in_place_between_compiled_steps_and_an_order_ensemble_at_test_time(mode):
    ours, theirs = pair(made, dtype=F32)
    ours.seed = theirs.seed = 1  # torch's built its masks from seed 0 and moved on, as ours did
    opt = av.optim.Adam(ours.parameters(), lr=1e-2, weight_decay=1e-4)
    topt = torch.optim.Adam(theirs.parameters(), lr=1e-2, weight_decay=1e-4)
    scheduler = av.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    tscheduler = torch.optim.lr_scheduler.StepLR(topt, step_size=2, gamma=0.1)

    def loss_fn(model, xb):
        xbhat = model(xb)
        return F.binary_cross_entropy_with_logits(xbhat, xb, reduction='sum') / xb.size(0)

    def train_step(model, opt, xb):
        loss, grads = av.value_and_grad(loss_fn)(model, xb)
        opt.step(grads)
        return loss
    run = compiled(train_step, mode)
    rng = np.random.default_rng(4)
    for step in range(5):
        xb = (rng.random((8, 6)) < 0.5).astype(np.float32)
        ours.update_masks()  # resample_every=1
        theirs.update_masks()
        tloss = TF.binary_cross_entropy_with_logits(theirs(T(xb)), T(xb), reduction='sum') / 8
        topt.zero_grad()
        tloss.backward()
        topt.step()
        tscheduler.step()
        with strict():
            loss = (run if step else train_step)(ours, opt, av.tensor(xb))
        scheduler.step()
        assert rel(loss, tloss) < 1e-5, step
        same_weights(ours, theirs, 1e-4)
    # the masks are buffers, read on each call; `self.seed`, a Python int cycling over num_masks=2, is part of the
    # signature: one trace per ordering
    assert run.cache_info().misses == 2

    # run_epoch('test'): the loss averaged over the ensemble of orderings, each from its mask
    xb = (rng.random((8, 6)) < 0.5).astype(np.float32)
    with av.no_grad(), torch.no_grad():
        xbhat, txbhat = av.zeros(8, 6), torch.zeros(8, 6)
        for _ in range(2):
            ours.update_masks()
            theirs.update_masks()
            xbhat += ours(av.tensor(xb))
            txbhat += theirs(T(xb))
        assert rel(xbhat / 2, txbhat / 2) < 1e-5


# -- regressions -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("container", ["tuple", "list", "dict"])
def test_gradients_of_several_models_at_once_step_the_optimizers_of_their_parts(container):
    """Found by the ArcFace/center-loss program: `av.value_and_grad(loss)((model, head, criterion), ...)` gave a
    plain dict ("0.weight", "1.weight", ...) that no optimizer over the parts' own parameters could take (its names
    are relative to each part: a KeyError), and zeros for a parameter the loss does not use, which torch leaves at
    `.grad` None and its optimizer (weight decay, momentum) leaves alone. Such gradients are a model's now: `Grads`,
    matched by identity, without entries for unused parameters."""
    def parts(lib, F_, th):
        return lib.ModuleList([lib.Linear(3, 4), lib.Linear(4, 2), lib.Linear(2, 2)])  # the last one unused
    ours, theirs = pair(parts, dtype=F32)
    a, b, unused = ours
    ta, tb, tunused = theirs

    def make(th, a, b):  # groups of two modules' parameters(): both named "weight", "bias", so known by position
        return th.optim.SGD([{'params': a.parameters()}, {'params': b.parameters(), 'lr': 0.05}], lr=0.1,
                            momentum=0.9, weight_decay=0.1)
    opt, topt = make(av, a, b), make(torch, ta, tb)
    wrap = {"tuple": tuple, "list": list, "dict": lambda ms: dict(zip("abc", ms))}[container]

    def loss_fn(nets, x):
        a, b, _ = nets.values() if isinstance(nets, dict) else nets
        return b(a(x).tanh()).pow(2).mean()

    rng = np.random.default_rng(0)
    for _ in range(3):
        x = randn(rng, 5, 3)
        topt.zero_grad()
        loss_fn((ta, tb, tunused), T(x)).backward()
        topt.step()
        loss, grads = av.value_and_grad(loss_fn)(wrap([a, b, unused]), av.tensor(x))
        assert not any(k.startswith(("2.", "c.")) for k in grads)
        opt.step(grads)
        same_weights(ours, theirs, 1e-5)
