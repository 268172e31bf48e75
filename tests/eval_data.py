"""A tiny labelled image manifest for eval tests: coloured shapes in a two-tier hierarchy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = {
    "round/red circle": ((220, 30, 30), "ellipse"),
    "round/blue circle": ((30, 30, 220), "ellipse"),
    "square/red square": ((220, 30, 30), "rectangle"),
    "square/green square": ((30, 180, 30), "rectangle"),
}


def draw_shape(colour: tuple[int, int, int], shape: str, size: int, seed: int) -> Image.Image:
    """A shape of `colour` on white with a seeded jitter in position and size."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    pad = int(rng.integers(2, size // 4))
    box = (pad, pad + int(rng.integers(0, 3)), size - pad, size - pad)
    getattr(ImageDraw.Draw(image), shape)(box, fill=colour)
    return image


def write_manifest(root: Path, per_class: int = 10, size: int = 40) -> Path:
    """Images plus a JSONL manifest with label, split, a `style` attribute and a `concept` cluster."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for c, (label, (colour, shape)) in enumerate(CLASSES.items()):
        for i in range(per_class):
            path = root / f"c{c}_{i}.png"
            draw_shape(colour, shape, size, seed=100 * c + i).save(path)
            lines.append(
                {
                    "id": f"c{c}-{i}",
                    "image": path.name,
                    "label": label,
                    "split": "test",
                    "style": "flat" if i % 2 else "outline",
                    "concept": f"{label}#{i // 2}",
                    "tags": [label.split("/")[-1].split(" ")[0]],
                }
            )
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return manifest
