"""Image-side robustness sections of `vlmops eval`: corruptions and white-box adversarial attacks.

Corruption error follows Hendrycks & Dietterich (2019) without the AlexNet normalisation (there is no
reference model here): CE of a family = mean top-1 error over its severities, mCE = mean CE over
families, relative mCE = mean of (corrupted error - clean error). Relative robustness = mean corrupted
accuracy / clean accuracy (1.0 = no loss).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from vlmops.evaluate.accuracy import top1_correct
from vlmops.evaluate.context import EvalContext

CORRUPTION_VERSION = "v1"


def corruptions_section(
    ctx: EvalContext, sample: int | None, severities: Sequence[int] = (1, 2, 3, 4, 5)
) -> dict:
    """Top-1 per family x severity on a seeded sample of rows, with mCE and relative robustness."""
    from vlmops.evaluate.corruptions import FAMILIES, corrupt
    from vlmops.progress import progress_bar

    rows = ctx.sample(sample, "corruptions")
    targets = ctx.task.targets[rows]
    clean = float(top1_correct(ctx.logits(ctx.image_emb[rows]), targets).mean())
    table: dict[str, dict[str, float]] = {}
    with progress_bar(ctx.progress) as bar:
        task = bar.add_task(f"corruptions ({len(rows)} images)", total=len(FAMILIES) * len(severities))
        for family in FAMILIES:
            table[family] = {}
            for severity in severities:

                def make(image, seed, _variant, f=family, s=severity):
                    return corrupt(image, f, s, seed)

                emb = ctx.variant_emb(f"corrupt:{CORRUPTION_VERSION}:{family}:{severity}", make, rows)
                table[family][str(severity)] = float(top1_correct(ctx.logits(emb), targets).mean())
                bar.advance(task)
    family_error = {f: float(np.mean([1 - a for a in by_s.values()])) for f, by_s in table.items()}
    mean_acc = float(np.mean([a for by_s in table.values() for a in by_s.values()]))
    return {
        "n": len(rows),
        "severities": list(severities),
        "clean_top1": clean,
        "top1": table,
        "groups": dict(FAMILIES),
        "corruption_error": family_error,
        "mce": float(np.mean(list(family_error.values()))),
        "relative_mce": float(np.mean(list(family_error.values())) - (1 - clean)),
        "mean_corrupted_top1": mean_acc,
        "relative_robustness": mean_acc / clean if clean > 0 else None,
    }


def adversarial_section(ctx: EvalContext, sample: int, epsilons: Sequence[float], steps: int = 10) -> dict:
    """Top-1 under FGSM and PGD (L-inf, untargeted, through the zero-shot head) at each epsilon."""
    from vlmops.data.images import load_image
    from vlmops.evaluate.adversarial import adversarial_embeddings, is_differentiable
    from vlmops.store.embed import embed_keys_cached, variant_key

    ok, reason = is_differentiable(ctx.model)
    if not ok:
        return {"skipped": reason}
    rows = ctx.sample(sample, "adversarial")
    targets = ctx.task.targets[rows]
    class_emb = ctx.class_emb
    heads = hashlib.sha256(class_emb.tobytes()).hexdigest()[:16]  # the attacked head is part of the key
    paths = ctx.task.frame["image"].to_numpy()[rows]
    clean = float(top1_correct(ctx.logits(ctx.image_emb[rows]), targets).mean())
    out: dict = {"n": len(rows), "steps": steps, "clean_top1": clean, "fgsm": {}, "pgd": {}}
    for method in ("fgsm", "pgd"):
        for eps in epsilons:
            spec = f"adv:{method}:{eps:.6f}:{steps}:{ctx.seed}:{heads}"
            keys = [variant_key(ctx.content_keys[i], spec) for i in rows]
            by_key = {k: (p, t) for k, p, t in zip(keys, paths, targets, strict=True)}

            def encode(batch, m=method, e=eps, by_key=by_key):
                images = [load_image(by_key[k][0]) for k in batch]
                batch_targets = np.array([by_key[k][1] for k in batch])
                return adversarial_embeddings(
                    ctx.model, images, class_emb, batch_targets, m, e, steps=steps, seed=ctx.seed
                )

            emb, stats = embed_keys_cached(
                ctx.model,
                keys,
                ctx.model.transform_id,
                encode,
                ctx.cache,
                progress=ctx.progress,
                what=f"{method} eps={eps * 255:.0f}/255",
            )
            ctx.stats.append(stats)
            out[method][f"{eps * 255:.0f}/255"] = float(top1_correct(ctx.logits(emb), targets).mean())
    return out
