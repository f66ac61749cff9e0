"""`optim.LBFGS`: torch.optim.LBFGS's algorithm (two-loop recursion over a limited history, an
optional strong-Wolfe line search), on gradients that are values.

torch's `step(closure)` calls a closure that recomputes the loss and fills `.grad`; Avalon's
gradients are returned, so here the closure returns both, `(loss, grads)`, which is exactly what
`av.value_and_grad(loss_fn)(model, x, y)` gives:

    opt = optim.LBFGS(model, line_search_fn="strong_wolfe")
    opt.step(lambda: av.value_and_grad(loss_fn)(model, x, y))

The algorithm is data-dependent control flow (how many evaluations, which bracket), so `step` runs
eagerly, never inside a traced or compiled function (the closure itself may be compiled:
`step = av.compile(av.value_and_grad(loss_fn)); opt.step(lambda: step(model, x, y))`). Its vector
math is numpy's, in the parameters' dtype, operation for operation as torch's, so float64 runs follow
torch's trajectory to rounding.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..tensor import Tensor, as_array
from ..trace import assign, current_trace
from . import Optimizer, _check

_CLOSURE = ("LBFGS.step(closure): the closure must return (loss, grads), the loss and its gradients, as "
            "`av.value_and_grad(loss_fn)(model, x, y)` does: `opt.step(lambda: av.value_and_grad(loss_fn)"
            "(model, x, y))`. Avalon's gradients are values, not .grad attributes filled by backward()")


class LBFGS(Optimizer):
    """L-BFGS as torch.optim.LBFGS (one parameter group; same defaults: lr=1, max_iter=20,
    max_eval=max_iter*5//4, tolerance_grad=1e-7, tolerance_change=1e-9, history_size=100,
    line_search_fn=None or "strong_wolfe"). `step(closure)` takes a closure returning `(loss, grads)`
    (see the module docstring) and returns the first evaluation's loss, as torch's does.

    Its state (the history of steps and gradient changes, the last direction and step length, counts)
    is in `opt.state_lbfgs` and in `state_dict()` as "lbfgs.*" tensors."""

    _floats = ("lr", "tolerance_grad", "tolerance_change")
    _flags = ("max_iter", "max_eval", "history_size", "line_search_fn")
    _repr_keys = ("max_iter", "max_eval", "history_size", "line_search_fn")

    def __init__(self, params: Any, lr: float = 1.0, max_iter: int = 20, max_eval: int | None = None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: str | None = None):
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        super().__init__(params, dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                                      tolerance_change=tolerance_change, history_size=history_size,
                                      line_search_fn=line_search_fn))
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self.state_lbfgs: dict[str, Any] = {"func_evals": 0, "n_iter": 0}

    def _check_group(self, values: Mapping[str, Any], opts: Mapping[str, Any]) -> None:
        _check(opts["line_search_fn"] in (None, "strong_wolfe"),
               f"LBFGS: line_search_fn must be None or 'strong_wolfe' (the only one torch has), got "
               f"{opts['line_search_fn']!r}")
        for k in ("max_iter", "max_eval", "history_size"):
            _check(isinstance(opts[k], (int, np.integer)) and opts[k] > 0, f"LBFGS: {k} must be a positive int, "
                                                                           f"got {opts[k]!r}")

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")

    # -- flat views of the parameters and gradients ------------------------------------------------
    def _params(self) -> list[tuple[str, Tensor]]:
        return [(n, self.params[n]) for n in self.param_groups[0]._names]

    def _dtype(self) -> np.dtype:
        return np.result_type(*[p.dtype.np for _, p in self._params()])

    def _evaluate(self, closure: Callable[[], Any]) -> tuple[Any, float, np.ndarray]:
        """Call the closure: (its loss as returned, the loss as a float, the flat gradient; a
        parameter without a gradient counts as zeros, as torch's None .grad)."""
        out = closure()
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            got = type(out).__name__ if not isinstance(out, (tuple, list)) else f"{len(out)} values"
            raise TypeError(f"{_CLOSURE}; it returned {got}")
        loss, grads = out
        if grads is None or isinstance(grads, (int, float)):
            raise TypeError(f"{_CLOSURE}; its second value is {type(grads).__name__}")
        grads = self._check_grads(grads)
        dtype = self._dtype()
        views = []
        for n, p in self._params():
            g = grads.get(n)
            views.append(np.zeros(p.numel(), dtype) if g is None else as_array(g).reshape(-1).astype(dtype))
        return loss, float(as_array(loss)), np.concatenate(views) if views else np.zeros(0, dtype)

    def _flat_params(self) -> list[np.ndarray]:
        return [np.array(as_array(p), copy=True) for _, p in self._params()]

    def _set_params(self, values: list[np.ndarray]) -> None:
        for (_, p), v in zip(self._params(), values):
            assign(p, Tensor(v, dtype=p.dtype, device=p.device))

    def _add_grad(self, step: Any, d: np.ndarray) -> None:
        """p += step * d (torch's `p.add_(d_slice, alpha=step)`), in each parameter's dtype."""
        offset = 0
        for _, p in self._params():
            n = p.numel()
            cur = as_array(p)
            new = (cur + step * d[offset:offset + n].reshape(p.shape)).astype(cur.dtype)
            assign(p, Tensor(new, dtype=p.dtype, device=p.device))
            offset += n

    def _directional_evaluate(self, closure: Callable, x: list[np.ndarray], t: Any, d: np.ndarray) -> tuple:
        self._add_grad(t, d)
        _, loss, flat_grad = self._evaluate(closure)
        self._set_params(x)
        return loss, flat_grad

    # -- the step ------------------------------------------------------------------------------------
    def step(self, grads: Any = None, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One optimization step: up to max_iter iterations of L-BFGS, each evaluating the closure
        (once, or as the line search needs). `opt.step(closure)` or `opt.step(closure=closure)`."""
        if closure is None:
            closure = grads
        if not callable(closure):
            raise TypeError(f"LBFGS.step takes a closure, not gradients (it evaluates the loss several times). "
                            f"{_CLOSURE}")
        if current_trace() is not None:
            raise RuntimeError("LBFGS.step runs eagerly: its line search and stopping rules are data-dependent "
                               "Python control flow, which a trace cannot record. Call it outside av.compile "
                               "(the closure may call a compiled av.value_and_grad)")
        group = self.param_groups[0]
        lr = float(group["lr"])
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = float(group["tolerance_grad"]), float(group["tolerance_change"])
        line_search_fn, history_size = group["line_search_fn"], group["history_size"]
        state = self.state_lbfgs
        assign(self.step_count, self.step_count + 1)

        orig_loss, loss, flat_grad = self._evaluate(closure)
        current_evals = 1
        state["func_evals"] += 1
        opt_cond = np.abs(flat_grad).max() <= tolerance_grad
        if opt_cond:
            return orig_loss

        d, t = state.get("d"), state.get("t")
        old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        h_diag, prev_flat_grad, prev_loss = state.get("H_diag"), state.get("prev_flat_grad"), state.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            # the descent direction
            if state["n_iter"] == 1:
                d = -flat_grad
                old_dirs, old_stps, ro = [], [], []
                h_diag = 1
            else:
                y = flat_grad - prev_flat_grad
                s = d * t
                ys = y.dot(s)
                if ys > 1e-10:
                    if len(old_dirs) == history_size:  # limited memory: drop the oldest
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    h_diag = ys / y.dot(y)
                num_old = len(old_dirs)
                al = [None] * history_size
                q = -flat_grad
                for i in range(num_old - 1, -1, -1):
                    al[i] = old_stps[i].dot(q) * ro[i]
                    q = q + old_dirs[i] * (-al[i])
                d = r = q * h_diag
                for i in range(num_old):
                    be_i = old_dirs[i].dot(r) * ro[i]
                    r += old_stps[i] * (al[i] - be_i)
            prev_flat_grad = flat_grad.copy()
            prev_loss = loss
            # the step length
            t = min(1.0, 1.0 / np.abs(flat_grad).sum()) * lr if state["n_iter"] == 1 else lr
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:  # the directional derivative is below tolerance
                break
            ls_func_evals = 0
            if line_search_fn is not None:
                x_init = self._flat_params()
                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    lambda x, t_, d_: self._directional_evaluate(closure, x, t_, d_), x_init, t, d, loss,
                    flat_grad, gtd, max_ls=max_eval - current_evals)
                self._add_grad(t, d)
                opt_cond = np.abs(flat_grad).max() <= tolerance_grad
            else:
                self._add_grad(t, d)
                if n_iter != max_iter:  # torch re-evaluates except after the last iteration
                    _, loss, flat_grad = self._evaluate(closure)
                    opt_cond = np.abs(flat_grad).max() <= tolerance_grad
                    ls_func_evals = 1
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals
            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if np.abs(d * t).max() <= tolerance_change:  # lack of progress
                break
            if abs(loss - prev_loss) < tolerance_change:
                break

        state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=h_diag,
                     prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss

    # -- checkpoints ---------------------------------------------------------------------------------
    _ARRAYS = ("d", "t", "H_diag", "prev_flat_grad", "prev_loss")
    _LISTS = ("old_dirs", "old_stps", "ro")

    def state_dict(self) -> dict[str, Tensor]:
        """The base optimizer's entries ("step", "lr", "param_groups.0.*") and the L-BFGS state as
        "lbfgs.func_evals", "lbfgs.n_iter", "lbfgs.{d,t,H_diag,prev_flat_grad,prev_loss}" and
        "lbfgs.{old_dirs,old_stps,ro}.{i}" (oldest first)."""
        out = super().state_dict()
        st = self.state_lbfgs
        for k in ("func_evals", "n_iter"):
            out[f"lbfgs.{k}"] = Tensor(np.asarray(st[k], np.int64))
        for k in self._ARRAYS:
            if st.get(k) is not None:
                out[f"lbfgs.{k}"] = Tensor(np.array(st[k], dtype=self._dtype() if k != "prev_loss" else np.float64))
        for k in self._LISTS:
            for i, v in enumerate(st.get(k) or ()):
                out[f"lbfgs.{k}.{i}"] = Tensor(np.array(v, dtype=self._dtype()))
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned (the base entries as every optimizer's, then the L-BFGS state)."""
        base = {k: v for k, v in state.items() if not k.startswith("lbfgs.")}
        super().load_state_dict(base)
        mine: dict[str, Any] = {"func_evals": 0, "n_iter": 0}
        lists: dict[str, dict[int, np.ndarray]] = {k: {} for k in self._LISTS}
        for k, v in state.items():
            if not k.startswith("lbfgs."):
                continue
            parts = k.split(".")
            arr = np.array(as_array(v))
            if len(parts) == 2 and parts[1] in ("func_evals", "n_iter"):
                mine[parts[1]] = int(arr)
            elif len(parts) == 2 and parts[1] in self._ARRAYS:
                mine[parts[1]] = arr if arr.ndim else arr[()]
            elif len(parts) == 3 and parts[1] in self._LISTS and parts[2].isdigit():
                lists[parts[1]][int(parts[2])] = arr if arr.ndim else arr[()]
            else:
                raise KeyError(f"LBFGS.load_state_dict: unexpected key {k!r}")
        for k, by_index in lists.items():
            if sorted(by_index) != list(range(len(by_index))):
                raise KeyError(f"LBFGS.load_state_dict: the entries of lbfgs.{k} are not numbered 0..n-1")
            mine[k] = [by_index[i] for i in range(len(by_index))] if mine["n_iter"] else None
        self.state_lbfgs = mine


def _cubic_interpolate(x1: Any, f1: Any, g1: Any, x2: Any, f2: Any, g2: Any,
                       bounds: tuple[Any, Any] | None = None) -> Any:
    """The minimizer of the cubic through two points with values and derivatives, clamped to
    `bounds` (torch's port of optim/polyinterp.lua)."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square >= 0:
        d2 = np.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _strong_wolfe(obj_func: Callable, x: Any, t: Any, d: np.ndarray, f: float, g: np.ndarray, gtd: Any,
                  c1: float = 1e-4, c2: float = 0.9, tolerance_change: float = 1e-9, max_ls: int = 25) -> tuple:
    """A step length meeting the strong Wolfe conditions along `d` (torch's port of
    optim/lswolfe.lua, branch for branch): (loss, flat gradient, step, evaluations)."""
    d_norm = np.abs(d).max()
    g = g.copy()
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = g_new.dot(d)
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:  # bracket an interval containing a point satisfying the conditions
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new.copy(), gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
    if ls_iter == max_ls:  # out of evaluations
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]
    # zoom: refine the bracket until a point satisfies the conditions
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:  # the bracket is tiny
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:  # close to an end: insufficient progress?
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) else min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new.copy(), gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:  # the old high becomes the low
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new.copy(), gtd_new
    t = bracket[low_pos]
    return bracket_f[low_pos], bracket_g[low_pos], t, ls_func_evals
