"""The shared image pipeline: file discovery, safe decoding, preprocessing and batching."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clip_aesthetics.encoders.backbones import PreprocessConfig
from clip_aesthetics.pipeline.images import ImageLoadError, find_images, iter_batches, open_image, prepare
from conftest import photo

CFG = PreprocessConfig(size=32, resize_size=32)


def test_find_images_recursive_sorted_and_filtered(photo_dir: Path) -> None:
    (photo_dir / "notes.txt").write_text("not an image")
    (photo_dir / "UPPER.JPG").write_bytes((photo_dir / "img1.jpg").read_bytes())
    found = find_images([photo_dir])
    names = [p.relative_to(photo_dir).as_posix() for p in found]
    assert names == sorted(names)
    assert "notes.txt" not in names and "UPPER.JPG" in names
    assert {"sub/img6.png", "sub/img7.jpg"} <= set(names)
    assert len(names) == 9


def test_find_images_survives_symlink_loop_and_dedups(photo_dir: Path) -> None:
    os.symlink(photo_dir, photo_dir / "sub" / "loop")
    found = find_images([photo_dir, photo_dir / "img1.jpg"])
    assert len(found) == 8  # the loop adds nothing, the file given twice counts once


def test_find_images_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        find_images([tmp_path / "absent"])


@pytest.fixture
def broken_files(tmp_path: Path) -> dict[str, Path]:
    """One file for each way an image can be unreadable, with the word its reason must contain."""
    good = io.BytesIO()
    photo(3, (200, 150)).save(good, "JPEG")
    files = {
        "empty": tmp_path / "empty.jpg",
        "not an image": tmp_path / "text.jpg",
        "truncated": tmp_path / "truncated.jpg",
        "too large": tmp_path / "huge.png",
    }
    files["empty"].write_bytes(b"")
    files["not an image"].write_text("hello, I am not a JPEG")
    files["truncated"].write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    Image.new("L", (3000, 3000)).save(files["too large"])
    return files


def test_each_broken_kind_has_its_reason(broken_files: dict[str, Path]) -> None:
    for reason, path in broken_files.items():
        with pytest.raises(ImageLoadError, match=reason):
            open_image(path, max_pixels=4_000_000)


def test_permission_denied_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.jpg"
    photo(0).save(path)
    # tests run as root in CI, where chmod cannot deny a read: make the open itself fail as it would
    monkeypatch.setattr(Image, "open", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(ImageLoadError, match="permission denied"):
        open_image(path)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "1"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    source = photo(1, (40, 30))
    if mode == "I;16":
        array = (np.asarray(source.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        image = Image.fromarray(array)
        assert image.mode == "I;16"
    elif mode == "I":
        image = Image.fromarray(np.asarray(source.convert("L"), dtype=np.int32) * 257)
        assert image.mode == "I"
    else:
        image = source.convert(mode)
    path = tmp_path / ("img.tiff" if mode in ("CMYK", "I;16", "I") else "img.png")
    image.save(path)
    rgb = open_image(path)
    assert rgb.mode == "RGB" and rgb.size == (40, 30)
    if mode in ("I;16", "I"):
        # 16-bit values are scaled to 8 bits, not clipped to white
        grey = np.asarray(source.convert("L"), dtype=np.float64)
        assert np.abs(np.asarray(rgb)[..., 0] - grey).max() <= 1


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    image.save(tmp_path / "clear.png")
    assert open_image(tmp_path / "clear.png").getpixel((5, 5)) == (255, 255, 255)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    image = photo(2, (60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert open_image(tmp_path / "rotated.jpg").size == (40, 60)


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    red, _, blue = open_image(tmp_path / "anim.gif").getpixel((8, 8))
    assert red > 200 and blue < 50


def test_bytes_source(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    photo(4).save(buffer, "PNG")
    assert open_image(buffer.getvalue()).size == (96, 72)
    with pytest.raises(ImageLoadError, match="empty"):
        open_image(b"")


def test_prepare_matches_open_clip_transform() -> None:
    reference = open_clip.image_transform(32, is_train=False)
    for seed, size in ((0, (96, 72)), (1, (50, 120)), (2, (33, 33))):
        image = photo(seed, size)
        ours = prepare(image, CFG).float() / 255.0
        mean, std = torch.tensor(CFG.mean).view(3, 1, 1), torch.tensor(CFG.std).view(3, 1, 1)
        assert torch.allclose((ours - mean) / std, reference(image), atol=1e-5)


def test_draft_keeps_at_least_model_size(tmp_path: Path) -> None:
    photo(5, (1600, 1200)).save(tmp_path / "big.jpg", quality=95)
    full = open_image(tmp_path / "big.jpg")
    drafted = open_image(tmp_path / "big.jpg", draft_size=64)
    assert min(drafted.size) >= 64 and drafted.size[0] < full.size[0]
    a, b = prepare(full, CFG).float(), prepare(drafted, CFG).float()
    assert (a - b).abs().mean() < 3.0  # mean absolute difference in 0..255 units


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_keep_order_and_report_errors(
    photo_dir: Path, broken_files: dict[str, Path], workers: int
) -> None:
    sources = [*find_images([photo_dir]), *broken_files.values()]
    batches = list(
        iter_batches(sources, CFG, batch_size=3, workers=workers, max_pixels=4_000_000, progress=False)
    )
    indices = [i for b in batches for i in b.indices]
    errors = dict(e for b in batches for e in b.errors)
    assert indices == list(range(8)) and sorted(errors) == [8, 9, 10, 11]
    assert all(
        b.images.dtype == torch.uint8 and b.images.shape[1:] == (3, 32, 32) for b in batches if b.indices
    )
    first = prepare(open_image(sources[0]), CFG)
    assert torch.equal(batches[0].images[0], first)


def test_progress_bar_does_not_change_batches(photo_dir: Path, capsys: pytest.CaptureFixture) -> None:
    sources = find_images([photo_dir])
    quiet = list(iter_batches(sources, CFG, batch_size=3, workers=0, progress=False))
    shown = list(iter_batches(sources, CFG, batch_size=3, workers=0, progress=True))
    assert [b.indices for b in shown] == [b.indices for b in quiet]
    assert all(torch.equal(a.images, b.images) for a, b in zip(shown, quiet, strict=True))
    assert capsys.readouterr().out == ""  # the bar never goes to stdout, where results may be piped
