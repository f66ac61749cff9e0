"""The `check` op: torch's checks on values (binary_cross_entropy's input and target in [0, 1]) kept in
traced graphs, so a compiled step, a gradient or an exported-and-run graph raises where torch raises
instead of computing nan in silence; every backend raises the reference's ValueCheckError (a
RuntimeError, as torch's) naming the user's line."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import avalon as av
import avalon.nn.functional as F
from avalon import nn, ops
from avalon.ir import parse
from avalon.ir.reference import ValueCheckError

RNG = np.random.default_rng(7)
LOGITS = RNG.standard_normal((4, 3)).astype(np.float32)
PROBS = (1 / (1 + np.exp(-LOGITS))).astype(np.float32)
TARGET = np.eye(3, dtype=np.float32)[[0, 2, 1, 1]]
INPUT_MSG = "all elements of input should be between 0 and 1"


def _torch_bce(p, t):
    return float(TF.binary_cross_entropy(torch.tensor(p), torch.tensor(t)))


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_compiled_bce_raises_for_logits_and_bad_targets_naming_the_line(backend):
    f = av.compile(F.binary_cross_entropy, backend=backend)
    assert float(f(av.tensor(PROBS), av.tensor(TARGET)).numpy()) == pytest.approx(_torch_bce(PROBS, TARGET), rel=1e-6)
    with pytest.raises(RuntimeError, match=INPUT_MSG) as e:
        f(av.tensor(LOGITS), av.tensor(TARGET))
    assert isinstance(e.value, ValueCheckError)
    assert "test_value_checks.py:" in str(e.value) and "binary_cross_entropy_with_logits" in str(e.value)
    with pytest.raises(ValueCheckError, match="all elements of target should be between 0 and 1"):
        f(av.tensor(PROBS), av.tensor(TARGET * 2))
    nan = PROBS.copy()
    nan[1, 2] = np.nan  # torch's check fails on nan too
    with pytest.raises(RuntimeError, match=INPUT_MSG):
        TF.binary_cross_entropy(torch.tensor(nan), torch.tensor(TARGET))
    with pytest.raises(ValueCheckError, match=INPUT_MSG):
        f(av.tensor(nan), av.tensor(TARGET))
    # the same compiled function still runs good values after an error
    assert float(f(av.tensor(PROBS), av.tensor(TARGET)).numpy()) == pytest.approx(_torch_bce(PROBS, TARGET), rel=1e-6)


def test_a_compiled_training_step_with_bce_on_logits_raises_and_with_sigmoid_matches_torch():
    torch.manual_seed(0)
    tm = torch.nn.Linear(5, 3)
    m = nn.Linear(5, 3)
    m.load_state_dict({k: v.detach().numpy().copy() for k, v in tm.state_dict().items()})
    x = RNG.standard_normal((6, 5)).astype(np.float32)
    y = (RNG.random((6, 3)) > 0.5).astype(np.float32)
    opt = av.optim.SGD(m.parameters(), lr=0.5)

    def step(model, o, x, y, squash):
        out = model(x)
        loss, grads = av.value_and_grad(lambda mm: F.binary_cross_entropy(
            av.sigmoid(mm(x)) if squash else mm(x), y))(model)
        o.step(grads)
        return loss, out

    f = av.compile(step)
    topt = torch.optim.SGD(tm.parameters(), lr=0.5)
    for _ in range(2):
        loss, _ = f(m, opt, av.tensor(x), av.tensor(y), True)
        topt.zero_grad()
        tl = TF.binary_cross_entropy(torch.sigmoid(tm(torch.tensor(x))), torch.tensor(y))
        tl.backward()
        topt.step()
        assert float(loss.numpy()) == pytest.approx(float(tl.detach()), rel=1e-5)
    np.testing.assert_allclose(m.weight.numpy(), tm.weight.detach().numpy(), rtol=1e-5, atol=1e-6)
    before = m.weight.numpy().copy()
    with pytest.raises(RuntimeError, match=INPUT_MSG):
        TF.binary_cross_entropy(tm(torch.tensor(x)), torch.tensor(y))
    with pytest.raises(ValueCheckError, match=INPUT_MSG):
        f(m, opt, av.tensor(x * 10), av.tensor(y), False)
    assert np.array_equal(m.weight.numpy(), before)  # nothing was updated by the failed step


def test_gradients_through_a_check_are_the_value_s_and_the_check_runs_under_grad_and_vmap():
    g = av.grad(lambda x, t: F.binary_cross_entropy(av.sigmoid(x), t))(av.tensor(LOGITS), av.tensor(TARGET))
    x = torch.tensor(LOGITS, requires_grad=True)
    TF.binary_cross_entropy(torch.sigmoid(x), torch.tensor(TARGET)).backward()
    np.testing.assert_allclose(g.numpy(), x.grad.numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueCheckError, match=INPUT_MSG):
        av.grad(lambda x, t: F.binary_cross_entropy(av.sigmoid(x) * 1.5, t))(av.tensor(LOGITS), av.tensor(TARGET))
    per_row = av.vmap(lambda p, t: F.binary_cross_entropy(p, t))
    want = [_torch_bce(PROBS[i], TARGET[i]) for i in range(4)]
    np.testing.assert_allclose(av.compile(per_row)(av.tensor(PROBS), av.tensor(TARGET)).numpy(), want, rtol=1e-6)
    with pytest.raises(ValueCheckError, match=INPUT_MSG):
        av.compile(per_row)(av.tensor(LOGITS), av.tensor(TARGET))
    # forward mode: the tangent of the checked value passes through
    p, tan = av.func.jvp(lambda x: ops.check_values(x, x > -10, "too small") * 2.0, (av.tensor(LOGITS),),
                         (av.tensor(np.ones_like(LOGITS)),))
    np.testing.assert_array_equal(tan.numpy(), np.full_like(LOGITS, 2.0))


def test_check_values_eagerly_and_its_ir_text_round_trips():
    x = av.tensor(LOGITS)
    assert np.array_equal(ops.check_values(x, av.tensor(True), "never").numpy(), LOGITS)  # broadcast condition
    with pytest.raises(ValueCheckError, match='negative "values" found'):
        ops.check_values(x, x >= 0, 'negative "values" found')
    with pytest.raises(TypeError, match="boolean tensor"):
        ops.check_values(x, x, "not a condition")
    g = av.trace(lambda x: ops.check_values(x, x >= 0, 'a "quoted" message; with {braces}') + 1.0, x)
    text = str(g)
    assert 'check %' in text and "message = " in text
    assert str(parse(text)) == text
    with pytest.raises(ValueCheckError, match=r'a "quoted" message; with \{braces\}'):
        av.interpret(parse(text), LOGITS)


def test_triton_kernels_flag_a_failed_check_and_keep_running():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton interpreter is set by conftest.py on machines without a GPU")
    f = av.compile(F.binary_cross_entropy, backend="triton")
    assert float(f(av.tensor(PROBS), av.tensor(TARGET)).numpy()) == pytest.approx(_torch_bce(PROBS, TARGET), rel=1e-5)
    with pytest.raises(ValueCheckError, match=INPUT_MSG) as e:
        f(av.tensor(LOGITS), av.tensor(TARGET))
    assert "test_value_checks.py:" in str(e.value)
    assert float(f(av.tensor(PROBS), av.tensor(TARGET)).numpy()) == pytest.approx(_torch_bce(PROBS, TARGET), rel=1e-5)


def test_iree_module_returns_the_condition_and_the_runtime_raises():
    pytest.importorskip("iree.runtime", reason="needs the mlir extra: pip install -e '.[mlir]'")
    pytest.importorskip("iree.compiler", reason="needs the mlir extra: pip install -e '.[mlir]'")
    f = av.compile(F.binary_cross_entropy, backend="iree")
    assert float(f(av.tensor(PROBS), av.tensor(TARGET)).numpy()) == pytest.approx(_torch_bce(PROBS, TARGET), rel=1e-5)
    with pytest.raises(ValueCheckError, match=INPUT_MSG):
        f(av.tensor(LOGITS), av.tensor(TARGET))


def test_exported_mlir_asserts_the_check_and_onnx_drops_it():
    g = av.trace(F.binary_cross_entropy, av.tensor(PROBS), av.tensor(TARGET))
    from avalon.mlir.linalg import to_linalg_mlir
    text = to_linalg_mlir(g)
    asserts = [ln.strip() for ln in text.splitlines() if "cf.assert" in ln]
    assert len(asserts) == 2 and INPUT_MSG in asserts[0] and "all elements of target" in asserts[1], asserts
    assert all('"test_value_checks.py:' in a or "/test_value_checks.py:" in a for a in asserts), asserts
    if importlib.util.find_spec("iree") and importlib.util.find_spec("iree.compiler") and \
            importlib.util.find_spec("iree.runtime"):
        from iree import runtime as rt
        from iree.compiler import compile_str
        vmfb = compile_str(text, target_backends=["llvm-cpu"], extra_args=["--iree-llvmcpu-target-cpu=generic"])
        ctx = rt.SystemContext(config=rt.Config("local-task"))
        ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb))
        fn = ctx.modules.module[g.name]
        assert float(fn(PROBS, TARGET).to_host()) == pytest.approx(_torch_bce(PROBS, TARGET), rel=1e-5)
        with pytest.raises(RuntimeError, match="FAILED_PRECONDITION.*all elements of input should be between 0 and 1"):
            fn(LOGITS, TARGET)
    ort = pytest.importorskip("onnxruntime")
    from avalon.onnx import export
    model = export(g, None)
    sess = ort.InferenceSession(model.SerializeToString())
    names = [i.name for i in sess.get_inputs()]
    out = sess.run(None, dict(zip(names, [PROBS, TARGET])))[0]
    assert float(out) == pytest.approx(_torch_bce(PROBS, TARGET), rel=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_compiled_cholesky_inverse_and_solve_refuse_indefinite_and_singular_matrices_as_torch(backend):
    indefinite = np.array([[[2.0, 0.5], [0.5, 1.0]], [[1.0, 2.0], [2.0, 1.0]]])
    singular = np.array([[[2.0, 1.0], [1.0, 3.0]], [[1.0, 2.0], [2.0, 4.0]]])
    good = np.array([[[2.0, 1.0], [1.0, 3.0]], [[4.0, 1.0], [1.0, 2.0]]])
    rhs = RNG.standard_normal((2, 2, 3))
    cases = [("cholesky", lambda a, r: av.linalg.cholesky(a), torch.linalg.cholesky, indefinite,
              "not positive-definite"),
             ("inv", lambda a, r: av.linalg.inv(a), torch.linalg.inv, singular, "singular"),
             ("solve", lambda a, r: av.linalg.solve(a, r), lambda a: torch.linalg.solve(a, torch.tensor(rhs)),
              singular, "singular")]
    r = av.tensor(rhs)
    for name, ours, theirs, bad, match in cases:
        f = av.compile(ours, backend=backend)
        np.testing.assert_allclose(f(av.tensor(good), r).numpy(), theirs(torch.tensor(good)).numpy(), rtol=1e-10,
                                   err_msg=name)
        with pytest.raises(torch.linalg.LinAlgError):
            theirs(torch.tensor(bad))
        with pytest.raises(av.linalg.LinAlgError, match=match) as e:  # torch's type, as eagerly
            f(av.tensor(bad), r)
        assert isinstance(e.value, ValueCheckError) and "test_value_checks.py:" in str(e.value), name
        with pytest.raises(av.linalg.LinAlgError, match=match):
            ours(av.tensor(bad), r)
    # inputs that are not finite give not-finite results, as eagerly (torch's checks are on pivots)
    nan = good.copy()
    nan[0, 0, 0] = np.nan
    assert np.isnan(av.compile(lambda a: av.linalg.inv(a), backend=backend)(av.tensor(nan)).numpy()[0]).any()


def test_a_compiled_loss_through_cholesky_differentiates_and_refuses_an_indefinite_covariance():
    def nll(l_raw, x):
        cov = l_raw @ l_raw.mT + 0.1 * av.eye(3)
        return av.linalg.cholesky(cov).diagonal(dim1=-2, dim2=-1).log().sum() + (x * x).sum()
    lr = RNG.standard_normal((3, 3))
    x = RNG.standard_normal(3)
    g = av.compile(av.grad(nll))(av.tensor(lr), av.tensor(x))
    t = torch.tensor(lr, requires_grad=True)
    c = t @ t.mT + 0.1 * torch.eye(3, dtype=torch.float64)
    torch.linalg.cholesky(c).diagonal(dim1=-2, dim2=-1).log().sum().backward()
    np.testing.assert_allclose(g.numpy(), t.grad.numpy(), rtol=1e-6)
    with pytest.raises(av.linalg.LinAlgError, match="not positive-definite"):
        av.compile(av.grad(lambda a: av.linalg.cholesky(a).sum()))(av.tensor(-np.eye(3)))


def test_compiled_multinomial_refuses_negative_nan_and_all_zero_rows_as_eagerly():
    f = av.compile(lambda p: av.multinomial(p, 2))
    assert f(av.tensor(np.array([[0.2, 0.3, 0.5]]))).shape == (1, 2)
    for bad, match in [([[0.2, -0.1, 0.9]], "element < 0"), ([[0.2, np.nan, 0.9]], "element < 0"),
                       ([[0.0, 0.0, 0.0]], r"sum of probabilities <= 0"),
                       ([[0.0, 1.0, 0.0]], "not enough non-negative category")]:
        if "enough" not in match:  # (torch 2.13 draws a zero-probability category there; Avalon refuses, eagerly too)
            with pytest.raises(RuntimeError, match=match):
                torch.multinomial(torch.tensor(bad), 2)
        with pytest.raises(ValueCheckError, match=match):
            f(av.tensor(np.array(bad)))
        with pytest.raises(ValueError, match=match):
            av.multinomial(av.tensor(np.array(bad)), 2)


def _refused_like_torch(ours, theirs, args, match):
    """torch raises; Avalon raises a RuntimeError/ValueError matching `match` eagerly and compiled."""
    with pytest.raises((RuntimeError, ValueError)):
        theirs(*[torch.tensor(a) for a in args])
    with pytest.raises((RuntimeError, ValueError), match=match):
        ours(*[av.tensor(a) for a in args])
    with pytest.raises(ValueCheckError, match=match):
        av.compile(ours)(*[av.tensor(a) for a in args])


def test_random_draws_and_gaussian_nll_refuse_invalid_parameters_eagerly_and_compiled():
    x = np.array([0.5, 1.0, 2.0], np.float32)
    neg = np.array([0.5, -1.0, 2.0], np.float32)
    nan = np.array([0.5, np.nan, 0.2], np.float32)
    _refused_like_torch(lambda a, b, v: F.gaussian_nll_loss(a, b, v), lambda a, b, v: TF.gaussian_nll_loss(a, b, v),
                        (x, x, neg), "var has negative entry")
    _refused_like_torch(lambda m, s: av.normal(m, s), lambda m, s: torch.normal(m, s), (x, neg), "std >= 0.0")
    _refused_like_torch(lambda m, s: av.normal(m, s), lambda m, s: torch.normal(m, s), (x, nan), "std >= 0.0")
    _refused_like_torch(lambda p: av.bernoulli(p), lambda p: torch.bernoulli(p), (x,), r"p_in >= 0 && p_in <= 1")
    _refused_like_torch(lambda p: av.bernoulli(p), lambda p: torch.bernoulli(p), (nan,), r"p_in >= 0 && p_in <= 1")
    _refused_like_torch(lambda r: av.poisson(r), lambda r: torch.poisson(r), (neg,), "rate to be non-negative")
    _refused_like_torch(lambda p: av.zeros(3).bernoulli_(p), lambda p: torch.zeros(3).bernoulli_(p), (x,),
                        r"p_in >= 0 && p_in <= 1")
    with pytest.raises(RuntimeError, match=r"p to be in \[0, 1\], but got p=1.5"):
        av.zeros(3).bernoulli_(1.5)
    # valid parameters still draw, compiled (a nan variance passes, as torch's any(var < 0))
    assert set(np.unique(av.compile(lambda p: av.bernoulli(p))(av.tensor(x * 0.4)).numpy())) <= {0.0, 1.0}
    assert (av.compile(lambda r: av.poisson(r))(av.tensor(x)).numpy() >= 0).all()
    assert np.isnan(av.compile(lambda a, b, v: F.gaussian_nll_loss(a, b, v))(
        av.tensor(x), av.tensor(x), av.tensor(nan)).numpy())


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_compiled_embedding_bag_checks_its_offsets_as_eagerly(backend):
    w, idx = RNG.standard_normal((5, 3)).astype(np.float32), np.array([0, 1, 2, 4])
    f = av.compile(lambda w, i, o: F.embedding_bag(i, w, o), backend=backend)
    good = np.array([0, 2])
    np.testing.assert_allclose(f(av.tensor(w), av.tensor(idx), av.tensor(good)).numpy(),
                               TF.embedding_bag(torch.tensor(idx), torch.tensor(w), torch.tensor(good)).numpy(),
                               rtol=1e-6)
    for offsets, match in [([1, 2], r"offsets\[0\] has to be 0"), ([0, 5], r"offsets\[-1\] can not be greater"),
                           ([0, 3, 2], "non-decreasing")]:
        with pytest.raises(RuntimeError, match=match):
            F.embedding_bag(av.tensor(idx), av.tensor(w), av.tensor(np.array(offsets)))
        with pytest.raises(ValueCheckError, match=match) as e:
            f(av.tensor(w), av.tensor(idx), av.tensor(np.array(offsets)))
        assert "test_value_checks.py:" in str(e.value)


def test_checks_inside_compiled_c_loops_raise_after_the_loop_and_never_after_a_state_write():
    """backend="cpu" compiles a group's elementwise run to one C loop (4096+ elements): a check in it
    counts the failed elements and raises after the call; a run that would also write a donated state
    (a parameter updated in place) keeps numpy's lines, which check before anything is written."""
    p = RNG.random((64, 96)).astype(np.float32)
    t = (RNG.random((64, 96)) > 0.5).astype(np.float32)
    f = av.compile(lambda p, t: F.binary_cross_entropy(p, t, reduction="none") * 2.0, backend="cpu")
    src = f.inspect(av.tensor(p), av.tensor(t)).source
    assert "K.check_flag(" in src and "c0 += !" in src  # the check is inside a compiled loop
    np.testing.assert_allclose(f(av.tensor(p), av.tensor(t)).numpy(),
                               2 * TF.binary_cross_entropy(torch.tensor(p), torch.tensor(t), reduction="none").numpy(),
                               rtol=1e-4)  # (libmvec's log: ulps from torch's)
    bad = p.copy()
    bad[37, 5] = 1.5
    with pytest.raises(ValueCheckError, match=INPUT_MSG) as e:
        f(av.tensor(bad), av.tensor(t))
    assert "test_value_checks.py:" in str(e.value)
    assert f(av.tensor(p), av.tensor(t)).shape == (64, 96)  # the flag is rewritten on every call

    class Probs(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(av.tensor(RNG.standard_normal((64, 96)).astype(np.float32)))

    def step(m, o, t):
        loss, grads = av.value_and_grad(lambda mm: F.binary_cross_entropy(av.sigmoid(mm.w), t))(m)
        o.step(grads)
        return loss
    m = Probs()
    opt = av.optim.SGD(m.parameters(), lr=0.5)
    g = av.compile(step, backend="cpu")
    g(m, opt, av.tensor(t))
    before = m.w.numpy().copy()
    with pytest.raises(ValueCheckError, match="target should be between 0 and 1"):
        g(m, opt, av.tensor(t * 2))
    np.testing.assert_array_equal(m.w.numpy(), before)  # the parameter's update was not written
