"""The naive baseline for bench/serve_load.py: the FastAPI server most teams write first.

Same model and same /v1/classify contract, but one forward pass per request (no batching), decoding
on the request thread, label embeddings cached, no log. Run: ``python bench/naive_server.py PORT``.
"""

from __future__ import annotations

import base64
import sys
import uuid

import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from vlmops.data.images import load_image
from vlmops.evaluate.calibration import softmax
from vlmops.models import load_model

model = load_model("builtin:emoji-lit")
app = FastAPI()
_labels: dict[tuple[str, ...], np.ndarray] = {}


class Classify(BaseModel):
    image: str
    labels: list[str]


@app.post("/v1/classify")
def classify(body: Classify) -> dict:
    """Decode, embed alone, score against cached label embeddings."""
    image = load_image(base64.b64decode(body.image))
    key = tuple(body.labels)
    if key not in _labels:
        _labels[key] = model.embed_texts([f"an emoji of {label}" for label in key])
    embedding = model.embed_images([image])[0]
    probs = softmax((model.logit_scale * _labels[key] @ embedding)[None, :])[0]
    best = int(np.argmax(probs))
    return {"request_id": uuid.uuid4().hex, "label": key[best], "confidence": float(probs[best])}


@app.get("/readyz")
def readyz() -> dict:
    """Always ready once imported."""
    return {"status": "ready"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
