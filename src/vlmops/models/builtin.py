"""Built-in models shipped inside the package, addressed as `builtin:<name>`."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vlmops.errors import ModelLoadError
from vlmops.models.base import VLM, ModelInfo, embed_in_batches, sha256_file
from vlmops.models.preprocess import TO_RGB_ID
from vlmops.models.towers import ImageTower, ImageTowerConfig, TextTower, minilm_dir, pixels_from_images

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from vlmops.models.training import TrainConfig, TrainResult

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class BuiltinSpec:
    """A row of the built-in model table."""

    description: str
    licence: str
    weights: str
    card: str
    train_command: str = "vlmops train"


BUILTIN_MODELS: dict[str, BuiltinSpec] = {
    "emoji-lit": BuiltinSpec(
        description="LiT-style dual encoder: frozen all-MiniLM-L6-v2 text tower, 48-px CNN image tower "
        "trained on google+twitter emoji (train split)",
        licence="Apache-2.0 (code, weights); MiniLM: Apache-2.0; training images: Apache-2.0, CC-BY-4.0",
        weights="emoji-lit.safetensors",
        card="emoji-lit.json",
    ),
    "emoji-captioner": BuiltinSpec(
        description="generative: emoji-lit's image tower (frozen) + a small transformer decoder that names "
        "emoji and answers questions about them (category, skin tone, gender, people)",
        licence="Apache-2.0 (code, weights); training images: Apache-2.0, CC-BY-4.0",
        weights="emoji-captioner.safetensors",
        card="emoji-captioner.json",
        train_command="vlmops train --task caption",
    ),
}


class EmojiLit:
    """The built-in LiT model: images through the trained CNN, texts through frozen MiniLM."""

    def __init__(
        self,
        tower: ImageTower,
        logit_scale: float,
        info: ModelInfo,
        text_tower: TextTower | None = None,
        batch_size: int = 64,
        card: dict | None = None,
    ):
        self.tower = tower.eval()
        self.card = card  # the model card written by `vlmops train` (None for an untrained candidate)
        self.logit_scale = float(logit_scale)
        self.info = info
        self._text_tower = text_tower
        self._text_path = minilm_dir() if text_tower is None else None  # missing weights fail now
        self._text_lock = threading.Lock()
        self.batch_size = batch_size

    @property
    def text_tower(self) -> TextTower:
        """The frozen text tower, loaded on first use: a job that only embeds images (a Ray actor, the
        audit's image pass) never pays for importing transformers and reading MiniLM (~3 CPU-s)."""
        if self._text_tower is None:
            with self._text_lock:
                if self._text_tower is None:
                    self._text_tower = TextTower(self._text_path)
        return self._text_tower

    @property
    def transform_id(self) -> str:
        """Preprocessing: `to_rgb` (on white), bicubic resize to the tower's size, scaled to [-1, 1]."""
        return f"{TO_RGB_ID}-white-bicubic{self.tower.config.image_size}-pm1"

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, 384) float32 unit vectors."""
        size = self.tower.config.image_size
        return embed_in_batches(
            images, self.batch_size, lambda b: self.tower(pixels_from_images(b, size)), self.info.dim
        )

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(m, 384) float32 unit vectors from the frozen text tower."""
        return self.text_tower.embed(list(texts))

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, 3, s, s) float tensor in [0, 1]: the tower's input before scaling to [-1, 1]."""
        return (pixels_from_images(images, self.tower.config.image_size) + 1.0) / 2.0

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 384) unit vectors of [0, 1] pixels, differentiable with respect to `pixels`."""
        return self.tower(pixels * 2.0 - 1.0)


def _files(target: str) -> tuple[str, BuiltinSpec, Path, Path]:
    """(name, spec, weights file, card file) of `emoji-lit` or `emoji-lit@FOLDER`, checked to exist."""
    name, _, folder_arg = target.partition("@")
    spec = BUILTIN_MODELS.get(name)
    if spec is None:
        raise ModelLoadError(f"unknown built-in model {name!r}; available: {', '.join(BUILTIN_MODELS)}")
    folder = Path(folder_arg).expanduser() if folder_arg else WEIGHTS_DIR
    weights, card_path = folder / spec.weights, folder / spec.card
    if not weights.exists() or not card_path.exists():
        raise ModelLoadError(
            f"weights of builtin:{target} are missing ({weights}); "
            f"reinstall vlmops or run `{spec.train_command}`"
        )
    return name, spec, weights, card_path


def training_data_version(target: str) -> str | None:
    """Version of the data the model was trained (or last retrained) on, from its card; no weights read."""
    card = json.loads(_files(target)[3].read_text())
    return (card.get("data") or {}).get("train_version")


def version_of(target: str) -> str:
    """The version `load(target)` gives (name and weights hash), without loading the weights."""
    name, _, weights, _ = _files(target)
    return f"{name}-{sha256_file(weights)[:12]}"


def load(target: str, device: str = "cpu", batch_size: int = 64):
    """Load a built-in model: `emoji-lit` / `emoji-captioner` (shipped weights) or `NAME@FOLDER` (from
    `vlmops train`, `vlmops train --task caption`)."""
    name, spec, weights, card_path = _files(target)
    if name == "emoji-captioner":
        from vlmops.models.captioner import load_captioner

        tower, digest = lit_tower()  # the captioner reads images with the shipped emoji-lit tower
        return load_captioner(weights.parent, tower, digest, f"builtin:{target}", spec.licence)
    tower, card, digest = _read_tower(weights, card_path)
    info = ModelInfo(
        name=name,
        version=f"{name}-{digest[:12]}",
        dim=tower.config.out_dim,
        uri=f"builtin:{target}",
        weights_sha256=digest,
        licence=spec.licence,
        image_size=tower.config.image_size,
    )
    return EmojiLit(tower, card["logit_scale"], info, batch_size=batch_size, card=card)


def lit_tower() -> tuple[ImageTower, str]:
    """The shipped emoji-lit image tower and its weights' sha256 (no text tower loaded)."""
    tower, _, digest = _read_tower(*_files("emoji-lit")[2:])
    return tower, digest


def _read_tower(weights: Path, card_path: Path) -> tuple[ImageTower, dict, str]:
    """emoji-lit's image tower from its weights and card, the card, and the weights' sha256."""
    from safetensors.torch import load_file

    card = json.loads(card_path.read_text())
    tower = ImageTower(ImageTowerConfig.from_dict(card["tower"]))
    tower.load_state_dict(load_file(weights))
    return tower, card, sha256_file(weights)


def save_emoji_lit(
    result: TrainResult,
    config: TrainConfig,
    manifest: pd.DataFrame,
    out: Path,
    evaluate: bool = True,
    text_tower: TextTower | None = None,
    quality: Callable[[VLM, pd.DataFrame], dict] | None = None,
) -> dict:
    """Write a trained emoji-lit (TrainResult) as safetensors plus its model card; returns the card.

    With `evaluate` and a `quality` function (the CLI passes `evaluate.emoji_bar.quality_report`: the
    model layer does not import evaluation), the card's "quality" section is `quality(model, manifest)`.
    """
    from safetensors.torch import save_file

    from vlmops.data.version import dataset_version
    from vlmops.models.training import training_licences

    spec = BUILTIN_MODELS["emoji-lit"]
    out.mkdir(parents=True, exist_ok=True)
    weights = out / spec.weights
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in result.tower.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    trained_on = manifest[manifest["vendor"].isin(config.vendors) & (manifest["split"] == "train")]
    card = {
        "model": "builtin:emoji-lit",
        "architecture": "LiT: frozen all-MiniLM-L6-v2 text tower (mean pooling) + CNN image tower",
        "tower": result.tower.config.to_dict(),
        "parameters": sum(p.numel() for p in result.tower.parameters()),
        "logit_scale": result.logit_scale,
        "weights_sha256": sha256_file(weights),
        "data": {
            "dataset_version": dataset_version(manifest),
            "train_version": dataset_version(trained_on),
            "n_train_images": result.n_train_images,
            "vendors": list(config.vendors),
            "training_image_licences": training_licences(manifest, config.vendors),
        },
        "hyperparameters": config.to_dict(),
        "training": {
            "best_epoch": result.best_epoch,
            "best_val_top1": result.best_val_top1,
            "minutes": result.seconds / 60,
            "history": result.history,
        },
        "text_tower": {
            "name": "sentence-transformers/all-MiniLM-L6-v2",
            "licence": "Apache-2.0",
            "frozen": True,
        },
    }
    if evaluate and quality is not None:
        info = ModelInfo("emoji-lit", "candidate", result.tower.config.out_dim, f"builtin:emoji-lit@{out}")
        model = EmojiLit(result.tower, result.logit_scale, info, text_tower=text_tower)
        card["quality"] = quality(model, manifest)
    (out / spec.card).write_text(json.dumps(card, indent=2, default=str) + "\n")
    return card
