"""Registry-driven: every op's compiled code equals the reference interpreter, exactly.

For each op in `all_ops()` with a `lower`, the single-op graphs of its samples
(`testing.compare.single_op_graph`) are merged side by side into ONE graph, compiled once with
the generic schedules (opt_level=1, schedule-rule errors re-raised) and run once; each sample's
outputs must equal `qc.interpret` bit for bit (float outputs of the few ops with a documented
`compiled_tolerance`, see docs/lowering.md: within it). One compile per op keeps this fast (a
TVM build costs ~0.1-1 s). `QC_LOWERING_SAMPLES` caps the samples per op (default 24, evenly
spread so the edge cases at both ends stay; `all` for every sample).

Ops without a `lower` are reported as xfail with the list of ops not lowered yet.
Plus: a multi-node graph through `qc.compile`, export -> load -> run in a fresh process,
an unknown target, and a wrong-shape input at call time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcompiler as qc
from qcompiler.driver import build
from qcompiler.errors import InputError, LoweringError, QCompilerError, TargetError
from qcompiler.ir.builder import Builder
from qcompiler.ir.graph import Graph
from qcompiler.ir.registry import OpDef, OpSample, Sig, all_ops, get_op
from qcompiler.ir.types import QParams, TensorType, f32, i8, i32, u8
from qcompiler.ops.quant import QuantizeAttrs
from qcompiler.testing.compare import single_op_graph

pytestmark = pytest.mark.tvm

OPS = [op for op in all_ops() if op.name != "const"]


def _has_lower(op: OpDef) -> bool:
    return type(op).lower is not OpDef.lower


NOT_LOWERED = [op.name for op in OPS if not _has_lower(op)]


def _param(op: OpDef) -> object:
    if _has_lower(op):
        return pytest.param(op, id=op.name)
    reason = f"{op.name} has no lower() yet (see test_every_op_is_lowered for the full list)"
    return pytest.param(op, id=op.name, marks=pytest.mark.xfail(reason=reason, run=False))


@pytest.mark.xfail(
    bool(NOT_LOWERED),
    reason=f"ops not lowered yet ({len(NOT_LOWERED)}): " + ", ".join(NOT_LOWERED),
    run=False,
    strict=True,
)
def test_every_op_is_lowered() -> None:
    assert not NOT_LOWERED


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def _pick(samples: list[OpSample]) -> list[OpSample]:
    cap = os.environ.get("QC_LOWERING_SAMPLES", "24")
    if cap == "all" or len(samples) <= int(cap):
        return samples
    idx = sorted(set(np.linspace(0, len(samples) - 1, int(cap)).round().astype(int).tolist()))
    return [samples[k] for k in idx]


_SIGNATURE_DTYPES = ("uint8", "int8", "int32", "float32", "int64", "bool")
"""Storage dtypes a compiled model takes as inputs (driver._MANIFEST_DTYPES, minus u4)."""


def sample_graph(op: OpDef, s: OpSample) -> tuple[Graph, list[np.ndarray]]:
    """`single_op_graph`, except that inputs a compiled model cannot take (float16 weights of
    the fp16 dynamic ops, u4) become graph constants holding the sample's data, as they are
    in real models. Returns the graph and the arrays of its remaining inputs."""
    g = single_op_graph(op, s)
    keep = [
        k
        for k, t in enumerate(s.in_types)
        if t.dtype.storage in _SIGNATURE_DTYPES and t.dtype.short != "u4"
    ]
    if len(keep) == len(s.in_types):
        return g, list(s.arrays)
    b = Builder(g.name)
    xs = [
        b.input(f"x{k}", t) if k in keep else b.const(s.arrays[k], t, f"c{k}")
        for k, t in enumerate(s.in_types)
    ]
    out = b.op(op.name, xs, s.attrs)
    g = b.finish(*(out if isinstance(out, tuple) else (out,)))
    return g, [s.arrays[k] for k in keep]


def merge_graphs(graphs: list[Graph]) -> tuple[Graph, list[slice]]:
    """Side-by-side union of graphs: inputs and outputs concatenated in order."""
    b = Builder("merged")
    spans = []
    n_out = 0
    for gi, g in enumerate(graphs):
        env = {id(v): b.input(f"s{gi}_{v.name or k}", v.type) for k, v in enumerate(g.inputs)}
        for node in g.nodes:
            if node.op == "const":
                env[id(node.output)] = b.const(
                    g.constants[node.attrs.name], node.output.type, f"s{gi}_{node.attrs.name}"
                )
                continue
            out = b.op(node.op, [env[id(v)] for v in node.inputs], node.attrs)
            outs = out if isinstance(out, tuple) else (out,)
            for v, o in zip(node.outputs, outs):
                env[id(v)] = o
        b.graph.outputs.extend(env[id(v)] for v in g.outputs)
        spans.append(slice(n_out, n_out + len(g.outputs)))
        n_out += len(g.outputs)
    return b.graph, spans


def _returnable(g: Graph) -> Graph:
    """`g`, with float16 outputs (which a compiled model cannot return) cast to float32 by an
    exact f.to, in the compiled and the interpreted graph alike."""
    if all(v.type.dtype.storage != "float16" for v in g.outputs):
        return g
    from qcompiler.ops.float_ops import ToAttrs

    b = Builder(graph=g)
    return b.finish(*(
        b.op("f.to", [v], ToAttrs(f32)) if v.type.dtype.storage == "float16" else v
        for v in g.outputs
    ))


def _compiled_tolerance(op: OpDef, sample: OpSample, want: np.ndarray) -> float:
    """0 (exact), or the absolute float tolerance of an op with a documented
    `compiled_tolerance` (docs/lowering.md): compiled_tolerance * the op's `error_scale`
    (max |output| unless the op defines it otherwise)."""
    rel = float(getattr(op, "compiled_tolerance", 0.0) or 0.0)
    if not rel:
        return 0.0
    scale_fn = getattr(op, "error_scale", None)
    if scale_fn is None:
        finite = np.abs(want[np.isfinite(want)].astype(np.float64))
        return rel * (float(finite.max()) if finite.size else 0.0)
    sig = Sig(sample.in_types, op.infer_types(sample.attrs, sample.in_types), sample.attrs)
    return rel * float(scale_fn(sig, sample.arrays, want))


@pytest.mark.parametrize("op", [_param(op) for op in OPS])
def test_compiled_equals_interpreter(op: OpDef) -> None:
    samples = _pick(list(op.samples(_rng(op.name))))
    assert samples, f"op {op.name} has a lower() but no samples to test it with"
    built = [(_returnable(g), arrays) for g, arrays in (sample_graph(op, s) for s in samples)]
    graphs = [g for g, _ in built]
    merged, spans = merge_graphs(graphs)
    cm = build(merged, opt_level=1, strict_schedules=True).module
    outs = cm.run_numpy(*(a for _, arrays in built for a in arrays))
    failures = []
    for s, (g, arrays), span in zip(samples, built, spans):
        ref = qc.interpret(g, *arrays)
        ref = ref if isinstance(ref, tuple) else (ref,)
        for k, (got, want) in enumerate(zip(outs[span], ref)):
            if got.dtype != want.dtype or got.shape != want.shape:
                failures.append(
                    f"{s.label} output {k}: {got.dtype}{list(got.shape)} vs "
                    f"interpreter {want.dtype}{list(want.shape)}"
                )
                continue
            bad = ~(
                (got == want) | (np.isnan(got) & np.isnan(want))
                if got.dtype.kind == "f"
                else got == want
            )
            tol = _compiled_tolerance(op, s, want) if got.dtype.kind == "f" else 0.0
            if tol:
                with np.errstate(invalid="ignore"):
                    bad &= ~(np.abs(got.astype(np.float64) - want.astype(np.float64)) <= tol)
            if bad.any():
                pos = tuple(int(i) for i in np.argwhere(bad)[0])
                failures.append(
                    f"{s.label} output {k}: {int(bad.sum())}/{bad.size} differ, "
                    f"first at {pos}: compiled {got[pos]!r} vs interpreter "
                    f"{want[pos]!r}"
                )
    assert not failures, f"{op.name}: compiled != interpreter\n" + "\n".join(failures)


# --- a multi-node graph through qc.compile ---------------------------------------------------


def _qrq_graph() -> Graph:
    """x f32 -> quantize(u8) -> requantize(i8, per-tensor) -> dequantize -> f32, plus the i8."""
    b = Builder("qrq")
    x = b.input("x", TensorType((3, 40), f32))
    q = b.op("quantize", [x], QuantizeAttrs(u8, QParams.per_tensor(0.02, 131)))
    r = b.op("requantize", [q], QuantizeAttrs(i8, QParams.per_tensor(0.05, -7)), name="r")
    d = b.op("dequantize", [r], name="y")
    return b.finish(d, r)


def _qrq_input() -> np.ndarray:
    x = (np.random.default_rng(1).standard_normal((3, 40)) * 2).astype(np.float32)
    x[0, :6] = [0.0, 0.01, -0.03, 1e9, -1e9, 0.05]  # ties at the scale, saturation
    return x


def test_multi_node_graph_compiles_and_matches() -> None:
    g = _qrq_graph()
    x = _qrq_input()
    cm = qc.compile(g, target="host", opt_level=1)  # one kernel per node
    y, r = cm(x)
    ref_y, ref_r = qc.interpret(g, x)
    np.testing.assert_array_equal(r, ref_r)
    np.testing.assert_array_equal(y, ref_y)
    assert [io.name for io in cm.output_info] == ["y", "r"]
    assert cm.output_info[1].qdtype == "qint8" and cm.output_info[1].qparams is not None
    names = [k["name"] for k in cm.kernels]
    assert names == ["quantize_3x40_u8", "requantize_3x40_i8", "dequantize_3x40_f32"]


@pytest.mark.parametrize("opt_level", [0, 1, 2])
def test_opt_levels_agree(opt_level: int) -> None:
    g = _qrq_graph()
    x = _qrq_input()
    res = build(g, opt_level=opt_level, strict_schedules=True)
    want = qc.interpret(g, x)
    for got, ref in zip(res.module(x), want):
        np.testing.assert_array_equal(got, ref)
    rules = {kf.rule for kf in res.lowered.funcs}
    assert rules == ({None} if opt_level == 0 else {"generic_injective"})


def test_identical_kernels_are_shared() -> None:
    b = Builder("twice")
    xs = [b.input(f"x{k}", TensorType((4, 16), f32)) for k in range(2)]
    qa = QuantizeAttrs(u8, QParams.per_tensor(0.1, 3))
    outs = [b.op("quantize", [x], qa) for x in xs]
    outs.append(b.op("quantize", [xs[0]], QuantizeAttrs(u8, QParams.per_tensor(0.2, 3))))
    g = b.finish(*outs)
    res = build(g)
    assert [(kf.name, kf.calls) for kf in res.lowered.funcs] == [
        ("quantize_4x16_u8", 2),
        ("quantize_4x16_u8_1", 1),
    ]
    x0, x1 = (
        np.random.default_rng(k).standard_normal((4, 16)).astype(np.float32) for k in range(2)
    )
    for got, want in zip(res.module(x0, x1), qc.interpret(g, x0, x1)):
        np.testing.assert_array_equal(got, want)


def test_per_channel_and_graph_constants() -> None:
    """Per-axis qparams become kernel constants; graph constants feed kernels as relax.const."""
    b = Builder("consts")
    x = b.input("x", TensorType((2, 3, 17), f32))
    w = b.const(np.linspace(-3, 3, 2 * 3 * 17, dtype=np.float32).reshape(2, 3, 17), name="w")
    qp = QParams.per_axis([0.01, 0.5, 3.0], [0, 100, 255], 1)
    outs = [b.op("quantize", [v], QuantizeAttrs(u8, qp)) for v in (x, w)]
    dq = b.op("dequantize", [outs[0]])
    g = b.finish(dq, outs[1])
    xv = (np.random.default_rng(3).standard_normal((2, 3, 17)) * 50).astype(np.float32)
    cm = qc.compile(g)
    for got, want in zip(cm(xv), qc.interpret(g, xv)):
        np.testing.assert_array_equal(got, want)


# --- export -> load -> run in a fresh process --------------------------------------------------

_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import qcompiler.runtime as rt
    art, xin, out = sys.argv[1:4]
    m = rt.load(art)
    outs = m(np.load(xin))
    np.savez(out, *outs)
    print(json.dumps({"modules": sorted(k for k in sys.modules if k.startswith("qcompiler."))}))
""")


def test_export_load_in_fresh_process(tmp_path) -> None:
    g = _qrq_graph()
    x = _qrq_input()
    cm = qc.compile(g)
    here = cm(x)
    art = cm.export(tmp_path / "model")
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(qc.__file__)), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(art),
            str(tmp_path / "x.npy"),
            str(tmp_path / "out.npz"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = np.load(tmp_path / "out.npz")
    there = [loaded[f"arr_{k}"] for k in range(len(loaded.files))]
    assert len(there) == len(here)
    for a, b in zip(here, there):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    # the deployment side needs no compiler code
    mods = json.loads(proc.stdout.strip().splitlines()[-1])["modules"]
    compiler_mods = [
        m
        for m in mods
        if m.split(".")[1] in ("lowering", "codegen", "driver", "passes", "frontends")
    ]
    assert not compiler_mods, compiler_mods


# --- errors ----------------------------------------------------------------------------------


def test_unknown_target_is_a_clear_error() -> None:
    with pytest.raises(TargetError, match="unknown target 'x86-avx1024'.*valid targets"):
        qc.compile(_qrq_graph(), target="x86-avx1024")


def test_wrong_shape_input_at_call_time() -> None:
    cm = qc.compile(_qrq_graph())
    with pytest.raises(InputError, match=r"input 'x': expected shape \[3, 40\], got \[3, 41\]"):
        cm(np.zeros((3, 41), np.float32))
    with pytest.raises(InputError, match="expected dtype float32"):
        cm(np.zeros((3, 40), np.float64))


def test_bad_compile_arguments() -> None:
    g = _qrq_graph()
    with pytest.raises(QCompilerError, match="opt_level must be"):
        qc.compile(g, opt_level=7)
    with pytest.raises(QCompilerError, match="num_threads must be"):
        qc.compile(g, num_threads=0)
    with pytest.raises(QCompilerError, match="compile takes a qcompiler Graph"):
        qc.compile(object())
    with pytest.raises(InputError, match="expected shape"):
        qc.compile(g, example_inputs=np.zeros((2, 2), np.float32))


def test_lowering_error_names_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    unlowered = next((op for op in OPS if not _has_lower(op)), None)
    if unlowered is None:  # every op is lowered: take one's lower() away for this test
        unlowered = get_op("qnn.relu")
        monkeypatch.setattr(type(unlowered), "lower", OpDef.lower)
    sample = next(iter(unlowered.samples(_rng(unlowered.name))))
    g = single_op_graph(unlowered, sample)
    with pytest.raises(LoweringError, match=rf"{unlowered.name}.*no lowering.*\n  in node:"):
        qc.compile(g)


def test_i32_storage_roundtrip_through_compile() -> None:
    """qint32 paths: q_val quantize (float32 zero point) and the wrapping dequantize."""
    b = Builder("i32")
    x = b.input("x", TensorType((64,), f32))
    q = b.op("quantize", [x], QuantizeAttrs(i32, QParams.per_tensor(1.0, 2**31 - 5)))
    g = b.finish(b.op("dequantize", [q]), q)
    xv = np.concatenate(
        [
            np.arange(-8, 8, dtype=np.float32),
            np.array([np.nan, np.inf, -np.inf, 3e9, -3e9, 2.5, -2.5, 0.5], np.float32),
            np.random.default_rng(0).standard_normal(40).astype(np.float32) * 1e6,
        ]
    )
    cm = qc.compile(g)
    for got, want in zip(cm(xv), qc.interpret(g, xv)):
        np.testing.assert_array_equal(got, want)


def test_compile_torch_model() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("qcompiler.frontends")
    import torch.ao.nn.quantized as nnq

    m = torch.nn.Sequential(nnq.Quantize(0.05, 7, torch.quint8), nnq.DeQuantize()).eval()
    x = torch.randn(2, 8) * 3
    x[0, :3] = torch.tensor([0.025, -0.075, 100.0])  # ties and saturation
    cm = qc.compile(m, (x,))
    y = cm(x)
    assert isinstance(y, torch.Tensor)
    assert torch.equal(y, m(x))
    assert cm.input_info[0].torch_input == "float"
    with pytest.raises(QCompilerError, match="needs example_inputs"):
        qc.compile(m)


def test_rank0_inputs_outputs_and_constants() -> None:
    """Regression: np.ascontiguousarray turns 0-d arrays into 1-d (inputs, consts, outputs)."""
    b = Builder("scalar")
    x = b.input("x", TensorType((), f32))
    c = b.const(np.array(2.5, np.float32), name="c")
    qa = QuantizeAttrs(u8, QParams.per_tensor(0.5, 10))
    g = b.finish(b.op("quantize", [x], qa), b.op("quantize", [c], qa))
    cm = qc.compile(g)
    xv = np.array(-1.25, np.float32)
    for got, want in zip(cm(xv), qc.interpret(g, xv)):
        assert got.shape == () and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
