"""x86 depthwise / grouped int8 conv2d: taps as the dot product's reduction, positions in lanes.

A depthwise conv has no reduction over channels, so the 4-wide (VNNI) or 2-wide (pmaddwd) dot
products of the x86 intrinsics reduce over *taps* of one channel instead: G consecutive taps
along a kernel row (kw) form one reduction step, and the vector lanes are output positions.
The activation word of lane i is G consecutive bytes (VNNI) or int16 halves (pmaddwd) of one
input row, so a whole vector of words is one plain unaligned load when consecutive lanes start
G elements apart: lane i holds output column P*i + r for a fixed *phase* r, with P = G / S
phases for a W stride S (S must divide G). A tile is P * V output columns of a few rows
(V valid lanes of LT = a whole number of vectors per phase; one tile spans the row when OW is
a multiple of P, e.g. OW = 56: 4 phases x 14 of 16 lanes), its rows x P x LT / L accumulator
vectors stay in registers:

    dot[n, o, oh, t, r, i] = sum_{cg, kh, kg, k} xpad[n, ci, oh*SH + kh*DH, col]
                                                 * wp[o, cg, kh, kg, k]
        col = (t*V + i)*G + S*r + G*kg + k     (= ow*S + kw with ow = t*P*V + P*i + r,
                                                 kw = G*kg + k, kw >= KW has weight 0)

    VNNI     `vpdpbusd zmm`: c[16] += sum_{k<4} u8 a[4i + k] * s8 b[k]     (G = 4, L = 16)
    AVX-512  `vpmaddwd zmm`: c[16] += sum_{k<2} i16 a[2i + k] * i16 b[k]   (G = 2, L = 16)
    AVX2     `vpmaddwd ymm`: c[8]  += sum_{k<2} i16 a[2i + k] * i16 b[k]   (G = 2, L = 8)

(`a` is read straight from the padded input row, `b` is the channel's weight group, broadcast.)
No activation packing, no shuffles: per 16 outputs and kernel row one load and one
`vpdpbusd`. The requantize runs on the accumulator tile, and the P phase vectors of u8 results
are interleaved back into consecutive columns with shifts and ors (`out[P*i + r] = y[r][i]`,
one store of P*V bytes per tile row; the `interleave` intrinsic).

**Integer semantics.** With w' = w - zw[o] (per output channel, folded into the packed weights;
it fits int8 for symmetric weights, else the int16 pmaddwd kernel is used),

    acc[o] = sum_t (x_t - zx) * w'_t = dot'[o] + corr[o],    corr[o] = -zx * sum_t w'_t

exactly (padding taps hold zx, padding weight slots are 0; |dot'| <= T * 255 * 256 stays in
int32 for T <= 32895 taps, else the strategy declines). Then the op's own epilogue:
`strategies.requantize_epilogue` (te_lib's oneDNN or fbgemm requantize, chosen as ops/conv.py does).

**Input layout (the interface for a layout pass).** The kernel reads one stage, `x86_dw_pad`:

    xpad [N][C][Hp][Wq]  u8 (VNNI) or int16 (pmaddwd, zero-extended), NCHW with the conv's
         padding applied: xpad[n, c, h, w] = x[n, c, h - PH, w - PW] inside, zx outside;
         Hp = (OH - 1)*SH + (KH - 1)*DH + 1 rows, Wq >= G*((T - 1)*V + LT - 1 + KWG)
         + S*(P - 1) columns (`DwPlan.padded_hw`; KWG = ceil(KW / G), T tiles per row).

Today the stage is computed per channel plane inside the kernel (in L1). A layout pass can
have the producer write its output straight into such a zx-bordered plane (the bytes are
plain NCHW with a border and a row pitch of Wq); the `pad` stage then becomes a view.
The output is plain NCHW u8.

Grouped convs (Cg = C_in / groups > 1 input channels per group) reduce over cg too; the
strategy takes them up to `MAX_GROUP_CHANNELS` per group (beyond that a channel reduction, the
regular conv kernel, does better). Not covered (None: the generic lowering): non-constant
weights, W strides that do not divide G, W dilation, conv2d_add.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qcompiler.codegen.rule import ScheduleRule, register_rule
from qcompiler.codegen.x86.sched_util import (
    attempt,
    compute_consumers_at,
    extents,
    find_block,
    open_rule,
    vector_lanes,
    vectorize_blocks,
    vectorize_inner,
)
from qcompiler.codegen.x86.strategies import X86_FAMILIES, requantize_epilogue
from qcompiler.ir.registry import OpDef, Sig
from qcompiler.lowering import te_lib
from qcompiler.lowering.strategy import register_strategy
from qcompiler.lowering.tvm_compat import (
    PrimFunc,
    Schedule,
    T,
    TensorIntrin,
    llvm_version_major,
    loop_extent,
    te,
)
from qcompiler.target import TargetPreset

DW_OPS = ("qnn.conv2d", "qnn.conv2d_relu")

# block names
DW_PAD = "x86_dw_pad"
DW_DOT = "x86_dw_dot"
DW_ACC = "x86_dw_acc"
DW_REQUANT = "x86_dw_requant"
DW_INTERLEAVE = "x86_dw_interleave"
DW_OUT = "x86_dw_out"

# annotations on the dot block
ANN_KERNEL = "qc.x86_dw_kernel"
"""Name of the dot intrinsic (`DwKernel.name`)."""
ANN_PHASES = "qc.x86_dw_phases"
ANN_ROWS = "qc.x86_dw_rows"
"""Output rows per register tile."""
ANN_VALID = "qc.x86_dw_valid"
ANN_PAD_COLS = "qc.x86_dw_pad_cols"
"""(left padding, input columns) of a padded input row."""
"""Lanes per phase vector that are output columns (`DwPlan.valid`)."""

MAX_GROUP_CHANNELS = 8
"""Input channels per group up to which grouped convs use this kernel."""
MAX_ACCUMULATORS = 16
"""Accumulator vectors per register tile (rows x phases x vectors): half of the 32 zmm
registers; 8 of the 16 ymm ones for 8-lane (AVX2) kernels (`max_accumulators`)."""


def max_accumulators(kern: DwKernel) -> int:
    return MAX_ACCUMULATORS if kern.lanes == 16 else MAX_ACCUMULATORS // 2


# --- intrinsics --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DwKernel:
    """A tap-group dot intrinsic: c[L] += sum_{k<G} a[G*i + k] * b[k] (module doc)."""

    name: str
    lanes: int
    kgroup: int
    x_dtype: str
    w_dtype: str
    feature: str

    @property
    def w_range(self) -> tuple[int, int]:
        """Range of the packed (zero-point-shifted) weights."""
        return (-128, 127) if self.w_dtype == "int8" else (-32767, 32767)


DW_VNNI = DwKernel("qc_x86_dw_vnni_16x4", 16, 4, "uint8", "int8", "avx512vnni")
DW_PMADDWD_16 = DwKernel("qc_x86_dw_pmaddwd_16x2", 16, 2, "int16", "int16", "avx512bw")
DW_PMADDWD_8 = DwKernel("qc_x86_dw_pmaddwd_8x2", 8, 2, "int16", "int16", "avx2")
KERNELS = (DW_VNNI, DW_PMADDWD_16, DW_PMADDWD_8)

# vpdpbusd.512's operand vector types changed in LLVM 22 (see intrin.py)
_A_T, _B_T = ("uint8x64", "int8x64") if llvm_version_major() >= 22 else ("int32x16", "int32x16")


def _dot_desc(kern: DwKernel) -> Any:
    L, G = kern.lanes, kern.kgroup

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((L * G,), kern.x_dtype, offset_factor=1),
             b: T.Buffer((G,), kern.w_dtype, offset_factor=1),
             c: T.Buffer((L,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:L], a[0:L * G], b[0:G])
            T.writes(c[0:L])
            for i, k in T.grid(L, G):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    c[vi] = c[vi] + T.Cast("int32", a[vi * G + vk]) * T.Cast("int32", b[vk])

    return desc


@T.prim_func(s_tir=True)
def _dw_vnni_impl(a: T.Buffer((64,), "uint8", offset_factor=1),
                  b: T.Buffer((4,), "int8", offset_factor=1),
                  c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(c[0:16], a[0:64], b[0:4])
        T.writes(c[0:16])
        # 16 words of 4 consecutive input bytes = one unaligned 64-byte load; the channel's
        # 4 tap weights broadcast to every lane
        c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            c.vload([0], dtype="int32x16"),
            T.reinterpret(a.vload([0], dtype="uint8x64"), dtype=_A_T),
            T.reinterpret(T.broadcast(T.reinterpret(b.vload([0], "int8x4"), dtype="int32"), 16),
                          dtype=_B_T),
            dtype="int32x16",
        )


def _dw_pmaddwd_impl(lanes: int, llvm_intrin: str) -> Any:
    """vpmaddwd on `lanes` int32 lanes: 2*lanes int16 activations (one load) times the
    broadcast pair of int16 weights, added to c."""
    L = lanes
    vc, vh = f"int32x{L}", f"int16x{2 * L}"

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((2 * L,), "int16", offset_factor=1),
             b: T.Buffer((2,), "int16", offset_factor=1),
             c: T.Buffer((L,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:L], a[0:2 * L], b[0:2])
            T.writes(c[0:L])
            c[T.ramp(T.int32(0), 1, L)] = c.vload([0], dtype=vc) + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_intrin),
                a.vload([0], dtype=vh),
                T.reinterpret(T.broadcast(T.reinterpret(b.vload([0], "int16x2"), dtype="int32"),
                                          L), dtype=vh),
                dtype=vc,
            )

    return impl


_DOT_IMPLS = {DW_VNNI: _dw_vnni_impl,
              DW_PMADDWD_16: _dw_pmaddwd_impl(16, "llvm.x86.avx512.pmaddw.d.512"),
              DW_PMADDWD_8: _dw_pmaddwd_impl(8, "llvm.x86.avx2.pmadd.wd")}
for _k, _impl in _DOT_IMPLS.items():
    TensorIntrin.register(_k.name, _dot_desc(_k), _impl, override=True)


def _interleave_impl(phases: int, valid: int, lanes: int) -> Any:
    """The P rows of `lanes` u8 zero-extended to P-byte words, shifted by 8*r, or-ed; the first
    P*valid bytes stored (a shuffle that LLVM drops when valid == lanes)."""
    P, V, L = phases, valid, lanes
    wv, yv, ov = f"uint{8 * P}x{L}", f"uint8x{L}", f"uint8x{L * P}"
    keep = list(range(P * V))
    if P == 2:
        @T.prim_func(s_tir=True)
        def impl2(y: T.Buffer((P, V), "uint8", strides=(L, 1), offset_factor=1),
                  out: T.Buffer((V * P,), "uint8", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(y[0:P, 0:V])
                T.writes(out[0:V * P])
                out[T.ramp(T.int32(0), 1, V * P)] = T.Shuffle([T.reinterpret(
                    T.bitwise_or(
                        T.Cast(wv, y.vload([0, 0], dtype=yv)),
                        T.shift_left(T.Cast(wv, y.vload([1, 0], dtype=yv)),
                                     T.broadcast(T.uint16(8), L))),
                    dtype=ov)], keep)
        return impl2

    @T.prim_func(s_tir=True)
    def impl4(y: T.Buffer((P, V), "uint8", strides=(L, 1), offset_factor=1),
              out: T.Buffer((V * P,), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(y[0:P, 0:V])
            T.writes(out[0:V * P])
            out[T.ramp(T.int32(0), 1, V * P)] = T.Shuffle([T.reinterpret(
                T.bitwise_or(
                    T.bitwise_or(
                        T.Cast(wv, y.vload([0, 0], dtype=yv)),
                        T.shift_left(T.Cast(wv, y.vload([1, 0], dtype=yv)),
                                     T.broadcast(T.uint32(8), L))),
                    T.bitwise_or(
                        T.shift_left(T.Cast(wv, y.vload([2, 0], dtype=yv)),
                                     T.broadcast(T.uint32(16), L)),
                        T.shift_left(T.Cast(wv, y.vload([3, 0], dtype=yv)),
                                     T.broadcast(T.uint32(24), L)))),
                dtype=ov)], keep)
    return impl4


def _interleave_desc(phases: int, valid: int, lanes: int) -> Any:
    P, V, L = phases, valid, lanes

    @T.prim_func(s_tir=True)
    def desc(y: T.Buffer((P, V), "uint8", strides=(L, 1), offset_factor=1),
             out: T.Buffer((V * P,), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(y[0:P, 0:V])
            T.writes(out[0:V * P])
            for j in T.serial(V * P):
                with T.sblock("store"):
                    vj = T.axis.spatial(V * P, j)
                    out[vj] = y[vj % P, vj // P]

    return desc


_INTERLEAVES: set[str] = set()


def interleave_intrin(phases: int, valid: int, lanes: int) -> str:
    """The interleaving store out[P*i + r] = y[r, i] (u8, i < valid; rows of y `lanes` apart),
    registered on first use: P vector loads, zero-extensions, shifts and ors, one store of
    P*valid bytes."""
    name = f"qc_x86_dw_interleave_{phases}x{valid}_{lanes}"
    if name not in _INTERLEAVES:
        TensorIntrin.register(name, _interleave_desc(phases, valid, lanes),
                              _interleave_impl(phases, valid, lanes), override=True)
        _INTERLEAVES.add(name)
    return name


# --- the strategy --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DwPlan:
    """Shapes of one depthwise / grouped conv (module doc)."""

    n: int
    c: int
    h: int
    w: int
    o: int
    cg: int
    """Input channels per group."""
    og: int
    """Output channels per group."""
    kh: int
    kw: int
    stride: tuple[int, int]
    pad: tuple[int, int]
    dil_h: int
    oh: int
    ow: int
    lanes: int
    kgroup: int
    phases: int
    rows: int
    """Output rows per register tile (divides OH)."""
    vecs: int
    """Vectors of L lanes per phase and row in a tile."""
    valid: int
    """Lanes per phase that are output columns (<= vecs * L): a tile is P * valid columns."""

    @property
    def kwg(self) -> int:
        return math.ceil(self.kw / self.kgroup)

    @property
    def tile_lanes(self) -> int:
        """Lanes per phase and row of a tile (computed; `valid` of them are stored)."""
        return self.vecs * self.lanes

    @property
    def tile_w(self) -> int:
        return self.valid * self.phases

    @property
    def tiles(self) -> int:
        return math.ceil(self.ow / self.tile_w)

    @property
    def owp(self) -> int:
        return self.tiles * self.tile_w

    @property
    def taps(self) -> int:
        return self.cg * self.kh * self.kw

    @property
    def padded_hw(self) -> tuple[int, int]:
        """(Hp, Wq) of the padded input plane (Wq rounded up to 16 elements)."""
        hp = (self.oh - 1) * self.stride[0] + (self.kh - 1) * self.dil_h + 1
        # the last tile's last lane reads G * KWG elements from column
        # G * ((T - 1) * valid + tile_lanes - 1) + S * (P - 1)
        last = (self.tiles - 1) * self.valid + self.tile_lanes - 1
        wq = self.kgroup * (last + self.kwg) + self.stride[1] * (self.phases - 1)
        return hp, -(-wq // 16) * 16


def kernel_for(target: TargetPreset, w_shifted: np.ndarray) -> DwKernel | None:
    """The dot intrinsic for `target` that holds the shifted weights exactly (VNNI needs them
    in int8; the int16 pmaddwd kernels hold every w - zw)."""
    fam = target.schedule_family
    cands = {"x86-vnni": (DW_VNNI, DW_PMADDWD_16), "x86-avx512": (DW_PMADDWD_16,),
             "x86-avx2": (DW_PMADDWD_8,)}.get(fam, ())
    lo, hi = int(w_shifted.min(initial=0)), int(w_shifted.max(initial=0))
    for k in cands:
        if target.has(k.feature) and k.w_range[0] <= lo and hi <= k.w_range[1]:
            return k
    return None


def choose_rows(oh: int, accs: int, max_acc: int) -> int:
    """Output rows per tile: the largest divisor of OH with rows * accs <= max_acc
    (accs = accumulator vectors per row)."""
    return max(r for r in range(1, oh + 1) if oh % r == 0 and r * accs <= max_acc)


def choose_tile_lanes(ow: int, phases: int, lanes: int, max_acc: int) -> tuple[int, int]:
    """(vecs, valid): one tile spans the whole row when OW is a multiple of P and needs at most
    max_acc / P vectors per phase (OW = 56: 4 phases x 14 of 16 lanes, or 2 phases x 28 of
    32); else tiles of P * L columns (OW padded to whole tiles, the output copied out)."""
    if ow % phases == 0:
        v = ow // phases
        vecs = math.ceil(v / lanes)
        if vecs * phases <= max_acc:
            return vecs, v
    return 1, lanes


def plan_dw(xs: Sequence[int], ws: Sequence[int], groups: int, stride: Sequence[int],
            pad: Sequence[int], dil: Sequence[int], kern: DwKernel) -> DwPlan | None:
    n, c, h, w = xs
    o, cg, kh, kw = ws
    sh, sw = stride
    ph, pw = pad
    dh, dw = dil
    G = kern.kgroup
    if dw != 1 or G % sw or cg > MAX_GROUP_CHANNELS:
        return None
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        return None
    phases = G // sw
    max_acc = max_accumulators(kern)
    vecs, valid = choose_tile_lanes(ow, phases, kern.lanes, max_acc)
    return DwPlan(n, c, h, w, o, cg, o // groups, kh, kw, (sh, sw), (ph, pw), dh, oh, ow,
                  kern.lanes, G, phases, choose_rows(oh, phases * vecs, max_acc), vecs, valid)


def pack_dw_weight(w_shifted: np.ndarray, plan: DwPlan, dtype: str) -> np.ndarray:
    """[O][Cg][KH][KW] (zero-point-shifted) -> [O][Cg][KH][KWG][G], zero padded, as `dtype`."""
    o, cg, kh, kw = w_shifted.shape
    full = np.zeros((o, cg, kh, plan.kwg * plan.kgroup), dtype=np.int64)
    full[..., :kw] = w_shifted
    return np.ascontiguousarray(full.reshape(o, cg, kh, plan.kwg, plan.kgroup)).astype(dtype)


@register_strategy(DW_OPS, X86_FAMILIES)
def depthwise_packed(op: OpDef, sig: Sig, inputs: Sequence[Any], target: TargetPreset) -> Any:
    """Grouped conv2d (groups > 1, Cg <= MAX_GROUP_CHANNELS) with a constant weight: taps in
    the dot product's reduction, output positions in lanes (module doc).

    Stages: `pad` (x -> the zx-bordered plane xpad), `dot` [N][O][OH][T][P][LT] (the
    tensorizable reduction), `acc` (view: dot + corrections), `requant` (te_lib epilogue on
    the grid), `interleave` ([N][O][OH][OWp]: phases back to consecutive
    columns), `out` (the node's output, when OW is not a whole number of tiles).
    """
    from qcompiler.ops.conv import expand_spatial

    attrs = sig.attrs
    if attrs.groups <= 1:
        return None
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    w_data = te_lib.constant_value(w)
    if w_data is None or str(x.dtype) != "uint8":
        return None
    xt, wt = sig.in_types[0], sig.in_types[1]
    xq, wq = xt.qparams, wt.qparams
    assert xq is not None and wq is not None
    o = wt.shape[0]
    zws = np.broadcast_to(wq.zero_points_array(), (o,)).astype(np.int64)
    w_shifted = w_data.astype(np.int64) - zws.reshape(-1, 1, 1, 1)
    kern = kernel_for(target, w_shifted)
    if kern is None:
        return None
    plan = plan_dw(xt.shape, wt.shape, attrs.groups, expand_spatial(attrs.stride, 2),
                   expand_spatial(attrs.padding, 2), expand_spatial(attrs.dilation, 2), kern)
    if plan is None or plan.taps * 255 * 256 > 2**31 - 1:
        return None
    zx = int(xq.zp_value)
    corr_t = te_lib.constant((-zx * w_shifted.reshape(o, -1).sum(axis=1)).astype(np.int32),
                             "x86_dw_corr")

    N, C, H, W = plan.n, plan.c, plan.h, plan.w
    G, P, V, LT = plan.kgroup, plan.phases, plan.valid, plan.tile_lanes
    sh, sw = plan.stride
    ph, pw = plan.pad
    hp, wq_ = plan.padded_hw
    xdt = kern.x_dtype

    def pad_value(nn: Any, cc: Any, hh: Any, ww: Any) -> Any:
        ih, iw = hh - ph, ww - pw
        inside = te.all(ih >= 0, ih < H, iw >= 0, iw < W)
        return te.if_then_else(inside, x[nn, cc, ih, iw].astype(xdt), te.const(zx, xdt))

    xpad = te.compute((N, C, hp, wq_), pad_value, name=DW_PAD)
    wp = te_lib.constant(pack_dw_weight(w_shifted, plan, kern.w_dtype), "x86_dw_weight")
    rcg = te.reduce_axis((0, plan.cg), name="rcg")
    rkh = te.reduce_axis((0, plan.kh), name="rkh")
    rkg = te.reduce_axis((0, plan.kwg), name="rkg")
    rk = te.reduce_axis((0, G), name="rk")
    og, cgn = plan.og, plan.cg

    def dot_body(nn: Any, oc: Any, hh: Any, t: Any, r: Any, i: Any) -> Any:
        ci = oc // og * cgn + rcg if cgn > 1 or og > 1 else oc
        col = (t * V + i) * G + r * sw + rkg * G + rk
        xv = xpad[nn, ci, hh * sh + rkh * plan.dil_h, col].astype("int32")
        return te.sum(xv * wp[oc, rcg, rkh, rkg, rk].astype("int32"),
                      axis=[rcg, rkh, rkg, rk])

    ann = {ANN_KERNEL: kern.name, ANN_PHASES: P, ANN_ROWS: plan.rows, ANN_VALID: V,
           ANN_PAD_COLS: (pw, W)}
    dot = te.compute((N, o, plan.oh, plan.tiles, P, LT), dot_body, name=DW_DOT, attrs=ann)
    # NOTE: te.sum's `init` (the corrections as the accumulator's start) is dropped by
    # create_prim_func (the init block stores 0), hence the view
    acc = te.compute(dot.shape,
                     lambda nn, oc, hh, t, r, i: dot[nn, oc, hh, t, r, i] + corr_t[oc],
                     name=DW_ACC)
    req = requantize_epilogue(op, sig, acc, bias, None, 1, DW_REQUANT)
    owp, tw = plan.owp, plan.tile_w
    if P == 1:
        inter = te.compute((N, o, plan.oh, owp),
                           lambda nn, oc, hh, ww: req[nn, oc, hh, ww // tw, 0, ww % tw],
                           name=DW_INTERLEAVE)
    else:
        inter = te.compute(
            (N, o, plan.oh, owp),
            lambda nn, oc, hh, ww: req[nn, oc, hh, ww // tw, ww % P, ww % tw // P],
            name=DW_INTERLEAVE)
    if owp == plan.ow:
        return inter
    return te.compute((N, o, plan.oh, plan.ow), lambda nn, oc, hh, ww: inter[nn, oc, hh, ww],
                      name=DW_OUT)


# --- the schedule rule ---------------------------------------------------------------------------


def _register(cls: type[ScheduleRule]) -> type[ScheduleRule]:
    for op in DW_OPS:
        for fam in X86_FAMILIES:
            register_rule(op, fam)(cls)
    return cls


def kernel_by_name(name: str) -> DwKernel | None:
    return next((k for k in KERNELS if k.name == name), None)


@_register
class DepthwiseInt8X86(ScheduleRule):
    """The depthwise / grouped conv of `depthwise_packed`, tensorized. Strategy:

    1. inline the accumulator view (dot + corrections) into the requantize block;
    2. tile the dot [N][O][OH][T][P][LT]: rows by `rows`, lanes by vectors of L; loop order
       n, o, row-tile, t | cg, kh, kg | row, phase, vector, (lane, k): the reduction outside
       the unrolled rows x phases x vectors accumulators (the register tile), (lane, k)
       tensorized: one load + one `vpdpbusd` (or `vpmaddwd` + add) per accumulator and
       kernel-row tap group;
    3. the requantize at t, on the tile, vectorized along the lanes, the rest unrolled;
    4. the interleaving store right after it, on the same tile (tensorized: shifts, ors, one
       store of P*valid bytes), the copy to the node's output (when OW is not whole tiles)
       and the group's later element-wise nodes at the row tile;
    5. the padded input plane computed per output channel (it stays in L1), vectorized;
    6. one parallel loop over (n, o).
    """

    name = "depthwise_int8_x86"

    def apply(self, func: PrimFunc, target: TargetPreset) -> Schedule | None:
        opened = open_rule(func, DW_DOT)
        if opened is None:
            return None
        sch, dot, ann = opened
        kern = kernel_by_name(str(ann[ANN_KERNEL]))
        if kern is None or not target.has(kern.feature):
            return None
        P, rows, valid = int(ann[ANN_PHASES]), int(ann[ANN_ROWS]), int(ann[ANN_VALID])
        L = kern.lanes
        vec = vector_lanes(target)
        cores = target.num_cores

        # --- phases 1, 2: the dot's register tile drives the loops ---
        # NOTE: driven from the dot (the epilogue is computed at its tile loop): the
        # interleave reads `valid` of the tile's lanes, so region inference from its side would
        # shrink the tile below whole vectors
        acc = find_block(sch, DW_ACC)
        if acc is not None:
            sch.compute_inline(acc)
        req = find_block(sch, DW_REQUANT)
        assert req is not None
        n, oc, oh, t, d_r, d_lanes, cg, kh, kg, k = sch.get_loops(dot)
        lt = loop_extent(sch, d_lanes)
        assert lt is not None and lt % L == 0
        d_v, d_i = sch.split(d_lanes, [None, L])
        oho, d_ohi = sch.split(oh, [None, rows])
        sch.reorder(n, oc, oho, t, cg, kh, kg, d_ohi, d_r, d_v, d_i, k)

        # --- phase 3: the requantize on the tile ---
        sch.reverse_compute_at(req, t, preserve_unit_loops=True)

        # --- phase 4: interleave, output copy, epilogue nodes ---
        inter = find_block(sch, DW_INTERLEAVE)
        assert inter is not None
        sch.reverse_compute_at(inter, t, preserve_unit_loops=True)
        w_loop = sch.get_loops(inter)[-1]
        i_loop = w_loop if P > 1 else None
        epilogue: list[str] = []
        out = find_block(sch, DW_OUT)
        last = inter
        if out is not None:
            sch.reverse_compute_at(out, oho, preserve_unit_loops=True)
            epilogue.append(DW_OUT)
            last = out
        epilogue += compute_consumers_at(sch, last, oho)

        # --- phase 5: the padded plane per output channel ---
        pad = find_block(sch, DW_PAD)
        if pad is not None:
            sch.compute_at(pad, oc, preserve_unit_loops=True)

        # --- phase 6: parallel (n, o) ---
        ext = extents(sch, [n, oc])
        par = sch.fuse(n, oc)
        if cores > 1 and ext is not None and math.prod(ext) > 1:
            sch.parallel(par)

        init = sch.decompose_reduction(dot, cg)
        attempt(sch, lambda s: s.vectorize(s.get_loops(init)[-1]))
        sch.unroll(d_ohi)
        sch.unroll(d_r)
        sch.unroll(d_v)
        if pad is not None:
            _schedule_pad(sch, pad, tuple(int(v) for v in ann[ANN_PAD_COLS]))
        vectorize_inner(sch, sch.get_loops(req)[-1], vec)
        # the requantize's rows, tile, phases and vectors unrolled: each accumulator is
        # requantized where it is (a register), not stored and reloaded
        req_loops = sch.get_loops(req)
        for lp in req_loops[len(req_loops) - 5:len(req_loops) - 1]:
            attempt(sch, lambda s_, lp=lp: s_.unroll(lp))
        if P == 1:
            vectorize_inner(sch, sch.get_loops(inter)[-1], vec)
        vectorize_blocks(sch, epilogue, 64)
        sch.tensorize(d_i, kern.name)
        if i_loop is not None:
            sch.tensorize(i_loop, interleave_intrin(P, valid, lt))
        return sch


def _schedule_pad(sch: Schedule, block: Any, cols: tuple[int, ...]) -> None:
    """The padded plane's rows in three column ranges (left padding, the input row, right
    padding), so that the middle one is a plain vector copy (no per-lane selects or masked
    loads), in vectorized pieces of at most 64 columns."""
    loop = sch.get_loops(block)[-1]
    ext = loop_extent(sch, loop)  # the columns the dot reads (compute_at), <= the plane's
    if ext is None:
        return
    left, mid = min(cols[0], ext), min(cols[1], max(ext - cols[0], 0))
    sizes = []
    for c in (left, mid, ext - left - mid):
        # NOTE: pieces of at most 64 (a partition does not start at 0, so it cannot be split
        # later): LLVM turned a 112-byte copy whose load is conditional on the row into
        # byte-by-byte inserts (MobileNetV2's 32 @112: 17 GMAC/s)
        sizes += [64] * (c // 64) + ([c % 64] if c % 64 else [])
    parts = sch.loop_partition(loop, [*sizes[:-1], None]) if len(sizes) > 1 else [loop]
    for part in parts:
        attempt(sch, lambda t, lp=part: t.vectorize(lp))


__all__ = [
    "DW_OPS",
    "DW_PMADDWD_8",
    "DW_PMADDWD_16",
    "DW_VNNI",
    "DepthwiseInt8X86",
    "DwKernel",
    "DwPlan",
    "depthwise_packed",
    "interleave_intrin",
    "kernel_for",
    "pack_dw_weight",
    "plan_dw",
]
