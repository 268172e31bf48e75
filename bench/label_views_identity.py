"""The labels and alignment checks of the audit on `bench/audit_100k.py`'s augmented emoji set, to JSON.

Run it on two versions of the code (e.g. before and after a change to the label views) and compare the
JSON files: the findings, evidence and metrics of both checks, plus each stage's peak RSS. It reuses the
embeddings `bench/audit_100k.py` left in the set's store (copied, so the original is not written).

    PYTHONPATH=$PWD/src python bench/label_views_identity.py --n 15000 --json /tmp/views_after.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path


def inject(frame, share: float, seed: int):
    """A copy of `frame` with `share` of its labels moved to another record's label and `share` of its
    captions exchanged in pairs (images untouched, so their embeddings stay in the store)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    frame = frame.copy()
    labelled = np.flatnonzero(frame["label"].notna().to_numpy())
    flip = rng.choice(labelled, int(share * len(labelled)), replace=False)
    frame.loc[frame.index[flip], "label"] = frame["label"].to_numpy()[rng.permutation(labelled)[: len(flip)]]
    swap = rng.choice(len(frame), 2 * (int(share * len(frame)) // 2), replace=False)
    texts = list(frame["texts"])
    for a, b in swap.reshape(-1, 2):
        texts[a], texts[b] = texts[b], texts[a]
    frame["texts"] = texts
    return frame


def main(argv: list[str] | None = None) -> dict:
    """Audit labels and alignment of the n-row set; write findings, metrics and stage RSS to --json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=15000)
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/vlmops/bench-audit").expanduser())
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--faults", type=float, default=0.0, help="labels flipped, captions swapped")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from vlmops.audit.run import AuditInputs, run_audit
    from vlmops.data.manifest import resolve_data
    from vlmops.evaluate.task import DEFAULT_TEMPLATES
    from vlmops.models import load_model
    from vlmops.store.cache import open_cache
    from vlmops.store.embed import content_sha256
    from vlmops.timing import StageTimer

    root = args.cache / f"emoji-aug-n{args.n}-seed0-jitter0.2"
    frame = resolve_data(str(root / "manifest.parquet"))
    if args.faults:
        frame = inject(frame, args.faults, args.seed)
    hashes = [content_sha256(p) for p in frame["image"]]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store.sqlite"
        if (root / "store.sqlite").is_file():
            shutil.copyfile(root / "store.sqlite", store)
        timer = StageTimer()
        with open_cache(str(store)) as cache:
            inputs = AuditInputs(
                frame, hashes, load_model("builtin:emoji-lit"), cache, False,
                prompt_template=DEFAULT_TEMPLATES["emoji"][0],
            )  # fmt: skip
            report = run_audit(inputs, ["labels", "alignment"], {"n": len(frame)}, [], {})
    payload = report.to_dict()
    timings = {**timer.stages, **payload.get("timings", {})}
    out = {"checks": payload["checks"], "summary": payload["summary"], "timings": timings,
           "command": "python bench/label_views_identity.py " + " ".join(argv or sys.argv[1:])}  # fmt: skip
    args.json.write_text(json.dumps(out, indent=1, sort_keys=True, default=str) + "\n")
    return out


if __name__ == "__main__":
    main()
