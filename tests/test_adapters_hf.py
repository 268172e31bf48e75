"""The hf: adapter against tiny random CLIP and SigLIP models saved to disk (no downloads)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from adapter_contract import check_adapter
from hf_models import make_clip_dir, make_siglip_dir
from vlmops.errors import ModelLoadError
from vlmops.models import load_model
from vlmops.models.base import l2_normalise, sha256_files
from vlmops.models.hf import HFModel
from vlmops.models.preprocess import to_rgb as to_rgb_on_white


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip_dir(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_siglip_dir(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def clip(clip_dir: Path) -> HFModel:
    return load_model(f"hf:{clip_dir}")


@pytest.fixture(scope="module")
def siglip(siglip_dir: Path) -> HFModel:
    return load_model(f"hf:{siglip_dir}", batch_size=2)


def _features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _reference(path: Path, images: list[Image.Image], texts: list[str], **tokenizer_kw):
    """Embeddings from a direct transformers call, L2-normalised."""
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    rgb = [to_rgb_on_white(im) for im in images]
    with torch.inference_mode():
        pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
        image_emb = _features(model.get_image_features(pixel_values=pixels)).numpy()
        tokens = tokenizer(texts, return_tensors="pt", truncation=True, **tokenizer_kw)
        keys = (
            ["input_ids"] if isinstance(model, transformers.SiglipModel) else ["input_ids", "attention_mask"]
        )
        text_emb = _features(model.get_text_features(**{k: tokens[k] for k in keys})).numpy()
    return l2_normalise(image_emb), l2_normalise(text_emb)


TEXTS = ["a photo of a cat", "a dog", "caption", "a very long caption of a photo of a cat of a dog of a cat"]


def test_clip_matches_transformers(clip: HFModel, clip_dir: Path, tiny_images: list[Image.Image]) -> None:
    # CLIP pools at the first end-of-text token, so the adapter's max_length padding must not matter
    image_ref, text_ref = _reference(clip_dir, tiny_images, TEXTS, padding=True)
    np.testing.assert_allclose(clip.embed_images(tiny_images), image_ref, atol=1e-5)
    np.testing.assert_allclose(clip.embed_texts(TEXTS), text_ref, atol=1e-5)


def test_siglip_matches_transformers(
    siglip: HFModel, siglip_dir: Path, tiny_images: list[Image.Image]
) -> None:
    image_ref, text_ref = _reference(siglip_dir, tiny_images, TEXTS, padding="max_length", max_length=16)
    np.testing.assert_allclose(siglip.embed_images(tiny_images), image_ref, atol=1e-5)
    np.testing.assert_allclose(siglip.embed_texts(TEXTS), text_ref, atol=1e-5)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_contract(name: str, request: pytest.FixtureRequest) -> None:
    check_adapter(request.getfixturevalue(name))


def test_info(clip: HFModel, siglip: HFModel, clip_dir: Path) -> None:
    sha = sha256_files(sorted(clip_dir.glob("*.safetensors")))
    assert clip.info.name == "tiny-clip"
    assert clip.info.version == f"hf-{sha[:12]}"
    assert clip.info.weights_sha256 == sha
    assert (clip.info.dim, clip.info.image_size, clip.info.licence) == (24, 32, "mit")
    assert clip.info.uri == f"hf:{clip_dir.resolve()}"
    assert (siglip.info.name, siglip.info.dim, siglip.info.licence) == ("tiny-siglip", 32, "unknown")
    assert clip.logit_scale == pytest.approx(math.exp(2.6592), rel=1e-5)
    assert siglip.logit_scale == pytest.approx(10.0, rel=1e-5)
    assert siglip.logit_bias is not None and clip.logit_bias is None


def test_transform_id_is_stable_and_tracks_preprocessing(
    clip: HFModel, siglip: HFModel, clip_dir: Path
) -> None:
    assert load_model(f"hf:{clip_dir}").transform_id == clip.transform_id
    assert clip.transform_id != siglip.transform_id


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"not found: .*nowhere.*save_pretrained"):
        load_model(f"hf:{tmp_path / 'nowhere'}")


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config.json in .*save_pretrained"):
        load_model(f"hf:{tmp_path}")


def test_unsupported_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(
        ModelLoadError,
        match=r"'bert'.*supports the dual encoders \['clip', 'siglip'\] and image-text-to-text",
    ):
        load_model(f"hf:{tmp_path}")


def test_missing_processor_is_an_error(clip_dir: Path, tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors"):
        shutil.copy(clip_dir / name, tmp_path / name)
    with pytest.raises(ModelLoadError, match=r"no image processor .*processor.save_pretrained"):
        load_model(f"hf:{tmp_path}")


def test_missing_weights_is_an_error(clip_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(clip_dir, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no weights"):
        load_model(f"hf:{tmp_path / 'm'}")


def test_partial_weights_are_an_error(clip_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    shutil.copytree(clip_dir, tmp_path / "m")
    state = load_file(clip_dir / "model.safetensors")
    del state["visual_projection.weight"]
    save_file(state, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"visual_projection.weight.*random"):
        load_model(f"hf:{tmp_path / 'm'}")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("foo:bar", r"unknown model scheme 'foo'.*hf:"),
        ("no-scheme", r"has no scheme.*hf:"),
        ("hf:", r"no scheme"),
    ],
)
def test_bad_uris(uri: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model(uri)
