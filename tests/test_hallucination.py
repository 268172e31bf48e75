"""CHAIR and POPE on hand-computed fixtures, and a model that is wrong on purpose."""

from __future__ import annotations

import pytest

from vlmops.evaluate.hallucination import (
    ObjectVocabulary,
    chair,
    parse_yes_no,
    pope_probes,
    pope_scores,
)

VOCAB = ObjectVocabulary({"dog": ["puppy"], "hot dog": [], "cat": ["kitten"], "heart": [], "hand": ["palm"]})


def test_mentions_match_whole_words_plurals_synonyms_and_longest_phrase():
    assert VOCAB.mentions("Two puppies, a Kitten and hot dogs!") == ["dog", "cat", "hot dog"]
    assert VOCAB.mentions("a category of hearts and hands") == [
        "heart",
        "hand",
    ]  # "cat" inside a word is no cat


def test_chair_counts_by_hand():
    captions = ["a dog and a cat", "a heart", "two hands holding a heart and a puppy", "nothing here"]
    truths = [{"dog"}, {"heart"}, {"hand"}, set()]
    result = chair(captions, truths, VOCAB)
    # mentions: 2 + 1 + 3 + 0 = 6; hallucinated: cat (1st), heart and dog (3rd) = 3
    assert (result.mentions, result.hallucinated_mentions) == (6, 3)
    assert result.chair_i == pytest.approx(3 / 6) and result.chair_s == pytest.approx(2 / 4)
    assert result.per_caption == (("cat",), (), ("heart", "dog"), ())


def test_a_captioner_that_always_names_a_dog_hallucinates_where_there_is_none():
    truths = [{"dog"}, {"cat"}, {"heart"}, {"hand"}]
    assert chair(["a dog"] * 4, truths, VOCAB).chair_s == pytest.approx(0.75)
    assert chair(["a dog", "a cat", "a heart", "a hand"], truths, VOCAB).chair_s == 0.0


def test_pope_probes_are_balanced_and_sample_by_setting():
    truths = [{"dog", "cat"}, {"dog", "hand"}, {"dog", "cat"}, {"heart"}]
    objects = ["cat", "dog", "hand", "heart", "hot dog"]
    popular = pope_probes(truths, objects, "popular", per_image=1, seed=0)
    assert sum(p.present for p in popular) == sum(not p.present for p in popular) == 4
    # the most frequent object the 4th image lacks is dog (3 images)
    assert [p.object for p in popular if p.item == 3 and not p.present] == ["dog"]
    adversarial = pope_probes(truths, objects, "adversarial", per_image=2, seed=0)
    # image 1 has dog and hand; what co-occurs most with them and is absent: cat (with dog twice)
    assert next(p.object for p in adversarial if p.item == 1 and not p.present) == "cat"
    random_probes = pope_probes(truths, objects, "random", per_image=2, seed=0)
    assert all(p.object not in truths[p.item] for p in random_probes if not p.present)
    with pytest.raises(ValueError, match="unknown POPE setting"):
        pope_probes(truths, objects, "hard")


def test_pope_scores_by_hand_and_an_always_yes_model():
    truths = [{"dog"}, {"cat"}, {"heart"}, {"hand"}]
    probes = pope_probes(truths, ["cat", "dog", "hand", "heart"], "random", per_image=1)
    always_yes = pope_scores(probes, ["Yes."] * len(probes))
    assert (always_yes.accuracy, always_yes.recall, always_yes.yes_ratio) == (0.5, 1.0, 1.0)
    assert always_yes.precision == 0.5 and always_yes.f1 == pytest.approx(2 / 3)
    perfect = pope_scores(probes, ["yes" if p.present else "No, there is not." for p in probes])
    assert (perfect.accuracy, perfect.f1, perfect.yes_ratio) == (1.0, 1.0, 0.5)
    mumbling = pope_scores(probes, ["maybe"] * len(probes))
    assert (mumbling.accuracy, mumbling.unparsed, mumbling.yes_ratio) == (0.0, len(probes), 0.0)
    assert parse_yes_no("Nope") is False and parse_yes_no("") is None


def test_judge_estimate_by_hand_and_its_agreement_with_chair():
    import numpy as np

    from vlmops.evaluate.hallucination import agreement, judge_unsupported

    objects = ["cat", "dog", "hand", "heart"]
    object_vectors = np.eye(4)
    images = np.array([[0.9, 0.4, 0.1, 0.0], [0.0, 0.1, 0.2, 0.95]])  # image 0: cat then dog; 1: heart
    mentions = [["cat", "dog"], ["heart"]]
    estimate = judge_unsupported(images, object_vectors, objects, mentions, top_fraction=0.25)
    assert estimate.unsupported == (("dog",), ())  # only each image's top object is supported
    assert (estimate.rate, estimate.caption_rate, estimate.mentions) == (1 / 3, 0.5, 3)
    loose = judge_unsupported(images, object_vectors, objects, mentions, top_fraction=0.5)
    assert loose.unsupported == ((), ())
    reference = chair(["a cat and a dog", "a heart"], [{"cat"}, {"heart"}], VOCAB)
    assert reference.per_caption == (("dog",), ())
    assert agreement(estimate, reference) | {} == {
        "estimate_chair_i": 1 / 3, "reference_chair_i": 1 / 3, "estimate_chair_s": 0.5,
        "reference_chair_s": 0.5, "agreement": 1.0, "precision": 1.0, "recall": 1.0,
    }  # fmt: skip
    disagree = agreement(loose, reference)
    assert (disagree["agreement"], disagree["precision"], disagree["recall"]) == (2 / 3, None, 0.0)
    with pytest.raises(ValueError, match="top_fraction"):
        judge_unsupported(images, object_vectors, objects, mentions, top_fraction=0)
