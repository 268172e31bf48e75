"""Domain-classifier drift test: can a classifier tell production rows from reference rows?

The decision uses one honest split: a logistic regression trained on half of the (balanced) pooled
rows scores the other half, and a one-sided Mann–Whitney U test asks whether window rows score higher
than reference rows — a valid p-value, because the scored rows played no part in training. The
5-fold cross-validated AUC with a bootstrap CI is reported as evidence of how separable the two are.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from vlmops.monitor.base import Detector, DriftResult, as_matrix

N_BOOTSTRAP = 200


def _classifier():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=500)


def auc_from_scores(scores: np.ndarray, target: np.ndarray) -> float:
    """ROC AUC as the Mann–Whitney U of positive vs negative scores (ties count half)."""
    ranks = stats.rankdata(scores)
    n_pos = int(target.sum())
    n_neg = len(target) - n_pos
    return float((ranks[target == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class DomainClassifierDetector(Detector):
    """Reference vs window separability: held-out Mann–Whitney p-value, cross-validated AUC with a CI."""

    name = "domain_classifier"
    state_fields = ("reference", "seed", "cv_auc")

    def __init__(self, alpha: float = 0.05, seed: int = 0, cv_auc: bool = True) -> None:
        super().__init__(alpha)
        self.seed, self.cv_auc = seed, cv_auc

    def _fit(self, reference) -> None:
        self.reference = as_matrix(reference, "reference", min_rows=4)

    def _test(self, window) -> DriftResult:
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        y_rows = as_matrix(window, "window", min_rows=4, features=self.reference.shape[1])
        rng = np.random.default_rng(self.seed)
        n = min(len(self.reference), len(y_rows))  # balanced: as many reference rows as window rows
        ref = self.reference[rng.choice(len(self.reference), n, replace=False)]
        win = y_rows[rng.choice(len(y_rows), n, replace=False)]
        x = np.concatenate([ref, win])
        target = np.r_[np.zeros(n), np.ones(n)]
        half = rng.permutation(2 * n)
        train, held = half[:n], half[n:]
        if len(np.unique(target[train])) < 2 or len(np.unique(target[held])) < 2:
            train, held = np.r_[0:n:2, n : 2 * n : 2], np.r_[1:n:2, n + 1 : 2 * n : 2]
        scores = _classifier().fit(x[train], target[train]).decision_function(x[held])
        pos, neg = scores[target[held] == 1], scores[target[held] == 0]
        method = (
            "exact" if len(pos) * len(neg) <= 2500 else "asymptotic"
        )  # the normal tail is loose when small
        test = stats.mannwhitneyu(pos, neg, alternative="greater", method=method)
        evidence: dict = {"n_per_class": n, "held_out_auc": auc_from_scores(scores, target[held])}
        if self.cv_auc:
            folds = StratifiedKFold(n_splits=min(5, n), shuffle=True, random_state=self.seed)
            oof = cross_val_predict(_classifier(), x, target, cv=folds, method="decision_function")
            idx = rng.integers(0, 2 * n, (N_BOOTSTRAP, 2 * n))
            boot = [auc_from_scores(oof[i], target[i]) for i in idx if 0 < target[i].sum() < 2 * n]
            evidence["auc"] = auc_from_scores(oof, target)
            evidence["auc_ci"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
        p = float(test.pvalue)
        statistic = evidence.get("auc", evidence["held_out_auc"])
        return DriftResult(
            self.name, statistic, p, p < self.alpha, self.alpha, len(self.reference), len(y_rows), evidence
        )
