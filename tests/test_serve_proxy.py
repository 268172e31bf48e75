"""`vlmops serve --upstream URL`: the whole gateway (auth, limits, request ids, the exchange log) in front
of an OpenAI-compatible upstream (the local fake), tested with the official `openai` client."""

from __future__ import annotations

import base64
import json
import time

import httpx
import openai
import pytest

from openai_fake import FakeServer
from serve_helpers import SCOPES, png_bytes, serve_in_thread
from vlmops.serve.app import create_app
from vlmops.serve.build import build_gateway
from vlmops.serve.keys import CachedVerifier, KeyStore
from vlmops.serve.service import ServeConfig
from vlmops.store.log import PredictionLog

KEY, KEY_ENV = "sk-upstream-secret-789", "TEST_PROXY_UPSTREAM_KEY"


def messages(colour=(220, 30, 30)) -> list[dict]:
    image = "data:image/png;base64," + base64.b64encode(png_bytes(colour, size=(8, 8))).decode()
    parts = [{"type": "text", "text": "Describe it"}, {"type": "image_url", "image_url": {"url": image}}]
    return [{"role": "user", "content": parts}]


@pytest.fixture()
def fake():
    server = FakeServer(key=KEY)
    with serve_in_thread(server.app()) as port:
        server.url = f"http://127.0.0.1:{port}/v1"
        yield server


@pytest.fixture()
def proxy(fake, tmp_path, monkeypatch):
    """(openai client, store url, fake) of a gateway proxying to the fake, auth on."""
    monkeypatch.setenv(KEY_ENV, KEY)
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    config = ServeConfig(store=url, upstream=fake.url, upstream_key_env=KEY_ENV, timeout_s=3.0)
    keys = KeyStore(url)
    key = keys.create("tests", rate_per_s=1000, burst=1000, scopes=SCOPES)
    app = create_app(build_gateway(config), CachedVerifier(keys))
    with serve_in_thread(app) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        yield client, url, fake


def wait_for_rows(url: str, n: int, within_s: float = 5.0) -> list:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        rows = PredictionLog(url).chats()
        if len(rows) >= n:
            return rows
        time.sleep(0.02)
    return PredictionLog(url).chats()


def test_plain_and_streamed_answers_pass_through_and_are_logged(proxy):
    client, url, fake = proxy
    plain = client.chat.completions.create(model="fake-vlm", messages=messages(), max_tokens=8)
    chunks = list(
        client.chat.completions.create(
            model="fake-vlm", messages=messages(), max_tokens=8, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert plain.choices[0].message.content == streamed and streamed  # the fake's deterministic answer
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id != plain.id  # our request ids
    rows = {r.request_id: r for r in wait_for_rows(url, 2)}
    assert set(rows) == {plain.id, chunks[0].id}
    for row in rows.values():
        assert (row.mode, row.status, row.answer, row.model) == ("upstream", "ok", streamed, "fake-vlm")
        assert row.tokens_out == plain.usage.completion_tokens and len(json.loads(row.input_sha256)) == 1
    assert rows[chunks[0].id].stream and rows[chunks[0].id].ttft_ms is not None
    assert KEY not in repr([tuple(r) for r in PredictionLog(url).requests()])  # the upstream key never
    assert fake.bodies[0]["model"] == "fake-vlm"


def test_streamed_events_pass_through_byte_for_byte_but_for_the_id(proxy):
    """The gateway splices its request id into the upstream's chunks instead of re-serialising them."""
    client = proxy[0]
    body = {"model": "fake-vlm", "messages": messages(), "max_tokens": 8, "stream": True}
    headers = {"Authorization": f"Bearer {client.api_key}"}
    port = client.base_url.port
    with httpx.stream(
        "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers
    ) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) > 3
    rid = json.loads(lines[0][6:])["id"]
    assert rid != "chatcmpl-1"  # the gateway's request id
    for line in lines[:-1]:
        chunk = json.loads(line[6:])
        as_sent = "data: " + json.dumps({**chunk, "id": "chatcmpl-1"})  # what the fake wrote
        assert line == as_sent.replace('{"id": "chatcmpl-1"', '{"id":' + json.dumps(rid), 1)


def test_the_chat_route_skips_fastapi_dependency_solving_but_keeps_its_checks(proxy, monkeypatch):
    """/v1/chat/completions is a pure-ASGI handler too (GatewayMiddleware calls it): no routing,
    dependency solving or exception middleware per request or per streamed event."""
    import fastapi.routing

    client = proxy[0]
    solved = []
    real = fastapi.routing.solve_dependencies

    async def counting(*args, **kwargs):
        if kwargs["request"].url.port == client.base_url.port:  # the gateway's, not the fake upstream's
            solved.append(kwargs["request"].url.path)
        return await real(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    plain = client.chat.completions.create(model="fake-vlm", messages=messages(), max_tokens=8)
    streamed = list(
        client.chat.completions.create(model="fake-vlm", messages=messages(), max_tokens=8, stream=True)
    )
    assert plain.choices[0].message.content == "".join(c.choices[0].delta.content or "" for c in streamed)
    anonymous = openai.OpenAI(base_url=client.base_url, api_key="vlm_not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.chat.completions.create(model="fake-vlm", messages=messages())
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="fake-vlm", messages=[])
    assert not solved
    assert httpx.get(f"{str(client.base_url).rstrip('/')}/models").status_code == 401 and solved


def test_upstream_errors_become_502_504_with_clear_messages(proxy):
    client, url, fake = proxy
    with pytest.raises(openai.NotFoundError, match="does not exist"):  # an upstream 4xx passes through
        client.chat.completions.create(model="no-such-model", messages=messages())
    fake.malformed_json = True
    with pytest.raises(openai.APIStatusError) as bad:
        client.chat.completions.create(model="fake-vlm", messages=messages())
    assert bad.value.status_code == 502 and "malformed" in str(bad.value).lower()
    fake.malformed_json, fake.delay_s = False, 5.0  # slower than the gateway's 3 s deadline
    with pytest.raises(openai.APIStatusError) as slow:
        client.chat.completions.create(model="fake-vlm", messages=messages())
    assert slow.value.status_code == 504
    statuses = [r.status for r in wait_for_rows(url, 2)]
    assert statuses.count("error") >= 2  # failures are logged too, as errors
    assert KEY not in str(bad.value) + str(slow.value)


def test_upstream_down_is_502(tmp_path, monkeypatch):
    from serve_helpers import free_port

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    config = ServeConfig(store=url, upstream=f"http://127.0.0.1:{free_port()}/v1", auth=False)
    with serve_in_thread(create_app(build_gateway(config))) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as down:
            client.chat.completions.create(model="any", messages=messages())
    assert down.value.status_code == 502 and "unreachable" in str(down.value)


def test_a_client_leaving_mid_stream_cancels_the_upstream_and_logs_the_partial_answer(proxy):
    client, url, fake = proxy
    fake.token_delay_s, fake.extra_tokens = 0.1, 40  # a slow, long answer
    port = client.base_url.port
    body = {"model": "fake-vlm", "messages": messages(), "stream": True}
    headers = {"Authorization": f"Bearer {client.api_key}"}
    with httpx.stream(
        "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers
    ) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]  # a few events, then walk away
    assert any(line.startswith("data: {") for line in got)
    deadline = time.monotonic() + 5
    while fake.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.cancelled == 1  # the upstream saw the request go away
    (row,) = wait_for_rows(url, 1)
    assert row.status == "cancelled" and 0 < len(row.answer.split()) < 40


def test_the_cli_refuses_a_bad_upstream_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from vlmops.cli import app

    result = CliRunner().invoke(
        app, ["serve", "--upstream", "ftp://example/v1", "--store", str(tmp_path / "s")]
    )
    assert result.exit_code == 2 and "http(s) URL" in result.output and "Traceback" not in result.output


def test_image_urls_are_fetched_only_from_allowed_public_hosts(fake, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    config = ServeConfig(
        store=url, upstream=fake.url, upstream_key_env=KEY_ENV, auth=False, allow_image_hosts=["127.0.0.1"]
    )
    with serve_in_thread(create_app(build_gateway(config))) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        for image_url, words in (
            ("http://169.254.169.254/latest/meta-data", "allow"),  # not an allowed host: never contacted
            (f"http://127.0.0.1:{port}/healthz", "loopback"),  # allowed by name, refused by address
        ):
            parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": image_url}}]
            with pytest.raises(openai.APIStatusError) as refused:
                client.chat.completions.create(
                    model="fake-vlm", messages=[{"role": "user", "content": parts}]
                )
            assert 400 <= refused.value.status_code < 500 and words in str(refused.value).lower()
    assert fake.calls == 0 and PredictionLog(url).chats() == []  # refused before the upstream was asked
