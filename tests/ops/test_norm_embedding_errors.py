"""Normalization and embedding ops reject bad attributes and inputs with clear errors."""

import numpy as np
import pytest

from qcompiler.errors import InterpretError, TypeInferenceError, VerifyError
from qcompiler.ir import Builder, QParams, TensorType, f32, ftype, i8, i32, i64, qtype, u8
from qcompiler.ir.registry import NoAttrs, get_op
from qcompiler.ir.types import u4
from qcompiler.ops.embedding import QEmbeddingBagAttrs
from qcompiler.ops.norm import (
    QBatchNormAttrs,
    QGroupNormAttrs,
    QInstanceNormAttrs,
    QLayerNormAttrs,
)
from qcompiler.reference.interpreter import interpret

OUT = QParams.per_tensor(0.05, 128)
X4 = qtype([2, 6, 3, 5], u8, 0.1, 3)


def infer(op: str, attrs, *types):
    return get_op(op).infer_types(attrs, types)


def table(rows: int = 5, dim: int = 4, dtype=u8) -> TensorType:
    return TensorType((rows, dim), dtype,
                      QParams.per_axis([0.1] * rows, [2.5] * rows, 0, "float_qparams"))


# --- layer norm ----------------------------------------------------------------------------------


def test_layer_norm_normalized_shape_must_match_trailing_dims():
    with pytest.raises(TypeInferenceError, match=r"qnn.layer_norm: normalized_shape \[3, 4\] must"
                       r" equal the trailing dimensions of the input shape \[2, 6, 3, 5\]"):
        infer("qnn.layer_norm", QLayerNormAttrs((3, 4), OUT), X4)
    with pytest.raises(TypeInferenceError, match="must equal the trailing dimensions"):
        infer("qnn.layer_norm", QLayerNormAttrs((1, 2, 6, 3, 5), OUT), X4)


def test_layer_norm_weight_shape_and_bad_normalized_shape():
    w = ftype([3, 4])
    with pytest.raises(TypeInferenceError,
                       match=r"qnn.layer_norm: weight must have shape \[3, 5\]"
                             r" \(normalized_shape\), got \[3, 4\]"):
        infer("qnn.layer_norm", QLayerNormAttrs((3, 5), OUT), X4, w, w)
    with pytest.raises(TypeInferenceError, match="normalized_shape must be a non-empty tuple"):
        infer("qnn.layer_norm", QLayerNormAttrs((), OUT), X4)
    with pytest.raises(TypeInferenceError, match="non-empty tuple of positive ints"):
        infer("qnn.layer_norm", QLayerNormAttrs((0,), OUT), qtype([2, 0], u8, 0.1, 3))
    with pytest.raises(VerifyError, match="takes 1 or 3 inputs, got 2"):
        infer("qnn.layer_norm", QLayerNormAttrs((5,), OUT), X4, ftype([5]))


def test_layer_norm_input_and_output_qparams():
    with pytest.raises(TypeInferenceError, match=r"qnn.layer_norm: input must be a quantized"):
        infer("qnn.layer_norm", QLayerNormAttrs((5,), OUT), ftype([2, 5]))
    per_channel = TensorType((2, 5), i8, QParams.per_axis([0.1, 0.2], [0, 0], 0))
    with pytest.raises(TypeInferenceError, match="must have per-tensor qparams"):
        infer("qnn.layer_norm", QLayerNormAttrs((5,), OUT), per_channel)
    with pytest.raises(TypeInferenceError, match=r"output zero point 128 is outside the qint8"):
        infer("qnn.layer_norm", QLayerNormAttrs((5,), OUT), qtype([2, 5], i8, 0.1, 0))
    with pytest.raises(TypeInferenceError, match="qnn.layer_norm: eps must be >= 0"):
        infer("qnn.layer_norm", QLayerNormAttrs((5,), OUT, -1e-5), X4)
    with pytest.raises(TypeInferenceError, match="eps must be finite"):
        infer("qnn.layer_norm", QLayerNormAttrs((5,), OUT, float("nan")), X4)
    with pytest.raises(TypeInferenceError, match="weight must be an unquantized float32"):
        infer("qnn.layer_norm", QLayerNormAttrs((5,), OUT), X4,
              TensorType((5,), i64), TensorType((5,), i64))


# --- group norm / instance norm -----------------------------------------------------------------


def test_group_count_must_divide_channels():
    with pytest.raises(TypeInferenceError, match=r"qnn.group_norm: num_groups 4 must divide the"
                       r" number of channels 6 \(input \[2, 6, 3, 5\]\)"):
        infer("qnn.group_norm", QGroupNormAttrs(4, OUT), X4)
    with pytest.raises(TypeInferenceError, match="num_groups must be a positive int, got 0"):
        infer("qnn.group_norm", QGroupNormAttrs(0, OUT), X4)
    with pytest.raises(TypeInferenceError, match="num_groups must be a positive int, got True"):
        infer("qnn.group_norm", QGroupNormAttrs(True, OUT), X4)


def test_group_and_instance_norm_rank_and_params():
    for op, attrs in (("qnn.group_norm", QGroupNormAttrs(2, OUT)),
                      ("qnn.instance_norm", QInstanceNormAttrs(OUT))):
        with pytest.raises(TypeInferenceError, match=rf"{op}: input must have rank >= 3"):
            infer(op, attrs, qtype([2, 6], u8, 0.1, 3))
        with pytest.raises(TypeInferenceError,
                           match=rf"{op}: bias must have shape \[6\] \(one value per channel\)"):
            infer(op, attrs, X4, ftype([6]), ftype([3]))


# --- batch norm ----------------------------------------------------------------------------------


def test_batch_norm_rank_and_parameter_shapes():
    p = ftype([6])
    for op in ("qnn.batch_norm", "qnn.batch_norm_relu"):
        with pytest.raises(TypeInferenceError, match=rf"{op}: input must have rank 2..5"):
            infer(op, QBatchNormAttrs(OUT), qtype([6], u8, 0.1, 3), p, p, p, p)
        with pytest.raises(TypeInferenceError,
                           match=r"running_var must have shape \[6\] \(one value per channel\),"
                                 r" got \[5\]"):
            infer(op, QBatchNormAttrs(OUT), X4, p, p, p, ftype([5]))
        with pytest.raises(VerifyError, match="takes 5 inputs, got 3"):
            infer(op, QBatchNormAttrs(OUT), X4, p, p)
    with pytest.raises(TypeInferenceError,
                       match="qnn.batch_norm: out_qparams must be per-tensor QParams"):
        infer("qnn.batch_norm", QBatchNormAttrs(QParams.per_axis([1.0] * 6, [0] * 6, 0)),
              X4, p, p, p, p)


# --- embedding -----------------------------------------------------------------------------------


def test_embedding_weight_must_be_float_qparams_table():
    idx = TensorType((7,), i64)
    with pytest.raises(TypeInferenceError, match=r"qnn.embedding: weight qparams must be per-row"
                       r" float qparams \(scheme float_qparams, axis 0"):
        infer("qnn.embedding", NoAttrs(), qtype([5, 4], u8, 0.1, 3), idx)
    with pytest.raises(TypeInferenceError, match=r"weight must be a quantized quint8 \(u8\) or"
                       r" quint4x2 \(u4\) table"):
        infer("qnn.embedding", NoAttrs(), ftype([5, 4]), idx)
    with pytest.raises(TypeInferenceError, match="4-bit .* need an even embedding_dim"):
        infer("qnn.embedding", NoAttrs(), table(5, 3, u4), idx)


def test_embedding_indices_dtype_and_rank():
    with pytest.raises(TypeInferenceError,
                       match=r"qnn.embedding: indices must be int32 \(i32\) or int64 \(i64\)"):
        infer("qnn.embedding", NoAttrs(), table(), ftype([7]))
    with pytest.raises(TypeInferenceError, match=r"indices must be 1-D or 2-D, got \[2, 2, 2\]"):
        infer("qnn.embedding", NoAttrs(), table(), TensorType((2, 2, 2), i32))


def test_embedding_index_out_of_range_is_reported_when_run():
    b = Builder()
    w = b.input("w", table(5, 4))
    idx = b.input("idx", TensorType((3,), i64))
    g = b.finish(b.op("qnn.embedding", [w, idx]))
    q = np.zeros((5, 4), np.uint8)
    with pytest.raises(InterpretError, match=r"qnn.embedding: index 5 at position 1 is out of"
                       r" range for a table of 5 rows"):
        interpret(g, q, np.array([0, 5, 1], np.int64))
    with pytest.raises(InterpretError, match="index -1 at position 0 is out of range"):
        interpret(g, q, np.array([-1, 0, 1], np.int64))


# --- embedding bag -------------------------------------------------------------------------------


def bag_types(n: int = 9, bags: int = 3):
    return table(), TensorType((n,), i64), TensorType((bags,), i64)


def test_embedding_bag_mode():
    w, idx, offs = bag_types()
    with pytest.raises(TypeInferenceError, match=r"qnn.embedding_bag: mode 'mean' is not"
                       r" supported: PyTorch's quantized embedding_bag kernels .* always sum"):
        infer("qnn.embedding_bag", QEmbeddingBagAttrs("mean"), w, idx, offs)
    with pytest.raises(TypeInferenceError, match="mode 'max' is not supported"):
        infer("qnn.embedding_bag", QEmbeddingBagAttrs("max"), w, idx, offs)
    with pytest.raises(TypeInferenceError, match=r"unknown mode 'median'; PyTorch's modes are"
                       r" sum, mean, max"):
        infer("qnn.embedding_bag", QEmbeddingBagAttrs("median"), w, idx, offs)


def test_embedding_bag_offsets_rules():
    w, idx, offs = bag_types()
    a = QEmbeddingBagAttrs()
    with pytest.raises(TypeInferenceError, match="1-D indices need offsets"):
        infer("qnn.embedding_bag", a, w, idx)
    idx2 = TensorType((3, 3), i64)
    with pytest.raises(TypeInferenceError, match="2-D indices .* take no offsets"):
        infer("qnn.embedding_bag", a, w, idx2, offs, TensorType((3, 3), f32))
    with pytest.raises(TypeInferenceError, match="include_last_offset needs 1-D indices"):
        infer("qnn.embedding_bag", QEmbeddingBagAttrs(include_last_offset=True), w, idx2)
    with pytest.raises(TypeInferenceError, match="include_last_offset needs at least one offset"):
        infer("qnn.embedding_bag", QEmbeddingBagAttrs(include_last_offset=True), w, idx,
              TensorType((0,), i64))
    with pytest.raises(TypeInferenceError, match=r"offsets \(input 2\) must be 1-D"):
        infer("qnn.embedding_bag", a, w, idx, TensorType((1, 3), i64))
    with pytest.raises(TypeInferenceError, match=r"per_sample_weights must be float32 with the"
                       r" shape of indices \[9\]"):
        infer("qnn.embedding_bag", a, w, idx, offs, ftype([8]))


def test_embedding_bag_padding_idx_range():
    w, idx, offs = bag_types()
    for pad in (5, -6, 1.0):
        with pytest.raises(TypeInferenceError, match=r"padding_idx must be None or an int in"
                           r" \[-5, 4\] for a table of 5 rows"):
            infer("qnn.embedding_bag", QEmbeddingBagAttrs(padding_idx=pad), w, idx, offs)
    assert infer("qnn.embedding_bag", QEmbeddingBagAttrs(padding_idx=-5), w, idx, offs)[0] == \
        TensorType((3, 4), f32)


@pytest.mark.parametrize("offsets, last, message", [
    ([1, 3, 5], False, "offsets must start at 0, got 1"),
    ([0, 6, 4], False, "offsets must be non-decreasing"),
    ([0, 4, 12], False, "offset 12 at position 2 is beyond the 9 indices"),
    ([0, 4, 8], True, ("with include_last_offset the last offset must equal the number of"
                       r" indices \(9\), got 8")),
])
def test_embedding_bag_bad_offsets_are_reported_when_run(offsets, last, message):
    w, idx, offs = bag_types()
    b = Builder()
    vals = [b.input("w", w), b.input("idx", idx), b.input("offs", offs)]
    g = b.finish(b.op("qnn.embedding_bag", vals, QEmbeddingBagAttrs(include_last_offset=last)))
    with pytest.raises(InterpretError, match=rf"qnn.embedding_bag failed: qnn.embedding_bag:"
                       rf" {message}"):
        interpret(g, np.zeros((5, 4), np.uint8), np.arange(9, dtype=np.int64) % 5,
                  np.array(offsets, np.int64))
