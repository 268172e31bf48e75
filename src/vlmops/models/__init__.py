"""Model adapters behind one entry point, `load_model(uri)`.

A model's source is part of its name (as in open_clip): ``builtin:emoji-lit``, ``hf:/dir``,
``open_clip:ViT-B-32@/path/ckpt.pt``, ``onnx:/path/bundle``, ``openai:MODEL@http://host:port/v1``.
Dual encoders implement `VLM`; generative models (captioners, chat models) implement `GenerativeVLM`;
`capabilities(model)` says which. `parse_uri` is the only place that reads a
URI; each scheme maps to the module that loads it, imported only when used so `import vlmops` stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from vlmops.errors import ModelLoadError
from vlmops.models.base import VLM, Generation, GenerativeVLM, ModelInfo, Usage, capabilities

# scheme -> (module, what the target after the colon is)
SCHEMES: dict[str, tuple[str, str]] = {
    "builtin": ("vlmops.models.builtin", "a built-in model name (see `vlmops models list`)"),
    "hf": ("vlmops.models.hf", "a local directory saved by transformers' save_pretrained"),
    "open_clip": ("vlmops.models.openclip", "ARCH@CHECKPOINT, e.g. ViT-B-32@/models/vit.pt"),
    "onnx": ("vlmops.models.onnx", "a bundle folder written by `vlmops export --format onnx`"),
    "openai": ("vlmops.models.openai_compat", "MODEL@BASE_URL of an OpenAI-compatible chat server"),
}


@dataclass(frozen=True)
class ModelURI:
    """A parsed model URI."""

    scheme: str
    target: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}"


def parse_uri(uri: str) -> ModelURI:
    """Split `scheme:target` and check the scheme is known."""
    scheme, sep, target = uri.partition(":")
    known = ", ".join(f"{s}:<{hint}>" for s, (_, hint) in SCHEMES.items())
    if not sep or not target:
        raise ModelLoadError(f"model URI {uri!r} has no scheme; use one of: {known}")
    if scheme not in SCHEMES:
        raise ModelLoadError(f"unknown model scheme {scheme!r} in {uri!r}; use one of: {known}")
    return ModelURI(scheme, target)


def load_model(uri: str, **options) -> VLM | GenerativeVLM:
    """Load the model named by `uri`; options (device, batch_size, ...) go to the adapter. The process
    keeps the memory its batches free (`allocator.keep_freed_memory`; VLMOPS_KEEP_FREED_MEMORY=0: not)."""
    from vlmops.models.allocator import keep_freed_memory

    parsed = parse_uri(uri)
    keep_freed_memory()
    module = importlib.import_module(SCHEMES[parsed.scheme][0])
    return module.load(parsed.target, **options)


def training_data_version(uri: str) -> str | None:
    """Version of the data the model named by `uri` was trained (or last retrained) on, from its card
    (builtin) or bundle (onnx); None where the model does not record it. Reads no weights."""
    parsed = parse_uri(uri)
    module = importlib.import_module(SCHEMES[parsed.scheme][0])
    reader = getattr(module, "training_data_version", None)
    return reader(parsed.target) if reader is not None else None


def list_models() -> list[dict]:
    """Built-in models and the URI schemes that load external ones."""
    from vlmops.models.builtin import BUILTIN_MODELS

    rows = [
        {"uri": f"builtin:{name}", "description": spec.description, "licence": spec.licence}
        for name, spec in BUILTIN_MODELS.items()
    ]
    rows += [
        {"uri": f"{scheme}:<target>", "description": hint, "licence": "depends on the weights"}
        for scheme, (_, hint) in SCHEMES.items()
        if scheme != "builtin"
    ]
    return rows


__all__ = [
    "VLM",
    "Generation",
    "GenerativeVLM",
    "ModelInfo",
    "ModelURI",
    "Usage",
    "capabilities",
    "list_models",
    "load_model",
    "parse_uri",
    "training_data_version",
]
