"""One monitoring pass over the prediction log: drift, label-free accuracy, feedback, alerts.

The reference is what healthy traffic looks like: embeddings of a labelled data split (e.g. the
validation images of the vendors the model was trained on). The window is the latest logged
requests of one model version; their stored embeddings are re-scored against the label set, so no
image is decoded or embedded again. Each pass is stored (`monitor_runs`) for the dashboard timeline.

Chat exchanges (/v1/chat/completions) of the model version add a ``generative`` section: the latest
window of exchanges against the earlier ones (`monitor.generative`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import sqlalchemy as sa

from vlmops.evaluate.calibration import softmax
from vlmops.monitor.base import DriftInputError
from vlmops.monitor.chat_frame import chat_windows
from vlmops.monitor.estimate import AccuracyEstimator
from vlmops.monitor.generative import GenerativeConfig, generative_section
from vlmops.monitor.image_stats import ImageStatsDetector
from vlmops.monitor.mmd import MMDDetector
from vlmops.monitor.univariate import KSDetector, KSPCADetector, PredictionShiftDetector
from vlmops.store.feedback import feedback_metrics
from vlmops.store.log import PredictionLog, create_tables, embedding_of, make_engine, requests
from vlmops.store.monitor_tables import monitor_history as monitor_history  # re-exported
from vlmops.store.monitor_tables import monitor_runs


@dataclass
class Reference:
    """Healthy traffic: image embeddings, their label indices, and the label set's text embeddings.

    Optional: statistics of the reference images (`image_stats.describe_image`, for image-statistics
    drift) and text embeddings of typical search queries (for query-text drift on /v1/search).
    """

    image_emb: np.ndarray
    targets: np.ndarray
    class_emb: np.ndarray
    logit_scale: float
    image_stats: list[dict] | None = None
    query_emb: np.ndarray | None = None


@dataclass
class MonitorReport:
    """What one pass found."""

    model_version: str
    n: int
    metrics: dict[str, float | None]
    results: dict[str, dict] = field(default_factory=dict)
    window: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def window_rows(log: PredictionLog, model_version: str, size: int, endpoint: str = "classify") -> list:
    """The latest `size` logged requests of one model version that carry an embedding, oldest first."""
    query = (
        sa.select(requests)
        .where(
            requests.c.model_version == model_version,
            requests.c.endpoint == endpoint,
            requests.c.embedding.is_not(None),
        )
        .order_by(requests.c.time.desc())
        .limit(size)
    )
    with log.engine.connect() as conn:
        return list(reversed(conn.execute(query).fetchall()))


def _record(name: str, result, metrics: dict, results: dict) -> None:
    results[name] = result.to_dict()
    metrics[f"drift.{name}.p_value"] = result.p_value
    metrics[f"drift.{name}.statistic"] = result.statistic
    metrics[f"drift.{name}.drifted"] = float(result.drifted)


def input_drift(
    log: PredictionLog,
    model_version: str,
    reference: Reference,
    rows: list,
    window: int,
    min_window: int,
    seed: int,
) -> tuple[dict, dict]:
    """Image-statistics drift (over the classify window) and query-text drift (over search requests).

    Each runs only when the reference has its part and the log has at least `min_window` inputs;
    otherwise its result says why it was skipped and its metrics are absent, so no rule can fire on it.
    """
    metrics: dict = {}
    results: dict = {}
    if reference.image_stats:
        stats = [s for r in rows if r.image_stats for s in json.loads(r.image_stats)[:1]]
        if len(stats) >= min_window:
            detector = ImageStatsDetector().fit(reference.image_stats)
            _record("image_stats", detector.test(stats), metrics, results)
        else:
            results["image_stats"] = {
                "skipped": f"{len(stats)} requests with image statistics < {min_window}"
            }
    if reference.query_emb is not None:
        queries = [r for r in window_rows(log, model_version, window, "search") if r.texts]
        if len(queries) >= min_window:
            query_emb = np.concatenate([embedding_of(r)[:1] for r in queries]).astype(np.float64)
            detector = MMDDetector(n_permutations=500, seed=seed).fit(reference.query_emb)
            _record("query_text", detector.test(query_emb), metrics, results)
            metrics["window.queries"] = float(len(queries))
        else:
            results["query_text"] = {"skipped": f"{len(queries)} text search requests < {min_window}"}
    return metrics, results


def drift_metrics(reference: Reference, window_emb: np.ndarray, seed: int = 0) -> tuple[dict, dict]:
    """Every detector on one window: (flat metrics, full results)."""
    ref_logits = reference.logit_scale * reference.image_emb @ reference.class_emb.T
    win_logits = reference.logit_scale * window_emb @ reference.class_emb.T
    ref_probs, win_probs = softmax(ref_logits), softmax(win_logits)
    ref_align = (reference.image_emb @ reference.class_emb.T).max(1)
    win_align = (window_emb @ reference.class_emb.T).max(1)
    detectors = {
        "mmd": (MMDDetector(n_permutations=500, seed=seed), reference.image_emb, window_emb),
        "ks_pca": (KSPCADetector(n_components=10), reference.image_emb, window_emb),
        "prediction_shift": (PredictionShiftDetector(), ref_probs, win_probs),
        "alignment": (KSDetector(), ref_align, win_align),
    }
    metrics, results = {}, {}
    for name, (detector, ref, win) in detectors.items():
        _record(name, detector.fit(ref).test(win), metrics, results)
    metrics["alignment.mean"] = float(win_align.mean())
    metrics["alignment.reference_mean"] = float(ref_align.mean())
    estimator = AccuracyEstimator.fit(ref_logits, reference.targets)
    for name, value in estimator.estimate(win_logits).items():
        metrics[f"estimate.{name}"] = value
    metrics["estimate.reference_accuracy"] = estimator.val_accuracy
    results["estimator"] = estimator.to_dict()
    return metrics, results


def run_monitor(
    log: PredictionLog,
    model_version: str,
    reference: Reference | None,
    window: int = 200,
    seed: int = 0,
    min_window: int = 20,
    generative: GenerativeConfig | None = None,
    chat_version: str | None = None,
) -> MonitorReport:
    """Drift, estimated accuracy and feedback metrics over the latest `window` requests; stored.

    When the log holds chat exchanges of `chat_version` (default: `model_version`), a ``generative``
    section compares their latest `window` with the earlier ones (`monitor.generative`); a log with
    chat traffic only (or no classification `reference`, for a generative model) gets that section only.
    """
    rows = window_rows(log, model_version, window) if reference is not None else []
    chat_version = chat_version or model_version
    chat_ref, chat_now = chat_windows(log, chat_version, window)
    metrics: dict = {}
    results: dict = {}
    if len(rows) >= min_window and reference is not None:
        metrics, results = _classification(log, model_version, reference, rows, window, min_window, seed)
    elif chat_now.empty:
        raise DriftInputError(
            f"only {len(rows)} logged classify requests of {model_version} (need {min_window}) and no chat "
            "exchanges; serve more traffic or lower --window"
        )
    elif reference is not None:
        results["classification"] = {"skipped": f"{len(rows)} classify requests < {min_window}"}
    if not chat_now.empty:
        config = replace(generative or GenerativeConfig(), min_window=min_window, seed=seed)
        gen_metrics, gen_results = generative_section(chat_ref, chat_now, config)
        metrics.update(gen_metrics)
        results["generative"] = {"model_version": chat_version, **gen_results}
    if rows and "drift.mmd.p_value" in metrics:
        n, span = len(rows), (rows[0].time, rows[-1].time)
    else:
        n, span = len(chat_now), (float(chat_now["time"].iloc[0]), float(chat_now["time"].iloc[-1]))
    report = MonitorReport(model_version, n, metrics, results, span)
    store_run(log.engine.url.render_as_string(hide_password=False), report)
    return report


def _classification(
    log: PredictionLog,
    model_version: str,
    reference: Reference,
    rows: list,
    window: int,
    min_window: int,
    seed: int,
) -> tuple[dict, dict]:
    """The classification part of a pass: drift, label-free accuracy, input drift, feedback."""
    window_emb = np.concatenate([embedding_of(r)[:1] for r in rows]).astype(np.float64)
    metrics, results = drift_metrics(reference, window_emb, seed)
    extra_metrics, extra_results = input_drift(log, model_version, reference, rows, window, min_window, seed)
    metrics.update(extra_metrics)
    results.update(extra_results)
    ids = {r.request_id for r in rows}
    fb = feedback_metrics(rows, [f for f in log.feedback() if f.request_id in ids])
    metrics.update({f"feedback.{k}": (None if v is None else float(v)) for k, v in fb.to_dict().items()})
    metrics["window.n"] = float(len(rows))
    return metrics, results


def store_run(url: str, report: MonitorReport) -> None:
    """Append a pass to monitor_runs."""
    engine = make_engine(url)
    create_tables(engine, tables=[monitor_runs])
    with engine.begin() as conn:
        conn.execute(
            monitor_runs.insert().values(
                time=time.time(),
                model_version=report.model_version,
                n=report.n,
                window_start=report.window[0] if report.window else None,
                window_end=report.window[1] if report.window else None,
                metrics=json.dumps(report.metrics),
                results=json.dumps(report.results, default=float),
            )
        )
