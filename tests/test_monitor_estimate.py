"""Label-free accuracy estimation on a known case: labels drawn from a known softmax."""

from __future__ import annotations

import numpy as np
import pytest

from vlmops.evaluate.calibration import softmax
from vlmops.monitor.estimate import AccuracyEstimator, realised


def sample(rng, n, scale, true_temperature=2.0, k=6):
    """Logits of an over-confident model: the true class follows softmax(logits / true_temperature)."""
    logits = rng.normal(size=(n, k)) * scale
    probs = softmax(logits, true_temperature)
    labels = np.array([rng.choice(k, p=p) for p in probs])
    return logits, labels


def test_estimates_track_accuracy_under_shift_and_beat_naive_confidence():
    rng = np.random.default_rng(0)
    estimator = AccuracyEstimator.fit(*sample(rng, 4000, scale=4.0))
    assert estimator.temperature == pytest.approx(2.0, rel=0.1)
    for scale in (4.0, 2.5):  # same distribution, then a harder (shifted) one
        logits, labels = sample(rng, 4000, scale)
        accuracy = float((logits.argmax(1) == labels).mean())
        estimates = estimator.estimate(logits)
        errors = realised(estimates, accuracy)
        assert errors["ac"] < 0.02 and errors["doc"] < 0.02, (scale, accuracy, estimates)
        if scale == 4.0:  # ATC assumes confidence-vs-correctness survives the shift; here it does not
            assert errors["atc"] < 0.03
        assert errors["naive_confidence"] > 0.05  # the uncalibrated model over-states its accuracy
    assert 0 < estimator.threshold < 1 and estimator.to_dict()["val_accuracy"] > 0.3


def test_atc_threshold_reproduces_validation_accuracy():
    rng = np.random.default_rng(1)
    logits, labels = sample(rng, 2000, scale=3.0)
    estimator = AccuracyEstimator.fit(logits, labels)
    assert estimator.estimate(logits)["atc"] == pytest.approx(estimator.val_accuracy, abs=0.002)
    assert estimator.estimate(logits)["doc"] == pytest.approx(estimator.val_accuracy, abs=1e-9)
