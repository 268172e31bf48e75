"""One model, four ways to run it: `load_runtime(uri, runtime)` for torch / torch-int8 / onnx / onnx-int8.

The default runtime, ``auto``, is the model's own: an ``onnx:DIR`` bundle's runtime as its bundle.json
records it (``onnx`` or ``onnx-int8``), ``torch`` for any other URI.

- ``torch``: the model as `load_model` gives it.
- ``torch-int8``: torch dynamic int8 quantization (per-channel weights) of every ``nn.Linear``. That
  covers the whole MiniLM text tower but only the *head* of the built-in CNN image tower (its
  convolutions stay fp32), so image embedding is no faster, and the text vectors move (cosine to fp32
  about 0.98, as low as 0.92); it is the cheapest baseline, not the fast path. Activations are
  quantized with a scale per batch, so a vector depends slightly (~1e-3) on its batch-mates, and
  there are no gradients through the quantized layers (white-box attacks need runtime torch).
- ``onnx`` / ``onnx-int8``: an ONNX bundle run by ONNX Runtime. A ``onnx:DIR`` URI is loaded as is;
  any other URI is exported once into ``VLMOPS_HOME/exports/<version>-<runtime>`` and reused. The int8
  export is calibrated on the emoji train split and must pass the accuracy gate on its val split.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from vlmops.errors import DataError, ModelLoadError
from vlmops.models import load_model, parse_uri
from vlmops.models.base import VLM, ModelInfo

RUNTIMES = ("torch", "torch-int8", "onnx", "onnx-int8")
AUTO = "auto"
AUTO_CALIBRATION_SIZE = 256
AUTO_MAX_DROP = 0.01


def resolve_runtime(uri: str, runtime: str = AUTO) -> str:
    """The runtime `load_runtime` uses for `uri`: `runtime` itself, or for ``auto`` the model's own."""
    if runtime not in (AUTO, *RUNTIMES):
        raise ModelLoadError(f"unknown runtime {runtime!r}; use one of: {', '.join((*RUNTIMES, AUTO))}")
    parsed = parse_uri(uri)
    if parsed.scheme != "onnx":
        return "torch" if runtime == AUTO else runtime
    from vlmops.models.onnx import read_bundle

    meta = read_bundle(Path(parsed.target).expanduser())
    if runtime not in (AUTO, meta["runtime"]):
        source = meta.get("source", {}).get("uri")
        raise ModelLoadError(
            f"{uri} is a {meta['runtime']} bundle but runtime {runtime!r} was asked for; leave the runtime "
            f"out (it is read from the bundle), or load the source model ({source}) under {runtime!r}"
        )
    return meta["runtime"]


def load_runtime(uri: str, runtime: str = AUTO, progress: bool = False, **options) -> VLM:
    """Load the model named by `uri` under `runtime` (``auto`` or one of RUNTIMES); options go to it."""
    runtime = resolve_runtime(uri, runtime)
    if parse_uri(uri).scheme == "onnx":
        return load_model(uri, **options)
    if runtime == "torch":
        return load_model(uri, **options)
    if runtime == "torch-int8":
        return torch_int8(load_model(uri, **options))
    return _exported(uri, runtime, progress, **options)


def torch_int8(model: VLM) -> VLM:
    """A copy of a built-in model with torch dynamic int8 Linear layers in both towers (see module doc)."""
    import copy

    import torch
    from torch import nn

    from vlmops.models.builtin import EmojiLit

    if not isinstance(model, EmojiLit):
        raise ModelLoadError(
            f"runtime torch-int8 supports the built-in models only, not {model.info.uri}; use runtime torch"
        )
    text = copy.copy(model.text_tower)
    spec = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}  # per-tensor: text cos 0.95 -> 0.98
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensors in favour of torchao
        tower = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model.tower), spec, torch.qint8)
        text.model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(text.model), spec, torch.qint8)
    info = model.info
    info = ModelInfo(**{**info.to_dict(), "version": f"{info.version}+torch-int8"})
    return EmojiLit(
        tower, model.logit_scale, info, text_tower=text, batch_size=model.batch_size, card=model.card
    )


def export_dir(version: str, runtime: str) -> Path:
    """Where `load_runtime` keeps the automatic ONNX export of model `version`."""
    from vlmops.config import get_settings

    return get_settings().home / "exports" / f"{version}-{runtime}"


def _exported(uri: str, runtime: str, progress: bool, **options) -> VLM:
    """Load the cached export of `uri` for `runtime`, exporting it first when missing."""
    from vlmops.models import onnx

    source = load_model(uri)  # for its version; serve `onnx:DIR` to keep torch out of the process
    folder = export_dir(source.info.version, runtime)
    if not (folder / onnx.BUNDLE_FILE).is_file():
        try:
            _export(source, folder, runtime == "onnx-int8", progress)
        except (OSError, DataError):  # another process finished the same export first
            if not (folder / onnx.BUNDLE_FILE).is_file():
                raise
    return onnx.load(str(folder), **options)


def _export(source: VLM, folder: Path, int8: bool, progress: bool) -> None:
    from vlmops.models.export_gate import run_gate, sample_images
    from vlmops.models.onnx_export import GateFailed, export_bundle

    if not int8:
        export_bundle(source, folder, progress=progress)
        return
    from vlmops.data.emoji import load_emoji_manifest, manifest_path
    from vlmops.evaluate.task import build_task

    if not manifest_path().exists():
        raise DataError(
            "runtime onnx-int8 calibrates on the emoji data, which is not installed: run "
            "`vlmops data fetch emoji`, or export with your own data: "
            f"`vlmops export --model {source.info.uri} --format onnx --int8 --data DATA --out DIR` "
            "and load onnx:DIR"
        )
    frame = load_emoji_manifest()
    images = sample_images(frame, "train", AUTO_CALIBRATION_SIZE)
    task = build_task(frame, "emoji", split="val")
    try:
        export_bundle(
            source,
            folder,
            int8=True,
            calibration_images=images,
            check=lambda exported: run_gate(
                source, exported, task, AUTO_MAX_DROP, progress=progress
            ).to_dict(),
            progress=progress,
        )
    except GateFailed as exc:
        raise ModelLoadError(
            f"runtime onnx-int8 refused: {exc}. Use runtime onnx, or export it yourself with `vlmops "
            f"export --model {source.info.uri} --int8 --data emoji --out DIR --force` and load onnx:DIR"
        ) from exc
