"""Drift detectors: statistics against closed forms, false-alarm calibration, power on constructed shifts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from vlmops.errors import NotFittedError
from vlmops.monitor.base import DriftInputError
from vlmops.monitor.domain import DomainClassifierDetector
from vlmops.monitor.mmd import MMDDetector, mmd2_permutations, rbf_kernel
from vlmops.monitor.online import OnlineCUSUM, run_lengths
from vlmops.monitor.univariate import KSDetector, KSPCADetector, PredictionShiftDetector
from vlmops.monitor.vlm_signals import ModalityGapDetector


def embeddings(rng, n, dim=16, shift=0.0):
    """Unit vectors around a fixed direction; `shift` moves the cluster centre."""
    centre = np.ones(dim) / np.sqrt(dim)
    x = centre * 2.0 + rng.normal(size=(n, dim)) + shift * np.eye(dim)[0]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def softmax_outputs(rng, n, k=5, tilt=0.0):
    logits = rng.normal(size=(n, k)) + tilt * np.arange(k) / k
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def false_alarm_rate(make_detector, draw_ref, draw_window, n_windows, seed=0):
    rng = np.random.default_rng(seed)
    alarms = 0
    for _ in range(n_windows):
        detector = make_detector().fit(draw_ref(rng))
        alarms += detector.test(draw_window(rng)).drifted
    return alarms / n_windows


def test_mmd_statistic_matches_the_closed_form():
    rng = np.random.default_rng(0)
    x, y = embeddings(rng, 40), embeddings(rng, 15, shift=0.3)
    detector = MMDDetector(n_permutations=99).fit(x)
    result = detector.test(y)
    k = rbf_kernel(np.concatenate([x, y]), np.concatenate([x, y]), detector.sigma)
    kxx, kyy, kxy = k[:40, :40], k[40:, 40:], k[:40, 40:]
    expected = (
        (kxx.sum() - np.trace(kxx)) / (40 * 39) + (kyy.sum() - np.trace(kyy)) / (15 * 14) - 2 * kxy.mean()
    )
    assert result.statistic == pytest.approx(expected, rel=1e-9)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    assert detector.sigma == pytest.approx(np.sqrt(0.5 * np.median(d2[~np.eye(40, dtype=bool)])))


def test_vectorised_permutations_equal_explicit_reindexing():
    rng = np.random.default_rng(1)
    z = embeddings(rng, 30)
    k = rbf_kernel(z, z, 0.7)
    np.fill_diagonal(k, 0.0)
    perms = [rng.permutation(30) for _ in range(5)]
    indicators = np.stack([np.isin(np.arange(30), p[:20]).astype(float) for p in perms])
    fast = mmd2_permutations(k, 20, indicators)
    for value, p in zip(fast, perms, strict=True):
        a, b = np.sort(p[:20]), np.sort(p[20:])
        explicit = k[np.ix_(a, a)].sum() / 380 + k[np.ix_(b, b)].sum() / 90 - 2 * k[np.ix_(a, b)].mean()
        assert value == pytest.approx(explicit, rel=1e-9)


CALIBRATION = [
    (
        "mmd",
        lambda: MMDDetector(n_permutations=100),
        lambda r: embeddings(r, 60),
        lambda r: embeddings(r, 25),
        1000,
    ),
    (
        "ks_pca",
        lambda: KSPCADetector(n_components=5),
        lambda r: embeddings(r, 100),
        lambda r: embeddings(r, 40),
        1000,
    ),
    ("ks", KSDetector, lambda r: r.normal(size=(100, 2)), lambda r: r.normal(size=(30, 2)), 1000),
    (
        "prediction_shift",
        lambda: PredictionShiftDetector(),
        lambda r: softmax_outputs(r, 200),
        lambda r: softmax_outputs(r, 60),
        1000,
    ),
    (
        "domain_classifier",
        lambda: DomainClassifierDetector(cv_auc=False),
        lambda r: embeddings(r, 60),
        lambda r: embeddings(r, 30),
        1000,
    ),
    (
        "modality_gap",
        lambda: ModalityGapDetector(n_permutations=100),
        lambda r: (embeddings(r, 40), embeddings(r, 40)),
        lambda r: (embeddings(r, 20), embeddings(r, 20)),
        600,
    ),
]


@pytest.mark.parametrize(("name", "make", "ref", "window", "n"), CALIBRATION, ids=[c[0] for c in CALIBRATION])
def test_false_alarm_rate_is_calibrated_at_alpha_005(name, make, ref, window, n):
    rate = false_alarm_rate(make, ref, window, n)
    assert 0.03 <= rate <= 0.07, f"{name}: false-alarm rate {rate:.3f} over {n} no-shift windows"


POWER = [
    (
        lambda: MMDDetector(n_permutations=200),
        lambda r: embeddings(r, 100),
        lambda r: embeddings(r, 30, shift=1.5),
    ),
    (
        lambda: KSPCADetector(n_components=5),
        lambda r: embeddings(r, 100),
        lambda r: embeddings(r, 30, shift=3.0),
    ),
    (DomainClassifierDetector, lambda r: embeddings(r, 100), lambda r: embeddings(r, 60, shift=1.2)),
    (PredictionShiftDetector, lambda r: softmax_outputs(r, 300), lambda r: softmax_outputs(r, 100, tilt=3.0)),
    (
        lambda: ModalityGapDetector(n_permutations=200),
        lambda r: (embeddings(r, 60), embeddings(r, 60)),
        lambda r: (embeddings(r, 30, shift=2.0), embeddings(r, 30)),
    ),
]


@pytest.mark.parametrize(
    ("make", "ref", "window"), POWER, ids=["mmd", "ks_pca", "domain", "prediction", "gap"]
)
def test_constructed_shifts_are_detected(make, ref, window):
    assert false_alarm_rate(make, ref, window, 20, seed=5) >= 0.9


def test_state_round_trip_gives_the_same_answer():
    rng = np.random.default_rng(3)
    ref, win = embeddings(rng, 50), embeddings(rng, 20, shift=0.5)
    detector = KSPCADetector(n_components=4).fit(ref)
    restored = KSPCADetector.from_state(detector.state())
    assert restored.test(win).p_value == pytest.approx(detector.test(win).p_value)


def test_bad_inputs_name_the_problem():
    with pytest.raises(NotFittedError):
        MMDDetector().test(np.zeros((3, 2)))
    detector = MMDDetector().fit(np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.raises(DriftInputError, match="features"):
        detector.test(np.zeros((5, 4)))
    with pytest.raises(DriftInputError, match="NaN"):
        detector.test(np.full((5, 3), np.nan))
    with pytest.raises(DriftInputError, match="alpha"):
        KSDetector(alpha=1.5)


def test_ks_detector_agrees_with_scipy():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=80), rng.normal(0.3, size=40)
    result = KSDetector().fit(a).test(b)
    assert result.p_value == pytest.approx(stats.ks_2samp(a, b).pvalue)


def test_online_cusum_expected_run_time_and_detection_delay():
    arls = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        detector = OnlineCUSUM(ert=200, seed=seed).fit(rng.normal(size=1000))
        z = (rng.normal(size=(300, 2000)) - detector.mean) / detector.scale
        arls.append(run_lengths(z, detector.k, detector.threshold).mean())
    assert 0.6 * 200 <= np.mean(arls) <= 1.6 * 200, arls
    rng = np.random.default_rng(9)
    detector = OnlineCUSUM(ert=200).fit(rng.normal(size=1000))
    delays = []
    for _ in range(20):
        detector.reset()
        t = next(t for t in range(1, 500) if detector.update(rng.normal(1.5)))
        delays.append(t)
    assert np.median(delays) < 10
