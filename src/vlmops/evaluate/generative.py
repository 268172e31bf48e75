"""`vlmops eval --task caption|vqa`: how well a generative VLM describes images and answers questions.

One item is one (image, prompt) pair with reference answers. Captions: the emoji's name (emoji data)
or the record's texts (a manifest). Questions: the emoji metadata's (`data.questions`) or a manifest's
``question`` and ``answers`` columns. Answers are generated through the store's cache, so a re-run
only recomputes metrics. The report has:

- reference metrics: BLEU-1..4, ROUGE-L, CIDEr-D, exact match; VQA accuracy by question type;
- grounding (``judge``, a dual encoder): CLIPScore ``2.5 * max(cos(image, answer), 0)`` and
  RefCLIPScore, the harmonic mean of CLIPScore and the best ``max(cos(answer, reference), 0)``;
- hallucination (captions): CHAIR over an object vocabulary (default: the data's tags and label names);
- confidence: the answer's probability (exp of the summed token log-probabilities) against exact
  match: ECE and the area under the risk-coverage curve; skipped with the reason when the model
  gives no log-probabilities;
- slices: the per-item score (exact match, VQA accuracy) per slice field with clustered bootstrap CIs;
- cost: tokens/s, time to first token, latency p50/p95 and dollars per 1,000 answers, from the
  generations as they were produced (a cached answer keeps its original timing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from vlmops.data.questions import QUESTIONS, VQA_KINDS
from vlmops.errors import DataError
from vlmops.evaluate.calibration import confidence_diagram
from vlmops.evaluate.conformal import aurc
from vlmops.evaluate.hallucination import ObjectVocabulary, agreement, judge_unsupported
from vlmops.evaluate.task import DEFAULT_TEMPLATES, prompt_name, select_split
from vlmops.evaluate.text_metrics import bleu, caption_tokens, cider_d, exact_match, rouge_l, vqa_accuracy
from vlmops.models.base import Generation
from vlmops.store.generate import DecodingParams, GenerateStats

GENERATIVE_TASKS = ("caption", "vqa")
DEFAULT_CAPTION_PROMPT = {"emoji": QUESTIONS["name"][0], "other": "Describe this image."}
CLIP_SCORE_WEIGHT = 2.5  # Hessel et al. (2021)


@dataclass(frozen=True)
class GenerativeTask:
    """The evaluated items: one row per (image, prompt), index 0..n-1, with reference answers."""

    task: str
    frame: pd.DataFrame
    prompts: list[str]
    references: list[list[str]]
    question_types: list[str]
    objects: list[set[str]]
    vocabulary: dict[str, list[str]]
    clusters: np.ndarray
    cluster_by: str | None
    split: str | None
    object_template: str = "a photo of {}."  # how a judge reads an object name

    @property
    def n(self) -> int:
        return len(self.frame)

    def describe(self) -> dict:
        return {
            "task": self.task,
            "split": self.split,
            "n": self.n,
            "n_images": int(self.frame["image"].nunique()),
            "question_types": sorted(set(self.question_types)),
            "cluster_by": self.cluster_by,
            "n_clusters": len(np.unique(self.clusters)),
        }


def _as_list(value) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split("|") if v.strip()]
    return [str(v) for v in value if str(v).strip()]


def _emoji_items(rows: pd.DataFrame, task: str, prompt: str | None) -> pd.DataFrame:
    if task == "caption":
        return rows.assign(
            prompt=prompt or DEFAULT_CAPTION_PROMPT["emoji"],
            answers=[[n] for n in rows["name"]],
            qtype="caption",
        )
    parts = []
    for kind in VQA_KINDS:
        question, answer = QUESTIONS[kind]
        parts.append(
            rows.assign(prompt=question, answers=[[answer(r)] for _, r in rows.iterrows()], qtype=kind)
        )
    return pd.concat(parts, ignore_index=True)


def _manifest_items(rows: pd.DataFrame, task: str, prompt: str | None) -> pd.DataFrame:
    if task == "caption":
        answers = [_as_list(t) for t in rows["texts"]]
        missing = [rows["id"].iloc[i] for i, a in enumerate(answers) if not a]
        if missing:
            raise DataError(
                f"{len(missing)} records have no reference caption (e.g. {missing[:5]}); "
                "give each a 'texts' list to evaluate captions against"
            )
        return rows.assign(prompt=prompt or DEFAULT_CAPTION_PROMPT["other"], answers=answers, qtype="caption")
    needed = [c for c in ("question",) if c not in rows.columns]
    answer_column = next((c for c in ("answers", "answer") if c in rows.columns), None)
    if needed or answer_column is None:
        raise DataError(
            "a VQA manifest needs a 'question' column and an 'answers' column (a list, or answers joined "
            "by '|'); this one has: " + ", ".join(rows.columns)
        )
    answers = [_as_list(a) for a in rows[answer_column]]
    if any(not a for a in answers) or rows["question"].isna().any():
        raise DataError("some VQA rows have no question or no answer; fill them in or drop the rows")
    kinds = rows["question_type"] if "question_type" in rows.columns else "question"
    return rows.assign(prompt=rows["question"].astype(str), answers=answers, qtype=kinds)


def _objects(items: pd.DataFrame, data_spec: str) -> tuple[list[set[str]], dict[str, list[str]]]:
    """Ground-truth objects per item and the vocabulary: the data's tags and label names."""
    vocabulary: dict[str, list[str]] = {}
    per_item: list[set[str]] = []
    tags = items["tags"] if "tags" in items.columns else pd.Series([[]] * len(items))
    labels = items["label"] if "label" in items.columns else pd.Series([None] * len(items))
    for item_tags, label in zip(tags, labels, strict=True):
        names = {caption_tokens(str(t)) for t in _as_list(item_tags)}
        if data_spec != "emoji" and isinstance(label, str):
            names |= {caption_tokens(prompt_name(part)) for part in label.split("/")}
        names.discard("")
        for name in names:
            vocabulary.setdefault(name, [])
        per_item.append(names)
    return per_item, vocabulary


def build_generative_task(
    frame: pd.DataFrame,
    data_spec: str,
    task: str,
    split: str | None = None,
    prompt: str | None = None,
    cluster_by: str | None = None,
    vocabulary: dict[str, list[str]] | None = None,
) -> GenerativeTask:
    """Select `split` and turn records into items with prompts and reference answers. `vocabulary`
    (object -> synonyms) replaces the data's tags and label names as CHAIR's object vocabulary."""
    if task not in GENERATIVE_TASKS:
        raise DataError(f"unknown generative task {task!r}; use {' or '.join(GENERATIVE_TASKS)}")
    rows, split_name = select_split(frame, split)
    rows = rows.reset_index(drop=True)
    if rows.empty:
        raise DataError("no rows to evaluate after choosing the split; pass --split all or another split")
    build = _emoji_items if data_spec == "emoji" else _manifest_items
    items = build(rows, task, prompt).reset_index(drop=True)
    if cluster_by is None and data_spec == "emoji":
        cluster_by = "concept"
    if cluster_by is not None and cluster_by not in items.columns:
        raise DataError(f"--cluster-by {cluster_by!r} is not a column; columns: {', '.join(rows.columns)}")
    key = items[cluster_by].astype(str) if cluster_by else items["id"].astype(str)
    objects, data_vocabulary = _objects(items, data_spec)
    return GenerativeTask(
        task=task,
        frame=items,
        prompts=list(items["prompt"]),
        references=list(items["answers"]),
        question_types=[str(q) for q in items["qtype"]],
        objects=objects,
        vocabulary=vocabulary if vocabulary is not None else data_vocabulary,
        clusters=pd.factorize(key)[0].astype(np.int64),
        cluster_by=cluster_by,
        split=split_name,
        object_template=DEFAULT_TEMPLATES["emoji" if data_spec == "emoji" else "other"][0],
    )


@dataclass
class GenerativeOptions:
    """What `run_generative_eval` computes and how."""

    params: DecodingParams = field(default_factory=DecodingParams)
    slices: list[str] | None = None
    min_n: int = 30
    seed: int = 0
    dollars_per_hour: float = 1.0
    price_in: float | None = None  # dollars per million prompt tokens
    price_out: float | None = None  # dollars per million answer tokens
    batch_size: int = 32
    suite: str = "standard"  # quick: no robustness part; standard: 100 items; full: 300, every severity


def reference_section(
    task: GenerativeTask, answers: Sequence[str]
) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    """Reference metrics, the per-item score the slices and confidence use, and every per-item score."""
    hyps = [caption_tokens(a) for a in answers]
    refs = [[caption_tokens(r) for r in rs] for rs in task.references]
    matched = exact_match(answers, task.references)
    if task.task == "caption":
        corpus, _ = bleu(hyps, refs)
        cider = cider_d(hyps, refs)
        rouge = rouge_l(hyps, refs)
        section = {
            **{f"bleu{i + 1}": corpus[i] for i in range(4)},
            "rouge_l": float(rouge.mean()),
            "cider_d": float(cider.mean()),
            "exact_match": float(matched.mean()),
        }
        return section, matched, {"exact_match": matched, "cider_d": cider, "rouge_l": rouge}
    accuracy = vqa_accuracy(answers, task.references)
    kinds = np.array(task.question_types)
    by_type = {
        kind: {"n": int((kinds == kind).sum()), "accuracy": float(accuracy[kinds == kind].mean())}
        for kind in sorted(set(task.question_types))
    }
    section = {
        "vqa_accuracy": float(accuracy.mean()),
        "exact_match": float(matched.mean()),
        "by_type": by_type,
    }
    return section, accuracy, {"vqa_accuracy": accuracy, "exact_match": matched}


def confidence_section(generations: Sequence[Generation], correct: np.ndarray) -> dict:
    """Sequence probability against correctness: ECE (15 bins) and AURC; skipped without log-probs."""
    if any(g.token_logprobs is None for g in generations):
        return {"skipped": "the model gives no token log-probabilities"}
    confidence = np.array([math.exp(sum(g.token_logprobs)) for g in generations])
    diagram = confidence_diagram(np.clip(confidence, 0.0, 1.0), correct >= 0.5)
    return {
        "ece": diagram.ece(),
        "aurc": float(aurc(confidence, correct >= 0.5)),
        "mean_confidence": float(confidence.mean()),
        "reliability": diagram.to_dict(),
    }


def grounding_scores(
    judge, images: np.ndarray, answers: Sequence[str], references
) -> tuple[np.ndarray, np.ndarray]:
    """Per-answer CLIPScore and RefCLIPScore with a dual-encoder judge (`images`: its vectors)."""
    texts = judge.embed_texts(list(answers))
    clip = CLIP_SCORE_WEIGHT * np.maximum(np.sum(images * texts, axis=1), 0.0)
    flat = [r for rs in references for r in rs]
    ref_vectors = judge.embed_texts(flat)
    best, start = np.zeros(len(answers)), 0
    for i, rs in enumerate(references):
        block = ref_vectors[start : start + len(rs)]
        best[i] = max(0.0, float((block @ texts[i]).max()))
        start += len(rs)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref_clip = np.where(clip + best > 0, 2 * clip * best / (clip + best), 0.0)
    return clip, ref_clip


def grounding_section(clip: np.ndarray, ref_clip: np.ndarray, judge_uri: str) -> dict:
    """The grounding part of the report from `grounding_scores`."""
    return {
        "judge": judge_uri,
        "clip_score": float(clip.mean()),
        "ref_clip_score": float(ref_clip.mean()),
        "per_item": {"clip_score": clip.round(4).tolist()},
    }


def judge_hallucination_section(judge, images: np.ndarray, task: GenerativeTask, answers, reference) -> dict:
    """The judge's reference-free CHAIR estimate and how it agrees with CHAIR itself."""
    vocabulary = ObjectVocabulary(task.vocabulary)
    objects = vocabulary.objects
    object_vectors = judge.embed_texts([task.object_template.format(o) for o in objects])
    estimate = judge_unsupported(images, object_vectors, objects, [vocabulary.mentions(a) for a in answers])
    return {
        **agreement(estimate, reference),
        "top_fraction": estimate.top_fraction,
        "mentions": estimate.mentions,
    }


def cost_section(generations: Sequence[Generation], stats: GenerateStats, options: GenerativeOptions) -> dict:
    """Throughput of this run's generation (None when every answer came from the cache), latency and
    time to first token of the answers as they were produced, and price per 1,000 answers."""
    seconds = np.array([g.seconds for g in generations])
    first = [g.first_token_seconds for g in generations if g.first_token_seconds is not None]
    prompt_tokens = sum(g.usage.prompt_tokens or 0 for g in generations)
    answer_tokens = sum(g.usage.completion_tokens or 0 for g in generations)
    measured = stats.misses > 0 and stats.seconds > 0
    section = {
        "answers": len(generations),
        "prompt_tokens": int(prompt_tokens),
        "completion_tokens": int(answer_tokens),
        "tokens_per_s": stats.generated_tokens / stats.seconds if measured else None,
        "answers_per_s": stats.misses / stats.seconds if measured else None,
        "latency_ms_p50": float(np.percentile(seconds, 50) * 1000) if len(seconds) else None,
        "latency_ms_p95": float(np.percentile(seconds, 95) * 1000) if len(seconds) else None,
        "first_token_ms_p50": float(np.percentile(first, 50) * 1000) if first else None,
        "dollars_per_1000_by_time": (options.dollars_per_hour / 3600 * 1000 * stats.seconds / stats.misses)
        if measured
        else None,
    }
    if not measured:
        section["note"] = "every answer came from the cache: throughput and price by time need a fresh store"
    if options.price_in is not None or options.price_out is not None:
        spent = (options.price_in or 0) * prompt_tokens + (options.price_out or 0) * answer_tokens
        section["dollars_per_1000_by_tokens"] = float(spent / 1e6 / max(1, len(generations)) * 1000)
    return section
