"""Round 9o of port QA: programs written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random float32 data and compared with torch after every step (losses,
gradients, parameters and buffers), the first step eagerly and the rest compiled.

Programs: pytorch/examples' super_resolution (ESPCN: `nn.PixelShuffle`, `init.orthogonal_` with
`init.calculate_gain('relu')`, MSELoss and Adam, main.py's PSNR by `10 * log10(1 / mse.item())` under no_grad,
super_resolve.py's `out.data[0].numpy() * 255.0` clipped); NegatioN/OnlineMiningTripletLoss (omoindrot's batch-hard and
batch-all triplet losses: pairwise distances from a Gram matrix with `distances[distances < 0] = 0` and the `eq(0)`
mask around sqrt, the anchor-positive/negative masks by `eye(...).bool()`, `~` and `&`, masked `max`/`min` over rows,
`tl[tl < 0] = 0`, batch-all's fraction of positive triplets) over adambielski/siamese-triplet's EmbeddingNetL2 (PReLU)
on P x K batches with Adam and StepLR, then recall@1 by `cdist` with `fill_diagonal_(inf)`; multi-task learning with
learned uncertainty weights (Mikoto10032/AutomaticWeightedLoss in its own parameter group without weight decay, and
yaringal/multi-task-learning-example's `log_vars` with Adamax) over GaussianNLLLoss, PoissonNLLLoss(full=True) and
label-smoothed cross entropy heads; Kaggle's MoA multi-label tabular MLP (BatchNorm1d, the old
`nn.utils.weight_norm`, a dict Dataset through DataLoader's collation, SmoothBCEwLogits over
`torch.nn.modules.loss._WeightedLoss` with its `no_grad` target smoothing, OneCycleLR stepped per batch, valid_fn
without no_grad, early stopping with the best epoch's `state_dict` saved and loaded for inference); lukasruff's
Deep SVDD (a bias-free LeNet with `affine=False` batch norms, the center c from a no_grad pass over a TensorDataset
loader with `c[(abs(c) < eps) & (c < 0)] = -eps`, one-class and soft-boundary objectives whose radius is set by
`self.R.data = torch.tensor(np.quantile(...))` after the warm-up, Adam with amsgrad, MultiStepLR stepped first).

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`); state a loss reads from outside
(Deep SVDD's trainer.c and trainer.R) goes into the compiled step as arguments; MoA's `torch.save(model.state_dict(),
...)` is `av.save`. Sizes are smaller, learning rates lower or higher than the originals; dropout is 0 and loaders
do not shuffle (the random streams differ).

Deliberate differences met: a boolean index under a gradient is refused (batch-all's `triplet_loss[triplet_loss >
1e-16]`, whose size only is used: the port counts `(triplet_loss > 1e-16).sum()`); the training flag is part of a
compiled step's signature, so `model.train()` goes outside the step (as MoA's train_fn has it, once an epoch) or the
step traces twice. Torch's autograd refuses siamese-triplet's in-place `output /= norm(output)`, which Avalon
differentiates (its gradients are the out-of-place form's; the shared code divides out of place). Conditioning, not
Avalon: Adam turns a gradient of ~1e-8, whose roundoff differs, into steps of ~lr (ESPCN at main.py's lr=0.01; the
triplet losses without L2 normalization, whose last bias has a gradient of zero in exact arithmetic), and normalized
embeddings' hardest distances leave float32 gradients 1e-5..2e-4 from float64's on both sides.

Bug found (regression at the end): `avalon.nn.modules` did not exist, so `from torch.nn.modules.loss import
_WeightedLoss` could not be renamed; avalon/nn/modules/loss.py now holds torch's `_Loss`, `_WeightedLoss` (weight a
buffer) and the losses.
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

pytestmark = [pytest.mark.usefixtures("module_kernel_cache"),
              pytest.mark.filterwarnings("ignore:.*weight_norm. is deprecated:FutureWarning")]

F32 = torch.float32


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def same_grads(grads, model, tol, floor=1e-4, skip=()):
    """Avalon's gradient dict against torch's `.grad` of each parameter that has one (but `skip`), relative to the
    largest element or `floor`."""
    want = {k: p.grad for k, p in model.named_parameters() if p.grad is not None and k not in skip}
    assert sorted(grads) == sorted(want)
    for k, g in want.items():
        a, b = grads[k].numpy().astype(np.float64), g.numpy().astype(np.float64)
        assert np.abs(a - b).max() / max(np.abs(b).max(), floor) < tol, k


# -- 1. ESPCN (pytorch/examples super_resolution model.py, main.py, super_resolve.py) -----------------------------

def espcn(lib, F_, th, upscale_factor=3):
    init = th.nn.init

    class Net(lib.Module):
        def __init__(self, upscale_factor):
            super(Net, self).__init__()  # noqa: UP008

            self.relu = lib.ReLU()
            self.conv1 = lib.Conv2d(1, 64, (5, 5), (1, 1), (2, 2))
            self.conv2 = lib.Conv2d(64, 64, (3, 3), (1, 1), (1, 1))
            self.conv3 = lib.Conv2d(64, 32, (3, 3), (1, 1), (1, 1))
            self.conv4 = lib.Conv2d(32, upscale_factor ** 2, (3, 3), (1, 1), (1, 1))
            self.pixel_shuffle = lib.PixelShuffle(upscale_factor)

            self._initialize_weights()

        def forward(self, x):
            x = self.relu(self.conv1(x))
            x = self.relu(self.conv2(x))
            x = self.relu(self.conv3(x))
            x = self.pixel_shuffle(self.conv4(x))
            return x

        def _initialize_weights(self):
            init.orthogonal_(self.conv1.weight, init.calculate_gain('relu'))
            init.orthogonal_(self.conv2.weight, init.calculate_gain('relu'))
            init.orthogonal_(self.conv3.weight, init.calculate_gain('relu'))
            init.orthogonal_(self.conv4.weight)

    return Net(upscale_factor)


def sr_batches(rng, n, batch_size, size=18, factor=3):
    """HR crops in [0, 1] (the Y channel) and their LR inputs by block means (data.py's Resize, simplified)."""
    for _ in range(n):
        hr = rng.uniform(0.05, 0.95, (batch_size, 1, size, size)).astype(np.float32)
        lr = hr.reshape(batch_size, 1, size // factor, factor, size // factor, factor).mean((3, 5))
        yield lr.astype(np.float32), hr


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_espcn_pixel_shuffle_orthogonal_init_mse_adam_and_psnr(mode):
    # the Avalon model's own init: orthogonal_ with relu's gain, on the weight flattened to (out, in * kh * kw)
    av.manual_seed(0)
    fresh = espcn(nn, F, av)
    for name, gain in [("conv1", math.sqrt(2.0)), ("conv2", math.sqrt(2.0)), ("conv4", 1.0)]:
        w = getattr(fresh, name).weight.detach().numpy().reshape(getattr(fresh, name).weight.shape[0], -1)
        small = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
        assert np.allclose(small, gain ** 2 * np.eye(len(small)), atol=1e-5), name

    model, tmodel = pair(espcn, dtype=F32)
    criterion, tcriterion = nn.MSELoss(), torch.nn.MSELoss()
    lr = 0.001  # main.py's default is 0.01: Adam's first steps turn a gradient of ~1e-8 (a pixel a ReLU nearly
    # kills), whose roundoff differs by 1% between the two, into steps that differ by ~lr * 1e-3
    optimizer = av.optim.Adam(model.parameters(), lr=lr)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=lr)

    def objective(model, input, target):  # noqa: A002
        return criterion(model(input), target)

    def train_step(model, optimizer, input, target):  # noqa: A002
        loss, grads = av.value_and_grad(objective)(model, input, target)
        optimizer.step(grads)
        return loss, grads
    run = compiled(train_step, mode)

    rng = np.random.default_rng(0)
    epoch_loss, tepoch_loss = 0, 0
    for iteration, (input, target) in enumerate(sr_batches(rng, 5, 4), 1):  # noqa: A001
        toptimizer.zero_grad()
        tloss = tcriterion(tmodel(T(input)), T(target))
        tepoch_loss += tloss.item()
        tloss.backward()
        toptimizer.step()
        with strict():
            loss, grads = (run if iteration > 1 else train_step)(model, optimizer, av.tensor(input), av.tensor(target))
        epoch_loss += loss.item()
        assert rel(loss, tloss) < 1e-5, iteration
        same_grads(grads, tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)
    assert abs(epoch_loss - tepoch_loss) < 1e-5 * tepoch_loss
    assert run.cache_info().misses == 1

    # main.py's test(): PSNR under no_grad; super_resolve.py's post-processing of the Y channel
    avg_psnr, tavg_psnr = 0, 0
    with torch.no_grad():
        for input, target in sr_batches(rng, 2, 2):  # noqa: A001
            tavg_psnr += 10 * math.log10(1 / tcriterion(tmodel(T(input)), T(target)).item())
            with av.no_grad():
                prediction = model(av.tensor(input))
                mse = criterion(prediction, av.tensor(target))
                avg_psnr += 10 * math.log10(1 / mse.item())
    assert abs(avg_psnr - tavg_psnr) < 1e-4 * abs(tavg_psnr)
    out, tout = prediction, tmodel(T(input)).detach()
    out_img_y = out.data[0].numpy()
    out_img_y *= 255.0
    out_img_y = out_img_y.clip(0, 255)
    assert out_img_y.shape == (1, 18, 18)
    assert np.abs(out_img_y - (tout[0].numpy() * 255.0).clip(0, 255)).max() < 1e-3


# -- 2. Batch-hard triplet loss (NegatioN/OnlineMiningTripletLoss online_triplet_loss.py) over adambielski's
#       siamese-triplet EmbeddingNet, trained on P x K batches; retrieval by cdist ------------------------------------

def triplet_losses(torch, port=False):  # the module, written against `torch`
    def _pairwise_distances(embeddings, squared=False):
        """Compute the 2D matrix of distances between all the embeddings."""
        dot_product = torch.matmul(embeddings, embeddings.t())
        square_norm = torch.diag(dot_product)
        distances = square_norm.unsqueeze(0) - 2.0 * dot_product + square_norm.unsqueeze(1)
        distances[distances < 0] = 0
        if not squared:
            mask = distances.eq(0).float()
            distances = distances + mask * 1e-16
            distances = (1.0 - mask) * torch.sqrt(distances)
        return distances

    def _get_triplet_mask(labels):
        indices_equal = torch.eye(labels.size(0), device=labels.device).bool()
        indices_not_equal = ~indices_equal
        i_not_equal_j = indices_not_equal.unsqueeze(2)
        i_not_equal_k = indices_not_equal.unsqueeze(1)
        j_not_equal_k = indices_not_equal.unsqueeze(0)
        distinct_indices = (i_not_equal_j & i_not_equal_k) & j_not_equal_k
        label_equal = labels.unsqueeze(0) == labels.unsqueeze(1)
        i_equal_j = label_equal.unsqueeze(2)
        i_equal_k = label_equal.unsqueeze(1)
        valid_labels = ~i_equal_k & i_equal_j
        return valid_labels & distinct_indices

    def _get_anchor_positive_triplet_mask(labels):
        indices_equal = torch.eye(labels.size(0), device=labels.device).bool()
        indices_not_equal = ~indices_equal
        labels_equal = labels.unsqueeze(0) == labels.unsqueeze(1)
        return labels_equal & indices_not_equal

    def _get_anchor_negative_triplet_mask(labels):
        return ~(labels.unsqueeze(0) == labels.unsqueeze(1))

    def batch_hard_triplet_loss(labels, embeddings, margin, squared=False):
        pairwise_dist = _pairwise_distances(embeddings, squared=squared)
        mask_anchor_positive = _get_anchor_positive_triplet_mask(labels).float()
        anchor_positive_dist = mask_anchor_positive * pairwise_dist
        hardest_positive_dist, _ = anchor_positive_dist.max(1, keepdim=True)
        mask_anchor_negative = _get_anchor_negative_triplet_mask(labels).float()
        max_anchor_negative_dist, _ = pairwise_dist.max(1, keepdim=True)
        anchor_negative_dist = pairwise_dist + max_anchor_negative_dist * (1.0 - mask_anchor_negative)
        hardest_negative_dist, _ = anchor_negative_dist.min(1, keepdim=True)
        tl = hardest_positive_dist - hardest_negative_dist + margin
        tl[tl < 0] = 0
        triplet_loss = tl.mean()
        return triplet_loss

    def batch_all_triplet_loss(labels, embeddings, margin, squared=False):
        pairwise_dist = _pairwise_distances(embeddings, squared=squared)
        anchor_positive_dist = pairwise_dist.unsqueeze(2)
        anchor_negative_dist = pairwise_dist.unsqueeze(1)
        triplet_loss = anchor_positive_dist - anchor_negative_dist + margin
        mask = _get_triplet_mask(labels)
        triplet_loss = mask.float() * triplet_loss
        triplet_loss[triplet_loss < 0] = 0
        if port:  # a boolean index under a gradient is refused (its shape would depend on the values): count
            num_positive_triplets = (triplet_loss > 1e-16).sum()
        else:
            valid_triplets = triplet_loss[triplet_loss > 1e-16]
            num_positive_triplets = valid_triplets.size(0)
        num_valid_triplets = mask.sum()
        fraction_positive_triplets = num_positive_triplets / (num_valid_triplets.float() + 1e-16)
        triplet_loss = triplet_loss.sum() / (num_positive_triplets + 1e-16)
        return triplet_loss, fraction_positive_triplets

    return batch_hard_triplet_loss, batch_all_triplet_loss


def embedding_net(lib, F_, th):  # siamese-triplet networks.py, 16x16 inputs and fewer channels
    class EmbeddingNet(lib.Module):
        def __init__(self):
            super(EmbeddingNet, self).__init__()  # noqa: UP008
            self.convnet = lib.Sequential(lib.Conv2d(1, 8, 5), lib.PReLU(),
                                          lib.MaxPool2d(2, stride=2),
                                          lib.Conv2d(8, 16, 3), lib.PReLU(),
                                          lib.MaxPool2d(2, stride=2))

            self.fc = lib.Sequential(lib.Linear(16 * 2 * 2, 32),
                                     lib.PReLU(),
                                     lib.Linear(32, 32),
                                     lib.PReLU(),
                                     lib.Linear(32, 8)
                                     )

        def forward(self, x):
            output = self.convnet(x)
            output = output.view(output.size()[0], -1)
            output = self.fc(output)
            return output

        def get_embedding(self, x):
            return self.forward(x)

    class EmbeddingNetL2(EmbeddingNet):
        def __init__(self):
            super(EmbeddingNetL2, self).__init__()  # noqa: UP008
            self.inplace = False

        def forward(self, x):
            output = super(EmbeddingNetL2, self).forward(x)  # noqa: UP008
            if self.inplace:  # networks.py's form: torch's autograd refuses it (the divisor reads what `/=` writes)
                output /= output.pow(2).sum(1, keepdim=True).sqrt()
            else:
                output = output / output.pow(2).sum(1, keepdim=True).sqrt()
            return output

        def get_embedding(self, x):
            return self.forward(x)

    # the L2-normalized net: without it the distances do not change when every embedding moves by one vector, so the
    # last bias (and a hidden unit's bias whose PReLU input keeps one sign over the batch) has a gradient of zero in
    # exact arithmetic, roundoff on both sides, which Adam turns into steps of ~lr
    return EmbeddingNetL2()


def pk_batch(rng, centers, P=4, K=3):  # noqa: N803  (BalancedBatchSampler: P classes, K samples of each)
    classes = rng.choice(len(centers), P, replace=False)
    labels = np.repeat(classes, K)
    x = centers[labels] + 0.8 * randn(rng, P * K, 1, 16, 16)
    return x.astype(np.float32), labels.astype(np.int64)


@pytest.mark.parametrize("loss_kind", ["batch_hard", "batch_all"])
def test_online_triplet_mining_masks_masked_max_min_and_cdist_retrieval(loss_kind):
    model, tmodel = pair(embedding_net, dtype=F32)
    hard, batch_all = triplet_losses(av, port=True)
    thard, tbatch_all = triplet_losses(torch)
    margin, lr = 1.0, 1e-3
    optimizer = av.optim.Adam(model.parameters(), lr=lr)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=lr)
    scheduler = av.optim.lr_scheduler.StepLR(optimizer, 2, gamma=0.1, last_epoch=-1)
    tscheduler = torch.optim.lr_scheduler.StepLR(toptimizer, 2, gamma=0.1, last_epoch=-1)

    def objective(model, x, labels):
        embeddings = model(x)
        if loss_kind == "batch_hard":
            return hard(labels, embeddings, margin), ()
        loss, fraction = batch_all(labels, embeddings, margin)
        return loss, fraction

    def train_step(model, optimizer, x, labels):
        (loss, aux), grads = av.value_and_grad(objective, has_aux=True)(model, x, labels)
        optimizer.step(grads)
        return loss, aux, grads

    rng = np.random.default_rng(0)
    centers = randn(rng, 6, 1, 16, 16)
    run = compiled(train_step, "numpy")
    step = 0
    for _epoch in range(3):
        for _ in range(2):
            x, labels = pk_batch(rng, centers)
            toptimizer.zero_grad()
            temb = tmodel(T(x))
            if loss_kind == "batch_hard":
                tloss = thard(T(labels), temb, margin)
            else:
                tloss, tfraction = tbatch_all(T(labels), temb, margin)
            tloss.backward()
            toptimizer.step()
            with strict():
                loss, aux, grads = (run if step else train_step)(
                    model, optimizer, av.tensor(x), av.tensor(labels))
            step += 1
            assert rel(loss, tloss) < 1e-5, step
            if loss_kind == "batch_all":
                assert rel(aux, tfraction) < 1e-6
            # the normalized embeddings' hardest distances are ill-conditioned in float32: torch's own gradients are
            # 1e-5 to 2e-4 from float64's here (the PReLU slopes' sums cancel most), and Avalon's as far
            same_grads(grads, tmodel, 1e-3)
            same_weights(model, tmodel, 1e-4)
        scheduler.step()
        tscheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(toptimizer.param_groups[0]["lr"])
    assert run.cache_info().misses == 1

    # batch-all as written: its boolean index is refused under a gradient, naming the mask-based alternative, and
    # runs eagerly outside one (the evaluation's fraction of positive triplets)
    as_written = triplet_losses(av)[1]
    x, labels = pk_batch(rng, centers)
    with pytest.raises(IndexError, match="traced boolean mask.*av.where"):
        av.value_and_grad(lambda m: as_written(av.tensor(labels), m(av.tensor(x)), margin)[0])(model)
    with torch.no_grad(), av.no_grad():
        got, want = as_written(av.tensor(labels), model(av.tensor(x)), margin), tbatch_all(T(labels), tmodel(T(x)), margin)
    assert rel(got[0], want[0]) < 1e-5 and rel(got[1], want[1]) < 1e-6

    # networks.py's in-place `output /= norm`, which torch's autograd refuses, gives the out-of-place form's gradients
    model.inplace, tmodel.inplace = True, True
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        thard(T(labels), tmodel(T(x)), margin).backward()
    def hardest(m, x, labels):
        return hard(labels, m(x), margin)
    inplace_grads = av.grad(hardest)(model, av.tensor(x), av.tensor(labels))
    model.inplace = False
    grads = av.grad(hardest)(model, av.tensor(x), av.tensor(labels))
    assert all(rel(inplace_grads[k], grads[k]) < 1e-6 for k in grads)

    # retrieval: embed a gallery, nearest neighbour of each by cdist with itself excluded, recall@1
    x, labels = pk_batch(rng, centers, P=5, K=4)
    with torch.no_grad():
        temb = tmodel.get_embedding(T(x))
        td = torch.cdist(temb, temb)
        td.fill_diagonal_(float("inf"))
        tnn = td.argmin(1)
        trecall = (T(labels)[tnn] == T(labels)).float().mean().item()
    with av.no_grad():
        emb = model.get_embedding(av.tensor(x))
        d = av.cdist(emb, emb)
        d.fill_diagonal_(float("inf"))
        nn_ = d.argmin(1)
        recall = (av.tensor(labels)[nn_] == av.tensor(labels)).float().mean().item()
    off = ~np.eye(20, dtype=bool)
    assert np.isposinf(d.numpy()[~off]).all() and rel(d.numpy()[off], td.numpy()[off]) < 1e-4
    assert np.array_equal(nn_.numpy(), tnn.numpy()) and recall == trecall


# -- 3. Multi-task learning with learned uncertainty weights: Mikoto10032/AutomaticWeightedLoss (its own module,
#       optimized in a second parameter group without weight decay) and yaringal/multi-task-learning-example's
#       `log_vars` on the model (Kendall et al.), over a regression head with GaussianNLLLoss, a count head with
#       PoissonNLLLoss and a classification head with label smoothing ----------------------------------------------

def multitask(lib, F_, th, n_in=10, hidden=32, n_classes=4, log_vars=False):
    class AutomaticWeightedLoss(lib.Module):
        """automatically weighted multi-task loss

        Params：
            num: int，the number of loss
            x: multi-task loss
        Examples：
            loss1=1
            loss2=2
            awl = AutomaticWeightedLoss(2)
            loss_sum = awl(loss1, loss2)
        """
        def __init__(self, num=2):
            super(AutomaticWeightedLoss, self).__init__()  # noqa: UP008
            params = th.ones(num, requires_grad=True)
            self.params = th.nn.Parameter(params)

        def forward(self, *x):
            loss_sum = 0
            for i, loss in enumerate(x):
                loss_sum += 0.5 / (self.params[i] ** 2) * loss + th.log(1 + self.params[i] ** 2)
            return loss_sum

    class MultiTaskNet(lib.Module):
        def __init__(self):
            super().__init__()
            self.trunk = lib.Sequential(lib.Linear(n_in, hidden), lib.ReLU(), lib.Linear(hidden, hidden), lib.Tanh())
            self.mean = lib.Linear(hidden, 1)
            self.var = lib.Sequential(lib.Linear(hidden, 1), lib.Softplus())
            self.rate = lib.Linear(hidden, 1)  # the log of the Poisson rate
            self.cls = lib.Linear(hidden, n_classes)
            if log_vars:
                self.log_vars = lib.Parameter(th.zeros(3))

        def forward(self, x):
            h = self.trunk(x)
            return self.mean(h).squeeze(-1), self.var(h).squeeze(-1), self.rate(h).squeeze(-1), self.cls(h)

    return lib.ModuleDict({"net": MultiTaskNet(), "awl": AutomaticWeightedLoss(3)})


def multitask_losses(lib):
    gaussian = lib.GaussianNLLLoss(eps=1e-6)
    poisson = lib.PoissonNLLLoss(log_input=True, full=True)
    ce = lib.CrossEntropyLoss(label_smoothing=0.1)

    def task_losses(net, x, y, counts, labels):
        mean, var, log_rate, logits = net(x)
        return gaussian(mean, y, var), poisson(log_rate, counts), ce(logits, labels)
    return task_losses


def kendall_criterion(th, losses, log_vars):  # multi-task-learning-example's criterion, one loss per task
    loss = 0
    for i in range(len(losses)):
        precision = th.exp(-log_vars[i])
        loss += precision * losses[i] + log_vars[i]
    return loss


def multitask_batch(rng, B=16, n_in=10, n_classes=4):  # noqa: N803
    x = randn(rng, B, n_in)
    w, v, u = randn(rng, n_in), randn(rng, n_in) * 0.3, randn(rng, n_in, n_classes)
    y = x @ w + (0.2 + np.abs(x[:, 0])) * randn(rng, B)
    counts = rng.poisson(np.exp(x @ v)).astype(np.float32)
    labels = (x @ u).argmax(1)
    return x, y.astype(np.float32), counts, labels


@pytest.mark.parametrize("weighting", ["awl", "kendall"])
def test_multitask_uncertainty_weighting_gaussian_poisson_nll_and_label_smoothing(weighting):
    kendall = weighting == "kendall"
    parts, tparts = pair(lambda lib, F_, th: multitask(lib, F_, th, log_vars=kendall), dtype=F32)
    task_losses, ttask_losses = multitask_losses(nn), multitask_losses(torch.nn)

    def make_optimizer(th, parts):
        if kendall:  # the example's Adam over the model, log_vars included (Adamax here)
            return th.optim.Adamax(parts["net"].parameters(), lr=0.01, weight_decay=1e-4)
        return th.optim.Adam([{'params': parts["net"].parameters()},
                              {'params': parts["awl"].parameters(), 'weight_decay': 0}], lr=0.01, weight_decay=1e-4)
    optimizer, toptimizer = make_optimizer(av, parts), make_optimizer(torch, tparts)

    def objective(parts, x, y, counts, labels):
        losses = task_losses(parts["net"], x, y, counts, labels)
        if kendall:
            return kendall_criterion(av, losses, parts["net"].log_vars), losses
        return parts["awl"](*losses), losses

    def train_step(parts, optimizer, x, y, counts, labels):
        (loss, losses), grads = av.value_and_grad(objective, has_aux=True)(parts, x, y, counts, labels)
        optimizer.step(grads)
        return loss, losses, grads
    run = compiled(train_step, "numpy")

    rng = np.random.default_rng(0)
    for step in range(5):
        batch = multitask_batch(rng)
        assert (batch[2] > 1).any() and (batch[2] == 0).any()  # the Stirling term and a zero count
        toptimizer.zero_grad()
        tlosses = ttask_losses(tparts["net"], *map(T, batch))
        tloss = kendall_criterion(torch, tlosses, tparts["net"].log_vars) if kendall else tparts["awl"](*tlosses)
        tloss.backward()
        toptimizer.step()
        with strict():
            loss, losses, grads = (run if step else train_step)(parts, optimizer, *map(av.tensor, batch))
        assert rel(loss, tloss) < 1e-5, step
        assert all(rel(a, b) < 1e-5 for a, b in zip(losses, tlosses))
        same_grads(grads, tparts, 1e-4)
        same_weights(parts, tparts, 1e-4)
    assert run.cache_info().misses == 1

    # evaluation: the predicted std, the Poisson rate, accuracy, and the learned task weights
    x, y, counts, labels = multitask_batch(rng)
    with torch.no_grad():
        tmean, tvar, tlog_rate, tlogits = tparts["net"](T(x))
        tacc = (tlogits.argmax(1) == T(labels)).float().mean().item()
        tweights = (torch.exp(-tparts["net"].log_vars) if kendall else 0.5 / tparts["awl"].params ** 2).tolist()
    with av.no_grad():
        mean, var, log_rate, logits = parts["net"](av.tensor(x))
        acc = (logits.argmax(1) == av.tensor(labels)).float().mean().item()
        weights = (av.exp(-parts["net"].log_vars) if kendall else 0.5 / parts["awl"].params ** 2).tolist()
    assert rel(var.sqrt(), tvar.sqrt()) < 1e-5 and rel(log_rate.exp(), tlog_rate.exp()) < 1e-5
    assert acc == tacc and np.allclose(weights, tweights, rtol=1e-5)


# -- 4. Kaggle MoA (Mechanisms of Action) multi-label tabular MLP: BatchNorm1d, weight-normed Linears, a dict
#       Dataset collated by DataLoader, SmoothBCEwLogits over `_WeightedLoss`, OneCycleLR stepped per batch, early
#       stopping on the validation loss with the best epoch's state_dict saved and loaded for inference ------------

def moa_model(lib, F_, th, num_features=12, num_targets=6, hidden_size=32, p=(0.0, 0.0, 0.0)):
    class Model(lib.Module):
        def __init__(self, num_features, num_targets, hidden_size):
            super(Model, self).__init__()  # noqa: UP008
            self.batch_norm1 = lib.BatchNorm1d(num_features)
            self.dropout1 = lib.Dropout(p[0])  # 0.2 there
            self.dense1 = lib.utils.weight_norm(lib.Linear(num_features, hidden_size))

            self.batch_norm2 = lib.BatchNorm1d(hidden_size)
            self.dropout2 = lib.Dropout(p[1])  # 0.5 there
            self.dense2 = lib.utils.weight_norm(lib.Linear(hidden_size, hidden_size))

            self.batch_norm3 = lib.BatchNorm1d(hidden_size)
            self.dropout3 = lib.Dropout(p[2])  # 0.5 there
            self.dense3 = lib.utils.weight_norm(lib.Linear(hidden_size, num_targets))

        def forward(self, x):
            x = self.batch_norm1(x)
            x = self.dropout1(x)
            x = F_.relu(self.dense1(x))

            x = self.batch_norm2(x)
            x = self.dropout2(x)
            x = F_.relu(self.dense2(x))

            x = self.batch_norm3(x)
            x = self.dropout3(x)
            x = self.dense3(x)

            return x

    return Model(num_features, num_targets, hidden_size)


def moa_parts(torch, nn, F):  # noqa: N803  (the notebook's module-level names)
    from importlib import import_module
    _WeightedLoss = import_module(f"{torch.__name__}.nn.modules.loss")._WeightedLoss  # noqa: N806

    class MoADataset:
        def __init__(self, features, targets):
            self.features = features
            self.targets = targets

        def __len__(self):
            return (self.features.shape[0])

        def __getitem__(self, idx):
            dct = {
                'x': torch.tensor(self.features[idx, :], dtype=torch.float),
                'y': torch.tensor(self.targets[idx, :], dtype=torch.float)
            }
            return dct

    class SmoothBCEwLogits(_WeightedLoss):
        def __init__(self, weight=None, reduction='mean', smoothing=0.0):
            super().__init__(weight=weight, reduction=reduction)
            self.smoothing = smoothing
            self.weight = weight
            self.reduction = reduction

        @staticmethod
        def _smooth(targets: torch.Tensor, n_labels: int, smoothing=0.0):
            assert 0 <= smoothing < 1
            with torch.no_grad():
                targets = targets * (1.0 - smoothing) + 0.5 * smoothing
            return targets

        def forward(self, inputs, targets):
            targets = SmoothBCEwLogits._smooth(targets, inputs.size(-1),
                                               self.smoothing)
            loss = F.binary_cross_entropy_with_logits(inputs, targets, self.weight)

            if self.reduction == 'sum':
                loss = loss.sum()
            elif self.reduction == 'mean':
                loss = loss.mean()

            return loss

    def valid_fn(model, loss_fn, dataloader, device):
        model.eval()
        final_loss = 0
        valid_preds = []

        for data in dataloader:
            inputs, targets = data['x'].to(device), data['y'].to(device)
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)

            final_loss += loss.item()
            valid_preds.append(outputs.sigmoid().detach().cpu().numpy())

        final_loss /= len(dataloader)
        valid_preds = np.concatenate(valid_preds)

        return final_loss, valid_preds

    def inference_fn(model, dataloader, device):
        model.eval()
        preds = []

        for data in dataloader:
            inputs = data['x'].to(device)

            with torch.no_grad():
                outputs = model(inputs)

            preds.append(outputs.sigmoid().detach().cpu().numpy())

        preds = np.concatenate(preds)

        return preds

    return MoADataset, SmoothBCEwLogits, valid_fn, inference_fn


def moa_data(rng, n, num_features=12, num_targets=6):
    x = randn(rng, n, num_features) * rng.uniform(0.5, 3.0, num_features).astype(np.float32)
    logits = x @ randn(rng, num_features, num_targets) * 0.7 - 1.5
    y = (rng.uniform(size=logits.shape) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    return x.astype(np.float32), y


def test_moa_tabular_weight_norm_batchnorm_smooth_bce_onecycle_and_early_stopping_checkpoint(tmp_path):
    model, tmodel = pair(moa_model, dtype=F32)
    MoADataset, SmoothBCEwLogits, valid_fn, inference_fn = moa_parts(av, nn, F)  # noqa: N806
    tMoADataset, tSmoothBCEwLogits, tvalid_fn, tinference_fn = moa_parts(torch, torch.nn, TF)  # noqa: N806
    EPOCHS, BATCH_SIZE, EARLY_STOPPING_STEPS, DEVICE = 8, 16, 2, 'cpu'  # noqa: N806

    rng = np.random.default_rng(0)
    train_x, train_y = moa_data(rng, 48)
    valid_x, valid_y = moa_data(rng, 24)
    test_x, _ = moa_data(rng, 20)

    def loaders(MoADataset, th):  # noqa: N803
        train_dataset = MoADataset(train_x, train_y)
        valid_dataset = MoADataset(valid_x, valid_y)
        test_dataset = MoADataset(test_x, np.zeros((20, 6), np.float32))
        # shuffle=True there: the two random streams differ
        trainloader = th.utils.data.DataLoader(train_dataset, batch_size=BATCH_SIZE, shuffle=False)
        validloader = th.utils.data.DataLoader(valid_dataset, batch_size=BATCH_SIZE, shuffle=False)
        testloader = th.utils.data.DataLoader(test_dataset, batch_size=BATCH_SIZE, shuffle=False)
        return trainloader, validloader, testloader
    trainloader, validloader, testloader = loaders(MoADataset, av)
    ttrainloader, tvalidloader, ttestloader = loaders(tMoADataset, torch)

    def make_optimizer(th, model):
        optimizer = th.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
        scheduler = th.optim.lr_scheduler.OneCycleLR(optimizer=optimizer, pct_start=0.1, div_factor=1e3,
                                                     max_lr=3e-2, epochs=EPOCHS, steps_per_epoch=len(trainloader))
        return optimizer, scheduler
    optimizer, scheduler = make_optimizer(av, model)
    toptimizer, tscheduler = make_optimizer(torch, tmodel)
    loss_fn, tloss_fn = nn.BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss()
    loss_tr, tloss_tr = SmoothBCEwLogits(smoothing=0.001), tSmoothBCEwLogits(smoothing=0.001)

    def objective(model, inputs, targets):
        outputs = model(inputs)
        return loss_tr(outputs, targets)

    def train_step(model, optimizer, inputs, targets):
        loss, grads = av.value_and_grad(objective)(model, inputs, targets)
        optimizer.step(grads)
        return loss, grads
    run = compiled(train_step, "numpy")

    early_step, best_loss, tbest_loss, stopped, saved = 0, np.inf, np.inf, None, []
    oof, toof = np.zeros((len(valid_x), 6)), np.zeros((len(valid_x), 6))
    for epoch in range(EPOCHS):
        # train_fn, torch's and the port's side by side
        tmodel.train()
        model.train()  # train_fn's, once an epoch: the training flag is part of a compiled step's signature
        train_loss, ttrain_loss = 0, 0
        for data, tdata in zip(trainloader, ttrainloader, strict=True):
            assert isinstance(data['x'], av.Tensor) and data['x'].dtype == av.float32 and data['x'].shape == (16, 12)
            toptimizer.zero_grad()
            tloss = tloss_tr(tmodel(tdata['x'].to(DEVICE)), tdata['y'].to(DEVICE))
            tloss.backward()
            toptimizer.step()
            tscheduler.step()
            ttrain_loss += tloss.item()
            with strict():
                loss, grads = (run if epoch else train_step)(model, optimizer, data['x'].to(DEVICE),
                                                             data['y'].to(DEVICE))
            scheduler.step()
            train_loss += loss.item()
            assert rel(loss, tloss) < 1e-5, epoch
            same_grads(grads, tmodel, 1e-4)
            same_weights(model, tmodel, 1e-4)
            assert optimizer.param_groups[0]["lr"] == pytest.approx(toptimizer.param_groups[0]["lr"], rel=1e-6)
        assert train_loss == pytest.approx(ttrain_loss, rel=1e-5)

        valid_loss, valid_preds = valid_fn(model, loss_fn, validloader, DEVICE)
        tvalid_loss, tvalid_preds = tvalid_fn(tmodel, tloss_fn, tvalidloader, DEVICE)
        assert valid_loss == pytest.approx(tvalid_loss, rel=1e-5)
        assert np.abs(valid_preds - tvalid_preds).max() < 1e-5
        assert (valid_loss < best_loss) == (tvalid_loss < tbest_loss)
        if valid_loss < best_loss:
            best_loss, tbest_loss = valid_loss, tvalid_loss
            oof[:], toof[:] = valid_preds, tvalid_preds
            av.save(model.state_dict(), tmp_path / "FOLD0_.safetensors")
            torch.save(tmodel.state_dict(), tmp_path / "FOLD0_.pth")
            saved.append(epoch)
        else:
            early_step += 1
            if (early_step >= EARLY_STOPPING_STEPS):
                stopped = epoch
                break
    assert stopped is not None and 0 < saved[-1] < stopped  # it stopped early, after a better epoch than the first
    assert run.cache_info().misses == 1

    # inference from the best epoch's checkpoint
    model.load_state_dict(av.load(tmp_path / "FOLD0_.safetensors"))
    tmodel.load_state_dict(torch.load(tmp_path / "FOLD0_.pth"))
    same_weights(model, tmodel, 1e-4)
    preds, tpreds = inference_fn(model, testloader, DEVICE), tinference_fn(tmodel, ttestloader, DEVICE)
    assert preds.shape == (20, 6) and np.abs(preds - tpreds).max() < 1e-5
    assert np.abs(oof - toof).max() < 1e-5


# -- 5. Deep SVDD (lukasruff/Deep-SVDD-PyTorch: networks/mnist_LeNet.py, optim/deepSVDD_trainer.py): a bias-free
#       LeNet with affine-free batch norms, the center c from a no_grad pass with its near-zero entries pushed to
#       +-eps by masked writes, one-class and soft-boundary objectives (radius R set from a numpy quantile of the
#       batch's distances after the warm-up epochs), Adam with amsgrad and MultiStepLR stepped first in the epoch ----

def svdd_net(lib, F_, th):
    class BaseNet(lib.Module):
        """Base class for all neural networks."""

        def __init__(self):
            super().__init__()
            self.rep_dim = None  # representation dimensionality, i.e. dim of the last layer

        def summary(self):
            """Network summary."""
            net_parameters = filter(lambda p: p.requires_grad, self.parameters())
            params = sum([np.prod(p.size()) for p in net_parameters])
            return params

    class MNIST_LeNet(BaseNet):  # noqa: N801
        def __init__(self):
            super().__init__()

            self.rep_dim = 32
            self.pool = lib.MaxPool2d(2, 2)

            self.conv1 = lib.Conv2d(1, 8, 5, bias=False, padding=2)
            self.bn1 = lib.BatchNorm2d(8, eps=1e-04, affine=False)
            self.conv2 = lib.Conv2d(8, 4, 5, bias=False, padding=2)
            self.bn2 = lib.BatchNorm2d(4, eps=1e-04, affine=False)
            self.fc1 = lib.Linear(4 * 7 * 7, self.rep_dim, bias=False)

        def forward(self, x):
            x = self.conv1(x)
            x = self.pool(F_.leaky_relu(self.bn1(x)))
            x = self.conv2(x)
            x = self.pool(F_.leaky_relu(self.bn2(x)))
            x = x.view(x.size(0), -1)
            x = self.fc1(x)
            return x

    return MNIST_LeNet()


def svdd_trainer(torch, optim):
    def get_radius(dist, nu: float):
        """Optimally solve for radius R via the (1-nu)-quantile of distances."""
        return np.quantile(np.sqrt(dist.clone().data.cpu().numpy()), 1 - nu)

    class DeepSVDDTrainer:
        def __init__(self, objective, R, c, nu: float, optimizer_name: str = 'adam', lr: float = 0.001,  # noqa: N803
                     n_epochs: int = 150, lr_milestones: tuple = (), weight_decay: float = 1e-6, device: str = 'cpu'):
            self.objective, self.optimizer_name, self.lr, self.n_epochs = objective, optimizer_name, lr, n_epochs
            self.lr_milestones, self.weight_decay, self.device = lr_milestones, weight_decay, device

            # Deep SVDD parameters
            self.R = torch.tensor(R, device=self.device)  # radius R initialized with 0 by default.
            self.c = torch.tensor(c, device=self.device) if c is not None else None
            self.nu = nu

            # Optimization parameters
            self.warm_up_n_epochs = 1  # number of training epochs for soft-boundary Deep SVDD before radius R gets updated

        def optimizer_for(self, net):
            # Set optimizer (Adam optimizer for now)
            optimizer = optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                   amsgrad=self.optimizer_name == 'amsgrad')

            # Set learning rate scheduler
            scheduler = optim.lr_scheduler.MultiStepLR(optimizer, milestones=self.lr_milestones, gamma=0.1)
            return optimizer, scheduler

        def loss(self, outputs, c, R):  # noqa: N803  (the body of train's loop, on c and R given)
            dist = torch.sum((outputs - c) ** 2, dim=1)
            if self.objective == 'soft-boundary':
                scores = dist - R ** 2
                loss = R ** 2 + (1 / self.nu) * torch.mean(torch.max(torch.zeros_like(scores), scores))
            else:
                loss = torch.mean(dist)
            return loss, dist

        def update_radius(self, epoch, dist):
            # Update hypersphere radius R on mini-batch distances
            if (self.objective == 'soft-boundary') and (epoch >= self.warm_up_n_epochs):
                self.R.data = torch.tensor(get_radius(dist, self.nu), device=self.device)

        def scores(self, net, inputs):
            net.eval()
            with torch.no_grad():
                outputs = net(inputs)
                dist = torch.sum((outputs - self.c) ** 2, dim=1)
                if self.objective == 'soft-boundary':
                    scores = dist - self.R ** 2
                else:
                    scores = dist
            return scores.cpu().data.numpy().tolist()

        def init_center_c(self, train_loader, net, eps=0.1):
            """Initialize hypersphere center c as the mean from an initial forward pass on the data."""
            n_samples = 0
            c = torch.zeros(net.rep_dim, device=self.device)

            net.eval()
            with torch.no_grad():
                for data in train_loader:
                    # get the inputs of the batch
                    inputs, _, _ = data
                    inputs = inputs.to(self.device)
                    outputs = net(inputs)
                    n_samples += outputs.shape[0]
                    c += torch.sum(outputs, dim=0)

            c /= n_samples

            # If c_i is too close to 0, set to +-eps. Reason: a zero unit can be trivially matched with zero weights.
            c[(abs(c) < eps) & (c < 0)] = -eps
            c[(abs(c) < eps) & (c > 0)] = eps

            return c

    return DeepSVDDTrainer


def svdd_data(rng, n, anomalies=0):
    """A normal class near one 28x28 prototype, anomalies near others; (inputs, labels, idx) as the repo's loaders."""
    protos = rng.uniform(-1, 1, (3, 1, 28, 28)).astype(np.float32)
    labels = np.zeros(n, np.int64)
    labels[n - anomalies:] = 1
    which = np.where(labels == 1, rng.integers(1, 3, n), 0)
    x = protos[which] + 0.5 * randn(rng, n, 1, 28, 28)
    return x.astype(np.float32), labels, np.arange(n)


@pytest.mark.parametrize("objective,optimizer_name", [("one-class", "amsgrad"), ("soft-boundary", "adam")])
def test_deep_svdd_center_init_masked_writes_soft_boundary_radius_and_amsgrad(objective, optimizer_name):
    net, tnet = pair(svdd_net, dtype=F32)
    assert net.summary() == tnet.summary() == 8 * 25 + 4 * 8 * 25 + 4 * 49 * 32
    Trainer, tTrainer = svdd_trainer(av, av.optim), svdd_trainer(torch, torch.optim)  # noqa: N806
    kw = dict(objective=objective, R=0.0, c=None, nu=0.1, optimizer_name=optimizer_name, lr=1e-3, n_epochs=3,
              lr_milestones=(2,))
    trainer, ttrainer = Trainer(**kw), tTrainer(**kw)
    optimizer, scheduler = trainer.optimizer_for(net)
    toptimizer, tscheduler = ttrainer.optimizer_for(tnet)

    rng = np.random.default_rng(0)
    x, labels, idx = svdd_data(rng, 32)
    train_loader = av.utils.data.DataLoader(av.utils.data.TensorDataset(*map(av.tensor, (x, labels, idx))),
                                            batch_size=16)
    ttrain_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*map(T, (x, labels, idx))),
                                                batch_size=16)
    trainer.c, ttrainer.c = trainer.init_center_c(train_loader, net), ttrainer.init_center_c(ttrain_loader, tnet)
    assert rel(trainer.c, ttrainer.c) < 1e-5
    assert (ttrainer.c.abs() >= 0.1 - 1e-7).all() and (trainer.c.abs() >= 0.1 - 1e-7).all()
    assert (ttrainer.c.abs() == 0.1).any()  # some entries were pushed out to +-eps

    def objective_fn(net, inputs, c, R):  # noqa: N803
        return trainer.loss(net(inputs), c, R)

    def train_step(net, optimizer, inputs, c, R):  # noqa: N803  (c and R as arguments: the trainer's are state)
        (loss, dist), grads = av.value_and_grad(objective_fn, has_aux=True)(net, inputs, c, R)
        optimizer.step(grads)
        return loss, dist, grads
    run = compiled(train_step, "numpy")

    net.train()
    tnet.train()
    radii = []
    for epoch in range(kw["n_epochs"]):
        for sched in (tscheduler, scheduler):  # the repo steps it first: both warn of the order, once
            if epoch == 0:
                with pytest.warns(UserWarning, match=r"lr_scheduler.step\(\)` before `optimizer.step\(\)`"):
                    sched.step()
            else:
                sched.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(toptimizer.param_groups[0]["lr"])
        for data, tdata in zip(train_loader, ttrain_loader, strict=True):
            inputs, _, _ = data
            toptimizer.zero_grad()
            tloss, tdist = ttrainer.loss(tnet(tdata[0]), ttrainer.c, ttrainer.R)
            tloss.backward()
            toptimizer.step()
            ttrainer.update_radius(epoch, tdist)
            with strict():
                loss, dist, grads = (run if epoch else train_step)(net, optimizer, inputs, trainer.c, trainer.R)
            trainer.update_radius(epoch, dist)
            radii.append(float(trainer.R))
            assert rel(loss, tloss) < 1e-5, epoch
            assert rel(trainer.R, ttrainer.R) < 1e-5
            same_grads(grads, tnet, 1e-4)
            same_weights(net, tnet, 1e-4)
    assert run.cache_info().misses == 1
    assert (radii[-1] > 0) == (objective == "soft-boundary")

    # test(): scores of normal and anomalous samples
    x, labels, idx = svdd_data(np.random.default_rng(1), 12, anomalies=4)
    scores, tscores = trainer.scores(net, av.tensor(x)), ttrainer.scores(tnet, T(x))
    assert isinstance(scores, list) and np.allclose(scores, tscores, rtol=1e-5, atol=1e-5 * max(map(abs, tscores)))


# -- regressions ------------------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:size_average and reduce args")
def test_custom_losses_subclass_torch_nn_modules_loss_bases():
    """Found by the MoA program: `from torch.nn.modules.loss import _WeightedLoss` (the base of Kaggle's
    SmoothBCEwLogits) had no `avalon.nn.modules.loss` to be renamed to. It holds torch's names now: `_Loss` and
    `_WeightedLoss` (legacy size_average/reduce, `weight` a buffer in the state dict, as torch's) and the losses."""
    import avalon.nn.modules.loss as loss_module
    from avalon.nn.modules.loss import _Loss, _WeightedLoss

    def make(base, F_):
        class WeightedBCE(base):
            def forward(self, input, target):  # noqa: A002
                return F_.binary_cross_entropy_with_logits(input, target, self.weight, reduction=self.reduction)
        return WeightedBCE
    import torch.nn.modules.loss as tloss_module
    w = np.array([1.0, 2.0, 0.5], np.float32)
    ours, theirs = make(_WeightedLoss, F)(weight=av.tensor(w), size_average=False), \
        make(tloss_module._WeightedLoss, TF)(weight=T(w), size_average=False)
    assert ours.reduction == theirs.reduction == "sum"
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]
    assert list(make(_WeightedLoss, F)().state_dict()) == [] and make(_WeightedLoss, F)().weight is None
    x = randn(np.random.default_rng(0), 4, 3)
    y = (x > 0).astype(np.float32)
    assert rel(ours(av.tensor(x), av.tensor(y)), theirs(T(x), T(y))) < 1e-6
    assert isinstance(ours, nn.Module) and _Loss().reduction == "mean"
    assert nn.modules.loss is loss_module and nn.modules.Module is nn.Module
    assert {k for k in dir(tloss_module) if k.endswith("Loss") and k != "LinearCrossEntropyLoss"} <= set(dir(loss_module))
    assert all(getattr(loss_module, k) is getattr(nn, k) for k in dir(loss_module) if k.endswith("Loss") and k[0] != "_")


def test_torch_nn_modules_utils_and_batchnorm_bases_port():
    """`from torch.nn.modules.utils import _pair` and `isinstance(m, torch.nn.modules.batchnorm._BatchNorm)`
    (how training code finds every batch norm to exclude from weight decay or freeze) as torch's."""
    from avalon.nn.modules.batchnorm import _BatchNorm, _InstanceNorm
    from avalon.nn.modules.utils import _pair, _quadruple, _single, _triple
    for ours, theirs in ((_single, torch.nn.modules.utils._single), (_pair, torch.nn.modules.utils._pair),
                         (_triple, torch.nn.modules.utils._triple), (_quadruple, torch.nn.modules.utils._quadruple)):
        for v in (3, (1, 2), [4, 5, 6]):
            assert ours(v) == theirs(v)
    tbn, tin = torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm
    pairs = ((nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)), (nn.SyncBatchNorm(3), torch.nn.SyncBatchNorm(3)),
             (nn.InstanceNorm2d(3), torch.nn.InstanceNorm2d(3)), (nn.LayerNorm(3), torch.nn.LayerNorm(3)))
    for ours_m, theirs_m in pairs:
        assert isinstance(ours_m, _BatchNorm) == isinstance(theirs_m, tbn)
        assert isinstance(ours_m, _InstanceNorm) == isinstance(theirs_m, tin)
