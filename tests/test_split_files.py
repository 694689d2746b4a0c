"""The authors' split files (an image id and ten normalised vote fractions per line) load wherever a split is
chosen; a malformed file is one clear error, never a silently smaller split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.datasets import load_and_split, make_synthetic_ava, read_split_file, split_kind
from clip_aesthetics.datasets.records import ParseError


def _fractions(rng: np.random.Generator) -> str:
    return ",".join(repr(float(v)) for v in rng.dirichlet(np.ones(10)))


def _write(path: Path, ids: list[str], header: bool = False, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["image_id,s1,s2,s3,s4,s5,s6,s7,s8,s9,s10"] if header else []
    path.write_text("\n".join([*lines, *(f"{i},{_fractions(rng)}" for i in ids)]) + "\n")
    return path


@pytest.fixture
def ava(tmp_path: Path) -> Path:
    return make_synthetic_ava(tmp_path / "AVA_dataset", n=40, seed=1, size=32, n_missing=0)


def _ids(ava: Path) -> list[str]:
    return [line.split()[1] for line in (ava / "AVA.txt").read_text().splitlines()]


def test_a_folder_of_the_four_files_gives_exactly_their_parts(ava: Path, tmp_path: Path) -> None:
    ids = _ids(ava)
    folder = tmp_path / "split"
    folder.mkdir()
    _write(folder / "AVA_test.csv", [*ids[:8], "999999"], header=True)  # one id not in this copy of AVA
    _write(folder / "AVA_val_split.csv", [f"{i}.jpg" for i in ids[8:14]])  # ids may carry .jpg
    _write(folder / "AVA_train_split.csv", ids[14:36])
    _write(folder / "AVA_train.csv", ids[8:36])
    _, splits, info = load_and_split("ava", ava, split_kind("file", folder))
    assert [r.id for r in splits["test"]] == ids[:8]
    assert [r.id for r in splits["val"]] == ids[8:14] and [r.id for r in splits["train"]] == ids[14:36]
    assert info.kind == f"file:{folder.resolve()}" and "1 listed ids are not among" in info.note


def test_train_and_test_files_only_carve_validation_as_the_authors(ava: Path, tmp_path: Path) -> None:
    ids = _ids(ava)
    folder = tmp_path / "split"
    folder.mkdir()
    _write(folder / "AVA_test.csv", ids[:10])
    _write(folder / "AVA_train.csv", ids[10:])
    _, splits, info = load_and_split("ava", ava, split_kind("file", folder))
    assert {r.id for r in splits["train"]} | {r.id for r in splits["val"]} == set(ids[10:])
    assert len(splits["val"]) == round(0.2 * 30) and info.seed == 42 and info.fractions == {"val": 0.2}


def test_one_file_is_the_test_list(ava: Path, tmp_path: Path) -> None:
    ids = _ids(ava)
    _, splits, _ = load_and_split("ava", ava, split_kind("file", _write(tmp_path / "test.csv", ids[:5])))
    assert [r.id for r in splits["test"]] == ids[:5] and len(splits["train"]) + len(splits["val"]) == 35


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("953619,0.5,0.5", "2 values after the id"),
        ("953619,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.2", "sum to 1.1"),
        ("953619,a,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1", "not a number"),
    ],
)
def test_a_malformed_line_names_the_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = _write(tmp_path / "AVA_test.csv", ["1", "2"])
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(ParseError, match=rf"AVA_test.csv:3: .*{reason}"):
        read_split_file(path)


def test_an_image_in_two_files_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "AVA_test.csv", ["1", "2"])
    _write(tmp_path / "AVA_train_split.csv", ["2", "3"])
    _write(tmp_path / "AVA_val_split.csv", ["4"])
    with pytest.raises(ValueError, match="'2' is in both the test and train files"):
        read_split_file(tmp_path)


def test_split_file_needs_kind_file_and_the_kind_needs_a_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--split-file"):
        split_kind("file")
    with pytest.raises(ValueError, match="--split-kind file"):
        split_kind("random", tmp_path)


def test_evaluate_takes_the_split_files(ava: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    ids = _ids(ava)
    _write(tmp_path / "AVA_test.csv", ids[3:9])
    args = [
        "evaluate", str(ava), "--split-kind", "file", "--split-file", str(tmp_path / "AVA_test.csv"),
        "--model", tiny_clip_spec, "--positive", "a good photo", "--negative", "a bad photo",
        "--zeroshot-score", "authors", "--output", str(tmp_path / "m.json"), "--workers", "0",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "m.json").read_text())
    assert document["split"]["counts"]["test"] == 6 and document["scorer"]["formula"] == "authors"


def test_embed_takes_the_split_files(ava: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    from clip_aesthetics.features import load_features

    ids = _ids(ava)
    folder = tmp_path / "split"
    folder.mkdir()
    _write(folder / "AVA_test.csv", ids[:6])
    _write(folder / "AVA_train.csv", ids[6:30])
    args = [
        "embed", str(ava), "--split-kind", "file", "--split-file", str(folder), "--model", tiny_clip_spec,
        "--output", str(tmp_path / "cache"), "--workers", "0",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    features = load_features(tmp_path / "cache")
    assert set(features.select("test").ids) == set(ids[:6])
    assert set(features.select("train", "val").ids) == set(ids[6:30])
    assert len(features.select("val")) == round(0.2 * 24)  # the authors' carve-out: 20% of train


def test_reproduce_takes_the_files_under_either_recipe_and_refuses_them_with_another_kind(
    tmp_path: Path,
) -> None:
    from clip_aesthetics.study.reproduce import ReproduceConfig

    folder = tmp_path / "split"
    for recipe in ("paper", "improved"):
        config = ReproduceConfig(
            ava=str(tmp_path), out=str(tmp_path / "o"), recipe=recipe, split_file=str(folder)
        )
        assert config.split_spec()[0] == f"file:{folder.resolve()}"
    with pytest.raises(ValueError, match="--split-file is read with --split-kind file"):
        ReproduceConfig(ava=str(tmp_path), out=str(tmp_path / "o"), split="official", split_file=str(folder))
