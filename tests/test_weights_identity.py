"""Caches follow the weights' content, not their path; scorer files name backbones as the user gave them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

from clip_aesthetics import load_backbone, load_scorer, save_scorer
from clip_aesthetics.datasets import make_synthetic_ava
from clip_aesthetics.encoders.prompts import encode_texts
from clip_aesthetics.features.embed import DatasetSpec, embed_dataset
from clip_aesthetics.fileio import folder_digest
from clip_aesthetics.scorers import ProbeScorer
from clip_aesthetics.scorers.probe import ProbeHead
from conftest import TINY_CLIP_CONFIG, hub_snapshot, save_open_clip_dir

TEXTS = ("a picture whose embedding is cached",)


def test_weights_replaced_inside_a_local_dir_invalidate_text_and_feature_caches(tmp_path: Path) -> None:
    folder = save_open_clip_dir(tmp_path / "model", TINY_CLIP_CONFIG, seed=1)
    spec = f"local-dir:{folder}"
    ava = make_synthetic_ava(tmp_path / "AVA_dataset", n=12, seed=0, size=40)
    dataset = DatasetSpec("ava", str(ava))
    old = load_backbone(spec, device="cpu")
    assert old.weights_id == folder_digest(folder)
    old_text = encode_texts(old, TEXTS)
    embed_dataset(dataset, old, tmp_path / "cache", workers=0, progress=False)

    save_open_clip_dir(folder, TINY_CLIP_CONFIG, seed=2)  # same folder, same names, other weights
    new = load_backbone(spec, device="cpu")
    assert new.weights_id != old.weights_id
    fresh = encode_texts(new, TEXTS, use_cache=False)
    assert not torch.allclose(fresh, old_text)
    assert torch.equal(encode_texts(new, TEXTS), fresh)  # not the stale cached embedding
    with pytest.raises(ValueError, match="weights_id"):  # the old features are not reused
        embed_dataset(dataset, new, tmp_path / "cache", workers=0, progress=False)


def test_weights_file_identity_is_its_content(tmp_path: Path) -> None:
    assert load_backbone("timm:test_vit", "none", device="cpu").weights_id == "timm:test_vit:random"
    torch.manual_seed(0)
    state = timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict()
    weights, copy = tmp_path / "weights.safetensors", tmp_path / "copy.safetensors"
    save_file(state, weights)
    save_file(state, copy)
    first, second = (load_backbone("timm:test_vit", str(p), device="cpu") for p in (weights, copy))
    assert first.weights_id == second.weights_id and first.weights_id.startswith("sha256:")
    save_file({k: v + 1 for k, v in state.items()}, weights)  # replaced in place
    assert load_backbone("timm:test_vit", str(weights), device="cpu").weights_id != first.weights_id


def test_timm_hf_hub_scorer_loads_with_another_hugging_face_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False)
    snapshot = hub_snapshot("someorg/tiny-timm")
    snapshot.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), snapshot / "model.safetensors")
    config = {
        "architecture": "test_vit",
        "num_classes": model.num_classes,
        "pretrained_cfg": model.pretrained_cfg,
    }
    (snapshot / "config.json").write_text(json.dumps(config, default=list))
    backbone = load_backbone("timm:hf-hub:someorg/tiny-timm", device="cpu")
    assert backbone.spec == "timm:hf-hub:someorg/tiny-timm"  # not this machine's snapshot folder
    dim = backbone.feature_dim
    head = ProbeHead(torch.zeros(dim), torch.ones(dim), torch.randn(1, dim), torch.tensor([5.0]))
    save_scorer(ProbeScorer(backbone, head), tmp_path / "probe.safetensors", head.tensors())
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    expected = ProbeScorer(backbone, head).score_images(images).score

    # another machine: the same repository in another Hugging Face cache folder, the first one gone
    other = tmp_path / "other-hf-cache"
    repo = snapshot.parent.parent
    shutil.copytree(repo, other / repo.name)
    shutil.rmtree(repo)
    monkeypatch.setenv("HF_HUB_CACHE", str(other))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(other))
    loaded = load_scorer(tmp_path / "probe.safetensors", device="cpu")
    assert loaded.backbone.spec == "timm:hf-hub:someorg/tiny-timm"
    torch.testing.assert_close(loaded.score_images(images).score, expected)


def test_miil_weights_file_gets_miil_preprocessing(tmp_path: Path) -> None:
    """Alibaba-MIIL's ImageNet-21k weights (a .pth with an 11221-class head) expect 0..1 pixels, bilinear."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=11221)
    weights = tmp_path / "resnet18_miil_21k.pth"
    torch.save(model.state_dict(), weights)
    backbone = load_backbone("timm:resnet18", str(weights), device="cpu")
    cfg = backbone.preprocess_cfg
    assert (cfg.mean, cfg.std, cfg.interpolation) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear")
    assert (cfg.size, cfg.resize_size) == (224, 256)  # crop_pct 0.875
    assert torch.equal(backbone.model.state_dict()["conv1.weight"], model.state_dict()["conv1.weight"])
    other = tmp_path / "resnet18_other.pth"
    torch.save(model.state_dict(), other)
    assert load_backbone("timm:resnet18", str(other), device="cpu").preprocess_cfg.std != (1.0, 1.0, 1.0)


def cache_revision(repo: str, revision: str, seed: int, *, linked: bool) -> Path:
    """A revision of a tiny open_clip repo in the Hugging Face cache, ``refs/main`` pointed at it.

    ``linked``: the hub's own layout (snapshot files link to ``blobs/<sha256 of the content>``); else
    plain files in the snapshot folder (a cache copied without links).
    """
    repo_dir = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    save_open_clip_dir(snapshot, TINY_CLIP_CONFIG, seed=seed)
    if linked:
        (repo_dir / "blobs").mkdir(exist_ok=True)
        for file in list(snapshot.iterdir()):
            blob = repo_dir / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
            file.replace(blob)
            file.symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def test_tag_identity_follows_the_revision_refs_main_points_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag names weights only at one hub revision: moving refs/main must not reuse the old text
    embeddings or features (the scores were off by up to 8 on the 1-10 scale)."""
    name, tag, repo = "tiny-tag-clip", "testtag", "someorg/tiny-tag-clip"
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name, TINY_CLIP_CONFIG)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name, {tag: {"hf_hub": f"{repo}/"}})
    first, second = "a" * 40, "b" * 40
    old_snapshot = cache_revision(repo, first, seed=1, linked=True)
    ava = make_synthetic_ava(tmp_path / "AVA_dataset", n=12, seed=0, size=40)
    dataset = DatasetSpec("ava", str(ava))

    old = load_backbone(name, tag, device="cpu")
    weights = (old_snapshot / "open_clip_model.safetensors").read_bytes()
    assert old.weights_id == f"{name}:{tag}@{first}:sha256:{hashlib.sha256(weights).hexdigest()}"
    old_text = encode_texts(old, TEXTS)
    embed_dataset(dataset, old, tmp_path / "cache", workers=0, progress=False)

    cache_revision(repo, second, seed=2, linked=True)  # a newer upload: refs/main moves
    new = load_backbone(name, tag, device="cpu")
    assert new.weights_id.startswith(f"{name}:{tag}@{second}:sha256:")
    fresh = encode_texts(new, TEXTS, use_cache=False)
    assert not torch.allclose(fresh, old_text)
    assert torch.equal(encode_texts(new, TEXTS), fresh)  # not the old revision's cached embedding
    with pytest.raises(ValueError, match="weights_id"):  # nor its features
        embed_dataset(dataset, new, tmp_path / "cache", workers=0, progress=False)


def test_hub_spec_identity_is_the_file_loaded_even_in_one_revision(tmp_path: Path) -> None:
    repo = "someorg/tiny-replaced-clip"
    snapshot = cache_revision(repo, "c" * 40, seed=1, linked=False)  # a cache copied without links
    old = load_backbone(f"hf-hub:{repo}", device="cpu")
    weights = snapshot / "open_clip_model.safetensors"
    assert (
        old.weights_id
        == f"hf-hub:{repo}@{'c' * 40}:sha256:{hashlib.sha256(weights.read_bytes()).hexdigest()}"
    )
    old_text = encode_texts(old, TEXTS)
    save_open_clip_dir(snapshot, TINY_CLIP_CONFIG, seed=2)  # the same revision folder, other weights
    new = load_backbone(f"hf-hub:{repo}", device="cpu")
    assert new.weights_id != old.weights_id
    assert not torch.allclose(encode_texts(new, TEXTS), old_text)
