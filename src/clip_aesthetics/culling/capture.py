"""When a frame was taken: EXIF DateTimeOriginal + SubSecTimeOriginal, else the file's modification time.

Times are seconds on a float axis; only differences between frames matter (bursts are frames seconds
apart). EXIF times are the camera's local wall clock; with an OffsetTimeOriginal tag they are converted to
UTC, without one they are read as if they were UTC. File times are a different clock altogether, so the
grouping only compares two frames' times when both come from the same ``source``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from PIL import Image

EXIF_IFD = 0x8769
DATE_TIME_ORIGINAL = 36867
OFFSET_TIME_ORIGINAL = 36881
SUBSEC_TIME_ORIGINAL = 37521
DATE_TIME = 306  # IFD0 "DateTime": the last resort inside EXIF (some phones write only this)
RAW_HEADER_BYTES = 1 << 19  # TIFF-based RAW files keep their EXIF IFDs near the start


@dataclass(frozen=True)
class CaptureTime:
    """A capture time: ``seconds`` on a shared axis, ``source`` ``exif`` or ``file``, ``text`` for people."""

    seconds: float
    source: str
    text: str


def capture_time(path: str | os.PathLike) -> CaptureTime:
    """The EXIF capture time of ``path`` (read from its header only), or its modification time."""
    try:
        found = exif_time(read_exif(path))
    except Exception:  # a malformed header only costs the EXIF time; the file's own time stays
        found = None
    if found is not None:
        return found
    stamp = os.stat(path).st_mtime_ns / 1e9
    moment = datetime.fromtimestamp(stamp, UTC)
    return CaptureTime(stamp, "file", moment.isoformat(timespec="milliseconds"))


def read_exif(path: str | os.PathLike) -> Image.Exif:
    """The EXIF block of a photo: Pillow's formats (HEIC included) from their header; TIFF-based RAW files
    (NEF, CR2, ARW, DNG, PEF, ...) from their first IFDs; other RAW files (CR3, RAF) from their preview."""
    from ..pipeline.images import is_raw_file  # registers the HEIC opener too

    if not is_raw_file(path):
        with Image.open(path) as opened:
            return opened.getexif()
    with open(path, "rb") as handle:
        head = handle.read(RAW_HEADER_BYTES)
    exif = Image.Exif()
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        exif.load(head)
        if exif.get(DATE_TIME_ORIGINAL) or exif.get_ifd(EXIF_IFD).get(DATE_TIME_ORIGINAL):
            return exif
    import rawpy

    with rawpy.imread(os.fspath(path)) as raw:
        thumb = raw.extract_thumb()
    if thumb.format == rawpy.ThumbFormat.JPEG:
        with Image.open(io.BytesIO(thumb.data)) as preview:
            return preview.getexif()
    return exif


def exif_time(exif: Image.Exif) -> CaptureTime | None:
    """DateTimeOriginal (+ sub-seconds, + offset) from an EXIF block; None when absent or malformed."""
    sub = exif.get_ifd(EXIF_IFD) if exif else {}
    # DNG writers may put DateTimeOriginal in IFD0 itself
    text = sub.get(DATE_TIME_ORIGINAL) or exif.get(DATE_TIME_ORIGINAL) or exif.get(DATE_TIME)
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.strptime(text.strip().rstrip("\x00"), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None  # "0000:00:00 00:00:00" and other placeholders cameras write
    subsec = str(sub.get(SUBSEC_TIME_ORIGINAL) or "").strip().rstrip("\x00")
    if subsec.isdigit():
        moment += timedelta(seconds=float(f"0.{subsec}"))
    offset = _offset(sub.get(OFFSET_TIME_ORIGINAL))
    aware = moment.replace(tzinfo=offset or UTC)
    shown = aware if offset else moment  # no offset recorded: show the camera's clock as it was
    return CaptureTime(aware.timestamp(), "exif", shown.isoformat(timespec="milliseconds"))


def _offset(text: object) -> object:
    """``+02:00`` -> a timezone; None when missing or malformed."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text.strip().rstrip("\x00"), "%z").tzinfo
    except ValueError:
        return None
