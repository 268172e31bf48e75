"""One image-to-RGB conversion: any PIL mode embeds the same through the library, eval, serve and ONNX.

Transparent pixels are white (not black), 16-bit grey is scaled (not clipped), EXIF-rotated photos
are turned upright, whichever way the image reaches the model.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnx_helpers import save_tiny_model
from serve_helpers import make_app
from vlmops.data.emoji import manifest_path
from vlmops.models import load_model
from vlmops.models.onnx_export import export_bundle
from vlmops.store.cache import open_cache
from vlmops.store.embed import embed_images_cached

SIDE = 32
ORIENTATION = 0x0112


def _pattern() -> tuple[np.ndarray, np.ndarray]:
    """(SIDE, SIDE, 3) colours and a (SIDE, SIDE) opaque mask: a red disc and a blue bar on nothing."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    rgb = np.zeros((SIDE, SIDE, 3), np.uint8)
    disc = (yy - 12) ** 2 + (xx - 12) ** 2 < 64
    bar = (yy > 22) & (xx > 4) & (xx < 28)
    rgb[disc] = (220, 30, 40)
    rgb[bar] = (20, 40, 200)
    return rgb, disc | bar


def _cases(folder: Path) -> dict[str, tuple[Path, Image.Image]]:
    """mode name -> (file on disk, the RGB image every path must see), each written the way tools do."""
    rgb, opaque = _pattern()
    white = np.where(opaque[..., None], rgb, 255).astype(np.uint8)
    grey = rgb.mean(axis=2).astype(np.uint8)
    cases: dict[str, tuple[Path, Image.Image]] = {}

    def save(name: str, image: Image.Image, expected: Image.Image, fmt: str = "PNG", **kw) -> None:
        path = folder / f"{name}.{fmt.lower()}"
        image.save(path, fmt, **kw)
        cases[name] = (path, expected)

    alpha = np.where(opaque, 255, 0).astype(np.uint8)
    save("RGBA", Image.fromarray(np.dstack([rgb, alpha])), Image.fromarray(white))
    grey_white = np.where(opaque, grey, 255).astype(np.uint8)
    la = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
    save("LA", la, Image.fromarray(grey_white).convert("RGB"))
    palette = Image.fromarray(np.where(opaque, 1 + (rgb[..., 2] > 100), 0).astype(np.uint8)).convert("P")
    palette.putpalette([0, 0, 0, 220, 30, 40, 20, 40, 200] + [0] * (256 * 3 - 9))
    save("P-transparency", palette, Image.fromarray(white), transparency=0)
    wide = (np.arange(SIDE * SIDE, dtype=np.uint16).reshape(SIDE, SIDE) * 64) + 17
    sixteen = Image.frombytes("I;16", (SIDE, SIDE), wide.astype("<u2").tobytes())
    save("I;16", sixteen, Image.fromarray((wide >> 8).astype(np.uint8)).convert("RGB"))
    save("CMYK", Image.fromarray(white).convert("CMYK"), Image.new("RGB", (1, 1)), fmt="JPEG", quality=95)
    cases["CMYK"] = (cases["CMYK"][0], Image.open(cases["CMYK"][0]).convert("RGB"))  # lossy: as decoded
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored sideways: turn 90 degrees clockwise to view
    sideways = Image.fromarray(white).transpose(Image.Transpose.ROTATE_90)
    save("EXIF-rotated", sideways, Image.fromarray(white), exif=exif)
    return cases


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model, ONNX fp32 bundle of it, image cases)."""
    root = tmp_path_factory.mktemp("modes")
    model = load_model(save_tiny_model(root / "tiny"))
    export_bundle(model, root / "bundle")
    (root / "images").mkdir()
    return model, load_model(f"onnx:{root / 'bundle'}"), _cases(root / "images")


def test_every_mode_embeds_as_rgb_on_white_through_library_eval_serve_and_onnx(setup, tmp_path):
    model, bundle, cases = setup
    app, _, _ = make_app(tmp_path, model, auth=False)
    from fastapi.testclient import TestClient

    with TestClient(app) as client, open_cache(str(tmp_path / "cache.sqlite")) as cache:
        for name, (path, expected) in cases.items():
            assert Image.open(path).mode != "RGB" or name == "EXIF-rotated", name
            want = model.embed_images([expected])[0]
            library = model.embed_images([Image.open(path)])[0]
            evaluated = embed_images_cached(model, [path], cache, progress=False)[0][0]
            response = client.post("/v1/embeddings", files=[("images", (path.name, path.read_bytes()))])
            assert response.status_code == 200, (name, response.text)
            served = np.array(response.json()["data"][0]["embedding"], dtype=np.float32)
            exported = bundle.embed_images([Image.open(path)])[0]
            for where, got in [("library", library), ("eval", evaluated), ("serve", served)]:
                np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{name} through {where}")
            np.testing.assert_allclose(exported, want, atol=1e-4, err_msg=f"{name} through the ONNX bundle")


def test_transparent_pixels_are_white_not_black(setup):
    """The failure this guards against: convert("RGB") turns transparent pixels black."""
    model, _, cases = setup
    path, expected = cases["RGBA"]
    black = Image.open(path).convert("RGB")
    assert np.asarray(black).min() == 0 and not np.array_equal(np.asarray(black), np.asarray(expected))
    library = model.embed_images([Image.open(path)])[0]
    on_white, on_black = model.embed_images([expected, black])
    assert float(library @ on_white) > float(library @ on_black)


@pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")
def test_public_api_on_raw_emoji_pngs_matches_eval(tmp_path):
    """`embed_images([Image.open(png)])` on new-vendor emoji gives eval's vectors and eval's top-1."""
    from vlmops.data.emoji import load_emoji_manifest
    from vlmops.evaluate.task import build_task

    manifest = load_emoji_manifest()
    new = manifest[manifest["vendor"].isin(["facebook", "openmoji"]) & (manifest["split"] == "test")]
    sample = new.sample(120, random_state=0)
    task = build_task(sample, "emoji")
    model = load_model("builtin:emoji-lit")
    paths = list(task.frame["image"])
    assert Image.open(paths[0]).mode in ("RGBA", "P", "LA")  # the raw files carry transparency
    with open_cache(str(tmp_path / "cache.sqlite")) as cache:
        evaluated, _ = embed_images_cached(model, paths, cache, progress=False)
    library = model.embed_images([Image.open(p) for p in paths])
    np.testing.assert_allclose(library, evaluated, atol=1e-5)
    classes = model.embed_texts([task.templates[0].format(n) for n in task.class_names])
    top1 = ((library @ classes.T).argmax(axis=1) == task.targets).mean()
    assert top1 == ((evaluated @ classes.T).argmax(axis=1) == task.targets).mean()


def test_to_rgb_returns_an_upright_rgb_image_unchanged():
    from vlmops.models.preprocess import to_rgb

    image = Image.new("RGB", (4, 4), (1, 2, 3))
    assert to_rgb(image) is image
    sixteen = Image.frombytes("I;16", (2, 2), np.full((2, 2), 40000, "<u2").tobytes())
    assert to_rgb(sixteen).getpixel((0, 0)) == (156, 156, 156)  # 40000 / 256, not clipped to 255
    assert to_rgb(Image.open(io.BytesIO(_png(sixteen)))).getpixel((0, 0)) == (156, 156, 156)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_the_conversion_version_is_part_of_the_cache_key(setup):
    """Vectors cached under an older `to_rgb` (16-bit clipped, EXIF ignored) are not reused."""
    from vlmops.models.preprocess import TO_RGB_ID

    model, bundle, _ = setup
    assert TO_RGB_ID in model.transform_id and bundle.transform_id == model.transform_id
