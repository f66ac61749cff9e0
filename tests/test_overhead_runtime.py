"""`CompiledGraph` keeps a device's intermediate storage between calls, yet never returns it:
intermediates are reused, outputs are new on every call (scratch outputs aside), and a call
that finds the storage busy (another thread) runs on storage of its own."""
import numpy as np
import pytest
import torch

from avalon.codegen.triton import compile_graph, runtime
from avalon.ir import Builder, Graph, TensorType, interpret, to_numpy


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AVALON_CACHE_DIR", str(tmp_path / "cache"))


def chain():
    g = Graph("f")
    x = g.add_input(TensorType((16,), "f32"), "x")
    b = Builder(g)
    v = x
    for name in ["exp", "neg", "tanh", "abs", "sigmoid"]:
        v = b(name, v)
    g.set_outputs([v, b("relu", v)])
    return g


def recording(monkeypatch):
    """Pointers passed to each launch, per call."""
    calls: list[list[tuple[int, ...]]] = []
    real = runtime.launch

    def spy(k, tensors):
        calls[-1].append(tuple(t.data_ptr() for t in tensors))
        real(k, tensors)

    monkeypatch.setattr(runtime, "launch", spy)
    return calls


def test_intermediates_are_reused_and_outputs_are_new_every_call(rng, monkeypatch):
    g = chain()
    cg = compile_graph(g)
    calls = recording(monkeypatch)
    results = []
    for _ in range(3):
        calls.append([])
        x = rng.standard_normal(16).astype(np.float32)
        outs = cg(x)
        for o, r in zip(outs, interpret(g, x)):
            np.testing.assert_allclose(to_numpy(o), r, rtol=1e-6)
        results.append((outs, [to_numpy(o).copy() for o in outs]))
    first, second = calls[1], calls[2]
    assert first[1:4] == second[1:4]  # launches between intermediates: the same storage
    assert first[4][-1] != second[4][-1]  # the one writing an output: a new buffer
    ptrs = [o.data_ptr() for outs, _ in results for o in outs]
    assert len(set(ptrs)) == len(ptrs)
    for outs, copies in results:  # later calls left earlier results alone
        for o, c in zip(outs, copies):
            np.testing.assert_array_equal(to_numpy(o), c)


def test_scratch_outputs_live_in_reused_storage(rng):
    g = chain()
    cg = compile_graph(g)
    cg.scratch_outputs = frozenset({1})
    a = cg(rng.standard_normal(16).astype(np.float32))
    b = cg(rng.standard_normal(16).astype(np.float32))
    assert a[1].data_ptr() == b[1].data_ptr() and a[0].data_ptr() != b[0].data_ptr()


def test_a_busy_workspace_is_not_shared(rng):
    g = chain()
    cg = compile_graph(g)
    x = rng.standard_normal(16).astype(np.float32)
    cg(x)
    ws = cg._work[str(cg.device)]
    kept = [b.clone() for b in ws.bufs if b is not None]
    with ws.lock:  # as if another thread were running on it
        outs = cg(rng.standard_normal(16).astype(np.float32))
    assert all(torch.equal(k, b) for k, b in zip(kept, [b for b in ws.bufs if b is not None]))
    assert outs[0].shape == (16,)


def test_inputs_already_in_place_are_used_as_they_are(rng):
    g = chain()
    cg = compile_graph(g)
    x = torch.from_numpy(rng.standard_normal(16).astype(np.float32))
    assert cg._adapt(0, g.inputs[0].type, x, torch.device("cpu")) is x
    y = torch.from_numpy(rng.standard_normal(32).astype(np.float32))[::2]  # strided: copied
    assert cg._adapt(0, g.inputs[0].type, y, torch.device("cpu")) is not y
    np.testing.assert_allclose(to_numpy(cg(y)[0]), interpret(g, y.numpy())[0], rtol=1e-6)
