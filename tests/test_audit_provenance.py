"""Provenance: licence flags, hash mismatches, missing sources, the data-set version."""

from __future__ import annotations

import pandas as pd
import pytest

from vlmops.audit.provenance import licence_flags, provenance_check
from vlmops.data.version import dataset_version


@pytest.mark.parametrize(
    ("licence", "flags"),
    [
        ("CC-BY-4.0", []),
        ("Apache-2.0", []),
        ("MIT", []),
        ("cc0-1.0", []),
        ("CC-BY-SA-4.0", ["share_alike"]),
        ("CC BY-NC 4.0", ["non_commercial"]),
        ("CC-BY-NC-ND-4.0", ["non_commercial", "no_derivatives"]),
        ("CC-BY-NC-SA-4.0", ["share_alike", "non_commercial"]),
        ("GPL-3.0-only", ["share_alike"]),
        ("unclear", ["unknown"]),
        ("", ["unknown"]),
        (None, ["unknown"]),
        (float("nan"), ["unknown"]),
        ("my own terms", ["unknown"]),
    ],
)
def test_licence_flags(licence, flags) -> None:
    assert licence_flags(licence) == flags


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "label": ["x", "x", "y", None],
            "sha256": ["h1", "WRONG", None, "h4"],
            "source": ["npm:pkg", "npm:pkg", None, "web"],
            "licence": ["CC-BY-4.0", "CC-BY-SA-4.0", "unclear", "CC-BY-NC-4.0"],
        }
    )


def test_provenance_findings_and_metrics() -> None:
    result = provenance_check(frame(), ["h1", "h2", "h3", "h4"])
    kinds = sorted((f.record_id, f.kind) for f in result.findings)
    assert kinds == [
        ("b", "hash_mismatch"),
        ("b", "licence_share_alike"),
        ("c", "licence_unknown"),
        ("c", "no_source"),
        ("d", "licence_non_commercial"),
    ]
    assert result.metrics["licence_warnings"] == 3 and result.metrics["hash_mismatches"] == 1
    assert [f.severity for f in result.findings if f.kind == "hash_mismatch"] == ["error"]
    expected = dataset_version(frame().assign(sha256=["h1", "h2", "h3", "h4"]))
    assert result.details["dataset_version"] == expected
    by_source = {(r["source"], r["licence"]): r["n"] for r in result.details["by_source"]}
    assert by_source[("npm:pkg", "CC-BY-4.0")] == 1 and by_source[("(none)", "unclear")] == 1


def test_dataset_version_tracks_content_not_order() -> None:
    hashes = ["h1", "h2", "h3", "h4"]
    base = provenance_check(frame(), hashes).details["dataset_version"]
    shuffled = frame().iloc[[2, 0, 3, 1]].reset_index(drop=True)
    assert provenance_check(shuffled, [hashes[i] for i in (2, 0, 3, 1)]).details["dataset_version"] == base
    assert provenance_check(frame(), ["h1", "h2", "h3", "CHANGED"]).details["dataset_version"] != base
