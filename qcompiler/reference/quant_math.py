"""Quantization arithmetic, PyTorch-exact. A numpy-only leaf any layer may import.

Every rounding, scaling and saturation step of the reference semantics lives here, with the
float widths PyTorch's CPU kernels use (they matter: float32 vs float64 intermediates differ in
the last bit, and that flips a rounding tie now and then). `lowering/te_lib.py` mirrors these
helpers in TE, step for step.

Conventions: `np.rint` rounds half to even, as `std::nearbyint` does under the default
rounding mode; integer results saturate to the storage range of the output dtype.
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir.types import DType, QParams, TensorType

F32 = np.float32


def saturate(x: np.ndarray, dtype: DType) -> np.ndarray:
    """Clamp integer (or already-rounded float) values to `dtype`'s range and cast to storage."""
    return np.clip(x, dtype.qmin, dtype.qmax).astype(dtype.np)


def f32_inverse(scale: float) -> np.float32:
    """PyTorch's `1.0f / static_cast<float>(scale)`."""
    return F32(1.0) / F32(scale)


def round_f32_to_i64(x: np.ndarray) -> np.ndarray:
    """nearbyint on float32 values, widened to int64 (x is finite and |x| < 2**62)."""
    return np.rint(x).astype(np.int64)


def quantize_per_tensor(x: np.ndarray, scale: float, zero_point: int, dtype: DType) -> np.ndarray:
    """torch.quantize_per_tensor: clamp(zp + rint(x_f32 * (1.0f / scale_f32)), qmin, qmax).

    Values beyond the int range (and inf) saturate; NaN becomes the zero point's neighbour as
    in PyTorch's cvtps path (documented as undefined: callers should not quantize NaN).
    """
    x = np.asarray(x, dtype=F32)
    with np.errstate(over="ignore", invalid="ignore"):
        t = x * f32_inverse(scale)
    t = np.clip(np.nan_to_num(t, nan=0.0), -(2.0**62), 2.0**62)
    return saturate(round_f32_to_i64(t) + int(zero_point), dtype)


def quantize_per_channel(x: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, axis: int,
                         dtype: DType) -> np.ndarray:
    """torch.quantize_per_channel, element-wise as `quantize_per_tensor` with per-axis qparams."""
    x = np.asarray(x, dtype=F32)
    shape = [1] * x.ndim
    shape[axis] = -1
    inv = (F32(1.0) / np.asarray(scales, dtype=F32)).reshape(shape)
    zp = np.asarray(zero_points, dtype=np.int64).reshape(shape)
    with np.errstate(over="ignore", invalid="ignore"):
        t = x * inv
    t = np.clip(np.nan_to_num(t, nan=0.0), -(2.0**62), 2.0**62)
    return saturate(round_f32_to_i64(t) + zp, dtype)


def quantize(x: np.ndarray, ty: TensorType) -> np.ndarray:
    """Quantize float values to `ty` (per-tensor or per-axis qparams)."""
    qp = ty.qparams
    assert qp is not None
    if qp.axis is None:
        return quantize_per_tensor(x, qp.scale_value, qp.zp_value, ty.dtype)
    return quantize_per_channel(x, qp.scales_array(), qp.zero_points_array(), qp.axis, ty.dtype)


def dequantize_per_tensor(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Tensor.dequantize() per tensor: float32(q - zp) * float32(scale).

    The subtraction is done in the storage integer type (qint32 wraps around, as PyTorch's
    int32 arithmetic does); u8/i8 differences are exact in any width.
    """
    if q.dtype == np.int32:
        diff = (q.astype(np.int64) - int(zero_point)).astype(np.int32)  # wraps like int32
    else:
        diff = q.astype(np.int64) - int(zero_point)
    return diff.astype(F32) * F32(scale)


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    """Dequantize storage values with per-tensor or per-axis qparams, in float32.

    Per-axis dequantization in PyTorch computes (q - zp) * scale in float64, then rounds to
    float32 (the per-channel kernel reads the double scales directly).
    """
    if qp.axis is None:
        return dequantize_per_tensor(q, qp.scale_value, qp.zp_value)
    shape = qp.broadcast_shape(q.ndim)
    s = np.asarray(qp.scale, dtype=np.float64).reshape(shape)
    z = np.asarray(qp.zero_point, dtype=np.float64).reshape(shape)
    return ((q.astype(np.float64) - z) * s).astype(F32)


def requantize_f32(values: np.ndarray, inv_out_scale: np.float32, out_zp: int,
                   dtype: DType) -> np.ndarray:
    """rint(values_f32 * inv_out_scale_f32) + zp, saturated. The common float32 epilogue."""
    with np.errstate(over="ignore", invalid="ignore"):
        t = np.asarray(values, dtype=F32) * F32(inv_out_scale)
    t = np.clip(np.nan_to_num(t, nan=0.0), -(2.0**62), 2.0**62)
    return saturate(round_f32_to_i64(t) + int(out_zp), dtype)
