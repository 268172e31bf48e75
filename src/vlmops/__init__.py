"""vlmops: run a vision-language model in production without flying blind.

The stable public API fits here; everything else is an implementation module.

Layers, top to bottom. A module imports from its own layer or below, never above
(tests/test_layers.py reads this list and checks every import in src/vlmops against it):

    cli            typer app: parses options, calls one library function, prints
    demo           the closed-loop story on the embedded defaults
    monitor        drift detectors, label-free estimates, feedback metrics, alert rules
    registry       versions, aliases, gate, retrain, rollout decisions
    serve          FastAPI gateway: batcher, decode, auth, limits, schemas, metrics
    export         ONNX/int8 bundles and their accuracy gate (uses models and evaluate)
    audit, report  data governance; HTML/Markdown rendering shared by every report
    evaluate       tasks and metrics
    scale          Ray backends for embedding/generation jobs and gateway replicas on Ray Serve
    store          embedding cache, prediction log, feedback, the monitor's and registry's tables
    models         adapters behind load_model(uri); image preprocessing and statistics
    data           records, manifests, loaders, the emoji set
    base           config, errors, hashing, jsonable, progress, _optional (modules at the top level)
"""

import os as _os

from vlmops.errors import VlmopsError

__version__ = "0.1.0"

# No network except loopback at run time (DESIGN.md): ONNX Runtime >= 1.29 on Linux uploads usage
# telemetry (a DNS lookup of its endpoint from a background thread, seen by bench/serve_peers.py's strace)
# unless this is set before it initialises; set here, so every vlmops process and its workers inherit it.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def load_model(uri: str, **options):
    """Load a model by URI (lazy import keeps `import vlmops` light)."""
    from vlmops.models import load_model as _load

    return _load(uri, **options)


__all__ = ["VlmopsError", "__version__", "load_model"]
