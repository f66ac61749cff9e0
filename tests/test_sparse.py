"""Sparse COO tensors (avalon/sparse.py): torch's sparse surface that graph neural network code uses, with
torch's values and gradients, eagerly and compiled; a pygcn GCN trained step by step against torch."""
import warnings

import numpy as np
import pytest
import torch
from helpers import T, rel
from hypothesis import given
from hypothesis import strategies as st

import avalon as av
from avalon import nn, optim
from avalon.nn import functional as F
from avalon.sparse import SparseTensor

pytestmark = [pytest.mark.usefixtures("module_kernel_cache"),
              pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")]

MODES = ["eager", "numpy", "cpu"]
I = np.array([[0, 1, 1, 0, 2, 3], [1, 0, 2, 1, 2, 0]])  # (0, 1) twice: an uncoalesced tensor


def run(f, mode, argnums=0):
    g = av.value_and_grad(f, argnums=argnums)
    return g if mode == "eager" else av.compile(g, backend=mode)


def both(indices, values, size, coalesce=False):
    """Avalon's and torch's sparse tensor of the same data (torch's values a leaf that requires grad)."""
    tv = T(values).requires_grad_(True)
    ts = torch.sparse_coo_tensor(T(indices), tv, size)
    s = av.sparse_coo_tensor(av.tensor(indices), av.tensor(values), size)
    return (s.coalesce(), ts.coalesce()) if coalesce else (s, ts), tv


# -- construction and the parts ---------------------------------------------------------------------------

def test_parts_and_facts_match_torch():
    v = np.random.default_rng(0).standard_normal(6)
    (s, ts), _ = both(I, v, (4, 3))
    assert s.is_sparse and s.layout is av.sparse_coo and not av.ones(2).is_sparse and av.ones(2).layout is av.strided
    assert s.shape == tuple(ts.shape) and s.size() == tuple(ts.size()) and s.size(-1) == 3 and s.dim() == 2
    assert s._nnz() == 6 and s.sparse_dim() == 2 and s.dense_dim() == 0 and s.dtype == av.float64
    assert not s.is_coalesced() and (s._indices().numpy() == I).all() and rel(s._values(), v) == 0
    assert rel(s.to_dense(), ts.to_dense()) == 0
    c, tc = s.coalesce(), ts.coalesce()
    assert c.is_coalesced() and c._nnz() == tc._nnz() == 5
    assert (c.indices().numpy() == tc.indices().numpy()).all() and rel(c.values(), tc.values()) < 1e-15
    assert c.coalesce() is c
    r = repr(s)
    assert r.startswith("tensor(indices=tensor([[0, 1, 1, 0, 2, 3],") and "nnz=6" in r and "layout=av.sparse_coo" in r
    # size inferred from the largest index; legacy constructors; dtype= and a list of values
    assert av.sparse_coo_tensor(I, v).shape == tuple(torch.sparse_coo_tensor(T(I), T(v)).shape) == (4, 3)
    f = av.sparse.FloatTensor(av.tensor(I), av.tensor(v.astype(np.float32)), (4, 3))
    assert f.dtype == av.float32 and rel(f.to_dense(), ts.to_dense()) < 1e-6
    assert av.sparse.FloatTensor(2, 3).to_dense().shape == (2, 3) and av.sparse.FloatTensor(2, 3)._nnz() == 0
    assert av.sparse.DoubleTensor(I, [1, 2, 3, 4, 5, 6], (4, 3)).dtype == av.float64
    assert av.sparse_coo_tensor(I, v, (4, 3), dtype=av.float32).dtype == av.float32
    assert av.sparse_coo_tensor(I.astype(np.int32), [1.0] * 6, [4, 3])._indices().dtype == av.int64


def test_hybrid_values_to_dense_and_sums():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((6, 2))
    (s, ts), _ = both(I, v, (4, 3, 2))
    assert s.dense_dim() == 1 and rel(s.to_dense(), ts.to_dense()) < 1e-15
    for dim in [0, 1, 2, (0, 2), (1, 2), (0, 1), (0, 1, 2), -1]:
        ours, theirs = av.sparse.sum(s, dim), torch.sparse.sum(ts, dim)
        if theirs.is_sparse:
            assert ours.is_sparse and ours.is_coalesced() and ours._nnz() == theirs._nnz(), dim
            ours, theirs = ours.to_dense(), theirs.to_dense()
        assert rel(ours, theirs) < 1e-14, dim
    assert rel(av.sparse.sum(s), torch.sparse.sum(ts)) < 1e-14


def test_dense_to_sparse_and_products_of_the_surface():
    rng = np.random.default_rng(2)
    d = rng.standard_normal((3, 4)) * (rng.random((3, 4)) < 0.5)
    s, ts = av.tensor(d).to_sparse(), T(d).to_sparse()
    assert s.is_coalesced() and (s.indices().numpy() == ts.indices().numpy()).all()
    assert rel(s.values(), ts.values()) == 0 and rel(s.to_dense(), d) == 0 and av.tensor(d).to_dense() is not None
    h, th = av.tensor(d).to_sparse(1), T(d).to_sparse(1)
    assert h._values().shape == tuple(th.values().shape) and rel(h.to_dense(), d) == 0
    x = rng.standard_normal((4, 2))
    for f in (lambda a, b: a @ b, av.mm, av.matmul, av.spmm, av.sparse.mm, lambda a, b: a.mm(b)):
        assert rel(f(s, av.tensor(x)), torch.sparse.mm(ts, T(x))) < 1e-14
    assert rel(s @ av.tensor(x[:, 0]), ts @ T(x[:, 0])) < 1e-14                          # matrix @ vector
    assert rel(av.mm(av.tensor(x.T), s.t()), torch.mm(T(x.T), ts.t())) < 1e-14          # dense @ sparse
    assert rel(av.tensor(x.T) @ s.t(), T(x.T) @ ts.t()) < 1e-14
    assert rel((s * 3).to_dense(), (ts * 3).to_dense()) == 0 and (s * 3).is_coalesced()
    assert rel((2.0 * s / 4).to_dense(), (ts * 0.5).to_dense()) == 0
    m = rng.standard_normal((3, 4))
    assert rel((s * av.tensor(m)).to_dense(), (ts * T(m)).to_dense()) < 1e-15
    assert rel(av.mul(av.tensor(m), s).to_dense(), (ts * T(m)).to_dense()) < 1e-15
    assert rel((s + s).to_dense(), (ts + ts).to_dense()) == 0 and (s + s).is_coalesced() == (ts + ts).is_coalesced()
    assert rel(s + av.tensor(m), T(m) + ts) < 1e-15 and rel(av.add(av.tensor(m), s, alpha=2), T(m) + 2 * ts) < 1e-15
    assert rel(s.t().to_dense(), ts.t().to_dense()) == 0 and s.t().shape == (4, 3)
    f32 = s.float()
    assert f32.dtype == av.float32 and s.to(av.float32).dtype == av.float32 and f32.double().dtype == av.float64
    assert s.detach().is_sparse and s.clone()._nnz() == s._nnz() and s.requires_grad_() is s
    assert rel(av.addmm(av.tensor(x[:3, :1]), s, av.tensor(x)), torch.addmm(T(x[:3, :1]), ts, T(x))) < 1e-14


# -- values and gradients against torch ---------------------------------------------------------------

def objective(lib, s, x, w):
    """Everything GNN code does with an adjacency matrix, in one scalar (lib: avalon or torch)."""
    y = lib.sparse.mm(s, x)
    deg = lib.sparse.sum(s, dim=1).to_dense()
    return ((y ** 2).sum() + (lib.spmm(s, x) * w).sum() + (deg ** 3).sum() + (s.to_dense() ** 2).sum()
            + (s @ x[:, 0]).sum() + lib.sparse.sum(s) * 0.5 + (s * 2.0).to_dense().sum())


@pytest.mark.parametrize("mode", MODES)
def test_values_and_gradients_of_the_dense_operand_and_the_values(mode):
    rng = np.random.default_rng(3)
    v, x, w = rng.standard_normal(6), rng.standard_normal((3, 2)), rng.standard_normal((4, 2))
    tv, tx = T(v).requires_grad_(True), T(x).requires_grad_(True)
    tl = objective(torch, torch.sparse_coo_tensor(T(I), tv, (4, 3)), tx, T(w))
    tl.backward()

    def f(vals, x):  # the sparse tensor made inside, from the values: learnable edge weights
        return objective(av, av.sparse_coo_tensor(av.tensor(I), vals, (4, 3)), x, av.tensor(w))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the closure's indices are a constant
        loss, (gv, gx) = run(f, mode, (0, 1))(av.tensor(v), av.tensor(x))
    assert rel(loss, tl) < 1e-13 and rel(gv, tv.grad) < 1e-13 and rel(gx, tx.grad) < 1e-13


@pytest.mark.parametrize("mode", MODES)
def test_a_sparse_tensor_argument_of_compiled_and_differentiated_functions(mode):
    rng = np.random.default_rng(4)
    (s, ts), _ = both(I, rng.standard_normal(6), (4, 3), coalesce=True)
    ts = ts.detach().requires_grad_(True)
    x, w = rng.standard_normal((3, 2)), rng.standard_normal((4, 2))
    tx = T(x).requires_grad_(True)
    tl = objective(torch, ts, tx, T(w))
    tl.backward()
    loss, (gs, gx) = run(lambda s, x, w: objective(av, s, x, w), mode, (0, 1))(s, av.tensor(x), av.tensor(w))
    assert rel(loss, tl) < 1e-13 and rel(gx, tx.grad) < 1e-13
    # the gradient of a (coalesced) sparse argument: a sparse tensor on its indices holding torch's gradient
    # there (torch's is dense here, to_dense's backward; off the pattern it moves nothing the values hold)
    assert isinstance(gs, SparseTensor) and gs.shape == s.shape and gs.is_coalesced()
    assert (gs.indices().numpy() == s.indices().numpy()).all()
    r, c = s.indices().numpy()
    assert rel(gs.values(), ts.grad.to_dense()[r, c]) < 1e-13


def test_compiled_functions_take_and_return_sparse_tensors_one_signature_per_nnz():
    rng = np.random.default_rng(5)
    calls = []

    def f(s, x):
        calls.append(s._nnz())
        return s * 2.0, s @ x

    cf = av.compile(f)
    x = av.tensor(rng.standard_normal((3, 2)))
    for nnz in (6, 4, 6):
        (s, ts), _ = both(I[:, :nnz], rng.standard_normal(nnz), (4, 3))
        out, y = cf(s, x)
        assert isinstance(out, SparseTensor) and not out.is_coalesced() and out._nnz() == nnz
        assert rel(out.to_dense(), (ts * 2.0).to_dense()) < 1e-15 and rel(y, ts @ T(x.numpy())) < 1e-14
    assert calls == [6, 4]  # a third call with nnz 6 reuses the first trace
    c = s.coalesce()  # coalesced stays coalesced inside (the flag is part of the signature): coalesce() is free
    out = av.compile(lambda s: s.coalesce() * 1.0)(c)
    assert out.is_coalesced() and (out.indices().numpy() == c.indices().numpy()).all()
    with pytest.raises(TypeError, match="coalesce.*traced or compiled"):
        av.compile(lambda s: s.coalesce())(c.t())  # t() of a coalesced tensor is not: merging needs the indices


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_compiled_spmm_gradient_small(backend):
    rng = np.random.default_rng(6)
    i = np.array([[0, 1, 1, 0], [1, 0, 1, 1]])
    v, x = rng.standard_normal(4).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)
    tv, tx = T(v).requires_grad_(True), T(x).requires_grad_(True)
    tl = (torch.spmm(torch.sparse_coo_tensor(T(i), tv, (2, 2)), tx) ** 2).sum()
    tl.backward()
    s = av.sparse_coo_tensor(av.tensor(i), av.tensor(v), (2, 2))

    def f(s, x):
        return (av.spmm(s, x) ** 2).sum()

    loss, (gs, gx) = av.compile(av.value_and_grad(f, argnums=(0, 1)), backend=backend)(s, av.tensor(x))
    assert rel(loss, tl) < 1e-5 and rel(gx, tx.grad) < 1e-5 and rel(gs._values(), tv.grad) < 1e-5


@given(m=st.integers(1, 5), k=st.integers(1, 5), n=st.integers(1, 3), nnz=st.integers(0, 12),
       seed=st.integers(0, 2 ** 16), dim=st.sampled_from([None, 0, 1, (0, 1)]))
def test_hypothesis_spmm_to_dense_and_sum_against_torch(m, k, n, nnz, seed, dim):
    rng = np.random.default_rng(seed)
    i = np.stack([rng.integers(0, m, nnz), rng.integers(0, k, nnz)])  # duplicates are likely
    v, x = rng.standard_normal(nnz), rng.standard_normal((k, n))
    tv, tx = T(v).requires_grad_(True), T(x).requires_grad_(True)
    ts = torch.sparse_coo_tensor(T(i).reshape(2, nnz), tv, (m, k))
    tsum = torch.sparse.sum(ts, dim) if dim is not None else torch.sparse.sum(ts)
    tsum = tsum.to_dense() if tsum.is_sparse else tsum
    tl = (torch.sparse.mm(ts, tx) ** 2).sum() + (ts.to_dense() ** 3).sum() + (tsum ** 2).sum()
    tl.backward()

    def f(vals, x, i):
        s = av.sparse_coo_tensor(i, vals, (m, k))
        total = av.sparse.sum(s, dim) if dim is not None else av.sparse.sum(s)
        total = total.to_dense() if isinstance(total, SparseTensor) else total
        return (av.sparse.mm(s, x) ** 2).sum() + (s.to_dense() ** 3).sum() + (total ** 2).sum()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nnz = 0: the loss depends on no values
        loss, (gv, gx) = av.value_and_grad(f, argnums=(0, 1))(av.tensor(v), av.tensor(x), av.tensor(i).reshape(2, nnz))
    assert rel(loss, tl) < 1e-12 and rel(gx, tx.grad) < 1e-12
    if nnz:
        assert rel(gv, tv.grad) < 1e-12


# -- a pygcn GCN trained with Adam against torch, step by step --------------------------------------------

def pygcn(lib, th, nfeat=6, nhid=8, nclass=3):
    """Kipf's pygcn layers.py/models.py, written once for both libraries (`torch.spmm(adj, support)`)."""
    class GraphConvolution(lib.Module):
        def __init__(self, in_features, out_features):
            super().__init__()
            self.weight = lib.Parameter(th.FloatTensor(in_features, out_features))
            self.bias = lib.Parameter(th.FloatTensor(out_features))
            stdv = 1.0 / self.weight.size(1) ** 0.5
            self.weight.data.uniform_(-stdv, stdv)
            self.bias.data.uniform_(-stdv, stdv)

        def forward(self, input, adj):
            support = th.mm(input, self.weight)
            return th.spmm(adj, support) + self.bias

    class GCN(lib.Module):
        def __init__(self):
            super().__init__()
            self.gc1, self.gc2 = GraphConvolution(nfeat, nhid), GraphConvolution(nhid, nclass)

        def forward(self, x, adj):
            x = lib.functional.relu(self.gc1(x, adj))
            return lib.functional.log_softmax(self.gc2(x, adj), dim=1)

    return GCN()


def normalized_adjacency(n, rng):
    """pygcn's utils: a random symmetric graph plus self-loops, row-normalized, as (indices, values)."""
    a = np.triu(rng.random((n, n)) < 0.3, 1)
    a = (a | a.T | np.eye(n, dtype=bool)).astype(np.float64)
    a = a / a.sum(1, keepdims=True)
    rows, cols = np.nonzero(a)
    return np.vstack((rows, cols)).astype(np.int64), a[rows, cols]


@pytest.mark.parametrize("mode", ["eager", "numpy"])
def test_pygcn_trains_like_torch(mode):
    rng = np.random.default_rng(7)
    n = 9
    idx, vals = normalized_adjacency(n, rng)
    feats, labels = rng.standard_normal((n, 6)), rng.integers(0, 3, n)
    idx_train = np.array([0, 2, 3, 5, 8])
    torch.manual_seed(0)
    theirs = pygcn(torch.nn, torch).double()
    ours = pygcn(nn, av).double()
    nn.load_state_dict(ours, theirs.state_dict())
    tadj = torch.sparse.FloatTensor(T(idx), T(vals), torch.Size((n, n)))  # the legacy constructor, as pygcn
    adj = av.sparse.FloatTensor(av.tensor(idx), av.tensor(vals), (n, n))
    assert adj.dtype == av.float64 and tadj.dtype == torch.float64
    topt = torch.optim.Adam(theirs.parameters(), lr=0.01, weight_decay=5e-4)
    opt = optim.Adam(ours.parameters(), lr=0.01, weight_decay=5e-4)

    def loss_fn(model, x, adj, y, idx):
        return F.nll_loss(model(x, adj)[idx], y[idx])

    step = run(loss_fn, mode)
    for _ in range(3):
        topt.zero_grad()
        tl = torch.nn.functional.nll_loss(theirs(T(feats), tadj)[T(idx_train)], T(labels)[T(idx_train)])
        tl.backward()
        topt.step()
        loss, grads = step(ours, av.tensor(feats), adj, av.tensor(labels), av.tensor(idx_train))
        opt.step(grads)
        assert rel(loss, tl) < 1e-12
        sd = theirs.state_dict()
        for k, p in nn.named_parameters(ours):
            assert rel(p, sd[k]) < 1e-10, k


def test_learnable_edge_weights_and_a_sparse_adjacency_on_a_model():
    """GAT-free GCN code: `sparse_coo_tensor(edge_index, edge_weight, (n, n))` with a learnable weight per
    edge and degree normalization by `torch.sparse.sum`."""
    rng = np.random.default_rng(8)
    n = 5
    edge_index = np.array([[0, 1, 1, 2, 3, 4, 0], [1, 0, 2, 1, 4, 3, 0]])

    def make(lib, th):
        class EdgeGCN(lib.Module):
            def __init__(self):
                super().__init__()
                self.edge_weight = lib.Parameter(th.ones(edge_index.shape[1], dtype=th.float64))
                self.lin = lib.Linear(4, 3).double()

            def forward(self, x, ei):
                adj = th.sparse_coo_tensor(ei, self.edge_weight, (n, n))
                deg = th.sparse.sum(adj, dim=1).to_dense() + 1.0
                return th.sparse.mm(adj, self.lin(x)) / deg.unsqueeze(1)
        return EdgeGCN()

    torch.manual_seed(1)
    theirs, ours = make(torch.nn, torch), make(nn, av)
    nn.load_state_dict(ours, theirs.state_dict())
    x = rng.standard_normal((n, 4))
    tl = (theirs(T(x), T(edge_index)) ** 2).sum()
    tl.backward()
    for mode in MODES:
        loss, g = run(lambda m, x, ei: (m(x, ei) ** 2).sum(), mode)(ours, av.tensor(x), av.tensor(edge_index))
        assert rel(loss, tl) < 1e-13, mode
        for k, p in theirs.named_parameters():
            assert rel(g[k], p.grad) < 1e-12, (mode, k)


def test_a_sparse_tensor_on_a_model_is_not_a_parameter():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.adj = av.sparse_coo_tensor(I, np.ones(6), (4, 3))
            self.lin = nn.Linear(2, 2)

    assert [k for k, _ in nn.named_parameters(Net())] == ["lin.weight", "lin.bias"]


# -- errors ---------------------------------------------------------------------------------------------

def test_what_is_not_supported_says_so():
    (s, _), _ = both(I, np.ones(6), (4, 3))
    x = av.ones(3, 2, dtype=av.float64)
    with pytest.raises(RuntimeError, match="uncoalesced.*coalesce"):
        s.indices()
    with pytest.raises(RuntimeError, match="uncoalesced.*coalesce"):
        s.values()
    with pytest.raises(NotImplementedError, match="two sparse tensors"):
        s @ s.t()
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        s @ av.ones(4, 2, dtype=av.float64)
    with pytest.raises(RuntimeError, match="dtype"):
        av.sparse.mm(s, av.ones(3, 2))
    with pytest.raises(NotImplementedError, match="2-d sparse matrix"):
        av.sparse_coo_tensor(I, np.ones((6, 2)), (4, 3, 2)) @ x
    with pytest.raises(TypeError, match="to_dense"):
        s.numpy()
    with pytest.raises(TypeError, match="to_dense"):
        av.exp(s)
    with pytest.raises(AttributeError, match="SparseTensor has no 'softmax'.*to_dense"):
        s.softmax(1)
    with pytest.raises(NotImplementedError, match="same shape"):
        s * av.ones(3)
    with pytest.raises(RuntimeError, match="size is inconsistent with indices: for dim 0, size is 3"):
        av.sparse_coo_tensor(I, np.ones(6), (3, 3))
    with pytest.raises(RuntimeError, match="same nnz"):
        av.sparse_coo_tensor(I, np.ones(5), (4, 3))
    with pytest.raises(RuntimeError, match="int64"):
        av.sparse_coo_tensor(I.astype(np.float32), np.ones(6), (4, 3))
    with pytest.raises(TypeError, match="to_sparse.*nnz.*traced or compiled"):
        av.compile(lambda d: d.to_sparse())(av.ones(2, 2))
    with pytest.raises(TypeError, match="coalesce.*traced or compiled"):
        av.compile(lambda s: s.coalesce())(s)
    with pytest.raises(TypeError, match="size must be given"):
        av.compile(lambda i, v: av.sparse_coo_tensor(i, v).to_dense())(av.tensor(I), av.ones(6))
