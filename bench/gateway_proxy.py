"""What proxying /v1/chat/completions costs: through vlmops vs straight to the upstream.

The upstream is the OpenAI-compatible fake of the tests (tests/openai_fake.py) in its own process,
answering `--tokens` tokens `--token-delay-ms` apart (a streamed answer sends them as they come; a
plain one waits tokens x delay, then answers), so its own timing is fixed and what differs between the
arms is the proxy. Arms, each its own process on loopback:

- ``direct``: the client talks to the fake.
- ``backend``: a minimal Starlette app in this file around `vlmops.serve.upstream.UpstreamBackend`
  (the proxy's own cost, without the gateway's auth, limits and logging).
- ``aiohttp`` (only when asked for with --arms): the same bare route with aiohttp as the upstream
  client, a sketch to size what swapping httpx would change; not vlmops code.
- ``gateway``: ``vlmops serve --upstream URL --insecure-no-auth`` (the whole gateway); skipped while
  `vlmops serve` has no --upstream option.

For each of streaming / not and each concurrency, the arms run in turn, `--rounds` times, each a
closed loop of `--requests` requests per virtual client (aiohttp when installed: it costs the client
a third of httpx's CPU, which leaves more to the servers on a small machine; else httpx). Reported:
p50 latency, p50 time to the first token (streams), throughput, and for each proxy arm the added p50
latency, added p50 TTFT and the throughput ratio to direct (targets: <= 3 ms, <= 5 ms, >= 0.9).

Server CPU per request is the serving process's own, with all its descendants (the fake's for direct,
the proxy's for the others, the supervisor's and its workers' for the gateway; from /proc at 10 ms
resolution), which the load of other processes on a shared machine inflates far
less than it inflates latency; 1000 / it is the most requests a second one core could carry.

``conns`` is how many connections the client opened, against how many requests it made: one per virtual
client and round when every connection is reused. The client stops reading a stream at ``[DONE]``; if
the answer's end has not arrived with it, aiohttp closes that connection and the next request opens a
new one (whose setup then counts in its latency).

Run: ``python bench/gateway_proxy.py [--arms direct,backend,gateway] [--concurrency 1,16]``
(``--gateway-workers N`` to run the gateway arms with ``--workers N``); with
``--baseline-src DIR`` a ``gw-base`` arm serves the same gateway from another checkout's source, in the
same interleaved rounds (an A/B of a change).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"added_p50_ms": 3.0, "added_ttft_ms": 5.0, "throughput_ratio": 0.9}


# -- the processes -------------------------------------------------------------------------------------


def serve_fake(port: int, token_delay_ms: float, tokens: int, pace: str = "clock") -> None:
    """The upstream: tests/openai_fake.py, no key, a fixed pace: token i of a stream leaves at start +
    i x delay on the fake's own clock (`pace` "sleep": a sleep after each token, so the fake's late
    wake-ups on a busy machine, which the proxy's own CPU causes here, add up over a stream)."""
    import uvicorn

    sys.path.insert(0, str(ROOT / "tests"))
    from openai_fake import FakeServer

    fake = FakeServer(key=None, token_delay_s=token_delay_ms / 1000, extra_tokens=max(0, tokens - 5))
    fake.paced_by_clock = pace == "clock"
    app = fake.app()

    @app.get("/readyz")
    def ready() -> dict:
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def serve_backend(port: int, upstream: str) -> None:
    """The proxy arm without the gateway: UpstreamBackend behind a bare Starlette route."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from vlmops.serve.errors import ApiError
    from vlmops.serve.upstream import UpstreamBackend

    backend = UpstreamBackend(upstream)

    async def chat(request: Request) -> Response:
        body = await request.json()
        deadline = time.monotonic() + 120
        try:
            if not body.get("stream"):
                answer, _ = await backend.complete(body, deadline)
                return Response(json.dumps(answer), media_type="application/json")
            stream = backend.stream(body, deadline)
            first = await stream.__anext__()  # errors before the first byte keep their status
        except ApiError as exc:
            return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, exc.status)

        async def events():
            try:
                yield first
                async for event in stream:
                    yield event
            finally:
                await stream.aclose()

        return StreamingResponse(events(), media_type="text/event-stream")

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]), Route("/readyz", lambda r: Response())]
    uvicorn.run(Starlette(routes=routes), host="127.0.0.1", port=port, log_level="warning")


def serve_aiohttp_proxy(port: int, upstream: str) -> None:
    """A sketch, not vlmops code: the same route with aiohttp as the upstream client, framing and
    parsing every event as UpstreamBackend does, to size what that client would change."""
    import aiohttp
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    state: dict = {}

    async def chat(request: Request) -> Response:
        if "session" not in state:
            state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        body = await request.json()
        url = upstream + "/chat/completions"
        if not body.get("stream"):
            async with state["session"].post(url, json=body) as response:
                answer = json.loads(await response.read())
            return Response(json.dumps(answer), media_type="application/json")
        payload = {**body, "stream_options": {"include_usage": True}}
        response = await state["session"].post(url, json=payload)

        async def events():
            buffer = b""
            try:
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    while (end := buffer.find(b"\n\n")) >= 0:
                        block, buffer = buffer[:end], buffer[end + 2 :]
                        data = block[6:]
                        if data != b"[DONE]":
                            chunk_json = json.loads(data)
                            if not chunk_json["choices"]:
                                continue
                        yield block + b"\n\n"
            finally:
                response.release()

        return StreamingResponse(events(), media_type="text/event-stream")

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]), Route("/readyz", lambda r: Response())]
    uvicorn.run(Starlette(routes=routes), host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(cmd: list[str], port: int, log: Path, src: Path = ROOT / "src") -> subprocess.Popen:
    """Start a server process (with `src` first on its path) and wait for its /readyz."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}: {log.read_text()[-1500:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd[:3]} not ready: {log.read_text()[-1500:]}")


def gateway_has_upstream() -> bool:
    """Whether this checkout's `vlmops serve` has the --upstream option yet."""
    cmd = [str(Path(sys.executable).parent / "vlmops"), "serve", "--help"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    return "--upstream" in out.stdout


# -- the load ------------------------------------------------------------------------------------------


def request_body(stream: bool) -> dict:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (220, 30, 30)).save(buffer, "PNG")
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "text", "text": "Describe it"}, {"type": "image_url", "image_url": {"url": image}}]
    return {"model": "fake-vlm", "messages": [{"role": "user", "content": content}], "stream": stream}


def first_token(line: bytes) -> bool:
    """Whether an SSE line carries answer text."""
    if not line.startswith(b"data: {"):
        return False
    choices = json.loads(line[6:])["choices"]
    return bool(choices and choices[0]["delta"].get("content"))


async def one_httpx(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, float | None]:
    """(latency, time to the first token or None) of one request, in seconds."""
    start, first = time.perf_counter(), None
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        if not body["stream"]:
            assert json.loads(await response.aread())["choices"][0]["message"]["content"]
            return time.perf_counter() - start, None
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                break
            if first is None and first_token(line.encode()):
                first = time.perf_counter() - start
    assert first is not None, "no token arrived"
    return time.perf_counter() - start, first


async def one_aiohttp(session, url: str, body: dict) -> tuple[float, float | None]:
    """`one_httpx` with aiohttp: the same measurement at a third of the client CPU."""
    start, first = time.perf_counter(), None
    async with session.post(url, json=body) as response:
        if response.status != 200:  # with the body: which error it was
            raise RuntimeError(f"{url} answered {response.status}: {(await response.read())[:400]!r}")
        if not body["stream"]:
            assert json.loads(await response.read())["choices"][0]["message"]["content"]
            return time.perf_counter() - start, None
        async for line in response.content:
            if line.startswith(b"data: [DONE]"):
                break
            if first is None and first_token(line):
                first = time.perf_counter() - start
    assert first is not None, "no token arrived"
    return time.perf_counter() - start, first


async def drive(port: int, stream: bool, concurrency: int, per_client: int) -> dict:
    """A closed loop of `concurrency` clients, `per_client` requests each (after one warm-up each)."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = request_body(stream)
    opened = []  # connections the client opened (aiohttp): more than `concurrency` means some were not reused
    try:
        import aiohttp

        async def on_opened(*_) -> None:
            opened.append(1)

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(on_opened)
        connector = aiohttp.TCPConnector(limit=concurrency)
        client = aiohttp.ClientSession(connector=connector, trace_configs=[trace])
        one = one_aiohttp
    except ImportError:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        client = httpx.AsyncClient(limits=limits, timeout=60, trust_env=False)
        one = one_httpx
    async with client:
        await asyncio.gather(*(one(client, url, body) for _ in range(concurrency)))  # warm-up
        results: list[tuple[float, float | None]] = []

        async def loop() -> None:
            for _ in range(per_client):
                results.append(await one(client, url, body))

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return {
        "latencies": [r[0] for r in results],
        "ttfts": [r[1] for r in results if r[1]],
        "seconds": seconds,
        "connections": len(opened) or None,
    }


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children...), read from /proc (what
    psutil's ``children(recursive=True)`` does; psutil is not a dependency)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue  # exited while we looked
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def cpu_s(pid: int) -> float:
    """User + system CPU seconds used by a process and all its live descendants (the gateway serves
    from worker processes under its supervisor; Linux /proc)."""
    total = 0
    for one in (pid, *descendants(pid)):
        try:
            fields = _stat(one)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def summarise(runs: list[dict]) -> dict:
    latencies = np.concatenate([r["latencies"] for r in runs]) * 1000
    ttfts = np.concatenate([r["ttfts"] for r in runs]) * 1000 if runs[0]["ttfts"] else None
    requests = sum(len(r["latencies"]) for r in runs)
    return {
        "p50_ms": float(np.median(latencies)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "ttft_p50_ms": float(np.median(ttfts)) if ttfts is not None else None,
        "per_s": requests / sum(r["seconds"] for r in runs),
        "requests": requests,
        "server_cpu_ms": 1000 * sum(r["server_cpu_s"] for r in runs) / sum(r["served"] for r in runs),
        "connections": sum(r.get("connections") or 0 for r in runs) or None,
    }


def compare(rows: dict[str, dict]) -> dict[str, dict]:
    """Each proxy arm against direct: added p50, added TTFT, throughput ratio, and the verdicts."""
    direct, out = rows["direct"], {}
    for arm, row in rows.items():
        if arm == "direct":
            continue
        delta = {
            "added_p50_ms": row["p50_ms"] - direct["p50_ms"],
            "throughput_ratio": row["per_s"] / direct["per_s"],
        }
        if row["ttft_p50_ms"] is not None:
            delta["added_ttft_ms"] = row["ttft_p50_ms"] - direct["ttft_p50_ms"]
        delta["meets"] = all(
            (delta[k] >= t) if k == "throughput_ratio" else (delta[k] <= t)
            for k, t in TARGETS.items()
            if k in delta
        )
        out[arm] = delta
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", default="direct,backend,gateway")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--modes", default="plain,stream")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--token-delay-ms", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=20, help="per virtual client per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--fake-pace",
        choices=["clock", "sleep"],
        default="clock",
        help="the upstream's streamed tokens on its own clock (default), or a sleep after each (before "
        "session 12: its late wake-ups, from the proxy's CPU on this machine, lengthened proxied streams)",
    )
    parser.add_argument(
        "--log-sync",
        choices=["full", "group"],
        default="full",
        help="--log-sync of the gateway arms: full (the gateway's default: each commit fsync'd before its "
        "answers leave) or group (committed before they leave, fsync'd in the background)",
    )
    parser.add_argument(
        "--gateway-workers", type=int, help="--workers for the gateway arms (default: the gateway's own)"
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="another checkout's src/ (e.g. from `git archive`): adds a `gw-base` arm, the whole gateway "
        "from that code, run interleaved with the others",
    )
    args = parser.parse_args()
    arms = args.arms.split(",")
    if "gateway" in arms and not gateway_has_upstream():
        print("gateway arm skipped: this checkout's `vlmops serve` has no --upstream option yet")
        arms.remove("gateway")

    tmp = Path(tempfile.mkdtemp(prefix="gateway_proxy_"))
    workers = [] if args.gateway_workers is None else ["--workers", str(args.gateway_workers)]
    workers += ["--log-sync", args.log_sync]
    me, procs, ports = [sys.executable, str(Path(__file__).resolve())], {}, {}
    try:
        ports["direct"] = free_port()
        fake_cmd = ["--role", "fake", "--port", str(ports["direct"]), "--token-delay-ms"]
        fake_cmd += [str(args.token_delay_ms), "--tokens", str(args.tokens), "--pace", args.fake_pace]
        procs["direct"] = start(me + fake_cmd, ports["direct"], tmp / "fake.log")
        upstream = f"http://127.0.0.1:{ports['direct']}/v1"
        if "backend" in arms:
            ports["backend"] = free_port()
            cmd = [*me, "--role", "backend", "--port", str(ports["backend"]), "--upstream", upstream]
            procs["backend"] = start(cmd, ports["backend"], tmp / "backend.log")
        if "aiohttp" in arms:
            ports["aiohttp"] = free_port()
            cmd = [*me, "--role", "aiohttp", "--port", str(ports["aiohttp"]), "--upstream", upstream]
            procs["aiohttp"] = start(cmd, ports["aiohttp"], tmp / "aiohttp.log")
        if "gateway" in arms:
            ports["gateway"] = free_port()
            cmd = [str(Path(sys.executable).parent / "vlmops"), "serve", "--upstream", upstream]
            cmd += ["--port", str(ports["gateway"]), "--insecure-no-auth", "--store", str(tmp / "gw.sqlite")]
            cmd += workers
            procs["gateway"] = start(cmd, ports["gateway"], tmp / "gateway.log")
        if args.baseline_src:  # the same gateway from another checkout's src, interleaved (an A/B)
            arms.append("gw-base")
            ports["gw-base"] = free_port()
            cmd = [str(Path(sys.executable).parent / "vlmops"), "serve", "--upstream", upstream]
            cmd += ["--port", str(ports["gw-base"]), "--insecure-no-auth", "--store", str(tmp / "b.sqlite")]
            cmd += workers
            procs["gw-base"] = start(cmd, ports["gw-base"], tmp / "gw-base.log", args.baseline_src.resolve())
        report = run_all(arms, ports, {arm: p.pid for arm, p in procs.items()}, args)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(10)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def run_all(
    arms: list[str], ports: dict[str, int], pids: dict[str, int], args: argparse.Namespace
) -> list[dict]:
    print(
        f"upstream: tests/openai_fake.py, {args.tokens} tokens {args.token_delay_ms:g} ms apart; "
        f"{args.rounds} rounds x {args.requests} requests per client"
    )
    report = []
    for mode in args.modes.split(","):
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            runs: dict[str, list[dict]] = {arm: [] for arm in arms}
            for _ in range(args.rounds):
                for arm in arms:  # interleaved, so drifting machine load hits every arm alike
                    cpu = cpu_s(pids[arm])
                    result = asyncio.run(drive(ports[arm], mode == "stream", concurrency, args.requests))
                    result["server_cpu_s"] = cpu_s(pids[arm]) - cpu
                    result["served"] = concurrency * (args.requests + 1)  # with the warm-up
                    runs[arm].append(result)
            rows = {arm: summarise(r) for arm, r in runs.items()}
            deltas = compare(rows)
            report.append({"mode": mode, "concurrency": concurrency, "arms": rows, "vs_direct": deltas})
            print_rows(mode, concurrency, rows, deltas)
    return report


def print_rows(mode: str, concurrency: int, rows: dict[str, dict], deltas: dict[str, dict]) -> None:
    for arm, row in rows.items():
        ttft = f"  ttft p50 {row['ttft_p50_ms']:7.2f} ms" if row["ttft_p50_ms"] is not None else ""
        line = (
            f"{mode:6} c={concurrency:<3} {arm:8} p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms"
            f"{ttft}  {row['per_s']:7.1f} req/s  server cpu {row['server_cpu_ms']:5.2f} ms/req"
            f" (at most {1000 / max(row['server_cpu_ms'], 1e-9):5.0f} req/s a core)"
        )
        if row.get("connections"):  # the client's: one per virtual client and round when all are reused
            line += f"  conns {row['connections']:4d}/{row['requests']}"
        if arm in deltas:
            d = deltas[arm]
            added_ttft = f"  +ttft {d['added_ttft_ms']:+.2f} ms" if "added_ttft_ms" in d else ""
            line += (
                f"  | +p50 {d['added_p50_ms']:+.2f} ms{added_ttft}  x{d['throughput_ratio']:.3f}"
                f"  {'meets' if d['meets'] else 'MISSES'} targets"
            )
        print(line, flush=True)


if __name__ == "__main__":
    if "--role" in sys.argv:
        role = argparse.ArgumentParser()
        role.add_argument("--role", choices=["fake", "backend", "aiohttp"])
        role.add_argument("--port", type=int)
        role.add_argument("--token-delay-ms", type=float, default=5.0)
        role.add_argument("--tokens", type=int, default=32)
        role.add_argument("--upstream")
        role.add_argument("--pace", choices=["clock", "sleep"], default="clock")
        a = role.parse_args()
        if a.role == "fake":
            serve_fake(a.port, a.token_delay_ms, a.tokens, a.pace)
        elif a.role == "aiohttp":
            serve_aiohttp_proxy(a.port, a.upstream)
        else:
            serve_backend(a.port, a.upstream)
    else:
        main()
