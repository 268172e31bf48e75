"""The emoji-lit training recipe on a tiny synthetic manifest (seconds, not minutes)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from vlmops.models.towers import ImageTowerConfig, TextTower
from vlmops.models.training import (
    AugmentConfig,
    TrainConfig,
    _Selection,
    _twin_loss,
    _vendor_twins,
    augment,
    train_emoji_lit,
)

TINY = ImageTowerConfig(image_size=32, stem=8, widths=(16, 32), dropout=0.0)
SHAPES = {
    "red circle": ("ellipse", (220, 30, 30)),
    "blue square": ("rectangle", (30, 30, 220)),
    "green circle": ("ellipse", (30, 180, 30)),
    "yellow square": ("rectangle", (230, 210, 20)),
    "black circle": ("ellipse", (10, 10, 10)),
    "orange square": ("rectangle", (250, 140, 0)),
}


@pytest.fixture(scope="module")
def text_tower():
    return TextTower()


@pytest.fixture
def manifest(tmp_path):
    rows = []
    for k, (name, (shape, colour)) in enumerate(SHAPES.items()):
        for vendor, pad in (("google", 6), ("twitter", 10)):
            image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
            getattr(ImageDraw.Draw(image), shape)((pad, pad, 32 - pad, 32 - pad), fill=colour)
            path = tmp_path / f"{vendor}-{k}.png"
            image.save(path)
            rows.append(
                {
                    "id": f"{vendor}:{k}", "vendor": vendor, "image": str(path), "name": name,
                    "concept_name": name, "texts": [name, f"an emoji of {name}"], "unified": str(k),
                    "concept": str(k),
                    "skin_tone": "none", "split": "val" if k >= 4 else "train",
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_training_runs_keeps_best_epoch_and_stops_early(manifest, text_tower):
    config = TrainConfig(
        epochs=6,
        batch_size=8,
        samples_per_epoch=32,
        patience=2,
        tower=TINY,
        seed=1,
        cross_vendor_fraction=1.0,
    )
    seen = []
    result = train_emoji_lit(manifest, config, text_tower, on_epoch=seen.append)
    assert seen == result.history and 1 <= len(result.history) <= 6
    top = max(r["val_top1"] for r in result.history)
    se = math.sqrt(top * (1 - top) / 8)  # 4 unseen-concept + 4 held-out twitter drawings
    within = [r["epoch"] for r in result.history if r["val_top1"] >= top - 2 * se]
    assert result.best_epoch == max(within), "keeps the latest epoch within two standard errors of the best"
    argmax_epoch = next(r["epoch"] for r in result.history if r["val_top1"] == top)
    # stopped because `patience` epochs passed without improvement, or ran all epochs
    assert len(result.history) == 6 or len(result.history) - argmax_epoch >= 2
    assert not result.tower.training and result.logit_scale > 0
    assert result.n_train_images == 4, "twitter drawings of train concepts are held out for val"
    assert {"val_unseen_concepts_top1", "val_cross_vendor_top1"} <= set(result.history[0])


def test_training_is_seeded(manifest, text_tower):
    config = TrainConfig(
        epochs=2, batch_size=8, samples_per_epoch=16, tower=TINY, seed=3, cross_vendor_fraction=1.0
    )
    first = train_emoji_lit(manifest, config, text_tower)
    second = train_emoji_lit(manifest, config, text_tower)
    assert [r["loss"] for r in first.history] == [r["loss"] for r in second.history]


def test_training_without_val_rows_is_an_error(manifest, text_tower):
    with pytest.raises(ValueError, match="no train/val images"):
        train_emoji_lit(manifest.assign(split="train"), TrainConfig(tower=TINY), text_tower)


def test_augment_keeps_shape_and_fills_with_white():
    generator = torch.Generator().manual_seed(0)
    white = torch.ones(8, 3, 32, 32)
    out = augment(white, generator)
    assert out.shape == white.shape
    torch.testing.assert_close(out, white, atol=1e-5, rtol=0)
    dark = -torch.ones(8, 3, 32, 32)
    moved = augment(dark, generator)
    assert (moved > 0.9).any(), "shrinking/shifting must reveal white background"


def test_jitter_never_changes_hue_and_cutout_paints_white_squares():
    generator = torch.Generator().manual_seed(0)
    grey = torch.full((16, 3, 32, 32), -0.2)
    still = AugmentConfig(scale=(1.0, 1.0), shift=0.0, blur_p=0.0)
    jittered = augment(grey, generator, AugmentConfig(**{**still.__dict__, "jitter": 0.3}))
    torch.testing.assert_close(jittered[:, 0], jittered[:, 1])  # greys stay grey: no hue shift
    assert not torch.allclose(jittered, grey)
    assert jittered.min() >= -1.0 and jittered.max() <= 1.0
    cut = augment(-torch.ones(16, 3, 32, 32), generator, AugmentConfig(**{**still.__dict__, "cutout_p": 1.0}))
    white_pixels = (cut == 1.0).all(dim=1).sum(dim=(1, 2))
    assert (white_pixels == 8 * 8).all()


def test_vendor_twins_pair_each_emoji_with_its_other_vendor_drawing(manifest):
    frame = pd.concat([manifest, manifest.iloc[[0]].assign(id="solo", unified="solo")], ignore_index=True)
    twins = _vendor_twins(frame).tolist()
    for row, twin in enumerate(twins[:-1]):
        assert frame.loc[twin, "unified"] == frame.loc[row, "unified"]
        assert frame.loc[twin, "vendor"] != frame.loc[row, "vendor"]
    assert twins[-1] == len(frame) - 1, "an emoji without a twin is paired with itself"


def test_twin_loss_matches_a_hand_computed_cross_entropy():
    import numpy as np

    emb = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.1], [0.9, 0.2], [0.0, 1.0], [0.3, 0.8], [0.5, 0.5]]), dim=-1
    )
    keys = torch.tensor([0, 0, 1, 1, 2])  # the last image has no twin: left out of the loss
    scale = torch.tensor(10.0)
    sims = 10.0 * emb.numpy() @ emb.numpy().T
    expected = []
    for i, j in ((0, 1), (1, 0), (2, 3), (3, 2)):
        others = [k for k in range(5) if k != i]
        expected.append(-(sims[i, j] - np.log(np.exp(sims[i, others]).sum())))
    assert float(_twin_loss(emb, keys, scale)) == pytest.approx(np.mean(expected), rel=1e-5)


def test_selection_keeps_the_latest_epoch_within_n_standard_errors():
    tower = torch.nn.Linear(1, 1)
    selection = _Selection(n_val=100, n_se=1.0)  # se at 0.5 is 0.05
    for epoch, val in enumerate([0.30, 0.50, 0.47, 0.40, 0.46, 0.44], start=1):
        with torch.no_grad():
            tower.weight.fill_(epoch)
        selection.update(epoch, val, tower, scale=float(epoch))
    assert (selection.best_epoch, selection.best_val) == (2, 0.50)
    assert (selection.chosen_epoch, selection.chosen_val) == (5, 0.46)
    assert selection.state["weight"].item() == 5 and selection.scale == 5.0
