"""Serving throughput: `vlmops serve` (dynamic batching, durable log) vs a naive one-request-one-forward
server, both on loopback with the same model, plus the offline batched ceiling of the same runtime and
the gateway around a model that costs nothing (`null-model`: what HTTP, decoding and logging alone allow).

Load comes from vlmops.serve.loadgen (closed-loop asyncio clients on keep-alive connections, one
pre-built request). The client shares the 2 cores with the server, so its CPU time is reported too.

    python bench/serve_load.py                      # concurrency 1, 8, 32, 64; 8 s each
    python bench/serve_load.py --seconds 4 --concurrency 1 32
    python bench/serve_load.py --open-loop          # capacity, then 2x capacity open loop for 60 s
    python bench/serve_load.py --baseline-src /tmp/old/src --servers vlmops baseline  # side by side

`vlmops` is `vlmops serve` with its default flags (workers and threads from the cores, the runtime
`auto` picks, group-synced log); `vlmops-1w` the same with `--workers 1`, `vlmops-torch` with
`--runtime torch` (what `auto` picks when no ONNX export is cached); `baseline` is `vlmops serve`
with its default flags from another checkout's source (`--baseline-src`), for before/after in one run.

`--open-loop` measures the gateway's capacity (closed loop, concurrency 32), then sends requests at
`--load-factor` times that rate whatever the answers (an open loop: latency counts from when a request
was due), while a thread asks /healthz every 0.25 s and samples the server's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).parent
SERVERS = ("vlmops", "vlmops-1w", "vlmops-torch", "baseline", "naive", "null-model")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int | None = None) -> float:
    """User+system CPU seconds of a process and its live children (this process when pid is None)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1]: parent pid (uvicorn workers)
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Block until /readyz answers 200."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError("server did not become ready")


def start(
    kind: str,
    port: int,
    tmp: Path,
    max_batch: int,
    extra: tuple[str, ...] = ("--queue", "4096"),
    baseline_src: Path | None = None,
) -> subprocess.Popen:
    """Start one of SERVERS on `port` (`extra`: more `vlmops serve` options)."""
    env = None
    if kind == "naive":
        cmd = [sys.executable, str(BENCH / "naive_server.py"), str(port)]
    elif kind == "null-model":
        cmd = [sys.executable, str(BENCH / "null_gateway.py"), str(port), str(tmp / "null.sqlite")]
    else:
        labels = tmp / "labels.txt"
        labels.write_text("grinning face\ncat face\nred heart\n")
        cmd = [
            str(Path(sys.executable).parent / "vlmops"),
            "serve",
            "--port",
            str(port),
            "--insecure-no-auth",
            "--store",
            str(tmp / "store.sqlite"),
            "--label-set",
            f"bench={labels}",
            "--vocabulary",
            str(labels),
            *(["--workers", "1"] if kind == "vlmops-1w" else []),
            *(["--runtime", "torch"] if kind == "vlmops-torch" else []),
            "--max-batch",
            str(max_batch),
            *extra,
        ]
        if kind == "baseline":
            if baseline_src is None:
                raise SystemExit("server 'baseline' needs --baseline-src DIR (another checkout's src)")
            env = {**os.environ, "PYTHONPATH": str(baseline_src)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_ready(port, proc)
    return proc


def drive(port: int, pid: int, image: bytes, concurrency: int, seconds: float) -> dict:
    """One closed-loop run; throughput, latency and CPU use of client and server."""
    from vlmops.serve.loadgen import build_request, run_load

    body = {"image": base64.b64encode(image).decode(), "labels": ["grinning face", "cat face", "red heart"]}
    request = build_request("127.0.0.1", port, "/v1/classify", body)
    asyncio.run(run_load("127.0.0.1", port, request, concurrency, 10**9, 1.0))  # warm-up
    client0, server0, wall0 = cpu_seconds(), cpu_seconds(pid), time.perf_counter()
    result = asyncio.run(run_load("127.0.0.1", port, request, concurrency, 10**9, seconds))
    wall = time.perf_counter() - wall0
    summary = result.summary()
    summary["client_cpu_cores"] = (cpu_seconds() - client0) / wall
    summary["server_cpu_cores"] = (cpu_seconds(pid) - server0) / wall
    return summary


def rss_mb(pid: int) -> float:
    """Resident memory in MiB of a process and its live children (the worker processes of `--workers N`)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(entry.name) != pid and int(_stat(int(entry.name))[1]) != pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def open_loop(port: int, pid: int, image: bytes, args: argparse.Namespace) -> dict:
    """Capacity (closed loop), then an open loop at load_factor x capacity with /healthz and RSS probes."""
    import threading

    from vlmops.serve.loadgen import build_request, run_load, run_open_loop

    body = {"image": base64.b64encode(image).decode(), "labels": ["grinning face", "cat face", "red heart"]}
    request = build_request("127.0.0.1", port, "/v1/classify", body)
    asyncio.run(run_load("127.0.0.1", port, request, 32, 10**9, 1.0))  # warm-up
    capacity = asyncio.run(run_load("127.0.0.1", port, request, 32, 10**9, args.seconds)).summary()["per_s"]
    rate = args.load_factor * capacity
    health: list[float] = []
    rss = [rss_mb(pid)]
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=10) as client:
            while not done.wait(0.25):
                t0 = time.perf_counter()
                try:
                    ok = client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                health.append(time.perf_counter() - t0 if ok else float("inf"))
                rss.append(rss_mb(pid))

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        result = asyncio.run(
            run_open_loop(
                "127.0.0.1", port, request, rate, args.open_seconds, args.connections, 4 * args.server_timeout
            )
        )
    finally:
        done.set()
        prober.join()
    time.sleep(5)
    summary = result.summary()
    return {
        "capacity_per_s": capacity,
        "offered_per_s": rate,
        **summary,
        "healthz_max_s": max(health),
        "healthz_p99_s": float(sorted(health)[int(0.99 * (len(health) - 1))]),
        "healthz_probes": len(health),
        "rss_mb_before": rss[0],
        "rss_mb_peak": max(rss),
        "rss_mb_idle_after": rss_mb(pid),
    }


def main_open_loop(args: argparse.Namespace, image: bytes) -> None:
    """The --open-loop run against one `vlmops serve` with its default queue and --timeout."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = ("--timeout", str(args.server_timeout), "--queue", str(args.queue))
        proc = start("vlmops", 8790, Path(tmp), args.max_batch, extra)
        try:
            out = open_loop(8790, proc.pid, image, args)
        finally:
            proc.terminate()
            proc.wait(30)
    print(
        f"capacity {out['capacity_per_s']:.1f} req/s (closed loop, c=32); offered {out['offered_per_s']:.1f} "
        f"req/s for {args.open_seconds:g} s (open loop, {args.load_factor:g}x)\n"
        f"answers {out['statuses']}, connection errors {out['errors']}, "
        f"unanswered after {4 * args.server_timeout:g} s {out['abandoned']}; "
        f"200s: {out['per_s']:.1f}/s, p50 {out['p50_ms']:.0f} ms, p99 {out['p99_ms']:.0f} ms "
        f"(server --timeout {args.server_timeout:g} --queue {args.queue})\n"
        f"/healthz: max {out['healthz_max_s'] * 1000:.0f} ms, p99 {out['healthz_p99_s'] * 1000:.0f} ms "
        f"over {out['healthz_probes']} probes\n"
        f"server RSS: {out['rss_mb_before']:.0f} MiB before, peak {out['rss_mb_peak']:.0f}, "
        f"{out['rss_mb_idle_after']:.0f} after 5 s idle",
        flush=True,
    )
    _write(args.json, [out], {})


def offline_ceiling(image: bytes, seconds: float) -> dict:
    """Images/s of the same model in-process at batch 32: model only, and decode + model."""
    from vlmops.data.images import load_image
    from vlmops.models import load_model

    model = load_model("builtin:emoji-lit")
    batch = [load_image(image) for _ in range(32)]
    model.embed_images(batch)
    out = {}
    for name, work in (
        ("model_only", lambda: model.embed_images(batch)),
        ("decode_and_model", lambda: model.embed_images([load_image(image) for _ in range(32)])),
    ):
        n, start, cpu0 = 0, time.perf_counter(), cpu_seconds()
        while time.perf_counter() - start < seconds:
            work()
            n += 32
        out[name] = n / (time.perf_counter() - start)
        out[f"{name}_cpu_ms_per_image"] = 1000 * (cpu_seconds() - cpu0) / n
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--servers", nargs="+", default=None, choices=SERVERS, help="default: not baseline")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians are reported")
    parser.add_argument("--baseline-src", type=Path, default=None, help="src folder of the 'baseline' server")
    parser.add_argument("--open-loop", action="store_true", help="capacity, then an open loop above it")
    parser.add_argument("--load-factor", type=float, default=2.0, help="open loop rate / capacity")
    parser.add_argument("--open-seconds", type=float, default=60.0, help="open loop duration")
    parser.add_argument("--connections", type=int, default=1024, help="open loop: most connections")
    parser.add_argument("--queue", type=int, default=512, help="open loop: the server's --queue")
    parser.add_argument("--server-timeout", type=float, default=10.0, help="the server's --timeout")
    args = parser.parse_args(argv)
    if args.servers is None:
        args.servers = [kind for kind in SERVERS if kind != "baseline" or args.baseline_src]

    from vlmops.data.manifest import resolve_data

    image = Path(resolve_data("emoji").query("vendor == 'google'")["image"].iloc[100]).read_bytes()
    if args.open_loop:
        return main_open_loop(args, image)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        procs: dict[str, subprocess.Popen] = {}
        try:  # every server up at once (an idle one costs memory only): the points interleave
            for i, kind in enumerate(args.servers):
                folder = Path(tmp) / kind
                folder.mkdir()
                procs[kind] = start(kind, 8700 + i, folder, args.max_batch, baseline_src=args.baseline_src)
            for round_ in range(args.rounds):
                for c in args.concurrency:
                    for i, kind in enumerate(args.servers):
                        summary = drive(8700 + i, procs[kind].pid, image, c, args.seconds)
                        rows.append({"server": kind, "concurrency": c, "round": round_, **summary})
                        _print_row(kind, c, summary)
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                proc.wait(30)
    if args.rounds > 1:
        rows = _medians(rows)
        print(f"medians of {args.rounds} interleaved rounds:")
        for row in rows:
            _print_row(row["server"], row["concurrency"], row)
            print(f"{'':18s}img/s by round: {row['per_s_rounds']}")
    ceiling = offline_ceiling(image, args.seconds)
    print(
        f"offline ceiling (batch 32): model only {ceiling['model_only']:.1f} img/s, "
        f"decode+model {ceiling['decode_and_model']:.1f} img/s"
    )
    by = {(r["server"], r["concurrency"]): r["per_s"] for r in rows}
    for kind in ("vlmops", "vlmops-1w", "vlmops-torch", "baseline"):
        for c in args.concurrency:
            if (kind, c) not in by or ("naive", c) not in by:
                continue
            ours = by[(kind, c)]
            print(
                f"c={c:3d}: {kind} / naive = {ours / by[('naive', c)]:.2f}x; / ceiling(model only) = "
                f"{ours / ceiling['model_only']:.2f}; "
                f"/ ceiling(decode+model) = {ours / ceiling['decode_and_model']:.2f}"
            )
    cpu_ms = {
        kind: 1000
        * statistics.median(r["server_cpu_cores"] / r["per_s"] for r in rows if r["server"] == kind)
        for kind in ("vlmops", "null-model")
        if any(r["server"] == kind for r in rows)
    }
    model_ms = ceiling["decode_and_model_cpu_ms_per_image"]
    if len(cpu_ms) < 2:
        return _write(args.json, rows, ceiling)
    bound = 1000 * (os.cpu_count() or 1) / (cpu_ms["null-model"] + model_ms)
    print(
        f"CPU per request: vlmops {cpu_ms['vlmops']:.2f} ms, "
        f"gateway alone (null model) {cpu_ms['null-model']:.2f} ms, "
        f"decode+model offline {model_ms:.2f} ms/image "
        f"-> CPU bound on {os.cpu_count()} cores = {bound:.0f} req/s"
    )
    _write(args.json, rows, ceiling)


def _print_row(kind: str, c: int, summary: dict) -> None:
    print(
        f"{kind:12s} c={c:3d}  {summary['per_s']:7.1f} img/s  p50 {summary['p50_ms']:7.1f} ms  "
        f"p99 {summary['p99_ms']:7.1f} ms  client {summary['client_cpu_cores']:.2f} cores  "
        f"server {summary['server_cpu_cores']:.2f} cores  {summary['statuses']}",
        flush=True,
    )


def _medians(rows: list[dict]) -> list[dict]:
    """One row per (server, concurrency): the median of each number over the rounds."""
    keys = ("per_s", "p50_ms", "p99_ms", "client_cpu_cores", "server_cpu_cores")
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["server"], row["concurrency"]), []).append(row)
    out = []
    for (kind, c), group in groups.items():
        merged = {k: statistics.median(r[k] for r in group) for k in keys}
        statuses: dict = {}
        for r in group:
            for code, n in r["statuses"].items():
                statuses[code] = statuses.get(code, 0) + n
        spread = [round(r["per_s"]) for r in group]
        out.append({"server": kind, "concurrency": c, **merged, "statuses": statuses, "per_s_rounds": spread})
    return out


def _write(path: Path | None, rows: list[dict], ceiling: dict) -> None:
    if path:
        path.write_text(json.dumps({"runs": rows, "ceiling": ceiling}, indent=2))


if __name__ == "__main__":
    main()
