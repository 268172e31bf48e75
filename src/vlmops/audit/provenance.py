"""Provenance and licences: where every file came from, whether it is the file the manifest says, and
what its licence lets you do.

Every file is hashed (sha256 of its bytes). When the manifest records a sha256 that differs, the file
changed after the manifest was written (error). The data-set version is the Merkle root over the
records' (id, content hash, label), the same hash `vlmops train` and the registry record.

Licence strings are read SPDX-style and case-insensitively: `-SA` / GPL-family terms are share-alike
(derived data must carry the same licence), `-NC` non-commercial, `-ND` no-derivatives (training on the
data may count as a derivative), and empty / `unknown` / `unclear` / `proprietary` / unrecognised are
unknown: nobody has established that you may use the file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

from vlmops.audit.findings import CheckResult, Finding
from vlmops.data.version import dataset_version

PERMISSIVE = re.compile(
    r"^(cc0(-1\.0)?|cc-by(-\d\.\d)?|mit|apache-2\.0|bsd-[23]-clause|isc|unlicense|public-domain|pddl|odc-by)$"
)
UNKNOWN = {"", "unknown", "unclear", "none", "proprietary", "all-rights-reserved", "nan", "other"}


def licence_flags(licence: object) -> list[str]:
    """Warnings for one licence string: share_alike, non_commercial, no_derivatives or unknown."""
    text = "" if licence is None or (isinstance(licence, float) and licence != licence) else str(licence)
    key = text.strip().lower().replace(" ", "-").replace("_", "-")
    if key in UNKNOWN:
        return ["unknown"]
    flags = []
    parts = set(re.split(r"[-+.]", key))
    if "sa" in parts or key.startswith(("gpl", "agpl", "lgpl", "odbl", "cc-by-sa")):
        flags.append("share_alike")
    if "nc" in parts:
        flags.append("non_commercial")
    if "nd" in parts:
        flags.append("no_derivatives")
    if not flags and not PERMISSIVE.match(key):
        flags.append("unknown")
    return flags


KIND_SEVERITY = {
    "share_alike": "warning",
    "non_commercial": "warning",
    "no_derivatives": "warning",
    "unknown": "warning",
}
WHAT = {
    "share_alike": "share-alike: data or models derived from it may have to carry the same licence",
    "non_commercial": "non-commercial: not usable in a commercial product",
    "no_derivatives": "no-derivatives: training on it may count as making a derivative",
    "unknown": "unknown licence: nobody has established that you may use this file",
}


def provenance_check(frame: pd.DataFrame, content_sha256: Sequence[str]) -> CheckResult:
    """Hash mismatches, missing sources and licence warnings per record, plus per-source summaries."""
    result = CheckResult("provenance")
    recorded = frame["sha256"] if "sha256" in frame.columns else pd.Series([None] * len(frame))
    licences = frame["licence"] if "licence" in frame.columns else pd.Series([None] * len(frame))
    sources = frame["source"] if "source" in frame.columns else pd.Series([None] * len(frame))
    counts = {k: 0 for k in ("hash_mismatch", "no_source", *KIND_SEVERITY)}
    warned: set[str] = set()
    for rid, actual, claimed, licence, source in zip(
        frame["id"], content_sha256, recorded, licences, sources, strict=True
    ):
        if isinstance(claimed, str) and claimed and claimed != actual:
            counts["hash_mismatch"] += 1
            result.findings.append(
                Finding(
                    rid,
                    "provenance",
                    "hash_mismatch",
                    "error",
                    "file content differs from the sha256 in the manifest: it changed after the "
                    "manifest was written",
                    {"manifest_sha256": claimed, "file_sha256": actual},
                )
            )
        if not isinstance(source, str) or not source.strip():
            counts["no_source"] += 1
            result.findings.append(
                Finding(rid, "provenance", "no_source", "warning", "no source recorded for this file")
            )
        for flag in licence_flags(licence):
            counts[flag] += 1
            warned.add(rid)
            result.findings.append(
                Finding(
                    rid,
                    "provenance",
                    f"licence_{flag}",
                    KIND_SEVERITY[flag],
                    WHAT[flag],
                    {"licence": None if licence is None else str(licence)},
                )
            )
    versioned = frame.assign(sha256=list(content_sha256))
    result.details = {
        "dataset_version": dataset_version(versioned),
        "by_source": _by_source(frame, sources, licences),
    }
    result.metrics = {
        "licence_warnings": len(warned),
        "unknown_licence": counts["unknown"],
        "share_alike": counts["share_alike"],
        "non_commercial": counts["non_commercial"],
        "no_derivatives": counts["no_derivatives"],
        "hash_mismatches": counts["hash_mismatch"],
        "no_source": counts["no_source"],
    }
    return result


def _by_source(frame: pd.DataFrame, sources: pd.Series, licences: pd.Series) -> list[dict]:
    table = pd.DataFrame(
        {
            "source": sources.fillna("(none)").astype(str).to_numpy(),
            "licence": licences.fillna("(none)").astype(str).to_numpy(),
        }
    )
    rows = []
    for (source, licence), group in table.groupby(["source", "licence"], sort=True):
        rows.append({"source": source, "licence": licence, "n": len(group), "flags": licence_flags(licence)})
    return rows
