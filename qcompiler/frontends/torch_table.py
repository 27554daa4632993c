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


def _class_name(cls: type) -> str:
    """torch.ao.nn.quantized.modules.linear.Linear -> torch.ao.nn.quantized.Linear."""
    parts = cls.__module__.split(".")
    if "modules" in parts:
        parts = parts[:parts.index("modules")]
    elif len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts + [cls.__qualname__])


def lookup(ctx: Any, node: Any) -> Handler:
    """The handler for an FX node, or an UnsupportedError naming it and the alternatives."""
    _ensure_loaded()
    if node.op == "call_module":
        mod = ctx.gm.get_submodule(str(node.target))
        for cls in type(mod).__mro__:
            if cls in MODULES:
                h = MODULES[cls]
                return lambda c, *a, **k: h(c, mod, *a, **k)
        raise ctx.unsupported(f"unsupported module {_class_name(type(mod))}",
                              [_class_name(c) for c in MODULES])
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


# --- python-level values, shapes and float ops ----------------------------------------------

def is_tensor(x: Any) -> bool:
    return isinstance(x, Value)


def is_quantized(x: Any) -> bool:
    return isinstance(x, Value) and x.type.qparams is not None


def dims_arg(args: tuple[Any, ...]) -> tuple[int, ...]:
    """`x.reshape(2, 3)` and `x.reshape((2, 3))` alike."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(int(scalar(a)) for a in args[0])
    return tuple(int(scalar(a)) for a in args)


def float_only(ctx: Any, x: Value, what: str, supported: tuple[str, ...] = ()) -> Value:
    if is_quantized(x):
        raise ctx.unsupported(f"{what} on a quantized tensor ({x.type}) is not supported",
                              supported)
    return x


_PY_BINARY: dict[str, tuple[Callable[[Any, Any], Any], str]] = {}


def _register_python_and_float() -> None:
    import operator

    import torch
    import torch.nn as nn
    import torch.nn.functional as F  # noqa: N812

    from qcompiler.ops import float_ops as fo
    from qcompiler.ops import shape as sh

    # --- shapes and python values ------------------------------------------------------
    @function(getattr)
    def _getattr(ctx: Any, obj: Any, name: str) -> Any:
        if is_tensor(obj):
            if name == "shape":
                return tuple(obj.type.shape)
            if name == "ndim":
                return obj.type.rank
            raise ctx.unsupported(f"tensor attribute .{name}", [".shape", ".ndim"])
        return getattr(obj, name)

    @method("size")
    def _size(ctx: Any, x: Value, dim: int | None = None) -> Any:
        shape = tuple(x.type.shape)
        return shape if dim is None else shape[dim]

    @method("dim")
    def _dim(ctx: Any, x: Value) -> int:
        return x.type.rank

    @function(operator.getitem)
    def _getitem(ctx: Any, obj: Any, idx: Any) -> Any:
        if not is_tensor(obj):
            return obj[idx]
        return tensor_index(ctx, obj, idx)

    binary = {operator.add: ("f.add", "f.add_scalar", lambda a, b: a + b),
              operator.sub: ("f.sub", "f.sub_scalar", lambda a, b: a - b),
              operator.mul: ("f.mul", "f.mul_scalar", lambda a, b: a * b),
              operator.truediv: ("f.div", "f.div_scalar", lambda a, b: a / b),
              operator.pow: ("f.pow", "f.pow_scalar", lambda a, b: a ** b),
              operator.floordiv: (None, None, lambda a, b: a // b),
              operator.mod: (None, None, lambda a, b: a % b)}
    torch_binary = {torch.add: operator.add, torch.sub: operator.sub, torch.mul: operator.mul,
                    torch.div: operator.truediv, torch.pow: operator.pow}
    method_binary = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
                     "div": operator.truediv, "pow": operator.pow, "__add__": operator.add,
                     "__mul__": operator.mul, "__truediv__": operator.truediv}

    def make_binary(pyop: Any) -> Handler:
        top, sop, py = binary[pyop]

        def handler(ctx: Any, a: Any, b: Any, **kw: Any) -> Any:
            if kw.get("alpha", 1) != 1:
                raise ctx.unsupported("alpha != 1 in add/sub", ["alpha=1"])
            if not is_tensor(a) and not is_tensor(b):
                return py(scalar(a), scalar(b))
            if top is None:
                raise ctx.unsupported(f"{pyop.__name__} on tensors", ["+", "-", "*", "/", "**"])
            if is_quantized(a) or is_quantized(b):
                raise ctx.unsupported(
                    f"float arithmetic {pyop.__name__} on a quantized tensor; use "
                    "FloatFunctional/QFunctional or dequantize first",
                    ["torch.ops.quantized.add/mul", "FloatFunctional.add/mul/add_scalar"])
            if is_tensor(a) and is_tensor(b):
                return ctx.op(top, [a, b])
            if is_tensor(a):
                return ctx.op(sop, [a], fo.ScalarAttrs(scalar(b), False))
            return ctx.op(sop, [b], fo.ScalarAttrs(scalar(a), True))
        return handler

    for pyop in binary:
        function(pyop)(make_binary(pyop))
    for top, pyop in torch_binary.items():
        function(top)(make_binary(pyop))
    for name, pyop in method_binary.items():
        method(name)(make_binary(pyop))

    @function(operator.neg)
    def _neg(ctx: Any, a: Any) -> Any:
        return ctx.op("f.neg", [float_only(ctx, a, "negation")]) if is_tensor(a) else -a

    # --- shape ops (quantized or float) ---------------------------------------------------
    @method("reshape", "view")
    def _reshape(ctx: Any, x: Value, *shape: Any) -> Value:
        return ctx.op("reshape", [x], sh.ReshapeAttrs(dims_arg(shape)))

    function(torch.reshape)(lambda ctx, x, shape: ctx.op(
        "reshape", [x], sh.ReshapeAttrs(dims_arg((shape,)))))

    @function(torch.flatten)
    @method("flatten")
    def _flatten(ctx: Any, x: Value, start_dim: int = 0, end_dim: int = -1) -> Value:
        return ctx.op("flatten", [x], sh.FlattenAttrs(int(start_dim), int(end_dim)))

    @function(torch.permute)
    @method("permute")
    def _permute(ctx: Any, x: Value, *dims: Any) -> Value:
        return ctx.op("permute", [x], sh.PermuteAttrs(dims_arg(dims)))

    @function(torch.transpose)
    @method("transpose")
    def _transpose(ctx: Any, x: Value, dim0: int, dim1: int) -> Value:
        return ctx.op("transpose", [x], sh.TransposeAttrs(int(dim0), int(dim1)))

    @method("t")
    def _t(ctx: Any, x: Value) -> Value:
        return x if x.type.rank < 2 else ctx.op("transpose", [x], sh.TransposeAttrs(0, 1))

    @function(torch.squeeze)
    @method("squeeze")
    def _squeeze(ctx: Any, x: Value, dim: Any = None) -> Value:
        dims = None if dim is None else dims_arg((dim,) if isinstance(dim, int) else (dim,))
        return ctx.op("squeeze", [x], sh.SqueezeAttrs(dims))

    @function(torch.unsqueeze)
    @method("unsqueeze")
    def _unsqueeze(ctx: Any, x: Value, dim: int) -> Value:
        return ctx.op("unsqueeze", [x], sh.UnsqueezeAttrs(int(dim)))

    @method("expand")
    def _expand(ctx: Any, x: Value, *sizes: Any) -> Value:
        return ctx.op("expand", [x], sh.ExpandAttrs(dims_arg(sizes)))

    @function(torch.chunk)
    @method("chunk")
    def _chunk(ctx: Any, x: Value, chunks: int, dim: int = 0) -> Any:
        return ctx.op("chunk", [x], sh.ChunkAttrs(int(chunks), int(dim)))

    @function(torch.split)
    @method("split")
    def _split(ctx: Any, x: Value, size: Any, dim: int = 0) -> Any:
        s = int(size) if isinstance(size, int) else tuple(int(v) for v in size)
        out = ctx.op("split", [x], sh.SplitAttrs(s, int(dim)))
        return out if isinstance(out, tuple) else (out,)

    @function(torch.stack)
    def _stack(ctx: Any, xs: Any, dim: int = 0) -> Value:
        return ctx.op("stack", [ctx.value(v) for v in xs], sh.StackAttrs(int(dim)))

    module(nn.Flatten)(lambda ctx, mod, x: _flatten(ctx, x, mod.start_dim, mod.end_dim))

    # --- float ops (models keep them between dequantize and quantize) ------------------------
    def unary(fop: str, what: str) -> Handler:
        return lambda ctx, x, *a, **k: ctx.op(fop, [float_only(ctx, x, what)])

    for fn, fop in [(torch.exp, "f.exp"), (torch.log, "f.log"), (torch.sqrt, "f.sqrt"),
                    (torch.rsqrt, "f.rsqrt"), (torch.abs, "f.abs"), (torch.erf, "f.erf"),
                    (F.silu, "f.silu")]:
        function(fn)(unary(fop, fop[2:]))
    for name, fop in [("exp", "f.exp"), ("sqrt", "f.sqrt"), ("abs", "f.abs")]:
        method(name)(unary(fop, name))

    @function(torch.matmul, torch.bmm)
    @method("matmul")
    def _matmul(ctx: Any, a: Value, b: Value) -> Value:
        return ctx.op("f.matmul", [float_only(ctx, a, "matmul"), float_only(ctx, b, "matmul")])

    @function(torch.softmax, F.softmax)
    @method("softmax")
    def _softmax(ctx: Any, x: Value, dim: int | None = None, *a: Any, **k: Any) -> Value:
        if dim is None:
            raise ctx.unsupported("softmax without dim", ["softmax(x, dim)"])
        return ctx.op("f.softmax", [float_only(ctx, x, "float softmax")], fo.DimAttrs(int(dim)))

    @function(F.log_softmax, torch.log_softmax)
    def _log_softmax(ctx: Any, x: Value, dim: int | None = None, *a: Any, **k: Any) -> Value:
        return ctx.op("f.log_softmax", [float_only(ctx, x, "log_softmax")],
                      fo.DimAttrs(int(dim if dim is not None else -1)))

    @function(F.gelu)
    def _gelu(ctx: Any, x: Value, approximate: str = "none") -> Value:
        return ctx.op("f.gelu", [float_only(ctx, x, "gelu")], fo.GeluAttrs(approximate))

    module(nn.GELU)(lambda ctx, mod, x: _gelu(ctx, x, mod.approximate))
    module(nn.SiLU)(lambda ctx, mod, x: ctx.op("f.silu", [float_only(ctx, x, "silu")]))

    @function(torch.mean)
    @method("mean")
    def _mean(ctx: Any, x: Value, dim: Any = None, keepdim: bool = False) -> Value:
        dims = None if dim is None else dims_arg((dim,) if isinstance(dim, int) else (dim,))
        if is_quantized(x):
            raise ctx.unsupported("mean on a quantized tensor here")
        return ctx.op("f.mean", [x], fo.ReduceAttrs(dims, bool(keepdim)))

    @function(torch.sum)
    @method("sum")
    def _sum(ctx: Any, x: Value, dim: Any = None, keepdim: bool = False) -> Value:
        dims = None if dim is None else dims_arg((dim,) if isinstance(dim, int) else (dim,))
        return ctx.op("f.sum", [float_only(ctx, x, "sum")], fo.ReduceAttrs(dims, bool(keepdim)))

    @module(nn.LayerNorm)
    def _layer_norm_module(ctx: Any, mod: Any, x: Value) -> Value:
        inputs = [float_only(ctx, x, "float LayerNorm", ["torch.ao.nn.quantized.LayerNorm"])]
        if mod.weight is not None:
            inputs.append(ctx.const(mod.weight.detach(), f"{ctx.node.name}_weight"))
            if mod.bias is not None:
                inputs.append(ctx.const(mod.bias.detach(), f"{ctx.node.name}_bias"))
        return ctx.op("f.layer_norm", inputs,
                      fo.LayerNormAttrs(tuple(mod.normalized_shape), float(mod.eps)))

    @module(nn.Embedding)
    def _embedding_module(ctx: Any, mod: Any, ids: Value) -> Value:
        if mod.padding_idx is not None or mod.max_norm is not None:
            raise ctx.unsupported("nn.Embedding with padding_idx/max_norm at inference")
        return ctx.op("f.embedding", [ids, ctx.const(mod.weight.detach(),
                                                     f"{ctx.node.name}_weight")])

    @module(nn.Linear)
    def _linear_module(ctx: Any, mod: Any, x: Value) -> Value:
        inputs = [float_only(ctx, x, "float nn.Linear"),
                  ctx.const(mod.weight.detach(), f"{ctx.node.name}_weight")]
        if mod.bias is not None:
            inputs.append(ctx.const(mod.bias.detach(), f"{ctx.node.name}_bias"))
        return ctx.op("f.linear", inputs)

    # --- dynamic quantization -------------------------------------------------------------
    import torch.ao.nn.intrinsic.quantized.dynamic as nniqd
    import torch.ao.nn.quantized.dynamic as nnqd

    from qcompiler.ops import dynamic as dy

    @module(nnqd.Linear, nniqd.LinearReLU)
    def _linear_dynamic(ctx: Any, mod: Any, x: Value) -> Value:
        relu = isinstance(mod, nniqd.LinearReLU)
        w, b = mod._packed_params._weight_bias()
        name = ctx.node.name
        if mod._packed_params.dtype == torch.float16:
            inputs = [x, ctx.const(w.detach(), f"{name}_weight")]
            if b is not None:
                inputs.append(ctx.const(b.detach().float(), f"{name}_bias"))
            return ctx.op("qnn.linear_dynamic_fp16", inputs, dy.LinearDynamicFp16Attrs(relu))
        inputs = [x, ctx.const(w, f"{name}_weight")]
        if b is not None:
            inputs.append(ctx.const(b.detach().float(), f"{name}_bias"))
        # nnqd.Linear (version >= 4) and LinearReLU pass reduce_range=True to fbgemm
        return ctx.op("qnn.linear_dynamic", inputs, dy.LinearDynamicAttrs(True, relu))

    @module(nnqd.LSTM, nnqd.GRU)
    def _rnn_dynamic(ctx: Any, mod: Any, x: Value, hx: Any = None) -> Any:
        op = "qnn.lstm" if isinstance(mod, nnqd.LSTM) else "qnn.gru"
        inputs = [x]
        if hx is not None:
            states = list(hx) if isinstance(hx, (tuple, list)) else [hx]
            inputs += [ctx.value(h) for h in states]
        weights, biases = mod.get_weight(), mod.get_bias()
        dirs = 2 if mod.bidirectional else 1
        for layer in range(mod.num_layers):
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
                for key in (f"weight_ih{sfx}", f"weight_hh{sfx}"):
                    w = weights[key]
                    inputs.append(ctx.const(w if w.is_quantized else w.detach(),
                                            f"{ctx.node.name}_{key}"))
                for key in (f"bias_ih{sfx}", f"bias_hh{sfx}"):
                    inputs.append(ctx.const(biases[key].detach().float(),
                                            f"{ctx.node.name}_{key}"))
        attrs = dy.RNNAttrs(int(mod.hidden_size), int(mod.num_layers), bool(mod.bidirectional),
                            bool(mod.batch_first), getattr(mod, "version", 2) >= 2)
        outs = ctx.op(op, inputs, attrs)
        return (outs[0], tuple(outs[1:])) if op == "qnn.lstm" else (outs[0], outs[1])


def tensor_index(ctx: Any, x: Value, idx: Any) -> Value:
    """x[idx] with ints, slices, None and Ellipsis (basic indexing) -> select/slice/unsqueeze."""
    from qcompiler.ops import shape as sh

    items = idx if isinstance(idx, tuple) else (idx,)
    if any(i is Ellipsis for i in items):
        k = items.index(Ellipsis)
        rest = len([i for i in items if i is not None and i is not Ellipsis])
        items = items[:k] + (slice(None),) * (x.type.rank - rest) + items[k + 1:]
    dim = 0
    out = x
    for it in items:
        if it is None:
            out = ctx.op("unsqueeze", [out], sh.UnsqueezeAttrs(dim))
            dim += 1
        elif isinstance(it, int):
            out = ctx.op("select", [out], sh.SelectAttrs(dim, it))
        elif isinstance(it, slice):
            if it != slice(None):
                out = ctx.op("slice", [out], sh.SliceAttrs(dim, it.start, it.stop,
                                                          it.step if it.step is not None else 1))
            dim += 1
        else:
            raise ctx.unsupported(f"tensor index {it!r}", ["int", "slice", "None", "..."])
    return out


EXTRA_REGISTRATIONS.append(_register_python_and_float)


# --- linear and transposed convolutions -----------------------------------------------------

def out_qparams(scale: Any, zero_point: Any) -> QParams:
    return QParams.per_tensor(float(scalar(scale)), int(scalar(zero_point)))


def linear(ctx: Any, op: str, x: Any, weight: Any, bias: Any, scale: Any, zero_point: Any,
           negative_slope: float | None = None) -> Value:
    from qcompiler.ops.linear import LinearAttrs, LinearLeakyReLUAttrs

    qp = out_qparams(scale, zero_point)
    attrs: Any = (LinearAttrs(qp) if negative_slope is None
                  else LinearLeakyReLUAttrs(qp, float(negative_slope)))
    inputs = [ctx.value(x), ctx.const(weight, f"{ctx.node.name}_weight")]
    if bias is not None:
        inputs.append(ctx.const(bias.detach().float(), f"{ctx.node.name}_bias"))
    return ctx.op(op, inputs, attrs)


def conv_transpose(ctx: Any, op: str, x: Any, weight: Any, bias: Any, mod_or_packed: Any,
                   scale: Any, zero_point: Any) -> Value:
    from qcompiler.ops.conv_transpose import ConvTransposeAttrs

    p = mod_or_packed
    get = (lambda n: getattr(p, n)()) if callable(getattr(p, "stride", None)) else (
        lambda n: getattr(p, n))
    attrs = ConvTransposeAttrs(out_qparams(scale, zero_point), stride=tuple(get("stride")),
                               padding=tuple(get("padding")),
                               output_padding=tuple(get("output_padding")),
                               dilation=tuple(get("dilation")), groups=int(get("groups")))
    inputs = [ctx.value(x), ctx.const(weight, f"{ctx.node.name}_weight")]
    if bias is not None:
        inputs.append(ctx.const(bias.detach().float(), f"{ctx.node.name}_bias"))
    return ctx.op(op, inputs, attrs)


def _register_linear() -> None:
    import torch
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    q = torch.ops.quantized
    for cls, op in [(nnq.Linear, "qnn.linear"), (nniq.LinearReLU, "qnn.linear_relu"),
                    (nniq.LinearTanh, "qnn.linear_tanh")]:
        def handler(ctx: Any, mod: Any, x: Any, _op: str = op) -> Value:
            return linear(ctx, _op, x, mod.weight(), mod.bias(), mod.scale, mod.zero_point)
        module(cls)(handler)

    @module(nniq.LinearLeakyReLU)
    def _linear_leaky(ctx: Any, mod: Any, x: Any) -> Value:
        return linear(ctx, "qnn.linear_leaky_relu", x, mod.weight(), mod.bias(), mod.scale,
                      mod.zero_point, mod.negative_slope)

    for name, op in [("linear", "qnn.linear"), ("linear_relu", "qnn.linear_relu")]:
        def packed(ctx: Any, x: Any, params: Any, scale: Any, zero_point: Any,
                   _op: str = op) -> Value:
            w, b = params.unpack()
            return linear(ctx, _op, x, w, b, scale, zero_point)
        function(getattr(q, name))(packed)

    for cls, op in [(nnq.ConvTranspose1d, "qnn.conv_transpose1d"),
                    (nnq.ConvTranspose2d, "qnn.conv_transpose2d"),
                    (nnq.ConvTranspose3d, "qnn.conv_transpose3d")]:
        def ct_module(ctx: Any, mod: Any, x: Any, output_size: Any = None,
                      _op: str = op) -> Value:
            if output_size is not None:
                raise ctx.unsupported("ConvTranspose with output_size", ["output_size=None"])
            return conv_transpose(ctx, _op, x, mod.weight(), mod.bias(), mod, mod.scale,
                                  mod.zero_point)
        module(cls)(ct_module)

    for name, op in [("conv_transpose1d", "qnn.conv_transpose1d"),
                     ("conv_transpose2d", "qnn.conv_transpose2d"),
                     ("conv_transpose3d", "qnn.conv_transpose3d")]:
        def ct_packed(ctx: Any, x: Any, params: Any, scale: Any, zero_point: Any,
                      _op: str = op) -> Value:
            w, b = params.unpack()
            return conv_transpose(ctx, _op, x, w, b, params, scale, zero_point)
        function(getattr(q, name))(ct_packed)


EXTRA_REGISTRATIONS.append(_register_linear)


# --- norms and embeddings -------------------------------------------------------------------

def _fconst(ctx: Any, t: Any, suffix: str) -> Value:
    return ctx.const(t.detach().float(), f"{ctx.node.name}_{suffix}")


def embedding_weight(ctx: Any, w: Any) -> Value:
    """A quantized embedding table (quint8, or quint4x2 unpacked to one u4 value per byte)."""
    import numpy as np

    from qcompiler.ir.types import TensorType, u4

    if str(w.dtype) != "torch.quint4x2":
        return ctx.const(w, f"{ctx.node.name}_weight")
    packed = w.int_repr().numpy()  # (N, D/2): low nibble first
    data = np.empty((packed.shape[0], packed.shape[1] * 2), np.uint8)
    data[:, 0::2] = packed & 0x0F
    data[:, 1::2] = packed >> 4
    qp = QParams.per_axis(w.q_per_channel_scales().double().numpy(),
                          w.q_per_channel_zero_points().double().numpy(), 0, "float_qparams")
    return ctx.b.const(data, TensorType(data.shape, u4, qp), f"{ctx.node.name}_weight",
                       loc=ctx.loc)


def _register_norm_embedding() -> None:
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    from qcompiler.ops import embedding as em
    from qcompiler.ops import norm as nm

    @module(nnq.BatchNorm2d, nnq.BatchNorm3d, nniq.BNReLU2d, nniq.BNReLU3d)
    def _bn(ctx: Any, mod: Any, x: Any) -> Value:
        op = "qnn.batch_norm_relu" if isinstance(mod, (nniq.BNReLU2d, nniq.BNReLU3d)) else (
            "qnn.batch_norm")
        inputs = [ctx.value(x), _fconst(ctx, mod.weight, "weight"), _fconst(ctx, mod.bias, "bias"),
                  _fconst(ctx, mod.running_mean, "mean"), _fconst(ctx, mod.running_var, "var")]
        return ctx.op(op, inputs, nm.QBatchNormAttrs(out_qparams(mod.scale, mod.zero_point),
                                                     float(mod.eps)))

    def affine_inputs(ctx: Any, mod: Any, x: Any) -> list[Value]:
        inputs = [ctx.value(x)]
        if getattr(mod, "weight", None) is not None and getattr(mod, "bias", None) is not None:
            inputs += [_fconst(ctx, mod.weight, "weight"), _fconst(ctx, mod.bias, "bias")]
        return inputs

    @module(nnq.LayerNorm)
    def _ln(ctx: Any, mod: Any, x: Any) -> Value:
        return ctx.op("qnn.layer_norm", affine_inputs(ctx, mod, x), nm.QLayerNormAttrs(
            tuple(mod.normalized_shape), out_qparams(mod.scale, mod.zero_point), float(mod.eps)))

    @module(nnq.GroupNorm)
    def _gn(ctx: Any, mod: Any, x: Any) -> Value:
        return ctx.op("qnn.group_norm", affine_inputs(ctx, mod, x), nm.QGroupNormAttrs(
            int(mod.num_groups), out_qparams(mod.scale, mod.zero_point), float(mod.eps)))

    @module(nnq.InstanceNorm1d, nnq.InstanceNorm2d, nnq.InstanceNorm3d)
    def _in(ctx: Any, mod: Any, x: Any) -> Value:
        return ctx.op("qnn.instance_norm", affine_inputs(ctx, mod, x), nm.QInstanceNormAttrs(
            out_qparams(mod.scale, mod.zero_point), float(mod.eps)))

    @module(nnq.Embedding)
    def _emb(ctx: Any, mod: Any, ids: Any) -> Value:
        return ctx.op("qnn.embedding", [embedding_weight(ctx, mod.weight()), ctx.value(ids)])

    @module(nnq.EmbeddingBag)
    def _bag(ctx: Any, mod: Any, ids: Any, offsets: Any = None, per_sample_weights: Any = None,
             compressed_indices_mapping: Any = None) -> Value:
        if compressed_indices_mapping is not None:
            raise ctx.unsupported("EmbeddingBag with compressed_indices_mapping")
        if mod.mode != "sum":
            raise ctx.unsupported(f"quantized EmbeddingBag mode {mod.mode!r}: PyTorch's "
                                  "quantized kernels always sum", ["mode='sum'"])
        inputs = [embedding_weight(ctx, mod.weight()), ctx.value(ids)]
        if offsets is not None:
            inputs.append(ctx.value(offsets))
        if per_sample_weights is not None:
            inputs.append(ctx.value(per_sample_weights))
        return ctx.op("qnn.embedding_bag", inputs, em.QEmbeddingBagAttrs(
            "sum", bool(mod.include_last_offset), getattr(mod, "padding_idx", None)))


EXTRA_REGISTRATIONS.append(_register_norm_embedding)


# --- quantized elementwise ops, activations, pools ------------------------------------------

def _tuple(v: Any, n: int | None = None) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return (int(v),) * (n or 1)


def _register_elementwise() -> None:
    import torch
    import torch.ao.nn.quantized as nnq
    import torch.nn as nn
    import torch.nn.functional as F  # noqa: N812

    from qcompiler.ops import activation as act
    from qcompiler.ops import elementwise as ew
    from qcompiler.ops import float_ops as fo
    from qcompiler.ops import pool as pl

    q = torch.ops.quantized

    for name in ("add", "add_relu", "mul", "mul_relu"):
        def binary(ctx: Any, a: Any, b: Any, scale: Any, zero_point: Any,
                   _op: str = f"qnn.{name}") -> Value:
            return ctx.op(_op, [ctx.value(a), ctx.value(b)],
                          ew.QBinaryAttrs(out_qparams(scale, zero_point)))
        function(getattr(q, name))(binary)

    for name in ("add_scalar", "add_scalar_relu", "mul_scalar", "mul_scalar_relu"):
        def scalar_op(ctx: Any, a: Any, b: Any, _op: str = f"qnn.{name}") -> Value:
            return ctx.op(_op, [ctx.value(a)], ew.QScalarAttrs(float(scalar(b))))
        if hasattr(q, name):
            function(getattr(q, name))(scalar_op)

    for name in ("cat", "cat_relu"):
        def qcat(ctx: Any, xs: Any, dim: int = 0, scale: Any = None, zero_point: Any = None,
                 _op: str = f"qnn.{name}") -> Value:
            qp = None if scale is None else out_qparams(scale, zero_point)
            return ctx.op(_op, [ctx.value(v) for v in xs], ew.QCatAttrs(int(dim), qp))
        function(getattr(q, name))(qcat)

    @function(torch.cat, torch.concat)
    def _cat(ctx: Any, xs: Any, dim: int = 0) -> Value:
        vals = [ctx.value(v) for v in xs]
        if any(is_quantized(v) for v in vals):
            return ctx.op("qnn.cat", vals, ew.QCatAttrs(int(dim), None))
        return ctx.op("f.cat", vals, fo.DimAttrs(int(dim)))

    # --- activations: quantized input -> qnn.*, float input -> f.* ----------------------
    def by_type(qop: str, fop: str | None, qattrs: Any = None, fattrs: Any = None) -> Handler:
        def handler(ctx: Any, x: Any, *args: Any, **kwargs: Any) -> Value:
            v = ctx.value(x)
            if is_quantized(v):
                return ctx.op(qop, [v], qattrs)
            if fop is None:
                raise ctx.unsupported(f"{qop[4:]} on a float tensor")
            return ctx.op(fop, [v], fattrs)
        return handler

    relu = by_type("qnn.relu", "f.relu")
    function(torch.relu, F.relu)(relu)
    method("relu")(relu)
    module(nn.ReLU)(lambda ctx, mod, x: relu(ctx, x))

    relu6 = by_type("qnn.relu6", "f.clamp", None, fo.ClampAttrs(0.0, 6.0))
    function(F.relu6)(relu6)
    module(nn.ReLU6, nnq.ReLU6)(lambda ctx, mod, x: relu6(ctx, x))

    def hardtanh(ctx: Any, x: Any, min_val: float = -1.0, max_val: float = 1.0,
                 *a: Any) -> Value:
        v = ctx.value(x)
        if is_quantized(v):
            return ctx.op("qnn.hardtanh", [v], act.HardtanhAttrs(float(min_val), float(max_val)))
        return ctx.op("f.clamp", [v], fo.ClampAttrs(float(min_val), float(max_val)))
    function(F.hardtanh)(hardtanh)
    module(nn.Hardtanh)(lambda ctx, mod, x: hardtanh(ctx, x, mod.min_val, mod.max_val))

    @function(torch.clamp, torch.clip)
    @method("clamp", "clip")
    def _clamp(ctx: Any, x: Any, min: Any = None, max: Any = None) -> Value:
        v = ctx.value(x)
        lo = None if min is None else float(scalar(min))
        hi = None if max is None else float(scalar(max))
        if is_quantized(v):
            return ctx.op("qnn.clamp", [v], act.ClampAttrs(lo, hi))
        return ctx.op("f.clamp", [v], fo.ClampAttrs(lo, hi))

    @module(nnq.Hardswish)
    def _hardswish_q(ctx: Any, mod: Any, x: Any) -> Value:
        return ctx.op("qnn.hardswish", [ctx.value(x)],
                      act.OutQAttrs(out_qparams(mod.scale, mod.zero_point)))

    @function(q.hardswish)
    def _hardswish_op(ctx: Any, x: Any, scale: Any, zero_point: Any) -> Value:
        return ctx.op("qnn.hardswish", [ctx.value(x)],
                      act.OutQAttrs(out_qparams(scale, zero_point)))

    hswish_f = by_type("qnn.hardswish", "f.hardswish")
    module(nn.Hardswish)(lambda ctx, mod, x: (
        ctx.op("f.hardswish", [ctx.value(x)]) if not is_quantized(ctx.value(x))
        else (_ for _ in ()).throw(ctx.unsupported(
            "nn.Hardswish on a quantized tensor needs output qparams",
            ["torch.ao.nn.quantized.Hardswish"]))))
    function(F.hardswish)(hswish_f if False else (lambda ctx, x, *a, **k: ctx.op(
        "f.hardswish", [float_only(ctx, ctx.value(x), "F.hardswish",
                                   ["torch.ao.nn.quantized.functional.hardswish"])])))

    hsig = by_type("qnn.hardsigmoid", "f.hardsigmoid")
    function(F.hardsigmoid)(hsig)
    module(nn.Hardsigmoid)(lambda ctx, mod, x: hsig(ctx, x))

    sig = by_type("qnn.sigmoid", "f.sigmoid", act.SigmoidAttrs(None))
    function(torch.sigmoid, F.sigmoid)(sig)
    method("sigmoid")(sig)
    module(nn.Sigmoid)(lambda ctx, mod, x: sig(ctx, x))

    @module(nnq.Sigmoid)
    def _sigmoid_q(ctx: Any, mod: Any, x: Any) -> Value:
        return ctx.op("qnn.sigmoid", [ctx.value(x)], act.SigmoidAttrs(
            out_qparams(mod.output_scale, mod.output_zero_point)))

    tanh = by_type("qnn.tanh", "f.tanh")
    function(torch.tanh, F.tanh)(tanh)
    method("tanh")(tanh)
    module(nn.Tanh)(lambda ctx, mod, x: tanh(ctx, x))

    def leaky(ctx: Any, x: Any, negative_slope: float = 0.01, inplace: bool = False,
              qp: Any = None) -> Value:
        v = ctx.value(x)
        if is_quantized(v):
            return ctx.op("qnn.leaky_relu", [v], act.LeakyReluAttrs(float(negative_slope), qp))
        return ctx.op("f.leaky_relu", [v], fo.LeakyReluAttrs(float(negative_slope)))
    function(F.leaky_relu)(leaky)
    module(nn.LeakyReLU)(lambda ctx, mod, x: leaky(ctx, x, mod.negative_slope))
    module(nnq.LeakyReLU)(lambda ctx, mod, x: leaky(
        ctx, x, mod.negative_slope, qp=out_qparams(mod.scale, mod.zero_point)))

    @module(nnq.ELU)
    def _elu(ctx: Any, mod: Any, x: Any) -> Value:
        return ctx.op("qnn.elu", [ctx.value(x)],
                      act.EluAttrs(out_qparams(mod.scale, mod.zero_point), float(mod.alpha)))

    @module(nnq.Softmax)
    def _softmax_q(ctx: Any, mod: Any, x: Any) -> Value:
        return ctx.op("qnn.softmax", [ctx.value(x)], act.SoftmaxAttrs(
            int(mod.dim), out_qparams(mod.scale, mod.zero_point)))

    # --- pools and resize -------------------------------------------------------------------
    def max_pool(nd: int) -> Handler:
        def handler(ctx: Any, x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                    dilation: Any = 1, ceil_mode: bool = False,
                    return_indices: bool = False) -> Value:
            if return_indices:
                raise ctx.unsupported("max_pool with return_indices=True")
            v = ctx.value(x)
            if not is_quantized(v):
                raise ctx.unsupported(f"max_pool{nd}d on a float tensor")
            attrs = pl.MaxPoolAttrs(_tuple(kernel_size, nd),
                                    () if stride is None or stride == [] else _tuple(stride, nd),
                                    _tuple(padding, nd), _tuple(dilation, nd), bool(ceil_mode))
            return ctx.op(f"qnn.max_pool{nd}d", [v], attrs)
        return handler

    for nd, fn, cls in [(1, F.max_pool1d, nn.MaxPool1d), (2, F.max_pool2d, nn.MaxPool2d),
                        (3, F.max_pool3d, nn.MaxPool3d)]:
        h = max_pool(nd)
        function(fn)(h)
        module(cls)(lambda ctx, mod, x, _h=h: _h(ctx, x, mod.kernel_size, mod.stride,
                                                mod.padding, mod.dilation, mod.ceil_mode,
                                                mod.return_indices))
    module(nnq.MaxPool2d)(lambda ctx, mod, x: max_pool(2)(
        ctx, x, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode))

    def avg_pool(nd: int) -> Handler:
        def handler(ctx: Any, x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                    ceil_mode: bool = False, count_include_pad: bool = True,
                    divisor_override: Any = None) -> Value:
            v = ctx.value(x)
            if not is_quantized(v):
                raise ctx.unsupported(f"avg_pool{nd}d on a float tensor")
            attrs = pl.AvgPoolAttrs(_tuple(kernel_size, nd),
                                    () if stride is None or stride == [] else _tuple(stride, nd),
                                    _tuple(padding, nd), bool(ceil_mode), bool(count_include_pad),
                                    divisor_override)
            return ctx.op(f"qnn.avg_pool{nd}d", [v], attrs)
        return handler

    for nd, fn, cls in [(2, F.avg_pool2d, nn.AvgPool2d), (3, F.avg_pool3d, nn.AvgPool3d)]:
        h = avg_pool(nd)
        function(fn)(h)
        module(cls)(lambda ctx, mod, x, _h=h: _h(ctx, x, mod.kernel_size, mod.stride,
                                                mod.padding, mod.ceil_mode,
                                                mod.count_include_pad, mod.divisor_override))

    def adaptive(nd: int) -> Handler:
        def handler(ctx: Any, x: Any, output_size: Any) -> Value:
            v = ctx.value(x)
            size = _tuple(output_size, nd)
            if None in size:
                raise ctx.unsupported("adaptive pooling with None in output_size")
            if not is_quantized(v):
                if nd != 2:
                    raise ctx.unsupported(f"float adaptive_avg_pool{nd}d")
                return ctx.op("f.adaptive_avg_pool2d", [v], fo.AdaptivePoolAttrs(size))
            if nd == 1:  # PyTorch: adaptive_avg_pool2d on x.unsqueeze(-2), then squeeze(-2)
                from qcompiler.ops import shape as sh
                u = ctx.op("unsqueeze", [v], sh.UnsqueezeAttrs(-2))
                p = ctx.op("qnn.adaptive_avg_pool2d", [u], pl.AdaptivePoolAttrs((1,) + size))
                return ctx.op("squeeze", [p], sh.SqueezeAttrs((-2,)))
            return ctx.op(f"qnn.adaptive_avg_pool{nd}d", [v], pl.AdaptivePoolAttrs(size))
        return handler

    for nd, fn, cls in [(1, F.adaptive_avg_pool1d, nn.AdaptiveAvgPool1d),
                        (2, F.adaptive_avg_pool2d, nn.AdaptiveAvgPool2d),
                        (3, F.adaptive_avg_pool3d, nn.AdaptiveAvgPool3d)]:
        h = adaptive(nd)
        function(fn)(h)
        module(cls)(lambda ctx, mod, x, _h=h: _h(ctx, x, mod.output_size))

    def interpolate(ctx: Any, x: Any, size: Any = None, scale_factor: Any = None,
                    mode: str = "nearest", align_corners: Any = None,
                    recompute_scale_factor: Any = None, antialias: bool = False) -> Value:
        v = ctx.value(x)
        if antialias or recompute_scale_factor:
            raise ctx.unsupported("interpolate with antialias/recompute_scale_factor")
        nd = v.type.rank - 2
        sz = None if size is None else _tuple(size, nd)
        sf = None if scale_factor is None else tuple(
            float(s) for s in (scale_factor if isinstance(scale_factor, (list, tuple))
                               else [scale_factor] * nd))
        if not is_quantized(v):
            if nd != 2 or mode not in ("nearest", "bilinear"):
                raise ctx.unsupported(f"float interpolate mode {mode!r} on a rank-{nd + 2} "
                                      "tensor", ["nearest/bilinear on NCHW"])
            h, w = v.type.shape[2], v.type.shape[3]
            out = sz if sz is not None else (int(h * sf[0]), int(w * sf[1]))  # type: ignore
            return ctx.op("f.interpolate", [v], fo.InterpolateAttrs(
                out, mode, bool(align_corners), None if sf is None else (sf[0], sf[1])))
        if mode == "nearest":
            return ctx.op("qnn.upsample_nearest", [v], pl.UpsampleNearestAttrs(sz, sf))
        if mode == "bilinear":
            return ctx.op("qnn.upsample_bilinear", [v], pl.UpsampleBilinearAttrs(
                sz, sf, bool(align_corners)))
        raise ctx.unsupported(f"interpolate mode {mode!r} on a quantized tensor",
                              ["nearest", "bilinear"])

    function(F.interpolate, F.upsample)(interpolate)
    module(nn.Upsample)(lambda ctx, mod, x: interpolate(
        ctx, x, mod.size, mod.scale_factor, mod.mode, mod.align_corners))


EXTRA_REGISTRATIONS.append(_register_elementwise)
