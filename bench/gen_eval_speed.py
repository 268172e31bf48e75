"""Caption eval speed: `vlmops eval --task caption` (cold store, then warm) vs a naive loop.

The naive baseline is what a hand-written harness does: for every item of the caption suite (the
clean split and, with ``--suite standard``, each derived image of the robustness sample: 15
corruptions, the injection band and its blank control, the POPE probes), decode the image, build the
variant, and generate its answer alone, with no batching and no cache. It computes none of the
metrics, so the ratio understates our advantage a little. Ours runs the whole report both times.

    python bench/gen_eval_speed.py                        # emoji test split, builtin:emoji-captioner
    python bench/gen_eval_speed.py --limit 300 --suite quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:emoji-captioner", help="model URI (default: %(default)s)")
    parser.add_argument("--suite", default="standard", choices=("quick", "standard", "full"))
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N test items")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="our generation batch (default: %(default)s)"
    )
    return parser.parse_args(argv)


def ours(model, task, store: Path, suite: str, batch_size: int) -> tuple[float, dict]:
    """Seconds of one full caption report through the store at `store`."""
    from vlmops.evaluate.generative import GenerativeOptions
    from vlmops.evaluate.generative_suite import run_generative_eval
    from vlmops.store.cache import EmbeddingCache

    options = GenerativeOptions(suite=suite, batch_size=batch_size, min_n=10)
    with EmbeddingCache(store) as cache:
        start = time.perf_counter()
        report = run_generative_eval(model, task, cache, options)
        return time.perf_counter() - start, report


class Recorder:
    """Stands in for the model during one of our runs and lists every (image, prompt) it is asked."""

    def __init__(self, model):
        self.model, self.info, self.pairs = model, model.info, []

    def generate(self, images, prompts, **kw):
        self.pairs += list(zip(images, prompts, strict=True))
        return self.model.generate(images, prompts, **kw)


def naive(model, pairs) -> float:
    """Seconds to answer every pair one at a time (the images are decoded again for each)."""
    import io

    from PIL import Image

    start = time.perf_counter()
    for image, prompt in pairs:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")  # a harness reads each image from disk: re-encode, decode
        model.generate([Image.open(io.BytesIO(buffer.getvalue()))], [prompt], max_tokens=32, logprobs=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    """Print the cold and warm ratios."""
    import torch

    from vlmops.data.emoji import load_emoji_manifest
    from vlmops.evaluate.generative import build_generative_task
    from vlmops.models import load_model

    args = parse_args(argv)
    torch.set_num_threads(2)
    task = build_generative_task(load_emoji_manifest(), "emoji", "caption")
    if args.limit:
        frame = task.frame.head(args.limit)
        task = build_generative_task(
            frame.drop(columns=["prompt", "answers", "qtype"]), "emoji", "caption", "all"
        )
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store.sqlite"
        recorder = Recorder(model)
        cold, report = ours(recorder, task, store, args.suite, args.batch_size)
        warm, _ = ours(model, task, store, args.suite, args.batch_size)
    baseline = naive(model, recorder.pairs)
    print(
        f"caption suite {args.suite} on {task.n} emoji test items, "
        f"{len(recorder.pairs)} generations, {args.model}"
    )
    print(f"  ours cold: {cold:.1f} s   ours warm: {warm:.1f} s   naive one-at-a-time: {baseline:.1f} s")
    print(
        f"  ratio naive / cold: {baseline / cold:.1f}x (target >= 3)   "
        f"naive / warm: {baseline / warm:.1f}x (target >= 10)"
    )
    print(
        f"  cider_d {report['reference']['cider_d']:.3f}  "
        f"exact_match {report['reference']['exact_match']:.3f}"
    )


if __name__ == "__main__":
    main()
