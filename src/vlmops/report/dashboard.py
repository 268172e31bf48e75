"""The monitoring dashboard: drift timeline per detector, estimated vs realised accuracy, alerts,
versions and rollouts, as one self-contained HTML page (inline SVG charts, no external assets).

Served by the gateway at /dashboard and written by `vlmops monitor dashboard --out FILE`. Rendering
is a report concern and the rows are read from the store, so the gateway shows it without importing
the monitor or the registry.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from vlmops.report.dashboard_generative import generative_context
from vlmops.report.html import Markup, render
from vlmops.report.plots import (
    MUTED,
    REFERENCE,
    colour,
    figure_to_svg,
    finite,
    index_axis,
    legend_outside,
    new_figure,
    style,
)

DETECTORS = ("mmd", "ks_pca", "prediction_shift", "alignment", "image_stats", "query_text")
ALWAYS = DETECTORS[:4]  # the last two run only when the log holds image statistics / search queries
ESTIMATES = ("ac", "atc", "doc")
P_FLOOR = 1e-12  # smaller p-values are drawn on the floor, marked and written out
DODGE = 0.07  # sideways nudge between detectors, in passes


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def drift_svg(
    runs: list[dict],
    alpha: float = 0.05,
    detectors: tuple[str, ...] = DETECTORS,
    always: tuple[str, ...] = ALWAYS,
    prefix: str = "drift",
) -> str:
    """p-value of every detector per monitoring pass (log scale), with the alarm level.

    `detectors` are read from the metrics ``{prefix}.{name}.p_value``; those in `always` are drawn
    (as gaps) even in passes where they did not run. SVG ids are ``{prefix}-{name}``.

    Values are drawn where they are down to P_FLOOR; a smaller one (or 0) sits on the floor as a
    downward triangle with its value written beside it in the last pass. Detectors are nudged apart
    sideways so equal values stay visible, and the legend sits outside the axes.
    """
    if not runs:
        return ""
    shown = [
        (name, [r["metrics"].get(f"{prefix}.{name}.p_value") for r in runs])
        for name in detectors
        if name in always or any(r["metrics"].get(f"{prefix}.{name}.p_value") is not None for r in runs)
    ]
    seen = [v for _, values in shown for v in values if finite(v) and v > 0]
    bottom = max(P_FLOOR, min([alpha, *seen]))
    floor = 10 ** math.floor(math.log10(bottom))
    with style():
        fig = new_figure(7.4, 3.4)
        ax = fig.add_subplot()
        below_labels = 0
        for i, (name, values) in enumerate(shown):
            colour_i = colour(detectors.index(name))
            x = [k + 1 + DODGE * (i - (len(shown) - 1) / 2) for k in range(len(runs))]
            ys = [float("nan") if not finite(v) else max(v, floor) for v in values]  # a gap: did not run
            drawn = [k for k, v in enumerate(values) if finite(v) and v >= floor]  # the rest get a triangle
            ax.plot(x, ys, marker="o", markevery=drawn, color=colour_i, label=name, gid=f"{prefix}-{name}")
            low = [(xi, v) for xi, v in zip(x, values, strict=True) if finite(v) and v < floor]
            if low:
                ax.plot(
                    [xi for xi, _ in low],
                    [floor] * len(low),
                    linestyle="none",
                    marker="v",
                    markersize=7,
                    markeredgecolor="white",
                    color=colour_i,
                    gid=f"{prefix}-{name}-below",
                )
            last = values[-1]
            if finite(last) and last < floor:
                ax.annotate(
                    f"{name} p={last:.0e}",
                    (x[-1], floor),
                    xytext=(8, 4 + 10 * below_labels),
                    textcoords="offset points",
                    fontsize=7,
                    color=colour_i,
                    gid=f"{prefix}-{name}-value",
                )
                below_labels += 1
        ax.axhline(alpha, color=REFERENCE, linestyle="--", linewidth=1, label=f"alpha {alpha}")
        if below_labels or any(finite(v) and v < floor for _, vs in shown for v in vs):
            ax.plot([], [], linestyle="none", marker="v", color=MUTED, label=f"p < {floor:.0e} (written)")
        ax.set_yscale("log")
        ax.set_ylim(floor / 10, 1.5)
        return _per_pass_svg(fig, ax, len(runs), "p-value (lower = drift)", prefix)


def accuracy_svg(runs: list[dict]) -> str:
    """Label-free estimates per pass next to the accuracy realised from human feedback."""
    if not runs:
        return ""
    with style():
        fig = new_figure(7.4, 3.2)
        ax = fig.add_subplot()
        x = list(range(1, len(runs) + 1))
        for i, name in enumerate(ESTIMATES):
            ax.plot(
                [xi + DODGE * (i - 1.5) for xi in x],  # nudged apart: close estimates stay visible
                [r["metrics"].get(f"estimate.{name}") for r in runs],
                marker="o",
                color=colour(i),
                label=f"estimated ({name})",
                gid=f"estimate-{name}",
            )
        realised = [r["metrics"].get("feedback.realised_accuracy") for r in runs]
        points = [(xi, y) for xi, y in zip(x, realised, strict=True) if y is not None]
        if points:
            ax.plot(
                [xi + DODGE * 1.5 for xi, _ in points],
                [y for _, y in points],
                marker="s",
                color="#000000",
                linestyle=":",
                label="realised (feedback)",
                gid="realised",
            )
        ax.set_ylim(0, 1)
        return _per_pass_svg(fig, ax, len(runs), "accuracy", "accuracy")


def _per_pass_svg(fig, ax, n_runs: int, ylabel: str, gid: str) -> str:
    """Finish a per-pass plot (integer pass axis, legend outside, gids the browser test finds) as SVG."""
    index_axis(ax, n_runs)
    ax.set_xlabel("monitoring pass")
    ax.set_ylabel(ylabel)
    legend_outside(ax)
    ax.get_legend().set_gid(f"{gid}-legend")
    ax.patch.set_gid(f"{gid}-axes")
    return figure_to_svg(fig)


def dashboard_context(store: str | None = None) -> dict:
    """Everything the page shows, read from the store."""
    from vlmops.store.log import create_tables, make_engine
    from vlmops.store.monitor_tables import monitor_history, read_alerts
    from vlmops.store.registry_tables import aliases, events, list_events, list_versions, versions

    runs = monitor_history(store, late_feedback=True)  # realised accuracy: feedback that came after
    alerts = read_alerts(store)
    engine = make_engine(store)
    create_tables(engine, tables=[versions, aliases, events])
    passes = [
        {
            "when": _when(r["time"]),
            "model": r["model_version"],
            "n": r["n"],
            **{d: r["metrics"].get(f"drift.{d}.p_value") for d in DETECTORS},
            "estimated": r["metrics"].get("estimate.atc"),
            "realised": r["metrics"].get("feedback.realised_accuracy"),
        }
        for r in runs
    ]
    generative = generative_context(runs, _when, drift_svg)
    return {
        "title": "vlmops monitor",
        "subtitle": f"{len(runs)} monitoring passes, {len(alerts)} alerts",
        "meta": [("generated", _when(datetime.now(UTC).timestamp()))],
        "sections": [
            {"id": s, "title": t}
            for s, t in (
                ("drift", "Drift"),
                ("accuracy", "Accuracy"),
                *([("generative", "Generative traffic")] if generative else []),
                ("alerts", "Alerts"),
                ("versions", "Versions"),
            )
        ],
        "generative": generative,
        "generator": "vlmops monitor dashboard",
        "drift_svg": Markup(drift_svg(runs)),
        "accuracy_svg": Markup(accuracy_svg(runs)),
        "passes": passes,
        "alerts": [
            {
                "when": _when(a["time"]),
                "rule": a["rule"],
                "metric": a["metric"],
                "value": a["value"],
                "model": a["model_version"],
            }
            for a in alerts
        ],
        "versions": list_versions(engine),
        "events": [{**e, "when": _when(e["time"])} for e in list_events(engine)],
    }


def render_dashboard(store: str | None = None) -> str:
    """The dashboard page as HTML."""
    return render("monitor.html.j2", **dashboard_context(store))
