"""Duplicates and leakage: pHash, colour check, crop views, the band and LSH searches, clusters, leakage."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from vlmops.audit.duplicates import (
    CROP,
    MAX_COLOUR,
    MAX_HAMMING,
    MIN_COSINE,
    SIGNATURE,
    band_layout,
    colour_signature,
    cosine_pairs,
    duplicates_check,
    hamming_pairs,
    leakage_check,
    phash,
    phashes,
    popcount,
    signature,
    signatures,
)
from vlmops.audit.near_search import colour_distance
from vlmops.data.emoji import manifest_path
from vlmops.data.images import load_image
from vlmops.models.preprocess import to_rgb


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
    assert result.details["params"]["min_cosine"] == MIN_COSINE
    assert duplicates_check(frame, embeddings=emb, hashes=far, min_cosine=0.99, progress=False).findings == []
    assert result.details["params"]["colour_check"] is False and "no colour check" in result.notes[0]
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


# --- colour check and crop views ----------------------------------------------------------------------
def _drawing(seed: int, size: int = 64) -> Image.Image:
    """Emoji-like: coloured shapes on white, drawn at 4x and downsampled (anti-aliased)."""
    rng = np.random.default_rng(seed)
    big = size * 4
    image = Image.new("RGB", (big, big), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x0, y0 = rng.integers(big // 8, big // 2, 2)
        w, h = rng.integers(big // 6, big // 3, 2)
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _recoloured(image: Image.Image) -> Image.Image:
    """The same drawing in other colours (like a skin-tone or colour variant): same luma, chroma inverted."""
    y, cb, cr = image.convert("YCbCr").split()
    return Image.merge("YCbCr", (y, cb.point(lambda v: 255 - v), cr.point(lambda v: 255 - v))).convert("RGB")


def _jpeg(image: Image.Image, quality: int = 40) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def _crop_copy(image: Image.Image) -> Image.Image:
    """Centre 90 % crop resized back to the original size."""
    w, h = image.size
    dx, dy = round(w * (1 - CROP) / 2), round(h * (1 - CROP) / 2)
    return image.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.BICUBIC)


def _rotated(image: Image.Image) -> Image.Image:
    return image.rotate(5, resample=Image.Resampling.BICUBIC, fillcolor="white")


def _signed_frame(images: list[Image.Image]) -> tuple[pd.DataFrame, np.ndarray]:
    """A frame (distinct sha256 per record, no files) and the images' signatures."""
    ids = [f"r{k}" for k in range(len(images))]
    frame = pd.DataFrame({"id": ids, "image": "", "sha256": [f"sha{k}" for k in range(len(images))]})
    return frame, np.stack([signature(image) for image in images])


def test_signature_holds_whole_and_crop_views(tmp_path) -> None:
    image = _drawing(0)
    sig = signature(image)
    assert sig.dtype == SIGNATURE and sig["ok"] and sig["phash"] == phash(image)
    w, h = image.size
    crop = image.crop((round(w * 0.05), round(h * 0.05), w - round(w * 0.05), h - round(h * 0.05)))
    assert sig["crop_phash"] == phash(crop) and sig["colour"].shape == (16, 16, 3)
    assert (signature(Image.new("RGBA", (40, 40), (0, 0, 0, 0)))["colour"] == 255).all()  # white
    image.save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_text("nope")
    sigs = signatures([tmp_path / "a.png", tmp_path / "bad.png"], progress=False)
    assert sigs["ok"].tolist() == [True, False] and sigs["phash"][1] == 0 and sigs["phash"][0] == phash(image)


def test_colour_distance_keeps_edited_copies_and_rejects_recolouring() -> None:
    for seed in range(4):
        image = _drawing(seed)
        sig = signature(image)
        near = [signature(_jpeg(image)), signature(_rotated(image))]
        d = colour_distance(np.stack([sig["colour"]] * 2), np.stack([s["colour"] for s in near]))
        assert (d <= MAX_COLOUR).all(), d
        crop_copy = signature(_crop_copy(image))["colour"][None]
        assert colour_distance(sig["crop_colour"][None], crop_copy)[0] <= MAX_COLOUR
        other = signature(_recoloured(image))
        assert popcount(np.uint64(sig["phash"]) ^ other["phash"]) <= MAX_HAMMING  # pHash cannot tell
        assert colour_distance(sig["colour"][None], other["colour"][None])[0] > 4 * MAX_COLOUR
    sig = signature(_drawing(0))
    assert colour_distance(sig["colour"][None], sig["colour"][None]).tolist() == [0.0]


def test_recoloured_drawing_is_not_a_near_duplicate_but_its_copies_are(tmp_path) -> None:
    paths, ids = [], []
    for seed in range(3):
        image = _drawing(seed)
        for kind, copy in (("orig", image), ("tone", _recoloured(image)), ("jpeg", image), ("crop", None)):
            path = tmp_path / f"{kind}{seed}.{'jpg' if kind == 'jpeg' else 'png'}"
            (copy or _crop_copy(image)).save(path, **({"quality": 40} if kind == "jpeg" else {}))
            paths.append(str(path))
            ids.append(f"{kind}{seed}")
    (tmp_path / "bad.png").write_text("nope")
    frame = pd.DataFrame({"id": [*ids, "bad"], "image": [*paths, str(tmp_path / "bad.png")]})
    result = duplicates_check(frame, progress=False)
    assert [c["ids"] for c in result.details["clusters"]] == [
        [f"orig{s}", f"jpeg{s}", f"crop{s}"] for s in range(3)
    ]
    assert result.details["params"]["colour_check"] and result.details["params"]["max_colour"] == MAX_COLOUR
    assert "1 unreadable" in result.notes[0]
    # plain pHashes: no colour check, so each recoloured drawing joins its original
    plain = duplicates_check(frame, hashes=phashes(frame["image"], progress=False), progress=False)
    assert all(f"tone{s}" in c["ids"] for s, c in enumerate(plain.details["clusters"]))
    assert plain.details["params"]["colour_check"] is False and "no colour check" in plain.notes[-1]


def test_crop_copy_is_found_through_the_crop_view() -> None:
    image = _drawing(7)  # whole-image pHashes of the original and its crop copy are 12 bits apart
    frame, sigs = _signed_frame([image, _drawing(8), _crop_copy(image)])
    assert popcount(sigs["phash"][0] ^ sigs["phash"][2]) > MAX_HAMMING
    assert popcount(sigs["crop_phash"][0] ^ sigs["phash"][2]) <= MAX_HAMMING
    result = duplicates_check(frame, hashes=sigs, progress=False)
    assert [c["ids"] for c in result.details["clusters"]] == [["r0", "r2"]]
    assert result.findings[0].evidence["hamming"] <= MAX_HAMMING  # the least over views
    assert duplicates_check(frame, hashes=sigs["phash"], progress=False).findings == []  # whole view only


def test_embedding_pairs_are_colour_checked() -> None:
    image = _drawing(3)  # its 5-degree rotation is 12 bits away in pHash: found by embeddings only
    frame, sigs = _signed_frame([image, _recoloured(image), _drawing(9), _rotated(image)])
    assert popcount(sigs["phash"][0] ^ sigs["phash"][3]) > MAX_HAMMING
    emb = np.eye(4, 8, dtype=np.float32)
    emb[1] = emb[3] = emb[0]  # the model sees one picture three times
    hashes = sigs.copy()
    hashes["phash"][1] = hashes["crop_phash"][1] = 0xFFFFFFFF00000000  # only the embeddings pair it
    result = duplicates_check(frame, embeddings=emb, hashes=hashes, progress=False)
    assert [c["ids"] for c in result.details["clusters"]] == [["r0", "r3"]]
    plain = duplicates_check(frame, embeddings=emb, hashes=hashes["phash"], progress=False)
    assert [c["ids"] for c in plain.details["clusters"]] == [["r0", "r1", "r3"]]


@pytest.mark.emoji
@pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")
def test_emoji_tone_and_colour_variants_are_not_near_duplicates(tmp_path) -> None:
    from vlmops.data.manifest import resolve_data

    emoji = resolve_data("emoji")
    thumbs = emoji[(emoji["vendor"] == "google") & emoji["name"].str.startswith("thumbs up")]
    colours = r"(red|orange|yellow|green|blue|purple|brown) heart"
    hearts = emoji[(emoji["vendor"] == "twitter") & emoji["name"].str.fullmatch(colours)]
    frame = pd.concat([thumbs, hearts])[["id", "image", "sha256"]].reset_index(drop=True)
    assert len(frame) == 6 + 7
    phash_only = duplicates_check(frame, hashes=phashes(frame["image"], progress=False), progress=False)
    assert phash_only.metrics["near_dup_rate"] >= 0.5  # luma alone: the variants hash alike
    copies = []
    for k, kind in ((0, "jpg"), (6, "png")):  # a JPEG copy of the thumbs up, a 0.7x copy of the blue heart
        path, image = tmp_path / f"copy{k}.{kind}", to_rgb(load_image(frame.at[k, "image"]))  # on white
        if kind == "png":
            image = image.resize((45, 45), Image.Resampling.BILINEAR)
        image.save(path, **({"quality": 40} if kind == "jpg" else {}))
        copies.append({"id": f"copy:{frame.at[k, 'id']}", "image": str(path), "sha256": None})
    frame = pd.concat([frame, pd.DataFrame(copies)], ignore_index=True)
    result = duplicates_check(frame, progress=False)
    assert sorted(c["ids"] for c in result.details["clusters"]) == sorted(
        [[frame.at[k, "id"], f"copy:{frame.at[k, 'id']}"] for k in (0, 6)]
    )


def test_colour_signature_does_not_depend_on_the_image_size() -> None:
    """Thin line art resized to 0.7x: a box reduction by a non-integer factor aliases the lines (the
    distance was 8-12 here before the 64-px canvas); through the canvas the copy stays close."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        image = Image.new("RGB", (64, 64), "white")
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            draw.line(tuple(int(v) for v in rng.integers(4, 60, 4)), fill=(0, 0, 0), width=1)
        small = image.resize((44, 44), Image.Resampling.BILINEAR)
        distance = colour_distance(colour_signature(image)[None], colour_signature(small)[None])[0]
        assert distance <= MAX_COLOUR / 2, (seed, distance)


def test_a_drawing_with_one_small_stroke_more_is_not_a_near_duplicate(tmp_path) -> None:
    """The pixel check: a 1-px stroke (a mouth) is a different drawing though pHash and colour agree;
    the drawing's resized and JPEG copies are still its near duplicates."""
    image = _drawing(5)
    other = image.copy()
    ImageDraw.Draw(other).line((26, 44, 36, 44), fill=(60, 60, 60), width=1)
    paths = []
    for name, picture in (("a", image), ("b", other)):
        paths.append(tmp_path / f"{name}.png")
        picture.save(paths[-1])
    paths.append(tmp_path / "a.jpg")
    image.save(paths[-1], quality=40)
    paths.append(tmp_path / "a_small.png")
    image.resize((45, 45), Image.Resampling.BILINEAR).save(paths[-1])
    frame = pd.DataFrame({"id": ["a", "b", "a_jpeg", "a_small"], "image": [str(p) for p in paths]})
    sigs = signatures(frame["image"], progress=False)
    assert popcount(sigs["phash"][0] ^ sigs["phash"][1]) <= MAX_HAMMING  # pHash cannot tell them apart
    clusters = duplicates_check(frame, hashes=sigs, progress=False).details["clusters"]
    assert [c["ids"] for c in clusters] == [["a", "a_jpeg", "a_small"]]
    unchecked = duplicates_check(frame, hashes=sigs, progress=False, max_pixel=None).details["clusters"]
    assert [c["ids"] for c in unchecked] == [["a", "b", "a_jpeg", "a_small"]]
