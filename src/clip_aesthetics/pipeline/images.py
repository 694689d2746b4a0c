"""The image pipeline every bulk job shares: find files, decode them safely, batch them for a model.

Decoding happens in DataLoader worker processes and produces uint8 tensors already resized and cropped to
the model's input; normalisation happens on the model's device (:meth:`Backbone.normalize`). A file that
cannot be read never stops a job: it becomes an error with a one-line reason.
"""

from __future__ import annotations

import io
import os
import signal
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pillow_heif
import torch
import torchvision.transforms.functional as TF
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from ..constants import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, RAW_EXTENSIONS
from ..encoders.backbones import PreprocessConfig
from ..encoders.compute import threads_beside_workers, usable_cores
from ..progress import progress_bar
from .gpu_decode import decode_on_device, device_decodable, jpeg_header

pillow_heif.register_heif_opener()  # HEIC/HEIF through Pillow's own API (AVIF is Pillow's own)

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
            image = _open_bytes(source, max_pixels, draft_size)
        else:
            if os.path.getsize(source) == 0:
                raise ImageLoadError("empty file (0 bytes)")
            if is_raw_file(source):
                return to_rgb(open_raw(source, max_pixels, draft_size))
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
        lowered = text.lower()
        reason = (
            "truncated or corrupt image" if "truncated" in lowered or "broken" in lowered else "corrupt image"
        )
        raise ImageLoadError(f"{reason}: {text}") from None


def is_raw_file(path: str | os.PathLike) -> bool:
    """A camera RAW file by its name (``.NEF``, ``.CR3``, ``.DNG``, ...): read with LibRaw, not Pillow."""
    return Path(path).suffix.lower() in RAW_EXTENSIONS


def _open_bytes(data: bytes, max_pixels: int, draft_size: int | None) -> Image.Image:
    """Pillow's formats first; bytes Pillow does not know may be a RAW file (a shard member)."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.format == "TIFF" and DNG_VERSION in getattr(image, "tag_v2", {}):  # IFD0 is a preview
            return open_raw(io.BytesIO(data), max_pixels, draft_size)
        return image
    except UnidentifiedImageError:
        try:
            return open_raw(io.BytesIO(data), max_pixels, draft_size)
        except ImageLoadError:
            raise UnidentifiedImageError("not an image") from None


DNG_VERSION = 50706  # the TIFF tag that makes a TIFF a DNG

# LibRaw's ``flip`` (the camera's orientation) as the Pillow transposition that shows the photo upright.
_RAW_FLIPS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def open_raw(source: str | os.PathLike | io.BytesIO, max_pixels: int, min_side: int | None) -> Image.Image:
    """A camera RAW file, upright, through LibRaw (rawpy).

    With ``min_side``, the camera's embedded JPEG preview is used when both its sides are at least that
    large (what culling tools show: fast, and the camera's own rendering); otherwise LibRaw demosaics the
    sensor data, at half size when that still covers ``min_side``. Without ``min_side`` (a 100% view) the
    full sensor data is decoded.
    """
    import rawpy

    try:
        with rawpy.imread(source if isinstance(source, io.BytesIO) else os.fspath(source)) as raw:
            width, height = raw.sizes.width, raw.sizes.height
            if width * height > max_pixels:
                raise ImageLoadError(
                    f"too large: {width}x{height} = {width * height:,} pixels "
                    f"(limit {max_pixels:,}; raise it with --max-pixels)"
                )
            preview = _raw_preview(raw, min_side) if min_side else None
            if preview is not None:
                return preview
            half = bool(min_side) and min(width, height) // 2 >= min_side
            return Image.fromarray(raw.postprocess(use_camera_wb=True, half_size=half, output_bps=8))
    except rawpy.LibRawFileUnsupportedError:
        raise ImageLoadError("not a RAW file LibRaw can read") from None
    except (rawpy.LibRawError, rawpy.NotSupportedError) as exc:
        raise ImageLoadError(f"truncated or corrupt RAW file: {exc}") from None


def _raw_preview(raw, min_side: int) -> Image.Image | None:
    """The embedded preview, upright, when both sides are at least ``min_side``; None otherwise."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        image = Image.open(io.BytesIO(thumb.data))
        image.draft("RGB", (min_side, min_side))
    else:
        image = Image.fromarray(thumb.data)
    if min(image.size) < min_side:
        return None
    image.load()
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # the preview's own EXIF says how
        return ImageOps.exif_transpose(image)
    flip = _RAW_FLIPS.get(raw.sizes.flip)
    return image.transpose(flip) if flip is not None else image


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


def load_prepared(
    source: ImageSource,
    cfg: PreprocessConfig,
    max_pixels: int,
    draft_size: int | None,
    analyse: Callable[[ImageSource, Image.Image], object] | None = None,
) -> tuple[torch.Tensor | tuple | None, str | None]:
    """Decode and prepare one image: ``(uint8 tensor, None)`` or ``(None, one-line reason)``; never raises.

    With ``analyse``, the first item is ``(uint8 tensor, analyse(source, image))``: the analysis sees the
    whole (drafted) image, before the crop.
    """
    try:
        image = open_image(source, max_pixels, draft_size)
        prepared = prepare(image, cfg)
        return (prepared if analyse is None else (prepared, analyse(source, image))), None
    except ImageLoadError as exc:
        return None, str(exc)
    except Exception as exc:  # a decoder bug must not stop the batch either
        return None, f"unreadable: {type(exc).__name__}: {exc}"


def draft_size_for(cfg: PreprocessConfig, draft: bool | int) -> int | None:
    """The smallest side a JPEG may be decoded at: ``draft=True`` or a floor in pixels; None for no draft.

    Twice the resize target: DCT scaling then a bicubic resize from >= 2x stays close to full decoding. An
    integer ``draft`` raises that floor (an analysis may need more pixels than the model).
    """
    floor = 0 if isinstance(draft, bool) else draft
    return max(2 * cfg.resize_size, floor) if draft else None


@dataclass
class LoadedBatch:
    """Decoded images of one batch; ``indices`` say which inputs they are, ``errors`` which failed.

    With device decoding, ``encoded`` holds the (index, JPEG bytes, EXIF orientation) still to decode.
    With an ``analyse`` function, ``analyses[k]`` is its result for the image ``indices[k]``.
    """

    indices: list[int]
    images: torch.Tensor
    errors: list[tuple[int, str]] = field(default_factory=list)
    encoded: list[tuple[int, torch.Tensor, int]] = field(default_factory=list)
    analyses: list = field(default_factory=list)  # analyse(source, image) per decoded image, see iter_batches

    def pin_memory(self) -> LoadedBatch:  # called by the DataLoader's pinning thread
        self.images = self.images.pin_memory()
        return self


_Item = tuple[int, torch.Tensor | None, str | None, torch.Tensor | None, int]


class _ImageDataset(Dataset):
    def __init__(
        self,
        sources: Sequence[ImageSource],
        cfg: PreprocessConfig,
        max_pixels: int,
        draft: bool | int,
        device_decode: bool = False,
        analyse: Callable[[ImageSource, Image.Image], object] | None = None,
    ):
        self.sources, self.cfg, self.max_pixels, self.analyse = sources, cfg, max_pixels, analyse
        self.draft_size = draft_size_for(cfg, draft)
        self.device_decode = device_decode

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> _Item:
        source = self.sources[index]
        if self.device_decode:
            encoded = self._encoded_jpeg(source)
            if encoded is not None:
                return index, None, None, *encoded
        item, error = load_prepared(source, self.cfg, self.max_pixels, self.draft_size, self.analyse)
        return index, item, error, None, 1

    def _encoded_jpeg(self, source: ImageSource) -> tuple[torch.Tensor, int] | None:
        """The bytes of a JPEG the device can decode, with its orientation; None sends it to the CPU path."""
        try:
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            header = jpeg_header(data)
        except Exception:  # unreadable here: the CPU path will say why
            return None
        if not device_decodable(header) or header[0] * header[1] > self.max_pixels:
            return None
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), header[3]


def _collate(items: list[_Item]) -> LoadedBatch:
    analyses = [(i, t[1]) for i, t, _, _, _ in items if isinstance(t, tuple)]
    items = [(i, t[0] if isinstance(t, tuple) else t, *rest) for i, t, *rest in items]
    good = [(i, t) for i, t, _, _, _ in items if t is not None]
    errors = [(i, e) for i, _, e, _, _ in items if e is not None]
    encoded = [(i, data, orientation) for i, _, _, data, orientation in items if data is not None]
    images = torch.stack([t for _, t in good]) if good else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    return LoadedBatch([i for i, _ in good], images, errors, encoded, [a for _, a in analyses])


def _finish_on_device(
    batch: LoadedBatch, sources: Sequence[ImageSource], cfg: PreprocessConfig, device: torch.device
) -> LoadedBatch:
    """Decode the batch's JPEG bytes on ``device`` and merge them with the CPU-decoded images, in order."""
    indices = [i for i, _, _ in batch.encoded]
    decoded = decode_on_device(
        [d for _, d, _ in batch.encoded], [o for _, _, o in batch.encoded], cfg, device
    )
    images = dict(zip(batch.indices, batch.images.to(device, non_blocking=True), strict=True))
    errors = list(batch.errors)
    for index, image in zip(indices, decoded, strict=True):
        if image is not None:
            images[index] = image
            continue
        try:  # the device decoder refused it: the CPU decoder either reads it or names the problem
            images[index] = prepare(open_image(sources[index]), cfg).to(device)
        except ImageLoadError as exc:
            errors.append((index, str(exc)))
    order = sorted(images)
    stacked = torch.stack([images[i] for i in order]) if order else batch.images
    return LoadedBatch(order, stacked, sorted(errors))


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers share the cores with the model: no thread oversubscription
    # Ctrl-C reaches the whole process group: the main process decides what an interrupt means (fine-tuning
    # saves first) and ends its workers; a worker dying on its own would only turn that into a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers(device: torch.device | None = None) -> int:
    """Decoding processes: a GPU needs many to stay fed; on a CPU the model dominates, so few suffice."""
    cores = usable_cores()
    if device is not None and device.type == "cuda":
        return min(16, cores)
    return max(1, min(8, cores // 4))


def clamp_workers(workers: int) -> int:
    """``workers`` capped at the cores this process may use (with a warning): more processes than cores
    only add memory and start-up time, and ``--workers 500`` would start 500 of them."""
    if workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {workers}")
    cores = usable_cores()
    if workers > cores:
        warnings.warn(f"--workers {workers} is more than the {cores} cores here: using {cores}", stacklevel=3)
        return cores
    return workers


def resolve_decode(decode: str, device: torch.device | None) -> bool:
    """Whether JPEGs are decoded on the device: ``gpu`` requires CUDA, ``auto`` uses it when present."""
    if decode not in ("auto", "cpu", "gpu"):
        raise ValueError(f"unknown --decode {decode!r} (choose auto, cpu or gpu)")
    on_cuda = device is not None and device.type == "cuda"
    if decode == "gpu" and not on_cuda:
        raise ValueError(
            "--decode gpu needs a CUDA device (this run is on the CPU): use --decode cpu or auto"
        )
    return decode == "gpu" or (decode == "auto" and on_cuda)


def iter_batches(
    sources: Sequence[ImageSource],
    cfg: PreprocessConfig,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool | int = True,
    pin_memory: bool = False,
    progress: bool | None = None,
    description: str = "images",
    device: torch.device | None = None,
    decode: str = "cpu",
    analyse: Callable[[ImageSource, Image.Image], object] | None = None,
) -> Iterator[LoadedBatch]:
    """Decode ``sources`` in worker processes and yield them in order as uint8 batches.

    Args:
        sources: paths or encoded bytes.
        cfg: the model's preprocessing.
        batch_size: images per batch.
        workers: decoding processes (0 = in this process; default: see :func:`default_workers`).
        max_pixels: decompression-bomb guard, see :func:`open_image`.
        draft: let JPEGs decode at reduced scale when larger than the model needs; a number keeps at
            least that many pixels on each side too (for ``analyse``).
        pin_memory: pin batches for faster host-to-GPU copies.
        progress: show a progress bar (default: when stderr is a terminal).
        device: where the model runs; with device decoding, batches arrive there already. A CPU model
            runs on the cores the workers leave while batches are read (:func:`model_threads`).
        decode: ``cpu``, ``gpu`` (nvJPEG; CUDA only) or ``auto`` (GPU when ``device`` is CUDA).
        analyse: a picklable ``f(source, decoded RGB image)`` run in the decoding worker on the whole
            image before it is resized for the model (e.g. sharpness, thumbnails), so that nothing is
            decoded twice; results arrive in ``batch.analyses``. Decoding then stays on the CPU.
    """
    on_device = resolve_decode(decode, device) and analyse is None
    workers = default_workers(device) if workers is None else clamp_workers(workers)
    loader = DataLoader(
        _ImageDataset(sources, cfg, max_pixels, draft, device_decode=on_device, analyse=analyse),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        worker_init_fn=_init_worker if workers else None,
        prefetch_factor=4 if workers else None,
    )
    with threads_beside_workers(workers, device):  # measured before our workers start: they are not others
        batches = (_finish_on_device(b, sources, cfg, device) for b in loader) if on_device else iter(loader)
        with progress_bar(len(sources), description, progress) as advance:
            for batch in batches:
                yield batch
                advance(len(batch.indices) + len(batch.errors))
