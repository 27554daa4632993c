"""The quantized graph IR: types, values, nodes, graphs, the op registry, text and JSON forms."""

from qcompiler.ir.builder import Builder
from qcompiler.ir.graph import Graph, Node, Value
from qcompiler.ir.parser import parse
from qcompiler.ir.printer import print_graph
from qcompiler.ir.registry import OpDef, OpSample, Sig, all_ops, get_op, register_op
from qcompiler.ir.types import (DType, QParams, TensorType, b1, f16, f32, f64, ftype, i8, i32,
                                i64, qtype, u4, u8)
from qcompiler.ir.verify import verify

__all__ = [
    "Builder", "DType", "Graph", "Node", "OpDef", "OpSample", "QParams", "Sig", "TensorType",
    "Value", "all_ops", "b1", "f16", "f32", "f64", "ftype", "get_op", "i8", "i32", "i64",
    "parse", "print_graph", "qtype", "register_op", "u4", "u8", "verify",
]
