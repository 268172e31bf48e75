"""The flat headline metrics of an eval report: what the summary table shows and `--fail-on` reads.

Each name maps to one path in the report JSON; a metric whose section was skipped is None, and a
`--fail-on` rule on it fails with that reason instead of passing silently.
"""

from __future__ import annotations

from collections.abc import Callable

Getter = Callable[[dict], float | None]

# name -> (getter, what it is)
HEADLINE: dict[str, tuple[Getter, str]] = {
    "top1": (lambda r: r["accuracy"]["tiers"][0]["top1"], "top-1 accuracy at the classified tier"),
    "top5": (lambda r: r["accuracy"]["tiers"][0]["top5"], "top-5 accuracy at the classified tier"),
    "mean_per_class_recall": (
        lambda r: r["accuracy"]["tiers"][0]["mean_per_class_recall"],
        "mean per-class recall at the classified tier",
    ),
    "top1_coarsest": (lambda r: r["accuracy"]["tiers"][-1]["top1"], "top-1 with credit at the coarsest tier"),
    "i2t_r1": (lambda r: r["accuracy"]["retrieval"]["image_to_text"]["R@1"], "image->text recall@1"),
    "t2i_r1": (lambda r: r["accuracy"]["retrieval"]["text_to_image"]["R@1"], "text->image recall@1"),
    "ece": (lambda r: r["calibration"]["before"]["ece"], "expected calibration error (15 bins)"),
    "ece_calibrated": (lambda r: r["calibration"]["after"]["ece"], "ECE after temperature scaling"),
    "adaptive_ece": (lambda r: r["calibration"]["before"]["adaptive_ece"], "equal-mass ECE"),
    "mce": (lambda r: r["calibration"]["before"]["mce"], "maximum calibration error"),
    "brier": (lambda r: r["calibration"]["before"]["brier"], "Brier score"),
    "nll": (lambda r: r["calibration"]["before"]["nll"], "negative log-likelihood"),
    "coverage": (lambda r: r["conformal"]["lac"]["coverage"], "LAC conformal coverage (mean over splits)"),
    "set_size": (lambda r: r["conformal"]["lac"]["mean_set_size"], "LAC mean prediction-set size"),
    "coverage_aps": (lambda r: r["conformal"]["aps"]["coverage"], "APS conformal coverage"),
    "aurc": (lambda r: r["conformal"]["risk_coverage"]["aurc"], "area under the risk-coverage curve"),
    "worst_slice_top1": (lambda r: r["slices"]["worst_slice"]["mean"], "worst slice top-1 (n >= min_n)"),
    "slice_gap": (lambda r: r["slices"]["max_gap"], "largest best-minus-worst slice top-1 gap"),
    "corruption_top1": (
        lambda r: r["robustness"]["corruptions"]["mean_corrupted_top1"],
        "mean top-1 over corruption families and severities",
    ),
    "corruption_mce": (lambda r: r["robustness"]["corruptions"]["mce"], "mean corruption error"),
    "relative_robustness": (
        lambda r: r["robustness"]["corruptions"]["relative_robustness"],
        "corrupted top-1 / clean top-1",
    ),
    "text_worst_delta": (
        lambda r: r["robustness"]["text"]["perturbations"][r["robustness"]["text"]["worst"]]["delta"],
        "top-1 change under the worst prompt perturbation",
    ),
    "fgsm_top1": (lambda r: _last(r["robustness"]["adversarial"]["fgsm"]), "FGSM top-1, largest eps"),
    "pgd_top1": (lambda r: _last(r["robustness"]["adversarial"]["pgd"]), "PGD top-1, largest eps"),
    "typographic_flip_rate": (
        lambda r: r["robustness"]["typographic"]["flip_rate"],
        "share of correct predictions flipped to a written wrong label",
    ),
    "mia_auc": (lambda r: r["privacy"]["auc"], "membership-inference attack AUC (0.5 = no leakage)"),
    "images_per_s": (lambda r: r["efficiency"]["images_per_s_batch64"], "images/s at batch 64"),
    "latency_p95_ms": (lambda r: r["efficiency"]["latency_ms_p95"], "p95 latency of one image (ms)"),
    "dollars_per_1000_images": (
        lambda r: r["efficiency"]["dollars_per_1000_images"],
        "estimated cost per 1,000 images",
    ),
    "batch_invariance_diff": (
        lambda r: r["batch_invariance"]["max_abs_embedding_diff"],
        "max embedding difference, batch 1 vs 64",
    ),
}


def _last(values: dict) -> float:
    return list(values.values())[-1]


def headline_metrics(report: dict) -> dict[str, float | None]:
    """Every headline metric of `report` (None where its section was skipped or empty)."""
    out: dict[str, float | None] = {}
    for name, (get, _) in HEADLINE.items():
        try:
            value = get(report)
        except (KeyError, IndexError, TypeError):
            value = None
        out[name] = None if value is None else float(value)
    return out
