"""`CompiledModule`: a compiled model you can call, time, profile and export.

It wraps a Relax VM executable (from `tvm.compile`, or loaded from an artifact's `model.so`) and
the manifest that describes its signature. Calls take numpy arrays or torch tensors and return
the same kind: numpy in, numpy out; any torch tensor in, torch tensors out (quantized outputs
come back as torch quantized tensors with the manifest's qparams).

Dependencies: numpy, the TVM runtime, and `qcompiler.errors` / `qcompiler.target` only. torch is
imported by nobody here: a value is a torch tensor only if torch is already in `sys.modules`.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import tvm
from tvm import relax

from qcompiler.errors import ArtifactError, InputError, QCompilerError, TargetError
from qcompiler.runtime import manifest as mf
from qcompiler.runtime.manifest import IOInfo
from qcompiler.target import TargetPreset, host_arch

_ENTRY = "main"
_SCALE_RTOL = 1e-6
"""Relative tolerance when comparing a torch tensor's scale with the manifest's (the frontend
records torch's float64 scale, but a float32 round trip on the way must not be an error)."""


class ProfileRow(TypedDict):
    """One line of `CompiledModule.profile`: a kernel or VM builtin, times per model run."""

    name: str
    kind: str
    """`kernel` (a compiled PrimFunc) or `builtin` (VM allocation, shape checks, ...)."""
    op: str | None
    """The IR op the kernel came from, when the manifest's `kernels` list says."""
    calls: float
    """Calls per model run."""
    total_us: float
    """Time per model run spent in this function (exclusive of nested calls), microseconds."""
    mean_us: float
    """Time per call, microseconds."""
    percent: float
    """Share of the sum of all rows."""


@dataclass(frozen=True)
class ProfileReport:
    """Per-function times of one model, averaged over `repeat` instrumented runs."""

    rows: list[ProfileRow]
    """Sorted by `total_us`, largest first."""
    repeat: int
    wall_us: float
    """Mean wall time of an instrumented run; includes the Python instrumentation overhead
    (about a microsecond per VM call), so it exceeds `benchmark()` for small models."""

    def __iter__(self) -> Iterator[ProfileRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> ProfileRow:
        return self.rows[i]

    def kernels(self) -> list[ProfileRow]:
        """Only the compiled kernels, without VM builtins."""
        return [r for r in self.rows if r["kind"] == "kernel"]

    def table(self) -> str:
        """A fixed-width text table of the rows, with a total line."""
        name_w = max([len("name"), *(len(r["name"]) for r in self.rows)])
        op_w = max([len("op"), *(len(r["op"] or "") for r in self.rows)])
        head = (
            f"{'name':<{name_w}}  {'op':<{op_w}}  {'calls':>6}  {'total_us':>10}  "
            f"{'mean_us':>9}  {'%':>6}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r['name']:<{name_w}}  {r['op'] or '':<{op_w}}  {r['calls']:>6.4g}  "
                f"{r['total_us']:>10.2f}  {r['mean_us']:>9.2f}  {r['percent']:>6.2f}"
            )
        total = sum(r["total_us"] for r in self.rows)
        lines.append("-" * len(head))
        lines.append(
            f"{'total (sum of rows)':<{name_w + op_w + 10}}  {total:>10.2f}    "
            f"(instrumented wall time per run: {self.wall_us:.2f} us, {self.repeat} runs)"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@dataclass(frozen=True)
class BenchmarkResult:
    """Latency of one full model call (`main`), measured by TVM's `time_evaluator`."""

    median_ms: float
    min_ms: float
    mean_ms: float
    max_ms: float
    std_ms: float
    number: int
    """Calls averaged into each measurement."""
    repeat: int
    """Measurements taken (each the mean of `number` calls)."""
    num_threads: int
    results_ms: tuple[float, ...] = field(repr=False, default=())

    def __str__(self) -> str:
        return (
            f"median {self.median_ms:.4f} ms, min {self.min_ms:.4f} ms, mean {self.mean_ms:.4f} ms "
            f"(±{self.std_ms:.4f}; {self.repeat}x{self.number} calls, {self.num_threads} threads)"
        )


class CompiledModule:
    """A compiled model: call it, time it, profile it, export it.

    `executable_or_module` is a Relax VM executable (`tvm.compile(...)`) or a runtime module
    loaded from a `model.so`; `manifest` describes its signature (see `runtime/manifest.py`).
    The VM is created on first use, so a module compiled for another CPU can still be exported.
    """

    def __init__(
        self,
        executable_or_module: tvm.runtime.Executable | tvm.runtime.Module,
        manifest: Mapping[str, Any],
        *,
        library_path: str | Path | None = None,
        memory_cfg: str | None = None,
    ) -> None:
        if not isinstance(executable_or_module, (tvm.runtime.Executable, tvm.runtime.Module)):
            raise QCompilerError(
                "CompiledModule needs a Relax VM executable (tvm.compile) or a runtime module "
                f"(tvm.runtime.load_module), got {type(executable_or_module).__name__}"
            )
        self._manifest = mf.normalize(manifest)
        mf.check_header(self._manifest)
        self._inputs, self._outputs = mf.parse_signature(self._manifest)
        self._target = _parse_target(self._manifest)
        self._executable = executable_or_module
        self._library_path = None if library_path is None else Path(library_path)
        self._memory_cfg = memory_cfg
        self._device = tvm.cpu(0)
        self._rt_module: tvm.runtime.Module | None = None
        self._vm: relax.VirtualMachine | None = None
        self._main: Any = None
        kernels = self._manifest.get("kernels") or []
        self._kernel_ops: dict[str, str] = {
            str(k["name"]): str(k["op"])
            for k in kernels
            if isinstance(k, Mapping) and "name" in k and "op" in k
        }

    # --- signature and metadata -----------------------------------------------------------------

    @property
    def input_info(self) -> list[IOInfo]:
        """The inputs the compiled function takes, in call order."""
        return list(self._inputs)

    @property
    def output_info(self) -> list[IOInfo]:
        """The outputs the compiled function returns, in order."""
        return list(self._outputs)

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest (as it would be written by `export`, minus checksums)."""
        return copy.deepcopy(self._manifest)

    @property
    def target(self) -> TargetPreset | None:
        """The target the module was compiled for, if the manifest records one."""
        return self._target

    @property
    def graph_ir(self) -> str | None:
        """Text IR of the compiled graph, when the compiler recorded it."""
        ir = self._manifest.get("graph_ir")
        return ir if isinstance(ir, str) else None

    @property
    def kernels(self) -> list[dict[str, Any]]:
        """The manifest's kernel list (`name`, `op`, ...), possibly empty."""
        return copy.deepcopy(list(self._manifest.get("kernels") or []))

    def __repr__(self) -> str:
        ins = ", ".join(io.describe() for io in self._inputs)
        outs = ", ".join(io.describe() for io in self._outputs)
        tgt = self._target.display_name if self._target else "unknown target"
        return f"CompiledModule(({ins}) -> ({outs}); {tgt})"

    # --- threads --------------------------------------------------------------------------------

    @property
    def num_threads(self) -> int:
        """Threads TVM's pool uses for parallel kernels (process-wide, not per module)."""
        return int(tvm.runtime.num_threads())

    @num_threads.setter
    def num_threads(self, n: int) -> None:
        # NOTE: the pool size is fixed when it is first used (TVM_NUM_THREADS, which
        # qcompiler.runtime defaults to the CPU count); config_threadpool can only go lower.
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise QCompilerError(f"num_threads must be an int >= 1 (0 = whole pool), got {n!r}")
        tvm.get_global_func("runtime.config_threadpool")(1, n)
        got = self.num_threads
        if n and got != n:
            warnings.warn(
                f"TVM thread pool has {got} threads and cannot grow to {n}: its size is fixed "
                "when first used; set TVM_NUM_THREADS before importing tvm/qcompiler",
                RuntimeWarning,
                stacklevel=2,
            )

    # --- calling --------------------------------------------------------------------------------

    def __call__(self, *inputs: Any) -> Any:
        """Run the model. numpy in → numpy out; any torch tensor in → torch tensors out.

        A single output is returned as is, several as a tuple. Inputs must match the
        manifest's dtypes and shapes exactly (`InputError` names the input otherwise).
        """
        arrays, use_torch = self._convert_inputs(inputs)
        main = self._get_main()
        result = main(*[tvm.runtime.tensor(a, self._device) for a in arrays])
        return self._convert_outputs(result, use_torch)

    def run_numpy(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Run the model on numpy arrays and return every output as a numpy array (a list)."""
        arrays, _ = self._convert_inputs(inputs)
        result = self._get_main()(*[tvm.runtime.tensor(a, self._device) for a in arrays])
        return self._output_arrays(result)

    def benchmark(
        self, *inputs: Any, number: int = 100, repeat: int = 5, min_repeat_ms: int = 0
    ) -> BenchmarkResult:
        """Time whole-model calls with TVM's `time_evaluator` (one warm-up call first).

        Each of `repeat` measurements averages `number` calls (raised until one measurement
        takes at least `min_repeat_ms`). Input conversion is outside the timed loop.
        """
        if number < 1 or repeat < 1:
            raise QCompilerError(
                f"benchmark needs number >= 1 and repeat >= 1, got {number}, {repeat}"
            )
        arrays, _ = self._convert_inputs(inputs)
        vm = self._get_vm()
        args = [tvm.runtime.tensor(a, self._device) for a in arrays]
        saved = "__qcompiler_benchmark"
        # save_function binds the arguments, so the timed loop does no dictionary lookups
        vm.save_function(_ENTRY, saved, *args)
        res = vm.time_evaluator(
            saved, self._device, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms
        )()
        results = tuple(float(r) * 1e3 for r in res.results)
        return BenchmarkResult(
            median_ms=float(res.median) * 1e3,
            min_ms=float(res.min) * 1e3,
            mean_ms=float(res.mean) * 1e3,
            max_ms=float(res.max) * 1e3,
            std_ms=float(res.std) * 1e3,
            number=number,
            repeat=repeat,
            num_threads=self.num_threads,
            results_ms=results,
        )

    def profile(self, *inputs: Any, repeat: int = 10) -> ProfileReport:
        """Time every VM call (kernels and builtins) over `repeat` runs after one warm-up.

        TVM 0.27's Relax VM has no profiler, so this uses `VirtualMachine.set_instrument`: a
        callback before and after each call instruction. Times are exclusive of nested calls
        and include about a microsecond of callback overhead each; compare kernels with each
        other, and use `benchmark()` for the end-to-end latency.
        """
        if repeat < 1:
            raise QCompilerError(f"profile needs repeat >= 1, got {repeat}")
        arrays, _ = self._convert_inputs(inputs)
        self._check_runnable()
        # A VM of its own, so the instrument never slows down ordinary calls.
        vm = relax.VirtualMachine(self._get_rt_module(), self._device, memory_cfg=self._memory_cfg)
        args = [tvm.runtime.tensor(a, self._device) for a in arrays]
        main = vm[_ENTRY]
        main(*args)  # warm-up: first-touch allocations, lazy initialisation

        calls: dict[str, int] = {}
        total_ns: dict[str, int] = {}
        stack: list[list[Any]] = []  # [symbol, start_ns, nested_ns]

        def instrument(func: Any, symbol: str, before_run: bool, ret: Any, *args: Any) -> int:
            now = time.perf_counter_ns()
            if before_run:
                stack.append([str(symbol), now, 0])
                return 0
            if not stack:
                return 0
            sym, start, nested = stack.pop()
            elapsed = now - start
            if stack:
                stack[-1][2] += elapsed
            calls[sym] = calls.get(sym, 0) + 1
            total_ns[sym] = total_ns.get(sym, 0) + elapsed - nested
            return 0

        vm.set_instrument(instrument)
        t0 = time.perf_counter_ns()
        for _ in range(repeat):
            main(*args)
        wall_ns = time.perf_counter_ns() - t0

        grand = sum(total_ns.values()) or 1
        rows: list[ProfileRow] = []
        for sym, ns in total_ns.items():
            n = calls[sym]
            rows.append(
                ProfileRow(
                    name=sym,
                    kind="builtin" if sym.startswith("vm.") else "kernel",
                    op=self._kernel_ops.get(sym),
                    calls=n / repeat,
                    total_us=ns / repeat / 1e3,
                    mean_us=ns / n / 1e3,
                    percent=100.0 * ns / grand,
                )
            )
        rows.sort(key=lambda r: (-r["total_us"], r["name"]))
        return ProfileReport(rows=rows, repeat=repeat, wall_us=wall_ns / repeat / 1e3)

    # --- export ---------------------------------------------------------------------------------

    def export(self, path: str | Path, *, cc: str | None = None) -> Path:
        """Write the artifact directory `path` (`model.so` + `manifest.json` with checksums).

        `cc` is the compiler that links `model.so`; for an aarch64 target on an x86_64 host it
        defaults to `aarch64-linux-gnu-g++`. Returns the directory.
        """
        from qcompiler.runtime.artifact import write_artifact

        return write_artifact(
            Path(path),
            executable=self._executable,
            library_path=self._library_path,
            manifest=self._manifest,
            target=self._target,
            cc=cc,
        )

    # --- internals ------------------------------------------------------------------------------

    def _check_runnable(self) -> None:
        t = self._target
        if t is None:
            return
        if t.arch != host_arch():
            raise TargetError(
                f"this module was compiled for {t.arch} ({t.display_name}); this machine is "
                f"{host_arch()}: export() it and run it there"
            )
        missing = t.missing_on_host()
        if missing:
            raise TargetError(
                f"this module was compiled for {t.display_name}, which uses CPU features this "
                f"machine lacks: {', '.join(sorted(missing))}; running it could crash with an "
                "illegal instruction. Compile for target 'host' instead"
            )

    def _get_rt_module(self) -> tvm.runtime.Module:
        if self._rt_module is None:
            ex = self._executable
            self._rt_module = ex.jit() if isinstance(ex, tvm.runtime.Executable) else ex
        return self._rt_module

    def _get_vm(self) -> relax.VirtualMachine:
        if self._vm is None:
            self._check_runnable()
            self._vm = relax.VirtualMachine(
                self._get_rt_module(), self._device, memory_cfg=self._memory_cfg
            )
        return self._vm

    def _get_main(self) -> Any:
        if self._main is None:
            self._main = self._get_vm()[_ENTRY]
        return self._main

    def _convert_inputs(self, inputs: Sequence[Any]) -> tuple[list[np.ndarray], bool]:
        if len(inputs) != len(self._inputs):
            sig = ", ".join(io.describe() for io in self._inputs)
            raise InputError(
                f"the model takes {len(self._inputs)} input(s) ({sig}) but was called with "
                f"{len(inputs)}"
            )
        torch = sys.modules.get("torch")
        arrays: list[np.ndarray] = []
        use_torch = False
        for value, io in zip(inputs, self._inputs, strict=True):
            if torch is not None and isinstance(value, torch.Tensor):
                use_torch = True
                arrays.append(_torch_to_numpy(value, io))
            else:
                arrays.append(_check_numpy(value, io))
        return arrays, use_torch

    def _output_arrays(self, result: Any) -> list[np.ndarray]:
        values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
        if len(values) != len(self._outputs):
            raise ArtifactError(
                f"the compiled function returned {len(values)} value(s) but the manifest lists "
                f"{len(self._outputs)} output(s): the manifest does not belong to this library"
            )
        arrays: list[np.ndarray] = []
        for v, io in zip(values, self._outputs, strict=True):
            a = v.numpy()
            if str(a.dtype) != io.dtype or tuple(a.shape) != io.shape:
                raise ArtifactError(
                    f"output {io.name!r}: the compiled function returned {a.dtype}{list(a.shape)}"
                    f" but the manifest says {io.dtype}{list(io.shape)}"
                )
            arrays.append(a)
        return arrays

    def _convert_outputs(self, result: Any, use_torch: bool) -> Any:
        arrays = self._output_arrays(result)
        outs: list[Any] = arrays
        if use_torch:
            outs = [_numpy_to_torch(a, io) for a, io in zip(arrays, self._outputs, strict=True)]
        return outs[0] if len(outs) == 1 else tuple(outs)


# --- conversions --------------------------------------------------------------------------------


def _parse_target(manifest: Mapping[str, Any]) -> TargetPreset | None:
    t = manifest.get("target")
    if t is None:
        return None
    if not isinstance(t, Mapping):
        raise ArtifactError(f"manifest 'target' must be an object, got {type(t).__name__}")
    try:
        return TargetPreset.from_dict(t)
    except TargetError as e:
        raise ArtifactError(f"manifest 'target': {e}") from None


def _check_numpy(value: Any, io: IOInfo) -> np.ndarray:
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise InputError(
            f"input {io.name!r}: expected a numpy array or torch tensor ({io.dtype}"
            f"{list(io.shape)}), got {type(value).__name__}"
        )
    if value.dtype != np.dtype(io.dtype):
        raise InputError(
            f"input {io.name!r}: expected dtype {io.dtype}, got {value.dtype}" + _dtype_hint(io)
        )
    if tuple(value.shape) != io.shape:
        raise InputError(
            f"input {io.name!r}: expected shape {list(io.shape)}, got {list(value.shape)}"
        )
    return np.asarray(value, order="C")  # ascontiguousarray would make a 0-d input 1-d


def _dtype_hint(io: IOInfo) -> str:
    if io.qdtype is not None and io.qparams is not None:
        return (
            f" (the quantized {io.qdtype} storage, {io.qparams}; or pass a torch {io.qdtype} "
            "tensor)"
        )
    if io.torch_input == "float":
        return " (the float input the model quantizes itself)"
    return ""


def _torch_to_numpy(t: Any, io: IOInfo) -> np.ndarray:
    tdtype = str(t.dtype).removeprefix("torch.")
    if t.is_quantized:
        if io.qdtype is None or io.qparams is None:
            hint = (
                "; pass the float tensor, the model quantizes it itself"
                if io.torch_input == "float"
                else ""
            )
            raise InputError(
                f"input {io.name!r}: got a quantized torch tensor ({tdtype}) but the model takes "
                f"a plain {io.dtype} tensor{hint}"
            )
        if tdtype != io.qdtype:
            raise InputError(f"input {io.name!r}: expected torch.{io.qdtype}, got torch.{tdtype}")
        _check_torch_qparams(t, io)
        arr = t.detach().int_repr().cpu().numpy()
    else:
        if tdtype != io.dtype:
            if io.qdtype is not None and io.qparams is not None:
                raise InputError(
                    f"input {io.name!r}: expected a quantized torch.{io.qdtype} tensor "
                    f"({io.qparams}), got torch.{tdtype}; quantize it first, e.g. "
                    f"torch.quantize_per_tensor(x, {io.qparams.scale[0]!r}, "
                    f"{io.qparams.zero_point[0]}, torch.{io.qdtype})"
                )
            raise InputError(f"input {io.name!r}: expected torch.{io.dtype}, got torch.{tdtype}")
        arr = t.detach().cpu().resolve_conj().resolve_neg().numpy()
    return _check_numpy(arr, io)


def _check_torch_qparams(t: Any, io: IOInfo) -> None:
    q = io.qparams
    assert q is not None
    per_channel = str(t.qscheme()).startswith("torch.per_channel")
    if q.axis is None:
        if per_channel:
            raise InputError(
                f"input {io.name!r}: expected per-tensor qparams ({q}), got a per-channel "
                "quantized tensor"
            )
        scales, zps = [float(t.q_scale())], [int(t.q_zero_point())]
    else:
        if not per_channel or int(t.q_per_channel_axis()) != q.axis:
            raise InputError(
                f"input {io.name!r}: expected per-channel qparams along axis {q.axis}, got "
                f"{t.qscheme()}"
            )
        scales = [float(s) for s in t.q_per_channel_scales().tolist()]
        zps = [int(z) for z in t.q_per_channel_zero_points().tolist()]
    same_scale = len(scales) == len(q.scale) and all(
        math.isclose(a, b, rel_tol=_SCALE_RTOL) for a, b in zip(scales, q.scale, strict=True)
    )
    if not same_scale or tuple(zps) != q.zero_point:
        got = (
            f"scale={scales[0]!r}, zero_point={zps[0]}"
            if q.axis is None
            else (f"scales={scales}, zero_points={zps}")
        )
        want = (
            str(q)
            if q.axis is None
            else f"scales={list(q.scale)}, zero_points={list(q.zero_point)}"
        )
        raise InputError(
            f"input {io.name!r}: quantized tensor has {got}, but the model was compiled for "
            f"{want}; requantize it (torch.quantize_per_tensor(x.dequantize(), ...))"
        )


def _numpy_to_torch(a: np.ndarray, io: IOInfo) -> Any:
    import torch  # already imported: a torch tensor came in

    t = torch.from_numpy(np.asarray(a, order="C"))
    q = io.qparams
    if io.qdtype is None or q is None:
        return t
    if q.axis is None:
        return torch._make_per_tensor_quantized_tensor(t, q.scale[0], q.zero_point[0])
    return torch._make_per_channel_quantized_tensor(
        t,
        torch.tensor(q.scale, dtype=torch.float64),
        torch.tensor(q.zero_point, dtype=torch.int64),
        q.axis,
    )
