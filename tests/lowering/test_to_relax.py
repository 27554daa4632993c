"""The kernel-group API of lowering/to_relax.py: fused groups, names, sharing, errors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcompiler as qc
from qcompiler.driver import build
from qcompiler.errors import LoweringError
from qcompiler.ir import registry
from qcompiler.ir.builder import Builder
from qcompiler.ir.graph import Graph
from qcompiler.ir.registry import OpDef, Sig
from qcompiler.ir.types import QParams, TensorType, f32, i8, u8
from qcompiler.lowering import te_lib
from qcompiler.lowering.to_relax import (
    KernelGroup,
    build_relax,
    kernel_base_name,
    lower_graph,
)
from qcompiler.ops.quant import QuantizeAttrs

pytestmark = pytest.mark.tvm


def chain() -> Graph:
    """x -> quantize -> requantize -> dequantize; the requantized value is an output too."""
    b = Builder("chain")
    x = b.input("x", TensorType((4, 33), f32))
    q = b.op("quantize", [x], QuantizeAttrs(u8, QParams.per_tensor(0.03, 128)))
    r = b.op("requantize", [q], QuantizeAttrs(i8, QParams.per_tensor(0.07, 2)), name="r")
    return b.finish(b.op("dequantize", [r], name="y"), r)


def x_in() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((4, 33)) * 3).astype(np.float32)


def test_names() -> None:
    assert kernel_base_name("qnn.conv2d", TensorType((1, 32, 112, 112), i8)) == (
        "qnn_conv2d_1x32x112x112_i8"
    )
    assert kernel_base_name("quantize", TensorType((), u8)) == "quantize_scalar_u8"


def test_one_fused_group_is_one_primfunc() -> None:
    g = chain()
    group = KernelGroup(tuple(n for n in g.nodes))
    res = build(g, groups=[group], strict_schedules=True)
    assert [kf.name for kf in res.lowered.funcs] == ["dequantize_4x33_f32"]
    (kernel,) = res.lowered.kernels
    # two values leave the group: the graph outputs y and r, so call_tir returns a tuple
    assert [v.name for v in kernel.outputs] == ["r", "y"]
    script = res.relax_mod.script()
    assert script.count("R.call_tir") == 1
    for got, want in zip(res.module(x_in()), qc.interpret(g, x_in())):
        np.testing.assert_array_equal(got, want)


def test_anchor_picks_the_name_and_partial_groups() -> None:
    g = chain()
    q, r, d = g.nodes
    groups = [KernelGroup((q, r), anchor=q), KernelGroup((d,))]
    res = build(g, groups=groups, strict_schedules=True)
    assert [kf.name for kf in res.lowered.funcs] == ["quantize_4x33_i8", "dequantize_4x33_f32"]
    assert [kf.ops for kf in res.lowered.funcs] == [("quantize", "requantize"), ("dequantize",)]
    for got, want in zip(res.module(x_in()), qc.interpret(g, x_in())):
        np.testing.assert_array_equal(got, want)


def test_group_errors() -> None:
    g = chain()
    q, r, d = g.nodes
    with pytest.raises(LoweringError, match="nodes in no kernel group"):
        lower_graph(g, [KernelGroup((q,)), KernelGroup((r,))])
    with pytest.raises(LoweringError, match="is in kernel groups 0 and 1"):
        lower_graph(g, [KernelGroup((q, r)), KernelGroup((r, d))])
    with pytest.raises(LoweringError, match="not convex"):
        lower_graph(g, [KernelGroup((q, d)), KernelGroup((r,))])
    with pytest.raises(LoweringError, match="anchor"):
        lower_graph(g, [KernelGroup((q,), anchor=r), KernelGroup((r,)), KernelGroup((d,))])


def test_dead_nodes_make_no_kernel() -> None:
    b = Builder("dead")
    x = b.input("x", TensorType((8,), f32))
    b.op("quantize", [x], QuantizeAttrs(u8, QParams.per_tensor(0.1, 0)))  # unused
    q = b.op("quantize", [x], QuantizeAttrs(i8, QParams.per_tensor(0.1, 0)))
    g = b.finish(q)
    lowered = lower_graph(g)
    assert [kf.name for kf in lowered.funcs] == ["quantize_8_i8"]


def test_output_that_is_an_input_or_a_constant() -> None:
    b = Builder("passthrough")
    x = b.input("x", TensorType((5,), f32))
    c = b.const(np.arange(5, dtype=np.float32), name="c")
    q = b.op("quantize", [c], QuantizeAttrs(u8, QParams.per_tensor(0.5, 1)))
    g = b.finish(x, c, q)
    cm = qc.compile(g)
    xv = np.linspace(-1, 1, 5, dtype=np.float32)
    for got, want in zip(cm(xv), qc.interpret(g, xv)):
        np.testing.assert_array_equal(got, want)


# --- a multi-output op, registered for these tests only ---------------------------------------


@dataclass(frozen=True)
class _SplitQAttrs:
    qparams: QParams


class _SplitQuantize(OpDef):
    """Test-only: quantize to u8 and i8 at once (two outputs from one lower)."""

    name = "test.split_quantize"
    Attrs = _SplitQAttrs
    num_inputs = 1

    def infer_type(self, attrs: _SplitQAttrs, x: TensorType) -> tuple[TensorType, ...]:
        return (TensorType(x.shape, u8, attrs.qparams), TensorType(x.shape, i8, attrs.qparams))

    def reference(self, sig: Sig, x: np.ndarray) -> tuple[np.ndarray, ...]:
        from qcompiler.reference import quant_math as qm

        return tuple(qm.quantize(x, t) for t in sig.out_types)

    def lower(self, sig: Sig, x: Any) -> Any:
        return tuple(
            te_lib.quantize(x, t.qparams, t.dtype, name=f"q_{t.dtype}") for t in sig.out_types
        )

    def samples(self, rng: np.random.Generator) -> Iterator[Any]:
        return iter(())


@pytest.fixture
def split_op() -> Iterator[str]:
    registry._ensure_loaded()
    registry.register_op(_SplitQuantize)
    try:
        yield _SplitQuantize.name
    finally:
        registry._REGISTRY.pop(_SplitQuantize.name, None)


def test_multi_output_op(split_op: str) -> None:
    b = Builder("multi")
    x = b.input("x", TensorType((3, 16), f32))
    a, c = b.op(split_op, [x], _SplitQAttrs(QParams.per_tensor(0.05, 0)))
    d = b.op("dequantize", [c])
    g = b.finish(a, d)
    res = build(g, strict_schedules=True)
    assert res.lowered.kernels[0].outputs == res.lowered.graph.nodes[0].outputs
    assert "R.call_tir" in res.relax_mod.script()
    xv = (np.random.default_rng(2).standard_normal((3, 16)) * 4).astype(np.float32)
    for got, want in zip(res.module(xv), qc.interpret(g, xv)):
        np.testing.assert_array_equal(got, want)


class _BadLower(_SplitQuantize):
    name = "test.bad_lower"

    def lower(self, sig: Sig, x: Any) -> Any:
        return te_lib.quantize(x, sig.out_types[0].qparams, sig.out_types[0].dtype)


def test_lower_returning_the_wrong_arity_names_the_node() -> None:
    registry._ensure_loaded()
    registry.register_op(_BadLower)
    try:
        b = Builder("bad")
        x = b.input("x", TensorType((3,), f32))
        g = b.finish(*b.op(_BadLower.name, [x], _SplitQAttrs(QParams.per_tensor(0.05, 0))))
        with pytest.raises(
            LoweringError,
            match=r"test.bad_lower: lower\(\) returned 1 tensors "
            r"for 2 outputs\n  in node:",
        ):
            lower_graph(g)
    finally:
        registry._REGISTRY.pop(_BadLower.name, None)


def test_build_relax_without_schedules_runs() -> None:
    """opt_level 0 path: unscheduled PrimFuncs straight into Relax."""
    g = chain()
    lowered = lower_graph(g)
    mod = build_relax(lowered)
    assert {gv.name_hint for gv in mod.get_global_vars()} == {
        "main",
        "quantize_4x33_u8",
        "requantize_4x33_i8",
        "dequantize_4x33_f32",
    }
