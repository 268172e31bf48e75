"""Where the time of `vlmops serve` goes under closed-loop load, and whether the cores sit idle.

Starts `vlmops serve` as shipped (default flags, auth on, log on; the same setup as bench/serve_peers.py)
and drives /v1/classify with `concurrency` keep-alive clients. For each run it reports:

- throughput and p50 latency;
- the CPU of the whole machine (/proc/stat) against 2 cores x wall, and of the server and this client:
  is any core idle while the clients wait?
- the server's CPU per request by thread role (event loop, model thread, log writer, log fsync, others),
  from /proc/<pid>/task and `py-spy dump` (which names each thread) when py-spy can attach;
- from the gateway's own /metrics (read with an admin key): the mean batch size, the mean wait of an
  item in the model queue, the mean group commit of log rows, and the mean request latency.

Rounds alternate the systems given (`--src` adds a vlmops from another checkout's src, for an A/B on a
shared machine):

    python bench/serve_stages.py --concurrency 32 --seconds 6 --rounds 2 --src /tmp/main-src
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import serve_peers  # noqa: E402
from serve_peers import free_port, vlmops_system  # noqa: E402

sys.path.insert(0, str(BENCH / "peers"))
from procs import Server, process_tree  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK, sum(fields[:8]) / TICK


def thread_cpu(root: int) -> dict[int, float]:
    """CPU seconds of every thread of the server's process tree, by thread id."""
    out = {}
    for pid in process_tree(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def thread_roles(root: int) -> dict[int, str]:
    """Thread id -> its Python thread name (py-spy dump), for the server's worker processes."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    roles: dict[int, str] = {}
    if spy is None:
        return roles
    for pid in process_tree(root):
        try:
            dump = subprocess.run(
                [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=20
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for match in re.finditer(r"Thread (0x[0-9A-Fa-f]+|\d+) \((?:\w+)\): \"([^\"]+)\"", dump):
            tid = match.group(1)
            roles[int(tid, 16) if tid.startswith("0x") else int(tid)] = match.group(2)
    return roles


def role_of(name: str | None) -> str:
    """A thread's role from its Python name."""
    if name is None:
        return "other (native)"
    for prefix, role in (
        ("MainThread", "event loop"),
        ("vlmops-model", "model"),
        ("vlmops-log-writer", "log writer"),
        ("vlmops-log-sync", "log fsync"),
        ("vlmops-decode", "decode pool"),
    ):
        if name.startswith(prefix):
            return role
    return "other (python)"


def admin_token(store: str) -> str:
    """An admin key in the server's store (to read /metrics)."""
    from vlmops.serve.keys import KeyStore

    return KeyStore(store).create("bench-admin", 1e6, 10**6, ("admin",), None)


def measure(server: Server, store: str, concurrency: int, seconds: float, warmup: float) -> dict:
    """One point: throughput, CPU split and the gateway's stage means."""
    from vlmops.serve.loadgen import build_request

    system = server.system
    requests = [build_request("127.0.0.1", server.port, system.path, system.body, h) for h in system.headers]
    asyncio.run(serve_peers._load(server.port, requests, concurrency, warmup))
    roles = thread_roles(server.proc.pid)
    url = f"http://127.0.0.1:{server.port}/metrics"
    headers = {"Authorization": f"Bearer {admin_token(store)}"}
    before = histogram_means_raw(httpx.get(url, headers=headers, timeout=10).text)
    threads0, machine0, client0 = thread_cpu(server.proc.pid), machine_cpu(), time.process_time()
    result = asyncio.run(serve_peers._load(server.port, requests, concurrency, seconds))
    threads1, machine1, client1 = thread_cpu(server.proc.pid), machine_cpu(), time.process_time()
    after = histogram_means_raw(httpx.get(url, headers=headers, timeout=10).text)
    summary = result.summary()
    ok = max(summary["ok"], 1)
    by_role: dict[str, float] = {}
    for tid, cpu in threads1.items():
        role = role_of(roles.get(tid))
        by_role[role] = by_role.get(role, 0.0) + cpu - threads0.get(tid, 0.0)
    busy = machine1[0] - machine0[0]
    total = machine1[1] - machine0[1]
    means = {
        name: (after[name][0] - before.get(name, (0, 0))[0])
        / max(after[name][1] - before.get(name, (0, 0))[1], 1)
        for name in after
    }
    return {
        **summary,
        "machine_busy_cores": busy / result.seconds,
        "machine_cores": total / result.seconds,
        "server_cores": sum(by_role.values()) / result.seconds,
        "client_cores": (client1 - client0) / result.seconds,
        "server_cpu_ms_per_request": {k: 1000 * v / ok for k, v in sorted(by_role.items())},
        "mean_batch": means.get("vlmops_batch_size"),
        "mean_queue_wait_ms": 1000 * means.get("vlmops_queue_wait_seconds", float("nan")),
        "mean_log_commit_ms": 1000 * means.get("vlmops_log_commit_seconds", float("nan")),
        "mean_latency_ms": 1000 * means.get("vlmops_request_latency_seconds", float("nan")),
    }


def histogram_means_raw(text: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each histogram in a Prometheus text page (summed over labels)."""
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+)_(sum|count)(?:\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if match:
            entry = out.setdefault(match.group(1), [0.0, 0.0])
            entry[0 if match.group(2) == "sum" else 1] += float(match.group(3))
    return {k: (v[0], v[1]) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--src", type=Path, default=None, help="also run vlmops from this src (A/B)")
    parser.add_argument("--strace", action="store_true", help="under strace, as in serve_peers")
    parser.add_argument("--serve-args", default="", help="extra `vlmops serve` flags for this checkout")
    args = parser.parse_args(argv)

    from vlmops.data.manifest import resolve_data

    image = Path(resolve_data("emoji").query("vendor == 'google'")["image"].iloc[100]).read_bytes()
    image_b64 = base64.b64encode(image).decode()
    systems = [("this", None), *([("other-src", args.src)] if args.src else [])]
    with tempfile.TemporaryDirectory(prefix="serve-stages-") as tmp_dir:
        tmp = Path(tmp_dir)
        for round_ in range(args.rounds):
            order = systems if round_ % 2 == 0 else systems[::-1]
            for name, src in order:
                port = free_port()
                system = vlmops_system(tmp, port, image_b64, src, name)
                if src is None and args.serve_args:
                    system.command += args.serve_args.split()
                store = system.env["VLMOPS_STORE_URL"]
                server = Server(system, port, tmp, use_strace=args.strace)
                try:
                    server.wait_ready()
                    for c in args.concurrency:
                        point = measure(server, store, c, args.seconds, args.warmup)
                        roles = point["server_cpu_ms_per_request"].items()
                        split = ", ".join(f"{k} {v:.2f}" for k, v in roles)
                        print(
                            f"round {round_ + 1} {name:9s} c={c:3d} {point['per_s']:6.1f} img/s "
                            f"p50 {point['p50_ms']:5.1f} ms | machine {point['machine_busy_cores']:.2f}/"
                            f"{point['machine_cores']:.2f} cores busy, server {point['server_cores']:.2f}, "
                            f"client {point['client_cores']:.2f} | batch {point['mean_batch'] or 0:.1f}, "
                            f"queue wait {point['mean_queue_wait_ms']:.1f} ms, log commit "
                            f"{point['mean_log_commit_ms']:.1f} ms, server latency "
                            f"{point['mean_latency_ms']:.1f} ms | server CPU ms/req: {split}",
                            flush=True,
                        )
                finally:
                    server.stop()


if __name__ == "__main__":
    main()
