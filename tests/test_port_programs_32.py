"""Round 9r of port QA: programs written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random float32 data and compared with torch after every step (losses,
gradients, parameters and buffers), the first step eagerly and the rest compiled.

Programs: Blealtan/efficient-kan (KANLinear's B-spline bases by the recursive Cox-de Boor formula over a `grid`
buffer made by `arange(...).expand(...).contiguous()`, curve2coeff's `torch.linalg.lstsq(A, B).solution` both in
reset_parameters (under no_grad, into `spline_weight.data.copy_`) and in update_grid, whose `torch.sort`, integer
`torch.linspace` index, `torch.concatenate` and `self.grid.copy_(grid.T)` run inside a compiled step, the
`scaled_spline_weight` property, the L1-and-entropy regularization_loss; the mnist example's AdamW and ExponentialLR);
jayroxis/PINNs' Burgers identification (after maziarraissi/PINNs: a DNN from an OrderedDict of layers, lambda_1 and
lambda_2 made by `torch.tensor([0.0], requires_grad=True)`, wrapped in nn.Parameter and `register_parameter`ed on the
DNN, u_t, u_x and u_xx by `torch.autograd.grad(..., create_graph=True)`; Adam steps, then strong-Wolfe L-BFGS over a
closure); facebookresearch/swav (the multi-crop forward's `torch.unique_consecutive(torch.tensor([inp.shape[-1] ...]),
return_counts=True)` and cumsum split points iterated as tensors to slice the list of crops, the projection head with
BatchNorm1d and the bias-free prototypes, train()'s prototype normalization by `copy_` under no_grad, the queue
shifted and filled in place and concatenated into distributed_sinkhorn's in-place Sinkhorn-Knopp iterations, the
swapped-prediction loss over `np.delete(np.arange(...), crop_id)`, the numpy warmup-plus-cosine lr schedule written
into param_groups, and the prototypes' gradients cancelled for the first iterations); Jamie-Stirling/RetNet (
SimpleRetention's decay mask `gamma ** (n - m) * (n >= m).float()` with `D[D != D] = 0`, torchscale's xPos by
`rotate_every_two`, `duplicate_interleave` and a downscaled key, MultiScaleRetention's gammas from
`linspace(...).tolist()`, swish gate and GroupNorm, RetNet's layers; trained as a language model with AdamW and
clip_grad_norm_, and the parallel form checked equal to the recurrent one and to the chunkwise one, whose cross-chunk
decay is written element by element into `torch.zeros(batch, chunk_size, 1)`, on both sides); junyanz/
pytorch-CycleGAN-and-pix2pix (ResnetGenerator with reflection pads, InstanceNorm2d from a functools.partial and
ConvTranspose2d with output_padding, NLayerDiscriminator, init_weights by `net.apply`, GANLoss's label buffers
`expand_as` the prediction, ImagePool's history drawn by Python's `random`, the identity and cycle losses, two Adams
over `itertools.chain` of parameters and get_scheduler's linear-decay LambdaLR).

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`); the PINN's three
`autograd.grad(u, x, grad_outputs=ones_like(u), create_graph=True)` are `av.grad` of `u.sum()` with respect to the
coordinate (each u_i depends on its own x_i and t_i), nested for u_xx; the L-BFGS closure returns `(loss, grads)`;
SwAV's `p.grad = None` for the prototypes is dropping their entries from the gradient dict; CycleGAN's generator step
returns the fakes its forward made (README: a forward torch shares between two backward passes is taken once), the
pools run between the two compiled steps, and each step's gradient is taken with respect to the pair of networks, so
that the optimizers built from `itertools.chain` (which know their tensors by position) match them. Not Avalon:
SwAV's LARC wrapper (apex) and DDP are dropped and all_reduce is one process's identity; sizes are small.

Deliberate differences met: SwAV's `if use_the_queue or not torch.all(queue[i, -1, :] == 0)` branches on the values
of the queue, a tensor passed to the step, which Avalon traces (even for an eager `av.value_and_grad`): the test,
which only asks whether the queue has filled, is made by the caller before the step (`queue_in_use`), for both.
Not Avalon: torch's CPU `lstsq` (gelsy) reads a column-pivoting array it never clears (pytorch#187411), so on a
rank-deficient system, such as B-spline bases with an interval no sample falls in (efficient-kan's update_grid on a
small batch), it can return rank 0 and a zero solution where Avalon gives the minimum-norm least-squares one; the
test's batches cover the grid. Conditioning, not Avalon: a bias followed by a normalization without affine
parameters (SwAV's BatchNorm1d, CycleGAN's InstanceNorm2d) has a zero gradient in exact arithmetic, so its gradient
and the steps Adam makes of it are roundoff on both sides; these are compared within such steps. efficient-kan uses
its example's lr (1e-3), where spline weights with near-zero gradients stay within the tolerance under AdamW.

Bugs found (regressions at the end): integer powers were float32 (met checking RetNet's `gamma ** (n - m)` on
integer tensors): `pow` cast any integer result to float32, so `3 ** torch.arange(4)`, `torch.arange(4) ** 3` and
int ** int tensors came out float where torch's are int64 (and `int_tensor ** 2.0` was int64, `bool_tensor ** 2` bool, by the x * x shortcut taken before
promotion); avalon/ops/core.py's pow now keeps torch's result dtype (the `pow` primitive already computed integer
powers exactly on every backend) and raises torch's error for a negative Python exponent. Integer `linspace` floored
values computed from the untruncated ends, where torch truncates the ends and then each value toward zero
(`linspace(-3, 5, 6, dtype=int64)` gave [-3, -2, ...] for torch's [-3, -1, ...]), which moves efficient-kan's
quantile indices; float results were also an ulp off torch's in most cases. avalon/ops/creation.py's linspace now
follows torch's CPU kernel: the ends truncated for integer dtypes, the step in float32 for float32 (per-operation
half precision for float16 and bfloat16), and each value rounded once as the kernel's fused multiply-add, emulated
by exact error terms in float64 (bitwise equal to torch in the regression's cases). Met while checking the ports'
integer idioms against torch: `torch.square` of a bool tensor stayed bool (x * x) where torch's is int64
(avalon/ops/shaping.py: square is `x ** 2`); `torch.logical_not` of an integer or float tensor was an error (the
primitive takes booleans; avalon/ops/core.py compares a number with zero first, nan counting as true); `torch.dot` of
int32, int8 or uint8 vectors was int64 where torch keeps the operands' dtype (avalon/ops/matrices.py); `any`/`all`
of a uint8 tensor were bool where torch's are uint8 (avalon/ops/reductions.py); `arange` with float arguments and an
integer dtype did not truncate start, end and step first (`arange(0.5, 5.7, 1.5, dtype=torch.int64)` was [0, 2, 3,
5] for torch's [0, 1, 2, 3, 4]), and a float arange rounded twice in float32 where torch rounds `start + step * i`
once from double (avalon/ops/creation.py).
"""
from __future__ import annotations

import functools
import itertools
import math
import random
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, lm_steps, rel
from test_port_programs_30 import randn, same_grads, same_weights_but
from test_port_programs_more import compiled, pair, same_weights, strict

import avalon as av
from avalon import nn
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache", "torch_on_one_thread")

F32 = torch.float32


# -- 1. efficient-kan (Blealtan/efficient-kan src/efficient_kan/kan.py; examples/mnist.py's AdamW + ExponentialLR) ---

def efficient_kan(lib, F_, th, layers_hidden=(6, 5, 3), grid_size=5, spline_order=3):
    torch = th
    F = F_  # noqa: N806

    class KANLinear(lib.Module):
        def __init__(
            self,
            in_features,
            out_features,
            grid_size=5,
            spline_order=3,
            scale_noise=0.1,
            scale_base=1.0,
            scale_spline=1.0,
            enable_standalone_scale_spline=True,
            base_activation=lib.SiLU,
            grid_eps=0.02,
            grid_range=[-1, 1],  # noqa: B006
        ):
            super(KANLinear, self).__init__()  # noqa: UP008
            self.in_features = in_features
            self.out_features = out_features
            self.grid_size = grid_size
            self.spline_order = spline_order

            h = (grid_range[1] - grid_range[0]) / grid_size
            grid = (
                (
                    torch.arange(-spline_order, grid_size + spline_order + 1) * h
                    + grid_range[0]
                )
                .expand(in_features, -1)
                .contiguous()
            )
            self.register_buffer("grid", grid)

            self.base_weight = lib.Parameter(torch.Tensor(out_features, in_features))
            self.spline_weight = lib.Parameter(
                torch.Tensor(out_features, in_features, grid_size + spline_order)
            )
            if enable_standalone_scale_spline:
                self.spline_scaler = lib.Parameter(
                    torch.Tensor(out_features, in_features)
                )

            self.scale_noise = scale_noise
            self.scale_base = scale_base
            self.scale_spline = scale_spline
            self.enable_standalone_scale_spline = enable_standalone_scale_spline
            self.base_activation = base_activation()
            self.grid_eps = grid_eps

            self.reset_parameters()

        def reset_parameters(self):
            torch.nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5) * self.scale_base)
            with torch.no_grad():
                noise = (
                    (
                        torch.rand(self.grid_size + 1, self.in_features, self.out_features)
                        - 1 / 2
                    )
                    * self.scale_noise
                    / self.grid_size
                )
                self.spline_weight.data.copy_(
                    (self.scale_spline if not self.enable_standalone_scale_spline else 1.0)
                    * self.curve2coeff(
                        self.grid.T[self.spline_order : -self.spline_order],
                        noise,
                    )
                )
                if self.enable_standalone_scale_spline:
                    # torch.nn.init.constant_(self.spline_scaler, self.scale_spline)
                    torch.nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5) * self.scale_spline)

        def b_splines(self, x):
            """
            Compute the B-spline bases for the given input tensor.

            Args:
                x (torch.Tensor): Input tensor of shape (batch_size, in_features).

            Returns:
                torch.Tensor: B-spline bases tensor of shape (batch_size, in_features, grid_size + spline_order).
            """
            assert x.dim() == 2 and x.size(1) == self.in_features

            grid = (
                self.grid
            )  # (in_features, grid_size + 2 * spline_order + 1)
            x = x.unsqueeze(-1)
            bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
            for k in range(1, self.spline_order + 1):
                bases = (
                    (x - grid[:, : -(k + 1)])
                    / (grid[:, k:-1] - grid[:, : -(k + 1)])
                    * bases[:, :, :-1]
                ) + (
                    (grid[:, k + 1 :] - x)
                    / (grid[:, k + 1 :] - grid[:, 1:(-k)])
                    * bases[:, :, 1:]
                )

            assert bases.size() == (
                x.size(0),
                self.in_features,
                self.grid_size + self.spline_order,
            )
            return bases.contiguous()

        def curve2coeff(self, x, y):
            """
            Compute the coefficients of the curve that interpolates the given points.
            """
            assert x.dim() == 2 and x.size(1) == self.in_features
            assert y.size() == (x.size(0), self.in_features, self.out_features)

            A = self.b_splines(x).transpose(  # noqa: N806
                0, 1
            )  # (in_features, batch_size, grid_size + spline_order)
            B = y.transpose(0, 1)  # (in_features, batch_size, out_features)  # noqa: N806
            solution = torch.linalg.lstsq(
                A, B
            ).solution  # (in_features, grid_size + spline_order, out_features)
            result = solution.permute(
                2, 0, 1
            )  # (out_features, in_features, grid_size + spline_order)

            assert result.size() == (
                self.out_features,
                self.in_features,
                self.grid_size + self.spline_order,
            )
            return result.contiguous()

        @property
        def scaled_spline_weight(self):
            return self.spline_weight * (
                self.spline_scaler.unsqueeze(-1)
                if self.enable_standalone_scale_spline
                else 1.0
            )

        def forward(self, x):
            assert x.size(-1) == self.in_features
            original_shape = x.shape
            x = x.reshape(-1, self.in_features)

            base_output = F.linear(self.base_activation(x), self.base_weight)
            spline_output = F.linear(
                self.b_splines(x).view(x.size(0), -1),
                self.scaled_spline_weight.view(self.out_features, -1),
            )
            output = base_output + spline_output

            output = output.reshape(*original_shape[:-1], self.out_features)
            return output

        @torch.no_grad()
        def update_grid(self, x, margin=0.01):
            assert x.dim() == 2 and x.size(1) == self.in_features
            batch = x.size(0)

            splines = self.b_splines(x)  # (batch, in, coeff)
            splines = splines.permute(1, 0, 2)  # (in, batch, coeff)
            orig_coeff = self.scaled_spline_weight  # (out, in, coeff)
            orig_coeff = orig_coeff.permute(1, 2, 0)  # (in, coeff, out)
            unreduced_spline_output = torch.bmm(splines, orig_coeff)  # (in, batch, out)
            unreduced_spline_output = unreduced_spline_output.permute(
                1, 0, 2
            )  # (batch, in, out)

            # sort each channel individually to collect data distribution
            x_sorted = torch.sort(x, dim=0)[0]
            grid_adaptive = x_sorted[
                torch.linspace(
                    0, batch - 1, self.grid_size + 1, dtype=torch.int64, device=x.device
                )
            ]

            uniform_step = (x_sorted[-1] - x_sorted[0] + 2 * margin) / self.grid_size
            grid_uniform = (
                torch.arange(
                    self.grid_size + 1, dtype=torch.float32, device=x.device
                ).unsqueeze(1)
                * uniform_step
                + x_sorted[0]
                - margin
            )

            grid = self.grid_eps * grid_uniform + (1 - self.grid_eps) * grid_adaptive
            grid = torch.concatenate(
                [
                    grid[:1]
                    - uniform_step
                    * torch.arange(self.spline_order, 0, -1, device=x.device).unsqueeze(1),
                    grid,
                    grid[-1:]
                    + uniform_step
                    * torch.arange(1, self.spline_order + 1, device=x.device).unsqueeze(1),
                ],
                dim=0,
            )

            self.grid.copy_(grid.T)
            self.spline_weight.data.copy_(self.curve2coeff(x, unreduced_spline_output))

        def regularization_loss(self, regularize_activation=1.0, regularize_entropy=1.0):
            """
            Compute the regularization loss (a dumb simulation of the paper's L1 on the activations).
            """
            l1_fake = self.spline_weight.abs().mean(-1)
            regularization_loss_activation = l1_fake.sum()
            p = l1_fake / regularization_loss_activation
            regularization_loss_entropy = -torch.sum(p * p.log())
            return (
                regularize_activation * regularization_loss_activation
                + regularize_entropy * regularization_loss_entropy
            )

    class KAN(lib.Module):
        def __init__(
            self,
            layers_hidden,
            grid_size=5,
            spline_order=3,
            scale_noise=0.1,
            scale_base=1.0,
            scale_spline=1.0,
            base_activation=lib.SiLU,
            grid_eps=0.02,
            grid_range=[-1, 1],  # noqa: B006
        ):
            super(KAN, self).__init__()  # noqa: UP008
            self.grid_size = grid_size
            self.spline_order = spline_order

            self.layers = lib.ModuleList()
            for in_features, out_features in zip(layers_hidden, layers_hidden[1:]):
                self.layers.append(
                    KANLinear(
                        in_features,
                        out_features,
                        grid_size=grid_size,
                        spline_order=spline_order,
                        scale_noise=scale_noise,
                        scale_base=scale_base,
                        scale_spline=scale_spline,
                        base_activation=base_activation,
                        grid_eps=grid_eps,
                        grid_range=grid_range,
                    )
                )

        def forward(self, x, update_grid=False):
            for layer in self.layers:
                if update_grid:
                    layer.update_grid(x)
                x = layer(x)
            return x

        def regularization_loss(self, regularize_activation=1.0, regularize_entropy=1.0):
            return sum(
                layer.regularization_loss(regularize_activation, regularize_entropy)
                for layer in self.layers
            )

    return KAN(list(layers_hidden), grid_size=grid_size, spline_order=spline_order)


def test_efficient_kan_bsplines_lstsq_init_grid_update_regularization_adamw_and_exponential_lr():
    model, tmodel = pair(efficient_kan, dtype=F32)
    optimizer = av.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    toptimizer = torch.optim.AdamW(tmodel.parameters(), lr=1e-3, weight_decay=1e-4)
    scheduler = av.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.8)
    tscheduler = torch.optim.lr_scheduler.ExponentialLR(toptimizer, gamma=0.8)
    criterion, tcriterion = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()

    def loss_fn(model, x, y, update_grid):
        output = model(x, update_grid=update_grid)
        return criterion(output, y) + 1e-3 * model.regularization_loss(), output

    def train_step(model, optimizer, x, y, update_grid):
        (loss, output), grads = av.value_and_grad(loss_fn, has_aux=True)(model, x, y, update_grid)
        optimizer.step(grads)
        return loss, output, grads
    run = compiled(train_step, "numpy")

    rng = np.random.default_rng(0)
    for it in range(4):
        x, y = rng.uniform(-1, 1, (16, 6)).astype(np.float32), rng.integers(0, 3, 16)
        update_grid = it in (0, 2)
        toutput = tmodel(T(x), update_grid=update_grid)
        tloss = tcriterion(toutput, torch.tensor(y)) + 1e-3 * tmodel.regularization_loss()
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        tscheduler.step()
        with strict():
            loss, output, grads = (run if it else train_step)(model, optimizer, av.tensor(x), av.tensor(y),
                                                              update_grid)
        scheduler.step()
        assert rel(loss, tloss) < 1e-5, it
        assert rel(output, toutput) < 1e-5, it
        same_grads(grads, tmodel, 1e-4)
        same_weights(model, tmodel, 1e-4)


# -- 2. Physics-informed net for Burgers' equation (jayroxis/PINNs "Burgers Identification (PyTorch)", after
#       maziarraissi/PINNs: lambda_1, lambda_2 registered on the DNN, u_t, u_x, u_xx by create_graph gradients,
#       Adam then strong-Wolfe L-BFGS over one closure) ---------------------------------------------------------------

def burgers_pinn(lib, F_, th, X, u, layers):
    torch = th
    device = "cpu"

    # the deep neural network
    class DNN(lib.Module):
        def __init__(self, layers):
            super(DNN, self).__init__()  # noqa: UP008

            # parameters
            self.depth = len(layers) - 1

            # set up layer order dict
            self.activation = lib.Tanh

            layer_list = list()
            for i in range(self.depth - 1):
                layer_list.append(
                    ('layer_%d' % i, lib.Linear(layers[i], layers[i + 1]))  # noqa: UP031
                )
                layer_list.append(('activation_%d' % i, self.activation()))  # noqa: UP031

            layer_list.append(
                ('layer_%d' % (self.depth - 1), lib.Linear(layers[-2], layers[-1]))  # noqa: UP031
            )
            layerDict = OrderedDict(layer_list)  # noqa: N806

            # deploy layers
            self.layers = lib.Sequential(layerDict)

        def forward(self, x):
            out = self.layers(x)
            return out

    # the physics-guided neural network
    class PhysicsInformedNN():  # noqa: UP039
        def __init__(self, X, u, layers):  # noqa: N803

            # data
            self.x = torch.tensor(X[:, 0:1], requires_grad=True).float().to(device)
            self.t = torch.tensor(X[:, 1:2], requires_grad=True).float().to(device)
            self.u = torch.tensor(u).float().to(device)

            # settings
            self.lambda_1 = torch.tensor([0.0], requires_grad=True).to(device)
            self.lambda_2 = torch.tensor([-6.0], requires_grad=True).to(device)

            self.lambda_1 = lib.Parameter(self.lambda_1)
            self.lambda_2 = lib.Parameter(self.lambda_2)

            # deep neural networks
            self.dnn = DNN(layers).to(device)
            self.dnn.register_parameter('lambda_1', self.lambda_1)
            self.dnn.register_parameter('lambda_2', self.lambda_2)

            # optimizers: using the same settings
            self.optimizer = torch.optim.LBFGS(
                self.dnn.parameters(),
                lr=1.0,
                max_iter=4,  # 50000 in the original
                max_eval=5,
                history_size=50,
                tolerance_grad=1e-5,
                tolerance_change=1.0 * np.finfo(float).eps,
                line_search_fn="strong_wolfe"       # can be "strong_wolfe"
            )

            self.optimizer_Adam = torch.optim.Adam(self.dnn.parameters())
            self.iter = 0

        def net_u(self, x, t):
            u = self.dnn(torch.cat([x, t], dim=1))
            return u

        def net_f(self, x, t):
            """ The pytorch autograd version of calculating residual """
            lambda_1 = self.lambda_1
            lambda_2 = torch.exp(self.lambda_2)
            u = self.net_u(x, t)

            if th is not av:
                u_t = torch.autograd.grad(
                    u, t,
                    grad_outputs=torch.ones_like(u),
                    retain_graph=True,
                    create_graph=True
                )[0]
                u_x = torch.autograd.grad(
                    u, x,
                    grad_outputs=torch.ones_like(u),
                    retain_graph=True,
                    create_graph=True
                )[0]
                u_xx = torch.autograd.grad(
                    u_x, x,
                    grad_outputs=torch.ones_like(u_x),
                    retain_graph=True,
                    create_graph=True
                )[0]
            else:  # the port: the gradient of the sum (u_i depends on x_i, t_i alone), nested for u_xx
                def u_x_of(x):
                    return av.grad(lambda x: self.net_u(x, t).sum())(x)
                u_t = av.grad(lambda t: self.net_u(x, t).sum())(t)
                u_x = u_x_of(x)
                u_xx = av.grad(lambda x: u_x_of(x).sum())(x)

            f = u_t + lambda_1 * u * u_x - lambda_2 * u_xx
            return f

        def loss_func(self):  # the L-BFGS closure (torch's; Avalon's is loss_fn below)
            u_pred = self.net_u(self.x, self.t)
            f_pred = self.net_f(self.x, self.t)
            loss = torch.mean((self.u - u_pred) ** 2) + torch.mean(f_pred ** 2)
            self.optimizer.zero_grad()
            loss.backward()

            self.iter += 1
            return loss

    return PhysicsInformedNN(X, u, layers)


def test_burgers_pinn_nested_second_derivatives_registered_pde_parameters_adam_then_strong_wolfe_lbfgs():
    rng = np.random.default_rng(1)
    N_u = 24  # noqa: N806
    X_u_train = np.stack([rng.uniform(-1, 1, N_u), rng.uniform(0, 1, N_u)], 1)  # noqa: N806 (float64, as the .mat)
    u_train = -np.sin(np.pi * X_u_train[:, 0:1]) * np.exp(-X_u_train[:, 1:2])
    layers = [2, 12, 12, 1]
    torch.manual_seed(0)
    tmodel = burgers_pinn(torch.nn, TF, torch, X_u_train, u_train, layers)
    model = burgers_pinn(nn, F, av, X_u_train, u_train, layers)
    av.nn.load_state_dict(model.dnn, tmodel.dnn.state_dict())
    assert model.lambda_1 is model.dnn.lambda_1 and model.x.dtype == av.float32
    assert [k for k, _ in model.dnn.named_parameters()] == [k for k, _ in tmodel.dnn.named_parameters()]

    def loss_fn(dnn, x, t, u):
        u_pred = model.net_u(x, t)
        f_pred = model.net_f(x, t)
        return av.mean((u - u_pred) ** 2) + av.mean(f_pred ** 2)

    def adam_step(dnn, optimizer, x, t, u):
        loss, grads = av.value_and_grad(loss_fn)(dnn, x, t, u)
        optimizer.step(grads)
        return loss, grads
    run = compiled(adam_step, "numpy")
    vg = compiled(av.value_and_grad(loss_fn), "numpy")

    def check(tol):
        sd = tmodel.dnn.state_dict()
        for k, v in model.dnn.state_dict().items():
            assert rel(v, sd[k]) < tol, k

    # Adam (train(nIter))
    tmodel.dnn.train()
    model.dnn.train()
    for epoch in range(3):
        u_pred = tmodel.net_u(tmodel.x, tmodel.t)
        f_pred = tmodel.net_f(tmodel.x, tmodel.t)
        tloss = torch.mean((tmodel.u - u_pred) ** 2) + torch.mean(f_pred ** 2)
        tmodel.optimizer_Adam.zero_grad()
        tloss.backward()
        tmodel.optimizer_Adam.step()
        with strict():
            loss, grads = (run if epoch else adam_step)(model.dnn, model.optimizer_Adam, model.x, model.t, model.u)
        assert rel(loss, tloss) < 1e-5, epoch
        same_grads(grads, tmodel.dnn, 1e-4)
        check(1e-5)

    # then L-BFGS, as self.optimizer.step(self.loss_func)
    evals = [0]

    def closure():
        evals[0] += 1
        with strict():
            return (vg if evals[0] > 1 else av.value_and_grad(loss_fn))(model.dnn, model.x, model.t, model.u)
    for _ in range(2):
        tl = tmodel.optimizer.step(tmodel.loss_func)
        loss = model.optimizer.step(closure)
        assert rel(loss, tl) < 1e-5
        check(1e-4)
    assert evals[0] == tmodel.iter == model.optimizer.state_lbfgs["func_evals"]
    assert rel(model.lambda_1, tmodel.lambda_1) < 1e-4 and model.lambda_1.item() != 0.0


# -- 3. SwAV (facebookresearch/swav main_swav.py's train() and distributed_sinkhorn, src/resnet50.py's multi-crop
#       forward and head) ---------------------------------------------------------------------------------------------

SWAV_ARGS = dict(nmb_crops=[2, 2], size_crops=[8, 6], crops_for_assign=[0, 1], temperature=0.1, epsilon=0.05,
                 sinkhorn_iterations=3, feat_dim=8, nmb_prototypes=6, queue_length=8, epochs=2, warmup_epochs=1,
                 base_lr=0.6, final_lr=0.0006, start_warmup=0.0, wd=1e-6, freeze_prototypes_niters=2, world_size=1)


def swav_model(lib, F_, th, output_dim=8, hidden_mlp=16, nmb_prototypes=6, normalize=True):
    nn_ = lib
    torch = th

    class ResNet(nn_.Module):  # src/resnet50.py's head and multi-crop forward over a small backbone
        def __init__(self):
            super().__init__()
            self.conv1 = nn_.Conv2d(3, 6, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn1 = nn_.BatchNorm2d(6)
            self.relu = nn_.ReLU(inplace=True)
            self.avgpool = nn_.AdaptiveAvgPool2d((1, 1))
            num_out_filters, widen = 6, 1

            # normalize output features
            self.l2norm = normalize

            # projection head
            if output_dim == 0:
                self.projection_head = None
            elif hidden_mlp == 0:
                self.projection_head = nn_.Linear(num_out_filters * widen, output_dim)
            else:
                self.projection_head = nn_.Sequential(
                    nn_.Linear(num_out_filters * widen, hidden_mlp),
                    nn_.BatchNorm1d(hidden_mlp),
                    nn_.ReLU(inplace=True),
                    nn_.Linear(hidden_mlp, output_dim),
                )

            # prototype layer
            self.prototypes = None
            if isinstance(nmb_prototypes, list):
                self.prototypes = MultiPrototypes(output_dim, nmb_prototypes)  # noqa: F821 (not used here)
            elif nmb_prototypes > 0:
                self.prototypes = nn_.Linear(output_dim, nmb_prototypes, bias=False)

        def forward_backbone(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.avgpool(x)
            x = torch.flatten(x, 1)
            return x

        def forward_head(self, x):
            if self.projection_head is not None:
                x = self.projection_head(x)

            if self.l2norm:
                x = nn_.functional.normalize(x, dim=1, p=2)

            if self.prototypes is not None:
                return x, self.prototypes(x)
            return x

        def forward(self, inputs):
            if not isinstance(inputs, list):
                inputs = [inputs]
            idx_crops = torch.cumsum(torch.unique_consecutive(
                torch.tensor([inp.shape[-1] for inp in inputs]),
                return_counts=True,
            )[1], 0)
            start_idx = 0
            for end_idx in idx_crops:
                _out = self.forward_backbone(torch.cat(inputs[start_idx: end_idx]))  # .cuda(non_blocking=True)
                if start_idx == 0:
                    output = _out
                else:
                    output = torch.cat((output, _out))
                start_idx = end_idx
            return self.forward_head(output)

    return ResNet()


def swav_fns(torch, nn, np, args):  # noqa: N803 (main_swav.py, written against torch, nn and np)
    class dist:  # noqa: N801  one process: all_reduce is the identity
        @staticmethod
        def all_reduce(t):
            return t

    @torch.no_grad()
    def distributed_sinkhorn(out):
        Q = torch.exp(out / args.epsilon).t()  # Q is K-by-B for consistency with notations from our paper  # noqa: N806
        B = Q.shape[1] * args.world_size  # number of samples to assign  # noqa: N806
        K = Q.shape[0]  # how many prototypes  # noqa: N806

        # make the matrix sums to 1
        sum_Q = torch.sum(Q)  # noqa: N806
        dist.all_reduce(sum_Q)
        Q /= sum_Q  # noqa: N806

        for it in range(args.sinkhorn_iterations):  # noqa: B007
            # normalize each row: total weight per prototype must be 1/K
            sum_of_rows = torch.sum(Q, dim=1, keepdim=True)
            dist.all_reduce(sum_of_rows)
            Q /= sum_of_rows  # noqa: N806
            Q /= K  # noqa: N806

            # normalize each column: total weight per sample must be 1/B
            Q /= torch.sum(Q, dim=0, keepdim=True)  # noqa: N806
            Q /= B  # noqa: N806

        Q *= B  # the colomns must sum to 1 so that Q is an assignment  # noqa: N806
        return Q.t()

    def swav_loss(model, inputs, queue, use_the_queue):
        """train()'s body from the prototype normalization to the loss (`use_the_queue` is train()'s local
        flag, carried between iterations by the caller, who reads the queue by queue_in_use first)."""
        # normalize the prototypes
        with torch.no_grad():
            w = model.prototypes.weight.data.clone()  # model.module in the DDP original
            w = nn.functional.normalize(w, dim=1, p=2)
            model.prototypes.weight.copy_(w)

        # ============ multi-res forward passes ... ============
        embedding, output = model(inputs)
        embedding = embedding.detach()
        bs = inputs[0].size(0)

        # ============ swav loss ... ============
        loss = 0
        for i, crop_id in enumerate(args.crops_for_assign):
            with torch.no_grad():
                out = output[bs * crop_id: bs * (crop_id + 1)].detach()

                # time to use the queue
                if queue is not None:
                    if use_the_queue:  # `use_the_queue or not torch.all(queue[i, -1, :] == 0)`: see queue_in_use
                        out = torch.cat((torch.mm(
                            queue[i],
                            model.prototypes.weight.t()
                        ), out))
                    # fill the queue
                    queue[i, bs:] = queue[i, :-bs].clone()
                    queue[i, :bs] = embedding[crop_id * bs: (crop_id + 1) * bs]

                # get assignments
                q = distributed_sinkhorn(out)[-bs:]

            # cluster assignment prediction
            subloss = 0
            for v in np.delete(np.arange(np.sum(args.nmb_crops)), crop_id):
                x = output[bs * v: bs * (v + 1)] / args.temperature
                subloss -= torch.mean(torch.sum(q * nn.functional.log_softmax(x, dim=1), dim=1))
            loss += subloss / (np.sum(args.nmb_crops) - 1)
        loss /= len(args.crops_for_assign)
        return loss, use_the_queue

    def queue_in_use(use_the_queue, queue):
        """The port's one change: train()'s test whether the queue is full reads the queue's values, so it is made
        before the (traced) step; every crop's queue fills at the same rate, so crop 0's last row tells."""
        return use_the_queue or not torch.all(queue[0, -1, :] == 0)

    return queue_in_use, swav_loss


def swav_lr_schedule(args, n_iter):
    warmup_lr_schedule = np.linspace(args.start_warmup, args.base_lr, n_iter * args.warmup_epochs)
    iters = np.arange(n_iter * (args.epochs - args.warmup_epochs))
    cosine_lr_schedule = np.array([args.final_lr + 0.5 * (args.base_lr - args.final_lr) * (1 + math.cos(math.pi * t / (n_iter * (args.epochs - args.warmup_epochs)))) for t in iters])  # noqa: E501
    return np.concatenate((warmup_lr_schedule, cosine_lr_schedule))


def test_swav_multicrop_sinkhorn_with_a_queue_normalized_prototypes_frozen_first_iterations():
    import types
    args = types.SimpleNamespace(**SWAV_ARGS)
    model, tmodel = pair(swav_model, dtype=F32)
    tqueue_in_use, tloss_fn = swav_fns(torch, torch.nn, np, args)
    queue_in_use, loss_fn = swav_fns(av, nn, np, args)
    optimizer = av.optim.SGD(model.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=args.wd)
    toptimizer = torch.optim.SGD(tmodel.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=args.wd)
    n_iter = 3
    lr_schedule = swav_lr_schedule(args, n_iter)
    queue = av.zeros(len(args.crops_for_assign), args.queue_length // args.world_size, args.feat_dim)
    tqueue = torch.zeros(len(args.crops_for_assign), args.queue_length // args.world_size, args.feat_dim)

    def train_step(model, optimizer, inputs, queue, use_the_queue, iteration):
        (loss, use_the_queue), grads = av.value_and_grad(loss_fn, has_aux=True)(model, inputs, queue, use_the_queue)
        # cancel gradients for the prototypes
        if iteration < args.freeze_prototypes_niters:
            grads = {name: g for name, g in grads.items() if "prototypes" not in name}
        optimizer.step(grads)
        return loss, use_the_queue, grads
    run = compiled(train_step, "numpy")

    rng = np.random.default_rng(2)
    model.train()
    tmodel.train()
    for epoch in range(args.epochs):
        use_the_queue = tuse_the_queue = False
        for it in range(n_iter):
            iteration = epoch * n_iter + it
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr_schedule[iteration]
            for param_group in toptimizer.param_groups:
                param_group["lr"] = lr_schedule[iteration]
            inputs = [randn(rng, 4, 3, s, s) for s, n in zip(args.size_crops, args.nmb_crops) for _ in range(n)]
            tuse_the_queue = tqueue_in_use(tuse_the_queue, tqueue)
            use_the_queue = queue_in_use(use_the_queue, queue)
            tloss, tuse_the_queue = tloss_fn(tmodel, [T(x) for x in inputs], tqueue, tuse_the_queue)
            toptimizer.zero_grad()
            tloss.backward()
            if iteration < args.freeze_prototypes_niters:
                for name, p in tmodel.named_parameters():
                    if "prototypes" in name:
                        p.grad = None
            toptimizer.step()
            with strict():
                loss, use_the_queue, grads = (run if iteration else train_step)(
                    model, optimizer, [av.tensor(x) for x in inputs], queue, use_the_queue, iteration)
            assert rel(loss, tloss) < 1e-5, iteration
            assert use_the_queue == tuse_the_queue == (iteration >= 2)
            assert rel(queue, tqueue) < 1e-5, iteration
            # the bias before BatchNorm1d has a zero gradient in exact arithmetic: roundoff on both sides
            same_grads(grads, tmodel, 1e-4, skip=("projection_head.0.bias",))
            assert np.abs(grads["projection_head.0.bias"].numpy()).max() < 1e-4
            same_weights(model, tmodel, 1e-4)


# -- 4. RetNet (Jamie-Stirling/RetNet src/retention.py, retnet.py, xpos_relative_position.py): multi-scale retention
#       by decay masks, its recurrent form, xPos rotation, group norm; trained as a small language model -------------

def retnet(lib, F_, th, layers=2, hidden_dim=8, ffn_size=16, heads=2, double_v_dim=True, vocab=11):
    nn = lib
    torch = th

    def fixed_pos_embedding(x):
        seq_len, dim = x.shape
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim) / dim))
        sinusoid_inp = (
            torch.einsum("i , j -> i j", torch.arange(0, seq_len, dtype=torch.float), inv_freq).to(x)
        )
        return torch.sin(sinusoid_inp), torch.cos(sinusoid_inp)

    def rotate_every_two(x):
        x1 = x[:, :, ::2]
        x2 = x[:, :, 1::2]
        x = torch.stack((-x2, x1), dim=-1)
        return x.flatten(-2)  # in einsum notation: rearrange(x, '... d j -> ... (d j)')\

    def duplicate_interleave(m):
        """
        A simple version of `torch.repeat_interleave` for duplicating a matrix while interleaving the copy.
        """
        dim0 = m.shape[0]
        m = m.view(-1, 1)  # flatten the matrix
        m = m.repeat(1, 2)  # repeat all elements into the 2nd dimension
        m = m.view(dim0, -1)  # reshape into a matrix, interleaving the copy
        return m

    def apply_rotary_pos_emb(x, sin, cos, scale=1):
        sin, cos = map(lambda t: duplicate_interleave(t * scale), (sin, cos))
        # einsum notation for lambda t: repeat(t[offset:x.shape[1]+offset,:], "n d -> () n () (d j)", j=2)
        return (x * cos) + (rotate_every_two(x) * sin)

    class XPOS(nn.Module):
        def __init__(
            self, head_dim, scale_base=512
        ):
            super().__init__()
            self.head_dim = head_dim
            self.scale_base = scale_base
            self.register_buffer(
                "scale", (torch.arange(0, head_dim, 2) + 0.4 * head_dim) / (1.4 * head_dim)
            )

        def forward(self, x, offset=0, downscale=False):
            length = x.shape[1]
            min_pos = 0
            max_pos = length + offset + min_pos
            scale = self.scale ** torch.arange(min_pos, max_pos, 1).to(self.scale).div(self.scale_base)[:, None]
            sin, cos = fixed_pos_embedding(scale)

            if scale.shape[0] > length:
                scale = scale[-length:]
                sin = sin[-length:]
                cos = cos[-length:]

            if downscale:
                scale = 1 / scale

            x = apply_rotary_pos_emb(x, sin, cos, scale)
            return x

    class SimpleRetention(nn.Module):
        def __init__(self, hidden_size, gamma, head_size=None, double_v_dim=False):
            """
            Simple retention mechanism based on the paper
            "Retentive Network: A Successor to Transformer for Large Language Models"[https://arxiv.org/pdf/2307.08621.pdf]
            """
            super(SimpleRetention, self).__init__()  # noqa: UP008

            self.hidden_size = hidden_size
            if head_size is None:
                head_size = hidden_size
            self.head_size = head_size

            self.v_dim = head_size * 2 if double_v_dim else head_size
            self.gamma = gamma

            self.W_Q = nn.Parameter(torch.randn(hidden_size, head_size) / hidden_size)
            self.W_K = nn.Parameter(torch.randn(hidden_size, head_size) / hidden_size)
            self.W_V = nn.Parameter(torch.randn(hidden_size, self.v_dim) / hidden_size)

            self.xpos = XPOS(head_size)

        def forward(self, X):  # noqa: N803
            """
            Parallel (default) representation of the retention mechanism.
            X: (batch_size, sequence_length, hidden_size)
            """
            sequence_length = X.shape[1]
            D = self._get_D(sequence_length).to(self.W_Q.device)  # noqa: N806

            Q = (X @ self.W_Q)  # noqa: N806
            K = (X @ self.W_K)  # noqa: N806

            Q = self.xpos(Q)  # noqa: N806
            K = self.xpos(K, downscale=True)  # noqa: N806

            V = X @ self.W_V  # noqa: N806
            ret = (Q @ K.permute(0, 2, 1)) * D.unsqueeze(0)

            return ret @ V

        def forward_recurrent(self, x_n, s_n_1, n):
            """
            Recurrent representation of the retention mechanism.
            x_n: (batch_size, 1, hidden_size)
            s_n_1: (batch_size, hidden_size, v_dim)
            """

            Q = (x_n @ self.W_Q)  # noqa: N806
            K = (x_n @ self.W_K)  # noqa: N806

            Q = self.xpos(Q, n + 1)  # noqa: N806
            K = self.xpos(K, n + 1, downscale=True)  # noqa: N806

            V = x_n @ self.W_V  # noqa: N806

            # K: (batch_size, 1, hidden_size)
            # V: (batch_size, 1, v_dim)
            # s_n = gamma * s_n_1 + K^T @ V

            s_n = self.gamma * s_n_1 + (K.transpose(-1, -2) @ V)

            return (Q @ s_n), s_n

        def forward_chunkwise(self, x_i, r_i_1, i):
            """
            Chunkwise representation of the retention mechanism.
            x_i: (batch_size, chunk_size, hidden_size)
            r_i_1: (batch_size, hidden_size, v_dim)
            """
            batch, chunk_size, _ = x_i.shape
            D = self._get_D(chunk_size)  # noqa: N806

            Q = (x_i @ self.W_Q)  # noqa: N806
            K = (x_i @ self.W_K)  # noqa: N806

            Q = self.xpos(Q, i * chunk_size)  # noqa: N806
            K = self.xpos(K, i * chunk_size, downscale=True)  # noqa: N806

            V = x_i @ self.W_V  # noqa: N806

            r_i = (K.transpose(-1, -2) @ (V * D[-1].view(1, chunk_size, 1))) + (self.gamma ** chunk_size) * r_i_1

            inner_chunk = ((Q @ K.transpose(-1, -2)) * D.unsqueeze(0)) @ V

            # e[i,j] = gamma ** (i+1)
            e = torch.zeros(batch, chunk_size, 1)

            for _i in range(chunk_size):
                e[:, _i, :] = self.gamma ** (_i + 1)

            cross_chunk = (Q @ r_i_1) * e

            return inner_chunk + cross_chunk, r_i

        def _get_D(self, sequence_length):  # noqa: N802
            n = torch.arange(sequence_length).unsqueeze(1)
            m = torch.arange(sequence_length).unsqueeze(0)

            # Broadcast self.gamma ** (n - m) with appropriate masking to set values where n < m to 0
            D = (self.gamma ** (n - m)) * (n >= m).float()  # this results in some NaN when n is much larger than m  # noqa: N806
            # fill the NaN with 0
            D[D != D] = 0

            return D

    class MultiScaleRetention(nn.Module):
        def __init__(self, hidden_size, heads, double_v_dim=False):
            """
            Multi-scale retention mechanism based on the paper
            "Retentive Network: A Successor to Transformer for Large Language Models"[https://arxiv.org/pdf/2307.08621.pdf]
            """
            super(MultiScaleRetention, self).__init__()  # noqa: UP008
            self.hidden_size = hidden_size
            self.v_dim = hidden_size * 2 if double_v_dim else hidden_size
            self.heads = heads
            assert hidden_size % heads == 0, "hidden_size must be divisible by heads"
            self.head_size = hidden_size // heads
            self.head_v_dim = hidden_size * 2 if double_v_dim else hidden_size

            self.gammas = (1 - torch.exp(torch.linspace(math.log(1 / 32), math.log(1 / 512), heads))).detach().cpu().tolist()  # noqa: E501

            self.swish = lambda x: x * torch.sigmoid(x)
            self.W_G = nn.Parameter(torch.randn(hidden_size, self.v_dim) / hidden_size)
            self.W_O = nn.Parameter(torch.randn(self.v_dim, hidden_size) / hidden_size)
            self.group_norm = nn.GroupNorm(heads, self.v_dim)

            self.retentions = nn.ModuleList([
                SimpleRetention(self.hidden_size, gamma, self.head_size, double_v_dim) for gamma in self.gammas
            ])

        def forward(self, X):  # noqa: N803
            """
            parallel representation of the multi-scale retention mechanism
            """

            # apply each individual retention mechanism to X
            Y = []  # noqa: N806
            for i in range(self.heads):
                Y.append(self.retentions[i](X))

            Y = torch.cat(Y, dim=2)  # noqa: N806
            Y_shape = Y.shape  # noqa: N806
            Y = self.group_norm(Y.reshape(-1, self.v_dim)).reshape(Y_shape)  # noqa: N806

            return (self.swish(X @ self.W_G) * Y) @ self.W_O

        def forward_recurrent(self, x_n, s_n_1s, n):
            """
            recurrent representation of the multi-scale retention mechanism
            x_n: (batch_size, 1, hidden_size)
            s_n_1s: (batch_size, heads, head_size, head_size)

            """

            # apply each individual retention mechanism to a slice of X
            Y = []  # noqa: N806
            s_ns = []
            for i in range(self.heads):
                y, s_n = self.retentions[i].forward_recurrent(
                    x_n[:, :, :], s_n_1s[i], n
                )
                Y.append(y)
                s_ns.append(s_n)

            Y = torch.cat(Y, dim=2)  # noqa: N806
            Y_shape = Y.shape  # noqa: N806
            Y = self.group_norm(Y.reshape(-1, self.v_dim)).reshape(Y_shape)  # noqa: N806

            return (self.swish(x_n @ self.W_G) * Y) @ self.W_O, s_ns

        def forward_chunkwise(self, x_i, r_i_1s, i):
            """
            chunkwise representation of the multi-scale retention mechanism
            x_i: (batch_size, chunk_size, hidden_size)
            r_i_1s: (batch_size, heads, head_size, head_size)
            """
            batch, chunk_size, _ = x_i.shape

            # apply each individual retention mechanism to a slice of X
            Y = []  # noqa: N806
            r_is = []
            for j in range(self.heads):
                y, r_i = self.retentions[j].forward_chunkwise(
                    x_i[:, :, :], r_i_1s[j], i
                )
                Y.append(y)
                r_is.append(r_i)

            Y = torch.cat(Y, dim=2)  # noqa: N806
            Y_shape = Y.shape  # noqa: N806
            Y = self.group_norm(Y.reshape(-1, self.v_dim)).reshape(Y_shape)  # noqa: N806

            return (self.swish(x_i @ self.W_G) * Y) @ self.W_O, r_is

    class RetNet(nn.Module):
        def __init__(self, layers, hidden_dim, ffn_size, heads, double_v_dim=False):
            super(RetNet, self).__init__()  # noqa: UP008
            self.layers = layers
            self.hidden_dim = hidden_dim
            self.ffn_size = ffn_size
            self.heads = heads
            self.v_dim = hidden_dim * 2 if double_v_dim else hidden_dim

            self.retentions = nn.ModuleList([
                MultiScaleRetention(hidden_dim, heads, double_v_dim)
                for _ in range(layers)
            ])
            self.ffns = nn.ModuleList([
                nn.Sequential(
                    nn.Linear(hidden_dim, ffn_size),
                    nn.GELU(),
                    nn.Linear(ffn_size, hidden_dim)
                )
                for _ in range(layers)
            ])
            self.layer_norms_1 = nn.ModuleList([
                nn.LayerNorm(hidden_dim)
                for _ in range(layers)
            ])
            self.layer_norms_2 = nn.ModuleList([
                nn.LayerNorm(hidden_dim)
                for _ in range(layers)
            ])

        def forward(self, X):  # noqa: N803
            """
            X: (batch_size, sequence_length, hidden_size)
            """
            for i in range(self.layers):
                Y = self.retentions[i](self.layer_norms_1[i](X)) + X  # noqa: N806

                X = self.ffns[i](self.layer_norms_2[i](Y)) + Y  # noqa: N806

            return X

        def forward_recurrent(self, x_n, s_n_1s, n):
            """
            X: (batch_size, sequence_length, hidden_size)
            s_n_1s: list of lists of tensors of shape (batch_size, hidden_size // heads, hidden_size // heads)

            """
            s_ns = []
            for i in range(self.layers):
                # list index out of range
                o_n, s_n = self.retentions[i].forward_recurrent(self.layer_norms_1[i](x_n), s_n_1s[i], n)
                y_n = o_n + x_n
                s_ns.append(s_n)
                x_n = self.ffns[i](self.layer_norms_2[i](y_n)) + y_n

            return x_n, s_ns

        def forward_chunkwise(self, x_i, r_i_1s, i):
            """
            X: (batch_size, sequence_length, hidden_size)
            r_i_1s: list of lists of tensors of shape (batch_size, hidden_size // heads, hidden_size // heads)

            """
            r_is = []
            for j in range(self.layers):
                o_i, r_i = self.retentions[j].forward_chunkwise(self.layer_norms_1[j](x_i), r_i_1s[j], i)
                y_i = o_i + x_i
                r_is.append(r_i)
                x_i = self.ffns[j](self.layer_norms_2[j](y_i)) + y_i

            return x_i, r_is

    class RetNetLM(nn.Module):  # the usual embedding and head around it
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, hidden_dim)
            self.retnet = RetNet(layers, hidden_dim, ffn_size, heads, double_v_dim=double_v_dim)
            self.head = nn.Linear(hidden_dim, vocab)

        def forward(self, tokens):
            return self.head(self.retnet(self.embed(tokens)))

        def forward_recurrent(self, tokens):  # the repository's test: the recurrent form, token by token
            batch_size, sequence_length = tokens.shape
            X = self.embed(tokens)  # noqa: N806
            head_size = hidden_dim // heads
            v_size = head_size * 2 if double_v_dim else head_size
            s_n_1s = [[torch.zeros(head_size, v_size).unsqueeze(0).repeat(batch_size, 1, 1) for _ in range(heads)]
                      for _ in range(layers)]
            Y_recurrent = []  # noqa: N806
            for i in range(sequence_length):
                y_n, s_ns = self.retnet.forward_recurrent(X[:, i:i + 1, :], s_n_1s, i)
                Y_recurrent.append(y_n)
                s_n_1s = s_ns
            return self.head(torch.concat(Y_recurrent, dim=1))

        def forward_chunkwise(self, tokens, chunk_size):  # the repository's test of the chunkwise form
            batch_size, sequence_length = tokens.shape
            X = self.embed(tokens)  # noqa: N806
            head_size = hidden_dim // heads
            v_size = head_size * 2 if double_v_dim else head_size
            r_n_1s = [[torch.zeros(head_size, v_size).unsqueeze(0).repeat(batch_size, 1, 1) for _ in range(heads)]
                      for _ in range(layers)]
            Y_chunkwise = []  # noqa: N806
            for i in range(sequence_length // chunk_size):
                y_i, r_i = self.retnet.forward_chunkwise(X[:, i * chunk_size:(i + 1) * chunk_size, :], r_n_1s, i)
                Y_chunkwise.append(y_i)
                r_n_1s = r_i
            return self.head(torch.concat(Y_chunkwise, dim=1))

    return RetNetLM()


def test_retnet_multiscale_retention_decay_masks_xpos_group_norm_parallel_equals_recurrent_adamw():
    model, tmodel = pair(retnet, dtype=F32)
    assert model.retnet.retentions[0].gammas == tmodel.retnet.retentions[0].gammas
    optimizer = av.optim.AdamW(model.parameters(), lr=1e-3)
    toptimizer = torch.optim.AdamW(tmodel.parameters(), lr=1e-3)

    recurrent = compiled(lambda model, tokens: model.forward_recurrent(tokens), "numpy")
    chunkwise = compiled(lambda model, tokens: model.forward_chunkwise(tokens, 3), "numpy")

    tokens = lm_steps(model, tmodel, optimizer, toptimizer, 11, (2, 7), seed=5, clip=1.0)
    with av.no_grad(), torch.no_grad(), strict():  # the parallel form equals the recurrent and chunkwise ones
        trec = tmodel.forward_recurrent(torch.tensor(tokens))
        rec = recurrent(model, av.tensor(tokens))
        assert rel(rec, trec) < 1e-5 and rel(rec, model(av.tensor(tokens))) < 1e-4
        tchunk = tmodel.forward_chunkwise(torch.tensor(tokens[:, :6]), 3)
        chunk = chunkwise(model, av.tensor(tokens[:, :6]))
        assert rel(chunk, tchunk) < 1e-5 and rel(chunk, model(av.tensor(tokens[:, :6]))) < 1e-4


# -- 5. CycleGAN (junyanz/pytorch-CycleGAN-and-pix2pix: models/networks.py's ResnetGenerator, NLayerDiscriminator,
#       GANLoss and init_weights, util/image_pool.py's ImagePool, models/cycle_gan_model.py's optimize_parameters,
#       get_scheduler's 'linear' LambdaLR) -----------------------------------------------------------------------------

def cyclegan_nets(lib, F_, th, input_nc=3, output_nc=3, ngf=4, ndf=4, n_blocks=1, n_layers_D=2):  # noqa: N803
    nn = lib
    torch = th
    init = th.nn.init

    class ResnetBlock(nn.Module):
        def __init__(self, dim, padding_type, norm_layer, use_dropout, use_bias):
            super(ResnetBlock, self).__init__()  # noqa: UP008
            self.conv_block = self.build_conv_block(dim, padding_type, norm_layer, use_dropout, use_bias)

        def build_conv_block(self, dim, padding_type, norm_layer, use_dropout, use_bias):
            conv_block = []
            p = 0
            if padding_type == 'reflect':
                conv_block += [nn.ReflectionPad2d(1)]
            elif padding_type == 'replicate':
                conv_block += [nn.ReplicationPad2d(1)]
            elif padding_type == 'zero':
                p = 1
            else:
                raise NotImplementedError('padding [%s] is not implemented' % padding_type)  # noqa: UP031

            conv_block += [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias), norm_layer(dim), nn.ReLU(True)]
            if use_dropout:
                conv_block += [nn.Dropout(0.5)]

            p = 0
            if padding_type == 'reflect':
                conv_block += [nn.ReflectionPad2d(1)]
            elif padding_type == 'replicate':
                conv_block += [nn.ReplicationPad2d(1)]
            elif padding_type == 'zero':
                p = 1
            else:
                raise NotImplementedError('padding [%s] is not implemented' % padding_type)  # noqa: UP031
            conv_block += [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias), norm_layer(dim)]

            return nn.Sequential(*conv_block)

        def forward(self, x):
            out = x + self.conv_block(x)  # add skip connections
            return out

    class ResnetGenerator(nn.Module):
        def __init__(self, input_nc, output_nc, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False, n_blocks=6,
                     padding_type='reflect'):
            assert (n_blocks >= 0)
            super(ResnetGenerator, self).__init__()  # noqa: UP008
            if type(norm_layer) == functools.partial:  # noqa: E721
                use_bias = norm_layer.func == nn.InstanceNorm2d
            else:
                use_bias = norm_layer == nn.InstanceNorm2d

            model = [nn.ReflectionPad2d(3),
                     nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
                     norm_layer(ngf),
                     nn.ReLU(True)]

            n_downsampling = 2
            for i in range(n_downsampling):  # add downsampling layers
                mult = 2 ** i
                model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                          norm_layer(ngf * mult * 2),
                          nn.ReLU(True)]

            mult = 2 ** n_downsampling
            for i in range(n_blocks):       # add ResNet blocks  # noqa: B007

                model += [ResnetBlock(ngf * mult, padding_type=padding_type, norm_layer=norm_layer,
                                      use_dropout=use_dropout, use_bias=use_bias)]

            for i in range(n_downsampling):  # add upsampling layers
                mult = 2 ** (n_downsampling - i)
                model += [nn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2),
                                             kernel_size=3, stride=2,
                                             padding=1, output_padding=1,
                                             bias=use_bias),
                          norm_layer(int(ngf * mult / 2)),
                          nn.ReLU(True)]
            model += [nn.ReflectionPad2d(3)]
            model += [nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0)]
            model += [nn.Tanh()]

            self.model = nn.Sequential(*model)

        def forward(self, input):  # noqa: A002
            """Standard forward"""
            return self.model(input)

    class NLayerDiscriminator(nn.Module):
        def __init__(self, input_nc, ndf=64, n_layers=3, norm_layer=nn.BatchNorm2d):
            super(NLayerDiscriminator, self).__init__()  # noqa: UP008
            if type(norm_layer) == functools.partial:  # no need to use bias as BatchNorm2d has affine parameters  # noqa: E721
                use_bias = norm_layer.func == nn.InstanceNorm2d
            else:
                use_bias = norm_layer == nn.InstanceNorm2d

            kw = 4
            padw = 1
            sequence = [nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
            nf_mult = 1
            nf_mult_prev = 1
            for n in range(1, n_layers):  # gradually increase the number of filters
                nf_mult_prev = nf_mult
                nf_mult = min(2 ** n, 8)
                sequence += [
                    nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=2, padding=padw, bias=use_bias),
                    norm_layer(ndf * nf_mult),
                    nn.LeakyReLU(0.2, True)
                ]

            nf_mult_prev = nf_mult
            nf_mult = min(2 ** n_layers, 8)
            sequence += [
                nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw, bias=use_bias),
                norm_layer(ndf * nf_mult),
                nn.LeakyReLU(0.2, True)
            ]

            sequence += [nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw)]  # output 1 channel prediction map
            self.model = nn.Sequential(*sequence)

        def forward(self, input):  # noqa: A002
            """Standard forward."""
            return self.model(input)

    def init_weights(net, init_type='normal', init_gain=0.02):
        def init_func(m):  # define the initialization function
            classname = m.__class__.__name__
            if hasattr(m, 'weight') and (classname.find('Conv') != -1 or classname.find('Linear') != -1):
                if init_type == 'normal':
                    init.normal_(m.weight.data, 0.0, init_gain)
                elif init_type == 'xavier':
                    init.xavier_normal_(m.weight.data, gain=init_gain)
                elif init_type == 'kaiming':
                    init.kaiming_normal_(m.weight.data, a=0, mode='fan_in')
                elif init_type == 'orthogonal':
                    init.orthogonal_(m.weight.data, gain=init_gain)
                else:
                    raise NotImplementedError('initialization method [%s] is not implemented' % init_type)  # noqa: UP031
                if hasattr(m, 'bias') and m.bias is not None:
                    init.constant_(m.bias.data, 0.0)
            elif classname.find('BatchNorm2d') != -1:  # BatchNorm Layer's weight is not a matrix; only normal distribution applies.  # noqa: E501
                init.normal_(m.weight.data, 1.0, init_gain)
                init.constant_(m.bias.data, 0.0)

        net.apply(init_func)  # apply the initialization function <init_func>
        return net

    norm_layer = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)  # get_norm_layer('instance')

    class GANLoss(nn.Module):
        def __init__(self, gan_mode, target_real_label=1.0, target_fake_label=0.0):
            super(GANLoss, self).__init__()  # noqa: UP008
            self.register_buffer('real_label', torch.tensor(target_real_label))
            self.register_buffer('fake_label', torch.tensor(target_fake_label))
            self.gan_mode = gan_mode
            if gan_mode == 'lsgan':
                self.loss = nn.MSELoss()
            elif gan_mode == 'vanilla':
                self.loss = nn.BCEWithLogitsLoss()
            elif gan_mode in ['wgangp']:
                self.loss = None
            else:
                raise NotImplementedError('gan mode %s not implemented' % gan_mode)  # noqa: UP031

        def get_target_tensor(self, prediction, target_is_real):
            if target_is_real:
                target_tensor = self.real_label
            else:
                target_tensor = self.fake_label
            return target_tensor.expand_as(prediction)

        def __call__(self, prediction, target_is_real):
            if self.gan_mode in ['lsgan', 'vanilla']:
                target_tensor = self.get_target_tensor(prediction, target_is_real)
                loss = self.loss(prediction, target_tensor)
            elif self.gan_mode == 'wgangp':
                if target_is_real:
                    loss = -prediction.mean()
                else:
                    loss = prediction.mean()
            return loss

    class Nets(nn.Module):
        def __init__(self):
            super().__init__()
            self.netG_A = init_weights(ResnetGenerator(input_nc, output_nc, ngf, norm_layer=norm_layer, n_blocks=n_blocks))
            self.netG_B = init_weights(ResnetGenerator(output_nc, input_nc, ngf, norm_layer=norm_layer, n_blocks=n_blocks))
            self.netD_A = init_weights(NLayerDiscriminator(output_nc, ndf, n_layers_D, norm_layer=norm_layer))
            self.netD_B = init_weights(NLayerDiscriminator(input_nc, ndf, n_layers_D, norm_layer=norm_layer))
            self.criterionGAN = GANLoss('lsgan')

    return Nets()


class ImagePool():  # noqa: UP039
    """util/image_pool.py, over `torch` (or `avalon`): a history of generated images."""

    def __init__(self, torch, pool_size):
        self.torch = torch
        self.pool_size = pool_size
        if self.pool_size > 0:  # create an empty pool
            self.num_imgs = 0
            self.images = []

    def query(self, images):
        torch = self.torch
        if self.pool_size == 0:  # if the buffer size is 0, do nothing
            return images
        return_images = []
        for image in images:
            image = torch.unsqueeze(image.data, 0)
            if self.num_imgs < self.pool_size:   # if the buffer is not full; keep inserting current images to the buffer
                self.num_imgs = self.num_imgs + 1
                self.images.append(image)
                return_images.append(image)
            else:
                p = random.uniform(0, 1)
                if p > 0.5:  # by 50% chance, the buffer will return a previously stored image, and insert the current image into the buffer  # noqa: E501
                    random_id = random.randint(0, self.pool_size - 1)  # randint is inclusive
                    tmp = self.images[random_id].clone()
                    self.images[random_id] = image
                    return_images.append(tmp)
                else:       # by another 50% chance, the buffer will return the current image
                    return_images.append(image)
        return_images = torch.cat(return_images, 0)   # collect all the images and return
        return return_images


def test_cyclegan_image_pool_identity_and_cycle_losses_two_chained_adams_and_linear_decay():
    opt = dict(lr=2e-4, beta1=0.5, lambda_A=10.0, lambda_B=10.0, lambda_identity=0.5, pool_size=3, epoch_count=1,
               n_epochs=2, n_epochs_decay=2)
    nets, tnets = pair(cyclegan_nets, dtype=F32)
    optimizer_G = av.optim.Adam(itertools.chain(nets.netG_A.parameters(), nets.netG_B.parameters()),  # noqa: N806
                                lr=opt["lr"], betas=(opt["beta1"], 0.999))
    optimizer_D = av.optim.Adam(itertools.chain(nets.netD_A.parameters(), nets.netD_B.parameters()),  # noqa: N806
                                lr=opt["lr"], betas=(opt["beta1"], 0.999))
    toptimizer_G = torch.optim.Adam(itertools.chain(tnets.netG_A.parameters(), tnets.netG_B.parameters()),  # noqa: N806
                                    lr=opt["lr"], betas=(opt["beta1"], 0.999))
    toptimizer_D = torch.optim.Adam(itertools.chain(tnets.netD_A.parameters(), tnets.netD_B.parameters()),  # noqa: N806
                                    lr=opt["lr"], betas=(opt["beta1"], 0.999))

    def lambda_rule(epoch):
        lr_l = 1.0 - max(0, epoch + opt["epoch_count"] - opt["n_epochs"]) / float(opt["n_epochs_decay"] + 1)
        return lr_l
    schedulers = [av.optim.lr_scheduler.LambdaLR(o, lr_lambda=lambda_rule) for o in (optimizer_G, optimizer_D)]
    tschedulers = [torch.optim.lr_scheduler.LambdaLR(o, lr_lambda=lambda_rule) for o in (toptimizer_G, toptimizer_D)]
    fake_A_pool, fake_B_pool = ImagePool(av, opt["pool_size"]), ImagePool(av, opt["pool_size"])  # noqa: N806
    tfake_A_pool, tfake_B_pool = ImagePool(torch, opt["pool_size"]), ImagePool(torch, opt["pool_size"])  # noqa: N806

    def torch_step(n, real_A, real_B):  # noqa: N803  (optimize_parameters, with the model's attributes as locals)
        fake_B = n.netG_A(real_A)  # G_A(A)  # noqa: N806
        rec_A = n.netG_B(fake_B)   # G_B(G_A(A))  # noqa: N806
        fake_A = n.netG_B(real_B)  # G_B(B)  # noqa: N806
        rec_B = n.netG_A(fake_A)   # G_A(G_B(B))  # noqa: N806
        for net in (n.netD_A, n.netD_B):  # set_requires_grad([netD_A, netD_B], False)
            for param in net.parameters():
                param.requires_grad = False
        toptimizer_G.zero_grad()
        loss_G = g_loss(n, real_A, real_B, fake_B, rec_A, fake_A, rec_B)  # noqa: N806
        loss_G.backward()
        toptimizer_G.step()
        for net in (n.netD_A, n.netD_B):
            for param in net.parameters():
                param.requires_grad = True
        toptimizer_D.zero_grad()
        loss_D_A = backward_D_basic(n, n.netD_A, real_B, tfake_B_pool.query(fake_B))  # noqa: N806
        loss_D_A.backward()
        loss_D_B = backward_D_basic(n, n.netD_B, real_A, tfake_A_pool.query(fake_A))  # noqa: N806
        loss_D_B.backward()
        toptimizer_D.step()
        return loss_G, loss_D_A, loss_D_B

    def g_loss(n, real_A, real_B, fake_B, rec_A, fake_A, rec_B):  # noqa: N803  backward_G
        lambda_idt, lambda_A, lambda_B = opt["lambda_identity"], opt["lambda_A"], opt["lambda_B"]  # noqa: N806
        idt_A = n.netG_A(real_B)  # noqa: N806
        loss_idt_A = TF.l1_loss(idt_A, real_B) * lambda_B * lambda_idt if n is tnets else \
            F.l1_loss(idt_A, real_B) * lambda_B * lambda_idt
        idt_B = n.netG_B(real_A)  # noqa: N806
        loss_idt_B = (TF if n is tnets else F).l1_loss(idt_B, real_A) * lambda_A * lambda_idt
        loss_G_A = n.criterionGAN(n.netD_A(fake_B), True)  # noqa: N806
        loss_G_B = n.criterionGAN(n.netD_B(fake_A), True)  # noqa: N806
        loss_cycle_A = (TF if n is tnets else F).l1_loss(rec_A, real_A) * lambda_A  # noqa: N806
        loss_cycle_B = (TF if n is tnets else F).l1_loss(rec_B, real_B) * lambda_B  # noqa: N806
        return loss_G_A + loss_G_B + loss_cycle_A + loss_cycle_B + loss_idt_A + loss_idt_B

    def backward_D_basic(n, netD, real, fake):  # noqa: N802, N803
        pred_real = netD(real)
        loss_D_real = n.criterionGAN(pred_real, True)  # noqa: N806
        pred_fake = netD(fake.detach())
        loss_D_fake = n.criterionGAN(pred_fake, False)  # noqa: N806
        return (loss_D_real + loss_D_fake) * 0.5

    # Avalon: the generators' step returns the fakes (the forward is shared with the discriminators' step, README),
    # the pools run between the two steps, and the discriminators' step takes their answers
    def g_fn(generators, nets, real_A, real_B):  # noqa: N803
        netG_A, netG_B = generators  # noqa: N806
        fake_B = netG_A(real_A)  # noqa: N806
        rec_A = netG_B(fake_B)  # noqa: N806
        fake_A = netG_B(real_B)  # noqa: N806
        rec_B = netG_A(fake_A)  # noqa: N806
        return g_loss(nets, real_A, real_B, fake_B, rec_A, fake_A, rec_B), (fake_A.detach(), fake_B.detach())

    # itertools.chain's optimizers know their tensors by position: the gradient with respect to the pair of
    # networks names them ("0.model.1.weight", ...) and carries the tensors, which the optimizer matches
    def g_step(nets, optimizer_G, real_A, real_B):  # noqa: N803
        (loss_G, fakes), grads = av.value_and_grad(g_fn, has_aux=True)(  # noqa: N806
            (nets.netG_A, nets.netG_B), nets, real_A, real_B)
        optimizer_G.step(grads)
        return loss_G, fakes

    def d_fn(discriminators, nets, real_A, real_B, fake_A, fake_B):  # noqa: N803
        netD_A, netD_B = discriminators  # noqa: N806
        loss_D_A = backward_D_basic(nets, netD_A, real_B, fake_B)  # noqa: N806
        loss_D_B = backward_D_basic(nets, netD_B, real_A, fake_A)  # noqa: N806
        return loss_D_A + loss_D_B, (loss_D_A, loss_D_B)

    def d_step(nets, optimizer_D, real_A, real_B, fake_A, fake_B):  # noqa: N803
        (_, losses), grads = av.value_and_grad(d_fn, has_aux=True)(
            (nets.netD_A, nets.netD_B), nets, real_A, real_B, fake_A, fake_B)
        optimizer_D.step(grads)
        return losses

    run_g, run_d = compiled(g_step, "numpy"), compiled(d_step, "numpy")
    # conditioning, not Avalon: a convolution's bias that an InstanceNorm2d (affine=False) follows has a zero
    # gradient in exact arithmetic, whose roundoff Adam turns into steps of up to lr on both sides
    loose = {f"{name}.{i}.bias" for name, m in tnets.named_modules() if isinstance(m, torch.nn.Sequential)
             for i in range(len(m) - 1) if isinstance(m[i + 1], torch.nn.InstanceNorm2d)}
    assert "netG_A.model.1.bias" in loose and "netD_B.model.2.bias" in loose and len(loose) == 2 * (5 + 2 + 2)
    rng = np.random.default_rng(7)
    random.seed(0)
    i = 0
    for epoch in range(opt["epoch_count"], opt["n_epochs"] + opt["n_epochs_decay"] + 1):
        for _ in range(2 if epoch == 1 else 1):
            real_A, real_B = np.tanh(randn(rng, 2, 3, 16, 16)), np.tanh(randn(rng, 2, 3, 16, 16))  # noqa: N806
            state = random.getstate()
            tl = torch_step(tnets, T(real_A), T(real_B))
            random.setstate(state)
            with strict():
                loss_G, (fake_A, fake_B) = (run_g if i else g_step)(nets, optimizer_G, av.tensor(real_A),  # noqa: N806
                                                                    av.tensor(real_B))
            fake_B, fake_A = fake_B_pool.query(fake_B), fake_A_pool.query(fake_A)  # noqa: N806
            with strict():
                loss_D_A, loss_D_B = (run_d if i else d_step)(nets, optimizer_D, av.tensor(real_A),  # noqa: N806
                                                              av.tensor(real_B), fake_A, fake_B)
            for a, b in zip((loss_G, loss_D_A, loss_D_B), tl):
                assert rel(a, b) < 1e-4, i
            same_weights_but(nets, tnets, 1e-4, loose, 2 * opt["lr"] * (i + 1))
            i += 1
        for s in schedulers + tschedulers:  # update_learning_rate()
            s.step()
        assert optimizer_G.param_groups[0]["lr"] == toptimizer_G.param_groups[0]["lr"]
    assert fake_A_pool.num_imgs == tfake_A_pool.num_imgs == 3
    assert run_g.cache_info().misses == 1 and run_d.cache_info().misses == 1
    for a, b in zip(fake_A_pool.images + fake_B_pool.images, tfake_A_pool.images + tfake_B_pool.images):
        assert rel(a, b) < 1e-4


# -- regressions ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_integer_powers_stay_integers_as_torch(mode):
    """`3 ** torch.arange(4)`, `torch.arange(4) ** 3` and int ** int tensors are int64 in torch (a uint8 tensor
    squared stays uint8, a bool one squared is int64, an int one to 2.0 is float32); Avalon's pow made every integer
    power float32 (and `int_tensor ** 2.0` int64, `bool ** 2` and `torch.square(bool)` bool)."""
    def powers(th, x, y, u, b):
        return (3 ** y, x ** 3, x ** y, y ** 2, y ** 2.0, u ** 2, b ** 2, b ** 2.0, (-2) ** y, 2 ** (y - 2),
                y ** th.tensor(-1), x ** 0.5, th.square(b), u.square())
    x, y = np.array([2, -1, 1, 5]), np.array([0, 3, 2, 30])
    u, b = np.array([2, 20], dtype=np.uint8), np.array([True, False])
    fn = compiled(lambda *a: powers(av, *a), mode)
    with strict():
        ours = fn(av.tensor(x), av.tensor(y), av.tensor(u), av.tensor(b))
    theirs = powers(torch, *(torch.tensor(v) for v in (x, y, u, b)))
    for i, (a, t) in enumerate(zip(ours, theirs)):
        assert a.dtype == {torch.int64: av.int64, torch.float32: av.float32, torch.uint8: av.uint8}[t.dtype], i
        np.testing.assert_array_equal(a.numpy(), t.numpy(), err_msg=str(i))
    with pytest.raises(RuntimeError, match="Integers to negative integer powers are not allowed"):
        av.arange(3) ** -1


def test_linspace_counts_as_torch_kernel_for_integer_and_float_dtypes():
    """torch's linspace truncates start and end to integers for an integer dtype and each value toward zero
    (efficient-kan's `x_sorted[torch.linspace(0, batch - 1, grid_size + 1, dtype=torch.int64)]`): Avalon floored
    the values computed from the untruncated ends (`linspace(-3, 5, 6, dtype=int64)` gave -2 where torch -1,
    `linspace(2.5, 7.9, 5, dtype=int64)` [2, 3, 5, 6, 7] where torch [2, 3, 4, 5, 7]), and its float values were an
    ulp off torch's (whose kernel computes the step in the result's precision and rounds each value once)."""
    rng = np.random.default_rng(0)
    cases = [(-3, 5, 6), (2.5, 7.9, 5), (-0.5, 1.65, 31), (0, 10, 12), (0, 15, 6), (0.5, 2, 1), (0, 1, 0)]
    cases += [(*rng.uniform(-10, 10, 2).round(int(rng.integers(0, 4))), int(rng.integers(2, 60))) for _ in range(40)]
    for s, e, n in cases:
        for tdt, adt in ((torch.int64, av.int64), (torch.int32, av.int32), (torch.float32, av.float32),
                         (torch.float64, av.float64), (torch.float16, av.float16)):
            want = torch.linspace(s, e, n, dtype=tdt).numpy()
            got = av.linspace(s, e, n, dtype=adt).numpy()
            assert got.dtype == want.dtype and np.array_equal(got, want), (s, e, n, tdt)
    f = av.compile(lambda x: x[av.linspace(0, x.shape[0] - 1, 6, dtype=av.int64)], backend="numpy")
    x = randn(rng, 20, 3)
    with strict():
        np.testing.assert_array_equal(f(av.tensor(x)).numpy(), T(x)[torch.linspace(0, 19, 6, dtype=torch.int64)])


@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_logical_not_dot_any_and_all_keep_torch_dtypes_for_numbers(mode):
    """Met while checking the ports' integer idioms against torch: `torch.logical_not` of an integer or float tensor
    (a 0/1 mask) was an error ("operands must be i1"); `torch.dot` of int32 (or uint8, int8) vectors was int64 (sum's
    promotion) where torch keeps the operands' dtype, wrapping; `any`/`all` of a uint8 tensor were bool where torch's
    are uint8."""
    def fn(th, m, f, u, v):
        return (th.logical_not(m), th.logical_not(f), m.logical_not(), th.dot(m, m), th.dot(u, v), u.any(),
                th.all(u.unsqueeze(0), 1), th.any(m), f.all())
    m, f = np.array([0, 3, -2], dtype=np.int32), np.array([0.0, 2.0, np.nan], dtype=np.float32)
    u, v = np.array([1, 2, 0], dtype=np.uint8), np.array([200, 30, 7], dtype=np.uint8)
    run = compiled(lambda *a: fn(av, *a), mode)
    with strict():
        ours = run(*(av.tensor(a) for a in (m, f, u, v)))
    theirs = fn(torch, *(torch.tensor(a) for a in (m, f, u, v)))
    names = {torch.bool: av.bool, torch.int32: av.int32, torch.uint8: av.uint8}
    for i, (a, t) in enumerate(zip(ours, theirs)):
        assert a.dtype == names[t.dtype], i
        np.testing.assert_array_equal(a.numpy(), t.numpy(), err_msg=str(i))


def test_arange_with_float_arguments_as_torch_kernel():
    """Met beside linspace: `torch.arange(0.5, 5.7, 1.5, dtype=torch.int64)` truncates start, end and step to integers
    first ([0, 1, 2, 3, 4]; Avalon gave [0, 2, 3, 5]), and a step that truncates to zero is torch's error; a float
    arange's values are `start + step * i` rounded once from double (Avalon rounded twice in float32, an ulp off in a
    quarter of the elements; torch's vectorized loop, from 16 float32 or 8 float64 elements on, starts each group of
    lanes from a rounded value and can still differ by an ulp)."""
    for args in [(0.5, 5.7, 1.5), (0, 5.5), (-2.5, 3, 1), (1, 10, 2.5), (-2.7, 3.9, 1.2), (5, 0, -2), (5.5, -1, -1.5)]:
        np.testing.assert_array_equal(av.arange(*args, dtype=av.int64).numpy(),
                                      torch.arange(*args, dtype=torch.int64).numpy(), err_msg=str(args))
    with pytest.raises(ValueError, match="step must be nonzero"):
        av.arange(-3.0, 0.1, 0.1, dtype=av.int64)
    rng = np.random.default_rng(1)
    for _ in range(60):
        s, st = round(float(rng.uniform(-5, 5)), 2), float(rng.choice([0.1, 0.3, -0.2, 0.7, -1.3]))
        e = s + st * (int(rng.integers(1, 15)) + 0.5)
        for tdt, adt in ((torch.float32, av.float32), (torch.float64, av.float64)):
            want = torch.arange(s, e, st, dtype=tdt).numpy()
            if len(want) >= (16 if tdt is torch.float32 else 8):  # torch's vectorized loop (8 or 4 lanes, twice)
                continue
            np.testing.assert_array_equal(av.arange(s, e, st, dtype=adt).numpy(), want, err_msg=str((s, e, st)))
