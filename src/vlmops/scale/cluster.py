"""Start or join Ray so that it stays on this machine's loopback and never asks the network anything.

`connect(address)`: ``local`` (or nothing, and no VLMOPS_RAY_ADDRESS) starts a private single-node Ray
bound to 127.0.0.1 in its own temp folder, without a dashboard, metrics or task events
(`UNOBSERVED_ENV`), stopped again when the block ends; ``auto`` or
``host:port`` joins a running cluster (`ray start`), leaving it running.

What keeps a Ray process off the network (`loopback_env`, also used for `ray start` in the README):
usage statistics off (RAY_USAGE_STATS_ENABLED=0); the report Ray sends even then, saying they are off,
pointed at a closed loopback port (RAY_USAGE_STATS_REPORT_URL); and a HOME holding
``ray_bootstrap_config.yaml`` naming the provider "local", without which Ray's dashboard asks the
cloud metadata servers (169.254.169.254, metadata.google.internal) which cloud it runs on. This process,
the driver, keeps usage statistics off while it is connected (`USAGE_STATS_OFF`): Ray reads the setting
where a library records usage, and Ray Data's driver side would otherwise start a usage actor and a
thread that polls Prometheus every 10 s for each job's usage report.

Ray turns the node address 127.0.0.1 (and "localhost") into the machine's interface address, found by
a UDP connect towards 8.8.8.8, unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (single-node mode). A local
start sets it for every Ray process, and this process keeps it off while it starts or joins Ray on a
loopback address. A multi-node cluster on one machine (the tests, the README's try-out) cannot use
single-node mode, so its nodes take other loopback addresses, which Ray leaves alone: 127.0.0.2, ...
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlmops._optional import require
from vlmops.errors import VlmopsError

ADDRESS_ENV = "VLMOPS_RAY_ADDRESS"
HOME_ENV = "VLMOPS_RAY_HOME"
LOCAL = "local"
CLOSED_LOOPBACK_URL = "http://127.0.0.1:9/"  # the discard port: nothing listens, nothing leaves
BOOTSTRAP_CONFIG = "provider:\n  type: local\n"
# A private Ray has no dashboard and ends with its block, so nothing can read its metrics or its task
# events; recording and shipping them cost the jobs CPU (the raylet, GCS, the dashboard agent, the
# driver). Both are Ray's own settings: on the emoji set with 2 actors, the CPU outside the actors fell
# from 1.35 to 1.07 s a job (medians of 9 interleaved jobs each; bench/RESULTS.md, issue 18).
UNOBSERVED_ENV = {"RAY_enable_metrics_collection": "0", "RAY_task_events_report_interval_ms": "0"}
# Usage statistics off, for the Ray processes and for the driver: Ray reads the setting in the driver
# too, each time a library records usage, from its environment (or ~/.ray/config.json); set only while
# `ray.init` ran, it was on again for every job.
USAGE_STATS_OFF = {"RAY_USAGE_STATS_ENABLED": "0"}


class RayClusterError(VlmopsError):
    """Ray could not be started or joined."""


@dataclass(frozen=True)
class RayCluster:
    """The Ray this process is connected to: its address, CPUs, nodes, and whether we started it."""

    address: str
    cpus: float
    nodes: int
    started_here: bool

    def describe(self) -> str:
        """One line for the console."""
        how = "private local Ray on 127.0.0.1" if self.started_here else f"Ray cluster at {self.address}"
        return f"{how}: {self.nodes} node(s), {self.cpus:g} CPUs"


def loopback_env(home: Path) -> dict[str, str]:
    """Environment variables for Ray processes that keep them off the network (writes `home`)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text(BOOTSTRAP_CONFIG)
    return {
        "HOME": str(home),
        **USAGE_STATS_OFF,
        "RAY_USAGE_STATS_REPORT_URL": CLOSED_LOOPBACK_URL,
    }


def ray_home() -> Path:
    """The private HOME of loopback nodes (`vlmops.scale.loopback_node`): VLMOPS_RAY_HOME or a /tmp folder."""
    return Path(os.environ.get(HOME_ENV) or Path(tempfile.gettempdir()) / f"vlmops-ray-home-{os.getuid()}")


def resolve_address(address: str | None) -> str:
    """The address to use: the given one, else VLMOPS_RAY_ADDRESS, else ``local``."""
    return (address or os.environ.get(ADDRESS_ENV) or LOCAL).strip()


def is_loopback_address(address: str) -> bool:
    """True when a Ray address (``host:port``, ``ray://host:port``) names this machine's loopback."""
    host = _host(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    """os.environ with `extra` set while the block runs (what processes spawned meanwhile inherit)."""
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _single_node_mode(ray) -> Iterator[None]:
    """Ray's single-node mode in this process for the block: 127.0.0.1 stays 127.0.0.1, no 8.8.8.8."""
    constants = ray._private.ray_constants
    saved = constants.ENABLE_RAY_CLUSTER  # read when ray is first imported: set it as well
    constants.ENABLE_RAY_CLUSTER = False
    try:
        with _environ({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}):
            yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved


def _host(address: str) -> str:
    return address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")


@contextlib.contextmanager
def connect(
    address: str | None = None, num_cpus: int | None = None, preload: bool = False
) -> Iterator[RayCluster]:
    """Connect this process to Ray for the block: start a private local one or join `address`.

    `address`: ``local`` (the default, also when VLMOPS_RAY_ADDRESS is unset) or ``auto`` or
    ``host:port``. A Ray already initialised in this process is reused and left running. `preload`: the
    workers of a private local Ray that are meant for an actor pool import its modules when they start
    (`scale.warm`).
    """
    address = resolve_address(address)
    ray = require("ray", extra="ray")
    with _environ(USAGE_STATS_OFF):
        if ray.is_initialized():
            yield _describe(ray, address, started_here=False)
        elif address == LOCAL:
            with _start_local(ray, num_cpus, preload) as cluster:
                yield cluster
        else:
            with _join(ray, address) as cluster:
                yield cluster


@contextlib.contextmanager
def _join(ray, address: str) -> Iterator[RayCluster]:
    """Join the running cluster at `address` (``auto``, ``host:port``) for the block, then disconnect."""
    _check_reachable(address)
    loopback = is_loopback_address(address)
    token = ray_home() / ".ray" / "auth_token"  # written by a loopback node's head
    extra = {"RAY_AUTH_TOKEN_PATH": str(token)} if loopback and token.exists() else {}
    extra = {k: v for k, v in extra.items() if k not in os.environ and "RAY_AUTH_TOKEN" not in os.environ}
    with _single_node_mode(ray) if loopback else contextlib.nullcontext(), _environ(extra):
        try:
            ray.init(
                address=address,
                _node_ip_address=_host(address).replace("localhost", "127.0.0.1") if loopback else None,
                configure_logging=False,
                log_to_driver=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayClusterError(
                f"cannot join the Ray cluster at {address!r} ({str(exc).splitlines()[0]}); start one with "
                "`ray start --head` (README: Running on a cluster), or pass --ray local for a private one"
            ) from None
        try:
            yield _describe(ray, address, started_here=False)
        finally:
            ray.shutdown()


@contextlib.contextmanager
def _start_local(ray, num_cpus: int | None, preload: bool = False) -> Iterator[RayCluster]:
    """A private single-node Ray on 127.0.0.1 in a fresh temp folder, shut down and removed afterwards."""
    from vlmops.config import get_settings
    from vlmops.scale.warm import preload_env

    root = Path(tempfile.mkdtemp(prefix="vlmops-ray-", dir="/tmp"))  # short: Ray's socket paths
    env = loopback_env(root / "home")
    env["VLMOPS_HOME"] = str(get_settings().home)  # workers find the data where this process does
    env.update(preload_env() if preload else {})  # read by the raylet: its pool workers import at start
    env.update(UNOBSERVED_ENV)
    try:
        with _single_node_mode(ray):
            with _environ(env):  # what the processes Ray spawns now inherit
                ray.init(
                    _node_ip_address="127.0.0.1",
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    _temp_dir=str(root / "ray"),
                    configure_logging=False,
                    log_to_driver=False,
                )
            try:
                yield _describe(ray, "local", started_here=True)
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after Ray's minute of retries, when nothing answers at ``host:port``."""
    if "://" in address or ":" not in address:
        return  # auto, ray://...: Ray resolves these itself
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise RayClusterError(
            f"cannot join the Ray cluster at {address!r} (nothing answers there: {exc}); start one with "
            "`ray start --head` (README: Running on a cluster), or pass --ray local for a private one"
        ) from None


def _describe(ray, address: str, started_here: bool) -> RayCluster:
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    return RayCluster(address=address, cpus=cpus, nodes=len(nodes), started_here=started_here)
