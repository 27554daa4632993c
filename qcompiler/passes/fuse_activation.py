"""Fold quantized activations into the op that produces their input, where that is exact.

Every rewrite here keeps the reference interpreter's output bit for bit: it only fires where
the fused op computes exactly what the unfused pair computes, for every input.

**relu into its producer** (`ReluIntoAnchor`): `qnn.relu(p(xs))` -> `p_relu(xs)` for the
producers in `RELU_FUSIONS`. `qnn.relu` is `max(q, zo)` on the stored integers, with the
producer's output qparams (zo its zero point). Why each fused op equals that:

- fbgemm epilogue (`qnn.linear`, and convs whose weights have zero points or groups > 100):
  the fused op is `clip(r + zo, zo, qmax)`, the plain one `clip(r + zo, qmin, qmax)`, and
  `max(clip(a, qmin, qmax), zo) == clip(a, zo, qmax)` for any integer a when
  qmin <= zo <= qmax. Pure integer identity: always exact (the INT32_MIN overflow trap too).
- oneDNN epilogue (other convs, `qnn.conv2d_add`): relu acts on the float pre-activation v,
  before output scaling: y = clip(rint(f32(f32(max(v, 0) * dinv) + f32(zo)))). Rounding to
  float32 is monotone and zo is exact in float32, so v > 0 (or +inf) gives y >= zo, which
  max(., zo) keeps, and v <= 0 (or -0.0, -inf) gives y = zo in the fused op and y <= zo,
  raised to zo, in the pair. The one input where they differ is v = NaN (fused: NaN survives
  relu and becomes 0; pair: max(0, zo) = zo). `onednn_relu_commutes` rules NaN out: the
  factors oneDNN multiplies by (src_s = 1/f32(1/sx), f32(sw[o]), 1/dst_s with
  dst_s = 1/f32(1/so), the residual's 1/f32(1/se)) must be finite and > 0, and the bias
  absent or a constant with finite values.
  Then no step can form 0 * inf or inf - inf. (Only absurd scales, beyond float32, fail it.)
- `qnn.add` -> `qnn.add_relu`: add_relu = Q_vec(max(c, 0)), add = Q_vec(c), with
  Q_vec(c) = clamp(wrap32(zo + cvt(f32(c * inv)))). Same argument as oneDNN, but Q_vec's int32
  steps wrap for |c * inv| near 2**31 (u8 with zo >= 128 wraps huge positive sums to 0;
  i8 with zo < 0 wraps huge negative ones to 127), so `add_relu_commutes` requires
  (range * f32(sa) + range * f32(sb)) * inv < 2**30: no wrap, no clipping, no NaN.
- `qnn.mul`, `qnn.add_scalar`, `qnn.mul_scalar`, `qnn.batch_norm`: their `_relu` variants are
  defined as `max(plain, zo)` with the output zero point: exact by definition.
- `qnn.cat` -> `qnn.cat_relu` only off PyTorch's channels-last path (`cat_takes_nhwc_path`),
  where cat_relu is `max(cat, zo)`. On that path it applies relu before a Q_vec requantize,
  like add_relu, so it differs where Q_vec wraps (in/out scale ratios ~1e7; 0 of 5000 random
  ordinary cases differ). Only 4-D inputs with C == 1 or H == W == 1 take it; not fused there.

Measured as well, on the reference: every fusion on the registry samples of each producer
(150 seeds: 17,700 graphs, 3.0M outputs; random and edge qparams, huge biases, int32
wrap-around): 0 mismatches (tests/passes/test_fuse_activation.py keeps one seed). And on
PyTorch itself (x86 engine, 300 random configs, each op prepacked separately): relu(op) vs
op_relu differ in 0 of 246k conv2d outputs (oneDNN and fbgemm paths), 0 of 12.5k linear,
0 of 126k add (quint8, qint8), 0 of conv2d_add's outputs with C_out > 1.

**clamp family into its producer** (`ClampIntoAnchor`): `qnn.relu6`, `qnn.hardtanh` and
`qnn.clamp` keep their input's qparams and compute min(max(q, Q(lo)), Q(hi)) with the bounds
quantized by those qparams. When Q(lo) == zo the max is `qnn.relu`, so the pair becomes
`p_relu` (fused as above) followed by `qnn.clamp(max=hi)`, or by nothing when Q(hi) == qmax
(relu6 with PyTorch's usual 6/255 output scale). The same applies when the producer already
ends in a relu (its output is >= zo, so max(q, zo) is a no-op). Integer min/max: exact.

**redundant relu** (`RedundantRelu`): relu of a value that is already >= zo (a `qnn.relu`, or
an op in `RELU_FUSIONS.values()` where the same guard holds) is dropped.

Not fused, on purpose: conv2d followed by qnn.add (+relu) is NOT qnn.conv2d_add (+relu).
conv2d_add is oneDNN's sum post-op, which rounds once; conv2d then add rounds the conv result
to its own output qparams first (and clips it to 0..255). Measured on conv2d_add's registry
samples (30 seeds, the conv's own output scale = the add's or half of it): 22.5 % of 66k
outputs differ, 7.5 % by more than 1 LSB, up to 192 (`test_conv_then_add_is_not_conv2d_add`).
That pair is fused at the kernel level instead (passes/group_kernels.py: one PrimFunc, one
pass over memory, the same two roundings).
Nor is qnn.linear -> leaky_relu / tanh: qnn.linear_leaky_relu and qnn.linear_tanh are
oneDNN kernels, a different epilogue from qnn.linear's fbgemm one.

Requires: a verified graph. Ensures: a verified graph with the same outputs bit for bit.
Put it after constant folding (bias constants are then constants) and before kernel grouping.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.types import QParams, TensorType
from qcompiler.passes.manager import Pass
from qcompiler.passes.rewrite import Pattern, Rewriter, rewrite_greedily

log = logging.getLogger("qcompiler.passes")

F32 = np.float32

RELU_FUSIONS: dict[str, str] = {
    "qnn.conv1d": "qnn.conv1d_relu",
    "qnn.conv2d": "qnn.conv2d_relu",
    "qnn.conv3d": "qnn.conv3d_relu",
    "qnn.conv2d_add": "qnn.conv2d_add_relu",
    "qnn.linear": "qnn.linear_relu",
    "qnn.add": "qnn.add_relu",
    "qnn.mul": "qnn.mul_relu",
    "qnn.add_scalar": "qnn.add_scalar_relu",
    "qnn.mul_scalar": "qnn.mul_scalar_relu",
    "qnn.cat": "qnn.cat_relu",
    "qnn.batch_norm": "qnn.batch_norm_relu",
}
"""op -> the op with relu fused; both take the same inputs and attrs."""

_RELU_BASE: dict[str, str] = {v: k for k, v in RELU_FUSIONS.items()}
_CONVS = ("qnn.conv1d", "qnn.conv2d", "qnn.conv3d", "qnn.conv2d_add")
CLAMP_OPS = ("qnn.relu6", "qnn.hardtanh", "qnn.clamp")


# --- exactness guards ----------------------------------------------------------------------------


def _qparams(t: TensorType) -> QParams:
    qp = t.qparams
    assert qp is not None, "quantized ops have quantized inputs (verified graph)"
    return qp


def _finite_positive(*values: Any) -> bool:
    for v in values:
        a = np.asarray(v, dtype=np.float64)
        if not (np.all(np.isfinite(a)) and np.all(a > 0)):
            return False
    return True


def _conv_operands(conv: Node) -> tuple[Value, Value, Value | None, Value | None]:
    """(x, w, bias or None, residual or None) of a qnn.conv* node (ops/conv.py input order)."""
    fused_add = conv.op.startswith("qnn.conv2d_add")
    rest = list(conv.inputs[2:])
    other = rest.pop() if fused_add else None
    return conv.inputs[0], conv.inputs[1], (rest[0] if rest else None), other


def onednn_relu_commutes(graph: Graph, conv: Node) -> bool:
    """Whether oneDNN's relu-before-output-scaling equals relu after requantization for `conv`.

    It does unless the pre-activation can be NaN (module doc): every scale oneDNN multiplies by
    must be finite and > 0 in float32, and the bias absent or a constant of finite values.
    """
    from qcompiler.reference.requant import onednn_scale

    x, w, bias, other = _conv_operands(conv)
    with np.errstate(all="ignore"):
        scales = [onednn_scale(_qparams(x.type).scale_value),
                  _qparams(w.type).scales_array().astype(F32),
                  F32(1.0) / onednn_scale(_qparams(conv.outputs[0].type).scale_value)]
        if other is not None:
            scales.append(onednn_scale(_qparams(other.type).scale_value))
    if not _finite_positive(*scales):
        return False
    if bias is None:
        return True
    return graph.is_const(bias) and bool(np.all(np.isfinite(graph.const_data(bias))))


def conv_relu_commutes(graph: Graph, conv: Node) -> bool:
    """relu(conv(...)) == conv_relu(...) for this node (either op name of the pair)."""
    from qcompiler.ops.conv import requant_path

    wq = _qparams(conv.inputs[1].type)
    fused_add = conv.op.startswith("qnn.conv2d_add")
    if requant_path(wq, conv.attrs.groups, fused_add) == "fbgemm":
        return True
    return onednn_relu_commutes(graph, conv)


ADD_RELU_LIMIT = 2.0**30
"""Bound on |sum / out_scale| below which Q_vec's int32 steps cannot wrap or clip."""


def add_relu_commutes(node: Node) -> bool:
    """relu(qnn.add(a, b)) == qnn.add_relu(a, b): the sum can never reach Q_vec's int32 wrap."""
    from qcompiler.ops.elementwise import inv_f

    out = node.outputs[0].type
    span = float(out.dtype.qmax - out.dtype.qmin)
    with np.errstate(all="ignore"):
        bound = sum(span * float(F32(_qparams(v.type).scale_value)) for v in node.inputs)
        bound *= float(inv_f(_qparams(out).scale_value))
    return bool(np.isfinite(bound)) and bound < ADD_RELU_LIMIT


def relu_fusion_is_exact(graph: Graph, node: Node) -> bool:
    """Whether `node` (an op of RELU_FUSIONS, or its fused form) satisfies
    op_relu(xs) == qnn.relu(op(xs)) for every input (module doc has the argument per op)."""
    base = _RELU_BASE.get(node.op, node.op)
    if base not in RELU_FUSIONS:
        return False
    if base in _CONVS:
        return conv_relu_commutes(graph, node)
    if base == "qnn.add":
        return add_relu_commutes(node)
    if base == "qnn.cat":
        from qcompiler.ops.elementwise import cat_takes_nhwc_path

        return not cat_takes_nhwc_path(int(node.attrs.axis), [v.type for v in node.inputs])
    return True


def output_at_least_zero_point(graph: Graph, node: Node) -> bool:
    """Whether every value `node` outputs is >= its zero point (so a relu after it is a no-op).

    True for qnn.relu and for fused relu ops that equal relu(plain op) (`relu_fusion_is_exact`).
    """
    if node.op == "qnn.relu":
        return True
    return node.op in _RELU_BASE and relu_fusion_is_exact(graph, node)


def _only_use_is(graph: Graph, v: Value, user: Node) -> bool:
    """`v` feeds `user` alone (once) and is not a graph output: it may disappear into a fusion."""
    return (len(v.uses) == 1 and v.uses[0][0] is user
            and not any(o is v for o in graph.outputs))


def _clamp_bounds(node: Node) -> tuple[float | None, float | None]:
    """(lo, hi) of a clamp-family node, in real units."""
    if node.op == "qnn.relu6":
        return 0.0, 6.0
    if node.op == "qnn.hardtanh":
        return node.attrs.min_val, node.attrs.max_val
    return node.attrs.min, node.attrs.max


def _quantized_bound(v: float, t: TensorType) -> int:
    from qcompiler.ops.activation import clamp_bound

    return int(clamp_bound(v, _qparams(t), t.dtype))


# --- patterns ------------------------------------------------------------------------------------


def _fuse_relu(rw: Rewriter, producer: Node, name: str) -> Value:
    """Create the relu-fused twin of `producer` (same inputs, attrs and loc)."""
    return rw.create(RELU_FUSIONS[producer.op], producer.inputs, producer.attrs,
                     loc=producer.loc, name=name or producer.outputs[0].name)


class RedundantRelu(Pattern):
    """qnn.relu(y) -> y when y is already >= its zero point (y from a relu or fused relu op)."""

    root = "qnn.relu"

    def match_and_rewrite(self, node: Node, rw: Rewriter) -> bool:
        p = node.inputs[0].producer
        if p is None or not output_at_least_zero_point(rw.graph, p):
            return False
        rw.replace(node, node.inputs[0])
        return True


class ReluIntoAnchor(Pattern):
    """qnn.relu(op(xs)) -> op_relu(xs) for op in RELU_FUSIONS, where exact (module doc)."""

    root = "qnn.relu"

    def match_and_rewrite(self, node: Node, rw: Rewriter) -> bool:
        x = node.inputs[0]
        p = x.producer
        if p is None or p.op not in RELU_FUSIONS:
            return False
        if not _only_use_is(rw.graph, x, node):
            return False
        if not relu_fusion_is_exact(rw.graph, p):
            return False
        rw.replace(node, _fuse_relu(rw, p, node.outputs[0].name))
        return True


class ClampIntoAnchor(Pattern):
    """min(max(q, Q(lo)), Q(hi)) with Q(lo) == zo after op -> op_relu, then qnn.clamp(max=hi)
    unless Q(hi) == qmax (relu6 / hardtanh / clamp keep their input's qparams)."""

    root = CLAMP_OPS

    def match_and_rewrite(self, node: Node, rw: Rewriter) -> bool:
        from qcompiler.ops.activation import ClampAttrs

        x = node.inputs[0]
        t = x.type
        p = x.producer
        lo, hi = _clamp_bounds(node)
        if p is None or lo is None or t.qparams is None:
            return False
        if _quantized_bound(lo, t) != t.qparams.zp_value:
            return False
        keep_max = hi is not None and _quantized_bound(hi, t) != t.dtype.qmax
        name = node.outputs[0].name
        if output_at_least_zero_point(rw.graph, p):
            floored = x                       # max(q, zo) is already a no-op
        elif (p.op in RELU_FUSIONS and _only_use_is(rw.graph, x, node)
              and relu_fusion_is_exact(rw.graph, p)):
            floored = _fuse_relu(rw, p, x.name if keep_max else name)
        else:
            return False
        if keep_max:
            floored = rw.create("qnn.clamp", [floored], ClampAttrs(None, hi), name=name)
        rw.replace(node, floored)
        return True


# --- the pass ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuseActivation(Pass):
    """Fold relu / relu6 / hardtanh / clamp into the producing op where bit-exact.

    Requires: a verified graph (constants folded, so biases are constants). Ensures: a verified
    graph with the same reference outputs bit for bit; no `qnn.relu` directly after an op of
    `RELU_FUSIONS` whose only use it is and for which the fusion is exact; running it again
    changes nothing. Run it before kernel grouping (passes/group_kernels.py).
    """

    name: ClassVar[str] = "fuse-activation"

    def run(self, graph: Graph) -> bool:
        stats: Counter[str] = Counter()
        changed = rewrite_greedily(graph, [RedundantRelu(), ReluIntoAnchor(), ClampIntoAnchor()],
                                   stats=stats)
        if stats:
            log.debug("fuse-activation: %s", dict(stats))
        return changed


__all__ = [
    "CLAMP_OPS",
    "RELU_FUSIONS",
    "ClampIntoAnchor",
    "FuseActivation",
    "RedundantRelu",
    "ReluIntoAnchor",
    "add_relu_commutes",
    "conv_relu_commutes",
    "onednn_relu_commutes",
    "output_at_least_zero_point",
    "relu_fusion_is_exact",
]
