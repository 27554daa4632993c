"""Quantized elementwise arithmetic: add, mul (+relu), scalar add/mul, concatenation.

All ops take per-tensor quantized quint8 (u8) or qint8 (i8) tensors and reproduce PyTorch
2.13's x86 kernels (`torch.ops.quantized.*`, AVX-512 build) bit for bit, with one documented
exception: PyTorch evaluates `add` with two formulas, a vectorized one for the bulk of each
contiguous run and a scalar one for the last `run % 64` elements (where the run, and with it
the tail, depends on broadcasting and on the thread count). The two only differ on rounding
ties. We implement the vectorized rule everywhere, so `add` is within 1 LSB of PyTorch
(`max_lsb = 1`, rate in `fidelity_note`). `mul`, the scalar ops and `cat` compute the same
integers on both paths and are exact.

Notation in the docstrings (all float math float32 unless marked double):
  D_fma(q)   = fma(q, s, -(zp * s))                 vectorized dequantize
  D_sub(q)   = f32(q - zp) * s                      scalar dequantize / Tensor.dequantize()
  Q_vec(x)   = clamp(zp + rint(x * inv))            vectorized quantize
  Q_val(x)   = clamp(rint(f32(zp) + x * inv))       scalar quantize_val
  Q_fbgemm(x)= clamp(rint(fma(x, inv, zp)))         torch.quantize_per_tensor (u8/i8)
with `inv = 1.0f / f32(scale)` unless stated, rint = round half to even.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qcompiler.errors import TypeInferenceError
from qcompiler.ir.registry import OpDef, OpSample, Sig, register_op
from qcompiler.ir.types import DType, QParams, TensorType, i8, u8
from qcompiler.reference import quant_math as qm
from qcompiler.testing import samples as S

F32 = np.float32
QDTYPES: tuple[DType, ...] = (u8, i8)
"""The storage dtypes of PyTorch's quint8 / qint8, which every op here supports."""

# --- shared checks and arithmetic (also used by ops/activation.py and ops/pool.py) ----------


def dtype_names(dtypes: Sequence[DType]) -> str:
    return ", ".join(f"{d.torch_qname} ({d.short})" for d in dtypes)


def check_qtensor(op: str, ty: TensorType, what: str = "input",
                  dtypes: Sequence[DType] = QDTYPES) -> QParams:
    """The per-tensor qparams of `ty`, or a TypeInferenceError naming what `op` supports."""
    qp = ty.qparams
    if qp is None:
        raise TypeInferenceError(
            f"{op}: {what} must be a quantized tensor ({dtype_names(dtypes)}), got {ty}")
    if qp.axis is not None or qp.scheme == "float_qparams":
        raise TypeInferenceError(
            f"{op}: {what} must have per-tensor qparams (PyTorch's quantized kernels reject"
            f" per-channel input), got {ty}")
    if ty.dtype not in dtypes:
        raise TypeInferenceError(
            f"{op}: {what} dtype {ty.dtype} is not supported; supported: {dtype_names(dtypes)}")
    return qp


def check_out_qparams(op: str, qp: Any, name: str = "out_qparams") -> QParams:
    if not isinstance(qp, QParams) or qp.axis is not None or qp.scheme == "float_qparams":
        raise TypeInferenceError(f"{op}: {name} must be per-tensor QParams, got {qp!r}")
    return qp


def check_zero_point(op: str, qp: QParams, dtype: DType, what: str = "output") -> None:
    if not dtype.qmin <= qp.zp_value <= dtype.qmax:
        raise TypeInferenceError(
            f"{op}: {what} zero point {qp.zp_value} is outside the {dtype.torch_qname} range"
            f" [{dtype.qmin}, {dtype.qmax}]")


def check_finite(op: str, name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeInferenceError(f"{op}: {name} must be a number, got {v!r}")
    if not np.isfinite(float(v)):
        raise TypeInferenceError(f"{op}: {name} must be finite, got {v!r}")
    return float(v)


def broadcast_shape(op: str, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy/PyTorch broadcasting of two shapes, or a TypeInferenceError."""
    n = max(len(a), len(b))
    pa, pb = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for k, (x, y) in enumerate(zip(pa, pb)):
        if x != y and 1 not in (x, y):
            raise TypeInferenceError(
                f"{op}: shapes {list(a)} and {list(b)} do not broadcast (dimension {k - n}:"
                f" {x} vs {y}); sizes must match or be 1")
        out.append(y if x == 1 else x)
    return tuple(out)


def same_dtype(op: str, tys: Sequence[TensorType]) -> DType:
    d = tys[0].dtype
    for k, t in enumerate(tys[1:], 1):
        if t.dtype is not d:
            raise TypeInferenceError(
                f"{op}: all inputs must have the same dtype (PyTorch does not mix quint8 and"
                f" qint8); input 0 is {d.torch_qname} ({d}), input {k} is"
                f" {t.dtype.torch_qname} ({t.dtype})")
    return d


def inv_f(scale: float) -> np.float32:
    """`1.0f / (float)scale` (add, leaky_relu, quantize_val)."""
    return F32(1.0) / F32(scale)


def inv_d(scale: float) -> np.float32:
    """`(float)(1.0 / scale)` with scale a double (hardswish, sigmoid, qcat NHWC)."""
    return F32(1.0 / float(scale))


def inv_fd(scale: float) -> np.float32:
    """`(float)(1.0 / (double)(float)scale)` (elu, threshold, gelu)."""
    return F32(1.0 / float(F32(scale)))


def deq_fma(q: np.ndarray, qp: QParams) -> np.ndarray:
    """D_fma: the vectorized dequantize fma(q, s, -(zp * s))."""
    return qm.dequantize_fma(q, qp.scale_value, qp.zp_value)


def deq_sub(q: np.ndarray, qp: QParams) -> np.ndarray:
    """D_sub: f32(q - zp) * f32(s), as the scalar kernels and Tensor.dequantize()."""
    return qm.dequantize_per_tensor(q, qp.scale_value, qp.zp_value)


def _cvtps_epi32(t: np.ndarray) -> np.ndarray:
    """cvtps2dq: round half to even; NaN and values outside int32 give INT32_MIN."""
    r = np.rint(np.asarray(t, F32).astype(np.float64))
    ok = np.isfinite(r) & (r >= -(2.0**31)) & (r < 2.0**31)
    return np.where(ok, r, -(2.0**31)).astype(np.int64)


def _add_i32_saturate(r: np.ndarray, zp: int, dtype: DType) -> np.ndarray:
    """int32 (wrapping) `r + zp`, then clamp to the dtype's range, as the AVX-512 code."""
    w = ((r + int(zp) + 2**31) % 2**32) - 2**31
    return np.clip(w, dtype.qmin, dtype.qmax).astype(dtype.np)


_INT32_FLOAT_MAX = F32(2**31 - 128)


def quant_vec(x: np.ndarray, inv: np.float32 | np.ndarray, qp: QParams,
              dtype: DType) -> np.ndarray:
    """Q_vec: clamp(zp + rint(f32(x * inv))), PyTorch's QuantizeAvx512, overflow included.

    x * inv is first clipped above at 2^31 - 128 (NaN also becomes 2^31 - 128), rounded with
    cvtps2dq (below -2^31: INT32_MIN), then zp is added in wrapping int32 arithmetic, then
    clamped. So values far beyond the range can wrap to the other end (|x * inv| >= ~2^31);
    only absurd output scales get there.
    """
    with np.errstate(all="ignore"):
        t = (np.asarray(x, F32) * np.asarray(inv, F32)).astype(F32)
        t = np.where(np.isnan(t) | (t > _INT32_FLOAT_MAX), _INT32_FLOAT_MAX, t)
    return _add_i32_saturate(_cvtps_epi32(t), qp.zp_value, dtype)


def quant_val(x: np.ndarray, inv: np.float32 | np.ndarray, qp: QParams,
              dtype: DType) -> np.ndarray:
    """Q_val: clamp(rint(f32(zp) + f32(x * inv))), PyTorch's scalar quantize_val."""
    return qm.q_val(x, inv, qp.zp_value, dtype)


def requantize_int(acc: np.ndarray, multiplier: np.float32, zp: int, dtype: DType) -> np.ndarray:
    """requantize_from_int: clamp(zp + rint(f32(acc) * multiplier)), PyTorch's vector code.

    (RequantizeAvx512: cvtps2dq, so |f32(acc) * multiplier| >= 2^31 becomes INT32_MIN before
    the wrapping int32 `+ zp`; the scalar tail saturates instead. Only multipliers >= 2^15 can
    get there.)
    """
    with np.errstate(all="ignore"):
        t = (np.asarray(acc, np.int64).astype(F32) * F32(multiplier)).astype(F32)
    return _add_i32_saturate(_cvtps_epi32(t), zp, dtype)


def torch_quiet() -> Any:
    """Import torch with the quantized-op deprecation/resize warnings silenced."""
    import torch

    warnings.filterwarnings("ignore", message=".*was resized.*")
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    return torch


# --- samples ---------------------------------------------------------------------------------

TIE_SCALES = (0.1, 0.2, 0.3, 1 / 3, 0.05, 0.125, 1 / 255, 0.0123, 0.7, 2.5)
"""Scales with simple ratios: sums and products land on (and next to) rounding ties."""


def edge_q(rng: np.random.Generator, shape: Sequence[int], dtype: DType, scale: float,
           zp: int) -> tuple[TensorType, np.ndarray]:
    """A quantized tensor whose values include qmin, qmax and zp."""
    ty, a = S.qtensor(rng, shape, dtype, scale, zp)
    flat = a.reshape(-1)
    for k, v in enumerate((dtype.qmin, dtype.qmax, zp)):
        if flat.size > k:
            flat[rng.integers(0, flat.size)] = v
    return ty, a


def sample_qparams(rng: np.random.Generator, dtype: DType, k: int) -> tuple[float, int]:
    """k-th scale/zero-point pair of a sample loop: ties, then decades, then random."""
    if k % 3 == 0:
        s = float(TIE_SCALES[int(rng.integers(0, len(TIE_SCALES)))])
    elif k % 3 == 1:
        s = float(S.EDGE_SCALES[int(rng.integers(0, len(S.EDGE_SCALES)))])
    else:
        s = S.rand_scale(rng, 1e-6, 1e2)
    return s, S.rand_zp(rng, dtype, edge=k % 4 == 1)


# --- binary ops ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QBinaryAttrs:
    out_qparams: QParams
    """Output scale and zero point (per tensor); the output dtype is the inputs' dtype."""


BINARY_SHAPES: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = (
    ((129,), (129,)), ((65,), (65,)), ((7,), (7,)), ((1,), (1,)), ((2, 3, 11), (2, 3, 11)),
    ((3, 65), (1, 65)), ((4, 1), (1, 7)), ((1, 7), (5, 7)), ((2, 70), ()), ((3, 2, 5), (2, 1)),
)


class _QBinary(OpDef):
    """Shared type rule, samples and torch hook of add/mul (+relu)."""

    Attrs = QBinaryAttrs
    num_inputs = 2
    relu: ClassVar[bool] = False
    torch_op: ClassVar[str] = ""

    def infer_type(self, attrs: QBinaryAttrs, a: TensorType, b: TensorType) -> TensorType:
        check_qtensor(self.name, a, "input 0 (lhs)")
        check_qtensor(self.name, b, "input 1 (rhs)")
        dtype = same_dtype(self.name, (a, b))
        oq = check_out_qparams(self.name, attrs.out_qparams)
        check_zero_point(self.name, oq, dtype)
        return TensorType(broadcast_shape(self.name, a.shape, b.shape), dtype,
                          QParams.per_tensor(oq.scale_value, oq.zp_value))

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        # Scales span decades (1e-6..1e2) but stay related within a sample, as real models
        # have them: the documented bound assumes in/out scale ratios below ~3e4 (see note).
        for k, (sa, sb) in enumerate(BINARY_SHAPES):
            dtype = (u8, i8)[k % 2]
            base, za = sample_qparams(rng, dtype, k)
            scale_b = base * float(rng.choice([1, 2, 0.5, 3, 1 / 3]))
            if self.name.startswith("qnn.mul"):  # multiplier m = 1/r: 2.4e-4 .. 4
                so = base * scale_b * float(rng.choice([64, 255, 1000, 4096, 0.25, 8]))
            else:
                so = base * float(rng.choice([1, 2, 0.5, 1.5, 3, 0.25]))
            zb, zo = S.rand_zp(rng, dtype, edge=k % 4 == 3), S.rand_zp(rng, dtype, k % 4 == 2)
            ta, a = edge_q(rng, sa, dtype, base, za)
            tb, b = edge_q(rng, sb, dtype, scale_b, zb)
            yield OpSample(QBinaryAttrs(QParams.per_tensor(so, zo)), (ta, tb), (a, b),
                           f"{dtype}-{'x'.join(map(str, sa))}-{'x'.join(map(str, sb))}"
                           f"-s{base:.3g}")
        # an absurdly small output scale: PyTorch's vector code overflows int32 and wraps
        # (see quant_vec / requantize_int); 128 elements, so all on its vector path
        for dtype, zo in ((u8, 200), (i8, -7)):
            ta, a = edge_q(rng, (128,), dtype, 3.7, 1)
            tb, b = edge_q(rng, (128,), dtype, 3.7, 1)
            yield OpSample(QBinaryAttrs(QParams.per_tensor(1e-9, zo)), (ta, tb), (a, b),
                           f"{dtype}-128-overflow")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        torch = torch_quiet()
        oq: QParams = sample.attrs.out_qparams
        a, b = (to_torch(x, t) for x, t in zip(sample.arrays, sample.in_types))
        op = getattr(torch.ops.quantized, self.torch_op)
        return to_numpy(op(a, b, oq.scale_value, oq.zp_value))


def _add_reference(sig: Sig, a: np.ndarray, b: np.ndarray, relu: bool) -> np.ndarray:
    qa, qb = sig.in_types[0].qparams, sig.in_types[1].qparams
    assert qa is not None and qb is not None
    oq = sig.attrs.out_qparams
    a, b = np.broadcast_arrays(a, b)
    c = (deq_fma(np.asarray(a), qa) + deq_fma(np.asarray(b), qb)).astype(F32)
    if relu:
        c = np.maximum(c, F32(0))
    return quant_vec(c, inv_f(oq.scale_value), oq, sig.out.dtype).reshape(sig.out.shape)


def _add_lower(sig: Sig, a: Any, b: Any, relu: bool) -> Any:
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.te_vecmath import q_vec_torch
    from qcompiler.lowering.tvm_compat import te

    qa, qb, oq = sig.in_types[0].qparams, sig.in_types[1].qparams, sig.out.qparams
    assert qa is not None and qb is not None and oq is not None
    shape, dt = sig.out.shape, sig.out.dtype
    inv = te_lib.f32_const(inv_f(oq.scale_value))

    # |da + db| <= 255 * (sa + sb) (8-bit differences); beyond ~2**30 LSB the vector code's
    # int32 overflow matters and q_vec_torch emulates it
    bound = 256.0 * (qa.scale_value + qb.scale_value) * float(inv_f(oq.scale_value))

    def body(i: tuple[Any, ...]) -> Any:
        da = te_lib.dequantize_fma_value(te_lib.broadcast_load(a, i, shape), qa.scale_value,
                                         qa.zp_value)
        db = te_lib.dequantize_fma_value(te_lib.broadcast_load(b, i, shape), qb.scale_value,
                                         qb.zp_value)
        c = da + db
        if relu:
            c = te.max(c, te_lib.f32_const(0.0))
        return q_vec_torch(c, inv, oq.zp_value, dt, bound)

    return te_lib.elementwise(shape, body, "qnn_add_relu" if relu else "qnn_add")


def _mul_lower(sig: Sig, a: Any, b: Any, relu: bool) -> Any:
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.te_vecmath import requantize_torch
    from qcompiler.lowering.tvm_compat import te

    qa, qb, oq = sig.in_types[0].qparams, sig.in_types[1].qparams, sig.out.qparams
    assert qa is not None and qb is not None and oq is not None
    shape, dt = sig.out.shape, sig.out.dtype
    m = F32(F32(qa.scale_value) * F32(qb.scale_value)) * inv_f(oq.scale_value)

    def body(i: tuple[Any, ...]) -> Any:
        xa = te_lib.broadcast_load(a, i, shape).astype("int32") - te.const(qa.zp_value, "int32")
        xb = te_lib.broadcast_load(b, i, shape).astype("int32") - te.const(qb.zp_value, "int32")
        out = requantize_torch(xa * xb, float(m), oq.zp_value, dt, acc_bound=255 * 255)
        return te.max(out, te.const(oq.zp_value, dt.storage)) if relu else out

    return te_lib.elementwise(shape, body, "qnn_mul_relu" if relu else "qnn_mul")


_ADD_NOTE = (
    "PyTorch's quantized add runs a vectorized formula (fma dequantize, zp added after rint) on"
    " the bulk of each contiguous run and a scalar one (subtract dequantize, quantize_val) on the"
    " last run % 64 elements; the run depends on broadcasting and on the thread count. We apply"
    " the vectorized rule to every element. The formulas differ only on rounding ties: against"
    " torch 2.13 on 3000 tie-heavy samples (scales 1e-6..1e2 with simple ratios, lengths 1, 7,"
    " 65, 129, broadcasting) {rate} of all elements differ, by 1 LSB, all on tail elements;"
    " bulk elements match bit for bit. The bound assumes input/output scale ratios below ~3e4"
    " (beyond, the dequantize residual |zp| * s_in * 2^-24 alone reaches half an output LSB).")


@register_op
class QAdd(_QBinary):
    """out = Q_vec(D_fma(a) + D_fma(b)) with broadcasting; inv = 1.0f / f32(out_scale).

    PyTorch: torch.ops.quantized.add (nnq.FloatFunctional.add / QFunctional.add). The two
    inputs share a dtype; qparams are independent. Vectorized rule everywhere (see module doc).
    """

    name = "qnn.add"
    torch_op = "add"
    torch_counterparts = ("torch.ops.quantized.add", "nnq.QFunctional.add")
    max_lsb = 1
    fidelity_note = _ADD_NOTE.format(rate="0.34%")

    def reference(self, sig: Sig, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _add_reference(sig, a, b, relu=False)

    def lower(self, sig: Sig, a: Any, b: Any) -> Any:
        return _add_lower(sig, a, b, relu=False)


@register_op
class QAddRelu(_QBinary):
    """out = Q_vec(max(D_fma(a) + D_fma(b), 0.0f)) with broadcasting (vectorized rule)."""

    name = "qnn.add_relu"
    torch_op = "add_relu"
    relu = True
    torch_counterparts = ("torch.ops.quantized.add_relu", "nnq.QFunctional.add_relu")
    max_lsb = 1
    fidelity_note = _ADD_NOTE.format(rate="0.12%")

    def reference(self, sig: Sig, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _add_reference(sig, a, b, relu=True)

    def lower(self, sig: Sig, a: Any, b: Any) -> Any:
        return _add_lower(sig, a, b, relu=True)


def _mul_reference(sig: Sig, a: np.ndarray, b: np.ndarray, relu: bool) -> np.ndarray:
    qa, qb = sig.in_types[0].qparams, sig.in_types[1].qparams
    assert qa is not None and qb is not None
    oq = sig.attrs.out_qparams
    m = F32(F32(qa.scale_value) * F32(qb.scale_value)) * inv_f(oq.scale_value)
    a, b = np.broadcast_arrays(a, b)
    prod = (np.asarray(a, np.int64) - qa.zp_value) * (np.asarray(b, np.int64) - qb.zp_value)
    out = requantize_int(prod, F32(m), oq.zp_value, sig.out.dtype)
    if relu:
        out = np.maximum(out, np.asarray(oq.zp_value).astype(out.dtype))
    return out.reshape(sig.out.shape)


@register_op
class QMul(_QBinary):
    """out = clamp(zo + rint(f32((a - za) * (b - zb)) * m)), m = f32(sa) * f32(sb) * (1f / so).

    Integer product, one float32 multiply, round half to even (torch.ops.quantized.mul; the
    vectorized and scalar paths agree, so this is exact). Broadcasting as NumPy.
    """

    name = "qnn.mul"
    torch_op = "mul"
    torch_counterparts = ("torch.ops.quantized.mul", "nnq.QFunctional.mul")

    def reference(self, sig: Sig, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _mul_reference(sig, a, b, relu=False)

    def lower(self, sig: Sig, a: Any, b: Any) -> Any:
        return _mul_lower(sig, a, b, relu=False)


@register_op
class QMulRelu(_QBinary):
    """out = max(qnn.mul(a, b), zo) (torch.ops.quantized.mul_relu)."""

    name = "qnn.mul_relu"
    torch_op = "mul_relu"
    relu = True
    torch_counterparts = ("torch.ops.quantized.mul_relu", "nnq.QFunctional.mul_relu")

    def reference(self, sig: Sig, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _mul_reference(sig, a, b, relu=True)

    def lower(self, sig: Sig, a: Any, b: Any) -> Any:
        return _mul_lower(sig, a, b, relu=True)


# --- scalar ops ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QScalarAttrs:
    scalar: float
    """The float constant (PyTorch's `Scalar other`); output qparams are derived from it."""


SCALAR_CASES = (0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 0.5, -0.75, 100.0, -300.0, 1e-3, 7.25)


def add_scalar_qparams(qp: QParams, dtype: DType, c: float) -> tuple[float, int, int]:
    """(out scale, out zero point, c_q) of quantized::add_scalar, all in double as PyTorch."""
    s, z = qp.scale_value, qp.zp_value
    lo, hi = dtype.qmin, dtype.qmax
    cq = int(np.rint(c / s))
    if z - cq < lo:
        return (hi - (z - cq)) / (hi - lo) * s, lo, cq
    if z - cq > hi:
        return ((z - cq) - lo) / (hi - lo) * s, hi, cq
    return s, z - cq, cq


class _QScalar(OpDef):
    Attrs = QScalarAttrs
    num_inputs = 1
    relu: ClassVar[bool] = False
    torch_op: ClassVar[str] = ""

    def _check(self, attrs: QScalarAttrs, x: TensorType) -> tuple[QParams, float]:
        qp = check_qtensor(self.name, x)
        return qp, check_finite(self.name, "scalar", attrs.scalar)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        shapes = ((129,), (7,), (2, 33), (1,), (3, 5, 7), (65,))
        for k, c in enumerate(SCALAR_CASES):
            dtype = (u8, i8)[k % 2]
            s, z = sample_qparams(rng, dtype, k)
            if k % 3 == 2:
                s = float(rng.choice([0.1, 0.25, 1 / 3]))
            # scalars near multiples of s, including exact .5 ties of c / s
            cc = c if k < 6 else c * s * 10 + (0.5 * s if k % 2 else 0.0)
            ty, a = edge_q(rng, shapes[k % len(shapes)], dtype, s, z)
            yield OpSample(QScalarAttrs(cc), (ty,), (a,), f"{dtype}-c{cc:g}-s{s:g}-zp{z}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        torch = torch_quiet()
        x = to_torch(sample.arrays[0], sample.in_types[0])
        y = getattr(torch.ops.quantized, self.torch_op)(x, sample.attrs.scalar)
        oq = sig.out.qparams
        assert oq is not None
        if (float(y.q_scale()), int(y.q_zero_point())) != (oq.scale_value, oq.zp_value):
            raise AssertionError(
                f"{self.name}: PyTorch output qparams ({y.q_scale()}, {y.q_zero_point()})"
                f" differ from infer_type's {oq}")
        return to_numpy(y)


class _QAddScalar(_QScalar):
    def infer_type(self, attrs: QScalarAttrs, x: TensorType) -> TensorType:
        qp, c = self._check(attrs, x)
        s, zp, _ = add_scalar_qparams(qp, x.dtype, c)
        return x.with_qparams(QParams.per_tensor(s, zp))

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        qp, oq = sig.in_types[0].qparams, sig.out.qparams
        assert qp is not None and oq is not None
        dt = sig.out.dtype
        s, zp, cq = add_scalar_qparams(qp, dt, float(sig.attrs.scalar))
        if dt.qmin <= qp.zp_value - cq <= dt.qmax:  # only the zero point moves
            out = x.copy()
        else:
            m = F32(F32(qp.scale_value) * inv_f(s))
            out = requantize_int(x.astype(np.int64) - qp.zp_value + cq, m, zp, dt)
        if self.relu:
            out = np.maximum(out, np.asarray(zp).astype(out.dtype))
        return out

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.te_vecmath import requantize_torch
        from qcompiler.lowering.tvm_compat import te

        qp = sig.in_types[0].qparams
        assert qp is not None
        dt = sig.out.dtype
        s, zp, cq = add_scalar_qparams(qp, dt, float(sig.attrs.scalar))
        copy = dt.qmin <= qp.zp_value - cq <= dt.qmax
        m = F32(F32(qp.scale_value) * inv_f(s))

        def body(i: tuple[Any, ...]) -> Any:
            if copy:
                out = x[i]
            else:
                acc = x[i].astype("int32") - te.const(qp.zp_value - cq, "int32")
                out = requantize_torch(acc, float(m), zp, dt, acc_bound=255 + abs(cq))
            return te.max(out, te.const(zp, dt.storage)) if self.relu else out

        return te_lib.elementwise(sig.out.shape, body, self.name.replace(".", "_"))


@register_op
class QAddScalar(_QAddScalar):
    """x + c with requantization only when the shifted zero point leaves the range.

    c_q = rint(c / s) (double). If lo <= z - c_q <= hi: same values, zp' = z - c_q, s' = s.
    Else zp' = the violated bound, s' = (hi - (z - c_q)) / (hi - lo) * s (below) or
    ((z - c_q) - lo) / (hi - lo) * s (above), and out = clamp(zp' + rint(f32(q - z + c_q) * m)),
    m = f32(s) * (1f / f32(s')). Exactly torch.ops.quantized.add_scalar.
    """

    name = "qnn.add_scalar"
    torch_op = "add_scalar"
    torch_counterparts = ("torch.ops.quantized.add_scalar", "nnq.QFunctional.add_scalar")


@register_op
class QAddScalarRelu(_QAddScalar):
    """max(qnn.add_scalar(x, c), zp') (torch.ops.quantized.add_scalar_relu)."""

    name = "qnn.add_scalar_relu"
    torch_op = "add_scalar_relu"
    relu = True
    torch_counterparts = ("torch.ops.quantized.add_scalar_relu",)


def mul_scalar_qparams(qp: QParams, dtype: DType, c: float) -> tuple[float, int]:
    if c > 0:
        return c * qp.scale_value, qp.zp_value
    if c == 0:
        return 1.0, 0
    return abs(c) * qp.scale_value, dtype.qmax - (qp.zp_value - dtype.qmin)


class _QMulScalar(_QScalar):
    def infer_type(self, attrs: QScalarAttrs, x: TensorType) -> TensorType:
        qp, c = self._check(attrs, x)
        return x.with_qparams(QParams.per_tensor(*mul_scalar_qparams(qp, x.dtype, c)))

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        qp = sig.in_types[0].qparams
        assert qp is not None
        dt, c = sig.out.dtype, float(sig.attrs.scalar)
        _, zp = mul_scalar_qparams(qp, dt, c)
        if c > 0:
            out, floor = x.copy(), qp.zp_value
        elif c == 0:
            return np.zeros_like(x)
        else:
            out, floor = (dt.qmax + dt.qmin - x.astype(np.int64)).astype(dt.np), zp
        if self.relu:
            out = np.maximum(out, np.asarray(floor).astype(out.dtype))
        return out

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.tvm_compat import te

        qp = sig.in_types[0].qparams
        assert qp is not None
        dt, c = sig.out.dtype, float(sig.attrs.scalar)
        _, zp = mul_scalar_qparams(qp, dt, c)
        floor = qp.zp_value if c > 0 else zp

        def body(i: tuple[Any, ...]) -> Any:
            if c == 0:
                return te.const(0, dt.storage)
            if c > 0:
                out = x[i]
            else:
                out = (te.const(dt.qmax + dt.qmin, "int32") - x[i].astype("int32")).astype(
                    dt.storage)
            return te.max(out, te.const(floor, dt.storage)) if self.relu else out

        return te_lib.elementwise(sig.out.shape, body, self.name.replace(".", "_"))


@register_op
class QMulScalar(_QMulScalar):
    """x * c without re-rounding any value.

    c > 0: same ints, s' = c * s, zp' = z. c == 0 (also -0.0): all zeros, s' = 1.0, zp' = 0.
    c < 0: q' = qmax + qmin - q, zp' = qmax - (z - qmin), s' = |c| * s.
    Exactly torch.ops.quantized.mul_scalar.
    """

    name = "qnn.mul_scalar"
    torch_op = "mul_scalar"
    torch_counterparts = ("torch.ops.quantized.mul_scalar", "nnq.QFunctional.mul_scalar")


@register_op
class QMulScalarRelu(_QMulScalar):
    """qnn.mul_scalar then relu: max(q, z) for c > 0, max(q', zp') for c < 0, zeros for c == 0.

    (For c > 0 PyTorch applies relu with the *input* zero point, which is also the output's.)
    """

    name = "qnn.mul_scalar_relu"
    torch_op = "mul_scalar_relu"
    relu = True
    torch_counterparts = ("torch.ops.quantized.mul_scalar_relu",)


# --- concatenation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QCatAttrs:
    axis: int = 0
    """Concatenation dim, as given to PyTorch (negative counts from the end)."""
    out_qparams: QParams | None = None
    """Output qparams; None: those of the first input (torch.cat / quantized.cat default)."""


def cat_takes_nhwc_path(axis: int, in_types: Sequence[TensorType]) -> bool:
    """Whether quantized::cat runs its channels-last kernel on these contiguous NCHW inputs.

    PyTorch takes it iff dim == 1 (literally, before wrapping), every input is 4-D and every
    input `is_contiguous(channels_last)`. A contiguous NCHW tensor is also channels-last
    contiguous when C == 1 or H == W == 1 (size-1 dims have no stride constraint).
    """
    if axis != 1 or any(t.rank != 4 for t in in_types):
        return False
    return all(t.shape[1] == 1 or t.shape[2] * t.shape[3] == 1 for t in in_types)


class _QCat(OpDef):
    Attrs = QCatAttrs
    num_inputs = None
    relu: ClassVar[bool] = False
    torch_op: ClassVar[str] = ""

    def infer_type(self, attrs: QCatAttrs, *xs: TensorType) -> TensorType:
        op = self.name
        if not xs:
            raise TypeInferenceError(f"{op}: needs at least one input tensor")
        for k, t in enumerate(xs):
            check_qtensor(op, t, f"input {k}")
        dtype = same_dtype(op, xs)
        rank = xs[0].rank
        if rank == 0:
            raise TypeInferenceError(f"{op}: zero-dimensional tensors cannot be concatenated")
        if not isinstance(attrs.axis, (int, np.integer)) or isinstance(attrs.axis, bool):
            raise TypeInferenceError(f"{op}: axis must be an int, got {attrs.axis!r}")
        if not -rank <= attrs.axis < rank:
            raise TypeInferenceError(
                f"{op}: axis {attrs.axis} is out of range for rank-{rank} inputs"
                f" (expected {-rank}..{rank - 1})")
        ax = int(attrs.axis) % rank
        for k, t in enumerate(xs):
            if t.rank != rank or any(t.shape[d] != xs[0].shape[d]
                                     for d in range(rank) if d != ax):
                raise TypeInferenceError(
                    f"{op}: input {k} has shape {list(t.shape)}, input 0 has"
                    f" {list(xs[0].shape)}; all sizes except axis {attrs.axis} must match")
        oq = attrs.out_qparams
        if oq is None:
            oq = xs[0].qparams
            assert oq is not None
        check_out_qparams(op, oq)
        check_zero_point(op, oq, dtype)
        shape = list(xs[0].shape)
        shape[ax] = sum(t.shape[ax] for t in xs)
        return TensorType(tuple(shape), dtype, QParams.per_tensor(oq.scale_value, oq.zp_value))

    def reference(self, sig: Sig, *xs: np.ndarray) -> np.ndarray:
        oq, dtype = sig.out.qparams, sig.out.dtype
        assert oq is not None
        ax = int(sig.attrs.axis) % sig.out.rank
        nhwc = cat_takes_nhwc_path(int(sig.attrs.axis), sig.in_types)
        parts = []
        for x, t in zip(xs, sig.in_types):
            qp = t.qparams
            assert qp is not None
            if not nhwc:  # dequantize() each, cat, quantize_per_tensor
                parts.append(qm.q_fbgemm(deq_sub(x, qp), oq.scale_value, oq.zp_value, dtype))
                continue
            if qp.scale_value == oq.scale_value and qp.zp_value == oq.zp_value and not self.relu:
                parts.append(x.copy())  # memcpy fast path
                continue
            # per pixel: channels [0, C//8*8) vectorized, the rest scalar
            dv, ds = deq_fma(x, qp), deq_sub(x, qp)
            if self.relu:
                dv, ds = np.maximum(dv, F32(0)), np.maximum(ds, F32(0))
            cv = x.shape[1] // 8 * 8
            o = quant_val(ds, inv_f(oq.scale_value), oq, dtype)
            o[:, :cv] = quant_vec(dv[:, :cv], inv_d(oq.scale_value), oq, dtype)
            parts.append(o)
        out = np.concatenate(parts, axis=ax)
        if self.relu and not nhwc:
            out = np.maximum(out, np.asarray(oq.zp_value).astype(out.dtype))
        return out

    def lower(self, sig: Sig, *xs: Any) -> Any:
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.te_vecmath import q_vec_torch
        from qcompiler.lowering.tvm_compat import te, tirx

        oq, dt = sig.out.qparams, sig.out.dtype
        assert oq is not None
        ax = int(sig.attrs.axis) % sig.out.rank
        nhwc = cat_takes_nhwc_path(int(sig.attrs.axis), sig.in_types)
        zero = te_lib.f32_const(0.0)

        def value(x: Any, t: TensorType, i: tuple[Any, ...]) -> Any:
            qp = t.qparams
            assert qp is not None
            q = x[i]
            if not nhwc:
                d = te_lib.dequantize_value(q, qp.scale_value, qp.zp_value)
                out = te_lib.q_fbgemm_value(d, inv_f(oq.scale_value), oq.zp_value, dt)
                return te.max(out, te.const(oq.zp_value, dt.storage)) if self.relu else out
            if qp.scale_value == oq.scale_value and qp.zp_value == oq.zp_value and \
                    not self.relu:
                return q
            dv = te_lib.dequantize_fma_value(q, qp.scale_value, qp.zp_value)
            ds = te_lib.dequantize_value(q, qp.scale_value, qp.zp_value)
            if self.relu:
                dv, ds = te.max(dv, zero), te.max(ds, zero)
            vec = q_vec_torch(dv, te_lib.f32_const(inv_d(oq.scale_value)), oq.zp_value, dt,
                              256.0 * qp.scale_value * float(inv_d(oq.scale_value)))
            val = te_lib.q_val_value(ds, te_lib.f32_const(inv_f(oq.scale_value)),
                                     te_lib.f32_const(oq.zp_value), dt)
            return tirx.Select(i[1] < t.shape[1] // 8 * 8, vec, val)

        def body(i: tuple[Any, ...]) -> Any:
            # the last input that starts at or before i[ax]; if_then_else loads lazily
            offsets = np.cumsum([0] + [t.shape[ax] for t in sig.in_types])
            out = None
            for k in reversed(range(len(xs))):
                j = i[:ax] + (i[ax] - int(offsets[k]),) + i[ax + 1:]
                v = value(xs[k], sig.in_types[k], j)
                out = v if out is None else tirx.if_then_else(i[ax] >= int(offsets[k + 1]),
                                                                out, v)
            return out

        return te_lib.elementwise(sig.out.shape, body, self.name.replace(".", "_"))

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases: tuple[tuple[int, tuple[tuple[int, ...], ...]], ...] = (
            (1, ((2, 3, 4, 5), (2, 7, 4, 5))),                    # NCHW path
            (0, ((1, 65), (2, 65), (3, 65))),
            (1, ((2, 9, 1, 1), (2, 17, 1, 1), (2, 64, 1, 1))),    # pooled features: NHWC path
            (1, ((1, 1, 3, 5), (1, 1, 3, 5))),                    # C == 1: NHWC path, scalar
            (-1, ((3, 7), (3, 1), (3, 129))),
            (1, ((1, 24, 1, 1), (1, 8, 1, 1))),
            (-3, ((2, 16, 1, 1), (2, 3, 1, 1))),                  # dim -3 is not "dim == 1"
            (2, ((2, 3, 4), (2, 3, 6))),
            (0, ((7,),)),
        )
        for k, (axis, shapes) in enumerate(cases):
            dtype = (u8, i8)[k % 2]
            qps = [sample_qparams(rng, dtype, k + j) for j in range(len(shapes))]
            if k % 3 == 0:  # shared qparams hit the copy fast path / no-op requantize
                qps = [qps[0]] * len(qps)
            tys, arrs = zip(*(edge_q(rng, sh, dtype, *qp) for sh, qp in zip(shapes, qps)))
            base = qps[0][0]
            out = None if k % 4 == 3 else QParams.per_tensor(
                base * float(rng.choice([1, 2, 0.5, 1.5])), S.rand_zp(rng, dtype, k % 2 == 0))
            yield OpSample(QCatAttrs(axis, out), tuple(tys), tuple(arrs),
                           f"{dtype}-axis{axis}-{len(shapes)}in")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        torch = torch_quiet()
        xs = [to_torch(x, t) for x, t in zip(sample.arrays, sample.in_types)]
        oq = sample.attrs.out_qparams
        op = getattr(torch.ops.quantized, self.torch_op)
        if oq is None:
            return to_numpy(op(xs, sample.attrs.axis, None, None))
        return to_numpy(op(xs, sample.attrs.axis, oq.scale_value, oq.zp_value))


@register_op
class QCat(_QCat):
    """Concatenate quantized tensors and requantize to the output qparams.

    Contiguous (NCHW-style) path: out = Q_fbgemm(D_sub(x_i)) per input, concatenated.
    PyTorch's channels-last path, which it also takes for contiguous 4-D inputs with C == 1 or
    H == W == 1 when axis == 1 (see `cat_takes_nhwc_path`): inputs whose qparams equal the
    output's are copied; otherwise channels c < C_i//8*8 use Q_vec(D_fma(x)) with
    inv = f32(1.0 / out_scale) and the rest Q_val(D_sub(x)). Exactly torch.ops.quantized.cat
    (and torch.cat, which requires equal qparams and keeps them).
    """

    name = "qnn.cat"
    torch_op = "cat"
    torch_counterparts = ("torch.ops.quantized.cat", "torch.cat", "nnq.QFunctional.cat")


@register_op
class QCatRelu(_QCat):
    """qnn.cat with relu: contiguous path max(q, zo) after requantizing; channels-last path
    max(., 0.0f) on the dequantized values before requantizing (torch.ops.quantized.cat_relu)."""

    name = "qnn.cat_relu"
    torch_op = "cat_relu"
    relu = True
    torch_counterparts = ("torch.ops.quantized.cat_relu",)
