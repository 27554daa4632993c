"""Tests for qcompiler.runtime: calling, torch interop, export/load, checks, profile, threads.

The models are built by hand in Relax (no compiler code), as in tvm-recipes/07_relax_vm.py:

`requant` model: x (quint8, scale 0.5, zp 3) -> qadd(x, x) -> requant to (scale 0.25, zp 10)
    acc = (x - 3) + (x - 3)                              int32, kernel "qadd_2x8_u8"
    y   = clamp(rint(acc * 0.5 / 0.25) + 10, 0, 255)     uint8, kernel "requant_2x8_u8"

`float_input` model (a QuantStub model with two outputs): x (float32) -> q = quantize(x, 0.5, 3)
    -> (q quint8, acc = 2 * (q - 3) int32).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from qcompiler.errors import ArtifactError, InputError, QCompilerError, TargetError
from qcompiler.runtime import CompiledModule, load, read_manifest
from qcompiler.target import get_target, host_arch

pytestmark = pytest.mark.tvm

REPO = Path(__file__).resolve().parents[2]
SHAPE = (2, 8)
IN_SCALE, IN_ZP = 0.5, 3
OUT_SCALE, OUT_ZP = 0.25, 10


# --- hand-built models ----------------------------------------------------------------------------


def reference_requant(x: np.ndarray) -> np.ndarray:
    acc = 2 * (x.astype(np.int32) - IN_ZP)
    return np.clip(np.rint(acc * (IN_SCALE / OUT_SCALE)) + OUT_ZP, 0, 255).astype(np.uint8)


def reference_float_input(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.clip(np.rint(x / np.float32(IN_SCALE)) + IN_ZP, 0, 255).astype(np.uint8)
    return q, 2 * (q.astype(np.int32) - IN_ZP)


def _io(
    name: str,
    dtype: str,
    qdtype: str | None = None,
    scale: float | None = None,
    zp: int | None = None,
    torch_input: str | None = None,
) -> dict[str, Any]:
    qparams = None
    if qdtype is not None:
        qparams = {"scheme": "affine", "scale": [scale], "zero_point": [zp], "axis": None}
    return {
        "name": name,
        "shape": list(SHAPE),
        "dtype": dtype,
        "qdtype": qdtype,
        "qparams": qparams,
        "torch_input": torch_input,
    }


def _manifest(
    inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], kernels: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "format": "qcompiler-artifact",
        "format_version": 1,
        "target": get_target("host").to_dict(),
        "versions": {"qcompiler": "test"},
        "inputs": inputs,
        "outputs": outputs,
        "graph_ir": "func @main(%x: u8[2,8] q(0.5, 3)) -> u8[2,8] q(0.25, 10) { ... }",
        "kernels": kernels,
    }


def build_requant_model() -> tuple[Any, dict[str, Any]]:
    import tvm
    from tvm import relax, te

    def qadd(x: te.Tensor) -> te.Tensor:
        return te.compute(
            SHAPE,
            lambda i, j: (x[i, j].astype("int32") - IN_ZP) + (x[i, j].astype("int32") - IN_ZP),
            name="qadd",
        )

    def requant(acc: te.Tensor) -> te.Tensor:
        m = IN_SCALE / OUT_SCALE
        return te.compute(
            SHAPE,
            lambda i, j: te.max(
                te.min(te.nearbyint(acc[i, j].astype("float32") * m) + float(OUT_ZP), 255.0), 0.0
            ).astype("uint8"),
            name="requant",
        )

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            acc = bb.emit_te(qadd, x, primfunc_name_hint="qadd_2x8_u8")
            y = bb.emit_te(requant, acc, primfunc_name_hint="requant_2x8_u8")
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target=get_target("host").tvm_target())
    manifest = _manifest(
        [_io("x", "uint8", "quint8", IN_SCALE, IN_ZP, "quantized")],
        [_io("y", "uint8", "quint8", OUT_SCALE, OUT_ZP)],
        [
            {"name": "qadd_2x8_u8", "op": "qnn.add"},
            {"name": "requant_2x8_u8", "op": "qnn.requantize"},
        ],
    )
    return ex, manifest


def build_float_input_model() -> tuple[Any, dict[str, Any]]:
    import tvm
    from tvm import relax, te

    def quantize(x: te.Tensor) -> te.Tensor:
        return te.compute(
            SHAPE,
            lambda i, j: te.max(
                te.min(te.nearbyint(x[i, j] / IN_SCALE) + float(IN_ZP), 255.0), 0.0
            ).astype("uint8"),
            name="quantize",
        )

    def acc(q: te.Tensor) -> te.Tensor:
        return te.compute(SHAPE, lambda i, j: (q[i, j].astype("int32") - IN_ZP) * 2, name="acc")

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            q = bb.emit_te(quantize, x, primfunc_name_hint="quantize_2x8_u8")
            a = bb.emit_te(acc, q, primfunc_name_hint="acc_2x8_i32")
            out = bb.emit_output(relax.Tuple([q, a]))
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target=get_target("host").tvm_target())
    manifest = _manifest(
        [_io("x", "float32", torch_input="float")],
        [_io("q", "uint8", "quint8", IN_SCALE, IN_ZP), _io("acc", "int32")],
        [{"name": "quantize_2x8_u8", "op": "quantize"}, {"name": "acc_2x8_i32", "op": "qnn.add"}],
    )
    return ex, manifest


@pytest.fixture(scope="module")
def requant() -> tuple[Any, dict[str, Any]]:
    return build_requant_model()


@pytest.fixture(scope="module")
def cm(requant: tuple[Any, dict[str, Any]]) -> CompiledModule:
    return CompiledModule(*requant)


@pytest.fixture(scope="module")
def float_cm() -> CompiledModule:
    return CompiledModule(*build_float_input_model())


@pytest.fixture
def x_u8() -> np.ndarray:
    # full range, including values that saturate the output at 0 and 255
    return (np.arange(16, dtype=np.int64).reshape(SHAPE) * 17).astype(np.uint8)


@pytest.fixture
def artifact(cm: CompiledModule, tmp_path: Path) -> Path:
    return cm.export(tmp_path / "model.qc")


def _edit_manifest(path: Path, edit: Any) -> None:
    mpath = path / "manifest.json"
    manifest = json.loads(mpath.read_text())
    edit(manifest)
    mpath.write_text(json.dumps(manifest))


def _torch() -> Any:
    torch = pytest.importorskip("torch")
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
    return torch


# --- calling with numpy ---------------------------------------------------------------------------


def test_call_numpy(cm: CompiledModule, x_u8: np.ndarray) -> None:
    y = cm(x_u8)
    assert isinstance(y, np.ndarray)  # one output: not a tuple
    np.testing.assert_array_equal(y, reference_requant(x_u8))
    assert reference_requant(x_u8).min() == 0 and reference_requant(x_u8).max() == 255


def test_call_numpy_non_contiguous(cm: CompiledModule, x_u8: np.ndarray) -> None:
    wide = np.zeros((2, 16), np.uint8)
    wide[:, ::2] = x_u8
    np.testing.assert_array_equal(cm(wide[:, ::2]), reference_requant(x_u8))


def test_signature_info(cm: CompiledModule) -> None:
    (x,) = cm.input_info
    (y,) = cm.output_info
    assert (x.name, x.shape, x.dtype, x.qdtype, x.torch_input) == (
        "x",
        SHAPE,
        "uint8",
        "quint8",
        "quantized",
    )
    assert x.qparams is not None and x.qparams.scale == (IN_SCALE,)
    assert x.qparams.zero_point == (IN_ZP,) and x.qparams.axis is None
    assert (y.name, y.qdtype) == ("y", "quint8")
    with pytest.raises(AttributeError):
        x.name = "z"  # type: ignore[misc]
    assert "x: uint8[2, 8] quint8" in repr(cm)
    assert cm.graph_ir is not None and cm.kernels[0]["op"] == "qnn.add"
    t = cm.target
    assert t is not None and t.resolved_from == "host"


def test_tuple_outputs_numpy(float_cm: CompiledModule) -> None:
    x = np.linspace(-3, 130, 16, dtype=np.float32).reshape(SHAPE)
    q, acc = float_cm(x)
    ref_q, ref_acc = reference_float_input(x)
    np.testing.assert_array_equal(q, ref_q)
    np.testing.assert_array_equal(acc, ref_acc)
    assert acc.dtype == np.int32


# --- input errors ---------------------------------------------------------------------------------


def test_wrong_shape_names_input(cm: CompiledModule) -> None:
    with pytest.raises(InputError, match=r"input 'x'.*shape \[2, 8\].*got \[2, 9\]"):
        cm(np.zeros((2, 9), np.uint8))


def test_wrong_dtype_names_input(cm: CompiledModule) -> None:
    with pytest.raises(InputError, match=r"input 'x'.*dtype uint8, got int8") as err:
        cm(np.zeros(SHAPE, np.int8))
    assert "scale=0.5" in str(err.value)  # says which quantization the storage is in


def test_wrong_input_count_and_type(cm: CompiledModule) -> None:
    with pytest.raises(InputError, match=r"takes 1 input\(s\) \(x: uint8\[2, 8\].*called with 2"):
        cm(np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8))
    with pytest.raises(InputError, match=r"input 'x'.*numpy array or torch tensor.*got list"):
        cm([[0] * 8] * 2)


# --- torch interop --------------------------------------------------------------------------------


@pytest.mark.torch
def test_call_torch_quantized(cm: CompiledModule, x_u8: np.ndarray) -> None:
    torch = _torch()
    xq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x_u8), IN_SCALE, IN_ZP)
    y = cm(xq)
    assert isinstance(y, torch.Tensor) and y.is_quantized and y.dtype == torch.quint8
    assert y.q_scale() == OUT_SCALE and y.q_zero_point() == OUT_ZP
    np.testing.assert_array_equal(y.int_repr().numpy(), reference_requant(x_u8))


@pytest.mark.torch
def test_torch_wrong_qparams(cm: CompiledModule, x_u8: np.ndarray) -> None:
    torch = _torch()
    xq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x_u8), 0.1, IN_ZP)
    with pytest.raises(InputError, match=r"input 'x'.*scale=0.1.*compiled for scale=0.5"):
        cm(xq)
    xq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x_u8.view(np.int8)), 0.5, 3)
    with pytest.raises(InputError, match=r"input 'x'.*torch.quint8, got torch.qint8"):
        cm(xq)


@pytest.mark.torch
def test_torch_float_into_quantized_input(cm: CompiledModule) -> None:
    torch = _torch()
    with pytest.raises(InputError, match=r"input 'x'.*quantized torch.quint8.*quantize_per_tensor"):
        cm(torch.zeros(SHAPE))


@pytest.mark.torch
def test_torch_float_input_model(float_cm: CompiledModule) -> None:
    torch = _torch()
    x = np.linspace(-3, 130, 16, dtype=np.float32).reshape(SHAPE)
    q, acc = float_cm(torch.from_numpy(x))
    ref_q, ref_acc = reference_float_input(x)
    assert q.dtype == torch.quint8 and q.q_scale() == IN_SCALE and q.q_zero_point() == IN_ZP
    np.testing.assert_array_equal(q.int_repr().numpy(), ref_q)
    assert acc.dtype == torch.int32 and not acc.is_quantized
    np.testing.assert_array_equal(acc.numpy(), ref_acc)
    with pytest.raises(InputError, match=r"input 'x'.*torch.float32, got torch.float64"):
        float_cm(torch.from_numpy(x.astype(np.float64)))


# --- export / load --------------------------------------------------------------------------------


def test_export_load_same_outputs(cm: CompiledModule, artifact: Path, x_u8: np.ndarray) -> None:
    assert sorted(p.name for p in artifact.iterdir()) == ["manifest.json", "model.so"]
    manifest = read_manifest(artifact)
    assert manifest["format"] == "qcompiler-artifact" and manifest["format_version"] == 1
    assert len(manifest["files"]["model.so"]["sha256"]) == 64
    assert set(manifest["versions"]) >= {"qcompiler", "tvm", "numpy"}
    assert manifest["target"]["name"] == "host"
    assert manifest["target"]["resolved"] == get_target("host").name
    loaded = load(artifact)
    np.testing.assert_array_equal(loaded(x_u8), cm(x_u8))
    assert loaded.input_info == cm.input_info and loaded.output_info == cm.output_info
    # a loaded module exports again (by copying its library)
    again = load(loaded.export(artifact.parent / "again"))
    np.testing.assert_array_equal(again(x_u8), cm(x_u8))


def test_load_in_fresh_process(
    cm: CompiledModule, artifact: Path, x_u8: np.ndarray, tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", x_u8)
    child = (
        "import sys, numpy as np\n"
        "from qcompiler.runtime import load\n"
        "cm = load(sys.argv[1])\n"
        "np.save(sys.argv[3], cm(np.load(sys.argv[2])))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            child,
            str(artifact),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), cm(x_u8))


def test_tampered_library(artifact: Path) -> None:
    lib = artifact / "model.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"checksum mismatch for model.so"):
        load(artifact)


def test_missing_feature_refused(artifact: Path) -> None:
    _edit_manifest(artifact, lambda m: m["target"]["features"].append("sve2"))
    with pytest.raises(ArtifactError, match=r"CPU features this machine lacks: sve2") as err:
        load(artifact)
    assert "illegal instruction" in str(err.value) and "'host'" in str(err.value)


def test_feature_check_before_library_load(artifact: Path) -> None:
    # A library that would not even load, with a valid checksum: the feature check must fire
    # first, proving nothing is loaded into the process before the host is checked.
    import hashlib

    lib = artifact / "model.so"
    lib.write_bytes(b"not an ELF file")
    digest = hashlib.sha256(lib.read_bytes()).hexdigest()

    def edit(m: dict[str, Any]) -> None:
        m["files"]["model.so"]["sha256"] = digest
        m["target"]["features"].append("amx-int8" if host_arch() == "x86_64" else "sme")

    _edit_manifest(artifact, edit)
    with pytest.raises(ArtifactError, match=r"lacks: (amx-int8|sme)"):
        load(artifact)


def test_other_arch_refused(artifact: Path) -> None:
    other = "aarch64" if host_arch() == "x86_64" else "x86_64"
    _edit_manifest(artifact, lambda m: m["target"].update(arch=other))
    with pytest.raises(
        ArtifactError, match=rf"compiled for {other}.*this machine is {host_arch()}"
    ):
        load(artifact)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format="onnx"), r"not a qcompiler artifact"),
        (lambda m: m.update(format_version=99), r"format_version 99.*newer qcompiler"),
        (lambda m: m["inputs"][0].update(dtype="float16"), r"inputs\[0\] \(x\): dtype 'float16'"),
        (lambda m: m.pop("target"), r"records no target"),
        (lambda m: m["target"]["features"].append("warp-drive"), r"unknown feature.*warp-drive"),
        (lambda m: m.pop("files"), r"must list model.so"),
    ],
)
def test_bad_manifest(artifact: Path, edit: Any, message: str) -> None:
    _edit_manifest(artifact, edit)
    with pytest.raises(ArtifactError, match=message):
        load(artifact)


def test_load_missing_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"does not exist"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"manifest.json is missing"):
        load(tmp_path / "empty")


def test_cross_target_module_refuses_to_run(
    requant: tuple[Any, dict[str, Any]], x_u8: np.ndarray
) -> None:
    ex, manifest = requant
    cross = {**manifest, "target": get_target("aarch64-dotprod").to_dict()}
    if host_arch() == "aarch64":
        cross["target"] = get_target("x86-avx2").to_dict()
    module = CompiledModule(ex, cross)  # constructing is fine: it could still be exported
    with pytest.raises(TargetError, match=r"compiled for .*export\(\) it and run it there"):
        module(x_u8)


# --- profile, benchmark, threads ------------------------------------------------------------------


def test_profile_rows(cm: CompiledModule, x_u8: np.ndarray) -> None:
    report = cm.profile(x_u8, repeat=3)
    kernels = {r["name"]: r for r in report.kernels()}
    assert set(kernels) == {"qadd_2x8_u8", "requant_2x8_u8"}
    assert kernels["qadd_2x8_u8"]["op"] == "qnn.add"
    for row in report:
        assert set(row) >= {"name", "calls", "total_us", "percent"}
        assert row["total_us"] >= 0
    assert kernels["requant_2x8_u8"]["calls"] == 1
    assert sum(r["percent"] for r in report) == pytest.approx(100.0)
    assert "requant_2x8_u8" in str(report) and "qnn.requantize" in report.table()
    np.testing.assert_array_equal(cm(x_u8), reference_requant(x_u8))  # calls still work


def test_benchmark(cm: CompiledModule, x_u8: np.ndarray) -> None:
    res = cm.benchmark(x_u8, number=20, repeat=3)
    assert 0 < res.min_ms <= res.median_ms
    assert len(res.results_ms) == 3 and res.num_threads >= 1
    assert "median" in str(res)


def test_num_threads(cm: CompiledModule) -> None:
    pool = cm.num_threads
    try:
        cm.num_threads = 1
        assert cm.num_threads == 1
        cm.num_threads = 0  # back to the whole pool
        assert cm.num_threads >= pool
        full = cm.num_threads
        with pytest.warns(RuntimeWarning, match=r"cannot grow"):
            cm.num_threads = full + 7
        assert cm.num_threads == full
        with pytest.raises(QCompilerError, match=r"num_threads must be"):
            cm.num_threads = -1
    finally:
        cm.num_threads = 0


# --- layering -------------------------------------------------------------------------------------

_ALLOWED_TOP = {
    "__future__",
    "contextlib",
    "tempfile",
    "copy",
    "collections",
    "dataclasses",
    "hashlib",
    "importlib",
    "json",
    "math",
    "numpy",
    "os",
    "pathlib",
    "shutil",
    "sys",
    "time",
    "tvm",
    "typing",
    "warnings",
}
_ALLOWED_QC = {"qcompiler.errors", "qcompiler.target"}


def test_runtime_imports_no_compiler_code() -> None:
    """runtime/ imports numpy, tvm and stdlib only; torch only inside functions."""
    for path in sorted((REPO / "qcompiler" / "runtime").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        function_nodes = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                where = f"{path.name}:{node.lineno} imports {name}"
                if name.startswith("qcompiler"):
                    assert name in _ALLOWED_QC or name.startswith("qcompiler.runtime"), where
                elif name.split(".")[0] == "torch":
                    assert id(node) in function_nodes, where + " at module level"
                else:
                    assert name.split(".")[0] in _ALLOWED_TOP, where
