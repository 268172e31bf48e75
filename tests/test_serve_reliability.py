"""A real `vlmops serve` process on loopback under overload and under kill -9 (bounded in time).

Uses the built-in model (shipped weights, no data download), so it runs on a fresh machine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from serve_helpers import b64, random_png, start_server
from vlmops.serve.loadgen import build_request, run_load, run_open_loop
from vlmops.store.log import PredictionLog


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _classify_request(port: int) -> bytes:
    body = {"image": b64(random_png(1)), "labels": ["red", "green", "blue"]}
    return build_request("127.0.0.1", port, "/v1/classify", body)


@pytest.fixture
def stop_later():
    procs = []
    yield procs.append
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_open_loop_overload_is_shed_at_once_and_answers_stay_within_the_deadline(tmp_path, stop_later):
    # A queue far deeper than the server can drain in its 3 s timeout: admission must look at time, not
    # only at the count of requests in flight, or the backlog grows and answers come long after it.
    proc, port = start_server(tmp_path, "--insecure-no-auth", "--queue", "4096", "--timeout", "3")
    stop_later(proc)
    request = _classify_request(port)
    capacity = asyncio.run(run_load("127.0.0.1", port, request, 16, 100_000, 3.0)).summary()["per_s"]
    assert capacity > 5, capacity
    rss_before = _rss_mb(proc.pid)
    peak, health = [rss_before], []
    done = threading.Event()

    def probe():
        with httpx.Client(timeout=10) as client:
            while not done.wait(0.25):
                t0 = time.perf_counter()
                ok = client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                health.append(time.perf_counter() - t0 if ok else float("inf"))
                peak[0] = max(peak[0], _rss_mb(proc.pid))

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        result = asyncio.run(run_open_loop("127.0.0.1", port, request, 2 * capacity, 15.0, grace_s=20))
    finally:
        done.set()
        prober.join()
    summary = result.summary()
    assert set(result.statuses) <= {200, 503}, summary
    assert result.errors == 0 and result.abandoned == 0, summary
    assert result.ok > 0 and result.statuses.get(503, 0) > 0, summary
    # latency counted from when each request was due, so a client starved of CPU on a shared box adds
    # to it; the bench (bench/serve_load.py --open-loop) holds p99 to 2x the timeout on a quieter machine
    assert summary["p50_ms"] <= 3000 and summary["p99_ms"] <= 3 * 3000, summary
    # /healthz within 1 s nearly always; the box is shared with other jobs, so one slow probe may happen
    # (bench/serve_load.py --open-loop records the maximum)
    assert sorted(health)[int(0.95 * len(health))] <= 1.0 and max(health) <= 2.5, sorted(health)[-5:]
    assert peak[0] - rss_before < 400, (rss_before, peak[0])
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200  # still serving


def test_kill_9_loses_no_acknowledged_prediction(tmp_path, stop_later):
    proc, port = start_server(tmp_path, "--insecure-no-auth")
    stop_later(proc)
    request = _classify_request(port)

    def kill_soon():
        time.sleep(3.0)
        os.kill(proc.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    # more requests than the server can answer in 3 s (it answers 500+ a second now), so the kill
    # lands mid-load; the loader stops at the first connection the dead server refuses
    result = asyncio.run(run_load("127.0.0.1", port, request, 16, 50_000, 20.0, collect_ids=True))
    killer.join()
    proc.wait(10)
    sent = sum(result.statuses.values()) + result.errors
    assert sent >= 1_000 and len(result.request_ids) > 50 and result.errors > 0, (sent, result.summary())
    restarted, port = start_server(tmp_path, "--insecure-no-auth")
    stop_later(restarted)
    logged = PredictionLog(str(tmp_path / "store.sqlite")).request_ids()
    missing = set(result.request_ids) - logged
    assert not missing, f"{len(missing)} acknowledged requests are missing from the log"


def test_sigterm_drains_in_flight_requests_and_exits_cleanly(tmp_path, stop_later):
    proc, port = start_server(tmp_path, "--insecure-no-auth")
    stop_later(proc)
    request = _classify_request(port)

    def terminate_soon():
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)

    stopper = threading.Thread(target=terminate_soon)
    stopper.start()
    result = asyncio.run(run_load("127.0.0.1", port, request, 8, 100_000, 8.0, collect_ids=True))
    stopper.join()
    # uvicorn finishes in-flight requests and the lifespan shutdown (queues drained, log committed), then
    # re-raises the signal it caught, so a clean exit reads as -SIGTERM.
    assert proc.wait(40) in (0, -signal.SIGTERM)
    assert "Traceback" not in (tmp_path / "server.log").read_text()
    assert set(result.statuses) <= {200, 503}, result.statuses
    assert len(result.request_ids) > 20
    assert set(result.request_ids) <= PredictionLog(str(tmp_path / "store.sqlite")).request_ids()
