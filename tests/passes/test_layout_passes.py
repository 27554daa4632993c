"""prepack-x86-conv and select-layout: golden IR, exact interpreter equality on random inputs,
idempotence, the layout rules (where transforms go), and the opt_level 3 pipeline per target.

No TVM here: the passes and the packed ops' references are numpy (compiled checks are in
tests/codegen/test_x86_vnni.py and tests/e2e/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.ir import Builder, QParams, TensorType, f32, i8, parse, print_graph, u8, verify
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ops.activation import OutQAttrs
from qcompiler.ops.conv import ConvAttrs
from qcompiler.ops.elementwise import QBinaryAttrs
from qcompiler.ops.layout import pack_nchw4c, unpack_nchw4c, unpack_weight
from qcompiler.ops.pool import AdaptivePoolAttrs, MaxPoolAttrs
from qcompiler.passes.layout import (
    PACKED_ELEMENTWISE,
    PACKED_READERS,
    LayoutAwareOp,
    SelectLayout,
    packed_operands,
    register_layout_op,
)
from qcompiler.passes.manager import Pipeline
from qcompiler.passes.pipelines import copy_graph, pipeline
from qcompiler.passes.prepack import PrepackX86Conv
from qcompiler.reference.interpreter import interpret
from qcompiler.target import get_target
from qcompiler.testing.golden import check_golden

GOLDEN = Path(__file__).parent / "golden"
VNNI = get_target("x86-avx512-vnni")


def _conv(b: Builder, rng: np.random.Generator, x: Value, o: int, *, k: int = 3,
          stride: int = 1, op: str = "qnn.conv2d", residual: Value | None = None,
          per_channel_affine: bool = False, name: str = "", zo: int = 3) -> Value:
    c = x.type.shape[1]
    w = rng.integers(-128, 128, (o, c, k, k)).astype(np.int8)
    if per_channel_affine:
        wq = QParams.per_axis([0.01 + 0.001 * j for j in range(o)],
                              [int(z) for z in rng.integers(-5, 6, o)], 0, "affine")
    else:
        wq = QParams.per_tensor(0.01, 0, "symmetric")
    wv = b.const(w, TensorType(w.shape, i8, wq), f"{name}_w")
    bv = b.const((rng.standard_normal(o) * 0.5).astype(np.float32), TensorType((o,), f32),
                 f"{name}_b")
    attrs = ConvAttrs(QParams.per_tensor(0.05, zo), (stride,), (k // 2,), (1,), 1)
    ins = [x, wv, bv] + ([residual] if residual is not None else [])
    return b.op(op, ins, attrs, name=name)


def block_graph(seed: int = 0) -> Graph:
    """stem conv -> max pool -> conv -> conv -> add_relu(., pool) -> {1x1 s2 conv with
    per-channel affine weights, conv2d_add_relu(., residual) -> conv -> avg pool}: every
    layout rule."""
    rng = np.random.default_rng(seed)
    b = Builder("block")
    x = b.input("x", TensorType((1, 3, 8, 8), u8, QParams.per_tensor(0.02, 5)))
    c1 = _conv(b, rng, x, 8, op="qnn.conv2d_relu", name="stem")
    p = b.op("qnn.max_pool2d", [c1], MaxPoolAttrs((2, 2)), name="pool")
    c2 = _conv(b, rng, p, 8, op="qnn.conv2d_relu", name="conv1")
    c3 = _conv(b, rng, c2, 8, name="conv2")
    a = b.op("qnn.add_relu", [c3, p], QBinaryAttrs(QParams.per_tensor(0.06, 2)), name="add")
    c4 = _conv(b, rng, a, 16, k=1, stride=2, per_channel_affine=True, name="down")
    c5 = _conv(b, rng, a, 8, op="qnn.conv2d_add_relu", residual=a, name="conv3")
    c6 = _conv(b, rng, c5, 8, op="qnn.conv2d_relu", name="conv4")
    g = b.op("qnn.adaptive_avg_pool2d", [c6], AdaptivePoolAttrs((1,)), name="gap")
    return b.finish(c4, g)


def _inputs(g: Graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, v.type.shape).astype(np.uint8) for v in g.inputs]


def _outs(x: object) -> tuple[np.ndarray, ...]:
    return x if isinstance(x, tuple) else (x,)  # type: ignore[return-value]


def assert_same_outputs(g0: Graph, g1: Graph, seeds: range = range(3)) -> None:
    for s in seeds:
        xs = _inputs(g0, s)
        for a, b in zip(_outs(interpret(g0, *xs)), _outs(interpret(g1, *xs)), strict=True):
            np.testing.assert_array_equal(a, b)


def prepacked(g: Graph) -> Graph:
    out = copy_graph(g)
    Pipeline([PrepackX86Conv()], verify_each=True).run(out)
    return out


def laid_out(g: Graph) -> Graph:
    out = prepacked(g)
    Pipeline([SelectLayout()], verify_each=True).run(out)
    return out


# --- golden IR -----------------------------------------------------------------------------------


def test_prepack_golden() -> None:
    g = block_graph()
    check_golden(GOLDEN / "prepack-x86-conv.before.qir", print_graph(g))
    check_golden(GOLDEN / "prepack-x86-conv.after.qir", print_graph(prepacked(g)))


def test_select_layout_golden() -> None:
    g = prepacked(block_graph())
    check_golden(GOLDEN / "select-layout.before.qir", print_graph(g))
    after = copy_graph(g)
    SelectLayout().run(after)
    check_golden(GOLDEN / "select-layout.after.qir", print_graph(after))


# --- exactness and idempotence -------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["prepack", "layout"])
def test_passes_keep_the_outputs_exactly(stage: str) -> None:
    g = block_graph()
    assert_same_outputs(g, prepacked(g) if stage == "prepack" else laid_out(g))


def test_passes_are_idempotent_and_round_trip() -> None:
    g = laid_out(block_graph())
    text = print_graph(g)
    assert not PrepackX86Conv().run(g)
    assert not SelectLayout().run(g)
    assert print_graph(g) == text
    assert print_graph(parse(text, g.constants)) == text
    verify(g)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(st.integers(0, 2**16))
def test_random_weights_and_inputs_stay_exact(seed: int) -> None:
    g = block_graph(seed)
    assert_same_outputs(g, laid_out(g), range(seed % 7, seed % 7 + 1))


def test_prepacked_constants_are_the_weights() -> None:
    g0, g1 = block_graph(), prepacked(block_graph())
    w0 = {n.outputs[0].name: g0.const_data(n.inputs[1]) for n in g0.nodes
          if n.op.startswith("qnn.conv")}
    for n in g1.nodes:
        if n.op == "x86.conv2d_packed":
            a = n.attrs
            w = unpack_weight(g1.const_data(n.inputs[1]), a.w_layout, a.out_channels, a.channels)
            np.testing.assert_array_equal(w, w0[n.outputs[0].name])


def test_a_wrong_correction_shows_in_the_interpreter() -> None:
    """The packed op's reference computes from `corr`: a bad constant is not hidden."""
    g0, g1 = block_graph(), prepacked(block_graph())
    conv = next(n for n in g1.nodes if n.op == "x86.conv2d_packed")
    key = conv.inputs[2].producer.attrs.name  # type: ignore[union-attr]
    g1.constants[key] = g1.constants[key] + 100_000
    xs = _inputs(g0, 0)
    assert any(not np.array_equal(a, b) for a, b in
               zip(_outs(interpret(g0, *xs)), _outs(interpret(g1, *xs))))


# --- the layout rules ----------------------------------------------------------------------------


def test_transforms_only_at_the_boundaries() -> None:
    g = laid_out(block_graph())
    ops = [n.op for n in g.nodes if n.op != "const"]
    # one pack: the pool output on the add's skip path; none between convs
    assert ops.count("layout_transform") == 1
    t = next(n for n in g.nodes if n.op == "layout_transform")
    assert t.inputs[0].producer.op == "qnn.max_pool2d"  # type: ignore[union-attr]
    convs = {n.outputs[0].name: n.attrs for n in g.nodes if n.op == "x86.conv2d_packed"}
    assert (convs["stem"].x_layout, convs["stem"].out_layout) == ("NCHW", "NCHW")  # to a pool
    assert (convs["conv1"].x_layout, convs["conv1"].out_layout) == ("NCHW", "NCHW4c")
    assert (convs["conv2"].x_layout, convs["conv2"].out_layout) == ("NCHW4c", "NCHW4c")
    assert convs["down"].out_layout == "NCHW"          # a graph output
    assert (convs["conv3"].x_layout, convs["conv3"].out_layout) == ("NCHW4c", "NCHW4c")
    assert convs["conv3"].out_layout == "NCHW4c"        # and so is its residual
    assert convs["conv4"].out_layout == "NCHW"          # to the average pool
    add = next(n for n in g.nodes if n.op == "qnn.add_relu")
    assert add.outputs[0].type.rank == 5                # the residual add runs packed
    assert [v.type for v in g.outputs] == [v.type for v in block_graph().outputs]


def test_relu_before_a_pool_stays_nchw() -> None:
    """An element-wise op runs packed only when its consumers read packed too."""
    g = laid_out(block_graph())
    assert all(n.outputs[0].type.rank == 4 for n in g.nodes if n.op == "qnn.max_pool2d")


def test_layout_aware_op_hook() -> None:
    """Ops of other modules can read and write NCHW4c (`register_layout_op`); qnn.hardswish
    stands in for such an op here (element-wise, so its type rule and reference take 5-D)."""
    rng = np.random.default_rng(4)
    b = Builder("hook")
    x = b.input("x", TensorType((1, 64, 8, 8), u8, QParams.per_tensor(0.02, 5)))
    y = _conv(b, rng, x, 64, name="conv")
    h = b.op("qnn.hardswish", [y], OutQAttrs(QParams.per_tensor(0.04, 10)), name="hs")
    g0 = b.finish(b.op("qnn.adaptive_avg_pool2d", [_conv(b, rng, h, 64, name="conv2")],
                       AdaptivePoolAttrs((1,)), name="gap"))
    assert "qnn.hardswish" not in PACKED_ELEMENTWISE

    def hardswish(g: Graph) -> Node:
        return next(n for n in g.nodes if n.op == "qnn.hardswish")

    assert hardswish(laid_out(g0)).inputs[0].type.rank == 4    # not a reader: NCHW
    register_layout_op("qnn.hardswish", LayoutAwareOp(reads=lambda n: (0,),
                                                      writes=lambda n: True))
    try:
        assert packed_operands(hardswish(g0)) == (0,)
        lay = laid_out(g0)
        assert hardswish(lay).inputs[0].type.rank == 5          # fed NCHW4c
        assert hardswish(lay).outputs[0].type.rank == 5         # and writes it
        conv2 = next(n for n in lay.nodes if n.outputs[0].name == "conv2")
        assert conv2.attrs.x_layout == "NCHW4c"
        assert not any(n.op == "layout_transform" for n in lay.nodes)
        assert_same_outputs(g0, lay, range(1))
    finally:
        PACKED_READERS.pop("qnn.hardswish", None)


def test_layout_transform_numpy_helpers_round_trip() -> None:
    x = np.random.default_rng(0).integers(0, 256, (2, 7, 3, 5)).astype(np.uint8)
    p = pack_nchw4c(x, 9)
    assert p.shape == (2, 2, 3, 5, 4) and np.all(p[:, 1, :, :, 3] == 9)
    np.testing.assert_array_equal(unpack_nchw4c(p, 7), x)


# --- pipeline ------------------------------------------------------------------------------------


def test_opt3_pipeline_has_the_layout_passes_only_on_vnni() -> None:
    names = [p.name for p in pipeline(3, VNNI)]
    assert names.index("prepack-x86-conv") < names.index("select-layout")
    assert names.index("fuse-activation") < names.index("prepack-x86-conv")
    for target in (None, get_target("x86-avx2"), get_target("aarch64-neon")):
        assert "prepack-x86-conv" not in [p.name for p in pipeline(3, target)]
    assert "prepack-x86-conv" not in [p.name for p in pipeline(2, VNNI)]


def test_depthwise_and_non_constant_weights_are_left_alone() -> None:
    rng = np.random.default_rng(1)
    b = Builder("dw")
    x = b.input("x", TensorType((1, 8, 6, 6), u8, QParams.per_tensor(0.02, 5)))
    w = b.input("w", TensorType((8, 8, 1, 1), i8, QParams.per_tensor(0.01, 0, "symmetric")))
    wd = b.const(rng.integers(-128, 128, (8, 1, 3, 3)).astype(np.int8),
                 TensorType((8, 1, 3, 3), i8, QParams.per_tensor(0.01, 0, "symmetric")), "wd")
    y = b.op("qnn.conv2d", [x, wd], ConvAttrs(QParams.per_tensor(0.05, 3), (1,), (1,), (1,), 8))
    z = b.op("qnn.conv2d", [y, w], ConvAttrs(QParams.per_tensor(0.05, 3)))
    g = b.finish(z)
    assert not PrepackX86Conv().run(g)
    assert not SelectLayout().run(g)


def _pointwise_then_3x3() -> Graph:
    rng = np.random.default_rng(2)
    b = Builder("pw")
    x = b.input("x", TensorType((1, 16, 8, 8), u8, QParams.per_tensor(0.02, 5)))
    y = _conv(b, rng, x, 64, k=1, op="qnn.conv2d_relu", name="pw")
    z = _conv(b, rng, y, 64, name="conv")
    return b.finish(_conv(b, rng, z, 64, name="conv2"))


@pytest.mark.parametrize("position_lanes", [False, True])
def test_position_lane_convs_write_nchw_unless_asked(position_lanes: bool) -> None:
    """The 1x1 conv's plan has lanes = positions (OIHW4i): writing NCHW4c costs it a byte
    interleave, so by default it writes NCHW and its consumer packs (docs/passes.md)."""
    g0 = _pointwise_then_3x3()
    g = prepacked(g0)
    convs = {n.outputs[0].name: n for n in g.nodes if n.op == "x86.conv2d_packed"}
    assert convs["pw"].attrs.w_layout == "OIHW4i"
    assert convs["conv"].attrs.w_layout == "OIHW16o4i"
    SelectLayout(position_lanes=position_lanes).run(g)
    convs = {n.outputs[0].name: n.attrs for n in g.nodes if n.op == "x86.conv2d_packed"}
    assert convs["pw"].out_layout == ("NCHW4c" if position_lanes else "NCHW")
    assert convs["conv"].out_layout == "NCHW4c"        # channel lanes: chained packed
    assert convs["conv2"].x_layout == "NCHW4c"
    assert not any(n.op == "layout_transform" for n in g.nodes)
    assert_same_outputs(g0, g, range(1))
    assert not SelectLayout(position_lanes=position_lanes).run(g)
