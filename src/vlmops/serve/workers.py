"""How many server processes and model threads: chosen from the cores this process may use.

Measured on 2 cores (bench/serve_load.py, bench/RESULTS.md): one process per core, each running its
model on one thread, carries 1.4-1.8x the load of one process whose model spreads over both cores:
the event loop, decoding and logging of each process then have a core's worth of GIL to themselves.

`serve_workers` runs them, each on its own SO_REUSEPORT socket of the port, so that connections are
spread over the workers by the kernel instead of going to whichever worker accepts first.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import socket
from pathlib import Path

MAX_DEFAULT_WORKERS = 8  # each process holds its own copy of the model; beyond this, threads per process
PARENT_ENV = "VLMOPS_SERVE_PARENT"
_PR_SET_PDEATHSIG = 1


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota when one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def choose_parallelism(cores: int, workers: int | None = None, threads: int | None = None) -> tuple[int, int]:
    """(worker processes, model threads per process) for `cores` cores; a given value is kept as is.

    Default: one process per core (at most MAX_DEFAULT_WORKERS), the cores shared out among them as
    model threads (one each when there are no more cores than processes).
    """
    if workers is None:
        workers = max(1, min(cores, MAX_DEFAULT_WORKERS))
    if threads is None:
        threads = max(1, cores // workers)
    return workers, threads


def die_with_parent() -> None:
    """In a worker process: be killed when the `vlmops serve` process that started it dies, even by kill -9.

    Without this, killing the parent leaves its workers serving on the port, unsupervised.
    """
    parent = os.environ.get(PARENT_ENV)
    if parent is None or not hasattr(os, "sched_getaffinity"):  # not a worker, or not Linux
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before the signal was armed
        os._exit(1)


APP_FACTORY = "vlmops.serve.build:app_from_env"
STARTUP_FAILURE = 3  # uvicorn's exit code for a worker whose app failed to start
GRACE_S = 40.0  # a stopping worker's graceful shutdown (30 s) and some margin


def reuseport_sockets(host: str, port: int, n: int, backlog: int = 2048) -> list[socket.socket]:
    """`n` listening sockets on one address, each with SO_REUSEPORT: the kernel spreads new connections
    over them by a hash of each connection's addresses, so a worker serving one gets its share.

    One socket shared by every worker (uvicorn's ``--workers``) lets whichever worker wakes first accept
    every connection waiting: 32 keep-alive clients that connect at once all land on one worker while the
    other idles (measured: 32 of 32; bench/RESULTS.md).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = []
    try:
        for _ in range(n):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _worker(sock: socket.socket) -> None:
    """In a worker process: serve the gateway (config from the environment) on its own socket."""
    import uvicorn

    config = uvicorn.Config(APP_FACTORY, factory=True, log_level="warning", timeout_graceful_shutdown=30)
    uvicorn.Server(config).run(sockets=[sock])


def serve_workers(host: str, port: int, workers: int) -> None:
    """Run `workers` worker processes, each serving its own SO_REUSEPORT socket of `host:port`, until
    SIGINT or SIGTERM (then each is stopped gracefully). A worker that dies is replaced on its socket; one
    that fails to start stops the server (exit code 3)."""
    import multiprocessing
    import threading

    context = multiprocessing.get_context("spawn")
    sockets = reuseport_sockets(host, port, workers)
    stop = threading.Event()
    failed = False

    def start(sock: socket.socket):
        process = context.Process(target=_worker, args=(sock,), name="vlmops-worker")
        process.start()
        return process

    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    processes = [start(sock) for sock in sockets]
    try:
        while not stop.wait(0.2):
            for i, process in enumerate(processes):
                if process.is_alive():
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    failed = True
                    stop.set()
                    break
                processes[i] = start(sockets[i])
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn drains its requests and the gateway its log
        for process in processes:
            process.join(GRACE_S)
            if process.is_alive():
                process.kill()
                process.join()
        for sock in sockets:
            sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        raise SystemExit(STARTUP_FAILURE)
