"""One engine, one case, one thread count, in its own process (started by benchmarks/run.py).

    python3 -m benchmarks.worker --engine torch-x86 --case r18_c3x3_64_56 --threads 1 --workdir D

Protocol (JSON lines): the worker writes one status line after setup,
`{"status": "ready" | "na" | "error", "info": {...}, "outputs": "D/....npz", "reason": ...}`,
then answers commands read from stdin, one line each:
`{"cmd": "time", "min_time": s, "min_calls": n, "warmup": n}` -> `{"times": [seconds, ...]}`,
`{"cmd": "extra", "quick": bool}` -> `{"extra": {...}}`, `{"cmd": "quit"}`. Between commands
the process blocks on stdin (it uses no CPU while the other engines are timed).

Anything that libraries print goes to stderr (the harness logs it): the protocol uses a private
duplicate of the original stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any


def main(argv: list[str] | None = None) -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # C-level and Python prints now go to stderr
    sys.stdout = sys.stderr

    p = argparse.ArgumentParser()
    p.add_argument("--engine", required=True)
    p.add_argument("--case", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    import numpy as np

    from benchmarks import cases as C
    from benchmarks.engines import engine_class
    from benchmarks.engines.common import NotAvailable, time_calls

    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    try:
        case = C.get_case(args.case)
        engine = engine_class(args.engine)(case, args.threads, args.workdir,
                                           {"cache_dir": args.cache_dir})
        info = engine.setup() or {}
        outs = engine.outputs()
        path = os.path.join(args.workdir, f"{case.name}-t{args.threads}-{args.engine}.npz")
        np.savez(path, **outs)
    except NotAvailable as e:
        info = info or getattr(locals().get("engine"), "info", {}) or {}
        send({"status": "na", "reason": str(e), "info": info})
        return 0
    except Exception as e:  # noqa: BLE001 - reported as status "error"
        traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        send({"status": "error", "reason": f"{type(e).__name__}: {first[:300]}", "info": info})
        return 1
    send({"status": "ready", "info": info, "outputs": path,
          "setup_s": round(time.perf_counter() - t0, 3), "pid": os.getpid()})

    for line in sys.stdin:
        try:
            cmd = json.loads(line)
        except json.JSONDecodeError:
            send({"error": f"bad command line {line[:80]!r}"})
            continue
        what = cmd.get("cmd")
        try:
            if what == "time":
                times = time_calls(engine.call, float(cmd.get("min_time", 0.2)),
                                   int(cmd.get("min_calls", 10)), int(cmd.get("warmup", 2)))
                send({"times": times})
            elif what == "extra":
                send({"extra": engine.extra_timings(bool(cmd.get("quick", False)))})
            elif what == "quit":
                break
            else:
                send({"error": f"unknown command {what!r}"})
        except Exception as e:  # noqa: BLE001 - reported to the harness
            traceback.print_exc()
            send({"error": f"{type(e).__name__}: {str(e)[:300]}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
