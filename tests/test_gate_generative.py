"""The promotion gate for generative models: a paired test on per-item scores (CIDEr-D per caption,
exact match per answer), checked against scipy and by hand, on the shipped captioner and a broken one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from vlmops.cli import app
from vlmops.data.emoji import load_emoji_manifest, manifest_path
from vlmops.evaluate.generative import build_generative_task
from vlmops.models import load_model
from vlmops.models.base import Generation, ModelInfo, Usage
from vlmops.registry.evaluation import generative_report
from vlmops.registry.gate import GateError, gate
from vlmops.registry.gate_generative import paired_score_test

needs_emoji = pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")


class FixedAnswer:
    """A broken challenger: the same answer to every image and prompt."""

    def __init__(self, text: str = "grinning face"):
        self.text = text
        self.info = ModelInfo(name="fixed", version=f"fixed-{text}", dim=0, uri="test:fixed")

    def generate(self, images, prompts, *, max_tokens=32, temperature=0.0, seed=None, logprobs=False):
        return [Generation(self.text, "stop", Usage(10, 2), 0.001, token_logprobs=(-1.0,)) for _ in images]


def test_the_paired_statistic_matches_scipy_and_a_hand_count():
    rng = np.random.default_rng(3)
    base = rng.gamma(2.0, 1.5, 80)
    cand = base + rng.normal(-0.3, 1.0, 80)
    cand[:25] = base[:25]  # unchanged answers: zero differences, dropped
    result = paired_score_test(cand, base)
    reference = stats.wilcoxon(cand - base, zero_method="wilcox", alternative="less")
    assert result["statistic"] == pytest.approx(reference.statistic)
    assert result["p_worse"] == pytest.approx(reference.pvalue)
    assert result["changed"] == 55 and result["worse"] + result["better"] == 55
    diff = cand - base
    assert result["mean_difference"] == pytest.approx(diff.mean())
    low, high = result["ci95"]
    assert low < diff.mean() < high
    # six items, each worse by a different amount: W+ = 0, and the exact one-sided p is 1/2**6
    hand = paired_score_test([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 1.2, 1.4, 1.6, 1.8, 2.0])
    assert hand["statistic"] == 0.0 and hand["p_worse"] == pytest.approx(1 / 64)
    # clusters (an image's questions) are averaged first: the test ranks images (c: the changes cancel)
    clustered = paired_score_test([0, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 0], ["a", "a", "b", "b", "c", "c"])
    assert (clustered["n"], clustered["items"], clustered["worse"], clustered["changed"]) == (3, 6, 1, 1)
    assert clustered["mean_difference"] == pytest.approx((-1 + 0 + 0) / 3)
    same = paired_score_test([1.0, 0.0, 3.0], [1.0, 0.0, 3.0])
    assert (same["p_worse"], same["changed"], same["ci95"]) == (1.0, 0, [0.0, 0.0])


@pytest.fixture(scope="module")
def caption_task():
    manifest = load_emoji_manifest()
    test = manifest[(manifest["split"] == "test") & (manifest["vendor"] == "google")]
    return build_generative_task(test.sample(60, random_state=0), "emoji", "caption", split="all")


@needs_emoji
def test_a_fixed_caption_fails_and_the_champion_against_itself_passes(caption_task, tmp_path):
    store = str(tmp_path / "store.sqlite")
    champion = generative_report(load_model("builtin:emoji-captioner"), caption_task, store)
    again = generative_report(load_model("builtin:emoji-captioner"), caption_task, store)
    broken = generative_report(FixedAnswer(), caption_task, store)
    assert champion["schema"] == "vlmops.geneval/1" and len(champion["items"]["cider_d"]) == 60
    assert champion["data"]["dataset_version"]
    equal = gate(again, champion)
    assert equal.passed and equal.paired["metric"] == "cider_d" and equal.paired["changed"] == 0
    worse = gate(broken, champion)
    assert not worse.passed and worse.paired["p_worse"] < 1e-6, worse.to_dict()
    assert {c.rule: c.passed for c in worse.checks}["paired_wilcoxon_p_worse>=0.05"] is False
    assert worse.paired["ci95"][1] < 0  # the whole interval says the challenger is worse
    reverse = gate(champion, broken)  # the real model replacing the broken one passes
    assert reverse.passed and reverse.paired["p_better"] < 1e-6
    # the CLI gates the reports (files or registry versions) with the same exit codes as classification
    paths = {}
    for name, report in (("champion", champion), ("broken", broken), ("again", again)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(report))
    run = lambda cand: CliRunner().invoke(  # noqa: E731
        app, ["gate", "--candidate", str(paths[cand]), "--baseline", str(paths["champion"])]
    )
    assert run("again").exit_code == 0
    failed = run("broken")
    assert failed.exit_code == 1 and "paired_wilcoxon" in failed.output


@needs_emoji
def test_vqa_gates_on_exact_match_and_mismatched_reports_are_refused(tmp_path):
    manifest = load_emoji_manifest()
    test = manifest[(manifest["split"] == "test") & (manifest["vendor"] == "twitter")]
    rows = test.sample(20, random_state=1)
    task = build_generative_task(rows, "emoji", "vqa", split="all")
    store = str(tmp_path / "store.sqlite")
    champion = generative_report(load_model("builtin:emoji-captioner"), task, store)
    broken = generative_report(FixedAnswer("no"), task, store)
    decision = gate(broken, champion)
    assert decision.paired["metric"] == "exact_match" and not decision.passed
    assert (decision.paired["n"], decision.paired["items"]) == (20, task.n)  # 20 images, their questions
    asked = gate(broken, champion, rules="cider_d_drop<=0.1")  # no CIDEr-D for answers: a failed check
    assert asked.checks[0].passed is False and "cider_d missing" in asked.checks[0].note
    tolerant = gate(champion, champion, rules="exact_match_drop<=0,vqa_accuracy_drop<=0")
    assert tolerant.passed and len(tolerant.checks) == 3
    with pytest.raises(GateError, match="different tasks"):
        gate(broken, {**champion, "task": "caption"})
    with pytest.raises(GateError, match="different items"):
        gate(broken, {**champion, "items": {**champion["items"], "ids": champion["items"]["ids"][::-1]}})
    with pytest.raises(GateError, match="dual encoder"):
        gate(broken, {"schema": "vlmops.eval/1", "headline": {}, "items": {}})
