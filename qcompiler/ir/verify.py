"""The verifier: structure (order, use lists, registered ops) and types (re-run inference).

Type rules live only in each op's `infer_type`; the verifier re-runs it and compares, so
nothing here re-implements an op's rules. Messages name the node in text form.
"""

from __future__ import annotations

from qcompiler.errors import QCompilerError, VerifyError
from qcompiler.ir.graph import Graph, Node
from qcompiler.ir.registry import get_op


def _fail(node: Node, msg: str) -> VerifyError:
    where = f" (from {node.loc})" if node.loc else ""
    return VerifyError(f"{msg}\n  in node: {node!r}{where}")


def verify(graph: Graph) -> None:
    """Raise VerifyError describing the first broken rule; return None for a valid graph."""
    defined: set[int] = set()
    for v in graph.inputs:
        if v.producer is not None:
            raise VerifyError(f"graph input %{v.name} has a producer")
        defined.add(id(v))
    seen_nodes: set[int] = set()
    for node in graph.nodes:
        if id(node) in seen_nodes:
            raise _fail(node, "node appears twice in the graph")
        seen_nodes.add(id(node))
        for i, v in enumerate(node.inputs):
            if id(v) not in defined:
                raise _fail(node, f"input {i} (%{v.name or '?'}) is used before it is defined"
                                  " or is not in this graph")
            if (node, i) not in v.uses:
                raise _fail(node, f"use list of input {i} (%{v.name or '?'}) misses this node")
        try:
            opdef = get_op(node.op)
        except VerifyError as e:
            raise _fail(node, str(e)) from None
        if node.op == "const":
            _verify_const(graph, node)
        else:
            try:
                expected = opdef.infer_types(node.attrs, [v.type for v in node.inputs])
            except QCompilerError as e:
                raise _fail(node, f"{node.op}: {e}") from None
            actual = tuple(o.type for o in node.outputs)
            if len(expected) != len(actual):
                raise _fail(node, f"{node.op} produces {len(expected)} outputs, node has"
                                  f" {len(actual)}")
            for k, (e, a) in enumerate(zip(expected, actual)):
                if e != a:
                    raise _fail(node, f"{node.op} output {k} has type {a}, but the op's type"
                                      f" rule gives {e}")
            try:
                opdef.verify(node)
            except QCompilerError as e:
                raise _fail(node, f"{node.op}: {e}") from None
        for k, out in enumerate(node.outputs):
            if out.producer is not node or out.index != k:
                raise _fail(node, f"output {k} does not point back to its node")
            for user, i in out.uses:
                if id(user) not in seen_nodes and not any(user is n for n in graph.nodes):
                    raise _fail(node, f"output {k} is used by a node outside the graph")
                if user.inputs[i] is not out:
                    raise _fail(node, f"output {k} has a stale use entry")
            defined.add(id(out))
    for k, v in enumerate(graph.outputs):
        if id(v) not in defined:
            raise VerifyError(f"graph output {k} (%{v.name or '?'}) is not defined in the graph")
    if not graph.outputs:
        raise VerifyError(f"graph {graph.name} has no outputs")


def _verify_const(graph: Graph, node: Node) -> None:
    if node.inputs:
        raise _fail(node, "const takes no inputs")
    name = node.attrs.name
    if name not in graph.constants:
        raise _fail(node, f"constant data {name!r} is missing from the graph")
    try:
        node.output.type.check_array(graph.constants[name], f"constant {name!r}")
    except VerifyError as e:
        raise _fail(node, str(e)) from None
