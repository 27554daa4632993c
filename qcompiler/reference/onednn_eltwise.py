"""oneDNN eltwise post-ops (leaky relu, tanh) inside the int8 matmul epilogue, exact.

PyTorch 2.13 has `quantized::linear_leaky_relu` and `quantized::linear_tanh` only on the onednn
engine (x86, fbgemm and qnnpack raise "Didn't find engine"). ideep appends the activation as an
eltwise post-op of the int8 matmul, so it runs in float32 between the bias add and the output
scaling of `requant.onednn_requantize`:

    v = f32(f32(f32(wrap32(acc)) * src_s) * wei_s);  v = f32(v + bias[o])   (as requant.py)
    v = v if v > 0 else f32(v * f32(negative_slope))                       leaky relu
      = tanh_f32(v)                                                         tanh (below)
    v = f32(f32(v * (1 / dst_s)) + f32(zo));  y = clip(rint(v), qmin, qmax)

`tanh_f32` is oneDNN's vectorized tanh (jit_uni_eltwise_injector, AVX-512/AVX2), not libm's:
|x| < 0x1.bb67aep-12 returns x; |x| >= 0x1.205966p3 returns +-1; in between a degree-6
polynomial in r = |x| - (|x| with its low 22 mantissa bits cleared), one polynomial per half
binade (32 tables of 7 float32 coefficients), evaluated with six float32 FMAs, sign reapplied.
It is within about 1 ulp of tanh but not correctly rounded: a float64 tanh gives 15 wrong
quantized outputs in 65.5M where this emulation gives 0 (K=1 sweeps over every (x-zx)*w
product; measured on torch 2.13, bundled oneDNN v3.12, AVX-512 VNNI).

The zero point of the output is added in float before rounding and the clamp is in float, so
there is no INT32_MIN trap here (unlike fbgemm). Activations may be quint8 or qint8; the output
dtype follows the input (PyTorch's onednn linear).
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir.types import DType, u8
from qcompiler.reference.requant import (
    ScalesLike,
    fma_f32_exact,
    onednn_scale,
    wrap_int32,
)

F32 = np.float32

# oneDNN's tanh polynomial table: row d holds the degree-d coefficient of the 32 polynomials
# (float32 bit patterns, copied from jit_uni_eltwise_injector.cpp, `tanh_polynomial_table`).
_TANH_TABLE_HEX = """
00000000 39bfffff 39ffffff 3a3ffffe 3a7ffffb 3abffff7 3affffeb 3b3fffdc
3b7fffab 3bbfff70 3bfffeab 3c3ffdc0 3c7ffaab 3cbff701 3cffeaad 3d3fdc08
3d7faacd 3dbf7081 3dfeacc9 3e3dc7fd 3e7acbf5 3eb77a9f 3eec9a9f 3f22991f
3f42f7d6 3f67b7cc 3f76ca83 3f7ebbe9 3f7fd40c 3f7fff32 3f7ffffc 3f800000
3f800000 3f800018 3f7fffe8 3f7fffda 3f7fffdc 3f7fffdc 3f7fffac 3f7fff70
3f7ffeec 3f7ffdc0 3f7ffbed 3f7ff704 3f7feff5 3f7fdbca 3f7fbfff 3f7f7041
3f7f009b 3f7dc36c 3f7c0aa8 3f7734b8 3f70a4de 3f5f1fd8 3f495493 3f18b9ec
3ed706cb 3e390b06 3d90b11f 3c21a053 3aaf7fdb 37ccc1a3 355c6733 00000000
00000000 be4e0ff1 3d25b1b1 3d6b6dab 3c9fb1d5 babff06f 3c07b3f6 bb3fc1bc
3a9f5921 bbbf06f2 bbb0f402 bc47db9e bc73d5e7 bca25bda bcfca780 bd40e07c
bd7dab03 bdbe4a0f bdfb14a5 be36cc8d be6bd102 be9fe7c5 beba0f10 bec206a8
bea3c388 be277d62 bd8b7960 bc209f49 baad44ca b7c6eeac b663aa41 00000000
00000000 45b3ae96 c414eb20 c450e02e c3152b4e bead2f56 c2162e02 beb4bd5a
c11a59a4 bed2f507 c020d32c 3dd0f506 bf2a75e2 bff950e3 bed47334 be809b8c
beb64532 be961a5b be9b63ac bea0d4b2 be828a77 be378612 bdc20908 3d2d3957
3dd46e89 3db3f629 3d2c5e7b 3bd20403 3a59dfae 3770af45 372cc014 00000000
00000000 cc981a1b 4a7edd3d 4ab1007c 48fedd9c 41a557b5 477ee32a 422557f5
45ff3ce4 42a55641 446e0867 c33dc19a 42915214 43af4fad 4110fe88 c1099b75
3fc8a8dc bfbeaef5 be365aad 3f4d9652 3ddfa08f 3e34e9b8 3e2d07a6 3dc63567
3cdaeb78 bcd17537 bc92829c bb43ab99 b9b471dd b6baad5a b78bafc7 00000000
00000000 52f688d5 d0505c72 d08f98e3 ce505cc9 c7162b8a cc5061d6 c7162bdf
ca50b37f c7162a3a c8422086 471a714e c5ece1f1 c70e3d90 c3eba94a 43e0c424
c21f4552 42217cc8 405e7dc4 c10dd401 3e96b602 bd1a6d2f bd393883 bd674682
bd310016 b961e269 3ba32495 3a7680d5 38b3173c 35a9deea 375c3f2a 00000000
00000000 d8995ed1 558285ea 55b2cd69 53028625 4bc9991f 5082898a 4b4999b3
4e02c07c 4ac99764 4b72c822 ca40c0e1 489413e4 49b12224 46134c4e c60c2d57
43c83910 c3c872d1 c186bc9e 42325bc3 bf2ffa4a 3d9a203c bc545a43 bae08fee
3c80225d 3b1fd1df ba36b9d1 b91de544 b71f100f b408e2ed b685fec8 00000000
"""
TANH_POLY = (np.array([int(h, 16) for h in _TANH_TABLE_HEX.split()], dtype=np.uint32)
             .view(F32).reshape(7, 32))
"""TANH_POLY[d, i]: coefficient of r**d in polynomial i."""

_TANH_IDX_BIAS = np.uint32(0x39800000)      # 0x1p-12: table index 0 starts here
_TANH_IDX_MASK = np.uint32(0xFFC00000)      # sign, exponent and the top mantissa bit
_TANH_LINEAR_UBOUND = np.uint32(0x39DDB3D7).view(F32)        # below: tanh(x) = x
_TANH_SATURATION_LBOUND = np.uint32(0x41102CB3).view(F32)    # at or above: tanh(x) = 1


def tanh_f32(v: np.ndarray) -> np.ndarray:
    """oneDNN's float32 tanh (the eltwise_tanh post-op), bit for bit.

        a = |v|;  i = ((bits(a) - 0x39800000) & 0xffc00000) >> 22   (low 5 bits: 0..30)
        r = a - float(bits(a) & 0xffc00000)                          exact
        p = c6[i];  p = fma(p, r, c_d[i]) for d = 5..0
        t = a if a < 0x1.bb67aep-12 else (p if a < 0x1.205966p3 else 1);  tanh = copysign(t, v)
    """
    x = np.asarray(v, dtype=F32)
    bits = x.view(np.uint32)
    sign = bits & np.uint32(0x80000000)
    abits = bits & np.uint32(0x7FFFFFFF)
    a = abits.view(F32)
    with np.errstate(over="ignore", invalid="ignore"):
        # vpermt2ps reads the low 5 bits of the index (two 16-entry registers).
        idx = (((abits - _TANH_IDX_BIAS) & _TANH_IDX_MASK) >> np.uint32(22)) & np.uint32(31)
        r = (a - (abits & _TANH_IDX_MASK).view(F32)).astype(F32)
        p = TANH_POLY[6][idx]
        for d in range(5, -1, -1):
            p = fma_f32_exact(p, r, TANH_POLY[d][idx])
    t = np.where(_TANH_SATURATION_LBOUND > a, p, F32(1.0)).astype(F32)
    t = np.where(_TANH_LINEAR_UBOUND > a, a, t).astype(F32)
    return (t.view(np.uint32) ^ sign).view(F32)


def leaky_relu_f32(v: np.ndarray, negative_slope: float) -> np.ndarray:
    """oneDNN's eltwise_relu with alpha: v if v > 0 else f32(v * f32(alpha))."""
    x = np.asarray(v, dtype=F32)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(x > 0, x, (x * F32(negative_slope)).astype(F32)).astype(F32)


ELTWISE_POST_OPS = ("relu", "leaky_relu", "tanh")


def onednn_linear_requantize(acc: np.ndarray, x_scale: float, w_scales: ScalesLike,
                             out_scale: float, out_zp: int, *, bias: np.ndarray | None,
                             post_op: str, negative_slope: float = 0.0,
                             channel_axis: int = -1, out_dtype: DType = u8) -> np.ndarray:
    """PyTorch's onednn linear epilogue with an eltwise post-op (module doc has the formula).

    The steps before and after the post-op are those of `requant.onednn_requantize` with
    `reinvert_w_scales=True` (linear weights: wei_s = 1/f32(1/f32(sw))); they are repeated here
    so the activation can sit between the bias add and the output scaling.
    """
    if post_op not in ELTWISE_POST_OPS:
        raise ValueError(f"unknown oneDNN post-op {post_op!r}; known: {ELTWISE_POST_OPS}")
    n = acc.shape[channel_axis]
    shape = [1] * acc.ndim
    shape[channel_axis] = n
    src_s = onednn_scale(x_scale)
    dinv = F32(1.0) / onednn_scale(out_scale)
    wei_s = np.broadcast_to(np.asarray(w_scales, dtype=np.float64), (n,)).astype(F32)
    wei_s = (F32(1.0) / (F32(1.0) / wei_s).astype(F32)).astype(F32)
    with np.errstate(over="ignore", invalid="ignore"):
        v = wrap_int32(acc).astype(F32)
        v = (v * src_s).astype(F32)
        v = (v * wei_s.reshape(shape)).astype(F32)
        if bias is not None:
            v = (v + np.asarray(bias, dtype=F32).reshape(shape)).astype(F32)
        if post_op == "relu":
            v = np.maximum(v, F32(0.0))
        elif post_op == "leaky_relu":
            v = leaky_relu_f32(v, negative_slope)
        else:
            v = tanh_f32(v)
        v = (v * dinv).astype(F32)
        v = (v + F32(out_zp)).astype(F32)
        r = np.clip(np.nan_to_num(np.rint(v.astype(np.float64)), nan=0.0), out_dtype.qmin,
                    out_dtype.qmax)
    return r.astype(out_dtype.np)
