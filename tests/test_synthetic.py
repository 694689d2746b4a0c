"""The synthetic AVA generator: format, planted signal, reproducibility."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from clip_aesthetics.datasets import make_synthetic_ava, parse_ava, split_records
from clip_aesthetics.datasets.ava import read_id_list


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_ava(tmp_path_factory.mktemp("synth") / "AVA_dataset", n=300, seed=11, size=96)


def _planted(root: Path) -> dict[str, dict[str, str]]:
    with (root / "planted.csv").open() as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def _column(planted: dict[str, dict[str, str]], name: str) -> np.ndarray:
    return np.array([float(row[name]) for row in planted.values()])


def test_ava_txt_format_and_parse(synth: Path) -> None:
    lines = (synth / "AVA.txt").read_text().splitlines()
    assert len(lines) == 300
    for row, line in enumerate(lines, start=1):
        fields = line.split(" ")
        assert len(fields) == 15 and int(fields[0]) == row
        assert all(f.isdigit() for f in fields)
    ids = [line.split()[1] for line in lines]
    assert ids == sorted(ids, key=int) and int(ids[0]) > 1000 and ids[0] != "1"

    parsed = parse_ava(synth)
    planted = _planted(synth)
    missing = {i for i, row in planted.items() if row["image"] == "missing"}
    assert len(missing) == 2 and {d.id for d in parsed.report.dropped} == missing
    assert len(parsed) == 298 and not parsed.report.skipped
    for rec in parsed.records[:20]:
        votes = np.array(rec.votes)
        assert rec.mean == pytest.approx((votes * np.arange(1, 11)).sum() / votes.sum())
        assert rec.mean == pytest.approx(float(planted[rec.id]["mean"]), abs=1e-6)
    tag_names = {line.split(" ", 1)[1] for line in (synth / "tags.txt").read_text().splitlines()}
    assert all(set(r.tags) <= tag_names for r in parsed.records)


def test_official_split_of_synthetic_copy(synth: Path) -> None:
    listed = read_id_list(synth / "aesthetics_image_lists" / "generic_test.jpgl")
    assert len(listed) == 30  # 10% of 300
    missing = {i for i, row in _planted(synth).items() if row["image"] == "missing"}
    assert missing <= set(listed)  # the absent images are test ids, as in real copies
    splits, info = split_records(parse_ava(synth), "official")
    assert sorted(r.id for r in splits["test"]) == sorted(set(listed) - missing)
    assert info.counts["val"] == round(0.05 * 270)


def test_planted_properties_drive_the_means(synth: Path) -> None:
    planted = _planted(synth)
    mean = _column(planted, "mean")
    assert stats.spearmanr(_column(planted, "q"), mean).statistic > 0.8
    # each planted property correlates with the votes in its intended direction
    assert stats.spearmanr(-np.abs(_column(planted, "brightness") - 0.5), mean).statistic > 0.25
    assert stats.spearmanr(_column(planted, "contrast"), mean).statistic > 0.2
    assert stats.spearmanr(_column(planted, "colourfulness"), mean).statistic > 0.2
    assert stats.spearmanr(_column(planted, "sharpness"), mean).statistic > 0.25
    assert stats.spearmanr(_column(planted, "blur_sigma"), mean).statistic < -0.2
    assert stats.spearmanr(_column(planted, "thirds_distance"), mean).statistic < -0.15
    # AVA-like spread: mean ~5.4, most images "good"
    assert 5.0 < mean.mean() < 5.8 and 0.55 < (mean > 5).mean() < 0.85


def test_planted_values_are_measurable_from_the_files(synth: Path) -> None:
    planted = _planted(synth)
    ok = [i for i, row in planted.items() if row["image"] == "ok"][:60]
    brightness, sharp = [], []
    for image_id in ok:
        luma = (
            np.asarray(Image.open(synth / "images" / f"{image_id}.jpg").convert("L"), dtype=np.float64) / 255
        )
        brightness.append(luma.mean())
        lap = luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1] - 4 * luma[1:-1, 1:-1]
        sharp.append(lap.var())
    listed = np.array([float(planted[i]["brightness"]) for i in ok])
    np.testing.assert_allclose(brightness, listed, atol=0.02)  # JPEG + PIL's integer luma vs float luma
    blur = np.array([float(planted[i]["blur_sigma"]) for i in ok])
    assert stats.spearmanr(blur, sharp).statistic < -0.5


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path: Path) -> None:
    a = make_synthetic_ava(tmp_path / "a", n=40, seed=5, size=64)
    b = make_synthetic_ava(tmp_path / "b", n=40, seed=5, size=64)
    c = make_synthetic_ava(tmp_path / "c", n=40, seed=6, size=64)
    for name in ("AVA.txt", "planted.csv", "aesthetics_image_lists/generic_test.jpgl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "AVA.txt").read_bytes() != (c / "AVA.txt").read_bytes()
    first = sorted((a / "images").iterdir())[0].name
    assert (a / "images" / first).read_bytes() == (b / "images" / first).read_bytes()
    with pytest.raises(FileExistsError):
        make_synthetic_ava(a, n=5)


def test_corrupt_images_are_truncated_jpegs(tmp_path: Path) -> None:
    root = make_synthetic_ava(tmp_path / "s", n=20, seed=1, size=64, n_corrupt=2)
    corrupt = [i for i, row in _planted(root).items() if row["image"] == "corrupt"]
    assert len(corrupt) == 2
    for image_id in corrupt:
        with pytest.raises(OSError), Image.open(root / "images" / f"{image_id}.jpg") as im:
            im.load()
