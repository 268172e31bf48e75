"""`vlmops eval` as a library call: run the sections of a suite and collect one `EvalReport`.

Suites trade depth for time. `quick` covers accuracy, calibration, conformal sets, slices and
batch-size invariance; `standard` adds robustness (corruptions on a seeded sample, prompt
perturbations, FGSM/PGD, typographic), privacy and efficiency; `full` runs robustness on every image.
Sections a suite leaves out, or that cannot run for a model, appear in the report as
`{"skipped": reason}` so the JSON always has every key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from vlmops.errors import DataError
from vlmops.evaluate.accuracy import accuracy_section, top1_correct
from vlmops.evaluate.context import EvalContext
from vlmops.evaluate.slices import default_slice_fields, slice_metrics
from vlmops.evaluate.task import EvalTask
from vlmops.evaluate.uncertainty import calibration_section, conformal_section

SCHEMA = "vlmops.eval/1"
EPSILONS = (1 / 255, 2 / 255, 4 / 255)


@dataclass(frozen=True)
class Suite:
    """How much of each section to run; a sample of None means every evaluated image."""

    name: str
    robustness: bool
    corruption_sample: int | None = 300
    adversarial_sample: int = 256
    typographic_sample: int | None = None
    privacy_members: int = 1500
    efficiency: bool = True
    conformal_repeats: int = 20
    n_boot: int = 1000
    n_perm: int = 1000


SUITES = {
    "quick": Suite("quick", robustness=False, privacy_members=0, efficiency=False, n_boot=500, n_perm=500),
    "standard": Suite("standard", robustness=True),
    "full": Suite(
        "full", robustness=True, corruption_sample=None, adversarial_sample=1024, privacy_members=100_000
    ),
}


@dataclass(frozen=True)
class EvalOptions:
    """Everything about an evaluation that is not the model or the data."""

    suite: str = "standard"
    alpha: float = 0.1
    slices: Sequence[str] | None = None
    intersections: Sequence[Sequence[str]] = ()
    mondrian_by: str | None = None
    min_n: int = 30
    seed: int = 0
    dollars_per_hour: float = 1.0


@dataclass
class EvalReport:
    """Every section's results as JSON-ready dicts, plus the headline metrics `--fail-on` reads."""

    meta: dict
    sections: dict[str, dict]
    headline: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The stable JSON document (schema `vlmops.eval/1`, documented in the README)."""
        return {"schema": SCHEMA, **self.meta, "headline": self.headline, **self.sections}


def _slice_columns(task: EvalTask, options: EvalOptions) -> list[str]:
    frame = task.frame
    if options.slices is None:
        from vlmops.data.manifest import attribute_columns

        candidates = [c for c in attribute_columns(frame) if c != task.cluster_by]  # clusters are not slices
        return default_slice_fields(frame, candidates)
    unknown = [f for f in options.slices if f not in frame.columns]
    if unknown:
        raise DataError(f"unknown slice field(s) {unknown}; columns: {', '.join(map(str, frame.columns))}")
    return list(options.slices)


def _slice_values(frame: pd.DataFrame, fields: Sequence[str]) -> dict[str, np.ndarray]:
    return {
        f: frame[f].astype(object).where(frame[f].notna(), "missing").astype(str).to_numpy() for f in fields
    }


def run_eval(
    ctx: EvalContext,
    options: EvalOptions,
    data_meta: dict,
    manifest: pd.DataFrame | None = None,
    on_section: Callable[[str], None] | None = None,
) -> EvalReport:
    """Run every section of `options.suite` on `ctx`; `manifest` (all splits) feeds the privacy audit."""
    if options.suite not in SUITES:
        raise DataError(f"unknown suite {options.suite!r}; choose one of {', '.join(SUITES)}")
    if not 0 < options.alpha < 1:
        raise DataError(f"--alpha must be in (0, 1), got {options.alpha}; e.g. 0.1 for 90 % coverage")
    suite, task = SUITES[options.suite], ctx.task
    fields = _slice_columns(task, options)
    if options.mondrian_by is not None and options.mondrian_by not in fields:
        raise DataError(
            f"--mondrian {options.mondrian_by!r} is not a slice field; slice fields: {', '.join(fields)}"
        )
    sections: dict[str, dict] = {}
    timing: dict[str, float] = {}

    def run(name: str, fn: Callable[[], dict]) -> None:
        if on_section:
            on_section(name)
        start = time.perf_counter()
        sections[name] = fn()
        timing[name] = round(time.perf_counter() - start, 3)

    logits = None

    def accuracy() -> dict:
        nonlocal logits
        out = accuracy_section(ctx)
        logits = ctx.logits(ctx.image_emb)
        return out

    run("accuracy", accuracy)
    targets = task.targets
    correct = top1_correct(logits, targets)
    # per-item outcomes, so two reports on the same data can be compared pair by pair (vlmops gate)
    sections["items"] = {
        "ids": task.frame["id"].astype(str).tolist(),
        "correct": correct.astype(int).tolist(),
    }
    run("calibration", lambda: calibration_section(logits, targets, options.seed))
    slice_values = _slice_values(task.frame, fields)
    run(
        "conformal",
        lambda: conformal_section(
            logits,
            targets,
            slice_values,
            options.alpha,
            options.seed,
            suite.conformal_repeats,
            options.mondrian_by,
        ),
    )
    run(
        "slices",
        lambda: slice_metrics(
            correct,
            task.frame,
            [*fields, *[tuple(i) for i in options.intersections]],
            task.clusters,
            options.min_n,
            suite.n_boot,
            suite.n_perm,
            seed=options.seed,
        ).to_dict(),
    )
    sample = [load_sample(task, ctx.sample(64, "invariance"))]
    run("batch_invariance", lambda: _invariance(ctx, sample[0]))
    skip = {"skipped": f"not in the {suite.name} suite (use --suite standard or full)"}
    run("robustness", lambda: _robustness(ctx, suite) if suite.robustness else skip)
    run("privacy", lambda: _privacy(ctx, manifest, suite, options.seed) if suite.privacy_members else skip)
    run(
        "efficiency",
        lambda: _efficiency(ctx, sample[0], options.dollars_per_hour) if suite.efficiency else skip,
    )
    meta = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "suite": suite.name,
        "seed": options.seed,
        "alpha": options.alpha,
        "model": ctx.model.info.to_dict(),
        "data": {**data_meta, **task.describe(), "slice_fields": fields},
        "timing_seconds": timing,
        "cache": ctx.cache_totals(),
    }
    from vlmops.evaluate.headline import headline_metrics

    report = EvalReport(meta=meta, sections=sections)
    report.headline = headline_metrics(report.to_dict())
    return report


def load_sample(task: EvalTask, rows: np.ndarray) -> list:
    """Decoded images of `rows`, for timing and invariance checks."""
    from vlmops.data.images import load_image

    return [load_image(task.frame["image"].iloc[i]) for i in rows]


def _invariance(ctx: EvalContext, images: list) -> dict:
    from vlmops.evaluate.efficiency import batch_invariance_section

    return batch_invariance_section(ctx.model, images, ctx.class_emb)


def _efficiency(ctx: EvalContext, images: list, dollars_per_hour: float) -> dict:
    from vlmops.evaluate.efficiency import efficiency_section

    prompts = [ctx.task.templates[0].format(n) for n in ctx.task.class_names]
    return efficiency_section(ctx.model, images, prompts, dollars_per_hour)


def _robustness(ctx: EvalContext, suite: Suite) -> dict:
    from vlmops.evaluate.robustness import adversarial_section, corruptions_section
    from vlmops.evaluate.text_robustness import text_robustness_section
    from vlmops.evaluate.typographic import typographic_section

    return {
        "corruptions": corruptions_section(ctx, suite.corruption_sample),
        "text": text_robustness_section(ctx),
        "adversarial": adversarial_section(ctx, suite.adversarial_sample, EPSILONS),
        "typographic": typographic_section(ctx, suite.typographic_sample),
    }


def _privacy(ctx: EvalContext, manifest: pd.DataFrame | None, suite: Suite, seed: int) -> dict:
    from vlmops.evaluate.privacy import membership_scores, privacy_report, training_membership
    from vlmops.store.embed import embed_images_cached

    if manifest is None:
        return {"skipped": "no manifest given"}
    found = training_membership(getattr(ctx.model, "card", None), manifest)
    if isinstance(found, str):
        return {"skipped": found}
    rows, info = found
    members = rows.index[rows["member"] == 1].to_numpy()
    if len(members) > suite.privacy_members:
        keep = np.random.default_rng([seed, 99]).choice(members, suite.privacy_members, replace=False)
        rows = rows.drop(index=np.setdiff1d(members, keep)).reset_index(drop=True)
    emb, stats = embed_images_cached(ctx.model, list(rows["image"]), ctx.cache, ctx.batch_size, ctx.progress)
    ctx.stats.append(stats)
    scores = membership_scores(ctx.model, emb, list(rows["concept_name"]))
    return {**info, **privacy_report(rows, scores, seed)}
