"""Quantization arithmetic, PyTorch-exact. A numpy-only leaf any layer may import.

Every rounding, scaling and saturation step of the reference semantics lives here, with the
float widths PyTorch's CPU kernels use (they matter: float32 vs float64 intermediates differ in
the last bit, and that flips a rounding tie now and then). `lowering/te_lib.py` mirrors these
helpers in TE, step for step.

Conventions: `np.rint` rounds half to even, as `std::nearbyint` does under the default
rounding mode; integer results saturate to the storage range of the output dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcompiler.ir.types import DType, QParams, TensorType

F32 = np.float32


def saturate(x: np.ndarray, dtype: DType) -> np.ndarray:
    """Clamp integer (or already-rounded float) values to `dtype`'s range and cast to storage."""
    return np.clip(x, dtype.qmin, dtype.qmax).astype(dtype.np)


def f32_inverse(scale: float) -> np.float32:
    """PyTorch's `1.0f / static_cast<float>(scale)`."""
    return F32(1.0) / F32(scale)


def fma_f32(a: Any, b: Any, c: Any) -> np.ndarray:
    """float32 fused multiply-add round(a*b + c) with one rounding, exact for all inputs
    (element-wise, broadcasting); the one emulation of a hardware FMA in the references.

    a*b of two float32 values is exact in float64; the float64 sum is made round-to-odd with
    TwoSum's error term, after which rounding to float32 is correct (53 >= 24 + 2 bits).
    """
    a64 = np.asarray(a, F32).astype(np.float64)
    b64 = np.asarray(b, F32).astype(np.float64)
    c64 = np.asarray(c, F32).astype(np.float64)
    with np.errstate(all="ignore"):
        p = a64 * b64
        s = np.asarray(p + c64)
        bp = s - p
        err = (p - (s - bp)) + (c64 - bp)
        even = (s.view(np.int64) & 1) == 0
        fix = np.isfinite(s) & np.isfinite(err) & (err != 0) & even
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
        return np.asarray(s.astype(F32))


def q_fbgemm(x: np.ndarray, scale: float, zero_point: int, dtype: DType) -> np.ndarray:
    """fbgemm's Quantize: clamp(rint(fma(x, 1f/scale, zp))). NaN -> qmax, +-inf saturate.

    Used by torch.quantize_per_tensor for quint8/qint8 (vector and tail alike).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        t = fma_f32(x, f32_inverse(scale), float(zero_point))
    t = np.where(np.isnan(t), np.float32(dtype.qmax), t)
    return saturate(np.rint(np.clip(t, -(2.0**62), 2.0**62)).astype(np.int64), dtype)


def q_val(x: np.ndarray, inv_scale: np.ndarray | np.float32, zero_point: np.ndarray | int,
          dtype: DType) -> np.ndarray:
    """PyTorch's scalar quantize_val: clamp(rint(f32(zp) + f32(x * inv))). NaN -> qmin.

    Used by scalar (tail) kernels, quantize_per_channel, qint32 quantize_per_tensor, and
    clamp bounds. The clamp happens in float64, so f32(2**31-1) rounding up cannot wrap.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        t = (np.asarray(x, dtype=F32) * np.asarray(inv_scale, dtype=F32)).astype(F32)
        t = (np.asarray(zero_point, dtype=F32) + t).astype(F32)
    r = np.rint(t.astype(np.float64))
    r = np.where(np.isnan(r), float(dtype.qmin), r)
    return np.clip(r, dtype.qmin, dtype.qmax).astype(np.int64).astype(dtype.np)


def q_vec(x: np.ndarray, inv_scale: np.ndarray | np.float32, zero_point: np.ndarray | int,
          dtype: DType) -> np.ndarray:
    """PyTorch's vectorized quantize: clamp(zp + rint(f32(x * inv))). NaN -> qmin.

    Used by the vector bodies of elementwise kernels (the bulk of the elements).
    """
    with np.errstate(over="ignore", invalid="ignore"):
        t = (np.asarray(x, dtype=F32) * np.asarray(inv_scale, dtype=F32)).astype(F32)
    r = np.rint(np.clip(t.astype(np.float64), -(2.0**62), 2.0**62))
    r = np.where(np.isnan(r), float(dtype.qmin) - 2.0**40, r)
    return saturate(r.astype(np.int64) + np.asarray(zero_point, dtype=np.int64), dtype)


def quantize_per_tensor(x: np.ndarray, scale: float, zero_point: int, dtype: DType) -> np.ndarray:
    """torch.quantize_per_tensor: q_fbgemm for quint8/qint8, q_val for qint32."""
    if dtype.bits == 32:
        return q_val(x, f32_inverse(scale), int(zero_point), dtype)
    return q_fbgemm(x, scale, zero_point, dtype)


def quantize_per_channel(x: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, axis: int,
                         dtype: DType) -> np.ndarray:
    """torch.quantize_per_channel: q_val per channel with inv = 1f / f32(scale_c)."""
    x = np.asarray(x, dtype=F32)
    shape = [1] * x.ndim
    shape[axis] = -1
    inv = (F32(1.0) / np.asarray(scales, dtype=F32)).reshape(shape)
    zp = np.asarray(zero_points, dtype=np.int64).reshape(shape)
    return q_val(x, inv, zp, dtype)


def quantize_decomposed(x: np.ndarray, scale: float, zero_point: int, dtype: DType) -> np.ndarray:
    """PT2E's quantized_decomposed.quantize_per_tensor (u8/i8):
    clamp(rint(f32(x * f32(1.0 / scale))) + f32(zp), qmin, qmax) in float32; NaN -> 0.

    The inverse is the double quotient rounded once to float32 (fbgemm's is 1f / f32(scale)),
    and the zero point is added after the rounding: both can move a value near a .5 tie by
    one LSB against `quantize_per_tensor`.
    """
    inv = F32(1.0 / float(scale))
    with np.errstate(invalid="ignore", over="ignore"):
        t = (np.asarray(x, dtype=F32) * inv).astype(F32)
        v = (np.rint(t) + F32(zero_point)).astype(F32)
        v = np.clip(v, F32(dtype.qmin), F32(dtype.qmax))
    return np.where(np.isnan(v), F32(0), v).astype(dtype.np)


def quantize(x: np.ndarray, ty: TensorType, rounding: str = "fbgemm") -> np.ndarray:
    """Quantize float values to `ty` (per-tensor or per-axis qparams); `rounding` "decomposed"
    is PT2E's formula (`quantize_decomposed`, per tensor)."""
    qp = ty.qparams
    assert qp is not None
    if rounding == "decomposed":
        assert qp.axis is None
        return quantize_decomposed(x, qp.scale_value, qp.zp_value, ty.dtype)
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


def dequantize_fma(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Vectorized dequantize: fma(q, s, -(zp * s)) in float32 (the vector bodies' D_fma)."""
    s = F32(scale)
    return fma_f32(q.astype(F32), s, float(F32(-(F32(zero_point) * s))))
