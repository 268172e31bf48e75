"""Quality and speed of builtin:emoji-captioner (or any generative model) on the emoji data.

Names ("Describe this emoji.", CIDEr-D and exact match against the CLDR name) on three sets that the
model was not trained on in different ways: facebook drawings of train-split concepts (a new vendor),
google and twitter drawings of test-split concepts (new concepts), OpenMoji drawings of train-split
concepts (a very different style). Questions (VQA accuracy by question type) on the google and twitter
test split. Tokens per second at batch 1 and 32.

    python bench/captioner_quality.py
    python bench/captioner_quality.py --model builtin:emoji-captioner@/tmp/captioner --limit 300
"""

from __future__ import annotations

import argparse
import json
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:emoji-captioner", help="model URI (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per set (seeded)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    return parser.parse_args(argv)


def sets(manifest, limit: int | None) -> dict:
    """The evaluation sets, each a manifest slice (sampled to `limit` rows with a fixed seed)."""
    train, test = manifest["split"] == "train", manifest["split"] == "test"
    chosen = {
        "facebook, train concepts": manifest[(manifest["vendor"] == "facebook") & train],
        "google+twitter, test concepts": manifest[manifest["vendor"].isin(["google", "twitter"]) & test],
        "openmoji, train concepts": manifest[(manifest["vendor"] == "openmoji") & train],
    }
    if limit:
        chosen = {k: v.sample(min(limit, len(v)), random_state=0) for k, v in chosen.items()}
    return chosen


def names(model, frame) -> dict:
    """CIDEr-D and exact match of the generated name."""
    from vlmops.evaluate.generative import build_generative_task, reference_section
    from vlmops.store.generate import DecodingParams, generate_cached

    task = build_generative_task(frame, "emoji", "caption", split="all")
    answers, _ = generate_cached(model, list(task.frame["image"]), task.prompts, DecodingParams(), None, 64)
    section, _, _ = reference_section(task, [a.text for a in answers])
    return {"n": task.n, "cider_d": section["cider_d"], "exact_match": section["exact_match"]}


def questions(model, frame) -> dict:
    """VQA accuracy per question type."""
    from vlmops.evaluate.generative import build_generative_task, reference_section
    from vlmops.store.generate import DecodingParams, generate_cached

    task = build_generative_task(frame, "emoji", "vqa", split="all")
    answers, _ = generate_cached(model, list(task.frame["image"]), task.prompts, DecodingParams(), None, 64)
    section, _, _ = reference_section(task, [a.text for a in answers])
    return {"n": task.n, "vqa_accuracy": section["vqa_accuracy"], "by_type": section["by_type"]}


def tokens_per_second(model, paths, batch: int) -> float:
    """Answer tokens per second describing `paths` in batches of `batch` (images decoded before)."""
    from vlmops.data.images import load_image

    images = [load_image(p) for p in paths]
    prompts = ["Describe this emoji."] * len(images)
    model.batch_size = batch
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(images), batch):
        for answer in model.generate(images[i : i + batch], prompts[i : i + batch], max_tokens=32):
            tokens += answer.usage.completion_tokens or 0
    return tokens / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Print the table and optionally write JSON."""
    import torch

    from vlmops.data.emoji import load_emoji_manifest
    from vlmops.models import load_model

    args = parse_args(argv)
    torch.set_num_threads(2)
    manifest = load_emoji_manifest()
    model = load_model(args.model)
    results: dict = {"model": model.info.to_dict(), "names": {}, "questions": {}}
    for name, frame in sets(manifest, args.limit).items():
        row = results["names"][name] = names(model, frame)
        print(
            f"{name:32s} n={row['n']:5d}  CIDEr-D {row['cider_d']:.3f}  exact match {row['exact_match']:.3f}"
        )
    test = sets(manifest, args.limit)["google+twitter, test concepts"]
    results["questions"] = questions(model, test)
    print(f"questions on google+twitter test: VQA accuracy {results['questions']['vqa_accuracy']:.3f}")
    for kind, row in results["questions"]["by_type"].items():
        print(f"  {kind:12s} {row['accuracy']:.3f} (n={row['n']})")
    paths = list(test["image"].head(128))
    results["tokens_per_s"] = {str(b): tokens_per_second(model, paths, b) for b in (1, 32)}
    print(
        f"tokens/s: batch 1 {results['tokens_per_s']['1']:.0f}, batch 32 {results['tokens_per_s']['32']:.0f}"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
