"""Imported by every worker process of a Ray node that vlmops starts (Ray's ``preload_python_modules``,
`vlmops.scale.warm`): in a worker meant for an actor pool (its runtime_env sets `POOL_WORKER_ENV`),
import the pool actors' modules before Ray gives it work; in any other worker (Ray Data's own actors,
Serve's), nothing. Kept at the top level, away from `vlmops.scale`, so that it costs the others only
`import vlmops` (~2 ms).

`PRELOADED` is what a pool worker had imported once this ended: an actor compares it with what it has
when its model is loaded (`scale.pool.load_actor_model`), and the job's stats say how many modules each
actor still imported on its own.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

POOL_WORKER_ENV = "VLMOPS_POOL_WORKER"
# What a pool actor imports before its first task. Ray Data's and torch's imports are the bulk (~2 CPU
# s). The rest took ~0.3 s of every job's start on a warm worker (bench/RESULTS.md, issue 18): Ray
# unpickling an actor's arguments imports Ray Data's actor-pool operator and issue detectors (through
# them ray.util.state and the job SDK) and Ray's serializers for pydantic v1, starlette and Arrow; then
# vlmops' pool, the builtin models, their weights' format and the image decoder. Internal Ray names:
# the extra pins Ray 2.60, and a name that is gone only costs that time again.
POOL_MODULES = (
    "ray.data",
    "ray.data._internal.execution.operators.actor_pool_map_operator",
    "ray.data._internal.issue_detection",
    "ray.data._internal.planner.plan_udf_map_op",
    "ray._common.pydantic_compat",
    "ray._private.arrow_serialization",
    "pydantic.v1",
    "pyarrow.json",
    "starlette.datastructures",
    "torch",
    "safetensors.torch",
    "vlmops.scale",
    "vlmops.models.builtin",
    "vlmops.data.images",
)
PRELOADED: frozenset[str] | None = None  # in a pool worker, the modules it had once preloaded


def _import_pool_modules() -> None:
    for name in POOL_MODULES:
        with contextlib.suppress(ImportError):  # a model without torch (onnx): its actors do not need it
            importlib.import_module(name)


if os.environ.get(POOL_WORKER_ENV):
    _import_pool_modules()
    PRELOADED = frozenset(sys.modules)
