"""load_runtime: torch, torch-int8, onnx and onnx-int8 of one model, the export cache, and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch import nn

from adapter_contract import TEXTS, sample_images
from onnx_helpers import save_tiny_model
from vlmops.config import get_settings
from vlmops.data.emoji import manifest_path
from vlmops.errors import DataError, ModelLoadError
from vlmops.export import runtimes as rt
from vlmops.models import load_model

EMOJI_DATA = get_settings().data_dir  # before any test points VLMOPS_HOME elsewhere


@pytest.fixture(scope="module")
def tiny_uri(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMOPS_HOME", str(tmp_path))
    get_settings(fresh=True)
    yield tmp_path
    monkeypatch.undo()
    get_settings(fresh=True)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


def test_torch_int8_quantizes_linears_and_stays_close(tiny_uri):
    fp32 = rt.load_runtime(tiny_uri, "torch")
    int8 = rt.load_runtime(tiny_uri, "torch-int8")
    assert int8.info.version == f"{fp32.info.version}+torch-int8"
    assert int8.transform_id == fp32.transform_id and int8.logit_scale == fp32.logit_scale
    head = int8.tower.head[1]
    assert "quantized.dynamic" in type(head).__module__
    assert isinstance(fp32.tower.head[1], nn.Linear)  # the source is not modified
    images = sample_images(10, seed=5)
    image_cos = _cosines(int8.embed_images(images), fp32.embed_images(images))
    text_cos = _cosines(int8.embed_texts(TEXTS), fp32.embed_texts(TEXTS))
    assert image_cos.min() > 0.99 and text_cos.min() > 0.85 and text_cos.mean() > 0.95, (image_cos, text_cos)
    assert np.abs(int8.embed_texts(TEXTS) - fp32.embed_texts(TEXTS)).max() > 1e-5  # really quantized


def test_torch_int8_vectors_depend_a_little_on_the_batch(tiny_uri):
    """Dynamic quantization scales activations per batch: documented, and small (not batch-invariant)."""
    int8 = rt.load_runtime(tiny_uri, "torch-int8")
    images = sample_images(6, seed=7)
    together = int8.embed_images(images)
    alone = np.concatenate([int8.embed_images([image]) for image in images])
    assert 1e-6 < np.abs(together - alone).max() < 0.01


def test_unknown_runtime_is_rejected(tiny_uri):
    with pytest.raises(ModelLoadError, match="unknown runtime 'tensorrt'; use one of: torch, torch-int8"):
        rt.load_runtime(tiny_uri, "tensorrt")


def test_onnx_runtime_exports_once_into_the_home_and_reuses_it_and_checks_onnx_uris(
    tiny_uri, home, monkeypatch
):
    model = rt.load_runtime(tiny_uri, "onnx")
    version = load_model(tiny_uri).info.version
    folder = home / "exports" / f"{version}-onnx"
    assert model.info.version == f"{version}+onnx" and (folder / "bundle.json").is_file()
    assert model.info.uri == f"onnx:{folder}"

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr("vlmops.models.onnx_export.export_bundle", no_export)
    again = rt.load_runtime(tiny_uri, "onnx", batch_size=8)
    assert again.batch_size == 8
    images = sample_images(3, seed=6)
    np.testing.assert_allclose(
        again.embed_images(images), load_model(tiny_uri).embed_images(images), atol=1e-4
    )

    # an onnx: URI is loaded as is, and must match the runtime asked for
    assert rt.load_runtime(f"onnx:{folder}", "onnx").runtime == "onnx"
    with pytest.raises(ModelLoadError, match="is a onnx bundle but runtime 'onnx-int8' was asked for"):
        rt.load_runtime(f"onnx:{folder}", "onnx-int8")
    with pytest.raises(ModelLoadError, match="runtime 'torch'"):
        rt.load_runtime(f"onnx:{folder}", "torch")


def test_auto_runs_a_builtin_model_under_onnx_once_its_export_is_cached(tiny_uri, home, monkeypatch):
    assert rt.resolve_runtime(tiny_uri) == "onnx-image"  # nothing exported yet: no export step at start-up
    exported = rt.load_runtime(tiny_uri, "onnx")
    assert rt.resolve_runtime(tiny_uri) == "onnx"

    def no_torch(*args, **kwargs):
        raise AssertionError("the torch model was loaded")

    monkeypatch.setattr("vlmops.models.builtin.load", no_torch)  # the cached export is found by its hash
    auto = rt.load_runtime(tiny_uri)
    assert auto.info.version == exported.info.version == f"{exported.info.version.split('+')[0]}+onnx"
    assert rt.resolve_runtime(tiny_uri, "torch") == "torch"  # asking for torch still gets torch


def test_onnx_int8_without_emoji_data_says_how_to_export(tiny_uri, home, monkeypatch):
    monkeypatch.setattr("vlmops.data.emoji.manifest_path", lambda: home / "missing.parquet")
    with pytest.raises(DataError, match=r"vlmops export --model .* --int8 --data DATA"):
        rt.load_runtime(tiny_uri, "onnx-int8")
    assert not (home / "exports").exists() or not any((home / "exports").iterdir())


@pytest.mark.emoji
@pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")
def test_onnx_int8_calibrates_on_emoji_train_and_gates_on_val(tiny_uri, home, monkeypatch):
    """Plumbing only: a random tiny model's top-1 is noise, so the gate's limit is lifted here."""
    (home / "data").symlink_to(EMOJI_DATA)
    monkeypatch.setattr(rt, "AUTO_CALIBRATION_SIZE", 32)
    monkeypatch.setattr(rt, "AUTO_MAX_DROP", 1.0)
    model = rt.load_runtime(tiny_uri, "onnx-int8")
    meta = json.loads((model.folder / "bundle.json").read_text())
    assert model.runtime == "onnx-int8" and "+onnx-int8-" in model.info.version
    assert meta["quantization"]["image"]["calibration"]["n_images"] == 32
    assert meta["gate"]["split"] == "val" and meta["gate"]["n"] > 100 and meta["gate"]["passed"]


def test_onnx_image_runs_the_image_tower_under_onnx_runtime_with_the_same_version_and_vectors(tiny_uri, home):
    from vlmops.models.builtin import EmojiLit

    torch_model = rt.load_runtime(tiny_uri, "torch")
    fast = rt.load_runtime(tiny_uri, "onnx-image", threads=1)
    assert fast.runtime == "onnx-image" and isinstance(fast, EmojiLit)
    assert fast.info == torch_model.info  # same vectors, so the same version (cache keys, calibrations)
    images = sample_images(9, seed=11)
    np.testing.assert_allclose(fast.embed_images(images), torch_model.embed_images(images), atol=1e-5)
    assert fast.embed_images([]).shape == (0, torch_model.info.dim)
    np.testing.assert_array_equal(fast.embed_texts(TEXTS), torch_model.embed_texts(TEXTS))  # torch text tower
    pixels = fast.pixels(images[:2]).requires_grad_(True)
    fast.embed_pixels(pixels).sum().backward()  # gradients still flow through the torch tower
    assert pixels.grad is not None and float(pixels.grad.abs().sum()) > 0
    assert not (home / "exports").exists()  # exported in memory: nothing cached, nothing to go stale


def test_auto_picks_onnx_image_for_builtin_lit_models_only(tiny_uri, home):
    assert rt.resolve_runtime(tiny_uri) == "onnx-image"
    assert rt.resolve_runtime("builtin:emoji-lit") == "onnx-image"
    assert rt.resolve_runtime("builtin:emoji-captioner") == "torch"  # generative: no image-tower runtime
    assert rt.resolve_runtime(tiny_uri, "torch") == "torch"


def test_onnx_image_refuses_a_tower_that_does_not_match_torch(tiny_uri, monkeypatch):
    monkeypatch.setattr("vlmops.models.onnx_image.PARITY_ATOL", -1.0)  # any difference is too much
    with pytest.raises(ModelLoadError, match=r"differs from torch by .* serve it with --runtime torch"):
        rt.load_runtime(tiny_uri, "onnx-image")


def test_onnx_image_needs_a_builtin_lit_model(fake_model):
    from vlmops.models.onnx_image import onnx_images

    with pytest.raises(ModelLoadError, match=r"supports the built-in LiT models .* use runtime torch"):
        onnx_images(fake_model())


def test_importing_vlmops_turns_onnx_runtime_telemetry_off_unless_the_user_chose():
    """ONNX Runtime >= 1.29 uploads telemetry on Linux (a DNS lookup from a background thread was caught
    by bench/serve_peers.py's strace); vlmops allows no network but loopback at run time."""
    import os
    import subprocess
    import sys

    code = "import os, vlmops; print(os.environ.get('ORT_DISABLE_TELEMETRY'))"
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    env["ORT_DISABLE_TELEMETRY"] = "0"  # an explicit choice is kept
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
