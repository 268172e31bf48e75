"""The Ray Data actor pool that `scale.embed` and `scale.generate` run their jobs on.

`run_actor_pool` turns rows into a Dataset whose blocks are Ray Data tasks of up to `BATCHES_PER_TASK`
of the caller's batches, maps them through an actor class (one model load per actor, bounded restarts
and retries; the actor cuts each task into model batches with `batched`), and streams the result
batches back; after the last one, the job's `RayJobStats` say what each actor did. Worker errors that
retries did not cure come out as one `RayJobError` line.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmops.errors import VlmopsError
from vlmops.scale.stats import RayJobStats

MAX_RESTARTS = 3  # per actor
MAX_TASK_RETRIES = 3  # per task, on an actor that died while running it
# The size of a Ray Data task (one block, one actor call) trades its fixed cost against the tail. Each
# task costs ~15 ms of the driver's CPU (Ray Data's executor, the result's round, the store's
# transaction), ~4 ms of the raylet's and ~28 ms of the actor's outside the model: about
# `TASK_COST_ROWS` images of model work in all (measured: 20,000 images, 2 actors, 77 tasks of 4
# batches against 20 of 16: 1.5 CPU s less outside the actors, 1.6 less in them; bench/RESULTS.md,
# issue 18). And a job ends up to a task or two after its first actor runs dry. Rows per task ~
# sqrt(TASK_COST_ROWS x rows per actor) balances the two, in whole model batches, at most
# `BATCHES_PER_TASK`; the job's last tasks are smaller (`task_sizes`). That cost in rows is the
# embedding's; a job whose rows take longer (generation: hundreds of ms to seconds per answer) passes
# its own (`run_actor_pool`'s `task_cost_rows`).
TASK_COST_ROWS = 40.0
BATCHES_PER_TASK = 16
# Rows queued per actor (as whole tasks, at least 2). With one 64-image batch per task, Ray Data's
# default of 2 tasks left an actor idle while the driver turned a result round: on 8,000 emoji with 2
# actors, both were busy 59-62 % of the job with 2 tasks (128 rows), 80-83 % with 8 (512 rows). More
# than that lets the first actor ready take most of a short job before the second has started.
ROWS_IN_FLIGHT = 512
# Near the end, a task takes 1/(TAIL_SHARE x actors) of the rows still left (guided self-scheduling):
# on the emoji set with 2 actors, both were busy 95-97 % of the job (4 jobs) against 89-97 % (8 jobs)
# with tasks all of one size (bench/RESULTS.md, issue 18). Ray Data submits the tasks in this order, but
# its actors may run their queued tasks out of order (it sets allow_out_of_order_execution); only the
# few tasks queued on one actor can swap. Forcing the order gained nothing (session 17).
TAIL_SHARE = 2


class RayJobError(VlmopsError):
    """A Ray job failed (a worker error that retries did not cure)."""


def check_pool_options(actors: int, cpus_per_actor: float) -> None:
    """Refuse a pool of no actors or no CPUs, naming the option."""
    if actors < 1:
        raise VlmopsError(f"--ray-actors must be at least 1, got {actors}")
    if cpus_per_actor <= 0:
        raise VlmopsError(f"--ray-cpus-per-actor must be above 0, got {cpus_per_actor}")


@dataclass
class ActorPool:
    """What the pool backends (`RayImageEmbedder`, `RayGenerator`) share: the pool's size, checked when
    made, and a warm start before a job."""

    actors: int = 2
    cpus_per_actor: float = 1.0

    def __post_init__(self) -> None:
        check_pool_options(self.actors, self.cpus_per_actor)

    def warm(self) -> int:
        """Before a job: ask Ray for an idle worker process per actor on each node (its imports done
        where the node preloads them, `scale.warm`), so the job's actors skip starting one; returns
        how many were asked for."""
        from vlmops.scale.warm import prestart_workers

        return prestart_workers(self.actors, self.cpus_per_actor)


def check_pool_room(actors: int, cpus_per_actor: float, cpus: float) -> None:
    """Fail now, not by waiting forever, when the pool cannot fit in the cluster."""
    need = actors * cpus_per_actor
    if need > cpus:
        raise VlmopsError(
            f"{actors} actors x {cpus_per_actor:g} CPUs = {need:g} CPUs, but the Ray cluster "
            f"has {cpus:g}: lower --ray-actors or --ray-cpus-per-actor, or add nodes"
        )


def load_actor_model(uri: str, version: str, threads: int, loader: Callable[[str], Any]) -> tuple[Any, tuple]:
    """In an actor: set torch's threads, load the model by `uri` and check it is the caller's `version`.
    Returns the model and its start-up: wall seconds, process CPU seconds so far, and how many modules
    the worker imported after its preload (`vlmops._preload`), up to the model loaded (-1: none ran)."""
    started = time.perf_counter()
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # a model without torch (onnx)
        pass
    model = loader(uri)
    if model.info.version != version:
        raise VlmopsError(
            f"a Ray worker loaded {uri} as version {model.info.version}, the caller has {version}: "
            "give every node the same weights at the same path"
        )
    return model, (time.perf_counter() - started, time.process_time(), _imported_since_preload())


def _imported_since_preload() -> int:
    preload = sys.modules.get("vlmops._preload")  # not imported: the node does not preload
    preloaded = getattr(preload, "PRELOADED", None)
    return -1 if preloaded is None else len(set(sys.modules) - preloaded)


def task_stats(start: float, cpu: float, items: int, startup: tuple) -> np.ndarray:
    """The `stats` column of one task's result: (pid, start, end, CPU s, items, start-up...) on each row."""
    row = (os.getpid(), start, time.time(), time.process_time() - cpu, items, *startup)
    return np.array([row] * items, dtype=np.float64)


def rows_per_task(items: int, batch_size: int, actors: int, task_cost_rows: float = TASK_COST_ROWS) -> int:
    """Rows of one Ray Data task (block): about sqrt(`task_cost_rows` x the rows of each actor), so
    that the tasks' fixed cost (in rows of model work) and the job's tail stay small together; a whole
    number of model batches, at least one and at most `BATCHES_PER_TASK`."""
    batches = int(math.sqrt(task_cost_rows * items / actors)) // batch_size
    return batch_size * max(1, min(BATCHES_PER_TASK, batches))


def task_sizes(items: int, batch_size: int, actors: int, task_cost_rows: float = TASK_COST_ROWS) -> list[int]:
    """Rows of each Ray Data task, in the order Ray hands them out: `rows_per_task` while much is left,
    then smaller and smaller, each about 1/(`TAIL_SHARE` x actors) of the rows still left, down to one
    model batch (guided self-scheduling), so that the actors run dry within a small task of each other."""
    largest = rows_per_task(items, batch_size, actors, task_cost_rows)
    sizes, left = [], items
    while left > 0:
        share = math.ceil(left / (TAIL_SHARE * actors) / batch_size) * batch_size
        size = min(largest, share)
        sizes.append(left if left - size < batch_size else size)  # no task of less than a batch after it
        left -= sizes[-1]
    return sizes


def pool_strategy(actors: int, per_task: int):
    """Ray Data's fixed-size actor pool of `actors`, each with about `ROWS_IN_FLIGHT` rows queued."""
    import ray

    in_flight = max(2, ROWS_IN_FLIGHT // per_task)
    return ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=in_flight)


class PoolJob:
    """The result batches of one pool job, as Ray returns them; `stats` is set after the last one."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]], what: str) -> None:
        self._batches, self.what = batches, what
        self.stats: RayJobStats | None = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        seen: dict[tuple[float, float], tuple] = {}  # (pid, start) -> the task's stats
        try:
            for batch in self._batches:
                seen.update({(row[0], row[1]): tuple(row) for row in batch["stats"].tolist()})
                yield batch
        except Exception as exc:  # Ray wraps worker errors in its own types; report the cause in one line
            if not _is_ray_error(exc):
                raise
            cause = str(exc).strip().splitlines()
            raise RayJobError(
                f"the Ray {self.what} job failed: {cause[-1] if cause else type(exc).__name__}"
            ) from exc
        self.stats = RayJobStats.from_batches(list(seen.values()))


def run_actor_pool(
    actor: type,
    model: Any,
    rows: list[dict],
    kwargs: dict,
    actors: int,
    cpus_per_actor: float,
    batch_size: int,
    loader: Callable[[str], Any],
    what: str,
    task_cost_rows: float = TASK_COST_ROWS,
) -> PoolJob:
    """Map `rows` through a pool of `actors` `actor`s, each built with the model's URI and version, its
    threads, `loader`, the caller's `batch_size` and `kwargs`; every result batch carries the `stats`
    column (`task_stats`) that `RayJobStats` reads; `task_cost_rows` sizes the tasks (`task_sizes`)."""
    import logging
    import warnings

    import ray

    check_pool_room(actors, cpus_per_actor, float(ray.cluster_resources().get("CPU", 0.0)))
    data = ray.data.DataContext.get_current()
    data.enable_progress_bars = False  # the caller's bar counts the results as they arrive
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-run INFO lines on the console
    sizes = task_sizes(len(rows), batch_size, actors, task_cost_rows)
    # A block per task, in order. from_blocks (a DeveloperAPI; the extra pins Ray 2.60) keeps the blocks
    # as given and reads their metadata here; from_arrow runs a metadata task per block, which started a
    # new worker process (~2 CPU s) in every job.
    dataset = ray.data.from_blocks(_blocks(rows, sizes))
    with warnings.catch_warnings():
        # Ray 2.60 has no other way to bound restarts (the extra pins 2.60; removed in 2.64)
        warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*deprecated")
        mapped = dataset.map_batches(
            actor,
            fn_constructor_kwargs={
                "uri": model.info.uri,
                "version": model.info.version,
                "threads": max(1, int(cpus_per_actor)),
                "loader": loader,
                "batch_size": batch_size,
                **kwargs,
            },
            batch_size=None,  # a block per call: the actor cuts it into model batches
            batch_format="numpy",
            compute=pool_strategy(actors, max(sizes, default=batch_size)),
            num_cpus=cpus_per_actor,
            ray_remote_args_fn=_actor_options,
        )
    # No prefetch: Ray Data's default of 1 held each result until the next one had arrived, so a job's
    # first vectors reached the store (and the progress bar) a whole task late (1 actor, emoji set:
    # 2.2 s after the start instead of 1.35)
    results = mapped.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)
    return PoolJob(results, what)


def _blocks(rows: list[dict], sizes: list[int]) -> list:
    """`rows` cut into Arrow tables of `sizes` rows each, in order."""
    import pyarrow as pa

    ends = np.cumsum(sizes)
    return [pa.Table.from_pylist(rows[end - size : end]) for size, end in zip(sizes, ends, strict=True)]


def _actor_options() -> dict:
    """Remote options of each actor: bounded restarts and retries (Ray Data's default is forever), and
    the pools' runtime_env, in which warm workers wait (`scale.warm`)."""
    from vlmops.scale.warm import pool_runtime_env

    return {
        "max_restarts": MAX_RESTARTS,
        "max_task_retries": MAX_TASK_RETRIES,
        "runtime_env": pool_runtime_env(),
    }


def _is_ray_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "ray" or any(
        type(cause).__module__.split(".")[0] == "ray" for cause in _causes(exc)
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__
