"""The gateway as a proxy: /v1/chat/completions forwarded to an existing OpenAI-compatible server.

`UpstreamBackend` is the ``--upstream URL`` side of `vlmops.serve.chat_backend.ChatBackend`. One shared
`aiohttp.ClientSession` per event loop (keep-alive pool, no proxies from the environment, no
redirects; made on first use, on the loop that serves) talks to the configured base URL and nowhere
else. aiohttp rather than httpx: proxying is all this client does, and its C-accelerated HTTP parser
costs the proxy 2-3x less CPU per request and per streamed event (bench/RESULTS.md, gateway_proxy).
Only the validated request body travels upstream, never the client's headers; the upstream key comes
from the environment variable the operator names and is never put in an error, an outcome or a repr
(an upstream message that quotes it is scrubbed).

- ``complete`` returns the upstream's chat.completion JSON as it came (the ``model`` the operator
  configured replaces the client's; ``id`` is the upstream's unless ``completion_id`` is given,
  which the route passes to make the answer's id its own request id) and a `ChatOutcome`.
- ``stream`` passes the SSE events through one at a time as they arrive. It always asks upstream
  for ``stream_options.include_usage`` so tokens can be logged, and drops the usage-only chunk again
  when the client did not ask for it (client code that reads ``chunk.choices[0]`` would break).
- Nothing is retried: a generation is not idempotent and the client's SDK has its own retries.

Errors are `ApiError`: unreachable → 502, slower than the deadline → 504, an upstream 4xx → the same
status with the upstream's message (a 429 keeps its Retry-After), 5xx, a redirect or a malformed
answer → 502. A streamed answer raises them from the first ``__anext__`` when nothing was sent yet
(the route can still answer with that status); later, from the ``__anext__`` where it happened, with
``outcome.status == "error"`` and the partial text kept.

How a route holds it (create it once per process, in the lifespan; ``await backend.aclose()`` at
shutdown)::

    stream = backend.stream(body, deadline, completion_id=our_id)
    first = await stream.__anext__()        # an ApiError here still becomes an HTTP status

    async def events():
        try:
            yield first
            async for event in stream:      # an ApiError here: send a `data: {"error": ...}` event
                yield event
        finally:
            await stream.aclose()          # a disconnect cancels the upstream request
            log(stream.outcome)            # "ok", "cancelled" (partial text) or "error"
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp

from vlmops.errors import VlmopsError
from vlmops.serve.chat_backend import ChatOutcome
from vlmops.serve.errors import ApiError
from vlmops.serve.upstream_stream import UpstreamStream, content_text, int_or_none, remaining

MAX_ANSWER_BYTES = 32 * 1024 * 1024  # a chat completion larger than this is a broken upstream
MAX_ERROR_BYTES = 64 * 1024
PASSED_HEADERS = ("retry-after", "retry-after-ms")


class UpstreamConfigError(VlmopsError):
    """The --upstream URL or its key variable is unusable."""


def check_base_url(base_url: str) -> str:
    """The base URL without a trailing slash, or `UpstreamConfigError` naming the fix."""
    try:
        parsed = urlsplit(base_url)
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise UpstreamConfigError(f"--upstream {base_url!r} is not a URL ({exc})") from exc
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UpstreamConfigError(
            f"--upstream {base_url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1"
        )
    if parsed.username is not None or parsed.password is not None:
        raise UpstreamConfigError(
            "--upstream: put the upstream key in an environment variable (--upstream-key-env), "
            "not in the URL (it would be logged)"
        )
    return base_url.rstrip("/")


class UpstreamBackend:
    """Answers chat completions by forwarding them to an OpenAI-compatible server at `base_url`."""

    mode = "upstream"

    def __init__(
        self,
        base_url: str,
        *,
        api_key_env: str | None = None,
        model: str | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        max_connections: int = 256,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.base_url = check_base_url(base_url)
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.max_answer_bytes = max_answer_bytes
        self._key = None
        if api_key_env:
            self._key = os.environ.get(api_key_env)
            if not self._key:
                raise UpstreamConfigError(
                    f"--upstream-key-env names {api_key_env}, which is not set; export it with the "
                    "upstream's API key, or leave the option out for an upstream without keys"
                )
        self._headers = {"Content-Type": "application/json"}
        if self._key:
            self._headers["Authorization"] = f"Bearer {self._key}"
        # connect: getting a connection (pool wait + TCP/TLS); sock_read: the longest silence while an
        # answer arrives. The request's own deadline bounds the whole exchange (`exchange_timeout`).
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=min(connect_timeout_s, timeout_s), sock_read=timeout_s
        )
        self._max_connections = max_connections
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    def __repr__(self) -> str:
        return f"UpstreamBackend({self.base_url!r}, model={self.model!r})"

    def session(self) -> aiohttp.ClientSession:
        """The running loop's session (made on first use: aiohttp binds a pool to its loop)."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = self._sessions[loop] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=self._timeout,
                trust_env=False,  # no HTTP(S)_PROXY: the only host this client talks to is base_url's
            )
        return session

    async def aclose(self) -> None:
        """Close the connection pool of the running loop (the gateway's shutdown)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()

    async def stop(self) -> None:
        """The gateway's shutdown hook (`Gateway.stop`): close the pool."""
        await self.aclose()

    def exchange_timeout(self, deadline: float) -> aiohttp.ClientTimeout:
        """aiohttp's timeouts for one exchange ending by `deadline`: the time left as its total, which
        aiohttp applies to connecting, sending and every read of the answer until the response is
        released (one timer per exchange, where an ``asyncio.timeout`` per streamed event cost a timer
        per event); the connect timeout; and the longest silence only where it is shorter than the time
        left (else it could never fire first, and re-arming it on every chunk read is waste). Raises
        TimeoutError when no time is left (a total of 0 would mean no limit to aiohttp)."""
        left = remaining(deadline)
        if left <= 0:
            raise TimeoutError("the request's deadline passed before it was sent upstream")
        read = self._timeout.sock_read
        return aiohttp.ClientTimeout(
            total=left,
            connect=self._timeout.connect,
            sock_read=read if read is not None and read < left else None,
            ceil_threshold=math.inf,  # to the deadline itself, not rounded up to a whole second
        )

    async def post(self, payload: dict, stream: bool, deadline: float) -> aiohttp.ClientResponse:
        """POST `payload` to the chat endpoint; the response once its status is 2xx (else its ApiError).
        The caller reads the body and releases (or closes) the response; reading it past `deadline`
        raises TimeoutError."""
        timeout = self.exchange_timeout(deadline)
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {**self._headers, "Accept-Encoding": "identity"} if stream else self._headers
        response = await self.session().post(
            self.url, data=body, headers=headers, allow_redirects=False, timeout=timeout
        )
        try:
            await self.check_status(response)
        except BaseException:
            response.close()
            raise
        return response

    def payload(self, body: dict, stream: bool) -> dict:
        """The JSON sent upstream: the client's body, the configured model, usage asked for when streaming."""
        payload = dict(body)
        if self.model:
            payload["model"] = self.model
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return payload

    async def complete(
        self, body: dict, deadline: float, *, completion_id: str | None = None
    ) -> tuple[dict, ChatOutcome]:
        """A non-streamed answer: the upstream's chat.completion JSON and what to log."""
        start = time.monotonic()
        try:
            response = await self.post(self.payload(body, False), stream=False, deadline=deadline)
            try:
                chunks = response.content.iter_any()
                raw = await _read_capped(chunks, self.max_answer_bytes, self.base_url)
            except BaseException:
                response.close()
                raise
            response.release()
        except ApiError:
            raise
        except Exception as exc:  # not a CancelledError (BaseException): that passes, response closed
            raise self.failure(start, exc) from None
        answer = self.parse_answer(raw)
        if completion_id is not None:
            answer["id"] = completion_id
        choice = answer["choices"][0] if answer["choices"] else {}
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        outcome = ChatOutcome(
            text=content_text(choice.get("message", {}).get("content")),
            finish_reason=choice.get("finish_reason"),
            tokens_in=int_or_none(usage.get("prompt_tokens")),
            tokens_out=int_or_none(usage.get("completion_tokens")),
            ttft_s=None,  # not observable without streaming
            model=str(answer.get("model") or self.model or body.get("model") or ""),
        )
        return answer, outcome

    def stream(self, body: dict, deadline: float, *, completion_id: str | None = None) -> UpstreamStream:
        """A streamed answer whose events are passed through as the upstream sends them."""
        return UpstreamStream(self, body, deadline, completion_id)

    # -- error mapping, shared with the stream -------------------------------------------------------

    def scrub(self, text: str) -> str:
        """`text` with the upstream key (if any upstream message quotes it) blanked out."""
        return text.replace(self._key, "[upstream key]") if self._key else text

    async def check_status(self, response: aiohttp.ClientResponse) -> None:
        """Raise the ApiError an upstream answer that is not 2xx maps to."""
        status = response.status
        if 200 <= status < 300:
            return
        if 300 <= status < 400:
            where = self.scrub(response.headers.get("location", "?"))
            raise ApiError(
                502,
                "upstream_redirect",
                f"upstream {self.base_url} redirected (HTTP {status} to {where}); the gateway does not "
                "follow redirects: the operator should configure the final URL with --upstream",
            )
        try:
            raw = await _read_capped(response.content.iter_any(), MAX_ERROR_BYTES, self.base_url)
        except (ApiError, aiohttp.ClientError):
            raw = b""
        message, code = error_message(raw, response.reason or f"HTTP {status}")
        message = self.scrub(message)
        if status >= 500:
            raise ApiError(
                502, "upstream_failed", f"upstream {self.base_url} failed (HTTP {status}: {message})"
            )
        headers = {h: response.headers[h] for h in PASSED_HEADERS if h in response.headers}
        if status in (401, 403):
            message += " (the gateway's upstream key was refused: the operator must fix it)"
        raise ApiError(status, code or "upstream_refused", f"upstream: {message}", headers)

    def failure(self, start: float, exc: Exception) -> ApiError:
        """The ApiError a failure of the client (not an upstream status) maps to."""
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, TimeoutError):  # the deadline, or aiohttp's connect/read timeouts
            return self.too_slow(start, exc)
        if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | OSError):
            return self.unreachable(exc)
        return self.malformed(f"{type(exc).__name__}: {exc}")

    def unreachable(self, exc: Exception) -> ApiError:
        """The 502 for a transport failure (refused, reset, closed early)."""
        detail = self.scrub(f"{type(exc).__name__}: {exc}".rstrip(": "))
        if isinstance(exc, aiohttp.ClientConnectorError):
            return ApiError(502, "upstream_unreachable", f"upstream {self.base_url} unreachable: {detail}")
        return ApiError(502, "upstream_dropped", f"upstream {self.base_url} dropped the connection: {detail}")

    def too_slow(self, start: float, exc: Exception) -> ApiError:
        """The 504 for an upstream that did not answer before the request's deadline."""
        waited = time.monotonic() - start
        return ApiError(
            504,
            "upstream_timeout",
            f"upstream {self.base_url} did not answer within the request's deadline "
            f"({waited:.1f} s, {type(exc).__name__}); retry later or with a smaller max_tokens",
        )

    def malformed(self, what: str) -> ApiError:
        """The 502 for an answer that is not an OpenAI chat completion."""
        return ApiError(
            502,
            "upstream_malformed",
            f"upstream {self.base_url} sent a malformed answer ({self.scrub(what)}); "
            "is it an OpenAI-compatible server's /v1?",
        )

    def parse_answer(self, raw: bytes) -> dict:
        """The chat.completion JSON in `raw`, checked for the fields clients read."""
        try:
            answer = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise self.malformed(f"not JSON: {exc}; it began {raw[:60]!r}") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise self.malformed("no 'choices' list")
        for i, choice in enumerate(answer["choices"]):
            if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
                raise self.malformed(f"choices[{i}] has no 'message' object")
        return answer


async def _read_capped(chunks: AsyncIterator[bytes], limit: int, base_url: str) -> bytes:
    """A response body from its `chunks`, refusing one longer than `limit` bytes while it arrives."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ApiError(
                502, "upstream_malformed", f"upstream {base_url} sent an answer over {limit} bytes"
            )
        parts.append(chunk)
    return b"".join(parts)


def error_message(raw: bytes, fallback: str) -> tuple[str, str | None]:
    """(message, code) from an error body in the shapes servers use, else its text.

    OpenAI and llama.cpp nest ``{"error": {"message", "code"|"type"}}``; Ollama sends
    ``{"error": "..."}``; vLLM ``{"message", "type", "code": 400}``; FastAPI ``{"detail": ...}``.
    """
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        where = error if isinstance(error, dict) else body
        message = where.get("message") or (error if isinstance(error, str) else None) or body.get("detail")
        if message:
            code = next((c for c in (where.get("code"), where.get("type")) if isinstance(c, str) and c), None)
            return str(message)[:500], code
    text = raw.decode("utf-8", "replace").strip()
    return (text[:500] or fallback), None
