"""Export the built-in model to an ONNX bundle: fp32, or int8 quantized by ONNX Runtime.

int8 means: the image tower's convolutions get static QDQ quantization (uint8 activations calibrated on
real images, int8 per-channel weights); the text tower stays fp32 unless `Int8Recipe.text` asks for
dynamic int8 MatMuls. See `Int8Recipe` for what is quantized and why, and bench/RESULTS.md for what it
costs and buys.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from vlmops.errors import DataError, ModelLoadError, VlmopsError
from vlmops.models import onnx as bundle
from vlmops.models.base import VLM, sha256_files
from vlmops.models.onnx_quant import Int8Recipe
from vlmops.models.preprocess import pixel_array

SUPPORTED = "builtin:emoji-lit and builtin:emoji-lit@FOLDER (models trained by `vlmops train`)"
OPSET = 20  # the first opset with a Gelu op: one node instead of five, and one float island in int8
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
PARITY_TEXTS = ("an emoji of grinning face", "a dog", "", "keycap: #", "an emoji of a red heart " * 12)


class GateFailed(VlmopsError):
    """The exported model lost more accuracy than allowed; `gate` holds the measurement."""

    def __init__(self, gate: dict):
        self.gate = gate
        super().__init__(
            f"export refused: zero-shot top-1 {gate['export_top1']:.4f} vs {gate['reference_top1']:.4f} "
            f"for the source (drop {100 * gate['drop']:.2f} pp > allowed {100 * gate['max_drop']:.2f} pp; "
            f"image cosine mean {gate['mean_cosine']:.4f}, min {gate['min_cosine']:.4f})"
        )


def exportable_tower(model: VLM):
    """The torch image tower of `model`, or a ModelLoadError naming what can be exported."""
    from vlmops.models.builtin import EmojiLit

    if not isinstance(model, EmojiLit):
        raise ModelLoadError(
            f"cannot export {model.info.uri} ({type(model).__name__}) to ONNX: "
            f"only {SUPPORTED} can be exported"
        )
    return model.tower.eval()


def export_bundle(
    model: VLM,
    out: Path,
    int8: bool = False,
    calibration_images: Sequence[Image.Image] | None = None,
    *,
    recipe: Int8Recipe = Int8Recipe(),
    check: Callable[[VLM], dict] | None = None,
    force: bool = False,
    progress: bool = False,
) -> dict:
    """Write `model` as an ONNX bundle folder `out` (atomically) and return its bundle.json contents.

    `check(exported)` is the accuracy gate: it measures the staged bundle and returns a dict with
    `passed`. A failed gate raises GateFailed and leaves nothing at `out`, unless `force`.
    """
    tower = exportable_tower(model)
    if int8 and not calibration_images:
        raise DataError("an int8 export needs calibration images: pass --data (e.g. emoji) with images")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out} already exists and is not empty; choose a new folder or delete it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the bundle is an ordinary folder
    try:
        meta = _write_bundle(model, tower, staging, int8, calibration_images, recipe, progress)
        if check is not None:
            gate = check(bundle.OnnxVLM(staging, meta))
            meta["gate"] = {**gate, "forced": bool(force and not gate["passed"])}
            if not gate["passed"] and not force:
                raise GateFailed(meta["gate"])
        (staging / bundle.BUNDLE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        os.rename(staging, out)  # replaces an empty folder; fails if `out` filled up meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


def _write_bundle(model, tower, folder: Path, int8: bool, images, recipe: Int8Recipe, progress: bool) -> dict:
    """Export both towers (and quantize them) into `folder`; returns the metadata."""
    from vlmops import __version__

    runtime = "onnx-int8" if int8 else "onnx"
    size = tower.config.image_size
    text = model.text_tower
    sample = list(images or [])[:8] or _synthetic_images(size)
    _export_image(tower, folder / bundle.IMAGE_FILE, pixel_array(sample[:2], size))
    _export_text(text, folder / bundle.TEXT_FILE)
    for name in TOKENIZER_FILES:
        if (text.path / name).is_file():
            shutil.copy2(text.path / name, folder / name)
    quantization = None
    if int8:
        from vlmops.models.onnx_quant import quantize_image, quantize_text

        quantization = {"image": quantize_image(folder / bundle.IMAGE_FILE, images, size, recipe, progress)}
        quantization["text"] = quantize_text(folder / bundle.TEXT_FILE) if recipe.text else None
        quantization["recipe"] = recipe.to_dict()
    info = model.info
    digest = sha256_files([folder / bundle.IMAGE_FILE, folder / bundle.TEXT_FILE])
    # int8 vectors depend on the recipe and the calibration images: the weights' hash tells them apart
    tag = f"{runtime}-{digest[:8]}" if int8 else runtime
    meta = {
        "format": bundle.BUNDLE_FORMAT,
        "name": info.name,
        "version": f"{info.version}+{tag}",
        "runtime": runtime,
        "source": {
            "uri": info.uri,
            "version": info.version,
            "weights_sha256": info.weights_sha256,
            "data_version": ((getattr(model, "card", None) or {}).get("data") or {}).get("train_version"),
        },
        "dim": info.dim,
        "image_size": size,
        "logit_scale": float(model.logit_scale),
        "transform_id": model.transform_id,
        "weights_sha256": digest,
        "licence": info.licence,
        "max_length": text.max_length,
        "pad_token": text.tokenizer.pad_token,
        "opset": OPSET,
        "quantization": quantization,
        "gate": None,
        "vlmops_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (folder / bundle.BUNDLE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    meta["parity"] = parity(model, bundle.OnnxVLM(folder, meta), sample)
    worst = max(meta["parity"]["image_max_abs_diff"], meta["parity"]["text_max_abs_diff"])
    if not int8 and worst > 1e-3:
        raise ModelLoadError(
            f"the fp32 ONNX export does not match the torch model ({meta['parity']}); "
            "report this with your torch and onnxruntime versions"
        )
    return meta


def parity(reference: VLM, exported: VLM, images: Sequence[Image.Image]) -> dict:
    """Largest absolute difference and smallest cosine between two models' vectors on a few inputs."""
    result = {"n_images": len(images), "n_texts": len(PARITY_TEXTS)}
    for kind, a, b in (
        ("image", reference.embed_images(images), exported.embed_images(images)),
        ("text", reference.embed_texts(PARITY_TEXTS), exported.embed_texts(PARITY_TEXTS)),
    ):
        result[f"{kind}_max_abs_diff"] = float(np.abs(a - b).max())
        result[f"{kind}_min_cosine"] = float((a * b).sum(axis=1).min())
    return result


def _synthetic_images(size: int, n: int = 4) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _export_image(tower, path: Path | BinaryIO, example: np.ndarray) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower,
            (torch.from_numpy(example),),
            path if hasattr(path, "write") else str(path),
            input_names=["pixels"],
            output_names=["embedding"],
            dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def _export_text(text, path: Path) -> None:
    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            states = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    tokens = text.tokenizer(["an emoji of a cat", "a dog"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            MeanPooled(text.model).eval(),  # a wrapper left in train mode would put MiniLM in it too
            tuple(tokens[name] for name in names),
            str(path),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**axes, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
