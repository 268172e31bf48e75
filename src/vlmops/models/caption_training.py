"""Training recipe of builtin:emoji-captioner: questions from the emoji metadata, a WordPiece vocabulary
trained on them, and a decoder trained on the frozen emoji-lit tower's features.

Each training image (google and twitter, train split, as for emoji-lit) is asked every question in
`QUESTIONS`; the answers come from its metadata. The tower is frozen, so each image's features are
computed once, from the un-augmented image; what the decoder learns is naming, not seeing. Training
stops at `max_minutes` or after `epochs`; the last epoch is kept (val loss is recorded each epoch in
the card's history, for the reader).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from vlmops.data.images import load_image
from vlmops.data.questions import QUESTIONS, question_rows
from vlmops.models.captioner import (
    BOS,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    CaptionDecoder,
    CaptionerConfig,
    image_features,
)
from vlmops.models.towers import ImageTower, pixels_from_images


def train_tokenizer(texts: list[str], vocab_size: int = 2000):
    """A lower-casing WordPiece tokenizer trained on `texts`, with [PAD] [UNK] [BOS] [EOS]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), min_frequency=1
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


@dataclass
class CaptionTrainConfig:
    """Hyper-parameters of `train_captioner`; all of them go into the model card.

    Sized to the 15-minute budget on 2 cores: a training step (batch 128, about 20 text tokens) took
    275 ms at d_model 128 with 3 layers against 505 ms at 192 with 4, so 8 epochs of about 330 steps
    fit in `max_minutes` with room for computing the tower's features first.
    """

    vendors: tuple[str, ...] = ("google", "twitter")
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    vocab_size: int = 2000
    d_model: int = 128
    layers: int = 3
    heads: int = 4
    ff: int = 512
    dropout: float = 0.1
    seed: int = 0
    max_minutes: float = 13.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CaptionTrainResult:
    """The trained decoder and tokenizer, and how the run went."""

    decoder: CaptionDecoder
    tokenizer: object
    history: list[dict]
    seconds: float
    n_train_images: int
    n_examples: int


def tower_features(tower: ImageTower, paths: list[str], batch_size: int = 256, on_batch=None):
    """(grid, pooled) features of every image in `paths`, in batches, without gradients."""
    grids, pooled = [], []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            images = [load_image(p) for p in paths[start : start + batch_size]]
            grid, emb = image_features(tower.eval(), pixels_from_images(images, tower.config.image_size))
            grids.append(grid)
            pooled.append(emb)
            if on_batch:
                on_batch(len(images))
    return torch.cat(grids), torch.cat(pooled)


def encode_examples(tokenizer, questions: pd.DataFrame, max_text: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (right-padded) and the loss mask (1 where the answer or [EOS] is predicted)."""
    pad, bos, eos = (tokenizer.token_to_id(t) for t in (PAD, BOS, EOS))
    ids = torch.full((len(questions), max_text), pad, dtype=torch.long)
    target_mask = torch.zeros(len(questions), max_text, dtype=torch.bool)
    prompts = tokenizer.encode_batch(list(questions["prompt"]))
    answers = tokenizer.encode_batch(list(questions["answer"]))
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        answer = a.ids[: max_text - len(p.ids) - 2]
        row = [*p.ids, bos, *answer, eos]
        ids[i, : len(row)] = torch.tensor(row)
        target_mask[i, len(p.ids) + 1 : len(row)] = True  # positions of answer tokens and [EOS]
    return ids, target_mask


def caption_loss(decoder, grid, pooled, ids, target_mask, pad: int) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens and [EOS] (`target_mask`), the prompt not counted."""
    mask = (ids != pad).long()
    logits = decoder(grid, pooled, ids[:, :-1], mask[:, :-1])
    targets = ids[:, 1:].masked_fill(~target_mask[:, 1:], -100)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def train_captioner(
    manifest: pd.DataFrame,
    config: CaptionTrainConfig | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[CaptionTrainResult, str]:
    """Train the decoder on the shipped emoji-lit tower's features of the training vendors' train
    split. Returns the result and the tower weights' sha256 (the captioner is bound to that tower)."""
    from vlmops.models.builtin import lit_tower

    config = config or CaptionTrainConfig()
    tower, tower_sha256 = lit_tower()
    began = time.perf_counter()
    torch.manual_seed(config.seed)
    train = manifest[manifest["vendor"].isin(config.vendors) & (manifest["split"] == "train")]
    val = manifest[manifest["vendor"].isin(config.vendors) & (manifest["split"] == "val")]
    train_questions, val_questions = question_rows(train), question_rows(val)
    corpus = list(train_questions["prompt"].unique()) + list(train_questions["answer"])
    tokenizer = train_tokenizer(corpus, config.vocab_size)
    longest = max(len(e.ids) for e in tokenizer.encode_batch(corpus))
    decoder = CaptionDecoder(
        CaptionerConfig(
            vocab_size=tokenizer.get_vocab_size(),
            d_model=config.d_model,
            layers=config.layers,
            heads=config.heads,
            ff=config.ff,
            max_text=min(64, 2 * longest + 4),
            dropout=config.dropout,
        )
    )
    done = 0

    def features(frame: pd.DataFrame, what: str):
        nonlocal done
        total = len(train) + len(val)

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if on_progress:
                on_progress(f"image features ({what})", done, total)

        return tower_features(tower, list(frame["image"]), on_batch=tick)

    train_grid, train_pooled = features(train, "train")
    val_grid, val_pooled = features(val, "val")
    position = {index: i for i, index in enumerate(train.index)}
    train_rows = torch.tensor([position[r] for r in train_questions["record"]])
    val_position = {index: i for i, index in enumerate(val.index)}
    val_rows = torch.tensor([val_position[r] for r in val_questions["record"]])
    ids, target_mask = encode_examples(tokenizer, train_questions, decoder.config.max_text)
    val_ids, val_target = encode_examples(tokenizer, val_questions, decoder.config.max_text)
    pad = tokenizer.token_to_id(PAD)

    optimiser = torch.optim.AdamW(decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(ids) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, min(config.warmup_steps, total_steps // 10))

    def rate(step: int) -> float:  # linear warm-up, then cosine decay to 0
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, rate)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    for epoch in range(1, config.epochs + 1):
        decoder.train()
        order = torch.randperm(len(ids), generator=generator)
        losses = []
        for step, batch in enumerate(order.split(config.batch_size)):
            rows = train_rows[batch]
            width = int((ids[batch] != pad).sum(1).max())
            loss = caption_loss(
                decoder,
                train_grid[rows],
                train_pooled[rows],
                ids[batch, :width],
                target_mask[batch, :width],
                pad,
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
            if on_progress:
                on_progress(f"epoch {epoch}/{config.epochs}", step + 1, steps_per_epoch)
        val_loss = _evaluate_loss(decoder, val_grid, val_pooled, val_rows, val_ids, val_target, pad)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss})
        if (time.perf_counter() - began) / 60 > config.max_minutes:
            break
    decoder.eval()
    seconds = time.perf_counter() - began
    return CaptionTrainResult(decoder, tokenizer, history, seconds, len(train), len(ids)), tower_sha256


def caption_card(
    result: CaptionTrainResult, config: CaptionTrainConfig, manifest: pd.DataFrame, tower_sha256: str
):
    """The model card of a trained captioner (the weights' sha256 is added when it is saved)."""
    from vlmops.data.version import dataset_version
    from vlmops.models.training import training_licences

    trained_on = manifest[manifest["vendor"].isin(config.vendors) & (manifest["split"] == "train")]
    return {
        "model": "builtin:emoji-captioner",
        "architecture": "emoji-lit's CNN image tower (frozen): 3x3 feature grid + pooled embedding as 10 "
        "prefix tokens of a causal transformer decoder over a WordPiece vocabulary",
        "tower_sha256": tower_sha256,
        "parameters": sum(p.numel() for p in result.decoder.parameters()),
        "questions": {kind: prompt for kind, (prompt, _) in QUESTIONS.items()},
        "data": {
            "dataset_version": dataset_version(manifest),
            "train_version": dataset_version(trained_on),
            "n_train_images": result.n_train_images,
            "n_examples": result.n_examples,
            "vendors": list(config.vendors),
            "training_image_licences": training_licences(manifest, config.vendors),
        },
        "hyperparameters": config.to_dict(),
        "training": {"minutes": result.seconds / 60, "history": result.history},
    }


def _evaluate_loss(decoder, grid, pooled, rows, ids, target_mask, pad: int) -> float:
    decoder.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in torch.arange(len(ids)).split(512):
            loss = caption_loss(
                decoder, grid[rows[batch]], pooled[rows[batch]], ids[batch], target_mask[batch], pad
            )
            total += float(loss) * len(batch)
            count += len(batch)
    return total / max(count, 1)
