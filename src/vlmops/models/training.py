"""Training recipe of the built-in emoji-lit model (LiT: frozen text tower, trained image tower).

What the recipe does and why (measured in bench/RESULTS.md):
- targets are frozen MiniLM embeddings of several captions per emoji (CLDR name, "an emoji of ...",
  Unicode name, keywords), computed once;
- two losses: softmax over the *whole* vocabulary of training prompts (a fixed text classifier, so
  every step sees every negative) and the symmetric in-batch image-text contrastive loss over
  sampled captions, where the other vendor's drawing of the same emoji counts as a positive;
- optional (`pair_vendors`, off by default because it measured worse): batches of vendor twins with
  an image-image contrastive loss between them;
- augmentation is geometric (scale/shift) plus blur, never flips or hue changes, which would break
  arrows and skin tones; dropout and weight decay fight memorisation, but training long matters
  more: transfer to a new vendor keeps improving after unseen-concept accuracy has peaked;
- 48-px input: 0.56x the compute of 64 px, so about 55 epochs fit in the 15-minute budget;
- anchors are sampled with weights 1/(variants of the concept) so the five skin-tone copies of a
  person emoji do not drown out objects and symbols;
- validation mirrors the two things the model must do: name *unseen* concepts (val-split concepts,
  all skin-tone variants) and recognise *known concepts in an unfamiliar style* (the twitter drawings
  of 10 % of train concepts, held out of training); early stopping and checkpoint choice use the mean
  of the two top-1s. No test vendor (facebook, openmoji) is looked at.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from vlmops.data.images import load_image
from vlmops.hashing import seeded_uniform
from vlmops.models.towers import ImageTower, ImageTowerConfig, TextTower, pixels_from_images

PROMPT = "an emoji of {}"


@dataclass
class AugmentConfig:
    """Augmentations that keep an emoji's meaning: no flips, no hue changes."""

    scale: tuple[float, float] = (0.75, 1.1)
    shift: float = 0.12
    blur_p: float = 0.3
    jitter: float = 0.0  # max relative change of brightness, contrast and saturation
    cutout_p: float = 0.0


@dataclass
class TrainConfig:
    """Hyper-parameters of `train_emoji_lit`; all of them go into the model card."""

    vendors: tuple[str, ...] = ("google", "twitter")
    epochs: int = 55
    batch_size: int = 128
    samples_per_epoch: int = 4096
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    vocab_loss_weight: float = 1.0
    pair_vendors: bool = False  # half of each batch is the other vendor's drawing of the other half
    image_loss_weight: float = 1.0  # image-image contrastive loss between vendor twins
    patience: int = 15
    cross_vendor_fraction: float = 0.1  # concepts whose last-vendor drawings are held out for val
    selection_se: float = 2.0  # keep the latest epoch within this many standard errors of the best val
    seed: int = 0
    max_minutes: float = 14.5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tower: ImageTowerConfig = field(default_factory=ImageTowerConfig)

    def to_dict(self) -> dict:
        """Plain dict for the model card."""
        return asdict(self)


@dataclass
class TrainResult:
    """What training produced: the tower, its learned scale, and the history of the run."""

    tower: ImageTower
    logit_scale: float
    history: list[dict]
    best_epoch: int  # the epoch kept (see _Selection), not always the arg-max of val top-1
    best_val_top1: float
    seconds: float
    n_train_images: int


def load_pixels(paths: list[str], size: int) -> torch.Tensor:
    """All images as one uint8 tensor (n, 3, size, size), composited on white."""
    pixels = pixels_from_images([load_image(p) for p in paths], size)
    return ((pixels + 1.0) * 127.5).round().to(torch.uint8)


def augment(
    batch: torch.Tensor, generator: torch.Generator, config: AugmentConfig | None = None
) -> torch.Tensor:
    """Random scale, shift, blur, brightness/contrast/saturation and cutout; white fill outside the image."""
    config = config or AugmentConfig()
    n = batch.shape[0]
    scale = torch.empty(n).uniform_(*config.scale, generator=generator)
    shift = torch.empty(n, 2).uniform_(-config.shift, config.shift, generator=generator)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1.0 / scale
    theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = shift
    grid = nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
    # sample (x - 1) with zero padding, then add 1 back: pixels from outside the image come out white (+1)
    out = nn.functional.grid_sample(batch - 1.0, grid, padding_mode="zeros", align_corners=False) + 1.0
    blur = torch.rand(n, generator=generator) < config.blur_p
    if blur.any():
        small = nn.functional.interpolate(out[blur], scale_factor=0.5, mode="bilinear", antialias=True)
        out[blur] = nn.functional.interpolate(small, size=batch.shape[-2:], mode="bilinear")
    if config.jitter > 0:
        out = _jitter(out, config.jitter, generator)
    if config.cutout_p > 0:
        out = _cutout(out, config.cutout_p, generator)
    return out


def _jitter(x: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1 - amount, 1 + amount]."""
    n = x.shape[0]

    def factor() -> torch.Tensor:
        return torch.empty(n, 1, 1, 1).uniform_(1 - amount, 1 + amount, generator=generator)

    x = (x + 1.0) * factor() - 1.0  # brightness in [0, 2] space
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean  # contrast
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * factor() + grey  # saturation (hue unchanged)
    return x.clamp(-1.0, 1.0)


def _cutout(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Paint a white square over a random quarter-size region of a fraction p of the images."""
    n, _, h, w = x.shape
    size = h // 4
    chosen = torch.nonzero(torch.rand(n, generator=generator) < p).flatten().tolist()
    for i in chosen:
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        x[i, :, top : top + size, left : left + size] = 1.0
    return x


def _caption_table(frame: pd.DataFrame, text_tower: TextTower) -> tuple[torch.Tensor, list[list[int]]]:
    """Embed each row's captions once; return the embedding table and row -> caption indices."""
    captions: dict[str, int] = {}
    per_row = []
    for texts in frame["texts"]:
        per_row.append([captions.setdefault(t, len(captions)) for t in texts])
    table = torch.from_numpy(text_tower.embed(list(captions)))
    return table, per_row


@dataclass
class _Selection:
    """Keeps the latest epoch whose val top-1 is not significantly below the best so far.

    Val has a few hundred images: epochs within `n_se` binomial standard errors of the best
    (2 SE, about the 5 % level) are statistically tied, and among those the latest, most-trained
    one is kept, because transfer to unseen vendors keeps improving after val (unseen concepts)
    flattens (see bench/RESULTS.md). Early stopping still counts from the arg-max epoch.
    """

    n_val: int
    n_se: float = 2.0
    best_val: float = -1.0
    best_epoch: int = 0
    chosen_val: float = -1.0
    chosen_epoch: int = 0
    state: dict | None = None
    scale: float = 0.0

    def update(self, epoch: int, val: float, tower: nn.Module, scale: float) -> None:
        """Record one epoch's val top-1; snapshot the weights if the epoch is (still) a candidate."""
        if val > self.best_val:
            self.best_val, self.best_epoch = val, epoch
        standard_error = math.sqrt(self.best_val * (1.0 - self.best_val) / max(self.n_val, 1))
        if val >= self.best_val - self.n_se * standard_error:
            self.chosen_val, self.chosen_epoch, self.scale = val, epoch, scale
            self.state = {k: v.detach().clone() for k, v in tower.state_dict().items()}


def _twin_loss(emb: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Image-image contrastive loss: each image's positives are the other images of the same emoji."""
    eye = torch.eye(len(keys), dtype=torch.bool)
    positives = ((keys[:, None] == keys[None, :]) & ~eye).float()
    has_positive = positives.sum(1) > 0
    logits = (scale * emb @ emb.T).masked_fill(eye, -1e4)
    targets = positives[has_positive] / positives[has_positive].sum(1, keepdim=True)
    return nn.functional.cross_entropy(logits[has_positive], targets)


def _vendor_twins(train: pd.DataFrame) -> torch.Tensor:
    """For each row, a row of the same emoji from another vendor (itself if there is none)."""
    twins = np.arange(len(train))
    for rows in train.groupby("unified").indices.values():
        if len(rows) > 1:
            twins[rows] = np.roll(rows, 1)
    return torch.from_numpy(twins)


def _val_top1(tower: ImageTower, pixels: torch.Tensor, targets: torch.Tensor, classes: torch.Tensor) -> float:
    tower.eval()
    with torch.inference_mode():
        emb = torch.cat(
            [tower(pixels[i : i + 256].float() / 127.5 - 1.0) for i in range(0, len(pixels), 256)]
        )
    tower.train()
    return float(((emb @ classes.T).argmax(1) == targets).float().mean())


def _prompt_classes(
    frame: pd.DataFrame, text_tower: TextTower, column: str = "name", rows: pd.DataFrame | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt embeddings of the distinct values of `column`, and the index of each of `rows` (default
    all of `frame`) among them."""
    names = sorted(frame[column].unique())
    index = {name: i for i, name in enumerate(names)}
    classes = torch.from_numpy(text_tower.embed([PROMPT.format(n) for n in names]))
    return classes, torch.tensor([index[n] for n in (frame if rows is None else rows)[column]])


def hold_out_drawings(train: pd.DataFrame, config: TrainConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Move the last vendor's drawings of a seeded `cross_vendor_fraction` of concepts out of training.

    The model then sees those concepts only in the other vendor's style, and these held-out drawings
    measure "known concept, unfamiliar style" (what a new vendor asks) without touching any test vendor.
    """

    def held(concept: str) -> bool:
        return seeded_uniform(f"cross-vendor:{config.seed}:{concept}") < config.cross_vendor_fraction

    out = train["concept"].map(held).to_numpy() & (train["vendor"] == config.vendors[-1]).to_numpy()
    return train[~out].reset_index(drop=True), train[out].reset_index(drop=True)


def train_emoji_lit(
    manifest: pd.DataFrame,
    config: TrainConfig,
    text_tower: TextTower | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train the image tower on the train split of `config.vendors`; early-stop on val top-1."""
    started = time.monotonic()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    text_tower = text_tower or TextTower()
    data = manifest[manifest["vendor"].isin(config.vendors)]
    train, cross_vendor = hold_out_drawings(data[data["split"] == "train"], config)
    val = data[data["split"] == "val"].reset_index(drop=True)
    if train.empty or val.empty or cross_vendor.empty:
        raise ValueError(f"no train/val images for vendors {config.vendors}; check the manifest")

    size = config.tower.image_size
    train_pixels = load_pixels(list(train["image"]), size)
    captions, row_captions = _caption_table(train, text_tower)
    vocab, vocab_targets = _prompt_classes(train, text_tower)
    val_sets = {
        "unseen_concepts": (
            load_pixels(list(val["image"]), size),
            *_prompt_classes(val, text_tower, "concept_name"),
        ),
        "cross_vendor": (
            load_pixels(list(cross_vendor["image"]), size),
            *_prompt_classes(pd.concat([train, cross_vendor]), text_tower, "concept_name", rows=cross_vendor),
        ),
    }
    keys = torch.from_numpy(pd.factorize(train["unified"])[0])
    prompt_rows = torch.tensor([row[1] if len(row) > 1 else row[0] for row in row_captions])
    variants = train.groupby(["vendor", "concept"])["id"].transform("count").to_numpy()
    sampler_weights = torch.from_numpy(1.0 / variants)
    twins = _vendor_twins(train)

    tower = ImageTower(config.tower).to(memory_format=torch.channels_last)
    log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
    optimiser = torch.optim.AdamW(
        [{"params": tower.parameters()}, {"params": [log_scale], "weight_decay": 0.0}],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = config.samples_per_epoch // config.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.1
    )
    history: list[dict] = []
    selection = _Selection(n_val=len(val) + len(cross_vendor), n_se=config.selection_se)
    for epoch in range(1, config.epochs + 1):
        per_step = config.batch_size // 2 if config.pair_vendors else config.batch_size
        order = torch.multinomial(sampler_weights, steps_per_epoch * per_step, True, generator=generator)
        losses = []
        for step in range(steps_per_epoch):
            idx = order[step * per_step : (step + 1) * per_step]
            if config.pair_vendors:
                idx = torch.cat([idx, twins[idx]])  # each emoji with its other-vendor twin
            images = augment(train_pixels[idx].float() / 127.5 - 1.0, generator, config.augment)
            emb = tower(images.contiguous(memory_format=torch.channels_last))
            scale = log_scale.exp().clamp(max=100.0)
            # caption per image: the prompt half of the time, else any of its captions
            pick = [
                row_captions[i][torch.randint(len(row_captions[i]), (1,), generator=generator)] for i in idx
            ]
            use_prompt = torch.rand(len(idx), generator=generator) < 0.5
            text = captions[torch.where(use_prompt, prompt_rows[idx], torch.tensor(pick))]
            logits = scale * emb @ text.T
            positives = (keys[idx][:, None] == keys[idx][None, :]).float()
            targets = positives / positives.sum(1, keepdim=True)
            contrastive = 0.5 * (
                nn.functional.cross_entropy(logits, targets) + nn.functional.cross_entropy(logits.T, targets)
            )
            vocab_loss = nn.functional.cross_entropy(
                scale * emb @ vocab.T, vocab_targets[idx], label_smoothing=config.label_smoothing
            )
            loss = contrastive + config.vocab_loss_weight * vocab_loss
            if config.pair_vendors and config.image_loss_weight > 0:
                loss = loss + config.image_loss_weight * _twin_loss(emb, keys[idx], scale)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        scores = {
            name: _val_top1(tower, pixels, targets, classes)
            for name, (pixels, classes, targets) in val_sets.items()
        }
        val_top1 = float(np.mean(list(scores.values())))
        record = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "val_top1": val_top1,
            **{f"val_{name}_top1": score for name, score in scores.items()},
            "logit_scale": float(log_scale.detach().exp()),
            "minutes": (time.monotonic() - started) / 60,
        }
        history.append(record)
        if on_epoch:
            on_epoch(record)
        selection.update(epoch, val_top1, tower, float(log_scale.detach().exp()))
        if epoch - selection.best_epoch >= config.patience or record["minutes"] > config.max_minutes:
            break
    tower.load_state_dict(selection.state)
    tower.eval()
    return TrainResult(
        tower=tower,
        logit_scale=selection.scale,
        history=history,
        best_epoch=selection.chosen_epoch,
        best_val_top1=selection.chosen_val,
        seconds=time.monotonic() - started,
        n_train_images=len(train),
    )


def training_licences(manifest: pd.DataFrame, vendors: tuple[str, ...]) -> dict[str, str]:
    """Artwork licence per training vendor, for the model card."""
    rows = manifest[manifest["vendor"].isin(vendors)].drop_duplicates("vendor")
    return {row.vendor: row.licence for row in rows.itertuples()}
