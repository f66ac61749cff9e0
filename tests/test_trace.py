"""The tracer and eager tensors: inputs and names, explicit broadcasts, locations, clear errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import avalon as av
from avalon import ir, ops


class Affine:
    def __init__(self, rng):
        self.weight = av.tensor(rng.standard_normal((4, 3)).astype(np.float32))
        self.bias = av.tensor(rng.standard_normal(4).astype(np.float32))

    def __call__(self, x):
        return x @ self.weight.T + self.bias


class Net:
    def __init__(self, rng):
        self.fc1 = Affine(rng)
        self.layers = [Affine.__new__(Affine)]
        self.layers[0].weight = av.tensor(rng.standard_normal((2, 4)).astype(np.float32))
        self.layers[0].bias = av.tensor(rng.standard_normal(2).astype(np.float32))

    def __call__(self, x):
        return self.layers[0](ops.relu(self.fc1(x)))


def test_model_parameters_come_first_with_dotted_names(rng):
    net = Net(rng)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    g = av.trace(net, x)
    assert [v.name for v in g.inputs] == ["fc1.weight", "fc1.bias", "layers.0.weight", "layers.0.bias", "x"]
    assert [n for n, _ in av.named_parameters(net)] == [v.name for v in g.inputs[:4]]
    text = str(g)
    assert str(ir.parse(text)) == text and "%layers.0.weight" in text
    params = [t.numpy() for _, t in av.named_parameters(net)]
    (out,) = av.interpret(g, *params, x)
    np.testing.assert_allclose(out, net(av.tensor(x)).numpy(), rtol=1e-6)


def test_function_of_model_and_data_orders_inputs_by_argument(rng):
    net = Net(rng)

    def loss(model, x, y):
        return ((model(x) - y) ** 2).mean()

    g = av.trace(loss, net, np.ones((5, 3), np.float32), np.zeros((5, 2), np.float32))
    assert [v.name for v in g.inputs][-2:] == ["x", "y"]
    assert g.inputs[0].name == "fc1.weight"
    assert g.outputs[0].type.shape == ()


def test_broadcasts_are_explicit_and_ops_carry_the_user_line():
    def f(x, b):
        return x + b  # the line recorded on the add

    g = av.trace(f, np.ones((2, 3), np.float32), np.ones(3, np.float32))
    names = [op.name for op in g.ops]
    assert names == ["broadcast", "add"]
    add = g.ops[1]
    assert add.operands[0].type == add.operands[1].type
    assert add.loc.file.endswith("test_trace.py")
    import inspect
    src_line = inspect.getsourcelines(f)[1] + 1
    assert add.loc.line == src_line


def test_shape_mismatch_names_both_shapes_and_the_line():
    def f(x, y):
        return x * y

    with pytest.raises(ir.ShapeError) as e:
        av.trace(f, np.ones((2, 3), np.float32), np.ones((4,), np.float32))
    msg = str(e.value)
    assert "(2, 3)" in msg and "(4,)" in msg and "test_trace.py:" in msg


def test_matmul_mismatch_at_trace_time():
    with pytest.raises(ir.ShapeError, match=r"matmul.*\(2, 3\).*\(4, 5\)"):
        av.trace(lambda a, b: a @ b, np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))


@pytest.mark.parametrize("use", [bool, float, int, lambda t: t.item(), lambda t: t.numpy()])
def test_data_dependent_control_flow_is_an_error(use):
    def f(x):
        if use(x.sum()):
            return x
        return -x

    with pytest.raises(av.TracerError, match="needs a concrete value, but this tensor is being traced"):
        av.trace(f, np.ones(3, np.float32))


def test_closure_arrays_become_constants():
    table = np.arange(3, dtype=np.float32)
    g = av.trace(lambda x: x * table, np.ones(3, np.float32))
    assert g.ops[0].name == "constant"
    (out,) = av.interpret(g, np.full(3, 2.0, np.float32))
    np.testing.assert_array_equal(out, [0, 2, 4])


def test_structured_outputs_and_inputs():
    def f(batch):
        x, y = batch["x"], batch["y"]
        return {"s": x + y, "d": (x - y, x * y)}

    g = av.trace(f, {"x": np.ones(2, np.float32), "y": np.ones(2, np.float32)})
    assert [v.name for v in g.inputs] == ["batch.x", "batch.y"]
    assert len(g.outputs) == 3


# -- eager tensors agree with numpy --------------------------------------------------------

arrays = st.integers(1, 4).flatmap(lambda n: st.tuples(
    st.lists(st.integers(1, 3), min_size=n, max_size=n), st.integers(0, 2 ** 31)))


@given(arrays, st.sampled_from(["+", "-", "*", "/", "max", "min", ">"]))
def test_eager_binary_ops_match_numpy_with_broadcasting(spec, op):
    shape, seed = spec
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape[1:]).astype(np.float32) + 3.0
    ta = av.tensor(a)
    f = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "max": np.maximum, "min": np.minimum,
         ">": np.greater}[op]
    g = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x / y,
         "max": ops.maximum, "min": ops.minimum, ">": lambda x, y: x > y}[op]
    np.testing.assert_allclose(g(ta, b).numpy(), f(a, b), rtol=1e-6)
    np.testing.assert_allclose(g(b, ta).numpy(), f(b, a), rtol=1e-6)


def test_scalars_keep_tensor_dtype_and_arrays_promote():
    x = av.tensor(np.ones(3, np.float32))
    assert (x * 2).dtype == av.float32 and (2.5 + x).dtype == av.float32
    assert (x + np.ones(3)).dtype == av.float64
    i = av.tensor([1, 2, 3])
    assert i.dtype == av.int64 and (i * 2).dtype == av.int64 and (i / 2).dtype == av.float32
    assert (i + 0.5).dtype == av.float32


@pytest.mark.parametrize("index", [
    0, -1, (slice(None), 1), (Ellipsis, 0), (None, 1), (slice(1, None, 2),), (0, slice(None), None),
    np.array([2, 0, 2]), (slice(None), np.array([[1, 0], [3, 3]])),
])
def test_indexing_matches_numpy(index, rng):
    a = rng.standard_normal((3, 4, 2)).astype(np.float32)
    np.testing.assert_array_equal(av.tensor(a)[index].numpy(), a[index])
    g = av.trace(lambda t: t[index], a)
    np.testing.assert_array_equal(av.interpret(g, a)[0], a[index])


def test_methods(rng):
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    t = av.tensor(a)
    np.testing.assert_allclose(t.sum(axis=(0, 2)).numpy(), a.sum(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(t.mean(axis=1, keepdims=True).numpy(), a.mean(axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(t.max(axis=-1).numpy(), a.max(axis=-1))
    np.testing.assert_array_equal(t.argmax(axis=1).numpy(), a.argmax(axis=1))
    np.testing.assert_array_equal(t.reshape(4, -1).numpy(), a.reshape(4, -1))
    np.testing.assert_array_equal(t.transpose(0, 2).numpy(), a.transpose(2, 1, 0))
    np.testing.assert_array_equal(t.T.numpy(), a.T)
    np.testing.assert_allclose((t @ np.ones((4, 2), np.float32)).numpy(), a @ np.ones((4, 2)), rtol=1e-5)
    assert t.shape == (2, 3, 4) and t.dtype == av.float32 and t.device == av.device("cpu")


def test_tensor_surface_is_defined_in_the_class_body():
    """Every operator and method lives in `Tensor`'s own namespace (no module patches it in later), so
    reading avalon/tensor.py shows the whole surface; they behave like torch's / numpy's."""
    import ast
    import inspect

    body = ast.parse(inspect.getsource(av.Tensor)).body[0].body
    defined = {n.name for n in body if isinstance(n, ast.FunctionDef)}
    defined |= {t.id for n in body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    surface = {"__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
               "__pow__", "__rpow__", "__matmul__", "__rmatmul__", "__floordiv__", "__eq__", "__ne__", "__lt__",
               "__le__", "__gt__", "__ge__", "__and__", "__or__", "__neg__", "__abs__", "__invert__", "__pos__",
               "__getitem__", "__hash__", "exp", "log", "tanh", "sigmoid", "relu", "sqrt", "rsqrt", "abs", "neg",
               "sign", "erf", "sum", "mean", "max", "min", "argmax", "var", "reshape", "view", "transpose",
               "permute", "flatten", "squeeze", "unsqueeze", "expand_dims", "broadcast_to", "astype", "matmul",
               "clamp", "maximum", "minimum", "T", "float", "double", "long", "expand"}
    assert surface <= defined, surface - defined
    t = av.tensor(np.arange(6, dtype=np.int64).reshape(2, 3))
    assert hash(t) == id(t) and {t: 1}[t] == 1
    t0 = av.tensor(np.zeros((2, 3)))  # unsqueeze takes torch's `dim=`, expand_dims numpy's `axis=`
    assert t0.unsqueeze(dim=-1).shape == t0.expand_dims(axis=-1).shape == (2, 3, 1)
    assert isinstance(np.ones(3) + t, av.Tensor)  # __array_priority__: numpy defers to Tensor's operators
    np.testing.assert_array_equal((10 - t).numpy(), 10 - t.numpy())
    np.testing.assert_array_equal((2 ** t).numpy(), 2.0 ** t.numpy())
    assert t.float().dtype == av.float32 and t.double().dtype == av.float64 and t.float().long().dtype == av.int64
    assert t[0].expand(4, 3).shape == t[0].expand((4, 3)).shape == (4, 3)
    assert t.unsqueeze(1).shape == (2, 1, 3) and t.view(-1).shape == (6,)


def test_devices():
    assert str(av.device("cuda:1")) == "cuda:1"
    with pytest.raises(ValueError, match="unknown device"):
        av.device("tpu")
    assert av.best_available_device().type in ("cpu", "cuda")
    net = Net(np.random.default_rng(0))
    av.to_device(net, "cpu")
    assert all(t.device == av.device("cpu") for _, t in av.named_parameters(net))
