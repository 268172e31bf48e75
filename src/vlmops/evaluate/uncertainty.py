"""Calibration and conformal sections of `vlmops eval`: do the confidences mean anything?

Both need data the metrics were not fitted on. Each repeat splits the evaluated rows at random into a
calibration half and a test half (items, not clusters: split conformal's guarantee needs exchangeable
calibration and test points). The temperature is fitted on the calibration half only; conformal
thresholds are fitted on the same half's temperature-scaled probabilities. Coverage is reported as the
mean over `repeats` random splits (with its spread), the way conformal papers check validity: one split's
coverage is itself a random variable with a standard deviation of about sqrt(alpha (1 - alpha) / n).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlmops.evaluate.calibration import (
    calibration_report,
    fit_temperature,
    reliability_diagram,
    softmax,
)
from vlmops.evaluate.conformal import ConformalClassifier, aurc, risk_coverage_curve

CURVE_POINTS = 101


def halves(n: int, seed: int, repeat: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of range(n) into a calibration half and a test half."""
    if n < 4:
        raise ValueError(f"calibration needs at least 4 evaluated images, got {n}")
    order = np.random.default_rng([seed, 7919, repeat]).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def calibration_section(logits: np.ndarray, targets: np.ndarray, seed: int, n_bins: int = 15) -> dict:
    """Metrics on the test half before and after temperature scaling fitted on the calibration half."""
    cal, test = halves(len(targets), seed, 0)
    temperature = fit_temperature(logits[cal], targets[cal])
    before = softmax(logits[test])
    after = softmax(logits[test], temperature)
    return {
        "n_calibration": len(cal),
        "n_test": len(test),
        "temperature": temperature,
        "before": calibration_report(before, targets[test], n_bins).to_dict(),
        "after": calibration_report(after, targets[test], n_bins).to_dict(),
        "reliability_before": reliability_diagram(before, targets[test], n_bins).to_dict(),
        "reliability_after": reliability_diagram(after, targets[test], n_bins).to_dict(),
    }


def _per_group(covered: np.ndarray, sizes: np.ndarray, groups: np.ndarray) -> dict[str, dict]:
    out = {}
    for g in np.unique(groups):
        mask = groups == g
        out[str(g)] = {
            "coverage": float(covered[mask].mean()),
            "mean_set_size": float(sizes[mask].mean()),
            "n": int(mask.sum()),
        }
    return out


def conformal_section(
    logits: np.ndarray,
    targets: np.ndarray,
    slice_values: dict[str, np.ndarray],
    alpha: float,
    seed: int,
    repeats: int = 20,
    mondrian_by: str | None = None,
) -> dict:
    """LAC and APS sets (and Mondrian LAC per `mondrian_by`): coverage and set size, overall and per slice."""
    if mondrian_by is not None and mondrian_by not in slice_values:
        fields = ", ".join(slice_values)
        raise ValueError(f"--mondrian {mondrian_by!r} is not a slice field; slice fields: {fields}")
    variants: dict[str, tuple[str, str | None]] = {"lac": ("lac", None), "aps": ("aps", None)}
    if mondrian_by:
        variants[f"mondrian_lac[{mondrian_by}]"] = ("lac", mondrian_by)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    first_sizes: dict[str, list[int]] = {}
    for r in range(repeats):
        cal, test = halves(len(targets), seed, r)
        temperature = fit_temperature(logits[cal], targets[cal])
        cal_probs, test_probs = softmax(logits[cal], temperature), softmax(logits[test], temperature)
        for name, (method, by) in variants.items():
            groups = slice_values[by] if by else None
            clf = ConformalClassifier(alpha=alpha, method=method, seed=seed + r)
            clf.fit(cal_probs, targets[cal], None if groups is None else groups[cal])
            sets = clf.predict_sets(test_probs, None if groups is None else groups[test])
            covered = sets[np.arange(len(test)), targets[test]].astype(np.float64)
            sizes = sets.sum(axis=1)
            per_slice = {
                field: _per_group(covered, sizes, values[test]) for field, values in slice_values.items()
            }
            runs[name].append({"coverage": covered.mean(), "size": sizes.mean(), "slices": per_slice})
            if r == 0:
                first_sizes[name] = sizes.tolist()
    out = {"alpha": alpha, "target_coverage": 1 - alpha, "repeats": repeats}
    for name, results in runs.items():
        out[name] = _summarise(results, first_sizes[name])
    out["risk_coverage"] = risk_coverage(logits, targets, seed)
    return out


def _summarise(results: Sequence[dict], sizes: list[int]) -> dict:
    cov = np.array([r["coverage"] for r in results])
    size = np.array([r["size"] for r in results])
    by_slice: dict = {}
    for field, slices in results[0]["slices"].items():
        by_slice[field] = {}
        for value in slices:
            reps = [r["slices"][field].get(value) for r in results if value in r["slices"][field]]
            by_slice[field][value] = {
                "coverage": float(np.mean([s["coverage"] for s in reps])),
                "mean_set_size": float(np.mean([s["mean_set_size"] for s in reps])),
                "n_per_split": float(np.mean([s["n"] for s in reps])),
            }
    return {
        "coverage": float(cov.mean()),
        "coverage_sd": float(cov.std(ddof=1)) if len(cov) > 1 else 0.0,
        "coverage_min": float(cov.min()),
        "coverage_max": float(cov.max()),
        "mean_set_size": float(size.mean()),
        "set_size_histogram": np.bincount(np.asarray(sizes, dtype=np.int64)).tolist(),
        "by_slice": by_slice,
    }


def risk_coverage(logits: np.ndarray, targets: np.ndarray, seed: int) -> dict:
    """Abstention by confidence on the first test half: risk at each coverage, AURC, sampled curve."""
    cal, test = halves(len(targets), seed, 0)
    probs = softmax(logits[test], fit_temperature(logits[cal], targets[cal]))
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets[test]
    cov, risk = risk_coverage_curve(confidence, correct)
    pick = np.unique(np.linspace(0, len(cov) - 1, CURVE_POINTS).round().astype(int))
    return {
        "aurc": aurc(confidence, correct),
        "coverage": cov[pick].tolist(),
        "risk": risk[pick].tolist(),
    }
