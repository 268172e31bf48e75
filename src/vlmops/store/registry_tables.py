"""The registry's tables (versions, aliases, events) and reading an alias from them.

The tables live in the store so that layers below the registry can read them: the gateway follows
the canary and shadow aliases (`AliasReader`) and the dashboard lists versions and events without
importing `vlmops.registry`, which writes them.
"""

from __future__ import annotations

import json

import sqlalchemy as sa

from vlmops.store.log import create_tables, make_engine, metadata

versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("version", sa.String(128), primary_key=True),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("weights_sha256", sa.String(64)),
    sa.Column("data_version", sa.String(128)),
    sa.Column("parent", sa.String(128)),
    sa.Column("eval_report", sa.Text),  # JSON of a vlmops.eval/1 report
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("notes", sa.Text),
)

aliases = sa.Table(
    "model_aliases",
    metadata,
    sa.Column("alias", sa.String(32), primary_key=True),
    sa.Column("version", sa.String(128), sa.ForeignKey("model_versions.version"), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

events = sa.Table(
    "registry_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float, nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),  # register, promote, rollback, alias, canary ...
    sa.Column("alias", sa.String(32)),
    sa.Column("from_version", sa.String(128)),
    sa.Column("to_version", sa.String(128)),
    sa.Column("reason", sa.Text),
    sa.Column("evidence", sa.Text),  # JSON
)


class AliasReader:
    """Reads where registry aliases point, from the store database (creating the tables if new)."""

    def __init__(self, url: str | None = None) -> None:
        self.engine = make_engine(url)
        create_tables(self.engine, tables=[versions, aliases, events])

    def alias(self, alias: str) -> str | None:
        """The version an alias points to (None when it points nowhere)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(aliases.c.version).where(aliases.c.alias == alias)).scalar()


def list_versions(engine: sa.Engine) -> list[dict]:
    """Every version (without eval reports), oldest first, with the aliases pointing to it."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(versions).order_by(versions.c.created_at)).fetchall()
        held = conn.execute(sa.select(aliases)).fetchall()
    by_version: dict[str, list[str]] = {}
    for alias in held:
        by_version.setdefault(alias.version, []).append(alias.alias)
    return [
        {
            **{k: v for k, v in r._mapping.items() if k != "eval_report"},
            "has_eval": r.eval_report is not None,
            "aliases": sorted(by_version.get(r.version, [])),
        }
        for r in rows
    ]


def list_events(engine: sa.Engine, alias: str | None = None) -> list[dict]:
    """Registry events in time order (all, or those of one alias)."""
    query = sa.select(events).order_by(events.c.id)
    if alias is not None:
        query = query.where(events.c.alias == alias)
    with engine.connect() as conn:
        return [{**r._mapping, "evidence": json.loads(r.evidence or "{}")} for r in conn.execute(query)]
