"""Layout selection (`select-layout`): keep conv activations packed (NCHW4c) between kernels.

Runs after `prepack-x86-conv`: every `x86.conv2d_packed` can read its input and write its
output (and read its residual) in NCHW or NCHW4c (ops/layout.py). This pass picks, per value,
the layout its consumers read, so that consecutive convs pass NCHW4c to each other and layout
transforms remain only where a consumer cannot read it (pools, depthwise convs, linears,
graph outputs) or a producer cannot write it (graph inputs, pools):

    producers that may write NCHW4c (`_writers`): x86 convs of the channel-lane plan
        (w_layout OIHW16o4i; position-lane convs too with `position_lanes`), element-wise
        ops of `PACKED_ELEMENTWISE` with such an input and no input from a conv path that
        does not write NCHW4c (that would put a transform between convs)
    such a producer's value v is NCHW4c iff every use accepts NCHW4c
    use (u, i) accepts NCHW4c iff
        u is x86.conv2d_packed and i is its input x                  (any x_layout)
        u is x86.conv2d_packed and i its residual, and u's output is NCHW4c
        u is an element-wise op of `PACKED_ELEMENTWISE` (equal shapes, per-tensor qparams),
            and u's output is NCHW4c by the same rule (so a relu before a pool stays NCHW)
        u is a layout_transform NCHW4c -> NCHW                        (a previous run's)
        u is an op registered with `register_layout_op` reading position i  (other modules)
    a graph output never accepts (outputs are NCHW).

Position-lane convs (1x1 convs, the stem, wide rows: lanes = 16 output positions of one
channel) write NCHW by default: interleaving 4 channels into NCHW4c words costs them more than
their consumers save (measured, docs/lowering.md); their consumers read NCHW as before.

Element-wise ops between convs (ResNet's `qnn.add_relu` of two conv paths, a `qnn.relu`, a
`qnn.clamp`) run on the packed layout when their output is packed and some input is: they are
the same function of every element in either layout (padding channels compute values that no
consumer reads). Their NCHW inputs (a pool output on a skip path) get a `layout_transform`.
Decisions are made in reverse graph order (a value's users first), so none depends on a later
one. Convs need no transform nodes at all: their `x_layout`/`out_layout` attrs follow the
choice, and the x86 kernel reads and writes either layout directly.

The rewrite rebuilds the graph in order; existing `layout_transform` nodes dissolve and are
re-created where still needed, so running the pass again gives the same graph (idempotent).

Requires: a verified graph. Ensures: a verified graph with the same reference outputs bit for
bit (layout_transform and the layout attrs are exact data movement); graph inputs and outputs
keep their types; no layout_transform between two convs of a packed chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.registry import get_op
from qcompiler.ops.layout import NCHW, NCHW4C, LayoutTransformAttrs, packed_conv_base
from qcompiler.passes.manager import Pass

PACKED_ELEMENTWISE: frozenset[str] = frozenset({
    "qnn.add", "qnn.add_relu", "qnn.relu", "qnn.relu6", "qnn.hardtanh", "qnn.clamp",
})
"""Element-wise ops that compute the same per-element function in any layout (no broadcasting,
no per-channel parameters, no position-dependent rounding), so they may run on NCHW4c."""

@dataclass(frozen=True)
class LayoutAwareOp:
    """How an op of another module takes part in layout selection (`register_layout_op`).

    The op's type rule must accept the 5-D NCHW4c form at the `reads` positions (and give a
    5-D output when `relayout` asks for one), and its lowering must compute on it; the pass
    then feeds it NCHW4c values without a transform and lets its output stay NCHW4c.
    """

    reads: Callable[[Node], tuple[int, ...]]
    """node -> input positions that may be NCHW4c."""
    writes: Callable[[Node], bool] = lambda node: False
    """node -> whether its output may be NCHW4c (it then counts as a free producer)."""
    relayout: Callable[[Node, tuple[bool, ...], bool], object] | None = None
    """(node, which inputs are NCHW4c, output NCHW4c?) -> the node's new attrs; None: the
    attrs stay and the type rule follows the input shapes."""


PACKED_READERS: dict[str, LayoutAwareOp] = {}
"""op -> its `LayoutAwareOp`: the hook for ops of other modules, e.g. a depthwise conv op
whose kernel reads and writes NCHW4c (an op with layout attrs, as x86.conv2d_packed has:
qnn.conv2d's own type rule takes NCHW only). Use `register_layout_op`."""


def register_layout_op(op: str, rule: LayoutAwareOp) -> None:
    """Let select-layout hand NCHW4c values to `op` (see `LayoutAwareOp`)."""
    PACKED_READERS[op] = rule


def is_packed(v: Value) -> bool:
    """NCHW4c values are the 5-D [N, C/4, H, W, 4] tensors the pass creates."""
    return v.type.rank == 5 and v.type.shape[-1] == 4


def _elementwise_ok(node: Node) -> bool:
    """An element-wise op that may run on NCHW4c: equal 4-D (or already packed) operand
    shapes, per-tensor quantized operands."""
    if node.op not in PACKED_ELEMENTWISE or len(node.outputs) != 1:
        return False
    shape = node.outputs[0].type.shape
    for v in node.inputs:
        qp = v.type.qparams
        if qp is None or qp.axis is not None or v.type.shape != shape:
            return False
    return node.outputs[0].type.rank in (4, 5)


def _residual_index(node: Node) -> int | None:
    return len(node.inputs) - 1 if packed_conv_base(node.attrs).fused_add else None


def _is_unpack(node: Node) -> bool:
    return node.op == "layout_transform" and node.attrs.src == NCHW4C


def _is_pack(node: Node) -> bool:
    return node.op == "layout_transform" and node.attrs.src == NCHW


FREE, BOUNDARY, REFUSES = "free", "boundary", "refuses"


def _writers(graph: Graph, position_lanes: bool) -> dict[int, str]:
    """Producer node id -> FREE (may write NCHW4c at no cost), BOUNDARY (not a conv path: a
    pool, a graph input; a transform after it is a boundary transform) or REFUSES (a conv
    path that should not write NCHW4c). Convs of the position-lane plan (w_layout OIHW4i)
    refuse unless `position_lanes`; an element-wise op is FREE when some input is FREE and
    none REFUSES (else a transform would sit between convs), REFUSES when some input does."""
    kinds: dict[int, str] = {}

    def kind(v: Value) -> str:
        return BOUNDARY if v.producer is None else kinds.get(id(v.producer), BOUNDARY)

    for node in graph.nodes:
        if node.op == "x86.conv2d_packed":
            free = position_lanes or node.attrs.w_layout == "OIHW16o4i"
            kinds[id(node)] = FREE if free else REFUSES
        elif node.op == "layout_transform":           # dissolved by the rebuild
            kinds[id(node)] = kind(node.inputs[0])
        elif node.op in PACKED_READERS:
            kinds[id(node)] = FREE if PACKED_READERS[node.op].writes(node) else BOUNDARY
        elif _elementwise_ok(node):
            ks = {kind(v) for v in node.inputs}
            kinds[id(node)] = (REFUSES if REFUSES in ks else FREE if FREE in ks else BOUNDARY)
    return kinds


def choose_packed(graph: Graph, position_lanes: bool = False) -> set[int]:
    """ids of the (old) values that should be NCHW4c: outputs of convs, packed element-wise
    ops and pack transforms, decided users-first (module doc). `position_lanes`: let convs
    of the position-lane plan write NCHW4c too (`SelectLayout.position_lanes`)."""
    packed: set[int] = set()
    out_ids = {id(v) for v in graph.outputs}
    writers = _writers(graph, position_lanes)

    def accepts(v: Value) -> bool:
        if id(v) in out_ids:
            return False
        for user, i in v.uses:
            if user.op == "x86.conv2d_packed":
                if i == 0:
                    continue
                if i == _residual_index(user) and id(user.outputs[0]) in packed:
                    continue
                return False
            if _is_unpack(user):
                continue
            if _is_pack(user) or _elementwise_ok(user):
                if id(user.outputs[0]) in packed:
                    continue
                return False
            rule = PACKED_READERS.get(user.op)
            if rule is not None and i in rule.reads(user):
                continue
            return False
        return True

    for node in reversed(graph.nodes):
        if writers.get(id(node)) == FREE or _is_pack(node):
            out = node.outputs[0]
            if accepts(out):
                packed.add(id(out))
    return packed


@dataclass
class _Forms:
    """The new graph's values for one old value: NCHW and/or NCHW4c, and its channel count."""

    channels: int
    name: str = ""
    """Name hint of the original value (for transforms)."""
    nchw: Value | None = None
    packed: Value | None = None


@dataclass(frozen=True)
class SelectLayout(Pass):
    """Pick NCHW4c for values between x86 convs (module doc).

    Requires: verified graph (after prepack-x86-conv). Ensures: verified graph, same
    reference outputs bit for bit, idempotent.
    """

    name: ClassVar[str] = "select-layout"
    position_lanes: bool = False
    """Let convs of the position-lane plan (w_layout OIHW4i: 1x1 convs, the stem, wide rows)
    write NCHW4c too. Off: their requantized tile holds 16 positions of one channel, and
    interleaving 4 channels per word costs them more than NCHW4c saves their consumers
    (measured, docs/lowering.md)."""

    def run(self, graph: Graph) -> bool:
        if not any(n.op == "x86.conv2d_packed" for n in graph.nodes):
            return False
        from qcompiler.ir.printer import print_graph

        before = print_graph(graph)
        packed = choose_packed(graph, self.position_lanes)
        new = _rebuild(graph, packed)
        graph.inputs, graph.nodes, graph.outputs = new.inputs, new.nodes, new.outputs
        graph.constants = new.constants
        return print_graph(graph) != before


def _rebuild(graph: Graph, packed: set[int]) -> Graph:
    new = Graph(graph.name)
    env: dict[int, _Forms] = {}
    for v in graph.inputs:
        env[id(v)] = _Forms(_channels(v), v.name, nchw=new.add_input(v.type, v.name))

    def transform(forms: _Forms, to_packed: bool) -> Value:
        src = forms.nchw if to_packed else forms.packed
        assert src is not None
        attrs = LayoutTransformAttrs(NCHW if to_packed else NCHW4C,
                                     NCHW4C if to_packed else NCHW, forms.channels)
        (t,) = get_op("layout_transform").infer_types(attrs, [src.type])
        name = f"{forms.name}_{'nchw4c' if to_packed else 'nchw'}" if forms.name else ""
        node = new.create_node("layout_transform", [src], attrs, [t], None, [name])
        return node.outputs[0]

    def nchw(v: Value) -> Value:
        forms = env[id(v)]
        if forms.nchw is None:
            forms.nchw = transform(forms, False)
        return forms.nchw

    def packed_of(v: Value) -> Value:
        forms = env[id(v)]
        if forms.packed is None:
            forms.packed = transform(forms, True)
        return forms.packed

    for node in graph.nodes:
        if node.op == "const":
            out = node.outputs[0]
            c = new.add_constant(graph.const_data(out), out.type, node.attrs.name, node.loc)
            env[id(out)] = _Forms(0, out.name, nchw=c)
            continue
        if node.op == "layout_transform":  # dissolve; re-created where a consumer needs it
            env[id(node.outputs[0])] = env[id(node.inputs[0])]
            continue
        out = node.outputs[0]
        want_packed = id(out) in packed
        if node.op == "x86.conv2d_packed":
            x = node.inputs[0]
            xf = env[id(x)]
            x_new = xf.packed if xf.packed is not None else xf.nchw
            assert x_new is not None
            ins = [x_new] + [env[id(v)].nchw for v in node.inputs[1:]]
            r = _residual_index(node)
            if r is not None:
                ins[r] = packed_of(node.inputs[r]) if want_packed else nchw(node.inputs[r])
            attrs = replace(node.attrs, x_layout=NCHW4C if is_packed(x_new) else NCHW,
                            out_layout=NCHW4C if want_packed else NCHW)
            channels = attrs.out_channels
        elif want_packed and _elementwise_ok(node) and any(
                env[id(v)].packed is not None for v in node.inputs):
            ins = [packed_of(v) for v in node.inputs]
            attrs = node.attrs
            channels = env[id(node.inputs[0])].channels
        elif node.op in PACKED_READERS:
            rule = PACKED_READERS[node.op]
            reads = rule.reads(node)
            ins = [(env[id(v)].packed or nchw(v)) if i in reads else nchw(v)
                   for i, v in enumerate(node.inputs)]
            want_packed = want_packed and rule.writes(node)
            flags = tuple(is_packed(v) for v in ins)
            attrs = (node.attrs if rule.relayout is None
                     else rule.relayout(node, flags, want_packed))
            channels = 0
        else:
            want_packed = False
            ins = [nchw(v) for v in node.inputs]
            attrs = node.attrs
            channels = 0
        types = get_op(node.op).infer_types(attrs, [v.type for v in ins])
        m = new.create_node(node.op, ins, attrs, types, node.loc, [o.name for o in node.outputs])
        for o, o_new in zip(node.outputs, m.outputs):
            forms = _Forms(channels or _channels(o), o.name)
            if want_packed:
                forms.packed = o_new
            else:
                forms.nchw = o_new
            env[id(o)] = forms
    new.set_outputs(nchw(v) for v in graph.outputs)
    return new


def _channels(v: Value) -> int:
    return v.type.shape[1] if v.type.rank >= 2 else 0


def value_layout(v: Value) -> str:
    """NCHW4c, NCHW (4-D), or the rank ("2-D") of a value, for kernel tables."""
    if is_packed(v):
        return NCHW4C
    return NCHW if v.type.rank == 4 else f"{v.type.rank}-D"


def kernel_summary(graph: Graph, nodes: Sequence[Node], anchor: Node | None) -> dict[str, Any]:
    """One kernel (a kernel group's nodes) as `qcompiler inspect` and the manifest show it:
    anchor op, fused epilogue ops, layouts of the activations it reads and writes (graph
    constants such as packed weights are not listed)."""
    head = anchor if anchor is not None else nodes[-1]
    members = {id(n) for n in nodes}
    ins: list[Value] = []
    for n in nodes:
        for v in n.inputs:
            outside = v.producer is None or id(v.producer) not in members
            if outside and not graph.is_const(v) and all(v is not u for u in ins):
                ins.append(v)
    outs = [o for n in nodes for o in n.outputs
            if any(o is g for g in graph.outputs)
            or any(id(u) not in members for u in o.users())]
    return {"anchor": head.op, "epilogue": [n.op for n in nodes if n is not head],
            "layouts": {"in": [value_layout(v) for v in ins],
                        "out": [value_layout(v) for v in outs]}}


def packed_operands(node: Node) -> tuple[int, ...]:
    """Input positions of `node` that may read NCHW4c (what `choose_packed` assumes)."""
    if node.op == "x86.conv2d_packed":
        r = _residual_index(node)
        return (0,) if r is None else (0, r)
    if _elementwise_ok(node):
        return tuple(range(len(node.inputs)))
    rule = PACKED_READERS.get(node.op)
    return rule.reads(node) if rule is not None else ()


__all__ = [
    "PACKED_ELEMENTWISE",
    "PACKED_READERS",
    "LayoutAwareOp",
    "SelectLayout",
    "choose_packed",
    "is_packed",
    "kernel_summary",
    "packed_operands",
    "register_layout_op",
    "value_layout",
]
