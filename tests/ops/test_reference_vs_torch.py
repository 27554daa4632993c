"""Registry-driven: every op's reference equals the real PyTorch op on its samples.

Ops are found through `all_ops()`: a new op with `samples` and `torch_reference` is covered
without editing this file; one without them fails `test_every_op_has_samples`.
Exact equality, or the op's documented LSB bound (OpDef.max_lsb / OpSample.max_lsb).
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np
import pytest

from qcompiler.ir.registry import Sig, all_ops
from qcompiler.reference.interpreter import interpret
from qcompiler.testing.compare import diff, single_op_graph

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

OPS = [op for op in all_ops() if op.name != "const"]
FIDELITY: dict[str, dict[str, float]] = {}


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_every_op_has_samples(op):
    samples = list(op.samples(_rng(op.name)))
    assert samples, f"op {op.name} has no test samples: add a `samples` hook"


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_reference_matches_torch(op):
    failures = []
    worst, mism, total = 0.0, 0, 0
    for sample in op.samples(_rng(op.name)):
        g = single_op_graph(op, sample)
        ours = interpret(g, *sample.arrays)
        ours = ours if isinstance(ours, tuple) else (ours,)
        sig = Sig(sample.in_types, tuple(v.type for v in g.outputs), sample.attrs)
        theirs = op.torch_reference(sample, sig)
        theirs = theirs if isinstance(theirs, tuple) else (theirs,)
        bound = op.max_lsb if sample.max_lsb is None else sample.max_lsb
        for k, (a, b) in enumerate(zip(ours, theirs)):
            b = np.asarray(b)
            assert a.dtype == b.dtype or b.dtype == np.bool_, (
                f"{op.name}[{sample.label}] output {k}: dtype {a.dtype} vs PyTorch {b.dtype}")
            d = diff(a, b.astype(a.dtype, copy=False))
            worst, mism, total = max(worst, d.max_abs), mism + d.mismatches, total + d.total
            if d.max_abs > bound:
                failures.append(f"{sample.label} output {k}: max diff {d.max_abs} > bound {bound}"
                                f" ({d.mismatches}/{d.total} differ)")
    FIDELITY[op.name] = {"max_lsb": worst, "mismatch_rate": mism / max(total, 1),
                         "elements": total}
    assert not failures, f"{op.name} differs from PyTorch:\n" + "\n".join(failures)


def teardown_module(module):
    path = os.environ.get("QC_FIDELITY_OUT")
    if path and FIDELITY:
        with open(path, "w") as f:
            json.dump(FIDELITY, f, indent=1, sort_keys=True)
