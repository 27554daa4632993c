"""The verifier and the builder reject ill-typed graphs with messages that name the node."""

import numpy as np
import pytest

from qcompiler.errors import InterpretError, TypeInferenceError, VerifyError
from qcompiler.ir import Builder, QParams, TensorType, f32, ftype, i8, qtype, u8, verify
from qcompiler.ir.registry import ConstAttrs, NoAttrs, get_op
from qcompiler.ops.quant import QuantizeAttrs
from qcompiler.reference.interpreter import interpret


def small_graph():
    b = Builder()
    x = b.input("x", ftype([2, 3]))
    q = b.op("quantize", [x], QuantizeAttrs(u8, QParams.per_tensor(0.1, 3)), loc="quant")
    d = b.op("dequantize", [q], loc="dequant")
    return b.finish(d)


def test_valid_graph_verifies():
    verify(small_graph())


def test_wrong_stored_type_names_node_and_types():
    g = small_graph()
    node = g.nodes[1]
    node.outputs[0].type = ftype([3, 2])
    with pytest.raises(VerifyError) as e:
        verify(g)
    msg = str(e.value)
    assert "dequantize output 0 has type f32[3,2]" in msg
    assert "type rule gives f32[2,3]" in msg
    assert "in node: %" in msg and "(from dequant)" in msg


def test_ill_typed_input_reported_with_op_name():
    g = small_graph()
    # feed the float graph input straight into dequantize
    g.set_input(g.nodes[1], 0, g.inputs[0])
    with pytest.raises(VerifyError, match=r"dequantize: dequantize takes a quantized tensor, got f32\[2,3\]"):
        verify(g)


def test_use_before_definition():
    g = small_graph()
    g.nodes.reverse()
    with pytest.raises(VerifyError, match="used before it is defined"):
        verify(g)


def test_unknown_op_is_named():
    g = small_graph()
    g.nodes[1].op = "qnn.dequantise"
    with pytest.raises(VerifyError, match=r"unknown op 'qnn.dequantise'"):
        verify(g)


def test_wrong_attrs_class():
    g = small_graph()
    g.nodes[0].attrs = NoAttrs()
    with pytest.raises(VerifyError, match="op quantize takes attrs QuantizeAttrs, got NoAttrs"):
        verify(g)


def test_missing_constant_data():
    b = Builder()
    w = b.const(np.zeros((4,), np.int8), TensorType((4,), i8, QParams.per_tensor(1.0, 0)), "w")
    g = b.finish(b.op("dequantize", [w]))
    g.constants.clear()
    with pytest.raises(VerifyError, match="constant data 'w' is missing"):
        verify(g)
    assert g.nodes[0].attrs == ConstAttrs("w")


def test_stale_use_list():
    g = small_graph()
    g.nodes[0].outputs[0].uses.clear()
    with pytest.raises(VerifyError, match="use list of input 0"):
        verify(g)


def test_no_outputs():
    g = small_graph()
    g.outputs = []
    with pytest.raises(VerifyError, match="has no outputs"):
        verify(g)


def test_builder_rejects_bad_input_with_context():
    b = Builder()
    x = b.input("x", qtype([2], u8, 0.1, 0))
    with pytest.raises(TypeInferenceError) as e:
        b.op("quantize", [x], QuantizeAttrs(u8, QParams.per_tensor(0.1, 3)), loc="model.quant")
    msg = str(e.value)
    assert msg.startswith("quantize(u8[2] q(0.1, 0)) at model.quant:")
    assert "takes a float32 tensor" in msg


def test_builder_rejects_unknown_op_and_bad_dtype():
    b = Builder()
    x = b.input("x", ftype([2]))
    with pytest.raises(VerifyError, match="unknown op 'quantise'; did you mean quantize"):
        b.op("quantise", [x])
    with pytest.raises(TypeInferenceError, match="output dtypes quint8"):
        b.op("quantize", [x], QuantizeAttrs(f32, QParams.per_tensor(0.1, 0)))
    with pytest.raises(VerifyError, match="takes 1 inputs, got 2"):
        b.op("dequantize", [x, x])


def test_qparams_and_types_validate():
    with pytest.raises(VerifyError, match="scale must be finite and > 0"):
        QParams.per_tensor(0.0, 0)
    with pytest.raises(VerifyError, match="2 scales but 1 zero points"):
        QParams((0.1, 0.2), (0,), 0)
    with pytest.raises(VerifyError, match="per-axis qparams have 2 scales but dimension 0"):
        TensorType((3, 4), i8, QParams.per_axis([0.1, 0.2], [0, 0], 0))
    with pytest.raises(VerifyError, match="dtype f32 cannot carry qparams"):
        TensorType((3,), f32, QParams.per_tensor(0.1, 0))
    with pytest.raises(VerifyError, match="unknown qscheme"):
        QParams.per_tensor(0.1, 0, "asymmetric")


def test_interpreter_rejects_bad_inputs():
    g = small_graph()
    with pytest.raises(InterpretError, match=r"input %x: expected shape \[2, 3\], got \[3, 2\]"):
        interpret(g, np.zeros((3, 2), np.float32))
    with pytest.raises(InterpretError, match="input %x: expected dtype float32"):
        interpret(g, np.zeros((2, 3), np.int8))
    with pytest.raises(InterpretError, match="takes 1 inputs, got 2"):
        interpret(g, np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(InterpretError, match="expected a numpy array or torch tensor, got list"):
        interpret(g, [[1, 2, 3], [4, 5, 6]])


def test_interpreter_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    g = small_graph()
    x = torch.randn(2, 3)
    out = interpret(g, x)
    np.testing.assert_array_equal(out, interpret(g, x.numpy()))
    b = Builder()
    xq = b.input("x", qtype([4], u8, 0.5, 2))
    g2 = b.finish(b.op("dequantize", [xq]))
    t = torch.quantize_per_tensor(torch.randn(4), 0.5, 2, torch.quint8)
    np.testing.assert_array_equal(interpret(g2, t), t.dequantize().numpy())
    wrong = torch.quantize_per_tensor(torch.randn(4), 0.25, 2, torch.quint8)
    with pytest.raises(InterpretError, match="qparams differ"):
        interpret(g2, wrong)


def test_registry_lookup():
    assert get_op("quantize").name == "quantize"
