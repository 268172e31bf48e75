"""Monitoring generative traffic: a reference window of chat exchanges against the current one.

Detectors (each a `DriftResult`, stored as metrics ``generative.<name>.{p_value,statistic,drifted}``
beside ``generative.<name>.{reference,window}``, the value compared, so alert rules fire on them):

- ``answer_embedding``: MMD between the judge's text vectors of the answers (`MMDDetector`);
- ``answer_length``: mean answer length in words (`PermutationShiftDetector`, mean);
- ``finish_reason``: the counts of stop / length / cancelled / error ... (χ² by permutation);
- ``refusal_rate``: share of answers that decline (`text_patterns.REFUSAL_PATTERNS`);
- ``grounding``: mean judge cosine of image and answer (needs the kept images);
- ``hallucination``: share of answers with an object the judge does not see in the image, among
  answers that mention one (issue 16's label-free estimate; needs kept images and a vocabulary);
- ``pii``: share of answers with PII (`audit.pii.scan_text`); examples are masked;
- ``injection``: share of prompts with a prompt-injection attempt (`text_patterns.INJECTION_PATTERNS`);
- ``image_injection``: share of exchanges whose kept image carries such an attempt in its text, read
  by OCR (`monitor.image_text`; needs the kept images and Tesseract), with ``generative.image_injection
  .count``, the exchanges of the window that carry one (a rule ``count > 0`` fires on the first).

Answer detectors read answered exchanges (status ok); finish reasons read all of them. A detector that
cannot run says why (``{"skipped": reason}``) and has no metrics, so no rule fires on it. Latency, time
to first token, tokens and cost come overall (``generative.usage.*``) and per key
(``generative.key.<key id>.*``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vlmops.audit.pii import redact_text, scan_text
from vlmops.monitor.base import DriftResult
from vlmops.monitor.chat_usage import usage_by_key, usage_summary
from vlmops.monitor.grounding import (
    JudgeVectors,
    grounding_scores,
    kept_images,
    object_vectors,
    unsupported_flags,
)
from vlmops.monitor.image_text import exchange_injections, image_texts
from vlmops.monitor.mmd import MMDDetector
from vlmops.monitor.permutation import PermutationShiftDetector
from vlmops.monitor.text_patterns import injection_matches, refusal_matches

DETECTOR_NAMES = (
    "answer_embedding", "answer_length", "finish_reason", "refusal_rate", "grounding", "hallucination",
    "pii", "injection", "image_injection",
)  # fmt: skip
NO_IMAGES = "no kept images: serve with --keep-images DIR and pass it as --images"
SNIPPET = 160  # characters of a prompt or answer shown as an example


@dataclass
class GenerativeConfig:
    """What the generative section needs beyond the two windows; all optional but the sizes."""

    judge: Any = None  # a dual encoder: answer vectors, image vectors (grounding, hallucination)
    cache: Any = None  # the store's EmbeddingCache: the judge's vectors are computed once per input
    images: str | Path | None = None  # the server's --keep-images folder
    vocabulary: Mapping[str, Sequence[str]] | None = None  # object -> synonyms (hallucination)
    object_template: str = "a photo of {}."
    min_window: int = 20
    n_permutations: int = 1000
    alpha: float = 0.05
    seed: int = 0
    examples: int = 5
    ocr: Any = None  # reads text in kept images (image_injection): None: Tesseract; False: off
    progress: bool = False  # a bar while OCR reads many images


def answer_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Per exchange: answer words, refusal patterns, PII kinds in the answer, injection patterns."""
    return pd.DataFrame(
        {
            "words": [len(a.split()) for a in frame["answer"]],
            "refusal": [refusal_matches(a) for a in frame["answer"]],
            "pii": [sorted({m.kind for m in scan_text(a)}) for a in frame["answer"]],
            "injection": [injection_matches([p]) for p in frame["prompt_text"]],
        },
        index=frame.index,
    )


def too_few(n_reference: int, n_window: int, minimum: int, what: str) -> str:
    """Why a detector did not run: the window sizes and what would help."""
    hint = (
        "all traffic so far is in the current window: lower --window or wait for more"
        if n_reference < minimum
        else "serve more traffic"
    )
    return f"reference {n_reference} / current {n_window} {what}, each needs {minimum}: {hint}"


class _Section:
    """Accumulates results and flat metrics of one pass."""

    def __init__(self, config: GenerativeConfig) -> None:
        self.config = config
        self.metrics: dict[str, float | None] = {}
        self.detectors: dict[str, dict] = {}
        self._seed = 0

    def permutation(self, name: str, statistic: str, ref, win, unit: str) -> DriftResult | None:
        c = self.config
        if min(len(ref), len(win)) < c.min_window:
            return self.skip(name, too_few(len(ref), len(win), c.min_window, "exchanges"))
        self._seed += 1
        detector = PermutationShiftDetector(c.alpha, statistic, c.n_permutations, seed=c.seed + self._seed)
        result = detector.fit(ref).test(win)
        self.record(name, result)
        if statistic == "mean":
            self.metrics[f"generative.{name}.reference"] = result.evidence["reference_mean"]
            self.metrics[f"generative.{name}.window"] = result.evidence["window_mean"]
        self.detectors[name]["unit"] = unit
        return result

    def record(self, name: str, result: DriftResult) -> None:
        self.detectors[name] = result.to_dict()
        for key in ("p_value", "statistic"):
            self.metrics[f"generative.{name}.{key}"] = float(getattr(result, key))
        self.metrics[f"generative.{name}.drifted"] = float(result.drifted)

    def skip(self, name: str, reason: str) -> None:
        self.detectors[name] = {"skipped": reason}
        return None


def _snippet(text: str) -> str:
    text = redact_text(text.replace("\n", " "))
    return text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"


def _examples(frame: pd.DataFrame, flags: pd.Series, column: str, tags: pd.Series, k: int) -> list[dict]:
    rows = frame[flags.to_numpy()].tail(k)
    return [
        {
            "request_id": r.request_id,
            "key_id": r.key_id,
            "matched": list(tags.loc[i]),
            "text": _snippet(getattr(r, column)),
        }
        for i, r in rows.iterrows()
    ]


def generative_section(
    reference: pd.DataFrame, current: pd.DataFrame, config: GenerativeConfig | None = None
) -> tuple[dict, dict]:
    """Every generative detector on (reference, current) chat windows (`chat_frame.chats_frame`):
    (flat metrics, results)."""
    config = config or GenerativeConfig()
    section = _Section(config)
    ref_ok, win_ok = reference[reference["status"] == "ok"], current[current["status"] == "ok"]
    ref_f, win_f = answer_features(ref_ok), answer_features(win_ok)
    all_f = answer_features(current)
    _answer_embedding(section, ref_ok, win_ok)
    section.permutation("answer_length", "mean", ref_f["words"], win_f["words"], "words per answer")
    reasons = (reference["finish_reason"], current["finish_reason"])
    section.permutation("finish_reason", "chi2", *reasons, "exchanges per finish reason")
    section.permutation("refusal_rate", "mean", _flag(ref_f["refusal"]), _flag(win_f["refusal"]), "share")
    _judge_detectors(section, ref_ok, win_ok)
    section.permutation("pii", "mean", _flag(ref_f["pii"]), _flag(win_f["pii"]), "share of answers")
    ref_injection = _flag(reference["prompt_text"].map(lambda p: injection_matches([p])))
    section.permutation("injection", "mean", ref_injection, _flag(all_f["injection"]), "share of prompts")
    k = config.examples
    examples = {
        "injection": _examples(current, all_f["injection"].map(bool), "prompt_text", all_f["injection"], k),
        "pii": _examples(win_ok, win_f["pii"].map(bool), "answer", win_f["pii"], k),
        "refusal": _examples(win_ok, win_f["refusal"].map(bool), "answer", win_f["refusal"], k),
    }
    examples["image_injection"] = _image_injection(section, reference, current)
    section.metrics["generative.injection.count"] = float(all_f["injection"].map(bool).sum())
    section.metrics["generative.pii.count"] = float(win_f["pii"].map(bool).sum())
    usage = usage_summary(current)
    section.metrics.update({f"generative.usage.{stat}": v for stat, v in usage.items()})
    by_key = usage_by_key(current)
    for key, values in by_key.items():  # per key, for alert rules such as a key's TTFT p95
        section.metrics.update({f"generative.key.{key}.{stat}": v for stat, v in values.items()})
    section.metrics["generative.window.n"] = float(len(current))
    section.metrics["generative.reference.n"] = float(len(reference))
    results = {
        "reference": _span(reference),
        "window": _span(current),
        "detectors": section.detectors,
        "examples": examples,
        "usage": usage,
        "usage_by_key": by_key,
        "reference_usage": usage_summary(reference),
    }
    return section.metrics, results


def _flag(lists: Iterable) -> np.ndarray:
    """1.0 where the list of matches is non-empty."""
    return np.array([float(bool(v)) for v in lists])


def _answer_embedding(section: _Section, ref_ok: pd.DataFrame, win_ok: pd.DataFrame) -> None:
    """MMD between the judge's vectors of the answers of the two windows."""
    c = section.config
    n = min(len(ref_ok), len(win_ok))
    if c.judge is None:
        section.skip("answer_embedding", "no judge model to embed the answers (pass --judge)")
    elif n < c.min_window:
        section.skip("answer_embedding", too_few(len(ref_ok), len(win_ok), c.min_window, "answers"))
    else:
        vectors = JudgeVectors(c.judge, c.cache)
        ref_vec, win_vec = vectors.texts(list(ref_ok["answer"])), vectors.texts(list(win_ok["answer"]))
        mmd = MMDDetector(c.alpha, n_permutations=min(500, c.n_permutations), seed=c.seed)
        section.record("answer_embedding", mmd.fit(ref_vec).test(win_vec))


def _span(frame: pd.DataFrame) -> dict:
    if frame.empty:
        return {"n": 0, "start": None, "end": None}
    return {"n": len(frame), "start": float(frame["time"].min()), "end": float(frame["time"].max())}


def _judge_detectors(section: _Section, ref_ok: pd.DataFrame, win_ok: pd.DataFrame) -> None:
    """Grounding and the hallucination estimate, on exchanges whose image the server kept."""
    c = section.config
    why = None
    if c.judge is None:
        why = "no judge model (pass --judge)"
    elif c.images is None:
        why = NO_IMAGES
    if why:
        section.skip("grounding", why)
        section.skip("hallucination", why)
        return
    ref_kept = ref_ok[kept_images(list(ref_ok["image_sha256"]), c.images)]
    win_kept = win_ok[kept_images(list(win_ok["image_sha256"]), c.images)]
    n_kept = min(len(ref_kept), len(win_kept))
    if n_kept < c.min_window:
        reason = too_few(len(ref_kept), len(win_kept), c.min_window, "exchanges with a kept image")
        section.skip("grounding", reason)
        section.skip("hallucination", reason)
        return
    vectors = JudgeVectors(c.judge, c.cache)
    pairs = []
    for frame in (ref_kept, win_kept):
        images = vectors.images(list(frame["image_sha256"]), c.images)
        pairs.append((images, grounding_scores(images, vectors.texts(list(frame["answer"])))))
    section.permutation("grounding", "mean", pairs[0][1], pairs[1][1], "judge cosine(image, answer)")
    if not c.vocabulary:
        section.skip("hallucination", "no object vocabulary (pass --vocabulary FILE)")
        return
    vocab, objects = object_vectors(vectors, c.vocabulary, c.object_template)
    flags = []
    for (images, _), frame in zip(pairs, (ref_kept, win_kept), strict=True):
        has, flagged, unsupported = unsupported_flags(vocab, objects, images, list(frame["answer"]))
        flags.append((flagged[has].astype(float), unsupported, int(has.sum())))
    result = section.permutation(
        "hallucination", "mean", flags[0][0], flags[1][0], "share of answers naming an unseen object"
    )
    if result is not None:
        section.detectors["hallucination"]["evidence"]["unsupported_mentions"] = flags[1][1]
        section.detectors["hallucination"]["evidence"]["answers_with_mentions"] = flags[1][2]


def _image_lists(frame: pd.DataFrame) -> list[list[str]]:
    """Each exchange's image hashes (all of them; the first only in frames built without the list)."""
    lists = frame["image_sha256s"] if "image_sha256s" in frame else [None] * len(frame)
    return [
        [s for s in (v if isinstance(v, list) else [first]) if isinstance(s, str) and s]
        for v, first in zip(lists, frame["image_sha256"], strict=True)
    ]


def _image_injection(section: _Section, reference: pd.DataFrame, current: pd.DataFrame) -> list[dict]:
    """Injection attempts written inside the kept images (OCR), as the prompt detector reads prompts;
    returns the examples. All exchanges count, answered or not, as for prompts."""
    from vlmops.errors import MissingDependencyError

    c = section.config
    if c.images is None:
        section.skip("image_injection", NO_IMAGES)
        return []
    if c.ocr is False:
        section.skip("image_injection", "OCR turned off (--no-ocr)")
        return []
    frames = (reference, current)
    lists = [_image_lists(f) for f in frames]
    shas = [s for frame_lists in lists for shas in frame_lists for s in shas]
    try:
        texts = image_texts(shas, c.images, c.ocr or None, c.cache, c.progress)
    except MissingDependencyError as exc:
        section.skip("image_injection", str(exc))
        return []
    kept = [np.array([any(s in texts for s in v) for v in frame_lists], dtype=bool) for frame_lists in lists]
    found = [exchange_injections(frame_lists, texts) for frame_lists in lists]
    flags = [_flag(f)[k] for f, k in zip(found, kept, strict=True)]
    section.metrics["generative.image_injection.count"] = float(flags[1].sum())
    n_ref, n_win = len(flags[0]), len(flags[1])
    if min(n_ref, n_win) < c.min_window:  # too few for the test: the count and examples still stand
        section.skip("image_injection", too_few(n_ref, n_win, c.min_window, "exchanges with a kept image"))
        section.detectors["image_injection"]["count"] = int(flags[1].sum())
    else:
        unit = "share of exchanges with a kept image whose text is an injection attempt"
        section.permutation("image_injection", "mean", flags[0], flags[1], unit)
        evidence = section.detectors["image_injection"]["evidence"]
        evidence["unread_images"] = sum(t is None for t in texts.values())
        evidence["images_read"] = len(texts)
    window = current[kept[1]]
    window_found = pd.Series([f for f, k in zip(found[1], kept[1], strict=True) if k], index=window.index)
    text_of = pd.Series(
        [" | ".join(texts.get(s) or "" for s in v) for v, k in zip(lists[1], kept[1], strict=True) if k],
        index=window.index,
    )
    rows = window.assign(image_text=text_of)
    return _examples(rows, window_found.map(bool), "image_text", window_found, c.examples)
