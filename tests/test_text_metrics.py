"""Caption and VQA metrics against pycocoevalcap (the COCO reference code) and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from vlmops.evaluate.text_metrics import (
    bleu,
    caption_tokens,
    cider_d,
    exact_match,
    normalise_answer,
    rouge_l,
    vqa_accuracy,
)

WORDS = ["a", "an", "the", "red", "blue", "smiling", "face", "with", "heart", "eyes", "cat", "dog"]
WORDS += ["grinning", "big", "small", "two", "hands", "up"]


def random_corpus(seed: int, items: int = 60) -> tuple[list[str], list[list[str]]]:
    """Seeded captions with repeated words, one- and many-word sentences, and 1-5 references."""
    rng = np.random.default_rng(seed)

    def sentence() -> str:
        return " ".join(rng.choice(WORDS, size=int(rng.integers(1, 12))))

    hypotheses = [sentence() for _ in range(items)]
    references = [[sentence() for _ in range(int(rng.integers(1, 6)))] for _ in range(items)]
    for i in range(0, items, 7):  # some exact hits and near hits
        references[i][0] = hypotheses[i]
        references[i + 1][-1] = hypotheses[i + 1] + " cat"
    return hypotheses, references


def coco(hypotheses, references):
    return {i: refs for i, refs in enumerate(references)}, {i: [h] for i, h in enumerate(hypotheses)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_pycocoevalcap(seed):
    hypotheses, references = random_corpus(seed)
    gts, res = coco(hypotheses, references)
    their_corpus, their_items = Bleu(4).compute_score(gts, res, verbose=0)
    our_corpus, our_items = bleu(hypotheses, references)
    np.testing.assert_allclose(our_corpus, their_corpus, rtol=0, atol=1e-6)
    np.testing.assert_allclose(our_items, np.array(their_items).T, rtol=0, atol=1e-6)
    _, their_rouge = Rouge().compute_score(gts, res)
    np.testing.assert_allclose(rouge_l(hypotheses, references), their_rouge, rtol=0, atol=1e-6)
    their_cider, their_cider_items = Cider().compute_score(gts, res)
    ours = cider_d(hypotheses, references)
    np.testing.assert_allclose(ours, their_cider_items, rtol=0, atol=1e-6)
    assert abs(ours.mean() - their_cider) < 1e-6


def test_closed_forms():
    refs = [["a big red heart"], ["two hands up"]]
    corpus, items = bleu(["a big red heart", "two hands up"], refs)
    np.testing.assert_allclose(corpus, 1.0, atol=1e-6)
    # three words have no 4-gram: COCO's smoothing leaves (1e-15 / 1e-9) ** (1/4), not 0
    assert abs(items[1, 3] - (1e-15 / 1e-9) ** 0.25) < 1e-9
    np.testing.assert_allclose(
        rouge_l(["a big red heart", "hands"], refs),
        [1.0, (1 + 1.2**2) * (1 / 3) / (1 / 3 + 1.2**2)],  # P = 1, R = 1/3
    )
    # half the unigrams right, no bigram: BLEU-1 = 0.5 (no brevity penalty), BLEU-2 ~ 0
    corpus, _ = bleu(["red cat"], [["red dog"]])
    assert abs(corpus[0] - 0.5) < 1e-6 and corpus[1] < 1e-4
    assert cider_d(["blue dog"], [["red cat"]])[0] == 0.0
    assert cider_d(["", "red cat"], [["red cat"], ["red cat"]])[0] == 0.0  # an empty answer scores 0


def test_a_model_that_always_says_the_same_scores_badly():
    hypotheses, references = random_corpus(3)
    fixed = ["a smiling face"] * len(hypotheses)
    assert cider_d(fixed, references).mean() < 0.3 * cider_d(hypotheses, references).mean() + 1e-9
    assert bleu(fixed, references)[0][3] < bleu(hypotheses, references)[0][3]


def test_caption_tokens_like_ptb():
    assert caption_tokens("A Red Heart, with two hands... up!") == "a red heart with two hands up"
    assert caption_tokens("It's a dog's toy.") == "it's a dog's toy"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Two dogs!", "2 dogs"),
        ("The cat.", "cat"),
        ("1,000", "1000"),
        ("dont", "don't"),
        ("3.5", "3.5"),
        ("Yes ", "yes"),
    ],
)
def test_vqa_normalisation(raw, normal):
    assert normalise_answer(raw) == normal


def test_vqa_soft_accuracy_closed_forms():
    ten = lambda hits: ["yes"] * hits + ["no"] * (10 - hits)  # noqa: E731
    got = vqa_accuracy(["Yes"] * 5, [ten(0), ten(1), ten(2), ten(3), ten(4)])
    # leave-one-out over 10 annotators: 1 hit -> 0.9*(1/3); 2 -> 0.6; 3 -> 0.9; 4 or more -> 1
    np.testing.assert_allclose(got, [0.0, 0.3, 0.6, 0.9, 1.0])
    np.testing.assert_array_equal(vqa_accuracy(["two"], [["2"]]), [1.0])
    np.testing.assert_array_equal(exact_match(["The Cat", "dog"], [["cat"], ["cat", "dogs"]]), [1.0, 0.0])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference"):
        bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"items \[1\] have no reference"):
        cider_d(["a", "b"], [["a"], []])
