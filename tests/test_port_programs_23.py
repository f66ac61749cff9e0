"""Round 9i of port QA: optimizer research code as popular repositories write it, written once over `lib` (torch.nn
or avalon.nn), `F_` and `th` (torch or avalon), trained a few steps from torch's weights on random float64 data and
compared with torch after every step (losses, parameters), the first step eagerly and the rest compiled (numpy and
cpu backends), with warnings as errors while tracing.

Programs: lucidrains/lion-pytorch's Lion as written (a subclass of `torch.optim.Optimizer` with a `@torch.no_grad()`
step filtering `p.grad`, the group's lr, weight_decay and `*group['betas']`, `self.state[p]` created lazily by
`torch.zeros_like`, `p.data.mul_`, `exp_avg.clone().lerp_(grad, 1 - beta1).sign_()`, `p.add_(update, alpha=-lr)`,
decoupled weight decay by the initial lr); a hand-written Adam as tutorials write one (`state['step']` a Python int,
bias corrections by `beta ** step`, `addcmul_`, `addcdiv_` with `value=-step_size`); davda54/sam's SAM and ASAM
(first_step's `e_w = (torch.pow(p, 2) if adaptive else 1.0) * p.grad * scale`, `old_p` kept in `self.state[p]`,
_grad_norm's stacked norms, second_step's `p.data = self.state[p]["old_p"]` and the wrapped SGD's
`self.base_optimizer.step()`, built from SAM's own param_groups, whose param_groups SAM then shares; two
forward/backward passes per step); moskomule/shampoo.pytorch's Shampoo (full-matrix preconditioners per dimension,
epsilon damping, momentum, inverse roots `u @ s.pow_(power).diag() @ v.t()` of `torch.svd` every `update_freq`
steps, the gradient matricized by `transpose_`/`view`); and lonePatient's Lookahead around Adam (slow weights
every k steps by alpha).

What the ports change: gradients are values (README), so a torch-style optimizer's methods that read `p.grad` take
them as their first argument: `opt.step(grads)`, SAM's `opt.first_step(grads)` and `opt.second_step(grads)` (its
`step(closure)`, which reruns the forward inside, is not used, as its README's training loop does not use it);
while the method runs, `p.grad` is the gradient given (avalon/optim's "Optimizers written as torch's").
Shampoo's `torch.eye(dim, out=grad.new(dim, dim))` is `torch.eye(dim, dtype=grad.dtype)` (Avalon has no `out=`
arguments), its deprecated `add_(scalar, tensor)` overloads are written with `alpha=`, and the svd's signs, which
may differ from torch's, cancel in the inverse root. The state these optimizers create lazily on their first step
must exist before a compiled step, so the first step is eager (as everywhere in these tests); a Python-int step
count in the state (the hand-written Adam's, Shampoo's) is part of a compiled step's signature, so those steps
trace once per step (the tests count the traces).

The regressions at the end are what the programs found: a subclass of `optim.Optimizer` written as torch's
(its own `step` reading `p.grad` and `self.state[p]`) could not run at all: `p.grad` always raised, `self.state`
was keyed by names only, and a wrapped optimizer's `step()` had no gradients to take.
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
from avalon import optim
from avalon.nn import functional as F

pytestmark = pytest.mark.usefixtures("module_kernel_cache")


def arr(x) -> av.Tensor:
    return av.tensor(np.asarray(x))


def mlp(lib, F_, th):
    return lib.Sequential(lib.Linear(4, 6), lib.Tanh(), lib.Linear(6, 3))


def ce_loss(F_):
    def loss_fn(model, x, y):
        return F_.cross_entropy(model(x), y)
    return loss_fn


def batches(seed, n, size=8):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((size, 4)), rng.integers(0, 3, size)) for _ in range(n)]


def torch_train_step(model, opt, x, y):
    opt.zero_grad()
    loss = ce_loss(TF)(model, x, y)
    loss.backward()
    opt.step()
    return loss.detach()


def avalon_train_step(model, opt, x, y):
    loss, grads = av.value_and_grad(ce_loss(F))(model, x, y)
    opt.step(grads)
    return loss


def train_and_compare(make_opt, mode, steps=4, tol=1e-10, tstep=torch_train_step, step=avalon_train_step, seed=0):
    """`steps` steps of torch's program and the port's from the same weights, compared after each; the first
    step of the port is eager, the rest run through `compiled(step, mode)`. The compiled function."""
    ours, theirs = pair(mlp)
    opt, topt = make_opt(av, ours), make_opt(torch, theirs)
    run = compiled(step, mode)
    for it, (x, y) in enumerate(batches(seed, steps)):
        tloss = tstep(theirs, topt, T(x), T(y))
        with strict():
            loss = (run if it else step)(ours, opt, arr(x), arr(y))
        assert rel(loss, tloss) < tol, it
        same_weights(ours, theirs, tol)
    return run


# -- 1. Lion (lucidrains/lion-pytorch: lion_pytorch/lion_pytorch.py) and a hand-written Adam ------------------------

def lion_class(th):
    Optimizer = th.optim.Optimizer

    def exists(val):
        return val is not None

    def update_fn(p, grad, exp_avg, lr, wd, beta1, beta2):
        # stepweight decay
        p.data.mul_(1. - lr * wd)
        # weight update
        update = exp_avg.clone().lerp_(grad, 1. - beta1).sign_()
        p.add_(update, alpha=-lr)
        # decay the momentum running average coefficient
        exp_avg.lerp_(grad, 1. - beta2)

    class Lion(Optimizer):
        def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0,
                     decoupled_weight_decay: bool = False):
            assert lr > 0.
            assert all([0. <= beta <= 1. for beta in betas])
            self._init_lr = lr
            self.decoupled_wd = decoupled_weight_decay
            defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay)
            super().__init__(params, defaults)
            self.update_fn = update_fn

        @th.no_grad()
        def step(self, closure=None):
            loss = None
            if exists(closure):
                with th.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                for p in filter(lambda p: exists(p.grad), group['params']):
                    grad, lr, wd, beta1, beta2, state, decoupled_wd, init_lr = (
                        p.grad, group['lr'], group['weight_decay'], *group['betas'], self.state[p],
                        self.decoupled_wd, self._init_lr)
                    # maybe decoupled weight decay
                    if decoupled_wd:
                        wd /= init_lr
                    # init state - exponential moving average of gradient values
                    if len(state) == 0:
                        state['exp_avg'] = th.zeros_like(p)
                    exp_avg = state['exp_avg']
                    self.update_fn(p, grad, exp_avg, lr, wd, beta1, beta2)
            return loss
    return Lion


def my_adam_class(th):
    class MyAdam(th.optim.Optimizer):
        """Adam with decoupled weight decay, as tutorials write one."""

        def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
            if not 0.0 <= lr:
                raise ValueError(f"Invalid learning rate: {lr}")
            defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
            super().__init__(params, defaults)

        @th.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                beta1, beta2 = group['betas']
                for p in group['params']:
                    if p.grad is None:
                        continue
                    grad = p.grad
                    state = self.state[p]
                    if len(state) == 0:
                        state['step'] = 0
                        state['exp_avg'] = th.zeros_like(p, memory_format=th.preserve_format)
                        state['exp_avg_sq'] = th.zeros_like(p, memory_format=th.preserve_format)
                    exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']
                    state['step'] += 1
                    if group['weight_decay'] != 0:
                        p.mul_(1 - group['lr'] * group['weight_decay'])
                    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    bias_correction1 = 1 - beta1 ** state['step']
                    bias_correction2 = 1 - beta2 ** state['step']
                    denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(group['eps'])
                    step_size = group['lr'] / bias_correction1
                    p.addcdiv_(exp_avg, denom, value=-step_size)
    return MyAdam


@pytest.mark.parametrize("decoupled,mode", [(False, "numpy"), (True, "cpu")])
def test_lion_subclassing_optimizer_with_lazy_state_lerp_and_sign(decoupled, mode):
    def make(th, model):
        return lion_class(th)(model.parameters(), lr=3e-2, weight_decay=0.1 if not decoupled else 3e-3,
                              decoupled_weight_decay=decoupled)
    run = train_and_compare(make, mode)
    assert run.cache_info().misses == 1


def test_lion_groups_with_no_decay_and_a_changed_lr_retrace_and_follow_torch():
    def make(th, model):
        decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
        no_decay = [p for n, p in model.named_parameters() if not n.endswith("weight")]
        return lion_class(th)([{'params': decay}, {'params': no_decay, 'weight_decay': 0.0}], lr=3e-2,
                              weight_decay=0.2)
    ours, theirs = pair(mlp)
    opt, topt = make(av, ours), make(torch, theirs)
    run = compiled(avalon_train_step, "numpy")
    for it, (x, y) in enumerate(batches(1, 5)):
        if it == 3:  # a schedule's change, read as a float by the step: traced again
            for g in opt.param_groups + topt.param_groups:
                g['lr'] = g['lr'] * 0.5
        tloss = torch_train_step(theirs, topt, T(x), T(y))
        with strict():
            loss = (run if it else avalon_train_step)(ours, opt, arr(x), arr(y))
        assert rel(loss, tloss) < 1e-10, it
        same_weights(ours, theirs, 1e-10)
    assert run.cache_info().misses == 2
    assert opt.param_groups[1]['weight_decay'] == 0.0 and opt.param_groups[0]['betas'] == (0.9, 0.99)


@pytest.mark.parametrize("mode", ["numpy"])
def test_hand_written_adam_with_a_python_int_step_count(mode):
    run = train_and_compare(lambda th, model: my_adam_class(th)(model.parameters(), lr=1e-2, weight_decay=0.1),
                            mode, steps=4)
    assert run.cache_info().misses == 3  # state['step'], a Python int, is in the signature


# -- 2. SAM and ASAM (davda54/sam: sam.py and example/train.py's loop) ------------------------------------------------

def sam_class(th):
    class SAM(th.optim.Optimizer):
        def __init__(self, params, base_optimizer, rho=0.05, adaptive=False, **kwargs):
            assert rho >= 0.0, f"Invalid rho, should be non-negative: {rho}"

            defaults = dict(rho=rho, adaptive=adaptive, **kwargs)
            super().__init__(params, defaults)

            self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
            self.param_groups = self.base_optimizer.param_groups
            self.defaults.update(self.base_optimizer.defaults)

        @th.no_grad()
        def first_step(self, zero_grad=False):
            grad_norm = self._grad_norm()
            for group in self.param_groups:
                scale = group["rho"] / (grad_norm + 1e-12)

                for p in group["params"]:
                    if p.grad is None:
                        continue
                    self.state[p]["old_p"] = p.data.clone()
                    e_w = (th.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                    p.add_(e_w)  # climb to the local maximum "w + e(w)"

            if zero_grad:
                self.zero_grad()

        @th.no_grad()
        def second_step(self, zero_grad=False):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    p.data = self.state[p]["old_p"]  # get back to "w" from "w + e(w)"

            self.base_optimizer.step()  # do the actual "sharpness-aware" update

            if zero_grad:
                self.zero_grad()

        @th.no_grad()
        def step(self, closure=None):
            assert closure is not None, "Sharpness Aware Minimization requires closure, but it was not provided"
            closure = th.enable_grad()(closure)  # the closure should do a full forward-backward pass

            self.first_step(zero_grad=True)
            closure()
            self.second_step()

        def _grad_norm(self):
            shared_device = self.param_groups[0]["params"][0].device  # put everything on the same device
            norm = th.norm(
                th.stack([
                    ((th.abs(p) if group["adaptive"] else 1.0) * p.grad).norm(p=2).to(shared_device)
                    for group in self.param_groups for p in group["params"]
                    if p.grad is not None
                ]),
                p=2
            )
            return norm

        def load_state_dict(self, state_dict):
            super().load_state_dict(state_dict)
            self.base_optimizer.param_groups = self.param_groups
    return SAM


def sam_torch_step(model, optimizer, x, y):
    """example/train.py: two forward-backward passes, first_step then second_step."""
    loss_function = ce_loss(TF)
    loss = loss_function(model, x, y)
    loss.mean().backward()
    optimizer.first_step(zero_grad=True)
    loss_function(model, x, y).mean().backward()
    optimizer.second_step(zero_grad=True)
    return loss.detach()


def sam_avalon_step(model, optimizer, x, y):
    loss_function = ce_loss(F)
    loss, grads = av.value_and_grad(lambda m, x, y: loss_function(m, x, y).mean())(model, x, y)
    optimizer.first_step(grads, zero_grad=True)
    _, grads = av.value_and_grad(lambda m, x, y: loss_function(m, x, y).mean())(model, x, y)
    optimizer.second_step(grads, zero_grad=True)
    return loss


@pytest.mark.parametrize("adaptive,mode", [(False, "numpy"), (True, "cpu")])
def test_sam_and_asam_two_passes_around_sgd_with_momentum(adaptive, mode):
    def make(th, model):
        return sam_class(th)(model.parameters(), th.optim.SGD, rho=2.0 if adaptive else 0.05, adaptive=adaptive,
                             lr=0.1, momentum=0.9, weight_decay=5e-4)
    run = train_and_compare(make, mode, tstep=sam_torch_step, step=sam_avalon_step)
    assert run.cache_info().misses == 1


# -- 3. Shampoo (moskomule/shampoo.pytorch: shampoo.py) ----------------------------------------------------------------

def shampoo_class(th):
    def _matrix_power(matrix, power):
        # use CPU for svd for speed up
        device = matrix.device
        matrix = matrix.cpu()
        u, s, v = th.svd(matrix)
        return (u @ s.pow_(power).diag() @ v.t()).to(device)

    class Shampoo(th.optim.Optimizer):
        def __init__(self, params, lr=1e-1, momentum=0.0, weight_decay=0.0, epsilon=1e-4, update_freq=1):
            defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, epsilon=epsilon,
                            update_freq=update_freq)
            super().__init__(params, defaults)

        def step(self, closure=None):
            loss = None
            if closure is not None:
                loss = closure()

            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    grad = p.grad.data
                    order = grad.ndimension()
                    original_size = grad.size()
                    state = self.state[p]
                    momentum = group["momentum"]
                    weight_decay = group["weight_decay"]
                    if len(state) == 0:
                        state["step"] = 0
                        if momentum > 0:
                            state["momentum_buffer"] = grad.clone()
                        for dim_id, dim in enumerate(grad.size()):
                            # precondition matrices (`out=grad.new(dim, dim)` there: see the module docstring)
                            state[f"precond_{dim_id}"] = group["epsilon"] * th.eye(dim, dtype=grad.dtype)
                            state[f"inv_precond_{dim_id}"] = grad.new(dim, dim).zero_()

                    if momentum > 0:
                        grad.mul_(1 - momentum).add_(state["momentum_buffer"], alpha=momentum)

                    if weight_decay > 0:
                        grad.add_(p.data, alpha=group["weight_decay"])

                    # See Algorithm 2 for detail
                    for dim_id, dim in enumerate(grad.size()):
                        precond = state[f"precond_{dim_id}"]
                        inv_precond = state[f"inv_precond_{dim_id}"]

                        # mat_{dim_id}(grad)
                        grad = grad.transpose_(0, dim_id).contiguous()
                        transposed_size = grad.size()
                        grad = grad.view(dim, -1)

                        grad_t = grad.t()
                        precond.add_(grad @ grad_t)
                        if state["step"] % group["update_freq"] == 0:
                            inv_precond.copy_(_matrix_power(precond, -1 / order))

                        if dim_id == order - 1:
                            # finally
                            grad = grad_t @ inv_precond
                            # grad: (-1, last_dim)
                            grad = grad.view(original_size)
                        else:
                            # if not final
                            grad = inv_precond @ grad
                            # grad (dim, -1)
                            grad = grad.view(transposed_size)

                    state["step"] += 1
                    state["momentum_buffer"] = grad
                    p.data.add_(grad, alpha=-group["lr"])

            return loss
    return Shampoo


@pytest.mark.parametrize("momentum,update_freq", [(0.0, 1), (0.5, 2)])
def test_shampoo_inverse_root_preconditioners_by_svd(momentum, update_freq):
    def make(th, model):
        return shampoo_class(th)(model.parameters(), lr=0.05, momentum=momentum, weight_decay=1e-3, epsilon=1e-2,
                                 update_freq=update_freq)
    run = train_and_compare(make, "numpy", steps=4, tol=1e-9)
    assert run.cache_info().misses == 3  # state["step"], a Python int, is in the signature


# -- regressions: what the programs above found -------------------------------------------------------------------

def test_an_optimizer_written_as_torch_s_reads_p_grad_and_self_state_p_while_its_method_runs():
    """Lion, SAM and Shampoo subclass `torch.optim.Optimizer` with their own `step` reading `p.grad` and
    `self.state[p]`: `p.grad` always raised and the state was keyed by names only, so none could run. Such a
    subclass's public methods now take the gradients first; while one runs, a held parameter's `p.grad` is its
    gradient (None without one), `self.state[p]` its state, and a wrapped optimizer's `step()` takes the same
    gradients. Outside, `p.grad` is the error it was, and a method not given gradients says how to give them."""
    lin = av.nn.Linear(3, 2).double()
    seen = {}

    class Probe(optim.Optimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(params, dict(lr=lr, tag="x"))
            self.inner = optim.SGD(self.param_groups, lr=lr)

        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    seen[id(p)] = p.grad
                    self.state[p]["n"] = self.state[p].get("n", 0) + 1
            self.inner.step()

    opt = Probe(lin.parameters())
    assert opt.param_groups[0]["tag"] == "x" and opt.inner.param_groups[0]["tag"] == "x"
    w0 = lin.weight.numpy().copy()
    g = {"weight": av.ones(2, 3, dtype=av.float64)}  # no bias gradient: p.grad is None, as torch's
    opt.step(g)
    assert seen[id(lin.bias)] is None and rel(seen[id(lin.weight)], np.ones((2, 3))) == 0
    assert opt.state[lin.weight]["n"] == 1 and opt.state["weight"] is opt.state[lin.weight]
    assert np.allclose(lin.weight.numpy(), w0 - 0.1)  # the wrapped SGD took the same gradient
    with pytest.raises(AttributeError, match="gradients are values"):
        _ = lin.weight.grad
    with pytest.raises(AttributeError, match=r"opt.step\(grads\)"):
        opt.step()


def test_transpose_in_place_of_a_view_stays_a_view_of_its_base():
    """Shampoo's `grad = p.grad.data` then `grad.transpose_(0, dim_id)`: a shape-changing in-place method on a view
    was refused. A view without views of its own now stays a view of its base through the new step, as torch
    changes only the view's sizes and strides: writes through it reach the base."""
    x = np.arange(6.0).reshape(2, 3)
    for th, mk in ((torch, T), (av, arr)):
        b = mk(x)
        v = b.data
        v.transpose_(0, 1)
        v.mul_(2)
        w = b[1]
        w.unsqueeze_(0)
        w.add_(1)
        assert tuple(v.shape) == (3, 2) and tuple(w.shape) == (1, 3)
        if th is torch:
            want = (b.numpy().copy(), v.numpy().copy())
        else:
            assert np.array_equal(b.numpy(), want[0]) and np.array_equal(v.numpy(), want[1])
