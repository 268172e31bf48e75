"""Generate answers through the cache: hash (image, prompt, decoding parameters), look them all up, run
the model on misses only.

The twin of `store.embed` for generative models. A cached answer is keyed by the model version, the
image's sha256, the prompt and every decoding parameter, so a re-run with the same settings
recomputes only metrics, and a change of any of them generates again. Misses are written after each
batch, so an interrupted run keeps what it finished. Sampling (temperature > 0) is cached too: the
seed is part of the key, and models that honour it repeat themselves.

Answers may be generated elsewhere: inside `use_generation_backend(backend)`, the misses of
`generate_cached` go to `backend.generate_pairs` (e.g. `vlmops.scale`'s Ray Data actor pool), which
streams back ``(keys, generations)`` chunks in any order; they are checked, cached and counted exactly
as local batches.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from vlmops.data.images import load_image
from vlmops.errors import VlmopsError
from vlmops.models.base import Generation, GenerativeVLM, Usage
from vlmops.store.cache import EmbeddingCache
from vlmops.store.embed import content_sha256


@dataclass(frozen=True)
class DecodingParams:
    """The decoding settings that change an answer."""

    max_tokens: int = 32
    temperature: float = 0.0
    seed: int | None = 0
    logprobs: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DerivedImage:
    """An image made from a file on the fly (a corruption, a band with text): cached under the file's
    sha256 and `variant`, which must name everything that changes the pixels (family, severity, seed)."""

    source: str | Path
    variant: str
    make: Callable[[Image.Image], Image.Image]


ImageSource = str | Path | DerivedImage
GenerationChunks = Iterator[tuple[list[str], list[Generation]]]


class GenerationBackend(Protocol):
    """Somewhere else to generate: yields ``(keys, generations)`` chunks covering every item once."""

    def generate_pairs(
        self,
        model: GenerativeVLM,
        items: Sequence[tuple[str, ImageSource, str]],
        params: DecodingParams,
        batch_size: int,
    ) -> GenerationChunks:
        """Answer `items` ((cache key, image, prompt) triples) with a copy of `model`; chunks in any order."""
        ...


_generation_backend: contextvars.ContextVar[GenerationBackend | None] = contextvars.ContextVar(
    "generation_backend", default=None
)


@contextlib.contextmanager
def use_generation_backend(backend: GenerationBackend | None) -> Iterator[None]:
    """Within the block, `generate_cached` sends its misses to `backend` (None: generate here)."""
    token = _generation_backend.set(backend)
    try:
        yield
    finally:
        _generation_backend.reset(token)


@dataclass(frozen=True)
class GenerateStats:
    """Outcome of one cached generation call; hits and misses count distinct (image, prompt) pairs."""

    n: int
    unique: int
    hits: int
    misses: int
    seconds: float
    generated_tokens: int = 0  # answer tokens of the pairs generated in this call (not the cached ones)

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 4)}


def generation_key(image_sha256: str, prompt: str, params: DecodingParams) -> str:
    """Cache key of one answer: sha256 over the image hash, the prompt and the decoding parameters."""
    payload = json.dumps([image_sha256, prompt, params.to_dict()], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def to_json(generation: Generation) -> str:
    return json.dumps(generation.to_dict(), ensure_ascii=False)


def from_json(text: str) -> Generation:
    data = json.loads(text)
    usage = data.pop("usage")
    usage.pop("total_tokens", None)
    tuples = ("token_ids", "tokens", "token_logprobs")
    return Generation(
        usage=Usage(**usage), **{k: tuple(v) if k in tuples and v is not None else v for k, v in data.items()}
    )


def _identity(source: ImageSource, file_hashes: dict[str, str]) -> str:
    if isinstance(source, DerivedImage):
        return f"{file_hashes[str(source.source)]}:{source.variant}"
    return file_hashes[str(source)]


def load_source(source: ImageSource) -> Image.Image:
    """The image of a file path, or of a `DerivedImage` made from its file."""
    if isinstance(source, DerivedImage):
        return source.make(load_image(source.source))
    return load_image(source)


def generate_cached(
    model: GenerativeVLM,
    images: Sequence[ImageSource],
    prompts: Sequence[str],
    params: DecodingParams,
    cache: EmbeddingCache | None = None,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[Generation], GenerateStats]:
    """One answer per (image, prompt) pair, in input order, with cached pairs not generated again.
    An image is a file path or a `DerivedImage` made from one.

    ``on_batch(n)`` is called after each batch of n distinct pairs is generated (for progress bars).
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    began = time.perf_counter()
    files = dict.fromkeys(str(s.source if isinstance(s, DerivedImage) else s) for s in images)
    hashes = {path: content_sha256(path) for path in files}
    pairs = zip(images, prompts, strict=True)
    keys = [generation_key(_identity(source, hashes), prompt, params) for source, prompt in pairs]
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    found = cache.get_generations(model.info.version, list(first)) if cache is not None else {}
    answers = {key: from_json(text) for key, text in found.items()}
    missing = [key for key in first if key not in answers]
    items = [(key, images[first[key]], prompts[first[key]]) for key in missing]
    backend = _generation_backend.get()
    if backend is None:
        chunks = local_chunks(model, items, params, batch_size)
    else:
        chunks = backend.generate_pairs(model, items, params, batch_size)
    wanted = set(missing)
    for chunk, produced in chunks:
        if len(produced) != len(chunk):
            raise VlmopsError(
                f"model {model.info.uri} returned {len(produced)} answers for {len(chunk)} prompts: "
                "the adapter is broken"
            )
        new = {k: g for k, g in zip(chunk, produced, strict=True) if k in wanted and k not in answers}
        answers.update(new)
        if cache is not None:
            cache.put_generations(model.info.version, {key: to_json(g) for key, g in new.items()})
        if on_batch:
            on_batch(len(new))
    if lost := [key for key in missing if key not in answers]:
        raise VlmopsError(f"{len(lost)} of {len(missing)} prompts came back without an answer; run again")
    generated = sum(answers[key].usage.completion_tokens or 0 for key in missing)
    stats = GenerateStats(
        len(keys), len(first), len(found), len(missing), time.perf_counter() - began, generated
    )
    return [answers[key] for key in keys], stats


def local_chunks(
    model: GenerativeVLM,
    items: Sequence[tuple[str, ImageSource, str]],
    params: DecodingParams,
    batch_size: int,
) -> GenerationChunks:
    """`items` ((key, image, prompt) triples) answered in this process, `batch_size` at a time."""
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        images = [load_source(image) for _, image, _ in chunk]
        yield [key for key, _, _ in chunk], generate_batch(model, images, [p for *_, p in chunk], params)


def generate_batch(
    model: GenerativeVLM, images: list[Image.Image], prompts: list[str], params: DecodingParams
) -> list[Generation]:
    """One `model.generate` call with the decoding settings of `params`."""
    return model.generate(
        images,
        prompts,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        seed=params.seed,
        logprobs=params.logprobs,
    )
