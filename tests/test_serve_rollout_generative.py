"""Canary, shadow and rollback for generative models, driven as the chat route drives them
(`Gateway.route`, `generate`, `record_chat`, `serve.rollout.mirror_chat`), without the HTTP route."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from vlmops.cli import app
from vlmops.errors import VlmopsError
from vlmops.models.base import Generation, ModelInfo, Usage
from vlmops.registry.canary import canary_check
from vlmops.registry.store import Registry
from vlmops.serve.errors import ApiError
from vlmops.serve.rollout import mirror_chat
from vlmops.serve.service import Gateway, ServeConfig
from vlmops.store.log import ChatExchange, PredictionLog, PredictionRow

PROMPT, RIGHT = "Describe this emoji.", "grinning face"


class Answers:
    """A generative model that always gives one answer (or fails)."""

    def __init__(self, version: str, text: str = RIGHT, fail: bool = False):
        self.info = ModelInfo(name=version, version=version, dim=0, uri=f"test:{version}")
        self.text, self.fail = text, fail

    def generate(self, images, prompts, *, max_tokens=32, temperature=0.0, seed=None, logprobs=False):
        if self.fail:
            raise RuntimeError("broken shadow")
        return [Generation(self.text, "stop", Usage(12, 2), 0.001) for _ in images]


def rid(i: int) -> str:
    return hashlib.sha256(f"request-{i}".encode()).hexdigest()[:32]


def gateway(url: str, model, **config) -> Gateway:
    return Gateway(model, ServeConfig(store=url, **config), PredictionLog(url), {})


async def chat(primary: Gateway, request_id: str) -> tuple[Gateway, PredictionRow, ChatExchange]:
    """What the chat route does for one request: route, generate, log under the answering version."""
    target = primary.route(request_id)
    (answer,) = await target.generate([Image.new("RGB", (8, 8))], [PROMPT], max_tokens=8)
    row = PredictionRow(request_id, "chat", target.version, ["ab" * 32], 1.0)
    exchange = ChatExchange(
        request_id, "local", target.model.info.name, [{"role": "user", "text": PROMPT}], answer.text
    )
    await target.record_chat(row, exchange)
    return target, row, exchange


def test_a_broken_generative_canary_is_rolled_back_on_feedback(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    registry = Registry(url)
    registry.register("cap-good", "test:cap-good", "a")
    registry.register("cap-broken", "test:cap-broken", "b")
    registry.promote("cap-good")
    registry.set_alias("canary", "cap-broken")
    primary = gateway(url, Answers("cap-good"), canary_share=0.5, follow_registry_s=0.1)
    primary.attach("canary", gateway(url, Answers("cap-broken", "red apple"), canary_share=0.5))
    log = PredictionLog(url)

    async def scenario() -> dict:
        await primary.start()
        try:
            served = [await chat(primary, rid(i)) for i in range(80)]
            versions = [target.version for target, _, _ in served]
            for _, row, exchange in served:  # people correct the broken answers and rate them
                right = exchange.answer == RIGHT
                log.add_feedback(
                    row.request_id, right, None if right else RIGHT, None, rating=5 if right else 1
                )
            checked = CliRunner().invoke(
                app, ["registry", "canary-check", "--rollback", "--min-feedback", "10", "--store", url]
            )
            for _ in range(100):  # the follow loop polls the registry every 0.1 s
                if not primary.variants:
                    break
                await asyncio.sleep(0.05)
            after = {primary.route(rid(1000 + i)).version for i in range(40)}
            return {"versions": versions, "checked": checked, "after": after}
        finally:
            await primary.stop()

    result = asyncio.run(scenario())
    share = result["versions"].count("cap-broken") / 80
    assert 0.3 < share < 0.7, share
    logged = {r.request_id: (r.model_version, r.answer) for r in log.chats()}
    assert {v for v, a in logged.values() if a == "red apple"} == {"cap-broken"}  # logged as who answered
    assert result["checked"].exit_code == 1 and "worse" in result["checked"].output, result["checked"].output
    assert registry.alias("canary") is None and registry.history("canary")[-1]["kind"] == "rollback"
    assert result["after"] == {"cap-good"}  # every request goes to the champion again


def test_canary_check_waits_for_enough_feedback_and_counts_only_people(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    log = PredictionLog(url)
    for i, version in enumerate(["a"] * 5 + ["b"] * 5):
        log.write_chat([(PredictionRow(rid(i), "chat", version, [], 1.0),
                         ChatExchange(rid(i), "local", version, [], "x"))])  # fmt: skip
        log.add_feedback(rid(i), version == "a", None, None)
        log.add_feedback(rid(i), False, "y", None, source="model")  # not evidence
    early = canary_check(log, "b", "a", min_feedback=10)
    assert not early.enough and not early.worse and early.judged == {"b": 5, "a": 5}
    assert early.rejected == {"b": 5, "a": 0} and early.p_worse == pytest.approx(1 / 252)  # hypergeometric
    assert canary_check(log, "b", "a", min_feedback=5).worse
    with pytest.raises(VlmopsError, match="same version"):
        canary_check(log, "a", "a")


def test_shadow_answers_are_logged_apart_and_a_failing_shadow_is_harmless(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    primary = gateway(url, Answers("cap-1"))
    primary.attach("shadow", gateway(url, Answers("cap-2", "smiling face")))
    failing = gateway(url, Answers("cap-1"))
    failing.attach("shadow", gateway(url, Answers("cap-3", fail=True)))

    async def scenario() -> None:
        for served in (primary, failing):
            await served.start()
        try:
            tasks: set[asyncio.Task] = set()
            image = [Image.new("RGB", (8, 8))]
            for i, served in enumerate((primary, failing)):
                target, row, exchange = await chat(served, rid(i))
                assert target is served  # a shadow never answers
                await mirror_chat(served, image, [PROMPT], {"max_tokens": 8}, row, exchange, tasks)
        finally:
            for served in (primary, failing):
                await served.stop()

    asyncio.run(scenario())
    rows = {
        r.request_id: (r.model_version, r.answer, json.loads(r.prompt)) for r in PredictionLog(url).chats()
    }
    assert rows[rid(0)][:2] == ("cap-1", RIGHT) and rows[f"{rid(0)}:shadow"][:2] == ("cap-2", "smiling face")
    assert rows[f"{rid(0)}:shadow"][2] == [{"role": "user", "text": PROMPT}]
    assert rows[rid(1)][:2] == ("cap-1", RIGHT) and f"{rid(1)}:shadow" not in rows
    assert 'vlmops_rejected_inputs_total{code="shadow_failed"} 1.0' in failing.metrics.render().decode()


def test_a_canary_must_be_of_the_served_kind(tmp_path, fake_model):
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    encoder = gateway(url, fake_model(version="v1"))
    with pytest.raises(VlmopsError, match="generative model"):
        encoder.attach("canary", gateway(url, Answers("cap-1")))

    async def generate_on_encoder() -> None:
        await encoder.generate([Image.new("RGB", (8, 8))], [PROMPT])

    with pytest.raises(ApiError, match="dual encoder"):
        asyncio.run(generate_on_encoder())


def test_a_generative_gateway_refuses_embedding_routes_by_name(tmp_path):
    from fastapi.testclient import TestClient

    from serve_helpers import b64, png_bytes
    from vlmops.serve.app import create_app

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    with TestClient(create_app(gateway(url, Answers("cap-1")))) as client:
        r = client.post("/v1/classify", json={"image": b64(png_bytes()), "labels": ["a", "b"]})
        assert r.status_code == 409 and r.json()["error"]["code"] == "generative_model", r.text
        assert "/v1/chat/completions" in r.json()["error"]["message"]
        r = client.post("/v1/embeddings", json={"texts": ["a"]})
        assert r.json()["error"]["code"] == "generative_model"


def test_the_chat_route_sends_the_canary_its_share_and_mirrors_the_shadow(tmp_path):
    import time

    from fastapi.testclient import TestClient

    from serve_helpers import b64, png_bytes
    from vlmops.serve.app import create_app

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    primary = gateway(url, Answers("cap-good"), canary_share=0.5)
    primary.attach("canary", gateway(url, Answers("cap-new", "red apple"), canary_share=0.5))
    primary.attach("shadow", gateway(url, Answers("cap-shadow", "yellow banana")))
    image = f"data:image/png;base64,{b64(png_bytes())}"
    with TestClient(create_app(primary)) as client:
        answers = {}
        for i in range(40):
            parts = [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": image}}]
            body = {"model": "cap-good", "messages": [{"role": "user", "content": parts}]}
            r = client.post("/v1/chat/completions", json=body, headers={"X-Route-Key": f"user-{i}"})
            assert r.status_code == 200, r.text
            answers[r.json()["id"]] = (
                r.headers["x-model-version"],
                r.json()["choices"][0]["message"]["content"],
            )
        deadline = time.time() + 10
        while time.time() < deadline and len(PredictionLog(url).chats()) < 80:
            time.sleep(0.05)  # the shadow answers in the background
    by_version = {v: a for v, a in answers.values()}
    assert by_version == {"cap-good": RIGHT, "cap-new": "red apple"}  # each side answered as itself
    assert 8 <= sum(v == "cap-new" for v, _ in answers.values()) <= 32  # about half
    logged = {r.request_id: (r.model_version, r.answer) for r in PredictionLog(url).chats()}
    for request_id, (version, text) in answers.items():
        assert logged[request_id] == (version, text)  # logged under the version that answered
        assert logged[f"{request_id}:shadow"] == ("cap-shadow", "yellow banana")  # mirrored, never returned
