"""The eval HTML report: one self-contained, escaped, well-formed file with a plot per kind."""

from __future__ import annotations

import copy
import re
from collections import Counter
from pathlib import Path

import pytest

from html_check import TagBalance
from vlmops.report.eval_html import render_eval_html, write_eval_html
from vlmops.report.html import format_number, write_html
from vlmops.report.plots import figure_to_svg, label, new_figure

EVIL = "<script>alert(1)</script>"


def reliability(shift: float) -> dict:
    edges = [i / 5 for i in range(6)]
    acc = [None, 0.1 + shift, 0.3 + shift, 0.5, 0.9]
    return {
        "strategy": "uniform",
        "edges": edges,
        "confidence": [None, 0.3, 0.5, 0.7, 0.9],
        "accuracy": acc,
        "count": [0, 10, 20, 30, 40],
    }


def conformal_method(coverage: float, hist: list[int]) -> dict:
    by_slice = {
        "vendor": {
            "google": {"coverage": coverage + 0.02, "mean_set_size": 3.0, "n_per_split": 40.0},
            EVIL: {"coverage": coverage - 0.1, "mean_set_size": 5.0, "n_per_split": 10.0},
        }
    }
    return {
        "coverage": coverage,
        "coverage_sd": 0.01,
        "coverage_min": coverage - 0.02,
        "coverage_max": coverage + 0.02,
        "mean_set_size": 4.2,
        "set_size_histogram": hist,
        "by_slice": by_slice,
    }


def slice_stat(value: str, n: int, mean: float | None, warning: str | None = None) -> dict:
    low = None if mean is None else max(mean - 0.1, 0.0)
    high = None if mean is None else min(mean + 0.1, 1.0)
    return {
        "value": value,
        "n": n,
        "n_clusters": n // 2,
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "warning": warning,
        "n_boot_used": None,
    }


def full_payload() -> dict:
    """A synthetic eval document with every section filled in."""
    families = {"gaussian_noise": "noise", "shot_noise": "noise", "fog": "weather", "contrast": "digital"}
    return {
        "schema": "vlmops.eval/1",
        "created": "2026-01-01T00:00:00+00:00",
        "suite": "full",
        "seed": 0,
        "alpha": 0.1,
        "model": {"name": "tiny-clip", "version": "tiny-clip-abc123", "dim": 8, "uri": "fake:test"},
        "data": {"spec": "emoji", "split": "test", "n": 120, "n_classes": 6, "slice_fields": ["vendor"]},
        "timing_seconds": {"accuracy": 1.5, "calibration": 0.2},
        "cache": {"hits": 10, "misses": 2, "embed_seconds": 0.5},
        "headline": {"top1": 0.61234, "ece": 0.0512, "mia_auc": None, "images_per_s": 1234.5678},
        "fail_on": [
            {
                "rule": "top1<0.7",
                "metric": "top1",
                "value": 0.61234,
                "fired": True,
                "reason": "fired: top1=0.6123 < 0.7",
            },
            {
                "rule": "ece>0.08",
                "metric": "ece",
                "value": 0.0512,
                "violated": False,  # a report written before rules said "fired"
                "reason": "not fired: ece=0.0512 not > 0.08",
            },
        ],
        "accuracy": {
            "tiers": [
                {"tier": "concept", "depth": 2, "n": 120, "n_classes": 6, "top1": 0.61234, "top5": 0.9},
                {"tier": "category", "depth": 1, "n": 120, "n_classes": 2, "top1": 0.8, "top5": 1.0},
            ],
            "retrieval": {
                "image_to_text": {"n_queries": 120, "R@1": 0.61, "R@5": 0.9, "median_rank": 1.0},
                "text_to_image": {"n_queries": 6, "R@1": 0.5, "R@5": 0.83, "median_rank": 2.0},
            },
        },
        "calibration": {
            "n_calibration": 60,
            "n_test": 60,
            "temperature": 1.7,
            "before": {"ece": 0.0512, "mce": 0.2, "brier": 0.5, "nll": 1.2, "n": 60, "n_bins": 5},
            "after": {"ece": 0.03, "mce": 0.1, "brier": 0.45, "nll": 1.1, "n": 60, "n_bins": 5},
            "reliability_before": reliability(0.0),
            "reliability_after": reliability(0.1),
        },
        "conformal": {
            "alpha": 0.1,
            "target_coverage": 0.9,
            "repeats": 5,
            "lac": conformal_method(0.9, [0, 30, 20, 5, 1]),
            "aps": conformal_method(0.91, [0, 10, 25, 15, 6, 2]),
            "mondrian_lac[vendor]": conformal_method(0.905, [0, 20, 25, 10]),
            "risk_coverage": {"aurc": 0.12, "coverage": [0.1, 0.5, 1.0], "risk": [0.0, 0.2, 0.39]},
        },
        "slices": {
            "metric": "top1",
            "level": 0.95,
            "n_boot": 100,
            "n_perm": 100,
            "min_n": 30,
            "max_gap": 0.5,
            "worst_slice": {"field": "vendor", "value": EVIL, "mean": 0.2},
            "fields": [
                {
                    "field": "vendor",
                    "worst": EVIL,
                    "best": "google",
                    "max_gap": 0.5,
                    "p_value": 0.01,
                    "permutation": "within-cluster",
                    "note": None,
                    "slices": [
                        slice_stat("google", 60, 0.7),
                        slice_stat(EVIL, 40, 0.2),
                        slice_stat("$x$ & co", 5, 1.0, "only n=5 items (< min_n=30)"),
                    ],
                },
                {
                    "field": "category",
                    "worst": "flags",
                    "best": "food",
                    "max_gap": 0.3,
                    "p_value": 0.2,
                    "permutation": "whole-cluster",
                    "note": "few clusters",
                    "slices": [
                        slice_stat("flags", 50, 0.5),
                        slice_stat("food", 70, 0.8),
                        slice_stat("empty", 0, None, "no items"),
                    ],
                },
            ],
        },
        "robustness": {
            "corruptions": {
                "n": 100,
                "severities": [1, 2, 3, 4, 5],
                "clean_top1": 0.61,
                "top1": {
                    f: {str(s): 0.6 - 0.05 * s - 0.01 * i for s in range(1, 6)}
                    for i, f in enumerate(families)
                },
                "groups": families,
                "corruption_error": {f: 0.6 for f in families},
                "mce": 0.6,
                "relative_mce": 0.21,
                "mean_corrupted_top1": 0.4,
                "relative_robustness": 0.66,
            },
            "text": {
                "clean_top1": 0.61,
                "perturbations": {
                    "typos": {"top1": 0.5, "delta": -0.11},
                    "upper_case": {"top1": 0.6, "delta": -0.01},
                    "synonyms": {"top1": 0.55, "delta": -0.06, "replaced_classes": 3},
                },
                "worst": "typos",
                "skipped": {"template:x": "no paraphrase templates given"},
            },
            "adversarial": {
                "n": 32,
                "steps": 10,
                "clean_top1": 0.6,
                "fgsm": {"1/255": 0.4, "2/255": 0.3, "4/255": 0.1},
                "pgd": {"1/255": 0.3, "2/255": 0.1, "4/255": 0.0},
            },
            "typographic": {
                "n": 32,
                "clean_top1": 0.6,
                "attacked_top1": 0.3,
                "flip_rate": 0.4,
                "flip_rate_all": 0.3,
                "changed_rate": 0.5,
                "band_fraction": 0.25,
            },
        },
        "privacy": {
            "vendors": ["google", "twitter"],
            "attack": "image-text cosine similarity threshold",
            "n_members": 200,
            "held_out_concepts": {"auc": 0.62, "ci_low": 0.55, "ci_high": 0.69, "n_non_members": 80},
            "held_out_drawings": {"auc": 0.53, "ci_low": 0.47, "ci_high": 0.6, "n_non_members": 90},
            "auc": 0.62,
        },
        "efficiency": {
            "parameters": 1_234_567,
            "images_per_s_batch64": 812.345,
            "latency_ms_p95": 4.56789,
            "dollars_per_1000_images": 0.000123,
            "torch_threads": 2,
        },
        "batch_invariance": {
            "n": 64,
            "batch_sizes": [1, 64],
            "max_abs_embedding_diff": 2.9e-07,
            "top1_agreement": 1.0,
            "atol": 1e-05,
            "invariant": True,
        },
    }


def skipped_payload() -> dict:
    """The same document with whole sections and sub-sections skipped (or missing)."""
    p = copy.deepcopy(full_payload())
    p["fail_on"] = []
    del p["accuracy"]
    p["calibration"] = {"skipped": "calibration needs labels"}
    p["conformal"]["risk_coverage"] = {"skipped": "too few rows for a curve"}
    p["robustness"]["adversarial"] = {"skipped": "the model has no gradients (needs torch towers)"}
    p["robustness"]["typographic"] = {"skipped": "typographic attack needs class names"}
    p["privacy"] = {"skipped": "the model card does not record its training rows"}
    p["efficiency"] = {"skipped": "not in the quick suite (use --suite standard or full)"}
    return p


@pytest.fixture(scope="module")
def full_html() -> str:
    payload = full_payload()
    text = render_eval_html(payload)
    assert payload == full_payload(), "rendering must not modify the payload"
    return text


@pytest.fixture(scope="module")
def skipped_html() -> str:
    return render_eval_html(skipped_payload())


def plot_kinds(text: str) -> Counter[str]:
    return Counter(re.findall(r'<figure class="plot" data-kind="([a-z-]+)">\s*<svg\b', text))


def test_every_plot_kind_is_an_inline_svg(full_html: str) -> None:
    kinds = plot_kinds(full_html)
    assert kinds == {
        "reliability": 1,
        "set-size": 1,
        "risk-coverage": 1,
        "slice-ci": 2,
        "corruption": 1,
        "adversarial": 1,
    }
    assert full_html.count("<svg") == 7
    assert "<?xml" not in full_html and "<!DOCTYPE svg" not in full_html


def test_document_is_self_contained(full_html: str) -> None:
    refs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', full_html)
    assert refs and all(r.startswith("#") for r in refs), [r for r in refs if not r.startswith("#")]
    assert not re.search(r"<script|<link|@import|url\(\s*['\"]?(?:https?:)?//", full_html, re.IGNORECASE)
    ids = re.findall(r'\bid="([^"]+)"', full_html)
    assert len(ids) == len(set(ids)), "duplicate element ids across inline SVGs"


@pytest.mark.parametrize("which", ["full_html", "skipped_html"])
def test_document_is_well_formed(which: str, request: pytest.FixtureRequest) -> None:
    text = request.getfixturevalue(which)
    assert text.startswith("<!DOCTYPE html>")
    parser = TagBalance()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    for tag in ("html", "head", "body", "header", "nav", "main"):
        assert parser.seen[tag] == 1, tag
    assert parser.seen["section"] >= 10 and parser.seen["table"] >= 10


def test_data_is_escaped(full_html: str) -> None:
    assert EVIL not in full_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in full_html
    assert "<script" not in full_html.lower()
    assert "$x$ &amp; co" in full_html  # a '$' value is text, not matplotlib mathtext


def test_content_of_each_section(full_html: str) -> None:
    assert "<title>vlmops eval: tiny-clip</title>" in full_html
    assert "tiny-clip-abc123" in full_html and "emoji · test · 120 images" in full_html
    assert "0.6123" in full_html and "0.61234" not in full_html  # 4 significant digits
    assert re.search(r'<td class="n warn">skipped</td>', full_html)  # headline None
    assert "mondrian_lac[vendor]" in full_html and "n below" in full_html
    assert "Worst <strong>&lt;script&gt;" in full_html and "few clusters" in full_html
    assert "gaussian_noise" in full_html and "Relative robustness" in full_html
    assert "no paraphrase templates given" in full_html and "Replaced classes: 3" in full_html
    assert "4/255" in full_html and "Flip rate" in full_html
    assert "Held out drawings" in full_html and "1,234,567" in full_html
    assert "Max abs embedding diff" in full_html and "2.9e-07" in full_html
    assert "Embed seconds" in full_html


def test_fail_on_rows(full_html: str, skipped_html: str) -> None:
    assert 'href="#fail-on"' in full_html and '<section id="fail-on">' in full_html
    assert "<code>top1&lt;0.7</code>" in full_html and "<code>ece&gt;0.08</code>" in full_html
    assert "FAIL</span> 1 of 2 rules fired" in full_html
    assert 'class="bad"' in full_html and "<td>fired</td>" in full_html and "<td>not fired</td>" in full_html
    assert "fail-on" not in skipped_html


def test_skipped_sections_show_their_reason(skipped_html: str) -> None:
    for reason in (
        "calibration needs labels",
        "too few rows for a curve",
        "the model has no gradients (needs torch towers)",
        "typographic attack needs class names",
        "the model card does not record its training rows",
        "not in the quick suite (use --suite standard or full)",
        "not in this report",  # accuracy missing altogether
    ):
        assert f"Skipped: {reason}" in skipped_html, reason
    kinds = plot_kinds(skipped_html)
    assert kinds == {"set-size": 1, "slice-ci": 2, "corruption": 1}


def test_all_sections_skipped_still_renders() -> None:
    text = render_eval_html({"headline": {"top1": None}})
    assert "<svg" not in text and text.count("Skipped: not in this report") >= 8
    assert '<td class="n warn">skipped</td>' in text


def test_write_eval_html_creates_folders_atomically(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "report.html"
    write_eval_html({"headline": {"top1": 0.5}, "slices": {"skipped": "no slice fields"}}, target)
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]
    write_html("<p>again</p>", target)  # replaces in place
    assert target.read_text(encoding="utf-8") == "<p>again</p>"
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]


def test_format_number() -> None:
    assert format_number(None) == "–" and format_number(float("nan")) == "–"
    assert format_number(0.123456) == "0.1235" and format_number(146.4239) == "146.4"
    assert format_number(2602) == "2,602" and format_number(123456.7) == "123,457"
    assert format_number(True) == "yes" and format_number("a") == "a"
    assert format_number([1, 0.5]) == "1, 0.5"


def test_figure_to_svg_is_inline_markup() -> None:
    fig = new_figure()
    fig.subplots().plot([0, 1], [0, 1], label=label("$a$"))
    svg = figure_to_svg(fig)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<metadata>" not in svg and "<?xml" not in svg
