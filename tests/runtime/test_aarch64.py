"""aarch64 cross-compilation: `qc.compile(..., target="aarch64-dotprod" / "aarch64-neon")` on
this x86_64 machine links model.so with aarch64-linux-gnu-g++; the C++ runner, cross-built with
cmake/aarch64-linux-gnu.cmake against the aarch64 wheel's TVM runtime, runs the artifact under
qemu-aarch64, and its output equals the x86 reference interpreter bit for bit.

Needs g++-aarch64-linux-gnu, qemu-user and cmake (scripts/test.sh installs them as root), and
PyPI access for the aarch64 apache-tvm / apache-tvm-ffi wheels once (cached in build/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")
pytest.importorskip("torch")

from cpp_runner_build import build_runner, require_tools, run, runner_command

import qcompiler as qc
from qcompiler.errors import ArtifactError, TargetError
from qcompiler.target import host_arch

pytestmark = pytest.mark.tvm
if host_arch() != "x86_64":
    pytest.skip(f"cross-compilation tests run on x86_64 hosts (this is {host_arch()})",
                allow_module_level=True)

TARGETS = ("aarch64-dotprod", "aarch64-neon")


@pytest.fixture(scope="module")
def runner() -> list[str]:
    require_tools("cmake", "aarch64-linux-gnu-g++", "qemu-aarch64",
                  install="cmake g++-aarch64-linux-gnu qemu-user")
    return runner_command(build_runner("aarch64"), "aarch64")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The zoo's unet_like CNN (conv, transposed conv, cat, upsample), its input and the x86
    interpreter's output."""
    from qcompiler.testing.zoo import quantized

    m, inputs = quantized("unet_like", "eager")
    tmp = tmp_path_factory.mktemp("a64")
    x = inputs[0].numpy()
    np.save(tmp / "x.npy", x)
    return {"model": m, "inputs": inputs, "dir": tmp, "x": x,
            "interp": np.asarray(qc.interpret(qc.from_torch(m, inputs), x))}


@pytest.mark.parametrize("target", TARGETS)
def test_cross_compiled_cnn_under_qemu(runner: list[str], model: dict[str, Any],
                                       target: str) -> None:
    cm = qc.compile(model["model"], model["inputs"], target=target)
    with pytest.raises(TargetError, match="compiled for aarch64"):
        cm(model["x"])  # cannot run here, but exports
    art = cm.export(model["dir"] / f"{target}.qc")
    assert (art / "model.so").read_bytes()[18] == 183  # ELF e_machine EM_AARCH64
    out = model["dir"] / f"out-{target}"
    r = run(runner, art, "-i", model["dir"] / "x.npy", "-o", out, timeout=300)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(out / "dequant.npy"), model["interp"])

    # the x86 Python runtime refuses it with a clear error (no attempt to load the library)
    with pytest.raises(ArtifactError, match="compiled for aarch64"):
        qc.load(art)


def test_aarch64_runner_refuses_x86_artifact(runner: list[str], model: dict[str, Any]) -> None:
    x86 = qc.compile(model["model"], model["inputs"], target="x86-generic", opt_level=0)
    r = run(runner, x86.export(model["dir"] / "x86.qc"), "-i", model["dir"] / "x.npy")
    assert r.returncode == 1 and "compiled for x86_64" in r.stderr, r.stderr


def test_bench_under_qemu(runner: list[str], model: dict[str, Any], tmp_path: Path) -> None:
    art = model["dir"] / "aarch64-dotprod.qc"
    if not art.is_dir():
        art = qc.compile(model["model"], model["inputs"], target="aarch64-dotprod").export(art)
    r = run(runner, art, "--bench", 2, "--threads", 1, timeout=300)
    assert r.returncode == 0 and "median " in r.stdout, r.stderr


def test_export_without_cross_linker_is_a_clear_error(tmp_path: Path) -> None:
    from qcompiler.ir import Builder, QParams, i8, qtype, u8
    from qcompiler.ops.quant import QuantizeAttrs

    b = Builder("q")
    x = b.input("x", qtype([2, 8], u8, 0.5, 3))
    y = b.op("requantize", [x], QuantizeAttrs(i8, QParams.per_tensor(1.0, 0)))
    cm = qc.compile(b.finish(y), target="aarch64-neon")
    with pytest.raises(ArtifactError, match="needs the C.. compiler 'no-such-g..', which is not"):
        cm.export(tmp_path / "a.qc", cc="no-such-g++")
    assert not (tmp_path / "a.qc").exists()
