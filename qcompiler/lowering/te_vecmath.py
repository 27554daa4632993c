"""TE twins of the PyTorch vector-code requantizers the elementwise, activation and pool
references use (`ops/elementwise.py`), step for step:

    elementwise.quant_vec        q_vec_torch        QuantizeAvx512, overflow included
    elementwise.requantize_int   requantize_torch   RequantizeAvx512 (cvtps2dq, wrapping + zp)

The transcendental activations (sigmoid, tanh, elu, celu, gelu, ...) are not lowered through
TE versions of `reference/vecmath.py`: each maps an input byte to an output byte, so their
`lower` gathers from a 256-entry table computed by the reference itself (softmax: a 256x256
exp table). NOTE: a direct TE port of the Sleef double-float algorithms is exact but compiles
for minutes: every value is reused several times, and whether written as a DAG or with `Let`
bindings, TVM's simplifying passes expand it into a tree exponential in its length (the
analyzer substitutes Let-bound values). Keep such chains out of TE.
"""

from __future__ import annotations

from qcompiler.ir.types import DType
from qcompiler.lowering import te_lib
from qcompiler.lowering.tvm_compat import PrimExpr, expr_dtype, te, tirx

_INT32_MIN = -(2**31)


def _cvtps_epi32(t: PrimExpr) -> PrimExpr:
    """cvtps2dq as int64: round half to even; NaN and values outside int32 give INT32_MIN."""
    r = te.nearbyint(t).astype("float64")
    ok = tirx.And(r >= te.const(-(2.0**31), "float64"), r < te.const(2.0**31, "float64"))
    safe = tirx.Select(ok, r, te.const(float(_INT32_MIN), "float64"))  # NaN compares false
    return safe.astype("int64")


def _add_i32_saturate(r: PrimExpr, zp: int, dtype: DType) -> PrimExpr:
    """Wrapping int32 `r + zp` (computed in int64), then clamp to the dtype and cast."""
    w = r + te.const(int(zp), "int64")
    w = tirx.Select(w > te.const(2**31 - 1, "int64"), w - te.const(2**32, "int64"),
                    tirx.Select(w < te.const(_INT32_MIN, "int64"),
                                w + te.const(2**32, "int64"), w))
    return te_lib.saturate(w, dtype)


_SAFE = 2.0**30
"""|x * inv| below which PyTorch's vector quantize cannot overflow int32 (then it is the plain
clamp(zp + rint(x * inv)) of te_lib.q_vec_value, which compiles much faster)."""


def q_vec_torch(x: PrimExpr, inv: PrimExpr, zp: int, dtype: DType,
                bound: float | None = None) -> PrimExpr:
    """elementwise.quant_vec: QuantizeAvx512 = clamp(zp + rint(min(f32(x * inv), 2^31-128)))
    with cvtps2dq's INT32_MIN below -2^31, NaN -> 2^31-128, and a wrapping int32 `+ zp`.

    `bound`: a proven bound on |x * inv| (e.g. from the input ranges); below 2**30 the
    overflow emulation is skipped.
    """
    if bound is not None and bound < _SAFE:
        return te_lib.q_vec_value(x, inv, int(zp), dtype)
    t = te_lib.fence(x * inv)
    big = te_lib.f32_const(2.0**31 - 128)
    t = tirx.Select(tirx.Or(te.isnan(t), t > big), big, t)
    return _add_i32_saturate(_cvtps_epi32(t), zp, dtype)


def requantize_torch(acc: PrimExpr, multiplier: float, zp: int, dtype: DType,
                     acc_bound: int | None = None) -> PrimExpr:
    """elementwise.requantize_int: RequantizeAvx512 = clamp(wrap32(cvtps2dq(f32(acc) * m) +
    zp)); `acc` is an integer expression (int32 or int64, exactly representable).

    `acc_bound`: a proven bound on |acc|; when |acc * m| stays below 2**30 the overflow
    emulation is skipped (clamp(zp + rint(f32(acc) * m)) in float32, exact there).
    """
    a = acc if expr_dtype(acc) == "int32" else acc.astype("int64")
    t = te_lib.fence(a.astype("float32") * te_lib.f32_const(multiplier))
    if acc_bound is not None and abs(float(acc_bound) * float(multiplier)) * 1.001 < _SAFE:
        r = te_lib.round_half_even(t)
        return te_lib.saturate(r + te_lib.f32_const(float(zp)), dtype)
    return _add_i32_saturate(_cvtps_epi32(t), zp, dtype)
