"""The audit HTML report: self-contained, escaped, well-formed, with capped inline thumbnails."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from PIL import Image

from html_check import TagBalance
from vlmops.audit.findings import CheckResult, Finding
from vlmops.audit.run import AuditReport
from vlmops.report import audit_html
from vlmops.report.audit_html import render_audit_html, write_audit_html

EVIL = "<img src=x onerror=alert(1)>"
THUMB = re.compile(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" width="(\d+)" height="(\d+)"')
IDS = [f"r{i:03d}" for i in range(40)]
# Real thumbnails expected: provenance 2 warnings, quality 10 (after 2 unreadable errors), duplicates 12
# offenders + 20 clusters (6 + 19 * 2 members), pii 1 (the injection id); everything else is a placeholder.
EXPECTED_THUMBS = 2 + 10 + 12 + 6 + 19 * 2 + 1


def write_images(folder: Path) -> dict[str, str]:
    """Small PNGs (some with alpha, one wide), plus a missing and an unreadable file."""
    folder.mkdir()
    images = {}
    for i, rid in enumerate(IDS):
        size = (300, 150) if i == 0 else (16, 16)
        mode, colour = ("RGBA", (i * 6, 0, 200, 128)) if i % 2 else ("RGB", (i * 6, 100, 0))
        path = folder / f"{rid}.png"
        Image.new(mode, size, colour).save(path)
        images[rid] = str(path)
    (folder / "broken.png").write_text("not an image", encoding="utf-8")
    images["r_broken"] = str(folder / "broken.png")
    images["r_missing"] = str(folder / "nope.png")
    images[EVIL] = images["r005"]
    for i in range(1, 25):  # near-duplicate pairs reuse the files
        images[f"n{i}a"], images[f"n{i}b"] = images[IDS[i % 40]], images[IDS[(i + 7) % 40]]
    return images


def checks() -> dict[str, CheckResult]:
    """Realistic check results: errors, warnings, group findings, clusters, a skip and many infos."""
    prov = CheckResult("provenance", metrics={"hash_mismatches": 1, "no_source": 2})
    prov.findings.append(
        Finding("r_missing", "provenance", "hash_mismatch", "error", "file changed", {"file_sha256": "ab"})
    )
    prov.findings += [Finding(r, "provenance", "no_source", "warning", "no source") for r in ("r001", "r002")]
    prov.details = {
        "dataset_version": "sha256:feed",
        "by_source": [{"source": "web", "licence": "CC-BY-NC", "n": 40, "flags": ["non_commercial"]}],
    }
    quality = CheckResult("quality", metrics={"quality_issues": 16, "quality_issue_rate": 0.4})
    quality.findings += [
        Finding(r, "quality", "unreadable", "error", f"cannot read {r}", {"path": r})
        for r in ("r_broken", "r_missing")
    ]
    quality.findings += [
        Finding(r, "quality", "blurry", "warning", "blurry", {"sharpness": 1.5, "robust_z": -4.0})
        for r in IDS[3:17]
    ]
    quality.findings.append(Finding("r003", "quality", "dark", "warning", "dark", {"brightness": 3.0}))
    quality.details = {"thresholds": {"z": 3.5, "tiny_side": 32}, "n_records": 42, "n_readable": 40}
    quality.notes.append("2 files could not be read")
    clusters = [{"ids": IDS[:8], "kind": "exact", "sha256": "cafe"}]
    clusters += [{"ids": [f"n{i}a", f"n{i}b"], "kind": "near", "max_distance": 4} for i in range(1, 25)]
    dup = CheckResult("duplicates", metrics={"exact_dup_rate": 0.175, "near_dup_rate": 0.5, "n_clusters": 25})
    dup.details = {"clusters": clusters, "hash": "phash", "max_hamming": 6}
    other = {"distance": 9, "cluster": ["zz", "n1a"]}  # n1a's finding for a cluster not in the list
    dup.findings.append(Finding("n1a", "duplicates", "near_duplicate", "warning", "duplicate", other))
    for c in clusters:
        kind = f"{c['kind']}_duplicate"
        for rid in c["ids"]:
            evidence = {"distance": 0 if c["kind"] == "exact" else 3, "cluster": c["ids"]}
            dup.findings.append(Finding(rid, "duplicates", kind, "warning", "duplicate", evidence))
    balance = CheckResult("balance", metrics={"small_groups": 1})
    balance.findings.append(
        Finding("group:vendor=tiny", "balance", "small_group", "warning", "only 3 records", {"n": 3})
    )
    balance.findings.append(Finding("group:vendor=google", "balance", "group", "info", "ok", {"n": 37}))
    balance.details = {
        "counts": {"vendor": {"google": 37, "tiny": 3}, "category": {"food": 20, "flags": 20}},
        "by_split": {"train": {"n": 30, "share": 0.75}, "test": {"n": 10, "share": 0.25}},
    }
    pii = CheckResult("pii", metrics={"pii_records": 2})
    pii.findings.append(Finding(EVIL, "pii", "email", "error", f"email in {EVIL}", {"match": EVIL}))
    pii.findings.append(Finding("r_noimg", "pii", "face", "warning", "face found"))
    poison = CheckResult("poisoning", metrics={"backdoor_suspects": 0})
    poison.findings += [Finding(f"p{i}", "poisoning", "patch", "info", "small patch") for i in range(250)]
    return {
        "provenance": prov,
        "quality": quality,
        "duplicates": dup,
        "leakage": CheckResult("leakage", metrics={"leakage": 0, "leakage_rate": 0.0}),
        "labels": CheckResult("labels", skipped="no --model given: label issues need embeddings"),
        "balance": balance,
        "pii": pii,
        "poisoning": poison,
    }


def make_payload(images: dict[str, str]) -> dict:
    report = AuditReport(
        meta={
            "created": "2026-01-01T00:00:00+00:00",
            "data": {"spec": "emoji", "n": 42, "slice_fields": ["vendor"]},
            "model": None,
            "checks_run": ["provenance", "quality", "duplicates", "leakage", "labels", "alignment"],
            "timing_seconds": {"provenance": 0.1, "quality": 2.5},
        },
        checks=checks(),
    )
    payload = report.to_dict()
    payload["fail_on"] = [
        {"rule": "near_dup_rate>0.1", "metric": "near_dup_rate", "value": 0.5, "fired": True,
         "reason": "fired: near_dup_rate=0.5 > 0.1"},
        {"rule": "leakage>0", "metric": "leakage", "value": 0, "fired": False,
         "reason": "not fired: leakage=0 not > 0"},
    ]  # fmt: skip
    payload["images"] = images
    return payload


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_payload(write_images(tmp_path_factory.mktemp("audit") / "img"))


@pytest.fixture(scope="module")
def html(payload: dict) -> str:
    before = copy.deepcopy(payload)
    text = render_audit_html(payload)
    assert payload == before, "rendering must not modify the payload"
    return text


def test_document_is_self_contained(html: str) -> None:
    refs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', html)
    assert refs
    assert all(r.startswith(("#", "data:image/png;base64,")) for r in refs), [r[:40] for r in refs]
    assert not re.search(r"<script|<link|@import|url\(\s*['\"]?(?:https?:)?//", html, re.IGNORECASE)
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert html.count("<svg") == 1 and '<figure class="plot" data-kind="findings">' in html


def test_document_is_well_formed(html: str) -> None:
    assert html.startswith("<!DOCTYPE html>")
    parser = TagBalance()
    parser.feed(html)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    for tag in ("html", "head", "body", "header", "nav", "main"):
        assert parser.seen[tag] == 1, tag
    assert parser.seen["section"] == 2 + 9 + 1  # overview, fail-on, 9 checks (one missing), run


def test_injected_record_id_is_escaped(html: str) -> None:
    assert EVIL not in html and "onerror=alert(1)>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script" not in html.lower()


def test_thumbnails_are_inline_and_counted(html: str) -> None:
    sizes = [(int(w), int(h)) for w, h in THUMB.findall(html)]
    assert len(sizes) == EXPECTED_THUMBS
    assert all(max(s) <= 72 for s in sizes) and (72, 36) in sizes  # the 300x150 image
    assert html.count("data:image/png;base64,") == EXPECTED_THUMBS
    assert re.search(r'title="image file not found: [^"]*nope.png[^"]*">file not found</div>', html)
    assert re.search(r'title="cannot read image [^"]*broken.png[^"]*">unreadable image</div>', html)
    assert "no image path for this record" in html and "a group of records, not one image" in html
    offenders = re.findall(r'<div class="thumbs" data-kind="offenders">(.*?)\n</div>', html, re.DOTALL)
    assert [o.count("<figure") for o in offenders] == [3, 12, 12, 1, 2]  # prov, quality, dup, balance, pii


def test_thumbnails_are_capped(payload: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_html, "MAX_THUMBNAILS", 20)
    text = render_audit_html(payload)
    assert len(THUMB.findall(text)) == 20
    assert "thumbnail limit reached (20 per report)" in text


def test_images_argument_overrides_payload(payload: dict) -> None:
    text = render_audit_html(payload, images={})
    assert "data:image" not in text and "no image path for this record" in text


def test_clusters_side_by_side(html: str) -> None:
    clusters = re.findall(
        r'<div class="cluster" data-kind="(\w+)">\n<p>(.*?)</p>\n<div class="thumbs">(.*?)\n</div>\n</div>',
        html,
        re.DOTALL,
    )
    assert len(clusters) == 20 and "20 of 25 clusters shown" in html
    kind, about, members = clusters[0]
    assert (
        kind == "exact" and "8 records" in about and "Sha256: cafe" not in about and "sha256: cafe" in about
    )
    assert members.count('<figure class="thumb">') == 6 and "+2 more" in members
    assert "distance: 0" in members and "cluster:" not in members  # distance evidence, no id lists
    assert all(k == "near" and m.count("<figure") == 2 and "distance: 3" in m for k, _, m in clusters[1:])
    assert "distance: 9" not in clusters[1][2]  # a member's evidence comes from its own cluster's finding
    assert ".cluster .thumbs { flex-wrap: nowrap;" in html


def test_tables_notes_skips_and_fail_on(html: str) -> None:
    assert "Skipped: no --model given: label issues need embeddings" in html
    assert "Skipped: not in this report" in html  # alignment was run but has no result
    assert "2 files could not be read" in html
    assert "FAIL</span> 1 of 2 rules fired" in html
    assert "<code>near_dup_rate&gt;0.1</code>" in html and "not fired: leakage=0 not &gt; 0" in html
    assert "First 200 of 250 findings." in html and html.count("small patch") == 200
    assert "Sha256:feed" not in html and "sha256:feed" in html and "non_commercial" in html  # details
    assert '<th scope="row">google</th>' in html and "Google" not in html  # per-field counts, values as is
    assert '<th scope="row">Dataset version</th>' in html and "<h2>PII (personal data)</h2>" in html
    assert "<th>Share</th>" in html  # a dict of like dicts becomes one table
    assert "none (model checks skipped)" in html and "emoji · 42 records · slices: vendor" in html
    assert re.search(r'<a href="#check-quality">quality</a></td>\s*<td>ran</td>', html)
    assert "<code>quality_issues</code> 16; <code>quality_issue_rate</code> 0.4" in html


def test_minimal_payload_renders() -> None:
    text = render_audit_html({"checks": {"pii": {"skipped": "no OCR engine"}}})
    assert "Skipped: no OCR engine" in text and "<svg" not in text and "data:image" not in text
    parser = TagBalance()
    parser.feed(text)
    assert parser.errors == [] and parser.stack == []


def test_write_creates_parents_atomically(payload: dict, tmp_path: Path) -> None:
    before = copy.deepcopy(payload)
    target = tmp_path / "deep" / "er" / "audit.html"
    write_audit_html(payload, target)
    assert payload == before and "images" in payload
    text = target.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and len(THUMB.findall(text)) == EXPECTED_THUMBS
    assert [p.name for p in target.parent.iterdir()] == ["audit.html"]
