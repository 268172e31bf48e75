"""A real two-node Ray cluster on this machine: `ray start --head` and `ray start --address` as separate
processes on loopback (through `python -m vlmops.scale.loopback_node`, Ray's own CLI with the node's
processes kept off the network); embed, the quick eval, a small audit and a gallery index through
`--ray ADDRESS` equal the local runs (embeddings <= 1e-6, the same metrics, the same findings), and
no process touches the network.

The nodes take the loopback addresses 127.0.0.2 and 127.0.0.3: Ray rewrites 127.0.0.1 into the
machine's interface address on a multi-node cluster (see vlmops.scale.cluster). Each node has one CPU,
so the two single-CPU actors of each job run one per node. Both nodes are stopped at the end by pid
(`ray stop` would also stop other Ray instances on the machine). Ray is the `ray` extra that
`make test` installs, so CI runs this.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eval_data import write_manifest
from ray_guard import Guard

pytestmark = pytest.mark.ray
BIN = Path(sys.executable).parent
VLMOPS = shutil.which("vlmops", path=str(BIN)) or "vlmops"
RAY_START = [sys.executable, "-m", "vlmops.scale.loopback_node", "start"]
HEAD, WORKER = "127.0.0.2", "127.0.0.3"


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def node_ports(host: str) -> list[str]:
    """Explicit free ports for everything a node listens on (Ray's fixed defaults may be taken)."""
    flags = [
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
        *(["--dashboard-port"] if host == HEAD else []),
    ]
    return [item for flag in flags for item in (flag, str(free_port(host)))]


def wait_started(guard: Guard, name: str, timeout: float = 240) -> None:
    log, deadline = guard.tmp / f"{name}.log", time.time() + timeout
    while time.time() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Ray runtime started" in text:
            return
        if any(p.poll() is not None for p in guard.procs):
            break
        time.sleep(1)
    raise AssertionError(f"{name} did not start:\n{log.read_text(errors='replace')[-3000:]}")


def manifest_with_splits(root: Path) -> Path:
    """The shapes manifest with a caption per record and alternating train/test splits."""
    path = write_manifest(root, per_class=8)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["texts"] = [row["label"].split("/")[-1]]
        row["split"] = "train" if i % 2 else "test"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(guard, address) of a running head + worker; both stopped, and the network checked, at the end."""
    guard = Guard(tmp_path_factory.mktemp("ray-cluster"))
    temp = Path(tempfile.mkdtemp(prefix="vlmops-ray-", dir="/tmp"))  # short: Ray's socket paths
    port = free_port(HEAD)
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
    try:
        guard.start(
            [*RAY_START, "--head", *common, "--node-ip-address", HEAD, "--port", str(port),
             "--ray-client-server-port", str(free_port(HEAD)), "--include-dashboard", "false",
             "--temp-dir", str(temp), *node_ports(HEAD)],
            "head",
        )  # fmt: skip
        wait_started(guard, "head")
        guard.start(
            [*RAY_START, *common, "--address", f"{HEAD}:{port}", "--node-ip-address", WORKER,
             *node_ports(WORKER)],
            "worker",
        )  # fmt: skip
        wait_started(guard, "worker")
        yield guard, f"{HEAD}:{port}"
    finally:
        guard.stop()
        shutil.rmtree(temp, ignore_errors=True)
    assert guard.ours() == [], "a Ray process outlived the test"


def vlmops(guard: Guard, name: str, *args: str) -> dict:
    """Run one vlmops command under the guard; its --json output."""
    out = guard.tmp / f"{name}.json"
    result = guard.run([VLMOPS, *args, "--json", str(out)], name)
    assert result.returncode == 0, result.stderr[-4000:]
    if "--ray" in args:
        assert "2 node(s), 2 CPUs" in result.stderr, result.stderr[-2000:]
    return json.loads(out.read_text())


def test_two_node_cluster_gives_the_local_results(cluster) -> None:
    guard, address = cluster
    manifest = str(manifest_with_splits(guard.tmp / "shapes"))
    ray = ["--ray", address, "--ray-actors", "2", "--no-progress"]
    model = ["-m", "builtin:emoji-lit"]

    local = vlmops(guard, "embed-local", "embed", *model, "-d", manifest, "-o", "local.parquet",
                   "--store", "local.sqlite", "--no-progress")  # fmt: skip
    remote = vlmops(guard, "embed-ray", "embed", *model, "-d", manifest, "-o", "ray.parquet",
                    "--store", "ray-embed.sqlite", *ray)  # fmt: skip
    assert remote["images"]["misses"] == local["images"]["misses"] > 0  # all embedded on the cluster
    a, b = (
        np.stack(pd.read_parquet(guard.tmp / f)["image_embedding"]) for f in ("local.parquet", "ray.parquet")
    )
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-6

    quick = ["eval", *model, "-d", manifest, "--suite", "quick"]
    eval_local = vlmops(guard, "eval-local", *quick, "--store", "local.sqlite", "--no-progress")
    eval_ray = vlmops(guard, "eval-ray", *quick, "--store", "ray-eval.sqlite", *ray)
    assert eval_ray["headline"] == eval_local["headline"]
    assert eval_ray["accuracy"] == eval_local["accuracy"]

    checks = ["audit", *model, "-d", manifest, "--checks", "duplicates,labels,alignment,leakage"]
    audit_local = vlmops(guard, "audit-local", *checks, "--store", "local.sqlite", "--no-progress")
    audit_ray = vlmops(guard, "audit-ray", *checks, "--store", "ray-audit.sqlite", *ray)
    assert audit_ray["metrics"] == audit_local["metrics"]
    for name, check in audit_local["checks"].items():
        assert "skipped" not in check, (name, check)
        assert audit_ray["checks"][name]["findings"] == check["findings"], name

    index = ["index", "build", *model, "-d", manifest]
    vlmops(guard, "index-ray", *index, "-o", "gallery-ray", "--store", "ray-index.sqlite", *ray)
    vlmops(guard, "index-local", *index, "-o", "gallery-local", "--store", "local.sqlite", "--no-progress")
    a, b = (np.load(guard.tmp / g / "embeddings.npy") for g in ("gallery-local", "gallery-ray"))
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-6

    assert guard.findings() == [], "a Ray process touched a non-loopback address"
    if guard.use_strace:
        assert guard.loopback_connects() > 0
