"""Packing plans of the x86 int8 conv kernels: numpy and plain Python only (no TVM).

Shared by the lowering strategy (codegen/x86/strategies.py, which builds the TE) and the
weight-prepacking pass (passes/prepack.py, which packs the weights into IR constants at
compile time): both must pick the same layout, register tile and padded channel count for a
conv, so the plan lives here, importable without TVM. See strategies.py's module doc for the
two conv layouts ("nchwc": lanes = output channels, "nchw": lanes = output positions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class IntrinShape(Protocol):
    """What a plan needs of a dot intrinsic (codegen/x86/intrin.DotIntrin has these)."""

    @property
    def lanes(self) -> int: ...

    @property
    def kgroup(self) -> int: ...


@dataclass(frozen=True)
class Lanes:
    """A plain IntrinShape, for callers without TVM (VNNI: 16 int32 lanes x 4 bytes)."""

    lanes: int
    kgroup: int


VNNI_SHAPE = Lanes(16, 4)
"""vpdpbusd zmm: 16 int32 lanes, 4 u8 x s8 steps each (both VNNI intrinsics)."""


MAX_TAPS = 16447
"""Largest reduction (taps per output) whose zero-point-corrected sum provably stays in int32:
4 terms of magnitude <= T * 255 * 128 each."""



# --- register tiles ------------------------------------------------------------------------------


def max_accumulators(intrin: IntrinShape) -> int:
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
    fold: bool = False
    """nchw conv with few input channels (the 3-channel stem): the (kw, c) taps of a kernel row
    are folded into the reduction groups (partial im2col, tap t = kw * C + c), so G-wide groups
    are not 1/4 empty: 7x7 on 3 channels takes 6 groups per kernel row instead of 7. The dot
    then reads one word per output column (a stage `fold` built from the polyphase `pack`):
    KW = 1, W stride 1, aligned loads."""

    @property
    def dot_icb(self) -> int:
        """Reduction groups per kernel tap of the dot: ceil(C * KW / G) when folded."""
        return math.ceil(self.c * self.kw / self.kgroup) if self.fold else self.icb

    @property
    def dot_kw(self) -> int:
        """Kernel columns of the dot (1 when folded)."""
        return 1 if self.fold else self.kw

    @property
    def prestride(self) -> bool:
        """1x1 conv: the pack stage samples the strided positions, the dot runs at stride 1."""
        return self.kh == 1 and self.kw == 1

    @property
    def taps(self) -> int:
        return self.c * self.kh * self.kw

    @property
    def dot_stride(self) -> tuple[int, int]:
        if self.fold:
            return self.stride[0], 1
        return (1, 1) if self.prestride else self.stride

    @property
    def phases(self) -> int:
        """W phases of the packed input (nchw layout): the dot's W stride (folded: the conv's;
        the `fold` stage then reads the phases at stride 1)."""
        if self.layout != "nchw":
            return 1
        return self.stride[1] if self.fold else self.dot_stride[1]

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
        return self.n * self.ocp * positions * self.dot_icb * self.kgroup * self.kh * self.dot_kw


EPILOGUE_COST = {"nchwc": 170, "nchw": 40}
"""Per-output epilogue cost in multiply-equivalents (at ~128 int8 MAC per cycle), measured on
Zen 5: the vectorized requantize costs about 0.3 cycles per output; the NHWC -> NCHW byte
transpose of the nchwc layout about 1 more. Used only to pick the layout."""

FOLD_MAX_CHANNELS = 3
"""Convs with at most this many input channels (and KW > 1) fold (kw, c) into the reduction in
the nchw layout (`ConvPlan.fold`) when that takes fewer groups: the stem. More channels would
make the folded activations (KW times the input) cost more to build than they save."""


def wants_fold(c: int, kw: int, kgroup: int) -> bool:
    """Whether an nchw plan folds (kw, c) into the reduction (`ConvPlan.fold`)."""
    return (kw > 1 and c <= FOLD_MAX_CHANNELS and c % kgroup != 0
            and math.ceil(c * kw / kgroup) < math.ceil(c / kgroup) * kw)


def plan_conv(xs: Sequence[int], ws: Sequence[int], stride: Sequence[int],
              pad: Sequence[int], dil: Sequence[int], intrin: IntrinShape,
              layout: str, fold: bool | None = None) -> ConvPlan:
    """The plan of one conv in `layout`; `fold` (nchw only): None = `wants_fold`, False =
    never (e.g. NCHW4c input, read by the byte intrinsics without a word stage)."""
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
    if fold is None:
        fold = wants_fold(c, kw, intrin.kgroup)
    return ConvPlan(layout, n, c, h, w, o, kh, kw, (sh, sw), (ph, pw), (dh, dw), oh, ow, L,
                    intrin.kgroup, math.ceil(c / intrin.kgroup), ocp, ow_t, oc_t, owp, flat,
                    fold and layout == "nchw" and not flat)


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
    if plan.layout == "nchw" and plan.dot_kw > 1:
        macs *= UNALIGNED_COST
    return macs + EPILOGUE_COST[plan.layout] * outputs


def pack_conv_weight(w: np.ndarray, plan: ConvPlan, dtype: str) -> np.ndarray:
    """OIHW int8 -> [OCp/L][ICp/G][KH][KW][L][G] (nchwc) or [OCp][ICp/G][KH][KW][G] (nchw),
    zero padded, as `dtype`; folded nchw: [OCp][ceil(C*KW/G)][KH][1][G], tap t = kw * C + c."""
    o, c, kh, kw = w.shape
    G = plan.kgroup
    if plan.fold:
        taps = np.zeros((plan.ocp, plan.dot_icb * G, kh), dtype=np.int64)
        taps[:o, :c * kw] = w.transpose(0, 3, 1, 2).reshape(o, kw * c, kh)
        packed = taps.reshape(plan.ocp, plan.dot_icb, G, kh, 1).transpose(0, 1, 3, 4, 2)
        return np.ascontiguousarray(packed).astype(dtype)
    full = np.zeros((plan.ocp, plan.icb * G, kh, kw), dtype=np.int64)
    full[:o, :c] = w
    if plan.layout == "nchwc":
        L = plan.lanes
        packed = full.reshape(plan.ocp // L, L, plan.icb, G, kh, kw).transpose(0, 2, 4, 5, 1, 3)
    else:
        packed = full.reshape(plan.ocp, plan.icb, G, kh, kw).transpose(0, 1, 3, 4, 2)
    return np.ascontiguousarray(packed).astype(dtype)


FORCE_LAYOUT: str | None = None
"""Tests and benchmarks: force "nchwc" or "nchw" (None: the cost model decides)."""


def choose_conv_plan(xs: Sequence[int], ws: Sequence[int], stride: Sequence[int],
                     pad: Sequence[int], dil: Sequence[int],
                     intrins: dict[str, IntrinShape | None]) -> ConvPlan | None:
    """The cheaper plan (`conv_cost`) of the layouts whose intrinsic exists (`intrins`:
    layout -> intrinsic or None), honoring FORCE_LAYOUT; None when there is none."""
    plans = []
    for layout in ("nchwc", "nchw"):
        intrin = intrins.get(layout)
        if intrin is not None and FORCE_LAYOUT in (None, layout):
            plan = plan_conv(xs, ws, stride, pad, dil, intrin, layout)
            plans.append((conv_cost(plan), layout, plan))
    return min(plans)[2] if plans else None


def conv_corrections(
    w: np.ndarray, zx: int, zws: np.ndarray, taps: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(corr[o], zw[o]) as int64 for acc = dot - zw[o] * xsum + corr[o], or None when the
    int32 bound does not hold (taps > MAX_TAPS or |corr| >= 2**31; strategies.py's module doc):

        corr[o] = T * zx * zw[o] - zx * sum_t w[o, t]
    """
    if taps > MAX_TAPS:
        return None
    wsum = w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1)
    corr = taps * zx * zws.astype(np.int64) - zx * wsum
    if np.any(np.abs(corr) > 2**31 - 1):
        return None
    return corr, zws.astype(np.int64)


__all__ = [
    "EPILOGUE_COST",
    "FOLD_MAX_CHANNELS",
    "FORCE_LAYOUT",
    "MAX_TAPS",
    "VNNI_SHAPE",
    "ConvPlan",
    "IntrinShape",
    "Lanes",
    "choose_conv_plan",
    "choose_tile",
    "conv_corrections",
    "conv_cost",
    "max_accumulators",
    "pack_conv_weight",
    "plan_conv",
    "wants_fold",
]
