"""Round 4 of port QA, part A (after test_port_programs.py, _more and _3): programs as tutorials and papers
write them in PyTorch, written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random data in float64 and compared with torch after every
step (losses, parameters, buffers), eagerly and compiled, with warnings as errors while tracing: TransE
knowledge-graph embeddings (margin ranking on corrupted triples, entity rows renormalized in place, and
`Embedding(max_norm=...)`), a Siamese net with triplet and cosine-embedding losses, Gatys style transfer
with L-BFGS over the image, a WaveNet/TCN with weight-normed dilated causal convolutions, a CTC speech
model (bidirectional LSTM, packed sequences of varying lengths) and a categorical VAE with Gumbel-softmax.

What the ports change is what the README says differs on purpose: gradients are values
(`av.value_and_grad`, `opt.step(grads)`, an L-BFGS closure that returns them). The regressions at the
end are what these programs found."""
from __future__ import annotations

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


# -- 1. TransE (mklimasz/TransE-PyTorch): entity and relation embeddings, L1/L2 translation distances, -----
#       MarginRankingLoss(reduction="none") on positive vs corrupted triples, entity rows renormalized in
#       place through `.data` in the forward; and the paper's renormalization after each step under no_grad

N_ENT, N_REL, DIM = 7, 3, 4


def transe(lib, F_, th, norm=1, margin=1.0, renorm_in_forward=True, max_norm=None):
    class TransE(lib.Module):
        def __init__(self):
            super().__init__()
            self.norm = norm
            self.entities_emb = self._init_enitity_emb()
            self.relations_emb = self._init_relation_emb()
            self.criterion = lib.MarginRankingLoss(margin=margin, reduction="none")

        def _init_enitity_emb(self):
            entities_emb = lib.Embedding(num_embeddings=N_ENT + 1, embedding_dim=DIM, padding_idx=N_ENT,
                                         max_norm=max_norm)
            uniform_range = 6 / np.sqrt(DIM)
            entities_emb.weight.data.uniform_(-uniform_range, uniform_range)
            return entities_emb

        def _init_relation_emb(self):
            relations_emb = lib.Embedding(num_embeddings=N_REL + 1, embedding_dim=DIM, padding_idx=N_REL)
            uniform_range = 6 / np.sqrt(DIM)
            relations_emb.weight.data.uniform_(-uniform_range, uniform_range)
            # -1 to avoid nan for OOV vector
            relations_emb.weight.data[:-1, :].div_(relations_emb.weight.data[:-1, :].norm(p=1, dim=1, keepdim=True))
            return relations_emb

        def forward(self, positive_triplets, negative_triplets):
            if renorm_in_forward:  # -1 to avoid nan for OOV vector
                self.entities_emb.weight.data[:-1, :].div_(
                    self.entities_emb.weight.data[:-1, :].norm(p=2, dim=1, keepdim=True))
            assert positive_triplets.size()[1] == 3
            positive_distances = self._distance(positive_triplets)
            assert negative_triplets.size()[1] == 3
            negative_distances = self._distance(negative_triplets)
            return self.loss(positive_distances, negative_distances), positive_distances, negative_distances

        def loss(self, positive_distances, negative_distances):
            # (the repository's `torch.tensor([-1], dtype=torch.long)`: see the regression at the end)
            target = th.full_like(positive_distances, -1)
            return self.criterion(positive_distances, negative_distances, target)

        def _distance(self, triplets):
            heads, relations, tails = triplets[:, 0], triplets[:, 1], triplets[:, 2]
            return (self.entities_emb(heads) + self.relations_emb(relations) - self.entities_emb(tails)).norm(
                p=self.norm, dim=1)

    return TransE()


def corrupt(rng, triples):
    """The repository's negative sampling, drawn beforehand: the head or the tail replaced at random."""
    neg = triples.copy()
    head = rng.random(len(triples)) < 0.5
    rand = rng.integers(0, N_ENT, len(triples))
    neg[head, 0], neg[~head, 2] = rand[head], rand[~head]
    return neg


def hit_at_k(th, predictions, ground_truth_idx, k=3):
    """The repository's metrics (k=10 there): distances, smaller is better."""
    assert predictions.size(0) == ground_truth_idx.size(0)
    zero_tensor, one_tensor = th.tensor([0]), th.tensor([1])
    _, indices = predictions.topk(k=k, largest=False)
    return th.where(indices == ground_truth_idx, one_tensor, zero_tensor).sum().item()


def mrr(predictions, ground_truth_idx):
    indices = predictions.argsort()
    return (1.0 / (indices == ground_truth_idx).nonzero()[:, 1].float().add(1.0)).sum().item()


def evaluate(th, model, triples):
    """The repository's tail and head prediction: every entity scored in place of the tail, then the head."""
    entity_ids = th.arange(end=N_ENT).unsqueeze(0)
    head, relation, tail = triples[:, 0], triples[:, 1], triples[:, 2]
    current_batch_size = head.size()[0]
    all_entities = entity_ids.repeat(current_batch_size, 1)
    heads = head.reshape(-1, 1).repeat(1, all_entities.size()[1])
    relations = relation.reshape(-1, 1).repeat(1, all_entities.size()[1])
    tails = tail.reshape(-1, 1).repeat(1, all_entities.size()[1])
    triplets = th.stack((heads, relations, all_entities), dim=2).reshape(-1, 3)
    tails_predictions = model._distance(triplets).reshape(current_batch_size, -1)
    triplets = th.stack((all_entities, relations, tails), dim=2).reshape(-1, 3)
    heads_predictions = model._distance(triplets).reshape(current_batch_size, -1)
    predictions = th.cat((tails_predictions, heads_predictions), dim=0)
    ground_truth_entity_id = th.cat((tail.reshape(-1, 1), head.reshape(-1, 1)))
    return hit_at_k(th, predictions, ground_truth_entity_id), mrr(predictions, ground_truth_entity_id), predictions


def transe_loss(model, pos, neg):
    loss, pd, nd = model(pos, neg)
    return loss.mean(), (pd, nd)


def transe_step(model, opt, pos, neg):
    (loss, (pd, nd)), grads = av.value_and_grad(transe_loss, has_aux=True)(model, pos, neg)
    opt.step(grads)
    return loss, pd, nd


@pytest.mark.parametrize("norm", [1, 2])
def test_transe_margin_ranking_on_corrupted_triples_with_entities_renormalized_through_data(norm):
    ours, theirs = pair(lambda lib, F_, th: transe(lib, F_, th, norm=norm))
    opt, topt = optim.SGD(ours.parameters(), lr=0.1), torch.optim.SGD(theirs.parameters(), lr=0.1)
    rng = np.random.default_rng(norm)
    pad_row = ours.entities_emb.weight.numpy()[-1].copy()
    run = compiled(transe_step, "numpy" if norm == 1 else "cpu")
    for it in range(3):  # eagerly, then compiled
        pos = np.stack([rng.integers(0, N_ENT, 5), rng.integers(0, N_REL, 5), rng.integers(0, N_ENT, 5)], 1)
        neg = corrupt(rng, pos)
        topt.zero_grad()
        tl, tpd, tnd = theirs(T(pos), T(neg))
        tl.mean().backward()
        topt.step()
        with strict():
            loss, pd, nd = (run if it else transe_step)(ours, opt, av.tensor(pos), av.tensor(neg))
        assert rel(loss, tl.mean()) < 1e-12 and rel(pd, tpd) < 1e-12 and rel(nd, tnd) < 1e-12, it
        same_weights(ours, theirs, 1e-11)  # the renormalized rows, then the step on them
    test = np.stack([rng.integers(0, N_ENT, 4), rng.integers(0, N_REL, 4), rng.integers(0, N_ENT, 4)], 1)
    with av.no_grad(), torch.no_grad():
        hits, score, pred = evaluate(av, ours, av.tensor(test))
        thits, tscore, tpred = evaluate(torch, theirs, T(test))
    assert rel(pred, tpred) < 1e-12 and hits == thits
    assert score == pytest.approx(tscore, rel=1e-6)  # (`.float()`: a float32 sum of reciprocal ranks)
    w = ours.entities_emb.weight.numpy()
    assert not np.allclose(np.linalg.norm(w[:-1], axis=1), 1.0)  # the step moved them off the sphere again
    assert (w[-1] == pad_row).all()  # the padding row: no gradient, never renormalized


def transe_renorm_step(F_, th, step):
    """Bordes et al.'s algorithm order: normalize the entities in place, then the step on a batch."""
    def renorm_then_step(model, opt, pos, neg):
        with th.no_grad():
            w = model.entities_emb.weight
            w[:-1] = F_.normalize(w[:-1], p=2, dim=1)
        return step(model, opt, pos, neg)
    return renorm_then_step


def transe_torch_step(model, opt, pos, neg):
    opt.zero_grad()
    loss, pd, nd = model(pos, neg)
    loss.mean().backward()
    opt.step()
    return loss.mean(), pd, nd


def test_transe_entities_normalized_in_place_under_no_grad_before_each_step():
    make = lambda lib, F_, th: transe(lib, F_, th, norm=1, renorm_in_forward=False)  # noqa: E731
    ours, theirs = pair(make)
    opt, topt = optim.Adagrad(ours.parameters(), lr=0.1), torch.optim.Adagrad(theirs.parameters(), lr=0.1)
    rng = np.random.default_rng(3)
    tstep, step = transe_renorm_step(TF, torch, transe_torch_step), transe_renorm_step(F, av, transe_step)
    run = compiled(step, "cpu")
    for it in range(3):
        pos = np.stack([rng.integers(0, N_ENT, 4), rng.integers(0, N_REL, 4), rng.integers(0, N_ENT, 4)], 1)
        neg = corrupt(rng, pos)
        tl, _, _ = tstep(theirs, topt, T(pos), T(neg))
        with strict():
            loss, _, _ = (run if it else step)(ours, opt, av.tensor(pos), av.tensor(neg))
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-11)


def test_transe_with_embedding_max_norm_renormalizing_the_rows_it_looks_up():
    """The other way TransE implementations keep entities on the ball: `nn.Embedding(max_norm=1)`, whose
    lookups scale the rows they read in place (torch's embedding_renorm_) before the gradient step."""
    make = lambda lib, F_, th: transe(lib, F_, th, norm=2, renorm_in_forward=False, max_norm=1.0)  # noqa: E731
    ours, theirs = pair(make)
    assert repr(ours.entities_emb) == repr(theirs.entities_emb)
    opt, topt = optim.SGD(ours.parameters(), lr=0.3), torch.optim.SGD(theirs.parameters(), lr=0.3)
    rng = np.random.default_rng(4)
    run = compiled(transe_step, "numpy")
    for it in range(3):
        pos = np.stack([rng.integers(0, N_ENT, 4), rng.integers(0, N_REL, 4), rng.integers(0, N_ENT, 4)], 1)
        neg = corrupt(rng, pos)
        tl, tpd, tnd = transe_torch_step(theirs, topt, T(pos), T(neg))
        with strict():
            loss, pd, nd = (run if it else transe_step)(ours, opt, av.tensor(pos), av.tensor(neg))
        assert rel(loss, tl) < 1e-12 and rel(pd, tpd) < 1e-12 and rel(nd, tnd) < 1e-12, it
        same_weights(ours, theirs, 1e-11)
    norms = np.linalg.norm(ours.entities_emb.weight.numpy(), axis=1)
    assert (norms > 1.0 + 1e-6).any()  # rows not looked up yet (and the step's moves) keep their norms
    with av.no_grad(), torch.no_grad():  # a lookup alone renormalizes, eagerly too
        ids = np.array([0, 3, 3, 5])
        assert rel(ours.entities_emb(av.tensor(ids)), theirs.entities_emb(T(ids))) < 1e-12
        same_weights(ours, theirs, 1e-11)


# -- 1b. a Siamese/triplet net (adambielski/siamese-triplet): a shared embedding net with PReLU, ------------
#        TripletMarginLoss with the swap, CosineEmbeddingLoss on pairs, the repository's contrastive loss

def siamese(lib, F_, th):
    class EmbeddingNet(lib.Module):
        def __init__(self):
            super().__init__()
            self.convnet = lib.Sequential(lib.Conv2d(1, 4, 3), lib.PReLU(), lib.MaxPool2d(2, stride=2))
            self.fc = lib.Sequential(lib.Linear(4 * 3 * 3, 8), lib.PReLU(), lib.Linear(8, 3))

        def forward(self, x):
            output = self.convnet(x)
            output = output.view(output.size()[0], -1)
            return self.fc(output)

        def get_embedding(self, x):
            return self.forward(x)

    class TripletNet(lib.Module):
        def __init__(self, embedding_net):
            super().__init__()
            self.embedding_net = embedding_net

        def forward(self, x1, x2, x3):
            return self.embedding_net(x1), self.embedding_net(x2), self.embedding_net(x3)

        def get_embedding(self, x):
            return self.embedding_net(x)

    return TripletNet(EmbeddingNet())


class ContrastiveLoss:
    """The repository's: 0.5 (y d^2 + (1 - y) relu(margin - d)^2), d the pairs' distance."""

    def __init__(self, F_, margin):
        self.F_, self.margin, self.eps = F_, margin, 1e-9

    def __call__(self, output1, output2, target, size_average=True):
        distances = (output2 - output1).pow(2).sum(1)  # squared distances
        losses = 0.5 * (target.float() * distances
                        + (1 + -1 * target).float() * self.F_.relu(self.margin - (distances + self.eps).sqrt()).pow(2))
        return losses.mean() if size_average else losses.sum()


def siamese_loss(lib, F_):
    triplet = lib.TripletMarginLoss(margin=1.0, p=2, swap=True)
    cosine = lib.CosineEmbeddingLoss(margin=0.2)
    contrastive = ContrastiveLoss(F_, margin=1.0)

    def loss(model, anchor, positive, negative, y):
        a, p, n = model(anchor, positive, negative)
        other = p * y[:, None] + n * (1 - y[:, None])  # pairs: the positive where y is 1, else the negative
        # (CosineEmbeddingLoss takes {1, -1} targets; the contrastive loss's `.float()` of the integer
        # target is float32, promoted by the float64 distances)
        return triplet(a, p, n) + cosine(a, other, y * 2 - 1) + 0.5 * contrastive(a, other, y)
    return loss


def test_siamese_triplet_net_with_triplet_cosine_embedding_and_contrastive_losses():
    ours, theirs = pair(siamese)
    opt, topt = optim.Adam(ours.parameters(), lr=1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2)
    sched, tsched = optim.lr_scheduler.StepLR(opt, 1, gamma=0.5), torch.optim.lr_scheduler.StepLR(topt, 1, gamma=0.5)
    step = train_step(siamese_loss(nn, F))
    rng = np.random.default_rng(5)
    run = compiled(step, "cpu")
    for it in range(3):
        a, p, n = (rng.standard_normal((4, 1, 8, 8)) for _ in range(3))
        y = rng.integers(0, 2, 4)
        topt.zero_grad()
        tl = siamese_loss(torch.nn, TF)(theirs, T(a), T(p), T(n), T(y))
        tl.backward()
        topt.step()
        tsched.step()
        with strict():
            loss = (run if it else step)(ours, opt, av.tensor(a), av.tensor(p), av.tensor(n), av.tensor(y))
        sched.step()
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-11)
    with av.no_grad(), torch.no_grad():
        assert rel(ours.get_embedding(av.tensor(a)), theirs.get_embedding(T(a))) < 1e-12


# -- 2. neural style transfer, Gatys et al. as Udacity's notebook writes it (features picked by layer index --
#       from the frozen net's `_modules`, weighted Gram losses, a total-variation term), optimized over the
#       image by L-BFGS with a strong-Wolfe line search and a closure that clamps it, as PyTorch's tutorial

def style_cnn(lib, F_, th):
    return lib.Sequential(lib.Conv2d(3, 4, 3, padding=1), lib.ReLU(inplace=True), lib.Conv2d(4, 4, 3, padding=1),
                          lib.ReLU(inplace=True), lib.AvgPool2d(2), lib.Conv2d(4, 6, 3, padding=1),
                          lib.ReLU(inplace=True), lib.Conv2d(6, 6, 3, padding=1), lib.ReLU(inplace=True))


STYLE_LAYERS = {"0": "conv1_1", "2": "conv1_2", "5": "conv2_1", "7": "conv2_2"}
STYLE_WEIGHTS = {"conv1_1": 1.0, "conv1_2": 0.75, "conv2_1": 0.2}


def get_features(image, model, layers=None):
    if layers is None:
        layers = STYLE_LAYERS
    features = {}
    x = image
    for name, layer in model._modules.items():
        x = layer(x)
        if name in layers:
            features[layers[name]] = x
    return features


def gram_matrix(th, tensor):
    _, d, h, w = tensor.size()
    tensor = tensor.view(d, h * w)
    return th.mm(tensor, tensor.t())


def style_total_loss(th):
    def total(target, vgg, content_features, style_grams, content_weight=1.0, style_weight=1e3, tv_weight=1e-2):
        target_features = get_features(target, vgg)
        content_loss = th.mean((target_features["conv2_2"] - content_features["conv2_2"]) ** 2)
        style_loss = 0
        for layer in STYLE_WEIGHTS:
            target_feature = target_features[layer]
            target_gram = gram_matrix(th, target_feature)
            _, d, h, w = target_feature.shape
            layer_style_loss = STYLE_WEIGHTS[layer] * th.mean((target_gram - style_grams[layer]) ** 2)
            style_loss += layer_style_loss / (d * h * w)
        tv = (th.sum(th.abs(target[:, :, :, :-1] - target[:, :, :, 1:]))
              + th.sum(th.abs(target[:, :, :-1, :] - target[:, :, 1:, :])))
        return content_weight * content_loss + style_weight * style_loss + tv_weight * tv
    return total


def test_gatys_style_transfer_feature_dict_gram_losses_and_strong_wolfe_lbfgs_over_the_image():
    vgg, tvgg = pair(style_cnn)
    for model in (vgg, tvgg):
        for param in model.parameters():
            param.requires_grad_(False)
    rng = np.random.default_rng(6)
    content, style = rng.random((1, 3, 6, 6)), rng.random((1, 3, 6, 6))
    sides = []
    for th, model in ((av, vgg), (torch, tvgg)):
        c, s_ = (av.tensor(content), av.tensor(style)) if th is av else (T(content), T(style))
        content_features, style_features = get_features(c, model), get_features(s_, model)
        style_grams = {layer: gram_matrix(th, style_features[layer]) for layer in style_features}
        sides.append((content_features, style_grams))
    (cf, sg), (tcf, tsg) = sides
    timg = T(content.copy()).requires_grad_(True)
    img = av.tensor(content.copy())
    kw = dict(max_iter=5, line_search_fn="strong_wolfe")
    topt, opt = torch.optim.LBFGS([timg], **kw), optim.LBFGS([img], **kw)
    grad_fn = av.compile(av.value_and_grad(style_total_loss(av)), backend="numpy")  # the image's gradient
    run = [0]
    for _ in range(2):
        def tclosure():
            with torch.no_grad():
                timg.clamp_(0, 1)
            topt.zero_grad()
            loss = style_total_loss(torch)(timg, tvgg, tcf, tsg)
            loss.backward()
            return loss

        def closure():
            with av.no_grad():
                img.clamp_(0, 1)
            run[0] += 1
            with strict():
                return grad_fn(img, vgg, cf, sg)

        tl = topt.step(tclosure)
        loss = opt.step(closure)
        assert rel(loss, tl) < 1e-9
        assert rel(img, timg) < 1e-9
    with av.no_grad(), torch.no_grad():
        img.clamp_(0, 1)
        timg.clamp_(0, 1)
    assert rel(img, timg) < 1e-9 and np.abs(img.numpy() - content).max() > 0.05
    assert run[0] == opt.state_lbfgs["func_evals"] == topt.state[timg]["func_evals"]
    assert grad_fn.cache_info().misses == 1


# -- 3. WaveNet with a TCN block: dilated causal Conv1d (left padding by F.pad in a Conv1d subclass, and ----
#       locuslab's padding + Chomp1d), gated tanh * sigmoid units, residual and skip 1x1 convs, both
#       weight_norm APIs, next-sample cross entropy over (N, C, T) logits, Adam

N_Q, RES, SKIP = 6, 4, 5


def wavenet(lib, F_, th, kernel_size=2, dilations=(1, 2, 4)):
    weight_norm = lib.utils.parametrizations.weight_norm

    class CausalConv1d(lib.Conv1d):
        def __init__(self, in_channels, out_channels, kernel_size, dilation=1, **kwargs):
            super().__init__(in_channels, out_channels, kernel_size, padding=0, dilation=dilation, **kwargs)
            self.left_padding = dilation * (kernel_size - 1)

        def forward(self, x):
            return super().forward(F_.pad(x, (self.left_padding, 0)))

    class Chomp1d(lib.Module):
        def __init__(self, chomp_size):
            super().__init__()
            self.chomp_size = chomp_size

        def forward(self, x):
            return x[:, :, :-self.chomp_size].contiguous()

    class ResidualBlock(lib.Module):
        def __init__(self, dilation, tcn=False):
            super().__init__()
            if tcn:  # locuslab/TCN's: pad both sides, chomp the right
                padding = (kernel_size - 1) * dilation
                self.dilated = lib.Sequential(
                    lib.utils.weight_norm(lib.Conv1d(RES, 2 * RES, kernel_size, padding=padding, dilation=dilation)),
                    Chomp1d(padding))
            else:
                self.dilated = weight_norm(CausalConv1d(RES, 2 * RES, kernel_size, dilation=dilation))
            self.res_conv = weight_norm(lib.Conv1d(RES, RES, 1))
            self.skip_conv = lib.Conv1d(RES, SKIP, 1)

        def forward(self, x):
            filt, gate = self.dilated(x).chunk(2, dim=1)
            z = th.tanh(filt) * th.sigmoid(gate)
            return (x + self.res_conv(z)) * np.sqrt(0.5), self.skip_conv(z)

    class WaveNet(lib.Module):
        def __init__(self):
            super().__init__()
            self.embed = lib.Embedding(N_Q, RES)
            self.causal = CausalConv1d(RES, RES, kernel_size)
            self.blocks = lib.ModuleList([ResidualBlock(d, tcn=i == 1) for i, d in enumerate(dilations)])
            self.post = lib.Sequential(lib.ReLU(), lib.Conv1d(SKIP, SKIP, 1), lib.ReLU(), lib.Conv1d(SKIP, N_Q, 1))

        def forward(self, x):  # (N, T) quantized samples -> (N, N_Q, T) logits of the next ones
            h = self.causal(self.embed(x).transpose(1, 2))
            skips = 0
            for block in self.blocks:
                h, s = block(h)
                skips = skips + s
            return self.post(skips)

    return WaveNet()


def wavenet_loss(F_):
    def loss(model, x):
        logits = model(x)
        return F_.cross_entropy(logits[:, :, :-1], x[:, 1:])
    return loss


@pytest.mark.filterwarnings("ignore:`(torch.)?nn.utils.weight_norm` is deprecated:FutureWarning")
def test_wavenet_dilated_causal_convs_gated_units_skips_and_weight_norm_with_adam():
    ours, theirs = pair(wavenet)
    assert "blocks.0.dilated.parametrizations.weight.original0" in theirs.state_dict()
    assert "blocks.1.dilated.0.weight_g" in theirs.state_dict()
    opt, topt = optim.Adam(ours.parameters(), lr=1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2)
    step = train_step(wavenet_loss(F), with_grads=True)
    rng = np.random.default_rng(7)
    for mode in ("eager", "numpy", "cpu"):
        x = rng.integers(0, N_Q, (2, 12))
        topt.zero_grad()
        tl = wavenet_loss(TF)(theirs, T(x))
        tl.backward()
        with strict():
            loss, grads = compiled(step, mode)(ours, opt, av.tensor(x))
        assert rel(loss, tl) < 1e-12, mode
        # the last block's residual output is unused: its res_conv gets no gradient, as torch's None
        assert sorted(grads) == sorted(k for k, p in theirs.named_parameters() if p.grad is not None)
        assert "blocks.2.res_conv.bias" not in grads
        for k, g in grads.items():
            assert rel(g, theirs.get_parameter(k).grad) < 1e-10, (mode, k)
        topt.step()
        same_weights(ours, theirs, 1e-10)
    x = rng.integers(0, N_Q, (1, 9))
    with av.no_grad(), torch.no_grad():  # causal: the logits up to t do not see samples after t
        cut = x.copy()
        cut[:, 5:] = (cut[:, 5:] + 1) % N_Q
        assert rel(ours(av.tensor(x))[:, :, :5], ours(av.tensor(cut))[:, :, :5]) == 0
        assert rel(ours(av.tensor(x)), theirs(T(x))) < 1e-12
    for lib, model in ((nn, ours), (torch.nn, theirs)):  # for inference: the weights baked back in
        for block in model.blocks:
            if isinstance(block.dilated, lib.Sequential):
                lib.utils.remove_weight_norm(block.dilated[0])
            else:
                lib.utils.parametrize.remove_parametrizations(block.dilated, "weight")
            lib.utils.parametrize.remove_parametrizations(block.res_conv, "weight", leave_parametrized=True)
    same_weights(ours, theirs, 1e-10)
    assert "blocks.0.dilated.weight" in ours.state_dict() and "blocks.1.dilated.0.weight" in ours.state_dict()
    with av.no_grad(), torch.no_grad():
        assert rel(ours(av.tensor(x)), theirs(T(x))) < 1e-12


# -- 4. CTC speech recognition (AssemblyAI's DeepSpeech2-style tutorial, smaller): a strided Conv1d front ----
#       end with batch norm, a bidirectional LSTM over packed sequences of varying lengths, log_softmax
#       transposed to (T, N, C), nn.CTCLoss(blank=0) with input and target lengths, AdamW, clipping

N_FEATS, N_CHARS, HID = 5, 5, 4


def speech_model(lib, F_, th):
    class SpeechRecognitionModel(lib.Module):
        def __init__(self):
            super().__init__()
            self.cnn = lib.Conv1d(N_FEATS, 6, 3, stride=2, padding=1)
            self.bn = lib.BatchNorm1d(6)
            self.birnn = lib.LSTM(6, HID, num_layers=1, bidirectional=True, batch_first=True)
            self.classifier = lib.Sequential(lib.Linear(2 * HID, HID), lib.GELU(), lib.Linear(HID, N_CHARS))

        def forward(self, x, lengths):  # (N, n_feats, time) spectrograms
            x = F_.gelu(self.bn(self.cnn(x)))
            x = x.transpose(1, 2)  # (batch, time, feature)
            packed = lib.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.birnn(packed)
            x, _ = lib.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            return self.classifier(x)

    return SpeechRecognitionModel()


def ctc_objective(lib, F_):
    criterion = lib.CTCLoss(blank=0)

    def loss(model, spectrograms, labels, input_lengths, label_lengths):
        output = model(spectrograms, input_lengths)  # (batch, time, n_class)
        output = F_.log_softmax(output, dim=2)
        output = output.transpose(0, 1)  # (time, batch, n_class)
        return criterion(output, labels, input_lengths, label_lengths), output
    return loss


def ctc_step(model, opt, spectrograms, labels, input_lengths, label_lengths):
    (loss, out), grads = av.value_and_grad(ctc_objective(nn, F), has_aux=True)(
        model, spectrograms, labels, input_lengths, label_lengths)
    nn.utils.clip_grad_norm_(grads, 0.2)
    opt.step(grads)
    return loss, out


def greedy_decode(output, input_lengths, blank=0):
    """The tutorial's GreedyDecoder: argmax per step, repeats collapsed, blanks dropped."""
    arg_maxes = output.argmax(2).transpose(0, 1).numpy()
    decodes = []
    for i, args in enumerate(arg_maxes):
        decode = []
        for j, index in enumerate(args[:int(input_lengths[i])]):
            if index != blank and (j == 0 or index != args[j - 1]):
                decode.append(int(index))
        decodes.append(decode)
    return decodes


def test_ctc_speech_model_bidirectional_lstm_over_packed_sequences_adamw_and_clipping():
    ours, theirs = pair(speech_model)
    opt = optim.AdamW(ours.parameters(), lr=5e-2)
    topt = torch.optim.AdamW(theirs.parameters(), lr=5e-2)
    rng = np.random.default_rng(8)
    run = compiled(ctc_step, "numpy")
    for it in range(3):
        spec_lens = rng.integers(7, 13, 3)
        spec_lens[rng.integers(0, 3)] = 12
        spec = rng.standard_normal((3, N_FEATS, 12)) * (np.arange(12) < spec_lens[:, None, None])
        input_lengths = (spec_lens - 1) // 2 + 1  # the strided conv's output lengths
        label_lengths = rng.integers(1, 4, 3)
        labels = rng.integers(1, N_CHARS, (3, 3)) * (np.arange(3) < label_lengths[:, None])  # 0-padded
        args = (spec, labels, input_lengths, label_lengths)
        topt.zero_grad()
        tl, tout = ctc_objective(torch.nn, TF)(theirs, *map(T, args))
        tl.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.2)
        topt.step()
        with strict():
            loss, out = (run if it else ctc_step)(ours, opt, *map(av.tensor, args))
        assert rel(loss, tl) < 1e-12 and rel(out, tout) < 1e-12, it
        assert float(tnorm) > 0.2  # clipped
        same_weights(ours, theirs, 1e-10)  # with the batch norm's statistics
    assert run.cache_info().misses == 1  # new lengths are values, not a new trace
    assert greedy_decode(out, input_lengths) == greedy_decode(tout.detach(), input_lengths)


# -- 5. a categorical VAE with Gumbel-softmax (Jang et al.; YongfeiYan/Gumbel_Softmax_VAE): the noise -------
#       given as an input so both sides draw the same, the straight-through hard sample written by hand,
#       softmax posteriors with a KL to the uniform prior, the temperature annealed as a Python float

D_IN, LATENT, CAT = 10, 3, 4


def sample_gumbel(th, U, eps=1e-20):
    return -th.log(-th.log(U + eps) + eps)


def gumbel_softmax_sample(th, F_, logits, temperature, U):
    y = logits + sample_gumbel(th, U)
    return F_.softmax(y / temperature, dim=-1)


def gumbel_softmax(th, F_, logits, temperature, U, hard=False):
    y = gumbel_softmax_sample(th, F_, logits, temperature, U)
    if not hard:
        return y.view(-1, LATENT * CAT)
    shape = y.size()
    _, ind = y.max(dim=-1)
    y_hard = th.zeros_like(y).view(-1, shape[-1])
    y_hard.scatter_(1, ind.view(-1, 1), 1)
    y_hard = y_hard.view(*shape)
    y_hard = (y_hard - y).detach() + y  # straight through: the one-hot forward, the soft sample's gradient
    return y_hard.view(-1, LATENT * CAT)


def gumbel_vae(lib, F_, th):
    class VAE_gumbel(lib.Module):  # noqa: N801 - the repository's name
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = lib.Linear(D_IN, 8), lib.Linear(8, 6), lib.Linear(6, LATENT * CAT)
            self.fc4, self.fc5, self.fc6 = lib.Linear(LATENT * CAT, 6), lib.Linear(6, 8), lib.Linear(8, D_IN)
            self.relu = lib.ReLU()
            self.sigmoid = lib.Sigmoid()

        def encode(self, x):
            h1 = self.relu(self.fc1(x))
            h2 = self.relu(self.fc2(h1))
            return self.relu(self.fc3(h2))

        def decode(self, z):
            h4 = self.relu(self.fc4(z))
            h5 = self.relu(self.fc5(h4))
            return self.sigmoid(self.fc6(h5))

        def forward(self, x, temp, hard, U):
            q = self.encode(x.view(-1, D_IN))
            q_y = q.view(q.size(0), LATENT, CAT)
            z = gumbel_softmax(th, F_, q_y, temp, U, hard)
            return self.decode(z), F_.softmax(q_y, dim=-1).reshape(*q.size())

    return VAE_gumbel()


def gumbel_vae_loss(th, F_):
    def loss(model, x, temp, hard, U):
        recon_x, qy = model(x, temp, hard, U)
        BCE = F_.binary_cross_entropy(recon_x, x.view(-1, D_IN), reduction="sum") / x.shape[0]  # noqa: N806
        log_ratio = th.log(qy * CAT + 1e-20)
        KLD = th.sum(qy * log_ratio, dim=-1).mean()  # noqa: N806
        return BCE + KLD
    return loss


def test_categorical_vae_with_gumbel_softmax_noise_given_and_a_straight_through_hard_sample():
    ours, theirs = pair(gumbel_vae)
    opt, topt = optim.Adam(ours.parameters(), lr=1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2)
    step = train_step(gumbel_vae_loss(av, F), with_grads=True)
    run = compiled(step, "numpy")
    rng = np.random.default_rng(9)
    temp, temp_min, anneal_rate = 1.0, 0.5, 0.3
    for batch_idx, hard in enumerate((True, True, False, True)):
        if batch_idx % 2 == 1:  # annealed every other step: a new Python float, a new trace
            temp = np.maximum(temp * np.exp(-anneal_rate * batch_idx), temp_min)
        x, U = rng.random((5, D_IN)), rng.random((5, LATENT, CAT))
        topt.zero_grad()
        tl = gumbel_vae_loss(torch, TF)(theirs, T(x), temp, hard, T(U))
        tl.backward()
        topt.step()
        with strict():
            loss, grads = (run if batch_idx else step)(ours, opt, av.tensor(x), temp, hard, av.tensor(U))
        assert rel(loss, tl) < 1e-12, batch_idx
        for k, p in theirs.named_parameters():
            assert rel(grads[k], p.grad) < 1e-10, (batch_idx, k)
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 3  # (temp, hard): (1.0, True) was eager; then three new pairs
    M = 4 * LATENT  # noqa: N806 - the repository's sampling from the uniform prior
    np_y = np.zeros((M, CAT))
    np_y[range(M), rng.choice(CAT, M)] = 1
    np_y = np.reshape(np_y, [M // LATENT, LATENT, CAT])
    with av.no_grad(), torch.no_grad():
        samples = [model.decode(th.from_numpy(np_y).view(M // LATENT, LATENT * CAT))
                   for th, model in ((av, ours), (torch, theirs))]
    assert rel(*samples) < 1e-12


def test_f_gumbel_softmax_hard_is_one_hot_with_the_soft_samples_gradient():
    """Avalon draws its own Gumbel noise, so the noise is recovered from a soft draw (tau log y - logits
    is the noise up to a per-row constant, which softmax ignores) and the same seed replayed: the hard
    sample is the one-hot of the soft one's argmax, and its gradient is torch's soft sample's with that
    noise (`y_hard - y_soft.detach() + y_soft`, torch's own formula). (A traced draw is not the eager
    draw of the same seed, as torch.compile's are not: each side is compared with itself.)"""
    rng = np.random.default_rng(10)
    logits, w, tau = rng.standard_normal((6, 4)), rng.standard_normal((6, 4)), 0.7

    def objective(lg, w, hard):
        y = F.gumbel_softmax(lg, tau=tau, hard=hard)
        return (y * w).sum(), y

    for mode in ("eager", "grad"):
        av.manual_seed(3)
        if mode == "eager":
            y_soft = F.gumbel_softmax(av.tensor(logits), tau=tau)
            av.manual_seed(3)
            y_hard = F.gumbel_softmax(av.tensor(logits), tau=tau, hard=True)
        else:
            (_, y_soft), _ = av.value_and_grad(objective, has_aux=True)(av.tensor(logits), av.tensor(w), False)
            av.manual_seed(3)
            (_, y_hard), g = av.value_and_grad(objective, has_aux=True)(av.tensor(logits), av.tensor(w), True)
        noise = T(tau * np.log(y_soft.numpy()) - logits)
        tl = T(logits).requires_grad_(True)
        ty_soft = TF.softmax((tl + noise) / tau, dim=-1)
        index = ty_soft.max(-1, keepdim=True)[1]
        ty_hard = torch.zeros_like(ty_soft).scatter_(-1, index, 1.0) - ty_soft.detach() + ty_soft
        (ty_hard * T(w)).sum().backward()
        assert rel(y_soft, ty_soft) < 1e-12, mode
        assert rel(y_hard, ty_hard) < 1e-15, mode
        assert (np.abs(y_hard.numpy() - np.eye(4)[y_soft.numpy().argmax(1)]) < 1e-15).all(), mode
    assert rel(g, tl.grad) < 1e-12
    # the Gumbel-max trick: the hard samples' categories follow softmax(logits)
    probs = np.array([0.5, 0.3, 0.2])
    counts = F.gumbel_softmax(av.tensor(np.tile(np.log(probs), (4000, 1))), tau=0.5, hard=True).numpy().sum(0)
    assert np.abs(counts / 4000 - probs).max() < 0.03
    y = av.compile(lambda lg: F.gumbel_softmax(lg, tau=0.5, hard=True))(av.tensor(logits))
    assert (np.abs(y.numpy() - np.eye(4)[y.numpy().argmax(1)]) < 1e-15).all()


# -- regressions and known limitations: what the programs above found --------------------------------------

def test_a_tensor_from_a_python_list_in_the_loss_is_a_constant_not_captured_data():
    """mklimasz/TransE-PyTorch's `target = torch.tensor([-1], dtype=torch.long)` inside the loss (OpenKE
    writes `torch.Tensor([-1])`): literal data, which torch code builds in forward all the time, is kept
    in the compiled graph (a LiteralArray constant), not treated as captured data traced again per call."""
    def loss(a, b):
        return nn.MarginRankingLoss(margin=1.0)(a, b, av.tensor([-1], dtype=av.long)).mean()

    f = av.compile(loss)
    a, b = av.tensor(np.array([0.5, 2.0, 1.0])), av.tensor(np.array([1.0, 0.5, 3.0]))
    with strict():
        for _ in range(2):
            assert f(a, b).item() == pytest.approx((0.5 + 2.5 + 0.0) / 3)
    assert f.cache_info().misses == 1


def inplace_objective(th):
    def loss(m, x, how):
        if how == "data":  # TransE's renormalization in the forward
            m.weight.data.div_(m.weight.data.norm(p=2, dim=1, keepdim=True))
        elif how == "data slice":
            m.weight.data[:, :1].clamp_(-0.1, 0.1)
        elif how == "no_grad":
            with th.no_grad():
                m.weight[0] = m.weight[0] / m.weight[0].norm()
                m.bias.mul_(2.0)
        return (m(x) ** 2).sum()
    return loss


@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_a_write_under_no_grad_or_through_data_keeps_the_parameters_gradient(mode):
    """torch's in-place writes that autograd does not see (under no_grad, through `.data`) change a
    parameter's elements but not its place in the graph: later uses send it their gradient. Avalon's
    write replaced the parameter by a value without gradient, so it had no gradient entry (TransE's
    renormalization in the forward left the entity table untrained)."""
    ours, theirs = pair(lambda lib, F_, th: lib.Linear(3, 2))
    x = np.random.default_rng(11).standard_normal((4, 3))
    grad = compiled(av.value_and_grad(inplace_objective(av)), mode)
    for how in ("data", "data slice", "no_grad"):
        theirs.zero_grad()
        tl = inplace_objective(torch)(theirs, T(x), how)
        tl.backward()
        with strict():
            loss, grads = grad(ours, av.tensor(x), how)
        assert rel(loss, tl) < 1e-12, how
        assert sorted(grads) == ["bias", "weight"], how
        for k, p in theirs.named_parameters():
            assert rel(grads[k], p.grad) < 1e-12, (how, k)
        same_weights(ours, theirs, 1e-12)  # the writes themselves

    def overwrite(p, x, new):  # the value written is exact: -0.0 stays -0.0, an inf element is replaced
        with av.no_grad():
            p.copy_(new)
        return (p * x).sum(), p * 1.0

    (_, value), g = av.value_and_grad(overwrite, has_aux=True)(*map(av.tensor, (
        np.array([np.inf, 1.0, -2.0]), np.array([1.0, 2.0, 3.0]), np.array([2.0, -0.0, 3.0]))))
    assert value.numpy().tolist() == [2.0, -0.0, 3.0] and np.signbit(value.numpy()[1])
    assert g.numpy().tolist() == [0.0, 2.0, 3.0]  # (torch's is 1.0 at the inf: the identity cannot cross it)


def test_torch_spellings_the_programs_used():
    """`torch.arange(end=n)` (TransE's evaluation) and `model._modules.items()` (Udacity's style transfer)."""
    assert av.arange(end=3).numpy().tolist() == [0, 1, 2] and av.arange(end=3).dtype == av.int64
    assert av.arange(start=1, end=7, step=2).numpy().tolist() == [1, 3, 5]
    with pytest.raises(TypeError, match="end"):
        av.arange()
    seq, tseq = pair(lambda lib, F_, th: lib.Sequential(lib.Linear(2, 3), lib.ReLU(), lib.Sequential(lib.Tanh())))
    assert list(seq._modules) == list(tseq._modules) == ["0", "1", "2"]
    assert [type(m).__name__ for m in seq._modules.values()] == ["Linear", "ReLU", "Sequential"]
    net, tnet = pair(siamese)
    assert list(net._modules) == list(tnet._modules) == ["embedding_net"]
    with pytest.raises(TypeError):
        seq._modules["0"] = nn.Tanh()  # read-only: a change goes through setattr or add_module


def lookup_tables(lib, F_, th):
    class Tables(lib.Module):
        def __init__(self):
            super().__init__()
            self.emb = lib.Embedding(6, 3, max_norm=1.5, norm_type=1.0)
            self.bag = lib.EmbeddingBag(6, 3, max_norm=1.0, mode="mean")

        def forward(self, ids, bags, offsets):
            return (self.emb(ids) ** 2).sum() + (self.bag(bags, offsets) ** 3).sum() + F_.embedding(
                ids[:2], self.bag.weight, max_norm=0.5).sum()

    return Tables()


@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_embedding_and_embedding_bag_max_norm_renormalize_the_rows_looked_up(mode):
    """`Embedding(max_norm=...)`, `EmbeddingBag(max_norm=...)` and `F.embedding(..., max_norm=...)` raised
    NotImplementedError; torch scales the rows a lookup reads (repeated ids included) in place, without
    gradient, then differentiates the lookup as usual."""
    ours, theirs = pair(lookup_tables)
    assert repr(ours) == repr(theirs)
    ids, bags, offsets = np.array([[0, 3], [3, 5]]), np.array([1, 2, 2, 4, 0]), np.array([0, 2])
    grad = compiled(av.value_and_grad(lambda m, *xs: m(*xs)), mode)
    for _ in range(2):
        theirs.zero_grad()
        tl = theirs(*map(T, (ids, bags, offsets)))
        tl.backward()
        with strict():
            loss, grads = grad(ours, *map(av.tensor, (ids, bags, offsets)))
        assert rel(loss, tl) < 1e-12
        for k, p in theirs.named_parameters():
            assert rel(grads[k], p.grad) < 1e-12, k
        same_weights(ours, theirs, 1e-12)
        with torch.no_grad():
            for p in theirs.parameters():
                p.mul_(1.5)
        ours.load_state_dict(theirs.state_dict())


def test_relaxed_one_hot_categorical_as_gumbel_softmax_vaes_write_it():
    rng = np.random.default_rng(12)
    logits, value = rng.standard_normal((3, 4)), rng.dirichlet(np.ones(4), 3)
    td = torch.distributions.RelaxedOneHotCategorical(T(np.array(0.5)), logits=T(logits))
    d = av.distributions.RelaxedOneHotCategorical(av.tensor(np.array(0.5)), logits=av.tensor(logits))
    assert rel(d.log_prob(av.tensor(value)), td.log_prob(T(value))) < 1e-12
    sample = d.rsample()
    assert sample.shape == (3, 4) and rel(sample.sum(-1), np.ones(3)) < 1e-12
