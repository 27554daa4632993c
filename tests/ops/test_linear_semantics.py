"""Semantics of qnn.linear*, qnn.matmul and qnn.conv_transpose*d beyond the registry tests.

The fast accumulators against slow definitions, oneDNN's tanh, the documented fbgemm overflow
trap, and (with PyTorch) the x86-engine transposed-conv behaviour the op docs rely on.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from qcompiler.ir import QParams, TensorType, f32, i8, u8
from qcompiler.ir.registry import Sig, get_op
from qcompiler.ops.conv_transpose import conv_transpose_accumulate
from qcompiler.ops.linear import LinearAttrs, linear_accumulate
from qcompiler.reference.onednn_eltwise import tanh_f32


def naive_conv_transpose(x, zx, w, zw, stride, padding, out_pad, dil, groups):
    """The definition, one scatter at a time, in Python ints."""
    d = x.ndim - 2
    n, c = x.shape[:2]
    og, ks = w.shape[1], w.shape[2:]
    cg = c // groups
    out_sp = [(x.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dil[i] * (ks[i] - 1)
              + out_pad[i] + 1 for i in range(d)]
    out = np.zeros([n, og * groups] + out_sp, dtype=object)
    for b, ci in itertools.product(range(n), range(c)):
        g = ci // cg
        for pos in np.ndindex(*x.shape[2:]):
            xv = int(x[(b, ci) + pos]) - zx
            for k in np.ndindex(*ks):
                q = [pos[i] * stride[i] - padding[i] + k[i] * dil[i] for i in range(d)]
                if all(0 <= q[i] < out_sp[i] for i in range(d)):
                    for o in range(og):
                        out[(b, g * og + o) + tuple(q)] += xv * (int(w[(ci, o) + k]) - zw)
    return out


@pytest.mark.parametrize("seed", range(12))
def test_conv_transpose_accumulate_matches_definition(seed):
    rng = np.random.default_rng(seed)
    d = 1 + seed % 3
    groups = int(rng.choice([1, 2, 3]))
    cg, og = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    ks = [int(v) for v in rng.integers(1, 4, d)]
    stride = [int(v) for v in rng.integers(1, 4, d)]
    dil = [int(v) for v in rng.integers(1, 3, d)]
    pad = [int(rng.integers(0, dil[i] * (ks[i] - 1) + 1)) for i in range(d)]
    out_pad = [int(rng.integers(0, max(stride[i], dil[i]))) for i in range(d)]
    sp = [int(v) for v in rng.integers(1, 5, d)]
    x = rng.integers(0, 256, [2, cg * groups] + sp, dtype=np.uint8)
    for i in range(d):  # keep the output non-empty
        while (sp[i] - 1) * stride[i] - 2 * pad[i] + dil[i] * (ks[i] - 1) + out_pad[i] < 0:
            pad[i] -= 1
    w = rng.integers(-128, 128, [cg * groups, og] + ks, dtype=np.int8)
    zx, zw = int(rng.integers(0, 256)), int(rng.integers(-128, 128))
    want = naive_conv_transpose(x, zx, w, zw, stride, pad, out_pad, dil, groups)
    got = conv_transpose_accumulate(x, zx, w, zw, stride, pad, out_pad, dil, groups)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want.astype(np.int64))


def test_linear_accumulator_wraps_mod_2_32():
    k = 70000
    x = np.full((1, k), 255, np.uint8)
    w = np.full((2, k), 127, np.int8)
    w[1] = -128
    acc = linear_accumulate(x, 0, w, np.zeros(2, np.int64))
    exact = [255 * 127 * k, -255 * 128 * k]
    assert acc.dtype == np.int32
    assert acc.tolist() == [[(v + 2**31) % 2**32 - 2**31 for v in exact]]


def test_fbgemm_overflow_trap_gives_zero_not_255():
    """|t| >= 2**31 before rounding: fbgemm's cvtps2dq yields INT32_MIN, so y = 0 (or zo)."""
    op, op_relu = get_op("qnn.linear"), get_op("qnn.linear_relu")
    xt = TensorType((1, 2), u8, QParams.per_tensor(0.1, 0))
    wt = TensorType((2, 2), i8, QParams.per_tensor(0.1, 0))
    bt = TensorType((2,), f32)
    attrs = LinearAttrs(QParams.per_tensor(1.0, 7))
    out = TensorType((1, 2), u8, attrs.out_qparams)
    x, w = np.ones((1, 2), np.uint8), np.ones((2, 2), np.int8)
    bias = np.array([2.0**31, 2.0**31 - 256], np.float32)
    sig = Sig((xt, wt, bt), (out,), attrs)
    assert op.reference(sig, x, w, bias).tolist() == [[0, 255]]
    assert op_relu.reference(sig, x, w, bias).tolist() == [[7, 255]]


def test_onednn_tanh_properties():
    v = np.array([0.0, -0.0, 1e-30, -3e-4, 9.02, -1e6, np.inf], np.float32)
    t = tanh_f32(v)
    assert t[0] == 0 and np.signbit(t[1])
    assert t[2] == np.float32(1e-30) and t[3] == np.float32(-3e-4)  # linear region: x itself
    assert t[4] == 1 and t[5] == -1 and t[6] == 1
    x = np.random.default_rng(0).normal(0, 3, 200_000).astype(np.float32)
    t = tanh_f32(x)
    np.testing.assert_array_equal(tanh_f32(-x), -t)
    ulp = np.spacing(np.abs(np.tanh(x.astype(np.float64))).astype(np.float32))
    assert np.max(np.abs(t - np.tanh(x.astype(np.float64))) / ulp) <= 2
    assert np.mean(t != np.tanh(x.astype(np.float64)).astype(np.float32)) > 0.01  # not libm


@pytest.mark.torch
def test_x86_engine_conv_transpose_dispatch_as_documented():
    """x86 runs fbgemm for zw != 0 or output_padding != 0 and oneDNN otherwise; PyTorch 2.13's
    oneDNN transposed conv mis-reads weights when C_in/groups != C_out/groups. If this fails,
    PyTorch changed: revisit ops/conv_transpose.py's doc and torch_reference engine choice."""
    torch = pytest.importorskip("torch")
    from qcompiler.testing.torch_bridge import quantized_engine

    xq = torch._make_per_tensor_quantized_tensor(
        torch.tensor([[[0], [1], [0]]], dtype=torch.uint8), 1.0, 0)
    w = torch.arange(1, 13, dtype=torch.int8).reshape(3, 4, 1)

    def run(engine, zw, out_pad, stride=2):
        qw = torch._make_per_tensor_quantized_tensor(w, 1.0, zw)
        with quantized_engine(engine):
            p = torch.ops.quantized.conv_transpose1d_prepack(qw, None, [stride], [0], [out_pad],
                                                             [1], 1)
            y = torch.ops.quantized.conv_transpose1d(xq, p, 1.0, 100)
        return (y.int_repr()[0, :, 0].to(torch.int64) - 100).tolist()

    want = [5, 6, 7, 8]                                  # w[1, :] (input channel 1 is 1)
    assert run("fbgemm", 0, 0) == want
    assert run("x86", 0, 1) == want                      # output_padding: fbgemm
    assert run("x86", 1, 0) == [v - 1 for v in want]     # weight zero point: fbgemm
    assert run("x86", 0, 0) != want                      # oneDNN path: permuted weights
