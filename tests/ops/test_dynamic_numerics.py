"""The float32 building blocks of the dynamic ops, checked one by one against PyTorch.

The registry test compares whole ops on their samples; these sweep each helper over many
random and edge-case inputs, so a change in PyTorch's numerics shows up where it happens.
"""

import ctypes
import ctypes.util
from fractions import Fraction

import numpy as np
import pytest

from qcompiler.ops import dynamic as D

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
F32 = np.float32


def test_fma_f32_is_correctly_rounded():
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal((3, 3000)) * np.exp(rng.uniform(-20, 20, (3, 3000))))
    a, b, c = a.astype(F32), b.astype(F32), c.astype(F32)
    c[::3] = (-(a[::3].astype(np.float64) * b[::3])).astype(F32)  # heavy cancellation
    r = D.fma_f32(a, b, c)
    for k in range(a.size):
        exact = Fraction(float(a[k])) * Fraction(float(b[k])) + Fraction(float(c[k]))
        rk = r[k]
        up = np.nextafter(rk, F32(np.inf))
        dn = np.nextafter(rk, F32(-np.inf))
        err = abs(Fraction(float(rk)) - exact)
        assert err <= abs(Fraction(float(up)) - exact), (a[k], b[k], c[k])
        assert err <= abs(Fraction(float(dn)) - exact), (a[k], b[k], c[k])


def test_choose_dynamic_qparams_matches_pytorch():
    rng = np.random.default_rng(1)
    for i in range(3000):
        v = (rng.standard_normal(2) * 10 ** rng.uniform(-9, 4, 2)).astype(F32)
        if i % 5 == 0:
            v[0] = 0
        if i % 7 == 0:
            v = -np.abs(v)
        if i % 9 == 0:
            v = np.abs(v)
        if i % 11 == 0:
            v[1] = v[0]
        if i % 13 == 0:
            v = (v * F32(1e-38)).astype(F32)
        lo, hi = F32(v.min()), F32(v.max())
        for rr in (False, True):
            s, z = torch._choose_qparams_per_tensor(torch.tensor([lo, hi]), rr)
            assert D.choose_dynamic_qparams(lo, hi, rr) == (F32(s), z), (lo, hi, rr)


def test_expf_glibc_matches_libm():
    name = ctypes.util.find_library("m")
    if name is None or "libm.so.6" not in name:
        pytest.skip("needs glibc's libm")
    libm = ctypes.CDLL(name)
    libm.expf.restype, libm.expf.argtypes = ctypes.c_float, [ctypes.c_float]
    rng = np.random.default_rng(2)
    x = np.concatenate([(rng.standard_normal(40000) * 20).astype(F32),
                        np.array([0, -0.0, 88.72, 88.73, -103.9, -104, -150, 1e-30,
                                  np.inf, -np.inf], F32)])
    ours = D.expf_glibc(x)
    theirs = np.array([libm.expf(float(v)) for v in x], F32)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("shape", [(1, 20), (3, 45), (2, 64), (5, 33), (4, 200)])
def test_sigmoid_matches_pytorch_gate_chunks(shape):
    """A [B, H] chunk of a [B, 4H] gate tensor, sigmoid_ in place, as RNN.cpp does it."""
    rng = np.random.default_rng(3)
    b, h = shape
    g = (rng.standard_normal((b, 4 * h)) * 6).astype(F32)
    g[:, h:h + 4] = [-200, 200, 0, 1e-3]
    t = torch.from_numpy(g.copy())
    theirs = t.chunk(4, 1)[1].sigmoid_().numpy()
    np.testing.assert_array_equal(D.sigmoid_f32(g[:, h:2 * h]), theirs)


def test_tanh_is_within_one_ulp_of_pytorch():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(200000) * 3).astype(F32)
    ours, theirs = D.tanh_f32(x), torch.tanh(torch.from_numpy(x)).numpy()
    ulps = np.abs(ours.view(np.int32).astype(np.int64) - theirs.view(np.int32))
    assert ulps.max() <= 1
    assert (ulps != 0).mean() < 5e-3  # measured 1.3e-3 (MKL vmsTanh vs correctly rounded)


def _qweight(rng, n, k, per_channel):
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    if per_channel:
        s = 10 ** rng.uniform(-4, 0, n)
        z = rng.integers(-128, 128, n)
        t = torch._make_per_channel_quantized_tensor(
            torch.from_numpy(w), torch.tensor(s), torch.tensor(z), 0)
    else:
        s = np.array([10 ** rng.uniform(-4, 0)])
        z = np.array([int(rng.integers(-128, 128))])
        t = torch._make_per_tensor_quantized_tensor(torch.from_numpy(w), float(s[0]), int(z[0]))
    return w, s.astype(np.float64).astype(F32), z, t


def test_linear_int8_sweep_matches_fbgemm():
    rng = np.random.default_rng(5)
    for it in range(300):
        m, k, n = int(rng.integers(1, 9)), int(rng.integers(1, 300)), int(rng.integers(1, 40))
        sc = 10 ** rng.uniform(-8, 4)
        x = (rng.standard_normal((m, k)) * sc + rng.uniform(-1, 1) * sc * (it % 3)).astype(F32)
        if it % 11 == 0:
            x = np.abs(x)
        if it % 13 == 0:
            x = -np.abs(x)
        if it % 17 == 0:
            x[:] = 0
        if it % 19 == 0:  # exact ties of the activation quantizer
            x = (np.round(x / sc * 4) * (sc / 4)).astype(F32)
        w, s, z, wt = _qweight(rng, n, k, it % 2 == 0)
        bias = (rng.standard_normal(n) * sc).astype(F32) if it % 5 else None
        rr, relu = bool(it % 3), it % 7 == 0
        packed = torch.ops.quantized.linear_prepack(
            wt, None if bias is None else torch.from_numpy(bias))
        fn = torch.ops.quantized.linear_relu_dynamic if relu else torch.ops.quantized.linear_dynamic
        theirs = fn(torch.from_numpy(x), packed, reduce_range=rr).numpy()
        np.testing.assert_array_equal(D.linear_int8(x, w, s, z, bias, rr, relu), theirs,
                                      err_msg=f"case {it}")


def test_linear_fp16_sweep_matches_fbgemm():
    rng = np.random.default_rng(6)
    for it in range(60):
        m, n = int(rng.integers(1, 12)), int(rng.integers(1, 70))
        k = int(rng.integers(1, 120)) if it % 10 else int(rng.integers(513, 1100))
        x = (rng.standard_normal((m, k)) * 10 ** rng.uniform(-3, 3)).astype(F32)
        w = (rng.standard_normal((n, k)) * 10 ** rng.uniform(-3, 1)).astype(np.float16)
        bias = rng.standard_normal(n).astype(F32) if it % 3 else None
        relu = it % 4 == 0
        packed = torch.ops.quantized.linear_prepack_fp16(
            torch.from_numpy(w.astype(F32)), None if bias is None else torch.from_numpy(bias))
        fn = (torch.ops.quantized.linear_relu_dynamic_fp16 if relu
              else torch.ops.quantized.linear_dynamic_fp16)
        theirs = fn(torch.from_numpy(x), packed).numpy()
        np.testing.assert_array_equal(D.linear_fp16(x, w, bias, relu), theirs,
                                      err_msg=f"case {it}")
