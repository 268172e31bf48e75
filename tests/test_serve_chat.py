"""/v1/chat/completions served by a local generative model (builtin:emoji-captioner), tested with the
official `openai` client against a real uvicorn server on loopback: answers, streaming, batching,
bad inputs, scopes, the exchange log, a client leaving mid-stream, and kill -9 under load."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from PIL import Image
from typer.testing import CliRunner

from serve_helpers import free_port, make_app, random_png, serve_in_thread, start_server
from vlmops.cli import app as cli
from vlmops.models import load_model
from vlmops.serve.app import create_app
from vlmops.serve.chat_backend import ChatOutcome
from vlmops.serve.errors import ApiError
from vlmops.serve.keys import KeyStore
from vlmops.serve.loadgen import build_request, run_load
from vlmops.serve.service import Gateway, ServeConfig
from vlmops.store.log import PredictionLog

PROMPT = "Describe this emoji with keywords."
PRICE_IN, PRICE_OUT = 2.0, 8.0  # USD per 1M tokens


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def user(data: bytes, text: str = PROMPT, images: int = 1) -> list[dict]:
    parts = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": data_url(data)}}] * images
    return [{"role": "user", "content": parts}]


def image_of(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.fixture(scope="module")
def captioner():
    return load_model("builtin:emoji-captioner")


@pytest.fixture(scope="module")
def served(tmp_path_factory, captioner):
    """(openai client, port, key, store url) of a server with prompt redaction and prices on."""
    tmp = tmp_path_factory.mktemp("chat")
    app, key, url = make_app(
        tmp,
        captioner,
        label_sets_obj={},
        vocabulary_obj=(),
        redact_prompts=True,
        price_in=PRICE_IN,
        price_out=PRICE_OUT,
    )
    with serve_in_thread(app) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        yield client, port, key, url


def test_answers_equal_direct_generation_streamed_or_not_under_concurrency(served, captioner):
    client, *_ = served
    images = [random_png(seed) for seed in range(8)]
    direct = [captioner.generate([image_of(d)], [PROMPT], max_tokens=12, temperature=0)[0] for d in images]

    def ask(i: int):
        messages = user(images[i])
        if i % 2:
            stream = client.chat.completions.create(
                model="emoji-captioner",
                messages=messages,
                max_tokens=12,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            ids = {c.id for c in chunks}
            return text, finish[0], chunks[-1].usage, ids
        answer = client.chat.completions.create(
            model="emoji-captioner", messages=messages, max_completion_tokens=12, temperature=0
        )
        return answer.choices[0].message.content, answer.choices[0].finish_reason, answer.usage, {answer.id}

    with ThreadPoolExecutor(8) as pool:  # concurrent: they share generate calls
        results = list(pool.map(ask, range(8)))
    for generation, (text, finish, usage, ids) in zip(direct, results, strict=True):
        assert text == generation.text and finish == generation.finish_reason
        assert usage.prompt_tokens == generation.usage.prompt_tokens
        assert usage.completion_tokens == generation.usage.completion_tokens
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        assert len(ids) == 1 and len(next(iter(ids))) == 32  # every chunk carries the request id


def test_n_choices_with_a_seed_equal_direct_sampling(served, captioner):
    client, *_ = served
    data = random_png(11)
    answer = client.chat.completions.create(
        model="emoji-captioner", messages=user(data), n=3, temperature=1.5, seed=7, max_tokens=10
    )
    direct = captioner.generate([image_of(data)] * 3, [PROMPT] * 3, max_tokens=10, temperature=1.5, seed=7)
    assert [c.message.content for c in answer.choices] == [g.text for g in direct]
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert answer.usage.completion_tokens == sum(g.usage.completion_tokens for g in direct)
    assert answer.usage.prompt_tokens == direct[0].usage.prompt_tokens
    stream = client.chat.completions.create(
        model="emoji-captioner",
        messages=user(data),
        n=3,
        temperature=1.5,
        seed=7,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, chunks = ["", "", ""], list(stream)
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [g.text for g in direct] and chunks[-1].usage == answer.usage


def test_top_p_is_nucleus_sampling(served, captioner):
    client, *_ = served
    data = random_png(12)
    greedy = captioner.generate([image_of(data)], [PROMPT], max_tokens=10, temperature=0)[0].text
    narrow = client.chat.completions.create(  # a nucleus of one token: sampling gives the greedy answer
        model="emoji-captioner", messages=user(data), temperature=1.0, top_p=1e-4, seed=3, max_tokens=10
    )
    assert narrow.choices[0].message.content == greedy
    half = client.chat.completions.create(
        model="emoji-captioner", messages=user(data), temperature=1.0, top_p=0.5, seed=3, max_tokens=10, n=2
    )
    direct = captioner.generate(
        [image_of(data)] * 2, [PROMPT] * 2, max_tokens=10, temperature=1.0, top_p=0.5, seed=3
    )
    assert [c.message.content for c in half.choices] == [g.text for g in direct]


def test_stop_sequences_cut_the_answer(served, captioner):
    client, *_ = served
    data = random_png(3)
    full = captioner.generate([image_of(data)], [PROMPT], max_tokens=12, temperature=0)[0].text
    words = full.split()
    assert len(words) >= 2, full
    for stream in (False, True):
        response = client.chat.completions.create(
            model="emoji-captioner",
            messages=user(data),
            max_tokens=12,
            temperature=0,
            stop=[words[1], "never-there"],
            stream=stream,
        )
        if stream:
            chunks = list(response)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = chunks[-1].choices[0].finish_reason
        else:
            text, finish = response.choices[0].message.content, response.choices[0].finish_reason
        assert text == full[: full.index(words[1])] and finish == "stop"


def test_logprobs_are_the_models(served, captioner):
    client, *_ = served
    data = random_png(5)
    answer = client.chat.completions.create(
        model="emoji-captioner", messages=user(data), temperature=0, logprobs=True, max_tokens=8
    )
    generation = captioner.generate([image_of(data)], [PROMPT], max_tokens=8)[0]
    content = answer.choices[0].logprobs.content
    assert [t.token for t in content] == list(generation.tokens)
    assert [t.logprob for t in content] == pytest.approx(generation.token_logprobs, abs=1e-4)


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"messages": [{"role": "user", "content": PROMPT}]}, 422, ["one image_url part"]),
        ({"url": "https://example.com/cat.png"}, 422, ["send the image as a data: URL"]),
        ({"url": "data:image/png;base64,@@not base64@@"}, 422, ["not valid base64"]),
        ({"url": data_url(b"not an image")}, 415, ["not an image"]),
        ({"presence_penalty": 0.5}, 422, ["unsupported field", "presence_penalty"]),
        ({"tools": []}, 422, ["unsupported field", "tools"]),
        ({"images": 2}, 422, ["exactly one image", "got 2"]),
        ({"images": 40}, 413, ["40 images", "limit is 32"]),
        ({"model": "gpt-4o"}, 404, ["emoji-captioner", "gpt-4o"]),
        ({"top_logprobs": 3, "logprobs": True}, 422, ["top_logprobs"]),
        ({"n": 17}, 422, ["n"]),
        ({"temperature": 3}, 422, ["temperature"]),
        ({"stream_options": {"include_usage": True}}, 422, ["stream: true"]),
        (
            {"messages": [*user(random_png(1)), {"role": "assistant", "content": "x"}]},
            422,
            ["one question about one image"],
        ),
    ],
)
def test_bad_inputs_get_a_clear_4xx(served, change, status, words):
    _, port, key, _ = served
    body = {"model": "emoji-captioner", "messages": user(random_png(1)), "max_tokens": 4}
    change = dict(change)
    if "url" in change:
        body["messages"][0]["content"][1]["image_url"]["url"] = change.pop("url")
    if "images" in change:
        body["messages"] = user(random_png(1), images=change.pop("images"))
    body.update(change)
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == status, r.text
    if status != 200:
        message = r.json()["error"]["message"]
        assert all(w in message for w in words), message
        assert r.json()["request_id"] == r.headers["x-request-id"]
        assert not PredictionLog(served[3]).has_request(r.headers["x-request-id"])  # refused: no exchange


def test_the_dual_encoder_routes_say_to_use_chat(served):
    _, port, key, _ = served
    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"texts": ["a cat"]}, headers=headers)
    assert r.status_code == 409 and "/v1/chat/completions" in r.json()["error"]["message"]


def test_the_openai_client_raises_on_refusals(served):
    client, *_ = served
    with pytest.raises(openai.UnprocessableEntityError, match="data: URL"):
        client.chat.completions.create(
            model="emoji-captioner",
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}
            ],
        )


def test_auth_and_the_chat_scope(served):
    _, port, _, url = served
    keys = KeyStore(url)
    base = f"http://127.0.0.1:{port}/v1"
    request = {"model": "emoji-captioner", "messages": user(random_png(2)), "max_tokens": 4}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="vlm_nope", max_retries=0).chat.completions.create(**request)
    predict_only = openai.OpenAI(base_url=base, api_key=keys.create("p", scopes="predict"), max_retries=0)
    with pytest.raises(openai.PermissionDeniedError, match="'chat' scope"):
        predict_only.chat.completions.create(**request)
    default = openai.OpenAI(base_url=base, api_key=keys.create("client"), max_retries=0)
    assert default.chat.completions.create(**request).choices[0].message.content is not None
    listed = default.models.list()
    assert [m.id for m in listed.data] == ["emoji-captioner"]


def test_every_exchange_is_logged_with_its_fields(served, captioner):
    client, _, _, url = served
    data = random_png(21)
    secret = "mail jane.doe@example.com " + PROMPT
    raw = client.chat.completions.with_raw_response.create(
        model="emoji-captioner",
        messages=[{"role": "system", "content": "You name emoji."}, *user(data, secret)],
        temperature=0,
        max_tokens=12,
    )
    answer = raw.parse()
    stream = client.chat.completions.create(
        model="emoji-captioner", messages=user(data), temperature=0, max_tokens=12, stream=True
    )
    streamed_id = {c.id for c in stream}.pop()
    rows = {r.request_id: r for r in PredictionLog(url).chats()}
    row = rows[answer.id]
    assert answer.id == raw.headers["x-request-id"]
    assert row.endpoint == "chat" and row.mode == "local" and row.status == "ok" and not row.stream
    assert row.key_id is not None and row.model_version == captioner.info.version
    assert json.loads(row.input_sha256) == [hashlib.sha256(data).hexdigest()]
    stats = json.loads(row.image_stats)[0]
    assert stats["width"] == 48 and stats["format"] == "PNG" and stats["bytes"] == len(data)
    prompt = json.loads(row.prompt)
    assert row.prompt_redacted and "jane.doe@example.com" not in row.prompt and "[EMAIL]" in row.prompt
    assert [m["role"] for m in prompt] == ["system", "user"] and PROMPT in prompt[1]["text"]
    assert row.answer == answer.choices[0].message.content and row.finish_reason == "stop"
    assert (row.tokens_in, row.tokens_out) == (answer.usage.prompt_tokens, answer.usage.completion_tokens)
    assert row.cost_usd == pytest.approx((row.tokens_in * PRICE_IN + row.tokens_out * PRICE_OUT) / 1e6)
    assert 0 < row.ttft_ms <= row.latency_ms
    assert json.loads(row.params) == {"temperature": 0.0, "max_tokens": 12, "n": 1, "logprobs": False}
    streamed = rows[streamed_id]
    assert streamed.stream and streamed.status == "ok" and streamed.answer
    assert 0 < streamed.ttft_ms <= streamed.latency_ms


class SlowCaptioner:
    """builtin:emoji-captioner whose every decoding step takes 0.1 s (counted), to leave mid-answer."""

    exposes_logprobs = True

    def __init__(self, model) -> None:
        self.model, self.info, self.steps = model, model.info, 0

    def generate(self, images, prompts, *, max_tokens=32, temperature=0.0, seed=None, logprobs=False,
                 should_stop=None, on_text=None):  # fmt: skip
        def slow(i: int) -> bool:
            if i == 0:
                self.steps += 1
                time.sleep(0.1)
            return should_stop(i) if should_stop is not None else False

        return self.model.generate(
            images,
            prompts,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            should_stop=slow,
            on_text=on_text,
        )


def test_a_client_leaving_mid_stream_stops_the_generation_and_logs_the_partial_answer(tmp_path, captioner):
    slow = SlowCaptioner(captioner)
    data = random_png(4)
    full = slow.generate([image_of(data)], [PROMPT], max_tokens=20)[0].text
    full_steps, slow.steps = slow.steps, 0
    assert full_steps >= 10 and len(full.split()) >= 4, full  # several words: time to leave midway
    app, key, url = make_app(tmp_path, slow, label_sets_obj={}, vocabulary_obj=())
    with serve_in_thread(app) as port:
        body = {"model": "emoji-captioner", "messages": user(data), "max_tokens": 20, "stream": True}
        body["temperature"] = 0
        headers = {"Authorization": f"Bearer {key}"}
        received = ""
        with httpx.stream(
            "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as response:
            request_id = response.headers["x-request-id"]
            for line in response.iter_lines():  # words arrive while the model decodes
                if line.startswith("data: {"):
                    received += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                if received:
                    break  # the first word; then the client goes away
        assert received and full.startswith(received) and received != full, (received, full)
        deadline = time.time() + 10
        log = PredictionLog(url)
        while not log.has_request(request_id) and time.time() < deadline:
            time.sleep(0.1)
        row = {r.request_id: r for r in log.chats()}[request_id]
        time.sleep(0.5)  # a generation that was not stopped would keep counting steps
    assert row.status == "cancelled" and row.stream and row.finish_reason is None
    assert row.answer == received  # the partial answer, as far as it was sent
    assert slow.steps < full_steps - 2, (slow.steps, full_steps)  # the generation stopped early


class RecordingModel:
    """A generative model that answers with its prompt and records the prompts of every call."""

    def __init__(self, model) -> None:
        self.info, self.calls = model.info, []

    def generate(self, images, prompts, *, max_tokens=32, temperature=0.0, seed=None, logprobs=False):
        from vlmops.models.base import Generation, Usage

        self.calls.append(list(prompts))
        time.sleep(0.05)
        return [Generation(p, "stop", Usage(1, 1), 0.05) for p in prompts]


def test_local_batches_take_one_request_per_key_in_turn(captioner):
    from vlmops.serve.admission import REQUEST_OWNER
    from vlmops.serve.chat_local import LocalBackend

    model = RecordingModel(captioner)

    async def main():
        backend = LocalBackend(model, ThreadPoolExecutor(1), max_batch=2, fill_when_idle_ms=0)
        await backend.start()

        async def ask(owner: str, prompt: str):
            REQUEST_OWNER.set(owner)
            body = {"model": "emoji-captioner", "messages": user(random_png(1), prompt), "temperature": 0}
            return await backend.complete(body, time.monotonic() + 30)

        tasks = [asyncio.create_task(ask("a", f"a{i}")) for i in range(6)]
        await asyncio.sleep(0.01)  # key a's backlog is queued first
        tasks.append(asyncio.create_task(ask("b", "b0")))
        await asyncio.gather(*tasks)
        await backend.stop()

    asyncio.run(main())
    # the first batch ran before b's request came; the next takes b's next to a's, not a's backlog
    assert "b0" in model.calls[1], model.calls


class BrokenCaptioner:
    """A generative model that fails on every call."""

    def __init__(self, model) -> None:
        self.info = model.info

    def generate(self, images, prompts, *, max_tokens=32, temperature=0.0, seed=None, logprobs=False):
        raise RuntimeError("the model broke")


def test_a_failing_model_is_a_500_or_an_error_event_and_a_logged_error(tmp_path, captioner):
    app, key, url = make_app(tmp_path, BrokenCaptioner(captioner), label_sets_obj={}, vocabulary_obj=())
    with serve_in_thread(app) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        request = {"model": "emoji-captioner", "messages": user(random_png(1)), "max_tokens": 4}
        with pytest.raises(openai.InternalServerError, match="RuntimeError"):
            client.chat.completions.create(**request)
        with pytest.raises(openai.APIError, match="RuntimeError"):
            list(client.chat.completions.create(**request, stream=True))
    rows = PredictionLog(url).chats()
    assert [(r.status, r.stream, r.answer) for r in rows] == [("error", False, ""), ("error", True, "")]


class UnreachableBackend:
    """A ChatBackend whose upstream never answers (the route must not care which backend it has)."""

    mode = "upstream"

    async def complete(self, body, deadline):
        raise ApiError(502, "upstream_unreachable", "the upstream at http://10.0.0.1 did not answer")

    def stream(self, body, deadline):
        return self

    def __aiter__(self):
        self.outcome = ChatOutcome("", None, None, None, None, "gpt-x", status="error")
        return self

    async def __anext__(self):
        raise ApiError(502, "upstream_unreachable", "the upstream at http://10.0.0.1 did not answer")

    async def aclose(self):
        pass


def test_a_backend_failing_before_its_first_event_gets_an_http_status_and_a_logged_error(tmp_path, captioner):
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    gateway = Gateway(captioner, ServeConfig(store=url), PredictionLog(url), {})
    gateway.chat = UnreachableBackend()
    with serve_in_thread(create_app(gateway)) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        request = {"model": "gpt-x", "messages": user(random_png(1)), "max_tokens": 4}
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError, match="did not answer") as caught:
                client.chat.completions.create(**request, stream=stream)
            assert caught.value.status_code == 502
    rows = PredictionLog(url).chats()
    assert [(r.status, r.mode, r.model, r.stream) for r in rows] == [
        ("error", "upstream", "gpt-x", False),
        ("error", "upstream", "gpt-x", True),
    ]


@pytest.mark.parametrize(
    ("option", "words"),
    [(["--gallery", "g/"], ["--gallery", "dual encoder"]), (["--runtime", "onnx"], ["--runtime torch"])],
)
def test_serve_refuses_dual_encoder_options_for_a_generative_model_in_one_line(tmp_path, option, words):
    args = ["serve", "--model", "builtin:emoji-captioner", "--port", str(free_port()), *option]
    result = CliRunner().invoke(cli, [*args, "--store", str(tmp_path / "s.sqlite")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert all(w in " ".join(result.output.split()) for w in words), result.output


@pytest.fixture
def stop_later():
    procs = []
    yield procs.append
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_served_captioner_loses_no_acknowledged_exchange_to_kill_9(tmp_path, stop_later):
    proc, port = start_server(
        tmp_path,
        "--model",
        "builtin:emoji-captioner",
        "--insecure-no-auth",
        "--workers",
        "1",
        resources=False,
    )
    stop_later(proc)
    body = {"model": "emoji-captioner", "messages": user(random_png(9)), "max_tokens": 8, "temperature": 0}
    request = build_request("127.0.0.1", port, "/v1/chat/completions", body)

    def kill_soon():
        time.sleep(3.0)
        os.kill(proc.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    result = asyncio.run(run_load("127.0.0.1", port, request, 16, 50_000, 20.0, collect_ids=True))
    killer.join()
    proc.wait(10)
    assert len(result.request_ids) > 20 and result.errors > 0, result.summary()
    logged = {r.request_id for r in PredictionLog(str(tmp_path / "store.sqlite")).chats()}
    missing = set(result.request_ids) - logged
    assert not missing, f"{len(missing)} acknowledged exchanges are missing from the log"
