"""The artifact manifest: the signature (inputs/outputs), target and checksums of a compiled model.

An artifact is a directory holding `model.so` (the Relax VM executable, `export_library`) and
`manifest.json`:

    {
      "format": "qcompiler-artifact", "format_version": 1,
      "target": {"name": "host", "resolved": "x86-avx512-vnni", "arch": "x86_64",
                 "mcpu": "cascadelake", "mattr": [], "features": ["avx2", ...], ...},
      "versions": {"qcompiler": "...", "tvm": "...", "numpy": "..."},
      "inputs": [io, ...], "outputs": [io, ...],
      "files": {"model.so": {"sha256": "...", "size": 12345}},
      "graph_ir": "func @main(...) {...}",            # optional, text IR of the compiled graph
      "kernels": [{"name": "qnn_conv2d_...", "op": "qnn.conv2d", ...}]   # optional
    }

    io = {"name": "x", "shape": [1, 3, 224, 224], "dtype": "uint8", "qdtype": "quint8",
          "qparams": {"scheme": "affine", "scale": [0.0186], "zero_point": [114], "axis": null},
          "torch_input": "quantized"}

`dtype` is the numpy storage dtype the compiled function takes or returns (exactly what the C++
runner `qcompiler-run`, cpp/, reads from and writes to .npy files). `qdtype`/`qparams`
say how to rebuild a torch quantized tensor from the storage. `torch_input` records what the
source model took: `"float"` (it quantized inside, QuantStub; the compiled input is then float32),
`"quantized"`, or null (outputs, or unknown).

This module is plain data handling: no TVM, no torch.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qcompiler.errors import ArtifactError

FORMAT = "qcompiler-artifact"
FORMAT_VERSION = 1
LIBRARY_FILE = "model.so"
MANIFEST_FILE = "manifest.json"

STORAGE_DTYPES = ("uint8", "int8", "int32", "float32", "int64", "bool")
QDTYPES: dict[str, str] = {"quint8": "uint8", "qint8": "int8", "qint32": "int32"}
"""Torch quantized dtype name -> numpy storage dtype."""
SCHEMES = ("affine", "symmetric", "float_qparams")
TORCH_INPUT_KINDS = ("float", "quantized")


@dataclass(frozen=True)
class QParamsInfo:
    """Quantization parameters of one input or output: real = scale * (q - zero_point)."""

    scheme: str
    """`affine`, `symmetric` or `float_qparams` (PyTorch's qscheme, without per-tensor/-channel)."""
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None
    """None for per-tensor qparams; the channel axis for per-channel ones."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "scale": list(self.scale),
            "zero_point": list(self.zero_point),
            "axis": self.axis,
        }

    def __str__(self) -> str:
        if self.axis is None:
            return f"scale={self.scale[0]!r}, zero_point={self.zero_point[0]}"
        return f"per-channel axis={self.axis}, {len(self.scale)} scales"


@dataclass(frozen=True)
class IOInfo:
    """One input or output of a compiled model, as recorded in the manifest."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    """numpy storage dtype the compiled function takes/returns (`uint8`, `float32`, ...)."""
    qdtype: str | None = None
    """`quint8`, `qint8` or `qint32` when the value is quantized, else None."""
    qparams: QParamsInfo | None = None
    torch_input: str | None = None
    """For inputs: `"float"` (the model quantized inside), `"quantized"`, or None."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "qdtype": self.qdtype,
            "qparams": None if self.qparams is None else self.qparams.to_dict(),
            "torch_input": self.torch_input,
        }

    def describe(self) -> str:
        """`x: uint8[1, 16] quint8(scale=0.5, zero_point=3)`."""
        s = f"{self.name}: {self.dtype}{list(self.shape)}"
        if self.qdtype is not None:
            s += f" {self.qdtype}({self.qparams})"
        return s


def parse_io(entry: Any, where: str) -> IOInfo:
    """Validate one manifest io entry; `where` (e.g. `inputs[0]`) goes into error messages."""
    if not isinstance(entry, Mapping):
        raise ArtifactError(f"manifest {where}: expected an object, got {type(entry).__name__}")
    try:
        name = entry["name"]
        shape = entry["shape"]
        dtype = entry["dtype"]
    except KeyError as e:
        raise ArtifactError(f"manifest {where}: missing key {e.args[0]!r}") from None
    if not isinstance(name, str) or not name:
        raise ArtifactError(f"manifest {where}: 'name' must be a non-empty string, got {name!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ArtifactError(
            f"manifest {where} ({name}): 'shape' must be a list of non-negative ints, got {shape!r}"
        )
    if dtype not in STORAGE_DTYPES:
        raise ArtifactError(
            f"manifest {where} ({name}): dtype {dtype!r} is not one of {', '.join(STORAGE_DTYPES)}"
        )
    qdtype = entry.get("qdtype")
    if qdtype is not None:
        if qdtype not in QDTYPES:
            raise ArtifactError(
                f"manifest {where} ({name}): qdtype {qdtype!r} is not one of {', '.join(QDTYPES)}"
            )
        if QDTYPES[qdtype] != dtype:
            raise ArtifactError(
                f"manifest {where} ({name}): qdtype {qdtype} is stored as {QDTYPES[qdtype]}, "
                f"but dtype says {dtype}"
            )
    qparams = _parse_qparams(entry.get("qparams"), f"{where} ({name})", len(shape))
    if (qdtype is None) != (qparams is None):
        raise ArtifactError(
            f"manifest {where} ({name}): 'qdtype' and 'qparams' must be given together "
            f"(qdtype={qdtype!r}, qparams={'set' if qparams else None})"
        )
    torch_input = entry.get("torch_input")
    if torch_input is not None and torch_input not in TORCH_INPUT_KINDS:
        raise ArtifactError(
            f"manifest {where} ({name}): torch_input must be 'float', 'quantized' or null, "
            f"got {torch_input!r}"
        )
    return IOInfo(name, tuple(shape), dtype, qdtype, qparams, torch_input)


def _parse_qparams(q: Any, where: str, ndim: int) -> QParamsInfo | None:
    if q is None:
        return None
    if not isinstance(q, Mapping):
        raise ArtifactError(f"manifest {where}: 'qparams' must be an object or null")
    scheme = q.get("scheme", "affine")
    if scheme not in SCHEMES:
        raise ArtifactError(f"manifest {where}: qparams scheme {scheme!r} not in {SCHEMES}")
    try:
        scale = tuple(float(s) for s in q["scale"])
        zero_point = tuple(int(z) for z in q["zero_point"])
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"manifest {where}: bad qparams {dict(q)!r}: {e!r}") from None
    axis = q.get("axis")
    if axis is not None and (not isinstance(axis, int) or not 0 <= axis < max(ndim, 1)):
        raise ArtifactError(f"manifest {where}: qparams axis {axis!r} out of range for rank {ndim}")
    if len(scale) != len(zero_point) or not scale:
        raise ArtifactError(
            f"manifest {where}: qparams need as many scales as zero points "
            f"(got {len(scale)} and {len(zero_point)})"
        )
    if axis is None and len(scale) != 1:
        raise ArtifactError(f"manifest {where}: per-tensor qparams need exactly one scale")
    return QParamsInfo(scheme, scale, zero_point, axis)


def parse_signature(manifest: Mapping[str, Any]) -> tuple[tuple[IOInfo, ...], tuple[IOInfo, ...]]:
    """The validated (inputs, outputs) of a manifest."""
    ios: list[tuple[IOInfo, ...]] = []
    for key in ("inputs", "outputs"):
        entries = manifest.get(key)
        if not isinstance(entries, list):
            raise ArtifactError(f"manifest: {key!r} must be a list of io objects, got {entries!r}")
        infos = tuple(parse_io(e, f"{key}[{i}]") for i, e in enumerate(entries))
        names = [io.name for io in infos]
        if len(set(names)) != len(names):
            raise ArtifactError(f"manifest: duplicate names in {key}: {names}")
        ios.append(infos)
    if not ios[1]:
        raise ArtifactError("manifest: a compiled model needs at least one output")
    return ios[0], ios[1]


def check_header(manifest: Any) -> None:
    """Check `format` and `format_version`; raises `ArtifactError` with what was found."""
    if not isinstance(manifest, Mapping):
        raise ArtifactError(f"manifest must be a JSON object, got {type(manifest).__name__}")
    fmt = manifest.get("format")
    if fmt != FORMAT:
        raise ArtifactError(f"not a qcompiler artifact: manifest format is {fmt!r}, not {FORMAT!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ArtifactError(
            f"artifact format_version {version!r} is not supported (this runtime reads version "
            f"{FORMAT_VERSION})" + ("; it was written by a newer qcompiler" if newer else "")
        )


def normalize(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy with `format`/`format_version` filled in, for a hand-built manifest."""
    out = copy.deepcopy(dict(manifest))
    out.setdefault("format", FORMAT)
    out.setdefault("format_version", FORMAT_VERSION)
    return out
