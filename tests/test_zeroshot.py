"""Zero-shot scoring equals the paper's formula computed independently with open_clip."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import timm
import torch
from PIL import Image

from clip_aesthetics import ZeroShotScorer, load_backbone, load_scorer, save_scorer
from clip_aesthetics.encoders.prompts import (
    IMAGENET_CLASSES,
    PromptGroups,
    PromptRecipe,
    default_prompts,
    encode_texts,
    load_prompt_file,
)
from clip_aesthetics.pipeline.images import find_images
from clip_aesthetics.runs.score import score_paths

GROUPS = PromptGroups(("a stunning photo", "a masterpiece"), ("a dull photo",))


def reference_scores(spec: str, groups: PromptGroups, paths: list[Path]) -> torch.Tensor:
    """The formula with open_clip alone: 1 + 9 * sigmoid(100 * (cos(f, g+) - cos(f, g-)))."""
    model, _, preprocess = open_clip.create_model_and_transforms(spec)
    tokenizer = open_clip.get_tokenizer(spec)
    model.eval()
    with torch.inference_mode():

        def group(texts):
            emb = model.encode_text(tokenizer(list(texts)))
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(0)
            return mean / mean.norm()

        images = torch.stack([preprocess(Image.open(p)) for p in paths])
        features = model.encode_image(images)
        features = features / features.norm(dim=-1, keepdim=True)
        raw = 100 * (features @ group(groups.positive) - features @ group(groups.negative))
    return 1 + 9 * torch.sigmoid(raw)


def test_scores_equal_independent_open_clip(tiny_clip_spec: str, photo_dir: Path) -> None:
    paths = find_images([photo_dir])
    scorer = ZeroShotScorer(load_backbone(tiny_clip_spec, device="cpu"), GROUPS)
    report = score_paths(scorer, paths, batch_size=3, workers=0, progress=False)
    expected = reference_scores(tiny_clip_spec, GROUPS, paths)
    ours = {row["path"]: row["score"] for row in report.rows}
    assert torch.allclose(torch.tensor([ours[str(p)] for p in paths]), expected, atol=1e-4)
    assert [row["rank"] for row in report.rows] == list(range(1, len(paths) + 1))
    assert [row["path"] for row in report.rows] == [str(paths[i]) for i in torch.argsort(-expected).tolist()]
    for row in report.rows:
        assert (row["label"] == "good") == (row["raw"] > 0)


def test_default_prompts_are_the_papers() -> None:
    groups = default_prompts()
    assert len(groups.positive) == len(groups.negative) == 1000
    # the authors' class names (first synonym of imagenet1000_clsidx_to_labels.txt), not open_clip's
    assert groups.positive[0] == "a outstanding picture of a tench"
    assert groups.positive[4] == "a outstanding picture of a hammerhead"
    assert groups.negative[7] == "a horrible picture of a cock"
    assert groups.positive[21] == "a outstanding picture of a kite"
    assert groups.negative[999] == "a horrible picture of a toilet tissue"
    fixed = PromptRecipe(context="none").groups()
    assert fixed == PromptGroups(("a outstanding picture",), ("a horrible picture",))


def test_curated_class_names_are_an_option() -> None:
    groups = default_prompts("imagenet-curated")
    assert groups.positive[4] == "a outstanding picture of a hammerhead shark"
    assert groups.negative[7] == "a horrible picture of a rooster"
    assert groups.positive[21] == "a outstanding picture of a kite (bird of prey)"
    with pytest.raises(ValueError, match="imagenet-curated"):
        default_prompts("imagenet-21k")


def test_authors_class_names_are_the_first_wordnet_lemmas() -> None:
    """The shipped list against timm's copy of the ImageNet-1k synsets' WordNet lemmas (independent)."""
    info = Path(timm.data.__file__).parent / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(
        line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
    )
    assert tuple(lemmas[s].split(",")[0].strip() for s in synsets) == IMAGENET_CLASSES
    pairs = zip(IMAGENET_CLASSES, open_clip.IMAGENET_CLASSNAMES, strict=True)
    differing = sum(a.lower() != b.lower() for a, b in pairs)
    assert 250 < differing < 350  # about 300 names differ between the two lists


def test_score_contents_option_selects_the_class_names() -> None:
    from clip_aesthetics.cli.score import prompt_groups

    assert prompt_groups(None, None, None) is None  # the scorer's default: the authors' list
    curated = prompt_groups(None, None, None, "imagenet-curated")
    assert curated.negative[7] == "a horrible picture of a rooster"
    assert prompt_groups(None, None, None, "cat,dog").positive == (
        "a outstanding picture of a cat",
        "a outstanding picture of a dog",
    )
    with pytest.raises(ValueError, match="--contents"):
        prompt_groups(["a"], ["b"], None, "imagenet")


@pytest.mark.parametrize("strategy", ["ensemble", "context"])
def test_zero_shot_head_computes_in_float32_under_bf16_autocast(tiny_clip_spec: str, strategy: str) -> None:
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    contexts = ("a picture of a cat", "a picture of a dog")
    groups = PromptGroups(("a great cat", "a great dog"), ("a bad cat", "a bad dog"))
    scorer = ZeroShotScorer(backbone, groups, strategy=strategy, context_prompts=contexts)
    features = torch.randn(64, backbone.feature_dim, generator=torch.Generator().manual_seed(0))
    exact = scorer.score_features(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = scorer.score_features(features)
    assert under_autocast.raw.dtype == torch.float32
    torch.testing.assert_close(under_autocast.raw, exact.raw, rtol=0, atol=1e-5)
    # independently: the prompts encoded by open_clip itself, the formula in float64
    f = torch.nn.functional.normalize(features.double(), dim=-1)
    if strategy == "ensemble":
        model = open_clip.create_model(tiny_clip_spec).eval()
        tokenizer = open_clip.get_tokenizer(tiny_clip_spec)
        with torch.inference_mode():
            pos, neg = (
                torch.nn.functional.normalize(
                    torch.nn.functional.normalize(
                        model.encode_text(tokenizer(list(g))).double(), dim=-1
                    ).mean(0),
                    dim=0,
                )
                for g in (groups.positive, groups.negative)
            )
        expected = 100 * (f @ pos - f @ neg)
        torch.testing.assert_close(under_autocast.raw.double(), expected, rtol=0, atol=1e-4)


def test_text_embeddings_cached_on_disk(tiny_clip_spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    first = encode_texts(backbone, ("a unique cache probe text",))
    monkeypatch.setattr(backbone, "encode_text", lambda tokens: pytest.fail("recomputed a cached embedding"))
    assert torch.equal(encode_texts(backbone, ("a unique cache probe text",)), first)


def test_scorer_file_round_trip(tiny_clip_spec: str, photo_dir: Path, tmp_path: Path) -> None:
    scorer = ZeroShotScorer(load_backbone(tiny_clip_spec, device="cpu"), GROUPS)
    save_scorer(scorer, tmp_path / "scorer.json")
    config = json.loads((tmp_path / "scorer.json").read_text())
    assert config["method"] == "zeroshot" and config["prompts"]["positive"] == list(GROUPS.positive)
    loaded = load_scorer(tmp_path / "scorer.json", device="cpu")
    paths = find_images([photo_dir])
    a = score_paths(scorer, paths, workers=0, progress=False).rows
    b = score_paths(loaded, paths, workers=0, progress=False).rows
    assert [(r["path"], r["score"]) for r in a] == [(r["path"], r["score"]) for r in b]


def test_prompt_files_json_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"positive": ["good"], "negative": ["bad", "worse"]}))
    (tmp_path / "p.yaml").write_text("positive: good\nnegative:\n  - bad\n  - worse\n")
    assert load_prompt_file(tmp_path / "p.json") == load_prompt_file(tmp_path / "p.yaml")
    (tmp_path / "bad.json").write_text(json.dumps({"positive": ["good"]}))
    with pytest.raises(ValueError, match="negative"):
        load_prompt_file(tmp_path / "bad.json")


def test_image_only_backbone_refused() -> None:
    with pytest.raises(TypeError, match="text encoder"):
        ZeroShotScorer(load_backbone("timm:resnet18", "none", device="cpu"), GROUPS)


def test_batch_too_large_for_memory_is_split(tiny_clip_spec: str, photo_dir: Path) -> None:
    from clip_aesthetics.pipeline.images import iter_batches

    scorer = ZeroShotScorer(load_backbone(tiny_clip_spec, device="cpu"), GROUPS)
    batch = next(
        iter_batches(find_images([photo_dir]), scorer.backbone.preprocess_cfg, batch_size=8, workers=0)
    )
    expected = scorer.score_images(batch.images)
    forward = scorer.forward
    calls = []

    def small_memory_forward(pixels):
        calls.append(len(pixels))
        if len(pixels) > 2:
            raise torch.OutOfMemoryError("simulated")
        return forward(pixels)

    scorer.forward = small_memory_forward
    split = scorer.score_images(batch.images)
    assert torch.allclose(split.score, expected.score, atol=1e-6) and torch.allclose(split.raw, expected.raw)
    assert max(c for c in calls if c <= 2) == 2 and calls[0] == 8


def test_saved_scorer_files_follow_the_umask(tiny_clip_spec: str, tmp_path: Path) -> None:
    import os

    scorer = ZeroShotScorer(load_backbone(tiny_clip_spec, device="cpu"), GROUPS)
    old = os.umask(0o022)
    try:
        for name in ("s.json", "s.safetensors"):
            save_scorer(scorer, tmp_path / name)
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_checkpoint_given_as_scorer_gets_a_hint(tmp_path: Path) -> None:
    (tmp_path / "head.pth").write_bytes(b"not a scorer")
    with pytest.raises(ValueError, match="laion:PATH"):
        load_scorer(tmp_path / "head.pth")


def test_files_written_before_the_formula_choice_load_with_cosine(
    tiny_clip_spec: str, tmp_path: Path
) -> None:
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    save_scorer(ZeroShotScorer(backbone, GROUPS, formula="authors"), tmp_path / "authors.json")
    config = json.loads((tmp_path / "authors.json").read_text())
    assert config["formula"] == "authors"
    del config["formula"]  # as every file written before the choice existed
    (tmp_path / "old.json").write_text(json.dumps(config))
    old, authors = (load_scorer(tmp_path / name, device="cpu") for name in ("old.json", "authors.json"))
    assert (old.formula, authors.formula) == ("cosine", "authors")
    features = torch.randn(8, backbone.feature_dim, generator=torch.Generator().manual_seed(1))
    expected = reference_raw_from_features(tiny_clip_spec, GROUPS, features)  # cosine, by open_clip
    torch.testing.assert_close(old.score_features(features).raw.double(), expected, rtol=0, atol=1e-4)


def reference_raw_from_features(spec: str, groups: PromptGroups, features: torch.Tensor) -> torch.Tensor:
    """100 * (cos(f, g+) - cos(f, g-)) with groups ensembled from open_clip's own text embeddings."""
    model, tokenizer = open_clip.create_model(spec).eval(), open_clip.get_tokenizer(spec)
    with torch.inference_mode():
        embedded = [
            model.encode_text(tokenizer(list(g))).double() for g in (groups.positive, groups.negative)
        ]
    pos, neg = (
        torch.nn.functional.normalize(torch.nn.functional.normalize(e, dim=-1).mean(0), dim=0)
        for e in embedded
    )
    f = torch.nn.functional.normalize(features.double(), dim=-1)
    return 100 * (f @ pos - f @ neg)


@pytest.mark.parametrize("command", ["score", "cull"])
def test_zeroshot_score_option_picks_the_formula(
    command: str, tiny_clip_spec: str, photo_dir: Path, tmp_path: Path
) -> None:
    import csv

    from typer.testing import CliRunner

    from clip_aesthetics.cli import app

    prompts = ["--positive", "a stunning photo", "--positive", "a masterpiece", "--negative", "a dull photo"]
    bad = CliRunner().invoke(
        app, [command, str(photo_dir), "-o", str(tmp_path / "x.csv"), "--zeroshot-score", "x"]
    )
    assert bad.exit_code == 2 and not (tmp_path / "x.csv").exists()
    if command == "cull":
        return
    out = tmp_path / "ranked.csv"
    args = ["score", str(photo_dir), "--model", tiny_clip_spec, *prompts, "--zeroshot-score", "authors"]
    result = CliRunner().invoke(app, [*args, "-o", str(out), "--workers", "0"])
    assert result.exit_code == 0, result.output
    ranked = list(csv.DictReader(out.open()))
    raws = [float(row["raw"]) for row in ranked]
    assert raws == sorted(raws, reverse=True)  # the 1-10 score saturates with this raw: raw breaks the ties
    rows = {row["path"]: float(row["raw"]) for row in ranked}
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip_spec)
    tokenizer = open_clip.get_tokenizer(tiny_clip_spec)
    paths = sorted(rows)
    with torch.inference_mode():  # the authors' formula: unnormalised text embeddings averaged per group
        pos, neg = (
            model.encode_text(tokenizer(list(g))).double().mean(0) for g in (GROUPS.positive, GROUPS.negative)
        )
        f = model.eval().encode_image(torch.stack([preprocess(Image.open(p)) for p in paths])).double()
    expected = 100 * torch.nn.functional.normalize(f, dim=-1) @ (pos - neg)
    torch.testing.assert_close(
        torch.tensor([rows[p] for p in paths], dtype=torch.float64), expected, rtol=1e-5, atol=1e-4
    )


def test_compare_path_builds_the_zeroshot_scorer_with_the_formula(tiny_clip_spec: str) -> None:
    from clip_aesthetics.runs.score import load_scorer_groups

    (group,) = load_scorer_groups(["zeroshot"], model=tiny_clip_spec, device="cpu", formula="authors")
    assert [scorer.formula for _, scorer in group] == ["authors"]
    with pytest.raises(ValueError, match="zero-shot score"):
        build_scorer_with_formula(tiny_clip_spec, "both")


def build_scorer_with_formula(spec: str, formula: str):
    from clip_aesthetics.runs.score import build_scorer

    return build_scorer("zeroshot", model=spec, device="cpu", formula=formula)
