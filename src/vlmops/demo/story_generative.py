"""The generative act's part of the demo's HTML story: its results (`run_generative_act`) as the phases a
reader follows, each with its numbers, or why the act did not run."""

from __future__ import annotations

DETECTOR_TEXT = {
    "grounding": "grounding (judge cosine of image and answer)",
    "hallucination": "hallucination estimate (answers naming an object the judge does not see)",
    "answer_embedding": "answer embedding drift (MMD)",
}


def _side(check: dict, version: str) -> dict:
    judged = check["judged"].get(version, 0)
    rejected = check["rejected"].get(version, 0)
    return {"judged": judged, "rejected": rejected, "share": rejected / judged if judged else None}


def _canary(check: dict | None) -> dict | None:
    """Rejections of the canary's and the champion's answers, side by side."""
    if not check:
        return None
    return {
        "canary": check["canary"],
        "champion": check["champion"],
        "canary_side": _side(check, check["canary"]),
        "champion_side": _side(check, check["champion"]),
        "p_worse": check.get("p_worse"),
        "worse": check["worse"],
        "enough": check["enough"],
    }


def generative_story(results: dict | None, skipped: str | None = None) -> dict:
    """Template context of the 'Generative act' section: `skipped` (a reason) when the act did not run."""
    if results is None:
        return {"skipped": skipped or "the generative act did not run"}
    shifted = results["phases"][0]
    detectors = [
        {
            "detector": DETECTOR_TEXT.get(name, name),
            "healthy": d.get("reference"),
            "shifted": d.get("window"),
            "p_value": d.get("p_value"),
            "flagged": "yes" if name in shifted["drifted"] else ("skipped" if "skipped" in d else "no"),
        }
        for name, d in shifted["detectors"].items()
    ]
    grounding = shifted["detectors"].get("grounding", {})
    hallucination = shifted["detectors"].get("hallucination", {})
    retrained = results["retrain"]["version"]
    return {
        "skipped": None,
        "shipped": results.get("shipped"),
        "traffic": results.get("traffic", {}),
        "shifted": shifted,
        "detectors": detectors,
        "grounding_fell": grounding.get("window", 0) < grounding.get("reference", 0),
        "hallucination_rose": hallucination.get("window", 0) > hallucination.get("reference", 0),
        "corrected": results["corrected"],
        "retrain": results["retrain"],
        "gate": results["gate"],
        "canary": _canary(results.get("canary")),
        "promoted": results["champion"] == retrained,
        "broken": _canary(results["rollback"]["check"]),
        "after": results["rollback"]["after"],
        "champion": results["champion"],
        "seconds": results.get("seconds"),
    }
