"""Real camera files for tests: DNGs made with pidng from a photo (a Bayer mosaic LibRaw demosaics), HEICs
from pillow-heif. Neither is a mock: LibRaw and libheif read them as they read a camera's or a phone's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WHITE = 4095  # 12-bit sensor data


def make_dng(image: Image.Image, path: Path, *, orientation: int = 1, taken: str | None = None) -> Path:
    """A DNG of ``image``: linear (gamma 2.2 undone) 12-bit RGGB mosaic, identity colour matrix, EXIF
    ``Orientation`` and, when given, ``DateTimeOriginal`` ("YYYY:MM:DD HH:MM:SS")."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, PhotometricInterpretation

    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    height, width = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    linear = rgb[:height, :width] ** 2.2
    mosaic = np.empty((height, width))
    mosaic[0::2, 0::2] = linear[0::2, 0::2, 0]  # R G
    mosaic[0::2, 1::2] = linear[0::2, 1::2, 1]  # G B
    mosaic[1::2, 0::2] = linear[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = linear[1::2, 1::2, 2]
    tags = DNGTags()
    identity = [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]
    for tag, value in [
        (Tag.ImageWidth, width),
        (Tag.ImageLength, height),
        (Tag.TileWidth, width),
        (Tag.TileLength, height),
        (Tag.Orientation, orientation),
        (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
        (Tag.SamplesPerPixel, 1),
        (Tag.BitsPerSample, 12),
        (Tag.CFARepeatPatternDim, [2, 2]),
        (Tag.CFAPattern, CFAPattern.RGGB),
        (Tag.BlackLevel, 0),
        (Tag.WhiteLevel, WHITE),
        (Tag.ColorMatrix1, identity),
        (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
        (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]),
        (Tag.Make, "clip-aesthetics"),
        (Tag.Model, "test DNG"),
        (Tag.DNGVersion, DNGVersion.V1_4),
        (Tag.DNGBackwardVersion, DNGVersion.V1_2),
    ]:
        tags.set(tag, value)
    if taken:
        tags.set(Tag.DateTimeOriginal, taken)
    writer = RAW2DNG()
    writer.options(tags, path=str(path.parent), compress=False)
    written = Path(writer.convert((mosaic * WHITE).round().astype(np.uint16), filename=path.stem))
    if written != path:  # pidng always names the file .dng
        written.rename(path)
    return path


def make_heic(image: Image.Image, path: Path, *, orientation: int = 1, taken: str | None = None) -> Path:
    """A HEIC (HEVC, through pillow-heif) of ``image`` with EXIF orientation and capture time."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    exif = Image.Exif()
    exif[0x0112] = orientation
    if taken:
        exif.get_ifd(0x8769)[36867] = taken
    image.convert("RGB").save(path, format="HEIF", quality=90, exif=exif.tobytes())
    return path


def make_dng_with_preview(image: Image.Image, preview: Image.Image, path: Path) -> Path:
    """A DNG as cameras and converters write them: IFD0 the rendered preview (8-bit RGB, NewSubfileType 1),
    a SubIFD the 12-bit RGGB sensor data (written with tifffile; pidng writes no preview)."""
    import tifffile

    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    height, width = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    linear = rgb[:height, :width] ** 2.2
    mosaic = np.empty((height, width))
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = linear[0::2, 0::2, 0], linear[0::2, 1::2, 1]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = linear[1::2, 0::2, 1], linear[1::2, 1::2, 2]
    identity = (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1)
    dng = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 2, 0, 0), True),  # DNGBackwardVersion
        (271, "s", 0, "clip-aesthetics", True),
        (272, "s", 0, "test DNG with preview", True),
        (50708, "s", 0, "clip-aesthetics test", True),  # UniqueCameraModel
        (50721, "2i", 9, identity, True),  # ColorMatrix1
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
        (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
    ]
    sensor = [
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern RGGB
        (50717, "H", 1, WHITE, True),  # WhiteLevel
        (50714, "H", 1, 0, True),  # BlackLevel
    ]
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            np.asarray(preview.convert("RGB")), photometric="rgb", subfiletype=1, subifds=1, extratags=dng
        )
        tif.write(
            (mosaic * WHITE).round().astype(np.uint16), photometric=32803, subfiletype=0, extratags=sensor
        )
    return path
