"""How many server processes and model threads: chosen from the cores this process may use.

Measured on 2 cores (bench/serve_load.py, bench/RESULTS.md): one process per core, each running its
model on one thread, carries 1.4-1.8x the load of one process whose model spreads over both cores:
the event loop, decoding and logging of each process then have a core's worth of GIL to themselves.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
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
