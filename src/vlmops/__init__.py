"""vlmops: run a vision-language model in production without flying blind.

The stable public API fits here; everything else is an implementation module.
"""

from vlmops.errors import VlmopsError

__version__ = "0.1.0"


def load_model(uri: str, **options):
    """Load a model by URI (lazy import keeps `import vlmops` light)."""
    from vlmops.models import load_model as _load

    return _load(uri, **options)


__all__ = ["VlmopsError", "__version__", "load_model"]
