"""The monitoring dashboard: drift timeline per detector, estimated vs realised accuracy, alerts,
versions and rollouts, as one self-contained HTML page (inline SVG charts, no external assets).

Served by the gateway at /dashboard and written by `vlmops monitor dashboard --out FILE`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from matplotlib.ticker import MaxNLocator

from vlmops.report.html import Markup, render
from vlmops.report.plots import REFERENCE, colour, figure_to_svg, new_figure, style

DETECTORS = ("mmd", "ks_pca", "prediction_shift", "alignment", "image_stats", "query_text")
ALWAYS = DETECTORS[:4]  # the last two run only when the log holds image statistics / search queries
ESTIMATES = ("ac", "atc", "doc")


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def drift_svg(runs: list[dict], alpha: float = 0.05) -> str:
    """p-value of every detector per monitoring pass (log scale), with the alarm level."""
    if not runs:
        return ""
    with style():
        fig = new_figure(6.4, 3.2)
        ax = fig.add_subplot()
        x = list(range(1, len(runs) + 1))
        for i, name in enumerate(DETECTORS):
            values = [r["metrics"].get(f"drift.{name}.p_value") for r in runs]
            if name not in ALWAYS and all(v is None for v in values):
                continue
            ys = [float("nan") if v is None else max(v, 1e-4) for v in values]  # a gap where it did not run
            ax.plot(x, ys, marker="o", color=colour(i), label=name, gid=f"drift-{name}")
        ax.axhline(alpha, color=REFERENCE, linestyle="--", linewidth=1, label=f"alpha {alpha}")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("monitoring pass")
        ax.set_ylabel("p-value (lower = drift)")
        ax.legend(loc="lower left", ncol=3)
        return figure_to_svg(fig)


def accuracy_svg(runs: list[dict]) -> str:
    """Label-free estimates per pass next to the accuracy realised from human feedback."""
    if not runs:
        return ""
    with style():
        fig = new_figure(6.4, 3.2)
        ax = fig.add_subplot()
        x = list(range(1, len(runs) + 1))
        for i, name in enumerate(ESTIMATES):
            ax.plot(
                x,
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
                *zip(*points, strict=True),
                marker="s",
                color="#000000",
                linestyle=":",
                label="realised (feedback)",
                gid="realised",
            )
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("monitoring pass")
        ax.set_ylabel("accuracy")
        ax.legend(loc="lower left")
        return figure_to_svg(fig)


def dashboard_context(store: str | None = None) -> dict:
    """Everything the page shows, read from the store."""
    from vlmops.monitor.alerts import AlertStore
    from vlmops.monitor.run import monitor_history
    from vlmops.registry.store import Registry

    runs = monitor_history(store, late_feedback=True)  # realised accuracy: feedback that came after
    alerts = AlertStore(store).list()
    registry = Registry(store)
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
    return {
        "title": "vlmops monitor",
        "subtitle": f"{len(runs)} monitoring passes, {len(alerts)} alerts",
        "meta": [("generated", _when(datetime.now(UTC).timestamp()))],
        "sections": [
            {"id": s, "title": t}
            for s, t in (
                ("drift", "Drift"),
                ("accuracy", "Accuracy"),
                ("alerts", "Alerts"),
                ("versions", "Versions"),
            )
        ],
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
        "versions": registry.list(),
        "events": [{**e, "when": _when(e["time"])} for e in registry.history()],
    }


def render_dashboard(store: str | None = None) -> str:
    """The dashboard page as HTML."""
    return render("monitor.html.j2", **dashboard_context(store))
