"""A "Datasheets for Datasets" markdown card, prefilled from the manifest and an audit report.

Everything vlmops can compute is filled in (composition, splits, labels, slices, sources, licences,
known issues, PII found); questions only the data's owner can answer are left as **Owner:** lines.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pandas as pd
from jinja2 import Environment, PackageLoader

from vlmops.audit.provenance import WHAT, licence_flags

ISSUE_METRICS = {
    "duplicates": ("exact_dup_rate", "near_dup_rate", "n_clusters"),
    "leakage": ("leakage", "leakage_rate"),
    "labels": ("label_issues", "label_issue_rate"),
    "alignment": ("misaligned", "misaligned_rate"),
    "quality": ("quality_issues", "quality_issue_rate"),
    "poisoning": ("backdoor_suspects", "patch_groups"),
    "provenance": ("hash_mismatches", "no_source"),
}


def _md(value: object) -> str:
    """Text safe inside a markdown table cell or list item."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("vlmops.report", "templates"),
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md"] = _md
    return env


def _labels(frame: pd.DataFrame, tier_names: list[str]) -> dict | None:
    labels = [x for x in frame["label"] if x is not None]
    if not labels:
        return None
    tiers = [
        {"name": name, "n_classes": len({"/".join(x.split("/")[: d + 1]) for x in labels})}
        for d, name in enumerate(tier_names)
    ]
    top = Counter(labels).most_common(10)
    return {
        "n_labelled": len(labels),
        "tiers": tiers,
        "top": top,
        "tiers_text": ", ".join(f"{_md(t['name'])}: {t['n_classes']} classes" for t in tiers),
        "top_text": ", ".join(f"{_md(label)} ({count})" for label, count in top),
    }


def _issues(audit: dict | None) -> list[dict]:
    issues = []
    for check, names in ISSUE_METRICS.items():
        result = (audit or {}).get("checks", {}).get(check)
        if not result or "skipped" in result:
            continue
        shown = ", ".join(
            f"{k} = {result['metrics'][k]:.4g}" for k in names if result["metrics"].get(k) is not None
        )
        examples = [f["record_id"] for f in result["findings"][:5]]
        text = shown + (f" (e.g. {', '.join(examples)})" if examples else "")
        issues.append({"check": check, "text": text})
    return issues


def data_card(
    frame: pd.DataFrame,
    name: str,
    dataset_version: str,
    fields: list[str],
    tier_names: list[str],
    audit: dict | None = None,
    min_n: int = 30,
) -> str:
    """The markdown card for `frame`, using the audit report dict (schema vlmops.audit/1) when given."""
    from vlmops import __version__

    checks = (audit or {}).get("checks", {})
    provenance = checks.get("provenance", {}).get("details", {})
    licences = frame["licence"].fillna("(none)").astype(str) if "licence" in frame.columns else None
    licence_rows = [
        {"licence": lic, "n": int(n), "flags": licence_flags(lic)}
        for lic, n in (licences.value_counts().items() if licences is not None else [("(none)", len(frame))])
    ]
    flags = sorted({f for row in licence_rows for f in row["flags"]})
    attributes = {f: frame[f].astype(str).value_counts().to_dict() for f in fields}
    balance = checks.get("balance", {})
    pii = checks.get("pii", {}).get("metrics", {})
    found = {
        k.removeprefix("pii_"): v for k, v in pii.items() if k.startswith("pii_") and v and k != "pii_rate"
    }
    return (
        _environment()
        .get_template("data_card.md.j2")
        .render(
            name=name,
            version=__version__,
            created=datetime.now(UTC).date().isoformat(),
            audit_created=(audit or {}).get("created"),
            n=len(frame),
            n_with_text=int(sum(1 for t in frame["texts"] if t is not None and len(t))),
            dataset_version=dataset_version,
            splits=frame["split"].fillna("(none)").value_counts().to_dict(),
            labels=_labels(frame, tier_names),
            attributes=attributes,
            attribute_lines=[
                f"**{_md(field)}**: " + " · ".join(f"{_md(value)} {count}" for value, count in counts.items())
                for field, counts in attributes.items()
            ],
            under_represented=[f["record_id"].removeprefix("group:") for f in balance.get("findings", [])][
                :30
            ],
            min_n=min_n,
            sources=provenance.get("by_source") or _sources(frame),
            licences=licence_rows,
            licence_lines=[
                f"`{_md(row['licence'])}`: {row['n']} records"
                + (f" — **{', '.join(row['flags'])}**" if row["flags"] else "")
                for row in licence_rows
            ],
            licence_notes=[f"{flag.replace('_', ' ')}: {WHAT[flag]}" for flag in flags],
            issues=_issues(audit),
            pii=found,
            pii_text=", ".join(f"{_md(kind)} {count}" for kind, count in found.items()),
        )
    )


def _sources(frame: pd.DataFrame) -> list[dict]:
    if "source" not in frame.columns:
        return [{"source": "(not recorded)", "licence": "", "n": len(frame)}]
    table = frame.assign(source=frame["source"].fillna("(none)"), licence=frame.get("licence", "(none)"))
    grouped = table.groupby(["source", "licence"]).size()
    return [{"source": s, "licence": lic, "n": int(n)} for (s, lic), n in grouped.items()]
