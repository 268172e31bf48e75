"""The same store on PostgreSQL: log, feedback, keys, registry, alerts, monitor runs, and the gateway."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from postgres_server import postgres
from serve_helpers import b64, png_bytes
from vlmops.monitor.alerts import AlertConfig, AlertRule, AlertStore, evaluate_rules
from vlmops.monitor.run import MonitorReport, monitor_history, store_run
from vlmops.registry.store import Registry
from vlmops.serve.app import create_app
from vlmops.serve.keys import CachedVerifier, KeyStore
from vlmops.serve.service import Gateway, ServeConfig
from vlmops.store.log import PredictionLog, PredictionRow, embedding_of


@pytest.fixture(scope="module")
def url():
    with postgres() as server:
        yield server


def _write(url: str, prefix: str, n: int) -> None:
    log = PredictionLog(url)
    for i in range(n):
        log.write([PredictionRow(f"{prefix}{i}", "classify", "m", [f"h{i}"], 1.0, embedding=np.ones((1, 3)))])


def test_log_keys_registry_and_alerts_on_postgres(url):
    log = PredictionLog(url)
    emb = np.arange(8, dtype=np.float32).reshape(2, 4)
    log.write([PredictionRow("pg-1", "embeddings", "m-1", ["a", "b"], 2.5, embedding=emb, texts=["hi"])])
    (row,) = [r for r in log.requests() if r.request_id == "pg-1"]
    assert np.array_equal(embedding_of(row), emb) and row.latency_ms == 2.5
    assert log.add_feedback("pg-1", False, "cat", None) >= 1 and log.feedback()[-1].label == "cat"
    keys = KeyStore(url)
    token = keys.create("pg")
    assert keys.verify(token).name == "pg"
    keys.revoke(token.split("_")[1])
    assert keys.verify(token) is None
    registry = Registry(url)
    registry.register("v1", "u", "a")
    registry.register("v2", "u", "b", parent="v1")
    registry.promote("v1")
    registry.promote("v2")
    assert registry.rollback()["to_version"] == "v1"
    fired = evaluate_rules(AlertConfig((AlertRule("r", "x", ">", 1),)), {"x": 2.0}, 5, AlertStore(url))
    assert fired and AlertStore(url).list()[-1]["rule"] == "r"
    store_run(url, MonitorReport("m-1", 7, {"drift.mmd.p_value": 0.5}, {}, (1.0, 2.0)))
    assert monitor_history(url)[-1]["metrics"] == {"drift.mmd.p_value": 0.5}


def test_concurrent_writer_processes_on_postgres(url):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write, args=(url, f"w{k}-", 40)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert sum(rid.startswith("w") for rid in PredictionLog(url).request_ids()) == 120


def test_gateway_logs_to_postgres(url, fake_model):
    keys = KeyStore(url)
    token = keys.create("gateway")
    gateway = Gateway(fake_model(), ServeConfig(store=url), PredictionLog(url), {})
    with TestClient(create_app(gateway, CachedVerifier(keys))) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        r = client.post("/v1/classify", json={"image": b64(png_bytes()), "labels": ["a", "b"]})
        assert r.status_code == 200
        rid = r.json()["request_id"]
        assert client.post("/v1/feedback", json={"request_id": rid, "accepted": True}).status_code == 200
    assert rid in PredictionLog(url).request_ids()


def test_embed_cli_caches_in_postgres(url, monkeypatch, fake_model, png_writer, tmp_path):
    """`vlmops embed --store postgresql://...`: the second run reads every vector back from Postgres."""
    import json

    import typer
    from typer.testing import CliRunner

    import vlmops.cli.embed as cli_embed
    from vlmops.store.cache import open_cache

    model = fake_model(version="pg-embed")
    monkeypatch.setattr(cli_embed, "load_model", lambda uri: model)
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("embed")(cli_embed.embed)
    for i, name in enumerate(["cat/a.png", "cat/b.png", "fox/c.png"]):
        png_writer(tmp_path / "data" / name, seed=i)
    args = ["embed", "--model", "fake:x", "--no-progress", "--data", str(tmp_path / "data"), "--store", url]
    report = tmp_path / "r.json"
    for misses in (3, 0):
        result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "e.parquet"), "--json", str(report)])
        assert result.exit_code == 0, result.output
        assert json.loads(report.read_text())["images"]["misses"] == misses
    assert model.images_embedded == 3
    with open_cache(url) as cache:
        assert cache.count("pg-embed") == 3 + 2  # three images and two distinct class names
        cache.put_generations("g", {"k1": '{"text": "a"}'})
        cache.put_generations("g", {"k1": '{"text": "b"}', "k2": "{}"})  # the first answer stays
        assert cache.get_generations("g", ["k1", "k2", "k3"]) == {"k1": '{"text": "a"}', "k2": "{}"}


def _replicas(url: str, fake_model, n: int = 2) -> list[tuple]:
    """`n` (app, key verifier) on one Postgres store, as replicas on different machines would be (each
    its own process state: buckets, key cache); the key cache keeps its default time to live."""
    out = []
    for _ in range(n):
        verifier = CachedVerifier(KeyStore(url))
        gateway = Gateway(fake_model(), ServeConfig(store=url), PredictionLog(url), {})
        out.append((create_app(gateway, verifier), verifier))
    return out


def test_replicas_share_a_keys_rate_through_postgres(url, fake_model):
    """Two replicas hammered in turn with one key (2/s, burst 4): together they admit what one bucket
    allows (burst + rate x elapsed), not twice as much as each process's own bucket would."""
    token = KeyStore(url).create("shared-rate", rate_per_s=2.0, burst=4)
    body = {"image": b64(png_bytes()), "labels": ["a", "b"]}
    (first_app, _), (second_app, _) = _replicas(url, fake_model)
    with TestClient(first_app) as first, TestClient(second_app) as second:
        clients = (first, second)
        for client in clients:
            client.headers["Authorization"] = f"Bearer {token}"
        start = time.monotonic()
        codes = [clients[i % 2].post("/v1/classify", json=body).status_code for i in range(24)]
        elapsed = time.monotonic() - start
    admitted = codes.count(200)
    assert set(codes) <= {200, 429}
    assert 4 <= admitted <= 4 + 2.0 * elapsed + 1, (admitted, elapsed, codes)
    assert 200 in codes[0::2] and 200 in codes[1::2]  # both replicas served the key


def test_a_key_revoked_through_one_replica_is_refused_by_the_other(url, fake_model):
    """Revocation reaches every replica through the store within the key cache's time to live (2 s)."""
    store = KeyStore(url)
    token = store.create("revoked-everywhere")
    body = {"image": b64(png_bytes()), "labels": ["a", "b"]}
    (first_app, first_keys), (second_app, _) = _replicas(url, fake_model)
    with TestClient(first_app) as first, TestClient(second_app) as second:
        for client in (first, second):
            client.headers["Authorization"] = f"Bearer {token}"
            assert client.post("/v1/classify", json=body).status_code == 200
        first_keys.store.revoke(token.split("_")[1])  # through the first replica's key store
        revoked = time.monotonic()
        while second.post("/v1/classify", json=body).status_code == 200:
            assert time.monotonic() - revoked < 2.5, "the other replica still admits the revoked key"
            time.sleep(0.05)
        assert second.post("/v1/classify", json=body).json()["error"]["code"] == "invalid_key"


def _take_many(url: str, barrier, granted) -> None:
    from vlmops.store.rate_buckets import DatabaseTokenBuckets

    buckets = DatabaseTokenBuckets(url)
    barrier.wait(timeout=60)
    start = time.time()
    got = sum(buckets.take("requests:race", rate=1.0, burst=10) == 0.0 for _ in range(50))
    granted.put((got, start, time.time()))
    buckets.close()


def test_database_buckets_stay_within_budget_under_concurrent_processes(url):
    """Four processes take from one bucket (1/s, burst 10) at once: the row update is atomic, so all
    together get the burst plus what the elapsed time refilled, never a burst each."""
    ctx = multiprocessing.get_context("spawn")
    barrier, granted = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_take_many, args=(url, barrier, granted)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    results = [granted.get(timeout=5) for _ in procs]
    total = sum(r[0] for r in results)
    elapsed = max(r[2] for r in results) - min(r[1] for r in results)  # the race, from the barrier
    assert 10 <= total <= 10 + 1.0 * elapsed + 1, (total, elapsed)


def test_an_unreachable_limits_database_is_a_503_not_a_500(url, fake_model):
    """When the database holding the shared buckets cannot be reached, the replica answers 503 with
    Retry-After (as when overloaded), not an internal error."""
    from vlmops.store.log import make_engine

    token = KeyStore(url).create("limits-down")
    gateway = Gateway(fake_model(), ServeConfig(store=url), PredictionLog(url), {})
    gateway.shared_buckets.engine = make_engine("postgresql://vlmops@127.0.0.1:1/none")  # nothing listens
    with TestClient(create_app(gateway, CachedVerifier(KeyStore(url)))) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        r = client.post("/v1/classify", json={"image": b64(png_bytes()), "labels": ["a", "b"]})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert "rate limits' database is unavailable" in r.json()["error"]["message"]
