"""x86 int8 kernels (codegen/x86): exact against `qc.interpret`, and the instructions we expect.

The layer set of issue 7 at reduced sizes (3x3 s1, 1x1 s2, the 7x7 s2 stem with 3 input
channels, depthwise, linear at batch 1 and 128, conv2d_add, a conv with a qnn.add epilogue
node), with oneDNN-path (symmetric) and fbgemm-path (zero points != 0) weights, huge biases
(fbgemm's INT32_MIN trap, saturation), relu, i8 activations, odd channel counts and K % 4 != 0.
All single-op kernels of a target go into one graph, compiled once (schedule-rule and strategy
errors re-raised), so the whole file compiles a handful of modules.

VNNI tests skip on hosts without avx512vnni; the exact AVX2 path (`vpmaddwd` on int16) runs on
any AVX2 host, including with activations of 255 and weights of 127 / -128, where the
saturating `vpmaddubsw` would be wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcompiler as qc
from qcompiler.codegen import x86_plan
from qcompiler.codegen.x86 import intrin, strategies
from qcompiler.driver import BuildResult, build
from qcompiler.ir.builder import Builder
from qcompiler.ir.graph import Value
from qcompiler.ir.types import QParams, TensorType, f32, i8, u8
from qcompiler.lowering import tvm_compat as tc
from qcompiler.lowering.to_relax import KernelGroup
from qcompiler.ops.conv import ConvAttrs
from qcompiler.ops.elementwise import QBinaryAttrs
from qcompiler.ops.linear import LinearAttrs, LinearLeakyReLUAttrs
from qcompiler.target import get_target, host_arch, host_features

pytestmark = pytest.mark.tvm

HAS_VNNI = host_arch() == "x86_64" and "avx512vnni" in host_features()
HAS_AVX2 = host_arch() == "x86_64" and "avx2" in host_features()
HAS_AVX512BW = host_arch() == "x86_64" and "avx512bw" in host_features()
needs_vnni = pytest.mark.skipif(not HAS_VNNI, reason="host CPU lacks avx512vnni")
needs_avx2 = pytest.mark.skipif(not HAS_AVX2, reason="host CPU lacks avx2")

CONV_RULE = "conv2d_int8_x86"
DENSE_RULE = "dense_int8_x86"


# --- the graph: one output per case --------------------------------------------------------------


@dataclass
class Cases:
    builder: Builder = field(default_factory=lambda: Builder("x86_cases"))
    names: list[str] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    inputs: list[np.ndarray] = field(default_factory=list)
    rule: dict[str, str] = field(default_factory=dict)
    """Expected schedule rule of each case's kernel."""


def _wq(rng: np.random.Generator, kind: str, o: int) -> QParams:
    """pt/pc (per tensor / per channel) x sym (oneDNN path) / aff (fbgemm path, zps != 0)."""
    sym = kind.endswith("sym")
    scheme = "symmetric" if sym else "affine"
    if kind.startswith("pt"):
        return QParams.per_tensor(0.004, 0 if sym else -37, scheme)
    scales = [0.002 * (1 + 0.13 * j) for j in range(o)]
    zps = [0] * o if sym else [int(z) for z in rng.integers(-128, 128, o)]
    if not sym:
        zps[0], zps[-1] = -128, 127
    return QParams.per_axis(scales, zps, 0, scheme)


def _x(rng: np.random.Generator, shape: tuple[int, ...], dtype: str = "uint8") -> np.ndarray:
    lo, hi = (0, 256) if dtype == "uint8" else (-128, 128)
    a = rng.integers(lo, hi, shape).astype(dtype)
    flat = a.reshape(-1)
    flat[rng.integers(0, flat.size, max(1, flat.size // 8))] = hi - 1   # saturating values
    flat[rng.integers(0, flat.size, max(1, flat.size // 16))] = lo
    return a


def _weight(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    w = rng.integers(-128, 128, shape).astype(np.int8)
    flat = w.reshape(-1)
    flat[rng.integers(0, flat.size, max(1, flat.size // 8))] = -128
    flat[rng.integers(0, flat.size, max(1, flat.size // 8))] = 127
    return w


def add_conv(cs: Cases, rng: np.random.Generator, name: str, *, c: int, o: int, hw: int, k: int,
             stride: int = 1, pad: int = 0, groups: int = 1, weight: str = "pc-sym",
             op: str = "qnn.conv2d", huge_bias: bool = False, zx: int = 11,
             rule: str = CONV_RULE) -> None:
    b = cs.builder
    x = b.input(f"x_{name}", TensorType((1, c, hw, hw), u8, QParams.per_tensor(0.03, zx)))
    cs.inputs.append(_x(rng, (1, c, hw, hw)))
    wa = _weight(rng, (o, c // groups, k, k))
    w = b.const(wa, TensorType(wa.shape, i8, _wq(rng, weight, o)), f"w_{name}")
    bias = (rng.standard_normal(o) * 3).astype(np.float32)
    so = 0.4
    if huge_bias:  # |bias / so| around 2**31: fbgemm's INT32_MIN trap next to saturation
        bias[:] = (np.resize(np.array([3e9, -3e9, 2e9, -2e9, 6e8]), o) * so).astype(np.float32)
    ins = [x, w, b.const(bias, TensorType((o,), f32), f"b_{name}")]
    oh = (hw + 2 * pad - k) // stride + 1
    if op.startswith("qnn.conv2d_add"):
        e = b.input(f"e_{name}", TensorType((1, o, oh, oh), u8, QParams.per_tensor(0.2, 130)))
        cs.inputs.append(_x(rng, (1, o, oh, oh)))
        ins.append(e)
    attrs = ConvAttrs(QParams.per_tensor(so, 120), (stride,), (pad,), (1,), groups)
    cs.outputs.append(b.op(op, ins, attrs, name=name))
    cs.names.append(name)
    cs.rule[name] = rule


def add_linear(cs: Cases, rng: np.random.Generator, name: str, *, lead: tuple[int, ...], k: int,
               n: int, weight: str = "pc-sym", op: str = "qnn.linear", x_dtype: str = "uint8",
               huge_bias: bool = False) -> None:
    b = cs.builder
    xdt = u8 if x_dtype == "uint8" else i8
    x = b.input(f"x_{name}", TensorType((*lead, k), xdt, QParams.per_tensor(0.05, 3)))
    cs.inputs.append(_x(rng, (*lead, k), x_dtype))
    wa = _weight(rng, (n, k))
    w = b.const(wa, TensorType(wa.shape, i8, _wq(rng, weight, n)), f"w_{name}")
    bias = (rng.standard_normal(n) * 2).astype(np.float32)
    oq = QParams.per_tensor(0.3, 125 if x_dtype == "uint8" else -3)
    if huge_bias:
        bias[:] = (np.resize(np.array([3e9, -3e9, 2e9, -2e9, 6e8]), n) * 0.3).astype(np.float32)
    ins = [x, w, b.const(bias, TensorType((n,), f32), f"b_{name}")]
    attrs = (LinearLeakyReLUAttrs(oq, 0.1, xdt) if op == "qnn.linear_leaky_relu"
             else LinearAttrs(oq, xdt))
    cs.outputs.append(b.op(op, ins, attrs, name=name))
    cs.names.append(name)
    cs.rule[name] = DENSE_RULE


def make_cases() -> Cases:
    rng = np.random.default_rng(7)
    cs = Cases()
    # the layer set, reduced
    add_conv(cs, rng, "c3x3_s1_relu", c=16, o=32, hw=10, k=3, pad=1, op="qnn.conv2d_relu")
    add_conv(cs, rng, "c3x3_s1_fbgemm", c=12, o=20, hw=9, k=3, pad=1, weight="pc-aff")
    add_conv(cs, rng, "c3x3_s2_odd", c=5, o=24, hw=11, k=3, stride=2, pad=1)
    add_conv(cs, rng, "c1x1_s2", c=24, o=40, hw=14, k=1, stride=2, weight="pt-aff")
    add_conv(cs, rng, "c1x1_s1_fbgemm", c=20, o=16, hw=8, k=1, weight="pc-aff", zx=255)
    # 1x1 convs: per-row tiles (14 x 14), flat tiles spanning rows (8 x 8 above, 16 x 16 s2),
    # flat with the channel tiles outside (weights beyond L1: 256 x 256)
    add_conv(cs, rng, "c1x1_rows", c=24, o=12, hw=14, k=1, weight="pc-aff")
    add_conv(cs, rng, "c1x1_s2_flat", c=72, o=192, hw=16, k=1, stride=2)
    add_conv(cs, rng, "c1x1_flat_wide", c=256, o=256, hw=4, k=1, weight="pt-aff")
    add_conv(cs, rng, "stem7x7_s2", c=3, o=16, hw=32, k=7, stride=2, pad=3)
    # strided 3x3 convs (ResNet downsampling, reduced): every weight kind, odd sizes, with and
    # without padding, fused relu / residual add
    add_conv(cs, rng, "c3x3_s2_pc_sym", c=16, o=32, hw=14, k=3, stride=2, pad=1)
    add_conv(cs, rng, "c3x3_s2_pc_aff_odd", c=12, o=20, hw=13, k=3, stride=2, pad=1,
             weight="pc-aff", zx=255)
    add_conv(cs, rng, "c3x3_s2_pt_aff_nopad", c=20, o=16, hw=9, k=3, stride=2,
             weight="pt-aff", op="qnn.conv2d_relu")
    add_conv(cs, rng, "c3x3_s2_pt_sym_add", c=8, o=24, hw=11, k=3, stride=2, pad=1,
             weight="pt-sym", op="qnn.conv2d_add_relu")
    # few input channels: (kw, c) folded into the reduction (x86_plan.ConvPlan.fold)
    add_conv(cs, rng, "stem7x7_s2_aff_odd", c=3, o=16, hw=19, k=7, stride=2, pad=3,
             weight="pc-aff", zx=0)
    add_conv(cs, rng, "fold5x5_s2_c1", c=1, o=8, hw=15, k=5, stride=2, pad=2, weight="pt-aff")
    add_conv(cs, rng, "fold3x3_s1_c2", c=2, o=12, hw=10, k=3, pad=1, weight="pt-sym")
    add_conv(cs, rng, "huge_bias_fbgemm", c=8, o=16, hw=6, k=3, pad=1, weight="pt-aff",
             huge_bias=True)
    add_conv(cs, rng, "huge_bias_onednn", c=8, o=16, hw=6, k=1, huge_bias=True)
    add_conv(cs, rng, "add_relu", c=16, o=24, hw=7, k=3, pad=1, op="qnn.conv2d_add_relu")
    add_conv(cs, rng, "depthwise", c=16, o=16, hw=9, k=3, pad=1, groups=16,
             rule="depthwise_int8_x86")
    add_linear(cs, rng, "fc_b1_fbgemm", lead=(1,), k=100, n=40, weight="pt-aff",
               huge_bias=True)
    add_linear(cs, rng, "fc_b128_relu", lead=(128,), k=64, n=48, op="qnn.linear_relu")
    add_linear(cs, rng, "fc_3d_fbgemm", lead=(2, 3), k=36, n=20, weight="pc-aff")
    add_linear(cs, rng, "fc_i8_leaky", lead=(5,), k=32, n=16, op="qnn.linear_leaky_relu",
               x_dtype="int8")
    # a kernel group: conv -> qnn.add with another input (the add is the group's epilogue)
    b = cs.builder
    add_conv(cs, rng, "conv_then_add", c=8, o=16, hw=8, k=3, pad=1)
    conv_out = cs.outputs.pop()
    cs.names.pop()
    other = b.input("x_other", TensorType((1, 16, 8, 8), u8, QParams.per_tensor(0.25, 100)))
    cs.inputs.append(_x(rng, (1, 16, 8, 8)))
    cs.outputs.append(b.op("qnn.add", [conv_out, other],
                           QBinaryAttrs(QParams.per_tensor(0.5, 128)), name="conv_then_add"))
    cs.names.append("conv_then_add")
    cs.builder.finish(*cs.outputs)
    return cs


@contextmanager
def forced_layout(layout: str | None) -> Iterator[None]:
    old = x86_plan.FORCE_LAYOUT
    x86_plan.FORCE_LAYOUT = layout
    try:
        yield
    finally:
        x86_plan.FORCE_LAYOUT = old


_BUILDS: dict[tuple[str, str | None], tuple[Cases, BuildResult]] = {}


def kernel_groups(cs: Cases) -> list[KernelGroup]:
    """One kernel per node, except conv -> qnn.add ("conv_then_add"): one kernel, the add as
    the conv's epilogue (what passes/group_kernels.py does at opt_level 2; explicit here so
    the test does not depend on the fusion passes)."""
    g = cs.builder.graph
    add = cs.outputs[cs.names.index("conv_then_add")].producer
    conv = add.inputs[0].producer
    rest = [n for n in g.nodes if n.op != "const" and n is not add and n is not conv]
    return [KernelGroup((conv, add), anchor=conv), *(KernelGroup((n,)) for n in rest)]


def compiled(target: str, layout: str | None = None) -> tuple[Cases, BuildResult]:
    key = (target, layout)
    if key not in _BUILDS:
        cs = make_cases()
        with forced_layout(layout):
            res = build(cs.builder.graph, target=target, num_threads=2, strict_schedules=True,
                        groups=kernel_groups(cs))
        _BUILDS[key] = (cs, res)
    return _BUILDS[key]


def check_exact(target: str, layout: str | None = None) -> BuildResult:
    cs, res = compiled(target, layout)
    got = res.module(*cs.inputs)
    want = qc.interpret(cs.builder.graph, *cs.inputs)
    bad = [name for name, g, w in zip(cs.names, got, want) if not np.array_equal(g, w)]
    assert not bad, f"{target} layout={layout}: compiled != interpret for {bad}"
    return res


def kernels_by_case(cs: Cases, res: BuildResult) -> dict[str, object]:
    """case name -> the KernelFunc computing it."""
    out = {}
    for k in res.lowered.kernels:
        for v in k.outputs:
            if v.name in cs.names:
                out[v.name] = k.func
    return out


def asm_of(res: BuildResult, kf: object) -> str:
    return tc.compile_module(kf.final, res.target.tvm_target()).mod.inspect_source("asm")


# --- VNNI ----------------------------------------------------------------------------------------


@needs_vnni
@pytest.mark.parametrize("layout", [None, "nchwc", "nchw"])
def test_vnni_kernels_equal_the_interpreter(layout: str | None) -> None:
    check_exact("x86-avx512-vnni", layout)


@needs_vnni
def test_vnni_rules_and_strategies_apply() -> None:
    cs, res = compiled("x86-avx512-vnni")
    kfs = kernels_by_case(cs, res)
    for name, rule in cs.rule.items():
        kf = kfs[name]
        assert kf.rule == rule, f"{name}: scheduled by {kf.rule}, expected {rule}"
        if rule != "generic_reduction":
            assert kf.strategy in ("conv2d_packed", "dense_packed", "depthwise_packed"), \
                (name, kf.strategy)


@needs_vnni
def test_vpdpbusd_in_the_assembly() -> None:
    cs, res = compiled("x86-avx512-vnni")
    kfs = kernels_by_case(cs, res)
    for name in ("c3x3_s1_relu", "stem7x7_s2", "fc_b1_fbgemm"):
        asm = asm_of(res, kfs[name])
        assert "vpdpbusd" in asm, name
        assert "vpmaddubsw" not in asm, name


@needs_vnni
def test_layout_choice_follows_the_cost_model() -> None:
    """1x1 convs and the 3-channel stem run with lanes = positions (no transpose in the
    epilogue), 3x3 convs on many channels with lanes = channels."""
    v, p = intrin.VNNI_16x4, intrin.VNNI_16x4_BW

    def best(xs: tuple, ws: tuple, s: int, pad: int) -> str:
        geo = (xs, ws, (s, s), (pad, pad), (1, 1))
        plans = [strategies.plan_conv(*geo, v, "nchwc"), strategies.plan_conv(*geo, p, "nchw")]
        return min(plans, key=strategies.conv_cost).layout

    assert best((1, 64, 56, 56), (64, 64, 3, 3), 1, 1) == "nchwc"
    assert best((1, 512, 7, 7), (512, 512, 3, 3), 1, 1) == "nchwc"
    assert best((1, 3, 224, 224), (64, 3, 7, 7), 2, 3) == "nchw"
    assert best((1, 24, 56, 56), (144, 24, 1, 1), 1, 0) == "nchw"
    assert best((1, 64, 56, 56), (128, 64, 1, 1), 2, 0) == "nchw"
    # ResNet-18's downsampling 3x3 s2 convs
    assert best((1, 64, 56, 56), (128, 64, 3, 3), 2, 1) == "nchwc"
    assert best((1, 256, 14, 14), (512, 256, 3, 3), 2, 1) == "nchwc"


def test_few_channel_convs_fold_kw_into_the_reduction() -> None:
    """The 3-channel stem: taps (kw, c) of a kernel row fill the 4-wide groups (6 groups per
    kernel row instead of 7 a quarter empty); the dot reads one word per output column."""
    vnni = x86_plan.VNNI_SHAPE
    geo = ((1, 3, 224, 224), (64, 3, 7, 7), (2, 2), (3, 3), (1, 1))
    plan = x86_plan.plan_conv(*geo, vnni, "nchw")
    plain = x86_plan.plan_conv(*geo, vnni, "nchw", fold=False)
    assert plan.fold and not plain.fold
    assert (plan.dot_icb, plan.dot_kw, plan.dot_stride, plan.phases) == (6, 1, (2, 1), 2)
    assert plan.macs_executed * 7 == plain.macs_executed * 6
    assert plan.ocp == plain.ocp  # the prepack pass sizes its constants from either
    assert not x86_plan.plan_conv(*geo, vnni, "nchwc").fold
    assert not x86_plan.plan_conv((1, 16, 9, 9), (8, 16, 3, 3), (1, 1), (1, 1), (1, 1), vnni,
                                  "nchw").fold
    # the folded weight: [OCp][6][KH][1][4], step t % 4 of group t // 4 is tap t = kw * 3 + c
    w = np.random.default_rng(0).integers(-128, 128, (64, 3, 7, 7)).astype(np.int8)
    wp = x86_plan.pack_conv_weight(w, plan, "int8")
    assert wp.shape == (plan.ocp, 6, 7, 1, 4)
    for t in range(24):
        want = w[:, t % 3, :, t // 3] if t < 21 else 0
        np.testing.assert_array_equal(wp[:64, t // 4, :, 0, t % 4], want)


@needs_vnni
def test_stem_kernels_have_the_fold_stage() -> None:
    cs, res = compiled("x86-avx512-vnni")
    kfs = kernels_by_case(cs, res)
    for name in ("stem7x7_s2", "stem7x7_s2_aff_odd", "fold5x5_s2_c1", "fold3x3_s1_c2"):
        assert strategies.CONV_FOLD in kfs[name].scheduled.script(), name
    assert strategies.CONV_FOLD not in kfs["c3x3_s2_pc_sym"].scheduled.script()


# --- AVX2 / AVX-512 without VNNI: exact int16 pmaddwd --------------------------------------------


@needs_avx2
def test_avx2_kernels_equal_the_interpreter() -> None:
    res = check_exact("x86-avx2")
    cs, _ = compiled("x86-avx2")
    kfs = kernels_by_case(cs, res)
    asm = asm_of(res, kfs["c3x3_s1_relu"])
    assert "vpmaddwd" in asm and "vpdpbusd" not in asm and "vpmaddubsw" not in asm
    assert "zmm" not in asm  # haswell: ymm only


@pytest.mark.skipif(not HAS_AVX512BW, reason="host CPU lacks avx512bw")
def test_avx512_without_vnni_equals_the_interpreter() -> None:
    check_exact("x86-avx512")


@needs_avx2
@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512"])
def test_pmaddwd_path_is_exact_where_vpmaddubsw_saturates(target: str) -> None:
    """u8 = 255 against weights 127 / -128: every pair of products is +-64770 / 65280, far
    beyond int16, which `vpmaddubsw` would clamp to 32767 / -32768."""
    if target == "x86-avx512" and not HAS_AVX512BW:
        pytest.skip("host CPU lacks avx512bw")
    b = Builder("saturate")
    c, o, hw = 16, 16, 6
    x = b.input("x", TensorType((1, c, hw, hw), u8, QParams.per_tensor(0.01, 0)))
    w = np.full((o, c, 3, 3), 127, np.int8)
    w[1::2] = -128
    w[2, ::2] = -128
    wv = b.const(w, TensorType(w.shape, i8, QParams.per_tensor(0.001, 0, "symmetric")), "w")
    y = b.op("qnn.conv2d", [x, wv], ConvAttrs(QParams.per_tensor(100.0, 128), (1,), (1,)))
    xl = b.input("xl", TensorType((2, 64), u8, QParams.per_tensor(0.01, 0)))
    wl = np.where(np.arange(32 * 64).reshape(32, 64) % 3 == 0, -128, 127).astype(np.int8)
    wlv = b.const(wl, TensorType(wl.shape, i8, QParams.per_tensor(0.001, 0, "symmetric")), "wl")
    yl = b.op("qnn.linear", [xl, wlv], LinearAttrs(QParams.per_tensor(0.5, 128)))
    g = b.finish(y, yl)
    xs = (np.full((1, c, hw, hw), 255, np.uint8), np.full((2, 64), 255, np.uint8))
    res = build(g, target=target, num_threads=2, strict_schedules=True)
    assert {kf.rule for kf in res.lowered.funcs} == {CONV_RULE, DENSE_RULE}
    got = res.module(*xs)
    want = qc.interpret(g, *xs)
    for gg, ww in zip(got, want):
        np.testing.assert_array_equal(gg, ww)
    # NOTE: every pair here is 255 * 127 * 2 = 64770 or -255 * 128 * 2 = -65280 (or a mix):
    # beyond int16, so a vpmaddubsw kernel could not produce these accumulators


# --- safety and fallbacks ------------------------------------------------------------------------


def test_no_vnni_intrinsic_without_the_feature() -> None:
    """A VNNI kernel compiled for a CPU without avx512vnni kills the process inside LLVM: the
    intrinsic is chosen from the target's features, never from the family alone."""
    assert intrin.intrinsic_for(get_target("x86-avx512-vnni")) is intrin.VNNI_16x4
    assert intrin.intrinsic_for(get_target("x86-avx512")) is intrin.PMADDWD_16x2
    assert intrin.intrinsic_for(get_target("x86-avx2")) is intrin.PMADDWD_8x2
    assert intrin.intrinsic_for(get_target("x86-avx2"), weight_broadcast=True) is \
        intrin.PMADDWD_8x2_BW
    assert intrin.intrinsic_for(get_target("x86-generic")) is None
    assert intrin.intrinsic_for(get_target("aarch64-dotprod")) is None
    fake = get_target("x86-avx512-vnni")
    fake = type(fake)(**{**fake.__dict__, "features": fake.features - {"avx512vnni"}})
    assert intrin.intrinsic_for(fake) is None


def test_generic_targets_use_the_generic_lowering() -> None:
    """No strategy on x86-generic: the op's own lower() and the generic rules."""
    b = Builder("g")
    x = b.input("x", TensorType((1, 4, 5, 5), u8, QParams.per_tensor(0.1, 3)))
    w = b.const(np.ones((8, 4, 3, 3), np.int8),
                TensorType((8, 4, 3, 3), i8, QParams.per_tensor(0.01, 0, "symmetric")), "w")
    g = b.finish(b.op("qnn.conv2d", [x, w], ConvAttrs(QParams.per_tensor(0.2, 10), (1,), (1,))))
    res = build(g, target="x86-generic", num_threads=1, strict_schedules=True)
    assert [kf.strategy for kf in res.lowered.funcs] == [None]
    xv = np.arange(100, dtype=np.uint8).reshape(1, 4, 5, 5)
    np.testing.assert_array_equal(res.module(xv), qc.interpret(g, xv))


def test_vectorized_nearbyint_and_isnan_are_exact() -> None:
    """tvm_compat marks tirx.nearbyint / tirx.isnan vectorizable (0.27 scalarizes loops that
    use them otherwise): the vector forms round half to even and detect NaN like numpy."""
    te, tirx = tc.te, tc.tirx
    assert all(tc.tvm.ir.Op.get(op).get_attr("TVectorizable") for op in tc.VECTORIZABLE_OPS)
    d = te.placeholder((64,), "float32", name="d")
    out = te.compute((64,), lambda i: tirx.Select(te.isnan(d[i]), te.const(-7.0, "float32"),
                                                  te.nearbyint(d[i])), name="out")
    sch = tc.new_schedule(tc.create_prim_func([d, out]))
    loop = sch.get_loops(tc.get_block(sch, "out"))[0]
    _, inner = sch.split(loop, [None, 16])
    sch.vectorize(inner)
    target = get_target("host").tvm_target()
    ex = tc.compile_module(tc.scheduled_func(sch), target)
    if host_arch() == "x86_64" and "avx512f" in host_features():
        assert "<16 x float>" in ex.mod.inspect_source("ll")
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, np.nan, np.inf, -np.inf, 3.4999998, 1e10, -2.5,
                  7.5, 0.0, -0.0, np.nan, 8.5] * 4, np.float32)
    o = tc.empty((64,), "float32")
    ex.jit()["main"](tc.to_tensor(x), o)
    want = np.where(np.isnan(x), np.float32(-7.0), np.rint(x)).astype(np.float32)
    np.testing.assert_array_equal(o.numpy().view(np.uint32), want.view(np.uint32))


# --- the ops' own registry samples (random and edge qparams) through the strategies -------------


def _samples_graph(op_names: tuple[str, ...]) -> tuple[object, list[np.ndarray]]:
    """One graph holding every registry sample of `op_names`, weights and biases as constants
    (as the frontends produce them, so the strategies apply)."""
    from qcompiler.ir.registry import get_op

    b = Builder("samples")
    outs, inputs = [], []
    for name in op_names:
        op = get_op(name)
        for si, s in enumerate(op.samples(np.random.default_rng(zlib_crc(name)))):
            vals = []
            for k, (t, a) in enumerate(zip(s.in_types, s.arrays)):
                if k in (1, 2) and not (op.name.startswith("qnn.conv2d_add") and k == 2
                                        and len(s.in_types) == 3):
                    vals.append(b.const(a, t, f"{name}_{si}_c{k}"))
                else:
                    vals.append(b.input(f"{name}_{si}_x{k}", t))
                    inputs.append(a)
            outs.append(b.op(op.name, vals, s.attrs))
    return b.finish(*outs), inputs


def zlib_crc(name: str) -> int:
    import zlib

    return zlib.crc32(name.encode())


@needs_vnni
def test_registry_samples_through_the_vnni_strategies() -> None:
    ops = ("qnn.conv2d", "qnn.conv2d_add_relu", "qnn.linear", "qnn.linear_tanh")
    g, inputs = _samples_graph(ops)
    res = build(g, target="x86-avx512-vnni", num_threads=2, strict_schedules=True)
    assert {kf.strategy for kf in res.lowered.funcs} >= {"conv2d_packed", "dense_packed"}
    got = res.module(*inputs)
    want = qc.interpret(g, *inputs)
    bad = [k for k, (a, e) in enumerate(zip(got, want)) if not np.array_equal(a, e)]
    assert not bad, f"outputs {bad} differ"


def _crafted_cases() -> object:
    """tests/lowering/test_conv_linear_lowering.py's crafted epilogue cases: per-channel biases
    searched so that every neighbour of the reference's rounding (no FMA, FMA in the wrong
    place, a combined scale, ...) gives a different output somewhere."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "lowering" / "test_conv_linear_lowering.py"
    spec = importlib.util.spec_from_file_location("_x86_crafted_cases", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.make_cases(crafted_only=True)


@pytest.mark.parametrize("target", ["x86-avx512-vnni", "x86-avx2"])
def test_crafted_epilogue_cases_through_the_strategies(target: str) -> None:
    if not (HAS_VNNI if target == "x86-avx512-vnni" else HAS_AVX2):
        pytest.skip(f"host CPU cannot run {target}")
    c = _crafted_cases()
    res = build(c.graph, target=target, num_threads=2, strict_schedules=True)
    assert {kf.strategy for kf in res.lowered.funcs} >= {"conv2d_packed", "dense_packed"}
    got = res.module.run_numpy(*c.inputs)
    want = qc.interpret(c.graph, *c.inputs)
    bad = [n for n, g, w in zip(c.names, got, want) if not np.array_equal(g, w)]
    assert not bad, f"{target}: compiled != interpreter for {bad}"


# --- prepacked convs in NCHW / NCHW4c (x86.conv2d_packed: passes/prepack.py, passes/layout.py) ----


def _prepacked_graph(seed: int = 3) -> tuple[object, list[np.ndarray]]:
    """x86.conv2d_packed registry samples (every x / out layout pair, both weight layouts,
    fbgemm and oneDNN epilogues, residuals, odd channel counts) plus, per layout pair, a
    ResNet-like 3x3 conv and a strided 1x1 conv with per-channel affine weights."""
    from qcompiler.ir.registry import get_op
    from qcompiler.ops.conv import QConv2d
    from qcompiler.ops.layout import prepack_sample

    op = get_op("x86.conv2d_packed")
    rng = np.random.default_rng(seed)
    samples = list(op.samples(rng))
    base = QConv2d()
    layouts = (("NCHW", "NCHW4c"), ("NCHW4c", "NCHW4c"), ("NCHW4c", "NCHW"))
    for k, (xl, ol) in enumerate(layouts):
        s3 = base._sample(rng, "3x3", c=32, o=48, spatial=(9, 11), kernel=3, padding=1,
                          weight="pc-sym")
        s1 = base._sample(rng, "1x1-s2", c=20, o=36, spatial=(10, 9), kernel=1, stride=2,
                          weight="pc-aff")
        samples.append(prepack_sample("qnn.conv2d", s3, xl, ol,
                                      ("OIHW16o4i", "OIHW4i")[k % 2]))
        samples.append(prepack_sample("qnn.conv2d", s1, xl, ol,
                                      ("OIHW4i", "OIHW16o4i")[k % 2]))
    b = Builder("prepacked")
    outs, inputs = [], []
    for si, s in enumerate(samples):
        vals = []
        for k, (t, a) in enumerate(zip(s.in_types, s.arrays)):
            if k == 0 or (k > 2 and t.qparams is not None):
                vals.append(b.input(f"x{si}_{k}", t))
                inputs.append(a)
            else:
                vals.append(b.const(a, t, f"c{si}_{k}"))
        outs.append(b.op(op.name, vals, s.attrs))
    return b.finish(*outs), inputs


@needs_vnni
def test_prepacked_convs_read_and_write_packed_layouts_exactly() -> None:
    g, inputs = _prepacked_graph()
    res = build(g, target="x86-avx512-vnni", num_threads=2, strict_schedules=True)
    assert {kf.strategy for kf in res.lowered.funcs} == {"conv2d_prepacked"}
    assert {kf.rule for kf in res.lowered.funcs} == {"conv2d_int8_x86"}
    got = res.module(*inputs)
    want = qc.interpret(g, *inputs)
    bad = [k for k, (a, e) in enumerate(zip(got, want)) if not np.array_equal(a, e)]
    assert not bad, f"outputs {bad} differ"
    # NCHW4c input: no packing stage builds words; the byte intrinsics read it as it is
    packed_in = [kf for kf in res.lowered.funcs if "qc_x86_vnni_u8" in kf.scheduled.script()]
    assert packed_in, "no kernel uses the NCHW4c byte intrinsics"
    assert "vpdpbusd" in asm_of(res, packed_in[0])


@needs_vnni
def test_opt3_resnet_block_compiles_exactly_with_packed_activations() -> None:
    """The layout passes' test graph (tests/passes) compiled at opt_level 3: NCHW4c between
    the convs, the residual add fused into the conv kernel, exact."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "passes" / "test_layout_passes.py"
    spec = importlib.util.spec_from_file_location("_layout_block", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    g = mod.block_graph(5)
    res = build(g, target="x86-avx512-vnni", opt_level=3, num_threads=2, strict_schedules=True)
    ops = [kf.ops for kf in res.lowered.funcs]
    assert ("x86.conv2d_packed", "qnn.add_relu") in ops
    assert sum(op == ("layout_transform",) for op in ops) == 1
    xs = [np.random.default_rng(k).integers(0, 256, v.type.shape).astype(np.uint8)
          for k, v in enumerate(g.inputs)]
    for a, e in zip(res.module(*xs), qc.interpret(g, *xs)):
        np.testing.assert_array_equal(a, e)
