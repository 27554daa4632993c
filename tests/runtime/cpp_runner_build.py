"""Build `qcompiler-run` (CMakeLists.txt, cpp/) for the C++ runner tests, and run it.

Builds go to `build/pytest-runner-<arch>` in the repo (or $QCOMPILER_RUNNER_BUILD_DIR) and are
reused across runs: a rebuild is incremental, and the aarch64 build's TVM runtime (from the
aarch64 wheels on PyPI) is fetched once. A file lock serializes concurrent test processes.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"


def require_tools(*tools: str, install: str) -> None:
    """Skip (call it from a fixture) unless every tool is on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"needs {', '.join(missing)} (apt-get install {install}; scripts/test.sh installs it "
            "when run as root)"
        )


def build_runner(arch: str) -> Path:
    """Configure (once) and build qcompiler-run for `x86_64` (native) or `aarch64` (cross)."""
    base = Path(os.environ.get("QCOMPILER_RUNNER_BUILD_DIR", REPO / "build"))
    build = base / f"pytest-runner-{arch}"
    build.mkdir(parents=True, exist_ok=True)
    with open(build / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (build / "CMakeCache.txt").is_file():
            cmd = ["cmake", "-S", str(REPO), "-B", str(build),
                   f"-DPython_EXECUTABLE={sys.executable}"]
            if arch == "aarch64":
                cmd.append(f"-DCMAKE_TOOLCHAIN_FILE={REPO / 'cmake' / 'aarch64-linux-gnu.cmake'}")
            r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
            if r.returncode != 0:
                (build / "CMakeCache.txt").unlink(missing_ok=True)
                log = r.stdout[-3000:] + r.stderr[-3000:]
                if arch == "aarch64" and "pip download of the" in log:
                    pytest.skip(f"could not fetch the aarch64 TVM runtime wheels:\n{log}")
                pytest.fail(f"cmake configure failed:\n{log}")
        r = subprocess.run(["cmake", "--build", str(build), "-j2"], check=False,
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.fail(f"building qcompiler-run failed:\n{r.stdout[-4000:]}{r.stderr[-4000:]}")
    exe = build / "qcompiler-run"
    assert exe.is_file()
    return exe


def runner_command(exe: Path, arch: str) -> list[str]:
    """The argv prefix that runs `exe` here (under qemu-aarch64 for an aarch64 build)."""
    if arch == "aarch64" and os.uname().machine != "aarch64":
        return ["qemu-aarch64", "-L", AARCH64_SYSROOT, str(exe)]
    return [str(exe)]


def run(cmd: list[str], *args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the runner; a signal (crash) is always a test failure."""
    r = subprocess.run([*cmd, *map(str, args)], check=False, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode >= 0, f"qcompiler-run crashed (signal {-r.returncode}):\n{r.stderr}"
    return r
