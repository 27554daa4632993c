"""Tuning: meta_schedule search for a model's kernels, and the records compile applies.

    from qcompiler.tuning import tune
    report = tune(model, example_inputs, target="x86-avx512-vnni", trials=64, out="records/")
    cm = qc.compile(model, example_inputs, target="x86-avx512-vnni", tuning_records="records/")

`search.py` searches and verifies (a tuned kernel must equal the untuned one bit for bit);
`records.py` is the on-disk layout and the compile-time lookup (`records_for`); `_ms.py` holds
every meta_schedule name. See docs/tuning.md. Importing this package imports no TVM.
"""

from __future__ import annotations

from typing import Any

from qcompiler.tuning.records import SHIPPED_ROOT, TuningError, records_for

__all__ = ["SHIPPED_ROOT", "TuningError", "records_for", "tune"]


def tune(*args: Any, **kwargs: Any) -> Any:
    """`qcompiler.tuning.search.tune` (imported on first use: it loads TVM)."""
    from qcompiler.tuning.search import tune as _tune

    return _tune(*args, **kwargs)
