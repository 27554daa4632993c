"""PT2E / torch.export graphs: quantized_decomposed Q/DQ nodes around aten ops.

TODO(#4): the aten table and the QDQ-to-integer rewrite; until then such graphs are refused
with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qcompiler.errors import UnsupportedError
from qcompiler.ir.graph import Graph


def is_pt2e_graph(gm: Any) -> bool:
    for n in gm.graph.nodes:
        if n.op == "call_function" and "quantized_decomposed" in str(n.target):
            return True
        if n.op == "call_function" and str(getattr(n.target, "namespace", "")) == "aten":
            return True
    return False


def import_exported_program(ep: Any, inputs: Sequence[Any], name: str) -> Graph:
    return import_pt2e_module(ep.module(), inputs, name)


def import_pt2e_module(gm: Any, inputs: Sequence[Any], name: str) -> Graph:
    raise UnsupportedError("torch.export / PT2E graphs are not supported yet (issue #4)")
