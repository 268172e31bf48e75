"""Model versions, aliases (`champion`, `challenger`, `canary`) and an append-only event history.

Every alias change is an event row (kind, alias, from, to, reason, evidence), so the registry can
always answer "which version served when" and "what do we roll back to". Stored in the same database
as the prediction log; copied artifacts live under VLMOPS_HOME/registry/<version>/.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import sqlalchemy as sa

from vlmops.config import get_settings
from vlmops.errors import VlmopsError
from vlmops.store.log import create_tables, make_engine
from vlmops.store.registry_tables import aliases, events, list_events, list_versions, versions

ALIASES = ("champion", "challenger", "canary", "shadow")


class RegistryError(VlmopsError):
    """A registry reference or operation is invalid."""


def recorded_data_version(uri: str) -> str | None:
    """The training-data version the model at `uri` records, or None (unknown scheme, no card)."""
    from vlmops.models import training_data_version

    try:
        return training_data_version(uri)
    except VlmopsError:  # a URI the registry keeps but this process cannot read (moved, other host)
        return None


class Registry:
    """Versions, aliases and their history in the store database."""

    def __init__(self, url: str | None = None, artifacts: Path | None = None) -> None:
        self.engine = make_engine(url)
        create_tables(self.engine, tables=[versions, aliases, events])
        self.artifacts = artifacts or get_settings().home / "registry"

    # -- versions ---------------------------------------------------------------------------------
    def register(
        self,
        version: str,
        uri: str,
        weights_sha256: str | None = None,
        data_version: str | None = None,
        parent: str | None = None,
        eval_report: dict | None = None,
        notes: str | None = None,
        copy_from: Path | None = None,
    ) -> dict:
        """Add a version (idempotent for the same version and weights); optionally copy its files.

        Without `data_version`, the training-data version recorded by the model itself (its card or
        bundle, see `vlmops.models.training_data_version`) is stored, so every version has its lineage.
        """
        existing = self.find(version)
        if existing is not None:
            if existing["weights_sha256"] != weights_sha256:
                raise RegistryError(f"version {version} is registered with other weights; use a new version")
            if eval_report is not None:
                self.attach_eval(version, eval_report)
            if existing["data_version"] is None:  # registered before its lineage was recorded
                known = data_version or recorded_data_version(uri)
                if known is not None:
                    with self.engine.begin() as conn:
                        conn.execute(
                            versions.update().where(versions.c.version == version).values(data_version=known)
                        )
            return self.get(version)
        if parent is not None:
            self.get(parent)
        if data_version is None:
            data_version = recorded_data_version(uri)
        if copy_from is not None:
            target = self.artifacts / version
            if not target.exists():
                shutil.copytree(copy_from, target.with_suffix(".tmp"), dirs_exist_ok=True)
                target.with_suffix(".tmp").rename(target)
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                versions.insert().values(
                    version=version,
                    uri=uri,
                    weights_sha256=weights_sha256,
                    data_version=data_version,
                    parent=parent,
                    eval_report=None if eval_report is None else json.dumps(eval_report),
                    created_at=now,
                    notes=notes,
                )
            )
            conn.execute(
                events.insert().values(
                    time=now,
                    kind="register",
                    to_version=version,
                    reason=notes,
                    evidence=json.dumps({"uri": uri, "parent": parent}),
                )
            )
        return self.get(version)

    def attach_eval(self, version: str, report: dict) -> None:
        """Store (or replace) a version's eval report."""
        self.get(version)
        with self.engine.begin() as conn:
            conn.execute(
                versions.update().where(versions.c.version == version).values(eval_report=json.dumps(report))
            )

    def find(self, ref: str) -> dict | None:
        """A version by its id or by an alias that points to it; None if neither."""
        with self.engine.connect() as conn:
            target = conn.execute(sa.select(aliases.c.version).where(aliases.c.alias == ref)).scalar()
            row = conn.execute(sa.select(versions).where(versions.c.version == (target or ref))).first()
        if row is None:
            return None
        data = dict(row._mapping)
        data["eval_report"] = json.loads(data["eval_report"]) if data["eval_report"] else None
        return data

    def get(self, ref: str) -> dict:
        """Like `find`, but a clear error when nothing matches."""
        found = self.find(ref)
        if found is None:
            raise RegistryError(f"no model version or alias {ref!r}; see `vlmops registry list`")
        return found

    def list(self) -> list[dict]:
        """Every version (without eval reports), oldest first, with the aliases pointing to it."""
        return list_versions(self.engine)

    # -- aliases and history ----------------------------------------------------------------------
    def alias(self, alias: str) -> str | None:
        """The version an alias points to."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(aliases.c.version).where(aliases.c.alias == alias)).scalar()

    def set_alias(
        self,
        alias: str,
        ref: str,
        kind: str = "alias",
        reason: str | None = None,
        evidence: dict | None = None,
    ) -> dict:
        """Point `alias` at a version and record the change as an event; returns the event."""
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r}; use one of {', '.join(ALIASES)}")
        version = self.get(ref)["version"]
        now = time.time()
        with self.engine.begin() as conn:
            previous = conn.execute(sa.select(aliases.c.version).where(aliases.c.alias == alias)).scalar()
            if previous is None:
                conn.execute(aliases.insert().values(alias=alias, version=version, updated_at=now))
            else:
                conn.execute(
                    aliases.update().where(aliases.c.alias == alias).values(version=version, updated_at=now)
                )
            event = {
                "time": now,
                "kind": kind,
                "alias": alias,
                "from_version": previous,
                "to_version": version,
                "reason": reason,
                "evidence": json.dumps(evidence or {}),
            }
            event["id"] = int(conn.execute(events.insert().values(**event)).inserted_primary_key[0])
        return {**event, "evidence": evidence or {}}

    def clear_alias(self, alias: str, kind: str = "clear", reason: str | None = None) -> dict | None:
        """Remove an alias (e.g. end a canary); recorded as an event. None if it was not set."""
        now = time.time()
        with self.engine.begin() as conn:
            previous = conn.execute(sa.select(aliases.c.version).where(aliases.c.alias == alias)).scalar()
            if previous is None:
                return None
            conn.execute(aliases.delete().where(aliases.c.alias == alias))
            event = {
                "time": now,
                "kind": kind,
                "alias": alias,
                "from_version": previous,
                "to_version": None,
                "reason": reason,
                "evidence": "{}",
            }
            conn.execute(events.insert().values(**event))
        return event

    def promote(self, ref: str, reason: str | None = None, evidence: dict | None = None) -> dict:
        """Make a version the champion."""
        return self.set_alias("champion", ref, kind="promote", reason=reason, evidence=evidence)

    def rollback_target(self, alias: str = "champion") -> str:
        """The version the alias held just before its current one."""
        current = self.alias(alias)
        if current is None:
            raise RegistryError(f"alias {alias!r} is not set; nothing to roll back")
        for event in reversed(self.history(alias)):
            if event["to_version"] == current and event["from_version"] not in (None, current):
                return event["from_version"]
        raise RegistryError(f"{alias} has no earlier version to roll back to")

    def rollback(
        self, alias: str = "champion", reason: str | None = None, evidence: dict | None = None
    ) -> dict:
        """Point the alias back at its previous version."""
        return self.set_alias(
            alias, self.rollback_target(alias), kind="rollback", reason=reason, evidence=evidence
        )

    def history(self, alias: str | None = None) -> list[dict]:
        """Events in time order (all, or those of one alias)."""
        return list_events(self.engine, alias)

    def served_at(self, when: float, alias: str = "champion") -> str | None:
        """Which version held the alias at a given time."""
        holder = None
        for event in self.history(alias):
            if event["time"] > when:
                break
            holder = event["to_version"]
        return holder
