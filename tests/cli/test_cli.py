"""The qcompiler command: compile, run, bench, inspect, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from qcompiler.cli import main  # noqa: E402
from qcompiler.ir.serialize import save  # noqa: E402
from qcompiler.reference.interpreter import interpret  # noqa: E402

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from cli_models import small_graph  # noqa: E402


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model.qc"
    assert main(["compile", "cli_models:small_graph", "-o", str(out), "-q"]) == 0
    return out


def test_compile_run_matches_interpreter(artifact, tmp_path, capsys):
    g, (x,) = small_graph()
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(artifact), "--input", str(tmp_path / "x.npy"),
                 "--output-dir", str(tmp_path / "out")]) == 0
    outs = list((tmp_path / "out").glob("*.npy"))
    assert len(outs) == 1
    np.testing.assert_array_equal(np.load(outs[0]), interpret(g, x))


def test_compile_from_serialized_ir(tmp_path):
    g, _ = small_graph()
    ir = save(g, tmp_path / "g.qir.json")
    assert main(["compile", str(ir), "-o", str(tmp_path / "m.qc"), "-q"]) == 0
    assert (tmp_path / "m.qc" / "manifest.json").exists()


def test_bench_and_inspect(artifact, capsys):
    assert main(["bench", str(artifact), "--runs", "3", "--number", "2"]) == 0
    assert "ms" in capsys.readouterr().out
    assert main(["inspect", str(artifact), "--profile"]) == 0
    out = capsys.readouterr().out
    assert "target" in out and "kernels" in out and "quantize" in out


def test_inspect_model_source(capsys):
    assert main(["inspect", "cli_models:small_graph"]) == 0
    out = capsys.readouterr().out
    assert "func @main" in out and "op counts:" in out


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["compile", "cli_models:not_a_pair", "-o", str(tmp_path / "x")]) == 2
    assert "must return (model, example_inputs)" in capsys.readouterr().err
    assert main(["compile", "no_such_module:f", "-o", str(tmp_path / "x")]) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err
    assert main(["compile", "cli_models:small_graph", "-o", str(tmp_path / "x"),
                 "--target", "x86-avx9000"]) == 2
    assert "x86-avx512-vnni" in capsys.readouterr().err  # lists the valid presets
    assert main(["run", str(tmp_path / "missing.qc")]) == 2


def test_console_script_help():
    env = dict(os.environ, PYTHONPATH=str(HERE.parent.parent))
    for verb in ("compile", "run", "bench", "inspect"):
        r = subprocess.run([sys.executable, "-m", "qcompiler", verb, "--help"],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0 and "usage: qcompiler " + verb in r.stdout
