"""The GPU decoding path's operations, run on CPU tensors against the PIL reference."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from clip_aesthetics.encoders.backbones import PreprocessConfig
from clip_aesthetics.pipeline import images as images_module
from clip_aesthetics.pipeline.gpu_decode import (
    apply_orientation,
    decode_on_device,
    jpeg_header,
    resize_crop_tensor,
)
from clip_aesthetics.pipeline.images import iter_batches, open_image, prepare
from conftest import photo

CFG = PreprocessConfig(size=224, resize_size=224)
CPU = torch.device("cpu")


def _jpeg(image: Image.Image, orientation: int = 1, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(buffer, "JPEG", quality=quality, exif=exif.tobytes())
    return buffer.getvalue()


def _differences(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    diff = (a.float() - b.float()).abs().flatten()
    return float(diff.mean()), float(torch.quantile(diff, 0.99))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pil(orientation: int) -> None:
    image = photo(orientation, (64, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.info["exif"] = exif.tobytes()
    image.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(image))
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    assert np.array_equal(apply_orientation(tensor, orientation).permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("size", [(500, 375), (1600, 1200), (300, 700)])
def test_tensor_resize_close_to_pil(size: tuple[int, int]) -> None:
    image = photo(1, size)
    reference = prepare(image, CFG)
    ours = resize_crop_tensor(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous(), CFG)
    mean, p99 = _differences(ours, reference)
    assert ours.dtype == torch.uint8 and ours.shape == reference.shape
    assert mean < 1.0 and p99 < 4.0


def test_decode_on_device_close_to_cpu_path() -> None:
    data = [_jpeg(photo(2, (800, 600)), orientation=6), _jpeg(photo(3, (500, 375)))]
    headers = [jpeg_header(d) for d in data]
    assert headers[0] == (800, 600, "RGB", 6)
    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    decoded = decode_on_device(encoded, [h[3] for h in headers], CFG, CPU)
    for ours, raw in zip(decoded, data, strict=True):
        mean, p99 = _differences(ours, prepare(open_image(raw), CFG))
        assert mean < 1.0 and p99 < 4.0


def test_gpu_decode_without_cuda_is_refused(photo_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the refusal only applies without it")
    with pytest.raises(ValueError, match="--decode gpu needs a CUDA device"):
        next(iter_batches([photo_dir / "img1.jpg"], CFG, decode="gpu", device=CPU))
    batch = next(iter_batches([photo_dir / "img1.jpg"], CFG, decode="auto", device=CPU, workers=0))
    assert batch.indices == [0]  # auto falls back to the CPU decoder


def test_device_path_keeps_order_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole device path, forced on the CPU: JPEGs decoded 'on device', the rest on the CPU path."""
    files = {
        "a.jpg": _jpeg(photo(4, (640, 480))),
        "b.png": None,
        "c_cmyk.jpg": None,
        "d_corrupt.jpg": _jpeg(photo(5, (640, 480)))[:2000] + b"\x00" * 50,
        "e_empty.jpg": b"",
        "f.jpg": _jpeg(photo(6, (480, 640)), orientation=8),
    }
    photo(7).save(tmp_path / "b.png")
    photo(8, (300, 300)).convert("CMYK").save(tmp_path / "c_cmyk.jpg")
    for name, data in files.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    sources = [tmp_path / name for name in files]
    monkeypatch.setattr(images_module, "resolve_decode", lambda decode, device: True)
    batches = list(iter_batches(sources, CFG, batch_size=6, workers=0, device=CPU, decode="gpu"))
    reference = list(
        iter_batches(sources, CFG, batch_size=6, workers=0, device=CPU, decode="cpu", draft=False)
    )
    assert [b.indices for b in batches] == [b.indices for b in reference] == [[0, 1, 2, 5]]
    assert batches[0].errors == reference[0].errors and [i for i, _ in batches[0].errors] == [3, 4]
    for ours, ref in zip(batches[0].images, reference[0].images, strict=True):
        mean, p99 = _differences(ours, ref)
        assert mean < 1.0 and p99 < 4.0
