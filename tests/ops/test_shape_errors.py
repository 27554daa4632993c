"""Data-movement and tensor ops reject bad attrs and unsupported qparams with clear messages."""

import numpy as np
import pytest

from qcompiler.errors import InterpretError, TypeInferenceError
from qcompiler.ir import Builder, QParams, TensorType, f32, ftype, i8, i32, i64, qtype, u8
from qcompiler.ops.shape import (
    AsStridedAttrs,
    ChunkAttrs,
    DropoutAttrs,
    ExpandAttrs,
    FlattenAttrs,
    IndexSelectAttrs,
    PermuteAttrs,
    ReshapeAttrs,
    SelectAttrs,
    SliceAttrs,
    SplitAttrs,
    SqueezeAttrs,
    StackAttrs,
    TransposeAttrs,
    UnsqueezeAttrs,
)
from qcompiler.ops.tensor import (
    CompareAttrs,
    QMaxMinAttrs,
    QMeanAttrs,
    QSortAttrs,
    QTopkAttrs,
    ResizeAttrs,
)
from qcompiler.reference.interpreter import interpret

PT = qtype([2, 3, 4], u8, 0.1, 3)
PER_AXIS = TensorType((2, 3, 4), i8, QParams.per_axis([0.1, 0.2, 0.3], [0, 1, -1], 1))


def build(op, types, attrs=None):
    b = Builder()
    xs = [b.input(f"x{k}", t) for k, t in enumerate(types)]
    return b.op(op, xs, attrs)


def rejects(op, types, attrs, match):
    with pytest.raises(TypeInferenceError, match=match):
        build(op, types, attrs)


# --- shapes and dims ---------------------------------------------------------------------------

def test_reshape_bad_sizes():
    rejects("reshape", [PT], ReshapeAttrs((4, 5)),
            r"shape \[4, 5\] \(20 elements\) is invalid for input of shape \[2, 3, 4\]"
            r" \(24 elements\)")
    rejects("reshape", [PT], ReshapeAttrs((-1, 5)), r"shape \[-1, 5\] is invalid for input")
    rejects("reshape", [PT], ReshapeAttrs((-1, -1)), "only one dimension .* can be -1")
    rejects("reshape", [PT], ReshapeAttrs((0, -1)), r"shape \[0, -1\] is invalid")
    rejects("reshape", [PT], ReshapeAttrs((-2, -12)), "invalid dimension -2")
    rejects("reshape", [PT], ReshapeAttrs([2, 12.0]), "shape must be a tuple of ints")


def test_dims_out_of_range_name_the_range():
    rejects("transpose", [PT], TransposeAttrs(0, 3),
            r"transpose: dim1 3 is out of range for a rank-3 input \(expected -3\.\.2\)")
    rejects("unsqueeze", [PT], UnsqueezeAttrs(4), r"dim 4 is out of range .* \(expected -4\.\.3\)")
    rejects("flatten", [PT], FlattenAttrs(-4), "start_dim -4 is out of range")
    rejects("select", [PT], SelectAttrs(3, 0), "dim 3 is out of range")
    rejects("qnn.mean", [PT], QMeanAttrs((0, 5)), "dim 5 is out of range")
    rejects("qnn.sort", [PT], QSortAttrs(-4), "dim -4 is out of range")
    rejects("stack", [PT, PT], StackAttrs(5), r"dim 5 is out of range .* \(expected -4\.\.3\)")


def test_flatten_start_after_end():
    rejects("flatten", [PT], FlattenAttrs(2, 1), "start_dim 2 comes after end_dim 1")


def test_permute_needs_a_permutation():
    rejects("permute", [PT], PermuteAttrs((0, 1)), r"dims \[0, 1\] has 2 entries, the input has"
                                                   " rank 3")
    rejects("permute", [PT], PermuteAttrs((0, 1, -2)), r"dim 1 appears more than once")


def test_duplicate_dims():
    rejects("squeeze", [PT], SqueezeAttrs((0, -3)), "dim 0 appears more than once")
    rejects("qnn.mean", [PT], QMeanAttrs((1, 1)), "dim 1 appears more than once")


def test_expand_errors():
    rejects("expand", [PT], ExpandAttrs((2, 5, 4)),
            r"size 5 must match the existing size 3 at non-singleton dimension 1")
    rejects("expand", [PT], ExpandAttrs((-1, 2, 3, 4)),
            "size -1 is not allowed in a new leading dimension 0")
    rejects("expand", [PT], ExpandAttrs((3, 4)), r"number of sizes \(2\) must be at least")


def test_as_strided_errors():
    rejects("as_strided", [PT], AsStridedAttrs((3, 3), (10, 1), 2),
            "reads element 24, but the input has 24 elements")
    rejects("as_strided", [PT], AsStridedAttrs((2,), (-1,)), "must be non-negative")
    rejects("as_strided", [PT], AsStridedAttrs((2, 2), (1,)), "differ in length")


def test_select_slice_errors():
    rejects("select", [PT], SelectAttrs(1, 3), "index 3 is out of range for dim 1 of size 3")
    rejects("select", [qtype([], u8, 0.1, 0)], SelectAttrs(0, 0), "0-dim")
    rejects("slice", [PT], SliceAttrs(0, 0, 2, 0), "step must be a positive int, got 0")
    rejects("slice", [PT], SliceAttrs(0, 2, 0, -1), "step must be a positive int")


def test_index_select_errors():
    rejects("index_select", [PT, ftype([2])], IndexSelectAttrs(0),
            "index must be an i64 or i32 tensor")
    rejects("index_select", [PT, TensorType((2, 1), i64)], IndexSelectAttrs(0),
            r"must be a vector \(rank <= 1\)")
    b = Builder()
    x = b.input("x", PT)
    idx = b.const(np.array([0, 3], np.int64), name="idx")
    g = b.finish(b.op("index_select", [x, idx], IndexSelectAttrs(1)))
    with pytest.raises(InterpretError, match="index 3 is out of range for dim 1 of size 3"):
        interpret(g, np.zeros((2, 3, 4), np.uint8))


def test_chunk_split_errors():
    rejects("chunk", [PT], ChunkAttrs(0), "chunks must be a positive int, got 0")
    rejects("split", [PT], SplitAttrs((1, 1), 1), r"sections \[1, 1\] must be non-negative and"
                                                  " sum to 3")
    rejects("split", [PT], SplitAttrs(0, 1), "split_size must be positive")


def test_stack_mismatches():
    rejects("stack", [PT, qtype([2, 4, 3], u8, 0.1, 3)], StackAttrs(0),
            r"equal size, but got \[2, 3, 4\] at entry 0 and \[2, 4, 3\] at entry 1")
    rejects("stack", [PT, qtype([2, 3, 4], i8, 0.1, 3)], StackAttrs(0), "inputs of one dtype")
    rejects("stack", [PT, ftype([2, 3, 4])], StackAttrs(0), "all quantized or all unquantized")


def test_dropout_probability():
    rejects("dropout", [PT], DropoutAttrs(1.5), "p must be between 0 and 1, got 1.5")


# --- per-axis qparams --------------------------------------------------------------------------

def test_per_axis_rejected_where_pytorch_rejects():
    torch_msg = "Setting strides is possible only on uniformly quantized tensor"
    rejects("permute", [PER_AXIS], PermuteAttrs((0, 2, 1)), torch_msg)
    rejects("transpose", [PER_AXIS], TransposeAttrs(0, 1), torch_msg)
    rejects("expand", [PER_AXIS], ExpandAttrs((2, 2, 3, 4)), torch_msg)
    rejects("as_strided", [PER_AXIS], AsStridedAttrs((2,), (1,)), torch_msg)
    rejects("index_select", [PER_AXIS, TensorType((1,), i64)], IndexSelectAttrs(0),
            "Only per_tensor quantized")
    rejects("stack", [PER_AXIS, PER_AXIS], StackAttrs(0), "Only per-tensor quantization")
    rejects("resize", [PER_AXIS], ResizeAttrs((4,)), "Can only resize quantized tensors with"
                                                     " per-tensor schemes")
    for op in ("qnn.max", "qnn.min"):
        rejects(op, [PER_AXIS], QMaxMinAttrs(1), "supports unquantized and per-tensor quantized"
                                                 r" inputs; got per-axis qparams \(axis=1\)")
    rejects("qnn.sort", [PER_AXIS], QSortAttrs(), "per-axis")
    rejects("qnn.topk", [PER_AXIS], QTopkAttrs(1), "Top-K is only supported on per-tensor")


def test_per_axis_on_a_reduced_axis():
    rejects("qnn.mean", [PER_AXIS], QMeanAttrs((1,)), r"per-axis qparams \(axis=1\)")
    rejects("qnn.max", [PER_AXIS], QMaxMinAttrs(1), "per-axis")
    one_channel = TensorType((2, 1, 4), i8, QParams.per_axis([0.5], [0], 1))
    rejects("squeeze", [one_channel], SqueezeAttrs(), "would remove dim 1, the axis of the"
                                                      " per-axis qparams")
    rejects("squeeze", [one_channel], SqueezeAttrs((1,)), "Squeeze is only possible on"
                                                          " non-axis dimension")


def test_per_axis_reshape_must_keep_the_channel_dim():
    rejects("reshape", [PER_AXIS], ReshapeAttrs((6, 4)),
            r"must keep dimension 1 \(size 3\) at the same position")
    rejects("reshape", [PER_AXIS], ReshapeAttrs((1, 2, 3, 4)), "PyTorch keeps axis=1")
    rejects("flatten", [PER_AXIS], FlattenAttrs(0, 1), "must keep dimension 1")
    # the channel dim stays put: allowed, axis unchanged
    out = build("reshape", [PER_AXIS], ReshapeAttrs((2, 3, 2, 2)))
    assert out.type.qparams == PER_AXIS.qparams


def test_per_axis_select_and_slice_rules():
    rejects("select", [PER_AXIS], SelectAttrs(2, 0), "relabels the axis as 0")
    rejects("slice", [PER_AXIS], SliceAttrs(1, 3, None), "would leave no channels")
    rejects("split", [PER_AXIS], SplitAttrs((0, 3), 1), "would leave no channels")
    on_axis = build("select", [PER_AXIS], SelectAttrs(1, 2))
    assert on_axis.type.qparams == QParams.per_tensor(0.3, -1)
    before = build("select", [PER_AXIS], SelectAttrs(0, 1))
    assert before.type.qparams == QParams.per_axis([0.1, 0.2, 0.3], [0, 1, -1], 0)
    sliced = build("slice", [PER_AXIS], SliceAttrs(1, 0, None, 2))
    assert sliced.type.qparams == QParams.per_axis([0.1, 0.3], [0, -1], 1)
    assert build("unsqueeze", [PER_AXIS], UnsqueezeAttrs(0)).type.qparams.axis == 2


# --- tensor ops --------------------------------------------------------------------------------

def test_comparison_errors():
    rejects("qnn.eq", [ftype([2]), ftype([2])], CompareAttrs(),
            "needs at least one quantized operand.* use f.eq")
    rejects("qnn.lt", [PT, qtype([5], u8, 0.1, 0)], CompareAttrs(),
            r"shapes \[2, 3, 4\] and \[5\] do not broadcast")
    rejects("qnn.ge", [PT], CompareAttrs(), "compares it with the scalar attr `other`")
    rejects("qnn.ne", [PT, PT], CompareAttrs(1.0), "takes no scalar `other`")
    rejects("qnn.gt", [ftype([2])], CompareAttrs(0.5), "takes a quantized tensor")
    rejects("qnn.equal", [ftype([2]), ftype([2])], None, "needs at least one quantized input")


def test_reduction_errors():
    rejects("qnn.max", [PT], QMaxMinAttrs(None, True), "keepdim needs a dim")
    rejects("qnn.min", [qtype([0, 3], u8, 0.1, 0)], QMaxMinAttrs(), "cannot reduce an empty")
    rejects("qnn.max", [qtype([0, 3], u8, 0.1, 0)], QMaxMinAttrs(0), "dim 0 of \\[0, 3\\] is"
                                                                      " empty")
    rejects("qnn.mean", [qtype([3, 0], u8, 0.1, 0)], QMeanAttrs((1,)), "averages nothing")
    rejects("qnn.mean", [ftype([3])], QMeanAttrs(), "takes a quantized tensor.*use f.mean")
    rejects("qnn.topk", [PT], QTopkAttrs(5), "k=5 is out of range for dim 2 of size 4")
    rejects("qnn.topk", [PT], QTopkAttrs(-1), "k=-1 is out of range")


def test_int_repr_and_resize_errors():
    rejects("int_repr", [ftype([3])], None, "takes a quantized tensor")
    rejects("resize", [PT], ResizeAttrs((5, 5)), r"would grow .* PyTorch leaves the new elements"
                                                 " uninitialized")
    rejects("resize", [PT], ResizeAttrs((-1,)), "sizes must be non-negative")
    out = build("resize", [qtype([4], i32, 0.5, 1)], ResizeAttrs((2,)))
    assert out.type == qtype([2], i32, 0.5, 1)


def test_messages_name_the_op_and_inputs():
    with pytest.raises(TypeInferenceError) as e:
        build("reshape", [ftype([2, 3], f32)], ReshapeAttrs((7,)))
    assert str(e.value).startswith("reshape(f32[2,3]): reshape: shape [7]")
