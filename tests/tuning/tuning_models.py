"""Tiny models for the tuning tests (also CLI entry points: `tuning_models:pool_graph`, with tests/tuning on sys.path)."""

from __future__ import annotations

import numpy as np

from qcompiler.ir import Builder, QParams, TensorType, u8
from qcompiler.ir.graph import Graph
from qcompiler.ops.pool import AvgPoolAttrs

SHAPE = (1, 8, 12, 12)


def avg_pool_graph() -> Graph:
    """u8 input -> qnn.avg_pool2d 3x3, stride 1, pad 1: one integer-reduction kernel that the
    generic rules schedule (no hand rule), so `tune` picks it by default."""
    b = Builder("tiny_pool")
    x = b.input("x", TensorType(SHAPE, u8, QParams.per_tensor(0.05, 10)))
    y = b.op("qnn.avg_pool2d", [x], AvgPoolAttrs((3, 3), (1, 1), (1, 1)), name="y")
    return b.finish(y)


def pool_input(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, SHAPE).astype(np.uint8)


def pool_graph() -> tuple[Graph, tuple[np.ndarray, ...]]:
    """CLI entry point: (graph, example inputs)."""
    return avg_pool_graph(), (pool_input(),)
