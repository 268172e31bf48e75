"""The monitor's tables (passes, fired alerts) and reading them back, for every layer that shows them.

The monitor writes these rows; the dashboard (`report.dashboard`, also served by the gateway) reads
them here, below both.
"""

from __future__ import annotations

import json

import sqlalchemy as sa

from vlmops.store.feedback import feedback_metrics
from vlmops.store.log import create_tables, feedback, make_engine, metadata, requests

monitor_runs = sa.Table(
    "monitor_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float, nullable=False, index=True),
    sa.Column("model_version", sa.String(128), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("window_start", sa.Float),
    sa.Column("window_end", sa.Float),
    sa.Column("metrics", sa.Text, nullable=False),  # JSON: the flat metrics alert rules read
    sa.Column("results", sa.Text, nullable=False),  # JSON: every detector's full result
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float, nullable=False, index=True),
    sa.Column("rule", sa.String(128), nullable=False, index=True),
    sa.Column("metric", sa.String(128), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("model_version", sa.String(128)),
    sa.Column("evidence", sa.Text),  # JSON
)


def list_alerts(engine: sa.Engine, since: float | None = None) -> list[dict]:
    """Fired alerts, oldest first."""
    query = sa.select(alerts).order_by(alerts.c.time)
    if since is not None:
        query = query.where(alerts.c.time >= since)
    with engine.connect() as conn:
        return [{**r._mapping, "evidence": json.loads(r.evidence or "{}")} for r in conn.execute(query)]


def read_alerts(url: str | None = None) -> list[dict]:
    """Fired alerts in the store at `url`, oldest first (creating the table if new)."""
    engine = make_engine(url)
    create_tables(engine, tables=[alerts])
    return list_alerts(engine)


def monitor_history(url: str | None = None, late_feedback: bool = False) -> list[dict]:
    """Every stored pass, oldest first.

    With `late_feedback`, each pass's ``feedback.*`` metrics are recomputed from all feedback logged
    so far on the requests of its window: a pass runs before people judge the answers, so the accuracy
    they realise is known only later (the stored values are those at the time of the pass).
    """
    engine = make_engine(url)
    create_tables(engine, tables=[monitor_runs])
    with engine.connect() as conn:
        rows = conn.execute(sa.select(monitor_runs).order_by(monitor_runs.c.id)).fetchall()
        runs = [
            {**r._mapping, "metrics": json.loads(r.metrics), "results": json.loads(r.results)} for r in rows
        ]
        if late_feedback:
            for run in runs:
                run["metrics"].update(_feedback_now(conn, run))
    return runs


def _feedback_now(conn, run: dict) -> dict:
    """The ``feedback.*`` metrics of one stored pass's window, from the feedback logged until now."""
    if run["window_start"] is None or run["window_end"] is None:
        return {}
    window = conn.execute(
        sa.select(requests.c.request_id, requests.c.endpoint, requests.c.prediction).where(
            requests.c.model_version == run["model_version"],
            requests.c.endpoint == "classify",
            requests.c.embedding.is_not(None),
            requests.c.time.between(run["window_start"], run["window_end"]),
        )
    ).fetchall()
    ids = [r.request_id for r in window]
    given = conn.execute(sa.select(feedback).where(feedback.c.request_id.in_(ids))).fetchall() if ids else []
    fb = feedback_metrics(window, given).to_dict()
    return {f"feedback.{k}": (None if v is None else float(v)) for k, v in fb.items()}
