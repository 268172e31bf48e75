"""Find unreadable images before long work starts: every file's header checked, all problems at once.

`vlmops embed` and `vlmops eval` run `screen_images` on the loaded data first, so a corrupt or
mislabelled file is reported up front with its row number (not minutes into a run, one at a time).
With ``skip=True`` the unreadable rows are left out and listed, so the caller can record them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
from PIL import Image, UnidentifiedImageError

from vlmops.data.images import MAX_PIXELS
from vlmops.errors import DataError

MAX_LISTED = 20


@dataclass(frozen=True)
class Unreadable:
    """A row whose image cannot be used: 1-based row of the loaded data, its id, file and why."""

    row: int
    id: str
    image: str
    reason: str

    def to_dict(self) -> dict:
        """Plain dict for JSON output."""
        return asdict(self)


class UnreadableImagesError(DataError):
    """Some images of a data set cannot be read; `.unreadable` lists every one."""

    def __init__(self, source: str, unreadable: list[Unreadable], total: int) -> None:
        self.unreadable = unreadable
        shown = "; ".join(f"row {u.row} ({u.image}): {u.reason}" for u in unreadable[:MAX_LISTED])
        more = len(unreadable) - MAX_LISTED
        tail = f"; ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{source}: {len(unreadable)} of {total} images cannot be read: {shown}{tail}. "
            "Fix or remove them, or pass --skip-unreadable to proceed without them"
        )


def probe_image(path: str) -> str | None:
    """Why the image file at `path` cannot be used, or None: header, pixel count, then the data.

    Cheaper than decoding: PNG (and other formats Pillow can verify) are checked chunk by chunk
    without unpacking pixels, JPEG is decoded at 1/8 scale (its DCT draft mode reads every byte of
    the entropy-coded data, so a truncated file fails). A format whose damage neither check sees can
    still fail later, when it is decoded in full.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height == 0:
                return f"the image has no pixels ({width}x{height})"
            if width * height > MAX_PIXELS:
                return f"{width}x{height} pixels is over the limit of {MAX_PIXELS}"
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
            else:
                image.verify()
    except FileNotFoundError:
        return "file not found"
    except UnidentifiedImageError:
        return "not an image file Pillow can read (unknown format or corrupt header)"
    except Exception as exc:  # Pillow's plugins raise many types for damaged files: all mean unreadable
        return f"corrupt image file ({type(exc).__name__}: {exc})"
    return None


def find_unreadable(frame: pd.DataFrame) -> list[Unreadable]:
    """Every row of `frame` whose image fails `probe_image` (each distinct file is checked once)."""
    reasons: dict[str, str | None] = {}
    found = []
    for position, (record_id, path) in enumerate(zip(frame["id"], frame["image"], strict=True)):
        if path not in reasons:
            reasons[path] = probe_image(path)
        if reasons[path] is not None:
            found.append(Unreadable(position + 1, str(record_id), str(path), reasons[path]))
    return found


def screen_images(
    frame: pd.DataFrame, source: str, skip: bool = False
) -> tuple[pd.DataFrame, list[Unreadable]]:
    """(`frame` without unreadable rows, those rows); raises UnreadableImagesError unless `skip`.

    Rows are numbered 1.. in `frame`'s order, which for a loaded manifest is its record order.
    """
    unreadable = find_unreadable(frame)
    if not unreadable:
        return frame, []
    if not skip:
        raise UnreadableImagesError(source, unreadable, len(frame))
    if len(unreadable) == len(frame):
        raise DataError(f"{source}: none of its {len(frame)} images can be read; nothing is left to use")
    keep = pd.Series(True, index=frame.index)
    keep.iloc[[u.row - 1 for u in unreadable]] = False
    return frame[keep.to_numpy()].reset_index(drop=True), unreadable


def skipped_summary(unreadable: list[Unreadable]) -> dict:
    """What a report records about skipped rows: how many, and which (row, id, image, reason)."""
    return {"n": len(unreadable), "rows": [u.to_dict() for u in unreadable]}
