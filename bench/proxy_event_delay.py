"""When each streamed event reaches the client: straight from the upstream vs through the proxy.

`bench/gateway_proxy.py` reports a stream's added p50 at its end; this says where along the stream it
was added. One client (concurrency 1) reads streamed answers from each arm (direct, backend, gateway;
the same processes as gateway_proxy.py) in interleaved rounds and stamps every event's arrival; the
table gives, per event index, the median arrival through each proxy arm minus the median direct. A
proxy that keeps up adds the same delay to every event and a little more to `[DONE]` (the gateway
commits the exchange's log row first); a delay that grows along the stream is the upstream's pace
changing, not the proxy: with ``--fake-pace sleep`` (a sleep after each token, how the fake paced
before session 12) the fake's late wake-ups on a busy 2-core machine, which the proxy's CPU causes,
add up over the 32 tokens.

    python bench/proxy_event_delay.py [--fake-pace clock|sleep] [--rounds 3] [--requests 15]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gateway_proxy import free_port, request_body, start

ARMS = ("direct", "backend", "gateway")


async def arrivals(port: int, requests: int) -> np.ndarray:
    """Milliseconds from sending each request to each `data:` event of its answer (after two warm-ups)."""
    import aiohttp

    url, body, rows = f"http://127.0.0.1:{port}/v1/chat/completions", request_body(True), []
    async with aiohttp.ClientSession() as session:
        for index in range(requests + 2):
            start_s, stamps = time.perf_counter(), []
            async with session.post(url, json=body) as response:
                async for line in response.content:
                    if line.startswith(b"data: "):
                        stamps.append(time.perf_counter() - start_s)
                    if line.startswith(b"data: [DONE]"):
                        break
            if index >= 2:
                rows.append(stamps)
    return np.array(rows) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fake-pace", choices=["clock", "sleep"], default="clock")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=15, help="per arm per round")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="proxy_event_delay_"))
    me = [sys.executable, str(Path(__file__).resolve().parent / "gateway_proxy.py")]
    ports = {arm: free_port() for arm in ARMS}
    procs = {}
    try:
        fake = ["--role", "fake", "--port", str(ports["direct"]), "--pace", args.fake_pace]
        procs["direct"] = start(me + fake, ports["direct"], tmp / "fake.log")
        upstream = f"http://127.0.0.1:{ports['direct']}/v1"
        backend = ["--role", "backend", "--port", str(ports["backend"]), "--upstream", upstream]
        procs["backend"] = start(me + backend, ports["backend"], tmp / "backend.log")
        gateway = [str(Path(sys.executable).parent / "vlmops"), "serve", "--upstream", upstream, "--port"]
        gateway += [str(ports["gateway"]), "--insecure-no-auth", "--store", str(tmp / "gateway.sqlite")]
        procs["gateway"] = start(gateway, ports["gateway"], tmp / "gateway.log")
        runs: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
        for _ in range(args.rounds):
            for arm in ARMS:
                runs[arm].append(asyncio.run(arrivals(ports[arm], args.requests)))
    finally:
        for proc in procs.values():
            proc.terminate()

    median = {arm: np.median(np.concatenate(runs[arm]), axis=0) for arm in ARMS}
    events = len(median["direct"])
    shown = sorted({0, 1, 2, 8, 16, 24, events - 3, events - 2, events - 1})
    print(f"fake pace: {args.fake_pace}; {args.rounds} rounds x {args.requests} streams an arm, c=1")
    print("event index           " + " ".join(f"{i:>6d}" for i in shown) + "   (last: [DONE])")
    print("direct arrival ms     " + " ".join(f"{median['direct'][i]:6.1f}" for i in shown))
    for arm in ARMS[1:]:
        added = median[arm] - median["direct"]
        print(f"{arm + ' added ms':<22}" + " ".join(f"{added[i]:+6.2f}" for i in shown))


if __name__ == "__main__":
    main()
