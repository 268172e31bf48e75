"""`UpstreamBackend` (the gateway's --upstream mode) against the local OpenAI-compatible fake."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import pytest

from openai_fake import FakeServer
from serve_helpers import b64, free_port, png_bytes, serve_in_thread
from vlmops.serve.chat_backend import ChatOutcome
from vlmops.serve.errors import ApiError
from vlmops.serve.upstream import UpstreamBackend, UpstreamConfigError

KEY = "sk-upstream-very-secret-456"
KEY_ENV = "TEST_UPSTREAM_KEY"


@pytest.fixture()
def fake():
    server = FakeServer(key=KEY)
    with serve_in_thread(server.app()) as port:
        server.url = f"http://127.0.0.1:{port}/v1"
        yield server


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def chat_body(model: str = "fake-vlm", stream: bool = False, **extra) -> dict:
    """A validated client body: one red image (a data URL) and a prompt."""
    image = "data:image/png;base64," + b64(png_bytes((220, 30, 30), size=(8, 8)))
    content = [{"type": "text", "text": "Describe it"}, {"type": "image_url", "image_url": {"url": image}}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream, **extra}


def run(coro_fn, url: str, **options):
    """Run `coro_fn(backend)` on a fresh loop with a backend for `url`, closing its pool afterwards."""

    async def main():
        backend = UpstreamBackend(url, **{"api_key_env": KEY_ENV, **options})
        try:
            return await coro_fn(backend)
        finally:
            await backend.aclose()

    return asyncio.run(main())


def soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


async def collect(stream) -> list[bytes]:
    return [event async for event in stream]


def payloads(events: list[bytes]) -> list[dict]:
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events), events
    assert events[-1] == b"data: [DONE]\n\n"
    return [json.loads(e[6:]) for e in events[:-1]]


async def upstream_saw_cancel(fake: FakeServer, within_s: float = 3.0) -> None:
    """Wait until the fake counted an abandoned stream; fail if it did not within `within_s`."""
    deadline = time.monotonic() + within_s
    while fake.cancelled == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert fake.cancelled == 1, "the upstream did not see the request go away"


def assert_no_key(*things) -> None:
    for thing in things:
        assert KEY not in repr(thing) and KEY not in str(thing)


def test_complete_forwards_and_reports_the_outcome(fake):
    answer, outcome = run(lambda b: b.complete(chat_body(), soon()), fake.url)
    assert answer["object"] == "chat.completion" and answer["id"] == "chatcmpl-1"
    assert answer["choices"][0]["message"]["content"] == "a red image about describe"
    assert outcome == ChatOutcome("a red image about describe", "stop", 3, 5, None, "fake-vlm", "ok")
    assert "stream_options" not in fake.bodies[-1]


def test_configured_model_replaces_the_clients_and_completion_id_replaces_the_upstreams(fake):
    async def go(backend):
        ours = "chatcmpl-ours"
        answer, outcome = await backend.complete(chat_body("whatever"), soon(), completion_id=ours)
        events = await collect(backend.stream(chat_body("other", True), soon(), completion_id=ours))
        return answer, outcome, events

    answer, outcome, events = run(go, fake.url, model="fake-vlm")
    assert [b["model"] for b in fake.bodies] == ["fake-vlm", "fake-vlm"]
    assert answer["id"] == "chatcmpl-ours" and outcome.model == "fake-vlm"
    assert {p["id"] for p in payloads(events)} == {"chatcmpl-ours"}


def test_stream_passes_events_through_and_accounts_them(fake):
    stream_holder = {}

    async def go(backend):
        stream = stream_holder["s"] = backend.stream(chat_body(stream=True), soon())
        return await collect(stream)

    events = run(go, fake.url)
    chunks = payloads(events)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "a red image about describe"
    # usage was asked for upstream (to log tokens) but the client did not ask, so it is not passed on
    assert fake.bodies[-1]["stream_options"] == {"include_usage": True}
    assert all(c["choices"] for c in chunks)
    outcome = stream_holder["s"].outcome
    assert (outcome.text, outcome.finish_reason, outcome.tokens_in, outcome.tokens_out) == (
        "a red image about describe",
        "stop",
        3,
        5,
    )
    assert outcome.status == "ok" and outcome.model == "fake-vlm" and 0 < outcome.ttft_s < 5


def test_usage_chunk_reaches_a_client_that_asked_for_it(fake):
    body = chat_body(stream=True, stream_options={"include_usage": True})
    chunks = payloads(run(lambda b: collect(b.stream(body, soon())), fake.url))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5


def test_events_arrive_as_the_upstream_sends_them(fake):
    fake.token_delay_s, fake.extra_tokens = 0.1, 10  # 15 tokens, 1.5 s in all

    async def go(backend):
        start = time.perf_counter()
        stream = backend.stream(chat_body(stream=True), soon())
        arrivals = []
        async for event in stream:
            arrivals.append((time.perf_counter(), fake.streams_completed, len(fake.stream_events)))
            if event == b"data: [DONE]\n\n":
                break
        return start, arrivals

    start, arrivals = run(go, fake.url)
    first_at, completed_then, sent_then = arrivals[1]  # the first event with a token
    assert completed_then == 0 and sent_then < 5, "the first token waited for the whole answer"
    assert first_at - start < 0.8
    assert arrivals[-1][0] - first_at > 1.0  # the rest trickled in, as the fake sent it


def test_aclose_mid_stream_cancels_the_upstream_and_keeps_the_partial_text(fake):
    fake.token_delay_s, fake.extra_tokens = 0.2, 20

    async def go(backend):
        stream = backend.stream(chat_body(stream=True), soon())
        got = [await stream.__anext__() for _ in range(3)]  # role chunk + 2 tokens
        await stream.aclose()
        await upstream_saw_cancel(fake)  # while the pool is still open: aclose itself did it
        return stream, got

    stream, got = run(go, fake.url)
    assert len(got) == 3
    assert stream.outcome.status == "cancelled" and stream.outcome.text == "a red"
    assert fake.cancelled == 1 and fake.streams_completed == 0


def test_a_cancelled_consumer_task_cancels_the_upstream(fake):
    fake.token_delay_s, fake.extra_tokens = 0.2, 20

    async def go(backend):
        stream = backend.stream(chat_body(stream=True), soon())

        async def consume():
            async for _ in stream:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await upstream_saw_cancel(fake)  # the cancellation alone closed the upstream request
        await stream.aclose()
        return stream

    stream = run(go, fake.url)
    assert stream.outcome.status == "cancelled" and stream.outcome.text.startswith("a red")
    assert fake.cancelled == 1


def test_unreachable_upstream_is_502():
    url = f"http://127.0.0.1:{free_port()}/v1"
    for call in (lambda b: b.complete(chat_body(), soon()), lambda b: collect(b.stream(chat_body(), soon()))):
        with pytest.raises(ApiError) as info:
            run(call, url)
        assert info.value.status == 502 and info.value.code == "upstream_unreachable"
        assert f"upstream {url} unreachable" in info.value.message
        assert_no_key(info.value)


def test_upstream_slower_than_the_deadline_is_504(fake):
    fake.delay_s = 2.0
    start = time.monotonic()
    with pytest.raises(ApiError) as info:
        run(lambda b: b.complete(chat_body(), soon(0.3)), fake.url)
    assert info.value.status == 504 and "deadline" in info.value.message
    assert time.monotonic() - start < 1.5
    with pytest.raises(ApiError) as info:
        run(lambda b: collect(b.stream(chat_body(stream=True), soon(0.3))), fake.url)
    assert info.value.status == 504


def test_an_upstream_that_never_accepts_the_connection_is_504_at_the_connect_timeout():
    """A listener whose accept queue is full drops the SYN (loopback, nothing answers): the connect
    timeout, well before the request's deadline, is a 504 too, for a plain and a streamed answer."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):  # connections never accepted fill the queue (listen(0) holds one)
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/v1"
        plain, streamed = (
            (lambda b: b.complete(chat_body(), soon())),
            (lambda b: collect(b.stream(chat_body(), soon()))),
        )
        for call in (plain, streamed):
            start = time.monotonic()
            with pytest.raises(ApiError) as info:
                run(call, url, connect_timeout_s=0.3)
            assert info.value.status == 504 and info.value.code == "upstream_timeout"
            assert f"upstream {url} did not answer" in info.value.message
            assert 0.25 < time.monotonic() - start < 3.0  # the connect timeout, not the 10 s deadline


def test_deadline_passing_mid_stream_is_504_with_the_partial_text(fake):
    fake.token_delay_s, fake.extra_tokens = 0.2, 20
    holder = {}

    async def go(backend):
        stream = holder["s"] = backend.stream(chat_body(stream=True), soon(1.5))
        async for _ in stream:
            pass

    with pytest.raises(ApiError) as info:
        run(go, fake.url)
    assert info.value.status == 504
    outcome = holder["s"].outcome
    assert outcome.status == "error" and outcome.text.startswith("a red")


@pytest.mark.parametrize(("knob", "needle"), [("malformed_json", "not JSON"), ("malformed", "no 'message'")])
def test_malformed_answer_is_502(fake, knob, needle):
    setattr(fake, knob, True)
    with pytest.raises(ApiError) as info:
        run(lambda b: b.complete(chat_body(), soon()), fake.url)
    assert info.value.status == 502 and info.value.code == "upstream_malformed"
    assert needle in info.value.message and fake.url in info.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_5xx_is_502(fake, stream):
    fake.fail_status, fake.fail_next = 503, 1
    body = chat_body(stream=stream)
    call = (lambda b: collect(b.stream(body, soon()))) if stream else (lambda b: b.complete(body, soon()))
    with pytest.raises(ApiError) as info:
        run(call, fake.url)
    assert info.value.status == 502 and f"upstream {fake.url} failed (HTTP 503" in info.value.message


def test_streamed_request_answered_with_json_is_502(fake):
    fake.malformed = True  # a plain JSON body even though a stream was asked for
    with pytest.raises(ApiError) as info:
        run(lambda b: collect(b.stream(chat_body(stream=True), soon())), fake.url)
    assert info.value.status == 502 and "content-type 'application/json'" in info.value.message


@pytest.mark.parametrize(
    ("knob", "needle"), [("malformed_sse", "not JSON"), ("truncate_stream", "ended before")]
)
def test_malformed_sse_is_502_after_the_good_events(fake, knob, needle):
    setattr(fake, knob, True)
    holder = {"events": []}

    async def go(backend):
        stream = holder["s"] = backend.stream(chat_body(stream=True), soon())
        async for event in stream:
            holder["events"].append(event)

    with pytest.raises(ApiError) as info:
        run(go, fake.url)
    assert info.value.status == 502 and needle in info.value.message
    assert holder["events"], "events before the broken one were passed on"
    assert holder["s"].outcome.status == "error"


def test_upstream_4xx_passes_through_without_the_key(fake):
    fake.echo_key = True
    with pytest.raises(ApiError) as info:
        run(lambda b: b.complete(chat_body("no-such-model"), soon()), fake.url)
    error = info.value
    assert (error.status, error.code) == (404, "model_not_found")
    assert "The model `no-such-model` does not exist." in error.message
    assert "[upstream key]" in error.message  # the fake quoted it; it was scrubbed
    assert_no_key(error, error.message, error.headers)

    fake.key = "another-key"  # the upstream now refuses ours
    for call in (lambda b: b.complete(chat_body(), soon()), lambda b: collect(b.stream(chat_body(), soon()))):
        with pytest.raises(ApiError) as info:
            run(call, fake.url)
        assert info.value.status == 401 and "Incorrect API key" in info.value.message
        assert "upstream key was refused" in info.value.message
        assert_no_key(info.value, info.value.message)


def test_upstream_429_keeps_its_retry_after(fake):
    fake.fail_status, fake.fail_next, fake.retry_after_ms = 429, 1, 1500
    with pytest.raises(ApiError) as info:
        run(lambda b: b.complete(chat_body(), soon()), fake.url)
    assert info.value.status == 429 and info.value.headers == {"retry-after-ms": "1500"}


def test_key_never_in_outcomes_or_repr(fake):
    async def go(backend):
        _, outcome = await backend.complete(chat_body(), soon())
        stream = backend.stream(chat_body(stream=True), soon())
        events = await collect(stream)
        return backend, outcome, stream.outcome, events

    backend, *things = run(go, fake.url)
    assert_no_key(backend, *things)
    assert fake.bodies and all(KEY not in json.dumps(b) for b in fake.bodies)


def test_proxies_from_the_environment_are_not_used(fake, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    answer, _ = run(lambda b: b.complete(chat_body(), soon()), fake.url)
    assert answer["choices"][0]["message"]["content"] == "a red image about describe"


def test_a_redirect_is_not_followed_but_is_a_502_naming_the_fix():
    from aiohttp import web

    hits = []

    async def moved(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=307, headers={"Location": "http://127.0.0.1:9/elsewhere"})

    async def go():
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", moved)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        backend = UpstreamBackend(f"http://{host}:{port}/v1")
        try:
            for call in (backend.complete, lambda body, deadline: collect(backend.stream(body, deadline))):
                with pytest.raises(ApiError) as info:
                    await call(chat_body(), soon())
                assert info.value.status == 502 and info.value.code == "upstream_redirect"
                assert "--upstream" in info.value.message and "127.0.0.1:9/elsewhere" in info.value.message
        finally:
            await backend.aclose()
            await runner.cleanup()

    asyncio.run(go())
    assert hits == ["/v1/chat/completions"] * 2  # asked once each, the Location never followed


def test_configuration_errors_name_the_fix(monkeypatch):
    with pytest.raises(UpstreamConfigError, match="not an http"):
        UpstreamBackend("ftp://127.0.0.1/v1")
    with pytest.raises(UpstreamConfigError, match="not in the URL"):
        UpstreamBackend("http://user:pw@127.0.0.1/v1")
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(UpstreamConfigError, match=f"names {KEY_ENV}, which is not set"):
        UpstreamBackend("http://127.0.0.1:9/v1", api_key_env=KEY_ENV)


def test_connections_are_reused(fake):
    async def go(backend):
        for _ in range(3):
            await backend.complete(chat_body(), soon())
            await collect(backend.stream(chat_body(stream=True), soon()))

    run(go, fake.url)
    assert len(fake.peers) == 6 and len(set(fake.peers)) == 1  # one keep-alive connection for all six


@contextlib.asynccontextmanager
async def raw_upstream(chunks: list[bytes], status: int = 200):
    """A loopback server answering every POST with `chunks` as an SSE body, each written (and flushed)
    on its own, a moment apart, so the client's reads see the splits; yields its /v1 base URL."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=status, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
            await asyncio.sleep(0.0005)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/v1"
    finally:
        await runner.cleanup()


def test_sse_framing_crlf_multiline_comments_and_odd_splits():
    def chunk(content: str | None = None, finish: str | None = None) -> bytes:
        delta = {"content": content} if content is not None else {}
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return json.dumps({"id": "u-1", "object": "chat.completion.chunk", "choices": [choice]}).encode()

    raw = (
        b": keep-alive comment\r\n\r\n"
        + b"data: "
        + chunk("Hel")
        + b"\r\n\r\n"
        + b"event: message\ndata:"  # a field before the data, and no space after "data:"
        + chunk("lo")
        + b"\n\n"
        + b'data: {"id": "u-1", "object": "chat.completion.chunk",\ndata: "choices": [{"index": 0, '
        + b'"delta": {"content": "!"}, "finish_reason": null}]}\n\n'  # one event on two data lines
        + b"data: "
        + chunk(finish="stop")
        + b"\n\n"
        + b'data: {"id": "u-1", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}\n\n'
        + b"data: [DONE]\n\n"
    )
    for size in (1, 7, 4096):  # one byte at a time (CRLF split across chunks too), odd, all at once
        pieces = [raw[i : i + size] for i in range(0, len(raw), size)]
        events, outcome = stream_raw(pieces)
        chunks = payloads(events)
        assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["Hel", "lo", "!", None]
        assert (outcome.text, outcome.finish_reason, outcome.tokens_in, outcome.tokens_out) == (
            "Hello!",
            "stop",
            4,
            3,
        )


def test_an_upstream_error_event_mid_stream_is_502():
    raw = b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n'
    raw += b'data: {"error": {"message": "CUDA out of memory"}}\n\n'
    error, outcome = stream_raw([raw])
    assert isinstance(error, ApiError) and error.status == 502
    assert "failed mid-stream: CUDA out of memory" in error.message
    assert outcome.status == "error" and outcome.text == "a"


async def _with(coro_fn, chunks: list[bytes]):
    """`coro_fn(backend)` against a `raw_upstream` sending `chunks`."""
    async with raw_upstream(chunks) as url:
        backend = UpstreamBackend(url)
        try:
            return await coro_fn(backend)
        finally:
            await backend.aclose()


def stream_raw(chunks: list[bytes], body: dict | None = None):
    """(the events passed on, or the ApiError raised; the stream's outcome) of a stream of `body` (a plain
    streamed request by default) from a `raw_upstream` sending `chunks`."""
    holder = {}

    async def go(backend):
        stream = holder["s"] = backend.stream(body or chat_body(stream=True), soon())
        return await collect(stream)

    try:
        passed = asyncio.run(_with(go, chunks))
    except ApiError as exc:
        passed = exc
    return passed, holder["s"].outcome


def proxy_app(backend_options: dict):
    """A bare Starlette route around UpstreamBackend, as the gateway's chat route will hold it."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    state = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if "backend" in state:
            await state["backend"].aclose()

    async def chat(request: Request) -> Response:
        if "backend" not in state:  # made on the server's loop, like the gateway's lifespan would
            state["backend"] = UpstreamBackend(**backend_options)
        backend, body = state["backend"], await request.json()
        try:
            if not body.get("stream"):
                answer, state["outcome"] = await backend.complete(body, soon())
                return JSONResponse(answer)
            stream = state["stream"] = backend.stream(body, soon())
            first = await stream.__anext__()
        except ApiError as exc:
            return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, exc.status)

        async def events():
            try:
                yield first
                async for event in stream:
                    yield event
            finally:
                await stream.aclose()

        return StreamingResponse(events(), media_type="text/event-stream")

    routes = [Route("/v1/chat/completions", chat, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan), state


def test_the_openai_client_through_a_route_around_the_backend(fake):
    import openai

    app, state = proxy_app({"base_url": fake.url, "api_key_env": KEY_ENV})
    with serve_in_thread(app) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="gateway-key", max_retries=0)
        body = chat_body()
        answer = client.chat.completions.create(model="fake-vlm", messages=body["messages"])
        assert answer.choices[0].message.content == "a red image about describe"
        assert answer.usage.completion_tokens == 5

        chunks = list(
            client.chat.completions.create(
                model="fake-vlm",
                messages=body["messages"],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            == answer.choices[0].message.content
        )
        assert chunks[-1].usage.prompt_tokens == 3

        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.chat.completions.create(model="nope", messages=body["messages"])

        # the client walks away mid-stream: the route's aclose reaches the upstream
        fake.token_delay_s, fake.extra_tokens = 0.2, 30
        stream = client.chat.completions.create(model="fake-vlm", messages=body["messages"], stream=True)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()
        deadline = time.monotonic() + 5
        while fake.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.cancelled == 1
        outcome = state["stream"].outcome
        assert outcome.status == "cancelled" and outcome.text.startswith("a red image")


@pytest.mark.parametrize(
    ("raw", "message", "code"),
    [
        (b'{"error": {"message": "bad model", "code": "model_not_found"}}', "bad model", "model_not_found"),
        (
            b'{"error": {"code": 400, "message": "too long", "type": "invalid_request_error"}}',
            "too long",
            "invalid_request_error",
        ),  # llama.cpp
        (
            b'{"error": "model \\"x\\" not found, try pulling it first"}',
            'model "x" not found, try pulling it first',
            None,
        ),  # Ollama
        (
            b'{"object": "error", "message": "max_tokens too big", "type": "BadRequestError", "code": 400}',
            "max_tokens too big",
            "BadRequestError",
        ),  # vLLM
        (b'{"detail": "Not Found"}', "Not Found", None),  # FastAPI
        (b"<html>bad gateway</html>", "<html>bad gateway</html>", None),
        (b"", "Bad Request", None),
    ],
)
def test_error_bodies_in_every_servers_shape(raw, message, code):
    from vlmops.serve.upstream import error_message

    assert error_message(raw, "Bad Request") == (message, code)


def test_aclose_from_another_task_ends_the_reader_quietly_as_cancelled(fake):
    fake.token_delay_s, fake.extra_tokens = 0.2, 20

    async def go(backend):
        stream = backend.stream(chat_body(stream=True), soon())
        got = []

        async def consume():
            async for event in stream:
                got.append(event)

        task = asyncio.create_task(consume())
        while len(got) < 3:
            await asyncio.sleep(0.01)
        await stream.aclose()  # while `consume` waits for the next event
        await asyncio.wait_for(task, 5)  # ends without an error
        await upstream_saw_cancel(fake)
        return stream, got

    stream, got = run(go, fake.url)
    assert stream.outcome.status == "cancelled" and stream.outcome.text.startswith("a red")
    assert got[-1] != b"data: [DONE]\n\n"


def test_a_silence_longer_than_timeout_s_is_504_before_a_later_deadline(fake):
    """The per-read silence limit (`timeout_s`) still holds where the request's deadline is later: one
    timer per exchange for the deadline must not drop it."""
    fake.token_delay_s, fake.extra_tokens = 2.0, 5
    for call in (
        lambda b: b.complete(chat_body(), soon(10)),
        lambda b: collect(b.stream(chat_body(stream=True), soon(10))),
    ):
        start = time.monotonic()
        with pytest.raises(ApiError) as info:
            run(call, fake.url, timeout_s=0.4)
        assert info.value.status == 504 and info.value.code == "upstream_timeout"
        assert time.monotonic() - start < 1.8  # the 0.4 s silence, not the 10 s deadline


def test_a_deadline_already_past_is_504_without_calling_the_upstream(fake):
    for call in (
        lambda b: b.complete(chat_body(), soon(-1)),
        lambda b: collect(b.stream(chat_body(stream=True), soon(-1))),
    ):
        with pytest.raises(ApiError) as info:
            run(call, fake.url)
        assert info.value.status == 504 and info.value.code == "upstream_timeout"
    assert fake.calls == 0


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a": [1, 2.5, -3e8, 12345678901234567890, true, null, "x\\u00e9\\ud83d\\ude00"]}',
        '{"content": "caf\u00e9 \u732b \U0001f642"}'.encode(),
        b'  {"a": 1}  ',  # whitespace around: json.loads allows it
        b'{"a": 1}\n',
        b'{"a": NaN, "b": Infinity}',
        b'"just a string"',
        b"[1, 2]",
        b"17",
    ],
)
def test_loads_event_is_json_loads(payload):
    from vlmops.serve.upstream_stream import loads_event

    value = loads_event(payload)
    assert value == json.loads(payload) or (value != value and json.loads(payload) != json.loads(payload))
    assert type(value) is type(json.loads(payload))


@pytest.mark.parametrize(
    "payload",
    [b'{"a": 1} {"b": 2}', b'{"a": 1', b"", b"   ", b"{'a': 1}", b'{"a": "\xff"}', b'{"a": 1}x'],
)
def test_loads_event_refuses_what_json_loads_refuses(payload):
    from vlmops.serve.upstream_stream import loads_event

    with pytest.raises(ValueError):
        json.loads(payload)
    with pytest.raises(ValueError):
        loads_event(payload)


def test_multibyte_text_split_across_reads_is_passed_and_logged_whole():
    """Events whose UTF-8 characters (2, 3 and 4 bytes) straddle the upstream's reads, and a usage
    chunk: the events pass through byte for byte and the logged text, finish reason and usage are
    exact, at every split."""
    pieces_of_text = ["caf\u00e9 ", "\u732b\u732b ", "\U0001f642", "!"]
    events = [
        json.dumps({"id": "u-1", "choices": [{"index": 0, "delta": {"content": t}}]}, ensure_ascii=False)
        for t in pieces_of_text
    ]
    finish = {"index": 0, "delta": {}, "finish_reason": "length"}
    events.append(json.dumps({"id": "u-1", "choices": [finish]}))
    usage = {"prompt_tokens": 9, "completion_tokens": 4}
    events.append(json.dumps({"id": "u-1", "choices": [], "usage": usage}))
    raw = b"".join(b"data: " + e.encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    for size in (1, 2, 3, 5, 4096):
        pieces = [raw[i : i + size] for i in range(0, len(raw), size)]
        passed, outcome = stream_raw(pieces, chat_body(stream=True, stream_options={"include_usage": True}))
        assert passed == [b"data: " + e.encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
        assert (outcome.text, outcome.finish_reason, outcome.tokens_in, outcome.tokens_out) == (
            "".join(pieces_of_text),
            "length",
            9,
            4,
        )


def test_an_event_that_is_not_utf8_is_a_502_naming_it():
    raw = b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n'
    raw += b'data: {"choices": [{"index": 0, "delta": {"content": "\xff\xfe"}}]}\n\n'
    error, outcome = stream_raw([raw])
    assert isinstance(error, ApiError) and error.status == 502 and error.code == "upstream_malformed"
    assert "not JSON" in error.message
    assert outcome.status == "error" and outcome.text == "a"
