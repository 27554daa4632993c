"""Dynamic quantization: float32 activations quantized on the fly, int8 or fp16 weights.

These ops model `torch.ao.nn.quantized.dynamic` (Linear, LSTM, GRU, LSTMCell, GRUCell, RNNCell)
and `torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU` on the x86/fbgemm engine of
PyTorch 2.13. Inputs and outputs are float32; weights are constants, either qint8 (`i8` with
per-tensor or per-output-channel qparams, any zero points) or float16 (`f16`, from
`float16_dynamic_qconfig`).

The int8 dynamic linear (fbgemm `PackAWithQuantRowOffset` + `ReQuantizeForFloat`), per call:

    x_min, x_max = min(x), max(x)                    over the WHOLE input tensor
    s_x, z_x     = choose_qparams(x_min, x_max)      PyTorch's ChooseQuantizationParams, quint8,
                                                     [0, 127] with reduce_range, else [0, 255]
    q_x          = clamp(rint(fma(x, 1f/s_x, f32(z_x))), 0, 255)      (fbgemm "legacy" quantize:
                                                     the zero point is added BEFORE rounding)
    acc[m, n]    = sum_k (q_x[m, k] - z_x) * (w[n, k] - z_w[n])        exact, int32
    y[m, n]      = fma(f32(acc), f32(s_x) * f32(s_w[n]), bias[n])     one rounding (GCC contracts
                                                     fbgemm's mul + add); without bias:
                                                     f32(acc) * (f32(s_x) * f32(s_w[n]))
    relu:        max(y, 0)

The fp16 linear (fbgemm `cblas_gemm_compute` on fp16-packed weights): the weight is fp16, the
input stays float32, and each output is a float32 FMA chain over k in order,

    acc = x[m, 0] * w[n, 0];  acc = fma(x[m, k], w[n, k], acc)  for k = 1 .. K-1
    y   = acc + bias[n]  (a separate float32 add),  relu: max(y, 0)

except for the last N % 32 output columns when K > 512, where fbgemm sums the chains of each
512-row block of K with float32 adds (`FP16_KB`, `FP16_NB`; AVX512 kernel widths).

The recurrent ops run PyTorch's `RNN.cpp` cell code with these linears (`reduce_range=True`, as
the dynamic modules use): the input-to-hidden linear of a layer is computed over the whole
sequence at once (so x's qparams come from all T*B rows), the hidden-to-hidden linear per step
over the batch. The gate math is float32, operation for operation as PyTorch does it:

    LSTM:  g = lin_hh(h) + lin_ih(x)_t;  i, f, o = sigmoid(g_i, g_f, g_o);  c~ = tanh(g_c)
           c' = f * c + i * c~;  h' = o * tanh(c')
    GRU:   r = sigmoid(hh_r + ih_r);  z = sigmoid(hh_z + ih_z);  n = tanh(ih_n + hh_n * r)
           h' = (h - n) * z + n
    RNN:   h' = tanh(lin_hh(h) + lin_ih(x))   or relu(...)

`sigmoid` is reproduced bit for bit: PyTorch's vector kernel computes 1f / (1f + expf(-x)) with
SLEEF's `expf_u10` (AVX512, FMA) on the first 32 * (n // 32) elements of each contiguous row of
n elements and glibc's `expf` on the rest (`sigmoid_f32`). `tanh` is not: PyTorch calls MKL's
`vmsTanh` (HA), which is not reproducible, so the reference uses the correctly rounded float32
tanh; the two differ by 1 ulp in about 0.13 % of elements. A 1-ulp difference in a hidden state
can flip one dynamically quantized value at the next step, so RNN outputs carry a documented
absolute tolerance (`max_lsb` on those ops is an absolute float tolerance; see their
`fidelity_note`). The linears themselves are exact.

Numerics that depend on the PyTorch build (all verified against PyTorch 2.13 on AVX512):
the legacy fma quantize (fbgemm removed it in April 2026: newer builds round x*(1/s) first, then
add the zero point), the int32 GEMM being exact (VNNI; pre-VNNI fbgemm saturates int16 pairs
when reduce_range=False), the fp16 kernel widths, and the 32-element sigmoid vector body.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qcompiler.errors import InterpretError, TypeInferenceError
from qcompiler.ir.registry import OpDef, OpSample, Sig, register_op
from qcompiler.ir.types import QParams, TensorType, f16, f32, i8
from qcompiler.reference.quant_math import fma_f32
from qcompiler.testing import samples as S

F32 = np.float32
F64 = np.float64

# --- float32 arithmetic helpers (exact emulations) -------------------------------------------


_SLEEF_R_LN2F = F32(1.442695040888963407359924681001892137426645954152985934135449406931)
_SLEEF_L2UF = F32(0.693145751953125)
_SLEEF_L2LF = F32(1.428606765330187045e-06)
_SLEEF_EXPF_POLY = tuple(F32(c) for c in (
    0.000198527617612853646278381, 0.00139304355252534151077271, 0.00833336077630519866943359,
    0.0416664853692054748535156, 0.166666671633720397949219, 0.5))


def expf_sleef(d: np.ndarray) -> np.ndarray:
    """SLEEF `Sleef_expf16_u10` (AVX512 with FMA), bit for bit: PyTorch's vectorized exp."""
    d = np.asarray(d, dtype=F32)
    with np.errstate(invalid="ignore", over="ignore"):
        q = np.rint(np.nan_to_num(d * _SLEEF_R_LN2F, nan=0.0)).clip(-300, 300).astype(np.int32)
        qf = q.astype(F32)
        s = fma_f32(qf, -_SLEEF_L2UF, d)
        s = fma_f32(qf, -_SLEEF_L2LF, s)
        u = _SLEEF_EXPF_POLY[0]
        for coef in _SLEEF_EXPF_POLY[1:]:
            u = fma_f32(u, s, coef)
        u = F32(1) + fma_f32((s * s).astype(F32), u, s)
        q1 = q >> 1
        u = (u * np.ldexp(F32(1), q1).astype(F32)).astype(F32)
        u = (u * np.ldexp(F32(1), q - q1).astype(F32)).astype(F32)
        u = np.where(d < F32(-104), F32(0), u)
        u = np.where(d > F32(100), F32(np.inf), u)
        return np.where(np.isnan(d), d, u).astype(F32)


_GLIBC_EXP2F_TAB = np.array([
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51,
    0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
    0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069,
    0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
], dtype=np.uint64)
_GLIBC_SHIFT = float.fromhex("0x1.8p+52")
_GLIBC_INVLN2N = float.fromhex("0x1.71547652b82fep+0") * 32
_GLIBC_POLY = (float.fromhex("0x1.c6af84b912394p-5") / 32 / 32 / 32,
               float.fromhex("0x1.ebfce50fac4f3p-3") / 32 / 32,
               float.fromhex("0x1.62e42ff0c52d6p-1") / 32)


def expf_glibc(x: np.ndarray) -> np.ndarray:
    """glibc's `expf` (2.27+, sysdeps/ieee754/flt-32/e_expf.c): PyTorch's scalar (tail) exp.

    A 32-entry table of 2^(i/32) and a cubic in double, rounded once to float32. Its results
    differ from the correctly rounded expf in about 7e-4 of inputs; this is bit for bit.
    """
    x = np.asarray(x, dtype=F32)
    with np.errstate(invalid="ignore", over="ignore"):
        xd = np.clip(np.nan_to_num(x.astype(F64), nan=0.0), -200.0, 200.0)
        kd = _GLIBC_INVLN2N * xd + _GLIBC_SHIFT
        ki = kd.view(np.uint64)
        kd = kd - _GLIBC_SHIFT
        r = _GLIBC_INVLN2N * xd - kd
        t = _GLIBC_EXP2F_TAB[ki % np.uint64(32)] + (ki << np.uint64(47))
        sc = t.view(F64)
        z = _GLIBC_POLY[0] * r + _GLIBC_POLY[1]
        y = _GLIBC_POLY[2] * r + 1.0
        y = z * (r * r) + y
        out = (y * sc).astype(F32)
    out = np.where(x > F32(float.fromhex("0x1.62e42ep6")), F32(np.inf), out)
    out = np.where(x < F32(-float.fromhex("0x1.9fe368p6")), F32(0), out)
    return np.where(np.isnan(x), x, out).astype(F32)


SIGMOID_VEC_BODY = 32
"""PyTorch's CPU unary kernels run 2 x Vectorized<float> (2 x 16 lanes on AVX512) per step;
the last n % 32 elements of each contiguous row go through the scalar function."""


def sigmoid_f32(x: np.ndarray) -> np.ndarray:
    """torch.sigmoid on float32 rows along the last axis, bit for bit (AVX512 build).

    Elements [0, 32*(n//32)) of each row: 1f / (1f + expf_sleef(-x)); the rest:
    1f / (1f + expf_glibc(-x)). Rows are what TensorIterator hands the kernel: for a gate chunk
    of shape [B, H] (a strided view of the [B, G*H] gates) a row is the H gates of one batch
    element. (For more than 32768 elements PyTorch splits the work between threads and the row
    boundaries move; the reference keeps the single-thread split.)
    """
    x = np.asarray(x, dtype=F32)
    n = x.shape[-1] if x.ndim else 1
    body = (n // SIGMOID_VEC_BODY) * SIGMOID_VEC_BODY
    with np.errstate(over="ignore"):
        vec = (F32(1) / (F32(1) + expf_sleef(-x[..., :body]))).astype(F32)
        tail = (F32(1) / (F32(1) + expf_glibc(-x[..., body:]))).astype(F32)
    return np.concatenate([vec, tail], axis=-1) if x.ndim else tail.reshape(())


def tanh_f32(x: np.ndarray) -> np.ndarray:
    """Correctly rounded float32 tanh (float64 tanh rounded once).

    PyTorch's float tanh calls MKL vmsTanh (HA), which differs from this by 1 ulp in about
    0.13 % of inputs; it cannot be reproduced exactly. This is the documented approximation.
    """
    return np.tanh(np.asarray(x, dtype=F32).astype(F64)).astype(F32)


# --- dynamic quantization of activations --------------------------------------------------------

SMALL_SCALE_THRESHOLD = F32(6.1e-5)
_INT32_FLOAT_MAX = F32(2147483520.0)


def choose_dynamic_qparams(x_min: float, x_max: float, reduce_range: bool,
                           ) -> tuple[np.float32, int]:
    """PyTorch's quant_utils::ChooseQuantizationParams for quint8 activations.

    qmin, qmax = 0, 255 (0, 127 with reduce_range); the range is widened to include 0; the scale
    is (max - min) / (qmax - qmin) in double (0.1 if that is 0 or its float reciprocal is inf);
    scales below 6.1e-5f are raised to it (stretching min/max); the zero point comes from the
    smaller-error end and is rounded half to even, clamped to [qmin, qmax]. The scale is
    returned as float32, the width fbgemm uses it in.
    """
    qmin, qmax = 0, 255
    if reduce_range:
        qmin, qmax = qmin // 2, qmax // 2
    mn = min(F32(x_min), F32(0.0))
    mx = max(F32(x_max), F32(0.0))
    scale = (float(mx) - float(mn)) / (qmax - qmin)
    with np.errstate(over="ignore", divide="ignore"):
        if F32(scale) == 0 or np.isinf(F32(1.0) / F32(scale)):
            scale = 0.1
        if scale < float(SMALL_SCALE_THRESHOLD):
            org = F32(scale)
            scale = float(SMALL_SCALE_THRESHOLD)
            if mn == 0:
                mx = F32(SMALL_SCALE_THRESHOLD * F32(qmax - qmin))
            elif mx == 0:
                mn = F32(-SMALL_SCALE_THRESHOLD * F32(qmax - qmin))
            else:
                amp = F32(SMALL_SCALE_THRESHOLD / org)
                mn = F32(mn * amp)
                mx = F32(mx * amp)
    zp_from_min = qmin - float(mn) / scale
    zp_from_max = qmax - float(mx) / scale
    err_min = abs(qmin) - abs(float(mn) / scale)
    err_max = abs(qmax) - abs(float(mx) / scale)
    initial = zp_from_min if err_min < err_max else zp_from_max
    if initial < qmin:
        zp = qmin
    elif initial > qmax:
        zp = qmax
    else:
        zp = int(np.rint(initial))
    return F32(scale), zp


def quantize_activation(x: np.ndarray, scale: np.float32, zero_point: int) -> np.ndarray:
    """fbgemm QuantizeAvx2<uint8, LEGACY>: clamp(rint(fma(x, 1f/scale, f32(zp))), 0, 255).

    Returns int64 values in [0, 255]. (The upper clamp at 2147483520f mirrors the int32
    conversion guard; NaN inputs are undefined, as in fbgemm.)
    """
    inv = F32(1.0) / F32(scale)
    t = fma_f32(x, inv, F32(zero_point))
    t = np.where(t < _INT32_FLOAT_MAX, t, _INT32_FLOAT_MAX)
    with np.errstate(invalid="ignore"):
        r = np.rint(np.clip(np.nan_to_num(t, nan=0.0, neginf=-1.0), -1.0, 2.0**31))
    return np.clip(r, 0, 255).astype(np.int64)


def linear_int8(x: np.ndarray, w: np.ndarray, w_scales: np.ndarray, w_zps: np.ndarray,
                bias: np.ndarray | None, reduce_range: bool, relu: bool = False) -> np.ndarray:
    """fbgemm dynamic int8 linear (quantized::linear_dynamic): see the module docstring.

    x: float32 [..., K]; w: int8 [N, K]; w_scales (float32) / w_zps (int): [N] or [1].
    """
    x = np.asarray(x, dtype=F32)
    k = x.shape[-1]
    if x.size:
        x_min, x_max = F32(x.min()), F32(x.max())
    else:
        x_min = x_max = F32(0.0)
    if not (np.isfinite(x_min) and np.isfinite(x_max)):
        raise InterpretError(
            "dynamic int8 linear: the input contains inf or NaN; PyTorch's dynamic quantization"
            " (min/max -> scale, zero point) is undefined for non-finite inputs")
    s_x, z_x = choose_dynamic_qparams(x_min, x_max, reduce_range)
    q = quantize_activation(x.reshape(-1, k), s_x, z_x)
    wz = np.asarray(w, dtype=np.int64) - np.asarray(w_zps, dtype=np.int64).reshape(-1, 1)
    acc = ((q - z_x) @ wz.T).astype(np.int32)  # int32 wraps like fbgemm's accumulator
    mult = (s_x * np.asarray(w_scales, dtype=F32)).astype(F32)
    accf = acc.astype(F32)
    if bias is not None:
        y = fma_f32(accf, mult, np.asarray(bias, dtype=F32))
    else:
        y = (accf * mult).astype(F32)
    if relu:
        y = np.maximum(y, F32(0))
    return y.reshape(x.shape[:-1] + (w.shape[0],))


FP16_KB = 512
"""fbgemm PackedGemmMatrixFP16 row block (K) size."""
FP16_NB = 32
"""fbgemm fp16 kernel column block on AVX512 (2 x 16 lanes; 16 on AVX2 hosts)."""
FP16_MAX = F32(65504.0)


def _fma_chain(a: np.ndarray, w: np.ndarray, k0: int, k1: int) -> np.ndarray:
    """sum_k a[:, k] * w[:, k] over [k0, k1): first a plain product, then FMAs in k order."""
    acc = (a[:, k0:k0 + 1] * w[None, :, k0]).astype(F32)
    for k in range(k0 + 1, k1):
        acc = fma_f32(a[:, k:k + 1], w[None, :, k], acc)
    return acc


def linear_fp16(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                relu: bool = False) -> np.ndarray:
    """fbgemm fp16-weight linear (quantized::linear_dynamic_fp16): see the module docstring.

    x: float32 [..., K]; w: float16 [N, K] (saturated to +-65504 as PyTorch's prepack does).
    """
    x = np.asarray(x, dtype=F32)
    k = x.shape[-1]
    a = x.reshape(-1, k)
    wf = np.clip(np.asarray(w, dtype=F32), -FP16_MAX, FP16_MAX)
    n = wf.shape[0]
    out = np.zeros((a.shape[0], n), dtype=F32)
    if a.shape[0] and k:
        full = (n // FP16_NB) * FP16_NB
        if full:
            out[:, :full] = _fma_chain(a, wf[:full], 0, k)
        if full < n:
            tail = None
            for k0 in range(0, k, FP16_KB):
                part = _fma_chain(a, wf[full:], k0, min(k, k0 + FP16_KB))
                tail = part if tail is None else (tail + part).astype(F32)
            out[:, full:] = tail
    if bias is not None:
        out = (out + np.asarray(bias, dtype=F32)).astype(F32)
    if relu:
        out = np.maximum(out, F32(0))
    return out.reshape(x.shape[:-1] + (n,))


# --- weights ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Linear:
    """One dynamic linear layer's weight and bias, as the reference applies it."""

    w: np.ndarray
    bias: np.ndarray | None
    ty: TensorType

    def __call__(self, x: np.ndarray, reduce_range: bool = True, relu: bool = False,
                 ) -> np.ndarray:
        if self.ty.dtype is f16:
            return linear_fp16(x, self.w, self.bias, relu)
        qp = self.ty.qparams
        assert qp is not None
        if qp.axis is None:
            scales = np.asarray([qp.scale_value], dtype=F32)
            zps = np.asarray([qp.zp_value], dtype=np.int64)
        else:
            scales = np.asarray(qp.scale, dtype=F64).astype(F32)
            zps = np.asarray(qp.zero_point, dtype=np.int64)
        return linear_int8(x, self.w, scales, zps, self.bias, reduce_range, relu)


def _weight_kind(t: TensorType) -> str:
    return "f16" if t.dtype is f16 else "i8"


def _check_weight(op: str, what: str, t: TensorType, out_features: int | None,
                  in_features: int | None, kinds: Sequence[str] = ("i8", "f16")) -> None:
    """A [N, K] weight: qint8 (i8 with per-tensor or axis-0 qparams) or float16."""
    allowed = " or ".join({"i8": "qint8 (i8 with per-tensor or per-channel axis=0 qparams)",
                           "f16": "float16 (f16, unquantized)"}[k] for k in kinds)
    if t.rank != 2:
        raise TypeInferenceError(f"{op}: {what} must be a 2-D [out, in] tensor, got {t}")
    if t.dtype is i8 and t.qparams is not None and "i8" in kinds:
        qp = t.qparams
        if qp.scheme == "float_qparams":
            raise TypeInferenceError(
                f"{op}: {what} has float_qparams (embedding) qparams; supported: {allowed}")
        if qp.axis is not None and qp.axis != 0:
            raise TypeInferenceError(
                f"{op}: {what} is quantized per channel along axis {qp.axis}; only axis 0"
                f" (output channels) is supported")
    elif not (t.dtype is f16 and t.qparams is None and "f16" in kinds):
        raise TypeInferenceError(f"{op}: {what} must be {allowed}, got {t}")
    if out_features is not None and t.shape[0] != out_features:
        raise TypeInferenceError(
            f"{op}: {what} has {t.shape[0]} output rows, expected {out_features}: {t}")
    if in_features is not None and t.shape[1] != in_features:
        raise TypeInferenceError(
            f"{op}: {what} has {t.shape[1]} input columns, expected {in_features}: {t}")


def _check_float(op: str, what: str, t: TensorType, shape: tuple[int, ...] | None = None,
                 rank: int | None = None) -> None:
    if t.dtype is not f32 or t.qparams is not None:
        raise TypeInferenceError(
            f"{op}: {what} must be an unquantized float32 tensor, got {t}"
            " (dynamic ops quantize their float input themselves)")
    if rank is not None and t.rank != rank:
        raise TypeInferenceError(f"{op}: {what} must be {rank}-D, got {t}")
    if shape is not None and t.shape != shape:
        raise TypeInferenceError(
            f"{op}: {what} must have shape {list(shape)}, got {list(t.shape)}")


# --- sample helpers --------------------------------------------------------------------------


def _rand_qweight(rng: np.random.Generator, shape: tuple[int, int], per_channel: bool,
                  symmetric: bool = True, scale: float | None = None,
                  ) -> tuple[TensorType, np.ndarray]:
    """A qint8 weight as the dynamic qconfigs make it (symmetric), or affine."""
    n = shape[0]
    w = S.rand_int(rng, shape, i8)
    if per_channel:
        scales = [S.rand_scale(rng, 1e-3, 0.1) if scale is None else scale for _ in range(n)]
        zps = [0] * n if symmetric else [int(rng.integers(-20, 21)) for _ in range(n)]
        qp = QParams.per_axis(scales, zps, 0, "symmetric" if symmetric else "affine")
    else:
        sc = S.rand_scale(rng, 1e-3, 0.1) if scale is None else scale
        zp = 0 if symmetric else int(rng.integers(-20, 21))
        qp = QParams.per_tensor(sc, zp, "symmetric" if symmetric else "affine")
    return TensorType(shape, i8, qp), w


def _rand_f16weight(rng: np.random.Generator, shape: tuple[int, int], std: float = 0.3,
                    ) -> tuple[TensorType, np.ndarray]:
    return TensorType(shape, f16), (rng.standard_normal(shape) * std).astype(np.float16)


def _weight_to_torch(arr: np.ndarray, ty: TensorType) -> Any:
    """qint8 weights as a quantized tensor; fp16 weights as the float32 tensor PyTorch packs."""
    import torch

    from qcompiler.testing.torch_bridge import to_torch

    if ty.dtype is f16:
        return torch.from_numpy(arr.astype(np.float32))
    return to_torch(arr, ty)


def _torch_dtype(ty: TensorType) -> Any:
    import torch

    return torch.float16 if ty.dtype is f16 else torch.qint8


# --- linear ops ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearDynamicAttrs:
    reduce_range: bool = True
    """Quantize the activation to [0, 127] instead of [0, 255] (nnqd.Linear passes True)."""
    fuse_relu: bool = False
    """max(y, 0) after the bias (quantized::linear_relu_dynamic / nniqd.LinearReLU)."""


def _linear_out_type(op: str, x: TensorType, w: TensorType, b: TensorType | None) -> TensorType:
    _check_float(op, "input", x)
    if x.rank < 2:
        raise TypeInferenceError(
            f"{op}: input must have rank >= 2 ([..., in_features]) as in PyTorch, got {x}")
    if x.shape[-1] < 1:
        raise TypeInferenceError(f"{op}: in_features must be >= 1, got {x}")
    if b is not None:
        _check_float(op, "bias", b, (w.shape[0],) if w.rank == 2 else None)
    return TensorType(x.shape[:-1] + (w.shape[0],), f32)


@register_op
class LinearDynamic(OpDef):
    """y = x @ dequant(w).T + b with x quantized per call (fbgemm dynamic int8 linear).

    Inputs: x f32[..., K], w i8[N, K] (per-tensor or per-channel axis 0 qparams; any zero
    points), optional bias f32[N]. Output f32[..., N]. Exact integer/float formula:

        s_x, z_x = choose_dynamic_qparams(min(x), max(x), reduce_range)
        q_x = clamp(rint(fma(x, 1f/s_x, f32(z_x))), 0, 255)
        acc = sum_k (q_x - z_x) * (w - z_w)            (int32)
        y   = fma(f32(acc), f32(s_x) * f32(s_w[n]), b[n])   (no bias: f32(acc) * (s_x*s_w))
        y   = max(y, 0) if fuse_relu
    """

    name = "qnn.linear_dynamic"
    Attrs = LinearDynamicAttrs
    num_inputs = (2, 3)
    schedule_kind = "dense"
    torch_counterparts = ("torch.ao.nn.quantized.dynamic.Linear (qint8)",
                          "torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU",
                          "torch.ops.quantized.linear_dynamic", "quantized::linear_relu_dynamic")
    fidelity_note = (
        "Exact against PyTorch 2.13 (fbgemm). Build-dependent: the activation quantize is fbgemm's"
        " legacy rint(fma(x, 1/s, zp)) (newer fbgemm adds zp after rounding); the int32 GEMM is"
        " exact on VNNI hosts (pre-VNNI fbgemm saturates int16 pairs when reduce_range=False).")

    def infer_type(self, attrs: LinearDynamicAttrs, x: TensorType, w: TensorType,
                   b: TensorType | None = None) -> TensorType:
        _check_weight(self.name, "weight", w, None, x.shape[-1] if x.rank else None, ("i8",))
        return _linear_out_type(self.name, x, w, b)

    def reference(self, sig: Sig, x: np.ndarray, w: np.ndarray,
                  b: np.ndarray | None = None) -> np.ndarray:
        lin = _Linear(w, b, sig.in_types[1])
        return lin(x, sig.attrs.reduce_range, sig.attrs.fuse_relu)

    def lower(self, sig: Sig, x: Any, w: Any, b: Any = None) -> Any:
        """TE stages (block names), each the reference's step:

            {name}_qparams           min(x), max(x) over the whole tensor, then
                                     [scale, 1f/scale, f32(zp)] = choose_dynamic_qparams
                                     (a te.extern: serial loops and scalar code, once per call)
            {name}_xq                clamp(rint(fma(x, 1f/s_x, zp)), 0, 255) - zp   (int16)
            {name}_wz                w - z_w[n] (int16; only when a zero point is not 0)
            {name}_acc               sum_k xq * wz in int32 (int64 + wrap when it may overflow)
            qnn_linear_dynamic       fma(f32(acc), f32(s_x * s_w[n]), bias[n]) [relu]
        """
        return _linear_int8_te(sig, x, w, b, sig.attrs.reduce_range, sig.attrs.fuse_relu)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        A = LinearDynamicAttrs
        cases = [  # (x shape, N, per_channel, symmetric, bias, attrs, x scale, label)
            ((3, 7), 5, False, True, True, A(), 1.0, "per-tensor"),
            ((2, 3, 16), 6, True, True, True, A(), 2.0, "per-channel-3d"),
            ((4, 9), 3, False, False, False, A(), 0.5, "affine-w-no-bias"),
            ((5, 8), 4, True, False, True, A(fuse_relu=True), 1.0, "relu-affine-pc"),
            ((2, 33), 7, True, True, True, A(reduce_range=False), 3.0, "full-range"),
            ((3, 5), 4, False, True, True, A(), 1e-6, "tiny-inputs-min-scale"),
            ((3, 6), 2, False, True, True, A(), 100.0, "large-inputs"),
        ]
        for shape, n, pc, sym, has_b, attrs, xs, label in cases:
            tx, x = S.ftensor(rng, shape, xs)
            tw, w = _rand_qweight(rng, (n, shape[-1]), pc, sym)
            in_types: tuple[TensorType, ...] = (tx, tw)
            arrays: tuple[np.ndarray, ...] = (x, w)
            if has_b:
                tb, b = S.ftensor(rng, (n,), xs)
                in_types, arrays = in_types + (tb,), arrays + (b,)
            yield OpSample(attrs, in_types, arrays, label)
        # all-positive, all-negative and all-zero inputs (zero point at the range ends)
        for label, fill in (("all-positive", 1.0), ("all-negative", -1.0), ("all-zero", 0.0)):
            tx, x = S.ftensor(rng, (3, 10), 1.0)
            x = (np.abs(x) * fill).astype(np.float32)
            tw, w = _rand_qweight(rng, (4, 10), False)
            tb, b = S.ftensor(rng, (4,), 1.0)
            yield OpSample(A(fuse_relu=fill < 0), (tx, tw, tb), (x, w, b), label)
        # rounding ties: x exactly on half steps of the activation scale
        tx, x = S.ftensor(rng, (4, 12), 1.0)
        x = (np.round(x * 8) / 8 + np.float32(1 / 16)).astype(np.float32)
        tw, w = _rand_qweight(rng, (3, 12), True, False)
        yield OpSample(A(reduce_range=False), (tx, tw), (x, w), "half-steps")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch
        import torch.ao.nn.intrinsic.quantized.dynamic as nniqd
        import torch.ao.nn.quantized.dynamic as nnqd

        attrs: LinearDynamicAttrs = sample.attrs
        x = torch.from_numpy(sample.arrays[0])
        w = _weight_to_torch(sample.arrays[1], sample.in_types[1])
        b = torch.from_numpy(sample.arrays[2]) if len(sample.arrays) > 2 else None
        n, k = sample.in_types[1].shape
        cls = nniqd.LinearReLU if attrs.fuse_relu else nnqd.Linear
        mod = cls(k, n, dtype=torch.qint8)
        mod.set_weight_bias(w, b)
        if attrs.reduce_range:
            return mod(x).numpy()
        fn = (torch.ops.quantized.linear_relu_dynamic if attrs.fuse_relu
              else torch.ops.quantized.linear_dynamic)
        return fn(x, mod._packed_params._packed_params, reduce_range=False).numpy()


@dataclass(frozen=True)
class LinearDynamicFp16Attrs:
    fuse_relu: bool = False
    """max(y, 0) after the bias (quantized::linear_relu_dynamic_fp16)."""


@register_op
class LinearDynamicFp16(OpDef):
    """y = x @ w.T + b with float16 weights and float32 accumulation (fbgemm fp16 GEMM).

    Inputs: x f32[..., K], w f16[N, K], optional bias f32[N]. Output f32[..., N]:

        acc = x[0]*w[0];  acc = fma(x[k], w[k], acc) for k = 1..K-1   (float32, in k order;
              for K > 512 the last N % 32 columns sum per-512-block chains with float adds)
        y   = acc + b  (float32 add);  y = max(y, 0) if fuse_relu

    Weights are fp16 values (PyTorch rounds float weights to nearest-even fp16 at prepack and
    saturates them to +-65504; the reference saturates too). Exact.
    """

    name = "qnn.linear_dynamic_fp16"
    Attrs = LinearDynamicFp16Attrs
    num_inputs = (2, 3)
    schedule_kind = "dense"
    torch_counterparts = ("torch.ao.nn.quantized.dynamic.Linear (float16_dynamic_qconfig)",
                          "torch.ops.quantized.linear_dynamic_fp16",
                          "quantized::linear_relu_dynamic_fp16")

    def infer_type(self, attrs: LinearDynamicFp16Attrs, x: TensorType, w: TensorType,
                   b: TensorType | None = None) -> TensorType:
        _check_weight(self.name, "weight", w, None, x.shape[-1] if x.rank else None, ("f16",))
        return _linear_out_type(self.name, x, w, b)

    def reference(self, sig: Sig, x: np.ndarray, w: np.ndarray,
                  b: np.ndarray | None = None) -> np.ndarray:
        return linear_fp16(x, w, b, sig.attrs.fuse_relu)

    def lower(self, sig: Sig, x: Any, w: Any, b: Any = None) -> Any:
        """TE stages: {name}_acc, the float32 FMA chain over k as a reduction with an `llvm.fma`
        combiner (identity -0.0, so the first step is the plain product); for K > 512 the last
        N % 32 columns as per-512-block chains ({name}_part) summed in block order
        ({name}_tail); then qnn_linear_dynamic_fp16 = acc + bias (float32 add) [relu]."""
        return _linear_fp16_te(sig, x, w, b, sig.attrs.fuse_relu)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        A = LinearDynamicFp16Attrs
        cases = [  # (x shape, N, bias, relu, label)
            ((3, 7), 5, True, False, "basic"),
            ((2, 3, 16), 6, True, True, "3d-relu"),
            ((4, 9), 3, False, False, "no-bias"),
            ((2, 40), 35, True, False, "n-tail-columns"),
        ]
        for shape, n, has_b, relu, label in cases:
            tx, x = S.ftensor(rng, shape, 1.0)
            tw, w = _rand_f16weight(rng, (n, shape[-1]))
            in_types: tuple[TensorType, ...] = (tx, tw)
            arrays: tuple[np.ndarray, ...] = (x, w)
            if has_b:
                tb, b = S.ftensor(rng, (n,), 1.0)
                in_types, arrays = in_types + (tb,), arrays + (b,)
            yield OpSample(A(relu), in_types, arrays, label)
        # fp16 edge values: max finite, subnormal, zero; inputs spanning decades
        tx, x = S.ftensor(rng, (3, 6), 1.0)
        x[0] *= np.float32(1e4)
        x[1] *= np.float32(1e-4)
        w = np.array([[65504, -65504, 6e-8, 0, 1, -1]] * 4, dtype=np.float16)
        w[1:] = (rng.standard_normal((3, 6))).astype(np.float16)
        yield OpSample(A(), (tx, TensorType((4, 6), f16)), (x, w), "fp16-edges")
        # K > 512: block sums on the tail columns
        tx, x = S.ftensor(rng, (2, 600), 1.0)
        tw, w = _rand_f16weight(rng, (33, 600), 0.05)
        yield OpSample(A(), (tx, tw), (x, w), "k-blocks")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch
        import torch.ao.nn.intrinsic.quantized.dynamic as nniqd
        import torch.ao.nn.quantized.dynamic as nnqd

        x = torch.from_numpy(sample.arrays[0])
        w = torch.from_numpy(sample.arrays[1].astype(np.float32))
        b = torch.from_numpy(sample.arrays[2]) if len(sample.arrays) > 2 else None
        n, k = sample.in_types[1].shape
        cls = nniqd.LinearReLU if sample.attrs.fuse_relu else nnqd.Linear
        mod = cls(k, n, dtype=torch.float16)
        mod.set_weight_bias(w, b)
        return mod(x).numpy()


# --- recurrent ops ---------------------------------------------------------------------------

_GATES = {"lstm": 4, "gru": 3, "rnn": 1}

RNN_ABS_TOL = 1e-5
"""Absolute tolerance of the recurrent ops' float outputs against PyTorch (see fidelity_note)."""

_RNN_FIDELITY = (
    "Linears and sigmoid are bit-exact; tanh is the correctly rounded float32 tanh while "
    "PyTorch calls MKL vmsTanh (1 ulp apart in ~0.13% of inputs). max_lsb is an ABSOLUTE "
    "float tolerance on every output (y, h, c) of 1e-5, sized for values of magnitude up to "
    "about 10 (a few ulps there); in general the error scales with max|out|. Measured against "
    "PyTorch 2.13 over "
    "500 random LSTM/GRU runs of 20-40 steps (1-2 layers, uni/bidirectional, B 1-4, H 3-40, "
    "int8 per-tensor/per-channel and fp16 weights, 1.2 M output values): max |diff| 2.4e-7, "
    "max |diff|/max|out| 2.4e-7; values differing: int8 LSTM 9.3e-4, int8 GRU 6.3e-4, fp16 "
    "LSTM 7.2e-3, fp16 GRU 1.9e-2 (last-ulp noise). Not a worst-case guarantee: a 1-ulp "
    "hidden-state difference that lands on a rounding boundary of the next step's dynamic "
    "quantization (estimated < 1e-7 per value and step, never observed) moves one gate by "
    "s_x * s_w * |w - z_w|. tests/ops/test_dynamic_rnn_fidelity.py re-measures on 20+ step "
    "sequences and enforces the bound.")


def _cell_step(mode: str, nonlinearity: str, ih: np.ndarray, h: np.ndarray, c: np.ndarray | None,
               w_hh: _Linear, reduce_range: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """One step of PyTorch's LSTMCell / GRUCell / SimpleCell given lin_ih(x) for the step."""
    hh = w_hh(h, reduce_range)
    hs = h.shape[-1]
    if mode == "lstm":
        assert c is not None
        gates = (hh + ih).astype(F32)
        i = sigmoid_f32(gates[:, 0:hs])
        f = sigmoid_f32(gates[:, hs:2 * hs])
        g = tanh_f32(gates[:, 2 * hs:3 * hs])
        o = sigmoid_f32(gates[:, 3 * hs:])
        c_new = ((f * c).astype(F32) + (i * g).astype(F32)).astype(F32)
        return (o * tanh_f32(c_new)).astype(F32), c_new
    if mode == "gru":
        r = sigmoid_f32((hh[:, 0:hs] + ih[:, 0:hs]).astype(F32))
        z = sigmoid_f32((hh[:, hs:2 * hs] + ih[:, hs:2 * hs]).astype(F32))
        n = tanh_f32((ih[:, 2 * hs:] + (hh[:, 2 * hs:] * r).astype(F32)).astype(F32))
        return (((h - n).astype(F32) * z).astype(F32) + n).astype(F32), None
    pre = (hh + ih).astype(F32)
    if nonlinearity == "relu":
        return np.maximum(pre, F32(0)), None
    return tanh_f32(pre), None


@dataclass(frozen=True)
class RNNAttrs:
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    """x and y are [B, T, ...] instead of [T, B, ...] (h0/c0/h_n/c_n are not affected)."""
    reduce_range: bool = True
    """Activation range [0, 127] (dynamic RNN modules since version 2); False: [0, 255]."""


class _RNNBase(OpDef):
    """Shared definition of qnn.lstm and qnn.gru (multi-layer, bidirectional, batch_first)."""

    mode: ClassVar[str]
    Attrs = RNNAttrs
    num_inputs = None
    schedule_kind = "opaque"
    max_lsb = RNN_ABS_TOL  # type: ignore[assignment]  # absolute float tolerance

    @property
    def _n_state(self) -> int:
        return 2 if self.mode == "lstm" else 1

    def _layout(self, attrs: RNNAttrs, n_inputs: int) -> bool:
        """Check the input count; return whether the initial state is given."""
        dirs = 2 if attrs.bidirectional else 1
        n_w = 4 * attrs.num_layers * dirs
        if n_inputs == 1 + n_w:
            return False
        if n_inputs == 1 + self._n_state + n_w:
            return True
        state = "h0, c0" if self.mode == "lstm" else "h0"
        raise TypeInferenceError(
            f"{self.name} with num_layers={attrs.num_layers}, bidirectional="
            f"{attrs.bidirectional} takes x, optionally {state}, then {n_w} weights (w_ih, w_hh,"
            f" b_ih, b_hh per layer and direction): {1 + n_w} or {1 + self._n_state + n_w}"
            f" inputs, got {n_inputs}")

    def infer_type(self, attrs: RNNAttrs, *ins: TensorType) -> tuple[TensorType, ...]:
        op = self.name
        if attrs.hidden_size < 1 or attrs.num_layers < 1:
            raise TypeInferenceError(
                f"{op}: hidden_size and num_layers must be >= 1, got {attrs.hidden_size},"
                f" {attrs.num_layers}")
        has_state = self._layout(attrs, len(ins))
        x = ins[0]
        _check_float(op, "input x", x, rank=3)
        if x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] < 1:
            raise TypeInferenceError(f"{op}: input x must be non-empty, got {x}")
        t_len, batch = (x.shape[1], x.shape[0]) if attrs.batch_first else x.shape[:2]
        hs, dirs = attrs.hidden_size, 2 if attrs.bidirectional else 1
        state_shape = (attrs.num_layers * dirs, batch, hs)
        k = 1
        if has_state:
            for name, t in zip(("h0", "c0"), ins[1:1 + self._n_state]):
                _check_float(op, name, t, state_shape)
            k += self._n_state
        gates = _GATES[self.mode] * hs
        kinds: set[str] = set()
        for layer in range(attrs.num_layers):
            in_size = x.shape[2] if layer == 0 else hs * dirs
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih, w_hh, b_ih, b_hh = ins[k:k + 4]
                k += 4
                _check_weight(op, "weight_ih" + sfx, w_ih, gates, in_size)
                _check_weight(op, "weight_hh" + sfx, w_hh, gates, hs)
                _check_float(op, "bias_ih" + sfx, b_ih, (gates,))
                _check_float(op, "bias_hh" + sfx, b_hh, (gates,))
                kinds |= {_weight_kind(w_ih), _weight_kind(w_hh)}
        if len(kinds) > 1:
            raise TypeInferenceError(
                f"{op}: weights must be all qint8 or all float16, got a mix")
        y_shape = ((batch, t_len, dirs * hs) if attrs.batch_first else (t_len, batch, dirs * hs))
        outs = [TensorType(y_shape, f32)] + [TensorType(state_shape, f32)] * self._n_state
        return tuple(outs)

    def reference(self, sig: Sig, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        attrs: RNNAttrs = sig.attrs
        has_state = self._layout(attrs, len(arrays))
        x = np.asarray(arrays[0], dtype=F32)
        if attrs.batch_first:
            x = x.transpose(1, 0, 2)
        t_len, batch = x.shape[:2]
        hs, dirs = attrs.hidden_size, 2 if attrs.bidirectional else 1
        n_states = attrs.num_layers * dirs
        if has_state:
            h0 = arrays[1]
            c0 = arrays[2] if self.mode == "lstm" else None
            k = 1 + self._n_state
        else:
            h0 = np.zeros((n_states, batch, hs), F32)
            c0 = np.zeros((n_states, batch, hs), F32) if self.mode == "lstm" else None
            k = 1
        h_n, c_n = [], []
        layer_in = x
        for layer in range(attrs.num_layers):
            dir_outs = []
            for d in range(dirs):
                w_ih, w_hh, b_ih, b_hh = arrays[k:k + 4]
                t_ih, t_hh = sig.in_types[k], sig.in_types[k + 1]
                k += 4
                lin_ih, lin_hh = _Linear(w_ih, b_ih, t_ih), _Linear(w_hh, b_hh, t_hh)
                # the input-to-hidden linear sees the whole sequence at once
                ih_all = lin_ih(layer_in, attrs.reduce_range)
                idx = layer * dirs + d
                h = np.asarray(h0[idx], dtype=F32)
                c = np.asarray(c0[idx], dtype=F32) if c0 is not None else None
                steps = range(t_len - 1, -1, -1) if d == 1 else range(t_len)
                out = np.empty((t_len, batch, hs), F32)
                for t in steps:
                    h, c = _cell_step(self.mode, "", ih_all[t], h, c, lin_hh, attrs.reduce_range)
                    out[t] = h
                dir_outs.append(out)
                h_n.append(h)
                if c is not None:
                    c_n.append(c)
            layer_in = np.concatenate(dir_outs, axis=-1) if dirs == 2 else dir_outs[0]
        y = layer_in.transpose(1, 0, 2).copy() if attrs.batch_first else layer_in
        outs = [y, np.stack(h_n)]
        if self.mode == "lstm":
            outs.append(np.stack(c_n))
        return tuple(outs)

    def lower(self, sig: Sig, *tensors: Any) -> Any:
        """One te.extern running the reference's loops in TIR (`_lower_rnn`): per layer and
        direction the input linear over all T*B rows, then per step the hidden linear and the
        gate math (bit-exact SLEEF/glibc sigmoid, libm float64 tanh rounded to float32)."""
        return _lower_rnn(self, sig, tensors)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        A = RNNAttrs
        cases = [  # (T, B, I, attrs, weights, with state, per-channel, label)
            (4, 2, 3, A(5), "i8", True, False, "basic"),
            (3, 1, 4, A(3), "i8", False, True, "no-state-per-channel"),
            (3, 2, 3, A(4, num_layers=2, bidirectional=True), "i8", True, True, "2-layer-bidir"),
            (2, 3, 5, A(3, batch_first=True), "i8", True, False, "batch-first"),
            (3, 2, 4, A(4, reduce_range=False), "i8", True, False, "full-range"),
            (4, 2, 3, A(4, num_layers=2), "f16", True, False, "fp16-2-layer"),
            (3, 2, 3, A(3, bidirectional=True, batch_first=True), "f16", False, False,
             "fp16-bidir-batch-first"),
            (3, 2, 6, A(36), "i8", True, False, "hidden-36-vector-body"),
            (20, 2, 4, A(6), "i8", True, True, "20-steps"),
            (20, 1, 3, A(5), "f16", True, False, "fp16-20-steps"),
        ]
        for t_len, batch, in_size, attrs, kind, with_state, pc, label in cases:
            yield self.make_sample(rng, t_len, batch, in_size, attrs, kind, with_state, pc,
                                    label)

    def make_sample(self, rng: np.random.Generator, t_len: int, batch: int, in_size: int,
                     attrs: RNNAttrs, kind: str, with_state: bool, per_channel: bool,
                     label: str) -> OpSample:
        hs, dirs = attrs.hidden_size, 2 if attrs.bidirectional else 1
        gates = _GATES[self.mode] * hs
        x_shape = (batch, t_len, in_size) if attrs.batch_first else (t_len, batch, in_size)
        tx, x = S.ftensor(rng, x_shape, 1.0)
        types: list[TensorType] = [tx]
        arrays: list[np.ndarray] = [x]
        if with_state:
            for _ in range(self._n_state):
                ts, s = S.ftensor(rng, (attrs.num_layers * dirs, batch, hs), 0.5)
                types.append(ts)
                arrays.append(s)
        for layer in range(attrs.num_layers):
            in_l = in_size if layer == 0 else hs * dirs
            for _ in range(dirs):
                for cols in (in_l, hs):
                    if kind == "f16":
                        tw, w = _rand_f16weight(rng, (gates, cols), 0.5 / np.sqrt(cols))
                    else:
                        tw, w = _rand_qweight(rng, (gates, cols), per_channel,
                                              scale=None if per_channel else 0.4 / 127)
                    types.append(tw)
                    arrays.append(w)
                for _ in range(2):
                    tb, b = S.ftensor(rng, (gates,), 0.2)
                    types.append(tb)
                    arrays.append(b)
        return OpSample(attrs, tuple(types), tuple(arrays), label)

    def torch_reference(self, sample: OpSample, sig: Sig) -> tuple[np.ndarray, ...]:
        import torch
        import torch.ao.nn.quantized.dynamic as nnqd

        attrs: RNNAttrs = sample.attrs
        arrays, types = sample.arrays, sample.in_types
        has_state = self._layout(attrs, len(arrays))
        k = 1 + (self._n_state if has_state else 0)
        dirs = 2 if attrs.bidirectional else 1
        cls = nnqd.LSTM if self.mode == "lstm" else nnqd.GRU
        mod = cls(types[0].shape[2], attrs.hidden_size, num_layers=attrs.num_layers,
                  bias=True, batch_first=attrs.batch_first, dropout=0.0,
                  bidirectional=attrs.bidirectional, dtype=_torch_dtype(types[k]))
        if not attrs.reduce_range:
            mod.version = 1  # version-1 modules pack their cell params with reduce_range=False
        wb: dict[str, Any] = {}
        for layer in range(attrs.num_layers):
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                wb["weight_ih" + sfx] = _weight_to_torch(arrays[k], types[k])
                wb["weight_hh" + sfx] = _weight_to_torch(arrays[k + 1], types[k + 1])
                wb["bias_ih" + sfx] = torch.from_numpy(arrays[k + 2])
                wb["bias_hh" + sfx] = torch.from_numpy(arrays[k + 3])
                k += 4
        mod.set_weight_bias(wb)
        x = torch.from_numpy(arrays[0])
        if self.mode == "lstm":
            hx = (torch.from_numpy(arrays[1]), torch.from_numpy(arrays[2])) if has_state else None
            y, (h, c) = mod(x, hx)
            return y.numpy(), h.numpy(), c.numpy()
        y, h = mod(x, torch.from_numpy(arrays[1]) if has_state else None)
        return y.numpy(), h.numpy()


@register_op
class LSTM(_RNNBase):
    """Dynamic quantized LSTM (torch.ao.nn.quantized.dynamic.LSTM), int8 or fp16 weights.

    Inputs: x f32[T, B, I] ([B, T, I] if batch_first), optionally h0 f32[L*D, B, H] and
    c0 f32[L*D, B, H] (zeros when absent), then for each layer l and direction d (forward,
    then reverse): w_ih [4H, I_l], w_hh [4H, H] (both qint8 or both float16), b_ih f32[4H],
    b_hh f32[4H]. I_l = I for layer 0, D*H above. Gate order i, f, g, o (PyTorch's).
    Outputs: y f32[T, B, D*H] ([B, T, D*H] if batch_first; forward then reverse halves),
    h_n f32[L*D, B, H], c_n f32[L*D, B, H].

    Per layer and direction: ih = lin_ih(layer input, all T steps at once); per step
    g = lin_hh(h) + ih[t]; c' = f*c + i*tanh(g_g); h' = o*tanh(c') with i, f, o = sigmoid(...)
    (see the module docstring for each linear's formula and sigmoid/tanh). No dropout
    (inference).
    """

    name = "qnn.lstm"
    mode = "lstm"
    torch_counterparts = ("torch.ao.nn.quantized.dynamic.LSTM", "torch.quantized_lstm")
    fidelity_note = _RNN_FIDELITY


@register_op
class GRU(_RNNBase):
    """Dynamic quantized GRU (torch.ao.nn.quantized.dynamic.GRU), int8 or fp16 weights.

    Inputs: x f32[T, B, I] ([B, T, I] if batch_first), optionally h0 f32[L*D, B, H] (zeros
    when absent), then per layer and direction: w_ih [3H, I_l], w_hh [3H, H], b_ih f32[3H],
    b_hh f32[3H] (gate order r, z, n). Outputs: y f32[T, B, D*H] (batch_first: [B, T, D*H]),
    h_n f32[L*D, B, H].

    Per step: r = sigmoid(hh_r + ih_r), z = sigmoid(hh_z + ih_z), n = tanh(ih_n + hh_n * r),
    h' = (h - n) * z + n, with hh = lin_hh(h) (b_hh included) and ih = lin_ih over the sequence.
    """

    name = "qnn.gru"
    mode = "gru"
    torch_counterparts = ("torch.ao.nn.quantized.dynamic.GRU", "torch.quantized_gru")
    fidelity_note = _RNN_FIDELITY


@dataclass(frozen=True)
class RNNCellAttrs:
    nonlinearity: str = "tanh"
    """qnn.rnn_cell only: 'tanh' or 'relu'."""


class _CellBase(OpDef):
    """Shared definition of the single-step cells (reduce_range is always True in PyTorch)."""

    mode: ClassVar[str]
    Attrs = RNNCellAttrs
    schedule_kind = "opaque"
    max_lsb = RNN_ABS_TOL  # type: ignore[assignment]  # absolute float tolerance

    @property
    def _n_state(self) -> int:
        return 2 if self.mode == "lstm" else 1

    def _has_state(self, n_inputs: int) -> bool:
        if n_inputs == 5:
            return False
        if n_inputs == 5 + self._n_state:
            return True
        state = "h, c" if self.mode == "lstm" else "h"
        raise TypeInferenceError(
            f"{self.name} takes x, optionally {state}, then w_ih, w_hh, b_ih, b_hh:"
            f" 5 or {5 + self._n_state} inputs, got {n_inputs}")

    def infer_type(self, attrs: RNNCellAttrs, *ins: TensorType) -> Any:
        op = self.name
        if attrs.nonlinearity not in ("tanh", "relu") or (
                self.mode != "rnn" and attrs.nonlinearity != "tanh"):
            allowed = "'tanh' or 'relu'" if self.mode == "rnn" else "only the default 'tanh'"
            raise TypeInferenceError(
                f"{op}: nonlinearity must be {allowed}, got {attrs.nonlinearity!r}")
        has_state = self._has_state(len(ins))
        x = ins[0]
        _check_float(op, "input x", x, rank=2)
        w_ih, w_hh, b_ih, b_hh = ins[-4:]
        if w_hh.rank != 2:
            raise TypeInferenceError(f"{op}: weight_hh must be a 2-D [G*H, H] tensor, got {w_hh}")
        hs = w_hh.shape[1]
        gates = _GATES[self.mode] * hs
        if hs < 1 or x.shape[1] < 1:
            raise TypeInferenceError(f"{op}: input and hidden sizes must be >= 1")
        _check_weight(op, "weight_ih", w_ih, gates, x.shape[1])
        _check_weight(op, "weight_hh", w_hh, gates, hs)
        if _weight_kind(w_ih) != _weight_kind(w_hh):
            raise TypeInferenceError(f"{op}: weights must be both qint8 or both float16")
        _check_float(op, "bias_ih", b_ih, (gates,))
        _check_float(op, "bias_hh", b_hh, (gates,))
        state = TensorType((x.shape[0], hs), f32)
        if has_state:
            for name, t in zip(("h", "c"), ins[1:1 + self._n_state]):
                _check_float(op, name, t, state.shape)
        return (state, state) if self.mode == "lstm" else state

    def reference(self, sig: Sig, *arrays: np.ndarray) -> Any:
        has_state = self._has_state(len(arrays))
        x = np.asarray(arrays[0], dtype=F32)
        w_ih, w_hh, b_ih, b_hh = arrays[-4:]
        t_ih, t_hh = sig.in_types[-4], sig.in_types[-3]
        hs = t_hh.shape[1]
        if has_state:
            h = np.asarray(arrays[1], dtype=F32)
            c = np.asarray(arrays[2], dtype=F32) if self.mode == "lstm" else None
        else:
            h = np.zeros((x.shape[0], hs), F32)
            c = np.zeros((x.shape[0], hs), F32) if self.mode == "lstm" else None
        ih = _Linear(w_ih, b_ih, t_ih)(x, True)
        h, c = _cell_step(self.mode, sig.attrs.nonlinearity, ih, h, c, _Linear(w_hh, b_hh, t_hh),
                          True)
        return (h, c) if self.mode == "lstm" else h

    def lower(self, sig: Sig, *tensors: Any) -> Any:
        """One te.extern: the input linear, the hidden linear and one step of gate math in
        TIR, as the reference (`_lower_cell`)."""
        return _lower_cell(self, sig, tensors)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases = [  # (B, I, H, weights, with state, per-channel, nonlinearity, label)
            (2, 3, 4, "i8", True, False, "tanh", "basic"),
            (3, 5, 3, "i8", False, True, "tanh", "no-state-per-channel"),
            (2, 4, 5, "f16", True, False, "tanh", "fp16"),
            (2, 6, 33, "i8", True, True, "tanh", "hidden-33-vector-body"),
        ]
        if self.mode == "rnn":
            cases += [(3, 4, 5, "i8", True, False, "relu", "relu"),
                      (2, 3, 4, "f16", False, False, "relu", "fp16-relu")]
        for batch, in_size, hs, kind, with_state, pc, nl, label in cases:
            gates = _GATES[self.mode] * hs
            tx, x = S.ftensor(rng, (batch, in_size), 1.0)
            types: list[TensorType] = [tx]
            arrays: list[np.ndarray] = [x]
            if with_state:
                for _ in range(self._n_state):
                    ts, s = S.ftensor(rng, (batch, hs), 0.5)
                    types.append(ts)
                    arrays.append(s)
            for cols in (in_size, hs):
                if kind == "f16":
                    tw, w = _rand_f16weight(rng, (gates, cols), 0.5 / np.sqrt(cols))
                else:
                    tw, w = _rand_qweight(rng, (gates, cols), pc)
                types.append(tw)
                arrays.append(w)
            for _ in range(2):
                tb, b = S.ftensor(rng, (gates,), 0.2)
                types.append(tb)
                arrays.append(b)
            yield OpSample(RNNCellAttrs(nl), tuple(types), tuple(arrays), label)

    def torch_reference(self, sample: OpSample, sig: Sig) -> Any:
        import torch
        import torch.ao.nn.quantized.dynamic as nnqd

        arrays, types = sample.arrays, sample.in_types
        has_state = self._has_state(len(arrays))
        in_size, hs = types[0].shape[1], types[-3].shape[1]
        dtype = _torch_dtype(types[-4])
        if self.mode == "lstm":
            mod: Any = nnqd.LSTMCell(in_size, hs, bias=True, dtype=dtype)
        elif self.mode == "gru":
            mod = nnqd.GRUCell(in_size, hs, bias=True, dtype=dtype)
        else:
            mod = nnqd.RNNCell(in_size, hs, bias=True, nonlinearity=sample.attrs.nonlinearity,
                               dtype=dtype)
        b_ih, b_hh = torch.from_numpy(arrays[-2]), torch.from_numpy(arrays[-1])
        mod.set_weight_bias({
            "weight": {"weight_ih": _weight_to_torch(arrays[-4], types[-4]),
                       "weight_hh": _weight_to_torch(arrays[-3], types[-3])},
            "bias": {"bias_ih": b_ih, "bias_hh": b_hh}})
        mod.bias_ih, mod.bias_hh = b_ih, b_hh
        x = torch.from_numpy(arrays[0])
        if self.mode == "lstm":
            hx = (torch.from_numpy(arrays[1]), torch.from_numpy(arrays[2])) if has_state else None
            h, c = mod(x, hx)
            return h.numpy(), c.numpy()
        return mod(x, torch.from_numpy(arrays[1]) if has_state else None).numpy()


@register_op
class LSTMCell(_CellBase):
    """One dynamic quantized LSTM step (torch.ao.nn.quantized.dynamic.LSTMCell).

    Inputs: x f32[B, I], optionally h f32[B, H] and c f32[B, H] (zeros when absent), w_ih
    [4H, I], w_hh [4H, H] (both qint8 or both float16), b_ih f32[4H], b_hh f32[4H].
    Outputs: h' f32[B, H], c' f32[B, H]. Same step as qnn.lstm (reduce_range is always True:
    quantized::quantized_lstm_cell_dynamic hard-codes it).
    """

    name = "qnn.lstm_cell"
    mode = "lstm"
    torch_counterparts = ("torch.ao.nn.quantized.dynamic.LSTMCell",
                          "quantized::quantized_lstm_cell_dynamic")
    fidelity_note = _RNN_FIDELITY


@register_op
class GRUCell(_CellBase):
    """One dynamic quantized GRU step (torch.ao.nn.quantized.dynamic.GRUCell).

    Inputs: x f32[B, I], optionally h f32[B, H] (zeros when absent), w_ih [3H, I], w_hh
    [3H, H], b_ih f32[3H], b_hh f32[3H]. Output: h' f32[B, H]. Same step as qnn.gru.
    """

    name = "qnn.gru_cell"
    mode = "gru"
    torch_counterparts = ("torch.ao.nn.quantized.dynamic.GRUCell",
                          "quantized::quantized_gru_cell_dynamic")
    fidelity_note = _RNN_FIDELITY


@register_op
class RNNCell(_CellBase):
    """One dynamic quantized Elman RNN step (torch.ao.nn.quantized.dynamic.RNNCell).

    Inputs: x f32[B, I], optionally h f32[B, H] (zeros when absent), w_ih [H, I], w_hh [H, H],
    b_ih f32[H], b_hh f32[H]. Output: h' = act(lin_hh(h) + lin_ih(x)) f32[B, H] with act the
    `nonlinearity` attr: 'tanh' (correctly rounded, see fidelity_note) or 'relu' (exact).
    """

    name = "qnn.rnn_cell"
    mode = "rnn"
    torch_counterparts = ("torch.ao.nn.quantized.dynamic.RNNCell",
                          "quantized::quantized_rnn_tanh_cell_dynamic",
                          "quantized::quantized_rnn_relu_cell_dynamic")
    fidelity_note = _RNN_FIDELITY


# --- lowering helpers: TIR twins of the float emulations above (TVM imported lazily) ---------
# Every helper takes and returns TIR expressions and rounds exactly as its numpy twin, step
# for step: products the twin rounds before an add are fenced (te_lib.fence), its fused steps
# use llvm.fma (te_lib.fma), float64 steps stay float64.
#
# Helpers that reuse an intermediate value take a `bind(expr) -> expr` that evaluates it once:
# inside a TIR body built with the TVMScript IRBuilder (the RNN kernels) that is `_tir_bind`,
# a scalar local; in a TE expression it is the identity (the value is re-emitted per use).
# NOTE: nested `tirx.Let` expressions are NOT a substitute: TVM 0.27's lowering passes expand
# them (a 10-deep Let chain made every pass take ~0.2 s and the LLVM IR 20x larger), and a
# float `T.bind` (Bind statement) crashes StmtSimplify ("IntImm supports only int or uint or
# bool type, but float32 was supplied"). One-element local buffers have neither problem.

Bind = Any
"""A `bind(expr) -> expr` callable (see above)."""


def _same(v: Any) -> Any:
    return v


def _tir_bind(value: Any) -> Any:
    """Evaluate `value` once into a scalar local of the current IRBuilder frame; its load."""
    from tvm.script.ir_builder import tirx as T

    from qcompiler.lowering.tvm_compat import expr_dtype

    buf = T.alloc_buffer((1,), expr_dtype(value))
    T.buffer_store(buf, value, [0])
    return buf[0]


def _pow2_f32(n: Any) -> Any:
    """float32 2**n for an int32 n in [-1022, 1023] (np.ldexp(F32(1), n)): exact in float64,
    then one rounding to float32 (2**-150 -> 0, above 2**127 -> inf, as ldexpf)."""
    from qcompiler.lowering.tvm_compat import te, tirx

    bits = tirx.shift_left((n + 1023).astype("int64"), te.const(52, "int64"))
    return tirx.reinterpret("float64", bits).astype("float32")


def _expf_sleef_te(d: Any, bind: Bind = _same) -> Any:
    """expf_sleef (SLEEF expf_u10, AVX512 + FMA) on a float32 expression, bit for bit."""
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import te, tirx

    f32c = te_lib.f32_const
    d = bind(d)
    p = te_lib.fence(d * f32c(_SLEEF_R_LN2F))
    r = te_lib.round_half_even(tirx.Select(te.isnan(p), f32c(0.0), p))
    q = bind(te.max(te.min(r, f32c(300.0)), f32c(-300.0)).astype("int32"))
    qf = q.astype("float32")
    s = te_lib.fma(qf, f32c(-_SLEEF_L2UF), d)
    s = bind(te_lib.fma(qf, f32c(-_SLEEF_L2LF), s))
    u = f32c(_SLEEF_EXPF_POLY[0])
    for coef in _SLEEF_EXPF_POLY[1:]:
        u = te_lib.fma(u, s, f32c(coef))
    u = f32c(1.0) + te_lib.fma(te_lib.fence(s * s), u, s)
    q1 = tirx.shift_right(q, te.const(1, "int32"))
    u = te_lib.fence(te_lib.fence(u) * _pow2_f32(q1))
    u = te_lib.fence(u * _pow2_f32(q - q1))
    u = tirx.Select(d < f32c(-104.0), f32c(0.0), u)
    u = tirx.Select(d > f32c(100.0), te.const(float("inf"), "float32"), u)
    return tirx.Select(te.isnan(d), d, u)


def _expf_glibc_te(x: Any, table: Any, bind: Bind = _same) -> Any:
    """expf_glibc (glibc 2.27+ expf) on a float32 expression, bit for bit.

    `table(i)` gives entry i (an int64 expression in [0, 32)) of `_GLIBC_EXP2F_TAB` as uint64.
    """
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import te, tirx

    f64c = te_lib.f64_const
    fence = te_lib.fence
    x = bind(x)
    xd = x.astype("float64")
    xd = tirx.Select(te.isnan(xd), f64c(0.0), xd)
    xd = bind(te.max(te.min(xd, f64c(200.0)), f64c(-200.0)))
    # NOTE: kd is fenced: TVM's simplifier folds (a + SHIFT) - SHIFT to a, which would undo
    # the rounding to an integer multiple of 1/32 that the SHIFT trick performs
    kd = bind(fence(fence(f64c(_GLIBC_INVLN2N) * xd) + f64c(_GLIBC_SHIFT)))
    ki = bind(tirx.reinterpret("uint64", kd))
    r = bind(fence(f64c(_GLIBC_INVLN2N) * xd) - (kd - f64c(_GLIBC_SHIFT)))
    idx = tirx.bitwise_and(ki, te.const(31, "uint64")).astype("int64")
    # t = table[idx] + (ki << 47) modulo 2**64, spelled without any overflowing operation:
    # TIR emits unsigned + and << with LLVM's `nuw` (a wrap-around is poison), so the 17 bits
    # the shift keeps are added to the table entry's top 17 bits in 17-bit arithmetic
    def u64(v: int) -> Any:
        return te.const(v, "uint64")

    tab = bind(table(idx))
    top = tirx.bitwise_and(tirx.shift_right(tab, u64(47)) + tirx.bitwise_and(ki, u64(0x1FFFF)),
                           u64(0x1FFFF))
    t = tirx.bitwise_or(tirx.shift_left(top, u64(47)), tirx.bitwise_and(tab, u64(2**47 - 1)))
    sc = tirx.reinterpret("float64", t)
    z = fence(f64c(_GLIBC_POLY[0]) * r) + f64c(_GLIBC_POLY[1])
    y = fence(f64c(_GLIBC_POLY[2]) * r) + f64c(1.0)
    y = fence(fence(z) * fence(r * r)) + fence(y)
    out = fence(fence(y) * sc).astype("float32")
    out = tirx.Select(x > te_lib.f32_const(float.fromhex("0x1.62e42ep6")),
                      te.const(float("inf"), "float32"), out)
    out = tirx.Select(x < te_lib.f32_const(-float.fromhex("0x1.9fe368p6")),
                      te_lib.f32_const(0.0), out)
    return tirx.Select(te.isnan(x), x, out)


def _glibc_table_value(idx: Any) -> Any:
    """`_GLIBC_EXP2F_TAB[idx]` as a uint64 expression (a select chain on an int64 index), for
    expressions without a table buffer at hand; TIR kernels load from `_emit_glibc_table`."""
    from qcompiler.lowering.tvm_compat import te, tirx

    out = te.const(int(_GLIBC_EXP2F_TAB[31]), "uint64")
    for k in range(30, -1, -1):
        out = tirx.Select(idx == te.const(k, "int64"),
                          te.const(int(_GLIBC_EXP2F_TAB[k]), "uint64"), out)
    return out


def _emit_glibc_table() -> Any:
    """A 32-entry uint64 local buffer holding `_GLIBC_EXP2F_TAB` (IRBuilder); its loader."""
    from tvm.script.ir_builder import tirx as T

    from qcompiler.lowering.tvm_compat import te

    buf = T.alloc_buffer((32,), "uint64")
    for k, v in enumerate(_GLIBC_EXP2F_TAB):
        T.buffer_store(buf, te.const(int(v), "uint64"), [k])
    return lambda idx: buf[idx]


def _sigmoid_te(x: Any, vector_body: bool, table: Any = _glibc_table_value,
                bind: Bind = _same) -> Any:
    """sigmoid_f32 of one element: 1f / (1f + expf(-x)), with SLEEF's expf when `vector_body`
    (the element is in the first 32 * (n // 32) of its row) and glibc's expf otherwise."""
    from qcompiler.lowering import te_lib

    one = te_lib.f32_const(1.0)
    nx = -x
    e = _expf_sleef_te(nx, bind) if vector_body else _expf_glibc_te(nx, table, bind)
    return te_lib.fence(one / (one + e))


def _tanh_te(x: Any) -> Any:
    """tanh_f32: float64 tanh (libm) of a float32 expression, rounded once to float32.

    NOTE: TVM's own `tirx.tanh` legalizes to (1 - exp(-2x)) / (1 + exp(-2x)), which cancels
    badly near 0; libm's double tanh agrees with numpy's after rounding to float32 (0
    differences in 9 M float32 inputs: random bit patterns, N(0, 3), N(0, 1e-3)).
    """
    from qcompiler.lowering.tvm_compat import tirx

    return tirx.call_pure_extern("float64", "tanh", x.astype("float64")).astype("float32")


def _dyn_qparams_te(x_min: Any, x_max: Any, reduce_range: bool,
                    bind: Bind = _same) -> tuple[Any, Any, Any]:
    """choose_dynamic_qparams on float32 min/max expressions, step for step (float32 where the
    reference is float32, float64 where it is double).

    Returns float32 expressions (scale, 1f / scale, float32(zero point)). With the identity
    `bind` the expressions are large: evaluate them once per kernel (`_emit_dyn_qparams`).
    """
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import te, tirx

    qmin, qmax = (0, 127) if reduce_range else (0, 255)
    span = qmax - qmin
    f32c, f64c = te_lib.f32_const, te_lib.f64_const
    thr = SMALL_SCALE_THRESHOLD
    with np.errstate(over="ignore"):
        mx_small = F32(thr * F32(span))
        mn_small = F32(-thr * F32(span))
    zero = f32c(0.0)

    mn0 = bind(te.min(x_min, zero))
    mx0 = bind(te.max(x_max, zero))
    scale0 = bind((mx0.astype("float64") - mn0.astype("float64")) / f64c(float(span)))
    s32 = bind(scale0.astype("float32"))
    bad = tirx.Or(s32 == zero, te.isinf(te_lib.fence(f32c(1.0) / s32)))
    scale1 = bind(tirx.Select(bad, f64c(0.1), scale0))
    small = bind(scale1 < f64c(float(thr)))
    amp = bind(te_lib.fence(f32c(thr) / scale1.astype("float32")))
    mn_s = tirx.Select(mn0 == zero, mn0, tirx.Select(
        mx0 == zero, f32c(mn_small), te_lib.fence(mn0 * amp)))
    mx_s = tirx.Select(mn0 == zero, f32c(mx_small), tirx.Select(
        mx0 == zero, mx0, te_lib.fence(mx0 * amp)))
    mn = tirx.Select(small, mn_s, mn0)
    mx = tirx.Select(small, mx_s, mx0)
    scale = bind(tirx.Select(small, f64c(float(thr)), scale1))
    dmn = bind(mn.astype("float64") / scale)
    dmx = bind(mx.astype("float64") / scale)
    err_min = f64c(abs(qmin)) - te.abs(dmn)
    err_max = f64c(abs(qmax)) - te.abs(dmx)
    initial = bind(tirx.Select(err_min < err_max, f64c(qmin) - dmn, f64c(qmax) - dmx))
    zp = tirx.Select(initial < f64c(qmin), f64c(qmin), tirx.Select(
        initial > f64c(qmax), f64c(qmax), te_lib.round_half_even(initial)))
    zp = tirx.Select(te.isnan(initial), f64c(qmin), zp)  # (non-finite input: no UB cast)
    scale_f = bind(scale.astype("float32"))
    return scale_f, te_lib.fence(f32c(1.0) / scale_f), zp.astype("float32")


def _quantize_act_te(x: Any, inv: Any, zp_f: Any) -> Any:
    """quantize_activation minus the zero point: clamp(rint(fma(x, inv, zp)), 0, 255) - zp as
    int32 (fbgemm's legacy quantize; NaN -> 0 as the reference's nan_to_num)."""
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import te, tirx

    t = te_lib.round_half_even(te_lib.fma(x, inv, zp_f))
    t = tirx.Select(te.isnan(t), te_lib.f32_const(0.0), t)
    q = te.max(te.min(t, te_lib.f32_const(255.0)), te_lib.f32_const(0.0))
    return q.astype("int32") - zp_f.astype("int32")


def _relu_te(v: Any) -> Any:
    """np.maximum(v, 0) on float32: NaN stays NaN, -0.0 stays -0.0."""
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import tirx

    zero = te_lib.f32_const(0.0)
    return tirx.Select(v < zero, zero, v)


def _fp16_weight_te(w: Any) -> Any:
    """A float16 weight as float32, saturated to +-65504 (PyTorch's prepack); NaN stays."""
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import tirx

    v = w.astype("float32")
    hi, lo = te_lib.f32_const(FP16_MAX), te_lib.f32_const(-FP16_MAX)
    return tirx.Select(v > hi, hi, tirx.Select(v < lo, lo, v))


def _ir_body(emit: Any) -> Any:
    """The statement `emit()` builds with the TVMScript IRBuilder (for a `te.extern` body)."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    with IRBuilder() as ib, T.prim_func():
        emit()
    return ib.get().body


def _emit_loops(extents: Sequence[int]) -> Any:
    """Nested serial loops over `extents` (IRBuilder); a context manager giving the vars."""
    from contextlib import ExitStack, contextmanager

    from tvm.script.ir_builder import tirx as T

    @contextmanager
    def loops() -> Iterator[tuple[Any, ...]]:
        with ExitStack() as stack:
            yield tuple(stack.enter_context(T.serial(0, int(e))) for e in extents)

    return loops()


def _emit_minmax(load: Any, extents: Sequence[int]) -> tuple[Any, Any]:
    """min and max of `load(*idx)` over the index space `extents` (serial loops); loads."""
    from tvm.script.ir_builder import tirx as T

    from qcompiler.lowering.tvm_compat import te

    first = load(*(te.const(0, "int32") for _ in extents))
    mn = T.alloc_buffer((1,), "float32")
    mx = T.alloc_buffer((1,), "float32")
    T.buffer_store(mn, first, [0])
    T.buffer_store(mx, first, [0])
    with _emit_loops(extents) as idx:
        v = _tir_bind(load(*idx))
        T.buffer_store(mn, te.min(mn[0], v), [0])
        T.buffer_store(mx, te.max(mx[0], v), [0])
    return mn[0], mx[0]


def _emit_dyn_qparams(load: Any, extents: Sequence[int], reduce_range: bool,
                      ) -> tuple[Any, Any, Any]:
    """min/max of the activation, then its qparams (scale, 1f/scale, f32(zp)) as scalars."""
    mn, mx = _emit_minmax(load, extents)
    s, inv, zp = _dyn_qparams_te(mn, mx, reduce_range, _tir_bind)
    return _tir_bind(s), _tir_bind(inv), _tir_bind(zp)


@dataclass(frozen=True)
class _QWeight:
    """Static facts of a qint8 weight [N, K]: float32 scales and int zero points per row."""

    scales: np.ndarray
    zps: np.ndarray

    @staticmethod
    def of(ty: TensorType) -> _QWeight:
        qp = ty.qparams
        assert qp is not None
        n = ty.shape[0]
        if qp.axis is None:
            sc = np.full(n, F32(qp.scale_value), dtype=F32)
            zp = np.full(n, int(qp.zp_value), dtype=np.int64)
        else:
            sc = np.asarray(qp.scale, dtype=F64).astype(F32)
            zp = np.asarray(qp.zero_point, dtype=np.int64)
        return _QWeight(sc, zp)

    @property
    def uniform_scale(self) -> bool:
        return bool(np.all(self.scales.view(np.uint32) == self.scales.view(np.uint32)[0]))

    @property
    def uniform_zp(self) -> bool:
        return bool(np.all(self.zps == self.zps[0]))

    def max_abs_w(self) -> int:
        """Bound of |w - z_w| over the int8 range."""
        return int(np.max(np.maximum(127 - self.zps, self.zps + 128)))

    def scale_fn(self, name: str) -> Any:
        """n -> float32 scale: an immediate when uniform, else a load of a constant tensor."""
        from qcompiler.lowering import te_lib

        if self.uniform_scale:
            imm = te_lib.f32_const(self.scales[0])
            return lambda n: imm
        t = te_lib.constant(self.scales.astype(F32), name)
        return lambda n: t[n]

    def zp_fn(self, name: str) -> Any:
        """n -> int32 zero point: an immediate when uniform, else a load of a constant tensor."""
        from qcompiler.lowering import te_lib

        if self.uniform_zp:
            imm = te_lib.int_const(int(self.zps[0]))
            return lambda n: imm
        t = te_lib.constant(self.zps.astype(np.int32), name)
        return lambda n: t[n]


_INT32_MAX = 2**31 - 1


def _acc_dtype(k: int, max_x: int, max_w: int) -> str:
    """int32 when no partial sum of k products can overflow it, else int64 (wrapped after).

    NOTE: TIR's signed int32 `+` carries LLVM's `nsw`: an overflowing int32 sum is undefined,
    so sums that may overflow run in int64 and wrap to int32 at the end (= the reference's
    int64 matmul `.astype(np.int32)`).
    """
    return "int32" if k * max_x * max_w <= _INT32_MAX else "int64"


def _lin_check(op: str, x: Any) -> tuple[tuple[int, ...], int]:
    from qcompiler.errors import LoweringError
    from qcompiler.lowering.tvm_compat import int_shape

    shape = int_shape(x)
    if any(d == 0 for d in shape):
        raise LoweringError(f"{op}: empty input {list(shape)} is not supported by the compiler")
    return shape, shape[-1]


def _linear_int8_te(sig: Sig, x: Any, w: Any, b: Any, reduce_range: bool, relu: bool,
                    name: str = "qnn_linear_dynamic") -> Any:
    """TE of linear_int8 (see LinearDynamic.lower for the stages)."""
    from tvm.script.ir_builder import tirx as T

    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import te

    shape, k = _lin_check(name, x)
    lead = shape[:-1]
    qw = _QWeight.of(sig.in_types[1])
    n_out = qw.scales.shape[0]

    def qparams_body(ins: Any, outs: Any) -> Any:
        def emit() -> None:
            xb, qb = ins[0], outs[0]
            s, inv, zp = _emit_dyn_qparams(lambda *i: xb[i], shape, reduce_range)
            for j, v in enumerate((s, inv, zp)):
                T.buffer_store(qb, v, [j])

        return _ir_body(emit)

    qp = te.extern([(3,)], [x], qparams_body, name=f"{name}_qparams", dtype=["float32"])
    s_x, inv_x, zp_x = qp[0], qp[1], qp[2]
    xq = te.compute(shape, lambda *i: _quantize_act_te(x[i], inv_x, zp_x).astype("int16"),
                    name=f"{name}_xq")
    if qw.uniform_zp and qw.zps[0] == 0:
        wz = w
    else:
        zw = qw.zp_fn(f"{name}_w_zero_point")
        wz_dt = "int16" if qw.max_abs_w() <= 32767 else "int32"  # (zero points beyond int8)
        wz = te.compute((n_out, k), lambda n, kk: (w[n, kk].astype("int32") - zw(n)).astype(
            wz_dt), name=f"{name}_wz")
    acc_dt = _acc_dtype(k, 127 if reduce_range else 255, qw.max_abs_w())
    rk = te.reduce_axis((0, k), name="k")
    acc = te.compute(lead + (n_out,), lambda *i: te.sum(
        xq[(*i[:-1], rk)].astype(acc_dt) * wz[i[-1], rk].astype(acc_dt), axis=rk),
        name=f"{name}_acc")
    sw = qw.scale_fn(f"{name}_w_scale")

    def epilogue(*i: Any) -> Any:
        n = i[-1]
        accf = acc[i].astype("int32").astype("float32")
        mult = te_lib.fence(s_x * sw(n))
        y = te_lib.fma(accf, mult, b[n]) if b is not None else te_lib.fence(accf * mult)
        return _relu_te(y) if relu else y

    return te.compute(lead + (n_out,), epilogue, name=name)


def _fma_chain_reducer() -> Any:
    """A TE reducer whose step is acc = fma(a, b, acc) over (a, b) pairs (identity -0.0, so
    the first step is exactly the plain product a * b, as the reference's chain starts)."""
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import te

    def fcombine(lhs: Any, rhs: Any) -> Any:
        return te_lib.fma(rhs[0], rhs[1], lhs[0]), lhs[1]

    def fidentity(t0: Any, t1: Any) -> Any:
        return te.const(-0.0, t0), te.const(0.0, t1)

    return te.comm_reducer(fcombine, fidentity, name="fma_chain")


def _linear_fp16_te(sig: Sig, x: Any, w: Any, b: Any, relu: bool,
                    name: str = "qnn_linear_dynamic_fp16") -> Any:
    """TE of linear_fp16 (see LinearDynamicFp16.lower)."""
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import te, tirx

    shape, k = _lin_check(name, x)
    lead = shape[:-1]
    n_out = int(w.shape[0])
    full = (n_out // FP16_NB) * FP16_NB if k > FP16_KB else n_out
    chain = _fma_chain_reducer()
    parts = []
    if full:
        rk = te.reduce_axis((0, k), name="k")
        acc, _ = te.compute(lead + (full,), lambda *i: chain(
            (x[(*i[:-1], rk)], _fp16_weight_te(w[i[-1], rk])), axis=rk), name=f"{name}_acc")
        parts.append(acc)
    if full < n_out:
        nb = -(-k // FP16_KB)
        kk = te.reduce_axis((0, FP16_KB), name="kk")

        def part(kb: Any, *i: Any) -> Any:
            # NOTE: TE drops `where=` on multi-value reducers; the padded steps use the pair
            # (-0.0, 0.0) instead: fma(-0, 0, acc) = acc + (-0) = acc exactly, for any acc
            kx = kb * FP16_KB + kk
            inside = kx < k
            kc = te.min(kx, k - 1)
            a = tirx.Select(inside, x[(*i[:-1], kc)], te.const(-0.0, "float32"))
            wv = tirx.Select(inside, _fp16_weight_te(w[full + i[-1], kc]),
                             te.const(0.0, "float32"))
            return chain((a, wv), axis=kk)

        p, _ = te.compute((nb,) + lead + (n_out - full,), part, name=f"{name}_part")
        plus = te.comm_reducer(lambda a, c: a + te_lib.fence(c), lambda t: te.const(-0.0, t),
                               name="fsum")
        rb = te.reduce_axis((0, nb), name="kb")
        tail = te.compute(lead + (n_out - full,), lambda *i: plus(p[(rb, *i)], axis=rb),
                          name=f"{name}_tail")
        parts.append(tail)

    def epilogue(*i: Any) -> Any:
        n = i[-1]
        if len(parts) == 1:
            v = parts[0][i]
        else:
            v = te.if_then_else(n < full, parts[0][(*i[:-1], te.min(n, full - 1))],
                                parts[1][(*i[:-1], te.max(n - full, 0))])
        # NOTE: LLVM folds the chain's fma(x, w, -0.0) to a plain fmul when K == 1 and would
        # contract it with the bias add: fence the sum first
        v = te_lib.fence(v)
        if b is not None:
            v = v + b[n]
        return _relu_te(v) if relu else v

    return te.compute(lead + (n_out,), epilogue, name=name)


# --- recurrent kernels: one TIR function per op (te.extern, TVMScript IRBuilder) -----------
# The time loop is sequential, so qnn.lstm / qnn.gru and the cells lower to ONE te.extern
# whose body (built with the IRBuilder) runs the reference's loops in the same order: per
# layer and direction the input-to-hidden linear over all T*B rows, then per step the
# hidden-to-hidden linear (dynamic qparams from the B*H hidden state) and the gate math.
# schedule_kind "opaque": no schedule rule touches it (codegen/rule.py has none for "opaque").


@dataclass
class _TirLinear:
    """One dynamic linear inside a TIR kernel: weight/bias buffers and how to read them.

    Created at lowering time with indices into the kernel's input list (`_Inputs`); `bind`
    resolves them to the extern's buffers inside the body."""

    kind: str
    w: int
    b: int | None
    qw: _QWeight | None = None
    scale: int | None = None
    zp: int | None = None

    @property
    def n_out(self) -> int:
        return 0 if self.qw is None else int(self.qw.scales.shape[0])


class _Inputs:
    """The tensors a te.extern reads, in order; lowering code adds constants as it goes."""

    def __init__(self, tensors: Sequence[Any]) -> None:
        self.tensors = list(tensors)

    def add(self, t: Any) -> int:
        self.tensors.append(t)
        return len(self.tensors) - 1

    def linear(self, ty: TensorType, w: int, b: int | None, name: str) -> _TirLinear:
        from qcompiler.lowering import te_lib

        if ty.dtype is f16:
            return _TirLinear("f16", w, b)
        qw = _QWeight.of(ty)
        lin = _TirLinear("i8", w, b, qw)
        if not qw.uniform_scale:
            lin.scale = self.add(te_lib.constant(qw.scales.astype(F32), f"{name}_w_scale"))
        if not qw.uniform_zp:
            lin.zp = self.add(te_lib.constant(qw.zps.astype(np.int32), f"{name}_w_zero_point"))
        return lin


def _emit_linear(lin: _TirLinear, ins: Sequence[Any], load: Any, rows: Sequence[int],
                 k: int, n_out: int, store: Any, xq: Any, reduce_range: bool) -> None:
    """linear_int8 / linear_fp16 of the activation `load(row_idx, kk)` over the row index space
    `rows` (IRBuilder): `store(row_idx, n, y)` for every row and output column.

    `xq` is an int16 scratch buffer of at least prod(rows) * k elements (int8 weights)."""
    from tvm.script.ir_builder import tirx as T

    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import te

    w = ins[lin.w]
    bias = ins[lin.b] if lin.b is not None else None
    rows = tuple(int(r) for r in rows)

    def flat(r: Sequence[Any]) -> Any:
        out = r[0]
        for d, i in zip(rows[1:], r[1:]):
            out = out * d + i
        return out

    if lin.kind == "f16":
        full = (n_out // FP16_NB) * FP16_NB if k > FP16_KB else n_out
        for lo, hi, tail in ((0, full, False), (full, n_out, True)):
            if lo == hi:
                continue
            with _emit_loops(rows) as r, T.serial(lo, hi) as n:
                acc = T.alloc_buffer((1,), "float32")
                T.buffer_store(acc, te.const(-0.0, "float32"), [0])
                blocks = [(0, k)] if not tail else [
                    (k0, min(k, k0 + FP16_KB)) for k0 in range(0, k, FP16_KB)]
                for k0, k1 in blocks:
                    part = T.alloc_buffer((1,), "float32")
                    T.buffer_store(part, te.const(-0.0, "float32"), [0])
                    with T.serial(k0, k1) as kk:
                        T.buffer_store(part, te_lib.fma(load(r, kk), _fp16_weight_te(w[n, kk]),
                                                        part[0]), [0])
                    # block sums in block order; -0.0 + part == part exactly. NOTE: LLVM
                    # folds fma(x, w, -0.0) to a plain fmul (K == 1) and would then contract
                    # it with the following add: every sum operand is fenced
                    T.buffer_store(acc, acc[0] + te_lib.fence(part[0]), [0])
                y = te_lib.fence(acc[0])
                store(r, n, te_lib.fence(y + bias[n]) if bias is not None else y)
        return

    qw = lin.qw
    assert qw is not None
    s_x, inv_x, zp_x = _emit_dyn_qparams(lambda *i: load(i[:-1], i[-1]), rows + (k,),
                                         reduce_range)
    with _emit_loops(rows + (k,)) as idx:
        T.buffer_store(xq, _quantize_act_te(load(idx[:-1], idx[-1]), inv_x, zp_x).astype(
            "int16"), [flat(idx[:-1]) * k + idx[-1]])
    acc_dt = _acc_dtype(k, 127 if reduce_range else 255, qw.max_abs_w())
    if lin.scale is not None:
        sw_buf = ins[lin.scale]
        sw = lambda n: sw_buf[n]
    else:
        sw_imm = te_lib.f32_const(qw.scales[0])
        sw = lambda n: sw_imm
    if lin.zp is not None:
        zp_buf = ins[lin.zp]
        zw = lambda n: zp_buf[n].astype(acc_dt)
    else:
        zw_imm = te.const(int(qw.zps[0]), acc_dt)
        zw = lambda n: zw_imm
    with _emit_loops(rows) as r, T.serial(0, n_out) as n:
        base = _tir_bind(flat(r) * k)
        acc = T.alloc_buffer((1,), acc_dt)
        T.buffer_store(acc, te.const(0, acc_dt), [0])
        wz = (lambda v: v) if (qw.uniform_zp and qw.zps[0] == 0) else (lambda v: v - zw(n))
        with T.serial(0, k) as kk:
            T.buffer_store(acc, acc[0] + xq[base + kk].astype(acc_dt) * wz(
                w[n, kk].astype(acc_dt)), [0])
        accf = acc[0].astype("int32").astype("float32")
        mult = te_lib.fence(s_x * sw(n))
        y = te_lib.fma(accf, mult, bias[n]) if bias is not None else te_lib.fence(accf * mult)
        store(r, n, y)


@dataclass
class _State:
    """A [B, H] recurrent state held in a buffer (an output: h_n/c_n slice, or h'/c')."""

    buf: Any
    lead: tuple[Any, ...] = ()

    def load(self, b: Any, j: Any) -> Any:
        return self.buf[(*self.lead, b, j)]

    def store(self, b: Any, j: Any, v: Any) -> None:
        from tvm.script.ir_builder import tirx as T

        T.buffer_store(self.buf, v, [*self.lead, b, j])


def _emit_gates(mode: str, nonlinearity: str, hs: int, batch: int, hh: Any, ih: Any,
                ih_base: Any, h: _State, c: _State | None, out: Any, table: Any) -> None:
    """One step's gate math for every (b, j), as _cell_step: h, c updated in place;
    `out(b, j, h')` stores the step output. `hh` is [B * G], `ih` read at ih_base + b*G + g.

    Sigmoid rows are the H gates of one batch element: columns j < 32 * (H // 32) take the
    SLEEF (vector body) path, the rest glibc's expf, so the j loop is split in two."""
    from tvm.script.ir_builder import tirx as T

    from qcompiler.lowering import te_lib

    g_all = _GATES[mode] * hs
    fence, bind = te_lib.fence, _tir_bind
    body = (hs // SIGMOID_VEC_BODY) * SIGMOID_VEC_BODY
    for lo, hi, vb in ((0, body, True), (body, hs, False)):
        if lo == hi:
            continue
        with T.serial(0, batch) as b, T.serial(lo, hi) as j:
            def g(gate: int) -> Any:
                return hh[b * g_all + gate * hs + j] + ih[ih_base + b * g_all + gate * hs + j]

            def sig(v: Any, vb: bool = vb) -> Any:
                return bind(_sigmoid_te(bind(v), vb, table, bind))

            if mode == "lstm":
                assert c is not None
                i_g, f_g = sig(g(0)), sig(g(1))
                g_g = bind(_tanh_te(g(2)))
                o_g = sig(g(3))
                c_new = bind(fence(f_g * c.load(b, j)) + fence(i_g * g_g))
                h_new = bind(fence(o_g * _tanh_te(c_new)))
                c.store(b, j, c_new)
            elif mode == "gru":
                r_g, z_g = sig(g(0)), sig(g(1))
                n_in = ih[ih_base + b * g_all + 2 * hs + j] + fence(
                    hh[b * g_all + 2 * hs + j] * r_g)
                n_g = bind(_tanh_te(n_in))
                h_new = bind(fence(fence(h.load(b, j) - n_g) * z_g) + n_g)
            else:
                pre = bind(g(0))
                h_new = bind(_relu_te(pre) if nonlinearity == "relu" else _tanh_te(pre))
            h.store(b, j, h_new)
            if out is not None:
                out(b, j, h_new)


def _emit_direction(mode: str, nonlinearity: str, ins: Sequence[Any], lin_ih: _TirLinear,
                    lin_hh: _TirLinear, x_load: Any, t_len: int, batch: int, in_size: int,
                    hs: int, reverse: bool, h: _State, c: _State | None, out: Any,
                    scratch: dict[str, Any], table: Any, reduce_range: bool) -> None:
    """One layer and direction: the input linear over all T*B rows into scratch["ih"], then the
    time loop (forward or reverse): hidden linear into scratch["hh"], gates, outputs."""
    from tvm.script.ir_builder import tirx as T

    g_all = _GATES[mode] * hs
    ih, hh = scratch["ih"], scratch["hh"]

    def store_ih(r: Sequence[Any], n: Any, v: Any) -> None:
        T.buffer_store(ih, v, [(r[0] * batch + r[1]) * g_all + n])

    _emit_linear(lin_ih, ins, lambda r, kk: x_load(r[0], r[1], kk), (t_len, batch), in_size,
                 g_all, store_ih, scratch.get("xq"), reduce_range)
    with T.serial(0, t_len) as step:
        t = (t_len - 1 - step) if reverse else step

        def store_hh(r: Sequence[Any], n: Any, v: Any) -> None:
            T.buffer_store(hh, v, [r[0] * g_all + n])

        _emit_linear(lin_hh, ins, lambda r, kk: h.load(r[0], kk), (batch,), hs, g_all,
                     store_hh, scratch.get("xq"), reduce_range)
        out_t = None if out is None else (lambda b, j, v: out(t, b, j, v))
        _emit_gates(mode, nonlinearity, hs, batch, hh, ih, t * (batch * g_all), h, c, out_t,
                    table)


def _emit_scratch(t_len: int, batch: int, hs: int, g_all: int, max_in: int, int8: bool,
                  ) -> dict[str, Any]:
    from tvm.script.ir_builder import tirx as T

    scratch = {"ih": T.alloc_buffer((t_len * batch * g_all,), "float32"),
               "hh": T.alloc_buffer((batch * g_all,), "float32")}
    if int8:
        scratch["xq"] = T.alloc_buffer((max(t_len * batch * max_in, batch * hs),), "int16")
    return scratch


def _emit_init_state(dst: _State, batch: int, hs: int, src: Any) -> None:
    """dst = src(b, j), or 0.0 when src is None."""
    from tvm.script.ir_builder import tirx as T

    from qcompiler.lowering.tvm_compat import te

    with T.serial(0, batch) as b, T.serial(0, hs) as j:
        dst.store(b, j, te.const(0.0, "float32") if src is None else src(b, j))


def _lower_rnn(op: _RNNBase, sig: Sig, tensors: Sequence[Any]) -> tuple[Any, ...]:
    """qnn.lstm / qnn.gru as one te.extern (see the section comment above)."""
    from tvm.script.ir_builder import tirx as T

    from qcompiler.lowering.tvm_compat import te

    attrs: RNNAttrs = sig.attrs
    has_state = op._layout(attrs, len(tensors))
    mode, n_state = op.mode, op._n_state
    x_shape = sig.in_types[0].shape
    t_len, batch = (x_shape[1], x_shape[0]) if attrs.batch_first else x_shape[:2]
    in0, hs, n_layers = x_shape[2], attrs.hidden_size, attrs.num_layers
    dirs = 2 if attrs.bidirectional else 1
    g_all = _GATES[mode] * hs
    inputs = _Inputs(tensors)
    k = 1 + (n_state if has_state else 0)
    lins = []
    for layer in range(n_layers):
        for d in range(dirs):
            tag = f"l{layer}{'_reverse' if d else ''}"
            lins.append((inputs.linear(sig.in_types[k], k, k + 2, f"{tag}_ih"),
                         inputs.linear(sig.in_types[k + 1], k + 1, k + 3, f"{tag}_hh")))
            k += 4
    int8 = lins[0][0].kind == "i8"
    width = dirs * hs

    def emit(ins: Sequence[Any], outs: Sequence[Any]) -> None:
        table = _emit_glibc_table()
        scratch = _emit_scratch(t_len, batch, hs, g_all, max(in0, width), int8)
        bufs = [T.alloc_buffer((t_len * batch * width,), "float32")
                for _ in range(min(2, n_layers - 1))]
        x, y = ins[0], outs[0]
        for layer in range(n_layers):
            if layer == 0:
                in_size = in0
                if attrs.batch_first:
                    def x_load(t: Any, b: Any, kk: Any) -> Any:
                        return x[b, t, kk]
                else:
                    def x_load(t: Any, b: Any, kk: Any) -> Any:
                        return x[t, b, kk]
            else:
                in_size = width
                prev = bufs[(layer - 1) % 2]

                def x_load(t: Any, b: Any, kk: Any, prev: Any = prev) -> Any:
                    return prev[(t * batch + b) * width + kk]
            for d in range(dirs):
                idx = layer * dirs + d
                h = _State(outs[1], (idx,))
                c = _State(outs[2], (idx,)) if mode == "lstm" else None
                for k_s, st in enumerate((h, c)[:n_state]):
                    assert st is not None
                    src = ins[1 + k_s] if has_state else None
                    _emit_init_state(st, batch, hs, None if src is None else (
                        lambda b, j, src=src, idx=idx: src[idx, b, j]))
                col = d * hs
                if layer == n_layers - 1:
                    def out(t: Any, b: Any, j: Any, v: Any, col: int = col) -> None:
                        where = [b, t] if attrs.batch_first else [t, b]
                        T.buffer_store(y, v, [*where, col + j])
                else:
                    cur = bufs[layer % 2]

                    def out(t: Any, b: Any, j: Any, v: Any, col: int = col,
                            cur: Any = cur) -> None:
                        T.buffer_store(cur, v, [(t * batch + b) * width + col + j])
                lin_ih, lin_hh = lins[idx]
                _emit_direction(mode, "tanh", ins, lin_ih, lin_hh, x_load, t_len, batch,
                                in_size, hs, d == 1, h, c, out, scratch, table,
                                attrs.reduce_range)

    out_types = sig.out_types
    res = te.extern([o.shape for o in out_types], inputs.tensors,
                    lambda ins, outs: _ir_body(lambda: emit(ins, outs)),
                    name=op.name.replace(".", "_"), dtype=["float32"] * len(out_types))
    return tuple(res)


def _lower_cell(op: _CellBase, sig: Sig, tensors: Sequence[Any]) -> Any:
    """qnn.lstm_cell / gru_cell / rnn_cell as one te.extern: a one-step recurrence."""
    from qcompiler.lowering.tvm_compat import te

    has_state = op._has_state(len(tensors))
    mode, n_state = op.mode, op._n_state
    batch, in_size = sig.in_types[0].shape
    hs = sig.in_types[-3].shape[1]
    g_all = _GATES[mode] * hs
    n = len(tensors)
    inputs = _Inputs(tensors)
    lin_ih = inputs.linear(sig.in_types[n - 4], n - 4, n - 2, "ih")
    lin_hh = inputs.linear(sig.in_types[n - 3], n - 3, n - 1, "hh")

    def emit(ins: Sequence[Any], outs: Sequence[Any]) -> None:
        table = _emit_glibc_table()
        scratch = _emit_scratch(1, batch, hs, g_all, in_size, lin_ih.kind == "i8")
        h = _State(outs[0])
        c = _State(outs[1]) if mode == "lstm" else None
        for k_s, st in enumerate((h, c)[:n_state]):
            assert st is not None
            src = ins[1 + k_s] if has_state else None
            _emit_init_state(st, batch, hs, None if src is None else (
                lambda b, j, src=src: src[b, j]))
        x = ins[0]
        _emit_direction(mode, sig.attrs.nonlinearity, ins, lin_ih, lin_hh,
                        lambda t, b, kk: x[b, kk], 1, batch, in_size, hs, False, h, c, None,
                        scratch, table, True)

    out_types = sig.out_types
    res = te.extern([o.shape for o in out_types], inputs.tensors,
                    lambda ins, outs: _ir_body(lambda: emit(ins, outs)),
                    name=op.name.replace(".", "_"), dtype=["float32"] * len(out_types))
    return tuple(res) if len(out_types) > 1 else res
