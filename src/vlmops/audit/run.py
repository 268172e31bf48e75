"""`vlmops audit` as a library call: run the chosen checks and collect one `AuditReport`.

Checks that need embeddings (labels, caption alignment, embedding near-duplicates, the embedding parts of
poisoning) use `--model` through the embedding store; without a model they are skipped with that reason,
or run on what needs no model (perceptual-hash duplicates, repeated patches).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from vlmops.audit.findings import CheckResult, Finding
from vlmops.audit.scan import EMBEDDING_CHECKS
from vlmops.errors import DataError
from vlmops.models.base import VLM
from vlmops.store.cache import EmbeddingCache
from vlmops.timing import StageTimer

SCHEMA = "vlmops.audit/1"
CHECKS = (
    "provenance",
    "quality",
    "duplicates",
    "leakage",
    "labels",
    "alignment",
    "balance",
    "pii",
    "poisoning",
)
NEEDS_MODEL = {
    "labels": "label issues need out-of-sample probabilities from embeddings",
    "alignment": "caption-image alignment needs a model's similarity scores",
}


def parse_checks(text: str | None) -> list[str]:
    """'all' or a comma-separated subset of CHECKS; DataError naming the valid ones otherwise."""
    if text is None or text.strip() in ("", "all"):
        return list(CHECKS)
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CHECKS]
    if unknown:
        raise DataError(f"unknown audit check(s) {unknown}; choose 'all' or some of: {', '.join(CHECKS)}")
    if "leakage" in chosen and "duplicates" not in chosen:
        chosen.insert(chosen.index("leakage"), "duplicates")  # leakage is read off duplicate clusters
    return chosen


@dataclass
class AuditReport:
    """Every check's result plus run metadata; `metrics` is the flat namespace --fail-on reads."""

    meta: dict
    checks: dict[str, CheckResult] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float | int | None]:
        """All checks' summary metrics in one dict (names are unique across checks)."""
        out: dict[str, float | int | None] = {}
        for result in self.checks.values():
            out.update(result.metrics)
        return out

    @property
    def findings(self) -> list[Finding]:
        """Every finding of every check."""
        return [f for result in self.checks.values() for f in result.findings]

    def summary(self) -> dict[str, dict[str, int]]:
        """Findings per check and severity."""
        out: dict[str, dict[str, int]] = {}
        for name, result in self.checks.items():
            counts = {"info": 0, "warning": 0, "error": 0}
            for f in result.findings:
                counts[f.severity] += 1
            out[name] = counts
        return out

    def to_dict(self) -> dict:
        """The JSON document (schema `vlmops.audit/1`)."""
        return {
            "schema": SCHEMA,
            **self.meta,
            "metrics": self.metrics,
            "summary": self.summary(),
            "checks": {name: result.to_dict() for name, result in self.checks.items()},
        }


@dataclass
class AuditInputs:
    """What the checks share: the frame, file hashes and (when a model is given) embeddings."""

    frame: pd.DataFrame
    content_sha256: list[str]
    model: VLM | None = None
    cache: EmbeddingCache | None = None
    progress: bool = True
    prompt_template: str = "a photo of {}."  # for the zero-shot view of labels ("an emoji of {}" for emoji)
    _image_emb: np.ndarray | None = None
    _readable: np.ndarray | None = None
    views: dict = field(default_factory=dict)  # label views per method, shared by labels and alignment
    scanned: dict = field(default_factory=dict)  # results of the shared image scan by consumer name

    def scan_images(self, checks: Sequence[str]) -> bool:
        """Decode every image once for what `checks` need (`vlmops.audit.scan`); False if none reads them."""
        from vlmops.audit.scan import consumers_for, scan_images

        consumers = consumers_for(checks, self.frame, self.model is not None)
        if not consumers:
            return False
        self.scanned = scan_images(self.frame["image"].tolist(), consumers, progress=self.progress)
        self._readable = self.scanned["readable"]
        return True

    def image_emb(self) -> np.ndarray | None:
        """(n, d) image embeddings through the store (None without a model); unreadable images get zero rows.

        Unreadable files are the quality check's findings; here they are left out of every embedding
        check (see `readable`) instead of failing the audit.
        """
        if self.model is None or self.cache is None:
            return None
        if self._image_emb is None:
            from vlmops.store.embed import embed_images_cached

            ok = self.readable
            paths = [p for p, good in zip(self.frame["image"], ok, strict=True) if good]
            keys = [k for k, good in zip(self.content_sha256, ok, strict=True) if good]
            emb, _ = embed_images_cached(
                self.model, paths, self.cache, progress=self.progress, content_keys=keys
            )
            full = np.zeros((len(self.frame), emb.shape[1] if len(emb) else self.model.info.dim), np.float32)
            full[ok] = emb
            self._image_emb = full
        return self._image_emb

    @property
    def readable(self) -> np.ndarray:
        """Boolean mask of records whose image decodes (from `scan_images`, or a scan of its own)."""
        if self._readable is None:
            from vlmops.audit.scan import Readable, scan_images

            consumers = {"readable": Readable(len(self.frame))}
            found = scan_images(self.frame["image"].tolist(), consumers, progress=self.progress)
            self._readable = found["readable"]
        return self._readable

    def first_texts(self) -> list[str | None]:
        """Each record's first text, or None."""
        return [t[0] if t is not None and len(t) else None for t in self.frame["texts"]]


def _run_check(name: str, inputs: AuditInputs, done: dict[str, CheckResult], options: dict) -> CheckResult:
    frame, progress = inputs.frame, inputs.progress
    if name in NEEDS_MODEL and inputs.model is None:
        return CheckResult(name, skipped=f"no --model given: {NEEDS_MODEL[name]}")
    if name == "provenance":
        from vlmops.audit.provenance import provenance_check

        return provenance_check(frame, inputs.content_sha256)
    if name == "quality":
        from vlmops.audit.quality import quality_check

        return quality_check(frame, stats=inputs.scanned.get("quality"), progress=progress)
    if name == "duplicates":
        from vlmops.audit.duplicates import duplicates_check

        return duplicates_check(
            frame.assign(sha256=inputs.content_sha256),
            inputs.image_emb(),
            hashes=inputs.scanned.get("duplicates"),
            progress=progress,
        )
    if name == "leakage":
        from vlmops.audit.duplicates import leakage_check

        return leakage_check(frame, done["duplicates"])
    if name == "labels":
        return _labels(inputs, options)
    if name == "alignment":
        return _alignment(inputs, options)
    if name == "balance":
        from vlmops.audit.balance import balance_check

        return balance_check(frame, options["fields"], options["tier_names"], min_n=options["min_n"])
    if name == "pii":
        from vlmops.audit.pii import pii_check

        return pii_check(frame, progress=progress, image_meta=inputs.scanned.get("pii"))
    if name == "poisoning":
        from vlmops.audit.poisoning import poisoning_check

        ok = inputs.readable & frame["label"].notna().to_numpy()
        emb = inputs.image_emb()
        rows = frame[ok].reset_index(drop=True)
        return poisoning_check(
            rows,
            None if emb is None else emb[ok],
            list(rows["label"]),
            progress=progress,
            patch_hashes=inputs.scanned.get("poisoning"),
        )
    raise DataError(f"unknown audit check {name!r}")


def _views(inputs: AuditInputs, method: str):
    from vlmops.audit.label_views import build_views

    if method not in inputs.views:
        inputs.views[method] = build_views(inputs, method)
    return inputs.views[method]


def _labels(inputs: AuditInputs, options: dict) -> CheckResult:
    from vlmops.audit.labels import label_check

    views = _views(inputs, options["label_method"])
    if isinstance(views, str):
        return CheckResult("labels", skipped=views)
    rows = inputs.frame.iloc[views.rows].reset_index(drop=True)
    method = views.method
    if views.text_probs is None:
        source = f"{method} on image embeddings, 5-fold"
        return label_check(rows, views.image_probs, views.classes, source=source, evidence=views.lookalike)
    source = f"{method} on image embeddings, confirmed by {method} on caption embeddings, 5-fold"
    confirm, evidence = views.text_probs, views.lookalike
    return label_check(rows, views.image_probs, views.classes, source, confirm=confirm, evidence=evidence)


def _alignment(inputs: AuditInputs, options: dict) -> CheckResult:
    from vlmops.audit.label_views import add_contradictions
    from vlmops.audit.labels import alignment_check
    from vlmops.store.embed import embed_texts_cached

    texts = inputs.first_texts()
    has_text = np.array([t is not None for t in texts]) & inputs.readable
    if has_text.sum() < 10:
        return CheckResult("alignment", skipped="fewer than 10 records have a caption (texts)")
    text_emb, _ = embed_texts_cached(
        inputs.model,
        [t for t, keep in zip(texts, has_text, strict=True) if keep],
        inputs.cache,
        progress=inputs.progress,
    )
    rows = inputs.frame[has_text].reset_index(drop=True)
    result = alignment_check(rows, inputs.image_emb()[has_text], text_emb)
    views = _views(inputs, options["label_method"])
    view_emb = None if isinstance(views, str) else inputs.image_emb()[views.rows]
    return add_contradictions(result, inputs.frame, views, view_emb)


def run_audit(
    inputs: AuditInputs,
    checks: Sequence[str],
    data_meta: dict,
    fields: Sequence[str],
    tier_names: Sequence[str],
    min_n: int = 30,
    label_method: str = "knn",
    on_check: Callable[[str], None] | None = None,
    ann_threshold: int | None = None,
) -> AuditReport:
    """Run `checks` in order (duplicates before leakage) and collect the report.

    The image files are read first, in one pass for every check that needs their pixels
    (`AuditInputs.scan_images`), then embedded once and the label views built once when checks need
    them; ``meta["timings"]`` has the wall and process CPU seconds of each of these stages and of each
    check (``timing_seconds``: the wall seconds alone). Neighbour searches over more than
    `ann_threshold` records (default: `vlmops.audit.neighbours`) use an approximate index.
    """
    from vlmops.audit.neighbours import neighbour_options

    with neighbour_options(threshold=ann_threshold) as ann:
        report = _run_checks(inputs, checks, fields, tier_names, min_n, label_method, on_check)
    report.meta = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": data_meta,
        "model": inputs.model.info.to_dict() if inputs.model is not None else None,
        "checks_run": list(checks),
        "timing_seconds": report.meta["timing_seconds"],
        "timings": report.meta["timings"],
        "ann_threshold": ann.threshold,
    }
    return report


def _run_checks(inputs, checks, fields, tier_names, min_n, label_method, on_check) -> AuditReport:
    """The checks in order, with their times in ``meta["timing_seconds"]``."""
    options = {
        "fields": list(fields),
        "tier_names": list(tier_names),
        "min_n": min_n,
        "label_method": label_method,
    }
    timer = StageTimer()
    with timer.stage("image_scan"):
        scanned = inputs.scan_images(checks)  # each image decoded once for every check that reads it
    if not scanned:
        del timer.stages["image_scan"]
    if inputs.model is not None and any(name in EMBEDDING_CHECKS for name in checks):
        with timer.stage("embedding"):  # once, for every check that reads the vectors
            inputs.image_emb()
    if inputs.model is not None and ("labels" in checks or "alignment" in checks):
        with timer.stage("label_views"):  # shared by labels and alignment
            _views(inputs, label_method)
    report = AuditReport(meta={})
    for i, name in enumerate(checks):
        if on_check:
            on_check(name)
        with timer.stage(name):
            report.checks[name] = _run_check(name, inputs, report.checks, options)
        if inputs.views and not {"labels", "alignment"} & set(checks[i + 1 :]):
            inputs.views.clear()  # no later check reads them (O(n x k) with k-NN, (n, classes) logistic)
    report.meta = {"timing_seconds": timer.wall(), "timings": timer.stages}
    return report
