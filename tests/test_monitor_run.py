"""A monitoring pass over a prediction log: healthy traffic stays quiet, shifted traffic is flagged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmops.monitor.base import DriftInputError
from vlmops.monitor.run import Reference, monitor_history, run_monitor
from vlmops.store.log import PredictionLog, PredictionRow

DIM, K = 24, 6


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def draw(rng, classes, n, noise=0.6, offset=0.0):
    targets = rng.integers(0, K, n)
    x = classes[targets] + noise * rng.normal(size=(n, DIM)) / np.sqrt(DIM) * 4 + offset
    return unit(x), targets


def log_window(log, rng, classes, n, start, brightness=150.0, **kw):
    emb, targets = draw(rng, classes, n, **kw)
    rows = [
        PredictionRow(
            f"r{start + i}",
            "classify",
            "m-1",
            [f"h{i}"],
            5.0,
            embedding=emb[i],
            prediction={"label": str(targets[i])},
            time=1000.0 + start + i,
            image_stats=[image_stat(float(rng.normal(brightness, 20)))],
        )
        for i in range(n)
    ]
    log.write(rows)
    return targets


def test_healthy_window_is_quiet_and_a_shift_is_flagged_with_lower_estimated_accuracy(tmp_path):
    rng = np.random.default_rng(0)
    classes = unit(rng.normal(size=(K, DIM)))
    ref_emb, ref_targets = draw(rng, classes, 400)
    reference = Reference(ref_emb, ref_targets, classes, logit_scale=20.0)
    url = str(tmp_path / "s.sqlite")
    log = PredictionLog(url)
    log_window(log, rng, classes, 150, 0)
    healthy = run_monitor(log, "m-1", reference, window=150)
    assert healthy.metrics["drift.mmd.p_value"] > 0.01 and healthy.metrics["drift.ks_pca.p_value"] > 0.01
    log_window(log, rng, classes, 150, 1000, noise=1.4, offset=0.15)
    shifted = run_monitor(log, "m-1", reference, window=150)
    assert shifted.metrics["drift.mmd.drifted"] == 1.0 and shifted.metrics["drift.mmd.p_value"] < 0.01
    assert shifted.metrics["estimate.atc"] < healthy.metrics["estimate.atc"] - 0.1
    assert shifted.metrics["alignment.mean"] < healthy.metrics["alignment.mean"]
    history = monitor_history(url)
    assert [h["n"] for h in history] == [150, 150] and history[1]["metrics"]["drift.mmd.drifted"] == 1.0
    json.dumps(shifted.to_dict())  # JSON-ready


def test_too_few_logged_requests_is_a_clear_error(tmp_path):
    log = PredictionLog(str(tmp_path / "s.sqlite"))
    reference = Reference(np.eye(3), np.arange(3), np.eye(3), 10.0)
    with pytest.raises(DriftInputError, match="serve more traffic"):
        run_monitor(log, "m-1", reference)


def image_stat(brightness: float) -> dict:
    return {
        "width": 64,
        "height": 64,
        "aspect": 1.0,
        "brightness": brightness,
        "contrast": 40.0,
        "bytes": 3000,
        "format": "PNG",
    }


def test_image_statistics_and_query_texts_are_monitored_when_logged(tmp_path):
    rng = np.random.default_rng(1)
    classes = unit(rng.normal(size=(K, DIM)))
    ref_emb, ref_targets = draw(rng, classes, 300)
    queries = unit(rng.normal(size=(300, DIM)))
    reference = Reference(
        ref_emb,
        ref_targets,
        classes,
        20.0,
        image_stats=[image_stat(b) for b in rng.normal(150, 20, 300)],
        query_emb=queries,
    )
    log = PredictionLog(str(tmp_path / "s.sqlite"))

    def traffic(start: int, brightness: float, query_shift: float, n_queries: int) -> None:
        log_window(log, rng, classes, 100, start, brightness=brightness)
        texts = unit(rng.normal(size=(n_queries, DIM)) + query_shift * queries[0])
        log.write(
            PredictionRow(
                f"s{start + i}", "search", "m-1", [f"q{i}"], 5.0, embedding=t, texts=[f"q{i}"], time=start + i
            )
            for i, t in enumerate(texts)
        )

    traffic(0, brightness=150, query_shift=0.0, n_queries=60)
    quiet = run_monitor(log, "m-1", reference, window=100)
    assert (
        quiet.metrics["drift.image_stats.p_value"] > 0.01 and quiet.metrics["drift.query_text.p_value"] > 0.01
    )
    assert quiet.metrics["window.queries"] == 60

    traffic(1000, brightness=90, query_shift=3.0, n_queries=60)
    shifted = run_monitor(log, "m-1", reference, window=100)
    assert shifted.metrics["drift.image_stats.drifted"] == 1.0
    assert shifted.results["image_stats"]["evidence"]["drifted"] == ["brightness"]
    assert shifted.metrics["drift.query_text.drifted"] == 1.0

    few = PredictionLog(str(tmp_path / "few.sqlite"))
    few.write(
        PredictionRow(f"c{i}", "classify", "m-1", ["h"], 5.0, embedding=ref_emb[i], prediction={}, time=i)
        for i in range(30)
    )
    skipped = run_monitor(few, "m-1", reference, window=100)
    assert (
        "drift.image_stats.p_value" not in skipped.metrics
        and "drift.query_text.p_value" not in skipped.metrics
    )
    assert "0 requests with image statistics" in skipped.results["image_stats"]["skipped"]
    assert "0 text search requests" in skipped.results["query_text"]["skipped"]
