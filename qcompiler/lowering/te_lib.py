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
from qcompiler.ir.types import DType, QParams
from qcompiler.lowering.tvm_compat import PrimExpr, Tensor, expr_dtype, int_shape, te, tirx
from qcompiler.reference import quant_math as qm

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


def quantize_fn(
    qp: QParams,
    dtype: DType,
    rank: int,
    name: str = "q",
) -> Callable[[PrimExpr, Index], PrimExpr]:
    """(x_f32, index) -> quantized value: quant_math.quantize for per-tensor or per-axis `qp`.

    Per tensor: q_fbgemm for u8/i8, q_val for i32 (torch.quantize_per_tensor). Per axis: q_val
    with per-channel float32 inverse scales and zero points, which become constant tensors
    (created once, here).
    """
    if qp.scheme == "float_qparams":
        raise LoweringError(f"{name}: float_qparams quantization is not supported here")
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


def quantize(x: Tensor, qp: QParams, dtype: DType, name: str = "quantize") -> Tensor:
    """quant_math.quantize: float32 tensor -> `dtype` storage with qparams `qp`."""
    if x.dtype != "float32":
        raise LoweringError(f"{name}: quantize takes a float32 tensor, got {x.dtype}")
    fn = quantize_fn(qp, dtype, len(x.shape), name)
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
    q: Tensor, in_qp: QParams, out_qp: QParams, dtype: DType, name: str = "requantize"
) -> Tensor:
    """quantize(dequantize(q, in_qp), out_qp): both float32 steps in one element-wise pass."""
    rank = len(q.shape)
    dq = dequantize_fn(in_qp, rank, f"{name}_in")
    qf = quantize_fn(out_qp, dtype, rank, f"{name}_out")
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
