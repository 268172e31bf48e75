"""Where the gateway's CPU per request goes: the null-model gateway under load, sampled by py-spy.

Starts `bench/null_gateway.py` (the gateway around a model that costs nothing), drives /v1/classify with
`vlmops.serve.loadgen` (closed loop, keep-alive) and samples every thread of the server with py-spy
(`pip install py-spy`; a sampling profiler outside the process, so the gateway runs unmodified). Each
sample goes to the thread it was taken on and, within it, to the nearest package on its stack (a
json/base64/hashlib/threading call counts for the package that called it; vlmops frames by function),
then to milliseconds of CPU per request: samples / rate / requests. The server's CPU per request is
also measured from /proc, without the profiler, before the profiled run.

    python bench/profile_gateway.py --seconds 8 --concurrency 32
    python bench/profile_gateway.py --src /tmp/old/src --gateway /tmp/old/bench/null_gateway.py  # before
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).parent
sys.path.insert(0, str(BENCH))
from serve_load import cpu_seconds, wait_ready  # noqa: E402

PACKAGES = (  # the first of these met going up from the sampled frame names the sample
    ("vlmops/", None),
    ("fastapi/", "fastapi (routing, dependencies, validation)"),
    ("starlette/", "starlette (routing, middleware, responses)"),
    ("uvicorn/", "uvicorn + httptools (HTTP parsing, writes)"),
    ("prometheus_client/", "prometheus_client (metrics)"),
    ("sqlalchemy/", "sqlalchemy + sqlite (log rows)"),
    ("PIL/", "Pillow (decode, statistics)"),
    ("concurrent/futures/", "thread pool hand-offs"),
    ("asyncio/", "asyncio (tasks, futures)"),
    ("pydantic/", "pydantic (request validation)"),
)


def classify_stack(frames: list[str]) -> str:
    """The component a sampled stack (root first) is charged to."""
    if not frames or "Runner.run (asyncio/runners.py" in frames[-1]:
        return "event loop itself (uvloop: sockets, callbacks)"
    for frame in reversed(frames):
        for marker, name in PACKAGES:
            if marker in frame:
                if name is None:
                    return "vlmops " + frame.split(" (")[0]
                return name
    return "other: " + frames[-1].split(" (")[0]


def summarise(raw: Path, rate: int, requests: int) -> tuple[dict, dict]:
    """(ms per request by thread, ms per request by (thread, component)) from py-spy raw output."""
    threads: collections.Counter = collections.Counter()
    parts: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        name = re.sub(r"^thread \(\d+\): ", "", frames[0])
        name = re.sub(r"_\d+$", "", name)  # vlmops-decode_0, _1 -> one pool
        threads[name] += int(count)
        parts[(name, classify_stack(frames[1:]))] += int(count)
    per = 1000.0 / rate / requests
    return {k: v * per for k, v in threads.items()}, {k: v * per for k, v in parts.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--src", type=Path, default=None, help="PYTHONPATH of the server (another checkout)")
    parser.add_argument("--gateway", type=Path, default=BENCH / "null_gateway.py", help="its null gateway")
    parser.add_argument(
        "--all-threads",
        action="store_true",
        help="sample every thread that is not idle (a thread waiting for the GIL counts as busy); "
        "default: only the thread holding the GIL, the resource one server process runs out of first",
    )
    args = parser.parse_args(argv)
    if shutil.which(args.py_spy) is None and not Path(args.py_spy).is_file():
        parser.error(f"py-spy not found ({args.py_spy}): pip install py-spy, or pass --py-spy PATH")

    from vlmops.data.manifest import resolve_data
    from vlmops.serve.loadgen import build_request, run_load

    image = Path(resolve_data("emoji").query("vendor == 'google'")["image"].iloc[100]).read_bytes()
    body = {"image": base64.b64encode(image).decode(), "labels": ["grinning face", "cat face", "red heart"]}
    port = 8791
    request = build_request("127.0.0.1", port, "/v1/classify", body)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(args.gateway), str(port), str(Path(tmp) / "null.sqlite")]
        env = None if args.src is None else {**os.environ, "PYTHONPATH": str(args.src)}
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            wait_ready(port, server)
            asyncio.run(run_load("127.0.0.1", port, request, args.concurrency, 10**9, 1.0))  # warm-up
            cpu0, wall0 = cpu_seconds(server.pid), time.perf_counter()
            plain = asyncio.run(run_load("127.0.0.1", port, request, args.concurrency, 10**9, args.seconds))
            cpu_ms = 1000 * (cpu_seconds(server.pid) - cpu0) / plain.ok
            plain_rate = plain.ok / (time.perf_counter() - wall0)
            raw = Path(tmp) / "profile.txt"
            spy = subprocess.Popen(
                [args.py_spy, "record", "-p", str(server.pid), "-r", str(args.rate), "-d",
                 str(int(args.seconds)), "--threads", "--nonblocking", "--format", "raw", "-o", str(raw),
                 *([] if args.all_threads else ["--gil"])],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(0.5)  # py-spy attaches
            profiled = asyncio.run(
                run_load("127.0.0.1", port, request, args.concurrency, 10**9, args.seconds)
            )
            spy.wait(60)
        finally:
            server.terminate()
            server.wait(30)
        sampled = profiled.ok * int(args.seconds) / (int(args.seconds) + 1.0)  # requests while sampled
        threads, parts = summarise(raw, args.rate, sampled)
    print(
        f"null-model gateway, /v1/classify, c={args.concurrency}: {plain_rate:.0f} req/s, "
        f"server CPU {cpu_ms:.2f} ms per request (/proc, no profiler)"
    )
    what = "busy" if args.all_threads else "holding the GIL"
    print(f"py-spy ({args.rate} Hz, ~{sampled:.0f} requests while sampled): ms per request {what}, by thread")
    for name, ms in sorted(threads.items(), key=lambda kv: -kv[1]):
        print(f"  {ms:6.3f}  {name}")
    print(f"top {args.top} (thread, component):")
    for (name, part), ms in sorted(parts.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {ms:6.3f}  {name:20s} {part}")


if __name__ == "__main__":
    main()
