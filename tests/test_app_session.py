"""The review session without a browser: progress while analysing, an instant reopen, labels, heat maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clip_aesthetics.app.session import ReviewSession
from clip_aesthetics.app.why import GRID, crop_box, occlusion_variants
from clip_aesthetics.backbones import PreprocessConfig, load_backbone
from clip_aesthetics.culling.xmp import read_labels
from clip_aesthetics.prompts import PromptGroups
from clip_aesthetics.scorers import ZeroShotScorer


@pytest.fixture
def scorer(tiny_clip_spec: str) -> ZeroShotScorer:
    return ZeroShotScorer(load_backbone(tiny_clip_spec), PromptGroups(("a good photo",), ("a bad photo",)))


def analysed(folder: Path, scorer) -> tuple[ReviewSession, list[tuple[int, int]]]:
    session = ReviewSession(folder, scorer, workers=0, batch_size=2)
    seen = []
    original = session._progress
    session._progress = lambda done, total: (seen.append((done, total)), original(done, total))
    session._analyse()
    return session, seen


def test_progress_then_an_instant_reopen(photo_dir: Path, scorer) -> None:
    session, seen = analysed(photo_dir, scorer)
    assert session.status["state"] == "ready", session.status
    assert seen[0] == (0, 8) and seen[-1] == (8, 8)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) >= 5  # batches of 2
    again, seen_again = analysed(photo_dir, scorer)
    assert seen_again == [(8, 8)]  # everything from the cache: nothing decoded
    np.testing.assert_array_equal(again.shoot.features, session.shoot.features)
    assert again.photos() == session.photos()
    frames = [f for g in session.photos()["groups"] for f in g["frames"]]
    assert sorted(f["path"] for f in frames) == sorted(
        p.relative_to(photo_dir).as_posix() for p in photo_dir.rglob("img*")
    )


def test_labels_go_to_the_sidecar_and_unknown_paths_are_refused(photo_dir: Path, scorer) -> None:
    session, _ = analysed(photo_dir, scorer)
    result = session.label("sub/img6.png", "stars", 4)
    assert result == {
        "path": "sub/img6.png",
        "stars": 4,
        "rejected": False,
        "picked": False,
        "machine": False,
    }
    assert read_labels(photo_dir / "sub" / "img6.png").rating == 4
    for bad in ("../img6.png", "sub/../sub/img6.png", str(photo_dir / "img1.jpg"), "nope.jpg"):
        with pytest.raises(KeyError):
            session.label(bad, "reject")
    with pytest.raises(ValueError, match="unknown action"):
        session.label("img1.jpg", "delete")
    with pytest.raises(ValueError, match="0 to 5"):
        session.label("img1.jpg", "stars", 7)


def test_occlusion_heat_map_is_one_batch_of_greyed_cells(photo_dir: Path, scorer, monkeypatch) -> None:
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    variants = occlusion_variants(image, 4)
    assert variants.shape == (17, 3, 32, 32) and torch.equal(variants[0], image)
    cell = variants[1 + 1 * 4 + 2]  # row 1, column 2: pixels 8-16 x 16-24 greyed with the mean colour
    mean = image.float().mean(dim=(1, 2)).round().to(torch.uint8)
    assert torch.equal(cell[:, 8:16, 16:24], mean[:, None, None].expand(3, 8, 8))
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[8:16, 16:24] = False
    assert torch.equal(cell[:, outside], image[:, outside])
    assert crop_box(300, 200, PreprocessConfig(224, 224)) == pytest.approx([1 / 6, 0.0, 2 / 3, 1.0])

    session, _ = analysed(photo_dir, scorer)
    calls = []
    real = scorer.score_images
    monkeypatch.setattr(scorer, "score_images", lambda batch, *a: calls.append(len(batch)) or real(batch, *a))
    heat = session.why("img1.jpg")
    assert calls == [1 + GRID * GRID]  # one batch holds every occluded variant
    scores = real(occlusion_variants(_model_input(photo_dir / "img1.jpg", scorer))).score.numpy()
    np.testing.assert_allclose(np.array(heat["grid"]).ravel(), scores[0] - scores[1:], atol=1e-5)
    assert session.why("img1.jpg") is heat and calls == [1 + GRID * GRID]  # computed once per scorer


def _model_input(path: Path, scorer) -> torch.Tensor:
    from clip_aesthetics.images import open_image, prepare

    return prepare(open_image(path), scorer.backbone.preprocess_cfg)
