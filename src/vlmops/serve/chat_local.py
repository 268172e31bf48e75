"""`LocalBackend`: /v1/chat/completions answered by a served generative model, with batched generation.

Concurrent requests wait in a `MicroBatcher` and run through `model.generate` together on the model
thread, one request per API key in turn (`admission.REQUEST_OWNER`). A batch waits up to
`FILL_WHEN_IDLE_MS` for company even when the model is idle: a generation takes hundreds of
milliseconds, and the next requests of the clients a batch answered arrive just after it. Greedy
requests (temperature 0) with the same token limit share one call, whatever their images and prompts
(the model pads prompts so that an answer does not depend on its batch-mates); a sampled request runs
in a call of its own, so its seed gives the same answers as calling `model.generate` directly with that
seed. A request with ``n`` choices is ``n`` rows of a call.

Streaming: a model whose ``generate`` takes ``on_text`` (builtin:emoji-captioner) reports each answer's
text as it decodes, and the stream sends each word once settled; any other model returns whole answers,
and a streamed answer is sent as word-sized SSE chunks after it is generated (its time to first token
is then its generation time, plus queueing).
A client that goes away stops the work: its rows leave the queue, and a model whose ``generate``
takes ``should_stop`` (builtin:emoji-captioner) drops them from a running batch at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from PIL import Image

from vlmops.models.base import Generation
from vlmops.serve import chat_format as fmt
from vlmops.serve.admission import REQUEST_OWNER
from vlmops.serve.batcher import MicroBatcher, Overloaded
from vlmops.serve.chat_backend import ChatOutcome
from vlmops.serve.chat_messages import data_url_bytes, image_refs, single_turn_prompt
from vlmops.serve.chat_schemas import ChatRequest
from vlmops.serve.decode import decode_image
from vlmops.serve.errors import ApiError
from vlmops.serve.limits import Limits

FILL_WHEN_IDLE_MS = 20.0  # a batch waits this long for company (bench/chat_batching.py: 8 -> 16 at c=16)


@dataclass(eq=False)
class _Job:
    """One request's rows: its image and prompt `n` times, and how to generate them."""

    image: Image.Image
    prompt: str
    n: int
    max_tokens: int
    temperature: float
    seed: int | None
    top_p: float | None
    logprobs: bool
    cancelled: threading.Event = field(default_factory=threading.Event)
    on_text: list[Callable[[str], None]] | None = None  # per choice, when streamed as it is decoded


class LocalBackend:
    """A `ChatBackend` over a `GenerativeVLM` (builtin:emoji-captioner, hf: generative models)."""

    mode = "local"

    def __init__(
        self,
        model,
        executor: Executor,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        queue_size: int = 512,
        limits: Limits | None = None,
        on_batch: Callable[[int, Sequence[float]], None] | None = None,
        decoded: Mapping[str, Image.Image] | None = None,
        fill_when_idle_ms: float = FILL_WHEN_IDLE_MS,
    ) -> None:
        """`decoded`: images the route decoded already, by sha256 of their bytes (else decoded here)."""
        self.model = model
        self.decoded = decoded if decoded is not None else {}
        self.limits = limits or Limits()
        self.version = model.info.version  # what the log records as the model version
        self.names = {model.info.name, model.info.version, model.info.uri}
        self._params = inspect.signature(model.generate).parameters
        default = self._params.get("max_tokens")
        self.default_max_tokens = default.default if default and isinstance(default.default, int) else 64
        self.batcher: MicroBatcher[_Job] = MicroBatcher(
            self._run,
            executor,
            max_batch,
            max_wait_ms,
            queue_size,
            on_batch,
            cost=lambda job: float(job.n),
            max_cost=float(max_batch),
            fill_when_idle_ms=fill_when_idle_ms,
        )
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the batcher on the running loop."""
        if not self._started:
            self.batcher.start()
            self._started = True

    async def stop(self) -> None:
        """Finish what is queued."""
        if self._started:
            await self.batcher.stop()

    # -- the seam ----------------------------------------------------------------------------------
    async def complete(self, body: dict, deadline: float) -> tuple[dict, ChatOutcome]:
        """A chat.completion for `body` (validated by the route)."""
        request = ChatRequest.model_validate(body)
        job = self._job(request)
        generations = await self._generate(job, deadline)
        answers = [self._finish(request, g) for g in generations]
        choices = [
            fmt.choice(i, text, finish, self._logprobs(job, g))
            for i, ((text, finish), g) in enumerate(zip(answers, generations, strict=True))
        ]
        outcome = self._outcome(request, generations, answers[0][0], answers[0][1])
        answer = fmt.completion(request.model, self.model.info.version, choices, self._usage(generations))
        return answer, outcome

    def stream(self, body: dict, deadline: float) -> LocalStream:
        """A streamed answer (`LocalStream`: words as they are decoded, where the model reports them)."""
        request = ChatRequest.model_validate(body)
        return LocalStream(self, request, self._job(request), deadline)

    # -- helpers -----------------------------------------------------------------------------------
    def _job(self, request: ChatRequest) -> _Job:
        """Check what the model can do for `request` and describe its rows."""
        if request.model not in self.names:
            raise ApiError(
                404,
                "model_not_found",
                f"this server serves {self.model.info.name!r} (version {self.model.info.version}); "
                f"set model to {self.model.info.name!r}, not {request.model!r}",
            )
        refs = image_refs(request)
        if len(refs) != 1:
            raise ApiError(
                422,
                "one_image_needed" if not refs else "too_many_images",
                f"the local model answers about exactly one image per request, got {len(refs)}: "
                "add one image_url part (a data: URL) to the user message",
            )
        prompt = single_turn_prompt(request)
        if request.logprobs and not getattr(self.model, "exposes_logprobs", False):
            raise ApiError(422, "logprobs_unsupported", f"{self.model.info.name} gives no log-probabilities")
        if request.top_logprobs:
            raise ApiError(
                422,
                "top_logprobs_unsupported",
                f"{self.model.info.name} gives the chosen tokens' log-probabilities only: leave "
                "top_logprobs out (or 0)",
            )
        temperature = 1.0 if request.temperature is None else request.temperature
        top_p = request.top_p
        if top_p is not None and top_p < 1.0 and "top_p" not in self._params:
            raise ApiError(
                422,
                "top_p_unsupported",
                f"{self.model.info.name} does not do nucleus sampling: leave top_p out (or 1), "
                "use temperature",
            )
        data = data_url_bytes(refs[0])
        image = self.decoded.get(hashlib.sha256(data).hexdigest())
        if image is None:
            image = decode_image(data, self.limits, refs[0].field)
        return _Job(
            image,
            prompt,
            request.n,
            request.token_limit() or self.default_max_tokens,
            temperature,
            request.seed,
            top_p,
            request.logprobs,
        )

    def _submit(self, job: _Job, deadline: float) -> asyncio.Future:
        if not self._started:
            raise ApiError(503, "not_ready", "the model is still loading", {"Retry-After": "1"})
        remaining = deadline - time.monotonic()
        try:
            return self.batcher.submit(job, REQUEST_OWNER.get(), time.perf_counter() + remaining)
        except Overloaded:
            raise ApiError(
                503, "overloaded", "the generation queue is full; retry shortly", {"Retry-After": "1"}
            ) from None

    async def _generate(self, job: _Job, deadline: float) -> list[Generation]:
        """Queue `job` and wait for its generations, within the deadline; cancelled with its caller."""
        future = self._submit(job, deadline)
        try:
            return await _rows(future, job, deadline)
        finally:
            future.cancel()

    def _run(self, jobs: list[_Job]) -> list[list[Generation]]:
        """On the model thread: greedy jobs grouped by token limit into one call each, sampled alone."""
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            key = (job.max_tokens, job.logprobs) if job.temperature == 0 else ("sampled", i)
            groups.setdefault(key, []).append(i)
        results: list[list[Generation]] = [[] for _ in jobs]
        for members in groups.values():
            rows = [(j, k) for j in members for k in range(jobs[j].n)]  # (job, choice) per row
            first = jobs[members[0]]
            options = {
                "max_tokens": first.max_tokens,
                "temperature": first.temperature,
                "seed": first.seed,
                "logprobs": first.logprobs,
            }
            if first.top_p is not None and "top_p" in self._params:
                options["top_p"] = first.top_p
            if "should_stop" in self._params:
                options["should_stop"] = lambda row, rows=rows: jobs[rows[row][0]].cancelled.is_set()
            sinks = {r: jobs[j].on_text[k] for r, (j, k) in enumerate(rows) if jobs[j].on_text}
            if sinks:
                options["on_text"] = sinks
            generations = self.model.generate(
                [jobs[j].image for j, _ in rows], [jobs[j].prompt for j, _ in rows], **options
            )
            for (j, _), generation in zip(rows, generations, strict=True):
                results[j].append(generation)
        return results

    def _finish(self, request: ChatRequest, generation: Generation) -> tuple[str, str]:
        """The answer text after the stop sequences, and its finish reason."""
        text, stopped = fmt.apply_stop(generation.text, request.stop_list())
        return text, "stop" if stopped else generation.finish_reason

    def _logprobs(self, job: _Job, generation: Generation) -> dict | None:
        return fmt.logprobs_content(generation.tokens, generation.token_logprobs) if job.logprobs else None

    @staticmethod
    def _usage(generations: Sequence[Generation]) -> dict:
        prompt = generations[0].usage.prompt_tokens if generations else 0
        return fmt.usage(prompt, sum(g.usage.completion_tokens or 0 for g in generations))

    def _outcome(self, request, generations, text: str, finish: str | None) -> ChatOutcome:
        usage = self._usage(generations)
        ttft = min((g.first_token_seconds for g in generations if g.first_token_seconds), default=None)
        return ChatOutcome(
            text, finish, usage["prompt_tokens"], usage["completion_tokens"], ttft, self.model.info.name
        )


class LocalStream:
    """A streamed local answer (`ChatStream`): a role chunk at once, then the answer's text as it grows.

    With a model whose ``generate`` reports text as it decodes (``on_text``: builtin:emoji-captioner),
    each word is sent as soon as it is settled (up to the last space: the next token may still change
    the spacing of the last word); otherwise, or with ``stop`` sequences (which must be cut before any
    of their text is sent), the answer is sent in word-sized chunks once generated.
    """

    def __init__(self, backend: LocalBackend, request: ChatRequest, job: _Job, deadline: float) -> None:
        self.backend, self.request, self.job, self.deadline = backend, request, job, deadline
        self.outcome = ChatOutcome("", None, None, None, None, backend.model.info.name, status="cancelled")
        self._events: AsyncIterator[bytes] | None = None
        self._updates: asyncio.Queue = asyncio.Queue()
        if "on_text" in backend._params and not request.stop_list():
            loop = asyncio.get_running_loop()
            job.on_text = [self._sink(loop, choice) for choice in range(request.n)]
        self._future = backend._submit(job, deadline)  # a full queue is refused before any byte
        self._future.add_done_callback(lambda _f: self._updates.put_nowait(None))

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._events = self._run()
        return self._events

    async def aclose(self) -> None:
        """Stop: the rows leave the queue (or the running batch); `outcome` keeps the partial text."""
        self.job.cancelled.set()
        self._future.cancel()
        if self._events is not None:
            await self._events.aclose()

    def _sink(self, loop: asyncio.AbstractEventLoop, choice: int) -> Callable[[str], None]:
        """On the model thread: pass on the settled part of a choice's text when it grew."""
        settled = [0]

        def on_text(text: str) -> None:
            cut = text.rfind(" ")
            if cut > settled[0] and not self.job.cancelled.is_set():
                settled[0] = cut
                with contextlib.suppress(RuntimeError):  # a closed loop (shutdown): nobody listens
                    loop.call_soon_threadsafe(self._updates.put_nowait, (choice, text[:cut]))

        return on_text

    async def _run(self) -> AsyncIterator[bytes]:
        backend, request = self.backend, self.request
        name, version = request.model, backend.model.info.version
        for i in range(request.n):
            yield fmt.sse(fmt.chunk(name, version, i, {"role": "assistant", "content": ""}))
        sent = [""] * request.n
        while (update := await self._next()) is not None:
            choice, text = update
            if len(text) > len(sent[choice]) and text.startswith(sent[choice]):
                piece, sent[choice] = text[len(sent[choice]) :], text
                if choice == 0:
                    self.outcome.text = text
                yield fmt.sse(fmt.chunk(name, version, choice, {"content": piece}))
        generations = await _rows(self._future, self.job, self.deadline)
        finishes = []
        for i, generation in enumerate(generations):
            text, finish = backend._finish(request, generation)
            finishes.append(finish)
            rest = text[len(sent[i]) :] if text.startswith(sent[i]) else ""
            parts = fmt.pieces(rest)
            logprobs = backend._logprobs(self.job, generation)
            for k, piece in enumerate(parts):
                if i == 0:
                    self.outcome.text += piece
                last = k == len(parts) - 1
                yield fmt.sse(
                    fmt.chunk(name, version, i, {"content": piece}, logprobs=logprobs if last else None)
                )
            yield fmt.sse(fmt.chunk(name, version, i, {}, finish, None if parts else logprobs))
        self.outcome = backend._outcome(request, generations, self.outcome.text, finishes[0])
        if request.stream_options is not None and request.stream_options.include_usage:
            yield fmt.sse(fmt.chunk(name, version, None, usage_=backend._usage(generations)))
        yield fmt.DONE

    async def _next(self) -> tuple[int, str] | None:
        """The next settled text, or None once the generation has ended (or failed)."""
        try:
            async with asyncio.timeout(max(0.0, self.deadline - time.monotonic())):
                return await self._updates.get()
        except TimeoutError:
            self.job.cancelled.set()
            raise ApiError(504, "timeout", "no answer before the request's deadline; retry later") from None


async def _rows(future: asyncio.Future, job: _Job, deadline: float) -> list[Generation]:
    """A job's generations, within the deadline; its rows stop when the wait ends without them."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await future
    except TimeoutError:
        raise ApiError(504, "timeout", "no answer before the request's deadline; retry later") from None
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():  # the caller itself is cancelled
            raise
        raise ApiError(504, "timeout", "the request's deadline passed in the queue") from None
    finally:
        if not future.done() or future.cancelled():
            job.cancelled.set()
