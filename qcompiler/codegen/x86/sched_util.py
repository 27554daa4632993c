"""Small schedule helpers shared by the x86 rules (conv2d, dense, depthwise); the generic
rules' `attempt`, `vector_lanes` and `PARALLEL_MIN_WORK` are re-exported, not copied."""

from __future__ import annotations

import math
from typing import Any

from qcompiler.codegen.generic import PARALLEL_MIN_WORK, attempt, vector_lanes
from qcompiler.lowering.tvm_compat import (
    ITER_SPATIAL,
    BlockRV,
    Schedule,
    block_info,
    child_blocks,
    loop_extent,
)


def find_block(sch: Schedule, name: str) -> BlockRV | None:
    """The block named `name`, or None."""
    for b in child_blocks(sch):
        if block_info(sch, b)[0] == name:
            return b
    return None


def open_rule(func: Any, block: str) -> tuple[Schedule, BlockRV, Any] | None:
    """(schedule, the block named `block`, its annotations) for a rule's `apply`, or None when
    the function has no such block (the strategy did not build it: not this rule's kernel)."""
    from qcompiler.lowering.tvm_compat import new_schedule

    sch = new_schedule(func)
    b = find_block(sch, block)
    if b is None:
        return None
    return sch, b, sch.get(b).annotations


def extents(sch: Schedule, loops: list[Any]) -> list[int] | None:
    ext = [loop_extent(sch, lp) for lp in loops]
    if any(e is None for e in ext):
        return None
    return [int(e) for e in ext if e is not None]


def vectorize_inner(sch: Schedule, loop: Any, lanes: int) -> None:
    """Vectorize `loop` in whole vectors of `lanes` (the whole loop when it is shorter); a
    remainder becomes its own loop, vectorized when it is a power of two wide (as generic.py
    does)."""
    ext = loop_extent(sch, loop)
    if ext is None or ext <= 1:
        return
    if ext <= lanes:
        attempt(sch, lambda t: t.vectorize(loop))
        return
    main = ext - ext % lanes
    tail = None
    if main != ext:
        parts = sch.loop_partition(loop, [main, None])
        loop, tail = parts[0], parts[1]
    _, inner = sch.split(loop, [None, lanes])
    attempt(sch, lambda t: t.vectorize(inner))
    rest = ext - main
    if tail is not None and rest & (rest - 1) == 0:
        attempt(sch, lambda t: t.vectorize(tail))


def schedule_spatial(sch: Schedule, block: BlockRV, cores: int, lanes: int) -> None:
    """A stand-alone element-wise stage: one parallel outer loop, vectorized inner loop."""
    loops = sch.get_loops(block)
    ext = extents(sch, loops) if loops else None
    if not loops or ext is None or len(sch.get_child_blocks(loops[0])) != 1:
        return
    if len(loops) > 1:
        inner = loops[-1]
        vectorize_inner(sch, inner, lanes)
        outer = loops[:-1]
        if cores > 1 and math.prod(ext) >= PARALLEL_MIN_WORK and math.prod(ext[:-1]) > 1:
            par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
            sch.parallel(par)
    else:
        vectorize_inner(sch, loops[0], lanes)


def is_spatial(sch: Schedule, block: BlockRV) -> bool:
    return all(k == ITER_SPATIAL for k in block_info(sch, block)[1])


def compute_consumers_at(sch: Schedule, block: BlockRV, loop: Any) -> list[str]:
    """Move the element-wise consumers of `block` (and theirs, transitively: a group's
    epilogue nodes) under `loop`. Returns their names (vectorize them last:
    `vectorize_blocks`)."""
    moved: list[str] = []
    frontier = [block]
    while frontier:
        b = frontier.pop()
        for c in sch.get_consumers(b):
            name = block_info(sch, c)[0]
            if name in moved or not is_spatial(sch, c):
                continue
            if not attempt(sch, lambda t, c=c: t.reverse_compute_at(c, loop)):
                continue
            moved.append(name)
            frontier.append(c)
    return moved


def vectorize_blocks(sch: Schedule, names: list[str], lanes: int) -> None:
    """Vectorize the innermost loop of each named block (`vectorize_inner`).

    NOTE: run it after every other step: a remainder loop (`loop_partition`) duplicates the
    block, and handles to it (and its loops) are invalid afterwards.
    """
    for name in names:
        b = find_block(sch, name)
        if b is not None:
            vectorize_inner(sch, sch.get_loops(b)[-1], lanes)


__all__ = [
    "PARALLEL_MIN_WORK",
    "attempt",
    "compute_consumers_at",
    "extents",
    "find_block",
    "is_spatial",
    "open_rule",
    "schedule_spatial",
    "vector_lanes",
    "vectorize_blocks",
    "vectorize_inner",
]
