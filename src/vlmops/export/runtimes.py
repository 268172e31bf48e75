"""Load a model under a runtime, exporting it to ONNX (int8: behind the accuracy gate) when needed.

See `vlmops.models.runtimes` for what each runtime is. Loading ``onnx`` or ``onnx-int8`` for a URI
that is not a bundle exports it once into ``VLMOPS_HOME/exports/<version>-<runtime>``; the int8
export is calibrated on the emoji train split and must pass the accuracy gate on its val split, which
needs evaluation, hence this module sits in the export layer, above models and evaluate.
"""

from __future__ import annotations

from pathlib import Path

from vlmops.errors import DataError, ModelLoadError
from vlmops.models import load_model, parse_uri
from vlmops.models.base import VLM
from vlmops.models.runtimes import AUTO, RUNTIMES, cached_export, export_dir, resolve_runtime, torch_int8

__all__ = ["AUTO", "RUNTIMES", "export_dir", "load_runtime", "resolve_runtime", "torch_int8"]

AUTO_CALIBRATION_SIZE = 256
AUTO_MAX_DROP = 0.01


def load_runtime(uri: str, runtime: str = AUTO, progress: bool = False, **options) -> VLM:
    """Load the model named by `uri` under `runtime` (``auto`` or one of RUNTIMES); options go to it."""
    runtime = resolve_runtime(uri, runtime)
    if parse_uri(uri).scheme == "onnx":
        return load_model(uri, **options)
    if runtime == "torch":
        return load_model(uri, **options)
    if runtime == "onnx-image":
        from vlmops.models.onnx_image import onnx_images

        threads = options.pop("threads", None)
        return onnx_images(load_model(uri, **options), threads)
    if runtime == "torch-int8":
        return torch_int8(load_model(uri, **options))
    return _exported(uri, runtime, progress, **options)


def _exported(uri: str, runtime: str, progress: bool, **options) -> VLM:
    """Load the cached export of `uri` for `runtime`, exporting it first when missing."""
    from vlmops.models import onnx

    cached = cached_export(uri) if runtime == "onnx" else None
    if cached is not None:  # the version comes from the weights' hash: no torch model to load
        return onnx.load(str(cached), **options)
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
    from vlmops.export.gate import run_gate, sample_images
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
