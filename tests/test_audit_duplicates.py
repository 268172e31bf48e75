"""Duplicates and leakage: pHash, the band and LSH searches against brute force, clusters, leakage."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from vlmops.audit.duplicates import (
    band_layout,
    cosine_pairs,
    duplicates_check,
    hamming_pairs,
    leakage_check,
    phash,
    phashes,
    popcount,
)


def _shapes(seed: int, size: int = 128) -> Image.Image:
    """A picture of random coloured shapes: structure at several scales, like a drawing."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, y0 = rng.integers(0, size - 20, 2)
        w, h = rng.integers(15, size // 2, 2)
        box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return image


def _hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _planted_hashes(n: int, seed: int) -> np.ndarray:
    """Random 64-bit hashes with many pairs planted 0-11 bits apart, and one big identical group."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, n, dtype=np.uint64)
    h[:40] = h[0]
    for _ in range(n // 4):
        a, b = rng.integers(0, n, 2)
        flips = rng.choice(64, int(rng.integers(0, 12)), replace=False)
        h[b] = h[a] ^ np.uint64(sum(1 << int(f) for f in flips))
    return h


def _brute_hamming(h: np.ndarray, t: int) -> set[tuple[int, int]]:
    i, j = np.nonzero(np.triu(popcount(h[:, None] ^ h[None, :]) <= t, k=1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def test_phash_stable_under_resize_and_jpeg_far_for_other_images() -> None:
    for seed in range(5):
        image = _shapes(seed)
        base = phash(image)
        assert 0 <= base < 2**64
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=40)
        assert _hamming(base, phash(Image.open(buffer))) <= 6
        assert _hamming(base, phash(image.resize((70, 70), Image.Resampling.BILINEAR))) <= 6
        others = [_hamming(base, phash(_shapes(s))) for s in range(10, 20)]
        assert min(others) >= 12, others


def test_phash_edge_cases(tmp_path) -> None:
    assert phash(Image.new("RGB", (40, 40), "red")) == 0  # flat: no AC energy, no bits
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    assert phash(rgba) == phash(Image.new("RGB", (64, 64), "white"))  # transparency reads as white
    good = tmp_path / "a.png"
    _shapes(1).save(good)
    (tmp_path / "bad.png").write_text("nope")
    hashes = phashes([good, tmp_path / "bad.png"], progress=False)
    assert hashes.dtype == np.uint64 and hashes[0] == phash(_shapes(1)) and hashes[1] == 0


@pytest.mark.parametrize(("n", "layout"), [(300, (8, 0)), (4000, (4, 1))])
@pytest.mark.parametrize("max_hamming", [3, 7])
def test_band_search_equals_brute_force(n: int, layout: tuple[int, int], max_hamming: int) -> None:
    h = _planted_hashes(n, seed=n + max_hamming)
    if max_hamming == 7:
        assert band_layout(n, 7) == layout  # 8 bands x 8 bits, or 4 x 16 bits with 1-bit probes
    expected = _brute_hamming(h, max_hamming)
    assert len(expected) > n // 10
    for cap in (256, 3):  # a tiny cap sends most buckets to the blocked exact search
        i, j, d = hamming_pairs(h, max_hamming, bucket_cap=cap)
        assert set(zip(i.tolist(), j.tolist(), strict=True)) == expected
        assert np.array_equal(d, popcount(h[i] ^ h[j])) and (i < j).all()


def test_every_pair_within_seven_bits_found_on_uniform_hashes() -> None:
    rng = np.random.default_rng(7)
    h = rng.integers(0, 2**64, 2000, dtype=np.uint64)
    for k in range(0, 2000, 2):  # pairs at exactly 0..7 bits
        flips = rng.choice(64, k % 8, replace=False)
        h[k + 1] = h[k] ^ np.uint64(sum(1 << int(f) for f in flips))
    expected = _brute_hamming(h, 7)
    i, j, _ = hamming_pairs(h, 7)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == expected and len(expected) >= 1000


def _planted_vectors(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    for a in range(0, n // 2, 2):  # partners at cosine ~0.9-0.999
        x[a + 1] = x[a] + rng.uniform(0.05, 0.45) * rng.standard_normal(d).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_lsh_finds_most_pairs_above_min_cosine() -> None:
    emb = _planted_vectors(3000, 64, seed=0)
    sim = emb @ emb.T
    truth = set(zip(*(a.tolist() for a in np.nonzero(np.triu(sim >= 0.95, k=1))), strict=True))
    assert len(truth) > 200
    i, j, cos = cosine_pairs(emb, 0.95, seed=1)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    assert len(found & truth) >= 0.95 * len(truth)
    assert found <= truth and np.allclose(cos, sim[i, j], atol=1e-5)


def test_lsh_giant_bucket_falls_back_to_exact_search() -> None:
    emb = np.tile(_planted_vectors(1, 16, seed=2), (300, 1))  # 300 identical vectors: one bucket
    i, j, _ = cosine_pairs(emb, 0.99, tables=2, bucket_cap=10)
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == 300 * 299 // 2


def _frame(tmp_path: Path, n: int, splits: list[str | None] | None = None) -> pd.DataFrame:
    paths = []
    for k in range(n):
        path = tmp_path / f"r{k}.png"
        _shapes(1000 + k, 32).save(path)
        paths.append(str(path))
    return pd.DataFrame({"id": [f"r{k}" for k in range(n)], "image": paths, "split": splits or [None] * n})


def test_clusters_are_transitive(tmp_path) -> None:
    frame = _frame(tmp_path, 5)
    a = 0x0123456789ABCDEF
    b, c = a ^ 0b1111, a ^ 0b11111111  # a-b 4 bits, b-c 4 bits, a-c 8 bits (over 7)
    hashes = np.array([a, 0xFFFF0000FFFF0000, b, 0x00FF00FF00FF00FF, c], dtype=np.uint64)
    result = duplicates_check(frame, hashes=hashes, progress=False)
    assert [c["ids"] for c in result.details["clusters"]] == [["r0", "r2", "r4"]]
    cluster = result.details["clusters"][0]
    assert cluster["kind"] == "near" and cluster["max_hamming"] == 8 and cluster["representative"] == "r0"
    near = {f.record_id: f for f in result.findings}
    assert set(near) == {"r2", "r4"} and near["r4"].kind == "near_duplicate"
    assert near["r4"].evidence["representative"] == "r0" and near["r4"].evidence["hamming"] == 8
    assert near["r4"].evidence["members"] == ["r0", "r2", "r4"]
    assert result.metrics == {
        "exact_dup_rate": 0.0,
        "near_dup_rate": 2 / 5,
        "n_clusters": 1,
        "exact_duplicates": 0,
        "near_duplicates": 2,
    }


def test_exact_duplicates_by_content(tmp_path) -> None:
    frame = _frame(tmp_path, 4)
    Path(frame.image[3]).write_bytes(Path(frame.image[1]).read_bytes())  # same bytes, another name
    result = duplicates_check(frame, progress=False)
    assert [(f.record_id, f.kind, f.evidence["exact_twin"]) for f in result.findings] == [
        ("r3", "exact_duplicate", "r1")
    ]
    assert result.details["clusters"][0]["kind"] == "exact" and result.metrics["exact_dup_rate"] == 0.25
    # the manifest's sha256 column is trusted when present
    claimed = frame.assign(sha256=["x", "y", "x", "z"])
    far = np.array(
        [0x0123456789ABCDEF, 0xFEDCBA9876543210, 0x5A5A5A5A5A5A5A5A, 0xA5A5A5A5A5A5A5A5], np.uint64
    )
    result = duplicates_check(claimed, hashes=far, progress=False)
    assert [(f.record_id, f.kind) for f in result.findings] == [("r2", "exact_duplicate")]


def test_embeddings_add_near_duplicates(tmp_path) -> None:
    frame = _frame(tmp_path, 4)
    far = np.array([0, 0xFFFFFFFF, 0xFFFFFFFF00000000, 0xFF00FF00FF00FF00], dtype=np.uint64)
    emb = np.eye(4, 8, dtype=np.float32)
    emb[3] = emb[0] * 0.98 + emb[2] * np.sqrt(1 - 0.98**2)  # cosine 0.98 to record 0
    result = duplicates_check(frame, embeddings=emb, hashes=far, progress=False)
    assert [(f.record_id, f.kind) for f in result.findings] == [("r3", "near_duplicate")]
    assert result.findings[0].evidence["cosine"] == pytest.approx(0.98, abs=1e-4)
    assert result.details["params"]["min_cosine"] == 0.95
    assert duplicates_check(frame, embeddings=emb, hashes=far, min_cosine=0.99, progress=False).findings == []
    with pytest.raises(ValueError, match="rows"):
        duplicates_check(frame, embeddings=emb[:3], hashes=far, progress=False)


def test_leakage_only_flags_eval_records_with_a_train_twin(tmp_path) -> None:
    splits = ["train", "test", "val", "test", "val", "train", "train", "test", None]
    frame = _frame(tmp_path, 9, splits)
    a, b, c, d = (0x0123456789ABCDEF, 0xFEDCBA9876543210, 0x5A5A5A5A5A5A5A5A, 0xA5A5A5A5A5A5A5A5)
    # cluster A: train r0, test r1, val r2; B: test r3, val r4 (no train); C: train r5, r6; r7 (test) alone
    hashes = np.array([a, a ^ 3, a ^ 12, b, b ^ 1, c, c ^ 7, d, a ^ 48], dtype=np.uint64)  # r8: no split
    duplicates = duplicates_check(frame, hashes=hashes, progress=False)
    assert [c["ids"] for c in duplicates.details["clusters"]] == [
        ["r0", "r1", "r2", "r8"],
        ["r3", "r4"],
        ["r5", "r6"],
    ]
    result = leakage_check(frame, duplicates)
    assert sorted(f.record_id for f in result.findings) == ["r1", "r2"]
    assert all(f.kind == "split_leakage" and f.evidence["train_twins"] == ["r0"] for f in result.findings)
    assert result.metrics == {"leakage": 2, "leakage_rate": 2 / 5}
    no_split = leakage_check(frame.assign(split=None), duplicates)
    assert no_split.skipped and no_split.findings == []
