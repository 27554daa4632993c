"""Schedule rules: `apply(func, target) -> Schedule | None`, registered per (key, family).

A rule looks like TVM's dlight rules: it gets an unscheduled PrimFunc (as `te.create_prim_func`
built it from one kernel group) and returns a `Schedule` or `None` for "not for me". Rules are
registered under a *key*, an op name (`qnn.conv2d`) or a `schedule_kind` (`injective`,
`reduction`, `conv`, `dense`), and a *schedule family* (`target.SCHEDULE_FAMILIES`: `x86-vnni`,
`arm-dotprod`, ..., or `generic`, which serves every target).

`schedule_func` tries, in order, until one rule returns a schedule:

    (op, target family)  (kind, target family)  (op, generic)  (kind, generic)

at `opt_level >= 2`; at `opt_level == 1` only the generic family; at 0 nothing (the naive
loop nest is built). The generic rule of every kind always applies (`codegen/generic.py`), so
correctness never depends on tuning. A rule that raises is skipped with a warning (its
`Schedule` is discarded), unless `strict=True` (tests), which re-raises.

Register a rule:

    @register_rule("qnn.conv2d", family="x86-vnni")
    class Conv2dVnni(ScheduleRule):
        '''Strategy: 1. ... 2. ...'''
        name = "conv2d_int8_x86"
        def apply(self, func, target): ...

Modules holding rules are listed in `RULE_MODULES` and imported on first lookup.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import ClassVar, TypeVar

from qcompiler.errors import QCompilerError
from qcompiler.lowering.tvm_compat import PrimFunc, Schedule, scheduled_func
from qcompiler.target import SCHEDULE_FAMILIES, TargetPreset

log = logging.getLogger(__name__)

GENERIC = "generic"
SCHEDULE_KINDS = ("injective", "reduction", "conv", "dense", "opaque")
RULE_MODULES: list[str] = ["qcompiler.codegen.generic", "qcompiler.codegen.x86"]
"""Modules that register rules when imported (target packages add themselves here)."""

OPT_LEVELS = (0, 1, 2, 3)
"""0: no schedule. 1: generic rules only. 2: target-family rules first. 3: reserved for tuned
records (behaves as 2 for now)."""


class ScheduleRule:
    """Base class of schedule rules. Subclasses set `name` and implement `apply`."""

    name: ClassVar[str] = "rule"

    def apply(self, func: PrimFunc, target: TargetPreset) -> Schedule | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<schedule rule {self.name}>"


_RULES: dict[tuple[str, str], list[ScheduleRule]] = {}
_LOADED = False

R = TypeVar("R", bound=type[ScheduleRule])


def register_rule(key: str, family: str = GENERIC) -> Callable[[R], R]:
    """Class decorator: register an instance of the rule under (key, family).

    Several rules under one (key, family) are tried in registration order.
    """
    if family not in SCHEDULE_FAMILIES:
        raise QCompilerError(
            f"unknown schedule family {family!r}; valid: {', '.join(SCHEDULE_FAMILIES)}"
        )

    def deco(cls: R) -> R:
        rules = _RULES.setdefault((key, family), [])
        if not any(type(r) is cls for r in rules):
            rules.append(cls())
        return cls

    return deco


def _ensure_loaded() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for m in RULE_MODULES:
            importlib.import_module(m)


def candidate_rules(op: str, kind: str, family: str, opt_level: int = 2) -> list[ScheduleRule]:
    """The rules `schedule_func` would try, in order."""
    _ensure_loaded()
    if opt_level <= 0:
        return []
    keys: list[tuple[str, str]] = []
    if opt_level >= 2 and family != GENERIC:
        keys += [(op, family), (kind, family)]
    keys += [(op, GENERIC), (kind, GENERIC)]
    out: list[ScheduleRule] = []
    for k in keys:
        for r in _RULES.get(k, ()):
            if r not in out:
                out.append(r)
    return out


def schedule_func(
    func: PrimFunc,
    *,
    op: str,
    kind: str,
    target: TargetPreset,
    opt_level: int = 2,
    strict: bool = False,
) -> tuple[PrimFunc | None, str | None]:
    """(scheduled function, rule name) from the first rule that applies; (None, None) if none."""
    for rule in candidate_rules(op, kind, target.schedule_family, opt_level):
        try:
            sch = rule.apply(func, target)
        except Exception as e:  # a rule bug must not break compilation; the fallback is correct
            if strict:
                raise
            log.warning(
                "schedule rule %s failed on %s (%s: %s); trying the next rule",
                rule.name,
                op,
                type(e).__name__,
                e,
            )
            continue
        if sch is not None:
            return scheduled_func(sch), rule.name
    return None, None


def registered_rules() -> dict[tuple[str, str], list[str]]:
    """(key, family) -> rule names, for docs and debugging."""
    _ensure_loaded()
    return {k: [r.name for r in v] for k, v in sorted(_RULES.items())}


__all__ = [
    "GENERIC",
    "OPT_LEVELS",
    "RULE_MODULES",
    "SCHEDULE_KINDS",
    "ScheduleRule",
    "candidate_rules",
    "register_rule",
    "registered_rules",
    "schedule_func",
]
