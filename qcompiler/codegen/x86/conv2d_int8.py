"""conv2d_int8_x86: the packed conv of `strategies.conv2d_packed` (both layouts), tensorized.

Registered for the x86 families on every conv op the strategy covers. It applies only to a
function that has the strategy's blocks (else None: the generic rule schedules the generic
lowering) and only when the target has the intrinsic's feature (a VNNI kernel compiled for a
CPU without avx512vnni kills the process inside LLVM).
"""

from __future__ import annotations

import math

from qcompiler.codegen.rule import ScheduleRule, register_rule
from qcompiler.codegen.x86.intrin import DotIntrin, intrinsic_by_name
from qcompiler.codegen.x86.intrin_u8 import intrinsic_by_name_u8
from qcompiler.codegen.x86.sched_util import (
    attempt,
    compute_consumers_at,
    extents,
    find_block,
    open_rule,
    schedule_spatial,
    vector_lanes,
    vectorize_blocks,
    vectorize_inner,
)
from qcompiler.codegen.x86.strategies import (
    ANN_FLAT,
    ANN_INTRIN,
    ANN_OUT_PACKED,
    ANN_PACK_BYTES,
    ANN_POS_OUTER,
    ANN_TILE_M,
    ANN_TILE_N,
    CONV_ACC,
    CONV_DOT,
    CONV_FOLD,
    CONV_OUT,
    CONV_PACK,
    CONV_REQUANT,
    CONV_RESIDUAL,
    CONV_XSUM,
    X86_FAMILIES,
)
from qcompiler.lowering.tvm_compat import PrimFunc, Schedule, block_info, child_blocks
from qcompiler.target import TargetPreset

CONV_OPS = ("qnn.conv2d", "qnn.conv2d_relu", "qnn.conv2d_add", "qnn.conv2d_add_relu",
            "x86.conv2d_packed")


def _register(cls: type[ScheduleRule]) -> type[ScheduleRule]:
    for op in CONV_OPS:
        for fam in X86_FAMILIES:
            register_rule(op, fam)(cls)
    return cls


@_register
class Conv2dInt8X86(ScheduleRule):
    """Packed conv2d on x86. Strategy:

    1. inline the NHWC views (accumulator + corrections, residual) into the requantize block;
    2. tile the requantize block's padded grid (NHWC when lanes are channels, NCHW when they
       are positions): OW by `ow_t`, channels by `oc_t` (the strategy padded both to whole
       tiles), loop order n, oc-tile, oh, ow-tile, or n, oh, ow-tile, oc-tile when all weights
       fit in L1 (`ANN_POS_OUTER`: the activations of a tile are then reused from L1);
    3. compute the dot's tile at the ow-tile loop, in the order kh, kw, ic-group | oc, ow,
       lane, g: the accumulators of the tile (16 zmm for VNNI) stay in registers for the whole
       reduction, each loaded vector feeds several instructions; the epilogue (requantize,
       the NCHW write-back, the kernel group's later element-wise nodes) runs right after it
       on the same tile, so the int32 tile never goes to memory; requantize is vectorized
       along the lanes;
    4. one parallel loop over the outer tile loops;
    5. zero-init split out of the reduction, oc/ow unrolled (constant register indices);
    6. the packing stage and the activation sums (weight zero points only) as parallel loops
       before it;
    7. (lane, g) tensorized into one `vpdpbusd` (or `vpmaddwd` + add).

    Rejected: computing the accumulator tile into a separate cache buffer (`cache_write`, as
    recipe 4 does for a bare conv): the epilogue consumes the tile in place; inlining the pad
    into the dot (an `if_then_else` inside the tensorized load breaks the intrinsic match).
    """

    name = "conv2d_int8_x86"

    def apply(self, func: PrimFunc, target: TargetPreset) -> Schedule | None:
        opened = open_rule(func, CONV_DOT)
        if opened is None:
            return None
        sch, dot, ann = opened
        intrin = _intrinsic(str(ann[ANN_INTRIN]))
        if not target.has(intrin.feature):
            return None
        ow_t, oc_t = int(ann[ANN_TILE_M]), int(ann[ANN_TILE_N])
        lanes = vector_lanes(target)
        cores = target.num_cores

        # --- phase 1: views into the epilogue ---
        for name in (CONV_ACC, CONV_RESIDUAL):
            b = find_block(sch, name)
            if b is not None:
                sch.compute_inline(b)

        # --- phase 2: tile the epilogue's grid (NHWC for nchwc, NCHW for nchw) ---
        # NOTE: tiles are driven from the consumer: the dot is computed *at* the epilogue's
        # tile loop (compute_at). The other way round (reverse_compute_at of the epilogue under
        # the dot's loop) needs every producer of the epilogue under that loop, which the
        # activation sums of weight zero points are not.
        req = find_block(sch, CONV_REQUANT)
        assert req is not None
        nchw = intrin.weight_broadcast
        flat = bool(int(ann.get(ANN_FLAT, 0)))
        if nchw:
            n, oc, oh, ow = sch.get_loops(req)
            oco, oci = sch.split(oc, [None, oc_t])
        else:
            n, oh, ow, oc = sch.get_loops(req)
            oco, oci = sch.split(oc, [None, oc_t * intrin.lanes])
        # loop order: channel tiles outside (each tile's weights are read once, the
        # activations once per channel tile), or, when all weights fit in L1, positions
        # outside (`ANN_POS_OUTER`: an activation tile stays in L1 for every channel tile)
        pos_outer = bool(int(ann.get(ANN_POS_OUTER, 0)))
        if flat:  # positions = the fused (oh, ow), tiled by ow_t (which divides OH * OW)
            owo, owi = sch.split(sch.fuse(oh, ow), [None, ow_t])
            outer = [n, owo, oco] if pos_outer else [n, oco, owo]
            par_loops = outer[:2] if pos_outer else outer
        else:
            owo, owi = sch.split(ow, [None, ow_t])
            outer = [n, oh, owo, oco] if pos_outer else [n, oco, oh, owo]
            par_loops = outer[:3]
        sch.reorder(*outer, *((oci, owi) if nchw else (owi, oci)))
        tile_loop = outer[-1]
        vectorize_inner(sch, owi if nchw else oci, lanes)

        # --- phase 3: the register tile of the dot, computed per epilogue tile ---
        sch.compute_at(dot, tile_loop, preserve_unit_loops=True)
        if flat:
            _, ob, ow_l, ic, g = sch.get_loops(dot)[-5:]
            ow_l, lane = sch.split(ow_l, [None, intrin.lanes])
            kh = ic
            sch.reorder(ic, ob, ow_l, lane, g)
        elif nchw:
            _, ob, _, ow_l, kh, kw, ic, g = sch.get_loops(dot)[-8:]
            ow_l, lane = sch.split(ow_l, [None, intrin.lanes])
            sch.reorder(kh, kw, ic, ob, ow_l, lane, g)
        else:
            _, ob, _, ow_l, lane, kh, kw, ic, g = sch.get_loops(dot)[-9:]
            sch.reorder(kh, kw, ic, ob, ow_l, lane, g)
        done = {CONV_DOT, CONV_REQUANT}
        last = req
        epilogue: list[str] = []
        out = find_block(sch, CONV_OUT)
        # NOTE: an NCHW4c output gathers 4 channels per word; under a tile of fewer (or not a
        # multiple of 4) channels, reverse_compute_at accepts it but reads channels the tile
        # has not computed yet (wrong values, measured): then it runs after the whole grid
        tile_channels = oc_t if nchw else oc_t * intrin.lanes
        if int(ann.get(ANN_OUT_PACKED, 0)) and tile_channels % 4:
            out = None
        elif out is not None:
            sch.reverse_compute_at(out, tile_loop)
            epilogue.append(CONV_OUT)
            last = out
        if out is not None or not int(ann.get(ANN_OUT_PACKED, 0)):
            epilogue += compute_consumers_at(sch, last, tile_loop)
        done.update(epilogue)

        # --- phase 4: parallel outer loop ---
        ext = extents(sch, par_loops)
        par = sch.fuse(*par_loops)
        if cores > 1 and ext is not None and math.prod(ext) > 1:
            sch.parallel(par)

        # --- phase 5: init, unroll (tensorize comes last: NOTE Schedule.copy, which every
        # optional step tries first, fails on a schedule holding a tensorized block) ---
        init = sch.decompose_reduction(dot, kh)
        attempt(sch, lambda t: t.vectorize(t.get_loops(init)[-1]))
        sch.unroll(ow_l)
        sch.unroll(ob)

        # --- phase 6: packing and activation sums ---
        pack = find_block(sch, CONV_PACK)
        if pack is not None:
            done.add(CONV_PACK)
            _schedule_pack(sch, pack, cores, lanes)
        xsum = find_block(sch, CONV_XSUM)
        if xsum is not None:
            done.add(CONV_XSUM)
            _schedule_xsum(sch, xsum, cores)
        fold = find_block(sch, CONV_FOLD)
        if fold is not None:
            done.add(CONV_FOLD)
            _schedule_fold(sch, fold, cores, lanes)
        for b in child_blocks(sch):
            if block_info(sch, b)[0] not in done:
                schedule_spatial(sch, b, cores, lanes)
        vectorize_blocks(sch, epilogue, lanes)
        sch.tensorize(lane, intrin.name)
        return sch


def _intrinsic(name: str) -> DotIntrin:
    return intrinsic_by_name_u8(name) or intrinsic_by_name(name)


def _schedule_pack(sch: Schedule, block: object, cores: int, lanes: int) -> None:
    """Activation words [N][ICB][Hp][(S)][Wp] (or [N][ICB][OH * OW]): parallel over (n, icb,
    h); each row is whole vectors (the strategy rounds Wp up), loaded contiguously from the
    NCHW input. NCHW4c bytes ([...][G], `ANN_PACK_BYTES`): the same with (Wp, G) fused, a
    row copy in 64-byte vectors."""
    loops = sch.get_loops(block)
    if int(sch.get(block).annotations.get(ANN_PACK_BYTES, 0)):
        loops = [*loops[:-2], sch.fuse(loops[-2], loops[-1])]
        lanes *= 4
    ext = extents(sch, loops)
    if ext is None:
        return
    k = min(3, len(loops) - 1)  # the flat 1x1 packing is [N][ICB][OH * OW]
    par = sch.fuse(*loops[:k])
    if cores > 1 and math.prod(ext[:k]) > 1 and math.prod(ext) > 1024:
        sch.parallel(par)
    vectorize_inner(sch, loops[-1], max(16, lanes))


def _schedule_fold(sch: Schedule, block: object, cores: int, lanes: int) -> None:
    """Folded taps [N][J][Hp][OWp] (strategies `_fold_taps`): parallel over (n, h), the J
    groups unrolled (each group's taps, shifts and phases become constants), vectorized along
    the output columns."""
    n, j, hh, ww = sch.get_loops(block)
    ext = extents(sch, [n, j, hh, ww])
    sch.reorder(n, hh, j, ww)
    par = sch.fuse(n, hh)
    if cores > 1 and ext is not None and math.prod(ext) > 1024:
        sch.parallel(par)
    sch.unroll(j)
    vectorize_inner(sch, ww, lanes)


def _schedule_xsum(sch: Schedule, block: object, cores: int) -> None:
    """Activation sums [N][OH][OWp] (weight zero points only): parallel over (n, oh), the
    reduction innermost (integer sums: any order is exact)."""
    loops = sch.get_loops(block)
    ext = extents(sch, loops)
    par = sch.fuse(loops[0], loops[1])
    if cores > 1 and ext is not None and ext[0] * ext[1] > 1:
        sch.parallel(par)
    attempt(sch, lambda t: t.decompose_reduction(block, t.get_loops(block)[2]))


__all__ = ["CONV_OPS", "Conv2dInt8X86"]
