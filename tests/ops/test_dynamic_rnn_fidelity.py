"""Recurrent dynamic ops against PyTorch over sequences of 20+ steps: enforce the documented bound.

The linears and sigmoid are bit-exact and tanh is within 1 ulp (see qcompiler/ops/dynamic.py),
so differences can only build up through the recurrence. These runs measure the worst absolute
difference of y, h_n, c_n over long sequences and assert it stays within `RNN_ABS_TOL`
(the ops' `max_lsb`, an absolute float tolerance).
"""

import numpy as np
import pytest

from qcompiler.ir.registry import OpSample, Sig, get_op
from qcompiler.ir.types import f16
from qcompiler.ops import dynamic as D

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def _run(op, sample):
    """(reference outputs, PyTorch outputs), each a tuple."""
    out_types = op.infer_types(sample.attrs, sample.in_types)
    sig = Sig(sample.in_types, out_types, sample.attrs)
    ours, theirs = op.reference(sig, *sample.arrays), op.torch_reference(sample, sig)
    return ((ours if isinstance(ours, tuple) else (ours,)),
            tuple(np.asarray(t) for t in (theirs if isinstance(theirs, tuple) else (theirs,))))


CONFIGS = [  # (op, T, B, I, attrs, weights, with state, per-channel)
    ("qnn.lstm", 24, 3, 8, D.RNNAttrs(16), "i8", True, True),
    ("qnn.lstm", 30, 2, 5, D.RNNAttrs(33, bidirectional=True), "i8", False, False),
    ("qnn.lstm", 20, 2, 6, D.RNNAttrs(8, num_layers=2, batch_first=True), "f16", True, False),
    ("qnn.lstm", 40, 1, 4, D.RNNAttrs(40, reduce_range=False), "i8", True, False),
    ("qnn.gru", 24, 3, 8, D.RNNAttrs(16), "i8", True, False),
    ("qnn.gru", 30, 2, 5, D.RNNAttrs(33, num_layers=2, bidirectional=True), "i8", True, True),
    ("qnn.gru", 20, 4, 6, D.RNNAttrs(8), "f16", False, False),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c[0]}-T{c[1]}-H{c[4].hidden_size}-{c[5]}")
def test_long_sequences_within_bound(cfg):
    name, t_len, batch, in_size, attrs, kind, with_state, pc = cfg
    op = get_op(name)
    rng = np.random.default_rng(t_len * 1000 + attrs.hidden_size)
    sample = op.make_sample(rng, t_len, batch, in_size, attrs, kind, with_state, pc, "long")
    ours, theirs = _run(op, sample)
    for a, b in zip(ours, theirs):
        worst = float(np.abs(a.astype(np.float64) - b).max())
        assert worst <= D.RNN_ABS_TOL, f"{name}: max |diff| {worst} > {D.RNN_ABS_TOL}"


@pytest.mark.parametrize("name, kind, nl", [("qnn.lstm_cell", "i8", "tanh"),
                                            ("qnn.gru_cell", "f16", "tanh"),
                                            ("qnn.rnn_cell", "i8", "tanh"),
                                            ("qnn.rnn_cell", "i8", "relu")])
def test_cells_chained_for_20_steps(name, kind, nl):
    """Feed each cell's state back into itself for 20 steps, ours and PyTorch's separately."""
    op = get_op(name)
    rng = np.random.default_rng(7)
    base = next(s for s in op.samples(rng) if len(s.arrays) > 5 and
                (s.in_types[-4].dtype is f16) == (kind == "f16"))
    n_state = 2 if name == "qnn.lstm_cell" else 1
    ours_state = theirs_state = base.arrays[1:1 + n_state]
    worst = 0.0
    for _ in range(20):
        x = (rng.standard_normal(base.arrays[0].shape)).astype(np.float32)
        weights = base.arrays[1 + n_state:]
        attrs = D.RNNCellAttrs(nl)
        ours, _ = _run(op, OpSample(attrs, base.in_types, (x, *ours_state, *weights)))
        _, theirs = _run(op, OpSample(attrs, base.in_types, (x, *theirs_state, *weights)))
        for a, b in zip(ours, theirs):
            worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()))
        ours_state, theirs_state = ours, theirs
    assert worst <= D.RNN_ABS_TOL, f"{name}: max |diff| {worst} over 20 chained steps"
