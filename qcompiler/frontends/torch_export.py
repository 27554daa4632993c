"""Import torch.export / PT2E graphs: ATen ops with quantized_decomposed Q/DQ nodes.

Three inputs are accepted:
- an `ExportedProgram` whose parameters, buffers and constants are lifted to placeholders
  (what `torch.export.export` returns, also of a `convert_pt2e` module): the graph signature
  says which placeholder is which;
- `ep.module()` and the GraphModules `prepare_pt2e`/`convert_pt2e` return: weights are
  `get_attr` nodes, and the exporter's `_guards_fn` call is skipped;
- a converted module with folded weights (`_frozen_paramN` int8 buffers) or unfolded ones
  (`quantize_per_channel` of the float weight, evaluated by PyTorch at import time).

Importing and optimising are separate steps. `import_pt2e_graph` / `import_exported_graph` only
translate, node by node through the conversion table (`frontends/aten_table.py`): the result is
a float graph with explicit quantize/dequantize, numerically PyTorch's reference execution of
the converted module. `import_pt2e_module` / `import_exported_program` (what `from_torch` calls)
then run `qdq_pipeline()` (fuse-qdq, dce), which turns dequantize -> op -> quantize into
integer ops and reports what stays float through the `qcompiler.passes.fuse_qdq` logger.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qcompiler.errors import FrontendError, QCompilerError, UnsupportedError
from qcompiler.ir.builder import Builder
from qcompiler.ir.graph import Graph, Value


def is_pt2e_graph(gm: Any) -> bool:
    """Whether an FX GraphModule holds ATen-level ops (torch.export / PT2E) rather than the
    torch-level functions and modules of an FX-traced or convert_fx model."""
    for n in gm.graph.nodes:
        if n.op == "call_function" and "quantized_decomposed" in str(n.target):
            return True
        if n.op == "call_function" and str(getattr(n.target, "namespace", "")) == "aten":
            return True
    return False


def import_pt2e_graph(gm: Any, example_inputs: Sequence[Any], name: str = "main") -> Graph:
    """Translate a PT2E / `ep.module()` GraphModule into IR, without fusing anything."""
    return _import(gm, example_inputs, name, lifted={}, user_outputs=None)


def import_exported_graph(ep: Any, example_inputs: Sequence[Any], name: str = "main") -> Graph:
    """Translate an ExportedProgram (lifted parameters/buffers/constants) without fusing."""
    from torch.export.graph_signature import InputKind, OutputKind

    sig = ep.graph_signature
    lifted: dict[str, Any] = {}
    targets: dict[str, str] = {}
    for spec in sig.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            continue
        if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            raise UnsupportedError(f"exported program input {spec.arg.name!r} of kind"
                                   f" {spec.kind.name} is not supported; supported: user inputs,"
                                   " parameters, buffers, constant tensors")
        target = spec.target
        targets[spec.arg.name] = str(target)
        if target in ep.state_dict:
            lifted[spec.arg.name] = ep.state_dict[target]
        elif target in ep.constants:
            lifted[spec.arg.name] = ep.constants[target]
        else:
            raise FrontendError(f"exported program input {spec.arg.name!r} names {target!r},"
                                " which is in neither its state_dict nor its constants")
    outs: list[int] = []
    for k, ospec in enumerate(sig.output_specs):
        if ospec.kind != OutputKind.USER_OUTPUT:
            raise UnsupportedError(f"exported program output {k} is a {ospec.kind.name}"
                                   " (the program mutates state); only user outputs are"
                                   " supported: export the model in eval mode without in-place"
                                   " buffer updates")
        outs.append(k)
    return _import(ep.graph_module, example_inputs, name, lifted=lifted, user_outputs=outs,
                   lifted_targets=targets)


def import_pt2e_module(gm: Any, example_inputs: Sequence[Any], name: str = "main") -> Graph:
    """Import a PT2E GraphModule and fuse its Q/DQ chains into integer ops."""
    from qcompiler.passes.fuse_qdq import run_qdq_pipeline

    return run_qdq_pipeline(import_pt2e_graph(gm, example_inputs, name))


def import_exported_program(ep: Any, example_inputs: Sequence[Any], name: str = "main") -> Graph:
    """Import an ExportedProgram and fuse its Q/DQ chains into integer ops."""
    from qcompiler.passes.fuse_qdq import run_qdq_pipeline

    return run_qdq_pipeline(import_exported_graph(ep, example_inputs, name))


# --- the importer --------------------------------------------------------------------------

_SKIPPED_MODULES = ("_guards_fn",)
"""call_module nodes torch.export adds to `ep.module()` that compute nothing (shape guards)."""


def _const_name(target: str) -> str:
    return target.replace(".", "_").lstrip("_") or "c"


def _import(gm: Any, example_inputs: Sequence[Any], name: str, lifted: dict[str, Any],
            user_outputs: list[int] | None, lifted_targets: dict[str, str] | None = None,
            ) -> Graph:
    from qcompiler.frontends import aten_table

    lifted_targets = lifted_targets or {}
    from qcompiler.frontends.torch_fx import (
        ImportContext,
        _fetch_attr,
        _flatten_outputs,
        _map_args,
        torch_tensor_type,
    )

    class _Context(ImportContext):
        """Names constants after the parameter/buffer they hold (`conv1.bias` -> conv1_bias)."""

        def value(self, x: Any, name: str | None = None) -> Value:
            if name is None and not isinstance(x, Value):
                name = tensor_names.get(id(x))
            return super().value(x, name)

    b = Builder(name)
    ctx = _Context(gm, b)
    tensor_names: dict[int, str] = {}
    keep_alive: list[Any] = []  # ids in tensor_names stay valid while the tensors live
    env: dict[Any, Any] = {}
    user = [n for n in gm.graph.nodes if n.op == "placeholder" and n.name not in lifted]
    if len(user) != len(example_inputs):
        raise FrontendError(f"the model takes {len(user)} inputs "
                            f"({', '.join(p.name for p in user)}), "
                            f"but {len(example_inputs)} example inputs were given")
    ex_iter = iter(example_inputs)
    outputs: list[Value] = []
    for node in gm.graph.nodes:
        ctx.node = node
        if node.op == "placeholder":
            if node.name in lifted:
                env[node] = lifted[node.name]
                tensor_names[id(env[node])] = _const_name(lifted_targets.get(node.name, node.name))
                keep_alive.append(env[node])
                continue
            ex = next(ex_iter)
            if not hasattr(ex, "is_quantized"):
                raise FrontendError(f"example input for {node.name!r} must be a torch tensor,"
                                    f" got {type(ex).__name__}")
            env[node] = b.input(node.name, torch_tensor_type(ex))
            continue
        if node.op == "get_attr":
            env[node] = _fetch_attr(gm, str(node.target))
            tensor_names[id(env[node])] = _const_name(str(node.target))
            keep_alive.append(env[node])
            continue
        if node.op == "call_module" and str(node.target) in _SKIPPED_MODULES:
            env[node] = None
            continue
        if node.op == "output":
            outs = _flatten_outputs(_map_args(node.args[0], env))
            if user_outputs is not None:
                outs = [outs[k] for k in user_outputs]
            for v in outs:
                if not isinstance(v, Value):
                    raise FrontendError(f"model output {v!r} is not a tensor computed by the"
                                        " model; only tensor outputs are supported")
            outputs = outs
            continue
        if node.op != "call_function":
            raise ctx.unsupported(f"unsupported FX node kind {node.op} ({node.target})",
                                  ["call_function nodes of ATen / quantized_decomposed ops"])
        handler = aten_table.lookup(ctx, node)
        args = _map_args(node.args, env)
        kwargs = _map_args(node.kwargs, env)
        try:
            env[node] = handler(ctx, *args, **kwargs)
        except UnsupportedError:
            raise
        except QCompilerError as e:
            raise FrontendError(ctx.describe(f"cannot import: {e}")) from None
        except (TypeError, ValueError, IndexError, KeyError) as e:  # unexpected arguments
            raise FrontendError(ctx.describe(
                f"cannot import ({type(e).__name__}: {e}); the arguments do not match what the"
                f" {aten_table.target_name(node.target)} handler expects")) from None
    if not outputs:
        raise FrontendError("the model has no tensor outputs")
    return b.finish(*outputs)
