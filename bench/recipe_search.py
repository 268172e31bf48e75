"""Train emoji-lit with one recipe variant and print its quality bar (the RESULTS.md recipe table).

    python bench/recipe_search.py '{"epochs": 40, "pair_vendors": false, "tower": {"dropout": 0.1}}'

The JSON overrides fields of TrainConfig (`tower` and `augment` are nested). With --watch-new-vendor
it also prints facebook top-1 after every epoch: a diagnostic only, never used to pick a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys


def build_config(overrides: dict):
    """TrainConfig from JSON overrides."""
    from vlmops.models.towers import ImageTowerConfig
    from vlmops.models.training import AugmentConfig, TrainConfig

    overrides = dict(overrides)
    tower = ImageTowerConfig(**overrides.pop("tower", {}))
    augment_kw = overrides.pop("augment", {})
    if "scale" in augment_kw:
        augment_kw["scale"] = tuple(augment_kw["scale"])
    return TrainConfig(**overrides, tower=tower, augment=AugmentConfig(**augment_kw))


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="?", default="{}", help="JSON overrides of TrainConfig")
    parser.add_argument("--watch-new-vendor", action="store_true", help="print facebook top-1 per epoch")
    args = parser.parse_args(argv)

    import torch

    import vlmops.models.training as training
    from vlmops.data.emoji import load_emoji_manifest
    from vlmops.evaluate.emoji_bar import quality_report
    from vlmops.models.base import ModelInfo
    from vlmops.models.builtin import EmojiLit
    from vlmops.models.towers import TextTower

    torch.set_num_threads(2)
    config = build_config(json.loads(args.overrides))
    manifest = load_emoji_manifest()
    text_tower = TextTower()
    if args.watch_new_vendor:
        _watch_new_vendor(training, manifest, text_tower, config.tower.image_size)
    result = training.train_emoji_lit(manifest, config, text_tower, on_epoch=lambda r: print(json.dumps(r)))
    print(f"best epoch {result.best_epoch}, val {result.best_val_top1:.3f}, {result.seconds / 60:.1f} min")
    info = ModelInfo("emoji-lit", "candidate", config.tower.out_dim, "builtin:emoji-lit")
    report = quality_report(EmojiLit(result.tower, result.logit_scale, info, text_tower), manifest)
    for key, row in report.items():
        print(key, json.dumps(row))
    return 0


def _watch_new_vendor(training, manifest, text_tower, size: int) -> None:
    """Wrap the per-epoch val scorer so it also prints facebook top-1 (diagnostic only)."""
    import torch

    base = manifest[manifest["skin_tone"] == "none"]
    names = sorted(base["name"].unique())
    facebook = base[(base["vendor"] == "facebook") & (base["split"] == "train")]
    pixels = training.load_pixels(list(facebook["image"]), size)
    classes = torch.from_numpy(text_tower.embed([training.PROMPT.format(n) for n in names]))
    index = {n: i for i, n in enumerate(names)}
    targets = torch.tensor([index[n] for n in facebook["name"]])
    score = training._val_top1

    def watched(tower, val_pixels, val_targets, val_classes):
        print(json.dumps({"new_vendor_top1": round(score(tower, pixels, targets, classes), 3)}))
        return score(tower, val_pixels, val_targets, val_classes)

    training._val_top1 = watched


if __name__ == "__main__":
    sys.exit(main())
