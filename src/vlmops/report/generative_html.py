"""The self-contained HTML report of `vlmops eval --task caption|vqa`, rendered from its JSON document.

Like `eval_html`, it only reads the payload; a section that is missing or ``{"skipped": reason}`` shows
the reason. The slices section and the page layout are shared with the classification report.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vlmops.report import plots
from vlmops.report.eval_html import NOT_IN_REPORT, _section, _slices, _svg
from vlmops.report.html import is_skipped, render, write_html
from vlmops.report.rules import count_fired

SECTIONS: tuple[tuple[str, str], ...] = (
    ("headline", "Headline metrics"),
    ("fail-on", "Fail-on rules"),
    ("reference", "Reference metrics"),
    ("hallucination", "Hallucination"),
    ("grounding", "Grounding"),
    ("confidence", "Confidence"),
    ("slices", "Slices"),
    ("cost", "Cost"),
    ("examples", "Examples"),
    ("run", "Model, data and run"),
)


def _confidence(section: dict) -> dict:
    if not is_skipped(section) and isinstance(section.get("reliability"), Mapping):
        section["plot"] = _svg(
            plots.reliability_svg,
            section["reliability"],
            None,
            titles=(f"ECE {section.get('ece', 0):.3f}", ""),
        )
    return section


def _other_slices(by_metric: Mapping) -> list[dict]:
    """One row per (score, field) of `slices_by_metric`: its worst and best slice, gap and p-value."""
    rows = []
    for metric, report in (by_metric or {}).items():
        for field in report.get("fields") or []:
            means = {s["value"]: s for s in field.get("slices") or []}
            worst, best = means.get(field.get("worst")) or {}, means.get(field.get("best")) or {}
            rows.append(
                {
                    "score": metric,
                    "field": field.get("field"),
                    "worst": f"{field.get('worst')} {worst.get('mean', float('nan')):.3f} "
                    f"[{worst.get('ci_low', float('nan')):.3f}, {worst.get('ci_high', float('nan')):.3f}]",
                    "best": f"{field.get('best')} {best.get('mean', float('nan')):.3f}",
                    "gap": field.get("max_gap"),
                    "p_value": field.get("p_value"),
                }
            )
    return rows


def generative_context(payload: Mapping) -> dict:
    """Everything `generative.html.j2` needs."""
    from vlmops import __version__
    from vlmops.evaluate.generative_suite import GENERATIVE_HEADLINE

    headline = payload.get("headline") or {}
    fail_on = list(payload.get("fail_on") or [])
    model, data = payload.get("model") or {}, payload.get("data") or {}
    reference = _section(payload, "reference")
    return {
        "title": f"vlmops eval --task {payload.get('task', '?')}: {model.get('name', 'model')}",
        "subtitle": "decoding: " + " · ".join(f"{k} {v}" for k, v in (payload.get("decoding") or {}).items()),
        "meta": [
            ("Model", str(model.get("version") or model.get("uri") or "unknown")),
            (
                "Data",
                f"{data.get('spec', '?')} · {data.get('split') or 'all'} · {data.get('n', 0):,} answers",
            ),
            ("Task", str(payload.get("task", "?"))),
        ],
        "sections": [{"id": i, "title": t} for i, t in SECTIONS if i != "fail-on" or fail_on],
        "generator": f"vlmops {__version__}",
        "headline": [
            {"name": n, "value": v, "about": GENERATIVE_HEADLINE[n][1] if n in GENERATIVE_HEADLINE else ""}
            for n, v in headline.items()
        ],
        "fail_on": fail_on,
        "failed": count_fired(fail_on),
        "reference": reference,
        "by_type": [{"question_type": k, **v} for k, v in (reference.get("by_type") or {}).items()],
        "hallucination": _section(payload, "hallucination"),
        "grounding": _section(payload, "grounding"),
        "confidence": _confidence(_section(payload, "confidence")),
        "slices": _slices(_section(payload, "slices"), headline),
        "other_slices": _other_slices(payload.get("slices_by_metric") or {}),
        "cost": _section(payload, "cost"),
        "examples": list(payload.get("examples") or []),
        "model": model,
        "data": data,
        "generation": payload.get("generation") or NOT_IN_REPORT,
    }


def render_generative_html(payload: dict) -> str:
    """The caption/VQA report as one self-contained HTML document."""
    return render("generative.html.j2", **generative_context(payload))


def write_generative_html(payload: dict, path: Path) -> None:
    """Render the caption/VQA report and write it to `path` atomically."""
    write_html(render_generative_html(payload), path)
