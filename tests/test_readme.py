"""Every command in the README's ```bash blocks runs and exits as the README says.

The commands run as written, through bash, in a scratch folder whose VLMOPS_HOME holds a small emoji data
set (a few hundred real emoji images of the installed set, with its manifest columns and splits), so
`--data emoji` and every default that reads the emoji data stay as they are. The only rewrites are what
a reader would also change: `hf:/models/clip` points at a tiny saved CLIP, port 8000 at a free port,
`vlm_...` and `<from a response>` at the real keys and request id. Files the README takes as given
(my_manifest.jsonl, grinning.png, alerts.yaml) are made first. Servers are started, probed and stopped.
A README command this file does not know fails `test_every_readme_command_is_covered`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from markdown_it import MarkdownIt

from vlmops.data.emoji import manifest_path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# README commands run elsewhere, with where
ELSEWHERE = {
    "make demo": "the Makefile's demo target = setup + `vlmops demo` (tests/test_cli.py runs the demo)",
    "make test": "is the suite itself (tests/test_cli.py checks the README, Makefile and .ci/run agree)",
    **dict.fromkeys(
        [
            "python -m vlmops.scale.loopback_node start --head --node-ip-address 127.0.0.2 --port 6390 "
            "--num-cpus 1 --include-dashboard false --disable-usage-stats",
            "python -m vlmops.scale.loopback_node start --address 127.0.0.2:6390 --node-ip-address 127.0.0.3 "
            "--num-cpus 1 --disable-usage-stats",
            "vlmops embed --model builtin:emoji-lit --data emoji --out emoji.parquet --ray 127.0.0.2:6390 "
            "--ray-actors 2",
        ],
        "tests/test_scale_cluster.py starts the same two nodes (free ports for the rest) and embeds, "
        "evaluates and audits through them",
    ),
    "vlmops serve --ray local --ray-replicas 2 --store postgresql://vlmops@127.0.0.1:5432/vlmops "
    "--port 8000": (
        "tests/test_scale_serve.py runs it against a throwaway Postgres (free ports) under the network guard"
    ),
    "ray stop": "not run: it would stop every Ray process of the user (the tests stop their nodes by pid)",
}
SERVE_BLOCK = [
    "vlmops keys create --name my-app",
    "vlmops keys create --name ops --scopes admin",
    "vlmops calibrate --data emoji --split val --out cal.json",
    "vlmops index build --data emoji --split test --out gallery/",
    "vlmops serve --model builtin:emoji-lit --calibration cal.json --gallery gallery/ --port 8000",
]
CURL_PRELUDE = 'KEY=vlm_...; OPS_KEY=vlm_...; IMG=$(base64 -w0 grinning.png); H="Authorization: Bearer $KEY"'
MONITOR_REF = (
    "vlmops monitor run --reference-data emoji --reference-split val --reference-filter "
    "'vendor=google,twitter' --window 200 --rules alerts.yaml --json monitor.json"
)
ARCHIVE_SERVE = "vlmops serve --keep-images archive/"
CHAT_SERVE = (
    "vlmops serve --model builtin:emoji-captioner --port 8000 --redact-prompts --price-in 0.5 --price-out 1.5"
)
PROXY_EXPORT = "export UPSTREAM_KEY=sk-..."
PROXY_SERVE = "vlmops serve --upstream http://127.0.0.1:11434/v1 --upstream-key-env UPSTREAM_KEY --port 8000"
CANARY_SERVE = (
    "vlmops serve --keep-images archive/ --canary builtin:emoji-lit@retrained/ --canary-share 0.1 "
    "--follow-registry 5"
)
EVAL_STANDARD = (
    "vlmops eval --model builtin:emoji-lit --data emoji --suite standard --html r.html --json r.json"
)
EVAL_HF = (
    "vlmops eval --model hf:/models/clip --data my_manifest.jsonl --labels level1 "
    '--fail-on "top1<0.5,ece>0.08"'
)
EVAL_CAPTION = (
    "vlmops eval --task caption --data emoji --judge builtin:emoji-lit --html cap.html --json cap.json"
)
EVAL_VQA = "vlmops eval --task vqa --data emoji --suite quick --json vqa.json"
AUDIT_EMOJI = (
    "vlmops audit --data emoji --model builtin:emoji-lit --html a.html --json a.json --quarantine q.jsonl"
)
AUDIT_MANIFEST = (
    "vlmops audit --data my_manifest.jsonl --checks quality,duplicates,leakage,pii "
    '--fail-on "near_dup_rate>0.01,pii>0,leakage>0"'
)
REDACT = "vlmops audit redact --data my_manifest.jsonl --out cleaned/"
CARD = "vlmops data card --data emoji --audit a.json --out DATA_CARD.md"
REGISTER = "vlmops registry register --model builtin:emoji-lit --alias champion"
RETRAIN = "vlmops retrain --archive archive/ --out retrained/"
EVAL_CAND = "vlmops eval --model builtin:emoji-lit@retrained/ --data emoji --json cand.json"
GATE = "vlmops gate --candidate cand.json --baseline champion"
DASHBOARD = "vlmops monitor dashboard --out dashboard.html"
REGISTRY_LINE = "vlmops registry promote challenger; vlmops registry rollback; vlmops registry history"


def readme_commands() -> list[str]:
    """Each line of the README's ```bash blocks: continuations joined, comments and extra spaces dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line:
                commands.append(" ".join(line.split()))
    return commands


def curl_lines() -> list[str]:
    return [c for c in readme_commands() if c.startswith("curl ")]


def covered() -> list[str]:
    return [
        *ELSEWHERE,
        EVAL_STANDARD,
        EVAL_HF,
        EVAL_CAPTION,
        EVAL_VQA,
        AUDIT_EMOJI,
        AUDIT_MANIFEST,
        REDACT,
        CARD,
        *SERVE_BLOCK,
        CURL_PRELUDE,
        *curl_lines(),
        CHAT_SERVE,
        PROXY_EXPORT,
        PROXY_SERVE,
        REGISTER,
        ARCHIVE_SERVE,
        MONITOR_REF,
        DASHBOARD,
        RETRAIN,
        EVAL_CAND,
        GATE,
        CANARY_SERVE,
        REGISTRY_LINE,
    ]


def test_every_readme_command_is_covered() -> None:
    commands = readme_commands()
    assert len(commands) == len(set(commands)), "a README command appears twice"
    unknown = [c for c in commands if c not in covered()]
    assert not unknown, f"README commands this test does not run; add them to tests/test_readme.py: {unknown}"
    stale = [c for c in covered() if c not in commands]
    assert not stale, f"commands no longer in the README: {stale}"
    assert len(curl_lines()) >= 6  # the HTTP examples are part of the README's promise too


# ---------------------------------------------------------------------------------------------------------
# The scenario: every command, in an order where each finds what it needs


def tiny_emoji_manifest(seed: int = 0) -> pd.DataFrame:
    """Whole concepts (all their vendors and skin tones) from each split of the installed emoji set."""
    frame = pd.read_parquet(manifest_path())
    frame = frame[frame["vendor"].isin(["google", "twitter", "facebook"])]
    simple = frame.groupby("concept")["id"].transform("size") <= 3  # concepts without skin-tone variants
    picked = []
    for split, n in (("train", 20), ("val", 12), ("test", 4)):
        pool = frame[simple & (frame["split"] == split)]["concept"].drop_duplicates()
        picked += list(pool.sample(n, random_state=seed))
    picked.append(frame.loc[frame["name"] == "grinning face", "concept"].iloc[0])
    return frame[frame["concept"].isin(picked)].reset_index(drop=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Workspace:
    """A scratch folder where README commands run through bash, with a small emoji VLMOPS_HOME."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "work"
        self.dir.mkdir()
        home = root / "home"
        tiny = tiny_emoji_manifest()
        target = home / manifest_path().relative_to(manifest_path().parents[2])
        target.parent.mkdir(parents=True)
        tiny.to_parquet(target, index=False)
        self.frame = tiny
        bin_dir = Path(sys.executable).parent
        self.env = {
            **os.environ,
            "VLMOPS_HOME": str(home),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT / "src"),
        }
        for name in ("VLMOPS_STORE_URL", "COLUMNS"):
            self.env.pop(name, None)
        self.port = free_port()
        self.key = ""
        self.ops_key = ""  # holds the admin scope (/metrics)
        self.request_id = ""
        self.clip = ""
        self.timings: list[tuple[float, str]] = []

    def adapt(self, command: str) -> str:
        """What a reader would change: a real model folder, a free port, the real key and request id."""
        command = command.replace("hf:/models/clip", f"hf:{self.clip}")
        command = command.replace("--port 8000", f"--port {self.port}").replace(":8000/", f":{self.port}/")
        if command.startswith("vlmops serve") and "--port" not in command:
            command += f" --port {self.port}"
        command = command.replace("OPS_KEY=vlm_...", f"OPS_KEY={self.ops_key}")
        return command.replace("vlm_...", self.key).replace("<from a response>", self.request_id)

    def run(self, command: str, codes: tuple[int, ...] = (0,), timeout: float = 300) -> str:
        """Run one README line with bash -e; its stdout (the results) when the exit code is allowed."""
        start = time.perf_counter()
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", self.adapt(command)],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode in codes, f"{command}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
        self.last_code = done.returncode
        self.timings.append((time.perf_counter() - start, command[:70]))
        return done.stdout

    def serve(self, command: str, prelude: str = "") -> subprocess.Popen:
        """Start a README serve line (after the `prelude` lines, e.g. an export) and wait until /readyz
        answers 200."""
        self.server_log = self.dir.parent / f"server-{time.monotonic_ns()}.log"
        with self.server_log.open("w") as log:  # a file, not a pipe nobody reads until the end
            server = subprocess.Popen(
                [
                    "bash",
                    "-c",
                    prelude + "; exec " + self.adapt(command) if prelude else "exec " + self.adapt(command),
                ],
                cwd=self.dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, f"{command} exited: {self.server_log.read_text()}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        server.kill()
        pytest.fail(f"{command} was not ready within 180 s")

    def stop(self, server: subprocess.Popen) -> None:
        """SIGTERM drains and exits cleanly."""
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            pytest.fail("the server did not stop within 60 s of SIGTERM")
        # uvicorn drains, then re-raises the SIGTERM it caught: killed by it after a clean shutdown
        assert code in (0, -signal.SIGTERM), self.server_log.read_text()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def write_inputs(ws: Workspace) -> None:
    """The files the README takes as given: a manifest, an image, alert rules, a model folder."""
    from hf_models import make_clip_dir

    ws.clip = str(make_clip_dir(ws.dir.parent / "clip"))
    grinning = ws.frame[(ws.frame["name"] == "grinning face") & (ws.frame["vendor"] == "google")]
    (ws.dir / "grinning.png").write_bytes(Path(grinning["image"].iloc[0]).read_bytes())
    rows = []
    for i, r in enumerate(ws.frame.sample(40, random_state=1).itertuples()):
        texts = list(r.texts) + (["contact jane.doe@example.org"] if i == 0 else [])  # PII to find
        rows.append({"id": r.id, "image": r.image, "texts": texts, "label": r.label, "split": r.split})
    (ws.dir / "my_manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (ws.dir / "alerts.yaml").write_text(
        "rules:\n  - name: embedding drift\n    metric: drift.mmd.p_value\n    op: '<'\n"
        "    threshold: 0.01\n    min_samples: 20\n"
    )


def fired(stdout: str) -> bool:
    return any(line.startswith("fired:") for line in stdout.splitlines())


def eval_and_audit(ws: Workspace) -> None:
    out = ws.run(EVAL_STANDARD)
    report = json.loads((ws.dir / "r.json").read_text())
    assert report["suite"] == "standard" and "skipped" not in report["robustness"]
    assert (ws.dir / "r.html").read_text().startswith("<!DOCTYPE html>") and "top1" in out
    out = ws.run(EVAL_HF, codes=(0, 1))  # exit 1 exactly when a rule fired
    assert (ws.last_code == 1) == fired(out) and "(rule top1<0.5)" in out
    out = ws.run(EVAL_CAPTION)
    caption = json.loads((ws.dir / "cap.json").read_text())
    assert caption["model"]["name"] == "emoji-captioner" and "clip_score" in caption["grounding"]
    assert "corruptions" in caption["robustness"] and "cider_d" in out
    assert (ws.dir / "cap.html").read_text().startswith("<!DOCTYPE html>")
    ws.run(EVAL_VQA)
    vqa = json.loads((ws.dir / "vqa.json").read_text())
    assert set(vqa["reference"]["by_type"]) == {"category", "subcategory", "skin_tone", "gender", "person"}
    ws.run(AUDIT_EMOJI)
    audit = json.loads((ws.dir / "a.json").read_text())
    assert audit["schema"] == "vlmops.audit/1" and (ws.dir / "q.jsonl").exists()
    out = ws.run(AUDIT_MANIFEST, codes=(1,))  # the planted e-mail fires pii>0
    assert "fired: pii=" in out and "leakage=" in out
    ws.run(REDACT)
    assert "[EMAIL]" in (ws.dir / "cleaned" / "manifest.jsonl").read_text()
    ws.run(CARD)
    html = MarkdownIt("commonmark").enable("table").render((ws.dir / "DATA_CARD.md").read_text())
    assert html.count("<table>") == 2 and "<h2>Known issues (found by the audit)</h2>" in html


def serve_and_call(ws: Workspace) -> None:
    ws.key = ws.run(SERVE_BLOCK[0]).strip().splitlines()[-1]
    ws.ops_key = ws.run(SERVE_BLOCK[1]).strip().splitlines()[-1]
    assert ws.key.startswith("vlm_") and ws.ops_key.startswith("vlm_") and ws.ops_key != ws.key
    out = ws.run(SERVE_BLOCK[2])
    assert "mean set size" in out and json.loads((ws.dir / "cal.json").read_text())["labels"]
    ws.run(SERVE_BLOCK[3])
    server = ws.serve(SERVE_BLOCK[4])
    try:
        for line in curl_lines():
            answer = ws.run(f"{CURL_PRELUDE}; {line}")
            assert '"error"' not in answer, f"{line}\n{answer}"
            if "label_set" in line:
                body = json.loads(answer)
                ws.request_id = body["request_id"]
                assert body["prediction_set"], body  # calibrated: cal.json was loaded
            if "/v1/search" in line:
                assert len(json.loads(answer)["hits"]) == 5
        assert ws.request_id, "the README classifies with the calibrated label set"
    finally:
        ws.stop(server)


def chat_snippet() -> str:
    """The README's Python example of the OpenAI client against /v1/chat/completions."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (snippet,) = [b for b in blocks if "chat.completions.create" in b]
    return snippet


def chat(ws: Workspace) -> None:
    """The chat server line, then the README's openai client example against it, as written."""
    from vlmops.store.log import PredictionLog

    server = ws.serve(CHAT_SERVE)
    try:
        (ws.dir / "chat.py").write_text(ws.adapt(chat_snippet()))
        out = ws.run(f"{sys.executable} chat.py")
        text, tokens = out.strip().rsplit(" ", 1)
        assert "grinning" in text and int(tokens) > 0, out
    finally:
        ws.stop(server)
    (row,) = PredictionLog(str(ws.dir.parent / "home" / "store.sqlite")).chats()
    assert row.answer == text and row.prompt_redacted and row.cost_usd > 0


def proxy(ws: Workspace) -> None:
    """The README's proxy lines in front of the OpenAI-compatible fake (whose key is the README's), then
    the README's client example against the gateway."""
    from openai_fake import FakeServer
    from serve_helpers import serve_in_thread
    from vlmops.store.log import PredictionLog

    fake = FakeServer(key=PROXY_EXPORT.split("=", 1)[1], models=("emoji-captioner",))
    with serve_in_thread(fake.app()) as port:
        command = PROXY_SERVE.replace("http://127.0.0.1:11434/v1", f"http://127.0.0.1:{port}/v1")
        server = ws.serve(command, prelude=PROXY_EXPORT)
        try:
            out = ws.run(f"{sys.executable} chat.py")  # the client example written by chat()
        finally:
            ws.stop(server)
    text, tokens = out.strip().rsplit(" ", 1)
    assert fake.calls == 1 and int(tokens) > 0
    rows = [
        r for r in PredictionLog(str(ws.dir.parent / "home" / "store.sqlite")).chats() if r.mode == "upstream"
    ]
    assert [(r.answer, r.status) for r in rows] == [(text, "ok")]


def traffic(ws: Workspace, n: int = 30) -> None:
    """Classify requests plus human corrections on the served model, as users would send."""
    headers = {"Authorization": f"Bearer {ws.key}"}
    rows = ws.frame[ws.frame["vendor"].isin(["google", "twitter"])].head(n)
    with httpx.Client(base_url=ws.url, headers=headers, timeout=30) as client:
        for r in rows.itertuples():
            image = base64.b64encode(Path(r.image).read_bytes()).decode()
            answer = client.post("/v1/classify", json={"image": image, "label_set": "emoji"})
            assert answer.status_code == 200, answer.text
            feedback = {"request_id": answer.json()["request_id"], "accepted": False, "label": r.concept_name}
            assert client.post("/v1/feedback", json=feedback).status_code == 200


def loop(ws: Workspace) -> None:
    out = ws.run(REGISTER)
    assert "as champion" in out
    server = ws.serve(ARCHIVE_SERVE)
    try:
        traffic(ws)
    finally:
        ws.stop(server)
    assert any(p.is_file() for p in (ws.dir / "archive").rglob("*"))  # images by sha256
    ws.run(MONITOR_REF, codes=(0, 1))  # exit 1 exactly when an alert fired
    monitor = json.loads((ws.dir / "monitor.json").read_text())
    assert (ws.last_code == 1) == bool(monitor["alerts"]) and monitor["n"] >= 20
    ws.run(DASHBOARD)
    assert (ws.dir / "dashboard.html").exists()
    out = ws.run(RETRAIN, codes=(0, 1))  # exit 1 when the retrained model fails its gate
    assert ("passed" in out) == (ws.last_code == 0) and (ws.dir / "retrained").is_dir()
    ws.run(EVAL_CAND)
    out = ws.run(GATE, codes=(0, 1))
    assert ("gate passed" in out) == (ws.last_code == 0)
    assert "not checked robustness_drop" in out  # the champion's report is the quick suite's
    server = ws.serve(CANARY_SERVE)
    try:
        metrics = httpx.get(f"{ws.url}/metrics", headers={"Authorization": f"Bearer {ws.ops_key}"})
        assert metrics.status_code == 200 and 'role="canary"' in metrics.text  # the retrained model routes
    finally:
        ws.stop(server)
    out = ws.run(REGISTRY_LINE)
    assert "champion:" in out and "(rollback)" in out and "promote" in out


@pytest.mark.emoji
@pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")
def test_readme_commands_run_and_exit_as_documented(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    write_inputs(ws)
    try:
        eval_and_audit(ws)
        serve_and_call(ws)
        chat(ws)
        proxy(ws)
        loop(ws)
    finally:
        print("\n".join(f"{seconds:6.1f} s  {command}" for seconds, command in ws.timings))
