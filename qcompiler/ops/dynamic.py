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
from qcompiler.testing import samples as S

F32 = np.float32
F64 = np.float64

# --- float32 arithmetic helpers (exact emulations) -------------------------------------------


def fma_f32(a: Any, b: Any, c: Any) -> np.ndarray:
    """Exact float32 fused multiply-add round(a*b + c), element-wise with broadcasting.

    a*b of two float32 values is exact in float64; the sum is formed in float64 with
    round-to-odd (TwoSum error term), which makes the final rounding to float32 correct.
    """
    a64 = np.asarray(a, dtype=F32).astype(F64)
    b64 = np.asarray(b, dtype=F32).astype(F64)
    c64 = np.asarray(c, dtype=F32).astype(F64)
    with np.errstate(invalid="ignore", over="ignore"):
        p = a64 * b64
        s = p + c64
        bb = s - p
        err = (p - (s - bb)) + (c64 - bb)
        even = (np.asarray(s).view(np.int64) & 1) == 0
        fix = (err != 0) & even & np.isfinite(s)
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
        return np.asarray(s.astype(F32))


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
