"""x86 lowering strategies: conv2d and linear in the packed layouts of the x86 dot intrinsics.

Registered for the x86 schedule families (lowering/strategy.py); each builds the op's TE from
the node's own inputs, in the layout its family's intrinsic reads (codegen/x86/intrin.py), and
returns None ("use `lower()`") for what it does not cover. The schedule rules in
`conv2d_int8.py` / `dense_int8.py` tensorize it; unscheduled (or scheduled by the generic
rules) the TE is still exact.

**Integer semantics.** The reference accumulator is acc = wrap32(sum_t (x_t - zx)(w_t - zw[o]))
over the taps t (padding taps have x_t = zx). The kernel computes it from the raw u8 x s8 dot
product, which the VNNI instruction takes directly:

    acc = dot - zw[o] * xsum + corr[o]
    dot  = sum_t x_t * w_t              vpdpbusd (or exact int16 pmaddwd), int32
    xsum = sum_t x_t                    only when some zw[o] != 0 (fbgemm-path weights)
    corr = T * zx * zw[o] - zx * sum_t w_t          numpy, at compile time (T = number of taps)

Every term is an exact integer; the strategy applies only when no partial sum can leave int32
(|each term| <= T * 255 * 128, so T <= 16447), where int32 arithmetic equals the reference's
mod-2**32 result (and TIR's int32 `+`, which LLVM may assume does not overflow, never
overflows). Larger reductions fall back to `lower()` (int64 accumulation). Padding taps hold zx
in the packed activations (their terms cancel, as in the reference); padding channels (IC up to
a multiple of 4) hold 0 in both operands and are not counted in T.

Then the epilogue is the generic lowering's: `te_lib.onednn_requantize` or
`te_lib.fbgemm_requantize`, chosen exactly as `ops/conv.py` / `ops/linear.py` choose it, applied
to a view of the accumulator whose channel index is one axis (NCHW, or NHWC when the lanes are
channels, then transposed back to NCHW). It runs on the padded grid (whole register tiles);
the node's output is the valid part.

**Layouts** (L = intrinsic lanes, G = reduction steps per activation word: VNNI 16 / 4 bytes,
pmaddwd 8 or 16 / 2 int16 halves). Activations are packed *inside the kernel* (stage `pack`)
into int32 words of G consecutive input channels (zx in padding taps, 0 in padding channels;
1x1 convs sample the strided positions here), built with vectorized loads, shifts and ors:

    conv, "nchwc" (lanes = output channels; best for 3x3 convs with many channels)
        weights [OCp/L][ICp/G][KH][KW][L][G]; activations [N][ICp/G][Hp][Wp]
        dot [N][OCp/L][OH][OWp][L]; requantize on NHWC, transposed back to NCHW
    conv, "nchw" (lanes = output positions; best for 1x1 convs and the stem)
        weights [OCp][ICp/G][KH][KW][G] (one group broadcast); activations
        [N][ICp/G][Hp][S][Wp/S] (S = W stride: polyphase, so strided taps are contiguous)
        dot [N][OCp][OH][OWp]; requantize on NCHW, stored as it is
        folded (`ConvPlan.fold`, C <= 3 and KW > 1: the stem): taps t = kw*C + c of a kernel
        row fill the groups; stage `fold` builds [N][ceil(C*KW/G)][Hp][OWp] from the
        polyphase words (contiguous loads, shifts, ors); weights [OCp][ceil(C*KW/G)][KH][1][G]
    linear: weights [Np/L][Kp/G][L][G]; activations [Mp][Kp/G]; dot [Mp][Np/L][L]

`conv_cost` picks the conv layout (codegen/x86_plan.py, shared with the prepack pass).

**Prepacked convs** (`x86.conv2d_packed`, opt_level 3: passes/prepack.py, passes/layout.py):
the weights and `corr` are IR constants in the layouts above; x, the residual and the output
may be NCHW4c ([N][C/4][H][W][4] bytes). An NCHW4c x is not packed into words: the `pack`
stage copies its bytes with the zx borders into [...][G] and the byte intrinsics
(intrin_u8.py) read it; an NCHW4c output is written from the requantized grid by the `out`
stage. `conv2d_packed` and `conv2d_prepacked` share `_conv_te`.

Block names the rules look for (`CONV_*`, `DENSE_*`) and the register tile chosen here travel
as block annotations on the dot block (`ANN_*`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qcompiler.codegen.x86.intrin import DotIntrin, intrinsic_for
from qcompiler.codegen.x86.intrin_u8 import U8_TWIN
from qcompiler.codegen.x86_plan import (
    MAX_TAPS,
    ConvPlan,
    choose_conv_plan,
    choose_tile,
    conv_corrections,
    conv_cost,
    max_accumulators,
    pack_conv_weight,
    plan_conv,
)
from qcompiler.ir.registry import OpDef, Sig
from qcompiler.lowering import te_lib
from qcompiler.lowering.strategy import register_strategy
from qcompiler.lowering.tvm_compat import PrimExpr, Tensor, int_shape, te, tirx
from qcompiler.target import TargetPreset

X86_FAMILIES = ("x86-vnni", "x86-avx512", "x86-avx2")

# block names
CONV_PACK = "x86_conv_pack"
CONV_FOLD = "x86_conv_fold"
CONV_XSUM = "x86_conv_xsum"
CONV_DOT = "x86_conv_dot"
CONV_ACC = "x86_conv_acc"
CONV_RESIDUAL = "x86_conv_residual"
CONV_REQUANT = "x86_conv_requant"
CONV_OUT = "x86_conv_out"
DENSE_PACK = "x86_dense_pack"
DENSE_XSUM = "x86_dense_xsum"
DENSE_DOT = "x86_dense_dot"
DENSE_ACC = "x86_dense_acc"
DENSE_REQUANT = "x86_dense_requant"
DENSE_OUT = "x86_dense_out"

# annotations on the dot block
ANN_INTRIN = "qc.x86_intrin"
"""Name of the intrinsic the layout is for (intrin.DotIntrin.name)."""
ANN_TILE_M = "qc.x86_tile_m"
"""Register tile along the spatial axis: output columns (conv: OW) or rows (dense: M)."""
ANN_POS_OUTER = "qc.x86_pos_outer"
"""1: tile loops over positions outside the channel tiles (all weights fit in L1)."""
POS_OUTER_MAX_WEIGHT_BYTES = 48 * 1024
"""Packed weights up to this size stay in L1 (48 KiB on Zen 4/5, Ice Lake and later)."""
ANN_FLAT = "qc.x86_flat"
"""1 for a flat 1x1 conv (`ConvPlan.flat`): the dot's positions are OH * OW flattened."""
ANN_OUT_PACKED = "qc.x86_out_packed"
"""1 when the conv writes NCHW4c (the rule computes that stage per tile only when a tile holds
whole groups of 4 channels)."""
ANN_PACK_BYTES = "qc.x86_pack_bytes"
"""1 on a conv packing stage that copies NCHW4c bytes ([...][G] u8) instead of building words."""
ANN_TILE_N = "qc.x86_tile_n"
"""Register tile along the output channels: vectors of L lanes (lanes = channels) or single
channels (lanes = positions, where the spatial tile is a multiple of L)."""

def x86_strategy(*ops: str) -> Any:
    """Register a strategy for `ops` on every x86 schedule family."""
    return register_strategy(ops, X86_FAMILIES)


# --- shared pieces -------------------------------------------------------------------------------


def _int_vector(values: np.ndarray, name: str) -> Any:
    """c -> int32 value: an immediate when all values are equal, else a constant-tensor load."""
    vals = np.asarray(values, dtype=np.int64).reshape(-1)
    if vals.size and np.all(vals == vals[0]):
        imm = te.const(int(vals[0]), "int32")
        return lambda c: imm
    t = te_lib.constant(vals.astype(np.int32), name)
    return lambda c: t[c]


def _pad_to(values: np.ndarray, n: int) -> np.ndarray:
    """Per-channel values extended to `n` channels by repeating the last one (padding
    channels compute values nobody reads; repeating keeps them finite and ordinary)."""
    v = np.asarray(values).reshape(-1)
    n = int(n)
    return v if v.size == n else np.concatenate([v, np.repeat(v[-1:], n - v.size)])


def _clamped(t: Tensor | None, n: int, name: str) -> Tensor | None:
    """A 1-D tensor read at min(c, n - 1): the bias over the padded channels."""
    if t is None or int_shape(t)[0] == n:
        return t
    last = int_shape(t)[0] - 1
    return te.compute((n,), lambda c: t[te.min(c, last)], name=name)


def _x_u8(v: PrimExpr, dtype: str) -> PrimExpr:
    """An activation as the unsigned value the intrinsics multiply, as int32: u8 as it is,
    int8 shifted by +128 (its zero point shifts with it, `_x_shift`)."""
    if dtype == "int8":
        return v.astype("int32") + te.const(128, "int32")
    return v.astype("int32")


def _x_shift(dtype: str) -> int:
    return 128 if dtype == "int8" else 0


def _pack_word(values: Sequence[PrimExpr], intrin: DotIntrin) -> PrimExpr:
    """G unsigned int32 values (< 2**bits) -> one packed activation word (value g at bit
    bits * g): the layout the intrinsics read (intrin.py)."""
    word = values[0]
    for g in range(1, len(values)):
        word = word | (values[g] << te.const(intrin.x_bits * g, "int32"))
    return word


def _x_step(word: PrimExpr, g: Any, intrin: DotIntrin) -> PrimExpr:
    """Step g of a packed activation word, exactly as the intrinsic descriptions read it."""
    mask = (1 << intrin.x_bits) - 1
    return tirx.bitwise_and(tirx.shift_right(word, g * intrin.x_bits), mask)


def requantize_epilogue(
    op: OpDef,
    sig: Sig,
    acc: Tensor,
    bias: Tensor | None,
    residual: Tensor | None,
    channel_axis: int,
    name: str,
) -> Tensor:
    """The op's own epilogue on `acc` (NOTE: the same choice `lower()` makes in ops/conv.py and
    ops/linear.py; the rounding itself is te_lib's, shared with `lower()`)."""
    from qcompiler.ops.conv import requant_path

    xq, wq, oq = sig.in_types[0].qparams, sig.in_types[1].qparams, sig.out.qparams
    assert xq is not None and wq is not None and oq is not None
    n_out = sig.in_types[1].shape[0]
    w_scales = _pad_to(np.broadcast_to(wq.scales_array(), (n_out,)), acc.shape[channel_axis])
    if op.name.startswith("qnn.conv"):
        fused_add = bool(getattr(op, "fused_add", False))
        relu = bool(getattr(op, "relu", False))
        if requant_path(wq, sig.attrs.groups, fused_add) == "onednn":
            res = None
            if residual is not None:
                rq = sig.in_types[-1].qparams
                assert rq is not None
                res = (residual, rq.scale_value, rq.zp_value)
            return te_lib.onednn_requantize(
                acc, xq.scale_value, w_scales, oq.scale_value, oq.zp_value, bias=bias,
                relu=relu, channel_axis=channel_axis, residual=res, name=name)
        return te_lib.fbgemm_requantize(
            acc, xq.scale_value, w_scales, oq.scale_value, oq.zp_value, bias=bias,
            per_tensor_weight=wq.axis is None, relu=relu, channel_axis=channel_axis, name=name)
    post_op = getattr(op, "post_op", None)
    if getattr(op, "engine", "fbgemm") == "fbgemm":
        return te_lib.fbgemm_requantize(
            acc, xq.scale_value, w_scales, oq.scale_value, oq.zp_value, bias=bias,
            per_tensor_weight=wq.axis is None, relu=post_op == "relu",
            channel_axis=channel_axis, name=name)
    slope = sig.attrs.negative_slope if post_op == "leaky_relu" else 0.0
    return te_lib.onednn_requantize(
        acc, xq.scale_value, w_scales, oq.scale_value, oq.zp_value, bias=bias,
        channel_axis=channel_axis, reinvert_w_scales=True, post_op=post_op,
        negative_slope=slope, out_dtype=sig.out.dtype, name=name)


# --- conv2d --------------------------------------------------------------------------------------


def _conv_inputs(op: OpDef, inputs: Sequence[Tensor]) -> tuple[Tensor, Tensor, Any, Any]:
    x, w, rest = inputs[0], inputs[1], list(inputs[2:])
    other = rest.pop() if getattr(op, "fused_add", False) else None
    bias = rest[0] if rest else None
    return x, w, bias, other


@x86_strategy("qnn.conv2d", "qnn.conv2d_relu", "qnn.conv2d_add", "qnn.conv2d_add_relu")
def conv2d_packed(op: OpDef, sig: Sig, inputs: Sequence[Tensor], target: TargetPreset) -> Any:
    """2-D conv (groups = 1) with a constant weight, in a packed layout (module doc).

    The layout with the lower `conv_cost` wins: lanes = positions ("nchw": no transpose in
    the epilogue, but OW padded to whole vectors: 1x1 convs, the stem, wide rows) or lanes =
    channels ("nchwc": small spatial extents with many channels). The weights are packed and
    the corrections computed here, in numpy; at opt_level 3 the prepack pass does that in
    the IR instead (`conv2d_prepacked`).
    """
    from qcompiler.ops.conv import expand_spatial

    attrs = sig.attrs
    if attrs.groups != 1:
        return None  # TODO(#7): depthwise and grouped convs use the generic lowering
    x, w, bias, other = _conv_inputs(op, inputs)
    w_data = te_lib.constant_value(w)
    if w_data is None:
        return None
    xt, wt = sig.in_types[0], sig.in_types[1]
    geometry = (xt.shape, wt.shape, expand_spatial(attrs.stride, 2),
                expand_spatial(attrs.padding, 2), expand_spatial(attrs.dilation, 2))
    intrins = {layout: intrinsic_for(target, weight_broadcast=layout == "nchw")
               for layout in ("nchwc", "nchw")}
    plan = choose_conv_plan(*geometry, dict(intrins))
    if plan is None:
        return None
    intrin = intrins[plan.layout]
    assert intrin is not None
    xq, wq = xt.qparams, wt.qparams
    assert xq is not None and wq is not None
    zx = int(xq.zp_value) + _x_shift(str(x.dtype))
    zws = np.broadcast_to(wq.zero_points_array(), (plan.o,)).astype(np.int64)
    corr_zw = conv_corrections(w_data, zx, zws, plan.taps)
    if corr_zw is None:
        return None
    corr_v, zw_v = corr_zw
    w_packed = te_lib.constant(pack_conv_weight(w_data, plan, intrin.w_dtype), "x86_conv_weight")
    corr = _int_vector(_pad_to(corr_v, plan.ocp), "x86_conv_corr")
    return _conv_te(op, sig, plan, intrin, ConvIO(x, bias, other), w_packed, corr, zw_v, zx)


@x86_strategy("x86.conv2d_packed")
def conv2d_prepacked(op: OpDef, sig: Sig, inputs: Sequence[Tensor], target: TargetPreset) -> Any:
    """`x86.conv2d_packed` (ops/layout.py): the weights and corrections are IR constants
    (prepack pass), read as they are; x, the residual and the output in NCHW or NCHW4c.

    The plan is recomputed from the weight layout (the pass used the same `plan_conv`); a
    constant that does not fit it (another OCp) falls back to the generic `lower()`. NCHW4c
    input needs VNNI (its byte-reading intrinsics, intrin_u8.py): on other targets None.
    A folded plan (the stem) repacks the OIHW4i constant into its own layout here, in numpy;
    with NCHW4c input (or a weight that is not a constant) it does not fold.
    """
    from qcompiler.ops.layout import (
        NCHW4C,
        base_conv_sig,
        packed_conv_base,
        split_packed_conv_inputs,
        unpack_weight,
    )

    a = sig.attrs
    layout = "nchwc" if a.w_layout == "OIHW16o4i" else "nchw"
    intrin = intrinsic_for(target, weight_broadcast=layout == "nchw")
    if intrin is None or intrin.kgroup != 4 or intrin.w_dtype != "int8":
        return None
    x, w, corr_t, bias, other = split_packed_conv_inputs(a, inputs)
    bsig = base_conv_sig(sig)
    xs, ws = bsig.in_types[0].shape, bsig.in_types[1].shape
    w_data = te_lib.constant_value(w)
    # a folded plan reads its own weight layout (repacked here); NCHW4c x is read by the byte
    # intrinsics, which have no `fold` stage
    fold = None if a.x_layout != NCHW4C and w_data is not None else False
    plan = plan_conv(xs, ws, a.stride, a.padding, a.dilation, intrin, layout, fold=fold)
    if int_shape(corr_t)[0] != plan.ocp or plan.taps > MAX_TAPS:
        return None
    if plan.fold:
        w_oihw = unpack_weight(np.asarray(w_data), a.w_layout, plan.o, plan.c)
        w = te_lib.constant(pack_conv_weight(w_oihw, plan, intrin.w_dtype), "x86_conv_weight")
    if a.x_layout == NCHW4C:
        intrin = U8_TWIN.get(intrin)
        if intrin is None:
            return None
    xq = bsig.in_types[0].qparams
    assert xq is not None
    zws = np.broadcast_to(a.w_qparams.zero_points_array(), (plan.o,)).astype(np.int64)
    corr_data = te_lib.constant_value(corr_t)
    if corr_data is not None and np.all(corr_data == corr_data[0]):
        corr = _int_vector(corr_data, "x86_conv_corr")
    else:
        def corr(c: Any) -> Any:
            return corr_t[c]
    io = ConvIO(x, bias, other, a.x_layout == NCHW4C, a.out_layout == NCHW4C)
    return _conv_te(packed_conv_base(a), bsig, plan, intrin, io, w, corr, zws,
                    int(xq.zp_value))


@dataclass(frozen=True)
class ConvIO:
    """The activation-side tensors of a packed conv and their layouts (ops/layout.py)."""

    x: Tensor
    bias: Tensor | None
    other: Tensor | None
    x_packed: bool = False
    """x is NCHW4c [N][C/4][H][W][4] (else NCHW)."""
    out_packed: bool = False
    """The output (and the residual `other`) are NCHW4c."""


def _conv_te(op: OpDef, sig: Sig, plan: ConvPlan, intrin: DotIntrin, io: ConvIO,
             w_packed: Tensor, corr: Any, zw_v: np.ndarray, zx: int) -> Any:
    """The conv's TE on `plan` (module doc): `pack` (x -> words [N][ICp/G][Hp][(phase)][Wp],
    or for NCHW4c x bytes [...][G] read by the byte intrinsics: a copy with the borders),
    `xsum` (only with weight zero points), `dot` (the tensorizable reduction), `acc` (view:
    dot + corrections), `residual` (view of conv2d_add's extra input), `requant` (te_lib
    epilogue), `out` (the node's NCHW or NCHW4c output, when the grid was padded or
    transposed). `op`/`sig` are the base conv's (NCHW types)."""
    x, bias, other = io.x, io.bias, io.other
    N, C, H, W = plan.n, plan.c, plan.h, plan.w
    L, G, S = plan.lanes, plan.kgroup, plan.phases
    sh, sw = plan.stride
    ph, pw = plan.pad
    dh, dw = plan.dil
    hp, wq_ = plan.packed_hw

    # --- pack: NCHW -> words [N][ICp/G][Hp][(S)][Wp/S] of G channels; zx in padding taps, 0 in
    # padding channels; vectorizable along the last axis (contiguous loads, shifts, ors).
    # NCHW4c x: bytes [...][G], a copy of whole rows (no shifts) ---
    def source(hh: Any, col: Any) -> tuple[Any, Any]:
        if plan.prestride:
            return hh * sh - ph, col * sw - pw
        return hh - ph, col - pw

    def pack_value(nn: Any, cb: Any, hh: Any, col: Any) -> Any:
        ih, iw = source(hh, col)
        inside = te.all(ih >= 0, ih < H, iw >= 0, iw < W)
        vals = []
        for g in range(G):
            ch = cb * G + g
            v = te.if_then_else(inside, _x_u8(x[nn, te.min(ch, C - 1), ih, iw], str(x.dtype)),
                                te.const(zx, "int32"))
            if C % G:
                v = te.if_then_else(ch < C, v, te.const(0, "int32"))
            vals.append(v)
        return _pack_word(vals, intrin)

    def pack_byte(nn: Any, cb: Any, hh: Any, col: Any, g: Any) -> Any:
        ih, iw = source(hh, col)
        inside = te.all(ih >= 0, ih < H, iw >= 0, iw < W)
        v = te.if_then_else(inside, x[nn, cb, te.max(te.min(ih, H - 1), 0),
                                      te.max(te.min(iw, W - 1), 0), g],
                            te.const(zx, "uint8"))
        if C % G:  # padding channels hold 0 (their weights are 0; xsum must not see them)
            v = te.if_then_else(cb * G + g < C, v, te.const(0, "uint8"))
        return v

    ann_pack = {ANN_PACK_BYTES: 1} if io.x_packed else None
    if plan.flat:  # [N][ICp/G][OH * OW]
        if io.x_packed:
            xp = te.compute((N, plan.icb, plan.owp, G),
                            lambda nn, cb, p, g: pack_byte(nn, cb, p // plan.ow, p % plan.ow, g),
                            name=CONV_PACK, attrs=ann_pack)
        else:
            xp = te.compute((N, plan.icb, plan.owp),
                            lambda nn, cb, p: pack_value(nn, cb, p // plan.ow, p % plan.ow),
                            name=CONV_PACK)
    elif plan.layout == "nchw":
        if io.x_packed:
            xp = te.compute((N, plan.icb, hp, S, wq_, G),
                            lambda nn, cb, hh, s, q, g: pack_byte(nn, cb, hh, q * S + s, g),
                            name=CONV_PACK, attrs=ann_pack)
        else:
            xp = te.compute((N, plan.icb, hp, S, wq_),
                            lambda nn, cb, hh, s, q: pack_value(nn, cb, hh, q * S + s),
                            name=CONV_PACK)
    elif io.x_packed:
        xp = te.compute((N, plan.icb, hp, wq_, G), pack_byte, name=CONV_PACK, attrs=ann_pack)
    else:
        xp = te.compute((N, plan.icb, hp, wq_), pack_value, name=CONV_PACK)
    if plan.fold:
        xp = _fold_taps(plan, intrin, xp)
    dsh, dsw = plan.dot_stride

    def x_at(*idx: Any) -> Any:
        """Step g (the last index) of the packed activation at the other indices."""
        if io.x_packed:
            return xp[idx].astype("int32")
        return _x_step(xp[idx[:-1]], idx[-1], intrin)

    def x_tap(nn: Any, ic: Any, hh: Any, ww: Any, kh: Any, kw: Any, g: Any) -> Any:
        if plan.flat:  # ww is the flat position; hh, kh, kw are 0
            return x_at(nn, ic, ww, g)
        row = hh * dsh + kh * dh
        if plan.fold:  # one word per output column; kw is 0
            return x_at(nn, ic, row, ww, g)
        if plan.layout == "nchw":
            col = kw * dw  # position ww*dsw + col = (ww + col // S) * S + col % S
            return x_at(nn, ic, row, col % S, ww + col // S, g)
        return x_at(nn, ic, row, ww * dsw + kw * dw, g)

    # --- dot: sum over (kh, kw, icb, g) of x * w, int32 ---
    rkh = te.reduce_axis((0, plan.kh), name="rkh")
    rkw = te.reduce_axis((0, plan.dot_kw), name="rkw")
    ric = te.reduce_axis((0, plan.dot_icb), name="ric")
    rg = te.reduce_axis((0, G), name="rg")
    axes = [rkh, rkw, ric, rg]
    w_bytes = (plan.ocp * plan.dot_icb * G * plan.kh * plan.dot_kw
               * (2 if intrin.w_dtype == "int16" else 1))
    ann = {ANN_INTRIN: intrin.name, ANN_TILE_M: plan.ow_t, ANN_TILE_N: plan.oc_t,
           ANN_FLAT: int(plan.flat), ANN_POS_OUTER: int(w_bytes <= POS_OUTER_MAX_WEIGHT_BYTES),
           ANN_OUT_PACKED: int(io.out_packed)}
    if plan.flat:  # [N][OCp][OH * OW], no kh / kw axes
        axes = [ric, rg]

        def dot_flat(nn: Any, o: Any, p: Any) -> Any:
            xv = x_tap(nn, ric, 0, p, 0, 0, rg)
            return te.sum(xv * w_packed[o, ric, 0, 0, rg].astype("int32"), axis=axes)

        dot = te.compute((N, plan.ocp, plan.owp), dot_flat, name=CONV_DOT, attrs=ann)
    elif plan.layout == "nchw":  # [N][OCp][OH][OWp]
        def dot_body(nn: Any, o: Any, hh: Any, ww: Any) -> Any:
            xv = x_tap(nn, ric, hh, ww, rkh, rkw, rg)
            return te.sum(xv * w_packed[o, ric, rkh, rkw, rg].astype("int32"), axis=axes)

        dot = te.compute((N, plan.ocp, plan.oh, plan.owp), dot_body, name=CONV_DOT, attrs=ann)
    else:  # [N][OCp/L][OH][OWp][L]
        def dot_body_c(nn: Any, ob: Any, hh: Any, ww: Any, lane: Any) -> Any:
            xv = x_tap(nn, ric, hh, ww, rkh, rkw, rg)
            wv = w_packed[ob, ric, rkh, rkw, lane, rg]
            return te.sum(xv * wv.astype("int32"), axis=axes)

        dot = te.compute((N, plan.ocp // L, plan.oh, plan.owp, L), dot_body_c, name=CONV_DOT,
                         attrs=ann)

    # --- xsum: sum of the taps' activations (for the weight zero points) ---
    xsum = None
    if np.any(zw_v) and plan.flat:
        sic = te.reduce_axis((0, plan.icb), name="sic")
        sg = te.reduce_axis((0, G), name="sg")
        xsum = te.compute((N, plan.owp),
                          lambda nn, p: te.sum(x_tap(nn, sic, 0, p, 0, 0, sg), axis=[sic, sg]),
                          name=CONV_XSUM)
    elif np.any(zw_v):
        skh = te.reduce_axis((0, plan.kh), name="skh")
        skw = te.reduce_axis((0, plan.dot_kw), name="skw")
        sic = te.reduce_axis((0, plan.dot_icb), name="sic")
        sg = te.reduce_axis((0, G), name="sg")
        xsum = te.compute(
            (N, plan.oh, plan.owp),
            lambda nn, hh, ww: te.sum(x_tap(nn, sic, hh, ww, skh, skw, sg),
                                      axis=[skh, skw, sic, sg]),
            name=CONV_XSUM)
    ocp = plan.ocp
    zw = _int_vector(_pad_to(zw_v, ocp), "x86_conv_w_zero_point")

    def dot_at(nn: Any, o: Any, hh: Any, ww: Any) -> Any:
        if plan.flat:
            return dot[nn, o, hh * plan.ow + ww]
        if plan.layout == "nchw":
            return dot[nn, o, hh, ww]
        return dot[nn, o // L, hh, ww, o % L]

    def xsum_at(nn: Any, hh: Any, ww: Any) -> Any:
        assert xsum is not None
        return xsum[nn, hh * plan.ow + ww] if plan.flat else xsum[nn, hh, ww]

    def acc_value(nn: Any, o: Any, hh: Any, ww: Any) -> Any:
        # NOTE: xsum is read first, so that its stage comes before the dot's in the function
        if xsum is None:
            return dot_at(nn, o, hh, ww) + corr(o)
        return corr(o) - zw(o) * xsum_at(nn, hh, ww) + dot_at(nn, o, hh, ww)

    def residual(nn: Any, o: Any, hh: Any, ww: Any) -> Any:
        # clamped into the real grid only where the grid is padded (a clamp makes the
        # vectorized load a gather)
        oo = te.min(o, plan.o - 1) if ocp > plan.o else o
        wo = te.min(ww, plan.ow - 1) if not plan.flat and plan.owp > plan.ow else ww
        if io.out_packed:
            return other[nn, oo // G, hh, wo, oo % G]
        return other[nn, oo, hh, wo]

    # --- epilogue on the padded grid (whole register tiles): NCHW, or NHWC for nchwc ---
    cbias = _clamped(bias, ocp, "x86_conv_bias")
    if plan.layout == "nchw":
        grid = (N, ocp, plan.oh, plan.ow if plan.flat else plan.owp)
        acc = te.compute(grid, acc_value, name=CONV_ACC)
        res = None if other is None else te.compute(grid, residual, name=CONV_RESIDUAL)
        req = requantize_epilogue(op, sig, acc, cbias, res, 1, CONV_REQUANT)
        if io.out_packed:
            return _conv_out_packed(sig, plan, lambda nn, o, hh, ww: req[nn, o, hh, ww])
        if ocp == plan.o and (plan.flat or plan.owp == plan.ow):
            return req
        return te.compute((N, plan.o, plan.oh, plan.ow),
                          lambda nn, o, hh, ww: req[nn, o, hh, ww], name=CONV_OUT)
    grid = (N, plan.oh, plan.owp, ocp)
    acc = te.compute(grid, lambda nn, hh, ww, o: acc_value(nn, o, hh, ww), name=CONV_ACC)
    res = None
    if other is not None:
        res = te.compute(grid, lambda nn, hh, ww, o: residual(nn, o, hh, ww), name=CONV_RESIDUAL)
    req = requantize_epilogue(op, sig, acc, cbias, res, 3, CONV_REQUANT)
    if io.out_packed:
        return _conv_out_packed(sig, plan, lambda nn, o, hh, ww: req[nn, hh, ww, o])
    return te.compute((N, plan.o, plan.oh, plan.ow),
                      lambda nn, o, hh, ww: req[nn, hh, ww, o], name=CONV_OUT)


def _fold_taps(plan: ConvPlan, intrin: DotIntrin, xp: Tensor) -> Tensor:
    """Stage `fold` of a folded plan (`ConvPlan.fold`): words [N][ceil(C*KW/G)][Hp][OWp] whose
    step g of group j is tap t = j*G + g = kw*C + c of input row hh at output column ww, i.e.
    input column ww*SW + kw*DW: taken from the polyphase `pack` words (phase (kw*DW) % SW,
    word ww + (kw*DW) // SW, step c % G), so every load is contiguous along ww (vectorized
    shifts and ors, no gathers). Taps t >= C*KW hold 0 (their weights are 0)."""
    G, C, KW, S = plan.kgroup, plan.c, plan.kw, plan.phases
    dw = plan.dil[1]
    hp, _ = plan.packed_hw
    mask = (1 << intrin.x_bits) - 1

    def value(nn: Any, j: Any, hh: Any, ww: Any) -> Any:
        vals = []
        for g in range(G):
            t = j * G + g
            kw = te.min(t // C, KW - 1)
            c = t % C
            col = kw * dw
            word = xp[nn, c // G, hh, col % S, ww + col // S]
            v = tirx.bitwise_and(tirx.shift_right(word, (c % G) * intrin.x_bits), mask)
            vals.append(te.if_then_else(t < C * KW, v, te.const(0, "int32")))
        return _pack_word(vals, intrin)

    return te.compute((plan.n, plan.dot_icb, hp, plan.owp), value, name=CONV_FOLD)


def _conv_out_packed(sig: Sig, plan: ConvPlan, req_at: Any) -> Tensor:
    """The NCHW4c output [N][ceil(O/4)][OH][OW][4] from the requantized grid; padding channels
    hold the output zero point (ops/layout.py)."""
    oq = sig.out.qparams
    assert oq is not None
    G = plan.kgroup
    zo = te.const(int(oq.zp_value), "uint8")
    last = plan.ocp - 1

    def value(nn: Any, cb: Any, hh: Any, ww: Any, g: Any) -> Any:
        o = cb * G + g
        if plan.o % G == 0:
            return req_at(nn, o, hh, ww)
        return te.if_then_else(o < plan.o, req_at(nn, te.min(o, last), hh, ww), zo)

    shape = (plan.n, math.ceil(plan.o / G), plan.oh, plan.ow, G)
    return te.compute(shape, value, name=CONV_OUT)


# --- linear --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DensePlan:
    m: int
    k: int
    n: int
    lanes: int
    kgroup: int
    mr: int
    nr: int
    mp: int
    nb: int
    """Output-channel blocks of L lanes, padded to a multiple of `nr`."""
    kb: int
    """Reduction groups: ceil(K / G)."""


def plan_dense(m: int, k: int, n: int, intrin: DotIntrin) -> DensePlan:
    L, G = intrin.lanes, intrin.kgroup
    nb0 = math.ceil(n / L)
    if m == 1:
        # batch 1 is weight-bandwidth bound: wide rows, many parallel column tiles
        nr = next((r for r in (4, 3, 2) if nb0 % r == 0), min(4, nb0))
        return DensePlan(m, k, n, L, G, 1, nr, 1, math.ceil(nb0 / nr) * nr, math.ceil(k / G))
    mr, nr, mp, nb = choose_tile(m, nb0, max_accumulators(intrin))
    return DensePlan(m, k, n, L, G, mr, nr, mp, nb, math.ceil(k / G))


def pack_dense_weight(w: np.ndarray, plan: DensePlan, dtype: str) -> np.ndarray:
    """[N, K] int8 -> [Np/L][Kp/G][L][G] (zero padded), as `dtype`."""
    n, k = w.shape
    L, G = plan.lanes, plan.kgroup
    full = np.zeros((plan.nb * L, plan.kb * G), dtype=np.int64)
    full[:n, :k] = w
    packed = full.reshape(plan.nb, L, plan.kb, G).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(packed).astype(dtype)


@x86_strategy("qnn.linear", "qnn.linear_relu", "qnn.linear_leaky_relu", "qnn.linear_tanh")
def dense_packed(op: OpDef, sig: Sig, inputs: Sequence[Tensor], target: TargetPreset) -> Any:
    """Linear with a constant weight: x [..., K] (flattened to M rows) times the packed weight.

    Stages: `pack` (x -> activation words [Mp][Kp/G], zero padded), `xsum` (weight zero
    points), `dot` [Mp][Np/L][L], `acc` (view [M, N] with the corrections), `requant`
    (te_lib epilogue; the output for 2-D x), `out` (reshape to [..., N] for higher ranks).
    """
    intrin = intrinsic_for(target)
    if intrin is None:
        return None
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    w_data = te_lib.constant_value(w)
    if w_data is None:
        return None
    xt, wt = sig.in_types[0], sig.in_types[1]
    xq, wq = xt.qparams, wt.qparams
    assert xq is not None and wq is not None
    lead = tuple(xt.shape[:-1])
    m, k = int(np.prod(lead, dtype=np.int64)), xt.shape[-1]
    n = wt.shape[0]
    plan = plan_dense(m, k, n, intrin)
    xdt = str(x.dtype)
    zx = int(xq.zp_value) + _x_shift(xdt)
    zws = np.broadcast_to(wq.zero_points_array(), (n,)).astype(np.int64)
    corr_zw = conv_corrections(w_data, zx, zws, k)
    if corr_zw is None:
        return None
    corr_v, zw_v = corr_zw
    L, G = plan.lanes, plan.kgroup

    def x_row(mm: Any) -> tuple[Any, ...]:
        """Index of row `mm` of the flattened x (without the k axis)."""
        idx = []
        for j in range(len(lead) - 1, -1, -1):
            d = lead[j]
            if d == 1:
                idx.append(te.const(0, "int32"))
            elif j == 0:
                idx.append(mm)
            else:
                idx.append(mm % d)
                mm = mm // d
        return tuple(reversed(idx))

    def pack(mm: Any, kb: Any) -> Any:
        vals = []
        for g in range(G):
            kk = kb * G + g
            inside = te.all(mm < m, kk < k)
            src = x[(*x_row(te.min(mm, m - 1)), te.min(kk, k - 1))]
            vals.append(te.if_then_else(inside, _x_u8(src, xdt), te.const(0, "int32")))
        return _pack_word(vals, intrin)

    # NOTE: for u8 x with K % 4 == 0 the VNNI words are x's own bytes; the copy (K bytes per
    # row, vectorized) keeps one intrinsic form for every case
    xp = te.compute((plan.mp, plan.kb), pack, name=DENSE_PACK)
    w_packed = te_lib.constant(pack_dense_weight(w_data, plan, intrin.w_dtype), "x86_dense_weight")
    rkb = te.reduce_axis((0, plan.kb), name="rkb")
    rg = te.reduce_axis((0, G), name="rg")
    dot = te.compute(
        (plan.mp, plan.nb, L),
        lambda mm, jb, lane: te.sum(
            _x_step(xp[mm, rkb], rg, intrin) * w_packed[jb, rkb, lane, rg].astype("int32"),
            axis=[rkb, rg]),
        name=DENSE_DOT, attrs={ANN_INTRIN: intrin.name, ANN_TILE_M: plan.mr, ANN_TILE_N: plan.nr})
    xsum = None
    if np.any(zw_v):
        skb = te.reduce_axis((0, plan.kb), name="skb")
        sg = te.reduce_axis((0, G), name="sg")
        xsum = te.compute((plan.mp,),
                          lambda mm: te.sum(_x_step(xp[mm, skb], sg, intrin), axis=[skb, sg]),
                          name=DENSE_XSUM)
    np_ = plan.nb * L
    corr = _int_vector(_pad_to(corr_v, np_), "x86_dense_corr")
    zw = _int_vector(_pad_to(zw_v, np_), "x86_dense_w_zero_point")

    # --- epilogue on the padded grid [Mp][Np] (whole register tiles) ---
    def acc_body(mm: Any, o: Any) -> Any:
        if xsum is None:  # xsum first: see conv2d_packed
            return dot[mm, o // L, o % L] + corr(o)
        return corr(o) - zw(o) * xsum[mm] + dot[mm, o // L, o % L]

    acc = te.compute((plan.mp, np_), acc_body, name=DENSE_ACC)
    req = requantize_epilogue(op, sig, acc, _clamped(bias, np_, "x86_dense_bias"), None, 1,
                      DENSE_REQUANT)
    if len(lead) == 1 and plan.mp == m and np_ == n:
        return req
    strides = [int(np.prod(lead[j + 1:], dtype=np.int64)) for j in range(len(lead))]
    return te.compute(
        (*lead, n),
        lambda *i: req[sum((i[j] * strides[j] for j in range(len(lead))), te.const(0, "int32")),
                       i[-1]],
        name=DENSE_OUT)


__all__ = [
    "ANN_FLAT",
    "ANN_INTRIN",
    "ANN_OUT_PACKED",
    "ANN_PACK_BYTES",
    "ANN_POS_OUTER",
    "ANN_TILE_M",
    "ANN_TILE_N",
    "X86_FAMILIES",
    "ConvIO",
    "ConvPlan",
    "DensePlan",
    "choose_tile",
    "conv2d_packed",
    "conv2d_prepacked",
    "conv_cost",
    "dense_packed",
    "pack_conv_weight",
    "pack_dense_weight",
    "plan_conv",
    "plan_dense",
    "x86_strategy",
]
