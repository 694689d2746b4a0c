"""`clip-aesthetics prompts search` end to end on a synthetic AVA set with a tiny CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from typer.testing import CliRunner

from clip_aesthetics.cli import app
from clip_aesthetics.cli.prompts import default_cache
from clip_aesthetics.datasets import make_synthetic_ava
from clip_aesthetics.features.cache import load_features
from clip_aesthetics.runs.score import score_paths
from clip_aesthetics.scorers import load_scorer


@pytest.fixture(scope="module")
def ava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_ava(tmp_path_factory.mktemp("ava") / "AVA_dataset", n=80, seed=1, size=64)


def test_prompt_search_ranks_and_saves_best(ava: Path, tmp_path: Path, tiny_clip_spec: str) -> None:
    out = tmp_path / "search.json"
    args = [
        "prompts",
        "search",
        str(ava),
        "--split-kind",
        "random",
        "--split",
        "train",
        "--split-seed",
        "3",
        "--model",
        tiny_clip_spec,
        "--positive",
        "outstanding,stunning,beautiful",
        "--negative",
        "horrible,boring",
        "--contents",
        "dog,car,tree,lake",
        "--output",
        str(out),
        "--markdown",
        str(tmp_path / "search.md"),
        "--save-best",
        str(tmp_path / "best.json"),
        "--workers",
        "0",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    rows = document["results"]
    assert len(rows) == 3 * 2 * 4  # fixed, context, content (the authors'), ensemble
    assert [r["srcc"] for r in rows] == sorted((r["srcc"] for r in rows), reverse=True)
    assert (tmp_path / "search.md").read_text().count("\n") == len(rows) + 2
    # the saved best scorer reproduces the reported SRCC: exactly on the cached features ...
    features = load_features(default_cache(out, tiny_clip_spec))
    train = features.select("train")
    assert document["n_images"] == len(train)
    scorer = load_scorer(tmp_path / "best.json", device="cpu")
    strategy = rows[0]["strategy"]
    assert scorer.config()["strategy"] == (strategy if strategy in ("context", "content") else "ensemble")
    raw = scorer.score_features(torch.as_tensor(train.features)).raw.numpy()
    assert spearmanr(raw, train.means)[0] == pytest.approx(rows[0]["srcc"], abs=1e-6)
    # ... and closely when it scores the images themselves (float32 features instead of cached float16)
    report = score_paths(scorer, train.paths, workers=0, progress=False)
    by_path = {r["path"]: r["raw"] for r in report.rows}
    fresh = np.array([by_path[p] for p in train.paths])
    assert spearmanr(fresh, train.means)[0] == pytest.approx(rows[0]["srcc"], abs=0.05)


def test_prompt_search_rejects_bad_strategy(ava: Path, tiny_clip_spec: str) -> None:
    result = CliRunner().invoke(
        app, ["prompts", "search", str(ava), "--model", tiny_clip_spec, "--strategies", "magic"]
    )
    assert result.exit_code == 2 and "--strategies" in result.output
