"""Canary and shadow rollout: traffic split by request id, shadow logged but never returned, and an
automatic end of the canary when the registry's alias moves (a rollback by the monitor or by hand)."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from serve_helpers import b64, make_app, png_bytes
from vlmops.registry.store import Registry
from vlmops.serve.resources import LabelSet
from vlmops.serve.service import Gateway, ServeConfig
from vlmops.store.log import PredictionLog

BODY = {"image": b64(png_bytes()), "labels": ["a", "b", "c"]}


def with_variant(tmp_path, fake_model, role, **config):
    app, key, url = make_app(tmp_path, fake_model(version="v1"), **config)
    gateway = app.state.gateway
    sets = {"colours": LabelSet("colours", ("red", "green", "blue"), "a {} image")}
    variant = Gateway(fake_model(version="v2"), ServeConfig(store=url, **config), PredictionLog(url), sets)
    gateway.attach(role, variant)
    return app, key, url


def test_canary_answers_its_share_and_is_logged_under_its_version(tmp_path, fake_model):
    app, key, url = with_variant(tmp_path, fake_model, "canary", canary_share=0.3, follow_registry_s=0.2)
    Registry(url).register("v1", "fake:1", "a")
    Registry(url).register("v2", "fake:2", "b")
    Registry(url).set_alias("canary", "v2")
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        answers = [client.post("/v1/classify", json=BODY) for _ in range(200)]
        versions = [r.json()["model_version"] for r in answers]
        assert all(r.headers["x-model-version"] == v for r, v in zip(answers, versions, strict=True))
        share = versions.count("v2") / len(versions)
        assert 0.2 < share < 0.4, share
        metrics = client.get("/metrics").text
        for version in ("v1", "v2"):  # the canary's traffic is counted apart from the champion's
            count = versions.count(version)
            line = f'vlmops_requests_total{{endpoint="/v1/classify",model_version="{version}",status="200"}}'
            assert f"{line} {float(count)}" in metrics
        assert 'vlmops_rollout_share{model_version="v2",role="canary"} 0.3' in metrics
        assert 'vlmops_batch_size_count{kind="image"} 200.0' in metrics  # both models' batches
        logged = {row.request_id: row.model_version for row in PredictionLog(url).requests()}
        assert all(logged[r.json()["request_id"]] == v for r, v in zip(answers, versions, strict=True))
        Registry(url).clear_alias("canary", kind="rollback", reason="canary alert")
        deadline = time.time() + 5  # the follow loop polls every 0.2 s; allow for a busy machine
        while app.state.gateway.variants and time.time() < deadline:
            time.sleep(0.05)
        after = {client.post("/v1/classify", json=BODY).json()["model_version"] for _ in range(40)}
        assert after == {"v1"}
        assert 'vlmops_rollout_share{model_version="v2",role="canary"} 0.0' in client.get("/metrics").text


def test_route_key_is_sticky_and_splits_users_by_share(tmp_path, fake_model):
    app, key, _ = with_variant(tmp_path, fake_model, "canary", canary_share=0.3)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"

        def version(user: str) -> str:
            r = client.post("/v1/classify", json=BODY, headers={"X-Route-Key": user})
            return r.json()["model_version"]

        first = {f"user-{i}": version(f"user-{i}") for i in range(200)}
        again = {user: version(user) for user in list(first)[:50]}
    assert all(first[user] == v for user, v in again.items())  # the same user stays on one side
    share = list(first.values()).count("v2") / len(first)
    assert 0.2 < share < 0.4, share


def test_shadow_sees_every_request_but_never_answers(tmp_path, fake_model):
    app, key, url = with_variant(tmp_path, fake_model, "shadow")
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        ids = [client.post("/v1/classify", json=BODY).json() for _ in range(20)]
        assert {a["model_version"] for a in ids} == {"v1"}
        deadline = time.time() + 5
        while time.time() < deadline:
            rows = PredictionLog(url).requests()
            if sum(r.model_version == "v2" for r in rows) == 20:
                break
            time.sleep(0.05)
    shadow_rows = {r.request_id for r in rows if r.model_version == "v2"}
    assert shadow_rows == {f"{a['request_id']}:shadow" for a in ids}
