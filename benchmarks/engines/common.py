"""What every engine implements, and the one timing loop they all share.

An engine lives in its own worker process (benchmarks/worker.py) for one case and one thread
count. `setup` builds everything (prepacked weights, ONNX session, compiled module) outside the
timed region; `call` is the timed operation on the case's primary input, with inputs already in
the engine's own format; `outputs` runs every check input once and returns storage arrays.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


class NotAvailable(Exception):
    """The engine cannot run this case (the reason is reported as 'n/a (reason)')."""


class Engine:
    name: str = "?"
    role: str = "peer"
    """'peer' (timed, compared within 1 LSB), 'ours' (timed, must be exact) or 'reference'."""

    def __init__(self, case: Any, threads: int, workdir: str, options: dict[str, Any]) -> None:
        self.case = case
        self.threads = threads
        self.workdir = workdir
        self.options = options
        self.info: dict[str, Any] = {}
        """Facts gathered during setup, reported even when setup ends in NotAvailable."""

    def setup(self) -> dict[str, Any]:
        """Build everything; return facts worth reporting (kernel paths, fused ops, ...)."""
        raise NotImplementedError

    def call(self) -> None:
        """One timed call on the primary input."""
        raise NotImplementedError

    def outputs(self) -> dict[str, np.ndarray]:
        """Output (storage array) for each check input, keyed like the case's check inputs."""
        raise NotImplementedError

    def extra_timings(self, quick: bool) -> dict[str, Any]:
        """Engine-specific extra measurements (e.g. TVM time_evaluator); optional."""
        return {}


def time_calls(fn: Any, min_time: float, min_calls: int, warmup: int,
               max_calls: int = 100_000) -> list[float]:
    """Per-call wall times (seconds) of `fn()`: `warmup` untimed calls, then calls until both
    `min_calls` calls and `min_time` seconds are reached."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    clock = time.perf_counter
    start = clock()
    while len(times) < max_calls:
        t0 = clock()
        fn()
        t1 = clock()
        times.append(t1 - t0)
        if len(times) >= min_calls and t1 - start >= min_time:
            break
    return times
