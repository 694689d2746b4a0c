"""Damaged or crafted scorer, prompt, checkpoint and cache files, and option combinations that would be
silently ignored or absurd: each is one clear error (or a clamp with a warning), never a traceback."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from clip_aesthetics import __version__, load_backbone
from clip_aesthetics.cli import app
from clip_aesthetics.cli.main import _show_warning as show_warning
from clip_aesthetics.encoders.prompts import PromptGroups, load_prompt_file
from clip_aesthetics.features import load_features
from clip_aesthetics.features.cache import CACHE_FORMAT, MANIFEST
from clip_aesthetics.metrics import accuracy
from clip_aesthetics.pipeline.images import PreprocessConfig, clamp_workers, iter_batches
from clip_aesthetics.runs.evaluate import evaluate_scorer
from clip_aesthetics.runs.score import build_scorer
from clip_aesthetics.scorers import ProbeHead, load_scorer, read_scorer_file, save_scorer
from clip_aesthetics.scorers.laion import read_laion_state
from clip_aesthetics.scorers.probe import ProbeScorer


def _message(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1, result.output
    return " ".join(result.output[result.output.index("error:") :].split())


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory: pytest.TempPathFactory, tiny_clip_spec: str) -> Path:
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    d = backbone.feature_dim
    head = ProbeHead(torch.zeros(d), torch.ones(d), torch.full((1, d), 0.1), torch.tensor([5.0]))
    scorer = ProbeScorer(backbone, head)
    path = tmp_path_factory.mktemp("probe") / "probe.safetensors"
    return save_scorer(scorer, path, tensors=scorer.tensors())


def _rewrite(source: Path, target: Path, config_change: dict | None = None, **tensor_changes) -> Path:
    config, tensors = read_scorer_file(source)
    config = {**config, **(config_change or {})}
    save_file({**tensors, **tensor_changes}, target, metadata={"clip_aesthetics": json.dumps(config)})
    return target


@pytest.mark.parametrize("damage", ["truncated", "crafted header", "random bytes"])
def test_damaged_safetensors_scorer_is_a_one_line_error(
    probe_file: Path, tmp_path: Path, photo_dir: Path, damage: str
) -> None:
    data = probe_file.read_bytes()
    bad = tmp_path / "bad.safetensors"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "crafted header":  # claims a 2**60-byte header
        bad.write_bytes((2**60).to_bytes(8, "little") + data[8:])
    else:
        bad.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_scorer(bad, device="cpu")
    message = _message(CliRunner().invoke(app, ["score", str(photo_dir), "--scorer", str(bad)]))
    assert f"{bad} is not a readable safetensors file" in message


@pytest.mark.parametrize(
    ("metadata", "phrase"),
    [
        ("[1, 2]", "must be a JSON object with a 'method' name"),
        ("{not json", "is not valid JSON"),
        ('{"method": "probe", "backbone": "ViT-B-32"}', "must name its backbone"),
        ('{"method": "probe"}', "must name its backbone"),
    ],
)
def test_scorer_config_of_the_wrong_shape(probe_file: Path, tmp_path: Path, metadata: str, phrase: str):
    bad = tmp_path / "bad.safetensors"
    save_file({"weight": torch.zeros(1)}, bad, metadata={"clip_aesthetics": metadata})
    with pytest.raises(ValueError, match=phrase):
        load_scorer(bad, device="cpu")
    json_file = tmp_path / "bad.json"
    json_file.write_text(metadata)
    with pytest.raises(ValueError, match=phrase):
        load_scorer(json_file, device="cpu")


def test_probe_fields_of_the_wrong_shape_future_versions_and_bias(probe_file: Path, tmp_path: Path):
    cases = [
        (_rewrite(probe_file, tmp_path / "cal.safetensors", {"calibration": "x"}), "malformed probe scorer"),
        (_rewrite(probe_file, tmp_path / "b.safetensors", bias=torch.zeros(3)), r"bias has shape \(3,\)"),
        (_rewrite(probe_file, tmp_path / "v.safetensors", {"version": "99.0.0"}), "newer than this"),
    ]
    for path, phrase in cases:
        with pytest.raises(ValueError, match=phrase):
            load_scorer(path, device="cpu")
    same = _rewrite(probe_file, tmp_path / "ok.safetensors", {"version": __version__})
    assert load_scorer(same, device="cpu").head.bias.tolist() == [5.0]  # the original loads as before


def test_malformed_prompt_files(tmp_path: Path, photo_dir: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("positive: [a nice photo\nnegative: - x\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_prompt_file(bad)
    message = _message(CliRunner().invoke(app, ["score", str(photo_dir), "--prompts", str(bad)]))
    assert f"{bad} is not valid YAML" in message
    bad_json = tmp_path / "p.json"
    bad_json.write_text('{"positive": ["a"], ')
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_prompt_file(bad_json)
    wrong = tmp_path / "w.yaml"
    wrong.write_text("positive: 5\nnegative: [a]\n")
    with pytest.raises(ValueError, match="a text or a list of texts, not int"):
        load_prompt_file(wrong)


def test_feature_manifest_without_shards(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text(json.dumps({"format": CACHE_FORMAT, "complete": True, "errors": []}))
    with pytest.raises(ValueError, match=r"is damaged \(no valid shards"):
        load_features(tmp_path)
    (tmp_path / MANIFEST).write_text("{")
    with pytest.raises(ValueError, match="is damaged"):
        load_features(tmp_path)


def test_laion_loader_never_advises_unsafe_loading(tmp_path: Path) -> None:
    pickled = tmp_path / "head.pth"
    torch.save({"state_dict": {"layers.0.weight": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, pickled)
    with pytest.raises(ValueError) as err:
        read_laion_state(pickled)
    message = str(err.value)
    assert "is not a plain state dict" in message and "must not be loaded unsafely" in message
    assert "weights_only" not in message and "will likely succeed" not in message
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(pickled.read_bytes()[:100])
    with pytest.raises(ValueError, match="is not a readable torch checkpoint"):
        read_laion_state(truncated)


def test_options_a_scorer_file_would_ignore_are_refused(
    probe_file: Path, photo_dir: Path, tiny_clip_spec: str
) -> None:
    with pytest.raises(ValueError, match="drop --model/--pretrained"):
        build_scorer(str(probe_file), pretrained="none", device="cpu")
    args = ["score", str(photo_dir), "--scorer", str(probe_file), "--pretrained", "none"]
    assert "drop --model/--pretrained" in _message(CliRunner().invoke(app, args))
    with pytest.raises(ValueError, match="bring their own weights: drop --pretrained none"):
        load_backbone(tiny_clip_spec, "none", device="cpu")


def test_empty_prompts_are_refused(photo_dir: Path, tiny_clip_spec: str) -> None:
    with pytest.raises(ValueError, match="non-empty texts"):
        PromptGroups(("",), (" ",))
    args = ["score", str(photo_dir), "-m", tiny_clip_spec, "--positive", "", "--negative", ""]
    assert "prompts must be non-empty texts" in _message(CliRunner().invoke(app, args))


def test_nan_threshold_is_refused(probe_file: Path, photo_dir: Path) -> None:
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        accuracy([6.0, 4.0], [7.0, 3.0], threshold=float("nan"))
    scorer = load_scorer(probe_file, device="cpu")
    with pytest.raises(ValueError, match="--threshold must be a finite number, got nan"):
        evaluate_scorer(scorer, [], threshold=float("nan"))
    assert accuracy([6.0, 4.0], [7.0, 3.0]) == 1.0


def test_too_many_workers_are_clamped_to_the_cores(photo_dir: Path, capsys: pytest.CaptureFixture) -> None:
    cores = len(os.sched_getaffinity(0))
    with pytest.warns(UserWarning, match=f"--workers 500 is more than the {cores} cores here: using {cores}"):
        assert clamp_workers(500) == cores
    show_warning(UserWarning("--workers 500 is more than ..."), UserWarning, "images.py", 1)
    assert capsys.readouterr().err == "warning: --workers 500 is more than ...\n"  # one line on the CLI
    assert clamp_workers(cores) == cores and clamp_workers(0) == 0
    paths = sorted(photo_dir.rglob("*.jpg"))[:2]
    cfg = PreprocessConfig(size=16, resize_size=16)
    with pytest.warns(UserWarning, match="more than the"):
        batches = list(iter_batches(paths, cfg, workers=10_000, progress=False))
    assert sum(len(b.indices) for b in batches) == 2
    expected = np.stack([b.images.numpy() for b in iter_batches(paths, cfg, workers=0, progress=False)])
    np.testing.assert_array_equal(np.stack([b.images.numpy() for b in batches]), expected)
