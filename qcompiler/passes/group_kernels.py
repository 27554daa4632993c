"""Kernel grouping: which nodes are lowered together into one PrimFunc (an analysis).

`group_kernels(graph)` partitions the graph's non-const nodes into `NodeGroup`s; the driver
hands them to `lowering.to_relax.lower_graph` (as `KernelGroup`s) at opt_level >= 2. The graph
itself is not changed, so the reference semantics are trivially kept; what a group buys is one
kernel and one pass over memory: the conv's int32 accumulator tile is requantized, relu'd and
added to the residual in registers instead of round-tripping each intermediate through memory.

A group is a chain n1 -> n2 -> ... -> nk where each n_i (i < k) has one output, used by
n_{i+1} alone (possibly as several of its operands) and not a graph output. Two kinds:

1. **Anchored**: n1 is an anchor, an op whose `schedule_kind` is not injective or opaque (conv,
   dense, reduction: pools, norms, softmax, ...). n2..nk are its epilogue: injective ops that
   keep the anchor's index space (output shape == the chained operand's shape, and not a data
   movement op from `INDEX_REMAPPING_OPS`), e.g. requantize, relu, clamp, add with another
   input, dequantize, float elementwise math, quantize. The generic schedule computes such an
   epilogue under the anchor's output tile (`reverse_compute_at`); a permute or gather there
   would need the whole anchor output first. Anchors claim their epilogues first.
2. **Elementwise**: the remaining nodes, in graph order, start a chain of injective
   single-output ops (any injective op, data movement included: the generic injective rule
   inlines the whole chain into its last block). Opaque and multi-output nodes stay alone.

A chain is convex, i.e. no path leaves the group and comes back: only nk's output leaves the
group, so such a path would start at nk and reach some n_j, while n_j reaches nk along the
chain; that is a cycle, and graphs are acyclic. For the same reason the groups of a partition
into chains have an acyclic dependency order. `check_groups` checks both (tests use it).

What does not join a group, on purpose: an elementwise chain *before* an anchor (the conv
would recompute it per reduction step); a second consumer of any intermediate value (it must
be written to memory anyway; the value ends its group); another anchor (one reduction per
kernel).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.registry import get_op

INDEX_REMAPPING_OPS: frozenset[str] = frozenset({
    "as_strided", "chunk", "expand", "f.cat", "f.embedding", "f.interpolate", "flatten",
    "index_select", "permute", "qnn.cat", "qnn.cat_relu", "qnn.embedding",
    "qnn.upsample_bilinear", "qnn.upsample_nearest", "reshape", "resize", "select", "slice",
    "split", "squeeze", "stack", "transpose", "unsqueeze",
})
"""Injective ops that move data (output element i reads input elements elsewhere than i);
they never join an anchor's epilogue. Some keep the shape (a square transpose), so the
shape test alone cannot tell."""


class GroupingError(QCompilerError):
    """Kernel groups that do not partition the graph, or a non-convex group."""


@dataclass(frozen=True)
class NodeGroup:
    """Nodes lowered into one PrimFunc, in graph order; `anchor` names it and picks the
    schedule (None: the lowering's default, the last node of an elementwise chain)."""

    nodes: tuple[Node, ...]
    anchor: Node | None = None

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(n.op for n in self.nodes)


# --- classification ------------------------------------------------------------------------------


def schedule_kind(node: Node) -> str:
    return get_op(node.op).schedule_kind


def is_anchor(node: Node) -> bool:
    """Ops that start an anchored group: conv, dense, reductions."""
    return schedule_kind(node) not in ("injective", "opaque")


def is_injective(node: Node) -> bool:
    return schedule_kind(node) == "injective"


def joins_epilogue(user: Node, operand: Value) -> bool:
    """`user` can run under the output tile of the anchor that produced `operand`."""
    return (is_injective(user) and len(user.outputs) == 1
            and user.op not in INDEX_REMAPPING_OPS
            and user.outputs[0].type.shape == operand.type.shape)


def joins_elementwise_chain(user: Node) -> bool:
    return is_injective(user) and len(user.outputs) == 1


def sole_user(graph: Graph, node: Node) -> Node | None:
    """The one node that uses `node`'s single output, if there is exactly one such node and
    the output is not a graph output; else None (the group must end at `node`)."""
    if len(node.outputs) != 1:
        return None
    v = node.outputs[0]
    if any(o is v for o in graph.outputs):
        return None
    users = v.users()
    return users[0] if len(users) == 1 else None


# --- the analysis --------------------------------------------------------------------------------


def group_kernels(graph: Graph) -> list[NodeGroup]:
    """Partition the non-const nodes into anchored and elementwise chains (module doc)."""
    taken: set[int] = set()

    def grow(start: Node, accepts_user: Callable[[Node, Value], bool]) -> list[Node]:
        chain = [start]
        taken.add(id(start))
        while True:
            tail = chain[-1]
            user = sole_user(graph, tail)
            if user is None or id(user) in taken:
                return chain
            if not accepts_user(user, tail.outputs[0]):
                return chain
            chain.append(user)
            taken.add(id(user))

    anchored: dict[int, NodeGroup] = {}
    for node in graph.nodes:
        if node.op != "const" and is_anchor(node):
            anchored[id(node)] = NodeGroup(tuple(grow(node, joins_epilogue)), node)

    groups: list[NodeGroup] = []
    for node in graph.nodes:
        if node.op == "const":
            continue
        if id(node) in anchored:
            groups.append(anchored[id(node)])
        elif id(node) not in taken:
            if is_injective(node) and len(node.outputs) == 1:
                chain = grow(node, lambda user, _v: joins_elementwise_chain(user))
            else:
                taken.add(id(node))
                chain = [node]
            groups.append(NodeGroup(tuple(chain)))
    return groups


# --- checks --------------------------------------------------------------------------------------


def is_convex(graph: Graph, nodes: Sequence[Node]) -> bool:
    """No path leaves `nodes` and comes back (searches forward from the group's outside users)."""
    members = {id(n) for n in nodes}
    stack = [u for n in nodes for o in n.outputs for u in o.users() if id(u) not in members]
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        for o in n.outputs:
            for u in o.users():
                if id(u) in members:
                    return False
                stack.append(u)
    return True


def check_groups(graph: Graph, groups: Sequence[NodeGroup]) -> None:
    """Raise GroupingError unless `groups` partition the non-const nodes into convex groups."""
    owner: dict[int, int] = {}
    for gi, g in enumerate(groups):
        if not g.nodes:
            raise GroupingError(f"kernel group {gi} is empty")
        for n in g.nodes:
            if id(n) in owner:
                raise GroupingError(f"node {n!r} is in kernel groups {owner[id(n)]} and {gi}")
            owner[id(n)] = gi
        if not is_convex(graph, g.nodes):
            raise GroupingError(f"kernel group {gi} is not convex (a path leaves it and comes "
                                f"back): {list(g.ops)}")
    missing = [n for n in graph.nodes if n.op != "const" and id(n) not in owner]
    if missing:
        raise GroupingError(f"nodes in no kernel group: {missing[:3]}")


__all__ = [
    "INDEX_REMAPPING_OPS",
    "GroupingError",
    "NodeGroup",
    "check_groups",
    "group_kernels",
    "is_anchor",
    "is_convex",
    "joins_epilogue",
]
