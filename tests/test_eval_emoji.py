"""Eval on the real emoji test split with the shipped model: conformal coverage, membership rows, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vlmops.cli import app
from vlmops.data.emoji import manifest_path

pytestmark = pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("emoji-store") / "store.sqlite")


@pytest.fixture(scope="module")
def emoji_eval(store: str):
    from vlmops.data.emoji import load_emoji_manifest
    from vlmops.evaluate.context import EvalContext
    from vlmops.evaluate.task import build_task
    from vlmops.models import load_model
    from vlmops.store.cache import open_cache

    manifest = load_emoji_manifest()
    task = build_task(manifest, "emoji")
    model = load_model("builtin:emoji-lit")
    with open_cache(store) as cache:
        ctx = EvalContext(model, task, cache, progress=False)
        logits = ctx.logits(ctx.image_emb)
    return manifest, model, task, logits


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_conformal_coverage_within_2pp_on_emoji_test_split(emoji_eval, alpha: float) -> None:
    from vlmops.evaluate.uncertainty import conformal_section

    _, _, task, logits = emoji_eval
    assert task.split == "test" and set(task.frame["vendor"]) == {"google", "twitter", "facebook", "openmoji"}
    vendor = task.frame["vendor"].to_numpy()
    result = conformal_section(logits, task.targets, {"vendor": vendor}, alpha, seed=0, mondrian_by="vendor")
    for method in ("lac", "aps", "mondrian_lac[vendor]"):
        assert abs(result[method]["coverage"] - (1 - alpha)) <= 0.02, (method, result[method]["coverage"])
    # Mondrian calibration holds coverage within each vendor, not only on average.
    for stats in result["mondrian_lac[vendor]"]["by_slice"]["vendor"].values():
        assert abs(stats["coverage"] - (1 - alpha)) <= 0.03
    assert result["lac"]["mean_set_size"] < len(task.classes)


def test_temperature_scaling_lowers_nll_on_held_out_half(emoji_eval) -> None:
    from vlmops.evaluate.uncertainty import calibration_section

    _, _, task, logits = emoji_eval
    result = calibration_section(logits, task.targets, seed=0)
    assert result["after"]["nll"] < result["before"]["nll"]
    assert result["n_calibration"] + result["n_test"] == task.n


def test_membership_rows_rebuild_the_training_set(emoji_eval) -> None:
    from vlmops.evaluate.privacy import training_membership

    manifest, model, _, _ = emoji_eval
    rows, info = training_membership(model.card, manifest)
    assert int(rows["member"].sum()) == model.card["data"]["n_train_images"]
    assert info["vendors"] == ["google", "twitter"]
    assert set(rows.loc[rows["member"] == 0, "group"]) == {"held_out_concepts", "held_out_drawings"}
    members = rows[rows["member"] == 1]
    assert not set(members["id"]) & set(rows.loc[rows["member"] == 0, "id"])
    changed = manifest.copy()
    changed.loc[changed.index[0], "sha256"] = "0" * 64
    assert "differs from the model's training data" in training_membership(model.card, changed)


def test_cli_quick_suite_on_emoji(emoji_eval, store: str, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["eval", "--suite", "quick", "--store", store, "--no-progress", "--json", str(out)]
    result = CliRunner().invoke(app, [*args, "--html", str(tmp_path / "r.html")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["cache"]["misses"] == 0  # the fixture embedded the split into the same store
    assert [t["tier"] for t in report["accuracy"]["tiers"]] == ["concept", "subcategory", "category"]
    tiers = {t["tier"]: t["top1"] for t in report["accuracy"]["tiers"]}
    assert tiers["concept"] <= tiers["subcategory"] <= tiers["category"]  # hierarchical credit only adds
    assert report["data"]["slice_fields"] == ["vendor", "category", "skin_tone", "gender"]
    _, _, task, logits = emoji_eval
    assert tiers["concept"] == pytest.approx(float(np.mean(logits.argmax(1) == task.targets)))
    assert (tmp_path / "r.html").stat().st_size > 10_000
