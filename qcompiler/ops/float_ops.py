"""Float ops ("f.*"): the float32 parts of quantized models, so whole models import and compile.

Dynamic-quantized transformers keep layer_norm, softmax, gelu, matmul, elementwise arithmetic,
masking and embeddings in float; static (FX) models keep whatever PyTorch did not quantize
between a dequantize and a quantize (mean, adaptive_avg_pool2d, interpolate, hardswish, cat,
scalar arithmetic, dtype casts). These ops model those PyTorch functions on unquantized
tensors. Reshape/permute/transpose/slicing live in ops/shape.py and work on float too.

Semantics and tolerance. Each op states its float semantics as a formula on float32 values.
Where PyTorch's CPU kernel is a fixed sequence of IEEE float32 operations (add, mul, div,
sqrt, min/max, casts, gathers, selects) the reference performs the same operations in float32
and is bit-exact (`rtol = 0`). Transcendental functions and reductions cannot be matched bit
for bit: PyTorch uses SLEEF/vectorized polynomial approximations and blocked, vectorized
summation orders. There the reference computes in float64 and rounds once to float32 (the
correctly rounded answer, up to float64's own error), and the op documents

    |ours - torch| <= rtol * scale

where `scale` is the op's error scale: max |output| for elementwise ops, the largest
sum of |products| (|a| @ |b|) for matmul/linear/conv and sums, max |input| for averaging.
`rtol` was measured on the samples and on larger stress inputs (BERT-sized softmax/layer_norm/
matmul, 200k-element sweeps over 1e-4..60 for elementwise ops; `fidelity_note` gives the worst
seen, on torch 2.13 / AVX512); the registry-driven test
(tests/ops/test_reference_vs_torch.py) checks each sample against `rtol * scale`, passed as
the sample's `max_lsb` (an absolute float tolerance for float outputs).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qcompiler.errors import InterpretError, TypeInferenceError
from qcompiler.ir.registry import NoAttrs, OpDef, OpSample, Sig, register_op
from qcompiler.ir.types import DType, TensorType, b1, f16, f32, f64, i8, i32, i64, u8
from qcompiler.testing import samples as S

# --- shared helpers ------------------------------------------------------------------------

_NP_TO_DTYPE: dict[str, DType] = {
    "float32": f32, "float16": f16, "float64": f64, "int64": i64, "int32": i32,
    "int8": i8, "uint8": u8, "bool": b1,
}
FLOAT = (f32,)
"""Dtypes of ops that compute in float: float32 only (cast with f.to first)."""
NUMERIC = (f32, i64)
"""Dtypes of exact arithmetic/comparison ops: float32 and int64."""
INDEX = (i64, i32)
"""Dtypes accepted as indices (embedding)."""
CASTABLE = (f32, f16, f64, i64, i32, i8, u8, b1)
"""Dtypes f.to converts between (unquantized)."""


def _names(dtypes: Sequence[DType]) -> str:
    return ", ".join(f"{d.storage} ({d})" for d in dtypes)


def check_input(op: str, t: TensorType, allowed: Sequence[DType], what: str = "input") -> None:
    """Raise TypeInferenceError unless `t` is unquantized with a dtype in `allowed`."""
    if t.qparams is not None:
        raise TypeInferenceError(
            f"{op} {what} must be an unquantized tensor, got quantized {t}: float ops take"
            f" dequantized values (insert a dequantize); supported dtypes: {_names(allowed)}")
    if t.dtype not in allowed:
        raise TypeInferenceError(
            f"{op} {what} has dtype {t.dtype}; supported dtypes: {_names(allowed)}"
            " (cast with f.to first)")


def broadcast_shapes(op: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """The NumPy/PyTorch broadcast of `shapes`, or a TypeInferenceError naming them."""
    rank = max(len(s) for s in shapes)
    out: list[int] = []
    for k in range(rank):
        dims = {s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0}
        dims.discard(1)
        if len(dims) > 1:
            listed = " and ".join(str(list(s)) for s in shapes)
            raise TypeInferenceError(
                f"{op}: shapes {listed} do not broadcast (dimension {k - rank} has sizes"
                f" {sorted(dims)}; each must be equal or 1)")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def normalize_dim(op: str, dim: int, rank: int) -> int:
    """A dim in [-rank, rank) made non-negative, or a TypeInferenceError."""
    r = max(rank, 1)  # PyTorch lets rank-0 tensors use dim 0 / -1
    if not -r <= dim < r:
        raise TypeInferenceError(
            f"{op}: dim {dim} is out of range for a rank-{rank} tensor (valid: {-r}..{r - 1})")
    return dim % r if rank else 0


def normalize_dims(op: str, dims: tuple[int, ...] | None, rank: int) -> tuple[int, ...]:
    if dims is None:
        return tuple(range(rank))
    out = tuple(sorted({normalize_dim(op, d, rank) for d in dims}))
    if len(out) != len(dims):
        raise TypeInferenceError(f"{op}: dims {list(dims)} name a dimension twice")
    return out if rank else ()


def _dtype_of(a: np.ndarray) -> DType:
    return _NP_TO_DTYPE[str(a.dtype)]


def _finite_max_abs(*arrays: np.ndarray) -> float:
    m = 0.0
    for a in arrays:
        v = np.abs(a[np.isfinite(a)].astype(np.float64)) if a.dtype.kind == "f" else np.abs(a)
        if v.size:
            m = max(m, float(v.max()))
    return m


def _as(x: Any, ty: TensorType) -> np.ndarray:
    """`x` as a numpy array of `ty`'s storage dtype (0-d numpy scalars become 0-d arrays)."""
    with np.errstate(all="ignore"):
        return np.asarray(x).astype(ty.dtype.np, copy=False)


def _torch(a: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.array(a, order="C"))  # a copy; 0-d stays 0-d


def _numpy(t: Any) -> np.ndarray:
    return t.detach().contiguous().numpy()


class FloatOp(OpDef):
    """Base of the f.* ops: the tolerance rule and the sample helper."""

    rtol: ClassVar[float] = 0.0
    """|ours - torch| <= rtol * error scale (0: bit-exact). Measured on the samples."""

    compiled_tolerance: ClassVar[float] = 0.0
    """Compiled code vs the interpreter: |diff| <= compiled_tolerance * error scale (0: equal
    bit for bit). Nonzero only where numpy's float64 result cannot be reproduced exactly
    (docs/lowering.md, "Float ops")."""

    def error_scale(self, sig: Sig, arrays: tuple[np.ndarray, ...], out: np.ndarray) -> float:
        """What the tolerance is relative to; default: the largest finite |output|."""
        return _finite_max_abs(out)

    def case(self, attrs: Any, arrays: Sequence[np.ndarray], label: str,
             in_types: Sequence[TensorType] | None = None, **extra: Any) -> OpSample:
        """An OpSample whose `max_lsb` is this op's tolerance for these arrays."""
        arrays = tuple(np.array(a, order="C") for a in arrays)  # keeps 0-d arrays 0-d
        if in_types is None:
            in_types = tuple(TensorType(a.shape, _dtype_of(a)) for a in arrays)
        bound = 0.0
        if self.rtol:
            outs = self.infer_types(attrs, in_types)
            sig = Sig(tuple(in_types), outs, attrs)
            ref = self.reference(sig, *arrays)
            out = ref[0] if isinstance(ref, tuple) else ref
            bound = self.rtol * self.error_scale(sig, arrays, out)
        return OpSample(attrs, tuple(in_types), arrays, label, max_lsb=bound, extra=dict(extra))


def _rtol_note(rtol: float, scale: str, worst: str) -> str:
    return (f"float op: |diff| <= {rtol:g} * {scale} (float64 reference rounded once vs"
            f" PyTorch's float32 kernels; measured worst {worst})")


_TRANSCENDENTAL = 2.0**-23
"""compiled_tolerance of ops built on float64 exp/log/tanh/pow: numpy computes these with its
own SIMD code (SVML on AVX-512 hosts, so the interpreter itself differs between machines),
compiled code calls libm; the float64 results differ in the last bits, so the float32 results
differ by at most 1 ulp of the error scale (more ulps only where the op cancels, e.g. gelu's
1 + tanh(x) near x = -6, still within this tolerance)."""
_BLAS_ORDER = 2.0**-23
"""compiled_tolerance of matmul/linear/conv2d: the interpreter accumulates in float64 in
BLAS's (np.matmul) or einsum's order, which is machine dependent; compiled code sums the
(exact) float64 products in its own fixed order, so the float32 results differ by at most
1 ulp of the error scale, and only when the float64 sums straddle a float32 rounding point."""
_EXACT_NOTE = "float op: |diff| <= 0 (same IEEE float32 operations as PyTorch's kernel)"


# --- lowering helpers (TE; TVM is imported lazily: ops/ must import without it) -------------
#
# Every lower() is the TE twin of its reference, operation for operation and in the same float
# width: float32 steps stay float32, float64 steps (transcendentals, sums) run in float64 and
# round to float32 once at the end. Products a later add must not fuse with go through
# te_lib.fence (TVM contracts a * b + c into an FMA; docs/lowering.md). Float64 products of
# two float32 values are exact, so those need no fence.


def _tvm() -> tuple[Any, Any, Any]:
    """(te_lib, te, tirx)."""
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import te, tirx

    return te_lib, te, tirx


def _kname(op: str) -> str:
    """The TE name of an op's final compute ("f.add" -> "f_add")."""
    return op.replace(".", "_")


def _is_float_expr(v: Any) -> bool:
    from qcompiler.lowering.tvm_compat import expr_dtype

    return expr_dtype(v).startswith("float")


def _te_isnan(v: Any) -> Any:
    _, te, _ = _tvm()
    return te.isnan(v)


def _te_max(a: Any, b: Any) -> Any:
    """np.maximum: NaN propagates (TVM's max returns the other operand for a NaN)."""
    _, te, tirx = _tvm()
    if not _is_float_expr(a):
        return te.max(a, b)
    return tirx.Select(te.isnan(a), a, tirx.Select(te.isnan(b), b, te.max(a, b)))


def _te_min(a: Any, b: Any) -> Any:
    """np.minimum: NaN propagates."""
    _, te, tirx = _tvm()
    if not _is_float_expr(a):
        return te.min(a, b)
    return tirx.Select(te.isnan(a), a, tirx.Select(te.isnan(b), b, te.min(a, b)))


def _te_tanh64(d: Any) -> Any:
    """float64 tanh from libm (TVM's own tanh expansion differs from libm and numpy by ulps,
    which 1 + tanh(x) near -1 amplifies)."""
    _, _, tirx = _tvm()
    return tirx.call_pure_extern("float64", "tanh", d)


def _te_wrapping(kind: str, a: Any, b: Any) -> Any:
    """int64 a + b, a - b or a * b modulo 2**64, as numpy computes them.

    NOTE: TIR's signed `+ - *` carry LLVM's `nsw` (overflow is undefined) and its unsigned
    ones are no better (`uint64(0) - x` compiled to 0), so the operands are split into
    32-bit halves (16-bit limbs for the low product) whose partial results cannot overflow;
    only the final shift drops bits, which `shl` does by definition.
    """
    _, te, _ = _tvm()

    def c(v: int) -> Any:
        return te.const(v, "int64")

    m32, m16 = c(0xFFFFFFFF), c(0xFFFF)
    al, bl = a & m32, b & m32  # [0, 2**32)
    ah, bh = a >> c(32), b >> c(32)  # [-2**31, 2**31), arithmetic shift
    if kind in ("add", "sub"):
        lo = al + bl if kind == "add" else al - bl
        hi = (ah + bh if kind == "add" else ah - bh) + (lo >> c(32))
    else:
        a1, a0, b1, b0 = al >> c(16), al & m16, bl >> c(16), bl & m16
        mid = a1 * b0 + a0 * b1  # < 2**33
        lo = a0 * b0 + ((mid & m16) << c(16))  # < 2**33
        hi = ((lo >> c(32)) + (mid >> c(16)) + a1 * b1  # the high half of al * bl
              + ((al * bh) & m32) + ((ah * bl) & m32))
    return (hi << c(32)) | (lo & m32)


def _te_div(a: Any, b: Any) -> Any:
    """a / b (IEEE). A zero immediate divisor is fenced: TVM's constant folder refuses to
    divide by zero, even in float."""
    te_lib, _, tirx = _tvm()
    if isinstance(b, tirx.FloatImm) and float(b.value) == 0.0:
        b = te_lib.fence(b)
    return a / b


def _te_compare(kind: str, a: Any, b: Any) -> Any:
    """a <kind> b as bool with IEEE semantics: NaN is unequal to everything.

    NOTE: TVM emits ordered float compares (`!=` is false for NaN) and simplifies `x == x`
    to true, so the NaN cases are spelled out.
    """
    _, te, tirx = _tvm()
    plain = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
             "gt": operator.gt, "ge": operator.ge}[kind]
    if not _is_float_expr(a):
        return plain(a, b)
    unordered = tirx.Or(te.isnan(a), te.isnan(b))
    if kind == "ne":
        return tirx.Or(unordered, a != b)
    return tirx.And(tirx.Not(unordered), plain(a, b))


def _te_binop(kind: str, a: Any, b: Any) -> Any:
    """The float32 / int64 elementwise operation `kind` of the Binary and BinaryScalar ops."""
    te_lib, te, _ = _tvm()
    is_float = _is_float_expr(a)
    if kind in ("eq", "ne", "lt", "le", "gt", "ge"):
        return _te_compare(kind, a, b)
    if kind == "maximum":
        return _te_max(a, b)
    if kind == "minimum":
        return _te_min(a, b)
    if kind == "pow":  # float32 only: float64 pow rounded once
        return te.power(a.astype("float64"), b.astype("float64")).astype("float32")
    fn = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
          "div": operator.truediv}[kind]
    if not is_float:
        return _te_wrapping(kind, a, b)
    if kind == "mul":
        return te_lib.fence(a * b)
    if kind == "div":
        return _te_div(a, b)
    return fn(a, b)


def _op_kind(op: str) -> str:
    """The elementwise operation an op name stands for ("f.add_scalar" -> "add")."""
    return op.removeprefix("f.").removesuffix("_scalar")


def _te_scalar(value: float | np.generic, dtype: DType) -> Any:
    """A Python number as an immediate of `dtype`, rounded as numpy's astype rounds it."""
    te_lib, te, _ = _tvm()
    with np.errstate(over="ignore"):
        v = np.array(value).astype(dtype.np)[()]
    c = te.const(float(v) if dtype.is_float else int(v), dtype.storage)
    # NOTE: TVM's simplifier folds x * 0.0 to 0.0 (wrong for NaN and inf): hide float zeros
    return te_lib.fence(c) if dtype.is_float and v == 0 else c


def _te_cast(v: Any, src: DType, dst: DType) -> Any:
    """Tensor.to(dst) for one element, with numpy's (x86) results where C leaves them undefined.

    float -> int truncates toward zero; out of range (or NaN) gives the x86 "integer
    indefinite" value as numpy does: INT64_MIN for int64, else the int32 conversion
    (INT32_MIN when out of range) wrapped to the narrower type. float -> bool is x != 0
    (NaN is true). Everything else is a plain conversion (round to nearest even, wrap).
    """
    _, te, tirx = _tvm()
    if src is dst:
        return v
    if dst is b1:
        if src.is_float:
            return tirx.Or(te.isnan(v), v != te.const(0.0, src.storage))
        return v != te.const(0, src.storage)
    if src.is_float and not dst.is_float:
        if src is f16:
            v, src = v.astype("float32"), f32
        wide, bits = ("int64", 63) if dst is i64 else ("int32", 31)
        lo, hi = te.const(-(2.0**bits), src.storage), te.const(2.0**bits, src.storage)
        ok = tirx.And(v >= lo, v < hi)  # false for NaN
        safe = tirx.Select(ok, v, te.const(0.0, src.storage))
        r = tirx.Select(ok, safe.astype(wide), te.const(-(2**bits), wide))
        return r if wide == dst.storage else r.astype(dst.storage)
    return v.astype(dst.storage)


def materialize(t: Any, name: str) -> Any:
    """`t` (float32 or float64), computed once per index even when read per element.

    The generic schedules inline element-wise stages into all their consumers, which would
    recompute a per-row statistic (a row sum's pairwise tree, a sqrt and divisions) for every
    element of the row. A consumer that reads the statistic per element reads this instead:
    a one-step reduction (never inlined) that stores the value in another dtype, exactly
    (float32 widened to float64, float64 as its int64 bit pattern), then an element-wise
    decode that the schedules inline into the consumers (a cast or a reinterpret).

    NOTE (TVM 0.27 StorageRewrite): when a reduction's output buffer has the size and the
    dtype of a buffer its update reads at the same index, and that read is the input's last
    use, StorageRewrite puts the output in the input's memory; the reduction's init then
    overwrites the input before the update reads it (a group-norm mean came out as -zx). The
    dtype change rules that out. Two other tries failed: a te.extern copy (its block declares
    no reads/writes, so `reverse_compute_at` moved a consumer above it) and a two-output
    te.compute (create_prim_func splits it into one inlinable block per output).
    """
    _, te, tirx = _tvm()
    shape = tuple(int(d) for d in t.shape)
    dtype = str(t.dtype)
    if dtype == "float32":
        stored, decode = "float64", (lambda v: v.astype("float32"))
        encode = (lambda v: v.astype("float64"))
    elif dtype == "float64":
        stored, decode = "int64", (lambda v: tirx.reinterpret("float64", v))
        encode = (lambda v: tirx.reinterpret("int64", v))
    else:
        raise ValueError(f"materialize: float32 or float64 tensors only, got {dtype}")
    once = te.reduce_axis((0, 1), name=f"{name}_once")
    take = te.comm_reducer(lambda a, b: b, lambda d: tirx.const(0, str(d)), name="take")
    kept = te.compute(shape, lambda *k: take(encode(t[k]), axis=once), name=f"{name}_{stored}")
    return te.compute(shape, lambda *k: decode(kept[k]), name=name)


# --- numpy's float64 summation order, in TE -------------------------------------------------
#
# The references sum float64 arrays with np.sum / np.mean. numpy's order (checked against
# numpy 2.x on float32 arrays, where any other order shows): size-1 axes are dropped; the
# maximal run of reduced axes at the end of the (C-contiguous) array is summed per row with
# `pairwise_sum` (below); the other reduced axes are walked sequentially in C order, each row
# sum added to the accumulator in turn. pairwise_sum(a, n): n < 8: sequential; n <= 128:
# eight strided accumulators r[j] = a[j] + a[j+8] + ..., combined as
# ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), then the n % 8 leftovers added in order; n > 128:
# split at n2 = n/2 rounded down to a multiple of 8 and add the two halves' pairwise sums.
# Reproducing that order makes these float64 sums, and so the float32 results, bit-exact.

_PW_BLOCK = 128
"""numpy's PW_BLOCKSIZE: runs up to this long are summed with 8 accumulators, longer ones
split in two."""
_PW_LANES = 8


def _pw_tree(n: int, start: int = 0) -> Any:
    """numpy's pairwise split of a run of `n` (>= 8) elements starting at `start`: a leaf
    (start, length) with length <= 128, or a pair [left, right] of subtrees."""
    if n <= _PW_BLOCK:
        return (start, n)
    n2 = n // 2
    n2 -= n2 % _PW_LANES
    return [_pw_tree(n2, start), _pw_tree(n - n2, start + n2)]


def _pw_leaves(tree: Any) -> list[tuple[int, int]]:
    if isinstance(tree, tuple):
        return [tree]
    return _pw_leaves(tree[0]) + _pw_leaves(tree[1])


def _sum_reducer(lanes: int) -> Any:
    """A float64 sum over `lanes` independent accumulators starting at -0.0 (the exact
    additive identity: -0.0 + x == x for every x, so the first add just copies, as numpy's
    r[j] = a[j])."""
    _, te, tirx = _tvm()

    def combine(x: Any, y: Any) -> Any:
        if lanes == 1:
            return x + y
        return [a + b for a, b in zip(x, y)]

    def identity(*dtypes: Any) -> Any:
        ids = [tirx.const(-0.0, str(t)) for t in dtypes]
        return ids[0] if lanes == 1 else ids

    return te.comm_reducer(combine, identity, name=f"np_sum{lanes}")


def _unravel(flat: Any, axes: Sequence[int], shape: Sequence[int], idx: list[Any]) -> None:
    """Write the C-order unravel of `flat` over `axes` into `idx`."""
    for p in reversed(axes):
        if p == axes[0]:
            idx[p] = flat
        else:
            idx[p] = flat % shape[p]
            flat = flat // shape[p]


def _te_np_sum(load: Callable[[tuple[Any, ...]], Any], shape: Sequence[int],
               axes: Sequence[int], name: str, run_axes: int | None = None) -> Any:
    """np.sum(a, axis=axes) of the float64 array a[i] = load(i), in numpy's exact order.

    `run_axes` caps how many trailing (non-unit) reduced axes form the pairwise run (None:
    all of them, as numpy coalesces them in a C-contiguous array).
    Returns a float64 te.Tensor over the kept axes (in order; rank 0 when all are reduced).
    Stages: `<name>_pw` (8-lane partial sums of every 128-element leaf of every row, a
    tuple reduction: 8 independent chains, which also makes it fast) and `<name>` (each
    row's pairwise combination, added sequentially over the other reduced axes; element-wise
    when there are none: `materialize` it before reading it once per element).
    """
    te_lib, te, tirx = _tvm()
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    red = set(axes)
    kept = [p for p in range(nd) if p not in red]
    kshape = tuple(shape[p] for p in kept)
    nonunit = [p for p in range(nd) if shape[p] != 1]
    trail: list[int] = []
    for p in reversed(nonunit):
        if p not in red or (run_axes is not None and len(trail) == run_axes):
            break
        trail.insert(0, p)
    outer = [p for p in sorted(red) if shape[p] != 1 and p not in trail]
    n_trail = math.prod(shape[p] for p in trail)
    n_outer = math.prod(shape[p] for p in outer)
    if n_trail * n_outer == 0:  # an empty sum
        return te.compute(kshape, lambda *k: te.const(0.0, "float64"), name=name)

    def full(k: Sequence[Any], o: Any, t: Any) -> tuple[Any, ...]:
        idx: list[Any] = [0] * nd
        for p, v in zip(kept, k):
            idx[p] = v
        if outer:
            _unravel(o, outer, shape, idx)
        if trail:
            _unravel(t, trail, shape, idx)
        return tuple(idx)

    row_sum: Callable[[Sequence[Any], Any], Any]
    if n_trail < _PW_LANES:
        def row_sum(k: Sequence[Any], o: Any) -> Any:
            res = load(full(k, o, 0))
            for t in range(1, n_trail):
                res = res + load(full(k, o, t))
            return res
    else:
        tree = _pw_tree(n_trail)
        leaves = _pw_leaves(tree)
        n_leaves = len(leaves)
        blocks = [m // _PW_LANES for _, m in leaves]
        uniform = all(b == blocks[0] for b in blocks)
        if n_leaves == 1:
            def leaf_start(lf: Any) -> Any:
                return leaves[0][0]
        else:
            starts_t = te_lib.constant(np.array([s for s, _ in leaves], np.int32),
                                       f"{name}_leaf_start")
            blocks_t = te_lib.constant(np.array(blocks, np.int32), f"{name}_leaf_blocks")

            def leaf_start(lf: Any) -> Any:
                return starts_t[lf]
        pshape = kshape + ((n_outer,) if outer else ()) + ((n_leaves,) if n_leaves > 1 else ())
        nk = len(kshape)
        t8 = te.reduce_axis((0, max(blocks)), name=f"{name}_t8")
        reducer = _sum_reducer(_PW_LANES)

        def partial(*ix: Any) -> Any:
            k, rest = ix[:nk], ix[nk:]
            o = rest[0] if outer else 0
            lf = rest[-1] if n_leaves > 1 else 0
            base = leaf_start(lf) + t8 * _PW_LANES
            if uniform:
                return reducer([load(full(k, o, base + j)) for j in range(_PW_LANES)], axis=t8)
            # leaves of fewer blocks add the identity -0.0 in the extra steps, reading a
            # clamped (valid) position. NOTE: te.create_prim_func drops `where=` on tuple
            # reductions, hence the select.
            live = t8 < blocks_t[lf]
            zero = te.const(-0.0, "float64")
            last = n_trail - 1
            return reducer([tirx.Select(live, load(full(k, o, te.min(base + j, last))), zero)
                            for j in range(_PW_LANES)], axis=t8)

        parts = te.compute(pshape, partial, name=f"{name}_pw")
        leaf_pos = {leaf: q for q, leaf in enumerate(leaves)}

        def row_sum(k: Sequence[Any], o: Any) -> Any:
            def leaf_sum(start: int, m: int) -> Any:
                at = tuple(k) + ((o,) if outer else ()) + (
                    (leaf_pos[(start, m)],) if n_leaves > 1 else ())
                r = [parts[j][at] for j in range(_PW_LANES)]
                res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
                for t in range(m - m % _PW_LANES, m):
                    res = res + load(full(k, o, start + t))
                return res

            def walk(node: Any) -> Any:
                if isinstance(node, tuple):
                    return leaf_sum(*node)
                return walk(node[0]) + walk(node[1])

            return walk(tree)

    if n_outer == 1:  # element-wise; consumers that read it per element `materialize` it
        return te.compute(kshape, lambda *k: row_sum(k, 0), name=name)
    ro = te.reduce_axis((0, n_outer), name=f"{name}_o")
    seq = _sum_reducer(1)
    return te.compute(kshape, lambda *k: seq(row_sum(k, ro), axis=ro), name=name)


def _kept_index(i: Sequence[Any], dims: Sequence[int], keepdim: bool) -> tuple[Any, ...]:
    """The index into a reduction result over the kept axes, from an output index that keeps
    (keepdim) or drops the reduced dims."""
    if keepdim:
        return tuple(v for p, v in enumerate(i) if p not in dims)
    return tuple(i)


def _full_to_kept(i: Sequence[Any], dims: Sequence[int]) -> tuple[Any, ...]:
    """The kept part of a full input index."""
    return tuple(v for p, v in enumerate(i) if p not in dims)


def _nan_extreme_reducer(which: str, dtype: str) -> Any:
    """np.max / np.min as a TE reducer: NaN propagates; the identity is -inf / +inf (the
    dtype's lowest / highest value for int64)."""
    _, te, tirx = _tvm()

    def combine(a: Any, b: Any) -> Any:
        return _te_max(a, b) if which == "max" else _te_min(a, b)

    def identity(t: Any) -> Any:
        t = str(t)
        if t.startswith("float"):
            return tirx.const(-math.inf if which == "max" else math.inf, t)
        info = np.iinfo(np.dtype(t))
        return tirx.const(int(info.min if which == "max" else info.max), t)

    return te.comm_reducer(combine, identity, name=f"nan_{which}")


def _te_extreme(x: Any, dims: Sequence[int], which: str, name: str) -> Any:
    """np.max / np.min of `x` over `dims`, as a tensor over the kept axes."""
    _, te, _ = _tvm()
    shape = tuple(int(s) for s in x.shape)
    kept = [p for p in range(len(shape)) if p not in dims]
    # size-1 axes are read at 0: a reduction whose input has its output's size would risk
    # TVM's in-place buffer reuse (see `materialize`)
    rax = {p: te.reduce_axis((0, shape[p]), name=f"{name}_r{p}") for p in dims if shape[p] != 1}
    red = _nan_extreme_reducer(which, str(x.dtype))

    def value(*k: Any) -> Any:
        idx: list[Any] = [0] * len(shape)
        for p, v in zip(kept, k):
            idx[p] = v
        for p, r in rax.items():
            idx[p] = r
        if not rax:
            return x[tuple(idx)]
        return red(x[tuple(idx)], axis=[rax[p] for p in sorted(rax)])

    return te.compute(tuple(shape[p] for p in kept), value, name=name)


_DOT_LANES = 16
"""Interleaved accumulators of the float64 dot products of matmul/linear."""


def _te_dot_f64(shape: Sequence[int], term: Callable[[tuple[Any, ...], tuple[Any, ...]], Any],
                k_dims: Sequence[int], name: str) -> Any:
    """sum over the reduction index k (extents `k_dims`) of term(i, k) in float64, for every
    output index i, in a fixed order: 16 interleaved chains over the last reduction dim
    (k[-1] = 16 t + j), combined as a balanced tree, plus the k[-1] % 16 leftover terms;
    one sequential chain when the last dim has fewer than 32 terms.

    The terms are products of two float32 values, exact in float64, so FMA contraction
    cannot change the result. Independent chains keep the FPU busy: the generic schedules
    keep a reduction's order, so one chain per output would run at one add per FPU latency.
    """
    _, te, _ = _tvm()
    shape = tuple(int(s) for s in shape)
    *outer, last = (int(d) for d in k_dims)
    if last * math.prod(outer) == 0:
        return te.compute(shape, lambda *i: te.const(0.0, "float64"), name=name)

    def axes(tag: str, extents: Sequence[int]) -> list[Any]:
        return [te.reduce_axis((0, d), name=f"{name}_{tag}{q}") for q, d in enumerate(extents)]

    if last < 2 * _DOT_LANES:
        ks = axes("k", k_dims)
        return te.compute(shape, lambda *i: te.sum(term(i, tuple(ks)), axis=ks), name=name)
    lanes, rem = _DOT_LANES, last % _DOT_LANES
    ko = axes("o", outer)
    t = te.reduce_axis((0, last // lanes), name=f"{name}_t")
    red = _sum_reducer(lanes)
    parts = te.compute(shape, lambda *i: red(
        [term(i, (*ko, t * lanes + j)) for j in range(lanes)], axis=[*ko, t]),
        name=f"{name}_lanes")
    tail = None
    if rem and outer:
        kt = axes("r", (*outer, rem))
        tail = te.compute(shape, lambda *i: te.sum(
            term(i, (*kt[:-1], kt[-1] + (last - rem))), axis=kt), name=f"{name}_rest")

    def combine(*i: Any) -> Any:
        v = [p[i] for p in parts]
        while len(v) > 1:
            v = [v[q] + v[q + 1] for q in range(0, len(v), 2)]
        res = v[0]
        if tail is not None:
            return res + tail[i]
        for k in range(last - rem, last):
            res = res + term(i, (k,))
        return res

    return te.compute(shape, combine, name=name)


# --- unary elementwise ---------------------------------------------------------------------

class Unary(FloatOp):
    """Elementwise y = f(x) on a float32 tensor; shape and dtype unchanged."""

    num_inputs = 1
    dtypes: ClassVar[tuple[DType, ...]] = FLOAT
    positive: ClassVar[bool] = False
    """Draw samples from (0, inf) (log, sqrt, rsqrt)."""
    sample_scales: ClassVar[tuple[float, ...]] = (1.0, 1e-3, 7.0)
    edges: ClassVar[tuple[float, ...]] = (0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 1.0, -1.0, 2.5,
                                          -2.5, 3.0, -3.0, 6.0, -6.0, 20.0, -20.0, 60.0, -60.0)
    """Edge inputs (their outputs must be finite: the harness cannot compare infinities)."""

    def infer_type(self, attrs: Any, x: TensorType) -> TensorType:
        check_input(self.name, x, self.dtypes)
        return TensorType(x.shape, x.dtype)

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        raise NotImplementedError

    def lower_value(self, v: Any, attrs: Any) -> Any:
        """TE twin of `compute` for one float32 element `v` (a PrimExpr), float32 out."""
        raise NotImplementedError(f"{self.name}: no lower_value")

    def lower(self, sig: Sig, x: Any) -> Any:
        te_lib, _, _ = _tvm()
        return te_lib.elementwise(sig.out.shape, lambda i: self.lower_value(x[i], sig.attrs),
                                  _kname(self.name))

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        raise NotImplementedError

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return _as(self.compute(x, sig.attrs), sig.out)

    def sample_attrs(self) -> Iterator[tuple[Any, str]]:
        yield self.Attrs(), ""

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for attrs, tag in self.sample_attrs():
            for shape, scale in zip(((3, 17), (2, 3, 5), (70,)), self.sample_scales):
                x = S.ftensor(rng, shape, scale)[1]
                yield self.case(attrs, (np.abs(x) if self.positive else x,),
                                f"{tag}{list(shape)}-s{scale:g}")
            edges = np.array(self.edges, np.float32)
            if self.positive:
                edges = edges[edges > 0]
            yield self.case(attrs, (edges,), f"{tag}edges")
            yield self.case(attrs, (np.array(0.75, np.float32),), f"{tag}rank0")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        return _numpy(self.torch_compute(_torch(sample.arrays[0]), sample.attrs))


def _f64(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64)


@register_op
class Neg(Unary):
    """y = -x (sign flip, exact)."""

    name = "f.neg"
    torch_counterparts = ("torch.neg", "Tensor.__neg__")
    fidelity_note = _EXACT_NOTE

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        return -x

    def lower_value(self, v: Any, attrs: Any) -> Any:
        return -v

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        return -t


@register_op
class Abs(Unary):
    """y = |x| (exact)."""

    name = "f.abs"
    torch_counterparts = ("torch.abs",)
    fidelity_note = _EXACT_NOTE

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        return np.abs(x)

    def lower_value(self, v: Any, attrs: Any) -> Any:
        _, te, _ = _tvm()
        return te.abs(v)

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        return t.abs()


@register_op
class Relu(Unary):
    """y = max(x, 0) in float32; NaN propagates."""

    name = "f.relu"
    torch_counterparts = ("torch.relu", "F.relu", "nn.ReLU")
    fidelity_note = _EXACT_NOTE

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        return np.maximum(x, np.float32(0))

    def lower_value(self, v: Any, attrs: Any) -> Any:
        return _te_max(v, _te_scalar(0.0, f32))

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        return t.relu()


@register_op
class Sqrt(Unary):
    """y = sqrt(x), correctly rounded float32 (NaN for x < 0).

    PyTorch's CPU sqrt (torch 2.13, AVX512) is not correctly rounded: 17% of outputs are
    1 ulp away. rsqrt, by contrast, is 1.0f / correctly-rounded sqrt and exact.
    """

    name = "f.sqrt"
    torch_counterparts = ("torch.sqrt",)
    positive = True
    rtol = 2.5e-7
    max_lsb = rtol
    fidelity_note = _rtol_note(rtol, "max|out|", "1 ulp, 17% of elements")

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        return np.sqrt(x)

    def lower_value(self, v: Any, attrs: Any) -> Any:
        _, te, _ = _tvm()
        return te.sqrt(v)

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        return t.sqrt()


@register_op
class Rsqrt(Unary):
    """y = 1.0f / sqrt(x): two float32 roundings, as PyTorch's vectorized rsqrt."""

    name = "f.rsqrt"
    torch_counterparts = ("torch.rsqrt",)
    fidelity_note = _EXACT_NOTE
    positive = True

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        return np.float32(1) / np.sqrt(x)

    def lower_value(self, v: Any, attrs: Any) -> Any:
        _, te, _ = _tvm()
        return _te_scalar(1.0, f32) / te.sqrt(v)

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        return t.rsqrt()


@register_op
class Reciprocal(Unary):
    """y = 1.0f / x (IEEE float32 division)."""

    name = "f.reciprocal"
    torch_counterparts = ("torch.reciprocal",)
    fidelity_note = _EXACT_NOTE
    edges = tuple(v for v in Unary.edges if v != 0.0)

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        return np.float32(1) / x

    def lower_value(self, v: Any, attrs: Any) -> Any:
        return _te_scalar(1.0, f32) / v

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        return t.reciprocal()


@register_op
class Exp(Unary):
    """y = exp(x), float64 then rounded to float32 (PyTorch: SLEEF expf, 1 ulp)."""

    name = "f.exp"
    torch_counterparts = ("torch.exp",)
    rtol = 2.5e-7
    max_lsb = rtol
    compiled_tolerance = _TRANSCENDENTAL
    fidelity_note = _rtol_note(rtol, "max|out|", "9e-8 (0.75 eps)")

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        return np.exp(_f64(x))

    def lower_value(self, v: Any, attrs: Any) -> Any:
        _, te, _ = _tvm()
        return te.exp(v.astype("float64")).astype("float32")

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        return t.exp()


@register_op
class Log(Unary):
    """y = log(x), float64 then rounded to float32 (NaN for x < 0, -inf at 0)."""

    name = "f.log"
    torch_counterparts = ("torch.log",)
    positive = True
    rtol = 2.5e-7
    max_lsb = rtol
    compiled_tolerance = _TRANSCENDENTAL
    fidelity_note = _rtol_note(rtol, "max|out|", "8.3e-8")

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        return np.log(_f64(x))

    def lower_value(self, v: Any, attrs: Any) -> Any:
        _, te, _ = _tvm()
        return te.log(v.astype("float64")).astype("float32")

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        return t.log()


@register_op
class Tanh(Unary):
    """y = tanh(x), float64 then rounded to float32."""

    name = "f.tanh"
    torch_counterparts = ("torch.tanh", "nn.Tanh")
    rtol = 2.5e-7
    max_lsb = rtol
    compiled_tolerance = _TRANSCENDENTAL
    fidelity_note = _rtol_note(rtol, "max|out|", "6e-8")

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        return np.tanh(_f64(x))

    def lower_value(self, v: Any, attrs: Any) -> Any:
        return _te_tanh64(v.astype("float64")).astype("float32")

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        return t.tanh()


@register_op
class Sigmoid(Unary):
    """y = 1 / (1 + exp(-x)), float64 then rounded to float32."""

    name = "f.sigmoid"
    torch_counterparts = ("torch.sigmoid", "nn.Sigmoid")
    rtol = 2.5e-7
    max_lsb = rtol
    compiled_tolerance = _TRANSCENDENTAL
    fidelity_note = _rtol_note(rtol, "max|out|", "1.2e-7 (1 ulp at 1.0)")

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-_f64(x)))

    def lower_value(self, v: Any, attrs: Any) -> Any:
        _, te, _ = _tvm()
        one = te.const(1.0, "float64")
        return (one / (one + te.exp(-v.astype("float64")))).astype("float32")

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        return t.sigmoid()


_erf64 = np.vectorize(math.erf, otypes=[np.float64])


@register_op
class Erf(Unary):
    """y = erf(x), float64 (math.erf) then rounded to float32."""

    name = "f.erf"
    torch_counterparts = ("torch.erf", "torch.special.erf")
    rtol = 2.5e-7
    max_lsb = rtol
    fidelity_note = _rtol_note(rtol, "max|out|", "6e-8")

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        return _erf64(_f64(x))

    def lower_value(self, v: Any, attrs: Any) -> Any:
        _, te, _ = _tvm()
        return te.erf(v.astype("float64")).astype("float32")

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        return t.erf()


@dataclass(frozen=True)
class GeluAttrs:
    approximate: str = "none"
    """"none": x * Phi(x) with erf; "tanh": the tanh approximation (F.gelu approximate=)."""


@register_op
class Gelu(Unary):
    """approximate="none": y = x * 0.5 * (1 + erf(x / sqrt(2)));
    approximate="tanh": y = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))).
    Float64 then rounded to float32. NOTE: PyTorch's vectorized erf-gelu overflows to inf for
    x > ~1.7e38 and returns NaN at +inf; its scalar path and we return x and inf.
    """

    name = "f.gelu"
    Attrs = GeluAttrs
    torch_counterparts = ("F.gelu", "nn.GELU")
    rtol = 5e-7
    max_lsb = rtol
    compiled_tolerance = _TRANSCENDENTAL
    fidelity_note = _rtol_note(rtol, "max|out|", "1.7e-7")

    def infer_type(self, attrs: GeluAttrs, x: TensorType) -> TensorType:
        if attrs.approximate not in ("none", "tanh"):
            raise TypeInferenceError(
                f"f.gelu: approximate={attrs.approximate!r}; supported: 'none', 'tanh'")
        return super().infer_type(attrs, x)

    def compute(self, x: np.ndarray, attrs: GeluAttrs) -> np.ndarray:
        v = _f64(x)
        if attrs.approximate == "tanh":
            return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))
        return v * 0.5 * (1.0 + _erf64(v / math.sqrt(2.0)))

    def lower_value(self, v: Any, attrs: GeluAttrs) -> Any:
        te_lib, te, _ = _tvm()
        d = v.astype("float64")

        def c(k: float) -> Any:
            return te.const(k, "float64")

        if attrs.approximate == "tanh":  # 0.5 * v * (1 + tanh(k * (v + 0.044715 * v**3)))
            inner = d + te_lib.fence(c(0.044715) * te.power(d, c(3.0)))
            y = c(0.5) * d * (c(1.0) + _te_tanh64(c(math.sqrt(2.0 / math.pi)) * inner))
        else:  # v * 0.5 * (1 + erf(v / sqrt(2)))
            y = d * c(0.5) * (c(1.0) + te.erf(d / c(math.sqrt(2.0))))
        return y.astype("float32")

    def torch_compute(self, t: Any, attrs: GeluAttrs) -> Any:
        import torch.nn.functional as F

        return F.gelu(t, approximate=attrs.approximate)

    def sample_attrs(self) -> Iterator[tuple[Any, str]]:
        yield GeluAttrs("none"), "erf-"
        yield GeluAttrs("tanh"), "tanh-"


@register_op
class Silu(Unary):
    """y = x / (1 + exp(-x)) (x * sigmoid(x)), float64 then rounded to float32."""

    name = "f.silu"
    torch_counterparts = ("F.silu", "nn.SiLU")
    rtol = 2.5e-7
    max_lsb = rtol
    compiled_tolerance = _TRANSCENDENTAL
    fidelity_note = _rtol_note(rtol, "max|out|", "1.1e-7")

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        v = _f64(x)
        return v / (1.0 + np.exp(-v))

    def lower_value(self, v: Any, attrs: Any) -> Any:
        _, te, _ = _tvm()
        d = v.astype("float64")
        return (d / (te.const(1.0, "float64") + te.exp(-d))).astype("float32")

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        import torch.nn.functional as F

        return F.silu(t)


@register_op
class Hardswish(Unary):
    """y = (x * min(max(x + 3, 0), 6)) / 6, each step rounded to float32 (PyTorch's order)."""

    name = "f.hardswish"
    torch_counterparts = ("F.hardswish", "nn.Hardswish")
    fidelity_note = _EXACT_NOTE

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        three, six = np.float32(3), np.float32(6)
        return x * np.minimum(np.maximum(x + three, np.float32(0)), six) / six

    def lower_value(self, v: Any, attrs: Any) -> Any:
        te_lib, _, _ = _tvm()
        c = _te_min(_te_max(v + _te_scalar(3, f32), _te_scalar(0, f32)), _te_scalar(6, f32))
        return te_lib.fence(v * c) / _te_scalar(6, f32)

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        import torch.nn.functional as F

        return F.hardswish(t)


@register_op
class Hardsigmoid(Unary):
    """y = min(max(x + 3, 0), 6) / 6, each step rounded to float32."""

    name = "f.hardsigmoid"
    torch_counterparts = ("F.hardsigmoid", "nn.Hardsigmoid")
    fidelity_note = _EXACT_NOTE

    def compute(self, x: np.ndarray, attrs: Any) -> np.ndarray:
        return np.minimum(np.maximum(x + np.float32(3), np.float32(0)), np.float32(6)) / \
            np.float32(6)

    def lower_value(self, v: Any, attrs: Any) -> Any:
        c = _te_min(_te_max(v + _te_scalar(3, f32), _te_scalar(0, f32)), _te_scalar(6, f32))
        return c / _te_scalar(6, f32)

    def torch_compute(self, t: Any, attrs: Any) -> Any:
        import torch.nn.functional as F

        return F.hardsigmoid(t)


@dataclass(frozen=True)
class LeakyReluAttrs:
    negative_slope: float = 0.01
    """Multiplier for x <= 0 (rounded to float32, as PyTorch does)."""


@register_op
class LeakyRelu(Unary):
    """y = x if x > 0 else x * float32(negative_slope)."""

    name = "f.leaky_relu"
    Attrs = LeakyReluAttrs
    torch_counterparts = ("F.leaky_relu", "nn.LeakyReLU")
    fidelity_note = _EXACT_NOTE

    def compute(self, x: np.ndarray, attrs: LeakyReluAttrs) -> np.ndarray:
        return np.where(x > 0, x, x * np.float32(attrs.negative_slope))

    def lower_value(self, v: Any, attrs: LeakyReluAttrs) -> Any:
        te_lib, _, tirx = _tvm()
        neg = te_lib.fence(v * _te_scalar(attrs.negative_slope, f32))
        return tirx.Select(v > _te_scalar(0, f32), v, neg)

    def torch_compute(self, t: Any, attrs: LeakyReluAttrs) -> Any:
        import torch.nn.functional as F

        return F.leaky_relu(t, attrs.negative_slope)

    def sample_attrs(self) -> Iterator[tuple[Any, str]]:
        yield LeakyReluAttrs(), ""
        yield LeakyReluAttrs(0.2), "0.2-"


@dataclass(frozen=True)
class ClampAttrs:
    min: float | None = None
    """Lower bound (None: none); rounded to float32."""
    max: float | None = None
    """Upper bound (None: none); rounded to float32."""


@register_op
class Clamp(Unary):
    """y = min(max(x, float32(min)), float32(max)); NaN propagates; min > max gives max.

    Also hardtanh (min=-1, max=1) and relu6 (min=0, max=6).
    """

    name = "f.clamp"
    Attrs = ClampAttrs
    torch_counterparts = ("torch.clamp", "F.hardtanh", "nn.ReLU6", "F.relu6")
    fidelity_note = _EXACT_NOTE

    def infer_type(self, attrs: ClampAttrs, x: TensorType) -> TensorType:
        if attrs.min is None and attrs.max is None:
            raise TypeInferenceError("f.clamp needs at least one of min, max")
        for v in (attrs.min, attrs.max):
            if v is not None and math.isnan(v):
                raise TypeInferenceError("f.clamp bounds must not be NaN")
        return super().infer_type(attrs, x)

    def compute(self, x: np.ndarray, attrs: ClampAttrs) -> np.ndarray:
        if attrs.min is not None:
            x = np.maximum(x, np.float32(attrs.min))
        if attrs.max is not None:
            x = np.minimum(x, np.float32(attrs.max))
        return x

    def lower_value(self, v: Any, attrs: ClampAttrs) -> Any:
        if attrs.min is not None:
            v = _te_max(v, _te_scalar(attrs.min, f32))
        if attrs.max is not None:
            v = _te_min(v, _te_scalar(attrs.max, f32))
        return v

    def torch_compute(self, t: Any, attrs: ClampAttrs) -> Any:
        return t.clamp(attrs.min, attrs.max)

    def sample_attrs(self) -> Iterator[tuple[Any, str]]:
        yield ClampAttrs(0.0, 6.0), "relu6-"
        yield ClampAttrs(-1.0, 1.0), "hardtanh-"
        yield ClampAttrs(None, 0.3), "max-"
        yield ClampAttrs(2.0, -1.0), "min>max-"


# --- binary elementwise (tensor, tensor) ---------------------------------------------------

class Binary(FloatOp):
    """Elementwise y = f(a, b) with NumPy/PyTorch broadcasting; both inputs of one dtype."""

    num_inputs = 2
    dtypes: ClassVar[tuple[DType, ...]] = NUMERIC
    compare: ClassVar[bool] = False
    """Comparisons return bool (b1)."""
    nonzero_rhs: ClassVar[bool] = False

    def infer_type(self, attrs: Any, a: TensorType, b: TensorType) -> TensorType:
        check_input(self.name, a, self.dtypes, "lhs")
        check_input(self.name, b, self.dtypes, "rhs")
        if a.dtype is not b.dtype:
            raise TypeInferenceError(
                f"{self.name} needs both inputs of one dtype, got {a.dtype} and {b.dtype}"
                " (PyTorch's type promotion is explicit here: insert f.to)")
        shape = broadcast_shapes(self.name, a.shape, b.shape)
        return TensorType(shape, b1 if self.compare else a.dtype)

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def torch_compute(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def reference(self, sig: Sig, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return _as(self.compute(a, b), sig.out)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        attrs = NoAttrs()
        shapes = (((4, 9), (4, 9), 1.0), ((3, 1, 5), (4, 5), 10.0), ((), (2, 3), 1e-3),
                  ((6, 1), (1, 7), 1.0))
        for sa, sb, scale in shapes:
            a = S.ftensor(rng, sa, scale)[1]
            b = S.ftensor(rng, sb, scale)[1]
            if self.nonzero_rhs:
                b = np.where(np.abs(b) < scale * 1e-3, np.float32(scale), b)
            if a.shape == b.shape and a.size:
                b.reshape(-1)[: a.size // 3] = a.reshape(-1)[: a.size // 3]  # some ties
            yield self.case(attrs, (a, b), f"{list(sa)}x{list(sb)}-s{scale:g}")
        e = np.array([0.0, -0.0, 1e-30, -3.5, 2.0, 1e4, -1e-4, 7.0], np.float32)
        rhs = e[::-1].copy()
        if self.nonzero_rhs:  # x / 0 = inf: the harness cannot compare infinities
            rhs[rhs == 0] = np.float32(0.75)
        yield self.case(attrs, (e, rhs), "edges")
        if i64 in self.dtypes:
            a = rng.integers(-1000, 1000, (3, 8)).astype(np.int64)
            b = rng.integers(1, 1000, (8,)).astype(np.int64)
            a[0, :3] = b[:3]
            yield self.case(attrs, (a, b), "i64")

    def lower(self, sig: Sig, a: Any, b: Any) -> Any:
        te_lib, _, _ = _tvm()
        shape, kind = sig.out.shape, _op_kind(self.name)

        def value(i: tuple[Any, ...]) -> Any:
            return _te_binop(kind, te_lib.broadcast_load(a, i, shape),
                             te_lib.broadcast_load(b, i, shape))

        return te_lib.elementwise(shape, value, _kname(self.name))

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        return _numpy(self.torch_compute(*(_torch(a) for a in sample.arrays)))


@register_op
class Add(Binary):
    """y = a + b (float32 or int64; broadcasting)."""

    name = "f.add"
    torch_counterparts = ("torch.add", "operator.add", "Tensor.__add__")
    fidelity_note = _EXACT_NOTE

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def torch_compute(self, a: Any, b: Any) -> Any:
        return a + b


@register_op
class Sub(Binary):
    """y = a - b (float32 or int64; broadcasting)."""

    name = "f.sub"
    torch_counterparts = ("torch.sub", "operator.sub")
    fidelity_note = _EXACT_NOTE

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a - b

    def torch_compute(self, a: Any, b: Any) -> Any:
        return a - b


@register_op
class Mul(Binary):
    """y = a * b (float32 or int64; broadcasting)."""

    name = "f.mul"
    torch_counterparts = ("torch.mul", "operator.mul")
    fidelity_note = _EXACT_NOTE

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a * b

    def torch_compute(self, a: Any, b: Any) -> Any:
        return a * b


@register_op
class Div(Binary):
    """y = a / b, IEEE float32 true division (float32 only; x/0 = +-inf, 0/0 = NaN)."""

    name = "f.div"
    torch_counterparts = ("torch.div", "torch.true_divide", "operator.truediv")
    fidelity_note = _EXACT_NOTE
    dtypes = FLOAT
    nonzero_rhs = True

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a / b

    def torch_compute(self, a: Any, b: Any) -> Any:
        return a / b


@register_op
class Pow(Binary):
    """y = a ** b, float64 then rounded to float32 (PyTorch: SLEEF powf, 1 ulp); float32 only."""

    name = "f.pow"
    torch_counterparts = ("torch.pow", "operator.pow")
    dtypes = FLOAT
    rtol = 2.5e-7
    max_lsb = rtol
    compiled_tolerance = _TRANSCENDENTAL
    fidelity_note = _rtol_note(rtol, "max|out|", "4e-9")

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.power(_f64(a), _f64(b))

    def torch_compute(self, a: Any, b: Any) -> Any:
        return a**b

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        attrs = NoAttrs()
        for sa, sb, scale in (((4, 9), (4, 9), 3.0), ((3, 1, 5), (4, 5), 0.1), ((), (2, 3), 10.0)):
            a = np.abs(S.ftensor(rng, sa, scale)[1]) + np.float32(1e-3)
            b = S.ftensor(rng, sb, 2.0)[1]
            yield self.case(attrs, (a, b), f"{list(sa)}x{list(sb)}-s{scale:g}")
        a = np.array([0.0, 1.0, 2.0, -2.0, -2.0, 4.0, 0.5, 9.0], np.float32)
        b = np.array([0.0, 7.5, -1.0, 3.0, 2.0, 0.5, -0.5, 2.0], np.float32)
        yield self.case(attrs, (a, b), "edges")


@register_op
class Maximum(Binary):
    """y = max(a, b) elementwise; NaN propagates (torch.maximum, not torch.max's reduction)."""

    name = "f.maximum"
    torch_counterparts = ("torch.maximum", "torch.max(a, b)")
    fidelity_note = _EXACT_NOTE

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.maximum(a, b)

    def torch_compute(self, a: Any, b: Any) -> Any:
        import torch

        return torch.maximum(a, b)


@register_op
class Minimum(Binary):
    """y = min(a, b) elementwise; NaN propagates."""

    name = "f.minimum"
    torch_counterparts = ("torch.minimum", "torch.min(a, b)")
    fidelity_note = _EXACT_NOTE

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.minimum(a, b)

    def torch_compute(self, a: Any, b: Any) -> Any:
        import torch

        return torch.minimum(a, b)


class Compare(Binary):
    """y = (a <op> b) as bool; NaN compares unequal to everything."""

    compare = True
    fidelity_note = _EXACT_NOTE
    fn: ClassVar[Callable[[Any, Any], Any]]

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return type(self).fn(a, b)

    def torch_compute(self, a: Any, b: Any) -> Any:
        return type(self).fn(a, b)


@register_op
class Eq(Compare):
    """y = (a == b)."""

    name = "f.eq"
    torch_counterparts = ("torch.eq", "operator.eq")
    fn = operator.eq


@register_op
class Ne(Compare):
    """y = (a != b)."""

    name = "f.ne"
    torch_counterparts = ("torch.ne", "operator.ne")
    fn = operator.ne


@register_op
class Lt(Compare):
    """y = (a < b)."""

    name = "f.lt"
    torch_counterparts = ("torch.lt", "operator.lt")
    fn = operator.lt


@register_op
class Le(Compare):
    """y = (a <= b)."""

    name = "f.le"
    torch_counterparts = ("torch.le", "operator.le")
    fn = operator.le


@register_op
class Gt(Compare):
    """y = (a > b)."""

    name = "f.gt"
    torch_counterparts = ("torch.gt", "operator.gt")
    fn = operator.gt


@register_op
class Ge(Compare):
    """y = (a >= b)."""

    name = "f.ge"
    torch_counterparts = ("torch.ge", "operator.ge")
    fn = operator.ge


# --- binary with a Python-number operand (the scalar is an attribute) ----------------------

@dataclass(frozen=True)
class ScalarAttrs:
    scalar: float | int
    """The Python number. An int keeps an int64 tensor int64; a float needs a float32 tensor."""
    reverse: bool = False
    """False: y = x <op> scalar. True: y = scalar <op> x (rsub, rdiv, rpow, flipped compares)."""


class BinaryScalar(FloatOp):
    """y = x <op> s (or s <op> x with reverse), s a Python number rounded to x's dtype.

    PyTorch turns a Python number into a 0-d "wrapped number" that does not promote a
    float32 tensor; it is cast to float32 (int64 for int scalars on int64 tensors) and the
    op runs elementwise exactly as with a broadcast tensor.
    """

    num_inputs = 1
    Attrs = ScalarAttrs
    dtypes: ClassVar[tuple[DType, ...]] = NUMERIC
    compare: ClassVar[bool] = False
    fidelity_note = _EXACT_NOTE
    fn: ClassVar[Callable[[Any, Any], Any]]

    def infer_type(self, attrs: ScalarAttrs, x: TensorType) -> TensorType:
        check_input(self.name, x, self.dtypes)
        s = attrs.scalar
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise TypeInferenceError(f"{self.name}: scalar must be an int or float, got {s!r}")
        if x.dtype is i64 and not isinstance(s, int):
            raise TypeInferenceError(
                f"{self.name}: an int64 tensor takes an int scalar, got {s!r} (PyTorch would"
                " promote to float: cast with f.to first)")
        return TensorType(x.shape, b1 if self.compare else x.dtype)

    def compute(self, x: np.ndarray, s: np.generic, reverse: bool) -> np.ndarray:
        return type(self).fn(s, x) if reverse else type(self).fn(x, s)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            s = np.array(sig.attrs.scalar).astype(x.dtype)[()]
            return _as(self.compute(x, s, sig.attrs.reverse), sig.out)

    def lower_scalar(self, v: Any, s: np.generic, reverse: bool) -> Any:
        """TE twin of `compute` for one element `v` and the rounded scalar `s`."""
        c = _te_scalar(s, _dtype_of(np.asarray(s)))
        a, b = (c, v) if reverse else (v, c)
        return _te_binop(_op_kind(self.name), a, b)

    def lower(self, sig: Sig, x: Any) -> Any:
        te_lib, _, _ = _tvm()
        dtype = sig.in_types[0].dtype
        with np.errstate(all="ignore"):
            s: Any = np.array(sig.attrs.scalar).astype(dtype.np)[()]
        return te_lib.elementwise(
            sig.out.shape, lambda i: self.lower_scalar(x[i], s, sig.attrs.reverse),
            _kname(self.name))

    def sample_scalars(self) -> tuple[float, ...]:
        return (0.5, -3.0, 1e-3, 0.1, 7.25)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for k, s in enumerate(self.sample_scalars()):
            shape = ((3, 11), (5,), (2, 2, 3), (), (13,))[k % 5]
            x = S.ftensor(rng, shape, 4.0)[1]
            if self.name in ("f.div_scalar", "f.pow_scalar"):
                x = np.abs(x) + np.float32(0.25)
            for reverse in (False, True):
                yield self.case(ScalarAttrs(s, reverse), (x,), f"s{s:g}-rev{int(reverse)}")
        if self.name != "f.pow_scalar" and i64 in self.dtypes:
            x = rng.integers(-50, 50, (4, 6)).astype(np.int64)
            x[0, 0] = 3
            yield self.case(ScalarAttrs(3), (x,), "i64")
            yield self.case(ScalarAttrs(3, True), (x,), "i64-rev")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        t, a = _torch(sample.arrays[0]), sample.attrs
        return _numpy(type(self).fn(a.scalar, t) if a.reverse else type(self).fn(t, a.scalar))


@register_op
class AddScalar(BinaryScalar):
    """y = x + s."""

    name = "f.add_scalar"
    torch_counterparts = ("x + 2.0", "torch.add(x, 2.0)")
    fn = operator.add


@register_op
class SubScalar(BinaryScalar):
    """y = x - s; reverse: y = s - x (torch.rsub)."""

    name = "f.sub_scalar"
    torch_counterparts = ("x - 2.0", "1.0 - x", "torch.rsub")
    fn = operator.sub


@register_op
class MulScalar(BinaryScalar):
    """y = x * s."""

    name = "f.mul_scalar"
    torch_counterparts = ("x * 0.125",)
    fn = operator.mul


@register_op
class DivScalar(BinaryScalar):
    """y = x / float32(s) (IEEE division, not a reciprocal multiply);
    reverse: y = (1.0f / x) * float32(s), as PyTorch's Tensor.__rtruediv__ computes s / x
    (reciprocal, then multiply: two roundings). float32 tensors only.
    """

    name = "f.div_scalar"
    torch_counterparts = ("x / 8.0", "1.0 / x")
    dtypes = FLOAT
    fn = operator.truediv

    def compute(self, x: np.ndarray, s: np.generic, reverse: bool) -> np.ndarray:
        return (np.float32(1) / x) * s if reverse else x / s


    def lower_scalar(self, v: Any, s: np.generic, reverse: bool) -> Any:
        te_lib, _, _ = _tvm()
        c = _te_scalar(s, f32)
        return te_lib.fence((_te_scalar(1, f32) / v) * c) if reverse else _te_div(v, c)

@register_op
class PowScalar(BinaryScalar):
    """y = x ** s; reverse: y = s ** x (float32 tensors).

    Like PyTorch's pow_tensor_scalar kernel, exponents 2, 3, -1, -2, -0.5 are computed with
    float32 multiplies/divides/sqrt (bit-exact: x*x, x*x*x, 1/x, 1/(x*x), 1/sqrt(x)); other
    exponents, and s ** x, in float64 rounded to float32 (PyTorch: SLEEF powf, 1 ulp).
    """

    name = "f.pow_scalar"
    torch_counterparts = ("x ** 2", "torch.pow(x, 0.5)", "10000.0 ** x")
    dtypes = FLOAT
    rtol = 2.5e-7
    max_lsb = rtol
    compiled_tolerance = _TRANSCENDENTAL
    fidelity_note = _rtol_note(rtol, "max|out|", "1.2e-7; exponents 2, 3, -1, -2, -0.5 exact")
    fn = operator.pow

    def compute(self, x: np.ndarray, s: np.generic, reverse: bool) -> np.ndarray:
        one = np.float32(1)
        if reverse:
            return np.power(np.float64(s), _f64(x))
        special: dict[float, Callable[[np.ndarray], np.ndarray]] = {
            2.0: lambda v: v * v, 3.0: lambda v: v * v * v, -1.0: lambda v: one / v,
            -2.0: lambda v: one / (v * v), -0.5: lambda v: one / np.sqrt(v)}
        if float(s) in special:
            return special[float(s)](x)
        return np.power(_f64(x), np.float64(s))

    def lower_scalar(self, v: Any, s: np.generic, reverse: bool) -> Any:
        te_lib, te, _ = _tvm()
        one = _te_scalar(1, f32)
        s64 = te.const(float(s), "float64")
        if reverse:
            return te.power(s64, v.astype("float64")).astype("float32")
        special: dict[float, Callable[[Any], Any]] = {
            2.0: lambda w: te_lib.fence(w * w), 3.0: lambda w: te_lib.fence(w * w * w),
            -1.0: lambda w: one / w, -2.0: lambda w: one / (w * w),
            -0.5: lambda w: one / te.sqrt(w)}
        if float(s) in special:
            return special[float(s)](v)
        if float(s) == 0.5:  # equal to pow for finite x, and numpy's NaN at -inf
            return te.sqrt(v.astype("float64")).astype("float32")
        return te.power(v.astype("float64"), s64).astype("float32")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for k, s in enumerate((2.0, 3.0, -1.0, -0.5, 0.5, 1.7, -2.0)):
            x = np.abs(S.ftensor(rng, ((3, 11), (5,), (2, 2, 3), ())[k % 4], 4.0)[1]) + 0.25
            yield self.case(ScalarAttrs(s), (x.astype(np.float32),), f"x**{s:g}")
        for base in (10000.0, 2.0, 0.5):  # 10000 ** (2i / d): sinusoidal position encodings
            x = S.ftensor(rng, (4, 6), 2.0)[1]
            yield self.case(ScalarAttrs(base, True), (x,), f"{base:g}**x")


def _elementwise_extreme(a: Any, b: Any, which: str) -> Any:
    """max/min of a tensor and a number: numpy arrays, or torch's clamp_min/clamp_max."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b) if which == "max" else np.minimum(a, b)
    t, s = (a, b) if hasattr(a, "clamp_min") else (b, a)
    return t.clamp_min(s) if which == "max" else t.clamp_max(s)


@register_op
class MaximumScalar(BinaryScalar):
    """y = max(x, s) (torch.clamp_min); NaN propagates."""

    name = "f.maximum_scalar"
    torch_counterparts = ("torch.clamp_min", "torch.clamp(x, min=s)")

    fn = staticmethod(lambda a, b: _elementwise_extreme(a, b, "max"))


@register_op
class MinimumScalar(BinaryScalar):
    """y = min(x, s) (torch.clamp_max); NaN propagates."""

    name = "f.minimum_scalar"
    torch_counterparts = ("torch.clamp_max", "torch.clamp(x, max=s)")

    fn = staticmethod(lambda a, b: _elementwise_extreme(a, b, "min"))


class CompareScalar(BinaryScalar):
    compare = True


@register_op
class EqScalar(CompareScalar):
    """y = (x == s)."""

    name = "f.eq_scalar"
    torch_counterparts = ("x == 0",)
    fn = operator.eq


@register_op
class NeScalar(CompareScalar):
    """y = (x != s)."""

    name = "f.ne_scalar"
    torch_counterparts = ("x != 0",)
    fn = operator.ne


@register_op
class LtScalar(CompareScalar):
    """y = (x < s); reverse: (s < x)."""

    name = "f.lt_scalar"
    torch_counterparts = ("x < 0.5",)
    fn = operator.lt


@register_op
class LeScalar(CompareScalar):
    """y = (x <= s); reverse: (s <= x)."""

    name = "f.le_scalar"
    torch_counterparts = ("x <= 0.5",)
    fn = operator.le


@register_op
class GtScalar(CompareScalar):
    """y = (x > s); reverse: (s > x)."""

    name = "f.gt_scalar"
    torch_counterparts = ("x > 0.5",)
    fn = operator.gt


@register_op
class GeScalar(CompareScalar):
    """y = (x >= s); reverse: (s >= x)."""

    name = "f.ge_scalar"
    torch_counterparts = ("x >= 0.5",)
    fn = operator.ge


# --- selection: where, masked_fill ---------------------------------------------------------

@register_op
class Where(FloatOp):
    """y = cond ? a : b, all three broadcast together; a and b of one dtype (f32 or i64)."""

    name = "f.where"
    num_inputs = 3
    torch_counterparts = ("torch.where(cond, a, b)",)
    fidelity_note = _EXACT_NOTE

    def infer_type(self, attrs: Any, cond: TensorType, a: TensorType, b: TensorType,
                   ) -> TensorType:
        check_input(self.name, cond, (b1,), "condition")
        check_input(self.name, a, NUMERIC, "input (true branch)")
        check_input(self.name, b, NUMERIC, "other (false branch)")
        if a.dtype is not b.dtype:
            raise TypeInferenceError(
                f"f.where needs both branches of one dtype, got {a.dtype} and {b.dtype}")
        return TensorType(broadcast_shapes(self.name, cond.shape, a.shape, b.shape), a.dtype)

    def reference(self, sig: Sig, cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _as(np.where(cond, a, b), sig.out)

    def lower(self, sig: Sig, cond: Any, a: Any, b: Any) -> Any:
        te_lib, _, tirx = _tvm()
        shape = sig.out.shape

        def value(i: tuple[Any, ...]) -> Any:
            return tirx.Select(te_lib.broadcast_load(cond, i, shape),
                               te_lib.broadcast_load(a, i, shape),
                               te_lib.broadcast_load(b, i, shape))

        return te_lib.elementwise(shape, value, "f_where")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        shapes = (((4, 6), (4, 6), (4, 6)), ((1, 6), (3, 1), ()), ((2, 1, 5), (5,), (3, 5)))
        for sc, sa, sb in shapes:
            cond = rng.random(sc) < 0.5
            a, b = S.ftensor(rng, sa, 2.0)[1], S.ftensor(rng, sb, 2.0)[1]
            yield self.case(NoAttrs(), (cond, a, b), f"{list(sc)}-{list(sa)}-{list(sb)}")
        a = rng.integers(-9, 9, (2, 7)).astype(np.int64)
        yield self.case(NoAttrs(), (rng.random((2, 7)) < 0.5, a, -a), "i64")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        return _numpy(torch.where(*(_torch(a) for a in sample.arrays)))


@dataclass(frozen=True)
class MaskedFillAttrs:
    value: float | int
    """Fill value (a Python number; may be -inf or float32's lowest, as attention masks use)."""


@register_op
class MaskedFill(FloatOp):
    """y = mask ? dtype(value) : x, x and mask broadcast together (Tensor.masked_fill)."""

    name = "f.masked_fill"
    Attrs = MaskedFillAttrs
    num_inputs = 2
    torch_counterparts = ("Tensor.masked_fill", "torch.masked_fill")
    fidelity_note = _EXACT_NOTE

    def infer_type(self, attrs: MaskedFillAttrs, x: TensorType, mask: TensorType) -> TensorType:
        check_input(self.name, x, NUMERIC)
        check_input(self.name, mask, (b1,), "mask")
        v = attrs.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            raise TypeInferenceError(f"f.masked_fill: value must be a non-NaN number, got {v!r}")
        if x.dtype is i64 and not isinstance(v, int):
            raise TypeInferenceError(
                f"f.masked_fill: an int64 tensor takes an int fill value, got {v!r}")
        return TensorType(broadcast_shapes(self.name, x.shape, mask.shape), x.dtype)

    def reference(self, sig: Sig, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            v = np.array(sig.attrs.value).astype(x.dtype)
        return _as(np.where(mask, v, x), sig.out)

    def lower(self, sig: Sig, x: Any, mask: Any) -> Any:
        te_lib, _, tirx = _tvm()
        shape = sig.out.shape
        fill = _te_scalar(sig.attrs.value, sig.out.dtype)

        def value(i: tuple[Any, ...]) -> Any:
            return tirx.Select(te_lib.broadcast_load(mask, i, shape), fill,
                               te_lib.broadcast_load(x, i, shape))

        return te_lib.elementwise(shape, value, "f_masked_fill")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        fmin = float(np.finfo(np.float32).min)
        for value, sx, sm in ((-1e9, (2, 4, 5), (2, 1, 5)), (fmin, (3, 8), (3, 8)),
                              (0.0, (6,), (2, 6)), (-1e4, (2, 3, 4), (4,))):
            x = S.ftensor(rng, sx, 3.0)[1]
            yield self.case(MaskedFillAttrs(value), (x, rng.random(sm) < 0.4), f"v{value:g}")
        x = rng.integers(0, 9, (3, 5)).astype(np.int64)
        yield self.case(MaskedFillAttrs(-1), (x, x > 4), "i64")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        x, mask = (_torch(a) for a in sample.arrays)
        return _numpy(x.masked_fill(mask, sample.attrs.value))


# --- reductions ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ReduceAttrs:
    dims: tuple[int, ...] | None = None
    """Dimensions to reduce (negative counts from the end); None: all of them."""
    keepdim: bool = False
    """Keep reduced dimensions with size 1."""


class Reduce(FloatOp):
    """Reduction over `dims` (torch.<op>(x, dim, keepdim))."""

    Attrs = ReduceAttrs
    num_inputs = 1
    schedule_kind = "reduction"
    dtypes: ClassVar[tuple[DType, ...]] = FLOAT

    def out_dtype(self, x: TensorType) -> DType:
        return x.dtype

    def infer_type(self, attrs: ReduceAttrs, x: TensorType) -> TensorType:
        check_input(self.name, x, self.dtypes)
        dims = normalize_dims(self.name, attrs.dims, x.rank)
        if attrs.dims is not None and not attrs.dims:
            raise TypeInferenceError(f"{self.name}: dims is empty; use none to reduce all")
        if attrs.keepdim:
            shape = tuple(1 if d in dims else n for d, n in enumerate(x.shape))
        else:
            shape = tuple(n for d, n in enumerate(x.shape) if d not in dims)
        return TensorType(shape, self.out_dtype(x))

    def compute(self, x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
        raise NotImplementedError

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        dims = normalize_dims(self.name, sig.attrs.dims, x.ndim)
        with np.errstate(all="ignore"):
            # keepdim only re-inserts size-1 dims: a reshape to the inferred shape
            return _as(self.compute(x, dims), sig.out).reshape(sig.out.shape)

    def lower_reduced(self, x: Any, dims: tuple[int, ...], name: str) -> tuple[Any, str]:
        """The reduction over the kept axes (a te.Tensor) and the output dtype's storage."""
        raise NotImplementedError(f"{self.name}: no lower_reduced")

    def lower(self, sig: Sig, x: Any) -> Any:
        te_lib, _, _ = _tvm()
        dims = normalize_dims(self.name, sig.attrs.dims, len(sig.in_types[0].shape))
        name = _kname(self.name)
        r, dtype = self.lower_reduced(x, dims, name + "_acc")
        keep = sig.attrs.keepdim
        return te_lib.elementwise(
            sig.out.shape, lambda i: r[_kept_index(i, dims, keep)].astype(dtype), name)

    def error_scale(self, sig: Sig, arrays: tuple[np.ndarray, ...], out: np.ndarray) -> float:
        # Summation error grows with sum |x|, not with |sum x|.
        dims = normalize_dims(self.name, sig.attrs.dims, arrays[0].ndim)
        return _finite_max_abs(self.compute(np.abs(arrays[0]), dims))

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases = (((4, 33), (-1,), False), ((2, 3, 40), (1,), True), ((2, 5, 4, 4), (-1, -2), True),
                 ((3, 7), None, False), ((300,), (0,), False), ((2, 64, 3), (1,), False))
        for shape, dims, keep in cases:
            x = S.ftensor(rng, shape, 1.0)[1] + np.float32(0.5)
            yield self.case(ReduceAttrs(dims, keep), (x,), f"{list(shape)}-d{dims}-k{int(keep)}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        a, t = sample.attrs, _torch(sample.arrays[0])
        fn = getattr(torch, self.name.removeprefix("f."))
        return _numpy(fn(t) if a.dims is None else fn(t, a.dims, keepdim=a.keepdim))


@register_op
class Sum(Reduce):
    """y = sum of x over dims: float64 sum rounded to float32; int64 and bool sum to int64."""

    name = "f.sum"
    torch_counterparts = ("torch.sum", "Tensor.sum")
    dtypes = (f32, i64, b1)
    rtol = 2.5e-7
    max_lsb = rtol
    fidelity_note = _rtol_note(rtol, "max sum|x| (float32; int64 exact)", "8.3e-8")

    def out_dtype(self, x: TensorType) -> DType:
        return x.dtype if x.dtype is f32 else i64

    def compute(self, x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
        if x.dtype.kind == "f":
            return np.sum(_f64(x), axis=dims)
        return np.sum(x.astype(np.int64), axis=dims)

    def lower_reduced(self, x: Any, dims: tuple[int, ...], name: str) -> tuple[Any, str]:
        _, te, _ = _tvm()
        shape = tuple(int(s) for s in x.shape)
        if x.dtype == "float32":
            return _te_np_sum(lambda i: x[i].astype("float64"), shape, dims, name), "float32"
        # int64 / bool: exact; wraps modulo 2**64 like numpy
        kept = [p for p in range(len(shape)) if p not in dims]
        rax = {p: te.reduce_axis((0, shape[p]), name=f"{name}_r{p}") for p in dims
               if shape[p] != 1}  # size-1 axes are read at 0 (see `_te_extreme`)
        wrap_sum = te.comm_reducer(lambda u, v: _te_wrapping("add", u, v),
                                   lambda t: te.const(0, t), name="wrapping_sum")

        def value(*k: Any) -> Any:
            idx: list[Any] = [0] * len(shape)
            for p, v in zip(kept, k):
                idx[p] = v
            for p, ax in rax.items():
                idx[p] = ax
            v = x[tuple(idx)].astype("int64")
            return wrap_sum(v, axis=[rax[p] for p in sorted(rax)]) if rax else v

        return te.compute(tuple(shape[p] for p in kept), value, name=name), "int64"

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        yield from super().samples(rng)
        yield self.case(ReduceAttrs((1,)), (rng.integers(0, 2, (3, 9)).astype(np.int64),), "i64")
        yield self.case(ReduceAttrs((-1,)), (rng.random((2, 5)) < 0.5,), "bool")


@register_op
class Mean(Reduce):
    """y = sum(x over dims) / count, float64 then rounded to float32; float32 only."""

    name = "f.mean"
    torch_counterparts = ("torch.mean", "Tensor.mean")
    rtol = 2.5e-7
    max_lsb = rtol
    fidelity_note = _rtol_note(rtol, "max mean|x|", "1.0e-7")

    def compute(self, x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
        return np.mean(_f64(x), axis=dims)


    def lower_reduced(self, x: Any, dims: tuple[int, ...], name: str) -> tuple[Any, str]:
        """np.mean: the float64 sum in numpy's order, divided by the element count."""
        _, te, _ = _tvm()
        shape = tuple(int(s) for s in x.shape)
        s = _te_np_sum(lambda i: x[i].astype("float64"), shape, dims, name + "_sum")
        count = te.const(float(math.prod(shape[p] for p in dims)), "float64")
        return te.compute(s.shape, lambda *k: s[k] / count, name=name), "float32"

@register_op
class Amax(Reduce):
    """y = max of x over dims (exact; NaN propagates). torch.amax / max(dim)[0]."""

    name = "f.amax"
    torch_counterparts = ("torch.amax", "torch.max(x, dim).values")
    dtypes = NUMERIC
    fidelity_note = _EXACT_NOTE

    def infer_type(self, attrs: ReduceAttrs, x: TensorType) -> TensorType:
        if x.numel == 0:
            raise TypeInferenceError(f"f.amax of an empty tensor {x} is undefined")
        return super().infer_type(attrs, x)

    def compute(self, x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
        return np.max(x, axis=dims)


    def lower_reduced(self, x: Any, dims: tuple[int, ...], name: str) -> tuple[Any, str]:
        return _te_extreme(x, dims, "max", name), str(x.dtype)

@register_op
class Amin(Reduce):
    """y = min of x over dims (exact; NaN propagates). torch.amin / min(dim)[0]."""

    name = "f.amin"
    torch_counterparts = ("torch.amin", "torch.min(x, dim).values")
    dtypes = NUMERIC
    fidelity_note = _EXACT_NOTE

    def infer_type(self, attrs: ReduceAttrs, x: TensorType) -> TensorType:
        if x.numel == 0:
            raise TypeInferenceError(f"f.amin of an empty tensor {x} is undefined")
        return super().infer_type(attrs, x)

    def compute(self, x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
        return np.min(x, axis=dims)


    def lower_reduced(self, x: Any, dims: tuple[int, ...], name: str) -> tuple[Any, str]:
        return _te_extreme(x, dims, "min", name), str(x.dtype)

# --- softmax, log_softmax, layer_norm ------------------------------------------------------

@dataclass(frozen=True)
class DimAttrs:
    dim: int
    """The dimension (negative counts from the end)."""


class SoftmaxBase(FloatOp):
    Attrs = DimAttrs
    num_inputs = 1
    schedule_kind = "reduction"

    def infer_type(self, attrs: DimAttrs, x: TensorType) -> TensorType:
        check_input(self.name, x, FLOAT)
        normalize_dim(self.name, attrs.dim, x.rank)
        return TensorType(x.shape, x.dtype)

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for shape, dim, scale in (((2, 4, 9, 9), -1, 3.0), ((3, 20), 0, 1.0), ((5, 130), 1, 10.0),
                                  ((2, 3, 4), 1, 0.01)):
            x = S.ftensor(rng, shape, scale)[1]
            yield self.case(DimAttrs(dim), (x,), f"{list(shape)}-d{dim}-s{scale:g}")
        x = S.ftensor(rng, (3, 8), 2.0)[1]
        x[:, 5:] = -np.inf  # attention padding mask
        x[1, :] = np.float32(np.finfo(np.float32).min)
        yield self.case(DimAttrs(-1), (x,), "masked")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch.nn.functional as F

        fn = getattr(F, self.name.removeprefix("f."))
        return _numpy(fn(_torch(sample.arrays[0]), dim=sample.attrs.dim))


@register_op
class Softmax(SoftmaxBase):
    """z = float32(x - max) along dim (rounded in float32, as PyTorch does), then
    y = exp(z) / sum(exp(z)) in float64, rounded to float32. A row of all -inf gives NaN.
    """

    name = "f.softmax"
    torch_counterparts = ("F.softmax", "torch.softmax", "nn.Softmax")
    rtol = 1e-6
    max_lsb = rtol
    compiled_tolerance = _TRANSCENDENTAL
    fidelity_note = _rtol_note(rtol, "max|out|", "4.8e-7 on 30522-wide rows, 3e-7 on 128-wide")

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        d = normalize_dim(self.name, sig.attrs.dim, x.ndim)
        with np.errstate(all="ignore"):
            z = _f64(x - np.max(x, axis=d, keepdims=True))
            e = np.exp(z)
            return _as(e / np.sum(e, axis=d, keepdims=True), sig.out)


    def lower(self, sig: Sig, x: Any) -> Any:
        """max (exact), e = exp(float64(x - max)) once, its sum in numpy's order, e / sum."""
        te_lib, te, _ = _tvm()
        shape = tuple(int(s) for s in x.shape)
        d = (normalize_dim(self.name, sig.attrs.dim, len(shape)),)
        m = _te_extreme(x, d, "max", "f_softmax_max")
        e = te.compute(shape, lambda *i: te.exp(
            (x[i] - m[_full_to_kept(i, d)]).astype("float64")), name="f_softmax_exp")
        s = materialize(_te_np_sum(lambda i: e[i], shape, d, "f_softmax_sum"),
                        "f_softmax_rowsum")
        return te_lib.elementwise(
            shape, lambda i: (e[i] / s[_full_to_kept(i, d)]).astype("float32"), "f_softmax")

@register_op
class LogSoftmax(SoftmaxBase):
    """z = float32(x - max) along dim (rounded in float32, as PyTorch does), then
    y = z - log(sum(exp(z))) in float64, rounded to float32."""

    name = "f.log_softmax"
    torch_counterparts = ("F.log_softmax", "torch.log_softmax", "nn.LogSoftmax")
    rtol = 2.5e-7
    max_lsb = rtol
    compiled_tolerance = _TRANSCENDENTAL
    fidelity_note = _rtol_note(rtol, "max|out|", "1.1e-7")

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        d = normalize_dim(self.name, sig.attrs.dim, x.ndim)
        with np.errstate(all="ignore"):
            z = _f64(x - np.max(x, axis=d, keepdims=True))
            return _as(z - np.log(np.sum(np.exp(z), axis=d, keepdims=True)), sig.out)

    def lower(self, sig: Sig, x: Any) -> Any:
        """z = float64(x - max), log of the numpy-order sum of exp(z), z - that."""
        te_lib, te, _ = _tvm()
        shape = tuple(int(s) for s in x.shape)
        d = (normalize_dim(self.name, sig.attrs.dim, len(shape)),)
        m = _te_extreme(x, d, "max", "f_log_softmax_max")

        def z(i: Sequence[Any]) -> Any:
            return (x[tuple(i)] - m[_full_to_kept(i, d)]).astype("float64")

        e = te.compute(shape, lambda *i: te.exp(z(i)), name="f_log_softmax_exp")
        s = materialize(_te_np_sum(lambda i: e[i], shape, d, "f_log_softmax_sum"),
                        "f_log_softmax_rowsum")
        return te_lib.elementwise(
            shape, lambda i: (z(i) - te.log(s[_full_to_kept(i, d)])).astype("float32"),
            "f_log_softmax")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        # -inf inputs give -inf outputs, which the harness cannot compare: no masked sample.
        return (s for s in super().samples(rng) if s.label != "masked")


@dataclass(frozen=True)
class LayerNormAttrs:
    normalized_shape: tuple[int, ...]
    """The trailing dimensions normalized over (F.layer_norm's normalized_shape)."""
    eps: float = 1e-5
    """Added to the variance (float32 in PyTorch's kernel)."""


@register_op
class LayerNorm(FloatOp):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the trailing normalized_shape.

    var is the biased variance. Inputs: x, or x and weight, or x, weight and bias (weight and
    bias have shape normalized_shape). Float64 then rounded to float32; PyTorch computes
    float32 moments (Welford) and y = (x * rstd - mean * rstd) * weight + bias.
    """

    name = "f.layer_norm"
    Attrs = LayerNormAttrs
    num_inputs = (1, 2, 3)
    schedule_kind = "reduction"
    torch_counterparts = ("F.layer_norm", "nn.LayerNorm")
    rtol = 1e-6
    max_lsb = rtol
    fidelity_note = _rtol_note(rtol, "max|out|", "2e-7")

    def infer_type(self, attrs: LayerNormAttrs, x: TensorType, *params: TensorType,
                   ) -> TensorType:
        check_input(self.name, x, FLOAT)
        ns = tuple(attrs.normalized_shape)
        if not ns or any(n <= 0 for n in ns):
            raise TypeInferenceError(
                f"f.layer_norm: normalized_shape must be non-empty positive sizes, got {list(ns)}")
        if x.shape[len(x.shape) - len(ns):] != ns or len(ns) > x.rank:
            raise TypeInferenceError(
                f"f.layer_norm: normalized_shape {list(ns)} must be the trailing dimensions of"
                f" the input, got input shape {list(x.shape)}")
        if not attrs.eps >= 0:
            raise TypeInferenceError(f"f.layer_norm: eps must be >= 0, got {attrs.eps}")
        for what, p in zip(("weight", "bias"), params):
            check_input(self.name, p, FLOAT, what)
            if p.shape != ns:
                raise TypeInferenceError(
                    f"f.layer_norm: {what} has shape {list(p.shape)}, expected normalized_shape"
                    f" {list(ns)}")
        return TensorType(x.shape, x.dtype)

    def reference(self, sig: Sig, x: np.ndarray, *params: np.ndarray) -> np.ndarray:
        a: LayerNormAttrs = sig.attrs
        axes = tuple(range(x.ndim - len(a.normalized_shape), x.ndim))
        with np.errstate(all="ignore"):
            v = _f64(x)
            mean = np.mean(v, axis=axes, keepdims=True)
            var = np.mean((v - mean) ** 2, axis=axes, keepdims=True)
            y = (v - mean) / np.sqrt(var + float(np.float32(a.eps)))
            if params:
                y = y * _f64(params[0])
            if len(params) > 1:
                y = y + _f64(params[1])
            return _as(y, sig.out)

    def lower(self, sig: Sig, x: Any, *params: Any) -> Any:
        """The float64 reference step for step: mean and biased variance as numpy sums (its
        order), (v - mean) / sqrt(var + eps), then * weight (fenced) + bias."""
        te_lib, te, _ = _tvm()
        a: LayerNormAttrs = sig.attrs
        shape = tuple(int(s) for s in x.shape)
        axes = tuple(range(len(shape) - len(a.normalized_shape), len(shape)))
        lead = len(shape) - len(axes)
        count = te.const(float(math.prod(a.normalized_shape)), "float64")

        def v(i: Sequence[Any]) -> Any:
            return x[tuple(i)].astype("float64")

        s1 = _te_np_sum(v, shape, axes, "f_layer_norm_sum")
        mean = materialize(te.compute(s1.shape, lambda *k: s1[k] / count,
                                      name="f_layer_norm_mean_value"), "f_layer_norm_mean")

        def dev(i: Sequence[Any]) -> Any:
            return v(i) - mean[tuple(i[:lead])]

        s2 = _te_np_sum(lambda i: te_lib.fence(dev(i) * dev(i)), shape, axes,
                        "f_layer_norm_sumsq")
        eps = te.const(float(np.float32(a.eps)), "float64")
        denom = materialize(te.compute(s2.shape, lambda *k: te.sqrt(s2[k] / count + eps),
                                       name="f_layer_norm_std_value"), "f_layer_norm_std")

        def value(i: Sequence[Any]) -> Any:
            y = dev(i) / denom[tuple(i[:lead])]
            if params:
                y = te_lib.fence(y * params[0][tuple(i[lead:])].astype("float64"))
            if len(params) > 1:
                y = y + params[1][tuple(i[lead:])].astype("float64")
            return y.astype("float32")

        return te_lib.elementwise(shape, value, "f_layer_norm")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases = (((2, 7, 32), (32,), 3, 1.0), ((4, 768), (768,), 3, 0.5),
                 ((2, 3, 4, 5), (4, 5), 1, 4.0), ((3, 16), (16,), 2, 100.0),
                 ((5, 24), (24,), 3, 1e-3))
        for shape, ns, n_params, scale in cases:
            x = S.ftensor(rng, shape, scale)[1] + np.float32(scale * 0.3)
            params = [S.ftensor(rng, ns, 1.0)[1] + np.float32(1.0),
                      S.ftensor(rng, ns, 0.5)[1]][: n_params - 1]
            eps = 1e-12 if scale == 1e-3 else 1e-5
            yield self.case(LayerNormAttrs(ns, eps), (x, *params),
                            f"{list(shape)}-{n_params}in-s{scale:g}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch.nn.functional as F

        x, *params = (_torch(a) for a in sample.arrays)
        w = params[0] if params else None
        b = params[1] if len(params) > 1 else None
        a: LayerNormAttrs = sample.attrs
        return _numpy(F.layer_norm(x, list(a.normalized_shape), w, b, a.eps))


# --- contractions: matmul, linear, conv2d --------------------------------------------------

def _matmul_shape(op: str, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if not a or not b:
        raise TypeInferenceError(f"{op}: inputs must have rank >= 1, got shapes {list(a)} and"
                                 f" {list(b)}")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise TypeInferenceError(
            f"{op}: contraction sizes differ: {list(a)} @ {list(b)} (lhs last dim {a2[-1]},"
            f" rhs {'only' if len(b) == 1 else 'second-to-last'} dim {b2[-2]})")
    batch = broadcast_shapes(op, a2[:-2], b2[:-2])
    return batch + ((a2[-2],) if len(a) > 1 else ()) + ((b2[-1],) if len(b) > 1 else ())


@register_op
class Matmul(FloatOp):
    """y = a @ b with torch.matmul rules (1-D promotion, broadcast batch dims); covers bmm.

    Float64 accumulation rounded once to float32 (PyTorch: MKL/oneDNN float32 blocks).
    """

    name = "f.matmul"
    num_inputs = 2
    schedule_kind = "dense"
    torch_counterparts = ("torch.matmul", "torch.bmm", "operator.matmul", "torch.mm")
    rtol = 5e-7
    max_lsb = rtol
    compiled_tolerance = _BLAS_ORDER
    fidelity_note = _rtol_note(rtol, "max(|a| @ |b|)", "1.7e-7")

    def infer_type(self, attrs: Any, a: TensorType, b: TensorType) -> TensorType:
        check_input(self.name, a, FLOAT, "lhs")
        check_input(self.name, b, FLOAT, "rhs")
        return TensorType(_matmul_shape(self.name, a.shape, b.shape), f32)

    def reference(self, sig: Sig, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return _as(np.matmul(_f64(a), _f64(b)), sig.out)

    def lower(self, sig: Sig, a: Any, b: Any) -> Any:
        """torch.matmul's broadcasting; b is first copied to [..., N, K] so that both operands
        of the float64 dot products (`_te_dot_f64`) are read contiguously."""
        te_lib, te, _ = _tvm()
        sa, sb, out = sig.in_types[0].shape, sig.in_types[1].shape, sig.out.shape
        k_extent = sa[-1]
        nb = len(out) - (len(sa) > 1) - (len(sb) > 1)
        batch = out[:nb]
        if len(sb) > 1:
            bt_shape = sb[:-2] + (sb[-1], sb[-2])
            bt = te.compute(bt_shape, lambda *i: b[i[:-2] + (i[-1], i[-2])],
                            name="f_matmul_rhs_t")

        def term(i: tuple[Any, ...], ks: tuple[Any, ...]) -> Any:
            (k,) = ks
            bi, rest = i[:nb], i[nb:]
            if len(sa) == 1:
                av = a[k]
            else:
                av = a[te_lib.broadcast_index(bi, sa[:-2], batch) + (rest[0], k)]
            if len(sb) == 1:
                bv = b[k]
            else:
                bv = bt[te_lib.broadcast_index(bi, sb[:-2], batch) + (rest[-1], k)]
            return av.astype("float64") * bv.astype("float64")

        acc = _te_dot_f64(out, term, (k_extent,), "f_matmul_acc")
        return te_lib.elementwise(out, lambda i: acc[i].astype("float32"), "f_matmul")

    def error_scale(self, sig: Sig, arrays: tuple[np.ndarray, ...], out: np.ndarray) -> float:
        return _finite_max_abs(np.matmul(np.abs(_f64(arrays[0])), np.abs(_f64(arrays[1]))))

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for sa, sb in (((5, 12), (12, 7)), ((2, 4, 9, 16), (2, 4, 16, 9)), ((3, 8, 64), (64, 5)),
                       ((1, 6, 10), (4, 10, 3)), ((10,), (3, 10, 4)), ((2, 6, 11), (11,)),
                       ((300,), (300,))):
            a, b = S.ftensor(rng, sa, 1.0)[1], S.ftensor(rng, sb, 0.5)[1]
            yield self.case(NoAttrs(), (a, b), f"{list(sa)}@{list(sb)}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        return _numpy(torch.matmul(*(_torch(a) for a in sample.arrays)))


@register_op
class Linear(FloatOp):
    """y = x @ weight^T + bias (F.linear); x [..., K], weight [N, K], optional bias [N].

    Float64 accumulation rounded once to float32.
    """

    name = "f.linear"
    num_inputs = (2, 3)
    schedule_kind = "dense"
    torch_counterparts = ("F.linear", "nn.Linear")
    rtol = 5e-7
    max_lsb = rtol
    compiled_tolerance = _BLAS_ORDER
    fidelity_note = _rtol_note(rtol, "max(|x| @ |w|^T + |b|)", "8e-8")

    def infer_type(self, attrs: Any, x: TensorType, w: TensorType, *bias: TensorType,
                   ) -> TensorType:
        check_input(self.name, x, FLOAT)
        check_input(self.name, w, FLOAT, "weight")
        if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
            raise TypeInferenceError(
                f"f.linear: expected input [..., K] and weight [N, K], got input"
                f" {list(x.shape)} and weight {list(w.shape)}")
        if bias:
            check_input(self.name, bias[0], FLOAT, "bias")
            if bias[0].shape != (w.shape[0],):
                raise TypeInferenceError(
                    f"f.linear: bias has shape {list(bias[0].shape)}, expected [{w.shape[0]}]")
        return TensorType(x.shape[:-1] + (w.shape[0],), f32)

    def _compute(self, x: np.ndarray, w: np.ndarray, *bias: np.ndarray) -> np.ndarray:
        y = np.matmul(_f64(x), _f64(w).T)
        return y + _f64(bias[0]) if bias else y

    def reference(self, sig: Sig, x: np.ndarray, w: np.ndarray, *bias: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return _as(self._compute(x, w, *bias), sig.out)

    def lower(self, sig: Sig, x: Any, w: Any, *bias: Any) -> Any:
        """float64 dot products (`_te_dot_f64`), + float64(bias), rounded to float32."""
        te_lib, _, _ = _tvm()
        out = sig.out.shape
        k_extent = sig.in_types[1].shape[1]

        def term(i: tuple[Any, ...], ks: tuple[Any, ...]) -> Any:
            (k,) = ks
            return x[i[:-1] + (k,)].astype("float64") * w[i[-1], k].astype("float64")

        acc = _te_dot_f64(out, term, (k_extent,), "f_linear_acc")

        def value(i: tuple[Any, ...]) -> Any:
            y = acc[i]
            if bias:
                y = y + bias[0][i[-1]].astype("float64")
            return y.astype("float32")

        return te_lib.elementwise(out, value, "f_linear")

    def error_scale(self, sig: Sig, arrays: tuple[np.ndarray, ...], out: np.ndarray) -> float:
        return _finite_max_abs(self._compute(*(np.abs(a) for a in arrays)))

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for sx, n, bias in (((4, 16), 8, True), ((2, 5, 64), 24, True), ((3, 2, 4, 10), 6, False),
                            ((7,), 3, True), ((2, 768), 20, True)):
            x, w = S.ftensor(rng, sx, 1.0)[1], S.ftensor(rng, (n, sx[-1]), 0.1)[1]
            extra = (S.ftensor(rng, (n,), 0.5)[1],) if bias else ()
            yield self.case(NoAttrs(), (x, w, *extra), f"{list(sx)}->{n}-b{int(bias)}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch.nn.functional as F

        return _numpy(F.linear(*(_torch(a) for a in sample.arrays)))


@dataclass(frozen=True)
class Conv2dAttrs:
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    """Zero padding on each side of (H, W)."""
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1


def _pair(op: str, name: str, v: tuple[int, ...], lo: int) -> tuple[int, int]:
    if len(v) != 2 or any((not isinstance(k, int)) or k < lo for k in v):
        raise TypeInferenceError(f"{op}: {name} must be two ints >= {lo}, got {v!r}")
    return int(v[0]), int(v[1])


@register_op
class Conv2d(FloatOp):
    """y[n,o,h,w] = bias[o] + sum_{c,kh,kw} xpad[n, g*Cg + c, h*sh + kh*dh, w*sw + kw*dw]
    * weight[o, c, kh, kw], NCHW / OIHW, zero padding, groups (F.conv2d on float).

    Float64 accumulation rounded once to float32.
    """

    name = "f.conv2d"
    Attrs = Conv2dAttrs
    num_inputs = (2, 3)
    schedule_kind = "conv"
    torch_counterparts = ("F.conv2d", "nn.Conv2d")
    rtol = 5e-7
    max_lsb = rtol
    compiled_tolerance = _BLAS_ORDER
    fidelity_note = _rtol_note(rtol, "max conv(|x|, |w|) + |b|", "2e-7")

    def infer_type(self, attrs: Conv2dAttrs, x: TensorType, w: TensorType, *bias: TensorType,
                   ) -> TensorType:
        op = self.name
        check_input(op, x, FLOAT)
        check_input(op, w, FLOAT, "weight")
        sh, sw = _pair(op, "stride", attrs.stride, 1)
        ph, pw = _pair(op, "padding", attrs.padding, 0)
        dh, dw = _pair(op, "dilation", attrs.dilation, 1)
        g = attrs.groups
        if x.rank != 4 or w.rank != 4:
            raise TypeInferenceError(f"{op}: expected input NCHW and weight OIHW (rank 4), got"
                                     f" {list(x.shape)} and {list(w.shape)}")
        n, c, h, wd = x.shape
        o, cg, kh, kw = w.shape
        if g < 1 or c % g or o % g or cg * g != c:
            raise TypeInferenceError(
                f"{op}: groups={g} needs C={c} and O={o} divisible by groups and weight"
                f" in-channels {cg} == C/groups")
        if bias:
            check_input(op, bias[0], FLOAT, "bias")
            if bias[0].shape != (o,):
                raise TypeInferenceError(f"{op}: bias has shape {list(bias[0].shape)},"
                                         f" expected [{o}]")
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise TypeInferenceError(
                f"{op}: kernel {kh}x{kw} (dilation {dh}x{dw}) is larger than the padded input"
                f" {h + 2 * ph}x{wd + 2 * pw}")
        return TensorType((n, o, oh, ow), f32)

    def _compute(self, a: Conv2dAttrs, x: np.ndarray, w: np.ndarray, *bias: np.ndarray,
                 ) -> np.ndarray:
        (sh, sw), (ph, pw), (dh, dw), g = a.stride, a.padding, a.dilation, a.groups
        xp = np.pad(_f64(x), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        w64 = _f64(w)
        n, o, kh, kw = x.shape[0], w.shape[0], w.shape[2], w.shape[3]
        oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
        ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
        cg, og = w.shape[1], o // g
        y = np.zeros((n, o, oh, ow))
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                           j * dw:j * dw + sw * (ow - 1) + 1:sw]
                for k in range(g):
                    y[:, k * og:(k + 1) * og] += np.einsum(
                        "nchw,oc->nohw", patch[:, k * cg:(k + 1) * cg],
                        w64[k * og:(k + 1) * og, :, i, j])
        if bias:
            y += _f64(bias[0])[None, :, None, None]
        return y

    def reference(self, sig: Sig, x: np.ndarray, w: np.ndarray, *bias: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return _as(self._compute(sig.attrs, x, w, *bias), sig.out)

    def lower(self, sig: Sig, x: Any, w: Any, *bias: Any) -> Any:
        """x copied to channels-last with its zero padding and w to [O, KH, KW, C/groups]
        (small stages, so that the channel sums read both contiguously), the float64 sum over
        (kh, kw, c) of exact products (`_te_dot_f64`), + float64(bias), rounded to float32."""
        te_lib, te, tirx = _tvm()
        a: Conv2dAttrs = sig.attrs
        (sh, sw), (ph, pw), (dh, dw), g = a.stride, a.padding, a.dilation, a.groups
        n, c, h, wd = sig.in_types[0].shape
        o, cg, kh, kw = sig.in_types[1].shape
        og = o // g
        zero = te.const(0.0, "float32")

        def pad(nn: Any, yy: Any, xx: Any, cc: Any) -> Any:
            if not (ph or pw):
                return x[nn, cc, yy, xx]
            inside = tirx.all(yy >= ph, yy < h + ph, xx >= pw, xx < wd + pw)
            return te.if_then_else(inside, x[nn, cc, yy - ph, xx - pw], zero)

        xp = te.compute((n, h + 2 * ph, wd + 2 * pw, c), pad, name="f_conv2d_pad_nhwc")
        wt = te.compute((o, kh, kw, cg), lambda oo, ry, rx, rc: w[oo, rc, ry, rx],
                        name="f_conv2d_weight_ohwi")

        def term(i: tuple[Any, ...], ks: tuple[Any, ...]) -> Any:
            nn, oo, yy, xx = i
            ry, rx, rc = ks
            cin = (oo // og) * cg + rc if g > 1 else rc
            v = xp[nn, yy * sh + ry * dh, xx * sw + rx * dw, cin].astype("float64")
            return v * wt[oo, ry, rx, rc].astype("float64")

        acc = _te_dot_f64(sig.out.shape, term, (kh, kw, cg), "f_conv2d_acc")

        def value(i: tuple[Any, ...]) -> Any:
            y = acc[i]
            if bias:
                y = y + bias[0][i[1]].astype("float64")
            return y.astype("float32")

        return te_lib.elementwise(sig.out.shape, value, "f_conv2d")

    def error_scale(self, sig: Sig, arrays: tuple[np.ndarray, ...], out: np.ndarray) -> float:
        return _finite_max_abs(self._compute(sig.attrs, *(np.abs(a) for a in arrays)))

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases = (((1, 3, 9, 9), (8, 3, 3, 3), Conv2dAttrs((1, 1), (1, 1)), True),
                 ((2, 4, 8, 7), (4, 1, 3, 3), Conv2dAttrs((2, 2), (1, 1), (1, 1), 4), True),
                 ((1, 6, 10, 10), (4, 3, 3, 2), Conv2dAttrs((1, 2), (2, 0), (2, 1), 2), False),
                 ((1, 16, 5, 5), (10, 16, 1, 1), Conv2dAttrs(), True))
        for sx, sw_, attrs, bias in cases:
            x, w = S.ftensor(rng, sx, 1.0)[1], S.ftensor(rng, sw_, 0.2)[1]
            extra = (S.ftensor(rng, (sw_[0],), 0.5)[1],) if bias else ()
            yield self.case(attrs, (x, w, *extra), f"{list(sx)}*{list(sw_)}-g{attrs.groups}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch.nn.functional as F

        x, w, *bias = (_torch(a) for a in sample.arrays)
        a: Conv2dAttrs = sample.attrs
        return _numpy(F.conv2d(x, w, bias[0] if bias else None, a.stride, a.padding,
                               a.dilation, a.groups))


# --- embedding -----------------------------------------------------------------------------

@register_op
class Embedding(FloatOp):
    """y[..., :] = weight[indices[...], :] (F.embedding forward: a row gather, exact).

    Inputs: indices (int64 or int32, any shape), weight [num_embeddings, dim] float32.
    An index outside [0, num_embeddings) is an error, as in PyTorch.
    """

    name = "f.embedding"
    num_inputs = 2
    torch_counterparts = ("F.embedding", "nn.Embedding")
    fidelity_note = _EXACT_NOTE

    def infer_type(self, attrs: Any, indices: TensorType, weight: TensorType) -> TensorType:
        check_input(self.name, indices, INDEX, "indices")
        check_input(self.name, weight, FLOAT, "weight")
        if weight.rank != 2:
            raise TypeInferenceError(
                f"f.embedding: weight must be [num_embeddings, dim], got {list(weight.shape)}")
        return TensorType(indices.shape + (weight.shape[1],), f32)

    def reference(self, sig: Sig, indices: np.ndarray, weight: np.ndarray) -> np.ndarray:
        n = weight.shape[0]
        bad = (indices < 0) | (indices >= n)
        if bad.any():
            raise InterpretError(
                f"f.embedding: index {int(indices[bad].reshape(-1)[0])} is out of range for"
                f" {n} embeddings (valid: 0..{n - 1})")
        return _as(weight[indices], sig.out)

    def lower(self, sig: Sig, indices: Any, weight: Any) -> Any:
        """A row gather. Out-of-range indices (the interpreter raises) read the nearest valid
        row (clamped) instead of memory outside the table."""
        te_lib, te, _ = _tvm()
        n = sig.in_types[1].shape[0]
        r = len(sig.in_types[0].shape)

        def value(i: tuple[Any, ...]) -> Any:
            idx = indices[i[:r]]
            row = te.max(te.min(idx, te.const(n - 1, idx.dtype)), te.const(0, idx.dtype))
            return weight[row.astype("int32"), i[r]]

        return te_lib.elementwise(sig.out.shape, value, "f_embedding")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        # NOTE: each index shape has one table size: random IR graphs reuse index tensors
        # between samples of the same type, which must stay in range.
        for shape, n, dim, dtype in (((2, 9), 37, 16, np.int64), ((13,), 37, 5, np.int64),
                                     ((3, 2, 5), 37, 8, np.int32), ((1, 1), 37, 3, np.int64)):
            idx = rng.integers(0, n, shape).astype(dtype)
            idx.reshape(-1)[:2] = [0, n - 1][: idx.size]
            w = S.ftensor(rng, (n, dim), 1.0)[1]
            yield self.case(NoAttrs(), (idx, w), f"{list(shape)}-{n}x{dim}-{np.dtype(dtype)}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch.nn.functional as F

        idx, w = (_torch(a) for a in sample.arrays)
        return _numpy(F.embedding(idx, w))


# --- pooling and resizing ------------------------------------------------------------------

@dataclass(frozen=True)
class AdaptivePoolAttrs:
    output_size: tuple[int, int]
    """(OH, OW)."""


@register_op
class AdaptiveAvgPool2d(FloatOp):
    """y[n,c,i,j] = mean of x[n, c, h0:h1, w0:w1], h0 = floor(i*H/OH), h1 = ceil((i+1)*H/OH)
    (same for w), on NCHW or CHW float32 (F.adaptive_avg_pool2d).

    Float64 mean rounded to float32.
    """

    name = "f.adaptive_avg_pool2d"
    Attrs = AdaptivePoolAttrs
    num_inputs = 1
    schedule_kind = "reduction"
    torch_counterparts = ("F.adaptive_avg_pool2d", "nn.AdaptiveAvgPool2d")
    rtol = 2.5e-7
    max_lsb = rtol
    fidelity_note = _rtol_note(rtol, "max|x|", "4e-8")

    def infer_type(self, attrs: AdaptivePoolAttrs, x: TensorType) -> TensorType:
        check_input(self.name, x, FLOAT)
        oh, ow = _pair(self.name, "output_size", attrs.output_size, 1)
        if x.rank not in (3, 4) or x.shape[-1] == 0 or x.shape[-2] == 0:
            raise TypeInferenceError(
                f"f.adaptive_avg_pool2d: expected a CHW or NCHW input with non-empty H and W,"
                f" got {list(x.shape)}")
        return TensorType(x.shape[:-2] + (oh, ow), f32)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        h, w = x.shape[-2:]
        oh, ow = sig.attrs.output_size
        v = _f64(x)
        y = np.empty(x.shape[:-2] + (oh, ow))
        with np.errstate(all="ignore"):
            for i in range(oh):
                h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
                for j in range(ow):
                    w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
                    y[..., i, j] = v[..., h0:h1, w0:w1].mean(axis=(-2, -1))
        return _as(y, sig.out)

    def lower(self, sig: Sig, x: Any) -> Any:
        """Window sums in numpy's order for `v[..., h0:h1, w0:w1].mean(axis=(-2, -1))`.

        numpy (measured) sums a window that is one contiguous or strided run (full-width rows,
        one column, or one row) pairwise as a whole; any other window is copied through its
        8192-element iteration buffer in chunks of whole rows, each chunk summed pairwise and
        the chunks added in order. Windows come in at most a few sizes (hh, ww); each size
        class is one numpy-order sum over its rows x columns of windows (window starts from
        tables), and every output position selects its class.
        """
        te_lib, te, tirx = _tvm()
        shape = tuple(int(s) for s in sig.in_types[0].shape)
        lead, (h, w) = shape[:-2], shape[-2:]
        oh, ow = sig.attrs.output_size
        name = "f_adaptive_avg_pool2d"
        spans_h = [((i * h) // oh, -((-(i + 1) * h) // oh)) for i in range(oh)]
        spans_w = [((j * w) // ow, -((-(j + 1) * w) // ow)) for j in range(ow)]
        sizes_h = sorted({b - a for a, b in spans_h})
        sizes_w = sorted({b - a for a, b in spans_w})

        def members(spans: list[tuple[int, int]], size: int) -> list[int]:
            return [k for k, (a, b) in enumerate(spans) if b - a == size]

        def index(vals: Sequence[int], what: str) -> Callable[[Any], Any]:
            if len(set(vals)) == 1:
                return lambda p: te.const(int(vals[0]), "int32")
            t = te_lib.constant(np.array(vals, np.int32), f"{name}_{what}")
            return lambda p: t[p]

        def class_mean(ai: int, bi: int) -> Any:
            """The window means of the windows of size sizes_h[ai] x sizes_w[bi]."""
            hh, ww = sizes_h[ai], sizes_w[bi]
            rows, cols = members(spans_h, hh), members(spans_w, ww)
            y0 = index([spans_h[k][0] for k in rows], f"y0_{ai}_{bi}")
            x0 = index([spans_w[k][0] for k in cols], f"x0_{ai}_{bi}")
            kshape = lead + (len(rows), len(cols))
            nk = len(kshape)

            def at(i: Sequence[Any], f: Any) -> Any:
                p, q = i[nk - 2], i[nk - 1]
                return x[tuple(i[:nk - 2]) + (y0(p) + f // ww, x0(q) + f % ww)].astype(
                    "float64")

            n = hh * ww
            chunk = (8192 // ww) * ww
            tag = f"{name}_sum_{ai}_{bi}"
            if ww in (1, w) or hh == 1 or n <= chunk:
                total = _te_np_sum(lambda i: at(i[:nk], i[nk]), kshape + (n,), (nk,), tag)
            else:  # whole chunks, then the last partial chunk, added in order
                m, rest = n // chunk, n % chunk
                full = _te_np_sum(lambda i: at(i[:nk], i[nk] * chunk + i[nk + 1]),
                                  kshape + (m, chunk), (nk, nk + 1), tag, run_axes=1)
                total = full
                if rest:
                    last = _te_np_sum(lambda i: at(i[:nk], m * chunk + i[nk]),
                                      kshape + (rest,), (nk,), tag + "_tail")
                    total = te.compute(kshape, lambda *k: full[k] + last[k],
                                       name=tag + "_total")
            count = te.const(float(n), "float64")
            return te.compute(kshape, lambda *k: total[k] / count,
                              name=f"{name}_mean_{ai}_{bi}")

        means = {(ai, bi): class_mean(ai, bi)
                 for ai in range(len(sizes_h)) for bi in range(len(sizes_w))}
        cls_h = index([sizes_h.index(b - a) for a, b in spans_h], "cls_h")
        pos_h = index([members(spans_h, b - a).index(k) for k, (a, b) in enumerate(spans_h)],
                      "pos_h")
        cls_w = index([sizes_w.index(b - a) for a, b in spans_w], "cls_w")
        pos_w = index([members(spans_w, b - a).index(k) for k, (a, b) in enumerate(spans_w)],
                      "pos_w")

        def value(i: tuple[Any, ...]) -> Any:
            nc, y, xx = i[:-2], i[-2], i[-1]
            res = None
            for (ai, bi), mean in means.items():
                nrow, ncol = (int(d) for d in mean.shape[-2:])
                v = mean[nc + (te.min(pos_h(y), nrow - 1), te.min(pos_w(xx), ncol - 1))]
                if res is None:
                    res = v
                else:
                    res = tirx.Select(tirx.And(cls_h(y) == ai, cls_w(xx) == bi), v, res)
            assert res is not None  # there is at least one window class
            return res.astype("float32")

        return te_lib.elementwise(sig.out.shape, value, name)

    def error_scale(self, sig: Sig, arrays: tuple[np.ndarray, ...], out: np.ndarray) -> float:
        return _finite_max_abs(arrays[0])

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        for shape, out in (((2, 8, 7, 7), (1, 1)), ((1, 3, 10, 9), (3, 4)), ((4, 5, 6), (2, 3)),
                           ((1, 2, 3, 3), (5, 4))):
            yield self.case(AdaptivePoolAttrs(out), (S.ftensor(rng, shape, 2.0)[1],),
                            f"{list(shape)}->{list(out)}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch.nn.functional as F

        return _numpy(F.adaptive_avg_pool2d(_torch(sample.arrays[0]), sample.attrs.output_size))


@dataclass(frozen=True)
class InterpolateAttrs:
    size: tuple[int, int]
    """Output (OH, OW)."""
    mode: str = "nearest"
    """"nearest" or "bilinear"."""
    align_corners: bool = False
    """bilinear only: map corner pixel centers onto each other."""
    scales: tuple[float, float] | None = None
    """The user's scale_factor, when given: PyTorch then maps coordinates with 1/scale
    instead of H/OH (recompute_scale_factor not set)."""


def _src_scale(in_size: int, out_size: int, scale: float | None, align_corners: bool,
               ) -> np.float32:
    """PyTorch's area_pixel_compute_scale / compute_scales_value, in float32."""
    if align_corners:
        return np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else \
            np.float32(0)
    if scale is not None and scale > 0:
        return np.float32(1.0 / scale)
    return np.float32(in_size) / np.float32(out_size)


def _nearest_index(in_size: int, out_size: int, scale: float | None) -> np.ndarray:
    r = _src_scale(in_size, out_size, scale, False)
    dst = np.arange(out_size).astype(np.float32)
    return np.minimum(np.floor(dst * r).astype(np.int64), in_size - 1)


def _linear_index(in_size: int, out_size: int, scale: float | None, align_corners: bool,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, lambda0, lambda1) per output index, as PyTorch's compute_source_index_and_lambda."""
    dst = np.arange(out_size)
    if out_size == in_size:
        return dst, dst, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    r = _src_scale(in_size, out_size, scale, align_corners)
    d = dst.astype(np.float32)
    if align_corners:
        src = r * d
    else:
        # NOTE: PyTorch's x86 build contracts scale * (i + 0.5) - 0.5 into one FMA (a single
        # rounding); the float64 product of two float32 values is exact, so this emulates it.
        prod = np.float64(r) * (d + np.float32(0.5)).astype(np.float64)
        src = np.maximum((prod - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, np.float32(1) - lam1, lam1


@register_op
class Interpolate(FloatOp):
    """Resize the last two dims of NCHW float32 to `size` (F.interpolate / nn.Upsample).

    nearest: y[..., i, j] = x[..., min(floor(i * rh), H-1), min(floor(j * rw), W-1)] with
    rh = float32(1/scale_h) if scales else float32(H)/OH (index math in float32, exact).
    bilinear: PyTorch's source index src = fma(rh, i + 0.5, -0.5) clamped at 0 (or rh * i with
    align_corners, rh = (H-1)/(OH-1)), i0 = floor(src), float32 lambdas, then y = the sum of the
    4 neighbours times lambda_h * lambda_w in float64, rounded to float32.
    """

    name = "f.interpolate"
    Attrs = InterpolateAttrs
    num_inputs = 1
    torch_counterparts = ("F.interpolate", "nn.Upsample", "nn.UpsamplingNearest2d",
                          "nn.UpsamplingBilinear2d")
    rtol = 5e-7
    max_lsb = rtol
    fidelity_note = _rtol_note(rtol, "max|x| (nearest exact)", "1.2e-7")

    def infer_type(self, attrs: InterpolateAttrs, x: TensorType) -> TensorType:
        op = self.name
        check_input(op, x, FLOAT)
        oh, ow = _pair(op, "size", attrs.size, 1)
        if attrs.mode not in ("nearest", "bilinear"):
            raise TypeInferenceError(
                f"f.interpolate: mode {attrs.mode!r} is not supported; supported: 'nearest',"
                " 'bilinear'")
        if attrs.mode == "nearest" and attrs.align_corners:
            raise TypeInferenceError("f.interpolate: align_corners needs mode 'bilinear'")
        if x.rank != 4:
            raise TypeInferenceError(
                f"f.interpolate: expected an NCHW input (rank 4), got {list(x.shape)}")
        if attrs.scales is not None and (len(attrs.scales) != 2
                                         or not all(s > 0 for s in attrs.scales)):
            raise TypeInferenceError(
                f"f.interpolate: scales must be two positive numbers, got {attrs.scales!r}")
        if attrs.scales is not None:
            want = tuple(math.floor(n * s) for n, s in zip(x.shape[2:], attrs.scales))
            if want != (oh, ow):
                raise TypeInferenceError(
                    f"f.interpolate: size {[oh, ow]} does not match scales {list(attrs.scales)}"
                    f" for input {list(x.shape)} (PyTorch gives floor(H * scale) = {list(want)})")
        return TensorType(x.shape[:2] + (oh, ow), f32)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        a: InterpolateAttrs = sig.attrs
        h, w = x.shape[-2:]
        (oh, ow), (shs, sws) = a.size, a.scales or (None, None)
        if a.mode == "nearest":
            ih, iw = _nearest_index(h, oh, shs), _nearest_index(w, ow, sws)
            return _as(x[..., ih[:, None], iw[None, :]], sig.out)
        h0, h1, lh0, lh1 = _linear_index(h, oh, shs, a.align_corners)
        w0, w1, lw0, lw1 = _linear_index(w, ow, sws, a.align_corners)
        v = _f64(x)
        lh0, lh1 = _f64(lh0)[:, None], _f64(lh1)[:, None]
        lw0, lw1 = _f64(lw0)[None, :], _f64(lw1)[None, :]
        with np.errstate(all="ignore"):
            y = (lh0 * (lw0 * v[..., h0[:, None], w0[None, :]] + lw1 * v[..., h0[:, None], w1])
                 + lh1 * (lw0 * v[..., h1[:, None], w0[None, :]] + lw1 * v[..., h1[:, None], w1]))
        return _as(y, sig.out)

    def lower(self, sig: Sig, x: Any) -> Any:
        """The reference's index and lambda tables (computed by the same numpy code) become
        kernel constants; bilinear sums in float64 in the reference's order, its two rounded
        products fenced."""
        te_lib, _, _ = _tvm()
        a: InterpolateAttrs = sig.attrs
        h, w = sig.in_types[0].shape[-2:]
        (oh, ow), (shs, sws) = a.size, a.scales or (None, None)
        name = "f_interpolate"

        def table(v: np.ndarray, what: str, dtype: Any) -> Any:
            return te_lib.constant(np.asarray(v).astype(dtype), f"{name}_{what}")

        if a.mode == "nearest":
            ih = table(_nearest_index(h, oh, shs), "ih", np.int32)
            iw = table(_nearest_index(w, ow, sws), "iw", np.int32)
            return te_lib.elementwise(
                sig.out.shape, lambda i: x[i[:-2] + (ih[i[-2]], iw[i[-1]])], name)
        dts = (np.int32, np.int32, np.float64, np.float64)  # i0, i1, lambda0, lambda1
        h0, h1, lh0, lh1 = (table(v, f"h{k}", dt) for k, (v, dt) in enumerate(zip(
            _linear_index(h, oh, shs, a.align_corners), dts)))
        w0, w1, lw0, lw1 = (table(v, f"w{k}", dt) for k, (v, dt) in enumerate(zip(
            _linear_index(w, ow, sws, a.align_corners), dts)))

        def value(i: tuple[Any, ...]) -> Any:
            nc, y, xx = i[:-2], i[-2], i[-1]

            def v(r: Any, c: Any) -> Any:
                return x[nc + (r, c)].astype("float64")

            top = lw0[xx] * v(h0[y], w0[xx]) + lw1[xx] * v(h0[y], w1[xx])
            bottom = lw0[xx] * v(h1[y], w0[xx]) + lw1[xx] * v(h1[y], w1[xx])
            return (te_lib.fence(lh0[y] * top) + te_lib.fence(lh1[y] * bottom)).astype(
                "float32")

        return te_lib.elementwise(sig.out.shape, value, name)

    def error_scale(self, sig: Sig, arrays: tuple[np.ndarray, ...], out: np.ndarray) -> float:
        return _finite_max_abs(arrays[0])

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases = ((InterpolateAttrs((8, 10), "nearest", False, (2.0, 2.0)), (1, 2, 4, 5)),
                 (InterpolateAttrs((7, 5), "nearest"), (2, 3, 5, 3)),
                 (InterpolateAttrs((4, 6), "nearest", False, (0.5, 0.75)), (1, 2, 9, 8)),
                 (InterpolateAttrs((10, 9), "nearest", False, (1.7, 3.3)), (1, 1, 6, 3)),
                 (InterpolateAttrs((8, 10), "bilinear", False, (2.0, 2.0)), (1, 2, 4, 5)),
                 (InterpolateAttrs((7, 5), "bilinear", True), (2, 3, 5, 3)),
                 (InterpolateAttrs((3, 11), "bilinear", False), (1, 2, 6, 4)),
                 (InterpolateAttrs((5, 5), "bilinear", False, (1.3, 0.7)), (1, 1, 4, 8)))
        for attrs, shape in cases:
            tag = f"{attrs.mode}-{list(shape)}->{list(attrs.size)}-ac{int(attrs.align_corners)}"
            yield self.case(attrs, (S.ftensor(rng, shape, 2.0)[1],),
                            tag + (f"-sf{list(attrs.scales)}" if attrs.scales else ""))

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch.nn.functional as F

        a: InterpolateAttrs = sample.attrs
        x = _torch(sample.arrays[0])
        ac = a.align_corners if a.mode == "bilinear" else None
        if a.scales is not None:
            y = F.interpolate(x, scale_factor=a.scales, mode=a.mode, align_corners=ac)
            assert tuple(y.shape[-2:]) == a.size, "sample size does not match its scale_factor"
        else:
            y = F.interpolate(x, size=a.size, mode=a.mode, align_corners=ac)
        return _numpy(y)


# --- cat, to -------------------------------------------------------------------------------

@register_op
class Cat(FloatOp):
    """y = concatenation of the inputs along dim (torch.cat on unquantized tensors, exact)."""

    name = "f.cat"
    Attrs = DimAttrs
    num_inputs = None
    torch_counterparts = ("torch.cat", "torch.concat")
    fidelity_note = _EXACT_NOTE

    def infer_type(self, attrs: DimAttrs, *xs: TensorType) -> TensorType:
        if not xs:
            raise TypeInferenceError("f.cat needs at least one input")
        for k, x in enumerate(xs):
            check_input(self.name, x, CASTABLE, f"input {k}")
        first = xs[0]
        d = normalize_dim(self.name, attrs.dim, first.rank)
        if first.rank == 0:
            raise TypeInferenceError("f.cat: zero-dimensional tensors cannot be concatenated")
        for k, x in enumerate(xs[1:], 1):
            if x.dtype is not first.dtype:
                raise TypeInferenceError(
                    f"f.cat: input {k} has dtype {x.dtype}, input 0 has {first.dtype} (all inputs"
                    " must share a dtype; cast with f.to)")
            if x.rank != first.rank or any(a != b for i, (a, b) in
                                           enumerate(zip(x.shape, first.shape)) if i != d):
                raise TypeInferenceError(
                    f"f.cat: input {k} has shape {list(x.shape)}, input 0 has {list(first.shape)};"
                    f" all dims but {d} must match")
        size = sum(x.shape[d] for x in xs)
        return TensorType(first.shape[:d] + (size,) + first.shape[d + 1:], first.dtype)

    def reference(self, sig: Sig, *xs: np.ndarray) -> np.ndarray:
        d = normalize_dim(self.name, sig.attrs.dim, xs[0].ndim)
        return _as(np.concatenate(xs, axis=d), sig.out)

    def lower(self, sig: Sig, *xs: Any) -> Any:
        """A select chain on the position along `dim`; every read is clamped into its input
        (a select evaluates both sides)."""
        te_lib, te, tirx = _tvm()
        d = normalize_dim(self.name, sig.attrs.dim, len(sig.out.shape))
        sizes = [t.shape[d] for t in sig.in_types]
        starts = [sum(sizes[:k]) for k in range(len(sizes))]

        def value(i: tuple[Any, ...]) -> Any:
            p = i[d]
            res = None
            for k in reversed(range(len(xs))):
                if sizes[k] == 0:
                    continue
                q = te.max(te.min(p - starts[k], sizes[k] - 1), 0)
                load = xs[k][i[:d] + (q,) + i[d + 1:]]
                res = load if res is None else tirx.Select(p < starts[k] + sizes[k], load, res)
            assert res is not None  # the output is not empty, so some input is not
            return res

        return te_lib.elementwise(sig.out.shape, value, "f_cat")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        yield self.case(DimAttrs(1), (S.ftensor(rng, (2, 3, 4), 1.0)[1],
                                      S.ftensor(rng, (2, 5, 4), 1.0)[1]), "f32-d1")
        yield self.case(DimAttrs(-1), tuple(S.ftensor(rng, (3, n), 1.0)[1] for n in (1, 4, 2)),
                        "f32-3in")
        yield self.case(DimAttrs(0), (S.ftensor(rng, (6,), 1.0)[1],), "f32-1in")
        yield self.case(DimAttrs(0), (rng.integers(0, 9, (2, 3)).astype(np.int64),
                                      rng.integers(0, 9, (1, 3)).astype(np.int64)), "i64")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        return _numpy(torch.cat([_torch(a) for a in sample.arrays], dim=sample.attrs.dim))


@dataclass(frozen=True)
class ToAttrs:
    dtype: DType
    """Target dtype: f32, f16, f64, i64, i32, i8, u8 or b1 (unquantized)."""


@register_op
class To(FloatOp):
    """y = dtype(x) (Tensor.to(dtype), .float(), .long(), .bool(), ...).

    float -> int truncates toward zero; float -> bool is x != 0; to float16/float32 rounds to
    nearest even. An out-of-range float -> int conversion is undefined in PyTorch (a C++
    cast); the reference gives numpy's result (the samples stay in range).
    """

    name = "f.to"
    Attrs = ToAttrs
    num_inputs = 1
    torch_counterparts = ("Tensor.to(dtype)", "Tensor.float", "Tensor.long", "Tensor.bool",
                          "Tensor.type_as")
    fidelity_note = _EXACT_NOTE

    def infer_type(self, attrs: ToAttrs, x: TensorType) -> TensorType:
        check_input(self.name, x, CASTABLE)
        if not isinstance(attrs.dtype, DType) or attrs.dtype not in CASTABLE:
            raise TypeInferenceError(
                f"f.to: target dtype {attrs.dtype} is not supported; supported: {_names(CASTABLE)}"
                " (quantize with the quantize op)")
        return TensorType(x.shape, attrs.dtype)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        return _as(x, sig.out)

    def lower(self, sig: Sig, x: Any) -> Any:
        te_lib, _, _ = _tvm()
        src, dst = sig.in_types[0].dtype, sig.out.dtype
        return te_lib.elementwise(sig.out.shape, lambda i: _te_cast(x[i], src, dst), "f_to")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        x = S.ftensor(rng, (4, 7), 30.0)[1]
        x.reshape(-1)[:6] = [0.0, -0.0, 2.5, -2.5, 0.9999, -7.5]
        yield self.case(ToAttrs(i64), (x,), "f32->i64")
        yield self.case(ToAttrs(b1), (x,), "f32->b1")
        yield self.case(ToAttrs(f16), (x * np.float32(1.001),), "f32->f16")
        yield self.case(ToAttrs(i32), (x,), "f32->i32")
        yield self.case(ToAttrs(f32), (rng.integers(-2**40, 2**40, (9,)).astype(np.int64),),
                        "i64->f32")
        yield self.case(ToAttrs(f32), (rng.random((3, 4)) < 0.5,), "b1->f32")
        yield self.case(ToAttrs(i64), (rng.random((2, 3)) < 0.5,), "b1->i64")
        yield self.case(ToAttrs(f32), (S.ftensor(rng, (5,), 1.0)[1].astype(np.float16),),
                        "f16->f32")
        yield self.case(ToAttrs(f32), (rng.standard_normal((2, 5)),), "f64->f32")
        yield self.case(ToAttrs(f32), (rng.integers(0, 256, (6,)).astype(np.uint8),), "u8->f32")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        return _numpy(_torch(sample.arrays[0]).to(getattr(torch, sample.attrs.dtype.storage)))
