"""`clip-aesthetics reproduce` end to end on a synthetic AVA set with tiny models."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from scipy import stats
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.datasets import make_synthetic_ava
from clip_aesthetics.reproduce import ZERO_SHOT, _config_key, _slug
from clip_aesthetics.study_report import PUBLISHED, markdown_report
from conftest import TINY_CLIP_CONFIG, console_text, save_open_clip_dir


def reproduce_args(root: Path, clip_spec: str, *extra: str) -> list[str]:
    """The study on the synthetic set in ``root`` with the tiny CLIP and timm's test ViT, one epoch."""
    return [
        "reproduce", str(root / "AVA_dataset"), "--output", str(root / "out"), "--model", clip_spec,
        "--imagenet-model", "timm:test_vit", "--imagenet-pretrained", str(root / "test_vit.safetensors"),
        "--max-epochs", "1", "--batch-size", "16", "--workers", "0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_clip_spec: str) -> Path:
    root = tmp_path_factory.mktemp("repro")
    make_synthetic_ava(root / "AVA_dataset", n=70, seed=2, size=48)
    torch.manual_seed(0)
    # a real timm architecture (timm's own test model) with fixed random weights saved as a file
    save_file(timm.create_model("test_vit", pretrained=False).state_dict(), root / "test_vit.safetensors")
    result = CliRunner().invoke(app, reproduce_args(root, tiny_clip_spec))
    assert result.exit_code == 0, result.output
    return root


def run_study(root: Path, clip_spec: str, out: Path, *extra: str):
    args = reproduce_args(root, clip_spec, *extra)
    args[args.index("--output") + 1] = str(out)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text()), console_text(result)


def numbers(document: dict) -> list[tuple]:
    return [
        tuple(row[k] for k in ("name", "n", "srcc", "plcc", "accuracy", "emd")) for row in document["results"]
    ]


def test_report_files_and_contents(study: Path) -> None:
    out = study / "out"
    document = json.loads((out / "report.json").read_text())
    names = [row["name"] for row in document["results"]]
    assert [row["step"] for row in document["results"]] == ["zeroshot"] * 3 + ["probe"] * 2 + ["finetune"] * 2
    assert "atrocious" in names[0] and "horrible" in names[1] and "ensembled" in names[2]
    assert any("ImageNet timm:test_vit" in n for n in names) and any("CLIP" in n for n in names)
    test_ids = {
        line.strip() for line in (study / "AVA_dataset/aesthetics_image_lists/generic_test.jpgl").open()
    }
    assert all(row["n"] + row["n_failed"] <= len(test_ids) for row in document["results"])
    # every file a rerun may reuse names its model and records what it was made from
    for row in document["results"]:
        named = _slug_of(Path(row["model"]).name)  # a local-dir: path is named by its last folder
        assert named in Path(row["scorer_file"]).name or "finetune-" in row["scorer_file"]
    for artefact in (
        "zeroshot-fixed_outstanding_atrocious",
        "features-timm_test_vit",
        "finetune-timm_test_vit",
    ):
        found = [
            p for p in out.iterdir() if p.name.startswith(artefact) and p.name.endswith(".provenance.json")
        ]
        recorded = json.loads(found[0].read_text())
        assert recorded["backbone"]["weights"]
    features = json.loads((out / "features-timm_test_vit.provenance.json").read_text())
    assert features["split"]["digests"] == document["split"]["split"]["digests"]
    markdown = (out / "report.md").read_text()
    assert "| Q-Align | another system | 0.822 |" in markdown and "pyiqa" in markdown
    assert "not run here" in markdown and "raw similarity difference" in markdown
    assert (out / "plots" / "summary.png").stat().st_size > 1000
    assert (out / "finetune-timm_test_vit" / "best.safetensors").is_file()


def _slug_of(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")


def test_published_figures_sit_beside_the_row_of_their_configuration() -> None:
    assert _config_key("probe", "ols", "ViT-B-32", None) == "probe|ols|ViT-B-32|openai"
    row = {
        "step": "zeroshot", "name": "ours", "n": 10, "srcc": 0.5, "plcc": 0.4, "accuracy": 0.61, "emd": None,
        "key": _config_key("zeroshot", ZERO_SHOT[0][0], "ViT-B-32", None), "scorer_file": "/s/z.json",
    }  # fmt: skip
    split = {"kind": "random", "seed": 0, "counts": {"test": 10}, "digests": {"test": "ab"}}
    document = {
        "config": {"out": "/s", "ava": "/a"}, "split": {"split": split}, "results": [row],
        "published": list(PUBLISHED),
    }  # fmt: skip
    lines = markdown_report(document).splitlines()
    ours = next(line for line in lines if line.startswith("| zeroshot | ours |"))
    assert "| 0.500 | 0.400 | 0.610 | - | - | - | 0.725 |" in ours  # the paper's 0.725 on the same line
    paper = next(line for line in lines if line.startswith("| Zero-shot, fixed prompt (paper) |"))
    assert "'a outstanding picture' vs 'a atrocious picture'" in paper and paper.endswith(
        "| ours | Hentschel, Kobs & Hotho 2022, the authors' prompting notebook output; their random split "
        "(25,551 test images) |"
    )


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4, 6])
def test_numbers_equal_the_individual_evaluate_command(study: Path, index: int) -> None:
    out = study / "out"
    row = json.loads((out / "report.json").read_text())["results"][index]
    metrics_file, predictions = study / f"metrics-{index}.json", study / f"preds-{index}.csv"
    args = [
        "evaluate", str(study / "AVA_dataset"), "--dataset", "ava", "--split", "test", "--workers", "0",
        "--scorer", row["scorer_file"], "--output", str(metrics_file), "--predictions", str(predictions),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(metrics_file.read_text())["metrics"]
    for key in ("srcc", "accuracy"):
        assert metrics[key] == pytest.approx(row[key], abs=1e-6), key
    if row["step"] != "zeroshot":
        assert metrics["plcc"] == pytest.approx(row["plcc"], abs=1e-6)
        return
    # zero-shot: the authors' PLCC, on the raw similarity difference; evaluate's is the 1-10 score's
    rows = list(csv.DictReader(predictions.open()))
    raw, true = ([float(r[k]) for r in rows] for k in ("raw", "true_mean"))
    assert row["plcc"] == pytest.approx(stats.pearsonr(raw, true).statistic, abs=1e-6)
    assert row["plcc_score"] == pytest.approx(metrics["plcc"], abs=1e-6)


def test_rerun_reuses_work(study: Path, tiny_clip_spec: str) -> None:
    before = (study / "out" / "probe-timm_test_vit.safetensors").stat().st_mtime_ns
    args = reproduce_args(study, tiny_clip_spec, "--steps", "probe,finetune")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "reusing the finished run" in console_text(result)
    assert (study / "out" / "probe-timm_test_vit.safetensors").stat().st_mtime_ns == before
    assert not (study / "out" / "stale").exists()


def test_rerun_with_another_split_seed_equals_a_fresh_run(
    study: Path, tiny_clip_spec: str, tmp_path: Path
) -> None:
    reused = tmp_path / "reused"
    shutil.copytree(study / "out", reused)
    seed = ("--split-kind", "random", "--split-seed", "7")
    rerun, log = run_study(study, tiny_clip_spec, reused, *seed)
    fresh, _ = run_study(study, tiny_clip_spec, tmp_path / "fresh", *seed)
    assert numbers(rerun) == numbers(fresh)
    assert (
        rerun["split"]["split"]["digests"]
        != json.loads((study / "out" / "report.json").read_text())["split"]["split"]["digests"]
    )
    assert "moved to" in log and "split" in log
    stale = {p.name.split(".")[0] for p in (reused / "stale").iterdir()}
    assert {"probe-timm_test_vit", "finetune-timm_test_vit", "features-timm_test_vit"} <= stale


def test_rerun_with_another_model_equals_a_fresh_run(study: Path, tmp_path: Path) -> None:
    other = save_open_clip_dir(tmp_path / "other-clip", TINY_CLIP_CONFIG, seed=9)
    reused = tmp_path / "reused"
    shutil.copytree(study / "out", reused)
    steps = ("--steps", "zeroshot,probe")
    rerun, _ = run_study(study, f"local-dir:{other}", reused, *steps)
    fresh, _ = run_study(study, f"local-dir:{other}", tmp_path / "fresh", *steps)
    assert numbers(rerun) == numbers(fresh)
    assert all(f"local-dir:{other}" in row["model"] or "timm" in row["model"] for row in rerun["results"])


def test_rerun_with_another_batch_size_retrains(study: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    reused = tmp_path / "reused"
    shutil.copytree(study / "out", reused)
    document, log = run_study(study, tiny_clip_spec, reused, "--steps", "finetune", "--batch-size", "8")
    assert document["config"]["batch_size"] == 8 and "batch_size" in log
    for run in ("finetune-timm_test_vit", f"finetune-{_slug(tiny_clip_spec)}"):
        assert json.loads((reused / run / "config.json").read_text())["config"]["batch_size"] == 8
    assert len([p for p in (reused / "stale").iterdir() if p.is_dir()]) == 2


def test_rerun_with_fewer_epochs_retrains(study: Path, tiny_clip_spec: str, tmp_path: Path) -> None:
    reused = tmp_path / "reused"
    shutil.copytree(study / "out", reused)
    _, log = run_study(study, tiny_clip_spec, reused, "--steps", "finetune", "--max-epochs", "2")
    assert "resuming" in log  # one more epoch on the finished one-epoch runs
    document, log = run_study(study, tiny_clip_spec, reused, "--steps", "finetune", "--max-epochs", "1")
    assert "more than --max-epochs 1" in log
    original = json.loads((study / "out" / "report.json").read_text())
    assert numbers(document) == [row for row in numbers(original) if row[0].startswith("Fine-tuned")]


def test_bad_steps_rejected(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["reproduce", str(tmp_path), "--output", str(tmp_path / "o"), "--steps", "x"]
    )
    assert result.exit_code == 2 and "--steps" in result.output


def test_file_names_of_models_given_as_long_paths_stay_short_and_distinct():
    deep = "local-dir:/" + "/".join(["a-rather-long-folder-name"] * 12)
    first, second = _slug(deep + "/clip-one"), _slug(deep + "/clip-two")
    assert first != second
    # leaves room for a prefix ('zeroshot-ensembled_outstanding_horrible_over_imagenet-') and a temp suffix
    assert max(len(first), len(second)) <= 48
    assert "clip-one" in first
    assert "clip-two" in second
    assert _slug("ViT-B-32") == "ViT-B-32"  # short specs read as they are
