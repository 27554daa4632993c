"""Quantized convolutions: qnn.conv{1,2,3}d[_relu] and qnn.conv2d_add[_relu].

One implementation (`_QConv`) parametrized by the number of spatial dims and the fused epilogue
(relu, residual add); each op name is a small subclass.

Semantics (PyTorch 2.13, default `x86` engine on an AVX-512 VNNI CPU; measured bit-exact, see
/work/notes/conv_linear_numerics.md):

    acc[n, o, p] = wrap32(sum_{c, k} (x[n, g*Cg + c, p*stride - pad + k*dil] - zx)
                                  * (w[o, c, k] - zw[o]))

with g = o // (C_out / groups), Cg = C_in / groups, padding taps contributing real 0 (x = zx),
and the sum exact, then wrapped modulo 2**32 to int32 (both libraries wrap, never saturate).
The accumulator is turned into quint8 by one of two epilogues, chosen the way PyTorch's x86
engine chooses the kernel (`requant_path`):

- **oneDNN** when every weight zero point is 0 and groups <= 100 (and always for conv2d_add):
  `reference.requant.onednn_requantize`: v = f32(f32(f32(acc) * src_s) * w_s) + bias (real
  units); [+ fma(e - ze, sum_s)]; relu; y = clip(rint(f32(v * (1/dst_s)) + f32(zo)), 0, 255),
  with src_s = 1/f32(1/sx), dst_s = 1/f32(1/so).
- **fbgemm** otherwise (asymmetric weights, or groups > 100):
  `reference.requant.fbgemm_requantize`: atws = f32(sx)*f32(sw), bias folded into accumulator
  units (fma for per-tensor weights, division for per-channel), t = f32(v * atws/so),
  r = rint(t) or INT32_MIN when |t| >= 2**31, y = clip(r + zo, zo if relu else 0, 255).

relu clamps at real 0 (oneDNN: before output scaling; fbgemm: at the output zero point).

Where PyTorch itself is wrong (measured; our semantics stay the exact math above, samples avoid
these cases, and nothing emulates them):

- fbgemm's depthwise fast path (design.md's known trap): groups == C_in, C_out in {G, 2G},
  G % 8 == 0, cubic kernel 3/5/7 (2-D; 3x3x3 measured for 3-D), stride 1/2, pad (k-1)/2,
  dilation 1. It sums pairs of raw u8*i8 products with int16 saturation, so PyTorch is wrong for
  activations >= 128 (1-45 % of outputs on full-range data, by shape, 2-D and 3-D; conv1d
  never takes it). Samples that take any fbgemm depthwise conv use 7-bit activations
  (0..127), where PyTorch is exact.
- oneDNN 3-D depthwise convs with a channel multiplier >= 2 and input depth 1 (with depth
  padding) return wrong values for every group but the first.
- oneDNN convs where, along some spatial dim, every output position sees only padding (input
  narrower than the stride), with batch >= 2, return garbage (the exact result is bias-only).

Everything else matched PyTorch bit for bit in a random sweep of about 3600 configurations
(conv1d/2d/3d, relu, conv2d_add; groups, depthwise, stride, padding, dilation, per-tensor and
per-channel, symmetric and affine weights, scales 1e-6..1e2, huge biases), 0 mismatches;
the sweep is /work/notes/conv_ops_stress.py.

PyTorch has no qint8-activation conv on any CPU engine, and conv2d_add only on the onednn engine
(torch.ops.quantized.conv2d_add, nniq.ConvAdd2d): our conv2d_add is defined by that kernel, so
its weights must be symmetric (all zero points 0).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qcompiler.errors import TypeInferenceError
from qcompiler.ir.registry import OpDef, OpSample, Sig, register_op
from qcompiler.ir.types import DType, QParams, TensorType, f32, i8, u8
from qcompiler.reference import requant as rq
from qcompiler.testing import samples as S
from qcompiler.testing.torch_bridge import quantized_engine

F32 = np.float32

ONEDNN_MAX_GROUPS = 100
"""PyTorch's x86 engine sends convs with more groups to fbgemm (should_use_onednn_quant)."""


def int_tuple(v: Any) -> Any:
    """Normalize an int or a list of ints to a tuple (other values are left for infer_type)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return (int(v),)
    if isinstance(v, list):
        return tuple(v)
    return v


@dataclass(frozen=True)
class ConvAttrs:
    out_qparams: QParams
    """Output qparams: per-tensor (PyTorch's output_scale, output_zero_point)."""
    stride: tuple[int, ...] = (1,)
    """Per spatial dim, or one value for all of them."""
    padding: tuple[int, ...] = (0,)
    """Symmetric zero padding per spatial dim (both sides), or one value for all of them."""
    dilation: tuple[int, ...] = (1,)
    """Per spatial dim, or one value for all of them."""
    groups: int = 1
    padding_mode: str = "zeros"
    """Only 'zeros'; express reflect/replicate/circular padding as an explicit pad op."""
    out_dtype: DType = u8
    """Only u8 (quint8): PyTorch's quantized conv outputs quint8."""

    def __post_init__(self) -> None:
        for name in ("stride", "padding", "dilation"):
            object.__setattr__(self, name, int_tuple(getattr(self, name)))


# --- shared numerics (also what lower() must reproduce) ----------------------------------------


def expand_spatial(values: Sequence[int], ndim: int) -> tuple[int, ...]:
    """A stride/padding/dilation attr as one int per spatial dim (a single value broadcasts)."""
    vals = tuple(int(v) for v in values)
    return vals * ndim if len(vals) == 1 else vals


def conv_out_size(size: int, kernel: int, stride: int, pad: int, dil: int) -> int:
    """floor((size + 2*pad - dil*(kernel-1) - 1) / stride) + 1 (PyTorch's formula)."""
    return (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1


def conv_accumulate(x: np.ndarray, x_zp: int, w: np.ndarray, w_zps: np.ndarray,
                    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                    groups: int) -> np.ndarray:
    """The int32 (wrapped) accumulator sum((x - zx) * (w - zw[o])) of an N-d grouped conv.

    x: u8 [N, C, *S]; w: i8 [O, C/groups, *K]; w_zps: [O] int. Returns int32 [N, O, *S_out].

    im2col on (x - zx) (zero padding = real 0) and a float64 matmul per group: every product is
    an integer of magnitude <= 255*255 and every partial sum stays below 2**53 unless the
    reduction has over 10**11 terms, so the float64 result is exact in any summation order.
    It is then wrapped modulo 2**32, as the int32 accumulators of fbgemm and oneDNN wrap.
    """
    d = x.ndim - 2
    n = x.shape[0]
    o, cg = w.shape[:2]
    ks = w.shape[2:]
    og = o // groups
    xf = x.astype(np.float64) - float(x_zp)
    if any(padding):
        xf = np.pad(xf, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    span = tuple(dl * (k - 1) + 1 for k, dl in zip(ks, dilation))
    win = np.lib.stride_tricks.sliding_window_view(xf, span, axis=tuple(range(2, 2 + d)))
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)
              + tuple(slice(None, None, dl) for dl in dilation)]      # [N, C, *S_out, *K]
    out_sp = win.shape[2:2 + d]
    p = int(np.prod(out_sp, dtype=np.int64))
    kk = int(np.prod(ks, dtype=np.int64))
    win = win.reshape((n, groups, cg) + out_sp + ks)
    perm = (0, 1) + tuple(range(3, 3 + d)) + (2,) + tuple(range(3 + d, 3 + 2 * d))
    cols = win.transpose(perm).reshape(n, groups, p, cg * kk)          # im2col (a copy)
    wf = w.astype(np.float64) - np.asarray(w_zps, dtype=np.float64).reshape((o,) + (1,) * (d + 1))
    wm = wf.reshape(groups, og, cg * kk).transpose(0, 2, 1)             # [G, Cg*K, Og]
    if groups == 1:
        acc = (cols.reshape(n * p, cg * kk) @ wm[0]).reshape(n, 1, p, og)
    else:
        acc = np.matmul(cols, wm)                                         # [N, G, P, Og]
    acc = acc.transpose(0, 1, 3, 2).reshape((n, o) + out_sp)
    return rq.wrap_int32(acc.astype(np.int64))


def requant_path(w_qparams: QParams, groups: int, fused_add: bool = False) -> str:
    """'onednn' or 'fbgemm': the kernel PyTorch's x86 engine runs (AVX-512 VNNI CPU).

    oneDNN when all weight zero points are 0 and groups <= 100 (conv transpose aside, which
    we do not model); fbgemm otherwise. conv2d_add exists only in oneDNN.
    """
    if fused_add:
        return "onednn"
    if all(int(z) == 0 for z in w_qparams.zero_point) and groups <= ONEDNN_MAX_GROUPS:
        return "onednn"
    return "fbgemm"


def fbgemm_depthwise_fast_path(c_in: int, c_out: int, groups: int, kernel: Sequence[int],
                               stride: Sequence[int], padding: Sequence[int],
                               dilation: Sequence[int]) -> bool:
    """Whether fbgemm would run its int16-saturating depthwise kernel (2-D and 3-D convs).

    Documentation and test helper (3-D measured with 3x3x3 kernels only); samples use 7-bit
    activations for every fbgemm depthwise conv. The reference never emulates the saturation.
    """
    k = kernel[0]
    return (groups == c_in and c_out in (groups, 2 * groups) and groups % 8 == 0
            and len(kernel) >= 2 and all(kk == k for kk in kernel) and k in (3, 5, 7)
            and all(s in (1, 2) for s in stride) and all(dl == 1 for dl in dilation)
            and all(p == (k - 1) // 2 for p in padding))


# --- the op ------------------------------------------------------------------------------------

_SPATIAL_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}


class _QConv(OpDef):
    """Quantized N-d convolution with an optional fused relu / residual add (see module doc).

    Inputs: x (u8, per-tensor), w (i8, per-tensor or per-channel on axis 0, affine or
    symmetric), optional bias (f32 [C_out], real units); conv2d_add also takes the residual
    (u8, per-tensor, the output's shape) as its last input.
    """

    Attrs = ConvAttrs
    schedule_kind = "conv"
    fidelity_note = ("exact (x86 engine: oneDNN epilogue for symmetric weights and groups <= 100,"
                     " else fbgemm); PyTorch's fbgemm depthwise kernel saturates for activations"
                     " >= 128, so those samples use 7-bit activations")
    spatial_dims: ClassVar[int] = 2
    relu: ClassVar[bool] = False
    fused_add: ClassVar[bool] = False

    # --- inputs ------------------------------------------------------------------------------

    def _split(self, items: Sequence[Any]) -> tuple[Any, Any, Any, Any]:
        """(x, w, bias or None, residual or None) from the input list (arity already checked)."""
        x, w, rest = items[0], items[1], list(items[2:])
        other = rest.pop() if self.fused_add else None
        bias = rest[0] if rest else None
        return x, w, bias, other

    # --- type rule ---------------------------------------------------------------------------

    def _err(self, msg: str) -> TypeInferenceError:
        return TypeInferenceError(f"{self.name}: {msg}")

    def _spatial_attr(self, attrs: ConvAttrs, field: str, lo: int) -> tuple[int, ...]:
        d = self.spatial_dims
        v = getattr(attrs, field)
        if (not isinstance(v, tuple) or len(v) not in (1, d)
                or not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool)
                           for e in v)):
            raise self._err(f"{field} must be {d} int(s) (or one for all spatial dims), got {v!r}")
        if any(e < lo for e in v):
            raise self._err(f"{field} values must be >= {lo}, got {list(v)}")
        return expand_spatial(v, d)

    def _check_activation(self, t: TensorType, what: str) -> QParams:
        if t.qparams is not None and t.dtype == i8:
            raise self._err(
                f"{what} is qint8 (i8); PyTorch's quantized conv accepts only quint8 (u8)"
                " activations on every CPU engine (fbgemm, x86, onednn, qnnpack)")
        if t.qparams is None or t.dtype != u8:
            raise self._err(f"{what} must be a quantized u8 (quint8) tensor, got {t}")
        qp = t.qparams
        if qp.axis is not None:
            raise self._err(f"{what} must be quantized per tensor, got per-channel qparams"
                            f" (axis={qp.axis}); only weights may be per-channel")
        if qp.scheme == "float_qparams":
            raise self._err(f"{what} has float_qparams; supported schemes: affine, symmetric")
        if not 0 <= qp.zp_value <= 255:
            raise self._err(f"{what} zero point {qp.zp_value} is outside the u8 range 0..255")
        return qp

    def _check_weight(self, w: TensorType) -> QParams:
        d = self.spatial_dims
        if w.qparams is None or w.dtype != i8:
            hint = " (quantize float weights to qint8 first)" if w.dtype.is_float else ""
            raise self._err(f"weight must be a quantized i8 (qint8) tensor, got {w}{hint}")
        if w.rank != d + 2:
            raise self._err(f"weight must be {d + 2}-D [C_out, C_in/groups, "
                            f"{_SPATIAL_NAMES[d]}], got shape {list(w.shape)}")
        qp = w.qparams
        if qp.axis not in (None, 0):
            raise self._err(f"weight qparams must be per-tensor or per-channel on axis 0"
                            f" (output channels), got axis={qp.axis}")
        if qp.scheme not in ("affine", "symmetric"):
            raise self._err(f"weight scheme {qp.scheme!r} is not supported; supported: affine,"
                            " symmetric")
        zps = [int(z) for z in qp.zero_point]
        if any(not -128 <= z <= 127 for z in zps):
            raise self._err(f"weight zero points must be in -128..127, got {zps}")
        if qp.scheme == "symmetric" and any(zps):
            raise self._err(f"symmetric weight qparams need zero points 0, got {zps}")
        if any(k < 1 for k in w.shape[2:]) or w.shape[0] < 1 or w.shape[1] < 1:
            raise self._err(f"weight shape {list(w.shape)} has an empty dimension")
        return qp

    def infer_type(self, attrs: ConvAttrs, *in_types: TensorType) -> TensorType:
        d = self.spatial_dims
        x, w, bias, other = self._split(in_types)
        self._check_activation(x, "input")
        if x.rank != d + 2:
            raise self._err(f"input must be {d + 2}-D [N, C, {_SPATIAL_NAMES[d]}], got shape"
                            f" {list(x.shape)}")
        wq = self._check_weight(w)
        stride = self._spatial_attr(attrs, "stride", 1)
        padding = self._spatial_attr(attrs, "padding", 0)
        dilation = self._spatial_attr(attrs, "dilation", 1)
        groups = attrs.groups
        if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
            raise self._err(f"groups must be a positive int, got {groups!r}")
        if attrs.padding_mode != "zeros":
            raise self._err(f"padding_mode {attrs.padding_mode!r} is not supported; supported:"
                            " 'zeros' (express reflect/replicate/circular padding as an explicit"
                            " pad before the conv)")
        if attrs.out_dtype != u8:
            raise self._err(f"out_dtype {attrs.out_dtype} is not supported; PyTorch's quantized"
                            " conv outputs quint8 (u8) only")
        oq = attrs.out_qparams
        if not isinstance(oq, QParams) or oq.axis is not None or oq.scheme == "float_qparams":
            raise self._err(f"out_qparams must be per-tensor affine qparams, got {oq}")
        if not 0 <= oq.zp_value <= 255:
            raise self._err(f"output zero point {oq.zp_value} is outside the u8 range 0..255")

        c_in, c_out, cg = x.shape[1], w.shape[0], w.shape[1]
        if c_in < 1:
            raise self._err(f"input has no channels (shape {list(x.shape)})")
        if c_in % groups:
            raise self._err(f"input channels {c_in} are not divisible by groups={groups}")
        if c_out % groups:
            raise self._err(f"output channels {c_out} (weight dim 0) are not divisible by"
                            f" groups={groups}")
        if cg != c_in // groups:
            raise self._err(f"channel mismatch: the input has {c_in} channels, so with groups="
                            f"{groups} the weight needs {c_in // groups} input channels per group"
                            f" (dim 1), got weight shape {list(w.shape)}")
        if self.fused_add and any(int(z) for z in wq.zero_point):
            raise self._err("weights must be symmetric (all zero points 0): PyTorch runs conv2d_add"
                            " only in oneDNN, which has no weight zero points")
        if bias is not None and (bias.qparams is not None or bias.dtype != f32
                                 or bias.shape != (c_out,)):
            raise self._err(f"bias must be an unquantized f32 tensor of shape [{c_out}],"
                            f" got {bias}")

        out_sp = []
        for k, (size, kern, s, p, dl) in enumerate(
                zip(x.shape[2:], w.shape[2:], stride, padding, dilation)):
            n_out = conv_out_size(size, kern, s, p, dl)
            if n_out < 1:
                raise self._err(f"spatial dim {k}: input size {size} with padding {p} is smaller"
                                f" than the dilated kernel ({dl}*({kern}-1)+1)")
            out_sp.append(n_out)
        out = TensorType((x.shape[0], c_out, *out_sp), u8, oq)
        if other is not None:
            self._check_activation(other, "residual input")
            if other.shape != out.shape:
                raise self._err(f"residual input shape {list(other.shape)} differs from the conv"
                                f" output shape {list(out.shape)}")
        return out

    # --- reference ---------------------------------------------------------------------------

    def reference(self, sig: Sig, *arrays: np.ndarray) -> np.ndarray:
        attrs: ConvAttrs = sig.attrs
        d = self.spatial_dims
        x, w, bias, other = self._split(arrays)
        xt, wt, _, ot = self._split(sig.in_types)
        xq, wq, oq = xt.qparams, wt.qparams, sig.out.qparams
        assert xq is not None and wq is not None and oq is not None
        c_out = w.shape[0]
        w_zps = np.broadcast_to(wq.zero_points_array(), (c_out,))
        acc = conv_accumulate(x, xq.zp_value, w, w_zps, expand_spatial(attrs.stride, d),
                              expand_spatial(attrs.padding, d), expand_spatial(attrs.dilation, d),
                              attrs.groups)
        w_scales = np.broadcast_to(wq.scales_array(), (c_out,))
        if requant_path(wq, attrs.groups, self.fused_add) == "onednn":
            residual = None
            if other is not None:
                assert ot is not None and ot.qparams is not None
                residual = (other, ot.qparams.scale_value, ot.qparams.zp_value)
            return rq.onednn_requantize(acc, xq.scale_value, w_scales, oq.scale_value,
                                        oq.zp_value, bias=bias, relu=self.relu, channel_axis=1,
                                        residual=residual)
        return rq.fbgemm_requantize(acc, xq.scale_value, w_scales, oq.scale_value, oq.zp_value,
                                    bias=bias, per_tensor_weight=wq.axis is None, relu=self.relu,
                                    channel_axis=1)

    # --- lowering ----------------------------------------------------------------------------

    def lower(self, sig: Sig, *tensors: Any) -> Any:
        """TE twin of `reference`, step for step: `te_lib.conv_accumulate` (x padded with its
        zero point in a separate stage, the exact accumulator in int32, or in int64 and
        wrapped when it could overflow), then `te_lib.onednn_requantize` or
        `te_lib.fbgemm_requantize`, picked by `requant_path` as the reference picks it."""
        from qcompiler.lowering import te_lib

        attrs: ConvAttrs = sig.attrs
        d = self.spatial_dims
        x, w, bias, other = self._split(tensors)
        xt, wt, _, ot = self._split(sig.in_types)
        xq, wq, oq = xt.qparams, wt.qparams, sig.out.qparams
        assert xq is not None and wq is not None and oq is not None
        c_out = wt.shape[0]
        tag = self.name.replace(".", "_")
        acc = te_lib.conv_accumulate(
            x, xq.zp_value, w, np.broadcast_to(wq.zero_points_array(), (c_out,)),
            expand_spatial(attrs.stride, d), expand_spatial(attrs.padding, d),
            expand_spatial(attrs.dilation, d), attrs.groups, name=tag)
        w_scales = np.broadcast_to(wq.scales_array(), (c_out,))
        if requant_path(wq, attrs.groups, self.fused_add) == "onednn":
            residual = None
            if other is not None:
                assert ot is not None and ot.qparams is not None
                residual = (other, ot.qparams.scale_value, ot.qparams.zp_value)
            return te_lib.onednn_requantize(acc, xq.scale_value, w_scales, oq.scale_value,
                                            oq.zp_value, bias=bias, relu=self.relu,
                                            channel_axis=1, residual=residual, name=tag)
        return te_lib.fbgemm_requantize(acc, xq.scale_value, w_scales, oq.scale_value,
                                        oq.zp_value, bias=bias, per_tensor_weight=wq.axis is None,
                                        relu=self.relu, channel_axis=1, name=tag)

    # --- samples -----------------------------------------------------------------------------

    def _sample(self, rng: np.random.Generator, label: str, *, c: int, o: int,
                spatial: Sequence[int], kernel: int | Sequence[int], n: int = 1,
                stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                dilation: int | Sequence[int] = 1, groups: int = 1, weight: str = "pt-sym",
                bias: bool = True, huge_bias: bool = False, x_max: int = 255,
                x_fill: int | None = None, sx: float | None = None, zx: int | None = None,
                sw: float | None = None, zw: int | None = None,
                so: float | None = None, zo: int | None = None, se: float | None = None,
                ze: int | None = None) -> OpSample:
        """Build one sample; unspecified qparams are random, the output scale fits the data.

        `weight`: pt-sym, pt-aff, pc-sym, pc-aff (per-tensor / per-channel, zero points 0 /
        differing). Samples that take an fbgemm depthwise path get 7-bit activations.
        """
        d = self.spatial_dims
        ks = (kernel,) * d if isinstance(kernel, int) else tuple(kernel)
        st, pd, dl = (expand_spatial((v,) if isinstance(v, int) else v, d)
                      for v in (stride, padding, dilation))
        if weight.startswith("pt"):
            s = S.rand_scale(rng, 1e-3, 0.1) if sw is None else sw
            z = 0 if weight.endswith("sym") else (S.rand_zp(rng, i8) if zw is None else zw)
            wq = QParams.per_tensor(s, z, "symmetric" if weight.endswith("sym") else "affine")
        else:
            scales = [S.rand_scale(rng, 1e-3, 0.1) if sw is None else sw * (1 + 0.37 * k)
                      for k in range(o)]
            zps = ([0] * o if weight.endswith("sym")
                   else [int(v) for v in rng.integers(-20, 21, o)])
            if not weight.endswith("sym") and zw is not None:
                zps[0] = zw
            wq = QParams.per_axis(scales, zps, 0,
                                  "symmetric" if weight.endswith("sym") else "affine")
        path = requant_path(wq, groups, self.fused_add)
        if path == "fbgemm" and groups == c and groups > 1:
            x_max = min(x_max, 127)  # fbgemm depthwise saturates int16 pairs for x >= 128
        zx = int(rng.integers(0, x_max + 1)) if zx is None else min(zx, x_max)
        sx = S.rand_scale(rng, 1e-3, 0.5) if sx is None else sx
        xshape = (n, c, *spatial)
        xa = rng.integers(0, x_max + 1, xshape).astype(np.uint8)
        if x_fill is not None:
            xa.reshape(-1)[: xa.size // 2] = x_fill
        elif xa.size >= 8:
            flat = xa.reshape(-1)
            flat[rng.integers(0, flat.size, max(1, flat.size // 16))] = 0
            flat[rng.integers(0, flat.size, max(1, flat.size // 16))] = x_max
        wa = S.rand_int(rng, (o, c // groups, *ks), i8)
        xt = TensorType(xshape, u8, QParams.per_tensor(sx, zx))
        wt = TensorType(wa.shape, i8, wq)
        acc = conv_accumulate(xa, zx, wa, np.broadcast_to(wq.zero_points_array(), (o,)), st, pd,
                              dl, groups).astype(np.float64)
        real = acc * sx * np.broadcast_to(wq.scales_array(), (o,)).reshape((1, o) + (1,) * d)
        std = float(real.std()) + 1e-30
        cshape = (1, o) + (1,) * d
        types: list[TensorType] = [xt, wt]
        arrays: list[np.ndarray] = [xa, wa]
        total = real
        if bias:
            ba = (rng.standard_normal(o) * std).astype(np.float32)
            types.append(TensorType((o,), f32))
            arrays.append(ba)
            total = total + ba.reshape(cshape)
        if self.fused_add:
            se = float(np.clip(std / 60, 1e-6, 1e2)) if se is None else se
            ze = int(rng.integers(0, 256)) if ze is None else ze
            et, ea = S.qtensor(rng, real.shape, u8, se, ze)
            types.append(et)
            arrays.append(ea)
            total = total + (ea.astype(np.float64) - ze) * se
        # fit the output qparams to the data so that few outputs saturate
        lo, hi = (float(v) for v in np.percentile(total, [1, 99]))
        if so is None:
            so = float(np.clip(max(hi - lo, 1e-30) / 230, 1e-6, 1e2))
        if zo is None:
            zo = int(np.clip(round(-lo / so) + int(rng.integers(-8, 9)), 0, 255))
        if huge_bias and bias:
            # |bias / so| around 2**31: fbgemm's INT32_MIN trap (3e9 -> 0) next to in-range
            # saturation (2e9 -> 255); oneDNN saturates both in float.
            pattern = np.array([3e9, -3e9, 2e9, -2e9, 6e8])
            arrays[2][:] = (np.resize(pattern, o) * so).astype(np.float32)
        attrs = ConvAttrs(QParams.per_tensor(so, zo), st, pd, dl, groups)
        return OpSample(attrs, tuple(types), tuple(arrays), f"{label}-{path}",
                        extra={"path": path})

    def _sp(self, *sizes: int) -> tuple[int, ...]:
        return sizes[: self.spatial_dims]

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        sp, mk = self._sp, self._sample
        if self.fused_add:
            yield from self._add_samples(rng)
            return
        yield mk(rng, "pt-sym-k3p1", c=3, o=4, spatial=sp(7, 6, 5), kernel=3, padding=1)
        yield mk(rng, "pc-affine-s2", c=4, o=5, spatial=sp(9, 7, 5), kernel=3, stride=2,
                 padding=1, weight="pc-aff")
        yield mk(rng, "groups2-pc-sym-dil2-nobias", c=4, o=6, spatial=sp(8, 7, 6), kernel=3,
                 dilation=2, padding=2, groups=2, weight="pc-sym", bias=False)
        yield mk(rng, "depthwise-pc-aff-7bit", c=8, o=8, spatial=sp(6, 5, 4), kernel=3,
                 padding=1, groups=8, weight="pc-aff")
        yield mk(rng, "depthwise-x2-pc-sym-s2", c=8, o=16, spatial=sp(7, 6, 4), kernel=3,
                 padding=1, stride=2, groups=8, weight="pc-sym")
        yield mk(rng, "edge-small-scales-zx255-zo0", c=3, o=4, spatial=sp(5, 6, 4), kernel=2,
                 weight="pc-aff", sx=1e-6, sw=3e-3, zx=255, zo=0, x_fill=255)
        yield mk(rng, "edge-large-scales-zx0-zo255", c=2, o=3, spatial=sp(5, 5, 4), kernel=3,
                 padding=1, weight="pt-sym", sx=100.0, sw=1e-3, zx=0, zo=255, x_fill=0)
        yield mk(rng, "huge-bias-int32min-trap", c=3, o=4, spatial=sp(5, 4, 3), kernel=1,
                 weight="pt-aff", zw=-128, huge_bias=True)
        yield mk(rng, "huge-bias-saturates", c=3, o=4, spatial=sp(5, 4, 3), kernel=1,
                 weight="pc-sym", huge_bias=True)
        yield mk(rng, "1x1-s2-n2-zw127", c=5, o=3, n=2, spatial=sp(7, 5, 3), kernel=1, stride=2,
                 weight="pt-aff", zw=127)
        yield mk(rng, "nonsquare-groups3-pc-aff", c=6, o=6, spatial=sp(7, 8, 5),
                 kernel=(2, 3, 2)[: self.spatial_dims], stride=(1, 2, 1)[: self.spatial_dims],
                 padding=(1, 0, 1)[: self.spatial_dims], dilation=(2, 1, 1)[: self.spatial_dims],
                 groups=3, weight="pc-aff")
        if self.relu:
            return
        yield mk(rng, "depthwise-groups104-pt-sym-7bit", c=104, o=104, spatial=sp(3, 3, 3),
                 kernel=3, padding=1, groups=104, weight="pt-sym")
        if self.spatial_dims == 1:
            yield from self._overflow_samples(rng)

    def _overflow_samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        """int32 accumulator wrap-around: |sum| > 2**31 (kernel-1 conv over many channels)."""
        for weight, c, zw in (("pt-sym", 70000, 0), ("pt-aff", 34000, 127)):
            s = self._sample(rng, f"int32-wrap-{weight}", c=c, o=2, spatial=(1,), kernel=1,
                             weight=weight, zw=zw, sx=0.01, sw=0.001, zx=0, so=1e3, zo=128,
                             bias=False)
            x, w = s.arrays
            x[...] = 255
            w[0] = -128
            w[1, :, 0][::2] = 127
            yield s

    def _add_samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        mk = self._sample
        yield mk(rng, "pt-sym-k3p1", c=3, o=4, spatial=(6, 7), kernel=3, padding=1)
        yield mk(rng, "pc-sym-s2-nobias", c=4, o=5, spatial=(9, 7), kernel=3, stride=2,
                 padding=1, weight="pc-sym", bias=False)
        yield mk(rng, "depthwise-pc-sym", c=8, o=8, spatial=(5, 6), kernel=3, padding=1,
                 groups=8, weight="pc-sym")
        yield mk(rng, "groups2-dil2", c=4, o=6, spatial=(8, 7), kernel=3, dilation=2, padding=2,
                 groups=2, weight="pc-sym")
        yield mk(rng, "edge-small-scales", c=3, o=4, spatial=(5, 6), kernel=2, weight="pc-sym",
                 sx=1e-6, sw=3e-3, zx=255, zo=0, ze=255, x_fill=255)
        yield mk(rng, "edge-large-scales", c=2, o=3, spatial=(5, 5), kernel=3, padding=1,
                 sx=100.0, sw=1e-3, zx=0, zo=255, ze=0, se=100.0, x_fill=0)
        yield mk(rng, "residual-scale-1", c=3, o=3, spatial=(4, 5), kernel=1, se=1.0)
        yield mk(rng, "huge-bias", c=3, o=4, spatial=(4, 3), kernel=1, weight="pc-sym",
                 huge_bias=True)
        if not self.relu:
            yield mk(rng, "depthwise-groups104", c=104, o=104, spatial=(3, 3), kernel=3,
                     padding=1, groups=104, weight="pt-sym")

    # --- PyTorch -----------------------------------------------------------------------------

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        """Run torch.ops.quantized.conv{d}d[_relu] / conv2d_add[_relu] on packed weights.

        Plain convs run on the default x86 engine (which picks oneDNN or fbgemm as
        `requant_path` says); conv2d_add runs on the onednn engine, its only implementation.
        The engine is restored afterwards.
        """
        import torch

        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        attrs: ConvAttrs = sample.attrs
        d = self.spatial_dims
        x, w, bias, other = self._split(sample.arrays)
        xt, wt, _, ot = self._split(sample.in_types)
        qx, qw = to_torch(x, xt), to_torch(w, wt)
        tb = None if bias is None else torch.from_numpy(bias.copy())
        ops = torch.ops.quantized
        prepack = getattr(ops, f"conv{d}d_prepack")
        suffix = ("_add" if self.fused_add else "") + ("_relu" if self.relu else "")
        run = getattr(ops, f"conv{d}d{suffix}")
        oq = attrs.out_qparams
        engine = "onednn" if self.fused_add else "x86"
        with quantized_engine(engine):
            packed = prepack(qw, tb, list(expand_spatial(attrs.stride, d)),
                             list(expand_spatial(attrs.padding, d)),
                             list(expand_spatial(attrs.dilation, d)), attrs.groups)
            if self.fused_add:
                assert other is not None and ot is not None
                y = run(qx, to_torch(other, ot), packed, oq.scale_value, oq.zp_value)
            else:
                y = run(qx, packed, oq.scale_value, oq.zp_value)
        return to_numpy(y)


# --- the registered names ----------------------------------------------------------------------


@register_op
class QConv1d(_QConv):
    """Quantized 1-d convolution, x [N, C, L] (module doc has the exact formula)."""

    name = "qnn.conv1d"
    spatial_dims = 1
    num_inputs = (2, 3)
    torch_counterparts = ("torch.ops.quantized.conv1d", "torch.ao.nn.quantized.Conv1d")


@register_op
class QConv1dReLU(_QConv):
    """relu(qnn.conv1d): clamped at real 0 (module doc has the exact formula)."""

    name = "qnn.conv1d_relu"
    spatial_dims = 1
    relu = True
    num_inputs = (2, 3)
    torch_counterparts = ("torch.ops.quantized.conv1d_relu",
                          "torch.ao.nn.intrinsic.quantized.ConvReLU1d")


@register_op
class QConv2d(_QConv):
    """Quantized 2-d convolution, x [N, C, H, W] (module doc has the exact formula)."""

    name = "qnn.conv2d"
    spatial_dims = 2
    num_inputs = (2, 3)
    torch_counterparts = ("torch.ops.quantized.conv2d", "torch.ao.nn.quantized.Conv2d")


@register_op
class QConv2dReLU(_QConv):
    """relu(qnn.conv2d): clamped at real 0 (module doc has the exact formula)."""

    name = "qnn.conv2d_relu"
    spatial_dims = 2
    relu = True
    num_inputs = (2, 3)
    torch_counterparts = ("torch.ops.quantized.conv2d_relu",
                          "torch.ao.nn.intrinsic.quantized.ConvReLU2d")


@register_op
class QConv2dAdd(_QConv):
    """conv2d(x, w, b) + residual, requantized once (PyTorch's oneDNN sum post-op).

    Inputs (x, w, [bias], residual). v = conv in real f32 units (oneDNN formula), then
    v = fma(f32(e) - f32(ze), 1/f32(1/se), v), then output requantization. Weights symmetric.
    """

    name = "qnn.conv2d_add"
    spatial_dims = 2
    fused_add = True
    num_inputs = (3, 4)
    torch_counterparts = ("torch.ops.quantized.conv2d_add",
                          "torch.ao.nn.intrinsic.quantized.ConvAdd2d")


@register_op
class QConv2dAddReLU(_QConv):
    """relu(conv2d(x, w, b) + residual): the relu comes after the add (oneDNN post-op order)."""

    name = "qnn.conv2d_add_relu"
    spatial_dims = 2
    fused_add = True
    relu = True
    num_inputs = (3, 4)
    torch_counterparts = ("torch.ops.quantized.conv2d_add_relu",
                          "torch.ao.nn.intrinsic.quantized.ConvAddReLU2d")


@register_op
class QConv3d(_QConv):
    """Quantized 3-d convolution, x [N, C, D, H, W] (module doc has the exact formula)."""

    name = "qnn.conv3d"
    spatial_dims = 3
    num_inputs = (2, 3)
    torch_counterparts = ("torch.ops.quantized.conv3d", "torch.ao.nn.quantized.Conv3d")


@register_op
class QConv3dReLU(_QConv):
    """relu(qnn.conv3d): clamped at real 0 (module doc has the exact formula)."""

    name = "qnn.conv3d_relu"
    spatial_dims = 3
    relu = True
    num_inputs = (2, 3)
    torch_counterparts = ("torch.ops.quantized.conv3d_relu",
                          "torch.ao.nn.intrinsic.quantized.ConvReLU3d")
