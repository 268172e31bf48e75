"""The generative act of `vlmops demo` on the real emoji data, at reduced traffic."""

from __future__ import annotations

import pytest

from html_check import TagBalance
from vlmops.cli.demo import generative_act_succeeded
from vlmops.data.emoji import manifest_path
from vlmops.demo.generative import GenerativeSizes, acceptable, run_generative_act
from vlmops.demo.story_generative import generative_story
from vlmops.report.html import render

needs_emoji = pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")


def test_people_accept_answers_that_say_most_of_the_name():
    assert acceptable("grinning face", "grinning face") and acceptable(
        "grinning face", "grinning face with big eyes"
    )
    assert not acceptable("red apple", "grinning face") and not acceptable("", "grinning face")


@needs_emoji
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
    html = section(results)  # the story's section tells it with these numbers
    assert "Skipped" not in html and f"People corrected {results['corrected']} of 60 answers" in html
    assert (
        f"champion {gate['champion_cider']:.3g}" in html
        and f"challenger {gate['challenger_cider']:.3g}" in html
    )
    assert f"{gate['better']} better and {gate['worse']} worse" in html
    assert "grounding (judge cosine" in html and f"{grounding['window']:.4g}" in html
    assert ">promoted<" in html and ">rolled back<" in html and results["champion"] in html


def section(results: dict | None, skipped: str | None = None) -> str:
    """The story's 'Generative act' section for these results (checked for balanced tags), its
    whitespace collapsed."""
    html = render("demo_generative.html.j2", generative_act=generative_story(results, skipped))
    parser = TagBalance()
    parser.feed(html)
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    return " ".join(html.split())


def act_results(gate_passed: bool = True) -> dict:
    """A generative act's results (the shape `run_generative_act` returns), with distinctive numbers."""
    check = {
        "canary": "cap-new",
        "champion": "cap-old",
        "judged": {"cap-new": 24, "cap-old": 26},
        "rejected": {"cap-new": 5, "cap-old": 7},
        "p_worse": 0.8123,
        "worse": False,
        "enough": True,
    }
    broken = {
        "canary": "cap-bad",
        "champion": "cap-new",
        "judged": {"cap-bad": 27, "cap-new": 23},
        "rejected": {"cap-bad": 26, "cap-new": 4},
        "p_worse": 1.5e-9,
        "worse": True,
        "enough": True,
    }
    results = {
        "shipped": "cap-old",
        "traffic": {"healthy": 120, "shifted": 110, "canary": 80, "broken": 80},
        "phases": [{"phase": "shifted chat traffic", "n": 110, "drifted": ["grounding", "hallucination"],
                    "detectors": {"grounding": {"p_value": 0.0004, "reference": 0.3381, "window": 0.1917},
                                  "hallucination": {"p_value": 0.0123, "reference": 0.6371, "window": 0.7784},
                                  "answer_embedding": {"p_value": 0.2345}}}],
        "corrected": 87,
        "retrain": {"version": "cap-new", "feedback": {"used": 87}, "replay": 512},
        "gate": {"passed": gate_passed, "champion_cider": 0.4321, "challenger_cider": 0.9876, "better": 71,
                 "worse": 9, "p_worse": 0.9999, "p_better": 1e-6},
        "rollback": {"check": broken, "rolled_back": True, "after": ["cap-new"]},
        "champion": "cap-new" if gate_passed else "cap-old",
        "seconds": 321.0,
    }  # fmt: skip
    if gate_passed:
        results["canary"] = check
    else:
        broken["champion"] = "cap-old"
        broken["judged"] = {"cap-bad": 27, "cap-old": 23}
        broken["rejected"] = {"cap-bad": 26, "cap-old": 4}
        results["rollback"]["after"] = ["cap-old"]
    return results


def test_the_story_section_shows_every_phase_with_its_numbers():
    html = section(act_results())
    phases = ["Healthy.", "Shift.", "Seen before any label.", "Corrections.", "Retrain.", "Gate.", "Canary.",
              "Broken canary."]  # fmt: skip
    places = [html.index(p) for p in phases]
    assert places == sorted(places)  # in the order they happened
    assert "Grounding fell" in html and "hallucination estimate rose" in html
    assert "flagged <strong>grounding, hallucination</strong>" in html
    for number in ("0.3381", "0.1917", "0.6371", "0.7784", "0.2345"):  # healthy -> shifted, p of the MMD
        assert number in html, number
    assert "People corrected 87 of 110 answers" in html and "87 corrected answers plus 512 replay" in html
    assert "champion 0.432 &rarr; challenger 0.988" in html and "71 better and 9 worse" in html
    assert "rejected 5 of 24 of its answers and 7 of 26 of the champion's" in html
    assert "26 of 27 of its answers against 4 of 23" in html and ">rolled back<" in html
    assert ">promoted<" in html and "Afterwards every answer came from <code>cap-new</code>" in html


def test_the_story_section_says_when_there_was_no_canary_or_no_act():
    html = section(act_results(gate_passed=False))
    assert ">failed<" in html and "No canary: the gate did not pass." in html and ">promoted<" not in html
    html = section(None, "the generative act was not run (vlmops demo --no-generative)")
    assert "Skipped: the generative act was not run (vlmops demo --no-generative)" in html
    assert "CIDEr" not in html


def test_the_story_page_shows_the_act_in_chromium(tmp_path):
    """The whole story page (an empty loop and store, this act): the section is linked from the contents,
    laid out, and its badges are visible."""
    from html_check import chromium_page
    from vlmops.demo import write_story

    path = write_story({}, str(tmp_path / "store.sqlite"), tmp_path / "story.html", act_results())
    with chromium_page(path) as page:
        act = page.locator("#generative-act")
        assert page.locator('a[href="#generative-act"]').is_visible()
        assert act.get_by_role("heading", name="Generative act").is_visible()
        assert act.locator("ol > li").count() == 8
        for badge in ("passed", "promoted", "rolled back"):
            assert act.locator(".badge", has_text=badge).first.is_visible(), badge
        box = act.locator("table").bounding_box()
        assert box is not None and box["width"] > 400 and box["height"] > 60, box
        act.screenshot(path=str(tmp_path / "generative-act.png"))
