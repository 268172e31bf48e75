"""The gateway's work, free of HTTP: decode, batch through the model, post-process, log durably.

One `Gateway` per server process. The model runs on one dedicated thread (PyTorch and ONNX Runtime
use the cores themselves); image decoding runs on a small pool so it overlaps inference; the event
loop only schedules and does the cheap numpy after the model. What a request may ask of the model is
counted by its `Ticket` (serve/admission.py): its deadline covers decoding and queueing, its key's
model items are budgeted, and work it leaves behind (timed out, client gone) never reaches the model.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from PIL import Image

from vlmops.audit.pii import redact_text
from vlmops.errors import VlmopsError
from vlmops.evaluate.calibration import softmax
from vlmops.models.base import VLM, Generation, GenerativeVLM
from vlmops.serve.admission import Admission, Ticket, overloaded
from vlmops.serve.archive import ImageArchive
from vlmops.serve.batcher import MicroBatcher, ModelSlot, Overloaded
from vlmops.serve.chat_backend import ChatBackend
from vlmops.serve.decode import decode_checked, describe_decoded, png_pixels
from vlmops.serve.errors import ApiError
from vlmops.serve.limits import Limits
from vlmops.serve.logwriter import LogWriter
from vlmops.serve.metrics import GatewayMetrics
from vlmops.serve.resources import Calibration, Gallery, LabelSet
from vlmops.serve.shared_limits import SharedTokenBuckets
from vlmops.store.log import ChatExchange, PredictionLog, PredictionRow

TEXT_CACHE_SIZE = 50_000
RECENT_IMAGES = 1024  # decoded chat images kept for the backend (a dict write per image; GIL-atomic)
TEXT_BATCH_CHARS = 32  # a text batch holds at most max_batch texts of this many characters (padded)
GIL_SWITCH_S = 0.0005
INLINE_DECODE_BYTES = 64 * 1024  # a PNG this small, of at most INLINE_DECODE_PIXELS, decodes on the loop:
INLINE_DECODE_PIXELS = 128 * 128  # ~0.1 ms, less than the hop to a decode thread and back costs
WATCH_ITEMS = 4  # a request with more model items than this watches for its client going away
WATCH_WAIT_S = 0.05  # ... and so does every request while the model queue takes longer than this


@dataclass
class ServeConfig:
    """Everything `vlmops serve` configures, as plain values (it travels to worker processes as JSON)."""

    model: str = "builtin:emoji-lit"
    runtime: str = "auto"  # `auto`: an onnx:DIR bundle's own runtime, else torch (see models.runtimes)
    store: str | None = None
    max_batch: int = 64
    max_wait_ms: float = 5.0
    queue: int = 512  # requests in flight
    timeout_s: float = 10.0  # from arrival to answer
    key_items_per_s: float = 500.0  # images + new texts per second and key (burst: key_items_in_flight)
    key_items_in_flight: int = 1024  # per key, queued or running; the model queue holds 4x this
    pixels_in_flight: int = 64_000_000  # decoded at once, across requests
    shared_limits: str | None = None  # file of the key buckets the worker processes share (--workers N);
    # unused with a postgresql:// store, whose rate_buckets table every replica shares
    log_sync: str = "full"  # the prediction log's fsync: before the answers ("full"), or "group" (background)
    decode_threads: int = 2
    model_threads: int | None = None  # intra-op threads of the model (torch or ONNX Runtime); None: theirs
    auth: bool = True
    abstain_below: float = 0.0
    template: str | None = None
    label_sets: dict[str, str] = field(default_factory=dict)  # name -> file with one label per line
    calibration: str | None = None
    gallery: str | None = None
    vocabulary: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    keep_images: str | None = None  # folder of an ImageArchive (retraining reads it)
    canary: str | None = None  # model URI answering `canary_share` of classify/tag traffic
    canary_share: float = 0.1
    shadow: str | None = None  # model URI that sees every classify request, logged, never returned
    follow_registry_s: float = 0.0  # > 0: poll the registry; a cleared canary/shadow alias stops routing
    redact_prompts: bool = False  # chat prompts are logged PII-redacted (audit.pii.redact_text)
    price_in: float = 0.0  # USD per 1M prompt tokens, for the logged cost of a chat exchange
    price_out: float = 0.0  # USD per 1M completion tokens
    upstream: str | None = None  # base URL of an OpenAI-compatible server /v1/chat/completions proxies to
    upstream_key_env: str | None = None  # environment variable holding the upstream's API key
    upstream_model: str | None = None  # model name sent upstream (default: the client's)
    allow_image_hosts: list[str] = field(default_factory=list)  # http(s) image_url hosts fetched (SSRF-safe)
    limits: Limits = field(default_factory=Limits)


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Decoded:
    """An image as `Gateway.decode` gives it: pixels, statistics for the monitor, sha256 of the bytes.

    `stats` is None while the statistics wait to be computed (`Gateway.decode(describe=False)`):
    `source` then holds what `describe` needs.
    """

    image: Image.Image
    stats: dict | None
    sha256: str
    source: tuple[bytes, str, tuple[int, int]] | None = None  # bytes, format, size as sent

    def describe(self) -> dict:
        """The statistics, computed now if they were left for later."""
        if self.stats is None:
            assert self.source is not None
            self.stats = describe_decoded(self.image, *self.source)
            self.source = None
        return self.stats


class Gateway:
    """Model, batchers, resources and the log writer of one server process.

    A dual encoder (`VLM`) gets the image and text batchers behind /v1/embeddings, classify, search and
    tag; a generative model (`GenerativeVLM`) gets `chat`, the backend of /v1/chat/completions
    (`serve.chat_local.LocalBackend`), on the same model thread, and those routes answer 409.
    """

    def __init__(
        self,
        model: VLM | GenerativeVLM,
        config: ServeConfig,
        log: PredictionLog,
        label_sets: dict[str, LabelSet],
        calibration: Calibration | None = None,
        gallery: Gallery | None = None,
        vocabulary: tuple[str, ...] = (),
        chat: ChatBackend | None = None,
    ) -> None:
        self.model, self.config, self.log = model, config, log
        self.version = model.info.version
        self.label_sets, self.calibration, self.gallery = label_sets, calibration, gallery
        self.vocabulary = vocabulary
        self.default_template = config.template or "a photo of {}."
        self.metrics = GatewayMetrics()
        self.shared_buckets = shared_buckets(config)
        self.admission = _admission(config, self.shared_buckets)
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="vlmops-model")
        self._decode_pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="vlmops-decode")
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._in_flight = 0
        self._slot = ModelSlot()  # both batchers share the model thread: one waits while the other runs
        self.embeds = hasattr(model, "embed_images")  # duck-typed: a dual encoder embeds, else generative
        self._recent_images: OrderedDict[str, Image.Image] = OrderedDict()  # sha256 -> decoded, for chat
        self.images = self._batcher("image", model.embed_images if self.embeds else _no_embedding)
        self.texts = self._batcher("text", model.embed_texts if self.embeds else _no_embedding)
        self.generative = not self.embeds
        self.chat = chat  # a ChatBackend: a generative model's LocalBackend, or an upstream proxy
        if chat is None and not self.embeds:
            from vlmops.serve.chat_local import LocalBackend

            self.chat = LocalBackend(
                model,
                self._model_thread,
                config.max_batch,
                config.max_wait_ms,
                config.queue,
                config.limits,
                self._observer("chat"),
                self._recent_images,
            )
        self.writer: LogWriter | None = None
        self.archive = ImageArchive(config.keep_images) if config.keep_images else None
        self._named_matrices: dict[str, np.ndarray] = {}
        self._vocab_matrix: np.ndarray | None = None
        self.variants: dict[str, Gateway] = {}  # "canary" and/or "shadow": other models, same log
        self._follow_task: asyncio.Task | None = None

    def _observer(self, kind: str):
        """Records each batch's size and its items' queue waits in /metrics under `kind`."""

        def observe(size: int, waits) -> None:
            self.metrics.batch_size.labels(kind).observe(size)
            for wait in waits:
                self.metrics.queue_wait.labels(kind).observe(wait)

        return observe

    def _batcher(self, kind: str, fn) -> MicroBatcher:
        """A batcher whose queue holds 4 keys' worth of items in flight; text batches are cost-capped."""
        observe = self._observer(kind)
        c = self.config
        size = max(c.queue, 4 * c.key_items_in_flight)
        cost, max_cost = (len, c.max_batch * TEXT_BATCH_CHARS) if kind == "text" else (None, None)
        return MicroBatcher(
            fn,
            self._model_thread,
            c.max_batch,
            c.max_wait_ms,
            size,
            observe,
            cost=cost,
            max_cost=max_cost,
            slot=self._slot,
        )

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start batchers and the log writer; embed the label sets and vocabulary once."""
        # The model thread drops the GIL inside every tensor op and must win it back after each; with the
        # default 5 ms switch interval it waits behind the event loop (bench/serve_load.py: +7 % at c=32).
        sys.setswitchinterval(GIL_SWITCH_S)
        self.images.start()
        self.texts.start()
        if self.chat is not None and hasattr(self.chat, "start"):
            await self.chat.start()
        self.writer = LogWriter(self.log, on_commit=lambda n, s: self.metrics.log_commit.observe(s))
        # The server's own label sets and vocabulary are embedded once, as matrices: stacking thousands of
        # cached vectors per request would copy megabytes on the hot path.
        for name, label_set in self.label_sets.items():
            self._named_matrices[name] = await self.text_embeddings(label_set.prompts(), admit=False)
        if self.vocabulary:
            self._vocab_matrix = await self.text_embeddings(list(self.vocabulary), admit=False)
        for variant in self.variants.values():
            await variant.start()
        if self.variants and self.config.follow_registry_s > 0:
            self._follow_task = asyncio.get_running_loop().create_task(self._follow_registry())

    async def stop(self) -> None:
        """Drain the queues, commit the last log rows, stop the threads."""
        if self._follow_task is not None:
            self._follow_task.cancel()
        for variant in self.variants.values():
            await variant.stop()
        await self.images.stop()
        await self.texts.stop()
        if self.chat is not None and hasattr(self.chat, "stop"):
            await self.chat.stop()
        if self.writer is not None:
            self.writer.close()
        self._model_thread.shutdown(wait=True)
        self._decode_pool.shutdown(wait=True)
        self.log.close()

    # -- rollout: canary and shadow ----------------------------------------------------------------
    def attach(self, role: str, variant: Gateway) -> None:
        """Serve another model as `canary` (a share of traffic) or `shadow` (mirrored, never returned)."""
        if role not in ("canary", "shadow"):
            raise ValueError(f"role must be canary or shadow, got {role!r}")
        if variant.generative != self.generative:
            kinds = {True: "a generative model", False: "a dual encoder"}
            raise VlmopsError(
                f"the {role} {variant.version} is {kinds[variant.generative]} but the served model "
                f"{self.version} is {kinds[self.generative]}; a {role} must answer the same requests"
            )
        variant.metrics = self.metrics  # its batches, queue waits and commits show on this /metrics
        share = self.config.canary_share if role == "canary" else 1.0
        self.metrics.rollout_share.labels(role, variant.version).set(share)
        self.variants[role] = variant

    def route(self, request_id: str, route_key: str | None = None) -> Gateway:
        """The model that answers this request: the canary for its share of traffic, else this one.

        Without a route key the (random) request id decides. A client that sends `X-Route-Key` (a user or
        session id) is sticky: the same key always lands on the same side, whatever the request.
        """
        canary = self.variants.get("canary")
        if canary is None:
            return self
        point = hashlib.sha256(route_key.encode()).hexdigest() if route_key else request_id
        return canary if int(point[:8], 16) / 0xFFFFFFFF < self.config.canary_share else self

    def end_variant(self, role: str, reason: str) -> None:
        """Stop routing to a canary or shadow (its queues drain in the background)."""
        variant = self.variants.pop(role, None)
        if variant is not None:
            self.metrics.rollouts.labels(role).inc()
            self.metrics.rollout_share.labels(role, variant.version).set(0.0)
            asyncio.get_running_loop().create_task(variant.stop())

    async def _follow_registry(self) -> None:
        """Every follow_registry_s: end a canary or shadow whose registry alias no longer names it."""
        from vlmops.store.registry_tables import AliasReader

        registry = AliasReader(self.config.store)
        loop = asyncio.get_running_loop()
        while self.variants:
            await asyncio.sleep(self.config.follow_registry_s)
            for role, variant in list(self.variants.items()):
                current = await loop.run_in_executor(None, registry.alias, role)
                if current != variant.version:
                    self.end_variant(role, f"registry alias {role} is now {current}")

    # -- admission, decoding, embedding ------------------------------------------------------------
    def admit(self, owner: str, arrival: float | None = None, budgeted: bool = True) -> Ticket:
        """A ticket for a request of `owner` that arrived at `arrival`; 503 when it cannot be served."""
        try:
            now = time.perf_counter()
            return self.admission.admit(owner, now if arrival is None else arrival, budgeted)
        except ApiError:
            self.metrics.shed.inc()
            raise

    def release(self, ticket: Ticket) -> None:
        """A request admitted with `admit` has finished."""
        self.admission.release(ticket)

    async def decode(
        self, data: bytes, field_name: str, ticket: Ticket | None = None, describe: bool = True
    ) -> Decoded:
        """Decode untrusted bytes on the decode pool, within the request's deadline and the pixel budget;
        a small PNG (its header says so) is decoded at once on the event loop instead, which is cheaper
        than the two thread hand-offs.

        Returns the image (reduced towards the model's input size), its statistics for the monitor and
        the sha256 of its bytes: the one hash of this input, which the log and the archive share. With
        `describe=False` a small PNG's statistics (only the log needs them) are left for
        `Decoded.describe`, which the caller runs off the answer's critical path.
        """
        admission = self.admission if ticket is None else ticket.admission
        deadline = None if ticket is None else ticket.deadline
        if _small_png(data):
            return self._decode_job(data, field_name, admission, deadline, describe)
        job = asyncio.get_running_loop().run_in_executor(
            self._decode_pool, self._decode_job, data, field_name, admission, deadline, True
        )
        try:
            async with asyncio.timeout(self._time_left(ticket)):  # no task per request, unlike wait_for
                return await job
        except TimeoutError:
            raise self._timeout("decoding the image") from None

    def _decode_job(
        self, data: bytes, field_name: str, admission: Admission, deadline: float | None, describe: bool
    ) -> Decoded:
        """On a decode thread: decode, describe (or leave that for later), hash and (with --keep-images)
        archive one image."""
        image, image_format, size = decode_checked(
            data,
            self.config.limits,
            field_name,
            self.model.info.image_size,
            admission.reserve_pixels,
            admission.release_pixels,
            deadline,
        )
        digest = sha256_hex(data)
        if not self.embeds:  # the chat backend takes the image decoded here instead of decoding it again
            self._recent_images[digest] = image
            while len(self._recent_images) > RECENT_IMAGES:
                self._recent_images.popitem(last=False)
        if self.archive is not None:  # only images that decoded; written before the answer leaves
            self.archive.put(data, digest)
        decoded = Decoded(image, None, digest, (data, image_format, size))
        if describe:
            decoded.describe()
        return decoded

    def _time_left(self, ticket: Ticket | None) -> float:
        return self.config.timeout_s if ticket is None else max(0.0, ticket.remaining())

    def _timeout(self, stage: str) -> ApiError:
        return ApiError(
            504, "timeout", f"no answer within {self.config.timeout_s} s (stuck {stage}); retry later"
        )

    async def _await(self, futures: list[asyncio.Future], ticket: Ticket | None) -> list:
        """The futures' results, within the request's deadline; cancelled if its client goes away.

        Watching for the client costs a task per request, so it is done only where it can save model
        work: a request of several items, or a queue that takes a while to pass.
        """
        try:
            if self._worth_watching(len(futures), ticket):
                return await self._await_watched(futures, ticket)
            try:
                async with asyncio.timeout(self._time_left(ticket)):
                    return [await futures[0]] if len(futures) == 1 else await asyncio.gather(*futures)
            except TimeoutError:
                raise self._timeout("waiting for the model") from None
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # this request itself is being cancelled
                    raise
                raise self._timeout("in the model queue") from None  # the batcher dropped an expired item
        finally:
            for future in futures:
                future.cancel()  # no-op on the finished ones
            if ticket is not None:
                ticket.admission.return_items(ticket, len(futures))

    def _worth_watching(self, items: int, ticket: Ticket | None) -> bool:
        if ticket is None or ticket.watch is None:
            return False
        return items > WATCH_ITEMS or self.images.expected_wait() + self.texts.expected_wait() > WATCH_WAIT_S

    async def _await_watched(self, futures: list[asyncio.Future], ticket: Ticket) -> list:
        """`_await`, racing the model against the client going away (`ticket.watch`)."""
        gathered = asyncio.gather(*futures)
        gathered.add_done_callback(_retrieve)
        watch = asyncio.ensure_future(ticket.watch())
        try:
            done, _ = await asyncio.wait(
                {gathered, watch}, timeout=self._time_left(ticket), return_when=asyncio.FIRST_COMPLETED
            )
            if gathered in done:
                try:
                    return gathered.result()
                except asyncio.CancelledError:  # the batcher dropped an item whose deadline had passed
                    raise self._timeout("in the model queue") from None
            if watch in done:
                raise ApiError(499, "client_gone", "the client closed the connection")
            raise self._timeout("waiting for the model")
        finally:
            watch.cancel()
            if not gathered.done():
                gathered.cancel()

    def _submit(self, batcher: MicroBatcher, values: list, ticket: Ticket | None) -> list[asyncio.Future]:
        if ticket is not None:
            wait = batcher.expected_wait(len(values))
            if wait > ticket.remaining():
                self.metrics.shed.inc()
                raise overloaded(
                    f"{len(values)} images/texts cannot pass the model before this request's deadline "
                    f"(about {wait:.1f} s of model work waits); retry shortly, or send fewer new texts",
                    wait - ticket.remaining(),
                )
            ticket.admission.take_items(ticket, len(values))
        owner = None if ticket is None else ticket.owner
        deadline = None if ticket is None else ticket.deadline
        futures = []
        try:
            for value in values:
                futures.append(batcher.submit(value, owner, deadline))
        except Overloaded:
            for future in futures:
                future.cancel()
            if ticket is not None:
                ticket.admission.return_items(ticket, len(values))
            self.metrics.shed.inc()
            raise overloaded("the model queue is full; retry shortly") from None
        if ticket is not None:
            ticket.futures.extend(futures)
        return futures

    def _needs_embedder(self) -> None:
        if not self.embeds:
            raise ApiError(
                409,
                "generative_model",
                f"this server serves the generative model {self.model.info.name}, which does not embed: "
                "use /v1/chat/completions, or serve a dual encoder (e.g. --model builtin:emoji-lit)",
            )

    async def image_embeddings(self, images: list[Image.Image], ticket: Ticket | None = None) -> np.ndarray:
        """(n, d) embeddings of decoded images through the image batcher."""
        self._needs_embedder()
        rows = await self._await(self._submit(self.images, images, ticket), ticket)
        return np.stack(rows).astype(np.float32)

    async def text_embeddings(
        self, texts: list[str], admit: bool = True, ticket: Ticket | None = None
    ) -> np.ndarray:
        """(n, d) embeddings of texts; cached texts skip the model."""
        self._needs_embedder()
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            if not admit:  # start-up: embed directly, in chunks, without the queue bound
                loop = asyncio.get_running_loop()
                vectors = await loop.run_in_executor(self._model_thread, self.model.embed_texts, missing)
            else:
                vectors = await self._await(self._submit(self.texts, missing, ticket), ticket)
            for text, vector in zip(missing, vectors, strict=True):
                self._text_cache[text] = np.asarray(vector, dtype=np.float32)
            while len(self._text_cache) > TEXT_CACHE_SIZE:
                self._text_cache.popitem(last=False)
        return np.stack([self._text_cache[t] for t in texts])

    async def record(self, row: PredictionRow) -> None:
        """Write the log row durably; a database failure becomes 503 and the answer is withheld."""
        assert self.writer is not None
        row.texts = [redact_text(t) for t in row.texts]
        try:
            await self.writer.write(row)
        except Exception as exc:
            raise ApiError(
                503, "log_unavailable", f"the prediction log could not be written ({exc}); retry"
            ) from exc

    # -- generative models (the chat route; see serve.rollout for canary and shadow) ------------------
    async def generate(
        self, images: list[Image.Image], prompts: list[str], ticket: Ticket | None = None, **params
    ) -> list[Generation]:
        """Answers of the served generative model, on the model thread, within the request's deadline."""
        if not self.generative:
            raise ApiError(422, "not_generative", f"{self.version} is a dual encoder; it does not generate")
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(
            self._model_thread, partial(self.model.generate, images, prompts, **params)
        )
        try:
            async with asyncio.timeout(self._time_left(ticket)):
                return await job
        except TimeoutError:
            raise self._timeout("generating") from None

    async def record_chat(self, row: PredictionRow, chat: ChatExchange) -> None:
        """Write a chat exchange (its requests row and chat row) durably; a database failure is a 503."""
        assert self.writer is not None
        try:
            await self.writer.write(row, chat)
        except Exception as exc:
            raise ApiError(
                503, "log_unavailable", f"the prediction log could not be written ({exc}); retry"
            ) from exc

    # -- predictions -------------------------------------------------------------------------------
    def label_set_for(self, labels: list[str] | None, name: str | None, template: str | None) -> LabelSet:
        """The candidate labels of a classify request."""
        if (labels is None) == (name is None):
            known = ", ".join(self.label_sets) or "none loaded"
            raise ApiError(422, "bad_labels", f"give either 'labels' or 'label_set' (known sets: {known})")
        if name is not None:
            if name not in self.label_sets:
                known = ", ".join(self.label_sets) or "none loaded"
                raise ApiError(404, "unknown_label_set", f"no label set {name!r}; known: {known}")
            base = self.label_sets[name]
            return base if template is None else LabelSet(base.name, base.labels, _check_template(template))
        labels = [label.strip() for label in labels or []]
        limits = self.config.limits
        if len(labels) < 2:
            raise ApiError(422, "bad_labels", f"give at least 2 candidate labels, got {len(labels)}")
        if len(labels) > limits.max_labels:
            raise ApiError(413, "too_many_labels", f"{len(labels)} labels, the limit is {limits.max_labels}")
        if any(not label or len(label) > 200 for label in labels):
            raise ApiError(422, "bad_labels", "every label must have 1 to 200 characters")
        if len(set(labels)) != len(labels):
            raise ApiError(422, "bad_labels", "candidate labels must be distinct")
        return LabelSet("", tuple(labels), _check_template(template or self.default_template))

    def temperature_and_threshold(self, label_set: LabelSet) -> tuple[float, float | None]:
        """Calibration for this exact label set and template, else (1.0, None)."""
        cal = self.calibration
        if cal is not None and label_set.labels == cal.labels and label_set.template == cal.template:
            return cal.temperature, cal.threshold
        return 1.0, None

    async def classify(
        self, image: Image.Image, label_set: LabelSet, top_k: int, ticket: Ticket | None = None
    ) -> tuple[np.ndarray, dict]:
        """Image embedding and the prediction: label, confidence, top-k, conformal set, abstain."""
        embedding = (await self.image_embeddings([image], ticket))[0]
        named = self.label_sets.get(label_set.name)
        if named is not None and named == label_set and label_set.name in self._named_matrices:
            class_emb = self._named_matrices[label_set.name]
        else:  # ad-hoc labels or another template: per-text cache
            class_emb = await self.text_embeddings(label_set.prompts(), ticket=ticket)
        temperature, threshold = self.temperature_and_threshold(label_set)
        probs = softmax((self.model.logit_scale * class_emb @ embedding)[None, :], temperature)[0]
        order = np.argsort(-probs, kind="stable")
        best = int(order[0])
        prediction = {
            "label": label_set.labels[best],
            "confidence": float(probs[best]),
            "top_k": [{"label": label_set.labels[i], "probability": float(probs[i])} for i in order[:top_k]],
            "prediction_set": None
            if threshold is None
            else [label_set.labels[i] for i in order if 1.0 - probs[i] <= threshold],
            "abstain": bool(probs[best] < self.config.abstain_below),
            "calibrated": threshold is not None,
        }
        return embedding, prediction

    async def tag(
        self, image: Image.Image, top_k: int, ticket: Ticket | None = None
    ) -> tuple[np.ndarray, dict]:
        """Keywords from the vocabulary and a short alt text."""
        if not self.vocabulary:
            raise ApiError(
                409, "no_vocabulary", "this server has no tag vocabulary; start it with --vocabulary FILE"
            )
        embedding = (await self.image_embeddings([image], ticket))[0]
        if self._vocab_matrix is None:
            self._vocab_matrix = await self.text_embeddings(list(self.vocabulary))
        scores = self._vocab_matrix @ embedding
        order = np.argsort(-scores, kind="stable")[:top_k]
        tags = [{"tag": self.vocabulary[i], "score": float(scores[i])} for i in order]
        alt_text = f"Image of {tags[0]['tag']}" + (
            f" ({', '.join(t['tag'] for t in tags[1:])})" if len(tags) > 1 else ""
        )
        return embedding, {"tags": tags, "alt_text": alt_text}

    def search(self, query: np.ndarray, top_k: int) -> list[dict]:
        """Top-k gallery records for a query embedding."""
        assert self.gallery is not None
        g = self.gallery
        return [
            {"id": g.ids[i], "score": score, "label": g.labels[i], "text": g.texts[i]}
            for i, score in g.search(query, top_k)
        ]

    def describe(self) -> dict:
        """What /v1/models reports."""
        cal = self.calibration
        served = {"id": self.model.info.name, "object": "model", "created": 0, "owned_by": "vlmops"}
        return {
            "object": "list",  # with `data`, what OpenAI clients read (`client.models.list()`)
            "data": [{**served, "version": self.version, "generative": not self.embeds}],
            "model": self.model.info.to_dict(),
            "runtime": self.config.runtime,
            "label_sets": {name: len(s.labels) for name, s in self.label_sets.items()},
            "calibration": None
            if cal is None
            else {"label_set": cal.label_set, "alpha": cal.alpha, "temperature": cal.temperature, "n": cal.n},
            "gallery": None if self.gallery is None else {"n": len(self.gallery.ids)},
            "vocabulary": len(self.vocabulary),
        }


def _no_embedding(_items: list) -> list:
    raise RuntimeError("a generative model does not embed")  # never reached: _needs_embedder says 409


def _small_png(data: bytes) -> bool:
    """A PNG of at most INLINE_DECODE_BYTES and INLINE_DECODE_PIXELS (by its header)."""
    if len(data) > INLINE_DECODE_BYTES:
        return False
    pixels = png_pixels(data)
    return pixels is not None and pixels <= INLINE_DECODE_PIXELS


def _retrieve(future: asyncio.Future) -> None:
    """Mark a gathered future's outcome as seen (its caller may have stopped waiting for it)."""
    if not future.cancelled():
        future.exception()


def shared_buckets(config: ServeConfig):
    """Where the per-key token buckets live: in the Postgres store when the store is Postgres (shared by
    every replica on every machine), else in the mapped file of `config.shared_limits` (the worker
    processes of one machine), else None (each process its own)."""
    from vlmops.config import get_settings

    url = config.store or get_settings().resolved_store_url()
    if url.startswith(("postgresql://", "postgresql+psycopg://")):
        from vlmops.store.rate_buckets import DatabaseTokenBuckets

        return DatabaseTokenBuckets(url)
    return SharedTokenBuckets(config.shared_limits) if config.shared_limits else None


def _admission(config: ServeConfig, shared=None) -> Admission:
    """The admission counters for a config, after checking that its limits fit together."""
    limits = config.limits
    largest = max(limits.max_labels, limits.max_texts, limits.max_images)
    if config.key_items_in_flight < largest:
        raise VlmopsError(
            f"--key-items-in-flight {config.key_items_in_flight} is below the largest request "
            f"({largest} labels/texts/images) it would have to hold; raise it to at least {largest}"
        )
    if config.pixels_in_flight < limits.max_pixels:
        raise VlmopsError(
            f"--pixels-in-flight {config.pixels_in_flight} is below --max-pixels {limits.max_pixels}: "
            "the largest allowed image could never be decoded; raise it"
        )
    return Admission(
        config.queue,
        config.timeout_s,
        config.key_items_per_s,
        config.key_items_in_flight,
        config.pixels_in_flight,
        saturated=config.max_batch,
        shared=shared,
    )


def _check_template(template: str) -> str:
    if template.count("{}") != 1 or len(template) > 200:
        raise ApiError(
            422, "bad_template", f"template {template[:60]!r} needs exactly one '{{}}' and <= 200 chars"
        )
    return template
