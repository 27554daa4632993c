"""te_lib helpers equal their quant_math twins bit for bit, on targets with and without FMA.

Each helper is compiled into a small kernel (generic schedule, so the vectorized path runs)
for the host preset, x86-avx2 (haswell: FMA, AVX2) and x86-generic (SSE2: no FMA, `llvm.fma`
becomes a libm call), and fed edge values: ties at every scale, NaN, +-inf, values beyond the
integer range, int32 wraparound.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from qcompiler.codegen.generic import schedule_generic
from qcompiler.ir.types import DType, QParams, f32, i8, i32, u8
from qcompiler.lowering import te_lib
from qcompiler.lowering import tvm_compat as tc
from qcompiler.reference import quant_math as qm
from qcompiler.target import get_target, host_arch

pytestmark = pytest.mark.tvm

if host_arch() != "x86_64":
    pytest.skip("the targets below are x86 presets", allow_module_level=True)

TARGETS = ["host", "x86-avx2", "x86-generic"]


def run_kernel(fns, inputs: list[np.ndarray], out_dtypes, target: str) -> list[np.ndarray]:
    """Compile one kernel with an output `out_k[i] = fns[k](placeholders, i)` per function (so
    many cases share one TVM build), schedule it with the generic rule, run it."""
    preset = get_target(target, num_cores=2)
    shape = inputs[0].shape
    with te_lib.lowering_context() as ctx:
        phs = [tc.te.placeholder(a.shape, str(a.dtype), name=f"a{k}") for k, a in enumerate(inputs)]
        outs = [te_lib.elementwise(shape, _bind(fn, phs), f"out{k}") for k, fn in enumerate(fns)]
        consts = list(ctx.constants)
    func = tc.create_prim_func([*phs, *(t for t, _ in consts), *outs])
    sch = schedule_generic(func, preset)
    lib = tc.compile_module(tc.scheduled_func(sch), preset.tvm_target())
    args = [tc.to_tensor(a) for a in inputs] + [tc.to_tensor(a) for _, a in consts]
    res = [tc.empty(shape, d) for d in out_dtypes]
    lib["main"](*args, *res)
    return [r.numpy() for r in res]


def _bind(fn, phs):
    return lambda i: fn(phs, i)


def run_elementwise(fn, inputs: list[np.ndarray], out_dtype: str, target: str) -> np.ndarray:
    return run_kernel([fn], inputs, [out_dtype], target)[0]


def edge_floats(scale: float, n: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * scale * 200).astype(np.float32)
    ties = (np.arange(-40, 40) + 0.5).astype(np.float32) * np.float32(scale)
    special = np.array(
        [
            0.0,
            -0.0,
            np.nan,
            np.inf,
            -np.inf,
            3e38,
            -3e38,
            1e10,
            -1e10,
            scale * 127.5,
            scale * -128.5,
            scale * 255.5,
        ],
        dtype=np.float32,
    )
    return np.concatenate([x, ties, special]).astype(np.float32)


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype, (what, got.dtype, want.dtype)
    bad = (
        ~((got == want) | (np.isnan(got) & np.isnan(want)))
        if got.dtype.kind == "f"
        else (got != want)
    )
    assert not bad.any(), f"{what}: {int(bad.sum())} differ, e.g. at {np.argwhere(bad)[:3].ravel()}"


FBGEMM_CASES = [(0.0123, 3), (1.0, 0), (0.25, 255), (7.3, -128), (1e-6, 17)]
VAL_CASES = [(0.0123, 3), (1.0, 857666213), (0.25, -(2**31)), (3.7e-4, 99)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [u8, i8], ids=str)
def test_q_fbgemm(target: str, dtype: DType) -> None:
    cases = [(s, int(np.clip(z, dtype.qmin, dtype.qmax))) for s, z in FBGEMM_CASES]
    x = edge_floats(1.0)
    with np.errstate(over="ignore"):
        xs = [(x * np.float32(s)).astype(np.float32) for s, _ in cases]
    fns = [
        lambda a, i, k=k, s=s, z=z: te_lib.q_fbgemm_value(a[k][i], qm.f32_inverse(s), z, dtype)
        for k, (s, z) in enumerate(cases)
    ]
    got = run_kernel(fns, xs, [dtype.storage] * len(cases), target)
    for g, xk, (s, z) in zip(got, xs, cases):
        assert_same(g, qm.q_fbgemm(xk, s, z, dtype), f"q_fbgemm {dtype} s={s} zp={z}")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [u8, i8, i32], ids=str)
def test_q_val_and_q_vec(target: str, dtype: DType) -> None:
    cases = [
        (s, z if dtype is i32 else int(np.clip(z, dtype.qmin, dtype.qmax))) for s, z in VAL_CASES
    ]
    x = edge_floats(1.0)
    with np.errstate(over="ignore"):
        xs = [(x * np.float32(s)).astype(np.float32) for s, _ in cases]
    fns = []
    for k, (s, z) in enumerate(cases):
        inv = qm.f32_inverse(s)
        fns.append(
            lambda a, i, k=k, inv=inv, z=z: te_lib.q_val_value(
                a[k][i], te_lib.f32_const(inv), te_lib.f32_const(z), dtype
            )
        )
        fns.append(
            lambda a, i, k=k, inv=inv, z=z: te_lib.q_vec_value(
                a[k][i], te_lib.f32_const(inv), z, dtype
            )
        )
    got = run_kernel(fns, xs, [dtype.storage] * len(fns), target)
    for k, (xk, (s, z)) in enumerate(zip(xs, cases)):
        inv = qm.f32_inverse(s)
        assert_same(got[2 * k], qm.q_val(xk, inv, z, dtype), f"q_val {dtype} s={s} zp={z}")
        assert_same(got[2 * k + 1], qm.q_vec(xk, inv, z, dtype), f"q_vec {dtype} s={s} zp={z}")


def _quantize_fn(qp: QParams, dtype: DType, rank: int):
    # te.compute calls this once, inside run_kernel's lowering context (te_lib.constant needs it)
    return lambda a, i: te_lib.quantize_fn(qp, dtype, rank)(a[0][i], i)


@pytest.mark.parametrize("target", TARGETS)
def test_quantize_per_channel(target: str) -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 7, 20)) * 40).astype(np.float32)
    x[0, 0, :4] = [np.nan, np.inf, -np.inf, 0.5]
    dtypes = (u8, i8, i32)
    qps = [
        QParams.per_axis(
            [0.5, 0.01, 1.0, 3.0, 0.0123, 7.3, 1e-4],
            [d.qmin, 0, d.qmax, 5, -3 if d.signed else 9, 1, 2],
            1,
        )
        for d in dtypes
    ]
    got = run_kernel(
        [_quantize_fn(qp, d, 3) for qp, d in zip(qps, dtypes)],
        [x],
        [d.storage for d in dtypes],
        target,
    )
    for g, qp, d in zip(got, qps, dtypes):
        want = qm.quantize_per_channel(x, qp.scales_array(), qp.zero_points_array(), 1, d)
        assert_same(g, want, f"quantize per channel {d}")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [u8, i8, i32], ids=str)
def test_dequantize_flavours(target: str, dtype: DType) -> None:
    rng = np.random.default_rng(7)
    q = rng.integers(dtype.qmin, dtype.qmax, 500, endpoint=True).astype(dtype.np)
    q[:4] = [dtype.qmin, dtype.qmax, 0, 1]
    cases = [(0.0123, dtype.qmax), (3.7e-4, dtype.qmin), (7.3, 0)]
    fns = []
    for s, z in cases:
        fns.append(lambda a, i, s=s, z=z: te_lib.dequantize_value(a[0][i], s, z))
        fns.append(lambda a, i, s=s, z=z: te_lib.dequantize_fma_value(a[0][i], s, z))
    got = run_kernel(fns, [q], ["float32"] * len(fns), target)
    for k, (s, z) in enumerate(cases):
        assert_same(got[2 * k], qm.dequantize_per_tensor(q, s, z), f"dequantize {dtype} zp={z}")
        assert_same(got[2 * k + 1], qm.dequantize_fma(q, s, z), f"dequantize_fma {dtype} zp={z}")


@pytest.mark.parametrize("target", TARGETS)
def test_dequantize_per_channel(target: str) -> None:
    rng = np.random.default_rng(8)
    q = rng.integers(-128, 128, (4, 5, 18)).astype(np.int8)
    qp = QParams.per_axis([0.013, 0.5, 1e-3, 2.0, 0.077], [0, -128, 127, 3, -7], 1)

    def fn(a, i):
        return te_lib.dequantize_fn(qp, 3)(a[0][i], i)

    got = run_elementwise(fn, [q], "float32", target)
    assert_same(got, qm.dequantize(q, qp), "dequantize per channel")


@pytest.mark.parametrize("target", TARGETS)
def test_fence_and_fma(target: str) -> None:
    """A fenced product rounds before the add on every target; fma() rounds once everywhere."""
    rng = np.random.default_rng(9)
    a, b, c = (rng.standard_normal(256).astype(np.float32) * 1000 for _ in range(3))
    sep = run_elementwise(
        lambda t, i: te_lib.mul_add(t[0][i], t[1][i], t[2][i]), [a, b, c], "float32", target
    )
    assert_same(sep, (a * b + c).astype(np.float32), "mul_add (separate roundings)")
    fused = run_elementwise(
        lambda t, i: te_lib.fma(t[0][i], t[1][i], t[2][i]), [a, b, c], "float32", target
    )
    assert_same(fused, qm.fma_f32(a, b, c), "fma")
    assert not np.array_equal(sep, fused)  # the inputs do exercise the difference


@pytest.mark.parametrize(
    "src,dst",
    [("int32", u8), ("int32", i8), ("int64", i32), ("uint8", i8), ("int8", u8), ("int16", u8)],
)
def test_saturate_integers(src: str, dst: DType) -> None:
    info = np.iinfo(src)
    x = np.array(
        [info.min, info.max, 0, -1, 1, 127, 128, 255, 256, -129, 2**31 - 1], dtype=np.int64
    )
    x = np.clip(x, info.min, info.max).astype(src)
    got = run_elementwise(lambda a, i: te_lib.saturate(a[0][i], dst), [x], dst.storage, "host")
    assert_same(got, qm.saturate(x, dst), f"saturate {src}->{dst}")


def test_round_half_even() -> None:
    x = (np.arange(-20, 20) + 0.5).astype(np.float32)
    got = run_elementwise(lambda a, i: te_lib.round_half_even(a[0][i]), [x], "float32", "host")
    assert_same(got, np.rint(x), "nearbyint")


def test_broadcast_helpers() -> None:
    assert te_lib.broadcast_shape((4, 1, 3), (5, 1)) == (4, 5, 3)
    with pytest.raises(te_lib.LoweringError, match="do not broadcast"):
        te_lib.broadcast_shape((2, 3), (4,))
    a = np.arange(3 * 5, dtype=np.float32).reshape(3, 1, 5)
    b = np.arange(4, dtype=np.float32).reshape(4, 1)
    out_shape = te_lib.broadcast_shape(a.shape, b.shape)
    full = np.zeros(out_shape, np.float32)
    got = run_elementwise(
        lambda t, i: (
            te_lib.broadcast_load(t[1], i, out_shape) * 100.0
            + te_lib.broadcast_load(t[2], i, out_shape)
        ),
        [full, a, b],
        "float32",
        "host",
    )
    np.testing.assert_array_equal(got, a * 100 + b)


def test_constant_needs_a_context() -> None:
    with pytest.raises(te_lib.LoweringError, match="lowering context"):
        te_lib.constant(np.zeros(3, np.float32), "c")


def test_quantize_rejects_unsupported() -> None:
    x = tc.te.placeholder((4,), "float64", name="x")
    with te_lib.lowering_context(), pytest.raises(te_lib.LoweringError, match="float32"):
        te_lib.quantize(x, QParams.per_tensor(0.1, 0), u8)
    xf = tc.te.placeholder((4,), "float32", name="x")
    qp = QParams.per_axis([0.1], [0.5], 0, scheme="float_qparams")
    with te_lib.lowering_context(), pytest.raises(te_lib.LoweringError, match="float_qparams"):
        te_lib.quantize(xf, qp, u8)
    assert f32.is_float
