"""Retraining from verified feedback: fine-tune the built-in model's image tower, nothing else.

The feedback-loop guard: only feedback whose source is "human" becomes a training label. A label
that a model produced (an auto-accept, a pseudo-label) would teach the model its own mistakes, so
such rows are counted and dropped, never used. By default (``feedback_from="labellers"``) a label
also needs a sender allowed to label: an active API key that holds the ``feedback`` scope, so revoking
a key (or creating clients' keys with ``--scopes predict``) keeps their labels out of training.
Feedback sent without a key (a server run with ``--insecure-no-auth``) has no key to check and counts.
Accepted predictions take the logged predicted label; rejected ones take the correction. Every
feedback image is mixed with replay images from the original training data, so the fine-tune learns
the new cases without forgetting the old ones.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vlmops.evaluate.task import EvalTask
from vlmops.models.builtin import BUILTIN_MODELS, EmojiLit
from vlmops.models.towers import ImageTower
from vlmops.models.training import augment
from vlmops.registry.retrain_card import retrain_sections
from vlmops.serve.archive import ImageArchive
from vlmops.store.log import PredictionLog, prediction_of


@dataclass(frozen=True)
class RetrainConfig:
    """Fine-tuning hyper-parameters (they go into the new model card)."""

    epochs: int = 4
    lr: float = 3e-4
    batch_size: int = 64
    feedback_repeats: int = 4  # each verified example is seen this many times per epoch
    seed: int = 0


@dataclass(frozen=True)
class Example:
    """One verified training example from feedback."""

    request_id: str
    sha256: str
    label: str


FEEDBACK_FROM = ("labellers", "any")


def verified_examples(
    log: PredictionLog,
    archive: ImageArchive,
    labels: tuple[str, ...],
    labellers: set[str] | None = None,
):
    """Human-verified (image sha256, label) pairs and the counts of what was left out and why.

    `labellers`: the key ids whose feedback may train (None: every key's).
    """
    requests = {r.request_id: r for r in log.requests() if r.endpoint == "classify"}
    counts: Counter[str] = Counter()
    latest = {}
    for fb in log.feedback():
        if fb.source != "human":
            counts["model_label_refused"] += 1  # the feedback-loop guard
        elif labellers is not None and fb.key_id is not None and fb.key_id not in labellers:
            counts["key_may_not_label"] += 1  # revoked, or never given the feedback scope
        else:
            latest[fb.request_id] = fb  # a person's last word on a request counts
    known = set(labels)
    examples = []
    for request_id, fb in latest.items():
        row = requests.get(request_id)
        if row is None:
            counts["not_a_classify_request"] += 1
            continue
        label = (fb.label or prediction_of(row).get("label")) if fb.accepted else fb.label
        sha = json.loads(row.input_sha256)[0]
        if label not in known:
            counts["label_not_in_label_set"] += 1
        elif not archive.has(sha):
            counts["image_not_archived"] += 1
        else:
            examples.append(Example(request_id, sha, label))
            counts["used"] += 1
    return examples, dict(counts)


def fine_tune(
    tower: ImageTower,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    class_emb: torch.Tensor,
    logit_scale: float,
    config: RetrainConfig,
    weights: torch.Tensor | None = None,
) -> tuple[ImageTower, list[dict]]:
    """A fine-tuned copy of `tower` (pixels uint8 (n, 3, s, s); cross-entropy over the class texts)."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    tuned = copy.deepcopy(tower).train()
    optimiser = torch.optim.AdamW(tuned.parameters(), lr=config.lr, weight_decay=0.01)
    weights = torch.ones(len(targets)) if weights is None else weights
    per_epoch = int(weights.sum().item())
    history = []
    for epoch in range(1, config.epochs + 1):
        order = torch.multinomial(weights, per_epoch, replacement=True, generator=generator)
        losses = []
        for start in range(0, per_epoch, config.batch_size):
            idx = order[start : start + config.batch_size]
            images = augment(pixels[idx].float() / 127.5 - 1.0, generator)
            logits = logit_scale * tuned(images) @ class_emb.T
            loss = nn.functional.cross_entropy(logits, targets[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        history.append({"epoch": epoch, "loss": float(np.mean(losses))})
    return tuned.eval(), history


def retrain_data_version(examples: list[Example], task: EvalTask, replay: np.ndarray) -> str:
    """Content version (`vlmops.data.version`) of what a retrain learned from: feedback plus replay."""
    import pandas as pd

    from vlmops.data.version import dataset_version
    from vlmops.hashing import sha256_file

    frame = task.frame
    replay_sha = (
        [frame["sha256"][i] for i in replay]
        if "sha256" in frame.columns and frame["sha256"].notna().all()
        else [sha256_file(frame["image"][i]) for i in replay]
    )
    records = pd.DataFrame(
        {
            "id": [e.request_id for e in examples] + [str(frame["id"][i]) for i in replay],
            "sha256": [e.sha256 for e in examples] + replay_sha,
            "label": [e.label for e in examples] + [task.labels[i] for i in replay],
        }
    )
    return dataset_version(records)


def save_retrained(
    model: EmojiLit, tower: ImageTower, out: Path, extra: dict, data: dict | None = None
) -> Path:
    """Write a `builtin:emoji-lit@FOLDER` model: the new weights and the parent's card plus `retrain`.

    `data` replaces the card's training-data section (its `train_version` is what the registry
    records); without it the parent's stays, as for a model whose weights changed without new data.
    """
    from safetensors.torch import save_file

    from vlmops.hashing import sha256_file

    spec = BUILTIN_MODELS["emoji-lit"]
    out.mkdir(parents=True, exist_ok=True)
    weights = out / spec.weights
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    card = {**(model.card or {}), "weights_sha256": sha256_file(weights), "retrain": extra}
    if data is not None:
        card["data"] = data
    card.setdefault("tower", tower.config.to_dict())
    card.setdefault("logit_scale", model.logit_scale)
    (out / spec.card).write_text(json.dumps(card, indent=2, default=str) + "\n")
    return out


def retrain_from_feedback(
    model: EmojiLit,
    task: EvalTask,
    log: PredictionLog,
    archive: ImageArchive,
    out: Path,
    config: RetrainConfig = RetrainConfig(),
    replay: int = 1024,
    feedback_from: str = "labellers",
) -> dict:
    """Fine-tune on verified feedback (labels: `task`'s class names) plus replay; write the model to `out`.

    `feedback_from`: "labellers" (keys with the feedback scope, not revoked) or "any" key.
    """
    from vlmops.data.images import load_image
    from vlmops.errors import VlmopsError
    from vlmops.models import load_model
    from vlmops.models.towers import pixels_from_images

    if not isinstance(model, EmojiLit):
        raise VlmopsError(
            f"retrain fine-tunes the built-in image tower; {model.info.uri} is not builtin:emoji-lit"
        )
    if feedback_from not in FEEDBACK_FROM:
        raise VlmopsError(f"feedback_from={feedback_from!r}: use one of {', '.join(FEEDBACK_FROM)}")
    labellers = None
    if feedback_from == "labellers":
        from vlmops.serve.keys import KeyStore

        labellers = KeyStore(engine=log.engine).labellers()
    names = tuple(task.class_names)
    examples, counts = verified_examples(log, archive, names, labellers)
    if not examples:
        raise VlmopsError(
            f"no human-verified feedback with archived images to learn from ({counts}); "
            "serve with --keep-images and collect feedback first"
        )
    index = {name: i for i, name in enumerate(names)}
    images = [load_image(archive.path(e.sha256)) for e in examples]
    targets = [index[e.label] for e in examples]
    chosen = replay_rows(task, model, replay, config.seed)
    class_of = {c: i for i, c in enumerate(task.classes)}
    images += [load_image(task.frame["image"][i]) for i in chosen]
    targets += [class_of[task.labels[i]] for i in chosen]
    pixels = (
        ((pixels_from_images(images, model.tower.config.image_size) + 1.0) * 127.5).round().to(torch.uint8)
    )
    weights = torch.tensor([float(config.feedback_repeats)] * len(examples) + [1.0] * len(chosen))
    class_emb = torch.from_numpy(model.embed_texts([task.templates[0].format(n) for n in names]))
    tower, history = fine_tune(
        model.tower, pixels, torch.tensor(targets), class_emb, model.logit_scale, config, weights
    )
    data_version = retrain_data_version(examples, task, chosen)
    extra, data = retrain_sections(
        model, data_version, counts, feedback_from, len(chosen), config, history,
        n_train_images=len(images), feedback_examples=len(examples), replay_images=len(chosen),
    )  # fmt: skip
    save_retrained(model, tower, out, extra, data)
    info = load_model(f"builtin:emoji-lit@{out}").info  # its version comes from the one place that names it
    return {"out": str(out), "version": info.version, "weights_sha256": info.weights_sha256, **extra}


def replay_rows(task: EvalTask, model: EmojiLit, n: int, seed: int) -> np.ndarray:
    """Up to n training-split rows of the vendors the model was trained on (all vendors if unknown)."""
    frame = task.frame
    if n <= 0 or "split" not in frame:
        return np.array([], dtype=int)
    pool = np.flatnonzero((frame["split"] == "train").to_numpy())
    vendors = ((model.card or {}).get("data") or {}).get("vendors")
    if vendors and "vendor" in frame:
        pool = pool[np.isin(frame["vendor"].to_numpy()[pool], vendors)]
    return np.random.default_rng(seed).choice(pool, min(n, len(pool)), replace=False) if len(pool) else pool
