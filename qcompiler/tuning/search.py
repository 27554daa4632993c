"""`tune`: search schedules for a model's kernels with meta_schedule; keep the verified winners.

    report = tune(model, example_inputs, target="x86-avx512-vnni", trials=64, out="records/")
    print(report.table())
    cm = qc.compile(model, example_inputs, target="x86-avx512-vnni", tuning_records="records/")

For every distinct kernel of the model as `qc.compile` builds it (opt_level 2: the same
lowering strategies, so the same unscheduled PrimFunc and hence the same record key):

1. pick: kernels with a reduction (conv, dense, pooling) that the *generic* rules schedule
   (`all_kernels` adds hand-scheduled and injective ones; `only` filters by name). Never: opaque
   `te.extern` kernels, and kernels with a float reduction, whose summation order is part of
   their semantics (meta_schedule splits and reorders reduction loops).
2. baseline: time the kernel as the schedule rules build it.
3. search: `trials` candidates from meta_schedule's CPU search space (`_ms.search_space`),
   built and timed in this process on the kernel's real constants and random activations.
4. verify: the fastest candidates, best first, run on a random and an extreme-value input
   set; each output must equal the *unscheduled* kernel's bit for bit (NaN equal to NaN).
   A candidate that differs is rejected (counted in the report), the next one is tried.
5. keep: the verified candidate is timed against the baseline in alternation (medians of 5
   rounds) and recorded only when it is at least `min_speedup` (default 1.05) times faster.

Records go to `<out>/<preset>/` (records.py: a meta_schedule JSON database plus
`qcompiler-records.json`); tuning again into the same folder adds to it.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qcompiler.target import TargetPreset, get_target
from qcompiler.tuning.records import (
    FORMAT,
    TuningError,
    preset_dir,
    read_meta,
    write_meta,
)

Progress = Callable[[str], None]

GENERIC_PREFIX = "generic"
"""Names of the generic schedule rules start with this (codegen/generic.py)."""


@dataclass
class KernelResult:
    """What tuning did with one kernel."""

    name: str
    op: str
    kind: str
    rule: str | None
    """The schedule the rules give it (the baseline)."""
    hash: int
    status: str
    """`tuned` (recorded), `no-gain` (verified but not faster), `rejected` (every candidate
    tried differed from the untuned kernel), `failed` (no candidate built and ran), `skipped`."""
    reason: str = ""
    baseline_us: float | None = None
    tuned_us: float | None = None
    trials: int = 0
    """Candidates measured."""
    rejected: int = 0
    """Candidates whose outputs differed from the untuned kernel."""
    seconds: float = 0.0

    @property
    def speedup(self) -> float | None:
        if self.baseline_us and self.tuned_us:
            return self.baseline_us / self.tuned_us
        return None


@dataclass
class TuneReport:
    target: str
    directory: Path | None
    """The preset folder records were written to (None: `out` not given)."""
    kernels: list[KernelResult] = field(default_factory=list)

    @property
    def tuned(self) -> list[KernelResult]:
        return [k for k in self.kernels if k.status == "tuned"]

    def table(self) -> str:
        rows = [k for k in self.kernels if k.status != "skipped"]
        skipped = len(self.kernels) - len(rows)
        w = max([len("kernel"), *(len(k.name) for k in rows)])
        head = f"{'kernel':<{w}}  {'status':<8}  {'rule':<20}  {'base_us':>9}  {'tuned_us':>9}  " \
               f"{'x':>5}  {'trials':>6}  {'rej':>3}"
        lines = [head, "-" * len(head)]
        for k in rows:
            b = f"{k.baseline_us:9.2f}" if k.baseline_us else f"{'-':>9}"
            t = f"{k.tuned_us:9.2f}" if k.tuned_us else f"{'-':>9}"
            s = f"{k.speedup:5.2f}" if k.speedup else f"{'-':>5}"
            lines.append(f"{k.name:<{w}}  {k.status:<8}  {k.rule or '-':<20}  {b}  {t}  {s}  "
                         f"{k.trials:>6}  {k.rejected:>3}" + (f"  ({k.reason})" if k.reason else ""))
        lines.append(f"{len(self.tuned)} of {len(rows)} tuned kernels recorded"
                     + (f" in {self.directory}" if self.directory else "")
                     + f"; {skipped} kernels not tuned (see `skipped` entries)")
        return "\n".join(lines)


# --- picking kernels -----------------------------------------------------------------------------


def float_reduction(func: Any) -> str | None:
    """The name of a block of `func` that reduces into a float buffer, or None."""
    from qcompiler.lowering.tvm_compat import ITER_REDUCE, block_info, child_blocks, new_schedule

    sch = new_schedule(func)
    for b in child_blocks(sch):
        name, kinds, _ = block_info(sch, b)
        if ITER_REDUCE in kinds:
            dtypes = {str(w.source.dtype) for w in sch.get(b).writes}
            if any(d.startswith(("float", "bfloat")) for d in dtypes):
                return name
    return None


def skip_reason(kf: Any, only: str | None, all_kernels: bool) -> str | None:
    """Why kernel `kf` is not tuned, or None to tune it."""
    if only is not None and not fnmatch.fnmatchcase(kf.name, only):
        return f"not selected by --only {only}"
    if kf.schedule_kind == "opaque":
        return "opaque kernel (te.extern): nothing to schedule"
    if not all_kernels:
        if kf.schedule_kind == "injective":
            return "element-wise kernel (tuned only with all_kernels)"
        if kf.rule is not None and not kf.rule.startswith(GENERIC_PREFIX):
            return f"hand-scheduled by {kf.rule} (tuned only with all_kernels)"
    blk = float_reduction(kf.func)
    if blk is not None:
        return f"float reduction in block {blk}: its summation order is part of its semantics"
    return None


# --- kernel arguments ----------------------------------------------------------------------------


def _random_array(rng: np.random.Generator, shape: Sequence[int], dtype: str,
                  extreme: bool) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(dt)
    if dt.kind == "f":
        x = rng.standard_normal(shape) * 4.0
        if extreme:
            picks = np.array([0.0, -0.0, 1e30, -1e30, np.inf, -np.inf, 1e-40, 0.5, -2.5])
            mask = rng.random(shape) < 0.3
            x = np.where(mask, rng.choice(picks, shape), x)
        return x.astype(dt)
    info = np.iinfo(dt)
    lo, hi = max(int(info.min), -128), min(int(info.max), 255)
    if dt.itemsize >= 4:
        lo, hi = max(lo, -100), min(hi, 100)  # int32/int64 activations: small values
    if extreme:
        return rng.choice(np.array([lo, hi, 0, lo + 1, hi - 1], dtype=np.int64), shape).astype(dt)
    return rng.integers(lo, hi, shape, endpoint=True).astype(dt)


def kernel_arrays(lowered: Any, kf: Any, rng: np.random.Generator,
                  extreme: bool = False) -> tuple[list[np.ndarray], int]:
    """(arrays for every parameter of `kf.func`, number of trailing outputs): graph constants
    and lowering constants hold their real data (index tables must stay in range), other
    inputs are random (extreme values with `extreme`), outputs are zeros."""
    call = next(k for k in lowered.kernels if k.func is kf)
    graph = lowered.graph
    arrays: list[np.ndarray] = []
    for v in call.inputs:
        if graph.is_const(v):
            arrays.append(np.ascontiguousarray(graph.const_data(v)))
        else:
            arrays.append(_random_array(rng, v.type.shape, v.type.dtype.storage, extreme))
    arrays += [np.ascontiguousarray(c) for c in call.constants]
    arrays += [np.zeros(v.type.shape, v.type.dtype.storage) for v in call.outputs]
    n_params = len(kf.func.params)
    if n_params != len(arrays):
        raise TuningError(f"kernel {kf.name}: {n_params} parameters, call site has "
                          f"{len(arrays)} arguments")
    return arrays, len(call.outputs)


def run_outputs(lib: Any, arrays: Sequence[np.ndarray], n_out: int) -> list[np.ndarray]:
    from qcompiler.tuning import _ms

    args = _ms.runtime_args(arrays)
    lib["main"](*args)
    return [a.numpy() for a in args[len(args) - n_out:]]


def same_outputs(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> bool:
    """Bit-equal, except that any NaN equals any NaN."""
    for g, w in zip(got, want):
        if g.dtype != w.dtype or g.shape != w.shape:
            return False
        if g.dtype.kind == "f":
            bits = np.dtype(f"u{g.dtype.itemsize}")
            if not np.all((g.view(bits) == w.view(bits)) | (np.isnan(g) & np.isnan(w))):
                return False
        elif not np.array_equal(g, w):
            return False
    return True


def candidate_matches(lib: Any, inputs: Sequence[Sequence[np.ndarray]],
                      want: Sequence[Sequence[np.ndarray]], n_out: int) -> bool:
    """A tuned build's outputs equal the untuned kernel's (`want`) on every input set."""
    return all(same_outputs(run_outputs(lib, a, n_out), w) for a, w in zip(inputs, want))


# --- one kernel ----------------------------------------------------------------------------------


@dataclass
class _Settings:
    trials: int
    seed: int
    number: int = 5
    repeat: int = 5
    min_repeat_ms: int = 20
    min_speedup: float = 1.05
    """Record a verified candidate only when baseline / tuned >= this."""
    rounds: int = 5
    """Alternating baseline/candidate timings the keep-or-not decision takes medians of."""
    candidates: int = 5
    """Fastest candidates verified (in order) before giving up on a kernel."""


def _median_us(lib: Any, arrays: Sequence[np.ndarray], s: _Settings) -> float:
    from qcompiler.tuning import _ms

    t = _ms.time_module(lib, _ms.runtime_args(arrays), s.number, s.repeat, s.min_repeat_ms)
    return float(np.median(t)) * 1e6


def _tune_kernel(lowered: Any, kf: Any, preset: TargetPreset, s: _Settings,
                 progress: Progress) -> tuple[KernelResult, Any]:
    """Tune one kernel; (result, verified tuning record or None)."""
    from qcompiler.tuning import _ms

    t0 = time.perf_counter()
    target = preset.tvm_target()
    res = KernelResult(kf.name, kf.op, kf.schedule_kind, kf.rule, _ms.structural_hash(kf.func),
                       "failed")
    rng = np.random.default_rng(s.seed)
    sets = [kernel_arrays(lowered, kf, rng, extreme) for extreme in (False, True)]
    n_out = sets[0][1]
    inputs = [a for a, _ in sets]
    naive = _ms.build_func(_ms.normalize(kf.func), target)
    want = [run_outputs(naive, a, n_out) for a in inputs]
    base = _ms.build_func(_ms.normalize(kf.scheduled if kf.scheduled is not None else kf.func),
                          target)
    if not all(same_outputs(run_outputs(base, a, n_out), w) for a, w in zip(inputs, want)):
        res.status, res.reason = "skipped", "its rule-scheduled build differs from the naive one"
        return res, None
    res.baseline_us = _median_us(base, inputs[0], s)

    best = [float("inf")]

    def on_result(secs: float | None) -> None:
        res.trials += 1
        if secs is not None:
            best[0] = min(best[0], secs * 1e6)
        if res.trials % 8 == 0 or res.trials == s.trials:
            shown = f"{best[0]:.2f} us" if best[0] < float("inf") else "none yet"
            progress(f"    {res.trials}/{s.trials} candidates, best {shown} "
                     f"(baseline {res.baseline_us:.2f} us)")

    run_args = _ms.runtime_args(inputs[0])
    runner = _ms.InProcessRunner(lambda: run_args, number=3, repeat=3, min_repeat_ms=10,
                                 on_result=on_result)
    with tempfile.TemporaryDirectory(prefix="qc_tune_") as work:
        db = _ms.tune_one(kf.func, target, work, s.trials, runner, seed=s.seed)
    measured = [r for r in db.get_all_tuning_records() if r.run_secs]
    measured.sort(key=lambda r: float(np.median([float(x) for x in r.run_secs])))
    for rec in measured[: s.candidates]:
        try:
            lib = _ms.build_func(_ms.normalize(_ms.schedule_of_record(rec, kf.func)), target)
        except Exception as e:  # noqa: BLE001  (a record that does not replay: try the next)
            progress(f"    candidate does not replay ({type(e).__name__}); trying the next")
            continue
        if not candidate_matches(lib, inputs, want, n_out):
            res.rejected += 1
            continue
        # the decision: baseline and candidate timed in alternation, medians over rounds (one
        # measurement each is at the mercy of whatever else runs on the machine)
        base_t, tuned_t = [], []
        for _ in range(s.rounds):
            base_t.append(_median_us(base, inputs[0], s))
            tuned_t.append(_median_us(lib, inputs[0], s))
        res.baseline_us, res.tuned_us = float(np.median(base_t)), float(np.median(tuned_t))
        res.seconds = time.perf_counter() - t0
        if res.baseline_us >= s.min_speedup * res.tuned_us:
            res.status = "tuned"
            return res, rec
        res.status = "no-gain"
        res.reason = f"the fastest verified candidate is not {s.min_speedup:g}x faster"
        return res, None
    res.seconds = time.perf_counter() - t0
    if res.rejected:
        res.status = "rejected"
        res.reason = f"{res.rejected} fastest candidates differed from the untuned kernel"
    else:
        res.reason = "no candidate built and ran"
    return res, None


# --- records -------------------------------------------------------------------------------------


def _commit(directory: Path, preset: TargetPreset, kf: Any, rec: Any, res: KernelResult,
            model: str, threads: int) -> None:
    import qcompiler
    from qcompiler.lowering.tvm_compat import TVM_VERSION
    from qcompiler.tuning import _ms

    meta = read_meta(directory) if directory.exists() else {"kernels": {}}
    directory.mkdir(parents=True, exist_ok=True)
    db = _ms.open_database(str(directory))
    workload = db.commit_workload(_ms.normalize(kf.func))
    db.commit_tuning_record(_ms.TuningRecord(
        rec.trace, workload, [res.tuned_us * 1e-6], preset.tvm_target(), rec.args_info))
    meta.update({
        "format": FORMAT,
        "target": preset.to_dict(),
        "versions": {"qcompiler": qcompiler.__version__, "tvm": TVM_VERSION},
    })
    entry = {k: v for k, v in asdict(res).items()
             if k in ("name", "op", "kind", "rule", "hash", "baseline_us", "tuned_us", "trials")}
    entry["model"] = model
    entry["threads"] = threads
    entry["tuned_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta["kernels"][str(res.hash)] = entry
    write_meta(directory, meta)


# --- the model -----------------------------------------------------------------------------------


def tune(
    model_or_graph: Any,
    example_inputs: Any = None,
    *,
    target: str | TargetPreset = "host",
    trials: int = 32,
    out: str | os.PathLike[str] | None = None,
    only: str | None = None,
    all_kernels: bool = False,
    num_threads: int | None = None,
    seed: int = 0,
    min_speedup: float = 1.05,
    model_name: str = "",
    progress: Progress | None = None,
) -> TuneReport:
    """Tune the kernels of a model (a `Graph` or PyTorch model, as `qc.compile` takes) for
    `target` with `trials` measured candidates per kernel; write verified winners to
    `<out>/<preset>/` (see the module docstring); a verified candidate is kept when it is at
    least `min_speedup` times faster than the rules' schedule (0: keep any verified one).
    Returns the per-kernel report."""
    say = progress or (lambda _msg: None)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise TuningError(f"trials must be an int >= 1, got {trials!r}")
    preset = get_target(target, num_cores=num_threads)
    if preset.is_cross():
        missing = ", ".join(sorted(preset.missing_on_host())) or preset.arch
        raise TuningError(
            f"tuning runs candidate kernels on this machine, which cannot run code for target "
            f"{preset.display_name} (missing: {missing}); tune on a machine of that target"
        )
    directory = None if out is None else preset_dir(out, preset)
    if directory is not None and directory.exists():
        read_meta(directory)  # fail early on a folder that is not ours

    from qcompiler.driver import build

    say(f"building the model for {preset.display_name} (opt_level 2, no tuning records)")
    built = build(model_or_graph, example_inputs, target=preset, num_threads=num_threads,
                  tuning_records=False)
    if num_threads is not None:
        built.module.num_threads = num_threads
    report = TuneReport(preset.name, directory)
    funcs = list(built.lowered.funcs)
    picked = []
    for kf in funcs:
        why = skip_reason(kf, only, all_kernels)
        if why is None:
            picked.append(kf)
        else:
            report.kernels.append(KernelResult(kf.name, kf.op, kf.schedule_kind, kf.rule, 0,
                                               "skipped", why))
    say(f"{len(funcs)} kernels, {len(picked)} to tune with {trials} trials each")
    settings = _Settings(trials, seed, min_speedup=min_speedup)
    for i, kf in enumerate(picked, 1):
        say(f"[{i}/{len(picked)}] {kf.name} ({kf.op}, rule {kf.rule})")
        try:
            res, rec = _tune_kernel(built.lowered, kf, preset, settings, say)
        except TuningError:
            raise
        # one kernel's failure must not lose the others' results
        except Exception as e:  # noqa: BLE001
            from qcompiler.tuning import _ms

            res, rec = KernelResult(kf.name, kf.op, kf.schedule_kind, kf.rule,
                                    _ms.structural_hash(kf.func), "failed",
                                    f"{type(e).__name__}: {str(e)[:200]}"), None
        report.kernels.append(res)
        if rec is not None and directory is not None:
            _commit(directory, preset, kf, rec, res, model_name, built.module.num_threads)
        shown = f"{res.speedup:.2f}x" if res.speedup else "-"
        say(f"    -> {res.status} {res.reason} (baseline {res.baseline_us or 0:.2f} us, "
            f"tuned {res.tuned_us or 0:.2f} us, {shown}, {res.seconds:.1f}s)")
    return report


__all__ = ["KernelResult", "TuneReport", "float_reduction", "kernel_arrays", "same_outputs",
           "skip_reason", "tune"]
