"""torch's parametrizations (`nn.utils.parametrize`, `nn.utils.parametrizations`) and the older
`nn.utils.weight_norm` / `spectral_norm`, against torch in float64: state-dict keys and values
(torch's state dicts load as they are), outputs, gradients with respect to the originals, spectral
norm's power-iteration buffers, removal, custom parametrizations (right_inverse, several originals,
chains, buffers), `cached()`, the orthogonal maps, and two small programs (an SN-GAN discriminator,
a weight-normed conv net) trained with Adam eagerly and compiled, step by step equal to torch's."""
from __future__ import annotations

import contextlib
import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import T, rel

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F
from avalon.nn.utils import parametrizations as PZ
from avalon.nn.utils import parametrize as P

pytestmark = pytest.mark.usefixtures("module_kernel_cache")

TOL = 1e-10


def lib_of(lib):
    """(parametrize, parametrizations, utils) of torch.nn or avalon.nn."""
    return lib.utils.parametrize, lib.utils.parametrizations, lib.utils


@contextlib.contextmanager
def quiet():
    """torch's (and Avalon's) FutureWarning for the older weight_norm."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


@contextlib.contextmanager
def strict():
    """Nothing captured or baked in while tracing: those warnings are errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def pair(make, seed: int = 0):
    """torch's model and Avalon's (float64), torch's state dict loaded into Avalon's."""
    torch.manual_seed(seed)
    with quiet():
        theirs = make(torch.nn).double()
        ours = make(nn).double()
    av.nn.load_state_dict(ours, theirs.state_dict())
    return ours, theirs


def same_state(ours, theirs, tol: float = TOL):
    """Same keys in the same order, same values (relative to the largest element, or 1e-4)."""
    sd = theirs.state_dict()
    assert list(ours.state_dict()) == list(sd)
    for k, v in ours.state_dict().items():
        a, b = v.numpy().astype(np.float64), sd[k].detach().numpy().astype(np.float64)
        assert a.shape == b.shape, k
        assert np.abs(a - b).max(initial=0) / max(np.abs(b).max(initial=0), 1e-4) < tol, k


def check_grads(ours, theirs, x, tol: float = TOL):
    """The output and the gradients of sum(tanh(out) * r) w.r.t. every parameter (the originals)."""
    out_t = theirs(T(x))
    r = np.random.default_rng(1).standard_normal(tuple(out_t.shape))
    theirs.zero_grad()
    lt = (out_t.tanh() * T(r)).sum()
    lt.backward()
    lo, grads = av.value_and_grad(lambda m, x, r: (m(x).tanh() * r).sum())(ours, av.tensor(x), av.tensor(r))
    assert rel(lo, lt) < tol
    tg = {n: p.grad for n, p in theirs.named_parameters()}
    assert list(grads) == list(tg) == [n for n, _ in ours.named_parameters()]
    for n, g in tg.items():
        assert rel(grads[n], g) < tol, n


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


LAYERS = {"linear": (lambda lib: lib.Linear(4, 3), (2, 4)),
          "conv": (lambda lib: lib.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 5)),
          "convT": (lambda lib: lib.ConvTranspose2d(3, 2, 3), (2, 3, 4, 4))}


# -- weight norm ------------------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["new", "old"])
@pytest.mark.parametrize("layer,dim", [("linear", 0), ("linear", None), ("conv", 0), ("conv", 1), ("conv", None),
                                       ("conv", -2)])
def test_weight_norm_matches_torch(api, layer, dim):
    build, xshape = LAYERS[layer]

    def make(lib):
        wn = lib_of(lib)[1].weight_norm if api == "new" else lib.utils.weight_norm
        return wn(build(lib), dim=dim)

    ours, theirs = pair(make)
    same_state(ours, theirs)
    keys = ["parametrizations.weight.original0", "parametrizations.weight.original1"] if api == "new" \
        else ["weight_g", "weight_v"]
    assert list(ours.state_dict()) == ["bias", *keys]
    check_grads(ours, theirs, rand(*xshape))
    assert rel(ours.weight, theirs.weight) < TOL  # (torch's older API sets its weight in each call)


@pytest.mark.parametrize("api", ["new", "old"])
def test_weight_norm_initializes_from_the_weight_and_removes_to_it(api):
    """g and v come from the layer's weight (no randomness): the same weight gives torch's state;
    removing leaves torch's weight as a plain parameter, last in the state dict as in torch."""
    theirs, ours = torch.nn.Conv2d(2, 3, 3).double(), nn.Conv2d(2, 3, 3).double()
    ours.load_state_dict(theirs.state_dict())
    with quiet():
        if api == "new":
            torch.nn.utils.parametrizations.weight_norm(theirs, dim=1)
            nn.utils.parametrizations.weight_norm(ours, dim=1)
        else:
            torch.nn.utils.weight_norm(theirs, dim=1)
            nn.utils.weight_norm(ours, dim=1)
    same_state(ours, theirs)
    with torch.no_grad():  # move g and v away from the initial weight
        for p in theirs.parameters():
            p.mul_(1.5).add_(0.1)
    ours.load_state_dict(theirs.state_dict())
    if api == "new":
        torch.nn.utils.parametrize.remove_parametrizations(theirs, "weight")
        P.remove_parametrizations(ours, "weight")
    else:
        torch.nn.utils.remove_weight_norm(theirs)
        nn.utils.remove_weight_norm(ours)
    assert type(ours) is nn.Conv2d
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["bias", "weight"]
    same_state(ours, theirs)
    assert [n for n, _ in ours.named_parameters()] == ["bias", "weight"]


# -- spectral norm ------------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["new", "old"])
@pytest.mark.parametrize("layer,kw", [("linear", {}), ("conv", {}), ("conv", {"dim": 1, "n_power_iterations": 2}),
                                      ("linear", {"eps": 1e-4}), ("convT", {})])  # (convT: dim 1 by default)
def test_spectral_norm_matches_torch(api, layer, kw):
    build, xshape = LAYERS[layer]

    def make(lib):
        sn = lib_of(lib)[1].spectral_norm if api == "new" else lib.utils.spectral_norm
        return sn(build(lib), **kw)

    ours, theirs = pair(make)
    keys = ["parametrizations.weight.original", "parametrizations.weight.0._u", "parametrizations.weight.0._v"] \
        if api == "new" else ["weight_orig", "weight_u", "weight_v"]
    assert list(ours.state_dict()) == ["bias", *keys]
    assert [n for n, _ in ours.named_buffers()] == keys[1:]
    same_state(ours, theirs)
    x = rand(*xshape)
    check_grads(ours, theirs, x)  # a training forward each: one power-iteration step, in place
    same_state(ours, theirs)
    for i in range(3):  # more training forwards: the buffers follow torch's
        assert rel(ours(av.tensor(x + i)), theirs(T(x + i))) < TOL
        same_state(ours, theirs)
    if api == "old":  # the weight outside a call: the last call's (torch keeps it as an attribute)
        assert rel(ours.weight, theirs.weight) < TOL
    ours.eval()
    theirs.eval()
    before = {k: v.numpy().copy() for k, v in ours.state_dict().items()}
    for _ in range(2):  # eval mode: no power iteration, the buffers stay
        assert rel(ours(av.tensor(x)), theirs(T(x))) < TOL
    assert all((v.numpy() == before[k]).all() for k, v in ours.state_dict().items())
    same_state(ours, theirs)
    check_grads(ours, theirs, x)


def test_spectral_norm_initial_vectors_estimate_the_top_singular_pair():
    """Avalon's own u, v (its generator, then 15 power steps as torch's) give sigma ~ the largest
    singular value, so the normalized weight's spectral norm is ~1."""
    av.manual_seed(0)
    m = PZ.spectral_norm(nn.Linear(5, 6).double())
    s = np.linalg.svd(m.weight.numpy(), compute_uv=False)
    assert abs(s[0] - 1) < 1e-3
    m = nn.utils.spectral_norm(nn.Linear(5, 6).double())
    for _ in range(20):
        m(av.randn(2, 5, dtype=av.float64))
    assert abs(np.linalg.svd(m.weight.numpy(), compute_uv=False)[0] - 1) < 1e-3


@pytest.mark.parametrize("api", ["new", "old"])
def test_spectral_norm_removal_leaves_torchs_weight(api):
    def make(lib):
        sn = lib_of(lib)[1].spectral_norm if api == "new" else lib.utils.spectral_norm
        return sn(lib.Linear(4, 3))

    ours, theirs = pair(make)
    x = rand(2, 4)
    ours(av.tensor(x))
    theirs(T(x))
    original = ours.parametrizations.weight.original if api == "new" else ours.weight_orig
    if api == "new":  # in training mode, reading the weight to keep it steps the power iteration (torch's note)
        torch.nn.utils.parametrize.remove_parametrizations(theirs, "weight")
        P.remove_parametrizations(ours, "weight")
        assert ours.weight is original  # the original tensor object, now holding the weight (torch's set_)
    else:
        torch.nn.utils.remove_spectral_norm(theirs)
        nn.utils.remove_spectral_norm(ours)
    assert type(ours) is nn.Linear and not P.is_parametrized(ours)
    assert list(ours.state_dict()) == ["bias", "weight"]
    same_state(ours, theirs)
    assert rel(ours(av.tensor(x)), theirs(T(x))) < TOL


def test_remove_parametrizations_can_leave_the_original():
    ours, theirs = pair(lambda lib: lib_of(lib)[1].spectral_norm(lib.Linear(4, 3)))
    w = ours.parametrizations.weight.original.numpy().copy()
    torch.nn.utils.parametrize.remove_parametrizations(theirs, "weight", leave_parametrized=False)
    P.remove_parametrizations(ours, "weight", leave_parametrized=False)
    assert (ours.weight.numpy() == w).all()
    same_state(ours, theirs)


# -- training programs: an SN-GAN discriminator, a weight-normed conv net --------------------------

def sn_discriminator(api):
    def make(lib):
        sn = lib_of(lib)[1].spectral_norm if api == "new" else lib.utils.spectral_norm

        class Discriminator(lib.Module):
            def __init__(self):
                super().__init__()
                self.c1 = sn(lib.Conv2d(3, 4, 3, stride=2, padding=1))
                self.c2 = sn(lib.Conv2d(4, 6, 3, stride=2, padding=1))
                self.fc = sn(lib.Linear(6 * 2 * 2, 1))
                self.act = lib.LeakyReLU(0.1)

            def forward(self, x):
                return self.fc(self.act(self.c2(self.act(self.c1(x)))).flatten(1))

        return Discriminator()
    return make


def hinge_loss(F_):
    """SN-GAN's discriminator hinge loss: the model runs twice, two power-iteration steps per step."""
    def loss(d, real, fake):
        return F_.relu(1.0 - d(real)).mean() + F_.relu(1.0 + d(fake)).mean()
    return loss


def wn_convnet(api):
    def make(lib):
        wn = lib_of(lib)[1].weight_norm if api == "new" else lib.utils.weight_norm

        class Net(lib.Module):
            def __init__(self):
                super().__init__()
                self.c1 = wn(lib.Conv2d(2, 4, 3, padding=1))
                self.c2 = wn(lib.Conv2d(4, 4, 3, stride=2), dim=None)
                self.fc = wn(lib.Linear(4 * 2 * 2, 3), dim=1)

            def forward(self, x):
                return self.fc(self.c2(self.c1(x).relu()).relu().flatten(1))

        return Net()
    return make


def ce_loss(F_):
    def loss(net, x, y):
        return F_.cross_entropy(net(x), y)
    return loss


def train_step(loss_fn):
    def step(model, opt, *xs):
        loss, grads = av.value_and_grad(loss_fn)(model, *xs)
        opt.step(grads)
        return loss
    return step


@pytest.mark.parametrize("mode", ["eager", "numpy", "cpu"])
@pytest.mark.parametrize("program,api", [("sngan", "new"), ("sngan", "old"), ("wn", "new"), ("wn", "old")])
def test_training_matches_torch_step_by_step(program, api, mode):
    rng = np.random.default_rng(2)
    if program == "sngan":
        make, loss_of = sn_discriminator(api), hinge_loss
        data = [(rng.standard_normal((3, 3, 8, 8)), rng.standard_normal((3, 3, 8, 8))) for _ in range(3)]
    else:
        make, loss_of = wn_convnet(api), ce_loss
        data = [(rng.standard_normal((3, 2, 6, 6)), rng.integers(0, 3, 3)) for _ in range(3)]
    ours, theirs = pair(make)
    opt = optim.Adam(ours.parameters(), lr=1e-2)
    topt = torch.optim.Adam(theirs.parameters(), lr=1e-2)
    step = train_step(loss_of(F))
    step = step if mode == "eager" else av.compile(step, backend=mode)
    for a, b in data:
        topt.zero_grad()
        lt = loss_of(TF)(theirs, T(a), T(b))
        lt.backward()
        topt.step()
        with strict():
            loss = step(ours, opt, av.tensor(a), av.tensor(b))
        assert rel(loss, lt) < 1e-9
        same_state(ours, theirs, 1e-9)
    if mode != "eager":
        assert step.cache_info().misses == 1


# -- custom parametrizations --------------------------------------------------------------------------

def symmetric(lib):
    class Symmetric(lib.Module):
        def forward(self, X):  # noqa: N803
            return X.triu() + X.triu(1).mT

        def right_inverse(self, A):  # noqa: N803
            return A.triu()
    return Symmetric()


def scale_with_buffer(lib, th):
    class Scale(lib.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("s", th.tensor(1.5, dtype=th.float64))

        def forward(self, X):  # noqa: N803
            return X * self.s

        def right_inverse(self, X):  # noqa: N803
            return X / self.s
    return Scale()


def magnitude_direction(lib):
    """A tuple right_inverse: (the largest |w|, w / that), recombined as their product."""
    class MagDir(lib.Module):
        def forward(self, m, d):
            return m * d

        def right_inverse(self, w):
            m = w.abs().amax()
            return m, w / m
    return MagDir()


def test_custom_parametrization_with_right_inverse():
    def make(lib):
        return lib_of(lib)[0].register_parametrization(lib.Linear(4, 4), "weight", symmetric(lib))

    ours, theirs = pair(make)
    assert type(ours).__name__ == "ParametrizedLinear"
    assert P.type_before_parametrizations(ours) is nn.Linear and P.is_parametrized(ours, "weight")
    assert P.is_parametrized(ours) and not P.is_parametrized(ours, "bias")
    w = ours.weight.numpy()
    assert (w == w.T).all()
    same_state(ours, theirs)
    check_grads(ours, theirs, rand(3, 4))
    a = rand(4, 4, seed=3)
    a = a + a.T
    ours.weight = av.tensor(a)  # right_inverse: the original becomes triu(A)
    with torch.no_grad():
        theirs.weight = T(a)
    assert rel(ours.weight, a) < 1e-15
    assert (ours.parametrizations.weight.original.numpy() == np.triu(a)).all()
    same_state(ours, theirs)


def test_original_stays_the_same_tensor_object():
    """The weight object becomes `original` (torch's set_), so whatever holds it (a tied layer, a
    frozen flag) keeps it; an optimizer made after the registration sees it under its new name."""
    m = nn.Linear(3, 3).double()
    w = m.weight
    P.register_parametrization(m, "weight", symmetric(nn))
    assert m.parametrizations.weight.original is w
    opt = optim.SGD(m.parameters(), lr=0.1)
    loss, grads = av.value_and_grad(lambda m, x: m(x).sum())(m, av.ones(2, 3, dtype=av.float64))
    assert list(grads) == ["bias", "parametrizations.weight.original"]
    before = w.numpy().copy()
    opt.step(grads)
    assert (w.numpy() != before).any()


def test_tuple_right_inverse_registers_original0_original1():
    def make(lib):
        return lib_of(lib)[0].register_parametrization(lib.Linear(4, 3), "weight", magnitude_direction(lib))

    ours, theirs = pair(make)
    assert list(ours.state_dict()) == ["bias", "parametrizations.weight.original0", "parametrizations.weight.original1"]
    assert ours.parametrizations.weight.ntensors == 2 and not ours.parametrizations.weight.is_tensor
    same_state(ours, theirs)
    check_grads(ours, theirs, rand(2, 4))
    new = rand(3, 4, seed=5)
    ours.weight = av.tensor(new)
    with torch.no_grad():
        theirs.weight = T(new)
    same_state(ours, theirs)
    with pytest.raises(ValueError, match="sequence of tensors"):
        P.remove_parametrizations(ours, "weight", leave_parametrized=False)
    torch.nn.utils.parametrize.remove_parametrizations(theirs, "weight")
    P.remove_parametrizations(ours, "weight")
    same_state(ours, theirs)


def test_chained_parametrizations_and_a_parametrization_buffer():
    def make(lib):
        th = torch if lib is torch.nn else av
        m = lib.Linear(4, 4)
        lib_of(lib)[0].register_parametrization(m, "weight", symmetric(lib))
        lib_of(lib)[0].register_parametrization(m, "weight", scale_with_buffer(lib, th))
        return m

    ours, theirs = pair(make)
    assert list(ours.state_dict()) == ["bias", "parametrizations.weight.original", "parametrizations.weight.1.s"]
    assert [n for n, _ in ours.named_buffers()] == ["parametrizations.weight.1.s"]
    same_state(ours, theirs)
    assert rel(ours.weight, theirs.weight) < TOL
    check_grads(ours, theirs, rand(3, 4))
    a = rand(4, 4, seed=4)
    a = a + a.T
    ours.weight = av.tensor(a)  # through both right_inverses, last first
    with torch.no_grad():
        theirs.weight = T(a)
    same_state(ours, theirs)
    assert rel(ours.weight, a) < 1e-15


def test_parametrized_buffer_stays_a_buffer():
    def make(lib):
        th = torch if lib is torch.nn else av

        class M(lib.Module):
            def __init__(self):
                super().__init__()
                self.w = lib.Parameter(th.ones(3, 3))
                self.register_buffer("b", th.arange(9.0).reshape(3, 3))

            def forward(self, x):
                return x @ self.w + x @ self.b

        m = M()
        lib_of(lib)[0].register_parametrization(m, "b", symmetric(lib))
        return m

    ours, theirs = pair(make)
    assert [n for n, _ in ours.named_buffers()] == ["parametrizations.b.original"]
    assert [n for n, _ in ours.named_parameters()] == ["w"]
    same_state(ours, theirs)
    check_grads(ours, theirs, rand(2, 3))


def test_cached_computes_once_per_block_and_per_trace():
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, X):  # noqa: N803
            self.calls += 1
            return X * 2.0

    m = P.register_parametrization(nn.Linear(3, 3).double(), "weight", Counting())
    c = m.parametrizations.weight[0]
    c.calls = 0
    m.weight, m.weight  # noqa: B018
    assert c.calls == 2
    with P.cached():
        a, b = m.weight, m.weight
        assert a is b and c.calls == 3
        with P.cached():  # nested: the same cache
            assert m.weight is a
    assert m.weight is not a and c.calls == 4

    def loss(m, x):  # the weight read twice: once with the cache
        return (x @ m.weight).sum() + (x @ m.weight.T).sum()

    x = av.tensor(rand(2, 3))
    plain, g1 = av.value_and_grad(loss)(m, x)
    with P.cached():
        w_eager = m.weight
        c.calls = 0
        value, g2 = av.value_and_grad(loss)(m, av.tensor(rand(2, 3) + 1))  # a new trace: no eager value inside
        assert c.calls == 1
        assert m.weight is w_eager
    tm = torch.nn.Linear(3, 3).double()
    tm.load_state_dict({"weight": T(m.parametrizations.weight.original.numpy()), "bias": T(m.bias.numpy())})
    tw = tm.weight * 2.0
    tl = (T(rand(2, 3) + 1) @ tw).sum() + (T(rand(2, 3) + 1) @ tw.T).sum()
    tl.backward()
    assert rel(value, tl) < TOL and rel(g2["parametrizations.weight.original"], tm.weight.grad) < TOL


def test_compiled_forward_and_deepcopy_of_a_parametrized_model():
    m = PZ.spectral_norm(nn.Linear(4, 3).double())
    twin = copy.deepcopy(m)
    assert type(twin).__name__ == "ParametrizedLinear" and type(twin) is not type(m)  # a class of its own
    assert twin.parametrizations.weight.original is not m.parametrizations.weight.original
    run = av.compile(lambda m, x: m(x), backend="numpy")
    x = av.tensor(rand(2, 4))
    with strict():
        got = run(m, x)
    want = twin(x)
    assert rel(got, want) < TOL
    assert rel(m.parametrizations.weight[0]._u, twin.parametrizations.weight[0]._u) < TOL  # the compiled step wrote u
    P.remove_parametrizations(twin, "weight")  # (torch's copies share their class: this would break m there)
    assert type(twin) is nn.Linear and type(m).__name__ == "ParametrizedLinear" and m.weight.shape == (3, 4)


def test_transfer_parametrizations_and_params():
    src = PZ.weight_norm(nn.Linear(3, 2).double())
    dst = P.transfer_parametrizations_and_params(src, nn.Linear(3, 2).double())
    assert P.is_parametrized(dst, "weight") and not P.is_parametrized(dst, "bias")
    assert dst.parametrizations.weight.original1 is src.parametrizations.weight.original1  # shared, as torch's
    assert rel(dst.weight, src.weight) == 0


def test_plain_object_models_can_be_parametrized():
    class Affine:
        def __init__(self):
            self.weight = av.tensor(rand(3, 3))

        def __call__(self, x):
            return x @ self.weight

    m = P.register_parametrization(Affine(), "weight", symmetric(nn))
    assert [n for n, _ in nn.named_parameters(m)] == ["parametrizations.weight.original"]
    w = m.weight.numpy()
    assert (w == w.T).all()
    _, g = av.value_and_grad(lambda m, x: m(x).sum())(m, av.ones(2, 3, dtype=av.float64))
    assert list(g) == ["parametrizations.weight.original"]
    P.remove_parametrizations(m, "weight")
    assert type(m) is Affine and (m.weight.numpy() == w).all()


# -- orthogonal ------------------------------------------------------------------------------------

@pytest.mark.parametrize("orthogonal_map", ["matrix_exp", "cayley", "householder"])
@pytest.mark.parametrize("use_trivialization", [True, False])
@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3)])
def test_orthogonal_matches_torch(orthogonal_map, use_trivialization, shape):
    out_f, in_f = shape
    theirs, ours = torch.nn.Linear(in_f, out_f).double(), nn.Linear(in_f, out_f).double()
    ours.load_state_dict(theirs.state_dict())
    torch.nn.utils.parametrizations.orthogonal(theirs, orthogonal_map=orthogonal_map,
                                               use_trivialization=use_trivialization)
    PZ.orthogonal(ours, orthogonal_map=orthogonal_map, use_trivialization=use_trivialization)
    q = ours.weight.numpy()
    small = min(shape)
    gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
    assert np.abs(gram - np.eye(small)).max() < 1e-12
    if shape[0] == shape[1] or not use_trivialization:  # no random completion: registration gives torch's state
        same_state(ours, theirs, 1e-12)
    ours.load_state_dict(theirs.state_dict())
    assert rel(ours.weight, theirs.weight) < TOL
    with torch.no_grad():  # away from the starting point, where the gradients say more
        theirs.parametrizations.weight.original.add_(T(0.3 * rand(*shape, seed=7)))
    ours.load_state_dict(theirs.state_dict())
    check_grads(ours, theirs, rand(2, in_f))


def test_orthogonal_assignment_and_default_maps():
    m = PZ.orthogonal(nn.Linear(3, 3).double())
    assert m.parametrizations.weight[0].orthogonal_map == "matrix_exp"
    assert PZ.orthogonal(nn.Linear(2, 3)).parametrizations.weight[0].orthogonal_map == "householder"
    q, _ = np.linalg.qr(rand(3, 3, seed=9))
    m.weight = av.tensor(q)
    assert rel(m.weight, q) < 1e-12
    assert (m.parametrizations.weight.original.numpy() == -np.eye(3)).all()


def test_householder_product_matches_torch():
    a, tau, w = rand(2, 5, 3), rand(2, 2, seed=1), rand(2, 5, 3, seed=2)
    ta, tt = T(a).requires_grad_(), T(tau).requires_grad_()
    want = torch.linalg.householder_product(ta, tt)
    (want * T(w)).sum().backward()
    got = av.linalg.householder_product(av.tensor(a), av.tensor(tau))
    assert rel(got, want) < 1e-13
    ga, gt = av.grad(lambda a, t, w: (av.linalg.householder_product(a, t) * w).sum(), argnums=(0, 1))(
        av.tensor(a), av.tensor(tau), av.tensor(w))
    assert rel(ga, ta.grad) < 1e-12 and rel(gt, tt.grad) < 1e-12


# -- errors -------------------------------------------------------------------------------------------

def test_errors_name_the_problem():
    lin = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="does not have a parameter, a buffer, or a parametrized element with name "
                                         "'weihgt'"):
        P.register_parametrization(lin, "weihgt", symmetric(nn))
    with pytest.raises(ValueError, match="does not have a parametrization on weight"):
        P.remove_parametrizations(lin, "weight")
    with pytest.raises(ValueError, match="may not change the shape"):
        P.register_parametrization(nn.Linear(3, 3), "weight", lambda x: x[:2])
    P.register_parametrization(nn.Linear(3, 3), "weight", lambda x: x[:2], unsafe=True)
    with pytest.raises(RuntimeError, match="does not implement right_inverse"):
        m = P.register_parametrization(nn.Linear(3, 3), "weight", lambda x: 2 * x)
        m.weight = av.ones(3, 3)
    with pytest.raises(ValueError, match="has no parameter or buffer with name 'kernel'"):
        PZ.spectral_norm(nn.Linear(3, 3), "kernel")
    with pytest.raises(ValueError, match="n_power_iterations to be positive"):
        PZ.spectral_norm(nn.Linear(3, 3), n_power_iterations=0)
    with pytest.raises(IndexError, match="Dimension out of range"):
        PZ.spectral_norm(nn.Linear(3, 3), dim=2)
    with pytest.raises(ValueError, match='orthogonal_map has to be one of "matrix_exp", "cayley", "householder"'):
        PZ.orthogonal(nn.Linear(3, 3), orthogonal_map="qr")
    with pytest.raises(ValueError, match="Expected a matrix or batch of matrices"):
        PZ.orthogonal(nn.Linear(3, 3), "bias")
    with pytest.raises(NotImplementedError, match="use_trivialization=False"):
        m = PZ.orthogonal(nn.Linear(3, 3), use_trivialization=False)
        m.weight = av.eye(3)
    with pytest.raises(RuntimeError, match="input.shape\\[-2\\] must be greater than or equal"):
        av.linalg.householder_product(av.ones(2, 3), av.ones(2))
    with quiet():
        m = nn.utils.weight_norm(nn.Linear(3, 3))
        with pytest.raises(RuntimeError, match="Cannot register two weight_norm hooks on the same parameter weight"):
            nn.utils.weight_norm(m)
        with pytest.raises(AttributeError, match="no parameter named 'kernel'"):
            nn.utils.weight_norm(nn.Linear(3, 3), "kernel")
    with pytest.raises(AttributeError, match="remove_weight_norm"):
        m.weight = av.ones(3, 3)
    with pytest.raises(ValueError, match="spectral_norm of 'weight' not found"):
        nn.utils.remove_spectral_norm(m)
    with pytest.raises(ValueError, match="weight_norm of 'bias' not found"):
        nn.utils.remove_weight_norm(m, "bias")
    nn.utils.remove_weight_norm(m)
    assert type(m) is nn.Linear


def test_an_optimizer_built_before_registration_keeps_training_the_same_tensor():
    """spectral_norm keeps the weight tensor itself as `parametrizations.weight.original`: an optimizer
    holding it as `weight` matches its renamed gradient by identity, as torch's holds the Parameter."""
    torch.manual_seed(0)
    ours, theirs = nn.Linear(3, 2).double(), torch.nn.Linear(3, 2).double()
    ours_opt, theirs_opt = optim.Adam(ours.parameters(), lr=0.1), torch.optim.Adam(theirs.parameters(), lr=0.1)
    PZ.spectral_norm(ours)
    torch.nn.utils.parametrizations.spectral_norm(theirs)
    av.nn.load_state_dict(ours, theirs.state_dict())
    x = np.random.default_rng(0).standard_normal((4, 3))
    for _ in range(2):
        _, g = av.value_and_grad(lambda m, x: (m(x) ** 2).sum())(ours, av.tensor(x))
        ours_opt.step(g)
        theirs_opt.zero_grad()
        (theirs(torch.tensor(x)) ** 2).sum().backward()
        theirs_opt.step()
    sd = theirs.state_dict()
    for k, v in ours.state_dict().items():
        np.testing.assert_allclose(v.numpy(), sd[k].detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=k)
