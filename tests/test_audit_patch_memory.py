"""The repeated-patch hasher at scale: its window hashes go to temporary files and only the hashes that
can be flagged come back, with the very same findings as holding every window in memory."""

from __future__ import annotations

import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_audit_poisoning import noise_image, patch_data, stamp  # noqa: F401 (a fixture)
from vlmops.audit import patch_spill, scan
from vlmops.audit.patches import (
    PatchHasher,
    PatchHashes,
    _pixel_codes,
    find_repeated_patches,
    slot_bits,
    window_hashes,
)


def in_memory(pixels: list[np.ndarray], size: int = 6, quant_bits: int = 2) -> PatchHashes:
    """Every window hash of every image (one shape), held in memory: what the hasher kept before."""
    codes = np.stack([_pixel_codes(p, quant_bits) for p in pixels])
    hashes, slots, places = window_hashes(codes, size)
    return PatchHashes(size, quant_bits, len(pixels), hashes, slots, places, np.arange(len(pixels)))


def streamed(pixels: list[np.ndarray], **options) -> PatchHashes:
    hasher = PatchHasher(**options)
    for p in pixels:
        hasher.add(Image.fromarray(p))
    return hasher.finish()


@pytest.fixture
def spill_root(tmp_path: Path, monkeypatch) -> Path:
    """The system temporary directory, pointed at an empty folder of the test's own."""
    root = tmp_path / "spill"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_spilled_hashes_give_the_findings_of_all_hashes_in_memory(
    patch_data,  # noqa: F811 (the fixture)
    spill_root,
    monkeypatch,
) -> None:
    images, labels, stamped, _ = patch_data
    pixels = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    monkeypatch.setattr(patch_spill, "BUFFER_BYTES", 64 * 1024)  # many appends to each partition file
    full, kept = in_memory(pixels), streamed(pixels)
    # exactly the records whose prefix (hash >> the slot's bits) is in >= 3 records, in (slot, hash) order
    bits = np.uint64(slot_bits(int(full.slots.max())))
    _, inverse, counts = np.unique(full.hashes >> bits, return_inverse=True, return_counts=True)
    shared = counts[inverse] >= 3
    assert kept.slot_bits == int(bits) and 0 < shared.sum() < len(full.hashes) / 10
    np.testing.assert_array_equal(kept.hashes, full.hashes[shared])
    np.testing.assert_array_equal(kept.slots, full.slots[shared])
    np.testing.assert_array_equal(kept.places, full.places[shared])
    groups = find_repeated_patches(images, labels, progress=False, hashed=full)
    assert groups and {i: box[:2] for i, box in groups[0]["carriers"].items()} == stamped
    assert find_repeated_patches(images, labels, progress=False, hashed=kept) == groups
    assert find_repeated_patches(images, labels, progress=False) == groups  # reads and hashes itself
    assert list(spill_root.iterdir()) == []


def test_mixed_shapes_and_a_loose_share_give_the_same_groups(spill_root) -> None:
    """Slots then differ from image order, and many hashes are shared (a logo on every image)."""
    rng = np.random.default_rng(3)
    trigger, logo = (rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (6, 10))
    pixels = []
    for i in range(300):
        image = stamp(noise_image(rng, 24 if i % 3 else 40), logo, 2, 2)
        pixels.append(stamp(image, trigger, 14, 12) if i % 7 == 0 and i < 150 else image)
    labels = ["a" if i < 150 else "b" for i in range(300)]
    hashed = streamed(pixels)
    assert not np.array_equal(hashed.slot_image, np.arange(300))
    images = [Image.fromarray(p) for p in pixels]
    by_shape = [i for shape in (24, 40) for i in range(300) if pixels[i].shape[0] == shape]
    full = []
    for shape in (24, 40):
        rows = [i for i in range(300) if pixels[i].shape[0] == shape]
        full.append(in_memory([pixels[i] for i in rows]))
    offset = len(full[0].slot_image)
    everything = PatchHashes(
        6, 2, 300,
        np.concatenate([f.hashes for f in full]),
        np.concatenate([full[0].slots, full[1].slots + offset]),
        np.concatenate([f.places for f in full]),
        np.asarray(by_shape),
    )  # fmt: skip
    for share in (0.02, 0.1):
        want = find_repeated_patches(images, labels, min_share=share, progress=False, hashed=everything)
        assert (
            want
            and find_repeated_patches(images, labels, min_share=share, progress=False, hashed=hashed) == want
        )


def _hash_cost(n: int, seed: int) -> tuple[int, int]:
    """(peak, retained) bytes traced while hashing n noise images and after `finish` (result held)."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(noise_image(rng)) for _ in range(n)]
    tracemalloc.start()
    try:
        hasher = PatchHasher()
        for image in images:
            hasher.add(image)
        hashed = hasher.finish()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert hashed.n == n
    return peak, retained


def test_hashing_memory_does_not_grow_with_the_windows_of_every_image(spill_root, monkeypatch) -> None:
    """32x32 noise images have 729 distinct windows each (17 KB of records): holding them would add that
    per image; the spill keeps a bounded buffer and one partition, and returns (almost) nothing."""
    monkeypatch.setattr(patch_spill, "BUFFER_BYTES", 256 * 1024)
    peak1, kept1 = _hash_cost(384, 0)
    peak2, kept2 = _hash_cost(768, 1)
    per_image_windows = 729 * patch_spill.RECORD.itemsize
    assert (kept2 - kept1) / 384 < 0.05 * per_image_windows  # ~ the slot of each image, not its windows
    assert (peak2 - peak1) / 384 < 0.2 * per_image_windows
    assert list(spill_root.iterdir()) == []


def test_temporary_files_are_removed_after_finish_and_on_failure(tmp_path, spill_root) -> None:
    rng = np.random.default_rng(4)
    hasher = PatchHasher()
    for _ in range(200):
        hasher.add(Image.fromarray(noise_image(rng)))
    assert [p.name.startswith("vlmops-patches-") for p in spill_root.iterdir()] == [True]
    hasher.finish()
    assert list(spill_root.iterdir()) == []
    with pytest.raises(RuntimeError, match="stop"), PatchHasher() as hasher:
        for _ in range(200):
            hasher.add(Image.fromarray(noise_image(rng)))
        raise RuntimeError("stop")
    assert list(spill_root.iterdir()) == []
    paths = []
    for i in range(150):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(noise_image(rng)).save(paths[-1])
    paths[140].write_bytes(b"not a png")
    with pytest.raises(Exception):  # noqa: B017 (whatever the reader raises)
        find_repeated_patches(paths, ["a"] * 150, progress=False)
    assert list(spill_root.iterdir()) == []


def test_a_failing_scan_removes_the_patch_hashers_files(tmp_path, spill_root) -> None:
    import pandas as pd

    rng = np.random.default_rng(5)
    paths = []
    for i in range(150):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(noise_image(rng)).save(paths[-1])
    frame = pd.DataFrame({"image": paths, "label": ["a"] * 150})

    class Failing:
        def add(self, index, decoded) -> None:
            if index == 140:
                raise RuntimeError("disk gone")

        def result(self) -> None:
            return None

    consumers = scan.consumers_for(["poisoning"], frame, False) | {"failing": Failing()}
    with pytest.raises(RuntimeError, match="disk gone"):
        scan.scan_images(paths, consumers, progress=False)
    assert list(spill_root.iterdir()) == []
