"""The model protocol every adapter implements, and helpers shared by adapters."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from vlmops.hashing import sha256_file

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModelInfo:
    """Identity of a loaded model: what it is, which weights, which licence, which output size."""

    name: str
    version: str
    dim: int
    uri: str
    weights_sha256: str | None = None
    licence: str = "unknown"
    image_size: int | None = None

    def to_dict(self) -> dict:
        """Plain dict for JSON output."""
        return asdict(self)


@runtime_checkable
class VLM(Protocol):
    """A dual-encoder vision-language model: images and texts to L2-normalised float32 vectors."""

    info: ModelInfo
    logit_scale: float

    @property
    def transform_id(self) -> str:
        """Identifier of the image preprocessing; part of every embedding-cache key."""
        ...

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, d) float32, rows L2-normalised."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(m, d) float32, rows L2-normalised."""
        ...


@runtime_checkable
class DifferentiableVLM(VLM, Protocol):
    """A VLM whose image tower exposes gradients with respect to its input pixels (white-box attacks).

    Pixels are in [0, 1] real-pixel space after the model's resize/crop and before its mean/std
    normalisation, so an L-infinity budget of k/255 means k grey levels.
    ``embed_pixels(pixels(images))`` equals ``embed_images(images)`` up to float rounding.
    """

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, 3, H, W) float tensor in [0, 1]: the model's preprocessed input, not yet normalised."""
        ...

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, d) L2-normalised embeddings of [0, 1] pixels, differentiable (normalisation applied inside)."""
        ...


@dataclass(frozen=True)
class Usage:
    """Tokens a generation consumed: the prompt (image tokens included, where the model counts them)
    and the answer; None where the model or server does not say."""

    prompt_tokens: int | None
    completion_tokens: int | None

    @property
    def total_tokens(self) -> int | None:
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Generation:
    """One answer of a generative model to one (image, prompt) pair.

    ``token_logprobs`` holds the natural-log probability of each generated token where the model
    exposes it (None otherwise); ``finish_reason`` is "stop" (the model ended the answer) or "length"
    (``max_tokens`` cut it). ``seconds`` is the wall time of the call that produced the answer and
    ``first_token_seconds`` the time to its first token, where known.
    """

    text: str
    finish_reason: str
    usage: Usage
    seconds: float
    token_ids: tuple[int, ...] | None = None
    tokens: tuple[str, ...] | None = None
    token_logprobs: tuple[float, ...] | None = None
    first_token_seconds: float | None = None

    def to_dict(self) -> dict:
        """Plain dict for JSON output."""
        payload = asdict(self)
        payload["usage"]["total_tokens"] = self.usage.total_tokens
        return payload


@runtime_checkable
class GenerativeVLM(Protocol):
    """A model that answers prompts about images with text (captions, descriptions, answers).

    ``generate`` takes one prompt per image and returns one `Generation` per pair, in order. Greedy
    decoding (temperature 0) is deterministic; ``seed`` makes sampling repeatable where the model
    supports it. An adapter may take more keywords, which the gateway uses where ``generate``'s
    signature has them (builtin:emoji-captioner does): ``top_p`` (nucleus sampling),
    ``should_stop(i)`` (end answer ``i`` early: its client left) and ``on_text`` (row -> callback
    with the answer's text so far, for streaming).
    """

    info: ModelInfo

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
        """One `Generation` per (image, prompt) pair."""
        ...


def capabilities(model: object) -> dict[str, bool | None]:
    """What a loaded model can do: embed (dual encoder), generate, logprobs, gradients (white-box).

    ``logprobs`` is None where it depends on what stands behind the model (an API server).
    """
    return {
        "embed": isinstance(model, VLM),
        "generate": isinstance(model, GenerativeVLM),
        "logprobs": getattr(model, "exposes_logprobs", False),
        "gradients": isinstance(model, DifferentiableVLM),
    }


def check_generation_inputs(images: Sequence, prompts: Sequence[str], max_tokens: int) -> None:
    """Raise ValueError unless there is one prompt per image and ``max_tokens`` is positive."""
    if len(images) != len(prompts):
        raise ValueError(
            f"generate needs one prompt per image: got {len(images)} images and {len(prompts)} prompts"
        )
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def sha256_files(paths: Sequence[str | Path]) -> str:
    """One hex sha256 over several files (sorted by name), for multi-file checkpoints."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def batched(items: Sequence, size: int):
    """Yield consecutive slices of `items` of at most `size` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def embed_in_batches(items: Sequence, batch_size: int, encode: Callable[[list], Any], dim: int) -> np.ndarray:
    """Run `encode` over batches of `items` (no autograd) and return (n, dim) float32 unit rows.

    `encode` may return a numpy array or a torch tensor; empty input gives shape (0, dim).
    """
    import torch

    if len(items) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    with torch.inference_mode():
        chunks = [encode(list(batch)) for batch in batched(list(items), batch_size)]
    arrays = [c.float().cpu().numpy() if isinstance(c, torch.Tensor) else np.asarray(c) for c in chunks]
    return l2_normalise(np.concatenate(arrays))
