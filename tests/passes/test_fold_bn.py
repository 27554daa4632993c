"""Batch-norm folding is deliberately not implemented (passes/fold_bn.py): pin the reasons."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from qcompiler.ir import Builder, QParams, TensorType, f32
from qcompiler.ir.registry import all_ops, get_op
from qcompiler.ops.norm import QBatchNormAttrs
from qcompiler.passes.pipelines import optimize
from qcompiler.reference.interpreter import interpret


def test_no_float_batch_norm_op() -> None:
    """If a float batch norm is ever registered, implement the float fold in fold_bn.py."""
    names = [o.name for o in all_ops() if "batch_norm" in o.name]
    assert sorted(names) == ["qnn.batch_norm", "qnn.batch_norm_relu"], names


def test_integer_conv_bn_fold_is_not_exact() -> None:
    """conv2d -> batch_norm (two roundings) vs the folded conv2d (one): outputs differ."""
    rng = np.random.default_rng(0)
    s = next(s for s in get_op("qnn.conv2d").samples(rng)
             if len(s.arrays) == 3 and s.extra["path"] == "onednn")
    (xt, wt, bt), (x, w, bias) = s.in_types, s.arrays
    o = wt.shape[0]
    so = s.attrs.out_qparams.scale_value
    gamma = rng.uniform(0.5, 2.0, o).astype(np.float32)
    beta = rng.standard_normal(o).astype(np.float32)
    mean = (rng.standard_normal(o) * so * 20).astype(np.float32)
    var = (rng.uniform(0.5, 2.0, o) * (so * 30) ** 2).astype(np.float32)
    bn_out = QParams.per_tensor(so, 100)

    b = Builder()
    xi = b.input("x", xt)
    y = b.op("qnn.conv2d", [xi, b.const(w, wt, "w"), b.const(bias, bt, "b")], s.attrs)
    params = [b.const(a, TensorType((o,), f32), n)
              for a, n in ((gamma, "g"), (beta, "beta"), (mean, "m"), (var, "v"))]
    g = b.finish(b.op("qnn.batch_norm", [y, *params], QBatchNormAttrs(bn_out, 1e-5)))
    two_roundings = interpret(g, x)

    a = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-5)
    scales = np.broadcast_to(wt.qparams.scales_array(), (o,)) * a
    wq = QParams.per_axis(scales, [0] * o, 0, "symmetric")
    b2 = Builder()
    xi = b2.input("x", xt)
    folded = b2.op("qnn.conv2d", [xi, b2.const(w, TensorType(wt.shape, wt.dtype, wq), "w"),
                                  b2.const((bias * a + beta - mean * a).astype(np.float32), bt,
                                           "b")], replace(s.attrs, out_qparams=bn_out))
    one_rounding = interpret(b2.finish(folded), x)
    assert not np.array_equal(two_roundings, one_rounding)

    # and the pipelines leave the pair alone
    assert optimize(g, 3).op_counts() == g.op_counts()
