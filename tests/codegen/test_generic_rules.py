"""Generic schedule rules: always correct (== the unscheduled loop nest, bit for bit), parallel
and vectorized where they should be, on kernels shaped like what ops will lower to."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("tvm")

from qcompiler.codegen import rule as rule_mod
from qcompiler.codegen.generic import schedule_generic
from qcompiler.codegen.rule import (
    ScheduleRule,
    candidate_rules,
    register_rule,
    schedule_func,
)
from qcompiler.ir.types import i8, u8
from qcompiler.lowering import te_lib
from qcompiler.lowering import tvm_compat as tc
from qcompiler.target import get_target

pytestmark = pytest.mark.tvm
te, topi = tc.te, tc.topi

HOST2 = get_target("host", num_cores=2)
HOST1 = get_target("host", num_cores=1)


def build_and_run(
    func: tc.PrimFunc,
    inputs: list[np.ndarray],
    outputs: list[tuple],
    target=HOST2,
) -> list[np.ndarray]:
    lib = tc.compile_module(func, target.tvm_target())
    outs = [tc.empty(shape, dtype) for shape, dtype in outputs]
    lib["main"](*[tc.to_tensor(a) for a in inputs], *outs)
    return [o.numpy() for o in outs]


def check(
    make: Callable[[], tuple[list, list]],
    inputs: list[np.ndarray],
    want: list[np.ndarray] | None = None,
    target=HOST2,
) -> str:
    """Schedule with the generic rule; compare with the unscheduled function (and `want`)."""
    args, outs = make()
    func = tc.create_prim_func([*args, *outs])
    specs = [(tc.int_shape(o), str(o.dtype)) for o in outs]
    sch = schedule_generic(func, target)
    got = build_and_run(tc.scheduled_func(sch), inputs, specs, target)
    naive = build_and_run(func, inputs, specs, target)
    for k, (g, n) in enumerate(zip(got, naive)):
        np.testing.assert_array_equal(g, n, err_msg=f"output {k}: scheduled != unscheduled")
    for k, (g, w) in enumerate(zip(got, want or [])):
        np.testing.assert_array_equal(g, w, err_msg=f"output {k}: != numpy")
    return tc.scheduled_func(sch).script()


# --- dense with a requantize epilogue (the shape of a fused qnn.linear kernel) ------------------


def dense_requant(M: int, N: int, K: int):
    def make():
        a = te.placeholder((M, K), "uint8", name="a")
        w = te.placeholder((N, K), "int8", name="w")
        scale = te.placeholder((N,), "float32", name="scale")
        k = te.reduce_axis((0, K), name="k")
        acc = te.compute(
            (M, N),
            lambda i, j: te.sum((a[i, k].astype("int32") - 128) * w[j, k].astype("int32"), axis=k),
            name="acc",
        )
        out = te.compute(
            (M, N),
            lambda i, j: te_lib.q_val_value(
                acc[i, j].astype("float32"), scale[j], te_lib.f32_const(3), i8
            ),
            name="requant",
        )
        return [a, w, scale], [out]

    return make


@pytest.mark.parametrize("M,N,K", [(1, 48, 67), (37, 48, 67), (64, 64, 64), (3, 5, 7)])
def test_dense_requant(M: int, N: int, K: int) -> None:
    rng = np.random.default_rng(M + N + K)
    a = rng.integers(0, 256, (M, K)).astype(np.uint8)
    w = rng.integers(-128, 128, (N, K)).astype(np.int8)
    s = rng.uniform(1e-4, 1e-2, N).astype(np.float32)
    acc = (a.astype(np.int32) - 128) @ w.astype(np.int32).T
    t = (acc.astype(np.float32) * s).astype(np.float32) + np.float32(3)
    want = np.clip(np.rint(t), -128, 127).astype(np.int8)
    script = check(dense_requant(M, N, K), [a, w, s], [want])
    if M * N * K >= 1 << 14:
        assert script.count("T.parallel") == 1, script
        # the epilogue is computed inside the parallel loop, right after its accumulator tile
        lines = script.splitlines()
        par = next(k for k, ln in enumerate(lines) if "T.parallel" in ln)
        epi = next(k for k, ln in enumerate(lines) if 'T.sblock("requant")' in ln)
        indent = [len(ln) - len(ln.lstrip()) for ln in lines]
        assert epi > par and indent[epi] > indent[par], script
        assert all(indent[k] > indent[par] for k in range(par + 1, epi + 1)), script


def test_dense_single_thread_has_no_parallel_loop() -> None:
    M, N, K = 64, 64, 64
    rng = np.random.default_rng(0)
    args = [
        rng.integers(0, 256, (M, K)).astype(np.uint8),
        rng.integers(-128, 128, (N, K)).astype(np.int8),
        rng.uniform(1e-4, 1e-2, N).astype(np.float32),
    ]
    script = check(dense_requant(M, N, K), args, target=HOST1)
    assert "T.parallel" not in script


# --- conv2d with padding (topi) ----------------------------------------------------------------


def test_conv2d_nchw_with_padding() -> None:
    N, C, H, W, O = 1, 8, 14, 14, 16

    def make():
        x = te.placeholder((N, C, H, W), "int8", name="x")
        k = te.placeholder((O, C, 3, 3), "int8", name="k")
        out = topi.nn.conv2d_nchw(x, k, 1, 1, 1, out_dtype="int32")
        return [x, k], [out]

    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (N, C, H, W)).astype(np.int8)
    k = rng.integers(-128, 128, (O, C, 3, 3)).astype(np.int8)
    xp = np.pad(x.astype(np.int32), ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((N, O, H, W), np.int32)
    for i in range(3):
        for j in range(3):
            want += np.einsum(
                "nchw,oc->nohw", xp[:, :, i : i + H, j : j + W], k[:, :, i, j].astype(np.int32)
            )
    script = check(make, [x, k], [want])
    assert "T.parallel" in script


# --- float reductions keep their order ----------------------------------------------------------


def test_float_reduction_order_is_kept() -> None:
    R, K = 64, 999

    def make():
        x = te.placeholder((R, K), "float32", name="x")
        k = te.reduce_axis((0, K), name="k")
        s = te.compute((R,), lambda r: te.sum(x[r, k], axis=k), name="s")
        return [x], [s]

    x = (np.random.default_rng(2).standard_normal((R, K)) * 1e4).astype(np.float32)
    want = np.zeros(R, np.float32)
    for kk in range(K):  # strictly sequential float32 accumulation
        want = (want + x[:, kk]).astype(np.float32)
    check(make, [x], [want])


def test_full_reduction_to_a_scalar() -> None:
    def make():
        x = te.placeholder((50, 40), "int32", name="x")
        i = te.reduce_axis((0, 50), name="i")
        j = te.reduce_axis((0, 40), name="j")
        return [x], [te.compute((), lambda: te.sum(x[i, j], axis=[i, j]), name="total")]

    x = np.arange(2000, dtype=np.int32).reshape(50, 40)
    check(make, [x], [np.array(x.sum(), np.int32)])


# --- element-wise ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(3, 67), (100003,), (2, 3, 5, 7), (64, 56, 56), (1,), (16,), (5, 4, 9), (300, 48)]
)
def test_injective_shapes(shape: tuple[int, ...]) -> None:
    def make():
        x = te.placeholder(shape, "float32", name="x")
        c = te.placeholder((shape[-1],), "float32", name="c")
        y = te.compute(
            shape,
            lambda *i: te_lib.q_fbgemm_value(te_lib.fence(x[i] * c[i[-1]]), 0.37, 5, u8),
            name="y",
        )
        z = te.compute(shape, lambda *i: y[i].astype("int32") - 5, name="z")
        return [x, c], [z]

    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 100).astype(np.float32)
    c = rng.uniform(0.5, 2, shape[-1]).astype(np.float32)
    script = check(make, [x, c])
    assert 'T.sblock("y")' not in script  # inlined into z
    if np.prod(shape) >= 64:
        assert "T.vectorized" in script, script
    if np.prod(shape) >= 1 << 14:
        assert "T.parallel" in script, script


def test_multi_output_and_shared_producer() -> None:
    shape = (40, 100)

    def make():
        x = te.placeholder(shape, "int8", name="x")
        d = te.compute(shape, lambda i, j: te_lib.dequantize_value(x[i, j], 0.1, 3), name="d")
        a = te.compute(shape, lambda i, j: d[i, j] * 2.0, name="a")
        b = te.compute(shape, lambda i, j: d[i, j] + 1.0, name="b")
        return [x], [a, b]

    x = np.random.default_rng(4).integers(-128, 128, shape).astype(np.int8)
    d = ((x.astype(np.int32) - 3).astype(np.float32) * np.float32(0.1)).astype(np.float32)
    check(make, [x], [d * np.float32(2), d + np.float32(1)])


# --- the registry ------------------------------------------------------------------------------


def test_candidate_order_and_opt_levels() -> None:
    vnni = get_target("x86-avx512-vnni")
    names = [r.name for r in candidate_rules("quantize", "injective", vnni.schedule_family)]
    assert names[-1] == "generic_injective"
    assert candidate_rules("quantize", "injective", vnni.schedule_family, opt_level=0) == []
    for kind in ("reduction", "conv", "dense"):
        assert [r.name for r in candidate_rules("x", kind, "generic")] == ["generic_reduction"]
    assert candidate_rules("const", "opaque", "generic") == []


def test_failing_rule_falls_back_or_raises_when_strict(caplog: pytest.LogCaptureFixture) -> None:
    key = "test.op_with_broken_rule"

    @register_rule(key, family="x86-vnni")
    class Broken(ScheduleRule):
        name = "broken"

        def apply(self, func, target):
            raise RuntimeError("boom")

    try:
        x = te.placeholder((32,), "float32", name="x")
        func = tc.create_prim_func([x, te.compute((32,), lambda i: x[i] + 1.0, name="y")])
        vnni = get_target("x86-avx512-vnni")
        with caplog.at_level(logging.WARNING):
            _, name = schedule_func(func, op=key, kind="injective", target=vnni)
        assert name == "generic_injective"
        assert "schedule rule broken failed" in caplog.text
        with pytest.raises(RuntimeError, match="boom"):
            schedule_func(func, op=key, kind="injective", target=vnni, strict=True)
        # opt_level 1 never consults target-family rules
        _, name = schedule_func(
            func, op=key, kind="injective", target=vnni, opt_level=1, strict=True
        )
        assert name == "generic_injective"
    finally:
        rule_mod._RULES.pop((key, "x86-vnni"), None)


def test_unknown_family_is_rejected() -> None:
    with pytest.raises(rule_mod.QCompilerError, match="unknown schedule family"):
        register_rule("x", family="x86-avx1024")
