"""Data layouts in the IR: `layout_transform` and the prepacked x86 conv `x86.conv2d_packed`.

The target-specific layouts the x86 int8 kernels read (codegen/x86/strategies.py) are explicit
in the IR, so the printer, parser, verifier and reference interpreter see them and every
layout pass is checked exactly (passes/prepack.py, passes/layout.py).

**Activation layouts** (4-D quantized tensors, per-tensor qparams, same dtype and qparams in
both forms):

    NCHW     [N, C, H, W]
    NCHW4c   [N, ceil(C/4), H, W, 4]:  packed[n, c // 4, h, w, c % 4] = x[n, c, h, w]

NCHW4c keeps the 4 channels of one position in one 32-bit word, the operand layout of
`vpdpbusd` (4 u8 x s8 products per int32 lane). Padding channels (C up to a multiple of 4)
hold the zero point (real 0). Element-wise ops of equal-shape operands with per-tensor
qparams (`qnn.add`, `qnn.relu`, ...) compute the same values in either layout.

**`layout_transform`** `(x) {src, dst, channels}`: NCHW <-> NCHW4c, exact data movement.

**`x86.conv2d_packed`** `(x, w_packed, corr, [bias], [residual]) {base, ...}`: the conv
`base` (`qnn.conv2d[_relu]`, `qnn.conv2d_add[_relu]`, groups = 1) with its weights packed
and its zero-point corrections precomputed (by the prepack pass), reading x in `x_layout`
and writing (and reading the residual) in `out_layout`:

    acc[n, o, p] = wrap32(dot - zw[o] * xsum + corr[o])
    dot  = sum_t x_t * w[o, t]          x padded with zx at the borders (t: C*KH*KW taps)
    xsum = sum_t x_t
    corr[o] = T * zx * zw[o] - zx * sum_t w[o, t]          (T = C*KH*KW)

which is the base conv's accumulator sum_t (x_t - zx)(w[o, t] - zw[o]) exactly when `corr`
is right (the reference computes it from the `corr` input, so a wrong constant shows up in
the interpreter). Then the base conv's epilogue (oneDNN or fbgemm, `conv.requant_path`) with
the scales of `w_qparams`. Weight layouts (`w_layout`; padding rows and channels are 0):

    OIHW16o4i  [OCp/16, ceil(C/4), KH, KW, 16, 4]   lanes = output channels ("nchwc" plan)
    OIHW4i     [OCp, ceil(C/4), KH, KW, 4]           lanes = output positions ("nchw" plan)

OCp >= O is the output channel count padded to the kernel's register tiles; `corr` has OCp
entries. Requantize multipliers are derived from the qparams in the types/attrs (numpy,
at compile time, in te_lib's epilogue helpers).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from qcompiler.errors import TypeInferenceError
from qcompiler.ir.registry import OpDef, OpSample, Sig, get_op, register_op
from qcompiler.ir.types import QParams, TensorType, f32, i8, i32, u8
from qcompiler.ops.conv import ConvAttrs, conv_accumulate, expand_spatial, requant_path
from qcompiler.reference import requant as rq

NCHW = "NCHW"
NCHW4C = "NCHW4c"
ACT_LAYOUTS = (NCHW, NCHW4C)
C_BLOCK = 4
"""Channels per packed word (NCHW4c)."""
W_LAYOUTS = ("OIHW16o4i", "OIHW4i")
PACKED_CONV_BASES = ("qnn.conv2d", "qnn.conv2d_relu", "qnn.conv2d_add", "qnn.conv2d_add_relu")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --- numpy layout helpers (the definitions; passes and tests use them) -------------------------


def packed_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """NCHW shape -> NCHW4c shape."""
    n, c, h, w = shape
    return (n, _cdiv(c, C_BLOCK), h, w, C_BLOCK)


def pack_nchw4c(x: np.ndarray, fill: int) -> np.ndarray:
    """[N, C, H, W] -> [N, ceil(C/4), H, W, 4]; padding channels hold `fill`."""
    n, c, h, w = x.shape
    cp = _cdiv(c, C_BLOCK) * C_BLOCK
    full = np.full((n, cp, h, w), fill, dtype=x.dtype)
    full[:, :c] = x
    return np.ascontiguousarray(full.reshape(n, cp // C_BLOCK, C_BLOCK, h, w)
                                .transpose(0, 1, 3, 4, 2))


def unpack_nchw4c(x: np.ndarray, channels: int) -> np.ndarray:
    """[N, ceil(C/4), H, W, 4] -> [N, C, H, W]."""
    n, cb, h, w, g = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(n, cb * g, h, w)[:, :channels])


def pack_weight(w: np.ndarray, w_layout: str, ocp: int) -> np.ndarray:
    """OIHW int8 -> `w_layout` (module doc) with OCp output rows, zero padded."""
    o, c, kh, kw = w.shape
    icb = _cdiv(c, C_BLOCK)
    full = np.zeros((ocp, icb * C_BLOCK, kh, kw), dtype=np.int8)
    full[:o, :c] = w
    if w_layout == "OIHW16o4i":
        packed = full.reshape(ocp // 16, 16, icb, C_BLOCK, kh, kw).transpose(0, 2, 4, 5, 1, 3)
    else:
        packed = full.reshape(ocp, icb, C_BLOCK, kh, kw).transpose(0, 1, 3, 4, 2)
    return np.ascontiguousarray(packed)


def unpack_weight(wp: np.ndarray, w_layout: str, o: int, c: int) -> np.ndarray:
    """`w_layout` -> OIHW [o, c, KH, KW] (drops the padding)."""
    if w_layout == "OIHW16o4i":
        ob, icb, kh, kw, lanes, g = wp.shape
        full = wp.transpose(0, 4, 1, 5, 2, 3).reshape(ob * lanes, icb * g, kh, kw)
    else:
        ocp, icb, kh, kw, g = wp.shape
        full = wp.transpose(0, 1, 4, 2, 3).reshape(ocp, icb * g, kh, kw)
    return np.ascontiguousarray(full[:o, :c])


def weight_corrections(w: np.ndarray, zx: int, zws: np.ndarray, ocp: int) -> np.ndarray:
    """corr[o] = T * zx * zw[o] - zx * sum_t w[o, t] as int32 [OCp] (padding rows: 0)."""
    taps = int(np.prod(w.shape[1:]))
    wsum = w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1)
    corr = np.zeros(ocp, dtype=np.int64)
    corr[: w.shape[0]] = taps * zx * zws.astype(np.int64) - zx * wsum
    return rq.wrap_int32(corr).astype(np.int32)


# --- layout_transform ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutTransformAttrs:
    src: str
    """NCHW or NCHW4c."""
    dst: str
    """NCHW or NCHW4c (the other one)."""
    channels: int
    """C of the NCHW form (NCHW4c pads it to a multiple of 4)."""


def _fill_value(t: TensorType) -> int:
    """Padding channels of NCHW4c hold the zero point (real 0), or 0 for plain tensors."""
    qp = t.qparams
    return 0 if qp is None or qp.axis is not None else int(qp.zp_value)


@register_op
class LayoutTransform(OpDef):
    """NCHW <-> NCHW4c (module doc): packed[n, c // 4, h, w, c % 4] = x[n, c, h, w], padding
    channels = the zero point. Exact data movement; dtype and qparams unchanged."""

    name = "layout_transform"
    Attrs = LayoutTransformAttrs
    num_inputs = 1
    schedule_kind = "injective"
    torch_counterparts = ("torch.Tensor.reshape", "torch.Tensor.permute")

    def infer_type(self, attrs: LayoutTransformAttrs, *in_types: TensorType) -> TensorType:
        (x,) = in_types
        err = f"{self.name}: "
        if {attrs.src, attrs.dst} != set(ACT_LAYOUTS):
            raise TypeInferenceError(err + f"supported: src/dst NCHW -> NCHW4c or NCHW4c -> NCHW,"
                                     f" got {attrs.src} -> {attrs.dst}")
        if x.qparams is not None and x.qparams.axis is not None:
            raise TypeInferenceError(err + "per-channel tensors are not supported (the channel"
                                     " axis moves); supported: per-tensor or unquantized")
        c = attrs.channels
        if attrs.src == NCHW:
            if x.rank != 4 or x.shape[1] != c:
                raise TypeInferenceError(err + f"NCHW input with {c} channels expected, got"
                                         f" {list(x.shape)}")
            return x.with_shape(packed_shape(x.shape))
        if x.rank != 5 or x.shape[4] != C_BLOCK or x.shape[1] != _cdiv(c, C_BLOCK):
            raise TypeInferenceError(err + f"NCHW4c input [N, {_cdiv(c, C_BLOCK)}, H, W, 4]"
                                     f" expected for {c} channels, got {list(x.shape)}")
        n, _, h, w, _ = x.shape
        return x.with_shape((n, c, h, w))

    def reference(self, sig: Sig, *arrays: np.ndarray) -> np.ndarray:
        (x,) = arrays
        attrs: LayoutTransformAttrs = sig.attrs
        if attrs.src == NCHW:
            return pack_nchw4c(x, _fill_value(sig.in_types[0]))
        return unpack_nchw4c(x, attrs.channels)

    def lower(self, sig: Sig, *tensors: Any) -> Any:
        from qcompiler.lowering.tvm_compat import te

        (x,) = tensors
        attrs: LayoutTransformAttrs = sig.attrs
        out = sig.out
        c = attrs.channels
        if attrs.src == NCHW:
            fill = te.const(_fill_value(sig.in_types[0]), x.dtype)

            def packed(n: Any, cb: Any, h: Any, w: Any, g: Any) -> Any:
                ch = cb * C_BLOCK + g
                if c % C_BLOCK == 0:
                    return x[n, ch, h, w]
                return te.if_then_else(ch < c, x[n, te.min(ch, c - 1), h, w], fill)

            return te.compute(out.shape, packed, name="layout_transform")
        return te.compute(out.shape, lambda n, ch, h, w: x[n, ch // C_BLOCK, h, w, ch % C_BLOCK],
                          name="layout_transform")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, shape, zp in (("c8", (1, 8, 3, 5), 7), ("c3-odd", (2, 3, 4, 2), 255),
                                 ("c1", (1, 1, 1, 3), 0)):
            x = rng.integers(0, 256, shape).astype(np.uint8)
            t = TensorType(shape, u8, QParams.per_tensor(0.1, zp))
            yield OpSample(LayoutTransformAttrs(NCHW, NCHW4C, shape[1]), (t,), (x,),
                           f"pack-{label}")
            xp = pack_nchw4c(x, zp)
            yield OpSample(LayoutTransformAttrs(NCHW4C, NCHW, shape[1]),
                           (t.with_shape(xp.shape),), (xp,), f"unpack-{label}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        """torch.nn.functional.pad + reshape + permute on the stored integers."""
        import torch

        (x,) = sample.arrays
        attrs: LayoutTransformAttrs = sample.attrs
        t = torch.from_numpy(x.copy())
        if attrs.src == NCHW:
            n, c, h, w = t.shape
            cp = _cdiv(c, C_BLOCK) * C_BLOCK
            fill = _fill_value(sample.in_types[0])
            t = torch.nn.functional.pad(t.to(torch.int32), (0, 0, 0, 0, 0, cp - c), value=fill)
            t = t.reshape(n, cp // C_BLOCK, C_BLOCK, h, w).permute(0, 1, 3, 4, 2)
            return t.contiguous().numpy().astype(x.dtype)
        n, cb, h, w, g = t.shape
        return t.permute(0, 1, 4, 2, 3).reshape(n, cb * g, h, w)[:, :attrs.channels].numpy()


# --- x86.conv2d_packed --------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedConvAttrs:
    base: str
    """The conv this computes: qnn.conv2d, qnn.conv2d_relu, qnn.conv2d_add, qnn.conv2d_add_relu."""
    out_qparams: QParams
    w_qparams: QParams
    """The original weight's qparams (scales for the epilogue, zero points zw)."""
    channels: int
    """Input channels C."""
    out_channels: int
    """Output channels O."""
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    w_layout: str
    """OIHW16o4i or OIHW4i (module doc)."""
    x_layout: str = NCHW
    out_layout: str = NCHW
    """Layout of the output and of the residual input (conv2d_add)."""


def _act_shape(nchw: Sequence[int], layout: str) -> tuple[int, ...]:
    return tuple(nchw) if layout == NCHW else packed_shape(nchw)


def packed_conv_base(attrs: PackedConvAttrs) -> Any:
    """The registered base conv OpDef."""
    return get_op(attrs.base)


def base_conv_sig(sig: Sig) -> Sig:
    """The Sig of the base conv on NCHW tensors with OIHW weights (what `lower` and the x86
    strategy's epilogue see)."""
    a: PackedConvAttrs = sig.attrs
    xt = sig.in_types[0]
    n = xt.shape[0]
    h, w = xt.shape[2], xt.shape[3]
    out = sig.out
    oh, ow = out.shape[2], out.shape[3]
    base = packed_conv_base(a)
    x4 = xt.with_shape((n, a.channels, h, w))
    wt = TensorType((a.out_channels, a.channels, *a.kernel), i8, a.w_qparams)
    types = [x4, wt]
    rest = list(sig.in_types[3:])
    if base.fused_add:
        e = rest.pop()
        res = e.with_shape((n, a.out_channels, oh, ow))
        types += rest + [res]
    else:
        types += rest
    conv = ConvAttrs(a.out_qparams, a.stride, a.padding, a.dilation, 1)
    return Sig(tuple(types), (out.with_shape((n, a.out_channels, oh, ow)),), conv)


def split_packed_conv_inputs(attrs: PackedConvAttrs, items: Sequence[Any]) -> tuple[Any, ...]:
    """(x, w_packed, corr, bias or None, residual or None)."""
    x, w, corr, rest = items[0], items[1], items[2], list(items[3:])
    other = rest.pop() if packed_conv_base(attrs).fused_add else None
    return x, w, corr, (rest[0] if rest else None), other


@register_op
class PackedConv2d(OpDef):
    """A 2-D conv with prepacked weights and precomputed zero-point corrections, in the x86
    kernels' layouts (module doc has the exact formula)."""

    name = "x86.conv2d_packed"
    Attrs = PackedConvAttrs
    num_inputs = (3, 4, 5)
    schedule_kind = "conv"
    torch_counterparts = ("torch.ops.quantized.conv2d", "torch.ops.quantized.conv2d_add")

    def _err(self, msg: str) -> TypeInferenceError:
        return TypeInferenceError(f"{self.name}: {msg}")

    def infer_type(self, attrs: PackedConvAttrs, *in_types: TensorType) -> TensorType:
        if attrs.base not in PACKED_CONV_BASES:
            raise self._err(f"base {attrs.base!r} is not supported; supported:"
                            f" {', '.join(PACKED_CONV_BASES)}")
        if attrs.w_layout not in W_LAYOUTS or attrs.x_layout not in ACT_LAYOUTS \
                or attrs.out_layout not in ACT_LAYOUTS:
            raise self._err(f"layouts: w in {W_LAYOUTS}, x/out in {ACT_LAYOUTS}; got"
                            f" {attrs.w_layout}, {attrs.x_layout}, {attrs.out_layout}")
        fused_add = packed_conv_base(attrs).fused_add
        if len(in_types) - 3 not in ((1, 2) if fused_add else (0, 1)):
            raise self._err(f"{attrs.base} takes (x, w, corr, [bias]"
                            f"{', residual' if fused_add else ''}), got {len(in_types)} inputs")
        x, w, corr, bias, other = split_packed_conv_inputs(attrs, in_types)
        c, o = attrs.channels, attrs.out_channels
        if x.dtype != u8 or x.qparams is None or x.qparams.axis is not None:
            raise self._err(f"input must be a per-tensor quantized u8 tensor, got {x}")
        if x.rank != (4 if attrs.x_layout == NCHW else 5) or x.shape[1] != \
                _act_shape((1, c, 1, 1), attrs.x_layout)[1]:
            raise self._err(f"input shape {list(x.shape)} is not {attrs.x_layout} with {c}"
                            " channels")
        n, h, wd = x.shape[0], x.shape[2], x.shape[3]
        kh, kw = attrs.kernel
        icb = _cdiv(c, C_BLOCK)
        if w.dtype != i8 or w.rank not in (5, 6):
            raise self._err(f"packed weight must be i8 in {attrs.w_layout}, got {w}")
        ocp = w.shape[0] * (w.shape[4] if attrs.w_layout == "OIHW16o4i" else 1)
        want = ((ocp // 16, icb, kh, kw, 16, C_BLOCK) if attrs.w_layout == "OIHW16o4i"
                else (ocp, icb, kh, kw, C_BLOCK))
        if w.shape != want or ocp < o:
            raise self._err(f"packed weight shape {list(w.shape)} does not match"
                            f" {attrs.w_layout} for O={o}, C={c}, kernel {kh}x{kw}")
        if corr.dtype != i32 or corr.shape != (ocp,):
            raise self._err(f"corr must be i32 [{ocp}], got {corr}")
        if bias is not None and (bias.dtype != f32 or bias.shape != (o,)):
            raise self._err(f"bias must be f32 [{o}], got {bias}")
        oh, ow = (
            (size + 2 * p - dl * (k - 1) - 1) // s + 1
            for size, k, s, p, dl in zip((h, wd), attrs.kernel, attrs.stride, attrs.padding,
                                         attrs.dilation))
        if oh < 1 or ow < 1:
            raise self._err(f"input {h}x{wd} is smaller than the dilated kernel")
        out = TensorType(_act_shape((n, o, oh, ow), attrs.out_layout), u8, attrs.out_qparams)
        if other is not None and (other.shape != out.shape or other.dtype != u8
                                  or other.qparams is None):
            raise self._err(f"residual must be u8 {list(out.shape)} ({attrs.out_layout}),"
                            f" got {other}")
        # the base conv's own rules (qparams, symmetric weights for conv2d_add, ...)
        base_sig = base_conv_sig(Sig(tuple(in_types), (out,), attrs))
        packed_conv_base(attrs).infer_type(base_sig.attrs, *base_sig.in_types)
        return out

    def reference(self, sig: Sig, *arrays: np.ndarray) -> np.ndarray:
        a: PackedConvAttrs = sig.attrs
        x, wp, corr, bias, other = split_packed_conv_inputs(a, arrays)
        xq, wq, oq = sig.in_types[0].qparams, a.w_qparams, a.out_qparams
        assert xq is not None
        if a.x_layout == NCHW4C:
            x = unpack_nchw4c(x, a.channels)
        if other is not None and a.out_layout == NCHW4C:
            other = unpack_nchw4c(other, a.out_channels)
        w = unpack_weight(wp, a.w_layout, a.out_channels, a.channels)
        zx = int(xq.zp_value)
        o = a.out_channels
        zws = np.broadcast_to(wq.zero_points_array(), (o,)).astype(np.int64)
        # the kernel's accumulator: raw dot with zx at the borders, minus zw * xsum, plus corr
        ph, pw = a.padding
        xpad = np.pad(x, [(0, 0), (0, 0), (ph, ph), (pw, pw)], constant_values=zx)
        nz = np.zeros(o, dtype=np.int64)
        dot = conv_accumulate(xpad, 0, w, nz, a.stride, (0, 0), a.dilation, 1).astype(np.int64)
        acc = dot + corr[:o].astype(np.int64).reshape(1, o, 1, 1)
        if np.any(zws):
            ones = np.ones((1, *w.shape[1:]), dtype=np.int8)
            xsum = conv_accumulate(xpad, 0, ones, nz[:1], a.stride, (0, 0), a.dilation, 1)
            acc -= zws.reshape(1, o, 1, 1) * xsum.astype(np.int64)
        acc = rq.wrap_int32(acc)
        base = packed_conv_base(a)
        w_scales = np.broadcast_to(wq.scales_array(), (o,))
        if requant_path(wq, 1, base.fused_add) == "onednn":
            residual = None
            if other is not None:
                eq = sig.in_types[-1].qparams
                assert eq is not None
                residual = (other, eq.scale_value, eq.zp_value)
            y = rq.onednn_requantize(acc, xq.scale_value, w_scales, oq.scale_value, oq.zp_value,
                                     bias=bias, relu=base.relu, channel_axis=1,
                                     residual=residual)
        else:
            y = rq.fbgemm_requantize(acc, xq.scale_value, w_scales, oq.scale_value, oq.zp_value,
                                     bias=bias, per_tensor_weight=wq.axis is None,
                                     relu=base.relu, channel_axis=1)
        return pack_nchw4c(y, oq.zp_value) if a.out_layout == NCHW4C else y

    def lower(self, sig: Sig, *tensors: Any) -> Any:
        """Generic TE: views that unpack x, the weights and the residual, the base conv's own
        `lower()` (which needs no corrections: it subtracts the zero points itself), and a
        view that packs the output. The x86 strategy computes it in the packed layouts."""
        from qcompiler.lowering.tvm_compat import te

        a: PackedConvAttrs = sig.attrs
        x, wp, _corr, bias, other = split_packed_conv_inputs(a, tensors)
        c, o = a.channels, a.out_channels
        if a.x_layout == NCHW4C:
            xv = x
            x = te.compute((x.shape[0], c, x.shape[2], x.shape[3]),
                           lambda n, ch, h, w: xv[n, ch // C_BLOCK, h, w, ch % C_BLOCK],
                           name="x86_conv_unpack_x")
        kh, kw = a.kernel
        if a.w_layout == "OIHW16o4i":
            def w_at(oo: Any, ch: Any, i: Any, j: Any) -> Any:
                return wp[oo // 16, ch // C_BLOCK, i, j, oo % 16, ch % C_BLOCK]
        else:
            def w_at(oo: Any, ch: Any, i: Any, j: Any) -> Any:
                return wp[oo, ch // C_BLOCK, i, j, ch % C_BLOCK]
        w = te.compute((o, c, kh, kw), w_at, name="x86_conv_unpack_w")
        if other is not None and a.out_layout == NCHW4C:
            ov = other
            other = te.compute((ov.shape[0], o, ov.shape[2], ov.shape[3]),
                               lambda n, ch, h, ww: ov[n, ch // C_BLOCK, h, ww, ch % C_BLOCK],
                               name="x86_conv_unpack_residual")
        bsig = base_conv_sig(sig)
        ins = [x, w] + ([bias] if bias is not None else []) + ([other] if other is not None
                                                                else [])
        y = packed_conv_base(a).lower(bsig, *ins)
        if a.out_layout == NCHW:
            return y
        # NOTE: a reduction over the 4 lanes, not a plain gather: the generic reduction rule
        # would `reverse_compute_at` a gather of 4 channels under the conv's fused (n, o, h)
        # loop, where it reads channels not computed yet (wrong values, measured)
        zo = te.const(int(a.out_qparams.zp_value), "int32")
        r = te.reduce_axis((0, C_BLOCK), name="r")

        def lane(n: Any, cb: Any, h: Any, ww: Any, g: Any) -> Any:
            ch = cb * C_BLOCK + r
            v = y[n, te.min(ch, o - 1), h, ww].astype("int32")
            if o % C_BLOCK:
                v = te.if_then_else(ch < o, v, zo)
            return te.sum(te.if_then_else(r == g, v, te.const(0, "int32")), axis=r)

        lanes = te.compute(sig.out.shape, lane, name="x86_conv_pack_out")
        return te.compute(sig.out.shape, lambda *i: lanes[i].astype("uint8"),
                          name="x86_conv2d_packed")

    # --- test hooks: the base convs' own samples, prepacked ---------------------------------

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        picks = {"qnn.conv2d": (0, 1, 2, 3, 4, 5, 6), "qnn.conv2d_relu": (0, 1),
                 "qnn.conv2d_add": (0, 1, 6), "qnn.conv2d_add_relu": (0,)}
        layouts = ((NCHW, NCHW, "OIHW16o4i"), (NCHW4C, NCHW4C, "OIHW4i"),
                   (NCHW4C, NCHW, "OIHW16o4i"), (NCHW, NCHW4C, "OIHW4i"))
        k = 0
        for base, idx in picks.items():
            base_samples = [s for s in get_op(base).samples(rng) if s.attrs.groups == 1]
            for i in idx:
                if i < len(base_samples):
                    yield prepack_sample(base, base_samples[i], *layouts[k % len(layouts)])
                    k += 1

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        """The base conv's torch_reference on the unpacked sample, packed like the output."""
        base_sample: OpSample = sample.extra["base_sample"]
        base = get_op(sample.attrs.base)
        bsig = Sig(base_sample.in_types,
                   base.infer_types(base_sample.attrs, base_sample.in_types), base_sample.attrs)
        y = base.torch_reference(base_sample, bsig)
        a: PackedConvAttrs = sample.attrs
        return pack_nchw4c(y, a.out_qparams.zp_value) if a.out_layout == NCHW4C else y


def packed_conv_attrs(base: str, conv: ConvAttrs, x: TensorType, w: TensorType, w_layout: str,
                      x_layout: str = NCHW, out_layout: str = NCHW) -> PackedConvAttrs:
    """PackedConvAttrs for the 2-D conv `base` with attrs `conv`, input x and weight w (NCHW /
    OIHW types)."""
    assert w.qparams is not None
    return PackedConvAttrs(
        base, conv.out_qparams, w.qparams, x.shape[1], w.shape[0],
        (w.shape[2], w.shape[3]), expand_spatial(conv.stride, 2), expand_spatial(conv.padding, 2),
        expand_spatial(conv.dilation, 2), w_layout, x_layout, out_layout)


def _sample_ocp(s: OpSample, w_layout: str) -> int:
    """OCp of the x86 VNNI plan for this conv (so the x86 strategy applies to the sample)."""
    from qcompiler.codegen.x86_plan import VNNI_SHAPE, plan_conv

    a: ConvAttrs = s.attrs
    plan = plan_conv(s.in_types[0].shape, s.in_types[1].shape, expand_spatial(a.stride, 2),
                     expand_spatial(a.padding, 2), expand_spatial(a.dilation, 2), VNNI_SHAPE,
                     "nchwc" if w_layout == "OIHW16o4i" else "nchw")
    return plan.ocp


def prepack_sample(base: str, s: OpSample, x_layout: str, out_layout: str,
                   w_layout: str) -> OpSample:
    """A base conv sample as an x86.conv2d_packed sample (weights padded to 16 rows)."""
    x, w = s.arrays[0], s.arrays[1]
    xt, wt = s.in_types[0], s.in_types[1]
    assert xt.qparams is not None and wt.qparams is not None
    o = w.shape[0]
    ocp = _sample_ocp(s, w_layout)
    attrs = packed_conv_attrs(base, s.attrs, xt, wt, w_layout, x_layout, out_layout)
    zws = np.broadcast_to(wt.qparams.zero_points_array(), (o,))
    wp = pack_weight(w, w_layout, ocp)
    corr = weight_corrections(w, int(xt.qparams.zp_value), zws, ocp)
    types = [xt, TensorType(wp.shape, i8), TensorType(corr.shape, i32)]
    arrays = [x, wp, corr]
    if x_layout == NCHW4C:
        types[0] = xt.with_shape(packed_shape(xt.shape))
        arrays[0] = pack_nchw4c(x, xt.qparams.zp_value)
    for t, arr in zip(s.in_types[2:], s.arrays[2:]):
        if t.qparams is not None and out_layout == NCHW4C:   # the residual
            arr = pack_nchw4c(arr, t.qparams.zp_value)
            t = t.with_shape(arr.shape)
        types.append(t)
        arrays.append(arr)
    return replace(s, attrs=attrs, in_types=tuple(types), arrays=tuple(arrays),
                   label=f"{base}-{s.label}-{x_layout}-{out_layout}-{w_layout}",
                   extra={**s.extra, "base_sample": s})


__all__ = [
    "ACT_LAYOUTS",
    "C_BLOCK",
    "NCHW",
    "NCHW4C",
    "PACKED_CONV_BASES",
    "W_LAYOUTS",
    "LayoutTransform",
    "LayoutTransformAttrs",
    "PackedConv2d",
    "PackedConvAttrs",
    "base_conv_sig",
    "pack_nchw4c",
    "pack_weight",
    "packed_conv_attrs",
    "packed_shape",
    "prepack_sample",
    "split_packed_conv_inputs",
    "unpack_nchw4c",
    "unpack_weight",
    "weight_corrections",
]
