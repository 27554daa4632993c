"""Quantized linear layers and matmul: qnn.linear[_relu|_leaky_relu|_tanh], qnn.matmul.

Linear inputs: x (quantized, per tensor, any leading dims [..., K]), w (qint8 [O, K], per tensor or
per channel on axis 0; normally a constant), optional bias (float32 [O], real units). Output
[..., O], per-tensor qparams from the attrs. Measured bit-exact against PyTorch 2.13 on an
AVX-512 VNNI CPU (derivation: /work/notes/conv_linear_numerics.md):

    acc[..., o] = wrap32(sum_k (x[..., k] - zx) * (w[o, k] - zw[o]))

exact, then wrapped modulo 2**32 (fbgemm and oneDNN accumulate in int32 and wrap). The reference
computes it as a float64 matmul, exact in any order while |partial sums| < 2**53 (K < 1.3e11).

- **qnn.linear, qnn.linear_relu** are PyTorch's default x86 engine, which always runs fbgemm for
  linear: `requant.fbgemm_requantize` (atws = f32(sx)*f32(sw), bias folded into accumulator
  units with an fma (per-tensor weight) or a division (per-channel), t = f32(v * atws/so),
  r = rint(t), or INT32_MIN when |t| >= 2**31, y = clip(r + zo, zo if relu else 0, 255)).
  Activations quint8 only, rank >= 2, any weight zero points (fbgemm has weight zero points).
- **qnn.linear_leaky_relu, qnn.linear_tanh** exist in PyTorch only on the onednn engine
  (torch.ops.quantized.linear_leaky_relu / linear_tanh; x86, fbgemm and qnnpack raise "Didn't
  find engine"), so they are defined by oneDNN's epilogue with an eltwise post-op
  (`reference.onednn_eltwise.onednn_linear_requantize`): v = f32(f32(f32(acc) * src_s) * wei_s)
  + bias, then leaky relu (v if v > 0 else f32(v * f32(slope))) or oneDNN's own float32 tanh,
  then y = clip(rint(f32(v * (1/dst_s)) + f32(zo)), qmin, qmax), with src_s = 1/f32(1/sx),
  dst_s = 1/f32(1/so), wei_s = 1/f32(1/f32(sw)). oneDNN has no weight zero points: weights must
  be symmetric (all zero points 0). Activations quint8 or qint8 (the output dtype follows),
  rank >= 1.

qnn.matmul is QFunctional.matmul / torch.ops.quantized.matmul of two per-tensor quantized tensors
of the same dtype. On x86 PyTorch builds (no RUY) it is literally

    quantize_per_tensor(torch.matmul(a.dequantize(), b.dequantize()), so, zo, a.dtype)

with torch.matmul's shape rules (1-D operands, batch broadcasting). The float32 matmul runs in a
BLAS whose summation order we cannot reproduce; the reference rounds the float64 product once
to float32 instead. Documented bound: 1 LSB (measured: 1 of 82k outputs off by one).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qcompiler.errors import TypeInferenceError
from qcompiler.ir.registry import OpDef, OpSample, Sig, register_op
from qcompiler.ir.types import DType, QParams, TensorType, f32, i8, u8
from qcompiler.reference import quant_math as qm
from qcompiler.reference import requant as rq
from qcompiler.reference.onednn_eltwise import onednn_linear_requantize
from qcompiler.testing import samples as S
from qcompiler.testing.torch_bridge import quantized_engine

F32 = np.float32


@dataclass(frozen=True)
class LinearAttrs:
    out_qparams: QParams
    """Output qparams, per tensor (PyTorch's Y_scale_i, Y_zero_point_i)."""
    out_dtype: DType = u8
    """The activation's dtype: u8 for qnn.linear[_relu]; u8 or i8 for the onednn variants."""


@dataclass(frozen=True)
class LinearLeakyReLUAttrs:
    out_qparams: QParams
    """Output qparams, per tensor."""
    negative_slope: float = 0.01
    """Slope for negative values (rounded to float32, as oneDNN's alpha is)."""
    out_dtype: DType = u8
    """The activation's dtype (u8 or i8)."""

    def __post_init__(self) -> None:
        if isinstance(self.negative_slope, (int, np.integer, np.floating)) and not isinstance(
                self.negative_slope, bool):
            object.__setattr__(self, "negative_slope", float(self.negative_slope))


@dataclass(frozen=True)
class MatmulAttrs:
    out_qparams: QParams
    """Output qparams, per tensor (QFunctional.scale / zero_point)."""
    out_dtype: DType = u8
    """Must equal the operands' dtype (u8 or i8)."""


# --- shared checks -------------------------------------------------------------------------------


def _err(op: str, msg: str) -> TypeInferenceError:
    return TypeInferenceError(f"{op}: {msg}")


def _check_activation(op: str, t: TensorType, what: str, dtypes: Sequence[DType],
                      why: str) -> QParams:
    """A per-tensor quantized activation with a dtype in `dtypes` (`why` explains the set)."""
    names = " or ".join(f"{d.torch_qname} ({d})" for d in dtypes)
    if t.qparams is None:
        hint = " (quantize it first)" if t.dtype.is_float else ""
        raise _err(op, f"{what} must be a quantized {names} tensor, got {t}{hint}")
    if t.dtype not in dtypes:
        raise _err(op, f"{what} is {t.dtype.torch_qname} ({t.dtype}); supported: {names}{why}")
    qp = t.qparams
    if qp.axis is not None:
        raise _err(op, f"{what} must be quantized per tensor, got per-channel qparams"
                       f" (axis={qp.axis}); only weights may be per-channel")
    if qp.scheme == "float_qparams":
        raise _err(op, f"{what} has float_qparams; supported schemes: affine, symmetric")
    if not t.dtype.qmin <= qp.zp_value <= t.dtype.qmax:
        raise _err(op, f"{what} zero point {qp.zp_value} is outside the {t.dtype} range"
                       f" {t.dtype.qmin}..{t.dtype.qmax}")
    return qp


def _check_out(op: str, out_qparams: Any, out_dtype: Any, expected: DType, why: str) -> None:
    if out_dtype is not expected:
        raise _err(op, f"out_dtype {out_dtype} is not supported here; the output dtype is"
                       f" {expected} ({expected.torch_qname}){why}")
    oq = out_qparams
    if not isinstance(oq, QParams) or oq.axis is not None or oq.scheme == "float_qparams":
        raise _err(op, f"out_qparams must be per-tensor affine qparams, got {oq}")
    if not expected.qmin <= oq.zp_value <= expected.qmax:
        raise _err(op, f"output zero point {oq.zp_value} is outside the {expected} range"
                       f" {expected.qmin}..{expected.qmax}")


# --- linear --------------------------------------------------------------------------------------


def linear_accumulate(x: np.ndarray, x_zp: int, w: np.ndarray, w_zps: np.ndarray) -> np.ndarray:
    """wrap32(sum_k (x[..., k] - zx) * (w[o, k] - zw[o])) as int32 [..., O].

    A float64 matmul: every product is an integer of magnitude <= 255 * 255 and every partial
    sum stays below 2**53, so the result is exact in any summation order.
    """
    xf = x.astype(np.float64) - float(x_zp)
    wf = w.astype(np.float64) - np.asarray(w_zps, dtype=np.float64).reshape(-1, 1)
    acc = xf.reshape(-1, x.shape[-1]) @ wf.T
    return rq.wrap_int32(acc.astype(np.int64).reshape(x.shape[:-1] + (w.shape[0],)))


class _QLinear(OpDef):
    """Quantized linear with an optional fused activation (the module doc has the formula)."""

    Attrs = LinearAttrs
    schedule_kind = "dense"
    num_inputs = (2, 3)
    post_op: ClassVar[str | None] = None
    """None, 'relu' (fbgemm), 'leaky_relu' or 'tanh' (onednn)."""

    @property
    def engine(self) -> str:
        """The PyTorch engine whose kernel defines the op: 'fbgemm' (via x86) or 'onednn'."""
        return "onednn" if self.post_op in ("leaky_relu", "tanh") else "fbgemm"

    # --- type rule ---------------------------------------------------------------------------

    def infer_type(self, attrs: Any, *in_types: TensorType) -> TensorType:
        op = self.name
        x, w = in_types[0], in_types[1]
        bias = in_types[2] if len(in_types) > 2 else None
        if self.engine == "fbgemm":
            self._check_x(x, (u8,), " (PyTorch's x86/fbgemm linear rejects qint8 activations;"
                                    " only its onednn engine takes them)", min_rank=2)
        else:
            self._check_x(x, (u8, i8), "", min_rank=1)
        wq = self._check_weight(w)
        o, k = w.shape
        if x.shape[-1] != k:
            raise _err(op, f"feature mismatch: input has {x.shape[-1]} features (last dim of"
                           f" shape {list(x.shape)}) but the weight [out_features, in_features]"
                           f" is {list(w.shape)}, expecting {k}")
        if self.engine == "onednn" and any(int(z) for z in wq.zero_point):
            raise _err(op, f"weights must be symmetric (all zero points 0), got zero points"
                           f" {[int(z) for z in wq.zero_point]}: PyTorch runs {op} only on the"
                           " onednn engine, which has no weight zero points")
        if bias is not None:
            if bias.qparams is not None or bias.dtype is not f32:
                raise _err(op, f"bias must be an unquantized float32 tensor [{o}] (real units;"
                               f" PyTorch never quantizes the linear bias), got {bias}")
            if bias.shape != (o,):
                raise _err(op, f"bias must have shape [{o}] (one per output feature), got"
                               f" {list(bias.shape)}")
        if self.engine == "fbgemm":
            why = " (PyTorch's quantized linear on x86/fbgemm outputs quint8)"
        else:
            why = " (PyTorch's onednn linear outputs the activation's dtype)"
        _check_out(op, attrs.out_qparams, attrs.out_dtype, x.dtype, why)
        if self.post_op == "leaky_relu":
            s = attrs.negative_slope
            if not isinstance(s, float) or not math.isfinite(s):
                raise _err(op, f"negative_slope must be a finite float, got {s!r}")
        return TensorType(x.shape[:-1] + (o,), x.dtype, attrs.out_qparams)

    def _check_x(self, x: TensorType, dtypes: Sequence[DType], why: str, min_rank: int) -> None:
        _check_activation(self.name, x, "input", dtypes, why)
        if x.rank < min_rank:
            extra = " (PyTorch's fbgemm linear needs a batch dim; reshape to [1, K])" \
                if min_rank == 2 else ""
            raise _err(self.name, f"input must have rank >= {min_rank} [..., in_features], got"
                                  f" shape {list(x.shape)}{extra}")

    def _check_weight(self, w: TensorType) -> QParams:
        op = self.name
        if w.qparams is None or w.dtype is not i8:
            hint = " (quantize float weights to qint8 first)" if w.dtype.is_float else ""
            raise _err(op, f"weight must be a quantized i8 (qint8) tensor, got {w}{hint}")
        if w.rank != 2:
            raise _err(op, f"weight must be 2-D [out_features, in_features], got shape"
                           f" {list(w.shape)}")
        if w.shape[0] < 1 or w.shape[1] < 1:
            raise _err(op, f"weight shape {list(w.shape)} has an empty dimension")
        qp = w.qparams
        if qp.axis not in (None, 0):
            raise _err(op, f"weight qparams must be per-tensor or per-channel on axis 0 (output"
                           f" features), got axis={qp.axis}")
        if qp.scheme not in ("affine", "symmetric"):
            raise _err(op, f"weight scheme {qp.scheme!r} is not supported; supported: affine,"
                           " symmetric")
        zps = [int(z) for z in qp.zero_point]
        if any(not -128 <= z <= 127 for z in zps):
            raise _err(op, f"weight zero points must be in -128..127, got {zps}")
        if qp.scheme == "symmetric" and any(zps):
            raise _err(op, f"symmetric weight qparams need zero points 0, got {zps}")
        return qp

    # --- semantics ---------------------------------------------------------------------------

    def reference(self, sig: Sig, *arrays: np.ndarray) -> np.ndarray:
        x, w = arrays[0], arrays[1]
        bias = arrays[2] if len(arrays) > 2 else None
        xq, wq, oq = sig.in_types[0].qparams, sig.in_types[1].qparams, sig.out.qparams
        assert xq is not None and wq is not None and oq is not None
        o = w.shape[0]
        acc = linear_accumulate(x, xq.zp_value, w, np.broadcast_to(wq.zero_points_array(), (o,)))
        w_scales = np.broadcast_to(wq.scales_array(), (o,))
        if self.engine == "fbgemm":
            return rq.fbgemm_requantize(acc, xq.scale_value, w_scales, oq.scale_value,
                                        oq.zp_value, bias=bias, per_tensor_weight=wq.axis is None,
                                        relu=self.post_op == "relu", channel_axis=-1)
        assert self.post_op is not None
        slope = sig.attrs.negative_slope if self.post_op == "leaky_relu" else 0.0
        return onednn_linear_requantize(acc, xq.scale_value, w_scales, oq.scale_value,
                                        oq.zp_value, bias=bias, post_op=self.post_op,
                                        negative_slope=slope, channel_axis=-1,
                                        out_dtype=sig.out.dtype)

    # --- lowering ----------------------------------------------------------------------------

    def lower(self, sig: Sig, *tensors: Any) -> Any:
        """TE twin of `reference`: `te_lib.dense_accumulate` (int32, or int64 wrapped when it
        could overflow), then fbgemm's epilogue (`te_lib.fbgemm_requantize`) or oneDNN's with
        the eltwise post-op (`te_lib.onednn_requantize`, re-inverted linear weight scales)."""
        from qcompiler.lowering import te_lib

        x, w = tensors[0], tensors[1]
        bias = tensors[2] if len(tensors) > 2 else None
        xq, wq, oq = sig.in_types[0].qparams, sig.in_types[1].qparams, sig.out.qparams
        assert xq is not None and wq is not None and oq is not None
        o = sig.in_types[1].shape[0]
        tag = self.name.replace(".", "_")
        acc = te_lib.dense_accumulate(x, xq.zp_value, w,
                                      np.broadcast_to(wq.zero_points_array(), (o,)), name=tag)
        w_scales = np.broadcast_to(wq.scales_array(), (o,))
        if self.engine == "fbgemm":
            return te_lib.fbgemm_requantize(acc, xq.scale_value, w_scales, oq.scale_value,
                                            oq.zp_value, bias=bias,
                                            per_tensor_weight=wq.axis is None,
                                            relu=self.post_op == "relu", channel_axis=-1,
                                            name=tag)
        slope = sig.attrs.negative_slope if self.post_op == "leaky_relu" else 0.0
        return te_lib.onednn_requantize(acc, xq.scale_value, w_scales, oq.scale_value,
                                        oq.zp_value, bias=bias, channel_axis=-1,
                                        reinvert_w_scales=True, post_op=self.post_op,
                                        negative_slope=slope, out_dtype=sig.out.dtype, name=tag)

    # --- samples -----------------------------------------------------------------------------

    def _sample(self, rng: np.random.Generator, label: str, *, lead: Sequence[int], k: int,
                o: int, weight: str = "pt-aff", bias: bool = True, bias_mult: float = 1.0,
                x_dtype: DType = u8, x_fill: int | None = None, sx: float | None = None,
                zx: int | None = None, sw: float | None = None, zw: int | None = None,
                real_std: float | None = None, so: float | None = None, so_mult: float = 1.0,
                zo: int | None = None, slope: float = 0.01) -> OpSample:
        """One sample; unspecified qparams are random and the output scale fits the data.

        `weight`: pt-sym, pt-aff, pc-sym, pc-aff (per tensor / per channel; zero points 0 or
        differing). The onednn ops get symmetric weights whatever `weight` says. `real_std`
        rescales the weight scales so the real pre-activation has that spread (tanh).
        """
        if self.engine == "onednn":
            weight = weight[:3] + "sym"
        sym = weight.endswith("sym")
        scheme = "symmetric" if sym else "affine"
        if weight.startswith("pt"):
            scales = [S.rand_scale(rng, 1e-3, 0.1) if sw is None else sw]
            zps = [0 if sym else (S.rand_zp(rng, i8) if zw is None else zw)]
        else:
            scales = [S.rand_scale(rng, 1e-3, 0.1) if sw is None else sw * (1 + 0.37 * j)
                      for j in range(o)]
            zps = [0] * o if sym else [int(v) for v in rng.integers(-20, 21, o)]
            if not sym and zw is not None:
                zps[0] = zw
        xa = S.rand_int(rng, (*lead, k), x_dtype)
        if x_fill is not None:
            xa.reshape(-1)[: xa.size // 2] = x_fill
        wa = S.rand_int(rng, (o, k), i8)
        zx = S.rand_zp(rng, x_dtype) if zx is None else zx
        sx = S.rand_scale(rng, 1e-3, 0.5) if sx is None else sx
        zpo = np.broadcast_to(np.asarray(zps, dtype=np.int64), (o,))
        acc = linear_accumulate(xa, zx, wa, zpo).astype(np.float64)
        if real_std is not None:
            cur = float((acc * sx).std()) * float(np.mean(scales)) + 1e-30
            scales = [s * real_std / cur for s in scales]
        sws = np.broadcast_to(np.asarray(scales), (o,))
        real = acc * sx * sws
        std = float(real.std()) + 1e-30
        if so is None:
            so = float(np.clip(std / 40 * so_mult, 1e-6, 1e2))
        out_dtype = x_dtype
        if zo is None:
            # activations keep the positive half: put the zero point in the lower half
            hi = out_dtype.qmax if self.post_op is None else out_dtype.qmin + 128
            zo = int(rng.integers(out_dtype.qmin, hi + 1))
        if weight.startswith("pt"):
            wq = QParams.per_tensor(scales[0], zps[0], scheme)
        else:
            wq = QParams.per_axis(scales, zps, 0, scheme)
        oq = QParams.per_tensor(so, zo)
        attrs: Any
        if self.post_op == "leaky_relu":
            attrs = LinearLeakyReLUAttrs(oq, slope, out_dtype)
        else:
            attrs = LinearAttrs(oq, out_dtype)
        types = [TensorType(xa.shape, x_dtype, QParams.per_tensor(sx, zx)),
                 TensorType(wa.shape, i8, wq)]
        arrays = [xa, wa]
        if bias:
            types.append(TensorType((o,), f32))
            arrays.append((rng.standard_normal(o) * std * bias_mult).astype(F32))
        return OpSample(attrs, tuple(types), tuple(arrays), label)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        mk = self._sample
        if self.post_op == "tanh":
            yield from self._tanh_samples(rng)
            return
        yield mk(rng, "pt-aff-2d", lead=(5,), k=17, o=7)
        yield mk(rng, "pc-aff-3d-BTK", lead=(2, 3), k=9, o=6, weight="pc-aff")
        yield mk(rng, "pc-sym-nobias", lead=(4,), k=12, o=5, weight="pc-sym", bias=False)
        yield mk(rng, "edge-small-scales-zx255-zo0", lead=(3,), k=8, o=4, weight="pc-aff",
                 sx=1e-6, sw=1e-2, zx=255, zo=0, x_fill=255)
        yield mk(rng, "edge-large-scales-zx0-zo255", lead=(3,), k=6, o=3, weight="pt-sym",
                 sx=100.0, sw=1e-4, so=100.0, zx=0, zo=255, x_fill=0)
        yield mk(rng, "huge-bias-pt", lead=(4,), k=5, o=4, weight="pt-aff", zw=-128,
                 bias_mult=1e7)
        yield mk(rng, "huge-bias-pc", lead=(4,), k=5, o=4, weight="pc-aff", bias_mult=1e7)
        yield mk(rng, "odd-k1-o1-4d", lead=(1, 2, 3), k=1, o=1, weight="pt-aff", zw=127)
        yield mk(rng, "pc-differing-zps-zw-128", lead=(6,), k=11, o=5, weight="pc-aff", zw=-128)
        if self.engine == "onednn":
            yield mk(rng, "qint8-act-pc", lead=(2, 4), k=10, o=6, weight="pc-sym", x_dtype=i8)
            yield mk(rng, "qint8-act-edge-zp", lead=(5,), k=7, o=3, x_dtype=i8, zx=-128,
                     zo=127, sx=0.02)
            yield mk(rng, "rank1-input", lead=(), k=9, o=4, weight="pc-sym")
            if self.post_op == "leaky_relu":
                yield mk(rng, "slope-0", lead=(6,), k=8, o=5, slope=0.0)
                yield mk(rng, "slope-1.5-qint8", lead=(6,), k=8, o=5, slope=1.5, x_dtype=i8)
                yield mk(rng, "slope-negative", lead=(6,), k=8, o=5, slope=-0.25)
        else:
            yield mk(rng, "zo-mid-w-range-ends", lead=(7,), k=13, o=6, weight="pt-aff", zw=3,
                     zo=128)
        yield from self._overflow_samples(rng)

    def _tanh_samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        mk = self._sample
        yield mk(rng, "u8-fixed-out-2/256", lead=(6,), k=16, o=8, real_std=1.5, so=2 / 256,
                 zo=128)
        yield mk(rng, "i8-fixed-out-2/256", lead=(2, 5), k=12, o=6, weight="pc-sym",
                 x_dtype=i8, real_std=2.0, so=2 / 256, zo=0)
        yield mk(rng, "u8-small-preact", lead=(5,), k=9, o=4, real_std=0.01, so=1e-4, zo=128)
        yield mk(rng, "u8-saturating", lead=(5,), k=9, o=4, weight="pc-sym", real_std=8.0,
                 so=1 / 128, zo=127)
        yield mk(rng, "u8-random-out", lead=(4,), k=10, o=5, real_std=1.0, so_mult=3.0, zo=60)
        yield mk(rng, "edge-zx255-zo0", lead=(3,), k=8, o=4, zx=255, x_fill=255, real_std=1.0,
                 so=1 / 255, zo=0)
        yield mk(rng, "huge-bias", lead=(4,), k=5, o=4, real_std=1.0, bias_mult=1e7,
                 so=2 / 256, zo=128)
        yield mk(rng, "rank1-nobias", lead=(), k=7, o=5, bias=False, real_std=1.5, so=2 / 256,
                 zo=128)
        yield mk(rng, "qint8-edge-zps", lead=(6,), k=11, o=3, x_dtype=i8, zx=127, zo=-128,
                 real_std=1.5, so=1 / 128)

    def _overflow_samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        """int32 wrap-around: 70000 * 255 * 127 > 2**31. Last, so graph tests skip them."""
        s = self._sample(rng, "int32-wrap-K70000", lead=(2,), k=70000, o=3, weight="pt-sym",
                         bias=False, sx=0.01, sw=0.001, zx=0, so=1e3, zo=128)
        x, w = s.arrays[0], s.arrays[1]
        x[...] = 255
        x[1, :1000] = 0
        w[...] = 127
        w[1] = -128
        w[2, ::2] = -5
        yield s

    # --- PyTorch -----------------------------------------------------------------------------

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        """torch.ops.quantized.linear* on weights prepacked by linear_prepack.

        qnn.linear[_relu] run on the default x86 engine (fbgemm inside); the leaky relu and
        tanh variants on the onednn engine, their only implementation. Engine restored after.
        """
        import torch

        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        x, w = sample.arrays[0], sample.arrays[1]
        bias = sample.arrays[2] if len(sample.arrays) > 2 else None
        qx, qw = to_torch(x, sample.in_types[0]), to_torch(w, sample.in_types[1])
        tb = None if bias is None else torch.from_numpy(bias.copy())
        oq = sample.attrs.out_qparams
        ops = torch.ops.quantized
        with quantized_engine("x86" if self.engine == "fbgemm" else "onednn"):
            packed = ops.linear_prepack(qw, tb)
            if self.post_op is None:
                y = ops.linear(qx, packed, oq.scale_value, oq.zp_value)
            elif self.post_op == "relu":
                y = ops.linear_relu(qx, packed, oq.scale_value, oq.zp_value)
            elif self.post_op == "leaky_relu":
                y = ops.linear_leaky_relu(qx, packed, oq.scale_value, oq.zp_value,
                                          sample.attrs.negative_slope)
            else:
                y = ops.linear_tanh(qx, packed, oq.scale_value, oq.zp_value)
        return to_numpy(y)


@register_op
class QLinear(_QLinear):
    """y = requant_fbgemm(wrap32((x - zx) @ (w - zw).T), bias) (the module doc has the formula)."""

    name = "qnn.linear"
    torch_counterparts = ("torch.ops.quantized.linear", "torch.ao.nn.quantized.Linear")


@register_op
class QLinearReLU(_QLinear):
    """qnn.linear with relu fused in fbgemm's epilogue: y = clip(r + zo, zo, 255)."""

    name = "qnn.linear_relu"
    post_op = "relu"
    torch_counterparts = ("torch.ops.quantized.linear_relu",
                          "torch.ao.nn.intrinsic.quantized.LinearReLU")


@register_op
class QLinearLeakyReLU(_QLinear):
    """leaky_relu(linear) in oneDNN's epilogue: v if v > 0 else f32(v * f32(negative_slope))."""

    name = "qnn.linear_leaky_relu"
    Attrs = LinearLeakyReLUAttrs
    post_op = "leaky_relu"
    torch_counterparts = ("torch.ops.quantized.linear_leaky_relu",
                          "torch.ao.nn.intrinsic.quantized.LinearLeakyReLU")


@register_op
class QLinearTanh(_QLinear):
    """tanh(linear) in oneDNN's epilogue, with oneDNN's float32 tanh (onednn_eltwise.tanh_f32)."""

    name = "qnn.linear_tanh"
    post_op = "tanh"
    torch_counterparts = ("torch.ops.quantized.linear_tanh",
                          "torch.ao.nn.intrinsic.quantized.LinearTanh")


# --- matmul --------------------------------------------------------------------------------------


def matmul_shape(op: str, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """torch.matmul's (= numpy's) result shape, or a TypeInferenceError naming both shapes."""
    if not a or not b:
        raise _err(op, f"operands must have rank >= 1, got shapes {list(a)} and {list(b)}")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise _err(op, f"inner dimensions differ: {list(a)} @ {list(b)} (the last dim of the"
                       f" first operand, {a2[-1]}, must equal the"
                       f" {'only' if len(b) == 1 else 'second-to-last'} dim of the second,"
                       f" {b2[-2]})")
    ba, bb = a2[:-2], b2[:-2]
    rank = max(len(ba), len(bb))
    ba, bb = (1,) * (rank - len(ba)) + ba, (1,) * (rank - len(bb)) + bb
    batch = []
    for da, db in zip(ba, bb):
        if da != db and 1 not in (da, db):
            raise _err(op, f"batch dimensions of {list(a)} and {list(b)} do not broadcast")
        batch.append(db if da == 1 else da)
    return (tuple(batch) + (() if len(a) == 1 else (a2[-2],))
            + (() if len(b) == 1 else (b2[-1],)))


@register_op
class QMatmul(OpDef):
    """c = quantize(f32(dequantize(a) @ dequantize(b)), so, zo) (torch.matmul shape rules).

    dequantize: f32(q - zp) * f32(scale); the product is computed in float64 and rounded once
    to float32; quantize: torch.quantize_per_tensor (fbgemm's fma form). PyTorch's float32 BLAS
    sums in another order, so an output can differ by 1 LSB (module doc).
    """

    name = "qnn.matmul"
    Attrs = MatmulAttrs
    num_inputs = 2
    schedule_kind = "dense"
    max_lsb = 1
    fidelity_note = ("PyTorch computes dequantize -> float32 torch.matmul (BLAS sgemm, unknown"
                     " summation order) -> quantize; we round the float64 product once to"
                     " float32. Measured 1 of 82,120 outputs off by 1 LSB (400 random cases).")
    torch_counterparts = ("torch.ops.quantized.matmul", "torch.ao.nn.quantized.QFunctional.matmul")

    def infer_type(self, attrs: MatmulAttrs, a: TensorType, b: TensorType) -> TensorType:
        op = self.name
        _check_activation(op, a, "first operand", (u8, i8), "")
        _check_activation(op, b, "second operand", (u8, i8), "")
        if a.dtype is not b.dtype:
            raise _err(op, f"operands must have the same dtype (PyTorch: 'MatMul operands should"
                           f" have same data type'), got {a.dtype} and {b.dtype}")
        shape = matmul_shape(op, a.shape, b.shape)
        _check_out(op, attrs.out_qparams, attrs.out_dtype, a.dtype,
                   " (PyTorch's quantized matmul outputs the operands' dtype)")
        return TensorType(shape, a.dtype, attrs.out_qparams)

    def reference(self, sig: Sig, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        aq, bq, oq = sig.in_types[0].qparams, sig.in_types[1].qparams, sig.out.qparams
        assert aq is not None and bq is not None and oq is not None
        da = qm.dequantize_per_tensor(a, aq.scale_value, aq.zp_value).astype(np.float64)
        db = qm.dequantize_per_tensor(b, bq.scale_value, bq.zp_value).astype(np.float64)
        c = np.asarray(np.matmul(da, db)).astype(F32)
        return np.asarray(qm.quantize_per_tensor(c, oq.scale_value, oq.zp_value, sig.out.dtype))

    def lower(self, sig: Sig, a: Any, b: Any) -> Any:
        """TE twin of `reference`: dequantize both operands (float32 stages), sum the float64
        products over k in order (each product of two float32 values is exact in float64, so
        FMA contraction cannot change it), round the sum once to float32, quantize.

        NOTE: the reference's float64 `np.matmul` may sum in another order (BLAS); the two
        agree unless a float64 rounding difference crosses a float32 rounding boundary and
        then a quantization boundary (never seen; PyTorch itself is 1 LSB away, `max_lsb`).
        """
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.tvm_compat import te

        aq, bq, oq = sig.in_types[0].qparams, sig.in_types[1].qparams, sig.out.qparams
        assert aq is not None and bq is not None and oq is not None
        sa, sb, so = sig.in_types[0].shape, sig.in_types[1].shape, sig.out.shape
        da = te_lib.dequantize(a, aq, name="qnn_matmul_a")
        db = te_lib.dequantize(b, bq, name="qnn_matmul_b")
        k_n = sa[-1]
        a_vec, b_vec = len(sa) == 1, len(sb) == 1
        batch_rank = len(so) - (0 if a_vec else 1) - (0 if b_vec else 1)
        batch_shape = so[:batch_rank]
        kax = te.reduce_axis((0, k_n), name="k")

        def operand_index(shape: tuple[int, ...], batch: tuple[Any, ...], rows: tuple[Any, ...],
                          k_last: bool) -> tuple[Any, ...]:
            if len(shape) == 1:
                return (kax,)
            nb = len(shape) - 2
            bidx = te_lib.broadcast_index(batch[len(batch) - nb:] if nb else (), shape[:nb],
                                          batch_shape[len(batch_shape) - nb:] if nb else ())
            return (*bidx, *rows, kax) if k_last else (*bidx, kax, *rows)

        def body(*i: Any) -> Any:
            batch = tuple(i[:batch_rank])
            rest = i[batch_rank:]
            m = () if a_vec else (rest[0],)
            n = () if b_vec else (rest[-1],)
            ia = operand_index(sa, batch, m, k_last=True)
            ib = operand_index(sb, batch, n, k_last=False)
            return te.sum(da[ia].astype("float64") * db[ib].astype("float64"), axis=kax)

        acc = te.compute(so, body, name="qnn_matmul_acc")
        quant = te_lib.quantize_fn(oq, sig.out.dtype, len(so), "qnn_matmul")
        return te.compute(so, lambda *i: quant(acc[i].astype("float32"), i), name="qnn_matmul")

    def _sample(self, rng: np.random.Generator, label: str, sa: Sequence[int],
                sb: Sequence[int], dtype: DType = u8, *, scales: tuple[float, float] | None = None,
                edge_zp: bool = False, so_mult: float = 1.0, zo: int | None = None,
                same: bool = False) -> OpSample:
        s_a, s_b = (None, None) if scales is None else scales
        ta, a = S.qtensor(rng, sa, dtype, s_a, S.rand_zp(rng, dtype, edge_zp))
        if same:
            tb, b = ta, a.copy()
        else:
            tb, b = S.qtensor(rng, sb, dtype, s_b, S.rand_zp(rng, dtype))
        aq, bq = ta.qparams, tb.qparams
        assert aq is not None and bq is not None
        da = qm.dequantize_per_tensor(a, aq.scale_value, aq.zp_value).astype(np.float64)
        db = qm.dequantize_per_tensor(b, bq.scale_value, bq.zp_value).astype(np.float64)
        std = float(np.std(np.matmul(da, db))) + 1e-30
        so = float(np.clip(std / 40 * so_mult, 1e-6, 1e2))
        zo = S.rand_zp(rng, dtype, edge_zp) if zo is None else zo
        return OpSample(MatmulAttrs(QParams.per_tensor(so, zo), dtype), (ta, tb), (a, b), label)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        mk = self._sample
        yield mk(rng, "u8-batched", (2, 3, 16), (2, 16, 5))
        yield mk(rng, "i8-2d", (4, 7), (7, 3), i8)
        yield mk(rng, "u8-broadcast-batch", (3, 8), (2, 8, 4))
        yield mk(rng, "i8-1d-lhs", (6,), (2, 6, 3), i8)
        yield mk(rng, "u8-1d-rhs", (2, 5, 6), (6,), zo=128)
        yield mk(rng, "u8-square-self", (4, 4), (4, 4), same=True)
        yield mk(rng, "u8-small-scales-edge-zp", (3, 9), (9, 4), scales=(1e-6, 0.5),
                 edge_zp=True)
        yield mk(rng, "i8-large-scales-edge-zp", (3, 5), (5, 2), i8, scales=(100.0, 1e-3),
                 edge_zp=True, zo=0)
        yield mk(rng, "u8-k1", (5, 1), (1, 3))
        yield mk(rng, "i8-saturating-out", (2, 3, 12), (12, 4), i8, so_mult=0.05)
        yield mk(rng, "u8-4d-broadcast", (2, 1, 3, 6), (1, 3, 6, 2))

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        """torch.ops.quantized.matmul on the default engine (the op is engine independent)."""
        import torch

        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        a, b = sample.arrays
        oq = sample.attrs.out_qparams
        y = torch.ops.quantized.matmul(to_torch(a, sample.in_types[0]),
                                       to_torch(b, sample.in_types[1]), oq.scale_value,
                                       oq.zp_value)
        return to_numpy(y)
