"""Error types. Every message names the bad input and the fix; the CLI prints it as one red line."""

from __future__ import annotations


class VlmopsError(Exception):
    """Base class for errors that vlmops reports to users (CLI exit code 2)."""


class ModelLoadError(VlmopsError):
    """A model URI could not be parsed or its files could not be loaded."""


class DataError(VlmopsError):
    """A data set, manifest or image is missing or malformed."""


class StoreError(VlmopsError):
    """The embedding store is unusable (wrong schema, incompatible vectors)."""


class MissingDependencyError(VlmopsError):
    """An optional dependency is not installed."""


class NotFittedError(VlmopsError):
    """An estimator was used before `fit` was called."""


class GenerationError(VlmopsError):
    """A generative model (local or behind an API) could not answer: unreachable, refused, malformed."""
