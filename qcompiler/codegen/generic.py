"""Generic schedule rules, one per `schedule_kind`: always apply, always correct, never slow.

They see whole kernel groups (a conv followed by its requantize epilogue is one PrimFunc with
several blocks), so they work block by block:

    phase 1  inline spatial blocks whose consumers are all spatial (element-wise chains
             collapse into one loop nest); producers of a reduction stay materialised, so
             they are not recomputed for every reduction step
    phase 2  every reduction block: fuse the outer spatial loops and run them in parallel,
             keep the reduction loops innermost in their original order, compute spatial
             consumers (the epilogue) under the parallel loop, split off the init
    phase 3  every other spatial block: parallel outer loops, vectorize the innermost loop

Why no more: the generic rules must hold for any op an engineer lowers, so they use no
tensor intrinsics and no tiling. Reordering or splitting a reduction (rfactor, vectorized
reduction) would change the summation order of float reductions and break bit-exactness; the
innermost contiguous reduction loop is left to LLVM, which vectorizes integer sums itself
(recipe 2: ~38 GMAC/s for a naive u8 x s8 dense). Target rules (codegen/x86, codegen/arm)
replace these for the ops that matter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from qcompiler.codegen.rule import ScheduleRule, register_rule
from qcompiler.lowering.tvm_compat import (
    ITER_REDUCE,
    ITER_SPATIAL,
    BlockRV,
    PrimFunc,
    Schedule,
    ScheduleError,
    block_info,
    child_blocks,
    get_block,
    loop_extent,
    new_schedule,
)
from qcompiler.target import TargetPreset

PARALLEL_MIN_WORK = 1 << 14
"""Loop iterations (elements x reduction extent) below which a parallel loop costs more in
thread-pool wake-up than it saves; such kernels run on the calling thread."""


def vector_lanes(target: TargetPreset) -> int:
    """32-bit lanes of the widest vector register the target may use."""
    if target.has("avx512f"):
        return 16
    if target.has("avx2") or target.has("avx"):
        return 8
    return 4


class _Plan:
    def __init__(self, target: TargetPreset) -> None:
        self.lanes = vector_lanes(target)
        self.cores = target.num_cores


def _is_spatial(kinds: list[int]) -> bool:
    return all(k == ITER_SPATIAL for k in kinds)


def _root_blocks(sch: Schedule) -> list[tuple[str, BlockRV, list[int]]]:
    out = []
    for b in child_blocks(sch):
        name, kinds, _ = block_info(sch, b)
        out.append((name, b, kinds))
    return out


def _output_block_names(sch: Schedule) -> set[str]:
    root = get_block(sch, "root")
    return {block_info(sch, b)[0] for b in sch.get_output_blocks(root)}


def attempt(sch: Schedule, step: Callable[[Schedule], object]) -> bool:
    """Apply an optional step if it is legal; True when applied.

    NOTE: TVM refuses some steps with a ScheduleError and others with internal checks
    (ValueError, "TensorRegion pattern match failed"), which need not leave the state intact, so
    the step runs on a copy first (`Schedule.copy` keeps the block and loop handles valid).
    """
    try:
        step(sch.copy())
    except (ScheduleError, ValueError, RuntimeError):
        return False
    step(sch)
    return True


# --- phase 1: inline element-wise producers ------------------------------------------------------


def _inline_spatial_chains(sch: Schedule) -> None:
    outputs = _output_block_names(sch)
    for name, block, kinds in _root_blocks(sch):
        if name in outputs or not _is_spatial(kinds):
            continue
        consumers = sch.get_consumers(block)
        if not consumers or not all(_is_spatial(block_info(sch, c)[1]) for c in consumers):
            continue
        # may be refused, e.g. when the consumer reads it through a non-affine index
        attempt(sch, lambda t, b=block: t.compute_inline(b))


# --- phase 2: reductions -------------------------------------------------------------------------


def _schedule_reduction(
    sch: Schedule, block: BlockRV, kinds: list[int], plan: _Plan, done: set[str]
) -> None:
    loops = sch.get_loops(block)
    ns = sum(1 for k in kinds if k == ITER_SPATIAL)
    # TE builds one loop per iter var, spatial first; anything else we leave alone
    if (
        len(loops) != len(kinds)
        or kinds != sorted(kinds, key=lambda k: k != ITER_SPATIAL)
        or (any(k not in (ITER_SPATIAL, ITER_REDUCE) for k in kinds))
    ):
        return
    extents = [loop_extent(sch, lp) for lp in loops]
    if any(e is None for e in extents) or ns == 0:
        return
    ext: list[int] = [int(e) for e in extents if e is not None]
    work = math.prod(ext)

    # --- phase 2a: fuse the outer spatial loops and parallelize them ---
    if ns == 1:
        k_par = 1
    else:  # keep the innermost spatial loop for the epilogue's vectors, when threads have enough
        k_par = ns - 1 if math.prod(ext[: ns - 1]) >= plan.cores else ns
    par = sch.fuse(*loops[:k_par]) if k_par > 1 else loops[0]
    par_extent = math.prod(ext[:k_par])
    if plan.cores > 1 and work >= PARALLEL_MIN_WORK and par_extent > 1:
        sch.parallel(par)

    # --- phase 2b: the epilogue runs under the parallel loop, right after its tile ---
    for consumer in sch.get_consumers(block):
        cname, ckinds, _ = block_info(sch, consumer)
        if not _is_spatial(ckinds):
            continue
        if not attempt(sch, lambda t, c=consumer: t.reverse_compute_at(c, par)):
            continue
        done.add(cname)
        inner = sch.get_loops(consumer)[1:]  # below `par`, the block's outermost loop
        extents = [loop_extent(sch, lp) for lp in inner]
        if inner and all(e is not None for e in extents):
            fused = sch.fuse(*inner) if len(inner) > 1 else inner[0]
            _vectorize_loop(
                sch, fused, math.prod(int(e) for e in extents if e is not None), plan.lanes
            )

    # --- phase 2c: split the zero-init out of the reduction loops ---
    loops = sch.get_loops(block)
    first_reduce = len(loops) - (len(kinds) - ns)
    attempt(sch, lambda t: t.decompose_reduction(block, loops[first_reduce]))


# --- phase 3: spatial blocks ---------------------------------------------------------------------


def _vectorize_loop(sch: Schedule, loop: Any, extent: int, lanes: int) -> None:
    """Vectorize `loop` in whole vectors of `lanes`; a remainder becomes its own loop.

    NOTE: the vectorization must be explicit: LLVM's loop vectorizer does not vectorize across
    `llvm.arithmetic.fence`, which te_lib puts on every separately rounded float product.
    The remainder loop is vectorized when it is a power of two wide, else left scalar.
    """
    main = extent - extent % lanes
    if main == 0:
        return
    tail_loop = None
    if main != extent:
        loop, tail_loop = sch.loop_partition(loop, [main, None])
    if main == lanes:
        sch.vectorize(loop)
    else:
        _, inner = sch.split(loop, [None, lanes])
        sch.vectorize(inner)
    if tail_loop is not None:
        _vectorize_tail(sch, tail_loop, extent - main)


def _vectorize_tail(sch: Schedule, loop: Any, extent: int) -> None:
    """A remainder loop (it does not start at 0, so it cannot be split): vectorized whole when
    it is a power of two up to 64 lanes wide, else left scalar."""
    if 1 < extent <= 64 and extent & (extent - 1) == 0:
        sch.vectorize(loop)


def _schedule_spatial(sch: Schedule, block: BlockRV, plan: _Plan) -> None:
    loops = sch.get_loops(block)
    if not loops or len(sch.get_child_blocks(loops[0])) != 1:
        return  # no loops, or they are shared with another block (placed by phase 2)
    extents = [loop_extent(sch, lp) for lp in loops]
    if any(e is None for e in extents):
        return
    ext = [int(e) for e in extents if e is not None]
    total = math.prod(ext)
    if total == 0:
        return
    threads = plan.cores > 1 and total >= PARALLEL_MIN_WORK

    # --- phase 3a: the vector loop: the innermost loops, fused until a few vectors long ---
    k = len(loops) - 1
    inner_ext = ext[-1]
    while k > 0 and inner_ext < 2 * plan.lanes:
        k -= 1
        inner_ext *= ext[k]
    outer = list(loops[:k])
    inner = sch.fuse(*loops[k:]) if len(loops) - k > 1 else loops[k]

    # --- phase 3b: one parallel loop over everything outside it ---
    if threads and outer:
        par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if math.prod(ext[:k]) > 1:
            sch.parallel(par)
    elif threads:
        # one long loop: parallel chunks of whole vectors, the remainder after them
        chunk = max(plan.lanes, total // (plan.cores * 4) // plan.lanes * plan.lanes)
        main = total - total % chunk
        if main != total:
            inner, rest = sch.loop_partition(inner, [main, None])
            _vectorize_tail(sch, rest, total - main)
        if main // chunk > 1:
            par, inner = sch.split(inner, [None, chunk])
            sch.parallel(par)
        inner_ext = chunk if main // chunk > 1 else main

    # --- phase 3c: vectorize it ---
    _vectorize_loop(sch, inner, inner_ext, plan.lanes)


# --- the rules -----------------------------------------------------------------------------------


def schedule_generic(func: PrimFunc, target: TargetPreset) -> Schedule:
    """Phases 1-3 on every block of `func` (see the module docstring)."""
    sch = new_schedule(func)
    plan = _Plan(target)
    _inline_spatial_chains(sch)
    done: set[str] = set()
    blocks = _root_blocks(sch)
    for name, block, kinds in blocks:
        if not _is_spatial(kinds):
            done.add(name)
            _schedule_reduction(sch, block, kinds, plan, done)
    for name, block, kinds in blocks:  # blocks phase 2 created (the inits) are not in here
        if name not in done and _is_spatial(kinds):
            _schedule_spatial(sch, block, plan)
    return sch


@register_rule("injective")
class GenericInjective(ScheduleRule):
    """Element-wise kernels. Strategy:

    1. inline element-wise producers into their consumers (one loop nest per output);
    2. vectorize the innermost loop when its extent is a multiple of the vector lanes
       (else leave it serial for LLVM's vectorizer, which handles the tail);
    3. fuse the remaining loops into one parallel loop when the kernel has enough work.

    Fusing *all* loops before splitting off vectors was rejected: the flattened index then
    goes through div/mod per lane wherever an operand broadcasts (per-channel scales).
    """

    name = "generic_injective"

    def apply(self, func: PrimFunc, target: TargetPreset) -> Schedule | None:
        return schedule_generic(func, target)


@register_rule("reduction")
@register_rule("conv")
@register_rule("dense")
class GenericReduction(ScheduleRule):
    """Reductions (conv, dense, pooling, sums) with their fused epilogues. Strategy:

    1. inline element-wise chains, but not into a reduction (no recomputation per step);
    2. fuse the outer spatial loops of each reduction into one parallel loop, keeping the
       innermost spatial loop when the outer ones give every thread work;
    3. `reverse_compute_at` the element-wise consumers (requantize, activation) under that
       loop so the int32 accumulator tile never leaves cache, and vectorize their inner loop;
    4. decompose the reduction's init; the reduction loops stay innermost and in order.

    No rfactor, no reduction splitting: float sums must keep their order to stay bit-exact.
    """

    name = "generic_reduction"

    def apply(self, func: PrimFunc, target: TargetPreset) -> Schedule | None:
        return schedule_generic(func, target)


__all__ = [
    "PARALLEL_MIN_WORK",
    "GenericInjective",
    "GenericReduction",
    "attempt",
    "schedule_generic",
    "vector_lanes",
]
