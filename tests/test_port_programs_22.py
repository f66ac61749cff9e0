"""Round 9h of port QA: model-based and sequence-model RL as popular repositories write it, written once over
`lib` (torch.nn or avalon.nn), `F_` and `th` (torch or avalon), trained a few steps from torch's weights on random
float64 data and compared with torch after every step (losses, parameters, buffers), the first step eagerly and
the rest compiled (numpy and cpu backends), with warnings as errors while tracing.

Programs: DreamerV3's world model and behavior as NM512/dreamerv3-torch writes them (the RSSM with a GRUCell
deterministic path, a learned initial state by tanh(W), categorical latents through tools.OneHotDist with 1%
unimix, `torchd.independent.Independent(..., 1)`, the straight-through `sample += probs - probs.detach()` and
the mode's `one_hot + logits - logits.detach()`, `is_first` resets by masks, KL balancing by
`torchd.kl.kl_divergence` with `.detach()` on either side and free nats by `torch.clip(min=free)`, a symlog-MSE
decoder, a symlog two-hot reward head (DiscDist.log_prob's bucket counts, or bucketize/searchsorted, clipped,
the two neighbours' linear weights and one_hot), a Bernoulli continue head by softplus, imagination from the
detached posteriors with a tanh-Gaussian actor, lambda-returns by the backwards Python loop, cumprod
weights, RewardEMA's `torch.quantile` percentiles written into a buffer by `ema_vals[:] = ...` and the
normalized advantage, the two-hot critic loss, tools.RequiresGrad's freezing, three Adams with clipping); the
Decision Transformer as kzl/decision-transformer writes it (return-to-go, state, action and timestep
embeddings interleaved as (R_1, s_1, a_1, ...) by stack/permute/reshape, the stacked attention mask,
trajectory_gpt2's GPT-2 block without position embeddings written inline: Conv1D as Linear, the uint8 tril
`bias` buffer and `masked_bias`, the additive -10000 padding mask, gelu_new; actions from the state tokens by
tanh; get_batch's left padding and discount_cumsum; the MSE over the mask's rows, AdamW, the LambdaLR warmup
and clip_grad_norm_(0.25)); and TD3 as sfujim/TD3 writes it (Actor and twin-Q Critic, deep-copied targets,
target policy smoothing by clamped noise, the delayed actor update every policy_freq iterations of
`total_it`, `target_param.data.copy_(tau * param.data + (1 - tau) * target_param.data)`, two Adams).

The random draws are inputs: the RSSM's categorical samples are the Gumbel-max of given noise (OneHotDist's
`super().sample()`), the actor's Gaussian noise and TD3's `torch.randn_like(action)` are given, and the batches
are drawn with numpy. What the ports change: gradients are values (`av.value_and_grad`, `opt.step(grads)`,
clipping the gradient dict), so each loss is a function of the tensors it reads (TD3's closures over `state`
and `target_Q` take them as arguments: closed-over tensors are captured constants, README), and a loss over
a larger module than its optimizer's (Dreamer's actor loss over ImagBehavior, TD3's actor loss beside the
critic) gives that optimizer the whole gradient dict. dreamerv3-torch's float32 creations
(`torch.zeros(batch, deter)` of the initial state, RewardEMA's `torch.tensor([0.05, 0.95])`) are float64
here; RewardEMA keeps its range as a Python list and builds the tensor per call, because a tensor held by a
plain object under a module is the module's state (README: a plain float tensor attribute is trained), where
torch ignores it. obs_step's `torch.sum(is_first) > 0` branches on a tensor's value, which a traced function
cannot, so the masked reset runs whenever there is a previous state (it is the identity where no episode
starts); tools.static_scan's loop is written as a list per step and a stack. Sizes are small (4 x 4 latents,
17 buckets over [-4, 4], free nats 0.3 so that some KLs pass them, RewardEMA's alpha 0.5 so that the buffer
moves in three steps; TD3's tau is 0.05). Decision Transformer's loss selects the mask's rows by
`[attention_mask.reshape(-1) > 0]`, whose shape depends on the values (eager only, README): torch's side and
an eager evaluation run it as written, the compiled steps the same mean over the masked rows by weights.
TD3's `total_it`, a Python number the step reads, is part of the signature: each iteration traces again
(README), and the test counts the traces.

The regressions at the end are what the programs found: torch.distributions' per-family submodules
(`one_hot_categorical`, `independent`, `bernoulli`, ...) were missing; an optimizer built from a submodule's
parameters refused a larger model's gradients (the critic's, in the actor's step) instead of ignoring the
tensors it does not hold, as torch does; and an argument written in place inside a loss that av.grad traces
within av.compile (the RSSM's `prev_action *= 1.0 - is_first`) failed when written back (its target was the
enclosing trace's stand-in, which has no storage).
"""
from __future__ import annotations

import copy
import math

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


def arr(x) -> av.Tensor:
    return av.tensor(np.asarray(x))


def torch_step(model, optimizer, loss_fn, *args, clip=None, params=None):
    """torch's `opt.zero_grad(); loss.backward(); clip_grad_norm_; opt.step()` as the programs write it."""
    optimizer.zero_grad()
    loss, aux = loss_fn(model, *args)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters() if params is None else params, clip)
    optimizer.step()
    return loss.detach(), aux


def avalon_step(model, optimizer, loss_fn, *args, clip=None, params=None):
    """The port: gradients are values (README), clipped and given to the optimizer."""
    (loss, aux), grads = av.value_and_grad(loss_fn, has_aux=True)(model, *args)
    if clip is not None:
        nn_.utils.clip_grad_norm_(grads, clip)
    optimizer.step(grads)
    return loss, aux


def step_of(th):
    return torch_step if th is torch else avalon_step


# -- 1. DreamerV3's world model and imagined actor-critic (NM512/dreamerv3-torch: networks.py's RSSM, tools.py's
#       OneHotDist, DiscDist, SymlogDist, lambda_return, RewardEMA; models.py's WorldModel and ImagBehavior) ------

def symlog(x):
    return torch.sign(x) * torch.log(torch.abs(x) + 1.0) if isinstance(x, torch.Tensor) else \
        av.sign(x) * av.log(av.abs(x) + 1.0)


def symexp(x):
    return torch.sign(x) * (torch.exp(torch.abs(x)) - 1.0) if isinstance(x, torch.Tensor) else \
        av.sign(x) * (av.exp(av.abs(x)) - 1.0)


class DreamerCfg:
    obs, act, embed = 5, 2, 6
    stoch, discrete, deter, hidden = 4, 4, 8, 8  # 32 x 32 latents there
    buckets, low, high = 17, -4.0, 4.0  # 255 buckets over [-20, 20] there
    horizon, gamma, lambda_ = 3, 0.97, 0.95
    kl_free, dyn_scale, rep_scale = 0.3, 0.5, 0.1  # free nats 1.0 there: the small latents have KLs below it
    unimix_ratio = 0.01
    ema_alpha = 0.5  # 1e-2 there: see the module docstring


def dreamer(lib, F_, th, cfg=DreamerCfg, disc_form="sum"):
    torchd = th.distributions

    class OneHotDist(torchd.one_hot_categorical.OneHotCategorical):
        def __init__(self, logits=None, probs=None, unimix_ratio=0.0):
            if logits is not None and unimix_ratio > 0.0:
                probs = F_.softmax(logits, dim=-1)
                probs = probs * (1.0 - unimix_ratio) + unimix_ratio / probs.shape[-1]
                logits = th.log(probs)
                super().__init__(logits=logits, probs=None)
            else:
                super().__init__(logits=logits, probs=probs)

        def mode(self):
            _mode = F_.one_hot(th.argmax(super().logits, axis=-1), super().logits.shape[-1])
            return _mode.detach() + super().logits - super().logits.detach()

        def sample(self, gumbel):
            """`super().sample(sample_shape)` there: the draw is the Gumbel-max of the given noise."""
            logits = super().logits.detach()
            sample = F_.one_hot(th.argmax(logits + gumbel, -1), logits.shape[-1]).to(logits.dtype)
            probs = super().probs
            while len(probs.shape) < len(sample.shape):
                probs = probs[None]
            sample += probs - probs.detach()
            return sample

    class DiscDist:
        def __init__(self, logits, low=cfg.low, high=cfg.high, transfwd=symlog, transbwd=symexp):
            self.logits = logits
            self.probs = th.softmax(logits, -1)
            self.buckets = th.linspace(low, high, steps=cfg.buckets, dtype=logits.dtype)
            self.width = (self.buckets[-1] - self.buckets[0]) / cfg.buckets
            self.transfwd = transfwd
            self.transbwd = transbwd

        def mean(self):
            _mean = self.probs * self.buckets
            return self.transbwd(th.sum(_mean, dim=-1, keepdim=True))

        def mode(self):
            _mode = self.probs * self.buckets
            return self.transbwd(th.sum(_mode, dim=-1, keepdim=True))

        def log_prob(self, x):
            x = self.transfwd(x)
            if disc_form == "sum":  # as written
                below = th.sum((self.buckets <= x[..., None]).to(th.int32), dim=-1) - 1
                above = len(self.buckets) - th.sum((self.buckets > x[..., None]).to(th.int32), dim=-1)
            else:  # the bucketize / searchsorted form other ports write
                below = th.bucketize(x, self.buckets, right=True) - 1
                above = th.searchsorted(self.buckets, x, right=True)
            below = th.clip(below, 0, len(self.buckets) - 1)
            above = th.clip(above, 0, len(self.buckets) - 1)
            equal = below == above

            dist_to_below = th.where(equal, 1, th.abs(self.buckets[below] - x))
            dist_to_above = th.where(equal, 1, th.abs(self.buckets[above] - x))
            total = dist_to_below + dist_to_above
            weight_below = dist_to_above / total
            weight_above = dist_to_below / total
            target = (
                F_.one_hot(below, num_classes=len(self.buckets)) * weight_below[..., None]
                + F_.one_hot(above, num_classes=len(self.buckets)) * weight_above[..., None]
            )
            log_pred = self.logits - th.logsumexp(self.logits, -1, keepdim=True)
            target = target.squeeze(-2)
            return (target * log_pred).sum(-1)

    class SymlogDist:
        def __init__(self, mode, dist="mse", agg="sum", tol=1e-8):
            self._mode = mode
            self._dist = dist
            self._agg = agg
            self._tol = tol

        def mode(self):
            return symexp(self._mode)

        def log_prob(self, value):
            assert self._mode.shape == value.shape
            distance = (self._mode - symlog(value)) ** 2.0
            distance = th.where(distance < self._tol, 0, distance)
            loss = distance.sum(list(range(len(distance.shape)))[2:])
            return -loss

    class Bernoulli:
        def __init__(self, dist=None):
            self._dist = dist
            self.mean = dist.mean

        def log_prob(self, x):
            _logits = self._dist.base_dist.logits
            log_probs0 = -F_.softplus(_logits)
            log_probs1 = -F_.softplus(-_logits)
            return th.sum(log_probs0 * (1 - x) + log_probs1 * x, -1)

    class MLP(lib.Module):
        def __init__(self, inp_dim, shape, layers=1, units=8, dist="mse"):
            super().__init__()
            self._dist = dist
            self.layers = lib.Sequential()
            for i in range(layers):
                self.layers.add_module(f"{i}_linear", lib.Linear(inp_dim, units, bias=False))
                self.layers.add_module(f"{i}_norm", lib.LayerNorm(units, eps=1e-03))
                self.layers.add_module(f"{i}_act", lib.SiLU())
                inp_dim = units
            self.mean_layer = lib.Linear(inp_dim, shape)

        def forward(self, features):
            mean = self.mean_layer(self.layers(features))
            if self._dist == "symlog_disc":
                return DiscDist(logits=mean)
            if self._dist == "symlog_mse":
                return SymlogDist(mean)
            if self._dist == "binary":
                return Bernoulli(torchd.independent.Independent(torchd.bernoulli.Bernoulli(logits=mean), 1))
            return mean

    class RSSM(lib.Module):
        def __init__(self, num_actions, embed):
            super().__init__()
            self._stoch, self._discrete, self._deter = cfg.stoch, cfg.discrete, cfg.deter
            self._hidden = cfg.hidden
            self._unimix_ratio = cfg.unimix_ratio
            self._num_actions = num_actions
            inp_dim = self._stoch * self._discrete + num_actions
            self._img_in_layers = lib.Sequential(lib.Linear(inp_dim, self._hidden, bias=False),
                                                 lib.LayerNorm(self._hidden, eps=1e-03), lib.SiLU())
            self._cell = lib.GRUCell(self._hidden, self._deter)
            self._img_out_layers = lib.Sequential(lib.Linear(self._deter, self._hidden, bias=False),
                                                  lib.LayerNorm(self._hidden, eps=1e-03), lib.SiLU())
            self._obs_out_layers = lib.Sequential(lib.Linear(self._deter + embed, self._hidden, bias=False),
                                                  lib.LayerNorm(self._hidden, eps=1e-03), lib.SiLU())
            self._imgs_stat_layer = lib.Linear(self._hidden, self._stoch * self._discrete)
            self._obs_stat_layer = lib.Linear(self._hidden, self._stoch * self._discrete)
            self.W = lib.Parameter(th.zeros((1, self._deter)), requires_grad=True)

        def initial(self, batch_size):
            deter = th.zeros(batch_size, self._deter, dtype=self.W.dtype)  # float32 there
            state = dict(logit=th.zeros([batch_size, self._stoch, self._discrete], dtype=self.W.dtype),
                         stoch=th.zeros([batch_size, self._stoch, self._discrete], dtype=self.W.dtype),
                         deter=deter)
            state["deter"] = th.tanh(self.W).repeat(batch_size, 1)
            state["stoch"] = self.get_stoch(state["deter"])
            return state

        def observe(self, embed, action, is_first, noise, state=None):
            swap = lambda x: x.permute([1, 0] + list(range(2, len(x.shape))))  # noqa: E731
            embed, action, is_first, noise = swap(embed), swap(action), swap(is_first), swap(noise)
            posts, priors = [], []
            for t in range(action.shape[0]):  # tools.static_scan there
                post, prior = self.obs_step(state, action[t], embed[t], is_first[t], noise[t])
                posts.append(dict(post))  # static_scan copies each step's state into its outputs
                priors.append(dict(prior))
                state = post
            post = {k: swap(th.stack([p[k] for p in posts], 0)) for k in posts[0]}
            prior = {k: swap(th.stack([p[k] for p in priors], 0)) for k in priors[0]}
            return post, prior

        def get_feat(self, state):
            stoch = state["stoch"]
            shape = list(stoch.shape[:-2]) + [self._stoch * self._discrete]
            stoch = stoch.reshape(shape)
            return th.cat([stoch, state["deter"]], -1)

        def get_dist(self, state, dtype=None):
            logit = state["logit"]
            return torchd.independent.Independent(OneHotDist(logit, unimix_ratio=self._unimix_ratio), 1)

        def obs_step(self, prev_state, prev_action, embed, is_first, noise, sample=True):
            # initialize all prev_state
            if prev_state is None:
                prev_state = self.initial(len(is_first))
                prev_action = th.zeros((len(is_first), self._num_actions), dtype=embed.dtype)
            # overwrite the prev_state only where is_first=True (`elif torch.sum(is_first) > 0:` there)
            else:
                is_first = is_first[:, None]
                prev_action *= 1.0 - is_first
                init_state = self.initial(len(is_first))
                for key, val in prev_state.items():
                    is_first_r = th.reshape(is_first, is_first.shape + (1,) * (len(val.shape) - len(is_first.shape)))
                    prev_state[key] = val * (1.0 - is_first_r) + init_state[key] * is_first_r

            prior = self.img_step(prev_state, prev_action, noise[:, 0])
            x = th.cat([prior["deter"], embed], -1)
            x = self._obs_out_layers(x)
            stats = self._suff_stats_layer("obs", x)
            stoch = self.get_dist(stats).sample(noise[:, 1]) if sample else self.get_dist(stats).mode()
            post = {"stoch": stoch, "deter": prior["deter"], **stats}
            return post, prior

        def img_step(self, prev_state, prev_action, noise, sample=True):
            prev_stoch = prev_state["stoch"]
            shape = list(prev_stoch.shape[:-2]) + [self._stoch * self._discrete]
            prev_stoch = prev_stoch.reshape(shape)
            x = th.cat([prev_stoch, prev_action], -1)
            x = self._img_in_layers(x)
            deter = self._cell(x, prev_state["deter"])
            x = self._img_out_layers(deter)
            stats = self._suff_stats_layer("ims", x)
            stoch = self.get_dist(stats).sample(noise) if sample else self.get_dist(stats).mode()
            prior = {"stoch": stoch, "deter": deter, **stats}
            return prior

        def get_stoch(self, deter):
            x = self._img_out_layers(deter)
            stats = self._suff_stats_layer("ims", x)
            dist = self.get_dist(stats)
            return dist.mode()  # Independent.mode, a property, is OneHotDist's mode method

        def _suff_stats_layer(self, name, x):
            if name == "ims":
                x = self._imgs_stat_layer(x)
            elif name == "obs":
                x = self._obs_stat_layer(x)
            logit = x.reshape(list(x.shape[:-1]) + [self._stoch, self._discrete])
            return {"logit": logit}

        def kl_loss(self, post, prior, free, dyn_scale, rep_scale):
            kld = torchd.kl.kl_divergence
            dist = lambda x: self.get_dist(x)  # noqa: E731
            sg = lambda x: {k: v.detach() for k, v in x.items()}  # noqa: E731

            rep_loss = value = kld(dist(post), dist(sg(prior)))
            dyn_loss = kld(dist(sg(post)), dist(prior))
            # this is implemented using maximum at the original repo as the gradients are not backpropagated for
            # the out of limits.
            rep_loss = th.clip(rep_loss, min=free)
            dyn_loss = th.clip(dyn_loss, min=free)
            loss = dyn_scale * dyn_loss + rep_scale * rep_loss
            return loss, value, dyn_loss, rep_loss

    class WorldModel(lib.Module):
        def __init__(self):
            super().__init__()
            self.encoder = lib.Sequential(lib.Linear(cfg.obs, cfg.embed, bias=False),
                                          lib.LayerNorm(cfg.embed, eps=1e-03), lib.SiLU())
            self.dynamics = RSSM(cfg.act, cfg.embed)
            feat_size = cfg.stoch * cfg.discrete + cfg.deter
            self.heads = lib.ModuleDict()
            self.heads["decoder"] = MLP(feat_size, cfg.obs, dist="symlog_mse")
            self.heads["reward"] = MLP(feat_size, cfg.buckets, dist="symlog_disc")
            self.heads["cont"] = MLP(feat_size, 1, dist="binary")
            self._scales = dict(reward=1.0, cont=1.0)

        def loss(self, data, noise):
            embed = self.encoder(symlog(data["obs"]))
            post, prior = self.dynamics.observe(embed, data["action"], data["is_first"], noise)
            kl_loss, kl_value, dyn_loss, rep_loss = self.dynamics.kl_loss(
                post, prior, cfg.kl_free, cfg.dyn_scale, cfg.rep_scale)
            preds = {}
            for name, head in self.heads.items():
                feat = self.dynamics.get_feat(post)
                preds[name] = head(feat)
            losses = {}
            for name, pred in preds.items():
                target = data["obs"] if name == "decoder" else data[name]
                losses[name] = -pred.log_prob(target)
            scaled = {key: value * self._scales.get(key, 1.0) for key, value in losses.items()}
            model_loss = sum(scaled.values()) + kl_loss
            post = {k: v.detach() for k, v in post.items()}
            return th.mean(model_loss), (post, th.stack([kl_value.mean(), dyn_loss.mean(), rep_loss.mean()]))

    class ImagBehavior(lib.Module):
        def __init__(self):
            super().__init__()
            feat_size = cfg.stoch * cfg.discrete + cfg.deter
            self.actor = MLP(feat_size, 2 * cfg.act)
            self.value = MLP(feat_size, cfg.buckets, dist="symlog_disc")
            self.register_buffer("ema_vals", th.zeros((2,)))
            self.reward_ema = RewardEMA(alpha=cfg.ema_alpha)

        def act(self, feat, noise):
            mean, std = th.split(self.actor(feat), [cfg.act] * 2, -1)
            std = 2 * th.sigmoid(std / 2) + 0.1
            return th.tanh(mean + std * noise)  # rsample of the tanh-Normal there

        def _imagine(self, dynamics, start, noise):
            flatten = lambda x: x.reshape([-1] + list(x.shape[2:]))  # noqa: E731
            start = {k: flatten(v) for k, v in start.items()}
            feats, states, actions = [], [], []
            state = start
            for t in range(cfg.horizon):
                feat = dynamics.get_feat(state)
                action = self.act(feat.detach(), noise["action"][t])
                state = dynamics.img_step(state, action, noise["stoch"][t])
                feats.append(dynamics.get_feat(state))
                states.append(state)
                actions.append(action)
            return th.stack(feats, 0), states, th.stack(actions, 0)

        def _compute_target(self, world_model, imag_feat):
            reward = world_model.heads["reward"](imag_feat).mode()
            discount = cfg.gamma * world_model.heads["cont"](imag_feat).mean
            value = self.value(imag_feat).mode()
            target = lambda_return(reward[1:], value[:-1], discount[1:], bootstrap=value[-1],
                                   lambda_=cfg.lambda_, axis=0)
            weights = th.cumprod(th.cat([th.ones_like(discount[:1]), discount[:-1]], 0), 0).detach()
            return target, weights, value[:-1]

        def actor_loss(self, world_model, start, noise):
            imag_feat, imag_state, imag_action = self._imagine(world_model.dynamics, start, noise)
            target, weights, base = self._compute_target(world_model, imag_feat)
            target = th.stack(target, dim=0)  # (time, batch, 1): a list over time here, over the batch there
            offset, scale = self.reward_ema(target, self.ema_vals)
            normed_target = (target - offset) / scale
            normed_base = (base - offset) / scale
            adv = normed_target - normed_base
            actor_loss = -weights[:-1] * adv
            return th.mean(actor_loss), (imag_feat.detach(), target.detach(), weights)

        def value_loss(self, imag_feat, target, weights):
            value = self.value(imag_feat[:-1].detach())
            value_loss = -value.log_prob(target.detach())
            return th.mean(weights[:-1] * value_loss[:, :, None]), None

    class RewardEMA:
        """running mean and std"""

        def __init__(self, alpha=1e-2):
            self.alpha = alpha
            self.range = [0.05, 0.95]  # th.tensor([0.05, 0.95], device=device) there: see the module docstring

        def __call__(self, x, ema_vals):
            flat_x = th.flatten(x.detach())
            x_quantile = th.quantile(input=flat_x, q=th.tensor(self.range, dtype=flat_x.dtype))
            # this should be in-place operation
            ema_vals[:] = self.alpha * x_quantile + (1 - self.alpha) * ema_vals
            scale = th.clip(ema_vals[1] - ema_vals[0], min=1.0)
            offset = ema_vals[0]
            return offset.detach(), scale.detach()

    def lambda_return(reward, value, pcont, bootstrap, lambda_, axis):
        # Setting lambda=1 gives a discounted Monte Carlo return.
        # Setting lambda=0 gives a fixed 1-step return.
        assert len(reward.shape) == len(value.shape), (reward.shape, value.shape)
        if isinstance(pcont, (int, float)):
            pcont = pcont * th.ones_like(reward)
        if bootstrap is None:
            bootstrap = th.zeros_like(value[-1])
        next_values = th.cat([value[1:], bootstrap[None]], 0)
        inputs = reward + pcont * next_values * (1 - lambda_)
        last = bootstrap
        outputs = []
        for index in reversed(range(inputs.shape[0])):  # static_scan_for_lambda_return's loop
            last = inputs[index] + pcont[index] * lambda_ * last
            outputs.append(last)
        return list(reversed(outputs))

    class Dreamer(lib.Module):
        def __init__(self):
            super().__init__()
            self._wm = WorldModel()
            self._task_behavior = ImagBehavior()
    return Dreamer()


def dreamer_setup(th, agent):
    optim_ = th.optim
    wm, behavior = agent._wm, agent._task_behavior
    return (optim_.Adam(wm.parameters(), lr=1e-3, eps=1e-8), optim_.Adam(behavior.actor.parameters(), lr=1e-3,
                                                                          eps=1e-5),
            optim_.Adam(behavior.value.parameters(), lr=1e-3, eps=1e-5))


class RequiresGrad:  # tools.py's: every module but the one a loss trains is frozen after its first step
    def __init__(self, model):
        self._model = model

    def __enter__(self):
        self._model.requires_grad_(requires_grad=True)

    def __exit__(self, *args):
        self._model.requires_grad_(requires_grad=False)


def dreamer_train(th):
    step_fn = step_of(th)

    def model_loss(wm, data, noise):
        return wm.loss(data, noise)

    def actor_loss(behavior, wm, start, noise):
        return behavior.actor_loss(wm, start, noise)

    def value_loss(behavior, imag_feat, target, weights):
        return behavior.value_loss(imag_feat, target, weights)

    def train(agent, model_opt, actor_opt, value_opt, obs, action, reward, cont, is_first, noise, act_noise,
              stoch_noise):
        """Dreamer._train: the world model's step, then the behavior's from its posteriors (`start`)."""
        data = dict(obs=obs, action=action, reward=reward, cont=cont, is_first=is_first)
        wm, behavior = agent._wm, agent._task_behavior
        with RequiresGrad(wm):
            loss, (post, kl) = step_fn(wm, model_opt, model_loss, data, noise, clip=100.0)
        with RequiresGrad(behavior.actor):
            aloss, (imag_feat, target, weights) = step_fn(
                behavior, actor_opt, actor_loss, wm, post, dict(action=act_noise, stoch=stoch_noise), clip=100.0,
                params=behavior.actor.parameters())
        with RequiresGrad(behavior.value):
            vloss, _ = step_fn(behavior, value_opt, value_loss, imag_feat, target, weights, clip=100.0,
                               params=behavior.value.parameters())
        return th.stack([loss, aloss, vloss]), kl, target
    return train


def dreamer_batch(rng, B=3, L=4, cfg=DreamerCfg):
    is_first = np.zeros((B, L))
    is_first[:, 0] = 1
    is_first[rng.integers(0, B), rng.integers(1, L)] = 1  # an episode starts inside the chunk
    H, N = cfg.horizon, B * L
    return (rng.standard_normal((B, L, cfg.obs)) * 2, rng.uniform(-1, 1, (B, L, cfg.act)),
            rng.standard_normal((B, L, 1)) * 3, (rng.random((B, L, 1)) < 0.8).astype(np.float64), is_first,
            rng.gumbel(size=(B, L, 2, cfg.stoch, cfg.discrete)), rng.standard_normal((H, N, cfg.act)),
            rng.gumbel(size=(H, N, cfg.stoch, cfg.discrete)))


@pytest.mark.parametrize("disc_form,mode", [("sum", "numpy"), ("searchsorted", "cpu")])
def test_dreamerv3_rssm_kl_balance_two_hot_symlog_lambda_returns_and_percentile_ema(disc_form, mode):
    ours, theirs = pair(lambda lib, F_, th: dreamer(lib, F_, th, disc_form=disc_form))
    opts, topts = dreamer_setup(av, ours), dreamer_setup(torch, theirs)
    step, tstep = dreamer_train(av), dreamer_train(torch)
    run = compiled(step, mode)
    rng = np.random.default_rng(0)
    for it in range(3):
        batch = dreamer_batch(rng)
        tlosses, tkl, ttarget = tstep(theirs, *topts, *map(T, batch))
        with strict():
            losses, kl, target = (run if it else step)(ours, *opts, *map(arr, batch))
        assert rel(losses, tlosses) < 1e-12 and rel(kl, tkl) < 1e-12 and rel(target, ttarget) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1


# -- 2. Decision Transformer (kzl/decision-transformer: gym/decision_transformer/models/decision_transformer.py,
#       trajectory_gpt2.py's GPT2 without position embeddings, training/seq_trainer.py, experiment.py) ----------

class DTCfg:
    state_dim, act_dim, hidden_size, n_head, n_layer, max_ep_len, K = 3, 2, 8, 2, 1, 12, 4


def decision_transformer(lib, F_, th, cfg=DTCfg):
    def gelu_new(x):
        return 0.5 * x * (1.0 + th.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * th.pow(x, 3.0))))

    class Attention(lib.Module):
        def __init__(self, nx, n_ctx, n_head, scale=True):
            super().__init__()
            self.register_buffer("bias", th.tril(th.ones((n_ctx, n_ctx), dtype=th.uint8)).view(1, 1, n_ctx, n_ctx))
            self.register_buffer("masked_bias", th.tensor(-1e4))
            self.n_head = n_head
            self.split_size = nx
            self.scale = scale
            self.c_attn = lib.Linear(nx, 3 * nx)  # Conv1D(3 * n_state, nx) there: a transposed Linear
            self.c_proj = lib.Linear(nx, nx)
            self.attn_dropout = lib.Dropout(0.0)
            self.resid_dropout = lib.Dropout(0.0)

        def _attn(self, q, k, v, attention_mask=None):
            w = th.matmul(q, k)
            if self.scale:
                w = w / (float(v.size(-1)) ** 0.5)
            nd, ns = w.size(-2), w.size(-1)
            mask = self.bias[:, :, ns - nd: ns, :ns]
            w = th.where(mask.bool(), w, self.masked_bias.to(w.dtype))
            if attention_mask is not None:
                w = w + attention_mask
            w = lib.Softmax(dim=-1)(w)
            w = self.attn_dropout(w)
            return th.matmul(w, v)

        def merge_heads(self, x):
            x = x.permute(0, 2, 1, 3).contiguous()
            new_x_shape = x.size()[:-2] + (x.size(-2) * x.size(-1),)
            return x.view(*new_x_shape)

        def split_heads(self, x, k=False):
            new_x_shape = x.size()[:-1] + (self.n_head, x.size(-1) // self.n_head)
            x = x.view(*new_x_shape)
            if k:
                return x.permute(0, 2, 3, 1)  # (batch, head, head_features, seq_length)
            return x.permute(0, 2, 1, 3)  # (batch, head, seq_length, head_features)

        def forward(self, hidden_states, attention_mask=None):
            query, key, value = self.c_attn(hidden_states).split(self.split_size, dim=2)
            query = self.split_heads(query)
            key = self.split_heads(key, k=True)
            value = self.split_heads(value)
            a = self._attn(query, key, value, attention_mask)
            a = self.merge_heads(a)
            a = self.c_proj(a)
            return self.resid_dropout(a)

    class MLP(lib.Module):
        def __init__(self, n_state, nx):
            super().__init__()
            self.c_fc = lib.Linear(nx, n_state)
            self.c_proj = lib.Linear(n_state, nx)
            self.dropout = lib.Dropout(0.0)

        def forward(self, x):
            return self.dropout(self.c_proj(gelu_new(self.c_fc(x))))

    class Block(lib.Module):
        def __init__(self, n_ctx, hidden_size, n_head):
            super().__init__()
            self.ln_1 = lib.LayerNorm(hidden_size, eps=1e-5)
            self.attn = Attention(hidden_size, n_ctx, n_head, scale=True)
            self.ln_2 = lib.LayerNorm(hidden_size, eps=1e-5)
            self.mlp = MLP(4 * hidden_size, hidden_size)

        def forward(self, hidden_states, attention_mask=None):
            attn_output = self.attn(self.ln_1(hidden_states), attention_mask=attention_mask)
            hidden_states = attn_output + hidden_states
            feed_forward_hidden_states = self.mlp(self.ln_2(hidden_states))
            return hidden_states + feed_forward_hidden_states

    class GPT2Model(lib.Module):
        def __init__(self, hidden_size, n_layer, n_head, n_positions):
            super().__init__()
            self.drop = lib.Dropout(0.0)
            self.h = lib.ModuleList([Block(n_positions, hidden_size, n_head) for _ in range(n_layer)])
            self.ln_f = lib.LayerNorm(hidden_size, eps=1e-5)

        def forward(self, inputs_embeds, attention_mask):
            batch_size = inputs_embeds.shape[0]
            attention_mask = attention_mask.view(batch_size, -1)
            attention_mask = attention_mask[:, None, None, :]
            attention_mask = attention_mask.to(dtype=inputs_embeds.dtype)  # fp16 compatibility
            attention_mask = (1.0 - attention_mask) * -10000.0
            hidden_states = self.drop(inputs_embeds)  # no position embeddings (trajectory_gpt2's wpe removed)
            for block in self.h:
                hidden_states = block(hidden_states, attention_mask=attention_mask)
            return {"last_hidden_state": self.ln_f(hidden_states)}

    class DecisionTransformer(lib.Module):
        def __init__(self, state_dim, act_dim, hidden_size, max_length=None, max_ep_len=4096,
                     action_tanh=True):
            super().__init__()
            self.state_dim, self.act_dim, self.max_length = state_dim, act_dim, max_length
            self.hidden_size = hidden_size
            self.transformer = GPT2Model(hidden_size, cfg.n_layer, cfg.n_head, 3 * cfg.K)
            self.embed_timestep = lib.Embedding(max_ep_len, hidden_size)
            self.embed_return = lib.Linear(1, hidden_size)
            self.embed_state = lib.Linear(self.state_dim, hidden_size)
            self.embed_action = lib.Linear(self.act_dim, hidden_size)
            self.embed_ln = lib.LayerNorm(hidden_size)
            self.predict_state = lib.Linear(hidden_size, self.state_dim)
            self.predict_action = lib.Sequential(
                *([lib.Linear(hidden_size, self.act_dim)] + ([lib.Tanh()] if action_tanh else [])))
            self.predict_return = lib.Linear(hidden_size, 1)

        def forward(self, states, actions, rewards, returns_to_go, timesteps, attention_mask=None):
            batch_size, seq_length = states.shape[0], states.shape[1]
            if attention_mask is None:
                # attention mask for GPT: 1 if can be attended to, 0 if not
                attention_mask = th.ones((batch_size, seq_length), dtype=th.long)
            # embed each modality with a different head
            state_embeddings = self.embed_state(states)
            action_embeddings = self.embed_action(actions)
            returns_embeddings = self.embed_return(returns_to_go)
            time_embeddings = self.embed_timestep(timesteps)
            # time embeddings are treated similar to positional embeddings
            state_embeddings = state_embeddings + time_embeddings
            action_embeddings = action_embeddings + time_embeddings
            returns_embeddings = returns_embeddings + time_embeddings
            # this makes the sequence look like (R_1, s_1, a_1, R_2, s_2, a_2, ...)
            # which works nice in an autoregressive sense since states predict actions
            stacked_inputs = th.stack(
                (returns_embeddings, state_embeddings, action_embeddings), dim=1
            ).permute(0, 2, 1, 3).reshape(batch_size, 3 * seq_length, self.hidden_size)
            stacked_inputs = self.embed_ln(stacked_inputs)
            # to make the attention mask fit the stacked inputs, have to stack it as well
            stacked_attention_mask = th.stack(
                (attention_mask, attention_mask, attention_mask), dim=1
            ).permute(0, 2, 1).reshape(batch_size, 3 * seq_length)
            # we feed in the input embeddings (not word embeddings as in NLP) to the model
            transformer_outputs = self.transformer(inputs_embeds=stacked_inputs, attention_mask=stacked_attention_mask)
            x = transformer_outputs['last_hidden_state']
            # reshape x so that the second dimension corresponds to the original
            # returns (0), states (1), or actions (2); i.e. x[:,1,t] is the token for s_t
            x = x.reshape(batch_size, seq_length, 3, self.hidden_size).permute(0, 2, 1, 3)
            # get predictions
            return_preds = self.predict_return(x[:, 2])  # predict next return given state and action
            state_preds = self.predict_state(x[:, 2])  # predict next state given state and action
            action_preds = self.predict_action(x[:, 1])  # predict next action given state
            return state_preds, action_preds, return_preds
    return DecisionTransformer(cfg.state_dim, cfg.act_dim, cfg.hidden_size, max_length=cfg.K,
                               max_ep_len=cfg.max_ep_len)


def discount_cumsum(x, gamma):
    discount_cumsum = np.zeros_like(x)
    discount_cumsum[-1] = x[-1]
    for t in reversed(range(x.shape[0] - 1)):
        discount_cumsum[t] = x[t] + gamma * discount_cumsum[t + 1]
    return discount_cumsum


def dt_get_batch(rng, batch_size=3, cfg=DTCfg, scale=10.0):
    """experiment.py's get_batch over random trajectories: the K-step windows left-padded (zeros, actions by
    -10) with the attention mask, the returns-to-go by discount_cumsum / scale."""
    max_len, s, a, r, d, rtg, timesteps, mask = cfg.K, [], [], [], [], [], [], []
    for _ in range(batch_size):
        T_ = int(rng.integers(3, 9))
        traj = dict(observations=rng.standard_normal((T_, cfg.state_dim)), actions=rng.uniform(-1, 1, (T_, cfg.act_dim)),
                    rewards=rng.standard_normal(T_), terminals=np.zeros(T_))
        si = int(rng.integers(0, T_))
        s.append(traj['observations'][si:si + max_len].reshape(1, -1, cfg.state_dim))
        a.append(traj['actions'][si:si + max_len].reshape(1, -1, cfg.act_dim))
        r.append(traj['rewards'][si:si + max_len].reshape(1, -1, 1))
        d.append(traj['terminals'][si:si + max_len].reshape(1, -1))
        timesteps.append(np.arange(si, si + s[-1].shape[1]).reshape(1, -1))
        timesteps[-1][timesteps[-1] >= cfg.max_ep_len] = cfg.max_ep_len - 1  # padding cutoff
        rtg.append(discount_cumsum(traj['rewards'][si:], gamma=1.)[:s[-1].shape[1] + 1].reshape(1, -1, 1))
        if rtg[-1].shape[1] <= s[-1].shape[1]:
            rtg[-1] = np.concatenate([rtg[-1], np.zeros((1, 1, 1))], axis=1)
        # padding and state + reward normalization
        tlen = s[-1].shape[1]
        s[-1] = np.concatenate([np.zeros((1, max_len - tlen, cfg.state_dim)), s[-1]], axis=1)
        a[-1] = np.concatenate([np.ones((1, max_len - tlen, cfg.act_dim)) * -10., a[-1]], axis=1)
        r[-1] = np.concatenate([np.zeros((1, max_len - tlen, 1)), r[-1]], axis=1)
        d[-1] = np.concatenate([np.ones((1, max_len - tlen)) * 2, d[-1]], axis=1)
        rtg[-1] = np.concatenate([np.zeros((1, max_len - tlen, 1)), rtg[-1]], axis=1) / scale
        timesteps[-1] = np.concatenate([np.zeros((1, max_len - tlen)), timesteps[-1]], axis=1)
        mask.append(np.concatenate([np.zeros((1, max_len - tlen)), np.ones((1, tlen))], axis=1))
    return (np.concatenate(s, 0), np.concatenate(a, 0), np.concatenate(r, 0), np.concatenate(d, 0),
            np.concatenate(rtg, 0), np.concatenate(timesteps, 0).astype(np.int64),
            np.concatenate(mask, 0).astype(np.int64))


def dt_loss(model, states, actions, rewards, dones, rtg, timesteps, attention_mask, as_written=False):
    """SequenceTrainer.train_step's loss; `as_written` selects the rows by `[attention_mask.reshape(-1) > 0]`
    (a shape set by the mask's values: eager only), else the same mean over the masked rows by weights."""
    action_target = actions.clone()  # torch.clone(actions) there
    state_preds, action_preds, reward_preds = model.forward(
        states, actions, rewards, rtg[:, :-1], timesteps, attention_mask=attention_mask)
    act_dim = action_preds.shape[2]
    if as_written:
        action_preds = action_preds.reshape(-1, act_dim)[attention_mask.reshape(-1) > 0]
        action_target = action_target.reshape(-1, act_dim)[attention_mask.reshape(-1) > 0]
        return ((action_preds - action_target) ** 2).mean()  # loss_fn: torch.mean((a_hat - a)**2)
    m = (attention_mask.reshape(-1) > 0).to(action_preds.dtype)[:, None]
    sq = (action_preds.reshape(-1, act_dim) - action_target.reshape(-1, act_dim)) ** 2
    return (sq * m).sum() / (m.sum() * act_dim)


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_decision_transformer_interleaved_tokens_causal_gpt_masked_mse_adamw_warmup(mode):
    ours, theirs = pair(decision_transformer)
    warmup_steps = 3
    kw = dict(lr=1e-3, weight_decay=1e-4)
    opt, topt = optim.AdamW(ours.parameters(), **kw), torch.optim.AdamW(theirs.parameters(), **kw)
    sched = optim.lr_scheduler.LambdaLR(opt, lambda steps: min((steps + 1) / warmup_steps, 1))
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambda steps: min((steps + 1) / warmup_steps, 1))

    def train_step(model, opt, *batch):
        loss, grads = av.value_and_grad(dt_loss)(model, *batch)
        nn_.utils.clip_grad_norm_(grads, .25)
        opt.step(grads)
        return loss
    run = compiled(train_step, mode)
    rng = np.random.default_rng(1)
    for it in range(4):
        batch = dt_get_batch(rng)
        assert batch[-1].min() == 0  # some windows are padded
        topt.zero_grad()
        tl = dt_loss(theirs, *map(T, batch), as_written=True)
        tl.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), .25)
        topt.step()
        tsched.step()
        with strict():
            loss = (run if it else train_step)(ours, opt, *map(arr, batch))
        sched.step()
        assert rel(loss, tl) < 1e-12, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1
    batch = dt_get_batch(rng)
    with torch.no_grad():
        want = dt_loss(theirs, *map(T, batch), as_written=True)
    with av.no_grad():
        got = dt_loss(ours, *map(arr, batch), as_written=True)
    assert rel(got, want) < 1e-12


# -- 3. TD3 (sfujim/TD3: TD3.py) ----------------------------------------------------------------------------------

TD3_STATE, TD3_ACTION, TD3_MAX_ACTION, TD3_HIDDEN = 4, 2, 2.0, 16  # 256 hidden there


def td3_nets(lib, F_, th, state_dim=TD3_STATE, action_dim=TD3_ACTION, max_action=TD3_MAX_ACTION):
    class Actor(lib.Module):
        def __init__(self, state_dim, action_dim, max_action):
            super().__init__()
            self.l1 = lib.Linear(state_dim, TD3_HIDDEN)
            self.l2 = lib.Linear(TD3_HIDDEN, TD3_HIDDEN)
            self.l3 = lib.Linear(TD3_HIDDEN, action_dim)
            self.max_action = max_action

        def forward(self, state):
            a = F_.relu(self.l1(state))
            a = F_.relu(self.l2(a))
            return self.max_action * th.tanh(self.l3(a))

    class Critic(lib.Module):
        def __init__(self, state_dim, action_dim):
            super().__init__()
            # Q1 architecture
            self.l1 = lib.Linear(state_dim + action_dim, TD3_HIDDEN)
            self.l2 = lib.Linear(TD3_HIDDEN, TD3_HIDDEN)
            self.l3 = lib.Linear(TD3_HIDDEN, 1)
            # Q2 architecture
            self.l4 = lib.Linear(state_dim + action_dim, TD3_HIDDEN)
            self.l5 = lib.Linear(TD3_HIDDEN, TD3_HIDDEN)
            self.l6 = lib.Linear(TD3_HIDDEN, 1)

        def forward(self, state, action):
            sa = th.cat([state, action], 1)
            q1 = F_.relu(self.l1(sa))
            q1 = F_.relu(self.l2(q1))
            q1 = self.l3(q1)
            q2 = F_.relu(self.l4(sa))
            q2 = F_.relu(self.l5(q2))
            q2 = self.l6(q2)
            return q1, q2

        def Q1(self, state, action):
            sa = th.cat([state, action], 1)
            q1 = F_.relu(self.l1(sa))
            q1 = F_.relu(self.l2(q1))
            q1 = self.l3(q1)
            return q1

    class ActorCritic(lib.Module):  # (for `pair`: TD3 builds the two itself)
        def __init__(self):
            super().__init__()
            self.actor = Actor(state_dim, action_dim, max_action)
            self.critic = Critic(state_dim, action_dim)
    return ActorCritic()


class TD3:
    def __init__(self, th, nets, max_action=TD3_MAX_ACTION, discount=0.99, tau=0.005, policy_noise=0.2,
                 noise_clip=0.5, policy_freq=2, lr=3e-4):
        self.th, self.F = th, (TF if th is torch else F)
        self.actor = nets.actor
        self.actor_target = copy.deepcopy(self.actor)
        self.actor_optimizer = th.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic = nets.critic
        self.critic_target = copy.deepcopy(self.critic)
        self.critic_optimizer = th.optim.Adam(self.critic.parameters(), lr=lr)
        self.max_action = max_action
        self.discount = discount
        self.tau = tau
        self.policy_noise = policy_noise
        self.noise_clip = noise_clip
        self.policy_freq = policy_freq
        self.total_it = 0

    def train(self, batch, randn):
        """`replay_buffer.sample(batch_size)` there, and `torch.randn_like(action)` is `randn`, given."""
        th, F_, step = self.th, self.F, step_of(self.th)
        self.total_it += 1
        # Sample replay buffer
        state, action, next_state, reward, not_done = batch
        with th.no_grad():
            # Select action according to policy and add clipped noise
            noise = (randn * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            next_action = (self.actor_target(next_state) + noise).clamp(-self.max_action, self.max_action)
            # Compute the target Q value
            target_Q1, target_Q2 = self.critic_target(next_state, next_action)
            target_Q = th.min(target_Q1, target_Q2)
            target_Q = reward + not_done * self.discount * target_Q

        def critic_loss_fn(critic, state, action, target_Q):  # (the port's loss functions take their tensors:
            # closed-over tensors are captured constants, README)
            # Get current Q estimates
            current_Q1, current_Q2 = critic(state, action)
            # Compute critic loss
            return F_.mse_loss(current_Q1, target_Q) + F_.mse_loss(current_Q2, target_Q), None
        # Optimize the critic
        critic_loss, _ = step(self.critic, self.critic_optimizer, critic_loss_fn, state, action, target_Q)
        losses = [critic_loss]
        # Delayed policy updates
        if self.total_it % self.policy_freq == 0:
            # Compute actor losse
            def actor_loss_fn(actor, critic, state):
                return -critic.Q1(state, actor(state)).mean(), None
            # Optimize the actor
            actor_loss, _ = step(self.actor, self.actor_optimizer, actor_loss_fn, self.critic, state)
            losses.append(actor_loss)
            # Update the frozen target models
            for param, target_param in zip(self.critic.parameters(), self.critic_target.parameters()):
                target_param.data.copy_(self.tau * param.data + (1 - self.tau) * target_param.data)
            for param, target_param in zip(self.actor.parameters(), self.actor_target.parameters()):
                target_param.data.copy_(self.tau * param.data + (1 - self.tau) * target_param.data)
        return th.stack(losses)


def td3_batch(rng, n=6):
    return ((rng.standard_normal((n, TD3_STATE)), rng.uniform(-TD3_MAX_ACTION, TD3_MAX_ACTION, (n, TD3_ACTION)),
             rng.standard_normal((n, TD3_STATE)), rng.standard_normal((n, 1)),
             (rng.random((n, 1)) < 0.9).astype(np.float64)), rng.standard_normal((n, TD3_ACTION)) * 3)


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_td3_twin_critics_target_smoothing_delayed_actor_and_polyak_copy(mode):
    ours, theirs = pair(td3_nets)
    agent, tagent = TD3(av, ours, tau=0.05), TD3(torch, theirs, tau=0.05)  # tau 0.005 there
    run = compiled(TD3.train, mode)
    rng = np.random.default_rng(2)
    for it in range(5):
        batch, randn = td3_batch(rng)
        tlosses = tagent.train(tuple(map(T, batch)), T(randn))
        with strict():
            losses = (run if it else TD3.train)(agent, tuple(map(arr, batch)), arr(randn))
        assert agent.total_it == tagent.total_it == it + 1
        assert rel(losses, tlosses) < 1e-12, it
        for a, b in [(agent.actor, tagent.actor), (agent.critic, tagent.critic),
                     (agent.actor_target, tagent.actor_target), (agent.critic_target, tagent.critic_target)]:
            same_weights(a, b, 1e-10)
    # total_it, a Python number the step reads, is part of the signature (README): a trace per value
    assert run.cache_info().misses == 4


# -- regressions: what the programs above found -------------------------------------------------------------------

def test_distributions_have_torch_s_per_family_submodules():
    """dreamerv3-torch's `torchd.one_hot_categorical.OneHotCategorical`, `torchd.independent.Independent` and
    `torchd.bernoulli.Bernoulli` did not exist: torch.distributions' per-family modules are now there, each
    holding its classes, and importable by their dotted names."""
    from avalon.distributions.normal import Normal
    from avalon.distributions.one_hot_categorical import OneHotCategoricalStraightThrough

    import avalon.distributions as avd
    assert Normal is avd.Normal and OneHotCategoricalStraightThrough is avd.OneHotCategoricalStraightThrough
    for name, module in vars(torch.distributions).items():
        if isinstance(module, type(torch)) and hasattr(avd, name) and name not in ("kl", "constraints", "transforms"):
            for cls in getattr(avd, name).__all__:
                assert getattr(getattr(avd, name), cls) is getattr(avd, cls) and hasattr(module, cls), (name, cls)
    assert avd.independent.Independent is avd.Independent and avd.relaxed_categorical.ExpRelaxedCategorical


@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_a_submodule_s_optimizer_takes_the_whole_model_s_gradients(mode):
    """Dreamer's actor loss runs the (unfrozen, on its first step) critic, and `Adam(behavior.actor.parameters())`
    was given the gradients of `behavior`: the critic's entries were refused as unknown parameters, where
    torch's optimizer ignores the .grad of tensors it does not hold. Known tensors not held are now dropped (a
    dict of only foreign gradients is still refused)."""
    ours, theirs = pair(lambda lib, F_, th: lib.ModuleDict(dict(actor=lib.Linear(3, 2), critic=lib.Linear(2, 1))))
    opt, topt = optim.SGD(ours["actor"].parameters(), lr=0.5), torch.optim.SGD(theirs["actor"].parameters(), lr=0.5)
    x = np.random.default_rng(0).standard_normal((4, 3))

    def loss(model, x):
        return model["critic"](th_tanh(model["actor"](x))).sum()

    def step(model, opt, x):
        value, grads = av.value_and_grad(loss)(model, x)
        assert "critic.weight" in grads
        opt.step(grads)
        return value
    th_tanh = torch.tanh
    topt.zero_grad()
    loss(theirs, T(x)).backward()
    topt.step()
    th_tanh = av.tanh
    with strict():
        compiled(step, mode)(ours, opt, arr(x))
    same_weights(ours, theirs, 1e-14)
    critic_only = av.value_and_grad(lambda m, x: m["critic"](x[:, :2]).sum())(ours, arr(x))[1]
    with pytest.raises(KeyError, match="unknown parameters"):
        opt.step(critic_only)


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_an_argument_written_in_place_by_a_loss_that_av_grad_traces_inside_a_compiled_step(mode):
    """The RSSM's `prev_action *= 1.0 - is_first` writes the batch it was given, inside the world model's loss:
    within av.compile the nested av.grad recorded that write with the enclosing trace's stand-in for the
    argument as its target, which had no storage to write back into (TypeError after the graph ran). It is now
    the enclosing trace's in-place write of the argument, written back into the caller's tensor."""
    rng = np.random.default_rng(6)
    a, m, w = rng.standard_normal((3, 4, 2)), (rng.random((3, 4)) < 0.5).astype(np.float64), rng.standard_normal(2)

    def loss(w, a, m, lib=av):
        s = a.permute(1, 0, 2)
        total = 0
        for t in range(s.shape[0]):
            p = s[t]
            p *= 1.0 - m[:, t][:, None]
            total = total + ((p + w) ** 2).sum()
        return total

    ta, tw = T(a), T(w).requires_grad_()
    tl = loss(tw, ta, T(m), torch)
    tl.backward()
    x = arr(a)
    fn = compiled(lambda w, a, m: av.value_and_grad(loss)(w, a, m), mode)
    with strict():
        val, g = fn(arr(w), x, arr(m))
    assert rel(val, tl) < 1e-14 and rel(g, tw.grad) < 1e-14
    assert np.array_equal(x.numpy(), ta.numpy())  # the caller's tensor changed, as torch's
