"""The self-contained HTML report of `vlmops audit`, rendered from the audit JSON document (vlmops.audit/1).

Per check: a summary row, its metrics, notes and details (laid out generically as tables), the worst
offenders as inline thumbnails (PNG data URIs, capped per report), duplicate clusters side by side and a
findings table. `render_audit_html` only reads the payload: a check may be skipped or missing and an image
may be missing or unreadable, in which case the page says why instead of failing.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmops.report import plots
from vlmops.report.html import Markup, format_number, humanize, render, write_html
from vlmops.report.rules import count_fired

log = logging.getLogger(__name__)

SEVERITIES = ("error", "warning", "info")
RANK = {s: i for i, s in enumerate(SEVERITIES)}
TONES = {"error": plots.colour(3), "warning": plots.colour(1), "info": plots.colour(0)}
THUMB_PX = 72
MAX_THUMBNAILS = 300  # data-URI images per report
MAX_OFFENDERS = 12
MAX_CLUSTERS = 20
MAX_MEMBERS = 6
MAX_FINDINGS = 200
MAX_ROWS = 200  # rows of one details table
MAX_COLUMNS = 16
KEY_METRICS = 4
GROUP_PREFIX = "group:"
NOT_IN_REPORT = "not in this report"
TITLES = {"pii": "PII (personal data)"}


def _mapping(payload: Mapping, key: str) -> Mapping:
    """payload[key] when it is a dict, else an empty one."""
    value = payload.get(key)
    return value if isinstance(value, Mapping) else {}


def _short(value: object, limit: int) -> str:
    """Text cut to `limit` characters with an ellipsis."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _compact(value: object, limit: int = 200) -> str:
    """Evidence or other nested data as one short line ("key: value; …"), empty for nothing."""
    return _short(format_number(value), limit) if value not in (None, {}, []) else ""


def _scalar(value: object) -> bool:
    """A value that fits one table cell: a scalar or a list of scalars."""
    if isinstance(value, list | tuple):
        return all(v is None or isinstance(v, str | int | float | bool) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def _encode(path: str | Path) -> dict | Exception:
    """A THUMB_PX thumbnail of the image at `path` as a PNG data URI, or the error that prevented it."""
    from PIL import Image

    from vlmops.data.images import load_image
    from vlmops.models.preprocess import to_rgb

    try:
        image = to_rgb(load_image(Path(path))).copy()
        image.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, format="PNG", optimize=True)
    except Exception as exc:  # a missing or broken file is a placeholder, not a failed report
        return exc
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {"src": uri, "width": image.width, "height": image.height}


class Thumbnails:
    """Record id -> inline thumbnail, at most `limit` per report (placeholders with a reason after that)."""

    def __init__(self, images: Mapping[str, str], limit: int) -> None:
        self.images, self.limit, self.used = images, limit, 0
        self._cache: dict[str, dict | Exception] = {}

    def __call__(self, record_id: str) -> dict:
        """{"src", "width", "height"} or {"reason": why there is no picture}."""
        if record_id.startswith(GROUP_PREFIX):
            return {"reason": "a group of records, not one image"}
        path = self.images.get(record_id)
        if not path:
            return {"reason": "no image path for this record"}
        if self.used >= self.limit:
            return {"reason": f"thumbnail limit reached ({self.limit} per report)"}
        key = str(path)
        if key not in self._cache:
            self._cache[key] = _encode(path)
        thumb = self._cache[key]
        if isinstance(thumb, Exception):
            reason = "file not found" if "not found" in str(thumb) else "unreadable image"
            return {"reason": reason, "title": _short(thumb, 300)}
        self.used += 1
        return thumb


def _finding_row(f: Mapping) -> dict:
    return {
        "record_id": str(f.get("record_id", "")),
        "kind": str(f.get("kind", "")),
        "severity": str(f.get("severity", "")),
        "message": str(f.get("message", "")),
        "evidence": _compact(f.get("evidence")),
    }


def _offenders(findings: list[Mapping], thumbs: Thumbnails) -> list[dict]:
    """Up to MAX_OFFENDERS records, errors first then warnings (check order kept), one per record."""
    bad = [f for f in findings if f.get("severity") in ("error", "warning")]
    ranked = sorted(bad, key=lambda f: RANK[f["severity"]])
    out: list[dict] = []
    seen: set[str] = set()
    for f in ranked:
        row = _finding_row(f)
        if row["record_id"] in seen:
            continue
        seen.add(row["record_id"])
        out.append(row | {"message": _short(row["message"], 140), "thumb": thumbs(row["record_id"])})
        if len(out) == MAX_OFFENDERS:
            break
    return out


def _member_evidence(candidates: list[Mapping], ids: list[str]) -> str:
    """A member's scalar evidence, from the finding that names this cluster's ids when it has several."""
    same = [
        e
        for e in candidates
        if any(isinstance(v, list) and {str(x) for x in v} == set(ids) for v in e.values())
    ]
    chosen = (same or candidates or [{}])[0]
    return _compact({k: v for k, v in chosen.items() if not isinstance(v, list | Mapping)}, 80)


def _clusters(details: Mapping, findings: list[Mapping], thumbs: Thumbnails) -> dict | None:
    """The first MAX_CLUSTERS of details["clusters"], members as thumbnails with their distance evidence."""
    clusters = [c for c in details.get("clusters") or [] if isinstance(c, Mapping)]
    if not clusters:
        return None
    evidence: dict[str, list[Mapping]] = {}
    for f in findings:
        evidence.setdefault(str(f.get("record_id")), []).append(f.get("evidence") or {})
    shown = []
    for c in clusters[:MAX_CLUSTERS]:
        ids = [str(i) for i in c.get("ids") or []]
        members = [
            {"record_id": r, "thumb": thumbs(r), "evidence": _member_evidence(evidence.get(r, []), ids)}
            for r in ids[:MAX_MEMBERS]
        ]
        about = _compact({k: v for k, v in c.items() if k not in ("ids", "kind")})
        more = max(len(ids) - MAX_MEMBERS, 0)
        kind = str(c.get("kind", "?"))
        shown.append({"kind": kind, "size": len(ids), "more": more, "members": members, "about": about})
    return {"shown": shown, "total": len(clusters)}


def _rows_block(title: str, rows: list[Mapping], key_column: str | None = None) -> dict:
    """A list of dicts as one table (union of keys as columns; nested cells compacted)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))[:MAX_COLUMNS]
    body = [[v if _scalar(v) else _compact(v, 120) for v in map(r.get, columns)] for r in rows[:MAX_ROWS]]
    head = [key_column, *columns[1:]] if key_column is not None else columns
    more = max(len(rows) - MAX_ROWS, 0)
    return {"title": title, "kind": "rows", "columns": head, "rows": body, "more": more}


def _like_rows(value: Mapping) -> bool:
    """True for a dict of dicts of scalars sharing most keys (e.g. per-split stats): one table fits."""
    inner = [v for v in value.values() if isinstance(v, Mapping) and all(_scalar(x) for x in v.values())]
    if not value or len(inner) != len(value):
        return False
    union = set().union(*inner)
    return len(union) <= 12 and 2 * len(set(inner[0]).intersection(*inner)) >= len(union)


def _detail_blocks(value: Any, title: str = "", depth: int = 0) -> list[dict]:
    """Details of unknown shape as titled blocks: key/value tables, row tables or short text."""
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        return [_rows_block(title, value)]
    if not isinstance(value, Mapping) or depth > 3:
        return [{"title": title, "kind": "text", "text": _compact(value, 400) or "–"}]
    if _like_rows(value):
        return [_rows_block(title, [{"\0key": k, **v} for k, v in value.items()], key_column="")]
    pairs = {str(k): v for k, v in value.items() if _scalar(v)}
    blocks = [{"title": title, "kind": "kv", "pairs": pairs, "raw": depth > 0}] if pairs else []
    for k, v in value.items():
        if str(k) not in pairs:
            blocks += _detail_blocks(v, f"{title} › {humanize(k)}" if title else humanize(k), depth + 1)
    return blocks


def _severity_svg(counts: Mapping[str, Mapping[str, int]]) -> str:
    """Horizontal stacked bars: findings per check, split by severity."""
    names = list(counts)
    with plots.style():
        fig = plots.new_figure(plots.FIGSIZE[0], max(1.8, 0.8 + 0.28 * len(names)))
        ax = fig.subplots()
        left = [0] * len(names)
        for severity in SEVERITIES:
            values = [counts[n][severity] for n in names]
            ax.barh(range(len(names)), values, left=left, height=0.6, color=TONES[severity], label=severity)
            left = [a + b for a, b in zip(left, values, strict=True)]
        ax.set_yticks(range(len(names)), [plots.label(n) for n in names])
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_xlabel("findings")
        ax.grid(axis="y", visible=False)
        ax.legend(loc="lower right")
    return plots.figure_to_svg(fig)


def _check(name: str, result: object, counts: object, thumbs: Thumbnails, anchor: str) -> dict:
    """One check's section: counts, metrics, notes, details, thumbnails, clusters and findings."""
    result = result if isinstance(result, Mapping) else {"skipped": NOT_IN_REPORT}
    findings = [f for f in result.get("findings") or [] if isinstance(f, Mapping)]
    if not isinstance(counts, Mapping):
        counts = {s: sum(f.get("severity") == s for f in findings) for s in SEVERITIES}
    details, metrics = _mapping(result, "details"), _mapping(result, "metrics")
    skipped = result.get("skipped")
    offenders = _offenders(findings, thumbs)
    clusters = _clusters(details, findings, thumbs)
    rest = {k: v for k, v in details.items() if not (k == "clusters" and clusters)}
    return {
        "id": anchor,
        "name": name,
        "title": TITLES.get(name, humanize(name)),
        "skipped": str(skipped) if skipped is not None else None,
        "counts": {s: v if isinstance(v := counts.get(s), int) else 0 for s in SEVERITIES},
        "metrics": dict(metrics),
        "key_metrics": list(metrics.items())[:KEY_METRICS],
        "notes": [str(n) for n in result.get("notes") or []],
        "details": _detail_blocks(rest) if rest else [],
        "offenders": offenders,
        "clusters": clusters,
        "n_findings": n if isinstance(n := result.get("n_findings"), int) else len(findings),
        "findings": [_finding_row(f) for f in findings[:MAX_FINDINGS]],
    }


def _anchor(name: str, taken: set[str]) -> str:
    base = "check-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "x")
    anchor, i = base, 1
    while anchor in taken:
        anchor, i = f"{base}-{i}", i + 1
    taken.add(anchor)
    return anchor


def audit_context(payload: Mapping, images: Mapping[str, str] | None = None) -> dict:
    """Everything `audit.html.j2` needs; `images` (record id -> file) defaults to payload["images"]."""
    from vlmops import __version__

    if images is None:
        images = payload.get("images")
    thumbs = Thumbnails(images if isinstance(images, Mapping) else {}, MAX_THUMBNAILS)
    results, summary = _mapping(payload, "checks"), _mapping(payload, "summary")
    names = list(dict.fromkeys([*(str(c) for c in payload.get("checks_run") or []), *results]))
    taken: set[str] = set()
    checks = [_check(n, results.get(n), summary.get(n), thumbs, _anchor(n, taken)) for n in names]
    ran = {c["name"]: c["counts"] for c in checks if not c["skipped"]}
    plot = None
    if any(any(v for v in c.values()) for c in ran.values()):
        try:
            plot = Markup(_severity_svg(ran))
        except Exception:  # a report must not die on one odd plot
            log.warning("could not draw the findings plot", exc_info=True)
    fail_on = [r for r in payload.get("fail_on") or [] if isinstance(r, Mapping)]
    model, data = _mapping(payload, "model"), _mapping(payload, "data")
    totals = {s: sum(c["counts"][s] for c in checks) for s in SEVERITIES}
    data_text = str(data.get("spec") or "unknown data")
    if data.get("n") is not None:
        data_text += f" · {format_number(data['n'])} records"
    if data.get("slice_fields"):
        data_text += " · slices: " + ", ".join(str(f) for f in data["slice_fields"])
    meta = [
        ("Model", str(model.get("version") or model.get("name") or "none (model checks skipped)")),
        ("Data", data_text),
        ("Checks", f"{len(ran)} run, {len(checks) - len(ran)} skipped"),
        ("Findings", ", ".join(f"{format_number(totals[s])} {s}" for s in SEVERITIES)),
        ("Date", str(payload.get("created", "–"))),
    ]
    sections = [{"id": "overview", "title": "Overview"}]
    sections += [{"id": "fail-on", "title": "Fail-on rules"}] if fail_on else []
    sections += [{"id": c["id"], "title": c["title"]} for c in checks]
    sections += [{"id": "run", "title": "Model, data and run"}]
    return {
        "title": f"vlmops audit: {data.get('spec') or 'data set'}",
        "subtitle": f"schema {payload.get('schema', '?')}",
        "meta": meta,
        "sections": sections,
        "generator": f"vlmops {__version__}",
        "checks": checks,
        "findings_plot": plot,
        "totals": totals,
        "fail_on": fail_on,
        "failed": count_fired(fail_on),
        "model": model,
        "data": data,
        "timing": _mapping(payload, "timing_seconds"),
        "thumbnails": {"used": thumbs.used, "limit": thumbs.limit},
    }


def render_audit_html(payload: dict, images: Mapping[str, str] | None = None) -> str:
    """The audit report as one self-contained HTML document (the payload is only read)."""
    return render("audit.html.j2", **audit_context(payload, images))


def write_audit_html(payload: dict, path: Path, images: Mapping[str, str] | None = None) -> None:
    """Render the audit report and write it to `path` atomically (parent folders created)."""
    write_html(render_audit_html(payload, images), path)
