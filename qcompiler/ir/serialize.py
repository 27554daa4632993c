"""Save and load graphs as JSON (the text IR plus metadata) and `.npz` constants. No pickle.

`save(graph, "model.qir.json")` writes `model.qir.json` and `model.qir.npz`; `load` verifies
the format, each constant's sha256 and the graph itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from qcompiler.errors import QCompilerError, SerializationError
from qcompiler.ir.graph import Graph
from qcompiler.ir.parser import parse
from qcompiler.ir.printer import print_graph
from qcompiler.ir.verify import verify

FORMAT = "qcompiler-ir"
VERSION = 1


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _npz_path(path: Path) -> Path:
    name = path.name.removesuffix(".json")
    return path.with_name(name + ".npz")


def to_json(graph: Graph) -> dict[str, object]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "ir": print_graph(graph),
        "constants": {k: {"sha256": _sha(v), "dtype": str(v.dtype), "shape": list(v.shape)}
                      for k, v in sorted(graph.constants.items())},
    }


def save(graph: Graph, path: str | os.PathLike[str]) -> Path:
    """Write `path` (JSON) and its sibling `.npz`; return the JSON path."""
    p = Path(path)
    p.write_text(json.dumps(to_json(graph), indent=1))
    # NOTE: allow_pickle is irrelevant on write; numeric arrays never pickle.
    np.savez(_npz_path(p), **graph.constants)
    return p


def load(path: str | os.PathLike[str]) -> Graph:
    p = Path(path)
    try:
        meta = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SerializationError(f"cannot read IR file {p}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SerializationError(f"{p} is not a qcompiler IR file")
    if meta.get("version") != VERSION:
        raise SerializationError(f"{p} has IR version {meta.get('version')}, expected {VERSION}")
    constants: dict[str, np.ndarray] = {}
    if meta.get("constants"):
        try:
            with np.load(_npz_path(p), allow_pickle=False) as z:
                constants = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise SerializationError(f"cannot read constants {_npz_path(p)}: {e}") from None
    for k, info in meta.get("constants", {}).items():
        if k not in constants:
            raise SerializationError(f"constant {k!r} is missing from {_npz_path(p)}")
        if _sha(constants[k]) != info["sha256"]:
            raise SerializationError(f"constant {k!r} in {_npz_path(p)} fails its checksum")
    try:
        g = parse(meta["ir"], constants)
        verify(g)
    except QCompilerError as e:
        raise SerializationError(f"{p}: {e}") from None
    return g
