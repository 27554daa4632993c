"""qcompiler: an ahead-of-time compiler for quantized (int8) neural networks on Apache TVM.

    import qcompiler as qc
    graph = qc.from_torch(model, example_inputs)    # import a PyTorch-quantized model
    y = qc.interpret(graph, x)                      # run the PyTorch-exact reference
    cm = qc.compile(model, example_inputs)          # compile to native code for this CPU
    cm(x); cm.export("model.qc"); qc.load("model.qc")

The IR and the reference interpreter import no TVM; `compile` and `load` import it on demand.
"""

from __future__ import annotations

import os
from typing import Any

# TVM fixes its thread pool size at first use and defaults to half the cores; use them all
# unless the user chose (before anything below can start the pool).
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

from qcompiler.errors import QCompilerError

__version__ = "0.1.0"

__all__ = [
    "Builder", "Graph", "QCompilerError", "QParams", "TensorType", "__version__", "compile",
    "from_torch", "interpret", "load", "parse", "print_graph", "verify",
]

# Everything is imported on first use, so that `import qcompiler.runtime` (a deployment) loads
# no compiler code, and the IR loads no TVM.
_LAZY = {
    "Builder": ("qcompiler.ir", "Builder"),
    "Graph": ("qcompiler.ir", "Graph"),
    "QParams": ("qcompiler.ir", "QParams"),
    "TensorType": ("qcompiler.ir", "TensorType"),
    "parse": ("qcompiler.ir", "parse"),
    "print_graph": ("qcompiler.ir", "print_graph"),
    "verify": ("qcompiler.ir", "verify"),
    "interpret": ("qcompiler.reference.interpreter", "interpret"),
    "from_torch": ("qcompiler.frontends", "from_torch"),
    "compile": ("qcompiler.driver", "compile"),
    "load": ("qcompiler.runtime", "load"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'qcompiler' has no attribute {name!r}")
