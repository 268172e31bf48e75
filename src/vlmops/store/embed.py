"""Embed images and texts through the cache: hash inputs, look them all up, run the model on misses only.

Both entry points return ``(vectors, stats)``: an ``(n, d)`` float32 array in input order and an
`EmbedStats`. Identical inputs (same file bytes or same text) are embedded once. Misses are written
to the cache after every batch, so an interrupted run keeps the batches it finished. `EmbedStats`
counts distinct inputs: ``hits + misses == unique <= n``; ``seconds`` includes hashing.

Image files may be embedded elsewhere: inside `use_image_backend(backend)`, the misses of
`embed_images_cached` go to `backend.embed_files` (e.g. `vlmops.scale`'s Ray Data actor pool), which
streams back ``(keys, vectors)`` chunks; they are checked, cached and counted exactly as local batches.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from vlmops.data.images import load_image
from vlmops.errors import DataError, VlmopsError
from vlmops.models.base import VLM, batched, sha256_file
from vlmops.store.cache import EmbeddingCache

TEXT_TRANSFORM_ID = "text"
Chunks = Iterator[tuple[list[str], np.ndarray]]


class ImageBackend(Protocol):
    """Somewhere else to embed image files: yields ``(keys, vectors)`` chunks covering every item once."""

    def embed_files(self, model: VLM, items: Sequence[tuple[str, str]], batch_size: int) -> Chunks:
        """Embed `items` ((content key, path) pairs) with a copy of `model`; chunks in any order."""
        ...


_image_backend: contextvars.ContextVar[ImageBackend | None] = contextvars.ContextVar(
    "image_backend", default=None
)


@contextlib.contextmanager
def use_image_backend(backend: ImageBackend | None) -> Iterator[None]:
    """Within the block, `embed_images_cached` sends its misses to `backend` (None: embed here)."""
    token = _image_backend.set(backend)
    try:
        yield
    finally:
        _image_backend.reset(token)


@dataclass(frozen=True)
class EmbedStats:
    """Outcome of one cached embedding call; hits and misses count distinct inputs."""

    n: int
    unique: int
    hits: int
    misses: int
    seconds: float

    def to_dict(self) -> dict:
        """Plain dict for JSON output (seconds rounded to 0.1 ms)."""
        return {**asdict(self), "seconds": round(self.seconds, 4)}


def content_sha256(source: bytes | str | Path) -> str:
    """Hex sha256 of raw bytes, or of a file's bytes when given a path."""
    if isinstance(source, bytes | bytearray | memoryview):
        return hashlib.sha256(source).hexdigest()
    try:
        return sha256_file(source)
    except FileNotFoundError:
        raise DataError(f"image file not found: {source}; check the data's image paths") from None
    except OSError as exc:
        raise DataError(f"cannot read {source}: {exc}") from exc


def text_sha256(text: str) -> str:
    """Hex sha256 of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def embed_images_cached(
    model: VLM,
    paths: Sequence[str | Path],
    cache: EmbeddingCache,
    batch_size: int = 64,
    progress: bool = True,
    content_keys: Sequence[str] | None = None,
) -> tuple[np.ndarray, EmbedStats]:
    """Embeddings of the image files in `paths` (input order), running the model only on cache misses.

    Pass `content_keys` (the files' sha256, as `content_sha256` gives them) when already known.
    """
    start = time.perf_counter()
    keys = list(content_keys) if content_keys is not None else [content_sha256(p) for p in paths]
    if len(keys) != len(paths):
        raise VlmopsError(f"{len(keys)} content keys for {len(paths)} paths: give one per path")
    sources = dict(zip(keys, paths, strict=True))

    def encode(batch: list[str]) -> np.ndarray:
        return model.embed_images([load_image(sources[k]) for k in batch])

    backend = _image_backend.get()
    stream = None
    if backend is not None:

        def stream(misses: list[str]) -> Chunks:
            return backend.embed_files(model, [(k, str(sources[k])) for k in misses], batch_size)

    return _embed_cached(
        model, keys, model.transform_id, cache, encode, batch_size, progress, "images", start, stream
    )


def embed_texts_cached(
    model: VLM,
    texts: Sequence[str],
    cache: EmbeddingCache,
    batch_size: int = 256,
    progress: bool = True,
) -> tuple[np.ndarray, EmbedStats]:
    """Embeddings of `texts` (input order), running the model only on cache misses."""
    start = time.perf_counter()
    keys = [text_sha256(t) for t in texts]
    sources = dict(zip(keys, texts, strict=True))

    def encode(batch: list[str]) -> np.ndarray:
        return model.embed_texts([sources[k] for k in batch])

    return _embed_cached(model, keys, TEXT_TRANSFORM_ID, cache, encode, batch_size, progress, "texts", start)


def variant_key(content_key: str, variant: str) -> str:
    """Cache key of a derived input: the source's content hash joined with a variant spec, hashed."""
    return hashlib.sha256(f"{content_key}|{variant}".encode()).hexdigest()


def variant_seed(content_key: str, variant: str) -> int:
    """A 32-bit seed fixed by (source content, variant): a variant is the same whatever the batch."""
    return int(variant_key(content_key, variant)[:8], 16)


ImageVariant = Callable[[Image.Image, int, str], Image.Image]


def embed_image_variants_cached(
    model: VLM,
    paths: Sequence[str | Path],
    variant: str | Sequence[str],
    make: ImageVariant,
    cache: EmbeddingCache,
    batch_size: int = 64,
    progress: bool = True,
    content_keys: Sequence[str] | None = None,
) -> tuple[np.ndarray, EmbedStats]:
    """Embeddings of `make(image, seed, variant)` for each image file, cached under (content, variant).

    `variant` (one for all images, or one per image) must name everything that changes the derived
    image (e.g. "corrupt:fog:3"); `make` receives a seed drawn from the image content and the variant,
    so each (image, variant) pair is built, embedded and stored once per model version. Pass
    `content_keys` (the files' sha256) when they are already known to skip re-hashing.
    """
    start = time.perf_counter()
    variants = [variant] * len(paths) if isinstance(variant, str) else list(variant)
    contents = list(content_keys) if content_keys is not None else [content_sha256(p) for p in paths]
    if not len(contents) == len(variants) == len(paths):
        raise VlmopsError(
            f"{len(paths)} paths, {len(contents)} content keys, {len(variants)} variants: give one per path"
        )
    keys = [variant_key(c, v) for c, v in zip(contents, variants, strict=True)]
    sources = {k: (p, c, v) for k, p, c, v in zip(keys, paths, contents, variants, strict=True)}

    def encode(batch: list[str]) -> np.ndarray:
        images = []
        for k in batch:
            path, content, name = sources[k]
            images.append(make(load_image(path), variant_seed(content, name), name))
        return model.embed_images(images)

    label = variant if isinstance(variant, str) else "variants"
    return _embed_cached(
        model, keys, model.transform_id, cache, encode, batch_size, progress, f"images [{label}]", start
    )


def embed_keys_cached(
    model: VLM,
    keys: Sequence[str],
    namespace: str,
    encode: Callable[[list[str]], np.ndarray],
    cache: EmbeddingCache,
    batch_size: int = 64,
    progress: bool = True,
    what: str = "items",
) -> tuple[np.ndarray, EmbedStats]:
    """The general form: vectors for arbitrary `keys` under `namespace`, `encode` run on misses only."""
    return _embed_cached(
        model, list(keys), namespace, cache, encode, batch_size, progress, what, time.perf_counter()
    )


def _embed_cached(
    model: VLM,
    keys: list[str],
    transform_id: str,
    cache: EmbeddingCache,
    encode: Callable[[list[str]], np.ndarray],
    batch_size: int,
    progress: bool,
    what: str,
    start: float,
    stream: Callable[[list[str]], Chunks] | None = None,
) -> tuple[np.ndarray, EmbedStats]:
    """Shared body: look up distinct keys, encode misses batch by batch, store each batch, reassemble.

    `stream` (misses -> ``(keys, vectors)`` chunks) replaces the local batches of `encode` when given.
    """
    if batch_size < 1:
        raise VlmopsError(f"batch_size must be at least 1, got {batch_size}")
    version = model.info.version
    unique = list(dict.fromkeys(keys))
    vectors = cache.get_many(version, transform_id, unique)
    misses = [k for k in unique if k not in vectors]
    if misses:
        from vlmops.progress import progress_bar

        if stream is None:

            def stream(todo: list[str]) -> Chunks:
                return ((batch, encode(batch)) for batch in batched(todo, batch_size))

        wanted = set(misses)
        with progress_bar(progress) as bar:
            task = bar.add_task(f"embedding {what} ({model.info.name})", total=len(misses))
            for batch, encoded in stream(misses):
                out = np.asarray(encoded, dtype=np.float32)
                if out.ndim != 2 or out.shape[0] != len(batch):
                    raise VlmopsError(
                        f"model {model.info.uri} returned shape {out.shape} for {len(batch)} {what}; "
                        "expected (n, d): the adapter is broken"
                    )
                fresh = {k: v for k, v in zip(batch, out, strict=True) if k in wanted and k not in vectors}
                cache.put_many(version, transform_id, fresh)
                vectors.update(fresh)
                bar.advance(task, len(fresh))
        if lost := [k for k in misses if k not in vectors]:
            raise VlmopsError(f"{len(lost)} of {len(misses)} {what} came back without a vector; run again")
    dim = next(iter(vectors.values())).shape[0] if vectors else model.info.dim
    result = np.stack([vectors[k] for k in keys]) if keys else np.zeros((0, dim), dtype=np.float32)
    stats = EmbedStats(
        n=len(keys),
        unique=len(unique),
        hits=len(unique) - len(misses),
        misses=len(misses),
        seconds=time.perf_counter() - start,
    )
    return result.astype(np.float32, copy=False), stats
