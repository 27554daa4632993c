"""TE helpers for `OpDef.lower`: quantize, dequantize, requantize, saturate, broadcasting.

Every helper rounds exactly as its twin in `reference/quant_math.py`, step for step and in the
same float width, so compiled code equals the reference interpreter bit for bit:

    quant_math                      te_lib
    fma_f32                         fma                 (one rounding, on every target)
    q_fbgemm                        q_fbgemm_value      fma(x, 1f/s, zp); NaN -> qmax
    q_val                           q_val_value         f32(zp) + f32(x * inv); NaN -> qmin
    q_vec                           q_vec_value         zp + rint(f32(x * inv)); NaN -> qmin
    quantize_per_tensor/_channel    quantize_fn, quantize   (the same dispatch on dtype/axis)
    dequantize_per_tensor           dequantize_value    f32(q - zp) * f32(s), int32 wraps
    dequantize (per-axis)           dequantize_fn       f32((f64(q) - zp) * f64(s))
    dequantize_fma                  dequantize_fma_value
    quantize(dequantize(...))       requantize
    saturate                        saturate

Rules the helpers follow (each checked in tests/lowering/test_te_lib.py):
- `te.nearbyint` (and `te.round`) lower to `llvm.nearbyint`: round half to even, as `np.rint`.
- Clamp in float *before* a float -> int cast (out-of-range casts are undefined). Bounds that
  float32 cannot hold exactly (the int32 range) are applied in float64.
- Signed integer `+`/`-` in TIR is emitted with LLVM's `nsw` flag (overflow is undefined), so
  wrapping int32 arithmetic (PyTorch's qint32 dequantize) is done in int64 and truncated.
- NOTE: TVM's LowerIntrin pass rewrites every float `a * b + c` into `llvm.fmuladd`, and its
  LLVM backend fuses even a plain fmul + fadd into an FMA on FMA-capable CPUs
  (AllowFPOpFusion=Fast), so the rounding depends on the target. Where the reference rounds
  the product and the sum separately, the product goes through `fence()`
  (`llvm.arithmetic.fence`, a no-op that nothing fuses across); where it fuses, `fma()` emits
  `llvm.fma` (a libm call on CPUs without FMA). Float values a helper returns are fenced, so a
  consumer's `+` cannot fuse into them either.

Constant tensors a kernel reads besides its inputs (per-axis scales and zero points) come from
`constant()`, which registers them with the current `LoweringContext`; `to_relax` binds them to
`relax.const` arguments of the kernel's `call_tir`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from qcompiler.errors import LoweringError
from qcompiler.ir.types import DType, QParams, u8
from qcompiler.lowering.tvm_compat import PrimExpr, Tensor, expr_dtype, int_shape, te, tirx
from qcompiler.reference import quant_math as qm
from qcompiler.reference import requant as rq

Index = tuple[Any, ...]
"""A tuple of TE index expressions (the loop variables of a `te.compute`)."""

# --- lowering context: constant tensors ----------------------------------------------------------


class LoweringContext:
    """Collects the constant tensors one kernel reads, and knows which inputs are constants."""

    def __init__(self, input_data: dict[Tensor, np.ndarray] | None = None) -> None:
        self.constants: list[tuple[Tensor, np.ndarray]] = []
        """(placeholder, data) pairs, in creation order; the kernel takes them after its inputs."""
        self._input_data = dict(input_data or {})

    def constant(self, data: np.ndarray, name: str) -> Tensor:
        arr = np.asarray(data, order="C")  # NOTE: ascontiguousarray makes 0-d arrays 1-d
        ph = te.placeholder(arr.shape, str(arr.dtype), name=name)
        self.constants.append((ph, arr))
        return ph

    def input_data(self, t: Tensor) -> np.ndarray | None:
        return self._input_data.get(t)


_STATE = threading.local()


@contextmanager
def lowering_context(
    input_data: dict[Tensor, np.ndarray] | None = None,
) -> Iterator[LoweringContext]:
    """Make a fresh `LoweringContext` current while one kernel is lowered."""
    stack: list[LoweringContext] = getattr(_STATE, "stack", [])
    _STATE.stack = stack
    ctx = LoweringContext(input_data)
    stack.append(ctx)
    try:
        yield ctx
    finally:
        stack.pop()


def current_context() -> LoweringContext:
    stack = getattr(_STATE, "stack", None)
    if not stack:
        raise LoweringError(
            "te_lib.constant() needs a lowering context: lower ops through "
            "qcompiler.lowering.to_relax, or wrap the call in te_lib.lowering_context()"
        )
    return stack[-1]


def constant(data: np.ndarray, name: str) -> Tensor:
    """A constant tensor (e.g. per-channel scales) the kernel reads; bound to a `relax.const`."""
    return current_context().constant(data, name)


def constant_value(t: Tensor) -> np.ndarray | None:
    """The data of a kernel input that is a graph constant (a weight), or None.

    For lowerings that specialise on constant data; prefer a pass that folds it into a new
    constant (passes/), so the interpreter sees the same graph.
    """
    return current_context().input_data(t)


# --- scalars, dtypes, casts ----------------------------------------------------------------------


def f32_const(v: float) -> PrimExpr:
    """A float32 immediate holding `np.float32(v)` (rounded to float32 once, in numpy)."""
    return te.const(float(np.float32(v)), "float32")


def f64_const(v: float) -> PrimExpr:
    return te.const(float(v), "float64")


def int_const(v: int, dtype: str = "int32") -> PrimExpr:
    return te.const(int(v), dtype)


def storage(dtype: DType) -> str:
    """The TVM dtype string of a qcompiler storage dtype (`u8` -> `uint8`)."""
    return dtype.storage


def _int_range_exact_in_f32(dtype: DType) -> bool:
    return dtype.bits <= 24


def saturate(x: PrimExpr, dtype: DType) -> PrimExpr:
    """quant_math.saturate: clamp to `dtype`'s integer range, then cast to its storage.

    `x` is an integer expression, or a float expression that is already integer-valued (rounded)
    and not NaN. Float values are clamped in float (float64 when float32 cannot hold the
    bounds, i.e. for i32), so the final cast never sees an out-of-range value.
    """
    lo, hi = dtype.qmin, dtype.qmax
    xd = expr_dtype(x)
    if xd.startswith("float"):
        if xd == "float32" and not _int_range_exact_in_f32(dtype):
            x = x.astype("float64")
            xd = "float64"
        y = te.max(te.min(x, te.const(float(hi), xd)), te.const(float(lo), xd))
        return y.astype(dtype.storage)
    # integer input: clamp in int32 when it holds x and the bounds, else in int64
    fits_i32 = xd in ("int8", "uint8", "int16", "uint16", "int32") and (
        dtype.bits < 32 or (dtype.bits == 32 and dtype.signed)
    )
    wide = "int32" if fits_i32 else "int64"
    if wide != xd:
        x = x.astype(wide)
    y = te.max(te.min(x, te.const(hi, wide)), te.const(lo, wide))
    return y.astype(dtype.storage)


def round_half_even(x: PrimExpr) -> PrimExpr:
    """np.rint / std::nearbyint: round half to even (float in, same float type out)."""
    return te.nearbyint(x)


def fence(x: PrimExpr) -> PrimExpr:
    """`x` unchanged, but no FMA contraction and no reassociation across it.

    Use it on a float product that the reference rounds before adding (see the module note).
    """
    return tirx.call_llvm_pure_intrin(expr_dtype(x), "llvm.arithmetic.fence", x)


def fma(a: PrimExpr, b: PrimExpr, c: PrimExpr) -> PrimExpr:
    """quant_math.fma_f32: a * b + c with a single rounding, on every target (`llvm.fma`)."""
    return tirx.call_llvm_pure_intrin(expr_dtype(a), "llvm.fma", a, b, c)


def mul_add(a: PrimExpr, b: PrimExpr, c: PrimExpr) -> PrimExpr:
    """a * b + c with the product rounded first (numpy's `a * b + c`), on every target."""
    return fence(a * b) + c


def _nan_to(x: PrimExpr, value: float) -> PrimExpr:
    return tirx.Select(te.isnan(x), te.const(float(value), expr_dtype(x)), x)


# --- quantize ------------------------------------------------------------------------------------

_F32_EXACT = 1 << 24
"""Integers up to this magnitude are exact in float32."""
_F32_ZP_BOUND = 1 << 16
"""|zp| up to which `rint(t) + zp` may run in float32 for an output of <= 16 bits (q_vec)."""


def q_fbgemm_value(x: PrimExpr, inv_scale: float, zero_point: int, dtype: DType) -> PrimExpr:
    """quant_math.q_fbgemm: clamp(rint(fma(x, inv_scale, zp)), qmin, qmax); NaN -> qmax.

    `inv_scale` is the float32 `1.0f / scale_f32` (`qm.f32_inverse`). torch.quantize_per_tensor
    to quint8/qint8 computes this.
    """
    zp = int(zero_point)
    if abs(zp) > _F32_EXACT:
        raise LoweringError(f"fbgemm quantize: zero point {zp} is not exact in float32")
    t = fma(x, f32_const(inv_scale), te.const(float(zp), "float32"))
    r = round_half_even(_nan_to(t, dtype.qmax))
    return saturate(r, dtype)


def q_val_value(x: PrimExpr, inv_scale: PrimExpr, zp_f32: PrimExpr, dtype: DType) -> PrimExpr:
    """quant_math.q_val: clamp(rint(f32(zp) + f32(x * inv)), qmin, qmax); NaN -> qmin.

    `inv_scale` and `zp_f32` are float32 expressions (`f32_const(...)` or loads; the zero
    point already rounded to float32, as PyTorch's `static_cast<float>(zero_point)`).
    qint32 quantize_per_tensor and every quantize_per_channel compute this.
    """
    t = fence(x * inv_scale) + zp_f32
    r = round_half_even(_nan_to(t, dtype.qmin))
    return saturate(r, dtype)


def q_vec_value(
    x: PrimExpr,
    inv_scale: PrimExpr,
    zero_point: int | PrimExpr,
    dtype: DType,
    zp_bound: int | None = None,
) -> PrimExpr:
    """quant_math.q_vec: clamp(zp + rint(f32(x * inv)), qmin, qmax) with an exact integer add;
    NaN -> qmin. The vector bodies of PyTorch's quantized element-wise kernels compute this.

    `zero_point` is an int, or a float expression holding an integer with |zp| <= `zp_bound`.
    The add runs in float32 when that is exact wherever the result is in range (outputs of
    <= 16 bits, |zp| <= 2**16: if |r| >= 2**24 the sum saturates either way), else in float64.
    """
    r = round_half_even(x * inv_scale)
    bound = abs(int(zero_point)) if isinstance(zero_point, int) else zp_bound
    narrow = dtype.bits <= 16 and bound is not None and bound <= _F32_ZP_BOUND
    ftype = "float32" if narrow else "float64"
    if ftype != expr_dtype(r):
        r = r.astype(ftype)
    if isinstance(zero_point, int):
        zp: PrimExpr = te.const(float(zero_point), ftype)
    else:
        zp = zero_point if expr_dtype(zero_point) == ftype else zero_point.astype(ftype)
    # NaN -> qmin - 2**40 before the add, as the reference: it saturates to qmin for any zp
    return saturate(_nan_to(r, float(dtype.qmin) - 2.0**40) + zp, dtype)


def _axis_of(qp: QParams, rank: int, what: str) -> int:
    assert qp.axis is not None
    if qp.axis >= rank:
        raise LoweringError(f"{what}: qparams axis {qp.axis} out of range for rank {rank}")
    return qp.axis


def q_decomposed_value(x: PrimExpr, scale: float, zero_point: int, dtype: DType) -> PrimExpr:
    """quant_math.quantize_decomposed: clamp(rint(f32(x * f32(1.0 / scale))) + f32(zp)) in
    float32, NaN -> 0."""
    t = fence(x * f32_const(float(np.float32(1.0 / float(scale)))))
    v = fence(round_half_even(t) + f32_const(float(zero_point)))
    return saturate(_nan_to(v, 0.0), dtype)


def quantize_fn(
    qp: QParams,
    dtype: DType,
    rank: int,
    name: str = "q",
    rounding: str = "fbgemm",
) -> Callable[[PrimExpr, Index], PrimExpr]:
    """(x_f32, index) -> quantized value: quant_math.quantize for per-tensor or per-axis `qp`.

    Per tensor: q_fbgemm for u8/i8, q_val for i32 (torch.quantize_per_tensor). Per axis: q_val
    with per-channel float32 inverse scales and zero points, which become constant tensors
    (created once, here). `rounding="decomposed"`: PT2E's formula (per tensor, u8/i8).
    """
    if qp.scheme == "float_qparams":
        raise LoweringError(f"{name}: float_qparams quantization is not supported here")
    if rounding == "decomposed":
        if qp.axis is not None or dtype.bits == 32:
            raise LoweringError(f"{name}: decomposed rounding is per-tensor u8/i8 only")
        return lambda x, idx: q_decomposed_value(x, qp.scale_value, qp.zp_value, dtype)
    if qp.axis is None:
        inv = qm.f32_inverse(qp.scale_value)
        zp = qp.zp_value
        if dtype.bits == 32:
            inv_c, zp_c = f32_const(inv), f32_const(zp)
            return lambda x, idx: q_val_value(x, inv_c, zp_c, dtype)
        return lambda x, idx: q_fbgemm_value(x, inv, zp, dtype)
    axis = _axis_of(qp, rank, name)
    inv_arr = np.float32(1.0) / np.asarray(qp.scale, dtype=np.float32)
    inv_t = constant(inv_arr.astype(np.float32), f"{name}_inv_scale")
    zp_t = constant(qp.zero_points_array().astype(np.float32), f"{name}_zero_point")
    return lambda x, idx: q_val_value(x, inv_t[idx[axis]], zp_t[idx[axis]], dtype)


def quantize(x: Tensor, qp: QParams, dtype: DType, name: str = "quantize",
             rounding: str = "fbgemm") -> Tensor:
    """quant_math.quantize: float32 tensor -> `dtype` storage with qparams `qp`."""
    if x.dtype != "float32":
        raise LoweringError(f"{name}: quantize takes a float32 tensor, got {x.dtype}")
    fn = quantize_fn(qp, dtype, len(x.shape), name, rounding)
    return te.compute(x.shape, lambda *i: fn(x[i], i), name=name)


# --- dequantize ----------------------------------------------------------------------------------


def _minus_zp(q: PrimExpr, zero_point: int) -> PrimExpr:
    """q - zp in the storage's integer semantics: int32 storage wraps, narrower is exact."""
    qd = expr_dtype(q)
    zp = int(zero_point)
    if qd in ("int32", "uint32") or abs(zp) >= (1 << 30):
        diff = q.astype("int64") - te.const(zp, "int64")
        return diff.astype("int32") if qd in ("int32", "uint32") else diff
    return q.astype("int32") - te.const(zp, "int32")


def dequantize_value(q: PrimExpr, scale: float, zero_point: int) -> PrimExpr:
    """quant_math.dequantize_per_tensor: float32(q - zp) * float32(scale) (fenced).

    For int32 storage the subtraction wraps around like PyTorch's int32 arithmetic (done in
    int64 and truncated, since TIR's signed arithmetic may not overflow).
    """
    return fence(_minus_zp(q, zero_point).astype("float32") * f32_const(scale))


def dequantize_fma_value(q: PrimExpr, scale: float, zero_point: int) -> PrimExpr:
    """quant_math.dequantize_fma: fma(f32(q), f32(s), f32(-(f32(zp) * f32(s)))) (fenced)."""
    s = np.float32(scale)
    c = np.float32(-(np.float32(zero_point) * s))
    return fence(fma(q.astype("float32"), f32_const(s), f32_const(c)))


def dequantize_fn(
    qp: QParams,
    rank: int,
    name: str = "dq",
) -> Callable[[PrimExpr, Index], PrimExpr]:
    """(q, index) -> float32 value, for per-tensor or per-axis `qp` (quant_math.dequantize).

    Per-axis: (float64(q) - float64(zp[c])) * float64(scale[c]), rounded to float32, as
    PyTorch's per-channel kernel does; the scales and zero points become constant tensors.
    """
    if qp.scheme == "float_qparams":
        raise LoweringError(f"{name}: float_qparams dequantization is not supported here")
    if qp.axis is None:
        scale, zp = qp.scale_value, qp.zp_value
        return lambda q, idx: dequantize_value(q, scale, zp)
    axis = _axis_of(qp, rank, name)
    s_t = constant(np.asarray(qp.scale, dtype=np.float64), f"{name}_scale")
    z_t = constant(np.asarray(qp.zero_point, dtype=np.float64), f"{name}_zero_point")

    def fn(q: PrimExpr, idx: Index) -> PrimExpr:
        c = idx[axis]
        return fence(((q.astype("float64") - z_t[c]) * s_t[c]).astype("float32"))

    return fn


def dequantize(q: Tensor, qp: QParams, name: str = "dequantize") -> Tensor:
    """quant_math.dequantize: storage tensor with qparams `qp` -> float32 tensor."""
    fn = dequantize_fn(qp, len(q.shape), name)
    return te.compute(q.shape, lambda *i: fn(q[i], i), name=name)


def requantize(
    q: Tensor, in_qp: QParams, out_qp: QParams, dtype: DType, name: str = "requantize",
    rounding: str = "fbgemm",
) -> Tensor:
    """quantize(dequantize(q, in_qp), out_qp): both float32 steps in one element-wise pass."""
    rank = len(q.shape)
    dq = dequantize_fn(in_qp, rank, f"{name}_in")
    qf = quantize_fn(out_qp, dtype, rank, f"{name}_out", rounding)
    return te.compute(q.shape, lambda *i: qf(dq(q[i], i), i), name=name)


# --- shapes and broadcasting ---------------------------------------------------------------------


def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """NumPy's broadcast result shape; LoweringError when the shapes do not broadcast."""
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        raise LoweringError(f"shapes {[list(s) for s in shapes]} do not broadcast") from None


def broadcast_index(idx: Index, in_shape: Sequence[int], out_shape: Sequence[int]) -> Index:
    """The index into a tensor of `in_shape` that NumPy broadcasting reads for output `idx`.

    Shapes align on the right; dimensions of size 1 (and missing leading ones) read index 0.
    """
    if len(idx) != len(out_shape) or len(in_shape) > len(out_shape):
        raise LoweringError(
            f"cannot broadcast {list(in_shape)} to {list(out_shape)} (index of rank {len(idx)})"
        )
    lead = len(out_shape) - len(in_shape)
    out: list[Any] = []
    for k, d in enumerate(in_shape):
        o = out_shape[lead + k]
        if d == o:
            out.append(idx[lead + k])
        elif d == 1:
            out.append(te.const(0, expr_dtype(idx[lead + k])))
        else:
            raise LoweringError(f"cannot broadcast {list(in_shape)} to {list(out_shape)}")
    return tuple(out)


def broadcast_load(t: Tensor, idx: Index, out_shape: Sequence[int]) -> PrimExpr:
    """`t` read at output index `idx` with NumPy broadcasting (`t[broadcast_index(...)]`)."""
    return t[broadcast_index(idx, int_shape(t), out_shape)]


def elementwise(shape: Sequence[int], fn: Callable[[Index], PrimExpr], name: str) -> Tensor:
    """te.compute over `shape` with `fn(index_tuple)`; works for rank 0 too."""
    return te.compute(tuple(int(d) for d in shape), lambda *i: fn(tuple(i)), name=name)


def cast(x: PrimExpr, dtype: DType) -> PrimExpr:
    """A plain cast to `dtype`'s storage (no saturation; see `saturate`)."""
    return x.astype(dtype.storage)


def is_float(dtype: DType) -> bool:
    return dtype.is_float


__all__ = [
    "Index",
    "LoweringContext",
    "broadcast_index",
    "broadcast_load",
    "broadcast_shape",
    "cast",
    "constant",
    "constant_value",
    "current_context",
    "dequantize",
    "dequantize_fma_value",
    "dequantize_fn",
    "dequantize_value",
    "elementwise",
    "f32_const",
    "f64_const",
    "fence",
    "fma",
    "int_const",
    "is_float",
    "lowering_context",
    "mul_add",
    "q_fbgemm_value",
    "q_val_value",
    "q_vec_value",
    "quantize",
    "quantize_fn",
    "requantize",
    "round_half_even",
    "saturate",
    "storage",
]


# --- integer conv / dense accumulators, fbgemm and oneDNN requantize epilogues -----------------
# Twins of ops/conv.py `conv_accumulate`, ops/linear.py `linear_accumulate`,
# ops/conv_transpose.py `conv_transpose_accumulate`, reference/requant.py and
# reference/onednn_eltwise.py, step for step.
#
# Accumulators: the exact sum of (x - zx) * (w - zw[o]), wrapped modulo 2**32 like the int32
# accumulators of fbgemm and oneDNN. It runs in int32 when no partial sum can leave int32 (every
# practical layer), else in int64 followed by a truncation (`int_acc_dtype`): TIR's int32 `+` is
# `nsw` in LLVM, so an overflowing int32 sum would be undefined rather than wrapping.
# Activations are padded with their zero point in a stage of their own ((zx - zx) * w = 0), and
# the weight with its zero point subtracted is an int16 stage in the layout the reduction reads.
#
# Epilogues: per-channel values become float32 constant tensors, equal values immediates; every
# product the reference rounds is fenced, and fbgemm's per-tensor bias is one `llvm.fma`.

_INT32_MAX = 2**31 - 1


def int_acc_dtype(terms: int, max_abs_product: int) -> str:
    """'int32' when no partial sum of `terms` products of magnitude <= `max_abs_product` can
    leave int32, else 'int64'.

    NOTE: TIR's signed int32 `+` is emitted with LLVM's `nsw` flag, so an int32 accumulator
    that overflows is undefined behaviour, not a wrap-around. Accumulators that may overflow
    sum in int64 (exact) and are wrapped to int32 afterwards (`wrap_int32`), which equals the
    reference's modulo-2**32 result for every summation order.
    """
    return "int32" if int(terms) * int(max_abs_product) <= _INT32_MAX else "int64"


def wrap_int32(x: PrimExpr) -> PrimExpr:
    """requant.wrap_int32: an integer expression modulo 2**32 as int32 (two's complement).

    int64 -> int32 is LLVM's `trunc`, which wraps; narrower integers widen exactly.
    """
    return x if expr_dtype(x) == "int32" else x.astype("int32")


def _max_abs_shifted(dtype: str, zero_points: np.ndarray) -> int:
    """max |q - zp| over the storage range of `dtype` ('uint8' / 'int8') and the zero points."""
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    zps = np.asarray(zero_points, dtype=np.int64).reshape(-1)
    return int(np.max(np.maximum(hi - zps, zps - lo)))


def _shifted_weight_zps(w_zps: Sequence[int] | np.ndarray, n: int, what: str) -> np.ndarray:
    zws = np.asarray(w_zps, dtype=np.int64).reshape(-1)
    if zws.size not in (1, n):
        raise LoweringError(f"{what}: {zws.size} weight zero points for {n} output channels")
    zws = np.broadcast_to(zws, (n,))
    if np.any(zws < -128) or np.any(zws > 127):
        raise LoweringError(f"{what}: weight zero points must be in -128..127, got {zws}")
    return zws


def _f32_per_channel(values: np.ndarray, name: str) -> Callable[[PrimExpr], PrimExpr]:
    """c -> float32 value: an immediate when every channel has the same value, else a load from
    a float32 constant tensor."""
    vals = np.asarray(values, dtype=np.float32).reshape(-1)
    if vals.size and np.all(vals.view(np.uint32) == vals.view(np.uint32)[0]):
        imm = te.const(float(vals[0]), "float32")
        return lambda c: imm
    t = constant(vals, name)
    return lambda c: t[c]


def _int_per_channel(
    values: np.ndarray, name: str, dtype: str = "int32"
) -> Callable[[PrimExpr], PrimExpr]:
    """c -> integer value: an immediate when every channel has the same value, else a load."""
    vals = np.asarray(values, dtype=np.int64).reshape(-1)
    if vals.size and np.all(vals == vals[0]):
        imm = te.const(int(vals[0]), dtype)
        return lambda c: imm
    t = constant(vals.astype(dtype), name)
    return lambda c: t[c]


def pad_spatial(
    x: Tensor,
    padding: Sequence[int],
    value: int,
    *,
    channels_last: bool = False,
    name: str = "pad",
) -> Tensor:
    """x [N, C, *S] padded by `padding[d]` on both sides of each spatial dim with `value`,
    laid out [N, C, *S_pad] or, with `channels_last`, [N, *S_pad, C] (a copy, also without
    padding).

    Its own stage on purpose: a tensorized consumer needs the plain load (an inlined pad puts
    an `if_then_else` inside it, docs/tvm-0.27-notes.md recipe 4).
    """
    shape = int_shape(x)
    n, c, sp = shape[0], shape[1], shape[2:]
    d = len(sp)
    pads = tuple(int(p) for p in padding)
    if len(pads) != d:
        raise LoweringError(f"{name}: {len(pads)} paddings for {d} spatial dims")
    sp_pad = tuple(s + 2 * p for s, p in zip(sp, pads))
    fill = te.const(int(value), x.dtype)

    def load(nn: PrimExpr, cc: PrimExpr, pos: Sequence[PrimExpr]) -> PrimExpr:
        if not any(pads):
            return x[(nn, cc, *pos)]
        inside = [te.all(q >= p, q < s + p) for q, p, s in zip(pos, pads, sp) if p]
        src = tuple(q - p if p else q for q, p in zip(pos, pads))
        return te.if_then_else(te.all(*inside), x[(nn, cc, *src)], fill)

    if channels_last:
        out_shape = (n, *sp_pad, c)
        return te.compute(out_shape, lambda nn, *r: load(nn, r[d], r[:d]), name=name)
    return te.compute((n, c, *sp_pad), lambda nn, cc, *r: load(nn, cc, r), name=name)


def conv_accumulate(
    x: Tensor,
    x_zp: int,
    w: Tensor,
    w_zps: Sequence[int] | np.ndarray,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    *,
    channels_last: bool | None = None,
    name: str = "conv",
) -> Tensor:
    """ops.conv.conv_accumulate: the int32 accumulator of an N-d grouped conv, wrapped mod 2**32.

        acc[n, o, *p] = wrap32(sum_{c, *k} (xp[n, g*Cg + c, *(p*stride + k*dil)] - zx)
                                           * (w[o, c, *k] - zw[o]))

    with g = o // (O / groups), Cg = C / groups and xp = x padded with zx (padding taps give
    (zx - zx) * ... = 0). x u8/i8 [N, C, *S], w i8 [O, Cg, *K], `w_zps` one int per output
    channel (or one for all). Stages (block names):

        {name}_pad    x padded with zx; channels-last [N, *S_pad, C] when `channels_last`
                      (the default when Cg >= 3: the innermost reduction then runs over
                      contiguous channels, which LLVM vectorizes; measured 2-5x faster than
                      [N, C, *S] for 64 channels, 1.5x for a 3-channel 7x7 stem), else
                      [N, C, *S_pad], only when padded (depthwise convs: the kernel window is
                      the contiguous inner loop)
        {name}_wt     int16 w - zw[o] in the matching layout ([O, *K, Cg] or [O, Cg, *K])
        {name}_acc    the reduction over (*K, Cg) or (Cg, *K), in int32 when no partial sum can
                      overflow (`int_acc_dtype`), else in int64
        {name}_wrap   int64 -> int32 (only after an int64 accumulator)
    """
    xs, ws = int_shape(x), int_shape(w)
    if len(xs) < 3 or len(ws) != len(xs):
        raise LoweringError(f"{name}: conv needs x [N, C, *S] and w [O, C/groups, *K] of the "
                            f"same rank, got x {list(xs)}, w {list(ws)}")
    n, c_in, sp = xs[0], xs[1], xs[2:]
    c_out, cg, ks = ws[0], ws[1], ws[2:]
    d = len(sp)
    if groups < 1 or c_in != cg * groups or c_out % groups:
        raise LoweringError(
            f"{name}: conv shapes do not fit: x {list(xs)}, w {list(ws)}, groups={groups}"
        )
    st, pd, dl = (tuple(int(v) for v in t) for t in (stride, padding, dilation))
    if not len(st) == len(pd) == len(dl) == d:
        raise LoweringError(f"{name}: stride/padding/dilation need {d} values each")
    og = c_out // groups
    out_sp = tuple(
        (s + 2 * p - q * (k - 1) - 1) // t + 1 for s, k, t, p, q in zip(sp, ks, st, pd, dl)
    )
    if any(o < 1 for o in out_sp):
        raise LoweringError(f"{name}: empty output for x {list(xs)}, w {list(ws)}")
    zx = int(x_zp)
    zws = _shifted_weight_zps(w_zps, c_out, name)
    if channels_last is None:
        channels_last = cg >= 3
    acc_dt = int_acc_dtype(
        cg * int(np.prod(ks, dtype=np.int64)),
        _max_abs_shifted(str(x.dtype), np.array([zx])) * _max_abs_shifted("int8", zws),
    )

    if any(pd) or channels_last:
        xp = pad_spatial(x, pd, zx, channels_last=channels_last, name=f"{name}_pad")
    else:
        xp = x
    zw = _int_per_channel(zws, f"{name}_w_zero_point", "int16")
    if channels_last:
        wt = te.compute(
            (c_out, *ks, cg),
            lambda o, *r: w[(o, r[d], *r[:d])].astype("int16") - zw(o),
            name=f"{name}_wt",
        )
    else:
        wt = te.compute(
            (c_out, cg, *ks),
            lambda o, cc, *r: w[(o, cc, *r)].astype("int16") - zw(o),
            name=f"{name}_wt",
        )
    kax = [te.reduce_axis((0, k), name=f"k{j}") for j, k in enumerate(ks)]
    cax = te.reduce_axis((0, cg), name="c")
    zx_c = te.const(zx, acc_dt)

    def body(nn: PrimExpr, o: PrimExpr, *p: PrimExpr) -> PrimExpr:
        ch = cax if groups == 1 else (o // og) * cg + cax
        pos = tuple(pi * s + ka * q for pi, s, ka, q in zip(p, st, kax, dl))
        if channels_last:
            xv, wv = xp[(nn, *pos, ch)], wt[(o, *kax, cax)]
            axes = [*kax, cax]
        else:
            xv, wv = xp[(nn, ch, *pos)], wt[(o, cax, *kax)]
            axes = [cax, *kax]
        return te.sum((xv.astype(acc_dt) - zx_c) * wv.astype(acc_dt), axis=axes)

    acc = te.compute((n, c_out, *out_sp), body, name=f"{name}_acc")
    if acc_dt == "int32":
        return acc
    return te.compute(acc.shape, lambda *i: wrap_int32(acc[i]), name=f"{name}_wrap")


def conv_transpose_accumulate(
    x: Tensor,
    x_zp: int,
    w: Tensor,
    w_zp: int,
    stride: Sequence[int],
    padding: Sequence[int],
    output_padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    *,
    name: str = "conv_transpose",
) -> Tensor:
    """ops.conv_transpose.conv_transpose_accumulate: the wrapped int32 accumulator of an N-d
    grouped transposed conv, as a stride-1 conv (`conv_accumulate`) over the upsampled input:

        xu[n, c, *q] = x[n, c, *j/stride] if j = q - ((K-1)*dil - pad) >= 0 is a multiple of
                       stride inside the input, else zx              (stage {name}_up)
        wf[g*Og + o, c, *k] = w[g*Cg + c, o, *(K-1-k)]               (flipped, transposed)
        acc = conv_accumulate(xu, zx, wf, zw, stride 1, padding 0, dilation, groups)

    x u8 [N, C, *S], w i8 [C, Og, *K] (per-tensor zero point). Output [N, groups*Og, *S_out]
    with S_out = (S-1)*stride - 2*pad + dil*(K-1) + output_padding + 1. Inserted positions hold
    zx, so they add exactly 0, as the scatter form of the reference does.
    """
    xs, ws = int_shape(x), int_shape(w)
    if len(xs) < 3 or len(ws) != len(xs) or ws[0] != xs[1] or xs[1] % groups:
        raise LoweringError(f"{name}: transposed conv shapes do not fit: x {list(xs)}, "
                            f"w {list(ws)}, groups={groups}")
    n, c_in, sp = xs[0], xs[1], xs[2:]
    og, ks = ws[1], ws[2:]
    cg = c_in // groups
    d = len(sp)
    st, pd, op, dl = (tuple(int(v) for v in t) for t in (stride, padding, output_padding,
                                                          dilation))
    out_sp = tuple((s - 1) * t - 2 * p + q * (k - 1) + o + 1
                   for s, k, t, p, o, q in zip(sp, ks, st, pd, op, dl))
    if any(o < 1 for o in out_sp):
        raise LoweringError(f"{name}: empty output for x {list(xs)}, w {list(ws)}")
    lo = tuple(q * (k - 1) - p for k, p, q in zip(ks, pd, dl))
    up_sp = tuple(o + q * (k - 1) for o, k, q in zip(out_sp, ks, dl))
    fill = te.const(int(x_zp), x.dtype)

    def up(nn: PrimExpr, cc: PrimExpr, *q: PrimExpr) -> PrimExpr:
        conds, src = [], []
        for qi, l, t, s in zip(q, lo, st, sp):
            j = qi - l
            conds.append(j >= 0)
            if t > 1:
                conds.append(tirx.floormod(j, t) == 0)
            conds.append(j < (s - 1) * t + 1)
            # clamped, so that even a speculated load stays inside x
            src.append(te.max(te.min(tirx.floordiv(j, t) if t > 1 else j, s - 1), 0))
        return te.if_then_else(te.all(*conds), x[(nn, cc, *src)], fill)

    xu = te.compute((n, c_in, *up_sp), up, name=f"{name}_up")
    wf = te.compute(
        (groups * og, cg, *ks),
        lambda o, c, *k: w[((o // og) * cg + c, o % og, *(kk - 1 - ki for kk, ki in zip(ks, k)))],
        name=f"{name}_wflip",
    )
    return conv_accumulate(xu, x_zp, wf, [int(w_zp)], (1,) * d, (0,) * d, dl, groups,
                           name=name)


def dense_accumulate(
    x: Tensor,
    x_zp: int,
    w: Tensor,
    w_zps: Sequence[int] | np.ndarray,
    *,
    name: str = "dense",
) -> Tensor:
    """ops.linear.linear_accumulate: acc[..., o] = wrap32(sum_k (x[..., k] - zx) * (w[o, k] -
    zw[o])) for x u8/i8 [..., K] and w i8 [O, K]; int32 [..., O].

    Stages: {name}_wt (int16 w - zw[o], only when a zero point is not 0), {name}_acc (the
    reduction over k, contiguous in x and w; int32, or int64 when it could overflow) and
    {name}_wrap (int64 -> int32, only after an int64 accumulator).
    """
    xs, ws = int_shape(x), int_shape(w)
    if not xs or len(ws) != 2 or ws[1] != xs[-1]:
        raise LoweringError(f"{name}: needs x [..., K] and w [O, K], got {list(xs)}, {list(ws)}")
    o_n, k_n = ws
    zx = int(x_zp)
    zws = _shifted_weight_zps(w_zps, o_n, name)
    acc_dt = int_acc_dtype(
        k_n, _max_abs_shifted(str(x.dtype), np.array([zx])) * _max_abs_shifted("int8", zws)
    )
    if np.any(zws):
        zw = _int_per_channel(zws, f"{name}_w_zero_point", "int16")
        wv: Tensor = te.compute(
            (o_n, k_n), lambda o, k: w[o, k].astype("int16") - zw(o), name=f"{name}_wt"
        )
    else:
        wv = w
    kax = te.reduce_axis((0, k_n), name="k")
    zx_c = te.const(zx, acc_dt)

    def body(*i: PrimExpr) -> PrimExpr:
        xv = x[(*i[:-1], kax)].astype(acc_dt) - zx_c
        return te.sum(xv * wv[i[-1], kax].astype(acc_dt), axis=kax)

    acc = te.compute((*xs[:-1], o_n), body, name=f"{name}_acc")
    if acc_dt == "int32":
        return acc
    return te.compute(acc.shape, lambda *i: wrap_int32(acc[i]), name=f"{name}_wrap")


# --- epilogues -----------------------------------------------------------------------------------


def _channel_axis(acc: Tensor, channel_axis: int, what: str) -> tuple[int, int]:
    shape = int_shape(acc)
    if not shape or not str(acc.dtype).startswith("int"):
        raise LoweringError(f"{what}: needs an integer accumulator with a channel axis, got "
                            f"{acc.dtype}{list(shape)}")
    if not -len(shape) <= channel_axis < len(shape):
        raise LoweringError(f"{what}: channel axis {channel_axis} out of range for rank "
                            f"{len(shape)}")
    axis = channel_axis % len(shape)
    return axis, shape[axis]


def relu_f32(v: PrimExpr) -> PrimExpr:
    """np.maximum(v, 0) on float32: NaN stays NaN (a TIR max might return 0)."""
    return tirx.Select(v < te.const(0.0, "float32"), te.const(0.0, "float32"), v)


def leaky_relu_f32(v: PrimExpr, negative_slope: float) -> PrimExpr:
    """onednn_eltwise.leaky_relu_f32: v if v > 0 else f32(v * f32(slope)) (NaN -> NaN)."""
    return tirx.Select(v > te.const(0.0, "float32"), v, fence(v * f32_const(negative_slope)))


_TANH_IDX_BIAS = 0x39800000
_TANH_IDX_MASK = -(2**32 - 0xFFC00000)  # 0xffc00000 as int32


def onednn_tanh_f32(v: PrimExpr) -> PrimExpr:
    """onednn_eltwise.tanh_f32: oneDNN's float32 tanh, bit for bit (float32 `v`).

        a = |v|; i = ((bits(a) - 0x39800000) & 0xffc00000) >> 22 & 31; r = a - f32(bits(a) &
        0xffc00000); p = fma chain of the 7 coefficients of polynomial i (a constant tensor);
        t = a if a < 0x1.bb67aep-12 else (p if a < 0x1.205966p3 else 1); copysign(t, v)

    The bit arithmetic is int32: bits(a) - bias cannot overflow (bits(a) >= 0), and the low 5
    bits after an arithmetic shift equal those after numpy's logical uint32 shift.
    """
    from qcompiler.reference import onednn_eltwise as oe

    bits = tirx.reinterpret("int32", v)
    sign = bits & te.const(-(2**31), "int32")
    abits = bits & te.const(0x7FFFFFFF, "int32")
    a = tirx.reinterpret("float32", abits)
    idx = ((abits - te.const(_TANH_IDX_BIAS, "int32")) & te.const(_TANH_IDX_MASK, "int32")) >> 22
    idx = idx & te.const(31, "int32")
    r = a - tirx.reinterpret("float32", abits & te.const(_TANH_IDX_MASK, "int32"))
    table = constant(oe.TANH_POLY.astype(np.float32), "onednn_tanh_poly")
    p = table[6, idx]
    for deg in range(5, -1, -1):
        p = fma(p, r, table[deg, idx])
    lin = f32_const(float(oe._TANH_LINEAR_UBOUND))
    sat = f32_const(float(oe._TANH_SATURATION_LBOUND))
    t = tirx.Select(a < sat, p, te.const(1.0, "float32"))
    t = tirx.Select(a < lin, a, t)
    return tirx.reinterpret("float32", tirx.reinterpret("int32", t) ^ sign)


def fbgemm_requantize(
    acc: Tensor,
    x_scale: float,
    w_scales: float | Sequence[float] | np.ndarray,
    out_scale: float,
    out_zp: int,
    *,
    bias: Tensor | None,
    per_tensor_weight: bool,
    relu: bool = False,
    channel_axis: int = 1,
    out_dtype: DType | None = None,
    name: str = "fbgemm_requantize",
) -> Tensor:
    """requant.fbgemm_requantize: fbgemm's ReQuantizeOutput with a float32 bias.

        atws = f32(f32(sx) * f32(sw[o]));  mult = f32(atws / f32(so))      (numpy, constants)
        v = f32(wrap32(acc))
          = fma(bias[o], f32(1.0 / (double)atws), v)    per-tensor weight (llvm.fma: 1 rounding)
          = v + f32(bias[o] / atws[o])                   per-channel weight (IEEE division)
        t = f32(v * mult[o])
        y = (zo if relu else qmin)   if not |t| < 2**31 (the INT32_MIN trap; NaN too)
          = clip(rint(t) + zo, zo if relu else qmin, qmax)   otherwise

    `acc` is the integer accumulator (int32, or int64 wrapped here); `bias` a float32 [O] tensor
    in real units; `w_scales` one scale or one per channel. The clip runs in float on rint(t)
    against bounds shifted by -zo (exact small integers), so no float -> int cast is out of
    range.
    """
    dt = u8 if out_dtype is None else out_dtype
    axis, n_ch = _channel_axis(acc, channel_axis, name)
    sw = np.broadcast_to(np.asarray(w_scales, dtype=np.float64).reshape(-1), (n_ch,))
    f32 = np.float32
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        atws = (f32(x_scale) * sw.astype(f32)).astype(f32)
        mult = (atws / f32(out_scale)).astype(f32)
        rcp = f32(1.0 / np.float64(atws[0]))
    mult_c = _f32_per_channel(mult, f"{name}_mult")
    atws_c = _f32_per_channel(atws, f"{name}_atws")
    zo = int(out_zp)
    if not dt.qmin <= zo <= dt.qmax:
        raise LoweringError(f"{name}: output zero point {zo} outside the {dt} range")
    lo = zo if relu else dt.qmin
    two31 = te.const(2.0**31, "float32")
    lo_f = te.const(float(lo - zo), "float32")
    hi_f = te.const(float(dt.qmax - zo), "float32")

    def fn(*i: PrimExpr) -> PrimExpr:
        c = i[axis]
        v = wrap_int32(acc[i]).astype("float32")
        if bias is not None:
            if per_tensor_weight:
                v = fma(bias[c], f32_const(rcp), v)
            else:
                v = v + fence(bias[c] / atws_c(c))
        t = fence(v * mult_c(c))
        r = te.max(te.min(round_half_even(t), hi_f), lo_f).astype("int32") + te.const(zo, "int32")
        return tirx.Select(te.abs(t) < two31, r, te.const(lo, "int32")).astype(dt.storage)

    return te.compute(acc.shape, fn, name=name)


ONEDNN_POST_OPS = ("relu", "leaky_relu", "tanh")


def onednn_requantize(
    acc: Tensor,
    x_scale: float,
    w_scales: float | Sequence[float] | np.ndarray,
    out_scale: float,
    out_zp: int,
    *,
    bias: Tensor | None,
    relu: bool = False,
    channel_axis: int = 1,
    reinvert_w_scales: bool = False,
    residual: tuple[Tensor, float, int] | None = None,
    post_op: str | None = None,
    negative_slope: float = 0.0,
    out_dtype: DType | None = None,
    name: str = "onednn_requantize",
) -> Tensor:
    """requant.onednn_requantize (and onednn_eltwise.onednn_linear_requantize with `post_op`):
    oneDNN's int8 epilogue as PyTorch drives it.

        src_s = 1/f32(1/sx); dinv = 1/(1/f32(1/so)); wei_s[o] = f32(sw[o])    (numpy constants;
                                  1/f32(1/f32(sw)) with `reinvert_w_scales`, linear weights)
        v = f32(wrap32(acc)); v = f32(v * src_s); v = f32(v * wei_s[o])    two roundings
        v = f32(v + bias[o])
        v = fma(f32(e) - f32(ze), 1/f32(1/se), v)                          residual (sum post-op)
        v = relu(v) | leaky_relu(v, slope) | onednn_tanh(v)                `relu` / `post_op`
        v = f32(f32(v * dinv) + f32(zo)); y = clip(rint(v), qmin, qmax), NaN -> 0

    Every product is fenced (no FMA contraction into the following add, no folding of the two
    scale multiplies into one).
    """
    dt = u8 if out_dtype is None else out_dtype
    if relu:
        if post_op not in (None, "relu"):
            raise LoweringError(f"{name}: relu=True and post_op={post_op!r} together")
        post_op = "relu"
    if post_op is not None and post_op not in ONEDNN_POST_OPS:
        raise LoweringError(f"{name}: unknown oneDNN post-op {post_op!r}; supported: "
                            f"{', '.join(ONEDNN_POST_OPS)}")
    axis, n_ch = _channel_axis(acc, channel_axis, name)
    f32 = np.float32
    src_s = rq.onednn_scale(x_scale)
    dinv = f32(1.0) / rq.onednn_scale(out_scale)
    wei = np.broadcast_to(np.asarray(w_scales, dtype=np.float64).reshape(-1), (n_ch,))
    wei = wei.astype(f32)
    if reinvert_w_scales:
        with np.errstate(over="ignore", divide="ignore"):
            wei = (f32(1.0) / (f32(1.0) / wei).astype(f32)).astype(f32)
    wei_c = _f32_per_channel(wei, f"{name}_w_scale")
    res = None
    if residual is not None:
        e, se, ze = residual
        if int_shape(e) != int_shape(acc):
            raise LoweringError(f"{name}: residual shape {list(int_shape(e))} differs from "
                                f"the accumulator's {list(int_shape(acc))}")
        res = (e, f32_const(rq.onednn_scale(se)), f32_const(float(ze)))
    zero = te.const(0.0, "float32")

    def fn(*i: PrimExpr) -> PrimExpr:
        c = i[axis]
        v = wrap_int32(acc[i]).astype("float32")
        v = fence(v * f32_const(src_s))
        v = fence(v * wei_c(c))
        if bias is not None:
            v = v + bias[c]
        if res is not None:
            e_t, sum_s, ze_f = res
            v = fma(e_t[i].astype("float32") - ze_f, sum_s, v)
        if post_op == "relu":
            v = relu_f32(v)
        elif post_op == "leaky_relu":
            v = leaky_relu_f32(v, negative_slope)
        elif post_op == "tanh":
            v = onednn_tanh_f32(v)
        v = fence(v * f32_const(dinv)) + f32_const(float(out_zp))
        r = round_half_even(v)
        return saturate(tirx.Select(te.isnan(r), zero, r), dt)

    return te.compute(acc.shape, fn, name=name)


__all__ += [
    "ONEDNN_POST_OPS",
    "conv_accumulate",
    "conv_transpose_accumulate",
    "dense_accumulate",
    "fbgemm_requantize",
    "int_acc_dtype",
    "leaky_relu_f32",
    "onednn_requantize",
    "onednn_tanh_f32",
    "pad_spatial",
    "relu_f32",
    "wrap_int32",
]
