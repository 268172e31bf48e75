"""Adapter for open_clip models loaded from a local checkpoint.

URI: ``open_clip:ARCH@CHECKPOINT``, e.g. ``open_clip:ViT-B-32@/models/vit-b-32.pt``. The package
``open_clip_torch`` is an optional extra, imported only when such a model is loaded.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmops._optional import require
from vlmops.errors import ModelLoadError
from vlmops.models.base import ModelInfo, embed_in_batches, sha256_files
from vlmops.models.preprocess import TO_RGB_ID, to_rgb

FORMAT_HINT = "use open_clip:ARCH@CHECKPOINT, e.g. open_clip:ViT-B-32@/models/vit-b-32.pt"


def parse_target(target: str) -> tuple[str, Path]:
    """Split ``ARCH@CHECKPOINT`` into the architecture name and the checkpoint path."""
    arch, sep, checkpoint = target.partition("@")
    arch, checkpoint = arch.strip(), checkpoint.strip()
    if not sep or not arch or not checkpoint:
        raise ModelLoadError(f"bad open_clip target {target!r}; {FORMAT_HINT}")
    return arch, Path(checkpoint).expanduser()


def _transform_id(arch: str, preprocess: Any) -> str:
    """open_clip, the architecture and a hash of `to_rgb`'s version and the pipeline's description."""
    description = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(preprocess))  # function reprs hold addresses
    digest = hashlib.sha256(f"{TO_RGB_ID}|{description}".encode()).hexdigest()[:12]
    return f"open_clip-{arch}-{digest}"


class OpenCLIPModel:
    """An open_clip model behind the `VLM` protocol."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        info: ModelInfo,
        transform_id: str,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.batch_size = batch_size
        self.logit_scale = float(model.logit_scale.detach().exp().reshape(-1)[0])
        bias = getattr(model, "logit_bias", None)
        self.logit_bias = None if bias is None else float(bias.detach().reshape(-1)[0])
        self._transform_id = transform_id

    @property
    def transform_id(self) -> str:
        """Architecture and a hash of the preprocessing pipeline."""
        return self._transform_id

    def _run(self, items: Sequence, encode: Callable[[list], torch.Tensor]) -> np.ndarray:
        return embed_in_batches(items, self.batch_size, encode, self.info.dim)

    def _encode_images(self, batch: list[Image.Image]) -> torch.Tensor:
        rgb = [to_rgb(im) for im in batch]
        pixels = torch.stack([self.preprocess(im) for im in rgb]).to(self.device)
        return self.model.encode_image(pixels)

    def _encode_texts(self, batch: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(batch).to(self.device))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, d) float32 L2-normalised image embeddings."""
        return self._run(images, self._encode_images)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(m, d) float32 L2-normalised text embeddings."""
        return self._run(texts, self._encode_texts)


def _model_shape(open_clip: Any, arch: str, model: Any) -> tuple[int | None, int | None]:
    """Embedding size and input image side from open_clip's model config (or the model itself)."""
    config = open_clip.get_model_config(arch) if hasattr(open_clip, "get_model_config") else None
    config = config or {}
    dim = config.get("embed_dim")
    size = config.get("vision_cfg", {}).get("image_size") or getattr(
        getattr(model, "visual", None), "image_size", None
    )
    if isinstance(size, tuple | list):
        size = size[0]
    return (int(dim) if dim else None), (int(size) if size else None)


def load(target: str, device: str = "cpu", batch_size: int = 64) -> OpenCLIPModel:
    """Load an open_clip architecture with weights from a local checkpoint file."""
    arch, checkpoint = parse_target(target)
    if not checkpoint.is_file():
        raise ModelLoadError(
            f"open_clip checkpoint not found: {checkpoint}; give the path of a local .pt/.bin/.safetensors "
            f"file ({FORMAT_HINT})"
        )
    checkpoint = checkpoint.resolve()
    open_clip = require("open_clip", extra="openclip")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(checkpoint))
        tokenizer = open_clip.get_tokenizer(arch)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise ModelLoadError(
            f"cannot load open_clip model {arch!r} from {checkpoint}: {exc}; check that the architecture "
            "name matches the checkpoint (open_clip.list_models() lists the names)"
        ) from exc
    model = model.to(device).eval()
    dim, image_size = _model_shape(open_clip, arch, model)
    weights_sha = sha256_files([checkpoint])
    info = ModelInfo(
        name=arch,
        version=f"open_clip-{weights_sha[:12]}",
        dim=dim or 0,
        uri=f"open_clip:{arch}@{checkpoint}",
        weights_sha256=weights_sha,
        image_size=image_size,
    )
    adapter = OpenCLIPModel(
        model, preprocess, tokenizer, info, _transform_id(arch, preprocess), device, batch_size
    )
    if dim is None:  # architecture not in open_clip's config table: measure the output size once
        width = adapter.embed_texts([""]).shape[1]
        adapter.info = ModelInfo(**{**info.to_dict(), "dim": width})
    return adapter
