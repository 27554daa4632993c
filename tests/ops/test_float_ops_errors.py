"""The f.* float ops reject bad inputs with clear errors naming the op and what is supported."""

import numpy as np
import pytest

from qcompiler.errors import InterpretError, QCompilerError, TypeInferenceError, VerifyError
from qcompiler.ir import Builder, QParams, TensorType, f32, ftype, i8, i64, qtype, u8
from qcompiler.ir.registry import NoAttrs, all_ops, get_op
from qcompiler.ir.types import b1, u4
from qcompiler.ops.float_ops import (
    AdaptivePoolAttrs,
    ClampAttrs,
    Conv2dAttrs,
    DimAttrs,
    GeluAttrs,
    InterpolateAttrs,
    LayerNormAttrs,
    MaskedFillAttrs,
    ReduceAttrs,
    ScalarAttrs,
    ToAttrs,
)
from qcompiler.reference.interpreter import interpret

F32 = ftype([2, 3])
Q = qtype([2, 3], u8, 0.1, 3)
I64 = TensorType((2, 3), i64)
MASK = TensorType((2, 3), b1)


def infer(op: str, attrs, *types):
    return get_op(op).infer_types(attrs, types)


def test_quantized_input_says_dequantize_first():
    with pytest.raises(TypeInferenceError, match=r"f.add lhs must be an unquantized tensor, got"
                       r" quantized u8\[2,3\] q\(0.1, 3\): .*insert a dequantize"):
        infer("f.add", NoAttrs(), Q, F32)
    with pytest.raises(TypeInferenceError, match="f.softmax input must be an unquantized"):
        infer("f.softmax", DimAttrs(-1), Q)


def test_wrong_dtype_lists_supported_dtypes():
    with pytest.raises(TypeInferenceError,
                       match=r"f.exp input has dtype i64; supported dtypes: float32 \(f32\)"
                             r" \(cast with f.to first\)"):
        infer("f.exp", NoAttrs(), I64)
    with pytest.raises(TypeInferenceError, match=r"supported dtypes: float32 \(f32\), int64"):
        infer("f.add", NoAttrs(), MASK, MASK)
    with pytest.raises(TypeInferenceError, match="f.div lhs has dtype i64"):
        infer("f.div", NoAttrs(), I64, I64)


def test_binary_dtype_mix_and_broadcast():
    with pytest.raises(TypeInferenceError,
                       match="f.mul needs both inputs of one dtype, got f32 and i64.*insert f.to"):
        infer("f.mul", NoAttrs(), F32, I64)
    with pytest.raises(TypeInferenceError,
                       match=r"f.add: shapes \[2, 3\] and \[4\] do not broadcast \(dimension -1"
                             r" has sizes \[3, 4\]"):
        infer("f.add", NoAttrs(), F32, ftype([4]))
    assert infer("f.gt", NoAttrs(), ftype([3, 1]), ftype([4]))[0] == TensorType((3, 4), b1)


def test_scalar_ops():
    with pytest.raises(TypeInferenceError, match="an int64 tensor takes an int scalar, got 0.5"):
        infer("f.add_scalar", ScalarAttrs(0.5), I64)
    with pytest.raises(TypeInferenceError, match="scalar must be an int or float, got True"):
        infer("f.mul_scalar", ScalarAttrs(True), F32)
    with pytest.raises(TypeInferenceError, match="f.pow_scalar input has dtype i64"):
        infer("f.pow_scalar", ScalarAttrs(2), I64)
    assert infer("f.eq_scalar", ScalarAttrs(0), I64)[0] == MASK


def test_attribute_choices_are_listed():
    with pytest.raises(TypeInferenceError, match="approximate='fast'; supported: 'none', 'tanh'"):
        infer("f.gelu", GeluAttrs("fast"), F32)
    with pytest.raises(TypeInferenceError, match="f.clamp needs at least one of min, max"):
        infer("f.clamp", ClampAttrs(), F32)
    with pytest.raises(TypeInferenceError,
                       match="mode 'bicubic' is not supported; supported: 'nearest', 'bilinear'"):
        infer("f.interpolate", InterpolateAttrs((4, 4), "bicubic"), ftype([1, 1, 2, 2]))
    with pytest.raises(TypeInferenceError, match="align_corners needs mode 'bilinear'"):
        infer("f.interpolate", InterpolateAttrs((4, 4), "nearest", True), ftype([1, 1, 2, 2]))
    with pytest.raises(TypeInferenceError, match=r"expected an NCHW input \(rank 4\)"):
        infer("f.interpolate", InterpolateAttrs((4, 4)), ftype([1, 2, 2]))


def test_dims():
    with pytest.raises(TypeInferenceError,
                       match=r"f.softmax: dim 2 is out of range for a rank-2 tensor \(valid: -2..1\)"):
        infer("f.softmax", DimAttrs(2), F32)
    with pytest.raises(TypeInferenceError, match=r"f.sum: dims \[1, -1\] name a dimension twice"):
        infer("f.sum", ReduceAttrs((1, -1)), F32)
    with pytest.raises(TypeInferenceError, match="dims is empty; use none to reduce all"):
        infer("f.mean", ReduceAttrs(()), F32)
    assert infer("f.mean", ReduceAttrs((-1,), True), F32)[0] == ftype([2, 1])
    assert infer("f.sum", ReduceAttrs(None), MASK)[0] == TensorType((), i64)


def test_layer_norm_shapes_and_arity():
    with pytest.raises(TypeInferenceError, match=r"normalized_shape \[4\] must be the trailing"
                                                 r" dimensions of the input, got input shape \[2, 3\]"):
        infer("f.layer_norm", LayerNormAttrs((4,)), F32)
    with pytest.raises(TypeInferenceError,
                       match=r"f.layer_norm: bias has shape \[4\], expected normalized_shape \[3\]"):
        infer("f.layer_norm", LayerNormAttrs((3,)), F32, ftype([3]), ftype([4]))
    with pytest.raises(VerifyError, match="op f.layer_norm takes 1 or 2 or 3 inputs, got 4"):
        infer("f.layer_norm", LayerNormAttrs((3,)), F32, ftype([3]), ftype([3]), ftype([3]))


def test_contraction_shapes():
    with pytest.raises(TypeInferenceError,
                       match=r"f.matmul: contraction sizes differ: \[2, 3\] @ \[4, 5\]"):
        infer("f.matmul", NoAttrs(), F32, ftype([4, 5]))
    with pytest.raises(TypeInferenceError, match="inputs must have rank >= 1"):
        infer("f.matmul", NoAttrs(), ftype([]), F32)
    with pytest.raises(TypeInferenceError, match=r"do not broadcast"):
        infer("f.matmul", NoAttrs(), ftype([2, 2, 3]), ftype([3, 3, 4]))
    with pytest.raises(TypeInferenceError,
                       match=r"f.linear: expected input \[..., K\] and weight \[N, K\]"):
        infer("f.linear", NoAttrs(), F32, ftype([5, 4]))
    with pytest.raises(TypeInferenceError, match=r"f.linear: bias has shape \[4\], expected \[5\]"):
        infer("f.linear", NoAttrs(), F32, ftype([5, 3]), ftype([4]))
    x = ftype([1, 4, 5, 5])
    with pytest.raises(TypeInferenceError, match="groups=3 needs C=4 and O=6 divisible"):
        infer("f.conv2d", Conv2dAttrs(groups=3), x, ftype([6, 1, 3, 3]))
    with pytest.raises(TypeInferenceError, match="kernel 7x7 .* is larger than the padded input 5x5"):
        infer("f.conv2d", Conv2dAttrs(), x, ftype([2, 4, 7, 7]))
    with pytest.raises(TypeInferenceError, match=r"stride must be two ints >= 1, got \(0, 1\)"):
        infer("f.conv2d", Conv2dAttrs(stride=(0, 1)), x, ftype([2, 4, 3, 3]))


def test_embedding_and_selection():
    with pytest.raises(TypeInferenceError, match=r"f.embedding indices has dtype f32; supported"
                                                 r" dtypes: int64 \(i64\), int32 \(i32\)"):
        infer("f.embedding", NoAttrs(), F32, ftype([10, 4]))
    with pytest.raises(TypeInferenceError, match=r"weight must be \[num_embeddings, dim\]"):
        infer("f.embedding", NoAttrs(), I64, ftype([10]))
    with pytest.raises(TypeInferenceError, match=r"f.where condition has dtype f32; supported"
                                                 r" dtypes: bool \(b1\)"):
        infer("f.where", NoAttrs(), F32, F32, F32)
    with pytest.raises(TypeInferenceError, match="f.where needs both branches of one dtype"):
        infer("f.where", NoAttrs(), MASK, F32, I64)
    with pytest.raises(TypeInferenceError, match="f.masked_fill mask has dtype f32"):
        infer("f.masked_fill", MaskedFillAttrs(0.0), F32, F32)
    with pytest.raises(TypeInferenceError, match="value must be a non-NaN number"):
        infer("f.masked_fill", MaskedFillAttrs(float("nan")), F32, MASK)


def test_embedding_index_out_of_range_at_run_time():
    b = Builder()
    idx = b.input("idx", TensorType((3,), i64))
    w = b.input("w", ftype([4, 2]))
    g = b.finish(b.op("f.embedding", [idx, w]))
    with pytest.raises(InterpretError,
                       match=r"f.embedding: index 4 is out of range for 4 embeddings \(valid: 0..3\)"):
        interpret(g, np.array([0, 4, 1]), np.zeros((4, 2), np.float32))


def test_cat_and_to():
    with pytest.raises(TypeInferenceError, match="f.cat: input 1 has dtype i64, input 0 has f32"):
        infer("f.cat", DimAttrs(0), F32, I64)
    with pytest.raises(TypeInferenceError,
                       match=r"f.cat: input 1 has shape \[3, 3\], input 0 has \[2, 3\]; all dims but 1"):
        infer("f.cat", DimAttrs(1), F32, ftype([3, 3]))
    with pytest.raises(TypeInferenceError, match="f.cat needs at least one input"):
        infer("f.cat", DimAttrs(0))
    with pytest.raises(TypeInferenceError, match="zero-dimensional tensors cannot be concatenated"):
        infer("f.cat", DimAttrs(0), ftype([]), ftype([]))
    with pytest.raises(TypeInferenceError,
                       match=r"f.to: target dtype u4 is not supported; supported: .*quantize op"):
        infer("f.to", ToAttrs(u4), F32)
    with pytest.raises(TypeInferenceError, match="f.to input must be an unquantized tensor"):
        infer("f.to", ToAttrs(f32), Q)
    assert infer("f.to", ToAttrs(i8), F32)[0] == TensorType((2, 3), i8)


def test_pool_shapes():
    with pytest.raises(TypeInferenceError, match=r"expected a CHW or NCHW input .* got \[2, 3\]"):
        infer("f.adaptive_avg_pool2d", AdaptivePoolAttrs((1, 1)), F32)
    with pytest.raises(TypeInferenceError, match=r"output_size must be two ints >= 1, got \(0, 1\)"):
        infer("f.adaptive_avg_pool2d", AdaptivePoolAttrs((0, 1)), ftype([1, 2, 3, 3]))


def test_builder_error_names_node_location():
    b = Builder()
    x = b.input("x", F32)
    with pytest.raises(TypeInferenceError) as e:
        b.op("f.softmax", [x], DimAttrs(5), loc="encoder.layer.0.attention")
    assert str(e.value).startswith("f.softmax(f32[2,3]) at encoder.layer.0.attention:")


FLOAT_OPS = [op for op in all_ops() if op.name.startswith("f.")]


@pytest.mark.parametrize("op", FLOAT_OPS, ids=lambda op: op.name)
def test_bad_types_raise_qcompiler_errors_only(op):
    """Every f.* op rejects quantized, bool and mismatched inputs with a QCompilerError."""
    sample = next(iter(op.samples(np.random.default_rng(0))))
    n = len(sample.in_types)
    bad_types = [
        [TensorType(t.shape, i8, QParams.per_tensor(0.5, 0)) for t in sample.in_types],
        [TensorType(t.shape, u4) for t in sample.in_types],
        [ftype([7, 1, 5, 11])] * n,
        [ftype([])] * n,
    ]
    for types in bad_types:
        try:  # accepted, or rejected with a QCompilerError; anything else fails the test
            op.infer_types(sample.attrs, types)
        except QCompilerError:
            pass


def test_interpolate_size_must_match_scale_factor():
    with pytest.raises(TypeInferenceError, match=r"size \[5, 4\] does not match scales \[2.0, 2.0\]"
                                                 r" .* floor\(H \* scale\) = \[4, 4\]"):
        infer("f.interpolate", InterpolateAttrs((5, 4), "nearest", False, (2.0, 2.0)),
              ftype([1, 1, 2, 2]))
