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
DEFAULT_LABEL_SETS = {"emoji": "emoji:concept"}  # what `vlmops serve` loads when the emoji data is there


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

    if config.upstream:
        return upstream_gateway(config)
    requested = config.runtime
    config.runtime = resolve_runtime(config.model, requested)  # `auto`: what /v1/models reports is real
    options = _thread_options(config.runtime, config.model_threads)
    model = load_runtime(config.model, config.runtime, **options)
    if not hasattr(model, "embed_images"):  # generative: /v1/chat/completions only
        check_generative(config)
        gateway = Gateway(model, config, PredictionLog(config.store, config.log_sync), {})
        attach_variants(gateway, config, requested, {}, ())
        return gateway
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
    attach_variants(gateway, config, requested, label_sets, vocabulary)
    return gateway


class UpstreamModel:
    """What a proxying gateway reports as its model (/v1/models, /readyz): the upstream server. The log
    records each exchange under the model name the upstream answered with."""

    def __init__(self, base_url: str, model: str | None) -> None:
        from vlmops.models.base import ModelInfo

        name = model or "upstream"
        self.info = ModelInfo(name=name, version=f"upstream:{name}", dim=0, uri=f"upstream:{base_url}")


def upstream_gateway(config: ServeConfig) -> Gateway:
    """A gateway that proxies /v1/chat/completions to `config.upstream` (no local model)."""
    from vlmops.serve.upstream import UpstreamBackend

    given = {"--canary": config.canary, "--shadow": config.shadow, "--calibration": config.calibration,
             "--gallery": config.gallery}  # fmt: skip
    wrong = [name for name, value in given.items() if value]
    if wrong:
        raise VlmopsError(
            f"--upstream proxies chat only: {', '.join(wrong)} need a local model; leave them out"
        )
    backend = UpstreamBackend(
        config.upstream,
        api_key_env=config.upstream_key_env,
        model=config.upstream_model,
        timeout_s=config.timeout_s,
    )
    model = UpstreamModel(backend.base_url, config.upstream_model)
    return Gateway(model, config, PredictionLog(config.store, config.log_sync), {}, chat=backend)


def attach_variants(
    gateway: Gateway, config: ServeConfig, requested: str, label_sets: dict, vocabulary: tuple[str, ...]
) -> None:
    """Load --canary and --shadow (same label sets and vocabulary; calibration and gallery belong to the
    primary version) and attach them; `Gateway.attach` refuses a variant of the other kind of model."""
    from vlmops.export.runtimes import load_runtime, resolve_runtime

    for role, uri in (("canary", config.canary), ("shadow", config.shadow)):
        if uri:
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


def generative_uri(uri: str) -> bool:
    """Whether `uri` names a generative model, told without loading it (a built-in's table entry, an
    hf: folder's model_type), so that `vlmops serve` checks its options before starting workers."""
    from vlmops.models import parse_uri

    parsed = parse_uri(uri)
    if parsed.scheme == "builtin":
        from vlmops.models.builtin import BUILTIN_MODELS

        spec = BUILTIN_MODELS.get(parsed.target.split("@")[0])
        return spec is not None and spec.description.startswith("generative")
    if parsed.scheme == "hf":
        from vlmops.models.hf import SUPPORTED

        config = Path(parsed.target).expanduser() / "config.json"
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("model_type") not in SUPPORTED
        except (OSError, ValueError):
            return False  # loading says what is wrong with the folder
    return parsed.scheme == "openai"


def check_generative(config: ServeConfig) -> None:
    """A generative model serves chat only: the dual-encoder resources (except the defaults `vlmops
    serve` adds when the emoji data is installed) are refused by name."""
    if config.label_sets == DEFAULT_LABEL_SETS and config.vocabulary == "emoji":
        config.label_sets, config.vocabulary = {}, None
    given = {
        "--label-set": config.label_sets,
        "--vocabulary": config.vocabulary,
        "--calibration": config.calibration,
        "--gallery": config.gallery,
        "--template": config.template,
    }
    wrong = [name for name, value in given.items() if value]
    if wrong:
        raise VlmopsError(
            f"{config.model} is a generative model (it answers /v1/chat/completions) and does not embed: "
            f"{', '.join(wrong)}: these need a dual encoder; leave them out"
        )
    if config.runtime != "torch":
        raise VlmopsError(f"{config.model} runs under --runtime torch only, not {config.runtime}")


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


def app_from_json(text: str) -> FastAPI:
    """The app for a config given as `config_to_env` JSON (what each Ray Serve replica builds)."""
    return build_app(config_from_json(text))


def app_from_env() -> FastAPI:
    """Uvicorn factory for worker processes (``--workers N``)."""
    die_with_parent()
    try:
        return build_app(config_from_json(os.environ[CONFIG_ENV]))
    except KeyError:
        raise VlmopsError(f"{CONFIG_ENV} is not set; start the server with `vlmops serve`") from None


__all__ = ["ResourceError", "app_from_env", "app_from_json", "build_app", "build_gateway"]
