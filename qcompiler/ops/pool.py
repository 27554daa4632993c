"""Quantized pooling and resampling: max/avg/adaptive-avg pools, nearest and bilinear upsample.

Per-tensor quint8 (u8) / qint8 (i8) inputs in contiguous NC[D]HW layout (max pool and nearest
upsample, which only move values, also take qint32); the output keeps the input's qparams, as
in PyTorch. Every op reproduces PyTorch 2.13's quantized CPU kernels (x86, AVX-512 build)
exactly, including one layout subtlety: a contiguous NCHW tensor with C == 1 or H == W == 1 is
*also* channels-last contiguous, and PyTorch then runs its channels-last kernel, whose rounding
differs. The references pick the kernel from the shape the same way (`takes_channels_last`).

One PyTorch bug is not reproduced: with a 1x1 (1x1x1) spatial input, C > 1 and a larger
output, every op here (max/avg/adaptive pools, nearest/bilinear upsample, 2-D and 3-D) runs
the channels-last kernel but allocates a contiguous NCHW output, so PyTorch returns the right
integers at permuted positions (out.reshape(N, *spatial, C) holds them). The references compute
the intended result (each output pixel from its window, i.e. a broadcast of the input pixel
for max pool and upsampling), the samples leave the case out, and
tests/ops/test_elementwise_errors.py pins both facts.

Window rules are PyTorch's: output size floor((I + 2p - d(k-1) - 1) / s) + 1 (with ceil_mode,
ceil and the last window must start inside the input or left padding); padding at most half
the kernel; adaptive windows [floor(o*I/O), ceil((o+1)*I/O)) computed in float32.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qcompiler.errors import TypeInferenceError
from qcompiler.ir.registry import OpDef, OpSample, Sig, register_op
from qcompiler.ir.types import DType, QParams, TensorType, i8, i32, u8
from qcompiler.ops.elementwise import (
    check_qtensor,
    edge_q,
    inv_f,
    quant_val,
    quant_vec,
    sample_qparams,
    torch_quiet,
)
from qcompiler.reference import vecmath as vm
from qcompiler.testing import samples as S

F32 = np.float32
MOVE_DTYPES: tuple[DType, ...] = (u8, i8, i32)


def takes_channels_last(shape: Sequence[int]) -> bool:
    """Whether a contiguous N,C,*spatial tensor is also channels-last contiguous in PyTorch.

    Size-1 dims have no stride constraint, so this holds iff C == 1 or all spatial sizes are
    1. PyTorch's quantized pooling/upsample kernels then take their channels-last path.
    """
    return shape[1] == 1 or math.prod(shape[2:]) == 1


def _ints(op: str, name: str, v: Any, n: int, allow_empty: bool = False) -> tuple[int, ...]:
    """An attribute given as an int or a tuple of 1 or n ints, expanded to n ints."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return (int(v),) * n
    if not isinstance(v, (tuple, list)) or not all(
            isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v):
        raise TypeInferenceError(f"{op}: {name} must be an int or a tuple of ints, got {v!r}")
    if len(v) == 0 and allow_empty:
        return ()
    if len(v) == 1:
        return (int(v[0]),) * n
    if len(v) != n:
        raise TypeInferenceError(f"{op}: {name} must have 1 or {n} elements, got {list(v)}")
    return tuple(int(x) for x in v)


def _check_rank(op: str, x: TensorType, spatial: int) -> None:
    if x.rank != spatial + 2:
        layout = "N,C," + ",".join("DHW"[3 - spatial:])
        raise TypeInferenceError(
            f"{op}: input must be {spatial + 2}-D ({layout}), got shape {list(x.shape)}")
    if any(d == 0 for d in x.shape[1:]):
        raise TypeInferenceError(f"{op}: input has an empty dimension: {list(x.shape)}")


def pool_out_size(i: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """PyTorch's pooling_output_shape (floor division, ceil_mode last-window rule)."""
    o = (i + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (o - 1) * s >= i + p:
        o -= 1
    return o


@dataclass(frozen=True)
class _Window:
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]


def _window(op: str, attrs: Any, x: TensorType, spatial: int,
            dilation: bool) -> tuple[_Window, tuple[int, ...]]:
    """Validated kernel/stride/padding/dilation and the output spatial sizes."""
    k = _ints(op, "kernel_size", attrs.kernel_size, spatial)
    st = _ints(op, "stride", attrs.stride, spatial, allow_empty=True) or k
    p = _ints(op, "padding", attrs.padding, spatial)
    d = _ints(op, "dilation", attrs.dilation, spatial) if dilation else (1,) * spatial
    if any(v <= 0 for v in k):
        raise TypeInferenceError(f"{op}: kernel_size must be > 0, got {list(k)}")
    if any(v <= 0 for v in st):
        raise TypeInferenceError(f"{op}: stride must be > 0, got {list(st)}")
    if any(v <= 0 for v in d):
        raise TypeInferenceError(f"{op}: dilation must be > 0, got {list(d)}")
    if any(v < 0 for v in p):
        raise TypeInferenceError(f"{op}: padding must be >= 0, got {list(p)}")
    if any(pp > kk // 2 for pp, kk in zip(p, k)):
        raise TypeInferenceError(
            f"{op}: padding {list(p)} must be at most half of kernel_size {list(k)}")
    ins = x.shape[2:]
    out = tuple(pool_out_size(i, kk, ss, pp, dd, bool(attrs.ceil_mode))
                for i, kk, ss, pp, dd in zip(ins, k, st, p, d))
    if any(o < 1 for o in out):
        raise TypeInferenceError(
            f"{op}: input spatial size {list(ins)} is too small for kernel {list(k)}, stride"
            f" {list(st)}, padding {list(p)}, dilation {list(d)}: output would be {list(out)}")
    return _Window(k, st, p, d), out


def _windows_1d(i: int, o: int, k: int, s: int, p: int) -> list[tuple[int, int, int]]:
    """Per output index: (start, end) clipped to the input, and the padded pool length."""
    res = []
    for j in range(o):
        start = j * s - p
        end = min(start + k, i + p)
        res.append((max(start, 0), min(end, i), end - start))
    return res


# --- max pool --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaxPoolAttrs:
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...] = ()
    """Empty: equal to kernel_size (PyTorch's default)."""
    padding: tuple[int, ...] = (0,)
    dilation: tuple[int, ...] = (1,)
    ceil_mode: bool = False


_UNROLLED_TAPS = 64
"""Max pools with undilated windows of at most this many taps lower to an element-wise max."""


class _MaxPool(OpDef):
    Attrs = MaxPoolAttrs
    num_inputs = 1
    schedule_kind = "reduction"
    spatial: ClassVar[int] = 2

    def infer_type(self, attrs: MaxPoolAttrs, x: TensorType) -> TensorType:
        check_qtensor(self.name, x, dtypes=MOVE_DTYPES)
        _check_rank(self.name, x, self.spatial)
        _, out = _window(self.name, attrs, x, self.spatial, dilation=True)
        return x.with_shape(x.shape[:2] + out)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        w, out = _window(self.name, sig.attrs, sig.in_types[0], self.spatial, dilation=True)
        # PyTorch starts every window at the dtype's lowest value, so padding never wins and a
        # window that (with dilation) only covers padding yields qmin.
        sentinel = sig.out.dtype.qmin
        pad = [(0, 0), (0, 0)] + [(p, p + k * d) for p, k, d in
                                  zip(w.padding, w.kernel, w.dilation)]
        xp = np.pad(x.astype(np.int64), pad, constant_values=sentinel)
        res = np.full(x.shape[:2] + out, sentinel, np.int64)
        for offs in itertools.product(*(range(k) for k in w.kernel)):
            sl = tuple(slice(o * d, o * d + (n - 1) * s + 1, s)
                       for o, d, n, s in zip(offs, w.dilation, out, w.stride))
            res = np.maximum(res, xp[(slice(None), slice(None)) + sl])
        return res.astype(x.dtype)

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.tvm_compat import te, tirx

        ty = sig.in_types[0]
        w, _ = _window(self.name, sig.attrs, ty, self.spatial, dilation=True)
        # every window must hold an input element: the first starts at -p, the last at
        # (out - 1) * s - p (PyTorch's shapes guarantee both; checked, not assumed)
        if (all(d == 1 for d in w.dilation) and math.prod(w.kernel) <= _UNROLLED_TAPS
                and all(w.padding[d] <= w.kernel[d] - 1
                        and (sig.out.shape[2 + d] - 1) * w.stride[d] - w.padding[d]
                        <= ty.shape[2 + d] - 1 for d in range(self.spatial))):
            return self._lower_unrolled(sig, x, w)
        ks = [te.reduce_axis((0, k), name=f"k{d}") for d, k in enumerate(w.kernel)]
        low = te.const(sig.out.dtype.qmin, sig.out.dtype.storage)

        def body(i: tuple[Any, ...]) -> Any:
            idx = [i[2 + d] * w.stride[d] - w.padding[d] + ks[d] * w.dilation[d]
                   for d in range(self.spatial)]
            inside = tirx.And(idx[0] >= 0, idx[0] < ty.shape[2])
            for d in range(1, self.spatial):
                inside = tirx.And(inside, tirx.And(idx[d] >= 0, idx[d] < ty.shape[2 + d]))
            v = tirx.if_then_else(inside, x[(i[0], i[1]) + tuple(idx)], low)
            return te.max(v, axis=ks)

        return te_lib.elementwise(sig.out.shape, body, self.name.replace(".", "_"))

    def _lower_unrolled(self, sig: Sig, x: Any, w: Any) -> Any:
        """Undilated windows: an element-wise max over the taps (vectorized along the last
        axis by the generic rules; a reduction loop would stay scalar), each tap reading the
        input at its index clamped into range. Exact: with dilation 1 a window has at least one
        tap inside (checked by the caller), and a clamped tap reads the nearest inside tap,
        which is in the window; max is idempotent."""
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.tvm_compat import te

        ty = sig.in_types[0]
        taps = list(itertools.product(*[range(k) for k in w.kernel]))

        def clamp(v: Any, n: int) -> Any:
            return te.min(te.max(v, 0), n - 1)

        def body(i: tuple[Any, ...]) -> Any:
            acc = None
            for t in taps:
                idx = tuple(clamp(i[2 + d] * w.stride[d] - w.padding[d] + t[d], ty.shape[2 + d])
                            for d in range(self.spatial))
                v = x[(i[0], i[1]) + idx]
                acc = v if acc is None else te.max(acc, v)
            return acc

        return te_lib.elementwise(sig.out.shape, body, self.name.replace(".", "_"))

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        torch = torch_quiet()
        a = sample.attrs
        x = to_torch(sample.arrays[0], sample.in_types[0])
        fn = getattr(torch.nn.functional, f"max_pool{self.spatial}d")
        return to_numpy(fn(x, list(a.kernel_size), list(a.stride), list(a.padding),
                           list(a.dilation), a.ceil_mode))

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        n = self.spatial
        cases = {
            1: (((2, 3, 17), (3,), (2,), (1,), (1,), False), ((1, 5, 65), (4,), (), (2,), (1,),
                True), ((3, 2, 7), (2,), (1,), (0,), (3,), False), ((1, 1, 129), (5,), (3,),
                                                                   (2,), (2,), True)),
            2: (((1, 3, 9, 9), (3, 3), (2, 2), (1, 1), (1, 1), False),
                ((2, 4, 7, 10), (2, 3), (), (1, 0), (1, 1), True),
                ((1, 16, 5, 5), (3, 2), (1, 2), (1, 1), (2, 1), False),
                ((2, 1, 8, 7), (2, 2), (3, 1), (0, 1), (1, 2), True),
                ((1, 65, 1, 1), (1, 1), (1, 1), (0, 0), (1, 1), False),
                ((1, 2, 13, 3), (4, 1), (3, 1), (2, 0), (1, 1), True)),
            3: (((1, 2, 5, 6, 7), (2, 3, 2), (), (1, 1, 0), (1, 1, 1), False),
                ((2, 3, 4, 4, 4), (3, 3, 3), (2, 1, 2), (1, 1, 1), (1, 1, 1), True),
                ((1, 1, 7, 5, 9), (2, 2, 3), (2, 2, 2), (0, 1, 1), (2, 1, 1), False)),
        }[n]
        for k, (shape, ks, st, pad, dil, ceil) in enumerate(cases * 2):
            dtype = MOVE_DTYPES[k % 3]
            s, z = sample_qparams(rng, dtype, k)
            if dtype is i32:
                z = S.rand_zp(rng, dtype)
            ty, a = edge_q(rng, shape, dtype, s, z)
            yield OpSample(MaxPoolAttrs(ks, st, pad, dil, ceil), (ty,), (a,),
                           f"{dtype}-{'x'.join(map(str, shape))}-k{ks}-s{st}-p{pad}-d{dil}"
                           f"{'-ceil' if ceil else ''}")


@register_op
class QMaxPool1d(_MaxPool):
    """out[n,c,l] = max of q over the dilated window (padding never wins; a window covering
    only padding gives qmin); exact (integer comparisons). PyTorch: F.max_pool1d / qF.max_pool1d / nnq.MaxPool1d on N,C,L input."""

    name = "qnn.max_pool1d"
    spatial = 1
    torch_counterparts = ("F.max_pool1d", "qF.max_pool1d", "nn.MaxPool1d")


@register_op
class QMaxPool2d(_MaxPool):
    """out[n,c,h,w] = max of q over the dilated window (padding never wins); exact.
    PyTorch: F.max_pool2d / qF.max_pool2d / torch.ops.quantized.max_pool2d on N,C,H,W."""

    name = "qnn.max_pool2d"
    spatial = 2
    torch_counterparts = ("F.max_pool2d", "qF.max_pool2d", "nn.MaxPool2d")


@register_op
class QMaxPool3d(_MaxPool):
    """out[n,c,d,h,w] = max of q over the dilated window; exact (F.max_pool3d on N,C,D,H,W)."""

    name = "qnn.max_pool3d"
    spatial = 3
    torch_counterparts = ("F.max_pool3d", "nn.MaxPool3d")


# --- avg pool --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AvgPoolAttrs:
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...] = ()
    """Empty: equal to kernel_size (PyTorch's default)."""
    padding: tuple[int, ...] = (0,)
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None


def _quant_nhwc(acc: np.ndarray, m: np.ndarray, zp: int, dtype: DType,
                vec_channels: int) -> np.ndarray:
    """PyTorch's channels-last avg-pool requantization of int accumulators acc[N, C, ...]:
    channels c < vec_channels: QuantizeAvx512 with multiplier m (zp + rint(f32(acc) * m));
    the rest: quantize_val with scale 1/m (rint(f32(zp) + f32(acc * (1f / (1f / m)))))."""
    qp = QParams.per_tensor(1.0, zp)
    accf = acc.astype(F32)
    inv = (F32(1) / (F32(1) / m)).astype(F32)
    out = quant_val(accf, inv, qp, dtype)
    vec = quant_vec(accf, m, qp, dtype)
    out[:, :vec_channels] = vec[:, :vec_channels]
    return out


class _AvgPool(OpDef):
    Attrs = AvgPoolAttrs
    num_inputs = 1
    schedule_kind = "reduction"
    spatial: ClassVar[int] = 2
    torch_fn: ClassVar[str] = "avg_pool2d"

    def infer_type(self, attrs: AvgPoolAttrs, x: TensorType) -> TensorType:
        check_qtensor(self.name, x)
        _check_rank(self.name, x, self.spatial)
        div = attrs.divisor_override
        if div is not None and (not isinstance(div, (int, np.integer)) or isinstance(div, bool)
                                or div == 0):
            raise TypeInferenceError(
                f"{self.name}: divisor_override must be a nonzero int or None, got {div!r}")
        _, out = _window(self.name, attrs, x, self.spatial, dilation=False)
        return x.with_shape(x.shape[:2] + out)

    def accumulate(self, sig: Sig, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Window sums acc = sum(q) - zp * count (int64) and divisors, per output position."""
        a = sig.attrs
        ty = sig.in_types[0]
        qp = ty.qparams
        assert qp is not None
        w, out = _window(self.name, a, ty, self.spatial, dilation=False)
        wins = [_windows_1d(i, o, k, s, p) for i, o, k, s, p in
                zip(ty.shape[2:], out, w.kernel, w.stride, w.padding)]
        acc = np.zeros(ty.shape[:2] + out, np.int64)
        div = np.zeros(out, np.int64)
        q = x.astype(np.int64)
        for pos in itertools.product(*(range(o) for o in out)):
            sel = tuple(slice(wins[d][pos[d]][0], wins[d][pos[d]][1]) for d in range(len(out)))
            cnt = math.prod(wins[d][pos[d]][1] - wins[d][pos[d]][0] for d in range(len(out)))
            pool = math.prod(wins[d][pos[d]][2] for d in range(len(out)))
            acc[(slice(None), slice(None)) + pos] = \
                q[(slice(None), slice(None)) + sel].sum(axis=tuple(range(2, 2 + len(out)))) \
                - qp.zp_value * cnt
            div[pos] = a.divisor_override or (pool if a.count_include_pad else cnt)
        return acc, div, self.spatial == 3 or takes_channels_last(ty.shape)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        acc, div, nhwc = self.accumulate(sig, x)
        qp = sig.in_types[0].qparams
        assert qp is not None
        m = (F32(1) / div.astype(F32)).astype(F32)  # in_scale / out_scale == 1.0f
        if nhwc:
            return _quant_nhwc(acc, m, qp.zp_value, sig.out.dtype, x.shape[1] // 16 * 16)
        t = ((acc.astype(F32) * m).astype(F32) + F32(qp.zp_value)).astype(F32)
        r = np.rint(t.astype(np.float64))
        return np.clip(r, sig.out.dtype.qmin, sig.out.dtype.qmax).astype(sig.out.dtype.np)

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.te_vecmath import q_vec_torch
        from qcompiler.lowering.tvm_compat import te, tirx

        a, ty, dt = sig.attrs, sig.in_types[0], sig.out.dtype
        qp = ty.qparams
        assert qp is not None
        w, _ = _window(self.name, a, ty, self.spatial, dilation=False)
        nhwc = self.spatial == 3 or takes_channels_last(ty.shape)
        vec_c = ty.shape[1] // 16 * 16
        ks = [te.reduce_axis((0, k), name=f"k{d}") for d, k in enumerate(w.kernel)]
        i32 = "int32"

        def total(*i: Any) -> Any:
            idx = [i[2 + d] * w.stride[d] - w.padding[d] + ks[d] for d in range(self.spatial)]
            inside = tirx.And(idx[0] >= 0, idx[0] < ty.shape[2])
            for d in range(1, self.spatial):
                inside = tirx.And(inside, tirx.And(idx[d] >= 0, idx[d] < ty.shape[2 + d]))
            v = tirx.if_then_else(inside, x[(i[0], i[1]) + tuple(idx)].astype(i32),
                                  te.const(0, i32))
            return te.sum(v, axis=ks)

        sums = te.compute(sig.out.shape, total, name=f"{self.name.replace('.', '_')}_sum")
        zp_f = te_lib.f32_const(qp.zp_value)

        def body(i: tuple[Any, ...]) -> Any:
            cnt, pool = te.const(1, i32), te.const(1, i32)
            for d in range(self.spatial):  # PyTorch's window arithmetic, per dim
                start = i[2 + d] * w.stride[d] - w.padding[d]
                end = te.min(start + w.kernel[d], ty.shape[2 + d] + w.padding[d])
                pool = pool * (end - start)
                cnt = cnt * (te.min(end, ty.shape[2 + d]) - te.max(start, 0))
            if a.divisor_override:
                div: Any = te.const(int(a.divisor_override), i32)
            else:
                div = pool if a.count_include_pad else cnt
            m = te_lib.fence(te_lib.f32_const(1.0) / div.astype("float32"))
            acc = (sums[i] - cnt * te.const(qp.zp_value, i32)).astype("float32")
            if not nhwc:
                t = te_lib.fence(acc * m) + zp_f
                return te_lib.saturate(te_lib.round_half_even(t), dt)
            inv = te_lib.fence(te_lib.f32_const(1.0) / te_lib.fence(te_lib.f32_const(1.0) / m))
            val = te_lib.q_val_value(acc, inv, zp_f, dt)
            if vec_c == 0:
                return val
            # |acc * m| <= 256 * window size: no int32 overflow in the vector quantize
            bound = 256.0 * math.prod(w.kernel)
            return tirx.Select(i[1] < vec_c, q_vec_torch(acc, m, qp.zp_value, dt, bound), val)

        return te_lib.elementwise(sig.out.shape, body, self.name.replace(".", "_"))

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        torch = torch_quiet()
        a = sample.attrs
        x = to_torch(sample.arrays[0], sample.in_types[0])
        fn = getattr(torch.nn.functional, self.torch_fn)
        return to_numpy(fn(x, list(a.kernel_size), list(a.stride), list(a.padding),
                           a.ceil_mode, a.count_include_pad, a.divisor_override))


_AVG2D_CASES: tuple[tuple[Any, ...], ...] = (
    ((1, 3, 9, 9), (3, 3), (2, 2), (1, 1), False, True, None),
    ((2, 4, 7, 10), (2, 3), (), (1, 0), True, False, None),
    ((1, 17, 5, 5), (3, 2), (1, 2), (1, 1), False, False, 7),
    ((2, 1, 8, 7), (2, 2), (3, 1), (0, 1), True, True, None),        # C == 1: NHWC kernel
    ((1, 33, 1, 1), (3, 3), (1, 1), (1, 1), False, True, None),      # 1x1: NHWC kernel
    ((1, 2, 13, 3), (4, 1), (3, 1), (2, 0), True, False, 3),
    ((3, 5, 6, 6), (6, 6), (), (0, 0), False, True, None),
    ((1, 20, 1, 1), (1, 1), (), (0, 0), False, True, 2),
)


@register_op
class QAvgPool2d(_AvgPool):
    """Average pool with the input's qparams; acc = sum(q) - zp * count (int), m = 1f / f32(div)
    where div = divisor_override, else the padded window size (count_include_pad) or the
    number of input elements in the window.

    Contiguous path: out = clamp(rint(f32(f32(acc) * m) + f32(zp))).
    PyTorch's channels-last path, taken for C == 1 or H == W == 1: channels c < C//16*16 give
    clamp(zp + rint(f32(acc) * m)), the rest clamp(rint(f32(zp) + f32(acc) * (1f/(1f/m)))).
    Exactly F.avg_pool2d on a quantized tensor.
    """

    name = "qnn.avg_pool2d"
    spatial = 2
    torch_fn = "avg_pool2d"
    torch_counterparts = ("F.avg_pool2d", "qF.avg_pool2d", "nn.AvgPool2d")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for k, (shape, ks, st, pad, ceil, cip, div) in enumerate(_AVG2D_CASES * 2):
            dtype = (u8, i8)[k % 2]
            ty, a = edge_q(rng, shape, dtype, *sample_qparams(rng, dtype, k))
            yield OpSample(AvgPoolAttrs(ks, st, pad, ceil, cip, div), (ty,), (a,),
                           f"{dtype}-{'x'.join(map(str, shape))}-k{ks}-s{st}-p{pad}"
                           f"{'-ceil' if ceil else ''}{'-cip' if cip else ''}-div{div}")


@register_op
class QAvgPool3d(_AvgPool):
    """3-D average pool. PyTorch always runs its channels-last kernel here (it converts the
    input): acc as avg_pool2d, m = 1f / f32(div); channels c < C//16*16 give
    clamp(zp + rint(f32(acc) * m)), the rest clamp(rint(f32(zp) + f32(acc) * (1f/(1f/m)))).
    Exactly F.avg_pool3d on a quantized tensor."""

    name = "qnn.avg_pool3d"
    spatial = 3
    torch_fn = "avg_pool3d"
    torch_counterparts = ("F.avg_pool3d", "qF.avg_pool3d", "nn.AvgPool3d")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases = (((1, 3, 4, 5, 6), (2, 2, 3), (), (1, 1, 0), False, True, None),
                 ((2, 17, 3, 4, 4), (3, 2, 2), (1, 2, 2), (1, 1, 1), True, False, None),
                 ((1, 33, 2, 3, 3), (2, 3, 3), (1, 1, 1), (0, 1, 1), False, True, 5),
                 ((1, 1, 5, 5, 5), (3, 3, 3), (2, 2, 2), (1, 1, 1), True, True, None),
                 ((2, 16, 2, 2, 2), (2, 2, 2), (), (1, 1, 1), False, False, None))
        for k, (shape, ks, st, pad, ceil, cip, div) in enumerate(cases * 2):
            dtype = (u8, i8)[k % 2]
            ty, a = edge_q(rng, shape, dtype, *sample_qparams(rng, dtype, k))
            yield OpSample(AvgPoolAttrs(ks, st, pad, ceil, cip, div), (ty,), (a,),
                           f"{dtype}-{'x'.join(map(str, shape))}-k{ks}-s{st}-p{pad}"
                           f"{'-ceil' if ceil else ''}{'-cip' if cip else ''}-div{div}")


# --- adaptive avg pool -----------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptivePoolAttrs:
    output_size: tuple[int, ...]
    """Output spatial size (one int per spatial dim, or one int for all)."""


def adaptive_window(o: int, osize: int, isize: int) -> tuple[int, int]:
    """[floor(f32(o*I)/O), ceil(f32((o+1)*I)/O)) with float32 division, as PyTorch."""
    start = int(np.floor(F32(o * isize) / F32(osize)))
    end = int(np.ceil(F32((o + 1) * isize) / F32(osize)))
    return start, end


class _AdaptiveAvgPool(OpDef):
    Attrs = AdaptivePoolAttrs
    num_inputs = 1
    schedule_kind = "reduction"
    spatial: ClassVar[int] = 2

    def _out(self, attrs: AdaptivePoolAttrs, x: TensorType) -> tuple[int, ...]:
        out = _ints(self.name, "output_size", attrs.output_size, self.spatial)
        if any(o <= 0 for o in out):
            raise TypeInferenceError(f"{self.name}: output_size must be > 0, got {list(out)}")
        return out

    def infer_type(self, attrs: AdaptivePoolAttrs, x: TensorType) -> TensorType:
        check_qtensor(self.name, x)
        _check_rank(self.name, x, self.spatial)
        return x.with_shape(x.shape[:2] + self._out(attrs, x))

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        ty = sig.in_types[0]
        qp = ty.qparams
        assert qp is not None
        out = self._out(sig.attrs, ty)
        wins = [[adaptive_window(o, n, i) for o in range(n)] for i, n in zip(ty.shape[2:], out)]
        nhwc = takes_channels_last(ty.shape)
        q = x.astype(np.int64)
        res = np.zeros(ty.shape[:2] + out, sig.out.dtype.np)
        axes = tuple(range(2, 2 + self.spatial))
        for pos in itertools.product(*(range(o) for o in out)):
            ks = [wins[d][pos[d]][1] - wins[d][pos[d]][0] for d in range(self.spatial)]
            sel = tuple(slice(*wins[d][pos[d]]) for d in range(self.spatial))
            total = q[(slice(None), slice(None)) + sel].sum(axis=axes)
            idx = (slice(None), slice(None)) + pos
            if not nhwc:
                # r = ((f32(1.0 / kD) / kH) / kW); out = rint(f32(sum) * r), no zp, no clamp
                r = F32(1.0 / ks[0]) if self.spatial == 3 else F32(1.0)
                for kk in ks[-2:]:
                    r = F32(r / F32(kk))
                res[idx] = np.rint((total.astype(F32) * r).astype(np.float64)).astype(
                    sig.out.dtype.np)
                continue
            # channels-last kernel: acc = sum - zp * size, quantize_val with scale 1/m. With
            # C == 1 there are no vectorized channels; with a 1x1(x1) input acc * 1 + zp == q.
            size = math.prod(ks)
            m = F32(F32(1) / F32(size))
            acc = (total - qp.zp_value * size).astype(F32)
            res[idx] = quant_val(acc, F32(F32(1) / (F32(1) / m)), qp, sig.out.dtype)
        return res

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.tvm_compat import te, tirx

        ty, dt = sig.in_types[0], sig.out.dtype
        qp = ty.qparams
        assert qp is not None
        out = self._out(sig.attrs, ty)
        nhwc = takes_channels_last(ty.shape)
        base = self.name.replace(".", "_")
        starts, lens, ks = [], [], []
        for d, (i, n) in enumerate(zip(ty.shape[2:], out)):
            win = np.array([adaptive_window(o, n, i) for o in range(n)], np.int32)
            starts.append(te_lib.constant(win[:, 0].copy(), f"{base}_start{d}"))
            lens.append(te_lib.constant((win[:, 1] - win[:, 0]).astype(np.int32),
                                        f"{base}_len{d}"))
            ks.append(te.reduce_axis((0, int((win[:, 1] - win[:, 0]).max())), name=f"k{d}"))

        def total(*i: Any) -> Any:
            inside = ks[0] < lens[0][i[2]]
            for d in range(1, self.spatial):
                inside = tirx.And(inside, ks[d] < lens[d][i[2 + d]])
            idx = tuple(starts[d][i[2 + d]] + ks[d] for d in range(self.spatial))
            v = tirx.if_then_else(inside, x[(i[0], i[1]) + idx].astype("int32"),
                                  te.const(0, "int32"))
            return te.sum(v, axis=ks)

        sums = te.compute(sig.out.shape, total, name=f"{base}_sum")

        def body(i: tuple[Any, ...]) -> Any:
            kl = [lens[d][i[2 + d]] for d in range(self.spatial)]
            if not nhwc:
                if self.spatial == 3:
                    r = (te.const(1.0, "float64") / kl[0].astype("float64")).astype("float32")
                else:
                    r = te_lib.f32_const(1.0)
                for kk in kl[-2:]:
                    r = te_lib.fence(r / kk.astype("float32"))
                t = te_lib.round_half_even(te_lib.fence(sums[i].astype("float32") * r))
                return te_lib.saturate(t, dt)
            size = kl[0]
            for kk in kl[1:]:
                size = size * kk
            one = te_lib.f32_const(1.0)
            m = te_lib.fence(one / size.astype("float32"))
            inv = te_lib.fence(one / te_lib.fence(one / m))
            acc = (sums[i] - size * te.const(qp.zp_value, "int32")).astype("float32")
            return te_lib.q_val_value(acc, inv, te_lib.f32_const(qp.zp_value), dt)

        return te_lib.elementwise(sig.out.shape, body, base)

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        torch = torch_quiet()
        x = to_torch(sample.arrays[0], sample.in_types[0])
        fn = getattr(torch.nn.functional, f"adaptive_avg_pool{self.spatial}d")
        return to_numpy(fn(x, list(sample.attrs.output_size)))


@register_op
class QAdaptiveAvgPool2d(_AdaptiveAvgPool):
    """Adaptive average pool with the input's qparams. Windows [floor(f32(o*I)/O),
    ceil(f32((o+1)*I)/O)); contiguous path out = rint(f32(sum(q)) * r), r = (1.0f / kH) / kW
    (zp cancels; no clamp needed). Channels-last path (C == 1): clamp(rint(f32(zp) +
    f32(acc) * (1f/(1f/m)))), acc = sum(q) - zp*kH*kW, m = 1f / (kH*kW).
    A 1x1 input gives each output pixel the input pixel (PyTorch permutes the result there
    when C > 1 and the output is larger; see module doc). F.adaptive_avg_pool2d."""

    name = "qnn.adaptive_avg_pool2d"
    spatial = 2
    torch_counterparts = ("F.adaptive_avg_pool2d", "qF.adaptive_avg_pool2d",
                          "nn.AdaptiveAvgPool2d")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases = (((1, 3, 7, 7), (1, 1)), ((2, 5, 9, 6), (4, 4)), ((1, 65, 7, 5), (3, 2)),
                 ((2, 1, 10, 9), (3, 4)), ((1, 16, 1, 1), (1, 1)), ((1, 2, 5, 13), (7, 5)),
                 ((2, 1, 1, 1), (2, 3)), ((1, 4, 3, 11), (3, 11)))
        for k, (shape, out) in enumerate(cases * 2):
            dtype = (u8, i8)[k % 2]
            ty, a = edge_q(rng, shape, dtype, *sample_qparams(rng, dtype, k))
            yield OpSample(AdaptivePoolAttrs(out), (ty,), (a,),
                           f"{dtype}-{'x'.join(map(str, shape))}-to{out}")


@register_op
class QAdaptiveAvgPool3d(_AdaptiveAvgPool):
    """3-D adaptive average pool, as qnn.adaptive_avg_pool2d with r = ((f32(1.0/kD)) / kH) / kW
    on the contiguous path; channels-last path for C == 1 (F.adaptive_avg_pool3d)."""

    name = "qnn.adaptive_avg_pool3d"
    spatial = 3
    torch_counterparts = ("F.adaptive_avg_pool3d", "qF.adaptive_avg_pool3d",
                          "nn.AdaptiveAvgPool3d")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases = (((1, 3, 4, 5, 6), (1, 1, 1)), ((2, 5, 5, 6, 7), (2, 4, 3)),
                 ((1, 1, 6, 5, 7), (4, 2, 5)), ((1, 17, 3, 3, 3), (2, 2, 2)),
                 ((1, 2, 7, 3, 5), (3, 3, 5)), ((1, 1, 1, 1, 1), (2, 1, 3)))
        for k, (shape, out) in enumerate(cases * 2):
            dtype = (u8, i8)[k % 2]
            ty, a = edge_q(rng, shape, dtype, *sample_qparams(rng, dtype, k))
            yield OpSample(AdaptivePoolAttrs(out), (ty,), (a,),
                           f"{dtype}-{'x'.join(map(str, shape))}-to{out}")


# --- upsampling ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpsampleAttrs:
    size: tuple[int, ...] | None = None
    """Output spatial size; None: floor(input size * scale_factor)."""
    scale_factor: tuple[float, ...] | None = None
    """Per spatial dim (or one for all). When given it also sets the source-index scale
    1/scale_factor, as in PyTorch (F.interpolate with recompute_scale_factor unset)."""


def _up_out(op: str, attrs: Any, x: TensorType, spatial: int) -> tuple[
        tuple[int, ...], tuple[float | None, ...]]:
    """Output spatial size and the per-dim scale (None: derived from the sizes)."""
    ins = x.shape[2:]
    sf = attrs.scale_factor
    if sf is not None:
        if isinstance(sf, (int, float)) and not isinstance(sf, bool):
            sf = (float(sf),)
        if not isinstance(sf, (tuple, list)) or len(sf) not in (1, spatial) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                and v > 0 for v in sf):
            raise TypeInferenceError(
                f"{op}: scale_factor must be {spatial} (or 1) positive finite numbers,"
                f" got {sf!r}")
        sf = tuple(float(v) for v in sf) * (spatial if len(sf) == 1 else 1)
    if attrs.size is not None:
        out = _ints(op, "size", attrs.size, spatial)
    elif sf is not None:
        out = tuple(int(i * s) for i, s in zip(ins, sf))
    else:
        raise TypeInferenceError(f"{op}: one of size and scale_factor must be given")
    if any(o <= 0 for o in out):
        raise TypeInferenceError(
            f"{op}: output size {list(out)} must be positive (input {list(ins)},"
            f" size={attrs.size}, scale_factor={attrs.scale_factor})")
    return out, (sf if sf is not None else (None,) * spatial)


def _src_scale(isize: int, osize: int, sf: float | None) -> np.float32:
    """compute_scales_value<float>: f32(1.0 / scale_factor) if given, else f32(I) / O."""
    if sf is not None and sf > 0:
        return F32(1.0 / sf)
    return F32(F32(isize) / F32(osize))


@dataclass(frozen=True)
class UpsampleNearestAttrs(UpsampleAttrs):
    exact: bool = False
    """False: mode 'nearest' (src = floor(dst * scale)); True: 'nearest-exact'
    (src = floor((dst + 0.5) * scale))."""


@register_op
class QUpsampleNearest(OpDef):
    """Nearest-neighbour resize of N,C,H,W or N,C,D,H,W, qparams kept, values copied (exact).

    src = min(floor(f32(dst * scale)), I - 1) ('nearest') or min(floor(f32((dst + 0.5f) *
    scale)), I - 1) ('nearest-exact'), scale = f32(1 / scale_factor) when given else f32(I)/O;
    equal input and output sizes copy the input. F.interpolate(mode='nearest' /
    'nearest-exact'), nnq.Upsample, qF.upsample_nearest.
    """

    name = "qnn.upsample_nearest"
    Attrs = UpsampleNearestAttrs
    num_inputs = 1
    torch_counterparts = ("F.interpolate(mode='nearest')", "qF.upsample_nearest",
                          "qF.interpolate", "nn.Upsample")

    def infer_type(self, attrs: UpsampleNearestAttrs, x: TensorType) -> TensorType:
        check_qtensor(self.name, x, dtypes=MOVE_DTYPES)
        if x.rank not in (4, 5):
            raise TypeInferenceError(
                f"{self.name}: input must be 4-D (N,C,H,W) or 5-D (N,C,D,H,W), got shape"
                f" {list(x.shape)} (PyTorch has no quantized 1-D nearest upsample)")
        if any(d == 0 for d in x.shape[1:]):
            raise TypeInferenceError(f"{self.name}: input has an empty dimension: {list(x.shape)}")
        out, _ = _up_out(self.name, attrs, x, x.rank - 2)
        return x.with_shape(x.shape[:2] + out)

    def _index_tables(self, sig: Sig) -> list[np.ndarray] | None:
        """Per spatial dim, the source index of every output index (None: plain copy)."""
        ty = sig.in_types[0]
        out, sfs = _up_out(self.name, sig.attrs, ty, ty.rank - 2)
        if out == ty.shape[2:]:
            return None
        tables = []
        for i, o, sf in zip(ty.shape[2:], out, sfs):
            sc = _src_scale(i, o, sf)
            dst = np.arange(o)
            if sig.attrs.exact:
                src = np.floor(((dst.astype(F32) + F32(0.5)) * sc).astype(F32))
            else:
                src = np.floor((dst.astype(F32) * sc).astype(F32))
            tables.append(np.minimum(src.astype(np.int64), i - 1).astype(np.int32))
        return tables

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        tables = self._index_tables(sig)
        if tables is None:
            return x.copy()
        res = x
        for d, idx in enumerate(tables):
            res = np.take(res, idx, axis=2 + d)
        return np.ascontiguousarray(res)

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.lowering import te_lib

        tables = self._index_tables(sig)
        if tables is None:
            return te_lib.elementwise(sig.out.shape, lambda i: x[i], "qnn_upsample_nearest")
        tabs = [te_lib.constant(t, f"qnn_upsample_nearest_idx{d}")
                for d, t in enumerate(tables)]
        return te_lib.elementwise(sig.out.shape, lambda i: x[(i[0], i[1]) + tuple(
            tabs[d][i[2 + d]] for d in range(len(tabs)))], "qnn_upsample_nearest")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases = (((1, 3, 4, 5), None, (2.0, 2.0), False), ((2, 2, 5, 3), (7, 9), None, False),
                 ((1, 4, 6, 6), (3, 4), None, True), ((1, 2, 3, 5), None, (1.7, 2.5), True),
                 ((1, 1, 4, 4), None, (0.5, 1.5), False), ((1, 3, 3, 3), (3, 3), (1.5, 1.3),
                                                           False),
                 ((1, 2, 2, 3, 4), None, (2.0, 1.5, 3.0), False),
                 ((1, 2, 3, 3, 2), (5, 4, 3), None, True), ((1, 1, 1, 1), (3, 2), None, False),
                 ((1, 65, 2, 3), (3, 5), None, True),
                 ((2, 1, 3, 2, 4), None, (1.0, 2.3, 0.8), True))
        for k, (shape, size, sf, exact) in enumerate(cases):
            dtype = MOVE_DTYPES[k % 3]
            s, z = sample_qparams(rng, dtype, k)
            if dtype is i32:
                z = S.rand_zp(rng, dtype)
            ty, a = edge_q(rng, shape, dtype, s, z)
            yield OpSample(UpsampleNearestAttrs(size, sf, exact), (ty,), (a,),
                           f"{dtype}-{'x'.join(map(str, shape))}-size{size}-sf{sf}"
                           f"{'-exact' if exact else ''}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        torch = torch_quiet()
        a = sample.attrs
        x = to_torch(sample.arrays[0], sample.in_types[0])
        mode = "nearest-exact" if a.exact else "nearest"
        spatial = x.dim() - 2
        if a.size is not None and a.scale_factor is not None:  # aten op with both
            fn = getattr(torch._C._nn, f"{'_' if a.exact else ''}upsample_nearest"
                                       f"{'_exact' if a.exact else ''}{spatial}d")
            sf = list(a.scale_factor) * (spatial if len(a.scale_factor) == 1 else 1)
            return to_numpy(fn(x, list(a.size), *sf))
        sz = list(a.size) if a.size is not None else None
        sf = list(a.scale_factor) if a.scale_factor is not None else None
        return to_numpy(torch.nn.functional.interpolate(x, size=sz, scale_factor=sf, mode=mode))


@dataclass(frozen=True)
class UpsampleBilinearAttrs(UpsampleAttrs):
    align_corners: bool = False


def _bilinear_params(isize: int, osize: int, sf: float | None, align: bool,
                     fused: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: (i0, step to i1 (0 or 1), lambda0, lambda1), all float32 as PyTorch's
    area_pixel_compute_scale / area_pixel_compute_source_index (`fused`: the channels-last
    kernel, compiled with FMA contraction, computes scale * (dst + 0.5) - 0.5 as one fma)."""
    if align:
        scale = F32(isize - 1) / F32(osize - 1) if osize > 1 else F32(0)
    else:
        scale = _src_scale(isize, osize, sf)
    dst = np.arange(osize).astype(F32)
    if align:
        src = (F32(scale) * dst).astype(F32)
    else:
        half = (dst + F32(0.5)).astype(F32)
        if fused:
            src = vm.fma32(F32(scale), half, F32(-0.5))
        else:
            src = ((F32(scale) * half).astype(F32) - F32(0.5)).astype(F32)
        src = np.where(src < F32(0), F32(0), src).astype(F32)
    i0 = src.astype(np.int64)  # truncation
    step = (i0 < isize - 1).astype(np.int64)
    lam1 = (src - i0.astype(F32)).astype(F32)
    lam0 = (F32(1) - lam1).astype(F32)
    return i0, step, lam0, lam1


@register_op
class QUpsampleBilinear(OpDef):
    """Bilinear resize of N,C,H,W with the input's qparams (F.interpolate(mode='bilinear')).

    Per output pixel (float32): v = h0 * (w0 * p00 + w1 * p01) + h1 * (w0 * p10 + w1 * p11)
    - zp on the stored integers, out = clamp(rint(f32(zp) + v)); lambdas from PyTorch's
    area_pixel_compute_source_index (align_corners: src = scale * dst with
    scale = (I-1)/(O-1); else src = max(scale * (dst + 0.5) - 0.5, 0), scale = 1/scale_factor
    or I/O). Equal sizes copy the input. The contiguous kernel rounds every operation; the
    channels-last one (taken for C == 1) was compiled with FMA contraction: a*b + c*d is
    fma(a, b, c*d) and the source index one fma. Both reproduced exactly.
    """

    name = "qnn.upsample_bilinear"
    Attrs = UpsampleBilinearAttrs
    num_inputs = 1
    torch_counterparts = ("F.interpolate(mode='bilinear')", "qF.upsample_bilinear",
                          "qF.interpolate", "nn.Upsample(mode='bilinear')")

    def infer_type(self, attrs: UpsampleBilinearAttrs, x: TensorType) -> TensorType:
        check_qtensor(self.name, x)
        if x.rank != 4:
            raise TypeInferenceError(
                f"{self.name}: input must be 4-D (N,C,H,W), got shape {list(x.shape)}"
                " (PyTorch has no quantized linear/trilinear upsample)")
        if any(d == 0 for d in x.shape[1:]):
            raise TypeInferenceError(f"{self.name}: input has an empty dimension: {list(x.shape)}")
        out, _ = _up_out(self.name, attrs, x, 2)
        return x.with_shape(x.shape[:2] + out)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        ty = sig.in_types[0]
        qp = ty.qparams
        assert qp is not None
        (oh, ow), (sfh, sfw) = _up_out(self.name, sig.attrs, ty, 2)
        ih, iw = ty.shape[2:]
        if (oh, ow) == (ih, iw):
            return x.copy()
        al = bool(sig.attrs.align_corners)
        fused = takes_channels_last(ty.shape)
        h0, hp, hl0, hl1 = _bilinear_params(ih, oh, sfh, al, fused)
        w0, wp, wl0, wl1 = _bilinear_params(iw, ow, sfw, al, fused)
        p = x.astype(F32)
        rows0, rows1 = p[:, :, h0, :], p[:, :, h0 + hp, :]
        p00, p01 = rows0[:, :, :, w0], rows0[:, :, :, w0 + wp]
        p10, p11 = rows1[:, :, :, w0], rows1[:, :, :, w0 + wp]
        hl0, hl1 = hl0[:, None], hl1[:, None]

        def lerp(a: np.ndarray, pa: np.ndarray, b: np.ndarray, pb: np.ndarray) -> np.ndarray:
            if fused:  # GCC contracts a*pa + b*pb into fma(a, pa, b*pb)
                return vm.fma32(a, pa, (b * pb).astype(F32))
            return ((a * pa).astype(F32) + (b * pb).astype(F32)).astype(F32)

        v = lerp(hl0, lerp(wl0, p00, wl1, p01), hl1, lerp(wl0, p10, wl1, p11))
        v = (v - F32(qp.zp_value)).astype(F32)
        return quant_val(v, inv_f(1.0), qp, sig.out.dtype)

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.lowering import te_lib

        ty = sig.in_types[0]
        qp = ty.qparams
        assert qp is not None
        (oh, ow), (sfh, sfw) = _up_out(self.name, sig.attrs, ty, 2)
        ih, iw = ty.shape[2:]
        name = "qnn_upsample_bilinear"
        if (oh, ow) == (ih, iw):
            return te_lib.elementwise(sig.out.shape, lambda i: x[i], name)
        al = bool(sig.attrs.align_corners)
        fused = takes_channels_last(ty.shape)
        tabs = {}
        for axis, (isz, osz, sf) in (("h", (ih, oh, sfh)), ("w", (iw, ow, sfw))):
            i0, step, l0, l1 = _bilinear_params(isz, osz, sf, al, fused)
            for key, arr in (("0", i0.astype(np.int32)), ("1", (i0 + step).astype(np.int32)),
                             ("l0", l0), ("l1", l1)):
                tabs[axis + key] = te_lib.constant(arr, f"{name}_{axis}{key}")

        def lerp(a: Any, pa: Any, b: Any, pb: Any) -> Any:
            if fused:
                return te_lib.fence(te_lib.fma(a, pa, te_lib.fence(b * pb)))
            return te_lib.fence(a * pa) + te_lib.fence(b * pb)

        def body(i: tuple[Any, ...]) -> Any:
            n, c, y, z = i
            h0, h1, w0, w1 = tabs["h0"][y], tabs["h1"][y], tabs["w0"][z], tabs["w1"][z]
            p = [x[n, c, hh, ww].astype("float32") for hh in (h0, h1) for ww in (w0, w1)]
            wl0, wl1 = tabs["wl0"][z], tabs["wl1"][z]
            v = lerp(tabs["hl0"][y], lerp(wl0, p[0], wl1, p[1]),
                     tabs["hl1"][y], lerp(wl0, p[2], wl1, p[3]))
            v = v - te_lib.f32_const(qp.zp_value)
            return te_lib.q_val_value(v, te_lib.f32_const(inv_f(1.0)),
                                      te_lib.f32_const(qp.zp_value), sig.out.dtype)

        return te_lib.elementwise(sig.out.shape, body, name)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases = (((1, 3, 4, 5), None, (2.0, 2.0), False), ((2, 2, 5, 3), (7, 9), None, True),
                 ((1, 4, 6, 6), (3, 4), None, False), ((1, 2, 3, 5), None, (1.7, 2.5), True),
                 ((1, 1, 4, 4), None, (0.5, 1.5), False), ((1, 1, 5, 7), (9, 13), None, True),
                 ((2, 1, 1, 1), (3, 2), None, False), ((2, 3, 2, 9), None, (3.0, 0.7), False),
                 ((1, 17, 2, 2), (5, 3), None, True),
                 ((1, 2, 6, 1), (11, 3), None, True), ((1, 3, 3, 3), (3, 3), None, True))
        for k, (shape, size, sf, align) in enumerate(cases):
            dtype = (u8, i8)[k % 2]
            ty, a = edge_q(rng, shape, dtype, *sample_qparams(rng, dtype, k))
            yield OpSample(UpsampleBilinearAttrs(size, sf, align), (ty,), (a,),
                           f"{dtype}-{'x'.join(map(str, shape))}-size{size}-sf{sf}"
                           f"{'-align' if align else ''}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        from qcompiler.testing.torch_bridge import to_numpy, to_torch

        torch = torch_quiet()
        a = sample.attrs
        x = to_torch(sample.arrays[0], sample.in_types[0])
        if a.size is not None and a.scale_factor is not None:  # aten op with both
            sf2 = list(a.scale_factor) * (2 if len(a.scale_factor) == 1 else 1)
            return to_numpy(torch._C._nn.upsample_bilinear2d(
                x, list(a.size), a.align_corners, *sf2))
        sz = list(a.size) if a.size is not None else None
        sf = list(a.scale_factor) if a.scale_factor is not None else None
        return to_numpy(torch.nn.functional.interpolate(
            x, size=sz, scale_factor=sf, mode="bilinear", align_corners=a.align_corners))
