"""The closed-loop demo on the real emoji data, at reduced traffic (a few minutes on 2 cores)."""

from __future__ import annotations

import pytest

from vlmops.data.emoji import manifest_path
from vlmops.demo import DemoSizes, run_loop, write_story
from vlmops.monitor.dashboard import dashboard_context

pytestmark = pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")


def test_the_loop_detects_retrains_gates_promotes_and_rolls_back(tmp_path):
    sizes = DemoSizes(
        reference=200, healthy=100, shifted=200, corrupted=50, held_out=200, canary=100, replay=256, epochs=2
    )
    results = run_loop(tmp_path, sizes, say=lambda text: None)
    phases = {p["phase"]: p for p in results["phases"]}
    assert phases["healthy traffic"]["alerts"] == []
    expected = {"embedding drift", "image statistics drift", "estimated accuracy drop"}
    assert set(phases["shifted traffic"]["alerts"]) == expected  # low-contrast images: image statistics
    shifted = phases["shifted traffic"]
    assert abs(shifted["estimated_accuracy"] - shifted["realised_accuracy"]) < 0.1  # before any label arrived
    assert results["retrain"]["feedback"]["model_label_refused"] == 20  # the feedback-loop guard
    assert results["gate"]["passed"] and results["gate"]["challenger_top1"] > results["gate"]["champion_top1"]
    assert results["champion"] == results["retrain"]["version"]  # promoted after a healthy canary
    assert results["rollback"]["alerts"] and results["rollback"]["after"] == [results["champion"]]
    kinds = [e["kind"] for e in results["history"] if e["alias"] in ("champion", "canary")]
    assert kinds.count("rollback") == 1 and kinds.count("promote") >= 2
    story = write_story(results, str(tmp_path / "store.sqlite"), tmp_path / "story.html").read_text()
    assert "What happened" in story and story.count("<svg") == 2 and "refused" in story
    assert 'id="generative-act"' in story and "--no-generative" in story  # the act did not run here
    # lineage: every version the loop registered names the data it learned from; gated ones their report's
    lineage = {row["version"]: row for row in results["lineage"]}
    retrained = results["retrain"]["version"]
    shipped = lineage[retrained]["parent"]
    assert len(lineage) == 3 and all(row["data_version"] for row in lineage.values())
    assert lineage[retrained]["data_version"] != lineage[shipped]["data_version"]  # feedback + replay
    assert lineage[shipped]["eval_data_version"] == lineage[retrained]["eval_data_version"] is not None
    for row in lineage.values():
        assert row["data_version"] in story
    # the dashboard's realised accuracy per pass is the one the story's summary reports
    passes = dashboard_context(str(tmp_path / "store.sqlite"))["passes"]
    realised = [p["realised_accuracy"] for p in results["phases"]]
    assert [p["realised"] for p in passes] == pytest.approx(realised) and None not in realised
