"""`vlmops audit`, `vlmops audit redact` and `vlmops data card` end to end on a small faulty data set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval_data import write_manifest
from vlmops.audit.run import CHECKS
from vlmops.cli import app


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 shapes with captions, plus an exact copy in train, a PII caption and a truncated PNG."""
    root = tmp_path_factory.mktemp("audit")
    manifest = write_manifest(root, per_class=10)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        row["texts"] = [f"a drawing of a {row['label'].split('/')[1]}"]
        row["licence"] = "CC-BY-4.0"
        row["source"] = "tests"
    shutil.copy(root / rows[0]["image"], root / "copy.png")
    rows.append({**rows[0], "id": "copy-of-c0-0", "image": "copy.png", "split": "train"})
    rows[5]["texts"] = ["mail jane.doe@example.org for the original"]
    (root / "broken.png").write_bytes((root / rows[1]["image"]).read_bytes()[:60])
    rows.append({**rows[1], "id": "broken", "image": "broken.png", "licence": "CC-BY-NC-4.0"})
    path = root / "faulty.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def audited(faulty: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("out")
    result = invoke(
        "audit", "--data", str(faulty), "--model", "builtin:emoji-lit", "--store", str(out / "s.sqlite"),
        "--no-progress", "--json", str(out / "a.json"), "--html", str(out / "a.html"),
        "--quarantine", str(out / "q.jsonl"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads((out / "a.json").read_text()), out


def findings(report: dict, check: str) -> list[dict]:
    return report["checks"][check]["findings"]


def test_every_check_runs_and_finds_the_planted_faults(audited: tuple[dict, Path]) -> None:
    report, _ = audited
    assert report["schema"] == "vlmops.audit/1" and set(report["checks"]) == set(CHECKS)
    assert not [name for name, c in report["checks"].items() if "skipped" in c]
    exact = [f for f in findings(report, "duplicates") if f["kind"] == "exact_duplicate"]
    assert {f["record_id"] for f in exact} & {"c0-0", "copy-of-c0-0"}
    leaked = {f["record_id"]: f for f in findings(report, "leakage")}  # test items with a train twin
    assert "c0-0" in leaked and "copy-of-c0-0" in json.dumps(leaked["c0-0"]["evidence"])
    assert "copy-of-c0-0" not in leaked  # the train copy itself is not a leak
    assert {(f["record_id"], f["kind"]) for f in findings(report, "pii")} == {("c0-5", "email")}
    assert ("broken", "truncated") in {(f["record_id"], f["kind"]) for f in findings(report, "quality")}
    licence = {(f["record_id"], f["kind"]) for f in findings(report, "provenance")}
    assert ("broken", "licence_non_commercial") in licence
    assert report["metrics"]["pii"] == 1 and report["metrics"]["leakage"] == len(leaked)


def test_quarantine_and_html(audited: tuple[dict, Path]) -> None:
    _, out = audited
    quarantined = [json.loads(line) for line in (out / "q.jsonl").read_text().splitlines()]
    ids = {q["record_id"] for q in quarantined}
    assert "broken" in ids
    kinds = {f["kind"] for q in quarantined for f in q["findings"]}
    assert "email" not in kinds and "truncated" in kinds  # errors only; an e-mail is a warning
    assert all(f["severity"] == "error" for q in quarantined for f in q["findings"])
    html = (out / "a.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html


@pytest.mark.parametrize(("rule", "code"), [("pii>0", 1), ("pii>5", 0), ("leakage>0", 1)])
def test_fail_on(faulty: Path, tmp_path: Path, rule: str, code: int) -> None:
    result = invoke(
        "audit",
        "--data",
        str(faulty),
        "--checks",
        "duplicates,leakage,pii",
        "--fail-on",
        rule,
        "--no-progress",
    )
    assert result.exit_code == code, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--checks", "spelling"), "unknown audit check(s) ['spelling']"),
        (("--fail-on", "pii>>0"), "cannot parse --fail-on rule"),
        (("--fail-on", "nonsense>0", "--checks", "pii"), "unknown metric 'nonsense'"),
        (("--ann-threshold", "-1"), "Invalid value for '--ann-threshold'"),
    ],
)
def test_bad_input_exits_2(faulty: Path, args: tuple, message: str) -> None:
    result = invoke("audit", "--data", str(faulty), "--no-progress", *args)
    assert result.exit_code == 2 and message in " ".join(result.output.split())


def test_ann_threshold_reaches_the_neighbour_searches(
    faulty: Path, audited: tuple[dict, Path], tmp_path: Path
) -> None:
    """--ann-threshold 0 sends every neighbour search through the index; on 40 records it has one list,
    so it finds what the exact search found."""
    report, out = audited
    args = ["--model", "builtin:emoji-lit", "--store", str(out / "s.sqlite"), "--checks", "labels,alignment"]
    result = invoke("audit", "--data", str(faulty), *args, "--ann-threshold", "0", "--no-progress",
                    "--json", str(tmp_path / "ann.json"))  # fmt: skip
    assert result.exit_code == 0, result.output
    ann = json.loads((tmp_path / "ann.json").read_text())
    assert ann["ann_threshold"] == 0 and report["ann_threshold"] == 50_000
    for check in ("labels", "alignment"):
        assert [(f["record_id"], f["kind"]) for f in findings(ann, check)] == [
            (f["record_id"], f["kind"]) for f in findings(report, check)
        ]


def test_without_a_model_embedding_checks_are_skipped(faulty: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    assert invoke("audit", "--data", str(faulty), "--no-progress", "--json", str(out)).exit_code == 0
    checks = json.loads(out.read_text())["checks"]
    assert "no --model" in checks["labels"]["skipped"] and "no --model" in checks["alignment"]["skipped"]
    assert "skipped" not in checks["duplicates"]


def test_redact_writes_a_clean_copy(faulty: Path, tmp_path: Path) -> None:
    out = tmp_path / "clean"
    before = faulty.read_bytes()
    result = invoke("audit", "redact", "--data", str(faulty), "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    text = (out / "manifest.jsonl").read_text()
    assert "jane.doe@example.org" not in text and "[EMAIL]" in text
    assert faulty.read_bytes() == before
    again = invoke("audit", "redact", "--data", str(faulty), "--out", str(out), "--no-progress")
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_data_card(faulty: Path, audited: tuple[dict, Path], tmp_path: Path) -> None:
    _, out = audited
    card = tmp_path / "card.md"
    result = invoke("data", "card", "--data", str(faulty), "--audit", str(out / "a.json"), "--out", str(card))
    assert result.exit_code == 0, result.output
    text = card.read_text()
    for heading in ("## Motivation", "## Composition", "## Collection process", "## Uses",
                    "## Distribution and licences", "## Known issues", "## Maintenance"):  # fmt: skip
        assert heading in text
    assert "**Owner:**" in text and "42** images" in text and "non_commercial" in text
    assert "leakage" in text and "email 1" in text
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = invoke("data", "card", "--data", str(faulty), "--audit", str(bad))
    assert result.exit_code == 2 and "not a vlmops audit report" in result.output
