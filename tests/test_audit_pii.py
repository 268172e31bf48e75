"""PII detectors, redaction, EXIF inspection, the pii check and redact_manifest."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, PngImagePlugin

from vlmops.audit.pii import exif_pii, mask, pii_check, redact_text, scan_text
from vlmops.audit.pii_detectors import card_brand, iban_valid, luhn_valid, ssn_valid
from vlmops.audit.pii_names import first_names
from vlmops.audit.redact import OutputExistsError, image_metadata, redact_manifest
from vlmops.data.emoji import manifest_path
from vlmops.data.manifest import load_manifest


def kinds(text: str) -> list[tuple[str, str]]:
    return [(m.kind, m.text) for m in scan_text(text)]


# --- detectors: positives ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("write to john.smith@example.co.uk today", "email", "john.smith@example.co.uk"),
        ("a+tag@mail-server.org", "email", "a+tag@mail-server.org"),
        ("call +44 20 7946 0958 now", "phone", "+44 20 7946 0958"),
        ("+14155552671", "phone", "+14155552671"),
        ("office (555) 123-4567", "phone", "(555) 123-4567"),
        ("cell 555.123.4567", "phone", "555.123.4567"),
        ("tel 020 7946 0958", "phone", "020 7946 0958"),
        ("portable 06 12 34 56 78", "phone", "06 12 34 56 78"),
        ("0049 30 12345678", "phone", "0049 30 12345678"),
        ("visa 4111 1111 1111 1111", "card", "4111 1111 1111 1111"),
        ("mc 5500-0000-0000-0004", "card", "5500-0000-0000-0004"),
        ("amex 378282246310005", "card", "378282246310005"),
        ("pay to GB82WEST12345698765432.", "iban", "GB82WEST12345698765432"),
        ("IBAN GB82 WEST 1234 5698 7654 32", "iban", "GB82 WEST 1234 5698 7654 32"),
        ("DE89370400440532013000", "iban", "DE89370400440532013000"),
        ("from 192.168.1.10 today", "ip", "192.168.1.10"),
        ("host 8.8.8.8.", "ip", "8.8.8.8"),
        ("v6 2001:db8::8a2e:370:7334 here", "ip", "2001:db8::8a2e:370:7334"),
        ("ssn 536-22-1234", "national_id", "536-22-1234"),
        ("NINO AB 12 34 56 C", "national_id", "AB 12 34 56 C"),
        ("Passport no: X1234567", "national_id", "X1234567"),
        ("ID: 98765432", "national_id", "98765432"),
        (
            "see https://api.example.com/v1?token=abcdef123 ok",
            "secret_url",
            "https://api.example.com/v1?token=abcdef123",
        ),
        (
            "https://s3.example.com/f?X-Amz-Signature=deadbeef99",
            "secret_url",
            "https://s3.example.com/f?X-Amz-Signature=deadbeef99",
        ),
        ("ftp://user:hunter2@files.example.com/x", "secret_url", "ftp://user:hunter2@files.example.com/x"),
        (
            "http://x.com/cb#access_token=xyz123&type=bearer",
            "secret_url",
            "http://x.com/cb#access_token=xyz123&type=bearer",
        ),
        ("photo of John Smith on a beach", "name", "John Smith"),
        ("portrait of John F. Kennedy", "name", "John F. Kennedy"),
        ("Dr. Lee and a dog", "name", "Dr. Lee"),
        ("Mr. Smith smiles", "name", "Mr. Smith"),
        ("Priya Raman at work", "name", "Priya Raman"),
    ],
)
def test_detects(text: str, kind: str, value: str) -> None:
    assert (kind, value) in kinds(text)


# --- detectors: negatives ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "born in 1987",
        "on 2024-01-15",
        "on 15.01.2024",
        "on 01/15/2024",
        "from 1990-2020",
        "U+1F600",
        "1F600",
        "1F468-200D-1F469",
        "0023-FE0F-20E3",
        "U+2764 U+FE0F",
        "v1.2.3.4",
        "version 10.0.19041.1",
        "python 3.11.4",
        "1.2.3",
        "999.1.1.1",
        "0.0.0.0",
        "127.0.0.1",
        "12:30:45",
        "::1",
        "12345",
        "100 apples",
        "1 000 000 people",
        "12.345.678",
        "4111 1111 1111 1112",
        "4111111111111112",
        "1234 5678 9012 3456",
        "GB82WEST12345698765433",
        "GB00WEST12345698765432",
        "XX82WEST12345698765432",
        "000-12-3456",
        "666-12-3456",
        "912-12-3456",
        "image id: 1234567",
        "https://example.com/page?q=cats&page=2",
        "http://example.com/",
        "user@localhost",
        "Santa Claus",
        "Mrs. Claus",
        "Mx Claus",
        "man: red hair",
        "woman: blond hair",
        "Statue of Liberty",
        "flag: Saint Kitts & Nevis",
        "flag: Diego Garcia",
        "flag: Svalbard & Jan Mayen",
        "flag: Sierra Leone",
        "John Street",
        "JOHN SMITH",
        "keycap: #",
        "flag: United States",
        "Jack-o-lantern",
    ],
)
def test_does_not_detect(text: str) -> None:
    assert kinds(text) == []


def test_validators() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert card_brand("4111111111111111") == "visa" and card_brand("378282246310005") == "amex"
    assert card_brand("9111111111111111") is None
    assert iban_valid("GB82WEST12345698765432") and iban_valid("GB82 WEST 1234 5698 7654 32")
    assert not iban_valid("GB82WEST12345698765433") and not iban_valid("GB82WEST1234569876543")
    assert ssn_valid("536-22-1234") and not any(map(ssn_valid, ["000-12-3456", "536-00-1234", "536-22-0000"]))
    assert len(first_names()) >= 300 and "John" in first_names() and "Santa" not in first_names()


def test_overlaps_resolve_to_the_most_specific_kind() -> None:
    text = "SSN: 536-22-1234 card 3782 822463 10005 url https://bob:pw1234@x.com/?token=abcd1234 mail a@b.io"
    found = kinds(text)
    assert [k for k, _ in found] == ["national_id", "card", "secret_url", "email"]
    spans = [(m.start, m.end) for m in scan_text(text)]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_several_numbers_in_one_run_are_split() -> None:
    assert kinds("call 555-123-4567 555-987-6543") == [("phone", "555-123-4567"), ("phone", "555-987-6543")]
    two = kinds("+44 20 7946 0958 +1 415 555 2671")
    assert two == [("phone", "+44 20 7946 0958"), ("phone", "+1 415 555 2671")]


def test_redact_text() -> None:
    text = (
        "John Smith (john@example.com, +44 20 7946 0958) paid with 4111 1111 1111 1111 from "
        "GB82WEST12345698765432 at 8.8.8.8, SSN 536-22-1234, see https://x.io/?api_key=s3cr3tkey"
    )
    assert redact_text(text) == (
        "[NAME] ([EMAIL], [PHONE]) paid with [CARD] from [IBAN] at [IP], SSN [NATIONAL_ID], see [SECRET_URL]"
    )
    assert redact_text("Santa Claus on 2024-01-15, v1.2.3") == "Santa Claus on 2024-01-15, v1.2.3"


def test_mask_never_shows_the_whole_secret() -> None:
    assert mask("card", "4111 1111 1111 1111") == "**** **** **** 1111"
    assert mask("iban", "GB82WEST12345698765432").endswith("5432") and "WEST" not in mask(
        "iban", "GB82WEST12345698765432"
    )
    assert mask("email", "john.smith@example.com") == "j***@e***.com"
    assert "hunter2" not in mask("secret_url", "https://u:hunter2@x.com/?token=abcdef")
    assert "abcdef" not in mask("secret_url", "https://x.com/?token=abcdef&q=1")
    assert mask("national_id", "536-22-1234").startswith("***-**-")


# --- image metadata ----------------------------------------------------------------------------------
def write_exif_jpeg(path: Path) -> Path:
    """A JPEG with GPS, a body serial number, Artist, XPAuthor and an ImageDescription holding an email."""
    exif = Image.Exif()
    exif[0x013B] = "Jane Doe"
    exif[0x9C9D] = "Jane Doe".encode("utf-16-le") + b"\0\0"
    exif[0x010E] = "contact jane.doe@example.com"
    exif[0x8769] = {0xA431: "SN-0042-7781"}
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "W", 4: (13.0, 24.0, 0.0)}
    Image.new("RGB", (16, 16), (200, 10, 10)).save(path, exif=exif)
    return path


def write_text_png(path: Path) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "John Smith")
    info.add_text("Comment", "call +44 20 7946 0958")
    Image.new("RGBA", (8, 8), (0, 0, 255, 128)).save(path, pnginfo=info)
    return path


def test_exif_pii_on_a_jpeg(tmp_path: Path) -> None:
    meta = exif_pii(write_exif_jpeg(tmp_path / "a.jpg"))
    assert meta["gps"] == pytest.approx({"lat": 52.52, "lon": -13.4})
    assert meta["serials"] == {"BodySerialNumber": "SN-0042-7781"}
    assert meta["authors"] == {"Artist": "Jane Doe", "XPAuthor": "Jane Doe"}
    assert meta["text_pii"]["ImageDescription"] == [{"kind": "email", "text": "jane.doe@example.com"}]


def test_exif_pii_on_png_text_clean_and_broken_images(tmp_path: Path, png_writer) -> None:
    meta = exif_pii(write_text_png(tmp_path / "t.png"))
    assert meta["authors"] == {"png:Author": "John Smith"}
    assert meta["text_pii"]["png:Comment"][0]["kind"] == "phone"
    assert exif_pii(png_writer(tmp_path / "clean.png", seed=1)) == {}
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert set(exif_pii(tmp_path / "bad.png")) == {"error"}
    assert exif_pii(tmp_path / "missing.png").keys() == {"error"}


# --- the check ---------------------------------------------------------------------------------------
def small_frame(tmp_path: Path, png_writer) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["r0", "r1", "r2", "r3"],
            "image": [
                str(png_writer(tmp_path / "img" / "0.png", seed=0)),
                str(write_exif_jpeg(tmp_path / "img" / "1.jpg")),
                str(write_text_png(tmp_path / "img" / "2.png")),
                str(png_writer(tmp_path / "img" / "3.png", seed=3)),
            ],
            "texts": [
                ["a red apple"],
                ["mail me: bob@example.com", "card 4111 1111 1111 1111"],
                [],
                ["Santa Claus"],
            ],
            "label": ["food/fruit/apple", None, "people/John Smith", "people/fantasy/Santa Claus"],
            "split": ["train"] * 4,
            "note": ["", "from 8.8.8.8", None, "Mrs. Claus"],
            "count": [1, 2, 3, 4],
            "source": ["https://u:pw1234@x.com/?token=abcdef"] * 4,  # provenance columns are not scanned
        }
    )


def test_pii_check(tmp_path: Path, png_writer) -> None:
    result = pii_check(small_frame(tmp_path, png_writer), progress=False)
    by = {(f.record_id, f.kind): f for f in result.findings}
    assert set(by) == {
        ("r1", "email"), ("r1", "card"), ("r1", "ip"), ("r1", "gps"), ("r1", "serial"), ("r1", "author"),
        ("r2", "name"), ("r2", "author"), ("r2", "phone"),
    }  # fmt: skip
    assert by[("r1", "card")].severity == "error" and by[("r1", "gps")].severity == "error"
    assert by[("r1", "email")].severity == "warning"
    assert by[("r1", "email")].evidence["fields"] == ["texts[0]", "exif:ImageDescription"]
    card = by[("r1", "card")].evidence
    assert card["field"] == "texts[1]" and card["snippet"].endswith("1111") and "4111" not in card["snippet"]
    assert by[("r1", "author")].evidence["count"] == 2 and "Jane" not in json.dumps(
        by[("r1", "author")].to_dict()
    )
    assert result.metrics["pii"] == 2 and result.metrics["pii_rate"] == 0.5
    assert (
        result.metrics["pii_card"] == 1
        and result.metrics["pii_name"] == 1
        and result.metrics["pii_iban"] == 0
    )
    json.dumps(result.to_dict())
    texts_only = pii_check(small_frame(tmp_path, png_writer), progress=False, scan_images=False)
    assert {f.kind for f in texts_only.findings} == {"email", "card", "ip", "name"} and texts_only.notes


# --- redact_manifest ---------------------------------------------------------------------------------
def digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_redact_manifest(tmp_path: Path, png_writer) -> None:
    frame = small_frame(tmp_path, png_writer)
    before = {p: digest(p) for p in frame["image"]}
    summary = redact_manifest(frame, tmp_path / "out", progress=False)
    assert {p: digest(p) for p in frame["image"]} == before  # originals untouched
    assert summary["records"] == 4 and summary["images_cleaned"] == 2 and summary["texts_redacted"] == 4
    back = load_manifest(summary["manifest"]).set_index("id")
    assert back.loc["r1", "texts"] == ["mail me: [EMAIL]", "card [CARD]"]
    assert back.loc["r2", "label"] == "people/[NAME]" and back.loc["r1", "note"] == "from [IP]"
    assert back.loc["r3", "texts"] == ["Santa Claus"] and back.loc["r3", "note"] == "Mrs. Claus"
    assert back.loc["r0", "image"] == frame["image"][0]  # clean image keeps its path
    jpeg, png = Path(back.loc["r1", "image"]), Path(back.loc["r2", "image"])
    assert jpeg.parent == tmp_path / "out" / "images" and jpeg.suffix == ".jpg" and png.suffix == ".png"
    assert image_metadata(jpeg) == [] and image_metadata(png) == [] and exif_pii(jpeg) == {}
    with Image.open(jpeg) as im, Image.open(frame["image"][1]) as orig:
        assert im.format == "JPEG" and im.size == orig.size
    with Image.open(png) as im, Image.open(frame["image"][2]) as orig:
        assert im.mode == "RGBA" and im.tobytes() == orig.tobytes()  # lossless: same pixels
    assert {f.kind for f in pii_check(back.reset_index(), progress=False).findings} == set()


def test_redact_manifest_refuses_non_empty_out_dir(tmp_path: Path, png_writer) -> None:
    frame = small_frame(tmp_path, png_writer)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="overwrite=True"):
        redact_manifest(frame, tmp_path / "out", progress=False)
    with pytest.raises(OutputExistsError, match="original images"):
        redact_manifest(frame, tmp_path, progress=False, overwrite=True)
    summary = redact_manifest(frame, tmp_path / "out", progress=False, overwrite=True)
    assert Path(summary["manifest"]).is_file() and (tmp_path / "out" / "keep.txt").is_file()


# --- false positives on real data --------------------------------------------------------------------
@pytest.mark.emoji
@pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")
def test_emoji_names_are_not_pii() -> None:
    from vlmops.data.manifest import resolve_data

    frame = resolve_data("emoji")
    flagged = sum(any(scan_text(t) for t in texts) for texts in frame["texts"])
    assert flagged / len(frame) <= 0.01, flagged
    result = pii_check(frame, progress=False, scan_images=False)
    assert result.metrics["pii_rate"] <= 0.01, [f.evidence for f in result.findings[:10]]
