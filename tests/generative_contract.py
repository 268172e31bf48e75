"""The contract every generative adapter meets; run `check_generative(model)` from each adapter's tests.

The twin of `adapter_contract.py` for `GenerativeVLM`: one answer per pair in input order, greedy
decoding that repeats itself, batching that changes nothing, `max_tokens` honoured, the usage and
timing fields filled in, a `Generation` that serialises to JSON, and mismatched inputs refused.
"""

from __future__ import annotations

import json

import pytest

from adapter_contract import sample_images
from vlmops.models.base import Generation, GenerativeVLM, capabilities

PROMPTS = ["Describe this image.", "What colour is it?", "Is there a person?", "Name it.", "Describe it."]


def check_generative(model: GenerativeVLM) -> list[Generation]:
    """Assert the generative contract on `model`; return its answers to the sample pairs."""
    assert isinstance(model, GenerativeVLM), f"{type(model).__name__} does not implement GenerativeVLM"
    assert capabilities(model)["generate"]
    images = sample_images(len(PROMPTS))
    answers = model.generate(images, PROMPTS, max_tokens=12)
    assert len(answers) == len(PROMPTS)
    for answer in answers:
        assert isinstance(answer, Generation)
        assert isinstance(answer.text, str)
        assert answer.finish_reason in ("stop", "length"), answer.finish_reason
        assert answer.seconds >= 0
        if answer.usage.completion_tokens is not None:
            assert 0 <= answer.usage.completion_tokens <= 12
        if answer.token_logprobs is not None:
            assert all(lp <= 0 for lp in answer.token_logprobs)
        json.dumps(answer.to_dict())

    again = model.generate(images, PROMPTS, max_tokens=12)
    assert [a.text for a in again] == [a.text for a in answers], "greedy decoding is not repeatable"
    pairs = zip(images, PROMPTS, strict=True)
    one_by_one = [model.generate([image], [prompt], max_tokens=12)[0] for image, prompt in pairs]
    assert [a.text for a in one_by_one] == [a.text for a in answers], "answers depend on the batch"
    reordered = model.generate(images[::-1], PROMPTS[::-1], max_tokens=12)
    assert [a.text for a in reordered] == [a.text for a in answers][::-1], "answers are not in input order"

    short = model.generate(images[:1], PROMPTS[:1], max_tokens=1)[0]
    if short.usage.completion_tokens is not None:
        assert short.usage.completion_tokens <= 1
    assert model.generate([], [], max_tokens=4) == []
    with pytest.raises(ValueError, match="one prompt per image"):
        model.generate(images[:2], PROMPTS[:1], max_tokens=4)
    return answers
