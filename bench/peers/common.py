"""The computation every peer serves, as the gateway's /v1/classify does it with ad-hoc labels: decode
the PNG, `embed_images` with builtin:emoji-lit (vlmops's own loader), softmax over cached label
embeddings (prompt "an emoji of {}": the gateway's template for the built-in emoji model,
vlmops.serve.build.EMOJI_TEMPLATE; serve_peers.py checks every system gives the same answer).
Runs in the peer's venv."""

from __future__ import annotations

import base64
import os

import numpy as np

LABELS = ("grinning face", "cat face", "red heart")
TEMPLATE = "an emoji of {}"


class EmojiClassifier:
    """Model and label embeddings loaded once per worker process; one torch thread unless told; the
    image tower under ONNX Runtime (vlmops's `onnx-image` runtime) when PEER_RUNTIME=onnx-image."""

    def __init__(self, threads: int | None = None) -> None:
        import torch

        from vlmops.models import load_model

        threads = threads or int(os.environ.get("PEER_TORCH_THREADS", "1"))
        torch.set_num_threads(threads)
        self.model = load_model("builtin:emoji-lit")
        if os.environ.get("PEER_RUNTIME", "torch") == "onnx-image":  # serve_peers.py --peer-runtime
            from vlmops.models.onnx_image import onnx_images

            self.model = onnx_images(self.model, threads)  # vlmops's default runtime, in the peer
        vectors = self.model.embed_texts([TEMPLATE.format(label) for label in LABELS])
        self.label_vectors = dict(zip(LABELS, vectors, strict=True))

    def decode(self, request: dict):
        """The request's image, decoded, and the embeddings of its labels (KeyError: unknown label)."""
        from vlmops.data.images import load_image

        labels = list(request["labels"])
        return (
            load_image(base64.b64decode(request["image"])),
            labels,
            np.stack([self.label_vectors[label] for label in labels]),
        )

    def predict(self, items: list) -> list[dict]:
        """One model call for the batch; per item the best label, its probability and all of them."""
        embeddings = self.model.embed_images([image for image, _, _ in items])
        out = []
        for embedding, (_, labels, matrix) in zip(embeddings, items, strict=True):
            logits = self.model.logit_scale * (matrix @ embedding)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            best = int(probs.argmax())
            out.append(
                {
                    "label": labels[best],
                    "confidence": float(probs[best]),
                    "probabilities": {label: float(p) for label, p in zip(labels, probs, strict=True)},
                }
            )
        return out
