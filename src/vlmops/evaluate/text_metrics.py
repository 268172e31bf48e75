"""Reference metrics for generated text: BLEU-1..4, ROUGE-L, CIDEr-D, exact match, VQA accuracy.

BLEU, ROUGE-L and CIDEr-D follow the COCO caption evaluation code (pycocoevalcap) exactly, quirks
included, so that scores compare with published ones: corpus BLEU with the closest reference length
and its 1e-15 / 1e-9 smoothing; ROUGE-L as the F-measure (beta 1.2) of the best precision and best
recall over the references; CIDEr-D with idf from the references, clipped tf-idf, a Gaussian length
penalty (sigma 6) over bigram counts, times 10. Each metric takes tokenised strings (tokens separated
by single spaces: use `caption_tokens`) and returns one score per item; `tests/test_text_metrics.py`
checks them against pycocoevalcap to 1e-6. The code here counts each reference's n-grams once, where
pycocoevalcap recounts them for every hypothesis.

`caption_tokens` approximates the PTB tokenizer COCO uses (Java, not a dependency): lower case,
punctuation split off and dropped. `normalise_answer` is the VQA challenge's answer normalisation
(punctuation, articles, number words, common contractions); `vqa_accuracy` its soft accuracy.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

PUNCTUATION_TOKENS = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"])
_TOKEN = re.compile(r"\.\.\.|--|[A-Za-z0-9]+(?:'[A-Za-z]+)?|[^\sA-Za-z0-9]", re.UNICODE)


def caption_tokens(text: str) -> str:
    """`text` lower-cased, split into words and punctuation, punctuation dropped, joined by spaces."""
    return " ".join(t for t in _TOKEN.findall(text.lower()) if t not in PUNCTUATION_TOKENS)


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _check(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"items {empty[:5]} have no reference; every item needs at least one")


def bleu(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4
) -> tuple[list, np.ndarray]:
    """Corpus BLEU-1..n (list of n floats) and per-item BLEU-1..n ((items, n) array)."""
    _check(hypotheses, references)
    small, tiny = 1e-9, 1e-15
    total_guess, total_correct = np.zeros(n), np.zeros(n)
    total_test = total_ref = 0
    per_item = np.zeros((len(hypotheses), n))
    for row, (hypothesis, refs) in enumerate(zip(hypotheses, references, strict=True)):
        words = hypothesis.split()
        counts = _ngrams(words, n)
        max_ref: Counter = Counter()
        ref_lengths = []
        for ref in refs:
            ref_words = ref.split()
            ref_lengths.append(len(ref_words))
            max_ref |= _ngrams(ref_words, n)
        ref_length = min((abs(length - len(words)), length) for length in ref_lengths)[1]
        guess = np.array([max(0, len(words) - k) for k in range(n)], dtype=float)
        correct = np.zeros(n)
        for gram, count in counts.items():
            correct[len(gram) - 1] += min(max_ref[gram], count)
        per_item[row] = _bleu_from_counts(correct, guess, len(words), ref_length, small, tiny)
        total_guess += guess
        total_correct += correct
        total_test += len(words)
        total_ref += ref_length
    corpus = _bleu_from_counts(total_correct, total_guess, total_test, total_ref, small, tiny)
    return [float(b) for b in corpus], per_item


def _bleu_from_counts(correct, guess, test_len: int, ref_len: int, small: float, tiny: float) -> np.ndarray:
    precisions = (correct + tiny) / (guess + small)
    scores = np.cumprod(precisions) ** (1.0 / np.arange(1, len(correct) + 1))
    ratio = (test_len + tiny) / (ref_len + small)
    return scores * math.exp(1 - 1 / ratio) if ratio < 1 else scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> np.ndarray:
    """Per-item ROUGE-L: F-beta of the best LCS precision and best LCS recall over the references."""
    _check(hypotheses, references)
    scores = np.zeros(len(hypotheses))
    for row, (hypothesis, refs) in enumerate(zip(hypotheses, references, strict=True)):
        words = hypothesis.split(" ")
        common = [(_lcs(ref.split(" "), words), len(ref.split(" "))) for ref in refs]
        precision = max(lcs / len(words) for lcs, _ in common)
        recall = max(lcs / length for lcs, length in common)
        if precision and recall:
            scores[row] = (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
    return scores


def cider_d(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> np.ndarray:
    """Per-item CIDEr-D (the corpus score is their mean); document frequencies come from `references`."""
    _check(hypotheses, references)
    ref_counts = [[_ngrams(ref.split(), n) for ref in refs] for refs in references]
    frequency: Counter = Counter()
    for counts in ref_counts:
        frequency.update({gram for c in counts for gram in c})
    log_items = math.log(len(references)) if references else 0.0

    def vector(counts: Counter) -> tuple[list[dict], np.ndarray, int]:
        weights: list[dict] = [{} for _ in range(n)]
        for gram, tf in counts.items():
            weights[len(gram) - 1][gram] = tf * (log_items - math.log(max(1.0, frequency[gram])))
        norms = np.array([math.sqrt(sum(v * v for v in w.values())) for w in weights])
        bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)  # COCO's "length"
        return weights, norms, bigrams

    scores = np.zeros(len(hypotheses))
    for row, hypothesis in enumerate(hypotheses):
        hyp, hyp_norm, hyp_len = vector(_ngrams(hypothesis.split(), n))
        total = np.zeros(n)
        for counts in ref_counts[row]:
            ref, ref_norm, ref_len = vector(counts)
            dots = np.array(
                [
                    sum(min(v, ref[k].get(g, 0.0)) * ref[k].get(g, 0.0) for g, v in hyp[k].items())
                    for k in range(n)
                ],
                dtype=np.float64,  # an empty answer sums to the integer 0
            )
            both = (hyp_norm != 0) & (ref_norm != 0)
            dots[both] /= hyp_norm[both] * ref_norm[both]
            total += dots * math.exp(-((hyp_len - ref_len) ** 2) / (2 * sigma**2))
        scores[row] = 10.0 * total.mean() / len(ref_counts[row])
    return scores


# --- VQA answers -------------------------------------------------------------------------------

_DIGIT_NAMES = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_NUMBER_WORDS = {"none": "0", "zero": "0"} | {word: str(i) for i, word in enumerate(_DIGIT_NAMES, start=1)}
_ARTICLES = frozenset({"a", "an", "the"})
_CONTRACTIONS = {
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hes": "he's",
    "im": "i'm",
    "isnt": "isn't",
    "itd": "it'd",
    "itll": "it'll",
    "ive": "i've",
    "lets": "let's",
    "shes": "she's",
    "shouldnt": "shouldn't",
    "thats": "that's",
    "theres": "there's",
    "theyre": "they're",
    "wasnt": "wasn't",
    "werent": "weren't",
    "whats": "what's",
    "wont": "won't",
    "wouldnt": "wouldn't",
    "youre": "you're",
}  # fmt: skip  (the VQA table, abridged to the forms that occur in short answers)
_PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')  # the VQA evaluation's list, in its order
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official pattern, look-behind typo included
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")


def normalise_answer(answer: str) -> str:
    """A VQA answer normalised as the VQA challenge's evaluation does: punctuation removed or turned
    into spaces by its rules, lower case, number words as digits, no articles, contractions restored."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for mark in _PUNCTUATION:
        glued = (mark + " " in text or " " + mark in text) or _COMMA_IN_NUMBER.search(text) is not None
        out = out.replace(mark, "" if glued else " ")
    out = _PERIOD.sub("", out)
    words = [_NUMBER_WORDS.get(word, word) for word in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def exact_match(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> np.ndarray:
    """1.0 where the normalised prediction equals any normalised reference answer, else 0.0."""
    _check(predictions, answers)
    return np.array(
        [
            float(normalise_answer(p) in {normalise_answer(a) for a in refs})
            for p, refs in zip(predictions, answers, strict=True)
        ]
    )


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> np.ndarray:
    """VQA soft accuracy: min(1, matching annotators / 3), averaged over leaving each annotator out.

    With a single reference answer (typical outside VQA v2) it is the exact match.
    """
    _check(predictions, answers)
    scores = np.zeros(len(predictions))
    for row, (prediction, refs) in enumerate(zip(predictions, answers, strict=True)):
        guess = normalise_answer(prediction)
        hits = [normalise_answer(a) == guess for a in refs]
        if len(refs) == 1:
            scores[row] = float(hits[0])
            continue
        matches = sum(hits)
        scores[row] = float(np.mean([min(1.0, (matches - hit) / 3.0) for hit in hits]))
    return scores
