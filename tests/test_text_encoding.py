"""Prompt encoding at the prompts' own length (issue 22, point 1).

Every expected value comes from open_clip's own ``model.encode_text`` on the padded 77-token input.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from clip_aesthetics import ZeroShotScorer, load_backbone, load_scorer, save_scorer
from clip_aesthetics.encoders.backbones import Backbone, _clip_preprocess, causal_text_tower
from clip_aesthetics.encoders.prompts import (
    IMAGENET_CLASSES,
    PromptGroups,
    cache_dir,
    default_prompts,
    encode_texts,
    expand,
)
from conftest import TINY_CLIP_CONFIG

TEXTS = [
    "a",
    "a outstanding picture of a tench",
    "a horrible picture of a great white shark",
    "a picture of a " + "very " * 90 + "long prompt",  # past 77 tokens: the tokenizer cuts it
    "",
]
GROUPS = PromptGroups(("a stunning photo", "a superb picture of a dog"), ("a dull photo", "an ugly photo"))


def _reference(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.encode_text(tokens)  # open_clip's own, on the padded 77-token context


def _backbone_of(model: torch.nn.Module, name: str = "tiny") -> Backbone:
    return Backbone(  # a model built here, wrapped as load_backbone would (no files written)
        model.eval(),
        spec=name,
        pretrained="none",
        kind="clip",
        preprocess_cfg=_clip_preprocess(model),
        weights_id=f"{name}:test",
        tokenizer=open_clip.get_tokenizer("ViT-B-32"),
    )


def _tiny(seed: int = 0, **text_cfg) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = {**TINY_CLIP_CONFIG, "text_cfg": {**TINY_CLIP_CONFIG["text_cfg"], **text_cfg}}
    return open_clip.CLIP(**cfg)


def _custom_text(seed: int = 0, **text_cfg) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = {**TINY_CLIP_CONFIG, "text_cfg": {**TINY_CLIP_CONFIG["text_cfg"], **text_cfg}}
    return open_clip.CustomTextCLIP(**cfg)


def test_tiny_clip_equals_open_clip_on_77_tokens(tiny_clip_spec: str) -> None:
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    tokens = backbone.tokenize(TEXTS)
    assert causal_text_tower(backbone.model) is not None
    end_of_text = [row.tolist().index(49407) + 1 for row in tokens]  # open_clip's EOT token id
    assert backbone.text_lengths(tokens).tolist() == end_of_text
    assert end_of_text[3] == 77 and max(end_of_text[:3]) < 12
    with torch.inference_mode():
        ours = backbone.encode_text(tokens)
    torch.testing.assert_close(ours, _reference(backbone.model, tokens), rtol=0, atol=1e-5)
    with torch.inference_mode():  # one short text alone runs at its own length and still agrees
        alone = backbone.encode_text(tokens[1:2])
    torch.testing.assert_close(alone, _reference(backbone.model, tokens[1:2]), rtol=0, atol=1e-5)


def test_default_prompts_equal_open_clip(tiny_clip_spec: str) -> None:
    """A batch sharing "a outstanding picture of a": the shared positions are computed once."""
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    tokens = backbone.tokenize([*default_prompts().positive[:40], "a outstanding picture of a"])
    assert causal_text_tower(backbone.model).shares_prefix
    with torch.inference_mode():
        ours = backbone.encode_text(tokens)
    torch.testing.assert_close(ours, _reference(backbone.model, tokens), rtol=0, atol=1e-5)
    same = backbone.tokenize(["a dog", "a dog"])  # alike rows: all but the last position shared
    with torch.inference_mode():
        torch.testing.assert_close(
            backbone.encode_text(same), _reference(backbone.model, same), rtol=0, atol=1e-5
        )


def test_the_tower_sees_only_the_prompts_length(tiny_clip_spec: str) -> None:
    """Before: every default prompt ran all 77 positions through every layer; now about 3 of its own."""
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    queries: list[int] = []  # query positions the first layer's attention computes, over all prompts
    attention = backbone.model.transformer.resblocks[0].attn
    hook = attention.register_forward_pre_hook(
        lambda _, args: queries.append(args[0].shape[0] * args[0].shape[1])
    )
    try:
        encode_texts(backbone, default_prompts().positive, use_cache=False)
    finally:
        hook.remove()
    assert queries and sum(queries) / 1000 < 5


def _with_text_subclass() -> torch.nn.Module:
    model = _custom_text()

    class OwnText(open_clip.transformer.TextTransformer):
        pass

    model.text.__class__ = OwnText
    return model


@pytest.mark.parametrize(
    ("build", "exact"),
    [
        (lambda: _tiny(pool_type="eos", eos_id=49407), True),
        (lambda: _tiny(pool_type="first"), True),
        (lambda: _custom_text(), True),  # CustomTextCLIP with its own TextTransformer
        (lambda: _custom_text(pool_type="eos", eos_id=49407), True),
        (lambda: _tiny(pool_type="last"), False),  # pools the padding: full context
        (lambda: _tiny(no_causal_mask=True), False),  # bidirectional: full context
        (lambda: _custom_text(embed_cls=True), False),  # a class token appended after the padding
        (lambda: _tiny(ls_init_value=0.1, qk_norm=True), True),  # custom blocks, per-token but the mask
        (lambda: _with_text_subclass(), False),  # a tower whose code we did not read: full context
    ],
    ids=[
        "eos",
        "first",
        "custom-text",
        "custom-text-eos",
        "last",
        "bidirectional",
        "cls",
        "custom-blocks",
        "subclass",
    ],
)
def test_other_towers_agree_or_keep_the_full_context(build, exact: bool) -> None:
    model = build().eval()
    backbone = _backbone_of(model)
    tokens = backbone.tokenize(TEXTS)
    assert (causal_text_tower(model) is not None) == exact
    with torch.inference_mode():
        ours = backbone.encode_text(tokens)
    torch.testing.assert_close(ours, _reference(model, tokens), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_vit_b_32_architecture_equals_open_clip() -> None:
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()  # the real architecture, random weights
    backbone = _backbone_of(model, "ViT-B-32")
    for texts in (TEXTS[:3] + list(default_prompts().negative[:5]), default_prompts().negative[-8:]):
        tokens = backbone.tokenize(texts)  # mixed texts, then texts sharing "a horrible picture of a"
        with torch.inference_mode():
            ours = backbone.encode_text(tokens)
        reference = _reference(model, tokens)
        torch.testing.assert_close(ours, reference, rtol=0, atol=2e-5 * reference.abs().max().item())


@pytest.mark.slow
def test_bf16_text_tower_within_tolerance_of_fp32() -> None:
    """The precision rule of the image tower (bf16 on native-bf16 CPUs and CUDA) applied to prompts.

    Tolerance on the real architecture (random weights: nearly alike prompts, the hard case): each prompt's
    direction within 1e-3 of fp32, the ensembled positive-minus-negative direction within 5%, and zero-shot
    scores of 200 image embeddings spread over every direction (1-10 scale) within 0.15 of open_clip's fp32
    ones, 0.05 on average, ranked alike to SRCC 0.999: the image tower's own bf16 tolerance (about 0.03
    mean, 0.1 max on camera photos, docs/benchmarks.md).
    """
    from scipy.stats import spearmanr

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    backbone = _backbone_of(model, "ViT-B-32")
    groups = PromptGroups(default_prompts().positive[:32], default_prompts().negative[:32])
    tokens = [backbone.tokenize(list(texts)) for texts in (groups.positive, groups.negative)]
    fp32 = [_reference(model, t) for t in tokens]
    bf16 = [
        encode_texts(backbone, texts, use_cache=False, normalize=False, precision="bf16")
        for texts in (groups.positive, groups.negative)
    ]
    for exact, rounded in zip(fp32, bf16, strict=True):
        assert F.cosine_similarity(exact, rounded).min() > 1 - 1e-3

    def direction(pair):
        positive, negative = (F.normalize(F.normalize(t, dim=-1).mean(0), dim=0) for t in pair)
        return positive - negative

    exact, rounded = direction(fp32), direction(bf16)
    assert (exact - rounded).norm() / exact.norm() < 0.05
    torch.manual_seed(1)
    features = F.normalize(torch.randn(200, exact.numel()), dim=-1)
    scores = [1 + 9 * torch.sigmoid(100 * features @ d) for d in (exact, rounded)]
    assert scores[0].max() - scores[0].min() > 5  # the scores spread over the scale
    assert (scores[0] - scores[1]).abs().max() < 0.15 and (scores[0] - scores[1]).abs().mean() < 0.05
    assert spearmanr(scores[0], scores[1])[0] > 0.999


def test_cache_once_per_tower_and_precision(tiny_clip_spec: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CLIP_AESTHETICS_CACHE", str(tmp_path / "cache"))
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    first = encode_texts(backbone, TEXTS[:3], normalize=False)
    (cached,) = (cache_dir() / "text").glob("*.safetensors")
    torch.testing.assert_close(load_file(cached)["embeddings"], first)  # unnormalised, as the tower gave
    torch.testing.assert_close(
        first, _reference(backbone.model, backbone.tokenize(TEXTS[:3])), atol=1e-5, rtol=0
    )

    def refuse(*_):
        raise AssertionError("the text tower ran although the embeddings are cached")

    monkeypatch.setattr(backbone, "encode_text", refuse)
    again = encode_texts(backbone, TEXTS[:3])
    torch.testing.assert_close(again, F.normalize(first, dim=-1), rtol=0, atol=0)
    cached.write_bytes(cached.read_bytes()[:40])  # a damaged cache file is encoded again, not an error
    monkeypatch.undo()
    monkeypatch.setenv("CLIP_AESTHETICS_CACHE", str(tmp_path / "cache"))
    torch.testing.assert_close(encode_texts(backbone, TEXTS[:3], normalize=False), first, rtol=0, atol=0)
    encode_texts(backbone, TEXTS[:3], precision="bf16")  # another precision: another entry
    assert len(list((cache_dir() / "text").glob("*.safetensors"))) == 2


def test_zero_shot_file_carries_its_encoded_groups(tiny_clip_spec: str, tmp_path: Path, monkeypatch) -> None:
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    scorer = ZeroShotScorer(backbone, GROUPS).eval()
    path = save_scorer(scorer, tmp_path / "zs.safetensors")
    stored = load_file(path)
    assert set(stored) == {"positive", "negative"}
    torch.testing.assert_close(stored["positive"], scorer.positive.cpu(), rtol=0, atol=0)
    json_path = save_scorer(scorer, tmp_path / "zs.json")  # prompts only: encoded again on load
    calls: list[int] = []
    original = Backbone.encode_text
    monkeypatch.setattr(Backbone, "encode_text", lambda self, t: calls.append(len(t)) or original(self, t))
    monkeypatch.setenv("CLIP_AESTHETICS_CACHE", str(tmp_path / "empty-cache"))
    features = torch.randn(6, backbone.feature_dim)
    loaded = load_scorer(path, backbone=backbone)
    assert calls == []  # an actor, the app or a rerun loading the file never runs the text tower
    torch.testing.assert_close(loaded.score_features(features).score, scorer.score_features(features).score)
    from_json = load_scorer(json_path, backbone=backbone)
    assert calls  # the .json file had to encode its prompts
    torch.testing.assert_close(
        from_json.score_features(features).score, scorer.score_features(features).score
    )


def test_zero_shot_groups_of_other_weights_are_encoded_again(tmp_path: Path, monkeypatch) -> None:
    from conftest import save_open_clip_dir

    first = load_backbone(f"local-dir:{save_open_clip_dir(tmp_path / 'a', TINY_CLIP_CONFIG, seed=1)}")
    second = load_backbone(f"local-dir:{save_open_clip_dir(tmp_path / 'b', TINY_CLIP_CONFIG, seed=2)}")
    path = save_scorer(ZeroShotScorer(first, GROUPS), tmp_path / "zs.safetensors")
    moved = load_scorer(path, backbone=second)
    fresh = ZeroShotScorer(second, GROUPS)
    torch.testing.assert_close(moved.positive, fresh.positive, rtol=0, atol=0)
    assert not torch.allclose(moved.positive, load_scorer(path, backbone=first).positive)


def test_encoded_groups_of_the_wrong_shape_are_refused(tiny_clip_spec: str) -> None:
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    with pytest.raises(ValueError, match="do not fit"):
        ZeroShotScorer(backbone, GROUPS, encoded={"positive": torch.zeros(7), "negative": torch.zeros(7)})


def test_random_weights_are_never_cached(tmp_path: Path, monkeypatch) -> None:
    """``--pretrained none`` draws new weights in every process: another draw's embeddings would be wrong."""
    monkeypatch.setenv("CLIP_AESTHETICS_CACHE", str(tmp_path / "cache"))
    backbones = [_backbone_of(_tiny(seed), "tiny") for seed in (1, 2)]
    for backbone in backbones:
        backbone.weights_id = "tiny:random"  # what load_backbone names random weights
    first, second = (encode_texts(b, TEXTS[:2], normalize=False) for b in backbones)
    assert not (tmp_path / "cache").exists()
    torch.testing.assert_close(second, _reference(backbones[1].model, backbones[1].tokenize(TEXTS[:2])))
    assert not torch.allclose(first, second)


def test_many_prompts_come_back_in_their_order(tiny_clip_spec: str) -> None:
    """Sorted by length and words for the tower, returned in the caller's order (prompt search's lists)."""
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    texts = expand(("nice", "ugly", "award-winning"), IMAGENET_CLASSES[:30]) + expand(("dull",))
    ours = encode_texts(backbone, texts, batch_size=16, use_cache=False, normalize=False)
    reference = _reference(backbone.model, backbone.tokenize(list(texts)))
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_zero_shot_file_on_random_weights_is_encoded_again(
    tiny_clip_spec: str, tmp_path: Path, monkeypatch
) -> None:
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    backbone.weights_id = "tiny:random"  # as `--pretrained none` names weights drawn for this load only
    path = save_scorer(ZeroShotScorer(backbone, GROUPS), tmp_path / "zs.safetensors")
    calls: list[int] = []
    original = Backbone.encode_text
    monkeypatch.setattr(Backbone, "encode_text", lambda self, t: calls.append(len(t)) or original(self, t))
    load_scorer(path, backbone=backbone)
    assert calls
