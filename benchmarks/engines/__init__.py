"""Engines, by the name the harness uses (imported lazily inside each worker process)."""

from __future__ import annotations

import importlib
from typing import Any

ENGINES: dict[str, str] = {
    "torch-x86": "benchmarks.engines.torch_engine:TorchX86",
    "torch-fbgemm": "benchmarks.engines.torch_engine:TorchFbgemm",
    "torch-onednn": "benchmarks.engines.torch_engine:TorchOnednn",
    "ort-qlinear": "benchmarks.engines.ort_engine:OrtQLinear",
    "ort-qdq": "benchmarks.engines.ort_engine:OrtQDQ",
    "qcompiler": "benchmarks.engines.qcompiler_engine:QCompilerEngine",
    "reference": "benchmarks.engines.qcompiler_engine:ReferenceEngine",
}
"""Every engine; 'reference' is the untimed oracle (qcompiler's interpreter)."""

TIMED_ENGINES = tuple(e for e in ENGINES if e != "reference")
OURS = "qcompiler"


def engine_class(name: str) -> Any:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)
