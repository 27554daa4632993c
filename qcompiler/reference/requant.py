"""Requantization epilogues of PyTorch's int8 CPU GEMM/conv kernels (fbgemm and oneDNN), exact.

Shared by every op whose integer accumulator is turned back into quint8 by a PyTorch kernel:
`qnn.conv*` (ops/conv.py) and `qnn.linear*`. A numpy-only leaf like `quant_math.py`; it lives in
its own module so the conv and linear engineers can share it without editing one file at once.
Measured on torch 2.13 (x86, AVX-512 VNNI): 0 mismatches over millions of outputs; the
derivation is in /work/notes/conv_linear_numerics.md (sections 2, 3 and 5).

Inputs common to both paths:

- `acc`: the exact integer accumulator sum((x - zx) * (w - zw[o])), any integer dtype. It is
  wrapped to int32 (mod 2**32) first: both libraries accumulate in int32 and wrap, never saturate.
- `x_scale`, `out_scale`: the activation and output scales as Python floats (PyTorch's doubles).
- `w_scales`: one weight scale (per-tensor) or one per output channel (float64 values).
- `bias`: float32 in REAL units, one per output channel, or None. It is never quantized to int32.
- `channel_axis`: where the output channel lives in `acc` (1 for NC..., -1 for linear's [..., O]).

Every float step is float32 with round-to-nearest-even, as the kernels compute it.

Which path PyTorch takes is op-specific (ops/conv.py `requant_path`): on the default x86 engine
conv uses oneDNN when all weight zero points are 0 and groups <= 100, otherwise fbgemm;
linear always uses fbgemm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qcompiler.ir.types import DType, u8
from qcompiler.reference.quant_math import fma_f32 as fma_f32_exact

F32 = np.float32
INT32_MIN = -(2**31)
ScalesLike = float | Sequence[float] | np.ndarray
"""One scale (per-tensor) or one per output channel."""


def wrap_int32(acc: np.ndarray) -> np.ndarray:
    """Wrap integer values to int32 modulo 2**32 (two's complement), as int32 accumulators do."""
    a = np.asarray(acc).astype(np.int64, copy=False)
    return ((a + 2**31) % 2**32 - 2**31).astype(np.int32)


def onednn_scale(scale: float) -> np.float32:
    """The scale oneDNN ends up using for an activation/output scale handed over by PyTorch.

    PyTorch passes 1/scale to ideep, which inverts it again in float: 1.0f / float(1.0 / s).
    Differs from float(s) for about 14 % of scales.
    """
    return F32(1.0) / F32(1.0 / float(scale))


def _channel_shape(ndim: int, channel_axis: int, n: int) -> list[int]:
    shape = [1] * ndim
    shape[channel_axis] = n
    return shape


def _per_channel(values: ScalesLike, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(values, dtype=np.float64), (n,))


def fbgemm_requantize(acc: np.ndarray, x_scale: float, w_scales: ScalesLike,
                      out_scale: float, out_zp: int, *, bias: np.ndarray | None,
                      per_tensor_weight: bool, relu: bool = False, channel_axis: int = 1,
                      out_dtype: DType = u8) -> np.ndarray:
    """fbgemm's ReQuantizeOutput with a float bias (PyTorch's fbgemm conv and linear).

        atws = f32(f32(x_scale) * f32(w_scale[o]))         act_times_w_scale
        mult = f32(atws / f32(out_scale))
        a    = f32(wrap32(acc))
        v    = a                                          no bias
             = fma32(bias[o], f32(1.0 / (double)atws), a)  per-tensor weight (GCC contracts it)
             = f32(a + f32(bias[o] / atws))                per-channel weight (true division)
        t    = f32(v * mult)
        r    = rint(t) if |t| < 2**31 else INT32_MIN       vcvtps2dq's "integer indefinite"
        y    = clip(r + out_zp, out_zp if relu else qmin, qmax)

    NOTE: the overflow trap means a huge positive value (huge bias, or extreme scales) gives
    qmin (or out_zp with relu), not qmax. `per_tensor_weight` follows the weight's qscheme,
    not the values: per-channel weights with equal scales still take the division.
    """
    n = acc.shape[channel_axis]
    shape = _channel_shape(acc.ndim, channel_axis, n)
    sw = _per_channel(w_scales, n).astype(F32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        atws = (F32(x_scale) * sw).astype(F32)
        mult = (atws / F32(out_scale)).astype(F32)
        v = wrap_int32(acc).astype(F32)
        if bias is not None:
            b = np.asarray(bias, dtype=F32)
            if per_tensor_weight:
                rcp = F32(1.0 / np.float64(atws[0]))
                v = fma_f32_exact(b.reshape(shape), rcp, v)
            else:
                v = (v + (b / atws).astype(F32).reshape(shape)).astype(F32)
        t = (v * mult.reshape(shape)).astype(F32)
        t64 = t.astype(np.float64)
        ovf = ~(np.abs(t64) < 2.0**31)
        r = np.where(ovf, INT32_MIN, np.rint(np.where(ovf, 0.0, t64))).astype(np.int64)
    lo = int(out_zp) if relu else out_dtype.qmin
    return np.clip(r + int(out_zp), lo, out_dtype.qmax).astype(out_dtype.np)


def onednn_requantize(acc: np.ndarray, x_scale: float, w_scales: ScalesLike,
                      out_scale: float, out_zp: int, *, bias: np.ndarray | None,
                      relu: bool = False, channel_axis: int = 1, reinvert_w_scales: bool = False,
                      residual: tuple[np.ndarray, float, int] | None = None,
                      out_dtype: DType = u8) -> np.ndarray:
    """oneDNN's int8 conv/matmul epilogue as driven by PyTorch (ideep v3, brgemm post-ops).

        src_s = 1.0f / f32(1.0 / x_scale);   dst_s = 1.0f / f32(1.0 / out_scale)
        wei_s = f32(w_scale[o])                                  conv
              = 1.0f / f32(1.0f / f32(w_scale[o]))               linear (reinvert_w_scales)
        v = f32(wrap32(acc));  v = f32(v * src_s);  v = f32(v * wei_s)   two multiplies
        v = f32(v + bias[o])                                     bias in real units
        v = fma32(f32(e) - f32(ze), 1.0f / f32(1.0 / se), v)     residual (sum post-op)
        v = max(v, 0)                                            relu (after the sum)
        v = f32(v * (1.0f / dst_s));  v = f32(v + f32(out_zp))   zero point added in float
        y = clip(rint(v), qmin, qmax)                            float saturation: no INT_MIN

    `residual` = (e, se, ze): the quantized extra input of conv2d_add (same shape as acc).
    """
    n = acc.shape[channel_axis]
    shape = _channel_shape(acc.ndim, channel_axis, n)
    src_s = onednn_scale(x_scale)
    dinv = F32(1.0) / onednn_scale(out_scale)
    wei_s = _per_channel(w_scales, n).astype(F32)
    if reinvert_w_scales:
        wei_s = (F32(1.0) / (F32(1.0) / wei_s).astype(F32)).astype(F32)
    with np.errstate(over="ignore", invalid="ignore"):
        v = wrap_int32(acc).astype(F32)
        v = (v * src_s).astype(F32)
        v = (v * wei_s.reshape(shape)).astype(F32)
        if bias is not None:
            v = (v + np.asarray(bias, dtype=F32).reshape(shape)).astype(F32)
        if residual is not None:
            e, se, ze = residual
            prev = (np.asarray(e).astype(F32) - F32(ze)).astype(F32)
            v = fma_f32_exact(prev, onednn_scale(se), v)
        if relu:
            v = np.maximum(v, F32(0.0))
        v = (v * dinv).astype(F32)
        v = (v + F32(out_zp)).astype(F32)
        r = np.clip(np.nan_to_num(np.rint(v.astype(np.float64)), nan=0.0), out_dtype.qmin,
                    out_dtype.qmax)
    return r.astype(out_dtype.np)
