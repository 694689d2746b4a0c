"""The personal taste head: ridge with the generic score as a prior, nested CV, a scorer file for `score`."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.culling.fit_taste import _ridge_path, fit_taste, read_ratings_csv
from clip_aesthetics.culling.xmp import Labels, write_labels
from clip_aesthetics.encoders.backbones import load_backbone
from clip_aesthetics.metrics import srcc
from clip_aesthetics.pipeline.images import iter_batches
from clip_aesthetics.scorers import load_scorer
from conftest import photo
from test_cli_score import PROMPT_ARGS


def stars_along(values: np.ndarray) -> np.ndarray:
    """1-5 stars by quintile of ``values``: the planted taste."""
    return 1 + np.searchsorted(np.quantile(values, [0.2, 0.4, 0.6, 0.8]), values)


def test_ridge_matches_the_normal_equations() -> None:
    rng = np.random.default_rng(0)
    z, g, y = rng.normal(size=(40, 12)), rng.normal(size=40), rng.normal(size=40)
    solve = _ridge_path(z, g, y)
    s2 = (
        np.linalg.svd(
            z
            - np.column_stack([np.ones(40), g])
            @ np.linalg.lstsq(np.column_stack([np.ones(40), g]), z, rcond=None)[0],
            compute_uv=False,
        )
        ** 2
    )
    for alpha in (0.01, 1.0, 30.0):
        a, b, w = solve(alpha)
        design = np.column_stack([np.ones(40), g, z])
        penalty = np.diag([0.0, 0.0] + [alpha * s2.mean()] * 12)  # intercept and prior unpenalised
        reference = np.linalg.solve(design.T @ design + penalty, design.T @ y)
        np.testing.assert_allclose([a, b, *w], reference, atol=1e-8)


def test_taste_learns_a_planted_direction_the_generic_score_misses() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(60, 32))
    taste = rng.normal(size=32)
    ratings = stars_along((features / np.linalg.norm(features, axis=1, keepdims=True)) @ taste)
    generic = rng.normal(5, 1, 60)  # knows nothing of this photographer
    fit = fit_taste(features, generic, ratings)
    assert abs(fit.generic_srcc - srcc(generic, ratings)) < 1e-12
    assert abs(fit.generic_srcc) < 0.3
    assert fit.cv_srcc > 0.75


def test_taste_falls_back_to_the_generic_score_when_ratings_follow_it() -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(40, 32))
    generic = rng.normal(5, 1, 40)
    ratings = stars_along(generic + rng.normal(0, 0.1, 40))
    fit = fit_taste(features, generic, ratings)
    assert fit.generic_srcc > 0.9
    assert fit.cv_srcc > fit.generic_srcc - 0.05  # the prior is kept: no worse than the generic score
    assert fit.prior_slope > 0


def test_too_few_ratings_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 10 rated photos"):
        fit_taste(np.ones((5, 4)), np.ones(5), np.arange(5))
    with pytest.raises(ValueError, match="1 distinct"):
        fit_taste(np.random.default_rng(0).normal(size=(20, 4)), np.ones(20), np.full(20, 3.0))


def test_ratings_csv(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("path,rating\na.jpg,4\nsub/b.jpg,1\n", encoding="utf-8")
    ratings = read_ratings_csv(tmp_path / "r.csv")
    assert ratings == {str(tmp_path / "a.jpg"): 4.0, str(tmp_path / "sub" / "b.jpg"): 1.0}
    (tmp_path / "bad.csv").write_text("file,rating\na.jpg,4\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'path' and a 'rating'"):
        read_ratings_csv(tmp_path / "bad.csv")


def test_taste_fit_command_writes_a_scorer_for_score(tmp_path: Path, tiny_clip_spec: str) -> None:
    folder = tmp_path / "rated"
    folder.mkdir()
    paths = []
    for i in range(36):
        paths.append(folder / f"p{i:02d}.jpg")
        photo(100 + i, (64, 48)).save(paths[-1])
    backbone = load_backbone(tiny_clip_spec)
    with torch.inference_mode():
        batch = next(
            iter(iter_batches([str(p) for p in paths], backbone.preprocess_cfg, batch_size=64, workers=0))
        )
        features = backbone.encode_image(backbone.normalize(batch.images)).numpy()
    direction = np.random.default_rng(3).normal(size=features.shape[1])
    planted = (features / np.linalg.norm(features, axis=1, keepdims=True)) @ direction
    ratings = stars_along(planted)
    for path, stars in zip(paths, ratings, strict=True):  # half the photographers use NAME.xmp
        if int(path.stem[1:]) % 2:
            path.with_suffix(".xmp").write_text(
                '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
                '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
                f' xmp:Rating="{stars}"/>'
                "</rdf:RDF></x:xmpmeta>"
            )
        else:
            write_labels(path, Labels(int(stars), None))
    photo(999).save(folder / "unrated.jpg")
    head = tmp_path / "my-taste.safetensors"
    args = [
        "taste",
        "fit",
        str(folder),
        "-o",
        str(head),
        "--model",
        tiny_clip_spec,
        *PROMPT_ARGS,
        "--workers",
        "0",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    scorer = load_scorer(head)
    assert scorer.method == "taste" and scorer.fit["n_ratings"] == 36
    assert scorer.fit["cv_srcc"] > 0.6 > scorer.fit["generic_srcc"] + 0.2
    ranked = tmp_path / "ranked.csv"
    result = CliRunner().invoke(
        app, ["score", str(folder), "--scorer", str(head), "-o", str(ranked), "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: float(r["score"]) for r in csv.DictReader(ranked.open())}
    expected = scorer.score_features(torch.from_numpy(features)).score.numpy()
    np.testing.assert_allclose([rows[p.name] for p in paths], expected, rtol=1e-4)
    assert srcc(expected, ratings) > 0.8


def test_ratings_from_csv_before_sidecars_and_broken_sidecars_reported(tmp_path: Path) -> None:
    from clip_aesthetics.culling.fit_taste import ratings_for

    paths = [tmp_path / f"{n}.jpg" for n in "abcd"]
    write_labels(paths[0], Labels(4, None))
    write_labels(paths[1], Labels(-1, 1))  # a reject counts as 0 stars
    write_labels(paths[2], Labels(2, None))
    (tmp_path / "d.jpg.xmp").write_text("<broken", encoding="utf-8")
    infinite = tmp_path / "e.jpg"
    (tmp_path / "e.jpg.xmp").write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        ' xmp:Rating="1e999"/></rdf:RDF></x:xmpmeta>',
        encoding="utf-8",
    )
    stars, problems, sources = ratings_for([*paths, infinite], {str(paths[2]): 5.0})
    assert stars == [4.0, 0.0, 5.0, None, None]
    assert (
        len(problems) == 2
        and "d.jpg.xmp" in problems[0]
        and "e.jpg.xmp: xmp:Rating is '1e999'" in problems[1]
    )
    assert sources == {"sidecar": 2, "csv": 1}


def test_only_the_photographers_ratings_are_learned_from(tmp_path: Path) -> None:
    """Ratings `cull --xmp` wrote are left out; embedded ones count; each source is counted."""
    from clip_aesthetics.culling.cull import write_sidecars
    from clip_aesthetics.culling.fit_taste import ratings_for

    paths = [tmp_path / f"{n}.jpg" for n in "abcd"]
    for path in paths:
        Image.new("RGB", (8, 8)).save(path)
    write_sidecars([{"path": str(p), "best": True, "stars": 5} for p in paths[:2]])  # machine proposals
    write_labels(paths[1], Labels(2, None))  # the photographer re-rated b in the app
    Image.new("RGB", (8, 8)).save(paths[2], exif=exif_rating(3))  # rated inside the JPEG
    stars, problems, sources = ratings_for(paths)
    assert stars == [None, 2.0, 3.0, None] and not problems
    assert sources == {"machine": 1, "sidecar": 1, "embedded": 1}


def exif_rating(stars: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x4746] = stars
    return exif


@pytest.mark.parametrize(
    ("value", "line"), [("9", 3), ("nan", 3), ("inf", 3), ("-3", 3), ("1e400", 3), ("four", 3)]
)
def test_ratings_csv_refuses_values_that_are_not_stars(tmp_path: Path, value: str, line: int) -> None:
    (tmp_path / "r.csv").write_text(f"path,rating\na.jpg,4\nb.jpg,{value}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"r\.csv:{line}: rating '{value}' is not"):
        read_ratings_csv(tmp_path / "r.csv")
    (tmp_path / "ok.csv").write_text("path,rating\na.jpg,-1\nb.jpg,5\n", encoding="utf-8")
    assert sorted(read_ratings_csv(tmp_path / "ok.csv").values()) == [0.0, 5.0]  # -1: a reject, 0 stars


def test_a_taste_head_on_other_weights_warns_as_a_probe_does(tmp_path: Path, tiny_clip_spec: str) -> None:
    from clip_aesthetics.culling.fit_taste import taste_scorer
    from clip_aesthetics.encoders.prompts import PromptGroups
    from clip_aesthetics.scorers import ZeroShotScorer
    from clip_aesthetics.scorers.registry import save_scorer
    from conftest import TINY_CLIP_CONFIG, save_open_clip_dir

    prior = ZeroShotScorer(load_backbone(tiny_clip_spec), PromptGroups(("a good photo",), ("a bad photo",)))
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, prior.backbone.feature_dim)).astype(np.float32)
    generic = prior.score_features(torch.from_numpy(features)).score.numpy()
    scorer = taste_scorer(prior, fit_taste(features, generic, rng.integers(1, 6, 30).astype(float)))
    save_scorer(scorer, tmp_path / "t.safetensors", scorer.tensors())
    other = load_backbone(f"local-dir:{save_open_clip_dir(tmp_path / 'other', TINY_CLIP_CONFIG, seed=5)}")
    with pytest.warns(UserWarning, match="taste head was fitted on features of"):
        load_scorer(tmp_path / "t.safetensors", backbone=other)
    with warnings.catch_warnings():  # on the weights it was fitted on: no warning
        warnings.simplefilter("error")
        same = load_scorer(tmp_path / "t.safetensors", backbone=prior.backbone)
    assert np.allclose(same.score_features(torch.from_numpy(features)).score.numpy(),
                       scorer.score_features(torch.from_numpy(features)).score.numpy())  # fmt: skip
