"""TVM meta_schedule, as qcompiler uses it: the one module of `tuning/` that names its API.

`lowering/tvm_compat.py` names the TVM modules the compiler needs on every build;
meta_schedule is only needed to tune and to read tuning records, so it lives here and is
imported only then (its import costs ~2 s).

What is here:

- `search_space(preset)`: meta_schedule's CPU rules (DefaultLLVM) without tensor intrinsics
  and without layout rewriting (`RewriteLayout` would change a kernel's parameter layout, and
  qcompiler binds weights in the layout the lowering chose).
- `InProcessBuilder` / `InProcessRunner`: build and time candidates in this process.
  meta_schedule's `LocalBuilder`/`LocalRunner` start worker pools that import TVM (and, in
  the builder, `tvm.s_tir.tensor_intrin`: 15-30 s per worker, so every candidate times out;
  docs/tvm-0.27-notes.md recipe 6), and fill every argument with random data, which is wrong
  for kernels that read index tables (pooling windows): out-of-bounds reads. The runner here
  takes an `arguments(args_info)` callback that supplies real constants.
- `skip_stock_intrinsics()`: `TuneContext.__init__` imports `tvm.s_tir.tensor_intrin` (all
  stock intrinsics of every backend: 15-30 s) although qcompiler's search space uses none.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tvm_ffi

from qcompiler.lowering.tvm_compat import IRModule, PrimFunc, Target, cpu, to_tensor, tvm


def skip_stock_intrinsics() -> None:
    """Make `import tvm.s_tir.tensor_intrin` cheap: register the package without running its
    `__init__` (which imports every backend's intrinsics). Its submodules stay importable
    (`tvm.s_tir.tensor_intrin.x86` loads on demand from the real package directory)."""
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return
    stub = types.ModuleType(name, "stock tensor intrinsics (package __init__ skipped by qcompiler)")
    stub.__path__ = list(spec.submodule_search_locations)
    stub.__spec__ = spec
    sys.modules[name] = stub
    tvm.s_tir.tensor_intrin = stub  # type: ignore[attr-defined]


skip_stock_intrinsics()

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.runner import (
    PyRunner,
    PyRunnerFuture,
    RunnerFuture,
    RunnerInput,
    RunnerResult,
)

JSONDatabase = ms.database.JSONDatabase
TuningRecord = ms.database.TuningRecord
Workload = ms.database.Workload
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


def normalize(func: PrimFunc) -> IRModule:
    """The workload module of a kernel: `{"main": func}` with `global_symbol` "main", so the
    structural hash does not depend on the kernel's name in one particular graph.

    NOTE: a deep copy. meta_schedule's schedules (tuning, trace replay) mutate the nodes of
    the module they are given in place, which changed the caller's unscheduled kernel (and
    with it the workload that was recorded)."""
    copy = tvm.ir.load_json(tvm.ir.save_json(func))
    return IRModule({"main": copy.with_attr("global_symbol", "main")})


def structural_hash(func: PrimFunc) -> int:
    """The record key of an unscheduled kernel (equal to the hash of `normalize(func)`; hashing
    mutates nothing, so no copy)."""
    return int(tvm_ffi.structural_hash(IRModule({"main": func.with_attr("global_symbol", "main")})))


def open_database(directory: str) -> Any:
    """The meta_schedule JSON database in `directory` (created when missing)."""
    import os

    return JSONDatabase(
        path_workload=os.path.join(directory, WORKLOAD_FILE),
        path_tuning_record=os.path.join(directory, RECORD_FILE),
        allow_missing=True,
    )


def query(db: Any, func: PrimFunc, target: Target) -> PrimFunc | None:
    """The best recorded schedule of `func` in `db`, applied to it; None without a record."""
    mod = normalize(func)
    if not db.has_workload(mod):
        return None
    sch = db.query_schedule(mod, target, workload_name="main")
    if sch is None:
        return None
    funcs = list(sch.mod.functions.values())
    return funcs[0] if len(funcs) == 1 else None


def search_space() -> Any:
    """PostOrderApply with DefaultLLVM's rules minus intrinsics and layout rewriting."""
    R = ms.schedule_rule
    return ms.space_generator.PostOrderApply(
        sch_rules=[
            R.ApplyCustomRule(),
            R.InlineConstantScalars(),
            R.AutoInline(
                into_producer=False,
                into_consumer=True,
                inline_const_tensor=True,
                disallow_if_then_else=True,
                require_injective=True,
                require_ordered=True,
                disallow_op=["tirx.exp"],
            ),
            R.AddRFactor(max_jobs_per_core=16, max_innermost_factor=64),
            R.MultiLevelTiling(
                structure="SSRSRS",
                max_innermost_factor=64,
                reuse_write=R.ReuseType(req="may", levels=[1, 2], scope="global"),
            ),
            R.ParallelizeVectorizeUnroll(
                max_jobs_per_core=16,
                max_vectorize_extent=64,
                unroll_max_steps=[0, 16, 64, 512],
                unroll_explicit=True,
            ),
            R.RandomComputeLocation(),
        ],
        postprocs=[
            ms.postproc.DisallowDynamicLoop(),
            ms.postproc.RewriteParallelVectorizeUnroll(),
            ms.postproc.RewriteReductionBlock(),
        ],
        # explicit, as DefaultLLVM's: any "from-target" part makes meta_schedule build the
        # target's whole default rule set, which for VNNI CPUs names the stock intrinsic
        mutator_probs={
            ms.mutator.MutateTileSize(): 0.9,
            ms.mutator.MutateComputeLocation(): 0.05,
            ms.mutator.MutateUnroll(): 0.03,
            ms.mutator.MutateParallel(max_jobs_per_core=16): 0.02,
        },
    )


# --- in-process builder and runner ---------------------------------------------------------------

_BUILT: dict[str, Any] = {}
"""Built candidates by pseudo artifact path (`mem:<n>`); the runner pops them."""


def build_func(mod: IRModule, target: Target) -> Any:
    """A runtime module of one (scheduled) kernel."""
    return tvm.compile(mod, target=target).jit()


@derived_object
class InProcessBuilder(PyBuilder):
    """Compiles each candidate with `tvm.compile` in this process."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        results = []
        for bi in build_inputs:
            try:
                lib = build_func(bi.mod, bi.target)
            # TVM build errors: the candidate is reported as failed
            except Exception as e:  # noqa: BLE001
                results.append(BuilderResult(None, f"{type(e).__name__}: {str(e)[:2000]}"))
                continue
            self.count += 1
            path = f"mem:{id(self)}:{self.count}"
            _BUILT[path] = lib
            results.append(BuilderResult(path, None))
        return results


@derived_object
class _DoneFuture(PyRunnerFuture):
    def __init__(self, result: RunnerResult) -> None:
        super().__init__()
        self.res = result

    def done(self) -> bool:
        return True

    def result(self) -> RunnerResult:
        return self.res


def time_module(lib: Any, args: Sequence[Any], number: int, repeat: int, min_ms: int) -> list[float]:
    """Seconds per call of `lib["main"](*args)`, one value per repeat."""
    f = lib.time_evaluator("main", cpu(), number=number, repeat=repeat, min_repeat_ms=min_ms)
    return [float(t) for t in f(*args).results]


@derived_object
class InProcessRunner(PyRunner):
    """Times each built candidate in this process on `arguments(args_info)` (runtime tensors)."""

    def __init__(
        self,
        arguments: Callable[[], list[Any]],
        number: int = 3,
        repeat: int = 3,
        min_repeat_ms: int = 10,
        on_result: Callable[[float | None], None] | None = None,
    ) -> None:
        super().__init__()
        self.arguments = arguments
        self.number, self.repeat, self.min_repeat_ms = number, repeat, min_repeat_ms
        self.on_result = on_result

    def run(self, runner_inputs: list[RunnerInput]) -> list[RunnerFuture]:
        futures = []
        for ri in runner_inputs:
            lib = _BUILT.pop(str(ri.artifact_path), None)
            if lib is None:
                res = RunnerResult(None, f"no built module for {ri.artifact_path}")
                secs = None
            else:
                try:
                    times = time_module(
                        lib, self.arguments(), self.number, self.repeat, self.min_repeat_ms
                    )
                    res, secs = RunnerResult(times, None), float(np.median(times))
                except Exception as e:  # noqa: BLE001  (reported as a failed run)
                    res, secs = RunnerResult(None, f"{type(e).__name__}: {e}"), None
            if self.on_result is not None:
                self.on_result(secs)
            futures.append(_DoneFuture(res))
        return futures


def tune_one(
    func: PrimFunc,
    target: Target,
    work_dir: str,
    trials: int,
    runner: Any,
    seed: int = 0,
) -> Any:
    """meta_schedule's `tune_tir` on one kernel with the in-process builder and `runner`;
    returns the work database (every measured candidate)."""
    cost_model = "xgb" if importlib.util.find_spec("xgboost") is not None else "random"
    # meta_schedule logs every batch at INFO to the console; qcompiler reports progress itself
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    return ms.tir_integration.tune_tir(
        normalize(func),
        target,
        work_dir,
        max_trials_global=trials,
        num_trials_per_iter=min(trials, 16),
        builder=InProcessBuilder(),
        runner=runner,
        database=ms.database.MemoryDatabase(),
        cost_model=cost_model,
        measure_callbacks=[
            ms.measure_callback.AddToDatabase(),
            ms.measure_callback.UpdateCostModel(),
        ],
        task_scheduler="round-robin",
        space=search_space(),
        # meta_schedule's default population (512 random schedules, 4 genetic rounds) costs
        # seconds per candidate on multi-block kernels; scale it with the trial budget
        strategy=ms.search_strategy.EvolutionarySearch(
            population_size=max(32, min(512, 2 * trials)),
            init_min_unmeasured=max(8, min(50, trials)),
            genetic_num_iters=2 if trials < 256 else 4,
        ),
        num_tuning_cores=1,
        seed=seed,
    )


def schedule_of_record(record: Any, func: PrimFunc) -> PrimFunc:
    """Replay a record's trace on `func` (unscheduled)."""
    from tvm.s_tir import Schedule

    sch = Schedule(normalize(func))
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod["main"]


def runtime_args(arrays: Sequence[np.ndarray]) -> list[Any]:
    return [to_tensor(a) for a in arrays]


__all__ = [
    "RECORD_FILE",
    "WORKLOAD_FILE",
    "InProcessBuilder",
    "InProcessRunner",
    "JSONDatabase",
    "TuningRecord",
    "build_func",
    "normalize",
    "open_database",
    "query",
    "runtime_args",
    "schedule_of_record",
    "search_space",
    "skip_stock_intrinsics",
    "structural_hash",
    "time_module",
    "tune_one",
]
