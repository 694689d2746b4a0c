"""Culling: capture times, technical checks, grouping of bursts, the sharp-frame pick, percentile stars."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import ndimage

from clip_aesthetics.culling.capture import capture_time
from clip_aesthetics.culling.cull import percentile_stars
from clip_aesthetics.culling.grouping import group_frames, rank_group
from clip_aesthetics.culling.technical import SHARPNESS_SCALE, clipping, sharpness, technical
from conftest import photo


def exif_with(original: str, subsec: str | None = None, offset: str | None = None) -> Image.Exif:
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    sub[36867] = original
    if subsec is not None:
        sub[37521] = subsec
    if offset is not None:
        sub[36881] = offset
    return exif


def test_capture_time_from_exif_with_subseconds_and_offset(tmp_path: Path) -> None:
    photo(0).save(tmp_path / "a.jpg", exif=exif_with("2024:05:01 10:00:00", "25", "+02:00"))
    photo(0).save(tmp_path / "b.jpg", exif=exif_with("2024:05:01 10:00:01", "5"))
    a, b = capture_time(tmp_path / "a.jpg"), capture_time(tmp_path / "b.jpg")
    assert (a.source, a.text) == ("exif", "2024-05-01T10:00:00.250+02:00")
    assert a.seconds == pytest.approx(1714550400.25)  # 08:00:00.25 UTC
    assert (b.source, b.text) == ("exif", "2024-05-01T10:00:01.500")  # no offset: the camera's clock


def test_capture_time_falls_back_to_the_file_time(tmp_path: Path) -> None:
    photo(0).save(tmp_path / "plain.png")
    photo(0).save(tmp_path / "zero.jpg", exif=exif_with("0000:00:00 00:00:00"))
    for name in ("plain.png", "zero.jpg"):
        found = capture_time(tmp_path / name)
        assert found.source == "file"
        assert found.seconds == pytest.approx((tmp_path / name).stat().st_mtime_ns / 1e9)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_grouping_needs_close_times_and_alike_content() -> None:
    rng = np.random.default_rng(0)
    scene_a, scene_b = unit(rng.normal(size=16)), unit(rng.normal(size=16))
    jitter = lambda v: unit(v + rng.normal(0, 0.02, 16))  # noqa: E731  (cosine ~0.998 with v)
    embeddings = np.stack(
        [jitter(scene_a), jitter(scene_a), jitter(scene_a), jitter(scene_b), jitter(scene_a), jitter(scene_a)]
    )
    # a burst of three (chained: 0-8 s apart end to end), scene b in the middle of it, scene a again later
    times = [0.0, 4.0, 8.0, 5.0, 300.0, 301.0]
    groups = group_frames(embeddings, times, ["exif"] * 6, similarity=0.9, max_gap=5.0)
    assert groups.tolist() == [0, 0, 0, 1, 2, 2]
    # without capture times content alone decides: both visits to scene a are one group
    assert group_frames(embeddings, similarity=0.9).tolist() == [0, 0, 0, 1, 0, 0]
    # times from different clocks (EXIF vs file) are not compared: content decides between those frames
    mixed = group_frames(embeddings, times, ["exif"] * 4 + ["file"] * 2, similarity=0.9, max_gap=5.0)
    assert mixed.tolist() == [0, 0, 0, 1, 0, 0]


def test_grouping_matches_a_brute_force_reference() -> None:
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(60, 8))
    times = np.sort(rng.uniform(0, 200, 60))
    groups = group_frames(embeddings, times.tolist(), ["exif"] * 60, similarity=0.6, max_gap=6.0)
    unit_rows = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    linked = (unit_rows @ unit_rows.T >= 0.6) & (np.abs(times[:, None] - times[None, :]) <= 6.0)
    label = list(range(60))  # independent: repeated label propagation until nothing changes
    changed = True
    while changed:
        changed = False
        for i, j in zip(*np.nonzero(linked), strict=True):
            if label[i] != label[j]:
                label[i] = label[j] = min(label[i], label[j])
                changed = True
    same = np.equal.outer(label, label)
    assert (np.equal.outer(groups, groups) == same).all()
    assert groups[0] == 0 and len(set(groups)) > 10


def motion_blurred(image: Image.Image, length: int = 9) -> Image.Image:
    """A horizontal motion blur: each pixel the mean of ``length`` neighbours along the row."""
    array = np.asarray(image).astype(np.float64)
    blurred = ndimage.uniform_filter1d(array, size=length, axis=1, mode="reflect")
    return Image.fromarray(np.clip(blurred + 0.5, 0, 255).astype(np.uint8))


def detailed(seed: int) -> Image.Image:
    """A photo with texture everywhere (grass, not sky), at camera-like size."""
    base = np.asarray(photo(seed, (900, 600))).astype(np.float64)
    texture = np.random.default_rng(seed).normal(0, 25, base.shape[:2])[..., None]
    return Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8))


def test_sharpness_is_the_variance_of_the_laplacian_at_a_fixed_scale() -> None:
    image = detailed(3)
    small = image.resize((SHARPNESS_SCALE * 3 // 2, SHARPNESS_SCALE), Image.Resampling.LANCZOS)
    grey = np.asarray(small.convert("L"), dtype=np.float64)
    padded = np.pad(grey, 1, mode="symmetric")
    laplacian = (
        padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * padded[1:-1, 1:-1]
    )
    assert sharpness(image) == pytest.approx(laplacian.var(), rel=1e-9)
    # the fixed scale: a larger copy of the same frame measures about the same
    assert sharpness(image.resize((1800, 1200), Image.Resampling.LANCZOS)) == pytest.approx(
        sharpness(image), rel=0.1
    )


def test_a_motion_blurred_frame_never_beats_its_sharp_sibling() -> None:
    sharp = detailed(4)
    frames = [motion_blurred(sharp), sharp, sharp.filter(ImageFilter.GaussianBlur(3))]
    checks = [technical(f) for f in frames]
    assert checks[0].sharpness < 0.5 * checks[1].sharpness
    scores = [9.0, 4.0, 8.5]  # the blurred frames score higher aesthetically
    order, soft = rank_group(
        scores, *[[getattr(c, k) for c in checks] for k in ("sharpness", "highlights", "shadows")]
    )
    assert order[0] == 1 and soft == [True, False, True]
    assert order == [1, 0, 2]  # soft frames after the sharp one, by score among themselves
    # when every frame is equally sharp, the score decides
    assert rank_group([1.0, 3.0, 2.0], [5.0, 5.0, 5.0], [0, 0, 0], [0, 0, 0])[0] == [1, 2, 0]


def test_clipping_fractions_and_flags() -> None:
    array = np.full((100, 100, 3), 128, np.uint8)
    array[:30] = 255  # blown
    array[90:, :50] = 0  # crushed
    array[50, :10] = (255, 255, 0)  # one channel at the top is not blown
    blown, crushed = clipping(Image.fromarray(array))
    assert blown == pytest.approx(0.30) and crushed == pytest.approx(0.05)
    # flat grey: no detail (blurred); 30% white is beyond the flag and the "blown" limit; 5% crushed is at
    # the limit, not over
    assert technical(Image.fromarray(array)).flags == ["blurred", "highlights", "blown"]


def test_percentile_stars_by_quintile() -> None:
    scores = np.array([3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.3, 5.8, 9.7, 7.9])
    # ranks from the bottom 1..10 -> percentiles 0.05..0.95 -> quintiles
    assert percentile_stars(scores).tolist() == [2, 1, 3, 1, 5, 2, 3, 4, 5, 4]
    assert percentile_stars(np.array([5.0])).tolist() == [3]


def decoded_size(source, image: Image.Image) -> tuple[int, int]:
    """A picklable analysis for the decoding workers: the size the worker decoded."""
    return image.size


@pytest.mark.parametrize("workers", [0, 1])
def test_iter_batches_runs_the_analysis_where_it_decodes(tmp_path: Path, workers: int) -> None:
    from clip_aesthetics.encoders.backbones import PreprocessConfig
    from clip_aesthetics.pipeline.images import iter_batches

    photo(1, (1800, 1200)).save(tmp_path / "a.jpg")
    photo(2, (90, 60)).save(tmp_path / "b.png")
    (tmp_path / "c.jpg").write_bytes(b"broken")
    sources = [str(tmp_path / n) for n in ("a.jpg", "c.jpg", "b.png")]
    cfg = PreprocessConfig(size=32, resize_size=32)
    for draft, large in ((True, (225, 150)), (400, (900, 600))):  # JPEG DCT scaling: 1/8, then 1/2
        found, errors = {}, []
        for batch in iter_batches(
            sources, cfg, batch_size=2, workers=workers, draft=draft, analyse=decoded_size
        ):
            found.update(zip(batch.indices, batch.analyses, strict=True))
            errors += [i for i, _ in batch.errors]
            assert tuple(batch.images.shape[1:]) == (3, 32, 32)
        assert found == {0: large, 2: (90, 60)} and errors == [1]


def test_grouping_alike_frames_in_bounded_memory() -> None:
    """6,000 frames all alike (a time-lapse copied without times): one group, in tiles, not N² links.

    The pairwise links alone would be 36 million pairs (over 500 MB as index arrays); the tiles keep the peak
    to a few megabytes."""
    rng = np.random.default_rng(0)
    embeddings = (np.ones((6000, 16)) + rng.normal(0, 0.01, (6000, 16))).astype(np.float32)
    tracemalloc.start()
    try:
        untimed = group_frames(embeddings, similarity=0.9)
        timed = group_frames(embeddings, [float(i % 7) for i in range(6000)], ["file"] * 6000, similarity=0.9)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (untimed == 0).all() and (timed == 0).all()
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MB"
