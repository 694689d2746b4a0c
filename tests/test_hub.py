"""Features as the hub: one image pass per encoder for any number of heads, and reuse of `embed` caches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clip_aesthetics import load_backbone, save_scorer
from clip_aesthetics.cli import app
from clip_aesthetics.datasets import make_synthetic_ava
from clip_aesthetics.encoders.backbones import Backbone
from clip_aesthetics.encoders.prompts import PromptGroups
from clip_aesthetics.encoders.towers import FinetuneModel
from clip_aesthetics.features import DatasetSpec, embed_dataset, load_features
from clip_aesthetics.features.hub import CachedFeatures, encoder_groups
from clip_aesthetics.runs.evaluate import evaluate_scorers, load_split
from clip_aesthetics.runs.score import load_scorer_groups
from clip_aesthetics.scorers import FinetunedScorer, LaionScorer, ProbeHead, ProbeScorer, ZeroShotScorer
from clip_aesthetics.scorers.laion import laion_mlp

PROMPTS = ["--positive", "a stunning photo", "--negative", "a dull photo"]


def run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_ava(
        tmp_path_factory.mktemp("hub") / "AVA", n=40, seed=2, size=48, test_fraction=0.5
    )


@pytest.fixture(scope="module")
def backbone(tiny_clip_spec: str) -> Backbone:
    return load_backbone(tiny_clip_spec, device="cpu")


@pytest.fixture(scope="module")
def cache(synth: Path, backbone: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hub-cache") / "features"
    embed_dataset(DatasetSpec("ava", str(synth)), backbone, out, batch_size=8, workers=0, precision="fp32")
    return out


def _heads(backbone: Backbone) -> dict:
    g = torch.Generator().manual_seed(0)
    d = backbone.feature_dim
    mean, std = torch.randn(d, generator=g), torch.rand(d, generator=g) + 0.5
    probe = ProbeHead(mean, std, torch.randn(1, d, generator=g) * 0.2, torch.tensor([5.0]))
    torch.manual_seed(1)
    state = {f"layers.{k}": v for k, v in laion_mlp(d).state_dict().items()}
    return {
        "bright": ZeroShotScorer(backbone, PromptGroups(("a bright photo",), ("a dark photo",))),
        "sharp": ZeroShotScorer(backbone, PromptGroups(("a sharp photo",), ("a blurry photo",))),
        "probe": ProbeScorer(backbone, probe),
        "laion": LaionScorer(backbone, state),
    }


class EncodeCounter:
    """Counts the images that go through a backbone's image tower."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images = 0
        self.features: list[torch.Tensor] = []
        original = Backbone.encode_image

        def counting(backbone, pixels):
            self.images += len(pixels)
            self.features.append(original(backbone, pixels))
            return self.features[-1]

        monkeypatch.setattr(Backbone, "encode_image", counting)


def test_heads_on_one_encoder_share_one_pass(synth: Path, backbone: Backbone, monkeypatch) -> None:
    records = load_split("ava", synth, "test").records
    heads = _heads(backbone)
    alone = {name: evaluate_scorers([s], records, batch_size=4, workers=0)[0] for name, s in heads.items()}
    counter = EncodeCounter(monkeypatch)
    together = evaluate_scorers(list(heads.values()), records, batch_size=4, workers=0)
    n_readable = alone["bright"].n_scored
    assert counter.images == n_readable  # one pass for four heads, not four
    for name, result in zip(heads, together, strict=True):
        np.testing.assert_array_equal(result.pred, alone[name].pred)
        assert result.metrics == alone[name].metrics and result.failed == alone[name].failed


def test_encoder_groups(backbone: Backbone, tiny_clip_spec: str) -> None:
    heads = list(_heads(backbone).values())
    other = load_backbone(tiny_clip_spec, device="cpu")  # the same weights loaded again: the same encoder
    tuned = FinetunedScorer(backbone, FinetuneModel.from_backbone(backbone))
    random = load_backbone("timm:resnet18", "none", device="cpu")
    scorers = [*heads, ZeroShotScorer(other, PromptGroups(("a",), ("b",))), tuned, tuned, ProbeScorer(
        random, ProbeHead(torch.zeros(512), torch.ones(512), torch.zeros(1, 512), torch.zeros(1))
    )]  # fmt: skip
    assert encoder_groups(scorers) == [[0, 1, 2, 3, 4], [5], [6], [7]]
    again = load_backbone("timm:resnet18", "none", device="cpu")  # random weights: a new draw, not shared
    assert ProbeScorer(again, scorers[7].head).encoder_key() != scorers[7].encoder_key()


def test_files_on_one_encoder_load_onto_one_backbone(backbone: Backbone, tmp_path: Path, tiny_clip_spec: str):
    heads = _heads(backbone)
    paths = [str(save_scorer(s, tmp_path / f"{n}.safetensors")) for n, s in heads.items()]
    tuned = save_scorer(
        FinetunedScorer(backbone, FinetuneModel.from_backbone(backbone)), tmp_path / "ft.safetensors"
    )
    sources = [paths[0], str(tuned), "zeroshot", *paths[1:]]
    groups = list(load_scorer_groups(sources, model=tiny_clip_spec, device="cpu"))
    assert [[i for i, _ in g] for g in groups] == [[2, 0, 3, 4, 5], [1]]
    first = groups[0]
    assert len({id(s.backbone) for _, s in first}) == 1 and first[0][1].method == "zeroshot"


def _cauchy_schwarz_bound(name: str, scorer, f16: torch.Tensor, f32: torch.Tensor) -> np.ndarray:
    """Largest change of the raw score that the float16 rounding of each feature vector can cause."""
    if name in ("bright", "sharp"):  # raw = 100 * <f/|f|, g+ - g->
        change = torch.nn.functional.normalize(f16, dim=-1) - torch.nn.functional.normalize(f32, dim=-1)
        return (100 * change.norm(dim=-1) * (scorer.positive - scorer.negative).norm()).numpy()
    head = scorer.head  # raw = <(f - mean) / std, w> + b
    return (((f16 - f32) / head.scaler_std).norm(dim=-1) * head.weight.norm()).numpy()


def test_cached_float16_features_bounded_against_pixels(
    synth: Path, backbone: Backbone, cache: Path, monkeypatch
) -> None:
    """Heads on cached float16 features differ from the pixel path only by float16's rounding."""
    records = load_split("ava", synth, "test").records
    heads = _heads(backbone)
    counter = EncodeCounter(monkeypatch)
    pixels = evaluate_scorers(list(heads.values()), records, batch_size=8, workers=0)
    f32 = torch.cat(counter.features).float()  # the pixel path's features, in record order
    cached = evaluate_scorers(
        list(heads.values()), records, batch_size=8, workers=0, caches=[CachedFeatures.open(cache)]
    )
    features = load_features(cache)
    row = {record_id: i for i, record_id in enumerate(features.ids)}
    f16 = torch.from_numpy(features.features[[row[r.id] for r in records]]).float()
    assert len(f32) == len(records) and 0 < (f32 - f16).abs().max() <= f32.abs().max() * 2**-11
    for name, a, b in zip(heads, pixels, cached, strict=True):
        assert b.n_from_cache == a.n_scored == b.n_scored == len(records) and a.failed == b.failed == []
        if name != "laion":
            bound = _cauchy_schwarz_bound(name, heads[name], f16, f32)
            assert np.all(np.abs(b.raw - a.raw) <= bound * (1 + 1e-3) + 1e-5)
        assert np.max(np.abs(b.pred - a.pred)) < 0.02  # on the 1-10 scale
        assert b.metrics["srcc"] == pytest.approx(a.metrics["srcc"], abs=0.01)


def test_evaluate_and_compare_take_features_from_a_cache(
    synth: Path, cache: Path, tiny_clip_spec: str, tmp_path: Path, monkeypatch
) -> None:
    scorer = tmp_path / "sharp.json"
    save_scorer(_heads(load_backbone(tiny_clip_spec, device="cpu"))["sharp"], scorer)
    counter = EncodeCounter(monkeypatch)
    out = tmp_path / "m.json"
    result = run("evaluate", synth, "--scorer", scorer, "--features", cache, "--workers", 0, "--output", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["n_from_cache"] == doc["n_scored"] > 0 and counter.images == 0  # no image was decoded
    made = {"path": str(cache), "precision": "fp32", "decode": "cpu", "n_records": doc["n_scored"]}
    assert doc["feature_cache"] == made
    table = tmp_path / "t.json"
    result = run(
        "compare", synth, "--zeroshot", "--model", tiny_clip_spec, *PROMPTS, "--scorer", scorer,
        "--features", cache, "--workers", 0, "--output", tmp_path / "t.md", "--json", table,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(table.read_text())["rows"]
    assert [r["name"] for r in rows] == ["zeroshot", "sharp"] and counter.images == 0
    assert rows[1]["srcc"] == pytest.approx(doc["metrics"]["srcc"], abs=1e-12)


def test_mismatched_cache_is_refused_with_one_line(
    synth: Path, cache: Path, tmp_path: Path, tiny_clip_spec: str
) -> None:
    result = run(
        "evaluate", synth, "--model", "ViT-B-32", "--pretrained", "none", *PROMPTS, "--features", cache,
        "--workers", 0, "--output", tmp_path / "m.json",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "does not match this scorer" in " ".join(result.output.split())
    assert not (tmp_path / "m.json").exists()
    missing = run(
        "evaluate", synth, "--model", tiny_clip_spec, *PROMPTS, "--features", tmp_path / "nothing",
        "--output", tmp_path / "m.json",
    )  # fmt: skip
    assert missing.exit_code == 2 and "no feature cache" in " ".join(missing.output.split())
    assert not (tmp_path / "m.json").exists()


def test_complete_cache_reused_whatever_the_batch_size(
    synth: Path, backbone: Backbone, cache: Path, monkeypatch
):
    counter = EncodeCounter(monkeypatch)
    report = embed_dataset(DatasetSpec("ava", str(synth)), backbone, cache, batch_size=4, workers=0)
    assert counter.images == 0 and report.images_this_run == 0 and report.n_embedded > 0
