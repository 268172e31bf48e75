"""Generations through the store: cached by (model version, image, prompt, decoding parameters)."""

from __future__ import annotations

import pytest

from conftest import write_png
from vlmops.models.base import Generation, ModelInfo, Usage, check_generation_inputs
from vlmops.store.cache import EmbeddingCache
from vlmops.store.generate import DecodingParams, generate_cached


class CountingCaptioner:
    """Answers with the image's top-left pixel and the prompt; counts pairs; can fail on a batch."""

    def __init__(self, fail_on_batch: int | None = None):
        self.info = ModelInfo(name="counting", version="counting-1", dim=0, uri="fake:counting")
        self.pairs = 0
        self.batches = 0
        self.fail_on_batch = fail_on_batch

    def generate(self, images, prompts, *, max_tokens=32, temperature=0.0, seed=None, logprobs=False):
        check_generation_inputs(images, prompts, max_tokens)
        self.batches += 1
        if self.batches == self.fail_on_batch:
            raise RuntimeError("model crashed")
        self.pairs += len(images)
        return [
            Generation(
                text=f"{image.convert('RGB').getpixel((0, 0))} {prompt} t={temperature} s={seed}",
                finish_reason="stop",
                usage=Usage(3, 4),
                seconds=0.01,
                token_ids=(1, 2),
                token_logprobs=(-0.5, -0.25),
            )
            for image, prompt in zip(images, prompts, strict=True)
        ]


@pytest.fixture()
def pngs(tmp_path):
    return [write_png(tmp_path / f"{i}.png", seed=i) for i in range(5)]


def test_cached_answers_are_not_generated_again(tmp_path, pngs):
    cache = EmbeddingCache(tmp_path / "store.sqlite")
    model = CountingCaptioner()
    images = [*pngs, pngs[0]]  # a repeated pair is generated once
    prompts = ["Describe."] * 6
    first, stats = generate_cached(model, images, prompts, DecodingParams(), cache, batch_size=2)
    assert (stats.n, stats.unique, stats.hits, stats.misses, model.pairs) == (6, 5, 0, 5, 5)
    assert first[5] == first[0]
    again, stats = generate_cached(model, images, prompts, DecodingParams(), cache)
    assert (stats.hits, stats.misses, model.pairs) == (5, 0, 5)
    assert again == first  # the whole Generation survives the round trip, tuples included
    for changed in (DecodingParams(temperature=0.7), DecodingParams(seed=1), DecodingParams(max_tokens=8)):
        _, stats = generate_cached(model, images[:2], prompts[:2], changed, cache)
        assert stats.misses == 2, changed
    _, stats = generate_cached(model, images[:2], ["Name it."] * 2, DecodingParams(), cache)
    assert stats.misses == 2


def test_an_interrupted_run_keeps_its_finished_batches(tmp_path, pngs):
    cache = EmbeddingCache(tmp_path / "store.sqlite")
    with pytest.raises(RuntimeError, match="crashed"):
        generate_cached(
            CountingCaptioner(fail_on_batch=2), pngs, ["Describe."] * 5, DecodingParams(), cache, 2
        )
    resumed = CountingCaptioner()
    _, stats = generate_cached(resumed, pngs, ["Describe."] * 5, DecodingParams(), cache, 2)
    assert (stats.hits, stats.misses, resumed.pairs) == (2, 3, 3)


def test_without_a_cache_every_pair_is_generated(pngs):
    model = CountingCaptioner()
    generate_cached(model, pngs, ["Describe."] * 5, DecodingParams())
    generate_cached(model, pngs, ["Describe."] * 5, DecodingParams())
    assert model.pairs == 10
    with pytest.raises(ValueError, match="5 images but 1 prompts"):
        generate_cached(model, pngs, ["Describe."], DecodingParams())


class ReversedBackend:
    """Generates here with its own copy of the model, but returns the chunks last-first (as a cluster
    may) and can lose the first `drop` items: the caller must reorder, cache and notice the loss."""

    def __init__(self, chunk: int = 2, drop: int = 0) -> None:
        self.chunk, self.drop = chunk, drop
        self.items: list = []

    def generate_pairs(self, model, items, params, batch_size):
        from vlmops.store.generate import local_chunks

        self.items = list(items)
        yield from reversed(list(local_chunks(model, self.items[self.drop :], params, self.chunk)))


def test_a_generation_backend_gets_only_the_misses_and_answers_keep_input_order(tmp_path, pngs):
    from vlmops.store.generate import DerivedImage, use_generation_backend

    cache = EmbeddingCache(tmp_path / "store.sqlite")
    model = CountingCaptioner()
    flipped = DerivedImage(pngs[1], "flip", lambda im: im.transpose(0))
    images, prompts = [*pngs, flipped, pngs[0]], ["Describe."] * 7
    local, _ = generate_cached(CountingCaptioner(), images, prompts, DecodingParams())
    generate_cached(model, images[:2], prompts[:2], DecodingParams(), cache)  # two pairs cached first
    backend = ReversedBackend()
    counts: list[int] = []
    with use_generation_backend(backend):
        remote, stats = generate_cached(
            model, images, prompts, DecodingParams(), cache, on_batch=counts.append
        )
    assert remote == local  # input order restored, the derived image made on the backend's side
    assert [image for _, image, _ in backend.items] == [*pngs[2:], flipped]  # the misses only, once each
    assert (stats.hits, stats.misses, sum(counts)) == (2, 4, 4)
    _, stats = generate_cached(model, images, prompts, DecodingParams(), cache)  # outside: local again
    assert stats.misses == 0  # the backend's answers were cached


def test_a_generation_backend_that_loses_answers_is_an_error_and_keeps_what_came_back(tmp_path, pngs):
    from vlmops.errors import VlmopsError
    from vlmops.store.generate import use_generation_backend

    cache = EmbeddingCache(tmp_path / "store.sqlite")
    model = CountingCaptioner()
    with use_generation_backend(ReversedBackend(drop=2)), pytest.raises(VlmopsError, match="2 of 5 prompts"):
        generate_cached(model, pngs, ["Describe."] * 5, DecodingParams(), cache)
    _, stats = generate_cached(model, pngs, ["Describe."] * 5, DecodingParams(), cache)
    assert (stats.hits, stats.misses) == (3, 2)
