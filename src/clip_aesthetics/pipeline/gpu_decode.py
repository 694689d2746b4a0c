"""Decoding JPEGs on the model's device (nvJPEG on CUDA) and resizing there.

With ``decode="gpu"`` the worker processes only read the file bytes and the JPEG header (size guard, EXIF
orientation, colour mode); the main process decodes the whole batch with ``torchvision.io.decode_jpeg`` on
the GPU, applies the orientation and resizes with antialiased bicubic interpolation. Files that nvJPEG cannot
take (PNG, CMYK JPEGs, corrupt data) are decoded on the CPU as usual, so results never depend on the path.

The tensor operations are the same on any device, which is how the tests check them on a CPU: against the
PIL reference (:func:`clip_aesthetics.pipeline.images.prepare`), the mean absolute difference is below 1 grey
level (of 255) and the 99th percentile below 4 (``tests/test_device_decode.py``).
"""

from __future__ import annotations

import io
import warnings

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from ..encoders.backbones import PreprocessConfig

_INTERPOLATIONS = {
    "bicubic": TF.InterpolationMode.BICUBIC,
    "bilinear": TF.InterpolationMode.BILINEAR,
    "nearest": TF.InterpolationMode.NEAREST,
}
_DEVICE_MODES = ("RGB", "L")  # JPEG colour modes nvJPEG decodes to RGB; CMYK/YCCK go to the CPU path


def jpeg_header(data: bytes) -> tuple[int, int, str, int] | None:
    """(width, height, mode, EXIF orientation) of a JPEG, reading only its header; None if not a JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return None
    with Image.open(io.BytesIO(data)) as image:
        if image.format != "JPEG":
            return None
        orientation = int(image.getexif().get(0x0112, 1) or 1)
        return image.width, image.height, image.mode, orientation


def device_decodable(header: tuple[int, int, str, int] | None) -> bool:
    return header is not None and header[2] in _DEVICE_MODES


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to a (C, H, W) tensor, as ``PIL.ImageOps.exif_transpose`` does."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


def resize_crop_tensor(image: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """The model's resize and centre crop on a uint8 (3, H, W) tensor, on whatever device it is."""
    interpolation = _INTERPOLATIONS[cfg.interpolation]
    if cfg.resize_mode == "squash":
        return TF.resize(image, [cfg.size, cfg.size], interpolation=interpolation, antialias=True)
    image = TF.resize(image, cfg.resize_size, interpolation=interpolation, antialias=True)
    return TF.center_crop(image, cfg.size)


def decode_on_device(
    encoded: list[torch.Tensor], orientations: list[int], cfg: PreprocessConfig, device: torch.device
) -> list[torch.Tensor | None]:
    """Decode, orient, resize and crop JPEG byte tensors on ``device``; None where decoding failed."""
    if not encoded:
        return []
    try:
        decoded = _decode_jpeg(encoded, device)
    except RuntimeError:
        # a batched decode returns nothing when one file is bad: retry one by one to keep the good ones
        decoded = [_decode_one(data, device) for data in encoded]
    return [
        None if image is None else resize_crop_tensor(apply_orientation(image, orientation), cfg)
        for image, orientation in zip(decoded, orientations, strict=True)
    ]


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return _decode_jpeg(data, device)
    except RuntimeError:
        return None


def _decode_jpeg(data: torch.Tensor | list[torch.Tensor], device: torch.device):
    with warnings.catch_warnings():  # torchvision 0.29 flags its decoders as deprecated; they still work
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
