"""Ray Serve 2.60 app for `bench/serve_peers.py`: `python ray_app.py PORT TMPDIR` (from this folder).

Starts a private local Ray instance on 127.0.0.1 (2 CPUs, no dashboard UI), then 2 replicas of one
torch thread each behind Serve's HTTP proxy on 127.0.0.1:PORT, with `serve.batch` (at most 64, a 5 ms
window) and max_ongoing_requests at 64 so a replica can hold a full batch. Blocks until terminated.
serve_peers.py sets the environment that keeps Ray on loopback and off the network: usage stats off,
single-node mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: the node address is 127.0.0.1) and a private
HOME whose ray_bootstrap_config.yaml names the provider, so no cloud-metadata server is asked.
Answers are sized JSONResponses: the proxy would otherwise send them chunked, which loadgen does not read.
"""

from __future__ import annotations

import sys
import time

import ray
from common import EmojiClassifier
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse


@serve.deployment(num_replicas=2, max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
class EmojiDeployment:
    def __init__(self) -> None:
        self.classifier = EmojiClassifier()

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def classify(self, requests: list[dict]) -> list[dict]:
        return self.classifier.predict([self.classifier.decode(request) for request in requests])

    async def __call__(self, request: Request) -> JSONResponse:
        return JSONResponse(await self.classify(await request.json()))  # sized, not chunked


if __name__ == "__main__":
    port, tmp = int(sys.argv[1]), sys.argv[2]
    ray.init(
        _node_ip_address="127.0.0.1",
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=tmp,
        configure_logging=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(EmojiDeployment.bind(), route_prefix="/v1/classify")
    while True:
        time.sleep(3600)
