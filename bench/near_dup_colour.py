"""Near-duplicate recall and precision against the colour check's limit, on the audit benchmark's faults.

Builds the same faulty copy of the emoji data as `bench/audit_recall.py` (same seed, same injections),
runs only the duplicates check at each `--max-colour`, and prints recall of the injected copies,
precision against the injected pairs, with the source's pixel twins counted, and with the source's
clusters in the data without the copies counted (`audit_recall.source_cluster_pairs`).

    python bench/near_dup_colour.py --seed 0 --max-colour 12 13
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from audit_recall import flagged_copy_pairs, inject, near_duplicate_scores


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
        for limit in args.max_colour:
            result = duplicates_check(frame, embeddings=emb, hashes=hashes, progress=False, max_colour=limit)
            flagged = flagged_copy_pairs(result.details["clusters"], truth["near_pairs"])
            s = near_duplicate_scores(flagged, truth, frame, emb, max_colour=limit)
            rate = result.metrics["near_dup_rate"]
            print(
                f"seed {args.seed} max_colour {limit:g}: recall {s['recall']:.3f}, "
                f"precision {s['precision']:.3f}, with pixel twins {s['precision_pixel_twins_counted']:.3f}, "
                f"with the source's clean clusters {s['precision_source_clusters_counted']:.3f}, "
                f"near_dup_rate {rate:.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
