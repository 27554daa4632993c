"""Targeted exactness cases for the quantized conv lowering, beyond the registry samples.

Every case is compiled (generic schedules, schedule-rule errors re-raised) and must EQUAL
`qc.interpret` bit for bit. The epilogue cases are *crafted*: for a 1x1 conv whose accumulator is
`x - 128` at flat position x (x = 0..255), per-channel biases are searched (numpy, a few ms) so
that every plausible neighbour of the reference formula gives a different u8 output on at least
one element:

    fbgemm per-tensor   bias added without the FMA (two roundings); round half away from zero
    fbgemm per-channel  bias times a float reciprocal instead of the true division
    oneDNN              one combined src*wei scale; the zero point added after rounding; the bias
                        add or the output scaling contracted into an FMA; float(scale) instead
                        of oneDNN's re-inverted 1/float(1/scale)
    conv2d_add_relu     residual added without the FMA; relu before the residual add

so a kernel that passes implements the reference's rounding and no neighbour of it. Plus: the
fbgemm INT32_MIN trap and oneDNN saturation with huge biases, an int32 accumulator that wraps
(2-D, int64 accumulation), depthwise / grouped / strided / dilated convs in both layouts, 1-D and
3-D, and a conv -> conv_relu -> conv2d_add_relu graph through `qc.compile`.

Compile budget: one build for all single-op cases, one for the multi-layer graph, one for the
speed check.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcompiler as qc
from qcompiler.driver import build
from qcompiler.ir.builder import Builder
from qcompiler.ir.graph import Graph, Value
from qcompiler.ir.types import QParams, TensorType, f32, i8, u8
from qcompiler.lowering import te_lib
from qcompiler.lowering import tvm_compat as tc
from qcompiler.ops.conv import ConvAttrs, requant_path
from qcompiler.ops.conv_transpose import ConvTransposeAttrs
from qcompiler.ops.linear import LinearAttrs, LinearLeakyReLUAttrs, MatmulAttrs
from qcompiler.reference import requant as rq
from qcompiler.reference.onednn_eltwise import onednn_linear_requantize, tanh_f32
from qcompiler.target import host_arch

pytestmark = pytest.mark.tvm

F32 = np.float32
ZX = 128
X_RAMP = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
"""x - ZX runs over -128..127: a 1x1 conv with w - zw = 1 has accumulator a at flat a + 128."""
OFFSETS = np.arange(-12, 13)
"""Biases tried around each solved bias, in float32 ulps."""


def _differs_from_f32(s: float) -> bool:
    return rq.onednn_scale(s) != F32(s)


# Activation / output scales where oneDNN's 1/float(1/s) differs from float(s) (~14 % do).
SX = next(s for s in np.linspace(0.0171, 0.0371, 400) if _differs_from_f32(float(s)))
SO = next(s for s in np.linspace(0.211, 0.411, 400) if _differs_from_f32(float(s)))
SX, SO = float(SX), float(SO)


# Weight scales that oneDNN's linear re-inversion 1/f32(1/f32(s)) changes.
_SW = np.round(np.linspace(1e-3, 2e-2, 4000), 6)
REINVERTED_SW = _SW[(F32(1.0) / (F32(1.0) / _SW.astype(F32))).astype(F32) != _SW.astype(F32)]


# --- numpy models: the reference formula and its neighbours --------------------------------------


def fbgemm_model(
    a: np.ndarray,
    b: np.ndarray,
    sw: np.ndarray,
    *,
    so: float,
    zo: int,
    per_tensor: bool,
    alt: str | None = None,
) -> np.ndarray:
    """requant.fbgemm_requantize for acc `a` (one element per channel), or a neighbour `alt`."""
    atws = (F32(SX) * sw.astype(F32)).astype(F32)
    mult = (atws / F32(so)).astype(F32)
    v = a.astype(F32)
    if per_tensor:
        rcp = F32(1.0 / np.float64(atws[0]))
        if alt == "unfused-bias":
            v = ((b * rcp).astype(F32) + v).astype(F32)
        else:
            v = rq.fma_f32_exact(b, rcp, v)
    elif alt == "reciprocal":
        v = (v + (b * (F32(1.0) / atws).astype(F32)).astype(F32)).astype(F32)
    else:
        v = (v + (b / atws).astype(F32)).astype(F32)
    t = (v * mult).astype(F32).astype(np.float64)
    r = np.sign(t) * np.floor(np.abs(t) + 0.5) if alt == "round-half-away" else np.rint(t)
    r = np.where(np.abs(t) < 2.0**31, r, -(2.0**31))
    return np.clip(r + zo, 0, 255).astype(np.uint8)


def onednn_model(
    a: np.ndarray,
    b: np.ndarray,
    sw: np.ndarray,
    e: np.ndarray | None = None,
    *,
    so: float,
    zo: int,
    se: float = 1.0,
    ze: int = 0,
    relu: bool = False,
    slope: float | None = None,
    tanh: bool = False,
    reinvert: bool = False,
    alt: str | None = None,
) -> np.ndarray:
    """requant.onednn_requantize for acc `a` (+ residual `e`), or a neighbour `alt`; with
    `slope` and `reinvert` onednn_eltwise.onednn_linear_requantize's leaky relu."""
    plain = alt == "plain-scales"
    src_s = F32(SX) if plain else rq.onednn_scale(SX)
    dinv = F32(1.0) / (F32(so) if plain else rq.onednn_scale(so))
    wei = sw.astype(F32)
    if reinvert and alt != "plain-w-scale":
        wei = (F32(1.0) / (F32(1.0) / wei).astype(F32)).astype(F32)
    a32 = a.astype(F32)
    if alt == "combined-scale":
        v = (a32 * (src_s * wei).astype(F32)).astype(F32)
    else:
        v = ((a32 * src_s).astype(F32) * wei).astype(F32)
    if alt == "bias-fma":
        v = rq.fma_f32_exact((a32 * src_s).astype(F32), wei, b)
    else:
        v = (v + b).astype(F32)
    if e is not None:
        if relu and alt == "relu-before-add":
            v = np.maximum(v, F32(0.0))
        prev = (e.astype(F32) - F32(ze)).astype(F32)
        ss = rq.onednn_scale(se)
        if alt == "unfused-residual":
            v = ((prev * ss).astype(F32) + v).astype(F32)
        else:
            v = rq.fma_f32_exact(prev, ss, v)
    if relu and alt != "relu-before-add":
        v = np.maximum(v, F32(0.0))
    if slope is not None:
        v = np.where(v > 0, v, (v * F32(slope)).astype(F32)).astype(F32)
    if tanh:
        v = np.tanh(v.astype(np.float64)).astype(F32) if alt == "libm-tanh" else tanh_f32(v)
    if alt == "dst-fma":
        r = np.rint(rq.fma_f32_exact(v, dinv, np.full(v.shape, zo, F32)).astype(np.float64))
    elif alt == "zo-after-rint":
        r = np.rint((v * dinv).astype(F32).astype(np.float64)) + zo
    else:
        r = np.rint(((v * dinv).astype(F32) + F32(zo)).astype(F32).astype(np.float64))
    return np.clip(r, 0, 255).astype(np.uint8)


@dataclass
class Crafted:
    """Per output channel: accumulator value, bias, weight scale, residual value."""

    a: np.ndarray
    b: np.ndarray
    sw: np.ndarray
    e: np.ndarray | None
    hits: dict[str, int] = field(default_factory=dict)
    """alternative -> channels on which it gives a different output than the reference."""


def onednn_solver(so: float, zo: int) -> Callable[..., np.ndarray]:
    """craft's `solve` for oneDNN epilogues with output qparams (so, zo): the f32 value v that
    requantizes to target t, minus the accumulator's share."""

    def solve(a: np.ndarray, t: np.ndarray, s: np.ndarray, e: object) -> np.ndarray:
        dinv = np.float64(F32(1.0) / rq.onednn_scale(so))
        return (t - zo) / dinv - a * np.float64(rq.onednn_scale(SX)) * s

    return solve


def craft(
    rng: np.random.Generator,
    model: Callable[..., np.ndarray],
    alts: list[str],
    solve: Callable[..., np.ndarray],
    *,
    t_range: tuple[int, int],
    per_tensor_sw: float | None = None,
    sw_pool: np.ndarray | None = None,
    with_e: bool = False,
    per_alt: int = 3,
    n: int = 4000,
) -> Crafted:
    """Search biases that put the pre-rounding value next to a .5 tie and pick, per alternative,
    `per_alt` candidates on which the alternative's output differs from the reference's.
    Weight scales: `per_tensor_sw`, else random per candidate (from `sw_pool` if given)."""
    a = rng.integers(-128, 128, n)
    if per_tensor_sw is not None:
        sw = np.full(n, per_tensor_sw)
    elif sw_pool is not None:
        sw = rng.choice(sw_pool, n)
    else:
        sw = np.round(rng.uniform(1e-3, 2e-2, n), 6)
    e = rng.integers(0, 256, n) if with_e else None
    tval = rng.integers(*t_range, n) + 0.5
    b0 = solve(a, tval, sw, e).astype(F32)
    bs = (b0[:, None] + OFFSETS[None, :] * np.spacing(b0)[:, None]).astype(F32).reshape(-1)
    rep = len(OFFSETS)
    ca, csw = np.repeat(a, rep), np.repeat(sw, rep)
    ce = None if e is None else np.repeat(e, rep)
    ref = model(ca, bs, csw, ce)
    chosen: list[int] = []
    diffs = {alt: model(ca, bs, csw, ce, alt=alt) != ref for alt in alts}
    for alt in alts:
        for j in np.flatnonzero(diffs[alt])[:per_alt]:
            if int(j) not in chosen:
                chosen.append(int(j))
    idx = np.array(chosen, dtype=np.int64)
    cr = Crafted(ca[idx], bs[idx], csw[idx], None if ce is None else ce[idx])
    cr.hits = {alt: int(diffs[alt][idx].sum()) for alt in alts}
    return cr


# --- graph building ------------------------------------------------------------------------------


def _wq(kind: str, scales: np.ndarray, zps: np.ndarray) -> QParams:
    if kind == "pt":
        scheme = "affine" if zps[0] else "symmetric"
        return QParams.per_tensor(float(scales[0]), int(zps[0]), scheme)
    scheme = "affine" if np.any(zps) else "symmetric"
    return QParams.per_axis(scales, zps, 0, scheme)


def add_conv(
    b: Builder,
    tag: str,
    op: str,
    xa: np.ndarray,
    xq: QParams,
    wa: np.ndarray,
    wq: QParams,
    bias: np.ndarray | None,
    attrs: ConvAttrs,
    inputs: list[np.ndarray],
    residual: tuple[np.ndarray, QParams] | None = None,
) -> Value:
    """A conv op on a new graph input `x` (and residual input), weights and bias as constants."""
    x = b.input(f"{tag}_x", TensorType(xa.shape, u8, xq))
    inputs.append(xa)
    args = [x, b.const(wa, TensorType(wa.shape, i8, wq), name=f"{tag}_w")]
    if bias is not None:
        args.append(b.const(bias.astype(F32), TensorType(bias.shape, f32), name=f"{tag}_b"))
    if residual is not None:
        ea, eq = residual
        args.append(b.input(f"{tag}_e", TensorType(ea.shape, u8, eq)))
        inputs.append(ea)
    return b.op(op, args, attrs, name=tag)


def crafted_conv(
    b: Builder,
    tag: str,
    op: str,
    cr: Crafted,
    wkind: str,
    zws: np.ndarray,
    so: float,
    zo: int,
    inputs: list[np.ndarray],
    residual_q: tuple[float, int] | None = None,
    rng: np.random.Generator | None = None,
) -> Value:
    """The 1x1 conv realising `cr`: channel o has w - zw[o] = 1 and bias b[o], so its
    accumulator is a[o] at flat position a[o] + 128 (the residual there is e[o])."""
    o = len(cr.a)
    wa = (zws + 1).astype(np.int8).reshape(o, 1, 1, 1)
    residual = None
    if residual_q is not None:
        assert rng is not None and cr.e is not None
        ea = rng.integers(0, 256, (1, o, 16, 16)).astype(np.uint8)
        pos = cr.a + 128
        ea[0, np.arange(o), pos // 16, pos % 16] = cr.e
        residual = (ea, QParams.per_tensor(*residual_q))
    attrs = ConvAttrs(QParams.per_tensor(so, zo), (1,), (0,), (1,), 1)
    return add_conv(
        b,
        tag,
        op,
        X_RAMP,
        QParams.per_tensor(SX, ZX),
        wa,
        _wq(wkind, cr.sw, zws),
        cr.b,
        attrs,
        inputs,
        residual,
    )


def crafted_linear(
    b: Builder,
    tag: str,
    op: str,
    cr: Crafted,
    wkind: str,
    zws: np.ndarray,
    attrs: object,
    inputs: list[np.ndarray],
) -> Value:
    """The K=1 linear realising `cr`: x [256, 1] = 0..255 (zx 128), w[o, 0] - zw[o] = 1, so
    output [a[o] + 128, o] sees accumulator a[o]."""
    o = len(cr.a)
    x = b.input(f"{tag}_x", TensorType((256, 1), u8, QParams.per_tensor(SX, ZX)))
    inputs.append(X_RAMP.reshape(256, 1))
    wa = (zws + 1).astype(np.int8).reshape(o, 1)
    w = b.const(wa, TensorType(wa.shape, i8, _wq(wkind, cr.sw, zws)), name=f"{tag}_w")
    bias = b.const(cr.b.astype(F32), TensorType((o,), f32), name=f"{tag}_b")
    return b.op(op, [x, w, bias], attrs, name=tag)


# --- the cases -----------------------------------------------------------------------------------

FBGEMM_PT_ALTS = ["unfused-bias", "round-half-away"]
FBGEMM_PC_ALTS = ["reciprocal"]
ONEDNN_ALTS = ["combined-scale", "zo-after-rint", "bias-fma", "dst-fma", "plain-scales"]
ADD_ALTS = ["unfused-residual", "relu-before-add", "zo-after-rint"]
LEAKY_ALTS = ["plain-w-scale", "combined-scale", "zo-after-rint", "bias-fma", "dst-fma"]
LEAKY_SLOPE = 0.2
TANH_ALTS = ["libm-tanh", "plain-w-scale"]
CRAFTED = {  # output name -> (crafted set, neighbours it must separate)
    "fbgemm-pt": ("fbgemm-pt", FBGEMM_PT_ALTS),
    "fbgemm-pc": ("fbgemm-pc", FBGEMM_PC_ALTS),
    "onednn": ("onednn", ONEDNN_ALTS),
    "add-relu": ("add-relu", ADD_ALTS),
    "linear-fbgemm-pt": ("fbgemm-pt", FBGEMM_PT_ALTS),
    "linear-fbgemm-pc": ("fbgemm-pc", FBGEMM_PC_ALTS),
    "linear-leaky": ("linear-leaky", LEAKY_ALTS),
    "linear-tanh": ("linear-tanh", TANH_ALTS),
}


@dataclass
class Cases:
    graph: Graph
    inputs: list[np.ndarray]
    names: list[str]
    crafted: dict[str, Crafted]
    probes: dict[str, tuple[np.ndarray, ...]]
    """output name -> index of the crafted elements (one per channel)"""
    notes: dict[str, object]


def make_cases(crafted_only: bool = False) -> Cases:
    """All cases in one graph (`crafted_only`: just the crafted epilogue cases)."""
    rng = np.random.default_rng(2024)
    b = Builder("conv_cases")
    inputs: list[np.ndarray] = []
    outs: list[Value] = []
    names: list[str] = []
    crafted: dict[str, Crafted] = {}
    probes: dict[str, tuple[np.ndarray, ...]] = {}
    notes: dict[str, object] = {}

    def conv_probe(name: str, cr: Crafted) -> None:
        pos = cr.a + 128
        probes[name] = (np.zeros_like(pos), np.arange(len(pos)), pos // 16, pos % 16)

    def linear_probe(name: str, cr: Crafted) -> None:
        probes[name] = (cr.a + 128, np.arange(len(cr.a)))

    def out(name: str, v: Value) -> None:
        names.append(name)
        outs.append(v)

    # fbgemm, per-tensor affine weights: bias through one FMA; rint ties
    so, zo, sw = 0.05, 128, 0.0037
    atws = F32(F32(SX) * F32(sw))
    mult = F32(atws / F32(so))
    rcp = F32(1.0 / np.float64(atws))
    cr = craft(
        rng,
        lambda a, bb, s, e, alt=None: fbgemm_model(
            a, bb, s, so=so, zo=zo, per_tensor=True, alt=alt
        ),
        FBGEMM_PT_ALTS,
        lambda a, t, s, e: (t / np.float64(mult) - a) / np.float64(rcp),
        t_range=(-zo, 255 - zo),
        per_tensor_sw=sw,
    )
    crafted["fbgemm-pt"] = cr
    zws = np.full(len(cr.a), 5)
    out("fbgemm-pt", crafted_conv(b, "fpt", "qnn.conv2d", cr, "pt", zws, so, zo, inputs))
    conv_probe("fbgemm-pt", cr)
    lattrs = LinearAttrs(QParams.per_tensor(so, zo))
    out("linear-fbgemm-pt", crafted_linear(b, "lpt", "qnn.linear", cr, "pt", zws, lattrs, inputs))
    linear_probe("linear-fbgemm-pt", cr)

    # fbgemm, per-channel affine weights: bias / atws as a true division
    so, zo = 0.05, 100

    def solve_pc(a: np.ndarray, t: np.ndarray, s: np.ndarray, e: object) -> np.ndarray:
        at = (F32(SX) * s.astype(F32)).astype(F32)
        mu = (at / F32(so)).astype(F32)
        return (t / mu.astype(np.float64) - a) * at.astype(np.float64)

    cr = craft(
        rng,
        lambda a, bb, s, e, alt=None: fbgemm_model(
            a, bb, s, so=so, zo=zo, per_tensor=False, alt=alt
        ),
        FBGEMM_PC_ALTS,
        solve_pc,
        t_range=(-zo, 255 - zo),
    )
    crafted["fbgemm-pc"] = cr
    zws = np.array([(-3, 0, 7, -11)[k % 4] for k in range(len(cr.a))])
    out("fbgemm-pc", crafted_conv(b, "fpc", "qnn.conv2d", cr, "pc", zws, so, zo, inputs))
    conv_probe("fbgemm-pc", cr)
    lattrs = LinearAttrs(QParams.per_tensor(so, zo))
    out("linear-fbgemm-pc", crafted_linear(b, "lpc", "qnn.linear", cr, "pc", zws, lattrs, inputs))
    linear_probe("linear-fbgemm-pc", cr)

    # oneDNN, per-channel symmetric weights
    so, zo = SO, 37

    cr = craft(
        rng,
        lambda a, bb, s, e, alt=None: onednn_model(a, bb, s, so=so, zo=zo, alt=alt),
        ONEDNN_ALTS,
        onednn_solver(so, zo),
        t_range=(zo - 2, zo + 3),  # small |v|: the product's last bits matter most
    )
    crafted["onednn"] = cr
    zws = np.zeros(len(cr.a), np.int64)
    out("onednn", crafted_conv(b, "odn", "qnn.conv2d", cr, "pc", zws, so, zo, inputs))
    conv_probe("onednn", cr)

    # oneDNN linear with leaky relu: re-inverted weight scales, the slope after the bias
    so, zo = SO, 60

    cr = craft(
        rng,
        lambda a, bb, s, e, alt=None: onednn_model(
            a, bb, s, so=so, zo=zo, slope=LEAKY_SLOPE, reinvert=True, alt=alt
        ),
        LEAKY_ALTS,
        onednn_solver(so, zo),
        t_range=(zo - 2, zo + 3),  # small |v|: the product's last bits matter most
        sw_pool=REINVERTED_SW,
    )
    crafted["linear-leaky"] = cr
    lattrs = LinearLeakyReLUAttrs(QParams.per_tensor(so, zo), LEAKY_SLOPE)
    zws = np.zeros(len(cr.a), np.int64)
    out(
        "linear-leaky",
        crafted_linear(b, "llk", "qnn.linear_leaky_relu", cr, "pc", zws, lattrs, inputs),
    )
    linear_probe("linear-leaky", cr)

    # oneDNN linear with tanh: oneDNN's own float32 tanh (a table of polynomials), not libm's
    so, zo = 2 / 256, 128

    def solve_tanh(a: np.ndarray, t: np.ndarray, s: np.ndarray, e: object) -> np.ndarray:
        dinv = np.float64(F32(1.0) / rq.onednn_scale(so))
        wei = 1.0 / (1.0 / s.astype(F32)).astype(F32).astype(np.float64)
        return np.arctanh((t - zo) / dinv) - a * np.float64(rq.onednn_scale(SX)) * wei

    cr = craft(
        rng,
        lambda a, bb, s, e, alt=None: onednn_model(
            a, bb, s, so=so, zo=zo, tanh=True, reinvert=True, alt=alt
        ),
        TANH_ALTS,
        solve_tanh,
        t_range=(2, 254),
        sw_pool=REINVERTED_SW,
    )
    crafted["linear-tanh"] = cr
    lattrs = LinearAttrs(QParams.per_tensor(so, zo))
    zws = np.zeros(len(cr.a), np.int64)
    out("linear-tanh", crafted_linear(b, "ltn", "qnn.linear_tanh", cr, "pc", zws, lattrs, inputs))
    linear_probe("linear-tanh", cr)

    # conv2d_add_relu: residual through one FMA, relu after the add
    so, zo, se, ze = SO, 41, 0.0293, 131

    def solve_add(a: np.ndarray, t: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
        dinv = np.float64(F32(1.0) / rq.onednn_scale(so))
        res = (e - ze) * np.float64(rq.onednn_scale(se))
        return (t - zo) / dinv - a * np.float64(rq.onednn_scale(SX)) * s - res

    cr = craft(
        rng,
        lambda a, bb, s, e, alt=None: onednn_model(
            a, bb, s, e, so=so, zo=zo, se=se, ze=ze, relu=True, alt=alt
        ),
        ADD_ALTS,
        solve_add,
        t_range=(zo, 255),
        with_e=True,
    )
    crafted["add-relu"] = cr
    zws = np.zeros(len(cr.a), np.int64)
    out(
        "add-relu",
        crafted_conv(b, "add", "qnn.conv2d_add_relu", cr, "pc", zws, so, zo, inputs, (se, ze), rng),
    )
    conv_probe("add-relu", cr)

    if crafted_only:
        return Cases(b.finish(*outs), inputs, names, crafted, probes, notes)

    # huge biases: fbgemm's INT32_MIN trap (relu: -> zo) and oneDNN's float saturation
    pattern = np.array([3e9, -3e9, 2e9, -2e9, 6e8, 2.0**31, 2.0**31 - 256, 0.0])
    for tag, op, zw in (("trap", "qnn.conv2d_relu", -128), ("sat", "qnn.conv2d", 0)):
        so, zo = 0.5, 17
        wa = rng.integers(-128, 128, (8, 3, 1, 1)).astype(np.int8)
        xa = rng.integers(0, 256, (1, 3, 4, 5)).astype(np.uint8)
        wq = QParams.per_tensor(0.01, zw, "affine" if zw else "symmetric")
        bias = (pattern * so).astype(F32)
        attrs = ConvAttrs(QParams.per_tensor(so, zo), (1,), (0,), (1,), 1)
        out(tag, add_conv(b, tag, op, xa, QParams.per_tensor(0.02, 9), wa, wq, bias, attrs, inputs))

    # int32 accumulator wrap-around in 2-D: 8192 channels x 3x3 taps of 255 * +-128
    xa = np.full((1, 8192, 3, 3), 255, np.uint8)
    wa = np.empty((3, 8192, 3, 3), np.int8)
    wa[0], wa[1], wa[2] = -128, 127, 127
    wa[2, ::64] = -128
    wq = QParams.per_tensor(1e-4, 0, "symmetric")
    attrs = ConvAttrs(QParams.per_tensor(20.0, 100), (1,), (0,), (1,), 1)
    out(
        "wrap2d",
        add_conv(
            b, "wrap", "qnn.conv2d", xa, QParams.per_tensor(0.01, 0), wa, wq, None, attrs, inputs
        ),
    )
    exact = np.einsum("nchw,ochw->o", xa.astype(np.int64), wa.astype(np.int64))
    notes["wrap2d-exact"] = exact

    # layouts, groups, strides, dilations (channels-first for Cg < 3, channels-last otherwise)
    def conv_case(
        tag: str,
        op: str,
        c: int,
        o: int,
        sp: tuple[int, ...],
        k: tuple[int, ...],
        stride: tuple[int, ...],
        pad: tuple[int, ...],
        dil: tuple[int, ...],
        groups: int,
        wkind: str,
        n: int = 1,
    ) -> None:
        xa = rng.integers(0, 256, (n, c, *sp)).astype(np.uint8)
        wa = rng.integers(-128, 128, (o, c // groups, *k)).astype(np.int8)
        scales = np.round(rng.uniform(1e-3, 1e-2, o), 6)
        zps = rng.integers(-20, 21, o) if wkind.endswith("aff") else np.zeros(o, np.int64)
        wq = _wq(wkind[:2], scales, zps)
        bias = (rng.standard_normal(o) * 2).astype(F32)
        attrs = ConvAttrs(QParams.per_tensor(0.15, 90), stride, pad, dil, groups)
        xq = QParams.per_tensor(0.03, int(rng.integers(0, 256)))
        out(tag, add_conv(b, tag, op, xa, xq, wa, wq, bias, attrs, inputs))

    conv_case(
        "depthwise-x2", "qnn.conv2d", 8, 16, (9, 8), (3, 3), (2, 2), (2, 2), (2, 2), 8, "pc-aff"
    )
    conv_case(
        "depthwise-relu",
        "qnn.conv2d_relu",
        6,
        6,
        (7, 7),
        (3, 3),
        (1, 1),
        (1, 1),
        (1, 1),
        6,
        "pt-sym",
    )
    conv_case(
        "groups4-cl", "qnn.conv2d", 16, 8, (7, 9), (3, 2), (2, 1), (1, 2), (1, 2), 4, "pt-sym", n=2
    )
    conv_case(
        "groups2-cf-nopad", "qnn.conv2d", 4, 6, (6, 7), (2, 3), (1, 2), (0, 0), (2, 1), 2, "pc-aff"
    )
    conv_case("conv1d-cl", "qnn.conv1d", 6, 5, (17,), (3,), (2,), (1,), (2,), 1, "pc-aff")
    conv_case(
        "conv3d",
        "qnn.conv3d_relu",
        4,
        4,
        (5, 6, 5),
        (3, 2, 3),
        (2, 1, 1),
        (1, 0, 1),
        (1, 2, 1),
        1,
        "pt-sym",
    )
    conv_case(
        "groups128-fbgemm",
        "qnn.conv2d",
        128,
        128,
        (4, 4),
        (3, 3),
        (1, 1),
        (1, 1),
        (1, 1),
        128,
        "pt-sym",
    )

    # transposed convs: padding beyond the dilated kernel (the upsampled input starts inside
    # the data), stride 3 with dilation 2, channels-last (Cg >= 3) and channels-first
    def conv_t_case(
        tag: str,
        op: str,
        c: int,
        o: int,
        sp: tuple[int, ...],
        k: tuple[int, ...],
        stride: tuple[int, ...],
        pad: tuple[int, ...],
        out_pad: tuple[int, ...],
        dil: tuple[int, ...],
        groups: int,
        zw: int,
    ) -> None:
        xa = rng.integers(0, 256, (1, c, *sp)).astype(np.uint8)
        wa = rng.integers(-128, 128, (c, o // groups, *k)).astype(np.int8)
        wq = QParams.per_tensor(0.004, zw, "affine" if zw else "symmetric")
        bias = (rng.standard_normal(o) * 2).astype(F32)
        attrs = ConvTransposeAttrs(QParams.per_tensor(0.2, 77), stride, pad, out_pad, dil, groups)
        x = b.input(f"{tag}_x", TensorType(xa.shape, u8, QParams.per_tensor(0.03, 140)))
        inputs.append(xa)
        wv = b.const(wa, TensorType(wa.shape, i8, wq), name=f"{tag}_w")
        bv = b.const(bias, TensorType((o,), f32), name=f"{tag}_b")
        out(tag, b.op(op, [x, wv, bv], attrs, name=tag))

    conv_t_case(
        "convT-crop-g2",
        "qnn.conv_transpose2d",
        4,
        6,
        (5, 4),
        (1, 3),
        (2, 3),
        (1, 3),
        (1, 2),
        (1, 1),
        2,
        -7,
    )
    conv_t_case(
        "convT1d-cl", "qnn.conv_transpose1d", 6, 4, (7,), (3,), (3,), (1,), (1,), (2,), 1, 0
    )

    # matmul: vector . vector (a rank-0 result) and matrix @ vector
    for tag, sa, sb in (("matmul-dot", (7,), (7,)), ("matmul-mv", (2, 3, 5), (5,))):
        aq, bq = QParams.per_tensor(0.05, 3), QParams.per_tensor(0.07, 250)
        av = b.input(f"{tag}_a", TensorType(sa, u8, aq))
        bv = b.input(f"{tag}_b", TensorType(sb, u8, bq))
        inputs += [
            rng.integers(0, 256, sa).astype(np.uint8),
            rng.integers(0, 256, sb).astype(np.uint8),
        ]
        out(tag, b.op("qnn.matmul", [av, bv], MatmulAttrs(QParams.per_tensor(40.0, 128), u8)))

    return Cases(b.finish(*outs), inputs, names, crafted, probes, notes)


@pytest.fixture(scope="module")
def cases() -> Cases:
    return make_cases()


@pytest.fixture(scope="module")
def compiled(cases: Cases) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], object]:
    res = build(cases.graph, opt_level=1, strict_schedules=True)
    got = res.module.run_numpy(*cases.inputs)
    want = qc.interpret(cases.graph, *cases.inputs)
    want = want if isinstance(want, tuple) else (want,)
    return dict(zip(cases.names, got)), dict(zip(cases.names, want)), res


CASE_NAMES = [
    "fbgemm-pt",
    "linear-fbgemm-pt",
    "fbgemm-pc",
    "linear-fbgemm-pc",
    "onednn",
    "linear-leaky",
    "linear-tanh",
    "add-relu",
    "trap",
    "sat",
    "wrap2d",
    "depthwise-x2",
    "depthwise-relu",
    "groups4-cl",
    "groups2-cf-nopad",
    "conv1d-cl",
    "conv3d",
    "groups128-fbgemm",
    "convT-crop-g2",
    "convT1d-cl",
    "matmul-dot",
    "matmul-mv",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_compiled_equals_interpreter(name: str, compiled) -> None:
    got, want, _ = compiled
    g, w = got[name], want[name]
    assert g.dtype == w.dtype and g.shape == w.shape
    bad = g != w
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        pytest.fail(
            f"{name}: {int(bad.sum())}/{bad.size} differ, first at {pos}: "
            f"compiled {g[pos]} vs interpreter {w[pos]}"
        )


def test_case_list_is_complete(cases: Cases) -> None:
    assert sorted(cases.names) == sorted(CASE_NAMES)


@pytest.mark.parametrize("target", ["x86-avx2", "x86-generic"])
def test_crafted_cases_on_other_targets(target: str) -> None:
    """The rounding holds without AVX-512 (haswell: FMA contraction available to LLVM) and
    without FMA at all (SSE2: `llvm.fma` becomes a libm call)."""
    if host_arch() != "x86_64":
        pytest.skip("x86 presets")
    c = make_cases(crafted_only=True)
    res = build(c.graph, target=target, opt_level=1, strict_schedules=True)
    got = res.module.run_numpy(*c.inputs)
    want = qc.interpret(c.graph, *c.inputs)
    bad = [n for n, g, w in zip(c.names, got, want) if not np.array_equal(g, w)]
    assert not bad, f"{target}: compiled != interpreter for {bad}"


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_cases_separate_the_neighbour_formulas(name: str, cases: Cases, compiled) -> None:
    """Each neighbour formula is wrong on some crafted channel, where the compiled kernel is
    right: the outputs at the crafted positions equal the reference model's."""
    key, alts = CRAFTED[name]
    cr = cases.crafted[key]
    for alt in alts:
        assert cr.hits[alt] >= 1, f"{key}: the search found no case for {alt!r}: {cr.hits}"
    got, want, _ = compiled
    idx = cases.probes[name]
    np.testing.assert_array_equal(got[name][idx], want[name][idx])


def test_crafted_models_match_the_reference(cases: Cases) -> None:
    """The numpy models without `alt` are requant.py's functions (so the neighbours are honest)."""
    cr = cases.crafted["fbgemm-pt"]
    ref = rq.fbgemm_requantize(cr.a[None], SX, cr.sw, 0.05, 128, bias=cr.b, per_tensor_weight=True)[
        0
    ]
    np.testing.assert_array_equal(
        ref, fbgemm_model(cr.a, cr.b, cr.sw, so=0.05, zo=128, per_tensor=True)
    )
    cr = cases.crafted["onednn"]
    ref = rq.onednn_requantize(cr.a[None], SX, cr.sw, SO, 37, bias=cr.b)[0]
    np.testing.assert_array_equal(ref, onednn_model(cr.a, cr.b, cr.sw, so=SO, zo=37))
    cr = cases.crafted["linear-leaky"]
    ref = onednn_linear_requantize(
        cr.a[None], SX, cr.sw, SO, 60, bias=cr.b, post_op="leaky_relu", negative_slope=LEAKY_SLOPE
    )[0]
    np.testing.assert_array_equal(
        ref, onednn_model(cr.a, cr.b, cr.sw, so=SO, zo=60, slope=LEAKY_SLOPE, reinvert=True)
    )
    cr = cases.crafted["linear-tanh"]
    ref = onednn_linear_requantize(cr.a[None], SX, cr.sw, 2 / 256, 128, bias=cr.b, post_op="tanh")[
        0
    ]
    np.testing.assert_array_equal(
        ref, onednn_model(cr.a, cr.b, cr.sw, so=2 / 256, zo=128, tanh=True, reinvert=True)
    )
    cr = cases.crafted["add-relu"]
    assert cr.e is not None
    ref = rq.onednn_requantize(
        cr.a[None], SX, cr.sw, SO, 41, bias=cr.b, relu=True, residual=(cr.e[None], 0.0293, 131)
    )[0]
    np.testing.assert_array_equal(
        ref, onednn_model(cr.a, cr.b, cr.sw, cr.e, so=SO, zo=41, se=0.0293, ze=131, relu=True)
    )


def test_huge_bias_trap_and_saturation(compiled) -> None:
    got, _, _ = compiled
    # bias/so = [3e9, -3e9, 2e9, -2e9, 6e8, 2**31, 2**31-256, 0]; the conv part is tiny
    trap = got["trap"][0, :, 0, 0]  # fbgemm + relu: |t| >= 2**31 -> INT32_MIN -> clamps to zo
    assert trap[[0, 1, 5]].tolist() == [17, 17, 17]
    assert trap[[2, 4, 6]].tolist() == [255, 255, 255] and trap[3] == 17
    sat = got["sat"][0, :, 0, 0]  # oneDNN: saturates in float, no trap
    assert sat[[0, 2, 4, 5, 6]].tolist() == [255] * 5 and sat[[1, 3]].tolist() == [0, 0]


def test_int32_accumulator_wraps(cases: Cases, compiled) -> None:
    exact = cases.notes["wrap2d-exact"]
    assert isinstance(exact, np.ndarray)
    assert (np.abs(exact) >= 2**31).all(), exact  # every channel overflows int32
    got, _, res = compiled
    y = got["wrap2d"][0, :, 0, 0]
    # the wrapped accumulators requantize into range; unwrapped ones would saturate to 0 / 255
    assert ((y > 0) & (y < 255)).all(), y
    kf = next(k for k in res.lowered.funcs if "8192" in k.func.script())
    assert "int64" in kf.func.script()  # summed in int64, wrapped to int32 afterwards


def test_fbgemm_bias_is_a_single_rounding_fma(compiled) -> None:
    """llvm.fma survives to the LLVM IR (not mul + add, not fmuladd) in the per-tensor fbgemm
    kernel; products the reference rounds separately are fenced."""
    _, _, res = compiled
    (llvm_mod,) = [m for m in res.executable.mod.imports if m.kind == "llvm"]
    ll = llvm_mod.inspect_source("ll")
    (kernel,) = [k.func.name for k in res.lowered.kernels if k.outputs[0].name == "fpt"]
    bodies = re.findall(
        rf"^define [^\n]*@{kernel}(?:_compute_)?\(.*?^}}$", ll, re.DOTALL | re.MULTILINE
    )
    body = "\n".join(bodies)
    assert bodies and re.search(r"@llvm\.fma\.(v\d+)?f32", body), kernel
    assert "fmuladd" not in body
    # oneDNN kernels: fenced products, no FMA
    (onednn,) = [k.func.name for k in res.lowered.kernels if k.outputs[0].name == "odn"]
    bodies = re.findall(
        rf"^define [^\n]*@{onednn}(?:_compute_)?\(.*?^}}$", ll, re.DOTALL | re.MULTILINE
    )
    body = "\n".join(bodies)
    assert bodies and "llvm.arithmetic.fence" in body
    assert "fmuladd" not in body and not re.search(r"@llvm\.fma\.", body)


def test_accumulator_width() -> None:
    assert te_lib.int_acc_dtype(576, 255 * 255) == "int32"
    assert te_lib.int_acc_dtype(33025, 255 * 255) == "int32"  # 33025 * 65025 < 2**31
    assert te_lib.int_acc_dtype(33026, 255 * 255) == "int64"
    # conv_accumulate picks it from the zero points: |x - zx| <= 255 - zx, |w - zw| <= 128 + zw
    with te_lib.lowering_context():
        x = tc.te.placeholder((1, 8192, 3, 3), "uint8", name="x")
        w = tc.te.placeholder((2, 8192, 3, 3), "int8", name="w")
        acc = te_lib.conv_accumulate(x, 0, w, [0, 0], (1, 1), (0, 0), (1, 1), 1)
        assert acc.dtype == "int32" and acc.op.name == "conv_wrap"
        x = tc.te.placeholder((1, 64, 9, 9), "uint8", name="x")
        w = tc.te.placeholder((8, 64, 3, 3), "int8", name="w")
        acc = te_lib.conv_accumulate(x, 128, w, [0] * 8, (1, 1), (1, 1), (1, 1), 1)
        assert acc.dtype == "int32" and acc.op.name == "conv_acc"


def test_requant_path_choice_is_the_references() -> None:
    """The lowering takes requant_path from ops/conv.py: spot-check the cases above use both."""
    assert requant_path(QParams.per_tensor(0.1, 5, "affine"), 1) == "fbgemm"
    assert requant_path(QParams.per_tensor(0.1, 0, "symmetric"), 128) == "fbgemm"
    assert requant_path(QParams.per_tensor(0.1, 0, "symmetric"), 100) == "onednn"


# --- a small network through qc.compile ----------------------------------------------------------


def test_conv_chain_compiles_and_matches() -> None:
    """x -> conv2d (oneDNN) -> conv2d_relu (fbgemm) -> conv2d_add_relu(residual = first conv)."""
    rng = np.random.default_rng(7)
    b = Builder("chain")
    x = b.input("x", TensorType((1, 8, 12, 12), u8, QParams.per_tensor(0.03, 110)))

    def consts(tag: str, o: int, c: int, k: int, wq: QParams) -> list[Value]:
        wa = rng.integers(-128, 128, (o, c, k, k)).astype(np.int8)
        ba = (rng.standard_normal(o) * 0.5).astype(F32)
        return [
            b.const(wa, TensorType(wa.shape, i8, wq), name=f"{tag}_w"),
            b.const(ba, TensorType((o,), f32), name=f"{tag}_b"),
        ]

    pc = QParams.per_axis(np.round(rng.uniform(2e-3, 8e-3, 16), 6), [0] * 16, 0, "symmetric")
    c1 = b.op(
        "qnn.conv2d",
        [x, *consts("c1", 16, 8, 3, pc)],
        ConvAttrs(QParams.per_tensor(0.05, 120), (1,), (1,), (1,), 1),
        name="c1",
    )
    c2 = b.op(
        "qnn.conv2d_relu",
        [c1, *consts("c2", 16, 16, 3, QParams.per_tensor(0.004, -3, "affine"))],
        ConvAttrs(QParams.per_tensor(0.04, 30), (1,), (1,), (1,), 1),
        name="c2",
    )
    c3 = b.op(
        "qnn.conv2d_add_relu",
        [c2, *consts("c3", 16, 16, 1, pc), c1],
        ConvAttrs(QParams.per_tensor(0.06, 0), (1,), (0,), (1,), 1),
        name="y",
    )
    g = b.finish(c3, c1)
    xa = rng.integers(0, 256, (1, 8, 12, 12)).astype(np.uint8)
    cm = qc.compile(g)
    y, y1 = cm(xa)
    want_y, want_y1 = qc.interpret(g, xa)
    np.testing.assert_array_equal(y1, want_y1)
    np.testing.assert_array_equal(y, want_y)
    assert 0 < int(np.count_nonzero(y)) < y.size  # relu clamps some, not all
    assert [k["op"] for k in cm.kernels] == ["qnn.conv2d", "qnn.conv2d_relu", "qnn.conv2d_add_relu"]


def test_typical_conv_is_not_slow() -> None:
    """64 -> 64 channels, 56x56, 3x3: compiles in seconds and runs in milliseconds (measured
    ~5-15 ms on 2 loaded vCPUs with the generic schedule; the bound is loose for CI)."""
    rng = np.random.default_rng(1)
    b = Builder("typical")
    x = b.input("x", TensorType((1, 64, 56, 56), u8, QParams.per_tensor(0.02, 120)))
    wa = rng.integers(-128, 128, (64, 64, 3, 3)).astype(np.int8)
    w = b.const(wa, TensorType(wa.shape, i8, QParams.per_tensor(0.005, 0, "symmetric")))
    y = b.op("qnn.conv2d", [x, w], ConvAttrs(QParams.per_tensor(0.3, 100), (1,), (1,), (1,), 1))
    g = b.finish(y)
    xa = rng.integers(0, 256, (1, 64, 56, 56)).astype(np.uint8)
    t0 = time.perf_counter()
    cm = qc.compile(g)
    got = cm(xa)
    compile_s = time.perf_counter() - t0
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        cm(xa)
        runs.append(time.perf_counter() - t)
    np.testing.assert_array_equal(got, qc.interpret(g, xa))
    assert compile_s < 30, f"compile took {compile_s:.1f} s"
    assert min(runs) < 0.25, f"best run {min(runs) * 1e3:.0f} ms"
