"""Dead-code elimination and common-subexpression elimination."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from qcompiler.ir.graph import Graph, Node
from qcompiler.ir.printer import const_digest
from qcompiler.passes.manager import Pass
from qcompiler.passes.rewrite import remove_dead_nodes


@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Remove nodes whose results reach no graph output.

    Requires: a verified graph. Ensures: a verified graph computing the same outputs bit for
    bit (every op is pure); unused constants are dropped with their data.
    """

    name: ClassVar[str] = "dce"

    def run(self, graph: Graph) -> bool:
        return remove_dead_nodes(graph) > 0


@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    """Merge nodes with the same op, attrs and inputs; merge constants with equal data.

    Requires: a verified graph. Ensures: a verified graph computing the same outputs bit for
    bit; no two nodes compute the same thing.
    """

    name: ClassVar[str] = "cse"

    def run(self, graph: Graph) -> bool:
        seen: dict[Any, Node] = {}
        changed = False
        for node in list(graph.nodes):
            key = self._key(graph, node)
            if key is None:
                continue
            prev = seen.get(key)
            if prev is None:
                seen[key] = node
                continue
            for old, new in zip(node.outputs, prev.outputs):
                graph.replace_all_uses(old, new)
            changed = True
        if changed:
            remove_dead_nodes(graph)
        return changed

    @staticmethod
    def _key(graph: Graph, node: Node) -> Any:
        types = tuple(o.type for o in node.outputs)
        if node.op == "const":
            data = graph.constants[node.attrs.name]
            return ("const", types, const_digest(data))
        try:
            hash(node.attrs)
        except TypeError:
            return None
        return (node.op, node.attrs, tuple(id(v) for v in node.inputs), types)
