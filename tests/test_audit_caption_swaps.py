"""Captions exchanged between records (label-free swap detection)."""

from __future__ import annotations

import numpy as np
import pytest

from vlmops.audit.caption_swaps import swap_partners


def aligned(n: int = 2000, dim: int = 32, seed: int = 0):
    """Unit image rows and caption rows close to their own image, plus distinct caption strings."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, dim))
    text = image + 0.3 * rng.normal(size=(n, dim))
    return image, text, [f"caption {i}" for i in range(n)]


def test_exchanged_captions_are_paired_with_each_other_and_nothing_else_is() -> None:
    image, text, texts = aligned()
    pairs = [(3, 50), (7, 8), (100, 299)]
    for a, b in pairs:
        text[[a, b]] = text[[b, a]]
        texts[a], texts[b] = texts[b], texts[a]
    partner = swap_partners(image, text, texts)
    expected = np.full(len(image), -1)
    for a, b in pairs:
        expected[a], expected[b] = b, a
    assert partner.tolist() == expected.tolist()


def test_a_look_alike_whose_caption_does_not_fit_better_is_not_a_partner() -> None:
    """Record 1 is a near copy of record 0's image, but each caption still fits its own image best."""
    image, text, texts = aligned()
    image[1] = image[0] + 0.05 * np.random.default_rng(1).normal(size=image.shape[1])
    assert (swap_partners(image, text, texts) == -1).all()


def test_records_sharing_a_caption_are_never_each_others_partner() -> None:
    """Two records with the same caption text: exchanging identical captions changes nothing."""
    image, text, texts = aligned()
    text[[0, 1]] = text[[1, 0]]
    texts[0] = texts[1] = "the same caption"
    assert swap_partners(image, text, texts)[[0, 1]].tolist() == [-1, -1]


def test_swap_partners_rejects_mismatched_inputs() -> None:
    image, text, texts = aligned(n=10)
    with pytest.raises(ValueError, match="one image"):
        swap_partners(image, text[:9], texts)
    assert swap_partners(image[:1], text[:1], texts[:1]).tolist() == [-1]


def test_other_carriers_of_a_caption_vouch_for_it() -> None:
    """Records 0 and 1 look like an exchange, but records 2 and 3 carry record 0's caption and look like
    record 0's image: record 0's caption stays; record 1 has no such peers and is still paired."""
    image, text, texts = aligned()
    text[[0, 1]] = text[[1, 0]]
    texts[0], texts[1] = texts[1], texts[0]
    assert swap_partners(image, text, texts)[[0, 1]].tolist() == [1, 0]
    rng = np.random.default_rng(2)
    for peer in (2, 3):
        image[peer] = image[0] + 0.2 * rng.normal(size=image.shape[1])
        texts[peer] = texts[0]
    assert swap_partners(image, text, texts)[[0, 1]].tolist() == [-1, 0]


def test_no_partners_where_the_model_reads_the_data_poorly() -> None:
    """Captions unrelated to their images (a model that cannot read the data): some pairs still happen to
    prefer each other's captions, but no test can reject "no exchange" on that evidence."""
    rng = np.random.default_rng(3)
    image, text = rng.normal(size=(200, 32)), rng.normal(size=(200, 32))
    assert (swap_partners(image, text, [f"caption {i}" for i in range(200)]) == -1).all()


def test_small_data_cannot_prove_an_exchange() -> None:
    """Forty records, one exchanged pair: each caption ranks first on the other's image, but among forty
    captions that happens by chance too often to report it."""
    image, text, texts = aligned(n=40)
    text[[0, 1]] = text[[1, 0]]
    texts[0], texts[1] = texts[1], texts[0]
    assert (swap_partners(image, text, texts) == -1).all()
