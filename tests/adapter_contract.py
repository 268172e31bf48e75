"""The contract every model adapter meets; run `check_adapter(model)` from each adapter's tests.

Like scikit-learn's estimator checks: one suite, many adapters. Adapters that batch expose a
mutable `batch_size` attribute; the suite then checks that results do not depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from vlmops.models.base import VLM

TEXTS = ["a photo of a cat", "a dog", "", "a photo of a photo of a very long caption " * 8, "cat"]


def sample_images(n: int = 5, seed: int = 0) -> list[Image.Image]:
    """`n` seeded random images of different sizes and modes (RGB, RGBA, L)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        h, w = int(rng.integers(20, 48)), int(rng.integers(20, 48))
        mode = ("RGB", "RGBA", "L")[i % 3]
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        pixels = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
        images.append(Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode))
    return images


def _check_embeddings(x: np.ndarray, n: int, dim: int, what: str) -> None:
    assert isinstance(x, np.ndarray), f"{what}: not a numpy array but {type(x).__name__}"
    assert x.shape == (n, dim), f"{what}: shape {x.shape}, expected {(n, dim)}"
    assert x.dtype == np.float32, f"{what}: dtype {x.dtype}, expected float32"
    assert np.all(np.isfinite(x)), f"{what}: non-finite values"
    if n:
        np.testing.assert_allclose(
            np.linalg.norm(x, axis=1), 1.0, atol=1e-5, err_msg=f"{what}: rows not unit norm"
        )


def _check_batch_invariance(model: VLM, images: Sequence[Image.Image], texts: Sequence[str]) -> None:
    original = model.batch_size
    try:
        model.batch_size = 1
        one_img, one_txt = model.embed_images(images), model.embed_texts(texts)
        model.batch_size = 64
        all_img, all_txt = model.embed_images(images), model.embed_texts(texts)
    finally:
        model.batch_size = original
    np.testing.assert_allclose(one_img, all_img, atol=1e-5, err_msg="image embeddings depend on batch_size")
    np.testing.assert_allclose(one_txt, all_txt, atol=1e-5, err_msg="text embeddings depend on batch_size")


def check_adapter(
    model: VLM, images: Sequence[Image.Image] | None = None, texts: Sequence[str] | None = None
) -> None:
    """Assert that `model` meets the VLM protocol's contract (shapes, dtype, norms, determinism)."""
    images = list(images) if images is not None else sample_images(5)
    texts = list(texts) if texts is not None else TEXTS
    assert isinstance(model, VLM), f"{type(model).__name__} does not implement the VLM protocol"
    dim = model.info.dim
    assert isinstance(dim, int) and dim > 0, f"info.dim must be a positive int, got {dim!r}"
    assert model.info.name and model.info.version, "info.name and info.version must be non-empty"

    image_emb = model.embed_images(images)
    text_emb = model.embed_texts(texts)
    _check_embeddings(image_emb, len(images), dim, "embed_images")
    _check_embeddings(text_emb, len(texts), dim, "embed_texts")

    assert len(np.unique(image_emb.round(6), axis=0)) > 1, (
        "embed_images gives one vector for different images"
    )
    assert len(np.unique(text_emb.round(6), axis=0)) > 1, "embed_texts gives one vector for different texts"

    np.testing.assert_array_equal(
        model.embed_images(images), image_emb, err_msg="embed_images not deterministic"
    )
    np.testing.assert_array_equal(model.embed_texts(texts), text_emb, err_msg="embed_texts not deterministic")

    _check_embeddings(model.embed_images([]), 0, dim, "embed_images([])")
    _check_embeddings(model.embed_texts([]), 0, dim, "embed_texts([])")

    if hasattr(model, "batch_size"):
        _check_batch_invariance(model, images, texts)

    assert isinstance(model.logit_scale, float), f"logit_scale must be a float, got {type(model.logit_scale)}"
    assert model.logit_scale > 0, f"logit_scale must be positive, got {model.logit_scale}"
    assert isinstance(model.transform_id, str) and model.transform_id, "transform_id must be a non-empty str"
