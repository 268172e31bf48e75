"""`vlmops serve` (the gateway), `vlmops keys`, `vlmops index build` and `vlmops calibrate`."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import typer
from rich.table import Table

from vlmops.cli._common import JsonOption, console, handle_errors, results_console, write_json
from vlmops.cli._ray import (
    RayActorsOption,
    RayCpusOption,
    RayOption,
    ServeAutoscaleOption,
    ServeCpusOption,
    ServeRayOption,
    ServeReplicasOption,
    ray_embedding,
    serve_ray,
)
from vlmops.errors import VlmopsError

StoreOption = typer.Option(
    None,
    "--store",
    help="Store URL: sqlite:///path or postgresql://... (default: VLMOPS_STORE_URL or VLMOPS_HOME).",
)
ModelOption = typer.Option(
    "builtin:emoji-lit", "--model", "-m", help="Model URI, e.g. builtin:emoji-lit, onnx:/dir."
)
RUNTIME_HELP = (
    "auto | torch | onnx-image | torch-int8 | onnx | onnx-int8 (onnx and onnx-int8 export and gate the "
    "model once, then cache it; onnx-image runs a built-in model's image tower under ONNX Runtime, same "
    "vectors and version). auto: an onnx:DIR bundle's own runtime; for builtin:emoji-lit its cached onnx "
    "export when one exists, else onnx-image; else torch."
)


def _parse_label_sets(values: list[str]) -> dict[str, str]:
    sets = {}
    for value in values:
        name, sep, spec = value.partition("=")
        if not sep or not name or not spec:
            raise VlmopsError(
                f"--label-set {value!r}: use NAME=FILE (one label per line) or NAME=emoji:concept"
            )
        sets[name] = spec
    return sets


def _check_log_sync(value: str) -> str:
    from vlmops.store.log import SYNC_MODES

    if value not in SYNC_MODES:
        raise VlmopsError(f"--log-sync {value!r}: use one of {', '.join(SYNC_MODES)}")
    return value


def check_port_free(host: str, port: int) -> None:
    """Raise VlmopsError unless `host:port` can be bound now (as uvicorn binds: SO_REUSEADDR)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise VlmopsError(f"--host {host!r} does not resolve here ({exc}); try 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise VlmopsError(
                f"cannot listen on {host}:{port} ({exc.strerror}): another server has it; "
                "stop it or pick another --port"
            ) from None


@handle_errors
def serve(
    model: str = ModelOption,
    runtime: str = typer.Option("auto", "--runtime", help=RUNTIME_HELP),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind; keep loopback unless behind a proxy."
    ),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    store: str | None = StoreOption,
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="Most images (or texts) per model call."),
    max_wait_ms: float = typer.Option(
        5.0,
        "--max-wait-ms",
        min=0,
        help="How long a batch may wait to fill while the model is busy (an idle model starts at once).",
    ),
    queue: int = typer.Option(512, "--queue", min=1, help="Requests in flight before new ones get 503."),
    timeout_s: float = typer.Option(
        10.0, "--timeout", min=0.01, help="Time limit from arrival, decoding included (504 after)."
    ),
    key_items_per_s: float = typer.Option(
        500.0, "--key-items-per-s", min=0.001, help="Images + new texts per second per API key (429 over)."
    ),
    key_items_in_flight: int = typer.Option(
        1024, "--key-items-in-flight", min=1, help="Images + new texts one key may have waiting at once."
    ),
    pixels_in_flight: int = typer.Option(
        64_000_000, "--pixels-in-flight", min=1, help="Decoded pixels in flight across requests (503 over)."
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        help="Server processes, each with its own model (default: one per usable core, at most 8).",
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="Model threads per process (default: the usable cores shared out among the processes).",
    ),
    log_sync: str = typer.Option(
        "full",
        "--log-sync",
        help="full (default): every group of log rows is fsync'd before its answers leave, so no "
        "acknowledged row is lost even on a power cut; group: answer once the rows are committed (a "
        "killed server loses none) and fsync in the background every 50 ms (a power cut may take the "
        "last ~50 ms of rows; faster at low load).",
    ),
    label_set: list[str] = typer.Option(
        [],
        "--label-set",
        help="NAME=FILE or NAME=emoji:concept|subcategory|category; repeatable. "
        "Default: emoji=emoji:concept when the emoji data is installed.",
    ),
    calibration: Path | None = typer.Option(None, "--calibration", help="File from `vlmops calibrate`."),
    gallery: Path | None = typer.Option(None, "--gallery", help="Folder from `vlmops index build`."),
    vocabulary: str | None = typer.Option(
        None,
        "--vocabulary",
        help="Tag vocabulary: a file (one per line) or 'emoji' (default when installed).",
    ),
    template: str | None = typer.Option(
        None, "--template", help="Prompt template for labels, with one '{}'."
    ),
    abstain_below: float = typer.Option(
        0.0, "--abstain-below", min=0, max=1, help="Abstain under this confidence."
    ),
    max_body_mb: float = typer.Option(8.0, "--max-body-mb", min=0.001, help="Largest request body."),
    max_pixels: int = typer.Option(
        16_000_000, "--max-pixels", min=1, help="Largest image (decompression bombs)."
    ),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="Allow browser calls from this origin."),
    keep_images: Path | None = typer.Option(
        None, "--keep-images", help="Archive every served image here by sha256 (what `vlmops retrain` reads)."
    ),
    canary: str | None = typer.Option(
        None, "--canary", help="Model URI answering --canary-share of traffic."
    ),
    canary_share: float = typer.Option(0.1, "--canary-share", min=0.0, max=1.0),
    shadow: str | None = typer.Option(None, "--shadow", help="Model URI run on every classify, logged only."),
    follow_registry: float = typer.Option(
        0.0, "--follow-registry", help="Every N s, end a canary/shadow whose registry alias moved (rollback)."
    ),
    redact_prompts: bool = typer.Option(
        False, "--redact-prompts", help="Log chat prompts with PII (emails, cards, names ...) redacted."
    ),
    price_in: float = typer.Option(
        0.0, "--price-in", min=0, help="USD per 1M prompt tokens, for the cost logged with each chat."
    ),
    price_out: float = typer.Option(0.0, "--price-out", min=0, help="USD per 1M completion tokens."),
    upstream: str | None = typer.Option(
        None,
        "--upstream",
        help="Proxy /v1/chat/completions to this OpenAI-compatible server (e.g. http://127.0.0.1:11434/v1) "
        "instead of serving a local model; every exchange is logged as for a local model.",
    ),
    upstream_key_env: str | None = typer.Option(
        None, "--upstream-key-env", help="Environment variable holding the upstream's API key (never logged)."
    ),
    upstream_model: str | None = typer.Option(
        None, "--upstream-model", help="Model name sent upstream (default: the one the client names)."
    ),
    allow_image_host: list[str] = typer.Option(
        [],
        "--allow-image-host",
        help="Fetch http(s) image_url parts from this host (or *.domain); repeatable. Private, loopback and "
        "link-local addresses and redirects stay refused. Default: data: URLs only.",
    ),
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", help="Serve without API keys (testing only)."
    ),
    ray: str | None = ServeRayOption,
    ray_replicas: int = ServeReplicasOption,
    ray_autoscale: str | None = ServeAutoscaleOption,
    ray_cpus: float = ServeCpusOption,
) -> None:
    """Serve a model over HTTP: /v1/embeddings, /v1/classify, /v1/search, /v1/tag, /v1/feedback;
    a generative model (builtin:emoji-captioner, hf:DIR) answers OpenAI-compatible /v1/chat/completions,
    and with --upstream URL the gateway proxies that route to an existing OpenAI-compatible server.

    Requests are micro-batched, every prediction is written to the store before its response, and
    every /v1 endpoint and /metrics need an API key (`vlmops keys create`) with the right scope;
    /dashboard also opens in a browser after signing in with an admin key. OpenAPI: /openapi.json.
    """
    check_port_free(host, port)  # before the model loads: a taken port fails in a second, not a minute
    import uvicorn

    from vlmops.data.emoji import manifest_path
    from vlmops.models.runtimes import resolve_runtime
    from vlmops.serve.build import (
        CONFIG_ENV,
        DEFAULT_LABEL_SETS,
        build_app,
        check_generative,
        config_to_env,
        generative_uri,
    )
    from vlmops.serve.limits import Limits
    from vlmops.serve.service import ServeConfig
    from vlmops.serve.workers import PARENT_ENV, choose_parallelism, serve_workers, usable_cores

    cores = usable_cores()
    if ray is not None:
        if workers is not None:
            raise VlmopsError("--workers runs processes on this machine; with --ray use --ray-replicas")
        workers, threads = 1, threads or max(1, int(ray_cpus))
    workers, threads = choose_parallelism(cores, workers, threads)
    sets = _parse_label_sets(label_set)
    emoji_ready = manifest_path().exists()
    if not sets and emoji_ready and not upstream:
        sets = dict(DEFAULT_LABEL_SETS)  # dropped again for a generative model (check_generative)
    config = ServeConfig(
        model=model,
        runtime=runtime,
        store=store,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        queue=queue,
        timeout_s=timeout_s,
        key_items_per_s=key_items_per_s,
        key_items_in_flight=key_items_in_flight,
        pixels_in_flight=pixels_in_flight,
        model_threads=threads,
        log_sync=_check_log_sync(log_sync),
        auth=not insecure_no_auth,
        abstain_below=abstain_below,
        template=template,
        label_sets=sets,
        calibration=str(calibration) if calibration else None,
        gallery=str(gallery) if gallery else None,
        vocabulary=vocabulary or ("emoji" if emoji_ready and not upstream else None),
        cors_origins=list(cors_origin),
        keep_images=str(keep_images) if keep_images else None,
        canary=canary,
        canary_share=canary_share,
        shadow=shadow,
        follow_registry_s=follow_registry,
        redact_prompts=redact_prompts,
        price_in=price_in,
        price_out=price_out,
        upstream=upstream,
        upstream_key_env=upstream_key_env,
        upstream_model=upstream_model,
        allow_image_hosts=list(allow_image_host),
        limits=Limits(max_body_bytes=int(max_body_mb * 1024 * 1024), max_pixels=max_pixels),
    )
    if insecure_no_auth:
        console.print("[bold yellow]warning:[/] serving without API keys (--insecure-no-auth)")
    if upstream:  # checked here, in one line, not in each worker
        from vlmops.serve.upstream import check_base_url

        check_base_url(upstream)
        shown, model = "proxy", f"upstream {upstream}"
    else:
        shown = resolve_runtime(model, runtime)  # auto -> the bundle's runtime; a mismatch fails here
    if not upstream and generative_uri(model):  # its options are checked here, not in each worker
        config.runtime = shown
        check_generative(config)
    if ray is not None:
        from functools import partial

        from vlmops.config import get_settings
        from vlmops.serve.build import app_from_json

        serve_ray(
            partial(app_from_json, config_to_env(config)),
            ray,
            host,
            port,
            replicas=ray_replicas,
            autoscale=ray_autoscale,
            cpus=ray_cpus,
            max_ongoing=queue,
            store_url=store or get_settings().resolved_store_url(),
            what=f"{model} ({shown})",
        )
        return
    console.print(
        f"serving {model} ({shown}) on http://{host}:{port}  docs: /docs\n"
        f"{workers} worker process{'es' if workers > 1 else ''} x {threads} model "
        f"thread{'s' if threads > 1 else ''} ({cores} usable core{'s' if cores > 1 else ''}; "
        "--workers/--threads to change)",
        highlight=False,
    )
    if workers == 1:
        uvicorn.run(
            build_app(config), host=host, port=port, log_level="warning", timeout_graceful_shutdown=30
        )
        return
    limits_dir = tempfile.mkdtemp(prefix="vlmops-limits-")  # key buckets every worker shares
    atexit.register(shutil.rmtree, limits_dir, ignore_errors=True)
    config.shared_limits = str(Path(limits_dir) / "buckets")
    os.environ[CONFIG_ENV] = config_to_env(config)
    os.environ[PARENT_ENV] = str(os.getpid())  # workers die with this process, even by kill -9
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:  # a fresh folder per server, removed at exit
        metrics_dir = tempfile.mkdtemp(prefix="vlmops-metrics-")
        atexit.register(shutil.rmtree, metrics_dir, ignore_errors=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    serve_workers(host, port, workers)  # one SO_REUSEPORT socket per worker: connections spread evenly


keys_app = typer.Typer(help="API keys for `vlmops serve`: create, list, revoke.", no_args_is_help=True)


@keys_app.command("create")
@handle_errors
def keys_create(
    name: str = typer.Option(..., "--name", help="Who uses the key (a client, team or service)."),
    rate: float = typer.Option(50.0, "--rate", help="Requests per second allowed (token bucket)."),
    burst: int = typer.Option(100, "--burst", help="Requests allowed at once after a quiet period."),
    scopes: str = typer.Option(
        "predict,feedback,chat",
        "--scopes",
        help="Comma-separated: predict (/v1 model endpoints), feedback (/v1/feedback; its labels may "
        "train `vlmops retrain`), admin (/metrics, /dashboard), chat (/v1/chat/completions).",
    ),
    tenant: str | None = typer.Option(
        None, "--tenant", help="Keys of one tenant may give feedback on each other's requests (rotation)."
    ),
    store: str | None = StoreOption,
    json_out: Path | None = JsonOption,
) -> None:
    """Create a key and print it once; only its hash is stored."""
    from vlmops.serve.keys import KeyStore, parse_scopes

    granted = parse_scopes(scopes)
    token = KeyStore(store).create(name, rate, burst, granted, tenant)
    console.print(
        f"[green]created[/] with scopes {','.join(granted)} (store it now, it cannot be shown again):"
    )
    if json_out is None:
        typer.echo(token)
    summary = {"key": token, "key_id": token.split("_")[1], "name": name, "rate": rate, "burst": burst}
    write_json({**summary, "scopes": list(granted), "tenant": tenant}, json_out)


@keys_app.command("list")
@handle_errors
def keys_list(store: str | None = StoreOption, json_out: Path | None = JsonOption) -> None:
    """List keys (ids, names, scopes, tenants, limits, revoked or not); secrets are never shown."""
    from vlmops.serve.keys import KeyStore

    keys = KeyStore(store).list()
    table = Table("key id", "name", "scopes", "tenant", "rate/s", "burst", "active")
    for key in keys:
        table.add_row(
            key.key_id,
            key.name,
            ",".join(key.scopes),
            key.tenant or "",
            f"{key.rate_per_s:g}",
            str(key.burst),
            "yes" if key.active else "revoked",
        )
    results_console.print(table)
    write_json([k.to_dict() for k in keys], json_out)


@keys_app.command("revoke")
@handle_errors
def keys_revoke(
    key_id: str = typer.Argument(..., help="The key id from `vlmops keys list`."),
    store: str | None = StoreOption,
) -> None:
    """Revoke a key; running servers refuse it within two seconds."""
    from vlmops.serve.keys import KeyStore

    key = KeyStore(store).revoke(key_id)
    results_console.print(f"revoked {key.key_id} ({key.name})")


index_app = typer.Typer(help="Gallery indexes for /v1/search.", no_args_is_help=True)


@index_app.command("build")
@handle_errors
def index_build(
    data: str = typer.Option(..., "--data", "-d", help="'emoji', an image folder or a manifest."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (embeddings.npy, index.json)."),
    model: str = ModelOption,
    split: str | None = typer.Option(None, "--split", help="Only this split (default: every record)."),
    store: str | None = StoreOption,
    ray: str | None = RayOption,
    ray_actors: int = RayActorsOption,
    ray_cpus_per_actor: float = RayCpusOption,
    json_out: Path | None = JsonOption,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Embed a data set (through the cache) into a gallery that `vlmops serve --gallery` searches."""
    from vlmops.data.manifest import resolve_data
    from vlmops.models import load_model
    from vlmops.serve.resources import Gallery
    from vlmops.store.cache import open_cache
    from vlmops.store.embed import embed_images_cached

    frame = resolve_data(data)
    if split is not None:
        frame = frame[frame["split"] == split] if "split" in frame else frame.iloc[0:0]
        if frame.empty:
            raise VlmopsError(f"no records in split {split!r}; check --split")
    vlm = load_model(model)
    with open_cache(store) as cache, ray_embedding(ray, ray_actors, ray_cpus_per_actor):
        vectors, _ = embed_images_cached(vlm, list(frame["image"]), cache, progress=progress)
    labels = [
        None if lab is None or lab != lab else str(lab) for lab in frame.get("label", [None] * len(frame))
    ]
    texts = [str(t[0]) if len(t) else None for t in frame["texts"]]
    Gallery(vlm.info.version, [str(i) for i in frame["id"]], labels, texts, vectors).save(out)
    summary = {
        "out": str(out),
        "n": len(frame),
        "model_version": vlm.info.version,
        "dim": int(vectors.shape[1]),
    }
    results_console.print(f"indexed {summary['n']} records into {out}")
    write_json(summary, json_out)


@handle_errors
def calibrate(
    data: str = typer.Option("emoji", "--data", "-d", help="'emoji', an image folder or a manifest."),
    out: Path = typer.Option(..., "--out", "-o", help="JSON file for `vlmops serve --calibration`."),
    model: str = ModelOption,
    split: str = typer.Option(
        "val", "--split", help="Held-out split to calibrate on (never the training split)."
    ),
    labels: str | None = typer.Option(None, "--labels", help="Label tier, e.g. concept (default: finest)."),
    name: str = typer.Option("emoji", "--name", help="Label-set name clients use in /v1/classify."),
    template: str | None = typer.Option(None, "--template", help="Prompt template with one '{}'."),
    alpha: float = typer.Option(0.1, "--alpha", min=0.001, max=0.5, help="Miscoverage: 0.1 gives 90 % sets."),
    store: str | None = StoreOption,
    json_out: Path | None = JsonOption,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Fit a temperature and a conformal threshold so /v1/classify returns calibrated sets."""
    import numpy as np

    from vlmops.data.manifest import resolve_data
    from vlmops.evaluate.task import build_task
    from vlmops.models import load_model
    from vlmops.serve.resources import LabelSet, fit_calibration
    from vlmops.store.cache import open_cache
    from vlmops.store.embed import embed_images_cached

    task = build_task(
        resolve_data(data),
        "emoji" if data == "emoji" else "other",
        "all",
        labels,
        [template] if template else None,
    )
    rows = np.flatnonzero((task.frame["split"] == split).to_numpy()) if "split" in task.frame else []
    if len(rows) == 0:
        raise VlmopsError(f"no labelled records in split {split!r}; pick a held-out split with --split")
    vlm = load_model(model)
    with open_cache(store) as cache:
        emb, _ = embed_images_cached(vlm, [task.frame["image"][i] for i in rows], cache, progress=progress)
    index = {c: i for i, c in enumerate(task.classes)}
    targets = np.array([index[task.labels[i]] for i in rows])
    label_set = LabelSet(name, tuple(task.class_names), task.templates[0])
    if len(set(label_set.labels)) != len(label_set.labels):
        raise VlmopsError("two classes share a display name at this tier; pick another --labels tier")
    result = fit_calibration(vlm, label_set, emb, targets, alpha, split)
    result.save(out)
    set_size = _mean_set_size(vlm, label_set, emb, result.temperature, result.threshold)
    results_console.print(
        f"calibrated {len(label_set.labels)} labels on {len(rows)} {split} images: "
        f"T = {result.temperature:.3f}, LAC threshold {result.threshold:.4f} (alpha {alpha}), "
        f"mean set size {set_size:.1f} -> {out}",
        highlight=False,
    )
    if uninformative(set_size, len(label_set.labels)):
        console.print(
            f"[bold yellow]warning:[/] the {1 - alpha:.0%} prediction sets are uninformative: on average "
            f"{set_size:.1f} of {len(label_set.labels)} labels (threshold {result.threshold:.4f}), because "
            f"the true label gets a probability under {1 - result.threshold:.2g} on {alpha:.0%} of these "
            f"{len(rows)} images. Calibrate on more data, "
            f"raise --alpha (e.g. {min(0.5, 2 * alpha):g}: smaller sets, lower coverage), or classify at a "
            "coarser --labels tier",
            highlight=False,
            soft_wrap=True,
        )
    write_json(
        {
            "out": str(out),
            "temperature": result.temperature,
            "threshold": result.threshold,
            "mean_set_size": set_size,
            "uninformative": uninformative(set_size, len(label_set.labels)),
            "n": result.n,
            "labels": len(label_set.labels),
            "model_version": result.model_version,
        },
        json_out,
    )


def _mean_set_size(vlm, label_set, emb, temperature: float, threshold: float) -> float:
    """Mean LAC set size on the calibration images: labels whose 1 - p is within the threshold."""
    from vlmops.evaluate.calibration import softmax

    logits = vlm.logit_scale * emb @ vlm.embed_texts(label_set.prompts()).T
    return float(((1.0 - softmax(logits, temperature)) <= threshold).sum(axis=1).mean())


def uninformative(mean_set_size: float, n_labels: int) -> bool:
    """Sets are uninformative when they hold more than 2 labels and over a tenth of all labels on average."""
    return mean_set_size > 2 and mean_set_size > 0.1 * n_labels
