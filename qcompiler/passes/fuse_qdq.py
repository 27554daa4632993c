"""fuse-qdq: fold dequantize -> float op -> quantize chains into integer ops.

PT2E graphs (and any graph with explicit Q/DQ) compute every quantized op in float between a
`dequantize` and a `quantize`. This pass rewrites each chain it can express as integer ops of
the op set, and leaves the rest in float, reporting it.

The patterns and their documented bound: each fused op's result against the unfused chain's
on the same inputs, on the reference interpreter. The float chain rounds once, in `quantize`;
the integer op rounds the way PyTorch's kernel does, so near rounding ties the two may differ
by 1 LSB. Rates from tests/passes/test_fuse_qdq.py::test_measured_rates (QC_MEASURE_N=200;
inputs uniform over the storage range, output qparams calibrated on the float result):
"random" draws log-uniform scales, "ties" round ones (0.1, 0.25, 1/255, ...) whose ratios make
exact rounding ties.

==============  =====================================================  =====  ==================
pattern         rewrite                                                bound  measured (random /
                                                                              ties)
==============  =====================================================  =====  ==================
DqConvQ         q(act(f.conv2d(dq x, dq W, b)))                        1 LSB  3e-5 / 0 (relu),
                  -> qnn.conv2d[_relu] (+ qnn.clamp for clamp/relu6)          0 / 0 otherwise
                q(act(f.add(f.conv2d(dq x, dq W, b), dq e)))           1 LSB  0 / 0
                  -> qnn.conv2d_add[_relu] (symmetric weights)
DqLinearQ       q(act(f.linear(dq x, dq W, b))) -> qnn.linear[_relu]   1 LSB  0 / 0
DqAddQ          q(act(f.add(dq a, dq b))) -> qnn.add[_relu]            1 LSB  0 / 2.7e-2
                                                                              (relu: 0 / 8e-3)
DqPoolQ         q(f.adaptive_avg_pool2d(dq x)) / q(f.mean(dq x))       1 LSB  0 / 0
                  -> qnn.adaptive_avg_pool2d / qnn.mean (same qparams in and out)
DqCatQ          q(f.cat(dq x1, ..., dq xn)) -> qnn.cat                 1 LSB  0 / 0
DqUnaryQ        q(f.hardswish | f.sigmoid | f.leaky_relu | f.gelu |    1 LSB  4e-5 / 6e-3
                  f.hardsigmoid | f.tanh (dq x)) -> qnn.<same>                (hardswish)
                  when its output qparams can be the quantize's
SinkDequantize  op(dq x) -> dq(op'(x)) for reshape, flatten, permute,  exact
                  transpose, squeeze, unsqueeze (op' = op), f.max_pool2d
                  (op' = qnn.max_pool2d), f.relu (op' = qnn.relu)
HoistQuantize   q(move(y)) -> move(q(y)) for the same data movement;   exact
                  q(f.max_pool2d(y)) -> qnn.max_pool2d(q(y));
                  q(f.cat(y1..yn)) -> qnn.cat(q(y1)..q(yn)) (a float input)
FoldQdq         q(dq x) -> x (same dtype and qparams, 8-bit), else     exact
                  requantize(x) (the IR's requantize is q(dq(x)))
==============  =====================================================  =====  ==================

Against PyTorch's execution of PT2E-converted models (X86InductorQuantizer; teacher-forced, see
testing/pt2e.py; tests/frontends/test_pt2e.py): resnet18 1 of 229888 quantized values differ
(qnn.conv2d 1/14336), mobilenet_v2 26 of 289984 (qnn.adaptive_avg_pool2d 25/1280: PyTorch's
float mean lands on either side of exact .5 ties, the integer pool rounds them to even; the
importer's float graph differs there the same way), the small test models 0; always 1 LSB.

`act` is nothing, `f.relu`, or `f.clamp` (hardtanh, relu6): quantize is monotone, so
q(clamp(v, lo, hi)) = clamp(q(v), q(lo), q(hi)), and the integer clamp quantizes its bounds.
Max pooling and relu commute exactly with dequantize (it is monotone and dequantizes the zero
point to exactly 0), and so does data movement. A max pool between a dequantize and a
quantize with the same qparams (what X86InductorQuantizer emits) thus becomes qnn.max_pool2d
bit-exactly via SinkDequantize + FoldQdq.

What stays float, and why (each is listed in the pass result's `report` and logged):
- ops whose result is not quantized (e.g. a conv feeding a float pooling, the last linear);
- ops whose operands the integer op cannot take: qint8 activations for conv/linear (PyTorch,
  and so the op set, has only quint8 convolutions), per-channel activations, quantize to a
  dtype the integer op does not output;
- average pools and means whose output qparams differ from their input's (requantizing the
  already rounded integer mean could be off by more than 1 LSB);
- ops with no integer form (f.softmax, f.layer_norm, f.matmul of float weights, ...).

Requires: a verified graph; quantize qparams are attributes (constants).
Ensures: a verified graph; on the reference interpreter each fused op's result is within its
bound above of the chain it replaced, given the same inputs (a 1-LSB difference then reaches
later ops as an input difference, as any re-rounding would); running it again changes nothing.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.registry import get_op
from qcompiler.ir.types import QParams, TensorType, i8, u8
from qcompiler.passes.dce import DeadCodeElimination
from qcompiler.passes.manager import Pass, Pipeline
from qcompiler.passes.rewrite import Pattern, Rewriter, rewrite_greedily

log = logging.getLogger("qcompiler.passes.fuse_qdq")


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FloatOpReport:
    """One float op left in the graph by fuse-qdq, and why it has no integer form there."""

    op: str
    name: str
    """The op's result name (the PyTorch node name for imported graphs)."""
    loc: str | None
    reason: str

    def __str__(self) -> str:
        where = f" ({self.loc})" if self.loc and self.loc != self.name else ""
        return f"{self.op} %{self.name}{where}: {self.reason}"


@dataclass
class FuseQdqResult:
    changed: bool
    fired: Counter[str] = field(default_factory=Counter)
    """How often each pattern fired."""
    report: list[FloatOpReport] = field(default_factory=list)
    """The float ops that stay float, with the reason."""


# --- matching helpers ------------------------------------------------------------------------


def _producer(v: Value, *ops: str) -> Node | None:
    p = v.producer
    return p if p is not None and p.op in ops else None


def _dq_source(v: Value) -> Value | None:
    """x when v = dequantize(x)."""
    p = _producer(v, "dequantize")
    return p.inputs[0] if p is not None else None


def _only_use(graph: Graph, v: Value) -> bool:
    """v feeds exactly one node input and is not a graph output (so it can be fused away)."""
    return v.has_one_use() and not any(o is v for o in graph.outputs)


def _per_tensor(t: TensorType) -> bool:
    return t.qparams is not None and t.qparams.axis is None


def _infer(op: str, attrs: Any, types: Sequence[TensorType]) -> TensorType | str:
    """The single result type of `op` on `types`, or the type rule's message."""
    try:
        outs = get_op(op).infer_types(attrs, list(types))
    except QCompilerError as e:
        return str(e)
    return outs[0] if len(outs) == 1 else f"{op} has {len(outs)} results"


class _Notes:
    """Why an anchor float op was not fused (the last reason a pattern gave), by node id."""

    def __init__(self) -> None:
        self.by_node: dict[int, str] = {}

    def note(self, node: Node, reason: str) -> bool:
        self.by_node[id(node)] = reason
        return False


class _QdqPattern(Pattern):
    """A pattern with access to the pass's notes."""

    def __init__(self, notes: _Notes) -> None:
        self.notes = notes


@dataclass(frozen=True)
class _Epilogue:
    """The activation between an anchor op and its quantize: none, relu, or clamp(lo, hi)."""

    node: Node | None
    relu: bool = False
    clamp: tuple[float | None, float | None] | None = None


def _epilogue(graph: Graph, v: Value) -> tuple[_Epilogue, Value]:
    """Split `v` (a quantize's input) into an activation and the value it applies to."""
    act = _producer(v, "f.relu", "f.clamp")
    if act is None or not _only_use(graph, v) or not _only_use(graph, act.inputs[0]):
        return _Epilogue(None), v
    if act.op == "f.relu":
        return _Epilogue(act, relu=True), act.inputs[0]
    lo, hi = act.attrs.min, act.attrs.max
    if lo == 0.0 and hi is None:
        return _Epilogue(act, relu=True), act.inputs[0]
    if lo is not None and hi is not None and lo > hi:
        return _Epilogue(None), v  # min > max gives max everywhere: leave it alone
    return _Epilogue(act, clamp=(lo, hi)), act.inputs[0]


def _emit(rw: Rewriter, q: Node, op: str, inputs: Sequence[Value], attrs: Any,
          epi: _Epilogue) -> None:
    """Create `op` (+ the clamp epilogue) named after the quantize and replace the quantize."""
    from qcompiler.ops.activation import ClampAttrs

    name = q.output.name
    if epi.clamp is None:
        out = rw.create(op, inputs, attrs, name=name)
    else:
        pre = rw.create(op, inputs, attrs, name=f"{name}_pre" if name else "")
        out = rw.create("qnn.clamp", [pre], ClampAttrs(*epi.clamp), name=name)
    rw.replace(q, out)


def _check(q: Node, op: str, inputs: Sequence[Value], attrs: Any, epi: _Epilogue) -> str | None:
    """Type-check the replacement before creating anything: None or the reason it fails."""
    from qcompiler.ops.activation import ClampAttrs

    try:
        (t,) = get_op(op).infer_types(attrs, [v.type for v in inputs])
        if epi.clamp is not None:
            (t,) = get_op("qnn.clamp").infer_types(ClampAttrs(*epi.clamp), [t])
    except QCompilerError as e:
        return str(e)
    except ValueError as e:
        return f"{op}: {e}"
    if t != q.output.type:
        return f"{op} would produce {t}, the quantize produces {q.output.type}"
    return None


def _quantize_out(q: Node) -> tuple[QParams, Any] | None:
    qp = q.output.type.qparams
    if qp is None or qp.axis is not None:
        return None
    return qp, q.output.type.dtype


# --- patterns: anchors -----------------------------------------------------------------------


class DqConvQ(_QdqPattern):
    """q(act(f.conv2d(dq x, dq W, b))) -> qnn.conv2d[_relu]; with a residual
    q(act(f.add(f.conv2d(...), dq e))) -> qnn.conv2d_add[_relu]. Bound: 1 LSB."""

    root = "quantize"

    def match_and_rewrite(self, q: Node, rw: Rewriter) -> bool:
        from qcompiler.ops.conv import ConvAttrs

        g = rw.graph
        if _quantize_out(q) is None:
            return False
        epi, v = _epilogue(g, q.inputs[0])
        anchor = v.producer
        if anchor is None or not _only_use(g, v):
            return False
        residual: Value | None = None
        conv: Node | None = None
        if anchor.op == "f.add":
            for side in (0, 1):
                c = _producer(anchor.inputs[side], "f.conv2d")
                e = _dq_source(anchor.inputs[1 - side])
                if c is not None and e is not None and _only_use(g, anchor.inputs[side]):
                    conv, residual = c, e
                    break
            if conv is None:
                return False
        elif anchor.op == "f.conv2d":
            conv = anchor
        else:
            return False
        x, w = _dq_source(conv.inputs[0]), _dq_source(conv.inputs[1])
        if x is None or w is None:
            return self.notes.note(conv, "its input or weight is not a dequantized value")
        if not g.is_const(w) or (len(conv.inputs) == 3 and not g.is_const(conv.inputs[2])):
            return self.notes.note(conv, "its weight or bias is not a constant")
        a = conv.attrs
        attrs = ConvAttrs(q.attrs.qparams, stride=a.stride, padding=a.padding,
                          dilation=a.dilation, groups=a.groups)
        op = "qnn.conv2d" + ("_add" if residual is not None else "") + (
            "_relu" if epi.relu else "")
        inputs = [x, w, *conv.inputs[2:]] + ([residual] if residual is not None else [])
        why = _check(q, op, inputs, attrs, epi)
        if why is not None:
            if residual is not None:
                self.notes.note(anchor, why)
            return self.notes.note(conv, why)
        _emit(rw, q, op, inputs, attrs, epi)
        return True


class DqLinearQ(_QdqPattern):
    """q(act(f.linear(dq x, dq W, b))) -> qnn.linear[_relu]. Bound: 1 LSB."""

    root = "quantize"

    def match_and_rewrite(self, q: Node, rw: Rewriter) -> bool:
        from qcompiler.ops.linear import LinearAttrs

        g = rw.graph
        out = _quantize_out(q)
        if out is None:
            return False
        epi, v = _epilogue(g, q.inputs[0])
        lin = _producer(v, "f.linear")
        if lin is None or not _only_use(g, v):
            return False
        x, w = _dq_source(lin.inputs[0]), _dq_source(lin.inputs[1])
        if x is None or w is None:
            return self.notes.note(lin, "its input or weight is not a dequantized value")
        if not g.is_const(w) or (len(lin.inputs) == 3 and not g.is_const(lin.inputs[2])):
            return self.notes.note(lin, "its weight or bias is not a constant")
        op = "qnn.linear_relu" if epi.relu else "qnn.linear"
        attrs = LinearAttrs(out[0], out[1])
        inputs = [x, w, *lin.inputs[2:]]
        why = _check(q, op, inputs, attrs, epi)
        if why is not None:
            return self.notes.note(lin, why)
        _emit(rw, q, op, inputs, attrs, epi)
        return True


class DqAddQ(_QdqPattern):
    """q(act(f.add(dq a, dq b))) -> qnn.add[_relu]. Bound: 1 LSB."""

    root = "quantize"

    def match_and_rewrite(self, q: Node, rw: Rewriter) -> bool:
        from qcompiler.ops.elementwise import QBinaryAttrs

        g = rw.graph
        out = _quantize_out(q)
        if out is None:
            return False
        epi, v = _epilogue(g, q.inputs[0])
        add = _producer(v, "f.add")
        if add is None or not _only_use(g, v):
            return False
        a, b = _dq_source(add.inputs[0]), _dq_source(add.inputs[1])
        if a is None or b is None:
            return False  # DqConvQ's case, or a float operand: reported by the sweep
        op = "qnn.add_relu" if epi.relu else "qnn.add"
        attrs = QBinaryAttrs(out[0])
        why = _check(q, op, [a, b], attrs, epi)
        if why is not None:
            return self.notes.note(add, why)
        _emit(rw, q, op, [a, b], attrs, epi)
        return True


class DqPoolQ(_QdqPattern):
    """q(f.adaptive_avg_pool2d(dq x)) -> qnn.adaptive_avg_pool2d(x), q(f.mean(dq x)) ->
    qnn.mean(x), when the quantize has x's dtype and qparams. Bound: 1 LSB."""

    root = "quantize"

    def match_and_rewrite(self, q: Node, rw: Rewriter) -> bool:
        from qcompiler.ops.pool import AdaptivePoolAttrs
        from qcompiler.ops.tensor import QMeanAttrs

        g = rw.graph
        v = q.inputs[0]
        pool = _producer(v, "f.adaptive_avg_pool2d", "f.mean")
        if pool is None or not _only_use(g, v):
            return False
        x = _dq_source(pool.inputs[0])
        if x is None:
            return self.notes.note(pool, "its input is not a dequantized value")
        if x.type.dtype is not q.output.type.dtype or x.type.qparams != q.output.type.qparams:
            return self.notes.note(
                pool, f"its output qparams {q.output.type.qparams} differ from its input's"
                f" {x.type.qparams} (the integer pools keep the input's; requantizing the"
                " rounded mean could be off by more than 1 LSB)")
        if pool.op == "f.adaptive_avg_pool2d":
            op, attrs = "qnn.adaptive_avg_pool2d", AdaptivePoolAttrs(pool.attrs.output_size)
        else:
            op, attrs = "qnn.mean", QMeanAttrs(pool.attrs.dims, pool.attrs.keepdim)
        why = _check(q, op, [x], attrs, _Epilogue(None))
        if why is not None:
            return self.notes.note(pool, why)
        _emit(rw, q, op, [x], attrs, _Epilogue(None))
        return True


class DqCatQ(_QdqPattern):
    """q(f.cat(dq x1, ..., dq xn)) -> qnn.cat(x1, ..., xn). Bound: 1 LSB (exact when every
    input has the output's qparams)."""

    root = "quantize"

    def match_and_rewrite(self, q: Node, rw: Rewriter) -> bool:
        from qcompiler.ops.elementwise import QCatAttrs

        g = rw.graph
        out = _quantize_out(q)
        v = q.inputs[0]
        cat = _producer(v, "f.cat")
        if out is None or cat is None or not _only_use(g, v):
            return False
        xs = [_dq_source(u) for u in cat.inputs]
        if any(x is None for x in xs):
            return self.notes.note(cat, "not every input is a dequantized value")
        inputs = [x for x in xs if x is not None]
        attrs = QCatAttrs(cat.attrs.dim, out[0])
        why = _check(q, "qnn.cat", inputs, attrs, _Epilogue(None))
        if why is not None:
            return self.notes.note(cat, why)
        _emit(rw, q, "qnn.cat", inputs, attrs, _Epilogue(None))
        return True


class DqUnaryQ(_QdqPattern):
    """q(f(dq x)) -> qnn.f(x) for the float-path activations of ops/activation.py whose
    output qparams can be the quantize's. Bound: 1 LSB."""

    root = "quantize"
    OPS: ClassVar[dict[str, str]] = {"f.hardswish": "qnn.hardswish", "f.sigmoid": "qnn.sigmoid",
                                     "f.leaky_relu": "qnn.leaky_relu", "f.gelu": "qnn.gelu",
                                     "f.hardsigmoid": "qnn.hardsigmoid", "f.tanh": "qnn.tanh"}

    def match_and_rewrite(self, q: Node, rw: Rewriter) -> bool:
        from qcompiler.ir.registry import NoAttrs
        from qcompiler.ops import activation as A

        g = rw.graph
        out = _quantize_out(q)
        v = q.inputs[0]
        f = _producer(v, *self.OPS)
        if out is None or f is None or not _only_use(g, v):
            return False
        x = _dq_source(f.inputs[0])
        if x is None:
            return self.notes.note(f, "its input is not a dequantized value")
        op = self.OPS[f.op]
        attrs: Any
        if op == "qnn.hardswish":
            attrs = A.OutQAttrs(out[0])
        elif op == "qnn.sigmoid":
            attrs = A.SigmoidAttrs(out[0])
        elif op == "qnn.leaky_relu":
            attrs = A.LeakyReluAttrs(f.attrs.negative_slope, out[0])
        elif op == "qnn.gelu":
            attrs = A.GeluAttrs(f.attrs.approximate)
        else:
            attrs = NoAttrs()
        why = _check(q, op, [x], attrs, _Epilogue(None))
        if why is not None:
            return self.notes.note(f, why)
        _emit(rw, q, op, [x], attrs, _Epilogue(None))
        return True


# --- patterns: exact canonicalizations -------------------------------------------------------

_MOVES: dict[str, str] = {"reshape": "reshape", "flatten": "flatten", "permute": "permute",
                          "transpose": "transpose", "squeeze": "squeeze",
                          "unsqueeze": "unsqueeze", "f.max_pool2d": "qnn.max_pool2d",
                          "f.relu": "qnn.relu"}


class SinkDequantize(Pattern):
    """op(dq x) -> dq(op'(x)) for data movement, max pooling and relu (exact: dequantize is
    elementwise and monotone, and maps the zero point to exactly 0)."""

    root = tuple(_MOVES)

    def match_and_rewrite(self, node: Node, rw: Rewriter) -> bool:
        x = _dq_source(node.inputs[0])
        if x is None or not _per_tensor(x.type):
            return False
        op = _MOVES[node.op]
        attrs = node.attrs
        if op == "qnn.relu":
            from qcompiler.ir.registry import NoAttrs

            attrs = NoAttrs()
        if isinstance(_infer(op, attrs, [x.type]), str):
            return False
        name = node.output.name
        moved = rw.create(op, [x], attrs, name=f"{name}_q" if name else "")
        rw.replace(node, rw.create("dequantize", [moved], name=name))
        return True


def _q_dq_identity(t: TensorType) -> bool:
    """quantize(dequantize(q)) == q for these qparams: 8-bit, per tensor, and a scale far from
    float32 underflow/overflow, so |q - zp| * s * (1/s) rounds back to q - zp."""
    qp = t.qparams
    return (qp is not None and qp.axis is None and t.dtype in (u8, i8)
            and all(1e-30 < s < 1e30 and math.isfinite(s) for s in qp.scale))


class FoldQdq(Pattern):
    """q(dq x) -> x when the quantize restores x's type exactly, else requantize(x) (the IR's
    requantize is by definition quantize(dequantize(x))). Exact."""

    root = "quantize"

    def match_and_rewrite(self, q: Node, rw: Rewriter) -> bool:
        x = _dq_source(q.inputs[0])
        if x is None:
            return False
        if q.output.type == x.type and _q_dq_identity(x.type):
            dq = q.inputs[0]
            if (x.producer is not None and x.producer.op != "const" and x.has_one_use()
                    and dq.has_one_use() and q.output.name):
                x.name = q.output.name  # x now stands for the quantize: keep its name
            rw.replace(q, x)
            return True
        if _infer("requantize", q.attrs, [x.type]) != q.output.type:
            return False
        rw.replace(q, rw.create("requantize", [x], q.attrs, name=q.output.name))
        return True


_DATA_MOVES = ("reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze")


class HoistQuantize(Pattern):
    """Move a per-tensor quantize above ops it commutes with exactly, so the op producing
    their input meets its quantize:

    - q(move(y)) -> move(q(y)) for data movement (e.g. q(flatten(f.adaptive_avg_pool2d(...))));
    - q(f.max_pool2d(y)) -> qnn.max_pool2d(q(y)) (quantize is monotone);
    - q(f.cat(y1, ..., yn)) -> qnn.cat(q(y1), ..., q(yn)) when some yi is not dequantized
      (X86InductorQuantizer quantizes a cat's output only); the inputs then carry the output's
      qparams and qnn.cat copies them.
    """

    root = "quantize"

    def match_and_rewrite(self, q: Node, rw: Rewriter) -> bool:
        from qcompiler.ops.elementwise import QCatAttrs

        v = q.inputs[0]
        op = _producer(v, *_DATA_MOVES, "f.max_pool2d", "f.cat")
        out = _quantize_out(q)
        if op is None or out is None or not _only_use(rw.graph, v):
            return False
        if op.op == "f.cat" and all(_dq_source(u) is not None for u in op.inputs):
            return False  # DqCatQ's case
        qts = [_infer("quantize", q.attrs, [y.type]) for y in op.inputs]
        if any(isinstance(t, str) for t in qts):
            return False
        new_op = {"f.max_pool2d": "qnn.max_pool2d", "f.cat": "qnn.cat"}.get(op.op, op.op)
        attrs = QCatAttrs(op.attrs.dim, out[0]) if op.op == "f.cat" else op.attrs
        if _infer(new_op, attrs, qts) != q.output.type:  # type: ignore[arg-type]
            return False
        name = q.output.name
        pre = [rw.create("quantize", [y], q.attrs,
                         name=f"{name}_in{k}" if name and len(qts) > 1 else f"{name}_pre")
               for k, y in enumerate(op.inputs)]
        rw.replace(q, rw.create(new_op, pre, attrs, name=name))
        return True


# --- the pass --------------------------------------------------------------------------------

_ANCHORS = {"f.conv2d": "qnn.conv2d", "f.linear": "qnn.linear", "f.add": "qnn.add",
            "f.adaptive_avg_pool2d": "qnn.adaptive_avg_pool2d", "f.mean": "qnn.mean",
            "f.cat": "qnn.cat", "f.max_pool2d": "qnn.max_pool2d", "f.relu": "qnn.relu",
            "f.clamp": "qnn.clamp", **DqUnaryQ.OPS}


def _quantized_later(graph: Graph, v: Value) -> bool:
    """v reaches a quantize directly or through single-use relu/clamp/data movement."""
    for _ in range(8):
        users = v.users()
        if any(u.op == "quantize" for u in users):
            return True
        if len(users) != 1 or users[0].op not in ("f.relu", "f.clamp", *_DATA_MOVES):
            return False
        v = users[0].outputs[0]
    return False


def _why_float(graph: Graph, node: Node, notes: _Notes) -> str:
    reason = notes.by_node.get(id(node))
    if reason is not None:
        return reason
    if node.op not in _ANCHORS:
        return "no integer form in the op set"
    if node.op not in ("f.relu", "f.clamp") and not _quantized_later(graph, node.outputs[0]):
        return "its result is not quantized (the quantizer left it in float)"
    missing = [k for k, v in enumerate(node.inputs) if _dq_source(v) is None
               and not graph.is_const(v)]
    if missing:
        return f"input {missing[0]} is not a dequantized value"
    return f"its operands do not fit {_ANCHORS[node.op]}"


@dataclass(frozen=True)
class FuseQdq(Pass):
    """Fold dequantize -> float op -> quantize chains into integer ops (module doc: patterns,
    bounds, what stays float).

    Requires: a verified graph; quantize nodes have constant qparams.
    Ensures: a verified graph; on the reference interpreter each fused op is within 1 LSB of
    the chain it replaced on the same inputs (SinkDequantize, HoistQuantize and FoldQdq are
    exact); idempotent. `apply` returns the FuseQdqResult (patterns fired, float ops left with
    the reason); `run` logs that report and returns whether anything changed.
    """

    name: ClassVar[str] = "fuse-qdq"

    def apply(self, graph: Graph) -> FuseQdqResult:
        notes = _Notes()
        fired: Counter[str] = Counter()
        patterns: list[Pattern] = [
            SinkDequantize(), FoldQdq(), HoistQuantize(), DqConvQ(notes), DqLinearQ(notes),
            DqAddQ(notes), DqPoolQ(notes), DqCatQ(notes), DqUnaryQ(notes)]
        changed = rewrite_greedily(graph, patterns, stats=fired)
        report = [FloatOpReport(n.op, n.outputs[0].name, n.loc, _why_float(graph, n, notes))
                  for n in graph.nodes if n.op.startswith("f.")]
        for r in report:
            log.info("fuse-qdq: stays float: %s", r)
        if fired:
            log.debug("fuse-qdq: fired %s", dict(fired))
        return FuseQdqResult(changed, fired, report)

    def run(self, graph: Graph) -> bool:
        return self.apply(graph).changed


def qdq_pipeline() -> list[Pass]:
    """What a Q/DQ graph from a frontend goes through: integer fusion, then dead code."""
    return [FuseQdq(), DeadCodeElimination()]


def run_qdq_pipeline(graph: Graph) -> Graph:
    return Pipeline(qdq_pipeline()).run(graph)
