"""The /v1 API end to end through FastAPI's TestClient, around a fake model (fast, no real weights)."""

from __future__ import annotations

import io
import json
import sqlite3
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serve_helpers import b64, make_app, png_bytes
from vlmops.serve.keys import KeyStore
from vlmops.serve.resources import Gallery
from vlmops.store.log import PredictionLog, embedding_of


@pytest.fixture
def served(tmp_path, fake_model):
    app, key, url = make_app(tmp_path, fake_model())
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client, url


def test_classify_returns_probabilities_ids_and_logs_before_answering(served):
    client, url = served
    r = client.post(
        "/v1/classify", json={"image": b64(png_bytes()), "labels": ["cat", "dog", "car"], "top_k": 2}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "fake-1" and r.headers["x-model-version"] == "fake-1"
    assert body["request_id"] == r.headers["x-request-id"]
    assert len(body["top_k"]) == 2 and body["label"] == body["top_k"][0]["label"]
    assert body["top_k"][0]["probability"] >= body["top_k"][1]["probability"]
    assert body["prediction_set"] is None and body["calibrated"] is False
    rows = PredictionLog(url).requests()
    assert [r.request_id for r in rows] == [body["request_id"]]
    assert rows[0].endpoint == "classify" and rows[0].confidence == pytest.approx(body["confidence"])
    assert embedding_of(rows[0]).shape == (1, 8)


def test_classify_probabilities_match_a_softmax_of_cosines(served, fake_model):
    client, _ = served
    labels = ["cat", "dog", "car"]
    image = png_bytes((10, 200, 90))
    body = client.post("/v1/classify", json={"image": b64(image), "labels": labels, "top_k": 3}).json()
    model = fake_model()
    emb = model.embed_images([Image.open(io.BytesIO(image)).convert("RGB")])[0]
    text = model.embed_texts([f"a photo of {x}." for x in labels])
    logits = model.logit_scale * text @ emb
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = {row["label"]: row["probability"] for row in body["top_k"]}
    assert [got[x] for x in labels] == pytest.approx(expected.tolist(), abs=1e-5)


def test_named_label_set_and_unknown_set(served):
    client, _ = served
    r = client.post("/v1/classify", json={"image": b64(png_bytes()), "label_set": "colours"})
    assert r.status_code == 200 and r.json()["label"] in {"red", "green", "blue"}
    r = client.post("/v1/classify", json={"image": b64(png_bytes()), "label_set": "nope"})
    assert r.status_code == 404 and "colours" in r.json()["error"]["message"]


def test_embeddings_images_and_texts_multipart_and_json_agree(served):
    client, _ = served
    image = png_bytes((1, 2, 3))
    as_json = client.post("/v1/embeddings", json={"images": [b64(image)], "texts": ["hello"]}).json()
    as_form = client.post(
        "/v1/embeddings", files=[("images", ("a.png", image, "image/png"))], data={"texts": ["hello"]}
    ).json()
    assert [d["kind"] for d in as_json["data"]] == ["image", "text"]
    for a, b in zip(as_json["data"], as_form["data"], strict=True):
        assert a["embedding"] == pytest.approx(b["embedding"])
    assert np.linalg.norm(as_json["data"][0]["embedding"]) == pytest.approx(1.0, abs=1e-5)


def test_tag_gives_keywords_and_alt_text(served):
    client, _ = served
    body = client.post("/v1/tag", json={"image": b64(png_bytes()), "top_k": 2}).json()
    assert len(body["tags"]) == 2 and body["alt_text"].startswith(f"Image of {body['tags'][0]['tag']}")


def test_search_over_a_gallery(tmp_path, fake_model):
    model = fake_model()
    images = [Image.new("RGB", (4, 4), c) for c in [(250, 0, 0), (0, 250, 0), (0, 0, 250)]]
    gallery = Gallery(
        "fake-1", ["r", "g", "b"], ["red", "green", "blue"], [None] * 3, model.embed_images(images)
    )
    app, key, _ = make_app(tmp_path, model, gallery_obj=gallery)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        hits = client.post("/v1/search", json={"image": b64(png_bytes((0, 250, 0))), "top_k": 2}).json()[
            "hits"
        ]
        assert hits[0]["id"] == "g" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5) and len(hits) == 2
        r = client.post("/v1/search", json={"text": "green", "image": b64(png_bytes())})
        assert r.status_code == 422


def test_feedback_links_to_a_logged_request(served):
    client, url = served
    rid = client.post("/v1/classify", json={"image": b64(png_bytes()), "labels": ["a", "b"]}).json()[
        "request_id"
    ]
    r = client.post("/v1/feedback", json={"request_id": rid, "accepted": False, "label": "b"})
    assert r.status_code == 200 and r.json()["request_id"] == rid
    rows = PredictionLog(url).feedback()
    assert [(f.request_id, f.accepted, f.label, f.source) for f in rows] == [(rid, False, "b", "human")]
    assert client.post("/v1/feedback", json={"request_id": "nope", "accepted": True}).status_code == 404
    assert client.post("/v1/feedback", json={"request_id": rid, "accepted": False}).status_code == 422


def test_texts_are_pii_redacted_in_the_log(served):
    client, url = served
    client.post("/v1/embeddings", json={"texts": ["mail me at jane.doe@example.com"]})
    (row,) = PredictionLog(url).requests()
    assert "jane.doe@example.com" not in row.texts and "[EMAIL]" in row.texts


def test_image_statistics_are_logged_for_the_monitor(served):
    client, url = served
    jpeg = png_bytes(color=(90, 90, 90), size=(40, 20), fmt="JPEG")
    client.post("/v1/classify", json={"image": b64(jpeg), "labels": ["cat", "dog"]})
    client.post("/v1/tag", json={"image": b64(png_bytes(size=(16, 16)))})
    classify, tag = PredictionLog(url).requests()
    (stats,) = json.loads(classify.image_stats)
    assert stats["format"] == "JPEG" and (stats["width"], stats["height"], stats["aspect"]) == (40, 20, 2.0)
    assert stats["bytes"] == len(jpeg) and stats["brightness"] == pytest.approx(90, abs=2)
    assert json.loads(tag.image_stats)[0]["format"] == "PNG"


def test_health_ready_models_metrics(served):
    client, _ = served
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["model_version"] == "fake-1"
    info = client.get("/v1/models").json()
    assert info["label_sets"] == {"colours": 3} and info["vocabulary"] == 4
    client.post("/v1/classify", json={"image": b64(png_bytes()), "labels": ["a", "b"]})
    client.post("/v1/classify", json={"image": "!!", "labels": ["a", "b"]})
    text = client.get("/metrics").text
    assert 'vlmops_requests_total{endpoint="/v1/classify",model_version="fake-1",status="200"} 1.0' in text
    assert 'vlmops_rejected_inputs_total{code="invalid_base64"} 1.0' in text
    assert 'vlmops_batch_size_count{kind="image"} 1.0' in text


def test_auth_missing_wrong_revoked_and_rate_limited(tmp_path, fake_model):
    app, key, url = make_app(tmp_path, fake_model())
    body = {"image": b64(png_bytes()), "labels": ["a", "b"]}
    with TestClient(app) as client:
        assert client.post("/v1/classify", json=body).json()["error"]["code"] == "missing_key"
        r = client.post("/v1/classify", json=body, headers={"Authorization": "Bearer " + key[:-2] + "xx"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"
        assert client.post("/v1/classify", json=body, headers={"X-API-Key": key}).status_code == 200
        assert client.get("/metrics").status_code == 401 and client.get("/healthz").status_code == 200
        slow = KeyStore(url).create("slow", rate_per_s=0.5, burst=2)
        codes = [
            client.post("/v1/classify", json=body, headers={"X-API-Key": slow}).status_code for _ in range(4)
        ]
        assert codes[:2] == [200, 200] and codes[2:] == [429, 429]
        r = client.post("/v1/classify", json=body, headers={"X-API-Key": slow})
        assert int(r.headers["retry-after"]) >= 1
        KeyStore(url).revoke(key.split("_")[1])
        time.sleep(2.1)  # the verifier's memory
        assert client.post("/v1/classify", json=body, headers={"X-API-Key": key}).status_code == 401


def test_insecure_no_auth_serves_without_keys(tmp_path, fake_model):
    app, _, _ = make_app(tmp_path, fake_model(), auth=False)
    with TestClient(app) as client:
        assert (
            client.post("/v1/classify", json={"image": b64(png_bytes()), "labels": ["a", "b"]}).status_code
            == 200
        )


def test_database_failure_withholds_the_answer(served, tmp_path):
    client, _ = served

    conn = sqlite3.connect(tmp_path / "store.sqlite")
    conn.execute("DROP TABLE feedback")
    conn.execute("DROP TABLE requests")
    conn.commit()
    r = client.post("/v1/classify", json={"image": b64(png_bytes()), "labels": ["a", "b"]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "log_unavailable"
