"""Zero-shot scoring against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest

from vlmops.evaluate.zeroshot import class_embeddings, zero_shot


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_zero_shot_matches_argmax_by_hand():
    rng = np.random.default_rng(0)
    images, classes = _unit(rng.normal(size=(50, 8))), _unit(rng.normal(size=(10, 8)))
    names = [f"c{i}" for i in range(10)]
    truth = [names[i] for i in rng.integers(0, 10, 50)]
    result = zero_shot(images, classes, names, truth)
    scores = images @ classes.T
    expected1 = np.mean([names[s.argmax()] == t for s, t in zip(scores, truth, strict=True)])
    expected5 = np.mean(
        [t in {names[j] for j in np.argsort(-s)[:5]} for s, t in zip(scores, truth, strict=True)]
    )
    assert result.top1 == pytest.approx(expected1) and result.top5 == pytest.approx(expected5)
    assert result.n == 50 and result.n_classes == 10


def test_unknown_true_label_is_an_error():
    with pytest.raises(ValueError, match="not among the candidate classes"):
        zero_shot(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), ["a", "b"], ["a", "zzz"])


class _Echo:
    """Text 'model' whose embedding depends on the template only through a known offset."""

    def embed_texts(self, texts):
        table = {"a {}": 0.0, "b {}": 1.0}
        rows = []
        for text in texts:
            template, name = text.split(" ", 1)
            rows.append([float(name == "x"), float(name == "y"), table[f"{template} {{}}"]])
        return np.array(rows, dtype=np.float32)


def test_class_embeddings_average_templates_then_normalise():
    emb = class_embeddings(_Echo(), ["x", "y"], templates=("a {}", "b {}"))
    np.testing.assert_allclose(emb[0], _unit(np.array([[1.0, 0.0, 0.5]]))[0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
