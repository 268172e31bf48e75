"""Hostile clients beside a normal one, against a real `vlmops serve` on loopback (issue 13's probes).

    python bench/serve_hostile.py                 # 15 s per phase
    python bench/serve_hostile.py --seconds 10

(a) lone surrogates: 8 clients of a normal key embed fresh texts while 2 clients of another key send
    {"texts": ["\\ud800"]}; (b) fair use: a normal key classifies (4 clients, three labels) alone, then
    beside 2 clients of two other keys that each send 500 new 200-character labels per request;
(c) memory: 64 concurrent classify requests with a 2 KB PNG that declares 4000 x 4000 pixels.
Every request goes to 127.0.0.1; each phase is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import rss_mb, wait_ready

PORT = 8795


def _png(size: tuple[int, int], mode: str = "RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, 0 if mode == "1" else (200, 40, 40)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def _loop(client, key: str, body_of, seconds: float, out: dict) -> None:
    """Closed loop: post until `seconds` pass; statuses and 200 latencies into `out`."""
    end, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        path, body = body_of(n)
        n += 1
        t0 = time.perf_counter()
        try:
            r = await client.post(
                path,
                content=json.dumps(body).encode(),  # keeps a lone surrogate as the JSON escape \ud800
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            out["statuses"][r.status_code] += 1
            if r.status_code == 200:
                out["latency"].append(time.perf_counter() - t0)
        except httpx.HTTPError as exc:
            out["statuses"][type(exc).__name__] += 1


def _new() -> dict:
    return {"statuses": Counter(), "latency": []}


def _show(name: str, out: dict, seconds: float) -> str:
    lat = np.asarray(out["latency"]) * 1000
    p = f"p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms" if len(lat) else "-"
    ok = out["statuses"].get(200, 0)
    return f"  {name:34s} {dict(out['statuses'])}  ({ok / seconds:.1f} answers/s, {p})"


async def surrogates(keys: dict, seconds: float) -> None:
    """(a) 2 clients sending a lone surrogate beside 8 normal clients embedding fresh texts."""
    normal, bad = _new(), _new()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=60) as client:
        tasks = [
            _loop(
                client,
                keys["normal"],
                lambda n, k=k: ("/v1/embeddings", {"texts": [f"client {k} text {n}"]}),
                seconds,
                normal,
            )
            for k in range(8)
        ]
        tasks += [
            _loop(client, keys["hostile1"], lambda n: ("/v1/embeddings", {"texts": ["\ud800"]}), seconds, bad)
            for _ in range(2)
        ]
        await asyncio.gather(*tasks)
    print("(a) lone surrogates")
    print(_show("normal key, 8 clients", normal, seconds))
    print(_show("hostile key, 2 clients (\\ud800)", bad, seconds))


async def fair_use(keys: dict, seconds: float) -> None:
    """(b) a normal key's classify alone, then beside two keys sending 500 new long labels each."""
    image = _png((64, 64))

    def classify(n):
        return "/v1/classify", {"image": image, "labels": ["grinning face", "cat face", "red heart"]}

    def flood(seed):
        def body(n):
            labels = [f"{seed} {n} {i} " + "x" * 185 for i in range(500)]
            return "/v1/classify", {"image": image, "labels": [label[:200] for label in labels]}

        return body

    print("(b) fair use of the model")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=60) as client:
        alone = _new()
        await asyncio.gather(*(_loop(client, keys["normal"], classify, seconds, alone) for _ in range(4)))
        print(_show("normal key alone, 4 clients", alone, seconds))
        beside, hostile = _new(), _new()
        tasks = [_loop(client, keys["normal"], classify, seconds, beside) for _ in range(4)]
        tasks += [_loop(client, keys[f"hostile{k}"], flood(k), seconds, hostile) for k in (1, 2)]
        await asyncio.gather(*tasks)
        print(_show("normal key beside the flood", beside, seconds))
        print(_show("2 hostile keys, 500 new labels", hostile, seconds))


async def memory(keys: dict, pid: int) -> None:
    """(c) 64 concurrent requests with a 2 KB PNG of 4000 x 4000 pixels."""
    huge = _png((4000, 4000), "1")
    before = rss_mb(pid)
    peak = [before]
    out = _new()

    async def sample(stop: asyncio.Event) -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            await asyncio.sleep(0.1)

    async def one(client) -> None:
        t0 = time.perf_counter()
        headers = {"Authorization": f"Bearer {keys['hostile1']}"}
        try:
            r = await client.post("/v1/classify", json=body, headers=headers)
        except httpx.HTTPError as exc:
            out["statuses"][type(exc).__name__] += 1
            return
        out["statuses"][r.status_code] += 1
        out["latency"].append(time.perf_counter() - t0)

    body = {"image": huge, "labels": ["a", "b"]}
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(stop))
    limits = httpx.Limits(max_connections=64)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=120, limits=limits) as client:
        await asyncio.gather(*(one(client) for _ in range(64)))
    wall = time.perf_counter() - t0
    stop.set()
    await sampler
    await asyncio.sleep(5)
    print("(c) 64 concurrent 4000x4000 PNGs (2 KB each)")
    print(
        f"  statuses {dict(out['statuses'])}, slowest {max(out['latency']):.1f} s, all in {wall:.1f} s; "
        f"server RSS {before:.0f} MiB "
        f"before, peak {peak[0]:.0f}, {rss_mb(pid):.0f} after 5 s idle"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per phase")
    args = parser.parse_args(argv)
    import subprocess

    from vlmops.serve.keys import KeyStore

    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store.sqlite")
        keys = {
            name: KeyStore(store).create(name, rate_per_s=10_000, burst=10_000)
            for name in ("normal", "hostile1", "hostile2")
        }
        cmd = [str(Path(sys.executable).parent / "vlmops"), "serve", "--port", str(PORT), "--store", store]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(PORT, proc)
            asyncio.run(surrogates(keys, args.seconds))
            asyncio.run(fair_use(keys, args.seconds))
            asyncio.run(memory(keys, proc.pid))
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
