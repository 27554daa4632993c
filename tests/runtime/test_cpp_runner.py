"""The C++ runner (`qcompiler-run`, cpp/ + CMakeLists.txt) on this machine: builds it against
the pip wheel's TVM runtime, runs exported artifacts, and compares with `cm(x)` in Python and
with the reference interpreter, bit for bit; every bad input is a clear error, never a crash.

Models: the zoo's eager-quantized `unet_like` CNN (float input, QuantStub inside), and a small
graph with a quantized uint8 input and two outputs (float32, qint8).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from cpp_runner_build import build_runner, require_tools, run

import qcompiler as qc
from qcompiler.ir import Builder, QParams, i8, qtype, u8
from qcompiler.ops.quant import QuantizeAttrs
from qcompiler.target import host_arch

pytestmark = pytest.mark.tvm
if host_arch() != "x86_64":
    pytest.skip(f"the native runner tests run on x86_64 hosts (this is {host_arch()})",
                allow_module_level=True)


@pytest.fixture(scope="module")
def runner() -> list[str]:
    require_tools("cmake", "g++", install="cmake g++")
    return [str(build_runner("x86_64"))]


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """unet_like, compiled for the host and exported; its input and the reference output."""
    pytest.importorskip("torch")
    from qcompiler.testing.zoo import quantized

    model, inputs = quantized("unet_like", "eager")
    graph = qc.from_torch(model, inputs)
    cm = qc.compile(model, inputs)
    tmp = tmp_path_factory.mktemp("cnn")
    x = inputs[0].numpy()
    np.save(tmp / "x.npy", x)
    return {
        "dir": tmp,
        "artifact": cm.export(tmp / "unet.qc"),
        "x": x,
        "cm": cm,
        "interp": np.asarray(qc.interpret(graph, x)),
    }


def _quantized_input_graph() -> Any:
    """x: quint8 storage -> requantize (qint8, "r") and dequantize (float32, "y")."""
    b = Builder("qin")
    x = b.input("x", qtype([3, 40], u8, 0.02, 131))
    r = b.op("requantize", [x], QuantizeAttrs(i8, QParams.per_tensor(0.05, -7)), name="r")
    y = b.op("dequantize", [r], name="y")
    return b.finish(y, r)


@pytest.fixture(scope="module")
def qin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    graph = _quantized_input_graph()
    cm = qc.compile(graph)
    tmp = tmp_path_factory.mktemp("qin")
    x = np.random.default_rng(3).integers(0, 256, (3, 40), dtype=np.uint8)
    x[0, :3] = [0, 131, 255]
    np.save(tmp / "x.npy", x)
    return {"dir": tmp, "artifact": cm.export(tmp / "qin.qc"), "x": x, "cm": cm, "graph": graph}


def _fail(r: Any, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("qcompiler-run: error: "), r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def _copy(artifact: Path, dst: Path) -> Path:
    shutil.copytree(artifact, dst)
    return dst


def _edit_manifest(artifact: Path, edit: Any) -> None:
    p = artifact / "manifest.json"
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))


# --- outputs --------------------------------------------------------------------------------------


def test_cnn_matches_python_and_interpreter(runner: list[str], cnn: dict[str, Any]) -> None:
    out = cnn["dir"] / "out"
    r = run(runner, cnn["artifact"], "--input", cnn["dir"] / "x.npy", "--output-dir", out)
    assert r.returncode == 0, r.stderr
    assert "dequant: float32[1, 2, 32, 32] -> " in r.stdout
    got = np.load(out / "dequant.npy")
    np.testing.assert_array_equal(got, cnn["cm"](cnn["x"]))
    np.testing.assert_array_equal(got, cnn["interp"])


def test_quantized_input_two_outputs(runner: list[str], qin: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch")
    out = qin["dir"] / "out"
    r = run(runner, qin["artifact"], "-i", qin["dir"] / "x.npy", "-o", out)
    assert r.returncode == 0, r.stderr
    y, rq = np.load(out / "y.npy"), np.load(out / "r.npy")
    assert y.dtype == np.float32 and rq.dtype == np.int8
    want_y, want_r = qin["cm"](qin["x"])
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(rq, want_r)
    ref_y, ref_r = qc.interpret(qin["graph"], qin["x"])
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(rq, ref_r)
    # the runner takes what CompiledModule takes from a torch quantized tensor: its int_repr()
    tq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qin["x"]), 0.02, 131)
    _, tr = qin["cm"](tq)
    np.testing.assert_array_equal(tr.int_repr().numpy(), rq)


def test_fortran_order_input(runner: list[str], qin: dict[str, Any]) -> None:
    p = qin["dir"] / "x_f.npy"
    np.save(p, np.asfortranarray(qin["x"]))
    out = qin["dir"] / "out_f"
    r = run(runner, qin["artifact"], "-i", p, "-o", out, "--quiet")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    np.testing.assert_array_equal(np.load(out / "r.npy"), qin["cm"](qin["x"])[1])


def test_info_and_bench(runner: list[str], qin: dict[str, Any]) -> None:
    r = run(runner, qin["artifact"], "--info")
    assert r.returncode == 0, r.stderr
    assert "input  x: uint8[3, 40] quint8(scale=0.02" in r.stdout
    assert "output r: int8[3, 40] qint8(" in r.stdout and "output y: float32[3, 40]" in r.stdout
    r = run(runner, qin["artifact"], "-i", qin["dir"] / "x.npy", "-o", qin["dir"] / "b",
            "--bench", 5, "--threads", 1)
    assert r.returncode == 0, r.stderr
    assert "median " in r.stdout and "(5 runs, 1 threads)" in r.stdout
    r = run(runner, qin["artifact"], "--bench", 3)  # no inputs: zeros, nothing written
    assert r.returncode == 0 and "median " in r.stdout, r.stderr


# --- errors ---------------------------------------------------------------------------------------


def test_input_errors(runner: list[str], qin: dict[str, Any], tmp_path: Path) -> None:
    art, x = qin["artifact"], qin["x"]
    np.save(tmp_path / "f.npy", x.astype(np.float32))
    _fail(run(runner, art, "-i", tmp_path / "f.npy"), 3,
          "input 'x'", "expected dtype uint8, got float32", "quint8 storage")
    np.save(tmp_path / "s.npy", x[:2])
    _fail(run(runner, art, "-i", tmp_path / "s.npy"), 3, "expected shape [3, 40], got [2, 40]")
    _fail(run(runner, art, "-i", tmp_path / "missing.npy"), 3, "missing.npy", "cannot open")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    _fail(run(runner, art, "-i", tmp_path / "junk.npy"), 3, "not a .npy file")
    (tmp_path / "short.npy").write_bytes((qin["dir"] / "x.npy").read_bytes()[:-7])
    _fail(run(runner, art, "-i", tmp_path / "short.npy"), 3, "truncated")
    np.save(tmp_path / "be.npy", np.zeros((3, 40), ">i4"))
    _fail(run(runner, art, "-i", tmp_path / "be.npy"), 3, "big-endian")
    _fail(run(runner, art), 3, "takes 1 input(s) (x: uint8[3, 40] quint8(", "0 --input")
    _fail(run(runner, art, "-i", qin["dir"] / "x.npy", "-i", qin["dir"] / "x.npy"), 3,
          "2 --input")


def test_usage_errors(runner: list[str], qin: dict[str, Any]) -> None:
    _fail(run(runner), 2, "missing ARTIFACT")
    _fail(run(runner, qin["artifact"], "--bogus"), 2, "unknown option --bogus")
    _fail(run(runner, qin["artifact"], "--bench", "x"), 2, "--bench needs a positive integer")
    r = run(runner, "--help")
    assert r.returncode == 0 and "usage: qcompiler-run ARTIFACT" in r.stdout


def test_artifact_errors(runner: list[str], qin: dict[str, Any], tmp_path: Path) -> None:
    xs = ("-i", qin["dir"] / "x.npy")
    _fail(run(runner, tmp_path / "nope", *xs), 1, "does not exist")
    (tmp_path / "empty").mkdir()
    _fail(run(runner, tmp_path / "empty", *xs), 1, "manifest.json is missing")

    bad = _copy(qin["artifact"], tmp_path / "tampered")
    with open(bad / "model.so", "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    _fail(run(runner, bad, *xs), 1, "checksum mismatch for model.so", "refusing to load it")

    gone = _copy(qin["artifact"], tmp_path / "gone")
    (gone / "model.so").unlink()
    _fail(run(runner, gone, *xs), 1, "model.so is listed in the manifest but missing")

    isa = _copy(qin["artifact"], tmp_path / "isa")
    _edit_manifest(isa, lambda m: m["target"]["features"].append("amx-int8"))
    _fail(run(runner, isa, *xs), 1, "CPU features this machine lacks: amx-int8")

    arm = _copy(qin["artifact"], tmp_path / "arm")
    _edit_manifest(arm, lambda m: m["target"].update(arch="aarch64"))
    _fail(run(runner, arm, *xs), 1, "compiled for aarch64", "this runner is x86_64")

    for name, edit, needle in [
        ("fmt", lambda m: m.update(format="other"), "manifest format is 'other'"),
        ("ver", lambda m: m.update(format_version=9), "format_version 9 is not supported"),
        ("dtype", lambda m: m["inputs"][0].update(dtype="complex64"), "dtype 'complex64'"),
        ("noshape", lambda m: m["inputs"][0].pop("shape"), "missing key 'shape'"),
        ("files", lambda m: m.pop("files"), "must list model.so"),
        ("escape", lambda m: m["files"].update({"../x": {"sha256": "0"}}), "leaves the artifact"),
        ("outcount", lambda m: m["outputs"].pop(), "returned 2 value(s) but the manifest lists 1"),
    ]:
        d = _copy(qin["artifact"], tmp_path / name)
        _edit_manifest(d, edit)
        _fail(run(runner, d, *xs), 1, needle)
    (d / "manifest.json").write_text("{not json")
    _fail(run(runner, d, *xs), 1, "cannot read")
