"""Any OpenAI-compatible chat-completions server as a generative VLM: ``openai:MODEL@BASE_URL``.

vLLM, Ollama, llama.cpp's server, LM Studio and hosted APIs all speak ``POST {base}/chat/completions``
with images as ``image_url`` parts, so one adapter covers them. Examples::

    load_model("openai:llava-hf/llava-1.5-7b-hf@http://127.0.0.1:8000/v1")   # vLLM
    load_model("openai:gpt-4o-mini@https://api.openai.com/v1")                # key from the environment

Images travel as PNG data URLs (converted to RGB first, as everywhere in vlmops). The API key comes
from an environment variable (``VLMOPS_OPENAI_API_KEY``, else ``OPENAI_API_KEY``, or the one named by
``api_key_env``) and is never part of the URI, the model's identity, an error message or a report.

Requests run ``concurrency`` at a time. Rate limits (429) and server errors (5xx), timeouts and dropped
connections are retried with exponential back-off that honours ``Retry-After`` / ``retry-after-ms``;
a refused key, an unknown model, a server that cannot be reached and an answer that is not a chat
completion are reported as `GenerationError` naming the fix.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from PIL import Image

from vlmops.errors import GenerationError, ModelLoadError
from vlmops.models.base import Generation, ModelInfo, Usage, check_generation_inputs
from vlmops.models.preprocess import to_rgb

KEY_VARIABLES = ("VLMOPS_OPENAI_API_KEY", "OPENAI_API_KEY")
BASE_URL_VARIABLES = ("VLMOPS_OPENAI_BASE_URL", "OPENAI_BASE_URL")
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before asking again."""

    max_retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0

    def wait_s(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds to wait before retry number `attempt` (0-based): the server's hint, else back-off."""
        hinted = _retry_after_s(response) if response is not None else None
        if hinted is not None:
            return min(hinted, MAX_RETRY_AFTER_S)
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)


def _retry_after_s(response: httpx.Response) -> float | None:
    """The wait a 429/503 answer asks for: ``retry-after-ms`` (OpenAI) or ``Retry-After`` in seconds."""
    for header, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = response.headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue  # an HTTP date: rare from APIs, fall back to our own back-off
    return None


def parse_target(target: str) -> tuple[str, str]:
    """``MODEL@BASE_URL`` (or ``MODEL`` with the base URL in the environment) -> (model, base URL)."""
    model, sep, base_url = target.partition("@")
    if not sep:
        base_url = next((os.environ[v] for v in BASE_URL_VARIABLES if os.environ.get(v)), "")
    if not model or not base_url:
        raise ModelLoadError(
            f"openai:{target} names no {'model' if not model else 'server'}; use "
            "openai:MODEL@BASE_URL, e.g. openai:llava@http://127.0.0.1:8000/v1 "
            f"(or set {BASE_URL_VARIABLES[0]} and write openai:MODEL)"
        )
    parsed = httpx.URL(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ModelLoadError(
            f"openai:{target}: {base_url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1"
        )
    if parsed.userinfo:
        raise ModelLoadError(
            f"openai:{model}@...: put the API key in {KEY_VARIABLES[0]}, not in the URL (it would be logged)"
        )
    return model, base_url.rstrip("/")


def data_url(image: Image.Image) -> str:
    """`image` as an RGB PNG data URL, the form every OpenAI-compatible server accepts."""
    buffer = io.BytesIO()
    to_rgb(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class OpenAICompatibleModel:
    """A chat-completions endpoint answering prompts about images."""

    exposes_logprobs = None  # depends on the server: known once it answers a request with logprobs

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key_env: str | None = None,
        concurrency: int = 4,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        stream: bool = False,
        transport: httpx.BaseTransport | None = None,
    ):
        if concurrency < 1:
            raise ModelLoadError(f"concurrency must be at least 1, got {concurrency}")
        self.model, self.base_url = model, base_url
        self.concurrency, self.stream = concurrency, stream
        self.retry = retry or RetryPolicy()
        variables = (api_key_env,) if api_key_env else KEY_VARIABLES
        self._key_variable = variables[0]
        key = next((os.environ[v] for v in variables if os.environ.get(v)), None)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            transport=transport,
            follow_redirects=False,
        )
        self.timeout_s = timeout_s
        self.info = ModelInfo(
            name=model,
            version=f"{model}@{base_url}",
            dim=0,
            uri=f"openai:{model}@{base_url}",
            licence="the server's terms",
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def generate(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        seed: int | None = None,
        logprobs: bool = False,
    ) -> list[Generation]:
        """One answer per (image, prompt) pair, `concurrency` requests at a time, in input order."""
        check_generation_inputs(images, prompts, max_tokens)
        options = {"max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            options["seed"] = seed
        if logprobs:
            options["logprobs"] = True
        pairs = zip(images, prompts, strict=True)
        payloads = [self._payload(image, prompt, options) for image, prompt in pairs]
        if len(payloads) <= 1:
            return [self._answer(p) for p in payloads]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(payloads))) as pool:
            return list(pool.map(self._answer, payloads))

    def _payload(self, image: Image.Image, prompt: str, options: dict) -> dict:
        image_part = {"type": "image_url", "image_url": {"url": data_url(image)}}
        content = [{"type": "text", "text": prompt}, image_part]
        payload = {"model": self.model, "messages": [{"role": "user", "content": content}], **options}
        if self.stream:
            payload |= {"stream": True, "stream_options": {"include_usage": True}}
        return payload

    def _answer(self, payload: dict) -> Generation:
        start = time.perf_counter()
        for attempt in range(self.retry.max_retries + 1):
            last = attempt == self.retry.max_retries
            try:
                with self._client.stream("POST", "/chat/completions", json=payload) as response:
                    if response.status_code in RETRY_STATUSES and not last:
                        response.read()
                        time.sleep(self.retry.wait_s(attempt, response))
                        continue
                    if response.status_code != 200:
                        response.read()
                        raise self._refusal(response)
                    if payload.get("stream"):
                        return _from_stream(response.iter_lines(), start, self.base_url)
                    return _from_body(response.read(), start, self.base_url)
            except (httpx.TransportError, httpx.DecodingError) as exc:
                if not last:
                    time.sleep(self.retry.wait_s(attempt, None))
                    continue
                raise self._unreachable(exc) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _refusal(self, response: httpx.Response) -> GenerationError:
        status, message = response.status_code, _server_message(response)
        if status in (401, 403):
            return GenerationError(
                f"{self.base_url} refused the API key (HTTP {status}: {message}); set {self._key_variable} "
                "to a key this server accepts"
            )
        if status == 404:
            return GenerationError(
                f"{self.base_url} has no model {self.model!r} or no /chat/completions (HTTP 404: {message}); "
                "check the model name (the server's /models lists them) and that the base URL ends in /v1"
            )
        if status in RETRY_STATUSES:
            return GenerationError(
                f"{self.base_url} kept failing (HTTP {status}: {message}) after "
                f"{self.retry.max_retries} retries; lower the concurrency or try again later"
            )
        return GenerationError(f"{self.base_url} rejected the request (HTTP {status}: {message})")

    def _unreachable(self, exc: Exception) -> GenerationError:
        if isinstance(exc, httpx.TimeoutException):
            return GenerationError(
                f"{self.base_url} did not answer within {self.timeout_s:g} s "
                f"({self.retry.max_retries} retries); raise timeout_s or check the server's load"
            )
        return GenerationError(
            f"cannot reach {self.base_url} ({type(exc).__name__}: {exc}); "
            "is the server running, and is the URL right?"
        )


def _server_message(response: httpx.Response) -> str:
    """The error text an OpenAI-style server put in its answer, shortened."""
    try:
        body = response.json()
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        text = str(message or body)
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        text = response.text
    return text.strip()[:300] or response.reason_phrase


def _malformed(base_url: str, what: str) -> GenerationError:
    return GenerationError(
        f"{base_url} answered with something that is not a chat completion ({what}); "
        "is the base URL an OpenAI-compatible server's /v1?"
    )


def _usage(raw: object) -> Usage:
    raw = raw if isinstance(raw, dict) else {}
    return Usage(raw.get("prompt_tokens"), raw.get("completion_tokens"))


def _logprob_rows(choice: dict) -> list[dict]:
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return content if isinstance(content, list) else []


def _from_body(body: bytes, start: float, base_url: str) -> Generation:
    try:
        answer = json.loads(body)
        choice = answer["choices"][0]
        text = choice["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as exc:
        raise _malformed(base_url, f"{type(exc).__name__}: {exc}") from exc
    if isinstance(text, list):  # content parts
        text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
    if not isinstance(text, str):
        raise _malformed(base_url, f"message content is {type(text).__name__}")
    finish, rows = choice.get("finish_reason"), _logprob_rows(choice)
    return _generation(text, finish, answer.get("usage"), rows, start, None)


def _from_stream(lines: Iterator[str], start: float, base_url: str) -> Generation:
    parts: list[str] = []
    rows: list[dict] = []
    finish, usage, first = None, None, None
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise _malformed(base_url, f"stream chunk is not JSON: {data[:80]!r}") from exc
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                first = first if first is not None else time.perf_counter() - start
                parts.append(piece)
            rows += _logprob_rows(choice)
            finish = choice.get("finish_reason") or finish
    return _generation("".join(parts), finish, usage, rows, start, first)


def _generation(
    text: str, finish: str | None, usage: object, rows: list[dict], start: float, first: float | None
) -> Generation:
    tokens = tuple(str(r.get("token", "")) for r in rows) or None
    logprobs = tuple(float(r["logprob"]) for r in rows if "logprob" in r) or None
    return Generation(
        text=text,
        finish_reason=finish or "stop",
        usage=_usage(usage),
        seconds=time.perf_counter() - start,
        tokens=tokens,
        token_logprobs=logprobs,
        first_token_seconds=first,
    )


def load(target: str, **options) -> OpenAICompatibleModel:
    """Entry point for ``openai:MODEL@BASE_URL``; options go to `OpenAICompatibleModel`."""
    model, base_url = parse_target(target)
    return OpenAICompatibleModel(model, base_url, **options)
