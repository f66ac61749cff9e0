"""Round 6 of port QA, part A (after test_port_programs.py, _more and _3 to _7): reinforcement-learning and
capsule-network programs as their popular repositories write them in PyTorch, written once over `lib`
(torch.nn or avalon.nn), `F_` and `th` (torch or avalon), trained a few steps from torch's weights on random
data in float64 and compared with torch after every step (losses, parameters, buffers), eagerly and compiled
(numpy and cpu), with warnings as errors while tracing: CleanRL's PPO with a continuous actor-critic
(orthogonal layer_init, a state-independent log-std parameter expanded over the batch, the rollout written
into preallocated buffers, GAE by the backwards loop, normalized advantages, clipped surrogate and value
losses, minibatches of a permutation, clip_grad_norm_, Adam(eps=1e-5) with its learning rate annealed by
assigning param_groups[0]["lr"]: four optimizer steps in one compiled iteration), SAC as spinning-up and
CleanRL write it (a tanh-squashed Normal with both log-prob corrections, twin Q networks frozen for the
policy step, deep-copied targets polyak-averaged in place by mul_/add_, lerp_ or copy_, automatic entropy
tuning: three Adams in one step) and capsule networks as gram-ai and higgsfield write them (primary
capsules by convs + view/stack + squash, routing by agreement over a route-weight matmul, margin loss, a
decoder masked by the one-hot of the longest capsule by eye().index_select or eye()[argmax]).

Random draws are the one thing the two libraries cannot share: the policy's Gaussian noise, the
environment's replies and the minibatch permutations are drawn beforehand with numpy and given as inputs
(CleanRL's `.item()` on the clip fraction and the temperature become tensors: reading a traced value is
refused, as the README says); Avalon's own draws (sample, rsample) are checked for what they must be.
The regressions at the end are what these programs found: `torch.autograd.Variable`, which both capsule
networks wrap tensors in, was missing, and the implicit-dim softmax warning named Avalon's autocast wrapper
instead of the caller's line. gram-ai's `torch.sparse.torch.eye` (torch's module namespace seen through
torch.sparse) is written `th.eye`, and its `(x * y[:, :, None]).view(...)` of a transposed x, which modern
torch refuses (the product keeps x's strides), `.reshape`."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel
from test_port_programs_more import compiled, pair, same_weights, strict

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def arr(x) -> av.Tensor:
    """An Avalon tensor of numpy data, float64 kept."""
    return av.tensor(np.asarray(x))


def torch_backward_step(model, optimizer, loss_fn, *args, max_grad_norm=None):
    """`optimizer.zero_grad(); loss.backward(); [clip_grad_norm_]; optimizer.step()` as the programs write it."""
    optimizer.zero_grad()
    loss, aux = loss_fn(model, *args)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters() if isinstance(model, torch.nn.Module) else [model],
                                       max_grad_norm)
    optimizer.step()
    return loss.detach(), aux


def avalon_backward_step(model, optimizer, loss_fn, *args, max_grad_norm=None):
    """The port: gradients are values (README), clipped and given to the optimizer."""
    (loss, aux), grads = av.value_and_grad(loss_fn, has_aux=True)(model, *args)
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(grads, max_grad_norm)
    optimizer.step(grads)
    return loss, aux


def backward_step(th):
    return torch_backward_step if th is torch else avalon_backward_step


# -- 1. PPO with a continuous actor-critic (CleanRL's ppo_continuous_action.py) -------------------------------

OBS, ACT, HID = 3, 2, 8
NUM_STEPS, NUM_ENVS, UPDATE_EPOCHS, NUM_MINIBATCHES = 3, 2, 2, 2
BATCH = NUM_STEPS * NUM_ENVS
MINIBATCH = BATCH // NUM_MINIBATCHES
GAMMA, GAE_LAMBDA, CLIP_COEF, ENT_COEF, VF_COEF, MAX_GRAD_NORM = 0.99, 0.95, 0.2, 0.01, 0.5, 0.5


def ppo_agent(lib, F_, th):
    def layer_init(layer, std=np.sqrt(2), bias_const=0.0):  # noqa: B008  (CleanRL's default)
        lib.init.orthogonal_(layer.weight, std)
        lib.init.constant_(layer.bias, bias_const)
        return layer

    class Agent(lib.Module):
        def __init__(self):
            super().__init__()
            self.critic = lib.Sequential(
                layer_init(lib.Linear(np.array((OBS,)).prod(), HID)),
                lib.Tanh(),
                layer_init(lib.Linear(HID, HID)),
                lib.Tanh(),
                layer_init(lib.Linear(HID, 1), std=1.0),
            )
            self.actor_mean = lib.Sequential(
                layer_init(lib.Linear(np.array((OBS,)).prod(), HID)),
                lib.Tanh(),
                layer_init(lib.Linear(HID, HID)),
                lib.Tanh(),
                layer_init(lib.Linear(HID, np.prod((ACT,))), std=0.01),
            )
            self.actor_logstd = lib.Parameter(th.zeros(1, np.prod((ACT,))))

        def get_value(self, x):
            return self.critic(x)

        def get_action_and_value(self, x, action=None, noise=None):
            action_mean = self.actor_mean(x)
            action_logstd = self.actor_logstd.expand_as(action_mean)
            action_std = th.exp(action_logstd)
            probs = th.distributions.Normal(action_mean, action_std)
            if action is None:  # probs.sample(), its standard normal draws given (the module's docstring)
                action = probs.sample() if noise is None else (action_mean + action_std * noise).detach()
            return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x)

    return Agent()


def ppo_minibatch_loss(th):
    def loss(agent, b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values, mb_inds):
        _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions[mb_inds])
        logratio = newlogprob - b_logprobs[mb_inds]
        ratio = logratio.exp()

        with th.no_grad():
            # calculate approx_kl http://joschu.net/blog/kl-approx.html
            old_approx_kl = (-logratio).mean()
            approx_kl = ((ratio - 1) - logratio).mean()
            clipfrac = ((ratio - 1.0).abs() > CLIP_COEF).float().mean()  # CleanRL's .item(): a tensor here

        mb_advantages = b_advantages[mb_inds]
        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

        # Policy loss
        pg_loss1 = -mb_advantages * ratio
        pg_loss2 = -mb_advantages * th.clamp(ratio, 1 - CLIP_COEF, 1 + CLIP_COEF)
        pg_loss = th.max(pg_loss1, pg_loss2).mean()

        # Value loss
        newvalue = newvalue.view(-1)
        v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
        v_clipped = b_values[mb_inds] + th.clamp(
            newvalue - b_values[mb_inds],
            -CLIP_COEF,
            CLIP_COEF,
        )
        v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
        v_loss_max = th.max(v_loss_unclipped, v_loss_clipped)
        v_loss = 0.5 * v_loss_max.mean()

        entropy_loss = entropy.mean()
        loss = pg_loss - ENT_COEF * entropy_loss + v_loss * VF_COEF
        return loss, th.stack([pg_loss.detach(), v_loss.detach(), entropy_loss.detach(), old_approx_kl, approx_kl,
                               clipfrac])
    return loss


def ppo_iteration(th):
    """One iteration of CleanRL's loop after the learning-rate annealing: the rollout (the environment's
    replies replayed from data, the policy's Gaussian draws given), GAE, and the update epochs over
    minibatches of a permutation (CleanRL's `np.random.shuffle(b_inds)`, given)."""
    step_fn, loss_fn = backward_step(th), ppo_minibatch_loss(th)

    def iteration(agent, optimizer, next_obs, next_done, env_obs, env_rewards, env_dones, noise, perms):
        dtype = next_obs.dtype
        obs = th.zeros((NUM_STEPS, NUM_ENVS) + (OBS,), dtype=dtype)
        actions = th.zeros((NUM_STEPS, NUM_ENVS) + (ACT,), dtype=dtype)
        logprobs = th.zeros((NUM_STEPS, NUM_ENVS), dtype=dtype)
        rewards = th.zeros((NUM_STEPS, NUM_ENVS), dtype=dtype)
        dones = th.zeros((NUM_STEPS, NUM_ENVS), dtype=dtype)
        values = th.zeros((NUM_STEPS, NUM_ENVS), dtype=dtype)
        for step in range(0, NUM_STEPS):
            obs[step] = next_obs
            dones[step] = next_done

            # ALGO LOGIC: action logic
            with th.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs, noise=noise[step])
                values[step] = value.flatten()
            actions[step] = action
            logprobs[step] = logprob

            # TRY NOT TO MODIFY: execute the game and log data (envs.step(action), replayed)
            next_obs, reward, next_done = env_obs[step], env_rewards[step], env_dones[step]
            rewards[step] = reward.view(-1)

        # bootstrap value if not done
        with th.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = th.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(NUM_STEPS)):
                if t == NUM_STEPS - 1:
                    nextnonterminal = 1.0 - next_done
                    nextvalues = next_value
                else:
                    nextnonterminal = 1.0 - dones[t + 1]
                    nextvalues = values[t + 1]
                delta = rewards[t] + GAMMA * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + GAMMA * GAE_LAMBDA * nextnonterminal * lastgaelam
            returns = advantages + values

        # flatten the batch
        b_obs = obs.reshape((-1,) + (OBS,))
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape((-1,) + (ACT,))
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_values = values.reshape(-1)

        # Optimizing the policy and value network
        infos = []
        for epoch in range(UPDATE_EPOCHS):
            b_inds = perms[epoch]
            for start in range(0, BATCH, MINIBATCH):
                end = start + MINIBATCH
                mb_inds = b_inds[start:end]
                loss, info = step_fn(agent, optimizer, loss_fn, b_obs, b_actions, b_logprobs, b_advantages,
                                     b_returns, b_values, mb_inds, max_grad_norm=MAX_GRAD_NORM)
                infos.append(th.cat([loss.reshape(1), info]))
        return th.stack(infos), b_values, b_returns

    return iteration


def ppo_data(rng):
    return (rng.standard_normal((NUM_ENVS, OBS)), (rng.random(NUM_ENVS) < 0.2).astype(np.float64),
            rng.standard_normal((NUM_STEPS, NUM_ENVS, OBS)), rng.standard_normal((NUM_STEPS, NUM_ENVS)),
            (rng.random((NUM_STEPS, NUM_ENVS)) < 0.3).astype(np.float64),
            rng.standard_normal((NUM_STEPS, NUM_ENVS, ACT)),
            np.stack([rng.permutation(BATCH) for _ in range(UPDATE_EPOCHS)]))


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_ppo_continuous_actor_critic_gae_clipped_losses_minibatches_and_annealed_adam(mode):
    ours, theirs = pair(ppo_agent)
    lr, num_iterations = 3e-2, 3
    opt = optim.Adam(ours.parameters(), lr=lr, eps=1e-5)
    topt = torch.optim.Adam(theirs.parameters(), lr=lr, eps=1e-5)
    rng = np.random.default_rng(0)
    step = ppo_iteration(av)
    run = compiled(step, mode)
    for iteration in range(1, num_iterations + 1):
        frac = 1.0 - (iteration - 1.0) / num_iterations
        lrnow = frac * lr
        topt.param_groups[0]["lr"] = lrnow
        opt.param_groups[0]["lr"] = lrnow
        data = ppo_data(rng)
        tinfo, tvalues, treturns = ppo_iteration(torch)(theirs, topt, *map(T, data))
        with strict():
            info, values, returns = (run if iteration > 1 else step)(ours, opt, *map(arr, data))
        assert rel(values, tvalues) < 1e-12 and rel(returns, treturns) < 1e-12, iteration
        assert rel(info, tinfo) < 1e-10, iteration
        same_weights(ours, theirs, 1e-10)
        y_pred, y_true = values.numpy(), returns.numpy()  # explained variance, as CleanRL logs it
        var_y = np.var(y_true)
        assert 1 - np.var(y_true - y_pred) / var_y == pytest.approx(
            1 - np.var(treturns.numpy() - tvalues.numpy()) / np.var(treturns.numpy()), rel=1e-10)
    assert run.cache_info().misses == 1  # the annealed learning rate is read, not traced


def test_ppo_layer_init_is_orthogonal_with_gain_and_the_policy_samples_its_normal():
    """Avalon's own initialization (not torch's weights): orthogonal_ rows scaled by the gain, constant_ biases;
    and the actions Avalon's Normal draws have the policy's log-probability under torch's Normal."""
    agent = ppo_agent(nn, F, av)
    for layer, gain in ((agent.critic[2], np.sqrt(2)), (agent.critic[4], 1.0), (agent.actor_mean[4], 0.01)):
        w = layer.weight.numpy().astype(np.float64)
        small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        assert np.abs(small - gain ** 2 * np.eye(len(small))).max() < 1e-5
        assert (layer.bias.numpy() == 0).all()
    x = np.random.default_rng(1).standard_normal((5, OBS)).astype(np.float32)
    with av.no_grad():
        action, logprob, entropy, value = agent.get_action_and_value(av.tensor(x))
    theirs = ppo_agent(torch.nn, TF, torch)
    theirs.load_state_dict({k: T(v.numpy()) for k, v in agent.state_dict().items()})
    _, tlogprob, tentropy, tvalue = theirs.get_action_and_value(T(x), T(action.numpy()))
    assert action.shape == (5, ACT)
    for a, b in ((logprob, tlogprob), (entropy, tentropy), (value, tvalue)):
        assert rel(a, b) < 1e-6


# -- 2. SAC (spinning-up's sac/core.py and CleanRL's sac_continuous_action.py): a tanh-squashed Normal by ------
#       rsample, twin Q networks, polyak-averaged targets, automatic entropy tuning, three optimizers

S_OBS, S_ACT, S_HID, S_BATCH = 3, 2, 8, 6
LOG_STD_MAX, LOG_STD_MIN = 2, -20
POLYAK, S_GAMMA, ACT_LIMIT = 0.9, 0.99, 2.0


def sac_actor_critic(lib, F_, th, form="spinup"):
    def mlp(sizes, activation, output_activation=lib.Identity):
        layers = []
        for j in range(len(sizes) - 1):
            act = activation if j < len(sizes) - 2 else output_activation
            layers += [lib.Linear(sizes[j], sizes[j + 1]), act()]
        return lib.Sequential(*layers)

    class SquashedGaussianMLPActor(lib.Module):  # spinning-up: the softplus form of the tanh correction
        def __init__(self, obs_dim, act_dim, hidden_sizes, activation, act_limit):
            super().__init__()
            self.net = mlp([obs_dim] + list(hidden_sizes), activation, activation)
            self.mu_layer = lib.Linear(hidden_sizes[-1], act_dim)
            self.log_std_layer = lib.Linear(hidden_sizes[-1], act_dim)
            self.act_limit = act_limit

        def forward(self, obs, deterministic=False, with_logprob=True, noise=None):
            net_out = self.net(obs)
            mu = self.mu_layer(net_out)
            log_std = self.log_std_layer(net_out)
            log_std = th.clamp(log_std, LOG_STD_MIN, LOG_STD_MAX)
            std = th.exp(log_std)

            # Pre-squash distribution and sample
            pi_distribution = th.distributions.Normal(mu, std)
            if deterministic:
                # Only used for evaluating policy at test time.
                pi_action = mu
            elif noise is None:
                pi_action = pi_distribution.rsample()
            else:  # rsample's reparameterization, its standard normal draws given (the module's docstring)
                pi_action = mu + std * noise

            if with_logprob:
                logp_pi = pi_distribution.log_prob(pi_action).sum(axis=-1)
                logp_pi -= (2 * (np.log(2) - pi_action - F_.softplus(-2 * pi_action))).sum(axis=1)
            else:
                logp_pi = None

            pi_action = th.tanh(pi_action)
            pi_action = self.act_limit * pi_action
            return pi_action, logp_pi

    class Actor(lib.Module):  # CleanRL: log_std squashed by tanh, the log(1 - tanh^2 + eps) correction
        def __init__(self, obs_dim, act_dim, hidden_sizes, activation, act_limit):
            super().__init__()
            self.fc1 = lib.Linear(obs_dim, hidden_sizes[0])
            self.fc2 = lib.Linear(hidden_sizes[0], hidden_sizes[1])
            self.fc_mean = lib.Linear(hidden_sizes[1], act_dim)
            self.fc_logstd = lib.Linear(hidden_sizes[1], act_dim)
            high, low = np.full(act_dim, act_limit), np.linspace(-act_limit, -0.5, act_dim)
            self.register_buffer("action_scale", th.tensor((high - low) / 2.0, dtype=th.float32))
            self.register_buffer("action_bias", th.tensor((high + low) / 2.0, dtype=th.float32))

        def forward(self, x, deterministic=False, with_logprob=True, noise=None):
            x = F_.relu(self.fc1(x))
            x = F_.relu(self.fc2(x))
            mean = self.fc_mean(x)
            log_std = self.fc_logstd(x)
            log_std = th.tanh(log_std)
            log_std = -5 + 0.5 * (2 - -5) * (log_std + 1)  # From SpinUp / Denis Yarats
            if deterministic:  # CleanRL's third result, the squashed mean
                return th.tanh(mean) * self.action_scale + self.action_bias, None
            std = log_std.exp()
            normal = th.distributions.Normal(mean, std)
            x_t = normal.rsample() if noise is None else mean + std * noise  # for reparameterization trick
            y_t = th.tanh(x_t)
            action = y_t * self.action_scale + self.action_bias
            log_prob = normal.log_prob(x_t)
            # Enforcing Action Bound
            log_prob -= th.log(self.action_scale * (1 - y_t.pow(2)) + 1e-6)
            log_prob = log_prob.sum(1)
            return action, log_prob

    class MLPQFunction(lib.Module):
        def __init__(self, obs_dim, act_dim, hidden_sizes, activation):
            super().__init__()
            self.q = mlp([obs_dim + act_dim] + list(hidden_sizes) + [1], activation)

        def forward(self, obs, act):
            q = self.q(th.cat([obs, act], dim=-1))
            return th.squeeze(q, -1)  # Critical to ensure q has right shape.

    class MLPActorCritic(lib.Module):
        def __init__(self, hidden_sizes=(S_HID, S_HID), activation=lib.ReLU):
            super().__init__()
            actor = SquashedGaussianMLPActor if form == "spinup" else Actor
            self.pi = actor(S_OBS, S_ACT, hidden_sizes, activation, ACT_LIMIT)
            self.q1 = MLPQFunction(S_OBS, S_ACT, hidden_sizes, activation)
            self.q2 = MLPQFunction(S_OBS, S_ACT, hidden_sizes, activation)

        def act(self, obs, deterministic=False):
            with th.no_grad():
                a, _ = self.pi(obs, deterministic, False)
                return a.numpy()

    return MLPActorCritic()


def sac_update(th, polyak_form="mul_add"):
    """spinning-up's `update(data)` with CleanRL's automatic entropy tuning: the Q step, the policy step
    with the Q networks frozen, the temperature step, and the polyak-averaged targets."""
    step_fn = backward_step(th)
    target_entropy = -float(np.prod((S_ACT,)))

    def compute_loss_q(ac, ac_targ, alpha, o, a, r, o2, d, noise2):
        q1 = ac.q1(o, a)
        q2 = ac.q2(o, a)

        # Bellman backup for Q functions
        with th.no_grad():
            # Target actions come from *current* policy
            a2, logp_a2 = ac.pi(o2, noise=noise2)

            # Target Q-values
            q1_pi_targ = ac_targ.q1(o2, a2)
            q2_pi_targ = ac_targ.q2(o2, a2)
            q_pi_targ = th.min(q1_pi_targ, q2_pi_targ)
            backup = r + S_GAMMA * (1 - d) * (q_pi_targ - alpha * logp_a2)

        # MSE loss against Bellman backup
        loss_q1 = ((q1 - backup) ** 2).mean()
        loss_q2 = ((q2 - backup) ** 2).mean()
        loss_q = loss_q1 + loss_q2
        return loss_q, dict(Q1Vals=q1.detach(), Q2Vals=q2.detach())

    def compute_loss_pi(ac, alpha, o, noise):
        pi, logp_pi = ac.pi(o, noise=noise)
        q1_pi = ac.q1(o, pi)
        q2_pi = ac.q2(o, pi)
        q_pi = th.min(q1_pi, q2_pi)

        # Entropy-regularized policy loss
        loss_pi = (alpha * logp_pi - q_pi).mean()
        return loss_pi, dict(LogPi=logp_pi.detach())

    def compute_loss_alpha(log_alpha, log_pi):  # CleanRL
        alpha_loss = (-log_alpha.exp() * (log_pi + target_entropy)).mean()
        return alpha_loss, None

    def update(ac, ac_targ, log_alpha, q_optimizer, pi_optimizer, a_optimizer, o, a, r, o2, d, noise2, noise):
        alpha = log_alpha.exp().detach()  # CleanRL's `alpha = log_alpha.exp().item()`, a tensor here
        loss_q, q_info = step_fn(ac, q_optimizer, compute_loss_q, ac_targ, alpha, o, a, r, o2, d, noise2)

        # Freeze Q-networks so you don't waste computational effort computing gradients for them during the
        # policy learning step.
        q_params = list(ac.q1.parameters()) + list(ac.q2.parameters())
        for p in q_params:
            p.requires_grad = False

        loss_pi, pi_info = step_fn(ac, pi_optimizer, compute_loss_pi, alpha, o, noise)

        # Unfreeze Q-networks so you can optimize it at next DDPG step.
        for p in q_params:
            p.requires_grad = True

        with th.no_grad():
            _, log_pi = ac.pi(o, noise=noise)
        loss_alpha, _ = step_fn(log_alpha, a_optimizer, compute_loss_alpha, log_pi)

        # Finally, update target networks by polyak averaging.
        with th.no_grad():
            for p, p_targ in zip(ac.parameters(), ac_targ.parameters()):
                if polyak_form == "mul_add":  # NB: We use an in-place operations "mul_", "add_" to update target
                    # params, as opposed to "mul" and "add", which would make new tensors.
                    p_targ.data.mul_(POLYAK)
                    p_targ.data.add_((1 - POLYAK) * p.data)
                elif polyak_form == "lerp":
                    p_targ.lerp_(p, 1 - POLYAK)
                else:  # CleanRL
                    p_targ.data.copy_((1 - POLYAK) * p.data + POLYAK * p_targ.data)
        return th.stack([loss_q, loss_pi, loss_alpha]), q_info["Q1Vals"], pi_info["LogPi"]

    return update


def sac_setup(lib, th, ac):
    ac_targ = copy.deepcopy(ac)
    # Freeze target networks with respect to optimizers (only update via polyak averaging)
    for p in ac_targ.parameters():
        p.requires_grad = False
    q_params = list(ac.q1.parameters()) + list(ac.q2.parameters())
    optim_ = th.optim
    log_alpha = th.zeros(1, requires_grad=True, dtype=th.float64)
    return (ac_targ, log_alpha, optim_.Adam(q_params, lr=1e-2), optim_.Adam(ac.pi.parameters(), lr=1e-2),
            optim_.Adam([log_alpha], lr=1e-2))


def sac_batch(rng):
    return (rng.standard_normal((S_BATCH, S_OBS)), rng.uniform(-ACT_LIMIT, ACT_LIMIT, (S_BATCH, S_ACT)),
            rng.standard_normal(S_BATCH), rng.standard_normal((S_BATCH, S_OBS)),
            (rng.random(S_BATCH) < 0.3).astype(np.float64), rng.standard_normal((S_BATCH, S_ACT)),
            rng.standard_normal((S_BATCH, S_ACT)))


@pytest.mark.parametrize("form,polyak_form,mode", [("spinup", "mul_add", "numpy"), ("spinup", "lerp", "cpu"),
                                                   ("cleanrl", "copy", "numpy")])
def test_sac_squashed_gaussian_twin_q_polyak_targets_and_entropy_tuning(form, polyak_form, mode):
    ours, theirs = pair(lambda lib, F_, th: sac_actor_critic(lib, F_, th, form))
    targ, log_alpha, q_opt, pi_opt, a_opt = sac_setup(nn, av, ours)
    ttarg, tlog_alpha, tq_opt, tpi_opt, ta_opt = sac_setup(torch.nn, torch, theirs)
    rng = np.random.default_rng(2)
    step = sac_update(av, polyak_form)
    run = compiled(step, mode)
    for it in range(3):
        batch = sac_batch(rng)
        tlosses, tq1, tlogp = sac_update(torch, polyak_form)(theirs, ttarg, tlog_alpha, tq_opt, tpi_opt, ta_opt,
                                                             *map(T, batch))
        with strict():
            losses, q1, logp = (run if it else step)(ours, targ, log_alpha, q_opt, pi_opt, a_opt, *map(arr, batch))
        assert rel(losses, tlosses) < 1e-12 and rel(q1, tq1) < 1e-12 and rel(logp, tlogp) < 1e-12, it
        same_weights(ours, theirs, 1e-11)
        same_weights(targ, ttarg, 1e-11)
        assert rel(log_alpha, tlog_alpha) < 1e-12, it
        assert all(p.requires_grad for p in ours.parameters()) and not any(p.requires_grad for p in targ.parameters())
    assert run.cache_info().misses == 1
    obs = rng.standard_normal((2, S_OBS))
    assert rel(ours.act(arr(obs), deterministic=True), theirs.act(T(obs), deterministic=True)) < 1e-12


def test_sac_rsample_is_reparameterized_through_the_squashed_normal():
    """Avalon's own rsample (not the noise given): its draws are the Normal's, and the policy loss's gradient
    through them is torch's with those draws as the noise."""
    ours, theirs = pair(sac_actor_critic)
    o = np.random.default_rng(3).standard_normal((400, S_OBS))
    av.manual_seed(0)

    def loss(ac, o):
        mu = ac.pi.mu_layer(ac.pi.net(o))
        std = av.exp(av.clamp(ac.pi.log_std_layer(ac.pi.net(o)), LOG_STD_MIN, LOG_STD_MAX))
        a, logp = ac.pi(o)
        eps = (av.atanh(a / ACT_LIMIT) - mu) / std  # the draws rsample made
        return (logp - ac.q1(o, a)).mean(), eps.detach()

    (val, eps), grads = av.value_and_grad(loss, has_aux=True)(ours, arr(o))
    e = eps.numpy()
    assert abs(e.mean()) < 0.15 and abs(e.std() - 1) < 0.15
    a, logp = theirs.pi(T(o), noise=T(e))
    tval = (logp - theirs.q1(T(o), a)).mean()
    tval.backward()
    assert rel(val, tval) < 1e-8
    for name, p in theirs.named_parameters():
        if name.startswith("pi.") or name.startswith("q1."):
            assert rel(grads[name], p.grad) < 1e-6, name


# -- 3. capsule network (Sabour et al.; gram-ai/capsule-networks and higgsfield's Capsule-Network-Tutorial): -----
#       primary capsules by convs + view + squash, routing by agreement, margin loss, a masked decoder

NUM_CLASSES, NUM_ROUTING_ITERATIONS, IMG = 3, 3, 12
PRIM_DIM, PRIM_MAPS, PRIM_HW, DIGIT_DIM = 4, 2, 3, 5  # capsule sizes; routes: PRIM_MAPS * PRIM_HW * PRIM_HW
NUM_ROUTES = PRIM_MAPS * PRIM_HW * PRIM_HW


def capsule_net(lib, F_, th, style="gram-ai"):
    def softmax(input, dim=1):  # gram-ai's: softmax over any dim by a transpose and the implicit 2-d dim
        transposed_input = input.transpose(dim, len(input.size()) - 1)
        softmaxed_output = F_.softmax(transposed_input.contiguous().view(-1, transposed_input.size(-1)))
        return softmaxed_output.view(*transposed_input.size()).transpose(dim, len(input.size()) - 1)

    class CapsuleLayer(lib.Module):  # gram-ai
        def __init__(self, num_capsules, num_route_nodes, in_channels, out_channels, kernel_size=None, stride=None,
                     num_iterations=NUM_ROUTING_ITERATIONS):
            super().__init__()
            self.num_route_nodes = num_route_nodes
            self.num_iterations = num_iterations
            self.num_capsules = num_capsules
            if num_route_nodes != -1:
                self.route_weights = lib.Parameter(th.randn(num_capsules, num_route_nodes, in_channels, out_channels))
            else:
                self.capsules = lib.ModuleList(
                    [lib.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=0) for _ in
                     range(num_capsules)])

        def squash(self, tensor, dim=-1):
            squared_norm = (tensor ** 2).sum(dim=dim, keepdim=True)
            scale = squared_norm / (1 + squared_norm)
            return scale * tensor / th.sqrt(squared_norm)

        def forward(self, x):
            if self.num_route_nodes != -1:
                priors = x[None, :, :, None, :] @ self.route_weights[:, None, :, :, :]
                logits = th.autograd.Variable(th.zeros(*priors.size(), dtype=priors.dtype))  # (.cuda())
                for i in range(self.num_iterations):
                    probs = softmax(logits, dim=2)
                    outputs = self.squash((probs * priors).sum(dim=2, keepdim=True))
                    if i != self.num_iterations - 1:
                        delta_logits = (priors * outputs).sum(dim=-1, keepdim=True)
                        logits = logits + delta_logits
            else:
                outputs = [capsule(x).view(x.size(0), -1, 1) for capsule in self.capsules]
                outputs = th.cat(outputs, dim=-1)
                outputs = self.squash(outputs)
            return outputs

    class DigitCaps(lib.Module):  # higgsfield: W tiled over the batch, the routing logits shared by the batch
        def __init__(self, num_capsules=NUM_CLASSES, num_routes=NUM_ROUTES, in_channels=PRIM_DIM,
                     out_channels=DIGIT_DIM):
            super().__init__()
            self.in_channels = in_channels
            self.num_routes = num_routes
            self.num_capsules = num_capsules
            self.W = lib.Parameter(th.randn(1, num_routes, num_capsules, out_channels, in_channels))

        def forward(self, x):
            batch_size = x.size(0)
            x = th.stack([x] * self.num_capsules, dim=2).unsqueeze(4)
            W = th.cat([self.W] * batch_size, dim=0)  # noqa: N806
            u_hat = th.matmul(W, x)
            b_ij = th.autograd.Variable(th.zeros(1, self.num_routes, self.num_capsules, 1, dtype=x.dtype))
            num_iterations = 3
            for iteration in range(num_iterations):
                c_ij = F_.softmax(b_ij)  # the implicit dim of a 4-d tensor: 1, the routes (as written)
                c_ij = th.cat([c_ij] * batch_size, dim=0).unsqueeze(4)
                s_j = (c_ij * u_hat).sum(dim=1, keepdim=True)
                v_j = self.squash(s_j)
                if iteration < num_iterations - 1:
                    a_ij = th.matmul(u_hat.transpose(3, 4), th.cat([v_j] * self.num_routes, dim=1))
                    b_ij = b_ij + a_ij.squeeze(4).mean(dim=0, keepdim=True)
            return v_j.squeeze(1)

        def squash(self, input_tensor):
            squared_norm = (input_tensor ** 2).sum(-1, keepdim=True)
            return squared_norm * input_tensor / ((1. + squared_norm) * th.sqrt(squared_norm))

    class ConvLayer(lib.Module):  # higgsfield
        def __init__(self, in_channels=1, out_channels=6, kernel_size=5):
            super().__init__()
            self.conv = lib.Conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                                   stride=1)

        def forward(self, x):
            return F_.relu(self.conv(x))

    class PrimaryCaps(lib.Module):  # higgsfield: the capsules stacked, then viewed as routes
        def __init__(self, num_capsules=PRIM_DIM, in_channels=6, out_channels=PRIM_MAPS, kernel_size=3):
            super().__init__()
            self.capsules = lib.ModuleList([
                lib.Conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, stride=2,
                           padding=0) for _ in range(num_capsules)])

        def forward(self, x):
            u = [capsule(x) for capsule in self.capsules]
            u = th.stack(u, dim=1)
            u = u.view(x.size(0), NUM_ROUTES, -1)
            return self.squash(u)

        def squash(self, input_tensor):
            squared_norm = (input_tensor ** 2).sum(-1, keepdim=True)
            return squared_norm * input_tensor / ((1. + squared_norm) * th.sqrt(squared_norm))

    class Decoder(lib.Module):  # higgsfield: always the longest capsule's, by eye().index_select
        def __init__(self):
            super().__init__()
            self.reconstraction_layers = lib.Sequential(
                lib.Linear(DIGIT_DIM * NUM_CLASSES, 16),
                lib.ReLU(inplace=True),
                lib.Linear(16, 32),
                lib.ReLU(inplace=True),
                lib.Linear(32, IMG * IMG),
                lib.Sigmoid(),
            )

        def forward(self, x, data):
            classes = th.sqrt((x ** 2).sum(2))
            classes = F_.softmax(classes)  # the implicit dim of a 3-d tensor: 0, the batch (as written)
            _, max_length_indices = classes.max(dim=1)
            masked = th.autograd.Variable(th.eye(NUM_CLASSES))  # (torch.sparse.torch.eye: torch's own module)
            masked = masked.index_select(dim=0, index=max_length_indices.squeeze(1).data)
            reconstructions = self.reconstraction_layers((x * masked[:, :, None, None]).view(x.size(0), -1))
            reconstructions = reconstructions.view(-1, 1, IMG, IMG)
            return reconstructions, masked

    class CapsNet(lib.Module):  # higgsfield
        def __init__(self):
            super().__init__()
            self.conv_layer = ConvLayer()
            self.primary_capsules = PrimaryCaps()
            self.digit_capsules = DigitCaps()
            self.decoder = Decoder()
            self.mse_loss = lib.MSELoss()

        def forward(self, data):
            output = self.digit_capsules(self.primary_capsules(self.conv_layer(data)))
            reconstructions, masked = self.decoder(output, data)
            return output, reconstructions, masked

        def loss(self, data, x, target, reconstructions):
            return self.margin_loss(x, target) + self.reconstruction_loss(data, reconstructions)

        def margin_loss(self, x, labels, size_average=True):
            batch_size = x.size(0)
            v_c = th.sqrt((x ** 2).sum(dim=2, keepdim=True))
            left = F_.relu(0.9 - v_c).view(batch_size, -1)
            right = F_.relu(v_c - 0.1).view(batch_size, -1)
            loss = labels * left + 0.5 * (1.0 - labels) * right
            loss = loss.sum(dim=1).mean()
            return loss

        def reconstruction_loss(self, data, reconstructions):
            loss = self.mse_loss(reconstructions.view(reconstructions.size(0), -1), data.view(reconstructions.size(0), -1))
            return loss * 0.0005

    class CapsuleNet(lib.Module):  # gram-ai
        def __init__(self):
            super().__init__()
            self.conv1 = lib.Conv2d(in_channels=1, out_channels=6, kernel_size=5, stride=1)
            self.primary_capsules = CapsuleLayer(num_capsules=PRIM_DIM, num_route_nodes=-1, in_channels=6,
                                                 out_channels=PRIM_MAPS, kernel_size=3, stride=2)
            self.digit_capsules = CapsuleLayer(num_capsules=NUM_CLASSES, num_route_nodes=NUM_ROUTES,
                                               in_channels=PRIM_DIM, out_channels=DIGIT_DIM)
            self.decoder = lib.Sequential(
                lib.Linear(DIGIT_DIM * NUM_CLASSES, 16),
                lib.ReLU(inplace=True),
                lib.Linear(16, 32),
                lib.ReLU(inplace=True),
                lib.Linear(32, IMG * IMG),
                lib.Sigmoid(),
            )

        def forward(self, x, y=None, mask="index_select"):
            x = F_.relu(self.conv1(x), inplace=True)
            x = self.primary_capsules(x)
            x = self.digit_capsules(x).squeeze().transpose(0, 1)
            classes = (x ** 2).sum(dim=-1) ** 0.5
            classes = F_.softmax(classes, dim=-1)
            if y is None:
                # In all batches, get the most active capsule.
                if mask == "index_select":
                    _, max_length_indices = classes.max(dim=1)
                    y = th.eye(NUM_CLASSES).index_select(dim=0, index=max_length_indices.data)
                else:
                    y = th.eye(NUM_CLASSES, dtype=x.dtype)[classes.argmax(dim=1)]
            # (gram-ai's `.view`: torch keeps the transposed x's strides in the product, so it reshapes)
            reconstructions = self.decoder((x * y[:, :, None]).reshape(x.size(0), -1))
            return classes, reconstructions

    return CapsuleNet() if style == "gram-ai" else CapsNet()


def capsule_loss(lib, F_, th):
    class CapsuleLoss(lib.Module):  # gram-ai
        def __init__(self):
            super().__init__()
            self.reconstruction_loss = lib.MSELoss(size_average=False)

        def forward(self, images, labels, classes, reconstructions):
            left = F_.relu(0.9 - classes, inplace=True) ** 2
            right = F_.relu(classes - 0.1, inplace=True) ** 2
            margin_loss = labels * left + 0.5 * (1. - labels) * right
            margin_loss = margin_loss.sum()
            assert th.numel(images) == th.numel(reconstructions)
            images = images.view(reconstructions.size()[0], -1)
            reconstruction_loss = self.reconstruction_loss(reconstructions, images)
            return (margin_loss + 0.0005 * reconstruction_loss) / images.size(0)

    criterion = CapsuleLoss()

    def loss(model, data, labels, mask=None):
        if mask == "higgsfield":  # its train loop: one-hot targets by eye, the loss a method of the net
            target = th.eye(NUM_CLASSES).index_select(dim=0, index=labels)
            output, reconstructions, masked = model(data)
            return model.loss(data, output, target, reconstructions), masked.detach()
        labels = th.eye(NUM_CLASSES).index_select(dim=0, index=labels)  # torch.sparse.torch.eye(NUM_CLASSES)...
        if mask is None:  # training: the decoder reads the true class's capsule
            classes, reconstructions = model(data, labels)
        else:  # the longest capsule's, in training too
            classes, reconstructions = model(data, mask=mask)
        return criterion(data, labels, classes, reconstructions), classes.detach()
    return loss


@pytest.mark.filterwarnings("ignore:Implicit dimension choice", "ignore:size_average and reduce args")
@pytest.mark.parametrize("style,mask,mode", [("gram-ai", None, "numpy"), ("gram-ai", "eye", "cpu"),
                                             ("higgsfield", "higgsfield", "numpy")])
def test_capsule_network_dynamic_routing_margin_loss_and_masked_reconstruction(style, mask, mode):
    ours, theirs = pair(lambda lib, F_, th: capsule_net(lib, F_, th, style))
    opt, topt = optim.Adam(ours.parameters(), lr=1e-2), torch.optim.Adam(theirs.parameters(), lr=1e-2)
    rng = np.random.default_rng(5)
    step_fn = backward_step(av)

    def step(model, opt, data, labels):
        return step_fn(model, opt, capsule_loss(nn, F, av), data, labels, mask)

    run = compiled(step, mode)
    for it in range(3):
        data, labels = rng.random((4, 1, IMG, IMG)), rng.integers(0, NUM_CLASSES, 4)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Implicit dimension choice")
            tl, tclasses = torch_backward_step(theirs, topt, capsule_loss(torch.nn, TF, torch), T(data), T(labels),
                                               mask)
            with strict():
                warnings.filterwarnings("ignore", "Implicit dimension choice")
                loss, classes = (run if it else step)(ours, opt, arr(data), arr(labels))
        assert rel(loss, tl) < 1e-11 and rel(classes, tclasses) < 1e-11, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 1
    data = rng.random((3, 1, IMG, IMG))
    if style != "gram-ai":
        return
    with av.no_grad(), torch.no_grad():  # test time: the longest capsule decoded
        for form in ("index_select", "eye"):
            for a, b in zip(ours(arr(data), mask=form), theirs(T(data), mask=form)):
                assert rel(a, b) < 1e-11, form


# -- regressions: what the programs above found --------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_autograd_variable_is_a_detached_tensor_as_in_torch(mode):
    """gram-ai's and higgsfield's capsule networks wrap tensors in `torch.autograd.Variable` (routing logits,
    the one-hot mask): avalon.autograd had no Variable. As torch's since 0.4: every tensor is one,
    `Variable(t)` is `t` detached (the same elements; no gradient through it), with requires_grad as given."""
    from avalon.autograd import Variable

    x, w = np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.2, -1.0])

    def f(th, w, x):
        v = th.autograd.Variable(w * x)  # detached: w's gradient comes only from the second factor
        return (v * w).sum() + th.autograd.Variable(th.zeros(3, dtype=x.dtype)).sum()

    tw = T(w).requires_grad_()
    f(torch, tw, T(x)).backward()
    with strict():
        loss, g = compiled(av.value_and_grad(lambda w, x: f(av, w, x)), mode)(arr(w), arr(x))
    assert rel(loss, f(torch, T(w), T(x))) < 1e-15 and rel(g, tw.grad) < 1e-15
    t = av.ones(2)
    v = Variable(t)
    assert isinstance(t, Variable) and not v.requires_grad and Variable(t, requires_grad=True).requires_grad
    v[0] = 3.0  # the same elements, as torch's
    assert t.numpy().tolist() == [3.0, 1.0]
    with pytest.raises(TypeError, match="Variable data has to be a tensor"):
        Variable([1.0])
    with pytest.warns(UserWarning, match="volatile was removed"):
        Variable(t, volatile=True)


def test_implicit_softmax_dim_warning_names_the_callers_line():
    """higgsfield's `F.softmax(b_ij)` (no dim) warns as torch does, but the warning named avalon/amp.py (the
    autocast wrapper around F.softmax) instead of the caller's line, so every call site shared one warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        F.softmax(av.ones(2, 3))
        F.log_softmax(av.ones(2, 3))
        nn.Softmax()(av.ones(2, 3))
    assert [w.filename for w in caught] == [__file__] * 3, [(w.filename, w.lineno) for w in caught]
    assert all("Implicit dimension choice" in str(w.message) for w in caught)
