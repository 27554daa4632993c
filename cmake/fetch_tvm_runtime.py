#!/usr/bin/env python3
"""Put the TVM runtime libraries for another architecture (libtvm_runtime.so, libtvm_ffi.so)
into a directory, for cross-building and running `qcompiler-run` (see CMakeLists.txt).

They come from the PyPI wheels of exactly the apache-tvm / apache-tvm-ffi versions installed
here (`pip download --platform manylinux_2_28_<arch>`), or from a folder of already downloaded
wheels (`--wheels DIR` or $QCOMPILER_TVM_WHEELS). Nothing is done when DEST already holds the
libraries of these versions.

    python3 cmake/fetch_tvm_runtime.py --arch aarch64 --dest build/tvm-runtime-aarch64
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, version

LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
STAMP = "versions.json"


def installed_versions() -> dict[str, str]:
    """{distribution: version} of the TVM wheels this Python has."""
    out = {}
    for dist in ("apache-tvm", "apache-tvm-ffi"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            sys.exit(f"fetch_tvm_runtime: {dist} is not installed in {sys.executable}; "
                     "install it first (pip install apache-tvm apache-tvm-ffi==0.1.14.post1)")
    return out


def fetch(arch: str, dest: str, wheels: str | None) -> None:
    versions = installed_versions()
    os.makedirs(dest, exist_ok=True)
    stamp = os.path.join(dest, STAMP)
    want = {"arch": arch, **versions}
    have_libs = all(os.path.isfile(os.path.join(dest, lib)) for lib in LIBS)
    if have_libs and os.path.isfile(stamp):
        with open(stamp, encoding="utf-8") as fh:
            if json.load(fh) == want:
                return
    if wheels is None:
        wheels = os.path.join(dest, "wheels")
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--platform", f"manylinux_2_28_{arch}", "--python-version", py, "-d", wheels,
               *(f"{d}=={v}" for d, v in versions.items())]
        print("fetch_tvm_runtime:", " ".join(cmd), file=sys.stderr)
        r = subprocess.run(cmd, check=False)
        if r.returncode != 0:
            sys.exit(f"fetch_tvm_runtime: pip download of the {arch} wheels failed (exit "
                     f"{r.returncode}); download them yourself and pass --wheels DIR")
    found = set()
    for whl in sorted(glob.glob(os.path.join(wheels, f"*{arch}*.whl"))):
        with zipfile.ZipFile(whl) as z:
            for name in z.namelist():
                base = os.path.basename(name)
                if base in LIBS and name.count("/") == 2 and name.split("/")[1] == "lib":
                    tmp = os.path.join(dest, base + ".partial")
                    with open(tmp, "wb") as fh:
                        fh.write(z.read(name))
                    os.replace(tmp, os.path.join(dest, base))
                    found.add(base)
    missing = set(LIBS) - found
    if missing:
        sys.exit(f"fetch_tvm_runtime: no {', '.join(sorted(missing))} in the {arch} wheels "
                 f"under {wheels}")
    with open(stamp, "w", encoding="utf-8") as fh:
        json.dump(want, fh)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="aarch64", help="wheel platform arch (default aarch64)")
    p.add_argument("--dest", required=True, help="directory for the two libraries")
    p.add_argument("--wheels", default=os.environ.get("QCOMPILER_TVM_WHEELS"),
                   help="folder of already downloaded wheels (default: pip download)")
    args = p.parse_args()
    fetch(args.arch, args.dest, args.wheels)


if __name__ == "__main__":
    main()
