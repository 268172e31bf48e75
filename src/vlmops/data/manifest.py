"""Manifest loaders: JSONL, CSV, Parquet and image folders, all to one normalised DataFrame.

Every loader returns the columns ``id`` (unique str), ``image`` (absolute path str), ``texts``
(list[str]), ``label`` (str or None, ``a/b/c`` allowed) and ``split`` (str or None), then attribute
columns (an ``attrs`` dict flattened, or extra scalar columns), then provenance columns (a
``provenance`` dict flattened: ``source``, ``licence``, ``version``, ``sha256``). Bad rows are
collected and raised together as one `ManifestError` with their 1-based row numbers.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vlmops.errors import DataError

CORE_COLUMNS = ("id", "image", "texts", "label", "split")
PROVENANCE_COLUMNS = ("source", "licence", "package_licence", "version", "sha256")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")
MAX_LISTED_PROBLEMS = 20


class ManifestError(DataError):
    """A manifest has bad rows; `.problems` holds every (1-based row, reason) pair."""

    def __init__(self, source: str, problems: list[tuple[int, str]], unit: str = "row") -> None:
        self.source = source
        self.problems = problems
        shown = "; ".join(f"{unit} {row}: {reason}" for row, reason in problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        tail = f"; ... and {more} more" if more > 0 else ""
        super().__init__(f"{source}: {len(problems)} bad {unit}(s), fix or remove them: {shown}{tail}")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _optional_str(value: Any) -> str | None:
    return None if _is_missing(value) else str(value).strip()


def _parse_texts(value: Any, split_strings: bool) -> list[str]:
    """Texts as a list of str; raises ValueError with the reason if the value is not usable."""
    if _is_missing(value):
        return []
    if isinstance(value, str):
        text = value.strip()
        if split_strings and text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"texts is not a valid JSON list ({exc.msg})") from None
        elif split_strings:
            return [part.strip() for part in text.split("|") if part.strip()]
        else:
            return [text]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise ValueError(f"texts must be a list of strings or a string, got {type(value).__name__}")
    if not all(isinstance(t, str) for t in value):
        raise ValueError("texts must contain only strings")
    return [t for t in value if t.strip()]


def _parse_dict(value: Any, name: str) -> dict:
    if _is_missing(value):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{name} is not a valid JSON object") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object/dict, got {type(value).__name__}")
    return value


def _resolve_image(value: Any, base: Path) -> str:
    if isinstance(value, bytes | bytearray):
        raise ValueError("image holds bytes; write images to files and store their paths")
    if _is_missing(value):
        raise ValueError("missing image")
    path = Path(str(value).strip()).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    if not path.is_file():
        raise ValueError(f"image file not found: {path}")
    return str(path)


def _normalise_row(raw: dict, base: Path, split_strings: bool) -> dict:
    """One raw record to a normalised row; raises ValueError naming the first problem."""
    if _is_missing(raw.get("id")):
        raise ValueError("missing id")
    row: dict[str, Any] = {
        "id": str(raw["id"]).strip(),
        "image": _resolve_image(raw.get("image"), base),
        "texts": _parse_texts(raw.get("texts"), split_strings),
        "label": _optional_str(raw.get("label")),
        "split": _optional_str(raw.get("split")),
    }
    for key, value in raw.items():
        if key not in CORE_COLUMNS and key not in ("attrs", "provenance"):
            row[key] = value
    for group in ("attrs", "provenance"):
        for key, value in _parse_dict(raw.get(group), group).items():
            if key in CORE_COLUMNS:
                raise ValueError(f"{group} key {key!r} clashes with the core column of that name")
            row[key] = value
    return row


def _build(
    records: Iterable[tuple[int, dict | str]],
    base: Path,
    source: str,
    split_strings: bool = False,
    unit: str = "row",
) -> pd.DataFrame:
    """Normalise (row number, raw record or error text) pairs into a DataFrame or one ManifestError."""
    rows: list[dict] = []
    problems: list[tuple[int, str]] = []
    first_seen: dict[str, int] = {}
    for number, raw in records:
        if isinstance(raw, str):
            problems.append((number, raw))
            continue
        try:
            row = _normalise_row(raw, base, split_strings)
        except ValueError as exc:
            problems.append((number, str(exc)))
            continue
        if row["id"] in first_seen:
            problems.append((number, f"duplicate id {row['id']!r} (first at {unit} {first_seen[row['id']]})"))
            continue
        first_seen[row["id"]] = number
        rows.append(row)
    if problems:
        raise ManifestError(source, problems, unit)
    if not rows:
        raise DataError(f"{source} has no records; add rows with at least 'id' and 'image'")
    df = pd.DataFrame.from_records(rows)
    for column in ("label", "split"):  # object dtype so that missing stays None, not NaN
        df[column] = pd.Series([row[column] for row in rows], dtype=object)
    return _order_columns(df)


def _order_columns(df: pd.DataFrame) -> pd.DataFrame:
    provenance = [c for c in PROVENANCE_COLUMNS if c in df.columns]
    extra = [c for c in df.columns if c not in CORE_COLUMNS and c not in provenance]
    return df[[*CORE_COLUMNS, *extra, *provenance]].reset_index(drop=True)


def _require_columns(columns: Iterable[str], source: str) -> None:
    missing = [c for c in ("id", "image") if c not in columns]
    if missing:
        raise DataError(
            f"{source} has no {' or '.join(repr(c) for c in missing)} column; "
            f"columns found: {sorted(columns)}"
        )


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict | str]]:
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, f"invalid JSON ({exc.msg} at column {exc.colno})"
                continue
            yield (
                number,
                record if isinstance(record, dict) else f"expected a JSON object, got {record!r:.40}",
            )


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        _require_columns(reader.fieldnames or [], str(path))
        # Empty cells become None; cells beyond the header (key None) are ignored.
        return [
            (n, {k: (v if v != "" else None) for k, v in rec.items() if k is not None})
            for n, rec in enumerate(reader, start=1)
        ]


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:
        raise DataError(f"cannot read Parquet manifest {path}: {exc}") from exc
    _require_columns(frame.columns, str(path))
    return list(enumerate(frame.to_dict(orient="records"), start=1))


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Load a .jsonl, .csv or .parquet manifest; relative image paths are resolved from its folder."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    base = path.parent
    if suffix == ".jsonl":
        return _build(_read_jsonl(path), base, str(path), unit="line")
    if suffix == ".csv":
        return _build(_read_csv(path), base, str(path), split_strings=True)
    if suffix == ".parquet":
        return _build(_read_parquet(path), base, str(path))
    raise DataError(
        f"unknown manifest type {suffix or '(no suffix)'!r} for {path}; "
        f"save it as one of {', '.join(MANIFEST_SUFFIXES)}"
    )


def load_image_folder(directory: str | Path) -> pd.DataFrame:
    """Load `class/xxx.png` files: label = folder path, texts = [leaf class name], id = relative path."""
    root = Path(directory).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    records = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not path.is_file():
            continue
        label = rel.parent.as_posix() if len(rel.parts) > 1 else None
        texts = [rel.parent.name.replace("_", " ").replace("-", " ")] if label else []
        records.append({"id": rel.as_posix(), "image": str(path), "texts": texts, "label": label})
    if not records:
        raise DataError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}; "
            "lay them out as class_name/image.png"
        )
    return _build(enumerate(records, start=1), root, str(root))


def attribute_columns(df: pd.DataFrame) -> list[str]:
    """The slice fields of a loaded manifest: columns that are neither core nor provenance."""
    return [c for c in df.columns if c not in CORE_COLUMNS and c not in PROVENANCE_COLUMNS]


def resolve_data(spec: str) -> pd.DataFrame:
    """Load data named by `spec`: 'emoji', an image folder, or a manifest file."""
    if spec == "emoji":
        from vlmops.data.emoji import load_emoji_manifest

        return load_emoji_manifest()
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_image_folder(path)
    if path.is_file():
        return load_manifest(path)
    raise DataError(
        f"data {spec!r} is not 'emoji', an existing image folder (class/xxx.png) "
        f"or a manifest file ({', '.join(MANIFEST_SUFFIXES)})"
    )
