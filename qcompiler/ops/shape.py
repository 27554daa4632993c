"""Data movement: reshape, flatten, permute, slicing, splitting, stacking, copies.

Every op here moves storage values without arithmetic, works on unquantized tensors of any
dtype and on quantized ones, and is named plainly (`reshape`, `permute`, ...) so float graphs
use the same ops. The output storage is always `out[i] = in[f(i)]` for an index map `f` given
in each docstring. The one exception is `stack` of quantized inputs whose qparams differ: there
PyTorch requantizes every input to the first input's qparams, and so do we.

Quantization parameters propagate exactly as PyTorch 2.13 propagates them:

- per-tensor qparams pass through unchanged;
- per-axis qparams keep, move or slice their axis the way PyTorch's quantizer does
  (`unsqueeze`/`squeeze` shift the axis, `select` on the axis gives that channel's per-tensor
  qparams, slicing the axis slices the scales, and a slice left with one scale becomes
  per-tensor, as `create_subtensor_quantizer` does);
- where PyTorch rejects per-axis input (`permute`, `transpose`, `expand`, `as_strided`,
  `index_select`, `stack`), we reject it with TypeInferenceError;
- where PyTorch silently pairs the wrong scales with the data (a `reshape`/`flatten` that moves
  the channel axis, a `select` after the axis), we reject it too rather than copy the bug.

The helpers at the top (dim wrapping with clear errors, the per-axis rules, and the test-hook
helpers) are shared with `ops/tensor.py`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qcompiler.errors import InterpretError, TypeInferenceError
from qcompiler.ir.registry import OpDef, OpSample, Sig, register_op
from qcompiler.ir.types import QParams, TensorType, i8, i32, i64, u8
from qcompiler.reference import quant_math as qm
from qcompiler.testing import samples as S


def contiguous_copy(a: Any) -> np.ndarray:
    """A C-contiguous copy that stays 0-d for 0-d input (np.ascontiguousarray would not)."""
    return np.array(a, order="C")


# --- dims ------------------------------------------------------------------------------------


def wrap_dim(op: str, dim: int, rank: int, *, extra: int = 0, what: str = "dim") -> int:
    """Wrap a possibly negative `dim` into [0, rank + extra), as PyTorch's maybe_wrap_dim.

    `extra=1` is for ops that address the gap after the last dim (unsqueeze, stack). A rank-0
    tensor accepts dim 0 and -1, as in PyTorch.
    """
    n = rank + extra
    if n == 0:
        n = 1
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        raise TypeInferenceError(f"{op}: {what} must be an int, got {dim!r}")
    if not -n <= dim < n:
        raise TypeInferenceError(
            f"{op}: {what} {dim} is out of range for a rank-{rank} input"
            f" (expected {-n}..{n - 1})")
    return int(dim) % n


def wrap_dims(op: str, dims: Sequence[int], rank: int, what: str = "dim") -> tuple[int, ...]:
    """Wrap each dim; a dim named twice is an error (as PyTorch's dim_list_to_bitset)."""
    out = tuple(wrap_dim(op, d, rank, what=what) for d in dims)
    if len(set(out)) != len(out):
        dup = next(d for d in out if out.count(d) > 1)
        raise TypeInferenceError(f"{op}: dim {dup} appears more than once in {list(dims)}")
    return out


def int_tuple(op: str, name: str, v: Any) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)) or not all(
            isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v):
        raise TypeInferenceError(f"{op}: {name} must be a tuple of ints, got {v!r}")
    return tuple(int(x) for x in v)


# --- per-axis qparams ------------------------------------------------------------------------


def reject_per_axis(op: str, t: TensorType, torch_says: str) -> None:
    """Raise unless `t` is unquantized or per-tensor quantized (PyTorch rejects per-axis)."""
    qp = t.qparams
    if qp is not None and qp.axis is not None:
        raise TypeInferenceError(
            f"{op} supports unquantized and per-tensor quantized inputs; got per-axis qparams"
            f" (axis={qp.axis}) on {t}. PyTorch rejects this too: {torch_says!r}")


def view_qparams(op: str, t: TensorType, new_shape: tuple[int, ...]) -> QParams | None:
    """Qparams of a reshape-like view: PyTorch keeps per-axis qparams and their axis index.

    That is only meaningful when dimension `axis` keeps its size and position and the same
    number of elements precede it; otherwise PyTorch pairs the wrong scales with the data (or
    builds a tensor it cannot dequantize), so we reject it.
    """
    qp = t.qparams
    if qp is None or qp.axis is None:
        return qp
    ax = qp.axis
    ok = (ax < len(new_shape) and new_shape[ax] == t.shape[ax]
          and math.prod(new_shape[:ax]) == math.prod(t.shape[:ax]))
    if not ok:
        raise TypeInferenceError(
            f"{op} of a per-axis quantized tensor (axis={ax}) from {list(t.shape)} to"
            f" {list(new_shape)} must keep dimension {ax} (size {t.shape[ax]}) at the same"
            f" position with the same elements before it: PyTorch keeps axis={ax} and would"
            " pair the wrong scales with the data")
    return qp


def subtensor_qparams(op: str, qp: QParams | None, dim: int, start: int, stop: int, step: int,
                      is_select: bool) -> QParams | None:
    """PyTorch's create_subtensor_quantizer, for select/slice/narrow/split/chunk.

    Slicing dimension `axis` slices the scales and zero points; a result with one scale becomes
    per-tensor (also when the input had a single channel and another dim is sliced); select
    removes a dim, which shifts the axis down.
    """
    if qp is None or qp.axis is None:
        return qp
    ax = qp.axis
    if qp.scheme != "affine":
        if is_select or dim == ax:
            raise TypeInferenceError(
                f"{op} along or before the axis of per-axis qparams with scheme {qp.scheme} is"
                " not supported (PyTorch keeps the unsliced qparams); supported: affine")
        return qp
    scales, zps = qp.scale, qp.zero_point
    if dim == ax:
        scales, zps = scales[start:stop:step], zps[start:stop:step]
        if not scales:
            raise TypeInferenceError(
                f"{op} would leave no channels along the per-axis qparams' axis {ax};"
                " PyTorch cannot build that tensor either")
    if len(scales) == 1:
        return QParams((scales[0],), (zps[0],), None, "affine")
    if is_select and dim > ax:
        raise TypeInferenceError(
            f"{op} of dim {dim} of a per-axis quantized tensor with axis={ax} < {dim}: PyTorch"
            f" 2.13 relabels the axis as {ax - 1} and pairs the wrong scales with the data;"
            " select a dim before the axis or the axis itself")
    return QParams(tuple(scales), tuple(zps), ax - 1 if is_select else ax, "affine")


# --- test-hook helpers -------------------------------------------------------------------------


def torch_result(t: Any, ty: TensorType, what: str = "output") -> np.ndarray:
    """Storage values of a torch result, after checking its qparams equal the inferred ones.

    The registry-driven test compares storage arrays; this makes it compare qparams as well.
    """
    from qcompiler.testing.torch_bridge import to_numpy

    if ty.qparams is None:
        assert not t.is_quantized, f"{what}: PyTorch returned a quantized tensor, we infer {ty}"
        return to_numpy(t)
    assert t.is_quantized, f"{what}: PyTorch returned an unquantized tensor, we infer {ty}"
    qp = ty.qparams
    import torch

    if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        got = f"per-tensor ({float(t.q_scale())!r}, {int(t.q_zero_point())})"
        ok = qp.axis is None and (float(t.q_scale()), int(t.q_zero_point())) == (
            qp.scale_value, qp.zp_value)
    else:
        axis = int(t.q_per_channel_axis())
        scales = tuple(t.q_per_channel_scales().double().tolist())
        zps = tuple(int(z) for z in t.q_per_channel_zero_points().tolist())
        got = f"per-axis axis={axis} scales={scales} zero points={zps}"
        ok = qp.axis == axis and scales == qp.scale and zps == tuple(qp.zero_point)
    assert ok, f"{what}: PyTorch's qparams are {got}, we infer {qp}"
    return to_numpy(t)


def to_torch_0d_safe(arr: np.ndarray, ty: TensorType) -> Any:
    """torch_bridge.to_torch, keeping 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    from qcompiler.testing.torch_bridge import to_torch

    if arr.ndim == 0:
        return to_torch(arr.reshape(1), ty.with_shape((1,))).reshape(())
    return to_torch(arr, ty)


def _qin(sample: OpSample, k: int = 0) -> Any:
    return to_torch_0d_safe(sample.arrays[k], sample.in_types[k])


def _mixed_inputs(rng: np.random.Generator, shape: tuple[int, ...], per_channel_axis: int | None
                  ) -> Iterator[tuple[str, TensorType, np.ndarray]]:
    """One input per kind: per-tensor u8 / i8 (edge zp) / i32, float32, optionally per-axis."""
    yield "u8", *S.qtensor(rng, shape, u8)
    yield "i8-edgezp", *S.qtensor(rng, shape, i8, S.rand_scale(rng, 1e-6, 1e2),
                                  S.rand_zp(rng, i8, edge=True))
    yield "i32", *S.qtensor(rng, shape, i32, S.rand_scale(rng, 1e-4, 1.0), S.rand_zp(rng, i32))
    yield "f32", *S.ftensor(rng, shape)
    if per_channel_axis is not None:
        yield f"per-axis{per_channel_axis}", *S.qtensor_per_channel(rng, shape, per_channel_axis)


# --- TE lowering helpers (TVM is imported lazily, inside them) ---------------------------------


def gather(x: Any, shape: Sequence[int], index: Callable[[tuple[Any, ...]], tuple[Any, ...]],
           name: str) -> Any:
    """TE: out[i] = x[index(i)] over `shape` (rank 0 included): every op here is one of these."""
    from qcompiler.lowering import te_lib

    return te_lib.elementwise(shape, lambda i: x[index(i)], name)


def _index_dtype(shape: Sequence[int]) -> str:
    return "int64" if math.prod(shape) >= 2**31 else "int32"


def ravel(idx: Sequence[Any], shape: Sequence[int]) -> Any:
    """TE: the row-major flat offset of index `idx` into `shape`."""
    from qcompiler.lowering.tvm_compat import te

    dt = _index_dtype(shape)
    flat: Any = te.const(0, dt)
    for i, n in zip(idx, shape):
        flat = flat * n + (i.astype(dt) if dt == "int64" else i)
    return flat


def unravel(flat: Any, shape: Sequence[int]) -> tuple[Any, ...]:
    """TE: the index into `shape` of row-major flat offset `flat`."""
    from qcompiler.lowering.tvm_compat import te

    out: list[Any] = []
    for n in reversed(shape):
        out.append(te.const(0, "int32") if n == 1 else (flat % n).astype("int32"))
        flat = flat // n
    return tuple(reversed(out))


def reshape_te(x: Any, out_shape: Sequence[int], name: str) -> Any:
    """TE: `x` read in row-major order into `out_shape` (also a row-major prefix of `x`)."""
    from qcompiler.lowering.tvm_compat import int_shape

    in_shape = int_shape(x)
    return gather(x, out_shape, lambda i: unravel(ravel(i, out_shape), in_shape), name)


def copy_te(x: Any, name: str) -> Any:
    """TE: a fresh copy of `x` (kernel outputs must be computed tensors)."""
    from qcompiler.lowering.tvm_compat import int_shape

    return gather(x, int_shape(x), lambda i: i, name)


def _te_name(op: str) -> str:
    return op.replace(".", "_")


# --- ops ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReshapeAttrs:
    shape: tuple[int, ...]
    """Target shape; at most one entry may be -1 (inferred from the element count)."""


def _resolve_shape(op: str, numel: int, shape: tuple[int, ...], src: tuple[int, ...]
                   ) -> tuple[int, ...]:
    """torch's infer_size: resolve one -1 and check the element count."""
    if shape.count(-1) > 1:
        raise TypeInferenceError(f"{op}: only one dimension of {list(shape)} can be -1")
    bad = [d for d in shape if d < -1]
    if bad:
        raise TypeInferenceError(f"{op}: invalid dimension {bad[0]} in shape {list(shape)}")
    known = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        if known == 0 or numel % known != 0:
            raise TypeInferenceError(
                f"{op}: shape {list(shape)} is invalid for input of shape {list(src)}"
                f" ({numel} elements)")
        return tuple(numel // known if d == -1 else d for d in shape)
    if known != numel:
        raise TypeInferenceError(
            f"{op}: shape {list(shape)} ({known} elements) is invalid for input of shape"
            f" {list(src)} ({numel} elements)")
    return shape


@register_op
class Reshape(OpDef):
    """out = in, read in row-major order into the target shape (one -1 entry is inferred).

    Also what Tensor.view / view_as / flatten-like frontends map to (all our values are
    contiguous, so view and reshape coincide). Per-axis qparams keep their axis index, which
    must still name the same channel dimension (see `view_qparams`).
    """

    name = "reshape"
    Attrs = ReshapeAttrs
    num_inputs = 1
    torch_counterparts = ("Tensor.reshape", "Tensor.view", "torch.reshape")

    def infer_type(self, attrs: ReshapeAttrs, x: TensorType) -> TensorType:
        shape = _resolve_shape(self.name, x.numel, int_tuple(self.name, "shape", attrs.shape),
                               x.shape)
        return TensorType(shape, x.dtype, view_qparams(self.name, x, shape))

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        return x.reshape(sig.out.shape)

    def lower(self, sig: Sig, x: Any) -> Any:
        return reshape_te(x, sig.out.shape, "reshape")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (2, 3, 5), None):
            yield OpSample(ReshapeAttrs((5, -1)), (ty,), (x,), f"{label}-(5,-1)")
        ty, x = S.qtensor(rng, (2, 3, 4), u8)
        yield OpSample(ReshapeAttrs((24,)), (ty,), (x,), "flat")
        yield OpSample(ReshapeAttrs((1, 2, 1, 12, 1)), (ty,), (x,), "unit-dims")
        ty, x = S.qtensor(rng, (1,), i8)
        yield OpSample(ReshapeAttrs(()), (ty,), (x,), "to-0d")
        ty, x = S.qtensor_per_channel(rng, (2, 3, 4), 1)
        yield OpSample(ReshapeAttrs((2, 3, 2, 2)), (ty,), (x,), "per-axis-split-inner")
        yield OpSample(ReshapeAttrs((2, 3, -1, 1)), (ty,), (x,), "per-axis-unit")
        ty, x = S.qtensor_per_channel(rng, (5, 2, 3), 0, u8)
        yield OpSample(ReshapeAttrs((5, 6)), (ty,), (x,), "per-axis0-merge-tail")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        return torch_result(_qin(sample).reshape(sample.attrs.shape), sig.out)


@dataclass(frozen=True)
class FlattenAttrs:
    start_dim: int = 0
    end_dim: int = -1


@register_op
class Flatten(OpDef):
    """out = in reshaped so dims start_dim..end_dim (inclusive) become one; 0-d gives [1]."""

    name = "flatten"
    Attrs = FlattenAttrs
    num_inputs = 1
    torch_counterparts = ("torch.flatten", "Tensor.flatten", "nn.Flatten")

    def infer_type(self, attrs: FlattenAttrs, x: TensorType) -> TensorType:
        start = wrap_dim(self.name, attrs.start_dim, x.rank, what="start_dim")
        end = wrap_dim(self.name, attrs.end_dim, x.rank, what="end_dim")
        if start > end:
            raise TypeInferenceError(
                f"flatten: start_dim {attrs.start_dim} comes after end_dim {attrs.end_dim}"
                f" for a rank-{x.rank} input")
        if x.rank == 0:
            return TensorType((1,), x.dtype, x.qparams)
        shape = x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:]
        return TensorType(shape, x.dtype, view_qparams(self.name, x, shape))

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        return x.reshape(sig.out.shape)

    def lower(self, sig: Sig, x: Any) -> Any:
        return reshape_te(x, sig.out.shape, "flatten")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (2, 3, 1, 5), None):
            yield OpSample(FlattenAttrs(1), (ty,), (x,), f"{label}-from1")
        ty, x = S.qtensor(rng, (3, 4, 5), u8)
        yield OpSample(FlattenAttrs(), (ty,), (x,), "all")
        yield OpSample(FlattenAttrs(-2, -1), (ty,), (x,), "neg-dims")
        yield OpSample(FlattenAttrs(1, 1), (ty,), (x,), "single-dim")
        ty, x = S.qtensor(rng, (), i8)
        yield OpSample(FlattenAttrs(), (ty,), (x,), "0d")
        ty, x = S.qtensor_per_channel(rng, (2, 3, 4, 2), 1)
        yield OpSample(FlattenAttrs(2), (ty,), (x,), "per-axis-after-axis")
        yield OpSample(FlattenAttrs(1, 1), (ty,), (x,), "per-axis-noop")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        a = sample.attrs
        return torch_result(_qin(sample).flatten(a.start_dim, a.end_dim), sig.out)


@dataclass(frozen=True)
class PermuteAttrs:
    dims: tuple[int, ...]
    """out dim k is input dim dims[k]; negative dims count from the end."""


@register_op
class Permute(OpDef):
    """out[i_0, ..., i_{n-1}] = in[j] where j[dims[k]] = i_k (a contiguous copy).

    Per-axis quantized input is rejected, as PyTorch does.
    """

    name = "permute"
    Attrs = PermuteAttrs
    num_inputs = 1
    torch_counterparts = ("torch.permute", "Tensor.permute")

    def infer_type(self, attrs: PermuteAttrs, x: TensorType) -> TensorType:
        dims = int_tuple(self.name, "dims", attrs.dims)
        if len(dims) != x.rank:
            raise TypeInferenceError(
                f"permute: dims {list(dims)} has {len(dims)} entries, the input has rank"
                f" {x.rank}")
        perm = wrap_dims(self.name, dims, x.rank)
        reject_per_axis(self.name, x, "Setting strides is possible only on uniformly quantized"
                                      " tensor")
        return TensorType(tuple(x.shape[d] for d in perm), x.dtype, x.qparams)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        perm = tuple(d % max(x.ndim, 1) for d in sig.attrs.dims)
        return contiguous_copy(np.transpose(x, perm))

    def lower(self, sig: Sig, x: Any) -> Any:
        rank = sig.in_types[0].rank
        perm = [d % max(rank, 1) for d in sig.attrs.dims]

        def index(i: tuple[Any, ...]) -> tuple[Any, ...]:
            j: list[Any] = [None] * rank
            for k, d in enumerate(perm):
                j[d] = i[k]
            return tuple(j)

        return gather(x, sig.out.shape, index, "permute")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (2, 3, 5), None):
            yield OpSample(PermuteAttrs((2, 0, 1)), (ty,), (x,), label)
        ty, x = S.qtensor(rng, (1, 3, 4, 2), u8)
        yield OpSample(PermuteAttrs((0, 2, 3, 1)), (ty,), (x,), "nchw-to-nhwc")
        yield OpSample(PermuteAttrs((-1, -3, 0, -2)), (ty,), (x,), "neg-dims")
        ty, x = S.qtensor(rng, (), i8)
        yield OpSample(PermuteAttrs(()), (ty,), (x,), "0d")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        return torch_result(_qin(sample).permute(tuple(sample.attrs.dims)).contiguous(), sig.out)


@dataclass(frozen=True)
class TransposeAttrs:
    dim0: int
    dim1: int


@register_op
class Transpose(OpDef):
    """out = in with dims dim0 and dim1 swapped (a contiguous copy); per-axis rejected."""

    name = "transpose"
    Attrs = TransposeAttrs
    num_inputs = 1
    torch_counterparts = ("torch.transpose", "Tensor.transpose", "Tensor.t")

    def infer_type(self, attrs: TransposeAttrs, x: TensorType) -> TensorType:
        d0 = wrap_dim(self.name, attrs.dim0, x.rank, what="dim0")
        d1 = wrap_dim(self.name, attrs.dim1, x.rank, what="dim1")
        reject_per_axis(self.name, x, "Setting strides is possible only on uniformly quantized"
                                      " tensor")
        shape = list(x.shape)
        if x.rank:
            shape[d0], shape[d1] = shape[d1], shape[d0]
        return TensorType(tuple(shape), x.dtype, x.qparams)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        if x.ndim == 0:
            return x.copy()
        a = sig.attrs
        return contiguous_copy(np.swapaxes(x, a.dim0, a.dim1))

    def lower(self, sig: Sig, x: Any) -> Any:
        rank = sig.in_types[0].rank
        if rank == 0:
            return copy_te(x, "transpose")
        d0, d1 = sig.attrs.dim0 % rank, sig.attrs.dim1 % rank

        def index(i: tuple[Any, ...]) -> tuple[Any, ...]:
            j = list(i)
            j[d0], j[d1] = i[d1], i[d0]
            return tuple(j)

        return gather(x, sig.out.shape, index, "transpose")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (2, 3, 5), None):
            yield OpSample(TransposeAttrs(0, 2), (ty,), (x,), label)
        ty, x = S.qtensor(rng, (7, 3), u8)
        yield OpSample(TransposeAttrs(-1, -2), (ty,), (x,), "neg-dims")
        yield OpSample(TransposeAttrs(1, 1), (ty,), (x,), "same-dim")
        ty, x = S.qtensor(rng, (), u8)
        yield OpSample(TransposeAttrs(0, -1), (ty,), (x,), "0d")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        a = sample.attrs
        return torch_result(_qin(sample).transpose(a.dim0, a.dim1).contiguous(), sig.out)


@dataclass(frozen=True)
class SqueezeAttrs:
    dims: tuple[int, ...] | None = None
    """Dims to remove where their size is 1 (others are left alone); None: every size-1 dim."""


@register_op
class Squeeze(OpDef):
    """out = in without the size-1 dims named by `dims` (all size-1 dims when None).

    Per-axis qparams: the axis shifts down past removed dims; squeezing the axis itself is an
    error, as in PyTorch ("Squeeze is only possible on non-axis dimension ...").
    """

    name = "squeeze"
    Attrs = SqueezeAttrs
    num_inputs = 1
    torch_counterparts = ("torch.squeeze", "Tensor.squeeze")

    def infer_type(self, attrs: SqueezeAttrs, x: TensorType) -> TensorType:
        if attrs.dims is None:
            named = set(range(x.rank))
        else:
            named = set(wrap_dims(self.name, int_tuple(self.name, "dims", attrs.dims), x.rank))
        drop = {d for d in named if d < x.rank and x.shape[d] == 1}
        shape = tuple(s for d, s in enumerate(x.shape) if d not in drop)
        qp = x.qparams
        if qp is not None and qp.axis is not None:
            if qp.axis in drop:
                raise TypeInferenceError(
                    f"squeeze would remove dim {qp.axis}, the axis of the per-axis qparams;"
                    " PyTorch: 'Squeeze is only possible on non-axis dimension for Per-Channel"
                    " Quantized Tensors'")
            qp = QParams(qp.scale, qp.zero_point, qp.axis - sum(d < qp.axis for d in drop),
                         qp.scheme)
        return TensorType(shape, x.dtype, qp)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        return x.reshape(sig.out.shape)

    def lower(self, sig: Sig, x: Any) -> Any:
        return reshape_te(x, sig.out.shape, "squeeze")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (1, 3, 1, 5), None):
            yield OpSample(SqueezeAttrs(), (ty,), (x,), f"{label}-all")
        ty, x = S.qtensor(rng, (1, 3, 1, 5, 1), u8)
        yield OpSample(SqueezeAttrs((2,)), (ty,), (x,), "one")
        yield OpSample(SqueezeAttrs((-1, 0, 1)), (ty,), (x,), "neg-and-nonunit")
        ty, x = S.qtensor(rng, (), i8)
        yield OpSample(SqueezeAttrs((0,)), (ty,), (x,), "0d")
        ty, x = S.qtensor_per_channel(rng, (1, 4, 1, 3), 1)
        yield OpSample(SqueezeAttrs(), (ty,), (x,), "per-axis-shift")
        yield OpSample(SqueezeAttrs((2,)), (ty,), (x,), "per-axis-after")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        dims = sample.attrs.dims
        t = _qin(sample)
        return torch_result(t.squeeze() if dims is None else t.squeeze(dims), sig.out)


@dataclass(frozen=True)
class UnsqueezeAttrs:
    dim: int
    """Position of the new size-1 dim in the output (-rank-1 .. rank)."""


@register_op
class Unsqueeze(OpDef):
    """out = in with a size-1 dim inserted at `dim`; a per-axis axis at or after it moves up."""

    name = "unsqueeze"
    Attrs = UnsqueezeAttrs
    num_inputs = 1
    torch_counterparts = ("torch.unsqueeze", "Tensor.unsqueeze")

    def infer_type(self, attrs: UnsqueezeAttrs, x: TensorType) -> TensorType:
        d = wrap_dim(self.name, attrs.dim, x.rank, extra=1)
        shape = x.shape[:d] + (1,) + x.shape[d:]
        qp = x.qparams
        if qp is not None and qp.axis is not None and qp.axis >= d:
            qp = QParams(qp.scale, qp.zero_point, qp.axis + 1, qp.scheme)
        return TensorType(shape, x.dtype, qp)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        return x.reshape(sig.out.shape)

    def lower(self, sig: Sig, x: Any) -> Any:
        return reshape_te(x, sig.out.shape, "unsqueeze")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (3, 5), None):
            yield OpSample(UnsqueezeAttrs(1), (ty,), (x,), label)
        ty, x = S.qtensor(rng, (3, 5), u8)
        yield OpSample(UnsqueezeAttrs(-1), (ty,), (x,), "neg-end")
        yield OpSample(UnsqueezeAttrs(-3), (ty,), (x,), "neg-front")
        ty, x = S.qtensor(rng, (), u8)
        yield OpSample(UnsqueezeAttrs(0), (ty,), (x,), "0d")
        ty, x = S.qtensor_per_channel(rng, (2, 4, 3), 1)
        for d in (0, 1, 2, -1):
            yield OpSample(UnsqueezeAttrs(d), (ty,), (x,), f"per-axis-at{d}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        return torch_result(_qin(sample).unsqueeze(sample.attrs.dim), sig.out)


@dataclass(frozen=True)
class DropoutAttrs:
    p: float = 0.5
    """Drop probability during training; ignored at inference (must be in [0, 1])."""


@register_op
class Dropout(OpDef):
    """out = in: dropout is the identity at inference (training=False)."""

    name = "dropout"
    Attrs = DropoutAttrs
    num_inputs = 1
    torch_counterparts = ("nn.Dropout (eval)", "F.dropout(training=False)", "nnq.Dropout")

    def infer_type(self, attrs: DropoutAttrs, x: TensorType) -> TensorType:
        if not isinstance(attrs.p, (int, float)) or not 0.0 <= attrs.p <= 1.0:
            raise TypeInferenceError(
                f"dropout: probability p must be between 0 and 1, got {attrs.p!r}")
        return x

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        return x.copy()

    def lower(self, sig: Sig, x: Any) -> Any:
        return copy_te(x, "dropout")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (2, 7), 1):
            yield OpSample(DropoutAttrs(0.25), (ty,), (x,), label)
        ty, x = S.qtensor(rng, (), u8)
        yield OpSample(DropoutAttrs(1.0), (ty,), (x,), "0d-p1")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch.nn.functional as F

        return torch_result(F.dropout(_qin(sample), sample.attrs.p, training=False), sig.out)


@dataclass(frozen=True)
class ExpandAttrs:
    sizes: tuple[int, ...]
    """Output sizes; -1 keeps an existing dim; new leading dims may not be -1."""


@register_op
class Expand(OpDef):
    """out[i] = in[j] with j_k = 0 where in dim k has size 1 and is broadcast, else i_k.

    A contiguous copy of the broadcast view (torch.Tensor.expand then .contiguous()).
    Per-axis quantized input is rejected, as PyTorch does.
    """

    name = "expand"
    Attrs = ExpandAttrs
    num_inputs = 1
    torch_counterparts = ("Tensor.expand", "Tensor.expand_as")

    def infer_type(self, attrs: ExpandAttrs, x: TensorType) -> TensorType:
        sizes = int_tuple(self.name, "sizes", attrs.sizes)
        if len(sizes) < x.rank:
            raise TypeInferenceError(
                f"expand: the number of sizes ({len(sizes)}) must be at least the input rank"
                f" ({x.rank})")
        lead = len(sizes) - x.rank
        out = []
        for k, s in enumerate(sizes):
            if k < lead:
                if s < 0:
                    raise TypeInferenceError(
                        f"expand: size {s} is not allowed in a new leading dimension {k}")
                out.append(s)
                continue
            have = x.shape[k - lead]
            if s == -1:
                out.append(have)
            elif s < 0:
                raise TypeInferenceError(f"expand: invalid size {s} at dimension {k}")
            elif have != s and have != 1:
                raise TypeInferenceError(
                    f"expand: size {s} must match the existing size {have} at non-singleton"
                    f" dimension {k} (input shape {list(x.shape)})")
            else:
                out.append(s)
        reject_per_axis(self.name, x, "Setting strides is possible only on uniformly quantized"
                                      " tensor")
        return TensorType(tuple(out), x.dtype, x.qparams)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        return contiguous_copy(np.broadcast_to(x, sig.out.shape))

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.lowering import te_lib

        in_shape, out_shape = sig.in_types[0].shape, sig.out.shape
        return gather(x, out_shape, lambda i: te_lib.broadcast_index(i, in_shape, out_shape),
                      "expand")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (3, 1), None):
            yield OpSample(ExpandAttrs((2, -1, 4)), (ty,), (x,), label)
        ty, x = S.qtensor(rng, (1, 5, 1), u8)
        yield OpSample(ExpandAttrs((3, 5, 2)), (ty,), (x,), "two-dims")
        yield OpSample(ExpandAttrs((1, 5, 1)), (ty,), (x,), "noop")
        yield OpSample(ExpandAttrs((2, 0, -1, -1, 7)), (ty,), (x,), "zero-size-lead")
        ty, x = S.qtensor(rng, (), i8)
        yield OpSample(ExpandAttrs((3, 2)), (ty,), (x,), "0d")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        return torch_result(_qin(sample).expand(*sample.attrs.sizes).contiguous(), sig.out)


@dataclass(frozen=True)
class AsStridedAttrs:
    size: tuple[int, ...]
    stride: tuple[int, ...]
    """Strides in elements of the input's row-major storage (non-negative)."""
    storage_offset: int = 0


@register_op
class AsStrided(OpDef):
    """out[i] = flat(in)[storage_offset + sum_k i_k * stride_k] (a contiguous copy).

    `flat(in)` is the row-major storage of the (contiguous) input, as torch.as_strided sees a
    freshly materialized tensor. Per-axis quantized input is rejected, as PyTorch does.
    """

    name = "as_strided"
    Attrs = AsStridedAttrs
    num_inputs = 1
    torch_counterparts = ("torch.as_strided", "Tensor.as_strided")

    def infer_type(self, attrs: AsStridedAttrs, x: TensorType) -> TensorType:
        size = int_tuple(self.name, "size", attrs.size)
        stride = int_tuple(self.name, "stride", attrs.stride)
        off = attrs.storage_offset
        if len(size) != len(stride):
            raise TypeInferenceError(
                f"as_strided: size {list(size)} and stride {list(stride)} differ in length")
        if any(s < 0 for s in size) or any(s < 0 for s in stride) or off < 0:
            raise TypeInferenceError(
                f"as_strided: sizes, strides and storage_offset must be non-negative, got"
                f" size={list(size)} stride={list(stride)} storage_offset={off}")
        if math.prod(size) > 0:
            need = off + sum((n - 1) * s for n, s in zip(size, stride)) + 1
            if need > x.numel:
                raise TypeInferenceError(
                    f"as_strided: size={list(size)} stride={list(stride)} storage_offset={off}"
                    f" reads element {need - 1}, but the input has {x.numel} elements")
        reject_per_axis(self.name, x, "Setting strides is possible only on uniformly quantized"
                                      " tensor")
        return TensorType(size, x.dtype, x.qparams)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        a = sig.attrs
        out = np.empty(sig.out.shape, x.dtype)
        if out.size == 0:
            return out
        flat = np.ascontiguousarray(x).reshape(-1)
        idx = np.full(sig.out.shape, a.storage_offset, np.int64)
        for k, (n, s) in enumerate(zip(a.size, a.stride)):
            shape = [1] * len(a.size)
            shape[k] = n
            idx = idx + (np.arange(n, dtype=np.int64) * s).reshape(shape)
        return contiguous_copy(flat[idx])

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.lowering.tvm_compat import te

        a = sig.attrs
        in_shape = sig.in_types[0].shape
        dt = _index_dtype(in_shape)

        def index(i: tuple[Any, ...]) -> tuple[Any, ...]:
            flat: Any = te.const(a.storage_offset, dt)
            for v, st in zip(i, a.stride):
                flat = flat + (v.astype(dt) if dt == "int64" else v) * st
            return unravel(flat, in_shape)

        return gather(x, sig.out.shape, index, "as_strided")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (4, 6), None):
            yield OpSample(AsStridedAttrs((3, 3), (5, 2), 1), (ty,), (x,), label)
        ty, x = S.qtensor(rng, (2, 3, 4), u8)
        yield OpSample(AsStridedAttrs((4, 3), (1, 4)), (ty,), (x,), "transpose-like")
        yield OpSample(AsStridedAttrs((2, 5), (0, 3), 7), (ty,), (x,), "zero-stride")
        yield OpSample(AsStridedAttrs((), (), 23), (ty,), (x,), "0d-last")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        a = sample.attrs
        t = _qin(sample).as_strided(a.size, a.stride, a.storage_offset)
        return torch_result(t.contiguous(), sig.out)


@dataclass(frozen=True)
class SelectAttrs:
    dim: int
    index: int
    """Index along `dim`; negative counts from the end."""


@register_op
class Select(OpDef):
    """out = in[..., index, ...] (indexing dim `dim`, which disappears).

    Per-axis qparams: selecting on the axis gives that channel's per-tensor qparams; a dim
    before the axis shifts it down; a dim after the axis is rejected (PyTorch mislabels it).
    """

    name = "select"
    Attrs = SelectAttrs
    num_inputs = 1
    torch_counterparts = ("torch.select", "Tensor.select", "x[..., i, ...]", "torch.unbind")

    def infer_type(self, attrs: SelectAttrs, x: TensorType) -> TensorType:
        if x.rank == 0:
            raise TypeInferenceError("select cannot be applied to a 0-dim tensor")
        d = wrap_dim(self.name, attrs.dim, x.rank)
        n = x.shape[d]
        if not -n <= attrs.index < n:
            raise TypeInferenceError(
                f"select: index {attrs.index} is out of range for dim {d} of size {n}")
        i = attrs.index % n
        qp = subtensor_qparams(self.name, x.qparams, d, i, i + 1, 1, is_select=True)
        return TensorType(x.shape[:d] + x.shape[d + 1:], x.dtype, qp)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        a = sig.attrs
        return contiguous_copy(np.take(x, a.index, axis=a.dim))

    def lower(self, sig: Sig, x: Any) -> Any:
        from qcompiler.lowering.tvm_compat import te

        shape = sig.in_types[0].shape
        d = sig.attrs.dim % len(shape)
        k = te.const(sig.attrs.index % shape[d], "int32")
        return gather(x, sig.out.shape, lambda i: i[:d] + (k,) + i[d:], "select")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (2, 3, 5), None):
            yield OpSample(SelectAttrs(1, -1), (ty,), (x,), label)
        ty, x = S.qtensor(rng, (7,), u8)
        yield OpSample(SelectAttrs(0, 3), (ty,), (x,), "to-0d")
        ty, x = S.qtensor_per_channel(rng, (3, 4, 5), 1)
        yield OpSample(SelectAttrs(1, 2), (ty,), (x,), "per-axis-on-axis")
        yield OpSample(SelectAttrs(-3, 0), (ty,), (x,), "per-axis-before")
        ty, x = S.qtensor_per_channel(rng, (1, 4), 0, u8)
        yield OpSample(SelectAttrs(1, 1), (ty,), (x,), "per-axis-one-channel")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        a = sample.attrs
        return torch_result(_qin(sample).select(a.dim, a.index).contiguous(), sig.out)


@dataclass(frozen=True)
class SliceAttrs:
    dim: int = 0
    start: int | None = None
    """First index (negative counts from the end; clamped to the dim); None: 0."""
    end: int | None = None
    """One past the last index (clamped like Python slicing); None: the dim's size."""
    step: int = 1
    """Positive stride."""


def _slice_bounds(n: int, start: int | None, end: int | None) -> tuple[int, int]:
    """PyTorch's slice normalization (same as Python's for a positive step)."""
    s = 0 if start is None else start
    e = n if end is None else end
    if s < 0:
        s += n
    if e < 0:
        e += n
    s = min(max(s, 0), n)
    e = min(max(e, s), n)
    return s, e


@register_op
class Slice(OpDef):
    """out = in[..., start:end:step, ...] along `dim` (also torch.narrow(dim, start, length)).

    Per-axis qparams: slicing the axis slices the scales and zero points; a result with a single
    channel becomes per-tensor (PyTorch's rule, also for a one-channel input sliced elsewhere).
    """

    name = "slice"
    Attrs = SliceAttrs
    num_inputs = 1
    torch_counterparts = ("x[a:b:c]", "torch.narrow", "Tensor.narrow", "aten.slice")

    def infer_type(self, attrs: SliceAttrs, x: TensorType) -> TensorType:
        if x.rank == 0:
            raise TypeInferenceError("slice cannot be applied to a 0-dim tensor")
        d = wrap_dim(self.name, attrs.dim, x.rank)
        if not isinstance(attrs.step, int) or attrs.step < 1:
            raise TypeInferenceError(f"slice: step must be a positive int, got {attrs.step!r}")
        s, e = _slice_bounds(x.shape[d], attrs.start, attrs.end)
        shape = list(x.shape)
        shape[d] = (e - s + attrs.step - 1) // attrs.step
        qp = subtensor_qparams(self.name, x.qparams, d, s, e, attrs.step, is_select=False)
        return TensorType(tuple(shape), x.dtype, qp)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        a = sig.attrs
        d = a.dim % x.ndim
        s, e = _slice_bounds(x.shape[d], a.start, a.end)
        index = [slice(None)] * x.ndim
        index[d] = slice(s, e, a.step)
        return contiguous_copy(x[tuple(index)])

    def lower(self, sig: Sig, x: Any) -> Any:
        a = sig.attrs
        shape = sig.in_types[0].shape
        d = a.dim % len(shape)
        start, _ = _slice_bounds(shape[d], a.start, a.end)
        step = a.step
        return gather(x, sig.out.shape,
                      lambda i: i[:d] + (i[d] * step + start,) + i[d + 1:], "slice")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (2, 7, 3), None):
            yield OpSample(SliceAttrs(1, 1, -1, 2), (ty,), (x,), label)
        ty, x = S.qtensor(rng, (9, 4), u8)
        yield OpSample(SliceAttrs(0, -100, 100, 4), (ty,), (x,), "clamped")
        yield OpSample(SliceAttrs(-1, None, 2), (ty,), (x,), "head-neg-dim")
        yield OpSample(SliceAttrs(0, 5, 2), (ty,), (x,), "empty")
        ty, x = S.qtensor_per_channel(rng, (2, 5, 3), 1)
        yield OpSample(SliceAttrs(1, 1, None, 2), (ty,), (x,), "per-axis-step")
        yield OpSample(SliceAttrs(1, 3, 4), (ty,), (x,), "per-axis-one-channel")
        yield OpSample(SliceAttrs(2, 1), (ty,), (x,), "per-axis-other-dim")
        ty, x = S.qtensor_per_channel(rng, (3, 1, 4), 1, u8)
        yield OpSample(SliceAttrs(2, 0, 3), (ty,), (x,), "per-axis-single-channel-input")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        a = sample.attrs
        t = torch.ops.aten.slice(_qin(sample), a.dim, a.start, a.end, a.step)
        return torch_result(t.contiguous(), sig.out)


@dataclass(frozen=True)
class IndexSelectAttrs:
    dim: int


@register_op
class IndexSelect(OpDef):
    """out[..., k, ...] = in[..., index[k], ...] along `dim`; index is i64 or i32, rank <= 1.

    An index outside [0, size) is an error at run time (PyTorch rejects negative indices too).
    Per-axis quantized input is rejected, as PyTorch does.
    """

    name = "index_select"
    Attrs = IndexSelectAttrs
    num_inputs = 2
    torch_counterparts = ("torch.index_select", "Tensor.index_select")

    def infer_type(self, attrs: IndexSelectAttrs, x: TensorType, index: TensorType
                   ) -> TensorType:
        if index.qparams is not None or index.dtype.short not in ("i64", "i32"):
            raise TypeInferenceError(
                f"index_select: the index must be an i64 or i32 tensor, got {index}")
        if index.rank > 1:
            raise TypeInferenceError(
                f"index_select: the index must be a vector (rank <= 1), got {index}")
        if x.rank == 0:
            raise TypeInferenceError("index_select: the input must have rank >= 1")
        d = wrap_dim(self.name, attrs.dim, x.rank)
        reject_per_axis(self.name, x, "Only per_tensor quantized quantized tensors are supported"
                                      " by index_select.")
        shape = list(x.shape)
        shape[d] = index.numel
        return TensorType(tuple(shape), x.dtype, x.qparams)

    def reference(self, sig: Sig, x: np.ndarray, index: np.ndarray) -> np.ndarray:
        d = sig.attrs.dim % x.ndim
        idx = index.reshape(-1).astype(np.int64)
        bad = idx[(idx < 0) | (idx >= x.shape[d])]
        if bad.size:
            raise InterpretError(
                f"index_select: index {int(bad[0])} is out of range for dim {d} of size"
                f" {x.shape[d]}")
        return contiguous_copy(np.take(x, idx, axis=d))

    def lower(self, sig: Sig, x: Any, index: Any) -> Any:
        """NOTE: an out-of-range index is clamped (the interpreter raises; code cannot)."""
        from qcompiler.lowering.tvm_compat import te

        shape = sig.in_types[0].shape
        d = sig.attrs.dim % len(shape)
        idt = str(index.dtype)
        one_d = sig.in_types[1].rank == 1

        def pick(i: tuple[Any, ...]) -> tuple[Any, ...]:
            k = index[i[d]] if one_d else index[()]
            k = te.max(te.min(k, te.const(shape[d] - 1, idt)), te.const(0, idt))
            return i[:d] + (k.astype("int32"),) + i[d + 1:]

        return gather(x, sig.out.shape, pick, "index_select")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        idx = np.array([4, 0, 4, 2, 1], np.int64)
        ity = TensorType((5,), i64)
        for label, ty, x in _mixed_inputs(rng, (2, 6, 3), None):
            yield OpSample(IndexSelectAttrs(1), (ty, ity), (x, idx), label)
        ty, x = S.qtensor(rng, (7, 2), u8)
        yield OpSample(IndexSelectAttrs(-2), (ty, ity), (x, idx), "neg-dim")
        i32idx = np.array([6, 6, 0], np.int32)
        yield OpSample(IndexSelectAttrs(0), (ty, TensorType((3,), i32)), (x, i32idx), "i32")
        yield OpSample(IndexSelectAttrs(0), (ty, TensorType((), i64)), (x, np.array(5)), "0d")
        yield OpSample(IndexSelectAttrs(1), (ty, TensorType((0,), i64)),
                       (x, np.zeros((0,), np.int64)), "empty")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        index = torch.from_numpy(np.array(sample.arrays[1]))
        return torch_result(_qin(sample).index_select(sample.attrs.dim, index), sig.out)


def _split_outputs(op: str, x: TensorType, d: int, sizes: Sequence[int]
                   ) -> tuple[TensorType, ...]:
    outs = []
    start = 0
    for n in sizes:
        qp = subtensor_qparams(op, x.qparams, d, start, start + n, 1, is_select=False)
        shape = list(x.shape)
        shape[d] = n
        outs.append(TensorType(tuple(shape), x.dtype, qp))
        start += n
    return tuple(outs)


def _split_reference(sig: Sig, x: np.ndarray, d: int) -> tuple[np.ndarray, ...]:
    bounds = np.cumsum([t.shape[d] for t in sig.out_types])[:-1]
    return tuple(contiguous_copy(p) for p in np.split(x, bounds, axis=d))


def _split_te(sig: Sig, x: Any, d: int, name: str) -> tuple[Any, ...]:
    outs = []
    start = 0
    for k, t in enumerate(sig.out_types):
        off = start
        outs.append(gather(x, t.shape, lambda i, off=off: i[:d] + (i[d] + off,) + i[d + 1:],
                           f"{name}_{k}"))
        start += t.shape[d]
    return tuple(outs)


def _split_sizes(n: int, size: int) -> list[int]:
    """Tensor.split(size): pieces of `size`, the last one shorter; one (empty) piece if n == 0."""
    count = max((n + size - 1) // size, 1)
    return [size] * (count - 1) + [n - size * (count - 1)]


@dataclass(frozen=True)
class ChunkAttrs:
    chunks: int
    dim: int = 0


@register_op
class Chunk(OpDef):
    """torch.chunk: pieces of ceil(n / chunks) along `dim` (the last one shorter, and possibly
    fewer than `chunks` pieces); output k = in[..., k*c : (k+1)*c, ...]. Multi-output.

    Per-axis qparams are sliced per piece (see `slice`).
    """

    name = "chunk"
    Attrs = ChunkAttrs
    num_inputs = 1
    torch_counterparts = ("torch.chunk", "Tensor.chunk")

    def infer_type(self, attrs: ChunkAttrs, x: TensorType) -> tuple[TensorType, ...]:
        if not isinstance(attrs.chunks, int) or attrs.chunks < 1:
            raise TypeInferenceError(f"chunk: chunks must be a positive int, got {attrs.chunks!r}")
        if x.rank == 0:
            raise TypeInferenceError("chunk expects at least a 1-dimensional tensor")
        d = wrap_dim(self.name, attrs.dim, x.rank)
        n = x.shape[d]
        size = (n + attrs.chunks - 1) // attrs.chunks
        if n == 0:
            sizes = [0] * attrs.chunks
        else:
            sizes = _split_sizes(n, size)
        return _split_outputs(self.name, x, d, sizes)

    def reference(self, sig: Sig, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return _split_reference(sig, x, sig.attrs.dim % x.ndim)

    def lower(self, sig: Sig, x: Any) -> tuple[Any, ...]:
        return _split_te(sig, x, sig.attrs.dim % sig.in_types[0].rank, "chunk")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (2, 7, 3), None):
            yield OpSample(ChunkAttrs(3, 1), (ty,), (x,), label)
        ty, x = S.qtensor(rng, (4, 5), u8)
        yield OpSample(ChunkAttrs(3, -1), (ty,), (x,), "fewer-pieces")
        yield OpSample(ChunkAttrs(9, 0), (ty,), (x,), "more-chunks-than-rows")
        yield OpSample(ChunkAttrs(1, 0), (ty,), (x,), "one")
        ty, x = S.qtensor_per_channel(rng, (2, 5, 3), 1)
        yield OpSample(ChunkAttrs(2, 1), (ty,), (x,), "per-axis-on-axis")
        yield OpSample(ChunkAttrs(2, 2), (ty,), (x,), "per-axis-other-dim")

    def torch_reference(self, sample: OpSample, sig: Sig) -> tuple[np.ndarray, ...]:
        a = sample.attrs
        outs = _qin(sample).chunk(a.chunks, a.dim)
        assert len(outs) == len(sig.out_types), f"PyTorch gives {len(outs)} chunks"
        return tuple(torch_result(t.contiguous(), ty, f"chunk {k}")
                     for k, (t, ty) in enumerate(zip(outs, sig.out_types)))


@dataclass(frozen=True)
class SplitAttrs:
    split_size_or_sections: int | tuple[int, ...]
    """An int: pieces of that size (the last one shorter). A tuple: the size of each piece."""
    dim: int = 0


@register_op
class Split(OpDef):
    """torch.split: output k = in[..., o_k : o_k + n_k, ...] along `dim`. Multi-output.

    Per-axis qparams are sliced per piece (see `slice`); an empty piece along the axis is an
    error, as in PyTorch.
    """

    name = "split"
    Attrs = SplitAttrs
    num_inputs = 1
    torch_counterparts = ("torch.split", "Tensor.split", "Tensor.split_with_sizes")

    def infer_type(self, attrs: SplitAttrs, x: TensorType) -> tuple[TensorType, ...]:
        if x.rank == 0:
            raise TypeInferenceError("split expects at least a 1-dimensional tensor")
        d = wrap_dim(self.name, attrs.dim, x.rank)
        n = x.shape[d]
        spec = attrs.split_size_or_sections
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            if spec < 0 or (spec == 0 and n != 0):
                raise TypeInferenceError(
                    f"split: split_size must be positive (0 only for an empty dim), got {spec}")
            sizes = _split_sizes(n, int(spec)) if spec else [0]
        else:
            sizes = list(int_tuple(self.name, "split_size_or_sections", spec))
            if not sizes or any(s < 0 for s in sizes) or sum(sizes) != n:
                raise TypeInferenceError(
                    f"split: sections {sizes} must be non-negative and sum to {n}, the size of"
                    f" dim {d}")
        return _split_outputs(self.name, x, d, sizes)

    def reference(self, sig: Sig, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return _split_reference(sig, x, sig.attrs.dim % x.ndim)

    def lower(self, sig: Sig, x: Any) -> tuple[Any, ...]:
        return _split_te(sig, x, sig.attrs.dim % sig.in_types[0].rank, "split")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (2, 7, 3), None):
            yield OpSample(SplitAttrs(3, 1), (ty,), (x,), label)
        ty, x = S.qtensor(rng, (6, 5), u8)
        yield OpSample(SplitAttrs((1, 0, 4), -1), (ty,), (x,), "sections-with-empty")
        yield OpSample(SplitAttrs(10, 0), (ty,), (x,), "one-piece")
        ty, x = S.qtensor_per_channel(rng, (2, 5, 3), 1)
        yield OpSample(SplitAttrs((1, 4), 1), (ty,), (x,), "per-axis-sections")
        yield OpSample(SplitAttrs(2, -1), (ty,), (x,), "per-axis-other-dim")

    def torch_reference(self, sample: OpSample, sig: Sig) -> tuple[np.ndarray, ...]:
        a = sample.attrs
        spec = a.split_size_or_sections
        outs = _qin(sample).split(spec if isinstance(spec, int) else list(spec), a.dim)
        assert len(outs) == len(sig.out_types), f"PyTorch gives {len(outs)} pieces"
        return tuple(torch_result(t.contiguous(), ty, f"piece {k}")
                     for k, (t, ty) in enumerate(zip(outs, sig.out_types)))


@dataclass(frozen=True)
class StackAttrs:
    dim: int = 0


@register_op
class Stack(OpDef):
    """out[..., k, ...] = in_k along the new dim `dim`; inputs share shape and dtype.

    Unquantized inputs are copied. Quantized inputs (per-tensor only, as in PyTorch) give an
    output with the first input's (s0, z0), and every input, the first included, goes through
    PyTorch's generic quantized-cat path:
        out_k = quantize_per_tensor(dequantize(in_k), s0, z0)
    with the exact float32 roundings of `quant_math.quantize_per_tensor`. That is the identity
    for u8/i8 inputs that already have (s0, z0); for i32 it is lossy beyond float32 precision
    (and the int32 difference in dequantize wraps around), exactly as in PyTorch.
    (torch.stack writes a contiguous output, so PyTorch's channels-last qcat kernel is never
    used here, even for 3-d inputs stacked at dim 1.)
    """

    name = "stack"
    Attrs = StackAttrs
    num_inputs = None
    torch_counterparts = ("torch.stack",)

    def infer_type(self, attrs: StackAttrs, *xs: TensorType) -> TensorType:
        if not xs:
            raise TypeInferenceError("stack expects a non-empty list of tensors")
        x0 = xs[0]
        for k, x in enumerate(xs[1:], 1):
            if x.shape != x0.shape:
                raise TypeInferenceError(
                    f"stack expects each tensor to be equal size, but got {list(x0.shape)} at"
                    f" entry 0 and {list(x.shape)} at entry {k}")
            if x.dtype != x0.dtype or (x.qparams is None) != (x0.qparams is None):
                raise TypeInferenceError(
                    f"stack expects inputs of one dtype, all quantized or all unquantized; got"
                    f" {x0} at entry 0 and {x} at entry {k}")
        for x in xs:
            reject_per_axis(self.name, x, "Only per-tensor quantization is supported in 'cat'!")
        d = wrap_dim(self.name, attrs.dim, x0.rank, extra=1)
        return TensorType(x0.shape[:d] + (len(xs),) + x0.shape[d:], x0.dtype, x0.qparams)

    def reference(self, sig: Sig, *xs: np.ndarray) -> np.ndarray:
        out = sig.out
        d = sig.attrs.dim % (out.rank)
        if out.qparams is None:
            return np.stack(xs, axis=d)
        s0, z0 = out.qparams.scale_value, out.qparams.zp_value
        parts = []
        for x, t in zip(xs, sig.in_types):
            assert t.qparams is not None
            deq = qm.dequantize_per_tensor(x, t.qparams.scale_value, t.qparams.zp_value)
            parts.append(qm.quantize_per_tensor(deq, s0, z0, out.dtype))
        return np.stack(parts, axis=d)

    def lower(self, sig: Sig, *xs: Any) -> Any:
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.tvm_compat import tirx

        out = sig.out
        d = sig.attrs.dim % out.rank
        rank = out.rank - 1
        loads: list[Callable[[tuple[Any, ...]], Any]] = []
        for x, t in zip(xs, sig.in_types):
            if out.qparams is None:
                loads.append(lambda j, x=x: x[j])
                continue
            assert t.qparams is not None
            dq = te_lib.dequantize_fn(t.qparams, rank, "stack_in")
            qf = te_lib.quantize_fn(out.qparams, out.dtype, rank, "stack_out")
            loads.append(lambda j, x=x, dq=dq, qf=qf: qf(dq(x[j], j), j))

        def fn(i: tuple[Any, ...]) -> Any:
            j = i[:d] + i[d + 1:]
            value = loads[-1](j)
            for k in range(len(loads) - 2, -1, -1):
                value = tirx.Select(i[d] == k, loads[k](j), value)
            return value

        return te_lib.elementwise(out.shape, fn, "stack")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (2, 3, 4), None):
            y = x[::-1].copy()
            yield OpSample(StackAttrs(-1), (ty, ty), (x, y), f"{label}-same-qparams")
        for dtype in (u8, i8, i32):
            shape = (2, 3, 5)
            ts = [S.qtensor(rng, shape, dtype, S.rand_scale(rng, 1e-3, 1.0),
                            S.rand_zp(rng, dtype, edge=k == 1)) for k in range(3)]
            tys, arrs = tuple(t for t, _ in ts), tuple(a for _, a in ts)
            yield OpSample(StackAttrs(0), tys, arrs, f"{dtype}-requant-dim0")
            yield OpSample(StackAttrs(1), tys, arrs, f"{dtype}-requant-dim1")
            yield OpSample(StackAttrs(-1), tys, arrs, f"{dtype}-requant-last")
        ty, x = S.qtensor(rng, (), u8)
        yield OpSample(StackAttrs(0), (ty,), (x,), "single-0d")
        ty, x = S.ftensor(rng, (2, 2))
        yield OpSample(StackAttrs(1), (ty, ty, ty), (x, x + 1, x + 2), "f32-three")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        ts = [_qin(sample, k) for k in range(len(sample.arrays))]
        with warnings.catch_warnings():   # "inputs ... must share the same quantization ..."
            warnings.simplefilter("ignore", UserWarning)
            out = torch.stack(ts, sample.attrs.dim)
        return torch_result(out.contiguous(), sig.out)


@register_op
class Clone(OpDef):
    """out = in (a copy; qparams unchanged, per-axis included)."""

    name = "clone"
    num_inputs = 1
    torch_counterparts = ("torch.clone", "Tensor.clone")

    def infer_type(self, attrs: object, x: TensorType) -> TensorType:
        return x

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        return x.copy()

    def lower(self, sig: Sig, x: Any) -> Any:
        return copy_te(x, "clone")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (3, 1, 5), 2):
            yield OpSample(self.Attrs(), (ty,), (x,), label)

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        return torch_result(_qin(sample).clone(), sig.out)


@register_op
class Contiguous(OpDef):
    """out = in: every IR value is contiguous row-major, so Tensor.contiguous() is a copy."""

    name = "contiguous"
    num_inputs = 1
    torch_counterparts = ("Tensor.contiguous",)

    def infer_type(self, attrs: object, x: TensorType) -> TensorType:
        return x

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        return x.copy()

    def lower(self, sig: Sig, x: Any) -> Any:
        return copy_te(x, "contiguous")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for label, ty, x in _mixed_inputs(rng, (2, 5), 0):
            yield OpSample(self.Attrs(), (ty,), (x,), label)

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        return torch_result(_qin(sample).contiguous(), sig.out)
