"""What a proxied chat answer waits for: the checks and the durable log row, not the log's image statistics.

The images' statistics (only the log needs them) are computed once the request is on its way upstream;
an image that does not decode is still refused before anything goes upstream, the logged row still has
its sha256 and statistics, and the answer still leaves only once its row is committed.
"""

from __future__ import annotations

import asyncio
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


def lingering_upstream(linger_s: float, peers: list):
    """A raw ASGI upstream that streams two tokens and [DONE], then holds its body open `linger_s`
    before ending it (its last bytes come late); notes each request's client port in `peers`."""
    events = [
        {"id": "up-1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"id": "up-1", "choices": [{"index": 0, "delta": {"content": "a red"}}]},
        {"id": "up-1", "choices": [{"index": 0, "delta": {"content": " image"}, "finish_reason": "stop"}]},
        {"id": "up-1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        peers.append(scope["client"][1])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
        for event in events:
            data = b"data: " + json.dumps(event).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
        await asyncio.sleep(linger_s)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def test_the_answer_ends_with_done_not_when_the_upstream_ends_its_body(tmp_path):
    """[DONE] and the end of the answer leave together, once the row is committed: a client that reads
    the answer to its end (as the OpenAI SDK does) does not wait for the upstream's last bytes (before:
    it waited until the upstream ended its body); they are still read, so the upstream connection is
    reused, and the row is logged ok with the text and usage."""
    peers: list[int] = []
    with serve_in_thread(lingering_upstream(0.8, peers)) as upstream_port:
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
        config = ServeConfig(store=url, upstream=f"http://127.0.0.1:{upstream_port}/v1", timeout_s=10.0)
        with serve_in_thread(create_app(build_gateway(config))) as port:
            gateway = f"http://127.0.0.1:{port}/v1/chat/completions"
            for _ in range(2):
                start = time.monotonic()
                with httpx.stream("POST", gateway, json=body(PNG, stream=True), timeout=30) as response:
                    answer = response.read()  # to the end of the body
                    took = time.monotonic() - start
                    rid = response.headers["x-request-id"]
                assert answer.endswith(b"data: [DONE]\n\n") and b'"content": " image"' in answer
                assert took < 0.5, (
                    f"the answer ended {took:.2f} s after the request, with the upstream's body"
                )
                time.sleep(1.0)  # the upstream's body has ended: the gateway pooled its connection
            row = {r.request_id: r for r in PredictionLog(url).chats()}[rid]
    assert (row.status, row.answer, row.finish_reason, row.tokens_in, row.tokens_out) == (
        "ok", "a red image", "stop", 3, 2,
    )  # fmt: skip
    assert len(peers) == 2 and peers[0] == peers[1]  # one upstream connection, read to its end and reused
