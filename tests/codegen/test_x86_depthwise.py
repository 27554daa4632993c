"""x86 depthwise / grouped int8 conv2d (codegen/x86/depthwise_int8.py): exact against
`qc.interpret`, the rule and strategy apply, and the dot instruction is in the assembly.

Reduced MobileNetV2 shapes (3x3 s1 and s2) plus strides 4, kernels 1/5/7, paddings 0..3, odd
sizes (OW not a whole number of tiles), rows wider than one tile, batch 2, H dilation, a
channel multiplier of 2, grouped convs with 2 and 4 channels per group, relu; weights per
tensor / per channel, symmetric (oneDNN epilogue for groups <= 100) and affine with zero
points at -128 / 127 (fbgemm epilogue; w - zw leaves int8, so the VNNI target takes the int16
pmaddwd kernel), depthwise with > 100 groups (fbgemm); full-range activations (0..255, many
at 0 and 255), activation zero points 0 and 255, huge biases (fbgemm's INT32_MIN trap next to
saturation). All cases of one target are one graph, compiled once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

pytest.importorskip("tvm")

from test_x86_vnni import Cases as VnniCases  # the x86 tests' graph and value generators
from test_x86_vnni import _weight, _wq, _x

import qcompiler as qc
from qcompiler.codegen.x86 import depthwise_int8 as dw
from qcompiler.driver import BuildResult, build
from qcompiler.ir.types import QParams, TensorType, f32, i8, u8
from qcompiler.lowering import tvm_compat as tc
from qcompiler.ops.conv import ConvAttrs
from qcompiler.target import get_target, host_arch, host_features

pytestmark = pytest.mark.tvm

_FEATURES = host_features() if host_arch() == "x86_64" else frozenset()
TARGETS = {
    "x86-avx512-vnni": "avx512vnni" in _FEATURES,
    "x86-avx512": "avx512bw" in _FEATURES,
    "x86-avx2": "avx2" in _FEATURES,
}
RULE = "depthwise_int8_x86"
STRATEGY = "depthwise_packed"


@dataclass
class Cases(VnniCases):
    covered: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Targets on which the case takes the depthwise strategy (else the generic lowering)."""


def add_dw(cs: Cases, rng: np.random.Generator, name: str, *, c: int, hw: tuple[int, int],
           k: int, stride: int = 1, pad: int = 0, groups: int | None = None, mult: int = 1,
           dilation: tuple[int, ...] = (1,), weight: str = "pc-sym", relu: bool = False,
           zx: int = 11, huge_bias: bool = False, batch: int = 1,
           covered: tuple[str, ...] = tuple(TARGETS)) -> None:
    b = cs.builder
    groups = c if groups is None else groups
    o = c * mult if groups == c else c
    x = b.input(f"x_{name}", TensorType((batch, c, *hw), u8, QParams.per_tensor(0.03, zx)))
    cs.inputs.append(_x(rng, (batch, c, *hw)))
    wa = _weight(rng, (o, c // groups, k, k))
    w = b.const(wa, TensorType(wa.shape, i8, _wq(rng, weight, o)), f"w_{name}")
    bias = (rng.standard_normal(o) * 3).astype(np.float32)
    so = 0.4
    if huge_bias:  # |bias / so| around 2**31: fbgemm's INT32_MIN trap next to saturation
        bias[:] = (np.resize(np.array([3e9, -3e9, 2e9, -2e9, 6e8]), o) * so).astype(np.float32)
    ins = [x, w, b.const(bias, TensorType((o,), f32), f"b_{name}")]
    attrs = ConvAttrs(QParams.per_tensor(so, 120), (stride,), (pad,), dilation, groups)
    op = "qnn.conv2d_relu" if relu else "qnn.conv2d"
    cs.outputs.append(b.op(op, ins, attrs, name=name))
    cs.names.append(name)
    cs.covered[name] = covered


def make_cases() -> Cases:
    rng = np.random.default_rng(17)
    cs = Cases()
    # MobileNetV2's depthwise convs, reduced (groups <= 100: oneDNN epilogue)
    add_dw(cs, rng, "mv2_s1", c=24, hw=(20, 20), k=3, pad=1)
    add_dw(cs, rng, "mv2_s2_relu", c=16, hw=(23, 23), k=3, stride=2, pad=1, relu=True)
    # > 100 groups: fbgemm epilogue (PyTorch's own kernel would saturate here; we are exact)
    add_dw(cs, rng, "fbgemm_104", c=104, hw=(6, 9), k=3, pad=1, weight="pt-sym")
    add_dw(cs, rng, "fbgemm_huge_bias", c=104, hw=(5, 5), k=3, pad=1, huge_bias=True)
    # zero points: affine weights at -128 / 127 (w - zw beyond int8), activations at 0 / 255
    add_dw(cs, rng, "affine_pc", c=8, hw=(9, 17), k=3, pad=1, weight="pc-aff", zx=255)
    add_dw(cs, rng, "affine_pt_s2", c=8, hw=(12, 12), k=3, stride=2, pad=1, weight="pt-aff",
           zx=0)
    # geometry: stride 4, kernels 1 / 5 / 7, padding 0 / 2 / 3, non-square, tiny outputs
    add_dw(cs, rng, "s4", c=8, hw=(17, 30), k=3, stride=4, pad=1,
           covered=("x86-avx512-vnni",))  # pmaddwd: G = 2 taps per word, stride <= 2
    add_dw(cs, rng, "k5_s1_p2", c=8, hw=(11, 70), k=5, pad=2)
    add_dw(cs, rng, "k7_s2_p3", c=4, hw=(15, 13), k=7, stride=2, pad=3, weight="pc-aff")
    add_dw(cs, rng, "k1", c=8, hw=(3, 5), k=1)
    add_dw(cs, rng, "k3_nopad_hdil", c=8, hw=(10, 10), k=3, dilation=(2, 1))
    # batch 2; OW = 300 needs more than 4 vectors per phase: 5 tiles of 64 columns, copied out
    add_dw(cs, rng, "batch2_wide", c=8, hw=(4, 300), k=3, pad=1, batch=2)
    add_dw(cs, rng, "tiny", c=8, hw=(2, 2), k=3, pad=1, relu=True)
    # channel multiplier 2, grouped convs with 2 and 4 channels per group
    add_dw(cs, rng, "mult2", c=8, hw=(8, 8), k=3, pad=1, mult=2)
    add_dw(cs, rng, "groups_cg2", c=8, hw=(9, 9), k=3, pad=1, groups=4)
    add_dw(cs, rng, "groups_cg4_s2", c=16, hw=(9, 9), k=3, stride=2, pad=1, groups=4,
           weight="pc-aff")
    # not covered: W dilation, W stride 3 (the generic lowering takes them)
    add_dw(cs, rng, "dilation2", c=8, hw=(9, 9), k=3, pad=2, dilation=(2,), covered=())
    add_dw(cs, rng, "stride3", c=8, hw=(10, 10), k=3, stride=3, pad=1, covered=())
    cs.builder.finish(*cs.outputs)
    return cs


_BUILDS: dict[str, tuple[Cases, BuildResult]] = {}


def compiled(target: str) -> tuple[Cases, BuildResult]:
    if target not in _BUILDS:
        cs = make_cases()
        res = build(cs.builder.graph, target=target, num_threads=2, strict_schedules=True)
        _BUILDS[target] = (cs, res)
    return _BUILDS[target]


def kernels_by_case(cs: Cases, res: BuildResult) -> dict[str, object]:
    return {v.name: k.func for k in res.lowered.kernels for v in k.outputs if v.name in cs.names}


def asm_of(res: BuildResult, kf: object) -> str:
    return tc.compile_module(kf.final, res.target.tvm_target()).mod.inspect_source("asm")


@pytest.mark.parametrize("target", list(TARGETS))
def test_depthwise_kernels_equal_the_interpreter(target: str) -> None:
    if not TARGETS[target]:
        pytest.skip(f"host CPU cannot run {target}")
    cs, res = compiled(target)
    kfs = kernels_by_case(cs, res)
    for name, covered in cs.covered.items():
        kf = kfs[name]
        if target in covered:
            assert (kf.strategy, kf.rule) == (STRATEGY, RULE), (name, kf.strategy, kf.rule)
        else:
            assert kf.strategy is None, (name, kf.strategy)
    got = res.module(*cs.inputs)
    want = qc.interpret(cs.builder.graph, *cs.inputs)
    bad = [n for n, g, w in zip(cs.names, got, want) if not np.array_equal(g, w)]
    assert not bad, f"{target}: compiled != interpret for {bad}"


@pytest.mark.parametrize(("target", "case", "instr", "absent"), [
    ("x86-avx512-vnni", "mv2_s1", "vpdpbusd", "vpmaddubsw"),
    ("x86-avx512-vnni", "affine_pc", "vpmaddwd", "vpdpbusd"),  # w - zw beyond int8
    ("x86-avx512", "mv2_s2_relu", "vpmaddwd", "vpdpbusd"),
    ("x86-avx2", "mv2_s1", "vpmaddwd", "zmm"),
])
def test_dot_instruction_in_the_assembly(target: str, case: str, instr: str,
                                         absent: str) -> None:
    if not TARGETS[target]:
        pytest.skip(f"host CPU cannot run {target}")
    cs, res = compiled(target)
    asm = asm_of(res, kernels_by_case(cs, res)[case])
    assert instr in asm and absent not in asm
    assert "vpmaddubsw" not in asm


def test_kernel_choice_follows_the_target_features() -> None:
    """VNNI only with avx512vnni (a VNNI kernel for a CPU without it kills LLVM), and only
    when the shifted weights fit int8; pmaddwd (int16) otherwise; nothing on x86-generic."""
    sym = np.array([[-128, 127]])
    wide = np.array([[-255, 200]])
    assert dw.kernel_for(get_target("x86-avx512-vnni"), sym) is dw.DW_VNNI
    assert dw.kernel_for(get_target("x86-avx512-vnni"), wide) is dw.DW_PMADDWD_16
    assert dw.kernel_for(get_target("x86-avx512"), sym) is dw.DW_PMADDWD_16
    assert dw.kernel_for(get_target("x86-avx2"), sym) is dw.DW_PMADDWD_8
    assert dw.kernel_for(get_target("x86-generic"), sym) is None
    fake = get_target("x86-avx512-vnni")
    fake = type(fake)(**{**fake.__dict__, "features": fake.features - {"avx512vnni"}})
    assert dw.kernel_for(fake, sym) is dw.DW_PMADDWD_16


def test_plan_geometry() -> None:
    """Phases = G / stride; the padded plane covers every load of the last tile."""
    p = dw.plan_dw((1, 144, 56, 56), (144, 1, 3, 3), 144, (1, 1), (1, 1), (1, 1), dw.DW_VNNI)
    assert p is not None and (p.phases, p.lanes, p.kwg) == (4, 16, 1)
    hp, wq = p.padded_hw
    assert hp == 58 and wq >= (p.owp - 1) + 4 and wq % 16 == 0
    p2 = dw.plan_dw((1, 96, 112, 112), (96, 1, 3, 3), 96, (2, 2), (1, 1), (1, 1), dw.DW_VNNI)
    assert p2 is not None and p2.phases == 2 and p2.oh == 56
    assert dw.plan_dw((1, 8, 9, 9), (8, 1, 3, 3), 8, (3, 3), (1, 1), (1, 1), dw.DW_VNNI) is None
    assert dw.plan_dw((1, 8, 9, 9), (8, 1, 3, 3), 8, (1, 1), (1, 1), (1, 2), dw.DW_VNNI) is None
