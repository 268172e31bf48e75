"""Near-duplicate recall and precision against the colour check's limit, on the audit benchmark's faults.

Builds the same faulty copy of the emoji data as `bench/audit_recall.py` (same seed, same injections),
runs only the duplicates check at each `--max-colour`, and prints recall of the injected copies,
precision against the injected pairs, and precision with the source's pixel twins counted.

    python bench/near_dup_colour.py --seed 0 --max-colour 12 13
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from audit_recall import _pixel_twin_pairs, inject


def main(argv: list[str] | None = None) -> None:
    """Inject, embed through the store, sweep the colour limit."""
    from vlmops.audit.duplicates import duplicates_check, signatures
    from vlmops.data.emoji import load_emoji_manifest
    from vlmops.models import load_model
    from vlmops.store.cache import open_cache
    from vlmops.store.embed import embed_images_cached

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-colour", type=float, nargs="+", default=[12.0])
    parser.add_argument("--store", default=None, help="embedding store (default: the standard one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        frame, truth = inject(load_emoji_manifest(), Path(tmp), args.seed)
        with open_cache(args.store) as cache:
            emb, _ = embed_images_cached(
                load_model("builtin:emoji-lit"), list(frame["image"]), cache, progress=False
            )
        hashes = signatures(frame["image"].astype(str).tolist(), progress=False)
        copies = {copy for _, copy in truth["near_pairs"]}
        for limit in args.max_colour:
            result = duplicates_check(frame, embeddings=emb, hashes=hashes, progress=False, max_colour=limit)
            flagged = {
                (a, b)
                for c in result.details["clusters"]
                for a in c["ids"]
                for b in c["ids"]
                if a != b and b in copies
            }
            hits = len(flagged & truth["near_pairs"])
            twins = len(_pixel_twin_pairs(flagged, truth["near_pairs"], frame))
            print(
                f"seed {args.seed} max_colour {limit:g}: recall {hits / len(truth['near_pairs']):.3f}, "
                f"precision {hits / len(flagged):.3f}, with pixel twins {(hits + twins) / len(flagged):.3f}, "
                f"near_dup_rate {result.metrics['near_dup_rate']:.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
