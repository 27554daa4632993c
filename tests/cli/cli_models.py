"""Entry points for the CLI tests: `module:function` returning (model, example_inputs)."""

import numpy as np

from qcompiler.ir import Builder, QParams, ftype, i8, u8
from qcompiler.ops.quant import QuantizeAttrs


def small_graph():
    b = Builder()
    x = b.input("x", ftype([2, 8]))
    q = b.op("quantize", [x], QuantizeAttrs(u8, QParams.per_tensor(0.05, 128)))
    r = b.op("requantize", [q], QuantizeAttrs(i8, QParams.per_tensor(0.1, -3)))
    g = b.finish(b.op("dequantize", [r]))
    return g, (np.linspace(-3, 3, 16, dtype=np.float32).reshape(2, 8),)


def not_a_pair():
    return 42
