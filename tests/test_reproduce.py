"""`clip-aesthetics reproduce` end to end on a synthetic AVA set with tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.datasets import make_synthetic_ava


def reproduce_args(root: Path, clip_spec: str, *extra: str) -> list[str]:
    """The study on the synthetic set in ``root`` with the tiny CLIP and timm's test ViT, one epoch."""
    return [
        "reproduce", "--ava", str(root / "AVA_dataset"), "--out", str(root / "out"), "--model", clip_spec,
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


def test_report_files_and_contents(study: Path) -> None:
    out = study / "out"
    document = json.loads((out / "report.json").read_text())
    names = [row["name"] for row in document["results"]]
    assert [row["step"] for row in document["results"]] == ["zeroshot"] * 2 + ["probe"] * 2 + ["finetune"] * 2
    assert any("ImageNet timm:test_vit" in n for n in names) and any("CLIP" in n for n in names)
    test_ids = {
        line.strip() for line in (study / "AVA_dataset/aesthetics_image_lists/generic_test.jpgl").open()
    }
    assert all(row["n"] + row["n_failed"] <= len(test_ids) for row in document["results"])
    markdown = (out / "report.md").read_text()
    assert "| Linear probe, CLIP ViT-B/32 (paper) | 0.674 | 0.682 | 0.793 |" in markdown
    assert "Q-Align | 0.822" in markdown and "pyiqa" in markdown
    assert (out / "plots" / "summary.png").stat().st_size > 1000
    assert (out / "finetune-timm_test_vit" / "best.safetensors").is_file()


@pytest.mark.parametrize("index", [0, 2, 3, 5])
def test_numbers_equal_the_individual_evaluate_command(study: Path, index: int) -> None:
    out = study / "out"
    row = json.loads((out / "report.json").read_text())["results"][index]
    metrics_file = study / f"metrics-{index}.json"
    args = [
        "evaluate",
        str(study / "AVA_dataset"),
        "--dataset",
        "ava",
        "--split",
        "test",
        "--scorer",
        row["scorer_file"],
        "--output",
        str(metrics_file),
        "--workers",
        "0",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(metrics_file.read_text())["metrics"]
    for key in ("srcc", "plcc", "accuracy"):
        assert metrics[key] == pytest.approx(row[key], abs=1e-6), key


def test_rerun_reuses_work(study: Path, tiny_clip_spec: str) -> None:
    before = (study / "out" / "probe-timm_test_vit.safetensors").stat().st_mtime_ns
    args = reproduce_args(study, tiny_clip_spec, "--steps", "probe,finetune")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "reusing the finished run" in result.output
    assert (study / "out" / "probe-timm_test_vit.safetensors").stat().st_mtime_ns == before


def test_bad_steps_rejected(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["reproduce", "--ava", str(tmp_path), "--out", str(tmp_path / "o"), "--steps", "x"]
    )
    assert result.exit_code == 2 and "--steps" in result.output
