"""Adapter for CLIP and SigLIP dual encoders saved locally with transformers' ``save_pretrained``.

URI: ``hf:/path/to/dir``. A directory holding a generative image-text-to-text model (LLaVA, Qwen2-VL,
Idefics3/SmolVLM, BLIP...) goes to `vlmops.models.hf_generative` instead. Loading is offline
(``local_files_only=True``); the directory must hold the weights, ``config.json``, an image processor
and a tokenizer. Missing pieces are errors, never random defaults.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmops.errors import ModelLoadError
from vlmops.models import hf_generative
from vlmops.models.base import ModelInfo, embed_in_batches, sha256_files
from vlmops.models.hf_dir import SAVE_HINT, check_loading_report
from vlmops.models.hf_dir import read_licence as _read_licence
from vlmops.models.preprocess import TO_RGB_ID, to_rgb

# model_type -> tokenizer outputs the text tower gets. SigLIP was trained without a text attention
# mask (its own tokenizer returns input_ids only) and with text padded to max_length.
SUPPORTED: dict[str, tuple[str, ...]] = {"clip": ("input_ids", "attention_mask"), "siglip": ("input_ids",)}
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")


def _features(output: Any) -> torch.Tensor:
    """Projected features from get_*_features: a tensor (transformers 4) or a ModelOutput (5)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"unexpected output from transformers feature call: {type(output).__name__}")


class HFModel:
    """A transformers CLIP/SigLIP model behind the `VLM` protocol."""

    def __init__(
        self,
        model: torch.nn.Module,
        image_processor: Any,
        tokenizer: Any,
        info: ModelInfo,
        text_inputs: tuple[str, ...],
        max_length: int,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        self.model = model
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.info = info
        self.text_inputs = text_inputs
        self.max_length = max_length
        self.device = device
        self.batch_size = batch_size
        self.logit_scale = float(model.logit_scale.detach().exp().reshape(-1)[0])
        bias = getattr(model, "logit_bias", None)
        self.logit_bias = None if bias is None else float(bias.detach().reshape(-1)[0])
        config = json.dumps(image_processor.to_dict(), sort_keys=True, default=str)
        digest = hashlib.sha256(config.encode()).hexdigest()[:12]
        self._transform_id = f"hf-{TO_RGB_ID}-{type(image_processor).__name__}-{digest}"

    @property
    def transform_id(self) -> str:
        """Image processor class and a hash of its configuration."""
        return self._transform_id

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, d) float32 L2-normalised image embeddings."""
        return embed_in_batches(images, self.batch_size, self._encode_images, self.info.dim)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(m, d) float32 L2-normalised text embeddings."""
        return embed_in_batches(texts, self.batch_size, self._encode_texts, self.info.dim)

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, 3, H, W) float tensor in [0, 1]: the image processor's output with its normalisation undone."""
        if len(images) == 0:
            size = self.info.image_size or 0
            return torch.zeros((0, 3, size, size))
        values = self._pixel_values(list(images))
        scale, mean, std = self._pixel_space()
        return ((values * std + mean) / scale).clamp(0.0, 1.0)

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, d) unit vectors of [0, 1] pixels, normalised as the image processor does; differentiable."""
        scale, mean, std = self._pixel_space()
        values = (pixels * scale - mean.to(pixels.device)) / std.to(pixels.device)
        features = _features(self.model.get_image_features(pixel_values=values.to(self.device)))
        return torch.nn.functional.normalize(features, dim=-1)

    def _pixel_space(self) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(scale, mean, std) with pixel_values = (x01 * scale - mean) / std for x01 in [0, 1]."""
        proc = self.image_processor
        rescale = float(proc.rescale_factor) if getattr(proc, "do_rescale", False) else 1.0
        if getattr(proc, "do_normalize", False):
            mean = torch.tensor(proc.image_mean, dtype=torch.float32).reshape(1, -1, 1, 1)
            std = torch.tensor(proc.image_std, dtype=torch.float32).reshape(1, -1, 1, 1)
        else:
            mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
        return 255.0 * rescale, mean, std

    def _pixel_values(self, batch: list[Image.Image]) -> torch.Tensor:
        rgb = [to_rgb(im) for im in batch]
        return self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]

    def _encode_images(self, batch: list[Image.Image]) -> torch.Tensor:
        pixels = self._pixel_values(batch)
        return _features(self.model.get_image_features(pixel_values=pixels.to(self.device)))

    def _encode_texts(self, batch: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            batch, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        inputs = {k: v.to(self.device) for k, v in tokens.items() if k in self.text_inputs}
        return _features(self.model.get_text_features(**inputs))


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # 'org/name', as on the Hugging Face Hub


def hub_id_hint(target: str) -> str:
    """Why `hf:ORG/NAME` fails (hub ids are not downloaded) and how to point at a local folder instead."""
    folder = f"./models/{target.rsplit('/', 1)[-1]}"
    return (
        f"hf:{target} looks like a Hugging Face Hub id, and vlmops does not download models (no network "
        f"at run time); hf: takes a local folder saved with save_pretrained. Where the hub is reachable, run "
        f'`python -c "from transformers import AutoModel, AutoProcessor; '
        f"AutoModel.from_pretrained('{target}').save_pretrained('{folder}'); "
        f"AutoProcessor.from_pretrained('{target}').save_pretrained('{folder}')\"`, "
        f"copy the folder here and pass hf:{folder} (or its absolute path)"
    )


def _check_dir(path: Path) -> tuple[list[Path], str]:
    """Weight files and model_type of a save_pretrained directory, or a ModelLoadError naming the fix."""
    if not path.is_dir():
        raise ModelLoadError(f"hf model directory not found: {path}; {SAVE_HINT}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"no config.json in {path}: not a transformers model directory; {SAVE_HINT}")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ModelLoadError(
            f"unreadable {config_file}: {exc}; re-save the model with save_pretrained"
        ) from exc
    if model_type not in SUPPORTED and not hf_generative.is_generative(model_type):
        raise ModelLoadError(
            f"{path} holds a {model_type!r} model; the hf adapter supports the dual encoders "
            f"{sorted(SUPPORTED)} and image-text-to-text models (LLaVA, Qwen2-VL, Idefics3, BLIP...): "
            "use such a checkpoint, or convert the model to ONNX and load it with onnx:"
        )
    weights = sorted(p for pattern in WEIGHT_GLOBS for p in path.glob(pattern))
    if not weights:
        raise ModelLoadError(f"no weights (*.safetensors or pytorch_model*.bin) in {path}; {SAVE_HINT}")
    if not any((path / f).is_file() for f in IMAGE_PROCESSOR_FILES):
        raise ModelLoadError(f"no image processor (preprocessor_config.json) in {path}; {SAVE_HINT}")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"no tokenizer files (tokenizer.json or vocab.json) in {path}; {SAVE_HINT}")
    return weights, model_type


def load(
    target: str, device: str = "cpu", batch_size: int | None = None
) -> HFModel | hf_generative.HFGenerativeModel:
    """Load a model saved with save_pretrained from a local directory: a CLIP/SigLIP dual encoder, or
    a generative image-text-to-text model (see `vlmops.models.hf_generative`)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    path = Path(target).expanduser().resolve()
    if not path.exists() and _HUB_ID.fullmatch(target):
        raise ModelLoadError(hub_id_hint(target))
    weights, model_type = _check_dir(path)
    if model_type not in SUPPORTED:
        return hf_generative.load(path, model_type, weights, device, batch_size or 8)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        model, report = AutoModel.from_pretrained(
            path, config=config, local_files_only=True, output_loading_info=True
        )
        image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"cannot load hf model from {path}: {exc}; {SAVE_HINT}") from exc
    check_loading_report(report, path)
    model = model.to(device).eval()
    vision = config.vision_config
    dim = getattr(config, "projection_dim", None) if model_type == "clip" else vision.hidden_size
    max_length = int(config.text_config.max_position_embeddings)
    if 0 < getattr(tokenizer, "model_max_length", 0) < max_length:
        max_length = int(tokenizer.model_max_length)
    weights_sha = sha256_files(weights)
    info = ModelInfo(
        name=path.name,
        version=f"hf-{weights_sha[:12]}",
        dim=int(dim),
        uri=f"hf:{path}",
        weights_sha256=weights_sha,
        licence=_read_licence(path),
        image_size=int(vision.image_size),
    )
    return HFModel(
        model, image_processor, tokenizer, info, SUPPORTED[model_type], max_length, device, batch_size or 64
    )
