"""The graph IR: typed `Value`s produced by `Node`s, held in order by a `Graph`.

A `Node` is an op name from the registry, its input values, a frozen attrs dataclass and its
output values. Constants are nodes of op `const` whose data lives in `Graph.constants` under the
const's name. Use lists are kept right by the editing methods (`set_input`, `replace_all_uses`,
`remove_node`), as torch.fx keeps its users map; nothing else assigns `Node.inputs`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import networkx as nx
import numpy as np

from qcompiler.errors import VerifyError
from qcompiler.ir.types import TensorType


class Value:
    """One SSA value: a graph input or one output of a node. Identity is object identity."""

    __slots__ = ("type", "name", "producer", "index", "uses")

    def __init__(self, type: TensorType, name: str = "", producer: Node | None = None,
                 index: int = 0) -> None:
        self.type = type
        self.name = name
        """A name hint, used for printing only."""
        self.producer = producer
        self.index = index
        self.uses: list[tuple[Node, int]] = []
        """(consumer node, input position) pairs."""

    @property
    def is_input(self) -> bool:
        return self.producer is None

    def has_one_use(self) -> bool:
        return len(self.uses) == 1

    def users(self) -> list[Node]:
        seen: dict[int, Node] = {}
        for n, _ in self.uses:
            seen.setdefault(id(n), n)
        return list(seen.values())

    def __repr__(self) -> str:
        return f"Value(%{self.name or '?'}: {self.type})"


class Node:
    """One op application. Build nodes with `Graph.create_node` or the `Builder`."""

    __slots__ = ("op", "inputs", "attrs", "outputs", "loc")

    def __init__(self, op: str, inputs: Sequence[Value], attrs: Any,
                 out_types: Sequence[TensorType], loc: str | None = None,
                 out_names: Sequence[str] | None = None) -> None:
        self.op = op
        self.inputs: tuple[Value, ...] = tuple(inputs)
        self.attrs = attrs
        names = list(out_names) if out_names is not None else [""] * len(out_types)
        self.outputs: tuple[Value, ...] = tuple(
            Value(t, names[i], self, i) for i, t in enumerate(out_types)
        )
        self.loc = loc
        """Where this node came from in the user's model (module path or FX node name)."""

    @property
    def output(self) -> Value:
        """The single output; raises for multi-output nodes."""
        if len(self.outputs) != 1:
            raise VerifyError(f"node {self.op} has {len(self.outputs)} outputs, not one")
        return self.outputs[0]

    def input(self, i: int) -> Value:
        return self.inputs[i]

    @property
    def opdef(self) -> Any:
        from qcompiler.ir.registry import get_op

        return get_op(self.op)

    def __repr__(self) -> str:
        from qcompiler.ir.printer import format_node_brief

        return format_node_brief(self)


class Graph:
    """An ordered list of nodes between graph inputs and outputs, plus constant data."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self.constants: dict[str, np.ndarray] = {}

    # --- construction --------------------------------------------------------------------

    def add_input(self, type: TensorType, name: str) -> Value:
        v = Value(type, name)
        self.inputs.append(v)
        return v

    def create_node(self, op: str, inputs: Sequence[Value], attrs: Any,
                    out_types: Sequence[TensorType], loc: str | None = None,
                    out_names: Sequence[str] | None = None,
                    before: Node | None = None) -> Node:
        """Create a node, register its uses, and insert it (at the end, or before `before`)."""
        node = Node(op, inputs, attrs, out_types, loc, out_names)
        for i, v in enumerate(node.inputs):
            v.uses.append((node, i))
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self._position(before), node)
        return node

    def add_constant(self, data: np.ndarray, type: TensorType, name: str,
                     loc: str | None = None, before: Node | None = None) -> Value:
        """Add a `const` node holding `data` (stored under a unique name) and return its value."""
        from qcompiler.ir.registry import ConstAttrs

        data = np.array(data, order="C")
        type.check_array(data, f"constant {name!r}")
        key = self.unique_constant_name(name)
        self.constants[key] = data
        node = self.create_node("const", [], ConstAttrs(key), [type], loc, [key], before)
        return node.output

    def unique_constant_name(self, hint: str) -> str:
        base = hint or "c"
        key, k = base, 1
        while key in self.constants:
            key = f"{base}_{k}"
            k += 1
        return key

    def set_outputs(self, values: Iterable[Value]) -> None:
        self.outputs = list(values)

    # --- editing -------------------------------------------------------------------------

    def set_input(self, node: Node, i: int, value: Value) -> None:
        old = node.inputs[i]
        old.uses.remove((node, i))
        node.inputs = node.inputs[:i] + (value,) + node.inputs[i + 1:]
        value.uses.append((node, i))

    def replace_all_uses(self, old: Value, new: Value) -> None:
        for node, i in list(old.uses):
            self.set_input(node, i, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def remove_node(self, node: Node) -> None:
        for out in node.outputs:
            if out.uses or any(v is out for v in self.outputs):
                raise VerifyError(f"cannot remove {node!r}: its output is still used")
        for i, v in enumerate(node.inputs):
            v.uses.remove((node, i))
        self.nodes.pop(self._position(node))
        if node.op == "const":
            self.constants.pop(node.attrs.name, None)

    def _position(self, node: Node) -> int:
        for k, n in enumerate(self.nodes):
            if n is node:
                return k
        raise VerifyError(f"node {node!r} is not in graph {self.name}")

    # --- queries -------------------------------------------------------------------------

    def const_data(self, value: Value) -> np.ndarray:
        """The data of a value produced by a `const` node."""
        p = value.producer
        if p is None or p.op != "const":
            raise VerifyError(f"{value!r} is not a constant")
        return self.constants[p.attrs.name]

    def is_const(self, value: Value) -> bool:
        return value.producer is not None and value.producer.op == "const"

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        for n in self.nodes:
            yield from n.outputs

    def to_networkx(self) -> nx.MultiDiGraph:
        """Nodes (keyed by position) with one edge per (producer output, consumer input)."""
        g = nx.MultiDiGraph()
        index = {id(n): k for k, n in enumerate(self.nodes)}
        for k, n in enumerate(self.nodes):
            g.add_node(k, op=n.op)
        for k, n in enumerate(self.nodes):
            for i, v in enumerate(n.inputs):
                if v.producer is not None:
                    g.add_edge(index[id(v.producer)], k, out=v.index, arg=i)
        return g

    def topo_sort(self) -> None:
        """Reorder nodes topologically (stable: keeps the current order where it is free)."""
        g = self.to_networkx()
        if not nx.is_directed_acyclic_graph(g):
            raise VerifyError(f"graph {self.name} has a cycle")
        order = list(nx.lexicographical_topological_sort(g))
        self.nodes = [self.nodes[k] for k in order]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    # --- equality and text ---------------------------------------------------------------

    def structurally_equal(self, other: Graph) -> bool:
        """Same inputs, nodes (ops, attrs, wiring, types, locs), outputs and constant data.

        Value names are hints and do not count; constant names and data do.
        """
        if len(self.inputs) != len(other.inputs) or len(self.nodes) != len(other.nodes):
            return False
        ids_a: dict[int, tuple[int, int]] = {}
        ids_b: dict[int, tuple[int, int]] = {}
        for k, (va, vb) in enumerate(zip(self.inputs, other.inputs)):
            if va.type != vb.type:
                return False
            ids_a[id(va)] = (-1, k)
            ids_b[id(vb)] = (-1, k)
        for k, (na, nb) in enumerate(zip(self.nodes, other.nodes)):
            if (na.op, na.attrs, na.loc) != (nb.op, nb.attrs, nb.loc):
                return False
            if len(na.inputs) != len(nb.inputs) or len(na.outputs) != len(nb.outputs):
                return False
            if [ids_a.get(id(v)) for v in na.inputs] != [ids_b.get(id(v)) for v in nb.inputs]:
                return False
            for j, (oa, ob) in enumerate(zip(na.outputs, nb.outputs)):
                if oa.type != ob.type:
                    return False
                ids_a[id(oa)] = (k, j)
                ids_b[id(ob)] = (k, j)
            if na.op == "const":
                da, db = self.constants[na.attrs.name], other.constants[nb.attrs.name]
                if da.dtype != db.dtype or da.shape != db.shape or not np.array_equal(
                    da, db, equal_nan=da.dtype.kind == "f"
                ):
                    return False
        return [ids_a.get(id(v)) for v in self.outputs] == [
            ids_b.get(id(v)) for v in other.outputs
        ]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Graph) and self.structurally_equal(other)

    __hash__ = None  # type: ignore[assignment]  # graphs are mutable

    def __str__(self) -> str:
        from qcompiler.ir.printer import print_graph

        return print_graph(self)

    def __repr__(self) -> str:
        return f"Graph({self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes)"
