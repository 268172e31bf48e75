"""`vlmops serve --ray local --ray-replicas 2 --store postgresql://...`: the gateway as a Ray Serve
application of two replicas on loopback, checked with the same auth, scope and durability checks as the
single-process server (imported from test_serve_scopes / test_serve_reliability, not copied).

One server for the module (Ray is slow to start on a small machine): a throwaway Postgres holds the log,
keys and rate-limit buckets the replicas share; each answer names its replica (X-Vlmops-Replica), so
the tests see both serve. Every Ray process runs under tests/ray_guard.py (socket audit hook and, where
it may trace, strace): any non-loopback destination fails the module. The last test kills the server
with SIGKILL mid-load (one replica first, which Serve replaces, then every process) and finds every
acknowledged request in the Postgres log.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import test_serve_scopes as scopes
from postgres_server import fresh_database, postgres, server_bin
from ray_guard import Guard
from serve_helpers import b64, free_port, random_png
from test_serve_scopes import bearer
from vlmops.serve.keys import KeyStore
from vlmops.serve.loadgen import build_request, run_load
from vlmops.store.log import PredictionLog

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(server_bin() is None, reason="PostgreSQL server binaries missing (make setup)"),
]
VLMOPS = shutil.which("vlmops", path=str(Path(sys.executable).parent)) or "vlmops"
REPLICA = "x-vlmops-replica"


class RayServer:
    """The running `vlmops serve --ray` process, its guard, port and store."""

    def __init__(self, guard: Guard, proc, port: int, url: str) -> None:
        self.guard, self.proc, self.port, self.url = guard, proc, port, url
        self.keys = KeyStore(url)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

    def log(self) -> str:
        return (self.guard.tmp / "serve.log").read_text(errors="replace")


def wait_ready(server: RayServer, timeout: float = 300) -> None:
    """Until the CLI says it serves and /readyz answers 200; the log tail on failure."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.proc.poll() is not None:
            break
        if "through Ray Serve" in server.log():
            try:
                if server.client.get("/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(1)
    raise AssertionError(f"the Ray Serve gateway did not start:\n{server.log()[-4000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-ray")
    guard = Guard(tmp)
    (tmp / "vocab.txt").write_text("red\ngreen\nblue\n")
    with postgres() as pg:
        url = fresh_database(pg, "serve_ray")
        port = free_port()
        command = [VLMOPS, "serve", "--ray", "local", "--ray-replicas", "2", "--store", url,
                   "--port", str(port), "--vocabulary", str(tmp / "vocab.txt"),
                   "--label-set", f"colours={tmp / 'vocab.txt'}"]  # fmt: skip
        server = RayServer(guard, guard.start(command, "serve"), port, url)
        try:
            started = time.time()
            wait_ready(server)
            print(f"Ray Serve gateway ready in {time.time() - started:.0f} s")
            yield server
        finally:
            server.client.close()
            guard.stop()
    assert guard.ours() == [], "a Ray process outlived the test"
    assert guard.findings() == [], "a Ray process touched a non-loopback address"
    if guard.use_strace:
        assert guard.loopback_connects() > 0


def test_startup_says_what_it_deployed_and_both_replicas_answer(served):
    log = served.log()
    assert "2 replicas x 1 CPU" in log and "private local Ray on 127.0.0.1" in log, log[-2000:]
    key = served.keys.create("spread", rate_per_s=1000, burst=1000)
    body = {"image": b64(random_png(3)), "labels": ["red", "green", "blue"]}
    replicas, ids = set(), []
    for _ in range(30):
        r = served.client.post("/v1/classify", json=body, headers=bearer(key))
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == r.json()["request_id"]  # one id: the gateway's, not Serve's
        replicas.add(r.headers[REPLICA])
        ids.append(r.json()["request_id"])
    assert len(replicas) == 2, replicas  # both replicas served
    logged = PredictionLog(served.url).request_ids()
    assert set(ids) <= logged  # every answer logged in the shared store, whichever replica answered


def requests_counted(text: str, endpoint: str) -> float:
    """The sum of vlmops_requests_total over its labels for `endpoint`, from a /metrics page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vlmops_requests_total{") and f'endpoint="{endpoint}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_every_replica_whichever_one_answers_the_scrape(served):
    # the replicas share a metrics folder, so /metrics (which Serve's proxy hands to either replica) adds
    # up both; a replica's own registry would show only about half of the requests
    admin = served.keys.create("scraper", rate_per_s=1000, burst=1000, scopes="admin")
    key = served.keys.create("counted", rate_per_s=1000, burst=1000)

    def scrape() -> tuple[float, str]:
        r = served.client.get("/metrics", headers=bearer(admin))
        assert r.status_code == 200, r.text
        return requests_counted(r.text, "/v1/classify"), r.headers[REPLICA]

    before = {scrape()[0] for _ in range(6)}
    assert len(before) == 1, before  # every scrape, on either replica, gives the same total
    body = {"image": b64(random_png(5)), "labels": ["red", "green"]}
    answered_by = set()
    for _ in range(24):
        r = served.client.post("/v1/classify", json=body, headers=bearer(key))
        assert r.status_code == 200, r.text
        answered_by.add(r.headers[REPLICA])
    assert len(answered_by) == 2, answered_by
    scrapes = [scrape() for _ in range(8)]
    assert {total for total, _ in scrapes} == {before.pop() + 24}, scrapes
    assert len({replica for _, replica in scrapes}) == 2, scrapes  # both replicas rendered the page


def test_missing_and_unknown_keys_are_refused(served):
    body = {"image": b64(random_png(4)), "labels": ["red", "green"]}
    r = served.client.post("/v1/classify", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_key"
    assert r.headers["x-request-id"] == r.json()["request_id"]
    r = served.client.post("/v1/classify", json=body, headers=bearer("vlm_nope_" + "x" * 30))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"
    assert served.client.get("/metrics").status_code == 401
    assert served.client.get("/healthz").status_code == 200


def test_feedback_is_bound_to_the_key_and_scopes_gate_the_endpoints(served):
    # the single-process tests themselves, run against the replicas through Serve's proxy
    scopes.test_feedback_only_from_the_key_or_tenant_that_made_the_request(
        (served.client, served.url, served.keys)
    )
    scopes.test_scopes_gate_the_endpoints((served.client, served.url, served.keys))


def test_a_keys_rate_limit_is_shared_by_the_replicas(served):
    # burst 6, next to no refill: 6 answers in all, however the requests spread over the two replicas
    slow = served.keys.create("slow", rate_per_s=0.001, burst=6)
    body = {"image": b64(random_png(5)), "labels": ["red", "green"]}
    answers = [served.client.post("/v1/classify", json=body, headers=bearer(slow)) for _ in range(16)]
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 6 and codes.count(429) == 10, codes
    assert len({r.headers[REPLICA] for r in answers}) == 2  # both replicas were asked
    assert int(answers[-1].headers["retry-after"]) >= 1


def replica_pids(guard: Guard) -> list[int]:
    """The processes of the gateway's Serve replicas (Ray names them in their command line)."""
    pids = []
    for pid in guard.ours():
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ServeReplica:vlmops:gateway"):
                pids.append(pid)
        except OSError:
            pass
    return pids


def test_a_replica_killed_mid_load_loses_no_acknowledged_request_and_is_replaced(served):
    key = served.keys.create("replica-load", rate_per_s=100_000, burst=100_000)
    body = {"image": b64(random_png(2)), "labels": ["red", "green", "blue"]}
    request = build_request("127.0.0.1", served.port, "/v1/classify", body, bearer(key))
    victims = replica_pids(served.guard)
    assert len(victims) == 2, victims
    killer = threading.Timer(3.0, os.kill, (victims[0], signal.SIGKILL))
    killer.start()
    result = asyncio.run(run_load("127.0.0.1", served.port, request, 8, 100_000, 8.0, collect_ids=True))
    killer.join()
    print(f"one replica killed mid-load: {result.summary()}")
    assert len(result.request_ids) > 20, result.summary()  # the other replica went on answering
    missing = set(result.request_ids) - PredictionLog(served.url).request_ids()
    assert not missing, f"{len(missing)} of {len(result.request_ids)} acknowledged requests are not logged"
    deadline, tags = time.time() + 180, set()
    while len(tags) < 2 and time.time() < deadline:  # Serve starts a new replica in the dead one's place
        alive = replica_pids(served.guard)
        if len(alive) < 2 or victims[0] in alive:
            time.sleep(1)
            continue
        r = served.client.post("/v1/classify", json=body, headers=bearer(key))
        if r.status_code == 200:
            tags.add(r.headers[REPLICA])
    assert len(tags) == 2, tags  # the survivor and the new replica both answer
    assert not any(tag.endswith(f"-{victims[0]}") for tag in tags), tags


def test_kill_9_loses_no_acknowledged_request(served):
    key = served.keys.create("load", rate_per_s=100_000, burst=100_000)
    body = {"image": b64(random_png(1)), "labels": ["red", "green", "blue"]}
    request = build_request("127.0.0.1", served.port, "/v1/classify", body, bearer(key))

    def kill_soon() -> None:
        time.sleep(6.0)
        for pid in served.guard.ours():  # the CLI, Ray's GCS and raylet, the proxy, both replicas
            os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    result = asyncio.run(run_load("127.0.0.1", served.port, request, 8, 100_000, 15.0, collect_ids=True))
    killer.join()
    served.guard.procs[0].wait(30)
    print(f"kill -9 mid-load: {result.summary()}")
    assert len(result.request_ids) > 20 and result.errors > 0, result.summary()
    missing = set(result.request_ids) - PredictionLog(served.url).request_ids()
    assert not missing, f"{len(missing)} of {len(result.request_ids)} acknowledged requests are not logged"
