"""Bad inputs to qnn.linear*, qnn.matmul and qnn.conv_transpose*d get clear, named errors.

Every message starts with the op name (infer_type) and, through the Builder, the input types;
it says what was found and what is supported. Nothing here needs PyTorch.
"""

from __future__ import annotations

import math

import pytest

from qcompiler.errors import TypeInferenceError, VerifyError
from qcompiler.ir import Builder, QParams, TensorType, ftype, i8, i32, qtype, u8
from qcompiler.ops.conv_transpose import ConvTransposeAttrs
from qcompiler.ops.linear import LinearAttrs, LinearLeakyReLUAttrs, MatmulAttrs

OUT = QParams.per_tensor(0.05, 128)
OUT_I8 = QParams.per_tensor(0.05, 0)


def w_pt(shape, zp=0, scheme="affine"):
    return TensorType(tuple(shape), i8, QParams.per_tensor(0.01, zp, scheme))


def w_pc(shape, axis=0, zps=None):
    n = shape[axis]
    return TensorType(tuple(shape), i8,
                      QParams.per_axis([0.01] * n, zps if zps is not None else [0] * n, axis))


def build(op, types, attrs):
    b = Builder()
    vals = [b.input(f"x{k}", t) for k, t in enumerate(types)]
    return b.op(op, vals, attrs, loc="model.layer")


def err(op, types, attrs, match):
    with pytest.raises(TypeInferenceError, match=match) as e:
        build(op, types, attrs)
    msg = str(e.value)
    assert msg.startswith(f"{op}(") and " at model.layer: " in msg, msg
    assert f": {op}: " in msg, msg
    return msg


X = qtype([4, 6], u8, 0.1, 3)
W = w_pt([5, 6])


# --- linear --------------------------------------------------------------------------------------


def test_linear_valid_shapes():
    assert build("qnn.linear", [qtype([2, 3, 6], u8, 0.1, 3), W, ftype([5])],
                 LinearAttrs(OUT)).type == TensorType((2, 3, 5), u8, OUT)
    assert build("qnn.linear_relu", [X, w_pc([5, 6], zps=[0, 1, -2, 3, 127])],
                 LinearAttrs(OUT)).type.shape == (4, 5)
    t = build("qnn.linear_tanh", [qtype([6], i8, 0.1, -3), W], LinearAttrs(OUT_I8, i8)).type
    assert t == TensorType((5,), i8, OUT_I8)


def test_feature_mismatch():
    msg = err("qnn.linear", [X, w_pt([5, 7])], LinearAttrs(OUT), "feature mismatch")
    assert "input has 6 features" in msg and "[5, 7]" in msg


@pytest.mark.parametrize("op", ["qnn.linear", "qnn.linear_relu"])
def test_fbgemm_linear_rejects_qint8_activations(op):
    err(op, [qtype([4, 6], i8, 0.1, 0), W], LinearAttrs(OUT_I8, i8),
        r"input is qint8 \(i8\); supported: quint8 \(u8\).*rejects qint8")


def test_float_and_per_channel_activations():
    err("qnn.linear", [ftype([4, 6]), W], LinearAttrs(OUT), "quantize it first")
    xpc = TensorType((4, 6), u8, QParams.per_axis([0.1] * 4, [0] * 4, 0))
    err("qnn.linear", [xpc, W], LinearAttrs(OUT), "per-channel qparams.*only weights")
    err("qnn.matmul", [xpc, qtype([6, 2], u8, 0.1, 0)], MatmulAttrs(OUT), "per-channel")


def test_activation_zero_point_out_of_range():
    err("qnn.linear", [qtype([4, 6], u8, 0.1, 300), W], LinearAttrs(OUT), "outside the u8 range")


def test_fbgemm_linear_needs_rank2():
    err("qnn.linear", [qtype([6], u8, 0.1, 0), W], LinearAttrs(OUT), r"rank >= 2.*\[1, K\]")


@pytest.mark.parametrize("wt, match", [
    (TensorType((5, 6), u8, QParams.per_tensor(0.1, 0)), r"weight must be a quantized i8"),
    (ftype([5, 6]), r"quantize float weights to qint8 first"),
    (w_pt([5, 6, 1]), r"weight must be 2-D \[out_features, in_features\]"),
    (w_pc([5, 6], axis=1), r"per-channel on axis 0.*axis=1"),
    (TensorType((5, 6), i8, QParams.per_tensor(0.1, 3, "symmetric")), "need zero points 0"),
    (TensorType((5, 6), i8, QParams.per_tensor(0.1, 200)), r"-128..127"),
    (TensorType((0, 6), i8, QParams.per_tensor(0.1, 0)), "empty dimension"),
])
def test_bad_weights(wt, match):
    err("qnn.linear", [X, wt], LinearAttrs(OUT), match)


def test_bad_bias():
    err("qnn.linear", [X, W, ftype([6])], LinearAttrs(OUT), r"bias must have shape \[5\]")
    err("qnn.linear", [X, W, qtype([5], i32, 0.001, 0)], LinearAttrs(OUT),
        "bias must be an unquantized float32")
    err("qnn.linear", [X, W, ftype([5], i32)], LinearAttrs(OUT), "unquantized float32")


def test_bad_output_attrs():
    err("qnn.linear", [X, W], LinearAttrs(OUT_I8, i8), "out_dtype i8 is not supported.*quint8")
    err("qnn.linear", [X, W], LinearAttrs(QParams.per_axis([0.1] * 5, [0] * 5, 0)),
        "out_qparams must be per-tensor")
    err("qnn.linear", [X, W], LinearAttrs(QParams.per_tensor(0.1, -1)),
        "output zero point -1 is outside the u8 range")
    err("qnn.linear_tanh", [qtype([4, 6], i8, 0.1, 0), W], LinearAttrs(OUT),
        "output dtype is i8.*activation's dtype")


def test_onednn_variants_need_symmetric_weights():
    msg = err("qnn.linear_leaky_relu", [X, w_pc([5, 6], zps=[0, 0, 1, 0, 0])],
              LinearLeakyReLUAttrs(OUT, 0.1), "weights must be symmetric")
    assert "onednn engine" in msg
    err("qnn.linear_tanh", [X, w_pt([5, 6], zp=-4)], LinearAttrs(OUT), "symmetric")


def test_leaky_slope_must_be_finite():
    err("qnn.linear_leaky_relu", [X, W], LinearLeakyReLUAttrs(OUT, math.nan),
        "negative_slope must be a finite float")
    assert LinearLeakyReLUAttrs(OUT, 1).negative_slope == 1.0  # ints normalize to float


def test_linear_arity_and_attrs_class():
    with pytest.raises(VerifyError, match="takes 2 or 3 inputs, got 1"):
        build("qnn.linear", [X], LinearAttrs(OUT))
    with pytest.raises(VerifyError, match="takes 2 or 3 inputs, got 4"):
        build("qnn.linear", [X, W, ftype([5]), ftype([5])], LinearAttrs(OUT))
    with pytest.raises(VerifyError, match="takes attrs LinearLeakyReLUAttrs"):
        build("qnn.linear_leaky_relu", [X, W], LinearAttrs(OUT))


# --- matmul --------------------------------------------------------------------------------------


def test_matmul_shapes():
    a = qtype([2, 3, 4], u8, 0.1, 3)
    assert build("qnn.matmul", [a, qtype([4, 5], u8, 0.2, 1)],
                 MatmulAttrs(OUT)).type.shape == (2, 3, 5)
    assert build("qnn.matmul", [qtype([4], u8, 0.1, 3), a.with_shape((7, 1, 4, 2))],
                 MatmulAttrs(OUT)).type.shape == (7, 1, 2)
    assert build("qnn.matmul", [a, qtype([4], u8, 0.1, 3)],
                 MatmulAttrs(OUT)).type.shape == (2, 3)


def test_matmul_errors():
    a = qtype([2, 3, 4], u8, 0.1, 3)
    err("qnn.matmul", [a, qtype([5, 2], u8, 0.1, 0)], MatmulAttrs(OUT),
        r"inner dimensions differ: \[2, 3, 4\] @ \[5, 2\]")
    err("qnn.matmul", [a, qtype([3, 4, 2], u8, 0.1, 0)], MatmulAttrs(OUT), "do not broadcast")
    err("qnn.matmul", [a, qtype([4, 2], i8, 0.1, 0)], MatmulAttrs(OUT), "same dtype")
    err("qnn.matmul", [a, ftype([4, 2])], MatmulAttrs(OUT), "second operand must be a quantized")
    err("qnn.matmul", [a, qtype([4, 2], i32, 0.1, 0)], MatmulAttrs(OUT),
        r"second operand is qint32 \(i32\)")
    err("qnn.matmul", [qtype([], u8, 0.1, 0), a], MatmulAttrs(OUT), "rank >= 1")
    err("qnn.matmul", [a, qtype([4, 2], u8, 0.1, 0)], MatmulAttrs(OUT_I8, i8),
        "out_dtype i8 is not supported")


# --- conv_transpose ------------------------------------------------------------------------------

CX = qtype([1, 4, 5, 5], u8, 0.1, 3)
CW = w_pt([4, 3, 3, 3])


def ct(**kw):
    return ConvTransposeAttrs(OUT, **kw)


def test_conv_transpose_valid_shapes():
    t = build("qnn.conv_transpose2d", [CX, CW, ftype([3])],
              ct(stride=2, padding=1, output_padding=1)).type
    assert t == TensorType((1, 3, 10, 10), u8, OUT)
    t = build("qnn.conv_transpose2d", [CX, w_pt([4, 3, 2, 3], zp=-7)],
              ct(stride=(2, 1), dilation=(1, 3), groups=2, output_padding=(1, 2))).type
    assert t.shape == (1, 6, 11, 13)
    t = build("qnn.conv_transpose1d", [qtype([2, 2, 7], u8, 0.1, 0), w_pt([2, 5, 4])],
              ct(stride=3, padding=2)).type
    assert t.shape == (2, 5, 18)


def test_output_padding_must_be_below_stride_or_dilation():
    msg = err("qnn.conv_transpose2d", [CX, CW], ct(stride=2, output_padding=2),
              "output_padding must be smaller than either stride or dilation")
    assert "output_padding=[2, 2], stride=[2, 2], dilation=[1, 1]" in msg
    err("qnn.conv_transpose1d", [qtype([1, 4, 5], u8, 0.1, 0), w_pt([4, 3, 3])],
        ct(output_padding=1), "smaller than either stride or dilation")


def test_conv_transpose_rejects_per_channel_weights():
    for axis in (0, 1):
        err("qnn.conv_transpose2d", [CX, w_pc([4, 3, 3, 3], axis=axis)], ct(),
            "per-channel.*reject per-channel weights for transposed conv")


def test_conv_transpose_channel_errors():
    err("qnn.conv_transpose2d", [CX, w_pt([3, 4, 3, 3])], ct(),
        r"channel mismatch: the input has 4 channels.*\(dim 0 must be 4\)")
    err("qnn.conv_transpose2d", [CX, CW], ct(groups=3), "not divisible by groups=3")
    err("qnn.conv_transpose2d", [CX, CW, ftype([3])], ct(groups=2),
        r"bias must have shape \[6\] \(C_out = weight dim 1 \* groups\)")
    err("qnn.conv_transpose2d", [CX, CW], ct(groups=0), "groups must be a positive int")


def test_conv_transpose_other_errors():
    err("qnn.conv_transpose2d", [qtype([1, 4, 5, 5], i8, 0.1, 0), CW], ct(),
        r"qint8 \(i8\).*only quint8")
    err("qnn.conv_transpose2d", [qtype([1, 4, 5], u8, 0.1, 0), CW], ct(),
        r"input must be 4-D \[N, C, H, W\]")
    err("qnn.conv_transpose2d", [CX, w_pt([4, 3, 3])], ct(),
        r"weight must be 4-D \[C_in, C_out/groups, H, W\]")
    err("qnn.conv_transpose2d", [CX, CW], ct(stride=0), "stride values must be >= 1")
    err("qnn.conv_transpose2d", [CX, CW], ct(padding=-1), "padding values must be >= 0")
    err("qnn.conv_transpose2d", [CX, CW], ct(stride=(1, 2, 3)),
        r"stride must be 2 int\(s\)")
    err("qnn.conv_transpose2d", [CX, CW], ct(padding=5), "output would be empty")
    err("qnn.conv_transpose2d", [CX, CW], ConvTransposeAttrs(OUT_I8, out_dtype=i8),
        "out_dtype i8 is not supported")
    err("qnn.conv_transpose2d", [CX, ftype([4, 3, 3, 3])], ct(), "quantize float weights")
    err("qnn.conv_transpose3d", [CX, CW], ct(), r"input must be 5-D \[N, C, D, H, W\]")
