"""From a ServeConfig to a running app: load the model and every resource, check they belong together."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI

from vlmops.errors import VlmopsError
from vlmops.serve.keys import CachedVerifier, KeyStore
from vlmops.serve.limits import Limits
from vlmops.serve.resources import Calibration, Gallery, LabelSet, ResourceError, check_version, read_lines
from vlmops.serve.service import Gateway, ServeConfig
from vlmops.serve.workers import die_with_parent
from vlmops.store.log import PredictionLog

CONFIG_ENV = "VLMOPS_SERVE_CONFIG"
EMOJI_TEMPLATE = "an emoji of {}"


def emoji_label_set(name: str, tier: str) -> LabelSet:
    """Every emoji class name at `tier` (concept, subcategory or category) from the installed data."""
    from vlmops.data.manifest import resolve_data
    from vlmops.evaluate.task import build_task

    task = build_task(resolve_data("emoji"), "emoji", split="all", tier=tier)
    return LabelSet(name, tuple(dict.fromkeys(task.class_names)), EMOJI_TEMPLATE)


def emoji_vocabulary() -> tuple[str, ...]:
    """The CLDR keywords of every emoji, most frequent first."""
    from collections import Counter

    from vlmops.data.manifest import resolve_data

    counts = Counter(tag for tags in resolve_data("emoji")["tags"] for tag in tags)
    return tuple(tag for tag, _ in counts.most_common())


def load_label_set(name: str, spec: str, template: str) -> LabelSet:
    """`emoji:TIER` or a text file with one label per line."""
    if spec.startswith("emoji:"):
        return emoji_label_set(name, spec.removeprefix("emoji:"))
    return LabelSet(name, read_lines(Path(spec).expanduser(), "label set"), template)


def build_gateway(config: ServeConfig) -> Gateway:
    """Load the model through its runtime and every configured resource."""
    from vlmops.export.runtimes import load_runtime, resolve_runtime

    requested = config.runtime
    config.runtime = resolve_runtime(config.model, requested)  # `auto`: what /v1/models reports is real
    options = _thread_options(config.runtime, config.model_threads)
    model = load_runtime(config.model, config.runtime, **options)
    version = model.info.version
    template = config.template or (
        "an emoji of {}" if config.model.startswith("builtin:emoji") else "a photo of {}."
    )
    config.template = template
    label_sets = {name: load_label_set(name, spec, template) for name, spec in config.label_sets.items()}
    calibration = None
    if config.calibration:
        path = Path(config.calibration).expanduser()
        calibration = Calibration.load(path)
        check_version("calibration", path, calibration.model_version, version)
        label_sets[calibration.label_set] = calibration.label_set_()
    gallery = None
    if config.gallery:
        path = Path(config.gallery).expanduser()
        gallery = Gallery.load(path)
        check_version("gallery", path, gallery.model_version, version)
    vocabulary: tuple[str, ...] = ()
    if config.vocabulary == "emoji":
        vocabulary = emoji_vocabulary()
    elif config.vocabulary:
        vocabulary = read_lines(Path(config.vocabulary).expanduser(), "vocabulary")
    log = PredictionLog(config.store, config.log_sync)
    gateway = Gateway(model, config, log, label_sets, calibration, gallery, vocabulary)
    for role, uri in (("canary", config.canary), ("shadow", config.shadow)):
        if uri:  # same label sets and vocabulary; calibration and gallery belong to the primary version
            variant = load_runtime(
                uri, requested, **_thread_options(resolve_runtime(uri, requested), config.model_threads)
            )
            gateway.attach(
                role,
                Gateway(
                    variant,
                    config,
                    PredictionLog(config.store, config.log_sync),
                    label_sets,
                    None,
                    None,
                    vocabulary,
                ),
            )
    return gateway


def _thread_options(runtime: str, threads: int | None) -> dict:
    """Load options that give the model `threads` intra-op threads (torch's are per process: set here)."""
    if threads is None:
        return {}
    if runtime in ("onnx", "onnx-int8"):
        return {"threads": threads}
    import torch

    torch.set_num_threads(threads)  # onnx-image: its text tower is torch
    return {"threads": threads} if runtime == "onnx-image" else {}


def build_app(config: ServeConfig) -> FastAPI:
    """The ASGI app for a config: gateway plus (unless auth is off) the API-key check."""
    from vlmops.serve.app import create_app

    gateway = build_gateway(config)
    keys = CachedVerifier(KeyStore(config.store)) if config.auth else None
    return create_app(gateway, keys)


def config_to_env(config: ServeConfig) -> str:
    """JSON for CONFIG_ENV, read back by `app_from_env` in each worker process."""
    data = asdict(config)
    data["limits"]["formats"] = sorted(data["limits"]["formats"])
    return json.dumps(data)


def config_from_json(text: str) -> ServeConfig:
    """Inverse of config_to_env."""
    data = json.loads(text)
    limits = data.pop("limits")
    return ServeConfig(**data, limits=Limits(**{**limits, "formats": frozenset(limits["formats"])}))


def app_from_env() -> FastAPI:
    """Uvicorn factory for worker processes (``--workers N``)."""
    die_with_parent()
    try:
        return build_app(config_from_json(os.environ[CONFIG_ENV]))
    except KeyError:
        raise VlmopsError(f"{CONFIG_ENV} is not set; start the server with `vlmops serve`") from None


__all__ = ["ResourceError", "app_from_env", "build_app", "build_gateway"]
