"""Warm Ray workers for the actor pools: worker processes started, and their imports done, before a job.

Ray Data starts a job's actors on whatever idle worker process the node has, and starts a new one when
it has none; after Ray's first driver prestarted a worker per CPU, which Ray Data's own per-cluster
actors take, a node has none, so every job paid a new process, ``import ray.data`` (pandas, pyarrow)
and ``import torch`` (~2.2 CPU s, ~3 s to the first vector on a 2-core machine; bench/RESULTS.md,
issue 18). Three Ray settings remove that:

- The pools' actors run in a runtime_env of their own (`pool_runtime_env`), so Ray keeps their workers
  apart from other workers; it also sets their niceness (`POOL_NICENESS`, below).
- `preload_env`: Ray's ``preload_python_modules`` (RAY_preload_python_modules), read when a node
  starts: each of its worker processes imports `vlmops._preload` once it is up, which imports
  ``ray.data`` and ``torch`` in a pool's worker only (Ray Data's and Serve's own actors skip them). A
  private local Ray started for the pools sets it (`connect(preload=True)`); vlmops' `loopback_node`
  too; for a node of your own `ray start`, README: Running on a cluster.
- `prestart_workers`: Ray's PrestartWorkers call on each node's raylet, the one Ray has for starting
  idle workers ahead of work: ``count`` Python workers in the pools' runtime_env, not tied to a job
  (any driver's pool may take them), kept from Ray's idle-worker reaper for `KEEP_ALIVE_S`. Ray keeps
  no Python API for it, so it goes through Ray's own gRPC stub and channel helper (Ray's auth token
  when the cluster has one); if a node refuses, the job starts its workers as before (logged).
"""

from __future__ import annotations

import logging
import os

from vlmops._preload import POOL_WORKER_ENV

PRELOAD_ENV = "RAY_preload_python_modules"
PRELOAD_MODULE = "vlmops._preload"
NICENESS_ENV = "RAY_worker_niceness"  # read by each Ray worker as it starts
KEEP_ALIVE_S = 300  # a warm worker left unused is the reaper's again after this (one pool: a few 100 MB)
# Ray starts its workers at nice 15 (RAY_worker_niceness), below the driver, raylet and GCS, so that
# those stay responsive. A pool's actor holds a whole CPU of its own for its job, and at nice 15 it loses
# that CPU to every nice-0 thread that wakes (the driver's and Ray's own, ~2,000 wake-ups a second on a
# 2-core node): on the emoji set, in a 2-actor job one actor's compute thread was switched out 3,900-5,500
# times (since its worker started) in 4 of 5 jobs, at nice 0 1,350-1,850 (one job 3,360); 2-actor jobs
# took 2-4 % less time at nice 0 in two interleaved runs (1-actor jobs 0 and 4 %; `bench/pool_niceness.py`,
# bench/RESULTS.md, issue 18). Pool workers run at 0, as Ray's own job supervisor does; Ray Data's and
# Serve's actors keep 15.
# None: Ray's default.
POOL_NICENESS: int | None = 0

log = logging.getLogger(__name__)


def preload_env() -> dict[str, str]:
    """The environment that makes a Ray node's pool workers import the pools' modules when they start
    (added to any modules RAY_preload_python_modules already names)."""
    names = [name for name in os.environ.get(PRELOAD_ENV, "").split(",") if name.strip()]
    return {PRELOAD_ENV: ",".join(names if PRELOAD_MODULE in names else [*names, PRELOAD_MODULE])}


def pool_runtime_env() -> dict:
    """The runtime_env of every pool actor (a fresh dict each call: Ray may add to it)."""
    env_vars = {POOL_WORKER_ENV: "1"}
    if POOL_NICENESS is not None:
        env_vars[NICENESS_ENV] = str(POOL_NICENESS)
    return {"env_vars": env_vars}


def prestart_workers(count: int, cpus_per_worker: float = 1.0, keep_alive_s: int = KEEP_ALIVE_S) -> int:
    """Ask every alive node of the connected Ray for up to `count` idle pool workers (no more than its
    CPUs hold at `cpus_per_worker`), kept alive `keep_alive_s`; returns how many were asked for."""
    import ray

    asked = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        room = int(float(node.get("Resources", {}).get("CPU", 0.0)) // max(cpus_per_worker, 1e-9))
        wanted = min(count, room)
        if wanted < 1:
            continue
        address = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
        try:
            _prestart_on(address, wanted, keep_alive_s)
        except Exception as exc:  # a Ray without the call, a node gone: the job starts its own workers
            log.info("Ray did not prestart workers on %s (%s); the job starts its own", address, exc)
            continue
        asked += wanted
    return asked


def _prestart_on(address: str, count: int, keep_alive_s: int) -> None:
    from google.protobuf import json_format
    from ray._private.grpc_utils import init_grpc_channel
    from ray._private.utils import get_runtime_env_info
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc
    from ray.core.generated.runtime_environment_pb2 import RuntimeEnvInfo
    from ray.runtime_env import RuntimeEnv

    # the runtime_env exactly as Ray serialises an actor's, so that Ray's worker pool matches the two
    info = get_runtime_env_info(RuntimeEnv(**pool_runtime_env()), is_job_runtime_env=False, serialize=True)
    request = node_manager_pb2.PrestartWorkersRequest(
        language=common_pb2.PYTHON,
        runtime_env_info=json_format.Parse(info, RuntimeEnvInfo()),
        keep_alive_duration_secs=keep_alive_s,
        num_workers=count,
    )  # no job_id: a worker not tied to a job fits any driver's actors
    channel = init_grpc_channel(address)
    try:
        node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=10)
    finally:
        channel.close()
