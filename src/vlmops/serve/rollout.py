"""Canary and shadow for generative models: what /v1/chat/completions calls for a local model.

The rollout machinery of `Gateway` (`attach`, `route`, `end_variant`, following the registry's
aliases) does not depend on the kind of model: a variant is a `Gateway` around another model of the
same kind (`attach` refuses a generative canary beside a dual encoder). Per chat request the route does:

1. ``target = gateway.route(request_id, request.headers.get("x-route-key"))``: the canary for its share
   of traffic (sticky per route key), else the served model;
2. ``generations = await target.generate(images, prompts, ticket, max_tokens=..., temperature=...,
   seed=...)``;
3. ``await target.record_chat(PredictionRow(request_id, "chat", target.version, image_sha256s, ...),
   ChatExchange(request_id, ...))``, before answering: the row carries the version that answered, so
   feedback, monitoring and `vlmops registry canary-check` tell canary traffic from the champion's;
4. answer with ``model_version=target.version`` (the X-Model-Version header follows it);
5. after answering, ``mirror_chat(gateway, images, prompts, params, row, chat, tasks)`` when
   ``"shadow" in gateway.variants``: the shadow answers the same input, logged as
   ``<request_id>:shadow`` under its own version, never returned, never failing the request.

Rollback: clearing the registry's canary alias (`vlmops registry canary-check --rollback`, `vlmops
monitor run --rollback-canary`, or by hand) ends the canary in every server that follows the registry
(`--follow-registry N`); from then on `route` returns the served model.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from PIL import Image

from vlmops.serve.service import Gateway
from vlmops.store.log import ChatExchange, PredictionRow


def mirror_chat(
    gateway: Gateway,
    images: list[Image.Image],
    prompts: list[str],
    params: dict,
    answered: PredictionRow,
    chat: ChatExchange,
    tasks: set[asyncio.Task],
) -> asyncio.Task | None:
    """Run the shadow on an answered chat request in the background and log its answer; None without one.

    `tasks` keeps the task referenced until it ends (asyncio holds only weak references).
    """
    shadow = gateway.variants.get("shadow")
    if shadow is None:
        return None

    async def run() -> None:
        start = time.perf_counter()
        try:
            (generation,) = (await shadow.generate(images, prompts, **params))[:1]
            request_id = f"{answered.request_id}:shadow"
            row = replace(
                answered,
                request_id=request_id,
                model_version=shadow.version,
                latency_ms=(time.perf_counter() - start) * 1000,
                time=time.time(),
            )
            usage = generation.usage
            answer = replace(
                chat,
                request_id=request_id,
                model=shadow.model.info.name,
                answer=generation.text,
                finish_reason=generation.finish_reason,
                status="ok",
                stream=False,
                tokens_in=None if usage is None else usage.prompt_tokens,
                tokens_out=None if usage is None else usage.completion_tokens,
                ttft_ms=None,
            )
            await shadow.record_chat(row, answer)
        except Exception:  # a failing shadow must never affect served traffic
            gateway.metrics.rejected.labels("shadow_failed").inc()

    task = asyncio.get_running_loop().create_task(run())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task
