"""A streamed upstream answer: SSE events passed through one at a time, accounted as they pass.

Each ``__anext__`` reads upstream bytes until one event is complete and returns it as
``b"data: {...}\\n\\n"`` (comments and ``event:`` lines are dropped; the payload bytes are the
upstream's unless the id is rewritten). The text, finish reason, usage and time to first token are
accumulated into ``outcome`` on the way. ``aclose()`` closes the upstream connection, so the upstream
server sees the request go away and stops generating; a stream read to its end returns its connection
to the pool instead.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Protocol

import aiohttp

from vlmops.serve.chat_backend import ChatOutcome
from vlmops.serve.chat_format import with_id
from vlmops.serve.errors import ApiError

DONE = b"data: [DONE]\n\n"
MAX_EVENT_BYTES = 4 * 1024 * 1024


class Upstream(Protocol):
    """What a stream uses of its `vlmops.serve.upstream.UpstreamBackend`."""

    base_url: str
    model: str | None

    def payload(self, body: dict, stream: bool) -> dict: ...
    async def post(self, payload: dict, stream: bool, deadline: float) -> aiohttp.ClientResponse: ...
    def scrub(self, text: str) -> str: ...
    def failure(self, start: float, exc: Exception) -> ApiError: ...
    def malformed(self, what: str) -> ApiError: ...


FAILURES = (ApiError, TimeoutError, aiohttp.ClientError, OSError)  # what ends a stream as an error


class UpstreamStream:
    """One streamed chat completion from the upstream (a `ChatStream`)."""

    def __init__(self, backend: Upstream, body: dict, deadline: float, completion_id: str | None):
        self._backend = backend
        self._body = body
        self._deadline = deadline
        self._completion_id = None if completion_id is None else json.dumps(completion_id).encode()
        self._client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self._start = time.monotonic()
        self._response: aiohttp.ClientResponse | None = None
        self._chunks = None  # the body's byte chunks, once the upstream answered
        self._buffer = b""  # bytes of events not yet passed on
        self._parts: list[str] = []
        self._finished = False  # the outcome is final: [DONE] handed out, an error, or cancelled
        self._closing: asyncio.Task | None = None
        self.outcome = ChatOutcome(
            text="",
            finish_reason=None,
            tokens_in=None,
            tokens_out=None,
            ttft_s=None,
            model=str(backend.model or body.get("model") or ""),
        )

    def __aiter__(self) -> UpstreamStream:
        return self

    async def __anext__(self) -> bytes:
        if self._finished:
            await self._drain()
            raise StopAsyncIteration
        try:  # the deadline is aiohttp's total timeout of the exchange (`Upstream.post`): reads past it raise
            if self._response is None:
                await self._open()
            return await self._next_event()
        except StopAsyncIteration:
            raise
        except asyncio.CancelledError:
            self._end_soon("cancelled")  # no await: a cancelled task group would cancel that too
            raise
        except FAILURES as exc:
            if self._finished:  # aclose() from another task closed the response under this read
                raise StopAsyncIteration from None
            await self._end("error")
            raise self._backend.failure(self._start, exc) from None

    async def aclose(self) -> None:
        """Stop early: close the upstream request; the outcome is "cancelled" with the partial text."""
        if not self._finished:
            self._end_soon("cancelled")
        elif self._closing is None:
            self._closing = asyncio.ensure_future(self._close_response(reuse=False))
        await asyncio.shield(self._closing)

    async def _open(self) -> None:
        backend = self._backend
        self._response = await backend.post(backend.payload(self._body, stream=True), True, self._deadline)
        kind = self._response.headers.get("content-type", "")
        if not kind.startswith("text/event-stream"):
            raise backend.malformed(f"a streamed request was answered with content-type {kind or 'none'!r}")
        self._chunks = self._response.content.iter_any()  # bytes as they arrive (inflated if gzipped)

    async def _next_event(self) -> bytes:
        """The next event to pass on, read straight from the body's chunks (no line-by-line layers)."""
        while True:
            while (end := self._buffer.find(b"\n\n")) >= 0:
                block, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
                event = self._event(block)
                if event is not None:
                    return event
            if len(self._buffer) > MAX_EVENT_BYTES:
                raise self._backend.malformed(f"an SSE event over {MAX_EVENT_BYTES} bytes")
            chunk = await anext(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
            if b"\r" in self._buffer:  # CRLF line ends (one may straddle two chunks: the CR waits)
                self._buffer = self._buffer.replace(b"\r\n", b"\n")
        # the upstream closed the stream
        block, self._buffer = self._buffer.strip(b"\n"), b""
        if block and (event := self._event(block)) is not None:
            return event
        if self.outcome.finish_reason is None:
            raise self._backend.malformed("the stream ended before a finish_reason or [DONE]")
        await self._end("ok")
        return DONE  # an upstream that ends without [DONE]: the client still gets one

    def _event(self, block: bytes) -> bytes | None:
        """One SSE event block (its lines without the blank one): the bytes to send on, or None."""
        if block.startswith(b"data: ") and b"\n" not in block:  # the usual one-line event
            return self._pass(block[6:])
        data = [
            line[6:] if line.startswith(b"data: ") else line[5:]
            for line in block.split(b"\n")
            if line.startswith(b"data:")
        ]
        return self._pass(b"\n".join(data)) if data else None  # else a comment or event:/id: fields

    def _pass(self, data: bytes) -> bytes | None:
        """Account one event's payload; the bytes to send on, or None to drop it."""
        if data.strip() == b"[DONE]":
            self._finished = True  # the next __anext__ reads the rest, so the connection is reused
            self._sync_text()
            self.outcome.status = "ok"
            return DONE
        try:
            chunk = loads_event(data)
        except ValueError:  # not JSON, or not UTF-8 text
            raise self._backend.malformed(f"an SSE event that is not JSON: {data[:80]!r}") from None
        if not isinstance(chunk, dict):
            raise self._backend.malformed(f"an SSE event that is not a JSON object: {data[:80]!r}")
        if "error" in chunk and "choices" not in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise ApiError(
                502,
                "upstream_failed",
                f"upstream {self._backend.base_url} failed mid-stream: {self._backend.scrub(str(message))}",
            )
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise self._backend.malformed(f"a stream chunk without a 'choices' list: {data[:80]!r}")
        self._account(chunk, choices)
        if not choices and not self._client_wants_usage:
            return None  # the usage chunk we asked for on the operator's behalf
        event = b"data: " + data + b"\n\n"
        return event if self._completion_id is None else with_id(event, self._completion_id)

    def _account(self, chunk: dict, choices: list) -> None:
        if chunk.get("model"):  # what served it, as for complete()
            self.outcome.model = str(chunk["model"])
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.outcome.tokens_in = int_or_none(usage.get("prompt_tokens"))
            self.outcome.tokens_out = int_or_none(usage.get("completion_tokens"))
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # the log keeps the first choice, as for complete()
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            piece = delta.get("content")
            if isinstance(piece, str) and piece:
                if self.outcome.ttft_s is None:
                    self.outcome.ttft_s = time.monotonic() - self._start
                self._parts.append(piece)
            if choice.get("finish_reason"):
                self.outcome.finish_reason = str(choice["finish_reason"])

    def _sync_text(self) -> None:
        self.outcome.text = "".join(self._parts)

    async def _end(self, status: str) -> None:
        self._end_soon(status)
        await asyncio.shield(self._closing)

    def _end_soon(self, status: str) -> None:
        """Make the outcome final (once: the first ending wins) and start closing the upstream connection."""
        if not self._finished:
            self._finished = True
            self._sync_text()
            self.outcome.status = status
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close_response(reuse=False))

    async def _drain(self) -> None:
        """After [DONE]: read the upstream's last bytes and give the connection back to the pool (or
        close it if they take more than a second)."""
        if self._closing is None:
            reuse = False
            if self._chunks is not None:
                try:
                    async with asyncio.timeout(min(1.0, remaining(self._deadline))):
                        async for _ in self._chunks:
                            pass
                    reuse = True
                except FAILURES:
                    pass
            self._closing = asyncio.ensure_future(self._close_response(reuse))
        await asyncio.shield(self._closing)

    async def _close_response(self, reuse: bool) -> None:
        response = self._response
        if response is not None and not response.closed:
            if reuse:
                response.release()  # read to its end: the connection goes back to the pool
            else:
                response.close()  # the upstream sees the request go away


_SCAN = json.JSONDecoder().scan_once  # what json.loads runs, without its Python layers around it


def loads_event(data: bytes) -> object:
    """``json.loads(data)``: the same value or error, in half the time for an event's usual payload
    (UTF-8 text that is one JSON value, nothing around it); anything else goes through json.loads."""
    try:
        text = data.decode()
        value, end = _SCAN(text, 0)
    except (UnicodeDecodeError, StopIteration):
        return json.loads(data)
    return value if end == len(text) else json.loads(data)


def remaining(deadline: float) -> float:
    """Seconds left before `deadline` (a time.monotonic() instant); 0 means time out at once."""
    return max(0.0, deadline - time.monotonic())


def content_text(content: object) -> str:
    """A message's content as text (a string, or the text parts of a list)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def int_or_none(value: object) -> int | None:
    """`value` if it is an int (a token count), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
