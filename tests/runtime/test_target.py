"""Tests for qcompiler.target: presets, host detection, TVM targets, feature checks."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from qcompiler.errors import TargetError
from qcompiler.target import (
    FEATURE_VOCABULARY,
    PRESET_NAMES,
    TargetPreset,
    best_preset_for,
    canonical_features,
    get_target,
    host_arch,
    host_features,
    list_targets,
    parse_cpuinfo_features,
)

REPO = Path(__file__).resolve().parents[2]

REQUIRED_PRESETS = (
    "x86-avx512-vnni",
    "x86-avx512",
    "x86-avx2",
    "aarch64-dotprod",
    "aarch64-neon",
    "host",
)

# /proc/cpuinfo excerpts (flags lines shortened to what matters, plus noise)
CASCADE_LAKE = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6230\n"
    "flags\t\t: fpu sse sse2 pni ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt avx f16c abm bmi1 "
    "avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni pku ospke\n"
)
SKYLAKE_X = CASCADE_LAKE.replace(" avx512_vnni", "")
HASWELL = (
    "flags\t: fpu sse sse2 pni ssse3 fma sse4_1 sse4_2 movbe popcnt avx f16c abm bmi1 avx2 bmi2\n"
)
NEOVERSE_N1 = (
    "processor\t: 0\nBogoMIPS\t: 50.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
    "lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\n"
)
CORTEX_A53 = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\n"


def test_presets_listed() -> None:
    assert set(REQUIRED_PRESETS) <= set(PRESET_NAMES)
    assert list_targets() == PRESET_NAMES and PRESET_NAMES[-1] == "host"


@pytest.mark.parametrize("name", REQUIRED_PRESETS)
def test_get_target(name: str) -> None:
    t = get_target(name)
    assert isinstance(t, TargetPreset)
    assert t.arch in ("x86_64", "aarch64") and t.num_cores >= 1
    assert t.features and t.features <= FEATURE_VOCABULARY
    if name != "host":
        assert t.name == name and t.resolved_from is None
    assert get_target(t) is t
    assert get_target(t, num_cores=7).num_cores == 7


def test_preset_fields() -> None:
    vnni = get_target("x86-avx512-vnni", num_cores=4)
    assert (vnni.arch, vnni.schedule_family, vnni.num_cores) == ("x86_64", "x86-vnni", 4)
    assert {"avx512f", "avx512bw", "avx512vnni", "avx2", "fma"} <= vnni.features
    assert vnni.has("avx512vnni")
    assert not get_target("x86-avx512").has("avx512vnni")  # never tensorize VNNI for it
    assert not get_target("x86-avx2").has("avx512f")
    dot = get_target("aarch64-dotprod")
    assert (dot.arch, dot.schedule_family) == ("aarch64", "arm-dotprod")
    assert dot.features == {"neon", "dotprod"} and "+dotprod" in dot.mattr
    assert get_target("aarch64-neon").features == {"neon"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        vnni.mcpu = "znver4"  # type: ignore[misc]
    assert get_target(" X86-AVX2 ").name == "x86-avx2"


def test_unknown_target_lists_presets() -> None:
    with pytest.raises(TargetError) as err:
        get_target("x86-avx512vnni")
    msg = str(err.value)
    assert "unknown target 'x86-avx512vnni'" in msg and "did you mean 'x86-avx512-vnni'" in msg
    for name in REQUIRED_PRESETS:
        assert name in msg
    with pytest.raises(TargetError, match="valid targets"):
        get_target("riscv")


def test_host_resolves_to_preset() -> None:
    h = get_target("host")
    assert h.resolved_from == "host" and h.name in PRESET_NAMES and h.name != "host"
    assert h.display_name == f"host ({h.name})"
    assert h.arch == host_arch()
    assert h.features <= host_features()
    assert h.missing_on_host() == frozenset() and not h.is_cross()
    assert dataclasses.replace(h, resolved_from=None) == get_target(h.name)


def test_host_features_detected() -> None:
    feats = host_features()
    assert feats <= FEATURE_VOCABULARY
    if host_arch() == "x86_64":
        assert {"sse", "sse2"} <= feats
    if host_arch() == "aarch64":
        assert "neon" in feats


def test_parse_cpuinfo() -> None:
    cl = parse_cpuinfo_features(CASCADE_LAKE)
    assert cl is not None and {"avx512vnni", "avx2", "bmi", "lzcnt", "sse3"} <= cl
    assert "pku" not in cl  # outside the vocabulary
    n1 = parse_cpuinfo_features(NEOVERSE_N1)
    assert n1 == {"neon", "dotprod", "fullfp16"}
    assert parse_cpuinfo_features("processor\t: 0\n") is None
    assert canonical_features(["+avx2", "AVX512VNNI", "bogus"]) == {"avx2", "avx512vnni"}


@pytest.mark.parametrize(
    ("arch", "cpuinfo", "expect"),
    [
        ("x86_64", CASCADE_LAKE, "x86-avx512-vnni"),
        ("x86_64", SKYLAKE_X, "x86-avx512"),
        ("x86_64", HASWELL, "x86-avx2"),
        ("x86_64", "flags\t: fpu sse sse2\n", "x86-generic"),
        ("aarch64", NEOVERSE_N1, "aarch64-dotprod"),
        ("aarch64", CORTEX_A53, "aarch64-neon"),
    ],
)
def test_best_preset_for(arch: str, cpuinfo: str, expect: str) -> None:
    feats = parse_cpuinfo_features(cpuinfo)
    assert feats is not None
    assert best_preset_for(arch, feats) == expect


def test_best_preset_errors() -> None:
    with pytest.raises(TargetError, match="architecture 'riscv64' is not supported"):
        best_preset_for("riscv64", [])
    with pytest.raises(TargetError, match="lacks the features of every aarch64 preset"):
        best_preset_for("aarch64", [])


def test_missing_on_host_and_cross() -> None:
    other = "aarch64-dotprod" if host_arch() == "x86_64" else "x86-avx2"
    t = get_target(other)
    assert t.is_cross() and t.missing_on_host() == t.features
    sve2 = dataclasses.replace(get_target("host"), features=get_target("host").features | {"sve2"})
    assert "sve2" in sve2.missing_on_host() and sve2.is_cross()


def test_dict_roundtrip() -> None:
    for name in REQUIRED_PRESETS:
        t = get_target(name)
        d = t.to_dict()
        assert d["name"] == name and d["resolved"] == t.name
        assert d["features"] == sorted(t.features)
        assert TargetPreset.from_dict(d) == t
    with pytest.raises(TargetError, match="malformed target"):
        TargetPreset.from_dict({"name": "x"})
    with pytest.raises(TargetError, match="unknown feature names"):
        TargetPreset.from_dict({**get_target("x86-avx2").to_dict(), "features": ["avx9000"]})


def test_tvm_target_dict() -> None:
    d = get_target("x86-avx512-vnni", num_cores=3).tvm_target_dict()
    assert d == {
        "kind": "llvm",
        "mtriple": "x86_64-linux-gnu",
        "mcpu": "cascadelake",
        "num-cores": 3,
    }
    a = get_target("aarch64-dotprod", num_cores=4).tvm_target_dict()
    assert a["mtriple"] == "aarch64-linux-gnu" and a["num-cores"] == 4
    assert a["mattr"] == ["+neon", "+dotprod"]


def test_import_is_fast_without_tvm() -> None:
    code = "import sys, qcompiler.target; assert 'tvm' not in sys.modules, 'tvm imported'"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


# --- with TVM -------------------------------------------------------------------------------------


@pytest.mark.tvm
@pytest.mark.parametrize("name", REQUIRED_PRESETS)
def test_tvm_target_matches_llvm_features(name: str) -> None:
    """A preset's features are exactly what LLVM may use for its mcpu/mattr (in the vocabulary).

    More in LLVM's set would let the code use features `missing_on_host` never checks (SIGILL);
    fewer would let codegen tensorize with an intrinsic LLVM cannot select (process abort).
    """
    pytest.importorskip("tvm")
    from tvm.target import codegen

    t = get_target(name)
    tgt = t.tvm_target()
    assert int(tgt.attrs["num-cores"]) == t.num_cores
    assert str(tgt.attrs["mcpu"]) == t.mcpu
    llvm = canonical_features(str(f) for f in codegen.llvm_get_cpu_features(tgt))
    assert llvm == t.features
    if t.arch == "aarch64":
        assert "arm_cpu" in [str(k) for k in tgt.keys]
        assert bool(tgt.attrs["feature.has_dotprod"]) == t.has("dotprod")
    else:
        assert bool(codegen.llvm_cpu_has_features("avx512vnni", tgt)) == t.has("avx512vnni")
