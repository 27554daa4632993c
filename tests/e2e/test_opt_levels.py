"""The compiled output of every zoo model is unchanged by opt_level: exact.

Every pass keeps the reference interpreter's outputs bit for bit (tests/passes), and compiled
code equals the interpreter at every level; this checks the whole chain end to end.
opt_level 0 compiles the graph as given with naive loops, so its output is the interpreter's
on the unoptimized graph (tests/lowering/test_compiled_vs_interpreter.py); here the highest
level, 3 (on an AVX-512 VNNI host: prepacked weights and NCHW4c activations), is compared
with the interpreter on the imported graph for every model, and with a compiled opt_level 0
module for the small ones (naive loops are slow for the CNNs). Models whose opt_level 3
pipeline gives the same graph as opt_level 2 (no conv for the layout passes) are compiled
at opt_level 2 by test_zoo_compile.py already; only the graph identity is checked for them.
CI cost: two CNN compiles (~10-20 s each) and a few small ones.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tvm")

import qcompiler as qc
from qcompiler.ir.printer import print_graph
from qcompiler.passes.pipelines import optimize
from qcompiler.target import get_target
from qcompiler.testing.zoo import ZOO, quantized

CASES = [(name, next(f for f in e.flows if f != "pt2e")) for name, e in ZOO.items()]
SMALL = ("conv1d_net", "unet_like", "lstm")
"""Cheap enough to compile and run at opt_level 0 too."""

pytestmark = pytest.mark.tvm


def _tuple(x: object) -> tuple[np.ndarray, ...]:
    return x if isinstance(x, tuple) else (x,)  # type: ignore[return-value]


@pytest.mark.parametrize("name,flow", CASES, ids=[n for n, _ in CASES])
def test_opt_level_3_equals_the_unoptimized_graph(name: str, flow: str) -> None:
    model, inputs = quantized(name, flow)
    graph = qc.from_torch(model, inputs)
    host = get_target("host")
    if print_graph(optimize(graph, 3, host)) == print_graph(optimize(graph, 2, host)):
        return  # same graph as opt_level 2: test_zoo_compile.py compiles that one
    cm = qc.compile(graph, opt_level=3)
    ours = _tuple(cm(*[x.numpy() for x in inputs]))
    for a, b in zip(ours, _tuple(qc.interpret(graph, *inputs)), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", SMALL)
def test_opt_level_0_and_3_compile_to_the_same_output(name: str) -> None:
    model, inputs = quantized(name, next(f for f in ZOO[name].flows if f != "pt2e"))
    graph = qc.from_torch(model, inputs)
    xs = [x.numpy() for x in inputs]
    outs = [_tuple(qc.compile(graph, opt_level=lvl)(*xs)) for lvl in (0, 3)]
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)
