"""Round 9z of port QA: programs written once over `lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon),
trained a few steps from torch's weights on random float32 data and compared with torch after every step (losses,
outputs, gradients, parameters and buffers), the first step eagerly and the rest compiled.

Programs: pclucas14/pixel-cnn-pp's PixelCNN++ (layers.py's down_shifted and down_right_shifted convs and deconvs by
`nn.ZeroPad2d` and slicing through `[int(y) for y in x.size()]`, all weight-normed by `torch.nn.utils.weight_norm`,
`nin` as a weight-normed Linear over permuted pixels, gated_resnet's concat_elu, `x += nin_skip(...)` and
`torch.chunk` gate; model.py's up and down passes over Python lists popped in reverse, `self.init_padding` made by
`Variable(torch.ones(...), requires_grad=False)` inside forward; utils.py's discretized_mix_logistic_loss with its
hand-written log_sum_exp / log_prob_from_logits, the coefficient-adjusted means, `(cdf_delta > 1e-5).float()` case
selection and `np.log(127.5)`; Adam with StepLR, on 8-bit images with the 0 and 255 edge cases); AntixK/PyTorch-VAE's
ConditionalVAE (BaseVAE with abstract methods, the class embedding as an extra image channel, `forward(input,
**kwargs)` reading `kwargs['labels']`, `loss_function(*args, **kwargs)` returning a dict with detached terms and the
`M_N` KLD weight, ExponentialLR) and BetaVAE (the 'B' loss's capacity `torch.clamp(C_max / C_stop_iter * num_iter,
0, C_max.data[0])` and `self.num_iter += 1`); bermanmaxim/LovaszSoftmax (lovasz_grad's cumsums
and `jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]`, sort descending with the permutation indexing the labels,
`torch.dot` with a `Variable`, the generator `mean` with `acc += v`, per-image hinge and softmax losses, the ignore
label by `valid.nonzero().squeeze()`); dougbrion/pytorch-classification-uncertainty's evidential losses (Dirichlet
KL by lgamma and digamma, the MSE, log and digamma forms, `torch.min` of two `torch.tensor` annealing scalars,
`get_device()` / `.to(device)`, `torch.eye(n)[labels]`, train.py's uncertainty and evidence statistics) on its LeNet.

What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`). The VAEs' `torch.randn_like`
draw is given to both sides (`reparameterize(..., eps)`); their decoders' `view(-1, 512, 2, 2)` is the small model's
`view(-1, 8, 2, 2)`; BetaVAE's `self.C_max = torch.Tensor([...])`, a plain tensor attribute (a constant in torch, state
in Avalon: README), is a non-persistent buffer. Lovász's `classes is 'present'` is written `==`; 'present' asks
`fg.sum() == 0` of the labels in Python, which a trace of labels passed in cannot (the error is tested; forward
eagerly agrees), and the ignore label's `nonzero` runs under av.value_and_grad when the labels are made inside the
function (they depend on no input) and is refused, naming the mask alternative, when they are an argument.

Not Avalon: sizes are small, gated_resnet's Dropout2d(0.5) is off, learning rates are chosen for a few steps; the VAEs
train by SGD, not the repository's Adam, because their conv biases feed batch norms (gradients of roundoff that Adam
makes lr-sized steps of, compared with a floor or skipped); PixelCNN++ runs in float64 (its summed loss's float32
roundoff reaches its smallest gradients, which Adam turns into lr-sized steps).

Found and left: av.value_and_grad gives a one-element loss of shape (1,) (BetaVAE's 'B' loss, through C) the shape
() (compiler/gradients.py `_scalar_loss`, deliberate; torch's `loss` keeps (1,)). BetaVAE's `self.num_iter += 1` is
a Python int the step reads, so each compiled step traces again (results agree; the count is written back).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import rel
from test_port_programs_30 import randn, same_grads
from test_port_programs_36 import steps_like_torch
from test_port_programs_more import pair, same_weights

import avalon as av
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache", "torch_on_one_thread")

F32 = torch.float32

# -- 1. PixelCNN++ (pclucas14/pixel-cnn-pp layers.py, model.py, utils.py, main.py) -----------------------------------

def pixelcnn_pp(lib, F_, th, nr_resnet=1, nr_filters=4, nr_logistic_mix=2, input_channels=3):
    torch, nn, F = th, lib, F_
    Variable = torch.autograd.Variable  # noqa: N806 - the repository's name
    wn = nn.utils.weight_norm

    def concat_elu(x):
        """ like concatenated ReLU (http://arxiv.org/abs/1603.05201), but then with ELU """
        # Pytorch ordering
        axis = len(x.size()) - 3
        return F.elu(torch.cat([x, -x], dim=axis))

    def down_shift(x, pad=None):
        # Pytorch ordering
        xs = [int(y) for y in x.size()]
        # when downshifting, the last row is removed
        x = x[:, :, :xs[2] - 1, :]
        # padding left, padding top
        pad = nn.ZeroPad2d((0, 0, 1, 0)) if pad is None else pad
        return pad(x)

    def right_shift(x, pad=None):
        # Pytorch ordering
        xs = [int(y) for y in x.size()]
        # when righshifting, the last column is removed
        x = x[:, :, :, :xs[3] - 1]
        # padding left, padding top
        pad = nn.ZeroPad2d((1, 0, 0, 0)) if pad is None else pad
        return pad(x)

    class nin(nn.Module):  # noqa: N801 - the repository's names
        def __init__(self, dim_in, dim_out):
            super(nin, self).__init__()  # noqa: UP008
            self.lin_a = wn(nn.Linear(dim_in, dim_out))
            self.dim_out = dim_out

        def forward(self, x):
            og_x = x  # noqa: F841
            # assumes pytorch ordering
            """ a network in network layer (1x1 CONV) """
            # TODO : try with original ordering
            x = x.permute(0, 2, 3, 1)
            shp = [int(y) for y in x.size()]
            out = self.lin_a(x.contiguous().view(shp[0] * shp[1] * shp[2], shp[3]))
            shp[-1] = self.dim_out
            out = out.view(shp)
            return out.permute(0, 3, 1, 2)

    class down_shifted_conv2d(nn.Module):  # noqa: N801
        def __init__(self, num_filters_in, num_filters_out, filter_size=(2, 3), stride=(1, 1),
                     shift_output_down=False, norm='weight_norm'):
            super(down_shifted_conv2d, self).__init__()  # noqa: UP008

            assert norm in [None, 'batch_norm', 'weight_norm']
            self.conv = nn.Conv2d(num_filters_in, num_filters_out, filter_size, stride)
            self.shift_output_down = shift_output_down
            self.norm = norm
            self.pad = nn.ZeroPad2d((int((filter_size[1] - 1) / 2),  # pad left
                                     int((filter_size[1] - 1) / 2),  # pad right
                                     filter_size[0] - 1,             # pad top
                                     0))                             # pad down

            if norm == 'weight_norm':
                self.conv = wn(self.conv)
            elif norm == 'batch_norm':
                self.bn = nn.BatchNorm2d(num_filters_out)

            if shift_output_down:
                self.down_shift = lambda x: down_shift(x, pad=nn.ZeroPad2d((0, 0, 1, 0)))

        def forward(self, x):
            x = self.pad(x)
            x = self.conv(x)
            x = self.bn(x) if self.norm == 'batch_norm' else x
            return self.down_shift(x) if self.shift_output_down else x

    class down_shifted_deconv2d(nn.Module):  # noqa: N801
        def __init__(self, num_filters_in, num_filters_out, filter_size=(2, 3), stride=(1, 1)):
            super(down_shifted_deconv2d, self).__init__()  # noqa: UP008
            self.deconv = wn(nn.ConvTranspose2d(num_filters_in, num_filters_out, filter_size, stride,
                                                output_padding=1))
            self.filter_size = filter_size
            self.stride = stride

        def forward(self, x):
            x = self.deconv(x)
            xs = [int(y) for y in x.size()]
            return x[:, :, :(xs[2] - self.filter_size[0] + 1),
                     int((self.filter_size[1] - 1) / 2):(xs[3] - int((self.filter_size[1] - 1) / 2))]

    class down_right_shifted_conv2d(nn.Module):  # noqa: N801
        def __init__(self, num_filters_in, num_filters_out, filter_size=(2, 2), stride=(1, 1),
                     shift_output_right=False, norm='weight_norm'):
            super(down_right_shifted_conv2d, self).__init__()  # noqa: UP008

            assert norm in [None, 'batch_norm', 'weight_norm']
            self.pad = nn.ZeroPad2d((filter_size[1] - 1, 0, filter_size[0] - 1, 0))
            self.conv = nn.Conv2d(num_filters_in, num_filters_out, filter_size, stride=stride)
            self.shift_output_right = shift_output_right
            self.norm = norm

            if norm == 'weight_norm':
                self.conv = wn(self.conv)
            elif norm == 'batch_norm':
                self.bn = nn.BatchNorm2d(num_filters_out)

            if shift_output_right:
                self.right_shift = lambda x: right_shift(x, pad=nn.ZeroPad2d((1, 0, 0, 0)))

        def forward(self, x):
            x = self.pad(x)
            x = self.conv(x)
            x = self.bn(x) if self.norm == 'batch_norm' else x
            return self.right_shift(x) if self.shift_output_right else x

    class down_right_shifted_deconv2d(nn.Module):  # noqa: N801
        def __init__(self, num_filters_in, num_filters_out, filter_size=(2, 2), stride=(1, 1),
                     shift_output_right=False):
            super(down_right_shifted_deconv2d, self).__init__()  # noqa: UP008
            self.deconv = wn(nn.ConvTranspose2d(num_filters_in, num_filters_out, filter_size,
                                                stride, output_padding=1))
            self.filter_size = filter_size
            self.stride = stride

        def forward(self, x):
            x = self.deconv(x)
            xs = [int(y) for y in x.size()]
            x = x[:, :, :(xs[2] - self.filter_size[0] + 1):, :(xs[3] - self.filter_size[1] + 1)]
            return x

    class gated_resnet(nn.Module):  # noqa: N801
        def __init__(self, num_filters, conv_op, nonlinearity=concat_elu, skip_connection=0):
            super(gated_resnet, self).__init__()  # noqa: UP008
            self.skip_connection = skip_connection
            self.nonlinearity = nonlinearity
            self.conv_input = conv_op(2 * num_filters, num_filters)  # cuz of concat elu

            if skip_connection != 0:
                self.nin_skip = nin(2 * skip_connection * num_filters, num_filters)

            self.dropout = nn.Dropout2d(0.5)
            self.conv_out = conv_op(2 * num_filters, 2 * num_filters)

        def forward(self, og_x, a=None):
            x = self.conv_input(self.nonlinearity(og_x))
            if a is not None:
                x += self.nin_skip(self.nonlinearity(a))
            x = self.nonlinearity(x)
            x = self.dropout(x)
            x = self.conv_out(x)
            a, b = torch.chunk(x, 2, dim=1)
            c3 = a * F.sigmoid(b)
            return og_x + c3

    class PixelCNNLayer_up(nn.Module):  # noqa: N801
        def __init__(self, nr_resnet, nr_filters, resnet_nonlinearity):
            super(PixelCNNLayer_up, self).__init__()  # noqa: UP008
            self.nr_resnet = nr_resnet
            # stream from pixels above
            self.u_stream = nn.ModuleList([gated_resnet(nr_filters, down_shifted_conv2d,
                                                        resnet_nonlinearity, skip_connection=0)
                                           for _ in range(nr_resnet)])

            # stream from pixels above and to thes left
            self.ul_stream = nn.ModuleList([gated_resnet(nr_filters, down_right_shifted_conv2d,
                                                         resnet_nonlinearity, skip_connection=1)
                                            for _ in range(nr_resnet)])

        def forward(self, u, ul):
            u_list, ul_list = [], []

            for i in range(self.nr_resnet):
                u = self.u_stream[i](u)
                ul = self.ul_stream[i](ul, a=u)
                u_list += [u]
                ul_list += [ul]

            return u_list, ul_list

    class PixelCNNLayer_down(nn.Module):  # noqa: N801
        def __init__(self, nr_resnet, nr_filters, resnet_nonlinearity):
            super(PixelCNNLayer_down, self).__init__()  # noqa: UP008
            self.nr_resnet = nr_resnet
            # stream from pixels above
            self.u_stream = nn.ModuleList([gated_resnet(nr_filters, down_shifted_conv2d,
                                                        resnet_nonlinearity, skip_connection=1)
                                           for _ in range(nr_resnet)])

            # stream from pixels above and to thes left
            self.ul_stream = nn.ModuleList([gated_resnet(nr_filters, down_right_shifted_conv2d,
                                                         resnet_nonlinearity, skip_connection=2)
                                            for _ in range(nr_resnet)])

        def forward(self, u, ul, u_list, ul_list):
            for i in range(self.nr_resnet):
                u = self.u_stream[i](u, a=u_list.pop())
                ul = self.ul_stream[i](ul, a=torch.cat((u, ul_list.pop()), 1))

            return u, ul

    class PixelCNN(nn.Module):
        def __init__(self, nr_resnet=5, nr_filters=80, nr_logistic_mix=10,
                     resnet_nonlinearity='concat_elu', input_channels=3):
            super(PixelCNN, self).__init__()  # noqa: UP008
            if resnet_nonlinearity == 'concat_elu':
                self.resnet_nonlinearity = lambda x: concat_elu(x)
            else:
                raise Exception('right now only concat elu is supported as resnet nonlinearity.')

            self.nr_filters = nr_filters
            self.input_channels = input_channels
            self.nr_logistic_mix = nr_logistic_mix
            self.right_shift_pad = nn.ZeroPad2d((1, 0, 0, 0))
            self.down_shift_pad = nn.ZeroPad2d((0, 0, 1, 0))

            down_nr_resnet = [nr_resnet] + [nr_resnet + 1] * 2
            self.down_layers = nn.ModuleList([PixelCNNLayer_down(down_nr_resnet[i], nr_filters,
                                                                 self.resnet_nonlinearity) for i in range(3)])

            self.up_layers = nn.ModuleList([PixelCNNLayer_up(nr_resnet, nr_filters,
                                                             self.resnet_nonlinearity) for _ in range(3)])

            self.downsize_u_stream = nn.ModuleList([down_shifted_conv2d(nr_filters, nr_filters,
                                                                        stride=(2, 2)) for _ in range(2)])

            self.downsize_ul_stream = nn.ModuleList([down_right_shifted_conv2d(nr_filters,
                                                                               nr_filters, stride=(2, 2))
                                                     for _ in range(2)])

            self.upsize_u_stream = nn.ModuleList([down_shifted_deconv2d(nr_filters, nr_filters,
                                                                        stride=(2, 2)) for _ in range(2)])

            self.upsize_ul_stream = nn.ModuleList([down_right_shifted_deconv2d(nr_filters,
                                                                               nr_filters, stride=(2, 2))
                                                   for _ in range(2)])

            self.u_init = down_shifted_conv2d(input_channels + 1, nr_filters, filter_size=(2, 3),
                                              shift_output_down=True)

            self.ul_init = nn.ModuleList([down_shifted_conv2d(input_channels + 1, nr_filters,
                                                              filter_size=(1, 3), shift_output_down=True),
                                          down_right_shifted_conv2d(input_channels + 1, nr_filters,
                                                                    filter_size=(2, 1), shift_output_right=True)])

            num_mix = 3 if self.input_channels == 1 else 10
            self.nin_out = nin(nr_filters, num_mix * nr_logistic_mix)
            self.init_padding = None

        def forward(self, x, sample=False):
            # similar as done in the tf repo :
            if self.init_padding is not sample:
                xs = [int(y) for y in x.size()]
                padding = Variable(torch.ones(xs[0], 1, xs[2], xs[3]), requires_grad=False)
                self.init_padding = padding.cuda() if x.is_cuda else padding

            if sample:
                xs = [int(y) for y in x.size()]
                padding = Variable(torch.ones(xs[0], 1, xs[2], xs[3]), requires_grad=False)
                padding = padding.cuda() if x.is_cuda else padding
                x = torch.cat((x, padding), 1)

            ###      UP PASS    ###  # noqa: E266
            x = x if sample else torch.cat((x, self.init_padding), 1)
            u_list = [self.u_init(x)]
            ul_list = [self.ul_init[0](x) + self.ul_init[1](x)]
            for i in range(3):
                # resnet block
                u_out, ul_out = self.up_layers[i](u_list[-1], ul_list[-1])
                u_list += u_out
                ul_list += ul_out

                if i != 2:
                    # downscale (only twice)
                    u_list += [self.downsize_u_stream[i](u_list[-1])]
                    ul_list += [self.downsize_ul_stream[i](ul_list[-1])]

            ###    DOWN PASS    ###  # noqa: E266
            u = u_list.pop()
            ul = ul_list.pop()

            for i in range(3):
                # resnet block
                u, ul = self.down_layers[i](u, ul, u_list, ul_list)

                # upscale (only twice)
                if i != 2:
                    u = self.upsize_u_stream[i](u)
                    ul = self.upsize_ul_stream[i](ul)

            x_out = self.nin_out(F.elu(ul))

            assert len(u_list) == len(ul_list) == 0

            return x_out

    model = PixelCNN(nr_resnet=nr_resnet, nr_filters=nr_filters, input_channels=input_channels,
                     nr_logistic_mix=nr_logistic_mix)
    for m in model.modules():  # gated_resnet's Dropout2d(0.5): off, so both sides draw nothing
        if isinstance(m, nn.Dropout2d):
            m.p = 0.0
    return model


def pixelcnn_pp_loss(th, F_):
    torch, F = th, F_
    Variable = torch.autograd.Variable  # noqa: N806

    def log_sum_exp(x):
        """ numerically stable log_sum_exp implementation that prevents overflow """
        # TF ordering
        axis = len(x.size()) - 1
        m, _ = torch.max(x, dim=axis)
        m2, _ = torch.max(x, dim=axis, keepdim=True)
        return m + torch.log(torch.sum(torch.exp(x - m2), dim=axis))

    def log_prob_from_logits(x):
        """ numerically stable log_softmax implementation that prevents overflow """
        # TF ordering
        axis = len(x.size()) - 1
        m, _ = torch.max(x, dim=axis, keepdim=True)
        return x - m - torch.log(torch.sum(torch.exp(x - m), dim=axis, keepdim=True))

    def discretized_mix_logistic_loss(x, l):  # noqa: E741
        """ log-likelihood for mixture of discretized logistics, assumes the data has been rescaled to [-1,1] interval """
        # Pytorch ordering
        x = x.permute(0, 2, 3, 1)
        l = l.permute(0, 2, 3, 1)  # noqa: E741
        xs = [int(y) for y in x.size()]
        ls = [int(y) for y in l.size()]

        # here and below: unpacking the params of the mixture of logistics
        nr_mix = int(ls[-1] / 10)
        logit_probs = l[:, :, :, :nr_mix]
        l = l[:, :, :, nr_mix:].contiguous().view(xs + [nr_mix * 3])  # 3 for mean, scale, coef  # noqa: E741
        means = l[:, :, :, :, :nr_mix]
        # log_scales = torch.max(l[:, :, :, :, nr_mix:2 * nr_mix], -7.)
        log_scales = torch.clamp(l[:, :, :, :, nr_mix:2 * nr_mix], min=-7.)

        coeffs = F.tanh(l[:, :, :, :, 2 * nr_mix:3 * nr_mix])
        # here and below: getting the means and adjusting them based on preceding
        # sub-pixels
        x = x.contiguous()
        x = x.unsqueeze(-1) + Variable(torch.zeros(xs + [nr_mix]), requires_grad=False)  # .cuda() there
        m2 = (means[:, :, :, 1, :] + coeffs[:, :, :, 0, :]
              * x[:, :, :, 0, :]).view(xs[0], xs[1], xs[2], 1, nr_mix)

        m3 = (means[:, :, :, 2, :] + coeffs[:, :, :, 1, :] * x[:, :, :, 0, :] +
              coeffs[:, :, :, 2, :] * x[:, :, :, 1, :]).view(xs[0], xs[1], xs[2], 1, nr_mix)

        means = torch.cat((means[:, :, :, 0, :].unsqueeze(3), m2, m3), dim=3)
        centered_x = x - means
        inv_stdv = torch.exp(-log_scales)
        plus_in = inv_stdv * (centered_x + 1. / 255.)
        cdf_plus = F.sigmoid(plus_in)
        min_in = inv_stdv * (centered_x - 1. / 255.)
        cdf_min = F.sigmoid(min_in)
        # log probability for edge case of 0 (before scaling)
        log_cdf_plus = plus_in - F.softplus(plus_in)
        # log probability for edge case of 255 (before scaling)
        log_one_minus_cdf_min = -F.softplus(min_in)
        cdf_delta = cdf_plus - cdf_min  # probability for all other cases
        mid_in = inv_stdv * centered_x
        # log probability in the center of the bin, to be used in extreme cases
        # (not actually used in our code)
        log_pdf_mid = mid_in - log_scales - 2. * F.softplus(mid_in)

        # robust version, that still works if probabilities are below 1e-5 (which never happens in our code)
        inner_inner_cond = (cdf_delta > 1e-5).float()
        inner_inner_out = inner_inner_cond * torch.log(torch.clamp(cdf_delta, min=1e-12)) + (1. - inner_inner_cond) * (log_pdf_mid - np.log(127.5))
        inner_cond = (x > 0.999).float()
        inner_out = inner_cond * log_one_minus_cdf_min + (1. - inner_cond) * inner_inner_out
        cond = (x < -0.999).float()
        log_probs = cond * log_cdf_plus + (1. - cond) * inner_out
        log_probs = torch.sum(log_probs, dim=3) + log_prob_from_logits(logit_probs)

        return -torch.sum(log_sum_exp(log_probs))

    return discretized_mix_logistic_loss


@pytest.mark.filterwarnings("ignore:.*weight_norm. is deprecated:FutureWarning")
def test_pixelcnn_pp_shifted_weight_normed_convs_and_discretized_logistic_mixture_loss():
    model, tmodel = pair(pixelcnn_pp)  # float64: the summed loss's float32 roundoff reaches Adam's tiny gradients
    # main.py: Adam(lr=0.0002) with StepLR(step_size=1, gamma=lr_decay) stepped per epoch (here per step)
    optimizer = av.optim.Adam(model.parameters(), lr=2e-3)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=2e-3)
    sched = av.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.999995 ** 1000)
    tsched = torch.optim.lr_scheduler.StepLR(toptimizer, step_size=1, gamma=0.999995 ** 1000)
    rescaling = lambda x: (x - .5) * 2.  # noqa: E731
    rng = np.random.default_rng(0)
    # 8-bit images (some 0 and 255, the edge cases), as ToTensor and rescaling leave them
    batches = [(rescaling(rng.integers(0, 256, (2, 3, 8, 8)) / 255.),) for _ in range(2)]
    tloss_op, loss_op = pixelcnn_pp_loss(torch, TF), pixelcnn_pp_loss(av, F)

    def loss_fn(model, x):
        output = model(x)
        loss = (tloss_op if isinstance(x, torch.Tensor) else loss_op)(x, output)
        return loss, output
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, sched=sched, tsched=tsched)


# -- 2. Conditional VAE (AntixK/PyTorch-VAE models/base.py, models/cvae.py; experiment.py's training_step) -----------

def cvae(lib, F_, th, in_channels=3, num_classes=4, latent_dim=3, hidden_dims=(4, 8), img_size=8):
    torch, nn, F = th, lib, F_
    from abc import abstractmethod
    from typing import Any, List  # noqa: UP035 - the repository's annotations
    Tensor = torch.Tensor  # noqa: N806

    class BaseVAE(nn.Module):

        def __init__(self) -> None:
            super(BaseVAE, self).__init__()  # noqa: UP008

        def encode(self, input: Tensor) -> List[Tensor]:  # noqa: A002, UP006
            raise NotImplementedError

        def decode(self, input: Tensor) -> Any:  # noqa: A002
            raise NotImplementedError

        def sample(self, batch_size: int, current_device: int, **kwargs) -> Tensor:
            raise NotImplementedError

        def generate(self, x: Tensor, **kwargs) -> Tensor:
            raise NotImplementedError

        @abstractmethod
        def forward(self, *inputs: Tensor) -> Tensor:
            pass

        @abstractmethod
        def loss_function(self, *inputs: Any, **kwargs) -> Tensor:
            pass

    class ConditionalVAE(BaseVAE):

        def __init__(self,
                     in_channels: int,
                     num_classes: int,
                     latent_dim: int,
                     hidden_dims: List = None,  # noqa: UP006
                     img_size: int = 64,
                     **kwargs) -> None:
            super(ConditionalVAE, self).__init__()  # noqa: UP008

            self.latent_dim = latent_dim
            self.img_size = img_size

            self.embed_class = nn.Linear(num_classes, img_size * img_size)
            self.embed_data = nn.Conv2d(in_channels, in_channels, kernel_size=1)

            modules = []
            if hidden_dims is None:
                hidden_dims = [32, 64, 128, 256, 512]

            in_channels += 1  # To account for the extra label channel
            # Build Encoder
            for h_dim in hidden_dims:
                modules.append(
                    nn.Sequential(
                        nn.Conv2d(in_channels, out_channels=h_dim,
                                  kernel_size=3, stride=2, padding=1),
                        nn.BatchNorm2d(h_dim),
                        nn.LeakyReLU())
                )
                in_channels = h_dim

            self.encoder = nn.Sequential(*modules)
            self.fc_mu = nn.Linear(hidden_dims[-1] * 4, latent_dim)
            self.fc_var = nn.Linear(hidden_dims[-1] * 4, latent_dim)

            # Build Decoder
            modules = []

            self.decoder_input = nn.Linear(latent_dim + num_classes, hidden_dims[-1] * 4)

            hidden_dims.reverse()

            for i in range(len(hidden_dims) - 1):
                modules.append(
                    nn.Sequential(
                        nn.ConvTranspose2d(hidden_dims[i],
                                           hidden_dims[i + 1],
                                           kernel_size=3,
                                           stride=2,
                                           padding=1,
                                           output_padding=1),
                        nn.BatchNorm2d(hidden_dims[i + 1]),
                        nn.LeakyReLU())
                )

            self.decoder = nn.Sequential(*modules)

            self.final_layer = nn.Sequential(
                nn.ConvTranspose2d(hidden_dims[-1],
                                   hidden_dims[-1],
                                   kernel_size=3,
                                   stride=2,
                                   padding=1,
                                   output_padding=1),
                nn.BatchNorm2d(hidden_dims[-1]),
                nn.LeakyReLU(),
                nn.Conv2d(hidden_dims[-1], out_channels=3,
                          kernel_size=3, padding=1),
                nn.Tanh())

        def encode(self, input: Tensor) -> List[Tensor]:  # noqa: A002, UP006
            result = self.encoder(input)
            result = torch.flatten(result, start_dim=1)

            # Split the result into mu and var components
            # of the latent Gaussian distribution
            mu = self.fc_mu(result)
            log_var = self.fc_var(result)

            return [mu, log_var]

        def decode(self, z: Tensor) -> Tensor:
            result = self.decoder_input(z)
            result = result.view(-1, 8, 2, 2)  # (-1, 512, 2, 2) there, its last hidden dim
            result = self.decoder(result)
            result = self.final_layer(result)
            return result

        def reparameterize(self, mu: Tensor, logvar: Tensor, eps: Tensor = None) -> Tensor:
            std = torch.exp(0.5 * logvar)
            eps = torch.randn_like(std) if eps is None else eps  # the draw is given to both sides
            return eps * std + mu

        def forward(self, input: Tensor, **kwargs) -> List[Tensor]:  # noqa: A002, UP006
            y = kwargs['labels'].float()
            embedded_class = self.embed_class(y)
            embedded_class = embedded_class.view(-1, self.img_size, self.img_size).unsqueeze(1)
            embedded_input = self.embed_data(input)

            x = torch.cat([embedded_input, embedded_class], dim=1)
            mu, log_var = self.encode(x)

            z = self.reparameterize(mu, log_var, kwargs.get('eps'))

            z = torch.cat([z, y], dim=1)
            return [self.decode(z), input, mu, log_var]

        def loss_function(self,
                          *args,
                          **kwargs) -> dict:
            recons = args[0]
            input = args[1]  # noqa: A001
            mu = args[2]
            log_var = args[3]

            kld_weight = kwargs['M_N']  # Account for the minibatch samples from the dataset
            recons_loss = F.mse_loss(recons, input)

            kld_loss = torch.mean(-0.5 * torch.sum(1 + log_var - mu ** 2 - log_var.exp(), dim=1), dim=0)

            loss = recons_loss + kld_weight * kld_loss
            return {'loss': loss, 'Reconstruction_Loss': recons_loss.detach(), 'KLD': -kld_loss.detach()}

        def sample(self, num_samples: int, current_device: int, **kwargs) -> Tensor:
            y = kwargs['labels'].float()
            z = torch.randn(num_samples, self.latent_dim)
            z = z.to(current_device)
            z = torch.cat([z, y], dim=1)
            samples = self.decode(z)
            return samples

        def generate(self, x: Tensor, **kwargs) -> Tensor:
            return self.forward(x, **kwargs)[0]

    return ConditionalVAE(in_channels=in_channels, num_classes=num_classes, latent_dim=latent_dim,
                          hidden_dims=list(hidden_dims), img_size=img_size)


def test_conditional_vae_base_vae_loss_dict_and_one_hot_labels():
    model, tmodel = pair(cvae, dtype=F32)
    # experiment.py's configure_optimizers: Adam(lr, weight_decay) with ExponentialLR(gamma=scheduler_gamma); SGD
    # here: the conv biases feed batch norms that remove them (gradients of roundoff, which Adam makes lr-sized steps of)
    optimizer = av.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    toptimizer = torch.optim.SGD(tmodel.parameters(), lr=0.05, momentum=0.9)
    sched = av.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.95)
    tsched = torch.optim.lr_scheduler.ExponentialLR(toptimizer, gamma=0.95)
    rng = np.random.default_rng(1)
    batches = [(np.tanh(randn(rng, 2, 3, 8, 8)), rng.integers(0, 4, 2), randn(rng, 2, 3)) for _ in range(3)]

    def loss_fn(model, real_img, labels, eps):
        th = torch if isinstance(real_img, torch.Tensor) else av
        labels = (TF if th is torch else F).one_hot(labels, 4)  # the dataset's one-hot labels
        results = model.forward(real_img, labels=labels, eps=eps)
        train_loss = model.loss_function(*results,
                                         M_N=0.00025,  # al_img.shape[0]/ self.num_train_imgs,
                                         optimizer_idx=0,
                                         batch_idx=0)
        # the logged dict's detached terms go out beside the reconstruction, compared with torch's
        return train_loss['loss'], (results[0], train_loss['Reconstruction_Loss'], train_loss['KLD'])
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches, floor=1e-3, sched=sched, tsched=tsched)
    with av.no_grad():
        y = F.one_hot(av.tensor([0, 3]), 4)
        samples = model.generate(av.tensor(batches[0][0]), labels=y, eps=av.tensor(batches[0][2]))
    assert tuple(samples.shape) == (2, 3, 8, 8)


# -- 3. Lovász losses (bermanmaxim/LovaszSoftmax pytorch/lovasz_losses.py) on a small segmentation net ---------------

def lovasz_losses(th, F_):
    torch, F = th, F_
    Variable = torch.autograd.Variable  # noqa: N806
    from itertools import filterfalse as ifilterfalse

    def lovasz_grad(gt_sorted):
        """
        Computes gradient of the Lovasz extension w.r.t sorted errors
        See Alg. 1 in paper
        """
        p = len(gt_sorted)
        gts = gt_sorted.sum()
        intersection = gts - gt_sorted.float().cumsum(0)
        union = gts + (1 - gt_sorted).float().cumsum(0)
        jaccard = 1. - intersection / union
        if p > 1:  # cover 1-pixel case
            jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
        return jaccard

    def lovasz_hinge(logits, labels, per_image=True, ignore=None):
        if per_image:
            loss = mean(lovasz_hinge_flat(*flatten_binary_scores(log.unsqueeze(0), lab.unsqueeze(0), ignore))
                        for log, lab in zip(logits, labels))
        else:
            loss = lovasz_hinge_flat(*flatten_binary_scores(logits, labels, ignore))
        return loss

    def lovasz_hinge_flat(logits, labels):
        if len(labels) == 0:
            # only void pixels, the gradients should be 0
            return logits.sum() * 0.
        signs = 2. * labels.float() - 1.
        errors = (1. - logits * Variable(signs))
        errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
        perm = perm.data
        gt_sorted = labels[perm]
        grad = lovasz_grad(gt_sorted)
        loss = torch.dot(F.relu(errors_sorted), Variable(grad))
        return loss

    def flatten_binary_scores(scores, labels, ignore=None):
        scores = scores.view(-1)
        labels = labels.view(-1)
        if ignore is None:
            return scores, labels
        valid = (labels != ignore)
        vscores = scores[valid]
        vlabels = labels[valid]
        return vscores, vlabels

    def lovasz_softmax(probas, labels, classes='present', per_image=False, ignore=None):
        if per_image:
            loss = mean(lovasz_softmax_flat(*flatten_probas(prob.unsqueeze(0), lab.unsqueeze(0), ignore),
                                            classes=classes)
                        for prob, lab in zip(probas, labels))
        else:
            loss = lovasz_softmax_flat(*flatten_probas(probas, labels, ignore), classes=classes)
        return loss

    def lovasz_softmax_flat(probas, labels, classes='present'):
        if probas.numel() == 0:
            # only void pixels, the gradients should be 0
            return probas * 0.
        C = probas.size(1)  # noqa: N806
        losses = []
        class_to_sum = list(range(C)) if classes in ['all', 'present'] else classes
        for c in class_to_sum:
            fg = (labels == c).float()  # foreground for class c
            if (classes == 'present' and fg.sum() == 0):  # `classes is 'present'` there
                continue
            if C == 1:
                if len(classes) > 1:
                    raise ValueError('Sigmoid output possible only with 1 class')
                class_pred = probas[:, 0]
            else:
                class_pred = probas[:, c]
            errors = (Variable(fg) - class_pred).abs()
            errors_sorted, perm = torch.sort(errors, 0, descending=True)
            perm = perm.data
            fg_sorted = fg[perm]
            losses.append(torch.dot(errors_sorted, Variable(lovasz_grad(fg_sorted))))
        return mean(losses)

    def flatten_probas(probas, labels, ignore=None):
        if probas.dim() == 3:
            # assumes output of a sigmoid layer
            B, H, W = probas.size()  # noqa: N806
            probas = probas.view(B, 1, H, W)
        B, C, H, W = probas.size()  # noqa: N806
        probas = probas.permute(0, 2, 3, 1).contiguous().view(-1, C)  # B * H * W, C = P, C
        labels = labels.view(-1)
        if ignore is None:
            return probas, labels
        valid = (labels != ignore)
        vprobas = probas[valid.nonzero().squeeze()]
        vlabels = labels[valid]
        return vprobas, vlabels

    def isnan(x):
        return x != x

    def mean(l, ignore_nan=False, empty=0):  # noqa: E741
        """
        nanmean compatible with generators.
        """
        l = iter(l)  # noqa: E741
        if ignore_nan:
            l = ifilterfalse(isnan, l)  # noqa: E741
        try:
            n = 1
            acc = next(l)
        except StopIteration:
            if empty == 'raise':
                raise ValueError('Empty mean') from None
            return empty
        for n, v in enumerate(l, 2):  # noqa: B007
            acc += v
        if n == 1:
            return acc
        return acc / n

    return lovasz_softmax, lovasz_hinge


def seg_net(lib, F_, th, classes=3):
    nn = lib

    class SegNet(nn.Module):  # a semantic head and a binary (hinge) head over a shared trunk
        def __init__(self):
            super().__init__()
            self.trunk = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True),
                                       nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(inplace=True))
            self.cls = nn.Conv2d(6, classes, 1)
            self.binary = nn.Conv2d(6, 1, 1)

        def forward(self, x):
            h = self.trunk(x)
            return self.cls(h), self.binary(h).squeeze(1)
    return SegNet()


def lovasz_loss_fn(classes, per_image):
    def loss_fn(model, x, labels, binary):
        th, F_ = (torch, TF) if isinstance(x, torch.Tensor) else (av, F)
        lovasz_softmax, lovasz_hinge = lovasz_losses(th, F_)
        out, logits = model(x)
        probas = F_.softmax(out, dim=1)
        loss = lovasz_softmax(probas, labels, classes=classes, per_image=per_image) + \
            0.5 * lovasz_hinge(logits, binary, per_image=True)
        return loss, out
    return loss_fn


def lovasz_batches(seed, n=3):
    rng = np.random.default_rng(seed)
    return [(randn(rng, 2, 3, 5, 5), rng.integers(0, 3, (2, 5, 5)), rng.integers(0, 2, (2, 5, 5))) for _ in range(n)]


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_softmax_and_hinge_by_sorted_errors_and_the_jaccard_gradient(per_image):
    model, tmodel = pair(seg_net, dtype=F32)
    optimizer = av.optim.Adam(model.parameters(), lr=1e-2)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    steps_like_torch(model, tmodel, optimizer, toptimizer, lovasz_loss_fn("all", per_image), lovasz_batches(2))


def test_lovasz_softmax_present_classes_and_ignore_labels_are_decided_by_the_data():
    """classes='present' asks `fg.sum() == 0` in Python, and flatten_probas' ignore label indexes by
    `valid.nonzero()`: both run eagerly as torch's do; under av.value_and_grad (a trace) each is an error that says so."""
    model, tmodel = pair(seg_net, dtype=F32)
    x, y, b = lovasz_batches(3, 1)[0]
    y = np.where(y == 2, 1, y)  # class 2 absent: 'present' skips it
    loss_fn = lovasz_loss_fn("present", True)
    tloss, tout = loss_fn(tmodel, *map(torch.tensor, (x, y, b)))
    loss, out = loss_fn(model, *map(av.tensor, (x, y, b)))
    assert rel(loss, tloss) < 1e-5 and rel(out, tout) < 1e-5
    with pytest.raises(av.TracerError, match="Python `if`"):
        av.value_and_grad(loss_fn, has_aux=True)(model, *map(av.tensor, (x, y, b)))

    y[0, 0, :3] = 255
    p = np.random.default_rng(4).random((2, 3, 5, 5)).astype(np.float32)
    tp = torch.tensor(p, requires_grad=True)
    tl = lovasz_losses(torch, TF)[0](TF.softmax(tp, 1), torch.tensor(y), ignore=255)
    tl.backward()
    # labels made inside the function depend on no input: nonzero and the branches are decided while tracing
    f = lambda q: lovasz_losses(av, F)[0](F.softmax(q, 1), av.tensor(y), ignore=255)  # noqa: E731
    loss, g = av.value_and_grad(f)(av.tensor(p))
    assert rel(f(av.tensor(p)), tl) < 1e-5 and rel(loss, tl) < 1e-5 and rel(g, tp.grad) < 1e-5
    # as an argument they are traced: the nonzero's size is the data's
    with pytest.raises(TypeError, match="nonzero: the result.s shape depends"):
        av.grad(lambda q, lab: lovasz_losses(av, F)[0](F.softmax(q, 1), lab, ignore=255))(av.tensor(p), av.tensor(y))


# -- 4. Evidential deep learning (dougbrion/pytorch-classification-uncertainty losses.py, helpers.py, lenet.py,
#       train.py) ------------------------------------------------------------------------------------------------------

def edl_functions(th, F_):
    torch, F = th, F_

    def get_device():
        use_cuda = torch.cuda.is_available()
        device = torch.device("cuda:0" if use_cuda else "cpu")
        return device

    def one_hot_embedding(labels, num_classes=10):
        # Convert to One Hot Encoding
        y = torch.eye(num_classes)
        return y[labels]

    def relu_evidence(y):
        return F.relu(y)

    def exp_evidence(y):
        return torch.exp(torch.clamp(y, -10, 10))

    def softplus_evidence(y):
        return F.softplus(y)

    def kl_divergence(alpha, num_classes, device=None):
        if not device:
            device = get_device()
        ones = torch.ones([1, num_classes], dtype=torch.float32, device=device)
        sum_alpha = torch.sum(alpha, dim=1, keepdim=True)
        first_term = (
            torch.lgamma(sum_alpha)
            - torch.lgamma(alpha).sum(dim=1, keepdim=True)
            + torch.lgamma(ones).sum(dim=1, keepdim=True)
            - torch.lgamma(ones.sum(dim=1, keepdim=True))
        )
        second_term = (
            (alpha - ones)
            .mul(torch.digamma(alpha) - torch.digamma(sum_alpha))
            .sum(dim=1, keepdim=True)
        )
        kl = first_term + second_term
        return kl

    def loglikelihood_loss(y, alpha, device=None):
        if not device:
            device = get_device()
        y = y.to(device)
        alpha = alpha.to(device)
        S = torch.sum(alpha, dim=1, keepdim=True)  # noqa: N806
        loglikelihood_err = torch.sum((y - (alpha / S)) ** 2, dim=1, keepdim=True)
        loglikelihood_var = torch.sum(
            alpha * (S - alpha) / (S * S * (S + 1)), dim=1, keepdim=True
        )
        loglikelihood = loglikelihood_err + loglikelihood_var
        return loglikelihood

    def mse_loss(y, alpha, epoch_num, num_classes, annealing_step, device=None):
        if not device:
            device = get_device()
        y = y.to(device)
        alpha = alpha.to(device)
        loglikelihood = loglikelihood_loss(y, alpha, device=device)

        annealing_coef = torch.min(
            torch.tensor(1.0, dtype=torch.float32),
            torch.tensor(epoch_num / annealing_step, dtype=torch.float32),
        )

        kl_alpha = (alpha - 1) * (1 - y) + 1
        kl_div = annealing_coef * kl_divergence(kl_alpha, num_classes, device=device)
        return loglikelihood + kl_div

    def edl_loss(func, y, alpha, epoch_num, num_classes, annealing_step, device=None):
        y = y.to(device)
        alpha = alpha.to(device)
        S = torch.sum(alpha, dim=1, keepdim=True)  # noqa: N806

        A = torch.sum(y * (func(S) - func(alpha)), dim=1, keepdim=True)  # noqa: N806

        annealing_coef = torch.min(
            torch.tensor(1.0, dtype=torch.float32),
            torch.tensor(epoch_num / annealing_step, dtype=torch.float32),
        )

        kl_alpha = (alpha - 1) * (1 - y) + 1
        kl_div = annealing_coef * kl_divergence(kl_alpha, num_classes, device=device)
        return A + kl_div

    def edl_mse_loss(output, target, epoch_num, num_classes, annealing_step, device=None):
        if not device:
            device = get_device()
        evidence = relu_evidence(output)
        alpha = evidence + 1
        loss = torch.mean(
            mse_loss(target, alpha, epoch_num, num_classes, annealing_step, device=device)
        )
        return loss

    def edl_log_loss(output, target, epoch_num, num_classes, annealing_step, device=None):
        if not device:
            device = get_device()
        evidence = relu_evidence(output)
        alpha = evidence + 1
        loss = torch.mean(
            edl_loss(
                torch.log, target, alpha, epoch_num, num_classes, annealing_step, device
            )
        )
        return loss

    def edl_digamma_loss(
        output, target, epoch_num, num_classes, annealing_step, device=None
    ):
        if not device:
            device = get_device()
        evidence = relu_evidence(output)
        alpha = evidence + 1
        loss = torch.mean(
            edl_loss(
                torch.digamma, target, alpha, epoch_num, num_classes, annealing_step, device
            )
        )
        return loss

    return dict(mse=edl_mse_loss, log=edl_log_loss, digamma=edl_digamma_loss, one_hot=one_hot_embedding,
                exp=exp_evidence, softplus=softplus_evidence, relu=relu_evidence, device=get_device)


def edl_lenet(lib, F_, th, dropout=False):
    nn, F = lib, F_

    class LeNet(nn.Module):
        def __init__(self, dropout=False):
            super().__init__()
            self.use_dropout = dropout
            self.conv1 = nn.Conv2d(1, 4, kernel_size=5)  # 20 there
            self.conv2 = nn.Conv2d(4, 6, kernel_size=5)  # 50 there
            self.fc1 = nn.Linear(6 * 2 * 2, 16)  # 20000 -> 500 there, on 28x28 images
            self.fc2 = nn.Linear(16, 10)

        def forward(self, x):
            x = F.relu(F.max_pool2d(self.conv1(x), 1))
            x = F.relu(F.max_pool2d(self.conv2(x), 1))
            x = x.view(x.size()[0], -1)
            x = F.relu(self.fc1(x))
            if self.use_dropout:
                x = F.dropout(x, training=self.training)
            x = self.fc2(x)
            return x
    return LeNet(dropout)


@pytest.mark.parametrize("criterion_name", ["mse", "log", "digamma"])
def test_evidential_losses_with_dirichlet_kl_by_lgamma_and_digamma(criterion_name):
    model, tmodel = pair(edl_lenet, dtype=F32)
    # main.py: Adam(lr=1e-3, weight_decay=0.005) and StepLR(step_size=7, gamma=0.1)
    optimizer = av.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.005)
    toptimizer = torch.optim.Adam(tmodel.parameters(), lr=1e-2, weight_decay=0.005)
    rng = np.random.default_rng(5)
    batches = [(randn(rng, 4, 1, 10, 10), rng.integers(0, 10, 4)) for _ in range(3)]
    num_classes, epoch = 10, 3

    def loss_fn(model, inputs, labels):
        th = torch if isinstance(inputs, torch.Tensor) else av
        fns = edl_functions(th, TF if th is torch else F)
        criterion, device = fns[criterion_name], fns["device"]()
        # train.py's uncertainty branch
        y = fns["one_hot"](labels, num_classes)
        y = y.to(device)
        outputs = model(inputs)
        _, preds = th.max(outputs, 1)
        loss = criterion(outputs, y.float(), epoch, num_classes, 10, device)

        match = th.reshape(th.eq(preds, labels).float(), (-1, 1))
        acc = th.mean(match)  # noqa: F841
        evidence = fns["relu"](outputs)
        alpha = evidence + 1
        u = num_classes / th.sum(alpha, dim=1, keepdim=True)
        total_evidence = th.sum(evidence, 1, keepdim=True)
        mean_evidence = th.mean(total_evidence)  # noqa: F841
        mean_evidence_succ = th.sum(th.sum(evidence, 1, keepdim=True) * match) / th.sum(match + 1e-20)
        mean_evidence_fail = th.sum(th.sum(evidence, 1, keepdim=True) * (1 - match)) / (th.sum(th.abs(1 - match)) + 1e-20)
        return loss, (outputs, u, mean_evidence_succ, mean_evidence_fail)
    steps_like_torch(model, tmodel, optimizer, toptimizer, loss_fn, batches)


# -- 5. Beta-VAE (AntixK/PyTorch-VAE models/beta_vae.py): Burgess et al.'s capacity-annealed loss --------------------

def beta_vae(lib, F_, th, in_channels=3, latent_dim=3, hidden_dims=(4, 8), loss_type='B'):
    torch, nn, F = th, lib, F_

    class BetaVAE(nn.Module):
        num_iter = 0  # Global static variable to keep track of iterations

        def __init__(self, in_channels, latent_dim, hidden_dims=None, beta=4, gamma=1000.,
                     max_capacity=25, Capacity_max_iter=1e5, loss_type='B', **kwargs):  # noqa: N803
            super(BetaVAE, self).__init__()  # noqa: UP008

            self.latent_dim = latent_dim
            self.beta = beta
            self.gamma = gamma
            self.loss_type = loss_type
            # `self.C_max = torch.Tensor([max_capacity])` there: a plain tensor attribute is trained state in Avalon
            # (README), so the port registers the constant as a non-persistent buffer
            self.register_buffer('C_max', torch.Tensor([max_capacity]), persistent=False)
            self.C_stop_iter = Capacity_max_iter

            modules = []
            if hidden_dims is None:
                hidden_dims = [32, 64, 128, 256, 512]

            # Build Encoder
            for h_dim in hidden_dims:
                modules.append(
                    nn.Sequential(
                        nn.Conv2d(in_channels, out_channels=h_dim,
                                  kernel_size=3, stride=2, padding=1),
                        nn.BatchNorm2d(h_dim),
                        nn.LeakyReLU())
                )
                in_channels = h_dim

            self.encoder = nn.Sequential(*modules)
            self.fc_mu = nn.Linear(hidden_dims[-1] * 4, latent_dim)
            self.fc_var = nn.Linear(hidden_dims[-1] * 4, latent_dim)

            # Build Decoder
            modules = []
            self.decoder_input = nn.Linear(latent_dim, hidden_dims[-1] * 4)
            hidden_dims.reverse()
            for i in range(len(hidden_dims) - 1):
                modules.append(
                    nn.Sequential(
                        nn.ConvTranspose2d(hidden_dims[i], hidden_dims[i + 1], kernel_size=3, stride=2,
                                           padding=1, output_padding=1),
                        nn.BatchNorm2d(hidden_dims[i + 1]),
                        nn.LeakyReLU())
                )
            self.decoder = nn.Sequential(*modules)
            self.final_layer = nn.Sequential(
                nn.ConvTranspose2d(hidden_dims[-1], hidden_dims[-1], kernel_size=3, stride=2, padding=1,
                                   output_padding=1),
                nn.BatchNorm2d(hidden_dims[-1]),
                nn.LeakyReLU(),
                nn.Conv2d(hidden_dims[-1], out_channels=3, kernel_size=3, padding=1),
                nn.Tanh())

        def encode(self, input):  # noqa: A002
            result = self.encoder(input)
            result = torch.flatten(result, start_dim=1)
            mu = self.fc_mu(result)
            log_var = self.fc_var(result)
            return [mu, log_var]

        def decode(self, z):
            result = self.decoder_input(z)
            result = result.view(-1, 8, 2, 2)  # (-1, 512, 2, 2) there
            result = self.decoder(result)
            result = self.final_layer(result)
            return result

        def reparameterize(self, mu, logvar, eps=None):
            std = torch.exp(0.5 * logvar)
            eps = torch.randn_like(std) if eps is None else eps  # the draw is given to both sides
            return eps * std + mu

        def forward(self, input, **kwargs):  # noqa: A002
            mu, log_var = self.encode(input)
            z = self.reparameterize(mu, log_var, kwargs.get('eps'))
            return [self.decode(z), input, mu, log_var]

        def loss_function(self, *args, **kwargs) -> dict:
            self.num_iter += 1
            recons = args[0]
            input = args[1]  # noqa: A001
            mu = args[2]
            log_var = args[3]
            kld_weight = kwargs['M_N']  # Account for the minibatch samples from the dataset

            recons_loss = F.mse_loss(recons, input)

            kld_loss = torch.mean(-0.5 * torch.sum(1 + log_var - mu ** 2 - log_var.exp(), dim=1), dim=0)

            if self.loss_type == 'H':  # https://openreview.net/forum?id=Sy2fzU9gl
                loss = recons_loss + self.beta * kld_weight * kld_loss
            elif self.loss_type == 'B':  # https://arxiv.org/pdf/1804.03599.pdf
                self.C_max = self.C_max.to(input.device)
                C = torch.clamp(self.C_max / self.C_stop_iter * self.num_iter, 0, self.C_max.data[0])  # noqa: N806
                loss = recons_loss + self.gamma * kld_weight * (kld_loss - C).abs()
            else:
                raise ValueError('Undefined loss type.')

            return {'loss': loss, 'Reconstruction_Loss': recons_loss, 'KLD': kld_loss}

    return BetaVAE(in_channels, latent_dim, hidden_dims=list(hidden_dims), loss_type=loss_type,
                   Capacity_max_iter=2)


@pytest.mark.parametrize("loss_type", ["B"])
def test_beta_vae_capacity_annealing_by_a_clamp_to_a_buffer_and_the_iteration_count(loss_type):
    model, tmodel = pair(lambda *a: beta_vae(*a, loss_type=loss_type), dtype=F32)
    optimizer = av.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # Adam there (see the CVAE above)
    toptimizer = torch.optim.SGD(tmodel.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(6)
    batches = [(np.tanh(randn(rng, 2, 3, 8, 8)), randn(rng, 2, 3)) for _ in range(3)]

    def loss_fn(model, real_img, eps):
        results = model.forward(real_img, eps=eps)
        train_loss = model.loss_function(*results, M_N=0.005, optimizer_idx=0, batch_idx=0)
        return train_loss['loss'], (results[0], train_loss['Reconstruction_Loss'], train_loss['KLD'])

    def train_step(model, optimizer, *batch):
        (loss, out), grads = av.value_and_grad(loss_fn, has_aux=True)(model, *batch)
        optimizer.step(grads)
        return loss, out, grads
    run = av.compile(train_step, backend="numpy")
    pre_bn_biases = {"encoder.0.0.bias", "encoder.1.0.bias", "decoder.0.0.bias", "final_layer.0.bias"}
    for it, batch in enumerate(batches):
        tloss, touts = loss_fn(tmodel, *map(torch.tensor, batch))
        toptimizer.zero_grad()
        tloss.backward()
        toptimizer.step()
        loss, outs, grads = run(model, optimizer, *map(av.tensor, batch))
        assert model.num_iter == tmodel.num_iter == it + 1  # written back on the model by the compiled step
        # the 'B' loss has C's shape (1,): av.value_and_grad gives a one-element loss shape () (gradients.py)
        assert tuple(loss.shape) == () and rel(loss, tloss.reshape(())) < 1e-5, it
        assert all(rel(a, b) < 1e-5 for a, b in zip(outs, touts)), it
        # the conv biases before batch norms have zero gradients in exact arithmetic: roundoff that gamma=1000 scales
        same_grads(grads, tmodel, 1e-4, 1e-3, skip=pre_bn_biases)
        same_weights(model, tmodel, 1e-4)
    # the count is a Python int the step reads: each step has its own signature (C's clamp saturates after 2)
    assert run.cache_info().misses == len(batches)
