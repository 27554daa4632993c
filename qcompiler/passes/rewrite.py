"""Pattern rewriting: `Pattern`s rooted at one op, a `Rewriter`, and a greedy worklist driver.

A pattern's `match_and_rewrite(node, rw)` returns False as early as it can (guard clauses
first) and otherwise edits through the rewriter. Patterns never iterate the graph themselves
and never print; the driver counts what fired. The driver runs to a fixpoint with an
iteration cap, failing loudly when it hits the cap, and removes dead nodes as it goes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.registry import get_op
from qcompiler.ir.types import TensorType


class RewriteError(QCompilerError):
    """The greedy driver did not reach a fixpoint."""


class Pattern:
    """Match one root op; rewrite through the Rewriter. `root = None` matches every op."""

    root: ClassVar[str | tuple[str, ...] | None] = None

    def matches_root(self, node: Node) -> bool:
        r = self.root
        return r is None or node.op == r or (isinstance(r, tuple) and node.op in r)

    def match_and_rewrite(self, node: Node, rw: Rewriter) -> bool:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return type(self).__name__


class Rewriter:
    """Graph edits on behalf of a pattern; new nodes go before the node being rewritten."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.anchor: Node | None = None
        self.created: list[Node] = []
        self.touched: list[Node] = []

    def create(self, op: str, inputs: Sequence[Value], attrs: Any = None,
               loc: str | None = None, name: str = "") -> Value:
        """Insert `op(inputs)` before the anchor node (types inferred); return its output."""
        opdef = get_op(op)
        if attrs is None:
            attrs = opdef.Attrs()
        out_types = opdef.infer_types(attrs, [v.type for v in inputs])
        if loc is None and self.anchor is not None:
            loc = self.anchor.loc
        names = [name] * len(out_types) if name else None
        node = self.graph.create_node(op, inputs, attrs, out_types, loc, names, before=self.anchor)
        self.created.append(node)
        return node.outputs[0]

    def create_multi(self, op: str, inputs: Sequence[Value], attrs: Any = None,
                     loc: str | None = None) -> tuple[Value, ...]:
        opdef = get_op(op)
        out_types = opdef.infer_types(attrs if attrs is not None else opdef.Attrs(),
                                      [v.type for v in inputs])
        node = self.graph.create_node(op, inputs, attrs, out_types, loc or (
            self.anchor.loc if self.anchor else None), before=self.anchor)
        self.created.append(node)
        return node.outputs

    def const(self, data: np.ndarray, type: TensorType, name: str) -> Value:
        v = self.graph.add_constant(data, type, name, before=self.anchor)
        assert v.producer is not None
        self.created.append(v.producer)
        return v

    def replace_value(self, old: Value, new: Value) -> None:
        if old.type != new.type:
            raise QCompilerError(f"rewrite would change a type: {old.type} -> {new.type}")
        for user, _ in old.uses:
            self.touched.append(user)
        self.graph.replace_all_uses(old, new)

    def replace(self, node: Node, new: Value | Sequence[Value]) -> None:
        """Replace every output of `node` with `new` (one value or one per output)."""
        news = [new] if isinstance(new, Value) else list(new)
        for old, nv in zip(node.outputs, news):
            self.replace_value(old, nv)

    def set_input(self, node: Node, i: int, value: Value) -> None:
        self.graph.set_input(node, i, value)
        self.touched.append(node)


def is_dead(graph: Graph, node: Node, outputs: set[int]) -> bool:
    return all(not o.uses and id(o) not in outputs for o in node.outputs)


def remove_dead_nodes(graph: Graph) -> int:
    """Remove nodes whose outputs are unused and not graph outputs (all ops are pure)."""
    outputs = {id(v) for v in graph.outputs}
    removed = 0
    for node in reversed(list(graph.nodes)):
        if is_dead(graph, node, outputs):
            graph.remove_node(node)
            removed += 1
    return removed


def rewrite_greedily(graph: Graph, patterns: Sequence[Pattern], max_iterations: int = 100_000,
                     stats: Counter[str] | None = None) -> bool:
    """Apply patterns until none fires. Returns whether anything changed."""
    changed = remove_dead_nodes(graph) > 0
    worklist: list[Node] = list(graph.nodes)
    alive = {id(n) for n in graph.nodes}
    steps = 0
    while worklist:
        node = worklist.pop(0)
        if id(node) not in alive:
            continue
        for pat in patterns:
            if not pat.matches_root(node):
                continue
            rw = Rewriter(graph)
            rw.anchor = node
            if pat.match_and_rewrite(node, rw):
                steps += 1
                if steps > max_iterations:
                    raise RewriteError(f"rewriting did not converge after {max_iterations} "
                                       f"rewrites (last: {pat.name} on {node!r})")
                if stats is not None:
                    stats[pat.name] += 1
                changed = True
                remove_dead_nodes(graph)
                alive = {id(n) for n in graph.nodes}
                # revisit what the rewrite created and what now consumes its results
                worklist = rw.created + [n for n in rw.touched if id(n) in alive] + worklist
                break
    return changed
