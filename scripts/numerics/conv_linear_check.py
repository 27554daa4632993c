#!/usr/bin/env python3
"""conv_linear_check.py -- bit-exact numpy references for PyTorch 2.13 quantized CPU conv2d / linear / add
(engines fbgemm, x86, onednn) and a checker that compares them with torch and prints match counts.

Usage:  python3 conv_linear_check.py [--quick]
See conv_linear_numerics.md for the derivation.  Everything here is numpy; torch is used only to produce
the ground truth.  All scales are assumed float32-representable (true for observer-produced qparams).
"""
import sys, warnings, collections
import numpy as np
f32 = np.float32
import numpy as np
f32 = np.float32

def conv_acc(xq, zx, wq, zw, stride=(1,1), pad=(0,0), dil=(1,1), groups=1):
    """exact int64 accumulator sum((x-zx)*(w-zw)); xq uint8 NCHW, wq int8 OIhw, zw scalar or (O,)"""
    N, C, H, W = xq.shape
    O, Cg, KH, KW = wq.shape
    x = xq.astype(np.int64) - int(zx)
    x = np.pad(x, ((0,0),(0,0),(pad[0],pad[0]),(pad[1],pad[1])))   # padding == real zero == zx
    zw = np.broadcast_to(np.asarray(zw, np.int64), (O,))
    w = wq.astype(np.int64) - zw[:,None,None,None]
    Hp, Wp = x.shape[2], x.shape[3]
    OH = (Hp - dil[0]*(KH-1) - 1)//stride[0] + 1
    OW = (Wp - dil[1]*(KW-1) - 1)//stride[1] + 1
    Og = O // groups
    out = np.zeros((N, O, OH, OW), np.int64)
    for kh in range(KH):
        for kw in range(KW):
            h0 = kh*dil[0]; w0 = kw*dil[1]
            patch = x[:, :, h0:h0+stride[0]*(OH-1)+1:stride[0], w0:w0+stride[1]*(OW-1)+1:stride[1]]  # N C OH OW
            for g in range(groups):
                out[:, g*Og:(g+1)*Og] += np.einsum('nchw,oc->nohw', patch[:, g*Cg:(g+1)*Cg], w[g*Og:(g+1)*Og, :, kh, kw])
    return out

def requant_fbgemm(acc, sx, sw, so, zo, bias=None, relu=False, chan_axis=1, per_tensor=None, fma=True):
    """fbgemm ReQuantizeOutput<float bias>; acc int (wrapped to int32)"""
    O = acc.shape[chan_axis]
    if per_tensor is None: per_tensor = np.ndim(sw) == 0
    sw = np.broadcast_to(np.asarray(sw, np.float32), (O,))
    atws = (f32(sx) * sw).astype(f32)                 # float32 act_scale*w_scale
    mult = (atws / f32(so)).astype(f32)               # float32 multiplier
    shp = [1]*acc.ndim; shp[chan_axis] = O
    a32 = acc.astype(np.int64)
    a32 = ((a32 + 2**31) % 2**32 - 2**31).astype(np.int32)
    v = a32.astype(f32)
    if bias is not None:
        if per_tensor:   # vectorized fbgemm: fma(bias, float(1.0/(double)atws), float(acc))  (GCC contracts mul+add)
            rcp = f32(1.0 / np.float64(atws[0]))
            v = fma_f32(np.asarray(bias, f32).reshape(shp), rcp, v) if fma else (v + (np.asarray(bias, f32)*rcp).astype(f32).reshape(shp)).astype(f32)
        else:            # per-channel: bias / atws[c] in float32, then float add
            bq = (np.asarray(bias, f32) / atws).astype(f32)
            v = (v + bq.reshape(shp)).astype(f32)
    x = (v * mult.reshape(shp)).astype(f32)
    # _mm512_cvtps_epi32: RNE, but |x| >= 2^31 (or NaN) gives INT32_MIN ("integer indefinite");
    # then packs_epi32 (sat16) + adds_epi16(zo) + packus -> equivalent to clip(r + zo) for in-range r.
    ovf = ~(np.abs(x.astype(np.float64)) < 2.0**31)
    y = np.where(ovf, -2**31, np.rint(np.where(ovf, 0, x)).astype(np.int64)) + int(zo)
    return np.clip(y, int(zo) if relu else 0, 255).astype(np.uint8)

def wrap32(a):
    a = np.asarray(a, np.int64)
    return ((a + 2**31) % 2**32 - 2**31).astype(np.int32)

def requant_onednn(acc, sx, sw, so, zo, bias=None, relu=False, chan_axis=1, sep=True, recip=True, wei_recip=False):
    """oneDNN (brgemm) int8 conv/matmul requant as driven by PyTorch/ideep."""
    O = acc.shape[chan_axis]
    shp = [1]*acc.ndim; shp[chan_axis] = O
    if recip:
        src_s = f32(1.0) / f32(1.0 / float(sx))          # ideep: 1.0f / float(1.0/sx)
        dst_s = f32(1.0) / f32(1.0 / float(so))          # ideep: 1.0f / float(1.0/so)
    else:
        src_s = f32(sx); dst_s = f32(so)
    dinv = f32(1.0) / dst_s                           # oneDNN: 1.f / dst_scale
    wei_s = np.broadcast_to(np.asarray(sw, np.float64), (O,)).astype(f32).reshape(shp)
    if wei_recip:   # linear (ideep matmul): weight scale stored as 1/sw and inverted again -> float(1/float(1/sw))
        wei_s = (f32(1.0) / (f32(1.0) / wei_s).astype(f32)).astype(f32)
    v = wrap32(acc).astype(f32)
    if sep:
        v = (v * src_s).astype(f32); v = (v * wei_s).astype(f32)
    else:
        v = (v * (src_s * wei_s).astype(f32)).astype(f32)
    if bias is not None:
        v = (v + np.asarray(bias, f32).reshape(shp)).astype(f32)
    if relu:
        v = np.maximum(v, f32(0))
    v = (v * dinv).astype(f32)
    v = (v + f32(zo)).astype(f32)
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)

def sat16(a):
    return np.clip(a, -32768, 32767)

def conv_acc_fbgemm_dw(xq, zx, wq, zw, stride=(1,1), pad=(0,0)):
    """fbgemm depthwise fast path (G==C, O in {C,2C}, G%8==0, k in {3,5,7} square, pad=(k-1)/2, stride 1/2, dil 1):
    products of RAW uint8 activations (padding = zx) with int8 weights, summed per tap pair with int16 saturation
    (vpmaddubsw): taps flattened t = kh*KW+kw, pairs (4j,4j+1),(4j+2,4j+3); lone last tap paired with 0."""
    N, C, H, W = xq.shape
    O, Cg, KH, KW = wq.shape
    assert Cg == 1
    opg = O // C
    x = np.pad(xq.astype(np.int64), ((0,0),(0,0),(pad[0],pad[0]),(pad[1],pad[1])), constant_values=int(zx))
    Hp, Wp = x.shape[2], x.shape[3]
    OH = (Hp - KH)//stride[0] + 1; OW = (Wp - KW)//stride[1] + 1
    xin = np.repeat(x, opg, axis=1)            # input channel for output o is o//opg
    w = wq.astype(np.int64).reshape(O, KH*KW)
    prods = []
    rows = []
    for kh in range(KH):
        for kw in range(KW):
            patch = xin[:, :, kh:kh+stride[0]*(OH-1)+1:stride[0], kw:kw+stride[1]*(OW-1)+1:stride[1]]
            prods.append(patch * w[:, kh*KW+kw][None,:,None,None]); rows.append(patch)
    K = KH*KW
    if K % 2: prods.append(np.zeros_like(prods[0]))
    acc = np.zeros_like(prods[0])
    for t in range(0, len(prods), 2):
        acc += sat16(prods[t] + prods[t+1])
    zw = np.broadcast_to(np.asarray(zw, np.int64), (O,)).reshape(1,O,1,1)
    rowsum = sum(rows)
    acc = acc - int(zx) * w.sum(1).reshape(1,O,1,1) - zw * rowsum + K * int(zx) * zw
    return acc

def fbgemm_takes_dw(C, O, groups, k, stride, pad, dil):
    return (groups == C and O in (C, 2*C) and groups % 8 == 0 and k[0] == k[1] and k[0] in (3,5,7)
            and all(s in (1,2) for s in stride) and all(d == 1 for d in dil) and all(p == (kk-1)//2 for p, kk in zip(pad, k)))

def fma_f32(x, y, z):
    """exactly-rounded float32 fma(x, y, z) = RN32(x*y + z) for float32 inputs (vectorized)."""
    x = np.asarray(x, f32).astype(np.float64); y = np.asarray(y, f32).astype(np.float64); z = np.asarray(z, f32).astype(np.float64)
    p = x * y                      # exact (24+24 bits)
    s = p + z                      # RN64
    bp = s - p
    err = (p - (s - bp)) + (z - bp)   # TwoSum: p + z == s + err exactly
    lo = s.astype(f32)
    exact = lo.astype(np.float64) == s
    other = np.nextafter(lo, np.where(s > lo.astype(np.float64), f32(np.inf), f32(-np.inf)).astype(f32))
    mid = (lo.astype(np.float64) + other.astype(np.float64)) / 2
    fix = (~exact) & (s == mid) & (err != 0) & (np.sign(err) == np.sign(other.astype(np.float64) - lo.astype(np.float64)))
    return np.where(fix, other, lo).astype(f32)

def requant_onednn_convadd(acc, sx, sw, so, zo, bias, eq, se, ze, relu=False):
    """quantized::conv2d_add(_relu) on onednn: conv result (real domain, f32) + sum post-op, then relu, then dst requant."""
    O = acc.shape[1]; shp = [1, O, 1, 1]
    src_s = f32(1.0) / f32(1.0 / float(sx)); dst_s = f32(1.0) / f32(1.0 / float(so)); dinv = f32(1.0) / dst_s
    sum_s = f32(1.0) / f32(1.0 / float(se))
    wei_s = np.broadcast_to(np.asarray(sw, np.float64), (O,)).astype(f32).reshape(shp)
    v = (wrap32(acc).astype(f32) * src_s).astype(f32); v = (v * wei_s).astype(f32)
    if bias is not None: v = (v + np.asarray(bias, f32).reshape(shp)).astype(f32)
    prev = (eq.astype(f32) - f32(ze)).astype(f32)
    v = fma_f32(prev, sum_s, v) if sum_s != f32(1) else (v + prev).astype(f32)
    if relu: v = np.maximum(v, f32(0))
    v = (v * dinv).astype(f32); v = (v + f32(zo)).astype(f32)
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)

def qadd_ref(a, sa, za, b, sb, zb, so, zo, relu=False, vec=True):
    """torch.ops.quantized.add / add_relu (quint8, same shape). vec=True: AVX512 path; vec=False: scalar tail path."""
    sa32, sb32, so32 = f32(sa), f32(sb), f32(so)
    if vec:
        da = fma_f32(a.astype(f32), sa32, f32(sa32 * f32(-za)))
        db = fma_f32(b.astype(f32), sb32, f32(sb32 * f32(-zb)))
    else:
        da = ((a.astype(np.float64) - za) * float(sa)).astype(f32)
        db = ((b.astype(np.float64) - zb) * float(sb)).astype(f32)
    c = (da + db).astype(f32)
    if relu: c = np.maximum(c, f32(0))
    inv = f32(f32(1.0) / so32)
    q = np.rint((c * inv).astype(f32)).astype(np.int64) + int(zo)
    return np.clip(q, 0, 255).astype(np.uint8)

def requant_onednn_s8(acc, sx, sw, so, zo, bias=None, relu=False, chan_axis=1):
    """onednn linear with qint8 activations/outputs: same math as requant_onednn(wei_recip=True) but clamp to [-128,127]."""
    O = acc.shape[chan_axis]; shp = [1]*acc.ndim; shp[chan_axis] = O
    src_s = f32(1.0) / f32(1.0 / float(sx)); dst_s = f32(1.0) / f32(1.0 / float(so)); dinv = f32(1.0) / dst_s
    wei_s = np.broadcast_to(np.asarray(sw, np.float64), (O,)).astype(f32).reshape(shp)
    wei_s = (f32(1.0) / (f32(1.0) / wei_s).astype(f32)).astype(f32)
    v = (wrap32(acc).astype(f32) * src_s).astype(f32); v = (v * wei_s).astype(f32)
    if bias is not None: v = (v + np.asarray(bias, f32).reshape(shp)).astype(f32)
    if relu: v = np.maximum(v, f32(0))
    v = (v * dinv).astype(f32); v = (v + f32(zo)).astype(f32)
    return np.clip(np.rint(v), -128, 127).astype(np.int8)

def x86_conv_uses_onednn(zw, groups, transposed=False):
    """x86 engine dispatch for conv prepack (Linux, AVX512-VNNI cpu): onednn iff weight zero points all 0,
    groups <= 100, not transposed (output_padding all 0).  Otherwise fbgemm.  Linear on x86 is always fbgemm."""
    return bool(np.all(np.asarray(zw) == 0)) and groups <= 100 and not transposed

def ref_conv(engine, xq, sx, zx, wq, sw, zw, bias, stride, pad, dil, groups, so, zo, relu):
    """Full numpy reference for torch.ao.nn.quantized.Conv2d / intrinsic ConvReLU2d on engine."""
    O, Cg, KH, KW = wq.shape; C = xq.shape[1]
    if engine == 'x86':
        engine = 'onednn' if x86_conv_uses_onednn(zw, groups) else 'fbgemm'
    if engine == 'onednn':
        acc = conv_acc(xq, zx, wq, zw, stride, pad, dil, groups)
        return requant_onednn(acc, sx, sw, so, zo, bias, relu)
    if fbgemm_takes_dw(C, O, groups, (KH, KW), stride, pad, dil):
        acc = conv_acc_fbgemm_dw(xq, zx, wq, zw, stride, pad)   # int16-saturating depthwise kernel
    else:
        acc = conv_acc(xq, zx, wq, zw, stride, pad, dil, groups)  # VNNI: exact int32
    return requant_fbgemm(acc, sx, sw, so, zo, bias, relu)

def ref_linear(engine, xq, sx, zx, wq, sw, zw, bias, so, zo, relu):
    zwb = np.broadcast_to(np.asarray(zw, np.int64), (wq.shape[0],))
    acc = (xq.astype(np.int64) - zx) @ (wq.astype(np.int64) - zwb[:, None]).T
    if engine in ('x86', 'fbgemm'):
        return requant_fbgemm(acc, sx, sw, so, zo, bias, relu)
    if xq.dtype == np.int8:
        return requant_onednn_s8(acc, sx, sw, so, zo, bias, relu)
    return requant_onednn(acc, sx, sw, so, zo, bias, relu, wei_recip=True)

# ----------------------------------------------------------------------------------------- torch side
def torch_conv(engine, xq, sx, zx, wq, sw, zw, bias, stride, pad, dil, groups, so, zo, relu):
    import torch, torch.ao.nn.quantized as nnq, torch.ao.nn.intrinsic.quantized as nniq
    torch.backends.quantized.engine = engine
    O, Cg, KH, KW = wq.shape
    m = (nniq.ConvReLU2d if relu else nnq.Conv2d)(xq.shape[1], O, (KH, KW), stride=stride, padding=pad,
                                                 dilation=dil, groups=groups, bias=bias is not None)
    if np.ndim(sw) == 0:
        qw = torch._make_per_tensor_quantized_tensor(torch.from_numpy(wq), float(sw), int(zw))
    else:
        qw = torch._make_per_channel_quantized_tensor(torch.from_numpy(wq), torch.tensor(np.asarray(sw, np.float64)),
                                                      torch.tensor(np.asarray(zw, np.int64)), 0)
    m.set_weight_bias(qw, None if bias is None else torch.from_numpy(bias))
    m.scale = float(so); m.zero_point = int(zo)
    qx = torch._make_per_tensor_quantized_tensor(torch.from_numpy(xq), float(sx), int(zx))
    return m(qx).int_repr().numpy()

def torch_linear(engine, xq, sx, zx, wq, sw, zw, bias, so, zo, relu):
    import torch, torch.ao.nn.quantized as nnq, torch.ao.nn.intrinsic.quantized as nniq
    torch.backends.quantized.engine = engine
    m = (nniq.LinearReLU if relu else nnq.Linear)(wq.shape[1], wq.shape[0], bias_=True) if False else \
        (nniq.LinearReLU if relu else nnq.Linear)(wq.shape[1], wq.shape[0])
    if np.ndim(sw) == 0:
        qw = torch._make_per_tensor_quantized_tensor(torch.from_numpy(wq), float(sw), int(zw))
    else:
        qw = torch._make_per_channel_quantized_tensor(torch.from_numpy(wq), torch.tensor(np.asarray(sw, np.float64)),
                                                      torch.tensor(np.asarray(zw, np.int64)), 0)
    m.set_weight_bias(qw, None if bias is None else torch.from_numpy(bias))
    m.scale = float(so); m.zero_point = int(zo)
    qx = torch._make_per_tensor_quantized_tensor(torch.from_numpy(xq), float(sx), int(zx))
    return m(qx).int_repr().numpy()

# ----------------------------------------------------------------------------------------- random cases
def rand_scale(rng, lo, hi, n=None):
    return (10 ** rng.uniform(lo, hi, n)).astype(f32).astype(np.float64) if n else float(f32(10 ** rng.uniform(lo, hi)))

def conv_case(rng, engine, dw=False, xmax=255, extreme=False):
    if dw:
        g = int(rng.choice([8, 16, 24, 32, 64, 128])); Cg = 1; Og = int(rng.choice([1, 2]))
        k = int(rng.choice([3, 5, 7])); s = int(rng.choice([1, 2])); p = (k-1)//2 if rng.random() < 0.8 else int(rng.integers(0, k//2+1)); d = 1
    else:
        g = int(rng.choice([1, 1, 1, 2, 3, 4, 8])); Cg = int(rng.integers(1, 20)); Og = int(rng.integers(1, 20))
        k = int(rng.choice([1, 2, 3, 5])); s = int(rng.choice([1, 2, 3])); p = int(rng.integers(0, k//2+1)); d = int(rng.choice([1, 1, 2]))
    C, O = Cg*g, Og*g
    H = int(rng.integers(max(d*(k-1)+1, 3), 18)); W = int(rng.integers(max(d*(k-1)+1, 3), 18))
    xq = rng.integers(0, xmax+1, (int(rng.integers(1, 3)), C, H, W), dtype=np.uint8)
    wq = rng.integers(-128, 128, (O, Cg, k, k), dtype=np.int8)
    sx = rand_scale(rng, -6, 2) if extreme else rand_scale(rng, -3, 0)
    zx = int(rng.choice([0, xmax])) if extreme and rng.random() < 0.5 else int(rng.integers(0, xmax+1))
    asym = engine != 'onednn' and rng.random() < 0.25
    if rng.random() < 0.5:
        sw = rand_scale(rng, -6, 0, O) if extreme else rand_scale(rng, -4, -1, O)
        zw = rng.integers(-20, 20, O) if asym else np.zeros(O, np.int64)
    else:
        sw = rand_scale(rng, -6, 0) if extreme else rand_scale(rng, -4, -1)
        zw = int(rng.integers(-20, 20)) if asym else 0
    acc = conv_acc(xq, zx, wq, zw, (s, s), (p, p), (d, d), g)
    swb = np.broadcast_to(np.asarray(sw), (O,))
    std = float((acc * sx * swb.reshape(1, O, 1, 1)).std()) + 1e-12
    so = float(f32(std / 40 * 10 ** rng.uniform(-0.5, 0.5)))
    if extreme: so = float(f32(min(max(so * 10 ** rng.uniform(-2, 2), 1e-6), 1e2)))
    zo = int(rng.choice([0, 255])) if extreme and rng.random() < 0.5 else int(rng.integers(0, 256))
    if rng.random() < 0.8:
        b = rng.normal(0, std, O).astype(f32)
        if extreme and rng.random() < 0.3: b = (b * f32(10 ** rng.uniform(2, 6))).astype(f32)
    else:
        b = None
    relu = bool(rng.random() < 0.3)
    return (xq, sx, zx, wq, sw, zw, b, (s, s), (p, p), (d, d), g, so, zo, relu)

def linear_case(rng, engine, extreme=False, s8=False):
    K = int(rng.integers(1, 300)); O = int(rng.integers(1, 70)); B = int(rng.integers(1, 40))
    if s8:
        xq = rng.integers(-128, 128, (B, K), dtype=np.int8); zx = int(rng.integers(-128, 128))
    else:
        xq = rng.integers(0, 256, (B, K), dtype=np.uint8); zx = int(rng.choice([0, 255])) if extreme and rng.random() < 0.5 else int(rng.integers(0, 256))
    wq = rng.integers(-128, 128, (O, K), dtype=np.int8)
    sx = rand_scale(rng, -6, 2) if extreme else rand_scale(rng, -3, 0)
    asym = engine != 'onednn' and rng.random() < 0.25
    if rng.random() < 0.5:
        sw = rand_scale(rng, -6, 0, O) if extreme else rand_scale(rng, -4, -1, O); zw = rng.integers(-20, 20, O) if asym else np.zeros(O, np.int64)
    else:
        sw = rand_scale(rng, -6, 0) if extreme else rand_scale(rng, -4, -1); zw = int(rng.integers(-20, 20)) if asym else 0
    zwb = np.broadcast_to(np.asarray(zw, np.int64), (O,))
    acc = (xq.astype(np.int64) - zx) @ (wq.astype(np.int64) - zwb[:, None]).T
    std = float((acc * sx * np.broadcast_to(np.asarray(sw), (O,))[None, :]).std()) + 1e-12
    so = float(f32(std / 40 * 10 ** rng.uniform(-0.5, 0.5)))
    if extreme: so = float(f32(min(max(so * 10 ** rng.uniform(-2, 2), 1e-6), 1e2)))
    if s8: zo = int(rng.integers(-128, 128))
    else: zo = int(rng.choice([0, 255])) if extreme and rng.random() < 0.5 else int(rng.integers(0, 256))
    if rng.random() < 0.8:
        b = rng.normal(0, std, O).astype(f32)
        if extreme and rng.random() < 0.3: b = (b * f32(10 ** rng.uniform(2, 6))).astype(f32)
    else:
        b = None
    return (xq, sx, zx, wq, sw, zw, b, so, zo, bool(rng.random() < 0.3))

def torch_linear_any(engine, xq, sx, zx, wq, sw, zw, b, so, zo, relu):
    if xq.dtype == np.int8:   # qint8 activations (onednn only)
        import torch, torch.ao.nn.quantized as nnq, torch.ao.nn.intrinsic.quantized as nniq
        torch.backends.quantized.engine = engine
        m = (nniq.LinearReLU if relu else nnq.Linear)(wq.shape[1], wq.shape[0])
        qw = torch._make_per_tensor_quantized_tensor(torch.from_numpy(wq), float(sw), int(zw)) if np.ndim(sw) == 0 else \
             torch._make_per_channel_quantized_tensor(torch.from_numpy(wq), torch.tensor(np.asarray(sw, np.float64)), torch.tensor(np.asarray(zw, np.int64)), 0)
        m.set_weight_bias(qw, None if b is None else torch.from_numpy(b)); m.scale = float(so); m.zero_point = int(zo)
        qx = torch._make_per_tensor_quantized_tensor(torch.from_numpy(xq), float(sx), int(zx))
        return m(qx).int_repr().numpy()
    return torch_linear(engine, xq, sx, zx, wq, sw, zw, b, so, zo, relu)


def linear_acc_fbgemm_nonvnni(xq, zx, wq, zw):
    """fbgemm GEMM on CPUs WITHOUT avx512_vnni (vpmaddubsw + vpmaddwd): raw uint8 x times int8 w, consecutive
    k pairs (2i, 2i+1) summed with int16 saturation, then exact int32 zero-point corrections.
    (Verified for Linear by forcing FBGEMM_ENABLE_INSTRUCTIONS=AVX2 / AVX512 on this VNNI machine.)"""
    B, K = xq.shape; O = wq.shape[0]; Kp = K + (K % 2)
    x = np.zeros((B, Kp), np.int64); x[:, :K] = xq; w = np.zeros((O, Kp), np.int64); w[:, :K] = wq
    prod = x[:, None, :] * w[None, :, :]
    acc = np.clip(prod[:, :, 0::2] + prod[:, :, 1::2], -32768, 32767).sum(-1)
    zwb = np.broadcast_to(np.asarray(zw, np.int64), (O,))
    return (acc - zx * wq.astype(np.int64).sum(1)[None, :] - zwb[None, :] * xq.astype(np.int64).sum(1)[:, None]
            + K * zx * zwb[None, :])

def nonvnni_check():
    """run inside a process started with FBGEMM_ENABLE_INSTRUCTIONS=AVX2"""
    warnings.filterwarnings('ignore')
    rng = np.random.default_rng(7); n = m_exact = m_model = 0
    for it in range(80):
        xq, sx, zx, wq, sw, zw, b, so, zo, relu = linear_case(rng, 'fbgemm')
        y = torch_linear('fbgemm', xq, sx, zx, wq, sw, zw, b, so, zo, relu)
        n += y.size
        m_exact += int((y != ref_linear('fbgemm', xq, sx, zx, wq, sw, zw, b, so, zo, relu)).sum())
        m_model += int((y != requant_fbgemm(linear_acc_fbgemm_nonvnni(xq, zx, wq, zw), sx, sw, so, zo, b, relu)).sum())
    print(f'NONVNNI {n} {m_exact} {m_model}')

# ----------------------------------------------------------------------------------------- main
def main():
    warnings.filterwarnings('ignore')
    import torch
    quick = '--quick' in sys.argv
    R = 1 if quick else 4
    rng = np.random.default_rng(20260213)
    res = collections.OrderedDict()
    def rec(name, y, r):
        c = res.setdefault(name, [0, 0, 0])
        c[0] += y.size; c[1] += int((y.astype(np.int64) != r.astype(np.int64)).sum())
        c[2] = max(c[2], int(np.abs(y.astype(np.int64) - r.astype(np.int64)).max()) if y.size else 0)

    for engine in ['fbgemm', 'x86', 'onednn']:
        for extreme in [False, True]:
            for it in range(60 * R):
                case = conv_case(rng, engine, dw=False, extreme=extreme)
                rec(f'conv2d[{engine}] general{" extreme" if extreme else ""}', torch_conv(engine, *case), ref_conv(engine, *case))
        for it in range(40 * R):
            case = conv_case(rng, engine, dw=True)
            rec(f'conv2d[{engine}] depthwise full-range x', torch_conv(engine, *case), ref_conv(engine, *case))
            case = conv_case(rng, engine, dw=True, xmax=127)
            rec(f'conv2d[{engine}] depthwise 7-bit x', torch_conv(engine, *case), ref_conv(engine, *case))
    # how wrong would the naive exact-int model be on fbgemm depthwise with full-range x?
    for it in range(20 * R):
        case = conv_case(rng, 'fbgemm', dw=True)
        xq, sx, zx, wq, sw, zw, b, st, pd, dl, g, so, zo, relu = case
        naive = requant_fbgemm(conv_acc(xq, zx, wq, zw, st, pd, dl, g), sx, sw, so, zo, b, relu)
        rec('conv2d[fbgemm] depthwise full-range x vs NAIVE exact model (expected mismatches)', torch_conv('fbgemm', *case), naive)

    for engine in ['fbgemm', 'x86', 'onednn']:
        for extreme in [False, True]:
            for it in range(80 * R):
                case = linear_case(rng, engine, extreme=extreme)
                rec(f'linear[{engine}]{" extreme" if extreme else ""}', torch_linear_any(engine, *case), ref_linear(engine, *case))
    for it in range(40 * R):
        case = linear_case(rng, 'onednn', s8=True)
        rec('linear[onednn] qint8 activations', torch_linear_any('onednn', *case), ref_linear('onednn', *case))

    # targeted rounding-discrimination sweep: every (x-zx)*w product, K=1 linear, random scales / bias
    x = np.arange(256, dtype=np.uint8)[:, None]; w = np.arange(-128, 128, dtype=np.int8)[:, None]
    for engine in ['fbgemm', 'onednn']:
        for it in range(150 * R):
            zx = int(rng.integers(0, 256)); sx = rand_scale(rng, -3, 0)
            pc = rng.random() < 0.5
            sw = rand_scale(rng, -4, -1, 256) if pc else rand_scale(rng, -4, -1)
            zw = np.zeros(256, np.int64) if pc else 0
            acc = (x.astype(np.int64) - zx) @ w.astype(np.int64).T
            mx = float(np.abs(acc * np.broadcast_to(np.asarray(sw), (256,))).max()) * sx
            so = float(f32(mx / 100 * 10 ** rng.uniform(-0.3, 0.3))); zo = int(rng.integers(0, 256))
            b = (rng.normal(0, 1, 256) * mx / 3).astype(f32) if rng.random() < 0.8 else None
            relu = bool(rng.random() < 0.3)
            rec(f'linear[{engine}] K=1 all-products sweep', torch_linear(engine, x, sx, zx, w, sw, zw, b, so, zo, relu),
                ref_linear(engine, x, sx, zx, w, sw, zw, b, so, zo, relu))

    # int32 accumulator overflow (K=70000, all 255 * 127 -> 2.27e9 > 2^31)
    for engine in ['fbgemm', 'onednn']:
        K = 70000
        xq = np.full((2, K), 255, np.uint8); xq[1, :1000] = 0
        wq = np.full((3, K), 127, np.int8); wq[1] = -128; wq[2, ::2] = -5
        for sx, sw, so, zo, zx in [(0.01, 0.001, 1e3, 128, 0), (1e-3, 1e-3, 5.0, 0, 0), (0.02, 0.004, 0.5, 100, 3)]:
            rec(f'linear[{engine}] int32-overflow K=70000', torch_linear(engine, xq, sx, zx, wq, sw, 0, None, so, zo, False),
                ref_linear(engine, xq, sx, zx, wq, sw, 0, None, so, zo, False))

    # conv2d_add / conv2d_add_relu (onednn only)
    import torch.ao.nn.intrinsic.quantized as nniq
    torch.backends.quantized.engine = 'onednn'
    for it in range(80 * R):
        C = int(rng.integers(1, 24)); O = int(rng.integers(1, 24)); k = int(rng.choice([1, 3])); H = int(rng.integers(3, 16)); W = int(rng.integers(3, 16))
        xq = rng.integers(0, 256, (1, C, H, W), dtype=np.uint8); wq = rng.integers(-128, 128, (O, C, k, k), dtype=np.int8)
        sx = rand_scale(rng, -3, 0); zx = int(rng.integers(0, 256)); pc = rng.random() < 0.5
        sw = rand_scale(rng, -4, -1, O) if pc else rand_scale(rng, -4, -1)
        acc = conv_acc(xq, zx, wq, np.zeros(O, np.int64) if pc else 0, (1, 1), (k//2, k//2))
        std = float((acc * sx * np.broadcast_to(np.asarray(sw), (O,)).reshape(1, O, 1, 1)).std()) + 1e-9
        so = float(f32(std / 30 * 10 ** rng.uniform(-0.5, 0.5))); zo = int(rng.integers(0, 256))
        se = float(f32(std / 60 * 10 ** rng.uniform(-0.5, 0.5))); ze = int(rng.integers(0, 256))
        eq = rng.integers(0, 256, acc.shape, dtype=np.uint8)
        b = rng.normal(0, std, O).astype(f32) if rng.random() < 0.8 else None
        relu = bool(rng.random() < 0.5)
        m = (nniq.ConvAddReLU2d if relu else nniq.ConvAdd2d)(C, O, k, padding=k//2, bias=b is not None)
        qw = torch._make_per_channel_quantized_tensor(torch.from_numpy(wq), torch.tensor(sw), torch.zeros(O, dtype=torch.long), 0) if pc \
            else torch._make_per_tensor_quantized_tensor(torch.from_numpy(wq), sw, 0)
        m.set_weight_bias(qw, None if b is None else torch.from_numpy(b)); m.scale = so; m.zero_point = zo
        y = m(torch._make_per_tensor_quantized_tensor(torch.from_numpy(xq), sx, zx),
              torch._make_per_tensor_quantized_tensor(torch.from_numpy(eq.copy()), se, ze)).int_repr().numpy()
        rec('conv2d_add(_relu)[onednn]', y, requant_onednn_convadd(acc, sx, sw, so, zo, b, eq, se, ze, relu))

    # quantized add / add_relu
    for engine in ['x86', 'fbgemm', 'onednn']:
        torch.backends.quantized.engine = engine
        for it in range(100 * R):
            n = int(rng.integers(1, 3000))
            a = rng.integers(0, 256, n, dtype=np.uint8); bq = rng.integers(0, 256, n, dtype=np.uint8)
            sa = rand_scale(rng, -3, 0); sb = rand_scale(rng, -3, 0); za = int(rng.integers(0, 256)); zb = int(rng.integers(0, 256))
            so = float(f32((sa + sb) * 10 ** rng.uniform(-0.3, 0.5))); zo = int(rng.integers(0, 256)); relu = bool(rng.random() < 0.5)
            y = (torch.ops.quantized.add_relu if relu else torch.ops.quantized.add)(
                torch._make_per_tensor_quantized_tensor(torch.from_numpy(a), sa, za),
                torch._make_per_tensor_quantized_tensor(torch.from_numpy(bq), sb, zb), so, zo).int_repr().numpy()
            rec(f'add(_relu)[{engine}]', y, qadd_ref(a, sa, za, bq, sb, zb, so, zo, relu))

    import subprocess, os
    out = subprocess.run([sys.executable, __file__, '--nonvnni-child'], capture_output=True, text=True,
                         env=dict(os.environ, FBGEMM_ENABLE_INSTRUCTIONS='AVX2')).stdout
    for line in out.splitlines():
        if line.startswith('NONVNNI'):
            _, n, me, mm = line.split()
            res['linear[fbgemm] forced non-VNNI (AVX2), full-range x, EXACT-int model (expected mismatches)'] = [int(n), int(me), -1]
            res['linear[fbgemm] forced non-VNNI (AVX2), full-range x, int16-pair-saturation model'] = [int(n), int(mm), -1]
    print(f'{"check":<90s} {"outputs":>10s} {"mismatch":>9s} {"max|d|":>7s}')
    for k, (n, m, d) in res.items():
        print(f'{k:<90s} {n:>10d} {m:>9d} {d:>7d}')

if __name__ == '__main__':
    if '--nonvnni-child' in sys.argv:
        nonvnni_check()
    else:
        main()
