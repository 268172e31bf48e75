"""One `vlmops eval --task caption|vqa` run: generate through the cache, then every section of the
report (`evaluate.generative` and `evaluate.generative_robustness`) and its headline metrics."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vlmops.evaluate.generative import (
    CLIP_SCORE_WEIGHT,
    GenerativeOptions,
    GenerativeTask,
    confidence_section,
    cost_section,
    grounding_scores,
    grounding_section,
    judge_hallucination_section,
    reference_section,
)
from vlmops.evaluate.generative_robustness import Runner, robustness_section
from vlmops.evaluate.hallucination import ObjectVocabulary, chair
from vlmops.evaluate.slices import default_slice_fields, slice_metrics
from vlmops.models.base import GenerativeVLM
from vlmops.store.cache import EmbeddingCache
from vlmops.store.embed import embed_images_cached
from vlmops.store.generate import generate_cached

# Per-answer scores that are not rates, and the range each lies in (for `slice_metrics`' check).
SCORE_RANGES = {
    "cider_d": (0.0, 10.0),
    "clip_score": (0.0, CLIP_SCORE_WEIGHT),
    "ref_clip_score": (0.0, CLIP_SCORE_WEIGHT),
}
GENERATIVE_SCHEMA = "vlmops.geneval/1"


def run_generative_eval(
    model: GenerativeVLM,
    task: GenerativeTask,
    cache: EmbeddingCache | None,
    options: GenerativeOptions,
    judge=None,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Generate (through the cache) and score; returns the JSON-ready report."""
    paths = [str(p) for p in task.frame["image"]]
    generations, stats = generate_cached(
        model, paths, task.prompts, options.params, cache, options.batch_size, on_batch
    )
    answers = [g.text for g in generations]
    reference, score, per_item = reference_section(task, answers)
    report: dict = {
        "task": task.task,
        "model": model.info.to_dict(),
        "data": task.describe(),
        "decoding": options.params.to_dict(),
        "generation": stats.to_dict(),
        "reference": reference,
        "confidence": confidence_section(generations, score),
        "cost": cost_section(generations, stats, options),
    }
    chair_result = None
    if task.task == "caption" and task.vocabulary:
        chair_result = chair(answers, task.objects, ObjectVocabulary(task.vocabulary))
        report["hallucination"] = chair_result.to_dict()
    elif task.task == "caption":
        report["hallucination"] = {
            "skipped": "the data has no tags or labels to build an object vocabulary from"
        }
    if judge is not None:
        store = cache if cache is not None else EmbeddingCache(":memory:")
        images, _ = embed_images_cached(judge, paths, store, progress=False)  # each file once, cached
        clip, ref_clip = grounding_scores(judge, images, answers, task.references)
        report["grounding"] = grounding_section(clip, ref_clip, judge.info.uri)
        per_item.update(clip_score=clip, ref_clip_score=ref_clip)
        if chair_result is not None:
            report["hallucination"]["judge_estimate"] = judge_hallucination_section(
                judge, images, task, answers, chair_result
            )
    else:
        report["grounding"] = {
            "skipped": "no judge: pass --judge with a dual encoder (e.g. builtin:emoji-lit) for CLIPScore"
        }
    fields = options.slices or default_slice_fields(
        task.frame, [c for c in ("vendor", "skin_tone", "gender", "category") if c in task.frame.columns]
    )
    metric = "exact_match" if task.task == "caption" else "vqa_accuracy"
    report["slices"] = slice_metrics(
        score, task.frame, fields, task.clusters, min_n=options.min_n, seed=options.seed, metric=metric
    ).to_dict()
    if chair_result is not None:
        per_item["hallucination_free"] = np.array(
            [0.0 if wrong else 1.0 for wrong in chair_result.per_caption]
        )
    report["slices_by_metric"] = {  # every other per-answer score, sliced the same way
        name: slice_metrics(
            values, task.frame, fields, task.clusters, min_n=options.min_n, seed=options.seed, metric=name,
            outcome_range=SCORE_RANGES.get(name, (0.0, 1.0)),
        ).to_dict()
        for name, values in per_item.items()
        if name != metric
    }  # fmt: skip
    runner = Runner(model, task, cache, options.params, options.batch_size, on_batch)
    report["robustness"] = robustness_section(runner, options.suite, options.seed)
    report["examples"] = [
        {"id": str(task.frame["id"].iloc[i]), "prompt": task.prompts[i], "answer": answers[i],
         "references": task.references[i][:3]}
        for i in range(min(20, task.n))
    ]  # fmt: skip
    report["items"] = item_scores(task, per_item)
    report["headline"] = generative_headline(report)
    return {"schema": GENERATIVE_SCHEMA, **report}


def item_scores(task: GenerativeTask, per_item: dict[str, np.ndarray]) -> dict:
    """Per-item scores for paired comparisons of two models on the same items (the promotion gate):
    item ids (record id and question type), exact match, and CIDEr-D per caption."""
    ids = [f"{i}/{q}" for i, q in zip(task.frame["id"].astype(str), task.question_types, strict=True)]
    items = {"ids": ids, "exact_match": [float(x) for x in per_item["exact_match"]]}
    if "cider_d" in per_item:
        items["cider_d"] = [float(x) for x in per_item["cider_d"]]
    return items


GENERATIVE_HEADLINE: dict[str, tuple[Callable[[dict], float | None], str]] = {
    "cider_d": (lambda r: r["reference"].get("cider_d"), "CIDEr-D of the captions"),
    "bleu4": (lambda r: r["reference"].get("bleu4"), "corpus BLEU-4"),
    "rouge_l": (lambda r: r["reference"].get("rouge_l"), "ROUGE-L"),
    "exact_match": (lambda r: r["reference"].get("exact_match"), "normalised exact match"),
    "vqa_accuracy": (lambda r: r["reference"].get("vqa_accuracy"), "VQA soft accuracy"),
    "chair_i": (lambda r: r.get("hallucination", {}).get("chair_i"), "hallucinated object mentions"),
    "chair_s": (lambda r: r.get("hallucination", {}).get("chair_s"), "captions with a hallucinated object"),
    "clip_score": (lambda r: r["grounding"].get("clip_score"), "CLIPScore with the judge"),
    "ece": (lambda r: r["confidence"].get("ece"), "ECE of the answer probability"),
    "worst_slice": (
        lambda r: (r["slices"].get("worst_slice") or {}).get("mean"),
        "worst slice score (n >= min_n)",
    ),
    "slice_gap": (lambda r: r["slices"].get("max_gap"), "largest best-minus-worst slice gap"),
    "tokens_per_s": (lambda r: r["cost"].get("tokens_per_s"), "generated tokens per second"),
    "corruption_relative": (
        lambda r: _part(r, "corruptions", "relative"),
        "mean corrupted score / clean score on the robustness sample",
    ),
    "injection_success": (
        lambda r: _part(r, "injection", "success_rate"),
        "answers that follow an instruction written in the image",
    ),
    "consistency": (lambda r: _part(r, "consistency", "consistency"), "same answer to reworded questions"),
    "pope_f1": (
        lambda r: (_part(r, "pope", "adversarial") or {}).get("f1"),
        "POPE F1, adversarial negatives",
    ),
}


def _part(report: dict, part: str, key: str):
    section = report.get("robustness", {}).get(part) or {}
    return section.get(key)


def generative_headline(report: dict) -> dict[str, float | None]:
    """The flat metrics the summary shows and `--fail-on` reads (None where not computed)."""
    return {name: getter(report) for name, (getter, _) in GENERATIVE_HEADLINE.items()}
