"""LitServe 0.2.19 server for `bench/serve_peers.py`: `python litserve_app.py PORT` (from this folder).

Dynamic batching (at most 64, a 5 ms window), 2 inference workers on the CPU with one torch thread each,
the JSON body of the gateway's /v1/classify on the same path.
"""

from __future__ import annotations

import sys

import litserve as ls
from common import EmojiClassifier


class EmojiAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.classifier = EmojiClassifier()

    def decode_request(self, request: dict):
        return self.classifier.decode(request)

    def predict(self, items: list) -> list[dict]:
        return self.classifier.predict(items)

    def encode_response(self, output: dict) -> dict:
        return output


if __name__ == "__main__":
    api = EmojiAPI(max_batch_size=64, batch_timeout=0.005, api_path="/v1/classify")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=2, timeout=10)
    server.run(host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", generate_client_file=False)
