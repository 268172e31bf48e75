"""Split conformal sets: finite-sample coverage on calibrated synthetic data, Mondrian groups, abstention."""

from __future__ import annotations

import numpy as np
import pytest

from vlmops.errors import NotFittedError, VlmopsError
from vlmops.evaluate.calibration import softmax
from vlmops.evaluate.conformal import (
    ConformalClassifier,
    aurc,
    conformal_quantile,
    coverage,
    mean_set_size,
    risk_coverage_curve,
)

N_CAL, N_TEST, N_SPLITS = 1000, 2000, 50


def sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from that row's distribution."""
    return (probs.cumsum(axis=1) > rng.uniform(size=(len(probs), 1))).argmax(axis=1)


@pytest.fixture(scope="module")
def calibrated() -> tuple[np.ndarray, np.ndarray]:
    """k=10 softmax of noisy logits, labels drawn from those probabilities: a calibrated model."""
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(size=(20000, 10)) * 2.0)
    return probs, sample_labels(probs, rng)


@pytest.fixture(scope="module")
def split_results(calibrated) -> dict:
    probs, labels = calibrated
    rng = np.random.default_rng(1)
    results: dict = {}
    for _ in range(N_SPLITS):
        perm = rng.permutation(len(labels))
        cal, test = perm[:N_CAL], perm[N_CAL : N_CAL + N_TEST]
        for alpha in (0.05, 0.1, 0.2):
            for method in ("lac", "aps"):
                sets = (
                    ConformalClassifier(alpha, method).fit(probs[cal], labels[cal]).predict_sets(probs[test])
                )
                entry = results.setdefault((alpha, method), {"coverage": [], "size": []})
                entry["coverage"].append(coverage(sets, labels[test]))
                entry["size"].append(mean_set_size(sets))
    return {key: {name: np.array(v) for name, v in entry.items()} for key, entry in results.items()}


@pytest.mark.parametrize("method", ["lac", "aps"])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_coverage_matches_target(split_results, alpha, method):
    covs = split_results[(alpha, method)]["coverage"]
    assert abs(covs.mean() - (1 - alpha)) <= 0.01
    # Per split, coverage varies with both the calibration quantile and the test sample:
    # sd ~ sqrt(a(1-a)(1/n_cal + 1/n_test)), i.e. 0.008-0.016 here; allow 0.03 or 4 sd, whichever is larger.
    sd = np.sqrt(alpha * (1 - alpha) * (1 / N_CAL + 1 / N_TEST))
    assert covs.min() >= 1 - alpha - max(0.03, 4 * sd)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_lac_sets_are_smaller_than_aps(split_results, alpha):
    assert split_results[(alpha, "lac")]["size"].mean() <= split_results[(alpha, "aps")]["size"].mean()


def test_aps_include_last_label_over_covers_and_randomized_is_exact(calibrated):
    probs, labels = calibrated
    cal, test = slice(0, 5000), slice(5000, 20000)
    plain = ConformalClassifier(0.2, "aps").fit(probs[cal], labels[cal])
    last = ConformalClassifier(0.2, "aps", include_last_label=True).fit(probs[cal], labels[cal])
    rand = ConformalClassifier(0.2, "aps", randomized=True).fit(probs[cal], labels[cal])
    sets_plain, sets_last = plain.predict_sets(probs[test]), last.predict_sets(probs[test])
    assert np.all(sets_last >= sets_plain)  # the conservative set contains the score-consistent one
    assert coverage(sets_last, labels[test]) > 0.85
    assert coverage(rand.predict_sets(probs[test]), labels[test]) == pytest.approx(0.8, abs=0.015)


def test_lac_set_rule_by_hand():
    cal_probs = np.array([[0.7, 0.2, 0.1]] * 9)
    cal_labels = np.array([0] * 8 + [1])  # scores: eight 0.3s and one 0.8
    clf = ConformalClassifier(alpha=0.2).fit(cal_probs, cal_labels)
    # level = ceil(10 * 0.8) / 9 = 8/9 -> higher quantile of sorted scores = 0.3
    assert clf.threshold_ == pytest.approx(0.3)
    sets = clf.predict_sets(np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1]]))
    assert sets.tolist() == [[True, False, False], [False, False, False]]


def test_aps_scores_and_sets_by_hand():
    # sorted masses for [0.5, 0.3, 0.2]: class 0 -> 0.5, class 1 -> 0.8, class 2 -> 1.0
    probs = np.array([[0.5, 0.3, 0.2]])
    clf = ConformalClassifier(alpha=0.5, method="aps").fit(np.repeat(probs, 3, axis=0), np.array([0, 1, 2]))
    assert clf.threshold_ == pytest.approx(0.8)  # level ceil(4 * 0.5) / 3 = 2/3 -> second of 0.5, 0.8, 1.0
    assert clf.predict_sets(probs).tolist() == [[True, True, False]]
    last = ConformalClassifier(alpha=0.5, method="aps", include_last_label=True).fit(
        np.repeat(probs, 3, axis=0), np.array([0, 1, 2])
    )
    assert last.predict_sets(np.array([[0.5, 0.2, 0.3]])).tolist() == [[True, False, True]]


def test_conformal_quantile_small_n_gives_infinite_threshold():
    assert conformal_quantile(np.array([0.1, 0.2]), alpha=0.1) == np.inf
    assert conformal_quantile(np.arange(1, 20) / 20, alpha=0.1) == pytest.approx(0.9)  # ceil(18)/19 -> 18th


def test_mondrian_covers_each_group():
    rng = np.random.default_rng(4)
    n = 8000
    groups = np.repeat(np.array(["good", "bad"]), n // 2)
    logits = rng.normal(size=(n, 10)) * 2.0
    probs = softmax(logits)
    truth = probs.copy()
    bad = groups == "bad"
    truth[bad] = softmax(logits[bad], temperature=4.0)  # the model is badly overconfident on this group
    labels = sample_labels(truth, rng)
    alpha = 0.1
    pooled_cov, mondrian_cov = {"good": [], "bad": []}, {"good": [], "bad": []}
    for _ in range(10):
        perm = rng.permutation(n)
        cal, test = perm[: n // 2], perm[n // 2 :]
        pooled = ConformalClassifier(alpha).fit(probs[cal], labels[cal])
        mondrian = ConformalClassifier(alpha).fit(probs[cal], labels[cal], groups=groups[cal])
        assert set(mondrian.thresholds_) == {"good", "bad"}
        sets_pooled = pooled.predict_sets(probs[test])
        sets_mondrian = mondrian.predict_sets(probs[test], groups=groups[test])
        for g in ("good", "bad"):
            mask = groups[test] == g
            pooled_cov[g].append(coverage(sets_pooled[mask], labels[test][mask]))
            mondrian_cov[g].append(coverage(sets_mondrian[mask], labels[test][mask]))
    assert np.mean(pooled_cov["bad"]) < 1 - alpha - 0.05
    for g in ("good", "bad"):
        assert np.mean(mondrian_cov[g]) == pytest.approx(1 - alpha, abs=0.02)


def test_unseen_group_falls_back_to_pooled_threshold():
    rng = np.random.default_rng(5)
    probs = softmax(rng.normal(size=(400, 4)))
    labels = sample_labels(probs, rng)
    groups = np.where(np.arange(400) % 2, "a", "b")
    clf = ConformalClassifier(0.1).fit(probs, labels, groups=groups)
    unseen = clf.predict_sets(probs[:5], groups=np.array(["zzz"] * 5))
    assert np.array_equal(unseen, 1 - probs[:5] <= clf.threshold_)
    with pytest.raises(ValueError, match="groups="):
        clf.predict_sets(probs[:5])


def test_predict_before_fit_raises_not_fitted():
    with pytest.raises(NotFittedError, match="fit") as info:
        ConformalClassifier().predict_sets(np.array([[0.5, 0.5]]))
    assert isinstance(info.value, VlmopsError)


@pytest.mark.parametrize(("kwargs", "match"), [({"alpha": 1.5}, "alpha"), ({"method": "raps"}, "method")])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConformalClassifier(**kwargs).fit(np.array([[0.5, 0.5]]), np.array([0]))


def test_risk_coverage_full_coverage_is_error_rate():
    rng = np.random.default_rng(6)
    confidence = rng.uniform(size=1000)
    correct = rng.uniform(size=1000) < 0.7
    cov, risk = risk_coverage_curve(confidence, correct)
    assert cov[-1] == 1.0 and risk[-1] == pytest.approx(1 - correct.mean())
    assert cov[0] == pytest.approx(1 / 1000) and np.all(np.diff(cov) > 0)
    assert aurc(confidence, correct) == pytest.approx(risk.mean())


def test_risk_coverage_perfect_ordering():
    correct = np.array([1] * 7 + [0] * 3, dtype=bool)
    confidence = np.where(correct, 0.9, 0.1) + np.linspace(0, 0.01, 10)
    cov, risk = risk_coverage_curve(confidence, correct)
    accuracy = correct.mean()
    assert np.all(risk[cov <= accuracy + 1e-12] == 0)
    assert np.all(risk[cov > accuracy + 1e-12] > 0)
    # reversed ordering abstains on the right answers first: worst possible area
    assert aurc(-confidence, correct) > aurc(confidence, correct)
