"""The audit's shared image scan (issue 14, item 6): a subset manifest to audit, and a findings diff.

    python bench/audit_scan.py manifest OUT_DIR [--concepts 120 --seed 0]
        writes OUT_DIR/sub.jsonl: every vendor's image of `--concepts` random emoji concepts, plus four
        broken files (zero bytes, truncated PNG, text named .png, PNG named .jpg) under OUT_DIR/bad/
    python bench/audit_scan.py compare A.json B.json
        differences between two `vlmops audit --json` reports, ignoring run times and the creation stamp
    python bench/audit_scan.py stages --data DATA [--repeat 3]
        CPU seconds (best of --repeat) of the image work of a full audit (readable, quality, duplicates,
        pii, poisoning): each check reading the files itself, as before, against the one shared scan

Time `vlmops audit --data OUT_DIR/sub.jsonl ...` with the old and the new source on the path (see
bench/RESULTS.md for the commands).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

TIMES = ("created", "timing_seconds")


def write_manifest(out: Path, concepts: int, seed: int) -> Path:
    """The subset manifest with four broken files appended; returns its path."""
    from vlmops.data.manifest import resolve_data

    frame = resolve_data("emoji")
    every = sorted(frame["concept"].unique())
    chosen = set(np.random.default_rng(seed).choice(every, concepts, replace=False))
    rows = json.loads(frame[frame["concept"].isin(chosen)].to_json(orient="records"))
    bad = out / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    source = Path(rows[0]["image"])
    (bad / "zero.png").write_bytes(b"")
    (bad / "trunc.png").write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    (bad / "text.png").write_text("not an image")
    shutil.copy(source, bad / "wrong.jpg")
    for i, name in enumerate(("zero.png", "trunc.png", "text.png", "wrong.jpg")):
        row = {k: v for k, v in rows[i].items() if k not in ("sha256", "original")}
        rows.append(row | {"id": f"bad:{name}", "image": str(bad / name)})
    path = out / "sub.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _clean(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k not in TIMES}
    poisoning = out.get("checks", {}).get("poisoning", {}).get("details", {})
    poisoning.pop("patch_seconds", None)  # a run time too
    return out


def differences(a, b, path: str = "") -> list[str]:
    """Paths where two JSON values differ (NaN equals NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in {'first' if k in a else 'second'}" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in differences(x, y, f"{path}[{i}]")]
    same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
    return [] if same else [f"{path}: {str(a)[:80]} != {str(b)[:80]}"]


def _cpu(work, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return round(best, 2)


def stages(data: str, repeat: int) -> dict[str, float]:
    """CPU seconds of each separate image pass (the code before the shared scan) and of the scan."""
    from vlmops.audit.duplicates import signatures
    from vlmops.audit.patches import _hash_images
    from vlmops.audit.pii import exif_pii
    from vlmops.audit.quality import image_stats
    from vlmops.audit.scan import consumers_for, scan_images
    from vlmops.data.images import load_image
    from vlmops.data.manifest import resolve_data
    from vlmops.errors import DataError

    frame = resolve_data(data)
    paths = frame["image"].tolist()

    def decodes(path: str) -> bool:
        try:
            load_image(path)
        except DataError:
            return False
        return True

    readable = [decodes(p) for p in paths]
    labelled = frame["label"].notna().tolist()
    feed = [p for p, ok, known in zip(paths, readable, labelled, strict=True) if ok and known]
    separate = {
        "readable (load_image)": lambda: [decodes(p) for p in paths],
        "quality (image_stats)": lambda: image_stats(paths, progress=False),
        "duplicates (signatures)": lambda: signatures(paths, progress=False),
        "pii (exif_pii per file)": lambda: [exif_pii(p) for p in paths],
        "poisoning (patch hashing)": lambda: _hash_images(feed, 6, 2, False),
    }
    out = {name: _cpu(work, repeat) for name, work in separate.items()}
    out["separate passes, total"] = round(sum(out.values()), 2)
    checks = ["quality", "duplicates", "pii", "poisoning"]
    shared = lambda: scan_images(paths, consumers_for(checks, frame, False), False)  # noqa: E731
    out["one shared scan"] = _cpu(shared, repeat)
    return out


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("manifest")
    make.add_argument("out", type=Path)
    make.add_argument("--concepts", type=int, default=120)
    make.add_argument("--seed", type=int, default=0)
    compare = sub.add_parser("compare")
    compare.add_argument("a", type=Path)
    compare.add_argument("b", type=Path)
    timed = sub.add_parser("stages")
    timed.add_argument("--data", default="emoji")
    timed.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.command == "stages":
        print(f"CPU seconds, best of {args.repeat}, on {args.data}:")
        for name, seconds in stages(args.data, args.repeat).items():
            print(f"  {name:28s} {seconds:7.2f}")
        return
    if args.command == "manifest":
        path = write_manifest(args.out, args.concepts, args.seed)
        print(f"{sum(1 for _ in path.open())} records -> {path}")
        return
    a, b = (_clean(json.loads(p.read_text())) for p in (args.a, args.b))
    found = differences(a, b)
    n = sum(len(check["findings"]) for check in a["checks"].values())
    print(f"{len(found)} differences ({n} findings in the first report)")
    print("\n".join(found[:50]))


if __name__ == "__main__":
    main()
