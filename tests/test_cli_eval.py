"""`vlmops eval` end to end: every section in the JSON, the HTML, fail-on exit codes, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval_data import write_manifest
from vlmops.cli import app

SECTIONS = (
    "accuracy",
    "calibration",
    "conformal",
    "slices",
    "batch_invariance",
    "robustness",
    "privacy",
    "efficiency",
)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("shapes"), per_class=10)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("store") / "store.sqlite")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def eval_args(manifest: Path, store: str, *extra: str) -> list[str]:
    return [
        "eval",
        "--data",
        str(manifest),
        "--store",
        store,
        "--no-progress",
        "--cluster-by",
        "concept",
        *extra,
    ]


@pytest.fixture(scope="module")
def standard(manifest: Path, store: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("out")
    result = invoke(
        *eval_args(
            manifest,
            store,
            "--suite",
            "standard",
            "--json",
            str(out / "r.json"),
            "--html",
            str(out / "r.html"),
        )
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "r.json").read_text()), out / "r.html"


def test_standard_suite_has_every_section(standard: tuple[dict, Path]) -> None:
    report, html = standard
    assert report["schema"] == "vlmops.eval/1"
    for section in SECTIONS:
        assert section in report, section
    assert report["data"]["n"] == 40 and report["data"]["n_classes"] == 4
    items = report["items"]  # per-item outcomes for the paired test in `vlmops gate`
    assert len(items["ids"]) == 40 and sum(items["correct"]) == round(40 * report["headline"]["top1"])
    assert [t["tier"] for t in report["accuracy"]["tiers"]] == ["level2", "level1"]
    robustness = report["robustness"]
    assert set(robustness) == {"corruptions", "text", "adversarial", "typographic"}
    assert len(robustness["corruptions"]["top1"]) == 15
    assert all(len(by_severity) == 5 for by_severity in robustness["corruptions"]["top1"].values())
    assert set(robustness["adversarial"]["pgd"]) == {"1/255", "2/255", "4/255"}
    assert "skipped" in report["privacy"]  # not the model's training data
    assert report["efficiency"]["images_per_s_batch64"] > 0
    assert report["batch_invariance"]["invariant"]
    assert [f["field"] for f in report["slices"]["fields"]] == ["style"]
    assert all(v is not None for k, v in report["headline"].items() if k != "mia_auc")
    text = html.read_text()
    assert text.count("<svg") >= 5 and "http://" not in text.split("xmlns")[0]


def test_rerun_uses_the_cache(
    manifest: Path, store: str, standard: tuple[dict, Path], tmp_path: Path
) -> None:
    out = tmp_path / "again.json"
    assert invoke(*eval_args(manifest, store, "--suite", "standard", "--json", str(out))).exit_code == 0
    again = json.loads(out.read_text())
    assert again["cache"]["misses"] == 0 and again["cache"]["hits"] > 2000  # identical files share keys
    first = standard[0]
    assert again["headline"]["corruption_top1"] == first["headline"]["corruption_top1"]
    assert again["robustness"]["adversarial"] == first["robustness"]["adversarial"]


@pytest.mark.parametrize(("rule", "code"), [("top1<1.01", 1), ("top1<0", 0), ("mia_auc>0.9", 1)])
def test_fail_on_exit_codes(manifest: Path, store: str, tmp_path: Path, rule: str, code: int) -> None:
    out = tmp_path / "r.json"
    result = invoke(*eval_args(manifest, store, "--suite", "quick", "--fail-on", rule, "--json", str(out)))
    assert result.exit_code == code, result.output
    (checked,) = json.loads(out.read_text())["fail_on"]
    assert checked["fired"] is bool(code)
    assert ("fired:" if code else "not fired:") in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--fail-on", "top1<<0.5"), "cannot parse --fail-on rule"),
        (("--fail-on", "accuracy<0.5"), "unknown metric 'accuracy'"),
        (("--labels", "species"), "unknown label tier 'species'"),
        (("--slice-fields", "colour"), "unknown slice field"),
        (("--split", "train"), "split 'train' not in the data"),
        (("--suite", "huge"), "unknown suite 'huge'"),
        (("--mondrian", "colour"), "is not a slice field"),
    ],
)
def test_bad_input_exits_2_with_a_message(manifest: Path, store: str, extra: tuple, message: str) -> None:
    result = invoke(*eval_args(manifest, store, "--suite", "quick", *extra))
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_missing_image_file_is_named(manifest: Path, store: str, tmp_path: Path) -> None:
    lines = manifest.read_text().splitlines()
    row = json.loads(lines[3])
    row["image"] = str(tmp_path / "gone.png")
    broken = tmp_path / "broken.jsonl"
    lines[3] = json.dumps(row)
    broken.write_text(
        "\n".join(line.replace('"image": "c', f'"image": "{manifest.parent}/c') for line in lines)
    )
    result = invoke(*eval_args(broken, store, "--suite", "quick"))
    assert result.exit_code == 2 and "line 4: image file not found" in " ".join(result.output.split())


def test_small_slices_and_intersections_warn(manifest: Path, store: str, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = invoke(
        *eval_args(
            manifest,
            store,
            "--suite",
            "quick",
            "--slices",
            "style,label",
            "--min-n",
            "15",
            "--json",
            str(out),
        )
    )
    assert result.exit_code == 0
    fields = {f["field"]: f for f in json.loads(out.read_text())["slices"]["fields"]}
    assert set(fields) == {"style", "style×label"}
    assert all("min_n=15" in s["warning"] for s in fields["style×label"]["slices"])
    assert "warning:" in result.output


def test_hf_model_directory(manifest: Path, tmp_path: Path) -> None:
    from hf_models import make_clip_dir

    model_dir = make_clip_dir(tmp_path / "hf")
    out = tmp_path / "hf.json"
    result = invoke(
        *eval_args(manifest, str(tmp_path / "s.sqlite"), "--model", f"hf:{model_dir}", "--suite", "standard"),
        "--json",
        str(out),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["model"]["uri"].startswith("hf:")
    assert set(report["robustness"]["adversarial"]["fgsm"]) == {"1/255", "2/255", "4/255"}
    assert report["batch_invariance"]["invariant"]


def test_attribute_with_no_values_is_one_missing_slice(manifest: Path, store: str, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        row["region"] = None
        row["image"] = str(manifest.parent / row["image"])
    empty = tmp_path / "empty-attr.jsonl"
    empty.write_text("\n".join(json.dumps(row) for row in rows))
    out = tmp_path / "r.json"
    result = invoke(
        *eval_args(empty, store, "--suite", "quick", "--slice-fields", "region,style", "--json", str(out))
    )
    assert result.exit_code == 0, result.output
    region = json.loads(out.read_text())["slices"]["fields"][0]
    assert region["field"] == "region" and [s["value"] for s in region["slices"]] == ["missing"]
    assert region["max_gap"] == 0 and region["note"]
