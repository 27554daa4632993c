"""Tensor ops on quantized tensors: comparisons, equal, max/min, mean, sort, topk, int_repr, resize.

Naming: ops whose result depends on the qparams (they compare or average real values, or
reduce with PyTorch's quantized kernels) are `qnn.*` and take quantized inputs: `qnn.eq`,
`qnn.ne`, `qnn.lt`, `qnn.le`, `qnn.gt`, `qnn.ge`, `qnn.equal`, `qnn.max`, `qnn.min`,
`qnn.mean`, `qnn.sort`, `qnn.topk`. (Their float twins are the `f.*` ops.) `int_repr` and
`resize` are storage operations and keep plain names; `resize` also takes float tensors.

Semantics are PyTorch 2.13's quantized CPU kernels (x86), checked against real PyTorch by the
registry-driven test:

- comparisons dequantize both sides to float32 (Tensor.dequantize; unquantized tensors are
  cast to float32, Python scalars rounded to float32) and compare the floats;
- equal is True iff both tensors have the same type (shape, dtype, qparams) and storage;
- max/min/sort/topk order the integer storage values (monotonic in the real values) and keep
  the input's qparams; indices are i64;
- mean keeps the input's qparams and has two exact paths, see `QMean`.

Lowering (TE): comparisons, equal, max/min and the storage ops are plain element-wise or
reduction stages; qnn.mean's float path rebuilds PyTorch's summation order stage by stage
(`torch_sum_te`); sort/topk rank every element against its row (O(n**2) per row, exact and
stable; a real sort kernel is future work).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qcompiler.errors import TypeInferenceError
from qcompiler.ir.registry import OpDef, OpSample, Sig, register_op
from qcompiler.ir.types import QParams, TensorType, b1, f32, i8, i32, i64, u8
from qcompiler.ops.shape import (
    contiguous_copy,
    int_tuple,
    reject_per_axis,
    to_torch_0d_safe,
    torch_result,
    wrap_dim,
    wrap_dims,
)
from qcompiler.reference import quant_math as qm
from qcompiler.testing import samples as S

F32 = np.float32


def _qin(sample: OpSample, k: int = 0) -> Any:
    return to_torch_0d_safe(sample.arrays[k], sample.in_types[k])


def _need_quantized(op: str, x: TensorType, float_twin: str = "") -> None:
    if x.qparams is None:
        hint = f"; for unquantized tensors use {float_twin}" if float_twin else ""
        raise TypeInferenceError(f"{op} takes a quantized tensor, got {x}{hint}")


def _need_per_tensor(op: str, x: TensorType, float_twin: str, torch_says: str) -> None:
    _need_quantized(op, x, float_twin)
    reject_per_axis(op, x, torch_says)


def _f32_loader(x: Any, ty: TensorType, out_shape: tuple[int, ...], name: str
                ) -> Callable[[tuple[Any, ...]], Any]:
    """TE: output index -> float32 value of `x` broadcast to `out_shape` (dequantized)."""
    from qcompiler.lowering import te_lib

    dq = te_lib.dequantize_fn(ty.qparams, ty.rank, name) if ty.qparams is not None else None

    def load(i: tuple[Any, ...]) -> Any:
        j = te_lib.broadcast_index(i, ty.shape, out_shape)
        if dq is not None:
            return dq(x[j], j)
        v = x[j]
        return v if ty.dtype is f32 else v.astype("float32")

    return load


def _as_f32(arr: np.ndarray, ty: TensorType) -> np.ndarray:
    """Tensor.dequantize(): quantized -> float32 (per-tensor or per-axis); others .to(float32)."""
    if ty.qparams is not None:
        return qm.dequantize(arr, ty.qparams)
    return arr.astype(F32)


# --- comparisons -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareAttrs:
    other: float | None = None
    """The right-hand side of the one-input (tensor-scalar) form; None for tensor-tensor."""


class _QCompare(OpDef):
    """out = cmp(dequantize(lhs), dequantize(rhs)) in float32, broadcast like NumPy; b1 out.

    PyTorch's quantized comparison kernels call Tensor.dequantize() on both operands (an
    unquantized operand is cast to float32 by it) and compare the float32 values. A scalar
    right-hand side (`other`) is rounded to float32 first, as a Python number compared with a
    float32 tensor is. At least one operand must be quantized (per-tensor or per-axis).
    """

    Attrs = CompareAttrs
    num_inputs = (1, 2)
    np_fn: Callable[[np.ndarray, Any], np.ndarray]
    torch_name: str
    te_cmp: str

    def infer_type(self, attrs: CompareAttrs, *xs: TensorType) -> TensorType:
        if len(xs) == 1:
            if attrs.other is None:
                raise TypeInferenceError(
                    f"{self.name} with one input compares it with the scalar attr `other`,"
                    " which is None")
            if isinstance(attrs.other, bool) or not isinstance(attrs.other, (int, float)):
                raise TypeInferenceError(
                    f"{self.name}: other must be a number, got {attrs.other!r}")
            _need_quantized(self.name, xs[0], f"f.{self.name[4:]}_scalar")
            return TensorType(xs[0].shape, b1)
        if attrs.other is not None:
            raise TypeInferenceError(
                f"{self.name} with two inputs takes no scalar `other` (got {attrs.other!r})")
        lhs, rhs = xs
        if lhs.qparams is None and rhs.qparams is None:
            raise TypeInferenceError(
                f"{self.name} needs at least one quantized operand, got {lhs} and {rhs};"
                f" for unquantized tensors use f.{self.name[4:]}")
        try:
            shape = np.broadcast_shapes(lhs.shape, rhs.shape)
        except ValueError:
            raise TypeInferenceError(
                f"{self.name}: shapes {list(lhs.shape)} and {list(rhs.shape)} do not"
                " broadcast") from None
        return TensorType(tuple(int(d) for d in shape), b1)

    def reference(self, sig: Sig, *xs: np.ndarray) -> np.ndarray:
        lhs = _as_f32(xs[0], sig.in_types[0])
        rhs = F32(sig.attrs.other) if len(xs) == 1 else _as_f32(xs[1], sig.in_types[1])
        return contiguous_copy(np.broadcast_to(type(self).np_fn(lhs, rhs), sig.out.shape))

    def lower(self, sig: Sig, *xs: Any) -> Any:
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.tvm_compat import tirx

        shape = sig.out.shape
        name = self.name.replace(".", "_")
        loads = [_f32_loader(x, t, shape, f"{name}_{k}")
                 for k, (x, t) in enumerate(zip(xs, sig.in_types))]
        cmp = getattr(tirx, type(self).te_cmp)
        if len(xs) == 1:
            other = te_lib.f32_const(sig.attrs.other)
            return te_lib.elementwise(shape, lambda i: cmp(loads[0](i), other), name)
        return te_lib.elementwise(shape, lambda i: cmp(loads[0](i), loads[1](i)), name)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        attrs0 = CompareAttrs()
        # lhs (s, zl) against rhs (2s, zr) holding half the offsets: many equal real values
        s = S.rand_scale(rng, 1e-3, 1.0)
        lt, lv = S.qtensor(rng, (4, 9), u8, s, 101)
        lv = np.where(rng.random(lv.shape) < 0.3, 101 + 2 * rng.integers(-40, 40, lv.shape),
                      lv).astype(np.uint8)
        rt = TensorType((4, 9), u8, QParams.per_tensor(2 * s, 60))
        rv = np.clip(60 + (lv.astype(np.int64) - 101) // 2, 0, 255).astype(np.uint8)
        yield OpSample(attrs0, (lt, rt), (lv, rv), "u8-vs-u8-ties")
        # scalar equal to one element's real value, and one no float32 value hits exactly
        ty, x = S.qtensor(rng, (3, 7), i8, S.rand_scale(rng, 1e-3, 10.0), S.rand_zp(rng, i8))
        qp = ty.qparams
        assert qp is not None
        hit = float(qm.dequantize(x, qp).reshape(-1)[5])
        yield OpSample(CompareAttrs(hit), (ty,), (x,), "i8-vs-scalar-hit")
        yield OpSample(CompareAttrs(0.1), (ty,), (x,), "i8-vs-scalar-0.1")
        yield OpSample(CompareAttrs(-3), (ty,), (x,), "i8-vs-int-scalar")
        # per-axis vs per-tensor, broadcast
        pt, pv = S.qtensor_per_channel(rng, (3, 4), 1)
        qt, qv = S.qtensor(rng, (4,), i8, 0.01, 0)
        yield OpSample(attrs0, (pt, qt), (pv, qv), "per-axis-vs-per-tensor")
        # quantized vs float32 tensor (both orders) with some exact hits
        ty, x = S.qtensor(rng, (2, 3, 5), u8, 0.05, 17)
        fv = qm.dequantize(x, QParams.per_tensor(0.05, 17))
        fv = np.where(rng.random(fv.shape) < 0.5, fv, fv + F32(1e-3)).astype(F32)
        ft = TensorType((2, 3, 5), f32)
        yield OpSample(attrs0, (ty, ft), (x, fv), "u8-vs-f32")
        yield OpSample(attrs0, (ft, ty), (fv, x), "f32-vs-u8")
        # qint32 with large values, broadcast (3,1,5) vs (4,5)
        a_t, a_v = S.qtensor(rng, (3, 1, 5), i32, 0.5, 7)
        b_t, b_v = S.qtensor(rng, (4, 5), i32, 0.25, -3)
        b_v[0, :] = np.clip(2 * (a_v[0, 0, :].astype(np.int64) - 7) - 3, -2**31, 2**31 - 1)
        yield OpSample(attrs0, (a_t, b_t), (a_v, b_v), "i32-broadcast")
        ty, x = S.qtensor(rng, (), u8, 0.3, 128)
        t2, x2 = S.qtensor(rng, (5,), u8, 0.3, 128)
        x2[2] = x
        yield OpSample(attrs0, (ty, t2), (x, x2), "0d-vs-vector")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        fn = getattr(torch, type(self).torch_name)
        lhs = _qin(sample, 0)
        rhs = sample.attrs.other if len(sample.arrays) == 1 else _qin(sample, 1)
        return torch_result(fn(lhs, rhs), sig.out)


@register_op
class QEq(_QCompare):
    __doc__ = "qnn.eq: " + (_QCompare.__doc__ or "")
    name = "qnn.eq"
    np_fn = np.equal
    te_cmp = "EQ"
    torch_name = "eq"
    torch_counterparts = ("torch.eq", "Tensor.__eq__")


@register_op
class QNe(_QCompare):
    __doc__ = "qnn.ne: " + (_QCompare.__doc__ or "")
    name = "qnn.ne"
    np_fn = np.not_equal
    te_cmp = "NE"
    torch_name = "ne"
    torch_counterparts = ("torch.ne", "Tensor.__ne__")


@register_op
class QLt(_QCompare):
    __doc__ = "qnn.lt: " + (_QCompare.__doc__ or "")
    name = "qnn.lt"
    np_fn = np.less
    te_cmp = "LT"
    torch_name = "lt"
    torch_counterparts = ("torch.lt", "Tensor.__lt__")


@register_op
class QLe(_QCompare):
    __doc__ = "qnn.le: " + (_QCompare.__doc__ or "")
    name = "qnn.le"
    np_fn = np.less_equal
    te_cmp = "LE"
    torch_name = "le"
    torch_counterparts = ("torch.le", "Tensor.__le__")


@register_op
class QGt(_QCompare):
    __doc__ = "qnn.gt: " + (_QCompare.__doc__ or "")
    name = "qnn.gt"
    np_fn = np.greater
    te_cmp = "GT"
    torch_name = "gt"
    torch_counterparts = ("torch.gt", "Tensor.__gt__")


@register_op
class QGe(_QCompare):
    __doc__ = "qnn.ge: " + (_QCompare.__doc__ or "")
    name = "qnn.ge"
    np_fn = np.greater_equal
    te_cmp = "GE"
    torch_name = "ge"
    torch_counterparts = ("torch.ge", "Tensor.__ge__")


@register_op
class QEqual(OpDef):
    """out (b1, 0-d) = type(a) == type(b) and storage(a) == storage(b) element for element.

    torch.equal on quantized tensors: True iff shapes, dtypes, qschemes and qparams are
    identical (scales compared exactly) and the integer storage is equal; a quantized tensor
    never equals an unquantized one. At least one input must be quantized.
    """

    name = "qnn.equal"
    num_inputs = 2
    schedule_kind = "reduction"
    torch_counterparts = ("torch.equal", "Tensor.equal")

    def infer_type(self, attrs: object, a: TensorType, b: TensorType) -> TensorType:
        if a.qparams is None and b.qparams is None:
            raise TypeInferenceError(
                f"qnn.equal needs at least one quantized input, got {a} and {b}")
        return TensorType((), b1)

    def reference(self, sig: Sig, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        same = sig.in_types[0] == sig.in_types[1] and bool(np.array_equal(a, b))
        return np.array(same)

    def lower(self, sig: Sig, a: Any, b: Any) -> Any:
        from qcompiler.lowering.tvm_compat import te, tirx

        ta, tb = sig.in_types
        if ta != tb:
            return te.compute((), lambda: tirx.const(False, "bool"), name="qnn_equal")
        if ta.rank == 0:
            return te.compute((), lambda: a[()] == b[()], name="qnn_equal")
        axes = [te.reduce_axis((0, n), name=f"k{d}") for d, n in enumerate(ta.shape)]
        idx = tuple(axes)
        differ = te.compute((), lambda: te.sum(
            tirx.Select(a[idx] != b[idx], te.const(1, "int64"), te.const(0, "int64")),
            axis=axes), name="qnn_equal_differ")
        return te.compute((), lambda: differ[()] == te.const(0, "int64"), name="qnn_equal")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        ty, x = S.qtensor(rng, (3, 5), u8, S.rand_scale(rng), 5)
        yield OpSample(self.Attrs(), (ty, ty), (x, x.copy()), "identical")
        y = x.copy()
        y[2, 4] ^= 1
        yield OpSample(self.Attrs(), (ty, ty), (x, y), "one-value-differs")
        qp = ty.qparams
        assert qp is not None
        other = TensorType(ty.shape, u8, QParams.per_tensor(qp.scale_value * (1 + 1e-12),
                                                             qp.zp_value))
        yield OpSample(self.Attrs(), (ty, other), (x, x.copy()), "scale-differs-by-1e-12")
        yield OpSample(self.Attrs(), (ty, ty.with_shape((5, 3))), (x, x.reshape(5, 3)),
                       "shape-differs")
        yield OpSample(self.Attrs(), (ty, TensorType(ty.shape, i8, qp)),
                       (x, x.view(np.int8)), "dtype-differs")
        pt, pv = S.qtensor_per_channel(rng, (4, 3), 0)
        yield OpSample(self.Attrs(), (pt, pt), (pv, pv.copy()), "per-axis-identical")
        ft = TensorType(ty.shape, f32)
        yield OpSample(self.Attrs(), (ty, ft), (x, x.astype(F32)), "quantized-vs-float")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        return np.array(torch.equal(_qin(sample, 0), _qin(sample, 1)))


# --- max / min ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class QMaxMinAttrs:
    dim: int | None = None
    """None: reduce everything to one value. An int: reduce that dim, also returning indices."""
    keepdim: bool = False
    """Keep the reduced dim with size 1 (only with `dim`)."""


class _QMaxMin(OpDef):
    """Extreme of the integer storage (monotonic in the real values); qparams unchanged.

    dim=None: out = ext(in) as a 0-d tensor. dim=d: (values, indices) with
    values[..] = ext_k in[.., k, ..] and indices (i64) the first k attaining it (PyTorch's
    documented tie rule). Per-tensor quantized input only, as in PyTorch.
    """

    Attrs = QMaxMinAttrs
    num_inputs = 1
    schedule_kind = "reduction"
    np_ext: Callable[..., Any]
    np_arg: Callable[..., Any]
    torch_name: str

    def infer_type(self, attrs: QMaxMinAttrs, x: TensorType
                   ) -> TensorType | tuple[TensorType, ...]:
        word = self.name[4:].capitalize()
        _need_per_tensor(self.name, x, f"f.a{self.name[4:]}",
                         f"{word} operator for quantized tensors only works for per tensor"
                         " quantized tensors.")
        if attrs.dim is None:
            if attrs.keepdim:
                raise TypeInferenceError(f"{self.name}: keepdim needs a dim")
            if x.numel == 0:
                raise TypeInferenceError(f"{self.name}: cannot reduce an empty tensor {x}")
            return TensorType((), x.dtype, x.qparams)
        d = wrap_dim(self.name, attrs.dim, x.rank)
        n = x.shape[d] if x.rank else 1
        if n == 0:
            raise TypeInferenceError(
                f"{self.name}: dim {d} of {list(x.shape)} is empty; cannot reduce it")
        shape = _reduced_shape(x.shape, (d,) if x.rank else (), attrs.keepdim)
        return TensorType(shape, x.dtype, x.qparams), TensorType(shape, i64)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        cls = type(self)
        a = sig.attrs
        if a.dim is None:
            return np.array(cls.np_ext(x), dtype=x.dtype)
        if x.ndim == 0:
            return x.copy(), np.array(0, np.int64)
        d = a.dim % x.ndim
        vals = cls.np_ext(x, axis=d, keepdims=a.keepdim)
        idx = cls.np_arg(x, axis=d)
        if a.keepdim:
            idx = np.expand_dims(idx, d)
        return contiguous_copy(vals), contiguous_copy(idx.astype(np.int64))

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.tvm_compat import te, tirx

        cls = type(self)
        reduce = te.max if cls.np_ext is np.max else te.min
        name = self.name.replace(".", "_")
        a = sig.attrs
        t = sig.in_types[0]
        if t.rank == 0:
            vals = te_lib.elementwise((), lambda i: x[()], name)
            if a.dim is None:
                return vals
            return vals, te_lib.elementwise((), lambda i: te.const(0, "int64"), f"{name}_idx")
        if a.dim is None:
            axes = [te.reduce_axis((0, n), name=f"k{d}") for d, n in enumerate(t.shape)]
            return te.compute((), lambda: reduce(x[tuple(axes)], axis=axes), name=name)
        d = a.dim % t.rank
        n = t.shape[d]
        k = te.reduce_axis((0, n), name="k")
        k2 = te.reduce_axis((0, n), name="k2")

        def at(i: tuple[Any, ...], kk: Any) -> Any:
            return x[i[:d] + (kk,) + (i[d + 1:] if a.keepdim else i[d:])]

        shape = sig.out.shape
        vals = te.compute(shape, lambda *i: reduce(at(i, k), axis=k), name=name)
        # the first index attaining the extreme, as PyTorch (and numpy's argmax/argmin)
        idx = te.compute(shape, lambda *i: te.min(tirx.Select(
            at(i, k2) == vals[i], k2.astype("int64"), te.const(n, "int64")), axis=k2),
            name=f"{name}_idx")
        return vals, idx

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for dtype in (u8, i8, i32):
            ty, x = S.qtensor(rng, (3, 4, 6), dtype)
            x.reshape(-1)[rng.integers(0, x.size, 8)] = dtype.qmax if self.name.endswith(
                "max") else dtype.qmin                       # ties on the extreme value
            yield OpSample(QMaxMinAttrs(), (ty,), (x,), f"{dtype}-all")
            yield OpSample(QMaxMinAttrs(1), (ty,), (x,), f"{dtype}-dim1")
        ty, x = S.qtensor(rng, (5, 7), u8)
        x = (x % 3).astype(np.uint8)                         # many ties
        yield OpSample(QMaxMinAttrs(-1, True), (ty,), (x,), "ties-keepdim")
        yield OpSample(QMaxMinAttrs(0), (ty,), (x,), "ties-dim0")
        ty, x = S.qtensor(rng, (), i8)
        yield OpSample(QMaxMinAttrs(0), (ty,), (x,), "0d-dim")
        yield OpSample(QMaxMinAttrs(), (ty,), (x,), "0d-all")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray | tuple[np.ndarray, ...]:
        import torch

        fn = getattr(torch, type(self).torch_name)
        a = sample.attrs
        t = _qin(sample)
        if a.dim is None:
            return torch_result(fn(t), sig.out)
        vals, idx = fn(t, a.dim, a.keepdim)
        return (torch_result(vals, sig.out_types[0], "values"),
                torch_result(idx, sig.out_types[1], "indices"))


def _reduced_shape(shape: tuple[int, ...], dims: tuple[int, ...], keepdim: bool
                   ) -> tuple[int, ...]:
    if keepdim:
        return tuple(1 if d in dims else s for d, s in enumerate(shape))
    return tuple(s for d, s in enumerate(shape) if d not in dims)


@register_op
class QMax(_QMaxMin):
    __doc__ = "qnn.max: " + (_QMaxMin.__doc__ or "")
    name = "qnn.max"
    np_ext = np.max
    np_arg = np.argmax
    torch_name = "max"
    torch_counterparts = ("torch.max", "Tensor.max")


@register_op
class QMin(_QMaxMin):
    __doc__ = "qnn.min: " + (_QMaxMin.__doc__ or "")
    name = "qnn.min"
    np_ext = np.min
    np_arg = np.argmin
    torch_name = "min"
    torch_counterparts = ("torch.min", "Tensor.min")


# --- mean --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QMeanAttrs:
    dims: tuple[int, ...] | None = None
    """Dims to average over; None or () averages everything (as PyTorch)."""
    keepdim: bool = False


@register_op
class QMean(OpDef):
    """Mean with the input's qparams (s, zp) on the output, exactly as PyTorch's two paths.

    N = number of averaged elements. When the averaged dims are the innermost ones (a suffix of
    the dims, or all of them), PyTorch's fast kernel averages the storage integers:
        out = nearbyint(float32(sum_int64(q)) / float32(N))
    (float32 arithmetic, round half to even; an int32 result that rounds up to 2**31 wraps to
    -2**31 as the x86 float->int conversion does). Otherwise it computes in float:
        out = quantize_per_tensor(float32_sum(dequantize(q)) / float32(N), s, zp)
    where float32_sum is PyTorch's CPU cascade sum, whose addition order we reproduce
    (`torch_sum_f32`: TensorIterator dim order and coalescing, 8-lane vectors, cascade levels).
    Exact for every input PyTorch reduces on one thread; beyond 32768 elements PyTorch may split
    a reduction to a single output across threads (a different order, at most 1 LSB). Per-tensor
    quantized u8/i8/i32 only, as in PyTorch. The lowering follows the same order (rows of up
    to 2**19 elements on the float path; longer ones raise LoweringError).
    """

    name = "qnn.mean"
    Attrs = QMeanAttrs
    num_inputs = 1
    schedule_kind = "reduction"
    torch_counterparts = ("torch.mean", "Tensor.mean")
    fidelity_note = ("exact; for a reduction to a single value over >= 32768 elements through"
                     " the float path PyTorch's multi-threaded summation order may differ")

    def _dims(self, attrs: QMeanAttrs, x: TensorType) -> tuple[int, ...]:
        if attrs.dims is None or len(attrs.dims) == 0:
            return tuple(range(x.rank))
        return tuple(sorted(wrap_dims(self.name, int_tuple(self.name, "dims", attrs.dims),
                                      x.rank)))

    def infer_type(self, attrs: QMeanAttrs, x: TensorType) -> TensorType:
        _need_per_tensor(self.name, x, "f.mean",
                         "Expected quantizer->qscheme() == kPerTensorAffine to be true")
        if x.dtype not in (u8, i8, i32):
            raise TypeInferenceError(f"qnn.mean supports quint8, qint8 and qint32, got {x}")
        dims = self._dims(attrs, x)
        if math.prod(x.shape[d] for d in dims) == 0:
            raise TypeInferenceError(f"qnn.mean over dims {list(dims)} of {x} averages nothing")
        return TensorType(_reduced_shape(x.shape, dims, attrs.keepdim), x.dtype, x.qparams)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        a = sig.attrs
        t = sig.in_types[0]
        qp = t.qparams
        assert qp is not None
        dims = self._dims(a, t)
        n = math.prod(x.shape[d] for d in dims)
        if not dims or dims == tuple(range(x.ndim - len(dims), x.ndim)):
            total = x.astype(np.int64).sum(axis=dims, keepdims=a.keepdim)
            v = np.rint(np.asarray(total).astype(F32) / F32(n)).astype(np.float64)
            if t.dtype is i32:
                v = np.where(v >= 2.0**31, -(2.0**31), v)
            return contiguous_copy(v.astype(t.dtype.np)).reshape(sig.out.shape)
        total = torch_sum_f32(qm.dequantize(x, qp), dims)
        mean = (total / F32(n)).astype(F32)
        return qm.quantize_per_tensor(mean, qp.scale_value, qp.zp_value, t.dtype).reshape(
            sig.out.shape)

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.tvm_compat import te, tirx
        from qcompiler.ops.shape import unravel

        t = sig.in_types[0]
        qp = t.qparams
        assert qp is not None
        a = sig.attrs
        dims = self._dims(a, t)
        n = math.prod(t.shape[d] for d in dims)
        keep = tuple(1 if d in dims else s for d, s in enumerate(t.shape))

        def keep_index(i: tuple[Any, ...]) -> tuple[Any, ...]:
            """Output index -> index into the keepdim shape."""
            if a.keepdim:
                return i
            it = iter(i)
            return tuple(te.const(0, "int32") if d in dims else next(it) for d in range(t.rank))

        if not dims or dims == tuple(range(t.rank - len(dims), t.rank)):
            axes = {d: te.reduce_axis((0, t.shape[d]), name=f"k{d}") for d in dims}

            def summed(*i: Any) -> Any:
                idx = tuple(axes[d] if d in axes else i[d] for d in range(t.rank))
                v = x[idx].astype("int64")
                return te.sum(v, axis=list(axes.values())) if axes else v

            total = te.compute(keep, summed, name="qnn_mean_sum")

            def fast(i: tuple[Any, ...]) -> Any:
                v = te_lib.round_half_even(
                    total[keep_index(i)].astype("float32") / te_lib.f32_const(n))
                if t.dtype is i32:   # float -> int32 of 2**31 gives INT32_MIN on x86
                    v = tirx.Select(v >= te.const(2.0**31, "float32"),
                                    te.const(-(2.0**31), "float32"), v)
                return v.astype(t.dtype.storage)

            return te_lib.elementwise(sig.out.shape, fast, "qnn_mean")
        dq = te_lib.dequantize_fn(qp, t.rank, "qnn_mean_in")
        xflat = te_lib.elementwise(
            (t.numel,), lambda f: dq(x[unravel(f[0], t.shape)], unravel(f[0], t.shape)),
            "qnn_mean_dq")
        total = torch_sum_te(xflat, t.shape, dims, "qnn_mean_sum")
        qf = te_lib.quantize_fn(qp, t.dtype, sig.out.rank, "qnn_mean_out")
        return te_lib.elementwise(sig.out.shape, lambda i: qf(
            total(keep_index(i)) / te_lib.f32_const(n), i), "qnn_mean")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for dtype in (u8, i8, i32):
            ty, x = S.qtensor(rng, (2, 3, 4, 5), dtype)
            yield OpSample(QMeanAttrs((2, 3)), (ty,), (x,), f"{dtype}-inner-hw")
            yield OpSample(QMeanAttrs((1,), True), (ty,), (x,), f"{dtype}-channel-keepdim")
            yield OpSample(QMeanAttrs((0, 2)), (ty,), (x,), f"{dtype}-scattered")
        ty, x = S.qtensor(rng, (3, 37, 20), u8)
        yield OpSample(QMeanAttrs(), (ty,), (x,), "all")
        yield OpSample(QMeanAttrs((0,)), (ty,), (x,), "outer-vectorized")
        yield OpSample(QMeanAttrs((0, -1), True), (ty,), (x,), "outer-and-inner")
        yield OpSample(QMeanAttrs((-2, -1)), (ty,), (x,), "inner-neg-dims")
        ty, x = S.qtensor(rng, (2, 2, 3), i8, 0.5, 0)
        x[...] = np.array([[[1, 2, 3], [4, 6, -9]], [[2, 3, 3], [5, 7, 8]]], np.int8)
        yield OpSample(QMeanAttrs((1,)), (ty,), (x,), "half-ties")
        yield OpSample(QMeanAttrs((2,)), (ty,), (x,), "half-ties-inner")
        ty, x = S.qtensor(rng, (), u8)
        yield OpSample(QMeanAttrs(), (ty,), (x,), "0d")
        ty, x = S.qtensor(rng, (4, 6), i32, 0.25, 3)
        x[...] = 2**31 - 1 - rng.integers(0, 2, x.shape)
        yield OpSample(QMeanAttrs((1,)), (ty,), (x,), "i32-near-max-inner")
        yield OpSample(QMeanAttrs((0,)), (ty,), (x,), "i32-near-max-float-path")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        a = sample.attrs
        t = _qin(sample)
        if a.dims is None:
            out = t.mean(dim=None, keepdim=a.keepdim) if a.keepdim else t.mean()
        else:
            out = t.mean(tuple(a.dims), keepdim=a.keepdim)
        return torch_result(out, sig.out)


# PyTorch's CPU float32 sum (aten/src/ATen/native/cpu/SumKernel.cpp, cascade_sum), for the
# float path of qnn.mean. The addition order decides the last bit of the sum, which decides a
# rounding tie of the requantized mean now and then, so it is reproduced step for step.
_SUM_VLEN = 8
"""Vectorized<float>::size() in SumKernel on x86 (it runs the AVX2 build even on AVX512 CPUs,
as measured: 16 lanes differ from PyTorch, 8 lanes match)."""


def _ceil_log2(x: int) -> int:
    return 1 if x <= 2 else int(x - 1).bit_length()


def _cascade(rows: np.ndarray) -> np.ndarray:
    """multi_row_sum: sum over axis 0 in chunks of 16+ with 4 accumulator levels (float32)."""
    size, shape = rows.shape[0], rows.shape[1:]
    power = max(4, _ceil_log2(size) // 4)
    step, mask = 1 << power, (1 << power) - 1
    acc = [np.zeros(shape, F32) for _ in range(4)]
    i = 0
    while i + step <= size:
        for _ in range(step):
            acc[0] = acc[0] + rows[i]
            i += 1
        for level in range(1, 4):
            acc[level] = acc[level] + acc[level - 1]
            acc[level - 1] = np.zeros(shape, F32)
            if i & (mask << (level * power)):
                break
    while i < size:
        acc[0] = acc[0] + rows[i]
        i += 1
    return ((acc[0] + acc[1]) + acc[2]) + acc[3]


def _row_sum(rows: np.ndarray) -> np.ndarray:
    """row_sum: 4 interleaved cascade sums (ILP), then the tail into the first, then combined."""
    size = rows.shape[0]
    n4 = size // 4
    parts = _cascade(rows[:n4 * 4].reshape((n4, 4) + rows.shape[1:]))
    total = parts[0]
    for i in range(n4 * 4, size):
        total = total + rows[i]
    return ((total + parts[1]) + parts[2]) + parts[3]


def _sum_loop2d(mem: np.ndarray, out: np.ndarray, po: int, pi: int, st: list[int],
                size0: int, size1: int) -> None:
    """cascade_sum's 2-d loop body; strides st = [out0, in0, out1, in1] in elements."""
    in_s, out_s = [st[1], st[3]], [st[0], st[2]]
    if out_s[0] != 0 and out_s[1] == 0:
        in_s.reverse()
        out_s.reverse()
        size0, size1 = size1, size0
    if out_s[0] != 0 and out_s[1] != 0:          # not a reduction: out += in
        for j in range(size1):
            o = po + j * st[2] + np.arange(size0) * st[0]
            out[o] = out[o] + mem[pi + j * st[3] + np.arange(size0) * st[1]]
        return
    cols = np.arange(size1)
    rows = mem[pi + np.arange(size0)[:, None] * in_s[0] + cols[None, :] * in_s[1]]
    v = _SUM_VLEN
    if in_s[0] == 1 and size0 >= v:              # vectorized_inner_sum
        nv = size0 // v
        vacc = _row_sum(rows[:nv * v].reshape(nv, v, size1))
        res = np.zeros(size1, F32)
        for k in range(nv * v, size0):
            res = res + rows[k]
        for lane in range(v):
            res = res + vacc[lane]
    elif in_s[1] == 1 and size1 >= v:            # vectorized_outer_sum
        j1 = size1 // (4 * v) * (4 * v)
        j2 = j1 + (size1 - j1) // v * v
        res = np.concatenate([_cascade(rows[:, :j1]), _row_sum(rows[:, j1:j2]),
                              _row_sum(rows[:, j2:])])
    elif in_s[0] < in_s[1]:                      # scalar_inner_sum
        res = _row_sum(rows)
    else:                                        # scalar_outer_sum
        j1 = size1 // 4 * 4
        res = np.concatenate([_cascade(rows[:, :j1]), _row_sum(rows[:, j1:])])
    if out_s[1] == 0:
        for value in res:
            out[po] = out[po] + value
    else:
        o = po + cols * out_s[1]
        out[o] = out[o] + res


@dataclass(frozen=True)
class _SumPlan:
    """TensorIterator's view of a contiguous reduction: dims in loop order (0 fastest) after
    reordering (reduced dims first) and coalescing, padded to at least 2 dims."""

    shape: list[int]
    out_strides: list[int]
    """Element strides into the keepdim output (0 along reduced dims)."""
    in_strides: list[int]
    groups: list[list[int]]
    """The original dims each loop dim coalesces (empty for padding dims)."""


def _sum_plan(shape: Sequence[int], dims: Sequence[int]) -> _SumPlan:
    nd = len(shape)
    red = set(dims)
    oshape = [1 if d in red else s for d, s in enumerate(shape)]

    def cstrides(shp: Sequence[int]) -> list[int]:
        st, acc = [0] * len(shp), 1
        for d in range(len(shp) - 1, -1, -1):
            st[d] = acc
            acc *= shp[d]
        return st

    ops = [[0 if d in red else s for d, s in enumerate(cstrides(oshape))], cstrides(shape)]

    def should_swap(d0: int, d1: int) -> int:
        for k, st in enumerate(ops):
            s0, s1 = st[d0], st[d1]
            if k == 0 and (s0 == 0) != (s1 == 0):
                return 1 if s1 == 0 else -1        # reduced dims first
            if s0 == 0 or s1 == 0:
                continue
            if s0 != s1:
                return -1 if s0 < s1 else 1
            if shape[d0] > shape[d1]:
                return 1
        return 0

    perm = list(range(nd - 1, -1, -1))
    for i in range(1, nd):                            # TensorIterator's insertion sort
        d1 = i
        for d0 in range(i - 1, -1, -1):
            c = should_swap(perm[d0], perm[d1])
            if c > 0:
                perm[d0], perm[d1] = perm[d1], perm[d0]
                d1 = d0
            elif c < 0:
                break
    tshape = [shape[p] for p in perm]
    tst = [[st[p] for p in perm] for st in ops]
    groups = [[p] for p in perm]
    if nd > 0:                                        # coalesce_dimensions
        prev = 0
        for d in range(1, nd):
            s0, s1 = tshape[prev], tshape[d]
            if s0 == 1 or s1 == 1 or all(s0 * st[prev] == st[d] for st in tst):
                if tshape[prev] == 1:
                    for st in tst:
                        st[prev] = st[d]
                tshape[prev] *= tshape[d]
                groups[prev] += groups[d]
            else:
                prev += 1
                if prev != d:
                    for st in tst:
                        st[prev] = st[d]
                    tshape[prev] = tshape[d]
                    groups[prev] = groups[d]
        tshape, tst = tshape[:prev + 1], [st[:prev + 1] for st in tst]
        groups = groups[:prev + 1]
    while len(tshape) < 2:
        tshape.append(1)
        tst[0].append(0)
        tst[1].append(0)
        groups.append([])
    return _SumPlan(tshape, tst[0], tst[1], groups)


def torch_sum_f32(x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """torch.sum(x, dims, keepdim=True) for a contiguous float32 array, bit for bit.

    Mirrors TensorIterator for a reduction (reduced dims first, then by stride; coalescing of
    adjacent dims) and cascade_sum's four loop variants, single-threaded.
    """
    x = np.ascontiguousarray(x, F32)
    oshape = [1 if d in dims else n for d, n in enumerate(x.shape)]
    out = np.zeros(math.prod(oshape), F32)
    if x.size == 0:
        return out.reshape(oshape)
    plan = _sum_plan(x.shape, dims)
    os_, is_ = plan.out_strides, plan.in_strides
    st = [os_[0], is_[0], os_[1], is_[1]]
    mem = x.reshape(-1)
    for rev in np.ndindex(*reversed(plan.shape[2:])):
        idx = rev[::-1]                                      # TensorIterator: dim 2 fastest
        po = sum(i * os_[2 + k] for k, i in enumerate(idx))
        pi = sum(i * is_[2 + k] for k, i in enumerate(idx))
        _sum_loop2d(mem, out, po, pi, st, plan.shape[0], plan.shape[1])
    return out.reshape(oshape)


# The same summation in TE, for lowering qnn.mean's float path. Every numpy step above becomes
# a TE stage whose reduction loops run in order (the generic schedules keep reduction loops in
# their original order and LLVM does not reassociate float adds), so the compiled sum equals
# `torch_sum_f32` bit for bit.

Acc = Callable[[Any, tuple[Any, ...]], Any]
"""acc(r, sp): the r-th summand (a float32 TE expression) of the sum at spatial index sp."""
Fn = Callable[[tuple[Any, ...]], Any]


def _reduce_stage(shape: tuple[int, ...], body: Callable[[tuple[Any, ...], Any], Any], n: int,
                  name: str) -> Any:
    """TE: out[i] = sequential float32 sum of body(i, k) for k < n; None when n == 0."""
    from qcompiler.lowering.tvm_compat import te

    if n == 0:
        return None
    if n == 1:   # 0 + body; a 1-trip reduction loop trips the generic schedule's compute_at
        zero = te.const(0, "int32")
        return te.compute(shape, lambda *i: te.const(0.0, "float32") + body(tuple(i), zero),
                          name=name)
    k = te.reduce_axis((0, n), name=f"{name}_k")
    return te.compute(shape, lambda *i: te.sum(body(tuple(i), k), axis=k), name=name)


def _load_or_zero(t: Any, idx: tuple[Any, ...]) -> Any:
    from qcompiler.lowering.tvm_compat import te

    return te.const(0.0, "float32") if t is None else t[idx]


def _cascade_te(acc: Acc, size: int, sp: tuple[int, ...], name: str) -> Fn:
    """TE of `_cascade` (multi_row_sum): chunks of 16 rows, sums of 16 chunks, sums of 16 of
    those (levels 1-3 flush only when complete), then ((acc0 + acc1) + acc2) + acc3."""
    from qcompiler.errors import LoweringError

    if max(4, _ceil_log2(size) // 4) != 4:
        raise LoweringError(f"qnn.mean: a float summation over {size} rows (> 2**19) is not"
                            " lowered (PyTorch's cascade uses wider chunks there)")
    n0 = size // 16
    n1 = n0 // 16
    n2 = n1 // 16
    # NOTE: auxiliary dims (chunk, ILP part) go last in every stage: the generic schedule
    # parallelises the leading dims, and a consumer must not need a range of them.
    c0 = _reduce_stage(sp + (n0,), lambda i, k: acc(i[-1] * 16 + k, i[:-1]),
                       16 if n0 else 0, f"{name}_c0")
    c1 = _reduce_stage(sp + (n1,), lambda i, k: c0[i[:-1] + (i[-1] * 16 + k,)],
                       16 if n1 else 0, f"{name}_c1")
    c2 = _reduce_stage(sp + (n2,), lambda i, k: c1[i[:-1] + (i[-1] * 16 + k,)],
                       16 if n2 else 0, f"{name}_c2")
    r0 = _reduce_stage(sp, lambda i, k: acc(n0 * 16 + k, i), size - n0 * 16, f"{name}_r0")
    r1 = _reduce_stage(sp, lambda i, k: c0[i + (n1 * 16 + k,)], n0 - n1 * 16, f"{name}_r1")
    r2 = _reduce_stage(sp, lambda i, k: c1[i + (n2 * 16 + k,)], n1 - n2 * 16, f"{name}_r2")
    r3 = _reduce_stage(sp, lambda i, k: c2[i + (k,)], n2, f"{name}_r3")
    return lambda i: ((_load_or_zero(r0, i) + _load_or_zero(r1, i)) + _load_or_zero(r2, i)) \
        + _load_or_zero(r3, i)


def _row_sum_te(acc: Acc, size: int, sp: tuple[int, ...], name: str) -> Fn:
    """TE of `_row_sum`: 4 interleaved cascades, the tail added to the first, then combined."""
    from qcompiler.lowering import te_lib

    n4 = size // 4
    parts_fn = _cascade_te(lambda r, i: acc(r * 4 + i[-1], i[:-1]), n4, sp + (4,), f"{name}_p")
    parts = te_lib.elementwise(sp + (4,), parts_fn, f"{name}_parts")

    def fn(i: tuple[Any, ...]) -> Any:
        total = parts[i + (0,)]
        for r in range(n4 * 4, size):
            total = total + acc(r, i)
        return ((total + parts[i + (1,)]) + parts[i + (2,)]) + parts[i + (3,)]

    return fn


def _columns_te(acc: Acc, size0: int, outer: tuple[int, ...], size1: int, j1: int,
                first: str, name: str) -> Fn:
    """Columns j < j1 summed with `first` ('cascade' or 'row_sum'), the others with row_sum."""
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import tirx

    def shifted(off: int) -> Acc:
        return lambda r, i: acc(r, i[:-1] + (i[-1] + off,))

    build = _cascade_te if first == "cascade" else _row_sum_te
    a: Any = None
    b: Any = None
    if j1:
        a = te_lib.elementwise(outer + (j1,), build(acc, size0, outer + (j1,), f"{name}_a"),
                               f"{name}_a_out")
    if size1 - j1:
        b = te_lib.elementwise(outer + (size1 - j1,),
                               _row_sum_te(shifted(j1), size0, outer + (size1 - j1,),
                                           f"{name}_b"), f"{name}_b_out")
    if b is None:
        return lambda i: a[i]
    if a is None:
        return lambda i: b[i]
    return lambda i: tirx.if_then_else(i[-1] < j1, a[i], b[i[:-1] + (i[-1] - j1,)])


def torch_sum_te(xflat: Any, shape: tuple[int, ...], dims: tuple[int, ...], name: str) -> Fn:
    """TE of `torch_sum_f32`: `xflat` is the row-major float32 input, flat. Returns a loader:
    keepdim output index -> the sum (a load from the last stage, whose dims are the kept
    loop dims, so no unit dims reach the schedule). The reduction order is PyTorch's, stage
    by stage (see `_sum_loop2d`)."""
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import te

    plan = _sum_plan(shape, dims)
    oshape = tuple(1 if d in dims else n for d, n in enumerate(shape))
    size0, size1 = plan.shape[0], plan.shape[1]
    in_s = [plan.in_strides[0], plan.in_strides[1]]
    out_s = [plan.out_strides[0], plan.out_strides[1]]
    col_group = plan.groups[1]
    if out_s[0] != 0 and out_s[1] == 0:
        in_s.reverse()
        out_s.reverse()
        size0, size1 = size1, size0
        col_group = plan.groups[0]
    outer = tuple(plan.shape[2:])
    outer_in = plan.in_strides[2:]
    outer_out = plan.out_strides[2:]
    if out_s[0] != 0:                          # nothing is reduced (N == 1): out = 0 + x
        return lambda i: xflat[_ravel_te(i, oshape)] + 0.0

    def acc(r: Any, sp: tuple[Any, ...]) -> Any:
        off = sp[-1] * in_s[1] + r * in_s[0]
        for v, st in zip(sp[:-1], outer_in):
            off = off + v * st
        return xflat[off]

    v = _SUM_VLEN
    sp_shape = outer + (size1,)
    if in_s[0] == 1 and size0 >= v:            # vectorized_inner_sum
        nv = size0 // v
        lanes = te_lib.elementwise(sp_shape + (v,), _row_sum_te(
            lambda q, i: acc(q * v + i[-1], i[:-1]), nv, sp_shape + (v,), f"{name}_lanes"),
            f"{name}_vacc")

        def lanes_fn(i: tuple[Any, ...]) -> Any:
            total = te.const(0.0, "float32")
            for r in range(nv * v, size0):
                total = total + acc(r, i)
            for lane in range(v):
                total = total + lanes[i + (lane,)]
            return total

        res_fn: Fn = lanes_fn
    elif in_s[1] == 1 and size1 >= v:          # vectorized_outer_sum
        res_fn = _columns_te(acc, size0, outer, size1, size1 // (4 * v) * (4 * v), "cascade",
                             name)
    elif in_s[0] < in_s[1]:                    # scalar_inner_sum
        res_fn = _columns_te(acc, size0, outer, size1, size1, "row_sum", name)
    else:                                      # scalar_outer_sum
        res_fn = _columns_te(acc, size0, outer, size1, size1 // 4 * 4, "cascade", name)
    res = te_lib.elementwise(sp_shape, res_fn, f"{name}_res")

    # out = 0 + res over the calls (outer dims, TI dim 2 fastest) and, when the column dim is
    # reduced too, over the columns: one sequential sum in that order, computed over the kept
    # TensorIterator coordinates, then mapped to the output layout.
    red_outer = [t for t, st in enumerate(outer_out) if st == 0]
    kept = [t for t in range(len(outer)) if t not in red_outer]
    col_reduced = out_s[1] == 0
    axes = {t: te.reduce_axis((0, outer[t]), name=f"{name}_o{t}") for t in reversed(red_outer)}
    col_axis = te.reduce_axis((0, size1), name=f"{name}_j") if col_reduced else None
    order = [axes[t] for t in reversed(red_outer)] + ([col_axis] if col_axis is not None else [])
    slow_first = kept[::-1]                   # the output's dim order: largest stride first
    ti_shape = tuple(outer[t] for t in slow_first) + (() if col_reduced else (size1,))

    def ti_sum(*c: Any) -> Any:
        coords = dict(zip(slow_first, c))
        sp = tuple(axes[t] if t in axes else coords[t] for t in range(len(outer)))
        j = col_axis if col_axis is not None else c[-1]
        v = res[sp + (j,)]
        return te.sum(v, axis=order) if order else v

    ti = te.compute(ti_shape, ti_sum, name=f"{name}_ti")

    # a loop dim's coordinate from the output index: an affine sum over the dims it coalesces
    # (div/mod indexing would defeat the schedule's compute_at region analysis)
    orig_in = [math.prod(shape[d + 1:]) for d in range(len(shape))]

    def coord(i: tuple[Any, ...], group: list[int], stride: int) -> Any:
        c: Any = te.const(0, "int32")
        for d in group:
            if shape[d] > 1:
                c = c + i[d] * (orig_in[d] // stride)
        return c

    def load(i: tuple[Any, ...]) -> Any:
        c = [coord(i, plan.groups[2 + t], outer_in[t]) for t in slow_first]
        if not col_reduced:
            c.append(coord(i, col_group, in_s[1]))
        return ti[tuple(c)]

    return load


def _ravel_te(i: Sequence[Any], shape: Sequence[int]) -> Any:
    from qcompiler.ops.shape import ravel

    return ravel(tuple(i), shape)


# --- sort / topk -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QSortAttrs:
    dim: int = -1
    descending: bool = False
    stable: bool = False


def _order(x: np.ndarray, d: int, descending: bool) -> np.ndarray:
    """Stable argsort of the storage values along d (descending keeps equal values in order)."""
    key = x.astype(np.int64)
    return np.argsort(-key if descending else key, axis=d, kind="stable")


@register_op
class QSort(OpDef):
    """(values, indices) = sort of the storage along `dim`; values keep the qparams.

    indices (i64) order the elements; ties keep their input order (a stable sort). With
    stable=True that is exactly PyTorch. With stable=False PyTorch's order among equal values
    is unspecified (its unstable sort); values still match exactly, and so do the indices when
    each slice has distinct values. Per-tensor quantized input only, as in PyTorch.
    """

    name = "qnn.sort"
    Attrs = QSortAttrs
    num_inputs = 1
    schedule_kind = "reduction"
    torch_counterparts = ("torch.sort", "Tensor.sort")
    fidelity_note = ("indices of equal values with stable=False follow the stable order;"
                     " PyTorch's unstable order is unspecified")

    def infer_type(self, attrs: QSortAttrs, x: TensorType) -> tuple[TensorType, TensorType]:
        _need_per_tensor(self.name, x, "a float sort",
                         "Expected quantizer->qscheme() == kPerTensorAffine to be true")
        wrap_dim(self.name, attrs.dim, x.rank)
        return x, TensorType(x.shape, i64)

    def reference(self, sig: Sig, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if x.ndim == 0:
            return x.copy(), np.array(0, np.int64)
        d = sig.attrs.dim % x.ndim
        idx = _order(x, d, sig.attrs.descending)
        return contiguous_copy(np.take_along_axis(x, idx, d)), contiguous_copy(idx.astype(np.int64))

    def lower(self, sig: Sig, x: Any) -> tuple[Any, Any]:
        return _sort_te(sig, x, self.name.replace(".", "_"))

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for dtype in (u8, i8, i32):
            ty, x = S.qtensor(rng, (3, 4, 9), dtype)
            x = (x % 5).astype(dtype.np)                     # many ties
            yield OpSample(QSortAttrs(-1, False, True), (ty,), (x,), f"{dtype}-ties-stable")
            yield OpSample(QSortAttrs(1, True, True), (ty,), (x,), f"{dtype}-ties-stable-desc")
        ty, x = _distinct(rng, (6, 40), u8, axis=1)
        yield OpSample(QSortAttrs(), (ty,), (x,), "distinct-unstable")
        ty, x = _distinct(rng, (33, 3), i8, axis=0)
        yield OpSample(QSortAttrs(0, True), (ty,), (x,), "distinct-unstable-desc-dim0")
        ty, x = S.qtensor(rng, (), u8)
        yield OpSample(QSortAttrs(0), (ty,), (x,), "0d")

    def torch_reference(self, sample: OpSample, sig: Sig) -> tuple[np.ndarray, np.ndarray]:
        import torch

        a = sample.attrs
        vals, idx = torch.sort(_qin(sample), dim=a.dim, descending=a.descending,
                               stable=a.stable)
        return (torch_result(vals, sig.out_types[0], "values"),
                torch_result(idx, sig.out_types[1], "indices"))


def _distinct(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, axis: int
              ) -> tuple[TensorType, np.ndarray]:
    """A per-tensor quantized tensor whose slices along `axis` hold distinct values."""
    ty, x = S.qtensor(rng, shape, dtype)
    n = shape[axis]
    moved = np.moveaxis(x, axis, -1).copy()
    for idx in np.ndindex(*moved.shape[:-1]):
        pick = np.array([dtype.qmin, dtype.qmax][:n], np.int64)
        while pick.size < n:
            more = rng.integers(dtype.qmin, dtype.qmax, size=n, endpoint=True)
            pick = np.concatenate([pick, np.setdiff1d(more, pick)])[:n]
        moved[idx] = rng.permutation(pick).astype(dtype.np)
    return ty, np.moveaxis(moved, -1, axis).copy()


def _sort_te(sig: Sig, x: Any, name: str) -> tuple[Any, Any]:
    """TE for sort and topk by ranking: O(n**2) per slice, exact and stable.

    rank[i] = #{j : key_j before key_i} where "before" is the stable order (smaller key, or
    equal key and smaller j; larger key first when descending); the element of output position
    p is the i with rank[i] == p. TODO: a real sort kernel for long rows.
    """
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import te, tirx

    t = sig.in_types[0]
    a = sig.attrs
    desc = a.largest if hasattr(a, "largest") else a.descending
    if t.rank == 0:
        return (te_lib.elementwise((), lambda i: x[()], name),
                te_lib.elementwise((), lambda i: te.const(0, "int64"), f"{name}_idx"))
    d = a.dim % t.rank
    n = t.shape[d]
    j = te.reduce_axis((0, n), name="j")

    def put(i: tuple[Any, ...], k: Any) -> tuple[Any, ...]:
        return i[:d] + (k,) + i[d + 1:]

    def before(i: tuple[Any, ...]) -> Any:
        kj, ki = x[put(i, j)], x[i]
        first = kj > ki if desc else kj < ki
        return tirx.Select(tirx.Or(first, tirx.And(kj == ki, j < i[d])),
                           te.const(1, "int32"), te.const(0, "int32"))

    rank = te.compute(t.shape, lambda *i: te.sum(before(tuple(i)), axis=j), name=f"{name}_rank")
    m = te.reduce_axis((0, n), name="m")
    idx = te.compute(sig.out_types[1].shape, lambda *p: te.sum(tirx.Select(
        rank[put(tuple(p), m)] == p[d], m.astype("int64"), te.const(0, "int64")), axis=m),
        name=f"{name}_idx")
    vals = te_lib.elementwise(sig.out_types[0].shape,
                              lambda p: x[put(p, idx[p].astype("int32"))], name)
    return vals, idx


@dataclass(frozen=True)
class QTopkAttrs:
    k: int
    dim: int = -1
    largest: bool = True
    sorted: bool = True


@register_op
class QTopk(OpDef):
    """(values, indices) = the k largest (or smallest) storage values along `dim`, in order.

    Values keep the qparams; indices are i64. Among equal values we take the lowest index
    first; PyTorch's choice among ties (std::partial_sort / nth_element) is unspecified, so
    values always match it and indices match when the values are distinct. With sorted=False
    PyTorch returns the k elements in an unspecified order; we return them sorted.
    Per-tensor quantized input only, as in PyTorch.
    """

    name = "qnn.topk"
    Attrs = QTopkAttrs
    num_inputs = 1
    schedule_kind = "reduction"
    torch_counterparts = ("torch.topk", "Tensor.topk")
    fidelity_note = ("indices of tied values, and the order with sorted=False, are unspecified"
                     " in PyTorch; values always match")

    def infer_type(self, attrs: QTopkAttrs, x: TensorType) -> tuple[TensorType, TensorType]:
        _need_per_tensor(self.name, x, "a float topk",
                         "Top-K is only supported on per-tensor quantization")
        d = wrap_dim(self.name, attrs.dim, x.rank)
        n = x.shape[d] if x.rank else 1
        if not isinstance(attrs.k, int) or not 0 <= attrs.k <= n:
            raise TypeInferenceError(
                f"qnn.topk: k={attrs.k!r} is out of range for dim {d} of size {n}"
                " (expected 0..size)")
        shape = list(x.shape)
        if x.rank:
            shape[d] = attrs.k
        return (TensorType(tuple(shape), x.dtype, x.qparams),
                TensorType(tuple(shape), i64))

    def reference(self, sig: Sig, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = sig.attrs
        if x.ndim == 0:
            return x.copy(), np.array(0, np.int64)
        d = a.dim % x.ndim
        idx = np.take(_order(x, d, a.largest), np.arange(a.k), axis=d)
        return contiguous_copy(np.take_along_axis(x, idx, d)), contiguous_copy(idx.astype(np.int64))

    def lower(self, sig: Sig, x: Any) -> tuple[Any, Any]:
        return _sort_te(sig, x, self.name.replace(".", "_"))

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for dtype in (u8, i8, i32):
            ty, x = _distinct(rng, (3, 50), dtype, axis=1)
            yield OpSample(QTopkAttrs(4), (ty,), (x,), f"{dtype}-top4")
            yield OpSample(QTopkAttrs(2, largest=False), (ty,), (x,), f"{dtype}-bottom2")
        ty, x = _distinct(rng, (9, 4), u8, axis=0)
        yield OpSample(QTopkAttrs(9, 0), (ty,), (x,), "k-equals-n-dim0")
        yield OpSample(QTopkAttrs(6, -2, False), (ty,), (x,), "nth-element-path")
        yield OpSample(QTopkAttrs(0, 1), (ty,), (x,), "k0")
        ty, x = S.qtensor(rng, (), i8)
        yield OpSample(QTopkAttrs(1), (ty,), (x,), "0d")

    def torch_reference(self, sample: OpSample, sig: Sig) -> tuple[np.ndarray, np.ndarray]:
        import torch

        a = sample.attrs
        vals, idx = torch.topk(_qin(sample), a.k, dim=a.dim, largest=a.largest,
                               sorted=a.sorted)
        return (torch_result(vals, sig.out_types[0], "values"),
                torch_result(idx, sig.out_types[1], "indices"))


# --- storage ops -------------------------------------------------------------------------------


@register_op
class IntRepr(OpDef):
    """out = the storage integers of a quantized tensor, unquantized (u8/i8/i32, no qparams)."""

    name = "int_repr"
    num_inputs = 1
    torch_counterparts = ("Tensor.int_repr",)

    def infer_type(self, attrs: object, x: TensorType) -> TensorType:
        _need_quantized(self.name, x)
        if x.dtype.short == "u4":
            raise TypeInferenceError(
                "int_repr of quint4x2 is not supported (PyTorch returns the packed bytes);"
                " supported: quint8, qint8, qint32")
        return TensorType(x.shape, x.dtype, None)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        return x.copy()

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.ops.shape import copy_te

        return copy_te(x, "int_repr")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for dtype in (u8, i8, i32):
            ty, x = S.qtensor(rng, (2, 9), dtype, S.rand_scale(rng, 1e-6, 1e2),
                              S.rand_zp(rng, dtype, edge=True))
            yield OpSample(self.Attrs(), (ty,), (x,), str(dtype))
        ty, x = S.qtensor_per_channel(rng, (3, 4, 2), 1)
        yield OpSample(self.Attrs(), (ty,), (x,), "per-axis")
        ty, x = S.qtensor(rng, (), u8)
        yield OpSample(self.Attrs(), (ty,), (x,), "0d")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        return torch_result(_qin(sample).int_repr(), sig.out)


@dataclass(frozen=True)
class ResizeAttrs:
    shape: tuple[int, ...]


@register_op
class Resize(OpDef):
    """out = the first prod(shape) elements of in (row-major), viewed as `shape`.

    Tensor.resize_ semantics on a contiguous tensor, for any dtype and per-tensor quantized
    tensors (PyTorch rejects per-axis: "Can only resize quantized tensors with per-tensor
    schemes!"). Growing is rejected: PyTorch leaves the new elements uninitialized.
    """

    name = "resize"
    Attrs = ResizeAttrs
    num_inputs = 1
    torch_counterparts = ("Tensor.resize_",)

    def infer_type(self, attrs: ResizeAttrs, x: TensorType) -> TensorType:
        shape = int_tuple(self.name, "shape", attrs.shape)
        if any(d < 0 for d in shape):
            raise TypeInferenceError(f"resize: sizes must be non-negative, got {list(shape)}")
        reject_per_axis(self.name, x, "Can only resize quantized tensors with per-tensor"
                                      " schemes!")
        if math.prod(shape) > x.numel:
            raise TypeInferenceError(
                f"resize to {list(shape)} ({math.prod(shape)} elements) would grow {x}"
                f" ({x.numel} elements); PyTorch leaves the new elements uninitialized, so only"
                " shrinking or keeping the element count is supported")
        return TensorType(shape, x.dtype, x.qparams)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        shape = sig.out.shape
        return contiguous_copy(x.reshape(-1)[:math.prod(shape)].reshape(shape))

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.ops.shape import reshape_te

        return reshape_te(x, sig.out.shape, "resize")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        ty, x = S.qtensor(rng, (3, 7), u8)
        yield OpSample(ResizeAttrs((4, 5)), (ty,), (x,), "u8-shrink")
        yield OpSample(ResizeAttrs((7, 3)), (ty,), (x,), "u8-same-numel")
        yield OpSample(ResizeAttrs((0,)), (ty,), (x,), "empty")
        yield OpSample(ResizeAttrs(()), (ty,), (x,), "to-0d")
        ty, x = S.qtensor(rng, (2, 3, 4), i32)
        yield OpSample(ResizeAttrs((5,)), (ty,), (x,), "i32")
        ty, x = S.ftensor(rng, (2, 5))
        yield OpSample(ResizeAttrs((3, 3)), (ty,), (x,), "f32")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        t = _qin(sample).clone()
        return torch_result(t.resize_(sample.attrs.shape), sig.out)
