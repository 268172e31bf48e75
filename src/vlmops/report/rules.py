"""`--fail-on` rules: "top1<0.5,ece>0.08" -> which metrics violate their limits (CI exit codes).

A rule names a metric, a comparison and a number, and is violated when the comparison holds: `ece>0.08`
fails the run when ECE is above 0.08. A metric that was not measured (its section was skipped) violates
its rule, with that reason: a gate must not pass because nothing was checked. Shared by eval and audit.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from vlmops.errors import VlmopsError

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RULE = re.compile(rf"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(<=|>=|==|!=|<|>)\s*({_NUMBER})\s*$")


class RuleError(VlmopsError):
    """A --fail-on expression that cannot be parsed or names an unknown metric."""


@dataclass(frozen=True)
class Rule:
    """metric <op> threshold; violated when the comparison is true."""

    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


@dataclass(frozen=True)
class RuleResult:
    """One rule checked against the measured value."""

    rule: str
    metric: str
    value: float | None
    violated: bool
    reason: str

    def to_dict(self) -> dict:
        """Plain dict for JSON output."""
        return asdict(self)


def parse_rules(text: str | None, known: Mapping[str, object] | None = None) -> list[Rule]:
    """Parse comma-separated rules; RuleError names the bad part and, for unknown metrics, the valid ones."""
    if text is None or not text.strip():
        return []
    rules = []
    for part in text.split(","):
        match = _RULE.match(part)
        if not match:
            raise RuleError(
                f"cannot parse --fail-on rule {part.strip()!r}: write METRIC<OP>NUMBER with OP one of "
                f"{' '.join(OPERATORS)}, e.g. 'top1<0.5,ece>0.08'"
            )
        metric, op, number = match.group(1), match.group(2), float(match.group(3))
        if known is not None and metric not in known:
            names = ", ".join(sorted(known))
            raise RuleError(f"unknown metric {metric!r} in --fail-on; known metrics: {names}")
        rules.append(Rule(metric, op, number))
    return rules


def check_rules(rules: list[Rule], metrics: Mapping[str, float | None]) -> list[RuleResult]:
    """Evaluate each rule against `metrics`."""
    results = []
    for rule in rules:
        value = metrics.get(rule.metric)
        if value is None:
            results.append(RuleResult(str(rule), rule.metric, None, True, "not measured (section skipped)"))
            continue
        violated = OPERATORS[rule.op](value, rule.threshold)
        reason = f"{rule.metric}={value:.4g} {'violates' if violated else 'meets'} {rule}"
        results.append(RuleResult(str(rule), rule.metric, float(value), violated, reason))
    return results
