"""Local chat generation: batched (`vlmops serve --model builtin:emoji-captioner`, default --max-batch)
vs one request at a time (`--max-batch 1`), tokens per second at the same concurrency, side by side.

Both servers are real `vlmops serve` processes on loopback (one worker, durable log), started one after
the other so they never share the cores; rounds alternate (batched, one-at-a-time, batched, ...) so a
noisy neighbour hits both. Load is closed-loop (vlmops.serve.loadgen) with one pre-built greedy request
(an emoji PNG or a random one and "Describe this emoji with keywords."); every answer is the same, so
tokens/s = answers/s x the completion tokens of one answer (read from its `usage`).

    python bench/chat_batching.py                       # concurrency 16, 2 rounds of 8 s each
    python bench/chat_batching.py --concurrency 16 --seconds 10 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import cpu_seconds, wait_ready

PROMPT = "Describe this emoji with keywords."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0, help="per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=64, help="batched server (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=32)
    return parser.parse_args(argv)


def image_bytes() -> bytes:
    """An installed emoji PNG, or a random 48 px PNG when the emoji data is not installed."""
    found = sorted((Path.home() / ".cache/vlmops/data/emoji").glob("**/google/64/1f600.png"))
    if found:
        return found[0].read_bytes()
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def start(port: int, tmp: Path, max_batch: int) -> subprocess.Popen:
    """`vlmops serve --model builtin:emoji-captioner` with `--max-batch` on `port`."""
    cmd = [
        str(Path(sys.executable).parent / "vlmops"),
        "serve",
        "--model",
        "builtin:emoji-captioner",
        "--port",
        str(port),
        "--insecure-no-auth",
        "--workers",
        "1",
        "--store",
        str(tmp / f"store-{max_batch}.sqlite"),
        "--max-batch",
        str(max_batch),
        "--queue",
        "4096",
        "--timeout",
        "60",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(port, proc)
    return proc


def one_round(max_batch: int, body: dict, args, tmp: Path) -> dict:
    """Start a server, measure one closed-loop run, stop it."""
    from vlmops.serve.loadgen import build_request, run_load

    port = _free_port()
    proc = start(port, tmp, max_batch)
    try:
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60).json()
        tokens = answer["usage"]["completion_tokens"]
        request = build_request("127.0.0.1", port, "/v1/chat/completions", body)
        asyncio.run(run_load("127.0.0.1", port, request, args.concurrency, 10**9, 1.0))  # warm-up
        server0 = cpu_seconds(proc.pid)
        result = asyncio.run(run_load("127.0.0.1", port, request, args.concurrency, 10**9, args.seconds))
        summary = result.summary()
        summary["server_cpu_cores"] = (cpu_seconds(proc.pid) - server0) / result.seconds
        summary["tokens_per_answer"] = tokens
        summary["tokens_per_s"] = summary["per_s"] * tokens
        return summary
    finally:
        proc.terminate()
        proc.wait(60)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    """Print tokens/s of both servers per round, and the ratio of the medians."""
    args = parse_args(argv)
    url = "data:image/png;base64," + base64.b64encode(image_bytes()).decode()
    parts = [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": url}}]
    body = {
        "model": "emoji-captioner",
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
    }
    rates: dict[str, list[float]] = {"batched": [], "one-at-a-time": []}
    print(f"builtin:emoji-captioner, concurrency {args.concurrency}, {args.seconds:g} s per round")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, max_batch in (("batched", args.max_batch), ("one-at-a-time", 1)):
                s = one_round(max_batch, body, args, Path(tmp))
                rates[name].append(s["tokens_per_s"])
                print(
                    f"  round {r + 1} {name:>13} (--max-batch {max_batch:>2}): {s['per_s']:6.1f} answers/s "
                    f"x {s['tokens_per_answer']} tokens = {s['tokens_per_s']:7.1f} tokens/s  "
                    f"p50 {s['p50_ms']:.0f} ms  p99 {s['p99_ms']:.0f} ms  server {s['server_cpu_cores']:.2f} "
                    f"cores  statuses {s['statuses']}",
                    flush=True,
                )
    batched, single = statistics.median(rates["batched"]), statistics.median(rates["one-at-a-time"])
    print(f"median tokens/s: batched {batched:.1f}, one at a time {single:.1f}: {batched / single:.2f}x")


if __name__ == "__main__":
    main()
