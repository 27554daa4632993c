"""DCE, CSE and constant folding: golden IR, exact semantics, idempotence, pipeline errors."""

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given

from qcompiler.errors import QCompilerError
from qcompiler.ir import Builder, QParams, TensorType, ftype, i8, parse, print_graph, u8, verify
from qcompiler.ops.quant import QuantizeAttrs
from qcompiler.passes import (CommonSubexpressionElimination, DeadCodeElimination,
                              FoldConstants, Pass, PassError, Pipeline)
from qcompiler.reference.interpreter import interpret
from qcompiler.testing.golden import check_golden
from qcompiler.testing.strategies import graphs

GOLDEN = Path(__file__).parent / "golden"
BASIC = [DeadCodeElimination(), CommonSubexpressionElimination(), FoldConstants()]


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def sample_graph():
    b = Builder()
    x = b.input("x", ftype([2, 4]))
    qa = QuantizeAttrs(u8, QParams.per_tensor(0.05, 128))
    q1 = b.op("quantize", [x], qa, name="q1")
    q2 = b.op("quantize", [x], qa, name="q2")          # same as q1: CSE
    _dead = b.op("requantize", [q2], QuantizeAttrs(i8, QParams.per_tensor(0.1, 0)),
                 name="dead")                          # unused: DCE
    w = b.const(np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4), name="w")
    wq = b.op("quantize", [w], QuantizeAttrs(i8, QParams.per_tensor(0.01, 0)), name="wq")
    wd = b.op("dequantize", [wq], name="wd")           # const chain: folded
    d1 = b.op("dequantize", [q1], name="d1")
    d2 = b.op("dequantize", [q2], name="d2")
    return b.finish(d1, d2, wd)


@pytest.mark.parametrize("p", BASIC, ids=lambda p: p.name)
def test_golden(p):
    g = sample_graph()
    check_golden(GOLDEN / f"{p.name}.before.qir", print_graph(g))
    assert p.run(g)
    verify(g)
    check_golden(GOLDEN / f"{p.name}.after.qir", print_graph(g))
    assert parse(print_graph(g), g.constants) == g


@pytest.mark.parametrize("p", BASIC, ids=lambda p: p.name)
@given(gi=graphs())
def test_pass_preserves_semantics_and_is_idempotent(p, gi):
    g, inputs = gi
    before = _tuple(interpret(g, *inputs))
    p.run(g)
    verify(g)
    after = _tuple(interpret(g, *inputs))
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert not p.run(g), f"{p.name} changed the graph on its second run"


def test_pipeline_prints_and_records():
    out = io.StringIO()
    pl = Pipeline(BASIC, verify_each=True, print_after=["cse"], out=out)
    g = pl.run(sample_graph())
    assert "// ----- IR after cse -----" in out.getvalue()
    assert [r.name for r in pl.history] == ["dce", "cse", "fold-constants"]
    assert len(g.nodes) < len(sample_graph().nodes)


class _Breaks(Pass):
    name = "breaks-types"

    def run(self, graph):
        graph.nodes[-1].outputs[0].type = ftype([9])
        return True


class _Raises(Pass):
    name = "raises"

    def run(self, graph):
        raise QCompilerError("boom")


def test_pipeline_reports_failing_pass_and_history():
    with pytest.raises(PassError, match=r"after pass breaks-types \(ran \['dce', 'breaks-types'\]\)"):
        Pipeline([DeadCodeElimination(), _Breaks()], verify_each=True).run(sample_graph())
    with pytest.raises(PassError, match=r"failed in pass raises after \['dce'\]: boom"):
        Pipeline([DeadCodeElimination(), _Raises()]).run(sample_graph())


def test_fold_respects_size_cap():
    b = Builder()
    w = b.const(np.ones((4, 4), np.float32), name="w")
    g = b.finish(b.op("quantize", [w], QuantizeAttrs(u8, QParams.per_tensor(0.5, 0))))
    assert not FoldConstants(max_elements=8).run(g)
    assert FoldConstants().run(g)
    assert [n.op for n in g.nodes] == ["const"]
    assert g.outputs[0].type == TensorType((4, 4), u8, QParams.per_tensor(0.5, 0))
