"""Shared fixtures: tiny images and a tiny fake model that counts its calls."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmops.models.base import ModelInfo, l2_normalise


def write_png(path: Path, seed: int, size: int = 4) -> Path:
    """Write a small random-pixel PNG (deterministic per seed) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


class FakeModel:
    """A deterministic VLM for tests: records batch sizes, optionally fails on the k-th image batch."""

    def __init__(
        self,
        version: str = "fake-1",
        dim: int = 8,
        transform_id: str = "fake-4px",
        fail_on_batch: int | None = None,
    ) -> None:
        self.info = ModelInfo(name="fake", version=version, dim=dim, uri="fake:test")
        self.logit_scale = 100.0
        self._transform_id = transform_id
        self.fail_on_batch = fail_on_batch
        self.image_batches: list[int] = []
        self.text_batches: list[int] = []

    @property
    def transform_id(self) -> str:
        return self._transform_id

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.image_batches.append(len(images))
        if self.fail_on_batch is not None and len(self.image_batches) == self.fail_on_batch:
            raise RuntimeError(f"fake failure on image batch {self.fail_on_batch}")
        rows = [
            np.resize(np.asarray(im.resize((2, 2)), np.float32).ravel() + 1, self.info.dim) for im in images
        ]
        return l2_normalise(np.stack(rows))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.text_batches.append(len(texts))
        digests = [np.frombuffer(hashlib.sha256(t.encode()).digest(), np.uint8) for t in texts]
        return l2_normalise(np.stack([d[: self.info.dim].astype(np.float32) + 1 for d in digests]))

    @property
    def images_embedded(self) -> int:
        return sum(self.image_batches)

    @property
    def texts_embedded(self) -> int:
        return sum(self.text_batches)


@pytest.fixture
def fake_model() -> type[FakeModel]:
    """The FakeModel class; call it with version/dim/transform_id/fail_on_batch."""
    return FakeModel


@pytest.fixture
def png_writer() -> Callable[..., Path]:
    """`write_png(path, seed, size=4)`: a deterministic tiny PNG."""
    return write_png


@pytest.fixture
def tiny_images() -> list[Image.Image]:
    """Five seeded random images of mixed sizes and modes (RGB, RGBA, L), as used by adapter_contract."""
    from adapter_contract import sample_images

    return sample_images(5, seed=0)
