"""CPU an HTTP client spends reading SSE chat streams: httpx (UpstreamBackend's client until issue 17's
work moved it to aiohttp) vs aiohttp.

bench/gateway_proxy.py shows the proxy's CPU per streamed answer is mostly its upstream client's; this
measures that part alone, against the same fake upstream (tests/openai_fake.py in its own process), as
process CPU time of the reading loop only (clients made and warmed up first), so the load of other
processes on a shared machine barely moves it. aiohttp is not a vlmops dependency; it is here only to
size what another client would save.

Run: ``python bench/sse_client_cpu.py [--streams 64] [--tokens 32]``
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_proxy import free_port, request_body, start


async def with_httpx(url: str, concurrency: int, streams: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(trust_env=False, limits=limits) as client:

        async def one() -> None:
            async with client.stream("POST", url, json=request_body(True)) as response:
                async for _ in response.aiter_raw():
                    pass

        return await timed(one, concurrency, streams)


async def with_aiohttp(url: str, concurrency: int, streams: int) -> float:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one() -> None:
            async with session.post(url, json=request_body(True)) as response:
                async for _ in response.content.iter_any():
                    pass

        return await timed(one, concurrency, streams)


async def timed(one, concurrency: int, streams: int) -> float:
    """CPU seconds for `streams` streams, `concurrency` at a time, after one warm-up round."""
    await asyncio.gather(*(one() for _ in range(concurrency)))
    start = time.process_time()
    for _ in range(streams // concurrency):
        await asyncio.gather(*(one() for _ in range(concurrency)))
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--token-delay-ms", type=float, default=2.0)
    args = parser.parse_args()
    port, tmp = free_port(), Path(tempfile.mkdtemp(prefix="sse_client_cpu_"))
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "gateway_proxy.py"), "--role", "fake"]
    cmd += ["--port", str(port), "--token-delay-ms", str(args.token_delay_ms), "--tokens", str(args.tokens)]
    fake: subprocess.Popen = start(cmd, port, tmp / "fake.log")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        for concurrency in (1, 16):
            for name, fn in (("httpx", with_httpx), ("aiohttp", with_aiohttp)) * 2:
                cpu = asyncio.run(fn(url, concurrency, args.streams))
                per = 1000 * cpu / (args.streams // concurrency * concurrency)
                print(
                    f"c={concurrency:<3} {name:8} {per:6.2f} ms CPU per {args.tokens}-token stream",
                    flush=True,
                )
    finally:
        fake.terminate()
        fake.wait(10)


if __name__ == "__main__":
    main()
