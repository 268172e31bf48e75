"""False alarms and power of the generative-traffic detectors on real captioner answers.

Healthy traffic: `builtin:emoji-captioner` describing ("Describe this emoji.") google and twitter
emoji, the vendors it was trained on (`--healthy facebook` for a vendor it was not); shifted
traffic: the same model describing OpenMoji drawings, which it describes worse. Each detector sees R
window pairs: reference (n answers) against a window (m answers) drawn from the healthy pool (false
alarms) or with a share of the window from the shifted pool (power). The judge is
`builtin:emoji-lit`; grounding is its image–answer cosine and the hallucination estimate issue 16's
(emoji tags as the vocabulary). Refusal and injection rates are mixtures of the healthy answers/prompts with
refusals/injections at a base rate and a raised rate.

    python bench/gen_monitor_power.py
    python bench/gen_monitor_power.py --healthy facebook --pairs 400 --shares 0.25 0.5 1.0
"""

from __future__ import annotations

import argparse
import time

import numpy as np

PROMPT = "Describe this emoji."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=500, help="images per pool (seeded)")
    parser.add_argument("--pairs", type=int, default=200, help="window pairs per rate")
    parser.add_argument("--n", type=int, default=100, help="reference window size")
    parser.add_argument("--m", type=int, default=50, help="current window size")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5, 1.0], help="shifted share")
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument(
        "--healthy", nargs="+", default=["google", "twitter"], help="vendors of healthy traffic"
    )
    parser.add_argument("--shifted", nargs="+", default=["openmoji"], help="vendors of shifted traffic")
    return parser.parse_args(argv)


def pool_features(captioner, judge, rows, vocabulary, template):
    """Per image: answer, answer vector, words, grounding cosine, hallucination flag (NaN: no mention)."""
    from vlmops.data.images import load_image
    from vlmops.monitor.grounding import grounding_scores, unsupported_flags

    images = [load_image(p) for p in rows["image"]]
    answers = [g.text for g in captioner.generate(images, [PROMPT] * len(images), max_tokens=24)]
    image_vec = judge.embed_images(images).astype(np.float64)
    answer_vec = judge.embed_texts(answers).astype(np.float64)
    has, flagged, _ = unsupported_flags(judge, image_vec, answers, vocabulary, template)
    return {
        "answers": answers,
        "vectors": answer_vec,
        "words": np.array([len(a.split()) for a in answers], dtype=float),
        "grounding": grounding_scores(image_vec, answer_vec),
        "hallucination": np.where(has, flagged.astype(float), np.nan),
    }


def draw(rng, healthy, shifted, size, share, key):
    """`size` values of `key`: a `share` of them from the shifted pool (NaN dropped)."""
    k = round(share * size)
    parts = []
    for pool, count in ((healthy, size - k), (shifted, k)):
        values = pool[key]
        parts.append(values[rng.integers(len(values), size=count)])
    out = np.concatenate(parts)
    return out[~np.isnan(out)] if out.ndim == 1 else out


def flags(rng, size, rate):
    return (rng.random(size) < rate).astype(float)


def rate_of(make, draw_pair, pairs, seed):
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    with threadpool_limits(1):
        return float(
            np.mean([make().fit(r).test(w).drifted for r, w in (draw_pair(rng) for _ in range(pairs))])
        )


def main(argv: list[str] | None = None) -> None:
    """Build both pools, then print false-alarm and power rates per detector."""
    args = parse_args(argv)
    from vlmops.data.emoji import load_emoji_manifest
    from vlmops.evaluate.task import DEFAULT_TEMPLATES
    from vlmops.models import load_model
    from vlmops.monitor.grounding import data_vocabulary
    from vlmops.monitor.mmd import MMDDetector
    from vlmops.monitor.permutation import PermutationShiftDetector

    start = time.perf_counter()
    manifest = load_emoji_manifest()
    captioner, judge = load_model("builtin:emoji-captioner"), load_model("builtin:emoji-lit")
    vocabulary, template = data_vocabulary("emoji"), DEFAULT_TEMPLATES["emoji"][0]
    pools = {}
    for name, vendors in (("healthy", args.healthy), ("shifted", args.shifted)):
        rows = manifest[manifest["vendor"].isin(vendors)].sample(args.pool, random_state=0)
        pools[name] = pool_features(captioner, judge, rows, vocabulary, template)
    healthy, shifted = pools["healthy"], pools["shifted"]
    print(
        f"pools: {args.pool} answers on {'+'.join(args.healthy)} and on {'+'.join(args.shifted)} images "
        f"in {time.perf_counter() - start:.0f} s; "
        f"windows n={args.n} m={args.m}, {args.pairs} pairs per rate, alpha 0.05"
    )
    for name, pool in pools.items():
        print(
            f"  {name}: words {pool['words'].mean():.2f}  grounding {pool['grounding'].mean():.3f}  "
            f"hallucinated {np.nanmean(pool['hallucination']):.3f}  e.g. {pool['answers'][:3]}"
        )

    def mean_test():
        return PermutationShiftDetector(n_permutations=args.permutations)

    real = {
        "answer_embedding": (lambda: MMDDetector(n_permutations=args.permutations), "vectors"),
        "answer_length": (mean_test, "words"),
        "grounding": (mean_test, "grounding"),
        "hallucination": (mean_test, "hallucination"),
    }
    header = (
        "| detector | false alarms | " + " | ".join(f"power, {s:.0%} shifted" for s in args.shares) + " |"
    )
    print("\n" + header + "\n|" + "---|" * (2 + len(args.shares)))
    for name, (make, key) in real.items():
        rates = [
            rate_of(
                make,
                lambda r, s=share, k=key: (
                    draw(r, healthy, shifted, args.n, 0.0, k),
                    draw(r, healthy, shifted, args.m, s, k),
                ),
                args.pairs,
                seed=i,
            )
            for i, share in enumerate([0.0, *args.shares])
        ]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in rates) + " |")
    mixtures = {"refusal_rate (5% -> 20%)": (0.05, 0.20), "injection (2% -> 10%)": (0.02, 0.10)}
    for name, (base, raised) in mixtures.items():
        rates = [
            rate_of(
                mean_test,
                lambda r, b=base, rr=rate: (flags(r, args.n, b), flags(r, args.m, rr)),
                args.pairs,
                seed=7,
            )
            for rate in (base, raised)
        ]
        print(f"| {name} | {rates[0]:.3f} | power {rates[1]:.3f} |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
