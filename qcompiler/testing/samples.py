"""Random and edge-case inputs for op tests: qparams over many decades, range-end values.

Used by the `samples` hooks of op definitions, so every op draws its cases the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qcompiler.ir.types import DType, QParams, TensorType, f32, i8, u8

EDGE_SCALES = (1e-6, 3.7e-4, 0.0123, 0.25, 1.0, 7.3, 100.0)


def rand_scale(rng: np.random.Generator, lo: float = 1e-3, hi: float = 1.0) -> float:
    """Log-uniform scale in [lo, hi]."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def rand_zp(rng: np.random.Generator, dtype: DType, edge: bool = False) -> int:
    if edge:
        return int(rng.choice([dtype.qmin, dtype.qmax]))
    if dtype is i8:
        return int(rng.integers(-20, 21))
    if dtype is u8:
        return int(rng.integers(0, 256))
    return int(rng.integers(dtype.qmin // 2, dtype.qmax // 2))


def rand_int(rng: np.random.Generator, shape: Sequence[int], dtype: DType,
             edges: bool = True) -> np.ndarray:
    """Uniform values over the full range; with `edges`, some at qmin, qmax and 0."""
    lo, hi = dtype.qmin, dtype.qmax
    a = rng.integers(lo, hi, size=tuple(shape), endpoint=True, dtype=np.int64)
    if edges and a.size:
        flat = a.reshape(-1)
        k = max(1, flat.size // 16)
        flat[rng.integers(0, flat.size, k)] = lo
        flat[rng.integers(0, flat.size, k)] = hi
        flat[rng.integers(0, flat.size, k)] = 0 if lo <= 0 <= hi else lo
    return a.astype(dtype.np)


def qtensor(rng: np.random.Generator, shape: Sequence[int], dtype: DType = u8,
            scale: float | None = None, zp: int | None = None,
            edges: bool = True) -> tuple[TensorType, np.ndarray]:
    """A random per-tensor quantized tensor: (type, storage array)."""
    s = rand_scale(rng) if scale is None else scale
    z = rand_zp(rng, dtype) if zp is None else zp
    ty = TensorType(tuple(shape), dtype, QParams.per_tensor(s, z))
    return ty, rand_int(rng, shape, dtype, edges)


def qtensor_per_channel(rng: np.random.Generator, shape: Sequence[int], axis: int,
                        dtype: DType = i8, scheme: str = "affine",
                        edges: bool = True) -> tuple[TensorType, np.ndarray]:
    """A random per-axis quantized tensor with differing zero points (zero for symmetric)."""
    n = shape[axis]
    scales = [rand_scale(rng, 1e-3, 0.1) for _ in range(n)]
    if scheme == "symmetric":
        zps = [0] * n
    else:
        zps = [int(rng.integers(max(dtype.qmin, -10), min(dtype.qmax, 10) + 1)) for _ in range(n)]
    ty = TensorType(tuple(shape), dtype, QParams.per_axis(scales, zps, axis, scheme))
    return ty, rand_int(rng, shape, dtype, edges)


def ftensor(rng: np.random.Generator, shape: Sequence[int], scale: float = 1.0,
            ) -> tuple[TensorType, np.ndarray]:
    """A random float32 tensor, normal with the given standard deviation."""
    return TensorType(tuple(shape), f32), (rng.standard_normal(tuple(shape)) * scale).astype(
        np.float32)
