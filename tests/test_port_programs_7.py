"""Round 5 of port QA, part B (after test_port_programs.py, _more, _3, _4 and _5): programs as timm,
torchvision and popular repositories write them in PyTorch, written once over `lib` (torch.nn or
avalon.nn), `F_` and `th` (torch or avalon), trained a few steps from torch's weights on random data in
float64 and compared with torch after every step (losses, parameters, buffers), eagerly and compiled, with
warnings as errors while tracing: a ConvNeXt (depthwise 7x7 convs, channels-last LayerNorm by permutes and
timm's LayerNorm2d, layer scale, stochastic depth, channels_last memory format, AdamW groups), an SE-ResNet
(squeeze-excitation gates, Nesterov SGD with decay only on conv/linear weights, CosineAnnealingWarmRestarts
stepped with fractional epochs, label smoothing, timm's ModelEmaV2 over the state dict in the compiled step and
ModelEmaV3's foreach lerp beside it) and an in-graph augmentation pipeline (per-sample flips, crops by pad +
unfold windows, by gather and airbench's masked copies, mixup, normalization buffers, an
affine_grid/grid_sample random affine) with the input's gradient through it.

Random draws are the one thing the two libraries cannot share (Avalon's streams are its own): stochastic
depth's keep decisions and the augmentations' parameters are drawn beforehand and given as inputs, and
the draws Avalon makes itself are checked for what they must be (each sample kept and scaled, or dropped).
The regressions at the end are what these programs found: copy_ into an integer buffer, a masked write
selecting nothing, torch._foreach_*, and torchvision's normalize in a compiled function (its constants
built from Python lists, and the Python `if` on them)."""
from __future__ import annotations

import copy

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


# -- 1. ConvNeXt (timm / facebookresearch): depthwise 7x7, channels-last LayerNorm, layer scale, drop path ---

DIMS, CNX_CLS = (8, 16), 5


def drop_path(x, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True, keep=None):
    """timm.layers.drop_path; `keep`: the per-sample Bernoulli(1 - drop_prob) draws, given (see the module's
    docstring), else drawn as timm does."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    if keep is None:
        random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    else:
        random_tensor = keep.view(shape).to(x.dtype)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


def convnext(lib, F_, th, drop_path_rate=0.3, ls_init_value=0.1, head_init_scale=0.5):
    class LayerNorm(lib.Module):  # facebookresearch/ConvNeXt's: channels_last by F.layer_norm, channels_first by hand
        def __init__(self, normalized_shape, eps=1e-6, data_format="channels_last"):
            super().__init__()
            self.weight = lib.Parameter(th.ones(normalized_shape))
            self.bias = lib.Parameter(th.zeros(normalized_shape))
            self.eps = eps
            self.data_format = data_format
            if self.data_format not in ["channels_last", "channels_first"]:
                raise NotImplementedError
            self.normalized_shape = (normalized_shape, )

        def forward(self, x):
            if self.data_format == "channels_last":
                return F_.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
            u = x.mean(1, keepdim=True)
            s = (x - u).pow(2).mean(1, keepdim=True)
            x = (x - u) / th.sqrt(s + self.eps)
            return self.weight[:, None, None] * x + self.bias[:, None, None]

    class LayerNorm2d(lib.LayerNorm):  # timm.layers.LayerNorm2d
        def __init__(self, num_channels, eps=1e-6, affine=True):
            super().__init__(num_channels, eps=eps, elementwise_affine=affine)

        def forward(self, x):
            x = x.permute(0, 2, 3, 1)
            x = F_.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
            return x.permute(0, 3, 1, 2)

    class DropPath(lib.Module):
        def __init__(self, drop_prob=0.0, scale_by_keep=True):
            super().__init__()
            self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

        def forward(self, x, keep=None):
            return drop_path(x, self.drop_prob, self.training, self.scale_by_keep, keep)

        def extra_repr(self):
            return f"drop_prob={round(self.drop_prob, 3):0.3f}"

    class Block(lib.Module):  # facebookresearch/ConvNeXt's Block: Linear pointwise convs on (N, H, W, C)
        def __init__(self, dim, drop_path=0.0):
            super().__init__()
            self.dwconv = lib.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
            self.norm = lib.LayerNorm(dim, eps=1e-6)
            self.pwconv1 = lib.Linear(dim, 4 * dim)
            self.act = lib.GELU()
            self.pwconv2 = lib.Linear(4 * dim, dim)
            self.gamma = lib.Parameter(ls_init_value * th.ones(dim), requires_grad=True)
            self.drop_path = DropPath(drop_path) if drop_path > 0.0 else lib.Identity()

        def forward(self, x, keep=None):
            input = x
            x = self.dwconv(x)
            x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
            x = self.norm(x)
            x = self.pwconv1(x)
            x = self.act(x)
            x = self.pwconv2(x)
            x = self.gamma * x
            x = x.permute(0, 3, 1, 2)
            return input + (self.drop_path(x, keep) if isinstance(self.drop_path, DropPath) else self.drop_path(x))

    class ConvNeXt(lib.Module):
        def __init__(self, depths=(1, 1)):
            super().__init__()
            self.stem = lib.Sequential(lib.Conv2d(3, DIMS[0], kernel_size=2, stride=2),
                                       LayerNorm(DIMS[0], eps=1e-6, data_format="channels_first"))
            self.downsample = lib.Sequential(LayerNorm2d(DIMS[0]), lib.Conv2d(DIMS[0], DIMS[1], kernel_size=2, stride=2))
            dp_rates = [x.tolist() for x in th.linspace(0, drop_path_rate, sum(depths)).split(depths)]
            self.stages = lib.ModuleList([lib.ModuleList([Block(DIMS[i], dp_rates[i][j]) for j in range(depths[i])])
                                          for i in range(len(depths))])
            self.norm = lib.LayerNorm(DIMS[-1], eps=1e-6)
            self.head = lib.Linear(DIMS[-1], CNX_CLS)
            self.apply(self._init_weights)
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

        def _init_weights(self, m):
            if isinstance(m, (lib.Conv2d, lib.Linear)):
                lib.init.trunc_normal_(m.weight, std=0.2)  # (the repositories' std=.02 and zero biases, larger
                lib.init.constant_(m.bias, 0.01)  # here: a tiny model's gradients otherwise near roundoff)

        def forward_features(self, x, keep=None):
            x = self.stem(x)
            k = 0
            for i, stage in enumerate(self.stages):
                if i:
                    x = self.downsample(x)
                for blk in stage:
                    x = blk(x, None if keep is None else keep[k])
                    k += 1
            return self.norm(x.mean([-2, -1]))  # global average pooling, (N, C, H, W) -> (N, C)

        def forward(self, x, keep=None):
            return self.head(self.forward_features(x, keep))

    return ConvNeXt()


def param_groups_weight_decay(model, weight_decay=1e-5, no_weight_decay_list=()):  # timm.optim
    no_weight_decay_list = set(no_weight_decay_list)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in no_weight_decay_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def cnx_loss(F_):
    def loss(model, x, y, keep):
        return F_.cross_entropy(model(x, keep), y)
    return loss


def test_convnext_depthwise_convs_channels_last_layer_norms_layer_scale_drop_path_and_adamw():
    ours, theirs = pair(convnext)
    theirs = theirs.to(memory_format=torch.channels_last)  # timm's train.py --channels-last
    assert ours.to(memory_format=av.channels_last) is ours
    assert [m.drop_prob for m in ours.modules() if type(m).__name__ == "DropPath"] == pytest.approx([0.3])
    opt = optim.AdamW(param_groups_weight_decay(ours, 0.05), lr=4e-3)
    topt = torch.optim.AdamW(param_groups_weight_decay(theirs, 0.05), lr=4e-3)
    rng = np.random.default_rng(0)
    step = train_step(cnx_loss(F))
    run = compiled(step, "numpy")
    for it in range(3):
        x, y = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, CNX_CLS, 4)
        keep = rng.random((2, 4)) < np.array([[1.0], [0.7]])  # each block's per-sample Bernoulli draws
        keep[1, :2] = [False, True]  # one sample's second block dropped, another's kept, whatever the draws
        tx = T(x).to(memory_format=torch.channels_last)
        topt.zero_grad()
        tl = cnx_loss(TF)(theirs, tx, T(y), T(keep))
        tl.backward()
        topt.step()
        with strict():
            loss = (run if it else step)(ours, opt, av.tensor(x).to(memory_format=av.channels_last), av.tensor(y),
                                         av.tensor(keep))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1  # new keep draws: the same trace
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((3, 3, 8, 8))
    with av.no_grad(), torch.no_grad():  # eval: drop path is the identity, the keep draws unused
        assert rel(ours(av.tensor(x)), theirs(T(x))) < 1e-12
        assert rel(ours(av.tensor(x), av.zeros(2, 3, dtype=av.bool)), theirs(T(x))) < 1e-12


def test_convnext_drop_path_drawn_in_train_mode_keeps_and_scales_or_drops_each_sample():
    """The draws Avalon makes itself (`x.new_empty(shape).bernoulli_(keep_prob)`, then `div_`): every
    sample's branch is kept and scaled by 1 / keep_prob, or dropped, as torch's output with that sample's
    draws given; compiled, each call draws anew."""
    ours, theirs = pair(lambda lib, F_, th: convnext(lib, F_, th, drop_path_rate=0.5))
    av.manual_seed(0)
    x = np.random.default_rng(1).standard_normal((6, 3, 8, 8))
    with av.no_grad(), torch.no_grad():
        blk, tblk = ours.stages[1][0], theirs.stages[1][0]
        assert blk.drop_path.drop_prob == pytest.approx(0.5)
        h = ours.downsample(ours.stem(av.tensor(x)))
        th_ = theirs.downsample(theirs.stem(T(x)))
        kept = tblk(th_, torch.ones(6, dtype=torch.bool)).numpy()
        dropped = tblk(th_, torch.zeros(6, dtype=torch.bool)).numpy()
        assert np.abs(kept - dropped).min(axis=(1, 2, 3)).max() > 1e-3  # the two are told apart per sample
        run = av.compile(lambda b, h: b(h), backend="numpy")
        seen = {"eager": set(), "compiled": set()}
        for how in ("eager", "eager", "compiled", "compiled", "compiled"):
            out = (blk(h) if how == "eager" else run(blk, h)).numpy()
            is_kept = [np.abs(o - k).max() < 1e-12 for o, k in zip(out, kept)]
            is_dropped = [np.abs(o - d).max() < 1e-12 for o, d in zip(out, dropped)]
            assert all(a != b for a, b in zip(is_kept, is_dropped)), (how, is_kept, is_dropped)
            seen[how].add(tuple(is_kept))
        assert all(len(v) > 1 for v in seen.values()), seen  # new draws on every call, compiled too
        assert run.cache_info().misses == 1


# -- 2. SE-ResNet (moskomule/senet.pytorch, timm's SEModule): squeeze-excitation BasicBlocks, Nesterov SGD -----
#       decaying only conv/linear weights, CosineAnnealingWarmRestarts per iteration, label smoothing, ModelEmaV2

SE_CLS = 5


def se_resnet(lib, F_, th, reduction=4):
    def conv3x3(in_planes, out_planes, stride=1):
        return lib.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)

    class SELayer(lib.Module):  # senet.pytorch: Linear excitation
        def __init__(self, channel, reduction=16):
            super().__init__()
            self.avg_pool = lib.AdaptiveAvgPool2d(1)
            self.fc = lib.Sequential(lib.Linear(channel, channel // reduction, bias=False), lib.ReLU(inplace=True),
                                     lib.Linear(channel // reduction, channel, bias=False), lib.Sigmoid())

        def forward(self, x):
            b, c, _, _ = x.size()
            y = self.avg_pool(x).view(b, c)
            y = self.fc(y).view(b, c, 1, 1)
            return x * y.expand_as(x)

    class SEModule(lib.Module):  # timm.layers.SEModule: 1x1 conv excitation, functional pooling
        def __init__(self, channels, rd_ratio=1.0 / 16):
            super().__init__()
            rd_channels = int(channels * rd_ratio)
            self.fc1 = lib.Conv2d(channels, rd_channels, kernel_size=1, bias=True)
            self.bn = lib.Identity()
            self.act = lib.ReLU(inplace=True)
            self.fc2 = lib.Conv2d(rd_channels, channels, kernel_size=1, bias=True)
            self.gate = lib.Sigmoid()

        def forward(self, x):
            x_se = F_.adaptive_avg_pool2d(x, 1)
            x_se = self.fc1(x_se)
            x_se = self.act(self.bn(x_se))
            x_se = self.fc2(x_se)
            return x * self.gate(x_se)

    class SEBasicBlock(lib.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None, se="linear"):
            super().__init__()
            self.conv1 = conv3x3(inplanes, planes, stride)
            self.bn1 = lib.BatchNorm2d(planes)
            self.relu = lib.ReLU(inplace=True)
            self.conv2 = conv3x3(planes, planes, 1)
            self.bn2 = lib.BatchNorm2d(planes)
            self.se = SELayer(planes, reduction) if se == "linear" else SEModule(planes, 1.0 / reduction)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x):
            residual = x
            out = self.conv1(x)
            out = self.bn1(out)
            out = self.relu(out)
            out = self.conv2(out)
            out = self.bn2(out)
            out = self.se(out)
            if self.downsample is not None:
                residual = self.downsample(x)
            out += residual
            out = self.relu(out)
            return out

    class SEResNet(lib.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = conv3x3(3, 8)
            self.bn1 = lib.BatchNorm2d(8)
            self.relu = lib.ReLU(inplace=True)
            self.layer1 = SEBasicBlock(8, 8, se="conv")
            self.layer2 = SEBasicBlock(8, 16, stride=2, downsample=lib.Sequential(
                lib.Conv2d(8, 16, kernel_size=1, stride=2, bias=False), lib.BatchNorm2d(16)))
            self.avgpool = lib.AdaptiveAvgPool2d((1, 1))
            self.fc = lib.Linear(16, SE_CLS)
            for m in self.modules():
                if isinstance(m, lib.Conv2d):
                    lib.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, lib.BatchNorm2d):
                    lib.init.constant_(m.weight, 1)
                    lib.init.constant_(m.bias, 0)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer2(self.layer1(x))
            x = self.avgpool(x)
            x = th.flatten(x, 1)
            return self.fc(x)

    return SEResNet()


def model_ema_v2(lib, th):
    class ModelEmaV2(lib.Module):  # timm.utils.ModelEmaV2
        def __init__(self, model, decay=0.9999, device=None):
            super().__init__()
            self.module = copy.deepcopy(model)
            self.module.eval()
            self.decay = decay
            self.device = device
            if self.device is not None:
                self.module.to(device=device)

        def _update(self, model, update_fn):
            with th.no_grad():
                for ema_v, model_v in zip(self.module.state_dict().values(), model.state_dict().values()):
                    if self.device is not None:
                        model_v = model_v.to(device=self.device)
                    ema_v.copy_(update_fn(ema_v, model_v))

        def update(self, model):
            self._update(model, update_fn=lambda e, m: self.decay * e + (1.0 - self.decay) * m)

        def set(self, model):
            self._update(model, update_fn=lambda e, m: m)

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    return ModelEmaV2


def model_ema_v3(lib, th):
    class ModelEmaV3(lib.Module):  # timm.utils.ModelEmaV3 (train.py's --model-ema): warmup decay, foreach lerp
        def __init__(self, model, decay=0.9999, min_decay=0.0, update_after_step=0, use_warmup=False,
                     warmup_gamma=1.0, warmup_power=2 / 3, device=None, foreach=True, exclude_buffers=False):
            super().__init__()
            self.module = copy.deepcopy(model)
            self.module.eval()
            self.decay = decay
            self.min_decay = min_decay
            self.update_after_step = update_after_step
            self.use_warmup = use_warmup
            self.warmup_gamma = warmup_gamma
            self.warmup_power = warmup_power
            self.foreach = foreach
            self.device = device
            self.exclude_buffers = exclude_buffers

        def get_decay(self, step=None):
            if step is None:
                return self.decay
            step = max(0, step - self.update_after_step - 1)
            if step <= 0:
                return 0.0
            if self.use_warmup:
                decay = 1 - (1 + step / self.warmup_gamma) ** -self.warmup_power
                decay = max(min(decay, self.decay), self.min_decay)
            else:
                decay = self.decay
            return decay

        @th.no_grad()
        def update(self, model, step=None):
            decay = self.get_decay(step)
            if self.exclude_buffers:
                self.apply_update_no_buffers_(model, decay)
            else:
                self.apply_update_(model, decay)

        def apply_update_(self, model, decay):
            if self.foreach:
                ema_lerp_values, model_lerp_values = [], []
                for ema_v, model_v in zip(self.module.state_dict().values(), model.state_dict().values()):
                    if ema_v.is_floating_point():
                        ema_lerp_values.append(ema_v)
                        model_lerp_values.append(model_v)
                    else:
                        ema_v.copy_(model_v)
                if hasattr(th, "_foreach_lerp_"):
                    th._foreach_lerp_(ema_lerp_values, model_lerp_values, weight=1.0 - decay)
                else:
                    th._foreach_mul_(ema_lerp_values, scalar=decay)
                    th._foreach_add_(ema_lerp_values, model_lerp_values, alpha=1.0 - decay)
            else:
                for ema_v, model_v in zip(self.module.state_dict().values(), model.state_dict().values()):
                    if ema_v.is_floating_point():
                        ema_v.lerp_(model_v.to(device=self.device), weight=1.0 - decay)
                    else:
                        ema_v.copy_(model_v.to(device=self.device))

        def apply_update_no_buffers_(self, model, decay):
            ema_params, model_params = tuple(self.module.parameters()), tuple(model.parameters())
            if self.foreach:
                th._foreach_mul_(ema_params, scalar=decay)
                th._foreach_add_(ema_params, model_params, alpha=1 - decay)
            else:
                for ema_p, model_p in zip(ema_params, model_params):
                    ema_p.lerp_(model_p.to(device=self.device), weight=1.0 - decay)
            for ema_b, model_b in zip(self.module.buffers(), model.buffers()):
                ema_b.copy_(model_b.to(device=self.device))

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    return ModelEmaV3


def se_setup(lib, optim_, model, weight_decay=5e-4):
    decay, no_decay = [], []
    for m in model.modules():
        if isinstance(m, (lib.Conv2d, lib.Linear)):
            decay.append(m.weight)
            if m.bias is not None:
                no_decay.append(m.bias)
        elif isinstance(m, lib.BatchNorm2d):
            no_decay.extend([m.weight, m.bias])
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    opt = optim_.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                     lr=0.1, momentum=0.9, nesterov=True)
    return opt, optim_.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=2, eta_min=1e-3)


def se_loss(lib):
    criterion = lib.CrossEntropyLoss(label_smoothing=0.1)

    def loss(model, x, y):
        return criterion(model(x), y)
    return loss


def se_step(model, ema, opt, x, y):
    loss, grads = av.value_and_grad(se_loss(nn))(model, x, y)
    opt.step(grads)
    ema.update(model)
    return loss


def test_se_resnet_nesterov_groups_warm_restarts_per_iteration_label_smoothing_and_model_ema():
    ours, theirs = pair(se_resnet)
    ema, tema = model_ema_v2(nn, av)(ours, decay=0.6), model_ema_v2(torch.nn, torch)(theirs, decay=0.6)
    v3 = [dict(decay=0.9, use_warmup=True), dict(decay=0.7, foreach=False), dict(decay=0.8, exclude_buffers=True)]
    emas3 = [(model_ema_v3(nn, av)(ours, **kw), model_ema_v3(torch.nn, torch)(theirs, **kw)) for kw in v3]
    (opt, sched), (topt, tsched) = se_setup(nn, optim, ours), se_setup(torch.nn, torch.optim, theirs)
    rng = np.random.default_rng(2)
    run = compiled(se_step, "numpy")
    iters = 2
    for epoch in range(2):
        for i in range(iters):
            x, y = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, SE_CLS, 4)
            topt.zero_grad()
            tl = se_loss(torch.nn)(theirs, T(x), T(y))
            tl.backward()
            topt.step()
            tema.update(theirs)
            tsched.step(epoch + i / iters)
            with strict():
                loss = (run if epoch or i else se_step)(ours, ema, opt, av.tensor(x), av.tensor(y))
            sched.step(epoch + i / iters)
            assert rel(loss, tl) < 1e-12, (epoch, i)
            assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in topt.param_groups], rel=1e-14)
            same_weights(ours, theirs, 1e-10)
            same_weights(ema, tema, 1e-10)  # buffers too: num_batches_tracked truncated by copy_ as torch's
            for e, te in emas3:  # eagerly, after the step, as timm's train loop: update(model, step=num_updates)
                e.update(ours, step=2 * epoch + i + 1)
                te.update(theirs, step=2 * epoch + i + 1)
                same_weights(e, te, 1e-10)
    assert run.cache_info().misses == 1
    assert not ema.module.training and ema.module.bn1.num_batches_tracked.item() == 2
    x = rng.standard_normal((3, 3, 8, 8))
    with av.no_grad(), torch.no_grad():
        assert rel(ema(av.tensor(x)), tema(T(x))) < 1e-11


# -- 3. in-graph augmentation as GPU pipelines write it (airbench, timm's Mixup, kornia/torchvision affine): ---
#       per-sample flips by where, crops by pad + unfold windows or gather, mixup, normalization buffers,
#       an affine_grid/grid_sample random affine; trained, and the input's gradient through it all

AUG_CLS, MEAN, STD = 4, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def batch_flip_lr(th, inputs, flip_mask):  # airbench: flip_mask = torch.rand(len(inputs)) < 0.5
    return th.where(flip_mask[:, None, None, None], inputs.flip(-1), inputs)


def batch_crop_unfold(th, F_, x, shifts, pad):
    """A per-sample crop of the padded batch: every window by unfold, each sample's picked by its offsets."""
    n, c, h, w = x.shape
    padded = F_.pad(x, (pad, pad, pad, pad), mode="reflect")
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (N, C, 2p + 1, 2p + 1, H, W)
    return windows[th.arange(n), :, shifts[:, 0], shifts[:, 1]]


def batch_crop_gather(th, F_, x, shifts, pad):
    """The same crop by two gathers of row and column indices."""
    n, c, h, w = x.shape
    padded = F_.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = shifts[:, 0:1] + th.arange(h)
    cols = shifts[:, 1:2] + th.arange(w)
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def batch_translate_roll(th, x, shifts):
    """A per-sample translation by roll (Python ints: eagerly, or a trace per set of shifts)."""
    return th.stack([xi.roll((sy, sx), dims=(1, 2)) for xi, (sy, sx) in zip(x, shifts)])


def batch_crop_airbench(th, images, crop_size, shifts):  # KellerJordan/cifar10-airbench, the shifts given
    r = (images.size(-1) - crop_size) // 2
    images_out = th.empty((len(images), 3, crop_size, crop_size), dtype=images.dtype)
    if r <= 2:
        for sy in range(-r, r + 1):
            for sx in range(-r, r + 1):
                mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
                images_out[mask] = images[mask, :, r + sy:r + sy + crop_size, r + sx:r + sx + crop_size]
    else:
        images_tmp = th.empty((len(images), 3, crop_size, crop_size + 2 * r), dtype=images.dtype)
        for s in range(-r, r + 1):
            mask = (shifts[:, 0] == s)
            images_tmp[mask] = images[mask, :, r + s:r + s + crop_size, :]
        for s in range(-r, r + 1):
            mask = (shifts[:, 1] == s)
            images_out[mask] = images_tmp[mask, :, :, r + s:r + s + crop_size]
    return images_out


def random_affine(th, F_, x, angle, translate, scale, padding_mode="zeros"):
    """A per-sample rotation, scale and translation (normalized coordinates) by affine_grid + grid_sample."""
    cos, sin = th.cos(angle) / scale, th.sin(angle) / scale
    theta = th.stack([th.stack([cos, -sin, translate[:, 0]], dim=-1),
                      th.stack([sin, cos, translate[:, 1]], dim=-1)], dim=1)
    grid = F_.affine_grid(theta, list(x.size()), align_corners=False)
    return F_.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def mix_batch(x, lam):  # timm's Mixup._mix_batch, in place, lambda drawn from Beta(alpha, alpha) beforehand
    x_flipped = x.flip(0).mul_(1.0 - lam)
    x.mul_(lam).add_(x_flipped)
    return x


def mixup_target(th, target, num_classes, lam=1.0, smoothing=0.0):  # timm.data.mixup
    def one_hot(x, on_value=1.0, off_value=0.0):
        x = x.long().view(-1, 1)
        return th.full((x.size()[0], num_classes), off_value).scatter_(1, x, on_value)

    off_value = smoothing / num_classes
    on_value = 1.0 - smoothing + off_value
    y1 = one_hot(target, on_value=on_value, off_value=off_value)
    y2 = one_hot(target.flip(0), on_value=on_value, off_value=off_value)
    return y1 * lam + y2 * (1.0 - lam)


def augmented_net(lib, F_, th, pad=1):
    class GPUAugment(lib.Module):
        def __init__(self, mean, std, crop="unfold"):
            super().__init__()
            self.register_buffer("mean", th.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", th.tensor(std).view(1, 3, 1, 1))
            self.crop = crop

        def forward(self, x, flip, shifts, angle, translate, scale):
            if self.training:
                x = batch_flip_lr(th, x, flip)
                crop = batch_crop_unfold if self.crop == "unfold" else batch_crop_gather
                x = crop(th, F_, x, shifts, pad)
                x = random_affine(th, F_, x, angle, translate, scale)
            return (x - self.mean) / self.std

    class Net(lib.Module):
        def __init__(self):
            super().__init__()
            self.augment = GPUAugment(MEAN, STD)
            self.backbone = lib.Sequential(lib.Conv2d(3, 4, 3, padding=1), lib.BatchNorm2d(4), lib.ReLU(),
                                           lib.AdaptiveAvgPool2d(1), lib.Flatten(), lib.Linear(4, AUG_CLS))

        def forward(self, x, *params, lam=None):
            x = self.augment(x, *params)
            if lam is not None:
                x = mix_batch(x, lam)
            return self.backbone(x)

    return Net()


def aug_loss(th, F_):
    def loss(model, x, y, lam, *params):
        target = mixup_target(th, y, AUG_CLS, lam, smoothing=0.1)
        return th.sum(-target * F_.log_softmax(model(x, *params, lam=lam), dim=-1), dim=-1).mean()  # SoftTargetCE
    return loss


def aug_params(rng, n, pad=1):
    return ((rng.random(n) < 0.5), rng.integers(0, 2 * pad + 1, (n, 2)), rng.uniform(-0.5, 0.5, n),
            rng.uniform(-0.2, 0.2, (n, 2)), rng.uniform(0.8, 1.2, n))


def test_augmentation_functions_and_their_gradients_match_torch_and_the_crops_agree():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 3, 5, 6))
    flip, shifts, angle, translate, scale = aug_params(rng, 3, pad=2)
    fns = [lambda th, F_, x, a, t, s, flip, shifts: batch_flip_lr(th, x, flip),
           lambda th, F_, x, a, t, s, flip, shifts: batch_crop_unfold(th, F_, x, shifts, 2),
           lambda th, F_, x, a, t, s, flip, shifts: batch_crop_gather(th, F_, x, shifts, 2),
           lambda th, F_, x, a, t, s, flip, shifts: batch_translate_roll(th, x, [(1, -2), (0, 3), (-1, 0)])]
    fns += [lambda th, F_, x, a, t, s, flip, shifts, p=p: random_affine(th, F_, x, a, t, s, p)
            for p in ("zeros", "border", "reflection")]
    w = rng.standard_normal(x.shape)
    for k, f in enumerate(fns):  # values, and the gradients w.r.t. the image and the affine's parameters
        ts = [T(a).requires_grad_() for a in (x, angle, translate, scale)]
        want = f(torch, TF, *ts, T(flip), T(shifts))
        (want * T(w)).sum().backward()
        assert rel(f(av, F, *map(arr, (x, angle, translate, scale, flip, shifts))), want) < 1e-14, k
        with strict():
            grads = av.grad(lambda w, *a, f=f: (f(av, F, *a) * w).sum(), argnums=(1, 2, 3, 4))(
                w, x, angle, translate, scale, flip, shifts)
        for g, t in zip(grads, ts):
            assert rel(g, t.grad if t.grad is not None else torch.zeros_like(t)) < 1e-13, k
    assert rel(fns[1](av, F, arr(x), None, None, None, arr(flip), arr(shifts)),  # the two crops are one crop
               fns[2](torch, TF, T(x), None, None, None, T(flip), T(shifts))) == 0
    run = av.compile(lambda x, *ps: random_affine(av, F, batch_crop_unfold(av, F, x, ps[0], 2), *ps[1:]),
                     backend="numpy")
    with strict():
        got = run(arr(x), arr(shifts), arr(angle), arr(translate), arr(scale))
    want = random_affine(torch, TF, batch_crop_unfold(torch, TF, T(x), T(shifts), 2), T(angle), T(translate), T(scale))
    assert rel(got, want) < 1e-14
    for size in (8, 10):  # airbench's two crops (r = 2 and 3): writes of masked reads, most masks empty
        images, r = rng.standard_normal((3, 3, size, size)), (size - 4) // 2
        offsets = rng.integers(-r, r + 1, (3, 2))
        want = batch_crop_airbench(torch, T(images), 4, T(offsets))
        assert rel(batch_crop_airbench(av, arr(images), 4, arr(offsets)), want) == 0, size
    with pytest.raises(IndexError, match="av.where"):  # compiled, a read x[mask] has no static shape: the error
        av.compile(lambda x, s: batch_crop_airbench(av, x, 4, s))(arr(images), arr(offsets))


def test_gpu_augmentation_pipeline_with_mixup_trained_and_the_input_gradient_through_it():
    ours, theirs = pair(augmented_net)
    assert ours.augment.mean.dtype == av.float64  # the buffers follow .to(float64) as torch's
    opt, topt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9), torch.optim.SGD(theirs.parameters(), lr=0.1,
                                                                                      momentum=0.9)
    rng = np.random.default_rng(4)
    step = train_step(aug_loss(av, F))
    run = compiled(step, "cpu")
    for it in range(3):
        x, y = rng.random((4, 3, 6, 6)), rng.integers(0, AUG_CLS, 4)
        lam, params = rng.beta(1.0, 1.0), aug_params(rng, 4)
        topt.zero_grad()
        tl = aug_loss(torch, TF)(theirs, T(x), T(y), T(lam), *map(T, params))
        tl.backward()
        topt.step()
        with strict():
            loss = (run if it else step)(ours, opt, av.tensor(x), av.tensor(y), arr(lam), *map(av.tensor, params))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1
    # an attack through the augmentations (expectation over transformation): d loss / d (input, angle, shift)
    for m in (ours, theirs):
        m.eval()
        m.augment.train()
        m.augment.crop = "gather"
    tx, tangle, ttrans = T(x).requires_grad_(), T(params[2]).requires_grad_(), T(params[3]).requires_grad_()
    tparams = (T(params[0]), T(params[1]), tangle, ttrans, T(params[4]))
    tl = aug_loss(torch, TF)(theirs, tx, T(y), T(lam), *tparams)
    tgrads = torch.autograd.grad(tl, (tx, tangle, ttrans))
    grad = av.compile(av.value_and_grad(aug_loss(av, F), argnums=(1, 6, 7)), backend="numpy")
    with strict():
        loss, grads = grad(ours, av.tensor(x), av.tensor(y), arr(lam), *map(av.tensor, params))
    assert rel(loss, tl) < 1e-12
    for g, tg in zip(grads, tgrads):
        assert rel(g, tg) < 1e-11
    same_weights(ours, theirs, 1e-10)  # eval: the batch norm's statistics untouched


# -- regressions: what the programs above found --------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_copy_converts_to_the_destination_dtype_as_torch(mode):
    """timm's ModelEmaV2 writes `decay * e + (1 - decay) * m` into every state-dict value with copy_,
    num_batches_tracked (int64) among them: copy_ refused a float source for an integer tensor (the
    in-place arithmetic rule, which copy_ does not follow); it converts, truncating toward zero."""
    src = np.array([0.4, 1.7, -1.5, -0.2, 2.0])

    def f(th, src, counts, ints, flags, floats):
        with th.no_grad():
            ints.copy_(src)
            flags.copy_(src)
            floats.copy_(counts)
            ints[1:3].copy_(src[:2] * 3)
        return ints, flags, floats

    want = f(torch, T(src), torch.tensor([1, 0, 3, 4, 5]), torch.zeros(5, dtype=torch.int64),
             torch.zeros(5, dtype=torch.bool), torch.zeros(5, dtype=torch.float32))
    with strict():
        got = compiled(lambda *a: f(av, *a), mode)(av.tensor(src), av.tensor([1, 0, 3, 4, 5]), av.zeros(5, dtype=av.int64),
                                                    av.zeros(5, dtype=av.bool), av.zeros(5, dtype=av.float32))
    for g, w in zip(got, want):
        assert g.dtype == getattr(av, str(w.dtype).split(".")[1]) and (g.numpy() == w.numpy()).all()


def test_a_masked_write_selecting_nothing_writes_nothing():
    """airbench's crop: `images_out[mask] = images[mask, :, a:b, c:d]` for an offset no sample drew (an
    all-false mask, zero rows) failed in the gather that spreads the rows."""
    x, m = av.tensor(np.arange(24.0).reshape(2, 3, 4)), av.tensor([False, False])
    y = av.ones(2, 3, 2, dtype=av.float64)
    y[m] = x[m, :, 1:3]
    assert (y.numpy() == 1).all()

    def write(y, m, v):
        y[m] = v
        return y * 2

    run = av.compile(write)  # a traced mask: no rows given, nothing written
    assert (run(av.ones(2, 3, 2, dtype=av.float64), m, av.zeros(0, 3, 2, dtype=av.float64)).numpy() == 2).all()


def test_foreach_functions_as_timms_model_ema_v3_calls_them():
    """timm's ModelEmaV3 interpolates with `torch._foreach_lerp_` (or `_foreach_mul_` and `_foreach_add_`),
    which were missing: each applies the in-place method to every tensor of the list, with torch's
    operand forms (a list of tensors or numbers, one tensor or number) and keywords."""
    rng = np.random.default_rng(30)
    a, b = [rng.standard_normal(3), rng.standard_normal((2, 2))], [rng.standard_normal(3), rng.standard_normal((2, 2))]
    calls = [("_foreach_lerp_", (1,), dict(weight=0.25)), ("_foreach_lerp_", (1, 0.5), {}),
             ("_foreach_mul_", (), dict(scalar=0.5)), ("_foreach_add_", (1,), dict(alpha=0.3)),
             ("_foreach_mul_", (1,), {}), ("_foreach_sub_", ([2.0, 3.0],), {}), ("_foreach_add_", (1.5,), {}),
             ("_foreach_div_", (), dict(scalars=[2.0, 4.0])), ("_foreach_copy_", (1,), {}), ("_foreach_zero_", (), {})]
    for lib, wrap in ((torch, T), (av, arr)):
        xs, ys = [wrap(v) for v in a], [wrap(v) for v in b]
        lib_out = []
        for name, args, kw in calls:
            getattr(lib, name)(xs, *[ys if x == 1 else x for x in args], **kw)
            lib_out.append([v.numpy().copy() for v in xs])
        if lib is torch:
            want = lib_out
    for (name, _, _), g, w in zip(calls, lib_out, want):
        assert all(np.abs(gi - wi).max() < 1e-15 for gi, wi in zip(g, w)), name
    with pytest.raises(ValueError, match="same number of tensors"):
        av._foreach_add_([av.ones(2)], [av.ones(2), av.ones(2)])
    run = av.compile(lambda xs, ys: (av._foreach_lerp_(xs, ys, 0.5), xs)[1])  # in place inside a trace too
    xs = [av.zeros(2), av.zeros(3)]
    out = run(xs, [av.ones(2), av.ones(3)])
    assert all((v.numpy() == 0.5).all() for v in xs + list(out))


def test_torch_jit_final_annotations_and_script_if_tracing_port():
    """timm's modules annotate `fused_attn: Final[bool]` (`from torch.jit import Final`) and `_fast_norm:
    torch.jit.Final[bool]`, evaluated when the class is made: avalon.jit had no Final."""
    from avalon.jit import Final

    class Attention(nn.Module):
        fused_attn: Final[bool]
        _fast_norm: av.jit.Final[bool]

    assert Attention.__annotations__ == {"fused_attn": "Final[bool]", "_fast_norm": "av.jit.Final[bool]"}
    assert av.jit.Final[bool] == torch.jit.Final[bool]
    assert av.jit.script_if_tracing(len) is len


def tv_normalize(th, tensor, mean, std, inplace=False):  # torchvision.transforms.functional.normalize, tensors
    if not inplace:
        tensor = tensor.clone()
    dtype = tensor.dtype
    mean = th.as_tensor(mean, dtype=dtype, device=tensor.device)
    std = th.as_tensor(std, dtype=dtype, device=tensor.device)
    if (std == 0).any():
        raise ValueError(f"std evaluated to zero after conversion to {dtype}, leading to division by zero.")
    if mean.ndim == 1:
        mean = mean.view(-1, 1, 1)
    if std.ndim == 1:
        std = std.view(-1, 1, 1)
    return tensor.sub_(mean).div_(std)


def test_torchvision_normalize_with_its_zero_std_check_in_a_compiled_pipeline():
    """torchvision's `as_tensor(mean)`/`as_tensor(std)` of Python lists are literal constants, kept in the
    compiled graph; its `if (std == 0).any()` on them is a value computed while tracing (no input in it)."""
    x = np.random.default_rng(31).random((2, 3, 4, 4))
    want = tv_normalize(torch, T(x), MEAN, STD)
    assert rel(tv_normalize(av, arr(x), MEAN, STD), want) == 0  # eagerly it ports
    run = av.compile(lambda x: tv_normalize(av, x, MEAN, STD), backend="numpy")
    with strict():
        for _ in range(2):
            assert rel(run(arr(x)), want) < 1e-15
    assert run.cache_info().misses == 1
