"""The embedded emoji data set: real images from four design vendors, with names, tones and genders.

`fetch_emoji()` installs pinned npm packages into the data directory, renders OpenMoji's SVGs to PNG
and builds one Parquet manifest (one row per image). Every step is idempotent: a second call reuses
what is already on disk. Labels come from emojibase (CLDR names and keywords); vendor artwork comes
from iamcal's emoji-datasource packages and OpenMoji.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vlmops.config import get_settings
from vlmops.data.emoji_labels import EmojiLabels, normalise_hex
from vlmops.errors import DataError
from vlmops.hashing import seeded_uniform, sha256_file

PACKAGES: dict[str, str] = {
    "emoji-datasource-google": "16.0.0",
    "emoji-datasource-twitter": "16.0.0",
    "emoji-datasource-facebook": "16.0.0",
    "openmoji": "17.0.0",
    "emojibase-data": "17.0.0",
}


@dataclass(frozen=True)
class Vendor:
    """One source of emoji artwork and the licence its package states for the artwork."""

    name: str
    package: str
    artwork_licence: str


VENDORS: dict[str, Vendor] = {
    "google": Vendor("google", "emoji-datasource-google", "Apache-2.0"),
    "twitter": Vendor("twitter", "emoji-datasource-twitter", "CC-BY-4.0"),
    # emoji-datasource's README: "Facebook images, © Facebook, Inc., have no clear licensing."
    "facebook": Vendor("facebook", "emoji-datasource-facebook", "unclear"),
    "openmoji": Vendor("openmoji", "openmoji", "CC-BY-SA-4.0"),
}

SPLIT_FRACTIONS = {"train": 0.80, "val": 0.05, "test": 0.15}
DEFAULT_SEED = 0
IMAGE_SIZE = 64
# Bump when the manifest's columns or contents change so old manifests are rebuilt.
MANIFEST_VERSION = 1


def emoji_dir() -> Path:
    """Directory holding the npm packages, rendered images and the manifest."""
    return get_settings().data_dir / "emoji"


def manifest_path() -> Path:
    """Where the emoji manifest lives once fetched."""
    return emoji_dir() / f"manifest-v{MANIFEST_VERSION}.parquet"


def install_packages(target: Path) -> Path:
    """npm-install the pinned packages into `target`; reuse an install with the same pins."""
    modules = target / "node_modules"
    if all(_installed_version(modules / name) == version for name, version in PACKAGES.items()):
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm was not found on PATH; install Node.js and npm (e.g. apt-get install npm)")
    target.mkdir(parents=True, exist_ok=True)
    (target / "package.json").write_text(
        json.dumps({"private": True, "dependencies": PACKAGES}, indent=2) + "\n"
    )
    cmd = [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--save-exact"]
    proc = subprocess.run(cmd, cwd=target, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise DataError(
            f"npm install failed in {target} (is the npm registry reachable?): {tail}; "
            "check your network or npm proxy settings and run `vlmops data fetch emoji` again"
        )
    return modules


def _installed_version(package_dir: Path) -> str | None:
    try:
        return json.loads((package_dir / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None  # absent or corrupt: treat as not installed


def render_svgs(svgs: list[Path], out_dir: Path, size: int = IMAGE_SIZE, progress=None) -> list[Path]:
    """Render SVG files to `size`-px RGBA PNGs (skipping ones already rendered)."""
    import cairosvg

    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    for svg in svgs:
        png = out_dir / (svg.stem + ".png")
        if not png.exists():
            tmp = png.with_suffix(".tmp")
            cairosvg.svg2png(url=str(svg), write_to=str(tmp), output_width=size, output_height=size)
            tmp.replace(png)
        outputs.append(png)
        if progress is not None:
            progress()
    return outputs


def assign_split(concept: str, seed: int = DEFAULT_SEED) -> str:
    """Seeded split of a concept id: the same concept always lands on the same side."""
    u = seeded_uniform(f"{seed}:{concept}")
    edge = 0.0
    for split, fraction in SPLIT_FRACTIONS.items():
        edge += fraction
        if u < edge:
            return split
    return "test"


def datasource_images(modules: Path, vendor: Vendor) -> list[tuple[str, Path]]:
    """(hexcode, png path) for every image the vendor's emoji-datasource package has."""
    entries = json.loads((modules / vendor.package / "emoji.json").read_text())
    flag = f"has_img_{vendor.name}"
    img_dir = modules / vendor.package / "img" / vendor.name / "64"
    found = []
    for entry in entries:
        variants = [entry, *(entry.get("skin_variations") or {}).values()]
        for variant in variants:
            if variant.get(flag) and (img_dir / variant["image"]).exists():
                found.append((variant["unified"], img_dir / variant["image"]))
    return found


def openmoji_svgs(modules: Path, labels: EmojiLabels) -> list[tuple[str, Path]]:
    """(hexcode, svg path) for every OpenMoji image of a standard emoji (not OpenMoji's extras)."""
    entries = json.loads((modules / "openmoji" / "data" / "openmoji.json").read_text())
    svg_dir = modules / "openmoji" / "color" / "svg"
    found = []
    for entry in entries:
        if entry["group"].startswith("extras") or not labels.knows(entry["hexcode"]):
            continue
        svg = svg_dir / f"{entry['hexcode']}.svg"
        if svg.exists():
            found.append((entry["hexcode"], svg))
    return found


def build_manifest(modules: Path, render_dir: Path, seed: int = DEFAULT_SEED, progress=None) -> pd.DataFrame:
    """One row per vendor image with names, slices, split and provenance."""
    labels = EmojiLabels.from_emojibase(modules / "emojibase-data")
    rows: list[dict] = []
    unmatched: list[str] = []
    for vendor in VENDORS.values():
        meta = json.loads((modules / vendor.package / "package.json").read_text())
        version, package_licence = meta["version"], meta.get("license", "unknown")
        if vendor.name == "openmoji":
            pairs = openmoji_svgs(modules, labels)
            pngs = render_svgs([svg for _, svg in pairs], render_dir, progress=progress)
            images = [(hexcode, png, svg) for (hexcode, svg), png in zip(pairs, pngs, strict=True)]
        else:
            images = [(hexcode, png, png) for hexcode, png in datasource_images(modules, vendor)]
        if not images:
            raise DataError(
                f"no {vendor.name} images found under {modules / vendor.package}; the package layout "
                "changed: delete the emoji data directory and fetch again, or update vlmops"
            )
        for hexcode, image, original in images:
            info = labels.lookup(hexcode)
            if info is None:
                unmatched.append(f"{vendor.name}:{hexcode}")
                continue
            rows.append(
                {
                    "id": f"{vendor.name}:{normalise_hex(hexcode)}",
                    "vendor": vendor.name,
                    "image": str(image),
                    "original": str(original),
                    "sha256": sha256_file(image),
                    **info.as_row(),
                    "split": assign_split(info.concept, seed),
                    "source": f"npm:{vendor.package}@{version}",
                    "version": version,
                    "package_licence": package_licence,
                    "licence": vendor.artwork_licence,
                }
            )
    if unmatched and len(unmatched) > 0.02 * (len(rows) + len(unmatched)):
        raise DataError(
            f"{len(unmatched)} vendor images have no emojibase entry (e.g. {unmatched[:5]}); "
            "the pinned packages disagree; delete the emoji data directory and fetch again"
        )
    frame = pd.DataFrame(rows)
    frame.attrs.update(unmatched=unmatched, seed=seed)
    return frame


def fetch_emoji(seed: int = DEFAULT_SEED, force: bool = False, progress: bool = True) -> Path:
    """Install, render and index the emoji data set; returns the manifest path."""
    target = manifest_path()
    if target.exists() and not force and load_emoji_manifest().attrs.get("seed") == seed:
        return target
    from vlmops.progress import progress_bar

    modules = install_packages(emoji_dir() / "npm")
    with progress_bar(progress) as bar:
        task = bar.add_task("rendering OpenMoji SVGs", total=None)
        frame = build_manifest(
            modules, emoji_dir() / "openmoji-png", seed, progress=lambda: bar.advance(task)
        )
    tmp = target.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(target)
    return target


def load_emoji_manifest() -> pd.DataFrame:
    """The emoji manifest as a DataFrame; a clear error if it has not been fetched."""
    path = manifest_path()
    if not path.exists():
        raise DataError(f"the emoji data set is not installed at {path}; run `vlmops data fetch emoji`")
    return pd.read_parquet(path)
