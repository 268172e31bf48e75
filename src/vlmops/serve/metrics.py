"""Prometheus metrics of the gateway, one registry per app (so tests can run several apps).

With several worker processes (``--workers N``) the CLI sets PROMETHEUS_MULTIPROC_DIR, and so does
`vlmops.scale.serve` for the Ray Serve replicas of one node, and /metrics aggregates every process
through prometheus-client's multiprocess collector. A process that has died (a replica Serve replaced)
keeps its counts, as a counter should, but its live gauges (queue depth) are dropped at the next render.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class GatewayMetrics:
    """Latency, batch size, queue wait, log commit histograms; request, shed and rejection counters.

    A canary or shadow shares its gateway's metrics: requests and latency carry the answering model's
    version, so a canary's error rate and latency sit next to the champion's on one /metrics page.
    """

    def __init__(self) -> None:
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self.registry = CollectorRegistry()
        reg = None if self.multiprocess else self.registry  # multiprocess values live in files instead
        self.latency = Histogram(
            "vlmops_request_latency_seconds",
            "Time from request to response, by the model version that answered.",
            ["endpoint", "model_version"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "vlmops_batch_size", "Items per model batch.", ["kind"], buckets=BATCH_BUCKETS, registry=reg
        )
        self.queue_wait = Histogram(
            "vlmops_queue_wait_seconds",
            "Time an item waited before its batch ran.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.log_commit = Histogram(
            "vlmops_log_commit_seconds",
            "Duration of one group commit of prediction-log rows.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.requests = Counter(
            "vlmops_requests_total",
            "Requests by endpoint, HTTP status and the model version that answered.",
            ["endpoint", "status", "model_version"],
            registry=reg,
        )
        self.shed = Counter(
            "vlmops_shed_total", "Requests refused with 503 because the queue was full.", registry=reg
        )
        self.rejected = Counter(
            "vlmops_rejected_inputs_total",
            "Inputs refused with a 4xx, by error code.",
            ["code"],
            registry=reg,
        )
        self.rollouts = Counter(
            "vlmops_rollout_ended_total",
            "Canary or shadow models taken out of traffic.",
            ["role"],
            registry=reg,
        )
        self.rollout_share = Gauge(
            "vlmops_rollout_share",
            "Share of traffic a canary answers (1 for a shadow, which sees every request); 0 once ended.",
            ["role", "model_version"],
            registry=reg,
            multiprocess_mode="max",
        )
        self.queue_depth = Gauge(
            "vlmops_queue_depth",
            "Items waiting for a batch.",
            ["kind"],
            registry=reg,
            multiprocess_mode="livesum",
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (all processes in multiprocess mode)."""
        if self.multiprocess:
            forget_dead_processes(os.environ["PROMETHEUS_MULTIPROC_DIR"])
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def forget_dead_processes(folder: str) -> None:
    """Remove the live-gauge files of processes that are gone (prometheus-client's `mark_process_dead`
    for each pid in a ``gauge_live*_PID.db`` name that no longer runs on this machine)."""
    pids = {path.stem.rsplit("_", 1)[-1] for path in Path(folder).glob("gauge_live*_*.db")}
    for pid in filter(str.isdigit, pids):
        if not _running(int(pid)):
            multiprocess.mark_process_dead(int(pid), folder)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
