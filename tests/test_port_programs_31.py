"""Round 9q of port QA: programs written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random float32 data and compared with torch after every step (losses,
gradients, parameters and buffers), the first step eagerly and the rest compiled.

Programs: facebookresearch/moco's MoCo v2 (builder.py: a key encoder copied from the query encoder by
`param_k.data.copy_(param_q.data)` and frozen by `requires_grad = False`, the momentum update
`param_k.data = param_k.data * m + param_q.data * (1 - m)` under `@torch.no_grad()` inside forward, the queue buffer
reassigned to its normalized self, `ptr = int(self.queue_ptr)` and the enqueue `self.queue[:, ptr:ptr + b] = keys.T`,
`torch.einsum` with a list of operands, `logits /= self.T`; main_moco.py's SGD over all parameters (the frozen ones
included), the cosine adjust_learning_rate writing every group's 'lr', and accuracy()'s topk); vgsatorras/egnn
(egnn_clean.py: E_GCL's edge, coordinate and node models, unsorted_segment_sum/mean by `new_full` and `scatter_add_`
of an expanded index, a shared `act_fn=nn.SiLU()` default, `xavier_uniform_(gain=0.001)`, layers by `add_module` and
`self._modules["gcl_%d" % i]`, get_edges_batch's `torch.LongTensor` lists; trained by Adam on an n-body-style
regression, and checked E(n)-equivariant on both sides); rosinality/glow-pytorch (ActNorm's data-dependent
initialization behind a uint8 `initialized` buffer, InvConv2d's `torch.slogdet(w.squeeze().double())[1].float()`
and InvConv2dLU's P L U parameterization, ZeroConv2d's `F.pad(value=1)` and `exp(scale * 3)`, the affine coupling's
`sigmoid(log_s + 2)`, the squeeze by view/permute, the split prior, train.py's calc_loss in bits per dimension and
its no_grad first batch that initializes the actnorms; sampling by `reverse` with `inverse()`); ndrplz/ConvLSTM_pytorch
(ConvLSTMCell's gates by `torch.split` of one convolution, zero states made in forward with
`device=self.conv.weight.device`, `_extend_for_multilayer`, batch_first or not, return_all_layers) under a 1x1 conv
head predicting the next binary frame with BCEWithLogitsLoss, Adam and clip_grad_norm_.

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`, `clip_grad_norm_(grads, ...)`);
MoCo's logits come out of the loss as `has_aux`; torch.rand_like's dequantization noise (Glow) is drawn in numpy for
both. Not Avalon: MoCo's `.cuda()` and DDP-only batch shuffle are dropped and concat_all_gather is one process's
identity; sizes are small.

Deliberate differences met: MoCo's `ptr = int(self.queue_ptr)` reads a model buffer while tracing, so the compiled
step is specialized to the queue position (README: a value Python reads from a model's tensor is part of the
signature) and traces again whenever the pointer moves to a position not seen before (up to 8 versions of a
signature are kept, so a pointer cycling through K / batch positions compiles each once). Conditioning, not Avalon: ZeroConv2d starts at zero, so the layers before it
have gradients that are zero in exact arithmetic, which Adam turns into steps of lr on both sides; the test gives the
ZeroConv2d layers small random weights first, and uses the original lr (1e-4) so that the remaining near-zero
gradient entries' sign flips stay below the tolerance. InvConv2dLU draws from numpy's global stream: seeded.

Bug found (regression at the end): a parameter made from a view of a tensor no model holds (Glow's InvConv2d:
`nn.Parameter(q.unsqueeze(2).unsqueeze(3))` of `torch.qr`'s Q, which Avalon packs with R into one result) did not
train in a compiled step: the optimizer's write went through to the view's base, which the trace held as a captured
constant (warning that it traced again on every call) and never wrote back, so the weight stayed as it was.
avalon/views.py's `write` now records such a write as the view's own state update, and
avalon/compiler/execute.py's write-back sends a view's update through `assign`, which writes the base, as torch's
shared storage (the base reads the steps).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from test_port_programs_30 import randn, same_grads
from test_port_programs_more import compiled, pair, same_weights, strict

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

F32 = torch.float32




# -- 1. MoCo v2 (facebookresearch/moco moco/builder.py, main_moco.py) ---------------------------------------------

def moco(lib, F_, th, dim=8, K=8, m=0.9, T=0.2, mlp=True):  # noqa: N803
    nn_ = lib

    def base_encoder(num_classes):  # a small stand-in for torchvision's resnet50(num_classes=dim)
        class Encoder(nn_.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn_.Conv2d(3, 6, 3, padding=1, bias=False)
                self.bn = nn_.BatchNorm2d(6)
                self.relu = nn_.ReLU(inplace=True)
                self.avgpool = nn_.AdaptiveAvgPool2d((1, 1))
                self.fc = nn_.Linear(6, num_classes)

            def forward(self, x):
                x = self.relu(self.bn(self.conv(x)))
                x = th.flatten(self.avgpool(x), 1)
                return self.fc(x)
        return Encoder()

    class MoCo(nn_.Module):
        """
        Build a MoCo model with: a query encoder, a key encoder, and a queue
        https://arxiv.org/abs/1911.05722
        """
        def __init__(self, base_encoder, dim=128, K=65536, m=0.999, T=0.07, mlp=False):  # noqa: N803
            super(MoCo, self).__init__()  # noqa: UP008

            self.K = K
            self.m = m
            self.T = T

            # create the encoders
            # num_classes is the output fc dimension
            self.encoder_q = base_encoder(num_classes=dim)
            self.encoder_k = base_encoder(num_classes=dim)

            if mlp:  # hack: brute-force replacement
                dim_mlp = self.encoder_q.fc.weight.shape[1]
                self.encoder_q.fc = nn_.Sequential(nn_.Linear(dim_mlp, dim_mlp), nn_.ReLU(), self.encoder_q.fc)
                self.encoder_k.fc = nn_.Sequential(nn_.Linear(dim_mlp, dim_mlp), nn_.ReLU(), self.encoder_k.fc)

            for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
                param_k.data.copy_(param_q.data)  # initialize
                param_k.requires_grad = False  # not update by gradient

            # create the queue
            self.register_buffer("queue", th.randn(dim, K))
            self.queue = nn_.functional.normalize(self.queue, dim=0)

            self.register_buffer("queue_ptr", th.zeros(1, dtype=th.long))

        @th.no_grad()
        def _momentum_update_key_encoder(self):
            """
            Momentum update of the key encoder
            """
            for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
                param_k.data = param_k.data * self.m + param_q.data * (1. - self.m)

        @th.no_grad()
        def _dequeue_and_enqueue(self, keys):
            # gather keys before updating queue
            keys = concat_all_gather(keys)

            batch_size = keys.shape[0]

            ptr = int(self.queue_ptr)
            assert self.K % batch_size == 0  # for simplicity

            # replace the keys at ptr (dequeue and enqueue)
            self.queue[:, ptr:ptr + batch_size] = keys.T
            ptr = (ptr + batch_size) % self.K  # move pointer

            self.queue_ptr[0] = ptr

        def forward(self, im_q, im_k):
            """
            Input:
                im_q: a batch of query images
                im_k: a batch of key images
            Output:
                logits, targets
            """

            # compute query features
            q = self.encoder_q(im_q)  # queries: NxC
            q = nn_.functional.normalize(q, dim=1)

            # compute key features
            with th.no_grad():  # no gradient to keys
                self._momentum_update_key_encoder()  # update the key encoder

                # shuffle for making use of BN (_batch_shuffle_ddp needs torch.distributed; one process here)
                k = self.encoder_k(im_k)  # keys: NxC
                k = nn_.functional.normalize(k, dim=1)

            # compute logits
            # Einstein sum is more intuitive
            # positive logits: Nx1
            l_pos = th.einsum('nc,nc->n', [q, k]).unsqueeze(-1)
            # negative logits: NxK
            l_neg = th.einsum('nc,ck->nk', [q, self.queue.clone().detach()])

            # logits: Nx(1+K)
            logits = th.cat([l_pos, l_neg], dim=1)

            # apply temperature
            logits /= self.T

            # labels: positive key indicators
            labels = th.zeros(logits.shape[0], dtype=th.long)  # .cuda() in the original

            # dequeue and enqueue
            self._dequeue_and_enqueue(k)

            return logits, labels

    def concat_all_gather(tensor):  # one process: all_gather of one is the tensor itself
        return tensor

    return MoCo(base_encoder, dim, K, m, T, mlp)


def adjust_learning_rate(optimizer, epoch, args):
    """Decay the learning rate based on schedule"""
    lr = args["lr"]
    if args["cos"]:  # cosine lr schedule
        lr *= 0.5 * (1. + math.cos(math.pi * epoch / args["epochs"]))
    else:  # stepwise lr schedule
        for milestone in args["schedule"]:
            lr *= 0.1 if epoch >= milestone else 1.
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr


def accuracy(th, output, target, topk=(1,)):
    """Computes the accuracy over the k top predictions for the specified values of k"""
    with th.no_grad():
        maxk = max(topk)
        batch_size = target.size(0)

        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))

        res = []
        for k in topk:
            correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
            res.append(correct_k.mul_(100.0 / batch_size))
        return res


def test_moco_v2_momentum_key_encoder_queue_enqueue_by_pointer_and_cosine_lr():
    args = {"lr": 0.3, "momentum": 0.9, "weight_decay": 1e-4, "cos": True, "epochs": 4, "schedule": [2, 3]}
    model, tmodel = pair(moco, dtype=F32)
    assert not any(p.requires_grad for p in model.encoder_k.parameters())
    criterion, tcriterion = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    optimizer = av.optim.SGD(model.parameters(), args["lr"], momentum=args["momentum"],
                             weight_decay=args["weight_decay"])
    toptimizer = torch.optim.SGD(tmodel.parameters(), args["lr"], momentum=args["momentum"],
                                 weight_decay=args["weight_decay"])

    def loss_fn(model, im_q, im_k):
        output, target = model(im_q=im_q, im_k=im_k)
        return criterion(output, target), output

    def train_step(model, optimizer, im_q, im_k):
        (loss, output), grads = av.value_and_grad(loss_fn, has_aux=True)(model, im_q, im_k)
        optimizer.step(grads)
        return loss, output, grads
    run = compiled(train_step, "numpy")

    rng = np.random.default_rng(0)
    model.train()
    tmodel.train()
    for epoch in range(args["epochs"]):
        adjust_learning_rate(optimizer, epoch, args)
        adjust_learning_rate(toptimizer, epoch, args)
        images = [randn(rng, 4, 3, 6, 6), randn(rng, 4, 3, 6, 6)]
        toutput, ttarget = tmodel(im_q=T(images[0]), im_k=T(images[1]))
        tloss = tcriterion(toutput, ttarget)
        tacc1, tacc5 = accuracy(torch, toutput, ttarget, topk=(1, 5))
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        with strict():
            loss, output, grads = (run if epoch else train_step)(model, optimizer, av.tensor(images[0]),
                                                                 av.tensor(images[1]))
        acc1, acc5 = accuracy(av, output, av.zeros(4, dtype=av.long), topk=(1, 5))
        assert rel(loss, tloss) < 1e-5, epoch
        assert rel(output, toutput) < 1e-5, epoch
        assert acc1.item() == tacc1.item() and acc5.item() == tacc5.item()
        assert not any(k.startswith("encoder_k.") for k in grads)
        same_grads(grads, tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)
        assert int(model.queue_ptr) == int(tmodel.queue_ptr) == (epoch + 1) * 4 % 8
    assert optimizer.param_groups[0]["lr"] == toptimizer.param_groups[0]["lr"]


# -- 2. EGNN (vgsatorras/egnn models/egnn_clean/egnn_clean.py; n_body_system/main_nbody.py's Adam) ------------------

def egnn(lib, F_, th, in_node_nf=3, hidden_nf=16, out_node_nf=2, in_edge_nf=1, n_layers=2, attention=True,
         normalize=True, tanh=True, coords_agg='mean'):
    nn_ = lib
    torch_ = th

    def unsorted_segment_sum(data, segment_ids, num_segments):
        result_shape = (num_segments, data.size(1))
        result = data.new_full(result_shape, 0)  # Init empty result tensor.
        segment_ids = segment_ids.unsqueeze(-1).expand(-1, data.size(1))
        result.scatter_add_(0, segment_ids, data)
        return result

    def unsorted_segment_mean(data, segment_ids, num_segments):
        result_shape = (num_segments, data.size(1))
        segment_ids = segment_ids.unsqueeze(-1).expand(-1, data.size(1))
        result = data.new_full(result_shape, 0)  # Init empty result tensor.
        count = data.new_full(result_shape, 0)
        result.scatter_add_(0, segment_ids, data)
        count.scatter_add_(0, segment_ids, torch_.ones_like(data))
        return result / count.clamp(min=1)

    class E_GCL(nn_.Module):  # noqa: N801
        """
        E(n) Equivariant Convolutional Layer
        re
        """

        def __init__(self, input_nf, output_nf, hidden_nf, edges_in_d=0, act_fn=nn_.SiLU(), residual=True,  # noqa: B008
                     attention=False, normalize=False, coords_agg='mean', tanh=False):
            super(E_GCL, self).__init__()  # noqa: UP008
            input_edge = input_nf * 2
            self.residual = residual
            self.attention = attention
            self.normalize = normalize
            self.coords_agg = coords_agg
            self.tanh = tanh
            self.epsilon = 1e-8
            edge_coords_nf = 1

            self.edge_mlp = nn_.Sequential(
                nn_.Linear(input_edge + edge_coords_nf + edges_in_d, hidden_nf),
                act_fn,
                nn_.Linear(hidden_nf, hidden_nf),
                act_fn)

            self.node_mlp = nn_.Sequential(
                nn_.Linear(hidden_nf + input_nf, hidden_nf),
                act_fn,
                nn_.Linear(hidden_nf, output_nf))

            layer = nn_.Linear(hidden_nf, 1, bias=False)
            torch_.nn.init.xavier_uniform_(layer.weight, gain=0.001)

            coord_mlp = []
            coord_mlp.append(nn_.Linear(hidden_nf, hidden_nf))
            coord_mlp.append(act_fn)
            coord_mlp.append(layer)
            if self.tanh:
                coord_mlp.append(nn_.Tanh())
            self.coord_mlp = nn_.Sequential(*coord_mlp)

            if self.attention:
                self.att_mlp = nn_.Sequential(
                    nn_.Linear(hidden_nf, 1),
                    nn_.Sigmoid())

        def edge_model(self, source, target, radial, edge_attr):
            if edge_attr is None:  # Unused.
                out = torch_.cat([source, target, radial], dim=1)
            else:
                out = torch_.cat([source, target, radial, edge_attr], dim=1)
            out = self.edge_mlp(out)
            if self.attention:
                att_val = self.att_mlp(out)
                out = out * att_val
            return out

        def node_model(self, x, edge_index, edge_attr, node_attr):
            row, col = edge_index
            agg = unsorted_segment_sum(edge_attr, row, num_segments=x.size(0))
            if node_attr is not None:
                agg = torch_.cat([x, agg, node_attr], dim=1)
            else:
                agg = torch_.cat([x, agg], dim=1)
            out = self.node_mlp(agg)
            if self.residual:
                out = x + out
            return out, agg

        def coord_model(self, coord, edge_index, coord_diff, edge_feat):
            row, col = edge_index
            trans = coord_diff * self.coord_mlp(edge_feat)
            if self.coords_agg == 'sum':
                agg = unsorted_segment_sum(trans, row, num_segments=coord.size(0))
            elif self.coords_agg == 'mean':
                agg = unsorted_segment_mean(trans, row, num_segments=coord.size(0))
            else:
                raise Exception('Wrong coords_agg parameter' % self.coords_agg)  # noqa: F507, UP031
            coord = coord + agg
            return coord

        def coord2radial(self, edge_index, coord):
            row, col = edge_index
            coord_diff = coord[row] - coord[col]
            radial = torch_.sum(coord_diff**2, 1).unsqueeze(1)

            if self.normalize:
                norm = torch_.sqrt(radial).detach() + self.epsilon
                coord_diff = coord_diff / norm

            return radial, coord_diff

        def forward(self, h, edge_index, coord, edge_attr=None, node_attr=None):
            row, col = edge_index
            radial, coord_diff = self.coord2radial(edge_index, coord)

            edge_feat = self.edge_model(h[row], h[col], radial, edge_attr)
            coord = self.coord_model(coord, edge_index, coord_diff, edge_feat)
            h, agg = self.node_model(h, edge_index, edge_feat, node_attr)

            return h, coord, edge_attr

    class EGNN(nn_.Module):
        def __init__(self, in_node_nf, hidden_nf, out_node_nf, in_edge_nf=0, device='cpu', act_fn=nn_.SiLU(),  # noqa: B008
                     n_layers=4, residual=True, attention=False, normalize=False, tanh=False):
            super(EGNN, self).__init__()  # noqa: UP008
            self.hidden_nf = hidden_nf
            self.device = device
            self.n_layers = n_layers
            self.embedding_in = nn_.Linear(in_node_nf, self.hidden_nf)
            self.embedding_out = nn_.Linear(self.hidden_nf, out_node_nf)
            for i in range(0, n_layers):
                self.add_module("gcl_%d" % i, E_GCL(self.hidden_nf, self.hidden_nf, self.hidden_nf,  # noqa: UP031
                                                    edges_in_d=in_edge_nf, act_fn=act_fn, residual=residual,
                                                    attention=attention, normalize=normalize, tanh=tanh))
            self.to(self.device)

        def forward(self, h, x, edges, edge_attr):
            h = self.embedding_in(h)
            for i in range(0, self.n_layers):
                h, x, _ = self._modules["gcl_%d" % i](h, edges, x, edge_attr=edge_attr)  # noqa: UP031
            h = self.embedding_out(h)
            return h, x

    return EGNN(in_node_nf=in_node_nf, hidden_nf=hidden_nf, out_node_nf=out_node_nf, in_edge_nf=in_edge_nf,
                n_layers=n_layers, attention=attention, normalize=normalize, tanh=tanh)


def get_edges(n_nodes):
    rows, cols = [], []
    for i in range(n_nodes):
        for j in range(n_nodes):
            if i != j:
                rows.append(i)
                cols.append(j)

    edges = [rows, cols]
    return edges


def get_edges_batch(th, n_nodes, batch_size):
    edges = get_edges(n_nodes)
    edge_attr = th.ones(len(edges[0]) * batch_size, 1)
    edges = [th.LongTensor(edges[0]), th.LongTensor(edges[1])]
    if batch_size == 1:
        return edges, edge_attr
    elif batch_size > 1:
        rows, cols = [], []
        for i in range(batch_size):
            rows.append(edges[0] + n_nodes * i)
            cols.append(edges[1] + n_nodes * i)
        edges = [th.cat(rows), th.cat(cols)]
    return edges, edge_attr


def rotation(rng):
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def test_egnn_scatter_add_segment_mean_coordinate_updates_equivariance_and_adam():
    model, tmodel = pair(egnn, dtype=F32)
    # the E_GCLs share one SiLU (the default argument), as in torch
    assert model.gcl_0.edge_mlp[1] is model.gcl_1.node_mlp[1]
    assert model.gcl_0.coord_mlp[2].weight.abs().max().item() < 0.01
    optimizer = av.optim.Adam(model.parameters(), lr=5e-3, weight_decay=1e-12)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=5e-3, weight_decay=1e-12)
    loss_mse, tloss_mse = nn.MSELoss(), torch.nn.MSELoss()

    batch_size, n_nodes = 3, 5
    edges, edge_attr = get_edges_batch(av, n_nodes, batch_size)
    tedges, tedge_attr = get_edges_batch(torch, n_nodes, batch_size)
    assert edges[0].dtype == av.int64 and edges[0].tolist() == tedges[0].tolist()

    def loss_fn(model, h, x, edges, edge_attr, target_x, target_h):
        h_out, x_out = model(h, x, edges, edge_attr)
        return loss_mse(x_out, target_x) + 0.1 * loss_mse(h_out, target_h)

    def train_step(model, optimizer, *batch):
        loss, grads = av.value_and_grad(loss_fn)(model, *batch)
        optimizer.step(grads)
        return loss, grads
    run = compiled(train_step, "numpy")

    rng = np.random.default_rng(1)
    for it in range(4):
        h = rng.random((batch_size * n_nodes, 3)).astype(np.float32)
        x = randn(rng, batch_size * n_nodes, 3)
        target_x = x + 0.3 * randn(rng, batch_size * n_nodes, 3)
        target_h = randn(rng, batch_size * n_nodes, 2)
        h_out, x_out = tmodel(T(h), T(x), tedges, tedge_attr)
        tloss = tloss_mse(x_out, T(target_x)) + 0.1 * tloss_mse(h_out, T(target_h))
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        with strict():
            loss, grads = (run if it else train_step)(model, optimizer, av.tensor(h), av.tensor(x), edges,
                                                      edge_attr, av.tensor(target_x), av.tensor(target_h))
        assert rel(loss, tloss) < 1e-5, it
        same_grads(grads, tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)
    assert run.cache_info().misses == 1

    # E(n) equivariance: rotating and translating the positions rotates and translates the new positions and
    # leaves the node features alone, on both sides
    R, shift = rotation(rng), randn(rng, 1, 3)  # noqa: N806
    h, x = rng.random((batch_size * n_nodes, 3)).astype(np.float32), randn(rng, batch_size * n_nodes, 3)
    with av.no_grad():
        h_out, x_out = model(av.tensor(h), av.tensor(x), edges, edge_attr)
        h_rot, x_rot = model(av.tensor(h), av.tensor(x @ R.T + shift), edges, edge_attr)
    with torch.no_grad():
        th_out, tx_out = tmodel(T(h), T(x), tedges, tedge_attr)
    assert rel(h_out, th_out) < 1e-5 and rel(x_out, tx_out) < 1e-5
    assert rel(h_rot, h_out) < 1e-4
    assert rel(x_rot, x_out.numpy() @ R.T + shift) < 1e-4


# -- 3. Glow (rosinality/glow-pytorch model.py and train.py) ----------------------------------------------------------

def glow(lib, F_, th, in_channel=3, n_flow=2, n_block=2, affine=True, conv_lu=True, filter_size=16):
    nn = lib
    F = F_  # noqa: N806
    torch = th
    from math import log, pi

    from scipy import linalg as la

    logabs = lambda x: torch.log(torch.abs(x))  # noqa: E731

    class ActNorm(nn.Module):
        def __init__(self, in_channel, logdet=True):
            super().__init__()

            self.loc = nn.Parameter(torch.zeros(1, in_channel, 1, 1))
            self.scale = nn.Parameter(torch.ones(1, in_channel, 1, 1))

            self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
            self.logdet = logdet

        def initialize(self, input):  # noqa: A002
            with torch.no_grad():
                flatten = input.permute(1, 0, 2, 3).contiguous().view(input.shape[1], -1)
                mean = (
                    flatten.mean(1)
                    .unsqueeze(1)
                    .unsqueeze(2)
                    .unsqueeze(3)
                    .permute(1, 0, 2, 3)
                )
                std = (
                    flatten.std(1)
                    .unsqueeze(1)
                    .unsqueeze(2)
                    .unsqueeze(3)
                    .permute(1, 0, 2, 3)
                )

                self.loc.data.copy_(-mean)
                self.scale.data.copy_(1 / (std + 1e-6))

        def forward(self, input):  # noqa: A002
            _, _, height, width = input.shape

            if self.initialized.item() == 0:
                self.initialize(input)
                self.initialized.fill_(1)

            log_abs = logabs(self.scale)

            logdet = height * width * torch.sum(log_abs)

            if self.logdet:
                return self.scale * (input + self.loc), logdet

            else:
                return self.scale * (input + self.loc)

        def reverse(self, output):
            return output / self.scale - self.loc

    class InvConv2d(nn.Module):
        def __init__(self, in_channel):
            super().__init__()

            weight = torch.randn(in_channel, in_channel)
            q, _ = torch.qr(weight)
            weight = q.unsqueeze(2).unsqueeze(3)
            self.weight = nn.Parameter(weight)

        def forward(self, input):  # noqa: A002
            _, _, height, width = input.shape

            out = F.conv2d(input, self.weight)
            logdet = (
                height * width * torch.slogdet(self.weight.squeeze().double())[1].float()
            )

            return out, logdet

        def reverse(self, output):
            return F.conv2d(
                output, self.weight.squeeze().inverse().unsqueeze(2).unsqueeze(3)
            )

    class InvConv2dLU(nn.Module):
        def __init__(self, in_channel):
            super().__init__()

            weight = np.random.randn(in_channel, in_channel)
            q, _ = la.qr(weight)
            w_p, w_l, w_u = la.lu(q.astype(np.float32))
            w_s = np.diag(w_u)
            w_u = np.triu(w_u, 1)
            u_mask = np.triu(np.ones_like(w_u), 1)
            l_mask = u_mask.T

            w_p = torch.from_numpy(w_p)
            w_l = torch.from_numpy(w_l)
            w_s = torch.from_numpy(w_s)
            w_u = torch.from_numpy(w_u)

            self.register_buffer("w_p", w_p)
            self.register_buffer("u_mask", torch.from_numpy(u_mask))
            self.register_buffer("l_mask", torch.from_numpy(l_mask))
            self.register_buffer("s_sign", torch.sign(w_s))
            self.register_buffer("l_eye", torch.eye(l_mask.shape[0]))
            self.w_l = nn.Parameter(w_l)
            self.w_s = nn.Parameter(logabs(w_s))
            self.w_u = nn.Parameter(w_u)

        def forward(self, input):  # noqa: A002
            _, _, height, width = input.shape

            weight = self.calc_weight()

            out = F.conv2d(input, weight)
            logdet = height * width * torch.sum(self.w_s)

            return out, logdet

        def calc_weight(self):
            weight = (
                self.w_p
                @ (self.w_l * self.l_mask + self.l_eye)
                @ ((self.w_u * self.u_mask) + torch.diag(self.s_sign * torch.exp(self.w_s)))
            )

            return weight.unsqueeze(2).unsqueeze(3)

        def reverse(self, output):
            weight = self.calc_weight()

            return F.conv2d(output, weight.squeeze().inverse().unsqueeze(2).unsqueeze(3))

    class ZeroConv2d(nn.Module):
        def __init__(self, in_channel, out_channel, padding=1):
            super().__init__()

            self.conv = nn.Conv2d(in_channel, out_channel, 3, padding=0)
            self.conv.weight.data.zero_()
            self.conv.bias.data.zero_()
            self.scale = nn.Parameter(torch.zeros(1, out_channel, 1, 1))

        def forward(self, input):  # noqa: A002
            out = F.pad(input, [1, 1, 1, 1], value=1)
            out = self.conv(out)
            out = out * torch.exp(self.scale * 3)

            return out

    class AffineCoupling(nn.Module):
        def __init__(self, in_channel, filter_size=512, affine=True):
            super().__init__()

            self.affine = affine

            self.net = nn.Sequential(
                nn.Conv2d(in_channel // 2, filter_size, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(filter_size, filter_size, 1),
                nn.ReLU(inplace=True),
                ZeroConv2d(filter_size, in_channel if self.affine else in_channel // 2),
            )

            self.net[0].weight.data.normal_(0, 0.05)
            self.net[0].bias.data.zero_()

            self.net[2].weight.data.normal_(0, 0.05)
            self.net[2].bias.data.zero_()

        def forward(self, input):  # noqa: A002
            in_a, in_b = input.chunk(2, 1)

            if self.affine:
                log_s, t = self.net(in_a).chunk(2, 1)
                # s = torch.exp(log_s)
                s = F.sigmoid(log_s + 2)
                # out_a = s * in_a + t
                out_b = (in_b + t) * s

                logdet = torch.sum(torch.log(s).view(input.shape[0], -1), 1)

            else:
                net_out = self.net(in_a)
                out_b = in_b + net_out
                logdet = None

            return torch.cat([in_a, out_b], 1), logdet

        def reverse(self, output):
            out_a, out_b = output.chunk(2, 1)

            if self.affine:
                log_s, t = self.net(out_a).chunk(2, 1)
                # s = torch.exp(log_s)
                s = F.sigmoid(log_s + 2)
                # in_a = (out_a - t) / s
                in_b = out_b / s - t

            else:
                net_out = self.net(out_a)
                in_b = out_b - net_out

            return torch.cat([out_a, in_b], 1)

    class Flow(nn.Module):
        def __init__(self, in_channel, affine=True, conv_lu=True):
            super().__init__()

            self.actnorm = ActNorm(in_channel)

            if conv_lu:
                self.invconv = InvConv2dLU(in_channel)

            else:
                self.invconv = InvConv2d(in_channel)

            self.coupling = AffineCoupling(in_channel, filter_size=filter_size, affine=affine)

        def forward(self, input):  # noqa: A002
            out, logdet = self.actnorm(input)
            out, det1 = self.invconv(out)
            out, det2 = self.coupling(out)

            logdet = logdet + det1
            if det2 is not None:
                logdet = logdet + det2

            return out, logdet

        def reverse(self, output):
            input = self.coupling.reverse(output)  # noqa: A001
            input = self.invconv.reverse(input)  # noqa: A001
            input = self.actnorm.reverse(input)  # noqa: A001

            return input

    def gaussian_log_p(x, mean, log_sd):
        return -0.5 * log(2 * pi) - log_sd - 0.5 * (x - mean) ** 2 / torch.exp(2 * log_sd)

    def gaussian_sample(eps, mean, log_sd):
        return mean + torch.exp(log_sd) * eps

    class Block(nn.Module):
        def __init__(self, in_channel, n_flow, split=True, affine=True, conv_lu=True):
            super().__init__()

            squeeze_dim = in_channel * 4

            self.flows = nn.ModuleList()
            for i in range(n_flow):  # noqa: B007
                self.flows.append(Flow(squeeze_dim, affine=affine, conv_lu=conv_lu))

            self.split = split

            if split:
                self.prior = ZeroConv2d(in_channel * 2, in_channel * 4)

            else:
                self.prior = ZeroConv2d(in_channel * 4, in_channel * 8)

        def forward(self, input):  # noqa: A002
            b_size, n_channel, height, width = input.shape
            squeezed = input.view(b_size, n_channel, height // 2, 2, width // 2, 2)
            squeezed = squeezed.permute(0, 1, 3, 5, 2, 4)
            out = squeezed.contiguous().view(b_size, n_channel * 4, height // 2, width // 2)

            logdet = 0

            for flow in self.flows:
                out, det = flow(out)
                logdet = logdet + det

            if self.split:
                out, z_new = out.chunk(2, 1)
                mean, log_sd = self.prior(out).chunk(2, 1)
                log_p = gaussian_log_p(z_new, mean, log_sd)
                log_p = log_p.view(b_size, -1).sum(1)

            else:
                zero = torch.zeros_like(out)
                mean, log_sd = self.prior(zero).chunk(2, 1)
                log_p = gaussian_log_p(out, mean, log_sd)
                log_p = log_p.view(b_size, -1).sum(1)
                z_new = out

            return out, logdet, log_p, z_new

        def reverse(self, output, eps=None, reconstruct=False):
            input = output  # noqa: A001

            if reconstruct:
                if self.split:
                    input = torch.cat([output, eps], 1)  # noqa: A001

                else:
                    input = eps  # noqa: A001

            else:
                if self.split:
                    mean, log_sd = self.prior(input).chunk(2, 1)
                    z = gaussian_sample(eps, mean, log_sd)
                    input = torch.cat([output, z], 1)  # noqa: A001

                else:
                    zero = torch.zeros_like(input)
                    # zero = F.pad(zero, [1, 1, 1, 1], value=1)
                    mean, log_sd = self.prior(zero).chunk(2, 1)
                    z = gaussian_sample(eps, mean, log_sd)
                    input = z  # noqa: A001

            for flow in self.flows[::-1]:
                input = flow.reverse(input)  # noqa: A001

            b_size, n_channel, height, width = input.shape

            unsqueezed = input.view(b_size, n_channel // 4, 2, 2, height, width)
            unsqueezed = unsqueezed.permute(0, 1, 4, 2, 5, 3)
            unsqueezed = unsqueezed.contiguous().view(
                b_size, n_channel // 4, height * 2, width * 2
            )

            return unsqueezed

    class Glow(nn.Module):
        def __init__(self, in_channel, n_flow, n_block, affine=True, conv_lu=True):
            super().__init__()

            self.blocks = nn.ModuleList()
            n_channel = in_channel
            for i in range(n_block - 1):  # noqa: B007
                self.blocks.append(Block(n_channel, n_flow, affine=affine, conv_lu=conv_lu))
                n_channel *= 2
            self.blocks.append(Block(n_channel, n_flow, split=False, affine=affine))

        def forward(self, input):  # noqa: A002
            log_p_sum = 0
            logdet = 0
            out = input
            z_outs = []

            for block in self.blocks:
                out, det, log_p, z_new = block(out)
                z_outs.append(z_new)
                logdet = logdet + det

                if log_p is not None:
                    log_p_sum = log_p_sum + log_p

            return log_p_sum, logdet, z_outs

        def reverse(self, z_list, reconstruct=False):
            for i, block in enumerate(self.blocks[::-1]):
                if i == 0:
                    input = block.reverse(z_list[-1], z_list[-1], reconstruct=reconstruct)  # noqa: A001

                else:
                    input = block.reverse(input, z_list[-(i + 1)], reconstruct=reconstruct)  # noqa: A001

            return input

    return Glow(in_channel, n_flow, n_block, affine=affine, conv_lu=conv_lu)


def calc_z_shapes(n_channel, input_size, n_flow, n_block):
    z_shapes = []

    for i in range(n_block - 1):  # noqa: B007
        input_size //= 2
        n_channel *= 2

        z_shapes.append((n_channel, input_size, input_size))

    input_size //= 2
    z_shapes.append((n_channel * 4, input_size, input_size))

    return z_shapes


def calc_loss(log_p, logdet, image_size, n_bins):
    # log_p = calc_log_p([z_list])
    n_pixel = image_size * image_size * 3

    loss = -math.log(n_bins) * n_pixel
    loss = loss + logdet + log_p

    return (
        (-loss / (math.log(2) * n_pixel)).mean(),
        (log_p / (math.log(2) * n_pixel)).mean(),
        (logdet / (math.log(2) * n_pixel)).mean(),
    )


SEED = 0


@pytest.mark.parametrize("conv_lu", [True, False])
def test_glow_actnorm_data_init_invconv_slogdet_or_lu_affine_coupling_bits_per_dim_and_reverse(conv_lu):
    args = {"n_flow": 2, "n_block": 2, "n_bits": 5, "img_size": 8, "lr": 1e-4, "batch": 4}
    n_bins = 2.0 ** args["n_bits"]
    np.random.seed(SEED)  # InvConv2dLU draws its rotation from numpy's global stream
    model, tmodel = pair(lambda lib, F_, th: glow(lib, F_, th, 3, args["n_flow"], args["n_block"], conv_lu=conv_lu),
                         dtype=F32)
    # ZeroConv2d starts at zero; give it (on both sides) small weights so every parameter gets a gradient at once
    rng = np.random.default_rng(2)
    with torch.no_grad():
        for k, p in tmodel.named_parameters():
            if ".prior." in k or ".net.4." in k:
                p.copy_(T(0.01 * randn(rng, *p.shape)))
    av.nn.load_state_dict(model, tmodel.state_dict())
    optimizer = av.optim.Adam(model.parameters(), lr=args["lr"])
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=args["lr"])

    def preprocess(th, image):
        image = image * 255
        if args["n_bits"] < 8:
            image = th.floor(image / 2 ** (8 - args["n_bits"]))
        image = image / n_bins - 0.5
        return image

    def loss_fn(model, image, noise):
        log_p, logdet, _ = model(image + noise / n_bins)
        logdet = logdet.mean()
        loss, log_p, log_det = calc_loss(log_p, logdet, args["img_size"], n_bins)
        return loss, (log_p, log_det)

    def train_step(model, optimizer, image, noise):
        (loss, (log_p, log_det)), grads = av.value_and_grad(loss_fn, has_aux=True)(model, image, noise)
        warmup_lr = args["lr"]
        optimizer.param_groups[0]["lr"] = warmup_lr
        optimizer.step(grads)
        return loss, log_p, log_det, grads
    run = compiled(train_step, "numpy")

    model.train()
    tmodel.train()
    for i in range(4):
        raw = rng.random((args["batch"], 3, args["img_size"], args["img_size"])).astype(np.float32)
        noise = rng.random(raw.shape).astype(np.float32)  # torch.rand_like(image), drawn once for both
        image, timage = preprocess(av, av.tensor(raw)), preprocess(torch, T(raw))
        if i == 0:
            with torch.no_grad():
                tlog_p, tlogdet, _ = tmodel(timage + T(noise) / n_bins)
            with av.no_grad():
                log_p, logdet, _ = model(image + av.tensor(noise) / n_bins)
            assert rel(log_p, tlog_p) < 1e-5 and rel(logdet, tlogdet) < 1e-5
            assert all(m.initialized.item() == 1 for m in model.modules() if hasattr(m, "initialized"))
            same_weights(model, tmodel, 1e-5)  # the data-dependent actnorm initialization
            continue
        tlog_p, tlogdet, _ = tmodel(timage + T(noise) / n_bins)
        tlogdet = tlogdet.mean()
        tloss, tlog_p, tlog_det = calc_loss(tlog_p, tlogdet, args["img_size"], n_bins)
        tmodel.zero_grad()
        tloss.backward()
        toptimizer.param_groups[0]["lr"] = args["lr"]
        toptimizer.step()
        with strict():
            loss, log_p, log_det, grads = (run if i > 1 else train_step)(model, optimizer, image, av.tensor(noise))
        assert rel(loss, tloss) < 1e-5 and rel(log_p, tlog_p) < 1e-5 and rel(log_det, tlog_det) < 1e-5, i
        same_grads(grads, tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)
    assert run.cache_info().misses == 1

    # sampling (train.py's z_sample at temperature 0.7) and reconstruction through reverse
    model.eval()
    tmodel.eval()
    z_shapes = calc_z_shapes(3, args["img_size"], args["n_flow"], args["n_block"])
    z_sample = [randn(rng, 2, *z) * 0.7 for z in z_shapes]
    with av.no_grad():
        sample = model.reverse([av.tensor(z) for z in z_sample])
        _, _, z_outs = model(image)
        recon = model.reverse(z_outs, reconstruct=True)
    with torch.no_grad():
        tsample = tmodel.reverse([T(z) for z in z_sample])
    assert tuple(sample.shape) == (2, 3, 8, 8)
    assert rel(sample, tsample) < 1e-4
    assert rel(recon, image) < 1e-4


# -- 4. ConvLSTM (ndrplz/ConvLSTM_pytorch convlstm.py) for next-frame prediction: gates by torch.split of one conv,
#       zero states made in forward on the weight's device, a ModuleList of cells over return_all_layers, a 1x1 conv
#       head on the last layer's last hidden state, BCE with logits, Adam and clip_grad_norm_ --------------------------

def conv_lstm(lib, F_, th, input_dim=2, hidden_dim=[6, 4], kernel_size=(3, 3), num_layers=2,  # noqa: B006
              batch_first=True, return_all_layers=True):
    nn = lib
    torch = th

    class ConvLSTMCell(nn.Module):

        def __init__(self, input_dim, hidden_dim, kernel_size, bias):
            """
            Initialize ConvLSTM cell.
            """

            super(ConvLSTMCell, self).__init__()  # noqa: UP008

            self.input_dim = input_dim
            self.hidden_dim = hidden_dim

            self.kernel_size = kernel_size
            self.padding = kernel_size[0] // 2, kernel_size[1] // 2
            self.bias = bias

            self.conv = nn.Conv2d(in_channels=self.input_dim + self.hidden_dim,
                                  out_channels=4 * self.hidden_dim,
                                  kernel_size=self.kernel_size,
                                  padding=self.padding,
                                  bias=self.bias)

        def forward(self, input_tensor, cur_state):
            h_cur, c_cur = cur_state

            combined = torch.cat([input_tensor, h_cur], dim=1)  # concatenate along channel axis

            combined_conv = self.conv(combined)
            cc_i, cc_f, cc_o, cc_g = torch.split(combined_conv, self.hidden_dim, dim=1)
            i = torch.sigmoid(cc_i)
            f = torch.sigmoid(cc_f)
            o = torch.sigmoid(cc_o)
            g = torch.tanh(cc_g)

            c_next = f * c_cur + i * g
            h_next = o * torch.tanh(c_next)

            return h_next, c_next

        def init_hidden(self, batch_size, image_size):
            height, width = image_size
            return (torch.zeros(batch_size, self.hidden_dim, height, width, device=self.conv.weight.device),
                    torch.zeros(batch_size, self.hidden_dim, height, width, device=self.conv.weight.device))

    class ConvLSTM(nn.Module):

        def __init__(self, input_dim, hidden_dim, kernel_size, num_layers,
                     batch_first=False, bias=True, return_all_layers=False):
            super(ConvLSTM, self).__init__()  # noqa: UP008

            self._check_kernel_size_consistency(kernel_size)

            # Make sure that both `kernel_size` and `hidden_dim` are lists having len == num_layers
            kernel_size = self._extend_for_multilayer(kernel_size, num_layers)
            hidden_dim = self._extend_for_multilayer(hidden_dim, num_layers)
            if not len(kernel_size) == len(hidden_dim) == num_layers:
                raise ValueError('Inconsistent list length.')

            self.input_dim = input_dim
            self.hidden_dim = hidden_dim
            self.kernel_size = kernel_size
            self.num_layers = num_layers
            self.batch_first = batch_first
            self.bias = bias
            self.return_all_layers = return_all_layers

            cell_list = []
            for i in range(0, self.num_layers):
                cur_input_dim = self.input_dim if i == 0 else self.hidden_dim[i - 1]

                cell_list.append(ConvLSTMCell(input_dim=cur_input_dim,
                                              hidden_dim=self.hidden_dim[i],
                                              kernel_size=self.kernel_size[i],
                                              bias=self.bias))

            self.cell_list = nn.ModuleList(cell_list)

        def forward(self, input_tensor, hidden_state=None):
            if not self.batch_first:
                # (t, b, c, h, w) -> (b, t, c, h, w)
                input_tensor = input_tensor.permute(1, 0, 2, 3, 4)

            b, _, _, h, w = input_tensor.size()

            # Implement stateful ConvLSTM
            if hidden_state is not None:
                raise NotImplementedError()
            else:
                # Since the init is done in forward. Can send image size here
                hidden_state = self._init_hidden(batch_size=b,
                                                 image_size=(h, w))

            layer_output_list = []
            last_state_list = []

            seq_len = input_tensor.size(1)
            cur_layer_input = input_tensor

            for layer_idx in range(self.num_layers):

                h, c = hidden_state[layer_idx]
                output_inner = []
                for t in range(seq_len):
                    h, c = self.cell_list[layer_idx](input_tensor=cur_layer_input[:, t, :, :, :],
                                                     cur_state=[h, c])
                    output_inner.append(h)

                layer_output = torch.stack(output_inner, dim=1)
                cur_layer_input = layer_output

                layer_output_list.append(layer_output)
                last_state_list.append([h, c])

            if not self.return_all_layers:
                layer_output_list = layer_output_list[-1:]
                last_state_list = last_state_list[-1:]

            return layer_output_list, last_state_list

        def _init_hidden(self, batch_size, image_size):
            init_states = []
            for i in range(self.num_layers):
                init_states.append(self.cell_list[i].init_hidden(batch_size, image_size))
            return init_states

        @staticmethod
        def _check_kernel_size_consistency(kernel_size):
            if not (isinstance(kernel_size, tuple) or
                    (isinstance(kernel_size, list) and all([isinstance(elem, tuple) for elem in kernel_size]))):
                raise ValueError('`kernel_size` must be tuple or list of tuples')

        @staticmethod
        def _extend_for_multilayer(param, num_layers):
            if not isinstance(param, list):
                param = [param] * num_layers
            return param

    class NextFrame(nn.Module):  # the usual head on top: the last hidden state to the next frame's logits
        def __init__(self):
            super().__init__()
            self.convlstm = ConvLSTM(input_dim, hidden_dim, kernel_size, num_layers, batch_first=batch_first,
                                     bias=True, return_all_layers=return_all_layers)
            self.head = nn.Conv2d(hidden_dim[-1], input_dim, 1)

        def forward(self, frames):
            layer_output_list, last_state_list = self.convlstm(frames)
            h_last = last_state_list[-1][0]
            return self.head(h_last), layer_output_list

    return NextFrame()


@pytest.mark.parametrize("batch_first", [True, False])
def test_convlstm_split_gates_zero_states_on_the_weight_device_next_frame_bce_adam_and_clipping(batch_first):
    model, tmodel = pair(lambda lib, F_, th: conv_lstm(lib, F_, th, batch_first=batch_first), dtype=F32)
    assert model.convlstm.cell_list[0].bias is True and model.convlstm.cell_list[0].conv.bias is not None
    optimizer = av.optim.Adam(model.parameters(), lr=1e-3)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
    criterion, tcriterion = nn.BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss()

    def loss_fn(model, frames, target):
        logits, layer_outputs = model(frames)
        return criterion(logits, target), [o.detach() for o in layer_outputs]

    def train_step(model, optimizer, frames, target):
        (loss, outs), grads = av.value_and_grad(loss_fn, has_aux=True)(model, frames, target)
        norm = nn.utils.clip_grad_norm_(grads, max_norm=0.05)
        optimizer.step(grads)
        return loss, outs, norm, grads
    run = compiled(train_step, "numpy")

    rng = np.random.default_rng(4)
    for it in range(3):
        video = (rng.random((2, 5, 2, 6, 6)) < 0.3).astype(np.float32)  # (b, t, c, h, w) binary frames
        frames, target = video[:, :4], video[:, 4]
        if not batch_first:
            frames = frames.transpose(1, 0, 2, 3, 4).copy()
        tlogits, touts = tmodel(T(frames))
        tloss = tcriterion(tlogits, T(target))
        toptimizer.zero_grad()
        tloss.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(tmodel.parameters(), max_norm=0.05)
        toptimizer.step()
        with strict():
            loss, outs, norm, grads = (run if it else train_step)(model, optimizer, av.tensor(frames),
                                                                  av.tensor(target))
        assert rel(loss, tloss) < 1e-5 and rel(norm, tnorm) < 1e-5, it
        assert len(outs) == 2 and all(rel(o, to) < 1e-5 for o, to in zip(outs, touts))
        assert tuple(outs[0].shape) == (2, 4, 6, 6, 6)
        same_grads(grads, tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)
    assert run.cache_info().misses == 1


# -- regressions ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["qr", "slice"])
@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_a_parameter_made_from_a_view_of_a_temporary_trains_in_a_compiled_step(form, mode):
    """Glow's InvConv2d: `q, _ = torch.qr(weight); self.weight = nn.Parameter(q.unsqueeze(2).unsqueeze(3))` makes the
    parameter a view of `q` (Avalon's qr packs Q and R into one result, so a view of that, too), a tensor no model
    holds. Compiled, the optimizer's write went through to that base, which the trace held as a captured constant and
    never wrote back: the step left the weight as it was (and warned that it traced again on every call). The write
    is now the parameter's own state update, and the write-back after the call reaches the base, as torch's shared
    storage does."""
    def make(lib, F_, th, base):
        class M(lib.Module):
            def __init__(self):
                super().__init__()
                if form == "qr":
                    q, _ = th.qr(base)
                    self.weight = lib.Parameter(q.unsqueeze(2).unsqueeze(3))
                else:
                    self.weight = lib.Parameter(base[1:4].unsqueeze(2).unsqueeze(3))
                self.bias = lib.Parameter(th.zeros(3))

            def forward(self, x):
                return F_.conv2d(x, self.weight, self.bias)
        return M()

    rng = np.random.default_rng(3)
    base0 = randn(rng, 3, 3) if form == "qr" else randn(rng, 5, 3)
    tbase, base = T(base0.copy()), av.tensor(base0.copy())
    tmodel, model = make(torch.nn, TF, torch, tbase), make(nn, F, av, base)
    av.nn.load_state_dict(model, tmodel.state_dict())
    optimizer = av.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    toptimizer = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9)

    def loss_fn(model, x):
        return (model(x) ** 2).mean()

    def train_step(model, optimizer, x):
        loss, grads = av.value_and_grad(loss_fn)(model, x)
        optimizer.step(grads)
        return loss
    run = compiled(train_step, mode)
    for i in range(3):
        x = randn(rng, 2, 3, 4, 4)
        tloss = loss_fn(tmodel, T(x))
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        with strict():
            loss = run(model, optimizer, av.tensor(x))
        assert rel(loss, tloss) < 1e-5, i
        same_weights(model, tmodel, 1e-5)
    if mode != "eager":
        assert run.cache_info().misses == 1
    if form == "slice":  # the base reads the parameter's steps, as torch's shared storage
        assert rel(base, tbase) < 1e-5 and not np.allclose(base.numpy(), base0)
        assert rel(base[1:4], model.weight.squeeze()) == 0.0
