"""The last line of defence: an exception no handler knew becomes a JSON 500 on a usable connection.

Starlette's own catch-all (ServerErrorMiddleware) answers and then re-raises, so uvicorn logs the error
a second time and closes the socket under a client that was told nothing (no ``Connection: close``),
and its answer sits outside `GatewayMiddleware`, so it lacks X-Request-ID and X-Model-Version. This
handler runs inside `GatewayMiddleware`: it logs the traceback once, sends the gateway's JSON
error body (the ids come from the layer above) and returns normally, so the connection stays open.
`GatewayMiddleware` calls it for anything its app raises (one layer, not two, around every request).
"""

from __future__ import annotations

import logging

from vlmops.serve.errors import error_json

logger = logging.getLogger("vlmops.serve")


async def answer_unexpected(scope, exc: Exception, send, started: bool) -> None:
    """Log `exc` (which escaped the app) with its traceback and answer ``500 internal_error``.

    `started`: part of the answer was sent already; then nothing honest is left to send, and the error
    is raised again so that uvicorn closes the connection.
    """
    request_id = scope.get("state", {}).get("request_id")
    logger.error(
        "unexpected error in %s %s (request %s)",
        scope["method"],
        scope["path"],
        request_id,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    if started:
        raise exc
    body = error_json(
        500,
        "internal_error",
        f"the server failed on this request ({type(exc).__name__}); it was logged as {request_id}",
        request_id,
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})
