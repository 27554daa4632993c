"""Measure what tuning records buy: a model compiled with and without them, interleaved.

    python3 -m qcompiler.tuning.measure zoo:mobilenet_v2 --target x86-avx512-vnni
    python3 -m qcompiler.tuning.measure mypkg.models:build --records records/ --rounds 9

Compiles the model twice (`tuning_records=False`, and with the records: `--records DIR`, else
the shipped `schedules/<preset>/`), checks that both give identical outputs, then runs
`--rounds` rounds, each timing both modules back to back (whole model: `benchmark`, median of
its repeats; each kernel: `profile`), at `--threads` threads (default 1: the machine may be
shared, and one busy core stalls every parallel kernel). Prints the median over rounds per
tuned kernel and for the whole model, and the spread (min-max of the per-round values).

`zoo:<name>[:<flow>]` picks a model of `qcompiler.testing.zoo` (flow default `eager`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np


def load(source: str, example_inputs: Sequence[str] = ()) -> tuple[Any, tuple[Any, ...]]:
    """(model, example inputs) of `zoo:<name>[:<flow>]` (a model of `qcompiler.testing.zoo`,
    quantized with `flow`, default eager) or a CLI model source (`cli.load_source`)."""
    if source.startswith("zoo:"):
        from qcompiler.errors import QCompilerError
        from qcompiler.testing.zoo import entry, quantized

        _, name, *flow = source.split(":")
        try:
            entry(name)
        except KeyError as e:
            raise QCompilerError(str(e).strip("'\"")) from None
        return quantized(name, flow[0] if flow else "eager")
    from qcompiler.cli import load_source

    return load_source(source, example_inputs)


def _outputs(cm: Any, inputs: Sequence[Any]) -> list[np.ndarray]:
    out = cm(*inputs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    res = []
    for o in outs:
        if getattr(o, "is_quantized", False):
            o = o.int_repr()
        res.append(np.asarray(o.numpy() if hasattr(o, "numpy") else o))
    return res


def _spread(xs: Sequence[float]) -> str:
    return f"{statistics.median(xs):9.2f} ({min(xs):.2f}-{max(xs):.2f})"


def measure(source: str, target: str, records: str | None, rounds: int, threads: int) -> str:
    import qcompiler as qc

    model, inputs = load(source)
    base = qc.compile(model, inputs, target=target, tuning_records=False)
    tuned = qc.compile(model, inputs, target=target, tuning_records=records)
    names = [k["name"] for k in tuned.kernels if k.get("schedule") == "tuned"]
    if not names:
        return f"{source}: no tuning record applies to any of its {len(tuned.kernels)} kernels"
    for a, b in zip(_outputs(base, inputs), _outputs(tuned, inputs)):
        if not np.array_equal(a, b):
            raise SystemExit(f"{source}: outputs with and without tuning records differ")
    base.num_threads = tuned.num_threads = threads
    rules = {k["name"]: k.get("schedule") for k in base.kernels}
    model_us: dict[str, list[float]] = {"rules": [], "tuned": []}
    kernel_us: dict[str, dict[str, list[float]]] = {n: {"rules": [], "tuned": []} for n in names}
    for _ in range(rounds):
        for label, cm in (("rules", base), ("tuned", tuned)):
            bench = cm.benchmark(*inputs, number=20, repeat=5, min_repeat_ms=100)
            model_us[label].append(bench.median_ms * 1e3)
            prof = {r["name"]: r["mean_us"] for r in cm.profile(*inputs, repeat=20).kernels()}
            for n in names:
                kernel_us[n][label].append(prof[n])
    w = max(len(n) for n in names)
    from qcompiler.target import get_target

    lines = [(f"{source} on {get_target(target).name}, {threads} thread(s), {rounds} rounds; "
             "median (min-max) over rounds"),
             f"{'kernel':<{w}}  {'rule':<20}  {'rules_us':>22}  {'tuned_us':>22}  speedup"]
    for n in names:
        r, t = kernel_us[n]["rules"], kernel_us[n]["tuned"]
        lines.append(f"{n:<{w}}  {rules[n] or '-':<20}  {_spread(r):>22}  {_spread(t):>22}  "
                     f"{statistics.median(r) / statistics.median(t):6.2f}x")
    r, t = model_us["rules"], model_us["tuned"]
    lines.append(f"{'whole model (us)':<{w}}  {'':<20}  {_spread(r):>22}  {_spread(t):>22}  "
                 f"{statistics.median(r) / statistics.median(t):6.2f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m qcompiler.tuning.measure",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="zoo:<name>[:<flow>], module:function, .pt2 or .qir.json")
    ap.add_argument("--target", default="host")
    ap.add_argument("--records", default=None, help="records root or preset folder (default: "
                    "the shipped schedules/<preset>/)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    print(measure(args.source, args.target, args.records, args.rounds, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
