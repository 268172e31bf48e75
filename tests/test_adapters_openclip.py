"""The open_clip: adapter against a fake `open_clip` module (open_clip_torch needs torchvision)."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapter_contract import check_adapter
from vlmops.errors import MissingDependencyError, ModelLoadError
from vlmops.models import load_model
from vlmops.models.base import l2_normalise, sha256_files
from vlmops.models.openclip import OpenCLIPModel, parse_target
from vlmops.models.preprocess import to_rgb as to_rgb_on_white

SIDE, DIM, CONTEXT = 8, 16, 12


class TinyCLIP(torch.nn.Module):
    """open_clip's model interface in miniature: encode_image, encode_text, logit_scale."""

    def __init__(self) -> None:
        super().__init__()
        self.image_proj = torch.nn.Linear(3 * SIDE * SIDE, DIM)
        self.token_embedding = torch.nn.Embedding(256, DIM)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_proj(pixels.flatten(1))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens).mean(dim=1)


def _preprocess(image: Image.Image) -> torch.Tensor:
    pixels = np.asarray(image.convert("RGB").resize((SIDE, SIDE)), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)


def _tokenize(texts: list[str]) -> torch.Tensor:
    tokens = torch.zeros((len(texts), CONTEXT), dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [*text.encode()[: CONTEXT - 1], 255]
        tokens[row, : len(ids)] = torch.tensor(ids)
    return tokens


def _fake_open_clip() -> types.ModuleType:
    """A module with the three open_clip functions the adapter uses."""
    module = types.ModuleType("open_clip")

    def create_model_and_transforms(arch: str, pretrained: str | None = None, **kw):
        if arch != "Tiny-ViT":
            raise RuntimeError(f"Model config for {arch} not found.")
        model = TinyCLIP()
        model.load_state_dict(torch.load(pretrained, weights_only=True))
        return model, _preprocess, _preprocess

    module.create_model_and_transforms = create_model_and_transforms
    module.get_tokenizer = lambda arch: _tokenize
    module.get_model_config = lambda arch: {"embed_dim": DIM, "vision_cfg": {"image_size": SIDE}}
    return module


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(TinyCLIP().state_dict(), path)
    return path


@pytest.fixture
def fake_open_clip(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = _fake_open_clip()
    monkeypatch.setitem(sys.modules, "open_clip", module)
    return module


@pytest.fixture
def model(fake_open_clip: types.ModuleType, checkpoint: Path) -> OpenCLIPModel:
    return load_model(f"open_clip:Tiny-ViT@{checkpoint}", batch_size=2)


def test_contract(model: OpenCLIPModel) -> None:
    check_adapter(model)


def test_matches_direct_calls(model: OpenCLIPModel, checkpoint: Path, tiny_images: list[Image.Image]) -> None:
    reference = TinyCLIP()
    reference.load_state_dict(torch.load(checkpoint, weights_only=True))
    texts = ["a cat", "a photo of a dog", ""]
    with torch.no_grad():
        pixels = torch.stack([_preprocess(to_rgb_on_white(im)) for im in tiny_images])
        image_ref = l2_normalise(reference.encode_image(pixels).numpy())
        text_ref = l2_normalise(reference.encode_text(_tokenize(texts)).numpy())
    np.testing.assert_allclose(model.embed_images(tiny_images), image_ref, atol=1e-6)
    np.testing.assert_allclose(model.embed_texts(texts), text_ref, atol=1e-6)


def test_info(model: OpenCLIPModel, checkpoint: Path) -> None:
    sha = sha256_files([checkpoint])
    assert (model.info.name, model.info.dim, model.info.image_size) == ("Tiny-ViT", DIM, SIDE)
    assert model.info.version == f"open_clip-{sha[:12]}"
    assert model.info.weights_sha256 == sha
    assert model.info.uri == f"open_clip:Tiny-ViT@{checkpoint.resolve()}"
    assert model.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert model.transform_id.startswith("open_clip-Tiny-ViT-")


def test_dim_measured_when_config_unknown(fake_open_clip: types.ModuleType, checkpoint: Path) -> None:
    fake_open_clip.get_model_config = lambda arch: None
    model = load_model(f"open_clip:Tiny-ViT@{checkpoint}")
    assert model.info.dim == DIM
    assert model.embed_texts([]).shape == (0, DIM)


def test_transform_id_ignores_memory_addresses(fake_open_clip: types.ModuleType, checkpoint: Path) -> None:
    first = load_model(f"open_clip:Tiny-ViT@{checkpoint}")
    original = fake_open_clip.create_model_and_transforms

    def with_new_preprocess(arch: str, pretrained: str | None = None, **kw):
        model, _, _ = original(arch, pretrained)
        return model, None, lambda image: _preprocess(image)

    fake_open_clip.create_model_and_transforms = with_new_preprocess
    second = load_model(f"open_clip:Tiny-ViT@{checkpoint}")
    assert "0x" not in second.transform_id
    assert load_model(f"open_clip:Tiny-ViT@{checkpoint}").transform_id == second.transform_id
    assert first.transform_id != second.transform_id


@pytest.mark.parametrize(
    "target",
    ["ViT-B-32", "@/models/vit.pt", "ViT-B-32@", "ViT-B-32 @  "],
    ids=["no-at", "no-arch", "no-ckpt", "blank"],
)
def test_bad_target(target: str) -> None:
    with pytest.raises(ModelLoadError, match=r"bad open_clip target .*ARCH@CHECKPOINT"):
        parse_target(target)


def test_missing_checkpoint(fake_open_clip: types.ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"checkpoint not found: .*missing\.pt"):
        load_model(f"open_clip:Tiny-ViT@{tmp_path / 'missing.pt'}")


def test_unknown_architecture(fake_open_clip: types.ModuleType, checkpoint: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"'No-Such-Arch'.*list_models"):
        load_model(f"open_clip:No-Such-Arch@{checkpoint}")


def test_missing_package(monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'vlmops\[openclip\]'"):
        load_model(f"open_clip:Tiny-ViT@{checkpoint}")
