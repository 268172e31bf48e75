"""Retraining a captioner (`builtin:emoji-captioner` and captioners saved from it) from corrected answers.

A training example is a chat completion a person corrected: feedback with a corrected answer (the
feedback row's label) on a logged chat exchange with exactly one image, whose bytes can be found again
(the `vlmops serve --keep-images` archive, or a manifest whose sha256 column names the files). The
prompt is the exchange's last user text, the target the corrected answer. The same feedback-loop guard
as for classification: only feedback whose source is "human" counts (a model's correction would teach
the model its own output), by default only from keys allowed to label, and a person's last word on a
request wins. Ratings without a corrected answer are counted, not learned.

The decoder alone is fine-tuned (the tower stays the one the captioner is bound to), on the corrected
answers mixed with replay of the original training questions (`data.questions`, the training vendors'
train split): each corrected answer is drawn `feedback_repeats` times as often as a replay question.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from vlmops.errors import VlmopsError
from vlmops.models.captioner import PAD, EmojiCaptioner, save_captioner
from vlmops.registry.retrain_card import retrain_sections
from vlmops.store.log import PredictionLog


@dataclass(frozen=True)
class CaptionRetrainConfig:
    """Fine-tuning hyper-parameters of the decoder (they go into the new model card)."""

    epochs: int = 4
    lr: float = 3e-4
    batch_size: int = 64
    feedback_repeats: int = 8  # each corrected answer is drawn this many times as often as a replay one
    seed: int = 0


@dataclass(frozen=True)
class CorrectedAnswer:
    """One training example from feedback on a chat completion."""

    request_id: str
    sha256: str
    prompt: str
    answer: str


class ImageSource(Protocol):
    """Where the bytes of a logged image hash can be found again."""

    def has(self, sha256: str) -> bool: ...
    def path(self, sha256: str) -> Path: ...


class ManifestImages:
    """Image files by sha256 from a manifest's ``sha256`` and ``image`` columns (e.g. the emoji data)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        if "sha256" not in frame.columns or "image" not in frame.columns:
            raise VlmopsError(
                "an image manifest for retraining needs 'sha256' and 'image' columns; "
                f"this one has: {', '.join(frame.columns)}"
            )
        rows = frame.dropna(subset=["sha256"])
        self._paths = {str(s): Path(str(p)) for s, p in zip(rows["sha256"], rows["image"], strict=True)}

    def has(self, sha256: str) -> bool:
        return sha256 in self._paths and self._paths[sha256].is_file()

    def path(self, sha256: str) -> Path:
        return self._paths[sha256]


class FirstOf:
    """Several image sources, asked in order."""

    def __init__(self, sources: Sequence[ImageSource]) -> None:
        self.sources = list(sources)

    def has(self, sha256: str) -> bool:
        return any(s.has(sha256) for s in self.sources)

    def path(self, sha256: str) -> Path:
        return next(s.path(sha256) for s in self.sources if s.has(sha256))


def _user_text(prompt_json: str) -> str:
    """The last user message's text of a logged chat prompt (a JSON list of {"role", "text"})."""
    messages = json.loads(prompt_json or "[]")
    texts = [m.get("text") or "" for m in messages if m.get("role", "user") == "user"]
    return texts[-1].strip() if texts else ""


def corrected_answers(
    log: PredictionLog, images: ImageSource, labellers: set[str] | None = None
) -> tuple[list[CorrectedAnswer], dict]:
    """Human-corrected chat answers with findable images, and the counts of what was left out and why.

    `labellers`: the key ids whose feedback may train (None: every key's).
    """
    chats = {r.request_id: r for r in log.chats()}
    counts: Counter[str] = Counter()
    latest = {}
    for fb in log.feedback():
        if fb.request_id not in chats:
            continue  # feedback on classify (or other) requests is the classification retrain's
        if fb.source != "human":
            counts["model_label_refused"] += 1  # the feedback-loop guard
        elif labellers is not None and fb.key_id is not None and fb.key_id not in labellers:
            counts["key_may_not_label"] += 1
        else:
            latest[fb.request_id] = fb  # a person's last word on a request counts
    examples = []
    for request_id, fb in latest.items():
        row = chats[request_id]
        hashes = json.loads(row.input_sha256)
        prompt = _user_text(row.prompt)
        if not (fb.label or "").strip():
            counts["no_corrected_answer"] += 1  # a rating or an acceptance: nothing to learn from
        elif len(hashes) != 1:
            counts["not_one_image"] += 1  # the captioner reads one image per answer
        elif not prompt:
            counts["no_prompt_text"] += 1
        elif not images.has(hashes[0]):
            counts["image_not_available"] += 1
        else:
            examples.append(CorrectedAnswer(request_id, hashes[0], prompt, fb.label.strip()))
            counts["used"] += 1
    return examples, dict(counts)


def replay_questions(manifest: pd.DataFrame, model: EmojiCaptioner, n: int, seed: int) -> pd.DataFrame:
    """Up to n of the original training questions: the model's training vendors' train split."""
    from vlmops.data.questions import question_rows

    if n <= 0 or "split" not in manifest.columns:
        return pd.DataFrame(columns=["record", "kind", "prompt", "answer"])
    pool = manifest[manifest["split"] == "train"]
    vendors = ((model.card or {}).get("data") or {}).get("vendors")
    if vendors and "vendor" in pool.columns:
        pool = pool[pool["vendor"].isin(vendors)]
    rng = np.random.default_rng(seed)
    records = pool.iloc[rng.choice(len(pool), min(len(pool), n), replace=False)] if len(pool) else pool
    questions = question_rows(records) if len(records) else pd.DataFrame(columns=["record", "prompt"])
    if len(questions) > n:
        questions = questions.iloc[rng.choice(len(questions), n, replace=False)]
    return questions.reset_index(drop=True)


def fine_tune_decoder(
    model: EmojiCaptioner,
    image_paths: list[str],
    prompts: list[str],
    answers: list[str],
    weights: torch.Tensor,
    config: CaptionRetrainConfig,
) -> tuple[nn.Module, list[dict]]:
    """A fine-tuned copy of the captioner's decoder on (image, prompt, answer) triples, drawn by `weights`."""
    from vlmops.models.caption_training import caption_loss, encode_examples, tower_features

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    unique = list(dict.fromkeys(image_paths))
    grid, pooled = tower_features(model.tower, unique)
    rows = torch.tensor([unique.index(p) for p in image_paths])
    frame = pd.DataFrame({"prompt": prompts, "answer": answers})
    decoder = copy.deepcopy(model.decoder).train()
    ids, target_mask = encode_examples(model.tokenizer, frame, decoder.config.max_text)
    pad = model.tokenizer.token_to_id(PAD)
    optimiser = torch.optim.AdamW(decoder.parameters(), lr=config.lr, weight_decay=0.01)
    per_epoch = max(1, int(weights.sum().item()))
    history = []
    for epoch in range(1, config.epochs + 1):
        order = torch.multinomial(weights, per_epoch, replacement=True, generator=generator)
        losses = []
        for batch in order.split(config.batch_size):
            width = int((ids[batch] != pad).sum(1).max())
            r = rows[batch]
            loss = caption_loss(
                decoder, grid[r], pooled[r], ids[batch, :width], target_mask[batch, :width], pad
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
            optimiser.step()
            losses.append(loss.item())
        history.append({"epoch": epoch, "loss": float(np.mean(losses))})
    return decoder.eval(), history


def caption_data_version(
    examples: list[CorrectedAnswer], replay: pd.DataFrame, manifest: pd.DataFrame
) -> str:
    """Content version of what a captioner retrain learned from: corrected answers plus replay questions."""
    from vlmops.data.version import dataset_version
    from vlmops.hashing import sha256_file

    def sha_of(record) -> str:
        known = manifest.loc[record, "sha256"] if "sha256" in manifest.columns else None
        return str(known) if isinstance(known, str) and known else sha256_file(manifest.loc[record, "image"])

    records = pd.DataFrame(
        {
            "id": [e.request_id for e in examples]
            + [f"{manifest.loc[r, 'id']}/{k}" for r, k in zip(replay["record"], replay["kind"], strict=True)],
            "sha256": [e.sha256 for e in examples] + [sha_of(r) for r in replay["record"]],
            "label": [e.answer for e in examples] + list(replay["answer"]),
        }
    )
    return dataset_version(records)


def retrain_captioner(
    model: EmojiCaptioner,
    manifest: pd.DataFrame,
    log: PredictionLog,
    images: ImageSource,
    out: Path,
    config: CaptionRetrainConfig = CaptionRetrainConfig(),
    replay: int = 1024,
    feedback_from: str = "labellers",
) -> dict:
    """Fine-tune the decoder on human-corrected chat answers plus `replay` training questions from
    `manifest`; write the captioner to `out` (`builtin:emoji-captioner@OUT`). Returns the summary."""
    from vlmops.models import load_model
    from vlmops.registry.retrain import FEEDBACK_FROM

    if not isinstance(model, EmojiCaptioner):
        raise VlmopsError(f"{model.info.uri} is not builtin:emoji-captioner (or a captioner saved from it)")
    if feedback_from not in FEEDBACK_FROM:
        raise VlmopsError(f"feedback_from={feedback_from!r}: use one of {', '.join(FEEDBACK_FROM)}")
    labellers = None
    if feedback_from == "labellers":
        from vlmops.serve.keys import KeyStore

        labellers = KeyStore(engine=log.engine).labellers()
    examples, counts = corrected_answers(log, images, labellers)
    if not examples:
        raise VlmopsError(
            f"no human-corrected chat answers with findable images to learn from ({counts}); serve with "
            "--keep-images (or pass --images MANIFEST) and collect corrected answers through /v1/feedback"
        )
    questions = replay_questions(manifest, model, replay, config.seed)
    paths = [str(images.path(e.sha256)) for e in examples] + [
        str(manifest.loc[r, "image"]) for r in questions["record"]
    ]
    prompts = [e.prompt for e in examples] + list(questions["prompt"])
    answers = [e.answer for e in examples] + list(questions["answer"])
    weights = torch.tensor([float(config.feedback_repeats)] * len(examples) + [1.0] * len(questions))
    decoder, history = fine_tune_decoder(model, paths, prompts, answers, weights, config)
    data_version = caption_data_version(examples, questions, manifest)
    extra, data = retrain_sections(
        model, data_version, counts, feedback_from, len(questions), config, history,
        feedback_examples=len(examples), replay_questions=len(questions),
    )  # fmt: skip
    card = {
        **{k: v for k, v in (model.card or {}).items() if k not in ("decoder", "weights_sha256")},
        "retrain": extra,
        "data": data,
    }
    save_captioner(decoder, model.tokenizer, card, out)
    info = load_model(f"builtin:emoji-captioner@{out}").info
    return {"out": str(out), "version": info.version, "weights_sha256": info.weights_sha256, **extra}
