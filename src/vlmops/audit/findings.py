"""What every audit check returns: findings about records, plus summary numbers for gates and reports.

A `Finding` is one problem with one record (or a group of records, e.g. a duplicate cluster, reported
once per member with the cluster in its evidence). A `CheckResult` bundles a check's findings with its
summary metrics (the numbers `--fail-on` reads, e.g. `near_dup_rate`) and any notes, such as a
threshold the check derived from the data itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vlmops.jsonable import to_jsonable

Severity = Literal["info", "warning", "error"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error")


@dataclass(frozen=True)
class Finding:
    """One problem: which record, which check, how bad, and the evidence a reviewer needs."""

    record_id: str
    check: str
    kind: str
    severity: Severity
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "record_id": self.record_id,
            "check": self.check,
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "evidence": to_jsonable(self.evidence),
        }


@dataclass
class CheckResult:
    """A check's findings, its summary metrics (for --fail-on) and notes (thresholds, skips)."""

    check: str
    findings: list[Finding] = field(default_factory=list)
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict (findings included)."""
        out: dict[str, Any] = {"check": self.check}
        if self.skipped is not None:
            out["skipped"] = self.skipped
        out |= {
            "metrics": to_jsonable(self.metrics),
            "details": to_jsonable(self.details),
            "notes": list(self.notes),
            "n_findings": len(self.findings),
            "findings": [f.to_dict() for f in self.findings],
        }
        return out
