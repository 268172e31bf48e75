"""builtin:emoji-lit: the shipped checkpoint, the adapter contract, and save/load round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adapter_contract import check_adapter, sample_images
from vlmops.errors import ModelLoadError
from vlmops.models import load_model
from vlmops.models.builtin import BUILTIN_MODELS, WEIGHTS_DIR, EmojiLit
from vlmops.models.towers import ImageTower, ImageTowerConfig, TextTower, minilm_dir

TINY = ImageTowerConfig(image_size=32, stem=8, widths=(16, 32), dropout=0.0)


@pytest.fixture(scope="module")
def builtin():
    return load_model("builtin:emoji-lit")


def test_shipped_checkpoint_is_small_and_has_a_card():
    spec = BUILTIN_MODELS["emoji-lit"]
    weights, card = WEIGHTS_DIR / spec.weights, json.loads((WEIGHTS_DIR / spec.card).read_text())
    assert weights.stat().st_size <= 15 * 1024 * 1024
    assert 1_000_000 <= card["parameters"] <= 3_000_000
    assert len(card["data"]["dataset_version"]) == 64
    assert card["data"]["training_image_licences"] == {"google": "Apache-2.0", "twitter": "CC-BY-4.0"}
    assert card["quality"]["bars"]["new_vendor_top1"]["passed"]
    assert card["quality"]["bars"]["unseen_concepts_top1"]["passed"]


def test_builtin_meets_the_adapter_contract(builtin):
    assert builtin.info.dim == 384 and builtin.info.version.startswith("emoji-lit-")
    check_adapter(builtin)


def test_text_tower_is_frozen_minilm(builtin):
    """Texts go through all-MiniLM-L6-v2 unchanged: compare with a direct transformers call."""
    from transformers import AutoModel, AutoTokenizer

    texts = ["an emoji of grinning face", "flag: Japan"]
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModel.from_pretrained(minilm_dir()).eval()
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(builtin.embed_texts(texts), expected, atol=1e-5)


def test_matching_caption_scores_highest(builtin):
    """A red heart image is closer to 'red heart' than to unrelated names (sanity of the checkpoint)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((12, 12, 52, 52), fill=(255, 220, 0))
    names = ["an emoji of yellow circle", "an emoji of flag: Japan", "an emoji of pizza", "an emoji of car"]
    scores = builtin.embed_images([image]) @ builtin.embed_texts(names).T
    assert scores.argmax() == 0


def test_unknown_builtin_and_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match=r"unknown built-in model 'nope'.*emoji-lit"):
        load_model("builtin:nope")
    with pytest.raises(ModelLoadError, match=r"missing.*vlmops train"):
        load_model(f"builtin:emoji-lit@{tmp_path}")


def test_save_then_load_round_trips(tmp_path, monkeypatch):
    """A trained tower saved by save_emoji_lit loads back through builtin:emoji-lit@DIR unchanged."""
    import pandas as pd

    from vlmops.models import builtin as builtin_module
    from vlmops.models.training import TrainConfig, TrainResult

    torch.manual_seed(0)
    tower = ImageTower(TINY).eval()
    result = TrainResult(tower, 12.5, [{"epoch": 1}], 1, 0.5, 3.0, 4)
    manifest = pd.DataFrame(
        {
            "id": ["a", "b"],
            "sha256": ["0" * 64, "1" * 64],
            "label": ["x/y/z", "x/y/w"],
            "vendor": ["google", "twitter"],
            "split": ["train", "train"],
            "licence": ["Apache-2.0", "CC-BY-4.0"],
        }
    )
    card = builtin_module.save_emoji_lit(result, TrainConfig(tower=TINY), manifest, tmp_path, evaluate=False)
    loaded = load_model(f"builtin:emoji-lit@{tmp_path}")
    assert loaded.logit_scale == pytest.approx(12.5)
    assert loaded.info.weights_sha256 == card["weights_sha256"]
    images = sample_images(3)
    reference = EmojiLit(tower, 12.5, loaded.info, text_tower=loaded.text_tower)
    np.testing.assert_allclose(loaded.embed_images(images), reference.embed_images(images), atol=1e-6)


def test_text_tower_rejects_nothing_and_handles_empty():
    tower = TextTower()
    assert tower.embed([]).shape == (0, 384)
