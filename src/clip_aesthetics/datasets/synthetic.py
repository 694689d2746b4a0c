"""A synthetic AVA-format dataset with planted, measurable aesthetic signal, for tests and demos.

:func:`make_synthetic_ava` writes a folder laid out exactly like ``AVA_dataset`` (``AVA.txt`` with its 15
columns, ``tags.txt``, ``challenges.txt``, ``aesthetics_image_lists/generic_test.jpgl``, ``images/<id>.jpg``)
so every AVA code path can run offline in seconds.

Each image is a small photo-like scene: a sky gradient over textured ground, a subject (ellipse or box) and
a couple of small distractor shapes. Five properties are planted by random edits and then *measured* on the
final pixels:

- exposure: mean luminance in [0, 1]; near mid-grey (0.5) is good, ``-|brightness - 0.5|`` enters quality;
- contrast: standard deviation of luminance (higher is better);
- colourfulness: Hasler & Suesstrunk's metric on RGB in [0, 1] (higher is better);
- sharpness: ``log10(1 + var(Laplacian of luminance * 255))``, lowered by a Gaussian blur (higher is better);
- composition: distance of the subject's centre to the nearest rule-of-thirds point, in units of the
  image size (closer is better).

The latent quality is ``q = standardise(sum_k w_k z_k + 0.6 * noise)`` with each property z-scored over the
dataset, weights ``QUALITY_WEIGHTS``. Each image's raters score ``N(5.4 + 0.8 q, 1.4)`` rounded onto 1..10
(tails folded into 1 and 10), so the means spread like AVA's (mean ~5.4, sd ~0.75, ~70% above 5); the vote
histogram is a multinomial draw with about ``raters`` voters (Poisson). ``planted.csv`` lists each id's edits,
measured properties, ``q``, the mean of its votes and whether its image file was written.

To mimic real copies, ``n_missing`` test ids have no image file, and ``n_corrupt`` train images are truncated
JPEGs. Same arguments give byte-identical label files (and identical images with the same Pillow).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy.special import ndtr

from ..constants import N_BINS

QUALITY_WEIGHTS = {
    "exposure": 1.0,
    "contrast": 0.7,
    "colourfulness": 0.7,
    "sharpness": 1.0,
    "composition": 0.8,
}
NOISE_SD = 0.6
# Beyond these a request only exhausts memory (one float64 scene of 100000 px is ~100 GB) or votes.
MIN_SIZE, MAX_SIZE = 16, 4096
MAX_RATERS = 100_000
MEAN_CENTRE, MEAN_SPREAD, RATER_SD = 5.4, 0.8, 1.4
TAGS = ["Abstract", "Animals", "Architecture", "Black and White", "Cityscape", "Landscape", "Macro", "Nature"]
CHALLENGES = ["Sunsets", "Red", "Shadows", "Free Study", "Minimalism", "Rule of Thirds"]
PLANTED_COLUMNS = [
    "id",
    "image",
    "exposure_shift",
    "contrast_gain",
    "saturation_gain",
    "blur_sigma",
    "brightness",
    "contrast",
    "colourfulness",
    "sharpness",
    "thirds_distance",
    "q",
    "mean",
]
_LUMA = np.array([0.299, 0.587, 0.114])
_THIRDS = np.array([(x, y) for x in (1 / 3, 2 / 3) for y in (1 / 3, 2 / 3)])


def _scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, tuple[float, float]]:
    """An unedited RGB scene in [0, 1] and its subject centre (x, y) as fractions of the width/height."""
    y = np.linspace(0, 1, h)[:, None, None]
    horizon = rng.uniform(0.45, 0.75)
    sky = rng.uniform(0.35, 0.9, 3) * (1 - 0.5 * y) + rng.uniform(0.1, 0.5, 3) * y
    ground = rng.uniform(0.1, 0.6, 3) * (0.7 + 0.3 * y)
    img = np.where(y < horizon, sky, ground) * np.ones((1, w, 1))
    img += (y >= horizon) * rng.normal(0, 0.06, (h, w, 1))  # ground texture: what blur visibly removes
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(2):  # distractors: small, so the subject dominates composition
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.03, 0.06) * min(h, w)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = rng.uniform(0, 1, 3)
    cx, cy = rng.uniform(0.12, 0.88), rng.uniform(0.12, 0.88)
    rx, ry = rng.uniform(0.08, 0.16) * w, rng.uniform(0.08, 0.16) * h
    nx, ny = (xx - cx * w) / rx, (yy - cy * h) / ry
    mask = (nx**2 + ny**2 <= 1) if rng.random() < 0.6 else ((np.abs(nx) <= 1) & (np.abs(ny) <= 1))
    img[mask] = rng.uniform(0, 1, 3) * (1 - 0.3 * ny[mask][:, None])  # shaded so the subject has structure
    return img, (float(cx), float(cy))


def _edit(img: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict[str, float]]:
    """Apply the planted edits (saturation, contrast, exposure, blur); returns uint8 pixels and the edits."""
    edits = {
        "exposure_shift": rng.uniform(-0.3, 0.3),
        "contrast_gain": rng.uniform(0.35, 1.3),
        "saturation_gain": rng.uniform(0.1, 1.4),
        "blur_sigma": rng.uniform(0, 2.5) * size / 128 if rng.random() < 0.7 else 0.0,
    }
    grey = img @ _LUMA
    img = grey[..., None] + edits["saturation_gain"] * (img - grey[..., None])
    img = img.mean() + edits["contrast_gain"] * (img - img.mean()) + edits["exposure_shift"]
    pixels = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
    if edits["blur_sigma"] > 0:
        pixels = pixels.filter(ImageFilter.GaussianBlur(edits["blur_sigma"]))
    return np.asarray(pixels), {k: float(v) for k, v in edits.items()}


def measure(pixels: np.ndarray) -> dict[str, float]:
    """Brightness, contrast, colourfulness and sharpness of uint8 RGB pixels (defined in the module doc)."""
    rgb = pixels.astype(np.float64) / 255
    luma = rgb @ _LUMA
    rg, yb = rgb[..., 0] - rgb[..., 1], 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    colourfulness = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    lap = luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1] - 4 * luma[1:-1, 1:-1]
    return {
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "colourfulness": float(colourfulness),
        "sharpness": float(np.log10(1 + (lap * 255).var())),
    }


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def _latent_quality(props: list[dict[str, float]], rng: np.random.Generator) -> np.ndarray:
    col = {k: np.array([p[k] for p in props]) for k in props[0]}
    terms = {
        "exposure": -np.abs(col["brightness"] - 0.5),
        "contrast": col["contrast"],
        "colourfulness": col["colourfulness"],
        "sharpness": col["sharpness"],
        "composition": -col["thirds_distance"],
    }
    raw = sum(w * _zscore(terms[k]) for k, w in QUALITY_WEIGHTS.items())
    return _zscore(raw + NOISE_SD * rng.standard_normal(len(props)))


def _votes(q: np.ndarray, rng: np.random.Generator, raters: int) -> np.ndarray:
    """Vote histograms (N, 10): raters' scores ~ N(5.4 + 0.8 q, 1.4) rounded onto 1..10, tails folded."""
    mu = MEAN_CENTRE + MEAN_SPREAD * q
    edges = np.concatenate([[-np.inf], np.arange(1.5, 10.5), [np.inf]])
    cdf = ndtr((edges[None, :] - mu[:, None]) / RATER_SD)
    probs = np.diff(cdf, axis=1)
    n_voters = np.maximum(rng.poisson(raters, len(q)), 10)
    return np.stack([rng.multinomial(n, p / p.sum()) for n, p in zip(n_voters, probs, strict=True)])


def _write_lists(
    out: Path, ids: list[str], votes: np.ndarray, test_ids: list[str], rng: np.random.Generator
) -> None:
    """AVA.txt, tags.txt, challenges.txt and generic_test.jpgl in AVA's formats."""
    tag1 = rng.integers(0, len(TAGS) + 1, len(ids))
    tag2 = np.where(rng.random(len(ids)) < 0.4, rng.integers(1, len(TAGS) + 1, len(ids)), 0)
    challenge = rng.integers(1, len(CHALLENGES) + 1, len(ids))
    lines = [
        " ".join(map(str, [row, image_id, *v, tag1[row - 1], tag2[row - 1], challenge[row - 1]]))
        for row, (image_id, v) in enumerate(zip(ids, votes.tolist(), strict=True), start=1)
    ]
    (out / "AVA.txt").write_text("\n".join(lines) + "\n")
    (out / "tags.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(TAGS, start=1)))
    (out / "challenges.txt").write_text(
        "".join(f"{i} {name}\n" for i, name in enumerate(CHALLENGES, start=1))
    )
    (out / "aesthetics_image_lists").mkdir(exist_ok=True)
    (out / "aesthetics_image_lists" / "generic_test.jpgl").write_text("".join(f"{i}\n" for i in test_ids))


DEMO_READABLE_TEST = 5  # what `synth-ava` keeps, so that even a small demo set can be evaluated


def n_test_ids(n: int, test_fraction: float, n_missing: int, min_readable_test: int = 0) -> int:
    """Ids in the test list: ``test_fraction`` of ``n``, but enough that ``min_readable_test`` of them
    exist besides the missing ones (within half the set): ``--n 24`` would otherwise list 2 test ids,
    both missing."""
    wanted = min(n, max(1, round(test_fraction * n)))
    if n_missing == 0 or wanted - n_missing >= min_readable_test:
        return wanted
    return max(wanted, min(n_missing + min_readable_test, n // 2))


def _check_sizes(
    n: int,
    size: int,
    raters: int,
    test_fraction: float,
    n_missing: int,
    n_corrupt: int,
    min_readable_test: int,
) -> None:
    """Refuse impossible or memory-exhausting requests before anything is written."""
    if n < 1 or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"need n >= 1 and size in [{MIN_SIZE}, {MAX_SIZE}] pixels, got n={n}, size={size}")
    if not 1 <= raters <= MAX_RATERS:
        raise ValueError(f"raters must be in [1, {MAX_RATERS:,}], got {raters}")
    if not 0.0 <= test_fraction <= 1.0 or n_missing < 0 or n_corrupt < 0:
        raise ValueError("test_fraction must be in [0, 1]; n_missing and n_corrupt must be >= 0")
    n_train = n - n_test_ids(n, test_fraction, n_missing, min_readable_test)
    if n_corrupt > n_train:
        raise ValueError(f"n_corrupt={n_corrupt} exceeds the {n_train} train images of n={n}")


def make_synthetic_ava(
    out_dir: Path | str,
    n: int = 200,
    seed: int = 0,
    size: int = 128,
    raters: int = 200,
    *,
    test_fraction: float = 0.1,
    n_missing: int = 2,
    n_corrupt: int = 0,
    min_readable_test: int = 0,
    exist_ok: bool = False,
) -> Path:
    """Write a synthetic AVA-format dataset (see the module docstring for what it plants).

    Args:
        out_dir: Folder to create; it plays the role of ``AVA_dataset``.
        n: Number of images (lines of ``AVA.txt``).
        seed: Seed of everything random.
        size: Longer image side in pixels (the other is 3/4 of it).
        raters: Mean number of voters per image.
        test_fraction: Fraction of ids listed in ``generic_test.jpgl``.
        n_missing: Test ids whose image file is not written (as in real copies).
        n_corrupt: Train images written as truncated JPEGs, for decoder error handling.
        min_readable_test: Test ids that have an image, at least (the test list grows to hold them, up to
            half the set), so that a small set can be evaluated; ``synth-ava`` asks for
            :data:`DEMO_READABLE_TEST`.
        exist_ok: Allow writing into a non-empty folder (stale images from earlier runs are not removed).

    Returns:
        ``out_dir`` as a Path.
    """
    _check_sizes(n, size, raters, test_fraction, n_missing, n_corrupt, min_readable_test)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not exist_ok:
        raise FileExistsError(f"{out} is not empty; pass exist_ok=True to write into it")
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in 1000 + np.cumsum(rng.integers(1, 5, n))]  # gaps, so id != row index as in AVA
    order = rng.permutation(n)
    n_test = n_test_ids(n, test_fraction, n_missing, min_readable_test)
    test_idx = set(order[:n_test].tolist())
    missing = set(order[: min(n_missing, n_test)].tolist())
    corrupt = set(order[n_test : n_test + n_corrupt].tolist())

    planted: list[dict[str, float]] = []
    for i, image_id in enumerate(ids):
        h, w = (round(size * 3 / 4), size) if rng.random() < 0.75 else (size, round(size * 3 / 4))
        scene, (cx, cy) = _scene(rng, h, w)
        pixels, edits = _edit(scene, rng, size)
        thirds = float(np.min(np.hypot(*(_THIRDS - (cx, cy)).T)))
        planted.append({**edits, **measure(pixels), "thirds_distance": thirds})
        if i not in missing:
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
            data = buf.getvalue()
            (out / "images" / f"{image_id}.jpg").write_bytes(data[: len(data) // 2] if i in corrupt else data)

    q = _latent_quality(planted, rng)
    votes = _votes(q, rng, raters)
    _write_lists(out, ids, votes, [ids[i] for i in sorted(test_idx)], rng)
    means = votes @ np.arange(1, N_BINS + 1) / votes.sum(axis=1)
    with (out / "planted.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PLANTED_COLUMNS)
        for i, image_id in enumerate(ids):
            status = "missing" if i in missing else "corrupt" if i in corrupt else "ok"
            values = [planted[i][k] for k in PLANTED_COLUMNS[2:-2]] + [q[i], means[i]]
            writer.writerow([image_id, status, *(f"{v:.6f}" for v in values)])
    return out
