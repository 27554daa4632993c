"""fuse-activation: golden IR, exactness per fusion rule (registry samples), the guards'
counterexamples, property tests on random and targeted graphs, idempotence."""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcompiler.ir import Builder, QParams, TensorType, f32, i8, parse, print_graph, u8, verify
from qcompiler.ir.graph import Graph, Value
from qcompiler.ir.registry import OpSample, get_op
from qcompiler.ops.activation import ClampAttrs, HardtanhAttrs
from qcompiler.ops.conv import ConvAttrs
from qcompiler.ops.elementwise import QBinaryAttrs, QCatAttrs
from qcompiler.ops.linear import LinearAttrs
from qcompiler.passes.fuse_activation import (
    RELU_FUSIONS,
    FuseActivation,
    add_relu_commutes,
    relu_fusion_is_exact,
)
from qcompiler.reference.interpreter import interpret
from qcompiler.testing.golden import check_golden
from qcompiler.testing.strategies import graphs

GOLDEN = Path(__file__).parent / "golden"
ACTIVATIONS = ("relu", "relu6", "hardtanh-0-2", "clamp-min0", "clamp-0-1", "hardtanh-neg")


def _outs(x: Any) -> tuple[np.ndarray, ...]:
    return x if isinstance(x, tuple) else (x,)


def assert_same_outputs(before: Any, after: Any) -> None:
    for a, b in zip(_outs(before), _outs(after), strict=True):
        np.testing.assert_array_equal(a, b)


def apply_activation(b: Builder, y: Value, act: str, name: str = "") -> Value:
    if act == "relu":
        return b.op("qnn.relu", [y], name=name)
    if act == "relu6":
        return b.op("qnn.relu6", [y], name=name)
    if act == "hardtanh-0-2":
        return b.op("qnn.hardtanh", [y], HardtanhAttrs(0.0, 2.0), name=name)
    if act == "hardtanh-neg":                    # lower bound below zero: not a relu
        return b.op("qnn.hardtanh", [y], HardtanhAttrs(-0.5, 1.0), name=name)
    if act == "clamp-min0":
        return b.op("qnn.clamp", [y], ClampAttrs(0.0, None), name=name)
    assert act == "clamp-0-1"
    return b.op("qnn.clamp", [y], ClampAttrs(0.0, 1.0), name=name)


WEIGHT_LIKE = ("qnn.conv1d", "qnn.conv2d", "qnn.conv3d", "qnn.conv2d_add", "qnn.linear")


def sample_graph(op: str, s: OpSample) -> tuple[Builder, Value, list[np.ndarray]]:
    """`op` applied to a registry sample: activations are graph inputs; weights and float
    parameters (bias, batch-norm statistics) are constants, as frontends produce them."""
    b = Builder(op.replace(".", "_"))
    vals, ins = [], []
    for k, (t, a) in enumerate(zip(s.in_types, s.arrays)):
        if t.qparams is None or (k == 1 and op in WEIGHT_LIKE):
            vals.append(b.const(a, t, f"c{k}"))
        else:
            vals.append(b.input(f"x{k}", t))
            ins.append(a)
    return b, b.op(op, vals, s.attrs, name="y", loc=op), ins


def _samples(op: str, limit: int = 10**6) -> list[OpSample]:
    rng = np.random.default_rng(zlib.crc32(op.encode()))
    return [s for s in get_op(op).samples(rng) if sum(a.size for a in s.arrays) <= limit]


# --- golden ----------------------------------------------------------------------------------


def _qt(shape: tuple[int, ...], dtype: Any, s: float, z: int) -> TensorType:
    return TensorType(shape, dtype, QParams.per_tensor(s, z))


def golden_graph() -> Graph:
    """One site per rule, and the sites that must stay as they are."""
    rng = np.random.default_rng(7)
    b = Builder("fuse")
    x = b.input("x", _qt((1, 3, 6, 6), u8, 0.05, 12))
    e = b.input("e", _qt((1, 4, 6, 6), u8, 0.1, 30))
    w = b.const(rng.integers(-60, 60, (4, 3, 3, 3)).astype(np.int8),
                TensorType((4, 3, 3, 3), i8, QParams.per_tensor(0.02, 0, "symmetric")), "w")
    bias = b.const(np.array([0.5, -0.25, 1.0, 0.0], np.float32), TensorType((4,), f32), "bias")
    conv = ConvAttrs(QParams.per_tensor(0.1, 64), (1,), (1,))
    # conv -> relu: conv2d_relu
    c1 = b.op("qnn.conv2d", [x, w, bias], conv, loc="conv1", name="c1")
    r1 = b.op("qnn.relu", [c1], name="r1")
    # relu -> relu: the second is a no-op
    r1b = b.op("qnn.relu", [r1], name="r1b")
    # conv -> relu6 with scale 6/255, zero point 0: Q(6) = 255, just conv2d_relu
    c2 = b.op("qnn.conv2d", [x, w, bias], replace(conv, out_qparams=QParams.per_tensor(
        6 / 255, 0)), loc="conv2", name="c2")
    r2 = b.op("qnn.relu6", [c2], name="r2")
    # conv -> hardtanh(0, 2): conv2d_relu then clamp(max=2)
    c3 = b.op("qnn.conv2d", [x, w, bias], conv, loc="conv3", name="c3")
    r3 = b.op("qnn.hardtanh", [c3], HardtanhAttrs(0.0, 2.0), name="r3")
    # conv with two users: stays (its unclamped output is needed)
    c4 = b.op("qnn.conv2d", [x, w, bias], conv, loc="conv4", name="c4")
    r4 = b.op("qnn.relu", [c4], name="r4")
    # conv -> add (-> relu): add_relu, but never conv2d_add (that rounds once; not exact)
    a5 = b.op("qnn.add", [c4, e], QBinaryAttrs(QParams.per_tensor(0.15, 20)), name="a5")
    r5 = b.op("qnn.relu", [a5], name="r5")
    # linear -> relu: linear_relu
    xl = b.input("xl", _qt((2, 5), u8, 0.1, 100))
    wl = b.const(rng.integers(-100, 100, (3, 5)).astype(np.int8),
                 TensorType((3, 5), i8, QParams.per_tensor(0.01, 3)), "wl")
    l6 = b.op("qnn.linear", [xl, wl], LinearAttrs(QParams.per_tensor(0.07, 50)), loc="fc",
              name="l6")
    r6 = b.op("qnn.relu", [l6], name="r6")
    # hardtanh(-0.5, 1): the lower bound is not the zero point: stays
    r7 = b.op("qnn.hardtanh", [r5], HardtanhAttrs(-0.5, 1.0), name="r7")
    return b.finish(r1b, r2, r3, r4, r7, r6)


def test_golden() -> None:
    g = golden_graph()
    check_golden(GOLDEN / "fuse-activation.before.qir", print_graph(g))
    assert FuseActivation().run(g)
    verify(g)
    check_golden(GOLDEN / "fuse-activation.after.qir", print_graph(g))
    assert parse(print_graph(g), g.constants) == g
    counts = g.op_counts()
    assert counts["qnn.conv2d_relu"] == 3 and counts["qnn.conv2d"] == 1
    assert counts["qnn.add_relu"] == 1 and counts["qnn.linear_relu"] == 1
    assert counts["qnn.relu"] == 1 and "qnn.conv2d_add" not in counts


def test_golden_graph_semantics() -> None:
    rng = np.random.default_rng(0)
    g = golden_graph()
    ins = [rng.integers(0, 256, v.type.shape).astype(np.uint8) for v in g.inputs]
    before = interpret(g, *ins)
    FuseActivation().run(g)
    assert_same_outputs(before, interpret(g, *ins))


# --- exactness, rule by rule -------------------------------------------------------------------


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("op", sorted(RELU_FUSIONS))
def test_every_rule_is_exact_on_the_producers_samples(op: str, act: str) -> None:
    """The measurement behind the module doc: every registry sample of the producer (random
    and edge qparams, huge biases, int32 wrap-around), each activation: 0 mismatches."""
    fused = 0
    for s in _samples(op, limit=200_000):
        b, y, ins = sample_graph(op, s)
        g = b.finish(apply_activation(b, y, act, "z"))
        before = interpret(g, *ins)
        FuseActivation().run(g)
        verify(g)
        assert_same_outputs(before, interpret(g, *ins))
        fused += RELU_FUSIONS[op] in g.op_counts()
        assert not FuseActivation().run(g)
    if act == "hardtanh-neg":
        pass                       # fires only where Q(-0.5) rounds to the zero point
    elif op != "qnn.cat":          # cat's channels-last samples are not fused
        # add's "-overflow" samples (|sum / out_scale| beyond 2**31): where its guard refuses
        fusable = [s for s in _samples(op, limit=200_000)
                   if not (op == "qnn.add" and s.label.endswith("-overflow"))]
        assert fused == len(fusable), "an exact fusion did not fire"
    else:
        assert fused > 0


def test_add_relu_guard_counterexample() -> None:
    """Where |sum / out_scale| reaches 2**31, Q_vec's int32 add wraps: relu(add) != add_relu.
    The guard refuses exactly there."""
    for dt, zp_in, zo, a in ((u8, 0, 200, [255, 0, 0, 5]), (i8, 127, -100, [-128, 127, 0, 5])):
        t = _qt((4,), dt, 100.0, zp_in)
        arr = np.array(a, dt.np)
        attrs = QBinaryAttrs(QParams.per_tensor(1e-5, zo))
        b = Builder()
        xa, xb = b.input("a", t), b.input("b", t)
        g = b.finish(b.op("qnn.relu", [b.op("qnn.add", [xa, xb], attrs)]))
        unfused = interpret(g, arr, arr)
        b2 = Builder()
        ya, yb = b2.input("a", t), b2.input("b", t)
        fused = interpret(b2.finish(b2.op("qnn.add_relu", [ya, yb], attrs)), arr, arr)
        assert not np.array_equal(unfused, fused), "the counterexample no longer differs"
        assert not add_relu_commutes(g.nodes[0])
        assert not FuseActivation().run(g)


def test_add_relu_guard_admits_ordinary_scales() -> None:
    b = Builder()
    t = _qt((4,), u8, 0.05, 128)
    s = b.op("qnn.add", [b.input("a", t), b.input("b", t)], QBinaryAttrs(
        QParams.per_tensor(1e-4, 255)))
    assert add_relu_commutes(s.producer)     # 2 * 255 * 0.05 / 1e-4 = 2.6e5 << 2**30


def test_onednn_guard_needs_finite_bias() -> None:
    """A NaN pre-activation becomes 0 in conv2d_relu but zo after relu(conv2d): the guard
    refuses a non-finite bias (and a bias that is not a constant)."""
    s = next(s for s in _samples("qnn.conv2d") if s.extra["path"] == "onednn"
             and len(s.arrays) == 3)
    zo = s.attrs.out_qparams.zp_value
    assert zo > 0
    for bias in ("nan", "input"):
        b = Builder()
        x = b.input("x", s.in_types[0])
        w = b.const(s.arrays[1], s.in_types[1], "w")
        bv = (b.input("bias", s.in_types[2]) if bias == "input" else
              b.const(np.full_like(s.arrays[2], np.nan), s.in_types[2], "bias"))
        conv = b.op("qnn.conv2d", [x, w, bv], s.attrs)
        g = b.finish(b.op("qnn.relu", [conv]))
        assert not relu_fusion_is_exact(g, conv.producer)
        assert not FuseActivation().run(g)
        if bias == "nan":
            unfused = interpret(g, s.arrays[0])
            b2 = Builder()
            x2 = b2.input("x", s.in_types[0])
            c2 = b2.op("qnn.conv2d_relu", [x2, b2.const(s.arrays[1], s.in_types[1], "w"),
                                           b2.const(np.full_like(s.arrays[2], np.nan),
                                                    s.in_types[2], "bias")], s.attrs)
            fused = interpret(b2.finish(c2), s.arrays[0])
            assert np.all(unfused == zo) and np.all(fused == 0)


def test_cat_channels_last_path_is_not_fused() -> None:
    b = Builder()
    t = _qt((1, 9, 1, 1), u8, 100.0, 0)
    cat = b.op("qnn.cat", [b.input("a", t), b.input("b", t)],
               QCatAttrs(1, QParams.per_tensor(1e-5, 200)))
    g = b.finish(b.op("qnn.relu", [cat]))
    assert not FuseActivation().run(g)
    # ... because it would not be exact there: huge sums wrap in the channels-last quantize
    x = np.full((1, 9, 1, 1), 255, np.uint8)
    b2 = Builder()
    fused = b2.op("qnn.cat_relu", [b2.input("a", t), b2.input("b", t)],
                  QCatAttrs(1, QParams.per_tensor(1e-5, 200)))
    assert not np.array_equal(interpret(g, x, x), interpret(b2.finish(fused), x, x))


def test_conv_then_add_is_not_conv2d_add() -> None:
    """Why conv2d -> qnn.add is left to kernel grouping: conv2d_add rounds once, the pair
    twice, so the results differ (about a fifth of the outputs on these samples)."""
    differ = total = 0
    for s in _samples("qnn.conv2d_add"):
        if s.in_types[0].shape[1] > 50:
            continue
        b, fused, ins = sample_graph("qnn.conv2d_add", s)
        ref = interpret(b.finish(fused), *ins)
        b2 = Builder()
        vals = [b2.input(f"x{k}", t) if t.qparams is not None and k != 1 else
                b2.const(a, t, f"c{k}") for k, (t, a) in enumerate(zip(s.in_types, s.arrays))]
        y = b2.op("qnn.conv2d", vals[:-1], s.attrs)
        z = b2.op("qnn.add", [y, vals[-1]], QBinaryAttrs(s.attrs.out_qparams))
        g = b2.finish(z)
        pair = interpret(g, *ins)
        differ += int((pair != ref).sum())
        total += ref.size
        assert not FuseActivation().run(g)
    assert differ > total // 20


# --- property tests ----------------------------------------------------------------------------


def _fuse_and_check(g: Graph, inputs: list[np.ndarray]) -> None:
    """FuseActivation keeps the interpreter's outputs, leaves a valid graph, is idempotent."""
    before = interpret(g, *inputs)
    FuseActivation().run(g)
    verify(g)
    assert_same_outputs(before, interpret(g, *inputs))
    assert not FuseActivation().run(g)


@given(gi=graphs())
def test_preserves_semantics_on_random_graphs(gi: tuple[Graph, list[np.ndarray]]) -> None:
    g, inputs = gi
    _fuse_and_check(g, inputs)


_TARGET_OPS = sorted(RELU_FUSIONS)


@st.composite
def activation_chains(draw: st.DrawFn) -> tuple[Graph, list[np.ndarray]]:
    """A producer of RELU_FUSIONS on one of its samples, then 1-3 activations; sometimes the
    producer (or an intermediate) is also a graph output or feeds a second activation."""
    op = draw(st.sampled_from(_TARGET_OPS))
    s = draw(st.sampled_from(_samples(op, limit=20_000)))
    b, y, ins = sample_graph(op, s)
    outs: list[Value] = []
    cur = y
    for k in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 4)) == 0:
            outs.append(cur)                      # a second use: must block the fusion
        cur = apply_activation(b, cur, draw(st.sampled_from(ACTIVATIONS)), f"a{k}")
    outs.append(cur)
    return b.finish(*outs), ins


@given(gi=activation_chains())
def test_preserves_semantics_on_activation_chains(gi: tuple[Graph, list[np.ndarray]]) -> None:
    g, inputs = gi
    _fuse_and_check(g, inputs)
    for node in g.nodes:            # nothing fusable is left behind
        if node.op == "qnn.relu" and node.inputs[0].producer is not None:
            p = node.inputs[0].producer
            assert not (p.op in RELU_FUSIONS and len(p.outputs[0].uses) == 1
                        and p.outputs[0] not in g.outputs and relu_fusion_is_exact(g, p))
