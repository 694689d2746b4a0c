"""Backbone loading through the real paths, offline: local dirs, the Hugging Face cache, files, timm."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import open_clip
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from clip_aesthetics.encoders.backbones import load_backbone
from clip_aesthetics.encoders.weights import WeightsNotFoundError
from clip_aesthetics.pipeline.images import prepare
from conftest import TINY_CLIP_CONFIG, hub_snapshot, photo, save_open_clip_dir


def _uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules())


def test_local_dir_loads_saved_weights(tiny_clip_dir: Path, tiny_clip_spec: str) -> None:
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    saved = load_file(tiny_clip_dir / "open_clip_model.safetensors")
    assert torch.equal(backbone.model.state_dict()["visual.conv1.weight"], saved["visual.conv1.weight"])
    assert backbone.kind == "clip" and backbone.feature_dim == 32 and backbone.preprocess_cfg.size == 32
    assert backbone.tokenize(["a picture"]).shape == (1, 77)


def test_local_dir_without_weights_fails(tmp_path: Path, tiny_clip_dir: Path) -> None:
    (tmp_path / "open_clip_config.json").write_text((tiny_clip_dir / "open_clip_config.json").read_text())
    with pytest.raises(WeightsNotFoundError, match="no weights file"):
        load_backbone(f"local-dir:{tmp_path}")


def test_hf_hub_spec_from_cache(tiny_clip_dir: Path) -> None:
    snapshot = hub_snapshot("someorg/tiny-clip")
    save_open_clip_dir(snapshot, TINY_CLIP_CONFIG, seed=3)
    backbone = load_backbone("hf-hub:someorg/tiny-clip", device="cpu")
    saved = load_file(snapshot / "open_clip_model.safetensors")
    assert torch.equal(backbone.model.state_dict()["text_projection"], saved["text_projection"])
    digest = hashlib.sha256((snapshot / "open_clip_model.safetensors").read_bytes()).hexdigest()
    # the repo at its cached revision, and the weights file loaded from it
    assert backbone.weights_id == f"hf-hub:someorg/tiny-clip@{'0' * 40}:sha256:{digest}"


@pytest.fixture(scope="session")
def real_vit_b32_openai_cache() -> Path:
    """ViT-B-32 with random weights where the OpenAI tag's weights live in the Hugging Face cache."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    file = hub_snapshot("timm/vit_base_patch32_clip_224.openai")
    file.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.half().contiguous() for k, v in model.state_dict().items()},
        file / "open_clip_model.safetensors",
    )
    return file / "open_clip_model.safetensors"


def test_openai_tag_loads_from_cache_with_quick_gelu(real_vit_b32_openai_cache: Path) -> None:
    backbone = load_backbone("ViT-B-32", "openai", device="cpu")
    assert _uses_quick_gelu(backbone.model)
    saved = load_file(real_vit_b32_openai_cache)
    loaded = backbone.model.state_dict()
    assert torch.equal(loaded["visual.proj"], saved["visual.proj"].float())
    assert backbone.feature_dim == 512 and backbone.preprocess_cfg.size == 224
    # and it is the right activation: the output equals open_clip's own QuickGELU model on the same weights
    reference = open_clip.create_model("ViT-B-32-quickgelu", pretrained=str(real_vit_b32_openai_cache))
    pixels = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(backbone.encode_image(pixels), reference.encode_image(pixels), atol=1e-5)


def test_weights_file_of_openai_tag_gets_quick_gelu(real_vit_b32_openai_cache: Path) -> None:
    load_backbone("ViT-B-32", "openai", device="cpu")  # the tag's file is then known by its content
    assert _uses_quick_gelu(load_backbone("ViT-B-32", str(real_vit_b32_openai_cache), device="cpu").model)


def test_non_openai_file_keeps_gelu(tmp_path: Path, tiny_clip_dir: Path) -> None:
    torch.manual_seed(1)  # other weights than the OpenAI tag's (seed 0): known by content, not by name
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    save_file(
        {k: v.half().contiguous() for k, v in model.state_dict().items()}, tmp_path / "mine.safetensors"
    )
    backbone = load_backbone("ViT-B-32", str(tmp_path / "mine.safetensors"), device="cpu")
    assert not _uses_quick_gelu(backbone.model)
    assert _uses_quick_gelu(
        load_backbone("ViT-B-32", str(tmp_path / "mine.safetensors"), quick_gelu=True).model
    )


def test_missing_weights_fail_fast_with_instructions() -> None:
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match=r"hf download timm/vit_base_patch16_clip_224\.openai"):
        load_backbone("ViT-B-16", "openai")
    assert time.perf_counter() - start < 10  # never the hub's half-minute retries


def test_unknown_tag_and_model_are_clear() -> None:
    with pytest.raises(WeightsNotFoundError, match=r"known tag of ViT-B-32.*openai"):
        load_backbone("ViT-B-32", "no-such-tag")
    with pytest.raises(ValueError, match="unknown model"):
        load_backbone("ViT-X-99")


def test_random_weights_on_request() -> None:
    backbone = load_backbone("RN50", "none", device="cpu")
    assert backbone.weights_id == "RN50:random" and backbone.feature_dim == 1024


def test_timm_backbone_preprocessing_matches_timm(tmp_path: Path) -> None:
    backbone = load_backbone("timm:resnet18", "none", device="cpu")
    data_config = timm.data.resolve_model_data_config(backbone.model)
    reference = timm.data.create_transform(**data_config, is_training=False)
    image = photo(0, (300, 200))
    ours = prepare(image, backbone.preprocess_cfg).float() / 255.0
    mean = torch.tensor(backbone.preprocess_cfg.mean).view(3, 1, 1)
    std = torch.tensor(backbone.preprocess_cfg.std).view(3, 1, 1)
    assert torch.allclose((ours - mean) / std, reference(image), atol=1e-5)
    assert backbone.feature_dim == 512 and not backbone.has_text
    with pytest.raises(TypeError, match="no text encoder"):
        backbone.encode_text(torch.zeros(1, 77, dtype=torch.long))


def test_timm_weights_file_and_hub_cache() -> None:
    name = "vit_base_patch32_224.augreg_in21k"
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)  # the real architecture with its 21k-class head
    snapshot = hub_snapshot(f"timm/{name}")
    snapshot.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.half().contiguous() for k, v in model.state_dict().items()}, snapshot / "model.safetensors"
    )
    backbone = load_backbone(f"timm:{name}", device="cpu")
    expected = model.state_dict()["patch_embed.proj.weight"].half().float()
    assert torch.equal(backbone.model.state_dict()["patch_embed.proj.weight"], expected)
    assert backbone.feature_dim == 768 and backbone.preprocess_cfg.resize_size == 248
    from_file = load_backbone("timm:vit_base_patch32_224", str(snapshot / "model.safetensors"), device="cpu")
    assert torch.equal(from_file.model.state_dict()["patch_embed.proj.weight"], expected)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert backbone.encode_image(pixels).shape == (2, 768)


def test_timm_missing_weights_fail_fast() -> None:
    with pytest.raises(WeightsNotFoundError, match=r"resnet50\.a1_in1k"):
        load_backbone("timm:resnet50.a1_in1k")


def test_cpu_bf16_uses_a_bf16_copy_of_the_tower(tiny_clip_spec: str) -> None:
    backbone = load_backbone(tiny_clip_spec, device="cpu")
    pixels = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        reference = backbone.encode_image(pixels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = backbone.encode_image(pixels)
    assert fast.dtype == torch.bfloat16
    cosine = torch.nn.functional.cosine_similarity(fast.float(), reference, dim=-1)
    assert cosine.min() > 0.99
    # the model's own weights stay float32 and the copy is neither saved nor registered
    assert all(p.dtype == torch.float32 for p in backbone.model.parameters())
    assert not any("bf16" in key for key in backbone.state_dict())


def test_finetuned_scorer_loads_without_base_weights(
    real_vit_b32_openai_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clip_aesthetics.finetune import FinetuneModel
    from clip_aesthetics.scorers import load_scorer, save_scorer
    from clip_aesthetics.scorers.finetuned import FinetunedScorer

    backbone = load_backbone("ViT-B-32", "openai", device="cpu")
    torch.manual_seed(1)
    scorer = FinetunedScorer(backbone, FinetuneModel.from_backbone(backbone)).eval()
    save_scorer(scorer, tmp_path / "best.safetensors", tensors=scorer.tensors())

    def no_weights(*args, **kwargs):
        raise AssertionError("the base weights were looked up")

    monkeypatch.setattr("clip_aesthetics.encoders.backbones.hub_file", no_weights)
    loaded = load_scorer(tmp_path / "best.safetensors", device="cpu")
    assert _uses_quick_gelu(loaded.model)  # rebuilt with the activation the tower was trained with
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    expected, got = scorer.score_images(images), loaded.score_images(images)
    assert torch.allclose(expected.distribution, got.distribution, atol=1e-5)


def test_models_command_marks_cached_weights(real_vit_b32_openai_cache: Path) -> None:
    from typer.testing import CliRunner

    from clip_aesthetics.cli import app
    from clip_aesthetics.encoders.weights import backbone_rows

    assert CliRunner().invoke(app, ["models"]).exit_code == 0
    rows = {(r["model"], r["pretrained"]): r for r in backbone_rows()}
    assert rows["ViT-B-32", "openai"]["offline"] and not rows["ViT-L-14", "openai"]["offline"]
    # BiT stands in for the paper's ResNet-50 baseline (MIIL ImageNet-21k weights), never is it
    assert "substitute" in rows["timm:resnetv2_50x1_bit.goog_in21k", None]["what"]
    assert "MIIL" in rows["timm:resnet50", "resnet50_miil_21k.pth"]["what"]
