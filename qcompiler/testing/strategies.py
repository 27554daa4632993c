"""Hypothesis strategies: random qparams and random well-typed graphs over the registry."""

from __future__ import annotations

import zlib

import numpy as np
from hypothesis import strategies as st

from qcompiler.ir.builder import Builder
from qcompiler.ir.graph import Graph, Value
from qcompiler.ir.registry import OpSample, all_ops
from qcompiler.ir.types import DType, QParams, i8, i32, u8

scales = st.floats(1e-6, 1e2, allow_nan=False, allow_infinity=False)


@st.composite
def qparams(draw: st.DrawFn, per_axis_len: int | None = None) -> tuple[DType, QParams]:
    """A quantized dtype and qparams valid for it (zero points anywhere in its range)."""
    dtype = draw(st.sampled_from([u8, i8, i32]))
    zps = st.integers(dtype.qmin, dtype.qmax)
    if per_axis_len is None:
        return dtype, QParams.per_tensor(draw(scales), draw(zps))
    return dtype, QParams.per_axis([draw(scales) for _ in range(per_axis_len)],
                                   [draw(zps) for _ in range(per_axis_len)], 0)


_SAMPLE_CACHE: dict[str, list[OpSample]] = {}


def _samples(name: str) -> list[OpSample]:
    if name not in _SAMPLE_CACHE:
        op = next(o for o in all_ops() if o.name == name)
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        _SAMPLE_CACHE[name] = list(op.samples(rng))[:12]
    return _SAMPLE_CACHE[name]


@st.composite
def graphs(draw: st.DrawFn, max_nodes: int = 6) -> tuple[Graph, list[np.ndarray]]:
    """A random graph built from registered ops' samples, plus inputs to run it on.

    Each step picks an op and one of its samples; each operand reuses an existing value of the
    same type when one exists (and the draw says so), else becomes a new graph input or a
    small constant. Well-typed by construction: the Builder infers every type.
    """
    names = sorted(o.name for o in all_ops() if o.name != "const" and _samples(o.name))
    b = Builder("g")
    pool: list[Value] = []
    inputs: list[np.ndarray] = []
    produced: list[Value] = []
    for _ in range(draw(st.integers(1, max_nodes))):
        name = draw(st.sampled_from(names))
        sample = draw(st.sampled_from(_samples(name)))
        operands: list[Value] = []
        for k, (ty, arr) in enumerate(zip(sample.in_types, sample.arrays)):
            same = [v for v in pool if v.type == ty]
            if same and draw(st.booleans()):
                operands.append(draw(st.sampled_from(same)))
            elif arr.size <= 64 and draw(st.booleans()):
                operands.append(b.const(arr, ty, f"c{len(b.graph.constants)}"))
            else:
                v = b.input(f"in{len(inputs)}", ty)
                inputs.append(arr)
                operands.append(v)
                pool.append(v)
        out = b.op(name, operands, sample.attrs, loc=f"step{len(produced)}")
        outs = out if isinstance(out, tuple) else (out,)
        pool.extend(outs)
        produced.extend(outs)
    k = draw(st.integers(1, min(3, len(produced))))
    return b.finish(*produced[-k:]), inputs
