"""Numerics pins for ops/elementwise.py, ops/activation.py, ops/pool.py and reference/vecmath.py.

- vecmath's Sleef/ATen emulations equal PyTorch's float kernels bit for bit;
- the float-path ops are exact wherever PyTorch runs its vectorized body (whole 64-element
  blocks): the documented 1-LSB bound comes only from PyTorch's scalar tails;
- integer ops reproduce PyTorch's vector-code overflow behaviour.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from qcompiler.ir import Builder, QParams, TensorType, i8, u8
from qcompiler.ir.registry import OpSample, Sig, get_op
from qcompiler.reference import vecmath as vm
from qcompiler.reference.interpreter import interpret

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
F32 = np.float32


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _floats(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    a = rng.uniform(lo, hi, n)
    b = rng.standard_normal(n) * np.exp(rng.uniform(-12, 3, n))
    return np.concatenate([a, b]).astype(F32)


def test_fma32_is_correctly_rounded():
    rng = np.random.default_rng(1)
    a = _floats(rng, 300, -4, 4)
    b = _floats(rng, 300, -4, 4)
    c = -(a * b).astype(F32)  # cancellation: the error term decides the result
    c[::3] = _floats(rng, 200, -1, 1)[: len(c[::3])]
    got = vm.fma32(a, b, c)
    for x, y, z, g in zip(a, b, c, got):
        exact = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
        lo, hi = np.float32(float(exact)), None
        # correctly rounded: no float32 is strictly closer to the exact value
        for cand in (np.nextafter(lo, np.float32(-np.inf)), lo, np.nextafter(lo, np.float32(np.inf))):
            if abs(Fraction(float(cand)) - exact) < abs(Fraction(float(g)) - exact):
                hi = cand
        assert hi is None, (x, y, z, g, hi)


def test_sleef_expf_matches_torch_sigmoid_vector_body():
    x = _floats(np.random.default_rng(2), 1 << 15, -110, 100)
    got = torch.sigmoid(torch.from_numpy(x)).numpy()
    ref = (F32(1) / (F32(1) + vm.sleef_expf(-x))).astype(F32)
    np.testing.assert_array_equal(ref, got)


def test_sleef_expm1f_matches_torch():
    x = _floats(np.random.default_rng(3), 1 << 15, -20, 90)
    np.testing.assert_array_equal(vm.sleef_expm1f(x), torch.expm1(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("shape, axis", [((5, 1), -1), ((7, 3), -1), ((4, 16), -1),
                                         ((3, 17), -1), ((2, 129), -1), ((2, 5, 4, 8), 1),
                                         ((3, 9, 16), 1), ((2, 3, 48), 0)])
def test_softmax_f32_matches_torch(shape, axis):
    x = (np.random.default_rng(4).standard_normal(shape) * 3).astype(F32)
    got = torch.softmax(torch.from_numpy(x), axis).numpy()
    np.testing.assert_array_equal(vm.softmax_f32(x, axis), got)


# --- float-path ops are exact on PyTorch's vectorized blocks --------------------------------

_BULK_OPS = ["qnn.add", "qnn.add_relu", "qnn.threshold", "qnn.hardswish", "qnn.hardsigmoid",
             "qnn.sigmoid", "qnn.tanh", "qnn.leaky_relu", "qnn.elu", "qnn.celu", "qnn.gelu"]


@pytest.mark.parametrize("name", _BULK_OPS)
def test_vector_rule_exact_on_whole_blocks(name):
    """Trim each sample to whole 64-element blocks (every element on PyTorch's vector path):
    then the reference equals PyTorch exactly."""
    op = get_op(name)
    checked = 0
    for seed in range(4):
        for s in op.samples(np.random.default_rng(seed)):
            if any(a.ndim != 1 or a.size < 64 for a in s.arrays):
                continue
            n = s.arrays[0].size // 64 * 64
            if any(a.size != s.arrays[0].size for a in s.arrays):
                continue
            arrays = tuple(a[:n].copy() for a in s.arrays)
            tys = tuple(TensorType((n,), t.dtype, t.qparams) for t in s.in_types)
            sample = OpSample(s.attrs, tys, arrays, s.label)
            b = Builder()
            out = b.op(name, [b.input(f"x{k}", t) for k, t in enumerate(tys)], s.attrs)
            g = b.finish(out)
            ours = interpret(g, *arrays)
            theirs = op.torch_reference(sample, Sig(tys, (g.outputs[0].type,), s.attrs))
            np.testing.assert_array_equal(ours, theirs, err_msg=s.label)
            checked += n
    assert checked >= 640


# --- overflow behaviour of the vector code -------------------------------------------------


@pytest.mark.parametrize("name", ["qnn.add", "qnn.mul"])
def test_vector_overflow_wraps_like_pytorch(name):
    """An output scale far too small for the values: PyTorch's vector code converts with
    cvtps2dq (INT32_MIN when out of range) and adds zp in wrapping int32 arithmetic."""
    rng = np.random.default_rng(5)
    op = get_op(name)
    wrapped = 0
    for dtype, zo in ((u8, 200), (i8, -7), (i8, 100)):
        ty = TensorType((128,), dtype, QParams.per_tensor(3.7, 1))
        a = rng.integers(dtype.qmin, dtype.qmax + 1, 128).astype(dtype.np)
        b = rng.integers(dtype.qmin, dtype.qmax + 1, 128).astype(dtype.np)
        attrs = op.Attrs(QParams.per_tensor(1e-7, zo))
        bld = Builder()
        g = bld.finish(bld.op(name, [bld.input("a", ty), bld.input("b", ty)], attrs))
        ours = interpret(g, a, b)
        theirs = op.torch_reference(OpSample(attrs, (ty, ty), (a, b)),
                                    Sig((ty, ty), (g.outputs[0].type,), attrs))
        np.testing.assert_array_equal(ours, theirs)
        # the case is real: some results saturate to the wrong end (a scalar loop would not)
        real = (a.astype(np.int64) - 1) * 3.7 + ((b.astype(np.int64) - 1) * 3.7 if
                                                  name == "qnn.add" else 0)
        if name == "qnn.mul":
            real = (a.astype(np.int64) - 1) * (b.astype(np.int64) - 1)
        wrong_end = np.where(real > 0, ours == dtype.qmin, ours == dtype.qmax) & (real != 0)
        wrapped += int(wrong_end.sum())
    assert wrapped > 0
