"""ONNX's optimizer steps (domain ai.onnx.preview.training: Adagrad, Adam, Momentum) and the simplest
ai.onnx.ml ops (Binarizer, ArrayFeatureExtractor), as onnx's reference computes them. An optimizer
node updates n tensors at once: inputs R (learning rate), T (step count), then the n Xs, the n Gs and
the n of each state; outputs the n new Xs, then the n new values of each state."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import ops
from ..ir import dtypes as dt
from ..tensor import Tensor
from .table import Node, T, onnx_op

TRAINING = "ai.onnx.preview.training"
ML = "ai.onnx.ml"


def _k(like: Tensor, v: Any) -> Tensor:
    return ops.cast(T(v), like.dtype) if not isinstance(v, (int, float)) else ops.full((), float(v), like.dtype)


def _groups(node: Node, values: tuple, per: int) -> list[list[Tensor]]:
    """The `per` groups of n tensors after R and T (X, G, then the states)."""
    rest = values[2:]
    if len(rest) % per:
        raise node.unsupported(f"expects R, T and {per} groups of equally many tensors, got {len(values)} inputs")
    n = len(rest) // per
    return [[T(v) for v in rest[i * n:(i + 1) * n]] for i in range(per)]


@onnx_op("Adagrad", domain=TRAINING)
def adagrad(node: Node, r: Any, t: Any, *values: Any) -> tuple:
    xs, gs, hs = _groups(node, (r, t, *values), 3)
    decay, eps, norm = (float(node.attr(k, d)) for k, d in (("decay_factor", 0.0), ("epsilon", 1e-6),
                                                              ("norm_coefficient", 0.0)))
    new_x, new_h = [], []
    for x, g, h in zip(xs, gs, hs):
        rate = ops.div(_k(x, r), ops.add(_k(x, 1.0), ops.mul(_k(x, t), _k(x, decay))))
        g = ops.add(ops.mul(_k(x, norm), x), g)
        h = ops.add(h, ops.mul(g, g))
        new_x.append(ops.sub(x, ops.div(ops.mul(rate, g), ops.add(ops.sqrt(h), _k(x, eps)))))
        new_h.append(h)
    return (*new_x, *new_h)


@onnx_op("Adam", domain=TRAINING)
def adam(node: Node, r: Any, t: Any, *values: Any) -> tuple:
    xs, gs, vs, hs = _groups(node, (r, t, *values), 4)
    alpha, beta = float(node.attr("alpha", 0.9)), float(node.attr("beta", 0.999))
    eps = float(node.attr("epsilon", 1e-6))
    norm, post = float(node.attr("norm_coefficient", 0.0)), float(node.attr("norm_coefficient_post", 0.0))
    new_x, new_v, new_h = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs):
        g = ops.add(ops.mul(_k(x, norm), x), g)
        v = ops.add(ops.mul(_k(x, alpha), v), ops.mul(_k(x, 1 - alpha), g))
        h = ops.add(ops.mul(_k(x, beta), h), ops.mul(_k(x, 1 - beta), ops.mul(g, g)))
        step = _k(x, t)
        one = _k(x, 1.0)
        corrected = ops.div(ops.mul(_k(x, r), ops.sqrt(ops.sub(one, ops.pow(_k(x, beta), step)))),
                            ops.sub(one, ops.pow(_k(x, alpha), step)))
        rate = ops.where(ops.gt(step, _k(x, 0.0)), corrected, _k(x, r))  # no bias correction at step 0
        x = ops.sub(x, ops.mul(rate, ops.div(v, ops.add(ops.sqrt(h), _k(x, eps)))))
        new_x.append(ops.mul(x, _k(x, 1 - post)))
        new_v.append(v)
        new_h.append(h)
    return (*new_x, *new_v, *new_h)


@onnx_op("Momentum", domain=TRAINING)
def momentum(node: Node, r: Any, t: Any, *values: Any) -> tuple:
    xs, gs, vs = _groups(node, (r, t, *values), 3)
    alpha, beta, norm = float(node.attr("alpha")), float(node.attr("beta")), float(node.attr("norm_coefficient"))
    mode = node.attr("mode", "standard")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("standard", "nesterov"):
        raise node.unsupported(f"mode {mode!r} is neither 'standard' nor 'nesterov'")
    new_x, new_v = [], []
    for x, g, v in zip(xs, gs, vs):
        g = ops.add(ops.mul(_k(x, norm), x), g)
        b = ops.where(ops.gt(_k(x, t), _k(x, 0.0)), _k(x, beta), _k(x, 1.0))  # the first step's gradient whole
        v = ops.add(ops.mul(_k(x, alpha), v), ops.mul(b, g))
        step = v if mode == "standard" else ops.add(g, ops.mul(_k(x, alpha), v))
        new_x.append(ops.sub(x, ops.mul(_k(x, r), step)))
        new_v.append(v)
    return (*new_x, *new_v)


@onnx_op("Binarizer", domain=ML)
def binarizer(node: Node, x: Any) -> Tensor:
    x = T(x)
    return ops.cast(ops.gt(x, _k(x, float(node.attr("threshold", 0.0)))), x.dtype)


@onnx_op("ArrayFeatureExtractor", domain=ML)
def array_feature_extractor(node: Node, x: Any, indices: Any) -> Tensor:
    """The last axis' elements at `indices` (flattened), as onnx's reference: shape (..., len(indices))."""
    x = T(x)
    idx = ops.reshape(ops.cast(T(indices), dt.int64), (-1,))
    return ops.index_select(x, x.ndim - 1, idx)


def _reach(roots: list[int], is_leaf: Any, children: Any, cond: Any) -> list[tuple[int, Tensor | None]]:
    """Every leaf with the mask of the rows that reach it (None: every row): the AND of the tests on its path."""
    leaves: list[tuple[int, Tensor | None]] = []

    def walk(i: int, path: Tensor | None) -> None:
        if is_leaf(i):
            leaves.append((i, path))
            return
        c = cond(i)
        t, f = children(i)
        for branch, nxt in ((c, t), (ops.logical_not(c), f)):
            walk(nxt, branch if path is None else ops.logical_and(path, branch))

    for r in roots:
        walk(r, None)
    return leaves


def _forest(node: Node, x: Tensor, roots: list[int], is_leaf: Any, children: Any, cond: Any, leaf_targets: Any,
            n_targets: int, agg: str, n_trees: int) -> Tensor:
    """Tree ensembles without data-dependent control flow: every interior node's test is computed for
    every row (`cond(i)`), each leaf's reach is the AND of the tests on its path (the trees' structure
    is known when the model loads), and the leaves' weights are aggregated per target (a target no
    reached leaf scores is 0 under MIN and MAX, as onnxruntime's)."""
    import numpy as np
    leaves = _reach(roots, is_leaf, children, cond)
    rows = x.shape[0]
    big = float(np.finfo(x.dtype.np).max)
    zero = _k(x, 0.0)
    cols = []
    for tgt in range(n_targets):
        mine = [(w, p) for i, p in leaves for t, w in leaf_targets(i) if t == tgt]
        if agg in ("SUM", "AVERAGE"):
            col = ops.full((rows,), 0.0, x.dtype)
            for w, p in mine:
                w = _k(x, float(w) / (n_trees if agg == "AVERAGE" else 1))
                col = ops.add(col, w if p is None else ops.where(p, w, zero))
        elif agg in ("MIN", "MAX"):
            col = ops.full((rows,), big if agg == "MIN" else -big, x.dtype)
            hit = ops.full((rows,), False, dt.bool_)
            pick = ops.minimum if agg == "MIN" else ops.maximum
            for w, p in mine:
                w = ops.full((rows,), float(w), x.dtype)
                col = pick(col, w) if p is None else ops.where(p, pick(col, w), col)
                hit = ops.full((rows,), True, dt.bool_) if p is None else ops.logical_or(hit, p)
            col = ops.where(hit, col, zero)
        else:
            raise node.unsupported(f"aggregate_function {agg!r} is not one of AVERAGE, SUM, MIN, MAX")
        cols.append(col)
    return ops.stack(cols, 1)


def _post(node: Node, y: Tensor, post: str) -> Tensor:
    if post == "NONE":
        return y
    if post == "SOFTMAX":
        return ops.softmax(y, -1)
    if post == "LOGISTIC":
        return ops.sigmoid(y)
    raise node.unsupported(f"post_transform {post} is not supported (NONE, SOFTMAX and LOGISTIC are)")


def _test(x: Tensor, feature: int, mode: int, split: float, members: list[float] | None, nan_true: bool) -> Tensor:
    """One node's test on every row: mode 0 <=, 1 <, 2 >=, 3 >, 4 ==, 5 !=, 6 membership."""
    f = ops.select(x, 1, int(feature))
    if mode == 6:
        c = ops.full(f.shape, False, dt.bool_)
        for v in members or ():
            c = ops.logical_or(c, ops.eq(f, _k(f, v)))
    else:
        c = (ops.le, ops.lt, ops.ge, ops.gt, ops.eq, ops.ne)[mode](f, _k(f, float(split)))
    return ops.logical_or(c, ops.isnan(f)) if nan_true else c


def _array(v: Any) -> Any:
    import numpy as np
    return None if v is None else np.asarray(v.numpy() if isinstance(v, Tensor) else v).reshape(-1)


@onnx_op("TreeEnsemble", domain=ML)
def tree_ensemble(node: Node, x: Any) -> Tensor:
    """ai.onnx.ml's TreeEnsemble (opset 5): nodes and leaves in separate arrays, children by index.
    A NaN feature takes the true branch where nodes_missing_value_tracks_true says so."""
    import numpy as np
    x = T(x)
    a = {k: _array(node.attr(k)) for k in (
        "nodes_splits", "nodes_featureids", "nodes_modes", "nodes_truenodeids", "nodes_falsenodeids",
        "nodes_trueleafs", "nodes_falseleafs", "leaf_targetids", "leaf_weights", "tree_roots",
        "nodes_missing_value_tracks_true", "membership_values")}
    agg = ("AVERAGE", "SUM", "MIN", "MAX", "?")[min(int(node.attr("aggregate_function", 1)), 4)]
    # post_transform as the spec numbers it (1 SOFTMAX, 2 LOGISTIC); onnxruntime 1.2x reads 1 as LOGISTIC
    # and 2 as SOFTMAX (its own enum's order), onnx's reference ignores it
    post = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")[int(node.attr("post_transform", 0))]
    modes = a["nodes_modes"].astype(int)
    members = iter(a["membership_values"] if a["membership_values"] is not None else ())
    sets: dict[int, list[float]] = {}
    for i, m in enumerate(modes):  # the MEMBER nodes' sets, NaN-separated, in node order
        if m == 6:
            sets[i] = []
            for v in members:
                if np.isnan(v):
                    break
                sets[i].append(float(v))
    tracks = a["nodes_missing_value_tracks_true"]
    tests: dict[int, Tensor] = {}

    def cond(i: int) -> Tensor:
        if i not in tests:
            tests[i] = _test(x, a["nodes_featureids"][i], int(modes[i]), a["nodes_splits"][i], sets.get(i),
                             bool(tracks is not None and tracks[i]))
        return tests[i]

    # nodes are 0..n-1, leaves n..: one index space for the walk
    n = len(modes)
    roots = []
    for r in a["tree_roots"].astype(int):
        degenerate = (a["nodes_trueleafs"][r] and a["nodes_falseleafs"][r]
                      and a["nodes_truenodeids"][r] == a["nodes_falsenodeids"][r])
        roots.append(n + int(a["nodes_truenodeids"][r]) if degenerate else int(r))

    def children(i: int) -> tuple[int, int]:
        return tuple(int(a[f"nodes_{s}nodeids"][i]) + (n if a[f"nodes_{s}leafs"][i] else 0)
                     for s in ("true", "false"))  # type: ignore[return-value]

    y = _forest(node, x, roots, lambda i: i >= n, children, cond,
                lambda i: [(int(a["leaf_targetids"][i - n]), float(a["leaf_weights"][i - n]))],
                int(node.attr("n_targets")), agg, len(roots))
    return _post(node, y, post)


_MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@onnx_op("TreeEnsembleRegressor", domain=ML)
def tree_ensemble_regressor(node: Node, x: Any) -> Tensor:
    """ai.onnx.ml's TreeEnsembleRegressor (skl2onnx's random forests and gradient boosting): nodes named
    by (tree id, node id), modes as strings, a leaf's weights in the target_* arrays, base_values added."""
    x = T(x)
    if not x.dtype.is_float:
        x = ops.cast(x, dt.float32)
    roots, is_leaf, children, cond, targets = _nodes(node, x, "target")
    y = _forest(node, x, roots, is_leaf, children, cond, targets, int(node.attr("n_targets", 1)),
                _text(node.attr("aggregate_function", "SUM")), len(roots))
    base = node.attr("base_values")
    if base:
        y = ops.add(y, ops.cast(T(_array(base)), y.dtype))
    return _post(node, y, _text(node.attr("post_transform", "NONE")))


def _nodes(node: Node, x: Tensor, prefix: str) -> tuple[list[int], Any, Any, Any, Any]:
    """The trees of a TreeEnsembleRegressor / Classifier (nodes named by (tree id, node id), modes as
    strings) and their leaves' (target or class, weight) pairs from the `prefix`_* arrays: (roots,
    is_leaf, children, cond, leaf_weights) for `_reach` / `_forest`."""
    tree_ids, node_ids = _array(node.attr("nodes_treeids")).astype(int), _array(node.attr("nodes_nodeids")).astype(int)
    modes = [_text(m) for m in node.attr("nodes_modes")]
    feats, values = _array(node.attr("nodes_featureids")), _array(node.attr("nodes_values"))
    true_ids = _array(node.attr("nodes_truenodeids")).astype(int)
    false_ids = _array(node.attr("nodes_falsenodeids")).astype(int)
    tracks = _array(node.attr("nodes_missing_value_tracks_true"))
    at = {(int(t), int(i)): k for k, (t, i) in enumerate(zip(tree_ids, node_ids))}
    weights: dict[int, list[tuple[int, float]]] = {}
    for t, i, tid, w in zip(_array(node.attr(f"{prefix}_treeids")), _array(node.attr(f"{prefix}_nodeids")),
                            _array(node.attr(f"{prefix}_ids")), _array(node.attr(f"{prefix}_weights"))):
        if (int(t), int(i)) not in at:
            raise node.unsupported(f"{prefix}_treeids/{prefix}_nodeids name node ({int(t)}, {int(i)}), which is not "
                                   "a node")
        weights.setdefault(at[(int(t), int(i))], []).append((int(tid), float(w)))
    for m in set(modes) - set(_MODES) - {"LEAF"}:
        raise node.unsupported(f"node mode {m!r} is not supported")
    children_of = {at[(t, c)] for t, c, m in zip(tree_ids, true_ids, modes) if m != "LEAF"}
    children_of |= {at[(t, c)] for t, c, m in zip(tree_ids, false_ids, modes) if m != "LEAF"}
    roots = [k for k in range(len(modes)) if k not in children_of]
    tests: dict[int, Tensor] = {}

    def cond(k: int) -> Tensor:
        if k not in tests:
            tests[k] = _test(x, feats[k], _MODES[modes[k]], values[k], None, bool(tracks is not None and tracks[k]))
        return tests[k]

    return (roots, lambda k: modes[k] == "LEAF",
            lambda k: (at[(int(tree_ids[k]), int(true_ids[k]))], at[(int(tree_ids[k]), int(false_ids[k]))]),
            cond, lambda k: weights.get(k, []))


@onnx_op("TreeEnsembleClassifier", domain=ML)
def tree_ensemble_classifier(node: Node, x: Any) -> tuple[Tensor, Tensor]:
    """ai.onnx.ml's TreeEnsembleClassifier (skl2onnx's decision trees, forests, gradient boosting) as
    onnxruntime computes it: (label, scores). Each class's score is the SUM of the class_weights of the
    leaves a row reaches; a class "has a score" where some reached leaf names it. More than two classes:
    base_values added, the label the best class that has a score, post_transform over all scores. Two
    classes, onnxruntime's binary special case: when every class weight names one class (gradient
    boosting's single logit) the score is one column, expanded to two (1 - s, s when all weights are
    non-negative, else -s, s; under LOGISTIC sigmoid(-s), sigmoid(s)) and the label is decided by s > 0.5 or s > 0;
    base_values of length 2 make class 1's score b1 + (class 0's score) where class 1 has one."""
    x = ops.cast(T(x), dt.float32)  # onnxruntime's thresholds and scores are float
    if node.attr("classlabels_strings"):
        raise node.unsupported("string class labels (classlabels_strings) are not supported: Avalon tensors hold "
                               "numbers; relabel the classes with classlabels_int64s")
    labels = [int(v) for v in (node.attr("classlabels_int64s") or [])]
    if len(labels) < 2:
        raise node.unsupported(f"expects classlabels_int64s with at least 2 classes, got {labels}")
    post = _text(node.attr("post_transform", "NONE"))
    if post not in ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT"):
        raise node.unsupported(f"post_transform {post!r} is not one of NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO, PROBIT")
    roots, is_leaf, children, cond, weights = _nodes(node, x, "class")
    n = len(labels)
    class_ids = _array(node.attr("class_ids"))
    class_w = _array(node.attr("class_weights"))
    if class_ids is not None and len(class_ids) and (class_ids.min() < 0 or class_ids.max() >= n):
        raise node.unsupported(f"class_ids must lie in [0, {n}) for {n} class labels, got {sorted(set(class_ids))}")
    binary = n == 2 and len(set((class_ids if class_ids is not None else []).tolist())) == 1
    positive = class_w is None or bool((class_w >= 0).all())
    base = [float(b) for b in (_array(node.attr("base_values")) if node.attr("base_values") else [])]
    leaves = _reach(roots, is_leaf, children, cond)
    scored = {c for leaf, _ in leaves for c, _ in weights(leaf)}
    for leaf, _ in leaves:  # onnxruntime's per-row "has a score" rules: reproduced where every leaf scores alike
        if {c for c, _ in weights(leaf)} != scored:
            raise node.unsupported(f"leaves score different sets of classes (leaf {leaf} scores "
                                   f"{sorted({c for c, _ in weights(leaf)})}, others {sorted(scored)}); only "
                                   "ensembles whose every leaf has a weight for the same classes are supported")
    rows = x.shape[0]
    score = [ops.full((rows,), 0.0, dt.float32) for _ in range(n)]
    for leaf, path in leaves:
        for c, w in weights(leaf):
            wt = ops.full((rows,), w, dt.float32)
            score[c] = ops.add(score[c], wt if path is None else ops.where(path, wt, 0.0))
    lab = ops.cast(T(np.array(labels, np.int64)), dt.int64)
    if n > 2:
        has = [c in scored or c < len(base) for c in range(n)]
        for k, b in enumerate(base[:n]):
            score[k] = ops.add(score[k], b)
        z = ops.stack(score, 1)
        best = ops.argmax(ops.where(ops.cast(T(np.array(has)), dt.bool_), z, float("-inf")), 1)
        return ops.take(lab, best, 0), _transform(z, post)
    s0, s1 = score
    h0, h1 = 0 in scored, 1 in scored
    if len(base) == 2:
        if h1:  # onnxruntime: class 1's score is b1 + class 0's, class 0's its negation
            s1 = ops.add(s0, base[1])
            s0 = ops.neg(s1) if h0 else s0
        else:
            s0 = ops.add(s0, base[0]) if h0 else s0
    elif len(base) == 1:
        s0 = ops.add(s0, base[0]) if h0 else s0
    elif base:
        raise node.unsupported(f"base_values must have 0, 1 or 2 values for 2 classes, got {len(base)}")
    pos = s1 if h1 else s0
    if binary:
        label = ops.take(lab, ops.cast(ops.gt(pos, 0.5 if positive else 0.0), dt.int64), 0)
    else:  # onnxruntime's own positive and negative labels, 1 and 0, whatever the class labels
        label = ops.cast(ops.gt(pos, 0.0), dt.int64)
    if h1 or len(base) == 2:  # two scores (a class without one reads 0), transformed
        return label, _transform(ops.stack([s0, s1], 1), post)
    # one score (class 0's), made two as onnxruntime's write_scores does
    if post == "PROBIT":
        return label, ops.stack([_transform(s0, post), ops.full((rows,), 0.0, dt.float32)], 1)
    if post == "LOGISTIC":
        return label, ops.stack([ops.sigmoid(ops.neg(s0)), ops.sigmoid(s0)], 1)
    if positive:
        return label, ops.stack([ops.sub(1.0, s0), s0], 1)
    return label, ops.stack([ops.neg(s0), s0], 1)


def _transform(z: Tensor, post: str) -> Tensor:
    """onnxruntime's post_transform of a row of scores (or of one score)."""
    if post == "SOFTMAX":
        return ops.softmax(z, -1)
    if post == "LOGISTIC":
        return ops.sigmoid(z)
    if post == "SOFTMAX_ZERO":  # zeros stay zero; the others share the softmax
        nz = ops.ne(z, 0.0)
        e = ops.where(nz, ops.exp(ops.sub(z, ops.amax(z, -1, keepdims=True))), 0.0)
        return ops.div(e, ops.sum(e, -1, keepdims=True))
    if post == "PROBIT":  # sqrt(2) erfinv(2 s - 1), with onnxruntime's ErfInv: Winitzki's approximation, a = 0.147
        v = ops.sub(ops.mul(z, 2.0), 1.0)
        lg = ops.log(ops.mul(ops.sub(1.0, v), ops.add(1.0, v)))
        f = np.float32  # its constants, computed in float
        t = ops.add(float(f(2) / (f(3.14159) * f(0.147))), ops.mul(lg, 0.5))
        root = ops.sqrt(ops.sub(ops.sqrt(ops.sub(ops.mul(t, t), ops.mul(lg, float(f(1) / f(0.147))))), t))
        return ops.mul(ops.where(ops.lt(v, 0.0), ops.neg(root), root), 1.41421356)
    return z


@onnx_op("Scaler", domain=ML)
def scaler(node: Node, x: Any) -> Tensor:
    """(x - offset) * scale, per feature (a StandardScaler), as float32."""
    x = ops.cast(T(x), dt.float32)
    off, sc = node.attr("offset"), node.attr("scale")
    if off:
        x = ops.sub(x, ops.cast(T(_array(off)), dt.float32))
    return ops.mul(x, ops.cast(T(_array(sc)), dt.float32)) if sc else x


@onnx_op("Normalizer", domain=ML)
def normalizer(node: Node, x: Any) -> Tensor:
    """Each row divided by its MAX, L1 or L2 norm, as float32."""
    x = ops.cast(T(x), dt.float32)
    norm = _text(node.attr("norm", "MAX"))
    if norm == "MAX":
        d = ops.amax(x, [1], True)
    elif norm == "L1":
        d = ops.sum(ops.abs(x), [1], keepdims=True)
    elif norm == "L2":
        d = ops.sqrt(ops.sum(ops.mul(x, x), [1], keepdims=True))
    else:
        raise node.unsupported(f"norm {norm!r} is not MAX, L1 or L2")
    return ops.div(x, d)


@onnx_op("LinearRegressor", domain=ML)
def linear_regressor(node: Node, x: Any) -> Tensor:
    """x @ coefficients (targets x features).T + intercepts, then post_transform."""
    x = ops.cast(T(x), dt.float32)
    targets = int(node.attr("targets", 1))
    w = ops.reshape(ops.cast(T(_array(node.attr("coefficients"))), dt.float32), (targets, -1))
    y = ops.matmul(x, ops.t(w))
    b = node.attr("intercepts")
    if b:
        y = ops.add(y, ops.cast(T(_array(b)), dt.float32))
    return _post(node, y, _text(node.attr("post_transform", "NONE")))
