"""The same store on PostgreSQL: log, feedback, keys, registry, alerts, monitor runs, and the gateway."""

from __future__ import annotations

import multiprocessing

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
