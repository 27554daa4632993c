"""Tuning records on disk, and looking a kernel up in them at compile time.

A *records root* holds one folder per target preset; the shipped one is `schedules/` at the
top of the repository (data, not code):

    <root>/<preset>/database_workload.json        meta_schedule JSONDatabase: workloads
    <root>/<preset>/database_tuning_record.json   ... and their best verified schedule traces
    <root>/<preset>/qcompiler-records.json        what was tuned: preset, versions, and per
                                                  kernel its structural hash, op, baseline
                                                  and tuned time

A record is keyed by the *unscheduled* kernel (the PrimFunc `te.create_prim_func` built from
one kernel group, renamed to `main`): meta_schedule's workload is its structural hash, so it
applies exactly to a kernel with the same computation, shapes and baked-in constants (the
requantize multipliers of that model), for the preset of its folder. `qc.compile(...,
tuning_records=path)` takes a root or one preset folder; records in `path` win over the
shipped ones.

Reading costs nothing unless a kernel's hash is listed in `qcompiler-records.json`: only then
is meta_schedule imported and the trace replayed (`_ms.query`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcompiler.errors import QCompilerError
from qcompiler.target import TargetPreset

log = logging.getLogger(__name__)

META_FILE = "qcompiler-records.json"
DB_FILES = ("database_workload.json", "database_tuning_record.json")
FORMAT = "qcompiler-tuning-records"
SHIPPED_ROOT = Path(__file__).resolve().parents[2] / "schedules"
"""`schedules/` at the top of the repository: pre-tuned records, one folder per preset."""
TUNED_RULE = "tuned"
"""The schedule name a kernel gets (manifest `kernels[].schedule`) when a record applied."""


class TuningError(QCompilerError):
    """Tuning records that cannot be read or do not fit, or a tuning run that cannot start."""


def preset_dir(root: str | os.PathLike[str], preset: TargetPreset) -> Path:
    """The folder of `preset`'s records under a records root."""
    return Path(root) / preset.name


def is_records_dir(path: Path) -> bool:
    return (path / META_FILE).is_file() or (path / DB_FILES[0]).is_file()


def read_meta(directory: Path) -> dict[str, Any]:
    """`qcompiler-records.json` of a preset folder (an empty description when missing)."""
    p = directory / META_FILE
    if not p.is_file():
        return {"format": FORMAT, "target": None, "kernels": {}}
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise TuningError(f"cannot read tuning records {p}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(
        meta.get("kernels"), dict
    ):
        raise TuningError(
            f"{p} is not a qcompiler tuning-records file (expected format {FORMAT!r} with a "
            "'kernels' table)"
        )
    return meta


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    tmp.replace(directory / META_FILE)


def resolve(path: str | os.PathLike[str], preset: TargetPreset) -> Path | None:
    """The preset folder `path` designates for `preset`, or None when `path` is a records root
    without a folder for it. Raises `TuningError` for a path that holds no records, or a
    preset folder tuned for another preset."""
    p = Path(path)
    if not p.exists():
        raise TuningError(f"tuning records directory {p} does not exist")
    if not p.is_dir():
        raise TuningError(f"tuning records must be a directory, {p} is a file")
    if is_records_dir(p):
        meta = read_meta(p)
        tuned_for = (meta.get("target") or {}).get("resolved")
        if tuned_for is not None and tuned_for != preset.name:
            raise TuningError(
                f"tuning records in {p} were tuned for target {tuned_for}, not for "
                f"{preset.display_name}; pass their parent folder (a records root with one "
                "folder per target) or records for this target"
            )
        return p
    sub = preset_dir(p, preset)
    if is_records_dir(sub):
        return sub
    others = sorted(d.name for d in p.iterdir() if d.is_dir() and is_records_dir(d))
    if others:
        log.info("tuning records %s: none for %s (only %s)", p, preset.name, ", ".join(others))
        return None
    raise TuningError(
        f"{p} holds no tuning records: expected {META_FILE} and the meta_schedule database "
        f"({', '.join(DB_FILES)}), or one such folder per target (e.g. {p / preset.name}); "
        "write records with `qcompiler tune ... --out DIR`"
    )


@dataclass
class _Source:
    directory: Path
    hashes: set[int]
    db: Any = None


@dataclass
class TuningRecords:
    """The record folders consulted for one compile, in priority order."""

    preset: TargetPreset
    sources: list[_Source] = field(default_factory=list)
    _target: Any = None

    def __bool__(self) -> bool:
        return any(s.hashes for s in self.sources)

    def lookup(self, func: Any) -> Any | None:
        """The tuned PrimFunc for the unscheduled kernel `func`, or None without a record."""
        if not self:
            return None
        from qcompiler.tuning import _ms

        h = _ms.structural_hash(func)
        for src in self.sources:
            if h not in src.hashes:
                continue
            if src.db is None:
                src.db = _open(src.directory)
            if self._target is None:
                self._target = self.preset.tvm_target()
            try:
                tuned = _ms.query(src.db, func, self._target)
            # a trace that no longer replays: the rules still apply
            except Exception as e:  # noqa: BLE001
                log.warning("tuning record in %s does not apply to kernel hash %d (%s: %s); "
                            "using the schedule rules", src.directory, h, type(e).__name__, e)
                continue
            if tuned is not None:
                return tuned
            log.warning("tuning records %s list kernel hash %d but hold no schedule for it",
                        src.directory, h)
        return None


def _open(directory: Path) -> Any:
    from qcompiler.tuning import _ms

    for f in DB_FILES:
        if not (directory / f).is_file():
            raise TuningError(f"tuning records {directory}: {f} is missing")
    try:
        return _ms.open_database(str(directory))
    except Exception as e:  # TVM raises its own error types for malformed JSON lines
        raise TuningError(f"cannot read the meta_schedule database in {directory}: {e}") from e


def _source(directory: Path) -> _Source:
    meta = read_meta(directory)
    hashes = set()
    for name, k in meta["kernels"].items():
        try:
            hashes.add(int(k["hash"]))
        except (KeyError, TypeError, ValueError):
            raise TuningError(
                f"{directory / META_FILE}: kernel {name!r} has no integer 'hash'"
            ) from None
    return _Source(directory, hashes)


def records_for(
    tuning_records: str | os.PathLike[str] | bool | None, preset: TargetPreset
) -> TuningRecords | None:
    """The records a compile for `preset` consults: `tuning_records` (a path) first, then the
    shipped `schedules/<preset>/`; `False` turns records off. None when there are none."""
    if tuning_records is False:
        return None
    if tuning_records is True:
        tuning_records = None
    dirs: list[Path] = []
    if tuning_records is not None:
        if not isinstance(tuning_records, (str, os.PathLike)):
            raise TuningError(
                "tuning_records must be a directory path, None (the shipped schedules/) or "
                f"False (no records), got {type(tuning_records).__name__}"
            )
        d = resolve(tuning_records, preset)
        if d is not None:
            dirs.append(d)
    shipped = preset_dir(SHIPPED_ROOT, preset)
    if is_records_dir(shipped) and all(shipped.resolve() != d.resolve() for d in dirs):
        dirs.append(shipped)
    records = TuningRecords(preset, [_source(d) for d in dirs])
    return records if records else None


__all__ = [
    "META_FILE",
    "SHIPPED_ROOT",
    "TUNED_RULE",
    "TuningError",
    "TuningRecords",
    "preset_dir",
    "read_meta",
    "records_for",
    "resolve",
    "write_meta",
]
