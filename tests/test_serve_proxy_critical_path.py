"""What a proxied chat answer waits for: the checks and the durable log row, not the log's image statistics.

The images' statistics (only the log needs them) are computed once the request is on its way upstream;
an image that does not decode is still refused before anything goes upstream, the logged row still has
its sha256 and statistics, and the answer still leaves only once its row is committed.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from openai_fake import FakeServer
from serve_helpers import png_bytes, serve_in_thread
from vlmops.serve import decode
from vlmops.serve.app import create_app
from vlmops.serve.build import build_gateway
from vlmops.serve.service import ServeConfig, sha256_hex
from vlmops.store.log import PredictionLog

PNG = png_bytes((220, 30, 30), size=(8, 8))


def body(image: bytes, stream: bool = False) -> dict:
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    parts = [{"type": "text", "text": "Describe it"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": "fake-vlm", "messages": [{"role": "user", "content": parts}], "stream": stream}


@pytest.fixture()
def gateway(tmp_path):
    """(base URL, store URL, fake upstream) of a gateway proxying to the fake, no auth."""
    fake = FakeServer(key=None)
    with serve_in_thread(fake.app()) as upstream_port:
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
        config = ServeConfig(store=url, upstream=f"http://127.0.0.1:{upstream_port}/v1", timeout_s=10.0)
        with serve_in_thread(create_app(build_gateway(config))) as port:
            yield f"http://127.0.0.1:{port}/v1/chat/completions", url, fake


@pytest.mark.parametrize("stream", [False, True])
def test_image_statistics_wait_until_the_request_is_upstream_and_are_logged(gateway, monkeypatch, stream):
    """While the statistics are computed, the upstream already has the request (before: it got it only
    after them, on the answer's critical path; on a kept-alive upstream connection, as in steady
    serving); the row logged before the answer still holds them."""
    url, store, fake = gateway
    assert httpx.post(url, json=body(PNG), timeout=30).status_code == 200  # the upstream connection is open
    before, seen_upstream = len(fake.bodies), []
    real = decode.describe_image

    def describing(image, data, image_format=None):
        deadline = time.monotonic() + 3  # the gateway's loop is blocked here: only a request already
        while len(fake.bodies) == before and time.monotonic() < deadline:  # written reaches the fake
            time.sleep(0.005)
        seen_upstream.append(len(fake.bodies) > before)
        return real(image, data, image_format)

    monkeypatch.setattr(decode, "describe_image", describing)
    with httpx.stream("POST", url, json=body(PNG, stream), timeout=30) as response:
        assert response.status_code == 200
        answer = response.read()
        rid = response.headers["x-request-id"]
        rows = {r.request_id: r for r in PredictionLog(store).chats()}  # no waiting: logged before
    assert b"[DONE]" in answer if stream else json.loads(answer)["id"] == rid
    assert seen_upstream == [True]
    row = rows[rid]
    assert json.loads(row.input_sha256) == [sha256_hex(PNG)]
    (stats,) = json.loads(row.image_stats)
    assert (stats["width"], stats["height"], stats["format"], stats["bytes"]) == (8, 8, "PNG", len(PNG))
    assert stats["brightness"] > 0


CORRUPT = PNG[:41] + bytes(b ^ 0xFF for b in PNG[41:60]) + PNG[60:]  # the pixel data scrambled


@pytest.mark.parametrize("image", [PNG[:40], PNG[:50], CORRUPT])
def test_an_image_that_does_not_decode_is_refused_before_the_upstream_sees_it(gateway, image):
    """The full decode still runs before forwarding (only the statistics wait): a truncated or corrupt
    small PNG is a 4xx naming the problem, and the upstream never gets the request."""
    url, store, fake = gateway
    response = httpx.post(url, json=body(image), timeout=30)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert "truncated or corrupt" in error["message"] or error["code"] == "unsupported_image"
    assert fake.bodies == []
    assert PredictionLog(store).chats() == []
