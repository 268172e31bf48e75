"""One model, five ways to run it: torch / torch-int8 / onnx / onnx-int8 / onnx-image
(`vlmops.export.load_runtime`).

The default runtime, ``auto``, is the fastest one that needs no export step: an ``onnx:DIR`` bundle's
runtime as its bundle.json records it (``onnx`` or ``onnx-int8``); for a built-in LiT model
(``builtin:emoji-lit``, ``builtin:emoji-lit@DIR``), ``onnx`` when its fp32 export is already cached (any
earlier ``--runtime onnx`` made it), else ``onnx-image``; ``torch`` for any other URI. ONNX Runtime runs
the same vectors at a quarter of torch's CPU per image at batch 1 and releases the GIL for a whole batch
(bench/RESULTS.md), which is what a server with an event loop beside its model needs.

- ``torch``: the model as `load_model` gives it.
- ``onnx-image``: the torch model with its image tower run by ONNX Runtime, exported in memory at load
  and checked against torch (`vlmops.models.onnx_image`): the same vectors to float32 rounding, so the
  same version; the text tower and gradients stay torch.
- ``torch-int8``: torch dynamic int8 quantization (per-channel weights) of every ``nn.Linear``. That
  covers the whole MiniLM text tower but only the *head* of the built-in CNN image tower (its
  convolutions stay fp32), so image embedding is no faster, and the text vectors move (cosine to fp32
  about 0.98, as low as 0.92); it is the cheapest baseline, not the fast path. Activations are
  quantized with a scale per batch, so a vector depends slightly (~1e-3) on its batch-mates, and
  there are no gradients through the quantized layers (white-box attacks need runtime torch).
- ``onnx`` / ``onnx-int8``: an ONNX bundle run by ONNX Runtime. A ``onnx:DIR`` URI is loaded as is;
  any other URI is exported once (by `vlmops.export.runtimes`, which can run the accuracy gate) into
  ``VLMOPS_HOME/exports/<version>-<runtime>`` and reused. The int8 export is calibrated on the emoji
  train split and must pass the accuracy gate on its val split.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from vlmops.errors import ModelLoadError
from vlmops.models import parse_uri
from vlmops.models.base import VLM, ModelInfo

RUNTIMES = ("torch", "torch-int8", "onnx", "onnx-int8", "onnx-image")
AUTO = "auto"


def export_dir(version: str, runtime: str) -> Path:
    """Where `load_runtime` keeps the automatic ONNX export of model `version`."""
    from vlmops.config import get_settings

    return get_settings().home / "exports" / f"{version}-{runtime}"


def is_builtin_lit(uri: str) -> bool:
    """True for ``builtin:emoji-lit`` and ``builtin:emoji-lit@DIR`` (the models ONNX Runtime can run)."""
    parsed = parse_uri(uri)
    return parsed.scheme == "builtin" and parsed.target.partition("@")[0] == "emoji-lit"


def cached_export(uri: str) -> Path | None:
    """The fp32 ONNX export of built-in model `uri` that an earlier ``onnx`` load cached, if there is one."""
    parsed = parse_uri(uri)
    if parsed.scheme != "builtin":
        return None
    from vlmops.models.builtin import version_of

    folder = export_dir(version_of(parsed.target), "onnx")
    return folder if (folder / "bundle.json").is_file() else None


def resolve_runtime(uri: str, runtime: str = AUTO) -> str:
    """The runtime `load_runtime` uses for `uri`: `runtime` itself, or for ``auto`` the fastest ready one."""
    if runtime not in (AUTO, *RUNTIMES):
        raise ModelLoadError(f"unknown runtime {runtime!r}; use one of: {', '.join((*RUNTIMES, AUTO))}")
    parsed = parse_uri(uri)
    if parsed.scheme != "onnx":
        if runtime != AUTO:
            return runtime
        if not is_builtin_lit(uri):
            return "torch"
        return "onnx" if cached_export(uri) is not None else "onnx-image"
    from vlmops.models.onnx import read_bundle

    meta = read_bundle(Path(parsed.target).expanduser())
    if runtime not in (AUTO, meta["runtime"]):
        source = meta.get("source", {}).get("uri")
        raise ModelLoadError(
            f"{uri} is a {meta['runtime']} bundle but runtime {runtime!r} was asked for; leave the runtime "
            f"out (it is read from the bundle), or load the source model ({source}) under {runtime!r}"
        )
    return meta["runtime"]


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
