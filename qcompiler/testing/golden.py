"""Golden-file snapshots of text IR. `QC_UPDATE_GOLDEN=1` rewrites them; review the diff."""

from __future__ import annotations

import difflib
import os
from pathlib import Path


def check_golden(path: str | Path, text: str) -> None:
    """Assert `text` equals the file at `path` (created or rewritten under QC_UPDATE_GOLDEN)."""
    p = Path(path)
    if os.environ.get("QC_UPDATE_GOLDEN") or not p.exists():
        if not p.exists() and os.environ.get("CI") and not os.environ.get("QC_UPDATE_GOLDEN"):
            raise AssertionError(f"golden file {p} is missing (run with QC_UPDATE_GOLDEN=1)")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return
    expected = p.read_text()
    if expected != text:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            str(p), "actual"))
        raise AssertionError(f"IR differs from golden file {p} "
                             f"(QC_UPDATE_GOLDEN=1 to accept):\n{diff}")
