"""Pure ASGI middleware: request ids, the body size limit, and per-request metrics.

Pure ASGI (not BaseHTTPMiddleware) so it adds no task per request and can stop an oversized body
while it streams in, before the application buffers it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from vlmops.serve.errors import ApiError, error_json
from vlmops.serve.metrics import GatewayMetrics
from vlmops.serve.unexpected import answer_unexpected

KNOWN_PATHS = frozenset(
    {
        "/v1/embeddings",
        "/v1/classify",
        "/v1/search",
        "/v1/tag",
        "/v1/feedback",
        "/v1/chat/completions",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/dashboard",
        "/docs",
    }
)


class GatewayMiddleware:
    """Assigns X-Request-ID, stamps X-Model-Version, enforces max body bytes, records metrics, answers
    an unexpected error with a JSON 500 and releases the request's admission ticket when it ends.

    `routes` maps a POST path to a pure-ASGI handler that serves it instead of the app below (the hot
    /v1 routes: see `vlmops.serve.app.create_app`)."""

    def __init__(
        self,
        app,
        metrics: GatewayMetrics,
        model_version: str,
        max_body_bytes: int,
        release: Callable | None = None,
        routes: dict[str, Callable] | None = None,
    ) -> None:
        self.app, self.metrics = app, metrics
        self.routes = routes if routes is not None else {}  # POST path -> pure-ASGI handler (hot routes)
        self.model_version, self.max_body = model_version, max_body_bytes
        self.release = release  # called with scope["state"]["ticket"] when a request that took one ends

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        request_id = os.urandom(16).hex()  # as unique as uuid4, without building a UUID object
        scope.setdefault("state", {}).update(request_id=request_id, arrival=start)  # deadlines start here
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        state = scope["state"]
        status_box = {"status": 500, "started": False}

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status_box["status"], status_box["started"] = message["status"], True
                version = state.get("model_version", self.model_version)  # a canary answer names the canary
                extra = [(b"x-request-id", request_id.encode()), (b"x-model-version", version.encode())]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._too_large(send_with_headers, request_id, int(declared))
        else:
            received = 0

            async def limited_receive():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:  # a streamed body without Content-Length
                        self.metrics.rejected.labels("body_too_large").inc()
                        raise ApiError(413, "body_too_large", self._too_large_message(received))
                return message

            hot = self.routes.get(scope["path"]) if scope["method"] == "POST" else None
            try:
                await (hot or self.app)(scope, limited_receive, send_with_headers)
            except Exception as exc:
                await answer_unexpected(scope, exc, send_with_headers, status_box["started"])
            finally:
                ticket = state.pop("ticket", None)
                if ticket is not None and self.release is not None:
                    self.release(ticket)
        status = status_box["status"]
        version = state.get("model_version", self.model_version)  # canary and champion counted apart
        self.metrics.requests.labels(path, str(status), version).inc()
        self.metrics.latency.labels(path, version).observe(time.perf_counter() - start)

    def _too_large_message(self, size: int) -> str:
        return (
            f"request body of {size} bytes is over the limit of {self.max_body}; send smaller or fewer images"
        )

    async def _too_large(self, send, request_id: str, size: int) -> None:
        self.metrics.rejected.labels("body_too_large").inc()
        body = error_json(413, "body_too_large", self._too_large_message(size), request_id)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
