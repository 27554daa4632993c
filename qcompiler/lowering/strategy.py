"""Per-target lowering strategies: a target family's own TE for an op.

An op's `lower()` (ops/*.py) is its one target-independent TE definition. Some ops are only
fast on a target when their *data layout* changes too: a VNNI conv wants its weights packed
[OC/16][IC/4][KH][KW][16][4] and its activations in NCHW4c, which no schedule can produce from
the generic TE. A *strategy* is a function that builds the op's TE in such a layout, from the
same inputs, for one schedule family:

    @register_strategy(["qnn.conv2d", "qnn.conv2d_relu"], families=["x86-vnni"])
    def conv2d_packed(op: OpDef, sig: Sig, inputs: Sequence[te.Tensor],
                      target: TargetPreset) -> te.Tensor | None:
        ...   # te_lib.constant_value(inputs[1]) is the weight; pack it in numpy

`lower_graph(..., target=preset)` (lowering/to_relax.py) asks `lower_with_strategy` first and
falls back to `OpDef.lower` when no strategy is registered for (op, family) or every
registered one returns None ("not for me": unsupported shape, non-constant weight, ...).

Contract (checked by the x86 tests, tests/codegen/test_x86_vnni.py):
- **Same integers.** The result equals `OpDef.lower`'s (and so the reference) bit for bit, for
  every input. Reuse the `te_lib` epilogue helpers the generic lowering uses, so rounding is
  shared code, not a copy.
- **Same interface.** The node's output shape and storage dtype (checked by `lower_graph`),
  constants only through `te_lib.constant` (bound to `relax.const` like any other).
- **Correct unscheduled.** The TE alone computes the right values; the family's schedule rule
  makes it fast. If that rule fails, the generic rules still schedule it correctly.

Strategies run only when the driver passes a target (opt_level >= 2), like the target
schedule rules. Modules that register strategies are listed in `STRATEGY_MODULES` and imported
on first lookup.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from qcompiler.errors import QCompilerError
from qcompiler.ir.registry import OpDef, Sig, get_op
from qcompiler.lowering.tvm_compat import Tensor
from qcompiler.target import SCHEDULE_FAMILIES, TargetPreset

Strategy = Callable[[OpDef, Sig, Sequence[Tensor], TargetPreset], Any]
"""(op, sig, TE inputs, target) -> TE tensor (tuple for multi-output ops) or None."""

STRATEGY_MODULES: list[str] = [
    "qcompiler.codegen.x86.strategies",
    "qcompiler.codegen.x86.depthwise_int8",
]
"""Modules that register strategies when imported."""

_STRATEGIES: dict[tuple[str, str], list[Strategy]] = {}
_LOADED = False


def register_strategy(ops: Iterable[str], families: Iterable[str]) -> Callable[[Strategy], Strategy]:
    """Decorator: register `fn` for every (op, family); several per key are tried in order."""
    fams = tuple(families)
    for f in fams:
        if f not in SCHEDULE_FAMILIES:
            raise QCompilerError(
                f"unknown schedule family {f!r}; valid: {', '.join(SCHEDULE_FAMILIES)}"
            )
    names = tuple(ops)

    def deco(fn: Strategy) -> Strategy:
        for op in names:
            for f in fams:
                fns = _STRATEGIES.setdefault((op, f), [])
                if fn not in fns:
                    fns.append(fn)
        return fn

    return deco


def _ensure_loaded() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for m in STRATEGY_MODULES:
            importlib.import_module(m)


def strategies_for(op: str, family: str) -> list[Strategy]:
    """The strategies registered for (op, family), in registration order."""
    _ensure_loaded()
    return list(_STRATEGIES.get((op, family), ()))


def lower_with_strategy(
    op: str, sig: Sig, inputs: Sequence[Tensor], target: TargetPreset
) -> tuple[Any, str] | None:
    """(TE result, strategy name) from the first strategy for (op, target family) that
    applies, or None: then the caller uses `OpDef.lower`."""
    fns = strategies_for(op, target.schedule_family)
    if not fns:
        return None
    opdef = get_op(op)
    for fn in fns:
        out = fn(opdef, sig, inputs, target)
        if out is not None:
            return out, getattr(fn, "__name__", "strategy")
    return None


def registered_strategies() -> dict[tuple[str, str], list[str]]:
    """(op, family) -> strategy names, for docs and debugging."""
    _ensure_loaded()
    return {k: [getattr(f, "__name__", "?") for f in v] for k, v in sorted(_STRATEGIES.items())}


__all__ = [
    "STRATEGY_MODULES",
    "Strategy",
    "lower_with_strategy",
    "register_strategy",
    "registered_strategies",
    "strategies_for",
]
