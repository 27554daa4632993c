"""`qcompiler tune` / `qcompiler.tuning`: records written, applied by compile, exact; errors.

One tiny kernel (a 3x3 u8 average pool, scheduled by the generic rules) is tuned once per
module with 4 trials and `min_speedup=0` (keep any verified candidate: a few trials on a noisy
machine need not beat the generic schedule, and the tests are about the plumbing).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

import qcompiler as qc
from qcompiler.cli import main
from qcompiler.driver import build
from qcompiler.errors import TargetError
from qcompiler.target import get_target
from qcompiler.tuning import TuningError, records_for
from qcompiler.tuning import search as tune_mod
from qcompiler.tuning.records import META_FILE

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from tuning_models import avg_pool_graph, pool_input

pytestmark = pytest.mark.tvm
PRESET = get_target("host").name
KERNEL = "qnn_avg_pool2d_1x8x12x12_u8"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("records")
    lines: list[str] = []
    report = tune_mod.tune(avg_pool_graph(), target="host", trials=4, out=out, min_speedup=0,
                           progress=lines.append)
    assert any("1 to tune" in ln for ln in lines), lines
    return out, report


def test_tune_writes_records(tuned: tuple[Path, object]) -> None:
    out, report = tuned
    [k] = report.kernels
    assert (k.name, k.status, k.rejected) == (KERNEL, "tuned", 0), report.table()
    assert k.trials >= 1 and k.baseline_us > 0 and k.tuned_us > 0
    d = out / PRESET
    for f in ("database_workload.json", "database_tuning_record.json", META_FILE):
        assert (d / f).is_file(), f
    meta = json.loads((d / META_FILE).read_text())
    assert meta["target"]["resolved"] == PRESET
    assert [e["name"] for e in meta["kernels"].values()] == [KERNEL]
    assert KERNEL in report.table()


def test_compile_applies_records_and_stays_exact(tuned: tuple[Path, object]) -> None:
    out, _ = tuned
    g = avg_pool_graph()
    x = pool_input(3)
    cm = qc.compile(g, tuning_records=out)
    assert [k["schedule"] for k in cm.kernels] == ["tuned"]
    np.testing.assert_array_equal(cm(x), qc.interpret(g, x))
    # the preset folder itself works too; records off and opt_level 1 use the rules
    assert build(g, tuning_records=out / PRESET).lowered.funcs[0].rule == "tuned"
    assert build(g, tuning_records=False).lowered.funcs[0].rule == "generic_reduction"
    assert build(g, opt_level=1, tuning_records=out).lowered.funcs[0].rule == "generic_reduction"


def test_records_do_not_apply_to_another_kernel(tuned: tuple[Path, object]) -> None:
    from qcompiler.ir import Builder, QParams, TensorType, u8
    from qcompiler.ops.pool import AvgPoolAttrs

    b = Builder("other")
    x = b.input("x", TensorType((1, 8, 12, 12), u8, QParams.per_tensor(0.05, 20)))  # other zp
    g = b.finish(b.op("qnn.avg_pool2d", [x], AvgPoolAttrs((3, 3), (1, 1), (1, 1))))
    assert build(g, tuning_records=tuned[0]).lowered.funcs[0].rule == "generic_reduction"


def test_cli_tune_and_compile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rec"
    src = "tuning_models:pool_graph"
    assert main(["tune", src, "--trials", "2", "--out", str(out), "--min-speedup", "0"]) == 0
    cap = capsys.readouterr()
    assert KERNEL in cap.out and "tuned" in cap.out
    assert "[1/1] " + KERNEL in cap.err and "candidates" in cap.err
    art = tmp_path / "m.qc"
    assert main(["compile", src, "-o", str(art), "--tuning-records", str(out)]) == 0
    assert "1 of 1 kernels use tuned schedules" in capsys.readouterr().err
    manifest = json.loads((art / "manifest.json").read_text())
    assert [k["schedule"] for k in manifest["kernels"]] == ["tuned"]
    assert main(["compile", src, "-o", str(art), "--tuning-records", str(tmp_path / "no")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_tune_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["tune", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--trials" in text and "--out" in text and "meta_schedule" in text


def test_rejected_candidates_are_not_recorded(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tune_mod, "candidate_matches", lambda *a: False)
    report = tune_mod.tune(avg_pool_graph(), trials=2, out=tmp_path, min_speedup=0)
    [k] = report.kernels
    assert k.status == "rejected" and k.rejected >= 1
    assert not (tmp_path / PRESET).exists()


def test_same_outputs_is_bit_exact() -> None:
    a = np.array([0.0, np.nan, 1.5], np.float32)
    assert tune_mod.same_outputs([a], [a.copy()])
    assert not tune_mod.same_outputs([a], [np.array([-0.0, np.nan, 1.5], np.float32)])
    assert not tune_mod.same_outputs([np.array([1, 2], np.uint8)], [np.array([1, 3], np.uint8)])
    assert not tune_mod.same_outputs([np.zeros(2, np.int8)], [np.zeros(2, np.uint8)])


def test_float_reductions_are_never_tuned() -> None:
    from qcompiler.lowering.tvm_compat import create_prim_func, te

    x = te.placeholder((4, 8), "float32", name="x")
    k = te.reduce_axis((0, 8), name="k")
    s = te.compute((4,), lambda i: te.sum(x[i, k], axis=k), name="fsum")
    assert tune_mod.float_reduction(create_prim_func([x, s])) == "fsum"
    xi = te.placeholder((4, 8), "int32", name="xi")
    si = te.compute((4,), lambda i: te.sum(xi[i, k], axis=k), name="isum")
    assert tune_mod.float_reduction(create_prim_func([xi, si])) is None


# --- errors --------------------------------------------------------------------------------------


def test_bad_records_dirs(tmp_path: Path, tuned: tuple[Path, object]) -> None:
    g = avg_pool_graph()
    with pytest.raises(TuningError, match="does not exist"):
        qc.compile(g, tuning_records=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TuningError, match="holds no tuning records"):
        qc.compile(g, tuning_records=tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TuningError, match="must be a directory"):
        qc.compile(g, tuning_records=tmp_path / "file")
    bad = tmp_path / "bad" / PRESET
    bad.mkdir(parents=True)
    (bad / META_FILE).write_text("{not json")
    with pytest.raises(TuningError, match="cannot read tuning records"):
        qc.compile(g, tuning_records=tmp_path / "bad")
    with pytest.raises(TuningError, match="directory path"):
        qc.compile(g, tuning_records=42)  # type: ignore[arg-type]


def test_records_of_another_target_are_refused(tmp_path: Path,
                                               tuned: tuple[Path, object]) -> None:
    other = tmp_path / "x86-avx2"
    shutil.copytree(tuned[0] / PRESET, other)
    meta = json.loads((other / META_FILE).read_text())
    meta["target"]["name"] = meta["target"]["resolved"] = "x86-avx2"
    (other / META_FILE).write_text(json.dumps(meta))
    target = "x86-avx512" if PRESET == "x86-avx2" else "x86-avx2"
    with pytest.raises(TuningError, match="were tuned for target x86-avx2"):
        records_for(str(other), get_target(target if target != "x86-avx2" else "x86-avx512"))
    # a records root without a folder for the target is simply no records
    assert records_for(str(tmp_path), get_target("aarch64-neon")) is None


def test_tune_unknown_and_foreign_targets(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="valid targets"):
        tune_mod.tune(avg_pool_graph(), target="x86-avx9000", out=tmp_path)
    with pytest.raises(TuningError, match="cannot run code for target aarch64-neon"):
        tune_mod.tune(avg_pool_graph(), target="aarch64-neon", out=tmp_path)
    with pytest.raises(TuningError, match="trials must be"):
        tune_mod.tune(avg_pool_graph(), trials=0, out=tmp_path)
    assert main(["tune", "tuning_models:pool_graph", "--out", str(tmp_path),
                 "--target", "nope"]) == 2


def test_shipped_records_are_the_default(tuned: tuple[Path, object],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from qcompiler.tuning import records

    g = avg_pool_graph()
    monkeypatch.setattr(records, "SHIPPED_ROOT", tuned[0])
    assert build(g).lowered.funcs[0].rule == "tuned"
    assert build(g, tuning_records=False).lowered.funcs[0].rule == "generic_reduction"


SHIPPED = sorted(p for p in Path(__file__).resolve().parents[2].joinpath("schedules").glob("*")
                 if p.is_dir())


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_records_are_well_formed(folder: Path) -> None:
    """schedules/<preset>/: a known preset, readable meta and database, faster kernels only."""
    from qcompiler.target import PRESET_NAMES
    from qcompiler.tuning import _ms
    from qcompiler.tuning.records import read_meta

    assert folder.name in PRESET_NAMES
    meta = read_meta(folder)
    assert meta["target"]["resolved"] == folder.name
    assert meta["kernels"]
    for k in meta["kernels"].values():
        assert 0 < k["tuned_us"] < k["baseline_us"], k
        assert k["model"], k
    assert len(_ms.open_database(str(folder))) >= len(meta["kernels"])
