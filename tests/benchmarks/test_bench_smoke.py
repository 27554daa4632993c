"""Smoke test of the benchmark harness (benchmarks/run.py): agreement logic, case data, and one
--quick run of a tiny case on the torch and ORT engines. No timing assertions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import cases as C
from benchmarks import run as R

U8 = np.uint8


def test_compare_outputs_integer_and_float():
    ref = np.array([[0, 10, 255]], U8)
    assert R.compare_outputs(ref, ref.copy()) == {"max_diff": 0, "mismatch": 0.0, "units": "LSB"}
    c = R.compare_outputs(ref, np.array([[1, 10, 253]], U8))
    assert c["max_diff"] == 2 and c["units"] == "LSB" and c["mismatch"] == pytest.approx(2 / 3)
    assert R.compare_outputs(ref, np.zeros((3, 1), U8))["max_diff"] is None  # shape mismatch
    f = R.compare_outputs(np.array([1.0, -2.0], np.float32), np.array([1.0, -2.5], np.float32))
    assert f["units"] == "abs" and f["max_diff"] == 0.5 and f["rel"] == 0.25


def test_verdicts():
    exact = {"max_diff": 0, "mismatch": 0.0, "units": "LSB"}
    one = {"max_diff": 1, "mismatch": 0.01, "units": "LSB"}
    two = {"max_diff": 2, "mismatch": 0.01, "units": "LSB"}
    assert R.verdict("ours", "x", exact) is True
    assert R.verdict("ours", "x", one) is False          # qcompiler must be bit-exact
    assert R.verdict("peer", "x", one) is True           # peers: within 1 LSB
    assert R.verdict("peer", "x", two) is False
    assert R.verdict("peer", "x_full", two) is None      # depthwise trap probe: informational
    assert R.verdict("peer", "x", two, zoo=True) is None  # zoo peers: informational
    assert R.verdict("ours", "x", one, baseline="torch-x86") is None
    assert R.verdict("peer", "x", {"max_diff": None}) is False


def test_check_agreement_summary_names_the_trap():
    ref = {"x": np.full((2, 3), 7, U8), "x_full": np.full((2, 3), 200, U8)}
    saturated = ref["x_full"].copy()
    saturated[0, 0] = 120
    outs = {"torch-fbgemm": {"x": ref["x"].copy(), "x_full": saturated},
            "qcompiler": {"x": ref["x"] + 1, "x_full": ref["x_full"]},
            "ort-qdq": {"x": ref["x"]}}
    a = R.check_agreement(ref, outs, kernels={"torch-fbgemm": "fbgemm depthwise (int16-sat)"})
    assert a["torch-fbgemm"]["ok"] is True
    assert "int16 saturation" in a["torch-fbgemm"]["summary"]
    assert a["qcompiler"]["ok"] is False
    assert a["ort-qdq"]["ok"] is False                     # missing check output


def test_layer_cases_are_deterministic_and_typed():
    case = C.get_case("r18_c3x3_64_56")
    assert case.macs == 64 * 56 * 56 * 64 * 9
    a, b = C.make_layer_data(case), C.make_layer_data(case)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.w, b.w) and a.out_zp == b.out_zp
    assert a.x.dtype == np.uint8 and a.w.dtype == np.int8 and a.bias.dtype == np.float32
    assert all(float(np.float32(s)) == s for s in a.w_scales)
    dw = C.make_layer_data(C.get_case("mv2_dw3x3_144_56_s1"))
    assert dw.x.max() <= 127 and dw.check_inputs["x_full"].max() > 127
    g = C.build_graph(C.make_layer_data(C.get_case("fc_1x512_1000")))
    assert [n.op for n in g.nodes if n.op != "const"] == ["qnn.linear"]
    assert [c.name for c in C.select_cases("fc_*,zoo_lstm")][-1] == "zoo_lstm"


@pytest.mark.torch
def test_quick_run_torch_and_ort(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    report = R.main(["--quick", "--threads", "1", "--cases", "fc_1x512_1000",
                     "--engines", "torch-x86,ort-qlinear", "--rounds", "1", "--min-time", "0.005",
                     "--out", str(tmp_path), "--no-plot", "--no-probe"])
    (row,) = report["results"]
    assert row["reference"]["status"] == "ready"
    for e in ("torch-x86", "ort-qlinear"):
        assert row["engines"][e]["status"] == "ready", row["engines"][e]["reason"]
        assert row["engines"][e]["stats"]["calls"] >= 2
        assert row["agreement"][e]["ok"] is True, row["agreement"][e]
    assert row["agreement"]["torch-x86"]["summary"] == "exact"
    assert report["agreement_failures"] == 0
    md = (tmp_path / "latest.md").read_text()
    assert "fc_1x512_1000" in md and "| case |" in md
    assert json.loads((tmp_path / "latest.json").read_text())["cases"] == ["fc_1x512_1000"]
