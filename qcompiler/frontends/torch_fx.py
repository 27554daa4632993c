"""Import a torch.fx GraphModule (eager models are traced into one) into the qcompiler IR.

The importer walks the FX graph in order. Each `call_module`, `call_function` and
`call_method` node is looked up in the conversion table (`frontends/torch_table.py`, the one
place to extend) and its handler emits IR through the Builder. `get_attr` values stay Python
objects (tensors, scalars) until a handler turns them into IR constants. Every IR node gets
its source location: the module path or FX node name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from qcompiler.errors import FrontendError, QCompilerError, UnsupportedError
from qcompiler.ir.builder import Builder
from qcompiler.ir.graph import Graph, Value
from qcompiler.ir.types import DType, QParams, TensorType


def torch_tensor_type(t: Any) -> TensorType:
    """The IR type of a torch tensor (quantized tensors carry their qparams)."""
    import torch

    if t.is_quantized:
        dtype = DType.from_torch_qname(str(t.dtype))
        if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            scheme = "symmetric" if t.qscheme() == torch.per_tensor_symmetric else "affine"
            qp = QParams.per_tensor(float(t.q_scale()), int(t.q_zero_point()), scheme)
        else:
            scheme = {torch.per_channel_affine: "affine",
                      torch.per_channel_symmetric: "symmetric",
                      torch.per_channel_affine_float_qparams: "float_qparams"}[t.qscheme()]
            qp = QParams.per_axis(t.q_per_channel_scales().double().numpy(),
                                  t.q_per_channel_zero_points().numpy(),
                                  int(t.q_per_channel_axis()), scheme)
        return TensorType(tuple(t.shape), dtype, qp)
    np_dtype = torch_to_numpy_dtype(t.dtype)
    return TensorType(tuple(t.shape), _SHORT_FOR_NP[np_dtype])


def torch_to_numpy_dtype(dtype: Any) -> str:
    import torch

    table = {torch.float32: "float32", torch.float16: "float16", torch.float64: "float64",
             torch.int64: "int64", torch.int32: "int32", torch.int8: "int8",
             torch.uint8: "uint8", torch.bool: "bool"}
    if dtype not in table:
        raise UnsupportedError(f"tensor dtype {dtype} is not supported; supported: "
                               + ", ".join(str(d) for d in table))
    return table[dtype]


def _short(np_name: str) -> DType:
    return DType.from_short({"float32": "f32", "float16": "f16", "float64": "f64",
                             "int64": "i64", "int32": "i32", "int8": "i8", "uint8": "u8",
                             "bool": "b1"}[np_name])


_SHORT_FOR_NP: dict[str, DType] = {k: _short(k) for k in (
    "float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")}


def torch_storage(t: Any) -> np.ndarray:
    """Storage values of a tensor as numpy (int_repr for quantized tensors)."""
    if t.is_quantized:
        return t.int_repr().detach().contiguous().numpy().copy()
    return t.detach().contiguous().numpy().copy()


class ImportContext:
    """What a conversion handler sees: the builder, the current node, helpers for constants."""

    def __init__(self, gm: Any, builder: Builder) -> None:
        self.gm = gm
        self.b = builder
        self.node: Any = None
        self._const_cache: dict[int, tuple[Any, Value]] = {}
        """id(tensor) -> (tensor, value); holding the tensor keeps its id from being reused."""

    @property
    def loc(self) -> str:
        n = self.node
        if n is None:
            return ""
        if n.op == "call_module":
            return str(n.target)
        return str(n.name)

    def op(self, name: str, inputs: Sequence[Value], attrs: Any = None) -> Any:
        return self.b.op(name, list(inputs), attrs, loc=self.loc, name=self.node.name)

    def const(self, t: Any, name: str | None = None) -> Value:
        """An IR constant holding a torch tensor (quantized ones keep their qparams)."""
        key = id(t)
        if key in self._const_cache:
            return self._const_cache[key][1]
        v = self.b.const(torch_storage(t), torch_tensor_type(t), name or self.node.name,
                         loc=self.loc)
        self._const_cache[key] = (t, v)
        return v

    def value(self, x: Any, name: str | None = None) -> Value:
        """An IR value for a handler argument: IR values pass through, tensors become consts."""
        if isinstance(x, Value):
            return x
        if type(x).__module__.startswith("torch") and hasattr(x, "is_quantized"):
            return self.const(x, name)
        raise self.unsupported(f"expected a tensor argument, got {type(x).__name__} {x!r}")

    def unsupported(self, what: str, supported: Sequence[str] = ()) -> UnsupportedError:
        return UnsupportedError(self.describe(what, supported))

    def describe(self, what: str, supported: Sequence[str] = ()) -> str:
        n = self.node
        lines = [what]
        if n is not None:
            lines.append(f"  at FX node {n.name!r} ({n.op} {_target_name(n.target)})"
                         + (f", module {n.target!r}" if n.op == "call_module" else ""))
            src = user_source_line((n.meta or {}).get("stack_trace"))
            if src:
                lines.append(f"  source: {src}")
        if supported:
            lines.append("  supported: " + ", ".join(sorted(set(supported))))
        return "\n".join(lines)


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def user_source_line(trace: Any) -> str:
    """The innermost frame of an FX stack trace that is the user's code, not torch's."""
    if not trace:
        return ""
    lines = str(trace).splitlines()
    best = ""
    for k, ln in enumerate(lines):
        m = _FRAME.search(ln)
        if m is None or "/torch/" in m.group(1) or "/qcompiler/" in m.group(1):
            continue
        code = lines[k + 1].strip() if k + 1 < len(lines) else ""
        best = f"{m.group(1)}:{m.group(2)} in {m.group(3)}: {code}"
    return best


def _target_name(target: Any) -> str:
    if isinstance(target, str):
        return target
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    if str(name).startswith("_VariableFunctionsClass.") or mod == "torch._C._VariableFunctions":
        return "torch." + str(getattr(target, "__name__", name))
    if type(target).__name__ in ("OpOverloadPacket", "OpOverload"):
        return "torch.ops." + str(target)
    if name is None:
        return str(target)
    return f"{mod}.{name}" if mod and not str(name).startswith(mod) else str(name)


def _map_args(x: Any, env: dict[Any, Any]) -> Any:
    import torch.fx

    if isinstance(x, torch.fx.Node):
        return env[x]
    if isinstance(x, (list, tuple)):
        return type(x)(_map_args(v, env) for v in x)
    if isinstance(x, dict):
        return {k: _map_args(v, env) for k, v in x.items()}
    return x


def _fetch_attr(gm: Any, target: str) -> Any:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _flatten_outputs(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        out: list[Any] = []
        for v in x:
            out.extend(_flatten_outputs(v))
        return out
    return [x]


def import_graph_module(gm: Any, example_inputs: Sequence[Any], name: str = "main") -> Graph:
    """Convert an FX GraphModule to an IR Graph, typing inputs from `example_inputs`."""
    from qcompiler.frontends import torch_table

    b = Builder(name)
    ctx = ImportContext(gm, b)
    env: dict[Any, Any] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise FrontendError(f"the model takes {len(placeholders)} inputs "
                            f"({', '.join(p.name for p in placeholders)}), "
                            f"but {len(example_inputs)} example inputs were given")
    ex_iter = iter(example_inputs)
    outputs: list[Value] = []
    for node in gm.graph.nodes:
        ctx.node = node
        if node.op == "placeholder":
            ex = next(ex_iter)
            if not hasattr(ex, "is_quantized"):
                raise FrontendError(f"example input for {node.name!r} must be a torch tensor,"
                                    f" got {type(ex).__name__}")
            env[node] = b.input(node.name, torch_tensor_type(ex))
            continue
        if node.op == "get_attr":
            env[node] = _fetch_attr(gm, str(node.target))
            continue
        if node.op == "output":
            outs = _flatten_outputs(_map_args(node.args[0], env))
            for v in outs:
                if not isinstance(v, Value):
                    raise FrontendError(f"model output {v!r} is not a tensor computed by the"
                                        " model; only tensor outputs are supported")
            outputs = outs
            continue
        args = _map_args(node.args, env)
        kwargs = _map_args(node.kwargs, env)
        handler = torch_table.lookup(ctx, node)
        try:
            env[node] = handler(ctx, *args, **kwargs)
        except UnsupportedError:
            raise
        except QCompilerError as e:
            raise FrontendError(ctx.describe(f"cannot import: {e}")) from None
    if not outputs:
        raise FrontendError("the model has no tensor outputs")
    return b.finish(*outputs)
