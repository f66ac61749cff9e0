"""Round 9c of port QA: code that differentiates through linear-algebra factorizations, as the popular
repositories write it, written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random float64 data and compared with torch after every step
(losses, parameters, buffers), the first step eagerly and the rest compiled (numpy and cpu backends), with
warnings as errors while tracing: Deep CCA as Michaelvll/DeepCCA writes it (two MlpNet encoders with
affine-free batch norms, cca_loss's ridged covariances, inverse square roots through eigh, T = S11^-1/2 S12
S22^-1/2, the correlation as sqrt(trace(T^T T)), as the top-k eigenvalues of T^T T, or through svdvals and
the nuclear norm), decorrelated batch norm as huangleiBuaa/DecorrelatedBN writes its DBN (grouped
covariances, `sigma.svd()` or eigh, the whitening matrix U diag(1/sqrt(eig)) U^T with gradient, running mean
and projection buffers) in a small CNN, an orthogonal-Procrustes alignment loss (W = U V^T from the SVD of
Y^T X, as MUSE's procrustes builds it, differentiated) with spectral- and nuclear-norm regularizers on a
linear layer's weight and MUSE's no-grad Procrustes refinement of the mapping, and closed-form solvers
inside a model: an R2D2-style ridge head fit by torch.linalg.lstsq (or pinv) on each episode's support
features, a DMD operator by pinv, and a feature projection and Stiefel retraction through QR (signs
fixed by R's diagonal).

Singular and eigen vectors are unique only up to sign, and Avalon's (numpy's LAPACK) may differ from
torch's, so the programs use sign-invariant quantities, as these repositories do (V f(D) V^T, U V^T, Q Q^T,
QR with R's diagonal made positive). What the ports change is what the README says differs on purpose:
gradients are values (`av.value_and_grad`, `opt.step(grads)`), and DeepCCA's `D1[torch.gt(D1, eps).nonzero()]`
(a shape that depends on values) is its forks' clamp of the eigenvalues, the same where all are positive (the
ridge makes them so). Also checked: av.func.jacrev / jacfwd through svd, eigh, qr and pinv against torch.func,
av.vmap over a batch of matrices, and torch's errors (16-bit and complex input, a complete QR's gradient of a
tall matrix). The regressions at the end are what these found: `av.trace` was only the tracer, so DeepCCA's
`torch.trace(tmp)` failed ("'Tensor' object is not callable"); forward mode through torch.linalg.svd's default
full_matrices=True of a non-square matrix raised where torch gives the extra columns a zero tangent;
matrix_norm's 'nuc', 2 and -2 over dims given in decreasing order reduced the wrong dims; and lstsq's
singular values were differentiated where torch marks them non-differentiable."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict

import avalon as av
from avalon import optim
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def train(ours, theirs, opt, topt, loss_fn, batches, mode, tol=1e-9, after=None):
    """`steps` steps of `loss = loss_fn(model, *batch); loss.backward(); opt.step()` on both sides, the first
    eagerly and the rest in `mode`; losses, parameters and buffers compared after each (and `after(model,
    th)` run on both, outside the step, as a repository's no-grad update between steps)."""
    def step(model, opt, *xs):
        loss, grads = av.value_and_grad(loss_fn(F, av))(model, *xs)
        opt.step(grads)
        return loss
    run = compiled(step, mode)
    theirs.train()
    ours.train()
    for it, batch in enumerate(batches):
        topt.zero_grad()
        tl = loss_fn(TF, torch)(theirs, *map(T, batch))
        tl.backward()
        topt.step()
        with strict():
            loss = (run if it else step)(ours, opt, *map(av.tensor, batch))
        assert rel(loss, tl) < tol, (it, float(loss), float(tl))
        if after is not None:
            with torch.no_grad():
                after(theirs, torch)
            after(ours, av)
        same_weights(ours, theirs, tol)


# -- 1. Deep CCA (Michaelvll/DeepCCA: models.py MlpNet / DeepCCA, objectives.py cca_loss) --------------------

def deep_cca(lib, F_, th, layer_sizes=(6, 3), input_size1=5, input_size2=4):
    class MlpNet(lib.Module):
        def __init__(self, layer_sizes, input_size):
            super().__init__()
            layers = []
            layer_sizes = [input_size] + list(layer_sizes)
            for l_id in range(len(layer_sizes) - 1):
                if l_id == len(layer_sizes) - 2:
                    layers.append(lib.Sequential(
                        lib.BatchNorm1d(num_features=layer_sizes[l_id], affine=False),
                        lib.Linear(layer_sizes[l_id], layer_sizes[l_id + 1]),
                    ))
                else:
                    layers.append(lib.Sequential(
                        lib.Linear(layer_sizes[l_id], layer_sizes[l_id + 1]),
                        lib.Sigmoid(),
                        lib.BatchNorm1d(num_features=layer_sizes[l_id + 1], affine=False),
                    ))
            self.layers = lib.ModuleList(layers)

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    class DeepCCA(lib.Module):
        def __init__(self):
            super().__init__()
            self.model1 = MlpNet(layer_sizes, input_size1)
            self.model2 = MlpNet(layer_sizes, input_size2)

        def forward(self, x1, x2):
            output1 = self.model1(x1)
            output2 = self.model2(x2)
            return output1, output2
    return DeepCCA()


def cca_loss(th, outdim_size, variant):
    """objectives.py's cca_loss.loss; `variant`: "all" (use_all_singular_values: sqrt(trace(T^T T)), as the
    repository's fix of its trace(sqrt(T^T T)) writes it, whose elementwise sqrt of negative entries made
    torch's gradients nan), "topk" (its symeig of T^T T + r1 I, now eigh, clamped, top outdim_size), and what
    later forks write: "svdvals" (the top-k singular values of T) and "nuc" (matrix_norm(T, 'nuc'))."""
    def loss(H1, H2):
        r1 = 1e-3
        r2 = 1e-3
        eps = 1e-9

        H1, H2 = H1.t(), H2.t()
        o1 = o2 = H1.size(0)
        m = H1.size(1)

        H1bar = H1 - H1.mean(dim=1).unsqueeze(dim=1)
        H2bar = H2 - H2.mean(dim=1).unsqueeze(dim=1)

        SigmaHat12 = (1.0 / (m - 1)) * th.matmul(H1bar, H2bar.t())
        SigmaHat11 = (1.0 / (m - 1)) * th.matmul(H1bar, H1bar.t()) + r1 * th.eye(o1, dtype=H1.dtype)
        SigmaHat22 = (1.0 / (m - 1)) * th.matmul(H2bar, H2bar.t()) + r2 * th.eye(o2, dtype=H1.dtype)

        # Calculating the root inverse of covariance matrices by using eigen decomposition
        [D1, V1] = th.linalg.eigh(SigmaHat11)
        [D2, V2] = th.linalg.eigh(SigmaHat22)

        # Added to increase stability
        D1 = th.clamp(D1, min=eps)
        D2 = th.clamp(D2, min=eps)

        SigmaHat11RootInv = th.matmul(th.matmul(V1, th.diag(D1 ** -0.5)), V1.t())
        SigmaHat22RootInv = th.matmul(th.matmul(V2, th.diag(D2 ** -0.5)), V2.t())

        Tval = th.matmul(th.matmul(SigmaHat11RootInv, SigmaHat12), SigmaHat22RootInv)

        if variant == "all":
            # all singular values are used to calculate the correlation
            tmp = th.matmul(Tval.t(), Tval)
            corr = th.sqrt(th.trace(tmp))
        elif variant == "topk":
            # just the top self.outdim_size singular values are used
            trace_TT = th.matmul(Tval.t(), Tval)
            trace_TT = th.add(trace_TT, (th.eye(trace_TT.shape[0], dtype=H1.dtype) * r1))
            U, V = th.linalg.eigh(trace_TT)
            U = th.where(U > eps, U, (th.ones(U.shape).double() * eps))
            U = U.topk(outdim_size)[0]
            corr = th.sum(th.sqrt(U))
        elif variant == "svdvals":
            corr = th.linalg.svdvals(Tval).topk(outdim_size)[0].sum()
        else:
            corr = th.linalg.matrix_norm(Tval, ord="nuc")
        return -corr
    return loss


def dcca_objective(outdim_size, variant):
    def objective(F_, th):
        def loss(model, x1, x2):
            o1, o2 = model(x1, x2)
            return cca_loss(th, outdim_size, variant)(o1, o2)
        return loss
    return objective


@pytest.mark.parametrize("variant,optimizer,mode", [("all", "RMSprop", "numpy"), ("topk", "RMSprop", "cpu"),
                                                     ("svdvals", "Adam", "numpy"), ("nuc", "Adam", "cpu")])
def test_deep_cca_eigh_root_inverse_covariances_and_correlation_objectives(variant, optimizer, mode):
    ours, theirs = pair(deep_cca)
    kw = dict(lr=1e-2, weight_decay=1e-5)
    opt, topt = getattr(optim, optimizer)(ours.parameters(), **kw), getattr(torch.optim, optimizer)(theirs.parameters(), **kw)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 16, 2))  # a shared latent, so the views correlate
    batches = [(z[i] @ rng.standard_normal((2, 5)) + 0.5 * rng.standard_normal((16, 5)),
                z[i] @ rng.standard_normal((2, 4)) + 0.5 * rng.standard_normal((16, 4))) for i in range(3)]
    train(ours, theirs, opt, topt, dcca_objective(2, variant), batches, mode)


# -- 2. decorrelated batch norm (huangleiBuaa/DecorrelatedBN, IterNorm-pytorch's extension/normalization/dbn.py) --

def dbn_cnn(lib, F_, th, decomp="svd", channels=6, groups=2, classes=3):
    class DBN(lib.Module):
        def __init__(self, num_features, num_groups=32, num_channels=0, dim=4, eps=1e-5, momentum=0.1, affine=True,
                     mode=0, *args, **kwargs):
            super().__init__()
            if num_channels > 0:
                num_groups = num_features // num_channels
            self.num_features = num_features
            self.num_groups = num_groups
            assert self.num_features % self.num_groups == 0
            self.num_channels = num_features // num_groups
            self.dim = dim
            self.eps = eps
            self.momentum = momentum
            self.affine = affine
            self.mode = mode

            self.shape = [1] * dim
            self.shape[1] = num_features

            if self.affine:
                self.weight = lib.Parameter(th.Tensor(*self.shape))
                self.bias = lib.Parameter(th.Tensor(*self.shape))
            else:
                self.register_parameter('weight', None)
                self.register_parameter('bias', None)

            self.register_buffer('running_mean', th.zeros(num_groups, self.num_channels, 1))
            self.register_buffer('running_projection',
                                 th.eye(self.num_channels).expand(num_groups, self.num_channels, self.num_channels).clone())
            self.reset_parameters()

        def reset_parameters(self):
            if self.affine:
                lib.init.uniform_(self.weight)
                lib.init.zeros_(self.bias)

        def forward(self, input):
            size = input.size()
            assert input.dim() == self.dim and size[1] == self.num_features
            training = self.mode > 0 or (self.mode == 0 and self.training)
            x = input.transpose(0, 1).contiguous().view(self.num_groups, self.num_channels, -1)
            g, d, m = x.size()
            if training:
                mean = x.mean(-1, keepdim=True)
                self.running_mean = (1. - self.momentum) * self.running_mean + self.momentum * mean.data
                x_mean = x - mean
                sigma = x_mean.matmul(x_mean.transpose(1, 2)) / m + self.eps * th.eye(d)
                if decomp == "svd":
                    u, eig, _ = sigma.svd()
                else:  # ZCA as later code writes it
                    eig, u = th.linalg.eigh(sigma)
                scale = eig.rsqrt()
                wm = u.matmul(scale.diag_embed()).matmul(u.transpose(1, 2))
                self.running_projection = (1. - self.momentum) * self.running_projection + self.momentum * wm.data
                y = wm.matmul(x_mean)
            else:
                x_mean = x - self.running_mean
                y = self.running_projection.matmul(x_mean)
            output = y.view(self.num_features, size[0], *size[2:]).transpose(0, 1)
            output = output.contiguous()
            if self.affine:
                output = output * self.weight + self.bias
            return output

    class Net(lib.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = lib.Conv2d(2, channels, 3, padding=1, bias=False)
            self.norm1 = DBN(channels, num_groups=groups)
            self.conv2 = lib.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False)
            self.norm2 = DBN(channels, num_channels=channels // groups)
            self.fc = lib.Linear(channels, classes)

        def forward(self, x):
            x = F_.relu(self.norm1(self.conv1(x)))
            x = F_.relu(self.norm2(self.conv2(x)))
            return self.fc(F_.adaptive_avg_pool2d(x, 1).flatten(1))
    return Net()


def dbn_objective(F_, th):
    def loss(model, x, y):
        return F_.cross_entropy(model(x), y)
    return loss


@pytest.mark.parametrize("decomp,mode", [("svd", "numpy"), ("eigh", "cpu")])
def test_decorrelated_batch_norm_whitening_through_svd_or_eigh_with_running_projection(decomp, mode):
    ours, theirs = pair(lambda lib, F_, th: dbn_cnn(lib, F_, th, decomp))
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt, topt = optim.SGD(ours.parameters(), **kw), torch.optim.SGD(theirs.parameters(), **kw)
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((4, 2, 6, 6)), rng.integers(0, 3, 4)) for _ in range(3)]
    train(ours, theirs, opt, topt, dbn_objective, batches, mode)
    wm = ours.norm1.running_projection.numpy()
    assert np.abs(wm - np.swapaxes(wm, 1, 2)).max() < 1e-12 and np.abs(wm - np.eye(3)).max() > 1e-2
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((3, 2, 6, 6))
    want = theirs(T(x)).detach()
    for run in (ours, av.compile(lambda m, x: m(x), backend=mode)):
        with strict():
            got = run(av.tensor(x)) if run is ours else run(ours, av.tensor(x))
        assert rel(got, want) < 1e-10


# -- 3. orthogonal Procrustes alignment (facebookresearch/MUSE's trainer.procrustes, differentiated) ---------------

N_WORDS, EMB_DIM = 12, 4


def aligner(lib, F_, th):
    class Aligner(lib.Module):
        """Source and target embeddings (as MUSE's src_emb / tgt_emb), a source encoder whose weight carries
        spectral- and nuclear-norm penalties, and MUSE's mapping, refined by Procrustes between steps."""
        def __init__(self):
            super().__init__()
            self.src_emb = lib.Embedding(N_WORDS, EMB_DIM)
            self.tgt_emb = lib.Embedding(N_WORDS, EMB_DIM)
            self.encoder = lib.Linear(EMB_DIM, EMB_DIM)
            self.mapping = lib.Linear(EMB_DIM, EMB_DIM, bias=False)

        def forward(self, src_ids, tgt_ids):
            X = th.tanh(self.encoder(self.src_emb(src_ids)))
            Y = self.tgt_emb(tgt_ids)
            # the best rotation of X onto Y: W = U V^T of the SVD of Y^T X (scipy.linalg.svd in MUSE)
            M = Y.transpose(0, 1).mm(X)
            U, S, V_t = th.linalg.svd(M, full_matrices=True)
            W = U.mm(V_t)
            align = (X.mm(W.transpose(0, 1)) - Y).pow(2).sum(1).mean()
            mapped = F_.mse_loss(self.mapping(X), Y)
            w = self.encoder.weight
            reg = 0.05 * th.linalg.matrix_norm(w, ord=2) + 0.01 * th.linalg.matrix_norm(w, ord="nuc")
            return align + mapped + reg
    return Aligner()


def aligner_objective(F_, th):
    def loss(model, src_ids, tgt_ids):
        return model(src_ids, tgt_ids)
    return loss


def procrustes(dico_np):
    """MUSE's trainer.procrustes, in place on the mapping's weight (no gradient)."""
    def after(model, th):
        dico = th.tensor(dico_np)
        A = model.src_emb.weight.data[dico[:, 0]]
        B = model.tgt_emb.weight.data[dico[:, 1]]
        W = model.mapping.weight.data
        M = B.transpose(0, 1).mm(A)
        U, S, V_t = th.linalg.svd(M, full_matrices=True)
        W.copy_(U.mm(V_t).type_as(W))
    return after


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_procrustes_alignment_through_svd_with_spectral_and_nuclear_norm_penalties_and_muse_refinement(mode):
    ours, theirs = pair(aligner)
    kw = dict(lr=0.1, momentum=0.9)
    opt, topt = optim.SGD(ours.parameters(), **kw), torch.optim.SGD(theirs.parameters(), **kw)
    rng = np.random.default_rng(2)
    batches = [(rng.permutation(N_WORDS)[:8], rng.permutation(N_WORDS)[:8]) for _ in range(3)]
    dico = np.stack([np.arange(6), rng.permutation(N_WORDS)[:6]], 1)
    train(ours, theirs, opt, topt, aligner_objective, batches, mode, after=procrustes(dico))
    w = ours.mapping.weight.numpy()
    assert np.abs(w @ w.T - np.eye(EMB_DIM)).max() < 1e-12


# -- 4. closed-form solvers inside a model: R2D2's ridge head (MetaOptNet's R2D2Head), a pinv linear probe, ---------
#       DMD by pinv, and QR (a Gram-Schmidt projection, torch's orthogonal parametrization's sign fix, a
#       Stiefel retraction)

WAY, SHOT, QUERY, FEAT = 3, 2, 3, 4


def r2d2(lib, F_, th, solver="lstsq"):
    def one_hot(indices, depth):
        encoded_indicies = th.zeros(indices.size() + (depth,), dtype=th.float64)
        index = indices.view(indices.size() + (1,))
        return encoded_indicies.scatter_(1, index, 1)

    def computeGramMatrix(A, B):
        return th.bmm(A, B.transpose(1, 2))

    def R2D2Head(query, support, support_labels, n_way, n_shot, l2_regularizer_lambda=50.0):
        tasks_per_batch = query.size(0)
        n_support = support.size(1)
        support_labels_one_hot = one_hot(support_labels.view(tasks_per_batch * n_support), n_way)
        support_labels_one_hot = support_labels_one_hot.view(tasks_per_batch, n_support, n_way)
        if solver == "lstsq":
            # Woodbury: W = S^T (S S^T + lambda I)^-1 Y, the solve by lstsq (binv in the repository)
            id_matrix = th.eye(n_support, dtype=th.float64).expand(tasks_per_batch, n_support, n_support)
            ridge_sol = computeGramMatrix(support, support) + l2_regularizer_lambda * id_matrix
            ridge_sol = th.linalg.lstsq(ridge_sol, support_labels_one_hot).solution
            ridge_sol = th.bmm(support.transpose(1, 2), ridge_sol)
        else:
            # a least-squares linear probe on the support features (more shots than features)
            ridge_sol = th.linalg.pinv(support).bmm(support_labels_one_hot)
        logits = th.bmm(query, ridge_sol)
        return logits

    class R2D2(lib.Module):
        def __init__(self):
            super().__init__()
            self.embedding = lib.Sequential(lib.Linear(5, 8), lib.ReLU(), lib.Linear(8, FEAT))
            self.scale = lib.Parameter(th.FloatTensor([1.0]))  # the repository's learnable logit scale

        def forward(self, data_support, labels_support, data_query):
            tasks, n_support, _ = data_support.shape
            emb_support = self.embedding(data_support.reshape(tasks * n_support, -1)).reshape(tasks, n_support, -1)
            emb_query = self.embedding(data_query.reshape(-1, data_query.shape[-1])).reshape(tasks, -1, FEAT)
            logit_query = R2D2Head(emb_query, emb_support, labels_support, WAY, SHOT)
            return self.scale * logit_query
    return R2D2()


def r2d2_objective(F_, th):
    def loss(model, data_support, labels_support, data_query, labels_query):
        logits = model(data_support, labels_support, data_query)
        return F_.cross_entropy(logits.reshape(-1, WAY), labels_query.reshape(-1))
    return loss


def episodes(rng, n, shot):
    out = []
    for _ in range(n):
        protos = rng.standard_normal((2, WAY, 5))
        ls = np.tile(np.arange(WAY), (2, shot))
        lq = np.tile(np.arange(WAY), (2, 1))
        out.append((protos[np.arange(2)[:, None], ls] + 0.3 * rng.standard_normal((2, WAY * shot, 5)), ls,
                    protos[np.arange(2)[:, None], lq] + 0.3 * rng.standard_normal((2, WAY, 5)), lq))
    return out


@pytest.mark.parametrize("solver,mode", [("lstsq", "numpy"), ("pinv", "cpu")])
def test_r2d2_ridge_head_fit_by_lstsq_or_pinv_on_each_episode(solver, mode):
    ours, theirs = pair(lambda lib, F_, th: r2d2(lib, F_, th, solver))
    opt, topt = optim.Adam(ours.parameters(), lr=1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2)
    batches = episodes(np.random.default_rng(3), 3, SHOT if solver == "lstsq" else 2 * SHOT)
    train(ours, theirs, opt, topt, r2d2_objective, batches, mode)


def dmd_autoencoder(lib, F_, th, n_in=5, latent=3):
    class KoopmanAE(lib.Module):
        """An autoencoder whose latent trajectory is fit by exact DMD (A = X1 X0^+) each step, its one-step
        prediction error a loss term (deep Koopman / DMD-autoencoder code)."""
        def __init__(self):
            super().__init__()
            self.encoder = lib.Sequential(lib.Linear(n_in, 6), lib.Tanh(), lib.Linear(6, latent))
            self.decoder = lib.Sequential(lib.Linear(latent, 6), lib.Tanh(), lib.Linear(6, n_in))

        def forward(self, x):  # x: (time, n_in), one trajectory
            z = self.encoder(x)
            X0, X1 = z[:-1].T, z[1:].T
            A = X1 @ th.linalg.pinv(X0)
            pred = F_.mse_loss(A @ X0, X1)
            recon = F_.mse_loss(self.decoder(z), x)
            return recon + pred + 0.1 * F_.mse_loss(self.decoder((A @ X0).T), x[1:])
    return KoopmanAE()


def dmd_objective(F_, th):
    def loss(model, x):
        return model(x)
    return loss


def test_dmd_autoencoder_fits_its_latent_dynamics_by_pinv_each_step():
    ours, theirs = pair(dmd_autoencoder)
    opt, topt = optim.Adam(ours.parameters(), lr=1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2)
    rng = np.random.default_rng(12)
    rot = np.linalg.qr(rng.standard_normal((5, 5)))[0] * 0.95
    batches = []
    for _ in range(3):
        x = [rng.standard_normal(5)]
        for _ in range(7):
            x.append(rot @ x[-1] + 0.05 * rng.standard_normal(5))
        batches.append((np.stack(x),))
    train(ours, theirs, opt, topt, dmd_objective, batches, "cpu")


def qr_net(lib, F_, th, n_in=5, hid=6, k=3, classes=2):
    class Net(lib.Module):
        def __init__(self):
            super().__init__()
            self.encoder = lib.Linear(n_in, hid)
            self.nuisance = lib.Parameter(th.randn(hid, 2))  # directions projected out of the features
            self.stiefel = lib.Parameter(th.linalg.qr(th.randn(hid, k))[0])  # kept on the Stiefel manifold
            self.basis = lib.Parameter(th.randn(hid, k))  # an orthogonal map, as parametrizations.orthogonal
            self.head = lib.Linear(2 * k, classes)

        def forward(self, x):
            h = th.tanh(self.encoder(x))
            Q, _ = th.linalg.qr(self.nuisance)  # Gram-Schmidt of the nuisance directions
            h = h - h @ Q @ Q.T
            Qb, Rb = th.linalg.qr(self.basis)
            Qb = Qb * Rb.diagonal().sgn().unsqueeze(-2)  # torch's orthogonal parametrization: Q unique
            return self.head(th.cat([h @ self.stiefel, h @ Qb], dim=1))
    return Net()


def stiefel_retraction(model, th):
    """A Riemannian-SGD step's retraction back to the manifold: QR with R's diagonal made positive."""
    q, r = th.linalg.qr(model.stiefel.data)
    model.stiefel.data.copy_(q * th.sign(th.diagonal(r)).unsqueeze(0))


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_qr_projection_orthogonal_parametrization_and_stiefel_retraction(mode):
    ours, theirs = pair(qr_net)
    opt, topt = optim.SGD(ours.parameters(), lr=0.2), torch.optim.SGD(theirs.parameters(), lr=0.2)
    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((8, 5)), rng.integers(0, 2, 8)) for _ in range(3)]
    train(ours, theirs, opt, topt, dbn_objective, batches, mode, after=stiefel_retraction)
    s = ours.stiefel.numpy()
    assert np.abs(s.T @ s - np.eye(3)).max() < 1e-12


# -- torch.func-style transforms through the factorizations, vmap, and errors ----------------------------------------

def spectral_functions(th):
    """Functions of one matrix that do not depend on the factors' signs (well-separated spectra below)."""
    def polar(a):  # the orthogonal polar factor U V^T and the symmetric one V S V^T
        u, s, vh = th.linalg.svd(a, full_matrices=False)
        return th.cat([u @ vh, (vh.mT * s) @ vh], 0)

    def sqrtm(a):  # the square root of A^T A + I, through eigh
        lam, v = th.linalg.eigh(a.mT @ a + th.eye(a.shape[-1], dtype=a.dtype))
        return (v * lam.sqrt().unsqueeze(-2)) @ v.mT

    def gram_schmidt(a):  # QR with R's diagonal made positive: unique
        q, r = th.linalg.qr(a)
        d = r.diagonal().sgn()
        return th.cat([q * d, r * d.unsqueeze(-1)], 0)
    return {"polar": polar, "sqrtm": sqrtm, "gram_schmidt": gram_schmidt,
            "pinv": lambda a: th.linalg.pinv(a), "norms": lambda a: th.stack([th.linalg.matrix_norm(a, 2),
                                                                              th.linalg.matrix_norm(a, "nuc")])}


def separated(rng, m, n, s=(3.0, 2.0, 1.0)):
    """An m x n matrix with singular values `s` (well separated), random singular vectors."""
    k = min(m, n)
    u = np.linalg.qr(rng.standard_normal((m, k)))[0]
    v = np.linalg.qr(rng.standard_normal((n, k)))[0]
    return (u * np.asarray(s[:k])) @ v.T


@pytest.mark.parametrize("name", ["polar", "sqrtm", "gram_schmidt", "pinv", "norms"])
def test_jacrev_and_jacfwd_through_factorizations_match_torch_func(name):
    import torch.func as tfunc
    a = separated(np.random.default_rng(5), 4, 3)
    fn, tfn = spectral_functions(av)[name], spectral_functions(torch)[name]
    want_rev = tfunc.jacrev(tfn)(T(a)).numpy()
    assert rel(tfunc.jacfwd(tfn)(T(a)), want_rev) < 1e-12
    for kind in ("jacrev", "jacfwd"):
        j = getattr(av.func, kind)(fn)
        for run in (j, av.compile(j, backend="cpu")):
            with strict():
                got = run(av.tensor(a))
            assert rel(got, want_rev) < 1e-12, kind
    assert rel(av.compile(fn, backend="numpy")(av.tensor(a)), tfn(T(a))) < 1e-13


def test_vmap_over_a_batch_of_matrices_matches_per_matrix_torch():
    rng = np.random.default_rng(6)
    xs = np.stack([separated(rng, 4, 3) for _ in range(3)])

    def all_of(th):
        fns = spectral_functions(th)
        return lambda a: th.cat([fns[k](a).reshape(-1) for k in fns])
    f = all_of(av)
    want = np.stack([all_of(torch)(T(x)).numpy() for x in xs])
    for run in (av.vmap(f), av.compile(av.vmap(f), backend="cpu")):
        with strict():
            assert rel(run(av.tensor(xs)), want) < 1e-13
    grads = av.vmap(av.grad(lambda a: f(a).sin().sum()))(av.tensor(xs))
    tx = T(xs).requires_grad_()
    torch.stack([all_of(torch)(x).sin().sum() for x in tx.unbind(0)]).sum().backward()
    assert rel(grads, tx.grad) < 1e-12


def test_factorization_errors_are_torch_s():
    x = np.random.default_rng(7).standard_normal((4, 3))
    with pytest.raises(RuntimeError, match="not implemented for 'f16'"):
        av.linalg.svd(av.tensor(x).half())
    with pytest.raises(RuntimeError, match="not implemented for 'bf16'"):
        av.linalg.eigh(av.tensor(x[:3]).bfloat16())
    with pytest.raises(RuntimeError, match="Expected a floating point"):
        av.linalg.qr(av.tensor(np.ones((3, 3), np.int64)))
    with pytest.raises(NotImplementedError, match="complex matrices"):
        av.linalg.svdvals(av.complex(av.tensor(x), av.tensor(x)))
    with pytest.raises(NotImplementedError, match="complex matrices"):
        av.linalg.eigh(av.view_as_complex(av.tensor(np.stack([x[:3], x[:3]], -1))))
    with pytest.raises(NotImplementedError, match="mode='complete'.*4 x 3"):
        av.grad(lambda a: av.linalg.qr(a, mode="complete").Q.sum())(av.tensor(x))
    with pytest.raises(NotImplementedError, match="mode='complete'.*4 x 3"):
        av.func.jacfwd(lambda a: av.linalg.qr(a, mode="complete").R)(av.tensor(x))
    with pytest.raises(RuntimeError, match="square"):
        av.linalg.eigh(av.tensor(x))


# -- regressions: what the programs and probes above found ----------------------------------------------------------

def test_av_trace_of_a_tensor_is_torch_trace():
    """DeepCCA's use_all_singular_values objective calls `torch.trace(tmp)`: `av.trace` was only the tracer
    (`av.trace(fn, *args)`), so the port failed with "'Tensor' object is not callable". Given one tensor it
    is now torch.trace, eagerly, traced and differentiated."""
    x = np.random.default_rng(8).standard_normal((3, 3))
    assert rel(av.trace(av.tensor(x)), torch.trace(T(x))) < 1e-15
    assert av.trace(av.tensor(np.arange(9).reshape(3, 3))).dtype == av.int64
    for run in (av.grad(lambda a: av.trace(a @ a)), av.compile(av.grad(lambda a: av.trace(a @ a)), backend="cpu")):
        assert rel(run(av.tensor(x)), 2 * x.T) < 1e-14
    assert "matmul" in str(av.trace(lambda a: a @ a, av.tensor(x)))  # the tracer still


@pytest.mark.parametrize("shape", [(4, 3), (3, 5)])
def test_forward_mode_through_a_full_svd_of_a_non_square_matrix_is_torch_s(shape):
    """torch.linalg.svd's default full_matrices=True: forward mode (jacfwd, jvp) through it on a non-square
    matrix raised NotImplementedError ("torch refuses too"), but torch computes it, with a zero tangent for
    the extra (non-unique) columns of U or V; the rule now does so (a Procrustes map of a 4 x 3 matrix)."""
    import torch.func as tfunc
    a = separated(np.random.default_rng(9), *shape)

    def factors(th):
        def f(a):
            u, s, vh = th.linalg.svd(a)
            k = s.shape[-1]
            signs = th.linalg.svd(a)[0][..., :1, :k].sgn()  # sign-invariant: U S and V S of the same flips
            return th.cat([(u[:, :k] * signs).reshape(-1), s, (vh[:k] * signs.mT).reshape(-1),
                           (u[:, :k] @ vh[:k]).reshape(-1)])
        return f
    want = tfunc.jacfwd(factors(torch))(T(a)).numpy()
    assert rel(tfunc.jacrev(factors(torch))(T(a)), want) < 1e-12
    for run in (av.func.jacfwd(factors(av)), av.compile(av.func.jacfwd(factors(av)), backend="numpy")):
        with strict():
            assert rel(run(av.tensor(a)), want) < 1e-12
    m, n = shape
    extra = av.func.jacfwd(lambda a: av.linalg.svd(a).U[:, min(m, n):] if m > n else av.linalg.svd(a).Vh[m:])(
        av.tensor(a))
    assert extra.numpy().size and not extra.numpy().any()


def test_spectral_matrix_norms_over_dims_in_reverse_order():
    """matrix_norm(A, 'nuc' / 2 / -2, dim=(d0, d1)) with d0 > d1 moved the wrong dims last (dim=(2, 0) of a
    (2, 4, 3) tensor took dims 2 and 1, giving two norms where torch gives four)."""
    x = np.random.default_rng(10).standard_normal((2, 4, 3, 5))
    for dim in [(2, 0), (-1, -3), (3, 1), (0, 2)]:
        for o in ("nuc", 2, -2):
            got = av.linalg.matrix_norm(av.tensor(x), ord=o, dim=dim, keepdim=dim == (3, 1))
            assert rel(got, torch.linalg.matrix_norm(T(x), ord=o, dim=dim, keepdim=dim == (3, 1))) < 1e-13, (dim, o)
    assert rel(av.linalg.norm(av.tensor(x[0]), ord="nuc", dim=(1, 0)), torch.linalg.norm(T(x[0]), ord="nuc",
                                                                                       dim=(1, 0))) < 1e-13


def test_lstsq_singular_values_are_not_differentiated_as_in_torch():
    """torch.linalg.lstsq's singular_values (drivers gelsd / gelss) are non-differentiable outputs: a loss
    that adds them gets no gradient from them in torch; Avalon differentiated them."""
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    ta = T(a).requires_grad_()
    r = torch.linalg.lstsq(ta, T(b), driver="gelsd")
    (r.solution.sin().sum() + r.residuals.sum() + r.singular_values.sum()).backward()

    def loss(a, b):
        r = av.linalg.lstsq(a, b, driver="gelsd")
        return r.solution.sin().sum() + r.residuals.sum() + r.singular_values.sum()
    for run in (av.grad(loss), av.compile(av.grad(loss), backend="cpu")):
        with strict():
            assert rel(run(av.tensor(a), av.tensor(b)), ta.grad) < 1e-12
