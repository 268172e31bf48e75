"""Robustness parts of the generative eval with models whose behaviour is known: one that obeys text
written in the image, one that answers the same whatever the wording, one that always says yes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlmops.data.emoji import load_emoji_manifest, manifest_path
from vlmops.data.manifest import load_manifest
from vlmops.evaluate.corruptions import FAMILIES
from vlmops.evaluate.generative import build_generative_task
from vlmops.evaluate.generative_robustness import (
    PARAPHRASES,
    Runner,
    consistency_section,
    corruption_section,
    injection_section,
    pope_section,
    robustness_section,
)
from vlmops.models.base import Generation, ModelInfo, Usage
from vlmops.store.cache import EmbeddingCache
from vlmops.store.generate import DecodingParams


class Rule:
    """A generative model answering by a rule on (image, prompt)."""

    def __init__(self, rule, name: str):
        self.rule = rule
        self.info = ModelInfo(name=name, version=name, dim=0, uri=f"test:{name}")

    def generate(self, images, prompts, *, max_tokens=32, temperature=0.0, seed=None, logprobs=False):
        return [
            Generation(self.rule(i, p), "stop", Usage(1, 1), 0.001)
            for i, p in zip(images, prompts, strict=True)
        ]


def reads_the_band(image: Image.Image, prompt: str) -> str:
    pixels = np.asarray(image.convert("RGB"))
    band = pixels[int(pixels.shape[0] * 0.75) :]
    if (band.sum(axis=2) < 450).any():  # grey-to-black text pixels (small text is anti-aliased)
        return "banana"
    return "white band" if (band > 240).all() else "red square"


@pytest.fixture()
def squares(tmp_path):
    path = tmp_path / "squares.jsonl"
    with path.open("w") as out:
        for i in range(12):
            image = tmp_path / f"{i}.png"
            Image.new("RGB", (64, 64), (200 + i, 20, 20)).save(image)
            tags = ["square", "red"] + (["box"] if i % 2 else ["tile"])
            out.write(
                json.dumps({"id": str(i), "image": str(image), "texts": ["red square"], "tags": tags}) + "\n"
            )
    return build_generative_task(load_manifest(path), "other", "caption", split="all")


def test_injection_is_told_apart_from_the_blank_band(squares, tmp_path):
    runner = Runner(
        Rule(reads_the_band, "band-reader"), squares, EmbeddingCache(tmp_path / "s.sqlite"), DecodingParams()
    )
    rows = np.arange(squares.n)
    section = injection_section(runner, rows)
    assert (section["success_rate"], section["control_rate"]) == (1.0, 0.0)
    assert (section["score_attacked"], section["score_blank_band"]) == (0.0, 0.0)
    ignores = Runner(Rule(lambda i, p: "red square", "blind"), squares, None, DecodingParams())
    assert injection_section(ignores, rows)["success_rate"] == 0.0


def test_corruptions_cover_every_family_and_are_cached(squares, tmp_path):
    cache = EmbeddingCache(tmp_path / "s.sqlite")
    calls = []
    model = Rule(
        lambda i, p: calls.append(1) or ("red square" if np.asarray(i)[..., 0].mean() > 150 else "dark"), "m"
    )
    runner = Runner(model, squares, cache, DecodingParams())
    section = corruption_section(runner, np.arange(squares.n), (3,), seed=0)
    assert set(section["by_family"]) == set(FAMILIES) and section["clean"] == 1.0
    assert section["by_family"]["brightness"]["3"] == 1.0  # brighter red is still red
    assert 0 < section["mean_corrupted"] <= 1.0 and "cider_d_by_family" in section
    first = len(calls)
    corruption_section(runner, np.arange(squares.n), (3,), seed=0)
    assert len(calls) == first, "corrupted images were generated again instead of read from the cache"


def test_pope_with_a_model_that_always_says_yes(squares):
    runner = Runner(Rule(lambda i, p: "Yes.", "yes-man"), squares, None, DecodingParams())
    section = pope_section(runner, np.arange(squares.n), seed=0)
    for setting in ("random", "popular", "adversarial"):
        assert section[setting]["yes_ratio"] == 1.0 and section[setting]["accuracy"] == 0.5


@pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")
def test_paraphrase_consistency_on_emoji_questions():
    manifest = load_emoji_manifest()
    subset = manifest[manifest["split"] == "val"].head(8)
    task = build_generative_task(subset, "emoji", "vqa", split="val")
    rows = np.arange(task.n)
    steady = Runner(Rule(lambda i, p: "none", "steady"), task, None, DecodingParams())
    assert consistency_section(steady, rows)["consistency"] == 1.0
    echo = Runner(Rule(lambda i, p: p.split()[0], "echo"), task, None, DecodingParams())
    result = consistency_section(echo, rows)
    assert result["consistency"] == 0.0 and set(result["by_type"]) == set(PARAPHRASES)


def test_suites(squares):
    runner = Runner(Rule(lambda i, p: "red square", "blind"), squares, None, DecodingParams())
    assert "skipped" in robustness_section(runner, "quick", 0)
    standard = robustness_section(runner, "standard", 0)
    assert standard["corruptions"]["severities"] == [3] and standard["consistency"]["skipped"]
    assert standard["pope"]["random"]["probes"] > 0
    with pytest.raises(Exception, match="unknown suite"):
        robustness_section(runner, "huge", 0)
