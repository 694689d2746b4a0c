"""The image pipeline every bulk job shares: find files, decode them safely, batch them for a model.

Decoding happens in DataLoader worker processes and produces uint8 tensors already resized and cropped to
the model's input; normalisation happens on the model's device (:meth:`Backbone.normalize`). A file that
cannot be read never stops a job: it becomes an error with a one-line reason.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from .backbones import PreprocessConfig

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: above any camera, well below a decompression bomb
_INTERPOLATIONS = {
    "bicubic": TF.InterpolationMode.BICUBIC,
    "bilinear": TF.InterpolationMode.BILINEAR,
    "nearest": TF.InterpolationMode.NEAREST,
    "lanczos": TF.InterpolationMode.LANCZOS,
}

ImageSource = str | os.PathLike | bytes


class ImageLoadError(Exception):
    """An image could not be decoded; the message is a one-line reason meant for users."""


def find_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files under ``paths`` (files or folders, walked recursively), sorted, each once.

    Symbolic links are followed, but a folder already visited (a link loop) is skipped.

    Raises:
        FileNotFoundError: a given path does not exist.
    """
    found: dict[str, Path] = {}
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        if path.is_file():
            found.setdefault(os.path.realpath(path), path)
            continue
        visited: set[str] = set()
        for root, dirs, files in os.walk(path, followlinks=True):
            real = os.path.realpath(root)
            if real in visited:
                dirs.clear()
                continue
            visited.add(real)
            dirs.sort()
            for name in files:
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    file = Path(root) / name
                    found.setdefault(os.path.realpath(file), file)
    return sorted(found.values())


def open_image(
    source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Decode an image to RGB: EXIF orientation applied, first frame of animations, alpha on white.

    Args:
        source: a path or the encoded bytes.
        max_pixels: refuse images with more pixels than this (decompression bombs).
        draft_size: when set, a JPEG may be decoded at a reduced scale (1/2 to 1/8) as long as both
            sides stay at least this large; the model only needs its input size.

    Raises:
        ImageLoadError: with a one-line reason (empty file, not an image, truncated, too large, ...).
    """
    try:
        if isinstance(source, bytes):
            if not source:
                raise ImageLoadError("empty file (0 bytes)")
            image = Image.open(io.BytesIO(source))
        else:
            if os.path.getsize(source) == 0:
                raise ImageLoadError("empty file (0 bytes)")
            image = Image.open(source)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageLoadError(
                f"too large: {width}x{height} = {width * height:,} pixels "
                f"(limit {max_pixels:,}; raise it with --max-pixels)"
            )
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
    except ImageLoadError:
        raise
    except PermissionError:
        raise ImageLoadError("permission denied") from None
    except FileNotFoundError:
        raise ImageLoadError("file not found") from None
    except UnidentifiedImageError:
        raise ImageLoadError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc)
        reason = "truncated or corrupt image" if "truncated" in text or "broken" in text else "corrupt image"
        raise ImageLoadError(f"{reason}: {text}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparent pixels become white, 16-bit values are scaled."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def prepare(image: Image.Image, cfg: PreprocessConfig) -> torch.Tensor:
    """Resize and crop as the model's own transform does; uint8 tensor (3, size, size)."""
    interpolation = _INTERPOLATIONS[cfg.interpolation]
    if cfg.resize_mode == "squash":
        image = TF.resize(image, [cfg.size, cfg.size], interpolation=interpolation)
    else:
        image = TF.resize(image, cfg.resize_size, interpolation=interpolation)
        image = TF.center_crop(image, cfg.size)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


@dataclass
class LoadedBatch:
    """Decoded images of one batch; ``indices`` say which inputs they are, ``errors`` which failed."""

    indices: list[int]
    images: torch.Tensor
    errors: list[tuple[int, str]] = field(default_factory=list)


class _ImageDataset(Dataset):
    def __init__(self, sources: Sequence[ImageSource], cfg: PreprocessConfig, max_pixels: int, draft: bool):
        self.sources, self.cfg, self.max_pixels = sources, cfg, max_pixels
        # twice the resize target: DCT scaling then a bicubic resize from >= 2x stays close to full decoding
        self.draft_size = 2 * cfg.resize_size if draft else None

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = open_image(self.sources[index], self.max_pixels, self.draft_size)
            return index, prepare(image, self.cfg), None
        except ImageLoadError as exc:
            return index, None, str(exc)
        except Exception as exc:  # a decoder bug must not stop the batch either
            return index, None, f"unreadable: {type(exc).__name__}: {exc}"


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> LoadedBatch:
    good = [(i, t) for i, t, _ in items if t is not None]
    errors = [(i, e) for i, t, e in items if t is None]
    images = torch.stack([t for _, t in good]) if good else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    return LoadedBatch([i for i, _ in good], images, errors)


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers share the cores with the model: no thread oversubscription


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def iter_batches(
    sources: Sequence[ImageSource],
    cfg: PreprocessConfig,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = True,
    pin_memory: bool = False,
    progress: bool | None = None,
    description: str = "images",
) -> Iterator[LoadedBatch]:
    """Decode ``sources`` in worker processes and yield them in order as uint8 batches.

    Args:
        sources: paths or encoded bytes.
        cfg: the model's preprocessing.
        batch_size: images per batch.
        workers: decoding processes (0 = in this process; default: one per core, at most 8).
        max_pixels: decompression-bomb guard, see :func:`open_image`.
        draft: let JPEGs decode at reduced scale when larger than the model needs.
        pin_memory: pin batches for faster host-to-GPU copies.
        progress: show a progress bar (default: when stderr is a terminal).
    """
    workers = default_workers() if workers is None else workers
    loader = DataLoader(
        _ImageDataset(sources, cfg, max_pixels, draft),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        worker_init_fn=_init_worker if workers else None,
        prefetch_factor=4 if workers else None,
    )
    show = sys.stderr.isatty() if progress is None else progress
    if not show:
        yield from loader
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=len(sources))
        for batch in loader:
            yield batch
            bar.advance(task, len(batch.indices) + len(batch.errors))
