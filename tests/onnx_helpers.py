"""A tiny random emoji-lit (16-px image tower, real MiniLM text tower) saved as builtin:emoji-lit@FOLDER."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from adapter_contract import sample_images
from vlmops.models.towers import ImageTower, ImageTowerConfig, pixels_from_images

TINY = ImageTowerConfig(image_size=16, stem=8, widths=(8, 16), out_dim=384, dropout=0.0)


def tiny_tower(seed: int = 0) -> ImageTower:
    """A random tower whose BatchNorm statistics are fitted to random images and whose head has no bias.

    Freshly initialised, every image maps to nearly the same vector (cosine 0.9999); with fitted
    statistics the vectors differ as a trained model's do, so zero-shot predictions vary by image.
    """
    torch.manual_seed(seed)
    tower = ImageTower(TINY)
    for module in tower.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the batch below
    tower.train()
    with torch.no_grad():
        tower(pixels_from_images(sample_images(64, seed=seed + 100), TINY.image_size))
        tower.head[1].bias.zero_()
    return tower.eval()


def save_tiny_model(folder: Path, seed: int = 0) -> str:
    """Write a tiny tower and a minimal model card into `folder`; returns the model URI."""
    tower = tiny_tower(seed)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.contiguous() for k, v in tower.state_dict().items()}
    save_file(weights, str(folder / "emoji-lit.safetensors"))
    card = {"tower": TINY.to_dict(), "logit_scale": 10.0}
    (folder / "emoji-lit.json").write_text(json.dumps(card))
    return f"builtin:emoji-lit@{folder}"
