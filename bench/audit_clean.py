"""Audit false alarms: run every audit check on clean data and count findings per 1,000 records.

Clean data, two sources (every subset drawn with the seed):

* **Emoji, one vendor at a time** (google, twitter, facebook, openmoji). What the emoji data really
  contains is removed first, so that what remains is clean: skin-tone and gender variants (drawn alike
  across tones and genders), every record but the first of a concept, byte-identical files, and any
  record whose 64x64 rendering on white is within `DISTINCT` grey levels RMS of an earlier kept one
  (look-alikes such as the same drawing under two code points; a JPEG q40 copy of an emoji differs by
  11 on median, 8 to 15 for 80 % of them).
  Labels are the Unicode subcategory (`face-smiling`, `animal-mammal`, ...), the data's own, so no
  record is mislabelled; subcategories of fewer than `MIN_CLASS` kept records are left out.
  Half the subsets are image folders (`subcategory/xxx.png` copies loaded with `load_image_folder`, so
  each caption is the folder's name, as in a user's first folder; no split, no provenance), half are
  manifests with the emoji's name as caption, its provenance, and a seeded 70/15/15 train/val/test split
  (so leakage is checked).
* **Generated shapes** (numpy/Pillow, seeded): 64x64 images of one of eight shapes in one of ten named
  colours (jittered) on a light background, random size, position and rotation; label = the shape,
  caption = "a {colour} {shape}". A drawing within `DISTINCT` RMS of an earlier one is redrawn, so no
  two are near duplicates. Manifests with a CC0 licence and a 70/15/15 split.

Subset sizes (records): 40, 160 and 600 per vendor and shape seed; every check runs at its default
settings with `builtin:emoji-lit`, as `vlmops audit` runs them. A finding on this data is false by
construction, except two kinds of true statements about the data, printed apart and not counted:
provenance (a folder records no source or licence; the emoji manifests carry the real licences,
facebook "unclear" and openmoji CC-BY-SA) and balance (groups with fewer records than `--min-n`, 30:
small subsets have small labels). Info-level findings (a grayscale image in a colour data set) are
listed by kind, marked "(info)", and not counted: they note a property, not a problem. Prints each
subset's findings by kind, then per check the findings per 1,000 clean records (target: at most 1).

    python bench/audit_clean.py --store /tmp/clean.sqlite
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

TRUE_FINDINGS = ("provenance", "balance")  # statements about the data that are true of clean data too
DISTINCT = 12.0  # RMS grey levels (of 255) between 64x64 renderings on white: closer is not distinct
MIN_CLASS = 6
SIZES = (40, 160, 600)
VENDORS = ("google", "twitter", "facebook", "openmoji")
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
COLOURS = {
    "red": (220, 40, 40), "orange": (240, 140, 20), "yellow": (235, 210, 30), "green": (40, 170, 60),
    "teal": (20, 150, 150), "blue": (40, 80, 220), "purple": (130, 50, 180), "pink": (240, 120, 180),
    "brown": (120, 70, 30), "black": (20, 20, 20),
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:emoji-lit", help="model URI (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets (default: 0)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="subset sizes")
    parser.add_argument("--shape-seeds", type=int, default=2, help="generated-shape sets per size")
    parser.add_argument("--store", default=None, help="embedding store (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the counts to this JSON file")
    return parser.parse_args(argv)


def _rendering(source) -> np.ndarray:
    from vlmops.data.images import load_image
    from vlmops.models.preprocess import to_rgb

    image = to_rgb(source if isinstance(source, Image.Image) else load_image(source))
    return np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR), np.float32).ravel()


def distinct_rows(pixels: np.ndarray, limit: float = DISTINCT) -> np.ndarray:
    """Greedy in order: keep a row unless it is within `limit` RMS of an already kept row."""
    sq = (pixels.astype(np.float64) ** 2).sum(axis=1)
    d2 = (
        sq[:, None] + sq[None, :] - 2 * pixels.astype(np.float64) @ pixels.T.astype(np.float64)
    ) / pixels.shape[1]
    close = d2 <= limit**2
    keep = np.zeros(len(pixels), dtype=bool)
    for i in range(len(pixels)):
        keep[i] = not (close[i, :i] & keep[:i]).any()
    return keep


def clean_emoji_pool(frame: pd.DataFrame, vendor: str) -> pd.DataFrame:
    """The vendor's clean records (see the module docstring), labelled by subcategory."""
    df = frame[(frame["vendor"] == vendor) & (frame["skin_tone"] == "none") & (frame["gender"] == "none")]
    df = df.drop_duplicates("concept").drop_duplicates("sha256")
    keep = distinct_rows(np.stack([_rendering(p) for p in df["image"]]))
    df = df[keep].copy()
    df["label"] = df["subcategory"]
    counts = df["label"].value_counts()
    return df[df["label"].isin(counts[counts >= MIN_CLASS].index)].reset_index(drop=True)


def sample_classes(pool: pd.DataFrame, size: int, rng: np.random.Generator, cap: int = 25) -> pd.DataFrame:
    """About `size` records: classes in random order, up to `cap` random members each."""
    parts, total = [], 0
    for label in rng.permutation(sorted(pool["label"].unique())):
        members = pool[pool["label"] == label]
        take = min(len(members), cap, max(MIN_CLASS, size - total))
        parts.append(members.iloc[rng.permutation(len(members))[:take]])
        total += take
        if total >= size:
            break
    return pd.concat(parts, ignore_index=True)


def _splits(n: int, rng: np.random.Generator) -> list[str]:
    return list(rng.choice(["train", "val", "test"], n, p=[0.7, 0.15, 0.15]))


def as_folder(sample: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Copy the sample into `root/<label>/<id>.png` and load it as an image folder."""
    from vlmops.data.manifest import load_image_folder

    for record, label, path in zip(sample["id"], sample["label"], sample["image"], strict=True):
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, root / label / f"{record.replace(':', '_')}.png")
    return load_image_folder(root)


def as_manifest(sample: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The sample as a manifest: the emoji's name as caption, its provenance, a 70/15/15 split."""
    columns = ["id", "image", "label", "vendor", "source", "licence", "version", "sha256"]
    out = sample[columns].copy().reset_index(drop=True)
    out["texts"] = [[str(t[0])] for t in sample["texts"]]
    out["split"] = _splits(len(out), rng)
    return out


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, turn: float, fill
) -> None:
    def polygon(k: int, radii: list[float]) -> list[tuple[float, float]]:
        angles = turn + np.arange(k) * 2 * np.pi / k
        return [
            (cx + radii[i % len(radii)] * np.cos(a), cy + radii[i % len(radii)] * np.sin(a))
            for i, a in enumerate(angles)
        ]

    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(3, int(r / 3)))
    elif shape == "square":
        draw.polygon(polygon(4, [r * 1.2]), fill=fill)
    elif shape == "diamond":
        draw.polygon(polygon(4, [r * 1.25, r * 0.7]), fill=fill)
    elif shape == "triangle":
        draw.polygon(polygon(3, [r * 1.2]), fill=fill)
    elif shape == "hexagon":
        draw.polygon(polygon(6, [r * 1.1]), fill=fill)
    elif shape == "star":
        draw.polygon(polygon(10, [r * 1.2, r * 0.5]), fill=fill)
    else:  # cross
        w = r / 3
        for a in (turn, turn + np.pi / 2):
            dx, dy = np.cos(a), np.sin(a)
            draw.line((cx - r * dx, cy - r * dy, cx + r * dx, cy + r * dy), fill=fill, width=int(2 * w))


def draw_shape(rng: np.random.Generator) -> tuple[Image.Image, str, str]:
    """One random 64x64 shape image, its shape and its colour name."""
    shape, colour = SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]
    fill = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOURS[colour])
    background = tuple(int(v) for v in rng.integers(215, 256, 3))
    image = Image.new("RGB", (256, 256), background)  # drawn at 4x, reduced: anti-aliased edges
    r = rng.uniform(40, 90)
    cx, cy = rng.uniform(r + 10, 246 - r, 2)
    _draw_shape(ImageDraw.Draw(image), shape, cx, cy, r, rng.uniform(0, 2 * np.pi), fill)
    return image.resize((64, 64), Image.Resampling.LANCZOS), shape, colour


def shapes_manifest(n: int, seed: int, root: Path) -> pd.DataFrame:
    """`n` distinct generated shapes saved under `root`, as a manifest (CC0, 70/15/15 split)."""
    rng = np.random.default_rng(seed)
    rows, kept = [], []
    while len(rows) < n:
        image, shape, colour = draw_shape(rng)
        pixels = np.asarray(image, np.float32).ravel()
        if kept and np.sqrt(((np.stack(kept) - pixels) ** 2).mean(axis=1)).min() <= DISTINCT:
            continue
        kept.append(pixels)
        path = root / f"shape{len(rows):04d}.png"
        image.save(path)
        record = {"id": f"shape:{seed}:{len(rows)}", "image": str(path), "label": shape}
        rows.append(record | {"texts": [f"a {colour} {shape}"], "source": "bench", "licence": "CC0-1.0"})
    out = pd.DataFrame(rows)
    out["split"] = _splits(n, rng)
    return out


def audit_counts(frame: pd.DataFrame, model, cache, template: str) -> tuple[dict, dict]:
    """Findings per check (and per check and kind) of an audit of `frame` with every check."""
    from vlmops.audit.run import CHECKS, AuditInputs, run_audit
    from vlmops.data.manifest import attribute_columns
    from vlmops.evaluate.slices import default_slice_fields
    from vlmops.evaluate.task import tier_names_for
    from vlmops.evaluate.tiers import tiers_of
    from vlmops.store.embed import content_sha256

    hashes = [content_sha256(p) for p in frame["image"]]
    inputs = AuditInputs(frame, hashes, model, cache, False, prompt_template=template)
    fields = default_slice_fields(frame, attribute_columns(frame))
    tiers = tier_names_for("other", tiers_of([x for x in frame["label"] if x is not None]))  # as the CLI
    report = run_audit(inputs, CHECKS, {"spec": "clean"}, fields, tiers)
    per_check = {
        name: sum(f.severity != "info" for f in result.findings) for name, result in report.checks.items()
    }
    kinds = Counter(
        f"{f.check}/{f.kind}" + ("(info)" if f.severity == "info" else "") for f in report.findings
    )
    return per_check, dict(kinds)


def subsets(args: argparse.Namespace, tmp: Path):
    """(name, frame, prompt template) of every clean subset."""
    from vlmops.data.emoji import load_emoji_manifest

    emoji = load_emoji_manifest()
    for v, vendor in enumerate(VENDORS):
        pool = clean_emoji_pool(emoji, vendor)
        for s, size in enumerate(args.sizes):
            rng = np.random.default_rng([args.seed, v, s])
            sample = sample_classes(pool, size, rng)
            if (v + s) % 2 == 0:
                root = tmp / f"{vendor}-{size}"
                yield f"emoji {vendor} folder", as_folder(sample, root), "an emoji of {}"
            else:
                yield f"emoji {vendor} manifest", as_manifest(sample, rng), "an emoji of {}"
    for seed in range(args.shape_seeds):
        for size in args.sizes:
            root = tmp / f"shapes-{seed}-{size}"
            root.mkdir()
            yield "shapes manifest", shapes_manifest(size, 1000 * args.seed + 10 * seed + size, root), "a {}"


def main(argv: list[str] | None = None) -> None:
    """Audit every clean subset and print findings per check per 1,000 records."""
    from vlmops.models import load_model
    from vlmops.store.cache import open_cache

    args = parse_args(argv)
    model = load_model(args.model)
    totals: Counter = Counter()
    kinds: Counter = Counter()
    n_records, runs = 0, []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, open_cache(args.store or str(Path(tmp) / "s.sqlite")) as cache:
        for name, frame, template in subsets(args, Path(tmp)):
            per_check, per_kind = audit_counts(frame, model, cache, template)
            n_records += len(frame)
            shown = {k: v for k, v in per_kind.items() if not k.startswith(TRUE_FINDINGS)}
            print(f"{name:26s} {len(frame):4d} records: {shown or 'no findings'}", flush=True)
            runs.append({"subset": name, "records": len(frame), "findings": per_check, "kinds": per_kind})
            totals.update(per_check)
            kinds.update(per_kind)
    seconds = time.perf_counter() - start
    print(f"\n{len(runs)} subsets, {n_records} clean records, {seconds:.0f} s")
    print(f"{'check':12s} {'findings':>8s} {'per 1,000':>9s}  target <= 1")
    for check, count in totals.items():
        rate = 1000 * count / max(n_records, 1)
        verdict = (
            "(true findings, not counted)" if check in TRUE_FINDINGS else "met" if rate <= 1 else "MISSED"
        )
        print(f"{check:12s} {count:8d} {rate:9.2f}  {verdict}")
    print("by kind:", dict(sorted(kinds.items())))
    if args.json:
        summary = {"runs": runs, "totals": dict(totals), "kinds": dict(kinds), "records": n_records}
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
