"""Prompt-side robustness: does zero-shot accuracy survive typos, casing, paraphrases and synonyms?

The images stay clean; only the class prompts change. Each perturbation is seeded by the class name, so
a re-run builds the same prompts and the text embeddings come from the cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from vlmops.evaluate.accuracy import top1_correct
from vlmops.evaluate.context import EvalContext

PARAPHRASES = ("a picture of {}", "{}", "an icon showing {}", "a drawing of a {}", "this is {}")


def _rng(text: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)])


def typo(name: str, seed: int = 0) -> str:
    """One seeded keyboard-style edit (swap, drop, double or replace a letter) in a word of 4+ letters."""
    rng = _rng(name, seed)
    words = name.split(" ")
    candidates = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 4]
    if not candidates:
        return name
    wi = int(rng.choice(candidates))
    word = words[wi]
    letters = [i for i, c in enumerate(word) if c.isalpha()]
    pos = int(rng.choice(letters[1:-1] or letters))
    kind = int(rng.integers(4))
    if kind == 0 and pos + 1 < len(word):
        word = word[:pos] + word[pos + 1] + word[pos] + word[pos + 2 :]
    elif kind == 1:
        word = word[:pos] + word[pos + 1 :]
    elif kind == 2:
        word = word[:pos] + word[pos] + word[pos:]
    else:
        alphabet = "abcdefghijklmnopqrstuvwxyz".replace(word[pos].lower(), "")
        word = word[:pos] + alphabet[int(rng.integers(len(alphabet)))] + word[pos + 1 :]
    words[wi] = word
    return " ".join(words)


def synonyms_from_tags(classes: Sequence[str], names: Sequence[str], rows_tags: dict[str, list]) -> list[str]:
    """For each class, its most frequent data tag that differs from its name (the name when none)."""
    out = []
    for cls, name in zip(classes, names, strict=True):
        counts: dict[str, int] = {}
        for tags in rows_tags.get(cls, []):
            for tag in tags if tags is not None else []:
                tag = str(tag).strip()
                if tag and tag.lower() != name.lower() and tag.lower() not in name.lower():
                    counts[tag] = counts.get(tag, 0) + 1
        out.append(max(sorted(counts), key=counts.get) if counts else name)
    return out


def _class_tags(ctx: EvalContext) -> dict[str, list] | None:
    frame = ctx.task.frame
    if "tags" not in frame.columns or len(ctx.task.tier_names) != _label_depth(ctx):
        return None
    tags: dict[str, list] = {}
    for label, row_tags in zip(ctx.task.labels, frame["tags"], strict=True):
        tags.setdefault(label, []).append(list(row_tags) if row_tags is not None else [])
    return tags


def _label_depth(ctx: EvalContext) -> int:
    return len(str(ctx.task.frame["label"].iloc[0]).split("/"))


def text_robustness_section(ctx: EvalContext) -> dict:
    """Top-1 with clean prompts vs typos, UPPER/Title case, each paraphrase template, and tag synonyms."""
    task, targets = ctx.task, ctx.task.targets
    names = task.class_names

    def accuracy(class_names: Sequence[str], templates: Sequence[str]) -> float:
        class_emb = ctx.text_classifier(class_names, templates)
        return float(top1_correct(ctx.logits(ctx.image_emb, class_emb), targets).mean())

    clean = accuracy(names, task.templates)
    variants: dict[str, Callable[[], float]] = {
        "typos": lambda: accuracy([typo(n, ctx.seed) for n in names], task.templates),
        "upper_case": lambda: accuracy([n.upper() for n in names], task.templates),
        "title_case": lambda: accuracy([n.title() for n in names], task.templates),
    }
    for template in PARAPHRASES:
        variants[f"template:{template}"] = lambda t=template: accuracy(names, (t,))
    variants["all_paraphrases_averaged"] = lambda: accuracy(names, (*task.templates, *PARAPHRASES))
    results = {key: {"top1": fn(), "delta": None} for key, fn in variants.items()}
    tags = _class_tags(ctx)
    skipped = {}
    if tags is None:
        skipped["synonyms"] = "needs a 'tags' column and labels classified at their finest tier"
    else:
        synonyms = synonyms_from_tags(task.classes, names, tags)
        changed = sum(s != n for s, n in zip(synonyms, names, strict=True))
        results["synonyms"] = {"top1": accuracy(synonyms, task.templates), "replaced_classes": changed}
    for value in results.values():
        value["delta"] = value["top1"] - clean
    worst = min(results, key=lambda k: results[k]["top1"])
    return {"clean_top1": clean, "perturbations": results, "worst": worst, "skipped": skipped}
