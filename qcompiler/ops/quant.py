"""quantize, dequantize, requantize: moving between float and quantized storage."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcompiler.errors import TypeInferenceError
from qcompiler.ir.registry import OpDef, OpSample, Sig, register_op
from qcompiler.ir.types import DType, QParams, TensorType, f32, i8, i32, u8
from qcompiler.reference import quant_math as qm
from qcompiler.testing import samples as S


@dataclass(frozen=True)
class QuantizeAttrs:
    dtype: DType
    """Output storage dtype: u8 (quint8), i8 (qint8) or i32 (qint32)."""
    qparams: QParams
    """Output qparams, per-tensor or per-axis."""
    rounding: str = field(default="fbgemm", metadata={"omit_default": True})
    """"fbgemm": torch.quantize_per_tensor/_per_channel (rint(fma(x, 1f / f32(scale), zp))).
    "decomposed": PT2E's quantized_decomposed.quantize_per_tensor, per tensor, u8/i8 only
    (clamp(rint(f32(x * f32(1.0 / scale))) + zp); NaN -> 0): `quant_math.quantize_decomposed`.
    """


_QDTYPES = ("u8", "i8", "i32")
_ROUNDINGS = ("fbgemm", "decomposed")


def _check_rounding(attrs: QuantizeAttrs, op: str) -> None:
    if attrs.rounding not in _ROUNDINGS:
        raise TypeInferenceError(
            f"{op}: rounding {attrs.rounding!r} is not supported; supported: {_ROUNDINGS}")
    if attrs.rounding == "decomposed" and (attrs.qparams.axis is not None
                                           or attrs.dtype.short == "i32"):
        raise TypeInferenceError(
            f"{op}: rounding 'decomposed' (PT2E's quantize_per_tensor) supports per-tensor "
            f"u8/i8 outputs only; got {attrs.dtype} with {attrs.qparams}")


def _check_qdtype(dtype: DType, op: str) -> None:
    if dtype.short not in _QDTYPES:
        raise TypeInferenceError(
            f"{op} supports output dtypes quint8 (u8), qint8 (i8), qint32 (i32); got {dtype}")


@register_op
class Quantize(OpDef):
    """q = clamp(zp + rint(x_f32 * (1.0f / scale_f32)), qmin, qmax), per tensor or per axis.

    Exactly torch.quantize_per_tensor / torch.quantize_per_channel (float32 inverse scale,
    round half to even).
    """

    name = "quantize"
    Attrs = QuantizeAttrs
    num_inputs = 1
    torch_counterparts = ("torch.quantize_per_tensor", "torch.quantize_per_channel",
                          "QuantStub / nnq.Quantize")

    def infer_type(self, attrs: QuantizeAttrs, x: TensorType) -> TensorType:
        if x.dtype is not f32 or x.qparams is not None:
            raise TypeInferenceError(f"quantize takes a float32 tensor, got {x}")
        _check_qdtype(attrs.dtype, "quantize")
        _check_rounding(attrs, "quantize")
        return TensorType(x.shape, attrs.dtype, attrs.qparams)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        return qm.quantize(x, sig.out, sig.attrs.rounding)

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.lowering import te_lib

        qp = sig.out.qparams
        assert qp is not None
        return te_lib.quantize(x, qp, sig.out.dtype, name="quantize",
                               rounding=sig.attrs.rounding)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for dtype in (u8, i8, i32):
            for scale in S.EDGE_SCALES:
                for edge_zp in (False, True):
                    zp = S.rand_zp(rng, dtype, edge=edge_zp)
                    ty, x = S.ftensor(rng, (3, 67), scale * 60)
                    x.reshape(-1)[:4] = [0.0, scale * 0.5, -scale * 2.5, scale * 1e12]
                    yield OpSample(QuantizeAttrs(dtype, QParams.per_tensor(scale, zp)), (ty,),
                                   (x,), f"{dtype}-s{scale:g}-zp{zp}")
        for dtype in (u8, i8, i32):
            ty, x = S.ftensor(rng, (4, 5, 9), 3.0)
            scales = [S.rand_scale(rng, 1e-3, 0.5) for _ in range(5)]
            zps = [S.rand_zp(rng, dtype, edge=k % 2 == 0) for k in range(5)]
            yield OpSample(QuantizeAttrs(dtype, QParams.per_axis(scales, zps, 1)), (ty,), (x,),
                           f"per-channel-{dtype}")
        for dtype in (u8, i8):
            for scale in (0.1, 0.0123, 3.7e-5, 7.0):
                zp = S.rand_zp(rng, dtype)
                ty, x = S.ftensor(rng, (2, 75), scale * 150)
                # values at and next to the .5 ties, where the two formulas can differ
                ties = (rng.integers(-130, 130, 60) + 0.5).astype(np.float32) * np.float32(scale)
                x.reshape(-1)[:60] = ties
                x.reshape(-1)[60:66] = [np.nan, np.inf, -np.inf, 0.0, -0.0, scale * 1e9]
                yield OpSample(QuantizeAttrs(dtype, QParams.per_tensor(scale, zp), "decomposed"),
                               (ty,), (x,), f"decomposed-{dtype}-s{scale:g}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        from qcompiler.testing.torch_bridge import to_numpy

        qp: QParams = sample.attrs.qparams
        tdtype = getattr(torch, sample.attrs.dtype.torch_qname)
        x = torch.from_numpy(sample.arrays[0])
        if sample.attrs.rounding == "decomposed":
            return _quantize_decomposed_torch(x, sample.attrs)
        if qp.axis is None:
            return to_numpy(torch.quantize_per_tensor(x, qp.scale_value, qp.zp_value, tdtype))
        return to_numpy(torch.quantize_per_channel(
            x, torch.tensor(qp.scale, dtype=torch.float64),
            torch.tensor(qp.zero_point, dtype=torch.int64), qp.axis, tdtype))


@register_op
class Dequantize(OpDef):
    """x = (float32(q) - float32(zp)) * float32(scale), per tensor or per axis (Tensor.dequantize)."""

    name = "dequantize"
    num_inputs = 1
    torch_counterparts = ("Tensor.dequantize", "DeQuantStub / nnq.DeQuantize")

    def infer_type(self, attrs: object, x: TensorType) -> TensorType:
        if x.qparams is None or x.qparams.scheme == "float_qparams":
            raise TypeInferenceError(f"dequantize takes a quantized tensor, got {x}")
        return TensorType(x.shape, f32)

    def reference(self, sig: Sig, q: np.ndarray) -> np.ndarray:
        qp = sig.in_types[0].qparams
        assert qp is not None
        return qm.dequantize(q, qp)

    def lower(self, sig: Sig, q: Any) -> Any:
        from qcompiler.lowering import te_lib

        qp = sig.in_types[0].qparams
        assert qp is not None
        return te_lib.dequantize(q, qp, name="dequantize")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for dtype in (u8, i8, i32):
            for scale in S.EDGE_SCALES:
                zp = S.rand_zp(rng, dtype, edge=scale > 1)
                ty, q = S.qtensor(rng, (5, 33), dtype, scale, zp)
                yield OpSample(self.Attrs(), (ty,), (q,), f"{dtype}-s{scale:g}-zp{zp}")
        for dtype in (u8, i8):
            ty, q = S.qtensor_per_channel(rng, (6, 4, 7), 0, dtype)
            yield OpSample(self.Attrs(), (ty,), (q,), f"per-channel-{dtype}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        return to_numpy(to_torch(sample.arrays[0], sample.in_types[0]).dequantize())


@register_op
class Requantize(OpDef):
    """Change qparams/dtype: quantize(dequantize(q)) with the float32 steps of both.

    PyTorch has no single op for this; it is what a DeQuantize followed by a Quantize computes,
    and what FX/PT2E graphs express as dequantize -> quantize_per_tensor.
    """

    name = "requantize"
    Attrs = QuantizeAttrs
    num_inputs = 1
    torch_counterparts = ("torch.quantize_per_tensor(x.dequantize(), ...)",)

    def infer_type(self, attrs: QuantizeAttrs, x: TensorType) -> TensorType:
        if x.qparams is None:
            raise TypeInferenceError(f"requantize takes a quantized tensor, got {x}")
        _check_qdtype(attrs.dtype, "requantize")
        _check_rounding(attrs, "requantize")
        return TensorType(x.shape, attrs.dtype, attrs.qparams)

    def reference(self, sig: Sig, q: np.ndarray) -> np.ndarray:
        qp = sig.in_types[0].qparams
        assert qp is not None
        return qm.quantize(qm.dequantize(q, qp), sig.out, sig.attrs.rounding)

    def lower(self, sig: Sig, q: Any) -> Any:
        from qcompiler.lowering import te_lib

        in_qp, out_qp = sig.in_types[0].qparams, sig.out.qparams
        assert in_qp is not None and out_qp is not None
        return te_lib.requantize(q, in_qp, out_qp, sig.out.dtype, name="requantize",
                                 rounding=sig.attrs.rounding)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for src, dst in ((u8, u8), (u8, i8), (i8, u8), (i32, u8), (i8, i32)):
            for k in range(3):
                ty, q = S.qtensor(rng, (2, 45), src, S.rand_scale(rng, 1e-3, 1.0),
                                  S.rand_zp(rng, src, edge=k == 2))
                out = QParams.per_tensor(S.rand_scale(rng, 1e-3, 1.0), S.rand_zp(rng, dst, k == 1))
                yield OpSample(QuantizeAttrs(dst, out), (ty,), (q,), f"{src}->{dst}-{k}")
        for src, dst in ((u8, u8), (i8, u8), (u8, i8)):
            ty, q = S.qtensor(rng, (3, 50), src, 0.02, S.rand_zp(rng, src))
            out = QParams.per_tensor(0.04, S.rand_zp(rng, dst))  # every other value is a tie
            yield OpSample(QuantizeAttrs(dst, out, "decomposed"), (ty,), (q,),
                           f"decomposed-{src}->{dst}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        qp: QParams = sample.attrs.qparams
        x = to_torch(sample.arrays[0], sample.in_types[0]).dequantize()
        if sample.attrs.rounding == "decomposed":
            return _quantize_decomposed_torch(x, sample.attrs)
        return to_numpy(torch.quantize_per_tensor(
            x, qp.scale_value, qp.zp_value, getattr(torch, sample.attrs.dtype.torch_qname)))


def _quantize_decomposed_torch(x: Any, attrs: QuantizeAttrs) -> np.ndarray:
    """PT2E's quantized_decomposed.quantize_per_tensor on a float32 torch tensor."""
    import torch
    from torch.ao.quantization.fx import _decomposed  # noqa: F401  (registers the ops)

    d, qp = attrs.dtype, attrs.qparams
    out = torch.ops.quantized_decomposed.quantize_per_tensor(
        x.float(), qp.scale_value, qp.zp_value, d.qmin, d.qmax, getattr(torch, np.dtype(d.np).name))
    return out.numpy()
