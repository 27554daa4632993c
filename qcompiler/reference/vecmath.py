"""PyTorch's AVX-512 float32 vector math, emulated bit for bit in numpy.

The dequantize -> f -> quantize kernels of PyTorch's quantized CPU ops (sigmoid, tanh, elu,
celu, gelu, softmax) evaluate `f` with `at::vec::Vectorized<float>`, which calls Sleef
(`Sleef_expf16_u10`, `Sleef_expm1f16_u10`, `Sleef_tanhf16_u10`) or PyTorch's own polynomials
(`Vectorized<float>::erf`, `exp_u20`). These are not libm: they differ from a correctly rounded
result by up to an ulp, and an ulp flips a quantized rounding now and then. This module
reproduces them operation by operation, every step rounded to float32 as the hardware rounds it
(`fma32` is a single-rounding fused multiply-add).

Checked against torch 2.13 (AVX512 build) on 4 M float32 inputs each: `sleef_expf` through
`torch.sigmoid` (whose vector body is `1 / (1 + exp(-x))`), `sleef_expm1f` through
`torch.expm1`, with zero mismatches. `sleef_tanhf` follows the Sleef source of the same
`expk2f` kernel that `sleef_expm1f` verifies; the float `torch.tanh` kernel itself dispatches to
MKL, so no float torch op isolates it (the quantized tanh tests compare it end to end).

A numpy-only leaf, like `quant_math`; the TE lowering mirrors these step for step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

F32 = np.float32
F64 = np.float64


def fma32(a: np.ndarray | float, b: np.ndarray | float, c: np.ndarray | float) -> np.ndarray:
    """float32 fma(a, b, c) with one rounding, exact for all finite inputs.

    a*b of two float32 values is exact in float64; the float64 sum is made round-to-odd with
    TwoSum's error term, after which rounding to float32 is correct (53 >= 24 + 2 bits).
    """
    a64 = np.asarray(a, F32).astype(F64)
    b64 = np.asarray(b, F32).astype(F64)
    c64 = np.asarray(c, F32).astype(F64)
    with np.errstate(all="ignore"):
        p = a64 * b64
        s = p + c64
        bp = s - p
        err = (p - (s - bp)) + (c64 - bp)
        even = (s.view(np.int64) & 1) == 0
        fix = np.isfinite(s) & np.isfinite(err) & (err != 0) & even
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
        return np.asarray(s.astype(F32))


def _mul(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    return np.asarray(np.asarray(a, F32) * np.asarray(b, F32), F32)


def _add(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    return np.asarray(np.asarray(a, F32) + np.asarray(b, F32), F32)


def _sub(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    return np.asarray(np.asarray(a, F32) - np.asarray(b, F32), F32)


def _div(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    return np.asarray(np.asarray(a, F32) / np.asarray(b, F32), F32)


def _rint_i32(x: np.ndarray) -> np.ndarray:
    """vrint_vi2_vf: round half to even, as cvtps2dq (out of range -> INT32_MIN)."""
    r = np.rint(np.asarray(x, F32).astype(F64))
    ok = np.isfinite(r) & (r >= -(2.0**31)) & (r < 2.0**31)
    return np.where(ok, r, -(2.0**31)).astype(np.int64).astype(np.int32)


def _ldexp2(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    """vldexp2_vf_vf_vi2: d * 2^(q>>1) * 2^(q - (q>>1)), two float32 multiplies."""
    q = q.astype(np.int32)
    q1 = q >> 1
    return _mul(_mul(d, np.ldexp(F32(1), q1).astype(F32)), np.ldexp(F32(1), q - q1).astype(F32))


R_LN2F = F32(1.442695040888963407359924681001892137426645954152985934135449406931)
L2UF = F32(0.693145751953125)
L2LF = F32(1.428606765330187045e-06)


def sleef_expf(d: np.ndarray) -> np.ndarray:
    """Sleef_expf16_u10 (`xexpf`, FMA build): Cody-Waite reduction, degree-6 polynomial."""
    d = np.asarray(d, F32)
    with np.errstate(all="ignore"):
        q = _rint_i32(_mul(d, R_LN2F))
        qf = q.astype(F32)
        s = fma32(qf, -L2UF, d)
        s = fma32(qf, -L2LF, s)
        u = F32(0.000198527617612853646278381)
        u = fma32(u, s, F32(0.00139304355252534151077271))
        u = fma32(u, s, F32(0.00833336077630519866943359))
        u = fma32(u, s, F32(0.0416664853692054748535156))
        u = fma32(u, s, F32(0.166666671633720397949219))
        u = fma32(u, s, F32(0.5))
        u = _add(F32(1), fma32(_mul(s, s), u, s))
        u = _ldexp2(u, q)
        u = np.where(d < F32(-104), F32(0), u)
        u = np.where(d > F32(100), F32(np.inf), u)
        return np.asarray(np.where(np.isnan(d), d, u), F32)


# --- Sleef's double-float arithmetic (df.h, ENABLE_FMA_SP); pairs are (hi, lo) -------------

def _dfadd2_f2_f(xx: np.ndarray, xy: np.ndarray, y: np.ndarray | F32) -> tuple[np.ndarray, ...]:
    rx = _add(xx, y)
    v = _sub(rx, xx)
    ry = _add(_sub(xx, _sub(rx, v)), _sub(y, v))
    return rx, _add(ry, xy)


def _dfadd2_f2_f2(xx: np.ndarray, xy: np.ndarray, yx: np.ndarray,
                  yy: np.ndarray) -> tuple[np.ndarray, ...]:
    rx = _add(xx, yx)
    v = _sub(rx, xx)
    ry = _add(_sub(xx, _sub(rx, v)), _sub(yx, v))
    return rx, _add(ry, _add(xy, yy))


def _dfadd_f_f2(x: F32, yx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, ...]:
    rx = _add(x, yx)
    return rx, _add(_add(_sub(x, rx), yx), yy)


def _dfadd_f2_f2(xx: np.ndarray, xy: np.ndarray, yx: np.ndarray,
                 yy: np.ndarray) -> tuple[np.ndarray, ...]:
    rx = _add(xx, yx)
    return rx, _add(_add(_add(_sub(xx, rx), yx), xy), yy)


def _dfmul_f2_f(xx: np.ndarray, xy: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    rx = _mul(xx, y)
    return rx, fma32(xy, y, fma32(xx, y, -rx))


def _dfmul_f2_f2(xx: np.ndarray, xy: np.ndarray, yx: np.ndarray,
                 yy: np.ndarray) -> tuple[np.ndarray, ...]:
    rx = _mul(xx, yx)
    return rx, fma32(xx, yy, fma32(xy, yx, fma32(xx, yx, -rx)))


def _dfsqu_f2(xx: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, ...]:
    rx = _mul(xx, xx)
    return rx, fma32(_add(xx, xx), xy, fma32(xx, xx, -rx))


def _dfrec_f2(dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, ...]:
    qx = _div(F32(1), dx)
    return qx, _mul(qx, fma32(-dy, qx, fma32(-dx, qx, F32(1))))


def _dfdiv_f2_f2(nx: np.ndarray, ny: np.ndarray, dx: np.ndarray,
                 dy: np.ndarray) -> tuple[np.ndarray, ...]:
    t = _div(F32(1), dx)
    qx = _mul(nx, t)
    u = fma32(t, nx, -qx)
    qy = fma32(-dy, t, fma32(-dx, t, F32(1)))
    return qx, fma32(qx, qy, fma32(ny, t, u))


def _expk2f(dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sleef's double-float exp kernel: exp(dx + dy) as an unevaluated (hi, lo) pair."""
    q = _rint_i32(_mul(_add(dx, dy), R_LN2F))
    qf = q.astype(F32)
    sx, sy = _dfadd2_f2_f(dx, dy, _mul(qf, -L2UF))
    sx, sy = _dfadd2_f2_f(sx, sy, _mul(qf, -L2LF))
    u = F32(+0.1980960224e-3)
    u = fma32(u, sx, F32(+0.1394256484e-2))
    u = fma32(u, sx, F32(+0.8333456703e-2))
    u = fma32(u, sx, F32(+0.4166637361e-1))
    tx, ty = _dfmul_f2_f(sx, sy, u)
    tx, ty = _dfadd2_f2_f(tx, ty, F32(+0.166666659414234244790680580464e+0))
    tx, ty = _dfmul_f2_f2(sx, sy, tx, ty)
    tx, ty = _dfadd2_f2_f(tx, ty, F32(0.5))
    qx, qy = _dfsqu_f2(sx, sy)
    tx, ty = _dfmul_f2_f2(qx, qy, tx, ty)
    tx, ty = _dfadd2_f2_f2(sx, sy, tx, ty)
    tx, ty = _dfadd_f_f2(F32(1), tx, ty)
    tx = _ldexp2(tx, q)
    ty = _ldexp2(ty, q)
    tiny = dx < F32(-104)
    return np.where(tiny, F32(0), tx), np.where(tiny, F32(0), ty)


def sleef_expm1f(a: np.ndarray) -> np.ndarray:
    """Sleef_expm1f16_u10 (`xexpm1f`): exactly -1 below -16.6355, +inf above 88.7228."""
    a = np.asarray(a, F32)
    with np.errstate(all="ignore"):
        dx, dy = _expk2f(a, np.zeros_like(a))
        dx, dy = _dfadd2_f2_f(dx, dy, F32(-1.0))
        x = _add(dx, dy)
        x = np.where(a > F32(88.72283172607421875), F32(np.inf), x)
        x = np.where(a < F32(-16.635532333438687426013570), F32(-1), x)
        x = np.where((a == 0) & np.signbit(a), F32(-0.0), x)
        return np.asarray(np.where(np.isnan(a), a, x), F32)


def sleef_tanhf(x: np.ndarray) -> np.ndarray:
    """Sleef_tanhf16_u10 (`xtanhf`): (e - 1/e) / (e + 1/e) in double-float, e = exp(|x|)."""
    x = np.asarray(x, F32)
    with np.errstate(all="ignore"):
        ax = np.abs(x)
        dx, dy = _expk2f(ax, np.zeros_like(ax))
        ex, ey = _dfrec_f2(dx, dy)
        nx, ny = _dfadd_f2_f2(dx, dy, -ex, -ey)
        mx, my = _dfadd_f2_f2(dx, dy, ex, ey)
        qx, qy = _dfdiv_f2_f2(nx, ny, mx, my)
        y = _add(qx, qy)
        y = np.where((ax > F32(18.714973875)) | np.isnan(y), F32(1.0), y)
        y = np.copysign(y, x)
        return np.asarray(np.where(np.isnan(x), x, y), F32)


def vec_erf(x: np.ndarray) -> np.ndarray:
    """`Vectorized<float>::erf` (AVX512): Abramowitz-Stegun 7.1.26 with Sleef expf.

    t = 1 / fma(0.3275911, |x|, 1); r = Horner(p5..p1, t) with fma;
    erf = sign(x) * fma(-exp(-x*x) * t, r, 1).
    """
    x = np.asarray(x, F32)
    with np.errstate(all="ignore"):
        ax = np.abs(x)
        t = _div(F32(1), fma32(F32(0.3275911), ax, F32(1)))
        r = fma32(F32(1.061405429), t, F32(-1.453152027))
        r = fma32(r, t, F32(1.421413741))
        r = fma32(r, t, F32(-0.284496736))
        r = fma32(r, t, F32(0.254829592))
        e = -sleef_expf(-_mul(x, x))
        y = fma32(_mul(e, t), r, F32(1))
        return np.asarray(np.copysign(y, x), F32)


def exp_u20(x: np.ndarray) -> np.ndarray:
    """`Vectorized<float>::exp_u20` (AVX512): PyTorch's fast exp (softmax uses it).

    fx = floor(fma(clamp(x), log2e, 0.5)); r = x - fx*ln2 (fnmadd); degree-5 polynomial;
    result = p * 2^(fx-1) * 2, with 2^(fx-1) built from the exponent bits (0 below ln(FLT_MIN)).
    """
    x = np.asarray(x, F32)
    log2e = np.array([0x3FB8AA3B], np.int32).view(F32)[0]
    ln2 = np.array([0x3F317218], np.int32).view(F32)[0]
    ln_min = np.array([0xC2AEAC50], np.uint32).view(np.int32).view(F32)[0]
    ln_max = np.array([0x42B17218], np.int32).view(F32)[0]
    with np.errstate(all="ignore"):
        below = x < ln_min
        src = np.minimum(x, ln_max)
        src = np.maximum(src, ln_min).astype(F32)
        fx = np.floor(fma32(src, log2e, F32(0.5)).astype(F64))
        fx = np.clip(fx, -(2.0**31), 2.0**31 - 1).astype(F32)
        r = fma32(-fx, ln2, src)
        p = fma32(r, F32(0.00828929059), F32(0.0418978221))
        p = fma32(r, p, F32(0.166676521))
        p = fma32(r, p, F32(0.499991506))
        p = fma32(r, p, F32(0.999999701))
        p = fma32(r, p, F32(1.0))
        n = np.rint(_sub(fx, F32(1)).astype(F64)).astype(np.int64)
        bits = ((n + 127) & 0x1FF) << 23
        two_n = (bits & 0xFFFFFFFF).astype(np.uint32).view(np.int32).view(F32)
        two_n = np.where(below, F32(0), two_n)
        return _mul(_mul(p, two_n), F32(2))


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
            e = sleef_expf(_sub(rows, m[:, None]))
            s = _reduce_all(e, _add)
            return _mul(e, _div(F32(1), s)[:, None]).reshape(x.shape)
        xm = np.moveaxis(x, axis, 0)
        m = xm[0].copy()
        for d in range(1, xm.shape[0]):
            m = np.maximum(m, xm[d])
        e = np.stack([sleef_expf(_sub(xm[d], m)) for d in range(xm.shape[0])])
        s = np.zeros_like(m)
        for d in range(xm.shape[0]):
            s = _add(s, e[d])
        return np.moveaxis(_div(e, s), 0, axis)
