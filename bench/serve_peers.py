"""Serving side by side: `vlmops serve` as shipped against BentoML and LitServe (and Ray Serve).

Every system serves the same computation on loopback: decode the PNG, `embed_images` with
builtin:emoji-lit (vlmops's loader), softmax over three cached label embeddings. vlmops runs exactly as
`vlmops serve --port P` starts it (default flags: its own workers, threads, batch size and window; auth
on, every prediction logged to a fresh SQLite store given by VLMOPS_STORE_URL). Each peer runs its own
dynamic batching (at most 64 per batch, a ~5 ms window where the framework has one) in 2 worker
processes of one torch thread each, from its own virtual environment under VLMOPS_HOME/bench-venvs that
this script builds on first use: `python -m venv`, torch 2.13.0 first, then the framework and this
repository (for its dependencies), torch pinned; at run time the repository's src comes first on
PYTHONPATH, so every system runs the checkout's own model code. Service code: bench/peers/. Ray Serve
is optional (`--peers bentoml litserve ray`): a private single-node Ray on 127.0.0.1, usage stats off and
its cloud-metadata probe prevented (see peer_system).

vlmops's clients take turns over 8 API keys (created with a high request rate), so the gateway's
default per-key item budget cannot cap a loop that stands for many users; the peers have no auth.

The client is vlmops.serve.loadgen (closed-loop keep-alive clients, one pre-built request with a real
emoji PNG) at each concurrency; rounds are interleaved (each round starts every system afresh, in a
rotated order) and each point reports the median and the spread (min-max) over rounds of img/s, p50 and
p99 latency and the server's CPU seconds per request (its whole process tree, from /proc).

No process may touch a non-loopback address: bench/peers/netguard is on every server's PYTHONPATH, so
its sitecustomize installs an audit hook that records and refuses any other destination of
socket.connect/sendto/getaddrinfo; where `strace` exists, each system first runs a check pass under
`strace -f --seccomp-bpf -e trace=connect` (which sees native code too): started, asked, and driven at the
highest concurrency for `--check-seconds`. Any such destination fails the run (exit 1). The timed rounds
then run without the tracer (the audit hook stays on): a ptrace tracer is not neutral — on a quiet 2-core
machine it cut vlmops from 922 to 584 img/s at c=32, LitServe from 650 to 301 and BentoML from 665 to 615
(bench/RESULTS.md), so timing under it measures the harness, not the servers. `--strace-rounds` times
under strace as before.

    python bench/serve_peers.py                      # 3 rounds, concurrency 1 32 64, 8 s per point
    python bench/serve_peers.py --quick              # 1 round, 3 s per point (a smoke run)
    python bench/serve_peers.py --peers bentoml litserve ray --json out.json
    python bench/serve_peers.py --baseline-src /tmp/old/src   # also vlmops from another checkout
    python bench/serve_peers.py --peer-runtime onnx-image     # the peers on vlmops's runtime too
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers" / "netguard"))
from netguard import LOG_ENV

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from procs import Server, System, audit_findings, strace_works

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS_DIR = BENCH / "peers"
NETGUARD_DIR = PEERS_DIR / "netguard"
TORCH = "torch==2.13.0"
PEER_SPECS = {"bentoml": "bentoml==1.4.40", "litserve": "litserve==0.2.19", "ray": "ray[serve]==2.60.0"}
DEFAULT_PEERS = ("bentoml", "litserve")  # ray is optional: --peers bentoml litserve ray
LABELS = ["grinning face", "cat face", "red heart"]
BASELINE = "vlmops-baseline"
N_KEYS = 8  # vlmops: clients share 8 API keys, so one key's default item budget does not cap the loop


def peer_python(peer: str) -> Path:
    """The peer's virtual environment python, built once (torch 2.13.0 first, never another torch)."""
    from vlmops.config import get_settings

    spec = PEER_SPECS[peer]
    venv = get_settings().home / "bench-venvs" / re.sub(r"\[.*\]", "", spec).replace("==", "-")
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        print(f"building {venv} ({TORCH}, then {spec} and vlmops's dependencies; minutes, once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, TORCH], check=True)
        subprocess.run([*pip, spec, str(REPO), TORCH], check=True)
        (venv / ".ready").touch()
    return python


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(tmp: Path) -> dict[str, str]:
    """Environment shared by every server: the network guard, offline hubs, the checkout's src."""
    env = dict(os.environ)
    paths = [str(NETGUARD_DIR), str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env[LOG_ENV] = str(tmp / "netguard.jsonl")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def vlmops_system(
    tmp: Path, port: int, image_b64: str, src: Path | None = None, name: str = "vlmops"
) -> System:
    """`vlmops serve --port P` with default flags, a fresh store and N_KEYS API keys (`src`: the vlmops
    source folder to run, another checkout's for a before/after comparison)."""
    from vlmops.serve.keys import KeyStore

    store = f"sqlite:///{tmp / f'vlmops-store-{port}.sqlite'}"  # fresh each round
    keys = KeyStore(store)
    tokens = [keys.create(f"bench-{i}", 1e6, 10**6, ("predict",), None) for i in range(N_KEYS)]
    env = base_env(tmp)
    env["VLMOPS_STORE_URL"] = store
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(NETGUARD_DIR), str(src)])
    vlmops = shutil.which("vlmops", path=str(Path(sys.executable).parent)) or "vlmops"
    return System(
        name,
        [vlmops, "serve", "--port", str(port)],
        env,
        "/readyz",
        "/v1/classify",
        {"image": image_b64, "labels": LABELS},
        [{"Authorization": f"Bearer {token}"} for token in tokens],
    )


def peer_system(peer: str, tmp: Path, port: int, image_b64: str, runtime: str = "torch") -> System:
    """A peer framework's server from its venv, 2 workers x 1 torch thread, batching on; `runtime`
    ``onnx-image`` runs the image tower as vlmops's default runtime does (ONNX Runtime)."""
    python = peer_python(peer)
    env = base_env(tmp)
    env["PYTHONPATH"] += os.pathsep + str(PEERS_DIR)
    env.update(OMP_NUM_THREADS="1", PEER_TORCH_THREADS="1", VIRTUAL_ENV=str(python.parent.parent))
    env["PEER_RUNTIME"] = runtime
    body = {"image": image_b64, "labels": LABELS}
    bindir = python.parent
    if peer == "bentoml":
        env.update(BENTOML_HOME=str(tmp / "bentoml"), BENTOML_DO_NOT_TRACK="true")
        command = [str(bindir / "bentoml"), "serve", "bento_service:EmojiService", "--host", "127.0.0.1"]
        return System(
            peer,
            [*command, "--port", str(port)],
            env,
            "/readyz",
            "/v1/classify",
            [body],  # a batchable API's body is a list (here of one request)
            cwd=PEERS_DIR,
        )
    if peer == "litserve":
        command = [str(python), str(PEERS_DIR / "litserve_app.py"), str(port)]
        return System(peer, command, env, "/health", "/v1/classify", body, cwd=PEERS_DIR)
    if peer == "ray":  # a private single-node Ray on loopback; see bench/peers/ray_app.py
        home = tmp / f"ray-home-{port}"
        home.mkdir()
        # Ray's dashboard process asks cloud metadata servers (169.254.169.254, metadata.google.internal)
        # which cloud it runs on unless ~/ray_bootstrap_config.yaml names the provider, even with usage
        # stats off; a private HOME holding one that says "local" prevents the probe.
        (home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
        env.update(
            HOME=str(home),
            RAY_USAGE_STATS_ENABLED="0",
            # single-node mode: the node's address is 127.0.0.1, not the machine's interface address
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        )
        command = [str(python), str(PEERS_DIR / "ray_app.py"), str(port), str(tmp / f"ray-{port}")]
        return System(peer, command, env, "/-/healthz", "/v1/classify", body, cwd=PEERS_DIR)
    raise ValueError(f"unknown peer {peer!r}; choose from {sorted(PEER_SPECS)}")


async def _load(port: int, requests: list[bytes], concurrency: int, seconds: float):
    """Closed-loop load with the clients spread over the given requests (one per API key)."""
    from vlmops.serve.loadgen import LoadResult, run_load

    groups = [concurrency // len(requests) + (i < concurrency % len(requests)) for i in range(len(requests))]
    parts = await asyncio.gather(
        *(
            run_load("127.0.0.1", port, r, n, 10**9, seconds)
            for r, n in zip(requests, groups, strict=True)
            if n
        )
    )
    merged = LoadResult(errors=sum(p.errors for p in parts), seconds=max(p.seconds for p in parts))
    for part in parts:
        merged.latencies_s += part.latencies_s
        for status, n in part.statuses.items():
            merged.statuses[status] = merged.statuses.get(status, 0) + n
    return merged


def drive(server: Server, concurrency: int, seconds: float, warmup: float) -> dict:
    """One measured point: img/s, p50/p99 latency, server CPU seconds per request, client CPU."""
    from vlmops.serve.loadgen import build_request

    system = server.system
    requests = [
        build_request("127.0.0.1", server.port, system.path, system.body, headers)
        for headers in system.headers
    ]
    asyncio.run(_load(server.port, requests, concurrency, warmup))
    cpu0, client0 = server.cpu_seconds(), time.process_time()
    result = asyncio.run(_load(server.port, requests, concurrency, seconds))
    cpu = server.cpu_seconds() - cpu0
    summary = result.summary()
    summary["server_cpu_ms_per_request"] = 1000 * cpu / max(summary["ok"], 1)
    summary["client_cpu_ms_per_request"] = 1000 * (time.process_time() - client0) / max(summary["ok"], 1)
    return summary


def answer(server: Server) -> tuple[str, float]:
    """The label and confidence a system gives the benchmark request (a check they compute the same)."""
    system, deadline = server.system, time.time() + 120
    while True:  # a ready server may still be deploying its app (Ray Serve): retry for a while
        response = httpx.post(
            f"http://127.0.0.1:{server.port}{system.path}",
            json=system.body,
            headers=system.headers[0],
            timeout=30,
        )
        if response.status_code == 200 or time.time() > deadline:
            break
        time.sleep(1)
    response.raise_for_status()
    out = response.json()
    out = out[0] if isinstance(out, list) else out
    return out["label"], float(out["confidence"])


def _ms(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.1f}"


def build_system(name: str, tmp: Path, port: int, image_b64: str, args: argparse.Namespace) -> System:
    """vlmops, the baseline vlmops (another checkout's src) or a peer, ready to start."""
    if name == "vlmops":
        return vlmops_system(tmp, port, image_b64)
    if name == BASELINE:
        return vlmops_system(tmp, port, image_b64, args.baseline_src, BASELINE)
    return peer_system(name, tmp, port, image_b64, args.peer_runtime)


def run_rounds(args: argparse.Namespace, tmp: Path, image_b64: str) -> tuple[list[dict], list[str]]:
    """Every round starts each system afresh (order rotated per round) and measures every concurrency."""
    systems = ["vlmops", *([BASELINE] if args.baseline_src else []), *args.peers]
    use_strace = not args.no_strace and strace_works()
    rows, remote, answers = [], [], {}
    if use_strace and not args.strace_rounds:
        remote += check_pass(args, tmp, image_b64, systems)
    for round_ in range(args.rounds):
        order = systems[round_ % len(systems) :] + systems[: round_ % len(systems)]
        for name in order:
            port = free_port()
            system = build_system(name, tmp, port, image_b64, args)
            server = Server(system, port, tmp, use_strace and args.strace_rounds)
            try:
                server.wait_ready()
                answers[name] = answer(server)
                for c in args.concurrency:
                    point = drive(server, c, args.seconds, args.warmup)
                    rows.append({"system": name, "round": round_ + 1, "concurrency": c, **point})
                    print(
                        f"round {round_ + 1} {name:9s} c={c:3d} {point['per_s']:7.1f} img/s  "
                        f"p50 {_ms(point['p50_ms'])} ms  p99 {_ms(point['p99_ms'])} ms  "
                        f"server CPU {point['server_cpu_ms_per_request']:5.2f} ms/req  {point['statuses']}",
                        flush=True,
                    )
            finally:
                server.stop()
                remote += [f"{name}: connect {host} (strace)" for host in server.remote_destinations()]
    remote += audit_findings(tmp / "netguard.jsonl")
    labels = {name: label for name, (label, _) in answers.items()}
    confidences = [conf for _, conf in answers.values()]
    if len(set(labels.values())) > 1 or max(confidences) - min(confidences) > 1e-3:
        raise SystemExit(f"the systems disagree on the benchmark request: {answers}")
    print(
        f"every system answers {next(iter(answers.values()))} (label, confidence); "
        f"network check: {network_check(use_strace, args.strace_rounds)}",
        flush=True,
    )
    return rows, remote


def check_pass(args: argparse.Namespace, tmp: Path, image_b64: str, systems: list[str]) -> list[str]:
    """Each system once under strace, driven at the highest concurrency: its non-loopback connects."""
    remote = []
    for name in systems:
        port = free_port()
        server = Server(build_system(name, tmp, port, image_b64, args), port, tmp, use_strace=True)
        try:
            server.wait_ready()
            answer(server)
            point = drive(server, max(args.concurrency), args.check_seconds, args.warmup)
            print(f"check {name:9s} under strace: {point['per_s']:7.1f} img/s (not timed)", flush=True)
        finally:
            server.stop()
            remote += [f"{name}: connect {host} (strace)" for host in server.remote_destinations()]
    return remote


def network_check(use_strace: bool, strace_rounds: bool) -> str:
    """How the run watched the servers' connections, in words."""
    if not use_strace:
        return "audit hook"
    if strace_rounds:
        return "strace + audit hook in every timed round"
    return "strace in a check pass per system + audit hook in every timed round"


METRICS = ("per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request")


def summarise(rows: list[dict]) -> dict[tuple[str, int], dict[str, tuple[float, float, float]]]:
    """Per (system, concurrency): each metric's (median, min, max) over rounds."""
    points: dict[tuple[str, int], dict[str, list[float]]] = {}
    for row in rows:
        point = points.setdefault((row["system"], row["concurrency"]), {m: [] for m in METRICS})
        for metric in METRICS:
            if row[metric] is not None:
                point[metric].append(row[metric])
    return {
        key: {
            m: (statistics.median(v), min(v), max(v)) if v else (float("nan"),) * 3 for m, v in point.items()
        }
        for key, point in points.items()
    }


def ratios(summary: dict, concurrencies: list[int]) -> dict[str, dict]:
    """vlmops / the best peer: throughput at each concurrency, and the c=1 p50 (lower is better)."""
    out: dict[str, dict] = {}
    for c in concurrencies:
        peers = {s: v for (s, cc), v in summary.items() if cc == c and s not in ("vlmops", BASELINE)}
        if ("vlmops", c) not in summary or not peers:
            continue
        best = max(peers, key=lambda s: peers[s]["per_s"][0])
        out[f"throughput_c{c}"] = {
            "best_peer": best,
            "ratio": summary[("vlmops", c)]["per_s"][0] / peers[best]["per_s"][0],
        }
        if c == 1:
            fastest = min(peers, key=lambda s: peers[s]["p50_ms"][0])
            out["p50_c1"] = {
                "best_peer": fastest,
                "ratio": summary[("vlmops", 1)]["p50_ms"][0] / peers[fastest]["p50_ms"][0],
            }
    return out


def report(summary: dict, found: dict, concurrencies: list[int]) -> None:
    """Print the medians [min-max] per point and the ratios against the issue's targets."""
    print("\nmedian [min-max] over rounds")
    print("| system | c | img/s | p50 ms | p99 ms | server CPU ms/request |\n|---|---|---|---|---|---|")
    for (system, c), point in sorted(
        summary.items(), key=lambda kv: (kv[0][1], kv[0][0] != "vlmops", kv[0][0])
    ):
        cells = [f"{v[0]:.1f} [{v[1]:.1f}-{v[2]:.1f}]" for v in point.values()]
        print(f"| {system} | {c} | " + " | ".join(cells) + " |")
    for c in concurrencies:
        if (r := found.get(f"throughput_c{c}")) is not None:
            target = "" if c == 1 else f"  (target >= 1.2: {'met' if r['ratio'] >= 1.2 else 'NOT met'})"
            print(f"c={c:3d}: vlmops / best peer ({r['best_peer']}) img/s = {r['ratio']:.2f}{target}")
    for c in concurrencies:
        if ("vlmops", c) in summary and (BASELINE, c) in summary:
            ratio = summary[("vlmops", c)]["per_s"][0] / summary[(BASELINE, c)]["per_s"][0]
            print(f"c={c:3d}: vlmops / {BASELINE} img/s = {ratio:.2f}")
    if (r := found.get("p50_c1")) is not None:
        verdict = "met" if r["ratio"] <= 1.2 else "NOT met"
        print(
            f"c=  1: vlmops p50 / best peer's ({r['best_peer']}) = {r['ratio']:.2f}  "
            f"(target <= 1.2: {verdict})"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--peers", nargs="*", default=list(DEFAULT_PEERS), choices=list(PEER_SPECS), help="none: vlmops only"
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help=f"also run '{BASELINE}': vlmops serve from this src folder (another checkout), same flags",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 64])
    parser.add_argument(
        "--peer-runtime",
        choices=("torch", "onnx-image"),
        default="torch",
        help="the peers' model runtime: torch (what their own examples use), or onnx-image (vlmops's "
        "default: the image tower under ONNX Runtime), to compare the serving layers alone",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each point")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 3 s per point, 1 s warm-up")
    parser.add_argument("--no-strace", action="store_true", help="audit hook only, even where strace exists")
    parser.add_argument(
        "--strace-rounds", action="store_true", help="time every round under strace (not only a check pass)"
    )
    parser.add_argument("--check-seconds", type=float, default=3.0, help="seconds of the strace check pass")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 3.0, 1.0

    from vlmops.data.manifest import resolve_data

    image = Path(resolve_data("emoji").query("vendor == 'google'")["image"].iloc[100]).read_bytes()
    for peer in args.peers:  # build missing venvs before any timing
        peer_python(peer)
    with tempfile.TemporaryDirectory(prefix="serve-peers-") as tmp:
        rows, remote = run_rounds(args, Path(tmp), base64.b64encode(image).decode())
    summary = summarise(rows)
    found = ratios(summary, args.concurrency)
    report(summary, found, args.concurrency)
    if args.json:
        points = [
            {
                "system": s,
                "concurrency": c,
                **{m: dict(zip(("median", "min", "max"), v, strict=True)) for m, v in p.items()},
            }
            for (s, c), p in summary.items()
        ]
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "points": points,
                    "ratios": found,
                    "non_loopback": remote,
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                },
                indent=2,
            )
        )
    if remote:
        print("FAILED: non-loopback destinations:\n  " + "\n  ".join(remote))
        raise SystemExit(1)
    print("no process touched a non-loopback address")


if __name__ == "__main__":
    main()
