"""Signals that only a vision-language model has, as drift tests.

- image–text alignment: each image's best cosine to the label prompts (or to its caption); a drop
  means the texts no longer describe the images (KS on the scalar, see `KSDetector`).
- modality gap: the distance between the centroids of image and text embeddings of matched pairs;
  tested by permuting which pairs belong to the reference.
- query texts: what users search for (MMD on text embeddings, see `MMDDetector` and `monitor.run`).
- image statistics: size, shape, brightness, contrast, bytes and format (see `monitor.image_stats`).
"""

from __future__ import annotations

import numpy as np

from vlmops.monitor.base import Detector, DriftInputError, DriftResult, as_matrix, permutation_p_value


def alignment_scores(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Each image's highest cosine to any of the texts (both unit rows)."""
    return (np.asarray(image_emb) @ np.asarray(text_emb).T).max(1)


def modality_gap(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """‖mean image embedding − mean text embedding‖."""
    return float(np.linalg.norm(image_emb.mean(0) - text_emb.mean(0)))


class ModalityGapDetector(Detector):
    """Has the image–text modality gap of matched pairs changed? A permutation test over pairs."""

    name = "modality_gap"
    state_fields = ("image_ref", "text_ref", "n_permutations", "seed")

    def __init__(self, alpha: float = 0.05, n_permutations: int = 500, seed: int = 0) -> None:
        super().__init__(alpha)
        self.n_permutations, self.seed = n_permutations, seed

    def _fit(self, reference) -> None:
        image, text = reference
        self.image_ref, self.text_ref = (
            as_matrix(image, "reference images"),
            as_matrix(text, "reference texts"),
        )
        if self.image_ref.shape != self.text_ref.shape:
            raise DriftInputError("reference images and texts must be matched pairs of the same shape")

    def _test(self, window) -> DriftResult:
        image, text = (
            as_matrix(w, name) for w, name in zip(window, ("window images", "window texts"), strict=True)
        )
        if image.shape != text.shape or image.shape[1] != self.image_ref.shape[1]:
            raise DriftInputError(
                "window images and texts must be matched pairs with the reference's dimension"
            )
        diff = np.concatenate([self.image_ref - self.text_ref, image - text])  # per-pair image − text
        n = len(self.image_ref)
        observed = abs(np.linalg.norm(diff[n:].mean(0)) - np.linalg.norm(diff[:n].mean(0)))
        rng = np.random.default_rng(self.seed)
        null = np.empty(self.n_permutations)
        for b in range(self.n_permutations):
            perm = rng.permutation(len(diff))
            null[b] = abs(np.linalg.norm(diff[perm[n:]].mean(0)) - np.linalg.norm(diff[perm[:n]].mean(0)))
        p = permutation_p_value(observed, null)
        gap_ref, gap_win = modality_gap(self.image_ref, self.text_ref), modality_gap(image, text)
        return DriftResult(
            self.name,
            float(observed),
            p,
            p < self.alpha,
            self.alpha,
            n,
            len(image),
            {"gap_reference": gap_ref, "gap_window": gap_win},
        )
