"""Image quality check: every finding kind on a constructed bad file, and its negative."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFile, ImageFilter

from vlmops.audit.quality import DEFAULT_THRESHOLDS, INFO_KINDS, KINDS, image_stats, quality_check
from vlmops.data.images import MAX_PIXELS


def _noise(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A colourful, sharp, information-rich image: random base colour plus pixel noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 190, 3)
    pixels = np.clip(base + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _save(image: Image.Image, path: Path, **kw) -> Path:
    image.save(path, **kw)
    return path


def _checkerboard(square: int = 8, size: int = 64) -> Image.Image:
    y, x = np.mgrid[:size, :size]
    board = (((x // square) + (y // square)) % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([board, 255 - board // 2, board // 3], axis=-1))


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose IHDR header claims width x height (a decompression bomb's calling card)."""
    data = bytearray(_save(Image.new("1", (8, 8)), path).read_bytes())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def audit(tmp_path_factory) -> tuple[pd.DataFrame, dict[str, set[str]], pd.DataFrame]:
    """A data set of 16 normal images plus one file per problem; returns (frame, kinds per id, stats)."""
    d = tmp_path_factory.mktemp("quality")
    files = {f"ok{i}": _save(_noise(i), d / f"ok{i}.png") for i in range(16)}
    files["ok_jpeg"] = _save(_noise(100), d / "ok_jpeg.jpeg", quality=90)
    files["ok_jpg"] = _save(_noise(101), d / "ok_jpg.JPG", quality=90)
    files["ok_tif"] = _save(_noise(102), d / "ok_tif.tif")
    files["ok_wide"] = _save(_noise(103, (128, 64)), d / "ok_wide.png")
    files["sharp"] = _save(_checkerboard(), d / "sharp.png")
    files["unreadable"] = d / "unreadable.png"
    files["unreadable"].write_text("this is not an image")
    files["missing"] = d / "missing.png"
    files["zero"] = d / "zero.png"
    files["zero"].write_bytes(b"")
    whole = _save(_noise(200), d / "whole.png").read_bytes()
    files["truncated"] = d / "truncated.png"
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    files["bomb_real"] = _save(Image.new("1", (9000, 8000)), d / "bomb_real.png")
    files["bomb_header"] = _png_claiming(d / "bomb_header.png", 20000, 20000)
    files["wrong_ext"] = _save(_noise(300), d / "wrong_ext.jpg", format="PNG")
    files["tiny"] = _save(_noise(301, (4, 4)), d / "tiny.png")
    files["strip"] = _save(_noise(302, (200, 1)), d / "strip.png")
    files["gray"] = _save(_noise(303).convert("L"), d / "gray.png")
    files["black"] = _save(Image.new("RGB", (64, 64)), d / "black.png")
    files["white"] = _save(Image.new("RGB", (64, 64), "white"), d / "white.png")
    files["transparent"] = _save(Image.new("RGBA", (64, 64), (255, 0, 0, 0)), d / "transparent.png")
    files["flat"] = _save(Image.new("RGB", (64, 64), (90, 140, 200)), d / "flat.png")
    files["blurred"] = _save(_checkerboard().filter(ImageFilter.GaussianBlur(6)), d / "blurred.png")
    frame = pd.DataFrame({"id": list(files), "image": [str(p) for p in files.values()]})
    result = quality_check(frame, progress=False)
    kinds: dict[str, set[str]] = {i: set() for i in files}
    for finding in result.findings:
        kinds[finding.record_id].add(finding.kind)
    return frame, kinds, result


def test_normal_images_have_no_findings(audit) -> None:
    _, kinds, _ = audit
    normal = [i for i in kinds if i.startswith("ok")]
    assert {i: kinds[i] for i in normal} == {i: set() for i in normal}
    assert "blurry" not in kinds["sharp"]  # the same pattern as "blurred", in focus


@pytest.mark.parametrize(
    ("record", "kind"),
    [
        ("unreadable", "unreadable"),
        ("missing", "unreadable"),
        ("zero", "zero_byte"),
        ("truncated", "truncated"),
        ("bomb_real", "decompression_bomb"),
        ("bomb_header", "decompression_bomb"),
        ("wrong_ext", "wrong_extension"),
        ("tiny", "tiny"),
        ("strip", "odd_aspect"),
        ("gray", "grayscale"),
        ("black", "too_dark"),
        ("white", "too_bright"),
        ("transparent", "too_bright"),  # fully transparent = blank white after compositing
        ("flat", "low_information"),
        ("blurred", "blurry"),
    ],
)
def test_each_bad_file_gets_its_kind(audit, record: str, kind: str) -> None:
    assert kind in audit[1][record]


def test_file_problems_are_errors_and_exclusive(audit) -> None:
    _, kinds, result = audit
    for record in ("unreadable", "zero", "truncated", "bomb_real", "bomb_header"):
        assert len(kinds[record] - {"wrong_extension"}) == 1, kinds[record]
    severity = {(f.record_id, f.kind): f.severity for f in result.findings}
    assert severity[("truncated", "truncated")] == "error"
    assert severity[("bomb_real", "decompression_bomb")] == "error"
    assert severity[("tiny", "tiny")] == "warning"
    assert severity[("wrong_ext", "wrong_extension")] == "warning"


def test_kinds_do_not_leak_to_other_bad_files(audit) -> None:
    _, kinds, _ = audit
    assert kinds["gray"] == {"grayscale"}
    assert kinds["wrong_ext"] == {"wrong_extension"}
    assert "tiny" not in kinds["wrong_ext"] and "odd_aspect" not in kinds["tiny"]
    assert "too_dark" not in kinds["white"] and "too_bright" not in kinds["black"]


def test_metrics_and_thresholds(audit) -> None:
    frame, kinds, result = audit
    flagged = sum(bool(k - set(INFO_KINDS)) for k in kinds.values())  # info is not an issue
    assert result.check == "quality"
    assert result.metrics["quality_issues"] == flagged
    assert result.metrics["quality_issue_rate"] == pytest.approx(flagged / len(frame))
    for kind in KINDS:
        assert result.metrics[f"quality_{kind}"] == sum(kind in k for k in kinds.values())
    assert result.metrics["quality_decompression_bomb"] == 2
    assert result.details["thresholds"] == DEFAULT_THRESHOLDS
    result.to_dict()  # JSON-ready


def test_bomb_is_caught_before_decoding(tmp_path, monkeypatch) -> None:
    path = _save(Image.new("1", (9000, 8000)), tmp_path / "bomb.png")
    original = ImageFile.ImageFile.load

    def guarded(self):
        assert self.width * self.height <= MAX_PIXELS, "decoded a decompression bomb"
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded)
    row = image_stats([path], progress=False).iloc[0]
    assert row["error"] == "decompression_bomb" and (row["width"], row["height"]) == (9000, 8000)
    assert np.isnan(row["brightness"])


def test_image_stats_values(tmp_path) -> None:
    paths = [
        _save(Image.new("RGB", (30, 10), (255, 255, 255)), tmp_path / "white.png"),
        _save(_noise(1), tmp_path / "noise.png"),
        _save(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), tmp_path / "clear.png"),
    ]
    stats = image_stats(paths, progress=False)
    white, noise, clear = (stats.iloc[i] for i in range(3))
    assert (white["width"], white["height"], white["pixels"], white["aspect"]) == (30, 10, 300, 3.0)
    assert white["brightness"] == pytest.approx(255) and white["entropy"] == 0
    assert white["laplacian_var"] == 0 and bool(white["grayscale"])
    assert noise["entropy"] > 6 and noise["laplacian_var"] > 1000 and not noise["grayscale"]
    assert clear["brightness"] == pytest.approx(255)  # transparent pixels are composited on white
    assert stats["format"].tolist() == ["PNG"] * 3 and stats["readable"].all()


def test_emoji_like_white_backgrounds_are_not_too_bright(tmp_path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(30):  # small coloured drawings on white: mean luma ~225-250, like emoji
        image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        r = int(rng.integers(10, 24))
        colour = (*(int(c) for c in rng.integers(0, 200, 3)), 255)
        ImageDraw.Draw(image).ellipse((32 - r, 32 - r, 32 + r, 32 + r), fill=colour, outline=(0, 0, 0, 255))
        paths.append(_save(image, tmp_path / f"e{i}.png"))
    paths.append(_save(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), tmp_path / "blank.png"))
    frame = pd.DataFrame({"id": [p.stem for p in paths], "image": [str(p) for p in paths]})
    stats = image_stats(frame["image"], progress=False)
    assert (
        stats["brightness"][:30] > DEFAULT_THRESHOLDS["too_bright"]
    ).sum() >= 5  # absolute alone would flag
    result = quality_check(frame, stats=stats, progress=False)
    assert [f.record_id for f in result.findings if f.kind == "too_bright"] == ["blank"]


def test_relative_rule_and_threshold_override(tmp_path) -> None:
    paths = [_save(_noise(i), tmp_path / f"n{i}.png") for i in range(10)]
    paths.append(_save(_noise(50, (100, 100)), tmp_path / "big.png"))
    frame = pd.DataFrame({"id": [p.stem for p in paths], "image": [str(p) for p in paths]})
    huge = lambda result: [f.record_id for f in result.findings if f.kind == "huge"]  # noqa: E731
    assert huge(quality_check(frame, progress=False)) == []
    result = quality_check(frame, progress=False, huge_pixels=5000)
    assert huge(result) == ["big"]  # past the soft limit and an outlier of this data set
    assert result.details["thresholds"]["huge_pixels"] == 5000
    bigger = frame.assign(image=[str(paths[-1])] * len(frame))  # all the same size: no outlier
    assert huge(quality_check(bigger, progress=False, huge_pixels=5000)) == []
    assert len(huge(quality_check(bigger, progress=False, huge_pixels_hard=9000))) == len(frame)
    with pytest.raises(ValueError, match="unknown quality thresholds"):
        quality_check(frame, progress=False, brightness=3)


def test_grayscale_data_set_is_not_flagged(tmp_path) -> None:
    paths = [_save(_noise(i).convert("L"), tmp_path / f"g{i}.png") for i in range(6)]
    frame = pd.DataFrame({"id": [p.stem for p in paths], "image": [str(p) for p in paths]})
    result = quality_check(frame, progress=False)
    assert result.metrics["quality_grayscale"] == 0 and any("grayscale" in n for n in result.notes)


def test_stats_must_match_frame(tmp_path) -> None:
    path = _save(_noise(0), tmp_path / "a.png")
    frame = pd.DataFrame({"id": ["a", "b"], "image": [str(path)] * 2})
    with pytest.raises(ValueError, match="rows"):
        quality_check(frame, stats=image_stats([path], progress=False), progress=False)
    old_stats = image_stats([path] * 2, progress=False).drop(columns=["edge_sharpness"])
    with pytest.raises(ValueError, match="edge_sharpness"):
        quality_check(frame, stats=old_stats, progress=False)


def _drawing(seed: int) -> Image.Image:
    """A flat drawing: one small crisp filled shape on white (little detail, sharp edges)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (64, 64), "white")
    x, y = (int(v) for v in rng.integers(8, 40, size=2))
    ImageDraw.Draw(image).ellipse((x, y, x + 14, y + 14), fill=(200, 60, 40))
    return image


def test_flat_drawing_is_not_blurry_but_blurred_one_is(tmp_path) -> None:
    """Little detail with crisp edges is not blur; the same drawing with soft edges is."""
    paths = [_save(_noise(100 + i, (64, 64)), tmp_path / f"busy{i}.png") for i in range(30)]
    paths.append(_save(_drawing(0), tmp_path / "drawing.png"))
    paths.append(_save(_drawing(1).filter(ImageFilter.GaussianBlur(2)), tmp_path / "soft.png"))
    frame = pd.DataFrame({"id": [p.stem for p in paths], "image": [str(p) for p in paths]})
    stats = image_stats(frame["image"], progress=False)
    blurry = {f.record_id for f in quality_check(frame, stats, progress=False).findings if f.kind == "blurry"}
    assert blurry == {"soft"}
    sharpness = dict(zip(frame["id"], stats["edge_sharpness"], strict=True))
    assert sharpness["drawing"] > 1.0 > 0.5 > sharpness["soft"]


def test_grayscale_is_info_not_an_issue(tmp_path) -> None:
    """A grayscale image in a colour data set is listed at info level and not counted as an issue."""
    paths = [_save(_noise(200 + i, (64, 64)), tmp_path / f"c{i}.png") for i in range(20)]
    paths.append(_save(_noise(300, (64, 64)).convert("L"), tmp_path / "gray.png"))
    frame = pd.DataFrame({"id": [p.stem for p in paths], "image": [str(p) for p in paths]})
    result = quality_check(frame, progress=False)
    assert [(f.record_id, f.kind, f.severity) for f in result.findings] == [("gray", "grayscale", "info")]
    assert result.metrics["quality_grayscale"] == 1 and result.metrics["quality_issues"] == 0


def _drawn(paint, background: str = "white") -> Image.Image:
    """A 64-px image drawn at 256 px by `paint` and reduced (anti-aliased edges, as emoji are)."""
    image = Image.new("RGB", (256, 256), background)
    paint(ImageDraw.Draw(image))
    return image.resize((64, 64), Image.Resampling.LANCZOS)


def _outlined_square() -> Image.Image:
    """A square outlined by a crisp 1-px black line on white (as OpenMoji's white squares, 0.47 bits)."""
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), outline=(0, 0, 0))
    return image


def test_low_information_hard_limit_is_for_blank_images_only(tmp_path) -> None:
    """Few grey levels are not blankness: a frame-filling coloured square (Twitter's square emoji, 0.2
    bits) and an outlined square on white are drawings; blank and near-blank images stay flagged."""
    images = {f"busy{i}": _noise(400 + i) for i in range(4)}  # too few for a robust-z outlier rule
    images |= {
        "purple_square": _drawn(lambda d: d.rounded_rectangle((0, 0, 255, 255), 24, fill=(170, 142, 214))),
        "outlined_square": _outlined_square(),
        "blank_white": Image.new("RGB", (64, 64), "white"),
        "blank_grey": Image.new("RGB", (64, 64), (128, 128, 128)),
        "grey_square": _drawn(lambda d: d.rounded_rectangle((0, 0, 255, 255), 24, fill=(128, 128, 128))),
        "speck": _drawn(lambda d: d.ellipse((100, 100, 108, 108), fill=(0, 0, 0))),
        "dot": _drawn(lambda d: d.ellipse((80, 80, 112, 112), fill=(0, 0, 0))),
    }
    paths = [_save(image, tmp_path / f"{name}.png") for name, image in images.items()]
    frame = pd.DataFrame({"id": list(images), "image": [str(p) for p in paths]})
    stats = image_stats(frame["image"], progress=False)
    assert (stats["entropy"][4:] < DEFAULT_THRESHOLDS["low_information_hard"]).all()  # all past the limit
    result = quality_check(frame, stats, progress=False)
    flagged = {f.record_id for f in result.findings if f.kind == "low_information"}
    assert flagged == {"blank_white", "blank_grey", "grey_square", "speck", "dot"}
