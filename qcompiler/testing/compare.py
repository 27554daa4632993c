"""Compare op outputs against PyTorch: exact, or within a documented LSB bound."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.ir.builder import Builder
from qcompiler.ir.graph import Graph
from qcompiler.ir.registry import OpDef, OpSample
from qcompiler.ir.verify import verify


def single_op_graph(op: OpDef, sample: OpSample) -> Graph:
    """A graph with one input per sample input and one application of `op`."""
    b = Builder(op.name.replace(".", "_"))
    xs = [b.input(f"x{k}", t) for k, t in enumerate(sample.in_types)]
    out = b.op(op.name, xs, sample.attrs)
    g = b.finish(*(out if isinstance(out, tuple) else (out,)))
    verify(g)
    return g


@dataclass
class Diff:
    """How far `ours` is from `theirs`: max |difference| in LSBs and the mismatch rate."""

    max_abs: float
    mismatches: int
    total: int

    @property
    def rate(self) -> float:
        return self.mismatches / self.total if self.total else 0.0


def diff(ours: np.ndarray, theirs: np.ndarray) -> Diff:
    if ours.shape != theirs.shape:
        raise AssertionError(f"shape mismatch: ours {ours.shape}, PyTorch {theirs.shape}")
    if ours.dtype == np.bool_ or theirs.dtype == np.bool_:
        bad = ours != theirs
        return Diff(float(bad.any()), int(bad.sum()), ours.size)
    a = ours.astype(np.float64)
    b = theirs.astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))  # equal infinities and NaNs agree
    with np.errstate(invalid="ignore"):
        d = np.where(same, 0.0, np.abs(a - b))
    d = np.nan_to_num(d, nan=np.inf)
    bad = d != 0
    return Diff(float(d.max()) if d.size else 0.0, int(bad.sum()), ours.size)
