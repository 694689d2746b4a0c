"""The review session without a browser: progress while analysing, an instant reopen, labels, heat maps."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from clip_aesthetics.app.session import NotReady, ReviewSession
from clip_aesthetics.app.why import grid_shape, occlusion_variants
from clip_aesthetics.culling.cull import write_sidecars
from clip_aesthetics.culling.xmp import Labels, read_labels, sidecar_path
from clip_aesthetics.encoders.backbones import load_backbone
from clip_aesthetics.encoders.prompts import PromptGroups
from clip_aesthetics.scorers import ZeroShotScorer
from conftest import photo


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


def test_occlusion_heat_map_covers_the_whole_frame_in_one_batch(photo_dir: Path, scorer, monkeypatch) -> None:
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    variants = occlusion_variants(image, 4)
    assert variants.shape == (17, 3, 32, 32) and torch.equal(variants[0], image)
    cell = variants[1 + 1 * 4 + 2]  # row 1, column 2: pixels 8-16 x 16-24 greyed with the mean colour
    mean = image.float().mean(dim=(1, 2)).round().to(torch.uint8)
    assert torch.equal(cell[:, 8:16, 16:24], mean[:, None, None].expand(3, 8, 8))
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[8:16, 16:24] = False
    assert torch.equal(cell[:, outside], image[:, outside])
    assert grid_shape(3000, 2000) == (4, 6) and grid_shape(2000, 3000) == (6, 4)  # 3:2, either way up

    session, _ = analysed(photo_dir, scorer)
    calls = []
    real = scorer.score_images
    monkeypatch.setattr(scorer, "score_images", lambda batch, *a: calls.append(len(batch)) or real(batch, *a))
    heat = session.why("img1.jpg")  # 96 x 72 (4:3): 6 columns, 4.5 -> 5 rows
    assert calls == [1 + 5 * 6] and heat["crop"] == [0.0, 0.0, 1.0, 1.0]
    photo = Image.open(photo_dir / "img1.jpg").convert("RGB")  # the whole frame, squashed, nothing cropped
    size = scorer.backbone.preprocess_cfg.size
    squashed = TF.resize(photo, [size, size], interpolation=TF.InterpolationMode.BICUBIC)
    pixels = torch.from_numpy(np.array(squashed)).permute(2, 0, 1)
    scores = real(occlusion_variants(pixels, 5, 6)).score.numpy()
    np.testing.assert_allclose(np.array(heat["grid"]).ravel(), scores[0] - scores[1:], atol=1e-5)
    assert session.why("img1.jpg") is heat and calls == [1 + 5 * 6]  # computed once per scorer


def test_undo_and_redo_put_back_exactly_what_the_sidecar_held(photo_dir: Path, scorer) -> None:
    session, _ = analysed(photo_dir, scorer)
    session.label("img1.jpg", "stars", 4)
    session.label("img1.jpg", "reject")
    assert read_labels(photo_dir / "img1.jpg").rejected
    assert session.undo() == {
        "path": "img1.jpg",
        "stars": 4,
        "rejected": False,
        "picked": False,
        "machine": False,
    }
    assert read_labels(photo_dir / "img1.jpg") == Labels(4, None)
    session.undo()
    assert read_labels(photo_dir / "img1.jpg") == Labels()  # before any key: no rating at all
    assert session.undo() == {"path": None}  # nothing left to undo
    session.redo()
    session.redo()
    assert read_labels(photo_dir / "img1.jpg").rejected and read_labels(photo_dir / "img1.jpg").stars == 4
    session.label("img2.jpg", "pick")  # a new key press clears what could be redone
    assert session.redo() == {"path": None}
    write_sidecars([{"path": str(photo_dir / "img3.png"), "best": True, "stars": 5}])  # cull --xmp's proposal
    session.label("img3.png", "stars", 1)
    assert read_labels(photo_dir / "img3.png") == Labels(1, None)  # yours now: no machine mark
    session.undo()
    assert read_labels(photo_dir / "img3.png").machine  # the proposal is back, still marked as the machine's


def rated_shoot(folder: Path, n: int = 16) -> Path:
    folder.mkdir()
    for i in range(n):
        photo(200 + i).save(folder / f"p{i:02d}.jpg")
    return folder


def test_taste_is_saved_reloaded_and_used_only_when_it_beats_the_generic_score(
    tmp_path: Path, scorer
) -> None:
    folder = rated_shoot(tmp_path / "shoot")
    session, _ = analysed(folder, scorer)
    stacks = {g["stack"]: sorted(f["path"] for f in g["frames"]) for g in session.photos()["groups"]}
    direction = np.random.default_rng(4).normal(size=session.shoot.features.shape[1])
    unit = session.shoot.features / np.linalg.norm(session.shoot.features, axis=1, keepdims=True)
    planted = np.argsort(np.argsort(unit @ direction))  # a taste along one direction of the embedding
    for i, frame in enumerate(session.shoot.frames):
        session.label(frame["rel"], "stars", 1 + int(planted[i] * 5 // len(planted)))
    taste = session.learn_taste()
    assert Path(taste["file"]).is_file()
    assert taste["applied"] == (taste["cv_srcc"] > taste["generic_srcc"])
    assert session.scorer.method == ("taste" if taste["applied"] else "zeroshot")
    # stacks are tracked by their burst, not by their rank: the same id holds the same frames after re-ranking
    assert {g["stack"]: sorted(f["path"] for f in g["frames"]) for g in session.photos()["groups"]} == stacks

    again, _ = analysed(folder, scorer)  # a new session of the same shoot reloads the learned head
    assert again.taste is not None and again.taste["cv_srcc"] == taste["cv_srcc"]
    assert again.scorer.method == session.scorer.method

    # the case: a head whose cross-validated SRCC is below the generic score's does not rank
    fitted = again.scorer if again.scorer.method == "taste" else None
    again._use_taste(fitted or scorer, {**taste, "cv_srcc": -0.32, "generic_srcc": 0.1})
    assert not again.taste["applied"] and again.scorer is again.generic
    assert "-0.32" in again.taste["reason"] and again.photos()["scorer"] == "zeroshot"


def test_the_model_loads_in_the_background(photo_dir: Path, scorer) -> None:
    """The session takes a function that builds the scorer; until it has, the status says what happens."""
    gate = threading.Event()
    session = ReviewSession(photo_dir, lambda: gate.wait(30) and scorer, workers=0)
    thread = session.start()
    deadline = time.monotonic() + 10
    while session.status["state"] != "loading":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert "encoding its prompts" in session.status["phase"] and session.shoot is None
    with pytest.raises(NotReady):
        session.photos()
    gate.set()
    thread.join(60)
    assert session.status["state"] == "ready" and session.scorer is scorer
    assert len(session.photos()["groups"]) >= 1


def test_export_goes_only_to_the_folder_given_at_launch(photo_dir: Path, scorer, tmp_path: Path) -> None:
    session, _ = analysed(photo_dir, scorer)
    with pytest.raises(ValueError, match="--export-to"):
        session.export()
    session.label("img1.jpg", "pick")
    session.export_to = tmp_path / "picks"
    done = session.export()
    exported = {
        p.relative_to(tmp_path / "picks").as_posix() for p in (tmp_path / "picks").rglob("*") if p.is_file()
    }
    assert {"img1.jpg", "img1.jpg.xmp"} <= exported and done["picks"] >= 1


def test_a_non_finite_rating_fails_one_photo_not_the_analysis(photo_dir: Path, scorer) -> None:
    (photo_dir / "img1.jpg.xmp").write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        ' xmp:Rating="Infinity"/></rdf:RDF></x:xmpmeta>',
        encoding="utf-8",
    )
    session, _ = analysed(photo_dir, scorer)
    assert session.status["state"] == "ready"
    listed = session.photos()["sidecar_errors"]
    assert [e["path"] for e in listed] == ["img1.jpg"] and "img1.jpg.xmp" in listed[0]["error"]


def test_photos_appear_while_the_shoot_is_analysed(photo_dir: Path, scorer, monkeypatch) -> None:
    from clip_aesthetics.culling import shoot as shoot_module

    monkeypatch.setattr(shoot_module, "PARTIAL_EVERY", 0.0)  # hand over every batch
    session = ReviewSession(photo_dir, scorer, workers=0, batch_size=3)
    seen = []
    original = session._partial
    session._partial = lambda shoot: (original(shoot), seen.append(session.photos()))
    session._analyse()
    counts = [sum(len(g["frames"]) for g in listing["groups"]) for listing in seen]
    assert counts == [0, 3, 6, 8] and all(listing["provisional"] for listing in seen)
    scores = [g["frames"][0]["score"] for g in seen[-1]["groups"]]
    assert scores == sorted(scores, reverse=True)  # best first already
    assert session.photos()["provisional"] is False


def test_names_that_are_not_utf8_are_listed_and_rated(photo_dir: Path, scorer) -> None:
    """A file name with a Latin-1 byte (not UTF-8) is shown as text (\\xe9) and rated through that text."""
    import json
    import os

    raw_name = os.fsdecode(b"caf\xe9.jpg")
    photo(77).save(photo_dir / raw_name)
    session, _ = analysed(photo_dir, scorer)
    listing = session.photos()
    json.dumps(listing, ensure_ascii=False).encode("utf-8")  # what the server sends: valid UTF-8
    names = [f["path"] for g in listing["groups"] for f in g["frames"]]
    assert "caf\\xe9.jpg" in names
    assert session.label("caf\\xe9.jpg", "stars", 2)["path"] == "caf\\xe9.jpg"
    assert read_labels(photo_dir / raw_name).rating == 2
    assert os.fsencode(raw_name + ".xmp") in os.listdir(os.fsencode(photo_dir))
    assert session.frame("caf\\xe9.jpg") is not None


def test_a_pairs_rating_shows_from_the_raw_sidecar_while_analysing(
    tmp_path: Path, scorer, monkeypatch
) -> None:
    """The provisional list reads a RAW+JPEG pair's labels where the final one does: the RAW's sidecar."""
    from clip_aesthetics.culling import shoot as shoot_module
    from raw_data import make_dng

    monkeypatch.setattr(shoot_module, "PARTIAL_EVERY", 0.0)
    folder = tmp_path / "shoot"
    folder.mkdir()
    image = photo(1)
    image.save(folder / "pair.jpg", quality=92)
    make_dng(image, folder / "pair.dng", taken="2024:05:01 10:00:00")
    sidecar_path(folder / "pair.dng").write_text(  # the photographer rated the RAW; the JPEG has no sidecar
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4"/>'
        "</rdf:RDF></x:xmpmeta>\n",
        encoding="utf-8",
    )
    session = ReviewSession(folder, scorer, workers=0, batch_size=2)
    seen = []
    original = session._partial
    session._partial = lambda shoot: (original(shoot), seen.append(session.photos()))
    session._analyse()
    provisional = [f for listing in seen for g in listing["groups"] for f in g["frames"]]
    final = [f for g in session.photos()["groups"] for f in g["frames"]]
    assert provisional and {f["stars"] for f in provisional} == {f["stars"] for f in final} == {4}
