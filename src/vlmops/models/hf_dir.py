"""What the hf adapters check and read in a save_pretrained directory: the fix hint, the licence, and
whether the weights covered the model."""

from __future__ import annotations

import re
from pathlib import Path

from vlmops.errors import ModelLoadError

SAVE_HINT = (
    "save the model and its processor there with `model.save_pretrained(dir)` and "
    "`processor.save_pretrained(dir)`"
)


def read_licence(path: Path) -> str:
    """Licence from README front-matter (`license: x`) or a LICENSE file's first line; else unknown."""
    readme = path / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        front = re.match(r"---\s*\n(.*?)\n---", text, flags=re.S)
        if front:
            found = re.search(r"^licen[cs]e:\s*(\S.*?)\s*$", front.group(1), flags=re.M)
            if found:
                return found.group(1).strip("'\"")
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE"):
        file = path / name
        if file.is_file():
            for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.strip():
                    return line.strip()[:80]
    return "unknown"


def check_loading_report(report: dict, path: Path) -> None:
    """Raise unless the weights in `path` covered every parameter (the rest would be random)."""
    if report.get("missing_keys") or report.get("mismatched_keys"):
        missing = sorted(report.get("missing_keys") or []) + sorted(report.get("mismatched_keys") or [])
        raise ModelLoadError(
            f"weights in {path} do not cover the model ({', '.join(map(str, missing[:5]))}...): "
            "these would be random; re-save the full model with save_pretrained"
        )
