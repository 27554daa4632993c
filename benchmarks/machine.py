"""Facts about the machine for the report: CPU, nominal and measured clock, VNNI throughput.

The clock is measured with a chain of dependent 64-bit adds (one per cycle), the VNNI
throughput with 12 independent vpdpbusd zmm chains; both are best-of-40 short runs of a tiny C
program compiled with the system C compiler, so a busy shared VM still shows something close to
the unloaded clock. Without a compiler (or AVX-512 VNNI) the measured values are None.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from typing import Any

PROBE_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + 1e-9 * t.tv_nsec; }
#define A8 "add $1, %0\n\t" "add $1, %0\n\t" "add $1, %0\n\t" "add $1, %0\n\t" \
           "add $1, %0\n\t" "add $1, %0\n\t" "add $1, %0\n\t" "add $1, %0\n\t"
#define D(i) "vpdpbusd %%zmm30, %%zmm31, %%zmm" #i "\n\t"
int main(int argc, char **argv) {
  double best = 0, bestv = 0;
  for (int r = 0; r < 40; r++) {
    uint64_t x = 0, n = 16000000ULL; double t0 = now();
    for (uint64_t i = 0; i < n; i += 8) { __asm__ volatile(A8 : "+r"(x)); }
    double mhz = n / (now() - t0) / 1e6; if (mhz > best) best = mhz;
  }
#ifdef WITH_VNNI
  for (int r = 0; r < 40; r++) {
    uint64_t n = 2000000ULL; double t0 = now();
    __asm__ volatile(
      "vpternlogd $0xff, %%zmm30, %%zmm30, %%zmm30\n\t"
      "vpternlogd $0xff, %%zmm31, %%zmm31, %%zmm31\n\t"
      "mov %0, %%rcx\n\t"
      "1:\n\t" D(0) D(1) D(2) D(3) D(4) D(5) D(6) D(7) D(8) D(9) D(10) D(11)
      "dec %%rcx\n\tjnz 1b\n\t"
      : : "r"(n) : "rcx", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",
        "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm30", "xmm31");
    double g = n * 12.0 * 64 / (now() - t0) / 1e9; if (g > bestv) bestv = g;
  }
#endif
  printf("{\"clock_mhz\": %.1f, \"vnni_gmacs\": %.2f}\n", best, bestv);
  return 0;
}
"""


def cpuinfo() -> dict[str, Any]:
    info: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return info
    mhz = []
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "model name":
            info.setdefault("model", val)
        elif key == "cpu family":
            info.setdefault("family", int(val))
        elif key == "cpu MHz":
            mhz.append(float(val))
        elif key == "flags":
            flags = set(val.split())
            info.setdefault("avx512_vnni", "avx512_vnni" in flags)
            info.setdefault("avx512f", "avx512f" in flags)
    if mhz:
        info["nominal_mhz"] = round(sum(mhz) / len(mhz), 1)
    try:
        info["affinity"] = sorted(os.sched_getaffinity(0))
    except AttributeError:
        pass
    return info


def measure(workdir: str | None = None) -> dict[str, Any]:
    """Best-of clock (MHz) and single-thread vpdpbusd GMAC/s; None where it cannot measure."""
    out: dict[str, Any] = {"clock_mhz": None, "vnni_gmacs": None}
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or platform.machine() not in ("x86_64", "AMD64"):
        out["probe_error"] = "no C compiler or not x86-64"
        return out
    vnni = bool(cpuinfo().get("avx512_vnni"))
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        src, exe = os.path.join(d, "probe.c"), os.path.join(d, "probe")
        with open(src, "w") as f:
            f.write(PROBE_C)
        flags = ["-O2"] + (["-mavx512f", "-DWITH_VNNI"] if vnni else [])
        try:
            subprocess.run([cc, *flags, "-o", exe, src], check=True, capture_output=True,
                           timeout=60)
            res = subprocess.run([exe], check=True, capture_output=True, text=True, timeout=60)
            data = json.loads(res.stdout)
        except (subprocess.SubprocessError, OSError, ValueError) as e:
            out["probe_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            return out
    out["clock_mhz"] = data["clock_mhz"]
    out["vnni_gmacs"] = data["vnni_gmacs"] if vnni else None
    if out["vnni_gmacs"] and out["clock_mhz"]:
        out["vnni_macs_per_cycle"] = round(out["vnni_gmacs"] * 1e3 / out["clock_mhz"], 1)
    return out


def _proc_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def _system_ticks() -> tuple[int, int]:
    """(busy, steal) ticks of all CPUs since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    user, nice, system, _idle, _iowait, irq, softirq = vals[:7]
    steal = vals[7] if len(vals) > 7 else 0
    return user + nice + system + irq + softirq, steal


class LoadMeter:
    """CPU used by *other* processes while we time: (all busy CPU - ours) / wall time, in cores.

    `ours` is this process plus the given worker pids. A value near 0 means the engines had the
    machine to themselves; 1.0 means another process kept one core busy on average.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = list(pids)
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start = self._snap()

    def _snap(self) -> tuple[float, int, int, int]:
        import time

        busy, steal = _system_ticks()
        ours = sum(_proc_ticks(p) for p in self.pids) + _proc_ticks(os.getpid())
        return time.monotonic(), busy, steal, ours

    def result(self) -> dict[str, float] | None:
        t0, b0, s0, o0 = self._start
        t1, b1, s1, o1 = self._snap()
        wall = t1 - t0
        if wall <= 0 or b1 == 0:
            return None
        return {"other_cores": round(max(0.0, (b1 - b0 - (o1 - o0)) / self.hz / wall), 2),
                "steal_cores": round((s1 - s0) / self.hz / wall, 2),
                "ours_cores": round((o1 - o0) / self.hz / wall, 2), "wall_s": round(wall, 2)}
