"""`--fail-on` rules: "top1<0.5,ece>0.08" -> which failure conditions fired (CI exit codes).

A rule is a failure condition: a metric, a comparison and a number. It *fires* when the comparison
holds: `ece>0.08` fires (and fails the run) when ECE is above 0.08. A metric that was not measured (its
section was skipped) fires its rule, with that reason: a gate must not pass because nothing was
checked. Shared by eval and audit, their CLI lines, JSON (`fired`, `reason`) and HTML.
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
    """metric <op> threshold; fires when the comparison is true."""

    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


@dataclass(frozen=True)
class RuleResult:
    """One rule checked against the measured value; `fired` means the failure condition holds."""

    rule: str
    metric: str
    value: float | None
    fired: bool
    reason: str

    @property
    def verdict(self) -> str:
        """'fired' or 'not fired', the word every output uses."""
        return verdict(self.fired)

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


def verdict(fired: bool) -> str:
    """The word for a rule's outcome: a rule is a failure condition, so it either fired or did not."""
    return "fired" if fired else "not fired"


def check_rules(rules: list[Rule], metrics: Mapping[str, float | None]) -> list[RuleResult]:
    """Evaluate each rule against `metrics`: reasons read "fired: top1=0.42 < 0.5" or "not fired: ..."."""
    results = []
    for rule in rules:
        value = metrics.get(rule.metric)
        if value is None:
            reason = f"fired: {rule.metric} not measured (section skipped), so {rule} cannot be ruled out"
            results.append(RuleResult(str(rule), rule.metric, None, True, reason))
            continue
        fired = bool(OPERATORS[rule.op](value, rule.threshold))
        comparison = f"{rule.op} {rule.threshold:g}" if fired else f"not {rule.op} {rule.threshold:g}"
        reason = f"{verdict(fired)}: {rule.metric}={value:.4g} {comparison}"
        results.append(RuleResult(str(rule), rule.metric, float(value), fired, reason))
    return results


def count_fired(results: object) -> int:
    """How many rules fired in a report's `fail_on` list (reports written before `fired` say `violated`)."""
    rows = [r for r in results or [] if isinstance(r, Mapping)]  # type: ignore[union-attr]
    return sum(bool(r.get("fired", r.get("violated"))) for r in rows)
