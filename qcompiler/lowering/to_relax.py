"""Graph -> Relax module: one PrimFunc per kernel, one `call_tir` per kernel call.

A *kernel* is a `KernelGroup`: a set of nodes lowered together into ONE PrimFunc. Each node's
`OpDef.lower(sig, *te_tensors)` is called in graph order; tensors produced inside the group are
passed on as TE tensors (so a conv's requantize epilogue is just another TE stage of the same
PrimFunc), and one `te.create_prim_func` turns the whole group into a function whose
parameters are, in order:

    group inputs (values produced outside the group; graph constants included),
    constant tensors the lowerings asked for (`te_lib.constant`: per-axis scales, ...),
    group outputs (values used outside the group, or graph outputs).

Without fusion every node is its own group (`default_groups`); the fusion passes hand
`lower_graph` their groups instead. Given a `target`, a node whose op has a registered
*strategy* for the target's schedule family (lowering/strategy.py: e.g. the x86 VNNI conv with
prepacked weights) is lowered by that strategy instead of `OpDef.lower`, to the same integers. Kernels whose PrimFuncs are structurally identical share one
function. Function names are readable and stable: `<anchor op>_<shape>_<dtype>` of the group's
last output (`qnn_conv2d_1x32x112x112_i8`), made unique with a `_1`, `_2`... suffix in graph
order. The Relax `main` takes the graph inputs (storage dtypes), binds graph constants with
`relax.const`, and returns the single output or a tuple.

    lowered = lower_graph(graph)             # KernelFuncs (unscheduled) + call sites
    for kf in lowered.funcs:                 # the driver does this through codegen/
        kf.scheduled = my_schedule(kf.func)
    mod = build_relax(lowered)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from qcompiler.errors import LoweringError, QCompilerError
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.registry import Sig, get_op
from qcompiler.ir.types import TensorType
from qcompiler.lowering import te_lib
from qcompiler.lowering.strategy import lower_with_strategy
from qcompiler.lowering.tvm_compat import (
    IRModule,
    PrimFunc,
    Tensor,
    create_prim_func,
    int_shape,
    is_placeholder,
    relax,
    relax_const,
    rename_func,
    structural_key,
    te,
)
from qcompiler.target import TargetPreset

log = logging.getLogger(__name__)

# --- groups --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelGroup:
    """Nodes lowered into one PrimFunc. `anchor` names the kernel and picks its schedule.

    The default anchor is the first node whose `schedule_kind` is not `injective` (the conv or
    dense of a fused group), else the group's last node.
    """

    nodes: tuple[Node, ...]
    anchor: Node | None = None

    def anchor_node(self) -> Node:
        if self.anchor is not None:
            return self.anchor
        for n in self.nodes:
            if get_op(n.op).schedule_kind not in ("injective", "opaque"):
                return n
        return self.nodes[-1]


def default_groups(graph: Graph) -> list[KernelGroup]:
    """One group per node (constants are not kernels: they become `relax.const`)."""
    return [KernelGroup((n,)) for n in graph.nodes if n.op != "const"]


# --- lowered kernels -----------------------------------------------------------------------------


@dataclass
class KernelFunc:
    """One distinct PrimFunc of the module; several call sites may share it."""

    name: str
    func: PrimFunc
    """As `te.create_prim_func` built it (unscheduled), renamed to `name`."""
    op: str
    """The anchor op (`schedule_kind` and op-specific schedule rules come from it)."""
    ops: tuple[str, ...]
    schedule_kind: str
    scheduled: PrimFunc | None = None
    """Set by the scheduler; None means the unscheduled `func` is built."""
    rule: str | None = None
    """Name of the schedule rule that produced `scheduled`."""
    calls: int = 0
    strategy: str | None = None
    """The target strategy that lowered the anchor (lowering/strategy.py), None for `lower()`."""

    @property
    def final(self) -> PrimFunc:
        """The function that goes into the Relax module."""
        return rename_func(self.scheduled if self.scheduled is not None else self.func, self.name)


@dataclass
class Kernel:
    """One call of a KernelFunc: the graph values it reads and writes."""

    func: KernelFunc
    group: KernelGroup
    inputs: tuple[Value, ...]
    constants: tuple[np.ndarray, ...]
    """Data of the `te_lib.constant` tensors, passed after the inputs."""
    outputs: tuple[Value, ...]


@dataclass
class LoweredGraph:
    graph: Graph
    kernels: list[Kernel] = field(default_factory=list)
    """Call sites in execution order."""
    funcs: list[KernelFunc] = field(default_factory=list)
    """Distinct functions, in order of first call."""

    def schedule(self, fn: Callable[[KernelFunc], tuple[PrimFunc | None, str | None]]) -> None:
        """Set `scheduled` and `rule` of every function from `fn(kernel_func)`."""
        for kf in self.funcs:
            kf.scheduled, kf.rule = fn(kf)


# --- naming --------------------------------------------------------------------------------------


def kernel_base_name(op: str, ty: TensorType) -> str:
    """`<op>_<shape>_<dtype>`: `qnn.conv2d`, i8[1,32,112,112] -> `qnn_conv2d_1x32x112x112_i8`."""
    shape = "x".join(str(d) for d in ty.shape) if ty.shape else "scalar"
    return f"{re.sub(r'[^0-9A-Za-z_]', '_', op)}_{shape}_{ty.dtype.short}"


def _unique(base: str, used: set[str]) -> str:
    name, k = base, 1
    while name in used:
        name = f"{base}_{k}"
        k += 1
    used.add(name)
    return name


def _ident(name: str, fallback: str) -> str:
    s = re.sub(r"[^0-9A-Za-z_]", "_", name) or fallback
    return s if not s[0].isdigit() else f"v{s}"


# --- lowering one group --------------------------------------------------------------------------


@dataclass
class _GroupTE:
    inputs: list[Value]
    placeholders: list[Tensor]
    constants: list[tuple[Tensor, np.ndarray]]
    outputs: list[Value]
    out_tensors: list[Tensor]
    strategies: list[str] = field(default_factory=list)


def _strategy_lower(
    node: Node, sig: Sig, args: Sequence[Tensor], target: TargetPreset, strict: bool
) -> tuple[object, str] | None:
    """A target strategy's TE for `node`, or None (no strategy applies: use `lower()`).

    A strategy that raises is skipped with a warning (the generic `lower()` is always
    correct), unless `strict` (tests)."""
    try:
        return lower_with_strategy(node.op, sig, args, target)
    except Exception as e:
        if strict:
            raise LoweringError(
                f"{node.op}: strategy for {target.schedule_family} raised "
                f"{type(e).__name__}: {e}\n  in node: {node!r}"
            ) from e
        log.warning("lowering strategy for %s on %s failed (%s: %s); using lower()",
                    node.op, target.schedule_family, type(e).__name__, e)
        return None


def _lower_node(
    node: Node,
    args: Sequence[Tensor],
    target: TargetPreset | None = None,
    strict: bool = False,
    used: list[str] | None = None,
) -> tuple[Tensor, ...]:
    opdef = get_op(node.op)
    sig = Sig(tuple(v.type for v in node.inputs), tuple(o.type for o in node.outputs), node.attrs)
    found = None if target is None else _strategy_lower(node, sig, args, target, strict)
    try:
        if found is not None:
            out, name = found
            if used is not None:
                used.append(name)
        else:
            out = opdef.lower(sig, *args)
    except QCompilerError as e:
        raise LoweringError(f"{node.op}: {e}\n  in node: {node!r}") from None
    except Exception as e:  # a bug in a lower(): report it with the node, keep the cause
        raise LoweringError(
            f"{node.op}: lower() raised {type(e).__name__}: {e}\n  in node: {node!r}"
        ) from e
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if len(outs) != len(node.outputs):
        raise LoweringError(
            f"{node.op}: lower() returned {len(outs)} tensors for "
            f"{len(node.outputs)} outputs\n  in node: {node!r}"
        )
    for k, (t, v) in enumerate(zip(outs, node.outputs)):
        if not isinstance(t, Tensor):
            raise LoweringError(
                f"{node.op}: lower() output {k} is a {type(t).__name__}, not a TE "
                f"tensor\n  in node: {node!r}"
            )
        if int_shape(t) != v.type.shape or str(t.dtype) != v.type.dtype.storage:
            raise LoweringError(
                f"{node.op}: lower() output {k} is {t.dtype}{list(int_shape(t))}, the node's type "
                f"is {v.type} (storage {v.type.dtype.storage}{list(v.type.shape)})\n"
                f"  in node: {node!r}"
            )
    return tuple(outs)


def _copy(src: Tensor) -> Tensor:
    # NOTE: te.compute rejects lambdas with keyword (default) arguments
    return te.compute(src.shape, lambda *i: src[i], name=f"{src.op.name}_copy")


def _lower_group_te(
    graph: Graph, group: KernelGroup, target: TargetPreset | None = None, strict: bool = False
) -> _GroupTE:
    members = {id(n) for n in group.nodes if n.op != "const"}
    inputs: list[Value] = []
    env: dict[int, Tensor] = {}
    input_data: dict[Tensor, np.ndarray] = {}
    placeholders: list[Tensor] = []
    for n in group.nodes:
        for v in n.inputs:
            if (v.producer is not None and id(v.producer) in members) or id(v) in env:
                continue
            ph = te.placeholder(
                v.type.shape, v.type.dtype.storage, name=_ident(v.name, f"in{len(inputs)}")
            )
            env[id(v)] = ph
            inputs.append(v)
            placeholders.append(ph)
            if graph.is_const(v):
                input_data[ph] = graph.const_data(v)

    used: list[str] = []
    with te_lib.lowering_context(input_data) as ctx:
        for n in group.nodes:
            if n.op == "const":
                continue
            outs = _lower_node(n, [env[id(v)] for v in n.inputs], target, strict, used)
            for v, t in zip(n.outputs, outs):
                env[id(v)] = t

    graph_outputs = {id(v) for v in graph.outputs}
    outputs: list[Value] = []
    out_tensors: list[Tensor] = []
    seen: set[Tensor] = set()
    for n in group.nodes:
        if n.op == "const":
            continue
        for v in n.outputs:
            used_outside = any(id(u) not in members for u, _ in v.uses)
            if not (used_outside or id(v) in graph_outputs):
                continue
            t = env[id(v)]
            if is_placeholder(t) or t in seen:
                # an output must be a fresh computed tensor: copy inputs and repeats
                t = _copy(t)
            seen.add(t)
            outputs.append(v)
            out_tensors.append(t)
    # an input no output reads (the original weight of a strategy that packed its own copy)
    # is not a kernel parameter: it would be bound, and shipped, for nothing
    read = _reachable_ops(out_tensors)
    keep = [k for k, ph in enumerate(placeholders) if ph.op in read]
    inputs = [inputs[k] for k in keep]
    placeholders = [placeholders[k] for k in keep]
    return _GroupTE(inputs, placeholders, list(ctx.constants), outputs, out_tensors, used)


def _reachable_ops(outs: Sequence[Tensor]) -> set[object]:
    """The TE operations the tensors `outs` are computed from (themselves included)."""
    seen: set[object] = set()
    stack = [t.op for t in outs]
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        stack.extend(t.op for t in getattr(op, "input_tensors", ()))
    return seen


# --- the whole graph -----------------------------------------------------------------------------


def _order_groups(graph: Graph, groups: Sequence[KernelGroup]) -> list[KernelGroup]:
    """Check that groups partition the graph's nodes; order them so producers come first."""
    owner: dict[int, int] = {}
    for gi, g in enumerate(groups):
        if not g.nodes:
            raise LoweringError(f"kernel group {gi} is empty")
        for n in g.nodes:
            if n.op == "const":
                continue
            if id(n) in owner:
                raise LoweringError(f"node {n!r} is in kernel groups {owner[id(n)]} and {gi}")
            owner[id(n)] = gi
        if g.anchor is not None and all(g.anchor is not n for n in g.nodes):
            raise LoweringError(f"kernel group {gi}: anchor {g.anchor!r} is not in the group")
    missing = [n for n in graph.nodes if n.op != "const" and id(n) not in owner]
    if missing:
        raise LoweringError(f"nodes in no kernel group: {missing[:3]}")
    position = {id(n): k for k, n in enumerate(graph.nodes)}
    deps: list[set[int]] = []
    for gi, g in enumerate(groups):
        d = set()
        for n in g.nodes:
            for v in n.inputs:
                p = v.producer
                if p is not None and p.op != "const" and owner[id(p)] != gi:
                    d.add(owner[id(p)])
        deps.append(d)
    done: set[int] = set()
    order: list[int] = []
    pending = sorted(
        range(len(groups)), key=lambda gi: min(position[id(n)] for n in groups[gi].nodes)
    )
    while pending:
        ready = [gi for gi in pending if deps[gi] <= done]
        if not ready:
            raise LoweringError(
                "kernel groups depend on each other in a cycle (a group is not convex: a path "
                f"leaves it and comes back); groups involved: {pending[:5]}"
            )
        gi = ready[0]
        pending.remove(gi)
        done.add(gi)
        order.append(gi)
    # nodes inside a group run in graph order
    return [
        KernelGroup(
            tuple(sorted(groups[gi].nodes, key=lambda n: position[id(n)])), groups[gi].anchor
        )
        for gi in order
    ]


def lower_graph(
    graph: Graph,
    groups: Sequence[KernelGroup] | None = None,
    target: TargetPreset | None = None,
    strict: bool = False,
) -> LoweredGraph:
    """Lower every group to a PrimFunc (unscheduled); share structurally identical ones.

    With a `target`, ops with a strategy for its schedule family use it (lowering/strategy.py);
    `strict` re-raises a failing strategy instead of falling back to `lower()`."""
    groups = default_groups(graph) if groups is None else list(groups)
    lowered = LoweredGraph(graph)
    by_key: dict[object, KernelFunc] = {}
    used_names: set[str] = {"main"}
    for group in _order_groups(graph, groups):
        gte = _lower_group_te(graph, group, target, strict)
        if not gte.outputs:
            continue  # nothing computed here is used: dead code
        params = [*gte.placeholders, *(t for t, _ in gte.constants), *gte.out_tensors]
        try:
            func = create_prim_func(params)
        except Exception as e:  # TVM reports malformed TE with its own error types
            raise LoweringError(
                f"te.create_prim_func failed for the kernel of {[n.op for n in group.nodes]}: "
                f"{e}\n  nodes: {list(group.nodes)!r}"
            ) from e
        key = structural_key(func)
        kf = by_key.get(key)
        if kf is None:
            anchor = group.anchor_node()
            name = _unique(kernel_base_name(anchor.op, gte.outputs[-1].type), used_names)
            kf = KernelFunc(
                name,
                rename_func(func, name),
                anchor.op,
                tuple(n.op for n in group.nodes if n.op != "const"),
                get_op(anchor.op).schedule_kind,
                strategy=",".join(gte.strategies) or None,
            )
            by_key[key] = kf
            lowered.funcs.append(kf)
        kf.calls += 1
        lowered.kernels.append(
            Kernel(
                kf, group, tuple(gte.inputs), tuple(a for _, a in gte.constants), tuple(gte.outputs)
            )
        )
    return lowered


def _relax_type(ty: TensorType) -> object:
    return relax.TensorType(ty.shape, ty.dtype.storage)


def build_relax(lowered: LoweredGraph) -> IRModule:
    """The Relax module: `main(graph inputs) -> output | tuple(outputs)` calling the kernels."""
    graph = lowered.graph
    bb = relax.BlockBuilder()
    gvs = {kf.name: bb.add_func(kf.final, kf.name) for kf in lowered.funcs}
    used: set[str] = set()
    params = [
        relax.Var(_unique(_ident(v.name, f"x{k}"), used), _relax_type(v.type))
        for k, v in enumerate(graph.inputs)
    ]
    env: dict[int, object] = {id(v): p for v, p in zip(graph.inputs, params)}

    def value_of(v: Value) -> object:
        r = env.get(id(v))
        if r is None:
            if not graph.is_const(v):
                raise LoweringError(f"{v!r} is used before any kernel computes it")
            r = relax_const(graph.const_data(v))
            env[id(v)] = r
        return r

    with bb.function("main", params):
        with bb.dataflow():
            for k in lowered.kernels:
                args = [value_of(v) for v in k.inputs] + [relax_const(c) for c in k.constants]
                types = [_relax_type(o.type) for o in k.outputs]
                call = relax.call_tir(gvs[k.func.name], args, types if len(types) > 1 else types[0])
                res = bb.emit(call)
                if len(k.outputs) == 1:
                    env[id(k.outputs[0])] = res
                else:
                    for j, o in enumerate(k.outputs):
                        env[id(o)] = bb.emit(relax.TupleGetItem(res, j))
            outs = [value_of(v) for v in graph.outputs]
            out = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(out)
    return bb.get()


def to_relax(
    graph: Graph,
    groups: Sequence[KernelGroup] | None = None,
    schedule: Callable[[KernelFunc], tuple[PrimFunc | None, str | None]] | None = None,
    target: TargetPreset | None = None,
) -> tuple[IRModule, LoweredGraph]:
    """Lower (with `target`'s strategies), optionally schedule (`schedule(kf) -> (PrimFunc |
    None, rule name)`), build."""
    lowered = lower_graph(graph, groups, target)
    if schedule is not None:
        lowered.schedule(schedule)
    return build_relax(lowered), lowered


__all__ = [
    "Kernel",
    "KernelFunc",
    "KernelGroup",
    "LoweredGraph",
    "build_relax",
    "default_groups",
    "kernel_base_name",
    "lower_graph",
    "to_relax",
]
