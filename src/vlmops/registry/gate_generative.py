"""The promotion gate for generative models: champion and challenger on the same held-out items.

Two `vlmops.geneval/1` reports in (`vlmops eval --task caption|vqa`, or `generative_report`), one
decision out. The decision rule:

1. A paired test on the per-item scores: CIDEr-D per caption (task caption), exact match per answer
   (task vqa), averaged per image first (the questions about one image are not independent items; a
   caption is one item per image). The one-sided Wilcoxon signed-rank test (scipy; zero differences
   dropped; the normal approximation with tie correction where ties or zeros occur) asks whether the
   candidate's per-image scores are lower; the candidate **fails when p_worse < alpha**: it must not
   be significantly worse. Equal answers give no evidence either way (every difference zero: p = 1).
2. Tolerances on headline metrics, only where asked for (`rules`, e.g. ``cider_d_drop<=0.2,
   chair_s_increase<=0.05``): a drop in CIDEr-D, exact match or VQA accuracy, a rise in CHAIR_s
   (captions with a hallucinated object). They are not on by default: on the few hundred items a CPU
   gate affords, one changed caption moves corpus CIDEr-D or CHAIR_s by more than any useful
   tolerance, while the paired test weighs the changes against the sample size.

The paired bootstrap 95% CI of the mean per-image difference (candidate - baseline; 2,000 resamples of
images, seeded) is reported beside the test, for reading: it says how large a change could be.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from vlmops.evaluate.generative_suite import GENERATIVE_SCHEMA
from vlmops.registry.gate_base import GateCheck, GateDecision, GateError, parse_gate_rules

__all__ = ["GENERATIVE_SCHEMA", "generative_gate", "paired_score_test"]
# rule metric -> (headline name, sign): delta = sign * (candidate - baseline), "worse" is positive
GENERATIVE_DELTAS = {
    "cider_d_drop": ("cider_d", -1),
    "exact_match_drop": ("exact_match", -1),
    "vqa_accuracy_drop": ("vqa_accuracy", -1),
    "chair_s_increase": ("chair_s", +1),
}
ITEM_METRIC = {"caption": "cider_d", "vqa": "exact_match"}  # the per-item score the paired test compares
BOOTSTRAP_RESAMPLES = 2000


def paired_score_test(
    candidate, baseline, clusters=None, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES
) -> dict:
    """One-sided Wilcoxon signed-rank p-values (candidate worse / better) and the paired bootstrap CI of
    the mean difference, on per-item scores of the same items.

    `clusters` (one key per item, e.g. its image): items of one cluster are not independent (the
    questions about one image), so their scores are averaged per cluster first and the clusters are the
    units the test ranks and the bootstrap resamples.
    """
    cand, base = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    if cand.shape != base.shape or cand.ndim != 1 or not len(cand):
        raise GateError("the per-item scores of the two reports do not pair up (different lengths)")
    items = len(cand)
    if clusters is not None:
        _, unit = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
        counts = np.bincount(unit)
        cand, base = np.bincount(unit, cand) / counts, np.bincount(unit, base) / counts
    diff = cand - base
    changed = int(np.count_nonzero(diff))
    result = {
        "n": len(diff),
        "items": items,
        "changed": changed,
        "worse": int((diff < 0).sum()),
        "better": int((diff > 0).sum()),
        "mean_difference": float(diff.mean()),
    }
    if changed:
        worse = stats.wilcoxon(cand, base, zero_method="wilcox", alternative="less")
        better = stats.wilcoxon(cand, base, zero_method="wilcox", alternative="greater")
        result |= {"statistic": float(worse.statistic), "p_worse": float(worse.pvalue)}
        result["p_better"] = float(better.pvalue)
    else:
        result |= {"statistic": 0.0, "p_worse": 1.0, "p_better": 1.0}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {**result, "ci95": [float(low), float(high)], "test": "wilcoxon signed-rank, one-sided"}


def _paired_items(candidate: dict, baseline: dict) -> tuple[str, list, list, list[str]]:
    if candidate.get("task") != baseline.get("task"):
        raise GateError(
            f"the reports are of different tasks ({candidate.get('task')} and {baseline.get('task')}); "
            "evaluate both models with the same --task"
        )
    ci, bi = candidate.get("items"), baseline.get("items")
    if not ci or not bi:
        raise GateError("a report has no per-item scores ('items'); re-run `vlmops eval` with this version")
    if ci["ids"] != bi["ids"]:
        raise GateError("the reports were made on different items; evaluate both on the same data and split")
    metric = ITEM_METRIC[candidate["task"]]
    if metric not in ci or metric not in bi:
        raise GateError(f"a report has no per-item {metric}; re-run `vlmops eval` with this version")
    images = [item.rpartition("/")[0] for item in ci["ids"]]  # ids are RECORD/QUESTION_TYPE
    return metric, ci[metric], bi[metric], images


def generative_gate(
    candidate: dict, baseline: dict, rules: str | None = None, alpha: float = 0.05
) -> GateDecision:
    """Decide whether a generative `candidate` may replace `baseline` (see the module's decision rule)."""
    metric, cand_items, base_items, images = _paired_items(candidate, baseline)
    checks: list[GateCheck] = []
    for name, op, limit in parse_gate_rules(rules, GENERATIVE_DELTAS) if rules else []:
        headline, sign = GENERATIVE_DELTAS[name]
        a, b = candidate["headline"].get(headline), baseline["headline"].get(headline)
        if a is None or b is None:
            note = f"{headline} missing from a report (task {candidate.get('task')})"
            checks.append(GateCheck(f"{name}{op}{limit:g}", None, limit, False, note))
            continue
        delta = sign * (a - b)
        ok = delta <= limit if op == "<=" else delta < limit
        note = f"{headline}: {b:.4f} -> {a:.4f}"
        checks.append(GateCheck(f"{name}{op}{limit:g}", float(delta), limit, bool(ok), note))
    paired = {"metric": metric, "unit": "image", **paired_score_test(cand_items, base_items, images)}
    low, high = paired["ci95"]
    checks.append(
        GateCheck(
            f"paired_wilcoxon_p_worse>={alpha:g}",
            paired["p_worse"],
            alpha,
            paired["p_worse"] >= alpha,
            f"{metric} per image ({paired['items']} items): {paired['worse']} worse, {paired['better']} "
            f"better of {paired['n']}; "
            f"mean difference {paired['mean_difference']:+.4f} (95% CI {low:+.4f} to {high:+.4f})",
        )
    )
    return GateDecision(all(c.passed for c in checks), checks, paired)
