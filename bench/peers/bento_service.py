"""BentoML 1.4 service for `bench/serve_peers.py`: one batchable API, 2 workers, one torch thread each.

Run from this folder: `bentoml serve bento_service:EmojiService --host 127.0.0.1 --port PORT`. The body
is a JSON list of requests (a batchable API's root input); the client sends one request per call, and
BentoML's adaptive dispatcher batches calls (at most 64; its wait is adaptive, bounded by
max_latency_ms, which plays the role of the gateway's 10 s --timeout).
"""

from __future__ import annotations

import bentoml
from common import EmojiClassifier


@bentoml.service(workers=2, traffic={"timeout": 10})
class EmojiService:
    def __init__(self) -> None:
        self.classifier = EmojiClassifier()

    @bentoml.api(route="/v1/classify", batchable=True, max_batch_size=64, max_latency_ms=10_000)
    def classify(self, requests: list[dict], /) -> list[dict]:
        return self.classifier.predict([self.classifier.decode(request) for request in requests])
