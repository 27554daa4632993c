"""The `qcompiler` command: compile | run | bench | inspect | tune.

    qcompiler compile mypkg.models:build -o model.qc --target host
    qcompiler compile model.pt2 --example-input x.npy -o model.qc
    qcompiler compile graph.qir.json -o model.qc
    qcompiler run model.qc --input x.npy --output-dir out/
    qcompiler bench model.qc --runs 100 --threads 2
    qcompiler inspect model.qc            # or an entry point / .pt2 / .qir.json: shows the IR
    qcompiler inspect mypkg.models:build --kernels --opt-level 3 --target x86-avx512-vnni
    qcompiler tune mypkg.models:build --target x86-avx512-vnni --trials 64 --out records/
    qcompiler compile mypkg.models:build -o model.qc --tuning-records records/

Model sources for `compile`, `inspect` and `tune`: a `module:function` entry point returning
`(model, example_inputs)`; a saved `torch.export` program (`.pt2`, with `--example-input`
.npy files); or serialized qcompiler IR (`.qir.json`, from `qcompiler.ir.serialize.save`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qcompiler.errors import QCompilerError


class CliError(QCompilerError):
    """Bad command-line arguments or files."""


def _progress(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[qcompiler] {msg}", file=sys.stderr, flush=True)


def load_source(spec: str, example_inputs: Sequence[str] = ()) -> tuple[Any, tuple[Any, ...]]:
    """Resolve a model source to (model or Graph, example inputs)."""
    path = Path(spec)
    if spec.endswith(".qir.json") or (path.suffix == ".json" and path.exists()):
        from qcompiler.ir.serialize import load

        return load(path), ()
    if path.suffix == ".pt2":
        if not path.exists():
            raise CliError(f"no such file: {path}")
        import torch

        ep = torch.export.load(str(path))
        inputs = tuple(torch.from_numpy(np.load(p)) for p in example_inputs)
        if not inputs:
            raise CliError("a .pt2 program needs --example-input files (.npy), one per input")
        return ep, inputs
    if ":" in spec:
        mod_name, fn_name = spec.rsplit(":", 1)
        sys.path.insert(0, str(Path.cwd()))
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise CliError(f"cannot import module {mod_name!r}: {e}") from None
        fn = getattr(mod, fn_name, None)
        if fn is None or not callable(fn):
            raise CliError(f"{mod_name!r} has no function {fn_name!r}")
        result = fn()
        if not (isinstance(result, tuple) and len(result) == 2):
            raise CliError(f"{spec} must return (model, example_inputs), got "
                           f"{type(result).__name__}")
        model, inputs = result
        return model, inputs if isinstance(inputs, tuple) else tuple(
            inputs if isinstance(inputs, list) else [inputs])
    raise CliError(f"cannot tell what {spec!r} is: expected module:function, a .pt2 file or a "
                   ".qir.json file")


def _read_inputs(cm: Any, paths: Sequence[str], seed: int) -> list[np.ndarray]:
    infos = cm.input_info
    if paths:
        if len(paths) != len(infos):
            raise CliError(f"the model takes {len(infos)} inputs "
                           f"({', '.join(i.name for i in infos)}), got {len(paths)} --input files")
        return [np.load(p) for p in paths]
    rng = np.random.default_rng(seed)
    arrays = []
    for io in infos:
        dt = np.dtype(io.dtype)
        if dt.kind == "f":
            arrays.append(rng.standard_normal(io.shape).astype(dt))
        elif dt.kind == "b":
            arrays.append(rng.integers(0, 2, io.shape).astype(dt))
        else:
            info = np.iinfo(dt)
            lo, hi = max(info.min, -128), min(info.max, 255)
            arrays.append(rng.integers(lo, hi, io.shape, endpoint=True).astype(dt))
    return arrays


def cmd_compile(args: argparse.Namespace) -> int:
    from qcompiler.driver import compile as qc_compile

    t0 = time.perf_counter()
    _progress(f"loading {args.source}", args.quiet)
    model, inputs = load_source(args.source, args.example_input)
    _progress(f"compiling for target {args.target} (opt_level={args.opt_level})", args.quiet)
    cm = qc_compile(model, inputs or None, target=args.target, opt_level=args.opt_level,
                    tuning_records=False if args.no_tuning_records else args.tuning_records)
    tuned = sum(1 for k in cm.kernels if k.get("schedule") == "tuned")
    if tuned:
        _progress(f"{tuned} of {len(cm.kernels)} kernels use tuned schedules", args.quiet)
    out = cm.export(args.output)
    _progress(f"wrote {out} in {time.perf_counter() - t0:.1f}s", args.quiet)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from qcompiler.runtime import load

    cm = load(args.artifact)
    if args.threads:
        cm.num_threads = args.threads
    inputs = _read_inputs(cm, args.input, args.seed)
    outs = cm.run_numpy(*inputs)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for io, arr in zip(cm.output_info, outs):
        p = out_dir / f"{io.name}.npy"
        np.save(p, arr)
        print(f"{io.name}: {arr.dtype}{list(arr.shape)} -> {p}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from qcompiler.runtime import load

    cm = load(args.artifact)
    if args.threads:
        cm.num_threads = args.threads
    inputs = _read_inputs(cm, args.input, args.seed)
    res = cm.benchmark(*inputs, number=args.number, repeat=args.runs)
    print(res)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    src = Path(args.source)
    if src.is_dir() and (src / "manifest.json").exists():
        from qcompiler.runtime.artifact import read_manifest

        m = read_manifest(src)
        t = m.get("target", {})
        print(f"artifact {src}: target {t.get('name')} -> {t.get('resolved')} "
              f"({t.get('arch')}, mcpu {t.get('mcpu')}, features {', '.join(t.get('features', []))})")
        print(f"versions: {m.get('versions')}")
        for kind in ("inputs", "outputs"):
            for io in m.get(kind, []):
                print(f"  {kind[:-1]} {io['name']}: {io['dtype']}{io['shape']} "
                      f"{io.get('qdtype') or ''} {io.get('qparams') or ''}")
        kernels = m.get("kernels", [])
        print(f"kernels ({len(kernels)}):")
        print(format_kernel_table([
            {"name": k.get("name"), "anchor": k.get("op"),
             "epilogue": list(k.get("ops", []))[1:], "layouts": k.get("layouts"),
             "strategy": k.get("strategy"), "schedule": k.get("schedule"),
             "calls": k.get("calls")} for k in kernels]))
        if m.get("graph_ir"):
            print(m["graph_ir"])
        if args.profile:
            from qcompiler.runtime import load

            cm = load(src)
            print(cm.profile(*_read_inputs(cm, args.input, 0)).table())
        return 0
    model, inputs = load_source(args.source, args.example_input)
    from qcompiler.ir.graph import Graph

    if isinstance(model, Graph):
        graph = model
    else:
        from qcompiler.frontends import from_torch

        graph = from_torch(model, inputs)
    if args.kernels:
        from qcompiler.passes.layout import kernel_summary
        from qcompiler.passes.pipelines import kernel_groups, optimize
        from qcompiler.target import get_target

        graph = optimize(graph, args.opt_level, get_target(args.target))
        groups = kernel_groups(graph, args.opt_level)
        if groups is None:  # below kernel grouping: one kernel per node
            from qcompiler.passes.group_kernels import NodeGroup

            groups = [NodeGroup((n,)) for n in graph.nodes if n.op != "const"]
        print(f"kernels after the opt_level {args.opt_level} pipeline for {args.target}"
              f" ({len(groups)}):")
        print(format_kernel_table([kernel_summary(graph, g.nodes, g.anchor) for g in groups]))
        return 0
    print(graph)
    counts = graph.op_counts()
    print("op counts: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return 0


def format_kernel_table(rows: Sequence[dict[str, Any]]) -> str:
    """The kernels view of `inspect`: one line per kernel with its anchor op, the epilogue ops
    fused into it, and the layouts it reads and writes (NCHW4c: packed x86 activations)."""
    def layouts(r: dict[str, Any]) -> str:
        lay = r.get("layouts") or {}
        return f"{','.join(lay.get('in', [])) or '-'} -> {','.join(lay.get('out', [])) or '-'}"

    cols = [("kernel", lambda r: str(r.get("name") or "")),
            ("anchor", lambda r: str(r.get("anchor") or "")),
            ("epilogue", lambda r: "+".join(r.get("epilogue") or []) or "-"),
            ("layouts", layouts)]
    if any("strategy" in r for r in rows):
        cols += [("strategy", lambda r: str(r.get("strategy") or "-")),
                 ("schedule", lambda r: str(r.get("schedule") or "-")),
                 ("calls", lambda r: str(r.get("calls") or ""))]
    if not any(r.get("name") for r in rows):
        cols = cols[1:]
    cells = [[f(r) for _, f in cols] for r in rows]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, (h, _) in enumerate(cols)]
    lines = ["  " + "  ".join(h.ljust(w) for (h, _), w in zip(cols, widths))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def cmd_tune(args: argparse.Namespace) -> int:
    from qcompiler.tuning.measure import load
    from qcompiler.tuning.search import tune

    t0 = time.perf_counter()
    _progress(f"loading {args.source}", args.quiet)
    model, inputs = load(args.source, args.example_input)
    report = tune(
        model, inputs or None, target=args.target, trials=args.trials, out=args.out,
        only=args.only, all_kernels=args.all_kernels, num_threads=args.threads or None,
        seed=args.seed, min_speedup=args.min_speedup, model_name=args.source,
        progress=lambda msg: _progress(msg, args.quiet),
    )
    print(report.table())
    _progress(f"done in {time.perf_counter() - t0:.1f}s", args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qcompiler", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="compile a model to a deployable artifact")
    c.add_argument("source", help="module:function, model.pt2 or graph.qir.json")
    c.add_argument("-o", "--output", required=True, help="artifact directory to write")
    c.add_argument("--target", default="host", help="target preset (default: host)")
    c.add_argument("--opt-level", type=int, default=2, choices=[0, 1, 2, 3])
    c.add_argument("--example-input", action="append", default=[],
                   help=".npy example input (for .pt2 sources; repeat per input)")
    c.add_argument("--tuning-records", default=None, metavar="DIR",
                   help="records from `qcompiler tune --out DIR` (default: the shipped "
                   "schedules/<target>/ when there is one)")
    c.add_argument("--no-tuning-records", action="store_true",
                   help="ignore every tuning record, shipped ones included")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(fn=cmd_compile)

    r = sub.add_parser("run", help="run an artifact on .npy inputs, write .npy outputs")
    r.add_argument("artifact")
    r.add_argument("--input", action="append", default=[], help=".npy input (repeat per input;"
                   " random inputs when omitted)")
    r.add_argument("--output-dir", default=".", help="where to write <output>.npy")
    r.add_argument("--threads", type=int, default=0)
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(fn=cmd_run)

    b = sub.add_parser("bench", help="measure an artifact's latency (median/min)")
    b.add_argument("artifact")
    b.add_argument("--input", action="append", default=[])
    b.add_argument("--runs", type=int, default=20, help="repeats (each of --number calls)")
    b.add_argument("--number", type=int, default=10)
    b.add_argument("--threads", type=int, default=0)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(fn=cmd_bench)

    i = sub.add_parser("inspect", help="show an artifact's target, kernels and IR, or a model's"
                       " IR")
    i.add_argument("source", help="artifact directory, module:function, .pt2 or .qir.json")
    i.add_argument("--example-input", action="append", default=[])
    i.add_argument("--input", action="append", default=[])
    i.add_argument("--profile", action="store_true", help="also run and show per-kernel times")
    i.add_argument("--kernels", action="store_true", help="model sources: show the kernels"
                   " (anchor op, fused epilogue, layouts) the pipeline makes, instead of the IR")
    i.add_argument("--target", default="host", help="with --kernels: target preset")
    i.add_argument("--opt-level", type=int, default=2, choices=[0, 1, 2, 3],
                   help="with --kernels: pipeline level (3: packed layouts on x86 VNNI)")
    i.set_defaults(fn=cmd_inspect)

    t = sub.add_parser(
        "tune", help="search faster schedules for a model's kernels (meta_schedule)",
        description="Tune the kernels of a model with TVM meta_schedule and write the verified "
        "winners to OUT/<target>/ (a meta_schedule JSON database + qcompiler-records.json). "
        "Each kernel is timed as the schedule rules build it, TRIALS candidates are measured, "
        "and the fastest ones must equal the untuned kernel bit for bit on random and extreme "
        "inputs; a candidate is recorded only when it is also faster. Kernels with float "
        "reductions and opaque kernels are never tuned. `qcompiler compile --tuning-records "
        "OUT` applies the records. See docs/tuning.md.")
    t.add_argument("source", help="module:function, model.pt2 or graph.qir.json; or "
                   "zoo:<name>[:<flow>] for a model of qcompiler.testing.zoo")
    t.add_argument("--target", default="host", help="target preset (default: host); tuning "
                   "runs the kernels, so this machine must be able to run its code")
    t.add_argument("--trials", type=int, default=32, help="candidates measured per kernel "
                   "(default 32)")
    t.add_argument("--out", required=True, metavar="DIR", help="records root: writes "
                   "DIR/<target>/ (adds to existing records)")
    t.add_argument("--only", metavar="GLOB", help="tune only kernels whose name matches, e.g. "
                   "'qnn_conv_transpose2d*' (names as in the tune report)")
    t.add_argument("--all-kernels", action="store_true", help="also tune hand-scheduled and "
                   "element-wise kernels (default: reduction kernels the generic rules schedule)")
    t.add_argument("--min-speedup", type=float, default=1.05, help="record a candidate only "
                   "if it is this many times faster than the rules' schedule (medians of "
                   "alternating timings; default 1.05; 0 keeps any verified candidate)")
    t.add_argument("--threads", type=int, default=0, help="threads to measure with (default: "
                   "every CPU this process may use)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--example-input", action="append", default=[],
                   help=".npy example input (for .pt2 sources; repeat per input)")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(fn=cmd_tune)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except QCompilerError as e:
        print(f"qcompiler {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
