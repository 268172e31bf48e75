"""POST /v1/chat/completions, OpenAI-compatible, over any `ChatBackend` (a local model or an upstream).

The route does what every backend shares: the API key (scope ``chat``), admission and deadline, the
body's validation, the images (data: URLs; http(s) only through an operator's fetcher), their sha256
and statistics (and the archive with --keep-images), the request id as the answer's ``id``, and the
log. A non-streamed exchange is written durably before its answer leaves; a streamed one before its
final ``data: [DONE]`` event, or, when the client goes away mid-stream, as ``cancelled`` with the text
sent so far (the backend's work is stopped at once). A backend that fails (a timeout, a broken model, an
unreachable upstream) leaves a row with status ``error``. What only the log needs (the images'
statistics, the logged prompt) is worked out while the backend answers, after the request has gone
out; the checks (the full decode of every image included) all run before it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from vlmops.audit.pii import redact_text
from vlmops.serve import chat_format as fmt
from vlmops.serve.admission import REQUEST_OWNER, Ticket
from vlmops.serve.chat_backend import ChatBackend, ChatOutcome, ChatStream
from vlmops.serve.chat_messages import (
    as_data_url,
    data_url_bytes,
    image_refs,
    single_turn_prompt,
    transcript,
)
from vlmops.serve.chat_schemas import ChatRequest
from vlmops.serve.errors import ApiError
from vlmops.serve.keys import ApiKey
from vlmops.serve.parsing import body_doc, parse_body
from vlmops.serve.rollout import mirror_chat
from vlmops.serve.service import Decoded, Gateway
from vlmops.store.log import ChatExchange, PredictionRow

PATH = "/v1/chat/completions"
_CONTENT = re.compile(rb'"content":\s*"[^"]')  # a chunk with text in it
logger = logging.getLogger("vlmops.serve")
FetchImage = Callable[[str, str], Awaitable[bytes]]  # (url, field name) -> image bytes


@dataclass
class _Exchange:
    """What the route knows about one exchange before the answer: enough to log it however it ends."""

    request_id: str
    key: ApiKey | None
    start: float  # perf_counter at arrival
    request: ChatRequest
    images: list[Decoded]
    mode: str
    version: str | None
    prompt: list[dict] | None = None  # the transcript as logged (PII-redacted if configured), by `prepare`


def add_chat_routes(
    app: FastAPI,
    gateway: Gateway,
    backend: ChatBackend,
    authorise: Callable[[Request, str | None], Awaitable[ApiKey | None]],
    admit: Callable[[Request, ApiKey | None], Ticket],
    respond: Callable[[dict], object],
    fetch_image: FetchImage | None = None,
    fast_routes: dict[str, Callable] | None = None,
    error_response: Callable[[Request, ApiError], Response] | None = None,
) -> None:
    """Add POST /v1/chat/completions answered by `backend`; with `fast_routes` (and the app's
    `error_response`) also as a pure-ASGI handler that `GatewayMiddleware` calls directly, so a request,
    and every event of a streamed answer, skips Starlette's routing and exception middleware."""
    config, limits = gateway.config, gateway.config.limits

    shadows: set[asyncio.Task] = set()  # the shadow's answers still running (referenced until done)

    async def chat_key(request: Request) -> ApiKey | None:
        return await authorise(request, "chat")

    def prepare(exchange: _Exchange) -> None:
        """The log's work that needs only the request: the images' statistics and the logged prompt
        (redacted if configured). Run while the backend answers; `record` runs whatever is missing."""
        for image in exchange.images:
            image.describe()
        if exchange.prompt is None:
            prompt = transcript(exchange.request)
            if config.redact_prompts:
                prompt = [{**m, "text": redact_text(m["text"])} for m in prompt]
            exchange.prompt = prompt

    def prepare_quietly(exchange: _Exchange) -> None:
        with contextlib.suppress(Exception):  # `record` runs it again and then fails loudly
            prepare(exchange)

    async def record(exchange: _Exchange, outcome: ChatOutcome, ttft_s: float | None) -> None:
        """Write the exchange (its requests row and chat row in one transaction), durably."""
        latency_ms = (time.perf_counter() - exchange.start) * 1000
        request = exchange.request
        prepare(exchange)
        prompt = exchange.prompt
        tokens_in, tokens_out = outcome.tokens_in, outcome.tokens_out
        cost = ((tokens_in or 0) * config.price_in + (tokens_out or 0) * config.price_out) / 1e6
        row = PredictionRow(
            request_id=exchange.request_id,
            endpoint="chat",
            model_version=exchange.version or outcome.model,
            input_sha256=[d.sha256 for d in exchange.images],
            latency_ms=latency_ms,
            key_id=None if exchange.key is None else exchange.key.key_id,
            image_stats=[d.stats for d in exchange.images],
        )
        chat = ChatExchange(
            request_id=exchange.request_id,
            mode=exchange.mode,
            model=outcome.model,
            prompt=prompt,
            answer=outcome.text,
            status=outcome.status,
            finish_reason=outcome.finish_reason if outcome.status == "ok" else None,
            stream=request.stream,
            prompt_redacted=config.redact_prompts,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            ttft_ms=latency_ms if ttft_s is None else ttft_s * 1000,
            cost_usd=cost,
            params=request.params(),
        )
        await gateway.record_chat(row, chat)
        return row, chat

    async def record_failure(exchange: _Exchange, exc: Exception) -> None:
        """A timeout, a failing model or upstream (not a refused request) is logged as an error."""
        if not isinstance(exc, ApiError) or exc.status >= 500:
            failed = ChatOutcome("", None, None, None, None, exchange.request.model, status="error")
            with contextlib.suppress(ApiError):
                await record(exchange, failed, None)

    @app.post(PATH, openapi_extra=body_doc(ChatRequest))
    async def chat_completions(request: Request, key: ApiKey | None = Depends(chat_key)):
        """OpenAI-compatible chat completion about images (text and image_url parts), streamed or not."""
        return await answer_chat(request, key)

    if fast_routes is not None and error_response is not None:

        async def asgi(scope, receive, send) -> None:
            request = Request(scope, receive)
            try:
                response = await answer_chat(request, await authorise(request, "chat"))
            except ApiError as exc:
                response = error_response(request, exc)
            await response(scope, receive, send)

        fast_routes[PATH] = asgi

    async def answer_chat(request: Request, key: ApiKey | None):
        state = request.scope["state"]
        ticket = admit(request, key)
        parsed, _ = await parse_body(request, ChatRequest)
        body = parsed.model_dump(exclude_unset=True)
        refs = image_refs(parsed)
        if len(refs) > limits.max_images:
            raise ApiError(
                413, "too_many_images", f"{len(refs)} images, the limit is {limits.max_images} per request"
            )
        images = []
        for ref in refs:
            if ref.is_http and fetch_image is not None:
                data = await fetch_image(ref.url, ref.field)
                body["messages"][ref.message]["content"][ref.part]["image_url"]["url"] = as_data_url(data)
            else:
                data = data_url_bytes(ref)
            images.append(await gateway.decode(data, ref.field, ticket, describe=False))
        ticket.admission.take_items(ticket, parsed.n)
        # a canary answers its share of traffic (sticky per X-Route-Key), under its own version
        target = gateway.route(state["request_id"], request.headers.get("x-route-key"))
        answering = target.chat if target is not gateway and target.chat is not None else backend
        version = getattr(answering, "version", None)
        if answering is not backend:  # the client named the served model; the canary answers as itself
            body["model"] = answering.model.info.name
        if version:
            state["model_version"] = version
        exchange = _Exchange(
            state["request_id"], key, state.get("arrival", time.perf_counter()), parsed, images,
            answering.mode, version,
        )  # fmt: skip
        deadline = time.monotonic() + ticket.remaining()
        REQUEST_OWNER.set(ticket.owner)  # the backend's batches take one request per key in turn
        # The log's own work (image statistics, the logged prompt) runs one loop turn after the backend's
        # first await: by then the upstream request is written (aiohttp writes it from a task of its
        # own) or queued for the model, so it costs the answer nothing.
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, prepare_quietly, exchange)
        if parsed.stream:
            stream = answering.stream(body, deadline)
            events = aiter(stream)
            try:  # a failure before the first event still gets its HTTP status
                first = await anext(events)
            except Exception as exc:
                await stream.aclose()
                await record_failure(exchange, exc)
                raise
            return ChatStreamResponse(stream, events, first, exchange, record)
        try:
            answer, outcome = await answering.complete(body, deadline)
        except Exception as exc:
            await record_failure(exchange, exc)
            raise
        answer["id"] = exchange.request_id
        row, chat = await record(exchange, outcome, None)
        if "shadow" in gateway.variants and len(exchange.images) == 1:  # after the answer is logged
            params = {"max_tokens": parsed.token_limit() or 32, "temperature": parsed.temperature or 0.0,
                      "seed": parsed.seed}  # fmt: skip
            images = [exchange.images[0].image]
            mirror_chat(gateway, images, [single_turn_prompt(parsed)], params, row, chat, shadows)
        return respond(answer)


class ChatStreamResponse(Response):
    """An SSE answer that logs its exchange before ``[DONE]``, and as cancelled when the client leaves."""

    def __init__(self, stream: ChatStream, events, first: bytes, exchange: _Exchange, record) -> None:
        self.status_code, self.background = 200, None  # no super().__init__: there is no body to render
        self.stream, self.events, self.first = stream, events, first
        self.exchange, self.record = exchange, record
        self.id_json = json.dumps(exchange.request_id).encode()
        self.ttft_s: float | None = None
        self.logged = False
        self.answered = False  # [DONE] and the end of the answer were sent

    async def __call__(self, scope, receive, send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        pump = asyncio.ensure_future(self._pump(send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
            if self.answered and not pump.done():  # the client has it all (so `gone` may be done):
                await pump  # the pump only reads the upstream's last bytes, to pool its connection
        finally:
            gone.cancel()
            if not pump.done():  # the client went away (or this request is being cancelled)
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
                await self.stream.aclose()
                await self._log(self.stream.outcome, "cancelled")
        error = pump.exception() if pump.done() and not pump.cancelled() else None
        if error is not None:
            await self._log(self.stream.outcome, "error")
            raise error

    async def _pump(self, send) -> None:
        try:
            event = self.first
            while event is not None and event != fmt.DONE:
                await send({"type": "http.response.body", "body": self._stamp(event), "more_body": True})
                event = await anext(self.events, None)
            if event is not None:
                await self._log(self.stream.outcome, "ok")  # durable before the client hears DONE
        except ApiError as exc:  # the answer has started: the error goes in the stream
            await self._fail(send, exc.code, exc.message)
            event = None
        except Exception as exc:  # a bug or a failing model: logged with its traceback, told as a 500 is
            rid = self.exchange.request_id
            logger.error("chat stream %s failed", rid, exc_info=(type(exc), exc, exc.__traceback__))
            message = f"the server failed on this request ({type(exc).__name__}); it was logged as {rid}"
            await self._fail(send, "internal_error", message)
            event = None
        if event is None:  # an error event was sent, or the stream ended without [DONE]
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        self.answered = True  # [DONE] and the end of the answer in one message, before anything else:
        await send({"type": "http.response.body", "body": event, "more_body": False})
        await self._drain()  # then the stream's own end (an upstream's last bytes, its connection pooled)

    async def _drain(self) -> None:
        """Read the stream past [DONE] to its end (an upstream's connection goes back to its pool)."""
        try:
            async for _ in self.events:
                pass
        except Exception:  # the client has its whole answer; nothing to tell it
            logger.warning("chat stream %s failed after [DONE]", self.exchange.request_id, exc_info=True)

    async def _fail(self, send, code: str, message: str) -> None:
        """End the stream with an error event (what OpenAI clients raise) and log the exchange as an error."""
        body = {"error": {"code": code, "message": message}, "request_id": self.exchange.request_id}
        await send({"type": "http.response.body", "body": fmt.sse(body), "more_body": True})
        with contextlib.suppress(ApiError):  # the log is down: the client has been told already
            await self._log(self.stream.outcome, "error")

    def _stamp(self, event: bytes) -> bytes:
        """The chunk with the request id as its id (spliced in, see `fmt.with_id`); notes the time of
        the first content."""
        if not event.startswith(b"data: {"):
            return event
        if self.ttft_s is None and _CONTENT.search(event):
            self.ttft_s = time.perf_counter() - self.exchange.start
        return fmt.with_id(event, self.id_json)

    async def _log(self, outcome: ChatOutcome, status: str) -> None:
        if self.logged:
            return
        self.logged = True
        outcome.status = status
        await self.record(self.exchange, outcome, self.ttft_s)


async def _disconnected(receive) -> None:
    """Returns when the client has closed the connection (the request body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
