"""Elementwise, activation and pooling ops reject bad input with errors that say what is
supported (never a bare KeyError/IndexError), and the PyTorch quirks their docs describe hold."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.errors import TypeInferenceError, VerifyError
from qcompiler.ir import Builder, QParams, TensorType, f32, ftype, i8, i32, qtype, u8
from qcompiler.ir.registry import NoAttrs
from qcompiler.ops.activation import (
    ClampAttrs,
    EluAttrs,
    GeluAttrs,
    HardtanhAttrs,
    OutQAttrs,
    PreluAttrs,
    SoftmaxAttrs,
)
from qcompiler.ops.elementwise import QBinaryAttrs, QCatAttrs, QScalarAttrs
from qcompiler.ops.pool import (
    AdaptivePoolAttrs,
    AvgPoolAttrs,
    MaxPoolAttrs,
    UpsampleBilinearAttrs,
    UpsampleNearestAttrs,
)
from qcompiler.reference.interpreter import interpret

OUT = QParams.per_tensor(0.1, 3)


def build(op: str, in_types: list[TensorType], attrs: object) -> None:
    b = Builder()
    xs = [b.input(f"x{k}", t) for k, t in enumerate(in_types)]
    b.op(op, xs, attrs)


def fails(op: str, in_types: list[TensorType], attrs: object, match: str) -> None:
    with pytest.raises(TypeInferenceError, match=match) as e:
        build(op, in_types, attrs)
    assert op in str(e.value)


# --- elementwise ---------------------------------------------------------------------------


def test_binary_shape_mismatch_names_dims():
    fails("qnn.add", [qtype([2, 3], u8, 0.1, 0), qtype([2, 4], u8, 0.1, 0)],
          QBinaryAttrs(OUT), r"shapes \[2, 3\] and \[2, 4\] do not broadcast.*3 vs 4")
    fails("qnn.mul", [qtype([5], i8, 0.1, 0), qtype([4, 3], i8, 0.1, 0)],
          QBinaryAttrs(OUT), "do not broadcast")


def test_binary_rejects_mixed_and_unsupported_dtypes():
    fails("qnn.add", [qtype([4], u8, 0.1, 0), qtype([4], i8, 0.1, 0)], QBinaryAttrs(OUT),
          "same dtype.*does not mix quint8 and qint8.*quint8 \\(u8\\).*qint8 \\(i8\\)")
    fails("qnn.mul_relu", [qtype([4], i32, 0.1, 0), qtype([4], i32, 0.1, 0)],
          QBinaryAttrs(OUT), r"dtype i32 is not supported; supported: quint8 \(u8\), qint8")
    fails("qnn.add_relu", [ftype([4]), qtype([4], u8, 0.1, 0)], QBinaryAttrs(OUT),
          "must be a quantized tensor")


def test_per_channel_input_rejected():
    pc = TensorType((2, 3), i8, QParams.per_axis([0.1, 0.2], [0, 0], 0))
    fails("qnn.add", [pc, pc], QBinaryAttrs(OUT), "per-tensor qparams")
    fails("qnn.relu", [pc], NoAttrs(), "per-tensor qparams")


def test_output_qparams_checked():
    fails("qnn.add", [qtype([4], u8, 0.1, 0)] * 2, QBinaryAttrs(QParams.per_tensor(0.1, 300)),
          r"zero point 300 is outside the quint8 range \[0, 255\]")
    fails("qnn.mul", [qtype([4], u8, 0.1, 0)] * 2,
          QBinaryAttrs(QParams.per_axis([0.1, 0.2], [0, 0], 0)), "per-tensor QParams")


def test_scalar_ops_need_finite_scalar():
    fails("qnn.add_scalar", [qtype([4], u8, 0.1, 0)], QScalarAttrs(float("inf")),
          "scalar must be finite")
    fails("qnn.mul_scalar", [qtype([4], u8, 0.1, 0)], QScalarAttrs(float("nan")),
          "scalar must be finite")


def test_cat_errors():
    a, b = qtype([2, 3, 4], u8, 0.1, 0), qtype([2, 5, 5], u8, 0.1, 0)
    fails("qnn.cat", [a, b], QCatAttrs(1), r"input 1 has shape \[2, 5, 5\].*except axis 1")
    fails("qnn.cat", [a, a], QCatAttrs(3), r"axis 3 is out of range for rank-3 inputs")
    fails("qnn.cat_relu", [a, qtype([2, 3, 4], i8, 0.1, 0)], QCatAttrs(0), "same dtype")
    fails("qnn.cat", [], QCatAttrs(0), "at least one input")


# --- activations ---------------------------------------------------------------------------


def test_activation_attr_errors():
    x = qtype([8], u8, 0.1, 128)
    fails("qnn.hardtanh", [x], HardtanhAttrs(1.0, -1.0), "min_val .* cannot be greater")
    fails("qnn.clamp", [x], ClampAttrs(None, None), "at least one of min and max")
    fails("qnn.celu", [x], EluAttrs(OUT, 0.0), "alpha cannot be 0")
    fails("qnn.gelu", [x], GeluAttrs("fast"), "approximate must be 'none' or 'tanh'")
    fails("qnn.softmax", [qtype([2, 3], u8, 0.1, 0)], SoftmaxAttrs(2, OUT),
          r"axis 2 is out of range for a rank-2 input \(expected -2..1\)")
    fails("qnn.hardswish", [qtype([4], i32, 0.1, 0)], OutQAttrs(OUT), "supported: quint8")
    fails("qnn.prelu", [qtype([2, 4, 3], u8, 0.1, 0), qtype([3], u8, 0.01, 0)],
          PreluAttrs(OUT), r"weight must have shape \[1\] or \[C\] = \[4\]")


def test_fixed_qparam_ops_reject_qint32():
    fails("qnn.hardsigmoid", [qtype([4], i32, 0.1, 0)], NoAttrs(), "supported: quint8")
    fails("qnn.tanh", [qtype([4], i32, 0.1, 0)], NoAttrs(), "supported: quint8")
    fails("qnn.softmax", [qtype([4], i32, 0.1, 0)], SoftmaxAttrs(0, OUT), "supported: quint8")


# --- pooling -------------------------------------------------------------------------------


@pytest.mark.parametrize("attrs, match", [
    (MaxPoolAttrs((0, 2)), r"kernel_size must be > 0"),
    (MaxPoolAttrs((2, 2), (0, 1)), r"stride must be > 0"),
    (MaxPoolAttrs((2, 2), (), (2, 0)), r"padding \[2, 0\] must be at most half"),
    (MaxPoolAttrs((2, 2), (), (0,), (0, 1)), r"dilation must be > 0"),
    (MaxPoolAttrs((9, 9)), r"too small for kernel \[9, 9\].*output would be"),
    (MaxPoolAttrs((2, 2, 2)), r"kernel_size must have 1 or 2 elements"),
    (MaxPoolAttrs("2x2"), r"kernel_size must be an int or a tuple of ints"),
])
def test_max_pool_bad_params(attrs, match):
    fails("qnn.max_pool2d", [qtype([1, 3, 5, 5], u8, 0.1, 0)], attrs, match)


def test_pool_rank_and_dtype_errors():
    fails("qnn.max_pool2d", [qtype([3, 5, 5], u8, 0.1, 0)], MaxPoolAttrs((2, 2)),
          r"must be 4-D \(N,C,H,W\)")
    fails("qnn.max_pool1d", [qtype([1, 3, 5, 5], u8, 0.1, 0)], MaxPoolAttrs((2,)),
          r"must be 3-D \(N,C,W\)")
    fails("qnn.avg_pool2d", [qtype([1, 3, 5, 5], i32, 0.1, 0)], AvgPoolAttrs((2, 2)),
          "supported: quint8")
    fails("qnn.avg_pool2d", [qtype([1, 3, 5, 5], u8, 0.1, 0)], AvgPoolAttrs((2, 2),
          divisor_override=0), "divisor_override must be a nonzero int")
    fails("qnn.avg_pool3d", [qtype([1, 3, 2, 5, 5], u8, 0.1, 0)], AvgPoolAttrs((3, 2, 2)),
          "too small")
    fails("qnn.adaptive_avg_pool2d", [qtype([1, 3, 5, 5], u8, 0.1, 0)],
          AdaptivePoolAttrs((0, 2)), r"output_size must be > 0")
    fails("qnn.max_pool2d", [ftype([1, 3, 5, 5], f32)], MaxPoolAttrs((2, 2)),
          "must be a quantized tensor")


def test_upsample_errors():
    x = qtype([1, 2, 4, 4], u8, 0.1, 0)
    fails("qnn.upsample_nearest", [x], UpsampleNearestAttrs(), "one of size and scale_factor")
    fails("qnn.upsample_nearest", [x], UpsampleNearestAttrs(None, (2.0, -1.0)),
          "positive finite numbers")
    fails("qnn.upsample_nearest", [x], UpsampleNearestAttrs(None, (0.1, 2.0)),
          r"output size \[0, 8\] must be positive")
    fails("qnn.upsample_nearest", [qtype([1, 2, 4], u8, 0.1, 0)], UpsampleNearestAttrs((8,)),
          "no quantized 1-D nearest upsample")
    fails("qnn.upsample_bilinear", [qtype([1, 2, 2, 4, 4], u8, 0.1, 0)],
          UpsampleBilinearAttrs((8, 8, 8)), "no quantized linear/trilinear")


def test_attrs_class_checked():
    with pytest.raises(VerifyError, match="takes attrs MaxPoolAttrs, got AvgPoolAttrs"):
        build("qnn.max_pool2d", [qtype([1, 3, 5, 5], u8, 0.1, 0)], AvgPoolAttrs((2, 2)))


# --- PyTorch quirks the references document --------------------------------------------------


def _run(op: str, ty: TensorType, attrs: object, x: np.ndarray) -> np.ndarray:
    b = Builder()
    v = b.input("x", ty)
    return interpret(b.finish(b.op(op, [v], attrs)), x)


@pytest.mark.torch
@pytest.mark.parametrize("op, attrs, fn", [
    ("qnn.upsample_nearest", UpsampleNearestAttrs((3, 2)),
     lambda F, x: F.interpolate(x, size=(3, 2))),
    ("qnn.upsample_bilinear", UpsampleBilinearAttrs((3, 2)),
     lambda F, x: F.interpolate(x, size=(3, 2), mode="bilinear")),
    ("qnn.adaptive_avg_pool2d", AdaptivePoolAttrs((3, 2)),
     lambda F, x: F.adaptive_avg_pool2d(x, (3, 2))),
    ("qnn.max_pool2d", MaxPoolAttrs((2, 2), (1, 1), (1, 1)),
     lambda F, x: F.max_pool2d(x, 2, 1, 1)),
])
def test_1x1_input_layout_bug_not_reproduced(op, attrs, fn):
    """PyTorch fills an NCHW output in NHWC order for a 1x1 input with C > 1: its integers are
    ours, permuted. Ours is the intended broadcast of the single input pixel."""
    torch = pytest.importorskip("torch")
    from qcompiler.testing.torch_bridge import to_torch

    ty = qtype([2, 5, 1, 1], u8, 0.1, 10)
    x = np.arange(10, dtype=np.uint8).reshape(2, 5, 1, 1) * 20
    ours = _run(op, ty, attrs, x)
    np.testing.assert_array_equal(ours, np.broadcast_to(x, ours.shape))
    theirs = fn(torch.nn.functional, to_torch(x, ty)).int_repr().numpy()
    n, c, h, w = theirs.shape
    np.testing.assert_array_equal(theirs.reshape(n, h, w, c).transpose(0, 3, 1, 2), ours)


@pytest.mark.torch
def test_3d_nearest_identity_copy_bug_not_reproduced():
    """PyTorch's channels-last nearest3d 'just copy' case copies batch 0 only."""
    torch = pytest.importorskip("torch")
    from qcompiler.testing.torch_bridge import to_torch

    ty = qtype([2, 1, 2, 3, 4], i8, 0.5, 0)
    x = (np.arange(48) % 100).astype(np.int8).reshape(ty.shape)
    ours = _run("qnn.upsample_nearest", ty, UpsampleNearestAttrs((2, 3, 4)), x)
    np.testing.assert_array_equal(ours, x)
    theirs = torch.nn.functional.interpolate(to_torch(x, ty), size=(2, 3, 4)).int_repr().numpy()
    np.testing.assert_array_equal(theirs[0], x[0])
