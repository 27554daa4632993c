"""Quantized normalization: batch_norm (+relu), layer_norm, group_norm, instance_norm.

Every op takes a per-tensor quint8 (u8) or qint8 (i8) tensor plus float32 parameters (IR
inputs, usually constants) and produces the same dtype with the output qparams in its attrs,
as the `torch.ao.nn.quantized` modules do. The semantics are PyTorch 2.13's CPU kernels
(QuantizedOpKernels.cpp; the quantized normalize kernels dispatch to their AVX2 build, 32-lane
vectors, on AVX2 and AVX-512 hosts alike), measured bit-exact on this machine.

Notation (float32 unless marked f64; rint = round half to even; fma = one rounding):
  Q_vec(y)  = clamp(zo + rint(f32(y * inv_o)))         vectorized quantize
  Q_val(y)  = clamp(rint(f32(f32(zo) + f32(y * inv_o)))) scalar quantize_val (zp before rint)
  inv_o     = 1.0f / f32(out_scale)

Moments (layer/group/instance norm) come from exact integer sums of the raw storage values
q over a group of N elements (hsum / hsum_sq), then float32:
  m_sh = f32(sum q) / f32(N)            (mean of q, with the zero point)
  m    = m_sh - f32(zx)                 (mean / x_scale)
  var  = max(fma(-m_sh, m_sh, f32(sum q^2) / f32(N)), 0)
  r    = f32(f64(sx) / sqrt(f64(f32(var * sx) * sx) + eps))    (x_scale / std), sx = f32(x_scale)
The compiler contracts the variance into an fma, which matters when var << m_sh^2.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qcompiler.errors import TypeInferenceError
from qcompiler.ir.registry import OpDef, OpSample, Sig, register_op
from qcompiler.ir.types import DType, QParams, TensorType, f32, i8, u8
from qcompiler.reference import quant_math as qm
from qcompiler.reference.quant_math import fma_f32 as fma_f32_exact
from qcompiler.testing import samples as S

F32 = np.float32
F64 = np.float64

VEC_LANES = 32
"""Elements per vector iteration of the quantized normalize kernels (AVX2: 8 floats x 4)."""

QDTYPES: tuple[DType, ...] = (u8, i8)
"""quint8 and qint8: the dtypes PyTorch's quantized normalization kernels take."""

NHWC_PARALLEL_HW = 512
"""PyTorch's NHWC group-norm kernel switches to float accumulation from this H*W on."""


# --- shared checks (a few lines repeated from ops/elementwise.py to keep this module standalone) --


def check_qtensor(op: str, ty: TensorType, what: str = "input") -> QParams:
    """The per-tensor qparams of a quint8/qint8 tensor, or an error naming what is supported."""
    qp = ty.qparams
    if qp is None or ty.dtype not in QDTYPES:
        raise TypeInferenceError(
            f"{op}: {what} must be a quantized tensor (quint8 (u8), qint8 (i8)), got {ty}")
    if qp.axis is not None or qp.scheme == "float_qparams":
        raise TypeInferenceError(
            f"{op}: {what} must have per-tensor qparams (PyTorch's quantized kernels reject"
            f" per-channel input), got {ty}")
    return qp


def check_out_qparams(op: str, qp: Any) -> QParams:
    if not isinstance(qp, QParams) or qp.axis is not None or qp.scheme == "float_qparams":
        raise TypeInferenceError(f"{op}: out_qparams must be per-tensor QParams, got {qp!r}")
    return qp


def check_zero_point(op: str, qp: QParams, dtype: DType) -> None:
    if not dtype.qmin <= qp.zp_value <= dtype.qmax:
        raise TypeInferenceError(
            f"{op}: output zero point {qp.zp_value} is outside the {dtype.torch_qname} range"
            f" [{dtype.qmin}, {dtype.qmax}]")


def check_finite(op: str, name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeInferenceError(f"{op}: {name} must be a number, got {v!r}")
    if not np.isfinite(float(v)):
        raise TypeInferenceError(f"{op}: {name} must be finite, got {v!r}")
    return float(v)


def torch_quiet() -> Any:
    """Import torch with the quantized-op deprecation warnings silenced."""
    import torch

    warnings.filterwarnings("ignore", message=".*deprecated.*")
    return torch


# --- shared arithmetic ---------------------------------------------------------------------------


def int_moments(qg: np.ndarray, zx: int, x_scale: float, eps: float,
                ) -> tuple[np.ndarray, np.ndarray]:
    """(m, r) of the module docstring over the last axis of `qg` (integer storage values)."""
    q = qg.astype(np.int64)
    n = F32(q.shape[-1])
    m_sh = (q.sum(-1).astype(F32) / n).astype(F32)
    ex2 = ((q * q).sum(-1).astype(F32) / n).astype(F32)
    return _finish_moments(m_sh, ex2, zx, x_scale, eps)


def _finish_moments(m_sh: np.ndarray, ex2: np.ndarray, zx: int, x_scale: float, eps: float,
                    ) -> tuple[np.ndarray, np.ndarray]:
    m = (m_sh - F32(zx)).astype(F32)
    var = np.maximum(fma_f32_exact(-m_sh, m_sh, ex2), F32(0))
    sx = F32(x_scale)
    t = ((var * sx).astype(F32) * sx).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (F64(sx) / np.sqrt(t.astype(F64) + float(eps))).astype(F32)
    return m, r


def _centered(q: np.ndarray, zx: int, m: np.ndarray) -> np.ndarray:
    """f32(q - zx) - m: the dequantize with scale 1.0 used by the normalize kernels."""
    return ((q.astype(np.int64) - zx).astype(F32) - m).astype(F32)


def _check_params(op: str, tys: Sequence[TensorType], names: Sequence[str],
                  shape: tuple[int, ...], what: str) -> None:
    for ty, name in zip(tys, names):
        if ty.dtype is not f32 or ty.qparams is not None:
            raise TypeInferenceError(
                f"{op}: {name} must be an unquantized float32 tensor, got {ty}")
        if ty.shape != shape:
            raise TypeInferenceError(
                f"{op}: {name} must have shape {list(shape)} ({what}), got {list(ty.shape)}")


def _check_eps(op: str, eps: Any) -> float:
    e = check_finite(op, "eps", eps)
    if e < 0:
        raise TypeInferenceError(f"{op}: eps must be >= 0, got {eps!r}")
    return e


def _out_type(op: str, attrs: Any, x: TensorType) -> TensorType:
    oq = check_out_qparams(op, attrs.out_qparams)
    check_zero_point(op, oq, x.dtype)
    return TensorType(x.shape, x.dtype, QParams.per_tensor(oq.scale_value, oq.zp_value))


def _qparams(ty: TensorType) -> QParams:
    qp = ty.qparams
    assert qp is not None
    return qp


# --- lowering helpers (TE; TVM is imported lazily: ops/ must import without it) -----------------
#
# Each lower() is its reference step for step in the same float widths: fma_f32_exact is
# te_lib.fma (llvm.fma, one rounding), every float32 product that the reference rounds before
# an add is fenced (TVM contracts a * b + c into an FMA otherwise), integer sums are exact
# (any order), and q_vec / q_val are te_lib.q_vec_value / q_val_value.


def _te() -> tuple[Any, Any, Any]:
    """(te_lib, te, tirx)."""
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import te, tirx

    return te_lib, te, tirx


def _per_group(shape: Sequence[int], fn: Any, name: str) -> Any:
    """te.compute(shape, fn), computed once per index and read per element: the statistic
    stage is copied through `float_ops.materialize` (the generic schedules would otherwise
    inline it, a sqrt and divisions, into every element of the group)."""
    from qcompiler.ops.float_ops import materialize

    _, te, _ = _te()
    t = te.compute(tuple(int(d) for d in shape), lambda *k: fn(k), name=f"{name}_value")
    return materialize(t, name)


def _int_sum_dtype(terms: int, dtype: DType, squared: bool) -> str:
    """int32 when no partial sum of `terms` (squared) storage values can leave int32."""
    m = max(abs(dtype.qmin), abs(dtype.qmax))
    return "int32" if terms * (m * m if squared else m) < 2**31 else "int64"


def _reduce_axes(extents: Sequence[int], prefix: str) -> list[Any]:
    """Reduce axes over `extents`, with the constant 0 for size-1 extents (a reduction whose
    input has its output's size risks TVM's in-place buffer reuse: `float_ops.materialize`)."""
    _, te, _ = _te()
    return [te.reduce_axis((0, d), name=f"{prefix}{k}") if d != 1 else te.const(0, "int32")
            for k, d in enumerate(extents)]


def _te_sum(value: Any, rd: Sequence[Any]) -> Any:
    """te.sum of `value` over the reduce axes among `rd` (none: the value itself)."""
    from qcompiler.lowering.tvm_compat import tirx

    _, te, _ = _te()
    axes = [r for r in rd if isinstance(r, tirx.IterVar)]
    return te.sum(value, axis=axes) if axes else value


def _te_int_sums(x: Any, keep: Sequence[Any], rd: Sequence[Any], load: Any, terms: int,
                 dtype: DType) -> tuple[Any, Any]:
    """(sum q, sum q*q) over the reduce axes `rd` of the storage values `load(keep, rd)`:
    exact integers (hsum / hsum_sq), any order."""
    a1, a2 = _int_sum_dtype(terms, dtype, False), _int_sum_dtype(terms, dtype, True)
    q = load(keep, rd)
    return _te_sum(q.astype(a1), rd), _te_sum(q.astype(a2) * q.astype(a2), rd)


def _te_finish_moments(m_sh: Any, ex2: Any, zx: int, x_scale: float, eps: float,
                       ) -> tuple[Any, Any]:
    """`_finish_moments` on float32 expressions: (m, r)."""
    te_lib, te, _ = _te()
    f = te_lib.f32_const
    m = m_sh - f(zx)
    var = te.max(te_lib.fma(-m_sh, m_sh, ex2), f(0.0))
    sx = f(x_scale)
    t = te_lib.fence(te_lib.fence(var * sx) * sx)
    r = (te.const(float(F32(x_scale)), "float64")
         / te.sqrt(t.astype("float64") + te.const(float(eps), "float64"))).astype("float32")
    return m, r


def _te_requant(y: Any, qp: QParams, dtype: DType, vector: Any) -> Any:
    """Q_vec(y) where `vector` (a bool expression, or True/False) holds, else Q_val(y)."""
    te_lib, _, tirx = _te()
    inv = te_lib.f32_const(qm.f32_inverse(qp.scale_value))
    vec = te_lib.q_vec_value(y, inv, qp.zp_value, dtype) if vector is not False else None
    if vector is True:
        return vec
    val = te_lib.q_val_value(y, inv, te_lib.f32_const(qp.zp_value), dtype)
    return val if vec is None else tirx.Select(vector, vec, val)


def _bn_coefficients(w: np.ndarray, b: np.ndarray, mean: np.ndarray, var: np.ndarray,
                     eps: float, x_scale: float, out_scale: float,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta) of qnn.batch_norm from constant parameters, computed exactly as its
    `reference` computes them (the lowering reads them from kernel constants)."""
    e = F32(eps)
    w, b, mean, var = (np.asarray(a, F32) for a in (w, b, mean, var))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv_sigma = (1.0 / np.sqrt((var + e).astype(F32)).astype(F64)).astype(F32)
        ratio = F64(x_scale) / F64(out_scale)
        alpha = ((inv_sigma * w).astype(F32).astype(F64) * ratio).astype(F32)
        t = (b - ((mean * inv_sigma).astype(F32) * w).astype(F32)).astype(F32)
        beta = (t.astype(F64) / F64(out_scale)).astype(F32)
    return alpha, beta


# --- batch norm ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QBatchNormAttrs:
    out_qparams: QParams
    """Output scale and zero point (per tensor); the output dtype is the input's."""
    eps: float = 1e-5


class _QBatchNorm(OpDef):
    """Shared definition of qnn.batch_norm and qnn.batch_norm_relu."""

    Attrs = QBatchNormAttrs
    num_inputs = 5
    relu: ClassVar[bool] = False

    def infer_type(self, attrs: QBatchNormAttrs, x: TensorType, *params: TensorType,
                   ) -> TensorType:
        check_qtensor(self.name, x)
        if not 2 <= x.rank <= 5:
            raise TypeInferenceError(
                f"{self.name}: input must have rank 2..5 (N, C, *spatial), as PyTorch's"
                f" quantized batch_norm1d/2d/3d; got rank {x.rank} {list(x.shape)}")
        _check_params(self.name, params, ("weight", "bias", "running_mean", "running_var"),
                      (x.shape[1],), "one value per channel")
        _check_eps(self.name, attrs.eps)
        return _out_type(self.name, attrs, x)

    def reference(self, sig: Sig, x: np.ndarray, w: np.ndarray, b: np.ndarray,
                  mean: np.ndarray, var: np.ndarray) -> np.ndarray:
        qx = _qparams(sig.in_types[0])
        oq = sig.attrs.out_qparams
        eps = F32(sig.attrs.eps)
        w, b, mean, var = (np.asarray(a, F32) for a in (w, b, mean, var))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            inv_sigma = (1.0 / np.sqrt((var + eps).astype(F32)).astype(F64)).astype(F32)
            ratio = F64(qx.scale_value) / F64(oq.scale_value)
            alpha = ((inv_sigma * w).astype(F32).astype(F64) * ratio).astype(F32)
            t = (b - ((mean * inv_sigma).astype(F32) * w).astype(F32)).astype(F32)
            beta = (t.astype(F64) / F64(oq.scale_value)).astype(F32)
        shape = [1] * x.ndim
        shape[1] = -1
        y = fma_f32_exact(alpha.reshape(shape), (x.astype(np.int64) - qx.zp_value).astype(F32),
                          beta.reshape(shape))
        out = qm.q_vec(y, F32(1.0), oq.zp_value, sig.out.dtype)
        if self.relu:
            out = np.maximum(out, np.asarray(oq.zp_value).astype(out.dtype))
        return out

    def lower(self, sig: Sig, x: Any, w: Any, b: Any, mean: Any, var: Any) -> Any:
        """y = fma(alpha[c], f32(q - zx), beta[c]), Q_vec with scale 1 (+ max with zo).

        alpha and beta come from kernel constants when the parameters are graph constants
        (`_bn_coefficients`, the reference's own numpy steps), else from the same steps in TE.
        """
        te_lib, te, _ = _te()
        qx = _qparams(sig.in_types[0])
        oq: QParams = sig.attrs.out_qparams
        dtype = sig.out.dtype
        sx, so, eps = qx.scale_value, oq.scale_value, sig.attrs.eps
        data = [te_lib.constant_value(t) for t in (w, b, mean, var)]
        if all(d is not None for d in data):
            dw, db, dm, dv = (np.asarray(d) for d in data)
            alpha_np, beta_np = _bn_coefficients(dw, db, dm, dv, eps, sx, so)
            at = te_lib.constant(alpha_np, "bn_alpha")
            bt = te_lib.constant(beta_np, "bn_beta")

            def alpha(c: Any) -> Any:
                return at[c]

            def beta(c: Any) -> Any:
                return bt[c]
        else:
            f = te_lib.f32_const

            def inv_sigma(c: Any) -> Any:
                sd = te.sqrt(var[c] + f(eps)).astype("float64")
                return (te.const(1.0, "float64") / sd).astype("float32")

            def alpha(c: Any) -> Any:
                ratio = te.const(float(F64(sx) / F64(so)), "float64")
                return (te_lib.fence(inv_sigma(c) * w[c]).astype("float64") * ratio).astype(
                    "float32")

            def beta(c: Any) -> Any:
                t = b[c] - te_lib.fence(te_lib.fence(mean[c] * inv_sigma(c)) * w[c])
                return (t.astype("float64") / te.const(float(F64(so)), "float64")).astype(
                    "float32")

        zo = oq.zp_value

        def value(i: tuple[Any, ...]) -> Any:
            c = i[1]
            xf = (x[i].astype("int32") - te.const(qx.zp_value, "int32")).astype("float32")
            out = te_lib.q_vec_value(te_lib.fma(alpha(c), xf, beta(c)), te_lib.f32_const(1.0),
                                     zo, dtype)
            return te.max(out, te.const(zo, dtype.storage)) if self.relu else out

        return te_lib.elementwise(sig.out.shape, value, self.name.replace(".", "_"))

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases: tuple[tuple[tuple[int, ...], DType], ...] = (
            ((2, 5, 3, 4), u8), ((1, 3, 2, 3, 4), i8), ((1, 40, 2, 3), u8), ((1, 70, 1, 2), i8),
            ((3, 7), u8), ((2, 4, 5), i8), ((2, 3, 4, 5), u8), ((1, 9, 2, 2, 2), u8),
        )
        for k, (shape, dtype) in enumerate(cases):
            c = shape[1]
            sx = float(S.EDGE_SCALES[k % len(S.EDGE_SCALES)]) if k >= 6 else S.rand_scale(rng)
            zx = S.rand_zp(rng, dtype, edge=k % 3 == 2)
            tx, x = S.qtensor(rng, shape, dtype, sx, zx)
            real = sx * max(dtype.qmax - dtype.qmin, 1) / 4
            mean = (rng.standard_normal(c) * real).astype(F32)
            var = (rng.uniform(0.05, 2.0, c) * real * real).astype(F32)
            w = rng.standard_normal(c).astype(F32)
            b = (rng.standard_normal(c) * 0.5).astype(F32)
            so = S.rand_scale(rng, 0.005, 0.1) if k < 6 else float((1e-6, 100.0)[k % 2])
            zo = S.rand_zp(rng, dtype, edge=k % 4 == 1)
            eps = 1e-5 if k != 4 else 0.0
            pt = S.ftensor(rng, (c,))[0]
            yield OpSample(QBatchNormAttrs(QParams.per_tensor(so, zo), eps),
                           (tx, pt, pt, pt, pt), (x, w, b, mean, var),
                           f"{dtype}-{'x'.join(map(str, shape))}-so{so:.3g}-zo{zo}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        torch = torch_quiet()
        x = to_torch(sample.arrays[0], sample.in_types[0])
        params = [torch.from_numpy(np.ascontiguousarray(a)) for a in sample.arrays[1:]]
        dims = {2: "1d", 3: "1d", 4: "2d", 5: "3d"}[x.dim()]
        op = getattr(torch.ops.quantized, f"batch_norm{dims}{'_relu' if self.relu else ''}")
        oq: QParams = sample.attrs.out_qparams
        return to_numpy(op(x, *params, sample.attrs.eps, oq.scale_value, oq.zp_value))


@register_op
class QBatchNorm(_QBatchNorm):
    """y = Q_vec'(fma(alpha[c], f32(x - zx), beta[c])) per channel c (axis 1), where

    inv_sigma = f32(1.0 / f64(sqrtf(var + f32(eps))))
    alpha     = f32(f64(f32(inv_sigma * weight)) * (f64 sx / f64 so))
    beta      = f32(f64(bias - f32(f32(mean * inv_sigma) * weight)) / f64 so)
    Q_vec'(y) = clamp(zo + rint(y))   (the kernel quantizes with scale 1)

    Inputs: x (N, C, *spatial) with rank 2..5, weight, bias, running_mean, running_var (f32[C]).
    Exactly torch.ops.quantized.batch_norm{1d,2d,3d} (nnq.BatchNorm2d/3d); the vector and
    scalar channel paths both use the fma, so every element follows this formula.
    """

    name = "qnn.batch_norm"
    torch_counterparts = ("torch.ops.quantized.batch_norm1d/2d/3d", "nnq.BatchNorm2d",
                          "nnq.BatchNorm3d")


@register_op
class QBatchNormRelu(_QBatchNorm):
    """y = max(qnn.batch_norm(x, ...), zo): batch norm with the ReLU fused at the zero point."""

    name = "qnn.batch_norm_relu"
    relu = True
    torch_counterparts = ("torch.ops.quantized.batch_norm{1d,2d,3d}_relu", "nniq.BNReLU2d",
                          "nniq.BNReLU3d")


# --- layer norm ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QLayerNormAttrs:
    normalized_shape: tuple[int, ...]
    """The trailing dimensions normalized over (and the shape of weight and bias)."""
    out_qparams: QParams
    """Output scale and zero point (per tensor); the output dtype is the input's."""
    eps: float = 1e-5


@register_op
class QLayerNorm(OpDef):
    """Per row of the last len(normalized_shape) dims (N elements), with m, r as in the module:

        t = f32(f32(f32(q - zx) - m) * r),  y = fma(t, weight[j], bias[j])
        out[j] = Q_vec(y) for j < N - N % 32,  Q_val(y) for the last N % 32 elements

    Inputs: x, then optionally weight and bias (f32 with shape normalized_shape; absent means
    1 and 0, which is the same arithmetic). Exactly torch.ops.quantized.layer_norm
    (nnq.LayerNorm): the last N % 32 elements of a row take the kernel's scalar tail, which
    adds the zero point before rounding.
    """

    name = "qnn.layer_norm"
    Attrs = QLayerNormAttrs
    num_inputs = (1, 3)
    schedule_kind = "reduction"
    torch_counterparts = ("torch.ops.quantized.layer_norm", "nnq.LayerNorm")

    def infer_type(self, attrs: QLayerNormAttrs, x: TensorType, *params: TensorType,
                   ) -> TensorType:
        check_qtensor(self.name, x)
        ns = attrs.normalized_shape
        if (not isinstance(ns, tuple) or not ns
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in ns)):
            raise TypeInferenceError(
                f"{self.name}: normalized_shape must be a non-empty tuple of positive ints,"
                f" got {ns!r}")
        if x.rank < len(ns) or x.shape[x.rank - len(ns):] != ns:
            raise TypeInferenceError(
                f"{self.name}: normalized_shape {list(ns)} must equal the trailing dimensions"
                f" of the input shape {list(x.shape)}")
        _check_params(self.name, params, ("weight", "bias"), ns, "normalized_shape")
        _check_eps(self.name, attrs.eps)
        return _out_type(self.name, attrs, x)

    def reference(self, sig: Sig, x: np.ndarray, *params: np.ndarray) -> np.ndarray:
        qx = _qparams(sig.in_types[0])
        oq = sig.attrs.out_qparams
        n = math.prod(sig.attrs.normalized_shape)
        q = x.reshape(-1, n)
        m, r = int_moments(q, qx.zp_value, qx.scale_value, sig.attrs.eps)
        g = params[0].reshape(-1) if params else np.ones(n, F32)
        b = params[1].reshape(-1) if params else np.zeros(n, F32)
        t = (_centered(q, qx.zp_value, m[:, None]) * r[:, None]).astype(F32)
        y = fma_f32_exact(t, g, b)
        inv = qm.f32_inverse(oq.scale_value)
        nv = n - n % VEC_LANES
        out = np.empty(q.shape, sig.out.dtype.np)
        out[:, :nv] = qm.q_vec(y[:, :nv], inv, oq.zp_value, sig.out.dtype)
        out[:, nv:] = qm.q_val(y[:, nv:], inv, oq.zp_value, sig.out.dtype)
        return out.reshape(x.shape)

    def lower(self, sig: Sig, x: Any, *params: Any) -> Any:
        """Exact integer row sums, the float32 moments once per row, then per element
        fma(f32(f32(f32(q - zx) - m) * r), weight, bias) and Q_vec / Q_val (the last N % 32
        elements of a row)."""
        te_lib, te, _ = _te()
        qx = _qparams(sig.in_types[0])
        a: QLayerNormAttrs = sig.attrs
        shape = tuple(int(s) for s in sig.in_types[0].shape)
        nd = len(a.normalized_shape)
        lead, ns = shape[:len(shape) - nd], shape[len(shape) - nd:]
        n = math.prod(ns)
        dtype = sig.out.dtype
        rd = _reduce_axes(ns, "ln_r")

        def load(k: Sequence[Any], r: Sequence[Any]) -> Any:
            return x[tuple(k) + tuple(r)]

        s1 = te.compute(lead, lambda *k: _te_int_sums(x, k, rd, load, n, dtype)[0],
                        name="qnn_layer_norm_sum")
        rd2 = _reduce_axes(ns, "ln_s")
        s2 = te.compute(lead, lambda *k: _te_int_sums(x, k, rd2, load, n, dtype)[1],
                        name="qnn_layer_norm_sumsq")
        nf = te_lib.f32_const(n)

        def moments(k: Sequence[Any]) -> tuple[Any, Any]:
            m_sh = s1[tuple(k)].astype("float32") / nf
            ex2 = s2[tuple(k)].astype("float32") / nf
            return _te_finish_moments(m_sh, ex2, qx.zp_value, qx.scale_value, a.eps)

        mean = _per_group(lead, lambda k: moments(k)[0], "qnn_layer_norm_mean")
        rstd = _per_group(lead, lambda k: moments(k)[1], "qnn_layer_norm_rstd")
        nv = n - n % VEC_LANES
        zx = te.const(qx.zp_value, "int32")

        def value(i: tuple[Any, ...]) -> Any:
            k, j = i[:len(lead)], i[len(lead):]
            centered = (x[i].astype("int32") - zx).astype("float32") - mean[k]
            t = te_lib.fence(centered * rstd[k])
            y = te_lib.fma(t, params[0][j], params[1][j]) if params else t
            flat = j[0]
            for d, e in zip(j[1:], ns[1:]):
                flat = flat * e + d
            vector: Any = True if nv == n else (False if nv == 0 else flat < nv)
            return _te_requant(y, a.out_qparams, dtype, vector)

        return te_lib.elementwise(shape, value, "qnn_layer_norm")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases: tuple[tuple[tuple[int, ...], int, DType, bool], ...] = (
            ((2, 3, 40), 1, u8, True), ((4, 33), 1, i8, False), ((2, 5, 7), 2, u8, True),
            ((3, 64), 1, i8, True), ((1, 10), 1, u8, True), ((4, 100), 1, u8, True),
            ((2, 2, 3, 5), 3, i8, True), ((3, 31), 1, u8, False), ((5, 70), 1, i8, True),
        )
        for k, (shape, nd, dtype, affine) in enumerate(cases):
            ns = shape[len(shape) - nd:]
            sx = S.rand_scale(rng, 1e-4, 1.0) if k < 7 else float(S.EDGE_SCALES[k % 7])
            zx = S.rand_zp(rng, dtype, edge=k % 3 == 1)
            if k == 5:  # narrow values far from zero: var << mean^2 (exercises the fma)
                lo = int(rng.integers(200, 240))
                x = rng.integers(lo, lo + 6, size=shape).astype(dtype.np)
                tx = TensorType(shape, dtype, QParams.per_tensor(sx, zx))
            else:
                tx, x = S.qtensor(rng, shape, dtype, sx, zx)
            so = S.rand_scale(rng, 0.005, 0.05) if k < 7 else float((1e-6, 100.0)[k % 2])
            zo = S.rand_zp(rng, dtype, edge=k % 4 == 2)
            attrs = QLayerNormAttrs(ns, QParams.per_tensor(so, zo), (1e-5, 1e-3, 0.0)[k % 3])
            label = f"{dtype}-{'x'.join(map(str, shape))}-ns{len(ns)}{'' if affine else '-plain'}"
            if not affine:
                yield OpSample(attrs, (tx,), (x,), label)
                continue
            g = rng.standard_normal(ns).astype(F32)
            b = (rng.standard_normal(ns) * 0.3).astype(F32)
            pt = TensorType(ns, f32)
            yield OpSample(attrs, (tx, pt, pt), (x, g, b), label)

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        torch = torch_quiet()
        a: QLayerNormAttrs = sample.attrs
        x = to_torch(sample.arrays[0], sample.in_types[0])
        g, b = ((torch.from_numpy(p) for p in sample.arrays[1:]) if len(sample.arrays) == 3
                else (None, None))
        return to_numpy(torch.ops.quantized.layer_norm(
            x, list(a.normalized_shape), g, b, a.eps, a.out_qparams.scale_value,
            a.out_qparams.zp_value))


# --- group norm and instance norm ----------------------------------------------------------------


def group_norm_kernel(x_shape: tuple[int, ...]) -> str:
    """Which PyTorch kernel a contiguous input of this shape takes: nchw, nhwc or nhwc_float.

    PyTorch checks `is_contiguous(channels_last)`, which a contiguous 4-D tensor also satisfies
    when C == 1 or H == W == 1; those take the NHWC kernel, whose per-element formula differs
    and which, from H*W >= 512 on, accumulates the moments in float32.
    """
    if len(x_shape) != 4 or (x_shape[1] != 1 and x_shape[2] * x_shape[3] != 1):
        return "nchw"
    return "nhwc" if x_shape[2] * x_shape[3] < NHWC_PARALLEL_HW else "nhwc_float"


def group_norm_reference(x: np.ndarray, groups: int, g: np.ndarray | None, b: np.ndarray | None,
                         qx: QParams, oq: QParams, eps: float, dtype: DType) -> np.ndarray:
    """The quantized group norm of the module docstring (see QGroupNorm for the formulas)."""
    bs, c = x.shape[0], x.shape[1]
    hw = math.prod(x.shape[2:])
    cpg = c // groups
    gam = (np.ones(c, F32) if g is None else g.astype(F32)).reshape(groups, cpg)
    bet = (np.zeros(c, F32) if b is None else b.astype(F32)).reshape(groups, cpg)
    q = x.reshape(bs, groups, cpg, hw)
    inv = qm.f32_inverse(oq.scale_value)
    kernel = group_norm_kernel(tuple(x.shape))
    if kernel == "nhwc_float":  # C == 1: sequential float32 sums (one intra-op thread)
        qf = q.reshape(bs, groups, cpg * hw).astype(np.int64)
        n = F32(qf.shape[-1])
        s = np.cumsum(qf.astype(F32), axis=-1, dtype=F32)[..., -1]
        s2 = np.cumsum((qf * qf).astype(F32), axis=-1, dtype=F32)[..., -1]
        m, r = _finish_moments((s / n).astype(F32), (s2 / n).astype(F32), qx.zp_value,
                               qx.scale_value, eps)
    else:
        m, r = int_moments(q.reshape(bs, groups, cpg * hw), qx.zp_value, qx.scale_value, eps)
    m4, r4 = m[:, :, None, None], r[:, :, None, None]
    if kernel == "nchw":
        gamma_p = (r4 * gam[None, :, :, None]).astype(F32)
        y = fma_f32_exact(_centered(q, qx.zp_value, m4), gamma_p, bet[None, :, :, None])
        return qm.q_vec(y, inv, oq.zp_value, dtype).reshape(x.shape)
    scale = (r4 * gam[None, :, :, None]).astype(F32)
    bias = fma_f32_exact(-scale, m4, bet[None, :, :, None])
    y = fma_f32_exact((q.astype(np.int64) - qx.zp_value).astype(F32), scale, bias)
    out = np.empty(q.shape, dtype.np)
    nv = cpg - cpg % VEC_LANES  # channels of a group in vector chunks; the rest: scalar tail
    out[:, :, :nv] = qm.q_vec(y[:, :, :nv], inv, oq.zp_value, dtype)
    out[:, :, nv:] = qm.q_val(y[:, :, nv:], inv, oq.zp_value, dtype)
    return out.reshape(x.shape)


_GN_NOTE = (
    "Exact against PyTorch with one intra-op thread. Two PyTorch quirks are not reproduced:"
    " (1) 4-D inputs with C == 1 and H*W >= 512 sum the moments in float32 per thread and then"
    " add the per-thread partial sums, so results depend on torch.get_num_threads(); we model"
    " one thread (sequential float32 sums). (2) PyTorch's NHWC kernel (4-D inputs with C == 1"
    " or H == W == 1) indexes the batch modulo the group size (C/G*H*W), so for a batch larger"
    " than that it normalizes the wrong rows and leaves outputs unwritten; we compute the"
    " intended per-sample result.")


class _QGroupNormBase(OpDef):
    """Shared torch hook of group_norm and instance_norm."""

    num_inputs = (1, 3)
    schedule_kind = "reduction"
    fidelity_note = _GN_NOTE

    def _check(self, attrs: Any, x: TensorType, params: Sequence[TensorType]) -> None:
        check_qtensor(self.name, x)
        if x.rank < 3:
            raise TypeInferenceError(
                f"{self.name}: input must have rank >= 3 (N, C, *spatial), as PyTorch's"
                f" quantized kernel; got {list(x.shape)}")
        _check_params(self.name, params, ("weight", "bias"), (x.shape[1],),
                      "one value per channel")
        _check_eps(self.name, attrs.eps)

    def lower_groups(self, sig: Sig, x: Any, params: Sequence[Any], groups: int) -> Any:
        """`group_norm_reference` step for step, for the kernel PyTorch picks: per sample and
        group the moments (exact integer sums, or sequential float32 sums on the NHWC float
        path) once, then the NCHW or NHWC per-element formula."""
        te_lib, te, _ = _te()
        qx = _qparams(sig.in_types[0])
        oq: QParams = sig.attrs.out_qparams
        eps = sig.attrs.eps
        dtype = sig.out.dtype
        shape = tuple(int(s) for s in sig.in_types[0].shape)
        bs, c, sp = shape[0], shape[1], shape[2:]
        cpg = c // groups
        n = cpg * math.prod(sp)
        kernel = group_norm_kernel(shape)
        tag = self.name.replace(".", "_")

        def axes(prefix: str) -> list[Any]:
            return _reduce_axes((cpg, *sp), prefix)

        def load(k: Sequence[Any], r: Sequence[Any]) -> Any:
            bb, gg = k
            return x[(bb, gg * cpg + r[0], *r[1:])]

        nf = te_lib.f32_const(n)
        if kernel == "nhwc_float":  # sequential float32 sums, in (channel, h, w) order
            ra, rb = axes("gn_r"), axes("gn_s")
            s1 = te.compute((bs, groups), lambda *k: _te_sum(
                load(k, ra).astype("float32"), ra), name=f"{tag}_sum")
            s2 = te.compute((bs, groups), lambda *k: _te_sum(
                (load(k, rb).astype("int32") * load(k, rb).astype("int32")).astype("float32"),
                rb), name=f"{tag}_sumsq")

            def raw(k: Sequence[Any]) -> tuple[Any, Any]:
                return s1[tuple(k)] / nf, s2[tuple(k)] / nf
        else:
            ra, rb = axes("gn_r"), axes("gn_s")
            s1 = te.compute((bs, groups), lambda *k: _te_int_sums(x, k, ra, load, n, dtype)[0],
                            name=f"{tag}_sum")
            s2 = te.compute((bs, groups), lambda *k: _te_int_sums(x, k, rb, load, n, dtype)[1],
                            name=f"{tag}_sumsq")

            def raw(k: Sequence[Any]) -> tuple[Any, Any]:
                return s1[tuple(k)].astype("float32") / nf, s2[tuple(k)].astype("float32") / nf

        def moments(k: Sequence[Any]) -> tuple[Any, Any]:
            return _te_finish_moments(*raw(k), qx.zp_value, qx.scale_value, eps)

        mean = _per_group((bs, groups), lambda k: moments(k)[0], f"{tag}_mean")
        rstd = _per_group((bs, groups), lambda k: moments(k)[1], f"{tag}_rstd")
        f = te_lib.f32_const
        zx = te.const(qx.zp_value, "int32")
        nv = cpg - cpg % VEC_LANES

        def gamma(ch: Any) -> Any:
            return params[0][ch] if params else f(1.0)

        def beta(ch: Any) -> Any:
            return params[1][ch] if params else f(0.0)

        def value(i: tuple[Any, ...]) -> Any:
            bb, ch = i[0], i[1]
            k = (bb, ch // cpg)
            qf = (x[i].astype("int32") - zx).astype("float32")
            if kernel == "nchw":
                gamma_p = te_lib.fence(rstd[k] * gamma(ch))
                y = te_lib.fma(qf - mean[k], gamma_p, beta(ch))
                return _te_requant(y, oq, dtype, True)
            scale = te_lib.fence(rstd[k] * gamma(ch))
            y = te_lib.fma(qf, scale, te_lib.fma(-scale, mean[k], beta(ch)))
            vector: Any = True if nv == cpg else (False if nv == 0 else ch % cpg < nv)
            return _te_requant(y, oq, dtype, vector)

        return te_lib.elementwise(shape, value, tag)

    def torch_call(self, torch: Any, x: Any, params: list[Any], attrs: Any) -> Any:
        raise NotImplementedError

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        torch = torch_quiet()
        x = to_torch(sample.arrays[0], sample.in_types[0])
        params = ([torch.from_numpy(p) for p in sample.arrays[1:]] if len(sample.arrays) == 3
                  else [None, None])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the float-sum NHWC path depends on the thread count
        try:
            return to_numpy(self.torch_call(torch, x, params, sample.attrs))
        finally:
            torch.set_num_threads(threads)

    def norm_samples(self, rng: np.random.Generator, cases: Sequence[tuple[Any, ...]],
                     make_attrs: Any) -> Iterator[OpSample]:
        for k, (shape, groups, dtype, affine) in enumerate(cases):
            c = shape[1]
            sx = S.rand_scale(rng, 1e-4, 1.0) if k < 6 else float(S.EDGE_SCALES[k % 7])
            zx = S.rand_zp(rng, dtype, edge=k % 3 == 1)
            if k % 4 == 3:  # narrow values: small variance next to a large mean
                lo = int(rng.integers(dtype.qmin, dtype.qmax - 8))
                x = rng.integers(lo, lo + 5, size=shape).astype(dtype.np)
                tx = TensorType(shape, dtype, QParams.per_tensor(sx, zx))
            else:
                tx, x = S.qtensor(rng, shape, dtype, sx, zx)
            so = S.rand_scale(rng, 0.005, 0.05) if k < 6 else float((1e-6, 100.0)[k % 2])
            zo = S.rand_zp(rng, dtype, edge=k % 4 == 2)
            attrs = make_attrs(groups, QParams.per_tensor(so, zo), (1e-5, 1e-3, 0.0)[k % 3])
            label = (f"{dtype}-{'x'.join(map(str, shape))}-{group_norm_kernel(shape)}"
                     f"{'' if affine else '-plain'}")
            if not affine:
                yield OpSample(attrs, (tx,), (x,), label)
                continue
            g = rng.standard_normal(c).astype(F32)
            b = (rng.standard_normal(c) * 0.3).astype(F32)
            pt = TensorType((c,), f32)
            yield OpSample(attrs, (tx, pt, pt), (x, g, b), label)


@dataclass(frozen=True)
class QGroupNormAttrs:
    num_groups: int
    """Number of channel groups; must divide C."""
    out_qparams: QParams
    """Output scale and zero point (per tensor); the output dtype is the input's."""
    eps: float = 1e-5


@register_op
class QGroupNorm(_QGroupNormBase):
    """Per sample and group (N = C/G * prod(spatial) elements), with m, r as in the module:

    NCHW kernel (the general case), per channel c of the group:
        y = fma(f32(f32(q - zx) - m), f32(r * weight[c]), bias[c]),  out = Q_vec(y)
    NHWC kernel (4-D inputs with C == 1 or H == W == 1, as PyTorch picks it):
        s = f32(r * weight[c]),  o = fma(-s, m, bias[c]),  y = fma(f32(q - zx), s, o)
        out = Q_vec(y) for channel index d < C/G - (C/G) % 32 within the group, else Q_val(y);
        from H*W >= 512 on (then C == 1) the sums of q and q^2 are float32, sequential.
    Inputs: x (rank >= 3), then optionally weight and bias (f32[C]). torch.ops.quantized.
    group_norm (nnq.GroupNorm).
    """

    name = "qnn.group_norm"
    Attrs = QGroupNormAttrs
    torch_counterparts = ("torch.ops.quantized.group_norm", "nnq.GroupNorm")

    def infer_type(self, attrs: QGroupNormAttrs, x: TensorType, *params: TensorType,
                   ) -> TensorType:
        self._check(attrs, x, params)
        g = attrs.num_groups
        if isinstance(g, bool) or not isinstance(g, int) or g <= 0:
            raise TypeInferenceError(f"{self.name}: num_groups must be a positive int, got {g!r}")
        if x.shape[1] % g:
            raise TypeInferenceError(
                f"{self.name}: num_groups {g} must divide the number of channels {x.shape[1]}"
                f" (input {list(x.shape)})")
        return _out_type(self.name, attrs, x)

    def reference(self, sig: Sig, x: np.ndarray, *params: np.ndarray) -> np.ndarray:
        a: QGroupNormAttrs = sig.attrs
        g, b = params if params else (None, None)
        return group_norm_reference(x, a.num_groups, g, b, _qparams(sig.in_types[0]),
                                    a.out_qparams, a.eps, sig.out.dtype)

    def lower(self, sig: Sig, x: Any, *params: Any) -> Any:
        return self.lower_groups(sig, x, params, sig.attrs.num_groups)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases = (
            ((2, 6, 5, 7), 3, u8, True), ((1, 4, 9), 2, i8, False),
            ((2, 8, 2, 3, 4), 4, u8, True), ((1, 2, 20, 20), 1, u8, True),
            ((2, 1, 3, 5), 1, i8, True), ((3, 70, 1, 1), 1, u8, True),
            ((2, 1, 24, 24), 1, u8, True), ((2, 6, 4, 4), 6, i8, False),
            ((1, 4, 3, 5), 2, u8, True),
        )
        yield from self.norm_samples(rng, cases, QGroupNormAttrs)

    def torch_call(self, torch: Any, x: Any, params: list[Any], attrs: Any) -> Any:
        oq: QParams = attrs.out_qparams
        return torch.ops.quantized.group_norm(x, attrs.num_groups, *params, attrs.eps,
                                              oq.scale_value, oq.zp_value)


@dataclass(frozen=True)
class QInstanceNormAttrs:
    out_qparams: QParams
    """Output scale and zero point (per tensor); the output dtype is the input's."""
    eps: float = 1e-5


@register_op
class QInstanceNorm(_QGroupNormBase):
    """qnn.group_norm with one group per channel (num_groups = C), as PyTorch implements it.

    Inputs: x (N, C, *spatial) with rank >= 3 (InstanceNorm1d/2d/3d), then optionally weight
    and bias (f32[C]). torch.ops.quantized.instance_norm (nnq.InstanceNorm1d/2d/3d).
    """

    name = "qnn.instance_norm"
    Attrs = QInstanceNormAttrs
    torch_counterparts = ("torch.ops.quantized.instance_norm", "nnq.InstanceNorm1d",
                          "nnq.InstanceNorm2d", "nnq.InstanceNorm3d")

    def infer_type(self, attrs: QInstanceNormAttrs, x: TensorType, *params: TensorType,
                   ) -> TensorType:
        self._check(attrs, x, params)
        if x.shape[1] == 0:
            raise TypeInferenceError(f"{self.name}: the channel dimension must be positive")
        return _out_type(self.name, attrs, x)

    def reference(self, sig: Sig, x: np.ndarray, *params: np.ndarray) -> np.ndarray:
        a: QInstanceNormAttrs = sig.attrs
        g, b = params if params else (None, None)
        return group_norm_reference(x, x.shape[1], g, b, _qparams(sig.in_types[0]),
                                    a.out_qparams, a.eps, sig.out.dtype)

    def lower(self, sig: Sig, x: Any, *params: Any) -> Any:
        return self.lower_groups(sig, x, params, sig.in_types[0].shape[1])

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases = (
            ((2, 3, 17), 0, u8, True), ((1, 4, 5, 6), 0, i8, True), ((2, 2, 3, 4, 5), 0, u8, False),
            ((2, 1, 6, 7), 0, u8, True), ((1, 5, 33), 0, i8, True), ((1, 1, 24, 24), 0, i8, True),
            ((3, 2, 40), 0, u8, True), ((2, 3, 2, 2), 0, i8, False),
        )
        yield from self.norm_samples(rng, cases,
                                     lambda _g, oq, eps: QInstanceNormAttrs(oq, eps))

    def torch_call(self, torch: Any, x: Any, params: list[Any], attrs: Any) -> Any:
        oq: QParams = attrs.out_qparams
        return torch.ops.quantized.instance_norm(x, *params, attrs.eps, oq.scale_value,
                                                 oq.zp_value)
