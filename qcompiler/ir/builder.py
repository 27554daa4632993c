"""`Builder`: construct graphs with type inference at every step.

```python
b = Builder("main")
x = b.input("x", qtype([1, 3, 8, 8], u8, 0.05, 3))
w = b.const(w_int8, TensorType((4, 3, 3, 3), i8, QParams.per_axis(s, z, 0, "symmetric")), "w")
y = b.op("qnn.conv2d", [x, w], ConvAttrs(...), loc="conv1")
g = b.finish(y)
```
Errors name the op and its inputs, so a frontend's bad node is reported where it is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qcompiler.errors import QCompilerError, TypeInferenceError
from qcompiler.ir.graph import Graph, Value
from qcompiler.ir.printer import format_type
from qcompiler.ir.registry import get_op
from qcompiler.ir.types import TensorType


class Builder:
    def __init__(self, name: str = "main", graph: Graph | None = None) -> None:
        self.graph = graph if graph is not None else Graph(name)

    def input(self, name: str, type: TensorType) -> Value:
        return self.graph.add_input(type, name)

    def const(self, data: np.ndarray, type: TensorType | None = None, name: str = "c",
              loc: str | None = None) -> Value:
        """A constant; `type` defaults to the array's own unquantized type."""
        from qcompiler.ir.types import DType

        data = np.asarray(data)
        if type is None:
            short = {"uint8": "u8", "int8": "i8", "int32": "i32", "int64": "i64",
                     "float32": "f32", "float16": "f16", "float64": "f64", "bool": "b1"}
            if str(data.dtype) not in short:
                raise TypeInferenceError(f"constant {name!r}: unsupported dtype {data.dtype}")
            type = TensorType(tuple(data.shape), DType.from_short(short[str(data.dtype)]))
        return self.graph.add_constant(data, type, name, loc)

    def op(self, op: str, inputs: Sequence[Value], attrs: Any = None, *,
           loc: str | None = None, name: str = "") -> Any:
        """Append `op(inputs) {attrs}`; returns its Value, or a tuple for multi-output ops."""
        opdef = get_op(op)
        if attrs is None:
            attrs = opdef.Attrs()
        types = [v.type for v in inputs]
        try:
            out_types = opdef.infer_types(attrs, types)
        except QCompilerError as e:
            where = f" at {loc}" if loc else ""
            args = ", ".join(format_type(t) for t in types)
            raise TypeInferenceError(f"{op}({args}){where}: {e}") from None
        names = [name] * len(out_types) if name else None
        node = self.graph.create_node(op, inputs, attrs, out_types, loc, names)
        return node.outputs[0] if len(node.outputs) == 1 else node.outputs

    def finish(self, *outputs: Value) -> Graph:
        self.graph.set_outputs(outputs)
        return self.graph
