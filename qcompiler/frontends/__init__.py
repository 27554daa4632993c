"""PyTorch frontends: `from_torch(model, example_inputs) -> Graph`.

Accepts (a) an eager model built from torch.ao.nn.quantized / intrinsic.quantized /
quantized.dynamic modules (traced with torch.fx), (b) a `convert_fx` GraphModule, and (c) a
`torch.export` ExportedProgram or PT2E GraphModule (quantized_decomposed Q/DQ around aten ops).
No TorchScript.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qcompiler.errors import FrontendError, UnsupportedError
from qcompiler.ir.graph import Graph
from qcompiler.ir.verify import verify


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    return (example_inputs,)


def from_torch(model: Any, example_inputs: Sequence[Any] | Any, name: str = "main") -> Graph:
    """Import a PyTorch-quantized model into a verified IR graph."""
    import torch
    import torch.fx

    inputs = _as_tuple(example_inputs)
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedError("TorchScript models are not supported; pass the eager module, a "
                               "convert_fx GraphModule or a torch.export ExportedProgram")
    if isinstance(model, torch.export.ExportedProgram):
        from qcompiler.frontends.torch_export import import_exported_program

        graph = import_exported_program(model, inputs, name)
    elif isinstance(model, torch.fx.GraphModule):
        from qcompiler.frontends.torch_export import is_pt2e_graph

        if is_pt2e_graph(model):
            from qcompiler.frontends.torch_export import import_pt2e_module

            graph = import_pt2e_module(model, inputs, name)
        else:
            from qcompiler.frontends.torch_fx import import_graph_module

            graph = import_graph_module(model, inputs, name)
    elif isinstance(model, torch.nn.Module):
        from qcompiler.frontends.torch_fx import import_graph_module

        if model.training:
            raise FrontendError("the model is in training mode; call model.eval() (and convert "
                                "QAT models with torch.ao.quantization.convert) before importing")
        try:
            tracer = torch.fx.Tracer()
            tracer.record_stack_traces = True
            gm = torch.fx.GraphModule(model, tracer.trace(model), type(model).__name__)
        except Exception as e:  # noqa: BLE001 - any tracing failure is reported with its cause
            raise FrontendError(
                f"cannot trace {type(model).__name__} with torch.fx ({type(e).__name__}: {e}); "
                "data-dependent control flow is not supported: quantize with FX (convert_fx) "
                "or export with torch.export first") from None
        graph = import_graph_module(gm, inputs, name)
    else:
        raise FrontendError(f"from_torch takes a torch.nn.Module, fx.GraphModule or "
                            f"ExportedProgram, got {type(model).__name__}")
    verify(graph)
    return graph


__all__ = ["from_torch"]
