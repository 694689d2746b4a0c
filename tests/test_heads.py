"""Every registered head: saved, loaded, same scores; and each head's scores computed independently.

Like timm's and pyiqa's tests over their model registries: a new head registered with ``register_scorer``
must add a factory to ``FACTORIES`` (``test_every_registered_head_has_a_factory`` says so), and then gets
the round trip and the checks below for free.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from clip_aesthetics import load_backbone
from clip_aesthetics.encoders.prompts import PromptGroups
from clip_aesthetics.encoders.towers import FinetuneModel
from clip_aesthetics.scorers import (
    SCORERS,
    Calibration,
    FinetunedScorer,
    LaionScorer,
    ProbeHead,
    ProbeScorer,
    ScoreOutput,
    Scorer,
    TasteScorer,
    ZeroShotScorer,
    load_scorer,
    read_scorer_config,
    register_scorer,
    save_scorer,
    scorer_file_method,
)
from clip_aesthetics.scorers.laion import laion_mlp

GROUPS = PromptGroups(("a stunning photo", "a masterpiece"), ("a dull photo",))
CONTENTS = ("dog", "cat", "car")


def _zeroshot_context(backbone):
    positive = tuple(f"a stunning picture of a {c}" for c in CONTENTS)
    negative = tuple(f"a dull picture of a {c}" for c in CONTENTS)
    context = tuple(f"a picture of a {c}" for c in CONTENTS)
    groups = PromptGroups(positive, negative)
    return ZeroShotScorer(backbone, groups, strategy="context", context_prompts=context)


def _zeroshot_content(backbone):
    positive = tuple(f"a stunning picture of a {c}" for c in CONTENTS)
    negative = tuple(f"a dull picture of a {c}" for c in CONTENTS)
    return ZeroShotScorer(backbone, PromptGroups(positive, negative), strategy="content", formula="authors")


def _probe(target: str, calibration: Calibration | None = None):
    def build(backbone):
        g = torch.Generator().manual_seed(3)
        d, k = backbone.feature_dim, 1 if target == "mean" else 10
        head = ProbeHead(
            torch.randn(d, generator=g),
            torch.rand(d, generator=g) + 0.5,
            torch.randn(k, d, generator=g) * 0.1,
            torch.rand(k, generator=g) + (5.0 if target == "mean" else 0.1),
            target,
        )
        return ProbeScorer(backbone, head, {"solver": "test"}, calibration)

    return build


def _laion(backbone):
    torch.manual_seed(4)
    state = {f"layers.{k}": v for k, v in laion_mlp(backbone.feature_dim).state_dict().items()}
    return LaionScorer(backbone, state, source="random-test-weights")


def _taste(backbone):
    zeroshot = ZeroShotScorer(backbone, GROUPS)
    g = torch.Generator().manual_seed(6)
    tensors = {
        "prior_positive": zeroshot.positive,
        "prior_negative": zeroshot.negative,
        "weight": torch.randn(backbone.feature_dim, generator=g),
        "coef": torch.tensor([0.5, 0.3]),
    }
    return TasteScorer(backbone, tensors, {"n_ratings": 3}, GROUPS.to_dict())


def _finetune(backbone):
    torch.manual_seed(5)
    return FinetunedScorer(backbone, FinetuneModel.from_backbone(backbone), recipe={"test": True})


# one or more factories per registered method: (method, builder)
FACTORIES: dict[str, tuple[str, Callable]] = {
    "zeroshot": ("zeroshot", lambda backbone: ZeroShotScorer(backbone, GROUPS)),
    "zeroshot-context": ("zeroshot", _zeroshot_context),
    "zeroshot-calibrated": ("zeroshot", lambda b: ZeroShotScorer(b, GROUPS, Calibration(0.5, 2.0))),
    "zeroshot-authors": ("zeroshot", lambda backbone: ZeroShotScorer(backbone, GROUPS, formula="authors")),
    "zeroshot-content": ("zeroshot", _zeroshot_content),
    "probe-mean": ("probe", _probe("mean")),
    "probe-distribution": ("probe", _probe("distribution", Calibration(1.1, -0.2))),
    "laion": ("laion", _laion),
    "finetune": ("finetune", _finetune),
    "taste": ("taste", _taste),
}


@pytest.fixture(scope="module")
def backbone(tiny_clip_spec: str):
    return load_backbone(tiny_clip_spec, device="cpu")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(
        0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )


def _close(a: ScoreOutput, b: ScoreOutput, atol: float = 1e-5) -> None:
    for x, y in zip(a, b, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, atol=atol, rtol=1e-5)


def test_every_registered_head_has_a_factory() -> None:
    assert set(SCORERS) <= {method for method, _ in FACTORIES.values()}, "add a factory for the new head"


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_head_saved_loaded_scores_the_same(name: str, backbone, images, tmp_path: Path) -> None:
    method, build = FACTORIES[name]
    scorer = build(backbone).eval()
    assert scorer.method == method and SCORERS[method] is type(scorer)
    path = save_scorer(scorer, tmp_path / f"{name}.safetensors")  # always the head's own tensors
    config = read_scorer_config(path)
    assert scorer_file_method(path) == method
    assert {k: v for k, v in config.items() if k != "version"} == json.loads(json.dumps(scorer.config()))
    loaded = load_scorer(path, device="cpu")  # rebuilds the backbone from the spec the file names
    assert type(loaded) is type(scorer)
    _close(scorer.score_images(images), loaded.score_images(images), atol=1e-6)
    if scorer.tensors() and not getattr(scorer, "config_rebuilds_tensors", False):
        with pytest.raises(ValueError, match="hold tensors"):
            save_scorer(scorer, tmp_path / f"{name}.json")
    else:
        from_json = load_scorer(save_scorer(scorer, tmp_path / f"{name}.json"), backbone=backbone)
        _close(scorer.score_images(images), from_json.score_images(images), atol=1e-6)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_scores_from_features_equal_scores_from_pixels(name: str, backbone, images) -> None:
    scorer = FACTORIES[name][1](backbone).eval()
    from_pixels = scorer.score_images(images)
    from_features = scorer.score_features(scorer.encode_images(images))
    _close(from_pixels, from_features, atol=1e-6)
    assert scorer.scores_features
    shared = scorer.encoder_key() is not None
    assert shared == (name != "finetune")  # a fine-tuned tower is its own encoder


def _zeroshot_raw(scorer, model, tokenizer, unit: np.ndarray) -> np.ndarray:
    """raw of a zero-shot head from its prompts, strategy and formula (authors: unnormalised embeddings)."""

    def encode(texts) -> np.ndarray:
        with torch.no_grad():
            e = model.encode_text(tokenizer(list(texts))).double().numpy()
        return e if scorer.formula == "authors" else e / np.linalg.norm(e, axis=1, keepdims=True)

    pos, neg = encode(scorer.prompts.positive), encode(scorer.prompts.negative)
    if scorer.strategy == "context":
        best = (unit @ encode(scorer.context_prompts).T).argmax(1)
        return 100 * ((unit * pos[best]).sum(1) - (unit * neg[best]).sum(1))
    if scorer.strategy == "content":  # the authors' content mode: the best prompt of each group
        return 100 * ((unit @ pos.T).max(1) - (unit @ neg.T).max(1))
    pos, neg = pos.mean(0), neg.mean(0)
    if scorer.formula == "cosine":
        pos, neg = pos / np.linalg.norm(pos), neg / np.linalg.norm(neg)
    return 100 * (unit @ pos - unit @ neg)


def _reference(name: str, scorer, images: torch.Tensor, spec: str) -> np.ndarray:
    """Each head's score with numpy on features from open_clip directly (the fine-tuned tower: its own)."""
    model, _, _ = open_clip.create_model_and_transforms(spec)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    pixels = (images.float() / 255 - mean) / std
    with torch.no_grad():
        tower = scorer.model.tower if name == "finetune" else model.visual
        f = tower(pixels).double().numpy()
    unit = f / np.linalg.norm(f, axis=1, keepdims=True)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    if name.startswith("zeroshot"):  # the prompts encoded here with open_clip, not the scorer's buffers
        raw = _zeroshot_raw(scorer, model, open_clip.get_tokenizer(spec), unit)
        score = 1 + 9 * sigmoid(raw)
        return score * 0.5 + 2.0 if name == "zeroshot-calibrated" else score
    t = {k: v.double().numpy() for k, v in scorer.tensors().items()}
    if name.startswith("probe"):
        out = (f - t["scaler_mean"]) / t["scaler_std"] @ t["weight"].T + t["bias"]
        if name == "probe-mean":
            return out[:, 0]
        p = np.clip(out, 0, None)
        return (p / p.sum(1, keepdims=True)) @ np.arange(1, 11) * 1.1 - 0.2
    if name == "taste":  # stars = c0 + c1 * zero-shot score + w . f/|f|, mapped onto 1-10
        generic = 1 + 9 * sigmoid(100 * (unit @ t["prior_positive"] - unit @ t["prior_negative"]))
        stars = t["coef"][0] + t["coef"][1] * generic + unit @ t["weight"]
        return 1 + 1.8 * stars
    if name == "laion":
        x = unit
        for i in (0, 2, 4, 6, 7):  # no activations in the released MLP
            x = x @ t[f"layers.{i}.weight"].T + t[f"layers.{i}.bias"]
        return x[:, 0]
    logits = f @ t["head.weight"].T + t["head.bias"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)) @ np.arange(1, 11)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_head_equals_independent_computation(name: str, backbone, images, tiny_clip_spec: str) -> None:
    scorer = FACTORIES[name][1](backbone).eval()
    expected = _reference(name, scorer, images, tiny_clip_spec)
    np.testing.assert_allclose(scorer.score_images(images).score.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_heads_compute_in_float32_under_autocast(backbone) -> None:
    features = torch.randn(6, backbone.feature_dim)
    for name in ("zeroshot", "probe-mean", "laion"):
        scorer = FACTORIES[name][1](backbone).eval()
        expected = scorer.score_features(features).score
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = scorer.score_features(features.bfloat16()).score
        assert got.dtype == torch.float32
        # only the input's rounding to bf16 differs, never the head's arithmetic
        torch.testing.assert_close(got, scorer.score_features(features.bfloat16().float()).score)
        assert not torch.equal(expected, torch.zeros_like(expected))


def test_a_new_head_registers_saves_and_loads(backbone, images, tmp_path: Path, monkeypatch) -> None:
    """The whole contract of a head, as a personal-taste head would implement it."""
    monkeypatch.setattr("clip_aesthetics.scorers.registry.SCORERS", dict(SCORERS))

    @register_scorer
    class Taste(Scorer):
        method = "test-taste"

        def __init__(self, backbone, direction: torch.Tensor, calibration=None) -> None:
            super().__init__(backbone, calibration)
            self.register_buffer("direction", direction.float())

        def compute_scores(self, features: torch.Tensor) -> ScoreOutput:
            raw = torch.nn.functional.normalize(features, dim=-1) @ self.direction
            return ScoreOutput(score=5.5 + 4.5 * raw, raw=raw)

        def tensors(self) -> dict[str, torch.Tensor]:
            return {"direction": self.direction}

        @classmethod
        def from_saved(cls, config, tensors, backbone):
            return cls(backbone, tensors["direction"], Calibration.from_config(config))

    taste = Taste(backbone, torch.nn.functional.normalize(torch.randn(backbone.feature_dim), dim=0))
    loaded = load_scorer(save_scorer(taste, tmp_path / "taste.safetensors"), backbone=backbone)
    assert type(loaded) is Taste and loaded.backbone is backbone
    _close(taste.score_images(images), loaded.score_images(images))


def test_unknown_method_and_damaged_files_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"method": "nope", "backbone": {"model": "ViT-B-32"}}')
    with pytest.raises(ValueError, match="unknown scorer method 'nope'"):
        load_scorer(tmp_path / "x.json")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_scorer_config(tmp_path / "bad.safetensors")
    (tmp_path / "plain.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="with a 'method' name"):
        scorer_file_method(tmp_path / "plain.json")


@pytest.mark.parametrize("first", ["clip_aesthetics.scorers", "clip_aesthetics.finetune"])
def test_scorers_and_finetune_import_in_either_order(first: str) -> None:
    second = {"clip_aesthetics.scorers": "clip_aesthetics.finetune"}.get(first, "clip_aesthetics.scorers")
    code = f"import {first}, {second}; {second}.__name__"
    subprocess.run([sys.executable, "-c", code], check=True)
    scorers = Path(__file__).parents[1] / "src" / "clip_aesthetics" / "scorers"
    assert not any("..finetune" in p.read_text() for p in scorers.glob("*.py")), "scorers import finetune"
