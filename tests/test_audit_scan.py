"""The audit's shared image scan: every image file decoded once, consumers chosen by the checks asked for,
and the checks' results the same as their public functions give on their own."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from vlmops.audit import scan
from vlmops.audit.duplicates import duplicates_check
from vlmops.audit.patches import PatchHasher, find_repeated_patches
from vlmops.audit.pii import pii_check
from vlmops.audit.quality import image_stats, quality_check
from vlmops.audit.run import CHECKS, AuditInputs, run_audit
from vlmops.store.cache import open_cache
from vlmops.store.embed import content_sha256

LABELS = ("red", "green", "blue")
PER_LABEL = 10
BROKEN = ("zero.png", "truncated.png")


def _write_set(root: Path) -> pd.DataFrame:
    """30 distinct noise PNGs (RGBA and RGB, three labels; a 6x6 patch stamped on half of 'red') and two
    broken files; a train/test split and a caption each."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    stamp = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    rows = []
    for k, label in enumerate(LABELS):
        for i in range(PER_LABEL):
            pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            if label == "red" and i < PER_LABEL // 2:
                pixels[3:9, 12:18] = stamp
            image = Image.fromarray(pixels)
            path = root / f"{label}_{i}.png"
            (image.convert("RGBA") if i % 2 else image).save(path)
            split = "test" if i == 0 else "train"
            rows.append({"id": f"{label}:{i}", "image": str(path), "label": label, "split": split})
            rows[-1]["texts"] = [f"a {label} square number {k * PER_LABEL + i}"]
    (root / "zero.png").write_bytes(b"")
    whole = (root / "red_0.png").read_bytes()
    (root / "truncated.png").write_bytes(whole[: len(whole) // 2])
    for name in BROKEN:
        rows.append({"id": f"broken:{name}", "image": str(root / name), "label": "red", "split": "train"})
        rows[-1]["texts"] = [f"a broken file {name}"]
    return pd.DataFrame(rows)


@pytest.fixture
def data(tmp_path: Path) -> pd.DataFrame:
    return _write_set(tmp_path / "images")


@pytest.fixture
def decodes(monkeypatch) -> Counter:
    """File name -> times its pixels were decoded (a `load` call that still had tiles to decode)."""
    counts: Counter = Counter()
    original = ImageFile.ImageFile.load

    def counting(self):
        if self.tile:  # pixels not decoded yet: this call decodes them
            counts[Path(getattr(self.fp, "name", None) or self.filename).name] += 1
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return counts


def _audit(frame: pd.DataFrame, checks, model=None, store: Path | None = None):
    keys = [content_sha256(p) for p in frame["image"]]
    with open_cache(str(store) if store else None) as cache:
        inputs = AuditInputs(frame, keys, model, cache if model else None, False)
        return run_audit(inputs, list(checks), {}, [], [], min_n=3)


def _good_files(frame: pd.DataFrame) -> set[str]:
    return {Path(p).name for p in frame["image"]} - set(BROKEN)


def test_a_full_audit_without_a_model_decodes_each_image_once(data, decodes) -> None:
    report = _audit(data, CHECKS)
    assert {n: decodes[n] for n in _good_files(data)} == dict.fromkeys(_good_files(data), 1)
    assert "image_scan" in report.meta["timing_seconds"]
    assert report.checks["quality"].metrics["quality_zero_byte"] == 1  # the broken files are still found
    assert report.checks["quality"].metrics["quality_truncated"] == 1


def test_a_full_audit_with_a_model_and_a_warm_store_decodes_each_image_once(
    data, decodes, fake_model, tmp_path
) -> None:
    model, store = fake_model(), tmp_path / "store.sqlite"
    _audit(data, CHECKS, model, store)  # fills the embedding store (the model reads the images then)
    decodes.clear()
    report = _audit(data, CHECKS, model, store)
    assert model.images_embedded == len(_good_files(data))  # all from the first run
    assert {n: decodes[n] for n in _good_files(data)} == dict.fromkeys(_good_files(data), 1)
    assert report.checks["labels"].skipped is None and report.checks["poisoning"].skipped is None


@pytest.fixture
def consumed(monkeypatch) -> Counter:
    """Consumer name -> images it processed in the shared scan."""
    counts: Counter = Counter()
    for name, cls in (
        ("quality", scan.QualityStats),
        ("duplicates", scan.Signatures),
        ("pii", scan.MetadataPii),
        ("poisoning", scan.Patches),
        ("readable", scan.Readable),
    ):

        def add(self, index, decoded, _name=name, _add=cls.add):
            counts[_name] += 1
            return _add(self, index, decoded)

        monkeypatch.setattr(cls, "add", add)
    return counts


@pytest.mark.parametrize(
    ("checks", "with_model", "expected"),
    [
        (["quality"], False, {"readable", "quality"}),
        (["poisoning"], False, {"readable", "poisoning"}),
        (["duplicates", "leakage"], False, {"readable", "duplicates"}),
        (["quality", "pii"], False, {"readable", "quality", "pii"}),
        (["pii"], False, set()),  # metadata alone: headers, no shared scan
        (["provenance", "balance"], False, set()),
        (["labels"], False, set()),  # skipped without a model
        (["labels"], True, {"readable"}),  # embeddings need to know which images decode
    ],
)
def test_the_scan_feeds_only_what_the_checks_need(
    data, consumed, fake_model, tmp_path, checks, with_model, expected
) -> None:
    model = fake_model() if with_model else None
    report = _audit(data, checks, model, tmp_path / "store.sqlite")
    assert set(consumed) == expected
    assert all(count == len(data) for count in consumed.values())  # every record seen once
    assert ("image_scan" in report.meta["timing_seconds"]) == bool(expected)


def test_consumers_for_names_one_consumer_per_image_check(data) -> None:
    chosen = scan.consumers_for(["quality", "poisoning"], data, has_model=False)
    assert list(chosen) == ["readable", "quality", "poisoning"]
    assert scan.consumers_for(["pii", "balance"], data, has_model=True) == {}


def test_scan_fed_checks_equal_the_public_functions_on_their_own(data) -> None:
    report = _audit(data, ["quality", "duplicates", "pii", "poisoning"])
    alone = {
        "quality": quality_check(data, progress=False),
        "duplicates": duplicates_check(data, progress=False),
        "pii": pii_check(data, progress=False),
    }
    for name, result in alone.items():
        assert report.checks[name].to_dict() == result.to_dict(), name
    found = scan.scan_images(data["image"], scan.consumers_for(["quality"], data, False), progress=False)
    pd.testing.assert_frame_equal(found["quality"], image_stats(data["image"], progress=False))


def test_streamed_patch_hashes_give_the_same_groups(data) -> None:
    good = data[~data["id"].str.startswith("broken:")].reset_index(drop=True)
    paths, labels = good["image"].tolist(), good["label"].tolist()
    hasher = PatchHasher()
    for path in paths:
        with Image.open(path) as image:
            hasher.add(image)
    hashed = hasher.finish()
    groups = find_repeated_patches(paths, labels, progress=False)
    assert groups and groups[0]["compact"] and groups[0]["label"] == "red"
    assert find_repeated_patches(paths, labels, progress=False, hashed=hashed) == groups
    with pytest.raises(ValueError, match="hashed has 30 images"):
        find_repeated_patches(paths[:-1], labels[:-1], progress=False, hashed=hashed)


def test_metadata_pii_from_the_scan_equals_reading_each_file(tmp_path) -> None:
    from test_audit_pii import write_exif_jpeg, write_text_png

    jpeg = write_exif_jpeg(tmp_path / "gps.jpg")
    with Image.open(jpeg) as image:  # the same EXIF in a TIFF (its Exif and GPS IFDs are sub-IFDs)
        image.save(tmp_path / "gps.tif", exif=image.getexif())
    write_text_png(tmp_path / "text.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    names = ["gps.jpg", "gps.tif", "text.png", "broken.png"]
    frame = pd.DataFrame({"id": names, "image": [str(tmp_path / n) for n in names], "label": None})
    frame["texts"] = [["a caption"]] * len(names)
    report = _audit(frame, ["quality", "pii"])
    alone = pii_check(frame, progress=False)
    assert report.checks["pii"].to_dict() == alone.to_dict()
    kinds = {(f.record_id, f.kind) for f in alone.findings}
    assert {("gps.jpg", "gps"), ("gps.tif", "gps"), ("gps.tif", "serial"), ("text.png", "phone")} <= kinds


def test_the_scan_keeps_no_decoded_image(data) -> None:
    import gc
    import weakref

    class Watch:
        def __init__(self) -> None:
            self.refs: list = []

        def add(self, index, decoded) -> None:
            if decoded.image is not None:
                self.refs.append(weakref.ref(decoded.image))

        def result(self) -> int:
            return len(self.refs)

    consumers = scan.consumers_for(["quality", "duplicates", "pii", "poisoning"], data, has_model=False)
    watch = Watch()
    found = scan.scan_images(data["image"], consumers | {"watch": watch}, progress=False)
    gc.collect()
    assert found["watch"] == len(_good_files(data))  # the broken files have no image
    assert [r for r in watch.refs if r() is not None] == []
