"""dense_int8_x86: the packed linear of `strategies.dense_packed`, tensorized.

Applies only to functions with the strategy's blocks, and only when the target has the
intrinsic's feature (see conv2d_int8.py).
"""

from __future__ import annotations

from qcompiler.codegen.rule import ScheduleRule, register_rule
from qcompiler.codegen.x86.intrin import intrinsic_by_name
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
    ANN_INTRIN,
    ANN_TILE_M,
    ANN_TILE_N,
    DENSE_ACC,
    DENSE_DOT,
    DENSE_OUT,
    DENSE_REQUANT,
    DENSE_XSUM,
    X86_FAMILIES,
)
from qcompiler.lowering.tvm_compat import PrimFunc, Schedule, block_info, child_blocks
from qcompiler.target import TargetPreset

DENSE_OPS = ("qnn.linear", "qnn.linear_relu", "qnn.linear_leaky_relu", "qnn.linear_tanh")


def _register(cls: type[ScheduleRule]) -> type[ScheduleRule]:
    for op in DENSE_OPS:
        for fam in X86_FAMILIES:
            register_rule(op, fam)(cls)
    return cls


@_register
class DenseInt8X86(ScheduleRule):
    """Packed linear on x86. Strategy:

    1. inline the accumulator view (dot + zero-point corrections) into the requantize block;
    2. tile the requantize block's padded grid [Mp][Np]: mr rows x nr channel vectors
       (recipe 3: 4 x 2 reached the vpdpbusd peak on Zen 4), loop order column-tile, row-tile:
       the column tile's weight panel (nr * 16 * K bytes) stays in cache while the row tiles
       stream past it;
    3. the dot's tile computed at the row-tile loop (k-group | rows, column vectors, lane, g),
       the requantize epilogue (and the group's later element-wise nodes) right after it,
       vectorized over the channels;
    4. one parallel loop over (column tile, row tile): batch 1 splits the columns, which is
       what a weight-bandwidth-bound GEMV needs;
    5. zero-init split out, tile loops unrolled;
    6. the packing stage, the row sums (weight zero points) and the reshape as plain loops;
    7. (lane, g) tensorized.
    """

    name = "dense_int8_x86"

    def apply(self, func: PrimFunc, target: TargetPreset) -> Schedule | None:
        opened = open_rule(func, DENSE_DOT)
        if opened is None:
            return None
        sch, dot, ann = opened
        intrin = intrinsic_by_name(str(ann[ANN_INTRIN]))
        if not target.has(intrin.feature):
            return None
        mr, nr = int(ann[ANN_TILE_M]), int(ann[ANN_TILE_N])
        lanes = vector_lanes(target)
        cores = target.num_cores

        # --- phase 1: the accumulator view into the epilogue ---
        acc = find_block(sch, DENSE_ACC)
        if acc is not None:
            sch.compute_inline(acc)

        # --- phase 2: tile the epilogue's grid [Mp][Np] (dot computed per tile, see conv) ---
        req = find_block(sch, DENSE_REQUANT)
        assert req is not None
        m, o = sch.get_loops(req)
        mo, mi = sch.split(m, [None, mr])
        oo, oi = sch.split(o, [None, nr * intrin.lanes])
        sch.reorder(oo, mo, mi, oi)
        vectorize_inner(sch, oi, lanes)

        # --- phase 3: the register tile of the dot ---
        sch.compute_at(dot, mo, preserve_unit_loops=True)
        rows, jb, lane, kb, g = sch.get_loops(dot)[-5:]
        sch.reorder(kb, rows, jb, lane, g)
        done = {DENSE_DOT, DENSE_REQUANT}
        epilogue: list[str] = []
        out = find_block(sch, DENSE_OUT)
        if out is not None and attempt(sch, lambda t: t.reverse_compute_at(out, mo)):
            epilogue = [DENSE_OUT, *compute_consumers_at(sch, out, mo)]
        elif out is None:
            epilogue = compute_consumers_at(sch, req, mo)
        done.update(epilogue)

        # --- phase 4: parallel outer loop ---
        ext = extents(sch, [oo, mo])
        par = sch.fuse(oo, mo)
        if cores > 1 and ext is not None and ext[0] * ext[1] > 1:
            sch.parallel(par)

        # --- phase 5: init, unroll (tensorize last: see conv2d_int8.py) ---
        init = sch.decompose_reduction(dot, kb)
        attempt(sch, lambda t: t.vectorize(t.get_loops(init)[-1]))
        sch.unroll(rows)
        sch.unroll(jb)

        # --- phase 6: the other stages ---
        xsum = find_block(sch, DENSE_XSUM)
        if xsum is not None:
            done.add(DENSE_XSUM)
            attempt(sch, lambda t: t.decompose_reduction(xsum, t.get_loops(xsum)[-1]))
        for b in child_blocks(sch):
            if block_info(sch, b)[0] not in done:
                schedule_spatial(sch, b, cores, lanes)
        vectorize_blocks(sch, epilogue, lanes)
        sch.tensorize(lane, intrin.name)
        return sch


__all__ = ["DENSE_OPS", "DenseInt8X86"]
