"""`synth-ava`, `datasets verify` and the bad-input paths of `evaluate`/`compare`: exit codes and messages."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clip_aesthetics import load_backbone, save_scorer
from clip_aesthetics.cli import app
from clip_aesthetics.datasets import load_broken_manifest, make_synthetic_ava, parse_ava, split_records
from clip_aesthetics.encoders.prompts import PromptGroups
from clip_aesthetics.scorers import ZeroShotScorer
from conftest import console_text

PROMPTS = ["--positive", "a stunning photo", "--negative", "a dull photo"]


def run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _status(root: Path) -> dict[str, str]:
    with (root / "planted.csv").open() as f:
        return {row["id"]: row["image"] for row in csv.DictReader(f)}


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def broken_ava(tmp_path: Path) -> Path:
    return make_synthetic_ava(tmp_path / "AVA_dataset", n=60, seed=2, size=64, n_missing=2, n_corrupt=2)


def test_synth_ava_writes_and_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "ava"
    result = run("synth-ava", out, "--n", 30, "--seed", 4, "--size", 48, "--n-corrupt", 1)
    assert result.exit_code == 0, result.output
    test_list = out / "aesthetics_image_lists" / "generic_test.jpgl"
    assert len(test_list.read_text().split()) == 7  # 10% would be 3, all but one missing: 5 readable kept
    assert len((out / "AVA.txt").read_text().splitlines()) == 30
    assert len(list((out / "images").glob("*.jpg"))) == 28  # 2 test images missing by default
    assert _one_line_error(run("synth-ava", out, "--n", 30)).endswith("pass --exist-ok to write into it")


def test_verify_finds_missing_and_corrupt_images(broken_ava: Path) -> None:
    result = run("datasets", "verify", broken_ava, "--dataset", "ava", "--workers", 2)
    assert result.exit_code == 0, result.output
    status = _status(broken_ava)
    manifest = load_broken_manifest(broken_ava / "broken_images.json")
    assert set(manifest) == {i for i, s in status.items() if s != "ok"}
    for image_id, reason in manifest.items():
        expected = "missing file" if status[image_id] == "missing" else "truncated"
        assert expected in reason.lower(), reason
    assert "checked 60 images: 56 ok, 2 missing, 2 unreadable" in console_text(result)

    # a second run re-checks everything rather than trusting the manifest it finds, and writes the same list
    again = run("datasets", "verify", broken_ava, "--workers", 0)
    assert again.exit_code == 0 and load_broken_manifest(broken_ava / "broken_images.json") == manifest


def test_evaluate_after_verify_drops_the_broken_images(broken_ava: Path, tiny_clip_spec: str) -> None:
    assert run("datasets", "verify", broken_ava, "--workers", 0).exit_code == 0
    out = broken_ava.parent / "metrics.json"
    result = run(
        "evaluate", broken_ava, "--split", "train", "--model", tiny_clip_spec, *PROMPTS,
        "--workers", 0, "--output", out, "--predictions", broken_ava.parent / "preds.csv",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    broken = {i for i, s in _status(broken_ava).items() if s != "ok"}
    assert doc["n_failed"] == 0 and doc["dataset"]["n_dropped"] == 4
    assert {d["id"] for d in doc["dataset"]["dropped"]} == broken
    assert all(d["reason"].startswith("broken: ") for d in doc["dataset"]["dropped"])
    splits, _ = split_records(parse_ava(broken_ava), "official")
    with (broken_ava.parent / "preds.csv").open() as f:
        assert [row["id"] for row in csv.DictReader(f)] == [r.id for r in splits["train"]]
    assert not broken & {r.id for r in splits["train"]}


def test_verify_output_option(broken_ava: Path, tiny_clip_spec: str) -> None:
    elsewhere = broken_ava.parent / "lists" / "broken.json"
    elsewhere.parent.mkdir()
    assert run("datasets", "verify", broken_ava, "--output", elsewhere, "--workers", 0).exit_code == 0
    assert not (broken_ava / "broken_images.json").exists() and len(load_broken_manifest(elsewhere)) == 4
    out = broken_ava.parent / "m.json"
    result = run(
        "evaluate", broken_ava, "--split", "train", "--model", tiny_clip_spec, *PROMPTS,
        "--workers", 0, "--output", out, "--manifest", elsewhere,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["n_failed"] == 0  # the corrupt train images were dropped up front


def test_bad_input_is_a_one_line_error(broken_ava: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    out = ["--output", tmp_path / "m.json"]
    line = _one_line_error(run("evaluate", broken_ava, "--dataset", "imagenet", *out))
    assert "unknown dataset 'imagenet'" in line
    line = _one_line_error(run("evaluate", tmp_path / "nowhere", *out))
    assert "dataset not found" in line
    line = _one_line_error(run("evaluate", broken_ava, "--method", "probe", *out))
    assert "--method probe needs --scorer FILE" in line
    line = _one_line_error(run("evaluate", broken_ava, "--method", "finetune", *out))
    assert "--method finetune needs --scorer FILE" in line
    line = _one_line_error(run("evaluate", broken_ava, "--method", "magic", *out))
    assert "unknown method" in line
    line = _one_line_error(run("datasets", "verify", broken_ava, "--dataset", "nope"))
    assert "unknown dataset 'nope'" in line
    line = _one_line_error(run("datasets", "verify", tmp_path / "nowhere"))
    assert "dataset not found" in line
    line = _one_line_error(run("evaluate", broken_ava, "--split", "holdout", *out))
    assert "unknown split" in line
    line = _one_line_error(run("evaluate", broken_ava, "--output", tmp_path / "m.txt"))
    assert "--output must be a .json file" in line
    assert _one_line_error(run("compare", broken_ava, "--output", tmp_path / "t.md")).endswith("--zeroshot")
    line = _one_line_error(run("evaluate", broken_ava, "--scorer", tmp_path / "none.json", *out))
    assert "scorer file not found" in line


def test_method_must_match_the_scorer_file(broken_ava: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    path = save_scorer(ZeroShotScorer(backbone, PromptGroups(("nice",), ("ugly",))), tmp_path / "zs.json")
    out = ["--output", tmp_path / "m.json"]
    line = _one_line_error(run("evaluate", broken_ava, "--method", "probe", "--scorer", path, *out))
    assert "is a zeroshot scorer" in line
    line = _one_line_error(run("evaluate", broken_ava, "--scorer", path, "--model", tiny_clip_spec, *out))
    assert "names its own backbone and prompts" in line
    result = run("evaluate", broken_ava, "--method", "zeroshot", "--scorer", path, "--workers", 0, *out)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())["scorer"]["prompts"]["positive"] == ["nice"]


def test_nothing_readable_exits_1(tmp_path: Path, tiny_clip_spec: str) -> None:
    root = make_synthetic_ava(tmp_path / "ava", n=20, seed=1, size=32, test_fraction=0.2, n_missing=0)
    for image in (root / "images").glob("*.jpg"):
        image.write_bytes(b"")
    out = tmp_path / "m.json"
    result = run("evaluate", root, "--model", tiny_clip_spec, *PROMPTS, "--workers", 0, "--output", out)
    assert result.exit_code == 1 and "only 0 of 4 images could be scored" in console_text(result)
    doc = json.loads(out.read_text())  # still written: it lists why every image failed
    assert doc["n_failed"] == 4 and all("empty" in f["error"] for f in doc["failed"])
    assert doc["metrics"] == {"n": 0}
