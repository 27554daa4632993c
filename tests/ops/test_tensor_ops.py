"""Randomized checks of qnn.mean's two paths and of sort/topk where PyTorch leaves ties open.

The registry-driven test covers every op on its samples; these add many random shapes for the
mean (whose float path reproduces PyTorch's summation order) and the documented tie behaviour
of sort/topk, where PyTorch's indices are unspecified and only values can be compared.
"""

import numpy as np
import pytest

from qcompiler.ir import Builder, QParams, TensorType, i8, i32, u8
from qcompiler.ops.tensor import QMeanAttrs, QSortAttrs, QTopkAttrs, torch_sum_f32
from qcompiler.reference.interpreter import interpret

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def run(op, ty, x, attrs):
    b = Builder()
    v = b.input("x", ty)
    out = b.op(op, [v], attrs)
    return interpret(b.finish(*(out if isinstance(out, tuple) else (out,))), x)


def qt(x, ty):
    return torch._make_per_tensor_quantized_tensor(
        torch.from_numpy(x.copy()), ty.qparams.scale_value, ty.qparams.zp_value)


def test_torch_sum_f32_matches_pytorch_order():
    rng = np.random.default_rng(0)
    for _ in range(300):
        nd = int(rng.integers(1, 5))
        shape = [int(v) for v in rng.integers(1, 7, size=nd)]
        if rng.random() < 0.3:
            shape[-1] = int(rng.integers(8, 70))
        if rng.random() < 0.3:
            shape[0] = int(rng.integers(8, 70))
        if np.prod(shape) >= 32768:
            continue  # PyTorch may split a big single-output sum over threads (documented)
        x = (rng.standard_normal(shape) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
        dims = tuple(sorted(rng.choice(nd, size=int(rng.integers(1, nd + 1)), replace=False)))
        want = torch.sum(torch.from_numpy(x), dims, keepdim=True).numpy()
        np.testing.assert_array_equal(torch_sum_f32(x, dims), want, err_msg=f"{shape} {dims}")


@pytest.mark.parametrize("dtype", [u8, i8, i32], ids=str)
def test_mean_matches_pytorch_on_random_shapes(dtype):
    rng = np.random.default_rng(dtype.bits)
    for _ in range(120):
        nd = int(rng.integers(1, 5))
        shape = tuple(int(v) for v in rng.integers(1, 6, size=nd))
        if rng.random() < 0.3:
            shape = (int(rng.integers(8, 40)),) + shape[1:]
        lo, hi = (dtype.qmin, dtype.qmax) if dtype is not i32 else (-5000, 5000)
        x = rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype.np)
        ty = TensorType(shape, dtype, QParams.per_tensor(
            float(np.exp(rng.uniform(-9, 2))), int(rng.integers(max(lo, -300), min(hi, 300)))))
        k = int(rng.integers(0, nd + 1))
        dims = tuple(sorted(rng.choice(nd, size=k, replace=False).tolist())) if k else None
        keep = bool(rng.integers(0, 2))
        ours = run("qnn.mean", ty, x, QMeanAttrs(dims, keep))
        t = qt(x, ty)
        want = t.mean(dims, keepdim=keep) if dims else t.mean(dim=None, keepdim=keep)
        np.testing.assert_array_equal(ours, want.int_repr().numpy(),
                                      err_msg=f"{shape} dims={dims} keepdim={keep}")


def test_sort_unstable_with_ties_values_match_indices_are_stable():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, size=(5, 60)).astype(np.uint8)
    ty = TensorType(x.shape, u8, QParams.per_tensor(0.1, 2))
    for desc in (False, True):
        vals, idx = run("qnn.sort", ty, x, QSortAttrs(1, desc, False))
        tv, _ = torch.sort(qt(x, ty), dim=1, descending=desc, stable=False)
        np.testing.assert_array_equal(vals, tv.int_repr().numpy())
        key = -x.astype(np.int64) if desc else x
        np.testing.assert_array_equal(idx, np.argsort(key, axis=1, kind="stable"))


@pytest.mark.parametrize("k", [1, 3, 20, 59])
def test_topk_with_ties_values_match_and_indices_take_lowest_first(k):
    rng = np.random.default_rng(k)
    x = rng.integers(-3, 3, size=(4, 59)).astype(np.int8)
    ty = TensorType(x.shape, i8, QParams.per_tensor(0.5, 0))
    for largest in (True, False):
        vals, idx = run("qnn.topk", ty, x, QTopkAttrs(k, 1, largest))
        tv, ti = torch.topk(qt(x, ty), k, dim=1, largest=largest)
        np.testing.assert_array_equal(vals, tv.int_repr().numpy())
        np.testing.assert_array_equal(np.take_along_axis(x, idx, 1), vals)
        # PyTorch's indices are valid too, just possibly a different choice among ties
        np.testing.assert_array_equal(np.take_along_axis(x, ti.numpy(), 1), vals)
        key = -x.astype(np.int64) if largest else x
        np.testing.assert_array_equal(idx, np.argsort(key, axis=1, kind="stable")[:, :k])


def test_topk_unsorted_returns_the_same_elements_sorted():
    rng = np.random.default_rng(2)
    x = np.stack([rng.permutation(200)[:50] for _ in range(3)]).astype(np.uint8)
    ty = TensorType(x.shape, u8, QParams.per_tensor(0.25, 7))
    vals, idx = run("qnn.topk", ty, x, QTopkAttrs(10, -1, True, False))
    tv, ti = torch.topk(qt(x, ty), 10, dim=-1, largest=True, sorted=False)
    np.testing.assert_array_equal(np.sort(vals, 1), np.sort(tv.int_repr().numpy(), 1))
    np.testing.assert_array_equal(np.sort(idx, 1), np.sort(ti.numpy(), 1))
    assert (np.diff(vals.astype(np.int64), axis=1) <= 0).all()
