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
    linear: weights [Np/L][Kp/G][L][G]; activations [Mp][Kp/G]; dot [Mp][Np/L][L]

`conv_cost` picks the conv layout. A layout pass that keeps packed activations between convs
would remove the packing stage (docs/lowering.md).

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
from qcompiler.ir.registry import OpDef, Sig
from qcompiler.lowering import te_lib
from qcompiler.lowering.strategy import register_strategy
from qcompiler.lowering.tvm_compat import PrimExpr, Tensor, int_shape, te, tirx
from qcompiler.target import TargetPreset

X86_FAMILIES = ("x86-vnni", "x86-avx512", "x86-avx2")

# block names
CONV_PACK = "x86_conv_pack"
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
ANN_TILE_N = "qc.x86_tile_n"
"""Register tile along the output channels: vectors of L lanes (lanes = channels) or single
channels (lanes = positions, where the spatial tile is a multiple of L)."""

MAX_TAPS = 16447
"""Largest reduction (taps per output) whose zero-point-corrected sum provably stays in int32:
4 terms of magnitude <= T * 255 * 128 each."""


def x86_strategy(*ops: str) -> Any:
    """Register a strategy for `ops` on every x86 schedule family."""
    return register_strategy(ops, X86_FAMILIES)


# --- register tiles ------------------------------------------------------------------------------


def max_accumulators(intrin: DotIntrin) -> int:
    """Accumulator vectors per register tile: 16 of the 32 zmm registers (VNNI, measured best
    on Zen 5: 537 GMAC/s for 8x2 against 442 for 7x4 and 199 for 14x2, which spills), 12 of
    the 16 ymm ones (AVX2)."""
    return 12 if intrin.lanes == 8 else 16


def choose_tile(n_spatial: int, n_blocks: int, max_acc: int,
                channel_tiles: Sequence[int] = (1, 2, 3, 4),
                exact: bool = False, spatial_step: int = 1) -> tuple[int, int, int, int] | None:
    """(spatial tile, channel-block tile, padded spatial extent, padded channel blocks).

    Minimises the padded work (spatial and channel padding both cost multiplies) times a
    penalty for tiles with fewer accumulators than `max_acc` (latency-bound) and for a channel
    tile of 1 (every broadcast feeds one multiply). `exact`: only tiles that divide both
    extents (None if there is none); `spatial_step`: spatial tiles are multiples of it.
    """
    cands: list[tuple[float, int, int, int]] = []
    for nt in channel_tiles:
        if nt > n_blocks or nt > max_acc or (exact and n_blocks % nt):
            continue
        for mt in range(1, min(max_acc // nt, max(n_spatial, 1)) + 1):
            if (exact and n_spatial % mt) or mt % spatial_step:
                continue
            acc = nt * mt
            sp = math.ceil(n_spatial / mt) * mt
            bp = math.ceil(n_blocks / nt) * nt
            cost = (sp / n_spatial) * (bp / n_blocks) * (1.0 + 0.5 * (max_acc - acc) / max_acc)
            if nt == 1 and n_blocks > 1:
                cost *= 1.1
            cands.append((round(cost, 9), -acc, nt, mt))
    if not cands:
        return None
    _, _, nt, mt = min(cands)
    return mt, nt, math.ceil(n_spatial / mt) * mt, math.ceil(n_blocks / nt) * nt


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


# --- shared pieces -------------------------------------------------------------------------------


def _int_vector(values: np.ndarray, name: str) -> Any:
    """c -> int32 value: an immediate when all values are equal, else a constant-tensor load."""
    vals = np.asarray(values, dtype=np.int64).reshape(-1)
    if vals.size and np.all(vals == vals[0]):
        imm = te.const(int(vals[0]), "int32")
        return lambda c: imm
    t = te_lib.constant(vals.astype(np.int32), name)
    return lambda c: t[c]


def _corrections(
    w: np.ndarray, zx: int, zws: np.ndarray, taps: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(corr[o], zw[o]) as int64, or None when the int32 bound does not hold (see module doc)."""
    if taps > MAX_TAPS:
        return None
    wsum = w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1)
    corr = taps * zx * zws.astype(np.int64) - zx * wsum
    if np.any(np.abs(corr) > 2**31 - 1):
        return None
    return corr, zws.astype(np.int64)


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


def _requantize(
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


@dataclass(frozen=True)
class ConvPlan:
    """Shapes of one packed conv (see the module doc for the two layouts).

    `layout` "nchwc": lanes = output channels, tile = oc_t channel vectors x ow_t columns.
    `layout` "nchw": lanes = output positions, tile = oc_t channels x ow_t columns (a multiple
    of the lanes); the packed input has a W phase axis so strided taps are contiguous too.
    """

    layout: str
    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    stride: tuple[int, int]
    pad: tuple[int, int]
    dil: tuple[int, int]
    oh: int
    ow: int
    lanes: int
    kgroup: int
    icb: int
    """Packed input-channel groups: ceil(C / G)."""
    ocp: int
    """Output channels padded to whole tiles (and, for nchwc, whole vectors)."""
    ow_t: int
    """Output columns per register tile."""
    oc_t: int
    """Output channels per register tile: vectors (nchwc) or single channels (nchw)."""
    owp: int
    """OW padded to whole tiles (flat: OH * OW)."""
    flat: bool = False
    """nchw 1x1 conv over the flattened positions OH * OW (a multiple of the lanes): no padding,
    and the requantized tile is contiguous in the NCHW output (no copy stage)."""

    @property
    def prestride(self) -> bool:
        """1x1 conv: the pack stage samples the strided positions, the dot runs at stride 1."""
        return self.kh == 1 and self.kw == 1

    @property
    def taps(self) -> int:
        return self.c * self.kh * self.kw

    @property
    def dot_stride(self) -> tuple[int, int]:
        return (1, 1) if self.prestride else self.stride

    @property
    def phases(self) -> int:
        """W phases of the packed input (nchw layout): the dot's W stride."""
        return self.dot_stride[1] if self.layout == "nchw" else 1

    @property
    def packed_hw(self) -> tuple[int, int]:
        """Rows and (per phase) columns of the packed input; the columns are rounded up to
        whole vectors of 16 words so the packing stage is vectorized without a tail."""
        if self.prestride:
            return self.oh, _round_up(self.owp, 16)
        sh, sw = self.stride
        dh, dw = self.dil
        hp = (self.oh - 1) * sh + (self.kh - 1) * dh + 1
        wp = (self.owp - 1) * sw + (self.kw - 1) * dw + 1
        return hp, _round_up(math.ceil(wp / self.phases), 16)

    @property
    def macs_executed(self) -> int:
        positions = self.owp if self.flat else self.oh * self.owp
        return self.n * self.ocp * positions * self.icb * self.kgroup * self.kh * self.kw


EPILOGUE_COST = {"nchwc": 170, "nchw": 40}
"""Per-output epilogue cost in multiply-equivalents (at ~128 int8 MAC per cycle), measured on
Zen 5: the vectorized requantize costs about 0.3 cycles per output; the NHWC -> NCHW byte
transpose of the nchwc layout about 1 more. Used only to pick the layout."""

FORCE_LAYOUT: str | None = None
"""Tests and benchmarks: force "nchwc" or "nchw" (None: the cost model decides)."""


def plan_conv(xs: Sequence[int], ws: Sequence[int], stride: Sequence[int],
              pad: Sequence[int], dil: Sequence[int], intrin: DotIntrin,
              layout: str) -> ConvPlan:
    n, c, h, w = xs
    o, _, kh, kw = ws
    sh, sw = stride
    ph, pw = pad
    dh, dw = dil
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    L = intrin.lanes
    acc = max_accumulators(intrin)
    flat = False
    if layout == "nchwc":
        tile = choose_tile(ow, math.ceil(o / L), acc)
        assert tile is not None
        ow_t, oc_t, owp, ocb = tile
        ocp = ocb * L
    else:
        tile = None
        # flat: tiles of whole vectors AND whole rows (so a tile's (oh, ow) are affine in the
        # fused loop, which `parallel` requires), dividing OH * OW exactly
        row_tile = math.lcm(ow, L)
        if kh == 1 and kw == 1 and (oh * ow) % row_tile == 0:
            tile = choose_tile(oh * ow // L, o, acc, channel_tiles=NCHW_CHANNEL_TILES,
                               exact=True, spatial_step=row_tile // L)
            flat = tile is not None
        if tile is None:
            tile = choose_tile(math.ceil(ow / L), o, acc, channel_tiles=NCHW_CHANNEL_TILES)
        assert tile is not None
        tv, oc_t, nvec, ocp = tile
        ow_t, owp = tv * L, nvec * L
    return ConvPlan(layout, n, c, h, w, o, kh, kw, (sh, sw), (ph, pw), (dh, dw), oh, ow, L,
                    intrin.kgroup, math.ceil(c / intrin.kgroup), ocp, ow_t, oc_t, owp, flat)


NCHW_CHANNEL_TILES = (4, 2, 8, 1, 3, 6)
"""Output channels per register tile of the nchw layout, in order of preference on ties."""


UNALIGNED_COST = 1.2
"""Multiply cost factor of the nchw layout when KW > 1: the 64-byte activation vectors of taps
kw > 0 start mid cache line (two lines per load). Measured on Zen 5, 1 thread: 3x3 convs run
at 371-421 GMAC/s in nchw against 401-438 in nchwc (64->64 @56, 128->128 @28)."""


def conv_cost(plan: ConvPlan) -> float:
    """Relative cost: executed multiplies (padding included) plus the epilogue.

    With these constants the layer set of issue 7 gets the faster layout of the two in every
    case (measured, benchmarks/x86_layers.py): nchwc for the ResNet 3x3 convs, nchw for the
    1x1 convs and the 7x7 stem."""
    outputs = plan.n * plan.o * plan.oh * plan.ow
    macs = float(plan.macs_executed)
    if plan.layout == "nchw" and plan.kw > 1:
        macs *= UNALIGNED_COST
    return macs + EPILOGUE_COST[plan.layout] * outputs


def pack_conv_weight(w: np.ndarray, plan: ConvPlan, dtype: str) -> np.ndarray:
    """OIHW int8 -> [OCp/L][ICp/G][KH][KW][L][G] (nchwc) or [OCp][ICp/G][KH][KW][G] (nchw),
    zero padded, as `dtype`."""
    o, c, kh, kw = w.shape
    G = plan.kgroup
    full = np.zeros((plan.ocp, plan.icb * G, kh, kw), dtype=np.int64)
    full[:o, :c] = w
    if plan.layout == "nchwc":
        L = plan.lanes
        packed = full.reshape(plan.ocp // L, L, plan.icb, G, kh, kw).transpose(0, 2, 4, 5, 1, 3)
    else:
        packed = full.reshape(plan.ocp, plan.icb, G, kh, kw).transpose(0, 1, 3, 4, 2)
    return np.ascontiguousarray(packed).astype(dtype)


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
    channels ("nchwc": small spatial extents with many channels).

    Stages: `pack` (x -> [N][ICp/G][Hp][(phase)][Wp][G], padded with zx), `xsum` (only with
    weight zero points), `dot` (the tensorizable reduction), `acc` (view: dot +
    corrections), `residual` (view of conv2d_add's extra input), `requant` (te_lib epilogue),
    `out` (the node's NCHW output, when the grid was padded or transposed).
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
    plans = []
    for layout in ("nchwc", "nchw"):
        intrin = intrinsic_for(target, weight_broadcast=layout == "nchw")
        if intrin is not None and FORCE_LAYOUT in (None, layout):
            plans.append((conv_cost(plan_conv(*geometry, intrin, layout)), layout, intrin))
    if not plans:
        return None
    _, layout, intrin = min(plans)
    plan = plan_conv(*geometry, intrin, layout)
    xq, wq = xt.qparams, wt.qparams
    assert xq is not None and wq is not None
    zx = int(xq.zp_value) + _x_shift(str(x.dtype))
    zws = np.broadcast_to(wq.zero_points_array(), (plan.o,)).astype(np.int64)
    corr_zw = _corrections(w_data, zx, zws, plan.taps)
    if corr_zw is None:
        return None
    corr_v, zw_v = corr_zw

    N, C, H, W = plan.n, plan.c, plan.h, plan.w
    L, G, S = plan.lanes, plan.kgroup, plan.phases
    sh, sw = plan.stride
    ph, pw = plan.pad
    dh, dw = plan.dil
    hp, wq_ = plan.packed_hw

    # --- pack: NCHW -> words [N][ICp/G][Hp][(S)][Wp/S] of G channels; zx in padding taps, 0 in
    # padding channels; vectorizable along the last axis (contiguous loads, shifts, ors) ---
    def pack_value(nn: Any, cb: Any, hh: Any, col: Any) -> Any:
        if plan.prestride:
            ih, iw = hh * sh - ph, col * sw - pw
        else:
            ih, iw = hh - ph, col - pw
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

    if plan.flat:  # [N][ICp/G][OH * OW]
        xp = te.compute((N, plan.icb, plan.owp),
                        lambda nn, cb, p: pack_value(nn, cb, p // plan.ow, p % plan.ow),
                        name=CONV_PACK)
    elif plan.layout == "nchw":
        xp = te.compute((N, plan.icb, hp, S, wq_),
                        lambda nn, cb, hh, s, q: pack_value(nn, cb, hh, q * S + s),
                        name=CONV_PACK)
    else:
        xp = te.compute((N, plan.icb, hp, wq_), pack_value, name=CONV_PACK)
    w_packed = te_lib.constant(pack_conv_weight(w_data, plan, intrin.w_dtype), "x86_conv_weight")
    dsh, dsw = plan.dot_stride

    def x_tap(nn: Any, ic: Any, hh: Any, ww: Any, kh: Any, kw: Any, g: Any) -> Any:
        if plan.flat:  # ww is the flat position; hh, kh, kw are 0
            return _x_step(xp[nn, ic, ww], g, intrin)
        row = hh * dsh + kh * dh
        if plan.layout == "nchw":
            col = kw * dw  # position ww*dsw + col = (ww + col // S) * S + col % S
            return _x_step(xp[nn, ic, row, col % S, ww + col // S], g, intrin)
        return _x_step(xp[nn, ic, row, ww * dsw + kw * dw], g, intrin)

    # --- dot: sum over (kh, kw, icb, g) of x * w, int32 ---
    rkh = te.reduce_axis((0, plan.kh), name="rkh")
    rkw = te.reduce_axis((0, plan.kw), name="rkw")
    ric = te.reduce_axis((0, plan.icb), name="ric")
    rg = te.reduce_axis((0, G), name="rg")
    axes = [rkh, rkw, ric, rg]
    w_bytes = plan.ocp * plan.icb * G * plan.kh * plan.kw * (2 if intrin.w_dtype == "int16" else 1)
    ann = {ANN_INTRIN: intrin.name, ANN_TILE_M: plan.ow_t, ANN_TILE_N: plan.oc_t,
           ANN_FLAT: int(plan.flat), ANN_POS_OUTER: int(w_bytes <= POS_OUTER_MAX_WEIGHT_BYTES)}
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
        skw = te.reduce_axis((0, plan.kw), name="skw")
        sic = te.reduce_axis((0, plan.icb), name="sic")
        sg = te.reduce_axis((0, G), name="sg")
        xsum = te.compute(
            (N, plan.oh, plan.owp),
            lambda nn, hh, ww: te.sum(x_tap(nn, sic, hh, ww, skh, skw, sg),
                                      axis=[skh, skw, sic, sg]),
            name=CONV_XSUM)
    ocp = plan.ocp
    corr = _int_vector(_pad_to(corr_v, ocp), "x86_conv_corr")
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
        return other[nn, oo, hh, wo]

    # --- epilogue on the padded grid (whole register tiles): NCHW, or NHWC for nchwc ---
    cbias = _clamped(bias, ocp, "x86_conv_bias")
    if plan.layout == "nchw":
        grid = (N, ocp, plan.oh, plan.ow if plan.flat else plan.owp)
        acc = te.compute(grid, acc_value, name=CONV_ACC)
        res = None if other is None else te.compute(grid, residual, name=CONV_RESIDUAL)
        req = _requantize(op, sig, acc, cbias, res, 1, CONV_REQUANT)
        if ocp == plan.o and (plan.flat or plan.owp == plan.ow):
            return req
        return te.compute((N, plan.o, plan.oh, plan.ow),
                          lambda nn, o, hh, ww: req[nn, o, hh, ww], name=CONV_OUT)
    grid = (N, plan.oh, plan.owp, ocp)
    acc = te.compute(grid, lambda nn, hh, ww, o: acc_value(nn, o, hh, ww), name=CONV_ACC)
    res = None
    if other is not None:
        res = te.compute(grid, lambda nn, hh, ww, o: residual(nn, o, hh, ww), name=CONV_RESIDUAL)
    req = _requantize(op, sig, acc, cbias, res, 3, CONV_REQUANT)
    return te.compute((N, plan.o, plan.oh, plan.ow),
                      lambda nn, o, hh, ww: req[nn, hh, ww, o], name=CONV_OUT)


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
    corr_zw = _corrections(w_data, zx, zws, k)
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
    req = _requantize(op, sig, acc, _clamped(bias, np_, "x86_dense_bias"), None, 1,
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
    "ANN_POS_OUTER",
    "ANN_TILE_M",
    "ANN_TILE_N",
    "X86_FAMILIES",
    "ConvPlan",
    "DensePlan",
    "choose_tile",
    "conv2d_packed",
    "conv_cost",
    "dense_packed",
    "pack_conv_weight",
    "pack_dense_weight",
    "plan_conv",
    "plan_dense",
    "x86_strategy",
]
