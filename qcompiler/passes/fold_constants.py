"""Constant folding: evaluate nodes whose inputs are all constants with the reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qcompiler.ir.graph import Graph
from qcompiler.ir.registry import Sig
from qcompiler.passes.manager import Pass
from qcompiler.passes.rewrite import remove_dead_nodes
from qcompiler.reference.interpreter import run_node


@dataclass(frozen=True)
class FoldConstants(Pass):
    """Replace a node whose inputs are all constants by constants holding its results.

    The results come from the op's reference, so they equal what the graph computed at run
    time bit for bit (compiled code equals the reference). Quantizing constant float weights
    becomes a constant of quantized storage this way.

    Requires: a verified graph. Ensures: a verified graph with the same outputs bit for bit;
    no node (other than const) has only constant inputs, unless its result would exceed
    `max_elements` (folding must not blow up the artifact, e.g. a broadcast).
    """

    name: ClassVar[str] = "fold-constants"
    max_elements: int = 1 << 24

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes):
            if node.op == "const" or not node.inputs:
                continue
            if not all(graph.is_const(v) for v in node.inputs):
                continue
            if sum(o.type.numel for o in node.outputs) > self.max_elements:
                continue
            sig = Sig(tuple(v.type for v in node.inputs), tuple(o.type for o in node.outputs),
                      node.attrs)
            results = run_node(node.op, sig, [graph.const_data(v) for v in node.inputs])
            for out, data in zip(node.outputs, results):
                hint = out.name or node.op.replace(".", "_")
                c = graph.add_constant(data, out.type, hint, node.loc, before=node)
                graph.replace_all_uses(out, c)
            changed = True
        if changed:
            remove_dead_nodes(graph)
        return changed
