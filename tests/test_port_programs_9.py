"""Round 6 of port QA, part B (after test_port_programs.py, _more and _3 to _7): programs as the PyTorch
tutorials and popular repositories write them, written once over `lib` (torch.nn or avalon.nn), `F_` and `th`
(torch or avalon), trained a few steps from torch's weights on random data in float64 and compared with torch
after every step (losses, parameters, buffers), eagerly and compiled, with warnings as errors while tracing:
the tutorial's spatial transformer network (a localization net whose fc_loc starts at the identity transform
by `.data.zero_()`/`.data.copy_`, affine_grid + grid_sample both ways of align_corners), a NeRF as
nerf-pytorch writes it (positional encoding, the skip MLP with view directions, raw2outputs' exclusive
cumprod, hierarchical sample_pdf by searchsorted and gather, Adam with the exponential decay written on
param_groups), MAML on sinusoids as dragen1860's functional Learner writes it (inner SGD by
`torch.autograd.grad`, second and first order, an Adam meta-optimizer) and Transformer-XL's relative
multi-head attention (r_w_bias/r_r_bias, einsum, _rel_shift, the causal mask with the memory offset filled with
-inf or -1e30 in float and half, memories carried across segments from `torch.empty(0)`).

The random draws (stratified samples, sample_pdf's uniforms, the tasks) are drawn beforehand and given as
inputs. The ports change what the README says differs: gradients are values (a nested `av.grad` for
`autograd.grad`, a list's gradient keyed by position), Transformer-XL's `attn_mask.any().item()` on its causal
mask is a value computed while tracing (it depends on no input), and tensors built from Python lists inside a trace
(nerf-pytorch's `torch.Tensor([1e10])`) are literal constants the compiled graph keeps. The regressions at the end are what the programs
found: grid_sample's pixel coordinate rounded twice where torch rounds once (the grid's gradient at the
identity's pixel centers took the other side) and its border clip passing a gradient at the border, cat
refusing torch's skipped `(0,)` tensors, and `.any().item()` on a mask built from constants refused."""
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


def arr(x) -> av.Tensor:
    """An Avalon tensor of numpy data, float64 kept."""
    return av.tensor(np.asarray(x))


# -- 1. spatial transformer network (the PyTorch tutorial): localization net, identity-initialised fc_loc -----

STN_CLS = 4


def stn_net(lib, F_, th, align_corners=False):
    class Net(lib.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = lib.Conv2d(1, 4, kernel_size=5)
            self.conv2 = lib.Conv2d(4, 6, kernel_size=5)
            self.conv2_drop = lib.Dropout2d()
            self.fc1 = lib.Linear(6 * 2 * 2, 12)
            self.fc2 = lib.Linear(12, STN_CLS)

            # Spatial transformer localization-network
            self.localization = lib.Sequential(
                lib.Conv2d(1, 4, kernel_size=7),
                lib.MaxPool2d(2, stride=2),
                lib.ReLU(True),
                lib.Conv2d(4, 5, kernel_size=5),
                lib.MaxPool2d(2, stride=2),
                lib.ReLU(True)
            )

            # Regressor for the 3 * 2 affine matrix
            self.fc_loc = lib.Sequential(
                lib.Linear(5 * 1 * 1, 8),
                lib.ReLU(True),
                lib.Linear(8, 3 * 2)
            )

            # Initialize the weights/bias with identity transformation
            self.fc_loc[2].weight.data.zero_()
            self.fc_loc[2].bias.data.copy_(th.tensor([1, 0, 0, 0, 1, 0], dtype=th.float))

        # Spatial transformer network forward function
        def stn(self, x):
            xs = self.localization(x)
            xs = xs.view(-1, 5 * 1 * 1)
            theta = self.fc_loc(xs)
            theta = theta.view(-1, 2, 3)

            grid = F_.affine_grid(theta, x.size(), align_corners=align_corners)
            x = F_.grid_sample(x, grid, align_corners=align_corners)

            return x

        def forward(self, x):
            # transform the input
            x = self.stn(x)

            # Perform the usual forward pass
            x = F_.relu(F_.max_pool2d(self.conv1(x), 2))
            x = F_.relu(F_.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
            x = x.view(-1, 6 * 2 * 2)
            x = F_.relu(self.fc1(x))
            x = F_.dropout(x, training=self.training)
            x = self.fc2(x)
            return F_.log_softmax(x, dim=1)

    return Net()


def stn_loss(F_):
    def loss(model, data, target):
        return F_.nll_loss(model(data), target)
    return loss


@pytest.mark.parametrize("align_corners", [False, True])
def test_spatial_transformer_tutorial_identity_initialised_localization_affine_grid_grid_sample(align_corners):
    ours, theirs = pair(lambda lib, F_, th: stn_net(lib, F_, th, align_corners))
    assert (ours.fc_loc[2].bias.numpy() == [1, 0, 0, 0, 1, 0]).all() and (ours.fc_loc[2].weight.numpy() == 0).all()
    ours.eval()  # dropout off: the classifier's Dropout2d and F.dropout(training=self.training)
    theirs.eval()
    opt, topt = optim.SGD(ours.parameters(), lr=0.05), torch.optim.SGD(theirs.parameters(), lr=0.05)
    rng = np.random.default_rng(0)
    step = train_step(stn_loss(F))
    for it, mode in enumerate(("eager", "numpy", "cpu")):
        x, y = rng.standard_normal((3, 1, 20, 20)), rng.integers(0, STN_CLS, 3)
        topt.zero_grad()
        tl = stn_loss(TF)(theirs, T(x), T(y))
        tl.backward()
        topt.step()
        with strict():
            loss = compiled(step, mode)(ours, opt, av.tensor(x), av.tensor(y))
        assert rel(loss, tl) < 1e-12, (it, mode)
        same_weights(ours, theirs, 1e-10)
    assert np.abs(ours.fc_loc[2].weight.numpy()).max() > 1e-4  # the transform learned away from the identity


# -- 2. NeRF (yenchenlin/nerf-pytorch): positional encoding, skip MLP, raw2outputs, hierarchical sample_pdf ----

def get_embedder(th, multires):
    class Embedder:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            self.create_embedding_fn()

        def create_embedding_fn(self):
            embed_fns = []
            d = self.kwargs['input_dims']
            out_dim = 0
            if self.kwargs['include_input']:
                embed_fns.append(lambda x: x)
                out_dim += d
            max_freq = self.kwargs['max_freq_log2']
            N_freqs = self.kwargs['num_freqs']
            if self.kwargs['log_sampling']:
                freq_bands = 2. ** th.linspace(0., max_freq, steps=N_freqs)
            else:
                freq_bands = th.linspace(2. ** 0., 2. ** max_freq, steps=N_freqs)
            for freq in freq_bands:
                for p_fn in self.kwargs['periodic_fns']:
                    embed_fns.append(lambda x, p_fn=p_fn, freq=freq: p_fn(x * freq))
                    out_dim += d
            self.embed_fns = embed_fns
            self.out_dim = out_dim

        def embed(self, inputs):
            return th.cat([fn(inputs) for fn in self.embed_fns], -1)

    embed_kwargs = {
        'include_input': True,
        'input_dims': 3,
        'max_freq_log2': multires - 1,
        'num_freqs': multires,
        'log_sampling': True,
        'periodic_fns': [th.sin, th.cos],
    }
    embedder_obj = Embedder(**embed_kwargs)
    return (lambda x, eo=embedder_obj: eo.embed(x)), embedder_obj.out_dim


def nerf(lib, F_, th, D=4, W=16, skips=(2,), multires=3, multires_views=2):
    class NeRF(lib.Module):
        def __init__(self, D=8, W=256, input_ch=3, input_ch_views=3, output_ch=4, skips=[4], use_viewdirs=False):  # noqa: B006
            super().__init__()
            self.D = D
            self.W = W
            self.input_ch = input_ch
            self.input_ch_views = input_ch_views
            self.skips = skips
            self.use_viewdirs = use_viewdirs

            self.pts_linears = lib.ModuleList(
                [lib.Linear(input_ch, W)] + [lib.Linear(W, W) if i not in self.skips else lib.Linear(W + input_ch, W)
                                             for i in range(D - 1)])
            self.views_linears = lib.ModuleList([lib.Linear(input_ch_views + W, W // 2)])
            if use_viewdirs:
                self.feature_linear = lib.Linear(W, W)
                self.alpha_linear = lib.Linear(W, 1)
                self.rgb_linear = lib.Linear(W // 2, 3)
            else:
                self.output_linear = lib.Linear(W, output_ch)

        def forward(self, x):
            input_pts, input_views = th.split(x, [self.input_ch, self.input_ch_views], dim=-1)
            h = input_pts
            for i, l in enumerate(self.pts_linears):  # noqa: B007
                h = self.pts_linears[i](h)
                h = F_.relu(h)
                if i in self.skips:
                    h = th.cat([input_pts, h], -1)

            if self.use_viewdirs:
                alpha = self.alpha_linear(h)
                feature = self.feature_linear(h)
                h = th.cat([feature, input_views], -1)
                for i, l in enumerate(self.views_linears):  # noqa: B007
                    h = self.views_linears[i](h)
                    h = F_.relu(h)
                rgb = self.rgb_linear(h)
                outputs = th.cat([rgb, alpha], -1)
            else:
                outputs = self.output_linear(h)
            return outputs

    class Renderer(lib.Module):  # create_nerf's coarse and fine networks, held together
        def __init__(self):
            super().__init__()
            self.embed_fn, input_ch = get_embedder(th, multires)
            self.embeddirs_fn, input_ch_views = get_embedder(th, multires_views)
            self.network_fn = NeRF(D=D, W=W, input_ch=input_ch, output_ch=5, skips=list(skips),
                                   input_ch_views=input_ch_views, use_viewdirs=True)
            self.network_fine = NeRF(D=D, W=W, input_ch=input_ch, output_ch=5, skips=list(skips),
                                     input_ch_views=input_ch_views, use_viewdirs=True)

    return Renderer()


def nerf_functions(th, F_):
    def batchify(fn, chunk):
        if chunk is None:
            return fn

        def ret(inputs):
            return th.cat([fn(inputs[i:i + chunk]) for i in range(0, inputs.shape[0], chunk)], 0)
        return ret

    def run_network(inputs, viewdirs, fn, embed_fn, embeddirs_fn, netchunk=1024 * 64):
        inputs_flat = th.reshape(inputs, [-1, inputs.shape[-1]])
        embedded = embed_fn(inputs_flat)
        if viewdirs is not None:
            input_dirs = viewdirs[:, None].expand(inputs.shape)
            input_dirs_flat = th.reshape(input_dirs, [-1, input_dirs.shape[-1]])
            embedded_dirs = embeddirs_fn(input_dirs_flat)
            embedded = th.cat([embedded, embedded_dirs], -1)
        outputs_flat = batchify(fn, netchunk)(embedded)
        outputs = th.reshape(outputs_flat, list(inputs.shape[:-1]) + [outputs_flat.shape[-1]])
        return outputs

    def raw2outputs(raw, z_vals, rays_d, raw_noise_std=0, white_bkgd=False):
        raw2alpha = lambda raw, dists, act_fn=F_.relu: 1. - th.exp(-act_fn(raw) * dists)  # noqa: E731
        dists = z_vals[..., 1:] - z_vals[..., :-1]
        dists = th.cat([dists, th.Tensor([1e10]).expand(dists[..., :1].shape)], -1)  # [N_rays, N_samples]
        dists = dists * th.norm(rays_d[..., None, :], dim=-1)
        rgb = th.sigmoid(raw[..., :3])  # [N_rays, N_samples, 3]
        noise = 0.
        alpha = raw2alpha(raw[..., 3] + noise, dists)  # [N_rays, N_samples]
        weights = alpha * th.cumprod(th.cat([th.ones((alpha.shape[0], 1)), 1. - alpha + 1e-10], -1), -1)[:, :-1]
        rgb_map = th.sum(weights[..., None] * rgb, -2)  # [N_rays, 3]
        depth_map = th.sum(weights * z_vals, -1)
        disp_map = 1. / th.max(1e-10 * th.ones_like(depth_map), depth_map / th.sum(weights, -1))
        acc_map = th.sum(weights, -1)
        if white_bkgd:
            rgb_map = rgb_map + (1. - acc_map[..., None])
        return rgb_map, disp_map, acc_map, weights, depth_map

    def sample_pdf(bins, weights, N_samples, det=False, u=None):
        """`u`: the uniform draws (torch.rand's), given."""
        # Get pdf
        weights = weights + 1e-5  # prevent nans
        pdf = weights / th.sum(weights, -1, keepdim=True)
        cdf = th.cumsum(pdf, -1)
        cdf = th.cat([th.zeros_like(cdf[..., :1]), cdf], -1)  # (batch, len(bins))
        # Take uniform samples
        if det:
            u = th.linspace(0., 1., steps=N_samples)
            u = u.expand(list(cdf.shape[:-1]) + [N_samples])
        # Invert CDF
        u = u.contiguous()
        inds = th.searchsorted(cdf, u, right=True)
        below = th.max(th.zeros_like(inds - 1), inds - 1)
        above = th.min((cdf.shape[-1] - 1) * th.ones_like(inds), inds)
        inds_g = th.stack([below, above], -1)  # (batch, N_samples, 2)
        matched_shape = [inds_g.shape[0], inds_g.shape[1], cdf.shape[-1]]
        cdf_g = th.gather(cdf.unsqueeze(1).expand(matched_shape), 2, inds_g)
        bins_g = th.gather(bins.unsqueeze(1).expand(matched_shape), 2, inds_g)
        denom = (cdf_g[..., 1] - cdf_g[..., 0])
        denom = th.where(denom < 1e-5, th.ones_like(denom), denom)
        t = (u - cdf_g[..., 0]) / denom
        samples = bins_g[..., 0] + t * (bins_g[..., 1] - bins_g[..., 0])
        return samples

    def render_rays(model, rays_o, rays_d, near, far, N_samples, N_importance, t_rand, u, netchunk=8, perturb=1.):
        viewdirs = rays_d / th.norm(rays_d, dim=-1, keepdim=True)
        N_rays = rays_o.shape[0]

        def network_query_fn(inputs, viewdirs, network_fn):
            return run_network(inputs, viewdirs, network_fn, embed_fn=model.embed_fn,
                               embeddirs_fn=model.embeddirs_fn, netchunk=netchunk)

        t_vals = th.linspace(0., 1., steps=N_samples)
        z_vals = near * (1. - t_vals) + far * (t_vals)
        z_vals = z_vals.expand([N_rays, N_samples])
        if perturb > 0.:
            # get intervals between samples
            mids = .5 * (z_vals[..., 1:] + z_vals[..., :-1])
            upper = th.cat([mids, z_vals[..., -1:]], -1)
            lower = th.cat([z_vals[..., :1], mids], -1)
            # stratified samples in those intervals (t_rand: torch.rand(z_vals.shape), given)
            z_vals = lower + (upper - lower) * t_rand

        pts = rays_o[..., None, :] + rays_d[..., None, :] * z_vals[..., :, None]  # [N_rays, N_samples, 3]
        raw = network_query_fn(pts, viewdirs, model.network_fn)
        rgb_map, disp_map, acc_map, weights, depth_map = raw2outputs(raw, z_vals, rays_d)

        ret = {'rgb_map': rgb_map, 'disp_map': disp_map, 'acc_map': acc_map}
        if N_importance > 0:
            rgb_map_0, disp_map_0, acc_map_0 = rgb_map, disp_map, acc_map
            z_vals_mid = .5 * (z_vals[..., 1:] + z_vals[..., :-1])
            z_samples = sample_pdf(z_vals_mid, weights[..., 1:-1], N_importance, det=(perturb == 0.), u=u)
            z_samples = z_samples.detach()
            z_vals, _ = th.sort(th.cat([z_vals, z_samples], -1), -1)
            pts = rays_o[..., None, :] + rays_d[..., None, :] * z_vals[..., :, None]
            run_fn = model.network_fn if model.network_fine is None else model.network_fine
            raw = network_query_fn(pts, viewdirs, run_fn)
            rgb_map, disp_map, acc_map, weights, depth_map = raw2outputs(raw, z_vals, rays_d)
            ret = {'rgb_map': rgb_map, 'disp_map': disp_map, 'acc_map': acc_map, 'rgb0': rgb_map_0,
                   'disp0': disp_map_0, 'acc0': acc_map_0, 'z_std': th.std(z_samples, dim=-1, unbiased=False),
                   'depth_map': depth_map}
        return ret

    def img2mse(x, y):
        return th.mean((x - y) ** 2)

    def loss(model, rays_o, rays_d, target_s, t_rand, u):
        extras = render_rays(model, rays_o, rays_d, 2., 6., N_SAMPLES, N_IMPORTANCE, t_rand, u)
        img_loss = img2mse(extras['rgb_map'], target_s)
        loss = img_loss
        psnr = -10. * th.log(img_loss) / th.log(th.Tensor([10.]))
        img_loss0 = img2mse(extras['rgb0'], target_s)
        loss = loss + img_loss0
        return loss, (psnr, extras)

    return loss, sample_pdf, raw2outputs


N_RAYS, N_SAMPLES, N_IMPORTANCE = 5, 6, 4


def test_nerf_positional_encoding_raw2outputs_hierarchical_sampling_and_exponential_lr_decay():
    ours, theirs = pair(nerf)
    loss_fn, tloss_fn = nerf_functions(av, F)[0], nerf_functions(torch, TF)[0]
    lrate, lrate_decay = 5e-3, 0.002  # args.lrate_decay * 1000 steps: a decay one can see in three steps
    grad_vars = list(ours.network_fn.parameters()) + list(ours.network_fine.parameters())
    tgrad_vars = list(theirs.network_fn.parameters()) + list(theirs.network_fine.parameters())
    opt = optim.Adam(params=grad_vars, lr=lrate, betas=(0.9, 0.999))
    topt = torch.optim.Adam(params=tgrad_vars, lr=lrate, betas=(0.9, 0.999))

    def step(model, opt, *xs):
        (loss, aux), grads = av.value_and_grad(loss_fn, has_aux=True)(model, *xs)
        opt.step(grads)
        return loss, aux

    rng = np.random.default_rng(0)
    for global_step, mode in enumerate(("eager", "numpy", "cpu")):
        rays_o, rays_d = rng.standard_normal((N_RAYS, 3)) * 0.2, rng.standard_normal((N_RAYS, 3))
        target_s = rng.random((N_RAYS, 3))
        t_rand, u = rng.random((N_RAYS, N_SAMPLES)), rng.random((N_RAYS, N_IMPORTANCE))
        xs = (rays_o, rays_d, target_s, t_rand, u)
        topt.zero_grad()
        tl, (tpsnr, textras) = tloss_fn(theirs, *map(T, xs))
        tl.backward()
        topt.step()
        with strict():
            loss, (psnr, extras) = compiled(step, mode)(ours, opt, *map(arr, xs))
        assert rel(loss, tl) < 1e-12 and rel(psnr, tpsnr) < 1e-12, (global_step, mode)
        for k, v in textras.items():  # disp_map is 0 / 0 on a ray whose densities all vanish, on both sides
            a, b = extras[k].numpy(), v.detach().numpy()
            assert (np.isnan(a) == np.isnan(b)).all() and rel(np.nan_to_num(a), np.nan_to_num(b)) < 1e-10, k
        same_weights(ours, theirs, 1e-10)
        decay_rate = 0.1
        decay_steps = lrate_decay * 1000
        new_lrate = lrate * (decay_rate ** ((global_step + 1) / decay_steps))
        for o in (opt, topt):
            for param_group in o.param_groups:
                param_group['lr'] = new_lrate



# -- 3. MAML on sinusoid regression (dragen1860/MAML-Pytorch's functional Learner and Meta) ------------------

MAML_CONFIG = [('linear', [12, 1]), ('relu', [True]), ('linear', [12, 12]), ('relu', [True]), ('linear', [1, 12])]


def autograd_grad(th, loss_fn, params, create_graph=False):
    """The one line the port changes: torch's `torch.autograd.grad(loss, params, create_graph=...)` of a loss
    computed from `params` is Avalon's nested `av.grad(loss_fn)(params)`, a value the enclosing gradient
    differentiates through; without create_graph, torch's gradients are constants: detached. (The gradient
    of a list, a structure holding tensors, is a dict keyed by position, as of a model by name.)"""
    params = list(params)
    if th is torch:
        return torch.autograd.grad(loss_fn(params), params, create_graph=create_graph)
    grads = av.grad(loss_fn)(params)
    grads = [grads[str(i)] for i in range(len(params))]
    return grads if create_graph else [g.detach() for g in grads]


def maml(lib, F_, th, update_lr=0.05, update_step=2, second_order=True):
    class Learner(lib.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            # this dict contains all tensors needed to be optimized
            self.vars = lib.ParameterList()
            for i, (name, param) in enumerate(self.config):  # noqa: B007
                if name == 'linear':
                    # [ch_out, ch_in]
                    w = lib.Parameter(th.ones(*param))
                    th.nn.init.kaiming_normal_(w)
                    self.vars.append(w)
                    # [ch_out]
                    self.vars.append(lib.Parameter(th.zeros(param[0])))

        def forward(self, x, vars=None):
            if vars is None:
                vars = self.vars
            idx = 0
            for name, param in self.config:
                if name == 'linear':
                    w, b = vars[idx], vars[idx + 1]
                    x = F_.linear(x, w, b)
                    idx += 2
                elif name == 'relu':
                    x = F_.relu(x, inplace=param[0])
            assert idx == len(vars)
            return x

        def parameters(self):
            """override this function since initial parameters will return with a generator."""
            return self.vars

    class Meta(lib.Module):
        def __init__(self):
            super().__init__()
            self.update_lr = update_lr
            self.update_step = update_step
            self.net = Learner(MAML_CONFIG)

        def forward(self, x_spt, y_spt, x_qry, y_qry):
            task_num = x_spt.size(0)
            losses_q = [0 for _ in range(self.update_step + 1)]  # losses_q[i] is the loss on step i
            for i in range(task_num):
                # 1. run the i-th task and compute loss for k=0
                grad = autograd_grad(th, lambda ws: F_.mse_loss(self.net(x_spt[i], ws), y_spt[i]),  # noqa: B023
                                     self.net.parameters(), create_graph=second_order)
                fast_weights = list(map(lambda p: p[1] - self.update_lr * p[0], zip(grad, self.net.parameters())))
                # this is the loss before the first update
                with th.no_grad():
                    losses_q[0] += F_.mse_loss(self.net(x_qry[i], self.net.parameters()), y_qry[i])
                losses_q[1] += F_.mse_loss(self.net(x_qry[i], fast_weights), y_qry[i])
                for k in range(1, self.update_step):
                    # 1. run the i-th task and compute loss for k=1~K-1
                    grad = autograd_grad(th, lambda ws: F_.mse_loss(self.net(x_spt[i], ws), y_spt[i]), fast_weights,  # noqa: B023
                                         create_graph=second_order)
                    # 3. theta_pi = theta_pi - train_lr * grad
                    fast_weights = list(map(lambda p: p[1] - self.update_lr * p[0], zip(grad, fast_weights)))
                    logits_q = self.net(x_qry[i], fast_weights)
                    # loss_q will be overwritten and just keep the loss_q on last update step.
                    losses_q[k + 1] += F_.mse_loss(logits_q, y_qry[i])
            # end of all tasks: sum over all losses on query set across all tasks
            return losses_q[-1] / task_num, th.stack([th.as_tensor(v) for v in losses_q]) / task_num

    return Meta()


def sinusoid_tasks(rng, task_num=3, k_spt=5, k_qry=6):
    """A meta-batch: amplitude in [0.1, 5], phase in [0, pi], x in [-5, 5] (Finn et al.'s sinusoids)."""
    amp, phase = rng.uniform(0.1, 5.0, (task_num, 1, 1)), rng.uniform(0, np.pi, (task_num, 1, 1))
    x_spt, x_qry = rng.uniform(-5, 5, (task_num, k_spt, 1)), rng.uniform(-5, 5, (task_num, k_qry, 1))
    return x_spt, amp * np.sin(x_spt - phase), x_qry, amp * np.sin(x_qry - phase)


def maml_loss(model, *tasks):
    return model(*tasks)


@pytest.mark.parametrize("second_order", [True, False])
def test_maml_sinusoid_functional_learner_inner_sgd_by_nested_grad_and_adam_meta_optimizer(second_order):
    ours, theirs = pair(lambda lib, F_, th: maml(lib, F_, th, second_order=second_order))
    assert [k for k, _ in ours.named_parameters()] == [f"net.vars.{i}" for i in range(6)]
    meta_optim = optim.Adam(ours.net.parameters(), lr=0.01)
    tmeta_optim = torch.optim.Adam(theirs.net.parameters(), lr=0.01)

    def step(model, opt, *tasks):  # `self.meta_optim.zero_grad(); loss_q.backward(); self.meta_optim.step()`
        (loss_q, losses_q), grads = av.value_and_grad(maml_loss, has_aux=True)(model, *tasks)
        opt.step(grads)
        return loss_q, losses_q

    rng = np.random.default_rng(0)
    for it, mode in enumerate(("eager", "numpy", "cpu")):
        tasks = sinusoid_tasks(rng)
        tloss, tlosses = theirs(*map(T, tasks))
        tmeta_optim.zero_grad()
        tloss.backward()
        tmeta_optim.step()
        with strict():
            loss, losses = compiled(step, mode)(ours, meta_optim, *map(arr, tasks))
        assert rel(loss, tloss) < 1e-12 and rel(losses, tlosses) < 1e-12, (it, mode)
        same_weights(ours, theirs, 1e-10)


# -- 4. Transformer-XL (kimiyoung/transformer-xl): relative positional attention with a carried memory -------

N_TOKEN, D_MODEL, N_HEAD, D_HEAD, D_INNER, MEM_LEN = 11, 8, 2, 4, 12, 4


def transformer_xl(lib, F_, th, n_layer=2, fill=-float('inf')):
    class PositionalEmbedding(lib.Module):
        def __init__(self, demb):
            super().__init__()
            self.demb = demb
            inv_freq = 1 / (10000 ** (th.arange(0.0, demb, 2.0) / demb))
            self.register_buffer('inv_freq', inv_freq)

        def forward(self, pos_seq, bsz=None):
            sinusoid_inp = th.ger(pos_seq, self.inv_freq)
            pos_emb = th.cat([sinusoid_inp.sin(), sinusoid_inp.cos()], dim=-1)
            if bsz is not None:
                return pos_emb[:, None, :].expand(-1, bsz, -1)
            else:
                return pos_emb[:, None, :]

    class PositionwiseFF(lib.Module):
        def __init__(self, d_model, d_inner, dropout, pre_lnorm=False):
            super().__init__()
            self.CoreNet = lib.Sequential(
                lib.Linear(d_model, d_inner), lib.ReLU(inplace=True),
                lib.Dropout(dropout),
                lib.Linear(d_inner, d_model),
                lib.Dropout(dropout),
            )
            self.layer_norm = lib.LayerNorm(d_model)
            self.pre_lnorm = pre_lnorm

        def forward(self, inp):
            core_out = self.CoreNet(inp)
            return self.layer_norm(inp + core_out)

    class RelPartialLearnableMultiHeadAttn(lib.Module):
        def __init__(self, n_head, d_model, d_head, dropout, dropatt=0, pre_lnorm=False):
            super().__init__()
            self.n_head = n_head
            self.d_model = d_model
            self.d_head = d_head
            self.dropout = dropout
            self.qkv_net = lib.Linear(d_model, 3 * n_head * d_head, bias=False)
            self.drop = lib.Dropout(dropout)
            self.dropatt = lib.Dropout(dropatt)
            self.o_net = lib.Linear(n_head * d_head, d_model, bias=False)
            self.layer_norm = lib.LayerNorm(d_model)
            self.scale = 1 / (d_head ** 0.5)
            self.pre_lnorm = pre_lnorm
            self.r_net = lib.Linear(self.d_model, self.n_head * self.d_head, bias=False)

        def _rel_shift(self, x, zero_triu=False):
            zero_pad = th.zeros((x.size(0), 1, *x.size()[2:]), device=x.device, dtype=x.dtype)
            x_padded = th.cat([zero_pad, x], dim=1)
            x_padded = x_padded.view(x.size(1) + 1, x.size(0), *x.size()[2:])
            x = x_padded[1:].view_as(x)
            if zero_triu:
                ones = th.ones((x.size(0), x.size(1)))
                x = x * th.tril(ones, x.size(1) - x.size(0))[:, :, None, None]
            return x

        def forward(self, w, r, r_w_bias, r_r_bias, attn_mask=None, mems=None):
            qlen, rlen, bsz = w.size(0), r.size(0), w.size(1)
            if mems is not None:
                cat = th.cat([mems, w], 0)
                if self.pre_lnorm:
                    w_heads = self.qkv_net(self.layer_norm(cat))
                else:
                    w_heads = self.qkv_net(cat)
                r_head_k = self.r_net(r)
                w_head_q, w_head_k, w_head_v = th.chunk(w_heads, 3, dim=-1)
                w_head_q = w_head_q[-qlen:]
            else:
                w_heads = self.qkv_net(w)
                r_head_k = self.r_net(r)
                w_head_q, w_head_k, w_head_v = th.chunk(w_heads, 3, dim=-1)
            klen = w_head_k.size(0)
            w_head_q = w_head_q.view(qlen, bsz, self.n_head, self.d_head)  # qlen x bsz x n_head x d_head
            w_head_k = w_head_k.view(klen, bsz, self.n_head, self.d_head)  # qlen x bsz x n_head x d_head
            w_head_v = w_head_v.view(klen, bsz, self.n_head, self.d_head)  # qlen x bsz x n_head x d_head
            r_head_k = r_head_k.view(rlen, self.n_head, self.d_head)  # qlen x n_head x d_head

            #### compute attention score
            rw_head_q = w_head_q + r_w_bias  # qlen x bsz x n_head x d_head
            AC = th.einsum('ibnd,jbnd->ijbn', (rw_head_q, w_head_k))  # qlen x klen x bsz x n_head
            rr_head_q = w_head_q + r_r_bias
            BD = th.einsum('ibnd,jnd->ijbn', (rr_head_q, r_head_k))  # qlen x klen x bsz x n_head
            BD = self._rel_shift(BD)
            # [qlen x klen x bsz x n_head]
            attn_score = AC + BD
            attn_score.mul_(self.scale)

            #### compute attention probability
            if attn_mask is not None and attn_mask.any().item():
                if attn_mask.dim() == 2:
                    attn_score = attn_score.float().masked_fill(attn_mask[None, :, :, None], fill).type_as(attn_score)
                elif attn_mask.dim() == 3:
                    attn_score = attn_score.float().masked_fill(attn_mask[:, :, :, None], fill).type_as(attn_score)
            # [qlen x klen x bsz x n_head]
            attn_prob = F_.softmax(attn_score, dim=1)
            attn_prob = self.dropatt(attn_prob)

            #### compute attention vector
            attn_vec = th.einsum('ijbn,jbnd->ibnd', (attn_prob, w_head_v))
            # [qlen x bsz x n_head x d_head]
            attn_vec = attn_vec.contiguous().view(attn_vec.size(0), attn_vec.size(1), self.n_head * self.d_head)
            ##### linear projection
            attn_out = self.o_net(attn_vec)
            attn_out = self.drop(attn_out)
            if self.pre_lnorm:
                output = w + attn_out
            else:
                output = self.layer_norm(w + attn_out)
            return output

    class RelPartialLearnableDecoderLayer(lib.Module):
        def __init__(self, n_head, d_model, d_head, d_inner, dropout, **kwargs):
            super().__init__()
            self.dec_attn = RelPartialLearnableMultiHeadAttn(n_head, d_model, d_head, dropout, **kwargs)
            self.pos_ff = PositionwiseFF(d_model, d_inner, dropout, pre_lnorm=kwargs.get('pre_lnorm'))

        def forward(self, dec_inp, r, r_w_bias, r_r_bias, dec_attn_mask=None, mems=None):
            output = self.dec_attn(dec_inp, r, r_w_bias, r_r_bias, attn_mask=dec_attn_mask, mems=mems)
            return self.pos_ff(output)

    class MemTransformerLM(lib.Module):
        def __init__(self, dropout=0.0, mem_len=MEM_LEN, ext_len=0, clamp_len=-1):
            super().__init__()
            self.word_emb = lib.Embedding(N_TOKEN, D_MODEL)
            self.drop = lib.Dropout(dropout)
            self.n_layer, self.mem_len, self.ext_len, self.clamp_len = n_layer, mem_len, ext_len, clamp_len
            self.layers = lib.ModuleList([RelPartialLearnableDecoderLayer(N_HEAD, D_MODEL, D_HEAD, D_INNER, dropout)
                                          for _ in range(n_layer)])
            self.pos_emb = PositionalEmbedding(D_MODEL)
            self.r_w_bias = lib.Parameter(th.Tensor(N_HEAD, D_HEAD))
            self.r_r_bias = lib.Parameter(th.Tensor(N_HEAD, D_HEAD))
            lib.init.normal_(self.r_w_bias, 0.0, 0.02)  # train.py's weights_init: init_std 0.02
            lib.init.normal_(self.r_r_bias, 0.0, 0.02)
            self.out = lib.Linear(D_MODEL, N_TOKEN)  # (the repository's ProjectedAdaptiveLogSoftmax, plainly)

        def init_mems(self):
            if self.mem_len > 0:
                mems = []
                param = next(self.parameters())
                for i in range(self.n_layer + 1):  # noqa: B007
                    empty = th.empty(0, dtype=param.dtype, device=param.device)
                    mems.append(empty)
                return mems
            else:
                return None

        def _update_mems(self, hids, mems, qlen, mlen):
            # does not deal with None
            if mems is None:
                return None
            # mems is not None
            assert len(hids) == len(mems), 'len(hids) != len(mems)'
            # There are `mlen + qlen` steps that can be cached into mems
            with th.no_grad():
                new_mems = []
                end_idx = mlen + max(0, qlen - 0 - self.ext_len)
                beg_idx = max(0, end_idx - self.mem_len)
                for i in range(len(hids)):
                    cat = th.cat([mems[i], hids[i]], dim=0)
                    new_mems.append(cat[beg_idx:end_idx].detach())
            return new_mems

        def _forward(self, dec_inp, mems=None):
            qlen, bsz = dec_inp.size()
            word_emb = self.word_emb(dec_inp)
            mlen = mems[0].size(0) if mems is not None else 0
            klen = mlen + qlen
            dec_attn_mask = th.triu(word_emb.new_ones(qlen, klen), diagonal=1 + mlen).bool()[:, :, None]
            hids = []
            pos_seq = th.arange(klen - 1, -1, -1.0, device=word_emb.device, dtype=word_emb.dtype)
            if self.clamp_len > 0:
                pos_seq.clamp_(max=self.clamp_len)
            pos_emb = self.pos_emb(pos_seq)
            core_out = self.drop(word_emb)
            pos_emb = self.drop(pos_emb)
            hids.append(core_out)
            for i, layer in enumerate(self.layers):
                mems_i = None if mems is None else mems[i]
                core_out = layer(core_out, pos_emb, self.r_w_bias, self.r_r_bias, dec_attn_mask=dec_attn_mask,
                                 mems=mems_i)
                hids.append(core_out)
            core_out = self.drop(core_out)
            new_mems = self._update_mems(hids, mems, mlen, qlen)  # (sic: the repository passes mlen as qlen)
            return core_out, new_mems

        def forward(self, data, target, *mems):
            if not mems:
                mems = self.init_mems()
            tgt_len = target.size(0)
            hidden, new_mems = self._forward(data, mems=mems)
            pred_hid = hidden[-tgt_len:]
            loss = F_.cross_entropy(self.out(pred_hid.view(-1, pred_hid.size(-1))), target.reshape(-1),
                                    reduction='none')
            loss = loss.view(tgt_len, -1)
            if new_mems is None:
                return [loss]
            else:
                return [loss] + new_mems

    return MemTransformerLM()


def txl_loss(model, data, target, mems):
    ret = model(data, target, *mems)
    loss, mems = ret[0], ret[1:]
    return loss.float().mean().type_as(loss), mems


@pytest.mark.parametrize("fill", [-float('inf'), -1e30])
def test_transformer_xl_relative_attention_rel_shift_causal_mask_and_memory_carried_across_segments(fill):
    ours, theirs = pair(lambda lib, F_, th: transformer_xl(lib, F_, th, fill=fill))
    opt, topt = optim.Adam(ours.parameters(), lr=2e-3), torch.optim.Adam(theirs.parameters(), lr=2e-3)
    data = np.random.default_rng(1).integers(0, N_TOKEN, (13, 2))  # (len, bsz), as the repository's iterators

    def step(model, opt, data, target, mems):
        (loss, mems), grads = av.value_and_grad(txl_loss, has_aux=True)(model, data, target, mems)
        norm = nn.utils.clip_grad_norm_(grads, 0.25)
        opt.step(grads)
        return loss, mems, norm

    mems, tmems = (), ()
    modes = ("eager", "numpy", "numpy", "cpu") if fill == -float('inf') else ("eager", "numpy", "numpy")
    for it, (i, mode) in enumerate(zip(range(0, 12, 3), modes)):  # memories of 0, 3, then MEM_LEN steps
        x, y = data[i:i + 3], data[i + 1:i + 4]
        topt.zero_grad()
        tl, tmems = txl_loss(theirs, T(x), T(y), tmems)
        tl.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.25)
        topt.step()
        with strict():
            loss, mems, norm = compiled(step, mode)(ours, opt, av.tensor(x), av.tensor(y), tuple(mems))
        # the repository rounds to float32 on purpose (`attn_score.float()`, `loss.float().mean()`), gradients
        # too: a last-bit difference upstream (a float32 sum's order) can flip such a rounding, ~6e-8
        assert rel(loss, tl) < 1e-6 and rel(norm, tnorm) < 1e-6, (it, mode)
        assert len(mems) == len(tmems) == 3 and all(rel(m, t) < 1e-6 for m, t in zip(mems, tmems))
        same_weights(ours, theirs, 1e-6)
    assert tuple(mems[0].shape) == tuple(tmems[0].shape) == (MEM_LEN, 2, D_MODEL)


def test_transformer_xl_in_half_precision_masks_with_minus_inf_and_minus_1e30():
    """The half model: the scores masked in float32 then `type_as` half, where -1e30 becomes -inf."""
    rng = np.random.default_rng(2)
    data = rng.integers(0, N_TOKEN, (7, 2))
    for fill in (-float('inf'), -1e30):
        ours, theirs = pair(lambda lib, F_, th: transformer_xl(lib, F_, th, fill=fill), dtype=torch.float32)  # noqa: B023
        ours, theirs = ours.half(), theirs.half()
        mems, tmems = (), ()
        with torch.no_grad(), av.no_grad(), strict():
            for i in (0, 3):
                x, y = data[i:i + 3], data[i + 1:i + 4]
                tl, tmems = txl_loss(theirs, T(x), T(y), tmems)
                loss, mems = txl_loss(ours, av.tensor(x), av.tensor(y), mems)
                assert loss.dtype == av.float16 and all(m.dtype == av.float16 for m in mems)
                assert rel(loss, tl) < 1e-2 and all(rel(m, t) < 2e-2 for m, t in zip(mems, tmems)), fill


# -- regressions: what the programs above found --------------------------------------------------------------

@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_grid_gradient_at_pixel_centers_takes_torchs_side(padding_mode, align_corners):
    """The spatial transformer tutorial starts at the identity theta, whose grid hits pixel centers, where the
    bilinear weights' gradient is one-sided and the last bit of the pixel coordinate picks the side: torch
    rounds `(c + 1) * size / 2 - 0.5` once (an FMA), Avalon rounded twice (a quarter of the localization's
    first gradient differed); and at the border pixels torch's clipping passes no gradient, clamp's did."""
    rng = np.random.default_rng(40)
    for w in (5, 20, 37):
        theta = np.array([[[1.0, 0, 0], [0, 1, 0]]])
        grid = TF.affine_grid(T(theta), [1, 1, 3, w], align_corners=align_corners).numpy()
        x = rng.standard_normal((1, 2, 3, w))
        tg = T(grid).requires_grad_()
        want = TF.grid_sample(T(x), tg, padding_mode=padding_mode, align_corners=align_corners)
        want.pow(2).sum().backward()
        got = av.grad(lambda g, x: F.grid_sample(x, g, padding_mode=padding_mode, align_corners=align_corners)
                      .pow(2).sum())(arr(grid), arr(x))
        assert rel(got, tg.grad) < 1e-12, w
        assert rel(F.grid_sample(arr(x), arr(grid), padding_mode=padding_mode, align_corners=align_corners),
                   want) < 1e-15


@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_cat_skips_empty_one_dimensional_tensors_as_torch(mode):
    """Transformer-XL's init_mems starts every layer's memory as `torch.empty(0)` and concatenates it with
    (mlen, bsz, d) hidden states: torch skips a (0,)-shaped tensor in cat (it still takes part in the dtype
    promotion); Avalon refused the differing number of dimensions."""
    def f(th, h, e):
        return th.cat([e, h], dim=0), th.cat([h, e, h], dim=-1), th.cat([e, e]), th.cat([e, h.float()], 1)

    h = np.random.default_rng(41).standard_normal((2, 3, 4))
    want = f(torch, T(h), torch.empty(0, dtype=torch.float64))
    with strict():
        got = compiled(lambda h, e: f(av, h, e), mode)(arr(h), av.empty(0, dtype=av.float64))
    for g, w in zip(got, want):
        assert g.dtype == getattr(av, str(w.dtype).split(".")[1]) and rel(g, w) == 0
    e = av.empty(0, dtype=av.float64)
    assert av.grad(lambda e, h: (av.cat([e, h], 0) ** 2).sum(), argnums=(0, 1))(e, arr(h))[0].shape == (0,)


def test_transformer_xl_mask_any_item_on_a_constant_mask_inside_a_trace():
    """Transformer-XL's `attn_mask.any().item()` on `torch.triu(word_emb.new_ones(qlen, klen), 1 + mlen)`: a
    traced value that depends on no input is computed while tracing, so Python may branch on it."""
    def masked_scores(scores):
        qlen, klen = scores.shape[0], scores.shape[1]
        attn_mask = av.triu(scores.new_ones(qlen, klen), diagonal=1).bool()
        if attn_mask is not None and attn_mask.any().item():
            scores = scores.masked_fill(attn_mask, -float('inf'))
        return F.softmax(scores, dim=1)

    s = np.random.default_rng(42).standard_normal((3, 3))
    want = TF.softmax(T(s).masked_fill(torch.triu(torch.ones(3, 3), diagonal=1).bool(), -float('inf')), dim=1)
    assert rel(masked_scores(arr(s)), want) < 1e-15  # eagerly it ports
    f = av.compile(masked_scores)
    with strict():
        for _ in range(2):
            assert rel(f(arr(s)), want) < 1e-15
    assert f.cache_info().misses == 1
