"""What every promotion gate shares: rules, checks, the decision (`gate` and `gate_generative`)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from vlmops.errors import VlmopsError

_RULE = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|<)\s*(-?[0-9.]+(?:e-?\d+)?)\s*$")


class GateError(VlmopsError):
    """Bad gate rules or incomparable reports."""


@dataclass(frozen=True)
class GateCheck:
    """One rule's outcome."""

    rule: str
    value: float | None
    limit: float
    passed: bool
    note: str = ""


@dataclass
class GateDecision:
    """All checks and the verdict."""

    passed: bool
    checks: list[GateCheck]
    paired: dict = field(default_factory=dict)
    not_checked: list[str] = field(default_factory=list)  # default rules left out, with the reason

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return {
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
            "paired": self.paired,
            "not_checked": self.not_checked,
        }


def parse_gate_rules(text: str, deltas: dict) -> list[tuple[str, str, float]]:
    """'top1_drop<=0.01,ece_increase<=0.02' -> [(metric, op, limit)]; `deltas`: the known metrics."""
    rules = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _RULE.match(part)
        if match is None or match.group(1) not in deltas:
            raise GateError(f"bad gate rule {part!r}: use METRIC<=LIMIT with METRIC in {', '.join(deltas)}")
        rules.append((match.group(1), match.group(2), float(match.group(3))))
    if not rules:
        raise GateError("no gate rules given")
    return rules
