"""Image quality: unreadable, broken or degenerate files, and images that are outliers of their data set.

`image_stats` measures each file once (never raising); `quality_check` turns the measurements into
findings. File problems (error): ``unreadable``, ``zero_byte``, ``truncated``, ``decompression_bomb``
(width x height from the header over `vlmops.data.images.MAX_PIXELS`, caught before decoding).
Warnings: ``wrong_extension`` (suffix does not match the real format; jpg/jpeg, tif/tiff equal).
Info: ``grayscale`` (all channels equal, noted only when such images are a minority, below
``grayscale_max_share`` of the readable images, i.e. in a colour data set). It is a fact about the
image, not a defect: black-and-white designs (line art, silhouettes) are grayscale by intent, and the
pixels cannot tell them from a photo that lost its colour, so it is listed for review at info level.

Continuous checks combine an absolute limit with the data set's own distribution (robust z, see
`vlmops.audit.stats.robust_z`). A record is flagged when it is past the *hard* absolute limit, or past
the *soft* absolute limit AND a robust-z outlier (|z| > ``z``, default 3.5) in the bad direction:

=================  ==========================  ==========  ==========  =================
kind               value                       soft        hard        z direction
=================  ==========================  ==========  ==========  =================
tiny               shorter side (px)           < 32        < 8         low (log side)
huge               pixels                      > 4096²     > 40 M      high (log pixels)
odd_aspect         longer / shorter side       > 3         > 10        high (log aspect)
too_dark           mean luma (0-255)           < 40        < 8         low
too_bright         mean luma (0-255)           > 235       > 254.5     high
blurry             var of 3x3 Laplacian (luma) < 50 (*)    < 1         low (log1p)
low_information    luma entropy (bits)         < 2.5       < 0.5       low
=================  ==========================  ==========  ==========  =================

(*) Little detail is not blur: a flat drawing with a few crisp outlines has a low Laplacian variance
too. The soft rule for ``blurry`` therefore also needs soft edges: ``edge_sharpness`` (mean squared
Laplacian over mean squared gradient, 1 / (2 sigma^2) for a step edge blurred by a Gaussian of sigma px,
whatever the edge's contrast or how much of the image is edges) below ``blurry_edge`` (0.5, i.e.
sigma >= 1 px on the stats copy). Clean emoji and generated shapes measure 1.5 or more; the same images
blurred with sigma 1.5 px measure at most 0.72.

The soft-and-relative rule is what keeps emoji (mostly white background) from all being "too bright":
567 of the 15,170 emoji (`resolve_data("emoji")`) are brighter than 235, but their median luma is 200
with MAD 18, so z > 3.5 would need luma > 296 and none is flagged; the hard limits still catch blank,
black or flat images even where they are common. Measured on the emoji this lists 204 records, none
with a file problem: 193 grayscale at info level (black-and-white designs: OpenMoji clocks, arrows and
media buttons, Google's family silhouettes) and 11 low_information warnings (flat one-colour squares
under 0.5 bits). The 22 blurry ones before the edge test (faint low-contrast drawings, not out of
focus: Twitter's white shapes, light-skin-tone hands) have crisp edges and are no longer flagged.
Sharpness and histogram statistics are computed on a copy whose longer side is at most
``STATS_MAX_SIDE``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from vlmops.audit.decode import Decoded, decode, decode_error_kind
from vlmops.audit.findings import CheckResult, Finding
from vlmops.audit.stats import robust_z
from vlmops.models.preprocess import to_rgb

STATS_MAX_SIDE = 1024
ERROR_KINDS = ("unreadable", "zero_byte", "truncated", "decompression_bomb")
CONTINUOUS_KINDS = ("tiny", "huge", "odd_aspect", "too_dark", "too_bright", "blurry", "low_information")
INFO_KINDS = ("grayscale",)  # true of the image, not a defect: listed for review
KINDS = (*ERROR_KINDS, "wrong_extension", *CONTINUOUS_KINDS, *INFO_KINDS)
DEFAULT_THRESHOLDS: dict[str, float] = {
    "z": 3.5,
    "tiny_side": 32, "tiny_side_hard": 8,
    "huge_pixels": 4096 * 4096, "huge_pixels_hard": 40_000_000,
    "odd_aspect": 3.0, "odd_aspect_hard": 10.0,
    "too_dark": 40.0, "too_dark_hard": 8.0,
    "too_bright": 235.0, "too_bright_hard": 254.5,
    "blurry": 50.0, "blurry_hard": 1.0, "blurry_edge": 0.5,
    "low_information": 2.5, "low_information_hard": 0.5,
    "grayscale_max_share": 0.2,
}  # fmt: skip
# kind -> (stats column, True if low values are bad, transform applied before robust z)
_CONTINUOUS = {
    "tiny": ("min_side", True, np.log),
    "huge": ("pixels", False, np.log),
    "odd_aspect": ("aspect", False, np.log),
    "too_dark": ("brightness", True, None),
    "too_bright": ("brightness", False, None),
    "blurry": ("laplacian_var", True, np.log1p),
    "low_information": ("entropy", True, None),
}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"
_SAME_FORMAT = {"MPO": "JPEG"}  # camera JPEGs that Pillow reports as multi-picture objects


def _extension_ok(path: str, fmt: str | None) -> bool | None:
    """True when the file suffix is one Pillow registers for the real format (jpg = jpeg, tif = tiff)."""
    if not fmt:
        return None
    expected = Image.registered_extensions().get(Path(path).suffix.lower())
    return expected is not None and _SAME_FORMAT.get(expected, expected) == _SAME_FORMAT.get(fmt, fmt)


def _edge_sharpness(luma: np.ndarray, laplacian: np.ndarray) -> float:
    """Mean squared Laplacian over mean squared gradient: about 1 / (2 sigma^2) for edges blurred by sigma px.

    Independent of how much of the image is edges and of their contrast, so a flat drawing with a few
    crisp outlines scores as sharp as a busy one; NaN for an image with no gradient at all.
    """
    if min(luma.shape) < 2:  # a one-pixel line has no gradient along its short side
        return float("nan")
    gy, gx = np.gradient(luma)
    energy = float((gx * gx + gy * gy).mean())
    return float((laplacian * laplacian).mean() / energy) if energy > 1e-6 else float("nan")


def _pixel_stats(image: Image.Image) -> dict:
    """Grayscale flag, brightness, Laplacian variance and entropy of an RGB-on-white copy."""
    rgb = to_rgb(image)
    if max(rgb.size) > STATS_MAX_SIDE:
        rgb = rgb.copy()  # to_rgb returns an RGB image itself; thumbnail works in place
        rgb.thumbnail((STATS_MAX_SIDE, STATS_MAX_SIDE))
    arr = np.asarray(rgb, dtype=np.uint8)
    luma = arr.astype(np.float32) @ _LUMA
    laplacian = ndimage.laplace(luma, mode="reflect")
    hist = np.bincount(np.clip(np.rint(luma), 0, 255).astype(np.intp).ravel(), minlength=256)
    p = hist[hist > 0] / luma.size
    return {
        "grayscale": bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()),
        "brightness": float(luma.mean()),
        "laplacian_var": float(laplacian.var()),
        "edge_sharpness": _edge_sharpness(luma, laplacian),
        "entropy": float(max(0.0, -(p * np.log2(p)).sum())),
    }


def quality_row(decoded: Decoded) -> dict:
    """Stats of one decoded file; problems become an `error` kind and `error_message`, never an exception."""
    row: dict = {"path": decoded.path, "bytes": decoded.bytes, "readable": False}
    row |= {"error": decoded.error, "error_message": decoded.error_message, "format": decoded.format}
    row |= {"extension_ok": _extension_ok(decoded.path, decoded.format)}
    row |= {"width": decoded.width, "height": decoded.height}
    if decoded.image is None:
        return row
    try:
        row |= _pixel_stats(decoded.rgb)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return row | {"error": decode_error_kind(exc), "error_message": f"cannot decode: {exc}"}
    return row | {"readable": True}


def _one(path: str) -> dict:
    """Stats of one file (read and decoded here); never raises."""
    return quality_row(decode(path))


def stats_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """The `image_stats` table from `quality_row` dicts, with the derived geometry columns."""
    columns = ["path", "bytes", "readable", "error", "error_message", "format", "extension_ok"]
    columns += ["width", "height", "grayscale", "brightness", "laplacian_var", "edge_sharpness", "entropy"]
    out = pd.DataFrame.from_records(list(rows), columns=columns)
    width, height = out["width"].astype(float), out["height"].astype(float)
    out.insert(9, "pixels", width * height)
    out.insert(10, "aspect", np.maximum(width, height) / np.minimum(width, height))
    out["min_side"] = np.minimum(width, height)
    return out


def image_stats(paths: Iterable[str | Path], progress: bool = True) -> pd.DataFrame:
    """One row per path: size, readability, real format, geometry and pixel statistics.

    An audit computes the same table in its shared image scan (`vlmops.audit.scan`) and passes it to
    `quality_check` as `stats`; this reads the files itself.
    """
    from vlmops.progress import progress_bar

    paths = [str(p) for p in paths]
    rows = []
    with progress_bar(progress) as bar:
        task = bar.add_task("image stats", total=len(paths))
        for path in paths:
            rows.append(_one(path))
            bar.advance(task)
    return stats_frame(rows)


def _flags(values: np.ndarray, low_bad: bool, soft: float, hard: float, z_limit: float, transform) -> tuple:
    """Boolean flags, robust z and which rule fired ('hard' or 'soft+z') for one continuous check."""
    ok = np.isfinite(values)
    z = np.full(values.shape, np.nan)
    if ok.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            z[ok] = robust_z(transform(values[ok]) if transform else values[ok])
    sign = -1.0 if low_bad else 1.0
    past_soft = ok & (sign * values > sign * soft)
    past_hard = ok & (sign * values > sign * hard)
    outlier = ok & (sign * z > z_limit)
    return past_hard | (past_soft & outlier), z, np.where(past_hard, "hard", "soft+z")


def _describe(column: str, values, z, rule, low_bad: bool, soft: float, hard: float):
    """Message maker for one continuous check."""
    word = "below" if low_bad else "above"

    def message(i: int) -> str:
        if rule[i] == "hard":
            return f"{column} {values[i]:.4g} {word} the hard limit {hard:g}"
        return (
            f"{column} {values[i]:.4g} {word} {soft:g} and an outlier of this data set (robust z {z[i]:.1f})"
        )

    return message


def quality_check(
    frame: pd.DataFrame, stats: pd.DataFrame | None = None, progress: bool = True, **thresholds: float
) -> CheckResult:
    """Findings for broken, mislabelled-format and degenerate images; thresholds as in the module doc."""
    unknown = set(thresholds) - set(DEFAULT_THRESHOLDS)
    if unknown:
        raise ValueError(f"unknown quality thresholds {sorted(unknown)}; known: {sorted(DEFAULT_THRESHOLDS)}")
    limits = DEFAULT_THRESHOLDS | thresholds
    if stats is None:
        stats = image_stats(frame["image"], progress=progress)
    if len(stats) != len(frame):
        raise ValueError(f"stats has {len(stats)} rows but the frame has {len(frame)}; compute them together")
    missing = {"edge_sharpness", "laplacian_var", "entropy", "grayscale"} - set(stats.columns)
    if missing:
        raise ValueError(f"stats lacks columns {sorted(missing)}; compute them with image_stats()")
    stats = stats.reset_index(drop=True)
    ids = frame["id"].astype(str).tolist()
    flagged: dict[str, np.ndarray] = {}
    findings: list[Finding] = []

    def add(kind: str, mask: np.ndarray, message, evidence) -> None:
        flagged[kind] = mask
        severity = "error" if kind in ERROR_KINDS else "info" if kind in INFO_KINDS else "warning"
        for i in np.flatnonzero(mask):
            findings.append(Finding(ids[i], "quality", kind, severity, message(i), evidence(i)))

    errors = stats["error"].to_numpy(dtype=object)
    for kind in ERROR_KINDS:
        add(
            kind,
            errors == kind,
            lambda i: f"{stats.at[i, 'error_message']}",
            lambda i: {"path": stats.at[i, "path"]},
        )
    readable = stats["readable"].to_numpy(dtype=bool)
    wrong_ext = stats["extension_ok"].to_numpy(dtype=object) == False  # noqa: E712 (None = not applicable)
    add(
        "wrong_extension",
        wrong_ext,
        lambda i: (
            f"file suffix {Path(stats.at[i, 'path']).suffix!r} but the content is {stats.at[i, 'format']}"
        ),
        lambda i: {"format": stats.at[i, "format"], "suffix": Path(stats.at[i, "path"]).suffix},
    )
    for kind, (column, low_bad, transform) in _CONTINUOUS.items():
        key = {"tiny": "tiny_side", "huge": "huge_pixels"}.get(kind, kind)
        values = np.where(readable, stats[column].to_numpy(dtype=float), np.nan)
        mask, z, rule = _flags(values, low_bad, limits[key], limits[f"{key}_hard"], limits["z"], transform)
        if kind == "blurry":  # little detail is blur only where the edges there are soft
            edges = np.where(readable, stats["edge_sharpness"].to_numpy(dtype=float), np.nan)
            mask = mask & ((rule == "hard") | (edges < limits["blurry_edge"]))
        add(
            kind,
            mask,
            _describe(column, values, z, rule, low_bad, limits[key], limits[f"{key}_hard"]),
            (
                lambda i, c=column, v=values, z=z, r=rule: {
                    c: float(v[i]),
                    "robust_z": float(z[i]),
                    "rule": r[i],
                }
            ),
        )
    gray = readable & (stats["grayscale"].to_numpy(dtype=object) == True)  # noqa: E712
    share = gray.sum() / max(readable.sum(), 1)
    add(
        "grayscale",
        gray if share < limits["grayscale_max_share"] else np.zeros_like(gray),
        lambda i: f"grayscale image in a colour data set ({share:.1%} of images are grayscale)",
        lambda i: {"grayscale_share": float(share)},
    )
    any_issue = np.zeros(len(frame), dtype=bool)
    for kind, mask in flagged.items():
        if kind not in INFO_KINDS:  # issues are warnings and errors; info is listed, not counted
            any_issue |= mask
    n = len(frame)
    metrics: dict[str, float | int | None] = {
        "quality_issues": int(any_issue.sum()),
        "quality_issue_rate": float(any_issue.sum() / n) if n else None,
    }
    metrics |= {f"quality_{kind}": int(flagged[kind].sum()) for kind in KINDS}
    notes = []
    if share >= limits["grayscale_max_share"]:
        notes.append(f"{share:.0%} of images are grayscale: treated as a grayscale data set, not flagged")
    details = {"thresholds": limits, "n_records": n, "n_readable": int(readable.sum())}
    return CheckResult("quality", findings=findings, metrics=metrics, details=details, notes=notes)
