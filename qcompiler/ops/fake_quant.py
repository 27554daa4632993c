"""Fake quantization: float32 in, float32 out, values snapped to a quantization grid.

These model `torch.fake_quantize_per_tensor_affine` and `torch.fake_quantize_per_channel_affine`
(the forward of QAT's FakeQuantize modules) on the CPU, bit for bit, including how their scalar
kernels mix float32, int64 and double:

    per tensor:   inv = 1f / f32(scale)
                  v   = f32(f32(zp) + rint(f32(x * inv)))                  (float32 add)
                  q   = int64(fmin(fmax(double(v), qmin), qmax))          (NaN -> qmin, +-inf clamp)
                  y   = f32(q - zp) * f32(scale)                           (float32 multiply)

    per channel:  inv = 1f / scale[c]                                      (scale is float32)
                  v   = f32(f32(zp[c]) + rint(f32(x * inv)))
                  q   = fmin(fmax(double(int64(v)), qmin), qmax)          (int64(NaN or +-inf) is
                                                                           INT64_MIN -> qmin)
                  y   = f32(double(q - zp[c]) * double(scale[c]))          (double, rounded once)

`quant_min <= zero_point <= quant_max` as PyTorch requires; any integer range (8-bit, 4-bit,
int32) works. Zero points are integers (PyTorch's float zero point variant is not modelled).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from qcompiler.errors import TypeInferenceError
from qcompiler.ir.registry import OpDef, OpSample, Sig, register_op
from qcompiler.ir.types import TensorType, f32
from qcompiler.testing import samples as S

F32 = np.float32
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_RANGES = ((0, 255), (-128, 127), (0, 127), (0, 15), (-8, 7), (_INT32_MIN, _INT32_MAX))


def _check_x(op: str, x: TensorType) -> None:
    if x.dtype is not f32 or x.qparams is not None:
        raise TypeInferenceError(
            f"{op} takes an unquantized float32 tensor (it returns float32), got {x}")


def _check_range(op: str, quant_min: int, quant_max: int) -> None:
    for name, v in (("quant_min", quant_min), ("quant_max", quant_max)):
        if isinstance(v, bool) or not isinstance(v, int) or not _INT32_MIN <= v <= _INT32_MAX:
            raise TypeInferenceError(f"{op}: {name} must be an int32 integer, got {v!r}")
    if quant_min > quant_max:
        raise TypeInferenceError(
            f"{op}: quant_min ({quant_min}) must be <= quant_max ({quant_max})")


def _check_qparam(op: str, what: str, scale: Any, zero_point: Any, quant_min: int,
                  quant_max: int) -> None:
    with np.errstate(over="ignore"):
        scale_f32 = F32(scale) if isinstance(scale, (int, float)) else F32(0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
            math.isfinite(scale) and scale > 0 and math.isfinite(scale_f32) and scale_f32 > 0):
        raise TypeInferenceError(
            f"{op}: {what}scale must be a finite float > 0 (in float32), got {scale!r}")
    if isinstance(zero_point, bool) or not isinstance(zero_point, int):
        raise TypeInferenceError(
            f"{op}: {what}zero_point must be an integer, got {zero_point!r}"
            " (float zero points are not supported)")
    if not quant_min <= zero_point <= quant_max:
        raise TypeInferenceError(
            f"{op}: {what}zero_point {zero_point} must be between quant_min ({quant_min}) and"
            f" quant_max ({quant_max})")


def _snap(x: np.ndarray, inv: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """f32(f32(zp) + rint(f32(x * inv))): PyTorch's `z_point + std::nearbyint(x * inv_scale)`."""
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.rint((np.asarray(x, dtype=F32) * inv).astype(F32))
        return (np.asarray(zp).astype(F32) + r).astype(F32)


@dataclass(frozen=True)
class FakeQuantPerTensorAttrs:
    scale: float
    zero_point: int
    quant_min: int = 0
    quant_max: int = 255


@register_op
class FakeQuantizePerTensor(OpDef):
    """y = (clamp(zp + rint(x * (1f/s)), qmin, qmax) - zp) * s in float32 (see module doc).

    Input f32 of any shape, output f32 of the same shape. Exact.
    """

    name = "fake_quantize_per_tensor_affine"
    Attrs = FakeQuantPerTensorAttrs
    num_inputs = 1
    torch_counterparts = ("torch.fake_quantize_per_tensor_affine",
                          "torch.ao.quantization.FakeQuantize (per-tensor, forward)")

    def infer_type(self, attrs: FakeQuantPerTensorAttrs, x: TensorType) -> TensorType:
        _check_x(self.name, x)
        _check_range(self.name, attrs.quant_min, attrs.quant_max)
        _check_qparam(self.name, "", attrs.scale, attrs.zero_point, attrs.quant_min,
                      attrs.quant_max)
        return TensorType(x.shape, f32)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        a: FakeQuantPerTensorAttrs = sig.attrs
        scale = F32(a.scale)
        v = _snap(x, F32(1.0) / scale, np.int64(a.zero_point))
        q = np.fmin(np.fmax(v.astype(np.float64), a.quant_min), a.quant_max).astype(np.int64)
        return ((q - a.zero_point).astype(F32) * scale).astype(F32)

    def lower(self, sig: Sig, x: Any) -> Any:
        """The reference step for step: the product rounded (fenced) before the float32 add,
        the clamp in float64 (fmax/fmin: NaN -> quant_min), int64 q - zp, float32 multiply."""
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.tvm_compat import te, tirx

        a: FakeQuantPerTensorAttrs = sig.attrs
        scale = F32(a.scale)
        inv = te_lib.f32_const(F32(1.0) / scale)
        zp_f = te_lib.f32_const(F32(a.zero_point))
        lo = te.const(float(a.quant_min), "float64")
        hi = te.const(float(a.quant_max), "float64")

        def fn(i: Any) -> Any:
            v = zp_f + te_lib.round_half_even(te_lib.fence(x[i] * inv))
            d = v.astype("float64")
            d = tirx.Select(te.isnan(d), lo, te.min(te.max(d, lo), hi))
            q = d.astype("int64") - te.const(a.zero_point, "int64")
            return te_lib.fence(q.astype("float32") * te_lib.f32_const(scale))

        return te_lib.elementwise(sig.out.shape, fn, "fake_quantize_per_tensor_affine")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        A = FakeQuantPerTensorAttrs
        for k, (qmin, qmax) in enumerate(_RANGES):
            for scale in (S.EDGE_SCALES[k % len(S.EDGE_SCALES)], S.rand_scale(rng, 1e-3, 1.0)):
                zp = [qmin, qmax, int(rng.integers(qmin, qmax, endpoint=True))][k % 3]
                spread = scale * min(qmax - qmin, 1000) / 2
                tx, x = S.ftensor(rng, (3, 17), spread)
                x = (x + np.float32((zp - (qmin + qmax) / 2) * -scale)).astype(np.float32)
                # exact ties, the range ends, zero, and beyond the range
                x.reshape(-1)[:6] = [scale * 2.5, -scale * 0.5, 0.0, (qmax - zp) * scale,
                                     (qmin - zp) * scale, (qmax - zp + 7) * scale]
                yield OpSample(A(float(scale), zp, qmin, qmax), (tx,), (x,),
                               f"q[{qmin},{qmax}]-s{scale:.3g}-zp{zp}")
        tx, x = S.ftensor(rng, (8,), 2.0)
        x[:3] = [np.inf, -np.inf, np.nan]
        yield OpSample(A(0.1, 3, 0, 255), (tx,), (x,), "inf-nan")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        a: FakeQuantPerTensorAttrs = sample.attrs
        return torch.fake_quantize_per_tensor_affine(
            torch.from_numpy(sample.arrays[0]), a.scale, a.zero_point, a.quant_min,
            a.quant_max).numpy()


@dataclass(frozen=True)
class FakeQuantPerChannelAttrs:
    scales: tuple[float, ...]
    """One scale per index along `axis` (used as float32, as PyTorch requires)."""
    zero_points: tuple[int, ...]
    axis: int
    quant_min: int = -128
    quant_max: int = 127


@register_op
class FakeQuantizePerChannel(OpDef):
    """Per-channel fake quantization along `axis` (see the module docstring for the formula).

    Input f32 of rank >= 1, output f32 of the same shape. Exact.
    """

    name = "fake_quantize_per_channel_affine"
    Attrs = FakeQuantPerChannelAttrs
    num_inputs = 1
    torch_counterparts = ("torch.fake_quantize_per_channel_affine",
                          "torch.ao.quantization.FakeQuantize (per-channel, forward)")

    def infer_type(self, attrs: FakeQuantPerChannelAttrs, x: TensorType) -> TensorType:
        op = self.name
        _check_x(op, x)
        _check_range(op, attrs.quant_min, attrs.quant_max)
        if isinstance(attrs.axis, bool) or not isinstance(attrs.axis, int) or not (
                0 <= attrs.axis < x.rank):
            raise TypeInferenceError(
                f"{op}: axis must be in [0, {x.rank}) for input {x}, got {attrs.axis!r}")
        n = x.shape[attrs.axis]
        if len(attrs.scales) != n or len(attrs.zero_points) != n:
            raise TypeInferenceError(
                f"{op}: need one scale and zero point per index of axis {attrs.axis} ({n}), got"
                f" {len(attrs.scales)} scales and {len(attrs.zero_points)} zero points")
        for c, (s, z) in enumerate(zip(attrs.scales, attrs.zero_points)):
            _check_qparam(op, f"channel {c} ", s, z, attrs.quant_min, attrs.quant_max)
        return TensorType(x.shape, f32)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        a: FakeQuantPerChannelAttrs = sig.attrs
        shape = [1] * x.ndim
        shape[a.axis] = -1
        scale = np.asarray(a.scales, dtype=np.float64).astype(F32).reshape(shape)
        zp = np.asarray(a.zero_points, dtype=np.int64).reshape(shape)
        v = _snap(x, (F32(1.0) / scale).astype(F32), zp)
        # static_cast<int64_t>(v): NaN and +-inf become INT64_MIN (x86 cvttss2si)
        vi = np.where(np.isfinite(v), v.astype(np.float64), -(2.0**63))
        q = np.fmin(np.fmax(vi, float(a.quant_min)), float(a.quant_max))
        return ((q - zp.astype(np.float64)) * scale.astype(np.float64)).astype(F32)

    def lower(self, sig: Sig, x: Any) -> Any:
        """The reference step for step: per-channel float32 inverse scales and zero points
        (constant tensors), the product fenced before the float32 add, non-finite v -> -2**63
        (then quant_min), the clamp and (q - zp) * scale in float64, rounded once."""
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.tvm_compat import te, tirx

        a: FakeQuantPerChannelAttrs = sig.attrs
        scale = np.asarray(a.scales, dtype=np.float64).astype(F32)
        inv_t = te_lib.constant((F32(1.0) / scale).astype(F32), "fq_inv_scale")
        zpf_t = te_lib.constant(np.asarray(a.zero_points, dtype=np.int64).astype(F32),
                                "fq_zero_point_f32")
        zpd_t = te_lib.constant(np.asarray(a.zero_points, dtype=np.float64), "fq_zero_point")
        sd_t = te_lib.constant(scale.astype(np.float64), "fq_scale")
        lo = te.const(float(a.quant_min), "float64")
        hi = te.const(float(a.quant_max), "float64")
        int64_min = te.const(-(2.0**63), "float64")

        def fn(i: Any) -> Any:
            c = i[a.axis]
            v = zpf_t[c] + te_lib.round_half_even(te_lib.fence(x[i] * inv_t[c]))
            d = tirx.Select(te.isfinite(v), v.astype("float64"), int64_min)
            q = te.min(te.max(d, lo), hi)
            return te_lib.fence(((q - zpd_t[c]) * sd_t[c]).astype("float32"))

        return te_lib.elementwise(sig.out.shape, fn, "fake_quantize_per_channel_affine")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        A = FakeQuantPerChannelAttrs
        cases = [((4, 6), 0, (-128, 127)), ((3, 5, 7), 1, (0, 255)), ((2, 3, 4), 2, (0, 127)),
                 ((6, 9), 0, (0, 15)), ((5, 4), 1, (_INT32_MIN, _INT32_MAX))]
        for shape, axis, (qmin, qmax) in cases:
            n = shape[axis]
            scales = tuple(S.EDGE_SCALES[(c + axis) % len(S.EDGE_SCALES)] if c % 2 else
                           S.rand_scale(rng, 1e-3, 1.0) for c in range(n))
            zps = tuple([qmin, qmax, int(rng.integers(qmin, qmax, endpoint=True))][c % 3]
                        for c in range(n))
            tx, x = S.ftensor(rng, shape, 1.0)
            bshape = [1] * len(shape)
            bshape[axis] = n
            sc = np.asarray(scales, dtype=np.float32).reshape(bshape)
            x = (x * sc * np.float32(min(qmax - qmin, 1000) / 2)).astype(np.float32)
            x.reshape(-1)[:3] = [2.5 * scales[0], -0.5 * scales[0], 0.0]
            yield OpSample(A(scales, zps, axis, qmin, qmax), (tx,), (x,),
                           f"{'x'.join(map(str, shape))}-axis{axis}-q[{qmin},{qmax}]")
        tx, x = S.ftensor(rng, (3, 4), 2.0)
        x[:, 0] = [np.inf, -np.inf, np.nan]
        yield OpSample(A((0.1, 0.2, 0.3), (0, 5, -5), 0), (tx,), (x,), "inf-nan")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        a: FakeQuantPerChannelAttrs = sample.attrs
        return torch.fake_quantize_per_channel_affine(
            torch.from_numpy(sample.arrays[0]), torch.tensor(a.scales, dtype=torch.float32),
            torch.tensor(a.zero_points, dtype=torch.int32), a.axis, a.quant_min,
            a.quant_max).numpy()
