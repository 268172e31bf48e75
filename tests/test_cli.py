"""The `vlmops` command: groups, --json output, exit codes, and the README's promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vlmops.cli import app
from vlmops.data.emoji import manifest_path

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
needs_emoji = pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_help_lists_exactly_the_groups_that_exist():
    import typer

    result = invoke("--help")
    assert result.exit_code == 0
    registered = set(typer.main.get_command(app).commands)
    assert registered == {
        "data",
        "models",
        "train",
        "embed",
        "demo",
        "eval",
        "export",
        "audit",
        "serve",
        "calibrate",
        "keys",
        "index",
        "registry",
        "gate",
        "monitor",
        "retrain",
    }, "no placeholder commands"
    assert all(name in result.output for name in registered)


def test_import_vlmops_is_light():
    heavy = "('torch', 'transformers', 'pandas')"
    code = f"import sys, vlmops, vlmops.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_models_list_json():
    result = invoke("models", "list", "--json", "-")
    assert result.exit_code == 0
    rows = json.loads(result.stdout[result.stdout.index("[") :])
    assert {"builtin:emoji-lit", "hf:<target>", "open_clip:<target>"} <= {r["uri"] for r in rows}


def test_models_info_reports_identity():
    result = invoke("models", "info", "builtin:emoji-lit", "--json", "-")
    assert result.exit_code == 0
    info = json.loads(result.stdout[result.stdout.index("{") :])
    assert info["dim"] == 384 and len(info["weights_sha256"]) == 64 and info["logit_scale"] > 0
    assert info["capabilities"] == {"embed": True, "generate": False, "logprobs": False, "gradients": True}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("models", "info", "foo:bar"), "unknown model scheme 'foo'"),
        (("models", "info", "hf:/does/not/exist"), "/does/not/exist"),
        (("data", "fetch", "imagenet"), "only fetchable data set is 'emoji'"),
        (("data", "info", "--data", "/no/such/manifest.jsonl"), "/no/such/manifest.jsonl"),
    ],
)
def test_bad_input_is_one_red_line_and_exit_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in result.output


def test_data_info_on_an_image_folder(tmp_path):
    for name in ("cat/a.png", "cat/b.png", "dog/c.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), "red").save(tmp_path / name)
    out = tmp_path / "info.json"
    result = invoke("data", "info", "--data", str(tmp_path), "--json", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["n"] == 3


@needs_emoji
def test_data_info_on_emoji_counts_slices(tmp_path):
    out = tmp_path / "info.json"
    assert invoke("data", "info", "--json", str(out)).exit_code == 0
    counts = json.loads(out.read_text())["counts"]
    assert counts["vendor"]["facebook"] == 3645
    assert set(counts["skin_tone"]) >= {"none", "light", "medium-light", "medium", "medium-dark", "dark"}
    assert {"man", "woman", "person"} <= set(counts["gender"])


@needs_emoji
def test_demo_runs_end_to_end_and_passes_the_bar(tmp_path):
    out = tmp_path / "demo.json"
    result = invoke(
        "demo", "--no-loop", "--store", str(tmp_path / "s.sqlite"), "--no-progress", "--json", str(out)
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())["report"]
    assert all(bar["passed"] for bar in report["bars"].values())
    assert "unseen_concepts_top1" in result.output


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    commands = [line.split("#")[0].strip() for line in lines[2:4]]
    assert lines[1] == "```bash" and commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile and "\ndemo: setup" in makefile and "\ntest: setup" in makefile


@needs_emoji
def test_train_writes_a_loadable_model_and_card(tmp_path):
    """One epoch of the real recipe through the CLI (about a minute and a half on 2 cores)."""
    from vlmops.models import load_model

    out, report = tmp_path / "model", tmp_path / "card.json"
    result = invoke(
        "train", "--out", str(out), "--epochs", "1", "--no-evaluate", "--no-progress", "--json", str(report)
    )
    assert result.exit_code == 0, result.output
    card = json.loads(report.read_text())
    assert card["training"]["best_epoch"] == 1 and len(card["training"]["history"]) == 1
    assert card["data"]["training_image_licences"] == {"google": "Apache-2.0", "twitter": "CC-BY-4.0"}
    model = load_model(f"builtin:emoji-lit@{out}")
    assert model.info.weights_sha256 == card["weights_sha256"]
