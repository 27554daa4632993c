#!/usr/bin/env python3
"""The benchmark of issue 7: qcompiler vs PyTorch quantized (x86, fbgemm, onednn) and ONNX Runtime.

    python3 benchmarks/run.py [--quick] [--threads 1,2] [--cases layers,zoo|NAME,...]
                              [--engines torch-x86,...] [--out benchmarks/results]

For every case and thread count: one worker process per engine (so thread pools never share a
process; TVM_NUM_THREADS / OMP_NUM_THREADS are set before the worker imports anything), all set
up first, then `--rounds` interleaved rounds (A, B, C, B, C, A, ...: each round starts one engine
later), each engine timing `--min-time` seconds of back-to-back calls per round. Reported:
median and min per-call latency over all rounds, GMAC/s, % of the VNNI peak, ratio of qcompiler
to the best peer. Every engine's output is checked against qcompiler's reference interpreter
(exact for qcompiler, <= 1 LSB for peers; zoo models: differences reported).

Writes <out>/latest.md, <out>/latest.json, <out>/latest.png (if matplotlib is installed) and
the workers' logs under <out>/logs/.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np

from benchmarks import cases as C
from benchmarks import machine
from benchmarks.engines import ENGINES, OURS, TIMED_ENGINES

PEER_TOLERANCE_LSB = 1
"""A peer agrees when its outputs are within this many LSB of the reference (requantization
formulas differ by a rounding step between libraries)."""

ROLE = {name: ("ours" if name == OURS else "reference" if name == "reference" else "peer")
        for name in ENGINES}


# --- worker processes ------------------------------------------------------------------------


class WorkerError(Exception):
    pass


class Worker:
    """A running `benchmarks.worker` process and its JSON-lines channel."""

    def __init__(self, engine: str, case: str, threads: int, workdir: str, log_path: Path,
                 cache_dir: str, env_threads: int | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.engine, self.case, self.threads = engine, case, threads
        self.log_path = log_path
        n = str(env_threads or threads)
        env = dict(os.environ)
        env.update({"TVM_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
                    "OPENBLAS_NUM_THREADS": n, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(
                        [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])})
        env.update(extra_env or {})
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", "--engine", engine, "--case", case,
             "--threads", str(threads), "--workdir", workdir, "--cache-dir", cache_dir],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            bufsize=1, cwd=str(REPO), env=env)
        self._q: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line)
        self._q.put(None)

    def recv(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._q.get(timeout=timeout)
        except queue.Empty:
            raise WorkerError(f"no answer within {timeout:.0f} s") from None
        if line is None:
            self.proc.wait(timeout=10)
            raise WorkerError(f"worker exited with code {self.proc.returncode}: "
                              f"{self.log_tail()}")
        return json.loads(line)

    def request(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise WorkerError(f"worker is gone ({e}): {self.log_tail()}") from None
        reply = self.recv(timeout)
        if "error" in reply:
            raise WorkerError(reply["error"])
        return reply

    def log_tail(self, lines: int = 3) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(t.strip() for t in text[-lines:])[:400]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # only this worker, by its own handle
                self.proc.wait()
        self._log.close()


# --- agreement -------------------------------------------------------------------------------


def compare_outputs(ref: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    """Differences of `out` from `ref`: integer arrays in LSB, float arrays in absolute units."""
    if ref.shape != out.shape:
        return {"shape_mismatch": f"{list(out.shape)} vs reference {list(ref.shape)}",
                "max_diff": None, "mismatch": None}
    if ref.size == 0:
        return {"max_diff": 0, "mismatch": 0.0, "units": "LSB"}
    if np.issubdtype(ref.dtype, np.integer) and np.issubdtype(out.dtype, np.integer):
        d = np.abs(out.astype(np.int64) - ref.astype(np.int64))
        return {"max_diff": int(d.max()), "mismatch": float(np.count_nonzero(d) / d.size),
                "units": "LSB"}
    d = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    scale = float(np.abs(ref.astype(np.float64)).max()) or 1.0
    return {"max_diff": float(d.max()), "mismatch": float(np.count_nonzero(d) / d.size),
            "units": "abs", "rel": float(d.max()) / scale}


def verdict(role: str, key: str, cmp: dict[str, Any], zoo: bool = False,
            baseline: str = "reference") -> bool | None:
    """True/False when the comparison must pass, None when it is informational.

    qcompiler must equal the reference exactly (when the baseline is the reference); peers must
    be within PEER_TOLERANCE_LSB on the timed input of layer cases. Probe inputs (x_full: the
    fbgemm depthwise trap), zoo models and comparisons against a stand-in baseline are
    informational.
    """
    if cmp.get("max_diff") is None:
        return False
    if baseline != "reference" or key != "x":
        return None
    if role == "ours":
        return cmp["max_diff"] == 0
    if zoo:
        return None
    return cmp["units"] == "LSB" and cmp["max_diff"] <= PEER_TOLERANCE_LSB


def describe(cmp: dict[str, Any]) -> str:
    if cmp.get("shape_mismatch"):
        return f"shape {cmp['shape_mismatch']}"
    if cmp["max_diff"] == 0:
        return "exact"
    pct = f"{100 * cmp['mismatch']:.2g}%"
    if cmp["units"] == "LSB":
        return f"max {cmp['max_diff']} LSB on {pct}"
    return f"max |d| {cmp['max_diff']:.3g} (rel {cmp['rel']:.2g}) on {pct}"


def check_agreement(ref: dict[str, np.ndarray], outputs: dict[str, dict[str, np.ndarray]],
                    zoo: bool = False, baseline: str = "reference",
                    kernels: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Per engine: per check input the comparison, the verdict and a one-line summary."""
    result: dict[str, dict[str, Any]] = {}
    for eng, outs in outputs.items():
        role = ROLE.get(eng, "peer")
        per_key: dict[str, Any] = {}
        ok: bool | None = None
        parts = []
        for key, r in ref.items():
            if key not in outs:
                per_key[key] = {"missing": True}
                ok = False
                continue
            cmp = compare_outputs(r, outs[key])
            v = verdict(role, key, cmp, zoo, baseline)
            cmp["ok"] = v
            per_key[key] = cmp
            if v is not None:
                ok = v if ok is None else (ok and v)
            text = describe(cmp)
            if key != "x":
                note = ""
                kern = (kernels or {}).get(eng, "")
                if cmp.get("max_diff") and "int16" in kern:
                    note = " (fbgemm depthwise int16 saturation, known)"
                text = f"{key}: {text}{note}"
            parts.append(text)
        result[eng] = {"ok": ok, "inputs": per_key, "summary": "; ".join(parts),
                       "baseline": baseline}
    return result


# --- measurements ----------------------------------------------------------------------------


@dataclass
class EngineRun:
    engine: str
    status: str = "pending"
    """ready, na, error."""
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    setup_s: float | None = None

    def stats(self, macs: int, peak_gmacs_per_thread: float | None, threads: int
              ) -> dict[str, Any]:
        if not self.times:
            return {}
        med, mn = statistics.median(self.times), min(self.times)
        out: dict[str, Any] = {
            "median_ms": med * 1e3, "min_ms": mn * 1e3, "calls": len(self.times),
            "round_median_ms": [t * 1e3 for t in self.round_medians],
        }
        if len(self.round_medians) > 1:
            out["round_spread"] = max(self.round_medians) / min(self.round_medians)
        if macs:
            out["gmacs"] = macs / med / 1e9
            out["gmacs_best"] = macs / mn / 1e9
            if peak_gmacs_per_thread:
                out["pct_peak"] = 100 * out["gmacs"] / (peak_gmacs_per_thread * threads)
        return out


def _load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def run_case_threads(case: C.Case, threads: int, engines: list[str], opts: argparse.Namespace,
                     workdir: str, logdir: Path, ref: dict[str, Any] | None,
                     log: Any) -> tuple[dict[str, EngineRun], dict[str, Any] | None]:
    """Set up all engines (and the reference, when `ref` is None), time them interleaved."""
    names = list(engines)
    want_ref = ref is None
    if want_ref:
        names = ["reference"] + names
    workers: dict[str, Worker] = {}
    runs = {e: EngineRun(e) for e in names}
    try:
        for e in names:
            extra = ({"OMP_WAIT_POLICY": opts.omp_wait_policy.upper()}
                     if opts.omp_wait_policy != "default" else {})
            workers[e] = Worker(e, case.name, threads, workdir,
                                logdir / f"{case.name}-t{threads}-{e}.log",
                                cache_dir=str(Path(opts.out) / "cache"), extra_env=extra)
        outputs: dict[str, dict[str, np.ndarray]] = {}
        for e in names:
            run = runs[e]
            try:
                msg = workers[e].recv(timeout=opts.setup_timeout)
            except WorkerError as err:
                run.status, run.reason = "error", str(err)
                continue
            run.status, run.info = msg["status"], msg.get("info") or {}
            run.reason = msg.get("reason", "")
            run.setup_s = msg.get("setup_s")
            if run.status == "ready":
                outputs[e] = _load_npz(msg["outputs"])
            if run.status != "ready" or e == "reference":
                workers.pop(e).close()
        if want_ref:
            r = runs.pop("reference")
            ref = {"status": r.status, "reason": r.reason, "info": r.info,
                   "outputs": outputs.pop("reference", None)}
        for e, r in runs.items():
            log(f"    {e:<13} {r.status:<6}"
                + (f" setup {r.setup_s:.1f}s" if r.setup_s is not None else "")
                + (f"  {r.reason}" if r.reason else ""))
        ready = [e for e in engines if runs[e].status == "ready"]
        if opts.wait_quiet > 0:
            free = max(0.5, (os.cpu_count() or 1) - threads)  # cores others may use
            waited, other = wait_quiet(opts.wait_quiet, free,
                                       [w.proc.pid for w in workers.values()])
            log(f"    waited {waited:.0f}s for a quieter machine (other load {other:.2f} cores)")
        meter = machine.LoadMeter([workers[e].proc.pid for e in ready])
        _time_rounds(ready, workers, runs, opts, log)
        load = meter.result()
        if load:
            log(f"    other processes used {load['other_cores']} cores on average while timing")
        for e in ready:
            if runs[e].status == "ready" and e in workers:
                try:
                    runs[e].extra = workers[e].request(
                        {"cmd": "extra", "quick": opts.quick}, opts.call_timeout)["extra"]
                except WorkerError as err:
                    runs[e].extra = {"error": str(err)}
        for e, outs in outputs.items():
            runs[e].info["_outputs"] = outs  # consumed by the caller, not serialized
        if load:
            for e in ready:
                runs[e].info["_load"] = load
    finally:
        for w in workers.values():
            w.close()
    return runs, ref


def wait_quiet(max_s: float, threshold: float, pids: list[int]) -> tuple[float, float]:
    """Wait (at most `max_s` seconds, in 1 s windows) until other processes use fewer than
    `threshold` cores; returns (seconds waited, last measured other load)."""
    t0 = time.monotonic()
    other = float("nan")
    while True:
        meter = machine.LoadMeter(pids)
        time.sleep(1.0)
        res = meter.result()
        other = res["other_cores"] if res else 0.0
        if other < threshold or time.monotonic() - t0 >= max_s:
            return time.monotonic() - t0, other


def _time_rounds(ready: list[str], workers: dict[str, Worker], runs: dict[str, EngineRun],
                 opts: argparse.Namespace, log: Any) -> None:
    active = list(ready)
    for r in range(opts.rounds):
        if not active:
            return
        k = r % len(active)
        for e in active[k:] + active[:k]:
            if runs[e].status != "ready":
                continue
            time.sleep(opts.gap_ms / 1e3)  # let the previous engine's spinning threads sleep
            try:
                reply = workers[e].request(
                    {"cmd": "time", "min_time": opts.min_time, "min_calls": opts.min_calls,
                     "warmup": opts.warmup}, opts.call_timeout)
            except WorkerError as err:
                runs[e].status, runs[e].reason = "error", f"while timing: {err}"
                continue
            runs[e].times += reply["times"]
            runs[e].round_medians.append(statistics.median(reply["times"]))
        active = [e for e in active if runs[e].status == "ready"]
    log("    " + "  ".join(
        f"{e} {statistics.median(runs[e].times) * 1e3:.4g}ms" for e in ready if runs[e].times))


# --- the report ------------------------------------------------------------------------------


def _fmt_ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def best_peer(row: dict[str, Any], engines: list[str], key: str = "median_ms"
              ) -> tuple[str | None, float | None]:
    """The fastest peer of a result row by `key` (median_ms or min_ms) and its time."""
    best, best_ms = None, None
    for e in engines:
        if ROLE.get(e) != "peer":
            continue
        s = row["engines"].get(e, {}).get("stats") or {}
        if s and (best_ms is None or s[key] < best_ms):
            best, best_ms = e, s[key]
    return best, best_ms


def ratio_to_best(row: dict[str, Any], engines: list[str], key: str = "median_ms"
                  ) -> float | None:
    """qcompiler's time / the best peer's time, by `key` (None if either is missing)."""
    _, best_ms = best_peer(row, engines, key)
    ours = row["engines"].get(OURS, {}).get("stats")
    return ours[key] / best_ms if ours and best_ms else None


def render_markdown(report: dict[str, Any]) -> str:
    eng = report["engines"]
    m = report["machine"]
    lines = [f"# qcompiler benchmarks ({report['started']})", ""]
    peak = report["peak"]
    clock = (f"measured {m['clock_mhz']:.0f} MHz" if m.get("clock_mhz") else
             f"nominal {m.get('nominal_mhz')} MHz")
    peak_line = (
        f"- peak for '% peak': {peak['macs_per_cycle']:.0f} MAC/cycle/core "
        f"({peak['macs_per_cycle_source']}) x {clock} = "
        f"{peak['gmacs_per_thread']:.0f} GMAC/s per thread"
        if peak["gmacs_per_thread"] else "- peak: unknown (no clock)")
    lines += [
        (f"- machine: {m.get('model', '?')} (family {m.get('family', '?')}), {m.get('cpus')} "
         f"CPUs, nominal {m.get('nominal_mhz')} MHz; best-of probe: clock "
         f"{m.get('clock_mhz')} MHz, vpdpbusd zmm {m.get('vnni_gmacs')} GMAC/s/core "
         f"({m.get('vnni_macs_per_cycle')} MAC/cycle)"),
        (f"- load average at start / end: {report['loadavg_start']} / {report['loadavg_end']} "
         "(a shared VM: read medians with the min and the round spread in latest.json)"),
        peak_line,
        (f"- {report['settings']['rounds']} interleaved rounds x >= "
         f"{report['settings']['min_time']} s per engine; one process per engine, case and "
         "thread count; latency = per-call wall time of back-to-back calls from Python "
         "(torch op / ORT IOBinding run / qcompiler VM main with bound args)"),
        f"- versions: {report.get('versions', {})}",
        "",
    ]
    if peak["macs_per_cycle"] != 64:
        lines += [(f"> Note: '% peak' uses {peak['macs_per_cycle']:.0f} MAC/cycle/core, not "
                   "the 64 of issue 7 (one vpdpbusd zmm per cycle, as on Zen 4): this CPU's "
                   f"probe measured {m.get('vnni_macs_per_cycle')} MAC/cycle (two 512-bit VNNI "
                   "pipes). `--peak-macs-per-cycle 64` gives the issue's definition (GMAC/s "
                   "columns do not depend on it)."), ""]
    elif m.get("vnni_macs_per_cycle") and m["vnni_macs_per_cycle"] > 1.2 * 64:
        lines += [(f"> Note: this CPU measured {m['vnni_macs_per_cycle']} MAC/cycle of vpdpbusd "
                   "throughput, above the 64 MAC/cycle used for '% peak', which can exceed 100."),
                  ""]
    for t in report["settings"]["threads"]:
        rows = [r for r in report["results"] if r["threads"] == t]
        if not rows:
            continue
        lines += [f"## {t} thread{'s' if t > 1 else ''}", "",
                  ("Median ms / min ms per call (qcompiler: `te` = TVM time_evaluator median, no "
                   "Python in the loop); `qc/best` = qcompiler median / best peer median (< 1 is "
                   "faster), `(min)` the same with best-of times, steadier on a busy machine; "
                   "`other load` = cores that other processes kept busy on average "
                   f"while the case was timed (the VM has {m.get('cpus')}: above "
                   f"{max(0, (m.get('cpus') or 2) - t)} they competed with the engines)."), ""]
        head = ["case", "shape", "MMAC"] + eng + ["best peer", "qc/best (min)", "other load"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [r["case"], r["summary"], f"{r['macs'] / 1e6:.1f}" if r["macs"] else "?"]
            for e in eng:
                er = r["engines"].get(e, {})
                s = er.get("stats")
                cell = (f"{_fmt_ms(s['median_ms'])} / {_fmt_ms(s['min_ms'])}" if s
                        else "n/a" if er.get("status") == "na" else
                        "error" if er.get("status") == "error" else "-")
                te = (er.get("extra") or {}).get("time_evaluator")
                if s and isinstance(te, dict):
                    cell += f" (te {_fmt_ms(te['median_ms'])})"
                cells.append(cell)
            cells.append(best_peer(r, eng)[0] or "-")
            ratio, ratio_min = ratio_to_best(r, eng), ratio_to_best(r, eng, "min_ms")
            cells.append(f"{ratio:.2f} ({ratio_min:.2f})" if ratio is not None and ratio_min
                         else "n/a" if OURS in eng else "-")
            load = r.get("load") or {}
            cells.append(f"{load['other_cores']:.2f}" if "other_cores" in load else "?")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "GMAC/s (median) and % of peak:", ""]
        head = ["case"] + eng
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [r["case"]]
            for e in eng:
                s = r["engines"].get(e, {}).get("stats") or {}
                if "gmacs" in s:
                    pct = f" ({s['pct_peak']:.0f}%)" if "pct_peak" in s else ""
                    cells.append(f"{s['gmacs']:.1f}{pct}")
                else:
                    cells.append("-")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Agreement with the reference (qcompiler interpreter):", ""]
        lines += ["| " + " | ".join(["case"] + eng) + " |", "|" + "---|" * (len(eng) + 1)]
        for r in rows:
            cells = [r["case"]]
            for e in eng:
                a = r["agreement"].get(e)
                if not a:
                    cells.append("-")
                    continue
                mark = {True: "ok", False: "FAIL", None: "info"}[a["ok"]]
                cells.append(f"{mark}: {a['summary']}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    notes = []
    seen: set[tuple[str, str]] = set()
    for r in report["results"]:
        if r.get("reference", {}).get("status") != "ready":
            key = ("reference", r["reference"].get("reason", ""))
            if key not in seen:
                seen.add(key)
                notes.append(f"- reference n/a for {r['case']}: {key[1]} (agreement is then "
                              "against torch-x86, informational)")
        for e, er in r["engines"].items():
            if er.get("status") in ("na", "error"):
                key = (e, er.get("reason", ""))
                if key not in seen:
                    seen.add(key)
                    notes.append(f"- {e} {er['status']} ({r['case']}, and any other case with "
                                 f"the same reason): {key[1]}")
    if notes:
        lines += ["## Not run", ""] + notes + [""]
    lines += ["## Notes", "",
              ("- Depthwise cases are timed and checked on 7-bit activations (0..127): PyTorch's "
               "fbgemm depthwise kernel (fbgemm engine; x86 engine for groups > 100) saturates "
               "int16 pair sums for activations >= 128. The `x_full` entries run a full-range "
               "input once to show that trap; they do not fail the run."),
              ("- ORT takes the bias as int32 (round(b / (sx*sw))) and requantizes with its own "
               "float math: up to 1 LSB from PyTorch is expected."),
              ("- Zoo rows: ORT runs its own quantization of the exported float model "
               "(quantize_static QDQ / quantize_dynamic), so its outputs are informational."),
              ""]
    return "\n".join(lines)


def write_plot(report: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = [t for t in report["settings"]["threads"]
               if any(r["threads"] == t for r in report["results"])]
    if not threads:
        return "no results"
    eng = report["engines"]
    fig, axes = plt.subplots(len(threads), 1, figsize=(max(8, 0.9 * len(report["cases"]) + 3),
                                                       4.5 * len(threads)), squeeze=False)
    for ax, t in zip(axes[:, 0], threads):
        rows = [r for r in report["results"] if r["threads"] == t]
        x = np.arange(len(rows))
        width = 0.8 / max(1, len(eng))
        for i, e in enumerate(eng):
            vals = [(r["engines"].get(e, {}).get("stats") or {}).get("gmacs", 0.0) for r in rows]
            ax.bar(x + (i - (len(eng) - 1) / 2) * width, vals, width, label=e)
        ax.set_xticks(x)
        ax.set_xticklabels([r["case"] for r in rows], rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("GMAC/s (median)")
        ax.set_yscale("log")
        peak = report["peak"]["gmacs_per_thread"]
        if peak:
            ax.axhline(peak * t, color="k", lw=0.8, ls="--", label=f"peak ({t} thr)")
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}")
        ax.legend(fontsize=7, ncol=4)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="2 rounds of ~20 ms per engine (smoke runs; numbers are rough)")
    p.add_argument("--threads", default="1,2", help="comma list of thread counts (default 1,2)")
    p.add_argument("--cases", default="all",
                   help="comma list of case names, fnmatch patterns or groups layers/zoo/all")
    p.add_argument("--engines", default=",".join(TIMED_ENGINES),
                   help=f"comma list (default all): {', '.join(TIMED_ENGINES)}")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of calls per engine per round (default 0.25)")
    p.add_argument("--min-calls", type=int, default=None, help="calls per round (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per round (def. 3)")
    p.add_argument("--gap-ms", type=float, default=20.0,
                   help="pause between two engines' turns (default 20 ms)")
    p.add_argument("--peak-macs-per-cycle", default="auto",
                   help="MAC/cycle/core for '%% peak': a number, or 'auto' (default): the probe's "
                        "measured vpdpbusd zmm rate rounded to a multiple of 64 (64 = one per "
                        "cycle, issue 7's assumption; Zen 5 measures 128), 64 without a probe")
    p.add_argument("--omp-wait-policy", choices=("default", "passive", "active"),
                   default="default",
                   help="OMP_WAIT_POLICY for the workers (default: unset, as users run torch). "
                        "'passive' avoids spinning OpenMP barriers, which collapse when other "
                        "processes busy the cores (2-thread torch on a loaded 2-core VM)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before timing each case, wait up to S seconds for other processes to "
                        "leave the engines' cores free (default 0: don't wait)")
    p.add_argument("--setup-timeout", type=float, default=900.0)
    p.add_argument("--call-timeout", type=float, default=300.0)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-probe", action="store_true", help="skip the clock / VNNI probe")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--from-json", metavar="PATH",
                   help="only re-render latest.md / latest.png in --out from a latest.json")
    a = p.parse_args(argv)
    a.rounds = a.rounds or (2 if a.quick else 7)
    a.min_time = a.min_time if a.min_time is not None else (0.02 if a.quick else 0.25)
    a.min_calls = a.min_calls or (2 if a.quick else 5)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 3)
    a.thread_list = [int(t) for t in str(a.threads).split(",") if t.strip()]
    if not a.thread_list or min(a.thread_list) < 1:
        p.error("--threads needs positive ints")
    a.engine_list = [e.strip() for e in a.engines.split(",") if e.strip()]
    for e in a.engine_list:
        if e not in TIMED_ENGINES:
            p.error(f"unknown engine {e!r}; known: {', '.join(TIMED_ENGINES)}")
    return a


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "onnxruntime", "onnx", "apache-tvm", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def log(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = parse_args(argv)
    try:
        selected = C.select_cases(opts.cases)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if opts.list:
        for c in selected:
            print(f"{c.name:<26} {c.kind:<9} {c.summary()}  {c.description}")
        return {}
    out = Path(opts.out)
    if opts.from_json:
        report = json.loads(Path(opts.from_json).read_text())
        out.mkdir(parents=True, exist_ok=True)
        _write(report, out, opts, final=True)
        log(f"re-rendered {out / 'latest.md'} from {opts.from_json}")
        return report
    logdir = out / "logs"
    logdir.mkdir(parents=True, exist_ok=True)

    started = _dt.datetime.now().isoformat(timespec="seconds")
    mach = machine.cpuinfo()
    probe = {} if opts.no_probe else machine.measure()
    mach.update(probe)
    clock = mach.get("clock_mhz") or mach.get("nominal_mhz")
    peak = peak_model(opts.peak_macs_per_cycle, mach)
    log(f"machine: {mach.get('model')} x{mach.get('cpus')}, clock {clock} MHz "
        f"({peak['clock_source']}), vpdpbusd {mach.get('vnni_gmacs')} GMAC/s/core; "
        f"load {os.getloadavg()}")
    report: dict[str, Any] = {
        "started": started, "machine": mach, "peak": peak, "versions": _versions(),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "settings": {"threads": opts.thread_list, "rounds": opts.rounds,
                     "min_time": opts.min_time, "min_calls": opts.min_calls,
                     "warmup": opts.warmup, "gap_ms": opts.gap_ms, "quick": opts.quick,
                     "omp_wait_policy": opts.omp_wait_policy, "wait_quiet": opts.wait_quiet,
                     "tolerance_lsb": PEER_TOLERANCE_LSB},
        "engines": opts.engine_list, "cases": [c.name for c in selected], "results": [],
    }
    workdir = tempfile.mkdtemp(prefix="qc-bench-")
    failures = 0
    try:
        for case in selected:
            log(f"{case.name}: {case.summary()}")
            macs = C.case_macs(case) if isinstance(case, C.LayerCase) else None
            ref: dict[str, Any] | None = None
            for t in opts.thread_list:
                log(f"  threads={t}")
                runs, ref = run_case_threads(case, t, opts.engine_list, opts, workdir, logdir,
                                             ref, log)
                if macs is None:
                    macs = ref.get("info", {}).get("macs") if ref else None
                    if macs is None:
                        macs = _zoo_macs_subprocess(case)
                row = _row(case, t, macs, runs, ref, opts, peak)
                failures += sum(1 for a in row["agreement"].values() if a["ok"] is False)
                report["results"].append(row)
                _write(report, out, opts)  # keep partial results if the run is interrupted
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    report["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    report["agreement_failures"] = failures
    _write(report, out, opts, final=True)
    log(f"wrote {out / 'latest.md'}, latest.json"
        + ("" if report.get("plot_error") else ", latest.png")
        + (f"; {failures} agreement FAILURES" if failures else "; all checks passed"))
    return report


def peak_model(spec: str | float, mach: dict[str, Any]) -> dict[str, Any]:
    """The VNNI peak behind '% peak': MAC/cycle/core x clock (measured, else nominal)."""
    measured = mach.get("vnni_macs_per_cycle")
    if str(spec) == "auto":
        per_cycle = 64.0 * max(1, round(measured / 64)) if measured else 64.0
        source = (f"auto: measured {measured} MAC/cycle rounded to a multiple of 64"
                  if measured else "auto: no probe, issue 7's 64")
    else:
        per_cycle, source = float(spec), "--peak-macs-per-cycle"
    clock = mach.get("clock_mhz") or mach.get("nominal_mhz")
    return {"macs_per_cycle": per_cycle, "macs_per_cycle_source": source, "clock_mhz": clock,
            "clock_source": "measured" if mach.get("clock_mhz") else "nominal",
            "gmacs_per_thread": per_cycle * clock / 1e3 if clock else None}


def _zoo_macs_subprocess(case: C.Case) -> int | None:
    """MACs of a zoo model, computed in a child process (the harness itself imports no torch)."""
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from benchmarks import cases as C; "
            f"print(C.zoo_macs(C.get_case({case.name!r})))")
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, cwd=str(REPO), check=True)
        return int(res.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def _row(case: C.Case, threads: int, macs: int | None, runs: dict[str, EngineRun],
         ref: dict[str, Any] | None, opts: argparse.Namespace, peak: dict[str, Any]
         ) -> dict[str, Any]:
    outputs = {e: r.info.pop("_outputs") for e, r in runs.items() if "_outputs" in r.info}
    loads = [r.info.pop("_load") for r in runs.values() if "_load" in r.info]
    kernels = {e: str(r.info.get("kernel", "")) for e, r in runs.items()}
    zoo = isinstance(case, C.ZooCase)
    baseline = "reference"
    ref_outs = ref.get("outputs") if ref else None
    if ref_outs is None and "torch-x86" in outputs:
        baseline, ref_outs = "torch-x86", outputs["torch-x86"]
    agreement = (check_agreement(ref_outs, {e: o for e, o in outputs.items()
                                            if baseline != e}, zoo, baseline, kernels)
                 if ref_outs is not None else {})
    row: dict[str, Any] = {
        "case": case.name, "kind": case.kind, "summary": case.summary(),
        "description": case.description, "threads": threads, "macs": macs,
        "reference": {k: v for k, v in (ref or {}).items() if k != "outputs"},
        "agreement_baseline": baseline, "agreement": agreement, "engines": {},
        "load": loads[0] if loads else None,
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }
    for e, r in runs.items():
        row["engines"][e] = {"status": r.status, "reason": r.reason, "info": r.info,
                             "setup_s": r.setup_s, "extra": r.extra,
                             "stats": r.stats(macs or 0, peak["gmacs_per_thread"], threads)}
    row["best_peer"] = best_peer(row, opts.engine_list)[0]
    row["ratio"] = ratio_to_best(row, opts.engine_list)
    row["ratio_min"] = ratio_to_best(row, opts.engine_list, "min_ms")
    return row


def _write(report: dict[str, Any], out: Path, opts: argparse.Namespace,
           final: bool = False) -> None:
    (out / "latest.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "latest.md").write_text(render_markdown(
        {**report, "loadavg_end": report.get("loadavg_end", "(running)")}))
    if final and not opts.no_plot:
        err = write_plot(report, out / "latest.png")
        if err:
            report["plot_error"] = err
            (out / "latest.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    rep = main()
    sys.exit(1 if rep and rep.get("agreement_failures") else 0)
