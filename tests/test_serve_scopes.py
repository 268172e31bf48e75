"""Key scopes and feedback bound to the key that made the request (no poisoning another key's labels)."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from serve_helpers import b64, make_app, png_bytes
from vlmops.cli import app as cli
from vlmops.serve.keys import LEGACY_SCOPES, ApiKeyError, KeyStore
from vlmops.store.log import PredictionLog


@pytest.fixture
def served(tmp_path, fake_model):
    app, _, url = make_app(tmp_path, fake_model())
    with TestClient(app) as client:
        yield client, url, KeyStore(url)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def classify(client, key: str) -> str:
    r = client.post(
        "/v1/classify", json={"image": b64(png_bytes()), "labels": ["a", "b"]}, headers=bearer(key)
    )
    assert r.status_code == 200, r.text
    return r.json()["request_id"]


def test_feedback_only_from_the_key_or_tenant_that_made_the_request(served):
    client, url, keys = served
    a, b = keys.create("a"), keys.create("b")
    rotated = [keys.create("shop", tenant="shop"), keys.create("shop-new", tenant="shop")]
    request_a, request_shop = classify(client, a), classify(client, rotated[0])
    poison = {"request_id": request_a, "accepted": False, "label": "poisoned label"}
    r = client.post("/v1/feedback", json=poison, headers=bearer(b))
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_request"  # as for an unknown id
    assert PredictionLog(url).feedback() == []
    ok = client.post("/v1/feedback", json={"request_id": request_a, "accepted": True}, headers=bearer(a))
    assert ok.status_code == 200, ok.text
    same_tenant = {"request_id": request_shop, "accepted": False, "label": "b"}
    assert client.post("/v1/feedback", json=same_tenant, headers=bearer(rotated[1])).status_code == 200
    assert client.post("/v1/feedback", json=same_tenant, headers=bearer(a)).status_code == 404
    rows = PredictionLog(url).feedback()
    assert [(f.request_id, f.label) for f in rows] == [(request_a, None), (request_shop, "b")]


def test_scopes_gate_the_endpoints(served):
    client, _, keys = served
    predict_only, feedback_only = keys.create("p", scopes="predict"), keys.create("f", scopes=["feedback"])
    default = keys.create("d")
    assert keys.verify(default).scopes == ("predict", "feedback", "chat")  # the default: a client app
    request_id = classify(client, predict_only)
    r = client.post(
        "/v1/feedback", json={"request_id": request_id, "accepted": True}, headers=bearer(predict_only)
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "missing_scope"
    assert "feedback" in r.json()["error"]["message"] and "--scopes" in r.json()["error"]["message"]
    r = client.post(
        "/v1/classify", json={"image": b64(png_bytes()), "labels": ["a", "b"]}, headers=bearer(feedback_only)
    )
    assert r.status_code == 403
    for path in ("/metrics", "/dashboard"):
        assert client.get(path, headers=bearer(default)).status_code == 403, path
    admin = keys.create("ops", scopes="admin")
    assert client.get("/metrics", headers=bearer(admin)).status_code == 200
    assert client.get("/v1/models", headers=bearer(predict_only)).status_code == 200


def test_bad_scopes_are_refused_by_name(tmp_path):
    keys = KeyStore(str(tmp_path / "s.sqlite"))
    with pytest.raises(ApiKeyError, match="predict,feedback,admin"):
        keys.create("x", scopes="predict,root")
    result = CliRunner().invoke(
        cli, ["keys", "create", "--name", "x", "--scopes", "write", "--store", str(tmp_path / "s.sqlite")]
    )
    assert result.exit_code == 2 and "write" in result.output


def test_keys_cli_creates_and_lists_scopes_and_tenant(tmp_path):
    store, out = str(tmp_path / "s.sqlite"), tmp_path / "k.json"
    args = [
        "keys",
        "create",
        "--name",
        "ops",
        "--scopes",
        "admin,predict",
        "--tenant",
        "acme",
        "--store",
        store,
    ]
    result = CliRunner().invoke(cli, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["scopes"] == ["predict", "admin"]
    listed = tmp_path / "l.json"
    result = CliRunner().invoke(cli, ["keys", "list", "--store", store, "--json", str(listed)])
    assert "predict,admin" in result.output and "acme" in result.output
    (row,) = json.loads(listed.read_text())
    assert row["scopes"] == ["predict", "admin"] and row["tenant"] == "acme"


def test_a_key_store_from_before_scopes_migrates_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE api_keys (key_id VARCHAR(32) PRIMARY KEY, name VARCHAR(128) NOT NULL, "
        "secret_sha256 VARCHAR(64) NOT NULL, created_at FLOAT NOT NULL, revoked_at FLOAT, "
        "rate_per_s FLOAT NOT NULL, burst INTEGER NOT NULL)"
    )
    import hashlib

    secret = "s" * 43
    db.execute(
        "INSERT INTO api_keys VALUES (?, ?, ?, ?, NULL, 50, 100)",
        ("0123456789ab", "legacy", hashlib.sha256(secret.encode()).hexdigest(), time.time()),
    )
    db.commit()
    db.close()
    PredictionLog(str(path))  # the server opens the log first: it must not break the key table either
    keys = KeyStore(str(path))
    key = keys.verify(f"vlm_0123456789ab_{secret}")
    assert key is not None and key.scopes == LEGACY_SCOPES and key.tenant is None  # could do all before
    stored = sqlite3.connect(path).execute("SELECT scopes FROM api_keys").fetchone()[0]
    assert stored == "predict,feedback,admin"
    assert keys.verify(keys.create("new")).scopes == ("predict", "feedback", "chat")


def test_retrain_takes_labels_only_from_keys_allowed_to_label(tmp_path, fake_model):
    from eval_data import write_manifest
    from vlmops.data.manifest import resolve_data
    from vlmops.evaluate.task import build_task
    from vlmops.registry.retrain import verified_examples
    from vlmops.serve.archive import ImageArchive
    from vlmops.serve.resources import LabelSet

    manifest = write_manifest(tmp_path / "shapes", per_class=2)
    names = tuple(build_task(resolve_data(str(manifest)), "other", "all", None).class_names)
    archive = tmp_path / "archive"
    sets = {"shapes": LabelSet("shapes", names, "a photo of {}.")}
    app, _, url = make_app(tmp_path, fake_model(), label_sets_obj=sets, keep_images=str(archive))
    keys = KeyStore(url)
    labeller, leaver = keys.create("annotators"), keys.create("contractor")
    with TestClient(app) as client:
        for key, seed in ((labeller, 1), (leaver, 2)):
            image = b64(png_bytes((seed * 40, 10, 10)))
            r = client.post("/v1/classify", json={"image": image, "label_set": "shapes"}, headers=bearer(key))
            fb = {"request_id": r.json()["request_id"], "accepted": False, "label": names[seed]}
            assert client.post("/v1/feedback", json=fb, headers=bearer(key)).status_code == 200
    keys.revoke(keys.verify(leaver).key_id)  # its labels stop counting, as if it never had the scope
    log, images = PredictionLog(url), ImageArchive(archive)
    examples, counts = verified_examples(log, images, names, keys.labellers())
    assert counts == {"key_may_not_label": 1, "used": 1} and [e.label for e in examples] == [names[1]]
    assert verified_examples(log, images, names)[1] == {"used": 2}  # --feedback-from any
    keys.revoke(keys.verify(labeller).key_id)
    args = ["--archive", str(archive), "--out", str(tmp_path / "m"), "--data", str(manifest), "--store", url]
    result = CliRunner().invoke(cli, ["retrain", *args, "--replay", "0", "--gate-split", ""])
    assert result.exit_code == 2 and "key_may_not_label" in result.output, result.output
