"""qcompiler, and qcompiler's reference interpreter (the oracle every engine is checked against).

`qcompiler`: layer cases compile the one-op IR graph of benchmarks/cases.py (qnn.conv2d /
qnn.linear); zoo cases compile the zoo's PyTorch-quantized model (x86 engine) with
`qcompiler.compile(model, inputs)`. A compile failure (e.g. an op with no lowering yet) is
reported as "n/a (reason)". The timed call is the Relax VM's `main` with its arguments bound
(`save_function`), called from Python like the peers' ops; `cm.benchmark` (TVM's
time_evaluator, no Python in the loop) is recorded as an extra.

`reference`: `qcompiler.interpret` on the same graph (layer cases), or on the graph imported with
`qcompiler.from_torch` (zoo cases). Not timed.

TVM's thread pool size is fixed at first use: the harness sets TVM_NUM_THREADS to the case's
thread count before this process imports anything.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from benchmarks import cases as C
from benchmarks.engines.common import Engine, NotAvailable


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:240]}"


def _graph_and_inputs(case: Any) -> tuple[Any, dict[str, Any], Any]:
    """(graph or torch model, check inputs as tuples, the x86-quantized torch model or None)."""
    if isinstance(case, C.LayerCase):
        data = C.make_layer_data(case)
        return C.build_graph(data), {k: (v,) for k, v in data.check_inputs.items()}, None
    model, inputs = C.zoo_quantized(case, "x86")
    return model, {"x": tuple(inputs)}, model


class QCompilerEngine(Engine):
    name = "qcompiler"
    role = "ours"

    def setup(self) -> dict[str, Any]:
        import qcompiler

        what, self._check_inputs, _ = _graph_and_inputs(self.case)
        x = self._check_inputs["x"]
        try:
            cm = qcompiler.compile(what, x, num_threads=self.threads)
        except Exception as e:  # any compile failure is reported, never fatal
            raise NotAvailable(f"compile failed: {_reason(e)}") from e
        self._cm = cm
        info: dict[str, Any] = {"qcompiler": qcompiler.__version__,
                                "tvm_threads": cm.num_threads,
                                "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS"),
                                "kernels": [(k.get("name"), k.get("schedule"))
                                            for k in cm.kernels]}
        self._fn, info["timed_call"] = self._bound_call(x)
        try:
            self._fn()
        except Exception as e:
            raise NotAvailable(f"compiled module failed to run: {_reason(e)}") from e
        return info

    def _bound_call(self, x: tuple[Any, ...]) -> tuple[Any, str]:
        """The VM's main with bound arguments (no conversions in the timed call)."""
        cm = self._cm
        try:
            import tvm

            arrays, _ = cm._convert_inputs(x)
            vm = cm._get_vm()
            args = [tvm.runtime.tensor(a, tvm.cpu(0)) for a in arrays]
            vm.save_function("main", "__bench_main", *args)
            fn = vm["__bench_main"]
            self._bench_inputs = x
            return fn, "vm main, bound args"
        except Exception:  # noqa: BLE001 - private API moved: fall back to the public call
            return (lambda: cm(*x)), "CompiledModule.__call__ (includes input conversion)"

    def call(self) -> None:
        self._fn()

    def outputs(self) -> dict[str, np.ndarray]:
        out = {}
        for k, x in self._check_inputs.items():
            y = self._cm(*x)
            y = y[0] if isinstance(y, tuple) else y
            out[k] = _as_numpy(y)
        return out

    def extra_timings(self, quick: bool) -> dict[str, Any]:
        x = self._check_inputs["x"]
        try:
            r = self._cm.benchmark(*x, number=10 if quick else 50, repeat=3 if quick else 10,
                                   min_repeat_ms=10 if quick else 100)
        except Exception as e:  # noqa: BLE001 - reported in the extras
            return {"time_evaluator": f"n/a ({_reason(e)})"}
        return {"time_evaluator": {"median_ms": r.median_ms, "min_ms": r.min_ms,
                                   "number": r.number, "repeat": r.repeat,
                                   "num_threads": r.num_threads}}


class ReferenceEngine(Engine):
    name = "reference"
    role = "reference"

    def setup(self) -> dict[str, Any]:
        import qcompiler

        what, self._check_inputs, torch_model = _graph_and_inputs(self.case)
        if isinstance(self.case, C.ZooCase):
            self.info["macs"] = C.zoo_macs(self.case)
        if torch_model is not None:
            try:
                what = qcompiler.from_torch(torch_model, self._check_inputs["x"])
            except Exception as e:
                raise NotAvailable(f"from_torch failed: {_reason(e)}") from e
        self._graph = what
        self.info["ops"] = sorted({n.op for n in what.nodes if n.op != "const"})
        return self.info

    def call(self) -> None:
        raise NotAvailable("the reference is not timed")

    def outputs(self) -> dict[str, np.ndarray]:
        import qcompiler

        out = {}
        for k, x in self._check_inputs.items():
            try:
                y = qcompiler.interpret(self._graph, *x)
            except Exception as e:
                raise NotAvailable(f"interpret failed: {_reason(e)}") from e
            y = y[0] if isinstance(y, tuple) else y
            out[k] = _as_numpy(y)
        return out


def _as_numpy(y: Any) -> np.ndarray:
    if isinstance(y, np.ndarray):
        return y
    if type(y).__module__.startswith("torch"):
        from qcompiler.testing.torch_bridge import to_numpy

        return to_numpy(y)
    return np.asarray(y)
