"""Text and JSON round trips: parse(print(g)) == g on random graphs over the registry."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from qcompiler.ir import Graph, QParams, TensorType, i8, parse, print_graph, u8, verify
from qcompiler.ir.builder import Builder
from qcompiler.ir.serialize import load, save
from qcompiler.reference.interpreter import interpret
from qcompiler.testing.strategies import graphs, qparams


@given(graphs())
def test_print_parse_roundtrip(gi):
    g, _ = gi
    verify(g)
    text = print_graph(g)
    g2 = parse(text, g.constants)
    verify(g2)
    assert g2 == g
    assert print_graph(g2) == text  # printing is deterministic


@given(graphs())
def test_parsed_graph_computes_the_same(gi):
    g, inputs = gi
    g2 = parse(print_graph(g), g.constants)
    for a, b in zip(_tuple(interpret(g, *inputs)), _tuple(interpret(g2, *inputs))):
        np.testing.assert_array_equal(a, b)


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


@given(qparams(), st.integers(1, 4))
def test_qparams_text_roundtrip(dq, n):
    dtype, qp = dq
    b = Builder()
    x = b.input("x", TensorType((n, 3), dtype, qp))
    g = b.finish(b.op("dequantize", [x]))
    assert parse(print_graph(g)) == g


def test_per_axis_and_scheme_roundtrip():
    b = Builder()
    qp = QParams.per_axis([0.5, 1e-6, 3.25], [0, 0, 0], 1, "symmetric")
    x = b.input("x", TensorType((2, 3), i8, qp))
    g = b.finish(b.op("dequantize", [x], loc="model.layer1.0"))
    text = print_graph(g)
    assert "axis=1, symmetric" in text and 'loc("model.layer1.0")' in text
    assert parse(text) == g


def test_large_constant_needs_store_and_digest_checked():
    b = Builder()
    w = b.const(np.arange(100, dtype=np.int8).reshape(10, 10),
                TensorType((10, 10), i8, QParams.per_tensor(0.1, 0)), "w")
    g = b.finish(b.op("dequantize", [w]))
    text = print_graph(g)
    assert "sha256:" in text
    assert parse(text, g.constants) == g
    import pytest

    from qcompiler.errors import ParseError
    with pytest.raises(ParseError, match="not in the constant store"):
        parse(text)
    bad = {"w": g.constants["w"] + 1}
    with pytest.raises(ParseError, match="does not match its digest"):
        parse(text, bad)


@given(graphs())
def test_json_npz_roundtrip(tmp_path_factory, gi):
    g, _ = gi
    p = tmp_path_factory.mktemp("ir") / "g.qir.json"
    save(g, p)
    assert load(p) == g


def test_json_rejects_tampered_constant(tmp_path):
    import pytest

    from qcompiler.errors import SerializationError
    b = Builder()
    w = b.const(np.arange(100, dtype=np.int8), TensorType((100,), i8, QParams.per_tensor(1.0, 0)),
                "w")
    g = b.finish(b.op("dequantize", [w]))
    p = save(g, tmp_path / "g.json")
    np.savez(tmp_path / "g.npz", w=np.zeros(100, np.int8))
    with pytest.raises(SerializationError, match="checksum"):
        load(p)
    (tmp_path / "g.json").write_text('{"format": "other"}')
    with pytest.raises(SerializationError, match="not a qcompiler IR file"):
        load(p)


def test_graph_equality_sees_differences():
    def make(scale):
        b = Builder()
        x = b.input("x", TensorType((2,), u8, QParams.per_tensor(scale, 3)))
        return b.finish(b.op("dequantize", [x]))
    assert make(0.5) == make(0.5)
    assert make(0.5) != make(0.25)
    assert isinstance(make(0.5), Graph)
