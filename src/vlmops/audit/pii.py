"""PII in image-text data: emails, phones, cards, IBANs, IPs, national IDs, secret URLs, names, EXIF.

Everything runs offline: detectors are validated regexes (`pii_detectors`), image metadata is read with
Pillow. `pii_check` reports one finding per (record, kind) with a masked snippet, never the raw value.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from vlmops.audit.findings import CheckResult, Finding
from vlmops.audit.pii_detectors import DETECTORS, KINDS, PRIORITY, PiiMatch, url_secrets

__all__ = ["PII_KINDS", "PiiMatch", "exif_pii", "mask", "pii_check", "redact_text", "scan_text"]

IMAGE_KINDS = ("gps", "serial", "author")
PII_KINDS = (*KINDS, *IMAGE_KINDS)
ERROR_KINDS = frozenset({"card", "iban", "national_id", "secret_url", "gps"})
PLACEHOLDERS = {kind: f"[{kind.upper()}]" for kind in KINDS}
SKIP_COLUMNS = frozenset(
    {"id", "image", "split", "sha256", "source", "licence", "package_licence", "version"}
)
LABELS = {
    "email": "email address", "phone": "phone number", "card": "payment card number", "iban": "IBAN",
    "ip": "IP address", "national_id": "national ID number", "secret_url": "URL carrying a credential",
    "name": "person name", "gps": "GPS location", "serial": "camera serial number", "author": "author field",
}  # fmt: skip

# EXIF tags (IFD0, Exif sub-IFD 0x8769) that identify a device or a person, or may hold free text.
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
SERIAL_TAGS = {0xA431: "BodySerialNumber", 0xC62F: "CameraSerialNumber", 0xA435: "LensSerialNumber"}
AUTHOR_TAGS = {0x013B: "Artist", 0x8298: "Copyright", 0x9C9D: "XPAuthor", 0xA430: "CameraOwnerName"}
TEXT_TAGS = {0x010E: "ImageDescription", 0x9C9C: "XPComment", 0x9C9F: "XPSubject", 0x9286: "UserComment"}
PNG_AUTHOR_KEYS = frozenset({"author", "artist", "copyright", "creator", "owner"})
# Image.info keys that describe the pixels rather than the picture's origin.
STRUCTURAL_INFO = frozenset({
    "dpi", "gamma", "transparency", "interlace", "aspect", "srgb", "chromaticity", "duration", "loop",
    "background", "version", "progressive", "progression", "jfif", "jfif_version", "jfif_unit",
    "jfif_density", "adobe", "adobe_transform", "compression", "exif", "icc_profile",
})  # fmt: skip


@lru_cache(maxsize=65536)
def _scan_cached(text: str) -> tuple[PiiMatch, ...]:
    candidates = [m for detector in DETECTORS for m in detector(text)]
    candidates.sort(key=lambda m: (PRIORITY[m.kind], m.start - m.end, m.start))
    chosen: list[PiiMatch] = []
    for m in candidates:
        if all(m.end <= c.start or m.start >= c.end for c in chosen):
            chosen.append(m)
    return tuple(sorted(chosen, key=lambda m: m.start))


def scan_text(text: str) -> list[PiiMatch]:
    """All PII in `text`, non-overlapping: the most specific kind wins, then the longest span."""
    if not isinstance(text, str) or not text.strip():
        return []
    return list(_scan_cached(text))


def redact_text(text: str) -> str:
    """`text` with every PII match replaced by its placeholder ([EMAIL], [CARD], [NAME], ...)."""
    for m in reversed(scan_text(text)):
        text = text[: m.start] + PLACEHOLDERS[m.kind] + text[m.end :]
    return text


def _keep_last(value: str, keep: int) -> str:
    """Mask every letter/digit except the last `keep` ones; separators stay."""
    positions = [i for i, c in enumerate(value) if c.isalnum()]
    hidden = set(positions[: max(0, len(positions) - keep)])
    return "".join("*" if i in hidden else c for i, c in enumerate(value))


def mask(kind: str, value: str) -> str:
    """A reviewer-safe snippet of a PII value: enough to recognise it, never the whole secret."""
    value = str(value)
    if kind == "email" and "@" in value:
        local, domain = value.rsplit("@", 1)
        tld = domain.rsplit(".", 1)[-1]
        return f"{local[:1]}***@{domain[:1]}***.{tld}"
    if kind == "secret_url":
        value = re.sub(r"//[^/@\s]+@", "//***:***@", value)
        for name in url_secrets(value) or []:
            value = re.sub(rf"([?&#;]{re.escape(name)}=)[^&#\s]*", r"\1***", value)
        return value
    if kind == "ip":
        sep = ":" if ":" in value else "."
        return value.split(sep)[0] + sep + ("****" if sep == ":" else "*.*.*")
    if kind in ("name", "author"):
        return " ".join(w[:1] + "***" for w in value.split())
    if kind in ("card", "iban"):
        return (value[:2] if kind == "iban" else "") + _keep_last(value[2:] if kind == "iban" else value, 4)
    if kind in ("phone", "serial"):
        return _keep_last(value, 2)
    if kind == "national_id":
        return _keep_last(value, min(4, sum(c.isalnum() for c in value) // 3))
    return _keep_last(value, 0)


# --- image metadata ----------------------------------------------------------------------------------
def _tag_text(value: Any) -> str:
    """EXIF values as text: XP* tags are UTF-16LE bytes, UserComment has an 8-byte charset header."""
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        value = bytes(value)
    if isinstance(value, bytes):
        if value[:8] in (b"ASCII\0\0\0", b"UNICODE\0", b"JIS\0\0\0\0\0", b"\0" * 8):
            encoding = "utf-16" if value[:8] == b"UNICODE\0" else "latin-1"
            return value[8:].decode(encoding, "replace").strip("\0 ")
        try:
            return value.decode("utf-16-le").strip("\0 ")
        except UnicodeDecodeError:
            return value.decode("latin-1").strip("\0 ")
    return str(value).strip("\0 ")


def _gps_coords(gps: dict) -> dict[str, float | None]:
    """Decimal lat/lon from GPS IFD tags 1-4; None where they are missing or malformed."""
    coords: dict[str, float | None] = {}
    for name, ref_tag, val_tag, negative in (("lat", 1, 2, "S"), ("lon", 3, 4, "W")):
        try:
            d, m, s = (float(x) for x in gps[val_tag])
            sign = -1.0 if str(gps.get(ref_tag, "")).strip("\0 ").upper() == negative else 1.0
            coords[name] = round(sign * (d + m / 60 + s / 3600), 6)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            coords[name] = None
    return coords


def _metadata(im: Image.Image) -> tuple[dict, dict, dict]:
    """(EXIF tags with the Exif IFD's, GPS IFD, info) of an opened image."""
    exif = im.getexif()  # loads PNGs, so text chunks after the pixel data are in .info too
    return {**dict(exif), **dict(exif.get_ifd(EXIF_IFD))}, dict(exif.get_ifd(GPS_IFD)), dict(im.info)


def exif_pii(source: str | Path | Image.Image) -> dict:
    """PII in an image's metadata: gps, serials, authors, text_pii (free text with PII); {} if clean.

    `source` is a path, or an image already opened (e.g. decoded by the audit's shared image scan).
    """
    try:
        if isinstance(source, Image.Image):
            tags, gps, info = _metadata(source)
        else:
            with Image.open(source) as im:
                tags, gps, info = _metadata(im)
    except Exception as exc:  # unreadable images are the quality check's business; never raise here
        return {"error": f"{type(exc).__name__}: {exc}"}
    out: dict[str, Any] = {}
    if gps:
        out["gps"] = _gps_coords(gps)
    found: dict[str, dict[str, Any]] = {"serials": {}, "authors": {}, "text_pii": {}}
    for table, key in ((SERIAL_TAGS, "serials"), (AUTHOR_TAGS, "authors")):
        for tag, name in table.items():
            if tag in tags and _tag_text(tags[tag]):
                found[key][name] = _tag_text(tags[tag])
    free_text = {name: _tag_text(tags[tag]) for tag, name in TEXT_TAGS.items() if tag in tags}
    for key, value in info.items():
        if not isinstance(key, str) or key.lower() in STRUCTURAL_INFO or not isinstance(value, str | bytes):
            continue
        text = _tag_text(value)
        if key.lower() in PNG_AUTHOR_KEYS and text:
            found["authors"][f"png:{key}"] = text
        else:
            free_text[f"png:{key}" if key != "comment" else "comment"] = text
    for field, text in free_text.items():
        matches = scan_text(text)
        if matches:
            found["text_pii"][field] = [{"kind": m.kind, "text": m.text} for m in matches]
    return out | {k: v for k, v in found.items() if v}


def _image_hits(meta: dict) -> list[tuple[str, str, str]]:
    """(kind, field, raw value) triples from an `exif_pii` result."""
    hits = []
    if "gps" in meta:
        lat, lon = meta["gps"].get("lat"), meta["gps"].get("lon")
        value = f"{lat:.1f}, {lon:.1f}" if lat is not None and lon is not None else "present"
        hits.append(("gps", "exif:GPSInfo", value))
    hits += [("serial", f"exif:{k}", v) for k, v in meta.get("serials", {}).items()]
    hits += [("author", f"exif:{k}" if ":" not in k else k, v) for k, v in meta.get("authors", {}).items()]
    for field, matches in meta.get("text_pii", {}).items():
        prefix = "" if field.startswith("png:") else "exif:"
        hits += [(m["kind"], prefix + field, m["text"]) for m in matches]
    return hits


# --- the check ---------------------------------------------------------------------------------------
def _text_values(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


def text_columns(frame: pd.DataFrame) -> list[str]:
    """Columns pii_check scans: texts, label and string (or list-of-string) attribute columns."""
    return [c for c in frame.columns if c not in SKIP_COLUMNS]


def pii_check(
    frame: pd.DataFrame,
    progress: bool = True,
    scan_images: bool = True,
    image_meta: Sequence[dict | None] | None = None,
) -> CheckResult:
    """Scan texts, labels, string attributes and image metadata; one finding per (record, kind).

    `image_meta` (per record, `exif_pii` of its image, None where there is no image path; e.g. from the
    audit's shared image scan) saves reading the files here.
    """
    from vlmops.progress import progress_bar

    ids = [str(i) for i in frame["id"]] if "id" in frame.columns else [str(i) for i in range(len(frame))]
    hits: dict[tuple[int, str], list[tuple[str, str]]] = defaultdict(list)  # (row, kind) -> (field, value)
    for column in text_columns(frame):
        for row, value in enumerate(frame[column].tolist()):
            texts = _text_values(value)
            for k, text in enumerate(texts):
                field = f"{column}[{k}]" if not isinstance(value, str) else column
                for m in scan_text(text):
                    hits[(row, m.kind)].append((field, m.text))
    result = CheckResult(check="pii")
    unreadable = 0
    if scan_images and "image" in frame.columns:
        paths = frame["image"].tolist()
        if image_meta is not None and len(image_meta) != len(paths):
            raise ValueError(f"image_meta has {len(image_meta)} rows for {len(paths)} records: one per row")
        cache: dict[str, dict] = {}
        with progress_bar(progress) as bar:
            task = bar.add_task("pii: image metadata", total=len(paths))
            for row, path in enumerate(paths):
                if isinstance(path, str) and path:
                    if image_meta is not None:
                        meta = image_meta[row]
                    else:
                        if path not in cache:
                            cache[path] = exif_pii(path)
                        meta = cache[path]
                    unreadable += "error" in meta
                    for kind, field, value in _image_hits(meta):
                        hits[(row, kind)].append((field, value))
                bar.advance(task)
        if unreadable:
            result.notes.append(f"{unreadable} image(s) could not be read; their metadata was not scanned")
    else:
        result.notes.append("image metadata not scanned (scan_images=False)")
    for (row, kind), found in sorted(
        hits.items(), key=lambda item: (item[0][0], PII_KINDS.index(item[0][1]))
    ):
        fields = list(dict.fromkeys(f for f, _ in found))
        snippets = list(dict.fromkeys(mask(kind, v) for _, v in found))
        result.findings.append(
            Finding(
                record_id=ids[row],
                check="pii",
                kind=kind,
                severity="error" if kind in ERROR_KINDS else "warning",
                message=f"{len(found)} {LABELS[kind]}(s) in {', '.join(fields[:3])}"
                + (f" and {len(fields) - 3} more field(s)" if len(fields) > 3 else ""),
                evidence={"field": fields[0], "fields": fields, "kind": kind, "count": len(found),
                          "snippet": snippets[0], "snippets": snippets[:3]},
            )
        )  # fmt: skip
    flagged = {row for row, _ in hits}
    result.metrics = {"pii": len(flagged), "pii_rate": len(flagged) / len(frame) if len(frame) else None}
    result.metrics |= {f"pii_{kind}": sum(1 for _, k in hits if k == kind) for kind in PII_KINDS}
    result.details = {
        "records": len(frame),
        "columns_scanned": text_columns(frame),
        "unreadable_images": unreadable,
    }
    return result
