"""The vlmops gateway around a model that costs nothing (a constant vector per image or text).

bench/serve_load.py runs it to measure what the gateway itself can carry on this machine: HTTP
parsing, JSON, base64 and PNG decoding, batching, the durable log and metrics, without inference.
Run: ``python bench/null_gateway.py PORT STORE``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import uvicorn

from vlmops.models.base import ModelInfo
from vlmops.serve.app import create_app
from vlmops.serve.resources import LabelSet
from vlmops.serve.service import Gateway, ServeConfig
from vlmops.store.log import PredictionLog

DIM = 384


class NullModel:
    """Same output shapes as emoji-lit, no computation."""

    info = ModelInfo(name="null", version="null-1", dim=DIM, uri="null:")
    logit_scale = 100.0
    transform_id = "none"

    def embed_images(self, images: Sequence) -> np.ndarray:
        return np.full((len(images), DIM), DIM**-0.5, dtype=np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        out[np.arange(len(texts)), np.arange(len(texts)) % DIM] = 1.0
        return out


if __name__ == "__main__":
    port, store = int(sys.argv[1]), sys.argv[2]
    labels = LabelSet("bench", ("grinning face", "cat face", "red heart"), "an emoji of {}")
    config = ServeConfig(store=store)
    gateway = Gateway(NullModel(), config, PredictionLog(store, config.log_sync), {"bench": labels})
    uvicorn.run(create_app(gateway), host="127.0.0.1", port=port, log_level="warning")
