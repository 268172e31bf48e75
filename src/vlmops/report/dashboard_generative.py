"""The dashboard's generative panel: chat-traffic detectors, answer quality signals and usage per key.

Read from the stored monitoring passes (``generative.*`` metrics and the ``generative`` results of
`vlmops monitor run`); absent when no pass saw chat traffic.
"""

from __future__ import annotations

from vlmops.report.html import Markup
from vlmops.report.plots import colour, figure_to_svg, index_axis, legend_outside, new_figure, style

GENERATIVE_DETECTORS = (
    "answer_embedding", "answer_length", "finish_reason", "refusal_rate", "grounding", "hallucination",
    "pii", "injection", "image_injection",
)  # fmt: skip
RATES = {  # share-valued signals drawn on one 0..1 axis: (metric, label)
    "grounding": ("generative.grounding.window", "grounding (judge cosine)"),
    "hallucination": ("generative.hallucination.window", "hallucination estimate"),
    "refusals": ("generative.refusal_rate.window", "refusal rate"),
    "injections": ("generative.injection.window", "injection attempts"),
    "image-injections": ("generative.image_injection.window", "injection text in images"),
    "pii": ("generative.pii.window", "answers with PII"),
}


def signals_svg(runs: list[dict]) -> str:
    """Grounding, hallucination estimate, refusal, injection (prompts, images) and PII rates of each
    pass's window."""
    if not runs:
        return ""
    with style():
        fig = new_figure(7.4, 3.2)
        ax = fig.add_subplot()
        x = list(range(1, len(runs) + 1))
        for i, (key, (metric, text)) in enumerate(RATES.items()):
            values = [r["metrics"].get(metric) for r in runs]
            if all(v is None for v in values):
                continue
            ys = [float("nan") if v is None else v for v in values]
            ax.plot(x, ys, marker="o", color=colour(i), label=text, gid=f"signal-{key}")
        ax.set_ylim(-0.02, 1.02)
        index_axis(ax, len(runs))
        ax.set_xlabel("monitoring pass")
        ax.set_ylabel("share / cosine")
        if ax.get_legend_handles_labels()[0]:
            legend_outside(ax)
        ax.patch.set_gid("signals-axes")
        return figure_to_svg(fig)


def _pass_row(run: dict, when: str) -> dict:
    m = run["metrics"]
    gen = run["results"].get("generative", {})
    return {
        "when": when,
        "model": gen.get("model_version", run["model_version"]),
        "n": m.get("generative.window.n"),
        "words": m.get("generative.answer_length.window"),
        "grounding": m.get("generative.grounding.window"),
        "hallucination": m.get("generative.hallucination.window"),
        "refusal_rate": m.get("generative.refusal_rate.window"),
        "injection_rate": m.get("generative.injection.window"),
        "image_injection_rate": m.get("generative.image_injection.window"),
        "pii_rate": m.get("generative.pii.window"),
        "ttft_ms_p50": m.get("generative.usage.ttft_ms_p50"),
        "cost_usd": m.get("generative.usage.cost_usd"),
        "drifted": ", ".join(d for d in GENERATIVE_DETECTORS if m.get(f"generative.{d}.drifted") == 1.0)
        or "none",
    }


def chat_runs(runs: list[dict]) -> list[dict]:
    """The passes that looked at chat traffic."""
    return [r for r in runs if "generative" in r.get("results", {})]


def generative_context(runs: list[dict], when, drift_svg) -> dict | None:
    """Plots and tables of the generative panel, or None when no pass looked at chat traffic.

    `drift_svg`: the dashboard's p-value chart (`report.dashboard.drift_svg`), drawn for these detectors.
    """
    chat = chat_runs(runs)
    if not chat:
        return None
    latest = chat[-1]["results"]["generative"]
    by_key = [{"key": k, **v} for k, v in latest.get("usage_by_key", {}).items()]
    skipped = [
        {"detector": d, "reason": v["skipped"]}
        for d, v in latest.get("detectors", {}).items()
        if isinstance(v, dict) and "skipped" in v
    ]
    examples = [
        {"kind": kind, "request": e["request_id"], "key": e["key_id"], "matched": ", ".join(e["matched"]),
         "text": e["text"]}
        for kind, items in latest.get("examples", {}).items()
        for e in items
    ]  # fmt: skip
    return {
        "drift_svg": Markup(drift_svg(chat, detectors=GENERATIVE_DETECTORS, always=(), prefix="generative")),
        "signals_svg": Markup(signals_svg(chat)),
        "passes": [_pass_row(r, when(r["time"])) for r in chat],
        "by_key": by_key,
        "skipped": skipped,
        "examples": examples,
    }
