"""Helpers for gateway tests: a TestClient app around a fake model, image bytes, a real server process."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from vlmops.serve.app import create_app
from vlmops.serve.keys import SCOPES, CachedVerifier, KeyStore
from vlmops.serve.resources import LabelSet
from vlmops.serve.service import Gateway, ServeConfig
from vlmops.store.log import PredictionLog


def png_bytes(color=(200, 30, 30), size=(16, 16), mode="RGB", fmt="PNG", **save) -> bytes:
    """Bytes of a solid-colour image."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


def b64(data: bytes) -> str:
    """Base64 text of bytes."""
    return base64.b64encode(data).decode()


def make_app(tmp_path: Path, model, auth: bool = True, **config):
    """(app, api key or None, store url) around `model`; the key holds every scope."""
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    sets = config.pop(
        "label_sets_obj", {"colours": LabelSet("colours", ("red", "green", "blue"), "a {} image")}
    )
    vocabulary = config.pop("vocabulary_obj", ("red", "green", "blue", "square"))
    gallery = config.pop("gallery_obj", None)
    gateway = Gateway(
        model, ServeConfig(store=url, **config), PredictionLog(url), sets, None, gallery, vocabulary
    )
    key = None
    verifier = None
    if auth:
        keys = KeyStore(url)
        key = keys.create("tests", rate_per_s=1000, burst=1000, scopes=SCOPES)
        verifier = CachedVerifier(keys)
    return create_app(gateway, verifier), key, url


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(app) -> Iterator[int]:
    """Run an ASGI app under a real uvicorn server on a free loopback port (in this process); the port."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start in 30 s"
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def start_server(
    tmp_path: Path, *args: str, timeout: float = 120.0, resources: bool = True
) -> tuple[subprocess.Popen, int]:
    """Run `vlmops serve` on a free loopback port and wait until /readyz answers 200.

    `resources`: pass a small vocabulary and label set (a dual encoder's); off for a generative model.
    """
    port = free_port()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("red\ngreen\nblue\n")
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")
    env = {**os.environ, "VLMOPS_HOME": os.environ.get("VLMOPS_HOME", str(Path.home() / ".cache" / "vlmops"))}
    cmd = [
        str(Path(sys.executable).parent / "vlmops"),
        "serve",
        "--port",
        str(port),
        "--store",
        str(tmp_path / "store.sqlite"),
        *(["--vocabulary", str(vocab), "--label-set", f"colours={labels}"] if resources else []),
        *args,
    ]
    log = open(tmp_path / "server.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited {proc.returncode}: {(tmp_path / 'server.log').read_text()[-2000:]}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not ready in {timeout} s: {(tmp_path / 'server.log').read_text()[-2000:]}")


def random_png(seed: int, size: int = 48) -> bytes:
    """A random-pixel PNG (distinct per seed)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()
