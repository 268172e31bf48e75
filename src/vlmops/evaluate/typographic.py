"""Typographic attack: write a wrong class name onto the image and see whether the model reads it.

CLIP-style models are known to follow text in the image ("an apple labelled iPod"). For each sampled
image a wrong class is drawn at random (seeded); its name is written in black on a white band across the
lower part of the image, in the largest font size that fits the width (down to 6 px). The band itself
hides part of the image, so the same band without text is scored too (`occluded_top1`): the attack's
own effect is what the text adds on top of the occlusion.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlmops.evaluate.context import EvalContext
from vlmops.models.preprocess import to_rgb

BAND_FRACTION = 0.3
MIN_FONT = 6
VERSION = "v1"


def write_label(image: Image.Image, text: str) -> Image.Image:
    """A copy of `image` with `text` on a white band over its lower `BAND_FRACTION` (no text if empty)."""
    out = to_rgb(image).copy()
    width, height = out.size
    band = max(round(height * BAND_FRACTION), MIN_FONT + 2)
    size = band - 2
    font = ImageFont.load_default(size=size)
    while size > MIN_FONT and font.getlength(text) > width - 2:
        size -= 1
        font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, height - band, width, height), fill=(255, 255, 255))
    if not text:
        return out
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = max((width - (right - left)) // 2 - left, 0)
    y = height - band + (band - (bottom - top)) // 2 - top
    draw.text((x, y), text, fill=(0, 0, 0), font=font)
    return out


def wrong_targets(targets: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """One uniformly drawn class per item that differs from its true class."""
    rng = np.random.default_rng([seed, 31337])
    shift = rng.integers(1, n_classes, size=len(targets))
    return (targets + shift) % n_classes


def typographic_section(ctx: EvalContext, sample: int | None) -> dict:
    """Accuracy with a wrong label written on the image, the flip rate to that label, and changed rate."""
    task = ctx.task
    rows = ctx.sample(sample, "typographic")
    targets = task.targets[rows]
    written = wrong_targets(targets, len(task.classes), ctx.seed)
    texts = [task.class_names[w] for w in written]
    clean_pred = np.argmax(ctx.logits(ctx.image_emb[rows]), axis=1)
    variants = [f"typographic:{VERSION}:{text}" for text in texts]
    attacked = ctx.variant_emb(variants, lambda image, _seed, v: write_label(image, v.split(":", 2)[2]), rows)
    pred = np.argmax(ctx.logits(attacked), axis=1)
    band = ctx.variant_emb(
        f"typographic-band:{VERSION}", lambda image, _seed, _v: write_label(image, ""), rows
    )
    band_correct = np.argmax(ctx.logits(band), axis=1) == targets
    was_right = clean_pred == targets
    flipped = pred == written
    return {
        "n": len(rows),
        "clean_top1": float(was_right.mean()),
        "occluded_top1": float(band_correct.mean()),
        "attacked_top1": float((pred == targets).mean()),
        "text_effect": float((pred == targets).mean() - band_correct.mean()),
        "flip_rate": float(flipped[was_right].mean()) if was_right.any() else None,
        "flip_rate_all": float(flipped.mean()),
        "changed_rate": float((pred != clean_pred).mean()),
        "band_fraction": BAND_FRACTION,
    }
