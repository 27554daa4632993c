"""Passes and pipelines.

A pass is a small frozen dataclass whose fields are its options; `run(graph)` edits the graph
in place and returns whether it changed anything. Its docstring says what it requires and
ensures. A `Pipeline` runs a list of passes, verifies after each one when asked (always in
tests: `QC_VERIFY=1`), prints after chosen passes, and reports a failure as
"failed in pass X after [A, B]" with the region around the offending node.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TextIO

from qcompiler.errors import QCompilerError, VerifyError
from qcompiler.ir.graph import Graph
from qcompiler.ir.printer import print_graph
from qcompiler.ir.verify import verify

log = logging.getLogger("qcompiler.passes")


class PassError(QCompilerError):
    """A pass failed, or left a graph that does not verify."""


@dataclass(frozen=True)
class Pass:
    """Base class. Subclasses set `name` (kebab-case) and implement `run`."""

    name: ClassVar[str] = "pass"

    def run(self, graph: Graph) -> bool:
        raise NotImplementedError

    def __call__(self, graph: Graph) -> bool:
        return self.run(graph)


def _verify_default() -> bool:
    return os.environ.get("QC_VERIFY", "") not in ("", "0")


@dataclass
class PassRecord:
    name: str
    changed: bool
    seconds: float


@dataclass
class Pipeline:
    """Run passes in order. `verify_each` defaults to the QC_VERIFY environment switch."""

    passes: Sequence[Pass]
    verify_each: bool = field(default_factory=_verify_default)
    print_after: Iterable[str] = ()
    print_after_all: bool = False
    out: TextIO | None = None
    history: list[PassRecord] = field(default_factory=list)

    def run(self, graph: Graph) -> Graph:
        done: list[str] = []
        print_set = set(self.print_after)
        stream = self.out or sys.stderr
        for p in self.passes:
            t0 = time.perf_counter()
            try:
                changed = p.run(graph)
            except QCompilerError as e:
                raise PassError(f"failed in pass {p.name} after {done}: {e}") from None
            if self.verify_each:
                try:
                    verify(graph)
                except VerifyError as e:
                    raise PassError(
                        f"graph does not verify after pass {p.name} (ran {done + [p.name]}):\n"
                        f"{e}") from None
            self.history.append(PassRecord(p.name, bool(changed), time.perf_counter() - t0))
            log.debug("pass %s: changed=%s", p.name, changed)
            done.append(p.name)
            if self.print_after_all or p.name in print_set:
                stream.write(f"// ----- IR after {p.name} -----\n{print_graph(graph)}")
        return graph
