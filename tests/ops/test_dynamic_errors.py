"""Dynamic-quantization and fake-quantization ops reject bad inputs and attrs with clear errors.

Every message names the op and says what is supported; nothing raises a bare KeyError,
IndexError or numpy error.
"""

import numpy as np
import pytest

from qcompiler.errors import InterpretError, TypeInferenceError, VerifyError
from qcompiler.ir import Builder, QParams, TensorType, f16, ftype, i8, qtype, u8
from qcompiler.ops.dynamic import LinearDynamicAttrs, LinearDynamicFp16Attrs, RNNAttrs, RNNCellAttrs
from qcompiler.ops.fake_quant import FakeQuantPerChannelAttrs, FakeQuantPerTensorAttrs
from qcompiler.reference.interpreter import interpret

W_I8 = qtype([4, 3], i8, 0.02, 0, "symmetric")
W_F16 = ftype([4, 3], f16)


def build(op, types, attrs=None):
    b = Builder()
    vals = [b.input(f"x{k}", t) for k, t in enumerate(types)]
    return b.op(op, vals, attrs)


def raises(match, op, types, attrs=None):
    with pytest.raises(TypeInferenceError, match=match) as e:
        build(op, types, attrs)
    assert str(e.value).startswith(op), str(e.value)


# --- qnn.linear_dynamic / qnn.linear_dynamic_fp16 ----------------------------------------------


def test_linear_dynamic_valid_and_output_type():
    y = build("qnn.linear_dynamic", [ftype([2, 5, 3]), W_I8, ftype([4])], LinearDynamicAttrs())
    assert y.type == ftype([2, 5, 4])
    y = build("qnn.linear_dynamic_fp16", [ftype([2, 3]), W_F16], LinearDynamicFp16Attrs(True))
    assert y.type == ftype([2, 4])


@pytest.mark.parametrize("w, match", [
    (qtype([4, 3], u8, 0.02, 3), r"weight must be qint8 \(i8 with per-tensor or per-channel"),
    (W_F16, r"weight must be qint8"),
    (ftype([4, 3]), r"weight must be qint8"),
    (TensorType((4, 3), i8, QParams.per_axis([0.1, 0.2, 0.3], [0, 0, 0], 1)),
     r"per channel along axis 1; only axis 0"),
    (TensorType((4, 3), i8, QParams.per_axis([0.1] * 4, [0.0] * 4, 0, "float_qparams")),
     r"float_qparams"),
    (qtype([4, 3, 1], i8, 0.02, 0), r"weight must be a 2-D \[out, in\] tensor"),
    (qtype([4, 5], i8, 0.02, 0), r"weight has 5 input columns, expected 3"),
])
def test_linear_dynamic_bad_weight(w, match):
    raises(match, "qnn.linear_dynamic", [ftype([2, 3]), w])


def test_linear_dynamic_fp16_rejects_int8_weight():
    raises(r"weight must be float16 \(f16, unquantized\)", "qnn.linear_dynamic_fp16",
           [ftype([2, 3]), W_I8])


@pytest.mark.parametrize("op, w", [("qnn.linear_dynamic", W_I8),
                                   ("qnn.linear_dynamic_fp16", W_F16)])
def test_linear_bad_input_and_bias(op, w):
    raises(r"input must be an unquantized float32 tensor", op, [qtype([2, 3], u8, 0.1, 3), w])
    raises(r"input must be an unquantized float32 tensor", op, [ftype([2, 3], f16), w])
    raises(r"input must have rank >= 2", op, [ftype([3]), w])
    raises(r"bias must have shape \[4\], got \[3\]", op, [ftype([2, 3]), w, ftype([3])])
    raises(r"bias must be an unquantized float32", op,
           [ftype([2, 3]), w, qtype([4], i8, 0.1, 0)])


def test_linear_arity_and_attrs_class():
    with pytest.raises(TypeInferenceError, match="takes 2 or 3 inputs, got 1"):
        build("qnn.linear_dynamic", [ftype([2, 3])])
    with pytest.raises(TypeInferenceError, match="takes attrs LinearDynamicAttrs, got"):
        build("qnn.linear_dynamic", [ftype([2, 3]), W_I8], LinearDynamicFp16Attrs())


# --- qnn.lstm / qnn.gru ---------------------------------------------------------------------


def lstm_types(t=3, b=2, i=3, h=4, layers=1, dirs=1, state=True, kind="i8", gates=4):
    types = [ftype([t, b, i])]
    if state:
        types += [ftype([layers * dirs, b, h])] * 2
    for layer in range(layers):
        in_l = i if layer == 0 else h * dirs
        for _ in range(dirs):
            for cols in (in_l, h):
                types.append(qtype([gates * h, cols], i8, 0.01, 0) if kind == "i8"
                             else ftype([gates * h, cols], f16))
            types += [ftype([gates * h])] * 2
    return types


def test_lstm_valid_output_types():
    y, h, c = build("qnn.lstm", lstm_types(layers=2, dirs=2),
                    RNNAttrs(4, num_layers=2, bidirectional=True))
    assert y.type == ftype([3, 2, 8]) and h.type == ftype([4, 2, 4]) and c.type == h.type
    y, h, c = build("qnn.lstm", lstm_types(state=False, kind="f16"), RNNAttrs(4))
    assert y.type == ftype([3, 2, 4])


def test_lstm_input_count_message():
    raises(r"qnn.lstm with num_layers=2, bidirectional=False takes x, optionally h0, c0, then 8"
           r" weights .*: 9 or 11 inputs, got 7", "qnn.lstm", lstm_types(), RNNAttrs(4, 2))


def test_lstm_bad_pieces():
    good = lstm_types()
    attrs = RNNAttrs(4)
    bad = list(good)
    bad[3] = qtype([12, 3], i8, 0.01, 0)
    raises(r"weight_ih_l0 has 12 output rows, expected 16", "qnn.lstm", bad, attrs)
    bad = list(good)
    bad[4] = ftype([16, 4], f16)
    raises(r"weights must be all qint8 or all float16", "qnn.lstm", bad, attrs)
    bad = list(good)
    bad[1] = ftype([1, 3, 4])
    raises(r"h0 must have shape \[1, 2, 4\], got \[1, 3, 4\]", "qnn.lstm", bad, attrs)
    bad = list(good)
    bad[0] = ftype([3, 3])
    raises(r"input x must be 3-D", "qnn.lstm", bad, attrs)
    bad = list(good)
    bad[0] = ftype([0, 2, 3])
    raises(r"input x must be non-empty", "qnn.lstm", bad, attrs)
    bad = list(good)
    bad[6] = ftype([15])
    raises(r"bias_hh_l0 must have shape \[16\]", "qnn.lstm", bad, attrs)
    raises(r"hidden_size and num_layers must be >= 1", "qnn.lstm", good, RNNAttrs(0))
    raises(r"weight_ih_l0 has 16 output rows, expected 20", "qnn.lstm",
           lstm_types(h=4, state=False), RNNAttrs(5))


def test_gru_uses_three_gates_and_one_state():
    y, h = build("qnn.gru", lstm_types(state=False, gates=3), RNNAttrs(4))
    assert h.type == ftype([1, 2, 4])
    types = lstm_types(gates=3)
    del types[2]  # one state tensor only
    y, h = build("qnn.gru", types, RNNAttrs(4))
    assert y.type == ftype([3, 2, 4])
    types[0] = ftype([2, 3, 3])  # batch_first: [B, T, I]
    y, h = build("qnn.gru", types, RNNAttrs(4, batch_first=True))
    assert y.type == ftype([2, 3, 4]) and h.type == ftype([1, 2, 4])
    raises(r"weight_ih_l0 has 16 output rows, expected 12", "qnn.gru",
           lstm_types(state=False), RNNAttrs(4))


# --- cells -----------------------------------------------------------------------------------


def cell_types(gates, state, b=2, i=3, h=4, kind="i8"):
    w = (lambda r, c: qtype([r, c], i8, 0.01, 0)) if kind == "i8" else (
        lambda r, c: ftype([r, c], f16))
    return ([ftype([b, i])] + [ftype([b, h])] * state
            + [w(gates * h, i), w(gates * h, h), ftype([gates * h]), ftype([gates * h])])


def test_cells_valid():
    h, c = build("qnn.lstm_cell", cell_types(4, 2))
    assert h.type == ftype([2, 4]) and c.type == ftype([2, 4])
    assert build("qnn.gru_cell", cell_types(3, 0, kind="f16")).type == ftype([2, 4])
    assert build("qnn.rnn_cell", cell_types(1, 1), RNNCellAttrs("relu")).type == ftype([2, 4])


def test_cell_errors():
    raises(r"takes x, optionally h, c, then w_ih, w_hh, b_ih, b_hh: 5 or 7 inputs, got 6",
           "qnn.lstm_cell", cell_types(4, 1))
    raises(r"5 or 6 inputs, got 7", "qnn.gru_cell", cell_types(3, 2))
    raises(r"nonlinearity must be 'tanh' or 'relu', got 'sigmoid'", "qnn.rnn_cell",
           cell_types(1, 1), RNNCellAttrs("sigmoid"))
    raises(r"nonlinearity must be only the default 'tanh', got 'relu'", "qnn.gru_cell",
           cell_types(3, 1), RNNCellAttrs("relu"))
    raises(r"weight_ih has 12 output rows, expected 16", "qnn.lstm_cell", cell_types(3, 2))
    mixed = cell_types(4, 0)
    mixed[2] = ftype([16, 4], f16)
    raises(r"weights must be both qint8 or both float16", "qnn.lstm_cell", mixed)
    bad = cell_types(1, 1)
    bad[1] = ftype([3, 4])
    raises(r"h must have shape \[2, 4\], got \[3, 4\]", "qnn.rnn_cell", bad)
    bad = cell_types(1, 0)
    bad[0] = ftype([2, 3, 1])
    raises(r"input x must be 2-D", "qnn.rnn_cell", bad)


# --- fake quantization -----------------------------------------------------------------------


@pytest.mark.parametrize("attrs, match", [
    (FakeQuantPerTensorAttrs(0.1, 0, 10, 5), r"quant_min \(10\) must be <= quant_max \(5\)"),
    (FakeQuantPerTensorAttrs(0.1, 300, 0, 255), r"zero_point 300 must be between quant_min"),
    (FakeQuantPerTensorAttrs(0.0, 0), r"scale must be a finite float > 0"),
    (FakeQuantPerTensorAttrs(-1.0, 0), r"scale must be a finite float > 0"),
    (FakeQuantPerTensorAttrs(float("inf"), 0), r"scale must be a finite float > 0"),
    (FakeQuantPerTensorAttrs(1e-50, 0), r"scale must be a finite float > 0 \(in float32\)"),
    (FakeQuantPerTensorAttrs(0.1, 1.5), r"zero_point must be an integer"),  # type: ignore
    (FakeQuantPerTensorAttrs(0.1, 0, 0, 2**40), r"quant_max must be an int32 integer"),
])
def test_fake_quant_per_tensor_bad_attrs(attrs, match):
    raises(match, "fake_quantize_per_tensor_affine", [ftype([2, 3])], attrs)


def test_fake_quant_bad_input():
    raises(r"takes an unquantized float32 tensor", "fake_quantize_per_tensor_affine",
           [qtype([2], u8, 0.1, 0)], FakeQuantPerTensorAttrs(0.1, 0))
    raises(r"takes an unquantized float32 tensor", "fake_quantize_per_channel_affine",
           [ftype([2], f16)], FakeQuantPerChannelAttrs((0.1, 0.1), (0, 0), 0))


@pytest.mark.parametrize("attrs, match", [
    (FakeQuantPerChannelAttrs((0.1, 0.2), (0, 0), 0),
     r"one scale and zero point per index of axis 0 \(3\), got 2 scales and 2 zero points"),
    (FakeQuantPerChannelAttrs((0.1,) * 3, (0,) * 3, 2), r"axis must be in \[0, 2\)"),
    (FakeQuantPerChannelAttrs((0.1,) * 3, (0,) * 3, -1), r"axis must be in \[0, 2\)"),
    (FakeQuantPerChannelAttrs((0.1, 0.0, 0.1), (0,) * 3, 0), r"channel 1 scale must be"),
    (FakeQuantPerChannelAttrs((0.1,) * 3, (0, 0, 200), 0), r"channel 2 zero_point 200 must be"),
])
def test_fake_quant_per_channel_bad_attrs(attrs, match):
    raises(match, "fake_quantize_per_channel_affine", [ftype([3, 4])], attrs)


# --- interpreter-level errors ----------------------------------------------------------------


def test_interpreter_rejects_wrong_arrays():
    b = Builder()
    x = b.input("x", ftype([2, 3]))
    w = b.const(np.ones((4, 3), np.int8), W_I8, "w")
    g = b.finish(b.op("qnn.linear_dynamic", [x, w], LinearDynamicAttrs()))
    with pytest.raises(InterpretError, match="expected dtype float32"):
        interpret(g, np.zeros((2, 3), np.float64))
    with pytest.raises(InterpretError, match=r"expected shape \[2, 3\]"):
        interpret(g, np.zeros((3, 3), np.float32))
    out = interpret(g, np.ones((2, 3), np.float32))
    assert out.shape == (2, 4) and out.dtype == np.float32


def test_wrong_arity_is_verify_error():
    with pytest.raises(VerifyError, match="takes 1 inputs, got 2"):
        build("fake_quantize_per_tensor_affine", [ftype([2]), ftype([2])],
              FakeQuantPerTensorAttrs(0.1, 0))


def test_non_finite_input_to_int8_dynamic_linear_is_a_clear_error():
    b = Builder()
    x = b.input("x", ftype([2, 3]))
    w = b.const(np.ones((4, 3), np.int8), W_I8, "w")
    g = b.finish(b.op("qnn.linear_dynamic", [x, w], LinearDynamicAttrs()))
    bad = np.ones((2, 3), np.float32)
    bad[0, 1] = np.nan
    with pytest.raises(InterpretError, match=r"qnn.linear_dynamic failed: .*inf or NaN"):
        interpret(g, bad)


def test_fake_quant_scale_overflowing_float32():
    raises(r"scale must be a finite float > 0 \(in float32\)", "fake_quantize_per_tensor_affine",
           [ftype([2])], FakeQuantPerTensorAttrs(1e300, 0))
