"""PyTorch's AVX-512 float32 vector math, emulated bit for bit in numpy.

The dequantize -> f -> quantize kernels of PyTorch's quantized CPU ops (sigmoid, tanh, elu,
celu, gelu, softmax) evaluate `f` with `at::vec::Vectorized<float>`, which calls Sleef
(`Sleef_expf16_u10`, `Sleef_expm1f16_u10`, `Sleef_tanhf16_u10`) or PyTorch's own polynomial
(`Vectorized<float>::erf`). These are not libm: they differ from a correctly rounded
result by up to an ulp, and an ulp flips a quantized rounding now and then. This module
reproduces them operation by operation, every step rounded to float32 as the hardware rounds it
(`fma32` is a single-rounding fused multiply-add).

Checked against torch 2.13 (AVX512 build) on 4 M float32 inputs each: `sleef_expf` through
`torch.sigmoid` (whose vector body is `1 / (1 + exp(-x))`), `sleef_expm1f` through
`torch.expm1`, with zero mismatches. `sleef_tanhf` follows the Sleef source of the same
`expk2f` kernel that `sleef_expm1f` verifies; the float `torch.tanh` kernel itself dispatches to
MKL, so no float torch op isolates it (the quantized tanh tests compare it end to end).

A numpy-only leaf, like `quant_math`. The elementwise algorithms are written against a small
float32-arithmetic interface (`NumpyF32`) that spells out every rounding step; the activation
bodies in ops/activation.py use the same interface. (Compiled kernels use lookup tables built
from these functions, see lowering/te_vecmath.py.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcompiler.reference.quant_math import fma_f32 as fma32

F32 = np.float32
F64 = np.float64


class NumpyF32:
    """The float32 arithmetic the algorithms below are written in, on numpy arrays.

    Every operation rounds to float32 once, as one AVX-512 instruction does. The algorithms
    take it as a parameter `B` so that another backend with the same methods (e.g. a TE
    expression builder) runs the identical operation sequence.
    """

    def const(self, v: float) -> np.float32:
        return F32(v)

    def mul(self, a: Any, b: Any) -> Any:
        return np.asarray(np.asarray(a, F32) * np.asarray(b, F32), F32)

    def add(self, a: Any, b: Any) -> Any:
        return np.asarray(np.asarray(a, F32) + np.asarray(b, F32), F32)

    def sub(self, a: Any, b: Any) -> Any:
        return np.asarray(np.asarray(a, F32) - np.asarray(b, F32), F32)

    def div(self, a: Any, b: Any) -> Any:
        return np.asarray(np.asarray(a, F32) / np.asarray(b, F32), F32)

    def fma(self, a: Any, b: Any, c: Any) -> Any:
        return fma32(a, b, c)

    def neg(self, a: Any) -> Any:
        return np.asarray(-np.asarray(a, F32), F32)

    def abs(self, a: Any) -> Any:
        return np.asarray(np.abs(np.asarray(a, F32)), F32)

    def lt(self, a: Any, b: Any) -> Any:
        return np.asarray(a, F32) < np.asarray(b, F32)

    def gt(self, a: Any, b: Any) -> Any:
        return np.asarray(a, F32) > np.asarray(b, F32)

    def or_(self, a: Any, b: Any) -> Any:
        return np.logical_or(a, b)

    def isnan(self, a: Any) -> Any:
        return np.isnan(a)

    def is_neg_zero(self, a: Any) -> Any:
        return (np.asarray(a, F32) == 0) & np.signbit(a)

    def select(self, cond: Any, a: Any, b: Any) -> Any:
        return np.asarray(np.where(cond, a, b), F32)

    def copysign(self, mag: Any, sign: Any) -> Any:
        return np.asarray(np.copysign(np.asarray(mag, F32), np.asarray(sign, F32)), F32)

    def rint_i32(self, a: Any) -> Any:
        """Round half to even to int32 (vrint_vi2_vf / cvtps2dq). Inputs are first clamped to
        +-2**30 and NaN becomes 0: every caller overrides results of out-of-range inputs."""
        t = np.clip(np.nan_to_num(np.asarray(a, F32).astype(F64), nan=0.0), -(2.0**30), 2.0**30)
        return np.rint(t).astype(np.int32)

    def i2f(self, q: Any) -> Any:
        return np.asarray(q, np.int32).astype(F32)

    def shr1(self, q: Any) -> Any:
        return np.asarray(q, np.int32) >> 1

    def isub(self, a: Any, b: Any) -> Any:
        return (np.asarray(a, np.int32) - np.asarray(b, np.int32)).astype(np.int32)

    def pow2i(self, q: Any) -> Any:
        """2**q as float32, built from its exponent bits ((q + 127) << 23), q in [-126, 127]."""
        bits = (np.asarray(q, np.int64) + 127) << 23
        return (bits & 0xFFFFFFFF).astype(np.uint32).view(np.int32).view(F32)

    def minimum(self, a: Any, b: Any) -> Any:
        return np.asarray(np.minimum(np.asarray(a, F32), np.asarray(b, F32)), F32)

    def maximum(self, a: Any, b: Any) -> Any:
        return np.asarray(np.maximum(np.asarray(a, F32), np.asarray(b, F32)), F32)


NP = NumpyF32()


R_LN2F = F32(1.442695040888963407359924681001892137426645954152985934135449406931)
L2UF = F32(0.693145751953125)
L2LF = F32(1.428606765330187045e-06)


def _ldexp2(B: Any, d: Any, q: Any) -> Any:
    """vldexp2_vf_vf_vi2: d * 2^(q>>1) * 2^(q - (q>>1)), two float32 multiplies."""
    q1 = B.shr1(q)
    return B.mul(B.mul(d, B.pow2i(q1)), B.pow2i(B.isub(q, q1)))


def sleef_expf(d: Any, B: Any = NP) -> Any:
    """Sleef_expf16_u10 (`xexpf`, FMA build): Cody-Waite reduction, degree-6 polynomial."""
    if B is NP:
        d = np.asarray(d, F32)
    c = B.const
    with np.errstate(all="ignore"):
        q = B.rint_i32(B.mul(d, c(R_LN2F)))
        qf = B.i2f(q)
        s = B.fma(qf, c(-L2UF), d)
        s = B.fma(qf, c(-L2LF), s)
        u = c(0.000198527617612853646278381)
        u = B.fma(u, s, c(0.00139304355252534151077271))
        u = B.fma(u, s, c(0.00833336077630519866943359))
        u = B.fma(u, s, c(0.0416664853692054748535156))
        u = B.fma(u, s, c(0.166666671633720397949219))
        u = B.fma(u, s, c(0.5))
        u = B.add(c(1), B.fma(B.mul(s, s), u, s))
        u = _ldexp2(B, u, q)
        u = B.select(B.lt(d, c(-104)), c(0), u)
        u = B.select(B.gt(d, c(100)), c(np.inf), u)
        return B.select(B.isnan(d), d, u)


# --- Sleef's double-float arithmetic (df.h, ENABLE_FMA_SP); pairs are (hi, lo) -------------

def _dfadd2_f2_f(B: Any, xx: Any, xy: Any, y: Any) -> tuple[Any, Any]:
    rx = B.add(xx, y)
    v = B.sub(rx, xx)
    ry = B.add(B.sub(xx, B.sub(rx, v)), B.sub(y, v))
    return rx, B.add(ry, xy)


def _dfadd2_f2_f2(B: Any, xx: Any, xy: Any, yx: Any, yy: Any) -> tuple[Any, Any]:
    rx = B.add(xx, yx)
    v = B.sub(rx, xx)
    ry = B.add(B.sub(xx, B.sub(rx, v)), B.sub(yx, v))
    return rx, B.add(ry, B.add(xy, yy))


def _dfadd_f_f2(B: Any, x: Any, yx: Any, yy: Any) -> tuple[Any, Any]:
    rx = B.add(x, yx)
    return rx, B.add(B.add(B.sub(x, rx), yx), yy)


def _dfadd_f2_f2(B: Any, xx: Any, xy: Any, yx: Any, yy: Any) -> tuple[Any, Any]:
    rx = B.add(xx, yx)
    return rx, B.add(B.add(B.add(B.sub(xx, rx), yx), xy), yy)


def _dfmul_f2_f(B: Any, xx: Any, xy: Any, y: Any) -> tuple[Any, Any]:
    rx = B.mul(xx, y)
    return rx, B.fma(xy, y, B.fma(xx, y, B.neg(rx)))


def _dfmul_f2_f2(B: Any, xx: Any, xy: Any, yx: Any, yy: Any) -> tuple[Any, Any]:
    rx = B.mul(xx, yx)
    return rx, B.fma(xx, yy, B.fma(xy, yx, B.fma(xx, yx, B.neg(rx))))


def _dfsqu_f2(B: Any, xx: Any, xy: Any) -> tuple[Any, Any]:
    rx = B.mul(xx, xx)
    return rx, B.fma(B.add(xx, xx), xy, B.fma(xx, xx, B.neg(rx)))


def _dfrec_f2(B: Any, dx: Any, dy: Any) -> tuple[Any, Any]:
    one = B.const(1)
    qx = B.div(one, dx)
    return qx, B.mul(qx, B.fma(B.neg(dy), qx, B.fma(B.neg(dx), qx, one)))


def _dfdiv_f2_f2(B: Any, nx: Any, ny: Any, dx: Any, dy: Any) -> tuple[Any, Any]:
    one = B.const(1)
    t = B.div(one, dx)
    qx = B.mul(nx, t)
    u = B.fma(t, nx, B.neg(qx))
    qy = B.fma(B.neg(dy), t, B.fma(B.neg(dx), t, one))
    return qx, B.fma(qx, qy, B.fma(ny, t, u))


def _expk2f(B: Any, dx: Any, dy: Any) -> tuple[Any, Any]:
    """Sleef's double-float exp kernel: exp(dx + dy) as an unevaluated (hi, lo) pair."""
    c = B.const
    q = B.rint_i32(B.mul(B.add(dx, dy), c(R_LN2F)))
    qf = B.i2f(q)
    sx, sy = _dfadd2_f2_f(B, dx, dy, B.mul(qf, c(-L2UF)))
    sx, sy = _dfadd2_f2_f(B, sx, sy, B.mul(qf, c(-L2LF)))
    u = c(+0.1980960224e-3)
    u = B.fma(u, sx, c(+0.1394256484e-2))
    u = B.fma(u, sx, c(+0.8333456703e-2))
    u = B.fma(u, sx, c(+0.4166637361e-1))
    tx, ty = _dfmul_f2_f(B, sx, sy, u)
    tx, ty = _dfadd2_f2_f(B, tx, ty, c(+0.166666659414234244790680580464e+0))
    tx, ty = _dfmul_f2_f2(B, sx, sy, tx, ty)
    tx, ty = _dfadd2_f2_f(B, tx, ty, c(0.5))
    qx, qy = _dfsqu_f2(B, sx, sy)
    tx, ty = _dfmul_f2_f2(B, qx, qy, tx, ty)
    tx, ty = _dfadd2_f2_f2(B, sx, sy, tx, ty)
    tx, ty = _dfadd_f_f2(B, c(1), tx, ty)
    tx = _ldexp2(B, tx, q)
    ty = _ldexp2(B, ty, q)
    tiny = B.lt(dx, c(-104))
    return B.select(tiny, c(0), tx), B.select(tiny, c(0), ty)


def sleef_expm1f(a: Any, B: Any = NP) -> Any:
    """Sleef_expm1f16_u10 (`xexpm1f`): exactly -1 below -16.6355, +inf above 88.7228."""
    if B is NP:
        a = np.asarray(a, F32)
    c = B.const
    with np.errstate(all="ignore"):
        dx, dy = _expk2f(B, a, c(0))
        dx, dy = _dfadd2_f2_f(B, dx, dy, c(-1.0))
        x = B.add(dx, dy)
        x = B.select(B.gt(a, c(88.72283172607421875)), c(np.inf), x)
        x = B.select(B.lt(a, c(-16.635532333438687426013570)), c(-1), x)
        x = B.select(B.is_neg_zero(a), c(-0.0), x)
        return B.select(B.isnan(a), a, x)


def sleef_tanhf(x: Any, B: Any = NP) -> Any:
    """Sleef_tanhf16_u10 (`xtanhf`): (e - 1/e) / (e + 1/e) in double-float, e = exp(|x|)."""
    if B is NP:
        x = np.asarray(x, F32)
    c = B.const
    with np.errstate(all="ignore"):
        ax = B.abs(x)
        dx, dy = _expk2f(B, ax, c(0))
        ex, ey = _dfrec_f2(B, dx, dy)
        nx, ny = _dfadd_f2_f2(B, dx, dy, B.neg(ex), B.neg(ey))
        mx, my = _dfadd_f2_f2(B, dx, dy, ex, ey)
        qx, qy = _dfdiv_f2_f2(B, nx, ny, mx, my)
        y = B.add(qx, qy)
        y = B.select(B.or_(B.gt(ax, c(18.714973875)), B.isnan(y)), c(1.0), y)
        y = B.copysign(y, x)
        return B.select(B.isnan(x), x, y)


def vec_erf(x: Any, B: Any = NP) -> Any:
    """`Vectorized<float>::erf` (AVX512): Abramowitz-Stegun 7.1.26 with Sleef expf.

    t = 1 / fma(0.3275911, |x|, 1); r = Horner(p5..p1, t) with fma;
    erf = sign(x) * fma(-exp(-x*x) * t, r, 1).
    """
    if B is NP:
        x = np.asarray(x, F32)
    c = B.const
    with np.errstate(all="ignore"):
        ax = B.abs(x)
        t = B.div(c(1), B.fma(c(0.3275911), ax, c(1)))
        r = B.fma(c(1.061405429), t, c(-1.453152027))
        r = B.fma(r, t, c(1.421413741))
        r = B.fma(r, t, c(-0.284496736))
        r = B.fma(r, t, c(0.254829592))
        e = B.neg(sleef_expf(B.neg(B.mul(x, x)), B))
        y = B.fma(B.mul(e, t), r, c(1))
        return B.copysign(y, x)


# --- softmax (ATen's CPU float kernels, AVX512) ----------------------------------------------

_SHUFFLES = ((0x4E, True), (0xB1, True), (0x4E, False), (0xB1, False))


def _vec_reduce_all16(v: np.ndarray, op: Any) -> np.ndarray:
    """vec_reduce_all for Vectorized<float> (16 lanes): shuffle_f32x4 0x4E, 0xB1, then
    shuffle_ps 0x4E, 0xB1, combining with `op` after each; lane 0 is the result."""
    for imm, across in _SHUFFLES:
        lanes = v.reshape(v.shape[:-1] + (4, 4))
        sel = [(imm >> (2 * k)) & 3 for k in range(4)]
        sh = lanes[..., sel, :] if across else lanes[..., :, sel]
        v = op(v, sh.reshape(v.shape))
    return np.asarray(v[..., 0])


def _reduce_all(x: np.ndarray, op: Any) -> np.ndarray:
    """at::vec::reduce_all over the last axis of x (rows, n), 16-lane float vectors."""
    rows, n = x.shape
    if n < 16:  # scalar loop over a partially loaded vector
        acc = x[:, 0].copy()
        for i in range(1, n):
            acc = op(acc, x[:, i])
        return acc
    acc = x[:, :16].copy()
    d = 16
    while d < n - n % 16:
        acc = op(acc, x[:, d:d + 16])
        d += 16
    if n - d > 0:  # masked load of the rest (zeros), then Vec::set keeps lanes >= rest
        rem = n - d
        part = np.concatenate([x[:, d:], np.zeros((rows, 16 - rem), F32)], axis=1)
        acc = np.concatenate([op(acc, part)[:, :rem], acc[:, rem:]], axis=1)
    return _vec_reduce_all16(acc, op)


def softmax_f32(x: np.ndarray, axis: int) -> np.ndarray:
    """torch.softmax on a contiguous float32 tensor, as ATen's AVX512 CPU kernels compute it.

    Last axis (_vec_softmax_lastdim): m = reduce_all(max); e = sleef_expf(x - m);
    s = reduce_all(+) (16-lane partial sums, then a shuffle tree); out = e * (1 / s).
    Other axes (_vec_softmax, vectorized over the inner positions): m = sequential max,
    e = sleef_expf(x - m), s = 0 + e_0 + e_1 + ... sequentially, out = e / s.
    (For inner positions past inner_size // 16 * 16 ATen's scalar tail uses libm expf; this
    function applies the vectorized rule there too.)
    """
    x = np.asarray(x, F32)
    axis = axis % x.ndim
    with np.errstate(all="ignore"):
        if axis == x.ndim - 1:
            rows = x.reshape(-1, x.shape[-1])
            m = _reduce_all(rows, np.maximum)
            e = sleef_expf(NP.sub(rows, m[:, None]))
            s = _reduce_all(e, NP.add)
            return NP.mul(e, NP.div(F32(1), s)[:, None]).reshape(x.shape)
        xm = np.moveaxis(x, axis, 0)
        m = xm[0].copy()
        for d in range(1, xm.shape[0]):
            m = np.maximum(m, xm[d])
        e = np.stack([sleef_expf(NP.sub(xm[d], m)) for d in range(xm.shape[0])])
        s = np.zeros_like(m)
        for d in range(xm.shape[0]):
            s = NP.add(s, e[d])
        return np.moveaxis(NP.div(e, s), 0, axis)
