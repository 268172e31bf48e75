"""The self-contained HTML report of `vlmops eval`, rendered from the eval JSON document.

`render_eval_html` only reads the payload: every section may be `{"skipped": reason}` (or missing), in
which case the page shows the reason. Plots are drawn here (inline SVG) and everything else is laid
out by `templates/eval.html.j2`. A plot that cannot be drawn from odd data is left out with a log
message rather than failing the report at the end of a long evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vlmops.report import plots
from vlmops.report.html import Markup, is_skipped, render, write_html
from vlmops.report.rules import count_fired

log = logging.getLogger(__name__)

SECTIONS: tuple[tuple[str, str], ...] = (
    ("headline", "Headline metrics"),
    ("fail-on", "Fail-on rules"),
    ("accuracy", "Accuracy"),
    ("calibration", "Calibration"),
    ("conformal", "Conformal prediction"),
    ("slices", "Slices"),
    ("robustness", "Robustness"),
    ("privacy", "Privacy"),
    ("efficiency", "Efficiency"),
    ("batch-invariance", "Batch invariance"),
    ("run", "Model, data and run"),
)
CONFORMAL_SETTINGS = ("alpha", "target_coverage", "repeats", "risk_coverage")
NOT_IN_REPORT = {"skipped": "not in this report"}


def _section(payload: Mapping, key: str) -> dict:
    """payload[key] when it is a dict, else a skipped marker."""
    value = payload.get(key)
    return dict(value) if isinstance(value, Mapping) else dict(NOT_IN_REPORT)


def _svg(draw: Callable[..., str], *args: Any, **kwargs: Any) -> Markup | None:
    """Run one plot function; its SVG marked safe for the template, or None if it failed."""
    try:
        return Markup(draw(*args, **kwargs))
    except Exception:  # a report must not die on one odd plot
        log.warning("could not draw %s", draw.__name__, exc_info=True)
        return None


def _headline(payload: Mapping) -> list[dict]:
    from vlmops.evaluate.headline import HEADLINE

    values = payload.get("headline") or {}
    return [
        {"name": name, "value": value, "about": HEADLINE[name][1] if name in HEADLINE else ""}
        for name, value in values.items()
    ]


def _calibration(section: dict) -> dict:
    if is_skipped(section):
        return section
    before, after = section.get("before") or {}, section.get("after") or {}
    names = [k for k in dict.fromkeys([*before, *after]) if k not in ("n", "n_bins")]
    section["metric_rows"] = [{"name": k, "before": before.get(k), "after": after.get(k)} for k in names]
    t = section.get("temperature")
    after_title = (
        f"after temperature scaling (T = {t:.3g})" if plots.finite(t) else "after temperature scaling"
    )
    section["plot"] = _svg(
        plots.reliability_svg,
        section.get("reliability_before") or {},
        section.get("reliability_after") or {},
        titles=(f"before (ECE {before.get('ece', float('nan')):.3f})", after_title),
    )
    return section


def _conformal(section: dict) -> dict:
    if is_skipped(section):
        return section
    methods = {k: v for k, v in section.items() if k not in CONFORMAL_SETTINGS and isinstance(v, Mapping)}
    section["methods"] = methods
    hists = {k: v["set_size_histogram"] for k, v in methods.items() if v.get("set_size_histogram")}
    section["set_size_plot"] = _svg(plots.set_size_svg, hists) if hists else None
    fields: dict[str, dict[str, dict[str, dict]]] = {}  # field -> value -> method -> stats
    for name, method in methods.items():
        for field, values in (method.get("by_slice") or {}).items():
            for value, stats in values.items():
                fields.setdefault(field, {}).setdefault(value, {})[name] = stats
    section["by_slice"] = fields
    curve = section.get("risk_coverage")
    if isinstance(curve, Mapping) and not is_skipped(curve):
        section["risk_plot"] = _svg(
            plots.risk_coverage_svg, curve.get("coverage", []), curve.get("risk", []), curve.get("aurc")
        )
    return section


def _slices(section: dict, headline: Mapping) -> dict:
    if is_skipped(section):
        return section
    metric = section.get("metric", "top1")
    overall = headline.get(metric) if isinstance(headline.get(metric), int | float) else None
    section["overall"] = overall
    section["fields"] = [
        {**field, "plot": _svg(plots.slice_ci_svg, field.get("slices") or [], overall, metric)}
        for field in section.get("fields") or []
        if isinstance(field, Mapping)
    ]
    return section


def _robustness(section: dict) -> dict:
    if is_skipped(section):
        return section
    for key in ("corruptions", "text", "adversarial", "typographic"):
        value = section.get(key)
        section[key] = dict(value) if isinstance(value, Mapping) else dict(NOT_IN_REPORT)
    corr, adv = section["corruptions"], section["adversarial"]
    if not is_skipped(corr) and corr.get("top1"):
        corr["plot"] = _svg(plots.corruption_svg, corr["top1"], corr.get("groups"), corr.get("clean_top1"))
        corr["severities"] = list(dict.fromkeys(s for by_s in corr["top1"].values() for s in by_s))
    if not is_skipped(adv):
        attacks = {k: adv[k] for k in ("fgsm", "pgd") if isinstance(adv.get(k), Mapping) and adv[k]}
        adv["attacks"] = attacks
        adv["epsilons"] = list(dict.fromkeys(e for by_eps in attacks.values() for e in by_eps))
        adv["plot"] = _svg(plots.adversarial_svg, attacks, adv.get("clean_top1")) if attacks else None
    return section


def _privacy(section: dict) -> dict:
    if is_skipped(section):
        return section
    groups = {k: v for k, v in section.items() if isinstance(v, Mapping)}
    section["groups"] = groups
    section["scalars"] = {k: v for k, v in section.items() if k not in groups and k != "groups"}
    return section


def _meta(payload: Mapping) -> list[tuple[str, str]]:
    model, data = payload.get("model") or {}, payload.get("data") or {}
    model_text = model.get("version") or model.get("name") or "unknown model"
    data_text = " · ".join(str(x) for x in (data.get("spec"), data.get("split")) if x) or "unknown data"
    if data.get("n") is not None:
        data_text += f" · {data['n']:,} images"
    return [
        ("Model", str(model_text)),
        ("Data", data_text),
        ("Suite", str(payload.get("suite", "–"))),
        ("Date", str(payload.get("created", "–"))),
    ]


def eval_context(payload: Mapping) -> dict:
    """Everything `eval.html.j2` needs: sections with their plots, table rows and the header."""
    from vlmops import __version__

    headline = payload.get("headline") or {}
    fail_on = list(payload.get("fail_on") or [])
    model = payload.get("model") or {}
    return {
        "title": f"vlmops eval: {model.get('name', 'model')}",
        "subtitle": f"schema {payload.get('schema', '?')} · seed {payload.get('seed', '–')}",
        "meta": _meta(payload),
        "sections": [{"id": i, "title": t} for i, t in SECTIONS if i != "fail-on" or fail_on],
        "generator": f"vlmops {__version__}",
        "payload": payload,
        "headline": _headline(payload),
        "fail_on": fail_on,
        "failed": count_fired(fail_on),
        "accuracy": _section(payload, "accuracy"),
        "calibration": _calibration(_section(payload, "calibration")),
        "conformal": _conformal(_section(payload, "conformal")),
        "slices": _slices(_section(payload, "slices"), headline),
        "robustness": _robustness(_section(payload, "robustness")),
        "privacy": _privacy(_section(payload, "privacy")),
        "efficiency": _section(payload, "efficiency"),
        "batch_invariance": _section(payload, "batch_invariance"),
        "model": model,
        "data": payload.get("data") or {},
        "timing": payload.get("timing_seconds") or {},
        "cache": payload.get("cache") or {},
    }


def render_eval_html(payload: dict) -> str:
    """The eval report as one self-contained HTML document."""
    return render("eval.html.j2", **eval_context(payload))


def write_eval_html(payload: dict, path: Path) -> None:
    """Render the eval report and write it to `path` atomically (parent folders created)."""
    write_html(render_eval_html(payload), path)
