"""Object hallucination: CHAIR on captions and POPE-style yes/no probing.

CHAIR (Rohrbach et al., 2018) reads the objects a caption mentions, over a vocabulary of object
names, and counts those that are not in the image's ground truth: per mention (CHAIR_i = hallucinated
mentions / mentions) and per caption (CHAIR_s = captions with a hallucinated mention / captions).
A vocabulary maps each object to the phrases that name it (``{"dog": ["dog", "puppy"]}``); phrases match
whole words, plurals in "s", "es" and "ies" included, longest phrase first so "hot dog" is not also a "dog".

A judge dual encoder gives a reference-free estimate of the same rate (`judge_unsupported`): a
mentioned object is unsupported when the judge ranks it outside the top of the vocabulary for that
image. `agreement` validates it against CHAIR where references exist, so the monitor can use the
estimate on live traffic, where they do not.

POPE (Li et al., 2023) asks "Is there a X in the image?" for objects that are there (answer yes) and
for absent ones (answer no) sampled three ways: random, popular (the data's most frequent objects)
and adversarial (objects that most often appear together with this image's objects). The model's
answers give accuracy, precision, recall, F1 and the share of "yes" (a model that always says yes
scores 0.5 accuracy and 1.0 yes-ratio on a balanced probe).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vlmops.evaluate.text_metrics import caption_tokens

POPE_SETTINGS = ("random", "popular", "adversarial")
POPE_QUESTION = "Is there a {} in the image? Answer yes or no."


class ObjectVocabulary:
    """Object names and the phrases that mention them, matched on caption tokens."""

    def __init__(self, synonyms: Mapping[str, Iterable[str]]):
        self._phrases: dict[tuple[str, ...], str] = {}
        for name, phrases in synonyms.items():
            for phrase in {name, *phrases}:
                words = tuple(caption_tokens(phrase).split())
                if not words:
                    continue
                for form in _plural_forms(words):
                    self._phrases.setdefault(form, name)
        if not self._phrases:
            raise ValueError("the object vocabulary is empty; give at least one object name")
        self._longest = max(len(p) for p in self._phrases)
        self.objects = sorted(set(self._phrases.values()))

    def mentions(self, text: str) -> list[str]:
        """Objects named in `text`, in order, one entry per mention."""
        words = caption_tokens(text).split()
        found, i = [], 0
        while i < len(words):
            for size in range(min(self._longest, len(words) - i), 0, -1):
                name = self._phrases.get(tuple(words[i : i + size]))
                if name is not None:
                    found.append(name)
                    i += size
                    break
            else:
                i += 1
        return found


def _plural_forms(words: tuple[str, ...]) -> list[tuple[str, ...]]:
    last = words[-1]
    plurals = [last + "s", last + "es"] + ([last[:-1] + "ies"] if last.endswith("y") else [])
    return [words] + [(*words[:-1], plural) for plural in plurals]


@dataclass(frozen=True)
class ChairResult:
    """CHAIR over a set of captions, with the counts behind it."""

    chair_i: float
    chair_s: float
    mentions: int
    hallucinated_mentions: int
    captions: int
    hallucinated_captions: int
    per_caption: tuple[tuple[str, ...], ...]  # hallucinated objects of each caption

    def to_dict(self) -> dict:
        return asdict(self)


def chair(
    captions: Sequence[str], truths: Sequence[Iterable[str]], vocabulary: ObjectVocabulary
) -> ChairResult:
    """CHAIR_i and CHAIR_s of `captions` against each image's ground-truth objects."""
    if len(captions) != len(truths):
        raise ValueError(f"{len(captions)} captions but {len(truths)} ground-truth object sets")
    mentions = hallucinated = bad_captions = 0
    per_caption = []
    for caption, truth in zip(captions, truths, strict=True):
        present = set(truth)
        named = vocabulary.mentions(caption)
        wrong = tuple(o for o in named if o not in present)
        mentions += len(named)
        hallucinated += len(wrong)
        bad_captions += bool(wrong)
        per_caption.append(wrong)
    return ChairResult(
        chair_i=hallucinated / mentions if mentions else 0.0,
        chair_s=bad_captions / len(captions) if captions else 0.0,
        mentions=mentions,
        hallucinated_mentions=hallucinated,
        captions=len(captions),
        hallucinated_captions=bad_captions,
        per_caption=tuple(per_caption),
    )


@dataclass(frozen=True)
class Probe:
    """One POPE question about one image."""

    item: int
    object: str
    present: bool
    setting: str

    @property
    def question(self) -> str:
        return POPE_QUESTION.format(self.object)


def pope_probes(
    truths: Sequence[Iterable[str]], objects: Sequence[str], setting: str, per_image: int = 3, seed: int = 0
) -> list[Probe]:
    """Balanced probes: up to `per_image` present objects per image and as many absent ones, the absent
    ones sampled by `setting` (random, popular or adversarial)."""
    if setting not in POPE_SETTINGS:
        raise ValueError(f"unknown POPE setting {setting!r}; use one of {', '.join(POPE_SETTINGS)}")
    rng = random.Random(seed)
    sets = [set(t) for t in truths]
    frequency = Counter(o for s in sets for o in s)
    together: dict[str, Counter] = {}
    for s in sets:
        for o in s:
            together.setdefault(o, Counter()).update(s - {o})
    probes: list[Probe] = []
    for item, present in enumerate(sets):
        positives = sorted(present)
        rng.shuffle(positives)
        positives = positives[:per_image]
        absent = [o for o in objects if o not in present]
        if not positives or not absent:
            continue
        if setting == "random":
            negatives = rng.sample(absent, min(len(positives), len(absent)))
        else:
            if setting == "popular":
                score = frequency
            else:
                score = Counter()
                for o in present:
                    score.update(together.get(o, Counter()))
            negatives = sorted(absent, key=lambda o: (-score[o], o))[: len(positives)]
        probes += [Probe(item, o, True, setting) for o in positives]
        probes += [Probe(item, o, False, setting) for o in negatives]
    return probes


def parse_yes_no(answer: str) -> bool | None:
    """True for an answer that starts with yes, False for no, None for anything else."""
    words = caption_tokens(answer).split()
    first = words[0] if words else ""
    return True if first in ("yes", "yeah", "yep") else False if first in ("no", "nope", "not") else None


@dataclass(frozen=True)
class PopeResult:
    """POPE scores of one setting; answers that are neither yes nor no count as wrong."""

    setting: str
    probes: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    unparsed: int

    def to_dict(self) -> dict:
        return asdict(self)


def pope_scores(probes: Sequence[Probe], answers: Sequence[str]) -> PopeResult:
    """Accuracy, precision, recall and F1 of "yes" as the positive class, and the share of yes."""
    if len(probes) != len(answers):
        raise ValueError(f"{len(probes)} probes but {len(answers)} answers")
    said = [parse_yes_no(a) for a in answers]
    truth = [p.present for p in probes]
    tp = sum(s is True and t for s, t in zip(said, truth, strict=True))
    fp = sum(s is True and not t for s, t in zip(said, truth, strict=True))
    tn = sum(s is False and not t for s, t in zip(said, truth, strict=True))
    yes = tp + fp
    positives = sum(truth)
    precision = tp / yes if yes else 0.0
    recall = tp / positives if positives else 0.0
    n = len(probes)
    return PopeResult(
        setting=probes[0].setting if probes else "",
        probes=n,
        accuracy=(tp + tn) / n if n else 0.0,
        precision=precision,
        recall=recall,
        f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        yes_ratio=yes / n if n else 0.0,
        unparsed=sum(s is None for s in said),
    )


@dataclass(frozen=True)
class JudgeEstimate:
    """Reference-free hallucination: mentions whose object the judge does not see in the image."""

    rate: float  # unsupported mentions / mentions: the estimate of CHAIR_i
    caption_rate: float  # captions with an unsupported mention: the estimate of CHAIR_s
    mentions: int
    top_fraction: float
    unsupported: tuple[tuple[str, ...], ...]  # per caption

    def to_dict(self) -> dict:
        return asdict(self)


def judge_unsupported(
    image_vectors: np.ndarray,
    object_vectors: np.ndarray,
    objects: Sequence[str],
    mentions: Sequence[Sequence[str]],
    top_fraction: float = 0.1,
) -> JudgeEstimate:
    """Flag each mentioned object that is not among the `top_fraction` of vocabulary objects the judge
    finds most similar to the image (cosine of unit vectors); no references needed.

    A mention is supported when fewer than ``top_fraction * len(objects)`` objects score higher than it
    for this image, so the estimate adapts to each image's own similarity scale.
    """
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    index = {name: i for i, name in enumerate(objects)}
    scores = image_vectors @ object_vectors.T  # (captions, objects)
    allowed = max(1, int(np.ceil(top_fraction * len(objects))))
    unsupported, total = [], 0
    for row, named in enumerate(mentions):
        flagged = []
        for name in named:
            higher = int(np.sum(scores[row] > scores[row, index[name]]))
            if higher >= allowed:
                flagged.append(name)
        total += len(named)
        unsupported.append(tuple(flagged))
    n_flagged = sum(len(f) for f in unsupported)
    return JudgeEstimate(
        rate=n_flagged / total if total else 0.0,
        caption_rate=float(np.mean([bool(f) for f in unsupported])) if unsupported else 0.0,
        mentions=total,
        top_fraction=top_fraction,
        unsupported=tuple(unsupported),
    )


def agreement(estimate: JudgeEstimate, reference: ChairResult) -> dict:
    """How the judge's unsupported mentions match CHAIR's hallucinated ones, mention by mention."""
    flagged = hits = truly = 0
    for judged, wrong in zip(estimate.unsupported, reference.per_caption, strict=True):
        judged_counts, wrong_counts = Counter(judged), Counter(wrong)
        flagged += sum(judged_counts.values())
        truly += sum(wrong_counts.values())
        hits += sum((judged_counts & wrong_counts).values())
    mentions = estimate.mentions
    agree = mentions - (flagged - hits) - (truly - hits)
    return {
        "estimate_chair_i": estimate.rate,
        "reference_chair_i": reference.chair_i,
        "estimate_chair_s": estimate.caption_rate,
        "reference_chair_s": reference.chair_s,
        "agreement": agree / mentions if mentions else None,
        "precision": hits / flagged if flagged else None,
        "recall": hits / truly if truly else None,
    }


def read_vocabulary(path: str | Path) -> dict[str, list[str]]:
    """An object vocabulary file: one object per line, optionally with synonyms after a colon
    (``dog: puppy, doggy``); blank lines and lines starting with # are skipped."""
    from vlmops.errors import DataError

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the vocabulary file {path}: {exc}") from exc
    vocabulary: dict[str, list[str]] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, synonyms = line.partition(":")
        if name.strip():
            vocabulary[name.strip()] = [s.strip() for s in synonyms.split(",") if s.strip()]
    if not vocabulary:
        raise DataError(f"the vocabulary file {path} names no object; write one per line, e.g. 'dog: puppy'")
    return vocabulary
