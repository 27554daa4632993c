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

    for register in EXTRA_REGISTRATIONS:
        register()


# --- convolutions ---------------------------------------------------------------------------

def conv(ctx: Any, op: str, x: Any, weight: Any, bias: Any, stride: Any, padding: Any,
         dilation: Any, groups: int, scale: Any, zero_point: Any, padding_mode: str = "zeros",
         residual: Any = None) -> Value:
    """Emit qnn.conv{1,2,3}d[_relu|_add|_add_relu] with constant weight and float bias."""
    from qcompiler.ops.conv import ConvAttrs

    attrs = ConvAttrs(QParams.per_tensor(float(scalar(scale)), int(scalar(zero_point))),
                      stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                      groups=int(groups), padding_mode=str(padding_mode))
    inputs = [ctx.value(x), ctx.const(weight, f"{ctx.node.name}_weight")]
    if bias is not None:
        inputs.append(ctx.const(bias.detach().float(), f"{ctx.node.name}_bias"))
    if residual is not None:
        inputs.append(ctx.value(residual))
    return ctx.op(op, inputs, attrs)


def conv_module(op: str) -> Handler:
    def handler(ctx: Any, mod: Any, x: Any, residual: Any = None) -> Value:
        if isinstance(mod.padding, str):
            raise ctx.unsupported(f"string padding {mod.padding!r} in {type(mod).__name__}",
                                  ["integer padding"])
        return conv(ctx, op, x, mod.weight(), mod.bias(), mod.stride, mod.padding,
                    mod.dilation, mod.groups, mod.scale, mod.zero_point, mod.padding_mode,
                    residual)
    return handler


def conv_packed(op: str, with_residual: bool = False) -> Handler:
    """torch.ops.quantized.convNd[_relu](x, packed, scale, zp) and conv2d_add(x, e, packed, ...)."""
    def handler(ctx: Any, x: Any, *args: Any) -> Value:
        residual = None
        if with_residual:
            residual, *args = args  # type: ignore[assignment]
        packed, scale, zero_point = args[0], args[1], args[2]
        w, b = packed.unpack()
        return conv(ctx, op, x, w, b, packed.stride(), packed.padding(), packed.dilation(),
                    packed.groups(), scale, zero_point, residual=residual)
    return handler


def _register_conv() -> None:
    import torch
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    q = torch.ops.quantized
    module(nnq.Conv1d)(conv_module("qnn.conv1d"))
    module(nnq.Conv2d)(conv_module("qnn.conv2d"))
    module(nnq.Conv3d)(conv_module("qnn.conv3d"))
    module(nniq.ConvReLU1d)(conv_module("qnn.conv1d_relu"))
    module(nniq.ConvReLU2d)(conv_module("qnn.conv2d_relu"))
    module(nniq.ConvReLU3d)(conv_module("qnn.conv3d_relu"))
    module(nniq.ConvAdd2d)(conv_module("qnn.conv2d_add"))
    module(nniq.ConvAddReLU2d)(conv_module("qnn.conv2d_add_relu"))
    for name, op in [("conv1d", "qnn.conv1d"), ("conv2d", "qnn.conv2d"),
                     ("conv3d", "qnn.conv3d"), ("conv1d_relu", "qnn.conv1d_relu"),
                     ("conv2d_relu", "qnn.conv2d_relu"), ("conv3d_relu", "qnn.conv3d_relu")]:
        function(getattr(q, name))(conv_packed(op))
    function(q.conv2d_add)(conv_packed("qnn.conv2d_add", with_residual=True))
    function(q.conv2d_add_relu)(conv_packed("qnn.conv2d_add_relu", with_residual=True))


EXTRA_REGISTRATIONS: list[Callable[[], None]] = [_register_conv]
