"""The conversion table from PyTorch modules, functions and methods to IR ops.

The one place to extend the PyTorch frontends: register a handler with `@module(cls, ...)`,
`@function(fn, ...)` or `@method("name", ...)`. A handler receives the ImportContext and the
node's arguments (FX nodes already replaced by IR values or Python objects; the module
instance first for `call_module`) and returns the IR value(s) the node produces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qcompiler.errors import UnsupportedError
from qcompiler.ir.graph import Value
from qcompiler.ir.types import DType, QParams

Handler = Callable[..., Any]

MODULES: dict[type, Handler] = {}
FUNCTIONS: dict[Any, Handler] = {}
METHODS: dict[str, Handler] = {}
_LOADED = False


def module(*classes: Any) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for c in classes:
            if c is not None:
                MODULES[c] = fn
        return fn
    return deco


def function(*fns: Any) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for f in fns:
            if f is not None:
                FUNCTIONS[f] = fn
        return fn
    return deco


def method(*names: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for n in names:
            METHODS[n] = fn
        return fn
    return deco


def _name(x: Any) -> str:
    from qcompiler.frontends.torch_fx import _target_name

    return _target_name(x)


def lookup(ctx: Any, node: Any) -> Handler:
    """The handler for an FX node, or an UnsupportedError naming it and the alternatives."""
    _ensure_loaded()
    if node.op == "call_module":
        mod = ctx.gm.get_submodule(str(node.target))
        for cls in type(mod).__mro__:
            if cls in MODULES:
                h = MODULES[cls]
                return lambda c, *a, **k: h(c, mod, *a, **k)
        raise ctx.unsupported(f"unsupported module {type(mod).__module__}."
                              f"{type(mod).__qualname__}", [c.__qualname__ for c in MODULES])
    if node.op == "call_function":
        h = FUNCTIONS.get(node.target)
        if h is None:
            # torch.ops overload packets and their overloads map to the same handler
            h = FUNCTIONS.get(getattr(node.target, "overloadpacket", None))
        if h is None:
            raise ctx.unsupported(f"unsupported function {_name(node.target)}",
                                  [_name(f) for f in FUNCTIONS])
        return h
    if node.op == "call_method":
        h = METHODS.get(str(node.target))
        if h is None:
            raise ctx.unsupported(f"unsupported tensor method .{node.target}()",
                                  [f".{m}()" for m in METHODS])
        return h
    raise ctx.unsupported(f"unsupported FX node kind {node.op}")


def _ensure_loaded() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        _register_all()


# --- helpers for handlers -------------------------------------------------------------------

def scalar(x: Any) -> float | int:
    """A Python number from a number or a one-element tensor (FX get_attr scale/zero point)."""
    if hasattr(x, "item"):
        return x.item()
    return x


def qdtype(torch_dtype: Any) -> DType:
    return DType.from_torch_qname(str(torch_dtype))


def quantize(ctx: Any, x: Value, scale: Any, zero_point: Any, torch_dtype: Any) -> Value:
    from qcompiler.ops.quant import QuantizeAttrs

    qp = QParams.per_tensor(float(scalar(scale)), int(scalar(zero_point)))
    return ctx.op("quantize", [ctx.value(x)], QuantizeAttrs(qdtype(torch_dtype), qp))


def dequantize(ctx: Any, x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return type(x)(dequantize(ctx, v) for v in x)
    v = ctx.value(x)
    if v.type.qparams is None:
        return v  # dequantize of a float tensor is the identity in PyTorch
    return ctx.op("dequantize", [v])


def identity(ctx: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


def _register_all() -> None:
    import torch
    import torch.ao.nn.quantized as nnq
    import torch.nn as nn

    # --- quantize / dequantize ---------------------------------------------------------
    @function(torch.quantize_per_tensor)
    def _quantize_per_tensor(ctx: Any, x: Value, scale: Any, zero_point: Any,
                             dtype: Any) -> Value:
        return quantize(ctx, x, scale, zero_point, dtype)

    @function(torch.quantize_per_channel)
    def _quantize_per_channel(ctx: Any, x: Value, scales: Any, zero_points: Any, axis: int,
                              dtype: Any) -> Value:
        from qcompiler.ops.quant import QuantizeAttrs

        qp = QParams.per_axis(scales.double().numpy(), zero_points.numpy(), int(axis))
        return ctx.op("quantize", [ctx.value(x)], QuantizeAttrs(qdtype(dtype), qp))

    @module(nnq.Quantize)
    def _quantize_module(ctx: Any, mod: Any, x: Value) -> Value:
        return quantize(ctx, x, mod.scale, mod.zero_point, mod.dtype)

    @module(nnq.DeQuantize)
    def _dequantize_module(ctx: Any, mod: Any, x: Any) -> Any:
        return dequantize(ctx, x)

    FUNCTIONS[torch.dequantize] = dequantize
    METHODS["dequantize"] = dequantize

    # --- identities ----------------------------------------------------------------------
    @module(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nnq.Dropout)
    def _identity_module(ctx: Any, mod: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x

    method("contiguous", "detach")(identity)
