"""Quantized transposed convolutions: qnn.conv_transpose1d, qnn.conv_transpose2d, qnn.conv_transpose3d.

Inputs: x (quint8 [N, C_in, *S], per tensor), w (qint8 [C_in, C_out/groups, *K], per tensor,
any zero point; normally a constant), optional bias (float32 [C_out], real units). Output
quint8 [N, C_out, *S_out] with S_out = (S - 1)*stride - 2*padding + dilation*(K - 1)
+ output_padding + 1, per-tensor qparams from the attrs.

    acc[n, g*Og + o, p] = wrap32(sum_{c < Cg, k, i : i*stride - padding + k*dilation = p}
                                 (x[n, g*Cg + c, i] - zx) * (w[g*Cg + c, o, k] - zw))

(Cg = C_in/groups, Og = C_out/groups; every output position sums the input positions that
scatter into it; the sum is exact, then wrapped modulo 2**32 as fbgemm's int32 accumulator
wraps), followed by fbgemm's requantization with a per-tensor weight
(`reference.requant.fbgemm_requantize`):

    atws = f32(f32(sx) * f32(sw));  mult = f32(atws / f32(so))
    v = fma32(bias[o], f32(1.0 / atws), f32(acc))      (v = f32(acc) without bias)
    t = f32(v * mult);  r = rint(t), or INT32_MIN when |t| >= 2**31
    y = clip(r + zo, 0, 255)

This is PyTorch 2.13's fbgemm kernel (torch.ops.quantized.conv_transpose{1,2,3}d), measured
bit-exact with full-range 0..255 activations, depthwise-like groups included (fbgemm's
transposed conv has no int16-saturating fast path).

Which PyTorch engine, and a PyTorch bug. fbgemm and x86 reject per-channel weights for
transposed conv ("Per Channel Quantization is currently disabled for transposed conv"), so
weights are per tensor here. The default x86 engine runs fbgemm when the weight zero point is
non-zero or output_padding is non-zero; with a zero weight zero point and zero output_padding it
hands the layer to oneDNN, and PyTorch 2.13's oneDNN transposed conv is wrong whenever
C_in/groups != C_out/groups: the weights are read in a permuted order (a 3-in/4-out 1x1 layer
computes with w.flat[(3*(o*3 + c)) mod 11] instead of w[c, o]), off by hundreds of LSB, and
far from the float ConvTranspose (the onednn engine has the same bug). When C_in/groups ==
C_out/groups the oneDNN result is right up to oneDNN's requantization rounding (about 1e-6 of
outputs differ by 1 LSB from fbgemm's, see conv_linear_numerics.md). We define the op by the
correct arithmetic, fbgemm's; `torch_reference` therefore pins the fbgemm engine.

output_padding must be smaller than stride or dilation in each dim, as in torch.nn.ConvTranspose
(the quantized kernel itself accepts larger values and just grows the output).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qcompiler.errors import TypeInferenceError
from qcompiler.ir.registry import OpDef, OpSample, Sig, register_op
from qcompiler.ir.types import DType, QParams, TensorType, f32, i8, u8
from qcompiler.ops.conv import int_tuple
from qcompiler.reference import requant as rq
from qcompiler.testing import samples as S
from qcompiler.testing.torch_bridge import quantized_engine

F32 = np.float32


@dataclass(frozen=True)
class ConvTransposeAttrs:
    out_qparams: QParams
    """Output qparams: per tensor (PyTorch's output_scale, output_zero_point)."""
    stride: tuple[int, ...] = (1,)
    """Per spatial dim, or one value for all of them."""
    padding: tuple[int, ...] = (0,)
    """Implicit zero padding removed from both sides of the output, per spatial dim (or one)."""
    output_padding: tuple[int, ...] = (0,)
    """Extra size added to one side of the output, per spatial dim (or one)."""
    dilation: tuple[int, ...] = (1,)
    """Per spatial dim, or one value for all of them."""
    groups: int = 1
    out_dtype: DType = u8
    """Only u8 (quint8): PyTorch's quantized transposed conv outputs quint8."""

    def __post_init__(self) -> None:
        for name in ("stride", "padding", "output_padding", "dilation"):
            object.__setattr__(self, name, int_tuple(getattr(self, name)))


def expand_spatial(values: Sequence[int], ndim: int) -> tuple[int, ...]:
    """A stride/padding/... attr as one int per spatial dim (a single value broadcasts)."""
    vals = tuple(int(v) for v in values)
    return vals * ndim if len(vals) == 1 else vals


def conv_transpose_out_size(size: int, kernel: int, stride: int, pad: int, out_pad: int,
                            dil: int) -> int:
    """(size - 1)*stride - 2*pad + dil*(kernel - 1) + out_pad + 1 (PyTorch's formula)."""
    return (size - 1) * stride - 2 * pad + dil * (kernel - 1) + out_pad + 1


def conv_transpose_accumulate(x: np.ndarray, x_zp: int, w: np.ndarray, w_zp: int,
                              stride: Sequence[int], padding: Sequence[int],
                              output_padding: Sequence[int], dilation: Sequence[int],
                              groups: int) -> np.ndarray:
    """The int32 (wrapped) accumulator of an N-d grouped transposed conv (module doc formula).

    x: u8 [N, C, *S]; w: i8 [C, Og, *K]. Returns int32 [N, groups*Og, *S_out].

    Scatter form: for each kernel tap k, every input position i adds (x - zx) @ (w[:, :, k] - zw)
    (a float64 matmul per group) at output position i*stride + k*dilation of an uncropped
    buffer; the buffer is then cropped by `padding` on both sides. Products are integers of
    magnitude <= 255*255 and partial sums stay far below 2**53, so float64 is exact in any
    order; the result is wrapped modulo 2**32 like fbgemm's int32 accumulator.
    """
    d = x.ndim - 2
    n, c = x.shape[:2]
    sp = x.shape[2:]
    og = w.shape[1]
    ks = w.shape[2:]
    cg = c // groups
    out_sp = tuple(conv_transpose_out_size(sp[i], ks[i], stride[i], padding[i],
                                           output_padding[i], dilation[i]) for i in range(d))
    full_sp = tuple(padding[i] + out_sp[i] for i in range(d))
    # input positions land at i*stride + k*dilation <= (S-1)*stride + (K-1)*dilation
    buf_sp = tuple(max(full_sp[i], (sp[i] - 1) * stride[i] + (ks[i] - 1) * dilation[i] + 1)
                   for i in range(d))
    full = np.zeros((n, groups, og) + buf_sp, dtype=np.float64)
    xf = x.astype(np.float64) - float(x_zp)
    # [G, N*P, Cg]: rows are (n, input position) per group
    xg = np.moveaxis(xf.reshape((n, groups, cg) + sp), 2, -1).reshape(n, groups, -1, cg)
    xg = xg.transpose(1, 0, 2, 3).reshape(groups, -1, cg)
    wf = (w.astype(np.float64) - float(w_zp)).reshape((groups, cg, og) + ks)
    for k in np.ndindex(*ks):
        contrib = np.matmul(xg, wf[(slice(None), slice(None), slice(None)) + k])  # [G, N*P, Og]
        contrib = contrib.reshape((groups, n) + sp + (og,))
        contrib = np.moveaxis(contrib, -1, 2).transpose((1, 0, 2) + tuple(range(3, 3 + d)))
        dst = tuple(slice(k[i] * dilation[i], k[i] * dilation[i] + (sp[i] - 1) * stride[i] + 1,
                          stride[i]) for i in range(d))
        full[(slice(None), slice(None), slice(None)) + dst] += contrib
    crop = tuple(slice(padding[i], padding[i] + out_sp[i]) for i in range(d))
    acc = full[(slice(None), slice(None), slice(None)) + crop]
    return rq.wrap_int32(acc.reshape((n, groups * og) + out_sp).astype(np.int64))


_SPATIAL_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}


class _QConvTranspose(OpDef):
    """Quantized N-d transposed convolution (the module doc has the exact formula)."""

    Attrs = ConvTransposeAttrs
    schedule_kind = "conv"
    num_inputs = (2, 3)
    spatial_dims: ClassVar[int] = 2

    def _err(self, msg: str) -> TypeInferenceError:
        return TypeInferenceError(f"{self.name}: {msg}")

    def _spatial_attr(self, attrs: ConvTransposeAttrs, field: str, lo: int) -> tuple[int, ...]:
        d = self.spatial_dims
        v = getattr(attrs, field)
        if (not isinstance(v, tuple) or len(v) not in (1, d)
                or not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool)
                           for e in v)):
            raise self._err(f"{field} must be {d} int(s) (or one for all spatial dims), got {v!r}")
        if any(e < lo for e in v):
            raise self._err(f"{field} values must be >= {lo}, got {list(v)}")
        return expand_spatial(v, d)

    # --- type rule ---------------------------------------------------------------------------

    def infer_type(self, attrs: ConvTransposeAttrs, *in_types: TensorType) -> TensorType:
        d = self.spatial_dims
        x, w = in_types[0], in_types[1]
        bias = in_types[2] if len(in_types) > 2 else None
        self._check_input(x)
        self._check_weight(w)
        stride = self._spatial_attr(attrs, "stride", 1)
        padding = self._spatial_attr(attrs, "padding", 0)
        out_pad = self._spatial_attr(attrs, "output_padding", 0)
        dilation = self._spatial_attr(attrs, "dilation", 1)
        for i in range(d):
            if not (out_pad[i] < stride[i] or out_pad[i] < dilation[i]):
                raise self._err(f"output_padding must be smaller than either stride or dilation"
                                f" in every spatial dim, got output_padding={list(out_pad)},"
                                f" stride={list(stride)}, dilation={list(dilation)}")
        groups = attrs.groups
        if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
            raise self._err(f"groups must be a positive int, got {groups!r}")
        if attrs.out_dtype is not u8:
            raise self._err(f"out_dtype {attrs.out_dtype} is not supported; PyTorch's quantized"
                            " transposed conv outputs quint8 (u8) only")
        oq = attrs.out_qparams
        if not isinstance(oq, QParams) or oq.axis is not None or oq.scheme == "float_qparams":
            raise self._err(f"out_qparams must be per-tensor affine qparams, got {oq}")
        if not 0 <= oq.zp_value <= 255:
            raise self._err(f"output zero point {oq.zp_value} is outside the u8 range 0..255")
        c_in = x.shape[1]
        if w.shape[0] != c_in:
            raise self._err(f"channel mismatch: the input has {c_in} channels but the weight"
                            f" [C_in, C_out/groups, {_SPATIAL_NAMES[d]}] has shape"
                            f" {list(w.shape)} (dim 0 must be {c_in})")
        if c_in % groups:
            raise self._err(f"input channels {c_in} are not divisible by groups={groups}")
        c_out = w.shape[1] * groups
        if bias is not None:
            if bias.qparams is not None or bias.dtype is not f32:
                raise self._err(f"bias must be an unquantized float32 tensor [{c_out}] (real"
                                f" units), got {bias}")
            if bias.shape != (c_out,):
                raise self._err(f"bias must have shape [{c_out}] (C_out = weight dim 1 * groups),"
                                f" got {list(bias.shape)}")
        ks = w.shape[2:]
        out_sp = tuple(conv_transpose_out_size(x.shape[2 + i], ks[i], stride[i], padding[i],
                                               out_pad[i], dilation[i]) for i in range(d))
        if any(s < 1 for s in out_sp):
            raise self._err(f"output would be empty: input {list(x.shape)}, kernel {list(ks)},"
                            f" stride {list(stride)}, padding {list(padding)}, output_padding"
                            f" {list(out_pad)}, dilation {list(dilation)} give spatial size"
                            f" {list(out_sp)}")
        return TensorType((x.shape[0], c_out) + out_sp, u8, oq)

    def _check_input(self, x: TensorType) -> None:
        d = self.spatial_dims
        if x.qparams is not None and x.dtype is i8:
            raise self._err("input is qint8 (i8); PyTorch's quantized transposed conv accepts"
                            " only quint8 (u8) activations")
        if x.qparams is None or x.dtype is not u8:
            raise self._err(f"input must be a quantized u8 (quint8) tensor, got {x}")
        qp = x.qparams
        if qp.axis is not None:
            raise self._err(f"input must be quantized per tensor, got per-channel qparams"
                            f" (axis={qp.axis})")
        if qp.scheme == "float_qparams":
            raise self._err("input has float_qparams; supported schemes: affine, symmetric")
        if not 0 <= qp.zp_value <= 255:
            raise self._err(f"input zero point {qp.zp_value} is outside the u8 range 0..255")
        if x.rank != d + 2:
            raise self._err(f"input must be {d + 2}-D [N, C, {_SPATIAL_NAMES[d]}], got shape"
                            f" {list(x.shape)}")
        if x.shape[1] < 1:
            raise self._err(f"input has no channels (shape {list(x.shape)})")

    def _check_weight(self, w: TensorType) -> None:
        d = self.spatial_dims
        if w.qparams is None or w.dtype is not i8:
            hint = " (quantize float weights to qint8 first)" if w.dtype.is_float else ""
            raise self._err(f"weight must be a quantized i8 (qint8) tensor, got {w}{hint}")
        if w.rank != d + 2:
            raise self._err(f"weight must be {d + 2}-D [C_in, C_out/groups, "
                            f"{_SPATIAL_NAMES[d]}], got shape {list(w.shape)}")
        if any(s < 1 for s in w.shape):
            raise self._err(f"weight shape {list(w.shape)} has an empty dimension")
        qp = w.qparams
        if qp.axis is not None:
            raise self._err(f"weight must be quantized per tensor, got per-channel qparams"
                            f" (axis={qp.axis}): PyTorch's fbgemm/x86 engines reject per-channel"
                            " weights for transposed conv")
        if qp.scheme not in ("affine", "symmetric"):
            raise self._err(f"weight scheme {qp.scheme!r} is not supported; supported: affine,"
                            " symmetric")
        if not -128 <= qp.zp_value <= 127:
            raise self._err(f"weight zero point {qp.zp_value} is outside -128..127")
        if qp.scheme == "symmetric" and qp.zp_value:
            raise self._err(f"symmetric weight qparams need zero point 0, got {qp.zp_value}")

    # --- semantics ---------------------------------------------------------------------------

    def reference(self, sig: Sig, *arrays: np.ndarray) -> np.ndarray:
        attrs: ConvTransposeAttrs = sig.attrs
        d = self.spatial_dims
        x, w = arrays[0], arrays[1]
        bias = arrays[2] if len(arrays) > 2 else None
        xq, wq, oq = sig.in_types[0].qparams, sig.in_types[1].qparams, sig.out.qparams
        assert xq is not None and wq is not None and oq is not None
        acc = conv_transpose_accumulate(
            x, xq.zp_value, w, wq.zp_value, expand_spatial(attrs.stride, d),
            expand_spatial(attrs.padding, d), expand_spatial(attrs.output_padding, d),
            expand_spatial(attrs.dilation, d), attrs.groups)
        return rq.fbgemm_requantize(acc, xq.scale_value, wq.scale_value, oq.scale_value,
                                    oq.zp_value, bias=bias, per_tensor_weight=True,
                                    channel_axis=1)

    # --- lowering ----------------------------------------------------------------------------

    def lower(self, sig: Sig, *tensors: Any) -> Any:
        """TE twin of `reference`: `te_lib.conv_transpose_accumulate` (a stride-1 conv over the
        input upsampled with its zero point, flipped weights), then fbgemm's per-tensor-weight
        epilogue (`te_lib.fbgemm_requantize`)."""
        from qcompiler.lowering import te_lib

        attrs: ConvTransposeAttrs = sig.attrs
        d = self.spatial_dims
        x, w = tensors[0], tensors[1]
        bias = tensors[2] if len(tensors) > 2 else None
        xq, wq, oq = sig.in_types[0].qparams, sig.in_types[1].qparams, sig.out.qparams
        assert xq is not None and wq is not None and oq is not None
        tag = self.name.replace(".", "_")
        acc = te_lib.conv_transpose_accumulate(
            x, xq.zp_value, w, wq.zp_value, expand_spatial(attrs.stride, d),
            expand_spatial(attrs.padding, d), expand_spatial(attrs.output_padding, d),
            expand_spatial(attrs.dilation, d), attrs.groups, name=tag)
        return te_lib.fbgemm_requantize(acc, xq.scale_value, wq.scale_value, oq.scale_value,
                                        oq.zp_value, bias=bias, per_tensor_weight=True,
                                        channel_axis=1, name=tag)

    # --- samples -----------------------------------------------------------------------------

    def _sample(self, rng: np.random.Generator, label: str, *, c: int, o: int,
                spatial: Sequence[int], kernel: int | Sequence[int], n: int = 1,
                stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                output_padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                groups: int = 1, bias: bool = True, bias_mult: float = 1.0,
                x_fill: int | None = None, sx: float | None = None, zx: int | None = None,
                sw: float | None = None, zw: int | None = None, so: float | None = None,
                so_mult: float = 1.0, zo: int | None = None) -> OpSample:
        """One sample (`o` = C_out); unspecified qparams are random, the output scale fits."""
        d = self.spatial_dims
        ks = (kernel,) * d if isinstance(kernel, int) else tuple(kernel)
        st, pd, op, dl = (expand_spatial((v,) if isinstance(v, int) else v, d)
                          for v in (stride, padding, output_padding, dilation))
        sw = S.rand_scale(rng, 1e-3, 0.1) if sw is None else sw
        zw = S.rand_zp(rng, i8) if zw is None else zw
        wq = QParams.per_tensor(sw, zw)
        sx = S.rand_scale(rng, 1e-3, 0.5) if sx is None else sx
        zx = int(rng.integers(0, 256)) if zx is None else zx
        xa = S.rand_int(rng, (n, c, *spatial), u8)
        if x_fill is not None:
            xa.reshape(-1)[: xa.size // 2] = x_fill
        wa = S.rand_int(rng, (c, o // groups, *ks), i8)
        acc = conv_transpose_accumulate(xa, zx, wa, zw, st, pd, op, dl, groups)
        std = float((acc.astype(np.float64) * sx * sw).std()) + 1e-30
        if so is None:
            so = float(np.clip(std / 40 * so_mult, 1e-6, 1e2))
        zo = int(rng.integers(0, 256)) if zo is None else zo
        attrs = ConvTransposeAttrs(QParams.per_tensor(so, zo), st, pd, op, dl, groups)
        types = [TensorType(xa.shape, u8, QParams.per_tensor(sx, zx)),
                 TensorType(wa.shape, i8, wq)]
        arrays = [xa, wa]
        if bias:
            types.append(TensorType((o,), f32))
            arrays.append((rng.standard_normal(o) * std * bias_mult).astype(F32))
        return OpSample(attrs, tuple(types), tuple(arrays), label)

    def _sp(self, *sizes: int) -> tuple[int, ...]:
        return sizes[: self.spatial_dims]

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        sp, mk = self._sp, self._sample
        yield mk(rng, "k3-s2-p1-op1", c=3, o=4, spatial=sp(5, 4, 3), kernel=3, stride=2,
                 padding=1, output_padding=1)
        yield mk(rng, "k2-s2-zw0", c=4, o=3, spatial=sp(4, 3, 3), kernel=2, stride=2, zw=0)
        yield mk(rng, "groups2-dil2-nobias", c=4, o=6, spatial=sp(5, 4, 3), kernel=3,
                 dilation=2, padding=2, groups=2, bias=False)
        yield mk(rng, "depthwise-like-g8", c=8, o=8, spatial=sp(4, 4, 3), kernel=3, stride=2,
                 padding=1, output_padding=1, groups=8)
        yield mk(rng, "edge-small-scales-zx255-zo0", c=3, o=2, spatial=sp(4, 3, 3), kernel=2,
                 sx=1e-6, sw=1e-2, zx=255, zo=0, x_fill=255)
        yield mk(rng, "edge-large-scales-zx0-zo255", c=2, o=3, spatial=sp(4, 3, 3), kernel=3,
                 padding=1, sx=100.0, sw=1e-4, so=100.0, zx=0, zo=255, x_fill=0)
        yield mk(rng, "huge-bias-int32min-trap", c=3, o=4, spatial=sp(3, 3, 2), kernel=1,
                 zw=-128, bias_mult=1e7)
        yield mk(rng, "odd-shapes-n2-zw127", c=5, o=1, n=2, spatial=sp(3, 2, 2),
                 kernel=(4, 1, 2)[: self.spatial_dims], stride=(3, 1, 2)[: self.spatial_dims],
                 padding=(2, 0, 1)[: self.spatial_dims],
                 output_padding=(2, 0, 1)[: self.spatial_dims], zw=127)
        yield mk(rng, "pad-crops-all-but-one", c=2, o=2, spatial=sp(3, 3, 3), kernel=3,
                 padding=(2, 1, 1)[: self.spatial_dims])
        yield mk(rng, "op-below-dilation", c=2, o=3, spatial=sp(3, 3, 2), kernel=2, stride=1,
                 dilation=2, output_padding=1, groups=1)

    # --- PyTorch -----------------------------------------------------------------------------

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        """torch.ops.quantized.conv_transpose{d}d on the fbgemm engine (restored afterwards).

        fbgemm, not the default x86 engine: x86 hands symmetric-weight, zero-output_padding
        layers to oneDNN, whose transposed conv is wrong when C_in/groups != C_out/groups
        (module doc). fbgemm is what x86 runs for every other transposed conv.
        """
        import torch

        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        attrs: ConvTransposeAttrs = sample.attrs
        d = self.spatial_dims
        x, w = sample.arrays[0], sample.arrays[1]
        bias = sample.arrays[2] if len(sample.arrays) > 2 else None
        qx, qw = to_torch(x, sample.in_types[0]), to_torch(w, sample.in_types[1])
        tb = None if bias is None else torch.from_numpy(bias.copy())
        ops = torch.ops.quantized
        oq = attrs.out_qparams
        with quantized_engine("fbgemm"):
            packed = getattr(ops, f"conv_transpose{d}d_prepack")(
                qw, tb, list(expand_spatial(attrs.stride, d)),
                list(expand_spatial(attrs.padding, d)),
                list(expand_spatial(attrs.output_padding, d)),
                list(expand_spatial(attrs.dilation, d)), attrs.groups)
            y = getattr(ops, f"conv_transpose{d}d")(qx, packed, oq.scale_value, oq.zp_value)
        return to_numpy(y)


@register_op
class QConvTranspose1d(_QConvTranspose):
    """Quantized 1-d transposed convolution, x [N, C, L] (module doc has the exact formula)."""

    name = "qnn.conv_transpose1d"
    spatial_dims = 1
    torch_counterparts = ("torch.ops.quantized.conv_transpose1d",
                          "torch.ao.nn.quantized.ConvTranspose1d")


@register_op
class QConvTranspose2d(_QConvTranspose):
    """Quantized 2-d transposed convolution, x [N, C, H, W] (module doc has the formula)."""

    name = "qnn.conv_transpose2d"
    spatial_dims = 2
    torch_counterparts = ("torch.ops.quantized.conv_transpose2d",
                          "torch.ao.nn.quantized.ConvTranspose2d")


@register_op
class QConvTranspose3d(_QConvTranspose):
    """Quantized 3-d transposed convolution, x [N, C, D, H, W] (module doc has the formula)."""

    name = "qnn.conv_transpose3d"
    spatial_dims = 3
    torch_counterparts = ("torch.ops.quantized.conv_transpose3d",
                          "torch.ao.nn.quantized.ConvTranspose3d")
