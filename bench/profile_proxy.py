"""Where `vlmops serve --upstream` spends its CPU per proxied chat request: cProfile, no py-spy.

Starts the upstream fake of bench/gateway_proxy.py, then the whole gateway (`build_app` for an
``--upstream`` config, auth off, the default log) in ONE process under cProfile with a per-thread CPU
clock, so only the event loop's thread is measured (the log writer's thread is not: its commits are
off the loop). Drives `--requests` requests per client at `--concurrency` with the bench's aiohttp
client, stops the server, and prints the loop thread's CPU per request grouped by package (a frame's
own time goes to the package its file is in) and the top functions by cumulative time.

    python bench/profile_proxy.py --mode stream --concurrency 16 --requests 20
    python bench/profile_proxy.py --mode plain --src /tmp/old/src   # the same, for another checkout
    python bench/profile_proxy.py --no-profile --repeat 3   # CPU per request from /proc only, unprofiled

With ``--no-profile`` the gateway runs without cProfile and only the /proc CPU per request is printed
(the loop thread and the other threads apart), `--repeat` times: the figure to A/B two checkouts with
(`--src`), as the profiler inflates Python calls several times over.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import os
import pstats
import signal
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from gateway_proxy import drive, free_port, start  # noqa: E402

GROUPS = (  # the first marker found in a frame's file names its package
    ("/vlmops/", "vlmops"),
    ("/httpx/", "httpx"),
    ("/httpcore/", "httpcore"),
    ("/h11/", "h11"),
    ("/anyio/", "anyio"),
    ("/aiohttp/", "aiohttp"),
    ("/yarl/", "yarl"),
    ("/multidict/", "multidict"),
    ("/fastapi/", "fastapi"),
    ("/starlette/", "starlette"),
    ("/pydantic", "pydantic"),
    ("/uvicorn/", "uvicorn"),
    ("/prometheus_client/", "prometheus_client"),
    ("/json/", "json"),
    ("/asyncio/", "asyncio"),
    ("/logging/", "logging"),
)


def serve(port: int, upstream: str, store: str, out: Path) -> None:
    """The gateway in this process, profiled on its loop thread until SIGTERM."""
    import uvicorn

    from vlmops.serve.build import build_app
    from vlmops.serve.service import ServeConfig

    app = build_app(ServeConfig(store=store, upstream=upstream, auth=False))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    if str(out) == "-":  # --no-profile
        server.run()
        return
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    server.run()
    profile.disable()
    profile.dump_stats(out)


def group(filename: str) -> str:
    for marker, name in GROUPS:
        if marker in filename:
            return name
    return "builtins/C" if filename == "~" else Path(filename).name


def report(path: Path, requests: int, top: int) -> None:
    stats = pstats.Stats(str(path))
    total = collections.Counter()
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        total[group(filename)] += tottime
    all_ms = 1000 * sum(total.values()) / requests
    print(f"loop thread CPU (cProfile, thread clock): {all_ms:.2f} ms per request, by package (own time):")
    for name, seconds in total.most_common(14):
        print(f"  {1000 * seconds / requests:6.3f} ms  {name}")
    print(f"top {top} by cumulative time, ms per request:")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][3])  # type: ignore[attr-defined]
    shown = 0
    for (filename, line, name), (_, calls, _, cumtime, _) in rows:
        if group(filename) in ("asyncio", "builtins/C") or name.startswith("<"):
            continue
        where = f"{group(filename)}:{Path(filename).name}:{line} {name}"
        print(f"  {1000 * cumtime / requests:6.3f} ms  {calls / requests:5.1f} calls  {where}")
        shown += 1
        if shown == top:
            break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["plain", "stream"], default="stream")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20, help="per virtual client")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--token-delay-ms", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--src", type=Path, default=BENCH.parent / "src", help="the gateway's source")
    parser.add_argument("--no-profile", action="store_true", help="only the /proc CPU per request")
    parser.add_argument("--repeat", type=int, default=1, help="runs, each with a fresh gateway")
    args = parser.parse_args()
    for _ in range(args.repeat):
        run_once(args)


def run_once(args: argparse.Namespace) -> None:
    """One gateway (profiled unless --no-profile) driven once; prints what it cost."""
    tmp = Path(tempfile.mkdtemp(prefix="profile_proxy_"))
    fake_port, port = free_port(), free_port()
    fake_cmd = [sys.executable, str(BENCH / "gateway_proxy.py"), "--role", "fake", "--port", str(fake_port)]
    fake_cmd += ["--token-delay-ms", str(args.token_delay_ms), "--tokens", str(args.tokens)]
    fake = start(fake_cmd, fake_port, tmp / "fake.log")
    upstream = f"http://127.0.0.1:{fake_port}/v1"
    me = [sys.executable, str(Path(__file__).resolve()), "--role", "gateway", str(port), upstream]
    me += [f"sqlite:///{tmp / 'gw.sqlite'}", "-" if args.no_profile else str(tmp / "prof")]
    gateway = start(me, port, tmp / "gw.log", args.src)
    try:
        before = thread_cpu(gateway.pid)
        result = asyncio.run(drive(port, args.mode == "stream", args.concurrency, args.requests))
        after = thread_cpu(gateway.pid)
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(60)
        fake.terminate()
        fake.wait(10)
    served = args.concurrency * (args.requests + 1) + 1  # with the warm-up and /readyz
    slower = "" if args.no_profile else " (profiled, so slower)"
    print(
        f"{args.mode} c={args.concurrency}: {len(result['latencies'])} requests, "
        f"{len(result['latencies']) / result['seconds']:.1f} req/s{slower}"
    )
    loop_s = after[gateway.pid] - before.get(gateway.pid, 0.0)
    other_s = sum(after.values()) - sum(before.values()) - loop_s
    inflated = "" if args.no_profile else " (inflated by the profiler)"
    print(
        f"CPU while driven (/proc), ms per request: loop thread {1000 * loop_s / served:.3f}{inflated}, "
        f"other threads (log writer, pools) {1000 * other_s / served:.3f}"
    )
    if not args.no_profile:
        report(tmp / "prof", served, args.top)


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid` (the main thread's id is `pid`)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--role"]:
        serve(int(sys.argv[3]), sys.argv[4], sys.argv[5], Path(sys.argv[6]))
    else:
        main()
