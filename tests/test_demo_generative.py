"""The generative act of `vlmops demo` on the real emoji data, at reduced traffic."""

from __future__ import annotations

import pytest

from vlmops.cli.demo import generative_act_succeeded
from vlmops.data.emoji import manifest_path
from vlmops.demo.generative import GenerativeSizes, acceptable, run_generative_act

pytestmark = pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")


def test_people_accept_answers_that_say_most_of_the_name():
    assert acceptable("grinning face", "grinning face") and acceptable(
        "grinning face", "grinning face with big eyes"
    )
    assert not acceptable("red apple", "grinning face") and not acceptable("", "grinning face")


def test_the_generative_act_sees_the_shift_retrains_gates_promotes_and_rolls_back(tmp_path):
    sizes = GenerativeSizes(
        healthy=60, shifted=60, canary=50, gate_sample=40, replay=128, epochs=3, min_feedback=10
    )
    results = run_generative_act(tmp_path, sizes, say=lambda text: None)
    (shifted,) = results["phases"]
    grounding = shifted["detectors"]["grounding"]
    assert "grounding" in shifted["drifted"] and grounding["window"] < grounding["reference"]  # before labels
    assert 0 < results["corrected"] <= 60 and results["retrain"]["feedback"]["used"] == results["corrected"]
    gate = results["gate"]
    assert (
        gate["passed"]
        and gate["challenger_cider"] > gate["champion_cider"]
        and gate["better"] > gate["worse"]
    )
    canary = results["canary"]
    assert canary["enough"] and not canary["worse"]
    assert results["champion"] == results["retrain"]["version"]  # promoted after people judged the canary
    rollback = results["rollback"]
    assert rollback["check"]["worse"] and rollback["after"] == [results["champion"]]  # broken one rolled back
    assert generative_act_succeeded(results)
