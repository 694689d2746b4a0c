"""The technical checks' thresholds on real photographs (scikit-image's), with a planted blur and an exposure
ladder: sharp photos are never "blurred", blurred copies always are; clipping grows with exposure; soft or
badly clipped frames never get top stars; an over-exposed frame stays in its burst."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from clip_aesthetics.culling.cull import FLAWED_MAX_STARS, cull_rows
from clip_aesthetics.culling.grouping import group_frames
from clip_aesthetics.culling.shoot import Shoot
from clip_aesthetics.culling.technical import at_fixed_scale, technical, tone_signature

data = pytest.importorskip("skimage.data", reason="scikit-image ships the photographs")
PHOTOS = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "motorcycle_left",
    "hubble_deep_field",
    "grass",
]
PHOTOS += ["brick", "coins", "retina", "moon"]


def real(name: str) -> Image.Image:
    """One of the photographs inside the scikit-image package (read from its folder: never downloaded)."""
    folder = Path(data.__file__).parent
    return Image.open(next(folder.glob(f"{name}.*"))).convert("RGB")


def exposed(image: Image.Image, stops: float) -> Image.Image:
    """``stops`` more exposure: linear light (sRGB-ish gamma 2.2 undone) times 2**stops, clipped."""
    linear = (np.asarray(image, np.float64) / 255) ** 2.2 * 2.0**stops
    return Image.fromarray((np.clip(linear, 0, 1) ** (1 / 2.2) * 255).round().astype(np.uint8))


@pytest.mark.parametrize("name", PHOTOS)
def test_sharp_photos_are_not_blurred_and_blurred_copies_are(name: str) -> None:
    photo = at_fixed_scale(real(name))
    assert "blurred" not in technical(photo).flags
    for radius in (2, 4):  # a Gaussian blur of sigma 2 or 4 pixels at the fixed scale
        assert "blurred" in technical(photo.filter(ImageFilter.GaussianBlur(radius))).flags


@pytest.mark.parametrize("name", PHOTOS)
def test_the_exposure_ladder(name: str) -> None:
    photo = at_fixed_scale(real(name))
    ladder = [technical(exposed(photo, stops)) for stops in (0, 1, 2, 3)]
    highlights = [check.highlights for check in ladder]
    assert highlights == sorted(highlights)  # more light, more clipped
    assert "blown" not in ladder[0].flags  # as photographed: never badly clipped
    independent = [(np.asarray(exposed(photo, s)) >= 250).all(axis=2).mean() for s in (0, 1, 2, 3)]
    assert [("blown" in c.flags) for c in ladder] == [f > 0.25 for f in independent]
    assert tone_correlation(photo, exposed(photo, 2)) >= 0.8 or name == "brick"  # bricks clip together


def tone_correlation(a: Image.Image, b: Image.Image) -> float:
    return float(np.corrcoef(tone_signature(a), tone_signature(b))[0, 1])


def test_different_photos_have_different_tone_signatures() -> None:
    pairs = [(a, b) for i, a in enumerate(PHOTOS) for b in PHOTOS[i + 1 :]]
    assert (
        max(tone_correlation(real(a).resize((300, 200)), real(b).resize((300, 200))) for a, b in pairs) < 0.6
    )


def frame(name: str, image: Image.Image, time: float) -> dict:
    checks = technical(at_fixed_scale(image))
    return {
        "rel": f"{name}.jpg",
        "time": time,
        "time_source": "exif",
        "time_text": "",
        **checks.to_dict(),
        "tone": tone_signature(image),
        "thumb": "",
    }


def test_flawed_frames_never_get_top_stars_and_an_over_exposed_frame_stays_in_its_burst() -> None:
    astronaut, coffee, chelsea = (at_fixed_scale(real(n)) for n in ("astronaut", "coffee", "chelsea"))
    frames = (
        [
            frame("burst_0", astronaut, 0.0),
            frame("burst_1_bright", exposed(astronaut, 2), 0.5),  # 2 stops over: 37% blown
            frame("burst_2_blurred", astronaut.filter(ImageFilter.GaussianBlur(3)), 1.0),
            frame("coffee", coffee, 2.0),  # another scene, moments later
            frame("chelsea", chelsea, 60.0),
        ]
        + [frame(f"other_{k}", at_fixed_scale(real(n)), 120.0 + 60 * k) for k, n in enumerate(PHOTOS[3:8])]
    )
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(len(frames), 32))
    embeddings[2] = embeddings[0] + rng.normal(0, 0.05, 32)  # the blurred frame still looks alike to CLIP
    # the over-exposed frame's embedding is unlike the others (as exposure moves a real embedding away)
    shoot = Shoot(Path("/shoot"), Path("/cache"), frames, embeddings.astype(np.float32))
    scores = np.linspace(10, 1, len(frames))  # the flawed frames get the highest scores
    scores[[1, 2]] = 10.0
    rows = {Path(r["path"]).name: r for r in cull_rows(shoot, scores)}
    burst = {rows[f"burst_{k}"]["group"] for k in ("0.jpg", "1_bright.jpg", "2_blurred.jpg")}
    assert len(burst) == 1 and rows["coffee.jpg"]["group"] not in burst  # one burst, coffee apart
    assert rows["burst_0.jpg"]["best"] and "soft" not in rows["burst_0.jpg"]["flags"]
    for name, flag in (("burst_1_bright.jpg", "blown"), ("burst_2_blurred.jpg", "blurred")):
        assert flag in rows[name]["flags"].split(";") and rows[name]["stars"] <= FLAWED_MAX_STARS
    assert rows["burst_0.jpg"]["stars"] == 5  # sharp and well exposed: top stars are allowed


def test_tone_links_only_within_a_burst() -> None:
    """Alike in tone but far apart in time (or on another clock): not linked by tone."""
    photo = at_fixed_scale(real("astronaut"))
    tones = [tone_signature(photo), tone_signature(exposed(photo, 1))]
    embeddings = np.eye(2, 8)
    assert group_frames(embeddings, [0.0, 1.0], ["exif"] * 2, tones=tones).tolist() == [0, 0]
    assert group_frames(embeddings, [0.0, 100.0], ["exif"] * 2, tones=tones).tolist() == [0, 1]
    assert group_frames(embeddings, [0.0, 1.0], ["exif", "file"], tones=tones).tolist() == [0, 1]
    assert group_frames(embeddings, tones=tones).tolist() == [0, 1]  # no times: content alone
