"""A deterministic OpenAI-compatible chat-completions server for tests (FastAPI, loopback only).

It answers from the pixels it is sent, so a test can tell that the right image reached it: the
answer names the image's dominant colour and echoes the prompt's first word. Knobs on `FakeServer`
make it refuse keys, rate-limit, fail, stall or answer garbage; stream slowly (`token_delay_s`), give
longer answers (`extra_tokens`), send broken JSON or broken SSE, end a stream early, quote the key it
was sent in its errors (`echo_key`), and count streams the client abandoned (`cancelled`).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "white": (250, 250, 250)}
EXTRA_WORDS = ("bright", "small", "round", "flat", "shiny", "plain", "odd", "neat")


def colour_name(image: Image.Image) -> str:
    """The name in COLOURS nearest to the image's mean RGB."""
    mean = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda name: float(np.sum((mean - COLOURS[name]) ** 2)))


def expected_tokens(image: Image.Image, prompt: str, temperature: float = 0.0, seed: int | None = None):
    """The tokens the fake answers with (before max_tokens cuts them), each with its leading space."""
    topic = prompt.split()[0].lower() if prompt.split() else "nothing"
    words = ["a", colour_name(image), "image", "about", topic]
    if temperature > 0:
        words.append(random.Random(seed).choice(EXTRA_WORDS))
    return [words[0]] + [" " + w for w in words[1:]]


def token_logprob(index: int) -> float:
    """The log-probability the fake reports for its index-th token."""
    return -0.05 * (index + 1)


@dataclass
class FakeServer:
    """Behaviour of the fake; tests change the fields between calls."""

    key: str | None = "test-key"
    models: tuple[str, ...] = ("fake-vlm",)
    fail_next: int = 0  # answer this many requests with fail_status first
    fail_status: int = 429
    retry_after_ms: int | None = 20
    retry_after_s: str | None = None
    delay_s: float = 0.0
    malformed: bool = False
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    token_delay_s: float = 0.0  # between streamed tokens; a non-streamed answer waits tokens x this
    # token i of a stream leaves at start + i x token_delay_s, on the server's own clock, as a model
    # server's do whoever reads; False: a sleep after each send, so every late wake-up of this process
    # (a busy machine) lengthens the stream (how the fake paced before; bench/proxy_event_delay.py)
    paced_by_clock: bool = True
    extra_tokens: int = 0  # " w0", " w1", ... appended to every answer
    malformed_json: bool = False  # a 200 whose body is not JSON
    malformed_sse: bool = False  # a stream whose second event is not JSON
    truncate_stream: bool = False  # a stream that stops after its tokens: no finish_reason, no [DONE]
    echo_key: bool = False  # error messages quote the Authorization header they got
    streams_started: int = 0
    streams_completed: int = 0
    cancelled: int = 0  # streams the client went away from before the end
    stream_events: list[float] = field(default_factory=list)  # perf_counter() when each event was sent
    peers: list[int] = field(default_factory=list)  # the client's port for each request (its connection)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            with self.lock:
                self.calls += 1
                self.peers.append(request.client.port if request.client else -1)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return await self._answer(request)
            finally:
                with self.lock:
                    self.in_flight -= 1

        return app

    async def _answer(self, request: Request) -> Response:
        said = f" (got {request.headers.get('authorization')})" if self.echo_key else ""
        if self.key is not None and request.headers.get("authorization") != f"Bearer {self.key}":
            return _error(401, "Incorrect API key provided." + said, "invalid_api_key")
        body = await request.json()
        self.bodies.append(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_next > 0:
            self.fail_next -= 1
            headers = {}
            if self.retry_after_ms is not None:
                headers["retry-after-ms"] = str(self.retry_after_ms)
            if self.retry_after_s is not None:
                headers["retry-after"] = self.retry_after_s
            return _error(self.fail_status, "Rate limit reached, slow down." + said, "rate_limit", headers)
        if body.get("model") not in self.models:
            message = f"The model `{body.get('model')}` does not exist." + said
            return _error(404, message, "model_not_found")
        if self.malformed:
            return JSONResponse({"id": "x", "object": "chat.completion", "choices": [{"index": 0}]})
        if self.malformed_json:
            return Response(b'{"id": "x", "choices": [', media_type="application/json")
        image, prompt = _read_message(body["messages"][-1]["content"])
        tokens = expected_tokens(image, prompt, body.get("temperature", 0.0), body.get("seed"))
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 256
        tokens += [f" w{i}" for i in range(self.extra_tokens)]
        finish = "length" if len(tokens) > limit else "stop"
        tokens = tokens[:limit]
        usage = {"prompt_tokens": len(prompt.split()) + 1, "completion_tokens": len(tokens)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream"):
            chunks = self._recorded(_chunks(tokens, finish, usage, body, self))
            return StreamingResponse(chunks, media_type="text/event-stream")
        if self.token_delay_s:
            await asyncio.sleep(self.token_delay_s * len(tokens))
        message = {"role": "assistant", "content": "".join(tokens)}
        choice = {"index": 0, "message": message, "finish_reason": finish}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [_logprob(i, t) for i, t in enumerate(tokens)]}
        answer = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice], "usage": usage}
        return JSONResponse(answer)

    async def _recorded(self, chunks):
        """`chunks`, counting a stream the client abandoned (the server cancels it) as cancelled."""
        with self.lock:
            self.streams_started += 1
        finished = False
        try:
            async for chunk in chunks:
                self.stream_events.append(time.perf_counter())
                yield chunk
            finished = True
        finally:
            with self.lock:
                if finished:
                    self.streams_completed += 1
                else:
                    self.cancelled += 1


def _read_message(content: list[dict]) -> tuple[Image.Image, str]:
    prompt = next(p["text"] for p in content if p["type"] == "text")
    url = next(p["image_url"]["url"] for p in content if p["type"] == "image_url")
    header, data = url.split(",", 1)
    assert header == "data:image/png;base64", header
    return Image.open(io.BytesIO(base64.b64decode(data))), prompt


def _logprob(index: int, token: str) -> dict:
    logprob = token_logprob(index)
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}


def _error(status: int, message: str, code: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "code": code}}, status_code=status, headers=headers)


async def _chunks(tokens: list[str], finish: str, usage: dict, body: dict, server: FakeServer):
    def event(choices: list, **extra) -> str:
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": choices, **extra}
        return "data: " + json.dumps(chunk)

    yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]) + "\n\n"
    loop = asyncio.get_running_loop()
    due = loop.time()
    for i, token in enumerate(tokens):
        choice = {"index": 0, "delta": {"content": token}, "finish_reason": None}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [_logprob(i, token)]}
        yield event([choice]) + "\n\n"
        if server.malformed_sse:
            yield 'data: {"id": "chatcmpl-1", "choices": [\n\n'
        due = (due if server.paced_by_clock else loop.time()) + server.token_delay_s
        await asyncio.sleep(max(0.0, due - loop.time()))
    if server.truncate_stream:
        return
    yield event([{"index": 0, "delta": {}, "finish_reason": finish}]) + "\n\n"
    if (body.get("stream_options") or {}).get("include_usage"):
        yield event([], usage=usage) + "\n\n"
    yield "data: [DONE]\n\n"
