"""Round 11 of port QA: programs written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random float32 data and compared with torch after every step (losses,
outputs, gradients, parameters and buffers): the first step eager, then two compiled on the numpy backend and two on
the cpu backend (one trace each).

Programs: Kaixhin/Rainbow (model.py's NoisyLinear with factorised Gaussian noise `x.sign().mul_(x.abs().sqrt_())`,
`epsilon_out.ger(epsilon_in)` copied into buffers, the dueling C51 DQN `v + a - a.mean(1, keepdim=True)` under
log_softmax/softmax; agent.py's learn: double-Q action selection under no_grad, the Bellman update of the support
clamped and projected onto it by `b.floor().to(torch.int64)`, the in-place `l[(u > 0) * (l == u)] -= 1` fixes, the
offset by `torch.linspace(...).unsqueeze(1).expand(...).to(actions)`, `m.view(-1).index_add_` of the probabilities,
the importance-weighted cross-entropy, clip_grad_norm_ and Adam with eps); HobbitLong/SupContrast (losses.py's
SupConLoss: `torch.eq(labels, labels.T).float()`, `torch.cat(torch.unbind(features, dim=1), dim=0)`, the detached
row max, `mask.repeat`, `torch.scatter(torch.ones_like(mask), 1, torch.arange(...).view(-1, 1), 0)`, the
no-positive-pair `torch.where(mask_pos_pairs < 1e-6, 1, mask_pos_pairs)`, contrast modes "all" and "one";
main_supcon.py's two views by `torch.split`/`torch.cat` of unsqueezed features, SupCon and SimCLR, over a small
conv+BatchNorm encoder with an F.normalize'd MLP head, SGD with momentum and weight decay); laiguokun/LSTNet
(models/LSTNet.py: Conv2d over (Ck, m), GRU over the `permute(2, 0, 1)`ed channels, the skip-GRU on
`c[:, :, int(-self.pt * self.skip):]` viewed and permuted into `pt x (batch * skip)` sequences, the highway
autoregressive linear, sigmoid output; main.py's `L1Loss(size_average=False)` on scaled outputs with Optim's
clip_grad_norm_ and Adam); DeepCTR-Torch's AutoInt (InteractingLayer: `torch.tensordot(inputs, W, dims=([-1], [0]))`,
`torch.stack(torch.split(...))` heads, `torch.einsum('bnik,bnjk->bnij')`, the `inner_product /=` scaling,
`torch.cat(torch.split(result, 1, ), dim=-1)`, `result +=` residual, the linear part over a ModuleDict of embeddings,
BaseModel's `get_regularization_loss` by `total_reg_loss += torch.sum(l2 * torch.square(parameter))` into a
`torch.zeros((1,))`, `F.binary_cross_entropy(torch.sigmoid(logit), y.squeeze(), reduction='sum')`, Adagrad);
gusye1234/LightGCN-PyTorch (dataloader.py's getSparseGraph: the scipy `dok_matrix` bipartite adjacency normalised by
`D^-1/2 A D^-1/2` and converted by `torch.sparse.FloatTensor(index, data, torch.Size(coo.shape))`, model.py's
computer with `torch.sparse.mm` layers, `torch.stack(embs, dim=1)` mean and `torch.split(light_out, [users, items])`,
bpr_loss's softplus and `(1/2)*(userEmb0.norm(2).pow(2) + ...)/float(len(users))` regulariser, getUsersRating).

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`); random draws (Rainbow's noise)
are drawn on the torch side and loaded into the port's buffers. Dropouts are off.
"""
# the authors' idioms as written: super(Class, self), '%d' % i, '{}'.format(...)
# ruff: noqa: UP008, UP031, UP032
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as TF
from helpers import rel
from test_port_programs_30 import randn, same_grads
from test_port_programs_more import pair, same_weights, strict

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache", "torch_on_one_thread")

F32 = torch.float32
MODES = ("eager", "numpy", "numpy", "cpu", "cpu")


def train_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, *, others=(), tol=1e-4, loss_tol=1e-5,
                     floor=1e-4, clip=None, before=None):
    """`loss_fn(model, *others, *batch) -> (loss, out)` trained on `batches` (tuples of numpy arrays) by torch's
    `zero_grad(); backward(); [clip_grad_norm_]; step()` and by the port's `av.value_and_grad` step, eagerly and
    compiled on the numpy and the cpu backends (MODES); loss, outputs, gradients, parameters and buffers compared
    after each step. `others`: (port, torch) pairs of further models the loss reads (not trained)."""
    def train_step(model, optimizer, *rest):
        (loss, out), grads = av.value_and_grad(loss_fn, has_aux=True)(model, *rest)
        if clip is not None:
            nn.utils.clip_grad_norm_(grads, clip)
        optimizer.step(grads)
        return loss, out, grads
    runs = {mode: av.compile(train_step, backend=mode) for mode in set(MODES) - {"eager"}}
    ours, theirs = [o for o, _ in others], [t for _, t in others]
    assert len(batches) == len(MODES)
    for it, (mode, batch) in enumerate(zip(MODES, batches)):
        if before is not None:
            before(it)
        tloss, tout = loss_fn(tmodel, *theirs, *map(torch.tensor, batch))
        toptimizer.zero_grad()
        tloss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(tmodel.parameters(), clip)
        toptimizer.step()
        with strict():
            loss, out, grads = (train_step if mode == "eager" else runs[mode])(model, optimizer, *ours,
                                                                                 *map(av.tensor, batch))
        outs, touts = (out, tout) if isinstance(tout, tuple) else ((out,), (tout,))
        assert rel(loss, tloss) < loss_tol, (it, mode)
        assert all(rel(a, b) < loss_tol for a, b in zip(outs, touts)), (it, mode)
        same_grads(grads, tmodel, tol, floor)
        same_weights(model, tmodel, tol)
    assert all(run.cache_info().misses == 1 for run in runs.values())


# -- 1. Rainbow (Kaixhin/Rainbow model.py, agent.py's learn) ----------------------------------------------------------

def rainbow(lib, F_, th, history_length=2, hidden_size=16, atoms=11, action_space=3, noisy_std=0.1):
    torch, nn, F = th, lib, F_

    class NoisyLinear(nn.Module):
        def __init__(self, in_features, out_features, std_init=0.5):
            super(NoisyLinear, self).__init__()  # noqa: UP008
            self.in_features = in_features
            self.out_features = out_features
            self.std_init = std_init
            self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
            self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
            self.register_buffer('weight_epsilon', torch.empty(out_features, in_features))
            self.bias_mu = nn.Parameter(torch.empty(out_features))
            self.bias_sigma = nn.Parameter(torch.empty(out_features))
            self.register_buffer('bias_epsilon', torch.empty(out_features))
            self.reset_parameters()
            self.reset_noise()

        def reset_parameters(self):
            mu_range = 1 / math.sqrt(self.in_features)
            self.weight_mu.data.uniform_(-mu_range, mu_range)
            self.weight_sigma.data.fill_(self.std_init / math.sqrt(self.in_features))
            self.bias_mu.data.uniform_(-mu_range, mu_range)
            self.bias_sigma.data.fill_(self.std_init / math.sqrt(self.out_features))

        def _scale_noise(self, size):
            x = torch.randn(size, device=self.weight_mu.device)
            return x.sign().mul_(x.abs().sqrt_())

        def reset_noise(self):
            epsilon_in = self._scale_noise(self.in_features)
            epsilon_out = self._scale_noise(self.out_features)
            self.weight_epsilon.copy_(epsilon_out.ger(epsilon_in))
            self.bias_epsilon.copy_(epsilon_out)

        def forward(self, input):
            if self.training:
                return F.linear(input, self.weight_mu + self.weight_sigma * self.weight_epsilon,
                                self.bias_mu + self.bias_sigma * self.bias_epsilon)
            else:
                return F.linear(input, self.weight_mu, self.bias_mu)

    class DQN(nn.Module):
        def __init__(self, action_space):
            super(DQN, self).__init__()  # noqa: UP008
            self.atoms = atoms
            self.action_space = action_space
            # 'data-efficient' architecture, on 25 x 25 frames
            self.convs = nn.Sequential(nn.Conv2d(history_length, 8, 5, stride=5, padding=0), nn.ReLU(),
                                       nn.Conv2d(8, 16, 5, stride=5, padding=0), nn.ReLU())
            self.conv_output_size = 16
            self.fc_h_v = NoisyLinear(self.conv_output_size, hidden_size, std_init=noisy_std)
            self.fc_h_a = NoisyLinear(self.conv_output_size, hidden_size, std_init=noisy_std)
            self.fc_z_v = NoisyLinear(hidden_size, self.atoms, std_init=noisy_std)
            self.fc_z_a = NoisyLinear(hidden_size, action_space * self.atoms, std_init=noisy_std)

        def forward(self, x, log=False):
            x = self.convs(x)
            x = x.view(-1, self.conv_output_size)
            v = self.fc_z_v(F.relu(self.fc_h_v(x)))  # Value stream
            a = self.fc_z_a(F.relu(self.fc_h_a(x)))  # Advantage stream
            v, a = v.view(-1, 1, self.atoms), a.view(-1, self.action_space, self.atoms)
            q = v + a - a.mean(1, keepdim=True)  # Combine streams
            if log:  # Use log softmax for numerical stability
                q = F.log_softmax(q, dim=2)  # Log probabilities with action over second dimension
            else:
                q = F.softmax(q, dim=2)  # Probabilities with action over second dimension
            return q

        def reset_noise(self):
            for name, module in self.named_children():
                if 'fc' in name:
                    module.reset_noise()

    return DQN(action_space)


class RainbowLearner:
    """agent.py's Agent.learn up to the backward, as a loss of the online net given the target net"""

    def __init__(self, atoms=11, V_min=-2., V_max=2., discount=0.9, multi_step=3):
        self.atoms, self.Vmin, self.Vmax = atoms, V_min, V_max
        self.discount, self.n = discount, multi_step
        self.delta_z = (V_max - V_min) / (atoms - 1)

    def __call__(self, online_net, target_net, states, actions, returns, next_states, nonterminals, weights):
        torch = av if isinstance(states, av.Tensor) else globals()["torch"]
        self.batch_size = states.shape[0]
        self.support = torch.linspace(self.Vmin, self.Vmax, self.atoms)
        # Calculate current state probabilities (online network noise already sampled)
        log_ps = online_net(states, log=True)  # Log probabilities log p(s_t, ·; θonline)
        log_ps_a = log_ps[range(self.batch_size), actions]  # log p(s_t, a_t; θonline)

        with torch.no_grad():
            # Calculate nth next state probabilities
            pns = online_net(next_states)  # Probabilities p(s_t+n, ·; θonline)
            dns = self.support.expand_as(pns) * pns  # Distribution d_t+n = (z, p(s_t+n, ·; θonline))
            argmax_indices_ns = dns.sum(2).argmax(1)  # Perform argmax action selection using online network
            pns = target_net(next_states)  # Probabilities p(s_t+n, ·; θtarget)
            pns_a = pns[range(self.batch_size), argmax_indices_ns]  # Double-Q probabilities

            # Compute Tz (Bellman operator T applied to z)
            Tz = returns.unsqueeze(1) + nonterminals * (self.discount ** self.n) * self.support.unsqueeze(0)
            Tz = Tz.clamp(min=self.Vmin, max=self.Vmax)  # Clamp between supported values
            # Compute L2 projection of Tz onto fixed support z
            b = (Tz - self.Vmin) / self.delta_z  # b = (Tz - Vmin) / Δz
            l, u = b.floor().to(torch.int64), b.ceil().to(torch.int64)
            # Fix disappearing probability mass when l = b = u (b is int)
            l[(u > 0) * (l == u)] -= 1
            u[(l < (self.atoms - 1)) * (l == u)] += 1

            # Distribute probability of Tz
            m = states.new_zeros(self.batch_size, self.atoms)
            offset = torch.linspace(0, ((self.batch_size - 1) * self.atoms), self.batch_size).unsqueeze(1).expand(
                self.batch_size, self.atoms).to(actions)
            m.view(-1).index_add_(0, (l + offset).view(-1), (pns_a * (u.float() - b)).view(-1))
            m.view(-1).index_add_(0, (u + offset).view(-1), (pns_a * (b - l.float())).view(-1))

        loss = -torch.sum(m * log_ps_a, 1)  # Cross-entropy loss (minimises DKL(m||p(s_t, a_t)))
        return (weights * loss).mean(), loss.detach()  # the priorities: loss.detach().cpu().numpy()


def test_rainbow_noisy_dueling_c51_double_q_projection_by_index_add_and_clipped_adam():
    model, tmodel = pair(rainbow, dtype=F32)
    # the port's own reset_noise: factorised noise, f(x) = sign(x) sqrt|x|, the weight noise their outer product
    av.manual_seed(3)
    model.fc_h_v.reset_noise()
    eps_w, eps_b = model.fc_h_v.weight_epsilon.numpy(), model.fc_h_v.bias_epsilon.numpy()
    assert np.linalg.matrix_rank(eps_w) == 1 and np.allclose(np.outer(eps_b, eps_w[0] / eps_b[0]), eps_w, rtol=1e-5)
    assert np.all(np.abs(eps_b) > 0) and not np.allclose(eps_w, model.fc_h_a.weight_epsilon.numpy())
    nn.load_state_dict(model, tmodel.state_dict())
    ttarget = copy.deepcopy(tmodel)
    ttarget.reset_noise()  # target noise differs from the online net's
    target = rainbow(nn, F, av)
    nn.load_state_dict(target, ttarget.state_dict())
    for p in ttarget.parameters():
        p.requires_grad = False
    optimizer = av.optim.Adam(model.parameters(), lr=1e-3, eps=1.5e-4)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-3, eps=1.5e-4)
    rng = np.random.default_rng(0)

    def batch():
        B = 6
        returns = rng.uniform(-2, 2, B).astype(np.float32)
        returns[:2] = [0.8, -2.5]  # b integral (l == u) inside and clamped at Vmin
        nonterminals = (rng.random((B, 1)) < 0.7).astype(np.float32)
        nonterminals[:2] = 0
        return (rng.random((B, 2, 25, 25), np.float32), rng.integers(0, 3, B), returns,
                rng.random((B, 2, 25, 25), np.float32), nonterminals, rng.uniform(0.2, 1, B).astype(np.float32))

    learner = RainbowLearner()
    train_like_torch(model, tmodel, optimizer, toptimizer, learner, [batch() for _ in MODES],
                     others=[(target, ttarget)], clip=10.0)


# -- 2. SupContrast (HobbitLong/SupContrast losses.py, main_supcon.py, networks/resnet_big.py's SupConResNet) ----------

def supcon(lib, F_, th, temperature=0.5, contrast_mode='all', base_temperature=0.07):
    torch, nn, F = th, lib, F_

    class SupConLoss(nn.Module):
        """Supervised Contrastive Learning: https://arxiv.org/pdf/2004.11362.pdf.
        It also supports the unsupervised contrastive loss in SimCLR"""
        def __init__(self, temperature=0.07, contrast_mode='all',
                     base_temperature=0.07):
            super(SupConLoss, self).__init__()  # noqa: UP008
            self.temperature = temperature
            self.contrast_mode = contrast_mode
            self.base_temperature = base_temperature

        def forward(self, features, labels=None, mask=None):
            device = (torch.device('cuda')
                      if features.is_cuda
                      else torch.device('cpu'))

            if len(features.shape) < 3:
                raise ValueError('`features` needs to be [bsz, n_views, ...],'
                                 'at least 3 dimensions are required')
            if len(features.shape) > 3:
                features = features.view(features.shape[0], features.shape[1], -1)

            batch_size = features.shape[0]
            if labels is not None and mask is not None:
                raise ValueError('Cannot define both `labels` and `mask`')
            elif labels is None and mask is None:
                mask = torch.eye(batch_size, dtype=torch.float32).to(device)
            elif labels is not None:
                labels = labels.contiguous().view(-1, 1)
                if labels.shape[0] != batch_size:
                    raise ValueError('Num of labels does not match num of features')
                mask = torch.eq(labels, labels.T).float().to(device)
            else:
                mask = mask.float().to(device)

            contrast_count = features.shape[1]
            contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
            if self.contrast_mode == 'one':
                anchor_feature = features[:, 0]
                anchor_count = 1
            elif self.contrast_mode == 'all':
                anchor_feature = contrast_feature
                anchor_count = contrast_count
            else:
                raise ValueError('Unknown mode: {}'.format(self.contrast_mode))  # noqa: UP032

            # compute logits
            anchor_dot_contrast = torch.div(
                torch.matmul(anchor_feature, contrast_feature.T),
                self.temperature)
            # for numerical stability
            logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
            logits = anchor_dot_contrast - logits_max.detach()

            # tile mask
            mask = mask.repeat(anchor_count, contrast_count)
            # mask-out self-contrast cases
            logits_mask = torch.scatter(
                torch.ones_like(mask),
                1,
                torch.arange(batch_size * anchor_count).view(-1, 1).to(device),
                0
            )
            mask = mask * logits_mask

            # compute log_prob
            exp_logits = torch.exp(logits) * logits_mask
            log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))

            # compute mean of log-likelihood over positive
            # modified to handle edge cases when there is no positive pair
            # for an anchor point.
            mask_pos_pairs = mask.sum(1)
            mask_pos_pairs = torch.where(mask_pos_pairs < 1e-6, 1, mask_pos_pairs)
            mean_log_prob_pos = (mask * log_prob).sum(1) / mask_pos_pairs

            # loss
            loss = - (self.temperature / self.base_temperature) * mean_log_prob_pos
            loss = loss.view(anchor_count, batch_size).mean()

            return loss

    class SupConNet(nn.Module):
        """backbone + projection head"""
        def __init__(self, head='mlp', feat_dim=8):
            super(SupConNet, self).__init__()  # noqa: UP008
            self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                         nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
            dim_in = 8
            if head == 'linear':
                self.head = nn.Linear(dim_in, feat_dim)
            elif head == 'mlp':
                self.head = nn.Sequential(
                    nn.Linear(dim_in, dim_in),
                    nn.ReLU(inplace=True),
                    nn.Linear(dim_in, feat_dim)
                )
            self.criterion = SupConLoss(temperature=temperature, contrast_mode=contrast_mode,
                                        base_temperature=base_temperature)

        def forward(self, x):
            feat = self.encoder(x)
            feat = F.normalize(self.head(feat), dim=1)
            return feat

    return SupConNet()


@pytest.mark.parametrize("method,contrast_mode", [("SupCon", "all"), ("SimCLR", "one")])
def test_supcon_loss_two_views_scatter_self_mask_detached_max_and_no_positive_pairs(method, contrast_mode):
    model, tmodel = pair(lambda *a: supcon(*a, contrast_mode=contrast_mode), dtype=F32)
    optimizer = av.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    toptimizer = torch.optim.SGD(tmodel.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    def loss_fn(model, images0, images1, labels):  # main_supcon.py's train
        torch_ = torch if isinstance(labels, torch.Tensor) else av
        images = torch_.cat([images0, images1], dim=0)
        bsz = labels.shape[0]
        features = model(images)
        f1, f2 = torch_.split(features, [bsz, bsz], dim=0)
        features = torch_.cat([f1.unsqueeze(1), f2.unsqueeze(1)], dim=1)
        if method == 'SupCon':
            loss = model.criterion(features, labels)
        elif method == 'SimCLR':
            loss = model.criterion(features)
        return loss, features

    rng = np.random.default_rng(1)
    labels = [np.array([0, 1, 1, 2, 0, 3]), np.array([2, 2, 0, 1, 1, 3])]  # 2 and 3: anchors without positives
    train_like_torch(model, tmodel, optimizer, toptimizer, loss_fn,
                     [(randn(rng, 6, 3, 5, 5), randn(rng, 6, 3, 5, 5), labels[i % 2]) for i in range(len(MODES))],
                     tol=2e-4)


# -- 3. LSTNet (laiguokun/LSTNet models/LSTNet.py, main.py, Optim.py) ---------------------------------------------------

def lstnet(lib, F_, th, window=12, m=3, hidRNN=6, hidCNN=5, hidSkip=3, CNN_kernel=4, skip=2, highway_window=3,
           dropout=0.0, output_fun='sigmoid'):
    torch, nn, F = th, lib, F_

    class Model(nn.Module):
        def __init__(self):
            super(Model, self).__init__()  # noqa: UP008
            self.P = window
            self.m = m
            self.hidR = hidRNN
            self.hidC = hidCNN
            self.hidS = hidSkip
            self.Ck = CNN_kernel
            self.skip = skip
            self.pt = int((self.P - self.Ck) / self.skip)
            self.hw = highway_window
            self.conv1 = nn.Conv2d(1, self.hidC, kernel_size=(self.Ck, self.m))
            self.GRU1 = nn.GRU(self.hidC, self.hidR)
            self.dropout = nn.Dropout(p=dropout)
            if (self.skip > 0):
                self.GRUskip = nn.GRU(self.hidC, self.hidS)
                self.linear1 = nn.Linear(self.hidR + self.skip * self.hidS, self.m)
            else:
                self.linear1 = nn.Linear(self.hidR, self.m)
            if (self.hw > 0):
                self.highway = nn.Linear(self.hw, 1)
            self.output = None
            if (output_fun == 'sigmoid'):
                self.output = torch.sigmoid
            if (output_fun == 'tanh'):
                self.output = torch.tanh

        def forward(self, x):
            batch_size = x.size(0)

            # CNN
            c = x.view(-1, 1, self.P, self.m)
            c = F.relu(self.conv1(c))
            c = self.dropout(c)
            c = torch.squeeze(c, 3)

            # RNN
            r = c.permute(2, 0, 1).contiguous()
            _, r = self.GRU1(r)
            r = self.dropout(torch.squeeze(r, 0))

            # skip-rnn
            if (self.skip > 0):
                s = c[:, :, int(-self.pt * self.skip):].contiguous()
                s = s.view(batch_size, self.hidC, self.pt, self.skip)
                s = s.permute(2, 0, 3, 1).contiguous()
                s = s.view(self.pt, batch_size * self.skip, self.hidC)
                _, s = self.GRUskip(s)
                s = s.view(batch_size, self.skip * self.hidS)
                s = self.dropout(s)
                r = torch.cat((r, s), 1)

            res = self.linear1(r)

            # highway
            if (self.hw > 0):
                z = x[:, -self.hw:, :]
                z = z.permute(0, 2, 1).contiguous().view(-1, self.hw)
                z = self.highway(z)
                z = z.view(-1, self.m)
                res = res + z

            if (self.output):
                res = self.output(res)
            return res

    return Model()


def test_lstnet_conv_gru_skip_rnn_highway_and_scaled_l1_sum_with_clipped_adam():
    model, tmodel = pair(lstnet, dtype=F32)
    optimizer = av.optim.Adam(model.parameters(), lr=1e-2)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    scale_np = np.array([2.0, 0.5, 3.0], np.float32)  # Data_utility's per-series max, `self.scale`

    def loss_fn(model, X, Y, scale):
        lib = torch.nn if isinstance(X, torch.Tensor) else nn
        criterion = lib.L1Loss(reduction='sum')  # L1Loss(size_average=False)
        output = model(X)
        scale = scale.expand(output.size(0), 3)  # main.py's train: `scale = data.scale.expand(output.size(0), data.m)`
        loss = criterion(output * scale, Y * scale)
        return loss, output

    rng = np.random.default_rng(3)
    train_like_torch(model, tmodel, optimizer, toptimizer, loss_fn,
                     [(rng.random((4, 12, 3), np.float32), rng.random((4, 3), np.float32), scale_np)
                      for _ in MODES], clip=1.0, tol=2e-4)


# -- 4. AutoInt (shenweichen/DeepCTR-Torch deepctr_torch/layers/interaction.py's InteractingLayer, models/autoint.py,
#       models/basemodel.py's get_regularization_loss and fit) -----------------------------------------------------------

def autoint(lib, F_, th, n_sparse=3, vocab=7, embedding_size=4, n_dense=2, att_layer_num=2, att_head_num=2,
            dnn_hidden_units=(8,), l2_reg_embedding=1e-3, l2_reg_linear=1e-3, init_std=0.0001):
    torch, nn, F = th, lib, F_

    class InteractingLayer(nn.Module):
        def __init__(self, embedding_size, head_num=2, use_res=True, scaling=False, seed=1024, device='cpu'):
            super(InteractingLayer, self).__init__()  # noqa: UP008
            if head_num <= 0:
                raise ValueError('head_num must be a int > 0')
            if embedding_size % head_num != 0:
                raise ValueError('embedding_size is not an integer multiple of head_num!')
            self.att_embedding_size = embedding_size // head_num
            self.head_num = head_num
            self.use_res = use_res
            self.scaling = scaling
            self.seed = seed

            self.W_Query = nn.Parameter(torch.Tensor(embedding_size, embedding_size))
            self.W_key = nn.Parameter(torch.Tensor(embedding_size, embedding_size))
            self.W_Value = nn.Parameter(torch.Tensor(embedding_size, embedding_size))

            if self.use_res:
                self.W_Res = nn.Parameter(torch.Tensor(embedding_size, embedding_size))
            for tensor in self.parameters():
                nn.init.normal_(tensor, mean=0.0, std=0.05)

            self.to(device)

        def forward(self, inputs):
            if len(inputs.shape) != 3:
                raise ValueError(
                    "Unexpected inputs dimensions %d, expect to be 3 dimensions" % (len(inputs.shape)))

            # None F D
            querys = torch.tensordot(inputs, self.W_Query, dims=([-1], [0]))
            keys = torch.tensordot(inputs, self.W_key, dims=([-1], [0]))
            values = torch.tensordot(inputs, self.W_Value, dims=([-1], [0]))

            # head_num None F D/head_num
            querys = torch.stack(torch.split(querys, self.att_embedding_size, dim=2))
            keys = torch.stack(torch.split(keys, self.att_embedding_size, dim=2))
            values = torch.stack(torch.split(values, self.att_embedding_size, dim=2))

            inner_product = torch.einsum('bnik,bnjk->bnij', querys, keys)  # head_num None F F
            if self.scaling:
                inner_product /= self.att_embedding_size ** 0.5
            self.normalized_att_scores = F.softmax(inner_product, dim=-1)  # head_num None F F
            result = torch.matmul(self.normalized_att_scores, values)  # head_num None F D/head_num

            result = torch.cat(torch.split(result, 1, ), dim=-1)
            result = torch.squeeze(result, dim=0)  # None F D
            if self.use_res:
                result += torch.tensordot(inputs, self.W_Res, dims=([-1], [0]))
            result = F.relu(result)

            return result

    class AutoInt(nn.Module):
        def __init__(self):
            super(AutoInt, self).__init__()  # noqa: UP008
            self.embedding_dict = nn.ModuleDict({'C%d' % i: nn.Embedding(vocab, embedding_size, sparse=False)
                                                 for i in range(n_sparse)})
            for tensor in self.embedding_dict.values():
                nn.init.normal_(tensor.weight, mean=0, std=init_std)
            # Linear: the sparse features' 1-d embeddings and a weight over the dense features
            self.linear_embedding_dict = nn.ModuleDict({'C%d' % i: nn.Embedding(vocab, 1, sparse=False)
                                                        for i in range(n_sparse)})
            for tensor in self.linear_embedding_dict.values():
                nn.init.normal_(tensor.weight, mean=0, std=init_std)
            self.linear_weight = nn.Parameter(torch.Tensor(n_dense, 1))
            torch.nn.init.normal_(self.linear_weight, mean=0, std=init_std)
            self.int_layers = nn.ModuleList(
                [InteractingLayer(embedding_size, att_head_num, True, True) for _ in range(att_layer_num)])
            dnn_input = n_sparse * embedding_size + n_dense
            hidden_units = [dnn_input] + list(dnn_hidden_units)
            self.dnn_linears = nn.ModuleList(
                [nn.Linear(hidden_units[i], hidden_units[i + 1]) for i in range(len(hidden_units) - 1)])
            for name, tensor in self.dnn_linears.named_parameters():
                if 'weight' in name:
                    nn.init.normal_(tensor, mean=0, std=init_std * 100)
            self.dnn_linear = nn.Linear(dnn_hidden_units[-1] + att_layer_num and
                                        dnn_hidden_units[-1] + n_sparse * embedding_size, 1, bias=False)
            self.regularization_weight = []
            self.add_regularization_weight(self.embedding_dict.parameters(), l2=l2_reg_embedding)
            self.add_regularization_weight(self.linear_embedding_dict.parameters(), l2=l2_reg_linear)
            self.bias = nn.Parameter(torch.zeros((1,)))

        def add_regularization_weight(self, weight_list, l1=0.0, l2=0.0):
            # For a Parameter, put it in a list to keep Compatible with get_regularization_loss()
            if isinstance(weight_list, torch.nn.parameter.Parameter):
                weight_list = [weight_list]
            # For generators, filters and ParameterLists, convert them to a list of tensors to avoid bugs.
            # e.g., we can't pickle generator objects when we save the model.
            else:
                weight_list = list(weight_list)
            self.regularization_weight.append((weight_list, l1, l2))

        def get_regularization_loss(self, ):
            total_reg_loss = torch.zeros((1,))
            for weight_list, l1, l2 in self.regularization_weight:
                for w in weight_list:
                    if isinstance(w, tuple):
                        parameter = w[1]  # named_parameters
                    else:
                        parameter = w
                    if l1 > 0:
                        total_reg_loss += torch.sum(l1 * torch.abs(parameter))
                    if l2 > 0:
                        try:
                            total_reg_loss += torch.sum(l2 * torch.square(parameter))
                        except AttributeError:
                            total_reg_loss += torch.sum(l2 * parameter * parameter)
            return total_reg_loss

        def forward(self, X):
            sparse_embedding_list = [self.embedding_dict['C%d' % i](X[:, i:i + 1].long()) for i in range(n_sparse)]
            dense_value_list = [X[:, n_sparse + j:n_sparse + j + 1] for j in range(n_dense)]
            # Linear
            sparse_linear = torch.cat([self.linear_embedding_dict['C%d' % i](X[:, i:i + 1].long())
                                       for i in range(n_sparse)], dim=-1)
            logit = torch.sum(sparse_linear, dim=-1, keepdim=False)
            dense_value_logit = torch.cat(dense_value_list, dim=-1).matmul(self.linear_weight)
            logit += dense_value_logit

            att_input = torch.cat(sparse_embedding_list, dim=1)
            for layer in self.int_layers:
                att_input = layer(att_input)
            att_output = torch.flatten(att_input, start_dim=1)

            dnn_input = torch.cat([torch.flatten(torch.cat(sparse_embedding_list, dim=-1), start_dim=1),
                                   torch.flatten(torch.cat(dense_value_list, dim=-1), start_dim=1)], dim=-1)
            deep_out = dnn_input
            for fc in self.dnn_linears:
                deep_out = F.relu(fc(deep_out))
            stack_out = torch.cat((att_output, deep_out), dim=-1)
            logit += self.dnn_linear(stack_out)
            logit = logit + self.bias  # PredictionLayer(use_bias=True)
            y_pred = torch.sigmoid(logit)
            return y_pred

    return AutoInt()


def test_autoint_interacting_layers_tensordot_einsum_split_heads_and_l2_regularised_bce_with_adagrad():
    model, tmodel = pair(autoint, dtype=F32)
    optimizer = av.optim.Adagrad(model.parameters(), lr=0.05)
    toptimizer = torch.optim.Adagrad(tmodel.parameters(), lr=0.05)

    def loss_fn(model, x, y):  # BaseModel.fit's step
        th, F_ = (torch, TF) if isinstance(x, torch.Tensor) else (av, F)
        y_pred = model(x).squeeze()
        loss = F_.binary_cross_entropy(y_pred, y.squeeze(), reduction='sum')
        reg_loss = model.get_regularization_loss()
        total_loss = loss + reg_loss
        return total_loss.sum(), y_pred

    rng = np.random.default_rng(4)

    def batch():
        X = np.concatenate([rng.integers(0, 7, (5, 3)), rng.standard_normal((5, 2))], axis=1).astype(np.float32)
        return X, rng.integers(0, 2, (5, 1)).astype(np.float32)
    train_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, [batch() for _ in MODES], tol=2e-4)
    # the attention scores kept on the layer as in DeepCTR-Torch, the last call's
    assert model.int_layers[1].normalized_att_scores.shape == (2, 5, 3, 3)
    assert rel(model.int_layers[1].normalized_att_scores, tmodel.int_layers[1].normalized_att_scores) < 1e-4


# -- 5. LightGCN (gusye1234/LightGCN-PyTorch code/dataloader.py's getSparseGraph, code/model.py, code/Procedure.py's
#       BPR_train_original with utils.BPRLoss.stageOne) ----------------------------------------------------------------

def _convert_sp_mat_to_sp_tensor(torch, X):
    coo = X.tocoo().astype(np.float32)
    row = torch.Tensor(coo.row).long()
    col = torch.Tensor(coo.col).long()
    index = torch.stack([row, col])
    data = torch.FloatTensor(coo.data)
    return torch.sparse.FloatTensor(index, data, torch.Size(coo.shape))


def get_sparse_graph(torch, n_users, m_items, UserItemNet):
    adj_mat = sp.dok_matrix((n_users + m_items, n_users + m_items), dtype=np.float32)
    adj_mat = adj_mat.tolil()
    R = UserItemNet.tolil()
    adj_mat[:n_users, n_users:] = R
    adj_mat[n_users:, :n_users] = R.T
    adj_mat = adj_mat.todok()
    # adj_mat = adj_mat + sp.eye(adj_mat.shape[0])

    rowsum = np.array(adj_mat.sum(axis=1))
    with np.errstate(divide="ignore"):
        d_inv = np.power(rowsum, -0.5).flatten()
    d_inv[np.isinf(d_inv)] = 0.
    d_mat = sp.diags(d_inv)

    norm_adj = d_mat.dot(adj_mat)
    norm_adj = norm_adj.dot(d_mat)
    norm_adj = norm_adj.tocsr()
    Graph = _convert_sp_mat_to_sp_tensor(torch, norm_adj)
    Graph = Graph.coalesce()
    return Graph


def lightgcn(lib, F_, th, UserItemNet=None, latent_dim=6, n_layers=3):
    torch, nn = th, lib

    class LightGCN(nn.Module):
        def __init__(self):
            super(LightGCN, self).__init__()  # noqa: UP008
            self.__init_weight()

        def __init_weight(self):
            self.num_users, self.num_items = UserItemNet.shape
            self.latent_dim = latent_dim
            self.n_layers = n_layers
            self.embedding_user = torch.nn.Embedding(
                num_embeddings=self.num_users, embedding_dim=self.latent_dim)
            self.embedding_item = torch.nn.Embedding(
                num_embeddings=self.num_items, embedding_dim=self.latent_dim)
            nn.init.normal_(self.embedding_user.weight, std=0.1)
            nn.init.normal_(self.embedding_item.weight, std=0.1)
            self.f = nn.Sigmoid()
            self.Graph = get_sparse_graph(torch, self.num_users, self.num_items, UserItemNet)

        def computer(self):
            """propagate methods for lightGCN"""
            users_emb = self.embedding_user.weight
            items_emb = self.embedding_item.weight
            all_emb = torch.cat([users_emb, items_emb])
            embs = [all_emb]
            g_droped = self.Graph
            for layer in range(self.n_layers):  # noqa: B007
                all_emb = torch.sparse.mm(g_droped, all_emb)
                embs.append(all_emb)
            embs = torch.stack(embs, dim=1)
            light_out = torch.mean(embs, dim=1)
            users, items = torch.split(light_out, [self.num_users, self.num_items])
            return users, items

        def getUsersRating(self, users):
            all_users, all_items = self.computer()
            users_emb = all_users[users.long()]
            items_emb = all_items
            rating = self.f(torch.matmul(users_emb, items_emb.t()))
            return rating

        def getEmbedding(self, users, pos_items, neg_items):
            all_users, all_items = self.computer()
            users_emb = all_users[users]
            pos_emb = all_items[pos_items]
            neg_emb = all_items[neg_items]
            users_emb_ego = self.embedding_user(users)
            pos_emb_ego = self.embedding_item(pos_items)
            neg_emb_ego = self.embedding_item(neg_items)
            return users_emb, pos_emb, neg_emb, users_emb_ego, pos_emb_ego, neg_emb_ego

        def bpr_loss(self, users, pos, neg):
            (users_emb, pos_emb, neg_emb,
             userEmb0, posEmb0, negEmb0) = self.getEmbedding(users.long(), pos.long(), neg.long())
            reg_loss = (1 / 2) * (userEmb0.norm(2).pow(2) +
                                  posEmb0.norm(2).pow(2) +
                                  negEmb0.norm(2).pow(2)) / float(len(users))
            pos_scores = torch.mul(users_emb, pos_emb)
            pos_scores = torch.sum(pos_scores, dim=1)
            neg_scores = torch.mul(users_emb, neg_emb)
            neg_scores = torch.sum(neg_scores, dim=1)

            loss = torch.mean(torch.nn.functional.softplus(neg_scores - pos_scores))

            return loss, reg_loss

    return LightGCN()


@pytest.mark.filterwarnings("ignore:torch.sparse.SparseTensor")
def test_lightgcn_normalised_sparse_bipartite_graph_propagation_bpr_loss_and_ratings():
    rng = np.random.default_rng(5)
    n_users, m_items = 5, 7
    R = (rng.random((n_users, m_items)) < 0.4).astype(np.float32)
    R[:, 0] = 0  # an item nobody has: its degree is 0, d_inv's inf set to 0
    UserItemNet = sp.csr_matrix(R)
    model, tmodel = pair(lambda *a: lightgcn(*a, UserItemNet=UserItemNet), dtype=F32)
    assert rel(model.Graph.to_dense(), tmodel.Graph.to_dense()) < 1e-6
    optimizer = av.optim.Adam(model.parameters(), lr=0.01)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=0.01)
    weight_decay = 1e-2

    def loss_fn(model, users, pos, neg):  # utils.BPRLoss.stageOne
        loss, reg_loss = model.bpr_loss(users, pos, neg)
        reg_loss = reg_loss * weight_decay
        loss = loss + reg_loss
        return loss, reg_loss

    def batch():  # utils.UniformSample_original_python: a user, one of its items, an item it does not have
        users = rng.integers(0, n_users, 6)
        pos = np.array([rng.choice(np.flatnonzero(R[u])) if R[u].any() else 1 for u in users])
        neg = np.array([rng.choice(np.flatnonzero(R[u] == 0)) for u in users])
        return users, pos, neg
    train_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, [batch() for _ in MODES])
    users = np.array([0, 3, 4])
    with torch.no_grad():
        want = tmodel.getUsersRating(torch.tensor(users))
    assert rel(model.getUsersRating(av.tensor(users)), want) < 1e-5
    assert rel(av.compile(model.getUsersRating, backend="cpu")(av.tensor(users)), want) < 1e-5
    # the graph is model data compared by value: cached while it holds, traced again when it changes
    rating = av.compile(model.getUsersRating, backend="numpy")
    rating(av.tensor(users))
    rating(av.tensor(users + 0))
    assert rating.cache_info().misses == 1
    R2 = R.copy()
    R2[:, 0] = 1
    tmodel.Graph = get_sparse_graph(torch, n_users, m_items, sp.csr_matrix(R2))
    model.Graph = get_sparse_graph(av, n_users, m_items, sp.csr_matrix(R2))
    with torch.no_grad():
        want = tmodel.getUsersRating(torch.tensor(users))
    assert rel(rating(av.tensor(users)), want) < 1e-5 and rating.cache_info().misses == 2


# -- regressions of the bugs these ports found ---------------------------------------------------------------------------

def test_value_and_grad_of_a_callable_object_that_sets_a_tensor_attribute_names_each_gradient_right():
    """Rainbow's learner sets `self.support = torch.linspace(...)` while called: the gradient builder walked the
    object after the call, found one more leaf than the trace took, and shifted every gradient onto the next
    parameter's name (a weight's gradient under its bias's name)."""
    class Learner:
        def __call__(self, w, x):
            self.support = av.linspace(0., 1., 3)
            return (w["a"] * x * self.support).sum() + 2 * w["b"].sum()
    w = {"a": av.tensor(np.ones(3, np.float32)), "b": av.tensor(np.ones(2, np.float32))}
    x = av.tensor(np.array([1., 2., 3.], np.float32))
    for fn in (Learner(), av.compile(av.value_and_grad(Learner()), backend="cpu")):
        value, grads = (av.value_and_grad(fn) if isinstance(fn, Learner) else fn)(w, x)
        assert float(value) == pytest.approx(0.5 * 2 + 3 + 4)
        assert np.allclose(grads["a"].numpy(), [0., 1., 3.]) and np.allclose(grads["b"].numpy(), [2., 2.])


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_in_place_arithmetic_through_a_traced_boolean_mask(backend):
    """`l[(u > 0) * (l == u)] -= 1` (Rainbow), `y[m] *= 3`, `y[m] = 1 - y[m] / 2` under a trace: the selection's
    shape depends on the mask's values, but written back through the same mask it is `where(mask, op(x), x)`;
    it raised the traced-boolean-mask IndexError. Reading the selection any other way still does."""
    def f(th, x, l):
        l[(x > 0.5) * (l < 3)] -= 1
        y = x * 1
        m = x > 0.2
        y[m] *= 3.0
        y[m] = 1 - y[m] / 2
        return (y * l).sum()
    rng = np.random.default_rng(6)
    x, l = rng.random((4, 3)).astype(np.float32), rng.integers(0, 5, (4, 3))
    tx = torch.tensor(x, requires_grad=True)
    tv = f(torch, tx, torch.tensor(l))
    tv.backward()
    value, grad = av.compile(av.value_and_grad(lambda x, l: f(av, x, l)), backend=backend)(av.tensor(x), av.tensor(l))
    assert rel(value, tv.detach()) < 1e-6 and rel(grad, tx.grad) < 1e-6

    def misuses(x):
        return x[x > 0.5].sum()

    def other_mask(x):
        y = x * 1
        y[x < 0.1] = y[x > 0.1] + 0.5
        return y

    def tensor_operand(x):
        y = x * 1
        m = x > 0.5
        y[m] += x
        return y
    for fn in (misuses, other_mask, tensor_operand):
        with pytest.raises(IndexError, match="traced boolean mask.*av.where"):
            av.compile(fn, backend=backend)(av.tensor(x))

    def float_into_int(x):
        k = (x * 10).to(av.int64)
        k[x > 0.5] *= 0.5
        return k
    with pytest.raises(TypeError, match="can't be cast"):  # torch's in-place rule, as eagerly
        av.compile(float_into_int, backend=backend)(av.tensor(x))


def test_nn_parameter_isinstance_and_module_path():
    """`isinstance(w, torch.nn.parameter.Parameter)` (DeepCTR-Torch): avalon.nn.parameter did not exist and
    nn.Parameter was a function, so isinstance raised a TypeError."""
    lin, bn = nn.Linear(2, 3), nn.BatchNorm1d(3)
    assert isinstance(lin.weight, nn.Parameter) and isinstance(lin.bias, nn.parameter.Parameter)
    assert not isinstance(bn.running_mean, nn.Parameter) and not isinstance(bn.num_batches_tracked, nn.Parameter)
    assert not isinstance(list(lin.parameters()), nn.Parameter) and not isinstance(lin.parameters(), nn.Parameter)
    p = nn.Parameter(av.randn(2), requires_grad=False)
    assert isinstance(p, nn.Parameter) and not p.requires_grad
    assert nn.parameter.is_lazy(nn.UninitializedParameter()) and not nn.parameter.is_lazy(lin.weight)


def test_state_dict_lists_no_alias_held_by_a_plain_list():
    """DeepCTR-Torch's `self.regularization_weight.append((list(emb.parameters()), l1, l2))`: torch registers no
    plain list, so its state_dict has no `regularization_weight.0.0.0`; Avalon's listed each such alias."""
    model, tmodel = pair(autoint, dtype=F32)
    assert list(model.state_dict()) == list(tmodel.state_dict())
    assert [k for k, _ in model.named_parameters(remove_duplicate=False)] == \
        [k for k, _ in tmodel.named_parameters(remove_duplicate=False)]
    # a checkpoint that holds the aliases (written before) still loads
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    sd["regularization_weight.0.0.0"] = sd["embedding_dict.C0.weight"]
    nn.load_state_dict(model, sd)
    # a plain list that is a model's only path to its tensors keeps them
    class Holder:
        def __init__(self):
            self.layers = [nn.Linear(2, 2)]
    assert list(nn.state_dict(Holder())) == ["layers.0.weight", "layers.0.bias"]
