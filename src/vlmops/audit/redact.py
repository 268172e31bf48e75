"""Write a PII-redacted copy of a data set: redacted texts and metadata-free image copies.

Originals are never touched: images that carry EXIF or text metadata are re-saved (pixels only) under
`out_dir/images/`, the rest keep their original path; the new manifest is `out_dir/manifest.jsonl`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageOps, ImageSequence

from vlmops.audit.pii import STRUCTURAL_INFO, redact_text, text_columns
from vlmops.errors import VlmopsError
from vlmops.hashing import sha256_file

MANIFEST_NAME = "manifest.jsonl"
IMAGES_DIR = "images"


class OutputExistsError(VlmopsError, ValueError):
    """The output folder is not empty (or holds the originals) and overwriting was not allowed."""


def image_metadata(path: str | Path) -> list[str]:
    """Names of the metadata an image carries (EXIF, text chunks, comments, XMP, ICC); [] if none."""
    with Image.open(path) as im:
        found = ["exif"] if im.getexif() else []  # getexif() loads PNGs, exposing late text chunks
        found += [str(k) for k in im.info if str(k).lower() not in STRUCTURAL_INFO - {"exif", "icc_profile"}]
    return list(dict.fromkeys(found))


def _clean_frame(frame: Image.Image) -> Image.Image:
    """A copy of one frame with pixel data (and palette transparency) only."""
    clean = frame.copy()
    clean.info = {k: frame.info[k] for k in ("transparency", "duration", "loop") if k in frame.info}
    return clean


def strip_metadata(src: str | Path, dst: str | Path) -> None:
    """Re-save `src`'s pixels to `dst` in the same format without metadata; EXIF rotation is applied."""
    with Image.open(src) as im:
        fmt = im.format or Image.registered_extensions().get(Path(dst).suffix.lower(), "PNG")
        params: dict[str, Any] = {"quality": 95} if fmt in ("JPEG", "MPO") else {}
        if fmt == "WEBP":
            params["lossless"] = True
        if fmt == "MPO":
            fmt = "JPEG"
        frames = [_clean_frame(ImageOps.exif_transpose(f) or f) for f in ImageSequence.Iterator(im)]
        if len(frames) > 1 and fmt in ("GIF", "PNG", "WEBP", "TIFF"):
            params |= {"save_all": True, "append_images": frames[1:]}
        frames[0].save(dst, format=fmt, **params)


def safe_name(record_id: str) -> str:
    """A file-system-safe, collision-free stem for a record id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", record_id).strip("._") or "record"
    if safe != record_id:
        safe = f"{safe[:80]}-{hashlib.sha1(record_id.encode()).hexdigest()[:8]}"
    return safe


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NaT or (
        not isinstance(value, str | bytes) and pd.api.types.is_scalar(value) and pd.isna(value)
    ):
        return None
    return value


def _redact_value(value: Any) -> tuple[Any, int]:
    """(redacted value, number of strings changed) for a string or list of strings."""
    if isinstance(value, str):
        new = redact_text(value)
        return new, int(new != value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        new_list = [redact_text(v) for v in value]
        return new_list, sum(a != b for a, b in zip(new_list, value, strict=True))
    return value, 0


def _prepare_out_dir(out: Path, originals: list[str], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {out} is a file; pass a folder path for out_dir")
    inside = [p for p in originals if Path(p).resolve().is_relative_to(out)]
    if inside:
        raise OutputExistsError(
            f"output folder {out} contains original images (e.g. {inside[0]}); choose another out_dir"
        )
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"output folder {out} is not empty; choose an empty folder or pass overwrite=True "
                "(--overwrite) to replace its manifest.jsonl and images/"
            )
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(out / IMAGES_DIR, ignore_errors=True)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)


def redact_manifest(
    frame: pd.DataFrame, out_dir: str | Path, progress: bool = True, overwrite: bool = False
) -> dict[str, Any]:
    """Write `out_dir/manifest.jsonl` with PII redacted and images stripped of metadata; return a summary."""
    from vlmops.progress import progress_bar

    out = Path(out_dir).expanduser().resolve()
    paths = [str(p) for p in frame["image"]]
    _prepare_out_dir(out, paths, overwrite)
    columns = set(text_columns(frame))
    records, texts_redacted, records_redacted, cleaned, unreadable = [], 0, 0, 0, 0
    with progress_bar(progress) as bar:
        task = bar.add_task("redact", total=len(frame))
        for raw in frame.to_dict(orient="records"):
            row = {k: _jsonable(v) for k, v in raw.items()}
            changed = 0
            for column in columns:
                row[column], n = _redact_value(row[column])
                changed += n
            texts_redacted += changed
            records_redacted += bool(changed)
            try:
                has_metadata = bool(image_metadata(row["image"]))
            except Exception:  # unreadable: keep the path, the quality check reports it
                has_metadata, unreadable = False, unreadable + 1
            if has_metadata:
                target = out / IMAGES_DIR / f"{safe_name(str(row['id']))}{Path(row['image']).suffix.lower()}"
                strip_metadata(row["image"], target)
                row["image"] = str(target)
                if "sha256" in row:  # provenance hash follows the bytes the manifest now points to
                    row["sha256"] = sha256_file(target)
                cleaned += 1
            records.append(row)
            bar.advance(task)
    manifest = out / MANIFEST_NAME
    with open(manifest, "w", encoding="utf-8") as fh:
        for row in records:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return {
        "records": len(records),
        "records_redacted": records_redacted,
        "texts_redacted": texts_redacted,
        "images_cleaned": cleaned,
        "images_unreadable": unreadable,
        "out_dir": str(out),
        "manifest": str(manifest),
        "images_dir": str(out / IMAGES_DIR),
    }
