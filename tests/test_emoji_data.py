"""The emoji data set: label parsing, a fake npm tree through build_manifest, splits, npm install and
fetch errors, and (marker `emoji`) checks of the real manifest when it has been fetched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import vlmops.data.emoji as emoji
from vlmops.config import get_settings
from vlmops.data.emoji import (
    PACKAGES,
    SPLIT_FRACTIONS,
    assign_split,
    build_manifest,
    emoji_dir,
    fetch_emoji,
    install_packages,
    load_emoji_manifest,
    manifest_path,
)
from vlmops.data.emoji_labels import (
    GENDER_VALUES,
    SKIN_TONE_VALUES,
    EmojiLabels,
    gender_of,
    normalise_hex,
    skin_tone_of,
)
from vlmops.errors import DataError

SEED = 7
REQUIRED_COLUMNS = [
    *("id", "vendor", "image", "original", "sha256", "unified", "name", "tags", "texts"),
    *("category", "subcategory", "concept", "concept_name", "label", "skin_tone", "gender", "split"),
    *("source", "version", "package_licence", "licence"),
]

# ---------------------------------------------------------------------------------------------------
# emoji_labels
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0023-fe0f-20e3", "0023-20E3"),
        ("2601-FE0F", "2601"),
        ("2601-FE0E", "2601"),
        ("1f3c3-200d-2640-fe0f", "1F3C3-200D-2640"),
        ("1F600", "1F600"),
    ],
)
def test_normalise_hex(raw, expected):
    assert normalise_hex(raw) == expected


@pytest.mark.parametrize(
    ("tone", "expected"),
    [
        (None, "none"),
        (1, "light"),
        (2, "medium-light"),
        (3, "medium"),
        (4, "medium-dark"),
        (5, "dark"),
        ([2, 2], "medium-light"),
        ([1, 3], "mixed"),
        ([5, 1], "mixed"),
    ],
)
def test_skin_tone_of(tone, expected):
    assert skin_tone_of(tone) == expected


@pytest.mark.parametrize(
    ("label", "hexcode", "expected"),
    [
        ("man technologist: dark skin tone", "1F468-1F3FF-200D-1F4BB", "man"),
        ("woman running", "1F3C3-200D-2640-FE0F", "woman"),
        ("person running", "1F3C3", "person"),
        ("snowman", "2603-FE0F", "none"),  # a word match, not a substring match
        ("grinning face", "1F600", "none"),
        ("kiss: woman, man", "1F469-200D-2764-FE0F-200D-1F48B-200D-1F468", "mixed"),
        ("family: man, woman, boy", "1F468-200D-1F469-200D-1F466", "mixed"),
        ("person in suit levitating", "1F574-FE0F", "person"),
        ("couple with heart: woman, woman", "1F469-200D-2764-FE0F-200D-1F469", "woman"),
        ("people holding hands: light skin tone", "1F9D1-1F3FB-200D-1F91D-200D-1F9D1-1F3FB", "person"),
        ("men holding hands", "1F46C", "man"),
        ("merman", "1F9DC-200D-2642-FE0F", "man"),  # only the gender sign says so
        ("family: man, person", "1F468-200D-1F9D1", "man"),  # "person" beside a gendered word adds nothing
    ],
)
def test_gender_of(label, hexcode, expected):
    assert gender_of(label, hexcode) == expected


# ---------------------------------------------------------------------------------------------------
# A fake npm tree with the real packages' layout
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Skin:
    key: str  # emoji-datasource's skin_variations key
    hexcode: str
    label: str
    tone: int | list[int]
    skin_tone: str  # what the manifest should say


@dataclass(frozen=True)
class Concept:
    hexcode: str  # emojibase's spelling
    label: str
    group: str
    subgroup: str
    gender: str  # what the manifest should say, for the base and every skin
    tags: tuple[str, ...] = ()
    unicode_name: str = ""
    datasource_hexcode: str | None = None  # emoji-datasource's spelling where it differs
    skins: tuple[Skin, ...] = ()


_TONE_NAMES = ("light", "medium-light", "medium", "medium-dark", "dark")
_MODIFIERS = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")
HOLDING_HANDS = "1F9D1-200D-1F91D-200D-1F9D1"
WOMAN_RUNNING = "1F3C3-200D-2640-FE0F"
CONCEPTS = (
    Concept(
        "1F600", "grinning face", "smileys-emotion", "face-smiling", "none", ("face", "grin"), "GRINNING FACE"
    ),
    Concept(
        "1F44B",
        "waving hand",
        "people-body",
        "hand-fingers-open",
        "none",
        ("hand", "wave"),
        "WAVING HAND SIGN",
        skins=tuple(
            Skin(mod, f"1F44B-{mod}", f"waving hand: {name} skin tone", i, name)
            for i, (mod, name) in enumerate(zip(_MODIFIERS, _TONE_NAMES, strict=True), start=1)
        ),
    ),
    Concept(
        HOLDING_HANDS,
        "people holding hands",
        "people-body",
        "family",
        "person",
        ("hold", "people"),
        skins=(
            Skin(
                "1F3FB",
                "1F9D1-1F3FB-200D-1F91D-200D-1F9D1-1F3FB",
                "people holding hands: light skin tone",
                1,
                "light",
            ),
            Skin(
                "1F3FB-1F3FC",
                "1F9D1-1F3FB-200D-1F91D-200D-1F9D1-1F3FC",
                "people holding hands: light skin tone, medium-light skin tone",
                [1, 2],
                "mixed",
            ),
        ),
    ),
    # emojibase spells cloud without FE0F; emoji-datasource spells it with FE0F.
    Concept("2601", "cloud", "travel-places", "sky-weather", "none", ("weather",), "CLOUD", "2601-FE0F"),
    Concept(WOMAN_RUNNING, "woman running", "people-body", "person-activity", "woman", ("marathon",)),
    Concept("26C4", "snowman without snow", "travel-places", "sky-weather", "none", ("snow",)),
)
GROUPS = ("smileys-emotion", "people-body", "travel-places")
SUBGROUPS = ("face-smiling", "hand-fingers-open", "family", "person-activity", "sky-weather")
DATASOURCE_VENDORS = ("google", "twitter", "facebook")
FACEBOOK_NO_FLAG = {WOMAN_RUNNING}  # has_img_facebook is false
FACEBOOK_NO_FILE = {"1F44B-1F3FF"}  # flagged but the PNG is not in the package
OPENMOJI_EXTRA = "E000"  # extras-openmoji: OpenMoji's own artwork, unknown to emojibase
# extras-unicode: emojibase knows regional indicators (no group, so "component"); OpenMoji files them as
# extras and neither the manifest nor emoji-datasource has them.
REGIONAL_A = "1F1E6"
N_VARIANTS = sum(1 + len(c.skins) for c in CONCEPTS)  # 13
EXPECTED_COUNTS = {
    "google": N_VARIANTS,
    "twitter": N_VARIANTS,
    "facebook": N_VARIANTS - 2,
    "openmoji": N_VARIANTS,
}


def _chars(hexcode: str) -> str:
    return "".join(chr(int(p, 16)) for p in hexcode.split("-"))


def _colour(key: str) -> tuple[int, int, int]:
    r, g, b = hashlib.sha256(key.encode()).digest()[:3]
    return r, g, b


def _write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def _write_png(path: Path, colour: tuple[int, int, int]) -> None:
    """An 8x8 RGBA PNG: transparent background, an opaque square in the vendor's colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    image.paste((*colour, 255), (2, 2, 6, 6))
    image.save(path)


def _write_emojibase(package: Path) -> None:
    data = []
    for c in CONCEPTS:
        entry = {
            "label": c.label,
            "hexcode": c.hexcode,
            "emoji": _chars(c.hexcode),
            "tags": list(c.tags),
            "group": GROUPS.index(c.group),
            "subgroup": SUBGROUPS.index(c.subgroup),
        }
        if c.skins:
            entry["skins"] = [
                {"label": s.label, "hexcode": s.hexcode, "emoji": _chars(s.hexcode), "tone": s.tone}
                for s in c.skins
            ]
        data.append(entry)
    data.append({"label": "regional indicator A", "hexcode": REGIONAL_A, "emoji": _chars(REGIONAL_A)})
    messages = {
        "groups": [{"key": k, "message": k.replace("-", " & "), "order": i} for i, k in enumerate(GROUPS)],
        "subgroups": [{"key": k, "message": k, "order": i} for i, k in enumerate(SUBGROUPS)],
        "skinTones": [{"key": k, "message": f"{k} skin tone"} for k in _TONE_NAMES],
    }
    _write_json(package / "en" / "data.json", data)
    _write_json(package / "en" / "messages.json", messages)
    _write_json(
        package / "meta" / "unicode-names.json",
        {c.hexcode: c.unicode_name for c in CONCEPTS if c.unicode_name},
    )
    _write_json(package / "package.json", {"name": "emojibase-data", "version": "17.0.0", "license": "MIT"})


def _datasource_variant(hexcode: str) -> dict:
    flags = {f"has_img_{v}": True for v in DATASOURCE_VENDORS}
    if hexcode in FACEBOOK_NO_FLAG:
        flags["has_img_facebook"] = False
    return {"unified": hexcode, "image": f"{hexcode.lower()}.png", "has_img_apple": True, **flags}


def _datasource_entries(extra: Sequence[str]) -> list[dict]:
    entries = []
    for c in CONCEPTS:
        entry = _datasource_variant(c.datasource_hexcode or c.hexcode)
        if c.skins:
            entry["skin_variations"] = {s.key: _datasource_variant(s.hexcode) for s in c.skins}
        entries.append(entry)
    return entries + [_datasource_variant(h) for h in extra]


def _write_openmoji(package: Path) -> None:
    entries = [
        {"hexcode": OPENMOJI_EXTRA, "group": "extras-openmoji"},
        {"hexcode": REGIONAL_A, "group": "extras-unicode"},
    ]
    for c in CONCEPTS:
        entries += [{"hexcode": h, "group": c.group} for h in [c.hexcode, *(s.hexcode for s in c.skins)]]
    for entry in entries:
        r, g, b = _colour(f"openmoji:{entry['hexcode']}")
        svg = (
            '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72">'
            f'<circle cx="36" cy="36" r="24" fill="#{r:02x}{g:02x}{b:02x}"/></svg>'
        )
        path = package / "color" / "svg" / f"{entry['hexcode']}.svg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(svg)
    _write_json(package / "data" / "openmoji.json", entries)
    _write_json(
        package / "package.json", {"name": "openmoji", "version": "17.0.0", "license": "CC-BY-SA-4.0"}
    )


def make_npm_tree(root: Path, extra_datasource: Sequence[str] = ()) -> Path:
    """node_modules with emojibase-data, three emoji-datasource packages and openmoji, as npm lays them out.

    `extra_datasource`: hexcodes every datasource package has an image for but emojibase lacks."""
    modules = root / "node_modules"
    _write_emojibase(modules / "emojibase-data")
    entries = _datasource_entries(extra_datasource)
    for vendor in DATASOURCE_VENDORS:
        package = modules / f"emoji-datasource-{vendor}"
        meta = {"name": package.name, "version": PACKAGES[package.name], "license": "MIT"}
        _write_json(package / "package.json", meta)
        _write_json(package / "emoji.json", entries)
        for entry in entries:
            for variant in [entry, *entry.get("skin_variations", {}).values()]:
                if not variant[f"has_img_{vendor}"]:
                    continue
                if vendor == "facebook" and variant["unified"] in FACEBOOK_NO_FILE:
                    continue
                path = package / "img" / vendor / "64" / variant["image"]
                _write_png(path, _colour(f"{vendor}:{variant['unified']}"))
    _write_openmoji(modules / "openmoji")
    return modules


def _expected_by_id_suffix() -> dict[str, dict]:
    """What each normalised hexcode's row should carry, from the CONCEPTS table."""
    expected = {}
    for c in CONCEPTS:
        common = {
            "concept": normalise_hex(c.hexcode),
            "concept_name": c.label,
            "category": c.group,
            "subcategory": c.subgroup,
            "label": f"{c.group}/{c.subgroup}/{c.label}",
            "gender": c.gender,
            "tags": list(c.tags),
        }
        expected[normalise_hex(c.hexcode)] = {
            **common,
            "unified": c.hexcode,
            "name": c.label,
            "skin_tone": "none",
            "unicode_name": c.unicode_name,
        }
        for s in c.skins:
            expected[normalise_hex(s.hexcode)] = {
                **common,
                "unified": s.hexcode,
                "name": s.label,
                "skin_tone": s.skin_tone,
                "unicode_name": "",
            }
    return expected


@pytest.fixture(scope="module")
def fake_modules(tmp_path_factory) -> Path:
    return make_npm_tree(tmp_path_factory.mktemp("npm"))


@pytest.fixture(scope="module")
def render_dir(fake_modules) -> Path:
    return fake_modules.parent / "openmoji-png"


@pytest.fixture(scope="module")
def fake_manifest(fake_modules, render_dir) -> pd.DataFrame:
    return build_manifest(fake_modules, render_dir, seed=SEED)


# ---------------------------------------------------------------------------------------------------
# build_manifest on the fake tree
# ---------------------------------------------------------------------------------------------------


def test_rows_per_vendor(fake_manifest):
    assert fake_manifest["vendor"].value_counts().to_dict() == EXPECTED_COUNTS
    assert fake_manifest.attrs["unmatched"] == []


def test_required_columns(fake_manifest):
    missing = set(REQUIRED_COLUMNS) - set(fake_manifest.columns)
    assert not missing, f"manifest lacks {sorted(missing)}"
    assert fake_manifest[REQUIRED_COLUMNS].notna().all().all()


@pytest.mark.parametrize(
    ("vendor", "licence", "package_licence"),
    [
        ("google", "Apache-2.0", "MIT"),
        ("twitter", "CC-BY-4.0", "MIT"),
        ("facebook", "unclear", "MIT"),
        ("openmoji", "CC-BY-SA-4.0", "CC-BY-SA-4.0"),
    ],
)
def test_licences_and_provenance(fake_manifest, vendor, licence, package_licence):
    rows = fake_manifest[fake_manifest["vendor"] == vendor]
    package = emoji.VENDORS[vendor].package
    assert set(rows["licence"]) == {licence}
    assert set(rows["package_licence"]) == {package_licence}
    assert set(rows["version"]) == {PACKAGES[package]}
    assert set(rows["source"]) == {f"npm:{package}@{PACKAGES[package]}"}


def test_openmoji_rows_are_rendered_pngs(fake_manifest, fake_modules, render_dir):
    rows = fake_manifest[fake_manifest["vendor"] == "openmoji"]
    assert len(rows) == N_VARIANTS
    svg_dir = fake_modules / "openmoji" / "color" / "svg"
    for row in rows.itertuples():
        image, original = Path(row.image), Path(row.original)
        assert image.parent == render_dir and image.suffix == ".png" and image.exists()
        assert original.parent == svg_dir and original.suffix == ".svg" and original.exists()
        assert image.stem == original.stem
        with Image.open(image) as im:
            assert im.format == "PNG" and im.size == (64, 64)
            rgba = im.convert("RGBA")
            assert rgba.getpixel((0, 0))[3] == 0, "the background should stay transparent"
            r, g, b, a = rgba.getpixel((32, 32))
            assert a == 255
            expected = _colour(f"openmoji:{original.stem}")
            assert max(abs(x - y) for x, y in zip((r, g, b), expected, strict=True)) <= 2


def test_openmoji_extras_excluded(fake_manifest):
    for hexcode in (OPENMOJI_EXTRA, REGIONAL_A):
        assert not fake_manifest["original"].str.contains(hexcode).any()
        assert f"openmoji:{hexcode}" not in set(fake_manifest["id"])


def test_labels_lookup_any_spelling(fake_modules):
    labels = EmojiLabels.from_emojibase(fake_modules / "emojibase-data")
    cloud = labels.lookup("2601-fe0f")
    assert cloud is not None and cloud.name == "cloud" and cloud.hexcode == "2601"
    assert labels.knows("1f3c3-200d-2640") and not labels.knows("1FAE8")
    assert labels.lookup("1FAE8") is None
    regional = labels.lookup(REGIONAL_A)
    assert (regional.category, regional.subcategory) == ("component", "other")
    dark = labels.lookup("1F44B-1F3FF")
    assert (dark.concept, dark.concept_name, dark.skin_tone) == ("1F44B", "waving hand", "dark")


def test_datasource_rows_point_at_package_pngs(fake_manifest, fake_modules):
    for vendor in DATASOURCE_VENDORS:
        rows = fake_manifest[fake_manifest["vendor"] == vendor]
        img_dir = fake_modules / f"emoji-datasource-{vendor}" / "img" / vendor / "64"
        assert (rows["image"] == rows["original"]).all()
        assert all(Path(p).parent == img_dir and Path(p).exists() for p in rows["image"])


def test_sha256_matches_file_bytes(fake_manifest):
    for row in fake_manifest.itertuples():
        assert row.sha256 == hashlib.sha256(Path(row.image).read_bytes()).hexdigest()
    # distinct artwork per vendor and emoji, so the hashes are distinct too
    assert fake_manifest["sha256"].is_unique


def test_ids_unique_and_normalised(fake_manifest):
    assert fake_manifest["id"].is_unique
    for row in fake_manifest.itertuples():
        vendor, hexcode = row.id.split(":", 1)
        assert vendor == row.vendor and hexcode == normalise_hex(hexcode)


def test_rows_carry_emojibase_labels(fake_manifest):
    expected = _expected_by_id_suffix()
    seen = set()
    for row in fake_manifest.to_dict("records"):
        key = row["id"].split(":", 1)[1]
        seen.add(key)
        want = expected[key]
        got = {k: (list(row[k]) if k == "tags" else row[k]) for k in want}
        assert got == want, row["id"]
        assert row["emoji"] == _chars(want["unified"])
    assert seen == set(expected)


def test_label_is_category_subcategory_concept_name(fake_manifest):
    labels = (
        fake_manifest["category"] + "/" + fake_manifest["subcategory"] + "/" + fake_manifest["concept_name"]
    )
    assert (fake_manifest["label"] == labels).all()
    dark = fake_manifest[fake_manifest["id"] == "google:1F44B-1F3FF"].iloc[0]
    assert dark["label"] == "people-body/hand-fingers-open/waving hand"  # the concept's, not the variant's


def test_fe0f_spelling_matches_emojibase(fake_manifest, fake_modules):
    for vendor in DATASOURCE_VENDORS:
        row = fake_manifest.set_index("id").loc[f"{vendor}:2601"]
        assert Path(row["image"]).name == "2601-fe0f.png"
        assert row["unified"] == "2601" and row["name"] == "cloud"


def test_tone_variants_share_base_concept(fake_manifest):
    for vendor in ("google", "twitter", "openmoji"):
        rows = fake_manifest[(fake_manifest["vendor"] == vendor) & (fake_manifest["concept"] == "1F44B")]
        assert sorted(rows["skin_tone"]) == sorted(["none", *_TONE_NAMES])
        assert set(rows["concept_name"]) == {"waving hand"}
        assert rows["name"].is_unique
    pairs = fake_manifest[fake_manifest["concept"] == HOLDING_HANDS]
    assert set(pairs["skin_tone"]) == {"none", "light", "mixed"}
    assert set(pairs["concept_name"]) == {"people holding hands"}
    assert set(pairs["gender"]) == {"person"}


def test_facebook_missing_images_are_skipped(fake_manifest):
    ids = set(fake_manifest["id"])
    for hexcode in ("1F3C3-200D-2640", "1F44B-1F3FF"):
        assert f"google:{hexcode}" in ids and f"twitter:{hexcode}" in ids
        assert f"facebook:{hexcode}" not in ids


def test_concept_integrity(fake_manifest):
    splits = fake_manifest.groupby("concept")["split"].nunique()
    assert len(splits) == len(CONCEPTS)
    assert (splits == 1).all(), splits[splits > 1]
    for row in fake_manifest.itertuples():
        assert row.split == assign_split(row.concept, SEED)


def test_texts_include_name_and_prompt(fake_manifest):
    for row in fake_manifest.itertuples():
        texts = list(row.texts)
        assert texts[:2] == [row.name, f"an emoji of {row.name}"]
        assert "" not in texts
    grin = list(fake_manifest.set_index("id").loc["twitter:1F600", "texts"])
    assert grin == ["grinning face", "an emoji of grinning face", "grinning face", "face, grin"]


def test_rebuild_reuses_renders_and_is_identical(fake_manifest, fake_modules, render_dir):
    pngs = sorted(render_dir.glob("*.png"))
    assert len(pngs) == N_VARIANTS  # the extras SVG was never rendered
    mtimes = [p.stat().st_mtime_ns for p in pngs]
    again = build_manifest(fake_modules, render_dir, seed=SEED)
    pd.testing.assert_frame_equal(
        again.drop(columns=["tags", "texts"]), fake_manifest.drop(columns=["tags", "texts"])
    )
    assert [p.stat().st_mtime_ns for p in pngs] == mtimes


def test_too_many_unmatched_images_raise(tmp_path):
    strays = ["1FAE8", "1FAE9", "1FAEA", "1FAEB", "1FAEC"]  # emoji-datasource has them, emojibase does not
    modules = make_npm_tree(tmp_path, extra_datasource=strays)
    with pytest.raises(DataError, match="no emojibase entry") as err:
        build_manifest(modules, tmp_path / "png", seed=SEED)
    assert "1FAE8" in str(err.value) and "fetch again" in str(err.value)


# ---------------------------------------------------------------------------------------------------
# assign_split
# ---------------------------------------------------------------------------------------------------


def test_assign_split_deterministic():
    concepts = [f"C{i}" for i in range(200)]
    first = [assign_split(c, seed=3) for c in concepts]
    assert first == [assign_split(c, seed=3) for c in concepts]
    assert set(first) <= set(SPLIT_FRACTIONS)


def test_assign_split_depends_on_seed():
    concepts = [f"C{i}" for i in range(200)]
    changed = sum(assign_split(c, seed=0) != assign_split(c, seed=1) for c in concepts)
    assert changed >= 20  # about a third would change for independent assignments


def test_assign_split_fractions():
    splits = pd.Series([assign_split(f"concept-{i:05d}", seed=0) for i in range(20_000)])
    fractions = splits.value_counts(normalize=True)
    for split, target in SPLIT_FRACTIONS.items():
        assert abs(fractions.get(split, 0.0) - target) <= 0.015, (split, fractions.to_dict())


# ---------------------------------------------------------------------------------------------------
# install_packages
# ---------------------------------------------------------------------------------------------------


def _fake_install(target: Path, versions: dict[str, str]) -> None:
    for name, version in versions.items():
        _write_json(target / "node_modules" / name / "package.json", {"name": name, "version": version})


def test_install_reuses_pinned_packages(tmp_path, monkeypatch):
    _fake_install(tmp_path, PACKAGES)

    def no_npm(*args, **kwargs):
        raise AssertionError("npm must not run when the pinned packages are installed")

    monkeypatch.setattr(emoji.shutil, "which", no_npm)
    monkeypatch.setattr(emoji.subprocess, "run", no_npm)
    assert install_packages(tmp_path) == tmp_path / "node_modules"


@pytest.mark.parametrize("installed", ["nothing", "stale"])
def test_install_without_npm_raises(tmp_path, monkeypatch, installed):
    if installed == "stale":  # one package at another version than the pin
        _fake_install(tmp_path, {**PACKAGES, "openmoji": "15.0.0"})
    monkeypatch.setattr(emoji.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="npm was not found"):
        install_packages(tmp_path)


def _fake_npm(bin_dir: Path, body: str, monkeypatch) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    npm = bin_dir / "npm"
    npm.write_text("#!/bin/sh\n" + body)
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def test_install_npm_failure_reports_registry_and_stderr(tmp_path, monkeypatch):
    body = 'echo "npm ERR! code ENOTFOUND" >&2\necho "npm ERR! ENOTFOUND registry" >&2\nexit 1\n'
    _fake_npm(tmp_path / "bin", body, monkeypatch)
    target = tmp_path / "target"
    with pytest.raises(DataError) as err:
        install_packages(target)
    message = str(err.value)
    assert "registry" in message and "ENOTFOUND registry" in message
    assert "vlmops data fetch emoji" in message
    assert json.loads((target / "package.json").read_text())["dependencies"] == PACKAGES


def test_install_runs_npm_install_in_target(tmp_path, monkeypatch):
    log = tmp_path / "npm.log"
    _fake_npm(tmp_path / "bin", f'pwd > "{log}"\necho "$@" >> "{log}"\nexit 0\n', monkeypatch)
    target = tmp_path / "target"
    assert install_packages(target) == target / "node_modules"
    cwd, args = log.read_text().splitlines()
    assert Path(cwd).resolve() == target.resolve()
    assert args.split()[0] == "install" and "--save-exact" in args.split()


# ---------------------------------------------------------------------------------------------------
# fetch_emoji / load_emoji_manifest under an empty VLMOPS_HOME
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("VLMOPS_HOME", str(home))
    get_settings(fresh=True)
    yield home
    monkeypatch.undo()
    get_settings(fresh=True)


def test_load_without_fetch_says_how_to_fetch(empty_home):
    assert manifest_path().is_relative_to(empty_home)
    with pytest.raises(DataError, match="run `vlmops data fetch emoji`"):
        load_emoji_manifest()


def test_fetch_builds_then_reuses_manifest(empty_home, fake_modules, monkeypatch):
    targets = []

    def fake_install(target):
        targets.append(target)
        return fake_modules

    monkeypatch.setattr(emoji, "install_packages", fake_install)
    path = fetch_emoji(seed=SEED, progress=False)
    assert path == manifest_path() and path.exists()
    assert targets == [emoji_dir() / "npm"]
    assert not list(path.parent.glob("*.tmp"))
    frame = load_emoji_manifest()
    assert frame["vendor"].value_counts().to_dict() == EXPECTED_COUNTS
    assert all(
        Path(p).parent == emoji_dir() / "openmoji-png" for p in frame.query("vendor == 'openmoji'")["image"]
    )

    assert fetch_emoji(seed=SEED, progress=False) == path
    assert len(targets) == 1, "a second fetch must reuse the manifest"
    fetch_emoji(seed=SEED, progress=False, force=True)
    assert len(targets) == 2
    fetch_emoji(seed=SEED + 1, progress=False)
    assert len(targets) == 3, "another split seed must rebuild, not return the old split"
    assert load_emoji_manifest().attrs["seed"] == SEED + 1


def test_vendor_without_images_is_an_error(tmp_path):
    modules = make_npm_tree(tmp_path / "npm")
    shutil.rmtree(modules / "emoji-datasource-twitter" / "img")
    with pytest.raises(DataError, match="no twitter images found"):
        build_manifest(modules, tmp_path / "render", SEED)


# ---------------------------------------------------------------------------------------------------
# The real data set (vlmops data fetch emoji)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_manifest() -> pd.DataFrame:
    path = manifest_path()
    if not path.exists():
        pytest.skip(f"emoji data set not installed at {path}; run `vlmops data fetch emoji`")
    return pd.read_parquet(path)


@pytest.mark.emoji
def test_real_vendor_counts(real_manifest):
    counts = real_manifest["vendor"].value_counts()
    assert counts["google"] == 3786 and counts["twitter"] == 3786
    assert counts["facebook"] == 3645
    assert 3800 <= counts["openmoji"] <= 4200
    assert set(counts.index) == set(emoji.VENDORS)


@pytest.mark.emoji
def test_real_slices(real_manifest):
    assert set(real_manifest["skin_tone"]) == set(SKIN_TONE_VALUES)
    genders = set(real_manifest["gender"])
    assert genders <= set(GENDER_VALUES)
    assert {"man", "woman", "person"} <= genders


@pytest.mark.emoji
def test_real_split_fractions(real_manifest):
    fractions = real_manifest.drop_duplicates("concept")["split"].value_counts(normalize=True)
    for split, target in SPLIT_FRACTIONS.items():
        assert abs(fractions.get(split, 0.0) - target) <= 0.03, (split, fractions.to_dict())


@pytest.mark.emoji
def test_real_concept_integrity(real_manifest):
    splits = real_manifest.groupby("concept")["split"].nunique()
    assert (splits == 1).all(), splits[splits > 1].head()
    assert real_manifest["id"].is_unique
    assert (real_manifest.groupby("concept")["concept_name"].nunique() == 1).all()


@pytest.mark.emoji
def test_real_facebook_licence(real_manifest):
    assert set(real_manifest.loc[real_manifest["vendor"] == "facebook", "licence"]) == {"unclear"}


@pytest.mark.emoji
def test_real_sample_images_exist(real_manifest):
    sample = real_manifest.sample(50, random_state=0)
    for row in sample.itertuples():
        path = Path(row.image)
        assert path.exists(), row.id
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256, row.id
