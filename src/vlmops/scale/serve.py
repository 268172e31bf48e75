"""Serve an ASGI app (the gateway) as a Ray Serve application: N replicas, or an autoscaling range,
behind Serve's HTTP proxy on `host:port`.

Each replica calls the same picklable `builder` to build its own app (its own model, batchers and log
writer) and runs the app's lifespan startup and shutdown as uvicorn would: Serve's ASGI ingress does
(`__serve_build_asgi_app__`, then uvicorn's LifespanOn). What the replicas share is whatever the app
keeps outside the process: for the gateway, the Postgres store (log, keys, rate-limit buckets).

The replicas of one deployment share a metrics folder name (PROMETHEUS_MULTIPROC_DIR, in their
runtime_env): on each node the replicas there write their metrics to that folder, so /metrics, whichever
replica Serve's proxy hands it to, counts every replica of that node (all of them on a single-node Ray).
On a multi-node cluster, scrape each node's replicas, or use Ray's own metrics.

Every answer names the replica that served it (``X-Vlmops-Replica``). Serve's proxy adds its own
``X-Request-ID`` to every answer; `proxy_middlewares`, which a private Ray's proxy loads through
RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH, keeps the app's (the id in the body and the log) instead.
"""

from __future__ import annotations

import math
import os
import re
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlmops._optional import require
from vlmops.errors import VlmopsError
from vlmops.scale.cluster import LOCAL, RayCluster, connect, resolve_address

APP_NAME = "vlmops"
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "vlmops.scale.serve:proxy_middlewares"
REPLICA_HEADER = b"x-vlmops-replica"
REQUEST_ID_HEADER = b"x-request-id"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PREFIX = "vlmops-serve-metrics-"


class RayServeError(VlmopsError):
    """The app could not be deployed on Ray Serve."""


@dataclass(frozen=True)
class ReplicaPlan:
    """How many replicas, of how many CPUs each; `autoscale` (min, max) lets Serve choose the count."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    cpus: float = 1.0
    max_ongoing: int = 512  # requests a replica may hold; the app's own admission sheds load below it

    @property
    def most(self) -> int:
        """The most replicas that may run at once."""
        return self.autoscale[1] if self.autoscale else self.replicas

    def deployment_options(self) -> dict:
        """Keyword arguments of `serve.deployment(...)` for this plan."""
        options: dict = {
            "max_ongoing_requests": self.max_ongoing,
            "ray_actor_options": {"num_cpus": self.cpus},
        }
        if self.autoscale:
            low, high = self.autoscale
            start = min(max(self.replicas, low), high)
            options["num_replicas"] = "auto"
            options["autoscaling_config"] = {
                "min_replicas": low,
                "initial_replicas": start,
                "max_replicas": high,
                # a replica's share of requests in flight before Serve adds one: a full batch at the
                # default --queue 512 (64), never less than 2
                "target_ongoing_requests": max(2, self.max_ongoing // 8),
            }
        else:
            options["num_replicas"] = self.replicas
        return options

    def describe(self) -> str:
        """One line for the console."""
        if self.autoscale:
            low, high = self.autoscale
            return f"{low}-{high} replicas (autoscaling) x {self.cpus:g} CPU"
        return f"{self.replicas} replica{'s' if self.replicas > 1 else ''} x {self.cpus:g} CPU"


def parse_autoscale(text: str) -> tuple[int, int]:
    """``MIN:MAX`` (1 <= MIN <= MAX) -> (MIN, MAX)."""
    low, sep, high = text.partition(":")
    try:
        bounds = int(low), int(high)
    except ValueError:
        bounds = (0, 0)
    if not sep or not 1 <= bounds[0] <= bounds[1]:
        raise RayServeError(f"--ray-autoscale {text!r}: use MIN:MAX with 1 <= MIN <= MAX, e.g. 1:4")
    return bounds


def check_shared_store(store_url: str, plan: ReplicaPlan) -> None:
    """More than one replica needs a store they all reach: a postgresql:// URL."""
    if plan.most > 1 and not store_url.startswith(("postgresql://", "postgresql+psycopg://")):
        raise RayServeError(
            f"{plan.describe()} need a shared store, but the store is {store_url!r}: every replica "
            "writes the request log and reads the API keys and rate limits, and a SQLite file cannot be "
            "shared across replicas (nor machines); pass --store postgresql://USER@HOST/DB, or use "
            "--ray-replicas 1"
        )


class ReplicaHeader:
    """ASGI middleware: every answer names the replica that served it."""

    def __init__(self, app, tag: str) -> None:
        self.app, self.tag = app, tag.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER, self.tag)]}
            await send(message)

        await self.app(scope, receive, tagged)


class FirstRequestId:
    """ASGI middleware for Serve's proxy: keep only the first X-Request-ID of an answer (the app's)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def first_only(message) -> None:
            if message["type"] == "http.response.start":
                headers, seen = [], False
                for name, value in message.get("headers", []):
                    if name.lower() == REQUEST_ID_HEADER:
                        if seen:
                            continue
                        seen = True
                    headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, first_only)


def proxy_middlewares() -> list:
    """Middlewares of Serve's HTTP proxy (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH points here)."""
    from starlette.middleware import Middleware

    return [Middleware(FirstRequestId)]


def _replica_tag() -> str:
    from ray import serve

    try:
        return f"{serve.get_replica_context().replica_id.unique_id}-{os.getpid()}"
    except Exception:  # outside a replica (tests of the builder)
        return f"pid-{os.getpid()}"


def metrics_folder() -> str:
    """A fresh folder name (under the temp folder) for one deployment's replicas to share metrics in."""
    return str(Path(tempfile.gettempdir()) / f"{METRICS_PREFIX}{uuid.uuid4().hex[:12]}")


def deployment(plan: ReplicaPlan, metrics_dir: str | None = None):
    """The Serve deployment whose replicas each build the app by calling the builder they are given,
    sharing `metrics_dir` (default: a fresh `metrics_folder`) on each node for /metrics."""
    from ray import serve

    options = plan.deployment_options()
    env = {METRICS_DIR_ENV: metrics_dir or metrics_folder()}
    options["ray_actor_options"]["runtime_env"] = {"env_vars": env}  # set before any import

    @serve.ingress()
    class Replica:
        def __init__(self, builder: Callable) -> None:
            if os.environ.get(METRICS_DIR_ENV):  # unless a Serve config replaced the runtime_env
                os.makedirs(os.environ[METRICS_DIR_ENV], exist_ok=True)
            self._builder = builder

        def __serve_build_asgi_app__(self):
            app = self._builder()
            tag = _replica_tag()
            if hasattr(app, "add_middleware"):  # Starlette/FastAPI: keep the app itself for Serve
                app.add_middleware(ReplicaHeader, tag=tag)
                return app
            return ReplicaHeader(app, tag)

    return serve.deployment(name="gateway", **options)(Replica)


def serve_on_ray(
    builder: Callable,
    *,
    address: str | None,
    host: str,
    port: int,
    plan: ReplicaPlan,
    announce: Callable[[RayCluster], None] | None = None,
) -> None:
    """Deploy `builder`'s app on Ray Serve (started or joined as `connect` does) and serve it on
    `host:port` until SIGINT or SIGTERM; then the replicas stop gracefully (lifespan shutdown) and Serve
    is shut down (a private Ray) or the application deleted (a joined cluster)."""
    require("ray", extra="ray")
    address = resolve_address(address)
    if address == LOCAL:
        os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)  # what a private Ray's proxy inherits
    cpus = max(os.cpu_count() or 1, math.ceil(plan.most * plan.cpus))  # a private Ray fits every replica
    with (
        connect(address, num_cpus=cpus) as cluster,
        # the replicas' metrics folder: removed at the end on this machine; other nodes keep theirs
        tempfile.TemporaryDirectory(prefix=METRICS_PREFIX, ignore_cleanup_errors=True) as metrics_dir,
    ):
        from ray import serve

        try:
            serve.start(http_options={"host": host, "port": port})
        except (RuntimeError, ValueError) as exc:
            raise RayServeError(f"Ray Serve did not start: {str(exc).strip().splitlines()[-1]}") from None
        _check_proxy_address(host, port)
        try:
            app = deployment(plan, metrics_dir).bind(builder)
            serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        except (RuntimeError, ValueError) as exc:
            reason = _failure_reason(serve) or str(exc).strip().splitlines()[-1]
            _stop(serve, cluster)
            raise RayServeError(f"the app did not start on Ray Serve: {reason[:500]}") from None
        if announce is not None:
            announce(cluster)
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stop.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            _stop(serve, cluster)


def _check_proxy_address(host: str, port: int) -> None:
    """Serve already running on a joined cluster keeps its proxy's address: refuse to announce ours."""
    try:
        from ray.serve.context import _get_global_client

        options = _get_global_client().http_config
    except Exception:  # a private API of Ray 2.60: without it, nothing to compare
        return
    if (options.host, options.port) != (host, port):
        raise RayServeError(
            f"Serve already runs on this Ray cluster with its HTTP proxy on {options.host}:{options.port}, "
            f"not {host}:{port}: pass --host {options.host} --port {options.port}, or stop that Serve "
            "(`serve shutdown`)"
        )


def _failure_reason(serve) -> str | None:
    """The error a replica failed with (the last exception line of the deployment's message), if any."""
    try:
        deployments = serve.status().applications[APP_NAME].deployments
    except Exception:  # the status itself is unavailable: say what serve.run said
        return None
    for status in deployments.values():
        lines = [line.strip() for line in (status.message or "").splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b.*: ", line)]
        if errors:
            return errors[-1]
    return None


def _stop(serve, cluster: RayCluster) -> None:
    """Our application gone: Serve shut down on a private Ray, only the app deleted on a shared one."""
    if cluster.started_here:
        serve.shutdown()
    else:
        serve.delete(APP_NAME)
