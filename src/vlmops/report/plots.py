"""Plot helpers shared by the HTML reports: small matplotlib figures rendered to inline SVG strings.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot, no global backend or figure
state), styled once through `style()`, and serialised with text kept as text (no embedded glyphs, no
fonts fetched from anywhere) so each plot is a few kilobytes of markup that embeds in one HTML file.
Labels that come from data go through `label()` so matplotlib never parses them as mathtext.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE: tuple[str, ...] = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#000000",
)
MUTED = "#9a9a9a"
REFERENCE = "#444444"
FIGSIZE: tuple[float, float] = (5.0, 3.2)

_RC: dict[str, Any] = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 8.5,
    "axes.titlesize": 9.5,
    "axes.labelsize": 8.5,
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.prop_cycle": matplotlib.cycler(color=list(PALETTE)),
    "lines.linewidth": 1.6,
    "lines.markersize": 4.5,
    "svg.fonttype": "none",
    "svg.hashsalt": "vlmops",
}
_PROLOG = re.compile(r"^.*?(?=<svg\b)", re.DOTALL)
_STRIP = re.compile(r"<metadata>.*?</metadata>|<style[^>]*>.*?</style>", re.DOTALL)
_IDS = re.compile(r'(\bid="|url\(#|href="#)([^")]+)')


def colour(i: int) -> str:
    """The i-th colour of the report palette (cycling)."""
    return PALETTE[i % len(PALETTE)]


@contextmanager
def style() -> Iterator[None]:
    """matplotlib settings of every report figure; build and save figures inside this context."""
    with matplotlib.rc_context(_RC):
        yield


def new_figure(width: float = FIGSIZE[0], height: float = FIGSIZE[1]) -> Figure:
    """A blank figure with constrained layout, detached from pyplot."""
    return Figure(figsize=(width, height), layout="constrained")


def figure_to_svg(fig: Figure) -> str:
    """The figure as an `<svg>` element ready to inline in HTML (no XML prolog, metadata or shared ids)."""
    buf = io.StringIO()
    with style():
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = _STRIP.sub("", _PROLOG.sub("", buf.getvalue(), count=1))
    # Several figures live in one page: give this one's ids (clip paths, markers) their own prefix.
    prefix = "f" + hashlib.sha1(svg.encode()).hexdigest()[:8] + "-"
    return _IDS.sub(lambda m: m.group(1) + prefix + m.group(2), svg).strip()


def label(text: object, limit: int = 32) -> str:
    """Data text safe for a matplotlib label: `$` escaped (no mathtext) and long values shortened."""
    s = str(text)
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("\\", "\\\\").replace("$", r"\$")


def finite(value: object) -> bool:
    """True for a real, finite number (not None, NaN, inf, bool or text)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def index_axis(ax, n: int, name: str = "x") -> None:
    """An axis of n integer positions 1..n with room either side: one pass reads "1", never 0.95-1.05."""
    set_lim, axis = (ax.set_xlim, ax.xaxis) if name == "x" else (ax.set_ylim, ax.yaxis)
    set_lim(0.5, n + 0.5)
    if n <= 12:
        axis.set_major_locator(FixedLocator(range(1, n + 1)))
    else:
        axis.set_major_locator(MaxNLocator(integer=True))


def legend_outside(ax, **kw) -> None:
    """The legend right of the axes, so it never sits on the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)


def reliability_svg(before: dict, after: dict | None = None, titles: Sequence[str] = ("", "")) -> str:
    """Reliability diagram(s): accuracy per confidence bin as bars against the diagonal."""
    panels = [d for d in (before, after) if d]
    with style():
        fig = new_figure(FIGSIZE[0] * (1.45 if len(panels) > 1 else 1), FIGSIZE[1])
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        for i, (ax, diagram) in enumerate(zip(axes, panels, strict=True)):
            edges = [float(e) for e in diagram.get("edges", [])]
            acc = list(diagram.get("accuracy", []))
            conf = list(diagram.get("confidence", []))
            bins = [j for j in range(min(len(acc), len(edges) - 1)) if finite(acc[j])]
            ax.bar(
                [edges[j] for j in bins],
                [acc[j] for j in bins],
                width=[edges[j + 1] - edges[j] for j in bins],
                align="edge",
                color=colour(0),
                alpha=0.85,
                edgecolor="white",
                linewidth=0.5,
            )
            gaps = [j for j in bins if j < len(conf) and finite(conf[j])]
            ax.vlines(
                [conf[j] for j in gaps],
                [min(conf[j], acc[j]) for j in gaps],
                [max(conf[j], acc[j]) for j in gaps],
                color=colour(3),
                linewidth=1.0,
            )
            ax.plot([0, 1], [0, 1], linestyle="--", color=REFERENCE, linewidth=1.0, label="perfect")
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence")
            ax.set_title(label(titles[i] if i < len(titles) else "", 60))
        axes[0].set_ylabel("accuracy")
        axes[0].legend(loc="upper left")
    return figure_to_svg(fig)


def set_size_svg(histograms: dict[str, Sequence[int]], max_bins: int = 50) -> str:
    """Step histogram of conformal set sizes, one line per method (wide ranges are re-binned)."""
    with style():
        fig = new_figure()
        ax = fig.subplots()
        longest = max((len(h) for h in histograms.values()), default=1)
        width = max(1, math.ceil(longest / max_bins))
        for i, (name, hist) in enumerate(histograms.items()):
            counts = [sum(hist[k : k + width]) for k in range(0, len(hist), width)]
            edges = [k * width - 0.5 for k in range(len(counts) + 1)]
            if i == 0:
                ax.stairs(counts, edges, color=colour(i), fill=True, alpha=0.2, linewidth=0)
            ax.stairs(counts, edges, color=colour(i), linewidth=1.4, label=label(name))
        ax.set(
            xlabel="prediction set size" + (f" (bins of {width})" if width > 1 else ""), ylabel="test images"
        )
        ax.set_xlim(left=-0.5)
        ax.legend()
    return figure_to_svg(fig)


def risk_coverage_svg(coverage: Sequence[float], risk: Sequence[float], aurc: float | None = None) -> str:
    """Selective risk against coverage when abstaining on the least confident predictions."""
    points = [(c, r) for c, r in zip(coverage, risk, strict=False) if finite(c) and finite(r)]
    with style():
        fig = new_figure()
        ax = fig.subplots()
        if points:
            xs, ys = zip(*points, strict=True)
            name = "risk" + (f" (AURC {aurc:.3f})" if finite(aurc) else "")
            ax.plot(xs, ys, color=colour(0), label=name)
            ax.fill_between(xs, ys, color=colour(0), alpha=0.15, linewidth=0)
            ax.legend(loc="upper left")
        ax.set(xlim=(0, 1), ylim=(0, None), xlabel="coverage (fraction answered)", ylabel="error rate")
    return figure_to_svg(fig)


def slice_ci_svg(
    slices: Sequence[dict], overall: float | None = None, metric: str = "top1", max_rows: int = 40
) -> str:
    """Each slice's mean with its CI as a horizontal whisker; warned slices grey, overall as a line."""
    rows = [s for s in slices if finite(s.get("mean"))]
    title = ""
    if len(rows) > max_rows:
        title = f"{max_rows} lowest of {len(rows)} slices"
        rows = sorted(rows, key=lambda s: s["mean"])[:max_rows]
    with style():
        fig = new_figure(FIGSIZE[0], min(12.0, max(1.9, 0.6 + 0.26 * len(rows))))
        ax = fig.subplots()
        for warned, tone in ((False, colour(0)), (True, MUTED)):
            ys = [y for y, s in enumerate(rows) if bool(s.get("warning")) == warned]
            if not ys:
                continue
            means = [rows[y]["mean"] for y in ys]
            ax.plot(means, ys, "o", color=tone, markerfacecolor="white" if warned else tone, zorder=3)
            bars = [y for y in ys if finite(rows[y].get("ci_low")) and finite(rows[y].get("ci_high"))]
            if bars:
                m = [rows[y]["mean"] for y in bars]
                err = [
                    [max(mm - rows[y]["ci_low"], 0) for mm, y in zip(m, bars, strict=True)],
                    [max(rows[y]["ci_high"] - mm, 0) for mm, y in zip(m, bars, strict=True)],
                ]
                ax.errorbar(m, bars, xerr=err, fmt="none", ecolor=tone, elinewidth=1.4, capsize=2.5)
        if finite(overall):
            ax.axvline(
                overall, color=colour(3), linestyle="--", linewidth=1.0, label=f"overall {overall:.3f}"
            )
            ax.legend(loc="best")
        ax.set_yticks(range(len(rows)), [label(s.get("value"), 28) for s in rows])
        ax.set_ylim(len(rows) - 0.5, -0.5)
        if all(0 <= s["mean"] <= 1 for s in rows):
            ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(label(metric))
        ax.grid(axis="y", visible=False)
        if title:
            ax.set_title(title)
    return figure_to_svg(fig)


def corruption_svg(
    top1: dict[str, dict[str, float]], groups: dict[str, str] | None = None, clean: float | None = None
) -> str:
    """Accuracy against corruption severity, one line per family coloured by its group."""
    groups = groups or {}
    group_names = list(dict.fromkeys(groups.get(f, "other") for f in top1))
    dashes = ["-", "--", ":", "-."]
    seen: dict[str, int] = {}
    with style():
        fig = new_figure(FIGSIZE[0] * 1.3, FIGSIZE[1] * 1.1)
        ax = fig.subplots()
        for family, by_severity in top1.items():
            group = groups.get(family, "other")
            k = seen[group] = seen.get(group, -1) + 1
            points = sorted((float(s), a) for s, a in by_severity.items() if finite(a))
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(
                xs,
                ys,
                marker="o",
                markersize=3,
                linestyle=dashes[k % len(dashes)],
                color=colour(group_names.index(group)),
                label=label(f"{family} ({group})", 40),
            )
        if finite(clean):
            ax.axhline(clean, color=REFERENCE, linestyle="--", linewidth=1.2, label=f"clean {clean:.3f}")
        ax.set(xlabel="severity", ylabel="top-1 accuracy", ylim=(0, None))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=6.5, handlelength=2.6)
    return figure_to_svg(fig)


def epsilon_value(text: str) -> float | None:
    """An epsilon label such as "4/255" or "0.01" as a number in units of 1/255, or None."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den) * 255
        return float(text) * 255
    except ValueError:
        return None


def adversarial_svg(attacks: dict[str, dict[str, float]], clean: float | None = None) -> str:
    """Accuracy against attack strength epsilon, one line per attack, starting from clean accuracy."""
    with style():
        fig = new_figure()
        ax = fig.subplots()
        for i, (name, by_eps) in enumerate(attacks.items()):
            points = [(epsilon_value(str(e)), a) for e, a in by_eps.items() if finite(a)]
            points = sorted((e, a) for e, a in points if e is not None)
            if finite(clean):
                points.insert(0, (0.0, clean))
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", color=colour(i), label=label(name.upper()), clip_on=False)
        ax.set(xlabel="epsilon (x 1/255, L-inf)", ylabel="top-1 accuracy", ylim=(0, None))
        ax.legend()
    return figure_to_svg(fig)
