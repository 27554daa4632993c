#!/usr/bin/env python3
"""Bit-exact numpy reference for PyTorch quantized CPU elementwise / pooling kernels,
plus a self-check against torch (run: python3 elementwise_check.py [--quick]).

Target: torch 2.13.0+cpu, x86 engine, AVX512 CPU capability (Vectorized<quint8>::size()==64,
Vectorized<float>::size()==16).  See elementwise_numerics.md for the explanation.

Conventions
 * all float math is float32 unless noted; np.rint == round-half-to-even (== nearbyint / cvtps).
 * fma(a,b,c) is emulated exactly enough with np.longdouble (x87 80-bit, 64-bit mantissa):
   a*b of two f32 is exact there, the add is exact for the magnitudes that matter, then one
   rounding to f32.
 * "vec region" / "tail region": TensorIterator's cpu_kernel_vec runs the vectorized lambda on
   floor(run/64)*64 elements of every contiguous inner run and the scalar lambda on the rest.
   For a contiguous, non-broadcast tensor the run is the whole tensor (with 1 thread; see
   memo for multi-threaded chunking).
"""
import sys, warnings
import numpy as np
import torch
import torch.nn.functional as F
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.functional as qF

warnings.filterwarnings("ignore")
f32 = np.float32
LD = np.longdouble
VEC = 64          # Vectorized<quint8/qint8>::size() on AVX512
FVEC = 16         # Vectorized<float>::size() on AVX512
LIM = {torch.quint8: (0, 255), torch.qint8: (-128, 127), torch.qint32: (-2**31, 2**31 - 1)}
NPT = {torch.quint8: np.uint8, torch.qint8: np.int8, torch.qint32: np.int32}


# ----------------------------------------------------------------------------- primitives
def fma32(a, b, c):
    """float32 fma(a,b,c) (single rounding)."""
    return (np.asarray(a, f32).astype(LD) * np.asarray(b, f32).astype(LD)
            + np.asarray(c, f32).astype(LD)).astype(f32)


def inv_f(scale):            # 1.0f / (float)scale      (most kernels)
    return f32(1) / f32(scale)


def inv_d(scale):            # (float)(1.0 / (double)scale)   (qcat NHWC vector path)
    return f32(1.0 / scale)


def _clip(v, lo, hi):
    # clip in float64: float32(2**31-1) would round up to 2**31
    return np.clip(np.asarray(v, np.float64), lo, hi).astype(np.int64)


def quant_fbgemm(x, scale, zp, lo, hi):
    """torch.quantize_per_tensor quint8/qint8 (fbgemm Quantize, LEGACY fma):
       q = clamp(rint( fma(x, 1f/scale, zp) ))  -- zp added inside one fused rounding."""
    t = fma32(x, inv_f(scale), f32(zp))
    out = np.rint(t)
    out = np.where(np.isnan(t), hi, out)          # NaN -> qmax for 8-bit types
    return _clip(out, lo, hi)


def quant_val(x, scale, zp, lo, hi, inv=None):
    """at::native::quantize_val (scalar path everywhere, per-channel quantize, qint32 quantize):
       q = clamp(rint( (float)zp + x*(1f/scale) ))   (two f32 roundings, zp before rint)"""
    inv = inv_f(scale) if inv is None else inv
    t = f32(zp) + np.asarray(x, f32) * inv
    return _clip(np.rint(t), lo, hi)


def quant_vec(x, scale, zp, lo, hi, inv=None):
    """Vectorized<qint>::quantize (QuantizeAvx512): q = clamp(zp + rint(x*inv))  (zp after rint)"""
    inv = inv_f(scale) if inv is None else inv
    return _clip(zp + np.rint(np.asarray(x, f32) * inv), lo, hi)


def deq_sub(q, scale, zp):
    """scalar dequantize_val and Tensor.dequantize(): (float)(q - zp) * (float)scale"""
    return (np.asarray(q, np.int64) - zp).astype(f32) * f32(scale)


def deq_fma(q, scale, zp):
    """Vectorized<qint>::dequantize(scale, zp, scale_zp_premul): fma(q, s, -(zp*s))"""
    s = f32(scale)
    return fma32(np.asarray(q).astype(f32), s, -(f32(zp) * s))


def split_vec(n, run=None):
    """boolean mask: True where the element is handled by the vectorized lambda."""
    run = n if run is None else run
    idx = np.arange(n) % run
    return idx < (run // VEC) * VEC


# ----------------------------------------------------------------------------- quantize / dequantize
def ref_quantize_per_tensor(x, scale, zp, dtype):
    lo, hi = LIM[dtype]
    x = np.asarray(x, f32)
    if dtype == torch.qint32:
        t = f32(zp) + x * inv_f(scale)
        out = np.where(np.isnan(t), lo, np.rint(t))   # NaN -> INT32_MIN
        return _clip(np.clip(out, lo, hi), lo, hi)
    return quant_fbgemm(x, scale, zp, lo, hi)


def ref_quantize_per_channel(x, scales, zps, axis, dtype):
    lo, hi = LIM[dtype]
    shp = [1] * x.ndim; shp[axis] = -1
    s = np.asarray(scales, np.float64).astype(f32).reshape(shp)
    z = np.asarray(zps).reshape(shp).astype(f32)
    t = z + np.asarray(x, f32) * (f32(1) / s)
    return _clip(np.rint(t), lo, hi)


def ref_dequantize(q, scale, zp, dtype=torch.quint8):
    q = np.asarray(q, np.int64)
    if dtype == torch.qint32:          # int32 wrap-around of (q - zp)
        d = ((q - zp + 2**31) % 2**32) - 2**31
        return d.astype(f32) * f32(scale)
    return deq_sub(q, scale, zp)


def ref_dequantize_per_channel(q, scales, zps, axis):
    shp = [1] * q.ndim; shp[axis] = -1
    d = (np.asarray(q, np.int64) - np.asarray(zps).reshape(shp)).astype(np.float64)
    return (d * np.asarray(scales, np.float64).reshape(shp)).astype(f32)   # double math!


# ----------------------------------------------------------------------------- binary ops
def ref_add(a, sa, za, b, sb, zb, so, zo, dtype, relu=False, vecmask=None):
    """quantized::add / add_relu, same-shape contiguous inputs (flattened)."""
    lo, hi = LIM[dtype]
    a = np.asarray(a).ravel(); b = np.asarray(b).ravel()
    vm = split_vec(a.size) if vecmask is None else vecmask
    cv = deq_fma(a, sa, za) + deq_fma(b, sb, zb)
    cs = deq_sub(a, sa, za) + deq_sub(b, sb, zb)
    if relu:
        cv = np.maximum(cv, f32(0)); cs = np.maximum(cs, f32(0))
    return np.where(vm, quant_vec(cv, so, zo, lo, hi), quant_val(cs, so, zo, lo, hi))


def ref_mul(a, sa, za, b, sb, zb, so, zo, dtype, relu=False):
    """quantized::mul / mul_relu (identical in vector and scalar paths)."""
    lo, hi = LIM[dtype]
    m = f32(sa) * f32(sb) * inv_f(so)                       # left-to-right, float32
    prod = ((np.asarray(a, np.int64) - za) * (np.asarray(b, np.int64) - zb)).astype(f32)
    out = _clip(zo + np.rint(prod * m), lo, hi)
    return np.maximum(out, zo) if relu else out


def ref_add_scalar(a, s, z, c, dtype, relu=False):
    """quantized::add_scalar(_relu): returns (q, out_scale, out_zp)."""
    lo, hi = LIM[dtype]
    a = np.asarray(a, np.int64)
    cq = int(np.rint(c / s))                                  # double, half-even
    if lo > z - cq:
        sp = (hi - (z - cq)) / (hi - lo) * s; zp = lo
    elif hi < z - cq:
        sp = ((z - cq) - lo) / (hi - lo) * s; zp = hi
    else:                                                    # only the zero point moves
        q = np.maximum(a, z - cq) if relu else a.copy()
        return q, s, z - cq
    mult = f32(s) * inv_f(sp)
    q = _clip(zp + np.rint(((a - z) + cq).astype(f32) * mult), lo, hi)
    if relu:
        q = np.maximum(q, zp)
    return q, sp, zp


def ref_mul_scalar(a, s, z, c, dtype, relu=False):
    """quantized::mul_scalar(_relu): returns (q, out_scale, out_zp). Values never re-rounded."""
    lo, hi = LIM[dtype]
    a = np.asarray(a, np.int64)
    if c > 0:
        return (np.maximum(a, z) if relu else a.copy()), c * s, z
    if c == 0:                                               # also -0.0
        return np.zeros_like(a), 1.0, 0
    zp = hi - (z - lo)
    q = hi + lo - a
    if relu:
        q = np.maximum(q, zp)
    return q, abs(c) * s, zp


def ref_cat(xs, scales, zps, so, zo, dtype, relu=False, nhwc=False):
    """quantized::cat(_relu) along dim=1.  nhwc=True iff every input is 4-D and
       is_contiguous(channels_last) (note: NCHW tensors with H==W==1 qualify!)."""
    lo, hi = LIM[dtype]
    parts = []
    for x, s, z in zip(xs, scales, zps):
        x = np.asarray(x, np.int64)
        if not nhwc:                                        # dequantize() -> cat -> quantize_per_tensor
            parts.append(quant_fbgemm(deq_sub(x, s, z), so, zo, lo, hi))
            continue
        if s == so and z == zo and not relu:                # memcpy fast path
            parts.append(x); continue
        C = x.shape[1]; cv = C // 8 * 8                       # 64-, 16- and 8-wide vector blocks
        dv, ds = deq_fma(x, s, z), deq_sub(x, s, z)
        if relu:
            dv, ds = np.maximum(dv, f32(0)), np.maximum(ds, f32(0))
        o = np.empty_like(x)
        o[:, :cv] = quant_vec(dv[:, :cv], so, zo, lo, hi, inv=inv_d(so))   # NB (float)(1.0/scale)
        o[:, cv:] = quant_val(ds[:, cv:], so, zo, lo, hi)
        parts.append(o)
    out = np.concatenate(parts, 1)
    if relu and not nhwc:
        out = np.maximum(out, zo)
    return out


# ----------------------------------------------------------------------------- unary activations
def ref_relu(q, s, z, dtype):
    return np.maximum(np.asarray(q, np.int64), z)


def ref_clamp(q, s, z, dtype, mn=None, mx=None):
    """hardtanh / clamp / relu6 (relu6: mn=None->zp, mx=6.0): bounds via quantize_val."""
    lo, hi = LIM[dtype]
    q = np.asarray(q, np.int64)
    if mn is not None:
        q = np.maximum(q, quant_val(np.array([mn], f32), s, z, lo, hi)[0])
    if mx is not None:
        q = np.minimum(q, quant_val(np.array([mx], f32), s, z, lo, hi)[0])
    return q


def ref_relu6(q, s, z, dtype):
    lo, hi = LIM[dtype]
    six = quant_val(np.array([6.0], f32), s, z, lo, hi)[0]
    return np.minimum(np.maximum(np.asarray(q, np.int64), z), six)


def _unary(q, s, z, so, zo, dtype, fv, fs, inv_vec=None):
    """generic dequant -> f -> quant kernel (cpu_kernel_vec)."""
    lo, hi = LIM[dtype]
    q = np.asarray(q).ravel()
    vm = split_vec(q.size)
    yv = fv(deq_fma(q, s, z)); ys = fs(deq_sub(q, s, z))
    return np.where(vm, quant_vec(yv, so, zo, lo, hi, inv=inv_vec), quant_val(ys, so, zo, lo, hi))


def ref_hardswish(q, s, z, so, zo, dtype):
    def f(d):
        return d * np.minimum(np.maximum(d + f32(3), f32(0)), f32(6)) / f32(6)
    return _unary(q, s, z, so, zo, dtype, f, f)


def hardsigmoid_qparams(dtype):
    return 1.0 / 256, (0 if dtype == torch.quint8 else -128)


def ref_hardsigmoid(q, s, z, dtype):
    so, zo = hardsigmoid_qparams(dtype)
    def f(d):
        return np.minimum(np.maximum(d + f32(3), f32(0)), f32(6)) / f32(6)
    return _unary(q, s, z, so, zo, dtype, f, f)


def ref_leaky_relu(q, s, z, so, zo, dtype, slope):
    neg = f32(slope)
    def f(d):
        return np.where(d > 0, d, d * neg)
    return _unary(q, s, z, so, zo, dtype, f, f)


# --- transcendental ops: vector path uses Sleef (u10), scalar path uses glibc.
R_LN2f = f32(1.442695040888963407359924681001892137426645954152985934135449406931)
L2Uf = f32(0.693145751953125)
L2Lf = f32(1.428606765330187045e-06)


def sleef_expf(d):
    """Emulation of Sleef_expf16_u10 (AVX512, FMA)."""
    d = np.asarray(d, f32)
    q = np.rint(d * R_LN2f).astype(np.int32)
    qf = q.astype(f32)
    s = fma32(qf, -L2Uf, d)
    s = fma32(qf, -L2Lf, s)
    u = f32(0.000198527617612853646278381)
    u = fma32(u, s, f32(0.00139304355252534151077271))
    u = fma32(u, s, f32(0.00833336077630519866943359))
    u = fma32(u, s, f32(0.0416664853692054748535156))
    u = fma32(u, s, f32(0.166666671633720397949219))
    u = fma32(u, s, f32(0.5))
    u = f32(1) + fma32(s * s, u, s)
    q1 = q >> 1
    u = (u * np.ldexp(f32(1), q1).astype(f32)) * np.ldexp(f32(1), q - q1).astype(f32)
    u = np.where(d < f32(-104), f32(0), u)
    u = np.where(d > f32(100), f32(np.inf), u)
    return u.astype(f32)


def glibc_expf(d):          # correctly-rounded expf (glibc expf is CR in practice)
    return np.exp(np.asarray(d, f32).astype(np.float64)).astype(f32)


def sigmoid_qparams(dtype):
    if dtype == torch.quint8:
        return 1.0 / 256, 0
    if dtype == torch.qint8:
        return 1.0 / 256, -128
    return 2.3283064365386963e-10, 0


def ref_sigmoid(q, s, z, dtype):
    so, zo = sigmoid_qparams(dtype)
    fv = lambda d: f32(1) / (f32(1) + sleef_expf(-d))
    fs = lambda d: (1.0 / (1.0 + glibc_expf(-d).astype(np.float64))).astype(f32)
    return _unary(q, s, z, so, zo, dtype, fv, fs, inv_vec=f32(1.0 / so))


def tanh_qparams(dtype):
    return (2.0 / 256, 128) if dtype == torch.quint8 else (2.0 / 256, 0)


def ref_tanh(q, s, z, dtype):
    """Vector path = Sleef_tanhf16_u10 (NOT emulated: np.tanh float32 used), scalar = glibc tanhf."""
    so, zo = tanh_qparams(dtype)
    fv = lambda d: np.tanh(d)
    fs = lambda d: np.tanh(d.astype(np.float64)).astype(f32)
    return _unary(q, s, z, so, zo, dtype, fv, fs)


def ref_elu(q, s, z, so, zo, dtype, alpha=1.0, scale=1.0, input_scale=1.0):
    """qF.elu(q, so, zo, alpha); vector: Sleef expf; scalar: glibc expf."""
    lo, hi = LIM[dtype]
    a, sc, isc = f32(alpha), f32(scale), f32(input_scale)
    q = np.asarray(q).ravel(); n = q.size
    vm = split_vec(n)
    dv = deq_fma(q, s, z)
    neg = (sleef_expf(dv * isc) - f32(1)) * a
    yv = np.where(dv > 0, dv, neg)
    # the vector code only evaluates the negative branch if some lane of the 16-wide float
    # vector is <= 0; the blend makes that irrelevant for the result.
    yv = yv * sc
    ds = deq_sub(q, s, z)
    ys = np.where(ds >= 0, ds * sc, (glibc_expf(ds * isc) - f32(1)) * a * sc)
    return np.where(vm, quant_vec(yv, so, zo, lo, hi, inv=f32(1.0 / f32(so))),
                    quant_val(ys, so, zo, lo, hi))


# ----------------------------------------------------------------------------- pooling
def pool_out_size(i, k, s, p, d, ceil):
    o = (i + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (o - 1) * s >= i + p:
        o -= 1
    return o


def ref_max_pool2d(x, k, st, p, dil, ceil, dtype):
    lo, hi = LIM[dtype]
    x = np.asarray(x, np.int64)
    N, C, H, W = x.shape
    OH = pool_out_size(H, k[0], st[0], p[0], dil[0], ceil)
    OW = pool_out_size(W, k[1], st[1], p[1], dil[1], ceil)
    xp = np.full((N, C, H + 2 * p[0] + k[0] * dil[0], W + 2 * p[1] + k[1] * dil[1]), lo, np.int64)
    xp[:, :, p[0]:p[0] + H, p[1]:p[1] + W] = x
    out = np.full((N, C, OH, OW), lo, np.int64)
    for i in range(k[0]):
        for j in range(k[1]):
            hs = i * dil[0]; ws = j * dil[1]
            sl = xp[:, :, hs:hs + (OH - 1) * st[0] + 1:st[0], ws:ws + (OW - 1) * st[1] + 1:st[1]]
            out = np.maximum(out, sl)
    return out


def ref_avg_pool2d(x, z, k, st, p, ceil, cip, divo, dtype, nhwc):
    """F.avg_pool2d on quantized (output qparams = input qparams).
       NCHW: rint( (float)acc * m + (float)zp )            (two roundings, zp before rint)
       NHWC: channels c < C//16*16 : zp + rint((float)acc * m)          (QuantizeAvx512)
             remaining channels    : quantize_val(1.0f/m, zp, acc)  = rint(zp + acc*(1f/(1f/m)))
       with acc = sum(window q) - zp*valid_count (int), m = 1.0f/divide_factor (in_scale==out_scale)."""
    lo, hi = LIM[dtype]
    x = np.asarray(x, np.int64)
    N, C, H, W = x.shape
    OH = pool_out_size(H, k[0], st[0], p[0], 1, ceil)
    OW = pool_out_size(W, k[1], st[1], p[1], 1, ceil)
    out = np.zeros((N, C, OH, OW), np.int64)
    cv = C // FVEC * FVEC
    for oh in range(OH):
        hs = oh * st[0] - p[0]; he = min(hs + k[0], H + p[0]); ph = he - hs
        hs2, he2 = max(hs, 0), min(he, H)
        for ow in range(OW):
            ws = ow * st[1] - p[1]; we = min(ws + k[1], W + p[1]); pw = we - ws
            ws2, we2 = max(ws, 0), min(we, W)
            cnt = (he2 - hs2) * (we2 - ws2)
            div = divo if divo else (ph * pw if cip else cnt)
            m = f32(1) / f32(div)                       # input_scale/output_scale == 1
            acc = (x[:, :, hs2:he2, ws2:we2].sum((2, 3)) - cnt * z).astype(f32)
            if not nhwc:
                out[:, :, oh, ow] = _clip(np.rint(acc * m + f32(z)), lo, hi)
            else:
                o = quant_val(acc, 1.0, z, lo, hi, inv=f32(1) / (f32(1) / m))
                o[:, :cv] = _clip(z + np.rint(acc[:, :cv] * m), lo, hi)
                out[:, :, oh, ow] = o
    return out


def _adapt_idx(o, O, I):
    s = int(np.floor(f32(o * I) / f32(O)))
    e = int(np.ceil(f32((o + 1) * I) / f32(O)))
    return s, e


def ref_adaptive_avg_pool2d(x, z, OH, OW, dtype, nhwc):
    """F.adaptive_avg_pool2d on quantized (output qparams = input qparams).
       NCHW: rint( (float)sum(raw q) * r ), r = ((1.0f/1)/kH)/kW in float -- zp never used, no clamp.
       NHWC: acc = sum(q) - zp*cnt; inv = 1f/(1f/m), m = 1.0f/cnt
             channels c < C//8*8   : rint(fma(acc, inv, zp))   (fbgemm quantize_vec with scale 1/m)
             remaining channels    : rint(zp + acc*inv)         (quantize_val)"""
    lo, hi = LIM[dtype]
    x = np.asarray(x, np.int64)
    N, C, H, W = x.shape
    out = np.zeros((N, C, OH, OW), np.int64)
    cv = C // 8 * 8               # NB: 8, not 16 (unlike avg_pool2d NHWC)
    for oh in range(OH):
        hs, he = _adapt_idx(oh, OH, H)
        for ow in range(OW):
            ws, we = _adapt_idx(ow, OW, W)
            kh, kw = he - hs, we - ws
            if not nhwc:
                r = (f32(1.0) / f32(kh)) / f32(kw)
                out[:, :, oh, ow] = np.rint(x[:, :, hs:he, ws:we].sum((2, 3)).astype(f32) * r)
            else:
                cnt = kh * kw
                m = f32(1) / f32(cnt)
                inv = f32(1) / (f32(1) / m)
                acc = (x[:, :, hs:he, ws:we].sum((2, 3)) - cnt * z).astype(f32)
                o = _clip(np.rint(f32(z) + acc * inv), lo, hi)
                o[:, :cv] = _clip(np.rint(fma32(acc[:, :cv], inv, f32(z))), lo, hi)
                out[:, :, oh, ow] = o
    return out


# ============================================================================= self-check
BASES = [0.1, 0.3, 0.01, 1 / 3, 0.02, 1 / 255, 0.05, 0.125, 0.7, 1e-6, 3e-5, 0.0123, 2.5, 100.0,
         0.00214854861, 0.047, 7.7, 1.0]
RATIOS = [1, 2, 0.5, 4, 3, 1.5, 0.25, 1 / 3]


def tie_scales(rng, k):
    """scales related by simple ratios -> results land exactly on / next to .5 ties"""
    b = float(rng.choice(BASES))
    if rng.random() < 0.2:
        b = float(np.exp(rng.uniform(np.log(1e-6), np.log(1e2))))
    return [b * float(rng.choice(RATIOS)) for _ in range(k)]


def zps(rng, dt, k):
    lo, hi = LIM[dt]
    return [int(rng.choice([lo, hi, 0, (lo + hi + 1) // 2, rng.integers(lo, hi + 1)])) for _ in range(k)]


def qvals(rng, dt, shape):
    lo, hi = LIM[dt]
    x = rng.integers(lo, hi + 1, shape)
    m = rng.random(shape)
    x = np.where(m < 0.05, lo, np.where(m > 0.95, hi, x))   # extra mass on range ends
    return x


def mkq(q, s, z, dt):
    return torch._make_per_tensor_quantized_tensor(
        torch.from_numpy(np.ascontiguousarray(q).astype(NPT[dt])), s, z)


def ir(t):
    return t.int_repr().numpy().astype(np.int64)


LENS = [1, 7, 33, 63, 64, 65, 67, 127, 128, 129, 1000]
DTS = [torch.quint8, torch.qint8]


class Tally:
    def __init__(self):
        self.rows = {}

    def add(self, name, ref, got, ok_meta=True):
        ref = np.asarray(ref).ravel(); got = np.asarray(got).ravel()
        r = self.rows.setdefault(name, [0, 0, 0, 0])
        eq = (ref == got)
        r[0] += int(eq.sum()) if ok_meta else 0
        r[1] += ref.size
        if ref.size:
            d = np.abs(ref.astype(np.float64) - got.astype(np.float64))
            d = d[np.isfinite(d)]
            r[2] = max(r[2], float(d.max()) if d.size else 0)
        r[3] += int(not ok_meta)

    def report(self):
        bad = 0
        print(f"{'check':48s} {'match':>10s} / {'total':>9s}  {'mismatch%':>9s} maxdiff meta_err")
        for k, (m, t, md, me) in self.rows.items():
            pct = 100.0 * (t - m) / max(t, 1)
            info = k.startswith("INFO")
            flag = "" if m == t else ("   (informational)" if info else "   <-- MISMATCH")
            bad += (m != t) and not info
            print(f"{k:48s} {m:10d} / {t:9d}  {pct:9.5f} {md:7g} {me:3d}{flag}")
        return bad


def check_all(quick=False):
    torch.set_num_threads(1)
    rng = np.random.default_rng(2024)
    T = Tally()
    R = 1 if quick else 3

    # ---------------- quantize_per_tensor
    for _ in range(120 * R):
        dt = [torch.quint8, torch.qint8, torch.qint32][rng.integers(0, 3)]
        n = int(rng.choice(LENS))
        s = tie_scales(rng, 1)[0]
        z = zps(rng, dt, 1)[0] if dt != torch.qint32 else int(rng.integers(-1000, 1000))
        k = rng.integers(-600, 600, n)
        x = np.where(rng.random(n) < 0.6, k * 0.5 * f32(s), rng.standard_normal(n) * s * 150).astype(f32)
        t = ir(torch.quantize_per_tensor(torch.from_numpy(x), s, z, dt))
        T.add(f"quantize_per_tensor {str(dt)[6:]}", ref_quantize_per_tensor(x, s, z, dt), t)
    special = np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e10, -1e10, -0.0, 1e-45] * 5, f32)
    for dt in [torch.quint8, torch.qint8, torch.qint32]:
        for z in ([0, 10] if dt != torch.qint32 else [0, 10, -10]):
            t = ir(torch.quantize_per_tensor(torch.from_numpy(special), 1.0, z, dt))
            T.add(f"quantize_per_tensor specials {str(dt)[6:]}", ref_quantize_per_tensor(special, 1.0, z, dt), t)

    # ---------------- quantize_per_channel / dequantize
    for _ in range(60 * R):
        dt = [torch.quint8, torch.qint8, torch.qint32][rng.integers(0, 3)]
        lo, hi = LIM[dt]
        shape, axis = [((3, 5), 0), ((4, 7), 1), ((2, 3, 5, 7), 1), ((2, 5, 3, 33), 1), ((2, 8, 67), 2),
                       ((5, 1000), 0), ((2, 16, 4, 4), 1)][rng.integers(0, 7)]
        C = shape[axis]
        sc = np.exp(rng.uniform(np.log(1e-6), np.log(1e2), C))
        if rng.random() < 0.5:
            sc = np.array(tie_scales(rng, C))
        zp = rng.integers(max(lo, -300), min(hi, 300) + 1, C)
        bs = [1] * len(shape); bs[axis] = C
        kk = rng.integers(-400, 400, shape)
        x = np.where(rng.random(shape) < 0.5, kk * 0.5 * sc.astype(f32).reshape(bs),
                     rng.standard_normal(shape) * sc.reshape(bs) * 100).astype(f32)
        xt = torch.from_numpy(x)
        if len(shape) == 4 and rng.random() < 0.5:
            xt = xt.contiguous(memory_format=torch.channels_last)
        qt = torch.quantize_per_channel(xt, torch.from_numpy(sc), torch.from_numpy(zp), axis, dt)
        T.add(f"quantize_per_channel {str(dt)[6:]}", ref_quantize_per_channel(x, sc, zp, axis, dt), ir(qt))
        T.add(f"dequantize per_channel {str(dt)[6:]}",
              ref_dequantize_per_channel(ir(qt), sc, zp, axis).view(np.int32),
              qt.dequantize().numpy().view(np.int32))
    for _ in range(100 * R):
        dt = [torch.quint8, torch.qint8, torch.qint32][rng.integers(0, 3)]
        n = int(rng.choice(LENS))
        s = tie_scales(rng, 1)[0]
        if dt == torch.qint32:
            z = int(rng.integers(-1000, 1000)); q = rng.integers(-2**31, 2**31, n)
        else:
            z = zps(rng, dt, 1)[0]; q = qvals(rng, dt, n)
        d = mkq(q, s, z, dt).dequantize().numpy()
        T.add(f"dequantize per_tensor {str(dt)[6:]} (f32 bits)", ref_dequantize(q, s, z, dt).view(np.int32), d.view(np.int32))

    # ---------------- add / mul (+relu)
    for _ in range(100 * R):
        dt = DTS[rng.integers(0, 2)]
        n = int(rng.choice(LENS))
        sa, sb, so = tie_scales(rng, 3); za, zb, zo = zps(rng, dt, 3)
        a, b = qvals(rng, dt, n), qvals(rng, dt, n)
        A, B = mkq(a, sa, za, dt), mkq(b, sb, zb, dt)
        for relu in (False, True):
            op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
            T.add(f"add{'_relu' if relu else ''}", ref_add(a, sa, za, b, sb, zb, so, zo, dt, relu), ir(op(A, B, so, zo)))
            op = torch.ops.quantized.mul_relu if relu else torch.ops.quantized.mul
            T.add(f"mul{'_relu' if relu else ''}", ref_mul(a, sa, za, b, sb, zb, so, zo, dt, relu), ir(op(A, B, so, zo)))
    # broadcasting: inner contiguous run decides the vector/tail split
    for _ in range(40 * R):
        dt = DTS[rng.integers(0, 2)]
        R0, Cn = int(rng.integers(1, 5)), int(rng.choice([7, 67, 130]))
        sa, sb, so = tie_scales(rng, 3); za, zb, zo = zps(rng, dt, 3)
        a = qvals(rng, dt, (R0, Cn))
        for bshape in [(1, Cn), (R0, 1), (1, 1)]:
            b = qvals(rng, dt, bshape)
            bb = np.broadcast_to(b, (R0, Cn))
            got = ir(torch.ops.quantized.add(mkq(a, sa, za, dt), mkq(b, sb, zb, dt), so, zo))
            run = Cn if bshape != (1, 1) else R0 * Cn   # (1,1): whole tensor is one run
            vm = split_vec(R0 * Cn, run)
            T.add(f"add broadcast b{bshape[0]>1 and 'col' or 'row'}", ref_add(a, sa, za, bb, sb, zb, so, zo, dt, vecmask=vm), got)
            got = ir(torch.ops.quantized.mul(mkq(a, sa, za, dt), mkq(b, sb, zb, dt), so, zo))
            T.add("mul broadcast", ref_mul(a, sa, za, bb, sb, zb, so, zo, dt), got)

    # ---------------- add_scalar / mul_scalar
    for _ in range(150 * R):
        dt = DTS[rng.integers(0, 2)]
        n = int(rng.choice(LENS)); s = float(rng.choice(BASES)); z = zps(rng, dt, 1)[0]
        c = float(rng.choice([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 0.5 * s, 1.5 * s, -0.5 * s, -2.5 * s, 100 * s,
                              -100 * s, 300 * s, -300 * s, s * rng.integers(-300, 300), rng.normal() * s * 50]))
        a = qvals(rng, dt, n)
        for relu in (False, True):
            op = torch.ops.quantized.add_scalar_relu if relu else torch.ops.quantized.add_scalar
            o = op(mkq(a, s, z, dt), c); q, sp, zp = ref_add_scalar(a, s, z, c, dt, relu)
            T.add("add_scalar(+relu) values+qparams", q, ir(o), o.q_scale() == sp and o.q_zero_point() == zp)
            op = torch.ops.quantized.mul_scalar_relu if relu else torch.ops.quantized.mul_scalar
            o = op(mkq(a, s, z, dt), c); q, sp, zp = ref_mul_scalar(a, s, z, c, dt, relu)
            T.add("mul_scalar(+relu) values+qparams", q, ir(o), o.q_scale() == sp and o.q_zero_point() == zp)

    # ---------------- cat
    for it in range(120 * R):
        dt = DTS[rng.integers(0, 2)]
        N, H, W = int(rng.integers(1, 3)), int(rng.integers(1, 5)), int(rng.integers(1, 5))
        Cs = [int(rng.choice([1, 3, 7, 8, 15, 16, 17, 33, 63, 64, 65, 67, 100])) for _ in range(int(rng.integers(1, 4)))]
        s0 = tie_scales(rng, len(Cs) + 1); z0 = zps(rng, dt, len(Cs) + 1)
        if it % 4 == 0:
            s0 = [s0[0]] * len(s0); z0 = [z0[0]] * len(z0)
        xs = [qvals(rng, dt, (N, C, H, W)) for C in Cs]
        qs = [mkq(x, s, z, dt) for x, s, z in zip(xs, s0, z0)]
        if rng.random() < 0.5:
            qs = [q.contiguous(memory_format=torch.channels_last) for q in qs]
        nhwc = all(q.is_contiguous(memory_format=torch.channels_last) for q in qs)
        for relu in (False, True):
            op = torch.ops.quantized.cat_relu if relu else torch.ops.quantized.cat
            o = op(qs, 1, s0[-1], z0[-1])
            T.add(f"cat{'_relu' if relu else ''} {'NHWC' if nhwc else 'NCHW'}",
                  ref_cat(xs, s0, z0, s0[-1], z0[-1], dt, relu, nhwc), ir(o))

    # ---------------- relu family / clamp
    for _ in range(150 * R):
        dt = DTS[rng.integers(0, 2)]
        n = int(rng.choice(LENS))
        s = float(rng.choice([0.1, 0.3, 1 / 3, 4 / 7, 12 / 13, 2.4, 0.48, 0.096, 1 / 255, 0.047, 6 / 12.5, 6 / 100.5, 6 / 127.5]))
        z = zps(rng, dt, 1)[0]; q = qvals(rng, dt, n); Q = mkq(q, s, z, dt)
        mn = float(rng.choice([-1.0, -0.5, -6.0, 0.0, -s * 2.5, -s * 3.5, s * 1.5]))
        mx = float(rng.choice([1.0, 6.0, 0.5, s * 2.5, s * 7.5, s * 100.5]))
        mn, mx = min(mn, mx), max(mn, mx)
        T.add("relu", ref_relu(q, s, z, dt), ir(F.relu(Q)))
        T.add("relu6 (F.relu6 / nnq.ReLU6)", ref_relu6(q, s, z, dt), ir(F.relu6(Q)))
        T.add("relu6 (F.relu6 / nnq.ReLU6)", ref_relu6(q, s, z, dt), ir(nnq.ReLU6()(Q)))
        T.add("hardtanh", ref_clamp(q, s, z, dt, mn, mx), ir(F.hardtanh(Q, mn, mx)))
        T.add("clamp", ref_clamp(q, s, z, dt, mn, mx), ir(torch.clamp(Q, mn, mx)))
        T.add("clamp(min only)", ref_clamp(q, s, z, dt, mn, None), ir(torch.clamp(Q, min=mn)))

    # ---------------- dequant->f->quant activations
    for _ in range(150 * R):
        dt = DTS[rng.integers(0, 2)]
        n = int(rng.choice(LENS)); s = tie_scales(rng, 1)[0]; z = zps(rng, dt, 1)[0]
        q = qvals(rng, dt, n); Q = mkq(q, s, z, dt)
        so, zo = tie_scales(rng, 1)[0], zps(rng, dt, 1)[0]
        T.add("hardswish (qF.hardswish, out qparams given)", ref_hardswish(q, s, z, so, zo, dt), ir(qF.hardswish(Q, so, zo)))
        o = F.hardsigmoid(Q)
        T.add("hardsigmoid (out 1/256, zp 0|-128)", ref_hardsigmoid(q, s, z, dt), ir(o),
              (o.q_scale(), o.q_zero_point()) == hardsigmoid_qparams(dt))
        slope = float(rng.choice([0.01, 0.1, 0.2, 0.3333]))
        T.add("leaky_relu (same qparams)", ref_leaky_relu(q, s, z, s, z, dt, slope), ir(F.leaky_relu(Q, slope)))
        T.add("leaky_relu (qF, out qparams)", ref_leaky_relu(q, s, z, so, zo, dt, slope),
              ir(qF.leaky_relu(Q, slope, scale=so, zero_point=zo)))
        o = torch.sigmoid(Q)
        T.add("sigmoid (out 1/256, zp 0|-128)", ref_sigmoid(q, s, z, dt), ir(o),
              (o.q_scale(), o.q_zero_point()) == sigmoid_qparams(dt))
        o = torch.tanh(Q)
        T.add("tanh (out 2/256, zp 128|0)", ref_tanh(q, s, z, dt), ir(o),
              (o.q_scale(), o.q_zero_point()) == tanh_qparams(dt))
        al = float(rng.choice([1.0, 0.5, 2.0]))
        T.add("elu (qF.elu, out qparams given)", ref_elu(q, s, z, so, zo, dt, al), ir(qF.elu(Q, so, zo, al)))
    # exhaustive 256-value sweep for the transcendental ones (every q value in vec and tail)
    for _ in range(40 * R):
        dt = DTS[rng.integers(0, 2)]; lo, hi = LIM[dt]
        s = float(np.exp(rng.uniform(np.log(1e-3), np.log(1.0)))); z = zps(rng, dt, 1)[0]
        q = np.concatenate([np.arange(lo, hi + 1), np.arange(lo, hi + 1)[:63]])      # 256 vec + 63 tail
        Q = mkq(q, s, z, dt); so, zo = tie_scales(rng, 1)[0], zps(rng, dt, 1)[0]
        T.add("sigmoid exhaustive sweep", ref_sigmoid(q, s, z, dt), ir(torch.sigmoid(Q)))
        T.add("tanh exhaustive sweep", ref_tanh(q, s, z, dt), ir(torch.tanh(Q)))
        T.add("elu exhaustive sweep", ref_elu(q, s, z, so, zo, dt), ir(qF.elu(Q, so, zo)))

    # ---------------- pooling
    for it in range(60 * R):
        dt = DTS[rng.integers(0, 2)]
        N, C = int(rng.integers(1, 3)), int(rng.choice([1, 3, 7, 8, 9, 15, 16, 17, 24, 31, 33, 48, 63, 64, 67]))
        H, W = int(rng.integers(1, 10)), int(rng.integers(1, 10))
        kH, kW = min(int(rng.integers(1, 4)), H), min(int(rng.integers(1, 4)), W)
        sH, sW = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        pH, pW = int(rng.integers(0, kH // 2 + 1)), int(rng.integers(0, kW // 2 + 1))
        ceil, cip = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
        divo = int(rng.choice([0, 0, 0, 1, 3, 7]))
        s = tie_scales(rng, 1)[0]; z = zps(rng, dt, 1)[0]
        x = qvals(rng, dt, (N, C, H, W)); Q = mkq(x, s, z, dt)
        for cl in (False, True):
            QQ = Q.contiguous(memory_format=torch.channels_last) if cl else Q
            nhwc = QQ.is_contiguous(memory_format=torch.channels_last)
            o = F.max_pool2d(QQ, (kH, kW), (sH, sW), (pH, pW), (1, 1), ceil)
            dl = (int(rng.integers(1, 3)), 1)
            T.add("max_pool2d", ref_max_pool2d(x, (kH, kW), (sH, sW), (pH, pW), (1, 1), ceil, dt), ir(o))
            if H >= 2 * kH:
                o = F.max_pool2d(QQ, (kH, kW), (sH, sW), (pH, pW), dl, ceil)
                T.add("max_pool2d dilation", ref_max_pool2d(x, (kH, kW), (sH, sW), (pH, pW), dl, ceil, dt), ir(o))
            o = F.avg_pool2d(QQ, (kH, kW), (sH, sW), (pH, pW), ceil, cip, divo if divo else None)
            T.add(f"avg_pool2d {'NHWC' if nhwc else 'NCHW'}",
                  ref_avg_pool2d(x, z, (kH, kW), (sH, sW), (pH, pW), ceil, cip, divo, dt, nhwc), ir(o),
                  o.q_scale() == s and o.q_zero_point() == z)
            OH, OW = int(rng.integers(1, H + 2)), int(rng.integers(1, W + 2))
            if it % 4 == 0:
                OH = OW = 1
            if H == 1 and W == 1 and (OH > 1 or OW > 1):
                continue            # degenerate layout case, see memo
            o = F.adaptive_avg_pool2d(QQ, (OH, OW))
            T.add(f"adaptive_avg_pool2d {'NHWC' if nhwc else 'NCHW'}",
                  ref_adaptive_avg_pool2d(x, z, OH, OW, dt, nhwc), ir(o),
                  o.q_scale() == s and o.q_zero_point() == z)

    # ---------------- multithreading: chunking changes the tail positions
    torch.set_num_threads(2)
    for _ in range(4 * R):
        dt = torch.quint8; n = 100003
        sa, sb, so = tie_scales(rng, 3); za, zb, zo = zps(rng, dt, 3)
        a, b = qvals(rng, dt, n), qvals(rng, dt, n)
        got = ir(torch.ops.quantized.add(mkq(a, sa, za, dt), mkq(b, sb, zb, dt), so, zo))
        T.add("INFO add n=100003 2thr, naive 1-run model", ref_add(a, sa, za, b, sb, zb, so, zo, dt), got)
        # chunked model: at::parallel_for splits [0,n) into ceil(n/nthreads) chunks
        nt = min(2, -(-n // 32768)); cs = -(-n // nt)
        vm = np.concatenate([split_vec(min(cs, n - i)) for i in range(0, n, cs)])
        T.add("add n=100003, 2 threads, chunked model", ref_add(a, sa, za, b, sb, zb, so, zo, dt, vecmask=vm), got)
    torch.set_num_threads(1)
    return T


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print("torch", torch.__version__, "engine", torch.backends.quantized.engine,
          "cpu capability", torch.backends.cpu.get_cpu_capability())
    T = check_all(quick)
    nbad = T.report()
    print(f"\n{len(T.rows) - nbad}/{len(T.rows)} checks bit-exact")
