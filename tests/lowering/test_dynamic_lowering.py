"""Compiled dynamic-quantization ops: the zoo's dynamic LSTM and GRU end to end, hard RNN and
linear configurations, and the TIR twins of the sigmoid/tanh emulations.

The registry test (test_compiled_vs_interpreter.py) already compiles every sample of
qnn.linear_dynamic[_fp16], qnn.lstm/gru and the cells; this file adds whole models imported
from PyTorch, shapes the samples do not reach (sigmoid rows with a SLEEF body and a glibc tail,
fp16 block sums inside an RNN, int64 accumulators) and the float helpers on ~250 k inputs.
Compiled code must equal `qc.interpret` bit for bit; against PyTorch the RNN outputs stay
within the ops' documented bound (`max_lsb`, an absolute float tolerance: PyTorch's MKL tanh is
not reproducible).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("tvm")
torch = pytest.importorskip("torch")

# sibling test module (pytest puts this directory on sys.path: no __init__.py here)
from test_compiled_vs_interpreter import merge_graphs, sample_graph

import qcompiler as qc
from qcompiler.driver import build
from qcompiler.ir.registry import OpSample, get_op
from qcompiler.ops import dynamic as dy
from qcompiler.testing import samples as S

pytestmark = pytest.mark.tvm


def _first(y: object) -> np.ndarray:
    y = y[0] if isinstance(y, (tuple, list)) else y
    return y.detach().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)


@pytest.mark.parametrize("name,rnn_op", [("lstm", "qnn.lstm"), ("gru", "qnn.gru")])
def test_zoo_dynamic_rnn_end_to_end(name: str, rnn_op: str) -> None:
    from qcompiler.testing.zoo import quantized

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's quantized-tensor deprecation warnings
        model, inputs = quantized(name, "dynamic")
        graph = qc.from_torch(model, inputs)
        cm = qc.compile(model, inputs)
    assert rnn_op in [n.op for n in graph.nodes]
    bound = get_op(rnn_op).max_lsb  # absolute float tolerance vs PyTorch (fidelity_note)
    gen = torch.Generator().manual_seed(3)
    xs = [inputs[0], torch.randn(inputs[0].shape, generator=gen) * 4,
          torch.randn(inputs[0].shape, generator=gen) * 1e-3]
    for x in xs:
        got = _first(cm(x))
        want = _first(qc.interpret(graph, x.numpy()))
        np.testing.assert_array_equal(got, want)
        with torch.no_grad():
            theirs = _first(model(x))
        assert np.abs(got - theirs).max() <= bound


def _rnn_case(rng: np.random.Generator, mode: str, t_len: int, batch: int, in_size: int,
              attrs: dy.RNNAttrs, kind: str, per_channel: bool, affine: bool) -> tuple:
    op = get_op(f"qnn.{mode}")
    s = op.make_sample(rng, t_len, batch, in_size, attrs, kind, True, per_channel, "case")
    if affine:  # nonzero weight zero points (per channel: differing), any scale
        types, arrays = list(s.in_types), list(s.arrays)
        for k, t in enumerate(types):
            if t.qparams is not None:
                types[k], arrays[k] = dy._rand_qweight(rng, t.shape, per_channel, False)
        s = OpSample(s.attrs, tuple(types), tuple(arrays), "affine")
    return op, s


def _check_cases(cases: list[tuple]) -> None:
    built = [sample_graph(op, s) for op, s in cases]
    merged, spans = merge_graphs([g for g, _ in built])
    cm = build(merged, opt_level=1, strict_schedules=True).module
    outs = cm.run_numpy(*(a for _, arrays in built for a in arrays))
    for (op, s), (g, arrays), span in zip(cases, built, spans):
        ref = qc.interpret(g, *arrays)
        ref = ref if isinstance(ref, tuple) else (ref,)
        for k, (got, want) in enumerate(zip(outs[span], ref)):
            same = (got == want) | (np.isnan(got) & np.isnan(want))
            assert same.all(), f"{op.name} {s.attrs} output {k}: {(~same).sum()} differ"


def test_hard_rnn_configurations() -> None:
    """Sigmoid rows of 40 (32 SLEEF + 8 glibc) and 64 (all SLEEF), affine per-channel weights
    with reduce_range=False, fp16 input linears with K > 512 (block sums on tail columns),
    2 bidirectional batch_first layers, one long sequence."""
    rng = np.random.default_rng(11)
    A = dy.RNNAttrs
    cases = [
        _rnn_case(rng, "lstm", 5, 3, 7, A(40, bidirectional=True), "i8", True, True),
        _rnn_case(rng, "gru", 4, 2, 9, A(64, reduce_range=False), "i8", True, True),
        _rnn_case(rng, "gru", 3, 2, 600, A(5, batch_first=True), "f16", False, False),
        _rnn_case(rng, "lstm", 4, 2, 5, A(6, num_layers=2, bidirectional=True, batch_first=True),
                  "i8", False, False),
        _rnn_case(rng, "lstm", 40, 1, 3, A(9), "i8", False, False),
    ]
    _check_cases(cases)


def test_linear_dynamic_wide_accumulator() -> None:
    """K large enough that the int32 sum may overflow: the kernel sums in int64 and wraps."""
    rng = np.random.default_rng(5)
    k = 70_000
    tx, x = S.ftensor(rng, (2, k), 1.0)
    tw, w = dy._rand_qweight(rng, (3, k), True, False)
    op = get_op("qnn.linear_dynamic")
    attrs = dy.LinearDynamicAttrs(reduce_range=False)
    assert dy._acc_dtype(k, 255, dy._QWeight.of(tw).max_abs_w()) == "int64"
    _check_cases([(op, OpSample(attrs, (tx, tw), (x, w), "wide"))])


@pytest.mark.parametrize("target", ["host", "x86-generic"])
def test_sigmoid_tanh_twins_bit_exact(target: str) -> None:
    """_expf_sleef_te, _expf_glibc_te, _sigmoid_te, _tanh_te vs their numpy twins, with FMA
    (host) and without (x86-generic: llvm.fma becomes a libm call)."""
    from qcompiler.lowering import tvm_compat as tc
    from qcompiler.target import get_target, host_arch

    if host_arch() != "x86_64":
        pytest.skip("x86 presets")
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 150_000, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([
        bits.view(np.float32), (rng.standard_normal(60_000) * 10).astype(np.float32),
        (rng.standard_normal(30_000) * 1e-3).astype(np.float32),
        np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 88.72, 88.73, -103.9, -104.0, -104.1,
                  100.0, 100.1, -87.3, -87.4, 1e-40, -1e-40], np.float32)])
    n = x.size
    te = tc.te
    xp = te.placeholder((n,), "float32", name="x")
    outs = [
        te.compute((n,), lambda i: dy._expf_sleef_te(xp[i]), name="sleef"),
        te.compute((n,), lambda i: dy._expf_glibc_te(xp[i], dy._glibc_table_value),
                   name="glibc"),
        te.compute((n,), lambda i: dy._sigmoid_te(xp[i], True), name="sig_body"),
        te.compute((n,), lambda i: dy._sigmoid_te(xp[i], False), name="sig_tail"),
        te.compute((n,), lambda i: dy._tanh_te(xp[i]), name="tanh"),
    ]
    lib = tc.compile_module(tc.create_prim_func([xp, *outs]),
                            get_target(target, num_cores=2).tvm_target())
    res = [tc.empty((n,), "float32") for _ in outs]
    lib["main"](tc.to_tensor(x), *res)
    with np.errstate(all="ignore"):
        one = np.float32(1)
        refs = [dy.expf_sleef(x), dy.expf_glibc(x),
                (one / (one + dy.expf_sleef(-x))).astype(np.float32),
                (one / (one + dy.expf_glibc(-x))).astype(np.float32), dy.tanh_f32(x)]
    for out, ref, name in zip(res, refs, ["sleef", "glibc", "sig_body", "sig_tail", "tanh"]):
        got = out.numpy()
        same = (got.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(got) & np.isnan(ref))
        assert same.all(), f"{name}: {(~same).sum()} differ, e.g. x={x[~same][:4]}"
