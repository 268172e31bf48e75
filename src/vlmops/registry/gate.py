"""The promotion gate: may a candidate replace the baseline? Two eval reports in, one decision out.

Tolerance rules on headline metrics (a drop in top-1, worst-slice top-1 or corruption top-1, a rise
in ECE), plus a paired test on the per-item outcomes of the same evaluation items: an exact McNemar
test (binomial on the discordant pairs) that the candidate is worse. The default rules follow the
sections both reports have (a quick-suite report has no corruption robustness, so robustness_drop is
left out and the decision says so); a rule given explicitly whose metric is missing from either report
fails rather than passing silently, and its note says which suite produces the metric.
"""

from __future__ import annotations

from scipy import stats

from vlmops.registry.gate_base import GateCheck, GateDecision, GateError
from vlmops.registry.gate_base import parse_gate_rules as _parse_rules

__all__ = ["GateCheck", "GateDecision", "GateError", "gate", "mcnemar_worse", "parse_gate_rules"]

# rule metric -> (headline name, sign): delta = sign * (candidate - baseline), "worse" is positive
DELTAS = {
    "top1_drop": ("top1", -1),
    "worst_slice_drop": ("worst_slice_top1", -1),
    "robustness_drop": ("corruption_top1", -1),
    "ece_increase": ("ece", +1),
}
DEFAULT_RULES = "top1_drop<=0.01,worst_slice_drop<=0.02,ece_increase<=0.02,robustness_drop<=0.02"
# headline name -> (report section that holds it, which `vlmops eval --suite` runs that section)
SOURCES = {
    "top1": ("accuracy", "every suite"),
    "worst_slice_top1": ("slices", "every suite"),
    "ece": ("calibration", "every suite"),
    "corruption_top1": ("robustness", "--suite standard or full"),
}


def parse_gate_rules(text: str, deltas: dict | None = None) -> list[tuple[str, str, float]]:
    """'top1_drop<=0.01,ece_increase<=0.02' -> [(metric, op, limit)] (default metrics: DELTAS)."""
    return _parse_rules(text, DELTAS if deltas is None else deltas)


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


def _missing(name: str, candidate: dict, baseline: dict) -> str:
    """Which report lacks `name`, why (its suite, the section's skip reason) and which suite has it."""
    section, suites = SOURCES[name]
    where = []
    for role, report in (("candidate", candidate), ("baseline", baseline)):
        if report.get("headline", {}).get(name) is None:
            reason = (
                (report.get(section) or {}).get("skipped") if isinstance(report.get(section), dict) else None
            )
            suite = report.get("suite", "?")
            where.append(f"the {role} report (suite {suite}" + (f": {reason})" if reason else ")"))
    return (
        f"{name} missing from {' and '.join(where)}; it comes from the {section} section, which "
        f"{suites} runs: evaluate both models with it, or leave this rule out of --rules"
    )


def gate(candidate: dict, baseline: dict, rules: str | None = None, alpha: float = 0.05) -> GateDecision:
    """Decide whether `candidate` may replace `baseline` (both vlmops.eval/1 reports).

    `rules=None` takes DEFAULT_RULES, less those whose metric one of the reports lacks (listed in
    `not_checked`); an explicit rule on a missing metric fails with a note naming the suite that has it.
    Two generative reports (vlmops.geneval/1) go to `gate_generative.generative_gate`.
    """
    from vlmops.registry.gate_generative import GENERATIVE_SCHEMA, generative_gate

    kinds = {candidate.get("schema"), baseline.get("schema")}
    if GENERATIVE_SCHEMA in kinds:
        if kinds != {GENERATIVE_SCHEMA}:
            raise GateError(
                "one report is of a generative model and the other of a dual encoder; gate like with like"
            )
        return generative_gate(candidate, baseline, rules, alpha)
    cand_items, base_items = _paired(candidate, baseline)
    checks, not_checked = [], []
    for metric, op, limit in parse_gate_rules(DEFAULT_RULES if rules is None else rules):
        name, sign = DELTAS[metric]
        a, b = candidate["headline"].get(name), baseline["headline"].get(name)
        if a is None or b is None:
            note = _missing(name, candidate, baseline)
            if rules is None:
                not_checked.append(f"{metric}{op}{limit:g}: {note}")
            else:
                checks.append(GateCheck(f"{metric}{op}{limit:g}", None, limit, False, note))
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
    return GateDecision(all(c.passed for c in checks), checks, paired, not_checked)
