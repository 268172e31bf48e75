"""The Ray Data actor pool that `scale.embed` and `scale.generate` run their jobs on.

`run_actor_pool` turns rows into a Dataset in blocks, maps them through an actor class (one model load
per actor, bounded restarts and retries), and streams the result batches back; after the last one,
the job's `RayJobStats` say what each actor did. Worker errors that retries did not cure come out as
one `RayJobError` line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from vlmops.errors import VlmopsError
from vlmops.scale.embed import MAX_BLOCKS, RayJobError, _is_ray_error, _retries, pool_strategy
from vlmops.scale.stats import RayJobStats


def load_actor_model(uri: str, version: str, threads: int, loader: Callable[[str], Any]) -> tuple[Any, tuple]:
    """In an actor: set torch's threads, load the model by `uri` and check it is the caller's `version`.
    Returns the model and its start-up (wall seconds, process CPU seconds so far)."""
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
    return model, (time.perf_counter() - started, time.process_time())


def check_pool_room(actors: int, cpus_per_actor: float, cpus: float) -> None:
    """Fail now, not by waiting forever, when the pool cannot fit in the cluster."""
    need = actors * cpus_per_actor
    if need > cpus:
        raise VlmopsError(
            f"{actors} actors x {cpus_per_actor:g} CPUs = {need:g} CPUs, but the Ray cluster "
            f"has {cpus:g}: lower --ray-actors or --ray-cpus-per-actor, or add nodes"
        )


class PoolJob:
    """The result batches of one pool job, as Ray returns them; `stats` is set after the last one."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]], what: str) -> None:
        self._batches, self.what = batches, what
        self.stats: RayJobStats | None = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        seen: dict[tuple[float, float], tuple] = {}  # (pid, start) -> the batch's stats
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
) -> PoolJob:
    """Map `rows` through a pool of `actors` `actor`s, each built with the model's URI and version, its
    threads, `loader` and `kwargs`; every result batch carries the `stats` column `RayJobStats` reads."""
    import logging
    import warnings

    import ray

    check_pool_room(actors, cpus_per_actor, float(ray.cluster_resources().get("CPU", 0.0)))
    data = ray.data.DataContext.get_current()
    data.enable_progress_bars = False  # the caller's bar counts the results as they arrive
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-run INFO lines on the console
    blocks = min(MAX_BLOCKS, len(rows), max(actors, math.ceil(len(rows) / batch_size)))  # >= 1 per actor
    dataset = ray.data.from_items(rows, override_num_blocks=blocks)
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
                **kwargs,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=pool_strategy(actors),
            num_cpus=cpus_per_actor,
            ray_remote_args_fn=_retries,
        )
    return PoolJob(mapped.iter_batches(batch_size=None, batch_format="numpy"), what)
