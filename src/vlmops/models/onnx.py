"""ONNX bundles of the built-in model, run by ONNX Runtime with numpy, Pillow and `tokenizers` (no torch).

A bundle is a folder written by `vlmops export` (see `vlmops.models.onnx_export`): ``image.onnx`` maps
(n, 3, s, s) pixels in [-1, 1] to unit vectors, ``text.onnx`` maps token ids to mean-pooled MiniLM
states, the tokenizer files sit next to them, and ``bundle.json`` says what the bundle is. Load it as
``load_model("onnx:/path/bundle")``.

An int8 bundle gives (slightly) different vectors from its source, so its version differs:
``<source version>+onnx-int8-<first 8 hex of its weights' sha256>`` (recipe and calibration change the
vectors too). The fp32 bundle is ``<source version>+onnx``. Both keep the source's ``transform_id``:
the preprocessing is the same.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from vlmops.errors import MissingDependencyError, ModelLoadError
from vlmops.models.base import ModelInfo, batched, l2_normalise, sha256_files
from vlmops.models.preprocess import pixel_array

BUNDLE_FILE, IMAGE_FILE, TEXT_FILE = "bundle.json", "image.onnx", "text.onnx"
TOKENIZER_FILE = "tokenizer.json"
BUNDLE_FORMAT = 1
REQUIRED_KEYS = ("name", "version", "dim", "image_size", "logit_scale", "transform_id", "runtime")


def _import(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"ONNX bundles need the package {module} ({exc}); it is a vlmops dependency: "
            "reinstall vlmops (pip install -e .)"
        ) from exc


def default_threads() -> int:
    """Intra-op threads per session: every core, at most 4 (small models gain nothing beyond)."""
    return max(1, min(4, os.cpu_count() or 1))


def read_bundle(folder: Path) -> dict:
    """The parsed bundle.json of `folder`, checked for the keys a loader needs."""
    path = folder / BUNDLE_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{folder} is not an ONNX bundle (no {BUNDLE_FILE}); create one with "
            "`vlmops export --model builtin:emoji-lit --format onnx --out DIR`"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); re-export the bundle") from exc
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing or meta.get("format") != BUNDLE_FORMAT:
        raise ModelLoadError(
            f"{path} lacks {missing or 'a supported format'} (bundle format {meta.get('format')!r}, "
            f"this vlmops reads {BUNDLE_FORMAT}); re-export the bundle with this vlmops"
        )
    for name in (IMAGE_FILE, TEXT_FILE, TOKENIZER_FILE):
        if not (folder / name).is_file():
            raise ModelLoadError(f"ONNX bundle {folder} is missing {name}; re-export it")
    return meta


def session(path: Path | bytes, threads: int | None = None):
    """A CPU ONNX Runtime session (of a file, or a serialised model) with all graph optimisations and
    `threads` intra-op threads."""
    ort = _import("onnxruntime")
    ort.disable_telemetry_events()  # and ORT_DISABLE_TELEMETRY, set by `import vlmops`: no uploads
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxVLM:
    """The VLM protocol over an ONNX bundle: image tower always loaded, text tower on first use."""

    def __init__(self, folder: Path, meta: dict, batch_size: int = 64, threads: int | None = None):
        self.folder = folder
        self.bundle = meta
        self.batch_size = batch_size
        self.threads = threads
        self.logit_scale = float(meta["logit_scale"])
        self.image_size = int(meta["image_size"])
        self.info = ModelInfo(
            name=meta["name"],
            version=meta["version"],
            dim=int(meta["dim"]),
            uri=f"onnx:{folder}",
            weights_sha256=sha256_files([folder / IMAGE_FILE, folder / TEXT_FILE]),
            licence=meta.get("licence", "unknown"),
            image_size=self.image_size,
        )
        self._transform_id = str(meta["transform_id"])
        self._image = session(folder / IMAGE_FILE, threads)
        self._text = None
        self._tokenizer = None

    @property
    def transform_id(self) -> str:
        """The source model's preprocessing identifier (the bundle preprocesses identically)."""
        return self._transform_id

    @property
    def runtime(self) -> str:
        """`onnx` (fp32) or `onnx-int8`."""
        return str(self.bundle["runtime"])

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, d) float32 unit vectors."""
        chunks = [np.zeros((0, self.info.dim), dtype=np.float32)]
        for batch in batched(list(images), self.batch_size):
            pixels = pixel_array(batch, self.image_size)
            chunks.append(self._image.run(None, {"pixels": pixels})[0])
        return l2_normalise(np.concatenate(chunks))

    def embed_pixels_array(self, pixels: np.ndarray) -> np.ndarray:
        """(n, d) unit vectors of already preprocessed pixels (n, 3, s, s) in [-1, 1] (benchmarks)."""
        return l2_normalise(self._image.run(None, {"pixels": np.asarray(pixels, dtype=np.float32)})[0])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(m, d) float32 unit vectors from the mean-pooled MiniLM graph."""
        chunks = [np.zeros((0, self.info.dim), dtype=np.float32)]
        for batch in batched(list(texts), self.batch_size):
            chunks.append(self._run_text(list(batch)))
        return l2_normalise(np.concatenate(chunks))

    def _run_text(self, batch: list[str]) -> np.ndarray:
        if self._text is None:
            tokenizers = _import("tokenizers")
            tokenizer = tokenizers.Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
            tokenizer.enable_truncation(int(self.bundle.get("max_length", 64)))
            pad = str(self.bundle.get("pad_token", "[PAD]"))
            tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad), pad_token=pad)
            self._tokenizer = tokenizer
            self._text = session(self.folder / TEXT_FILE, self.threads)
        encoded = self._tokenizer.encode_batch(batch)
        feed = {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
        return self._text.run(None, feed)[0]


def training_data_version(target: str) -> str | None:
    """The training-data version of the bundle's source model, as its bundle.json records it."""
    return (read_bundle(Path(target).expanduser()).get("source") or {}).get("data_version")


def load(target: str, batch_size: int = 64, threads: int | None = None, device: str = "cpu") -> OnnxVLM:
    """Load the ONNX bundle in folder `target` (CPU only)."""
    if device != "cpu":
        raise ModelLoadError(f"ONNX bundles run on the CPU; got device={device!r}: drop the option")
    folder = Path(target).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(
            f"ONNX bundle folder {folder} does not exist; create it with "
            "`vlmops export --model builtin:emoji-lit --format onnx --out DIR`"
        )
    return OnnxVLM(folder.resolve(), read_bundle(folder), batch_size=batch_size, threads=threads)
