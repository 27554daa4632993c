"""Run compiled models: `CompiledModule` (call, benchmark, profile, export) and `load`.

Depends only on numpy and the TVM runtime (plus `qcompiler.errors` / `qcompiler.target`), never
on compiler code, so a deployment needs no compiler. Importing this package is cheap: TVM is
imported when `CompiledModule`, `load` or `read_manifest` is first used.

NOTE: TVM fixes its thread-pool size when the pool is first used, from `TVM_NUM_THREADS`, and
otherwise defaults to half the hardware threads on x86 (one thread on a 2-vCPU VM, which also
pins the calling thread to CPU 0). We default it to the CPUs this process may use; set the
variable yourself before importing qcompiler or tvm to choose another size.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


os.environ.setdefault("TVM_NUM_THREADS", str(_usable_cpus()))

if TYPE_CHECKING:
    from qcompiler.runtime.artifact import load, read_manifest
    from qcompiler.runtime.manifest import IOInfo, QParamsInfo
    from qcompiler.runtime.module import (
        BenchmarkResult,
        CompiledModule,
        ProfileReport,
        ProfileRow,
    )

__all__ = [
    "BenchmarkResult",
    "CompiledModule",
    "IOInfo",
    "ProfileReport",
    "ProfileRow",
    "QParamsInfo",
    "load",
    "read_manifest",
]

_LAZY = {
    "CompiledModule": "qcompiler.runtime.module",
    "BenchmarkResult": "qcompiler.runtime.module",
    "ProfileReport": "qcompiler.runtime.module",
    "ProfileRow": "qcompiler.runtime.module",
    "IOInfo": "qcompiler.runtime.manifest",
    "QParamsInfo": "qcompiler.runtime.manifest",
    "load": "qcompiler.runtime.artifact",
    "read_manifest": "qcompiler.runtime.artifact",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'qcompiler.runtime' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
