"""A corpus of bad and unusual inputs: each gets a 4xx with a JSON error naming the problem, never a 500.

Unusual but valid images (16-bit, CMYK, palette with alpha, EXIF-rotated) must be accepted and read
the way the data loaders read them.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serve_helpers import b64, make_app, png_bytes
from vlmops.serve.limits import Limits

PNG = png_bytes()


def _jpeg(**kw) -> bytes:
    return png_bytes((20, 120, 220), fmt="JPEG", **kw)


def _animated_gif() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _bomb_png() -> bytes:
    """A tiny PNG whose header claims 20000 x 20000 pixels."""
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, "PNG")
    return buf.getvalue()


def _sixteen_bit_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 40_000, dtype=np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def _exif_rotated_jpeg() -> bytes:
    """A 20x10 JPEG whose EXIF orientation (6) says: rotate to 10x20."""
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def _palette_alpha_png() -> bytes:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buf = io.BytesIO()
    image.save(buf, "PNG", transparency=0)
    return buf.getvalue()


LABELS = ["a", "b"]

# (name, method, path, kwargs for the client, expected status, expected error code or None for 200)
CASES = [
    (
        "truncated png",
        "/v1/classify",
        {"json": {"image": b64(PNG[: len(PNG) // 2]), "labels": LABELS}},
        422,
        "corrupt_image",
    ),
    (
        "truncated jpeg",
        "/v1/classify",
        {"json": {"image": b64(_jpeg()[:200]), "labels": LABELS}},
        422,
        "corrupt_image",
    ),
    (
        "decompression bomb",
        "/v1/classify",
        {"json": {"image": b64(_bomb_png()), "labels": LABELS}},
        413,
        "image_too_large",
    ),
    ("zero bytes", "/v1/classify", {"json": {"image": "", "labels": LABELS}}, 422, "empty_image"),
    (
        "not an image",
        "/v1/classify",
        {"json": {"image": b64(b"hello world" * 10), "labels": LABELS}},
        415,
        "unsupported_image",
    ),
    (
        "tiff not allowed",
        "/v1/classify",
        {"json": {"image": b64(png_bytes(fmt="TIFF")), "labels": LABELS}},
        415,
        "unsupported_format",
    ),
    (
        "wrong content-type",
        "/v1/classify",
        {"content": b"image bytes", "headers": {"content-type": "image/png"}},
        415,
        "unsupported_media_type",
    ),
    ("no content-type", "/v1/classify", {"content": b"{}"}, 415, "unsupported_media_type"),
    (
        "invalid base64",
        "/v1/classify",
        {"json": {"image": "@@@not-base64@@@", "labels": LABELS}},
        422,
        "invalid_base64",
    ),
    (
        "invalid json",
        "/v1/classify",
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        422,
        "invalid_json",
    ),
    (
        "non-utf8 body",
        "/v1/classify",
        {"content": b"\xff\xfe{}", "headers": {"content-type": "application/json"}},
        422,
        "invalid_json",
    ),
    ("json not an object", "/v1/classify", {"json": [1, 2, 3]}, 422, "invalid_request"),
    ("missing image field", "/v1/classify", {"json": {"labels": LABELS}}, 422, "invalid_request"),
    (
        "unknown field",
        "/v1/classify",
        {"json": {"image": b64(PNG), "labels": LABELS, "colour": 1}},
        422,
        "invalid_request",
    ),
    (
        "top_k zero",
        "/v1/classify",
        {"json": {"image": b64(PNG), "labels": LABELS, "top_k": 0}},
        422,
        "invalid_request",
    ),
    ("empty label list", "/v1/classify", {"json": {"image": b64(PNG), "labels": []}}, 422, "bad_labels"),
    ("one label", "/v1/classify", {"json": {"image": b64(PNG), "labels": ["a"]}}, 422, "bad_labels"),
    (
        "10k labels",
        "/v1/classify",
        {"json": {"image": b64(PNG), "labels": [f"l{i}" for i in range(10_000)]}},
        413,
        "too_many_labels",
    ),
    (
        "duplicate labels",
        "/v1/classify",
        {"json": {"image": b64(PNG), "labels": ["a", "a"]}},
        422,
        "bad_labels",
    ),
    (
        "labels and label_set",
        "/v1/classify",
        {"json": {"image": b64(PNG), "labels": LABELS, "label_set": "colours"}},
        422,
        "bad_labels",
    ),
    (
        "bad template",
        "/v1/classify",
        {"json": {"image": b64(PNG), "labels": LABELS, "template": "no slot"}},
        422,
        "bad_template",
    ),
    (
        "animated gif",
        "/v1/classify",
        {"json": {"image": b64(_animated_gif()), "labels": LABELS}},
        422,
        "animated_image",
    ),
    ("huge text", "/v1/embeddings", {"json": {"texts": ["x" * 50_000]}}, 413, "text_too_long"),
    ("empty text", "/v1/embeddings", {"json": {"texts": ["   "]}}, 422, "empty_text"),
    ("empty embeddings request", "/v1/embeddings", {"json": {}}, 422, "empty_request"),
    ("too many images", "/v1/embeddings", {"json": {"images": [b64(PNG)] * 40}}, 413, "too_many_inputs"),
    (
        "multipart without image",
        "/v1/classify",
        {"files": {"other": ("a.txt", b"x")}, "data": {"labels": LABELS}},
        422,
        "invalid_request",
    ),
    ("search without gallery", "/v1/search", {"json": {"text": "cat"}}, 409, "no_gallery"),
    (
        "feedback unknown request",
        "/v1/feedback",
        {"json": {"request_id": "abc", "accepted": True}},
        404,
        "unknown_request",
    ),
    (
        "feedback bad type",
        "/v1/feedback",
        {"json": {"request_id": "abc", "accepted": "maybe"}},
        422,
        "invalid_request",
    ),
    ("unknown route", "/v1/nothing", {"json": {}}, 404, "not_found"),
    (
        "body over the limit",
        "/v1/classify",
        {"json": {"image": "A" * 9_000_000, "labels": LABELS}},
        413,
        "body_too_large",
    ),
    # unusual but valid: accepted and decoded like the data loaders do
    ("16-bit png", "/v1/classify", {"json": {"image": b64(_sixteen_bit_png()), "labels": LABELS}}, 200, None),
    (
        "cmyk jpeg",
        "/v1/classify",
        {"json": {"image": b64(png_bytes((0, 0, 0, 0), mode="CMYK", fmt="JPEG")), "labels": LABELS}},
        200,
        None,
    ),
    (
        "palette + alpha png",
        "/v1/classify",
        {"json": {"image": b64(_palette_alpha_png()), "labels": LABELS}},
        200,
        None,
    ),
    (
        "exif-rotated jpeg",
        "/v1/classify",
        {"json": {"image": b64(_exif_rotated_jpeg()), "labels": LABELS}},
        200,
        None,
    ),
    (
        "data url base64",
        "/v1/classify",
        {"json": {"image": "data:image/png;base64," + b64(PNG), "labels": LABELS}},
        200,
        None,
    ),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from conftest import FakeModel

    app, key, _ = make_app(tmp_path_factory.mktemp("bad"), FakeModel(), limits=Limits())
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize(("name", "path", "kwargs", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_named_4xx(client, name, path, kwargs, status, code):
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    if code is None:
        return
    body = r.json()
    assert body["error"]["code"] == code
    assert len(body["error"]["message"]) > 10 and body["request_id"] == r.headers["x-request-id"]


def test_missing_and_wrong_key(client):
    body = {"image": b64(PNG), "labels": LABELS}
    r = client.post("/v1/classify", json=body, headers={"Authorization": ""})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "missing_key")
    r = client.post(
        "/v1/classify", json=body, headers={"Authorization": "Bearer vlm_000000000000_" + "x" * 40}
    )
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_key")


def test_exif_rotation_and_alpha_are_applied():
    from vlmops.serve.decode import decode_image

    assert decode_image(_exif_rotated_jpeg(), Limits()).size == (10, 20)
    assert decode_image(_palette_alpha_png(), Limits()).getpixel((0, 0)) == (
        255,
        255,
        255,
    )  # transparent -> white
    assert decode_image(_sixteen_bit_png(), Limits()).getpixel((0, 0)) == (156, 156, 156)  # 40000 / 256
