"""Self-contained HTML reports: one Jinja2 environment over the package templates, and atomic writes.

Templates live in `vlmops/report/templates`; `base.html.j2` holds the page layout, the inline CSS and
macros that every report (eval, audit, monitor) reuses. Autoescaping is always on: every value that
comes from data is escaped; only SVG produced by `plots.figure_to_svg` is marked safe (`Markup`).
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping
from functools import cache
from numbers import Integral, Real
from pathlib import Path

from jinja2 import ChainableUndefined, Environment, PackageLoader, Undefined
from markupsafe import Markup

__all__ = ["Markup", "environment", "format_number", "is_skipped", "render", "write_html"]

DASH = "–"


def format_number(value: object, digits: int = 4) -> str:
    """A value for a table cell: numbers to `digits` significant digits, None/NaN as a dash."""
    if value is None or isinstance(value, Undefined):
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return f"{int(value):,}"
    if isinstance(value, Real):
        x = float(value)
        if math.isnan(x):
            return DASH
        if math.isinf(x):
            return "∞" if x > 0 else "-∞"
        if abs(x) >= 10**digits:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {format_number(v, digits)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        shown = ", ".join(format_number(v, digits) for v in value[:12])
        return shown + (f", … ({len(value)} in all)" if len(value) > 12 else "")
    return str(value)


def format_percent(value: object, digits: int = 1) -> str:
    """A fraction as a percentage ("12.3%"), None/NaN as a dash."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        return DASH
    return f"{float(value) * 100:.{digits}f}%"


_WORDS = {
    "auc": "AUC", "ece": "ECE", "mce": "mCE", "nll": "NLL", "ci": "CI", "rss": "RSS", "uri": "URI",
    "pii": "PII", "ttft": "TTFT", "usd": "USD",
}  # fmt: skip


def humanize(name: object) -> str:
    """A JSON key as a heading: "mean_set_size" -> "Mean set size", "relative_mce" -> "Relative mCE"."""
    words = [_WORDS.get(w, w) for w in str(name).replace("_", " ").split()]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def is_skipped(section: object) -> bool:
    """True for a section of the form {"skipped": reason} (a text reason; other uses of the key differ)."""
    return isinstance(section, Mapping) and isinstance(section.get("skipped"), str)


@cache
def environment() -> Environment:
    """The shared Jinja2 environment (package templates, autoescape on, report filters)."""
    env = Environment(
        loader=PackageLoader("vlmops.report", "templates"),
        autoescape=True,
        undefined=ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = format_number
    env.filters["pct"] = format_percent
    env.filters["humanize"] = humanize
    env.tests["skipped"] = is_skipped
    env.tests["number"] = lambda v: isinstance(v, Real) and not isinstance(v, bool)
    return env


def render(template_name: str, **context: object) -> str:
    """Render one package template with `context`."""
    return environment().get_template(template_name).render(**context)


def write_html(text: str, path: str | os.PathLike[str]) -> Path:
    """Write `text` to `path` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
