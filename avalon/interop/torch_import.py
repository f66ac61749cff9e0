"""`av.from_torch(module, *example_args)`: a torch module, through torch.export, as an Avalon model.

torch.export captures the module in its current mode (train or eval) and `run_decompositions()`
lowers it to core ATen; each ATen node becomes Avalon ops through the `ATEN` table. Parameters and
buffers become Avalon tensors named as in `module.state_dict()`; a buffer torch.export marks as
mutated (batch norm's running statistics in training) is written back with `trace.assign`, so the
update happens under `av.trace`, `av.grad` and `av.compile` too. torch only exports and hands over
the weights; nothing torch computes runs when the model is called.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import dtypes as dt
from ..tensor import Buffer, Tensor
from ..trace import assign
from .aten import ATEN
from .model import ImportedModel, ImportedProgram, UnsupportedOp, get_dotted, source_line

__all__ = ["ATEN", "from_torch"]


def _export(module: Any, args: tuple, kwargs: dict | None) -> Any:
    import torch
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"av.from_torch expects a torch.nn.Module, got {type(module).__name__}")
    try:
        ep = torch.export.export(module, args, kwargs or {})
        return ep.run_decompositions()
    except Exception as e:  # the exporter's own reason, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"av.from_torch: torch.export could not capture {type(module).__name__}: "
                           f"{type(e).__name__}: {first}") from e


def _to_avalon(x: Any) -> Any:
    """Node arguments: torch dtypes become Avalon dtypes; everything else passes through."""
    import torch
    if isinstance(x, torch.dtype):
        return dt.dtype(str(x).removeprefix("torch."))
    return x


def _check_supported(gm: Any) -> None:
    """Every call in the graph has a rule, or one error naming the first op lacking one and the
    user's line — raised before anything runs."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and str(node.target) not in ATEN:
            raise UnsupportedOp(f"av.from_torch: ATen op {node.target} is not supported "
                                f"(from {source_line(node.meta.get('stack_trace'))})")
        if node.op not in ("call_function", "placeholder", "output", "get_attr"):
            raise UnsupportedOp(f"av.from_torch: graph node kind {node.op!r} ({node.target}) is not supported")


def from_torch(module: Any, *example_args: Any, kwargs: dict | None = None) -> ImportedModel:
    """Import `module` (called as `module(*example_args)`) into an Avalon model; shapes are the
    example's (torch.export's static shapes)."""
    import torch
    from torch.export.graph_signature import InputKind, OutputKind
    ep = _export(module, tuple(example_args), kwargs)
    training = bool(module.training)
    gm, sig = ep.graph_module, ep.graph_signature
    _check_supported(gm)

    sd = module.state_dict(keep_vars=True)
    params = dict(ep.named_parameters())
    buffers = dict(ep.named_buffers())
    state: list[tuple[str, Tensor]] = []
    made: dict[int, Tensor] = {}  # tied weights stay one tensor under every name

    def convert(t: Any, trainable: bool) -> Tensor:
        if id(t) not in made:
            arr = t.detach().cpu().numpy().copy()
            made[id(t)] = Tensor(arr) if trainable and arr.dtype.kind == "f" else Buffer(arr, dtype=dt.dtype(arr.dtype))
        return made[id(t)]

    names_in_graph = set(params) | set(buffers)
    for name, t in sd.items():
        if name in names_in_graph or name in dict(module.named_parameters()) or name in dict(module.named_buffers()):
            state.append((name, convert(t, name in params)))
    extra = [(n, t) for n, t in list(params.items()) + list(buffers.items()) if n not in sd]
    for name, t in extra:  # non-persistent buffers: not in state_dict, but the graph reads them
        state.append((name, convert(t, name in params)))

    constants = {k: (v.detach().cpu().numpy().copy() if isinstance(v, torch.Tensor) else v)
                 for k, v in ep.constants.items()}
    in_specs = list(sig.input_specs)
    out_specs = list(sig.output_specs)
    for s in out_specs:
        if s.kind not in (OutputKind.USER_OUTPUT, OutputKind.BUFFER_MUTATION):
            raise UnsupportedOp(f"av.from_torch: output kind {s.kind.name} ({s.target}) is not supported")
    in_spec, out_spec = ep.call_spec.in_spec, ep.call_spec.out_spec
    nodes = list(gm.graph.nodes)

    def run(model: ImportedModel, args: tuple) -> Any:
        flat, spec = torch.utils._pytree.tree_flatten((tuple(args), dict(kwargs or {})))
        if in_spec is not None and spec != in_spec:
            raise TypeError(f"imported model expects arguments shaped like the example ({in_spec}), got {spec}")
        user = iter(flat)
        env: dict[Any, Any] = {}
        placeholders = [n for n in nodes if n.op == "placeholder"]
        for node, s in zip(placeholders, in_specs):
            if s.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                env[node] = get_dotted(model, s.target)
            elif s.kind in (InputKind.CONSTANT_TENSOR, InputKind.CUSTOM_OBJ):
                env[node] = Tensor(constants[s.target]) if isinstance(constants[s.target], np.ndarray) \
                    else constants[s.target]
            else:
                v = next(user)
                env[node] = v if isinstance(v, Tensor) or not hasattr(v, "shape") else Tensor(np.asarray(v))
        result = None
        for node in nodes:
            if node.op == "call_function":
                a = torch.fx.node.map_arg(node.args, env.__getitem__)
                k = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
                a = torch.utils._pytree.tree_map(_to_avalon, a)
                k = torch.utils._pytree.tree_map(_to_avalon, k)
                env[node] = ATEN[str(node.target)](*a, **k)
            elif node.op == "get_attr":
                env[node] = Tensor(getattr(gm, node.target).detach().cpu().numpy().copy())
            elif node.op == "output":
                result = torch.fx.node.map_arg(node.args[0], env.__getitem__)
        outs = []
        for value, s in zip(result, out_specs):
            if s.kind == OutputKind.BUFFER_MUTATION:
                target = get_dotted(model, s.target)
                assign(target, value if value.dtype == target.dtype else value.astype(target.dtype))
            else:
                outs.append(value)
        return torch.utils._pytree.tree_unflatten(outs, out_spec)

    mode = "train" if training else "eval"
    return ImportedModel(state, ImportedProgram(run, f"{type(module).__name__} from torch.export, {mode} mode"),
                         training)
