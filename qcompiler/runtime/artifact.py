"""Write and load artifact directories (`model.so` + `manifest.json`, no pickle).

`load` checks, in this order and before the library is loaded into the process: the manifest's
format and version, the signature, the sha256 of every listed file, the target architecture,
and the CPU features the code may use. Any failure is an `ArtifactError` saying what was
expected and what was found; nothing reaches an illegal-instruction crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from qcompiler.errors import ArtifactError, QCompilerError
from qcompiler.runtime import manifest as mf
from qcompiler.runtime.module import CompiledModule, _parse_target
from qcompiler.target import TargetPreset, get_target, host_arch

_CROSS_CC: dict[tuple[str, str], str] = {("x86_64", "aarch64"): "aarch64-linux-gnu-g++"}
"""Default linker for `model.so` by (host arch, target arch)."""

_HASH_CHUNK = 1 << 20


@contextlib.contextmanager
def quiet_tvm_scope_warnings() -> Iterator[None]:
    """Drop TVM's "executable.cc: Warning: Scope Saving/Loaded" lines (one per kernel) from
    stderr while saving or loading an executable; anything else it prints is passed on."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # no real stderr (e.g. captured): leave it
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if "Warning: Scope Saving" not in line and "Warning: Scope Loaded" not in line:
                    sys.stderr.write(line)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_artifact(
    path: Path,
    *,
    executable: tvm.runtime.Executable | tvm.runtime.Module,
    library_path: Path | None,
    manifest: Mapping[str, Any],
    target: TargetPreset | None,
    cc: str | None = None,
) -> Path:
    """Write `path/model.so` and `path/manifest.json` (last, so a half-written dir never loads)."""
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"cannot export to {path}: it exists and is not a directory")
    if isinstance(executable, tvm.runtime.Executable):
        if cc is None and target is not None:
            cc = _CROSS_CC.get((host_arch(), target.arch))
        _check_linker(cc, target)
    path.mkdir(parents=True, exist_ok=True)
    lib = path / mf.LIBRARY_FILE
    # export_library picks the output kind from the suffix, so the temporary name ends in .so
    tmp_lib = path / f".{mf.LIBRARY_FILE}.partial.so"
    try:
        if isinstance(executable, tvm.runtime.Executable):
            kwargs: dict[str, Any] = {} if cc is None else {"cc": cc}
            with quiet_tvm_scope_warnings():
                executable.export_library(str(tmp_lib), **kwargs)
        elif library_path is not None and library_path.is_file():
            shutil.copyfile(library_path, tmp_lib)
        else:
            raise ArtifactError(
                "cannot export: this module wraps a runtime module with no library file behind "
                "it; build it with tvm.compile or load it from an artifact"
            )
        os.replace(tmp_lib, lib)
    finally:
        tmp_lib.unlink(missing_ok=True)

    out = mf.normalize(manifest)
    versions = dict(out.get("versions") or {})
    versions.setdefault("qcompiler", _qcompiler_version())
    versions["tvm"] = str(tvm.__version__)
    versions["numpy"] = str(np.__version__)
    out["versions"] = versions
    out["files"] = {mf.LIBRARY_FILE: {"sha256": sha256_file(lib), "size": lib.stat().st_size}}
    tmp_manifest = path / f".{mf.MANIFEST_FILE}.partial"
    tmp_manifest.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_manifest, path / mf.MANIFEST_FILE)
    return path


def _check_linker(cc: str | None, target: TargetPreset | None) -> None:
    """A clear error instead of TVM's bare FileNotFoundError when the linker is not installed."""
    if cc is None or shutil.which(cc) is not None:
        return
    what = f"the {target.arch} library" if target is not None else "the library"
    hint = (
        " (apt-get install g++-aarch64-linux-gnu)" if cc == _CROSS_CC[("x86_64", "aarch64")] else ""
    )
    raise ArtifactError(
        f"cannot export: linking {what} needs the C++ compiler {cc!r}, which is not on PATH"
        f"{hint}; install it or pass export(path, cc=...)"
    )


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The checked manifest of the artifact directory `path` (the library is not touched)."""
    root = _artifact_dir(Path(path))
    mpath = root / mf.MANIFEST_FILE
    if not mpath.is_file():
        raise ArtifactError(f"{root} is not a qcompiler artifact: {mf.MANIFEST_FILE} is missing")
    try:
        manifest: Any = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"cannot read {mpath}: {e}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath} must hold a JSON object, got {type(manifest).__name__}")
    mf.check_header(manifest)
    mf.parse_signature(manifest)
    return manifest


def load(path: str | Path, *, memory_cfg: str | None = None) -> CompiledModule:
    """Load an artifact directory written by `CompiledModule.export`.

    Verifies format, signature, checksums, architecture and CPU features before the library is
    loaded; raises `ArtifactError` on any mismatch.
    """
    root = _artifact_dir(Path(path))
    manifest = read_manifest(root)
    lib = _verify_files(root, manifest)
    target = _parse_target(manifest)
    if target is None:
        raise ArtifactError(
            f"artifact {root}: the manifest records no target, so this runtime cannot check the "
            "CPU features its code needs; refusing to load it"
        )
    _check_host(root, target)
    _warn_on_version_skew(root, manifest)
    try:
        with quiet_tvm_scope_warnings():
            module = tvm.runtime.load_module(str(lib))
    except Exception as e:  # TVM raises its own error types; report them as artifact errors
        raise ArtifactError(f"artifact {root}: TVM could not load {lib.name}: {e}") from e
    return CompiledModule(module, manifest, library_path=lib, memory_cfg=memory_cfg)


def _artifact_dir(path: Path) -> Path:
    if path.is_file() and path.name in (mf.MANIFEST_FILE, mf.LIBRARY_FILE):
        return path.parent
    if not path.is_dir():
        raise ArtifactError(f"artifact directory {path} does not exist")
    return path


def _verify_files(root: Path, manifest: Mapping[str, Any]) -> Path:
    files = manifest.get("files")
    if not isinstance(files, Mapping) or mf.LIBRARY_FILE not in files:
        raise ArtifactError(
            f"artifact {root}: manifest 'files' must list {mf.LIBRARY_FILE} with its sha256"
        )
    for name, meta in files.items():
        fpath = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(
                f"artifact {root}: file name {name!r} leaves the artifact directory"
            )
        if not isinstance(meta, Mapping) or not isinstance(meta.get("sha256"), str):
            raise ArtifactError(f"artifact {root}: manifest entry for {name} has no sha256")
        if not fpath.is_file():
            raise ArtifactError(f"artifact {root}: {name} is listed in the manifest but missing")
        digest = sha256_file(fpath)
        if digest != meta["sha256"]:
            raise ArtifactError(
                f"artifact {root}: checksum mismatch for {name} (manifest sha256 "
                f"{meta['sha256'][:16]}…, file sha256 {digest[:16]}…); the file was modified or "
                "corrupted after export, refusing to load it"
            )
    return root / mf.LIBRARY_FILE


def _check_host(root: Path, target: TargetPreset) -> None:
    here = host_arch()
    if target.arch != here:
        raise ArtifactError(
            f"artifact {root} was compiled for {target.arch} (target {target.display_name}), "
            f"but this machine is {here}; recompile it for this machine (target 'host')"
        )
    missing = target.missing_on_host()
    if missing:
        try:
            suggestion = f" (this CPU matches preset {get_target('host').name!r})"
        except QCompilerError:
            suggestion = ""
        raise ArtifactError(
            f"artifact {root} was compiled for {target.display_name} and may use CPU features "
            f"this machine lacks: {', '.join(sorted(missing))}. Refusing to load it, since "
            f"running it could crash with an illegal instruction; recompile it for target "
            f"'host'{suggestion}"
        )


def _warn_on_version_skew(root: Path, manifest: Mapping[str, Any]) -> None:
    versions = manifest.get("versions")
    built = versions.get("tvm") if isinstance(versions, Mapping) else None
    if built is not None and str(built) != str(tvm.__version__):
        warnings.warn(
            f"artifact {root} was built with TVM {built}, this runtime is TVM {tvm.__version__}",
            RuntimeWarning,
            stacklevel=3,
        )


def _qcompiler_version() -> str:
    pkg = sys.modules.get("qcompiler")
    version = getattr(pkg, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version
    except ImportError:
        return "unknown"
    try:
        return dist_version("qcompiler")
    except PackageNotFoundError:
        return "unknown"
