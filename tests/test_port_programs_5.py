"""Round 4 of port QA, part B (after test_port_programs.py, _more and _3): programs as tutorials, papers and
popular repositories write them in PyTorch, written once over `lib` (torch.nn or avalon.nn), `F_` and `th`
(torch or avalon), trained a few steps from torch's weights on random data in float64 and compared with
torch after every step (losses, parameters, buffers), eagerly and compiled, with warnings as errors while
tracing: a RetinaNet/FCOS-style detector loss (IoU matching, sigmoid focal loss, smooth L1 and GIoU on the
positives), a DLRM recommender (EmbeddingBag with offsets and per-sample weights, pairwise dot
interactions, sparse-gradient Adagrad beside Adam), a mixture density network (MixtureSameFamily), CLIP's
contrastive loss with a clamped learnable temperature, a LLaMA-style block (RMSNorm, rotary embeddings,
causal SDPA, SwiGLU, tied embeddings, AdamW groups, warmup-cosine) and a Neural ODE integrated by RK4.

What the ports change is what the README says differs on purpose: gradients are values, and a selection
whose size depends on the data (`x[mask]` reads, `torch.where(cond)`) runs eagerly but inside a compiled
function is written with masks (`* mask`, `where`), as detection code written for XLA or export does. The
regressions at the end are what these programs found."""
from __future__ import annotations

import math

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


def warmup_cosine(warmup, total):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    return f


# -- 1. a one-stage detector head (RetinaNet / FCOS): IoU matching, sigmoid focal loss, smooth L1, GIoU ---

N_CLS_DET, N_ANCH = 3, 2


def det_head(lib, F_, th, c=4, prior=0.01):
    class RetinaHead(lib.Module):
        def __init__(self):
            super().__init__()
            self.conv = lib.Sequential(lib.Conv2d(c, c, 3, padding=1), lib.GroupNorm(2, c), lib.ReLU())
            self.cls_logits = lib.Conv2d(c, N_ANCH * N_CLS_DET, 3, padding=1)
            self.bbox_reg = lib.Conv2d(c, N_ANCH * 4, 3, padding=1)
            lib.init.normal_(self.cls_logits.weight, std=0.01)
            lib.init.constant_(self.cls_logits.bias, -math.log((1 - prior) / prior))

        def forward(self, x):
            t = self.conv(x)
            cls, reg = self.cls_logits(t), self.bbox_reg(t)
            N, _, H, W = cls.shape  # noqa: N806
            cls = cls.view(N, -1, N_CLS_DET, H, W).permute(0, 3, 4, 1, 2).reshape(N, -1, N_CLS_DET)
            reg = reg.view(N, -1, 4, H, W).permute(0, 3, 4, 1, 2).reshape(N, -1, 4)
            return cls, reg

    return RetinaHead()


def make_anchors(size=4, stride=8, scales=(8.0, 16.0)):
    """(H, W, A) anchors in torchvision's order, as x1, y1, x2, y2."""
    out = []
    for i in range(size):
        for j in range(size):
            cx, cy = (j + 0.5) * stride, (i + 0.5) * stride
            out += [[cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2] for s in scales]
    return np.array(out)


def box_area(b):
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def box_iou(th, boxes1, boxes2):  # torchvision.ops.box_iou
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = th.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = th.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area1[:, None] + area2 - inter)


def matcher(th, gt_boxes, anchors, masks, high=0.5, low=0.4):
    """torchvision's Matcher(0.5, 0.4, allow_low_quality_matches=True): -1 background, -2 ignored; each
    ground truth keeps its best anchors. `masks`: the low-quality pairs as a mask instead of torch.where's
    indices (a size known only from the data)."""
    match_quality_matrix = box_iou(th, gt_boxes, anchors)
    matched_vals, matches = match_quality_matrix.max(dim=0)
    all_matches = matches.clone()
    below = matched_vals < low
    between = (matched_vals >= low) & (matched_vals < high)
    matches[below] = -1
    matches[between] = -2
    highest, _ = match_quality_matrix.max(dim=1)
    if masks:
        best = (match_quality_matrix == highest[:, None]).any(dim=0)
        return th.where(best, all_matches, matches)
    _, pred_inds_to_update = th.where(match_quality_matrix == highest[:, None])
    matches[pred_inds_to_update] = all_matches[pred_inds_to_update]
    return matches


def encode(th, gt, anchors):  # BoxCoder(weights=(1, 1, 1, 1)).encode_single
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    return th.stack(((gx - ax) / aw, (gy - ay) / ah, th.log(gw / aw), th.log(gh / ah)), dim=1)


def decode(th, rel_codes, anchors):  # BoxCoder.decode_single
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ctr_x, ctr_y = anchors[:, 0] + 0.5 * widths, anchors[:, 1] + 0.5 * heights
    dx, dy = rel_codes[:, 0::4], rel_codes[:, 1::4]
    dw = th.clamp(rel_codes[:, 2::4], max=math.log(1000.0 / 16))
    dh = th.clamp(rel_codes[:, 3::4], max=math.log(1000.0 / 16))
    pred_ctr_x, pred_ctr_y = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
    pred_w, pred_h = th.exp(dw) * widths[:, None], th.exp(dh) * heights[:, None]
    c_to_c_h = th.tensor(0.5, dtype=pred_ctr_y.dtype) * pred_h
    c_to_c_w = th.tensor(0.5, dtype=pred_ctr_x.dtype) * pred_w
    return th.stack((pred_ctr_x - c_to_c_w, pred_ctr_y - c_to_c_h, pred_ctr_x + c_to_c_w, pred_ctr_y + c_to_c_h),
                    dim=2).flatten(1)


def sigmoid_focal_loss(th, F_, inputs, targets, alpha=0.25, gamma=2, reduction="none"):  # torchvision.ops
    p = th.sigmoid(inputs)
    ce_loss = F_.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss.sum() if reduction == "sum" else loss


def generalized_box_iou_loss(th, boxes1, boxes2, masks, reduction="none", eps=1e-7):  # torchvision.ops
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xkis1, ykis1 = th.max(x1, x1g), th.max(y1, y1g)
    xkis2, ykis2 = th.min(x2, x2g), th.min(y2, y2g)
    mask = (ykis2 > ykis1) & (xkis2 > xkis1)
    if masks:
        intsctk = th.where(mask, (xkis2 - xkis1) * (ykis2 - ykis1), 0.0)
    else:
        intsctk = th.zeros_like(x1)
        intsctk[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
    unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
    iouk = intsctk / (unionk + eps)
    xc1, yc1, xc2, yc2 = th.min(x1, x1g), th.min(y1, y1g), th.max(x2, x2g), th.max(y2, y2g)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    loss = 1 - (iouk - ((area_c - unionk) / (area_c + eps)))
    return loss.sum() if reduction == "sum" else loss


def detection_loss(th, F_, masks):
    """torchvision's RetinaNet head losses, per image, normalized by the positives; FCOS's GIoU on the
    decoded positive boxes beside the smooth L1 of the encoded ones. `masks`: positives selected by
    multiplying with the masks rather than by reading x[mask] (what a compiled step can hold)."""
    def loss(model, feats, gt_boxes, gt_labels, anchors):
        cls_logits, bbox_regression = model(feats)
        cls_losses, l1_losses, giou_losses = [], [], []
        for cls_i, reg_i, boxes_i, labels_i in zip(cls_logits, bbox_regression, gt_boxes, gt_labels):
            with th.no_grad():
                matched = matcher(th, boxes_i, anchors, masks)
            foreground = matched >= 0
            num_foreground = foreground.sum().clamp(min=1)
            valid = matched != -2
            matched_gt = boxes_i[matched.clamp(min=0)]
            if masks:
                fg = foreground[:, None].to(cls_i.dtype)
                target = F_.one_hot(labels_i[matched.clamp(min=0)], N_CLS_DET).to(cls_i.dtype) * fg
                focal = sigmoid_focal_loss(th, F_, cls_i, target) * valid[:, None]
                cls_losses.append(focal.sum() / num_foreground)
                l1 = F_.smooth_l1_loss(reg_i, encode(th, matched_gt, anchors), beta=1 / 9, reduction="none")
                l1_losses.append((l1 * fg).sum() / num_foreground)
                giou = generalized_box_iou_loss(th, decode(th, reg_i, anchors), matched_gt, masks)
                giou_losses.append((giou * foreground).sum() / num_foreground)
            else:
                target = th.zeros_like(cls_i)
                target[foreground, labels_i[matched[foreground]]] = 1.0
                cls_losses.append(sigmoid_focal_loss(th, F_, cls_i[valid], target[valid], reduction="sum")
                                  / num_foreground)
                target_regression = encode(th, matched_gt[foreground], anchors[foreground])
                l1_losses.append(F_.smooth_l1_loss(reg_i[foreground], target_regression, beta=1 / 9, reduction="sum")
                                 / num_foreground)
                pred_boxes = decode(th, reg_i[foreground], anchors[foreground])
                giou_losses.append(generalized_box_iou_loss(th, pred_boxes, matched_gt[foreground], masks,
                                                            reduction="sum") / num_foreground)
        n = len(cls_losses)
        return sum(cls_losses) / n + sum(l1_losses) / n + sum(giou_losses) / n
    return loss


def random_targets(rng, batch=2, n_gt=2):
    ctr = rng.uniform(6.0, 26.0, (batch, n_gt, 2))
    wh = rng.uniform(6.0, 18.0, (batch, n_gt, 2))
    return np.concatenate([ctr - wh / 2, ctr + wh / 2], axis=-1), rng.integers(0, N_CLS_DET, (batch, n_gt))


def test_retinanet_head_iou_matching_focal_smooth_l1_and_giou_losses():
    ours, theirs = pair(det_head)
    kw = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)
    opt, topt = optim.SGD(ours.parameters(), **kw), torch.optim.SGD(theirs.parameters(), **kw)
    anchors = make_anchors()
    rng = np.random.default_rng(0)
    match = av.compile(lambda b, a: matcher(av, b, a, masks=True), backend="numpy")
    step = train_step(detection_loss(av, F, masks=True))
    run = compiled(step, "numpy")
    for it in range(3):
        feats = rng.standard_normal((2, 4, 4, 4))
        boxes, labels = random_targets(rng)
        for b in boxes:  # torchvision's matcher eagerly (torch.where's indices) and the masked one compiled
            want = matcher(torch, T(b), T(anchors), masks=False).numpy()
            assert (matcher(av, av.tensor(b), av.tensor(anchors), masks=False).numpy() == want).all()
            assert (match(av.tensor(b), av.tensor(anchors)).numpy() == want).all()
            assert (want >= 0).any() and (want == -1).any()
        with torch.no_grad(), av.no_grad():  # torchvision's selections x[mask] eagerly, and the masked form
            tl = detection_loss(torch, TF, masks=False)(theirs, T(feats), T(boxes), T(labels), T(anchors))
            for masks in (False, True):
                got = detection_loss(av, F, masks)(ours, av.tensor(feats), av.tensor(boxes), av.tensor(labels),
                                                   av.tensor(anchors))
                assert rel(got, tl) < 1e-12, masks
        topt.zero_grad()
        tl = detection_loss(torch, TF, masks=False)(theirs, T(feats), T(boxes), T(labels), T(anchors))
        tl.backward()
        topt.step()
        with strict():  # under av.grad a selection's size must not depend on the data: the masked form
            loss = (run if it else step)(ours, opt, av.tensor(feats), av.tensor(boxes), av.tensor(labels),
                                         av.tensor(anchors))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1
    with pytest.raises(TypeError, match="boolean mask"):  # torchvision's form names the alternative
        av.value_and_grad(detection_loss(av, F, masks=False))(ours, av.tensor(feats), av.tensor(boxes),
                                                              av.tensor(labels), av.tensor(anchors))


# -- 2. DLRM: EmbeddingBag tables (sum with per-sample weights, mean, offsets), bottom/top MLPs, pairwise dot -
#       interactions picked with tril/triu_indices, BCE with logits; sparse Adagrad on the tables, Adam on the MLPs

LN_EMB, M_SPA, LN_BOT = (10, 7, 6), 4, (3, 8, 4)


def dlrm(lib, F_, th, itself=False):
    class DLRM_Net(lib.Module):  # noqa: N801 - facebookresearch/dlrm's name
        def create_mlp(self, ln, last_activation):
            layers = lib.ModuleList()
            for i in range(0, len(ln) - 1):
                n, m = ln[i], ln[i + 1]
                LL = lib.Linear(int(n), int(m), bias=True)  # noqa: N806
                mean, std_dev = 0.0, np.sqrt(2 / (m + n))  # Xavier, as dlrm_s_pytorch.py draws it with numpy
                W = np.random.normal(mean, std_dev, size=(m, n)).astype(np.float32)  # noqa: N806
                bt = np.random.normal(mean, np.sqrt(1 / m), size=m).astype(np.float32)
                LL.weight.data = th.tensor(W, requires_grad=True)
                LL.bias.data = th.tensor(bt, requires_grad=True)
                layers.append(LL)
                if i < len(ln) - 2 or last_activation:
                    layers.append(lib.ReLU())
            return lib.Sequential(*layers)

        def create_emb(self, m, ln):
            emb_l = lib.ModuleList()
            for i, n in enumerate(ln):
                EE = lib.EmbeddingBag(n, m, mode="mean" if i == 1 else "sum", sparse=True)  # noqa: N806
                W = np.random.uniform(low=-np.sqrt(1 / n), high=np.sqrt(1 / n), size=(n, m)).astype(np.float32)  # noqa: N806
                EE.weight.data = th.tensor(W, requires_grad=True)
                emb_l.append(EE)
            return emb_l

        def __init__(self):
            super().__init__()
            self.arch_interaction_itself = itself
            n_f = len(LN_EMB) + 1
            n_int = n_f * (n_f + 1) // 2 if itself else n_f * (n_f - 1) // 2
            self.emb_l = self.create_emb(M_SPA, LN_EMB)
            self.bot_l = self.create_mlp(LN_BOT, last_activation=True)
            self.top_l = self.create_mlp((M_SPA + n_int, 8, 1), last_activation=False)

        def apply_emb(self, lS_o, lS_i, v_W_l):  # noqa: N803
            ly = []
            for k, sparse_index_group_batch in enumerate(lS_i):
                sparse_offset_group_batch = lS_o[k]
                per_sample_weights = v_W_l[k] if v_W_l[k] is not None else None
                E = self.emb_l[k]  # noqa: N806
                V = E(sparse_index_group_batch, sparse_offset_group_batch, per_sample_weights=per_sample_weights)  # noqa: N806
                ly.append(V)
            return ly

        def interact_features(self, x, ly):
            (batch_size, d) = x.shape
            T_ = th.cat([x] + ly, dim=1).view((batch_size, -1, d))
            Z = th.bmm(T_, th.transpose(T_, 1, 2))  # noqa: N806
            _, ni, nj = Z.shape
            if self.arch_interaction_itself:
                li, lj = th.triu_indices(ni, nj)  # the upper triangle with the diagonal
            else:
                li, lj = th.tril_indices(ni, nj, offset=-1)
            Zflat = Z[:, li, lj]  # noqa: N806
            return th.cat([x] + [Zflat], dim=1)

        def forward(self, dense_x, lS_o, lS_i, lS_w):  # noqa: N803
            x = self.bot_l(dense_x)
            ly = self.apply_emb(lS_o, lS_i, lS_w)
            z = self.interact_features(x, ly)
            return self.top_l(z)

    return DLRM_Net()


def dlrm_opts(optim_, model):
    emb = [p for E in model.emb_l for p in E.parameters()]
    mlp = list(model.bot_l.parameters()) + list(model.top_l.parameters())
    return optim_.Adagrad(emb, lr=0.1, lr_decay=0.01), optim_.Adam(mlp, lr=0.01)


def dlrm_loss(lib):
    def loss(model, dense_x, offsets, indices, weights, y):
        return lib.BCEWithLogitsLoss()(model(dense_x, offsets, indices, weights).squeeze(1), y)
    return loss


def dlrm_step(model, opt_emb, opt_mlp, *batch):
    loss, grads = av.value_and_grad(dlrm_loss(nn))(model, *batch)
    opt_emb.step(grads)  # each optimizer takes its own parameters' gradients
    opt_mlp.step(grads)
    return loss


def dlrm_batch(rng, batch=3, n_idx=5):
    """Bags of different lengths (an empty one among them) with the same total, so offsets change and
    shapes stay."""
    dense = rng.standard_normal((batch, LN_BOT[0]))
    offsets, indices = [], []
    for n in LN_EMB:
        cuts = np.sort(rng.integers(0, n_idx + 1, batch - 1))
        offsets.append(np.concatenate([[0], cuts]))
        indices.append(rng.integers(0, n, n_idx))
    weights = [rng.uniform(0.5, 1.5, n_idx), None, None]  # weighted pooling on the first ("sum") table
    return dense, offsets, indices, weights, (rng.random(batch) < 0.5).astype(np.float64)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")  # torch's, from its sparse Adagrad
@pytest.mark.parametrize("itself", [False, True])
def test_dlrm_embedding_bags_dot_interactions_sparse_adagrad_and_adam(itself):
    ours, theirs = pair(lambda lib, F_, th: dlrm(lib, F_, th, itself))
    (opt_e, opt_m), (topt_e, topt_m) = dlrm_opts(optim, ours), dlrm_opts(torch.optim, theirs)
    rng = np.random.default_rng(1)
    run = compiled(dlrm_step, "cpu" if itself else "numpy")
    for it in range(3):
        dense, offsets, indices, weights, y = dlrm_batch(rng)
        if it == 1:
            offsets[1][1] = offsets[1][2]  # an empty bag: mean 0
        for o in (topt_e, topt_m):
            o.zero_grad()
        tl = dlrm_loss(torch.nn)(theirs, T(dense), [T(o) for o in offsets], [T(i) for i in indices],
                                 [None if w is None else T(w) for w in weights], T(y))
        tl.backward()
        assert theirs.emb_l[0].weight.grad.is_sparse
        topt_e.step()
        topt_m.step()
        with strict():
            loss = (run if it else dlrm_step)(ours, opt_e, opt_m, av.tensor(dense), [av.tensor(o) for o in offsets],
                                              [av.tensor(i) for i in indices],
                                              [None if w is None else av.tensor(w) for w in weights], av.tensor(y))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1  # new offsets (an empty bag among them): the same trace


# -- 3. a mixture density network: MixtureSameFamily(Categorical(logits), Independent(Normal, 1)) -----------

K_MIX, D_OUT = 3, 2


def mdn(lib, F_, th, hidden=8):
    D = th.distributions  # noqa: N806

    class MDN(lib.Module):
        def __init__(self):
            super().__init__()
            self.body = lib.Sequential(lib.Linear(2, hidden), lib.Tanh())
            self.pi = lib.Linear(hidden, K_MIX)
            self.mu = lib.Linear(hidden, K_MIX * D_OUT)
            self.sigma = lib.Linear(hidden, K_MIX * D_OUT)

        def forward(self, x):
            h = self.body(x)
            mu = self.mu(h).view(-1, K_MIX, D_OUT)
            sigma = F_.elu(self.sigma(h)).view(-1, K_MIX, D_OUT) + 1 + 1e-6
            mix = D.Categorical(logits=self.pi(h))
            comp = D.Independent(D.Normal(mu, sigma), 1)
            return D.MixtureSameFamily(mix, comp)

    return MDN()


def mdn_loss(model, x, y):
    return -model(x).log_prob(y).mean()


def test_mixture_density_network_nll_mean_variance_and_sample_shapes():
    ours, theirs = pair(mdn)
    opt, topt = optim.Adam(ours.parameters(), lr=0.02), torch.optim.Adam(theirs.parameters(), lr=0.02)
    rng = np.random.default_rng(2)
    for mode in ("eager", "numpy", "cpu"):
        x = rng.uniform(-1, 1, (6, 2))
        y = np.stack([np.sin(3 * x[:, 0]), x[:, 1] ** 2], 1) + 0.1 * rng.standard_normal((6, 2))
        topt.zero_grad()
        tl = mdn_loss(theirs, T(x), T(y))
        tl.backward()
        topt.step()
        with strict():
            loss = compiled(train_step(mdn_loss), mode)(ours, opt, av.tensor(x), av.tensor(y))
        assert rel(loss, tl) < 1e-12, mode
        same_weights(ours, theirs, 1e-10)
    with av.no_grad(), torch.no_grad():
        gmm, tgmm = ours(av.tensor(x)), theirs(T(x))
        assert gmm.batch_shape == tuple(tgmm.batch_shape) == (6,) and gmm.event_shape == (D_OUT,)
        assert rel(gmm.mean, tgmm.mean) < 1e-12 and rel(gmm.variance, tgmm.variance) < 1e-12
        assert rel(gmm.log_prob(av.tensor(y[:1])), tgmm.log_prob(T(y[:1]))) < 1e-12  # broadcast over the batch
        assert gmm.sample().shape == tuple(tgmm.sample().shape) == (6, D_OUT)
        draws = gmm.sample((4000,))
        assert draws.shape == tuple(tgmm.sample((4000,)).shape) == (4000, 6, D_OUT)
        std = np.sqrt(tgmm.variance.numpy() / 4000)  # the draws' mean within 5 standard errors
        assert (np.abs(draws.numpy().mean(0) - tgmm.mean.numpy()) < 5 * std).all()


# -- 4. CLIP: two encoders, normalized features, a learnable temperature clamped after each step, ----------
#       symmetric cross entropy with label smoothing (open_clip's ClipLoss), AdamW without decay on gains

CTX, VOCAB, EOT = 5, 9, 8


def clip(lib, F_, th, embed_dim=4, width=8, heads=2):
    class QuickGELU(lib.Module):
        def forward(self, x):
            return x * th.sigmoid(1.702 * x)

    class ResidualAttentionBlock(lib.Module):
        def __init__(self):
            super().__init__()
            self.attn = lib.MultiheadAttention(width, heads)
            self.ln_1 = lib.LayerNorm(width)
            self.mlp = lib.Sequential(lib.Linear(width, width * 4), QuickGELU(), lib.Linear(width * 4, width))
            self.ln_2 = lib.LayerNorm(width)
            mask = th.empty(CTX, CTX)  # CLIP's build_attention_mask: -inf above the diagonal
            mask.fill_(float("-inf"))
            mask.triu_(1)
            self.register_buffer("attn_mask", mask, persistent=False)  # (CLIP: a plain attribute; README)

        def attention(self, x):
            attn_mask = self.attn_mask.to(dtype=x.dtype)
            return self.attn(x, x, x, need_weights=False, attn_mask=attn_mask)[0]

        def forward(self, x):
            x = x + self.attention(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class CLIP(lib.Module):
        def __init__(self):
            super().__init__()
            self.visual = lib.Sequential(lib.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), lib.BatchNorm2d(4),
                                         lib.ReLU(), lib.AdaptiveAvgPool2d(1), lib.Flatten(), lib.Linear(4, embed_dim))
            self.transformer = ResidualAttentionBlock()
            self.token_embedding = lib.Embedding(VOCAB, width)
            self.positional_embedding = lib.Parameter(th.empty(CTX, width))
            self.ln_final = lib.LayerNorm(width)
            self.text_projection = lib.Parameter(th.empty(width, embed_dim))
            self.logit_scale = lib.Parameter(th.ones([]) * np.log(1 / 0.07))
            lib.init.normal_(self.token_embedding.weight, std=0.02)
            lib.init.normal_(self.positional_embedding, std=0.01)
            lib.init.normal_(self.text_projection, std=width ** -0.5)

        def encode_image(self, image):
            return self.visual(image)

        def encode_text(self, text):
            x = self.token_embedding(text) + self.positional_embedding
            x = x.permute(1, 0, 2)  # NLD -> LND
            x = self.transformer(x)
            x = x.permute(1, 0, 2)
            x = self.ln_final(x)
            return x[th.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection  # the EOT token

        def forward(self, image, text):
            image_features = F_.normalize(self.encode_image(image), dim=-1)  # open_clip
            text_features = self.encode_text(text)
            text_features = text_features / text_features.norm(dim=1, keepdim=True)  # OpenAI's
            logit_scale = self.logit_scale.exp()
            logits_per_image = logit_scale * image_features @ text_features.t()
            return logits_per_image, logits_per_image.t()

    return CLIP()


def clip_loss(th, F_):
    def loss(model, image, text):
        logits_per_image, logits_per_text = model(image, text)
        labels = th.arange(logits_per_image.shape[0], dtype=th.long)
        return (F_.cross_entropy(logits_per_image, labels, label_smoothing=0.1)
                + F_.cross_entropy(logits_per_text, labels, label_smoothing=0.1)) / 2
    return loss


def clip_opt(optim_, model):
    def exclude(n, p):
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = list(model.named_parameters())
    gain_or_bias = [p for n, p in named if exclude(n, p) and p.requires_grad]
    rest = [p for n, p in named if not exclude(n, p) and p.requires_grad]
    return optim_.AdamW([{"params": gain_or_bias, "weight_decay": 0.0}, {"params": rest, "weight_decay": 0.2}],
                        lr=0.05, betas=(0.9, 0.98), eps=1e-6)


def clip_step(model, opt, image, text):
    loss, grads = av.value_and_grad(clip_loss(av, F))(model, image, text)
    opt.step(grads)
    with av.no_grad():  # open_clip: clamp to 0 <= logit_scale <= ln(100)
        model.logit_scale.clamp_(0, math.log(100))
    return loss, grads


def tokens(rng, batch=4):
    text = rng.integers(1, EOT, (batch, CTX))
    for row, end in zip(text, rng.integers(1, CTX, batch)):
        row[end], row[end + 1:] = EOT, 0
    return text


def test_clip_contrastive_loss_with_a_clamped_learnable_temperature():
    ours, theirs = pair(clip)
    for m in (ours, theirs):  # from a checkpoint whose temperature has run past the bound
        with (torch.no_grad() if m is theirs else av.no_grad()):
            m.logit_scale.fill_(math.log(100) + 0.2)
    opt, topt = clip_opt(optim, ours), clip_opt(torch.optim, theirs)
    rng = np.random.default_rng(3)
    run = compiled(clip_step, "numpy")
    for it in range(3):
        image, text = rng.standard_normal((4, 3, 6, 6)), tokens(rng)
        topt.zero_grad()
        tl = clip_loss(torch, TF)(theirs, T(image), T(text))
        tl.backward()
        topt.step()
        with torch.no_grad():
            theirs.logit_scale.clamp_(0, math.log(100))
        with strict():
            loss, grads = (run if it else clip_step)(ours, opt, av.tensor(image), av.tensor(text))
        assert rel(loss, tl) < 1e-12, it
        for k, p in theirs.named_parameters():
            assert rel(grads[k], p.grad) < 1e-12, (it, k)
        same_weights(ours, theirs, 1e-8)  # the key bias's gradient is roundoff (softmax cancels a shift), ~1e-15,
        # which AdamW's eps = 1e-6 scales to steps of lr * 1e-9 that differ with the roundoff
        if it == 0:
            assert ours.logit_scale.item() == math.log(100)
    assert run.cache_info().misses == 1


# -- 5. a LLaMA-style decoder: RMSNorm, hand-written rotary embeddings (rotate_half), causal SDPA with ------
#       grouped KV heads, SwiGLU, tied embedding/lm_head; AdamW decaying only 2-D weights, clipping, warmup-cosine

L_VOCAB, L_DIM, L_HEADS, L_KV, L_SEQ = 11, 16, 2, 1, 6


def llama(lib, F_, th, n_layers=2, multiple_of=8, eps=1e-5):
    head_dim = L_DIM // L_HEADS

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return th.cat((-x2, x1), dim=-1)

    def apply_rotary_pos_emb(q, k, cos, sin):
        return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)

    def repeat_kv(x, n_rep):
        bs, n_kv, slen, hd = x.shape
        if n_rep == 1:
            return x
        return x[:, :, None, :, :].expand(bs, n_kv, n_rep, slen, hd).reshape(bs, n_kv * n_rep, slen, hd)

    class RotaryEmbedding(lib.Module):
        def __init__(self, base=10000):
            super().__init__()
            inv_freq = 1.0 / (base ** (th.arange(0, head_dim, 2, dtype=th.int64).float() / head_dim))
            self.register_buffer("inv_freq", inv_freq, persistent=False)

        def forward(self, seq_len):
            t = th.arange(seq_len, dtype=self.inv_freq.dtype)
            freqs = th.outer(t, self.inv_freq)
            emb = th.cat((freqs, freqs), dim=-1)
            return emb.cos(), emb.sin()

    class Attention(lib.Module):
        def __init__(self):
            super().__init__()
            self.wq = lib.Linear(L_DIM, L_HEADS * head_dim, bias=False)
            self.wk = lib.Linear(L_DIM, L_KV * head_dim, bias=False)
            self.wv = lib.Linear(L_DIM, L_KV * head_dim, bias=False)
            self.wo = lib.Linear(L_HEADS * head_dim, L_DIM, bias=False)

        def forward(self, x, cos, sin):
            bsz, seqlen, _ = x.shape
            q = self.wq(x).view(bsz, seqlen, L_HEADS, head_dim).transpose(1, 2)
            k = self.wk(x).view(bsz, seqlen, L_KV, head_dim).transpose(1, 2)
            v = self.wv(x).view(bsz, seqlen, L_KV, head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k, v = repeat_kv(k, L_HEADS // L_KV), repeat_kv(v, L_HEADS // L_KV)
            out = F_.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.wo(out.transpose(1, 2).contiguous().view(bsz, seqlen, -1))

    class FeedForward(lib.Module):
        def __init__(self):
            super().__init__()
            hidden_dim = int(2 * (4 * L_DIM) / 3)
            hidden_dim = multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)
            self.w1 = lib.Linear(L_DIM, hidden_dim, bias=False)
            self.w2 = lib.Linear(hidden_dim, L_DIM, bias=False)
            self.w3 = lib.Linear(L_DIM, hidden_dim, bias=False)

        def forward(self, x):
            return self.w2(F_.silu(self.w1(x)) * self.w3(x))

    class TransformerBlock(lib.Module):
        def __init__(self):
            super().__init__()
            self.attention, self.feed_forward = Attention(), FeedForward()
            self.attention_norm, self.ffn_norm = lib.RMSNorm(L_DIM, eps=eps), lib.RMSNorm(L_DIM, eps=eps)

        def forward(self, x, cos, sin):
            h = x + self.attention(self.attention_norm(x), cos, sin)
            return h + self.feed_forward(self.ffn_norm(h))

    class Transformer(lib.Module):
        def __init__(self):
            super().__init__()
            self.tok_embeddings = lib.Embedding(L_VOCAB, L_DIM)
            self.rotary = RotaryEmbedding()
            self.layers = lib.ModuleList([TransformerBlock() for _ in range(n_layers)])
            self.norm = lib.RMSNorm(L_DIM, eps=eps)
            self.output = lib.Linear(L_DIM, L_VOCAB, bias=False)
            self.output.weight = self.tok_embeddings.weight  # weight tying
            self.apply(self._init_weights)

        def _init_weights(self, module):
            if isinstance(module, lib.Linear):
                lib.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, lib.Embedding):
                lib.init.normal_(module.weight, mean=0.0, std=0.02)

        def forward(self, tokens):
            h = self.tok_embeddings(tokens)
            cos, sin = self.rotary(tokens.shape[1])
            for layer in self.layers:
                h = layer(h, cos.to(h.dtype), sin.to(h.dtype))
            return self.output(self.norm(h))

    return Transformer()


def llama_setup(optim_, model, weight_decay=0.1):
    param_dict = {pn: p for pn, p in model.named_parameters() if p.requires_grad}  # nanoGPT's configure_optimizers
    decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
    nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
    optim_groups = [{"params": decay_params, "weight_decay": weight_decay}, {"params": nodecay_params, "weight_decay": 0.0}]
    opt = optim_.AdamW(optim_groups, lr=3e-2, betas=(0.9, 0.95))
    return opt, optim_.lr_scheduler.LambdaLR(opt, warmup_cosine(1, 4))


def lm_loss(F_):
    def loss(model, tokens, targets):
        logits = model(tokens)
        return F_.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
    return loss


def llama_step(model, opt, x, y):
    loss, grads = av.value_and_grad(lm_loss(F))(model, x, y)
    norm = nn.utils.clip_grad_norm_(grads, 1.0)
    opt.step(grads)
    return loss, norm, grads


def test_llama_block_rope_sdpa_swiglu_tied_embeddings_adamw_groups_and_warmup_cosine():
    ours, theirs = pair(llama)
    assert ours.output.weight is ours.tok_embeddings.weight
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    (opt, sched), (topt, tsched) = llama_setup(optim, ours), llama_setup(torch.optim, theirs)
    rng = np.random.default_rng(4)
    run = compiled(llama_step, "cpu")
    for it in range(3):
        data = rng.integers(0, L_VOCAB, (2, L_SEQ + 1))
        x, y = data[:, :-1], data[:, 1:]
        topt.zero_grad()
        tl = lm_loss(TF)(theirs, T(x), T(y))
        tl.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        tgrads = {k: p.grad.clone() for k, p in theirs.named_parameters()}
        topt.step()
        tsched.step()
        with strict():
            loss, norm, grads = (run if it else llama_step)(ours, opt, av.tensor(x), av.tensor(y))
        sched.step()
        assert rel(loss, tl) < 1e-12 and rel(norm, tnorm) < 1e-12, it
        assert sorted(grads) == sorted(tgrads)
        for k, g in tgrads.items():  # the tied weight: the embedding's and the head's gradients summed
            assert rel(grads[k], g) < 1e-10, (it, k)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in topt.param_groups], rel=1e-14)
        same_weights(ours, theirs, 1e-10)
        assert ours.output.weight is ours.tok_embeddings.weight
    assert run.cache_info().misses == 1


# -- 6. a Neural ODE (torchdiffeq's ode_demo): an MLP vector field integrated by fixed-step RK4 in forward ---

def neural_ode(lib, F_, th, hidden=16):
    class ODEFunc(lib.Module):
        def __init__(self):
            super().__init__()
            self.net = lib.Sequential(lib.Linear(2, hidden), lib.Tanh(), lib.Linear(hidden, 2))
            for m in self.net.modules():
                if isinstance(m, lib.Linear):
                    lib.init.normal_(m.weight, mean=0, std=0.1)
                    lib.init.constant_(m.bias, val=0)

        def forward(self, t, y):
            return self.net(y ** 3)

    class ODEBlock(lib.Module):
        def __init__(self, substeps=2):
            super().__init__()
            self.func, self.substeps = ODEFunc(), substeps

        def forward(self, y0, t):
            ys, y = [y0], y0
            for t0, t1 in zip(t[:-1], t[1:]):
                dt = (t1 - t0) / self.substeps
                for s in range(self.substeps):
                    ts = t0 + s * dt
                    k1 = self.func(ts, y)
                    k2 = self.func(ts + dt / 2, y + dt * k1 / 2)
                    k3 = self.func(ts + dt / 2, y + dt * k2 / 2)
                    k4 = self.func(ts + dt, y + dt * k3)
                    y = y + dt * (k1 + 2 * k2 + 2 * k3 + k4) / 6
                ys.append(y)
            return th.stack(ys)

    return ODEBlock()


def ode_loss(th):
    def loss(model, y0, t, batch_y):
        return th.mean(th.abs(model(y0, t) - batch_y))
    return loss


def test_neural_ode_rk4_loop_in_forward_trained_with_rmsprop():
    ours, theirs = pair(neural_ode)
    opt, topt = optim.RMSprop(ours.parameters(), lr=1e-2), torch.optim.RMSprop(theirs.parameters(), lr=1e-2)
    true_A = np.array([[-0.1, 2.0], [-2.0, -0.1]])  # noqa: N806 - the demo's spiral
    t = np.linspace(0.0, 1.0, 4)
    rng = np.random.default_rng(5)
    step = train_step(ode_loss(av))
    run = compiled(step, "cpu")
    for it in range(3):
        y0 = rng.uniform(-1.5, 1.5, (4, 2))
        ys = [y0]
        for _ in t[1:]:
            ys.append((ys[-1] ** 3) @ true_A * (t[1] - t[0]) + ys[-1])
        batch_y = np.stack(ys)
        topt.zero_grad()
        tl = ode_loss(torch)(theirs, T(y0), T(t), T(batch_y))
        tl.backward()
        topt.step()
        with strict():
            loss = (run if it else step)(ours, opt, av.tensor(y0), av.tensor(t), av.tensor(batch_y))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1
    with av.no_grad(), torch.no_grad():
        assert rel(ours(av.tensor(y0), av.tensor(t)), theirs(T(y0), T(t))) < 1e-12


# -- regressions: what the programs above found --------------------------------------------------------------

def test_a_boolean_mask_beside_other_indices_reads_and_writes_as_torch():
    """torchvision's `gt_classes_target[foreground, labels[matched[foreground]]] = 1.0`: a mask beside an
    integer (array) index was refused in writes (and reads), and `x[mask, :] = v` too; a concrete mask now
    stands for its true positions, as torch's."""
    rng = np.random.default_rng(20)
    x = rng.standard_normal((5, 4))
    m, i = np.array([True, False, True, True, False]), np.array([3, 0, 3])

    def writes(th, x, m, i):
        y = x.clone()
        y[m, i] = -1.0
        y[m, 1] = -2.0
        y[~m, :] = 0.5
        return y

    for f in (writes, lambda th, x, m, i: x[m, i], lambda th, x, m, i: x[m, 2]):
        want = f(torch, T(x), T(m), T(i))
        got = f(av, av.tensor(x), av.tensor(m), av.tensor(i))
        assert got.shape == tuple(want.shape) and (got.numpy() == want.numpy()).all()


@pytest.mark.parametrize("where", ["[i, j]", "[:, i, j]", "[i, :, j]", "[i, j, 1:]", "[1, i, j]"])
def test_several_integer_array_indices_broadcast_together_as_torch(where):
    """CLIP's `x[torch.arange(n), text.argmax(-1)]` and DLRM's `Z[:, li, lj]`: only one integer-array index
    was supported. Adjacent arrays give the broadcast dims in place, arrays apart put them first; gradients
    add up over repeated positions; traced indices (compiled) too."""
    rng = np.random.default_rng(21)
    x, w = rng.standard_normal((3, 4, 5)), None
    i, j = np.array([[0, 2, 2], [1, 0, 2]]), np.array([1, 3, 1])

    def f(th, x, i, j):
        return eval("x" + where, {"x": x, "i": i, "j": j})

    tx = T(x).requires_grad_()
    want = f(torch, tx, T(i), T(j))
    w = rng.standard_normal(tuple(want.shape))
    (want * T(w)).sum().backward()
    assert rel(f(av, av.tensor(x), av.tensor(i), av.tensor(j)), want) == 0
    run = av.compile(lambda x, i, j: f(av, x, i, j))
    assert rel(run(av.tensor(x), av.tensor(i), av.tensor(j)), want) == 0
    g = av.grad(lambda x, i, j, w: (f(av, x, i, j) * w).sum())(av.tensor(x), av.tensor(i), av.tensor(j), av.tensor(w))
    assert rel(g, tx.grad) < 1e-15


def test_a_broadcast_of_a_detached_value_keeps_its_storage_alive():
    """The RetinaNet matcher under no_grad, per image, inside av.value_and_grad: the second image's IoUs
    were computed against anchors overwritten by its boxes. A broadcast read its operand lazily through
    a stop_gradient, whose storage the memory plan had given to a later value."""
    b, a = np.arange(16.0).reshape(2, 2, 4), 100 * np.arange(12.0).reshape(3, 4)

    def f(w, b, a):
        out = []
        with av.no_grad():
            for bi in b:
                out.append(bi[:, None, :2] + a[:, :2])
        return (w * 2).sum(), out

    (_, out), _ = av.value_and_grad(f, has_aux=True)(av.ones(2, dtype=av.float64), av.tensor(b), av.tensor(a))
    for bi, o in zip(b, out):
        assert (o.numpy() == bi[:, None, :2] + a[:, :2]).all()


def test_tri_indices_inside_a_compiled_function_are_not_captured_arrays():
    """DLRM's `torch.tril_indices(ni, nj, offset=-1)` in the forward was an array captured while tracing,
    so the step compiled again on every call (and said so)."""
    f = av.compile(lambda z: z[:, av.tril_indices(4, 4, -1)[0], av.tril_indices(4, 4, -1)[1]]
                   + z[:, av.triu_indices(4, 4)[0], av.triu_indices(4, 4)[1]].sum(1, keepdim=True))
    z = np.random.default_rng(22).standard_normal((2, 4, 4))
    (li, lj), (ui, uj) = torch.tril_indices(4, 4, -1), torch.triu_indices(4, 4)
    want = T(z)[:, li, lj] + T(z)[:, ui, uj].sum(1, keepdim=True)
    with strict():
        for _ in range(2):
            assert rel(f(av.tensor(z)), want) < 1e-15
    assert f.cache_info().misses == 1
    for fn in ("tril_indices", "triu_indices"):
        for args in ((3, 5, 1), (5, 3, -2), (3, 3, -5)):
            got = av.compile(lambda fn, args: getattr(av, fn)(*args))(fn, args)
            assert (got.numpy() == getattr(torch, fn)(*args).numpy()).all() and got.dtype == av.int64


def test_init_code_of_popular_repositories_ports():
    """dlrm's `LL.weight.data = torch.tensor(W, requires_grad=True)` and CLIP's attention mask built with
    `mask.triu_(1)`: `av.tensor` took no `requires_grad`, `.data` could not be assigned, `triu_`/`tril_`
    were missing."""
    lin = nn.Linear(3, 2)
    w = lin.weight
    lin.weight.data = av.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    assert lin.weight is w and (w.numpy() == 1).all()
    lin.bias.data = av.tensor(np.arange(4.0))  # torch's `.data =` may change the shape and dtype too
    assert lin.bias.shape == (4,) and lin.bias.dtype == av.float64
    for name in ("triu_", "tril_"):
        m, tm = av.full((3, 4), 2.0), torch.full((3, 4), 2.0)
        assert getattr(m, name)(1) is m
        getattr(tm, name)(1)
        assert (m.numpy() == tm.numpy()).all()


def test_mixture_same_family_of_scalar_normals_without_a_batch():
    """MixtureSameFamily was missing from avalon.distributions (the MDN above); torch's 1-d GMM example."""
    D, tD = av.distributions, torch.distributions  # noqa: N806
    logits, loc, scale = np.array([0.3, -1.0, 0.5]), np.array([-2.0, 0.0, 3.0]), np.array([0.5, 1.0, 2.0])
    gmm = D.MixtureSameFamily(D.Categorical(logits=arr(logits)), D.Normal(arr(loc), arr(scale)))
    tgmm = tD.MixtureSameFamily(tD.Categorical(logits=T(logits)), tD.Normal(T(loc), T(scale)))
    x = np.linspace(-4, 5, 7)
    assert gmm.batch_shape == () and gmm.event_shape == ()
    for f in (lambda d, x: d.log_prob(x), lambda d, x: d.cdf(x), lambda d, x: d.mean, lambda d, x: d.variance):
        assert rel(f(gmm, arr(x)), f(tgmm, T(x))) < 1e-14
    assert gmm.sample((3, 2)).shape == (3, 2)
    with pytest.raises(ValueError, match="does not equal"):
        D.MixtureSameFamily(D.Categorical(logits=arr(logits[:2])), D.Normal(arr(loc), arr(scale)))


def test_sdpa_enable_gqa_repeats_key_value_heads_as_torch():
    """The LLaMA block above repeats its key/value heads by hand (Meta's repeat_kv); torch >= 2.5 code passes
    `enable_gqa=True` instead, which was refused."""
    rng = np.random.default_rng(23)
    q, k, v = rng.standard_normal((2, 4, 5, 3)), rng.standard_normal((2, 2, 5, 3)), rng.standard_normal((2, 2, 5, 6))
    tq, tk, tv = (T(a).requires_grad_() for a in (q, k, v))
    want = TF.scaled_dot_product_attention(tq, tk, tv, is_causal=True, enable_gqa=True)
    w = rng.standard_normal(tuple(want.shape))
    (want * T(w)).sum().backward()

    def f(q, k, v, w):
        return (F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True) * w).sum()

    loss, grads = av.compile(av.value_and_grad(f, argnums=(0, 1, 2)))(*(av.tensor(a) for a in (q, k, v, w)))
    assert rel(loss, (want * T(w)).sum()) < 1e-13
    for g, t in zip(grads, (tq, tk, tv)):
        assert rel(g, t.grad) < 1e-13
