"""Lowering details of the float ops, the quantized norms and the embeddings (issue 5) that the
registry-driven samples do not reach: numpy's float64 summation order bit for bit, TVM traps
(in-place buffer reuse, float constant folding, ordered compares, int64 overflow), constant
batch-norm parameters, and defined results on data the interpreter rejects."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcompiler as qc
from qcompiler.driver import build
from qcompiler.errors import InterpretError
from qcompiler.ir.builder import Builder
from qcompiler.ir.graph import Graph
from qcompiler.ir.types import QParams, TensorType, f32, i32, i64, u8
from qcompiler.ops import float_ops as F
from qcompiler.ops.embedding import QEmbeddingBagAttrs, weight_sample
from qcompiler.ops.norm import QBatchNormAttrs, QGroupNormAttrs

pytestmark = pytest.mark.tvm


def _equal(got: np.ndarray, want: np.ndarray) -> bool:
    if got.dtype.kind == "f":
        return bool(np.all((got == want) | (np.isnan(got) & np.isnan(want))))
    return bool(np.array_equal(got, want))


def _check(g: Graph, *arrays: np.ndarray, opt_levels: tuple[int, ...] = (1,)) -> None:
    want = qc.interpret(g, *arrays)
    want = want if isinstance(want, tuple) else (want,)
    for level in opt_levels:
        got = build(g, opt_level=level, strict_schedules=True).module.run_numpy(*arrays)
        for k, (a, b) in enumerate(zip(got, want)):
            assert _equal(a, b), f"opt_level {level}, output {k}: {a!r} vs interpreter {b!r}"


def test_float64_sums_in_numpys_order() -> None:
    """`_te_np_sum` equals np.sum bit for bit in float64 on data spanning 40 decades (any
    other order shows): pairwise trailing runs (one leaf, several leaves of unequal blocks),
    sequential outer axes, dropped size-1 axes."""
    from qcompiler.codegen.generic import schedule_generic
    from qcompiler.lowering import te_lib
    from qcompiler.lowering.tvm_compat import te, tvm
    from qcompiler.target import get_target

    target = get_target("host")
    rng = np.random.default_rng(5)
    cases = [((300,), (0,)), ((4, 33), (1,)), ((2, 3, 40), (1,)), ((5, 30, 40), (0, 2)),
             ((2, 1, 9), (1, 2)), ((4, 9, 1), (1,)), ((3, 1000), (1,)), ((2, 3, 130, 2), (2, 3))]
    for shape, axes in cases:
        a = rng.standard_normal(shape) * np.exp(rng.uniform(-46, 46, shape))
        x = te.placeholder(shape, "float64", name="x")
        with te_lib.lowering_context() as ctx:
            s = F._te_np_sum(lambda i, x=x: x[i], shape, axes, "s")
        consts = ctx.constants
        func = te.create_prim_func([x, *(c for c, _ in consts), s])
        mod = tvm.compile(schedule_generic(func, target).mod, target=target.tvm_target())
        want = np.sum(a, axis=axes)
        out = tvm.runtime.empty(want.shape, "float64")
        mod["main"](tvm.runtime.tensor(a), *(tvm.runtime.tensor(d) for _, d in consts), out)
        np.testing.assert_array_equal(out.numpy(), want, err_msg=f"{shape} axes {axes}")


def test_row_statistics_survive_tvm_buffer_reuse_and_reordering() -> None:
    """Regressions: per-group moments kept by a one-step reduction were zeroed by TVM's
    in-place buffer reuse (group norm, float32 NHWC path, at both opt levels); a row sum
    copied by an opaque te.extern was read before it was written (log_softmax over a middle
    dimension)."""
    rng = np.random.default_rng(2)
    b = Builder("gn")
    xt = TensorType((2, 1, 24, 24), u8, QParams.per_tensor(0.05, 4))
    x = b.input("x", xt)
    w, bias = (b.input(n, TensorType((1,), f32)) for n in ("w", "b"))
    g = b.finish(b.op("qnn.group_norm", [x, w, bias],
                      QGroupNormAttrs(1, QParams.per_tensor(0.02, 128))))
    _check(g, rng.integers(0, 256, (2, 1, 24, 24)).astype(np.uint8),
           np.array([1.2], np.float32), np.array([0.4], np.float32), opt_levels=(0, 1))

    b = Builder("lsm")
    x = b.input("x", TensorType((2, 3, 4), f32))
    g = b.finish(b.op("f.log_softmax", [x], F.DimAttrs(1)), b.op("f.softmax", [x], F.DimAttrs(1)))
    _check(g, rng.standard_normal((2, 3, 4)).astype(np.float32), opt_levels=(0, 1))


def test_batch_norm_with_constant_parameters() -> None:
    """Constant parameters take the precomputed alpha/beta path (kernel constants)."""
    rng = np.random.default_rng(3)
    c = 6
    b = Builder("bn")
    x = b.input("x", TensorType((2, c, 5, 7), u8, QParams.per_tensor(0.03, 100)))
    params = [rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32),
              rng.standard_normal(c).astype(np.float32),
              rng.uniform(0.1, 2.0, c).astype(np.float32)]
    ps = [b.const(p, TensorType((c,), f32), f"p{k}") for k, p in enumerate(params)]
    attrs = QBatchNormAttrs(QParams.per_tensor(0.02, 9))
    g = b.finish(b.op("qnn.batch_norm_relu", [x, *ps], attrs))
    res = build(g, strict_schedules=True)
    assert "bn_alpha" in res.lowered.funcs[0].func.script()
    xv = rng.integers(0, 256, (2, c, 5, 7)).astype(np.uint8)
    np.testing.assert_array_equal(res.module(xv), qc.interpret(g, xv))


def test_bad_indices_and_offsets_give_defined_results() -> None:
    """The interpreter rejects out-of-range indices and bad offsets; compiled code clamps
    them (it never reads outside a table) and equals the interpreter on the clamped data."""
    rng = np.random.default_rng(1)
    tw, q = weight_sample(rng, (10, 8), u8, False)
    b = Builder("bag")
    w = b.const(q, tw, "w")
    idx = b.input("idx", TensorType((6,), i64))
    off = b.input("off", TensorType((3,), i64))
    g = b.finish(b.op("qnn.embedding_bag", [w, idx, off], QEmbeddingBagAttrs()))
    cm = build(g, strict_schedules=True).module
    bad = np.array([0, -5, 10**12, 9, 3, -1], np.int64)
    with pytest.raises(InterpretError, match="out of range"):
        qc.interpret(g, bad, np.array([0, 2, 4], np.int64))
    ok = np.array([0, 2, 4], np.int64)
    np.testing.assert_array_equal(cm(bad, ok), qc.interpret(g, np.clip(bad, 0, 9), ok))
    for offs in ([0, 10, 2], [-3, 100, 1], [5, 1, 0]):
        assert np.isfinite(cm(bad, np.array(offs, np.int64))).all()

    b = Builder("emb")
    w = b.const(q, tw, "w")
    table = b.input("t", TensorType((10, 8), f32))
    idx = b.input("idx", TensorType((4,), i32))
    g = b.finish(b.op("qnn.embedding", [w, idx]), b.op("f.embedding", [idx, table]))
    cm = build(g, strict_schedules=True).module
    tv = rng.standard_normal((10, 8)).astype(np.float32)
    bad32 = np.array([-7, 2, 10, 2**31 - 1], np.int32)
    for got, want in zip(cm(tv, bad32), qc.interpret(g, tv, np.clip(bad32, 0, 9))):
        np.testing.assert_array_equal(got, want)


def test_float_and_int64_edge_semantics() -> None:
    """NaN/inf through compares, max/min and multiplies by a zero constant (TVM folds x * 0.0
    and orders its compares), division by a zero constant (TVM refuses to fold it), and int64
    arithmetic that overflows (numpy wraps; TIR's int64 ops may not overflow)."""
    sp = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -2.5, 3e38], np.float32)
    a, c = np.repeat(sp, len(sp)), np.tile(sp, len(sp))
    big = np.array([2**62, -2**63, 2**63 - 1, 3, -5, 2**40 + 7], np.int64)
    b = Builder("edges")
    x, y = b.input("x", TensorType(a.shape, f32)), b.input("y", TensorType(a.shape, f32))
    u, v = b.input("u", TensorType((6,), i64)), b.input("v", TensorType((6,), i64))
    outs = [b.op(op, [x, y]) for op in ("f.eq", "f.ne", "f.le", "f.ge", "f.maximum",
                                          "f.minimum", "f.mul")]
    outs += [b.op("f.mul_scalar", [x], F.ScalarAttrs(0.0)),
             b.op("f.div_scalar", [x], F.ScalarAttrs(0.0)),
             b.op("f.div_scalar", [x], F.ScalarAttrs(0.0, True)),
             b.op("f.relu", [x]), b.op("f.to", [x], F.ToAttrs(i64)),
             b.op("f.to", [x], F.ToAttrs(u8))]
    outs += [b.op(op, [u, v]) for op in ("f.add", "f.sub", "f.mul")]
    outs += [b.op("f.sub_scalar", [u], F.ScalarAttrs(0, True)),
             b.op("f.sum", [u], F.ReduceAttrs((0,)))]
    g = b.finish(*outs)
    _check(g, a, c, big, big[::-1].copy())


def test_python_number_operands_round_like_numpy() -> None:
    """Python numbers become float32 immediates as numpy rounds them (-1e39 -> -inf,
    1e-46 -> 0.0, itself hidden from TVM's constant folding)."""
    b = Builder("fill")
    x = b.input("x", TensorType((2, 5), f32))
    m = b.input("m", TensorType((5,), F.b1))
    g = b.finish(b.op("f.masked_fill", [x, m], F.MaskedFillAttrs(-1e39)),
                 b.op("f.add_scalar", [x], F.ScalarAttrs(1e-46)))
    rng = np.random.default_rng(0)
    _check(g, rng.standard_normal((2, 5)).astype(np.float32), rng.random(5) < 0.5)
