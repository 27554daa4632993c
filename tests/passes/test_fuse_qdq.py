"""fuse-qdq: golden IR, semantics within each pattern's bound, idempotence, the float report.

Chains are built the way quantizers leave them: dequantize -> float op(s) -> quantize, with
output qparams calibrated on the float result (min/max observer), so the comparisons exercise
real rounding instead of saturated outputs. No PyTorch needed here (tests/frontends/
test_pt2e.py compares against PyTorch).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcompiler.ir import Builder, QParams, TensorType, i8, parse, print_graph, u8, verify
from qcompiler.ir.graph import Graph, Value
from qcompiler.ops import float_ops as F
from qcompiler.ops.pool import MaxPoolAttrs
from qcompiler.ops.quant import QuantizeAttrs
from qcompiler.ops.shape import FlattenAttrs
from qcompiler.passes.fuse_qdq import FuseQdq, FuseQdqResult
from qcompiler.reference.interpreter import interpret
from qcompiler.testing.golden import check_golden
from qcompiler.testing.strategies import graphs

GOLDEN = Path(__file__).parent / "golden"
EXACT_PATTERNS = {"SinkDequantize", "FoldQdq", "HoistQuantize"}
TIE_SCALES = (0.1, 0.2, 0.25, 0.3, 1 / 255, 0.5)
_NICE = sorted(t * 10.0**e for t in TIE_SCALES for e in range(-6, 3))
"""Round scales over many decades: their ratios make exact rounding ties."""


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _clone(g: Graph) -> Graph:
    return parse(print_graph(g), g.constants)


# --- chain builders --------------------------------------------------------------------------


class Chain:
    """A Builder with graph inputs and their data, and a calibrating quantize."""

    def __init__(self, rng: np.random.Generator, tie_scales: bool = False) -> None:
        self.rng = rng
        self.b = Builder("chain")
        self.data: list[np.ndarray] = []
        self.tie = tie_scales

    def scale(self, lo: float = 1e-3, hi: float = 0.1) -> float:
        if self.tie:
            nice = [t for t in _NICE if lo <= t <= hi]
            if nice:
                return float(self.rng.choice(nice))
        return float(np.exp(self.rng.uniform(np.log(lo), np.log(hi))))

    def qinput(self, shape: tuple[int, ...], dtype=u8, scale: float | None = None,
               zp: int | None = None) -> Value:
        s = self.scale() if scale is None else scale
        z = (int(self.rng.integers(0, 256)) if dtype is u8 else int(self.rng.integers(-20, 21))
             ) if zp is None else zp
        v = self.b.input(f"x{len(self.data)}", TensorType(shape, dtype, QParams.per_tensor(s, z)))
        self.data.append(self.rng.integers(dtype.qmin, dtype.qmax + 1, shape).astype(dtype.np))
        return v

    def dq(self, v: Value) -> Value:
        return self.b.op("dequantize", [v])

    def weight(self, shape: tuple[int, ...], per_channel: bool = True) -> Value:
        n = shape[0]
        if per_channel:
            qp = QParams.per_axis([self.scale(1e-3, 2e-2) for _ in range(n)], [0] * n, 0,
                                  "symmetric")
        else:
            qp = QParams.per_tensor(self.scale(1e-3, 2e-2), 0, "symmetric")
        w = self.rng.integers(-127, 128, shape).astype(np.int8)
        return self.dq(self.b.const(w, TensorType(shape, i8, qp), "w"))

    def bias(self, n: int) -> Value:
        return self.b.const((self.rng.standard_normal(n) * 0.1).astype(np.float32), name="b")

    def quantize(self, v: Value, dtype=u8, qp: QParams | None = None, name: str = "out") -> Value:
        """quantize(v) with qparams from v's min/max on this chain's inputs (or `qp`)."""
        if qp is None:
            self.b.finish(v)
            y = interpret(self.b.graph, *self.data)
            lo, hi = min(float(y.min()), 0.0), max(float(y.max()), 0.0)
            s = max((hi - lo) / (dtype.qmax - dtype.qmin), 1e-6)
            if self.tie:  # the next "round" scale up: ratios of round scales make ties
                s = next((t for t in _NICE if t >= s), s)
            z = int(np.clip(round(dtype.qmin - lo / s), dtype.qmin, dtype.qmax))
            qp = QParams.per_tensor(float(np.float32(s)), z)
        return self.b.op("quantize", [v], QuantizeAttrs(dtype, qp), name=name)

    def finish(self, *outs: Value) -> tuple[Graph, list[np.ndarray]]:
        g = self.b.finish(*outs)
        verify(g)
        return g, self.data


def _act(c: Chain, v: Value, act: str) -> Value:
    if act == "relu":
        return c.b.op("f.relu", [v])
    if act == "relu6":
        return c.b.op("f.clamp", [v], F.ClampAttrs(0.0, 6.0))
    if act == "hardtanh":
        return c.b.op("f.clamp", [v], F.ClampAttrs(-0.5, 0.5))
    return v


def conv_chain(rng, act: str = "none", residual: bool = False, per_channel: bool = True,
               tie: bool = False, groups: int = 1):
    c = Chain(rng, tie)
    cin, cout = 4 * groups, 4 * groups
    x = c.qinput((1, cin, 6, 7))
    attrs = F.Conv2dAttrs((1, 1), (1, 1), (1, 1), groups)
    y = c.b.op("f.conv2d", [c.dq(x), c.weight((cout, cin // groups, 3, 3), per_channel),
                            c.bias(cout)], attrs)
    if residual:
        y = c.b.op("f.add", [y, c.dq(c.qinput((1, cout, 6, 7)))])
    return c.finish(c.quantize(_act(c, y, act)))


def linear_chain(rng, act: str = "none", tie: bool = False):
    c = Chain(rng, tie)
    y = c.b.op("f.linear", [c.dq(c.qinput((3, 24))), c.weight((10, 24)), c.bias(10)])
    return c.finish(c.quantize(_act(c, y, act)))


def add_chain(rng, act: str = "none", dtype=u8, tie: bool = False):
    c = Chain(rng, tie)
    a, b = c.qinput((2, 3, 5, 7), dtype), c.qinput((2, 3, 5, 7), dtype)
    return c.finish(c.quantize(_act(c, c.b.op("f.add", [c.dq(a), c.dq(b)]), act), dtype))


def maxpool_chain(rng, tie: bool = False, same: bool = True):
    c = Chain(rng, tie)
    x = c.qinput((1, 3, 7, 8))
    y = c.b.op("f.max_pool2d", [c.dq(x)], MaxPoolAttrs((3, 3), (2, 2), (1, 1)))
    return c.finish(c.quantize(y, qp=x.type.qparams if same else None))


def avgpool_chain(rng, tie: bool = False):
    c = Chain(rng, tie)
    x = c.qinput((2, 5, 7, 6))
    y = c.b.op("f.adaptive_avg_pool2d", [c.dq(x)], F.AdaptivePoolAttrs((3, 2)))
    return c.finish(c.quantize(y, qp=x.type.qparams))


def cat_chain(rng, tie: bool = False, same: bool = False):
    c = Chain(rng, tie)
    a, b = c.qinput((2, 3, 4, 5)), c.qinput((2, 6, 4, 5))
    y = c.b.op("f.cat", [c.dq(a), c.dq(b)], F.DimAttrs(1))
    return c.finish(c.quantize(y, qp=a.type.qparams if same else None))


def requant_chain(rng, tie: bool = False):
    c = Chain(rng, tie)
    x = c.qinput((4, 33))
    y = c.b.op("flatten", [c.dq(x)], FlattenAttrs(0))
    return c.finish(c.quantize(y))


def hardswish_chain(rng, tie: bool = False):
    c = Chain(rng, tie)
    x = c.qinput((3, 40), scale=c.scale(0.01, 0.05))
    return c.finish(c.quantize(c.b.op("f.hardswish", [c.dq(x)])))


CHAINS: dict[str, Callable[..., tuple[Graph, list[np.ndarray]]]] = {
    "conv": lambda rng, tie: conv_chain(rng, tie=tie),
    "conv_relu": lambda rng, tie: conv_chain(rng, "relu", tie=tie),
    "conv_relu6": lambda rng, tie: conv_chain(rng, "relu6", tie=tie),
    "conv_per_tensor_w": lambda rng, tie: conv_chain(rng, per_channel=False, tie=tie),
    "conv_depthwise": lambda rng, tie: conv_chain(rng, "relu", groups=2, tie=tie),
    "conv_add": lambda rng, tie: conv_chain(rng, residual=True, tie=tie),
    "conv_add_relu": lambda rng, tie: conv_chain(rng, "relu", residual=True, tie=tie),
    "linear": lambda rng, tie: linear_chain(rng, tie=tie),
    "linear_relu": lambda rng, tie: linear_chain(rng, "relu", tie=tie),
    "linear_hardtanh": lambda rng, tie: linear_chain(rng, "hardtanh", tie=tie),
    "add": lambda rng, tie: add_chain(rng, tie=tie),
    "add_relu": lambda rng, tie: add_chain(rng, "relu", tie=tie),
    "add_i8": lambda rng, tie: add_chain(rng, dtype=i8, tie=tie),
    "max_pool": lambda rng, tie: maxpool_chain(rng, tie),
    "max_pool_requant": lambda rng, tie: maxpool_chain(rng, tie, same=False),
    "adaptive_avg_pool": lambda rng, tie: avgpool_chain(rng, tie),
    "cat": lambda rng, tie: cat_chain(rng, tie),
    "cat_same_qparams": lambda rng, tie: cat_chain(rng, tie, same=True),
    "requantize": lambda rng, tie: requant_chain(rng, tie),
    "hardswish": lambda rng, tie: hardswish_chain(rng, tie),
}

EXPECTED_OP = {
    "conv": "qnn.conv2d", "conv_relu": "qnn.conv2d_relu", "conv_relu6": "qnn.clamp",
    "conv_per_tensor_w": "qnn.conv2d", "conv_depthwise": "qnn.conv2d_relu",
    "conv_add": "qnn.conv2d_add", "conv_add_relu": "qnn.conv2d_add_relu",
    "linear": "qnn.linear", "linear_relu": "qnn.linear_relu", "linear_hardtanh": "qnn.clamp",
    "add": "qnn.add", "add_relu": "qnn.add_relu", "add_i8": "qnn.add",
    "max_pool": "qnn.max_pool2d", "max_pool_requant": "requantize",
    "adaptive_avg_pool": "qnn.adaptive_avg_pool2d", "cat": "qnn.cat",
    "cat_same_qparams": "qnn.cat", "requantize": "requantize", "hardswish": "qnn.hardswish",
}


def _fuse_and_compare(g: Graph, data: list[np.ndarray]) -> tuple[FuseQdqResult, int, int, int]:
    """Fuse a clone of g; return (result, mismatches, total, max |diff|) over the outputs."""
    fused = _clone(g)
    res = FuseQdq().apply(fused)
    verify(fused)
    before = _tuple(interpret(g, *data))
    after = _tuple(interpret(fused, *data))
    mism = total = worst = 0
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and a.shape == b.shape
        d = np.abs(a.astype(np.int64) - b.astype(np.int64))
        mism, total, worst = mism + int((d != 0).sum()), total + d.size, max(worst, int(d.max()))
    assert not FuseQdq().run(fused), "fuse-qdq changed the graph on its second run"
    return res, mism, total, worst


@pytest.mark.parametrize("kind", sorted(CHAINS))
def test_chain_fuses_within_one_lsb(kind):
    g, data = CHAINS[kind](np.random.default_rng(7), False)
    res, mism, total, worst = _fuse_and_compare(g, data)
    ops = {n.op for n in _fused(g).nodes}
    assert EXPECTED_OP[kind] in ops, (kind, ops)
    assert not any(op.startswith("f.") for op in ops), f"{kind} left float ops: {res.report}"
    assert not res.report
    assert worst <= 1, f"{kind}: {mism}/{total} differ, max {worst} LSB"


def _fused(g: Graph) -> Graph:
    h = _clone(g)
    FuseQdq().run(h)
    return h


@given(kind=st.sampled_from(sorted(CHAINS)), seed=st.integers(0, 2**32 - 1), tie=st.booleans())
def test_fusion_preserves_semantics_within_bound(kind, seed, tie):
    g, data = CHAINS[kind](np.random.default_rng(seed), tie)
    _, _, _, worst = _fuse_and_compare(g, data)
    assert worst <= 1


@given(gi=graphs())
def test_random_graphs_verify_and_stay_exact_under_exact_rewrites(gi):
    """On registry-built random graphs: verifies, idempotent; bit-exact when only the exact
    patterns fired, integer outputs within 1 LSB otherwise."""
    g, inputs = gi
    before = _tuple(interpret(g, *inputs))
    h = _clone(g)
    res = FuseQdq().apply(h)
    verify(h)
    after = _tuple(interpret(h, *inputs))
    exact = set(res.fired) <= EXACT_PATTERNS
    for a, b in zip(before, after):
        if exact:
            np.testing.assert_array_equal(a, b)
        elif a.dtype.kind in "iu":
            assert np.abs(a.astype(np.int64) - b.astype(np.int64)).max(initial=0) <= 1
    assert not FuseQdq().run(h)


MEASURE_N = int(os.environ.get("QC_MEASURE_N", "20"))
"""Chains per kind and scale family (the documented rates used QC_MEASURE_N=200)."""


def test_measured_rates():
    """Mismatch rates of each fused chain against the unfused graph, as documented in the
    fuse_qdq module doc: random log-uniform scales, and round tie-heavy ones (0.1, 0.25,
    1/255, ... whose ratios make exact rounding ties)."""
    lines = []
    for kind in sorted(CHAINS):
        cols = []
        for tie in (False, True):
            mism = total = 0
            for k in range(MEASURE_N):
                g, data = CHAINS[kind](np.random.default_rng(1000 + k), tie)
                _, m, n, worst = _fuse_and_compare(g, data)
                assert worst <= 1, kind
                mism, total = mism + m, total + n
            cols.append(f"{mism:5d}/{total:8d} = {mism / total:.1e}")
        lines.append(f"{kind:20s} random {cols[0]}   tie-heavy {cols[1]}")
    print("\nfuse-qdq mismatch rates vs the unfused graph (each 1 LSB):\n" + "\n".join(lines))


# --- golden ----------------------------------------------------------------------------------


def golden_graph() -> Graph:
    """One of each pattern, plus ops that must stay float, in a small network."""
    c = Chain(np.random.default_rng(3))
    x = c.qinput((1, 2, 6, 6), scale=0.05, zp=128)
    w = c.weight((4, 2, 3, 3))
    y = c.b.op("f.conv2d", [c.dq(x), w, c.bias(4)], F.Conv2dAttrs((1, 1), (1, 1)), name="conv")
    y = c.b.op("f.relu", [y], name="relu")
    y = c.quantize(y, qp=QParams.per_tensor(0.04, 0), name="q1")  # -> conv2d_relu
    p = c.b.op("f.max_pool2d", [c.dq(y)], MaxPoolAttrs((2, 2)), name="pool")
    p = c.quantize(p, qp=QParams.per_tensor(0.04, 0), name="q2")  # -> max_pool2d
    r = c.b.op("f.conv2d", [c.dq(p), c.weight((4, 4, 1, 1)), c.bias(4)], F.Conv2dAttrs(),
               name="conv_res")
    r = c.b.op("f.add", [r, c.dq(p)], name="residual")
    r = c.b.op("f.relu", [r], name="relu2")
    r = c.quantize(r, qp=QParams.per_tensor(0.06, 0), name="q3")  # -> conv2d_add_relu
    a = c.b.op("f.adaptive_avg_pool2d", [c.dq(r)], F.AdaptivePoolAttrs((1, 1)), name="gap")
    a = c.b.op("flatten", [a], FlattenAttrs(1), name="flat")
    a = c.quantize(a, qp=QParams.per_tensor(0.06, 0), name="q4")  # -> hoist + pool
    fc = c.b.op("f.linear", [c.dq(a), c.weight((3, 4)), c.bias(3)], name="fc")
    fq = c.quantize(fc, qp=QParams.per_tensor(0.02, 100), name="q5")  # -> linear
    s = c.b.op("f.add", [c.dq(fq), c.dq(fq)], name="double")
    sq = c.quantize(s, qp=QParams.per_tensor(0.05, 90), name="q6")  # -> add
    cat = c.b.op("f.cat", [c.dq(fq), c.dq(sq)], F.DimAttrs(1), name="cat")
    cq = c.quantize(cat, qp=QParams.per_tensor(0.05, 90), name="q7")  # -> cat
    rq = c.quantize(c.dq(cq), qp=QParams.per_tensor(0.1, 128), name="q8")  # -> requantize
    sm = c.b.op("f.softmax", [c.dq(rq)], F.DimAttrs(1), name="softmax")  # stays float
    return c.finish(sm)[0]


def test_golden():
    g = golden_graph()
    check_golden(GOLDEN / "fuse-qdq.before.qir", print_graph(g))
    res = FuseQdq().apply(g)
    verify(g)
    check_golden(GOLDEN / "fuse-qdq.after.qir", print_graph(g))
    assert parse(print_graph(g), g.constants) == g
    assert [(r.op, r.name) for r in res.report] == [("f.softmax", "softmax")]
    assert "no integer form" in res.report[0].reason
    assert res.fired["DqConvQ"] == 2 and res.fired["DqLinearQ"] == 1


def test_report_explains_what_stays_float():
    c = Chain(np.random.default_rng(5))
    xi8 = c.qinput((1, 4, 5, 5), dtype=i8)
    y = c.b.op("f.conv2d", [c.dq(xi8), c.weight((4, 4, 3, 3)), c.bias(4)], F.Conv2dAttrs(),
               name="conv_i8")
    q1 = c.quantize(y, dtype=i8)
    x = c.qinput((1, 4, 5, 5))
    z = c.b.op("f.conv2d", [c.dq(x), c.weight((4, 4, 3, 3)), c.bias(4)], F.Conv2dAttrs(),
               name="conv_float_out")
    m = c.b.op("f.adaptive_avg_pool2d", [c.dq(x)], F.AdaptivePoolAttrs((1, 1)), name="gap")
    mq = c.quantize(m, qp=QParams.per_tensor(0.5, 3))
    g, _ = c.finish(q1, z, mq)
    res = FuseQdq().apply(g)
    reasons = {r.name: r.reason for r in res.report}
    assert set(reasons) == {"conv_i8", "conv_float_out", "gap"}
    assert "quint8" in reasons["conv_i8"]
    assert "not quantized" in reasons["conv_float_out"]
    assert "differ from its input" in reasons["gap"]
    assert "stays float: f.conv2d %conv_i8" in str_report(res)


def str_report(res: FuseQdqResult) -> str:
    return "\n".join(f"stays float: {r}" for r in res.report)


def test_report_is_logged(caplog):
    c = Chain(np.random.default_rng(1))
    x = c.qinput((2, 9))
    sm = c.b.op("f.softmax", [c.dq(x)], F.DimAttrs(1), name="sm")
    g, _ = c.finish(c.quantize(sm))
    with caplog.at_level("INFO", logger="qcompiler.passes.fuse_qdq"):
        FuseQdq().run(g)
    assert "stays float: f.softmax %sm: no integer form in the op set" in caplog.text
