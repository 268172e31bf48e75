"""Worker processes and model threads: chosen from the cores, printed, and tied to the parent's life."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmops.cli import app
from vlmops.serve.workers import PARENT_ENV, choose_parallelism


@pytest.mark.parametrize(
    ("cores", "given", "chosen"),
    [
        (1, (None, None), (1, 1)),
        (2, (None, None), (2, 1)),  # one process per core, one model thread each
        (16, (None, None), (8, 2)),  # at most 8 copies of the model; the rest of the cores as threads
        (64, (None, None), (8, 8)),
        (2, (1, None), (1, 2)),  # one process given: it gets every core
        (4, (None, 3), (4, 3)),  # given values are kept
        (4, (2, 1), (2, 1)),
    ],
)
def test_workers_and_threads_come_from_the_cores(cores, given, chosen):
    assert choose_parallelism(cores, *given) == chosen


def test_serve_starts_one_worker_per_core_with_one_thread_each_and_says_so(tmp_path, monkeypatch):
    import uvicorn

    import vlmops.serve.build as build
    import vlmops.serve.workers as workers

    calls = []
    monkeypatch.setattr(workers, "usable_cores", lambda: 2)
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: calls.append((target, kw)))
    monkeypatch.setattr(
        workers, "serve_workers", lambda host, port, n: calls.append((workers.APP_FACTORY, n))
    )
    monkeypatch.setattr(build, "build_app", lambda config: calls.append(("app", config)) or "app")
    for name in (build.CONFIG_ENV, PARENT_ENV, "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.setenv(name, "")  # restored after the test: the command sets them for its workers
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    args = ["serve", "--port", "0", "--store", str(tmp_path / "s.sqlite"), "--insecure-no-auth"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "2 worker processes x 1 model thread (2 usable cores" in result.output
    ((target, n),) = calls
    assert n == 2 and target == "vlmops.serve.build:app_from_env"
    config = json.loads(os.environ[build.CONFIG_ENV])
    assert config["model_threads"] == 1
    assert config["shared_limits"] and Path(config["shared_limits"]).parent.is_dir()  # one budget per key
    assert os.environ[PARENT_ENV] == str(os.getpid())

    calls.clear()  # an explicit --workers 1 serves in this process, its model on both cores
    result = CliRunner().invoke(app, [*args, "--workers", "1"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "1 worker process x 2 model threads" in result.output
    assert calls[0][0] == "app" and calls[0][1].model_threads == 2 and calls[1][0] == "app"


def test_a_worker_dies_with_its_parent_even_by_kill_9(tmp_path):
    child = (
        "from vlmops.serve.workers import die_with_parent; die_with_parent(); "
        "import time; print('armed', flush=True); time.sleep(120)"
    )
    parent = (
        "import os, subprocess, sys, time; "
        f"os.environ[{PARENT_ENV!r}] = str(os.getpid()); "
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, text=True); "
        "assert p.stdout.readline().strip() == 'armed'; print(p.pid, flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.time() + 20
        while time.time() < deadline and _alive(worker):
            time.sleep(0.05)
        assert not _alive(worker), "the worker outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _take_all(path: str, name: str, tries: int, out) -> None:
    from vlmops.serve.shared_limits import SharedTokenBuckets

    buckets = SharedTokenBuckets(path)
    out.put(sum(buckets.take(name, rate=0.001, burst=10) == 0.0 for _ in range(tries)))


def test_worker_processes_share_each_keys_budget(tmp_path):
    import multiprocessing

    from vlmops.serve.limits import RateLimiter
    from vlmops.serve.shared_limits import SharedTokenBuckets

    path = str(tmp_path / "buckets")
    # two workers' limiters: a key with a burst of 5 gets 5 requests in all, not 5 from each
    first, second = RateLimiter(SharedTokenBuckets(path)), RateLimiter(SharedTokenBuckets(path))
    granted = [limiter.check("key-a", 0.001, 5) == 0.0 for _ in range(4) for limiter in (first, second)]
    assert sum(granted) == 5
    assert first.check("key-b", 0.001, 5) == 0.0  # another key has its own bucket
    assert second.check("key-a", 1.0, 5) > 0  # spent; Retry-After from the key's rate

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_take_all, args=(path, "items:key-c", 10, out)) for _ in range(3)]
    for proc in procs:
        proc.start()
    counts = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert sum(counts) == 10, counts  # three processes, one budget of 10


def test_each_worker_has_its_own_socket_and_connections_spread_over_them():
    """One socket shared by the workers let the first one awake accept all 32 connections of a burst
    (measured); SO_REUSEPORT sockets get a share each."""
    import socket

    from serve_helpers import free_port
    from vlmops.serve.workers import reuseport_sockets

    port = free_port()
    listeners = reuseport_sockets("127.0.0.1", port, 2)
    clients = []
    try:
        for _ in range(32):  # a burst, as keep-alive clients connect at start
            clients.append(socket.create_connection(("127.0.0.1", port)))
        accepted = []
        for listener in listeners:
            listener.setblocking(False)
            n = 0
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                conn.close()
                n += 1
            accepted.append(n)
        assert sum(accepted) == 32 and min(accepted) >= 4, accepted  # binomial(32, 1/2): >= 4 but 1e-5
        # a server without SO_REUSEPORT cannot take the port meanwhile
        with pytest.raises(OSError), socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", port))
    finally:
        for sock in clients + listeners:
            sock.close()


GAUGE_PROCESS = """
import sys
from vlmops.serve.metrics import GatewayMetrics
metrics = GatewayMetrics()
metrics.queue_depth.labels("image").set(5)
metrics.requests.labels("/v1/classify", "200", "m-1").inc(3)
print("set", flush=True)
sys.stdin.read()  # until the test closes it
"""


def test_a_dead_workers_live_gauges_leave_metrics_but_its_counts_stay(tmp_path):
    # a worker or Ray Serve replica that died (and was replaced) must not hold the queue-depth gauge up
    # forever; its requests still count
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    from vlmops.serve.metrics import forget_dead_processes

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", GAUGE_PROCESS], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "set"

    def page() -> str:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
        return generate_latest(registry).decode()

    forget_dead_processes(str(tmp_path))  # the worker is alive: its gauge stays
    assert 'vlmops_queue_depth{kind="image"} 5.0' in page()
    proc.communicate("", timeout=30)
    forget_dead_processes(str(tmp_path))
    text = page()
    assert 'vlmops_queue_depth{kind="image"}' not in text
    assert "vlmops_requests_total" in text and " 3.0" in text
