"""qnn.conv*: bad inputs get clear errors; the accumulator and the kernel choice are right.

The registry-driven test (test_reference_vs_torch.py) compares the outputs with PyTorch; these
tests pin the type rules (messages name the op and what is supported) and check the fast
im2col accumulator against a direct loop, without torch.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from qcompiler.errors import TypeInferenceError
from qcompiler.ir import Builder, QParams, TensorType, f32, i8, parse, print_graph, u8, verify
from qcompiler.ops.conv import ConvAttrs, conv_accumulate, requant_path
from qcompiler.reference.interpreter import interpret

OUT = QParams.per_tensor(0.1, 5)


def x_type(shape, dtype=u8, qp=None):
    return TensorType(tuple(shape), dtype, QParams.per_tensor(0.05, 3) if qp is None else qp)


def w_type(shape, zp=0, scheme="symmetric"):
    return TensorType(tuple(shape), i8, QParams.per_tensor(0.01, zp, scheme))


def build(op, types, attrs=None):
    b = Builder()
    vals = [b.input(f"in{k}", t) for k, t in enumerate(types)]
    return b.op(op, vals, attrs or ConvAttrs(OUT))


# --- type errors -------------------------------------------------------------------------------


def test_channel_mismatch():
    with pytest.raises(TypeInferenceError, match=r"qnn.conv2d: channel mismatch: the input has 4"
                       r" channels, so with groups=2 the weight needs 2 input channels per group"):
        build("qnn.conv2d", [x_type((1, 4, 5, 5)), w_type((6, 4, 3, 3))],
              ConvAttrs(OUT, groups=2))


def test_groups_must_divide_channels():
    with pytest.raises(TypeInferenceError, match="input channels 6 are not divisible by groups=4"):
        build("qnn.conv2d", [x_type((1, 6, 5, 5)), w_type((8, 1, 3, 3))], ConvAttrs(OUT, groups=4))
    with pytest.raises(TypeInferenceError, match=r"output channels 6 \(weight dim 0\) are not"
                       " divisible by groups=4"):
        build("qnn.conv1d", [x_type((1, 8, 5)), w_type((6, 2, 3))], ConvAttrs(OUT, groups=4))
    with pytest.raises(TypeInferenceError, match="groups must be a positive int, got 0"):
        build("qnn.conv1d", [x_type((1, 8, 5)), w_type((6, 2, 3))], ConvAttrs(OUT, groups=0))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_mode(mode):
    with pytest.raises(TypeInferenceError, match=rf"qnn.conv2d: padding_mode '{mode}' is not"
                       r" supported; supported: 'zeros' \(express reflect/replicate/circular"):
        build("qnn.conv2d", [x_type((1, 3, 5, 5)), w_type((4, 3, 3, 3))],
              ConvAttrs(OUT, padding=1, padding_mode=mode))


def test_per_channel_activations():
    qp = QParams.per_axis([0.1, 0.2, 0.3], [1, 2, 3], 1)
    with pytest.raises(TypeInferenceError, match=r"input must be quantized per tensor, got"
                       r" per-channel qparams \(axis=1\); only weights may be per-channel"):
        build("qnn.conv2d", [x_type((1, 3, 5, 5), qp=qp), w_type((4, 3, 3, 3))])


def test_float_weights():
    with pytest.raises(TypeInferenceError, match=r"qnn.conv3d: weight must be a quantized i8"
                       r" \(qint8\) tensor, got f32\[4,3,1,1,1\] \(quantize float weights"):
        build("qnn.conv3d", [x_type((1, 3, 2, 2, 2)), TensorType((4, 3, 1, 1, 1), f32)])


def test_float_and_qint8_activations():
    with pytest.raises(TypeInferenceError, match=r"input must be a quantized u8 \(quint8\)"):
        build("qnn.conv2d", [TensorType((1, 3, 5, 5), f32), w_type((4, 3, 3, 3))])
    with pytest.raises(TypeInferenceError, match=r"input is qint8 \(i8\); PyTorch's quantized conv"
                       r" accepts only quint8 \(u8\) activations"):
        build("qnn.conv2d", [x_type((1, 3, 5, 5), i8), w_type((4, 3, 3, 3))])


def test_weight_qparams():
    pc_axis1 = TensorType((4, 3, 3, 3), i8, QParams.per_axis([0.1] * 3, [0] * 3, 1))
    with pytest.raises(TypeInferenceError, match="per-channel on axis 0 .* got axis=1"):
        build("qnn.conv2d", [x_type((1, 3, 5, 5)), pc_axis1])
    with pytest.raises(TypeInferenceError, match="symmetric weight qparams need zero points 0"):
        build("qnn.conv2d", [x_type((1, 3, 5, 5)), w_type((4, 3, 3, 3), 2, "symmetric")])


def test_conv2d_add_needs_symmetric_weights_and_matching_residual():
    x, w_aff = x_type((1, 3, 5, 5)), w_type((4, 3, 3, 3), 3, "affine")
    res = x_type((1, 4, 3, 3))
    with pytest.raises(TypeInferenceError, match="qnn.conv2d_add: weights must be symmetric .*"
                       " only in oneDNN"):
        build("qnn.conv2d_add", [x, w_aff, res])
    with pytest.raises(TypeInferenceError, match=r"residual input shape \[1, 4, 5, 5\] differs"
                       r" from the conv output shape \[1, 4, 3, 3\]"):
        build("qnn.conv2d_add_relu", [x, w_type((4, 3, 3, 3)), x_type((1, 4, 5, 5))])
    with pytest.raises(TypeInferenceError, match="residual input must be a quantized u8"):
        build("qnn.conv2d_add", [x, w_type((4, 3, 3, 3)), TensorType((1, 4, 3, 3), f32)])


def test_bias_rank_shape_and_attrs():
    x, w = x_type((1, 3, 5, 5)), w_type((4, 3, 3, 3))
    with pytest.raises(TypeInferenceError, match=r"bias must be an unquantized f32 tensor of"
                       r" shape \[4\], got f32\[3\]"):
        build("qnn.conv2d", [x, w, TensorType((3,), f32)])
    with pytest.raises(TypeInferenceError, match=r"qnn.conv1d: input must be 3-D \[N, C, L\]"):
        build("qnn.conv1d", [x, w])
    with pytest.raises(TypeInferenceError, match=r"stride values must be >= 1, got \[1, 0\]"):
        build("qnn.conv2d", [x, w], ConvAttrs(OUT, stride=(1, 0)))
    with pytest.raises(TypeInferenceError, match=r"padding must be 2 int\(s\)"):
        build("qnn.conv2d", [x, w], ConvAttrs(OUT, padding=(1, 1, 1)))
    with pytest.raises(TypeInferenceError, match=r"spatial dim 0: input size 5 with padding 0 is"
                       r" smaller than the dilated kernel \(3\*\(3-1\)\+1\)"):
        build("qnn.conv2d", [x, w], ConvAttrs(OUT, dilation=3))
    with pytest.raises(TypeInferenceError, match=r"out_dtype i8 is not supported"):
        build("qnn.conv2d", [x, w], ConvAttrs(OUT, out_dtype=i8))
    with pytest.raises(TypeInferenceError, match="out_qparams must be per-tensor"):
        build("qnn.conv2d", [x, w], ConvAttrs(QParams.per_axis([0.1] * 4, [0] * 4, 1)))


def test_builder_error_names_op_and_location():
    b = Builder()
    x = b.input("x", x_type((1, 3, 5, 5)))
    w = b.input("w", w_type((4, 2, 3, 3)))
    with pytest.raises(TypeInferenceError) as e:
        b.op("qnn.conv2d_relu", [x, w], ConvAttrs(OUT), loc="model.layer1.conv")
    assert str(e.value).startswith("qnn.conv2d_relu(u8[1,3,5,5] q(0.05, 3), i8[4,2,3,3]")
    assert "at model.layer1.conv: qnn.conv2d_relu: channel mismatch" in str(e.value)


# --- attrs and text form -----------------------------------------------------------------------


def test_attrs_normalize_and_roundtrip():
    a = ConvAttrs(OUT, stride=2, padding=[1, 0], dilation=(1,))
    assert a.stride == (2,) and a.padding == (1, 0) and hash(a)
    b = Builder()
    x = b.input("x", x_type((2, 4, 7, 6)))
    w = b.const(np.ones((6, 2, 3, 3), np.int8), w_type((6, 2, 3, 3)), "w")
    bias = b.const(np.arange(6, dtype=np.float32), TensorType((6,), f32), "b")
    y = b.op("qnn.conv2d", [x, w, bias], ConvAttrs(OUT, stride=2, padding=[1, 0], groups=2))
    assert y.type.shape == (2, 6, 4, 2)
    g = b.finish(y)
    verify(g)
    assert parse(print_graph(g), g.constants) == g


# --- numerics without torch --------------------------------------------------------------------


def _naive_acc(x, zx, w, zw, stride, pad, dil, groups):
    d = x.ndim - 2
    n = x.shape[0]
    o, cg = w.shape[:2]
    og = o // groups
    ks = w.shape[2:]
    out_sp = [(x.shape[2 + k] + 2 * pad[k] - dil[k] * (ks[k] - 1) - 1) // stride[k] + 1
              for k in range(d)]
    acc = np.zeros([n, o, *out_sp], np.int64)
    for b, oc in itertools.product(range(n), range(o)):
        g = oc // og
        for pos in itertools.product(*map(range, out_sp)):
            s = 0
            for ci, kk in itertools.product(range(cg), itertools.product(*map(range, ks))):
                idx = [pos[k] * stride[k] - pad[k] + kk[k] * dil[k] for k in range(d)]
                if all(0 <= i < x.shape[2 + k] for k, i in enumerate(idx)):
                    xv = int(x[(b, g * cg + ci, *idx)]) - zx
                    s += xv * (int(w[(oc, ci, *kk)]) - int(zw[oc]))
            acc[(b, oc, *pos)] = s
    return acc


@pytest.mark.parametrize("d,groups,stride,pad,dil", [
    (1, 1, (2,), (1,), (2,)), (1, 3, (1,), (0,), (1,)),
    (2, 1, (1, 2), (1, 0), (2, 1)), (2, 4, (2, 2), (1, 1), (1, 1)),
    (3, 2, (1, 2, 1), (1, 0, 1), (1, 1, 2)),
])
def test_accumulator_matches_direct_loop(d, groups, stride, pad, dil):
    rng = np.random.default_rng(d * 10 + groups)
    c, o = 2 * groups, 3 * groups if groups > 1 else 3
    x = rng.integers(0, 256, (2, c) + (5, 6, 4)[:d]).astype(np.uint8)
    w = rng.integers(-128, 128, (o, c // groups) + (3, 2, 3)[:d]).astype(np.int8)
    zw = rng.integers(-128, 128, o)
    got = conv_accumulate(x, 200, w, zw, stride, pad, dil, groups)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, _naive_acc(x, 200, w, zw, stride, pad, dil, groups))


def test_accumulator_wraps_mod_2_32():
    x = np.full((1, 40000, 1), 255, np.uint8)
    w = np.full((1, 40000, 1), -128, np.int8)
    acc = conv_accumulate(x, 0, w, np.array([127]), (1,), (0,), (1,), 1)
    exact = 40000 * 255 * -255
    assert acc[0, 0, 0] == (exact + 2**31) % 2**32 - 2**31 and exact < -(2**31)


def test_requant_path_follows_x86_dispatch():
    sym = QParams.per_axis([0.1, 0.2], [0, 0], 0, "symmetric")
    asym = QParams.per_axis([0.1, 0.2], [0, 1], 0)
    assert requant_path(sym, 1) == "onednn"
    assert requant_path(sym, 100) == "onednn"
    assert requant_path(sym, 101) == "fbgemm"
    assert requant_path(asym, 1) == "fbgemm"
    assert requant_path(asym, 1, fused_add=True) == "onednn"


def test_huge_bias_fbgemm_trap_vs_onednn_saturation():
    """|bias/so| >= 2**31: fbgemm's cvtps2dq gives INT32_MIN (output 0), oneDNN saturates (255)."""
    def run(zp, scheme):
        b = Builder()
        x = b.input("x", x_type((1, 1, 1, 1)))
        w = b.input("w", w_type((2, 1, 1, 1), zp, scheme))
        bias = b.input("b", TensorType((2,), f32))
        g = b.finish(b.op("qnn.conv2d", [x, w, bias], ConvAttrs(QParams.per_tensor(1.0, 0))))
        return interpret(g, np.full((1, 1, 1, 1), 3, np.uint8), np.zeros((2, 1, 1, 1), np.int8),
                         np.array([3e9, 2e9], np.float32)).reshape(-1).tolist()
    assert run(1, "affine") == [0, 255]
    assert run(0, "symmetric") == [255, 255]
