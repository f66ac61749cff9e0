"""Round 9w of port QA: programs written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random data and compared with torch after every step (losses, gradients,
parameters and buffers), the first step eagerly and the rest compiled.

Programs: meijieru/crnn.pytorch's CRNN for OCR (`convRelu` stacking an `nn.Sequential` by `add_module`, MaxPool2d
with the asymmetric `(2, 2), (2, 1), (0, 1)` kernel / stride / padding, BidirectionalLSTM over the width as time,
`F.log_softmax(output, dim=2)` over (T, N, C), the concatenated `torch.IntTensor` targets of strLabelConverter's
`encode`, `preds_size = torch.IntTensor([preds.size(0)] * batch_size)`, a summed zero_infinity CTC loss divided by the
batch size, Adadelta, `weights_init` by class name, and the greedy `decode` of `preds.max(2)`); video: SlowFast-lite
(PackPathway's `index_select` of `linspace(...).long()` frames, FuseFastToSlow's `(k, 1, 1)` lateral conv with
temporal stride alpha, torchvision's R(2+1)D `Conv2Plus1D` blocks of `(1, k, k)` and `(k, 1, 1)` Conv3d with
BatchNorm3d, the ResNetBasicHead's permute / projection / mean, construct_optimizer's `_NormBase` no-decay group, SGD
with nesterov and get_lr_at_epoch's linear warm-up into cosine written into `param_group["lr"]`) and
mit-han-lab/temporal-shift-module's TSM (TemporalShift wrapping a residual block's conv1: `view(n_batch, n_segment, c,
h, w)`, slices copied into `torch.zeros_like`, and a `torch.roll` variant; TSN's segment consensus; get_optim_policies'
`lr_mult` / `decay_mult` groups, one of them empty, and adjust_learning_rate's cosine writing `lr` and `weight_decay`
into every group; clip_grad_norm_); sgrvinod's Show, Attend and Tell (the encoder's AdaptiveAvgPool2d and permute,
soft attention with the f_beta sigmoid gate, the LSTMCell decoder over captions sorted by length with the
`batch_size_t` slices written into `torch.zeros` predictions and alphas, doubly stochastic attention regularization,
`pack_padded_sequence(...).data` for the loss, `p.grad.data.clamp_` clipping, an encoder and a decoder Adam); a
two-tower recommender (hash embeddings as `nn.EmbeddingBag(mode="sum", sparse=True)` with `per_sample_weights` from
learned importance weights, L2-normalized towers, in-batch negatives with the logQ correction of a streaming
frequency estimate kept in buffers, a learnable temperature clamped by `.data.clamp_`, SparseAdam for the sparse
embeddings and Adagrad for the rest); an attentive neural process (context / target split by `torch.randperm`,
the deterministic path's `nn.MultiheadAttention(batch_first=True)` cross-attention, the latent path's Normal
posterior and prior and `kl_divergence`, the decoder's `0.1 + 0.9 * softplus` sigma, `log_prob` of the targets,
Adam).

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`; clipping the `.grad`s is
clipping the gradient dict); the random draws made in the forward pass (the neural process's reparameterized latent)
are given. Show, Attend and Tell sorts by caption lengths and loops over `max(decode_lengths)` with the
`batch_size_t` slices, shapes that depend on the lengths' values: the compiled step gets the lengths as Python ints
(the `caplens.tolist()` of the loader's batch) and builds the dataset's `torch.LongTensor` from them, so a batch with
other lengths traces again (torch.compile specializes on them too). Not Avalon: sizes are small, dropout is 0, and
learning rates are chosen for a few steps.

Missing features found and added: `F.ctc_loss` refused concatenated (1-d) targets whose lengths are traced (CRNN's
IntTensor targets and lengths as inputs of the compiled step); an optimizer refused a parameter group with an empty
`params` list, which torch keeps (TSM's `first_conv_bias` policy of a bias-free backbone);
`torch.nn.modules.batchnorm._NormBase` was missing (SlowFast's construct_optimizer finds the norm layers by it);
`PackedSequence.data` and `.batch_sizes` were not available (Show, Attend and Tell's loss): they are torch's
interleaved layout wherever the lengths are known while tracing.
"""
from __future__ import annotations

import math

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


# -- 1. CRNN (meijieru/crnn.pytorch models/crnn.py, train.py's weights_init / trainBatch / val, utils.py's
#       strLabelConverter) -------------------------------------------------------------------------------------------

def crnn(lib, F_, th, imgH=32, nc=1, nclass=5, nh=6, leakyRelu=False):  # noqa: N803
    nn, F = lib, F_

    class BidirectionalLSTM(nn.Module):
        def __init__(self, nIn, nHidden, nOut):  # noqa: N803
            super(BidirectionalLSTM, self).__init__()  # noqa: UP008
            self.rnn = nn.LSTM(nIn, nHidden, bidirectional=True)
            self.embedding = nn.Linear(nHidden * 2, nOut)

        def forward(self, input):
            recurrent, _ = self.rnn(input)
            T, b, h = recurrent.size()  # noqa: N806
            t_rec = recurrent.view(T * b, h)
            output = self.embedding(t_rec)  # [T * b, nOut]
            output = output.view(T, b, -1)
            return output

    class CRNN(nn.Module):
        def __init__(self, imgH, nc, nclass, nh, n_rnn=2, leakyRelu=False):  # noqa: N803
            super(CRNN, self).__init__()  # noqa: UP008
            assert imgH % 16 == 0, 'imgH has to be a multiple of 16'
            ks = [3, 3, 3, 3, 3, 3, 2]
            ps = [1, 1, 1, 1, 1, 1, 0]
            ss = [1, 1, 1, 1, 1, 1, 1]
            nm = [4, 6, 8, 8, 8, 8, 8]  # ([64, 128, 256, 256, 512, 512, 512])
            cnn = nn.Sequential()

            def convRelu(i, batchNormalization=False):  # noqa: N802, N803
                nIn = nc if i == 0 else nm[i - 1]  # noqa: N806
                nOut = nm[i]  # noqa: N806
                cnn.add_module('conv{0}'.format(i), nn.Conv2d(nIn, nOut, ks[i], ss[i], ps[i]))  # noqa: UP030, UP032
                if batchNormalization:
                    cnn.add_module('batchnorm{0}'.format(i), nn.BatchNorm2d(nOut))  # noqa: UP030, UP032
                if leakyRelu:
                    cnn.add_module('relu{0}'.format(i), nn.LeakyReLU(0.2, inplace=True))  # noqa: UP030, UP032
                else:
                    cnn.add_module('relu{0}'.format(i), nn.ReLU(True))  # noqa: UP030, UP032

            convRelu(0)
            cnn.add_module('pooling{0}'.format(0), nn.MaxPool2d(2, 2))  # 64x16x64  # noqa: UP030, UP032
            convRelu(1)
            cnn.add_module('pooling{0}'.format(1), nn.MaxPool2d(2, 2))  # 128x8x32  # noqa: UP030, UP032
            convRelu(2, True)
            convRelu(3)
            cnn.add_module('pooling{0}'.format(2), nn.MaxPool2d((2, 2), (2, 1), (0, 1)))  # 256x4x16  # noqa: UP030, UP032
            convRelu(4, True)
            convRelu(5)
            cnn.add_module('pooling{0}'.format(3), nn.MaxPool2d((2, 2), (2, 1), (0, 1)))  # 512x2x16  # noqa: UP030, UP032
            convRelu(6, True)  # 512x1x16

            self.cnn = cnn
            self.rnn = nn.Sequential(
                BidirectionalLSTM(nm[-1], nh, nh),
                BidirectionalLSTM(nh, nh, nclass))

        def forward(self, input):
            # conv features
            conv = self.cnn(input)
            b, c, h, w = conv.size()
            assert h == 1, "the height of conv must be 1"
            conv = conv.squeeze(2)
            conv = conv.permute(2, 0, 1)  # [w, b, c]

            # rnn features
            output = self.rnn(conv)

            # add log_softmax to converge output
            output = F.log_softmax(output, dim=2)

            return output

    def weights_init(m):
        classname = m.__class__.__name__
        if classname.find('Conv') != -1:
            m.weight.data.normal_(0.0, 0.02)
        elif classname.find('BatchNorm') != -1:
            m.weight.data.normal_(1.0, 0.02)
            m.bias.data.fill_(0)

    model = CRNN(imgH, nc, nclass, nh, leakyRelu=leakyRelu)
    model.apply(weights_init)
    return model


class strLabelConverter:  # noqa: N801
    """Convert between str and label. Insert `blank` to the alphabet for CTC."""

    def __init__(self, th, alphabet, ignore_case=False):
        self.torch = th
        self._ignore_case = ignore_case
        if self._ignore_case:
            alphabet = alphabet.lower()
        self.alphabet = alphabet + '-'  # for `-1` index

        self.dict = {}
        for i, char in enumerate(alphabet):
            # NOTE: 0 is reserved for 'blank' required by wrap_ctc
            self.dict[char] = i + 1

    def encode(self, text):
        length = []
        result = []
        for item in text:
            length.append(len(item))
            for char in item:
                index = self.dict[char]
                result.append(index)
        text = result
        return (self.torch.IntTensor(text), self.torch.IntTensor(length))

    def decode(self, t, length, raw=False):
        if length.numel() == 1:
            length = length[0]
            assert t.numel() == length, "text with length: {} does not match declared length: {}".format(  # noqa: UP032
                t.numel(), length)
            if raw:
                return ''.join([self.alphabet[i - 1] for i in t])
            else:
                char_list = []
                for i in range(length):
                    if t[i] != 0 and (not (i > 0 and t[i - 1] == t[i])):
                        char_list.append(self.alphabet[t[i] - 1])
                return ''.join(char_list)
        else:
            # batch mode
            assert t.numel() == length.sum(), "texts with length: {} does not match declared length: {}".format(  # noqa: UP032
                t.numel(), length.sum())
            texts = []
            index = 0
            for i in range(length.numel()):
                l = length[i]  # noqa: E741
                texts.append(
                    self.decode(
                        t[index:index + l], self.torch.IntTensor([l]), raw=raw))
                index += l
            return texts


def test_crnn_asymmetric_pooling_bilstm_ctc_on_concatenated_int_targets_adadelta_and_greedy_decoding():
    model, tmodel = pair(crnn)
    # weights_init found the convs and batch norms by class name on both sides
    assert float(tmodel.cnn.batchnorm2.bias.detach().abs().sum()) == 0 and abs(float(tmodel.cnn.conv0.weight.detach().std()) - .02) < .01
    av.manual_seed(0)
    fresh = crnn(nn, F, av)
    assert np.all(fresh.cnn.batchnorm6.bias.numpy() == 0) and abs(fresh.cnn.conv3.weight.numpy().std() - .02) < .01
    optimizer = av.optim.Adadelta(model.parameters(), lr=1.0)
    toptimizer = torch.optim.Adadelta(tmodel.parameters(), lr=1.0)
    alphabet = "abcd"
    converter, tconverter = strLabelConverter(av, alphabet), strLabelConverter(torch, alphabet)

    def loss_fn(crnn, image, text, length):
        torch_, F_ = (torch, TF) if isinstance(crnn, torch.nn.Module) else (av, F)
        batch_size = image.size(0)
        preds = crnn(image)
        preds_size = torch_.IntTensor([preds.size(0)] * batch_size)
        cost = F_.ctc_loss(preds, text, preds_size, length, reduction='sum', zero_infinity=True) / batch_size
        return cost, preds

    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):  # T = 7 frames; the 5 repeated letters need 9: an infinite loss, zeroed
        words = ["".join(rng.choice(list(alphabet), n)) for n in rng.permutation([2, 3, 4])] + ["aaaaa"]
        text, length = converter.encode(words)
        ttext, tlength = tconverter.encode(words)
        assert text.dtype == av.int32 and np.array_equal(text.numpy(), ttext.numpy())
        batches.append((rng.standard_normal((4, 1, 32, 24)), text.numpy(), length.numpy()))
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches)

    # val(): greedy decoding of the argmax path, raw and collapsed
    image = batches[0][0]
    preds, tpreds = model(av.tensor(image)), tmodel(torch.tensor(image))
    preds_size, tpreds_size = av.IntTensor([preds.size(0)] * 4), torch.IntTensor([tpreds.size(0)] * 4)
    _, preds = preds.max(2)
    _, tpreds = tpreds.max(2)
    preds = preds.transpose(1, 0).contiguous().view(-1)
    tpreds = tpreds.transpose(1, 0).contiguous().view(-1)
    assert np.array_equal(preds.numpy(), tpreds.numpy())
    for raw in (True, False):
        sim_preds = converter.decode(preds.data, preds_size.data, raw=raw)
        assert sim_preds == tconverter.decode(tpreds.data, tpreds_size.data, raw=raw) and len(sim_preds) == 4
    assert converter.decode(av.tensor([1, 1, 0, 2, 2, 0, 0, 1]), av.IntTensor([8])) == "aba"


# -- 2. video: SlowFast-lite (facebookresearch/SlowFast slowfast/models/video_model_builder.py's FuseFastToSlow,
#       head_helper.py's ResNetBasicHead, optimizer.py's construct_optimizer / set_lr, lr_policy.py's
#       get_lr_at_epoch and lr_func_cosine; pytorchvideo's PackPathway) over torchvision's R(2+1)D blocks
#       (torchvision/models/video/resnet.py's Conv2Plus1D and BasicBlock); TSM (mit-han-lab/temporal-shift-module
#       ops/temporal_shift.py, ops/models.py's TSN consensus and get_optim_policies, main.py's adjust_learning_rate) --

def slowfast(lib, F_, th, alpha=4, beta_inv=4, num_classes=3, t=8, hw=8):
    torch, nn = th, lib

    class PackPathway(nn.Module):
        def __init__(self):
            super().__init__()

        def forward(self, frames):  # (B, C, T, H, W)
            fast_pathway = frames
            # Perform temporal sampling from the fast pathway.
            slow_pathway = torch.index_select(
                frames,
                2,
                torch.linspace(
                    0, frames.shape[2] - 1, frames.shape[2] // alpha
                ).long(),
            )
            frame_list = [slow_pathway, fast_pathway]
            return frame_list

    class Conv2Plus1D(nn.Sequential):
        def __init__(self, in_planes, out_planes, midplanes, stride=1, padding=1):
            super().__init__(
                nn.Conv3d(in_planes, midplanes, kernel_size=(1, 3, 3), stride=(1, stride, stride),
                          padding=(0, padding, padding), bias=False),
                nn.BatchNorm3d(midplanes),
                nn.ReLU(inplace=True),
                nn.Conv3d(midplanes, out_planes, kernel_size=(3, 1, 1), stride=(stride, 1, 1),
                          padding=(padding, 0, 0), bias=False),
            )

        @staticmethod
        def get_downsample_stride(stride):
            return stride, stride, stride

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, conv_builder, stride=1, downsample=None):
            midplanes = (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)

            super().__init__()
            self.conv1 = nn.Sequential(
                conv_builder(inplanes, planes, midplanes, stride), nn.BatchNorm3d(planes), nn.ReLU(inplace=True)
            )
            self.conv2 = nn.Sequential(conv_builder(planes, planes, midplanes), nn.BatchNorm3d(planes))
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x):
            residual = x

            out = self.conv1(x)
            out = self.conv2(out)
            if self.downsample is not None:
                residual = self.downsample(x)

            out += residual
            out = self.relu(out)

            return out

    class FuseFastToSlow(nn.Module):
        def __init__(self, dim_in, fusion_conv_channel_ratio, fusion_kernel, alpha, eps=1e-5, bn_mmt=0.1,
                     inplace_relu=True, norm_module=nn.BatchNorm3d):
            super(FuseFastToSlow, self).__init__()  # noqa: UP008
            self.conv_f2s = nn.Conv3d(
                dim_in,
                dim_in * fusion_conv_channel_ratio,
                kernel_size=[fusion_kernel, 1, 1],
                stride=[alpha, 1, 1],
                padding=[fusion_kernel // 2, 0, 0],
                bias=False,
            )
            self.bn = norm_module(num_features=dim_in * fusion_conv_channel_ratio, eps=eps, momentum=bn_mmt)
            self.relu = nn.ReLU(inplace_relu)

        def forward(self, x):
            x_s = x[0]
            x_f = x[1]
            fuse = self.conv_f2s(x_f)
            fuse = self.bn(fuse)
            fuse = self.relu(fuse)
            x_s_fuse = torch.cat([x_s, fuse], 1)
            return [x_s_fuse, x_f]

    class ResNetBasicHead(nn.Module):
        def __init__(self, dim_in, num_classes, pool_size, dropout_rate=0.0, act_func="softmax"):
            super(ResNetBasicHead, self).__init__()  # noqa: UP008
            self.num_pathways = len(pool_size)
            for pathway in range(self.num_pathways):
                avg_pool = nn.AvgPool3d(pool_size[pathway], stride=1)
                self.add_module("pathway{}_avgpool".format(pathway), avg_pool)  # noqa: UP032
            if dropout_rate > 0.0:
                self.dropout = nn.Dropout(dropout_rate)
            self.projection = nn.Linear(sum(dim_in), num_classes, bias=True)
            self.act = nn.Softmax(dim=4)

        def forward(self, inputs):
            assert len(inputs) == self.num_pathways, "Input tensor does not contain {} pathway".format(  # noqa: UP032
                self.num_pathways)
            pool_out = []
            for pathway in range(self.num_pathways):
                m = getattr(self, "pathway{}_avgpool".format(pathway))  # noqa: UP032
                pool_out.append(m(inputs[pathway]))
            x = torch.cat(pool_out, 1)
            # (N, C, T, H, W) -> (N, T, H, W, C).
            x = x.permute((0, 2, 3, 4, 1))
            if hasattr(self, "dropout"):
                x = self.dropout(x)
            x = self.projection(x)
            # Performs fully convlutional inference.
            if not self.training:
                x = self.act(x)
                x = x.mean([1, 2, 3])
            x = x.view(x.shape[0], -1)
            return x

    class SlowFastLite(nn.Module):
        def __init__(self, width=8):
            super().__init__()
            fast = width // beta_inv
            self.pack = PackPathway()
            self.s1_slow = nn.Sequential(nn.Conv3d(3, width, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False),
                                         nn.BatchNorm3d(width), nn.ReLU(inplace=True))
            self.s1_fast = nn.Sequential(nn.Conv3d(3, fast, (5, 3, 3), (1, 2, 2), (2, 1, 1), bias=False),
                                         nn.BatchNorm3d(fast), nn.ReLU(inplace=True))
            self.s1_fuse = FuseFastToSlow(fast, 2, 5, alpha)
            cin = width + 2 * fast
            stride = Conv2Plus1D.get_downsample_stride(1)
            self.s2_slow = BasicBlock(cin, width, Conv2Plus1D, downsample=nn.Sequential(
                nn.Conv3d(cin, width, kernel_size=1, stride=stride, bias=False), nn.BatchNorm3d(width)))
            self.s2_fast = BasicBlock(fast, fast, Conv2Plus1D)
            self.head = ResNetBasicHead([width, fast], num_classes, [[t // alpha, hw // 2, hw // 2],
                                                                     [t, hw // 2, hw // 2]])

        def forward(self, frames):
            x = self.pack(frames)
            x = [self.s1_slow(x[0]), self.s1_fast(x[1])]
            x = self.s1_fuse(x)
            x = [self.s2_slow(x[0]), self.s2_fast(x[1])]
            return self.head(x)

    return SlowFastLite()


class Cfg:  # the yacs config's SOLVER node
    BASE_LR, COSINE_END_LR, WARMUP_START_LR, WARMUP_EPOCHS, MAX_EPOCH = 0.05, 0.005, 0.01, 1.0, 3.0
    COSINE_AFTER_WARMUP, MOMENTUM, WEIGHT_DECAY, DAMPENING, NESTEROV, BN_WEIGHT_DECAY = True, 0.9, 1e-4, 0.0, True, 0.0


def lr_func_cosine(cfg, cur_epoch):
    offset = cfg.WARMUP_EPOCHS if cfg.COSINE_AFTER_WARMUP else 0.0
    assert cfg.COSINE_END_LR < cfg.BASE_LR
    return (
        cfg.COSINE_END_LR
        + (cfg.BASE_LR - cfg.COSINE_END_LR)
        * (math.cos(math.pi * (cur_epoch - offset) / (cfg.MAX_EPOCH - offset)) + 1.0)
        * 0.5
    )


def get_lr_at_epoch(cfg, cur_epoch):
    lr = lr_func_cosine(cfg, cur_epoch)
    # Perform warm up.
    if cur_epoch < cfg.WARMUP_EPOCHS:
        lr_start = cfg.WARMUP_START_LR
        lr_end = lr_func_cosine(cfg, cfg.WARMUP_EPOCHS)
        alpha = (lr_end - lr_start) / cfg.WARMUP_EPOCHS
        lr = cur_epoch * alpha + lr_start
    return lr


def set_lr(optimizer, new_lr):
    for param_group in optimizer.param_groups:
        param_group["lr"] = new_lr


def construct_optimizer(th, model, cfg):
    torch = th
    bn_parameters = []
    non_bn_parameters = []
    for name, m in model.named_modules():  # noqa: B007
        is_bn = isinstance(m, torch.nn.modules.batchnorm._NormBase)
        for p in m.parameters(recurse=False):
            if not p.requires_grad:
                continue
            if is_bn:
                bn_parameters.append(p)
            else:
                non_bn_parameters.append(p)
    optim_params = [
        {"params": bn_parameters, "weight_decay": cfg.BN_WEIGHT_DECAY},
        {"params": non_bn_parameters, "weight_decay": cfg.WEIGHT_DECAY},
    ]
    optim_params = [x for x in optim_params if len(x["params"])]
    # Check all parameters will be passed into optimizer.
    assert len(list(model.parameters())) == len(non_bn_parameters) + len(bn_parameters)
    return torch.optim.SGD(optim_params, lr=cfg.BASE_LR, momentum=cfg.MOMENTUM, weight_decay=cfg.WEIGHT_DECAY,
                           dampening=cfg.DAMPENING, nesterov=cfg.NESTEROV)


def test_slowfast_lite_r2plus1d_blocks_lateral_fusion_nesterov_sgd_and_warmup_cosine_set_lr():
    model, tmodel = pair(slowfast)
    optimizer, toptimizer = construct_optimizer(av, model, Cfg), construct_optimizer(torch, tmodel, Cfg)
    assert [len(g["params"]) for g in optimizer.param_groups] == [len(g["params"]) for g in toptimizer.param_groups]
    assert len(optimizer.param_groups[0]["params"]) == 2 * 12  # the twelve BatchNorm3d
    data_size = 2

    def loss_fn(model, frames, labels):
        F_ = TF if isinstance(model, torch.nn.Module) else F
        preds = model(frames)
        return F_.cross_entropy(preds, labels, reduction="mean"), preds

    def after(it):  # train_epoch: `lr = get_epoch_lr(cur_epoch + float(cur_iter) / data_size, cfg)` before a step
        lr = get_lr_at_epoch(Cfg, (it + 1) / data_size)
        set_lr(optimizer, lr)
        set_lr(toptimizer, lr)

    set_lr(optimizer, get_lr_at_epoch(Cfg, 0.0))
    set_lr(toptimizer, get_lr_at_epoch(Cfg, 0.0))
    rng = np.random.default_rng(1)
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn,
                     [(rng.standard_normal((2, 3, 8, 8, 8)), rng.integers(0, 3, 2)) for _ in range(4)], after=after,
                     tol=1e-6)
    model.eval()
    tmodel.eval()
    x = rng.standard_normal((2, 3, 8, 8, 8))
    assert rel(model(av.tensor(x)), tmodel(torch.tensor(x))) < 1e-10  # eval: the softmax head, running statistics


def tsm(lib, F_, th, num_segments=3, num_class=3, shift_div=4, roll=False):
    torch, nn = th, lib

    class TemporalShift(nn.Module):
        def __init__(self, net, n_segment=3, n_div=8, inplace=False):
            super(TemporalShift, self).__init__()  # noqa: UP008
            self.net = net
            self.n_segment = n_segment
            self.fold_div = n_div
            self.inplace = inplace

        def forward(self, x):
            x = (self.shift_roll if roll else self.shift)(x, self.n_segment, fold_div=self.fold_div,
                                                          inplace=self.inplace)
            return self.net(x)

        @staticmethod
        def shift(x, n_segment, fold_div=3, inplace=False):
            nt, c, h, w = x.size()
            n_batch = nt // n_segment
            x = x.view(n_batch, n_segment, c, h, w)

            fold = c // fold_div
            if inplace:
                raise NotImplementedError
            else:
                out = torch.zeros_like(x)
                out[:, :-1, :fold] = x[:, 1:, :fold]  # shift left
                out[:, 1:, fold: 2 * fold] = x[:, :-1, fold: 2 * fold]  # shift right
                out[:, :, 2 * fold:] = x[:, :, 2 * fold:]  # not shift

            return out.view(nt, c, h, w)

        @staticmethod
        def shift_roll(x, n_segment, fold_div=3, inplace=False):  # the cyclic variant
            nt, c, h, w = x.size()
            x = x.view(nt // n_segment, n_segment, c, h, w)
            fold = c // fold_div
            out = x.clone()
            out[:, :, :fold] = torch.roll(x[:, :, :fold], shifts=-1, dims=1)
            out[:, :, fold: 2 * fold] = torch.roll(x[:, :, fold: 2 * fold], 1, 1)
            return out.view(nt, c, h, w)

    class BasicBlock(nn.Module):  # torchvision's resnet BasicBlock
        expansion = 1

        def __init__(self, inplanes, planes):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)

        def forward(self, x):
            identity = x
            out = self.conv1(x)
            out = self.bn1(out)
            out = self.relu(out)
            out = self.conv2(out)
            out = self.bn2(out)
            out += identity
            out = self.relu(out)
            return out

    class ResNetLite(nn.Module):
        def __init__(self, width=8):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=2, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(width, num_class)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer1(x)
            x = torch.flatten(self.avgpool(x), 1)
            return self.fc(x)

    def make_temporal_shift(net, n_segment, n_div=8, place='blockres'):
        n_segment_list = [n_segment] * 4
        assert place == 'blockres'

        def make_block_temporal(stage, this_segment):
            blocks = list(stage.children())
            for i, b in enumerate(blocks):
                blocks[i].conv1 = TemporalShift(b.conv1, n_segment=this_segment, n_div=n_div)
            return nn.Sequential(*blocks)
        net.layer1 = make_block_temporal(net.layer1, n_segment_list[0])

    class TSN(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_segments = num_segments
            self.new_length = 1
            self.modality = 'RGB'
            self.reshape = True
            self.before_softmax = True
            self.base_model = ResNetLite()
            make_temporal_shift(self.base_model, num_segments, n_div=shift_div)

        def consensus(self, input):  # ConsensusModule('avg')
            return input.mean(dim=1, keepdim=True)

        def forward(self, input, no_reshape=False):
            sample_len = (3 if self.modality == "RGB" else 2) * self.new_length
            base_out = self.base_model(input.view((-1, sample_len) + input.size()[-2:]))
            if self.reshape:
                base_out = base_out.view((-1, self.num_segments) + base_out.size()[1:])
            output = self.consensus(base_out)
            return output.squeeze(1)

        def get_optim_policies(self):
            first_conv_weight, first_conv_bias, normal_weight, normal_bias, bn = [], [], [], [], []
            conv_cnt = 0
            for m in self.modules():
                if isinstance(m, torch.nn.Conv2d) or isinstance(m, torch.nn.Conv1d) or \
                        isinstance(m, torch.nn.Conv3d):
                    ps = list(m.parameters())
                    conv_cnt += 1
                    if conv_cnt == 1:
                        first_conv_weight.append(ps[0])
                        if len(ps) == 2:
                            first_conv_bias.append(ps[1])
                    else:
                        normal_weight.append(ps[0])
                        if len(ps) == 2:
                            normal_bias.append(ps[1])
                elif isinstance(m, torch.nn.Linear):
                    ps = list(m.parameters())
                    normal_weight.append(ps[0])
                    if len(ps) == 2:
                        normal_bias.append(ps[1])
                elif isinstance(m, torch.nn.BatchNorm2d):
                    bn.extend(list(m.parameters()))
                elif len(m._modules) == 0:
                    if len(list(m.parameters())) > 0:
                        raise ValueError("New atomic module type: {}. Need to give it a learning policy".format(  # noqa: UP032, E501
                            type(m)))
            return [
                {'params': first_conv_weight, 'lr_mult': 5 if self.modality == 'Flow' else 1, 'decay_mult': 1,
                 'name': "first_conv_weight"},
                {'params': first_conv_bias, 'lr_mult': 10 if self.modality == 'Flow' else 2, 'decay_mult': 0,
                 'name': "first_conv_bias"},
                {'params': normal_weight, 'lr_mult': 1, 'decay_mult': 1, 'name': "normal_weight"},
                {'params': normal_bias, 'lr_mult': 2, 'decay_mult': 0, 'name': "normal_bias"},
                {'params': bn, 'lr_mult': 1, 'decay_mult': 0, 'name': "BN scale/shift"},
            ]

    return TSN()


def adjust_learning_rate(optimizer, epoch, lr, epochs, weight_decay):  # main.py, lr_type == 'cos'
    lr = 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
    decay = weight_decay
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr * param_group['lr_mult']
        param_group['weight_decay'] = decay * param_group['decay_mult']


@pytest.mark.parametrize("roll", [False, True])
def test_tsm_temporal_shift_into_zeros_like_or_roll_tsn_consensus_and_lr_mult_decay_mult_policies(roll):
    model, tmodel = pair(lambda *a: tsm(*a, roll=roll))
    policies, tpolicies = model.get_optim_policies(), tmodel.get_optim_policies()
    assert [len(g["params"]) for g in policies] == [len(g["params"]) for g in tpolicies] == [1, 0, 5, 1, 10]
    optimizer = av.optim.SGD(policies, 0.05, momentum=0.9, weight_decay=5e-4)
    toptimizer = torch.optim.SGD(tpolicies, 0.05, momentum=0.9, weight_decay=5e-4)
    epochs = 4

    def loss_fn(model, input, target):
        F_ = TF if isinstance(model, torch.nn.Module) else F
        output = model(input)
        return F_.cross_entropy(output, target), output

    def after(it):
        for opt in (optimizer, toptimizer):
            adjust_learning_rate(opt, it + 1, 0.05, epochs, 5e-4)
        assert optimizer.param_groups[3]["lr"] == 2 * optimizer.param_groups[2]["lr"]

    for opt in (optimizer, toptimizer):
        adjust_learning_rate(opt, 0, 0.05, epochs, 5e-4)
    rng = np.random.default_rng(2)
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn,
                     [(rng.standard_normal((2, 3 * 3, 8, 8)), rng.integers(0, 3, 2)) for _ in range(epochs)],
                     clip=20, after=after, tol=1e-6)
    assert [g["weight_decay"] for g in optimizer.param_groups] == pytest.approx([5e-4, 0, 5e-4, 0, 0])


def close_grads(grads, model, tol, floor=1e-4):
    """same_grads, torch's sparse `.grad`s (a `sparse=True` embedding's) taken dense."""
    want = {k: (p.grad.to_dense() if p.grad.is_sparse else p.grad) for k, p in model.named_parameters()
            if p.grad is not None}
    assert sorted(grads) == sorted(want)
    for k, g in want.items():
        a, b = grads[k].numpy().astype(np.float64), g.numpy().astype(np.float64)
        assert np.abs(a - b).max() / max(np.abs(b).max(), floor) < tol, k


# -- 3. Show, Attend and Tell (sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning models.py's Encoder, Attention and
#       DecoderWithAttention; train.py's train() with the doubly stochastic regularization; utils.py's
#       clip_gradient and accuracy) ----------------------------------------------------------------------------------

def show_attend_tell(lib, F_, th, vocab_size=10, attention_dim=6, embed_dim=5, decoder_dim=7, encoder_dim=12,
                     encoded_image_size=2, dropout=0.0):
    torch, nn = th, lib
    device = "cpu"

    class Encoder(nn.Module):
        def __init__(self, encoded_image_size=14):
            super(Encoder, self).__init__()  # noqa: UP008
            self.enc_image_size = encoded_image_size

            resnet = nn.Sequential(  # a tiny torchvision.models.resnet101(pretrained=True), in its order
                nn.Conv2d(3, 6, 3, 2, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
                nn.Sequential(nn.Conv2d(6, 8, 3, 1, 1), nn.ReLU(inplace=True)),  # layer1
                nn.Sequential(nn.Conv2d(8, encoder_dim, 3, 2, 1), nn.ReLU(inplace=True)),  # layer2
                nn.AdaptiveAvgPool2d((1, 1)), nn.Linear(encoder_dim, 5))  # avgpool, fc

            # Remove linear and pool layers (since we're not doing classification)
            modules = list(resnet.children())[:-2]
            self.resnet = nn.Sequential(*modules)

            # Resize image to fixed size to allow input images of variable size
            self.adaptive_pool = nn.AdaptiveAvgPool2d((encoded_image_size, encoded_image_size))

            self.fine_tune()

        def forward(self, images):
            out = self.resnet(images)  # (batch_size, 2048, image_size/32, image_size/32)
            out = self.adaptive_pool(out)  # (batch_size, 2048, encoded_image_size, encoded_image_size)
            out = out.permute(0, 2, 3, 1)  # (batch_size, encoded_image_size, encoded_image_size, 2048)
            return out

        def fine_tune(self, fine_tune=True):
            for p in self.resnet.parameters():
                p.requires_grad = False
            # If fine-tuning, only fine-tune convolutional blocks 2 through 4
            for c in list(self.resnet.children())[5:]:
                for p in c.parameters():
                    p.requires_grad = fine_tune

    class Attention(nn.Module):
        def __init__(self, encoder_dim, decoder_dim, attention_dim):
            super(Attention, self).__init__()  # noqa: UP008
            self.encoder_att = nn.Linear(encoder_dim, attention_dim)  # linear layer to transform encoded image
            self.decoder_att = nn.Linear(decoder_dim, attention_dim)  # linear layer to transform decoder's output
            self.full_att = nn.Linear(attention_dim, 1)  # linear layer to calculate values to be softmax-ed
            self.relu = nn.ReLU()
            self.softmax = nn.Softmax(dim=1)  # softmax layer to calculate weights

        def forward(self, encoder_out, decoder_hidden):
            att1 = self.encoder_att(encoder_out)  # (batch_size, num_pixels, attention_dim)
            att2 = self.decoder_att(decoder_hidden)  # (batch_size, attention_dim)
            att = self.full_att(self.relu(att1 + att2.unsqueeze(1))).squeeze(2)  # (batch_size, num_pixels)
            alpha = self.softmax(att)  # (batch_size, num_pixels)
            attention_weighted_encoding = (encoder_out * alpha.unsqueeze(2)).sum(dim=1)  # (batch_size, encoder_dim)

            return attention_weighted_encoding, alpha

    class DecoderWithAttention(nn.Module):
        def __init__(self, attention_dim, embed_dim, decoder_dim, vocab_size, encoder_dim=2048, dropout=0.5):
            super(DecoderWithAttention, self).__init__()  # noqa: UP008

            self.encoder_dim = encoder_dim
            self.attention_dim = attention_dim
            self.embed_dim = embed_dim
            self.decoder_dim = decoder_dim
            self.vocab_size = vocab_size
            self.dropout = dropout

            self.attention = Attention(encoder_dim, decoder_dim, attention_dim)  # attention network

            self.embedding = nn.Embedding(vocab_size, embed_dim)  # embedding layer
            self.dropout = nn.Dropout(p=self.dropout)
            self.decode_step = nn.LSTMCell(embed_dim + encoder_dim, decoder_dim, bias=True)  # decoding LSTMCell
            self.init_h = nn.Linear(encoder_dim, decoder_dim)  # linear layer to find initial hidden state of LSTMCell
            self.init_c = nn.Linear(encoder_dim, decoder_dim)  # linear layer to find initial cell state of LSTMCell
            self.f_beta = nn.Linear(decoder_dim, encoder_dim)  # linear layer to create a sigmoid-activated gate
            self.sigmoid = nn.Sigmoid()
            self.fc = nn.Linear(decoder_dim, vocab_size)  # linear layer to find scores over vocabulary
            self.init_weights()  # initialize some layers with the uniform distribution

        def init_weights(self):
            self.embedding.weight.data.uniform_(-0.1, 0.1)
            self.fc.bias.data.fill_(0)
            self.fc.weight.data.uniform_(-0.1, 0.1)

        def init_hidden_state(self, encoder_out):
            mean_encoder_out = encoder_out.mean(dim=1)
            h = self.init_h(mean_encoder_out)  # (batch_size, decoder_dim)
            c = self.init_c(mean_encoder_out)
            return h, c

        def forward(self, encoder_out, encoded_captions, caption_lengths):
            batch_size = encoder_out.size(0)
            encoder_dim = encoder_out.size(-1)
            vocab_size = self.vocab_size

            # Flatten image
            encoder_out = encoder_out.view(batch_size, -1, encoder_dim)  # (batch_size, num_pixels, encoder_dim)
            num_pixels = encoder_out.size(1)

            # Sort input data by decreasing lengths; why? apparent below
            caption_lengths, sort_ind = caption_lengths.squeeze(1).sort(dim=0, descending=True)
            encoder_out = encoder_out[sort_ind]
            encoded_captions = encoded_captions[sort_ind]

            # Embedding
            embeddings = self.embedding(encoded_captions)  # (batch_size, max_caption_length, embed_dim)

            # Initialize LSTM state
            h, c = self.init_hidden_state(encoder_out)  # (batch_size, decoder_dim)

            # We won't decode at the <end> position, since we've finished generating as soon as we generate <end>
            # So, decoding lengths are actual lengths - 1
            decode_lengths = (caption_lengths - 1).tolist()

            # Create tensors to hold word predicion scores and alphas
            predictions = torch.zeros(batch_size, max(decode_lengths), vocab_size).to(device)
            alphas = torch.zeros(batch_size, max(decode_lengths), num_pixels).to(device)

            # At each time-step, decode by
            # attention-weighing the encoder's output based on the decoder's previous hidden state output
            # then generate a new word in the decoder with the previous word and the attention weighted encoding
            for t in range(max(decode_lengths)):
                batch_size_t = sum([l > t for l in decode_lengths])
                attention_weighted_encoding, alpha = self.attention(encoder_out[:batch_size_t],
                                                                    h[:batch_size_t])
                gate = self.sigmoid(self.f_beta(h[:batch_size_t]))  # gating scalar, (batch_size_t, encoder_dim)
                attention_weighted_encoding = gate * attention_weighted_encoding
                h, c = self.decode_step(
                    torch.cat([embeddings[:batch_size_t, t, :], attention_weighted_encoding], dim=1),
                    (h[:batch_size_t], c[:batch_size_t]))  # (batch_size_t, decoder_dim)
                preds = self.fc(self.dropout(h))  # (batch_size_t, vocab_size)
                predictions[:batch_size_t, t, :] = preds
                alphas[:batch_size_t, t, :] = alpha

            return predictions, encoded_captions, decode_lengths, alphas, sort_ind

    class Captioner(nn.Module):  # train.py's encoder and decoder, side by side
        def __init__(self):
            super().__init__()
            self.encoder = Encoder(encoded_image_size)
            self.decoder = DecoderWithAttention(attention_dim=attention_dim, embed_dim=embed_dim,
                                                decoder_dim=decoder_dim, vocab_size=vocab_size,
                                                encoder_dim=encoder_dim, dropout=dropout)

    return Captioner()


def clip_gradient(optimizer, grad_clip):  # utils.py: the `.grad`s of an optimizer's parameters, clamped in place
    for group in optimizer.param_groups:
        for param in group['params']:
            if param.grad is not None:
                param.grad.data.clamp_(-grad_clip, grad_clip)


def accuracy(scores, targets, k):
    batch_size = targets.size(0)
    _, ind = scores.topk(k, 1, True, True)
    correct = ind.eq(targets.view(-1, 1).expand_as(ind))
    correct_total = correct.view(-1).float().sum()  # 0D tensor
    return correct_total.item() * (100.0 / batch_size)


def caption_loss(lib, alpha_c=1.):
    pack_padded_sequence = lib.utils.rnn.pack_padded_sequence

    def loss_fn(encoder, decoder, imgs, caps, caplens):
        torch_ = torch if isinstance(encoder, torch.nn.Module) else av
        criterion = lib.CrossEntropyLoss()
        caplens = torch_.LongTensor(caplens)  # the Dataset's `torch.LongTensor([self.caplens[i]])`, collated
        # Forward prop.
        imgs = encoder(imgs)
        scores, caps_sorted, decode_lengths, alphas, sort_ind = decoder(imgs, caps, caplens)

        # Since we decoded starting with <start>, the targets are all words after <start>, up to <end>
        targets = caps_sorted[:, 1:]

        # Remove timesteps that we didn't decode at, or are pads
        # pack_padded_sequence is an easy trick to do this
        scores = pack_padded_sequence(scores, decode_lengths, batch_first=True).data
        targets = pack_padded_sequence(targets, decode_lengths, batch_first=True).data

        # Calculate loss
        loss = criterion(scores, targets)

        # Add doubly stochastic attention regularization
        loss += alpha_c * ((1. - alphas.sum(dim=1)) ** 2).mean()
        return loss, (scores, targets)
    return loss_fn


def test_show_attend_tell_sorted_captions_batch_size_t_slices_doubly_stochastic_attention_and_clamped_grads():
    model, tmodel = pair(show_attend_tell)
    frozen = [k for k, p in tmodel.named_parameters() if not p.requires_grad]
    assert frozen == [k for k, p in model.named_parameters() if not p.requires_grad] == \
        ["encoder.resnet.0.weight", "encoder.resnet.1.weight", "encoder.resnet.1.bias", "encoder.resnet.4.0.weight",
         "encoder.resnet.4.0.bias"]
    grad_clip = 0.05

    def optimizers(mod, enc, dec):
        decoder_optimizer = mod.Adam(params=filter(lambda p: p.requires_grad, dec.parameters()), lr=4e-3)
        encoder_optimizer = mod.Adam(params=filter(lambda p: p.requires_grad, enc.parameters()), lr=1e-3)
        return encoder_optimizer, decoder_optimizer

    enc_opt, dec_opt = optimizers(av.optim, model.encoder, model.decoder)
    tenc_opt, tdec_opt = optimizers(torch.optim, tmodel.encoder, tmodel.decoder)
    loss_fn, tloss_fn = caption_loss(nn), caption_loss(torch.nn)

    def train_step(encoder, decoder, encoder_optimizer, decoder_optimizer, imgs, caps, caplens):
        (loss, (scores, targets)), (genc, gdec) = av.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            encoder, decoder, imgs, caps, caplens)
        for g in gdec.values():  # clip_gradient(decoder_optimizer, grad_clip)
            g.data.clamp_(-grad_clip, grad_clip)
        nn.utils.clip_grad_value_(genc.values(), grad_clip)  # (the same, as torch.nn.utils has it)
        decoder_optimizer.step(gdec)
        encoder_optimizer.step(genc)
        return loss, scores, targets, genc, gdec

    run = av.compile(train_step, backend="numpy")
    rng = np.random.default_rng(3)
    caplens = [[6], [4], [5], [3]]  # <start> w1 ... <end>, then <pad>s: decode lengths 5, 4, 3, 2 once sorted
    for it in range(3):
        imgs = rng.standard_normal((4, 3, 24, 24))
        caps = np.zeros((4, 6), np.int64)
        for i, (n,) in enumerate(caplens):
            caps[i, 0], caps[i, 1:n - 1], caps[i, n - 1] = 1, rng.integers(3, 10, n - 2), 2
        tloss, (tscores, ttargets) = tloss_fn(tmodel.encoder, tmodel.decoder, torch.tensor(imgs), torch.tensor(caps),
                                              caplens)
        tdec_opt.zero_grad()
        tenc_opt.zero_grad()
        tloss.backward()
        clip_gradient(tdec_opt, grad_clip)
        clip_gradient(tenc_opt, grad_clip)
        tdec_opt.step()
        tenc_opt.step()
        with strict():
            loss, scores, targets, genc, gdec = (run if it else train_step)(
                model.encoder, model.decoder, enc_opt, dec_opt, av.tensor(imgs), av.tensor(caps), caplens)
        assert rel(loss, tloss) < 1e-6 and rel(scores, tscores) < 1e-6 and loss.dtype == av.float32, it
        assert scores.shape == (14, 10) and np.array_equal(targets.numpy(), ttargets.numpy())
        assert accuracy(scores, targets, 5) == accuracy(tscores, ttargets, 5)
        assert max(float(g.abs().max()) for g in gdec.values()) == grad_clip  # some clamped
        # (the scores are float32: `torch.zeros(...)` holds the predictions in the default dtype; full_att's bias
        # shifts every pixel's score, which the softmax removes: a zero gradient, float32 roundoff on both sides
        # that Adam makes lr-sized steps of, harmless to everything else)
        same_grads(genc, tmodel.encoder, 1e-5)
        same_grads(gdec, tmodel.decoder, 1e-5, skip=("attention.full_att.bias",))
        assert abs(float(gdec["attention.full_att.bias"])) < 1e-6
        sd = tmodel.state_dict()
        for k, v in model.state_dict().items():  # the frozen batch norm's running statistics too
            if k != "decoder.attention.full_att.bias":
                assert rel(v, sd[k]) < 1e-5, (it, k)
    assert run.cache_info().misses == 1


# -- 4. a two-tower retrieval model (Yi et al. 2019, "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
#       Recommendations": in-batch softmax with the logQ correction from the streaming frequency estimate, L2-normalized
#       towers and a temperature; Svenstrup et al.'s hash embeddings with importance weights as an EmbeddingBag's
#       per_sample_weights; CLIP's `.data.clamp_` on the learnable scale; DLRM / TorchRec style sparse embeddings under
#       SparseAdam and Adagrad for the dense part) ----------------------------------------------------------------------

def two_tower(lib, F_, th, num_users=11, num_items=13, buckets=7, num_hashes=2, dim=6, n_dense=3, out=5,
              slots=17, alpha=0.25):
    torch, nn, F = th, lib, F_

    class HashEmbedding(nn.Module):
        """Each id's vector is sum_i p_i E[h_i(id)]: `num_hashes` hashed rows of a shared table weighted by the id's
        own learned importance parameters."""

        def __init__(self, num_ids, buckets, dim, num_hashes):
            super().__init__()
            self.buckets = buckets
            self.shared = nn.EmbeddingBag(buckets, dim, mode="sum", sparse=True)
            self.importance = nn.Embedding(num_ids, num_hashes, sparse=True)
            self.register_buffer("seeds", torch.tensor([[7, 13, 31][:num_hashes]]), persistent=False)
            self.register_buffer("offsets", torch.tensor([[3, 5, 1][:num_hashes]]), persistent=False)
            nn.init.normal_(self.shared.weight, std=0.1)
            nn.init.ones_(self.importance.weight)

        def forward(self, ids):
            hashed = (ids.unsqueeze(-1) * self.seeds + self.offsets) % self.buckets  # (B, num_hashes)
            return self.shared(hashed, per_sample_weights=self.importance(ids))

    class TwoTower(nn.Module):
        def __init__(self):
            super().__init__()
            self.user_emb = HashEmbedding(num_users, buckets, dim, num_hashes)
            self.item_emb = HashEmbedding(num_items, buckets, dim, num_hashes)
            self.user_tower = nn.Sequential(nn.Linear(dim + n_dense, 8), nn.ReLU(), nn.Linear(8, out))
            self.item_tower = nn.Sequential(nn.Linear(dim, 8), nn.ReLU(), nn.Linear(8, out))
            self.temperature = nn.Parameter(torch.tensor(0.1))
            # the streaming frequency estimate (Algorithm 2): the step each slot was last seen and its average gap
            self.register_buffer("step", torch.zeros((), dtype=torch.long))
            self.register_buffer("last_seen", torch.zeros(slots))
            self.register_buffer("gap", torch.full((slots,), 100.0))

        @torch.no_grad()
        def update_frequency(self, item_ids):
            self.step += 1
            h = item_ids % slots
            self.gap[h] = (1 - alpha) * self.gap[h] + alpha * (self.step - self.last_seen[h])
            self.last_seen[h] = self.step.to(self.last_seen.dtype)
            return 1.0 / self.gap[h]  # the estimated sampling probability of each item in the batch

        def forward(self, user_ids, user_dense, item_ids):
            u = self.user_tower(torch.cat([self.user_emb(user_ids), user_dense], dim=1))
            v = self.item_tower(self.item_emb(item_ids))
            u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
            q = self.update_frequency(item_ids)
            logits = torch.matmul(u, v.t()) / self.temperature
            logits = logits - torch.log(q)[None, :]  # the logQ correction of in-batch negatives
            labels = torch.arange(logits.size(0), device=logits.device)
            return F.cross_entropy(logits, labels), logits

    return TwoTower()


def recommender_optimizers(optim, model):
    sparse = [p for n, p in model.named_parameters() if "_emb." in n]
    dense = [p for n, p in model.named_parameters() if "_emb." not in n]
    return optim.SparseAdam(sparse, lr=0.05), optim.Adagrad(dense, lr=0.05, initial_accumulator_value=0.1)


def test_two_tower_hash_embedding_bags_in_batch_negatives_logq_clamped_temperature_sparse_adam_and_adagrad():
    model, tmodel = pair(two_tower)
    assert tmodel.user_emb.shared.sparse and model.user_emb.shared.sparse
    sparse_opt, dense_opt = recommender_optimizers(av.optim, model)
    tsparse_opt, tdense_opt = recommender_optimizers(torch.optim, tmodel)

    def loss_fn(model, user_ids, user_dense, item_ids):
        return model(user_ids, user_dense, item_ids)

    def train_step(model, sparse_opt, dense_opt, user_ids, user_dense, item_ids):
        (loss, logits), grads = av.value_and_grad(loss_fn, has_aux=True)(model, user_ids, user_dense, item_ids)
        sparse_opt.step(grads)
        dense_opt.step(grads)
        model.temperature.data.clamp_(min=0.07, max=0.12)
        return loss, logits, grads

    run = av.compile(train_step, backend="numpy")
    rng = np.random.default_rng(4)
    temps = []
    for it in range(4):
        user_ids, item_ids = rng.integers(0, 11, 5), rng.permutation(13)[:5]  # distinct items in a batch
        user_dense = rng.standard_normal((5, 3))
        tloss, tlogits = loss_fn(tmodel, *map(torch.tensor, (user_ids, user_dense, item_ids)))
        tsparse_opt.zero_grad()
        tdense_opt.zero_grad()
        tloss.backward()
        assert tmodel.item_emb.shared.weight.grad.is_sparse
        tsparse_opt.step()
        tdense_opt.step()
        tmodel.temperature.data.clamp_(min=0.07, max=0.12)
        with strict():
            loss, logits, grads = (run if it else train_step)(model, sparse_opt, dense_opt,
                                                              *map(av.tensor, (user_ids, user_dense, item_ids)))
        assert rel(loss, tloss) < 1e-10 and rel(logits, tlogits) < 1e-10, it
        close_grads(grads, tmodel, 1e-8)
        same_weights(model, tmodel, 1e-8)
        temps.append(float(model.temperature))
    assert run.cache_info().misses == 1
    assert 0.07 in temps or 0.12 in temps  # the clamp bit
    assert int(model.step) == 4 and model.gap.numpy().min() < 100


# -- 5. an attentive neural process (deepmind/neural-processes attentive_neural_process.ipynb's LatentEncoder,
#       DeterministicEncoder with multihead cross-attention, Decoder and LatentModel, as PyTorch ports write them with
#       torch.distributions; EmilienDupont/neural-processes' context_target_split by random locations) ----------------

def attentive_np(lib, F_, th, x_dim=1, y_dim=1, hidden=8, latent=4, heads=2):
    torch, nn, F = th, lib, F_
    Normal, kl_divergence = torch.distributions.Normal, torch.distributions.kl_divergence  # noqa: N806

    def batch_mlp(sizes):
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    class LatentEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = batch_mlp([x_dim + y_dim, hidden, hidden])
            self.penultimate = nn.Linear(hidden, (hidden + latent) // 2)
            self.mean = nn.Linear((hidden + latent) // 2, latent)
            self.log_sigma = nn.Linear((hidden + latent) // 2, latent)

        def forward(self, x, y):
            hidden_ = self.mlp(torch.cat([x, y], dim=-1)).mean(dim=1)  # aggregator: the mean over points
            hidden_ = torch.relu(self.penultimate(hidden_))
            mu = self.mean(hidden_)
            log_sigma = self.log_sigma(hidden_)
            sigma = 0.1 + 0.9 * torch.sigmoid(log_sigma)  # bounded std
            return Normal(loc=mu, scale=sigma)

    class DeterministicEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = batch_mlp([x_dim + y_dim, hidden, hidden])
            self.query_proj = batch_mlp([x_dim, hidden])  # the "mlp" rep of the keys and queries
            self.key_proj = batch_mlp([x_dim, hidden])
            self.cross_attention = nn.MultiheadAttention(hidden, heads, bias=False, batch_first=True)

        def forward(self, context_x, context_y, target_x):
            r = self.mlp(torch.cat([context_x, context_y], dim=-1))
            q, k = self.query_proj(target_x), self.key_proj(context_x)
            r, _ = self.cross_attention(q, k, r, need_weights=False)
            return r

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = batch_mlp([hidden + latent + x_dim, hidden, hidden, 2 * y_dim])

        def forward(self, representation, target_x):
            hidden_ = torch.cat((representation, target_x), dim=-1)
            hidden_ = self.mlp(hidden_)
            mu, log_sigma = torch.split(hidden_, y_dim, dim=-1)
            sigma = 0.1 + 0.9 * F.softplus(log_sigma)  # bound the variance
            return Normal(loc=mu, scale=sigma), mu, sigma

    class LatentModel(nn.Module):
        def __init__(self):
            super().__init__()
            self._latent_encoder = LatentEncoder()
            self._deterministic_encoder = DeterministicEncoder()
            self._decoder = Decoder()

        def forward(self, query, num_targets, target_y=None, eps=None):
            (context_x, context_y), target_x = query
            prior = self._latent_encoder(context_x, context_y)
            if target_y is None:
                latent_rep = prior.loc
            else:  # training: the posterior of all targets, reparameterized (eps given)
                posterior = self._latent_encoder(target_x, target_y)
                latent_rep = eps.mul(posterior.scale).add_(posterior.loc)
            latent_rep = latent_rep.unsqueeze(1).repeat(1, num_targets, 1)
            deterministic_rep = self._deterministic_encoder(context_x, context_y, target_x)
            representation = torch.cat([deterministic_rep, latent_rep], dim=-1)
            dist, mu, sigma = self._decoder(representation, target_x)
            if target_y is not None:
                log_p = dist.log_prob(target_y).sum(-1)  # MultivariateNormalDiag's log_prob
                kl = kl_divergence(posterior, prior).sum(dim=-1, keepdim=True)
                kl = kl.repeat(1, num_targets)
                loss = -torch.mean(log_p - kl / num_targets)
            else:
                log_p = kl = loss = None
            return mu, sigma, log_p, kl, loss

    return LatentModel()


def context_target_split(x, y, num_context, num_extra_target, locations):
    """EmilienDupont's split (`locations = np.random.choice(num_points, size=..., replace=False)`), the locations
    drawn by `torch.randperm(num_points)[:num_context + num_extra_target]`."""
    x_context = x[:, locations[:num_context], :]
    y_context = y[:, locations[:num_context], :]
    x_target = x[:, locations, :]
    y_target = y[:, locations, :]
    return x_context, y_context, x_target, y_target


def test_attentive_neural_process_randperm_split_cross_attention_normal_kl_divergence_and_softplus_sigma():
    model, tmodel = pair(attentive_np)
    optimizer = av.optim.Adam(model.parameters(), lr=5e-3)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=5e-3)
    num_context, num_extra_target = 4, 3

    def loss_fn(model, x, y, locations, eps):
        context_x, context_y, target_x, target_y = context_target_split(x, y, num_context, num_extra_target,
                                                                        locations)
        query = ((context_x, context_y), target_x)
        mu, sigma, log_p, kl, loss = model(query, target_x.size(1), target_y, eps)
        return loss, (mu, sigma)

    torch.manual_seed(5)
    av.manual_seed(5)
    rng = np.random.default_rng(5)
    batches = []
    for _ in range(3):  # curves a sin(x + b) at 9 points
        x = rng.uniform(-2, 2, (3, 9, 1))
        y = rng.uniform(0.5, 2, (3, 1, 1)) * np.sin(x + rng.uniform(0, 3, (3, 1, 1)))
        locations = torch.randperm(9)[:num_context + num_extra_target].numpy()
        assert len(set(av.randperm(9).tolist())) == 9
        batches.append((x, y, locations, rng.standard_normal((3, 4))))
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, tol=1e-8)
    # prediction: the prior's mean, the context alone
    x, y, locations, _ = batches[0]
    cx, cy, tx, _ = context_target_split(av.tensor(x), av.tensor(y), num_context, num_extra_target,
                                         av.tensor(locations))
    tcx, tcy, ttx, _ = context_target_split(torch.tensor(x), torch.tensor(y), num_context, num_extra_target,
                                            torch.tensor(locations))
    mu, sigma, *_ = model(((cx, cy), tx), tx.size(1))
    tmu, tsigma, *_ = tmodel(((tcx, tcy), ttx), ttx.size(1))
    assert rel(mu, tmu) < 1e-10 and rel(sigma, tsigma) < 1e-10 and float(sigma.min()) > 0.1


# -- what the programs above met -------------------------------------------------------------------------------------

@pytest.mark.parametrize("zero_infinity", [False, True])
def test_ctc_loss_concatenated_targets_with_traced_target_lengths(zero_infinity):
    """crnn.pytorch's strLabelConverter gives the targets concatenated (1-d) and their lengths as an IntTensor, both
    inputs of the training step: ctc_loss refused 1-d targets unless their lengths were known while tracing. Each
    row now gathers from its offset (the exclusive running sum of the lengths), over min(total, T) entries: a target
    longer than the T inputs has no alignment (torch's inf, or 0), whichever its length."""
    rng = np.random.default_rng(6)
    steps, n, c = 5, 4, 4
    logits = rng.standard_normal((steps, n, c))
    cases = [([2, 3, 1, 4], [5, 5, 3, 5]), ([6, 1, 2, 1], [5, 4, 5, 2]), ([0, 4, 3, 3], [5, 5, 4, 5])]

    def loss(F_, x, targets, il, tl, reduction):
        return F_.ctc_loss(F_.log_softmax(x, dim=2), targets, il, tl, reduction=reduction, zero_infinity=zero_infinity)

    for reduction in ("none", "sum"):
        run = av.compile(lambda x, t, il, tl, r=reduction: loss(F, x, t, il, tl, r), backend="numpy")
        grad = av.compile(av.grad(lambda x, t, il, tl, r=reduction: loss(F, x, t, il, tl, r).sum()), backend="numpy")
        for tl, il in cases:  # the same total: one trace
            targets = rng.integers(1, c, sum(tl))
            args = (logits, targets.astype(np.int32), np.array(il, np.int32), np.array(tl, np.int32))
            tx = torch.tensor(logits, requires_grad=True)
            want = loss(TF, tx, *map(torch.tensor, args[1:]), reduction)
            with strict():
                got = run(*map(av.tensor, args))
            assert np.allclose(got.numpy(), want.detach().numpy(), rtol=1e-10, atol=0, equal_nan=False), (tl, got)
            if zero_infinity or np.isfinite(want.detach().numpy()).all():
                want.sum().backward()
                with strict():
                    g = grad(*map(av.tensor, args))
                assert rel(g, tx.grad) < 1e-10
        assert run.cache_info().misses == 1
    assert np.isinf(loss(F, av.tensor(logits), av.tensor([1] * 8), av.tensor([5] * 4), av.tensor([6, 1, 0, 1]),
                         "none").numpy()[0]) != zero_infinity


def test_empty_parameter_groups_as_torch_keeps_them():
    """TSM's get_optim_policies lists a `first_conv_bias` group that a bias-free backbone leaves empty: torch keeps
    such a group (its lr and weight_decay written each epoch like the others), Avalon refused it."""
    lin = nn.Linear(3, 2)
    opt = av.optim.SGD([{"params": [lin.weight], "lr_mult": 1}, {"params": [], "lr_mult": 2}, {"params": [lin.bias]}],
                       lr=0.1, momentum=0.9)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 0, 1] and opt.param_groups[1]["lr_mult"] == 2
    named = av.optim.Adam([{"params": []}, {"params": list(lin.named_parameters())}])
    opt.add_param_group({"params": [], "lr": 0.5})
    x = av.tensor(randn(np.random.default_rng(0), 4, 3))
    for o in (opt, named):
        for g in o.param_groups:
            g["lr"] = 0.05
        o.step(av.grad(lambda m, x: (m(x) ** 2).sum())(lin, x))
        o.load_state_dict(o.state_dict())
    with pytest.raises(ValueError, match="empty parameter list"):
        av.optim.SGD([], lr=0.1)


def test_norm_base_finds_batch_and_instance_norms():
    """SlowFast's construct_optimizer collects the parameters of `torch.nn.modules.batchnorm._NormBase` modules into
    a no-weight-decay group: the class was missing."""
    from avalon.nn.modules.batchnorm import _BatchNorm, _NormBase
    norms = [nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.BatchNorm3d(2), nn.SyncBatchNorm(2), nn.InstanceNorm2d(2)]
    assert all(isinstance(m, _NormBase) for m in norms) and issubclass(_BatchNorm, _NormBase)
    assert not any(isinstance(m, _NormBase) for m in (nn.LayerNorm(2), nn.GroupNorm(1, 2), nn.Linear(2, 2)))
    assert av.nn.modules.batchnorm._NormBase is _NormBase


@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence_data_and_batch_sizes_with_lengths_known_while_tracing(enforce_sorted):
    """Show, Attend and Tell's loss keeps the valid steps by `pack_padded_sequence(scores, decode_lengths,
    batch_first=True).data`: Avalon's PackedSequence had no `.data`. With the lengths known while tracing (Python
    ints) it is torch's interleaved layout (sorted by decreasing length, ties in batch order, for
    enforce_sorted=False), differentiable; with traced lengths it says what to do."""
    rng = np.random.default_rng(7)
    lengths = [4, 4, 2, 1] if enforce_sorted else [2, 4, 1, 4]
    x = rng.standard_normal((4, 5, 3))
    w = rng.standard_normal((11, 3))
    tx = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(tx, lengths, batch_first=True, enforce_sorted=enforce_sorted)
    (packed.data * torch.tensor(w)).sum().backward()
    pack = nn.utils.rnn.pack_padded_sequence

    def f(x, lengths):
        p = pack(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
        return p.data, p.batch_sizes
    run = av.compile(f, backend="numpy")
    for fn in (f, run):
        with strict():
            data, sizes = fn(av.tensor(x), lengths)
        assert np.array_equal(data.numpy(), packed.data.detach().numpy())
        assert sizes.tolist() == packed.batch_sizes.tolist() and sizes.dtype == av.int64
    g = av.grad(lambda x, w: (f(x, lengths)[0] * w).sum())(av.tensor(x), av.tensor(w))
    assert np.array_equal(g.numpy(), tx.grad.numpy())
    with pytest.raises(NotImplementedError, match="lengths as Python ints"):
        av.compile(lambda x, n: f(x, n)[0], backend="numpy")(av.tensor(x), av.tensor(sorted(lengths, reverse=True)))
