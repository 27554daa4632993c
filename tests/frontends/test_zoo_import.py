"""Every zoo model, quantized with PyTorch's own flows, imports and interprets like PyTorch.

Quantized outputs (and everything computed by quantized ops) must equal PyTorch exactly;
models whose last ops are float (dynamic-quantized encoders, float heads) are compared within
the float ops' documented bound (docs/ops.md: at most a few float32 ulps; 1e-5 relative here).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qcompiler as qc  # noqa: E402
from qcompiler.testing.zoo import ZOO, quantized  # noqa: E402

CASES = [(name, flow) for name, e in ZOO.items() for flow in e.flows if flow != "pt2e"]
FLOAT_TAIL = {"bert_like", "embedding_bag"}  # final ops are float (f.layer_norm, f.linear)


def _first(x):
    return x[0] if isinstance(x, tuple) else x


@pytest.mark.parametrize("name,flow", CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_zoo_model_imports_and_matches_pytorch(name, flow):
    model, inputs = quantized(name, flow)
    graph = qc.from_torch(model, inputs)
    ours = _first(qc.interpret(graph, *inputs))
    ref = _first(model(*inputs)).detach().numpy()
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    if name in FLOAT_TAIL:
        tol = 1e-5 * max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(ours, ref, rtol=0, atol=tol)
    else:
        np.testing.assert_array_equal(ours, ref)


def test_printed_ir_has_source_locations():
    model, inputs = quantized("conv1d_net", "eager")
    text = str(qc.from_torch(model, inputs))
    assert 'qnn.conv1d_relu(' in text and 'loc("c1.0")' in text
    assert 'loc("fc")' in text


def test_fx_and_eager_import_the_same_ops():
    e = qc.from_torch(*quantized("resnet18", "eager"))
    f = qc.from_torch(*quantized("resnet18", "fx"))
    ops = lambda g: {k: v for k, v in g.op_counts().items() if k.startswith("qnn.")}  # noqa: E731
    assert ops(e)["qnn.conv2d_relu"] == ops(f)["qnn.conv2d_relu"]
    assert ops(e).get("qnn.add_relu") == ops(f).get("qnn.add_relu") == 8
