"""A streamed upstream answer: SSE events passed through one at a time, accounted as they pass.

Each ``__anext__`` reads upstream bytes until one event is complete and returns it as
``b"data: {...}\\n\\n"`` (comments and ``event:`` lines are dropped; the payload bytes are the
upstream's unless the id is rewritten). The text, finish reason, usage and time to first token are
accumulated into ``outcome`` on the way. ``aclose()`` closes the upstream response, so the upstream
server sees the request go away and stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Protocol

import httpx

from vlmops.serve.chat_backend import ChatOutcome
from vlmops.serve.errors import ApiError

DONE = b"data: [DONE]\n\n"
MAX_EVENT_BYTES = 4 * 1024 * 1024


class Upstream(Protocol):
    """What a stream uses of its `vlmops.serve.upstream.UpstreamBackend`."""

    base_url: str
    model: str | None
    _client: httpx.AsyncClient

    def payload(self, body: dict, stream: bool) -> dict: ...
    async def check_status(self, response: httpx.Response) -> None: ...
    def scrub(self, text: str) -> str: ...
    def unreachable(self, exc: Exception) -> ApiError: ...
    def too_slow(self, start: float, exc: Exception) -> ApiError: ...
    def malformed(self, what: str) -> ApiError: ...


class UpstreamStream:
    """One streamed chat completion from the upstream (a `ChatStream`)."""

    def __init__(self, backend: Upstream, body: dict, deadline: float, completion_id: str | None):
        self._backend = backend
        self._body = body
        self._deadline = deadline
        self._completion_id = completion_id
        self._client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self._start = time.monotonic()
        self._response: httpx.Response | None = None
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
        try:
            async with asyncio.timeout(remaining(self._deadline)):
                if self._response is None:
                    await self._open()
                return await self._next_event()
        except StopAsyncIteration:
            raise
        except asyncio.CancelledError:
            self._end_soon("cancelled")  # no await: a cancelled task group would cancel that too
            raise
        except (ApiError, TimeoutError, httpx.HTTPError, httpx.StreamError) as exc:
            if self._finished:  # aclose() from another task closed the response under this read
                raise StopAsyncIteration from None
            await self._end("error")
            raise self._api_error(exc) from None

    def _api_error(self, exc: Exception) -> ApiError:
        """The ApiError a failure while streaming maps to."""
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            return self._backend.too_slow(self._start, exc)
        if isinstance(exc, httpx.TransportError):
            return self._backend.unreachable(exc)
        return self._backend.malformed(f"{type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        """Stop early: close the upstream request; the outcome is "cancelled" with the partial text."""
        if not self._finished:
            self._end_soon("cancelled")
        elif self._closing is None:
            self._closing = asyncio.ensure_future(self._close_response())
        await asyncio.shield(self._closing)

    async def _open(self) -> None:
        backend = self._backend
        payload = backend.payload(self._body, stream=True)
        headers = {"Accept-Encoding": "identity"}  # events pass as they come, not inflated from gzip
        request = backend._client.build_request("POST", "/chat/completions", json=payload, headers=headers)
        self._response = await backend._client.send(request, stream=True)
        await backend.check_status(self._response)
        kind = self._response.headers.get("content-type", "")
        if not kind.startswith("text/event-stream"):
            raise backend.malformed(f"a streamed request was answered with content-type {kind or 'none'!r}")
        encoded = self._response.headers.get("content-encoding", "identity") != "identity"
        self._chunks = self._response.aiter_bytes() if encoded else self._response.aiter_raw()

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
            chunk = json.loads(data)
        except json.JSONDecodeError:
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
        if self._completion_id is not None:
            chunk["id"] = self._completion_id
            data = json.dumps(chunk, separators=(",", ":")).encode()
        return b"data: " + data + b"\n\n"

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
        """Make the outcome final (once: the first ending wins) and start closing the upstream response."""
        if not self._finished:
            self._finished = True
            self._sync_text()
            self.outcome.status = status
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close_response())

    async def _drain(self) -> None:
        """After [DONE]: read the upstream's last bytes (keep-alive) and close; at most a second."""
        if self._closing is None:
            if self._chunks is not None:
                try:
                    async with asyncio.timeout(min(1.0, remaining(self._deadline))):
                        async for _ in self._chunks:
                            pass
                except (TimeoutError, httpx.HTTPError):
                    pass
            self._closing = asyncio.ensure_future(self._close_response())
        await asyncio.shield(self._closing)

    async def _close_response(self) -> None:
        response = self._response
        if response is not None and not response.is_closed:
            with contextlib.suppress(httpx.HTTPError, RuntimeError):  # an already broken connection
                await response.aclose()


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
