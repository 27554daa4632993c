"""`compile`: a graph (or a PyTorch model) -> native code for a target -> `CompiledModule`.

    graph ──verify──► passes (a copy; passes/pipelines.py) ──► kernel groups
          ──lower (OpDef.lower → TE)──► PrimFuncs
          ──schedule (codegen rules)──► Relax module (call_tir per kernel)
          ──tvm.compile──► VM executable + manifest.json ──► CompiledModule

`build` does the same and returns every intermediate (`BuildResult`), for tests and debugging:
the Relax module (`result.relax_mod.script()`), the kernels and the rule that scheduled each.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qcompiler.errors import InputError, LoweringError, QCompilerError
from qcompiler.ir.graph import Graph
from qcompiler.ir.types import TensorType
from qcompiler.target import TargetPreset, get_target

if TYPE_CHECKING:
    from qcompiler.lowering.to_relax import KernelGroup, LoweredGraph
    from qcompiler.runtime.module import CompiledModule

_MANIFEST_DTYPES = ("uint8", "int8", "int32", "float32", "int64", "bool")
"""Storage dtypes a compiled model may take or return (runtime/manifest.py)."""
_MANIFEST_QDTYPES = ("u8", "i8", "i32")


@dataclass
class BuildResult:
    """Everything `build` produced, from the verified graph to the callable module."""

    graph: Graph
    target: TargetPreset
    opt_level: int
    lowered: LoweredGraph
    relax_mod: Any
    """The Relax IRModule given to `tvm.compile` (`.script()` prints it)."""
    executable: Any
    manifest: dict[str, Any]
    module: CompiledModule


def compile(
    model_or_graph: Any,
    example_inputs: Sequence[Any] | Any | None = None,
    target: str | TargetPreset = "host",
    opt_level: int = 2,
    num_threads: int | None = None,
    tuning_records: str | os.PathLike[str] | bool | None = None,
) -> CompiledModule:
    """Compile a qcompiler `Graph`, or a PyTorch-quantized model, for `target`.

    A torch model (eager quantized `nn.Module`, `convert_fx` GraphModule, PT2E module or
    `torch.export` program) is imported with `qcompiler.frontends.from_torch(model,
    example_inputs)`; a `Graph` is compiled as it is (`example_inputs`, if given, are checked
    against its inputs). `target` is a preset name (`qcompiler.target.list_targets()`).
    `opt_level`: 0 naive loops, 1 generic schedules, 2 (default) target schedule rules where
    there are any; graph passes per level as `qcompiler.passes.pipelines.pipeline` lists them
    (1: dce, cse, constant folding; 2: + activation fusion and fused kernel groups).
    `num_threads` caps TVM's (process-wide) thread pool and is the core count the schedules
    plan for; default: every CPU this process may use.
    `tuning_records` (opt_level >= 2): a directory written by `qcompiler tune` (docs/tuning.md);
    a kernel with a record there, else in the shipped `schedules/<target>/`, gets its tuned
    schedule instead of the rules' (manifest `kernels[].schedule == "tuned"`). False: no
    records.
    """
    return build(
        model_or_graph,
        example_inputs,
        target=target,
        opt_level=opt_level,
        num_threads=num_threads,
        tuning_records=tuning_records,
    ).module


def build(
    model_or_graph: Any,
    example_inputs: Sequence[Any] | Any | None = None,
    *,
    target: str | TargetPreset = "host",
    opt_level: int = 2,
    num_threads: int | None = None,
    groups: Sequence[KernelGroup] | None = None,
    strict_schedules: bool = False,
    tuning_records: str | os.PathLike[str] | bool | None = None,
) -> BuildResult:
    """`compile`, returning every intermediate. `groups` overrides the kernel grouping (and
    then the graph passes do not run: the groups name this graph's nodes);
    `strict_schedules` re-raises schedule-rule errors instead of falling back (tests)."""
    if isinstance(opt_level, bool) or opt_level not in (0, 1, 2, 3):
        raise QCompilerError(f"opt_level must be 0, 1, 2 or 3, got {opt_level!r}")
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise QCompilerError(f"num_threads must be an int >= 1, got {num_threads!r}")
    preset = get_target(target, num_cores=num_threads)
    records = None
    if opt_level >= 2:
        from qcompiler.tuning.records import records_for

        records = records_for(tuning_records, preset)
    graph, from_torch = _as_graph(model_or_graph, example_inputs)

    from qcompiler.ir.verify import verify

    verify(graph)
    _check_signature_dtypes(graph)

    # Importing lowering sets TVM_NUM_THREADS before TVM's first use (see lowering/__init__).
    from qcompiler.codegen.rule import schedule_func
    from qcompiler.lowering.to_relax import KernelFunc, build_relax, lower_graph
    from qcompiler.lowering.tvm_compat import compile_module
    from qcompiler.runtime.module import CompiledModule

    if groups is None:
        from qcompiler.lowering.to_relax import KernelGroup
        from qcompiler.passes.pipelines import kernel_groups, optimize

        graph = optimize(graph, opt_level, preset)  # a copy: the caller's graph is kept
        node_groups = kernel_groups(graph, opt_level)
        if node_groups is not None:
            groups = [KernelGroup(g.nodes, g.anchor) for g in node_groups]
    # target strategies (packed layouts, lowering/strategy.py) go with the target schedule rules
    strategy_target = preset if opt_level >= 2 else None
    lowered = lower_graph(graph, groups, strategy_target, strict=strict_schedules)

    def schedule(kf: KernelFunc) -> tuple[Any, str | None]:
        tuned = records.lookup(kf.func) if records is not None else None
        if tuned is not None:
            return tuned, "tuned"
        return schedule_func(
            kf.func,
            op=kf.op,
            kind=kf.schedule_kind,
            target=preset,
            opt_level=opt_level,
            strict=strict_schedules,
        )

    lowered.schedule(schedule)
    relax_mod = build_relax(lowered)
    try:
        executable = compile_module(relax_mod, preset.tvm_target())
    except Exception as e:  # TVM's errors are RuntimeError/ValueError subclasses with long logs
        raise LoweringError(
            f"TVM could not build the module for target {preset.display_name} "
            f"(kernels: {', '.join(kf.name for kf in lowered.funcs)}): {e}"
        ) from e
    manifest = make_manifest(graph, preset, lowered, opt_level, from_torch)
    module = CompiledModule(executable, manifest)
    if num_threads is not None and not preset.is_cross():
        module.num_threads = num_threads
    return BuildResult(graph, preset, opt_level, lowered, relax_mod, executable, manifest, module)


# --- input handling ------------------------------------------------------------------------------


def _as_graph(model: Any, example_inputs: Any) -> tuple[Graph, bool]:
    """(graph, came from torch)."""
    if isinstance(model, Graph):
        if example_inputs is not None:
            _check_example_inputs(model, example_inputs)
        return model, False
    if isinstance(model, (str, bytes, os.PathLike)):
        raise QCompilerError(
            f"compile takes a qcompiler Graph or a PyTorch model, got the path {model!r}; "
            "to load a compiled artifact use qcompiler.load(path)"
        )
    torch = sys.modules.get("torch")
    torch_types: tuple[type, ...] = ()
    if torch is not None:
        torch_types = (torch.nn.Module, torch.export.ExportedProgram)
    if not (torch_types and isinstance(model, torch_types)):
        raise QCompilerError(
            "compile takes a qcompiler Graph, a torch.nn.Module (eager quantized, convert_fx "
            f"GraphModule or PT2E module) or a torch.export ExportedProgram; got "
            f"{type(model).__module__}.{type(model).__qualname__}"
        )
    if example_inputs is None:
        raise QCompilerError(
            "compiling a PyTorch model needs example_inputs (a tensor or a tuple of tensors "
            "with the shapes and dtypes the compiled model will take)"
        )
    try:
        from qcompiler.frontends import from_torch
    except ImportError as e:
        raise QCompilerError(
            "compiling a PyTorch model needs the PyTorch frontend "
            f"(qcompiler.frontends.from_torch), which is not available here ({e}); import the "
            "model into a Graph yourself and compile that"
        ) from e
    return from_torch(model, example_inputs), True


def _check_example_inputs(graph: Graph, example_inputs: Any) -> None:
    xs = tuple(example_inputs) if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
    if len(xs) != len(graph.inputs):
        raise InputError(
            f"graph {graph.name} takes {len(graph.inputs)} inputs, example_inputs has {len(xs)}"
        )
    for v, x in zip(graph.inputs, xs):
        shape = tuple(getattr(x, "shape", np.shape(x)))
        if shape != v.type.shape:
            raise InputError(
                f"example input %{v.name}: expected shape {list(v.type.shape)}, got {list(shape)}"
            )


def _check_signature_dtypes(graph: Graph) -> None:
    for what, values in (("input", graph.inputs), ("output", graph.outputs)):
        for v in values:
            if v.type.dtype.storage not in _MANIFEST_DTYPES or v.type.dtype.short == "u4":
                raise LoweringError(
                    f"graph {what} %{v.name or '?'} has type {v.type}; compiled models take and "
                    f"return {', '.join(_MANIFEST_DTYPES)} tensors (quantized ones as u8/i8/i32 "
                    "storage)"
                )


# --- the manifest --------------------------------------------------------------------------------


def _io_entry(name: str, ty: TensorType, torch_input: str | None) -> dict[str, Any]:
    qp = ty.qparams
    quantized = (
        qp is not None and qp.scheme != "float_qparams" and ty.dtype.short in _MANIFEST_QDTYPES
    )
    return {
        "name": name,
        "shape": list(ty.shape),
        "dtype": ty.dtype.storage,
        "qdtype": ty.dtype.torch_qname if quantized else None,
        "qparams": None
        if not quantized or qp is None
        else {
            "scheme": qp.scheme,
            "scale": list(qp.scale),
            "zero_point": [int(z) for z in qp.zero_point],
            "axis": qp.axis,
        },
        "torch_input": torch_input,
    }


def _unique_names(names: Sequence[str]) -> list[str]:
    used: set[str] = set()
    out = []
    for n in names:
        name, k = n, 1
        while name in used:
            name = f"{n}_{k}"
            k += 1
        used.add(name)
        out.append(name)
    return out


def make_manifest(
    graph: Graph,
    target: TargetPreset,
    lowered: LoweredGraph,
    opt_level: int,
    from_torch: bool = False,
) -> dict[str, Any]:
    """The artifact manifest (runtime/manifest.py) of a compiled graph."""
    import qcompiler
    from qcompiler.ir.printer import print_graph
    from qcompiler.lowering.tvm_compat import TVM_VERSION

    in_names = _unique_names([v.name or f"input{k}" for k, v in enumerate(graph.inputs)])
    single = len(graph.outputs) == 1
    out_names = _unique_names(
        [v.name or ("output" if single else f"output{k}") for k, v in enumerate(graph.outputs)]
    )
    inputs = []
    for name, v in zip(in_names, graph.inputs):
        kind = (
            "quantized"
            if v.type.qparams is not None
            else ("float" if from_torch and v.type.dtype.is_float else None)
        )
        inputs.append(_io_entry(name, v.type, kind))
    outputs = [_io_entry(name, v.type, None) for name, v in zip(out_names, graph.outputs)]
    from qcompiler.passes.layout import kernel_summary

    first_call = {}
    for k in lowered.kernels:
        first_call.setdefault(k.func.name, k)
    kernels = [
        {
            "name": kf.name,
            "op": kf.op,
            "ops": list(kf.ops),
            "schedule_kind": kf.schedule_kind,
            "schedule": kf.rule,
            "strategy": kf.strategy,
            "calls": kf.calls,
            "layouts": kernel_summary(graph, first_call[kf.name].group.nodes,
                                      first_call[kf.name].group.anchor)["layouts"]
            if kf.name in first_call else None,
        }
        for kf in lowered.funcs
    ]
    return {
        "format": "qcompiler-artifact",
        "format_version": 1,
        "target": target.to_dict(),
        "versions": {
            "qcompiler": qcompiler.__version__,
            "tvm": TVM_VERSION,
            "numpy": np.__version__,
        },
        "compile_options": {"opt_level": opt_level},
        "inputs": inputs,
        "outputs": outputs,
        "graph_ir": print_graph(graph),
        "kernels": kernels,
    }


__all__ = ["BuildResult", "build", "compile", "make_manifest"]
