"""The monitoring dashboard; it renders in `vlmops.report.dashboard` (the gateway serves it too)."""

from vlmops.report.dashboard import accuracy_svg, dashboard_context, drift_svg, render_dashboard

__all__ = ["accuracy_svg", "dashboard_context", "drift_svg", "render_dashboard"]
