"""Imported by every worker process of a Ray node that vlmops starts (Ray's ``preload_python_modules``,
`vlmops.scale.warm`): in a worker meant for an actor pool (its runtime_env sets `POOL_WORKER_ENV`),
import the pool actors' heavy modules before Ray gives it work; in any other worker (Ray Data's own
actors, Serve's), nothing. Kept at the top level, away from `vlmops.scale`, so that it costs the others
only `import vlmops` (~2 ms).
"""

from __future__ import annotations

import contextlib
import importlib
import os

POOL_WORKER_ENV = "VLMOPS_POOL_WORKER"
POOL_MODULES = ("ray.data", "torch")  # what every pool actor imports before its first task


def _import_pool_modules() -> None:
    for name in POOL_MODULES:
        with contextlib.suppress(ImportError):  # a model without torch (onnx): its actors do not need it
            importlib.import_module(name)


if os.environ.get(POOL_WORKER_ENV):
    _import_pool_modules()
