"""The FastAPI application: routes, authentication, rate limits, error rendering.

Each /v1 route parses its body (JSON with base64 images, or multipart with image files), asks the
`Gateway` for the prediction, writes the log row durably, and only then answers. Every answer,
error or not, carries the request id and the model version (body and X- headers).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlmops.errors import StoreError
from vlmops.serve import schemas
from vlmops.serve.admission import Ticket
from vlmops.serve.browser import add_dashboard_routes
from vlmops.serve.errors import ApiError
from vlmops.serve.feedback import verdict
from vlmops.serve.heap import freeze_startup_heap
from vlmops.serve.keys import ApiKey
from vlmops.serve.limits import RateLimiter
from vlmops.serve.middleware import GatewayMiddleware, error_json
from vlmops.serve.parsing import body_doc, check_texts, describe, parse_body
from vlmops.serve.service import Gateway, sha256_hex
from vlmops.store.log import PredictionRow, RequestOwner

ERRORS = {
    code: {"model": schemas.ErrorResponse} for code in (401, 403, 404, 409, 413, 415, 422, 429, 503, 504)
}


def answer(body: dict) -> Response:
    """A JSON answer serialised once: the route's response_model documents it, and FastAPI does not
    validate and re-encode a Response (the bodies are built to the schema; tests check them against it)."""
    text = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(text.encode(), media_type="application/json")


def may_give_feedback(key: ApiKey | None, owner: RequestOwner) -> bool:
    """Feedback binds to the request's key: the same key, a key of the same tenant, or no auth at all."""
    if key is None:
        return True
    return owner.key_id == key.key_id or (key.tenant is not None and owner.tenant == key.tenant)


def create_app(gateway: Gateway, keys=None) -> FastAPI:
    """The ASGI app around a Gateway. `keys`: a callable token -> ApiKey | None (None = no auth)."""
    config, limits = gateway.config, gateway.config.limits
    limiter = RateLimiter(gateway.shared_buckets)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await gateway.start()
        freeze_startup_heap()  # full collections skip the model and libraries (serve.heap)
        _app.state.ready = True
        yield
        _app.state.ready = False
        await gateway.stop()

    # redirect_slashes off: Starlette builds that redirect from the request's Host header (an open redirect)
    app = FastAPI(
        title="vlmops gateway", version="1", lifespan=lifespan, responses=ERRORS, redirect_slashes=False
    )
    app.state.ready = False
    app.state.gateway = gateway

    def error_response(request: Request, exc: ApiError) -> JSONResponse:
        if exc.status in (413, 415, 422):
            gateway.metrics.rejected.labels(exc.code).inc()
        request_id = request.scope.get("state", {}).get("request_id")
        body = json.loads(error_json(exc.status, exc.code, exc.message, request_id))
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error_response(request, ApiError(422, "invalid_request", describe(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        path = request.url.path
        message = f"{exc.detail}: {request.method} {path}; the API is described at /openapi.json"
        if exc.status_code == 404 and path.endswith("/") and path.rstrip("/") in route_paths:
            message = f"{exc.detail}: {request.method} {path}; did you mean {path.rstrip('/')} (no '/')?"
        return error_response(request, ApiError(exc.status_code, code, message, dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # pragma: no cover - GatewayMiddleware
        return error_response(request, ApiError(500, "internal_error", f"{type(exc).__name__}: {exc}"))

    async def authorise(request: Request, scope: str | None = None) -> ApiKey | None:  # async: no thread hop
        """The request's API key, checked: known, active, under its rate, holding `scope`."""
        if keys is None:
            return None
        header = request.headers.get("authorization", "")
        token = (
            header[7:].strip()
            if header.lower().startswith("bearer ")
            else request.headers.get("x-api-key", "")
        )
        if not token:
            raise ApiError(
                401,
                "missing_key",
                "send an API key: 'Authorization: Bearer vlm_...' (vlmops keys create)",
                {"WWW-Authenticate": "Bearer"},
            )
        key = keys(token)
        if key is None:
            raise ApiError(
                401, "invalid_key", "the API key is unknown or revoked", {"WWW-Authenticate": "Bearer"}
            )
        try:
            wait = limiter.check(key.key_id, key.rate_per_s, key.burst)
        except StoreError as exc:  # the database of replica-shared rate limits (Postgres) is down
            raise ApiError(503, "overloaded", f"{exc}; retry shortly", {"Retry-After": "1"}) from exc
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"key {key.key_id} is over {key.rate_per_s:g} requests/s",
                {"Retry-After": str(max(1, round(wait)))},
            )
        if scope is not None and not key.allows(scope):
            raise ApiError(
                403,
                "missing_scope",
                f"key {key.key_id} lacks the '{scope}' scope that {request.url.path} needs "
                f"(it has: {','.join(key.scopes)}); create one with `vlmops keys create --scopes {scope}`",
            )
        return key

    def needs(scope: str | None):
        async def dependency(request: Request) -> ApiKey | None:
            return await authorise(request, scope)

        return dependency

    predict_key, feedback_key, admin_key, any_key = (needs(s) for s in ("predict", "feedback", "admin", None))

    def admit(request: Request, key: ApiKey | None) -> Ticket:
        """Admit the request (counted from its arrival, before its body was read) for its key."""
        # without keys, each client address is budgeted on its own
        client = request.client.host if request.client else "anonymous"
        owner = key.key_id if key is not None else client
        ticket = gateway.admit(owner, request.scope["state"].get("arrival"), budgeted=key is not None)

        async def gone() -> None:  # called only after the body was read: the next message is the end
            while (await request.receive())["type"] != "http.disconnect":
                await asyncio.sleep(0.05)

        ticket.watch = gone
        # GatewayMiddleware releases it when the request ends, however it ends: a plain dependency (no
        # generator, so no exit stack and cancel scope per request)
        request.scope["state"]["ticket"] = ticket
        return ticket

    async def admitted(request: Request, key: ApiKey | None = Depends(predict_key)) -> Ticket:
        """`admit` as a dependency of the predict routes."""
        return admit(request, key)

    fast_routes: dict[str, Callable] = {}  # POST path -> its pure-ASGI handler, called by GatewayMiddleware

    def hot_route(path: str, request_model: type, response_model: type):
        """Register a predict route twice over: as a pure-ASGI handler that `GatewayMiddleware` calls
        directly, so a request skips Starlette's routing and exception middleware and FastAPI's dependency
        solving (~0.3 ms of the ~1.2 ms of CPU the gateway spends per request: bench/RESULTS.md); and as
        the FastAPI route that documents it in /openapi.json (and serves it if reached through the router).
        Both run the same `core(request, key, ticket)` after the same key check and admission."""

        def register(core: Callable[[Request, ApiKey | None, Ticket], Awaitable[Response]]):
            async def route(
                request: Request,
                key: ApiKey | None = Depends(predict_key),
                ticket: Ticket = Depends(admitted),
            ):
                return await core(request, key, ticket)

            route.__doc__ = core.__doc__
            app.post(
                path,
                name=core.__name__,
                response_model=response_model,
                openapi_extra=body_doc(request_model),
            )(route)

            async def asgi(scope, receive, send) -> None:
                request = Request(scope, receive)
                try:
                    key = await authorise(request, "predict")
                    response = await core(request, key, admit(request, key))
                except ApiError as exc:
                    response = error_response(request, exc)
                await response(scope, receive, send)

            fast_routes[path] = asgi
            return core

        return register

    def row(
        request: Request,
        key: ApiKey | None,
        endpoint: str,
        hashes,
        start: float,
        version: str | None = None,
        **kw,
    ) -> PredictionRow:
        return PredictionRow(
            request_id=request.scope["state"]["request_id"],
            endpoint=endpoint,
            model_version=version or gateway.version,
            input_sha256=hashes,
            latency_ms=(time.perf_counter() - start) * 1000,
            key_id=None if key is None else key.key_id,
            **kw,
        )

    def ids(request: Request, target: Gateway | None = None) -> dict:
        version = (target or gateway).version
        request.scope["state"]["model_version"] = version  # the X-Model-Version header follows the answer
        return {"request_id": request.scope["state"]["request_id"], "model_version": version}

    shadow_tasks: set[asyncio.Task] = set()

    def mirror(shadow: Gateway, image, label_set, top_k: int, answered: PredictionRow) -> None:
        """Run the shadow model on the same input after the answer; log it, never return it or fail."""

        async def run() -> None:
            start = time.perf_counter()
            try:
                embedding, prediction = await shadow.classify(image, label_set, top_k)
                await shadow.record(
                    PredictionRow(
                        f"{answered.request_id}:shadow",
                        "classify",
                        shadow.version,
                        answered.input_sha256,
                        (time.perf_counter() - start) * 1000,
                        answered.key_id,
                        embedding,
                        prediction,
                        prediction["confidence"],
                        image_stats=answered.image_stats,
                    )
                )
            except Exception:  # a failing shadow must never affect served traffic
                gateway.metrics.rejected.labels("shadow_failed").inc()

        task = asyncio.get_running_loop().create_task(run())
        shadow_tasks.add(task)
        task.add_done_callback(shadow_tasks.discard)

    async def one_image(images: list[bytes], ticket: Ticket) -> tuple[Image.Image, dict, str]:
        """The request's one image: its pixels, statistics and sha256."""
        if len(images) != 1:
            raise ApiError(422, "bad_image", f"send exactly one image, got {len(images)}")
        decoded = await gateway.decode(images[0], "image", ticket)
        return decoded.image, decoded.describe(), decoded.sha256

    @hot_route("/v1/embeddings", schemas.EmbeddingsRequest, schemas.EmbeddingsResponse)
    async def embeddings(request: Request, key: ApiKey | None, ticket: Ticket) -> Response:
        """Embed images and/or texts (L2-normalised vectors)."""
        t0 = time.perf_counter()
        body, raw = await parse_body(request, schemas.EmbeddingsRequest)
        texts = body.texts
        if not raw and not texts:
            raise ApiError(422, "empty_request", "give at least one image or text")
        if len(raw) > limits.max_images or len(texts) > limits.max_texts:
            raise ApiError(
                413, "too_many_inputs", f"at most {limits.max_images} images and {limits.max_texts} texts"
            )
        check_texts(texts, limits.max_text_chars)
        decoded = [await gateway.decode(data, f"images[{i}]", ticket) for i, data in enumerate(raw)]
        images, image_stats = [d.image for d in decoded], [d.stats for d in decoded]
        vectors = []
        if images:
            vectors.append(await gateway.image_embeddings(images, ticket))
        if texts:
            vectors.append(await gateway.text_embeddings(texts, ticket=ticket))
        matrix = np.concatenate(vectors)
        kinds = ["image"] * len(images) + ["text"] * len(texts)
        hashes = [d.sha256 for d in decoded] + [sha256_hex(t.encode()) for t in texts]
        await gateway.record(
            row(
                request, key, "embeddings", hashes, t0, embedding=matrix, texts=texts, image_stats=image_stats
            )
        )
        data = [
            {"index": i, "kind": k, "embedding": v.tolist()}
            for i, (k, v) in enumerate(zip(kinds, matrix, strict=True))
        ]
        return answer({**ids(request), "dim": int(matrix.shape[1]), "data": data})

    @hot_route("/v1/classify", schemas.ClassifyRequest, schemas.ClassifyResponse)
    async def classify(request: Request, key: ApiKey | None, ticket: Ticket) -> Response:
        """Zero-shot classification over given labels or a named label set; a conformal set if calibrated."""
        t0 = time.perf_counter()
        body, raw = await parse_body(request, schemas.ClassifyRequest)
        label_set = gateway.label_set_for(body.labels, body.label_set, body.template)
        image, stats, digest = await one_image(raw, ticket)
        target = gateway.route(request.scope["state"]["request_id"], request.headers.get("x-route-key"))
        embedding, prediction = await target.classify(image, label_set, body.top_k, ticket)
        answered = row(
            request,
            key,
            "classify",
            [digest],
            t0,
            embedding=embedding,
            prediction=prediction,
            confidence=prediction["confidence"],
            version=target.version,
            image_stats=[stats],
        )
        await target.record(answered)
        if "shadow" in gateway.variants:
            mirror(gateway.variants["shadow"], image, label_set, body.top_k, answered)
        return answer({**ids(request, target), **prediction})

    @hot_route("/v1/search", schemas.SearchRequest, schemas.SearchResponse)
    async def search(request: Request, key: ApiKey | None, ticket: Ticket) -> Response:
        """Top-k gallery records for a text or image query."""
        t0 = time.perf_counter()
        body, raw = await parse_body(request, schemas.SearchRequest)
        if gateway.gallery is None:
            raise ApiError(
                409,
                "no_gallery",
                "this server has no gallery; start it with --gallery DIR (vlmops index build)",
            )
        if (body.text is None) == (not raw):
            raise ApiError(422, "bad_query", "give exactly one of 'text' or 'image'")
        if body.text is not None:
            check_texts([body.text], limits.max_text_chars)
            query, digest, texts = (
                (await gateway.text_embeddings([body.text], ticket=ticket))[0],
                sha256_hex(body.text.encode()),
                [body.text],
            )
            image_stats = []
        else:
            image, stats, digest = await one_image(raw, ticket)
            query, texts = (await gateway.image_embeddings([image], ticket))[0], []
            image_stats = [stats]
        hits = gateway.search(query, body.top_k)
        await gateway.record(
            row(
                request,
                key,
                "search",
                [digest],
                t0,
                embedding=query,
                texts=texts,
                image_stats=image_stats,
                prediction={"hits": [h["id"] for h in hits]},
                confidence=hits[0]["score"] if hits else None,
            )
        )
        return answer({**ids(request), "hits": hits})

    @hot_route("/v1/tag", schemas.TagRequest, schemas.TagResponse)
    async def tag(request: Request, key: ApiKey | None, ticket: Ticket) -> Response:
        """Keywords from the server's vocabulary and an alt text for an image."""
        t0 = time.perf_counter()
        body, raw = await parse_body(request, schemas.TagRequest)
        image, stats, digest = await one_image(raw, ticket)
        target = gateway.route(request.scope["state"]["request_id"], request.headers.get("x-route-key"))
        embedding, result = await target.tag(image, body.top_k, ticket)
        await target.record(
            row(
                request,
                key,
                "tag",
                [digest],
                t0,
                embedding=embedding,
                prediction=result,
                confidence=result["tags"][0]["score"],
                version=target.version,
                image_stats=[stats],
            )
        )
        return answer({**ids(request, target), **result})

    @app.post("/v1/feedback", response_model=schemas.FeedbackResponse)
    async def feedback(request: Request, key: ApiKey | None = Depends(feedback_key)):
        """A verdict on an earlier request of the same key (or tenant): accepted, or the right label; on a
        chat completion, a rating and/or the corrected answer."""
        body, _ = await parse_body(request, schemas.FeedbackRequest)
        loop = asyncio.get_running_loop()
        owner = await loop.run_in_executor(None, gateway.log.request_owner, body.request_id)
        if owner is None or not may_give_feedback(key, owner):  # another key's request reads as unknown
            raise ApiError(
                404,
                "unknown_request",
                f"no logged request {body.request_id!r}; use the request_id of a response",
            )
        row = verdict(body, owner.endpoint)
        feedback_id = await loop.run_in_executor(
            None,
            lambda: gateway.log.add_feedback(
                body.request_id,
                row.accepted,
                row.label,
                None if key is None else key.key_id,
                body.source,
                rating=row.rating,
            ),
        )
        return {"request_id": body.request_id, "feedback_id": feedback_id}

    @app.get("/v1/models", response_model=schemas.ModelsResponse)
    async def models(key: ApiKey | None = Depends(any_key)):
        """The served model, its runtime, label sets, calibration, gallery and vocabulary size."""
        return gateway.describe()

    @app.get("/healthz")
    async def healthz():
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        """Readiness: the model is loaded and the batchers run."""
        if not app.state.ready:
            raise ApiError(503, "not_ready", "the model is still loading", {"Retry-After": "1"})
        return {"status": "ready", "model_version": gateway.version}

    def render_dashboard() -> str:
        from vlmops.report.dashboard import render_dashboard

        return render_dashboard(config.store)

    add_dashboard_routes(app, keys, authorise, render_dashboard)
    if gateway.chat is not None:
        from vlmops.serve.chat_routes import add_chat_routes

        fetch = None
        if config.allow_image_hosts:  # http(s) image URLs from these hosts only, fetched SSRF-safe
            from vlmops.serve.image_fetch import fetch_image

            async def fetch(url: str, field: str) -> bytes:
                return await fetch_image(
                    url, config.allow_image_hosts, limits.max_body_bytes, config.timeout_s, field=field
                )

        add_chat_routes(
            app, gateway, gateway.chat, authorise, admit, answer, fetch, fast_routes, error_response
        )

    @app.get("/metrics")
    async def metrics(key: ApiKey | None = Depends(admin_key)):
        """Prometheus metrics."""
        for kind, batcher in (("image", gateway.images), ("text", gateway.texts)):
            gateway.metrics.queue_depth.labels(kind).set(batcher.depth)
        return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    route_paths = {getattr(r, "path", None) for r in app.routes}
    app.add_middleware(
        GatewayMiddleware,
        routes=fast_routes,
        metrics=gateway.metrics,
        model_version=gateway.version,
        max_body_bytes=limits.max_body_bytes,
        release=gateway.release,
    )
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    return app
