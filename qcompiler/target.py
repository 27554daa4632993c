"""Named target presets and host CPU detection.

A preset names one CPU family qcompiler generates code for. It fixes the LLVM target
(triple, `mcpu`, `mattr`), the set of ISA features the generated code may use, and the schedule
family that `codegen/` picks rules from:

    name              arch     mcpu            schedule family   may use
    x86-avx512-vnni   x86_64   cascadelake     x86-vnni          AVX-512 F/CD/BW/DQ/VL + VNNI
    x86-avx512        x86_64   skylake-avx512  x86-avx512        AVX-512 F/CD/BW/DQ/VL
    x86-avx2          x86_64   haswell         x86-avx2          AVX2, FMA, BMI1/2, F16C
    x86-generic       x86_64   x86-64          generic           SSE2 (fallback for old CPUs)
    aarch64-dotprod   aarch64  generic         arm-dotprod       NEON + dot product (sdot/udot)
    aarch64-neon      aarch64  generic         arm-neon          NEON
    host              resolves to the best preset this CPU can run (recorded in `resolved_from`)

Why these `mcpu`s: LLVM may emit any instruction its `mcpu` implies, so the `mcpu` is the
oldest CPU of the family. `cascadelake` runs on every AVX-512 VNNI CPU (Cascade Lake, Ice Lake,
Sapphire Rapids, Zen 4, Zen 5), while `znver4` or `icelake-server` would let LLVM use VBMI or
GFNI and crash a Cascade Lake with SIGILL. `features` lists exactly the features from
`FEATURE_VOCABULARY` that the `mcpu`/`mattr` enable (a test checks this against LLVM), so
`missing_on_host()` is a complete check before an artifact is loaded.

NOTE: the feature set must be right for compiling too. A VNNI-tensorized kernel compiled for an
`mcpu` without avx512vnni kills the process inside LLVM (docs/tvm-0.27-notes.md, recipe 1);
codegen must ask `preset.has("avx512vnni")` before it tensorizes.

This module imports `tvm` only inside `TargetPreset.tvm_target()` and the non-Linux fallback of
`host_features()`, so it loads fast.
"""

from __future__ import annotations

import difflib
import functools
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from qcompiler.errors import TargetError

if TYPE_CHECKING:
    import tvm.target

ARCHES = ("x86_64", "aarch64")
SCHEDULE_FAMILIES = ("x86-vnni", "x86-avx512", "x86-avx2", "arm-dotprod", "arm-neon", "generic")

_MTRIPLE = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}

# --- feature names ------------------------------------------------------------------------------
# Canonical feature names are LLVM's (`codegen.llvm_get_cpu_features`). The vocabulary holds the
# features that matter for generated code; others (pku, rdseed, ...) are never emitted by LLVM
# unless asked for through an intrinsic, and hypervisors often hide them from /proc/cpuinfo.

_X86_CPUINFO_TO_CANONICAL: dict[str, str] = {
    "sse": "sse",
    "sse2": "sse2",
    "pni": "sse3",
    "ssse3": "ssse3",
    "sse4_1": "sse4.1",
    "sse4_2": "sse4.2",
    "popcnt": "popcnt",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "bmi1": "bmi",
    "bmi2": "bmi2",
    "abm": "lzcnt",
    "movbe": "movbe",
    "avx512f": "avx512f",
    "avx512cd": "avx512cd",
    "avx512bw": "avx512bw",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512_vnni": "avx512vnni",
    "avx_vnni": "avxvnni",
    "avx512_bf16": "avx512bf16",
    "avx512vbmi": "avx512vbmi",
    "avx512_vbmi2": "avx512vbmi2",
    "avx512_bitalg": "avx512bitalg",
    "avx512_vpopcntdq": "avx512vpopcntdq",
    "avx512ifma": "avx512ifma",
    "avx512_fp16": "avx512fp16",
    "gfni": "gfni",
    "vaes": "vaes",
    "vpclmulqdq": "vpclmulqdq",
    "amx_tile": "amx-tile",
    "amx_int8": "amx-int8",
    "amx_bf16": "amx-bf16",
}

_ARM_CPUINFO_TO_CANONICAL: dict[str, str] = {
    "asimd": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "asimdhp": "fullfp16",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
    "sme": "sme",
}

FEATURE_VOCABULARY: frozenset[str] = frozenset(_X86_CPUINFO_TO_CANONICAL.values()) | frozenset(
    _ARM_CPUINFO_TO_CANONICAL.values()
)
"""Every canonical feature name a preset or the host detection can report."""

_X86_V2 = frozenset({"sse", "sse2", "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt"})
_X86_V3 = _X86_V2 | {"avx", "avx2", "fma", "f16c", "bmi", "bmi2", "lzcnt", "movbe"}
_X86_AVX512 = _X86_V3 | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


# --- presets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetPreset:
    """One named CPU target: the LLVM target to compile for and the features code may use."""

    name: str
    """Preset name, e.g. `x86-avx512-vnni`. For `host` this is the preset it resolved to."""
    arch: str
    """`x86_64` or `aarch64`."""
    mcpu: str
    """LLVM `-mcpu`: the oldest CPU of the family, so the code runs on all of it."""
    mattr: tuple[str, ...]
    """LLVM `-mattr` entries such as `+dotprod`, added on top of `mcpu`."""
    features: frozenset[str]
    """Canonical ISA features (see `FEATURE_VOCABULARY`) the generated code may use."""
    schedule_family: str
    """Which schedule rules `codegen/` applies: one of `SCHEDULE_FAMILIES`."""
    num_cores: int
    """Cores TVM may assume (`num-cores`, needed by meta_schedule). Does not set thread count."""
    resolved_from: str | None = None
    """`"host"` when this preset was chosen by host detection, else None."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise TargetError(
                f"target {self.name!r}: arch must be one of {ARCHES}, got {self.arch!r}"
            )
        if self.schedule_family not in SCHEDULE_FAMILIES:
            raise TargetError(
                f"target {self.name!r}: schedule_family must be one of {SCHEDULE_FAMILIES}, "
                f"got {self.schedule_family!r}"
            )
        if self.num_cores < 1:
            raise TargetError(f"target {self.name!r}: num_cores must be >= 1, got {self.num_cores}")
        unknown = self.features - FEATURE_VOCABULARY
        if unknown:
            raise TargetError(
                f"target {self.name!r}: unknown feature names {sorted(unknown)}; "
                f"known: {', '.join(sorted(FEATURE_VOCABULARY))}"
            )

    @property
    def mtriple(self) -> str:
        """LLVM target triple (`x86_64-linux-gnu` or `aarch64-linux-gnu`)."""
        return _MTRIPLE[self.arch]

    @property
    def display_name(self) -> str:
        """`host (x86-avx512-vnni)` for a resolved host preset, else the preset name."""
        return f"{self.resolved_from} ({self.name})" if self.resolved_from else self.name

    def has(self, feature: str) -> bool:
        """True when generated code may use `feature` (a canonical name like `avx512vnni`)."""
        return feature in self.features

    def tvm_target(self) -> tvm.target.Target:
        """The `tvm.target.Target` for this preset (JSON-dict form; includes `num-cores`)."""
        from tvm.target import Target

        return Target(self.tvm_target_dict())

    def tvm_target_dict(self) -> dict[str, Any]:
        """The JSON dict `tvm_target()` builds its target from (no TVM import needed)."""
        d: dict[str, Any] = {
            "kind": "llvm",
            "mtriple": self.mtriple,
            "mcpu": self.mcpu,
            "num-cores": self.num_cores,
        }
        if self.mattr:
            d["mattr"] = list(self.mattr)
        return d

    def missing_on_host(self) -> frozenset[str]:
        """Features this preset's code may use that this machine's CPU lacks.

        Non-empty means an artifact built for this preset must not be loaded here: it could
        die with an illegal instruction. An other-arch preset reports all its features.
        """
        if self.arch != host_arch():
            return self.features
        return self.features - host_features()

    def is_cross(self) -> bool:
        """True when code for this preset cannot run on this machine (other arch or features)."""
        return self.arch != host_arch() or bool(self.missing_on_host())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for an artifact manifest.

        `name` is what the user asked for (`host` or a preset name), `resolved` the concrete
        preset; `features` is sorted.
        """
        return {
            "name": self.resolved_from or self.name,
            "resolved": self.name,
            "arch": self.arch,
            "mcpu": self.mcpu,
            "mattr": list(self.mattr),
            "features": sorted(self.features),
            "schedule_family": self.schedule_family,
            "num_cores": self.num_cores,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> TargetPreset:
        """Inverse of `to_dict`; raises `TargetError` on a malformed dict."""
        try:
            resolved = str(d["resolved"])
            name = str(d.get("name", resolved))
            return TargetPreset(
                name=resolved,
                arch=str(d["arch"]),
                mcpu=str(d["mcpu"]),
                mattr=tuple(str(a) for a in d.get("mattr", ())),
                features=frozenset(str(f) for f in d["features"]),
                schedule_family=str(d.get("schedule_family", "generic")),
                num_cores=int(d.get("num_cores", 1)),
                resolved_from=name if name != resolved else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise TargetError(f"malformed target description {dict(d)!r}: {e!r}") from None

    def __str__(self) -> str:
        return (
            f"{self.display_name}: {self.arch} mcpu={self.mcpu}"
            + (f" mattr={','.join(self.mattr)}" if self.mattr else "")
            + f" schedules={self.schedule_family} cores={self.num_cores}"
        )


@dataclass(frozen=True)
class _Spec:
    arch: str
    mcpu: str
    mattr: tuple[str, ...]
    features: frozenset[str]
    schedule_family: str


_SPECS: dict[str, _Spec] = {
    "x86-avx512-vnni": _Spec("x86_64", "cascadelake", (), _X86_AVX512 | {"avx512vnni"}, "x86-vnni"),
    "x86-avx512": _Spec("x86_64", "skylake-avx512", (), _X86_AVX512, "x86-avx512"),
    "x86-avx2": _Spec("x86_64", "haswell", (), _X86_V3, "x86-avx2"),
    "x86-generic": _Spec("x86_64", "x86-64", (), frozenset({"sse", "sse2"}), "generic"),
    "aarch64-dotprod": _Spec(
        "aarch64", "generic", ("+neon", "+dotprod"), frozenset({"neon", "dotprod"}), "arm-dotprod"
    ),
    "aarch64-neon": _Spec("aarch64", "generic", ("+neon",), frozenset({"neon"}), "arm-neon"),
}

# Best first: `host` resolves to the first preset of the host's arch whose features it has.
_HOST_PREFERENCE: dict[str, tuple[str, ...]] = {
    "x86_64": ("x86-avx512-vnni", "x86-avx512", "x86-avx2", "x86-generic"),
    "aarch64": ("aarch64-dotprod", "aarch64-neon"),
}

PRESET_NAMES: tuple[str, ...] = (*_SPECS, "host")
"""Every name `get_target` accepts."""


def list_targets() -> tuple[str, ...]:
    """Names of all target presets, `host` last."""
    return PRESET_NAMES


def get_target(name_or_preset: str | TargetPreset, *, num_cores: int | None = None) -> TargetPreset:
    """Look up a preset by name (or pass one through).

    `host` resolves to the best preset this CPU runs; the result's `name` is that preset and
    `resolved_from` is `"host"`. `num_cores` defaults to the CPUs this process may use.
    Raises `TargetError` for an unknown name, listing the valid ones.
    """
    if isinstance(name_or_preset, TargetPreset):
        if num_cores is None or num_cores == name_or_preset.num_cores:
            return name_or_preset
        return replace(name_or_preset, num_cores=num_cores)
    if not isinstance(name_or_preset, str):
        raise TargetError(
            f"target must be a preset name or TargetPreset, got {type(name_or_preset).__name__}"
        )
    key = name_or_preset.strip().lower()
    cores = num_cores if num_cores is not None else host_num_cores()
    if key == "host":
        return _resolve_host(cores)
    spec = _SPECS.get(key)
    if spec is None:
        close = difflib.get_close_matches(key, PRESET_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TargetError(
            f"unknown target {name_or_preset!r}{hint}; valid targets: {', '.join(PRESET_NAMES)}"
        )
    return _from_spec(key, spec, cores)


def _from_spec(
    name: str, spec: _Spec, num_cores: int, resolved_from: str | None = None
) -> TargetPreset:
    return TargetPreset(
        name=name,
        arch=spec.arch,
        mcpu=spec.mcpu,
        mattr=spec.mattr,
        features=spec.features,
        schedule_family=spec.schedule_family,
        num_cores=num_cores,
        resolved_from=resolved_from,
    )


def _resolve_host(num_cores: int) -> TargetPreset:
    name = best_preset_for(host_arch(), host_features())
    return _from_spec(name, _SPECS[name], num_cores, resolved_from="host")


def best_preset_for(arch: str, features: Iterable[str]) -> str:
    """Name of the best preset a CPU of `arch` with `features` (canonical names) can run.

    This is how `host` resolves. Raises `TargetError` for an unsupported arch, or when the CPU
    lacks even the baseline preset's features.
    """
    candidates = _HOST_PREFERENCE.get(arch)
    if candidates is None:
        raise TargetError(
            f"architecture {arch!r} is not supported; qcompiler targets "
            f"{' and '.join(ARCHES)} (cross-compile with one of: {', '.join(_SPECS)})"
        )
    have = frozenset(features)
    for name in candidates:
        if _SPECS[name].features <= have:
            return name
    raise TargetError(
        f"this {arch} CPU lacks the features of every {arch} preset (it has: "
        f"{', '.join(sorted(have)) or 'none detected'}); pick a preset explicitly: "
        f"{', '.join(candidates)}"
    )


# --- host detection -----------------------------------------------------------------------------


def host_arch() -> str:
    """This machine's architecture as a preset arch: `x86_64`, `aarch64`, or the raw name."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if machine in ("aarch64", "arm64", "armv8l"):
        return "aarch64"
    return machine


def host_num_cores() -> int:
    """CPUs this process may run on (affinity mask when the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@functools.cache
def host_features() -> frozenset[str]:
    """Canonical ISA features of this machine's CPU, as the OS reports them.

    Reads the `flags` (x86) or `Features` (aarch64) line of /proc/cpuinfo, which reflects what the
    kernel and hypervisor enable. Without /proc/cpuinfo (macOS, ...) it asks LLVM through TVM.
    """
    from_proc = _features_from_cpuinfo("/proc/cpuinfo")
    if from_proc is not None:
        return from_proc
    return _features_from_llvm()


def parse_cpuinfo_features(text: str) -> frozenset[str] | None:
    """Canonical features from /proc/cpuinfo text, or None when it has no flags line."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "flags":
            table = _X86_CPUINFO_TO_CANONICAL
        elif key == "features":
            table = _ARM_CPUINFO_TO_CANONICAL
        else:
            continue
        return canonical_features(value.split(), table)
    return None


def canonical_features(
    names: Iterable[str], table: Mapping[str, str] | None = None
) -> frozenset[str]:
    """Map raw feature names (cpuinfo flags via `table`, or LLVM names) into the vocabulary."""
    out: set[str] = set()
    for raw in names:
        n = raw.strip().lower().lstrip("+")
        if table is not None and n in table:
            out.add(table[n])
        elif n in FEATURE_VOCABULARY:
            out.add(n)
    return frozenset(out)


def _features_from_cpuinfo(path: str) -> frozenset[str] | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return parse_cpuinfo_features(fh.read())
    except OSError:
        return None


def _features_from_llvm() -> frozenset[str]:
    from tvm.target import Target, codegen

    cpu = str(codegen.llvm_get_system_cpu())
    triple = _MTRIPLE.get(host_arch())
    d: dict[str, Any] = {"kind": "llvm", "mcpu": cpu}
    if triple is not None:
        d["mtriple"] = triple
    return canonical_features(str(f) for f in codegen.llvm_get_cpu_features(Target(d)))
