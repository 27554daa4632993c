"""Graph -> TE -> PrimFuncs -> Relax module.

`tvm_compat.py` is the only module that names TVM's modules; `te_lib.py` holds the TE helpers
op `lower()` methods use (rounding exactly as `reference/quant_math.py`); `to_relax.py` lowers
node groups ("kernels") to PrimFuncs and wires them into a Relax module. See docs/lowering.md.

NOTE: TVM fixes its CPU thread-pool size when the pool is first used: from `TVM_NUM_THREADS`,
else half the hardware threads on x86 (one thread on a 2-vCPU VM, which also pins the calling
thread to CPU 0). Importing this package, which happens before `tvm_compat` imports TVM, sets
the variable (when unset) to the CPUs this process may use, as `qcompiler.runtime` does.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else `os.cpu_count()`."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


os.environ.setdefault("TVM_NUM_THREADS", str(usable_cpus()))
