"""The promotion gate: may a candidate replace the baseline? Two eval reports in, one decision out.

Tolerance rules on headline metrics (a drop in top-1, worst-slice top-1 or corruption top-1, a rise
in ECE), plus a paired test on the per-item outcomes of the same evaluation items: an exact McNemar
test (binomial on the discordant pairs) that the candidate is worse. A rule whose metric is missing
from either report fails rather than passing silently.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from scipy import stats

from vlmops.errors import VlmopsError

# rule metric -> (headline name, sign): delta = sign * (candidate - baseline), "worse" is positive
DELTAS = {
    "top1_drop": ("top1", -1),
    "worst_slice_drop": ("worst_slice_top1", -1),
    "robustness_drop": ("corruption_top1", -1),
    "ece_increase": ("ece", +1),
}
DEFAULT_RULES = "top1_drop<=0.01,worst_slice_drop<=0.02,ece_increase<=0.02,robustness_drop<=0.02"
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

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks], "paired": self.paired}


def parse_gate_rules(text: str) -> list[tuple[str, str, float]]:
    """'top1_drop<=0.01,ece_increase<=0.02' -> [(metric, op, limit)]."""
    rules = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _RULE.match(part)
        if match is None or match.group(1) not in DELTAS:
            raise GateError(f"bad gate rule {part!r}: use METRIC<=LIMIT with METRIC in {', '.join(DELTAS)}")
        rules.append((match.group(1), match.group(2), float(match.group(3))))
    if not rules:
        raise GateError("no gate rules given")
    return rules


def mcnemar_worse(candidate: list[int], baseline: list[int]) -> dict:
    """Exact one-sided McNemar: is the candidate wrong on more of the discordant items?"""
    b = sum(
        1 for c, r in zip(candidate, baseline, strict=True) if r and not c
    )  # baseline right, candidate wrong
    c = sum(1 for c, r in zip(candidate, baseline, strict=True) if c and not r)
    n = b + c
    p_worse = float(stats.binomtest(b, n, 0.5, alternative="greater").pvalue) if n else 1.0
    p_better = float(stats.binomtest(c, n, 0.5, alternative="greater").pvalue) if n else 1.0
    return {"only_baseline_right": b, "only_candidate_right": c, "p_worse": p_worse, "p_better": p_better}


def _paired(candidate: dict, baseline: dict) -> tuple[list[int], list[int]]:
    ci, bi = candidate.get("items"), baseline.get("items")
    if not ci or not bi:
        raise GateError("a report has no per-item outcomes ('items'); re-run `vlmops eval` with this version")
    if ci["ids"] != bi["ids"]:
        raise GateError("the reports were made on different items; evaluate both on the same data and split")
    return ci["correct"], bi["correct"]


def gate(candidate: dict, baseline: dict, rules: str = DEFAULT_RULES, alpha: float = 0.05) -> GateDecision:
    """Decide whether `candidate` may replace `baseline` (both vlmops.eval/1 reports)."""
    cand_items, base_items = _paired(candidate, baseline)
    checks = []
    for metric, op, limit in parse_gate_rules(rules):
        name, sign = DELTAS[metric]
        a, b = candidate["headline"].get(name), baseline["headline"].get(name)
        if a is None or b is None:
            checks.append(
                GateCheck(f"{metric}{op}{limit:g}", None, limit, False, f"{name} missing from a report")
            )
            continue
        delta = sign * (a - b)
        ok = delta <= limit if op == "<=" else delta < limit
        checks.append(
            GateCheck(f"{metric}{op}{limit:g}", float(delta), limit, bool(ok), f"{name}: {b:.4f} -> {a:.4f}")
        )
    paired = mcnemar_worse(cand_items, base_items)
    significantly_worse = paired["p_worse"] < alpha
    checks.append(
        GateCheck(
            f"paired_mcnemar_p_worse>={alpha:g}",
            paired["p_worse"],
            alpha,
            not significantly_worse,
            "exact McNemar on per-item top-1 outcomes",
        )
    )
    return GateDecision(all(c.passed for c in checks), checks, paired)
