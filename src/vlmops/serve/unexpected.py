"""The last line of defence: an exception no handler knew becomes a JSON 500 on a usable connection.

Starlette's own catch-all (ServerErrorMiddleware) answers and then re-raises, so uvicorn logs the error
a second time and closes the socket under a client that was told nothing (no ``Connection: close``),
and its answer sits outside `GatewayMiddleware`, so it lacks X-Request-ID and X-Model-Version. This
middleware sits just inside `GatewayMiddleware`: it logs the traceback once, sends the gateway's JSON
error body (the ids come from the layer above) and returns normally, so the connection stays open.
"""

from __future__ import annotations

import logging

from vlmops.serve.middleware import error_json

logger = logging.getLogger("vlmops.serve")


class UnexpectedErrorMiddleware:
    """Turns any exception that escapes the app into ``500 internal_error`` (logged with its traceback)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request_id = scope.get("state", {}).get("request_id")
            logger.exception(
                "unexpected error in %s %s (request %s)", scope["method"], scope["path"], request_id
            )
            if started:  # part of an answer is out: nothing honest is left to send; uvicorn closes
                raise
            body = error_json(
                500,
                "internal_error",
                f"the server failed on this request ({type(exc).__name__}); it was logged as {request_id}",
                request_id,
            )
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body})
