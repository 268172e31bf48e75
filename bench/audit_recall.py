"""Audit recall: inject known faults into a copy of the emoji data, run `vlmops audit`, score each check.

Faults (seeded): near-duplicates of 150 images (resize, JPEG 40, crop 90 %, rotation 5 deg; saved as
new records), 5 % flipped labels, 5 % swapped captions, PII strings of every kind in 20 captions each,
EXIF GPS in 20 JPEG copies, and a backdoor: a 6x6 patch stamped on images of other labels relabelled to
the largest label, 3 % of its size. Labels are the emoji's `category/subcategory` (a label per
subcategory, so a backdoor of 3 % of one label is several images). Originals are never touched: the
copy is a manifest in a temporary folder that points at the installed images plus the new files.

Copies (near-duplicates, GPS and poisoned images) keep their source's caption and label, so a copy of a
record with a swapped caption, a flipped label or PII in its caption counts as having that fault too.

Prints precision and recall per check against the injected ground truth, the audit's time with the
embedding store warm, and the near-duplicate step's time at 2k, 4k, 8k and all records.

    python bench/audit_recall.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

PII_SAMPLES = {
    "email": "write to jane.doe@example.org",
    "phone": "call +44 20 7946 0958",
    "card": "card 4111 1111 1111 1111",
    "iban": "IBAN GB82 WEST 1234 5698 7654 32",
    "ip": "from 203.0.113.42",
    "national_id": "SSN 123-45-6789",
    "secret_url": "see https://example.com/x?token=abcd1234efgh5678",
    "name": "photo by Maria Lopez",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:emoji-lit", help="model URI (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every injection (default: 0)")
    parser.add_argument("--store", default=None, help="embedding store (default: a temporary one, run twice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the scores to this JSON file")
    parser.add_argument(
        "--phases", default="cold,warm", help="audit runs, e.g. 'warm' for one run (default: %(default)s)"
    )
    return parser.parse_args(argv)


def _near_copy(image: Image.Image, kind: str) -> Image.Image:
    w, h = image.size
    if kind == "resize":
        return image.resize((int(w * 0.7), int(h * 0.7)), Image.Resampling.BILINEAR)
    if kind == "crop":
        dx, dy = int(w * 0.05), int(h * 0.05)
        return image.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.BICUBIC)
    if kind == "rotate":
        return image.rotate(5, resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    return image  # jpeg: the re-encoding is the change


def load_image(source) -> Image.Image:
    """The image as RGB on white, as the model and the audit see it (`load_image` keeps the stored mode)."""
    from vlmops.data.images import load_image as load
    from vlmops.models.preprocess import to_rgb

    return to_rgb(load(source))


def inject(frame: pd.DataFrame, root: Path, seed: int) -> tuple[pd.DataFrame, dict]:
    """A faulty copy of `frame` (labels at category/subcategory) and the ground truth per check."""

    rng = np.random.default_rng(seed)
    df = frame.copy().reset_index(drop=True)
    df["label"] = ["/".join(x.split("/")[:2]) for x in df["label"]]
    df["texts"] = [list(t) for t in df["texts"]]
    truth: dict[str, set] = {}
    n = len(df)
    # Label flips: 5 % of records get another subcategory.
    labels = sorted(df["label"].unique())
    flip = rng.choice(n, int(0.05 * n), replace=False)
    for i in flip:
        df.at[i, "label"] = labels[
            (labels.index(df.at[i, "label"]) + rng.integers(1, len(labels))) % len(labels)
        ]
    truth["labels"] = set(df.loc[flip, "id"])
    # Caption swaps: 5 % of the other records swap first texts in pairs.
    rest = np.setdiff1d(np.arange(n), flip)
    swap = rng.choice(rest, int(0.05 * n) // 2 * 2, replace=False).reshape(-1, 2)
    for a, b in swap:
        df.at[a, "texts"], df.at[b, "texts"] = df.at[b, "texts"], df.at[a, "texts"]
    truth["alignment"] = set(df.loc[swap.ravel(), "id"])
    # PII in 20 captions per kind.
    pii_rows = rng.choice(np.setdiff1d(rest, swap.ravel()), 20 * len(PII_SAMPLES), replace=False)
    for k, i in enumerate(pii_rows):
        df.at[i, "texts"] = [
            f"{df.at[i, 'texts'][0]}, {list(PII_SAMPLES.values())[k // 20]}",
            *df.at[i, "texts"][1:],
        ]
    truth["pii"] = set(df.loc[pii_rows, "id"])
    new_rows, dup_pairs, gps_ids, backdoor_ids = [], set(), set(), set()
    (root / "img").mkdir(parents=True, exist_ok=True)
    # Near-duplicates: 150 new records.
    for j, i in enumerate(rng.choice(n, 150, replace=False)):
        kind = ("resize", "jpeg", "crop", "rotate")[j % 4]
        row = df.loc[i].to_dict()
        path = root / "img" / f"dup{j}.{'jpg' if kind == 'jpeg' else 'png'}"
        _near_copy(load_image(row["image"]), kind).save(path, **({"quality": 40} if kind == "jpeg" else {}))
        new_rows.append({**row, "id": f"dup:{kind}:{row['id']}", "image": str(path), "sha256": None})
        dup_pairs.add((row["id"], f"dup:{kind}:{row['id']}"))
    # EXIF GPS: 20 JPEG copies carrying coordinates.
    for j, i in enumerate(rng.choice(n, 20, replace=False)):
        row = df.loc[i].to_dict()
        path = root / "img" / f"gps{j}.jpg"
        exif = Image.Exif()
        exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)})
        load_image(row["image"]).save(path, quality=95, exif=exif)
        new_rows.append({**row, "id": f"gps:{row['id']}", "image": str(path), "sha256": None})
        gps_ids.add(f"gps:{row['id']}")
    # Backdoor: stamp a 6x6 patch on images of other labels and relabel them to the largest label.
    target = df["label"].value_counts().index[0]
    n_poison = max(3, int(0.03 * (df["label"] == target).sum()))
    patch = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    for j, i in enumerate(rng.choice(np.flatnonzero(df["label"] != target), n_poison, replace=False)):
        row = df.loc[i].to_dict()
        pixels = np.asarray(load_image(row["image"])).copy()
        pixels[-8:-2, -8:-2] = patch
        path = root / "img" / f"poison{j}.png"
        Image.fromarray(pixels).save(path)
        new_rows.append(
            {**row, "id": f"poison:{row['id']}", "image": str(path), "label": target, "sha256": None}
        )
        backdoor_ids.add(f"poison:{row['id']}")
    out = pd.concat([df, pd.DataFrame(new_rows)], ignore_index=True)
    truth |= {"near_pairs": dup_pairs, "gps": gps_ids, "backdoor": backdoor_ids}
    # Copies inherit their source's faults: a near-duplicate or GPS copy of a record whose caption was
    # swapped or given PII carries that caption too (and, unless poisoned, its flipped label).
    for row in new_rows:
        source = row["id"].split(":", 2)[-1] if row["id"].startswith("dup:") else row["id"].split(":", 1)[1]
        for check in ("alignment", "pii"):
            if source in truth[check]:
                truth[check].add(row["id"])
        if source in truth["labels"] and not row["id"].startswith("poison:"):
            truth["labels"].add(row["id"])
    return out, truth


def _pr(found: set, true: set) -> dict:
    tp = len(found & true)
    return {
        "precision": tp / len(found) if found else None,
        "recall": tp / len(true) if true else None,
        "found": len(found),
        "true": len(true),
    }


def _pixel_twin_pairs(flagged: set, near_pairs: set, frame: pd.DataFrame) -> set:
    """Flagged (record, copy) pairs whose record is a pixel twin of the copy's source.

    The emoji data has its own near-identical records (the same drawing under another code point, skin
    tones on a face a few pixels wide). A copy clustered with such a twin of its source is a correct
    near duplicate that the injected truth does not list. Twin: mean |difference| <= 3 (of 255) over a
    64x64 RGB rendering on white, an independent pixel yardstick (the audit uses pHash, a blurred colour
    thumbnail and embeddings), stricter than any injected edit (JPEG q40 copies differ by 6.5 on median).
    """
    source = {copy: src for src, copy in near_pairs}
    path = dict(zip(frame["id"], frame["image"], strict=True))

    def pixels(record: str) -> np.ndarray:
        return np.asarray(load_image(path[record]).resize((64, 64)), dtype=np.float32)

    out = set()
    for record, copy in flagged - near_pairs:
        if np.abs(pixels(record) - pixels(source[copy])).mean() <= 3.0:
            out.add((record, copy))
    return out


INJECTED = ("dup:", "gps:", "poison:")  # id prefixes of the records `inject` adds


def source_cluster_pairs(flagged: set, near_pairs: set, frame: pd.DataFrame, embeddings, **options) -> set:
    """Flagged (record, copy) pairs whose record shares a cluster with the copy's source in the audit
    of the data without the injected records (same embeddings, same `duplicates_check` options).

    Such a copy is attached where its source already was: whether the source's own cluster mates are
    near duplicates is the clean data's question (the real emoji audit reports them), not the injected
    copy's. Counting them isolates how precisely the copies themselves are matched.
    """
    from vlmops.audit.duplicates import duplicates_check

    original = ~frame["id"].astype(str).str.startswith(INJECTED).to_numpy()
    clean = duplicates_check(frame[original], np.asarray(embeddings)[original], progress=False, **options)
    cluster = {m: c["cluster"] for c in clean.details["clusters"] for m in c["ids"]}
    source = {copy: src for src, copy in near_pairs}
    return {
        (record, copy)
        for record, copy in flagged - near_pairs
        if record in cluster and cluster[record] == cluster.get(source[copy])
    }


def near_duplicate_scores(flagged: set, truth: dict, frame: pd.DataFrame, embeddings, **options) -> dict:
    """Recall and precision of the flagged (record, copy) pairs: strict, with the source's pixel twins
    counted as correct, and with the source's clean-data cluster mates counted too."""
    twins = _pixel_twin_pairs(flagged, truth["near_pairs"], frame)
    mates = source_cluster_pairs(flagged, truth["near_pairs"], frame, embeddings, **options)
    right = flagged & truth["near_pairs"]
    return {
        **_pr(flagged, truth["near_pairs"]),
        "precision_pixel_twins_counted": len(right | twins) / len(flagged) if flagged else None,
        "precision_source_clusters_counted": len(right | twins | mates) / len(flagged) if flagged else None,
    }


def flagged_copy_pairs(clusters: list[dict], near_pairs: set) -> set:
    """(record, copy) pairs of every cluster holding an injected near-duplicate copy."""
    copies = {b for _, b in near_pairs}
    return {(a, b) for c in clusters for a in c["ids"] for b in c["ids"] if a != b and b in copies}


def score(report: dict, truth: dict, frame: pd.DataFrame, embeddings) -> dict:
    """Precision/recall per injected fault from the audit JSON."""
    checks = report["checks"]

    def ids(check: str, kinds: set[str] | None = None) -> set:
        return {f["record_id"] for f in checks[check]["findings"] if kinds is None or f["kind"] in kinds}

    flagged_pairs = flagged_copy_pairs(checks["duplicates"]["details"]["clusters"], truth["near_pairs"])
    pii_found = ids("pii") - truth["gps"]
    clean = set(frame["id"]) - truth["pii"] - truth["gps"]
    return {
        "near_duplicates": near_duplicate_scores(flagged_pairs, truth, frame, embeddings),
        "flipped_labels": _pr(ids("labels"), truth["labels"]),
        "swapped_captions": _pr(ids("alignment"), truth["alignment"]),
        "pii_text": {
            **_pr(pii_found & set(frame["id"]), truth["pii"]),
            "false_positive_rate_clean": len(pii_found & clean) / len(clean),
        },
        "exif_gps": _pr(ids("pii", {"gps"}), truth["gps"]),
        "backdoor": _pr(ids("poisoning"), truth["backdoor"]),
    }


def main(argv: list[str] | None = None) -> None:
    """Inject, audit (twice when the store is temporary: cold, then warm), score, time near-dups."""
    from vlmops.audit.run import CHECKS, AuditInputs, run_audit
    from vlmops.data.emoji import load_emoji_manifest
    from vlmops.evaluate.slices import default_slice_fields
    from vlmops.models import load_model
    from vlmops.store.cache import open_cache
    from vlmops.store.embed import content_sha256

    args = parse_args(argv)
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        frame, truth = inject(load_emoji_manifest(), Path(tmp), args.seed)
        store = args.store or str(Path(tmp) / "store.sqlite")
        fields = default_slice_fields(frame, ["vendor", "category", "skin_tone", "gender"])
        with open_cache(store) as cache:
            for phase in args.phases.split(","):
                start = time.perf_counter()
                hashes = [content_sha256(p) for p in frame["image"]]
                inputs = AuditInputs(frame, hashes, model, cache, False, prompt_template="an emoji of {}")
                report = run_audit(
                    inputs, CHECKS, {"spec": "emoji+faults"}, fields, ["category", "subcategory"]
                )
                seconds = time.perf_counter() - start
                print(f"audit of {len(frame)} records, {phase} store: {seconds:.1f} s")
                print("  per check:", report.meta["timing_seconds"])
            scores = score(report.to_dict(), truth, frame, inputs.image_emb())
            for name, s in scores.items():
                print(
                    f"{name}: "
                    + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items())
                )
            scores["near_dup_timing"] = _time_near_dups(inputs, frame)
    if args.json:
        args.json.write_text(json.dumps(scores, indent=2, default=str))


def _time_near_dups(inputs, frame: pd.DataFrame) -> dict:
    from vlmops.audit.duplicates import duplicates_check

    emb = inputs.image_emb()
    hashes = frame.assign(sha256=inputs.content_sha256)
    timings = {}
    for n in (2000, 4000, 8000, len(frame)):
        start = time.perf_counter()
        duplicates_check(hashes.head(n), emb[:n], progress=False)
        timings[n] = round(time.perf_counter() - start, 2)
        print(f"near-duplicates on {n} records: {timings[n]:.2f} s")
    return timings


if __name__ == "__main__":
    main()
