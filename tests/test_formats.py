"""Camera and phone formats everywhere images are read: RAW (LibRaw via rawpy), HEIC (pillow-heif), AVIF,
16-bit TIFF; orientation and capture time from each; `cull` on a folder of all of them with a RAW+JPEG pair.

The files are real: DNGs written by pidng (a Bayer mosaic LibRaw demosaics), HEICs by libheif."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.culling.capture import capture_time
from clip_aesthetics.culling.xmp import Labels, read_labels, write_labels
from clip_aesthetics.pipeline.images import find_images, open_image
from raw_data import make_dng, make_dng_with_preview, make_heic
from test_cli_score import PROMPT_ARGS
from test_culling import detailed

SKIMAGE = pytest.importorskip("skimage.data", reason="scikit-image ships the photographs")


def astronaut(size=(300, 200)) -> Image.Image:
    return Image.fromarray(SKIMAGE.astronaut()).resize(size)


def mean_error(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean())


def test_a_dng_is_decoded_by_libraw_upright_with_its_capture_time(tmp_path: Path) -> None:
    original = astronaut()
    path = make_dng(original, tmp_path / "IMG_0001.DNG", orientation=6, taken="2024:05:01 10:00:03")
    image = open_image(path)  # no preview in this file: LibRaw's demosaic
    assert image.size == (200, 300)  # orientation 6: rotated 90° clockwise to stand upright
    upright = original.transpose(Image.Transpose.ROTATE_270)
    assert mean_error(image, upright) < mean_error(image, upright.transpose(Image.Transpose.FLIP_TOP_BOTTOM))
    assert capture_time(path).text == "2024-05-01T10:00:03.000" and capture_time(path).source == "exif"
    assert open_image(path, draft_size=90).size == (100, 150)  # half-size decode when that covers the need
    assert find_images([tmp_path]) == [path]


def test_heic_and_avif_are_read_upright_with_capture_time(tmp_path: Path) -> None:
    original = astronaut()
    heic = make_heic(original, tmp_path / "phone.HEIC", orientation=6, taken="2024:05:01 11:00:00")
    image = open_image(heic)
    assert image.size == (200, 300)
    assert mean_error(image, original.transpose(Image.Transpose.ROTATE_270)) < 12  # lossy HEVC
    assert capture_time(heic).text == "2024-05-01T11:00:00.000"
    original.save(tmp_path / "b.avif", quality=90)
    assert mean_error(open_image(tmp_path / "b.avif"), original) < 12
    assert find_images([tmp_path]) == [tmp_path / "b.avif", heic]


def test_16_bit_tiff(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    values = np.random.default_rng(0).integers(0, 65536, (40, 60, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", values, photometric="rgb")
    tifffile.imwrite(tmp_path / "grey.tif", values[..., 0])
    expected = values >> 8  # the high byte of each 16-bit sample
    assert np.abs(np.asarray(open_image(tmp_path / "a.tif")).astype(int) - expected).max() <= 1
    grey = np.asarray(open_image(tmp_path / "grey.tif"))[..., 0].astype(int)
    assert np.abs(grey - np.round(values[..., 0] / 65535 * 255)).max() <= 1


def test_a_corrupt_raw_file_is_a_one_line_error(tmp_path: Path) -> None:
    from clip_aesthetics.pipeline.images import ImageLoadError

    (tmp_path / "bad.NEF").write_bytes(b"II*\x00" + b"\x00" * 200)
    with pytest.raises(ImageLoadError) as caught:
        open_image(tmp_path / "bad.NEF")
    assert "\n" not in str(caught.value)


def test_cull_reads_raw_heic_and_pairs(tmp_path: Path, tiny_clip_spec: str) -> None:
    """The issue's folder: a DNG, a HEIC, a RAW+JPEG pair, two JPEGs: every photo scored, the pair once."""
    folder = tmp_path / "shoot"
    folder.mkdir()
    make_dng(detailed(1).resize((300, 200)), folder / "c.dng", taken="2024:05:01 10:00:00")
    make_heic(detailed(2).resize((300, 200)), folder / "d.HEIC", taken="2024:05:01 10:01:00")
    make_dng(detailed(3).resize((300, 200)), folder / "a.dng", taken="2024:05:01 10:02:00")
    detailed(3).resize((300, 200)).save(folder / "a.JPG", quality=90)  # the camera's JPEG of a.dng
    write_labels(folder / "a.dng", Labels(2, None))  # the photographer's
    for name, seed in (("e.jpg", 4), ("f.jpg", 5)):
        detailed(seed).resize((300, 200)).save(folder / name, quality=90)
    out = tmp_path / "groups.csv"
    args = ["cull", str(folder), "-o", str(out), "--model", tiny_clip_spec, *PROMPT_ARGS, "--workers", "0"]
    result = CliRunner().invoke(app, [*args, "--xmp"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert sorted(Path(r["path"]).name for r in rows) == ["a.JPG", "c.dng", "d.HEIC", "e.jpg", "f.jpg"]
    pair = next(r for r in rows if r["path"].endswith("a.JPG"))
    assert Path(pair["raw"]).name == "a.dng"
    assert not (tmp_path / "groups.errors.csv").exists()
    assert read_labels(folder / "a.dng").rating == 2  # the photographer's rating on the RAW, kept
    assert not (folder / "a.JPG.xmp").exists()  # never the JPEG's own sidecar
    for name in ("c.dng", "d.HEIC"):
        labels = read_labels(folder / name)
        assert labels.machine and 1 <= labels.rating <= 5


def test_the_embedded_preview_is_used_when_it_is_large_enough(tmp_path: Path) -> None:
    sensor = astronaut((600, 400))
    marked = astronaut((300, 200)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # tells the preview apart
    path = make_dng_with_preview(sensor, marked, tmp_path / "p.dng")
    fast = open_image(path, draft_size=150)  # the model needs 150 px: the 300 x 200 preview will do
    assert fast.size == (300, 200) and mean_error(fast, marked) < 1
    full = open_image(path, draft_size=250)  # more than the preview has: LibRaw decodes the sensor data
    assert full.size == (600, 400) and mean_error(full, sensor) < mean_error(full, marked.resize((600, 400)))
    assert open_image(path).size == (600, 400)  # a 100% view: every pixel


def test_score_reads_raw_and_heic_too(tmp_path: Path, tiny_clip_spec: str) -> None:
    make_dng(detailed(7).resize((300, 200)), tmp_path / "a.dng")
    make_heic(detailed(8).resize((300, 200)), tmp_path / "b.heic")
    out = tmp_path / "ranked.csv"
    args = ["score", str(tmp_path), "-o", str(out), "--model", tiny_clip_spec, *PROMPT_ARGS, "--workers", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(Path(r["path"]).name for r in csv.DictReader(out.open())) == ["a.dng", "b.heic"]


def test_raw_bytes_from_a_shard_are_decoded_by_libraw(tmp_path: Path) -> None:
    """A DNG's first IFD is a valid TIFF (its preview): bytes without a name still go to LibRaw."""
    sensor = astronaut((600, 400))
    path = make_dng_with_preview(sensor, astronaut((300, 200)), tmp_path / "p.dng")
    assert open_image(path.read_bytes(), draft_size=250).size == (600, 400)
    assert open_image(path.read_bytes(), draft_size=150).size == (300, 200)  # the preview covers it
    plain = make_dng(sensor, tmp_path / "q.dng")  # Pillow does not open this one at all
    assert open_image(plain.read_bytes()).size == (600, 400)
