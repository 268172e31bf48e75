"""The `openai:` adapter against a local OpenAI-compatible fake (tests/openai_fake.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image

from generative_contract import check_generative
from openai_fake import FakeServer, expected_tokens, token_logprob
from serve_helpers import free_port, png_bytes, serve_in_thread
from vlmops.errors import GenerationError, ModelLoadError
from vlmops.models import capabilities, load_model
from vlmops.models.openai_compat import OpenAICompatibleModel, RetryPolicy, parse_target

KEY = "sk-test-very-secret-123"
FAST = RetryPolicy(max_retries=3, backoff_s=0.01)


@pytest.fixture()
def fake():
    server = FakeServer(key=KEY)
    with serve_in_thread(server.app()) as port:
        server.url = f"http://127.0.0.1:{port}/v1"
        yield server


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("VLMOPS_OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def model_for(fake: FakeServer, name: str = "fake-vlm", **options) -> OpenAICompatibleModel:
    return load_model(f"openai:{name}@{fake.url}", **{"retry": FAST, **options})


def pngs_on_disk(tmp_path: Path) -> list[Path]:
    paths = []
    for i, colour in enumerate([(220, 30, 30), (30, 30, 220), (30, 200, 30), (250, 250, 250)]):
        path = tmp_path / f"{i}.png"
        path.write_bytes(png_bytes(colour, size=(24, 24)))
        paths.append(path)
    return paths


def test_uri_parsing_and_its_errors(monkeypatch):
    assert parse_target("llava@http://127.0.0.1:8000/v1/") == ("llava", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("VLMOPS_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert parse_target("llava") == ("llava", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("VLMOPS_OPENAI_BASE_URL")
    with pytest.raises(ModelLoadError, match="openai:MODEL@BASE_URL"):
        parse_target("llava")
    with pytest.raises(ModelLoadError, match="not an http"):
        parse_target("llava@ftp://host/v1")
    with pytest.raises(ModelLoadError, match="not in the URL"):
        parse_target("llava@http://user:secret@127.0.0.1/v1")


def test_contract_and_answers_from_the_pixels_sent(fake, tmp_path):
    model = model_for(fake)
    assert capabilities(model) == {"embed": False, "generate": True, "logprobs": None, "gradients": False}
    check_generative(model)
    paths = pngs_on_disk(tmp_path)
    images = [Image.open(p) for p in paths]  # raw PNGs from disk, as a user passes them
    answers = model.generate(images, ["Describe it"] * 4, max_tokens=32)
    assert [a.text for a in answers] == [
        "a red image about describe",
        "a blue image about describe",
        "a green image about describe",
        "a white image about describe",
    ]
    assert all(a.finish_reason == "stop" and a.usage.completion_tokens == 5 for a in answers)
    assert answers[0].usage.prompt_tokens == 3 and answers[0].usage.total_tokens == 8


def test_options_reach_the_server_and_logprobs_come_back(fake, tmp_path):
    model = model_for(fake)
    image = Image.open(pngs_on_disk(tmp_path)[0])
    answer = model.generate([image], ["Name it"], max_tokens=3, temperature=0.7, seed=5, logprobs=True)[0]
    body = fake.bodies[-1]
    assert (body["max_tokens"], body["temperature"], body["seed"], body["logprobs"]) == (3, 0.7, 5, True)
    assert answer.finish_reason == "length" and answer.text == "a red image"
    assert answer.tokens == ("a", " red", " image")
    assert answer.token_logprobs == tuple(token_logprob(i) for i in range(3))
    sampled = [model.generate([image], ["Name it"], temperature=1.0, seed=s)[0].text for s in (1, 1, 2, 3, 4)]
    assert sampled[0] == sampled[1], "the seed does not make sampling repeatable"
    assert sampled[0] == "".join(expected_tokens(image, "Name it", 1.0, 1))


def test_streaming_gives_the_same_answer_with_time_to_first_token(fake, tmp_path):
    images = [Image.open(p) for p in pngs_on_disk(tmp_path)]
    plain = model_for(fake).generate(images, ["Describe it"] * 4, logprobs=True)
    streamed = model_for(fake, stream=True).generate(images, ["Describe it"] * 4, logprobs=True)
    assert fake.bodies[-1]["stream"] is True and fake.bodies[-1]["stream_options"] == {"include_usage": True}
    assert [a.text for a in streamed] == [a.text for a in plain]
    assert [a.usage for a in streamed] == [a.usage for a in plain]
    assert [a.token_logprobs for a in streamed] == [a.token_logprobs for a in plain]
    for answer in streamed:
        assert answer.first_token_seconds is not None and 0 <= answer.first_token_seconds <= answer.seconds
    check_generative(model_for(fake, stream=True))


def test_concurrency_is_bounded(fake, tmp_path):
    fake.delay_s = 0.15
    image = Image.open(pngs_on_disk(tmp_path)[0])
    model_for(fake, concurrency=3).generate([image] * 9, ["Describe"] * 9)
    assert fake.max_in_flight == 3


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limits_and_server_errors_are_retried(fake, tmp_path, status):
    fake.fail_status, fake.fail_next = status, 2
    image = Image.open(pngs_on_disk(tmp_path)[0])
    assert model_for(fake).generate([image], ["Describe"])[0].text == "a red image about describe"
    assert fake.calls == 3
    fake.fail_next = 5
    with pytest.raises(GenerationError, match=rf"kept failing \(HTTP {status}.*after 3 retries"):
        model_for(fake).generate([image], ["Describe"])


def test_retry_after_is_honoured(fake, tmp_path):
    image = Image.open(pngs_on_disk(tmp_path)[0])
    fake.fail_next, fake.retry_after_ms = 1, 400
    start = time.perf_counter()
    model_for(fake).generate([image], ["Describe"])
    assert time.perf_counter() - start >= 0.4
    fake.fail_next, fake.retry_after_ms, fake.retry_after_s = 1, None, "1"
    start = time.perf_counter()
    model_for(fake).generate([image], ["Describe"])
    assert time.perf_counter() - start >= 1.0


def test_a_refused_key_is_named_but_never_shown(fake, tmp_path, monkeypatch):
    image = Image.open(pngs_on_disk(tmp_path)[0])
    monkeypatch.setenv("VLMOPS_OPENAI_API_KEY", "sk-wrong-secret-456")
    model = model_for(fake)
    with pytest.raises(GenerationError, match=r"refused the API key.*VLMOPS_OPENAI_API_KEY") as info:
        model.generate([image], ["Describe"])
    assert "sk-wrong" not in str(info.value) and "sk-wrong" not in repr(model.info.to_dict())
    assert fake.calls == 1, "a refused key must not be retried"
    monkeypatch.setenv("MY_KEY", KEY)
    assert model_for(fake, api_key_env="MY_KEY").generate([image], ["Describe"])[0].text


def test_unknown_model_unreachable_server_timeout_and_garbage(fake, tmp_path):
    image = Image.open(pngs_on_disk(tmp_path)[0])
    with pytest.raises(GenerationError, match=r"no model 'llava-x'.*/models"):
        model_for(fake, name="llava-x").generate([image], ["Describe"])
    nobody = load_model(f"openai:fake-vlm@http://127.0.0.1:{free_port()}/v1", retry=RetryPolicy(1, 0.01))
    with pytest.raises(GenerationError, match=r"cannot reach .*is the server running"):
        nobody.generate([image], ["Describe"])
    fake.delay_s = 2.0
    with pytest.raises(GenerationError, match=r"did not answer within 0\.3 s"):
        model_for(fake, timeout_s=0.3, retry=RetryPolicy(0)).generate([image], ["Describe"])
    fake.delay_s, fake.malformed = 0.0, True
    with pytest.raises(GenerationError, match="not a chat completion"):
        model_for(fake).generate([image], ["Describe"])


def test_models_info_lists_what_a_served_model_can_do(fake):
    from typer.testing import CliRunner

    from vlmops.cli import app

    result = CliRunner().invoke(app, ["models", "info", f"openai:fake-vlm@{fake.url}", "--json", "-"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout[result.stdout.index("{") :])
    assert info["capabilities"] == {"embed": False, "generate": True, "logprobs": None, "gradients": False}
    assert info["uri"] == f"openai:fake-vlm@{fake.url}" and KEY not in result.output
    bad = CliRunner().invoke(app, ["models", "info", "openai:fake-vlm@ftp://x"])
    assert bad.exit_code == 2 and "not an http(s) URL" in bad.output
