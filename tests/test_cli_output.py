"""What the CLI tells people: where results go, how rules and gates read, cards that render, hints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from markdown_it import MarkdownIt
from typer.testing import CliRunner

from vlmops.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def vlmops(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    """The real console script with stdout and stderr piped (not terminals), as in `vlmops ... > file`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "VLMOPS_HOME": str(tmp / "home")}
    env.pop("COLUMNS", None)
    code = "import sys; from vlmops.cli import main; sys.argv[0] = 'vlmops'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)


# --- item 18: results on stdout at full width, progress and logs on stderr -----------------------------


def test_results_go_to_stdout_uncut_when_piped(tmp_path: Path) -> None:
    from vlmops.registry.store import Registry

    store = str(tmp_path / "s.sqlite")
    long_a = "emoji-lit-5e74a0c1d2e3f40516273849abcdef0123456789-retrained-on-feedback-a"
    long_b = long_a[:-1] + "b"  # differs only in the last character
    registry = Registry(store)
    registry.register(long_a, "builtin:emoji-lit", "w1")
    registry.register(long_b, "builtin:emoji-lit", "w2")
    listed = vlmops("registry", "list", "--store", store, tmp=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert long_a in listed.stdout and long_b in listed.stdout, listed.stdout
    assert "…" not in listed.stdout and long_a not in listed.stderr
    as_json = vlmops("registry", "list", "--store", store, "--json", "-", tmp=tmp_path)
    assert {r["version"] for r in json.loads(as_json.stdout)} == {long_a, long_b}  # stdout: one JSON doc
    assert long_a in as_json.stderr  # the table moved out of JSON's way


def test_data_info_table_can_be_redirected(tmp_path: Path, png_writer) -> None:
    for i, cls in enumerate(["a_class_with_a_rather_long_name_that_used_to_be_cut_at_80_columns", "b"] * 2):
        png_writer(tmp_path / "folder" / cls / f"{i}.png", seed=i)
    info = vlmops("data", "info", "--data", str(tmp_path / "folder"), tmp=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "4 records" in info.stdout and "count" in info.stdout and info.stderr == ""
    bad = vlmops("data", "info", "--data", str(tmp_path / "missing"), tmp=tmp_path)
    assert bad.returncode == 2 and "error:" in bad.stderr and bad.stdout == ""  # errors stay on stderr


# --- item 14: --fail-on rules are failure conditions that fire --------------------------------------


def test_rule_reasons_say_fired_or_not_fired() -> None:
    from vlmops.report.rules import check_rules, parse_rules

    passing, failing, unmeasured = check_rules(
        parse_rules("top1<0.5,top1<0.7,ece>0.1"), {"top1": 0.625, "ece": None}
    )
    assert (passing.fired, failing.fired, unmeasured.fired) == (False, True, True)
    assert passing.reason == "not fired: top1=0.625 not < 0.5"
    assert failing.reason == "fired: top1=0.625 < 0.7"
    assert unmeasured.reason.startswith("fired: ece not measured")
    assert passing.to_dict()["fired"] is False and "violated" not in passing.to_dict()
    for r in (passing, failing, unmeasured):
        assert "meets" not in r.reason and "violates" not in r.reason


def test_rules_read_the_same_in_the_eval_and_audit_html(tmp_path: Path) -> None:
    from vlmops.report.audit_html import write_audit_html
    from vlmops.report.eval_html import write_eval_html
    from vlmops.report.rules import check_rules, parse_rules

    results = [r.to_dict() for r in check_rules(parse_rules("top1<0.5"), {"top1": 0.625})]
    eval_page = tmp_path / "e.html"
    write_eval_html({"schema": "vlmops.eval/1", "headline": {"top1": 0.625}, "fail_on": results}, eval_page)
    audit_page = tmp_path / "a.html"
    write_audit_html(
        {"schema": "vlmops.audit/1", "checks": {}, "metrics": {}, "fail_on": results}, audit_page
    )
    for page in (eval_page, audit_page):
        html = page.read_text()
        assert "PASS</span> no rule fired (1 checked)" in html
        assert "not fired: top1=0.625 not &lt; 0.5" in html
        assert "rules met" not in html and "meets" not in html


# --- item 15: the gate's default rules follow the sections both reports have ------------------------


def quick_report(top1: float, correct: list[int]) -> dict:
    skipped = {"skipped": "not in the quick suite (use --suite standard or full)"}
    return {
        "schema": "vlmops.eval/1",
        "suite": "quick",
        "headline": {"top1": top1, "ece": 0.05, "worst_slice_top1": 0.4, "corruption_top1": None},
        "robustness": skipped,
        "items": {"ids": [str(i) for i in range(len(correct))], "correct": correct},
    }


def test_gate_on_quick_reports_uses_the_rules_both_can_answer(tmp_path: Path) -> None:
    from vlmops.registry.gate import gate

    correct = [1, 0] * 50
    cand, base = quick_report(0.5, correct), quick_report(0.5, correct)
    decision = gate(cand, base)
    assert decision.passed, decision
    assert [c.rule for c in decision.checks][:3] == [
        "top1_drop<=0.01",
        "worst_slice_drop<=0.02",
        "ece_increase<=0.02",
    ]
    (left_out,) = decision.not_checked
    assert left_out.startswith("robustness_drop<=0.02") and "--suite standard or full" in left_out
    explicit = gate(cand, base, "robustness_drop<=0.02")
    assert not explicit.passed
    note = explicit.checks[0].note
    assert "candidate report (suite quick" in note and "--suite standard or full" in note
    (tmp_path / "c.json").write_text(json.dumps(cand))
    (tmp_path / "b.json").write_text(json.dumps(base))
    result = invoke("gate", "--candidate", str(tmp_path / "c.json"), "--baseline", str(tmp_path / "b.json"))
    assert result.exit_code == 0, result.output
    assert "not checked robustness_drop" in result.output and "gate passed" in result.output


# --- item 16: the data card is valid Markdown ----------------------------------------------------------


def test_data_card_renders_tables_lists_and_paragraphs() -> None:
    from vlmops.audit.card import data_card

    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(6)],
            "texts": [["a caption"]] * 6,
            "label": ["a/x", "a/y", "b/z", "a/x", "a/y", "b/z"],
            "split": ["train", "train", "test", "train", "val", "test"],
            "vendor": ["google"] * 4 + ["twitter"] * 2,
            "licence": ["CC-BY-SA-4.0"] * 3 + ["Apache-2.0", "MIT", "MIT"],
            "source": ["s1"] * 6,
        }
    )
    audit = {
        "schema": "vlmops.audit/1",
        "created": "2026-01-01",
        "checks": {
            "balance": {"findings": [{"record_id": "group:vendor=twitter"}, {"record_id": "group:label=b"}]},
            "pii": {"metrics": {"pii_email": 2}},
        },
    }
    text = data_card(frame, "tiny", "abc123", ["vendor"], ["level1", "level2"], audit, min_n=3)
    html = MarkdownIt("commonmark").enable("table").render(text)
    assert html.count("<table>") == 2  # splits, sources
    assert '<td>train</td>\n<td style="text-align:right">3</td>' in html
    assert "<td>s1</td>" in html
    assert "<p><strong>vendor</strong>: google 4 · twitter 2</p>" in html  # its own paragraph
    assert "<li>vendor=twitter</li>\n<li>label=b</li>\n</ul>" in html  # a list of its own ...
    assert "<ul>\n<li><strong>Owner:</strong> Does the data identify" in html  # ... not merged with this one
    licences = html.split("Distribution and licences</h2>")[1].split("</ul>")[0]
    assert licences.count("<li>") == 3 and "<code>CC-BY-SA-4.0</code>: 3 records" in licences
    assert "<p>Personal data found: email 2.</p>" in html
    assert "|" not in html.replace("\\|", "")  # no table row left as text


# --- item 19: readable history, alias changes, hub ids and useless conformal sets ---------------------


def test_monitor_history_shows_dates_and_fired_alerts(tmp_path: Path) -> None:
    from vlmops.monitor.alerts import AlertRule, AlertStore
    from vlmops.monitor.run import MonitorReport, store_run

    store = str(tmp_path / "s.sqlite")
    metrics = {"drift.mmd.p_value": 0.001, "estimate.atc": 0.61}
    store_run(store, MonitorReport("v1", 200, metrics))
    rule = AlertRule("embedding drift", "drift.mmd.p_value", "<", 0.01)
    AlertStore(store).add(rule, 0.001, "v1", {}, at=time.time())
    result = invoke("monitor", "history", "--store", store)
    assert result.exit_code == 0, result.output
    assert time.strftime("%Y-%m-%d", time.gmtime()) in result.output
    assert "embedding drift" in result.output and "drift.mmd.p_value = 0.001" in result.output
    assert not any(part.isdigit() and len(part) >= 10 for part in result.output.split())  # no epoch seconds


def test_registry_alias_says_unset_rather_than_none(tmp_path: Path) -> None:
    from vlmops.registry.store import Registry

    store = str(tmp_path / "s.sqlite")
    Registry(store).register("v1", "builtin:emoji-lit", "w1")
    result = invoke("registry", "alias", "canary", "v1", "--store", store)
    assert result.exit_code == 0, result.output
    assert "canary: (unset) -> v1" in result.output and "None" not in result.output
    history = invoke("registry", "history", "--store", store)
    assert history.exit_code == 0 and "(unset)" in history.output and "None" not in history.output


def test_hf_hub_id_explains_that_nothing_is_downloaded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("models", "info", "hf:openai/clip-vit-base-patch32")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "Hugging Face Hub id" in text and "does not download" in text
    assert "save_pretrained('./models/clip-vit-base-patch32')" in text and "directory not found" not in text
    missing = invoke("models", "info", f"hf:{tmp_path / 'nowhere'}")  # a path stays a path
    assert missing.exit_code == 2 and "directory not found" in " ".join(missing.output.split())


def test_calibrate_warns_when_the_sets_are_uninformative(tmp_path: Path, png_writer) -> None:
    from vlmops.cli.serve import uninformative

    rows = []
    for i in range(120):  # noise images: the model cannot tell 40 classes apart
        path = png_writer(tmp_path / "img" / f"{i}.png", seed=i, size=24)
        rows.append(
            {"id": str(i), "image": str(path), "texts": [], "label": f"shape {i % 40}", "split": "val"}
        )
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "cal.json"
    result = invoke(
        "calibrate", "--data", str(manifest), "--out", str(out), "--store", str(tmp_path / "s.sqlite"),
        "--no-progress", "--json", str(tmp_path / "c.json"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "c.json").read_text())
    assert summary["uninformative"] and summary["mean_set_size"] > 4
    text = " ".join(result.output.split())
    assert "sets are uninformative" in text and f"{summary['mean_set_size']:.1f} of 40 labels" in text
    assert "--alpha" in text and "more data" in text
    assert not uninformative(1.3, 1923) and not uninformative(2.0, 4) and uninformative(3.0, 4)
    assert np.isclose(summary["threshold"], json.loads(out.read_text())["threshold"])


def test_monitor_reference_filter_narrows_the_reference(tmp_path: Path) -> None:
    """The README's `--reference-filter 'vendor=google,twitter'` crashed on a read-only pandas array."""
    from eval_data import write_manifest
    from vlmops.cli.monitor import _parse_filter, build_reference
    from vlmops.models import load_model

    manifest = write_manifest(tmp_path / "shapes", per_class=12)
    where = _parse_filter("style=flat")
    reference = build_reference(
        load_model("builtin:emoji-lit"), str(manifest), "test", where, None, str(tmp_path / "s.sqlite"), False
    )
    assert len(reference.targets) == len(pd.read_json(manifest, lines=True).query("style == 'flat'"))


def test_audit_rule_on_a_check_not_run_says_which_checks_ran(tmp_path: Path, png_writer) -> None:
    for i in range(4):
        png_writer(tmp_path / "folder" / f"c{i % 2}" / f"{i}.png", seed=i)
    args = ("audit", "--data", str(tmp_path / "folder"), "--checks", "pii", "--no-progress")
    result = invoke(*args, "--fail-on", "leakage>0")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "unknown metric 'leakage'" in text
    assert "(from the checks run: pii)" in text and "needs it in --checks (provenance," in text
    assert invoke(*args, "--fail-on", "pii>>0").exit_code == 2  # syntax: refused before the audit runs
