"""x86 int8 kernels vs PyTorch's x86 engine on the issue-7 layer set, in one process.

    python3 benchmarks/x86_layers.py                       # every layer case, 1 and 2 threads
    python3 benchmarks/x86_layers.py --cases 'r18_*' --threads 1
    python3 benchmarks/x86_layers.py --target x86-avx2     # the exact pmaddwd path
    python3 benchmarks/x86_layers.py --cases 'mv2_dw*' --ort   # + ONNX Runtime (QLinearConv)

A quick look for the engineer tuning codegen/x86 (benchmarks/run.py is the full, interleaved,
one-process-per-engine comparison with ONNX Runtime). Per case: compile the one-op graph of
benchmarks/cases.py with qcompiler (opt_level 2, the target's strategy and schedule rules),
check it against `qcompiler.interpret` (bit-exact, or the script fails), then time

    qcompiler   the kernel function(s) called directly (no VM), and the VM's `main` called
                from Python (what a user pays per call)
    torch-x86   torch.ops.quantized.conv2d / linear on weights prepacked for the x86 engine
    ort         with --ort: ONNX Runtime's QLinearConv / QGemm model of benchmarks/run.py
                (`ort-qlinear`), one session per thread count, in this process too

All are run in alternating rounds; each round's time is the median of many back-to-back
calls, and the report gives the median over rounds and the best round, as GMAC/s, and
`qc/best` = best peer median time / qc-vm median time (> 1: qcompiler is faster). Depthwise
cases run on 7-bit activations (benchmarks/cases.py: PyTorch's fbgemm depthwise kernel
saturates above); qcompiler is exact on full-range data too. On a shared machine read "best"
next to "median" (docs/tvm-0.27-notes.md recipe 9).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "2")  # before anything imports TVM: the pool's size
os.environ.setdefault("TVM_BIND_THREADS", "0")  # keep torch's threads free to use both cores
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks import cases as C


def _time_rounds(fn, rounds: int, min_time: float) -> list[float]:
    """Per round: the median seconds per call of back-to-back calls for >= min_time."""
    out = []
    for _ in range(rounds):
        for _ in range(3):
            fn()
        ts = []
        t_end = time.perf_counter() + min_time
        while time.perf_counter() < t_end or len(ts) < 5:
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out.append(float(np.median(ts)))
    return out


def _torch_fn(data: C.LayerData):
    import torch

    from qcompiler.testing.torch_bridge import to_torch

    case = data.case
    xt, wt, _, oq = C.layer_types(data)
    torch.backends.quantized.engine = "x86"
    qw = to_torch(data.w, wt)
    bias = torch.from_numpy(data.bias.copy())
    ops = torch.ops.quantized
    if case.is_conv:
        packed = ops.conv2d_prepack(qw, bias, [case.stride] * 2, [case.padding] * 2, [1, 1],
                                    case.groups)
        run = ops.conv2d
    else:
        packed = ops.linear_prepack(qw, bias)
        run = ops.linear
    qx = to_torch(data.x, xt)
    scale, zp = oq.scale_value, oq.zp_value
    return lambda: run(qx, packed, scale, zp)


def _ort_fn(case: C.LayerCase, threads: int, workdir: str):
    """ONNX Runtime's QLinearConv / QGemm session for `case` (benchmarks/engines/ort_engine.py),
    checked against the interpreter within 1 LSB as run.py does."""
    from benchmarks.engines.ort_engine import OrtQLinear

    eng = OrtQLinear(case, threads, workdir, {})
    eng.setup()
    return eng.call


def _kernel_fn(res, x: np.ndarray):
    """Call every kernel of the build once, directly (no VM): what the generated code costs."""
    import tvm

    from qcompiler.lowering import tvm_compat as tc

    calls = []
    env: dict[int, object] = {id(res.graph.inputs[0]): tc.to_tensor(x)}
    for k in res.lowered.kernels:
        lib = tc.compile_module(k.func.final, res.target.tvm_target()).jit()
        args = []
        for v in k.inputs:
            if id(v) not in env:
                env[id(v)] = tc.to_tensor(np.ascontiguousarray(res.graph.const_data(v)))
            args.append(env[id(v)])
        args += [tc.to_tensor(c) for c in k.constants]
        for o in k.outputs:
            env[id(o)] = tvm.runtime.empty(o.type.shape, o.type.dtype.storage)
            args.append(env[id(o)])
        calls.append((lib[k.func.name], args))

    def run() -> None:
        for fn, args in calls:
            fn(*args)

    return run


def _fmt(gmac: float, ts: list[float]) -> str:
    if not ts:
        return f"{'-':>15s}"
    return f"{gmac / np.median(ts):7.1f}/{gmac / min(ts):7.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="layers", help="names / patterns (benchmarks/cases.py)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--target", default="host")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--ort", action="store_true", help="also time ONNX Runtime (QLinearConv)")
    args = ap.parse_args(argv)

    import tempfile

    import torch
    import tvm

    import qcompiler as qc
    from qcompiler.driver import build

    threads = [int(t) for t in args.threads.split(",")]
    workdir = tempfile.TemporaryDirectory(prefix="qc_x86_layers_")
    set_pool = tvm.get_global_func("runtime.config_threadpool")
    cases = [c for c in C.select_cases(args.cases) if isinstance(c, C.LayerCase)]
    print(f"target {args.target}; GMAC/s median / best of {args.rounds} rounds; "
          f"qc-kernel = the kernels called directly, qc-vm = VM main from Python; "
          f"qc/best = best peer median / qc-vm median")
    header = (f"{'case':24s} {'shape':34s} thr  {'qc-kernel':>15s} {'qc-vm':>15s} "
              f"{'torch-x86':>15s} {'ort' if args.ort else '':>15s}  qc/best")
    print(header)
    failed = False
    for case in cases:
        data = C.make_layer_data(case)
        g = C.build_graph(data)
        t0 = time.time()
        res = build(g, target=args.target, num_threads=max(threads))
        t_compile = time.time() - t0
        cm = res.module
        got = np.asarray(cm(data.x))
        want = np.asarray(qc.interpret(g, data.x))
        exact = np.array_equal(got, want)
        failed |= not exact
        rules = ",".join(sorted({str(kf.rule) for kf in res.lowered.funcs}))
        tfn = None if args.no_torch else _torch_fn(data)
        kfn = _kernel_fn(res, data.x)
        vm = cm._get_vm()
        vm.save_function("main", "__bench", tvm.runtime.tensor(data.x, tvm.cpu(0)))
        vfn = vm["__bench"]
        gmac = case.macs / 1e9
        for nt in threads:
            set_pool(1, nt)
            torch.set_num_threads(nt)
            ofn = _ort_fn(case, nt, workdir.name) if args.ort else None
            qk, qvm, tt, ot = [], [], [], []
            for _ in range(args.rounds):  # alternate the engines, round by round
                qk += _time_rounds(kfn, 1, args.min_time)
                qvm += _time_rounds(vfn, 1, args.min_time)
                if tfn is not None:
                    tt += _time_rounds(tfn, 1, args.min_time)
                if ofn is not None:
                    ot += _time_rounds(ofn, 1, args.min_time)
            peers = [float(np.median(p)) for p in (tt, ot) if p]
            ratio = f"{min(peers) / np.median(qvm):5.2f}x" if peers else ""
            ort_col = _fmt(gmac, ot) if args.ort else ""
            print(f"{case.name:24s} {case.summary():34s} {nt:>3d}  {_fmt(gmac, qk)} "
                  f"{_fmt(gmac, qvm)} {_fmt(gmac, tt)} {ort_col:>15s}  {ratio}", flush=True)
        print(f"{'':24s} exact={exact} rules={rules} compile={t_compile:.1f}s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
