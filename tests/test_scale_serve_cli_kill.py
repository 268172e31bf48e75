"""kill -9 of the `vlmops serve --ray local` command alone takes its private Ray's serving down with it.

The operator's view: the command is gone, so the port must stop answering and no Ray process that
serves or writes (GCS, raylet, Serve's controller, proxy and replica) may stay behind. Checked within a
bound under tests/ray_guard.py's loopback audit (its Python hook; strace off, whose tracing kept the
traced processes' ends waiting on it).

Known and left: Ray's two per-node agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``), idle,
outlive the command when it runs in a session of its own, as under a supervisor or this guard: they
notice the raylet is gone, then try to flush their logs to the dead GCS first (seen alive 60 s after
the kill, gone about a minute later; started from a terminal's session they end with the rest, within
5 s). They hold no port of the gateway's and write nothing. Their process title overwrites the guard's
marker in their environment, so the guard finds them by their working folder (its own) and stops them
at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from ray_guard import Guard
from serve_helpers import free_port
from test_scale_serve import VLMOPS, RayServer, wait_ready

pytestmark = pytest.mark.ray
GONE_WITHIN_S = 60
LEFT_TO_THE_SUPERVISOR = (b"ray::DashboardAgent", b"ray::RuntimeEnvAgent")  # see the module docstring


def serving(guard: Guard) -> dict[int, bytes]:
    """The guard's live processes by name (argv[0]), but for the two agents left to a supervisor."""
    names = {}
    for pid in guard.ours():
        with contextlib.suppress(OSError):
            names[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    return {pid: name for pid, name in names.items() if name not in LEFT_TO_THE_SUPERVISOR}


def test_kill_9_of_the_command_ends_its_serving_ray_processes_and_frees_the_port(tmp_path):
    guard = Guard(tmp_path)
    guard.use_strace = False  # see the module docstring
    (tmp_path / "vocab.txt").write_text("red\ngreen\nblue\n")
    port, url = free_port(), f"sqlite:///{tmp_path / 'store.sqlite'}"
    command = [VLMOPS, "serve", "--ray", "local", "--store", url, "--port", str(port),
               "--vocabulary", str(tmp_path / "vocab.txt"), "--insecure-no-auth"]  # fmt: skip
    server = RayServer(guard, guard.start(command, "serve"), port, url)
    try:
        wait_ready(server)
        assert len(guard.ours()) >= 4, guard.ours()  # the command, GCS, raylet, the replica at least
        os.kill(server.proc.pid, signal.SIGKILL)  # the command itself (strace off: nothing wraps it)
        killed, left = time.time(), serving(guard)
        while left and time.time() < killed + GONE_WITHIN_S:
            time.sleep(0.5)
            left = serving(guard)
        assert not left, f"Ray processes outlived the command by {GONE_WITHIN_S} s: {sorted(left.values())}"
        print(f"every serving Ray process ended {time.time() - killed:.1f} s after the command's kill -9")
        with pytest.raises(httpx.ConnectError):  # a new connection: nothing listens on the port
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
    finally:
        server.client.close()
        guard.stop(grace=5)
    assert guard.findings() == [], "a Ray process touched a non-loopback address"
