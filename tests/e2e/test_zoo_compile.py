"""Every zoo model compiles and its compiled output equals the reference interpreter exactly;
export -> load in a fresh process gives identical outputs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tvm")

import qcompiler as qc  # noqa: E402
from qcompiler.testing.zoo import ZOO, quantized  # noqa: E402

# one flow per model keeps CI time down; the import tests cover every flow
CASES = [(name, next(f for f in e.flows if f != "pt2e")) for name, e in ZOO.items()]


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("name,flow", CASES, ids=[n for n, _ in CASES])
def test_zoo_model_compiles_exactly(name, flow):
    model, inputs = quantized(name, flow)
    graph = qc.from_torch(model, inputs)
    cm = qc.compile(graph)
    ours = _tuple(cm(*[x.numpy() for x in inputs]))
    ref = _tuple(qc.interpret(graph, *inputs))
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)


def test_exported_artifact_runs_identically_in_a_fresh_process(tmp_path):
    model, inputs = quantized("resnet18", "eager")
    cm = qc.compile(model, inputs)
    expected = cm(inputs[0]).numpy()
    path = cm.export(tmp_path / "resnet18.qc")
    np.save(tmp_path / "x.npy", inputs[0].numpy())
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from qcompiler.runtime import load
        cm = load({str(path)!r})
        np.save({str(tmp_path / 'y.npy')!r}, cm(np.load({str(tmp_path / 'x.npy')!r})))
        assert not any(m.startswith(("qcompiler.ir", "qcompiler.lowering", "qcompiler.ops"))
                       for m in sys.modules), "the runtime imported compiler code"
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)
