"""The conversion table from ATen / quantized_decomposed ops (torch.export, PT2E) to IR ops.

The one place to extend the torch.export frontend: register a handler with
`@aten(torch.ops.aten.relu.default, ...)` (an OpOverload, or an OpOverloadPacket to cover every
overload). A handler receives the ImportContext and the node's arguments (FX nodes already
replaced by IR values, tensors for parameters/buffers/constants, Python objects otherwise) and
returns the IR value(s) the node produces.

Float ATen ops become the float `f.*` ops and the data-movement ops of ops/shape.py, one to one.
The quantized_decomposed ops become IR `quantize` / `dequantize`; a dequantize of a constant
(a folded, already-quantized weight) becomes a quantized constant (its storage and per-tensor or
per-channel qparams) followed by `dequantize`. Turning `dequantize -> float op -> quantize` into
integer ops is the fuse-qdq pass's job (passes/fuse_qdq.py), not the importer's.

Numerics of the mapping (PyTorch 2.13):
- `dequantize_per_tensor` is `(q.to(f32) - zp) * f32(scale)`, and `dequantize_per_channel`
  rounds `(q - zp) * scale` once to f32: both are exactly the IR `dequantize`.
- `quantize_per_tensor` is `clamp(round(x * f32(1.0 / scale)) + zp)` (NaN -> 0), which is not
  torch.quantize_per_tensor's `rint(fma(x, 1f / scale, zp))` near .5 ties: it becomes the IR
  `quantize` with `rounding="decomposed"` (exactly that formula, for u8/i8). When fuse-qdq
  turns a `dequantize -> op -> quantize` into an integer op, the op rounds as PyTorch's
  quantized kernel does (the documented 1 LSB bound of that pass). Quantizing a *constant* is
  evaluated with PyTorch's own op at import time, so quantized constants are exact.
- A quant_min/quant_max narrower than the dtype's range (reduce_range) becomes a quantize
  followed by `qnn.clamp` at the real values of those bounds.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

from qcompiler.ir.graph import Value
from qcompiler.ir.types import DType, QParams, TensorType, f32, i8, i32, u8

Handler = Callable[..., Any]

ATEN: dict[Any, Handler] = {}
"""OpOverload / OpOverloadPacket / Python callable -> handler."""
_LOADED = False


def aten(*targets: Any) -> Callable[[Handler], Handler]:
    """Register a handler for ATen ops (overloads or whole overload packets)."""
    def deco(fn: Handler) -> Handler:
        for t in targets:
            if t is not None:
                ATEN[t] = fn
        return fn
    return deco


def target_name(target: Any) -> str:
    """`aten.conv2d.default`, `quantized_decomposed.quantize_per_tensor.default`, `getitem`."""
    if type(target).__name__ in ("OpOverload", "OpOverloadPacket"):
        return str(target)
    return str(getattr(target, "__name__", target))


def supported_names() -> list[str]:
    _ensure_loaded()
    return sorted({target_name(t) for t in ATEN})


def lookup(ctx: Any, node: Any) -> Handler:
    """The handler for a call_function node, or an UnsupportedError naming the op."""
    _ensure_loaded()
    h = ATEN.get(node.target)
    if h is None:
        h = ATEN.get(getattr(node.target, "overloadpacket", None))
    if h is None:
        raise ctx.unsupported(f"unsupported op {target_name(node.target)}", supported_names())
    return h


def _ensure_loaded() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        _register_all()


# --- helpers ---------------------------------------------------------------------------------

_QDTYPES: dict[str, DType] = {"torch.uint8": u8, "torch.int8": i8, "torch.int32": i32}


def qdtype(ctx: Any, torch_dtype: Any) -> DType:
    d = _QDTYPES.get(str(torch_dtype))
    if d is None:
        raise ctx.unsupported(f"quantized storage dtype {torch_dtype} is not supported",
                              list(_QDTYPES))
    return d


def number(ctx: Any, x: Any, what: str) -> Any:
    """A Python number from a number or a constant one-element tensor."""
    if isinstance(x, Value):
        raise ctx.unsupported(f"{what} is computed at run time (dynamic quantization); only"
                              " constant qparams are supported")
    if hasattr(x, "item"):
        if x.numel() != 1:
            raise ctx.unsupported(f"{what} must be a single number, got a tensor of shape"
                                  f" {list(x.shape)}")
        return x.item()
    return x


def is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "is_quantized")


def ints(x: Any, n: int | None = None) -> tuple[int, ...]:
    """An int or a list of ints as a tuple (of length n when given, broadcasting one value)."""
    vals = (int(x),) if isinstance(x, int) else tuple(int(v) for v in x)
    if n is not None and len(vals) == 1:
        vals = vals * n
    return vals


def per_axis_qparams(scales: Any, zero_points: Any, axis: int) -> QParams:
    import torch

    s = scales.detach().double().reshape(-1).numpy()
    if zero_points is None:
        z = [0] * len(s)
    else:
        z = [int(v) for v in zero_points.detach().reshape(-1).to(torch.int64).tolist()]
    scheme = "symmetric" if all(v == 0 for v in z) else "affine"
    return QParams.per_axis(s, z, int(axis), scheme)


def quantized_const(ctx: Any, storage: Any, dtype: DType, qp: QParams, name: str | None = None,
                    ) -> Value:
    """An IR constant of quantized storage (a plain integer torch tensor) with qparams, named
    `name` (default: the node's name + "_q", for the storage a dequantize reads)."""
    from qcompiler.frontends.torch_fx import torch_storage

    data = torch_storage(storage)
    if data.dtype != dtype.np:
        raise ctx.unsupported(f"quantized constant has storage dtype {data.dtype}, the"
                              f" dequantize says {dtype.storage}")
    ty = TensorType(tuple(data.shape), dtype, qp)
    return ctx.b.const(data, ty, name or f"{ctx.node.name}_q", loc=ctx.loc)


def narrow_range(ctx: Any, q: Value, qmin: int, qmax: int) -> Value:
    """Clamp a quantize's result to [qmin, qmax] when that is narrower than its dtype."""
    from qcompiler.ops.activation import ClampAttrs, clamp_bound

    ty = q.type
    qp = ty.qparams
    assert qp is not None
    if (qmin, qmax) == (ty.dtype.qmin, ty.dtype.qmax):
        return q
    if not ty.dtype.qmin <= qmin <= qmax <= ty.dtype.qmax or qp.axis is not None:
        raise ctx.unsupported(f"quant range [{qmin}, {qmax}] for {ty.dtype} with {qp}",
                              ["the dtype's full range", "a per-tensor sub-range"])
    lo = float((qmin - qp.zp_value) * qp.scale_value) if qmin > ty.dtype.qmin else None
    hi = float((qmax - qp.zp_value) * qp.scale_value) if qmax < ty.dtype.qmax else None
    for bound, want in ((lo, qmin), (hi, qmax)):
        if bound is not None and int(clamp_bound(bound, qp, ty.dtype)) != want:
            raise ctx.unsupported(f"quant range [{qmin}, {qmax}] cannot be expressed as a clamp"
                                  f" with {qp} (the bound {bound!r} does not quantize back to"
                                  f" {want})")
    return ctx.op("qnn.clamp", [q], ClampAttrs(lo, hi))


def f_op(ctx: Any, op: str, inputs: Sequence[Any], attrs: Any = None) -> Value:
    return ctx.op(op, [ctx.value(x) for x in inputs], attrs)


def transposed_source(v: Value) -> Value | None:
    """The input of a 2-D `transpose(0, 1)` / `permute(1, 0)` node producing `v`, if any."""
    p = v.producer
    if p is None or v.type.rank != 2:
        return None
    if p.op == "transpose" and {p.attrs.dim0 % 2, p.attrs.dim1 % 2} == {0, 1}:
        return p.inputs[0]
    if p.op == "permute" and tuple(d % 2 for d in p.attrs.dims) == (1, 0):
        return p.inputs[0]
    return None


class MaxPoolIndices:
    """The indices output of max_pool2d_with_indices: importable only if nothing uses it."""

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name


def _register_all() -> None:
    import torch

    from qcompiler.ops import float_ops as F
    from qcompiler.ops import shape as S
    from qcompiler.ops.pool import MaxPoolAttrs
    from qcompiler.ops.quant import QuantizeAttrs

    a = torch.ops.aten
    qd = torch.ops.quantized_decomposed

    # --- quantize / dequantize -------------------------------------------------------------
    def _quantize(ctx: Any, x: Any, scale: Any, zero_point: Any, qmin: Any, qmax: Any,
                  dtype: Any) -> Value:
        s = float(number(ctx, scale, "the scale"))
        z = int(number(ctx, zero_point, "the zero point"))
        lo, hi = int(number(ctx, qmin, "quant_min")), int(number(ctx, qmax, "quant_max"))
        d = qdtype(ctx, dtype)
        qp = QParams.per_tensor(s, z)
        if is_tensor(x):  # a constant: evaluate with PyTorch's own op, exactly
            t = qd.quantize_per_tensor.default(x.detach().float(), s, z, lo, hi, dtype)
            return quantized_const(ctx, t, d, qp, ctx.node.name)
        attrs = QuantizeAttrs(d, qp, "decomposed" if d.bits == 8 else "fbgemm")
        if (lo, hi) == (d.qmin, d.qmax):
            return ctx.op("quantize", [ctx.value(x)], attrs)
        # the full-range quantize gets a derived name; the clamp is what PyTorch's node computes
        q = ctx.b.op("quantize", [ctx.value(x)], attrs, loc=ctx.loc,
                     name=f"{ctx.node.name}_full_range")
        return narrow_range(ctx, q, lo, hi)

    aten(qd.quantize_per_tensor)(_quantize)

    def _dequantize(ctx: Any, x: Any, scale: Any, zero_point: Any, qmin: Any, qmax: Any,
                    dtype: Any, *, out_dtype: Any = None) -> Value:
        if out_dtype is not None and out_dtype != torch.float32:
            raise ctx.unsupported(f"dequantize to {out_dtype}", ["torch.float32"])
        s = float(number(ctx, scale, "the scale"))
        z = int(number(ctx, zero_point, "the zero point"))
        d = qdtype(ctx, dtype)
        qp = QParams.per_tensor(s, z)
        if is_tensor(x):
            return ctx.op("dequantize", [quantized_const(ctx, x, d, qp)])
        return ctx.op("dequantize", [_checked_q(ctx, x, d, qp)])

    aten(qd.dequantize_per_tensor)(_dequantize)

    def _quantize_per_channel(ctx: Any, x: Any, scales: Any, zero_points: Any, axis: int,
                              qmin: int, qmax: int, dtype: Any) -> Value:
        d = qdtype(ctx, dtype)
        if isinstance(scales, Value) or isinstance(zero_points, Value):
            number(ctx, scales if isinstance(scales, Value) else zero_points, "per-channel qparams")
        qp = per_axis_qparams(scales, zero_points, axis)
        if is_tensor(x):
            t = qd.quantize_per_channel.default(x.detach().float(), scales, zero_points, axis,
                                                qmin, qmax, dtype)
            return quantized_const(ctx, t, d, qp, ctx.node.name)
        if (qmin, qmax) != (d.qmin, d.qmax):
            raise ctx.unsupported(f"per-channel quantize of an activation to [{qmin}, {qmax}]",
                                  [f"the full {d} range"])
        return ctx.op("quantize", [ctx.value(x)], QuantizeAttrs(d, qp))

    aten(qd.quantize_per_channel)(_quantize_per_channel)

    def _dequantize_per_channel(ctx: Any, x: Any, scales: Any, zero_points: Any, axis: int,
                                qmin: int, qmax: int, dtype: Any, *, out_dtype: Any = None,
                                ) -> Value:
        if out_dtype is not None and out_dtype != torch.float32:
            raise ctx.unsupported(f"dequantize to {out_dtype}", ["torch.float32"])
        if isinstance(scales, Value) or isinstance(zero_points, Value):
            number(ctx, scales if isinstance(scales, Value) else zero_points, "per-channel qparams")
        d = qdtype(ctx, dtype)
        rank = x.type.rank if isinstance(x, Value) else x.dim()
        qp = per_axis_qparams(scales, zero_points, int(axis) % max(rank, 1))
        if is_tensor(x):
            return ctx.op("dequantize", [quantized_const(ctx, x, d, qp)])
        return ctx.op("dequantize", [_checked_q(ctx, x, d, qp)])

    aten(qd.dequantize_per_channel)(_dequantize_per_channel)

    # --- convolution, linear, matmul -------------------------------------------------------
    def _conv2d_attrs(ctx: Any, stride: Any, padding: Any, dilation: Any, groups: int,
                      x: Any) -> F.Conv2dAttrs:
        if isinstance(padding, str):
            if padding != "valid":
                raise ctx.unsupported(f"conv2d padding={padding!r}",
                                      ["integer padding", "'valid'"])
            padding = 0
        return F.Conv2dAttrs(ints(stride, 2), ints(padding, 2), ints(dilation, 2), int(groups))

    @aten(a.conv2d)
    def _conv2d(ctx: Any, x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0,
                dilation: Any = 1, groups: int = 1) -> Value:
        attrs = _conv2d_attrs(ctx, stride, padding, dilation, groups, x)
        return f_op(ctx, "f.conv2d", [x, w] + ([b] if b is not None else []), attrs)

    @aten(a.convolution)
    def _convolution(ctx: Any, x: Any, w: Any, b: Any, stride: Any, padding: Any,
                     dilation: Any, transposed: bool, output_padding: Any, groups: int) -> Value:
        nd = len(ints(stride))
        if transposed or nd != 2:
            kind = "transposed " if transposed else ""
            raise ctx.unsupported(f"{kind}{nd}-d convolution in float", ["2-d convolution"])
        attrs = _conv2d_attrs(ctx, stride, padding, dilation, groups, x)
        return f_op(ctx, "f.conv2d", [x, w] + ([b] if b is not None else []), attrs)

    @aten(a.linear)
    def _linear(ctx: Any, x: Any, w: Any, b: Any = None) -> Value:
        return f_op(ctx, "f.linear", [x, w] + ([b] if b is not None else []))

    @aten(a.addmm)
    def _addmm(ctx: Any, bias: Any, x: Any, m: Any, *, beta: Any = 1, alpha: Any = 1) -> Value:
        if beta != 1 or alpha != 1:
            raise ctx.unsupported(f"addmm with beta={beta}, alpha={alpha}", ["beta=1, alpha=1"])
        mv = ctx.value(m)
        w = transposed_source(mv)
        bv = ctx.value(bias)
        if w is not None and bv.type.rank == 1:  # addmm(b, x, w.t()) is linear(x, w, b)
            return ctx.op("f.linear", [ctx.value(x), w, bv])
        return ctx.op("f.add", [ctx.op("f.matmul", [ctx.value(x), mv]), bv])

    @aten(a.mm, a.matmul, a.bmm)
    def _matmul(ctx: Any, x: Any, y: Any) -> Value:
        return f_op(ctx, "f.matmul", [x, y])

    # --- elementwise -------------------------------------------------------------------------
    def _binary(op: str, scalar_op: str) -> Handler:
        def handler(ctx: Any, x: Any, y: Any, *, alpha: Any = 1) -> Value:
            if alpha != 1:
                raise ctx.unsupported(f"{target_name(ctx.node.target)} with alpha={alpha}",
                                      ["alpha=1"])
            if isinstance(y, (int, float)) and not isinstance(y, bool):
                return ctx.op(scalar_op, [ctx.value(x)], F.ScalarAttrs(y))
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                return ctx.op(scalar_op, [ctx.value(y)], F.ScalarAttrs(x, reverse=True))
            return f_op(ctx, op, [x, y])
        return handler

    aten(a.add.Tensor, a.add.Scalar, a.add_.Tensor)(_binary("f.add", "f.add_scalar"))
    aten(a.sub.Tensor, a.sub.Scalar)(_binary("f.sub", "f.sub_scalar"))
    aten(a.mul.Tensor, a.mul.Scalar, a.mul_.Tensor)(_binary("f.mul", "f.mul_scalar"))
    aten(a.div.Tensor, a.div.Scalar)(_binary("f.div", "f.div_scalar"))

    def _unary(op: str) -> Handler:
        def handler(ctx: Any, x: Any) -> Value:
            return f_op(ctx, op, [x])
        return handler

    for packets, op in (((a.relu, a.relu_), "f.relu"), ((a.sigmoid,), "f.sigmoid"),
                        ((a.tanh,), "f.tanh"), ((a.hardswish, a.hardswish_), "f.hardswish"),
                        ((a.hardsigmoid,), "f.hardsigmoid"), ((a.silu, a.silu_), "f.silu"),
                        ((a.neg,), "f.neg"), ((a.abs,), "f.abs"), ((a.exp,), "f.exp"),
                        ((a.sqrt,), "f.sqrt"), ((a.rsqrt,), "f.rsqrt")):
        aten(*packets)(_unary(op))

    @aten(a.hardtanh, a.hardtanh_)
    def _hardtanh(ctx: Any, x: Any, min_val: float = -1.0, max_val: float = 1.0) -> Value:
        return f_op(ctx, "f.clamp", [x], F.ClampAttrs(float(min_val), float(max_val)))

    @aten(a.relu6)
    def _relu6(ctx: Any, x: Any) -> Value:
        return f_op(ctx, "f.clamp", [x], F.ClampAttrs(0.0, 6.0))

    @aten(a.clamp.default, a.clamp_.default)
    def _clamp(ctx: Any, x: Any, min: Any = None, max: Any = None) -> Value:
        lo = None if min is None else float(min)
        hi = None if max is None else float(max)
        return f_op(ctx, "f.clamp", [x], F.ClampAttrs(lo, hi))

    @aten(a.leaky_relu, a.leaky_relu_)
    def _leaky_relu(ctx: Any, x: Any, negative_slope: float = 0.01) -> Value:
        return f_op(ctx, "f.leaky_relu", [x], F.LeakyReluAttrs(float(negative_slope)))

    @aten(a.gelu)
    def _gelu(ctx: Any, x: Any, *, approximate: str = "none") -> Value:
        return f_op(ctx, "f.gelu", [x], F.GeluAttrs(approximate))

    @aten(a.softmax.int, a._softmax.default)
    def _softmax(ctx: Any, x: Any, dim: int, *rest: Any, **kw: Any) -> Value:
        return f_op(ctx, "f.softmax", [x], F.DimAttrs(int(dim)))

    # --- pooling and reductions --------------------------------------------------------------
    def _max_pool_attrs(kernel: Any, stride: Any, padding: Any, dilation: Any,
                        ceil_mode: bool) -> MaxPoolAttrs:
        return MaxPoolAttrs(ints(kernel, 2), ints(stride, 2) if len(ints(stride)) else (),
                            ints(padding, 2), ints(dilation, 2), bool(ceil_mode))

    @aten(a.max_pool2d.default)
    def _max_pool2d(ctx: Any, x: Any, kernel_size: Any, stride: Any = (), padding: Any = 0,
                    dilation: Any = 1, ceil_mode: bool = False) -> Value:
        attrs = _max_pool_attrs(kernel_size, stride, padding, dilation, ceil_mode)
        return f_op(ctx, "f.max_pool2d", [x], attrs)

    @aten(a.max_pool2d_with_indices.default)
    def _max_pool2d_with_indices(ctx: Any, x: Any, kernel_size: Any, stride: Any = (),
                                 padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False,
                                 ) -> tuple[Value, MaxPoolIndices]:
        attrs = _max_pool_attrs(kernel_size, stride, padding, dilation, ceil_mode)
        return f_op(ctx, "f.max_pool2d", [x], attrs), MaxPoolIndices(ctx.node.name)

    @aten(operator.getitem)
    def _getitem(ctx: Any, x: Any, index: Any) -> Any:
        if not isinstance(x, (tuple, list)):
            raise ctx.unsupported("indexing a tensor with getitem", ["tuple outputs of ops"])
        item = x[index]
        if isinstance(item, MaxPoolIndices):
            raise ctx.unsupported(f"the indices output of max_pool2d_with_indices"
                                  f" ({item.node_name})", ["its values output"])
        return item

    @aten(a.adaptive_avg_pool2d.default, a._adaptive_avg_pool2d.default)
    def _adaptive_avg_pool2d(ctx: Any, x: Any, output_size: Any) -> Value:
        return f_op(ctx, "f.adaptive_avg_pool2d", [x], F.AdaptivePoolAttrs(ints(output_size, 2)))

    @aten(a.mean.dim)
    def _mean(ctx: Any, x: Any, dims: Any, keepdim: bool = False, *,
              dtype: Any = None) -> Value:
        if dtype is not None:
            raise ctx.unsupported(f"mean with dtype={dtype}", ["dtype=None"])
        dims_t = None if dims is None or len(ints(dims)) == 0 else ints(dims)
        return f_op(ctx, "f.mean", [x], F.ReduceAttrs(dims_t, bool(keepdim)))

    # --- data movement -----------------------------------------------------------------------
    @aten(a.flatten.using_ints)
    def _flatten(ctx: Any, x: Any, start_dim: int = 0, end_dim: int = -1) -> Value:
        return f_op(ctx, "flatten", [x], S.FlattenAttrs(int(start_dim), int(end_dim)))

    @aten(a.view.default, a.reshape.default, a._unsafe_view.default)
    def _reshape(ctx: Any, x: Any, shape: Any) -> Value:
        return f_op(ctx, "reshape", [x], S.ReshapeAttrs(ints(shape)))

    @aten(a.permute.default)
    def _permute(ctx: Any, x: Any, dims: Any) -> Value:
        return f_op(ctx, "permute", [x], S.PermuteAttrs(ints(dims)))

    @aten(a.transpose.int)
    def _transpose(ctx: Any, x: Any, dim0: int, dim1: int) -> Value:
        return f_op(ctx, "transpose", [x], S.TransposeAttrs(int(dim0), int(dim1)))

    @aten(a.t.default)
    def _t(ctx: Any, x: Any) -> Value:
        v = ctx.value(x)
        if v.type.rank < 2:
            return v
        return ctx.op("transpose", [v], S.TransposeAttrs(0, 1))

    @aten(a.squeeze.dim, a.squeeze.dims, a.squeeze.default)
    def _squeeze(ctx: Any, x: Any, dims: Any = None) -> Value:
        return f_op(ctx, "squeeze", [x], S.SqueezeAttrs(None if dims is None else ints(dims)))

    @aten(a.unsqueeze.default)
    def _unsqueeze(ctx: Any, x: Any, dim: int) -> Value:
        return f_op(ctx, "unsqueeze", [x], S.UnsqueezeAttrs(int(dim)))

    @aten(a.cat.default, a.concat.default)
    def _cat(ctx: Any, xs: Any, dim: int = 0) -> Value:
        return f_op(ctx, "f.cat", list(xs), F.DimAttrs(int(dim)))

    # --- identities (inference) --------------------------------------------------------------
    @aten(a.dropout.default, a.feature_dropout.default, a.alpha_dropout.default)
    def _dropout(ctx: Any, x: Any, p: float, train: bool) -> Any:
        if train:
            raise ctx.unsupported("dropout in training mode", ["train=False (model.eval())"])
        return ctx.value(x)

    @aten(a.native_dropout.default)
    def _native_dropout(ctx: Any, x: Any, p: float, train: bool | None) -> Any:
        if train:
            raise ctx.unsupported("dropout in training mode", ["train=False (model.eval())"])
        return ctx.value(x), MaxPoolIndices(ctx.node.name)

    @aten(a.clone.default, a.alias.default, a.contiguous.default, a.detach.default,
          a.lift_fresh_copy.default)
    def _identity(ctx: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        memory_format = kwargs.get("memory_format")
        if memory_format is not None and memory_format not in (torch.contiguous_format,
                                                               torch.preserve_format):
            raise ctx.unsupported(f"{memory_format}", ["torch.contiguous_format"])
        return ctx.value(x)

    @aten(a.to.dtype, a._to_copy.default)
    def _to(ctx: Any, x: Any, dtype: Any = None, *args: Any, **kwargs: Any) -> Any:
        dtype = kwargs.get("dtype", dtype)
        v = ctx.value(x)
        if dtype is None or (str(dtype) == "torch.float32" and v.type.dtype is f32):
            return v
        from qcompiler.frontends.torch_fx import _SHORT_FOR_NP, torch_to_numpy_dtype

        return ctx.op("f.to", [v], F.ToAttrs(_SHORT_FOR_NP[torch_to_numpy_dtype(dtype)]))



def _checked_q(ctx: Any, x: Any, dtype: DType, qp: QParams) -> Value:
    """The quantized IR value a dequantize reads; its type must carry the same qparams."""
    v = ctx.value(x)
    t = v.type
    if t.qparams is None:
        raise ctx.unsupported(
            f"dequantize of {t}, which is not the result of a quantize in this graph (a raw"
            " integer tensor given qparams only by the dequantize)",
            ["dequantize of quantize results", "dequantize of constants"])
    if t.dtype is not dtype or not _same_qparams(t.qparams, qp):
        raise ctx.unsupported(
            f"dequantize with {dtype} {qp} of a value quantized as {t.dtype} {t.qparams}",
            ["dequantize with the qparams of the matching quantize"])
    return v


def _same_qparams(a: QParams, b: QParams) -> bool:
    return (a.axis == b.axis and a.zero_point == b.zero_point
            and all(math.isclose(x, y, rel_tol=1e-12) for x, y in zip(a.scale, b.scale))
            and len(a.scale) == len(b.scale))
