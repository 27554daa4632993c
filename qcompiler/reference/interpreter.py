"""The reference interpreter: runs a graph with each op's numpy `reference`.

This is the oracle: its integer results equal PyTorch's quantized kernels, and compiled code
equals it exactly. It imports no TVM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from qcompiler.errors import InterpretError, QCompilerError
from qcompiler.ir.graph import Graph, Node
from qcompiler.ir.registry import Sig, get_op
from qcompiler.ir.types import TensorType


def to_storage_array(x: Any, ty: TensorType, what: str) -> np.ndarray:
    """Accept a numpy array (storage dtype) or a torch tensor; return the storage array.

    A quantized torch tensor must carry the qparams of `ty`; its int_repr is used.
    """
    if type(x).__module__.startswith("torch"):
        x = _torch_to_numpy(x, ty, what)
    if not isinstance(x, np.ndarray):
        if np.isscalar(x) and ty.shape == ():
            x = np.asarray(x, dtype=ty.dtype.np)
        else:
            raise InterpretError(
                f"{what}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if tuple(x.shape) != ty.shape:
        raise InterpretError(f"{what}: expected shape {list(ty.shape)}, got {list(x.shape)}")
    if x.dtype != ty.dtype.np:
        raise InterpretError(
            f"{what}: expected dtype {ty.dtype.storage} ({ty.torch_dtype_name}), got {x.dtype}")
    return x


def _torch_to_numpy(x: Any, ty: TensorType, what: str) -> np.ndarray:
    if x.is_quantized:
        if ty.qparams is None:
            raise InterpretError(f"{what}: got a quantized tensor, expected {ty.dtype.storage}")
        qp = ty.qparams
        if qp.axis is None:
            ok = (float(x.q_scale()) == qp.scale_value and int(x.q_zero_point()) == qp.zp_value)
        else:
            ok = (int(x.q_per_channel_axis()) == qp.axis
                  and x.q_per_channel_scales().double().tolist() == list(qp.scale)
                  and x.q_per_channel_zero_points().tolist() == list(qp.zero_point))
        if not ok:
            raise InterpretError(f"{what}: the tensor's qparams differ from the graph's {qp}")
        return x.int_repr().contiguous().numpy()
    return x.detach().contiguous().numpy()


def run_node(op_name: str, sig: Sig, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    opdef = get_op(op_name)
    out = opdef.reference(sig, *args)
    return out if isinstance(out, tuple) else (out,)


class Interpreter:
    """Runs graphs node by node. Override `run_node` to observe or replace ops (as in FX)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def run_node(self, node: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        sig = Sig(tuple(v.type for v in node.inputs), tuple(o.type for o in node.outputs),
                  node.attrs)
        return run_node(node.op, sig, args)

    def run(self, *inputs: Any, hook: Callable[[Node, tuple[np.ndarray, ...]], None] | None = None,
            ) -> tuple[np.ndarray, ...]:
        g = self.graph
        if len(inputs) != len(g.inputs):
            raise InterpretError(f"graph {g.name} takes {len(g.inputs)} inputs, got {len(inputs)}")
        env: dict[int, np.ndarray] = {}
        for v, x in zip(g.inputs, inputs):
            env[id(v)] = to_storage_array(x, v.type, f"input %{v.name}")
        for node in g.nodes:
            if node.op == "const":
                env[id(node.output)] = g.constants[node.attrs.name]
                continue
            try:
                args = [env[id(v)] for v in node.inputs]
            except KeyError:
                raise InterpretError(f"node {node!r} uses a value that was never computed"
                                     " (is the graph verified?)") from None
            try:
                outs = self.run_node(node, args)
            except QCompilerError as e:
                raise InterpretError(f"{node.op} failed: {e}\n  in node: {node!r}") from None
            if len(outs) != len(node.outputs):
                raise InterpretError(f"{node.op} reference returned {len(outs)} outputs for"
                                     f" {len(node.outputs)}\n  in node: {node!r}")
            for o, arr in zip(node.outputs, outs):
                if tuple(arr.shape) != o.type.shape or arr.dtype != o.type.dtype.np:
                    raise InterpretError(
                        f"{node.op} reference produced {arr.dtype}{list(arr.shape)}, the node's"
                        f" type is {o.type}\n  in node: {node!r}")
                env[id(o)] = arr
            if hook is not None:
                hook(node, outs)
        return tuple(env[id(v)] for v in g.outputs)


def interpret(graph: Graph, *inputs: Any) -> Any:
    """Run `graph` on numpy arrays (storage dtype) or torch tensors; return numpy arrays.

    One output is returned bare, several as a tuple.
    """
    outs = Interpreter(graph).run(*inputs)
    return outs[0] if len(outs) == 1 else outs
