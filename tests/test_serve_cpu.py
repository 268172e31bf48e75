"""What the gateway spends per request: one hash per image, answers that match their schema."""

from __future__ import annotations

import hashlib
import json

from fastapi.testclient import TestClient

from serve_helpers import b64, make_app, png_bytes
from vlmops.serve import schemas


def test_each_image_is_hashed_once_for_the_log_and_the_archive(tmp_path, fake_model, monkeypatch):
    archive = tmp_path / "archive"
    app, key, _ = make_app(tmp_path, fake_model(), keep_images=str(archive))
    image = png_bytes((10, 200, 30), size=(24, 24))
    hashed: list[bytes] = []
    real = hashlib.sha256

    def counting(data=b"", *args, **kwargs):
        if bytes(data) == image:
            hashed.append(bytes(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counting)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        r = client.post("/v1/classify", json={"image": b64(image), "labels": ["a", "b"]})
        assert r.status_code == 200, r.text
        r = client.post("/v1/embeddings", json={"images": [b64(image)], "texts": ["a"]})
        assert r.status_code == 200, r.text
    assert len(hashed) == 2  # one per image sent, though the log and the archive both use it
    digest = real(image).hexdigest()
    assert (archive / digest[:2] / digest).read_bytes() == image


def test_answers_serialised_once_still_match_their_response_models(tmp_path, fake_model):
    from vlmops.serve.resources import Gallery

    model = fake_model()
    vectors = model.embed_texts(["red", "green"])
    gallery = Gallery(model.info.version, ["r", "g"], ["red", None], [None, "green"], vectors)
    app, key, _ = make_app(tmp_path, model, gallery_obj=gallery)
    image = b64(png_bytes())
    calls = [
        ("/v1/classify", {"image": image, "labels": ["a", "b", "c"]}, schemas.ClassifyResponse),
        ("/v1/classify", {"image": image, "label_set": "colours"}, schemas.ClassifyResponse),
        ("/v1/tag", {"image": image, "top_k": 3}, schemas.TagResponse),
        ("/v1/embeddings", {"images": [image], "texts": ["x"]}, schemas.EmbeddingsResponse),
        ("/v1/search", {"text": "red", "top_k": 2}, schemas.SearchResponse),
        ("/v1/search", {"image": image}, schemas.SearchResponse),
    ]
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        for path, body, model_cls in calls:
            r = client.post(path, json=body)
            assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
            parsed = model_cls.model_validate_json(r.content)
            assert parsed.model_dump(mode="json") == r.json()  # no field missing, none extra
            assert r.json()["request_id"] == r.headers["x-request-id"]


def test_hot_routes_skip_fastapi_dependency_solving_but_keep_its_checks_and_docs(
    tmp_path, fake_model, monkeypatch
):
    """/v1 predict routes are served by pure-ASGI handlers (GatewayMiddleware calls them): no routing,
    dependency solving or exception middleware per request; auth, admission, errors and the OpenAPI
    description are the same as through FastAPI."""
    import fastapi.routing

    solved = []
    real = fastapi.routing.solve_dependencies

    async def counting(*args, **kwargs):
        solved.append(kwargs.get("request") or args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    app, key, _ = make_app(tmp_path, fake_model())
    image = b64(png_bytes())
    with TestClient(app) as client:
        r = client.post("/v1/classify", json={"image": image, "labels": ["a", "b"]})
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_key"
        assert r.json()["request_id"] == r.headers["x-request-id"] and r.headers["x-model-version"]
        client.headers["Authorization"] = f"Bearer {key}"
        for path, body in (
            ("/v1/classify", {"image": image, "labels": ["a", "b"]}),
            ("/v1/tag", {"image": image}),
            ("/v1/embeddings", {"texts": ["x"]}),
        ):
            assert client.post(path, json=body).status_code == 200
        r = client.post("/v1/classify", json={"image": image, "labels": ["a"]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "bad_labels"
        r = client.post("/v1/classify", content=b"x", headers={"content-type": "text/plain"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        assert not solved  # none of these went through FastAPI's per-request machinery
        assert client.get("/v1/models").status_code == 200 and solved  # other routes still do
        spec = client.get("/openapi.json").json()
        operation = spec["paths"]["/v1/classify"]["post"]
        assert operation["operationId"] == "classify_v1_classify_post" and operation["summary"] == "Classify"
        assert "multipart/form-data" in operation["requestBody"]["content"]
        assert "ClassifyResponse" in str(operation["responses"]["200"])
        metrics = client.get("/metrics").text
    assert 'vlmops_requests_total{endpoint="/v1/classify",model_version="fake-1",status="200"} 1.0' in metrics
    assert 'vlmops_requests_total{endpoint="/v1/classify",model_version="fake-1",status="401"} 1.0' in metrics


def test_small_pngs_decode_on_the_loop_and_others_on_the_decode_pool(tmp_path, fake_model):
    """A PNG whose header declares a small image skips the two thread hand-offs; anything larger (or not
    a PNG) still decodes on the pool, and both log the same statistics and hash."""
    app, key, _ = make_app(tmp_path, fake_model())
    gateway = app.state.gateway
    pooled = []
    submit = gateway._decode_pool.submit

    def counting(fn, *args, **kwargs):
        pooled.append(args[1])  # the field name
        return submit(fn, *args, **kwargs)

    gateway._decode_pool.submit = counting
    small, large = png_bytes(size=(64, 64)), png_bytes(size=(200, 200))
    jpeg = png_bytes(size=(32, 32), fmt="JPEG")
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        for data in (small, large, jpeg):
            r = client.post("/v1/classify", json={"image": b64(data), "labels": ["a", "b"]})
            assert r.status_code == 200, r.text
        r = client.post("/v1/classify", json={"image": b64(small[:-30]), "labels": ["a", "b"]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "corrupt_image"  # checked inline too
    assert pooled == ["image", "image"]  # the 200x200 PNG and the JPEG; not the 64x64 PNG
    rows = gateway.log.requests()
    assert [json.loads(row.input_sha256)[0] for row in rows] == [
        hashlib.sha256(d).hexdigest() for d in (small, large, jpeg)
    ]
    assert [json.loads(row.image_stats)[0]["width"] for row in rows] == [64, 200, 32]
