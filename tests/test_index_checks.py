"""Out-of-range indices are a clear error on every backend (issue 13): take (embedding), one_hot
(class labels of nll / cross-entropy) name the op, the user's line and the bad value, on the
numpy reference and in Triton kernels (a device-side flag the runtime checks after the launches);
ignore_index keeps its meaning and a failed call leaves the next one clean."""
from __future__ import annotations

import numpy as np
import pytest

import avalon as av
import avalon.nn.functional as F
from avalon import nn
from avalon.ir.reference import IndexOutOfRangeError

pytestmark = pytest.mark.usefixtures("module_kernel_cache")
BACKENDS = ["numpy", "triton"]



@pytest.mark.parametrize("backend", BACKENDS)
def test_take(backend):
    w = np.arange(15, dtype=np.float32).reshape(5, 3)
    f = av.compile(lambda w, i: av.ops.take(w, i), backend=backend)
    for bad in (5, -1, 1 << 40):
        with pytest.raises(IndexOutOfRangeError, match=f"take.*index {bad} is out of range") as ei:
            f(w, np.array([0, bad]))
        assert isinstance(ei.value, IndexError)
    np.testing.assert_array_equal(np.asarray(f(w, np.array([4, 2])).numpy()), w[[4, 2]])  # flags were cleared


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_hot_names_the_user_line(backend):
    def hot(i):
        return av.ops.one_hot(i, 5)

    f = av.compile(hot, backend=backend)
    with pytest.raises(IndexOutOfRangeError, match="one_hot.*index 7") as ei:
        f(np.array([1, 7, 2]))
    if backend == "triton":
        assert "test_index_checks.py:" in str(ei.value)
    np.testing.assert_array_equal(np.asarray(f(np.array([1, 4])).numpy()), np.eye(5, dtype=np.float32)[[1, 4]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_labels_and_ignore_index(backend, rng):
    x = rng.standard_normal((3, 10)).astype(np.float32)
    f = av.compile(lambda x, y: F.cross_entropy(x, y), backend=backend)
    with pytest.raises(IndexOutOfRangeError, match="index 10"):
        f(x, np.array([1, 10, 2]))
    y = np.array([1, -100, 2])  # ignored: not an error, and contributes nothing
    want = -np.mean([x[0, 1] - np.log(np.exp(x[0]).sum()), x[2, 2] - np.log(np.exp(x[2]).sum())])
    np.testing.assert_allclose(float(np.asarray(f(x, y).numpy())), want, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_embedding_and_training_step_refuse_bad_ids(backend, rng):
    av.manual_seed(0)
    emb = nn.Embedding(6, 4)

    def loss(model, ids):
        return model(ids).sum()

    step = av.compile(av.value_and_grad(loss), backend=backend)
    value, _ = step(emb, np.array([[0, 5]]))
    assert np.isfinite(float(np.asarray(value.numpy())))
    with pytest.raises(IndexOutOfRangeError, match="index 6"):
        step(emb, np.array([[0, 6]]))


def test_mlp_value_and_grad_with_a_bad_label_stops(rng):
    """The issue's LeNet case, on a model small enough for the interpreter: label 10 of 10 classes."""
    from avalon import zoo
    av.manual_seed(0)
    model = zoo.MLP(in_features=8, hidden=(4,), dropout=0.0)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    step = av.compile(av.value_and_grad(lambda m, x, y: zoo.cross_entropy(m(x), y)), backend="triton")  # a criterion
    step(model, x, np.array([1, 9]))
    with pytest.raises(IndexOutOfRangeError, match="index 10"):
        step(model, x, np.array([1, 10]))


def test_kernels_carry_their_checks():
    w = np.ones((5, 3), np.float32)
    info = av.compile(lambda w, i: av.ops.take(w, i), backend="triton").inspect(w, np.array([0, 1]))
    (src,) = info.kernels.values()
    assert "avalon-index-checks" in src and "tl.store(err" in src and ", err," in src
    plain = av.compile(lambda w: w * 2.0, backend="triton").inspect(w)
    assert all("err" not in s for s in plain.kernels.values())  # no cost where nothing is checked


_FOLDED = {  # an index past its dim (4 of 4) that folding into a flat offset made another element's
    "gather": lambda x, i: av.gather(x, 1, i.reshape(2, 1)),
    "scatter": lambda x, i: av.scatter(x, 1, i.reshape(2, 1), 1.0),
    "scatter_add": lambda x, i: av.scatter_add(x, 1, i.reshape(2, 1), av.ones(2, 1)),
    "scatter_reduce_prod": lambda x, i: av.scatter_reduce(x, 1, i.reshape(2, 1), av.ones(2, 1), "prod"),
    "x[i, j]": lambda x, i: x[av.arange(2), i],
    "x[i, j] = v": lambda x, i: x.index_put((av.arange(2), i), av.tensor(1.0)),
    "index_fill": lambda x, i: x.index_fill(1, i, 2.0),
    "index_copy": lambda x, i: x.index_copy(1, i, av.ones(3, 2)),
    "index_reduce": lambda x, i: x.index_reduce(1, i, av.ones(3, 2), "prod"),
}


@pytest.mark.parametrize("backend", ["numpy", "cpu", "triton"])
@pytest.mark.parametrize("form", list(_FOLDED))
def test_an_index_past_its_dim_is_not_the_next_rows_element(form, backend):
    """Compiled code folds (row, index) into one flat offset; x[0, 4] of a 3x4 tensor was x[1, 0]
    there (eager raised). Each index is now checked against its own dim on every backend."""
    fn = _FOLDED[form]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    f = av.compile(fn, backend=backend)
    good = np.array([3, 0])
    np.testing.assert_array_equal(np.asarray(f(x, good).numpy()), np.asarray(fn(av.tensor(x), av.tensor(good)).numpy()))
    with pytest.raises(IndexError, match="out of bounds for dimension 1 with size 4"):
        fn(av.tensor(x), av.tensor(np.array([4, 0])))  # eager: the values are known
    with pytest.raises(IndexOutOfRangeError, match="index 4 is out of range"):
        f(x, np.array([4, 0]))
