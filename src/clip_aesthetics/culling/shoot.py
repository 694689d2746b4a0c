"""Analysing a shoot once: embeddings, capture times, technical checks and thumbnails, cached per folder.

Every photo is decoded once, in the image pipeline's worker processes: the worker measures sharpness and
clipping on the whole frame, reads the capture time, writes the thumbnail, and hands the model its resized
crop; the backbone embeds whole batches. Results are cached in ``$CLIP_AESTHETICS_CACHE/shoots/<key>``
(one folder per shoot folder and backbone): a photo whose size and modification time are unchanged is never
decoded again, so reopening a shoot is instant and adding photos costs only the new ones. The cache is
saved every few thousand photos, so an interrupted run resumes.

Only files inside the folder belong to the shoot: a symbolic link leading out of it is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..encoders.compute import autocast, default_batch_size
from ..encoders.prompts import cache_dir
from ..fileio import atomic_path, atomic_write_json
from ..pipeline.images import DEFAULT_MAX_PIXELS, find_images, is_raw_file, iter_batches
from .capture import capture_time
from .technical import SHARPNESS_SCALE, technical, tone_signature

THUMB_SIZE = 384  # long side of grid thumbnails, pixels
CHECKPOINT_EVERY = 2048  # photos between cache saves
PARTIAL_EVERY = 2.0  # seconds between the photos-so-far handed to a page
CACHE_VERSION = 1


@dataclass
class Shoot:
    """An analysed folder: one ``frames`` entry and one ``features`` row per readable photo."""

    root: Path
    cache: Path
    frames: list[dict]  # rel, size, mtime_ns, capture time/source/text, sharpness, highlights, shadows, thumb
    features: np.ndarray  # (N, D) float32 image embeddings, rows as frames
    errors: list[dict] = field(default_factory=list)  # rel, size, mtime_ns, error

    def path(self, index: int) -> Path:
        """The file analysed for this photo (of a RAW+JPEG pair, the JPEG)."""
        return self.root / self.frames[index]["rel"]

    def target(self, index: int) -> Path:
        """The file whose sidecar holds the rating: the RAW file of a RAW+JPEG pair, else the photo."""
        return self.root / (self.frames[index].get("raw") or self.frames[index]["rel"])


def inside(root: Path, path: Path) -> bool:
    """Whether ``path``, with every symbolic link resolved, lies inside ``root``."""
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    return os.path.commonpath([real_root, real]) == real_root


def shoot_files(folder: Path) -> tuple[list[Path], dict[Path, Path]]:
    """The photos of a shoot folder (links leading out of it skipped, the RAW file of a pair left out) and
    the pairs (see :func:`raw_pairs`)."""
    files = [p for p in find_images([folder]) if inside(folder, p)]
    pairs = raw_pairs(files)
    paired = set(pairs.values())
    return [p for p in files if p not in paired], pairs


# Of files sharing a stem with a RAW file, the one a pair is scored from (the camera's JPEG first).
PAIR_PREFERENCE = (".jpg", ".jpeg", ".heic", ".heif", ".hif", ".tif", ".tiff", ".png", ".webp", ".avif")


def raw_pairs(files: list[Path]) -> dict[Path, Path]:
    """RAW+JPEG pairs (same folder, same stem): the file a pair is scored from -> its RAW file.

    The pair is one photo: shown once, scored once from the JPEG (the camera's rendering), and rated in the
    sidecar of the RAW file, which is the one editors read (darktable and digiKam ``NAME.RAW.xmp``,
    Lightroom and Capture One ``NAME.xmp``).
    """
    by_stem: dict[tuple[Path, str], list[Path]] = {}
    for path in files:
        by_stem.setdefault((path.parent, path.stem), []).append(path)
    pairs = {}
    for members in by_stem.values():
        raws = sorted(p for p in members if is_raw_file(p))
        others = [p for p in members if p.suffix.lower() in PAIR_PREFERENCE]
        if raws and others:
            scored = min(others, key=lambda p: (PAIR_PREFERENCE.index(p.suffix.lower()), p.name))
            pairs[scored] = raws[0]
    return pairs


def shoot_cache(folder: Path, backbone) -> Path:
    """The cache folder of ``folder`` analysed with ``backbone``."""
    identity = json.dumps([os.path.realpath(folder), backbone.weights_id, backbone.preprocess_cfg.to_dict()])
    return cache_dir() / "shoots" / hashlib.sha256(identity.encode()).hexdigest()[:24]


def thumb_name(rel: str, size: int, mtime_ns: int) -> str:
    key = f"{rel}\0{size}\0{mtime_ns}".encode("utf-8", "surrogateescape")  # any name the disk holds
    return hashlib.sha256(key).hexdigest()[:24] + ".jpg"


class FrameAnalysis:
    """The work done on each decoded photo in the decoding worker (picklable)."""

    def __init__(self, root: Path, thumbs: Path) -> None:
        self.root, self.thumbs = root, thumbs

    def __call__(self, source: str | os.PathLike, image: Image.Image) -> dict:
        rel = Path(source).relative_to(self.root).as_posix()
        stat = os.stat(source)
        taken = capture_time(source)
        thumb = thumb_name(rel, stat.st_size, stat.st_mtime_ns)
        small = image.copy()
        small.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
        with atomic_path(self.thumbs / thumb) as tmp:
            small.save(tmp, "JPEG", quality=85)
        return {
            "rel": rel,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "time": taken.seconds,
            "time_source": taken.source,
            "time_text": taken.text,
            **technical(image).to_dict(),
            "tone": tone_signature(image),
            "thumb": thumb,
        }


def analyse_folder(
    folder: str | os.PathLike,
    backbone,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    precision: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_partial: Callable[[Shoot], None] | None = None,
) -> Shoot:
    """Analyse every photo of ``folder`` not in its cache yet; return the whole shoot.

    ``on_partial`` receives the photos analysed so far (a copy, in no particular order) at most every
    :data:`PARTIAL_EVERY` seconds, so that a page can show them while the rest is analysed. ``batch_size``
    None: the default of the backbone's device, as in every command.
    """
    batch_size = batch_size or default_batch_size(backbone.device)
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    cache = shoot_cache(root, backbone)
    (cache / "thumbs").mkdir(parents=True, exist_ok=True)
    known, known_features, known_errors = _load_cache(cache, backbone)
    files, pairs = shoot_files(root)
    companions = {  # pairs follow the folder as it is now, not the cache
        p.relative_to(root).as_posix(): raw.relative_to(root).as_posix() for p, raw in pairs.items()
    }
    frames, rows, errors, todo = [], [], [], []
    for path in files:
        rel, stat = path.relative_to(root).as_posix(), path.stat()
        key = (rel, stat.st_size, stat.st_mtime_ns)
        if key in known:
            frames.append(known[key][0])
            rows.append(known_features[known[key][1]])
        elif key in known_errors:
            errors.append(known_errors[key])
        else:
            todo.append(path)
    if on_progress:
        on_progress(len(files) - len(todo), len(files))
    state = Shoot(root, cache, frames, _stack(rows, backbone.feature_dim), errors)
    partial = _Partial(on_partial, companions)
    partial(state, [], force=True)  # the cached photos, at once
    if todo:
        _embed(
            state,
            todo,
            backbone,
            batch_size,
            workers,
            precision,
            max_pixels,
            progress,
            on_progress,
            files,
            partial,
        )
    if todo or len(known) + len(known_errors) > len(frames) + len(errors):  # new photos, or some gone
        _save_cache(state, backbone)
    _attach_pairs(state.frames, companions)
    return _in_order(state, files)


def _attach_pairs(frames: list[dict], companions: dict[str, str]) -> None:
    """Each frame's RAW file of a RAW+JPEG pair (``raw``, else None): where its rating is written."""
    for frame in frames:
        frame["raw"] = companions.get(frame["rel"])


class _Partial:
    """Hands the photos analysed so far to a callback, at most every :data:`PARTIAL_EVERY` seconds."""

    def __init__(self, callback: Callable[[Shoot], None] | None, companions: dict[str, str]) -> None:
        self.callback, self.companions, self.last = callback, companions, float("-inf")

    def __call__(self, state: Shoot, new_rows: list[np.ndarray], force: bool = False) -> None:
        if self.callback is None or (not force and time.monotonic() - self.last < PARTIAL_EVERY):
            return
        self.last = time.monotonic()
        features = _merged(state.features, new_rows)
        _attach_pairs(state.frames, self.companions)  # so a pair's rating is read from the RAW's sidecar
        self.callback(Shoot(state.root, state.cache, list(state.frames), features, list(state.errors)))


def _embed(
    state, todo, backbone, batch_size, workers, precision, max_pixels, progress, on_progress, files, partial
):
    """Decode, analyse and embed ``todo`` in batches, appending to ``state`` and saving it as it goes."""
    analysis = FrameAnalysis(state.root, state.cache / "thumbs")
    new_rows, since_save = [], 0
    batches = iter_batches(
        [str(p) for p in todo],
        backbone.preprocess_cfg,
        batch_size=batch_size,
        workers=workers,
        max_pixels=max_pixels,
        progress=progress,
        description="analysing",
        draft=SHARPNESS_SCALE,  # technical checks at their fixed scale, whatever the model's input
        analyse=analysis,
    )
    for batch in batches:
        for index, reason in batch.errors:
            stat = todo[index].stat()
            rel = todo[index].relative_to(state.root).as_posix()
            state.errors.append(
                {"rel": rel, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "error": reason}
            )
        if batch.indices:
            with torch.inference_mode(), autocast(backbone.device, precision):
                features = backbone.encode_image(backbone.normalize(batch.images))
            new_rows.append(features.float().cpu().numpy())
            state.frames.extend(batch.analyses)
        since_save += len(batch.indices) + len(batch.errors)
        if since_save >= CHECKPOINT_EVERY:
            state.features, new_rows, since_save = _merged(state.features, new_rows), [], 0
            _save_cache(state, backbone)
        if on_progress:
            on_progress(len(state.frames) + len(state.errors), len(files))
        partial(state, new_rows)
    state.features = _merged(state.features, new_rows)


def _merged(features: np.ndarray, new_rows: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([features, *new_rows]) if new_rows else features


def _stack(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)


def _in_order(state: Shoot, files: list[Path]) -> Shoot:
    """Frames sorted by path, as the folder lists them."""
    order = sorted(range(len(state.frames)), key=lambda i: state.frames[i]["rel"])
    state.frames = [state.frames[i] for i in order]
    state.features = state.features[order] if order else state.features
    state.errors.sort(key=lambda e: e["rel"])
    return state


def _save_cache(state: Shoot, backbone) -> None:
    """Features first, then the index naming them: a crash between the two leaves a readable old index."""
    digest = hashlib.sha256(state.features.tobytes()).hexdigest()[:16]
    with atomic_path(state.cache / "features.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, state.features)
    index = {
        "version": CACHE_VERSION,
        "backbone": backbone.weights_id,
        "features_sha": digest,
        "frames": state.frames,
        "errors": state.errors,
    }
    atomic_write_json(state.cache / "index.json", index, indent=None)


def _load_cache(cache: Path, backbone) -> tuple[dict, np.ndarray, dict]:
    """(rel, size, mtime) -> (frame, row), the features, and the cached errors; empty when unusable."""
    try:
        index = json.loads((cache / "index.json").read_text(encoding="utf-8"))
        features = np.load(cache / "features.npy")
    except (OSError, ValueError):
        return {}, np.zeros((0, backbone.feature_dim), np.float32), {}
    usable = (
        index.get("version") == CACHE_VERSION
        and index.get("backbone") == backbone.weights_id
        and len(features) == len(index.get("frames", []))
        and index.get("features_sha") == hashlib.sha256(features.tobytes()).hexdigest()[:16]
    )
    if not usable:
        return {}, np.zeros((0, backbone.feature_dim), np.float32), {}
    key = lambda e: (e["rel"], e["size"], e["mtime_ns"])  # noqa: E731
    frames = {key(f): (f, row) for row, f in enumerate(index["frames"])}
    return frames, features, {key(e): e for e in index.get("errors", [])}
