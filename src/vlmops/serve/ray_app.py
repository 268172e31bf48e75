"""`vlmops.serve.ray_app:app`: the gateway as a Ray Serve application builder, for a Serve config
(`serve deploy`, `serve run`, a KubeRay RayService's ``serveConfigV2``) instead of `vlmops serve --ray`.

Its args are `ServeConfig` fields by name (``model``, ``store``, ``runtime``, ``label_sets``,
``vocabulary``, ``queue``, ``auth``, ...) and three of the deployment: ``replicas``, ``autoscale``
(``"MIN:MAX"``) and ``cpus_per_replica``. Unlike the CLI it adds no defaults (no emoji label set or
vocabulary unless named), and more than one replica needs a ``postgresql://`` store, as on the CLI.
"""

from __future__ import annotations

from dataclasses import fields
from functools import partial

from vlmops.errors import VlmopsError

PLAN_ARGS = ("replicas", "autoscale", "cpus_per_replica")


def app(args: dict):
    """The Serve application for `args` (see the module docstring); unknown names are refused."""
    from vlmops.config import get_settings
    from vlmops.scale.serve import ReplicaPlan, check_shared_store, deployment, parse_autoscale
    from vlmops.serve.build import app_from_json, config_to_env
    from vlmops.serve.service import ServeConfig

    args = dict(args)
    known = {f.name for f in fields(ServeConfig)} - {"limits", "shared_limits"}
    unknown = sorted(set(args) - known - set(PLAN_ARGS))
    if unknown:
        raise VlmopsError(
            f"vlmops.serve.ray_app: unknown args {', '.join(unknown)}; use vlmops serve's settings by "
            f"their ServeConfig names ({', '.join(sorted(known))}) or {', '.join(PLAN_ARGS)}"
        )
    autoscale = args.pop("autoscale", None)
    cpus = float(args.pop("cpus_per_replica", 1.0))
    replicas = int(args.pop("replicas", 1))
    config = ServeConfig(**args)
    if config.model_threads is None:
        config.model_threads = max(1, int(cpus))
    plan = ReplicaPlan(
        replicas, parse_autoscale(str(autoscale)) if autoscale else None, cpus, max_ongoing=config.queue
    )
    check_shared_store(config.store or get_settings().resolved_store_url(), plan)
    return deployment(plan).bind(partial(app_from_json, config_to_env(config)))
