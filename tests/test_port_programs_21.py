"""Round 9g of port QA: 3-D and point-cloud code as popular repositories write it, written once over `lib`
(torch.nn or avalon.nn), `F_` and `th` (torch or avalon), trained a few steps from torch's weights on random
float64 data and compared with torch after every step (losses, parameters, buffers), the first step eagerly
and the rest compiled (numpy and cpu backends), with warnings as errors while tracing: PointNet++ SSG as
yanx27/Pointnet_Pointnet2_pytorch writes it in pure PyTorch (square_distance by -2 matmul and the squared
norms, farthest_point_sample's Python loop of `centroids[:, i] = farthest`, the centroid gathered by
`xyz[batch_indices, farthest, :]`, `distance[mask] = dist[mask]` and torch.max's indices, index_points'
batch index built by arange/view/repeat, query_ball_point's `group_idx[sqrdists > radius ** 2] = N`, sort and
the group_first replacement, sample_and_group and sample_and_group_all, PointNetSetAbstraction's Conv2d and
BatchNorm2d over the grouped points and the max over the neighbourhood, the classification head's
BatchNorm1d and log_softmax and nll_loss) with Adam and StepLR; DGCNN as WangYueFT/dgcnn writes it (knn by
-2 x^T x + |x|^2 and topk, get_graph_feature's idx_base and the view/transpose/contiguous gather of
`x.view(batch_size * num_points, -1)[idx, :]`, EdgeConv blocks of Conv2d, BatchNorm2d and LeakyReLU(0.2)
and the max over k, Conv1d over the concatenated features, adaptive max and avg pool1d concatenated, the
BatchNorm1d head, cal_loss's label smoothing by `zeros_like(pred).scatter(1, ...)`) with SGD with momentum
and weight decay under CosineAnnealingLR; a small 3-D U-Net as wolny/pytorch-3dunet and MONAI write it
(Conv3d + InstanceNorm3d(affine=True) + LeakyReLU double convolutions, MaxPool3d, upsampling by
ConvTranspose3d called with `output_size=` or by trilinear F.interpolate(align_corners=False) to the skip's
size, skip concatenation, a final 1x1x1 convolution) trained on a soft Dice loss (softmax over channels,
one_hot of the labels permuted to channels-first, smooth terms) plus cross entropy over the volume with
AdamW and nnU-Net's PolyLR as a LambdaLR; and VoxelNet's feature learning network as
skyhehe123/VoxelNet-pytorch writes it (the voxel mask from `torch.ne(torch.max(x, 2)[0], 0)`, stacked VFE
layers of a Linear/BatchNorm1d FCN on `x.view(kk * t, -1)`, the locally aggregated max repeated over the
points and concatenated, the mask applied by `mask.unsqueeze(2).repeat(...)` and `.float()`, the
element-wise max per voxel, voxel_indexing's `dense[:, coords[:, 0], coords[:, 1], coords[:, 2],
coords[:, 3]] = sparse_features.t()`, CML's Conv3d/BatchNorm3d middle layers and a small RPN of Conv2d,
BatchNorm2d and ConvTranspose2d over the depth-folded volume) with VoxelLoss (the anchors' positive and
negative log-sigmoid terms and a summed smooth-L1 over the positive anchors), SGD with momentum.

The random draws (PointNet++'s initial farthest point per set-abstraction level, which farthest_point_sample
draws by torch.randint) are drawn beforehand and given as inputs. Dropout is 0. What the ports change:
gradients are values (`av.value_and_grad`, `opt.step(grads)`), and float32 that the programs cast to
(`.float()` of a one-hot or a mask) is the test's float64 (`.to(x.dtype)`), so that the comparison is at
float64 roundoff. farthest_point_sample's `distance[mask] = dist[mask]` and query_ball_point's
`group_idx[mask] = group_first[mask]` read a masked selection, whose shape depends on the mask's values: the
README says such a read runs eagerly and is an error inside a traced function (a compiled one, or the loss
that `av.value_and_grad` traces, eagerly too), so the training steps run the equivalent
`th.where(mask, dist, distance)` (the `as_written` flag the port adds), the eager forward in eval mode runs
them as written, and a test checks both forms against torch's functions. Sizes are small (24 points, 12
voxels, 6^3 volumes) and the programs' optimizers and batches are chosen so that the comparison is
well-conditioned: PointNet++ with batch norm over 4 clouds amplifies a 1e-15 perturbation of torch's own weights
to 1e-10 in four steps, so it trains on 8; the bias of a convolution or linear layer that a batch norm follows
has a gradient that is zero in exact arithmetic (~1e-16 of roundoff), which Adam divides by |g| + eps into
~lr * 1e-8 steps on both sides, so VoxelNet, whose every such layer keeps its bias, trains with SGD, and
PointNet++'s sa3 last batch-norm bias, whose gradient bn1 cancels for channels positive in every cloud, is
compared in absolute terms (see same_weights_but_roundoff_biases). skyhehe123's voxel_indexing
writes `sparse_features` into `dense[:, ...]`, whose indexed region is (dim, K): the features are (K, dim), so
the port writes their transpose. The regression at the end is what the programs found: `x[:, i, j] = v`
(integer arrays after a full slice, VoxelNet's voxel scatter) was refused, integer-array assignment being taken
in the leading dims only.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict

import avalon as av
from avalon import nn as nn_
from avalon import optim
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def th_of(tensor):
    """torch or avalon, whichever `tensor` is from (the repositories' utilities call `torch.` directly)."""
    return torch if isinstance(tensor, torch.Tensor) else av


# -- 1. PointNet++ SSG (yanx27/Pointnet_Pointnet2_pytorch: models/pointnet2_utils.py, pointnet2_cls_ssg.py,
#       train_classification.py) ----------------------------------------------------------------------------

def square_distance(src, dst):
    B, N, _ = src.shape
    _, M, _ = dst.shape
    dist = -2 * th_of(src).matmul(src, dst.permute(0, 2, 1))
    dist += th_of(src).sum(src ** 2, -1).view(B, N, 1)
    dist += th_of(src).sum(dst ** 2, -1).view(B, 1, M)
    return dist


def index_points(points, idx):
    th = th_of(points)
    B = points.shape[0]
    view_shape = list(idx.shape)
    view_shape[1:] = [1] * (len(view_shape) - 1)
    repeat_shape = list(idx.shape)
    repeat_shape[0] = 1
    batch_indices = th.arange(B, dtype=th.long).view(view_shape).repeat(repeat_shape)
    new_points = points[batch_indices, idx, :]
    return new_points


def farthest_point_sample(xyz, npoint, farthest, as_written=True):
    """`farthest`, torch.randint(0, N, (B,)) there, is given."""
    th = th_of(xyz)
    B, N, C = xyz.shape
    centroids = th.zeros(B, npoint, dtype=th.long)
    distance = th.ones(B, N, dtype=xyz.dtype) * 1e10  # torch.ones(B, N) is float32 there: float64 here
    batch_indices = th.arange(B, dtype=th.long)
    for i in range(npoint):
        centroids[:, i] = farthest
        centroid = xyz[batch_indices, farthest, :].view(B, 1, 3)
        dist = th.sum((xyz - centroid) ** 2, -1)
        mask = dist < distance
        if as_written:
            distance[mask] = dist[mask]
        else:
            distance = th.where(mask, dist, distance)
        farthest = th.max(distance, -1)[1]
    return centroids


def query_ball_point(radius, nsample, xyz, new_xyz, as_written=True):
    th = th_of(xyz)
    B, N, C = xyz.shape
    _, S, _ = new_xyz.shape
    group_idx = th.arange(N, dtype=th.long).view(1, 1, N).repeat([B, S, 1])
    sqrdists = square_distance(new_xyz, xyz)
    group_idx[sqrdists > radius ** 2] = N
    group_idx = group_idx.sort(dim=-1)[0][:, :, :nsample]
    group_first = group_idx[:, :, 0].view(B, S, 1).repeat([1, 1, nsample])
    mask = group_idx == N
    if as_written:
        group_idx[mask] = group_first[mask]
    else:
        group_idx = th.where(mask, group_first, group_idx)
    return group_idx


def sample_and_group(npoint, radius, nsample, xyz, points, farthest, as_written=True):
    B, N, C = xyz.shape
    S = npoint
    fps_idx = farthest_point_sample(xyz, npoint, farthest, as_written)  # [B, npoint, C]
    new_xyz = index_points(xyz, fps_idx)
    idx = query_ball_point(radius, nsample, xyz, new_xyz, as_written)
    grouped_xyz = index_points(xyz, idx)  # [B, npoint, nsample, C]
    grouped_xyz_norm = grouped_xyz - new_xyz.view(B, S, 1, C)

    if points is not None:
        grouped_points = index_points(points, idx)
        new_points = th_of(xyz).cat([grouped_xyz_norm, grouped_points], dim=-1)  # [B, npoint, nsample, C+D]
    else:
        new_points = grouped_xyz_norm
    return new_xyz, new_points


def sample_and_group_all(xyz, points):
    th = th_of(xyz)
    B, N, C = xyz.shape
    new_xyz = th.zeros(B, 1, C, dtype=xyz.dtype)
    grouped_xyz = xyz.view(B, 1, N, C)
    if points is not None:
        new_points = th.cat([grouped_xyz, points.view(B, 1, N, -1)], dim=-1)
    else:
        new_points = grouped_xyz
    return new_xyz, new_points


def pointnet2_ssg(lib, F_, th, num_class=4, normal_channel=True, widths=(8, 16, 32)):
    class PointNetSetAbstraction(lib.Module):
        def __init__(self, npoint, radius, nsample, in_channel, mlp, group_all):
            super().__init__()
            self.npoint = npoint
            self.radius = radius
            self.nsample = nsample
            self.mlp_convs = lib.ModuleList()
            self.mlp_bns = lib.ModuleList()
            last_channel = in_channel
            for out_channel in mlp:
                self.mlp_convs.append(lib.Conv2d(last_channel, out_channel, 1))
                self.mlp_bns.append(lib.BatchNorm2d(out_channel))
                last_channel = out_channel
            self.group_all = group_all

        def forward(self, xyz, points, farthest=None, as_written=True):
            xyz = xyz.permute(0, 2, 1)
            if points is not None:
                points = points.permute(0, 2, 1)

            if self.group_all:
                new_xyz, new_points = sample_and_group_all(xyz, points)
            else:
                new_xyz, new_points = sample_and_group(self.npoint, self.radius, self.nsample, xyz, points,
                                                       farthest, as_written)
            # new_xyz: sampled points position data, [B, npoint, C]
            # new_points: sampled points data, [B, npoint, nsample, C+D]
            new_points = new_points.permute(0, 3, 2, 1)  # [B, C+D, nsample,npoint]
            for i, conv in enumerate(self.mlp_convs):
                bn = self.mlp_bns[i]
                new_points = F_.relu(bn(conv(new_points)))

            new_points = th.max(new_points, 2)[0]
            new_xyz = new_xyz.permute(0, 2, 1)
            return new_xyz, new_points

    a, b, c = widths

    class get_model(lib.Module):
        def __init__(self):
            super().__init__()
            in_channel = 6 if normal_channel else 3
            self.normal_channel = normal_channel
            self.as_written = True  # see the module docstring
            self.sa1 = PointNetSetAbstraction(npoint=8, radius=0.5, nsample=6, in_channel=in_channel,
                                              mlp=[a, a, b], group_all=False)
            self.sa2 = PointNetSetAbstraction(npoint=4, radius=0.9, nsample=4, in_channel=b + 3, mlp=[b, b, c],
                                              group_all=False)
            self.sa3 = PointNetSetAbstraction(npoint=None, radius=None, nsample=None, in_channel=c + 3,
                                              mlp=[c, c, 2 * c], group_all=True)
            self.fc1 = lib.Linear(2 * c, c)
            self.bn1 = lib.BatchNorm1d(c)
            self.drop1 = lib.Dropout(0.0)  # 0.4 there
            self.fc2 = lib.Linear(c, b)
            self.bn2 = lib.BatchNorm1d(b)
            self.drop2 = lib.Dropout(0.0)
            self.fc3 = lib.Linear(b, num_class)

        def forward(self, xyz, fps_init):
            B, _, _ = xyz.shape
            if self.normal_channel:
                norm = xyz[:, 3:, :]
                xyz = xyz[:, :3, :]
            else:
                norm = None
            l1_xyz, l1_points = self.sa1(xyz, norm, fps_init[0], self.as_written)
            l2_xyz, l2_points = self.sa2(l1_xyz, l1_points, fps_init[1], self.as_written)
            l3_xyz, l3_points = self.sa3(l2_xyz, l2_points)
            x = l3_points.view(B, 2 * c)
            x = self.drop1(F_.relu(self.bn1(self.fc1(x))))
            x = self.drop2(F_.relu(self.bn2(self.fc2(x))))
            x = self.fc3(x)
            x = F_.log_softmax(x, -1)
            return x, l3_points
    return get_model()


def pointnet2_loss(F_):
    def loss(model, points, target, fps_init):
        pred, trans_feat = model(points, fps_init)
        return F_.nll_loss(pred, target.long())
    return loss


def point_cloud_batch(rng, B=4, N=24, num_class=4, normals=True):
    xyz = rng.uniform(-1, 1, (B, N, 3))
    if normals:
        nrm = rng.standard_normal((B, N, 3))
        xyz = np.concatenate([xyz, nrm / np.linalg.norm(nrm, axis=-1, keepdims=True)], -1)
    fps_init = rng.integers(0, N, (2, B))
    fps_init[1] = rng.integers(0, 8, B)  # sa2 samples sa1's 8 centroids
    return xyz, rng.integers(0, num_class, B), fps_init


def same_weights_but_roundoff_biases(ours, theirs, tol, key="sa3.mlp_bns.2.bias"):
    """same_weights, except for `key`, whose gradient is zero, or nearly, in exact arithmetic: a channel of sa3's
    last batch norm that is positive for every cloud shifts the max-pooled feature of the whole batch alike,
    which bn1 removes, so its gradient is what cancels, ~1e-17 of roundoff beside a small real part, and Adam,
    dividing by |g| + eps, turns that roundoff into steps of lr * 1e-17 / eps ~ 1e-12 on both sides: it is
    compared in absolute terms, to 1e-10."""
    sd = theirs.state_dict()
    assert sorted(ours.state_dict()) == sorted(sd)
    for k, v in ours.state_dict().items():
        a, b = v.numpy(), sd[k].detach().numpy()
        scale = 1.0 if k == key else max(np.abs(b).max(initial=0), 1e-4)
        assert np.abs(a - b).max(initial=0) / scale < tol, k


def test_pointnet2_fps_and_ball_query_in_both_forms_match_torch():
    rng = np.random.default_rng(3)
    xyz = rng.uniform(-1, 1, (3, 20, 3))
    farthest = rng.integers(0, 20, 3)
    want = farthest_point_sample(T(xyz), 6, T(farthest))
    new_xyz = index_points(T(xyz), want)
    want_idx = query_ball_point(0.6, 5, T(xyz), new_xyz)
    for as_written in (True, False):
        got = farthest_point_sample(av.tensor(xyz), 6, av.tensor(farthest), as_written)
        assert got.tolist() == want.tolist()
        idx = query_ball_point(0.6, 5, av.tensor(xyz), av.tensor(new_xyz.numpy()), as_written)
        assert idx.tolist() == want_idx.tolist()
    assert (want_idx[:, :, 0:1] != want_idx).any()  # some neighbourhoods are padded by their first point
    fn = compiled(lambda x, f: query_ball_point(0.6, 5, x, index_points(x, farthest_point_sample(x, 6, f, False)),
                                                False), "numpy")
    with strict():
        assert fn(av.tensor(xyz), av.tensor(farthest)).tolist() == want_idx.tolist()


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_pointnet2_ssg_set_abstraction_classifier_with_adam_and_step_lr(mode):
    ours, theirs = pair(pointnet2_ssg)
    kw = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-08, weight_decay=1e-4)
    opt, topt = optim.Adam(ours.parameters(), **kw), torch.optim.Adam(theirs.parameters(), **kw)
    sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=2, gamma=0.7)
    loss_fn, tloss_fn = pointnet2_loss(F), pointnet2_loss(TF)

    def step(model, opt, *batch):
        loss, grads = av.value_and_grad(loss_fn)(model, *batch)
        opt.step(grads)
        return loss
    run = compiled(step, mode)
    rng = np.random.default_rng(0)
    for it in range(4):
        points, target, fps_init = point_cloud_batch(rng, B=8)  # batch norm over 4 clouds is ill-conditioned
        points = points.transpose(0, 2, 1)  # train_classification.py's points.transpose(2, 1)
        topt.zero_grad()
        tl = tloss_fn(theirs, *map(T, (points, target, fps_init)))
        tl.backward()
        topt.step()
        tsched.step()
        ours.as_written = False  # see the module docstring
        with strict():
            loss = (run if it else step)(ours, opt, *map(av.tensor, (points, target, fps_init)))
        sched.step()
        assert rel(loss, tl) < 1e-12, it
        same_weights_but_roundoff_biases(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1
    ours.eval(), theirs.eval()
    ours.as_written = True
    points, _, fps_init = point_cloud_batch(rng, B=2)
    with torch.no_grad():
        want, _ = theirs(T(points.transpose(0, 2, 1)), T(fps_init))
    with av.no_grad():
        got, _ = ours(av.tensor(points.transpose(0, 2, 1)), av.tensor(fps_init))
    assert rel(got, want) < 1e-12


# -- 2. DGCNN (WangYueFT/dgcnn: pytorch/model.py, util.py's cal_loss, main.py) ----------------------------------

def knn(x, k):
    th = th_of(x)
    inner = -2 * th.matmul(x.transpose(2, 1), x)
    xx = th.sum(x ** 2, dim=1, keepdim=True)
    pairwise_distance = -xx - inner - xx.transpose(2, 1)

    idx = pairwise_distance.topk(k=k, dim=-1)[1]  # (batch_size, num_points, k)
    return idx


def get_graph_feature(x, k=20, idx=None):
    th = th_of(x)
    batch_size = x.size(0)
    num_points = x.size(2)
    x = x.view(batch_size, -1, num_points)
    if idx is None:
        idx = knn(x, k=k)  # (batch_size, num_points, k)

    idx_base = th.arange(0, batch_size).view(-1, 1, 1) * num_points  # device=torch.device('cuda') there

    idx = idx + idx_base

    idx = idx.view(-1)

    _, num_dims, _ = x.size()

    # (batch_size, num_points, num_dims)  -> (batch_size*num_points, num_dims)
    x = x.transpose(2, 1).contiguous()
    feature = x.view(batch_size * num_points, -1)[idx, :]
    feature = feature.view(batch_size, num_points, k, num_dims)
    x = x.view(batch_size, num_points, 1, num_dims).repeat(1, 1, k, 1)

    feature = th.cat((feature - x, x), dim=3).permute(0, 3, 1, 2).contiguous()

    return feature


class DGCNNArgs:
    k = 4
    emb_dims = 16
    dropout = 0.0  # 0.5 there


def dgcnn(lib, F_, th, args=DGCNNArgs, output_channels=5, w=(8, 8, 16, 16)):
    class DGCNN(lib.Module):
        def __init__(self, args, output_channels=40):
            super().__init__()
            self.args = args
            self.k = args.k

            self.bn1 = lib.BatchNorm2d(w[0])
            self.bn2 = lib.BatchNorm2d(w[1])
            self.bn3 = lib.BatchNorm2d(w[2])
            self.bn4 = lib.BatchNorm2d(w[3])
            self.bn5 = lib.BatchNorm1d(args.emb_dims)

            self.conv1 = lib.Sequential(lib.Conv2d(6, w[0], kernel_size=1, bias=False),
                                        self.bn1,
                                        lib.LeakyReLU(negative_slope=0.2))
            self.conv2 = lib.Sequential(lib.Conv2d(w[0] * 2, w[1], kernel_size=1, bias=False),
                                        self.bn2,
                                        lib.LeakyReLU(negative_slope=0.2))
            self.conv3 = lib.Sequential(lib.Conv2d(w[1] * 2, w[2], kernel_size=1, bias=False),
                                        self.bn3,
                                        lib.LeakyReLU(negative_slope=0.2))
            self.conv4 = lib.Sequential(lib.Conv2d(w[2] * 2, w[3], kernel_size=1, bias=False),
                                        self.bn4,
                                        lib.LeakyReLU(negative_slope=0.2))
            self.conv5 = lib.Sequential(lib.Conv1d(sum(w), args.emb_dims, kernel_size=1, bias=False),
                                        self.bn5,
                                        lib.LeakyReLU(negative_slope=0.2))
            self.linear1 = lib.Linear(args.emb_dims * 2, 16, bias=False)
            self.bn6 = lib.BatchNorm1d(16)
            self.dp1 = lib.Dropout(p=args.dropout)
            self.linear2 = lib.Linear(16, 8)
            self.bn7 = lib.BatchNorm1d(8)
            self.dp2 = lib.Dropout(p=args.dropout)
            self.linear3 = lib.Linear(8, output_channels)

        def forward(self, x):
            batch_size = x.size(0)
            x = get_graph_feature(x, k=self.k)
            x = self.conv1(x)
            x1 = x.max(dim=-1, keepdim=False)[0]

            x = get_graph_feature(x1, k=self.k)
            x = self.conv2(x)
            x2 = x.max(dim=-1, keepdim=False)[0]

            x = get_graph_feature(x2, k=self.k)
            x = self.conv3(x)
            x3 = x.max(dim=-1, keepdim=False)[0]

            x = get_graph_feature(x3, k=self.k)
            x = self.conv4(x)
            x4 = x.max(dim=-1, keepdim=False)[0]

            x = th.cat((x1, x2, x3, x4), dim=1)

            x = self.conv5(x)
            x1 = F_.adaptive_max_pool1d(x, 1).view(batch_size, -1)
            x2 = F_.adaptive_avg_pool1d(x, 1).view(batch_size, -1)
            x = th.cat((x1, x2), 1)

            x = F_.leaky_relu(self.bn6(self.linear1(x)), negative_slope=0.2)
            x = self.dp1(x)
            x = F_.leaky_relu(self.bn7(self.linear2(x)), negative_slope=0.2)
            x = self.dp2(x)
            x = self.linear3(x)
            return x
    return DGCNN(args, output_channels)


def cal_loss(pred, gold, smoothing=True):
    """Calculate cross entropy loss, apply label smoothing if needed."""
    th = th_of(pred)
    F_ = TF if th is torch else F
    gold = gold.contiguous().view(-1)

    if smoothing:
        eps = 0.2
        n_class = pred.size(1)

        one_hot = th.zeros_like(pred).scatter(1, gold.view(-1, 1), 1)
        one_hot = one_hot * (1 - eps) + (1 - one_hot) * eps / (n_class - 1)
        log_prb = F_.log_softmax(pred, dim=1)

        loss = -(one_hot * log_prb).sum(dim=1).mean()
    else:
        loss = F_.cross_entropy(pred, gold, reduction='mean')

    return loss


def dgcnn_loss(model, data, label, smoothing=True):
    logits = model(data)
    return cal_loss(logits, label, smoothing)


@pytest.mark.parametrize("smoothing,mode", [(True, "numpy"), (False, "cpu")])
def test_dgcnn_edge_conv_knn_graph_features_and_label_smoothing(smoothing, mode):
    ours, theirs = pair(dgcnn)
    epochs = 4
    opt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=1e-3)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, epochs, eta_min=1e-3)

    def step(model, opt, data, label):
        loss, grads = av.value_and_grad(dgcnn_loss)(model, data, label, smoothing)
        opt.step(grads)
        return loss
    run = compiled(step, mode)
    rng = np.random.default_rng(1)
    for it in range(epochs):
        data, label, _ = point_cloud_batch(rng, B=4, N=12, num_class=5, normals=False)
        data = data.transpose(0, 2, 1)  # main.py's data.permute(0, 2, 1)
        topt.zero_grad()
        tl = dgcnn_loss(theirs, T(data), T(label), smoothing)
        tl.backward()
        topt.step()
        tsched.step()
        with strict():
            loss = (run if it else step)(ours, opt, av.tensor(data), av.tensor(label))
        sched.step()
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1
    ours.eval(), theirs.eval()
    data = rng.uniform(-1, 1, (2, 3, 12))
    with torch.no_grad():
        want = theirs(T(data))
    with av.no_grad():
        got = ours(av.tensor(data))
    assert rel(got, want) < 1e-12


# -- 3. A small 3-D U-Net (wolny/pytorch-3dunet's DoubleConv/Encoder/Decoder with 'cil' order; MONAI's DiceLoss
#       with softmax and to_onehot_y; nnU-Net's PolyLR) ---------------------------------------------------------

def unet3d(lib, F_, th, in_channels=1, out_channels=3, f_maps=(4, 8), upsample="deconv"):
    class SingleConv(lib.Sequential):
        """'cil': Conv3d, InstanceNorm3d(affine=True), LeakyReLU."""

        def __init__(self, in_channels, out_channels, kernel_size=3, padding=1):
            super().__init__()
            self.add_module('conv', lib.Conv3d(in_channels, out_channels, kernel_size, padding=padding, bias=False))
            self.add_module('instancenorm', lib.InstanceNorm3d(out_channels, affine=True))
            self.add_module('LeakyReLU', lib.LeakyReLU(negative_slope=0.1, inplace=True))

    class DoubleConv(lib.Sequential):
        def __init__(self, in_channels, out_channels, encoder):
            super().__init__()
            if encoder:
                conv1_in_channels = in_channels
                conv1_out_channels = out_channels // 2
                if conv1_out_channels < in_channels:
                    conv1_out_channels = in_channels
                conv2_in_channels, conv2_out_channels = conv1_out_channels, out_channels
            else:
                conv1_in_channels, conv1_out_channels = in_channels, out_channels
                conv2_in_channels, conv2_out_channels = out_channels, out_channels
            self.add_module('SingleConv1', SingleConv(conv1_in_channels, conv1_out_channels))
            self.add_module('SingleConv2', SingleConv(conv2_in_channels, conv2_out_channels))

    class Encoder(lib.Module):
        def __init__(self, in_channels, out_channels, apply_pooling=True, pool_kernel_size=2):
            super().__init__()
            self.pooling = lib.MaxPool3d(kernel_size=pool_kernel_size) if apply_pooling else None
            self.basic_module = DoubleConv(in_channels, out_channels, encoder=True)

        def forward(self, x):
            if self.pooling is not None:
                x = self.pooling(x)
            return self.basic_module(x)

    class TransposeConvUpsampling(lib.Module):
        def __init__(self, in_channels, out_channels, kernel_size=3, scale_factor=2):
            super().__init__()
            self.conv_transposed = lib.ConvTranspose3d(in_channels, out_channels, kernel_size=kernel_size,
                                                       stride=scale_factor, padding=1, bias=False)

        def forward(self, encoder_features, x):
            output_size = encoder_features.size()[2:]
            return self.conv_transposed(x, output_size=output_size)

    class InterpolateUpsampling(lib.Module):
        def forward(self, encoder_features, x):
            output_size = encoder_features.size()[2:]
            return F_.interpolate(x, size=output_size, mode='trilinear', align_corners=False)

    class Decoder(lib.Module):
        def __init__(self, in_channels, out_channels):
            super().__init__()
            if upsample == "deconv":
                self.upsampling = TransposeConvUpsampling(in_channels, out_channels)
                in_channels = 2 * out_channels
            else:
                self.upsampling = InterpolateUpsampling()
                in_channels = in_channels + out_channels
            self.basic_module = DoubleConv(in_channels, out_channels, encoder=False)

        def forward(self, encoder_features, x):
            x = self.upsampling(encoder_features=encoder_features, x=x)
            x = th.cat((encoder_features, x), dim=1)
            return self.basic_module(x)

    class UNet3D(lib.Module):
        def __init__(self):
            super().__init__()
            self.encoders = lib.ModuleList([Encoder(in_channels, f_maps[0], apply_pooling=False)] + [
                Encoder(f_maps[i - 1], f_maps[i]) for i in range(1, len(f_maps))])
            reversed_f_maps = list(reversed(f_maps))
            self.decoders = lib.ModuleList([Decoder(reversed_f_maps[i], reversed_f_maps[i + 1])
                                            for i in range(len(reversed_f_maps) - 1)])
            self.final_conv = lib.Conv3d(f_maps[0], out_channels, 1)

        def forward(self, x):
            encoders_features = []
            for encoder in self.encoders:
                x = encoder(x)
                encoders_features.insert(0, x)
            encoders_features = encoders_features[1:]
            for decoder, encoder_features in zip(self.decoders, encoders_features):
                x = decoder(encoder_features, x)
            return self.final_conv(x)
    return UNet3D()


def dice_ce_loss(F_, th):
    def soft_dice(input, target, smooth_nr=1e-5, smooth_dr=1e-5):
        n_pred_ch = input.shape[1]
        input = th.softmax(input, 1)
        target = F_.one_hot(target.long(), num_classes=n_pred_ch).permute(0, 4, 1, 2, 3).to(input.dtype)
        reduce_axis = list(range(2, len(input.shape)))
        intersection = th.sum(target * input, dim=reduce_axis)
        ground_o = th.sum(target, dim=reduce_axis)
        pred_o = th.sum(input, dim=reduce_axis)
        denominator = ground_o + pred_o
        f = 1.0 - (2.0 * intersection + smooth_nr) / (denominator + smooth_dr)
        return th.mean(f)

    def loss(model, volume, labels):
        logits = model(volume)
        return soft_dice(logits, labels) + F_.cross_entropy(logits, labels)
    return loss


@pytest.mark.parametrize("upsample,mode", [("deconv", "numpy"), ("trilinear", "cpu")])
def test_unet3d_instance_norm_skips_dice_plus_ce_adamw_poly_lr(upsample, mode):
    ours, theirs = pair(lambda lib, F_, th: unet3d(lib, F_, th, upsample=upsample))
    kw = dict(lr=1e-2, weight_decay=3e-5)
    opt, topt = optim.AdamW(ours.parameters(), **kw), torch.optim.AdamW(theirs.parameters(), **kw)
    max_epochs = 6

    def poly(epoch, exponent=0.9):
        return (1 - epoch / max_epochs) ** exponent
    sched, tsched = optim.lr_scheduler.LambdaLR(opt, poly), torch.optim.lr_scheduler.LambdaLR(topt, poly)
    loss_fn, tloss_fn = dice_ce_loss(F, av), dice_ce_loss(TF, torch)

    def step(model, opt, volume, labels):
        loss, grads = av.value_and_grad(loss_fn)(model, volume, labels)
        opt.step(grads)
        return loss
    run = compiled(step, mode)
    rng = np.random.default_rng(2)
    for it in range(3):
        volume = rng.standard_normal((2, 1, 6, 6, 6))
        labels = (volume[:, 0] > 0.5).astype(np.int64) + (volume[:, 0] > 1.2)
        topt.zero_grad()
        tl = tloss_fn(theirs, T(volume), T(labels))
        tl.backward()
        topt.step()
        tsched.step()
        with strict():
            loss = (run if it else step)(ours, opt, av.tensor(volume), av.tensor(labels))
        sched.step()
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1


# -- 4. VoxelNet (skyhehe123/VoxelNet-pytorch: voxelnet.py's FCN, VFE, SVFE, CML, voxel_indexing; loss.py's
#       VoxelLoss), with a small RPN ----------------------------------------------------------------------------

class VoxelCfg:
    N, D, H, W, T = 2, 8, 4, 4, 5  # batch, grid depth/height/width, points per voxel


def voxelnet(lib, F_, th, cfg=VoxelCfg, c=(8, 16)):
    class FCN(lib.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.cout = cout
            self.linear = lib.Linear(cin, cout)
            self.bn = lib.BatchNorm1d(cout)

        def forward(self, x):
            # KK is the stacked k across batch
            kk, t, _ = x.shape
            x = self.linear(x.view(kk * t, -1))
            x = F_.relu(self.bn(x))
            return x.view(kk, t, -1)

    class VFE(lib.Module):
        def __init__(self, cin, cout):
            super().__init__()
            assert cout % 2 == 0
            self.units = cout // 2
            self.fcn = FCN(cin, self.units)

        def forward(self, x, mask):
            # point-wise feauture
            pwf = self.fcn(x)
            # locally aggregated feature
            laf = th.max(pwf, 1)[0].unsqueeze(1).repeat(1, cfg.T, 1)
            # point-wise concat feature
            pwcf = th.cat((pwf, laf), dim=2)
            # apply mask
            mask = mask.unsqueeze(2).repeat(1, 1, self.units * 2)
            pwcf = pwcf * mask.to(pwcf.dtype)  # mask.float() there: float64 here
            return pwcf

    class SVFE(lib.Module):
        def __init__(self):
            super().__init__()
            self.vfe_1 = VFE(7, c[0])
            self.vfe_2 = VFE(c[0], c[1])
            self.fcn = FCN(c[1], c[1])

        def forward(self, x):
            mask = th.ne(th.max(x, 2)[0], 0)
            x = self.vfe_1(x, mask)
            x = self.vfe_2(x, mask)
            x = self.fcn(x)
            # element-wise max pooling
            x = th.max(x, 1)[0]
            return x

    class Conv3d(lib.Module):
        def __init__(self, in_channels, out_channels, k, s, p, batch_norm=True):
            super().__init__()
            self.conv = lib.Conv3d(in_channels, out_channels, kernel_size=k, stride=s, padding=p)
            if batch_norm:
                self.bn = lib.BatchNorm3d(out_channels)
            else:
                self.bn = None

        def forward(self, x):
            x = self.conv(x)
            if self.bn is not None:
                x = self.bn(x)
            return F_.relu(x, inplace=True)

    class CML(lib.Module):
        def __init__(self):
            super().__init__()
            self.conv3d_1 = Conv3d(c[1], c[0], 3, s=(2, 1, 1), p=(1, 1, 1))
            self.conv3d_2 = Conv3d(c[0], c[0], 3, s=(1, 1, 1), p=(0, 1, 1))
            self.conv3d_3 = Conv3d(c[0], c[0], 3, s=(2, 1, 1), p=(1, 1, 1))

        def forward(self, x):
            x = self.conv3d_1(x)
            x = self.conv3d_2(x)
            x = self.conv3d_3(x)
            return x

    class Conv2d(lib.Module):
        def __init__(self, in_channels, out_channels, k, s, p, activation=True, batch_norm=True):
            super().__init__()
            self.conv = lib.Conv2d(in_channels, out_channels, kernel_size=k, stride=s, padding=p)
            self.bn = lib.BatchNorm2d(out_channels) if batch_norm else None
            self.activation = activation

        def forward(self, x):
            x = self.conv(x)
            if self.bn is not None:
                x = self.bn(x)
            return F_.relu(x, inplace=True) if self.activation else x

    class RPN(lib.Module):
        def __init__(self, cin, anchors=2):
            super().__init__()
            self.block_1 = lib.Sequential(Conv2d(cin, c[0], 3, 1, 1), Conv2d(c[0], c[0], 3, 1, 1))
            self.block_2 = lib.Sequential(Conv2d(c[0], c[0], 3, 2, 1), Conv2d(c[0], c[0], 3, 1, 1))
            self.deconv_1 = lib.Sequential(lib.ConvTranspose2d(c[0], c[0], 1, 1, 0), lib.BatchNorm2d(c[0]))
            self.deconv_2 = lib.Sequential(lib.ConvTranspose2d(c[0], c[0], 2, 2, 0), lib.BatchNorm2d(c[0]))
            self.score_head = Conv2d(2 * c[0], anchors, 1, 1, 0, activation=False, batch_norm=False)
            self.reg_head = Conv2d(2 * c[0], 7 * anchors, 1, 1, 0, activation=False, batch_norm=False)

        def forward(self, x):
            x = self.block_1(x)
            x_skip_1 = x
            x = self.block_2(x)
            x_0 = self.deconv_1(x_skip_1)
            x_1 = self.deconv_2(x)
            x = th.cat((x_0, x_1), 1)
            return self.score_head(x), self.reg_head(x)

    class VoxelNet(lib.Module):
        def __init__(self):
            super().__init__()
            self.svfe = SVFE()
            self.cml = CML()
            self.rpn = RPN(c[0] * (cfg.D // 8))

        def voxel_indexing(self, sparse_features, coords):
            dim = sparse_features.shape[-1]
            dense_feature = th.zeros(dim, cfg.N, cfg.D, cfg.H, cfg.W, dtype=sparse_features.dtype)
            dense_feature[:, coords[:, 0], coords[:, 1], coords[:, 2], coords[:, 3]] = sparse_features.t()
            return dense_feature.transpose(0, 1)

        def forward(self, voxel_features, voxel_coords):
            # feature learning network
            vwfs = self.svfe(voxel_features)
            vwfs = self.voxel_indexing(vwfs, voxel_coords)
            # convolutional middle network
            cml_out = self.cml(vwfs)
            # region proposal network
            # merge the depth and feature dim into one, output probability score map and regression map
            psm, rm = self.rpn(cml_out.view(cfg.N, -1, cfg.H, cfg.W))
            return psm, rm
    return VoxelNet()


def voxel_loss(lib, F_, th, alpha=1.5, beta=1):
    class VoxelLoss(lib.Module):
        def __init__(self, alpha, beta):
            super().__init__()
            self.smoothl1loss = lib.SmoothL1Loss(reduction='sum')  # size_average=False there
            self.alpha = alpha
            self.beta = beta

        def forward(self, rm, psm, pos_equal_one, neg_equal_one, targets):
            p_pos = th.sigmoid(psm.permute(0, 2, 3, 1))
            rm = rm.permute(0, 2, 3, 1).contiguous()
            rm = rm.view(rm.size(0), rm.size(1), rm.size(2), -1, 7)
            targets = targets.view(targets.size(0), targets.size(1), targets.size(2), -1, 7)
            pos_equal_one_for_reg = pos_equal_one.unsqueeze(pos_equal_one.dim()).expand(-1, -1, -1, -1, 7)

            rm_pos = rm * pos_equal_one_for_reg
            targets_pos = targets * pos_equal_one_for_reg

            cls_pos_loss = -pos_equal_one * th.log(p_pos + 1e-6)
            cls_pos_loss = cls_pos_loss.sum() / (pos_equal_one.sum() + 1e-6)

            cls_neg_loss = -neg_equal_one * th.log(1 - p_pos + 1e-6)
            cls_neg_loss = cls_neg_loss.sum() / (neg_equal_one.sum() + 1e-6)

            reg_loss = self.smoothl1loss(rm_pos, targets_pos)
            reg_loss = reg_loss / (pos_equal_one.sum() + 1e-6)
            conf_loss = self.alpha * cls_pos_loss + self.beta * cls_neg_loss
            return conf_loss, reg_loss
    return VoxelLoss(alpha, beta)


def voxel_batch(rng, cfg=VoxelCfg, k=12, anchors=2):
    """k distinct occupied voxels over the batch, each with 1..T points (zero-padded), and the anchors'
    positive and negative maps and regression targets."""
    cells = rng.choice(cfg.N * cfg.D * cfg.H * cfg.W, k, replace=False)
    coords = np.stack(np.unravel_index(cells, (cfg.N, cfg.D, cfg.H, cfg.W)), 1)
    counts = rng.integers(1, cfg.T + 1, k)
    features = rng.standard_normal((k, cfg.T, 7)) * (np.arange(cfg.T)[None, :, None] < counts[:, None, None])
    pos = (rng.random((cfg.N, cfg.H, cfg.W, anchors)) < 0.3).astype(np.float64)
    neg = (1 - pos) * (rng.random(pos.shape) < 0.7)
    targets = rng.standard_normal((cfg.N, cfg.H, cfg.W, 7 * anchors))
    return features, coords, pos, neg, targets


def voxelnet_loss(criterion):
    def loss(model, features, coords, pos, neg, targets):
        psm, rm = model(features, coords)
        conf_loss, reg_loss = criterion(rm, psm, pos, neg, targets)
        return conf_loss + reg_loss, (conf_loss, reg_loss)
    return loss


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_voxelnet_vfe_masked_max_voxel_scatter_and_rpn_loss(mode):
    ours, theirs = pair(voxelnet)
    # SGD: with Adam, the biases before each batch norm (gradient-free in exact arithmetic, ~1e-16 of roundoff)
    # would take steps of lr * 1e-16 / eps on both sides, as PointNet++'s sa3 bias does
    opt = optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
    loss_fn, tloss_fn = voxelnet_loss(voxel_loss(nn_, F, av)), voxelnet_loss(voxel_loss(torch.nn, TF, torch))

    def step(model, opt, *batch):
        (loss, parts), grads = av.value_and_grad(loss_fn, has_aux=True)(model, *batch)
        opt.step(grads)
        return loss, parts
    run = compiled(step, mode)
    rng = np.random.default_rng(4)
    for it in range(3):
        batch = voxel_batch(rng)
        topt.zero_grad()
        tl, (tconf, treg) = tloss_fn(theirs, *map(T, batch))
        tl.backward()
        topt.step()
        with strict():
            loss, (conf, reg) = (run if it else step)(ours, opt, *map(av.tensor, batch))
        assert rel(loss, tl) < 1e-12 and rel(conf, tconf) < 1e-12 and rel(reg, treg) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1


# -- regressions: what the programs above found -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_setitem_with_integer_arrays_after_a_full_slice(mode):
    """VoxelNet's voxel_indexing, `dense[:, n, d, h, w] = features.t()`, was refused: integer-array indices
    were taken in the leading dims only. The indexed dims now move to the front for one index_put, and the
    value broadcasts to torch's result shape: the arrays' shape in their place when they are adjacent, first
    when they are not."""
    rng = np.random.default_rng(5)
    i, j, k = T(np.array([0, 2, 1, 2])), T(np.array([1, 0, 3, 0])), T(np.array([4, 4, 0, 4]))  # repeats
    cases = [(lambda t, a, b, c: (slice(None), a, b, c), (4, 4)), (lambda t, a, b, c: (slice(None), a, b), (6,)),
             (lambda t, a, b, c: (a, slice(None), b), (4, 3, 6)), (lambda t, a, b, c: (..., c), (4, 3, 5, 4)),
             (lambda t, a, b, c: (slice(None), 1, b), (4, 4, 6))]
    for index, vshape in cases:
        x, v = rng.standard_normal((4, 3, 5, 6)), rng.standard_normal(vshape)
        w = rng.standard_normal(x.shape)

        def loss(x, v, w, a, b, c, lib=av):
            y = x.clone()
            y[index(lib, a, b, c)] = v  # noqa: B023
            return (y * y * w).sum(), y
        tx, tv = T(x).requires_grad_(), T(v).requires_grad_()
        (tl, ty) = loss(tx, tv, T(w), i, j, k, lib=torch)
        tl.backward()
        fn = compiled(av.value_and_grad(loss, argnums=(0, 1), has_aux=True), mode)
        with strict():
            (_, y), (gx, gv) = fn(*map(av.tensor, (x, v, w, i.numpy(), j.numpy(), k.numpy())))
        assert np.array_equal(y.numpy(), ty.detach().numpy())
        assert rel(gx, tx.grad) < 1e-14 and rel(gv, tv.grad) < 1e-14
