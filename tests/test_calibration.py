"""Calibration metrics against independent loops, closed forms and scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from vlmops.evaluate.calibration import (
    adaptive_ece,
    brier,
    calibration_report,
    ece,
    fit_temperature,
    mce,
    nll,
    reliability_diagram,
    softmax,
)


def sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from that row's distribution."""
    return (probs.cumsum(axis=1) > rng.uniform(size=(len(probs), 1))).argmax(axis=1)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    probs = softmax(rng.normal(size=(3000, 5)) * 2.0)
    labels = sample_labels(softmax(rng.normal(size=(3000, 5)) * 0.5 + np.log(probs)), rng)
    return probs, labels


def loop_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[float, float]:
    """Straightforward reference: bins (lo, hi] over [0, 1] (0 goes in the first), weighted gaps."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total, worst = 0.0, 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        members = [
            i for i in range(len(probs)) if (lo < probs[i].max() <= hi) or (b == 0 and probs[i].max() == 0)
        ]
        if not members:
            continue
        conf = sum(probs[i].max() for i in members) / len(members)
        acc = sum(int(np.argmax(probs[i]) == labels[i]) for i in members) / len(members)
        total += len(members) / len(probs) * abs(acc - conf)
        worst = max(worst, abs(acc - conf))
    return total, worst


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_and_mce_match_reference_loop(data, n_bins):
    probs, labels = data
    ref_ece, ref_mce = loop_ece(probs, labels, n_bins)
    assert ece(probs, labels, n_bins) == pytest.approx(ref_ece, abs=1e-12)
    assert mce(probs, labels, n_bins) == pytest.approx(ref_mce, abs=1e-12)
    assert ece(probs, labels, n_bins) > 0.01  # the fixture is miscalibrated on purpose


def test_ece_closed_form_constant_confidence():
    # Every confidence is 0.8 and 60% of top-1 predictions are right: ECE = MCE = |0.6 - 0.8| = 0.2.
    probs = np.tile([0.8, 0.1, 0.1], (10, 1))
    labels = np.array([0] * 6 + [1] * 2 + [2] * 2)
    assert ece(probs, labels) == pytest.approx(0.2)
    assert mce(probs, labels) == pytest.approx(0.2)
    assert adaptive_ece(probs, labels, n_bins=1) == pytest.approx(0.2)  # more bins split the tie arbitrarily


def test_perfectly_calibrated_two_bins_has_zero_ece():
    probs = np.array([[0.5, 0.5]] * 4 + [[1.0, 0.0]] * 3)
    labels = np.array([0, 1, 0, 1, 0, 0, 0])  # argmax 0: half right at 0.5, all right at 1.0
    assert ece(probs, labels, n_bins=10) == pytest.approx(0.0, abs=1e-12)


def test_adaptive_ece_bins_have_equal_counts(data):
    probs, labels = data
    diagram = reliability_diagram(probs, labels, n_bins=15, strategy="quantile")
    assert diagram.count.tolist() == [200] * 15
    assert np.all(np.diff(diagram.confidence) >= 0)
    assert adaptive_ece(probs, labels, 15) == pytest.approx(diagram.ece())
    assert 0 < adaptive_ece(probs, labels, 15) < 1


def test_mce_at_least_ece(data):
    probs, labels = data
    for n_bins in (5, 15, 30):
        assert mce(probs, labels, n_bins) >= ece(probs, labels, n_bins)


def test_reliability_diagram_counts_and_to_dict(data):
    probs, labels = data
    diagram = reliability_diagram(probs, labels, n_bins=15)
    assert diagram.edges.shape == (16,) and diagram.count.sum() == len(labels)
    payload = json.loads(json.dumps(diagram.to_dict()))  # JSON-safe: empty bins are None, not NaN
    empty = [i for i, c in enumerate(payload["count"]) if c == 0]
    assert empty and all(payload["accuracy"][i] is None for i in empty)  # confidence >= 1/k: low bins empty


def test_brier_binary_matches_sklearn_as_half_the_sum_form():
    rng = np.random.default_rng(2)
    p1 = rng.uniform(size=500)
    labels = (rng.uniform(size=500) < p1).astype(int)
    probs = np.stack([1 - p1, p1], axis=1)
    # sum over both classes double-counts the positive-class squared error: ours = 2 * sklearn's.
    assert brier(probs, labels) == pytest.approx(2 * brier_score_loss(labels, p1), rel=1e-12)


def test_brier_multiclass_matches_one_hot_formula(data):
    probs, labels = data
    onehot = np.eye(probs.shape[1])[labels]
    assert brier(probs, labels) == pytest.approx(np.mean(np.sum((probs - onehot) ** 2, axis=1)), rel=1e-12)
    assert brier(np.eye(5)[labels], labels) == 0.0


def test_nll_matches_sklearn_log_loss(data):
    probs, labels = data
    assert nll(probs, labels) == pytest.approx(log_loss(labels, probs, labels=range(5)), rel=1e-9)


def test_softmax_is_stable_and_tempered():
    logits = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), 0.0]])
    out = softmax(logits)
    assert np.all(np.isfinite(out)) and np.allclose(out.sum(axis=1), 1)
    assert out[0].tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert out[1].tolist() == pytest.approx([0.2, 0.6, 0.2])
    assert softmax(logits[1:], temperature=1e9)[0].tolist() == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="temperature"):
        softmax(logits, temperature=0.0)


def test_fit_temperature_recovers_known_temperature():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(20000, 10)) * 4.0
    labels = sample_labels(softmax(z, temperature=2.5), rng)
    t = fit_temperature(z, labels)
    assert t == pytest.approx(2.5, abs=0.15)
    before, after = nll(softmax(z), labels), nll(softmax(z, temperature=t), labels)
    assert after <= before
    assert ece(softmax(z, temperature=t), labels) < ece(softmax(z), labels)


def test_calibration_report_fields(data):
    probs, labels = data
    report = calibration_report(probs, labels, n_bins=10)
    assert report.to_dict() == {
        "ece": pytest.approx(ece(probs, labels, 10)),
        "adaptive_ece": pytest.approx(adaptive_ece(probs, labels, 10)),
        "mce": pytest.approx(mce(probs, labels, 10)),
        "brier": pytest.approx(brier(probs, labels)),
        "nll": pytest.approx(nll(probs, labels)),
        "n": 3000,
        "n_bins": 10,
    }


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.array([0.2, 0.8]), np.array([1]), "shape"),
        (np.array([[0.2, 0.8]]), np.array([1, 0]), r"labels must have shape \(1,\)"),
        (np.array([[np.nan, 0.8]]), np.array([1]), "NaN"),
        (np.array([[0.2, 0.8]]), np.array([2]), r"\[0, 2\)"),
        (np.array([[0.2, 0.8]]), np.array([-1]), r"\[0, 2\)"),
        (np.array([[0.3, 0.8]]), np.array([1]), "sum to 1.*normalise"),
        (np.array([[2.0, -1.0]]), np.array([1]), "logits"),
        (np.array([[0.2, 0.8]]), np.array([0.5]), "integer"),
    ],
)
def test_validation_errors_name_the_problem(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        ece(probs, labels)


def test_row_sum_tolerance_accepts_rounding():
    probs = np.array([[0.3333, 0.3333, 0.3333]])  # sums to 0.9999
    assert nll(probs, np.array([0])) == pytest.approx(-np.log(0.3333))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_mce_accuracy_match_torchmetrics(seed: int) -> None:
    """The same logits through torchmetrics' reference implementation: equal to 1e-6."""
    import torch
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_calibration_error

    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(2000, 12))
    labels = np.where(rng.uniform(size=2000) < 0.6, logits.argmax(1), rng.integers(0, 12, 2000))
    probs = softmax(logits)
    p, y = torch.from_numpy(probs), torch.from_numpy(labels)
    for norm, ours in (("l1", ece(probs, labels, 15)), ("max", mce(probs, labels, 15))):
        ref = multiclass_calibration_error(p, y, num_classes=12, n_bins=15, norm=norm)
        assert ours == pytest.approx(float(ref), abs=1e-6)
    ref_acc = multiclass_accuracy(p, y, num_classes=12, average="micro")
    assert float(np.mean(probs.argmax(1) == labels)) == pytest.approx(float(ref_acc), abs=1e-6)
