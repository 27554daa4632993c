"""Deterministic text form of graphs; `parser.parse` reads it back.

```
func @main(%x: u8[1,3,8,8] q(0.05, 3)) -> (u8[1,4,8,8] q(0.1, 0)) {
  %w = const "w" sha256:3f2a9c01d7e4 : i8[4,3,3,3] q([0.01, 0.02, 0.01, 0.03], [0, 0, 0, 0], axis=0, symmetric)
  %b = const "b" dense<[0.5, -1.25, 0.0, 2.0]> : f32[4]
  %y = qnn.conv2d_relu(%x, %w, %b) {stride=[1, 1], padding=[1, 1], ...} : u8[1,4,8,8] q(0.1, 0) loc("conv1")
  return %y
}
```
Every binder is typed inline, as in a jaxpr. Floats print with Python's shortest round-trip repr,
so printing then parsing gives back the same bits. Constants of at most `INLINE_CONST_MAX`
elements print their data; larger ones print a digest and are read back from a constant store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from typing import Any

import numpy as np

from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.types import DType, QParams, TensorType

INLINE_CONST_MAX = 16
_NAME_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def format_float(x: float) -> str:
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


def format_scalar(x: Any) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return format_float(float(x))


def format_qparams(q: QParams) -> str:
    if q.axis is None:
        body = f"{format_float(q.scale[0])}, {format_scalar(q.zero_point[0])}"
    else:
        scales = ", ".join(format_float(s) for s in q.scale)
        zps = ", ".join(format_scalar(z) for z in q.zero_point)
        body = f"[{scales}], [{zps}], axis={q.axis}"
    if q.scheme != "affine":
        body += f", {q.scheme}"
    return f"q({body})"


def format_type(t: TensorType) -> str:
    s = f"{t.dtype.short}[{','.join(str(d) for d in t.shape)}]"
    if t.qparams is not None:
        s += " " + format_qparams(t.qparams)
    return s


def format_attr_value(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, (bool, int, float, np.integer, np.floating, np.bool_)):
        return format_scalar(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, DType):
        return v.short
    if isinstance(v, QParams):
        return format_qparams(v)
    if isinstance(v, TensorType):
        return f"type<{format_type(v)}>"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(format_attr_value(x) for x in v) + "]"
    raise TypeError(f"cannot print attribute value of type {type(v).__name__}: {v!r}")


def format_attrs(attrs: Any) -> str:
    if attrs is None or not dataclasses.is_dataclass(attrs):
        return ""
    # a field declared with metadata {"omit_default": True} is printed only when it differs
    # from its default (attributes added later keep the text of existing graphs unchanged)
    items = [f"{f.name}={format_attr_value(getattr(attrs, f.name))}"
             for f in dataclasses.fields(attrs)
             if not (f.metadata.get("omit_default") and getattr(attrs, f.name) == f.default)]
    return "{" + ", ".join(items) + "}" if items else ""


def const_digest(data: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(data.dtype).encode())
    h.update(repr(tuple(data.shape)).encode())
    h.update(np.ascontiguousarray(data).tobytes())
    return h.hexdigest()[:16]


def format_const_data(data: np.ndarray) -> str:
    if data.size <= INLINE_CONST_MAX:
        return "dense<[" + ", ".join(format_scalar(x) for x in data.reshape(-1).tolist()) + "]>"
    return f"sha256:{const_digest(data)}"


class _Namer:
    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.used: set[str] = set()
        self.counter = 0

    def name(self, v: Value) -> str:
        key = id(v)
        if key in self.names:
            return self.names[key]
        hint = v.name if v.name and _NAME_OK.match(v.name) else ""
        if hint and hint not in self.used:
            n = hint
        else:
            base = hint + "_" if hint else ""
            while True:
                n = f"{base}{self.counter}"
                self.counter += 1
                if n not in self.used:
                    break
        self.used.add(n)
        self.names[key] = n
        return n

    def ref(self, v: Value) -> str:
        return "%" + self.names.get(id(v), "<undefined>")


def format_node(node: Node, namer: _Namer, constants: dict[str, np.ndarray] | None) -> str:
    lhs = ", ".join("%" + namer.name(o) for o in node.outputs)
    types = ", ".join(format_type(o.type) for o in node.outputs)
    if node.op == "const":
        data = constants.get(node.attrs.name) if constants is not None else None
        payload = format_const_data(data) if data is not None else "<missing>"
        text = f"{lhs} = const {json.dumps(node.attrs.name)} {payload} : {types}"
    else:
        args = ", ".join(namer.ref(v) for v in node.inputs)
        attrs = format_attrs(node.attrs)
        text = f"{lhs} = {node.op}({args})" + (f" {attrs}" if attrs else "") + f" : {types}"
    if node.loc:
        text += f" loc({json.dumps(node.loc)})"
    return text


def print_graph(g: Graph) -> str:
    namer = _Namer()
    params = ", ".join(f"%{namer.name(v)}: {format_type(v.type)}" for v in g.inputs)
    rets = ", ".join(format_type(v.type) for v in g.outputs)
    lines = [f"func @{g.name}({params}) -> ({rets}) {{"]
    for n in g.nodes:
        lines.append("  " + format_node(n, namer, g.constants))
    lines.append("  return " + ", ".join(namer.ref(v) for v in g.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"


def format_node_brief(node: Node) -> str:
    """One line for error messages: the node with its own input/output names."""
    namer = _Namer()
    for v in node.inputs:
        namer.name(v)
    text = format_node(node, namer, None)
    return text
