"""x86 code generation: int8 dot-product intrinsics (VNNI `vpdpbusd`, exact `vpmaddwd`), the
lowering strategies that pack conv/linear operands for them, and their schedule rules.

    intrin.py        description/implementation pairs (registered with TVM on import)
    strategies.py    `@x86_strategy` TE for conv2d / linear in packed layouts (lowering/strategy.py)
    conv2d_int8.py   conv2d_int8_x86 schedule rule (register tile, fused epilogue, tensorize)
    dense_int8.py    dense_int8_x86 schedule rule
    sched_util.py    small shared schedule helpers

Importing the package registers the rules (codegen/rule.py lists it in RULE_MODULES);
lowering/strategy.py imports `strategies` on its first lookup.
"""

from qcompiler.codegen.x86 import conv2d_int8, dense_int8, depthwise_int8, intrin, strategies

__all__ = ["conv2d_int8", "dense_int8", "depthwise_int8", "intrin", "strategies"]
